"""The codec's fast paths (str / int / None / bool, small digit strings) are invisible: they
produce exactly what ``json.dumps`` / ``json.loads`` produce, for any input."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from duroxide_sim.core import codec

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=10,
)


@given(_json)
def test_encode_is_json_dumps(value):
    assert codec.encode(value) == json.dumps(value)


def _plain_decode(text):
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


@given(st.one_of(st.text(alphabet="0123456789", max_size=25), st.text(max_size=8),
                 st.integers().map(str), st.sampled_from(["٣", "²", "00", "07", "-0", "1e3", " 1"])))
def test_decode_is_json_loads_or_the_raw_text(text):
    got, want = codec.decode(text), _plain_decode(text)
    assert got == want and type(got) is type(want)


def test_huge_integers_still_encode():
    big = 10 ** 5000
    try:
        expected = json.dumps(big)
    except ValueError as exc:  # Python's int->str digit limit: the codec reports it the same way
        import pytest

        with pytest.raises(Exception, match="digits|limit|int"):
            codec.encode(big)
        assert "digits" in str(exc) or "limit" in str(exc)
    else:
        assert codec.encode(big) == expected
