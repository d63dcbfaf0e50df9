"""Fault plans: which faults a simulated run injects, as data (SPEC §18).

A :class:`FaultPlan` holds one probability per fault kind (0 = off) and a fault window: faults
are injected only while virtual time is before ``until_ms`` (after that the world heals, so
liveness can be checked). Plans are plain data: printable, comparable, JSON round-trippable,
and drawn from the run's seeded ``Random`` in *swarm* style (:meth:`FaultPlan.swarm`), so each
seed enables a different subset of fault kinds at different rates — the combination that
finds bugs a uniform mix dilutes.

Fault kinds:

``transient``      a provider operation fails with a retryable error before doing anything
``commit_lost``    a provider write commits, then reports failure (the caller retries/abandons)
``lock_expiry``    time jumps past lock timeouts between fetch and ack (locks expire/are stolen)
``crash``          a runtime process crashes at a step boundary (in-flight work lost) and restarts
``crash_after_effect`` crash right after an activity ran but before its ack (duplicate delivery)
``duplicate``      an activity completion is delivered twice
``reorder``        in-flight completions are acknowledged in a random order (scheduler bias)
``delay``          client messages become visible later than sent
"""

from __future__ import annotations

import json
from typing import Any

import attrs

__all__ = ["FAULT_KINDS", "FaultPlan"]

FAULT_KINDS = (
    "transient",
    "commit_lost",
    "lock_expiry",
    "crash",
    "crash_after_effect",
    "duplicate",
    "reorder",
    "delay",
)


def _unknown_kind(kind: Any, what: str = "fault kind") -> ValueError:
    return ValueError(f"unknown {what} {kind!r}; known: {', '.join(FAULT_KINDS)}")


def _check_rates(_inst: Any, _attr: Any, value: dict[str, float]) -> None:
    if not isinstance(value, dict):
        raise ValueError(f"rates must be an object of fault kind -> probability, got {value!r}")
    for kind, p in value.items():
        if kind not in FAULT_KINDS:
            raise _unknown_kind(kind)
        if type(p) not in (int, float) or not 0.0 <= p <= 1.0:  # (bool is not a rate)
            raise ValueError(f"fault rate for {kind!r} must be a number within [0, 1], got {p!r}")


def _script_entry(entry: Any) -> tuple[int, str]:
    """One ``(opportunity, kind)`` entry, checked exactly: no truncated 1.5, no True for 1."""
    if not isinstance(entry, (list, tuple)) or len(entry) != 2:
        raise ValueError(f"script entries are [opportunity, kind] pairs, got {entry!r}")
    step, kind = entry
    if type(step) is not int:
        raise ValueError(f"script opportunity numbers are whole numbers starting at 1, got {step!r} in {list(entry)!r}")
    if kind not in FAULT_KINDS:
        raise _unknown_kind(kind, "scripted fault kind")
    if step < 1:
        raise ValueError(f"scripted fault opportunity numbers start at 1, got {step}")
    return step, kind


def _script(value: Any) -> tuple[tuple[int, str], ...]:
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise ValueError(f"script must be a list of [opportunity, kind] pairs, got {value!r}")
    return tuple(sorted(_script_entry(e) for e in value))


def _check_non_negative(_inst: Any, attribute: Any, value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative integer, got {value!r}")


_JSON_KEYS = ("rates", "until_ms", "max_faults", "script")


@attrs.frozen
class FaultPlan:
    """Per-kind probabilities (per opportunity) and the virtual time at which faults stop."""

    rates: dict[str, float] = attrs.field(factory=dict, validator=_check_rates)
    until_ms: int = attrs.field(default=10 * 60_000, validator=_check_non_negative)  # faults only before this virtual time
    max_faults: int = attrs.field(default=1_000, validator=_check_non_negative)
    #: Scripted faults: ``(n, kind)`` = inject ``kind`` at the n-th opportunity for that kind
    #: (1-based; e.g. the 3rd activity execution for ``crash_after_effect``), in addition to the
    #: random rates. Counting per kind keeps entries meaningful when a shrinker removes others
    #: or moves one earlier.
    script: tuple[tuple[int, str], ...] = ()

    def __attrs_post_init__(self) -> None:
        for entry in self.script:
            _script_entry(entry)

    @classmethod
    def none(cls) -> "FaultPlan":
        return cls({})

    @classmethod
    def all(cls, rate: float = 0.05, until_ms: int = 10 * 60_000) -> "FaultPlan":
        return cls({k: rate for k in FAULT_KINDS}, until_ms)

    @classmethod
    def only(cls, *kinds: str, rate: float = 0.1, until_ms: int = 10 * 60_000) -> "FaultPlan":
        return cls({k: rate for k in kinds}, until_ms)

    @classmethod
    def swarm(cls, rng: Any, kinds: tuple[str, ...] = FAULT_KINDS, until_ms: int = 10 * 60_000) -> "FaultPlan":
        """Each kind is on with probability 1/2, at a rate drawn from a wide range.
        ``rng`` is an injected ``random.Random``-like object (never the module global)."""
        rates = {}
        for kind in kinds:
            if rng.random() < 0.5:
                rates[kind] = round(rng.choice((0.01, 0.03, 0.1, 0.2)), 3)
        return cls(rates, until_ms)

    @classmethod
    def scripted(cls, script: list[tuple[int, str]] | tuple[tuple[int, str], ...], until_ms: int = 10 * 60_000) -> "FaultPlan":
        return cls({}, until_ms, 1_000, _script(script))

    def enabled(self) -> list[str]:
        scripted = {k for _, k in self.script}
        return [k for k in FAULT_KINDS if self.rates.get(k, 0.0) > 0 or k in scripted]

    def rate(self, kind: str) -> float:
        return self.rates.get(kind, 0.0)

    def to_json(self) -> str:
        return json.dumps(
            {
                "rates": {k: self.rates[k] for k in sorted(self.rates)},
                "until_ms": self.until_ms,
                "max_faults": self.max_faults,
                "script": [list(x) for x in self.script],
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> "FaultPlan":
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object with keys {', '.join(_JSON_KEYS)}, got {type(data).__name__}")
            unknown = sorted(set(data) - set(_JSON_KEYS))
            if unknown:  # a misspelt key would silently give a plan that injects nothing
                raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; known: {', '.join(_JSON_KEYS)}")
            rates = data.get("rates", {})
            if not isinstance(rates, dict):
                raise ValueError(f"rates must be an object of fault kind -> probability, got {rates!r}")
            return cls(dict(rates), data.get("until_ms", 600_000), data.get("max_faults", 1000), _script(data.get("script", ())))
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a fault plan: {exc}") from exc

    def describe(self) -> str:
        if not self.enabled():
            return "no faults"
        parts = [f"{k}={self.rates[k]}" for k in FAULT_KINDS if self.rates.get(k, 0.0) > 0]
        if self.script:
            parts.append("script=" + ",".join(f"{k}@{s}" for s, k in self.script))
        return ", ".join(parts)
