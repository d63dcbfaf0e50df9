"""Cases from the reference's replay-engine test specification (microsoft/duroxide,
``docs/replay-engine-test-spec.md``) that the existing suite did not already cover, re-expressed
against duroxide_sim.

Each case is "baseline history + messages of this turn + orchestration code -> expected outcome".
Single-turn cases run ``execute_turn`` directly over hand-built histories (``histories.py``);
the multi-turn "handler invoked once per turn" case runs in the simulated world (``make_world``).
Where the reference document and SPEC disagree, SPEC decides (noted per test).

Covered here: replay of external-event and sub-orchestration completions (§2/§3 of the document),
an uncaught activity failure in history, a ten-step sequential replay, cancellation beating an
immediate return, the corruption cases (Started not first, source-less / wrong-type / repeated
/ early / orphaned completions, several terminal events, duplicate schedules), odd field values
(null-like, unicode/control characters, very long strings, large results; empty names are
refused by this project's design) and the
handler-invocation count.

One test found a difference, fixed with it: an ActivityCompleted recorded against a timer
failed with nondeterminism as it should, but its message named the schedule's kind instead of
SPEC §3.4's text (see test_activity_completion_for_a_timer_is_kind_mismatch).
"""

from __future__ import annotations

import json

import pytest

from duroxide_sim import RuntimeOptions
from duroxide_sim.core.events import ApplicationError, ConfigurationErrorDetails
from duroxide_sim.core.registry import Registry
from duroxide_sim.errors import ConfigurationError
from tests.conftest import make_world
from tests.core import histories as H
from tests.core.histories import new


def _kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


def _nd(r) -> str:
    """The nondeterminism message of a turn that must have failed with one (SPEC §3.11)."""
    assert r.kind == "failed", (r.kind, _kinds(r.delta))
    assert isinstance(r.error, ConfigurationErrorDetails), r.error
    assert r.error.kind == "Nondeterminism"
    assert r.output == f"nondeterministic: {r.error.message}"
    assert r.worker_items == () and r.orchestrator_items == ()
    return r.error.message


# ---------------------------------------------------------------------------------------------
# Document §2 / §3: replay with completions, or only schedules, in history
# ---------------------------------------------------------------------------------------------


def _wait_event(ctx, inp):
    return (yield ctx.wait_for_event("Approval"))


def _sub(ctx, inp):
    return (yield ctx.schedule_sub_orchestration("Child", "in"))


@pytest.mark.parametrize(
    "orch, scheduled, done, value",
    [
        (_wait_event, H.external_subscribed(2, "Approval"), H.external_event(3, "Approval", '"yes"'), '"yes"'),
        (_sub, H.sub_scheduled(2, "Child", '"in"'), H.sub_completed(3, 2, '{"r": 1}'), '{"r": 1}'),
    ],
    ids=["external_received_in_history", "sub_orch_completed_in_history"],
)
def test_completion_in_history_replays_to_completed(orch, scheduled, done, value):
    """Doc §2 external_received_in_history / sub_orch_completed_in_history (SPEC §3.4, J33):
    [Started, schedule, completion] replays to Completed with the recorded value; the only new
    event is the terminal one, nothing is dispatched."""
    r = H.turn(orch, [H.started(), scheduled, done])
    assert r.kind == "completed"
    assert r.output == value
    assert list(r.delta) == new(H.completed(4, value))
    assert r.worker_items == () and r.orchestrator_items == () and r.cancelled == ()


@pytest.mark.parametrize(
    "orch, scheduled",
    [(_wait_event, H.external_subscribed(2, "Approval")), (_sub, H.sub_scheduled(2, "Child", '"in"'))],
    ids=["external_subscribed_no_event", "sub_orch_scheduled_no_completion"],
)
def test_schedule_only_in_history_continues_without_new_actions(orch, scheduled):
    """Doc §3 external_subscribed_no_event / sub_orch_scheduled_no_completion (SPEC §3.4, J33):
    the schedule matches, nothing resolves -> Continue with no new events or work items (the
    child is not started again)."""
    r = H.turn(orch, [H.started(), scheduled])
    assert r.kind == "continue"
    assert r.delta == () and r.worker_items == () and r.orchestrator_items == () and r.cancelled == ()
    assert r.error is None and r.output is None


def test_activity_failed_in_history_propagates_when_not_caught():
    """Doc §2 activity_failed_in_history (SPEC §3.4 delivery as Err(display), §17): an Application
    activity failure in history is raised in the code; uncaught, the orchestration fails with
    Application{OrchestrationFailed} whose traceback ends with the activity's error text."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    history = [H.started(), H.activity_scheduled(2, "A", "1"), H.activity_failed(3, 2, "disk full")]
    r = H.turn(orch, history)
    assert r.kind == "failed" and r.status == "Failed"
    assert isinstance(r.error, ApplicationError)
    assert r.error.kind == "OrchestrationFailed"
    assert r.error.message.splitlines()[-1].endswith("disk full")
    assert list(r.delta) == new(H.failed(4, r.error))
    assert r.worker_items == () and r.cancelled == ()


def _ten_steps(ctx, inp):
    out = []
    for n in range(10):
        out.append((yield ctx.schedule_activity("Step", n)))
    return out


def test_many_sequential_activities_replay():
    """Doc §4 many_sequential_activities (SPEC §3.4, J33): ten schedule/complete pairs replay to
    Completed with all ten results in order; a history missing the last completion stays pending
    with no new action."""
    history = [H.started()]
    for n in range(10):
        sid = len(history) + 1
        history += [H.activity_scheduled(sid, "Step", str(n)), H.activity_completed(sid + 1, sid, json.dumps(f"r{n}"))]
    r = H.turn(_ten_steps, history)
    assert r.kind == "completed"
    assert json.loads(r.output) == [f"r{n}" for n in range(10)]
    assert list(r.delta) == new(H.completed(22, r.output))

    r = H.turn(_ten_steps, history[:-1])
    assert r.kind == "continue" and r.delta == () and r.worker_items == ()


# ---------------------------------------------------------------------------------------------
# Document §6: cancellation beats an immediate return
# ---------------------------------------------------------------------------------------------


def test_cancel_beats_immediate_return():
    """Doc §6 cancel_precedence_over_completion (SPEC §3.8 rule 1): [Started] + CancelInstance,
    code returns Ok at once -> Cancelled, even though the walk stopped before the cancel event."""

    def orch(ctx, inp):
        return "ok"

    r = H.turn(orch, [H.started()], [H.cancel("stop")])
    details = ApplicationError(kind="Cancelled", reason="stop", message="")
    assert r.kind == "cancelled"
    assert r.error == details
    assert r.output == "canceled: stop"
    assert list(r.delta) == new(H.cancel_requested(2, "stop"), H.failed(3, details))


# ---------------------------------------------------------------------------------------------
# Document §8.1 / §8.8: structural corruption and duplicate schedules
# ---------------------------------------------------------------------------------------------


def _one_activity(ctx, inp):
    return (yield ctx.schedule_activity("A", 1))


def test_started_not_first_is_corrupted():
    """Doc §8.1 started_not_first (SPEC §3.4 pre-checks): [ActivityScheduled, Started] ->
    nondeterminism `corrupted history: first event must be OrchestrationStarted`."""
    history = [H.activity_scheduled(1, "A", "1"), H.started(event_id=2)]
    assert _nd(H.turn(_one_activity, history)) == "corrupted history: first event must be OrchestrationStarted"


@pytest.mark.parametrize(
    "orch, first, second",
    [
        (_one_activity, H.activity_scheduled(2, "A", "1"), H.activity_scheduled(3, "A", "1")),
        (_one_activity, H.activity_scheduled(2, "A", "1"), H.activity_scheduled(2, "A", "1")),
        (lambda ctx, inp: (yield ctx.schedule_timer(60_000)), H.timer_created(2, 61_000), H.timer_created(3, 61_000)),
        (_wait_event, H.external_subscribed(2, "Approval"), H.external_subscribed(3, "Approval")),
    ],
    ids=["duplicate_activity_schedule", "duplicate_event_ids", "duplicate_timer_schedule", "duplicate_external_subscription"],
)
def test_duplicate_schedule_event_is_nondeterministic(orch, first, second):
    """Doc §8.8 duplicate_*_schedule and §8.1 duplicate_event_ids (SPEC §3.4): the code emits one
    action while pending; the first history schedule matches it, the identical second one has no
    emitted action -> `history schedule but no emitted action`."""
    msg = _nd(H.turn(orch, [H.started(), first, second]))
    assert msg.startswith("history schedule but no emitted action"), msg


# ---------------------------------------------------------------------------------------------
# Document §8.2 / §8.6 / §8.7: completion linkage corruption
# ---------------------------------------------------------------------------------------------


def test_completion_missing_source_id_is_nondeterministic():
    """Doc §8.2 completion_missing_source_id (SPEC §3.4 completions: source not open): an
    ActivityCompleted without a source id is not silently delivered -> `completion without open
    schedule`."""
    history = [H.started(), H.activity_scheduled(2, "A", "1"), H.activity_completed(3, None, '"r"')]
    assert _nd(H.turn(_one_activity, history)).startswith("completion without open schedule")


def test_activity_completion_for_a_timer_is_kind_mismatch():
    """Doc §8.2 completion_source_wrong_type: [Started, TimerCreated(2), ActivityCompleted(src=2)]
    with code awaiting the timer -> Failed(Nondeterminism).

    Expected (SPEC §3.4, Completions: "ActivityCompleted on a non-activity -> `completion kind
    mismatch: expected activity`"; §3.11: the code uses these strings): the message starts
    `completion kind mismatch: expected activity`. (The message used to name the schedule's kind
    instead: `completion kind mismatch: expected timer: ...`.) It goes on to say what the id
    schedules."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(60_000)
        return "fired"

    history = [H.started(), H.timer_created(2, 61_000), H.activity_completed(3, 2, '"r"')]
    message = _nd(H.turn(orch, history))
    assert message.startswith("completion kind mismatch: expected activity (id 2 schedules a timer)"), message


def test_second_completion_for_same_source():
    """Doc §8.2 multiple_completions_same_source (SPEC §3.4): after the first completion the code
    is polled before the next event. Code that returns stops the walk, so the repeated completion
    is ignored; code that goes on to a new action reaches it with the schedule already closed ->
    `completion without open schedule`."""
    history = [
        H.started(), H.activity_scheduled(2, "A", "1"),
        H.activity_completed(3, 2, '"first"'), H.activity_completed(4, 2, '"second"'),
    ]
    r = H.turn(_one_activity, history)
    assert r.kind == "completed" and r.output == '"first"'
    assert list(r.delta) == new(H.completed(5, '"first"'))

    def goes_on(ctx, inp):
        a = yield ctx.schedule_activity("A", 1)
        yield ctx.schedule_timer(10)
        return a

    assert _nd(H.turn(goes_on, history)).startswith("completion without open schedule")


@pytest.mark.parametrize(
    "orch, early, schedule",
    [
        (lambda ctx, inp: (yield ctx.schedule_timer(60_000)), H.timer_fired(2, 3, 61_000), H.timer_created(3, 61_000)),
        (_sub, H.sub_completed(2, 3, '"c"'), H.sub_scheduled(3, "Child", '"in"')),
    ],
    ids=["timer_fired_before_created", "sub_orch_completed_before_scheduled"],
)
def test_completion_before_its_schedule_is_nondeterministic(orch, early, schedule):
    """Doc §8.6 (SPEC §3.4 completions: source not open): a completion recorded before its
    schedule -> `completion without open schedule`."""
    assert _nd(H.turn(orch, [H.started(), early, schedule])).startswith("completion without open schedule")


ORPHANS = [
    H.activity_completed(2, 99, '"r"'),
    H.timer_fired(2, 99, 5),
    H.sub_completed(2, 99, '"c"'),
]
ORPHAN_IDS = ["orphan_completion_no_schedule", "orphan_timer_fired", "orphan_sub_orch_completed"]


@pytest.mark.parametrize("orphan", ORPHANS, ids=ORPHAN_IDS)
def test_orphan_completion_while_pending_is_nondeterministic(orphan):
    """Doc §8.7 (SPEC §3.4): [Started, completion(src=99)] with code still pending when the walk
    reaches it -> `completion without open schedule`."""
    assert _nd(H.turn(_one_activity, [H.started(), orphan])).startswith("completion without open schedule")


@pytest.mark.parametrize("orphan", ORPHANS, ids=ORPHAN_IDS)
def test_orphan_completion_after_return_is_ignored(orphan):
    """Doc §8.7 "ignored" branch (SPEC §3.4 step 2): code that returns on its first poll stops
    the walk, so the orphan is never examined -> Completed."""
    r = H.turn(lambda ctx, inp: "done", [H.started(), orphan])
    assert r.kind == "completed" and r.output == '"done"'
    assert list(r.delta) == new(H.completed(3, '"done"'))


# ---------------------------------------------------------------------------------------------
# Document §8.3: terminal events
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        [H.completed(2, '"a"'), H.failed(3, ApplicationError(kind="OrchestrationFailed", message="b"))],
        [H.completed(2, '"a"'), H.cancel_requested(3, "too late")],
    ],
    ids=["multiple_terminal_events", "cancel_after_completed"],
)
def test_terminal_history_variants_are_noops(tail):
    """Doc §8.3 multiple_terminal_events / cancel_after_completed (SPEC §3.4 pre-check: any
    terminal event -> no-op): nothing is written, dispatched or cancelled; the code never runs."""
    ran = []

    def orch(ctx, inp):
        ran.append(1)
        return "again"

    r = H.turn(orch, [H.started(), *tail], [H.cancel("more")])
    assert r.kind == "noop"
    assert ran == []
    assert r.delta == () and r.worker_items == () and r.orchestrator_items == () and r.cancelled == ()


# ---------------------------------------------------------------------------------------------
# Document §8.5 / §15: field values
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, value",
    [
        ("A", ""),                        # empty_activity_input
        ("A", None),                      # null-like: JSON null
        ("A", "null"),                    # null-like strings
        ("None", "undefined"),
        ("🚀 Grüße ✓", "日本語 🎉"),        # unicode_in_names
        ("line\nbreak\ttab", "nul\x00byte\r\n"),  # special_characters
    ],
    ids=["empty-input", "json-null", "null-string", "none-undefined", "unicode", "control-chars"],
)
def test_odd_names_and_inputs_schedule_and_replay(name, value):
    """Doc §8.5 null_equivalent_strings / special_characters and §15
    empty_activity_input / unicode_in_names (SPEC §2: payloads are opaque strings, §3.5 matching):
    the first turn records the name and the JSON input verbatim; replaying that history with a
    completion delivers the result; a changed input is still caught."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity(name, value))

    first = H.turn(orch, [H.started()])
    assert first.kind == "continue"
    assert list(first.delta) == new(H.activity_scheduled(2, name, json.dumps(value)))
    assert [(w.name, w.input) for w in first.worker_items] == [(name, json.dumps(value))]

    history = [H.started(), *first.delta]
    r = H.turn(orch, history, [H.act_done(2, json.dumps(value))])
    assert r.kind == "completed"
    assert json.loads(r.output) == value

    def changed(ctx, inp):
        return (yield ctx.schedule_activity(name, [value]))

    assert _nd(H.turn(changed, history)).startswith("schedule mismatch")


def test_empty_activity_name_is_refused_at_the_call():
    """Doc §8.5 empty_activity_name expects an empty name to work. SPEC is silent; this project
    refuses empty names by design (context, registry and client alike; the client rule is pinned
    by tests/runtime/test_client.py::test_empty_names_raise_invalid_input). Pinned here at the
    engine: the call raises TypeError in the code, so an uncaught one fails the orchestration
    and nothing is scheduled."""
    r = H.turn(lambda ctx, inp: (yield ctx.schedule_activity("", "x")), [H.started()])
    assert r.kind == "failed"
    assert isinstance(r.error, ApplicationError) and r.error.kind == "OrchestrationFailed"
    assert r.error.message.splitlines()[-1] == "TypeError: activity name must be a non-empty string, got ''"
    assert _kinds(r.delta) == ["OrchestrationFailed"]
    assert r.worker_items == ()


def test_empty_orchestration_name_is_refused_at_registration():
    """Doc §8.5 empty_orchestration_name expects `Started(name="")` to work. By the same design
    rule no handler can be registered under "" (ConfigurationError), so such a history cannot
    arise from this runtime."""
    with pytest.raises(ConfigurationError, match="orchestration name must be a non-empty string"):
        Registry().add_orchestration("", lambda ctx, inp: None)


def test_very_long_activity_name_and_large_result():
    """Doc §8.5 very_long_strings and §15 large_result_string (SPEC §10.3: no limit on payload
    sizes other than the listed ones): a 10 MB activity name schedules, matches on replay and a
    1 MB result is delivered intact."""
    name = "n" * (10 * 1024 * 1024)
    big = "r" * (1024 * 1024)

    def orch(ctx, inp):
        res = yield ctx.schedule_activity(name, 1)
        return len(res)

    first = H.turn(orch, [H.started()])
    assert first.kind == "continue"
    assert len(first.delta) == 1 and first.delta[0].name == name
    r = H.turn(orch, [H.started(), *first.delta], [H.act_done(2, json.dumps(big))])
    assert r.kind == "completed"
    assert r.output == str(len(big))
    assert r.delta[0].result == json.dumps(big)


# ---------------------------------------------------------------------------------------------
# Document §15: handler invoked once per turn
# ---------------------------------------------------------------------------------------------


def test_handler_invoked_once_per_turn():
    """Doc §15 handler_invoked_once (SPEC §1 Turn: the function reruns from the start each turn;
    §3.7 quiescence polls the same run): one turn over a batch of several completions, followed
    by more work in the same turn, calls the orchestration function exactly once."""
    calls = []

    def orch(ctx, inp):
        calls.append(1)
        both = yield ctx.all([ctx.schedule_activity("A", 1), ctx.schedule_activity("B", 1)])
        yield ctx.schedule_timer(5)
        return both

    history = [H.started(), H.activity_scheduled(2, "A", "1"), H.activity_scheduled(3, "B", "1")]
    r = H.turn(orch, history, [H.act_done(2, '"a"'), H.act_done(3, '"b"')])
    assert r.kind == "continue"
    assert _kinds(r.delta) == ["ActivityCompleted", "ActivityCompleted", "TimerCreated"]
    assert len(calls) == 1


def test_handler_invoked_once_per_turn_across_a_run():
    """Doc §15 handler_invoked_once, over several turns in the simulated world with the instance
    cache off (every turn replays from scratch): ten sequential activities take eleven turns (the
    start and one per completion), so the function is called exactly eleven times, and the
    result holds all ten outputs."""
    world = make_world(RuntimeOptions(instance_cache_size=0))
    calls = []

    @world.runtime.register_activity("Step")
    def step(ctx, n):
        return n * 10

    @world.runtime.register_orchestration("Seq")
    def seq(ctx, inp):
        calls.append(1)
        return (yield from _ten_steps(ctx, inp))

    world.client.start_orchestration("s", "Seq", None)
    world.run()
    st = world.result("s")
    assert st.status == "Completed", st.error
    assert st.output == [n * 10 for n in range(10)]
    assert len(calls) == 11
    world.provider._check()
