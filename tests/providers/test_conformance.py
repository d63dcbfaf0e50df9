"""The provider conformance suite (SPEC §16 A–I) run against every shipped provider, plus
planted bugs showing the suite catches them.

``conformance_provider_factory`` is the one fixture the suite needs; here it is parametrized
over InMemoryProvider, SqliteProvider.in_memory() and SqliteProvider.open(<tmp file>), so
every suite test runs three times.
"""

from __future__ import annotations

import inspect
import itertools
import re

import pytest

from duroxide_sim.providers.base import TagFilter
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.testing import conformance
from duroxide_sim.testing.conformance import *  # noqa: F403 - the suite: test classes + fixtures
from duroxide_sim.testing.conformance import (
    ConformanceClock, TestConformanceCancellation, TestConformanceLocking, TestConformanceLockExpiry,
)

pytest_plugins = ["pytester"]

PROVIDERS = ["memory", "sqlite-memory", "sqlite-file"]


@pytest.fixture(params=PROVIDERS)
def conformance_provider_factory(request, tmp_path):
    counter = itertools.count()

    def make():
        clock = ConformanceClock()
        if request.param == "memory":
            return InMemoryProvider(clock), clock
        if request.param == "sqlite-memory":
            return SqliteProvider.in_memory(clock=clock), clock
        return SqliteProvider.open(tmp_path / f"conformance-{next(counter)}.db", clock=clock), clock

    return make


# --- the suite itself ----------------------------------------------------------------------------

SUITE = [getattr(conformance, name) for name in conformance.__all__ if name.startswith("Test")]
_ITEMS = re.compile(r"^((?:[A-I]\d{1,2}|§[\d.]+)(?:, (?:[A-I]\d{1,2}|§[\d.]+))*):")


def _suite_tests():
    for cls in SUITE:
        for name in dir(cls):
            if name.startswith("test_"):
                yield cls, name, getattr(cls, name)


def test_every_checklist_item_has_a_case():
    """Each SPEC §16 item A1–I31 is named by at least one suite test's docstring, and every
    suite test names what it covers."""
    covered: dict[str, list[str]] = {}
    for cls, name, fn in _suite_tests():
        match = _ITEMS.match((fn.__doc__ or "").strip())
        assert match, f"{cls.__name__}.{name}: docstring must start with its §16 items, e.g. 'A1: ...'"
        for item in match.group(1).split(", "):
            if item.startswith("§"):
                continue  # contract plumbing outside the §16 checklist (wake-ups, clock, hooks)
            assert item in conformance.CHECKLIST, f"{cls.__name__}.{name} names unknown item {item}"
            covered.setdefault(item, []).append(name)
    expected = [f"{letter}{n}" for letter, n in zip("AAAAAAABBBBBBCCDEFFFFFFFGGGHHII", range(1, 32), strict=True)]
    assert list(conformance.CHECKLIST) == expected
    assert sorted(set(expected) - set(covered)) == []


def test_star_import_exports_fixtures_and_classes():
    """One import brings every suite class and fixture; nothing else leaks."""
    namespace: dict = {}
    exec("from duroxide_sim.testing.conformance import *", namespace)
    names = {n for n in namespace if n != "__builtins__"}
    assert {"conformance_provider", "conformance_clock", "ConformanceClock", "TestConformanceLocking"} <= names
    assert "ack" not in names and "pytest" not in names


# --- planted bugs: the suite must catch them ------------------------------------------------------


class ForgetfulAckProvider(InMemoryProvider):
    """Bug: the orchestrator ack forgets to delete the last message of the batch."""

    def ack_orchestration_item(self, lock_token, *args, **kwargs):
        with self._lock:
            instance = self._orch_tokens.get(lock_token)
            tagged = [r for r in self._orch.group(instance) if r.lock_token == lock_token] if instance else []
            if tagged:
                tagged[-1].lock_token = None  # untagged rows survive the ack
        return super().ack_orchestration_item(lock_token, *args, **kwargs)


class NeverExpiringLockProvider(InMemoryProvider):
    """Bug: fetches ignore the requested lock timeout, so locks never expire."""

    FOREVER = 10**15

    def fetch_orchestration_item(self, lock_timeout_ms, poll_timeout_ms=0, filter=None):
        return super().fetch_orchestration_item(self.FOREVER, poll_timeout_ms, filter)

    def fetch_work_item(self, lock_timeout_ms, poll_timeout_ms=0, session=None, tag_filter=TagFilter.DEFAULT_ONLY):
        return super().fetch_work_item(self.FOREVER, poll_timeout_ms, session, tag_filter)


class IgnoresCancellationProvider(InMemoryProvider):
    """Bug: the orchestrator ack ignores its cancelled-activities list."""

    def ack_orchestration_item(self, lock_token, execution_id, delta, workers, orchs, metadata, cancelled=()):
        return super().ack_orchestration_item(lock_token, execution_id, delta, workers, orchs, metadata, ())


def _run_case(cls, name, provider_cls):
    """Call one suite test directly with a fresh ``provider_cls`` on a fresh clock."""
    clock = ConformanceClock()
    fixtures = {"conformance_provider": provider_cls(clock), "conformance_clock": clock}
    method = getattr(cls(), name)
    method(**{arg: fixtures[arg] for arg in inspect.signature(method).parameters})


PLANTED = [
    (ForgetfulAckProvider, TestConformanceLocking, "test_ack_deletes_exactly_the_fetched_messages"),
    (ForgetfulAckProvider, TestConformanceLocking, "test_messages_arriving_during_lock_survive_ack"),
    (NeverExpiringLockProvider, TestConformanceLockExpiry, "test_expired_lock_lets_another_fetcher_in"),
    (NeverExpiringLockProvider, TestConformanceLockExpiry, "test_worker_lost_tokens_reappear_after_expiry"),
    (IgnoresCancellationProvider, TestConformanceCancellation, "test_insert_and_cancel_in_one_ack_leaves_nothing"),
    (IgnoresCancellationProvider, TestConformanceCancellation, "test_cancelled_deletes_matching_rows_even_locked"),
]


@pytest.mark.parametrize(("broken", "cls", "name"), PLANTED, ids=[f"{b.__name__}-{n}" for b, _, n in PLANTED])
def test_planted_bug_fails_its_conformance_case(broken, cls, name):
    """A deliberately broken provider fails the matching case (a failed assertion), while the
    correct reference provider passes the very same case."""
    _run_case(cls, name, InMemoryProvider)
    with pytest.raises((AssertionError, pytest.fail.Exception)):  # a failed assert or pytest.raises
        _run_case(cls, name, broken)


BROKEN_RUN = """
import pytest
from duroxide_sim.testing.conformance import *
from tests.providers.test_conformance import {cls}

@pytest.fixture
def conformance_provider_factory():
    def make():
        clock = ConformanceClock()
        return {cls}(clock), clock
    return make
"""


def _failed_tests(result) -> set[str]:
    return {m.group(1) for m in re.finditer(r"^FAILED \S+::(\w+::\w+)", result.stdout.str(), re.M)}


def test_suite_run_by_a_third_party_flags_exactly_the_broken_behaviour(pytester):
    """Running the suite the documented way (one import, one fixture) against each planted bug
    fails exactly the cases about that behaviour; everything else in those groups passes."""
    expectations = {
        "ForgetfulAckProvider": ("Locking", {
            "TestConformanceLocking::test_ack_deletes_exactly_the_fetched_messages",
            "TestConformanceLocking::test_messages_arriving_during_lock_survive_ack",
        }),
        "NeverExpiringLockProvider": ("LockExpiry", {
            "TestConformanceLockExpiry::test_expired_lock_lets_another_fetcher_in",
            "TestConformanceLockExpiry::test_ack_and_renew_after_expiry_fail_and_change_nothing",
            "TestConformanceLockExpiry::test_orchestrator_lost_token_reappears_after_expiry",
            "TestConformanceLockExpiry::test_worker_lost_tokens_reappear_after_expiry",
        }),
        "IgnoresCancellationProvider": ("Cancellation", {
            "TestConformanceCancellation::test_cancelled_deletes_matching_rows_even_locked",
            "TestConformanceCancellation::test_insert_and_cancel_in_one_ack_leaves_nothing",
        }),
    }
    for cls, (group, expected) in expectations.items():
        pytester.makepyfile(**{f"test_{cls.lower()}": BROKEN_RUN.format(cls=cls)})
        result = pytester.runpytest(f"test_{cls.lower()}.py", "-k", f"TestConformance{group}", "-q", "-rf",
                                    "-p", "no:cacheprovider")
        assert _failed_tests(result) == expected, result.stdout.str()
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) >= 1 and outcomes.get("error", 0) == 0, outcomes


def test_suite_passes_for_the_reference_provider_run_the_documented_way(pytester):
    """The same documented usage against the correct InMemoryProvider passes every case."""
    pytester.makepyfile(test_reference=BROKEN_RUN.replace(
        "from tests.providers.test_conformance import {cls}", "from duroxide_sim.providers.memory import {cls}"
    ).format(cls="InMemoryProvider"))
    result = pytester.runpytest("-q", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0 and outcomes.get("error", 0) == 0, result.stdout.str()
    assert outcomes["passed"] == sum(1 for _ in _suite_tests()) + 6  # tag filter cases are parametrized (7)
