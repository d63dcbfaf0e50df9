"""ExternalWorld: a simulated external system that activities act on, with an effect ledger.

In simulation, activities should change the outside world through an :class:`ExternalWorld`
(a key/value store standing in for databases, payment providers, cloud APIs). Every mutation
is recorded with the activity that made it, so the idempotency checker can compare the world
after a faulty run with the world after the fault-free run of the same inputs and name the
activity whose re-execution changed it.

Pure Python data; no clock, no randomness.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any, NamedTuple

__all__ = ["ExternalWorld", "Effect"]

#: Values of these types are immutable: stored and returned as they are, without a deep copy
#: (a scenario writing 10,000 integers should not pay 20,000 ``copy.deepcopy`` calls).
_ATOMS = frozenset((int, float, str, bool, type(None), bytes))


def _copy(value: Any) -> Any:
    return value if type(value) in _ATOMS else copy.deepcopy(value)


class Effect(NamedTuple):
    """One mutation of the world: which activity (of which instance) did ``op`` on ``key``."""

    activity: str | None
    instance: str | None
    op: str
    key: str
    value: Any


#: ``Effect`` from a tuple of its five fields, by ``tuple.__new__`` directly: the NamedTuple's
#: generated ``__new__`` is a Python-level call that cost a scenario writing 11,000 keys per run
#: ~6 % of its time.
_new_effect = functools.partial(tuple.__new__, Effect)


class ExternalWorld:
    """A key/value world with an append-only ledger of who changed what."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.ledger: list[Effect] = []
        self._actor: tuple[str | None, str | None] = (None, None)
        self.executions: dict[str, int] = {}  # activity name -> times executed
        self._canonical: Any = None  # the checkers' canonical form of ``state`` (sim/checkers.py)

    # --- set by the harness around each activity execution ---------------------------------
    def _enter(self, activity: str, instance: str) -> None:
        self._actor = (activity, instance)
        self.executions[activity] = self.executions.get(activity, 0) + 1

    def _exit(self) -> None:
        self._actor = (None, None)

    def _record(self, op: str, key: str, value: Any) -> None:
        """Ledger entry; ``value`` must already be a private copy (or an immutable atom)."""
        # (``_actor`` is the entry's first two fields, (activity, instance): concatenated, not unpacked)
        self.ledger.append(_new_effect(self._actor + (op, key, value)))

    # --- the API activities use ------------------------------------------------------------
    def get(self, key: str, default: Any = None) -> Any:
        return _copy(self.state.get(key, default))

    def exists(self, key: str) -> bool:
        return key in self.state

    def put(self, key: str, value: Any) -> None:
        self.state[key] = _copy(value)
        self._record("put", key, _copy(value))

    def put_if_absent(self, key: str, value: Any) -> bool:
        """Idempotent create: True if it created the key."""
        state = self.state
        if key in state:
            return False
        if type(value) in _ATOMS:  # the common case, inlined (scenarios call this per item)
            state[key] = value
            self.ledger.append(_new_effect(self._actor + ("put", key, value)))
            return True
        state[key] = copy.deepcopy(value)
        self._record("put", key, copy.deepcopy(value))
        return True

    def delete(self, key: str) -> bool:
        existed = key in self.state  # (a key holding None exists too)
        self.state.pop(key, None)
        self._record("delete", key, None)
        return existed

    def incr(self, key: str, amount: int | float = 1) -> int | float:
        value = self.state.get(key, 0) + amount
        self.state[key] = value
        self._record("incr", key, amount)
        return value

    def append(self, key: str, value: Any) -> list[Any]:
        items = self.state.setdefault(key, [])
        items.append(_copy(value))
        self._record("append", key, _copy(value))
        return copy.deepcopy(items)

    def items(self, prefix: str = "") -> list[tuple[str, Any]]:
        """``(key, value)`` of the keys starting with ``prefix``, in first-write order: a copy
        (a scan of ``state`` itself fails when another worker thread writes meanwhile)."""
        return [(k, _copy(v)) for k, v in list(self.state.items()) if k.startswith(prefix)]

    # --- comparison ------------------------------------------------------------------------
    def snapshot(self) -> str:
        """Canonical JSON of the state (for diffs and equality)."""
        return json.dumps(self.state, sort_keys=True, default=repr)

    def writers(self, key: str) -> list[str]:
        """Activities that changed ``key``, in first-write order, without repeats."""
        return list(dict.fromkeys(e.activity or "<outside an activity>" for e in self.ledger if e.key == key))

