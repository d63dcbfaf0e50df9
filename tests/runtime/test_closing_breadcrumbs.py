"""SPEC §3.9: a turn that ends an execution (Completed, Failed, ContinuedAsNew, Cancelled) writes
a closing breadcrumb - ``ExternalSubscribedCancelled`` / ``QueueSubscriptionCancelled`` with
``reason="orchestration_terminal"`` and ``source_event_id`` = the subscription - for every
positional or queue subscription still open, before the terminal event.

"Open" is a property of the execution's events (SPEC §6.1, §6.2), not of what the turn's code
happened to bind. These tests run real orchestrations through the production Runtime on the
in-memory provider and on a SQLite file, leave a subscription open in history, then deploy
changed code (a fresh Runtime and registry over the same store: a cold replay) that ends the
instance without re-binding it: a nondeterminism failure, an early return, a raise, a cancel;
also a turn that fails without running the code at all (an activity's poison). Each test
asserts the exact events of the execution (id, kind, source_event_id, reason).

Found by this file and fixed: the breadcrumbs were taken from the slots the turn's code bound,
and skipped altogether when the turn did not run the code to the end, so in all of those cases
the subscription that history still held open got none (the reference, duroxide, writes them).
Pinned unchanged: the cases where the code bound every subscription (a cancel while waiting,
warm or cold; the continue-as-new path), where the breadcrumbs come from the code's own slots.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.core.verify import verify_execution
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import check_well_formed

PROVIDERS = ("mem", "sqlite")
KINDS = ("wait", "queue")

SUB = {"wait": "ExternalSubscribed", "queue": "QueueSubscribed"}
ARRIVAL = {"wait": "ExternalEvent", "queue": "QueueEventDelivered"}
CRUMB = {"wait": "ExternalSubscribedCancelled", "queue": "QueueSubscriptionCancelled"}
TERMINAL = "orchestration_terminal"


# ---------------------------------------------------------------------------------------------
# rig
# ---------------------------------------------------------------------------------------------


class Deployment:
    """One runtime (its own registry, engine cache, driver and client) over the rig's store."""

    def __init__(self, provider: Any, clock: SimClock, options: RuntimeOptions, namespace: int) -> None:
        self.provider = provider
        self.runtime = Runtime(provider, options, clock=clock, ids=SequentialIds(namespace))
        self.driver = SequentialDriver(self.runtime, clock)
        self.client = Client(provider, clock=clock, sleep=self.driver.sleep)

    def run(self) -> None:
        self.driver.run_until_quiet()

    def result(self, instance: str = "i") -> Any:
        return self.client.wait_for_orchestration(instance, 10**12)


class Rig:
    """A store on a simulated clock; each :meth:`deploy` is a new process with the given code
    registered as ``"O"`` (on SQLite: a new provider on the same file, as after a restart)."""

    def __init__(self, kind: str, path: Any) -> None:
        self.kind = kind
        self.path = str(path)
        self.clock = SimClock()
        self.providers: list[Any] = []
        self.deployments = 0

    def deploy(self, orchestration: Any, *, cache: bool = True, options: RuntimeOptions | None = None) -> Deployment:
        if self.kind == "mem":
            if not self.providers:
                self.providers.append(InMemoryProvider(self.clock))
            provider = self.providers[0]
        else:
            provider = SqliteProvider.open(self.path, clock=self.clock)
            self.providers.append(provider)
        self.deployments += 1
        if options is None:
            options = RuntimeOptions() if cache else RuntimeOptions(instance_cache_size=0)
        dep = Deployment(provider, self.clock, options, self.deployments)
        dep.runtime.register_orchestration("O", orchestration)
        return dep

    def close(self) -> None:
        for p in self.providers:
            if self.kind == "mem":
                p._check()
            else:
                p.close()


@pytest.fixture(params=PROVIDERS)
def rig(request: Any, tmp_path: Any) -> Any:
    r = Rig(request.param, tmp_path / "closing.db")
    yield r
    r.close()


def events(dep: Deployment, instance: str = "i", execution: int = 1) -> list[tuple[int, str, int | None, str | None]]:
    """(event_id, kind, source_event_id, reason) of every event of one execution."""
    out = []
    for e in dep.client.read_execution_history(instance, execution):
        data = json.loads(e.data) if e.data else {}
        reason = data.get("reason") if isinstance(data, dict) else None
        out.append((e.event_id, e.kind, e.source_event_id, reason))
    return out


def subscribe(ctx: Any, kind: str, name: str) -> Any:
    return ctx.schedule_wait(name) if kind == "wait" else ctx.dequeue_event(name)


def send(client: Client, kind: str, name: str, data: Any, instance: str = "i") -> None:
    if kind == "wait":
        client.raise_event(instance, name, data)
    else:
        client.enqueue_event(instance, name, data)


def assert_history_is_sound(dep: Deployment, instance: str = "i", execution: int = 1) -> None:
    """The simulator's well-formedness checker accepts the history."""
    raw = dep.provider.read_with_execution(instance, execution)
    assert check_well_formed(instance, execution, raw) == []


# ---------------------------------------------------------------------------------------------
# the old code: waits on one subscription, left open in history
# ---------------------------------------------------------------------------------------------


def waiting_code(kind: str) -> Any:
    def old(ctx, _):
        yield ctx.schedule_timer(5)
        return (yield subscribe(ctx, kind, "x"))

    return old


WAITING_BASE = [(1, "OrchestrationStarted", None, None), (2, "TimerCreated", None, None), (3, "TimerFired", 2, None)]


def started_waiting(rig: Rig, kind: str) -> list[tuple[int, str, int | None, str | None]]:
    """Start ``"i"`` on the old code and leave it waiting; its history (subscription 4 open)."""
    old = rig.deploy(waiting_code(kind))
    old.client.start_orchestration("i", "O")
    old.run()
    before = [*WAITING_BASE, (4, SUB[kind], None, None)]
    assert events(old) == before
    return before


def diverging(ctx, _):
    """Changed code: a different first step (SPEC §3.5: schedule mismatch at event 2)."""
    yield ctx.schedule_activity("Check", 1)
    return "new"


def returning_early(ctx, _):
    """Changed code: returns where the old code subscribed (SPEC §3.4: the walk stops there)."""
    yield ctx.schedule_timer(5)
    return "early"


def raising_early(ctx, _):
    """Changed code: raises where the old code subscribed."""
    yield ctx.schedule_timer(5)
    raise ValueError("gave up")


# ---------------------------------------------------------------------------------------------
# cases 1-3: changed code ends the instance; history holds the open subscription
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_nondeterminism_failure_closes_subscription_open_in_history(rig, kind):
    """The changed code diverges at event 2 (the turn fails without running the code to the
    end); history's open subscription 4 gets its breadcrumb before OrchestrationFailed."""
    before = started_waiting(rig, kind)
    new = rig.deploy(diverging)
    send(new.client, kind, "other", "not for x")  # a turn for the instance; it resolves nothing
    new.run()
    st = new.result()
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic: schedule mismatch: action=CallActivity vs event=TimerCreated")
    assert events(new) == [
        *before,
        (5, ARRIVAL[kind], None, None),
        (6, CRUMB[kind], 4, TERMINAL),
        (7, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(new)
    # CI replay of the new code reproduces the recorded nondeterminism failure: not confused by
    # the breadcrumb in the history it replays.
    exe = new.provider.read_with_execution("i", 1)
    assert verify_execution("i", 1, exe, new.runtime.registry) is None


@pytest.mark.parametrize("kind", KINDS)
def test_early_return_on_cold_replay_closes_subscription_never_walked(rig, kind):
    """The changed code returns before the walk reaches event 4, so the engine never binds the
    subscription (``unwalked`` > 0): it still gets its breadcrumb before OrchestrationCompleted."""
    before = started_waiting(rig, kind)
    new = rig.deploy(returning_early)
    send(new.client, kind, "other", "not for x")
    new.run()
    st = new.result()
    assert (st.status, st.output) == ("Completed", "early")
    assert events(new) == [
        *before,
        (5, ARRIVAL[kind], None, None),
        (6, CRUMB[kind], 4, TERMINAL),
        (7, "OrchestrationCompleted", None, None),
    ]
    assert_history_is_sound(new)
    # CI replay still reports the step the new code no longer takes (the subscription), and
    # only that: the breadcrumb is no step.
    exe = new.provider.read_with_execution("i", 1)
    problem = verify_execution("i", 1, exe, new.runtime.registry)
    assert problem is not None and f"before the recorded {SUB[kind]}(name='x') (event 4)" in problem


@pytest.mark.parametrize("kind", KINDS)
def test_raise_before_recreating_the_wait_closes_it(rig, kind):
    """The changed code raises before re-creating the subscription: Failed(Application) with the
    breadcrumb for history's subscription first."""
    before = started_waiting(rig, kind)
    new = rig.deploy(raising_early)
    send(new.client, kind, "other", "not for x")
    new.run()
    st = new.result()
    assert st.status == "Failed" and "ValueError: gave up" in st.error
    assert events(new) == [
        *before,
        (5, ARRIVAL[kind], None, None),
        (6, CRUMB[kind], 4, TERMINAL),
        (7, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(new)


@pytest.mark.parametrize("kind", KINDS)
def test_arrival_in_the_final_turn_resolves_the_subscription(rig, kind):
    """The turn that fails also delivers an arrival for the open subscription: it is resolved
    (SPEC §6.1/§6.2, events of this turn included), so it gets no breadcrumb."""
    before = started_waiting(rig, kind)
    new = rig.deploy(diverging)
    send(new.client, kind, "x", "for x")
    new.run()
    assert new.result().status == "Failed"
    assert events(new) == [*before, (5, ARRIVAL[kind], None, None), (6, "OrchestrationFailed", None, None)]


def test_turn_failed_without_running_the_code_closes_open_subscription(rig):
    """SPEC §3.4: an abort error (here an activity poisoned on the worker: ActivityFailed with
    Poison details) fails the turn without running the code, with the same code deployed: the
    wait the code was also waiting on is closed before OrchestrationFailed."""

    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Missing"), ctx.schedule_wait("x")]))

    dep = rig.deploy(orch, options=RuntimeOptions(max_attempts=2))
    dep.client.start_orchestration("i", "O")
    dep.run()
    st = dep.result()
    assert st.status == "Failed" and st.error.startswith("poison: activity Missing#2 exceeded")
    assert events(dep) == [
        (1, "OrchestrationStarted", None, None),
        (2, "ActivityScheduled", None, None),
        (3, "ExternalSubscribed", None, None),
        (4, "ActivityFailed", 2, None),
        (5, "ExternalSubscribedCancelled", 3, TERMINAL),
        (6, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(dep)


# ---------------------------------------------------------------------------------------------
# pairing: only the subscriptions history leaves open get one
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_of_two_subscriptions_of_one_name_only_the_unresolved_is_closed(rig, kind):
    """Two subscriptions of "x" (2, 3), one arrival (4): it resolves the first (creation order),
    so only 3 gets a breadcrumb when changed code fails the instance."""

    def old(ctx, _):
        return (yield ctx.all([subscribe(ctx, kind, "x"), subscribe(ctx, kind, "x")]))

    dep = rig.deploy(old)
    dep.client.start_orchestration("i", "O")
    dep.run()
    send(dep.client, kind, "x", "first")
    dep.run()
    before = [
        (1, "OrchestrationStarted", None, None),
        (2, SUB[kind], None, None),
        (3, SUB[kind], None, None),
        (4, ARRIVAL[kind], None, None),
    ]
    assert events(dep) == before
    new = rig.deploy(diverging)
    send(new.client, kind, "other", "not for x")
    new.run()
    assert new.result().status == "Failed"
    assert events(new) == [
        *before,
        (5, ARRIVAL[kind], None, None),
        (6, CRUMB[kind], 3, TERMINAL),
        (7, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(new)


def test_buffered_queue_message_resolves_a_later_subscription(rig):
    """SPEC §6.2: a queue message delivered before its subscription is buffered and resolves it
    (5 takes m2, delivered at 4); only the subscription after it (6) is open and closed."""

    def old(ctx, _):
        a = yield ctx.dequeue_event("q")
        b = yield ctx.dequeue_event("q")
        c = yield ctx.dequeue_event("q")
        return [a, b, c]

    dep = rig.deploy(old)
    dep.client.start_orchestration("i", "O")
    dep.run()
    dep.client.enqueue_event("i", "q", "m1")
    dep.client.enqueue_event("i", "q", "m2")
    dep.run()
    before = [
        (1, "OrchestrationStarted", None, None),
        (2, "QueueSubscribed", None, None),
        (3, "QueueEventDelivered", None, None),
        (4, "QueueEventDelivered", None, None),
        (5, "QueueSubscribed", None, None),
        (6, "QueueSubscribed", None, None),
    ]
    assert events(dep) == before
    new = rig.deploy(diverging)
    new.client.enqueue_event("i", "other", "not for q")
    new.run()
    assert new.result().status == "Failed"
    assert events(new) == [
        *before,
        (7, "QueueEventDelivered", None, None),
        (8, "QueueSubscriptionCancelled", 6, TERMINAL),
        (9, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(new)


def test_positional_event_raised_twice_resolves_one_wait_only(rig):
    """SPEC §6.1, the positional counterpart: of two raises in one batch for one wait, the
    second is audit-only (no active wait left for it), so the wait created after it (5) is open
    and closed - a positional arrival is not buffered."""

    def old(ctx, _):
        a = yield ctx.schedule_wait("x")
        b = yield ctx.schedule_wait("x")
        return [a, b]

    dep = rig.deploy(old)
    dep.client.start_orchestration("i", "O")
    dep.run()
    dep.client.raise_event("i", "x", "e1")
    dep.client.raise_event("i", "x", "e2")
    dep.run()
    before = [
        (1, "OrchestrationStarted", None, None),
        (2, "ExternalSubscribed", None, None),
        (3, "ExternalEvent", None, None),
        (4, "ExternalEvent", None, None),
        (5, "ExternalSubscribed", None, None),
    ]
    assert events(dep) == before
    new = rig.deploy(diverging)
    new.client.raise_event("i", "other", "not for x")
    new.run()
    assert new.result().status == "Failed"
    assert events(new) == [
        *before,
        (6, "ExternalEvent", None, None),
        (7, "ExternalSubscribedCancelled", 5, TERMINAL),
        (8, "OrchestrationFailed", None, None),
    ]


@pytest.mark.parametrize("ending", ["changed-code", "same-code-cancel-cold"])
def test_arrival_after_a_drop_in_the_same_turn_resolves_nothing(rig, ending):
    """SPEC §3.4/§6.1 as the walk pairs them: the race's timer fires (4) and "x" arrives (5) in
    one batch; the code drops the losing wait (2) when the race resolves, before 5 is applied,
    though the breadcrumb (7) is written at the end of the turn. So 5 is audit-only and the new
    wait (6) is open: closed whether changed code fails the instance (breadcrumbs read from
    history) or the same code, replayed cold, is cancelled (breadcrumbs from its slots)."""

    def old(ctx, _):
        yield ctx.race(ctx.schedule_wait("x"), ctx.schedule_timer(5))  # the timer wins: 2 dropped
        return (yield ctx.schedule_wait("x"))

    dep = rig.deploy(old)
    dep.client.start_orchestration("i", "O")
    dep.driver.run_until_idle()
    rig.clock.advance(10)  # the timer is due: it and the raise are fetched in one batch
    dep.client.raise_event("i", "x", "late")
    dep.driver.run_until_idle()
    before = [
        (1, "OrchestrationStarted", None, None),
        (2, "ExternalSubscribed", None, None),
        (3, "TimerCreated", None, None),
        (4, "TimerFired", 3, None),
        (5, "ExternalEvent", None, None),
        (6, "ExternalSubscribed", None, None),
        (7, "ExternalSubscribedCancelled", 2, "dropped_future"),
    ]
    assert events(dep) == before
    assert dep.client.get_status("i").status == "Running"  # waiting on 6: 5 reached no one
    if ending == "changed-code":
        end = rig.deploy(diverging)
        end.client.raise_event("i", "other", "-")
        trigger = (8, "ExternalEvent", None, None)
    else:
        end = rig.deploy(old, cache=False)
        end.client.cancel_instance("i", "bye")
        trigger = (8, "OrchestrationCancelRequested", None, "bye")
    end.run()
    assert end.result().status == "Failed"
    assert events(end) == [
        *before,
        trigger,
        (9, "ExternalSubscribedCancelled", 6, TERMINAL),
        (10, "OrchestrationFailed", None, None),
    ]


def three_subscriptions(ctx, _):
    """Open subscriptions of both kinds, interleaved: wait x (2), queue q (3), wait y (4)."""
    return (yield ctx.all([ctx.schedule_wait("x"), ctx.dequeue_event("q"), ctx.schedule_wait("y")]))


THREE = [
    (1, "OrchestrationStarted", None, None),
    (2, "ExternalSubscribed", None, None),
    (3, "QueueSubscribed", None, None),
    (4, "ExternalSubscribed", None, None),
    (5, "ExternalEvent", None, None),  # x: resolves 2
]


def test_history_breadcrumbs_follow_subscription_order_and_skip_resolved_and_dropped(rig):
    """With changed code, breadcrumbs come in subscription id order across both kinds (as the
    code's own slots give them: see the cancel test below), skipping the resolved wait (5, by 9)
    and a subscription that already has a breadcrumb (the dropped race loser 2, closed by 8)."""

    def old(ctx, _):
        yield ctx.race(ctx.dequeue_event("r"), ctx.schedule_timer(5))  # the timer wins: r dropped
        return (yield ctx.all([ctx.schedule_wait("x"), ctx.dequeue_event("q"), ctx.schedule_wait("y")]))

    dep = rig.deploy(old)
    dep.client.start_orchestration("i", "O")
    dep.run()
    dep.client.raise_event("i", "x", "for x")
    dep.run()
    before = [
        (1, "OrchestrationStarted", None, None),
        (2, "QueueSubscribed", None, None),
        (3, "TimerCreated", None, None),
        (4, "TimerFired", 3, None),
        (5, "ExternalSubscribed", None, None),
        (6, "QueueSubscribed", None, None),
        (7, "ExternalSubscribed", None, None),
        (8, "QueueSubscriptionCancelled", 2, "dropped_future"),
        (9, "ExternalEvent", None, None),
    ]
    assert events(dep) == before
    new = rig.deploy(diverging)
    new.client.enqueue_event("i", "other", "-")
    new.run()
    assert new.result().status == "Failed"
    assert events(new) == [
        *before,
        (10, "QueueEventDelivered", None, None),
        (11, "QueueSubscriptionCancelled", 6, TERMINAL),
        (12, "ExternalSubscribedCancelled", 7, TERMINAL),
        (13, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(new)


# ---------------------------------------------------------------------------------------------
# cancel
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["warm", "cold"])
def test_cancel_while_waiting_closes_the_code_s_open_subscriptions(rig, cache):
    """Unchanged (the code bound every subscription): a cancel while waiting closes the open
    ones (3, 4; not the resolved 2) in id order, between the cancel request and the terminal
    event - the same whether the turn resumes the cached engine (warm) or replays (cold)."""
    dep = rig.deploy(three_subscriptions, cache=cache)
    dep.client.start_orchestration("i", "O")
    dep.run()
    dep.client.raise_event("i", "x", "for x")
    dep.run()
    assert events(dep) == THREE
    dep.client.cancel_instance("i", "bye")
    dep.run()
    st = dep.result()
    assert (st.status, st.error) == ("Failed", "canceled: bye")
    assert events(dep) == [
        *THREE,
        (6, "OrchestrationCancelRequested", None, "bye"),
        (7, "QueueSubscriptionCancelled", 3, TERMINAL),
        (8, "ExternalSubscribedCancelled", 4, TERMINAL),
        (9, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(dep)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_with_changed_code_that_returns_early_closes_history_subscription(rig, kind):
    """A cancel finalized in a turn whose changed code returned before the walk reached the
    subscription: the turn ends Cancelled, and the subscription (never bound) is closed."""
    before = started_waiting(rig, kind)
    new = rig.deploy(returning_early)
    new.client.cancel_instance("i", "bye")
    new.run()
    st = new.result()
    assert (st.status, st.error) == ("Failed", "canceled: bye")
    assert events(new) == [
        *before,
        (5, "OrchestrationCancelRequested", None, "bye"),
        (6, CRUMB[kind], 4, TERMINAL),
        (7, "OrchestrationFailed", None, None),
    ]
    assert_history_is_sound(new)


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_with_diverging_code_fails_nondeterministic_and_closes_subscription(rig, kind):
    """A cancel in the turn where changed code diverges: the divergence decides (the code did not
    run to the end), and history's open subscription is closed all the same."""
    before = started_waiting(rig, kind)
    new = rig.deploy(diverging)
    new.client.cancel_instance("i", "bye")
    new.run()
    st = new.result()
    assert st.status == "Failed" and st.error.startswith("nondeterministic: ")
    assert events(new) == [
        *before,
        (5, "OrchestrationCancelRequested", None, "bye"),
        (6, CRUMB[kind], 4, TERMINAL),
        (7, "OrchestrationFailed", None, None),
    ]


# ---------------------------------------------------------------------------------------------
# continue-as-new
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["warm", "cold"])
def test_continue_as_new_writes_no_second_breadcrumb(rig, cache):
    """Continue-as-new (a pending continue-as-new means the code is still running, so the walk
    covers every event: no history-only subscription can reach this path). A race loser got its
    dropped-future breadcrumb (5) and gets no second one; the buffered queue message resolves the
    second dequeue (7 takes m2): no breadcrumb; m3 is carried forward. Warm and cold alike."""

    def loop(ctx, n):
        yield ctx.race(ctx.schedule_wait("x"), ctx.schedule_timer(5))  # the timer wins: x dropped
        a = yield ctx.dequeue_event("q")
        b = yield ctx.dequeue_event("q")
        if n:
            return [a, b]
        yield ctx.continue_as_new(1)

    dep = rig.deploy(loop, cache=cache)
    dep.client.start_orchestration("i", "O", 0)
    dep.run()
    for m in ("m1", "m2", "m3"):
        dep.client.enqueue_event("i", "q", m)
    dep.run()
    assert events(dep) == [
        (1, "OrchestrationStarted", None, None),
        (2, "ExternalSubscribed", None, None),
        (3, "TimerCreated", None, None),
        (4, "TimerFired", 3, None),
        (5, "QueueSubscribed", None, None),
        (6, "ExternalSubscribedCancelled", 2, "dropped_future"),
        (7, "QueueEventDelivered", None, None),
        (8, "QueueEventDelivered", None, None),
        (9, "QueueEventDelivered", None, None),
        (10, "QueueSubscribed", None, None),
        (11, "OrchestrationContinuedAsNew", None, None),
    ]
    assert_history_is_sound(dep)
    # The next execution starts with the carried message, which resolves its first dequeue.
    dep.client.enqueue_event("i", "q", "m4")
    dep.run()
    st = dep.result()
    assert (st.status, st.output) == ("Completed", ["m3", "m4"])
    assert [k for _, k, _, _ in events(dep, execution=2)][:2] == ["OrchestrationStarted", "QueueEventDelivered"]


@pytest.mark.parametrize("cache", [True, False], ids=["warm", "cold"])
def test_a_race_loser_dropped_in_the_cancelled_turn_is_closed_too(rig, cache):
    """The batch holds the race's winning event and a cancel: the code resolves the race (the
    other wait is dropped) before the turn ends Cancelled. A cancelled turn skips the
    dropped-future step (SPEC §3.8), so the loser used to stay open in history; it is closed
    with the terminal breadcrumbs (SPEC §3.9), once, in subscription order."""

    def racing(ctx, _):
        won = yield ctx.race(ctx.schedule_wait("a"), ctx.schedule_wait("b"))
        yield ctx.schedule_timer(60_000)
        return won

    dep = rig.deploy(racing, cache=cache)
    dep.client.start_orchestration("i", "O")
    dep.run()
    dep.client.raise_event("i", "b", "b wins")
    dep.client.cancel_instance("i", "stop")
    dep.run()
    st = dep.result()
    assert (st.status, st.error) == ("Failed", "canceled: stop")
    got = events(dep)
    assert got[:3] == [(1, "OrchestrationStarted", None, None), (2, "ExternalSubscribed", None, None),
                       (3, "ExternalSubscribed", None, None)]
    crumbs = [(kind, source, reason) for _, kind, source, reason in got if kind == "ExternalSubscribedCancelled"]
    assert crumbs == [("ExternalSubscribedCancelled", 2, TERMINAL)], got
    assert got[-1][1] == "OrchestrationFailed"
    assert_history_is_sound(dep)
