"""Limits (SPEC §10.3), KV replay (§13; §16 J item 42) and poison turns (§10.2)."""

from __future__ import annotations

import json

import pytest

from duroxide_sim.core.events import (
    ApplicationError,
    ConfigurationErrorDetails,
    OrchestrationFailed,
    PoisonError,
    SubOrchFailedMsg,
    to_dict,
)
from duroxide_sim.core.replay import TurnInput, poison_turn
from tests.core.histories import (
    NOW,
    activity_cancel_requested,
    activity_scheduled,
    can_msg,
    completed,
    continued_as_new,
    custom_status,
    failed,
    fired,
    kv_all_cleared,
    kv_cleared,
    kv_set,
    new,
    start_msg,
    started,
    timer_created,
    timer_fired,
    turn,
)


# ---------------------------------------------------------------------------------------------
# §10.3 limits
# ---------------------------------------------------------------------------------------------


def _limit_failure(r, message):
    details = ApplicationError(kind="OrchestrationFailed", message=message)
    assert r.kind == "failed"
    assert r.status == "Failed"
    assert r.error == details
    assert r.output == message
    assert r.worker_items == () and r.orchestrator_items == ()
    return details


def test_custom_status_over_limit_fails():
    """§10.3: custom status > 262144 bytes -> Failed with the exact message, no work items."""

    def orch(ctx, inp):
        ctx.set_custom_status("é" * 131_072 + "x")  # 262145 UTF-8 bytes
        return (yield ctx.schedule_timer(10))

    r = turn(orch, [started()])
    details = _limit_failure(r, "Custom status size (262145 bytes) exceeds limit (262144 bytes)")
    assert list(r.delta) == new(custom_status(2, "é" * 131_072 + "x"), timer_created(3, NOW + 10), failed(4, details))


def test_custom_status_at_limit_is_fine_and_only_last_value_counts():
    """§10.3: the limit applies to the last status set in the turn; exactly 262144 bytes is fine."""

    def orch(ctx, inp):
        ctx.set_custom_status("x" * 300_000)
        ctx.set_custom_status("y" * 262_144)
        return (yield ctx.schedule_timer(10))

    r = turn(orch, [started()])
    assert r.kind == "continue"


def test_activity_tag_over_limit_fails():
    """§10.3: activity tag > 256 bytes -> Failed, the activity is never dispatched (but, as an
    open activity of a failed execution, gets a terminal breadcrumb, §3.1 step 9)."""
    tag = "t" * 257

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1).with_tag(tag))

    r = turn(orch, [started()])
    details = _limit_failure(r, "Activity 'A' tag size (257 bytes) exceeds limit (256 bytes)")
    assert list(r.delta) == new(
        activity_scheduled(2, "A", "1", tag=tag),
        failed(3, details),
        activity_cancel_requested(4, 2, "orchestration_terminal_failed"),
    )
    assert r.cancelled == (("i", 1, 2),)


def test_kv_value_over_limit_fails():
    """§10.3 (the SDK's core limit): KV value > 65536 bytes -> Failed with the exact message."""

    def orch(ctx, inp):
        ctx.set_kv_value("k", "v" * 65_537)
        return (yield ctx.schedule_timer(10))

    r = turn(orch, [started(timestamp_ms=NOW)])
    details = _limit_failure(r, "KV value for key 'k' (65537 bytes) exceeds limit (65536 bytes)")
    assert list(r.delta) == new(kv_set(2, "k", "v" * 65_537, ts=NOW), timer_created(3, NOW + 10), failed(4, details))


def test_kv_key_count_over_limit_fails():
    """§10.3 (the SDK's core limit): more than 150 keys (snapshot + this execution) -> Failed."""
    snapshot = {f"k{n}": ("1", 5) for n in range(150)}

    def orch(ctx, inp):
        ctx.set_kv_value("one-more", "1")
        return (yield ctx.schedule_timer(10))

    r = turn(orch, [started()], kv=snapshot)
    _limit_failure(r, "KV key count (151) exceeds limit (150)")

    def overwrite(ctx, inp):
        ctx.set_kv_value("k0", "2")  # still 150 keys
        return (yield ctx.schedule_timer(10))

    assert turn(overwrite, [started()], kv=snapshot).kind == "continue"


def test_limit_failure_discards_dispatch_of_a_completing_turn():
    """§10.3: a violation in a turn that also starts a detached orchestration discards that work."""

    def orch(ctx, inp):
        yield ctx.start_orchestration("D", "det", 1)
        ctx.set_kv_value("k", "v" * 70_000)
        return (yield ctx.wait_for_event("never"))

    r = turn(orch, [started()])
    _limit_failure(r, "KV value for key 'k' (70000 bytes) exceeds limit (65536 bytes)")


def test_limit_failure_is_appended_after_the_terminal_event():
    """§10.3 (⚠, built as stated): OrchestrationFailed is appended after a terminal event already
    in the delta (the last terminal event decides the status)."""

    def orch(ctx, inp):
        ctx.set_custom_status("s" * 262_145)
        return "done"

    r = turn(orch, [started()])
    details = _limit_failure(r, "Custom status size (262145 bytes) exceeds limit (262144 bytes)")
    assert list(r.delta) == new(custom_status(2, "s" * 262_145), completed(3, '"done"'), failed(4, details))


def test_limit_failure_on_a_completing_turn_keeps_event_ids_consecutive():
    """§1 / J39: new ids are last + 1 consecutively, also when a limit violation turns a
    completing turn into a failure."""

    def orch(ctx, inp):
        ctx.set_kv_value("k", "v" * 70_000)
        return "done"

    r = turn(orch, [started(timestamp_ms=NOW)])
    assert r.kind == "failed"
    assert [e.event_id for e in r.delta] == list(range(2, 2 + len(r.delta)))


# ---------------------------------------------------------------------------------------------
# Item 42: KV replay
# ---------------------------------------------------------------------------------------------


def test_kv_is_rebuilt_by_code_over_the_snapshot():
    """J42 / §13: the snapshot seeds the store; this execution's mutations are replayed by the code."""

    def orch(ctx, inp):
        ctx.set_kv_value("b", "2")
        ctx.clear_kv_value("gone")
        yield ctx.schedule_timer(10)
        return ctx.get_kv_all_values()

    snapshot = {"a": ("1", 5), "gone": ("x", 5)}
    history = [started(), kv_set(2, "b", "2", ts=700), kv_cleared(3, "gone"), timer_created(4, 710)]
    r = turn(orch, history, [fired(4, 710)], kv=snapshot)
    assert r.kind == "completed"
    assert json.loads(r.output) == {"a": "1", "b": "2"}
    assert list(r.delta) == new(timer_fired(5, 4, 710), completed(6, r.output))


def test_kv_same_turn_reads():
    """J42 / §13: reads see this turn's writes immediately; empty string is not absent."""

    def orch(ctx, inp):
        seen = [ctx.get_kv_value("a")]
        ctx.set_kv_value("a", "")
        seen.append(ctx.get_kv_value("a"))
        ctx.set_kv_value("b", {"n": 1})
        seen.append(ctx.get_kv_value("b"))
        seen.append(sorted(ctx.get_kv_all_keys()))
        seen.append(ctx.get_kv_length())
        ctx.clear_all_kv_values()
        seen.append([ctx.get_kv_value("a"), ctx.get_kv_length()])
        return seen

    r = turn(orch, [], [start_msg()], kv={"a": ("old", 1)})
    assert json.loads(r.output) == ["old", "", '{"n": 1}', ["a", "b"], 2, [None, 0]]
    assert list(r.delta) == new(
        started(), kv_set(2, "a", "", ts=NOW), kv_set(3, "b", '{"n": 1}', ts=NOW), kv_all_cleared(4), completed(5, r.output),
    )


@pytest.mark.parametrize(
    "recorded, code, problem",
    [
        (kv_set(2, "k", "1"), lambda ctx: ctx.set_kv_value("other", "1"), "kv set mismatch"),
        (kv_set(2, "k", "1"), lambda ctx: ctx.set_kv_value("k", "2"), "kv set mismatch"),
        (kv_cleared(2, "k"), lambda ctx: ctx.clear_kv_value("j"), "kv clear mismatch"),
        (kv_cleared(2, "k"), lambda ctx: ctx.set_kv_value("k", "1"), "kv clear mismatch"),
        (kv_all_cleared(2), lambda ctx: ctx.clear_kv_value("k"), "kv clear_all mismatch"),
        (custom_status(2, "s"), lambda ctx: ctx.clear_all_kv_values(), "custom status mismatch"),
    ],
    ids=["set-key", "set-value", "clear-key", "clear-vs-set", "clear-all", "status-vs-kv"],
)
def test_kv_mismatch_is_nondeterministic(recorded, code, problem):
    """J42 / §3.4: a KV event met by a different KV action (key/value) -> nondeterminism."""

    def orch(ctx, inp):
        code(ctx)
        return (yield ctx.schedule_timer(10))

    r = turn(orch, [started(), recorded, timer_created(3, 10)])
    assert r.kind == "failed"
    assert isinstance(r.error, ConfigurationErrorDetails)
    assert r.error.message.startswith(problem)


def test_kv_event_without_action_is_accepted():
    """§3.4: a KV/status event with no pending action is accepted (code no longer sets it)."""

    def orch(ctx, inp):
        return (yield ctx.schedule_timer(10))

    r = turn(orch, [started(), timer_created(2, 10), kv_set(3, "k", "1"), custom_status(4, "s")])
    assert r.kind == "continue" and r.delta == ()


def test_kv_timestamps_are_ignored_for_matching_and_recorded_ones_reused():
    """J42 / §13 Recommend: timestamps are not compared; on replay the recorded
    last_updated_at_ms is reused so pruning replays identically."""

    def orch(ctx, inp):
        ctx.set_kv_value("k", "v")
        yield ctx.schedule_timer(10)
        return ctx.prune_kv_values_updated_before(500)

    r1 = turn(orch, [], [start_msg()], now_ms=100)
    assert list(r1.delta) == [
        started(timestamp_ms=100), kv_set(2, "k", "v", ts=100, timestamp_ms=100), timer_created(3, 110, timestamp_ms=100),
    ]
    history = list(r1.delta)
    r2 = turn(orch, history, [fired(3, 110)], now_ms=NOW)
    assert r2.kind == "completed"
    assert r2.output == "1"
    assert list(r2.delta) == new(timer_fired(4, 3, 110), kv_cleared(5, "k"), completed(6, "1"))


def test_kv_read_modify_write_across_turns_and_continue_as_new():
    """J42: a counter read-modify-written each execution survives turns and continue-as-new (the
    next execution sees the merged store as its snapshot)."""

    def orch(ctx, inp):
        n = int(ctx.get_kv_value("count") or "0") + 1
        ctx.set_kv_value("count", str(n))
        yield ctx.schedule_timer(10)
        if n < 3:
            yield ctx.continue_as_new(None)
        return ctx.get_kv_value("count")

    r = turn(orch, [], [start_msg()], kv={"count": ("1", 1)})
    assert list(r.delta) == new(started(), kv_set(2, "count", "2", ts=NOW), timer_created(3, NOW + 10))
    history = list(r.delta)
    r = turn(orch, history, [fired(3, NOW + 10)], kv={"count": ("1", 1)})
    assert r.kind == "continued_as_new"
    assert [type(e).__name__ for e in r.delta] == ["TimerFired", "OrchestrationContinuedAsNew"]

    old = history + list(r.delta)
    r = turn(orch, old, [can_msg("null")], kv={"count": ("2", NOW)})
    assert r.execution_id == 2
    assert [(type(e).__name__, getattr(e, "value", None)) for e in r.delta] == [
        ("OrchestrationStarted", None), ("KeyValueSet", "3"), ("TimerCreated", None),
    ]
    new_history = list(r.delta)
    r = turn(orch, new_history, [fired(3, NOW + 10, execution_id=2)], kv={"count": ("2", NOW)}, execution_id=2)
    assert r.kind == "completed" and r.output == '"3"'


# ---------------------------------------------------------------------------------------------
# §10.2 poison
# ---------------------------------------------------------------------------------------------


def _inp(history, messages):
    return TurnInput(instance="i", execution_id=1, orchestration_name="O", version=None, history=history,
                     messages=messages, now_ms=NOW)


def test_poison_turn_on_empty_history_writes_started_then_failed():
    """§10.2: a never-started instance is poisoned as Started + Failed{Poison{Orchestration}} so it
    shows as Failed; the message is the JSON of the batch."""
    msgs = [start_msg(input='"in"', version="1.0.0")]
    r = poison_turn(_inp([], msgs), attempt_count=11, max_attempts=10)
    assert r.kind == "failed" and r.status == "Failed"
    assert isinstance(r.error, PoisonError)
    assert (r.error.message_type, r.error.instance, r.error.execution_id) == ("Orchestration", "i", 1)
    assert (r.error.attempt_count, r.error.max_attempts) == (11, 10)
    assert json.loads(r.error.message) == [to_dict(m) for m in msgs]
    assert r.output == "poison: orchestration i exceeded 11 attempts (max 10)"
    assert list(r.delta) == new(started(input='"in"', version="1.0.0"), failed(2, r.error))
    assert r.worker_items == () and r.orchestrator_items == ()


def test_poison_turn_on_existing_history_appends_failed_and_notifies_parent():
    """§10.2: with history, only OrchestrationFailed{Poison} is appended (next id); a linked parent
    gets SubOrchFailed with the Poison details."""
    history = [started(parent_instance="P", parent_id=3, parent_execution_id=1), activity_scheduled(2, "A", "1")]
    r = poison_turn(_inp(history, [fired(9, 1)]), attempt_count=12, max_attempts=10)
    assert [type(e) for e in r.delta] == [OrchestrationFailed]
    assert r.delta[0].event_id == 3
    assert r.output == "poison: orchestration i exceeded 12 attempts (max 10)"
    assert r.orchestrator_items == (SubOrchFailedMsg(parent_instance="P", parent_execution_id=1, parent_id=3, details=r.error),)


def test_poison_turn_for_unreadable_history_uses_sentinel_id():
    """§10.2: unreadable history -> OrchestrationFailed{Poison{FailedDeserialization}} at id 99999."""
    r = poison_turn(_inp([], []), attempt_count=11, max_attempts=10, history_error="bad json")
    assert [(type(e), e.event_id) for e in r.delta] == [(OrchestrationFailed, 99999)]
    assert r.error.message_type == "FailedDeserialization"
    assert r.output == "poison: orchestration i history deserialization failed after 11 attempts (max 10): bad json"


def test_continued_as_new_history_is_a_noop_without_can_item():
    """§3.1 step 3: an execution that continued as new, with no CAN item in the batch -> no-op."""
    r = turn(lambda ctx, inp: 1, [started(), continued_as_new(2, "1")], [fired(5, 1)])
    assert r.kind == "noop" and r.delta == ()
