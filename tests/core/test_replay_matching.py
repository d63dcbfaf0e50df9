"""Matching and nondeterminism (SPEC §3.4, §3.5, §3.11; §16 J item 36) and the format of
nondeterminism messages (event id, both sides, the orchestration's source line)."""

from __future__ import annotations

import os

import pytest

from duroxide_sim.core.events import ConfigurationErrorDetails
from tests.core.histories import (
    act_done,
    activity_cancel_requested,
    activity_completed,
    activity_scheduled,
    chained,
    completed,
    custom_status,
    external_subscribed,
    line_of,
    new,
    queue_subscribed,
    started,
    sub_scheduled,
    timer_created,
    timer_fired,
    turn,
)


def _nd(r):
    """The nondeterminism text of a failed turn (asserting its shape)."""
    assert r.kind == "failed", r
    assert isinstance(r.error, ConfigurationErrorDetails)
    assert r.error.kind == "Nondeterminism"
    assert r.status == "Failed"
    assert r.output == f"nondeterministic: {r.error.message}"
    assert r.worker_items == () and r.orchestrator_items == ()
    return r.error.message


# ---------------------------------------------------------------------------------------------
# Item 36: what is nondeterminism and what is not
# ---------------------------------------------------------------------------------------------


def _act(name="A", input=1, session=None, tag=None):
    def orch(ctx, inp):
        task = ctx.schedule_activity(name, input, session)
        if tag is not None:
            task = task.with_tag(tag)
        return (yield task)

    return orch


RECORDED = activity_scheduled(2, "A", "1", session_id="s", tag="t")


@pytest.mark.parametrize(
    "orch",
    [
        _act(name="B", session="s", tag="t"),
        _act(input=2, session="s", tag="t"),
        _act(session="other", tag="t"),
        _act(session=None, tag="t"),
        _act(session="s", tag="u"),
        _act(session="s", tag=None),
    ],
    ids=["name", "input", "session", "no-session", "tag", "no-tag"],
)
def test_activity_field_mismatch_is_nondeterministic(orch):
    """J36 / §3.5: activity name, input, session_id and tag must all match."""
    msg = _nd(turn(orch, [started(), RECORDED]))
    assert msg.startswith("schedule mismatch: action=CallActivity vs event=ActivityScheduled")
    assert "event_id=2" in msg


def test_activity_with_all_fields_equal_matches():
    """J36 / §3.5: the same name, input, session and tag replay cleanly."""
    r = turn(_act(session="s", tag="t"), [started(), RECORDED])
    assert r.kind == "continue" and r.delta == ()


@pytest.mark.parametrize(
    "history_event, code",
    [
        (activity_scheduled(2, "A", "1"), lambda ctx: ctx.schedule_timer(5)),
        (timer_created(2, 5), lambda ctx: ctx.schedule_activity("A", 1)),
        (external_subscribed(2, "E"), lambda ctx: ctx.dequeue_event("E")),
        (queue_subscribed(2, "q"), lambda ctx: ctx.wait_for_event("q")),
        (sub_scheduled(2, "C", "1"), lambda ctx: ctx.schedule_activity("C", 1)),
        (chained(2, "D", "d", "1"), lambda ctx: ctx.schedule_sub_orchestration_with_id("D", "d", 1)),
    ],
    ids=["activity-vs-timer", "timer-vs-activity", "wait-vs-dequeue", "dequeue-vs-wait", "sub-vs-activity", "detached-vs-sub"],
)
def test_kind_mismatch_is_nondeterministic(history_event, code):
    """J36 / §3.5: different kinds never match."""

    def orch(ctx, inp):
        return (yield code(ctx))

    msg = _nd(turn(orch, [started(), history_event]))
    assert msg.startswith("schedule mismatch: ")
    assert f"event={type(history_event).__name__}" in msg


@pytest.mark.parametrize(
    "history_event, code",
    [
        (external_subscribed(2, "E"), lambda ctx: ctx.wait_for_event("F")),
        (queue_subscribed(2, "q"), lambda ctx: ctx.dequeue_event("r")),
        (sub_scheduled(2, "C", "1"), lambda ctx: ctx.schedule_sub_orchestration("C2", 1)),
        (sub_scheduled(2, "C", "1"), lambda ctx: ctx.schedule_sub_orchestration("C", 2)),
        (chained(2, "D", "d", "1"), lambda ctx: ctx.start_orchestration("D", "other", 1)),
        (chained(2, "D", "d", "1"), lambda ctx: ctx.start_orchestration("D", "d", 2)),
    ],
    ids=["event-name", "queue-name", "sub-name", "sub-input", "detached-instance", "detached-input"],
)
def test_name_and_input_mismatch_is_nondeterministic(history_event, code):
    """J36 / §3.5: wait/dequeue match on name, sub-orchestrations on name + input, detached starts
    on name + instance + input. (A detached start resolves at once, so the code then waits, else
    it would return before the walk reaches the event.)"""

    def orch(ctx, inp):
        yield code(ctx)
        return (yield ctx.wait_for_event("never"))

    msg = _nd(turn(orch, [started(), history_event]))
    assert msg.startswith("schedule mismatch: ")


def test_sub_orchestration_instance_and_version_are_not_matched():
    """§3.5: sub-orchestrations match on name + input only (not instance, not version); timers
    match any TimerCreated (history fire_at stands)."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(999_999)
        return (yield ctx.schedule_sub_orchestration_versioned_with_id("C", "2.0.0", "explicit", 1))

    history = [started(), timer_created(2, 5), timer_fired(3, 2, 5), sub_scheduled(4, "C", "1", instance="sub::4")]
    r = turn(orch, history)
    assert r.kind == "continue" and r.delta == ()


def test_extra_history_schedule_while_pending_is_nondeterministic():
    """J36 / §3.4: a history schedule while the code is pending with nothing emitted ->
    `history schedule but no emitted action`."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    msg = _nd(turn(orch, [started(), activity_scheduled(2, "A", "1"), activity_scheduled(3, "B", "1")]))
    assert msg.startswith("history schedule but no emitted action")
    assert "event_id=3" in msg


def test_extra_history_detached_start_names_the_chained_event():
    """§3.4: an unmatched OrchestrationChained -> `history OrchestrationChained but no emitted action`."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    msg = _nd(turn(orch, [started(), activity_scheduled(2, "A", "1"), chained(3, "D", "d", "1")]))
    assert msg.startswith("history OrchestrationChained but no emitted action")


def test_completion_before_its_schedule_is_nondeterministic():
    """J36 / §3.4: a completion whose schedule is not open at that point ->
    `completion without open schedule`."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    msg = _nd(turn(orch, [started(), activity_completed(2, 3, '"r"'), activity_scheduled(3, "A", "1")]))
    assert msg.startswith("completion without open schedule")


def test_unknown_completion_in_history_is_nondeterministic():
    """J36 / §3.4: a persisted completion with an unknown source id."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    msg = _nd(turn(orch, [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 42, '"r"')]))
    assert msg.startswith("completion without open schedule")


def test_wrong_kind_completion_in_history_is_nondeterministic():
    """J36 / §3.4: a persisted completion of the wrong kind -> `completion kind mismatch`."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    msg = _nd(turn(orch, [started(), activity_scheduled(2, "A", "1"), timer_fired(3, 2, 5)]))
    assert msg.startswith("completion kind mismatch")


def test_no_nondeterminism_when_code_returns_before_remaining_schedules():
    """J36 / §3.4 step 2: code that returns stops the walk; remaining (even unmatched) schedules
    are ignored; the open activity gets a terminal breadcrumb after the terminal event."""

    def orch(ctx, inp):
        return "early"

    history = [started(), activity_scheduled(2, "Gone", "1"), timer_created(3, 5)]
    r = turn(orch, history)
    assert r.kind == "completed"
    assert r.output == '"early"'
    assert list(r.delta) == new(completed(4, '"early"'), activity_cancel_requested(5, 2, "orchestration_terminal_completed"))
    assert r.cancelled == (("i", 1, 2),)


def test_extra_actions_beyond_history_are_new_work():
    """§3.5: actions beyond the end of history are simply new work."""

    def orch(ctx, inp):
        a = yield ctx.schedule_activity("A", 1)
        return (yield ctx.schedule_activity("New", a))

    r = turn(orch, [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"')])
    assert r.kind == "continue"
    assert list(r.delta) == new(activity_scheduled(4, "New", '"a"'))


def test_nondeterminism_failure_breadcrumbs_open_activities():
    """§3.11 / §3.1 step 9: a nondeterminism failure fails the turn; open activities get
    `orchestration_terminal_failed` breadcrumbs and join the cancelled list."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("B", 1))

    r = turn(orch, [started(), activity_scheduled(2, "A", "1")])
    assert [type(e).__name__ for e in r.delta] == ["OrchestrationFailed", "ActivityCancelRequested"]
    assert r.delta[0].event_id == 3 and r.delta[0].details == r.error
    assert r.delta[1] == new(activity_cancel_requested(4, 2, "orchestration_terminal_failed"))[0]
    assert r.cancelled == (("i", 1, 2),)


# ---------------------------------------------------------------------------------------------
# Custom status / KV matching (§3.4)
# ---------------------------------------------------------------------------------------------


def test_custom_status_value_is_not_matched_but_kind_is():
    """§3.4: CustomStatusUpdated accepts any UpdateCustomStatus (value ignored); a KV action at
    that point -> `custom status mismatch`."""
    def same_kind(ctx, inp):
        ctx.set_custom_status("different")
        return (yield ctx.schedule_activity("A", 1))

    history = [started(), custom_status(2, "recorded"), activity_scheduled(3, "A", "1")]
    assert turn(same_kind, history).kind == "continue"

    def other_kind(ctx, inp):
        ctx.set_kv_value("k", "v")
        return (yield ctx.schedule_activity("A", 1))

    assert _nd(turn(other_kind, history)).startswith("custom status mismatch")


# ---------------------------------------------------------------------------------------------
# Message format: event id, both sides, file:line of the yield / await
# ---------------------------------------------------------------------------------------------


def renamed(ctx, inp):
    return (yield ctx.schedule_activity("B", 1))  # ND-MARK renamed


def changed_input(ctx, inp):
    return (yield ctx.schedule_activity("A", 2))  # ND-MARK changed-input


def removed_middle(ctx, inp):
    a = yield ctx.schedule_activity("A", 1)
    # step "B" was removed here
    c = yield ctx.schedule_activity("C", 3)  # ND-MARK removed-middle
    return [a, c]


async def async_renamed(ctx, inp):
    first = await ctx.schedule_activity("A", 1)
    second = await ctx.schedule_activity("Z", first)  # ND-MARK async
    return second


def _assert_site(msg, fn, marker):
    path, line = line_of(fn, marker)
    assert os.path.samefile(path, __file__)
    assert f"{path}:{line}" in msg, msg


def test_message_for_changed_activity_name():
    """§3.11: the message names the event id, the history event, the code's action and the
    file:line of the orchestration's yield."""
    msg = _nd(turn(renamed, [started(), activity_scheduled(2, "A", "1")]))
    assert msg.startswith("schedule mismatch")
    assert "event_id=2" in msg
    assert "ActivityScheduled(name='A', input='1')" in msg
    assert "CallActivity(name='B', input='1')" in msg
    _assert_site(msg, renamed, "ND-MARK renamed")


def test_message_for_changed_input():
    """§3.11: changed input -> both inputs appear, with the event id and the yield's line."""
    msg = _nd(turn(changed_input, [started(), activity_scheduled(2, "A", "1")]))
    assert "event_id=2" in msg
    assert "ActivityScheduled(name='A', input='1')" in msg
    assert "CallActivity(name='A', input='2')" in msg
    _assert_site(msg, changed_input, "ND-MARK changed-input")


def test_message_for_removed_middle_step():
    """§3.11: a removed middle step is reported at the first schedule that no longer matches:
    the history's B (event 4) against the code's C, at the line yielding C."""
    history = [
        started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"'),
        activity_scheduled(4, "B", '"a"'), activity_completed(5, 4, '"b"'),
        activity_scheduled(6, "C", "3"),
    ]
    msg = _nd(turn(removed_middle, history))
    assert "event_id=4" in msg
    assert "ActivityScheduled(name='B', input='\"a\"')" in msg
    assert "CallActivity(name='C', input='3')" in msg
    _assert_site(msg, removed_middle, "ND-MARK removed-middle")


def test_message_for_async_orchestration_points_at_the_await():
    """§3.11: for an `async def` orchestration the site is the line of the `await`."""
    history = [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"'), activity_scheduled(4, "B", '"a"')]
    msg = _nd(turn(async_renamed, history))
    assert "event_id=4" in msg
    assert "ActivityScheduled(name='B', input='\"a\"')" in msg
    assert "CallActivity(name='Z', input='\"a\"')" in msg
    _assert_site(msg, async_renamed, "ND-MARK async")


def test_async_orchestration_replays_like_a_generator():
    """§17: `async def` orchestrations are driven exactly like generators."""
    history = [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"'), activity_scheduled(4, "Z", '"a"')]
    r = turn(async_renamed, history, [act_done(4, '"z"')])
    assert r.kind == "completed" and r.output == '"z"'
