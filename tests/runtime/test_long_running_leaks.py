"""A long-running process does not accumulate state for work that is gone (found by a soak probe,
``bench/soak_leaks.py``, which prints the container sizes wave by wave).

- Every ``Client`` registered a commit listener with the provider and never took it off, so a
  process creating a Client per request (or per ``ctx.get_client()`` call: each made a new one)
  kept all of them, and every commit called all of them. Now the provider holds the listener
  weakly (it is removed when the Client is freed) and ``ctx.get_client()`` returns the
  runtime's one Client.
- ``Runtime.shutdown()`` left its wake-up listener on the provider: a restarted runtime stayed
  reachable with its whole engine cache.
- The engine cache admitted short-history engines only while it held fewer than 512 engines:
  engines of instances that another runtime took over, or that were deleted, filled it for good
  and the hit rate fell to zero. Short ones now have their own LRU bound.
"""

from __future__ import annotations

import gc

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.core.replay import EngineCache
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock


def _provider(kind: str, tmp_path, clock=None):
    if kind == "memory":
        return InMemoryProvider(clock)
    return SqliteProvider.open(tmp_path / "leaks.db", clock=clock)


def _listener_count(provider) -> int:
    return (len(getattr(provider, "_commit_listeners", ())) + len(getattr(provider, "_final_listeners", ()))
            + len(provider._listeners))


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_clients_that_are_dropped_leave_no_listener_behind(kind, tmp_path):
    provider = _provider(kind, tmp_path, SimClock())
    before = _listener_count(provider)
    kept = Client(provider)
    with_one = _listener_count(provider)
    assert with_one == before + 2  # one for every commit of an instance, one for its end
    for _ in range(200):
        Client(provider)  # one per request, dropped at once
    gc.collect()
    assert _listener_count(provider) == with_one
    del kept
    gc.collect()
    assert _listener_count(provider) == before


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_stopped_runtime_is_not_kept_by_its_provider(kind, tmp_path):
    provider = _provider(kind, tmp_path)
    before = _listener_count(provider)
    for _ in range(5):
        rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
        rt.start()
        assert _listener_count(provider) == before + 1
        rt.shutdown(1_000)
        assert _listener_count(provider) == before


def test_get_client_in_activities_returns_the_runtimes_one_client(tmp_path):
    provider = SqliteProvider.open(tmp_path / "c.db")
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    clients: list = []

    @rt.register_activity("Peek")
    def peek(ctx, n):
        client = ctx.get_client()
        clients.append(client)
        return client.get_orchestration_status("o").status

    @rt.register_orchestration("O")
    def orch(ctx, _):
        out = []
        for n in range(5):
            out.append((yield ctx.schedule_activity("Peek", n)))
        return out

    before = _listener_count(provider)
    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration("o", "O")
        status = client.wait_for_orchestration("o", 20_000)
    finally:
        rt.shutdown(1_000)
    assert status.status == "Completed" and status.output == ["Running"] * 5
    assert len(clients) == 5 and all(c is clients[0] for c in clients)
    del client
    gc.collect()
    assert _listener_count(provider) <= before + 2  # at most the runtime's own client (its commit and end listeners)


def test_stale_short_engines_age_out_of_the_cache():
    cache = EngineCache(8, short_capacity=3)

    class Engine:  # the cache only stores and hands back engines, and releases those it drops
        def release(self):
            pass

    for n in range(6):
        cache.put(f"stale{n}", Engine(), short=True)
    assert len(cache) == 3  # the three most recent short ones
    long_ones = [Engine() for _ in range(4)]
    for n, engine in enumerate(long_ones):
        cache.put(f"long{n}", engine)
    assert len(cache) == 7
    cache.put("fresh", Engine(), short=True)  # admitted; the oldest short one goes
    assert len(cache) == 7
    assert "fresh" in cache._items and "stale3" not in cache._items
    assert all(f"long{n}" in cache._items for n in range(4))  # long engines are not pushed out by short ones


def test_a_cache_full_of_deleted_instances_still_caches_new_ones():
    """600 short-history instances parked in the cache, then force-deleted: a new workload must
    still resume cached engines (before, the stale 512 kept every new short engine out)."""
    clock = SimClock()
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))

    @rt.register_activity("Inc")
    def inc(ctx, x):
        return x + 1

    @rt.register_orchestration("Wait")
    def wait(ctx, _):
        return (yield ctx.wait_for_event("go"))

    @rt.register_orchestration("Chain")
    def chain(ctx, n):
        x = 0
        for _ in range(n):
            x = yield ctx.schedule_activity("Inc", x)
        return x

    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    for n in range(600):
        client.start_orchestration(f"w{n}", "Wait")
    driver.run_until_quiet()
    cache = rt.orchestration_dispatcher.cache
    assert len(cache) >= 512
    for n in range(600):
        client.delete_instance(f"w{n}", True)
    hits = cache.hits
    for n in range(20):
        client.start_orchestration(f"c{n}", "Chain", 4)
    driver.run_until_quiet()
    assert all(client.get_orchestration_status(f"c{n}").output == 4 for n in range(20))
    assert cache.hits - hits == 20 * 4  # every turn after the first resumed its cached engine


def test_sqlite_forgets_deleted_histories_and_abandoned_fetches(tmp_path):
    """The decoded-history cache drops an instance when it is deleted (before, entries of
    deleted instances stayed until 1,024 newer ones pushed them out, each a whole decoded
    history), and an abandoned fetch leaves nothing in the per-lock bookkeeping."""
    from duroxide_sim.core.events import ExternalRaised

    clock = SimClock()
    provider = SqliteProvider.open(tmp_path / "h.db", clock=clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))

    @rt.register_orchestration("Wait")
    def wait(ctx, _):
        return (yield ctx.wait_for_event("go"))

    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("a", "Wait")
    client.start_orchestration("b", "Wait")
    driver.run_until_quiet()
    client.raise_event("a", "go", 1)
    driver.run_until_quiet()
    assert client.read_execution_history("a", 1)  # a management read caches the decoded history
    client.delete_instance("a", False)
    assert "a" not in provider._hcache

    provider.enqueue_for_orchestrator(ExternalRaised(instance="b", name="other", data="1"), None)
    item = provider.fetch_orchestration_item(30_000)
    assert item is not None and item.instance == "b"
    provider.abandon_orchestration_item(item.lock_token, None, True)
    assert item.lock_token not in provider._known_pins


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_client_freed_while_its_provider_holds_the_listener_lock_does_not_deadlock(kind, tmp_path):
    """The weakref finalizer that takes a freed Client's listener off the provider can run in a
    thread that holds the provider's listener lock (the garbage collector runs finalizers where
    it finds the object dead): that lock must be reentrant."""
    import threading

    provider = _provider(kind, tmp_path, SimClock())
    lock = provider._lock if kind == "memory" else provider._listeners_lock
    box = [Client(provider)]
    finished = threading.Event()

    def free_inside_the_lock():
        with lock:
            box.clear()  # the last reference: the finalizer runs here, in this thread
            gc.collect()
        finished.set()

    thread = threading.Thread(target=free_inside_the_lock, daemon=True)
    thread.start()
    thread.join(10)
    assert finished.is_set(), "removing the listener deadlocked on the provider's lock"
    assert _listener_count(provider) == 0
