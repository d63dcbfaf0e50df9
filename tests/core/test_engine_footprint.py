"""What a cached engine keeps between turns (replay.EngineCache).

Hundreds of engines may sit in the cache at once, so an engine parked between turns must not
hold the turn's history, its input, or an empty FIFO deque; and a turn resumed from such a
parked engine must produce exactly what a from-scratch replay of the same history produces.
"""

from __future__ import annotations

from duroxide_sim.core.engine import NO_FIFO
from duroxide_sim.core.events import ActivityCompletedMsg, StartOrchestration
from duroxide_sim.core.registry import Registry
from duroxide_sim.core.replay import EngineCache, TurnInput, execute_turn

INSTANCE = "i"


def _registry() -> Registry:
    reg = Registry()

    def chain(ctx, n):
        x = 0
        for _ in range(n):
            x = yield ctx.schedule_activity("inc", x)
        return x

    reg.add_orchestration("Chain", chain)
    return reg


def _turn(history, messages, now, cache):
    return execute_turn(
        TurnInput(instance=INSTANCE, execution_id=1, orchestration_name="Chain", version=None,
                  history=list(history), messages=list(messages), now_ms=now, kv_snapshot={}),
        _registry_singleton, cache,
    )


_registry_singleton = _registry()


def _run_chain(n: int, cache: EngineCache | None):
    """Drive the Chain orchestration turn by turn; return every turn's delta and the history."""
    history: list = []
    deltas = []
    result = _turn(history, [StartOrchestration(instance=INSTANCE, orchestration="Chain", input=str(n))], 1_000, cache)
    for step in range(n + 1):
        deltas.append(result.delta)
        history += result.delta
        if cache is not None and result.engine is not None and result.kind == "continue":
            cache.put(INSTANCE, result.engine)
        if result.kind != "continue":
            break
        scheduled = result.worker_items[0]
        done = ActivityCompletedMsg(instance=INSTANCE, execution_id=1, id=scheduled.id, result=str(step + 1))
        result = _turn(history, [done], 2_000 + step, cache)
    return deltas, result


def test_parked_engine_keeps_no_history_and_no_instance_dict():
    cache = EngineCache(16)
    _run_chain(3, cache)  # leaves nothing cached: the last turn completes
    history: list = []
    first = _turn(history, [StartOrchestration(instance=INSTANCE, orchestration="Chain", input="3")], 1_000, cache)
    engine = first.engine
    assert engine is not None
    cache.put(INSTANCE, engine)
    assert not hasattr(engine, "__dict__"), "engines use __slots__: a wide instance dict costs ~1.5 KiB each"
    assert engine.events == [], "a parked engine must not keep the history it walked"
    assert engine.fifo is NO_FIFO, "a drained FIFO is given back instead of keeping an empty deque"
    assert not hasattr(engine, "inp"), "the turn's input (history, messages) is not kept"
    # Containers an activity chain never writes stay the shared read-only empties.
    for name in ("pos_subs", "pos_arrivals", "q_subs", "q_buffer", "settled", "requested_versions", "crumbs"):
        value = getattr(engine, name)
        assert not value and not isinstance(value, (dict, set)), name


def test_turns_resumed_from_parked_engines_match_from_scratch_replays():
    warm_cache = EngineCache(16)
    warm_deltas, warm_last = _run_chain(6, warm_cache)
    cold_deltas, cold_last = _run_chain(6, None)
    assert warm_cache.hits == 6  # every turn after the first resumed a parked engine
    assert [[e for e in d] for d in warm_deltas] == [[e for e in d] for d in cold_deltas]
    assert warm_last.kind == cold_last.kind == "completed"
    assert warm_last.output == cold_last.output == "6"


def test_parked_engine_forgets_delivered_tasks_but_still_drops_duplicate_completions():
    cache = EngineCache(16)
    history: list = []
    result = _turn(history, [StartOrchestration(instance=INSTANCE, orchestration="Chain", input="5")], 1_000, cache)
    for step in range(3):  # three activities complete; the fourth is open
        history += result.delta
        cache.put(INSTANCE, result.engine)
        sid = result.worker_items[0].id
        result = _turn(history, [ActivityCompletedMsg(instance=INSTANCE, execution_id=1, id=sid, result=str(step + 1))],
                       2_000 + step, cache)
    history += result.delta
    engine = result.engine
    open_id = result.worker_items[0].id
    # Only the open schedule is still indexed: finished tasks are not kept by a parked engine.
    assert list(engine.by_id) == [open_id]
    assert list(engine.schedules) == [open_id]
    cache.put(INSTANCE, engine)
    # A re-delivered completion of an already-completed activity is still recognised as a
    # duplicate (not "no matching schedule"), alongside the real completion of the open one.
    first_done = next(e.source_event_id for e in history if type(e).__name__ == "ActivityCompleted")
    again = _turn(history, [ActivityCompletedMsg(instance=INSTANCE, execution_id=1, id=first_done, result="1"),
                            ActivityCompletedMsg(instance=INSTANCE, execution_id=1, id=open_id, result="4")],
                  3_000, cache)
    assert cache.hits >= 4
    assert again.kind == "continue", again
    assert [type(e).__name__ for e in again.delta] == ["ActivityCompleted", "ActivityScheduled"]
