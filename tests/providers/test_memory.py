"""Behaviour tests for InMemoryProvider (SPEC §15, conformance checklist §16 A–I).

Every test runs on a fake clock; the ``p`` fixture checks the provider's internal invariants
(``_check``) after each test.
"""

from __future__ import annotations

import threading

import pytest

from duroxide_sim.core.events import (
    ActivityCompletedMsg,
    ActivityFailedMsg,
    ApplicationError,
    CancelInstance,
    ContinueAsNew,
    ExternalRaised,
    SubOrchCompletedMsg,
    TimerFiredMsg,
)
from duroxide_sim.errors import (
    CannotDeleteSubOrchestration,
    InstanceNotFound,
    InstanceStillRunning,
    InvalidInputError,
    LockLostError,
    ProviderError,
)
from duroxide_sim.providers.base import (
    ExecutionMetadata,
    InstanceFilter,
    KvEntry,
    PruneOptions,
    ScheduledActivityIdentifier,
    SessionConfig,
    TagFilter,
)
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.testing.conformance import (  # the builders the conformance suite uses
    act,
    act_done,
    ack,
    can_ev,
    completed_ev,
    create,
    failed_ev,
    fetch,
    kv_clear,
    kv_clear_all,
    kv_set,
    make_tree,
    meta,
    qmsg,
    start_item,
    started,
    status_ev,
    timer_created,
    wfetch,
)

T0 = 1_000_000
LOCK = 30_000


class FakeClock:
    def __init__(self, now: int = T0) -> None:
        self.now = now

    def now_ms(self) -> int:
        return self.now

    def advance(self, ms: int) -> None:
        self.now += ms


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def p(clock):
    provider = InMemoryProvider(clock)
    yield provider
    provider._check()


# --- builders ---------------------------------------------------------------------------------


def snapshot(p):
    """Everything observable, to show an operation changed nothing."""
    return (
        {i: p.read(i) for i in ["a", "b", "c"]},
        p.get_queue_depths(),
        p.list_instances(),
        p.get_kv_all_values("a"),
        p.get_custom_status("a", -1),
        len(p._orch.rows),
        len(p._work.rows),
    )


# --- clock and plumbing ----------------------------------------------------------------------


class TestClockAndDeterminism:
    def test_no_clock_raises_clear_provider_error(self):
        prov = InMemoryProvider()
        with pytest.raises(ProviderError, match="no clock"):
            prov.fetch_orchestration_item(LOCK)
        with pytest.raises(ProviderError, match="bind_clock"):
            prov.enqueue_for_orchestrator(start_item("a"))

    def test_bind_clock_sets_only_when_absent(self, clock):
        prov = InMemoryProvider()
        prov.bind_clock(clock)
        assert prov.clock is clock
        other = FakeClock(5)
        prov.bind_clock(other)
        assert prov.clock is clock
        injected = InMemoryProvider(other)
        injected.bind_clock(clock)
        assert injected.clock is other

    def test_lock_tokens_are_counter_strings(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_worker(act("a", 1))
        t1 = fetch(p).lock_token
        t2 = wfetch(p).lock_token
        assert t1.startswith("mem-lock-") and t2.startswith("mem-lock-") and t1 != t2

    def test_same_calls_same_results(self):
        def run():
            c = FakeClock()
            prov = InMemoryProvider(c)
            out = []
            for inst in ["z", "m", "a"]:
                prov.enqueue_for_orchestrator(start_item(inst))
                prov.enqueue_for_worker(act(inst, 1))
            for _ in range(3):
                item = prov.fetch_orchestration_item(LOCK)
                out.append((item.instance, item.lock_token, item.messages))
                ack(prov, item, [started(item.instance)], md=meta())
                lease = prov.fetch_work_item(LOCK)
                out.append((lease.item, lease.lock_token))
                c.advance(7)
            out.append(prov.list_instances())
            return out

        assert run() == run()


class TestWakeupListeners:
    def test_enqueue_and_acks_notify(self, p):
        seen = []
        p.add_wakeup_listener(seen.append)
        p.enqueue_for_orchestrator(start_item("a"))
        assert seen == ["orchestrator"]
        item = fetch(p)
        ack(p, item, [started("a")], worker=[act("a", 2)], orch=[start_item("b")], md=meta())
        assert seen[1:] == ["orchestrator", "worker", "committed"]
        lease = wfetch(p)
        p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert seen[4:] == ["orchestrator"]
        p.enqueue_for_worker(act("a", 3))
        assert seen[5:] == ["worker"]

    def test_ack_without_new_items_only_reports_the_commit(self, p):
        seen = []
        p.enqueue_for_orchestrator(start_item("a"))
        p.add_wakeup_listener(seen.append)
        ack(p, fetch(p), [started("a")], md=meta())
        assert seen == ["committed"]

    def test_listener_runs_outside_the_lock(self, p):
        results = []

        def listener(kind):
            # Another thread must be able to use the provider while the listener runs.
            t = threading.Thread(target=lambda: results.append(p.get_queue_depths()))
            t.start()
            t.join(timeout=5)
            results.append(t.is_alive())

        p.add_wakeup_listener(listener)
        p.enqueue_for_orchestrator(start_item("a"))
        assert results[-1] is False and results[0].orchestrator_queue == 1


# --- A. locking & atomicity ------------------------------------------------------------------


class TestLocking:
    def test_one_fetcher_per_instance(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="e", data="1"))
        first = fetch(p)
        assert first.instance == "a" and len(first.messages) == 2
        assert fetch(p) is None

    def test_one_fetcher_per_instance_under_thread_contention(self, p):
        for i in range(40):
            p.enqueue_for_orchestrator(start_item(f"i{i:02}"))
            p.enqueue_for_orchestrator(qmsg(f"i{i:02}"))
        got: list[str] = []
        guard = threading.Lock()

        def worker():
            while (item := p.fetch_orchestration_item(LOCK)) is not None:
                with guard:
                    got.append(item.instance)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == [f"i{i:02}" for i in range(40)]

    def test_distinct_tokens_and_unknown_tokens_fail(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_orchestrator(start_item("b"))
        a, b = fetch(p), fetch(p)
        assert a.lock_token != b.lock_token
        with pytest.raises(LockLostError, match="bogus-token"):
            p.ack_orchestration_item("bogus-token", 1, [], [], [], ExecutionMetadata())
        with pytest.raises(LockLostError, match="bogus-token"):
            p.abandon_orchestration_item("bogus-token")
        with pytest.raises(LockLostError, match="bogus-token"):
            p.renew_orchestration_item_lock("bogus-token", 10)

    def test_messages_arriving_during_lock_survive_ack(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        clock.advance(5)
        p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="late", data="1"))
        assert fetch(p) is None  # invisible to others while locked
        ack(p, item, [started("a")], md=meta())
        nxt = fetch(p)
        assert nxt.messages == (ExternalRaised(instance="a", name="late", data="1"),)
        assert nxt.history == (started("a"),)

    def test_locks_never_block_other_instances(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        p.enqueue_for_orchestrator(start_item("b"))
        assert fetch(p).instance == "a"
        p.enqueue_for_orchestrator(qmsg("a"))  # more for the locked instance
        assert fetch(p).instance == "b"

    def test_expired_lock_lets_another_fetcher_in(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        first = p.fetch_orchestration_item(1_000)
        assert first.attempt_count == 1
        clock.advance(999)
        assert fetch(p) is None
        clock.advance(1)
        second = fetch(p)
        assert second.instance == "a" and second.attempt_count == 2
        assert second.lock_token != first.lock_token
        with pytest.raises(LockLostError, match=first.lock_token):
            ack(p, first, [started("a")], md=meta())
        ack(p, second, [started("a")], md=meta())
        assert p.read("a") == [started("a")]

    def test_duplicate_event_id_fails_changes_nothing_keeps_lock(self, p):
        create(p, "a", extra=[timer_created("a", 2)])
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        before = snapshot(p)
        for bad in ([timer_created("a", 2)], [timer_created("a", 3), timer_created("a", 3)]):
            with pytest.raises(ProviderError, match="duplicate event_id") as err:
                ack(p, item, bad, worker=[act("a", 3)], orch=[qmsg("b")], md=meta(status="Completed"))
            assert err.value.retryable is False and not isinstance(err.value, LockLostError)
            assert snapshot(p) == before
        assert fetch(p) is None  # lock still held
        p.renew_orchestration_item_lock(item.lock_token, LOCK)
        ack(p, item, [timer_created("a", 3)], md=meta())
        assert [e.event_id for e in p.read("a")] == [1, 2, 3]

    def test_invalid_item_in_ack_is_all_or_nothing(self, p):
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

    def test_two_acks_with_one_token_cannot_both_succeed(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        ack(p, item, [started("a")], md=meta())
        with pytest.raises(LockLostError):
            ack(p, item, [timer_created("a", 2)], md=meta())
        assert p.read("a") == [started("a")]

    def test_ack_and_renew_after_expiry_fail_and_change_nothing(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        item = p.fetch_orchestration_item(100)
        clock.advance(100)
        before = snapshot(p)
        with pytest.raises(LockLostError, match="Instance lock expired"):
            ack(p, item, [started("a")], worker=[act("a", 2)], md=meta())
        with pytest.raises(LockLostError):
            p.renew_orchestration_item_lock(item.lock_token, 1000)
        assert snapshot(p) == before
        assert fetch(p).attempt_count == 2

    def test_renew_extends_lock(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        item = p.fetch_orchestration_item(100)
        clock.advance(90)
        p.renew_orchestration_item_lock(item.lock_token, 100)
        clock.advance(90)  # past the original expiry, inside the renewed one
        assert fetch(p) is None
        ack(p, item, [started("a")], md=meta())

    def test_ack_and_abandon_release_immediately(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        item = fetch(p)
        p.abandon_orchestration_item(item.lock_token)
        item2 = fetch(p)
        assert item2.instance == "a"
        ack(p, item2, [started("a")], md=meta())
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p).instance == "a"


# --- B. queues -------------------------------------------------------------------------------


class TestQueues:
    def test_worker_queue_fifo_visible_immediately_and_kept_until_ack(self, p, clock):
        for i in range(3):
            p.enqueue_for_worker(act("a", i))
        leases = [p.fetch_work_item(100) for _ in range(3)]
        assert [lease.item.id for lease in leases] == [0, 1, 2]
        assert wfetch(p) is None
        assert p.get_queue_depths().worker_queue == 0
        assert len(p._work.rows) == 3  # fetched, not removed
        clock.advance(100)  # lost tokens: items reappear after expiry
        again = wfetch(p)
        assert again.item.id == 0 and again.attempt_count == 2

    def test_worker_ack_enqueues_completion_atomically(self, p):
        create(p, "a", worker=[act("a", 2), act("a", 3)])
        l2, l3 = wfetch(p), wfetch(p)
        p.ack_work_item(l2.lock_token, act_done("a", 2))
        p.ack_work_item(l3.lock_token, None)
        item = fetch(p)
        assert item.messages == (act_done("a", 2),)
        assert wfetch(p) is None and not p._work.rows

    def test_worker_ack_rejects_non_completion_and_changes_nothing(self, p):
        p.enqueue_for_worker(act("a", 1))
        lease = wfetch(p)
        with pytest.raises(ProviderError):
            p.ack_work_item(lease.lock_token, start_item("a"))
        details = ApplicationError(kind="ActivityFailed", message="x")
        p.ack_work_item(lease.lock_token, ActivityFailedMsg(instance="a", execution_id=1, id=1, details=details))
        assert not p._work.rows
        assert fetch(p) is None  # a completion for an unknown instance is not an orphan QueueMessage:
        assert len(p._orch.rows) == 1  # it stays queued (it may be racing the instance's start)

    def test_timer_invisible_before_fire_at(self, p, clock):
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        timer = TimerFiredMsg(instance="a", execution_id=1, id=2, fire_at_ms=T0 + 5_000)
        ack(p, item, [timer_created("a", 2)], orch=[timer], md=meta())
        clock.advance(4_999)
        assert fetch(p) is None
        assert p.next_wakeup_ms() == T0 + 5_000
        clock.advance(1)
        assert fetch(p).messages == (timer,)

    def test_enqueue_delay_and_abandon_delay_hide_until_due(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"), delay_ms=500)
        assert fetch(p) is None
        clock.advance(500)
        item = fetch(p)
        p.abandon_orchestration_item(item.lock_token, delay_ms=1_000)
        clock.advance(999)
        assert fetch(p) is None
        clock.advance(1)
        assert fetch(p).instance == "a"

    def test_worker_abandon_delay_and_plain_abandon_keeps_fifo_place(self, p, clock):
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

    def test_orchestrator_lost_token_reappears_after_expiry(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        p.fetch_orchestration_item(50)
        clock.advance(50)
        assert fetch(p).instance == "a"

    def test_queue_message_only_orphans_are_deleted(self, p):
        p.enqueue_for_orchestrator(qmsg("ghost", "1"))
        p.enqueue_for_orchestrator(qmsg("ghost", "2"))
        p.enqueue_for_orchestrator(start_item("real"))
        assert fetch(p).instance == "real"
        assert all(r.item.target_instance != "ghost" for r in p._orch.rows.values())

    def test_queue_messages_for_existing_instance_are_delivered(self, p):
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a", "1"))
        assert fetch(p).messages == (qmsg("a", "1"),)

    def test_non_queue_orphans_are_kept_and_do_not_block_others(self, p):
        p.enqueue_for_orchestrator(CancelInstance(instance="ghost", reason="r"))
        p.enqueue_for_orchestrator(ExternalRaised(instance="ghost2", name="e", data="d"))
        p.enqueue_for_orchestrator(qmsg("ghost2"))
        p.enqueue_for_orchestrator(start_item("real"))
        item = fetch(p)
        assert item.instance == "real"
        assert fetch(p) is None
        assert sorted(r.item.target_instance for r in p._orch.rows.values()) == ["ghost", "ghost2", "ghost2", "real"]
        assert all(r.attempt_count == 0 for r in p._orch.rows.values() if r.item.target_instance != "real")
        # once the start arrives, the earlier cancel is in the batch behind it
        p.enqueue_for_orchestrator(start_item("ghost"))
        ack(p, item, [started("real")], md=meta())
        ghost = fetch(p)
        assert ghost.instance == "ghost"
        assert [type(m).__name__ for m in ghost.messages] == ["CancelInstance", "StartOrchestration"]

    def test_worker_renew(self, p, clock):
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
        with pytest.raises(LockLostError, match="expired"):
            p.renew_work_item_lock(lease.lock_token, 100)
        with pytest.raises(LockLostError, match="expired"):
            p.ack_work_item(lease.lock_token, act_done("a", 1))  # never refetched, still fails
        fresh = wfetch(p)
        p.ack_work_item(fresh.lock_token, None)
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(fresh.lock_token, 100)  # acked
        assert not p._orch.rows

    def test_enqueue_rejects_wrong_queue(self, p):
        with pytest.raises(ProviderError):
            p.enqueue_for_orchestrator(act("a", 1))
        with pytest.raises(ProviderError):
            p.enqueue_for_worker(start_item("a"))

    def test_sub_orch_completion_targets_parent_queue(self, p):
        create(p, "parent")
        p.enqueue_for_orchestrator(
            SubOrchCompletedMsg(parent_instance="parent", parent_execution_id=1, parent_id=2, result="r")
        )
        assert fetch(p).instance == "parent"

    def test_batch_is_in_queue_order(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        clock.advance(1)
        p.enqueue_for_orchestrator(qmsg("a", "1"))
        p.enqueue_for_orchestrator(qmsg("a", "2"))
        assert [getattr(m, "data", None) for m in fetch(p).messages] == [None, "1", "2"]


# --- C. instances & executions ---------------------------------------------------------------


class TestInstancesAndExecutions:
    def test_enqueue_never_creates_instance(self, p):
        p.enqueue_for_orchestrator(start_item("a", version="2.0.0"))
        assert p.list_instances() == [] and p.latest_execution_id("a") is None
        with pytest.raises(InstanceNotFound):
            p.get_instance_info("a")
        item = fetch(p)
        assert (item.execution_id, item.history, item.orchestration_name, item.version) == (1, (), "Orch", "2.0.0")
        assert item.kv_snapshot == {}
        assert p.list_instances() == []  # fetch does not create it either
        ack(p, item, [started("a")], md=meta(version="2.0.0"))
        info = p.get_instance_info("a")
        assert (info.orchestration_name, info.orchestration_version, info.current_execution_id) == ("Orch", "2.0.0", 1)
        assert (info.status, info.created_at, info.parent_instance_id) == ("Running", T0, None)

    def test_null_version_filled_later_and_parent_stored(self, p, clock):
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
        assert info.updated_at == T0 + 3 and info.created_at == T0

    def test_ack_without_metadata_name_creates_no_row(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        ack(p, fetch(p), [started("a")])
        assert p.list_instances() == [] and p.read("a") == [started("a")]
        # history without a row: the next fetch takes metadata from OrchestrationStarted
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert (item.orchestration_name, item.execution_id, item.history) == ("Orch", 1, (started("a"),))

    def test_continue_as_new_creates_new_execution_and_keeps_old(self, p):
        create(p, "a", extra=[timer_created("a", 2)])
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        can = ContinueAsNew(instance="a", orchestration="Orch", input="next", version="1.0.0")
        ack(p, item, [can_ev("a", 3, new_input="next")], orch=[can], md=meta(status="ContinuedAsNew", output="next"))
        item = fetch(p)
        assert item.execution_id == 1 and item.messages == (can,)  # runtime moves to execution 2
        ack(p, item, [started("a", execution=2)], execution=2, md=meta())
        assert p.latest_execution_id("a") == 2 and p.list_executions("a") == [1, 2]
        assert p.read("a") == [started("a", execution=2)]
        assert [e.event_id for e in p.read_with_execution("a", 1)] == [1, 2, 3]
        assert p.get_execution_info("a", 1).status == "ContinuedAsNew"
        assert p.get_execution_info("a", 1).output == "next"
        assert p.get_instance_info("a").status == "Running"
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p).history == (started("a", execution=2),)

    def test_stale_execution_ack_does_not_lower_current(self, p):
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [started("a", execution=3)], execution=3, md=meta())
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [timer_created("a", 2)], execution=1, md=meta())
        assert p.latest_execution_id("a") == 3

    def test_reads_for_unknown_instances(self, p):
        assert p.read("nope") == [] and p.read_with_execution("nope", 1) == []
        assert p.latest_execution_id("nope") is None and p.list_executions("nope") == []

    def test_append_with_execution_sorts_and_rejects_duplicates(self, p):
        p.append_with_execution("a", 1, [started("a"), timer_created("a", 5)])
        p.append_with_execution("a", 1, [timer_created("a", 3)])
        assert [e.event_id for e in p.read("a")] == [1, 3, 5]
        with pytest.raises(ProviderError, match="duplicate"):
            p.append_with_execution("a", 1, [timer_created("a", 7), timer_created("a", 3)])
        assert [e.event_id for e in p.read("a")] == [1, 3, 5]


# --- D. poison / attempt counting ------------------------------------------------------------


class TestAttempts:
    def test_attempts_count_per_message_and_batch_reports_max(self, p, clock):
        p.enqueue_for_orchestrator(start_item("a"))
        assert fetch(p).attempt_count == 1
        clock.advance(LOCK)  # expiry
        item = fetch(p)
        assert item.attempt_count == 2
        p.abandon_orchestration_item(item.lock_token)
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert item.attempt_count == 3 and len(item.messages) == 2
        assert sorted(r.attempt_count for r in p._orch.rows.values()) == [1, 3]

    def test_ignore_attempt_decrements_never_below_zero(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        for _ in range(3):
            item = fetch(p)
            assert item.attempt_count == 1
            p.abandon_orchestration_item(item.lock_token, ignore_attempt=True)
        assert [r.attempt_count for r in p._orch.rows.values()] == [0]
        p.enqueue_for_worker(act("a", 1))
        for _ in range(2):
            lease = wfetch(p)
            assert lease.attempt_count == 1
            p.abandon_work_item(lease.lock_token, ignore_attempt=True)
        lease = wfetch(p)
        p.abandon_work_item(lease.lock_token)
        assert wfetch(p).attempt_count == 2

    def test_orphan_skips_do_not_count_attempts(self, p):
        p.enqueue_for_orchestrator(CancelInstance(instance="x", reason="r"))
        for _ in range(3):
            assert fetch(p) is None
        p.enqueue_for_orchestrator(start_item("x"))
        assert fetch(p).attempt_count == 1


# --- E. cancellation -------------------------------------------------------------------------


class TestActivityCancellation:
    def test_activities_fetchable_regardless_of_orchestration_status(self, p):
        create(p, "a", status="Completed", worker=[act("a", 2)])
        assert wfetch(p).item == act("a", 2)

    def test_cancelled_deletes_matching_rows_even_locked(self, p):
        create(p, "a", worker=[act("a", 2), act("a", 3), act("a", 4)])
        lease = wfetch(p)
        p.enqueue_for_orchestrator(qmsg("a"))
        cancel = [
            ScheduledActivityIdentifier("a", 1, 2),
            ScheduledActivityIdentifier("a", 1, 3),
            ScheduledActivityIdentifier("a", 1, 99),  # unknown: ignored
            ScheduledActivityIdentifier("a", 2, 4),  # other execution: no match
        ]
        ack(p, fetch(p), md=meta(), cancelled=cancel)
        assert [r.item.id for r in p._work.rows.values()] == [4]
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(lease.lock_token, 10)
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 2))
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), md=meta(), cancelled=cancel)  # idempotent
        assert fetch(p) is None

    def test_insert_and_cancel_in_one_ack_leaves_nothing(self, p):
        p.enqueue_for_orchestrator(start_item("a"))
        cancel = [ScheduledActivityIdentifier("a", 1, 2)]
        ack(p, fetch(p), [started("a")], worker=[act("a", 2)], md=meta(), cancelled=cancel)
        assert wfetch(p) is None and not p._work.rows

    def test_activity_orphaned_by_force_delete_runs_harmlessly(self, p):
        create(p, "a", worker=[act("a", 2)])
        lease = wfetch(p)
        p.delete_instance("a", force=True)
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(lease.lock_token, 10)
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert not p._orch.rows


# --- F. management ---------------------------------------------------------------------------


class TestManagementReads:
    def test_lists_info_metrics_depths(self, p, clock):
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
        assert (info.status, info.output, info.started_at) == ("Failed", "x", T0 + 1)
        assert (info.completed_at, info.event_count) == (T0 + 3, 3)
        assert p.get_execution_info("c", 1).completed_at is None
        with pytest.raises(InstanceNotFound):
            p.get_execution_info("b", 2)
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

    def test_hierarchy(self, p):
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


class TestDeletion:
    def test_delete_terminal_cleans_everything_and_id_is_reusable(self, p):
        create(p, "a", extra=[kv_set("a", 2, "k", "v")], status="Completed")
        create(p, "b")
        p.enqueue_for_orchestrator(qmsg("a"))
        p.enqueue_for_orchestrator(TimerFiredMsg(instance="a", execution_id=1, id=9, fire_at_ms=T0 + 10**9))
        p.enqueue_for_worker(act("a", 5))
        assert p.get_kv_value("a", "k") == "v"
        res = p.delete_instance("a", force=False)
        assert (res.instances_deleted, res.executions_deleted) == (1, 1)
        assert (res.events_deleted, res.queue_messages_deleted) == (3, 3)
        assert p.read("a") == [] and p.list_executions("a") == [] and p.get_kv_all_values("a") == {}
        assert p.list_instances() == ["b"] and p.get_kv_value("a", "k") is None
        create(p, "a")
        assert p.get_instance_info("a").status == "Running" and p.read("a") == [started("a")]

    def test_running_needs_force_and_unknown_is_not_found(self, p):
        create(p, "a")
        with pytest.raises(InstanceStillRunning):
            p.delete_instance("a", force=False)
        with pytest.raises(InstanceNotFound):
            p.delete_instance("nope", force=True)
        assert p.delete_instance("a", force=True).instances_deleted == 1

    def test_child_deletion_refused_and_root_cascades(self, p):
        make_tree(p)
        for child in ("c1", "g1"):
            with pytest.raises(CannotDeleteSubOrchestration):
                p.delete_instance(child, force=True)
        res = p.delete_instance("root", force=False)
        assert res.instances_deleted == 4 and res.executions_deleted == 4
        assert p.list_instances() == []

    def test_running_descendant_blocks_non_forced_delete(self, p):
        create(p, "root", status="Completed")
        create(p, "kid", parent="root")
        with pytest.raises(InstanceStillRunning):
            p.delete_instance("root", force=False)
        assert p.delete_instance("root", force=True).instances_deleted == 2

    def test_force_delete_during_turn_fails_ack_without_resurrecting(self, p):
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        p.delete_instance("a", force=True)
        with pytest.raises(LockLostError):
            ack(p, item, [timer_created("a", 2)], worker=[act("a", 2)], md=meta())
        assert p.list_instances() == [] and p.read("a") == [] and not p._work.rows

    def test_stale_activity_cannot_complete_into_recreated_instance(self, p):
        create(p, "a", worker=[act("a", 2)])
        lease = wfetch(p)
        p.delete_instance("a", force=True)
        create(p, "a")
        with pytest.raises(LockLostError):
            p.ack_work_item(lease.lock_token, act_done("a", 2))
        assert fetch(p) is None

    def test_delete_instances_atomic_detects_orphan_race(self, p):
        make_tree(p)
        before = snapshot(p), p.list_instances()
        with pytest.raises(ProviderError, match="Re-fetch the tree"):
            p.delete_instances_atomic(["root", "c2", "c1"], force=True)  # g1 missing
        assert (snapshot(p), p.list_instances()) == before
        assert p.delete_instances_atomic([], force=False).instances_deleted == 0
        assert p.delete_instances_atomic(["g1", "c1", "c2", "root"], force=False).instances_deleted == 4

    def test_delete_instances_atomic_non_force_fails_on_any_running(self, p):
        create(p, "a", status="Completed")
        create(p, "b")
        with pytest.raises(InstanceStillRunning):
            p.delete_instances_atomic(["a", "b"], force=False)
        assert p.list_instances() == ["b", "a"]

    def test_bulk_delete(self, p, clock):
        for i in range(5):
            create(p, f"t{i}", status="Completed")
            clock.advance(10)
        create(p, "run")
        create(p, "kid", parent="t0", status="Completed")
        assert p.delete_instance_bulk(InstanceFilter(instance_ids=())).instances_deleted == 0
        # filters AND-ed: ids and completed_before
        res = p.delete_instance_bulk(InstanceFilter(instance_ids=("t0", "t3", "run", "kid"), completed_before=T0 + 25))
        assert res.instances_deleted == 2  # t0 and its child; t3 too late; run running; kid not a root
        assert "kid" not in p.list_instances() and "t3" in p.list_instances()
        # limit honoured and iterable
        assert p.delete_instance_bulk(InstanceFilter(limit=2)).instances_deleted == 2
        assert p.delete_instance_bulk(InstanceFilter(limit=2)).instances_deleted == 2
        assert p.delete_instance_bulk(InstanceFilter(limit=2)).instances_deleted == 0
        assert p.list_instances() == ["run"]


class TestPrune:
    def _chain(self, p, clock, inst, n, finish=False):
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

    def test_prune_options_combine_and_protect_current(self, p, clock):
        self._chain(p, clock, "a", 5, finish=True)
        assert p.list_executions("a") == [1, 2, 3, 4, 5]
        res = p.prune_executions("a", PruneOptions(keep_last=3, completed_before=T0 + 150))
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

    def test_running_executions_never_pruned(self, p):
        create(p, "a")
        # a non-current execution that is still Running (e.g. written by a stale turn)
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [started("a", execution=2)], execution=2, md=meta())
        assert p.prune_executions("a", PruneOptions()).executions_deleted == 0
        assert p.list_executions("a") == [1, 2]

    def test_bulk_prune_includes_running_instances_and_keeps_kv(self, p, clock):
        self._chain(p, clock, "a", 3)
        self._chain(p, clock, "b", 2, finish=True)
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [kv_set("a", 3, "k", "v")], execution=3, md=meta())
        res = p.prune_executions_bulk(InstanceFilter(), PruneOptions(keep_last=1))
        assert (res.instances_processed, res.executions_deleted) == (2, 3)
        assert p.list_executions("a") == [3] and p.list_executions("b") == [2]
        assert p.get_kv_value("a", "k") == "v"
        assert p.prune_executions_bulk(InstanceFilter(instance_ids=()), PruneOptions()).instances_processed == 0


# --- G. custom status & KV -------------------------------------------------------------------


class TestCustomStatus:
    def test_versioning(self, p):
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


class TestKeyValue:
    def _turn(self, p, inst, events, status=None):
        p.enqueue_for_orchestrator(qmsg(inst))
        item = fetch(p)
        ack(p, item, events, md=meta(status=status), execution=item.execution_id)

    def test_round_trips(self, p):
        create(p, "a")
        create(p, "b")
        big = "x" * 65536
        special = "k/ey with spaces:ünï©ødé\n\"'"
        events = [kv_set("a", 2, "k", "v1"), kv_set("a", 3, "k", "v2"), kv_set("a", 4, "empty", "")]
        self._turn(p, "a", [*events, kv_set("a", 5, "big", big), kv_set("a", 6, special, "s")])
        assert p.get_kv_value("a", "k") == "v2"
        assert p.get_kv_value("a", "empty") == ""
        assert p.get_kv_value("a", "big") == big and p.get_kv_value("a", special) == "s"
        assert p.get_kv_value("a", "missing") is None and p.get_kv_value("nope", "k") is None
        assert p.get_kv_all_values("b") == {} and p.get_kv_value("b", "k") is None  # isolated
        self._turn(p, "a", [kv_clear("a", 7, "k")])
        assert p.get_kv_value("a", "k") is None and "k" not in p.get_kv_all_values("a")
        self._turn(p, "a", [kv_clear_all("a", 8), kv_set("a", 9, "new", "n")])
        assert p.get_kv_all_values("a") == {"new": "n"}
        assert p.get_kv_all_values("nope") == {}

    def test_snapshot_delta_merge_and_tombstones(self, p):
        create(p, "a", extra=[kv_set("a", 2, "k1", "v1", ts=11)])
        self._turn(p, "a", [])
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert item.kv_snapshot == {}  # current-execution mutations are excluded
        can = ContinueAsNew(instance="a", orchestration="Orch", input="")
        ack(p, item, [kv_set("a", 3, "k2", "v2", ts=12)], orch=[can], md=meta(status="ContinuedAsNew"))
        item = fetch(p)  # the CAN turn: store now holds the finished execution's keys
        assert item.kv_snapshot == {"k1": KvEntry("v1", 11), "k2": KvEntry("v2", 12)}
        events = [started("a", execution=2), kv_clear("a", 2, "k1"), kv_set("a", 3, "k2", "v3", ts=13)]
        ack(p, item, events, execution=2, md=meta())
        # client reads overlay the delta; the tombstone hides the stored k1
        assert p.get_kv_all_values("a") == {"k2": "v3"} and p.get_kv_value("a", "k1") is None
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        assert item.kv_snapshot == {"k1": KvEntry("v1", 11), "k2": KvEntry("v2", 12)}
        ack(p, item, [kv_clear_all("a", 4), kv_set("a", 5, "k3", "v", ts=14)], execution=2, md=meta())
        assert p.get_kv_all_values("a") == {"k3": "v"}
        p.enqueue_for_orchestrator(qmsg("a"))
        ack(p, fetch(p), [completed_ev("a", 6, execution=2)], execution=2, md=meta(status="Completed"))
        assert p._kv_store["a"] == {"k3": KvEntry("v", 14)} and "a" not in p._kv_delta
        assert p.get_kv_all_values("a") == {"k3": "v"}

    def test_failed_status_merges_too(self, p):
        create(p, "a", extra=[kv_set("a", 2, "k", "v")])
        self._turn(p, "a", [], status="Failed")
        assert p._kv_store["a"] == {"k": KvEntry("v", 5)} and p.get_kv_value("a", "k") == "v"

    def test_delete_removes_store_and_delta_including_children(self, p):
        create(p, "root", extra=[kv_set("root", 2, "k", "v")], status="Completed")
        create(p, "kid", parent="root", extra=[kv_set("kid", 2, "k", "v")])  # delta only
        p.delete_instance("root", force=True)
        assert p.get_kv_all_values("root") == {} and p.get_kv_all_values("kid") == {}
        assert not p._kv_store and not p._kv_delta


# --- H. sessions & tags ----------------------------------------------------------------------


class TestSessions:
    S1 = SessionConfig(owner_id="w1", lock_timeout_ms=1_000)
    S2 = SessionConfig(owner_id="w2", lock_timeout_ms=1_000)

    def test_session_rows_need_session_config(self, p):
        p.enqueue_for_worker(act("a", 1, session="s"))
        p.enqueue_for_worker(act("a", 2))
        assert wfetch(p).item.id == 2
        assert wfetch(p) is None
        assert wfetch(p, session=self.S1).item.id == 1

    def test_claim_affinity_blocking_takeover(self, p, clock):
        for i in range(1, 5):
            p.enqueue_for_worker(act("a", i, session="s"))
        first = wfetch(p, session=self.S1)
        assert first.item.id == 1 and p._sessions["s"].owner_id == "w1"
        assert wfetch(p, session=self.S2) is None  # blocked: w1 holds a live session lock
        assert wfetch(p, session=self.S1).item.id == 2  # affinity
        clock.advance(1_000)  # session lock expired: another owner takes over
        lease = wfetch(p, session=self.S2)
        assert lease.item.id == 3 and p._sessions["s"].owner_id == "w2"
        assert wfetch(p, session=self.S1) is None
        p.ack_work_item(lease.lock_token, None)
        clock.advance(1_000)
        assert wfetch(p, session=self.S2).item.id == 4  # self-reclaim after expiry

    def test_session_less_rows_still_fetched_with_config(self, p):
        p.enqueue_for_worker(act("a", 1))
        assert wfetch(p, session=self.S1).item.id == 1
        assert "None" not in p._sessions and not p._sessions

    def test_concurrent_claim_has_one_winner(self, p):
        p.enqueue_for_worker(act("a", 1, session="s"))
        p.enqueue_for_worker(act("a", 2, session="s"))
        winners: list[str] = []
        barrier = threading.Barrier(6)

        def claim(owner):
            barrier.wait()
            config = SessionConfig(owner_id=owner, lock_timeout_ms=5_000)
            while p.fetch_work_item(LOCK, session=config) is not None:
                winners.append(owner)

        threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(winners) == 2 and len(set(winners)) == 1

    def test_ack_after_session_expiry_succeeds(self, p, clock):
        p.enqueue_for_worker(act("a", 1, session="s"))
        lease = p.fetch_work_item(5_000, session=self.S1)
        clock.advance(2_000)  # session (1 s) expired, row lock (5 s) alive
        p.ack_work_item(lease.lock_token, act_done("a", 1))
        assert p._sessions["s"].last_activity_at == T0  # not bumped: session lock not live

    def test_ack_and_renew_bump_last_activity_while_live(self, p, clock):
        p.enqueue_for_worker(act("a", 1, session="s"))
        lease = wfetch(p, session=self.S1)
        clock.advance(100)
        p.renew_work_item_lock(lease.lock_token, LOCK)
        assert p._sessions["s"].last_activity_at == T0 + 100
        clock.advance(100)
        p.ack_work_item(lease.lock_token, None)
        assert p._sessions["s"].last_activity_at == T0 + 200

    def test_renew_session_lock_skips_idle_expired_and_others(self, p, clock):
        for sid in ("s1", "s2", "s3"):
            p.enqueue_for_worker(act("a", int(sid[1]), session=sid))
        wfetch(p, session=self.S1)  # s1 claimed at T0
        clock.advance(500)
        wfetch(p, session=self.S1)  # s2 claimed at T0+500
        wfetch(p, session=self.S2)  # s3 by w2
        assert p.renew_session_lock([], 1_000, 300) == 0
        # idle timeout 300: s1 idle for 500 ms -> skipped; s2 renewed; s3 belongs to w2
        assert p.renew_session_lock(["w1"], 2_000, 300) == 1
        assert p._sessions["s2"].locked_until == T0 + 2_500 and p._sessions["s1"].locked_until == T0 + 1_000
        clock.advance(600)  # s1 expired
        assert p.renew_session_lock(["w1", "w2"], 2_000, 10_000) == 2  # s2 + s3, not expired s1

    def test_cleanup_orphaned_sessions(self, p, clock):
        p.enqueue_for_worker(act("a", 1, session="s1"))
        p.enqueue_for_worker(act("a", 2, session="s2"))
        l1 = wfetch(p, session=self.S1)
        wfetch(p, session=self.S1)
        p.ack_work_item(l1.lock_token, None)
        assert p.cleanup_orphaned_sessions(0) == 0  # both live
        clock.advance(1_001)
        assert p.cleanup_orphaned_sessions(0) == 1  # s1 expired and empty; s2 has a queued row
        assert list(p._sessions) == ["s2"]


class TestTags:
    def _fill(self, p):
        p.enqueue_for_worker(act("a", 1))
        p.enqueue_for_worker(act("a", 2, tag="gpu"))
        p.enqueue_for_worker(act("a", 3, tag="cpu"))

    def _drain(self, p, tf):
        ids = []
        while (lease := p.fetch_work_item(LOCK, tag_filter=tf)) is not None:
            ids.append(lease.item.id)
        return ids

    @pytest.mark.parametrize(
        ("tf", "expected"),
        [
            (TagFilter.DEFAULT_ONLY, [1]),
            (TagFilter.default_only(), [1]),
            (TagFilter.tags(["gpu"]), [2]),
            (TagFilter.default_and(["cpu"]), [1, 3]),
            (TagFilter.ANY, [1, 2, 3]),
            (TagFilter.NONE, []),
        ],
    )
    def test_filters_select_exactly(self, p, tf, expected):
        self._fill(p)
        assert self._drain(p, tf) == expected

    def test_default_is_default_only(self, p):
        self._fill(p)
        assert p.fetch_work_item(LOCK).item.id == 1
        assert p.fetch_work_item(LOCK) is None

    def test_tags_preserved_through_ack_and_abandon(self, p):
        create(p, "a", worker=[act("a", 2, tag="gpu", session="s")])
        lease = p.fetch_work_item(LOCK, session=TestSessions.S1, tag_filter=TagFilter.tags(["gpu"]))
        assert lease.item.tag == "gpu" and lease.item.session_id == "s"
        p.abandon_work_item(lease.lock_token)
        assert p.fetch_work_item(LOCK, session=TestSessions.S1) is None  # still tagged
        again = p.fetch_work_item(LOCK, session=TestSessions.S1, tag_filter=TagFilter.ANY)
        assert again.item == act("a", 2, tag="gpu", session="s")


# --- I. capability filter & corrupt history --------------------------------------------------


class TestCapabilityFilter:
    def test_filtering(self, p):
        create(p, "old", dv="0.0.5")
        create(p, "new", dv="2.0.0")
        p.enqueue_for_orchestrator(start_item("fresh"))  # no pin yet: NULL is compatible
        for inst in ("old", "new"):
            p.enqueue_for_orchestrator(qmsg(inst))
        got = fetch(p, filter=("0.1.0", "1.0.0"))
        assert got.instance == "fresh"
        assert fetch(p, filter=("0.1.0", "1.0.0")) is None
        # skipped without locking: no attempt counted, no lock taken
        assert all(r.attempt_count == 0 for r in p._orch.rows.values() if r.item.target_instance != "fresh")
        assert set(p._orch_locks) == {"fresh"}
        assert fetch(p, filter=("0.0.5", "0.0.5")).instance == "old"  # inclusive bounds
        assert fetch(p, filter=("2.0.0", "3.0.0")).instance == "new"

    def test_no_filter_takes_anything_and_pin_is_per_execution(self, p):
        create(p, "a", dv="0.0.1")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        can = ContinueAsNew(instance="a", orchestration="Orch", input="")
        ack(p, item, [can_ev("a", 2)], orch=[can], md=meta(status="ContinuedAsNew", pin=None))
        item = fetch(p, filter=("0.0.0", "0.0.1"))  # current execution 1 still pinned 0.0.1
        ack(p, item, [started("a", execution=2, dv="0.5.0")], execution=2, md=meta(pin="0.5.0"))
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p, filter=("0.0.0", "0.0.1")) is None
        assert fetch(p).instance == "a"
        assert p._executions["a"][1].pin == (0, 0, 1) and p._executions["a"][2].pin == (0, 5, 0)


    def test_empty_range_and_bad_input(self, p):
        create(p, "pinned")
        p.enqueue_for_orchestrator(qmsg("pinned"))
        assert fetch(p, filter=("2.0.0", "1.0.0")) is None  # empty range: no pinned execution fits
        p.enqueue_for_orchestrator(start_item("fresh"))
        assert fetch(p, filter=("2.0.0", "1.0.0")).instance == "fresh"  # NULL pin is still compatible
        with pytest.raises(InvalidInputError):
            fetch(p, filter=("1.0", "2.0.0"))


class TestCorruptHistory:
    def test_corrupt_history(self, p):
        create(p, "a", dv="0.1.0")
        p._corrupt_history("a")
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p, filter=("1.0.0", "2.0.0")) is None  # filtered out first
        attempts = []
        for _ in range(3):
            item = fetch(p)
            assert item.history == () and "deserialize" in item.history_error
            assert fetch(p) is None  # lock held
            attempts.append(item.attempt_count)
            p.abandon_orchestration_item(item.lock_token)
        assert attempts == [1, 2, 3]
        item = fetch(p)
        failed = failed_ev("a", 99999, message="poison")  # the runtime's sentinel id
        ack(p, item, [failed], md=meta(status="Failed", output="poison"))
        assert p.get_instance_info("a").status == "Failed" and p.read("a")[-1] == failed
        p._corrupt_history("a", None)
        p.enqueue_for_orchestrator(qmsg("a"))
        assert fetch(p).history_error is None


def test_check_detects_broken_index(clock):
    prov = InMemoryProvider(clock)
    prov.enqueue_for_worker(act("a", 1))
    prov._check()
    prov._work.fifo.clear()  # the row's entry in the in-order lane lost
    with pytest.raises(AssertionError):
        prov._check()


def test_check_detects_broken_late_lane(clock):
    prov = InMemoryProvider(clock)
    prov.enqueue_for_orchestrator(start_item("a"), delay_ms=500)  # queued for later: the late lane
    prov._check()
    prov._orch.late.clear()
    with pytest.raises(AssertionError):
        prov._check()


def test_next_wakeup_ms(p, clock):
    assert p.next_wakeup_ms() is None
    p.enqueue_for_orchestrator(start_item("a"), delay_ms=700)
    p.enqueue_for_worker(act("a", 1))
    assert p.next_wakeup_ms() == T0 + 700
    p.fetch_work_item(300)
    assert p.next_wakeup_ms() == T0 + 300  # a live lock expiring is a wake-up too
    clock.advance(700)
    p.fetch_orchestration_item(50)
    assert p.next_wakeup_ms() == T0 + 750


def test_threaded_end_to_end_keeps_invariants(p):
    """Orchestrator and worker threads drive 30 instances to completion concurrently."""
    n = 30
    for i in range(n):
        p.enqueue_for_orchestrator(start_item(f"i{i:02}"))
    errors: list[BaseException] = []

    def orchestrator():
        try:
            while len(p.list_instances_by_status("Completed")) < n:
                item = p.fetch_orchestration_item(LOCK)
                if item is None:
                    continue
                inst = item.instance
                if not item.history:
                    ack(p, item, [started(inst)], worker=[act(inst, 2)], md=meta())
                elif any(isinstance(m, ActivityCompletedMsg) for m in item.messages):
                    ack(p, item, [completed_ev(inst, 2)], md=meta(status="Completed", output="r"))
                else:
                    ack(p, item, md=meta())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def worker():
        try:
            while len(p.list_instances_by_status("Completed")) < n:
                lease = p.fetch_work_item(LOCK)
                if lease is not None:
                    p.ack_work_item(lease.lock_token, act_done(lease.item.instance, lease.item.id))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=f) for f in [orchestrator] * 4 + [worker] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors and not any(t.is_alive() for t in threads)
    assert not p._orch.rows and not p._work.rows and not p._orch_locks
    for i in range(n):
        assert [e.event_id for e in p.read(f"i{i:02}")] == [1, 2]
