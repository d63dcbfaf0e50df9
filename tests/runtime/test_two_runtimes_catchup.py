"""Two runtimes (threads, real clock) on one SQLite file share the instances' turns.

Each runtime parks engines in its own cache; when the other runtime took the last turns of an
instance, the parked engine is behind the stored history and catches up (walks the missing
events as replay) instead of replaying from scratch. With ``verify_cache`` every third reused
engine's turn is also computed from scratch and must be identical, so a wrong catch-up would
stop the instance (the turn is not committed) and show up as a logged divergence.
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


def test_turns_alternate_between_runtimes_and_parked_engines_catch_up(tmp_path, caplog):
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
    caches = [rt.orchestration_dispatcher.cache for rt in runtimes]
    # Both runtimes took turns, and engines parked on one were caught up after the other moved on.
    assert all(c.hits > 0 for c in caches), [(c.hits, c.catchups, c.misses) for c in caches]
    assert sum(c.catchups for c in caches) > 0, [(c.hits, c.catchups, c.misses) for c in caches]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
