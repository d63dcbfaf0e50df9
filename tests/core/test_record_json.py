"""The record codec's fast encoder writes exactly the canonical JSON (sorted keys, compact,
UTF-8 kept) that ``json.dumps(to_dict(r), sort_keys=True, ...)`` writes, for every record kind,
and ``loads`` reads it back to an equal record. Stored histories and exported files depend on
these bytes."""

from __future__ import annotations

import json

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duroxide_sim.core import events as ev


def _reference(record):
    return json.dumps(ev.to_dict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _field_value(field):
    name, hint = field.name, str(field.type)
    if name == "details":
        value = st.builds(ev.ApplicationError, kind=st.text(max_size=5), message=st.text(max_size=10))
    elif name == "carry_forward_events":
        value = st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=3).map(tuple)
    elif hint.startswith("int") or hint.startswith("Optional[int") or hint.startswith("int |"):
        value = st.integers(min_value=0, max_value=2**40)
    elif hint.startswith("bool"):
        value = st.booleans()
    else:
        value = st.text(max_size=12)
    # None means "absent" in the JSON form: only fields whose default is None may be None.
    return st.one_of(st.none(), value) if field.default is None else value


def _records():
    kinds = sorted({cls for (family, _), cls in ev._KINDS.items() if family in ("event", "work", "action")},
                   key=lambda c: (c.FAMILY, c.KIND))
    return kinds


@pytest.mark.parametrize("cls", _records(), ids=lambda c: f"{c.FAMILY}:{c.KIND}")
def test_every_record_kind_encodes_canonically(cls):
    @settings(max_examples=25, deadline=None)
    @given(st.fixed_dictionaries({f.name: _field_value(f) for f in attrs.fields(cls)}))
    def check(values):
        try:
            record = cls(**values)
        except (TypeError, ValueError):
            return  # a validator refused the combination: nothing to encode
        text = ev.dumps(record)
        assert text == _reference(record)
        family = cls.FAMILY
        assert ev.loads(text, family) == record

    check()
