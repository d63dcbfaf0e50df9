"""Scenarios from seven reference suites, written fresh against duroxide_sim:
``unit_tests.rs``, ``recovery_tests.rs``, ``invocation_cleanup_tests.rs``,
``runtime_lifecycle_tests.rs``, ``shutdown_tests.rs``, ``poison_disposition_tests.rs`` and
``cancellation_corner_cases.rs``.

* cancellation_corner_cases: the race programs of the reference's ``Handler`` (select2/select3
  over queue waits, positional waits, timers, activities and children, then "drain" reads and a
  ``checkpoint`` activity that records what was read). Each turn is run live, then its history
  is replayed: the replay must decide the same, read the same, and add nothing (SPEC §18).
  Queue reads must be FIFO (§6.2), positional waits follow §6.1, and every loser that was still
  pending when the race was decided gets one ``dropped_future`` breadcrumb (§3.10, §4). The
  reference asserts the behaviour of its new engine (stamp 0.1.31), which here agrees with SPEC.
  Its legacy (0.1.30) branches, Rust-only eager/unpolled drops and the nested-select shapes
  (the Python API rejects a nested join/select, SPEC §17) are not written.
* recovery_tests: a fetch or ack fault, before or after its commit, then a peer runtime
  finishes the instance exactly once.
* poison_disposition_tests: a poison disposition whose ack cannot commit is not counted.
* shutdown_tests: an immediate ``shutdown(0)`` ends a concurrent graceful shutdown.
* unit_tests, invocation_cleanup_tests, runtime_lifecycle_tests: nothing new (already covered
  elsewhere, or Rust-only lifecycle, invocation-cleanup and tracing plumbing).

Two tests found differences, fixed in 7d74133: a race loser whose completion follows the
decision in the same batch got no breadcrumb, and a concurrent ``shutdown(0)`` did not cut
short a graceful shutdown already in progress.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from typing import Any

import attrs
import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions
from duroxide_sim.core.events import (
    ActivityCancelRequested,
    CancelInstance,
    ExternalSubscribedCancelled,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    SubOrchestrationCancelRequested,
)
from duroxide_sim.errors import ProviderError
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

from tests.conftest import World
from tests.core import histories as H

from ._helpers import SecondRuntime, kinds

_CRUMBS = (QueueSubscriptionCancelled, ExternalSubscribedCancelled, ActivityCancelRequested, SubOrchestrationCancelRequested)


def _names(events: Any) -> list[str]:
    return [type(e).__name__ for e in events]


# =============================================================================================
# cancellation_corner_cases.rs: the reference's race Handler, on the replay engine
# =============================================================================================


def _task(ctx: Any, arm: str) -> Any:
    """One race arm, as the reference's ``Arm`` (q, q2, s, s2, timer, activity, child)."""
    if arm in ("q", "q2"):
        return ctx.dequeue_event(arm)
    if arm in ("s", "s2"):
        return ctx.wait_for_event(arm)
    if arm == "timer":
        return ctx.schedule_timer(10)
    if arm == "activity":
        return ctx.schedule_activity("a", "")
    assert arm == "child"
    return ctx.schedule_sub_orchestration("child", "")


def _handler(program: tuple[str, ...] | None, drain: tuple[str, ...] = (), until: dict[str, int] | None = None):
    """The reference's ``Handler`` for ``Shape::Race(program)`` (``None``: two timers raced, the
    ``Timers`` shape). After the race: one read per ``drain`` arm, then queue reads until
    ``until[name]`` messages of that queue were read; then ``checkpoint(reads)`` and return.
    ``reads`` holds what the last run of the code read (it is cleared at every run)."""
    reads: list[tuple[str, Any]] = []

    def orch(ctx: Any, _: Any) -> Any:
        reads.clear()
        if program is None:
            yield ctx.select2(ctx.schedule_timer(10), ctx.schedule_timer(100))
        else:
            tasks = [_task(ctx, arm) for arm in program]
            won = yield (ctx.select2(*tasks) if len(tasks) == 2 else ctx.select3(*tasks))
            index, value = won.into_tuple()
            reads.append((program[index], value))
        for arm in drain:
            reads.append((arm, (yield _task(ctx, arm))))
        for name, total in (until or {}).items():
            while sum(1 for a, _ in reads if a == name) < total:
                reads.append((name, (yield ctx.dequeue_event(name))))
        payload = json.dumps(reads)
        yield ctx.schedule_activity("checkpoint", payload)
        return payload

    return orch, reads


@attrs.define
class _Obs:
    live: Any
    reads: list[tuple[str, Any]]
    replay: Any
    replay_reads: list[tuple[str, Any]]
    history: list[Any]


def _record(orch: Any, reads: list, batches: list[list[tuple[str, Any]]], initial: list[tuple[str, Any]] = ()) -> list[_Obs]:
    """The reference's ``record_and_replay``: a first turn with ``initial`` (the messages come
    with the start), then one turn per batch. After each live turn its history is replayed."""
    history = [H.started()]
    out = []
    for batch in [list(initial), *batches]:
        live = H.turn(orch, history, H.batch_messages(history, batch))
        live_reads = list(reads)
        history = history + list(live.delta)
        replay = H.turn(orch, history) if live.kind == "continue" else None
        out.append(_Obs(live, live_reads, replay, list(reads), history))
        if live.kind != "continue":
            break
    return out


def _stability_problem(observations: list[_Obs]) -> str | None:
    """The reference's ``assert_stable`` (without its logical-cancellation set): no live or
    replay failure, the replay decides and reads the same and adds no event and no work, and
    every ``dropped_future`` breadcrumb is unique and names a schedule of the history."""
    for n, o in enumerate(observations):
        if o.live.kind != "continue":
            return f"turn {n}: live {o.live.kind}: {o.live.error}"
        r = o.replay
        if (r.kind, list(r.delta), list(r.worker_items), list(r.orchestrator_items)) != ("continue", [], [], []):
            return f"turn {n}: replay {r.kind} {r.error} added {_names(r.delta)}"
        if o.replay_reads != o.reads:
            return f"turn {n}: replay read {o.replay_reads}, live read {o.reads}"
        ids = {e.event_id for e in o.history}
        seen = set()
        for e in o.history:
            if isinstance(e, _CRUMBS) and e.reason == "dropped_future":
                if (type(e), e.source_event_id) in seen:
                    return f"turn {n}: duplicate breadcrumb for {e.source_event_id}"
                if e.source_event_id not in ids:
                    return f"turn {n}: breadcrumb for unknown schedule {e.source_event_id}"
                seen.add((type(e), e.source_event_id))
    return None


def _dropped(history: list[Any]) -> set[tuple[str, int]]:
    return {(type(e).__name__, e.source_event_id) for e in history if isinstance(e, _CRUMBS) and e.reason == "dropped_future"}


_Q = "QueueSubscriptionCancelled"
_S = "ExternalSubscribedCancelled"
_FIFTY = [f"m{i}" for i in range(50)]

# (reference test, program, drain, batches, expected reads, expected dropped_future breadcrumbs)
# The race arms are scheduled first, in argument order, so they get event ids 2, 3 (and 4).
_SCENARIOS = [
    ("q4_cross_queue_cancellations_are_independent", ("q", "q2", "timer"), ("q", "q2"),
     [[("timer", 0), ("q", "first"), ("q2", "second")]],
     [("timer", None), ("q", "first"), ("q2", "second")], {(_Q, 2), (_Q, 3)}),
    ("q8_queue_child_completion_same_batch", ("q", "child"), ("q",),
     [[("child", 0), ("q", "first")]],
     [("child", "ok"), ("q", "first")], {(_Q, 2)}),
    ("t1_timer_loser_does_not_consume_queue_arrival", None, ("q",),
     [[("timer", 0), ("timer", 1), ("q", "first")]],
     [("q", "first")], set()),
    *[(f"queue_q1_select3_two_losers/count{count}", ("q", "q", "timer"), ("q",) * count,
       [[("timer", 0)] + [("q", v) for v in ("first", "second", "third")[:count]]],
       [("timer", None)] + [("q", v) for v in ("first", "second", "third")[:count]], {(_Q, 2), (_Q, 3)})
      for count in range(4)],
    ("q11_catch_up_batch_fifty_arrivals", ("q", "timer"), ("q",) * 50,
     [[("timer", 0)] + [("q", v) for v in _FIFTY]],
     [("timer", None)] + [("q", v) for v in _FIFTY], {(_Q, 2)}),
    ("positional_s2_two_waits_timer_same_batch", ("s", "s", "timer"), ("s",),
     [[("timer", 0), ("s", "first")], [("s", "second")]],
     [("timer", None), ("s", "second")], {(_S, 2), (_S, 3)}),
    ("positional_s3_signal_queue_timer_same_batch", ("s", "q", "timer"), ("s", "q"),
     [[("timer", 0), ("s", "first"), ("q", "first")], [("s", "second"), ("q", "second")]],
     [("timer", None), ("s", "second"), ("q", "first")], {(_S, 2), (_Q, 3)}),
    ("s5_two_signal_arrivals_match_active_waits", ("s", "s", "timer"), (),
     [[("s", "first"), ("s", "second")]],
     [("s", "first")], {(_S, 3)}),
]


@pytest.mark.parametrize(("program", "drain", "batches", "expected", "crumbs"),
                         [s[1:] for s in _SCENARIOS], ids=[s[0] for s in _SCENARIOS])
def test_race_program_reads_and_replays_as_the_reference_new_engine(program, drain, batches, expected, crumbs):
    """Reference: cancellation_corner_cases (the test named in the case id; its 0.1.31 branch).

    A race runs in turn 1; its completions come in the batches. The winner is the child whose
    completion is first in history (SPEC §4). Losers still pending are dropped: each queue or
    positional wait gets one `dropped_future` breadcrumb and consumes nothing; timers get none
    (§3.10, §4, §6.2). Queue messages stay buffered for later dequeues, in FIFO order, also 50
    in one batch (§3.7). A positional signal that arrives in the batch where its wait loses is
    not kept for a later wait; a fresh one resolves it (§6.1). The checkpoint records the reads.
    After every turn a replay of the history makes the same decisions and adds nothing (§18)."""
    orch, reads = _handler(program, drain)
    observations = _record(orch, reads, batches)
    assert _stability_problem(observations) is None, _stability_problem(observations)
    last = observations[-1]
    assert last.reads == expected, (last.reads, _names(last.history))
    (checkpoint,) = [e for e in last.history if type(e).__name__ == "ActivityScheduled" and e.name == "checkpoint"]
    assert [tuple(r) for r in json.loads(json.loads(checkpoint.input))] == expected
    assert _dropped(last.history) == crumbs, _names(last.history)


@pytest.mark.parametrize("arm", ["activity", "child"])
def test_race_loser_whose_completion_follows_the_decision_in_the_same_batch_gets_a_breadcrumb(arm):
    """Reference: cancellation_corner_cases::q7_queue_activity_timer_cancellation (and the
    Child arm of its exhaustive_small_scope_queue_race_orders), via ``assert_stable``: the set
    of `dropped_future` breadcrumbs must equal the set of non-timer branches that were still
    pending when they were dropped.

    `select3(dequeue q, <activity|child>, timer)`; one batch brings the timer's firing, then the
    activity's (child's) completion, then "first". The timer's completion is first in history,
    so the timer wins while the dequeue and the activity (child) are both still pending (SPEC
    §4: one completion is delivered between polls). Both losers are dropped: SPEC §3.10 step 2,
    "each dropped id without any existing cancel breadcrumb gets one" (`QueueSubscriptionCancelled`
    and `ActivityCancelRequested` / `SubOrchestrationCancelRequested`, reason `dropped_future`);
    the completion that arrives after the drop is recorded but not delivered, and "completions
    after cancel [are] tolerated" (§16 item 43). The drain dequeue reads "first".

    Before 7d74133 ours wrote the queue breadcrumb only: the late completion marked the dropped
    slot done, and `finalize._reconcile_dropped` skipped done activity/sub-orchestration slots
    as if they had completed before the drop."""
    orch, reads = _handler(("q", arm, "timer"), ("q",))
    observations = _record(orch, reads, [[("timer", 0), (arm, 0), ("q", "first")]])
    assert _stability_problem(observations) is None, _stability_problem(observations)
    last = observations[-1]
    assert last.reads == [("timer", None), ("q", "first")]
    loser = "ActivityCancelRequested" if arm == "activity" else "SubOrchestrationCancelRequested"
    got = _dropped(last.history)
    assert got == {(_Q, 2), (loser, 3)}, f"dropped_future breadcrumbs {sorted(got)}; history {_names(last.history)}"


@pytest.mark.parametrize(("arm", "crumb"), [("q", QueueSubscriptionCancelled), ("s", ExternalSubscribedCancelled),
                                            ("activity", ActivityCancelRequested), ("child", SubOrchestrationCancelRequested)])
def test_same_type_loser_breadcrumbs_are_in_ascending_id_order_and_deterministic(arm, crumb):
    """Reference: cancellation_corner_cases::ms16_cancellation_blocks_are_deterministic_by_type_and_id.

    `select3(arm, arm, timer)` and only the timer fires: both arms lose while pending. Their
    `dropped_future` breadcrumbs come in ascending source-id order (2, then 3), and sixteen
    fresh runs write the identical history (SPEC §18: deterministic turns). The side effects go
    with the breadcrumbs (SPEC §3.10 step 2, §3.9): dropped activities are in the ack's
    cancelled list (their worker rows are deleted); dropped children each get
    `CancelInstance("parent dropped sub-orchestration future")`."""
    baseline = None
    for _ in range(16):
        orch, reads = _handler((arm, arm, "timer"))
        observations = _record(orch, reads, [[("timer", 0)]])
        assert _stability_problem(observations) is None, _stability_problem(observations)
        last = observations[-1]
        history = [attrs.evolve(e, timestamp_ms=0) for e in last.history]
        assert [(e.source_event_id, e.reason) for e in history if isinstance(e, _CRUMBS)] == [(2, "dropped_future"), (3, "dropped_future")]
        assert {type(e) for e in history if isinstance(e, _CRUMBS)} == {crumb}
        assert baseline is None or history == baseline
        baseline = history
    turn = last.live
    if arm == "activity":
        assert sorted(turn.cancelled) == [("i", 1, 2), ("i", 1, 3)]
    else:
        assert turn.cancelled == ()
    cancels = sorted((w.instance, w.reason) for w in turn.orchestrator_items if isinstance(w, CancelInstance))
    if arm == "child":
        assert cancels == [("i::sub::2", "parent dropped sub-orchestration future"), ("i::sub::3", "parent dropped sub-orchestration future")]
    else:
        assert cancels == []


_ARMS = ("q", "q2", "s", "timer", "activity", "child")


def _offered(program: tuple[str, ...]) -> list[tuple[str, Any]]:
    inputs = []
    if "q" in program:
        inputs += [("q", "first"), ("q", "second")]
    if "q2" in program:
        inputs += [("q2", "other")]
    if "s" in program:
        inputs += [("s", "first-signal")]
    for arm in ("timer", "activity", "child"):
        inputs += [(arm, i) for i in range(program.count(arm))]
    return inputs


def test_small_scope_race_programs_replay_stably_and_read_queues_in_fifo_order():
    """Reference: cancellation_corner_cases::exhaustive_small_scope_queue_race_orders (a smaller
    scope: two-arm programs, at most two completions per batch, its 0.1.31 assertions).

    Every program `select2(a, b)` over {q, q2, s, timer, activity, child}, with every ordered
    batch of up to two of its completions, delivered after the race is persisted or together
    with the start, then a follow-up batch with one more message per queue / signal. The code
    then reads each queue until it has read every message offered to it. After every turn: no
    failure, the replay decides and reads the same and adds nothing (SPEC §18); queue reads are
    a FIFO prefix of the messages offered (§6.2); and no active dequeue is left pending while an
    offered message of its queue is unread (§6.2, §3.7)."""
    problems = []
    cases = 0
    for program in itertools.product(_ARMS, repeat=2):
        inputs = _offered(program)
        follow = [x for x in (("q", "fourth"), ("q2", "other-fourth"), ("s", "fresh-signal")) if x[0] in program]
        batches = [list(p) for k in range(3) for c in itertools.combinations(inputs, k) for p in itertools.permutations(c)]
        for batch, with_start in itertools.product(batches, (False, True)):
            if with_start and any(a in ("timer", "activity", "child") for a, _ in batch):
                continue  # (nothing is scheduled yet: only messages can come with the start)
            until = {q: sum(1 for a, _ in batch + follow if a == q) for q in ("q", "q2")}
            orch, reads = _handler(program, (), until)
            obs = _record(orch, reads, [follow], initial=batch) if with_start else _record(orch, reads, [batch, follow])
            cases += 1
            where = (program, batch, "with start" if with_start else "after the race")
            problem = _stability_problem(obs)
            if problem:
                problems.append((where, problem))
                continue
            last = obs[-1]
            for q in ("q", "q2"):
                offered = [v for a, v in batch + follow if a == q]
                got = [v for a, v in last.reads if a == q]
                if got != offered[: len(got)]:
                    problems.append((where, f"{q}: read {got}, offered {offered}"))
                cancelled = {e.source_event_id for e in last.history if isinstance(e, QueueSubscriptionCancelled)}
                active = sum(1 for e in last.history if isinstance(e, QueueSubscribed) and e.name == q and e.event_id not in cancelled)
                if active > len(got) and got != offered:
                    problems.append((where, f"{q}: a dequeue is pending with unread messages: read {got}, offered {offered}"))
    assert cases > 300
    assert problems == [], problems[:5]


# =============================================================================================
# recovery_tests.rs
# =============================================================================================


class _OneShotFault(InMemoryProvider):
    """Fails the first call of ``op`` once, with a retryable error: before it runs, or after it
    committed (its reply lost)."""

    def __init__(self, clock: SimClock, op: str, after_commit: bool) -> None:
        super().__init__(clock)
        self.op, self.after_commit, self.left = op, after_commit, 1

    def _faulted(self, name: str, call: Any) -> Any:
        if name != self.op or not self.left:
            return call()
        self.left = 0
        if self.after_commit:
            call()
        raise ProviderError(f"injected {name} fault", operation=name, retryable=True)

    def fetch_orchestration_item(self, *args: Any, **kwargs: Any) -> Any:
        return self._faulted("fetch_orchestration_item", lambda: InMemoryProvider.fetch_orchestration_item(self, *args, **kwargs))

    def ack_orchestration_item(self, *args: Any, **kwargs: Any) -> Any:
        return self._faulted("ack_orchestration_item", lambda: InMemoryProvider.ack_orchestration_item(self, *args, **kwargs))


@pytest.mark.parametrize("after_commit", [False, True], ids=["before-commit", "after-commit"])
@pytest.mark.parametrize("op", ["fetch_orchestration_item", "ack_orchestration_item"])
def test_fetch_or_ack_fault_around_its_commit_is_recovered_by_a_peer_exactly_once(op, after_commit):
    """Reference: recovery_tests::lifecycle_fetch_and_ack_faults_preserve_orchestration_recovery_across_commit_boundaries.

    The first orchestrator fetch (or ack) of a runtime fails once, before it runs or after it
    committed; then that runtime stops and a peer runtime on the same store takes over. The
    instance completes "recovered" with exactly one OrchestrationCompleted and no
    OrchestrationFailed. A fetch whose reply was lost leaves the instance locked: the peer gets
    it only after the 50 ms lock expires (SPEC §1 peek-lock, §15.1 fetch; attempt +1). A failed
    ack is retried or finds its turn committed (§3.1 step 10, §18 "ack that commits then
    errors")."""
    clock = SimClock()
    provider = _OneShotFault(clock, op, after_commit)
    options = RuntimeOptions(worker_concurrency=0, orchestrator_lock_timeout_ms=50)
    runtime = Runtime(provider, options, clock=clock, ids=SequentialIds())
    driver = SequentialDriver(runtime, clock)
    world = World(provider, runtime, Client(provider, clock=clock, sleep=driver.sleep), clock, driver)
    runtime.register_orchestration("recover", lambda ctx, _: "recovered")
    world.client.start_orchestration("lifecycle-recovery", "recover", "")
    if op == "fetch_orchestration_item":
        with pytest.raises(ProviderError):
            runtime.orchestration_dispatcher.step()
    else:
        runtime.orchestration_dispatcher.step()  # (the dispatcher handles a failing ack itself)
    assert provider.left == 0
    assert runtime.metrics_snapshot().provider_errors >= 1

    peer = SecondRuntime(world, options, namespace=2)
    peer.runtime.register_orchestration("recover", lambda ctx, _: "recovered")
    if op == "fetch_orchestration_item" and after_commit:
        peer.driver.run_until_idle()  # the lost lock has not expired yet
        assert world.client.get_status("lifecycle-recovery").status == "NotFound"
    st = peer.result("lifecycle-recovery")
    assert (st.status, st.output) == ("Completed", "recovered"), st
    assert kinds(world, "lifecycle-recovery") == ["OrchestrationStarted", "OrchestrationCompleted"]


# =============================================================================================
# poison_disposition_tests.rs
# =============================================================================================


class _PoisonWithDeadLease(InMemoryProvider):
    """The reference's PoisonInjectingProvider with ``inject_orchestration_poison_persistent(11)``
    and ``expire_orchestration_lease(true)``: every fetch reports 11 attempts and, while the
    lease is "dead", every orchestrator ack fails permanently with `Invalid lock token`."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__(clock)
        self.dead_lease = True
        self.failed_acks = 0

    def fetch_orchestration_item(self, *args: Any, **kwargs: Any) -> Any:
        item = super().fetch_orchestration_item(*args, **kwargs)
        return None if item is None else attrs.evolve(item, attempt_count=11)

    def ack_orchestration_item(self, *args: Any, **kwargs: Any) -> Any:
        if self.dead_lease:
            self.failed_acks += 1
            raise ProviderError("Invalid lock token", operation="ack_orchestration_item", retryable=False)
        return super().ack_orchestration_item(*args, **kwargs)


def test_poison_disposition_that_cannot_commit_is_not_counted_and_a_committed_one_counts_once():
    """Reference: poison_disposition_tests::failed_poison_disposition_is_not_counted_as_poisoned
    and successful_poison_disposition_is_counted_once (issues #46/#47).

    Every delivery of the start is over `max_attempts` (11 > 10), so each takes the poison path
    without running the code (SPEC §10.2). While every ack fails (a dead lease), nothing is
    taken out of circulation: `orch_poison` stays 0 (no orchestration failed either), the
    instance is not Failed and the message is still queued, redelivered again and again. (The
    reference also counts these in a newer `orch_poison_failed` metric that SPEC §14 does not
    have.) Once acks work again, the next delivery commits the poison: the instance is Failed
    with the poison message and `orch_poison` is exactly 1."""
    clock = SimClock()
    provider = _PoisonWithDeadLease(clock)
    runtime = Runtime(provider, RuntimeOptions(max_attempts=10, worker_concurrency=0), clock=clock, ids=SequentialIds())
    driver = SequentialDriver(runtime, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    ran = []

    @runtime.register_orchestration("NeverRuns")
    def never(ctx, _):
        ran.append(ctx.instance_id)
        return "must not run"

    client.start_orchestration("poison-disposition", "NeverRuns", "{}")
    driver.run_until_quiet(600)
    m = runtime.metrics_snapshot()
    deliveries = m.orch_dispatcher_items_fetched
    assert deliveries > 2 and provider.failed_acks >= deliveries, (deliveries, provider.failed_acks)
    assert (m.orch_poison, m.orch_failures) == (0, 0), m
    assert client.get_status("poison-disposition").status == "NotFound"
    assert client.get_queue_depths().orchestrator_queue == 1

    provider.dead_lease = False
    st = client.wait_for_orchestration("poison-disposition", 10**12)
    assert st.status == "Failed" and st.error == "poison: orchestration poison-disposition exceeded 11 attempts (max 10)", st
    m = runtime.metrics_snapshot()
    assert (m.orch_poison, m.orch_failures) == (1, 1), m
    assert ran == []


# =============================================================================================
# shutdown_tests.rs
# =============================================================================================


def test_immediate_shutdown_ends_a_graceful_shutdown_already_in_progress():
    """Reference: shutdown_tests::concurrent_immediate_shutdown_can_end_an_existing_grace_period.

    An async activity is running. One thread calls `shutdown(10_000)` (a grace period); while
    it waits, another calls `shutdown(0)`. SPEC §14: `shutdown(timeout_ms)`, "0 → abort". The
    reference: the immediate call ends the grace period at once, the activity is aborted (it
    never completes) and both calls return promptly.

    Before 7d74133 the second call only waited (up to 0 ms + 1 s) for the first one to finish
    and returned; the graceful call kept waiting for the activity, which then completed and
    acked its result (`Runtime.shutdown` never shortened the stop already in progress)."""
    clock = SimClock()
    provider = InMemoryProvider(clock)
    runtime = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, orchestration_concurrency=1, worker_concurrency=1),
                      clock=clock, ids=SequentialIds())
    client = Client(provider, clock=clock)
    entered, release = threading.Event(), threading.Event()
    completed: list[str] = []

    @runtime.register_activity("Activity")
    async def activity(ctx, _):
        entered.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        completed.append(ctx.instance_id)
        return "done"

    @runtime.register_orchestration("ActivityOrch")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Activity", ""))

    runtime.start()
    graceful = threading.Thread(target=runtime.shutdown, args=(10_000,))
    try:
        client.start_orchestration("shutdown-instance", "ActivityOrch", "")
        assert entered.wait(5)
        graceful.start()
        time.sleep(0.05)
        assert graceful.is_alive()  # the grace period has begun: it waits for the activity
        runtime.shutdown(0)
        graceful.join(0.5)
        finished = not graceful.is_alive()
        assert finished and completed == [], (
            f"10 s graceful shutdown still waiting 0.5 s after shutdown(0) returned: {not finished}; "
            f"activity completed: {completed}")
    finally:
        release.set()
        if graceful.ident is not None:
            graceful.join(5)
        runtime.shutdown(0)
