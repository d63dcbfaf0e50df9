"""Two runtimes on one SQLite file share the instances' turns.

Each runtime parks engines in its own cache; when the other runtime took the last turns of an
instance, the parked engine is behind the stored history and catches up (walks the missing
events as replay) instead of replaying from scratch. With ``verify_cache`` every third reused
engine's turn is also computed from scratch and must be identical, so a wrong catch-up would
stop the instance (the turn is not committed) and show up as a logged divergence.

The first test drives the two runtimes' dispatchers by hand, alternating turns, so catch-ups
happen on every turn after the second; the second runs both runtimes' threads (which runtime
takes which turn is then up to the scheduler: it checks the outcome, not how many catch-ups).
"""

from __future__ import annotations

import logging

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider

INSTANCES = 24
STEPS = 8


def _register(rt: Runtime) -> None:
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def chain(ctx, n):
        x = 0
        for i in range(n):
            if i % 3 == 2:
                a, b = yield ctx.all([ctx.schedule_activity("inc", x), ctx.schedule_activity("inc", x + 100)])
                x = a["ok"] if "ok" in a else -1
                ctx.set_custom_status(f"{i}:{b}")
            else:
                x = yield ctx.schedule_activity("inc", x)
        return x

    rt.register_orchestration("Chain", chain)


def test_alternating_runtimes_catch_up_their_parked_engines(tmp_path):
    path = tmp_path / "shared.db"
    opts = RuntimeOptions(dispatcher_poll_interval_ms=2)
    providers = [SqliteProvider.open(path) for _ in range(2)]
    runtimes = [Runtime(p, opts, verify_cache=True) for p in providers]
    for rt in runtimes:
        _register(rt)
    client = Client(providers[0])
    client.start_orchestration("chain", "Chain", STEPS)
    turns = 0
    while not client.get_status("chain").is_terminal:
        rt = runtimes[turns % 2]  # turn k on runtime k % 2: each parked engine is one turn behind
        item = rt.orchestration_dispatcher.fetch()
        assert item is not None, f"nothing to fetch after {turns} turns"
        assert rt.orchestration_dispatcher.process(item) is not None  # committed (no divergence)
        turns += 1
        worker = rt.worker_dispatcher
        while (lease := worker.fetch()) is not None:  # the activities this turn scheduled
            assert worker.commit(lease, worker.execute(lease))
    status = client.get_status("chain")
    assert (status.status, status.output) == ("Completed", STEPS)
    caches = [rt.orchestration_dispatcher.cache for rt in runtimes]
    # Turn 0 starts the instance (nothing to reuse), turn 1 finds no engine on the second
    # runtime (a miss), and every later turn catches up the engine parked two turns before.
    assert [c.misses for c in caches] == [0, 1]
    assert sum(c.catchups for c in caches) == turns - 2 > 0
    assert [c.hits for c in caches] == [c.catchups for c in caches]
    for p in providers:
        p.close()


def test_two_runtimes_threads_share_the_turns(tmp_path, caplog):
    path = tmp_path / "shared.db"
    opts = RuntimeOptions(dispatcher_poll_interval_ms=2, orchestration_concurrency=2, worker_concurrency=2)
    providers = [SqliteProvider.open(path) for _ in range(2)]
    runtimes = [Runtime(p, opts, verify_cache=True) for p in providers]
    for rt in runtimes:
        _register(rt)
    caplog.set_level(logging.ERROR, logger="duroxide_sim")
    try:
        for rt in runtimes:
            rt.start()
        client = Client(providers[0])
        for i in range(INSTANCES):
            client.start_orchestration(f"chain-{i}", "Chain", STEPS)
        results = [client.wait_for_orchestration(f"chain-{i}", 60_000) for i in range(INSTANCES)]
    finally:
        for rt in runtimes:
            rt.shutdown()
    assert [(r.status, r.output) for r in results] == [("Completed", STEPS)] * INSTANCES
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
