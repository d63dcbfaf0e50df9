"""The codec's fast paths (str / int / None / bool, small digit strings) are invisible: they
produce exactly what ``json.dumps`` / ``json.loads`` produce, for any input."""

from __future__ import annotations

import json

import attrs
import pytest
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
    # (NaN, which json.loads reads from the text "NaN", is the one value not equal to itself)
    assert type(got) is type(want) and (got == want or (got != got and want != want))


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


@attrs.define
class _Inner:
    name: str
    ratio: float


@attrs.define
class _Outer:
    items: list
    inner: _Inner
    note: str | None = None


def test_attrs_payloads_encode_like_json_dumps_of_their_unstructured_form():
    value = _Outer(items=[1, "two", None, {"k": [True, 2.5]}], inner=_Inner("é\u1234", 0.1))
    want = json.dumps({"items": [1, "two", None, {"k": [True, 2.5]}], "inner": {"name": "é\u1234", "ratio": 0.1},
                       "note": None})
    assert codec.encode(value) == want
    assert codec.encode([value, {"x": value}]) == f'[{want}, {{"x": {want}}}]'


def test_values_json_cannot_hold_are_refused_with_their_reason():
    import pytest

    from duroxide_sim.errors import SerializationError

    for bad, reason in ((float("nan"), "Out of range float"), ({"x": {1, 2}}, "not JSON serializable"),
                        ([object()], "not JSON serializable")):
        with pytest.raises(SerializationError, match=reason):
            codec.encode(bad, "input of activity 'a'")
    circular: list = []
    circular.append({"again": circular})
    with pytest.raises(SerializationError, match="circular reference") as info:
        codec.encode(circular, "input of activity 'a'")
    assert "input of activity 'a'" in str(info.value)


def test_lone_surrogates_are_refused_where_text_is_set_and_escaped_in_error_texts() -> None:
    """Undecodable bytes decoded with surrogateescape (``os.fsdecode``) give lone surrogates no
    store can encode as UTF-8: SQLite failed the commit and the instance was retried until
    poison. Payload and status/KV text is refused where it is set (naming it); error texts,
    which are for people, keep everything else and escape the surrogate."""
    import os

    from duroxide_sim.core import codec
    from duroxide_sim.core.events import ApplicationError, InfrastructureError
    from duroxide_sim.errors import SerializationError

    bad = os.fsdecode(b"report-\xff.csv")
    with pytest.raises(SerializationError, match=r"custom status is not valid Unicode text: .*index 7"):
        codec.check_text(bad, "custom status")
    with pytest.raises(SerializationError, match="output is not valid Unicode"):
        codec.encode_typed(bad, "output")
    assert codec.check_text("zoë ☃", "x") == "zoë ☃"
    assert codec.decode(codec.encode(bad)) == bad  # plain JSON escapes it: exact round trip
    err = ApplicationError(kind="OrchestrationFailed", message=f"no such file: {bad}")
    assert err.message == "no such file: report-\\udcff.csv"
    assert err.message.encode("utf-8")
    assert InfrastructureError(operation="x", message=bad).message == "report-\\udcff.csv"
    assert ApplicationError(kind="ActivityFailed", message="zoë").message == "zoë"
