"""What an operator sees when nondeterministic or changed orchestration code meets real histories
in production - no CI replay in between (SPEC §3.4-§3.11, §10, §12, §14, §17; README).

Every test runs the real threaded Runtime on a SQLite file. Instances are left in flight
(waiting on an external event, a durable timer or an activity nobody serves yet), then the
"process restarts" (a new provider and runtime on the same file) with changed code: reordered
steps, a removed step, a new step before the waiting point, changed inputs, a changed helper,
a race turned into a join, code that now raises or returns early, a branch on the wall clock or
on `random`; also two runtimes on one file with the old and the new code (a rolling deploy),
the instance cache on and off, and the versioning escape hatch.

What must hold (SPEC §3.11, README, duroxide-python 0.2.2 where it was cheap to compare):
the instance fails in that turn with a Configuration/Nondeterminism failure whose text
(``nondeterministic: ...``) names the instance, the execution, the history event (id, kind,
name, input), what the code did and the source line of the code's side; it is not retried
into poison and not left Running; nothing the diverged turn emitted is dispatched and open
activities are cancelled; a parent hears of it and aborts with the same details; management
APIs show it; it is logged once naming the instance (the peer logs
``ERROR duroxide::runtime: Orchestration failed instance_id=... error_type=configuration``);
a warm cached engine never reports a false divergence; registering the old code under the old
version makes the same restart succeed.

Found by this file and fixed (each test failed before): a nondeterminism failure was not logged
(now one ERROR naming the instance); a race turned into a join was reported as a "cancellation
mismatch" without the event or source line; the diverged turn still dispatched the detached
start its wrong code asked for (our core contract: no work after a divergence; SPEC §3.9 and
the peer dispatch it). Found here, fixed later: SPEC §3.9's closing breadcrumbs for
subscriptions still open in history were not written when changed code ended the instance (the
peer writes them; now pinned in tests/runtime/test_closing_breadcrumbs.py).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, TagFilter
from tests.runtime._helpers import SqliteRig

POLL_MS = 2
HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _line(fn: Callable[..., Any], marker: str) -> int:
    lines, first = inspect.getsourcelines(fn)
    hits = [first + i for i, text in enumerate(lines) if f"# {marker}" in text]
    assert len(hits) == 1, (fn, marker, hits)
    return hits[0]


def _site(fn: Callable[..., Any], marker: str) -> str:
    return f"{HERE}:{_line(fn, marker)}"


def _wait_until(pred: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def _kinds(client: Client, inst: str, execution: int = 1) -> list[str]:
    return [e.kind for e in client.read_execution_history(inst, execution)]


def _has(client: Client, inst: str, kind: str, n: int = 1, execution: int = 1) -> bool:
    try:
        return _kinds(client, inst, execution).count(kind) >= n
    except Exception:  # noqa: BLE001 - not created yet
        return False


class Calls:
    """Thread-safe log of activity executions: (phase, name, input)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, str, Any]] = []
        self.phase = "old"

    def add(self, name: str, x: Any) -> None:
        with self.lock:
            self.items.append((self.phase, name, x))

    def names(self, phase: str) -> list[str]:
        with self.lock:
            return [n for p, n, _ in self.items if p == phase]


def _activities(rt: Runtime, calls: Calls) -> None:
    def act(name: str, fn: Callable[[Any], Any]) -> None:
        def run(ctx, x):
            calls.add(name, x)
            return fn(x)

        rt.register_activity(name, run)

    act("Reserve", lambda x: f"reserved:{x}")
    act("Charge", lambda x: f"charged:{x}")
    act("Audit", lambda x: "audited")
    act("Ship", lambda x: f"shipped:{x}")
    act("Ship2", lambda x: f"shipped2:{x}")
    act("Approve", lambda x: "approved")
    act("Slow", lambda x: "slow-done")
    act("Refund", lambda x: "refunded")
    act("Cleanup", lambda x: "cleaned")
    act("A", lambda x: f"a:{x}")
    act("B", lambda x: f"b:{x}")
    act("C", lambda x: f"c:{x}")


def _opts(cache: int = 1024, **kw: Any) -> RuntimeOptions:
    return RuntimeOptions(dispatcher_poll_interval_ms=POLL_MS, instance_cache_size=cache, **kw)


def _deploy(rig: SqliteRig, register: Callable[[Runtime], None], options: RuntimeOptions | None = None,
            **runtime_kw: Any) -> Runtime:
    """A new 'process': its own provider (connection) and runtime on the shared file."""
    rt = Runtime(rig.provider(), options or _opts(), **runtime_kw)
    rig.runtimes.append(rt)
    register(rt)
    rt.start()
    return rt


def _failed_event(client: Client, inst: str, execution: int = 1) -> dict[str, Any]:
    """The OrchestrationFailed event's decoded details; asserts it is the last terminal event
    and only activity breadcrumbs follow it (SPEC §3.1 step 9)."""
    hist = client.read_execution_history(inst, execution)
    kinds = [e.kind for e in hist]
    terminal = [i for i, k in enumerate(kinds) if k in ("OrchestrationCompleted", "OrchestrationFailed",
                                                          "OrchestrationContinuedAsNew")]
    assert terminal, kinds
    last = terminal[-1]
    assert kinds[last] == "OrchestrationFailed", kinds
    assert set(kinds[last + 1:]) <= {"ActivityCancelRequested"}, kinds
    return json.loads(hist[last].data)["details"]


def _assert_nondeterminism(client: Client, inst: str, *, execution: int = 1, event_id: int | None = None,
                           expected: str | None = None, actual: str | None = None,
                           site: str | None = None) -> str:
    """The operator's view of a nondeterminism failure: status, history, info, execution info."""
    st = client.get_status(inst)
    assert st.status == "Failed", (inst, st)
    err = st.error
    assert err.startswith("nondeterministic: "), (inst, err)
    assert f"(instance {inst!r}, execution {execution})" in err, err
    if event_id is not None:
        assert f"at event_id={event_id}" in err, err
    if expected is not None:
        assert f"history has {expected}" in err, err
    if actual is not None:
        assert f"code did {actual}" in err, err
    if site is not None:
        assert f"at {site}" in err, err
    details = _failed_event(client, inst, execution)
    assert details["type"] == "Configuration" and details["kind"] == "Nondeterminism", details
    assert "nondeterministic: " + details["message"] == err
    info = client.get_instance_info(inst)
    assert (info.status, info.output, info.current_execution_id) == ("Failed", err, execution), info
    ex = client.get_execution_info(inst, execution)
    assert (ex.status, ex.output) == ("Failed", err), ex
    assert ex.completed_at is not None
    return err


def _assert_settled(client: Client, insts: list[str], rts: list[Runtime], *, settle_s: float = 0.3) -> None:
    """No retry loop: nothing queued, nothing fetched again, statuses unchanged, no poison."""
    before = {i: (client.get_status(i).status, client.get_status(i).error, len(_kinds(client, i))) for i in insts}
    fetched = [rt.metrics_snapshot().orch_dispatcher_items_fetched for rt in rts]
    time.sleep(settle_s)
    depths = client.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0), depths
    after = {i: (client.get_status(i).status, client.get_status(i).error, len(_kinds(client, i))) for i in insts}
    assert after == before
    assert [rt.metrics_snapshot().orch_dispatcher_items_fetched for rt in rts] == fetched
    for rt in rts:
        m = rt.metrics_snapshot()
        assert (m.orch_poison, m.activity_poison) == (0, 0), m
    for i in insts:
        assert "poison" not in (client.get_status(i).error or "")


@pytest.fixture
def rig(tmp_path):
    r = SqliteRig(tmp_path / "app.db", make_options=_opts)
    yield r
    r.close()


# ---------------------------------------------------------------------------------------------
# 1. A restart with changed code under in-flight instances (event / timer / activity waits)
# ---------------------------------------------------------------------------------------------

TIMER_MS = 1_500


def _waiting_point(ctx, wait):
    if wait == "event":
        return ctx.wait_for_event("approve")
    if wait == "timer":
        return ctx.schedule_timer(TIMER_MS)
    return ctx.schedule_activity("Approve", None).with_tag("gpu")  # no worker serves "gpu" yet


def order_v1(ctx, inp):
    a = yield ctx.schedule_activity("Reserve", inp["x"])
    b = yield ctx.schedule_activity("Charge", a)
    yield _waiting_point(ctx, inp["wait"])
    return (yield ctx.schedule_activity("Ship", b))


def order_reordered(ctx, inp):
    b = yield ctx.schedule_activity("Charge", inp["x"])  # MARK reordered
    a = yield ctx.schedule_activity("Reserve", b)
    yield _waiting_point(ctx, inp["wait"])
    return (yield ctx.schedule_activity("Ship", a))


def order_removed_step(ctx, inp):
    a = yield ctx.schedule_activity("Reserve", inp["x"])
    yield _waiting_point(ctx, inp["wait"])  # MARK removed
    return (yield ctx.schedule_activity("Ship", a))


def order_inserted_step(ctx, inp):
    a = yield ctx.schedule_activity("Reserve", inp["x"])
    b = yield ctx.schedule_activity("Charge", a)
    yield ctx.schedule_activity("Audit", b)  # MARK inserted
    yield _waiting_point(ctx, inp["wait"])
    return (yield ctx.schedule_activity("Ship", b))


def order_changed_input(ctx, inp):
    a = yield ctx.schedule_activity("Reserve", inp["x"] * 10)  # MARK input
    b = yield ctx.schedule_activity("Charge", a)
    yield _waiting_point(ctx, inp["wait"])
    return (yield ctx.schedule_activity("Ship", b))


def _reserve_helper(ctx, x):
    return (yield ctx.schedule_activity("Reserve", {"qty": x}))  # MARK helper


def order_changed_helper(ctx, inp):
    a = yield from _reserve_helper(ctx, inp["x"])
    b = yield ctx.schedule_activity("Charge", a)
    yield _waiting_point(ctx, inp["wait"])
    return (yield ctx.schedule_activity("Ship", b))


_WAIT_EVENT = {"event": "ExternalSubscribed(name='approve')", "timer": "TimerCreated(fire_at_ms=",
               "activity": "ActivityScheduled(name='Approve', input='null', tag='gpu')"}
_WAIT_ACTION = {"event": "WaitExternal(name='approve')", "timer": "CreateTimer(fire_at_ms=",
                "activity": "CallActivity(name='Approve', input='null', tag='gpu')"}

# name -> (new code, event id, recorded event, the code's action, source line marker)
CHANGES: dict[str, tuple[Any, int, Any, Any, tuple[Any, str]]] = {
    "reordered": (order_reordered, 2, "ActivityScheduled(name='Reserve', input='1')",
                  "CallActivity(name='Charge', input='1')", (order_reordered, "MARK reordered")),
    "removed": (order_removed_step, 4, "ActivityScheduled(name='Charge', input='\"reserved:1\"')",
                "wait", (order_removed_step, "MARK removed")),
    "inserted": (order_inserted_step, 6, "wait",
                 "CallActivity(name='Audit', input='\"charged:reserved:1\"')", (order_inserted_step, "MARK inserted")),
    "input": (order_changed_input, 2, "ActivityScheduled(name='Reserve', input='1')",
              "CallActivity(name='Reserve', input='10')", (order_changed_input, "MARK input")),
    "helper": (order_changed_helper, 2, "ActivityScheduled(name='Reserve', input='1')",
               "CallActivity(name='Reserve', input='{\"qty\": 1}')", (_reserve_helper, "MARK helper")),
}


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
@pytest.mark.parametrize("wait", ["event", "timer", "activity"])
def test_restart_with_changed_code_fails_each_in_flight_instance_precisely(rig, wait, cache):
    calls = Calls()

    def old(rt):
        _activities(rt, calls)
        for name in CHANGES:
            rt.register_orchestration(f"Order-{name}", order_v1)

    def new(rt):
        _activities(rt, calls)
        for name, (fn, *_rest) in CHANGES.items():
            rt.register_orchestration(f"Order-{name}", fn)

    rt1 = _deploy(rig, old, _opts(cache))
    client = rig.client()
    for name in CHANGES:
        client.start_orchestration(f"o-{name}", f"Order-{name}", {"x": 1, "wait": wait})
    wait_kind = {"event": "ExternalSubscribed", "timer": "TimerCreated", "activity": "ActivityScheduled"}[wait]
    need = 3 if wait == "activity" else 1
    _wait_until(lambda: all(_has(client, f"o-{n}", wait_kind, need) for n in CHANGES), 15, "all instances waiting")
    rt1.shutdown(2_000)
    for name in CHANGES:
        assert client.get_status(f"o-{name}").status == "Running"
        assert "TimerFired" not in _kinds(client, f"o-{name}"), "the timer fired before the restart (slow machine)"
    assert sorted(calls.names("old")) == sorted(["Reserve", "Charge"] * len(CHANGES))

    calls.phase = "new"
    opts = _opts(cache, worker_tag_filter=TagFilter.default_and(["gpu"])) if wait == "activity" else _opts(cache)
    rt2 = _deploy(rig, new, opts)
    if wait == "event":
        for name in CHANGES:
            client.raise_event(f"o-{name}", "approve", None)
    for name in CHANGES:
        st = client.wait_for_orchestration(f"o-{name}", 15_000)
        assert st.status == "Failed", (name, st)

    for name, (_fn, event_id, expected, actual, (site_fn, marker)) in CHANGES.items():
        expected = _WAIT_EVENT[wait] if expected == "wait" else expected
        actual = _WAIT_ACTION[wait] if actual == "wait" else actual
        err = _assert_nondeterminism(client, f"o-{name}", event_id=event_id, site=_site(site_fn, marker))
        assert f"history has {expected}" in err, (name, err)
        assert f"code did {actual}" in err, (name, err)
    # (the counters are bumped just after the commit the client saw: wait for them, bounded)
    m = _wait_until(lambda: (lambda m: m if m.orch_failures >= len(CHANGES) else None)(rt2.metrics_snapshot()), 5, "metrics")
    assert (m.orch_configuration_errors, m.orch_failures, m.orch_poison) == (len(CHANGES), len(CHANGES), 0), m
    # Only the waiting point's own (old, legitimately dispatched) activity ran after the restart.
    assert calls.names("new") == (["Approve"] * len(CHANGES) if wait == "activity" else [])
    assert sorted(client.list_instances_by_status("Failed")) == sorted(f"o-{n}" for n in CHANGES)
    _assert_settled(client, [f"o-{n}" for n in CHANGES], [rt2])
    # Anything sent to a failed instance later is discarded: nothing more happens.
    fetched = rt2.metrics_snapshot().orch_dispatcher_items_fetched
    for name in CHANGES:
        client.raise_event(f"o-{name}", "approve", "again")
    _wait_until(lambda: client.get_queue_depths().orchestrator_queue == 0, 10, "the late events discarded")
    _assert_settled(client, [f"o-{n}" for n in CHANGES], [rt2])
    assert rt2.metrics_snapshot().orch_dispatcher_items_fetched - fetched <= len(CHANGES)  # once each, not retried
    assert all(_kinds(client, f"o-{n}")[-1] in ("OrchestrationFailed", "ActivityCancelRequested") for n in CHANGES)
    assert calls.names("new") == (["Approve"] * len(CHANGES) if wait == "activity" else [])


# ---------------------------------------------------------------------------------------------
# 2. Nothing from the diverged turn runs; open activities are cancelled; early return; raise
# ---------------------------------------------------------------------------------------------


def pending_v1(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    r = yield ctx.all([ctx.schedule_activity("Slow", a).with_tag("gpu"), ctx.wait_for_event("go")])
    return r


def pending_diverged(ctx, x):
    a = yield ctx.schedule_activity("B", x)  # MARK pending-diverged
    r = yield ctx.all([ctx.schedule_activity("Slow", a).with_tag("gpu"), ctx.wait_for_event("go")])
    yield ctx.schedule_activity("Refund", r)
    return r


def pending_diverged_with_finally(ctx, x):
    try:
        a = yield ctx.schedule_activity("A", x)
        yield ctx.schedule_activity("Audit", a)  # MARK pending-finally
        return (yield ctx.wait_for_event("go"))
    finally:
        yield ctx.schedule_activity("Cleanup", x)  # a dropped engine's finally must not dispatch this


def pending_early_return(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    return f"early:{a}"  # MARK early


def pending_raises(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    limits = {"old_key": 1}
    return limits["new_key"] + len(a)  # MARK raises


PENDING = {
    "diverged": pending_diverged,
    "finally": pending_diverged_with_finally,
    "early": pending_early_return,
    "raises": pending_raises,
}


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_no_work_from_a_changed_turn_is_dispatched_and_open_activities_are_cancelled(rig, cache):
    """SPEC §3.9/§3.1 step 9: a Failed/Completed turn dispatches none of its activities, and
    every activity still open in history gets ActivityCancelRequested and loses its worker row.
    An early return completes (SPEC §3.4 step 2, as duroxide-python 0.2.2: Completed 'early');
    an exception raised while replaying fails the instance as an application error (traceback,
    as the peer) - neither is nondeterminism, neither is retried."""
    calls = Calls()

    def old(rt):
        _activities(rt, calls)
        for name in PENDING:
            rt.register_orchestration(f"P-{name}", pending_v1)

    def new(rt):
        _activities(rt, calls)
        for name, fn in PENDING.items():
            rt.register_orchestration(f"P-{name}", fn)

    rt1 = _deploy(rig, old, _opts(cache))
    client = rig.client()
    for name in PENDING:
        client.start_orchestration(f"p-{name}", f"P-{name}", 1)
    _wait_until(lambda: all(_has(client, f"p-{n}", "ExternalSubscribed") for n in PENDING), 15, "waiting")
    rt1.shutdown(2_000)
    assert client.get_queue_depths().worker_queue == len(PENDING)  # the "gpu" Slow rows, unserved

    calls.phase = "new"
    rt2 = _deploy(rig, new, _opts(cache))  # default-only worker: Slow is still not served
    for name in PENDING:
        client.raise_event(f"p-{name}", "go", "payload")
    results = {n: client.wait_for_orchestration(f"p-{n}", 15_000) for n in PENDING}

    _assert_nondeterminism(client, "p-diverged", event_id=2, expected="ActivityScheduled(name='A', input='1')",
                           actual="CallActivity(name='B', input='1')", site=_site(pending_diverged, "MARK pending-diverged"))
    _assert_nondeterminism(client, "p-finally", event_id=4, expected="ActivityScheduled(name='Slow', input='\"a:1\"', tag='gpu')",
                           actual="CallActivity(name='Audit', input='\"a:1\"')",
                           site=_site(pending_diverged_with_finally, "MARK pending-finally"))
    assert (results["early"].status, results["early"].output) == ("Completed", "early:a:1"), results["early"]
    assert results["raises"].status == "Failed"
    err = results["raises"].error
    assert err.startswith("Traceback (most recent call last):") and err.rstrip().endswith("KeyError: 'new_key'"), err
    assert f'File "{HERE}", line {_line(pending_raises, "MARK raises")}' in err, err
    raised = _failed_event(client, "p-raises")
    assert (raised["type"], raised["kind"]) == ("Application", "OrchestrationFailed"), raised

    for name in PENDING:
        kinds = _kinds(client, f"p-{name}")
        end = "OrchestrationCompleted" if name == "early" else "OrchestrationFailed"
        # the open Slow (scheduled by the old code) is cancelled after the terminal event
        assert kinds[-2:] == [end, "ActivityCancelRequested"], (name, kinds)
    # (orch_completions counts every execution that ended, failed ones too: all four)
    m = _wait_until(lambda: (lambda m: m if m.orch_completions >= 4 else None)(rt2.metrics_snapshot()), 5, "metrics")
    assert (m.orch_configuration_errors, m.orch_application_errors, m.orch_failures, m.orch_completions) == (2, 1, 3, 4), m
    _assert_settled(client, [f"p-{n}" for n in PENDING], [rt2])

    # A worker that serves "gpu" comes up later: the cancelled Slow rows are gone.
    calls.phase = "late"
    rt3 = _deploy(rig, new, _opts(cache, worker_tag_filter=TagFilter.default_and(["gpu"])))
    time.sleep(0.4)
    assert calls.names("new") == [] and calls.names("late") == [], calls.items
    _assert_settled(client, [f"p-{n}" for n in PENDING], [rt2, rt3])


def race_v1(ctx, _):
    yield ctx.schedule_activity("A", 0)
    wait, timer = ctx.wait_for_event("approve"), ctx.schedule_timer(400)
    yield ctx.race(wait, timer)
    yield ctx.wait_for_event("again")
    yield ctx.start_orchestration("Notify", "r-notify", None)
    return (yield ctx.schedule_activity("Refund", 1))


def race_to_all(ctx, _):
    yield ctx.schedule_activity("A", 0)
    wait, timer = ctx.wait_for_event("approve"), ctx.schedule_timer(400)
    yield ctx.all([wait, timer])  # MARK all
    yield ctx.wait_for_event("again")
    yield ctx.start_orchestration("Notify", "r-notify", None)
    return (yield ctx.schedule_activity("Refund", 1))


def notify(ctx, _):
    return (yield ctx.schedule_activity("Audit", "notify"))


def _race_changed_to_all(rig: SqliteRig, cache: int) -> tuple[Client, Calls, Runtime]:
    """A race whose loser (the 'approve' wait, event 4) was dropped - the late 'approve' arrives
    in the timer's batch, after it - then a deploy that joins the two instead: SPEC §3.10
    reports a cancellation mismatch when 'again' arrives. The diverged turn's code goes on to a
    detached start (Notify) and an activity (Refund)."""
    calls = Calls()

    def reg(fn):
        def r(rt):
            _activities(rt, calls)
            rt.register_orchestration("R", fn)
            rt.register_orchestration("Notify", notify)
        return r

    rt = _deploy(rig, reg(race_v1), _opts(cache))
    client = rig.client()
    client.start_orchestration("r", "R", None)
    _wait_until(lambda: _has(client, "r", "TimerCreated"), 10, "the race")
    rt.shutdown(2_000)
    time.sleep(0.5)  # the timer is due; the late 'approve' is queued behind it: one batch
    client.raise_event("r", "approve", "late")
    rt = _deploy(rig, reg(race_v1), _opts(cache))
    _wait_until(lambda: _has(client, "r", "ExternalSubscribedCancelled"), 10, "the dropped wait's breadcrumb")
    rt.shutdown(2_000)
    assert _kinds(client, "r")[5:7] == ["TimerFired", "ExternalEvent"], _kinds(client, "r")

    calls.phase = "new"
    rt = _deploy(rig, reg(race_to_all), _opts(cache))
    client.raise_event("r", "again", None)
    assert client.wait_for_orchestration("r", 10_000).status == "Failed"
    time.sleep(0.3)
    return client, calls, rt


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_race_changed_to_all_is_reported_with_its_source_line(rig, cache):
    """Like every divergence (core/nondeterminism.py: 'the recorded event (kind, name, input)
    with its id, what the code did, the source line of its yield/await'; README: `replay` 'names
    for every divergence what differs and the source line of the code's side'), the operator
    needs the line of the code that no longer drops the wait and which wait it was."""
    client, _calls, _rt = _race_changed_to_all(rig, cache)
    err = _assert_nondeterminism(client, "r")
    assert "cancellation mismatch (external waits)" in err, err
    assert f"at {_site(race_to_all, 'MARK all')}" in err, err  # the code's side: the join that drops nothing
    assert "ExternalSubscribed(name='approve') at event_id=4" in err, err  # the recorded subscription


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_race_changed_to_all_dispatches_nothing_from_the_diverged_turn(rig, cache):
    """No work after a divergence (the brief; the project's own core contract for a
    nondeterminism turn - tests/core/test_replay_matching.py `_nd`: no worker and no
    orchestrator items): neither the turn's activity (Refund) nor its detached start (Notify,
    whose own activity is Audit) may run. (duroxide-python 0.2.2 does start Notify here, as
    SPEC §3.9's 'Completed/Failed: only pending detached starts are dispatched' reads.)"""
    client, calls, rt = _race_changed_to_all(rig, cache)
    assert client.get_status("r-notify").status == "NotFound", client.get_status("r-notify")
    assert calls.names("new") == [], calls.items
    _assert_settled(client, ["r"], [rt])


def join_v1(ctx, x):
    a, b = yield ctx.all([ctx.schedule_activity("A", x), ctx.schedule_activity("B", x)])
    yield ctx.wait_for_event("go")
    return [a, b]


def join_serialized(ctx, x):
    a = yield ctx.schedule_activity("A", x)  # MARK serialized
    b = yield ctx.schedule_activity("B", x)
    yield ctx.wait_for_event("go")
    return [a, b]


def test_a_join_made_sequential_is_reported_where_the_code_waits(rig):
    """The recorded B (event 3) was scheduled together with A; the new code waits for A first
    and emits nothing there: `history schedule but no emitted action` at event 3, naming the
    line where the code waits."""
    calls = Calls()

    def reg(fn):
        def r(rt):
            _activities(rt, calls)
            rt.register_orchestration("J", fn)
        return r

    rt = _deploy(rig, reg(join_v1))
    client = rig.client()
    client.start_orchestration("j", "J", 1)
    _wait_until(lambda: _has(client, "j", "ExternalSubscribed"), 10, "waiting")
    rt.shutdown(2_000)
    rt = _deploy(rig, reg(join_serialized))
    client.raise_event("j", "go", None)
    assert client.wait_for_orchestration("j", 10_000).status == "Failed"
    err = _assert_nondeterminism(client, "j", event_id=3, expected="ActivityScheduled(name='B', input='1')",
                                 site=_site(join_serialized, "MARK serialized"))
    assert err.startswith("nondeterministic: history schedule but no emitted action"), err
    _assert_settled(client, ["j"], [rt])


def subs_v1(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.all([ctx.wait_for_event("go"), ctx.dequeue_event("inbox"), ctx.wait_for_event("other")])
    return a


def subs_diverged(ctx, x):
    a = yield ctx.schedule_activity("B", x)
    yield ctx.all([ctx.wait_for_event("go"), ctx.dequeue_event("inbox"), ctx.wait_for_event("other")])
    return a


def subs_early(ctx, x):
    yield ctx.schedule_activity("A", x)
    return "early"


def subs_raises(ctx, x):
    yield ctx.schedule_activity("A", x)
    raise ValueError("boom")


SUBS = {"diverged": subs_diverged, "early": subs_early, "raises": subs_raises}


def reminder_v1(ctx, x):
    yield ctx.schedule_activity("A", x)
    yield ctx.schedule_timer(1_200)
    return (yield ctx.schedule_activity("B", x))


def reminder_shorter(ctx, x):
    yield ctx.schedule_activity("A", x)
    yield ctx.schedule_timer(10)  # shortened: the recorded fire time stands (SPEC §3.5, §5)
    return (yield ctx.schedule_activity("B", x))


def test_a_changed_timer_duration_is_not_a_divergence_and_the_recorded_fire_time_stands(rig):
    calls = Calls()

    def reg(fn):
        def r(rt):
            _activities(rt, calls)
            rt.register_orchestration("Rem", fn)
        return r

    rt = _deploy(rig, reg(reminder_v1))
    client = rig.client()
    client.start_orchestration("rem", "Rem", 1)
    _wait_until(lambda: _has(client, "rem", "TimerCreated"), 10, "the timer")
    rt.shutdown(2_000)
    fire_at = json.loads(next(e for e in client.read_execution_history("rem", 1) if e.kind == "TimerCreated").data)["fireAtMs"]
    rt = _deploy(rig, reg(reminder_shorter))
    st = client.wait_for_orchestration("rem", 10_000)
    assert (st.status, st.output) == ("Completed", "b:1"), st
    fired = next(e for e in client.read_execution_history("rem", 1) if e.kind == "TimerFired")
    assert fired.timestamp_ms >= fire_at
    assert rt.metrics_snapshot().orch_configuration_errors == 0


# ---------------------------------------------------------------------------------------------
# 3. Trees, executions, logs
# ---------------------------------------------------------------------------------------------


def tree_parent(ctx, x):
    try:
        r = yield ctx.schedule_sub_orchestration("Kid", x)
    except Exception as exc:  # noqa: BLE001 - a configuration failure must not reach user code
        return f"caught: {exc}"
    return r


def kid_v1(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    return a


def kid_v2(ctx, x):
    a = yield ctx.schedule_activity("A", x + 1)  # MARK kid
    yield ctx.wait_for_event("go")
    return a


def can_v1(ctx, x):
    if x == 0:
        return (yield ctx.continue_as_new(1))
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    return a


def can_v2(ctx, x):
    if x == 0:
        return (yield ctx.continue_as_new(1))
    a = yield ctx.schedule_activity("C", x)  # MARK can
    yield ctx.wait_for_event("go")
    return a


def test_diverged_child_fails_its_parent_and_execution_is_named(rig):
    """SPEC §3.11 / §7: a parent receiving a nondeterminism failure via SubOrchFailed aborts with
    the same details (its try/except never sees it). After a continue-as-new the message and the
    management API name execution 2."""
    calls = Calls()

    def reg(kid, can):
        def r(rt):
            _activities(rt, calls)
            rt.register_orchestration("Parent", tree_parent)
            rt.register_orchestration("Kid", kid)
            rt.register_orchestration("Can", can)
        return r

    rt = _deploy(rig, reg(kid_v1, can_v1))
    client = rig.client()
    client.start_orchestration("tree", "Parent", 1)
    client.start_orchestration("can", "Can", 0)
    _wait_until(lambda: _has(client, "tree::sub::2", "ExternalSubscribed") and _has(client, "can", "ExternalSubscribed", execution=2),
                15, "child and execution 2 waiting")
    rt.shutdown(2_000)
    rt = _deploy(rig, reg(kid_v2, can_v2))
    client.raise_event("tree::sub::2", "go", None)
    client.raise_event("can", "go", None)
    kid = client.wait_for_orchestration("tree::sub::2", 10_000)
    parent = client.wait_for_orchestration("tree", 10_000)
    can = client.wait_for_orchestration("can", 10_000)

    kid_err = _assert_nondeterminism(client, "tree::sub::2", event_id=2, expected="ActivityScheduled(name='A', input='1')",
                                     actual="CallActivity(name='A', input='2')", site=_site(kid_v2, "MARK kid"))
    assert kid.error == kid_err
    assert parent.status == "Failed" and parent.error == kid_err, parent
    details = _failed_event(client, "tree")
    assert details["type"] == "Configuration" and "nondeterministic: " + details["message"] == kid_err
    assert "SubOrchestrationFailed" in _kinds(client, "tree")
    assert client.get_instance_info("tree").status == "Failed"

    assert can.status == "Failed"
    _assert_nondeterminism(client, "can", execution=2, event_id=2, expected="ActivityScheduled(name='A', input='1')",
                           actual="CallActivity(name='C', input='1')", site=_site(can_v2, "MARK can"))
    assert client.list_executions("can") == [1, 2]
    assert client.get_execution_info("can", 1).status == "ContinuedAsNew"
    _assert_settled(client, ["tree", "tree::sub::2", "can"], [rt])


def test_nondeterminism_failure_is_logged_once_naming_the_instance(rig, caplog):
    """duroxide-python 0.2.2 logs every such failure once, at ERROR: `Orchestration failed
    instance_id=i1 execution_id=1 orchestration_name=F ... error_type=configuration error=
    "nondeterministic: ..."` (and an application failure at WARN). An operator without CI
    replay learns of a bad deploy from the logs."""
    calls = Calls()
    caplog.set_level(logging.DEBUG)

    def reg(fn):
        def r(rt):
            _activities(rt, calls)
            rt.register_orchestration("Order", fn)
        return r

    rt = _deploy(rig, reg(order_v1))
    client = rig.client()
    client.start_orchestration("logged-1", "Order", {"x": 1, "wait": "event"})
    _wait_until(lambda: _has(client, "logged-1", "ExternalSubscribed"), 10, "waiting")
    rt.shutdown(2_000)
    caplog.clear()
    rt = _deploy(rig, reg(order_reordered))
    client.raise_event("logged-1", "approve", None)
    st = client.wait_for_orchestration("logged-1", 10_000)
    assert st.status == "Failed" and st.error.startswith("nondeterministic: ")
    time.sleep(0.2)
    rt.shutdown(2_000)
    mentions = [r for r in caplog.records if r.levelno >= logging.WARNING and "logged-1" in r.getMessage()
                and "nondetermin" in r.getMessage()]
    assert len(mentions) == 1, (
        "expected exactly one WARNING/ERROR record naming the instance and the nondeterminism; got "
        f"{[(r.levelname, r.name, r.getMessage()) for r in caplog.records]}")


# ---------------------------------------------------------------------------------------------
# 4. Code that is nondeterministic by itself: wall clock and random
# ---------------------------------------------------------------------------------------------


def wall_clock_branch(ctx, deadline):
    a = yield ctx.schedule_activity("A", 1)
    if time.time() < deadline:  # nondeterministic on purpose: the wall clock in orchestration code
        b = yield ctx.schedule_activity("B", a)  # MARK clock-early
    else:
        b = yield ctx.schedule_activity("C", a)  # MARK clock-late
    yield ctx.wait_for_event("go")
    return b


@pytest.mark.parametrize("restart", [False, True], ids=["same-process", "restart"])
@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_wall_clock_branch_meets_its_history(rig, cache, restart):
    """The branch taken live (before the deadline) is in history; a replay after the deadline
    takes the other branch. A replay (no cache, or a new process) reports it precisely; a warm
    cached engine resumes the live generator and never re-runs the branch (README: 'A turn
    resumes the live orchestration')."""
    calls = Calls()

    def reg(rt):
        _activities(rt, calls)
        rt.register_orchestration("Clock", wall_clock_branch)

    rt = _deploy(rig, reg, _opts(cache))
    client = rig.client()
    deadline = time.time() + 1.0
    client.start_orchestration("clock", "Clock", deadline)
    _wait_until(lambda: _has(client, "clock", "ExternalSubscribed"), 10, "waiting")
    assert time.time() < deadline, "the first turns took longer than the deadline (slow machine)"
    if restart:
        rt.shutdown(2_000)
        rt = _deploy(rig, reg, _opts(cache))
    time.sleep(max(0.0, deadline - time.time()) + 0.05)
    client.raise_event("clock", "go", None)
    st = client.wait_for_orchestration("clock", 10_000)
    if cache and not restart:
        assert (st.status, st.output) == ("Completed", "b:a:1"), st
    else:
        _assert_nondeterminism(client, "clock", event_id=4, expected="ActivityScheduled(name='B', input='\"a:1\"')",
                               actual="CallActivity(name='C', input='\"a:1\"')", site=_site(wall_clock_branch, "MARK clock-late"))
    assert calls.names("old") == ["A", "B"]
    _assert_settled(client, ["clock"], [rt])


_RNG = random.Random()
_DRAWS: list[float] = []


def random_branch(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    d = _RNG.random()  # nondeterministic on purpose
    _DRAWS.append(d)
    if d < 0.5:
        b = yield ctx.schedule_activity("B", a)  # MARK rnd-low
    else:
        b = yield ctx.schedule_activity("C", a)  # MARK rnd-high
    c = yield ctx.schedule_activity("A", b)
    return c


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_random_branch_within_one_process(rig, cache):
    """random.Random(3) draws 0.238 then 0.544: the first run takes B, a replay takes C. Without
    the cache every turn replays (SPEC §1 'the orchestration function reruns from the start
    each turn'; duroxide-python 0.2.2 fails this exact workflow with `nondeterministic: schedule
    mismatch`): the instance fails in the next turn, at the line of C. With the cache the live
    generator is resumed and the code runs once (README)."""
    _RNG.seed(3)
    _DRAWS.clear()
    calls = Calls()

    def reg(rt):
        _activities(rt, calls)
        rt.register_orchestration("Rnd", random_branch)

    rt = _deploy(rig, reg, _opts(cache))
    client = rig.client()
    client.start_orchestration("rnd", "Rnd", 1)
    st = client.wait_for_orchestration("rnd", 10_000)
    if cache:
        assert (st.status, st.output) == ("Completed", "a:b:a:1"), st
        assert len(_DRAWS) == 1
    else:
        _assert_nondeterminism(client, "rnd", event_id=4, expected="ActivityScheduled(name='B', input='\"a:1\"')",
                               actual="CallActivity(name='C', input='\"a:1\"')", site=_site(random_branch, "MARK rnd-high"))
        assert len(_DRAWS) == 2
        assert calls.names("old") == ["A", "B"]  # nothing after the divergence
    _assert_settled(client, ["rnd"], [rt])


# ---------------------------------------------------------------------------------------------
# 5. Rolling deploy: two runtimes on one file, the old code and the new
# ---------------------------------------------------------------------------------------------


def chain_old(ctx, n):
    x = 0
    for _ in range(n):
        x = yield ctx.schedule_activity("inc", x)  # MARK chain-old
    return x


def chain_new(ctx, n):
    x = 0
    for i in range(n):
        name = "inc" if i < 3 else "inc2"
        x = yield ctx.schedule_activity(name, x)
    return x


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_rolling_deploy_old_parked_engine_meets_new_code_history(rig, cache):
    """Turns alternate between the old and the new deployment. The new code wrote step 3 as
    'inc2'; the old runtime's parked engine (or its replay, without the cache) must catch that
    up as a divergence naming event 8 and the old code's line - in that turn, committed."""
    rts = []
    for fn in (chain_old, chain_new):
        rt = Runtime(rig.provider(), _opts(cache))
        rt.register_activity("inc", lambda ctx, x: x + 1)
        rt.register_activity("inc2", lambda ctx, x: x + 10)
        rt.register_orchestration("Chain", fn)
        rts.append(rt)
    client = rig.client()
    client.start_orchestration("chain", "Chain", 6)
    turns, kinds = 0, []
    while not client.get_status("chain").is_terminal:
        assert turns < 12, kinds
        rt = rts[turns % 2]
        item = rt.orchestration_dispatcher.fetch()
        assert item is not None, f"nothing to fetch after {turns} turns: {kinds}"
        result = rt.orchestration_dispatcher.process(item)
        assert result is not None, "the turn was not committed"
        kinds.append(result.kind)
        turns += 1
        while (lease := rt.worker_dispatcher.fetch()) is not None:
            assert rt.worker_dispatcher.commit(lease, rt.worker_dispatcher.execute(lease))
    assert kinds == ["continue"] * 4 + ["failed"], kinds
    if cache:
        assert rts[0].orchestration_dispatcher.cache.catchups >= 1
    _assert_nondeterminism(client, "chain", event_id=8, expected="ActivityScheduled(name='inc2', input='3')",
                           actual="CallActivity(name='inc', input='3')", site=_site(chain_old, "MARK chain-old"))
    assert rts[0].metrics_snapshot().orch_configuration_errors == 1  # (stepped by hand: recorded before process returns)
    assert client.get_queue_depths().orchestrator_queue == 0
    assert all(rt.orchestration_dispatcher.fetch() is None for rt in rts)


def deploy_old(ctx, x):
    a = yield ctx.schedule_activity("Reserve", x)
    yield ctx.wait_for_event("approve")
    b = yield ctx.schedule_activity("Ship", a)  # MARK deploy-old
    return b


def deploy_new(ctx, x):
    a = yield ctx.schedule_activity("Reserve", x)
    yield ctx.wait_for_event("approve")
    b = yield ctx.schedule_activity("Ship2", a)  # MARK deploy-new
    c = yield ctx.schedule_activity("Audit", b)
    return b + c


def test_rolling_deploy_threads_every_instance_ends_without_poison(rig, caplog):
    """Both deployments running: whichever takes a turn, every instance ends - Completed by one
    code or Failed as nondeterministic - within the bound; none poisoned or left Running, no
    dispatcher crash, no activity of a failed instance left queued."""
    caplog.set_level(logging.WARNING)
    calls = Calls()

    def reg(fn):
        def r(rt):
            _activities(rt, calls)
            rt.register_orchestration("Deploy", fn)
        return r

    n = 12
    rt_old = _deploy(rig, reg(deploy_old))
    client = rig.client()
    for i in range(n):
        client.start_orchestration(f"d-{i}", "Deploy", i)
    _wait_until(lambda: all(_has(client, f"d-{i}", "ExternalSubscribed") for i in range(n)), 15, "waiting")
    rt_new = _deploy(rig, reg(deploy_new))
    for i in range(n):
        client.raise_event(f"d-{i}", "approve", None)
    outcomes = {}
    for i in range(n):
        st = client.wait_for_orchestration(f"d-{i}", 20_000)
        outcomes[f"d-{i}"] = st
        if st.status == "Completed":
            assert st.output in (f"shipped:reserved:{i}", f"shipped2:reserved:{i}audited"), st
        else:
            err = _assert_nondeterminism(client, f"d-{i}", event_id=6)
            old_line, new_line = _site(deploy_old, "MARK deploy-old"), _site(deploy_new, "MARK deploy-new")
            assert (f"history has ActivityScheduled(name='Ship', input='\"reserved:{i}\"')" in err
                    and f"code did CallActivity(name='Ship2', input='\"reserved:{i}\"'), at {new_line}" in err) or (
                    f"history has ActivityScheduled(name='Ship2', input='\"reserved:{i}\"')" in err
                    and f"code did CallActivity(name='Ship', input='\"reserved:{i}\"'), at {old_line}" in err), err
    _assert_settled(client, list(outcomes), [rt_old, rt_new])
    bad = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and "database is locked" not in r.getMessage()
           and ("crash" in r.getMessage() or "poison" in r.getMessage() or r.levelno >= logging.ERROR)
           and "nondetermin" not in r.getMessage()]
    assert bad == []


# ---------------------------------------------------------------------------------------------
# 6. A warm cached engine never reports a false divergence on long histories
# ---------------------------------------------------------------------------------------------


def busy(ctx, inp):
    total = inp.get("carry", 0)
    for i in range(inp["n"]):
        k = i % 8
        if k == 0:
            total += yield ctx.schedule_activity("Inc", i)
        elif k == 1:  # the activity wins; the 60 s timer is dropped (it gets no breadcrumb)
            r = yield ctx.race(ctx.schedule_activity("Inc", i), ctx.schedule_timer(60_000))
            total += r["value"] if r["index"] == 0 else 1000
        elif k == 2:  # the zero timer wins; the wait is dropped (breadcrumb)
            r = yield ctx.race(ctx.wait_for_event("never"), ctx.schedule_timer(0))
            total += r["index"]
        elif k == 3:
            rs = yield ctx.all([ctx.schedule_activity("Inc", i), ctx.schedule_activity("Inc", -i), ctx.schedule_timer(0)])
            total += sum(e.get("ok") or 0 for e in rs)
        elif k == 4:
            now = yield ctx.utc_now()
            ctx.set_kv_value(f"k{i % 3}", str(i))
            pruned = ctx.prune_kv_values_updated_before(now - 1)
            ctx.set_custom_status(f"{i}:{pruned}:{ctx.get_kv_length()}")
            total += yield ctx.schedule_activity("Inc", pruned)
        elif k == 5:
            yield ctx.schedule_activity("Poke", ctx.instance_id)
            total += yield ctx.dequeue_event("inbox")
        elif k == 6:
            total += yield ctx.schedule_sub_orchestration("Leaf", i)
        else:
            g = yield ctx.new_guid()
            total += len(g) - 36
    if inp["rounds"] > 1:
        return (yield ctx.continue_as_new({"n": inp["n"], "rounds": inp["rounds"] - 1, "carry": total}))
    return total


def leaf(ctx, i):
    return (yield ctx.schedule_activity("Inc", i))


def _register_busy(rt: Runtime) -> None:
    rt.register_activity("Inc", lambda ctx, x: x + 1)

    def poke(ctx, inst):
        ctx.get_client().enqueue_event(inst, "inbox", 1)
        return None

    rt.register_activity("Poke", poke)
    rt.register_orchestration("Busy", busy)
    rt.register_orchestration("Leaf", leaf)


@pytest.mark.parametrize("cache, runtimes", [(1024, 1), (1, 1), (1024, 2)], ids=["warm", "evicting", "two-runtimes"])
def test_long_histories_with_many_turns_never_diverge_falsely(rig, caplog, cache, runtimes):
    """Same process, code unchanged: hundreds of turns per execution (races dropping waits and
    timers, joins, KV prune, custom status, queues, children, guids, continue-as-new). With
    the cache warm (verify_cache re-runs every third warm turn from scratch and raises on any
    difference) or a one-engine cache evicting on every turn, every instance completes, nothing
    is logged as a divergence or crash, and the recorded histories replay cleanly."""
    from duroxide_sim.testing.replay import replay_source

    caplog.set_level(logging.WARNING)
    rts = [_deploy(rig, _register_busy, _opts(cache, orchestration_concurrency=2, worker_concurrency=2),
                   verify_cache=cache > 1) for _ in range(runtimes)]
    client = rig.client()
    n, rounds, insts = 120, 2, ["busy-0", "busy-1", "busy-2"]
    for inst in insts:
        client.start_orchestration(inst, "Busy", {"n": n, "rounds": rounds})
    results = [client.wait_for_orchestration(inst, 45_000) for inst in insts]
    for rt in rts:
        rt.shutdown(2_000)
    for inst, st in zip(insts, results, strict=True):
        assert st.status == "Completed", (inst, st)
        assert isinstance(st.output, int)
        assert len(client.read_execution_history(inst, rounds)) > 250
    for rt in rts:
        m = rt.metrics_snapshot()
        assert (m.orch_configuration_errors, m.orch_failures, m.orch_poison) == (0, 0, 0), m
    caches = [rt.orchestration_dispatcher.cache for rt in rts]
    if cache > 1:
        assert sum(c.hits for c in caches) > 300, [(c.hits, c.misses) for c in caches]  # warm turns really ran
    else:
        assert sum(c.misses for c in caches) > 100, [(c.hits, c.misses) for c in caches]  # evicted: replayed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or "diverg" in r.getMessage()]
    assert errors == []
    assert replay_source(str(rig.path), _register_busy, sandbox=False) == []


# ---------------------------------------------------------------------------------------------
# 7. The versioning escape hatch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [1024, 0], ids=["cache", "nocache"])
def test_registering_the_old_code_under_its_version_makes_the_restart_succeed(rig, cache):
    """SPEC §12: the in-flight instance is pinned to 1.0.0 (its OrchestrationStarted) and keeps
    running the code registered under 1.0.0; new starts get the latest, 2.0.0."""
    calls = Calls()

    def old(rt):
        _activities(rt, calls)
        rt.register_orchestration("Order", order_v1)

    def new(rt):
        _activities(rt, calls)
        rt.register_orchestration_versioned("Order", "1.0.0", order_v1)
        rt.register_orchestration_versioned("Order", "2.0.0", order_reordered)

    rt = _deploy(rig, old, _opts(cache))
    client = rig.client()
    client.start_orchestration("v-old", "Order", {"x": 1, "wait": "event"})
    _wait_until(lambda: _has(client, "v-old", "ExternalSubscribed"), 10, "waiting")
    rt.shutdown(2_000)
    rt = _deploy(rig, new, _opts(cache))
    client.raise_event("v-old", "approve", None)
    st = client.wait_for_orchestration("v-old", 10_000)
    assert (st.status, st.output) == ("Completed", "shipped:charged:reserved:1"), st
    assert client.get_instance_info("v-old").orchestration_version == "1.0.0"
    client.start_orchestration("v-new", "Order", {"x": 1, "wait": "event"})
    _wait_until(lambda: _has(client, "v-new", "ExternalSubscribed"), 10, "new instance waiting")
    client.raise_event("v-new", "approve", None)
    st = client.wait_for_orchestration("v-new", 10_000)
    assert (st.status, st.output) == ("Completed", "shipped:reserved:charged:1"), st
    assert client.get_instance_info("v-new").orchestration_version == "2.0.0"
    _assert_settled(client, ["v-old", "v-new"], [rt])
    assert rt.metrics_snapshot().orch_configuration_errors == 0
