"""Provider conformance suite: SPEC §16 A–I as reusable pytest test classes.

Run it against your own provider with one import and one fixture::

    # test_my_provider_conformance.py
    import pytest
    from duroxide_sim.testing.conformance import *  # the test classes and their fixtures

    @pytest.fixture
    def conformance_provider_factory():
        def make():
            clock = ConformanceClock()           # or any clock with now_ms() and advance(ms)
            return MyProvider(clock=clock), clock
        return make

Each test gets a fresh provider (``conformance_provider``) bound to a controllable fake clock
(``conformance_clock``). The factory is called once per test (twice for the determinism
check); after the test the suite calls the provider's ``_check()`` (invariants) and
``close()`` when it has them.

What the suite needs: the full ``Provider`` and ``ManagementProvider`` protocols of
``duroxide_sim.providers.base`` (management reads are how it observes state). Optional hooks,
used when present and skipped otherwise: ``_corrupt_history(instance, error)`` (make the
current execution's history undeserializable; ``error=None`` repairs it), ``next_wakeup_ms()``
(simulation time skipping), ``_check()``. Tests observe providers only through these public
operations, never through internals. Multi-threaded cases (A1, A6, H28) use real threads.

Every test's docstring starts with the §16 items it covers (``A1, A6: ...``; plumbing outside
the checklist cites its SPEC section instead, ``§15.1: ...``); ``CHECKLIST`` lists the items. Groups: plumbing, locking, lock expiry, atomicity, queues, instances &
executions, poison, cancellation, management, deletion, pruning, custom status, KV, sessions,
tags, capability filtering, corrupt history.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from ..core.events import (
    ActivityCompletedMsg, ActivityExecute, ActivityFailedMsg, ApplicationError, CancelInstance, ContinueAsNew,
    CustomStatusUpdated, ExternalRaised, KeyValueCleared, KeyValuesCleared, KeyValueSet, OrchestrationCompleted,
    OrchestrationContinuedAsNew, OrchestrationFailed, OrchestrationStarted, QueueMessage, StartOrchestration,
    SubOrchCompletedMsg, TimerCreated, TimerFiredMsg,
)
from ..errors import (
    CannotDeleteSubOrchestration, InstanceNotFound, InstanceStillRunning, InvalidInputError, LockLostError,
    ProviderError,
)
from ..providers.base import (
    ExecutionMetadata, InstanceFilter, KvEntry, PruneOptions, ScheduledActivityIdentifier, SessionConfig, TagFilter,
)

__all__ = [
    "CHECKLIST",
    "ConformanceClock",
    "conformance_env",
    "conformance_pair",
    "conformance_provider",
    "conformance_clock",
    "TestConformancePlumbing",
    "TestConformanceLocking",
    "TestConformanceLockExpiry",
    "TestConformanceAtomicity",
    "TestConformanceQueues",
    "TestConformanceInstances",
    "TestConformancePoison",
    "TestConformanceCancellation",
    "TestConformanceManagement",
    "TestConformanceDeletion",
    "TestConformancePruning",
    "TestConformanceCustomStatus",
    "TestConformanceKeyValue",
    "TestConformanceSessions",
    "TestConformanceTags",
    "TestConformanceCapabilityFiltering",
    "TestConformanceCorruptHistory",
]

#: SPEC §16 items A1–I31 (provider part of the checklist) with a one-line summary.
CHECKLIST: dict[str, str] = {
    "A1": "one fetcher per instance, also under multi-threaded contention",
    "A2": "distinct token per fetch; unknown tokens fail naming the token",
    "A3": "messages arriving during a lock stay invisible and survive the ack; ack deletes exactly the batch",
    "A4": "locks never block other instances; after expiry another fetcher gets the instance (attempts +1)",
    "A5": "duplicate event id: ack fails, nothing changes, lock still held",
    "A6": "multi-output ack is all-or-nothing; two acks with one token cannot both succeed",
    "A7": "ack or renew after expiry fail; ack and abandon release the lock immediately",
    "B8": "worker queue FIFO; visible immediately; fetch does not remove until ack",
    "B9": "worker ack deletes and enqueues the completion atomically; ack(None) enqueues nothing",
    "B10": "TimerFired invisible before fire_at_ms; abandon delay hides until due",
    "B11": "lost tokens: items reappear after lock expiry",
    "B12": "QueueMessage-only batches for unknown instances are deleted; for existing ones delivered",
    "B13": "worker renew extends a valid lock, fails when invalid/expired/acked/deleted",
    "C14": "enqueue never creates an instance; first ack with metadata does",
    "C15": "executions isolated; read returns the latest; continue-as-new keeps old histories",
    "D16": "attempt counting per message, batch max, ignore_attempt",
    "E17": "activity cancellation through the orchestrator ack",
    "F18": "list/filter/info/metrics/queue-depth results accurate",
    "F19": "deleting instances cleans everything; running needs force; unknown errors; ids reusable",
    "F20": "child deletion refused; root cascades; list_children direct; get_parent_id",
    "F21": "force-delete during a turn: ack fails without resurrecting; stale activity cannot complete",
    "F22": "delete_instances_atomic detects the orphan race and rolls back",
    "F23": "bulk delete: filters AND-ed, limit honoured and iterable, running skipped, children cascaded",
    "F24": "prune: options combine; current/running never pruned; bulk covers running instances",
    "G25": "custom status: last set wins, one version bump per ack",
    "G26": "KV round trips, isolation, clear-all then set",
    "G27": "KV snapshot/delta merge, tombstones, prune keeps keys, delete removes them",
    "H28": "sessions: claim, affinity, blocking, takeover, self-reclaim, concurrent claim, renewal, cleanup",
    "H29": "tag filters select exactly; tags preserved through ack and abandon",
    "I30": "capability filtering by pinned duroxide version",
    "I31": "corrupt history: filtered-out first; history_error with rising attempts; failure ack succeeds",
}

LOCK = 30_000  # default lock timeout used by the helpers


# --- clock and fixtures ------------------------------------------------------------------------


class ConformanceClock:
    """A fake clock: integer ms that move only through :meth:`advance`."""

    def __init__(self, start_ms: int = 1_000_000) -> None:
        self._now = int(start_ms)

    def now_ms(self) -> int:
        return self._now

    def advance(self, ms: int) -> None:
        self._now += int(ms)


@pytest.fixture
def conformance_env(conformance_provider_factory: Callable[[], tuple[Any, Any]]) -> Iterator[Callable]:
    """Callable returning fresh ``(provider, clock)`` pairs from the user's factory; every
    provider made is checked (``_check``) and closed (``close``) after the test."""
    made: list[Any] = []

    def make() -> tuple[Any, Any]:
        provider, clock = conformance_provider_factory()
        made.append(provider)
        return provider, clock

    yield make
    for provider in made:
        check = getattr(provider, "_check", None)
        try:
            if check is not None:
                check()
        finally:
            close = getattr(provider, "close", None)
            if close is not None:
                close()


@pytest.fixture
def conformance_pair(conformance_env: Callable) -> tuple[Any, Any]:
    return conformance_env()


@pytest.fixture
def conformance_provider(conformance_pair: tuple[Any, Any]) -> Any:
    """A fresh provider bound to ``conformance_clock``."""
    return conformance_pair[0]


@pytest.fixture
def conformance_clock(conformance_pair: tuple[Any, Any]) -> Any:
    """The provider's fake clock: ``now_ms()`` and ``advance(ms)``."""
    return conformance_pair[1]


# --- builders ----------------------------------------------------------------------------------


def started(inst, eid=1, execution=1, name="Orch", version="1.0.0", parent=None, dv="0.1.0"):
    return OrchestrationStarted(event_id=eid, instance_id=inst, execution_id=execution, name=name, version=version,
                                input="in", parent_instance=parent, duroxide_version=dv)


def timer_created(inst, eid, execution=1):
    return TimerCreated(event_id=eid, instance_id=inst, execution_id=execution, fire_at_ms=0)


def completed_ev(inst, eid, execution=1, output="done"):
    return OrchestrationCompleted(event_id=eid, instance_id=inst, execution_id=execution, output=output)


def can_ev(inst, eid, execution=1, new_input=""):
    return OrchestrationContinuedAsNew(event_id=eid, instance_id=inst, execution_id=execution, input=new_input)


def failed_ev(inst, eid, message="x", execution=1):
    details = ApplicationError(kind="OrchestrationFailed", message=message)
    return OrchestrationFailed(event_id=eid, instance_id=inst, execution_id=execution, details=details)


def status_ev(inst, eid, status):
    return CustomStatusUpdated(event_id=eid, instance_id=inst, status=status)


def kv_set(inst, eid, key, value, ts=5):
    return KeyValueSet(event_id=eid, instance_id=inst, key=key, value=value, last_updated_at_ms=ts)


def kv_clear(inst, eid, key):
    return KeyValueCleared(event_id=eid, instance_id=inst, key=key)


def kv_clear_all(inst, eid):
    return KeyValuesCleared(event_id=eid, instance_id=inst)


def start_item(inst, name="Orch", version=None, parent=None):
    return StartOrchestration(instance=inst, orchestration=name, input="in", version=version, parent_instance=parent)


def meta(name="Orch", version="1.0.0", status=None, output=None, parent=None, pin="0.1.0"):
    return ExecutionMetadata(status=status, output=output, orchestration_name=name, orchestration_version=version,
                             parent_instance_id=parent, pinned_duroxide_version=pin)


def act(inst, aid, execution=1, session=None, tag=None, name="Act"):
    return ActivityExecute(instance=inst, execution_id=execution, id=aid, name=name, input="x", session_id=session,
                           tag=tag)


def act_done(inst, aid, execution=1, result="ok"):
    return ActivityCompletedMsg(instance=inst, execution_id=execution, id=aid, result=result)


def qmsg(inst, data="d", name="q"):
    return QueueMessage(instance=inst, name=name, data=data)


def ack(p, item, delta=(), worker=(), orch=(), md=None, cancelled=(), execution=None):
    p.ack_orchestration_item(item.lock_token, item.execution_id if execution is None else execution, list(delta),
                             list(worker), list(orch), md if md is not None else ExecutionMetadata(), list(cancelled))


def create(p, inst, name="Orch", parent=None, status=None, extra=(), worker=(), dv="0.1.0"):
    """Start ``inst`` through the queue and commit its first turn; returns the fetched item."""
    p.enqueue_for_orchestrator(start_item(inst, name, parent=parent))
    item = p.fetch_orchestration_item(LOCK)
    assert item is not None and item.instance == inst, item
    delta = [started(inst, name=name, parent=parent, dv=dv), *extra]
    if status == "Completed":
        delta.append(completed_ev(inst, len(delta) + 1))
    md = meta(name, status=status, output="done" if status else None, parent=parent, pin=dv)
    ack(p, item, delta, worker=worker, md=md)
    return item


def fetch(p, **kw):
    return p.fetch_orchestration_item(LOCK, **kw)


def wfetch(p, **kw):
    return p.fetch_work_item(LOCK, **kw)


def drain_work(p, **kw) -> list[int]:
    """Fetch (and keep locked) every fetchable activity; their ids in fetch order."""
    ids = []
    while (lease := p.fetch_work_item(LOCK, **kw)) is not None:
        ids.append(lease.item.id)
    return ids


def _info(p, inst):
    try:
        return p.get_instance_info(inst)
    except InstanceNotFound:
        return None


def snapshot(p, ids=("a", "b", "c")):
    """Everything observable through the public API, to show an operation changed nothing."""
    return (
        {i: (p.read(i), p.list_executions(i), _info(p, i), p.get_kv_all_values(i), p.get_custom_status(i, -1))
         for i in ids},
        p.get_queue_depths(),
        p.list_instances(),
        p.get_system_metrics(),
    )


def run_threads(targets: list[Callable[[], None]], timeout: float = 60) -> None:
    """Run each target on its own thread; re-raise the first error; fail if one hangs."""
    errors: list[BaseException] = []

    def wrap(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported below
                errors.append(exc)
        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread did not finish: deadlock or livelock?"
    if errors:
        raise errors[0]


def _needs(p, hook: str) -> Callable:
    fn = getattr(p, hook, None)
    if fn is None:
        pytest.skip(f"provider has no optional {hook}() hook")
    return fn


# --- plumbing ----------------------------------------------------------------------------------


class TestConformancePlumbing:
    def test_bind_clock_never_replaces_the_clock(self, conformance_provider, conformance_clock):
        """§18: bind_clock keeps an existing clock (the provider's time source is injected)."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"), delay_ms=500)
        p.bind_clock(ConformanceClock(clock.now_ms() + 10**9))
        assert fetch(p) is None  # still judged by the original clock
        clock.advance(500)
        assert fetch(p).instance == "a"

    def test_enqueue_and_acks_notify(self, conformance_provider):
        """§15.1: wake-up listeners hear about enqueues and acks that add work."""
        p = conformance_provider
        seen: list[str] = []
        p.add_wakeup_listener(seen.append)
        p.enqueue_for_orchestrator(start_item("a"))
        assert seen == ["orchestrator"]
        item = fetch(p)
        ack(p, item, [started("a")], worker=[act("a", 2)], orch=[start_item("b")], md=meta())
        assert sorted(seen[1:]) == ["committed", "orchestrator", "worker"]
        lease = wfetch(p)
        p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert seen[4:] == ["orchestrator"]
        p.enqueue_for_worker(act("a", 3))
        assert seen[5:] == ["worker"]

    def test_ack_without_new_items_wakes_only_waiting_clients(self, conformance_provider):
        """§15.1: an ack that adds no work wakes no dispatcher; it still reports "committed"
        so in-process clients waiting for a status look again at once."""
        p = conformance_provider
        seen: list[str] = []
        p.enqueue_for_orchestrator(start_item("a"))
        p.add_wakeup_listener(seen.append)
        ack(p, fetch(p), [started("a")], md=meta())
        assert seen == ["committed"]

    def test_listener_runs_after_commit_outside_locks(self, conformance_provider):
        """§15.1: a listener may use the provider from another thread (no lock held, work committed)."""
        p = conformance_provider
        results: list[Any] = []

        def listener(kind: str) -> None:
            t = threading.Thread(target=lambda: results.append(p.get_queue_depths()))
            t.start()
            t.join(timeout=30)
            results.append(t.is_alive())

        p.add_wakeup_listener(listener)
        p.enqueue_for_orchestrator(start_item("a"))
        assert results[-1] is False and results[0].orchestrator_queue == 1

    def test_next_wakeup_ms(self, conformance_provider, conformance_clock):
        """§18: the optional next_wakeup_ms() hook reports the next visibility or lock expiry."""
        p, clock = conformance_provider, conformance_clock
        wake = _needs(p, "next_wakeup_ms")
        t0 = clock.now_ms()
        assert wake() is None
        p.enqueue_for_orchestrator(start_item("a"), delay_ms=700)
        p.enqueue_for_worker(act("a", 1))
        assert wake() == t0 + 700
        p.fetch_work_item(300)
        assert wake() == t0 + 300  # a live lock expiring is a wake-up too
        clock.advance(700)
        p.fetch_orchestration_item(50)
        assert wake() == t0 + 750

    def test_same_calls_same_results(self, conformance_env):
        """§18: the same call sequence on two fresh providers gives the same observable results."""

        def run() -> list:
            prov, clock = conformance_env()
            out: list = []
            for inst in ["z", "m", "a"]:
                prov.enqueue_for_orchestrator(start_item(inst))
                prov.enqueue_for_worker(act(inst, 1))
            for _ in range(3):
                item = prov.fetch_orchestration_item(LOCK)
                out.append((item.instance, item.messages, item.attempt_count))
                ack(prov, item, [started(item.instance)], md=meta())
                lease = prov.fetch_work_item(LOCK)
                out.append((lease.item, lease.attempt_count))
                clock.advance(7)
            out.append(prov.list_instances())
            return out

        first, second = run(), run()
        assert first == second
        assert [entry[0] for entry in first[0:6:2]] == ["z", "m", "a"]


# --- A. locking ----------------------------------------------------------------------------------


class TestConformanceLocking:
    def test_one_fetcher_per_instance(self, conformance_provider):
        """A1: while an instance is locked, nobody else fetches it; the batch has all its messages."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="e", data="1"))
        first = fetch(p)
        assert first.instance == "a" and len(first.messages) == 2
        assert fetch(p) is None

    def test_one_fetcher_per_instance_under_thread_contention(self, conformance_provider):
        """A1: 8 threads racing over 40 instances fetch each exactly once."""
        p = conformance_provider
        for i in range(40):
            p.enqueue_for_orchestrator(start_item(f"i{i:02}"))
            p.enqueue_for_orchestrator(qmsg(f"i{i:02}"))
        got: list[str] = []
        guard = threading.Lock()
        barrier = threading.Barrier(8)

        def worker() -> None:
            barrier.wait()
            while (item := p.fetch_orchestration_item(LOCK)) is not None:
                with guard:
                    got.append(item.instance)

        run_threads([worker] * 8)
        assert sorted(got) == [f"i{i:02}" for i in range(40)]

    def test_distinct_tokens_and_unknown_tokens_fail(self, conformance_provider):
        """A2: every fetch gets its own token; unknown tokens fail with LockLostError naming them."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_orchestrator(start_item("b"))
        p.enqueue_for_worker(act("a", 1))
        a, b, w = fetch(p), fetch(p), wfetch(p)
        assert len({a.lock_token, b.lock_token, w.lock_token}) == 3
        with pytest.raises(LockLostError, match="bogus-token"):
            p.ack_orchestration_item("bogus-token", 1, [], [], [], ExecutionMetadata())
        with pytest.raises(LockLostError, match="bogus-token"):
            p.abandon_orchestration_item("bogus-token")
        with pytest.raises(LockLostError, match="bogus-token"):
            p.renew_orchestration_item_lock("bogus-token", 10)
        with pytest.raises(LockLostError, match="bogus-token"):
            p.ack_work_item("bogus-token", None)
        with pytest.raises(LockLostError, match="bogus-token"):
            p.renew_work_item_lock("bogus-token", 10)
        with pytest.raises(LockLostError, match="bogus-token"):
            p.abandon_work_item("bogus-token")
        # the real locks are unaffected
        ack(p, a, [started("a")], md=meta())
        p.ack_work_item(w.lock_token, None)

    def test_messages_arriving_during_lock_survive_ack(self, conformance_provider, conformance_clock):
        """A3: a message enqueued while the instance is locked is invisible, then survives the ack."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        clock.advance(5)
        late = ExternalRaised(instance="a", name="late", data="1")
        p.enqueue_for_orchestrator(late)
        assert fetch(p) is None  # invisible to others while locked
        ack(p, item, [started("a")], md=meta())
        nxt = fetch(p)
        assert nxt.messages == (late,)
        assert nxt.history == (started("a"),)

    def test_ack_deletes_exactly_the_fetched_messages(self, conformance_provider):
        """A3: the ack deletes every message of the batch and nothing else."""
        p = conformance_provider
        create(p, "b")
        batch = [start_item("a"), qmsg("a", "1"), ExternalRaised(instance="a", name="e", data="2"), qmsg("a", "3")]
        for item in batch:
            p.enqueue_for_orchestrator(item)
        p.enqueue_for_orchestrator(qmsg("b"))  # another instance's message: untouched by a's ack
        item = fetch(p)
        assert item.instance == "a" and item.messages == tuple(batch)
        late = qmsg("a", "late")
        p.enqueue_for_orchestrator(late)
        ack(p, item, [started("a")], md=meta())
        rest = {}
        while (nxt := fetch(p)) is not None:
            rest[nxt.instance] = nxt.messages
            ack(p, nxt, md=meta())
        assert rest == {"a": (late,), "b": (qmsg("b"),)}
        assert p.get_queue_depths().orchestrator_queue == 0

    def test_locks_never_block_other_instances(self, conformance_provider):
        """A4: a locked instance never blocks fetches of other instances."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_orchestrator(start_item("b"))
        assert fetch(p).instance == "a"
        p.enqueue_for_orchestrator(qmsg("a"))  # more for the locked instance
        assert fetch(p).instance == "b"


# --- A. lock expiry --------------------------------------------------------------------------------


class TestConformanceLockExpiry:
    def test_expired_lock_lets_another_fetcher_in(self, conformance_provider, conformance_clock):
        """A4, A7: after expiry another fetch gets the instance (attempts +1); the old token is dead."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        first = p.fetch_orchestration_item(1_000)
        assert first.attempt_count == 1
        clock.advance(999)
        assert fetch(p) is None
        clock.advance(1)
        second = fetch(p)
        assert second is not None and second.instance == "a" and second.attempt_count == 2
        assert second.lock_token != first.lock_token
        with pytest.raises(LockLostError, match=first.lock_token):
            ack(p, first, [started("a")], md=meta())
        ack(p, second, [started("a")], md=meta())
        assert p.read("a") == [started("a")]

    def test_ack_and_renew_after_expiry_fail_and_change_nothing(self, conformance_provider, conformance_clock):
        """A7: ack and renew after expiry fail (even before anyone refetches) and change nothing."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        item = p.fetch_orchestration_item(100)
        clock.advance(100)
        before = snapshot(p)
        with pytest.raises(LockLostError):
            ack(p, item, [started("a")], worker=[act("a", 2)], md=meta())
        with pytest.raises(LockLostError):
            p.renew_orchestration_item_lock(item.lock_token, 1000)
        assert snapshot(p) == before
        assert fetch(p).attempt_count == 2

    def test_renew_extends_lock(self, conformance_provider, conformance_clock):
        """A7: renewing a live lock pushes its expiry out."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        item = p.fetch_orchestration_item(100)
        clock.advance(90)
        p.renew_orchestration_item_lock(item.lock_token, 100)
        clock.advance(90)  # past the original expiry, inside the renewed one
        assert fetch(p) is None
        ack(p, item, [started("a")], md=meta())

    def test_ack_and_abandon_release_immediately(self, conformance_provider):
        """A7: after ack or abandon the instance is fetchable at once."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        p.abandon_orchestration_item(item.lock_token)
        item2 = fetch(p)
        assert item2 is not None and item2.instance == "a"
        ack(p, item2, [started("a")], md=meta())
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p).instance == "a"

    def test_orchestrator_lost_token_reappears_after_expiry(self, conformance_provider, conformance_clock):
        """B11: an orchestrator batch whose token is lost comes back after the lock expires."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        p.fetch_orchestration_item(50)
        clock.advance(50)
        again = fetch(p)
        assert again is not None and again.instance == "a"

    def test_worker_lost_tokens_reappear_after_expiry(self, conformance_provider, conformance_clock):
        """B11: activities whose tokens are lost come back after the lock expires, attempts +1."""
        p, clock = conformance_provider, conformance_clock
        for i in range(3):
            p.enqueue_for_worker(act("a", i))
        assert [p.fetch_work_item(100).item.id for _ in range(3)] == [0, 1, 2]
        assert wfetch(p) is None
        clock.advance(100)
        again = wfetch(p)
        assert again is not None and again.item.id == 0 and again.attempt_count == 2

    def test_worker_renew(self, conformance_provider, conformance_clock):
        """B13: renew extends a valid lock; fails when invalid, expired or acked; ack after expiry
        fails even if the row was never refetched."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_worker(act("a", 1))
        p.enqueue_for_worker(act("a", 2))
        lease = p.fetch_work_item(100)
        clock.advance(90)
        p.renew_work_item_lock(lease.lock_token, 100)
        clock.advance(90)
        assert wfetch(p).item.id == 2  # row 1 still locked by the renewal
        with pytest.raises(LockLostError):
            p.renew_work_item_lock("invalid", 100)
        clock.advance(10)  # expired
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(lease.lock_token, 100)
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 1))  # never refetched, still fails
        fresh = wfetch(p)
        assert fresh.item.id == 1
        p.ack_work_item(fresh.lock_token, None)
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(fresh.lock_token, 100)  # acked
        assert p.get_queue_depths().orchestrator_queue == 0  # the failed ack enqueued nothing


# --- A. atomicity ----------------------------------------------------------------------------------


class TestConformanceAtomicity:
    def test_duplicate_event_id_fails_changes_nothing_keeps_lock(self, conformance_provider):
        """A5: a duplicate event id fails the ack (permanently), changes nothing, keeps the lock."""
        p = conformance_provider
        create(p, "a", extra=[timer_created("a", 2)])
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        before = snapshot(p)
        for bad in ([timer_created("a", 2)], [timer_created("a", 3), timer_created("a", 3)]):
            with pytest.raises(ProviderError, match="duplicate") as err:
                ack(p, item, bad, worker=[act("a", 3)], orch=[qmsg("b")], md=meta(status="Completed"))
            assert err.value.retryable is False and not isinstance(err.value, LockLostError)
            assert snapshot(p) == before
        assert fetch(p) is None  # lock still held
        p.renew_orchestration_item_lock(item.lock_token, LOCK)
        ack(p, item, [timer_created("a", 3)], md=meta())
        assert [e.event_id for e in p.read("a")] == [1, 2, 3]
        assert fetch(p) is None  # the batch was consumed by the successful ack

    def test_invalid_item_in_ack_is_all_or_nothing(self, conformance_provider):
        """A6: one bad output item fails the whole ack; nothing is written."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        before = snapshot(p)
        with pytest.raises(ProviderError):
            ack(p, item, [started("a")], worker=[act("a", 2), qmsg("a")], md=meta())
        with pytest.raises(ProviderError):
            ack(p, item, [started("a")], orch=[act("a", 2)], md=meta())
        assert snapshot(p) == before
        ack(p, item, [started("a")], md=meta())
        assert p.read("a") == [started("a")]

    def test_two_acks_with_one_token_cannot_both_succeed(self, conformance_provider):
        """A6: the second ack with a used token fails and changes nothing."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        ack(p, item, [started("a")], md=meta())
        with pytest.raises(LockLostError):
            ack(p, item, [timer_created("a", 2)], md=meta())
        assert p.read("a") == [started("a")]

    def test_concurrent_acks_with_one_token_one_wins(self, conformance_provider):
        """A6: two threads acking the same token at once: exactly one commits."""
        p = conformance_provider
        for round_ in range(10):
            inst = f"r{round_}"
            p.enqueue_for_orchestrator(start_item(inst))
            item = fetch(p)
            outcomes: list[str] = []
            barrier = threading.Barrier(2)

            def racer(eid: int, item=item, inst=inst, outcomes=outcomes, barrier=barrier) -> None:
                barrier.wait()
                try:
                    ack(p, item, [started(inst), timer_created(inst, eid)], worker=[act(inst, eid)], md=meta())
                    outcomes.append(f"ok{eid}")
                except LockLostError:
                    outcomes.append("lost")

            run_threads([lambda: racer(2), lambda: racer(3)])
            assert sorted(outcomes)[0] == "lost" and len(outcomes) == 2, outcomes
            winner = int(next(o for o in outcomes if o != "lost")[2:])
            assert p.read(inst) == [started(inst), timer_created(inst, winner)]
        assert len(drain_work(p)) == 10  # one worker row per round: only the winner's

    def test_threaded_end_to_end_keeps_invariants(self, conformance_provider):
        """A1, A6: orchestrator and worker threads drive 20 instances to completion concurrently;
        every turn commits once and every queue ends empty."""
        p = conformance_provider
        n = 20
        for i in range(n):
            p.enqueue_for_orchestrator(start_item(f"i{i:02}"))
        done = threading.Event()

        def orchestrator() -> None:
            for _ in range(100_000):
                if done.is_set():
                    return
                item = p.fetch_orchestration_item(LOCK)
                if item is None:
                    if len(p.list_instances_by_status("Completed")) == n:
                        done.set()
                    continue
                inst = item.instance
                if not item.history:
                    ack(p, item, [started(inst)], worker=[act(inst, 2)], md=meta())
                elif any(isinstance(m, ActivityCompletedMsg) for m in item.messages):
                    ack(p, item, [completed_ev(inst, 2)], md=meta(status="Completed", output="r"))
                else:
                    ack(p, item, md=meta())
            raise AssertionError("orchestrator thread gave up")

        def worker() -> None:
            for _ in range(100_000):
                if done.is_set():
                    return
                lease = p.fetch_work_item(LOCK)
                if lease is not None:
                    p.ack_work_item(lease.lock_token, act_done(lease.item.instance, lease.item.id))
            raise AssertionError("worker thread gave up")

        run_threads([orchestrator] * 4 + [worker] * 4, timeout=120)
        depths = p.get_queue_depths()
        assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
        assert fetch(p) is None and wfetch(p) is None
        for i in range(n):
            assert [e.event_id for e in p.read(f"i{i:02}")] == [1, 2]


# --- B. queues -------------------------------------------------------------------------------------


class TestConformanceQueues:
    def test_worker_queue_fifo_visible_immediately_and_kept_until_ack(self, conformance_provider):
        """B8: worker rows come out FIFO, visible at once, and stay (locked) until acked."""
        p = conformance_provider
        for i in range(3):
            p.enqueue_for_worker(act("a", i))
        assert p.get_queue_depths().worker_queue == 3
        leases = [wfetch(p) for _ in range(3)]
        assert [lease.item for lease in leases] == [act("a", 0), act("a", 1), act("a", 2)]
        assert wfetch(p) is None and p.get_queue_depths().worker_queue == 0
        p.abandon_work_item(leases[1].lock_token)  # still there: abandon brings it back
        assert wfetch(p).item.id == 1

    def test_worker_ack_enqueues_completion_atomically(self, conformance_provider):
        """B9: the worker ack deletes the row and enqueues its completion; ack(None) enqueues nothing."""
        p = conformance_provider
        create(p, "a", worker=[act("a", 2), act("a", 3)])
        l2, l3 = wfetch(p), wfetch(p)
        p.ack_work_item(l2.lock_token, act_done("a", 2))
        p.ack_work_item(l3.lock_token, None)
        item = fetch(p)
        assert item.messages == (act_done("a", 2),)
        assert wfetch(p) is None and p.get_queue_depths().worker_queue == 0

    def test_worker_ack_rejects_non_completion_and_changes_nothing(self, conformance_provider):
        """B9: a worker ack with a non-completion fails and keeps the row; a real one succeeds."""
        p = conformance_provider
        p.enqueue_for_worker(act("a", 1))
        lease = wfetch(p)
        with pytest.raises(ProviderError):
            p.ack_work_item(lease.lock_token, start_item("a"))
        assert p.get_queue_depths().orchestrator_queue == 0
        details = ApplicationError(kind="ActivityFailed", message="x")
        failed = ActivityFailedMsg(instance="a", execution_id=1, id=1, details=details)
        p.ack_work_item(lease.lock_token, failed)
        assert wfetch(p) is None
        # a completion for an unknown instance is not an orphan QueueMessage: it stays queued
        assert fetch(p) is None and p.get_queue_depths().orchestrator_queue == 1
        p.enqueue_for_orchestrator(start_item("a"))
        assert fetch(p).messages == (failed, start_item("a"))

    def test_timer_invisible_before_fire_at(self, conformance_provider, conformance_clock):
        """B10: a TimerFired sent by an ack is invisible until its fire_at_ms."""
        p, clock = conformance_provider, conformance_clock
        t0 = clock.now_ms()
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        timer = TimerFiredMsg(instance="a", execution_id=1, id=2, fire_at_ms=t0 + 5_000)
        ack(p, item, [timer_created("a", 2)], orch=[timer], md=meta())
        clock.advance(4_999)
        assert fetch(p) is None
        wake = getattr(p, "next_wakeup_ms", None)
        assert wake is None or wake() == t0 + 5_000
        clock.advance(1)
        assert fetch(p).messages == (timer,)

    def test_enqueue_delay_and_abandon_delay_hide_until_due(self, conformance_provider, conformance_clock):
        """B10: enqueue delay and abandon delay hide orchestrator messages until due."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"), delay_ms=500)
        assert fetch(p) is None
        clock.advance(500)
        item = fetch(p)
        p.abandon_orchestration_item(item.lock_token, delay_ms=1_000)
        clock.advance(999)
        assert fetch(p) is None
        clock.advance(1)
        assert fetch(p).instance == "a"

    def test_worker_abandon_delay_and_plain_abandon_keeps_fifo_place(self, conformance_provider, conformance_clock):
        """B10: a plain worker abandon keeps the FIFO place; a delayed one hides the row until due."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_worker(act("a", 1))
        clock.advance(10)
        p.enqueue_for_worker(act("a", 2))
        first = wfetch(p)
        p.abandon_work_item(first.lock_token)
        assert wfetch(p).item.id == 1  # plain abandon: same FIFO place
        lease2 = wfetch(p)
        p.abandon_work_item(lease2.lock_token, delay_ms=300)
        clock.advance(299)
        assert wfetch(p) is None
        clock.advance(1)
        assert wfetch(p).item.id == 2
        with pytest.raises(LockLostError):
            p.abandon_work_item("nope")

    def test_queue_message_only_orphans_are_deleted(self, conformance_provider):
        """B12: QueueMessages for an instance that does not exist are deleted, not delivered later."""
        p = conformance_provider
        p.enqueue_for_orchestrator(qmsg("ghost", "1"))
        p.enqueue_for_orchestrator(qmsg("ghost", "2"))
        p.enqueue_for_orchestrator(start_item("real"))
        assert fetch(p).instance == "real"
        assert p.get_queue_depths().orchestrator_queue == 0  # only real's (locked) row remains
        p.enqueue_for_orchestrator(start_item("ghost"))
        assert fetch(p).messages == (start_item("ghost"),)

    def test_queue_messages_wait_for_a_pending_start(self, conformance_provider, conformance_clock):
        """B12: (refinement) while the instance's start item is queued but not yet visible (its
        first turn was abandoned with a delay), its QueueMessages are kept, not deleted."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("late"))
        first = fetch(p)
        p.abandon_orchestration_item(first.lock_token, 1_000)  # the start is invisible for 1 s
        p.enqueue_for_orchestrator(qmsg("late", "early bird"))
        assert fetch(p) is None  # not deliverable yet, and not deleted either
        assert p.get_queue_depths().orchestrator_queue == 2
        clock.advance(1_000)
        item = fetch(p)
        assert sorted(type(m).__name__ for m in item.messages) == ["QueueMessage", "StartOrchestration"]

    def test_messages_wait_for_a_pending_continue_as_new(self, conformance_provider, conformance_clock):
        """B12: (refinement) after a continue-as-new, while its ContinueAsNew item is queued but
        not yet visible, the instance's other messages are not fetched without it (they would
        be discarded); they come together once the item is visible."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("c"))
        item = fetch(p)
        can = ContinueAsNew(instance="c", orchestration="O", input='"next"')
        ack(p, item, [started("c"), OrchestrationContinuedAsNew(event_id=2, instance_id="c", input='"next"')],
            orch=[can], md=meta(status="ContinuedAsNew", output='"next"'))
        second = fetch(p)
        assert [type(m).__name__ for m in second.messages] == ["ContinueAsNew"]
        p.abandon_orchestration_item(second.lock_token, 1_000)  # the item is hidden for 1 s
        p.enqueue_for_orchestrator(qmsg("c", "mail"))
        assert fetch(p) is None  # not fetched (and so not discarded) without the item
        clock.advance(1_000)
        together = fetch(p)
        assert sorted(type(m).__name__ for m in together.messages) == ["ContinueAsNew", "QueueMessage"]

    def test_queue_messages_for_existing_instance_are_delivered(self, conformance_provider):
        """B12: QueueMessages for an existing instance are delivered."""
        p = conformance_provider
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a", "1"))
        assert fetch(p).messages == (qmsg("a", "1"),)

    def test_non_queue_orphans_are_kept_and_do_not_block_others(self, conformance_provider):
        """B12: other messages for unknown instances stay queued (uncounted) and block nobody."""
        p = conformance_provider
        p.enqueue_for_orchestrator(CancelInstance(instance="ghost", reason="r"))
        p.enqueue_for_orchestrator(ExternalRaised(instance="ghost2", name="e", data="d"))
        p.enqueue_for_orchestrator(qmsg("ghost2"))
        p.enqueue_for_orchestrator(start_item("real"))
        item = fetch(p)
        assert item.instance == "real"
        assert fetch(p) is None
        assert p.get_queue_depths().orchestrator_queue == 3  # ghost, ghost2 x2 (real's row is locked)
        p.enqueue_for_orchestrator(start_item("ghost"))
        ack(p, item, [started("real")], md=meta())
        ghost = fetch(p)
        assert ghost.instance == "ghost" and ghost.attempt_count == 1  # the skips counted nothing
        assert [type(m).__name__ for m in ghost.messages] == ["CancelInstance", "StartOrchestration"]

    def test_enqueue_rejects_wrong_queue(self, conformance_provider):
        """B8: activities go only to the worker queue and everything else only to the orchestrator's."""
        p = conformance_provider
        with pytest.raises(ProviderError):
            p.enqueue_for_orchestrator(act("a", 1))
        with pytest.raises(ProviderError):
            p.enqueue_for_worker(start_item("a"))
        depths = p.get_queue_depths()
        assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)

    def test_sub_orch_completion_targets_parent_queue(self, conformance_provider):
        """B9: SubOrchCompleted is delivered to the parent instance."""
        p = conformance_provider
        create(p, "parent")
        msg = SubOrchCompletedMsg(parent_instance="parent", parent_execution_id=1, parent_id=2, result="r")
        p.enqueue_for_orchestrator(msg)
        item = fetch(p)
        assert item.instance == "parent" and item.messages == (msg,)

    def test_batch_is_in_queue_order(self, conformance_provider, conformance_clock):
        """B8: a batch lists its messages in queue order."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        clock.advance(1)
        p.enqueue_for_orchestrator(qmsg("a", "1"))
        p.enqueue_for_orchestrator(qmsg("a", "2"))
        assert [getattr(m, "data", None) for m in fetch(p).messages] == [None, "1", "2"]


# --- C. instances & executions ---------------------------------------------------------------------


class TestConformanceInstances:
    def test_enqueue_never_creates_instance(self, conformance_provider, conformance_clock):
        """C14: enqueue and fetch create nothing; the first ack with metadata creates the instance."""
        p, clock = conformance_provider, conformance_clock
        t0 = clock.now_ms()
        p.enqueue_for_orchestrator(start_item("a", version="2.0.0"))
        assert p.list_instances() == [] and p.latest_execution_id("a") is None
        with pytest.raises(InstanceNotFound):
            p.get_instance_info("a")
        item = fetch(p)
        assert (item.execution_id, item.history, item.orchestration_name, item.version) == (1, (), "Orch", "2.0.0")
        assert dict(item.kv_snapshot) == {}
        assert p.list_instances() == []  # fetch does not create it either
        ack(p, item, [started("a")], md=meta(version="2.0.0"))
        info = p.get_instance_info("a")
        assert (info.orchestration_name, info.orchestration_version, info.current_execution_id) == ("Orch", "2.0.0", 1)
        assert (info.status, info.created_at, info.parent_instance_id) == ("Running", t0, None)

    def test_null_version_filled_later_and_parent_stored(self, conformance_provider, conformance_clock):
        """C14: a NULL version is filled by a later ack; the child's parent id is stored once."""
        p, clock = conformance_provider, conformance_clock
        t0 = clock.now_ms()
        p.enqueue_for_orchestrator(start_item("child", parent="root"))
        item = fetch(p)
        ack(p, item, [], md=meta(version=None, parent="root", pin=None))
        assert p.get_instance_info("child").orchestration_version is None
        p.enqueue_for_orchestrator(qmsg("child"))
        clock.advance(3)
        item = fetch(p)
        assert item.version is None
        ack(p, item, [started("child", parent="root")], md=meta(version="1.5.0", parent="ignored"))
        info = p.get_instance_info("child")
        assert info.orchestration_version == "1.5.0" and info.parent_instance_id == "root"
        assert info.updated_at == t0 + 3 and info.created_at == t0

    def test_ack_without_metadata_name_creates_no_row(self, conformance_provider):
        """C14: without a name in the metadata no instance row exists; history alone drives fetch."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        ack(p, fetch(p), [started("a")])
        assert p.list_instances() == [] and p.read("a") == [started("a")]
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert (item.orchestration_name, item.execution_id, item.history) == ("Orch", 1, (started("a"),))

    def test_continue_as_new_creates_new_execution_and_keeps_old(self, conformance_provider):
        """C15: continue-as-new starts execution 2; old histories persist; read returns the latest."""
        p = conformance_provider
        create(p, "a", extra=[timer_created("a", 2)])
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        can = ContinueAsNew(instance="a", orchestration="Orch", input="next", version="1.0.0")
        ack(p, item, [can_ev("a", 3, new_input="next")], orch=[can], md=meta(status="ContinuedAsNew", output="next"))
        item = fetch(p)
        assert item.execution_id == 1 and item.messages == (can,)  # the runtime moves to execution 2
        ack(p, item, [started("a", execution=2)], execution=2, md=meta())
        assert p.latest_execution_id("a") == 2 and p.list_executions("a") == [1, 2]
        assert p.read("a") == [started("a", execution=2)]
        assert [e.event_id for e in p.read_with_execution("a", 1)] == [1, 2, 3]
        assert p.get_execution_info("a", 1).status == "ContinuedAsNew"
        assert p.get_execution_info("a", 1).output == "next"
        assert p.get_instance_info("a").status == "Running"
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p).history == (started("a", execution=2),)

    def test_stale_execution_ack_does_not_lower_current(self, conformance_provider):
        """C15: current_execution_id only moves up."""
        p = conformance_provider
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [started("a", execution=3)], execution=3, md=meta())
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [timer_created("a", 2)], execution=1, md=meta())
        assert p.latest_execution_id("a") == 3
        assert [e.event_id for e in p.read_with_execution("a", 1)] == [1, 2]

    def test_reads_for_unknown_instances(self, conformance_provider):
        """C15: reads of unknown instances are empty, not errors."""
        p = conformance_provider
        assert p.read("nope") == [] and p.read_with_execution("nope", 1) == []
        assert p.latest_execution_id("nope") is None and p.list_executions("nope") == []

    def test_append_with_execution_sorts_and_rejects_duplicates(self, conformance_provider):
        """C15, A5: append stores events ordered by id; a duplicate id stores nothing."""
        p = conformance_provider
        p.append_with_execution("a", 1, [started("a"), timer_created("a", 5)])
        p.append_with_execution("a", 1, [timer_created("a", 3)])
        assert [e.event_id for e in p.read("a")] == [1, 3, 5]
        with pytest.raises(ProviderError, match="duplicate"):
            p.append_with_execution("a", 1, [timer_created("a", 7), timer_created("a", 3)])
        assert [e.event_id for e in p.read("a")] == [1, 3, 5]

    def test_histories_round_trip_verbatim(self, conformance_provider):
        """C15: events and work items come back equal to what was stored (ids never reassigned)."""
        p = conformance_provider
        details = ApplicationError(kind="OrchestrationFailed", message="boom ünï \"q\"")
        events = [started("a", dv="1.2.3"), timer_created("a", 7), kv_set("a", 9, "k", "v"), status_ev("a", 12, None),
                  OrchestrationFailed(event_id=99999, instance_id="a", details=details, timestamp_ms=42)]
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        cont = ContinueAsNew(instance="a", orchestration="Orch", input="i", carry_forward_events=(("q", "d"),),
                             initial_custom_status="s")
        ack(p, item, events, orch=[cont], md=meta())
        assert p.read("a") == events
        assert fetch(p).messages == (cont,)


# --- D. poison / attempts --------------------------------------------------------------------------


class TestConformancePoison:
    def test_attempts_count_per_message_and_batch_reports_max(self, conformance_provider, conformance_clock):
        """D16: first fetch 1; expiry and abandon +1; counted per message; the batch reports the max."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_orchestrator(start_item("a"))
        assert fetch(p).attempt_count == 1
        clock.advance(LOCK)  # expiry
        item = fetch(p)
        assert item.attempt_count == 2
        p.abandon_orchestration_item(item.lock_token)
        p.enqueue_for_orchestrator(qmsg("a"))
        p.enqueue_for_orchestrator(qmsg("a", "later"), delay_ms=10 * LOCK)
        item = fetch(p)
        assert item.attempt_count == 3 and len(item.messages) == 2  # start: 3rd delivery, qmsg: 1st
        ack(p, item, [started("a")], md=meta())
        clock.advance(10 * LOCK)
        later = fetch(p)
        assert later.messages == (qmsg("a", "later"),) and later.attempt_count == 1  # per message

    def test_ignore_attempt_undoes_the_increment(self, conformance_provider):
        """D16: abandon with ignore_attempt undoes the fetch's increment (both queues)."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        for _ in range(3):
            item = fetch(p)
            assert item.attempt_count == 1
            p.abandon_orchestration_item(item.lock_token, ignore_attempt=True)
        p.enqueue_for_worker(act("a", 1))
        for _ in range(2):
            lease = wfetch(p)
            assert lease.attempt_count == 1
            p.abandon_work_item(lease.lock_token, ignore_attempt=True)
        lease = wfetch(p)
        p.abandon_work_item(lease.lock_token)
        assert wfetch(p).attempt_count == 2

    def test_orphan_skips_do_not_count_attempts(self, conformance_provider):
        """D16: messages skipped as orphans are not counted as deliveries."""
        p = conformance_provider
        p.enqueue_for_orchestrator(CancelInstance(instance="x", reason="r"))
        for _ in range(3):
            assert fetch(p) is None
        p.enqueue_for_orchestrator(start_item("x"))
        assert fetch(p).attempt_count == 1


# --- E. activity cancellation ----------------------------------------------------------------------


class TestConformanceCancellation:
    def test_activities_fetchable_regardless_of_orchestration_status(self, conformance_provider):
        """E17: worker rows are fetchable even when their orchestration is Completed."""
        p = conformance_provider
        create(p, "a", status="Completed", worker=[act("a", 2)])
        assert wfetch(p).item == act("a", 2)

    def test_cancelled_deletes_matching_rows_even_locked(self, conformance_provider):
        """E17: cancelled ids delete matching rows (locked or not); unknown ids are ignored;
        idempotent; the running activity's renew and ack then fail."""
        p = conformance_provider
        create(p, "a", worker=[act("a", 2), act("a", 3), act("a", 4)])
        lease = wfetch(p)
        assert lease.item.id == 2
        p.enqueue_for_orchestrator(qmsg("a"))
        cancel = [
            ScheduledActivityIdentifier("a", 1, 2),
            ScheduledActivityIdentifier("a", 1, 3),
            ScheduledActivityIdentifier("a", 1, 99),  # unknown: ignored
            ScheduledActivityIdentifier("a", 2, 4),  # other execution: no match
        ]
        ack(p, fetch(p), md=meta(), cancelled=cancel)
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(lease.lock_token, 10)
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert drain_work(p) == [4]
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), md=meta(), cancelled=cancel)  # idempotent
        assert fetch(p) is None

    def test_insert_and_cancel_in_one_ack_leaves_nothing(self, conformance_provider):
        """E17: scheduling and cancelling one activity in the same ack leaves no row."""
        p = conformance_provider
        p.enqueue_for_orchestrator(start_item("a"))
        cancel = [ScheduledActivityIdentifier("a", 1, 2)]
        ack(p, fetch(p), [started("a")], worker=[act("a", 2)], md=meta(), cancelled=cancel)
        assert wfetch(p) is None and p.get_queue_depths().worker_queue == 0

    def test_activity_orphaned_by_force_delete_runs_harmlessly(self, conformance_provider):
        """E17, F21: a running activity of a force-deleted instance fails renew/ack and enqueues nothing."""
        p = conformance_provider
        create(p, "a", worker=[act("a", 2)])
        lease = wfetch(p)
        p.delete_instance("a", force=True)
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(lease.lock_token, 10)
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert p.get_queue_depths().orchestrator_queue == 0 and fetch(p) is None


# --- F. management ---------------------------------------------------------------------------------


def make_tree(p):
    """root -> (c1 -> g1), c2 ; all Completed."""
    create(p, "root", status="Completed")
    create(p, "c1", parent="root", status="Completed")
    create(p, "c2", parent="root", status="Completed")
    create(p, "g1", parent="c1", status="Completed")


class TestConformanceManagement:
    def test_lists_info_metrics_depths(self, conformance_provider, conformance_clock):
        """F18: list/by-status/info/execution info/metrics/queue depths are accurate."""
        p, clock = conformance_provider, conformance_clock
        t0 = clock.now_ms()
        create(p, "a", status="Completed")
        clock.advance(1)
        create(p, "b", extra=[timer_created("b", 2)])
        clock.advance(1)
        create(p, "c")
        clock.advance(1)
        p.enqueue_for_orchestrator(qmsg("b"))
        p.enqueue_for_orchestrator(qmsg("c"))
        item = fetch(p)
        assert item.instance == "b"
        ack(p, item, [failed_ev("b", 3)], md=meta(status="Failed", output="x"))
        assert p.list_instances() == ["c", "b", "a"]
        assert p.list_instances_by_status("Running") == ["c"]
        assert p.list_instances_by_status("Failed") == ["b"]
        assert p.list_instances_by_status("Completed") == ["a"]
        info = p.get_execution_info("b", 1)
        assert (info.status, info.output, info.started_at) == ("Failed", "x", t0 + 1)
        assert (info.completed_at, info.event_count) == (t0 + 3, 3)
        assert p.get_execution_info("c", 1).completed_at is None
        with pytest.raises(InstanceNotFound):
            p.get_execution_info("b", 2)
        with pytest.raises(InstanceNotFound):
            p.get_instance_info("nope")
        m = p.get_system_metrics()
        assert (m.total_instances, m.total_executions, m.total_events) == (3, 3, 6)
        assert (m.running_instances, m.completed_instances, m.failed_instances) == (1, 1, 1)
        p.enqueue_for_worker(act("c", 2))
        p.enqueue_for_worker(act("c", 3))
        p.enqueue_for_orchestrator(qmsg("a"))
        wfetch(p)
        d = p.get_queue_depths()
        assert (d.orchestrator_queue, d.worker_queue, d.timer_queue) == (2, 1, 0)
        fetch(p)  # locks "c" (oldest visible message)
        assert p.get_queue_depths().orchestrator_queue == 1

    def test_hierarchy(self, conformance_provider):
        """F20: list_children is direct only; get_parent_id; the tree lists children before parents."""
        p = conformance_provider
        make_tree(p)
        assert p.list_children("root") == ["c1", "c2"]
        assert p.list_children("c1") == ["g1"] and p.list_children("nope") == []
        assert p.get_parent_id("root") is None and p.get_parent_id("g1") == "c1"
        with pytest.raises(InstanceNotFound):
            p.get_parent_id("nope")
        tree = p.get_instance_tree("root")
        assert tree.root_id == "root" and sorted(tree.all_ids) == ["c1", "c2", "g1", "root"]
        pos = {i: n for n, i in enumerate(tree.all_ids)}
        assert pos["g1"] < pos["c1"] < pos["root"] and pos["c2"] < pos["root"]
        with pytest.raises(InstanceNotFound):
            p.get_instance_tree("nope")


class TestConformanceDeletion:
    def test_delete_terminal_cleans_everything_and_id_is_reusable(self, conformance_provider, conformance_clock):
        """F19: deleting removes history, executions, queues and KV; the id can be reused."""
        p, clock = conformance_provider, conformance_clock
        create(p, "a", extra=[kv_set("a", 2, "k", "v")], status="Completed")
        create(p, "b")
        p.enqueue_for_orchestrator(qmsg("a"))
        p.enqueue_for_orchestrator(TimerFiredMsg(instance="a", execution_id=1, id=9, fire_at_ms=clock.now_ms() + 10**9))
        p.enqueue_for_worker(act("a", 5))
        assert p.get_kv_value("a", "k") == "v"
        res = p.delete_instance("a", force=False)
        assert (res.instances_deleted, res.executions_deleted) == (1, 1)
        assert (res.events_deleted, res.queue_messages_deleted) == (3, 3)
        assert p.read("a") == [] and p.list_executions("a") == [] and p.get_kv_all_values("a") == {}
        assert p.list_instances() == ["b"] and p.get_kv_value("a", "k") is None
        depths = p.get_queue_depths()
        assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
        create(p, "a")
        assert p.get_instance_info("a").status == "Running" and p.read("a") == [started("a")]
        p.enqueue_for_orchestrator(qmsg("a"))
        assert dict(fetch(p).kv_snapshot) == {}

    def test_running_needs_force_and_unknown_is_not_found(self, conformance_provider):
        """F19: a running instance needs force; an unknown one is InstanceNotFound."""
        p = conformance_provider
        create(p, "a")
        with pytest.raises(InstanceStillRunning):
            p.delete_instance("a", force=False)
        with pytest.raises(InstanceNotFound):
            p.delete_instance("nope", force=True)
        assert p.delete_instance("a", force=True).instances_deleted == 1

    def test_child_deletion_refused_and_root_cascades(self, conformance_provider):
        """F20: children cannot be deleted (even forced); deleting the root cascades at any depth."""
        p = conformance_provider
        make_tree(p)
        for child in ("c1", "g1"):
            with pytest.raises(CannotDeleteSubOrchestration):
                p.delete_instance(child, force=True)
        res = p.delete_instance("root", force=False)
        assert res.instances_deleted == 4 and res.executions_deleted == 4
        assert p.list_instances() == []

    def test_running_descendant_blocks_non_forced_delete(self, conformance_provider):
        """F19: a running descendant blocks a non-forced root deletion."""
        p = conformance_provider
        create(p, "root", status="Completed")
        create(p, "kid", parent="root")
        with pytest.raises(InstanceStillRunning):
            p.delete_instance("root", force=False)
        assert p.list_instances() == ["kid", "root"]
        assert p.delete_instance("root", force=True).instances_deleted == 2

    def test_force_delete_during_turn_fails_ack_without_resurrecting(self, conformance_provider):
        """F21: force-deleting during a turn makes its ack fail without recreating anything."""
        p = conformance_provider
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        p.delete_instance("a", force=True)
        with pytest.raises(LockLostError):
            ack(p, item, [timer_created("a", 2)], worker=[act("a", 2)], md=meta())
        assert p.list_instances() == [] and p.read("a") == [] and p.list_executions("a") == []
        assert wfetch(p) is None and p.get_queue_depths().worker_queue == 0

    def test_stale_activity_cannot_complete_into_recreated_instance(self, conformance_provider):
        """F21: an activity leased before deletion cannot complete into a recreated instance."""
        p = conformance_provider
        create(p, "a", worker=[act("a", 2)])
        lease = wfetch(p)
        p.delete_instance("a", force=True)
        create(p, "a")
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert fetch(p) is None

    def test_delete_instances_atomic_detects_orphan_race(self, conformance_provider):
        """F22: a child outside the id set aborts the delete and rolls everything back."""
        p = conformance_provider
        make_tree(p)
        before = snapshot(p, ("root", "c1", "c2", "g1"))
        with pytest.raises(ProviderError, match="Re-fetch the tree"):
            p.delete_instances_atomic(["root", "c2", "c1"], force=True)  # g1 missing
        assert snapshot(p, ("root", "c1", "c2", "g1")) == before
        assert p.delete_instances_atomic([], force=False).instances_deleted == 0
        assert p.delete_instances_atomic(["g1", "c1", "c2", "root"], force=False).instances_deleted == 4

    def test_delete_instances_atomic_non_force_fails_on_any_running(self, conformance_provider):
        """F22: without force any running instance in the set fails the whole delete."""
        p = conformance_provider
        create(p, "a", status="Completed")
        create(p, "b")
        with pytest.raises(InstanceStillRunning):
            p.delete_instances_atomic(["a", "b"], force=False)
        assert p.list_instances() == ["b", "a"]

    def test_bulk_delete(self, conformance_provider, conformance_clock):
        """F23: filters AND-ed, limit honoured and iterable, running skipped, children cascaded."""
        p, clock = conformance_provider, conformance_clock
        t0 = clock.now_ms()
        for i in range(5):
            create(p, f"t{i}", status="Completed")
            clock.advance(10)
        create(p, "run")
        create(p, "kid", parent="t0", status="Completed")
        assert p.delete_instance_bulk(InstanceFilter(instance_ids=())).instances_deleted == 0
        res = p.delete_instance_bulk(InstanceFilter(instance_ids=("t0", "t3", "run", "kid"), completed_before=t0 + 25))
        assert res.instances_deleted == 2  # t0 and its child; t3 too late; run running; kid not a root
        assert "kid" not in p.list_instances() and "t3" in p.list_instances()
        assert p.delete_instance_bulk(InstanceFilter(limit=2)).instances_deleted == 2
        assert p.delete_instance_bulk(InstanceFilter(limit=2)).instances_deleted == 2
        assert p.delete_instance_bulk(InstanceFilter(limit=2)).instances_deleted == 0
        assert p.list_instances() == ["run"]


class TestConformancePruning:
    @staticmethod
    def _chain(p, clock, inst, n, finish=False):
        """``inst`` with ``n`` executions (1..n-1 ContinuedAsNew), each with 2 events."""
        create(p, inst)
        for e in range(1, n + 1):
            clock.advance(100)
            p.enqueue_for_orchestrator(qmsg(inst))
            item = fetch(p)
            if e < n:
                ack(p, item, [can_ev(inst, 2, execution=e)], execution=e, md=meta(status="ContinuedAsNew"))
                p.enqueue_for_orchestrator(qmsg(inst))
                ack(p, fetch(p), [started(inst, execution=e + 1)], execution=e + 1, md=meta())
            elif finish:
                ack(p, item, [completed_ev(inst, 2, execution=e)], execution=e, md=meta(status="Completed"))
            else:
                ack(p, item, [timer_created(inst, 2, execution=e)], execution=e, md=meta())

    def test_prune_options_combine_and_protect_current(self, conformance_provider, conformance_clock):
        """F24: keep_last and completed_before combine; the current execution is never pruned."""
        p, clock = conformance_provider, conformance_clock
        t0 = clock.now_ms()
        self._chain(p, clock, "a", 5, finish=True)
        assert p.list_executions("a") == [1, 2, 3, 4, 5]
        res = p.prune_executions("a", PruneOptions(keep_last=3, completed_before=t0 + 150))
        assert (res.instances_processed, res.executions_deleted, res.events_deleted) == (1, 1, 2)
        assert p.list_executions("a") == [2, 3, 4, 5]
        res = p.prune_executions("a", PruneOptions(keep_last=2))
        assert p.list_executions("a") == [4, 5] and res.events_deleted == 4
        for opts in (PruneOptions(), PruneOptions(keep_last=0), PruneOptions(keep_last=1)):
            p.prune_executions("a", opts)
            assert p.list_executions("a") == [5]
        assert p.read("a")[-1] == completed_ev("a", 2, execution=5)
        with pytest.raises(InstanceNotFound):
            p.prune_executions("nope", PruneOptions())

    def test_running_executions_never_pruned(self, conformance_provider):
        """F24: a Running execution is never pruned, even when not current."""
        p = conformance_provider
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [started("a", execution=2)], execution=2, md=meta())
        assert p.prune_executions("a", PruneOptions()).executions_deleted == 0
        assert p.list_executions("a") == [1, 2]

    def test_bulk_prune_includes_running_instances_and_keeps_kv(self, conformance_provider, conformance_clock):
        """F24, G27: bulk prune covers running instances' old executions; KV survives pruning."""
        p, clock = conformance_provider, conformance_clock
        self._chain(p, clock, "a", 3)
        self._chain(p, clock, "b", 2, finish=True)
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [kv_set("a", 3, "k", "v")], execution=3, md=meta())
        res = p.prune_executions_bulk(InstanceFilter(), PruneOptions(keep_last=1))
        assert (res.instances_processed, res.executions_deleted) == (2, 3)
        assert p.list_executions("a") == [3] and p.list_executions("b") == [2]
        assert p.get_kv_value("a", "k") == "v"
        assert p.prune_executions_bulk(InstanceFilter(instance_ids=()), PruneOptions()).instances_processed == 0


# --- G. custom status & KV -------------------------------------------------------------------------


class TestConformanceCustomStatus:
    def test_versioning(self, conformance_provider):
        """G25: (None, 0) for new instances; last set wins with one bump per ack; absence preserves."""
        p = conformance_provider
        assert p.get_custom_status("nope", 0) is None
        create(p, "a")
        assert p.get_custom_status("a", 0) is None  # new instance: (None, 0)
        assert p.get_custom_status("a", -1) == (None, 0)
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [status_ev("a", 2, "one"), status_ev("a", 3, "two")], md=meta())
        assert p.get_custom_status("a", 0) == ("two", 1)  # last wins, one bump per ack
        assert p.get_custom_status("a", 1) is None
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [timer_created("a", 4)], md=meta())
        assert p.get_custom_status("a", 0) == ("two", 1)  # absence preserves
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [status_ev("a", 5, None)], md=meta(status="Completed"))
        assert p.get_custom_status("a", 1) == (None, 2)  # cleared, visible on terminal


def _turn(p, inst, events, status=None):
    p.enqueue_for_orchestrator(qmsg(inst))
    item = fetch(p)
    ack(p, item, events, md=meta(status=status), execution=item.execution_id)


def _store_snapshot(p, inst):
    """The KV store as a fetch sees it (store only, no delta)."""
    p.enqueue_for_orchestrator(qmsg(inst))
    item = fetch(p)
    p.abandon_orchestration_item(item.lock_token, ignore_attempt=True)
    return dict(item.kv_snapshot)


class TestConformanceKeyValue:
    def test_round_trips(self, conformance_provider):
        """G26: set/overwrite/clear/clear-all/empty/64 KB/special keys; unknowns None; isolated."""
        p = conformance_provider
        create(p, "a")
        create(p, "b")
        big = "x" * 65536
        special = "k/ey with spaces:ünï©ødé\n\"'"
        events = [kv_set("a", 2, "k", "v1"), kv_set("a", 3, "k", "v2"), kv_set("a", 4, "empty", "")]
        _turn(p, "a", [*events, kv_set("a", 5, "big", big), kv_set("a", 6, special, "s")])
        assert p.get_kv_value("a", "k") == "v2"
        assert p.get_kv_value("a", "empty") == ""
        assert p.get_kv_value("a", "big") == big and p.get_kv_value("a", special) == "s"
        assert p.get_kv_value("a", "missing") is None and p.get_kv_value("nope", "k") is None
        assert p.get_kv_all_values("b") == {} and p.get_kv_value("b", "k") is None  # isolated
        _turn(p, "a", [kv_clear("a", 7, "k")])
        assert p.get_kv_value("a", "k") is None and "k" not in p.get_kv_all_values("a")
        _turn(p, "a", [kv_clear_all("a", 8), kv_set("a", 9, "new", "n")])
        assert p.get_kv_all_values("a") == {"new": "n"}
        assert p.get_kv_all_values("nope") == {}

    def test_snapshot_delta_merge_and_tombstones(self, conformance_provider):
        """G27: the snapshot excludes current-execution mutations and includes finished ones;
        client reads overlay the delta (tombstones win); the delta merges on CAN and Completed."""
        p = conformance_provider
        create(p, "a", extra=[kv_set("a", 2, "k1", "v1", ts=11)])
        _turn(p, "a", [])
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert dict(item.kv_snapshot) == {}  # current-execution mutations are excluded
        can = ContinueAsNew(instance="a", orchestration="Orch", input="")
        ack(p, item, [kv_set("a", 3, "k2", "v2", ts=12)], orch=[can], md=meta(status="ContinuedAsNew"))
        item = fetch(p)  # the CAN turn: the store now holds the finished execution's keys
        assert dict(item.kv_snapshot) == {"k1": KvEntry("v1", 11), "k2": KvEntry("v2", 12)}
        events = [started("a", execution=2), kv_clear("a", 2, "k1"), kv_set("a", 3, "k2", "v3", ts=13)]
        ack(p, item, events, execution=2, md=meta())
        assert p.get_kv_all_values("a") == {"k2": "v3"} and p.get_kv_value("a", "k1") is None
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert dict(item.kv_snapshot) == {"k1": KvEntry("v1", 11), "k2": KvEntry("v2", 12)}
        ack(p, item, [kv_clear_all("a", 4), kv_set("a", 5, "k3", "v", ts=14)], execution=2, md=meta())
        assert p.get_kv_all_values("a") == {"k3": "v"}
        _turn(p, "a", [completed_ev("a", 6, execution=2)], status="Completed")
        assert _store_snapshot(p, "a") == {"k3": KvEntry("v", 14)}  # merged: tombstones deleted
        assert p.get_kv_all_values("a") == {"k3": "v"}

    def test_failed_status_merges_too(self, conformance_provider):
        """G27: a Failed execution merges its delta into the store."""
        p = conformance_provider
        create(p, "a", extra=[kv_set("a", 2, "k", "v")])
        assert _store_snapshot(p, "a") == {}
        _turn(p, "a", [failed_ev("a", 3)], status="Failed")
        assert _store_snapshot(p, "a") == {"k": KvEntry("v", 5)} and p.get_kv_value("a", "k") == "v"

    def test_delete_removes_store_and_delta_including_children(self, conformance_provider):
        """G27: deleting a root removes its KV store and delta, and its children's."""
        p = conformance_provider
        create(p, "root", extra=[kv_set("root", 2, "k", "v")], status="Completed")
        create(p, "kid", parent="root", extra=[kv_set("kid", 2, "k", "v")])  # delta only
        p.delete_instance("root", force=True)
        assert p.get_kv_all_values("root") == {} and p.get_kv_all_values("kid") == {}
        create(p, "root")
        create(p, "kid", parent="root")
        assert p.get_kv_value("root", "k") is None and p.get_kv_value("kid", "k") is None
        assert _store_snapshot(p, "root") == {} and _store_snapshot(p, "kid") == {}


# --- H. sessions & tags ----------------------------------------------------------------------------

S1 = SessionConfig(owner_id="w1", lock_timeout_ms=1_000)
S2 = SessionConfig(owner_id="w2", lock_timeout_ms=1_000)


class TestConformanceSessions:
    def test_session_rows_need_session_config(self, conformance_provider):
        """H28: session-pinned activities are fetched only by session-aware workers."""
        p = conformance_provider
        p.enqueue_for_worker(act("a", 1, session="s"))
        p.enqueue_for_worker(act("a", 2))
        assert wfetch(p).item.id == 2
        assert wfetch(p) is None
        assert wfetch(p, session=S1).item.id == 1

    def test_claim_affinity_blocking_takeover(self, conformance_provider, conformance_clock):
        """H28: claim, affinity, blocking of other owners, takeover after expiry, self-reclaim."""
        p, clock = conformance_provider, conformance_clock
        for i in range(1, 5):
            p.enqueue_for_worker(act("a", i, session="s"))
        assert wfetch(p, session=S1).item.id == 1
        assert wfetch(p, session=S2) is None  # blocked: w1 holds a live session lock
        assert wfetch(p, session=S1).item.id == 2  # affinity
        clock.advance(1_000)  # session lock expired: another owner takes over
        lease = wfetch(p, session=S2)
        assert lease.item.id == 3
        assert wfetch(p, session=S1) is None  # now w2 owns it
        p.ack_work_item(lease.lock_token, None)
        clock.advance(1_000)
        assert wfetch(p, session=S2).item.id == 4  # self-reclaim after expiry

    def test_session_less_rows_still_fetched_with_config(self, conformance_provider):
        """H28: a session-aware worker also takes session-less rows, claiming no session."""
        p = conformance_provider
        p.enqueue_for_worker(act("a", 1))
        assert wfetch(p, session=S1).item.id == 1
        assert p.renew_session_lock(["w1"], 1_000, 10_000) == 0  # no session was claimed

    def test_concurrent_claim_has_one_winner(self, conformance_provider):
        """H28: six workers racing for one session: one owner takes all its activities."""
        p = conformance_provider
        p.enqueue_for_worker(act("a", 1, session="s"))
        p.enqueue_for_worker(act("a", 2, session="s"))
        winners: list[str] = []
        barrier = threading.Barrier(6)

        def claim(owner: str) -> None:
            barrier.wait()
            config = SessionConfig(owner_id=owner, lock_timeout_ms=5_000)
            while p.fetch_work_item(LOCK, session=config) is not None:
                winners.append(owner)

        run_threads([lambda o=f"w{i}": claim(o) for i in range(6)])
        assert len(winners) == 2 and len(set(winners)) == 1

    def test_ack_after_session_expiry_succeeds(self, conformance_provider, conformance_clock):
        """H28: an activity ack succeeds after its session lock expired (the row lock is what counts)."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_worker(act("a", 1, session="s"))
        lease = p.fetch_work_item(5_000, session=S1)
        clock.advance(2_000)  # session (1 s) expired, row lock (5 s) alive
        p.ack_work_item(lease.lock_token, act_done("a", 1))
        assert p.get_queue_depths().orchestrator_queue == 1

    def test_ack_and_renew_bump_last_activity_while_live(self, conformance_provider, conformance_clock):
        """H28: renew and ack of a session activity count as session activity (idle clock reset)."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_worker(act("a", 1, session="s"))
        lease = wfetch(p, session=S1)  # last activity: t0
        clock.advance(100)
        p.renew_work_item_lock(lease.lock_token, LOCK)  # last activity: t0+100
        clock.advance(100)
        assert p.renew_session_lock(["w1"], 1_000, 150) == 1  # idle 100 < 150
        p.ack_work_item(lease.lock_token, None)  # last activity: t0+200
        clock.advance(120)
        assert p.renew_session_lock(["w1"], 1_000, 150) == 1  # idle 120 < 150 thanks to the ack
        clock.advance(100)
        assert p.renew_session_lock(["w1"], 1_000, 150) == 0  # idle 220: skipped

    def test_renew_session_lock_skips_idle_expired_and_others(self, conformance_provider, conformance_clock):
        """H28: renewal extends only live, non-idle sessions of the given owners."""
        p, clock = conformance_provider, conformance_clock
        for sid in ("s1", "s2", "s3"):
            p.enqueue_for_worker(act("a", int(sid[1]), session=sid))
        wfetch(p, session=S1)  # s1 claimed at t0
        clock.advance(500)
        wfetch(p, session=S1)  # s2 claimed at t0+500
        wfetch(p, session=S2)  # s3 by w2
        assert p.renew_session_lock([], 1_000, 300) == 0
        # idle timeout 300: s1 idle for 500 ms -> skipped; s2 renewed to t0+2500; s3 is w2's
        assert p.renew_session_lock(["w1"], 2_000, 300) == 1
        clock.advance(600)  # t0+1100: s1 expired (t0+1000), s2 renewed, s3 live until t0+1500
        assert p.renew_session_lock(["w1", "w2"], 2_000, 10_000) == 2

    def test_cleanup_orphaned_sessions(self, conformance_provider, conformance_clock):
        """H28: cleanup removes expired sessions without queued rows only."""
        p, clock = conformance_provider, conformance_clock
        p.enqueue_for_worker(act("a", 1, session="s1"))
        p.enqueue_for_worker(act("a", 2, session="s2"))
        l1 = wfetch(p, session=S1)
        wfetch(p, session=S1)
        p.ack_work_item(l1.lock_token, None)
        assert p.cleanup_orphaned_sessions(0) == 0  # both live
        clock.advance(1_001)
        assert p.cleanup_orphaned_sessions(0) == 1  # s1 expired and empty; s2 has a queued row
        assert p.cleanup_orphaned_sessions(0) == 0


class TestConformanceTags:
    @staticmethod
    def _fill(p):
        p.enqueue_for_worker(act("a", 1))
        p.enqueue_for_worker(act("a", 2, tag="gpu"))
        p.enqueue_for_worker(act("a", 3, tag="cpu"))

    @pytest.mark.parametrize(
        ("tf", "expected"),
        [
            (TagFilter.DEFAULT_ONLY, [1]),  # type: ignore[attr-defined]
            (TagFilter.default_only(), [1]),
            (TagFilter.tags(["gpu"]), [2]),
            (TagFilter.tags(["gpu", "cpu"]), [2, 3]),
            (TagFilter.default_and(["cpu"]), [1, 3]),
            (TagFilter.ANY, [1, 2, 3]),  # type: ignore[attr-defined]
            (TagFilter.NONE, []),  # type: ignore[attr-defined]
        ],
        ids=["DEFAULT_ONLY", "default_only", "tags", "two-tags", "default_and", "ANY", "NONE"],
    )
    def test_filters_select_exactly(self, conformance_provider, tf, expected):
        """H29: each tag filter selects exactly its rows."""
        p = conformance_provider
        self._fill(p)
        assert drain_work(p, tag_filter=tf) == expected

    def test_default_is_default_only(self, conformance_provider):
        """H29: without a filter only untagged rows are fetched."""
        p = conformance_provider
        self._fill(p)
        assert p.fetch_work_item(LOCK).item.id == 1
        assert p.fetch_work_item(LOCK) is None

    def test_tags_preserved_through_ack_and_abandon(self, conformance_provider):
        """H29: tag and session survive ack_orchestration_item and abandon."""
        p = conformance_provider
        create(p, "a", worker=[act("a", 2, tag="gpu", session="s")])
        lease = p.fetch_work_item(LOCK, session=S1, tag_filter=TagFilter.tags(["gpu"]))
        assert lease.item.tag == "gpu" and lease.item.session_id == "s"
        p.abandon_work_item(lease.lock_token)
        assert p.fetch_work_item(LOCK, session=S1) is None  # still tagged
        again = p.fetch_work_item(LOCK, session=S1, tag_filter=TagFilter.ANY)  # type: ignore[attr-defined]
        assert again.item == act("a", 2, tag="gpu", session="s")


# --- I. capability filter & corrupt history --------------------------------------------------------


class TestConformanceCapabilityFiltering:
    def test_filtering(self, conformance_provider):
        """I30: incompatible instances are skipped without locking or counting; NULL pin is
        compatible; bounds are inclusive."""
        p = conformance_provider
        create(p, "old", dv="0.0.5")
        create(p, "new", dv="2.0.0")
        p.enqueue_for_orchestrator(start_item("fresh"))  # no pin yet: NULL is compatible
        for inst in ("old", "new"):
            p.enqueue_for_orchestrator(qmsg(inst))
        got = fetch(p, filter=("0.1.0", "1.0.0"))
        assert got.instance == "fresh"
        assert fetch(p, filter=("0.1.0", "1.0.0")) is None
        assert p.get_queue_depths().orchestrator_queue == 2  # skipped rows were not locked
        old = fetch(p, filter=("0.0.5", "0.0.5"))  # inclusive bounds
        assert old.instance == "old" and old.attempt_count == 1  # skips counted nothing
        assert fetch(p, filter=("2.0.0", "3.0.0")).instance == "new"

    def test_no_filter_takes_anything_and_pin_is_per_execution(self, conformance_provider):
        """I30: no filter fetches any pin; each execution carries its own pin (CAN gets its own)."""
        p = conformance_provider
        create(p, "far", dv="9.9.9")
        p.enqueue_for_orchestrator(qmsg("far"))
        assert fetch(p).instance == "far"
        create(p, "a", dv="0.0.1")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        can = ContinueAsNew(instance="a", orchestration="Orch", input="")
        ack(p, item, [can_ev("a", 2)], orch=[can], md=meta(status="ContinuedAsNew", pin=None))
        item = fetch(p, filter=("0.0.0", "0.0.1"))  # the current execution 1 is still pinned 0.0.1
        assert item is not None and item.instance == "a"
        ack(p, item, [started("a", execution=2, dv="0.5.0")], execution=2, md=meta(pin="0.5.0"))
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p, filter=("0.0.0", "0.0.1")) is None
        assert fetch(p, filter=("0.5.0", "0.5.0")).instance == "a"

    def test_empty_range_and_bad_input(self, conformance_provider):
        """I30: an empty range matches no pinned execution (NULL still fits); bad semver is rejected."""
        p = conformance_provider
        create(p, "pinned")
        p.enqueue_for_orchestrator(qmsg("pinned"))
        assert fetch(p, filter=("2.0.0", "1.0.0")) is None
        p.enqueue_for_orchestrator(start_item("fresh"))
        assert fetch(p, filter=("2.0.0", "1.0.0")).instance == "fresh"
        with pytest.raises(InvalidInputError):
            fetch(p, filter=("1.0", "2.0.0"))

    def test_version_compare_is_numeric(self, conformance_provider):
        """I30: versions compare numerically (0.10.0 > 0.9.0), not as text."""
        p = conformance_provider
        create(p, "a", dv="0.10.0")
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p, filter=("0.0.0", "0.9.0")) is None
        assert fetch(p, filter=("0.9.0", "0.10.0")).instance == "a"


class TestConformanceCorruptHistory:
    def test_corrupt_history(self, conformance_provider):
        """I31: filtered-out first (None, no deserialization); else history_error, empty history,
        lock held, attempts rising; an appended OrchestrationFailed ack still succeeds."""
        p = conformance_provider
        corrupt = _needs(p, "_corrupt_history")
        create(p, "a", dv="0.1.0")
        corrupt("a", "injected")
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p, filter=("1.0.0", "2.0.0")) is None  # filtered out before reading history
        attempts = []
        for _ in range(3):
            item = fetch(p)
            assert item.instance == "a" and item.history == () and "deserialize" in item.history_error
            assert item.messages == (qmsg("a"),)
            assert fetch(p) is None  # lock held
            attempts.append(item.attempt_count)
            p.abandon_orchestration_item(item.lock_token)
        assert attempts == [1, 2, 3]
        item = fetch(p)
        failed = failed_ev("a", 99999, message="poison")  # the runtime's sentinel id
        ack(p, item, [failed], md=meta(status="Failed", output="poison"))
        assert p.get_instance_info("a").status == "Failed"
        corrupt("a", None)
        assert p.read("a") == [started("a"), failed]
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p).history_error is None
