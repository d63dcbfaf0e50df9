"""Soak test: does anything grow without bound while the live workload stays constant?

Runs waves of a steady, mixed workload on a real ``Runtime`` (``rt.start()``, threads) over a
``SqliteProvider`` file in a temp dir, plus a ``Client``. Every wave starts the same mix, waits
for it, deletes / prunes everything it created through the client's management API, lets the
runtime go idle and then measures. A structure that is still larger after wave N than after
wave N-1, wave after wave, leaks.

Workload per wave (``--scale`` multiplies the counts):

* ``Chain``      activity, activity with retry that fails every other call, 5 ms timer
* ``Waiter``     race(external event "go", 300 ms timer); most get the event from the client
* ``Counter``    KV set + timer + continue-as-new three times (executions pruned afterwards)
* ``Parent``     two sub-orchestrations (``Child``: an ``async def`` activity using to_thread)
* ``AsyncOrch``  ``async def`` orchestration awaiting an ``async def`` activity
* ``Detach``     detached start of another orchestration, then an activity
* ``Sess``       two activities on a session whose id is new every wave
* ``Peek``       an activity that calls ``ctx.get_client()`` (builds a Client per call)
* ``Sleeper``    an activity sleeping past the worker lock timeout (the renewer must renew it)
* ``Forever``    waits for an event that never comes: timed-out client waits, then cancelled
                 (2/3) or force-deleted while running (1/3)
* ``LongAct``    a cooperative 3 s activity; cancelled (activity row deleted, renewal fails,
                 grace timer) or the instance force-deleted while the activity runs

Failure paths injected every wave:

* *ghost fetches*: orchestration items and activities fetched through the runtime's own
  provider object and never acked or abandoned (a dispatcher thread that died): their locks
  expire and the runtime takes them over;
* *failing acks*: ``AckFail`` instances' final ack raises a retryable ProviderError 6 times (the
  dispatcher retries 5 times, abandons, the next fetch commits); ``AckPerm`` instances' first
  ack raises a permanent one (the instance is failed with an infrastructure error);
* *deletes in flight* (above), late ``raise_event`` to deleted instances (orphans), client
  waits that time out, short-lived threads that use the client and the provider.

After each wave: tracemalloc growth by file:line (duroxide_sim only), sizes of the runtime's,
provider's and client's containers (introspected), live object counts by type, RSS, open fds,
threads, the WAL / DB file sizes and the row counts of every table; the commit-listener
fan-out cost. At the end: a restart phase (the Runtime shut down and a new one started on the
same provider a few times) and a summary of what grew per wave.

    python bench/soak_leaks.py                 # default: ~70 s on 2 cores (14 waves + phases)
    python bench/soak_leaks.py --waves 6 --scale 0.5 --no-tracemalloc   # quick look
    python bench/soak_leaks.py --json out.json # every measurement as JSON too

Exit status: 0 when no unexpected workload failure happened (growth is reported, not fatal);
1 when instances did not reach their expected status (the run itself is then suspect).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import threading
import time
import tracemalloc
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from duroxide_sim import (  # noqa: E402
    Backoff, Client, InstanceFilter, PruneOptions, RetryPolicy, Runtime, RuntimeOptions, SqliteProvider,
)
from duroxide_sim.errors import (  # noqa: E402
    InstanceNotFound, OperationTimeout, ProviderError,
)

PKG_DIR = str(ROOT / "duroxide_sim")

# --------------------------------------------------------------------------------------------
# Log capture: the runtime logs warnings on the failure paths; count them instead of printing.
# --------------------------------------------------------------------------------------------


class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.samples: dict[tuple[str, str], str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = (record.levelname, str(record.msg)[:80])
        self.counts[key] += 1
        if key not in self.samples:
            try:
                text = record.getMessage()
            except Exception:  # noqa: BLE001
                text = str(record.msg)
            if record.exc_info:
                import traceback
                text += "\n" + "".join(traceback.format_exception(*record.exc_info))[-1500:]
            self.samples[key] = text[:2000]


LOG = _CountingHandler()
_pkg_logger = logging.getLogger("duroxide_sim")
_pkg_logger.addHandler(LOG)
_pkg_logger.setLevel(logging.INFO)
_pkg_logger.propagate = False

# --------------------------------------------------------------------------------------------
# Handlers
# --------------------------------------------------------------------------------------------

_flaky_seen: set[str] = set()  # instances whose Flaky activity already failed once (cleared per wave)
FAST_RETRY = RetryPolicy(4, Backoff.fixed(5))


def register(rt: Runtime) -> None:
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Flaky")
    def flaky(ctx, x):
        if ctx.instance_id not in _flaky_seen:  # the first call of each instance fails, the retry works
            _flaky_seen.add(ctx.instance_id)
            raise RuntimeError("flaky failure (injected)")
        return x

    @rt.register_activity("AsyncEcho")
    async def async_echo(ctx, x):
        await asyncio.sleep(0.001)
        return await asyncio.to_thread(lambda: x)

    @rt.register_activity("SessionWork")
    def session_work(ctx, x):
        return [ctx.session_id, x]

    @rt.register_activity("PeekStatus")
    def peek_status(ctx, x):
        return ctx.get_client().get_status(ctx.instance_id).status  # a new Client per call

    @rt.register_activity("Sleepy")
    def sleepy(ctx, ms):  # cooperative: stops when cancelled
        deadline = time.monotonic() + ms / 1000
        while time.monotonic() < deadline:
            if ctx.wait_cancelled(0.02):
                return "cancelled"
        return "done"

    @rt.register_activity("SleepPastLock")
    def sleep_past_lock(ctx, ms):
        time.sleep(ms / 1000)
        return ms

    @rt.register_orchestration("Chain")
    def chain(ctx, n):
        a = yield ctx.schedule_activity("Echo", n)
        b = yield ctx.schedule_activity_with_retry("Flaky", n, FAST_RETRY)
        yield ctx.schedule_timer(5)
        return [a, b]

    @rt.register_orchestration("Waiter")
    def waiter(ctx, n):
        r = yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_timer(300))
        return r["index"]

    @rt.register_orchestration("Counter")
    def counter(ctx, k):
        ctx.set_kv_value("k", str(k))
        if k < 3:
            yield ctx.schedule_timer(1)
            yield ctx.continue_as_new(k + 1)
        return k

    @rt.register_orchestration("Child")
    def child(ctx, x):
        return (yield ctx.schedule_activity("AsyncEcho", x))

    @rt.register_orchestration("Parent")
    def parent(ctx, x):
        results = yield ctx.all([ctx.schedule_sub_orchestration("Child", x),
                                 ctx.schedule_sub_orchestration("Child", x + 1)])
        return results

    @rt.register_orchestration("AsyncOrch")
    async def async_orch(ctx, x):
        return await ctx.schedule_activity("AsyncEcho", x)

    @rt.register_orchestration("Detach")
    def detach(ctx, x):
        yield ctx.start_orchestration("Child", f"{ctx.instance_id}-det", x)
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("Sess")
    def sess(ctx, x):
        wave = ctx.instance_id.split("-", 1)[0]
        sid = f"sess-{wave}-{x % 5}"
        a = yield ctx.schedule_activity_on_session("SessionWork", x, sid)
        b = yield ctx.schedule_activity_on_session("SessionWork", x + 1, sid)
        return [a, b]

    @rt.register_orchestration("Peek")
    def peek(ctx, x):
        return (yield ctx.schedule_activity("PeekStatus", x))

    @rt.register_orchestration("Sleeper")
    def sleeper(ctx, ms):
        return (yield ctx.schedule_activity("SleepPastLock", ms))

    @rt.register_orchestration("Forever")
    def forever(ctx, x):
        yield ctx.wait_for_event("never")
        return x

    @rt.register_orchestration("LongAct")
    def long_act(ctx, x):
        return (yield ctx.schedule_activity("Sleepy", 3000))

    @rt.register_orchestration("Long")
    def long_history(ctx, n):  # > 32 events: its decoded history is cached by the provider
        total = 0
        for i in range(n):
            total += (yield ctx.schedule_activity("Echo", i))
        return total

    @rt.register_orchestration("AckFail")
    def ack_fail(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("AckPerm")
    def ack_perm(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))


# --------------------------------------------------------------------------------------------
# Fault injection on the provider object the runtime uses (instance attribute: the group
# commit's ack and ack-and-fetch both call self._ack_orch, so the fast paths stay in use).
# --------------------------------------------------------------------------------------------


class AckFaults:
    RETRYABLE_FAILURES = 6  # 1 try + 5 retries: the dispatcher abandons once, then commits

    def __init__(self, provider: SqliteProvider) -> None:
        self.real = provider._ack_orch
        self.counts: collections.Counter[str] = collections.Counter()
        self.injected = collections.Counter()
        self._lock = threading.Lock()
        provider._ack_orch = self  # type: ignore[method-assign]

    enabled = True

    def __call__(self, db, now, lock_token, execution_id, delta, workers, orchs, metadata, cancelled, op, texts=None):
        inst = delta[0].instance_id if delta and self.enabled else ""
        if "-AckFail-" in inst and metadata.status is not None:
            with self._lock:
                n = self.counts[inst]
                self.counts[inst] += 1
            if n < self.RETRYABLE_FAILURES:
                self.injected["retryable"] += 1
                raise ProviderError(f"{op}: injected retryable ack failure", operation=op, retryable=True)
        elif "-AckPerm-" in inst and metadata.status != "Failed":
            self.injected["permanent"] += 1
            raise ProviderError(f"{op}: injected permanent ack failure", operation=op, retryable=False)
        return self.real(db, now, lock_token, execution_id, delta, workers, orchs, metadata, cancelled, op, texts)

    def new_wave(self) -> None:
        with self._lock:
            self.counts.clear()


def ghost_fetcher(provider: SqliteProvider, n: int, stop: threading.Event, out: collections.Counter) -> None:
    """Fetch items through the runtime's provider and drop them (a dispatcher that died)."""
    while not stop.is_set() and (out["orch"] < n or out["work"] < n):
        try:
            if out["orch"] < n and provider.fetch_orchestration_item(400) is not None:
                out["orch"] += 1
            if out["work"] < n and provider.fetch_work_item(400) is not None:
                out["work"] += 1
        except ProviderError as exc:
            out["errors"] += 1
            out["last_error"] = str(exc)  # type: ignore[assignment]
        stop.wait(0.03)


# --------------------------------------------------------------------------------------------
# One wave
# --------------------------------------------------------------------------------------------

MIX = {  # kind -> (count at scale 1, input, expected final status or None = removed in flight)
    "Chain": 60, "Waiter": 30, "Counter": 20, "Parent": 20, "AsyncOrch": 15, "Detach": 10,
    "Sess": 20, "Peek": 20, "Sleeper": 3, "Forever": 15, "LongAct": 10, "AckFail": 8, "AckPerm": 4, "Long": 3,
}


class WaveStats:
    def __init__(self) -> None:
        self.unexpected: list[str] = []
        self.timeouts_seen = 0
        self.deleted = 0
        self.started = 0


def run_wave(wave: int, client: Client, provider: SqliteProvider, scale: float, ghosts: int,
             faults: AckFaults, peer: bool = False) -> WaveStats:
    st = WaveStats()
    faults.new_wave()
    _flaky_seen.clear()
    ids: dict[str, list[str]] = {}
    for kind, count in MIX.items():
        n = max(1, int(round(count * scale)))
        ids[kind] = [f"w{wave}-{kind}-{i}" for i in range(n)]
    inputs = {"Sleeper": 1500, "Long": 40}
    for kind, lst in ids.items():
        for i, iid in enumerate(lst):
            client.start_orchestration(iid, kind, inputs.get(kind, i))
            st.started += 1

    ghost_stop = threading.Event()
    ghost_counts: collections.Counter = collections.Counter()
    gt = threading.Thread(target=ghost_fetcher, args=(provider, ghosts, ghost_stop, ghost_counts), daemon=True)
    gt.start()

    time.sleep(0.15)
    waiters = ids["Waiter"]
    for iid in waiters[: int(len(waiters) * 0.8)]:
        client.raise_event(iid, "go", True)

    forever = ids["Forever"]
    for iid in forever[:3]:  # client waits that time out
        try:
            client.wait_for_orchestration(iid, timeout_ms=20)
            st.unexpected.append(f"{iid}: wait did not time out")
        except OperationTimeout:
            st.timeouts_seen += 1

    time.sleep(0.3)  # the LongAct activities are running now
    n_del_forever = len(forever) // 3
    forever_del, forever_cancel = forever[:n_del_forever], forever[n_del_forever:]
    longs = ids["LongAct"]
    long_del, long_cancel = longs[: len(longs) // 2], longs[len(longs) // 2:]
    for iid in forever_cancel + long_cancel:
        client.cancel_instance(iid, "soak")
    for iid in forever_del + long_del:  # force-delete while running (activity in flight for LongAct)
        deadline = time.monotonic() + 5
        while True:
            try:
                client.delete_instance(iid, force=True)
                break
            except InstanceNotFound:
                # Its first turn has not committed yet (e.g. a ghost fetch holds its start): the
                # start is still queued and would create it later. Wait for it, then delete.
                if time.monotonic() > deadline:
                    st.unexpected.append(f"force delete {iid}: never created")
                    break
                time.sleep(0.02)
            except ProviderError as exc:
                st.unexpected.append(f"force delete {iid}: {exc}")
                break

    expected: dict[str, tuple[str, ...]] = {}
    for kind, lst in ids.items():
        if kind in ("Forever", "LongAct"):
            continue
        for iid in lst:
            # (a second runtime without the injected faults may take an AckPerm instance's first turn)
            expected[iid] = (("Failed", "Completed") if peer else ("Failed",)) if kind == "AckPerm" else ("Completed",)
    for iid in ids["Detach"]:
        expected[f"{iid}-det"] = ("Completed",)
    for iid in forever_cancel + long_cancel:
        expected[iid] = ("Failed",)

    for iid, want in expected.items():
        try:
            res = client.wait_for_orchestration(iid, timeout_ms=30_000)
        except OperationTimeout:
            st.unexpected.append(f"{iid}: not terminal after 30 s (status {client.get_status(iid).status})")
            continue
        if res.status not in want:
            st.unexpected.append(f"{iid}: {res.status} (wanted {want}): {str(res.error)[:200]}")

    # short-lived threads using the client (per-thread SQLite read connections, waiter signals)
    def short_lived(iid: str) -> None:
        try:
            client.get_status(iid)
            client.wait_for_orchestration(forever_cancel[0], timeout_ms=1)
        except (OperationTimeout, ProviderError):
            pass

    threads = [threading.Thread(target=short_lived, args=(iid,)) for iid in ids["Chain"][:4]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    ghost_stop.set()
    gt.join()

    # --- management: audit reads, prune, delete (single and bulk), late events to deleted ones
    for iid in ids["Long"]:
        client.read_execution_history(iid, 1)  # a client reading a finished instance's history
    for iid in ids["Counter"]:
        try:
            client.prune_executions(iid, PruneOptions(keep_last=1))
        except ProviderError as exc:
            st.unexpected.append(f"prune {iid}: {exc}")
    roots = [iid for iid in expected if "-Child-" not in iid]  # all terminal now
    single, bulk = roots[::2], roots[1::2]
    for iid in single:
        try:
            r = client.delete_instance(iid, force=True)
            st.deleted += r.instances_deleted
        except InstanceNotFound:
            pass
        except ProviderError as exc:
            st.unexpected.append(f"delete {iid}: {exc}")
    try:
        r = client.delete_instance_bulk(InstanceFilter(instance_ids=bulk, limit=len(bulk) + 1))
        st.deleted += r.instances_deleted
    except ProviderError as exc:
        st.unexpected.append(f"bulk delete: {exc}")
    for iid in ids["Chain"][:5]:
        client.raise_event(iid, "late", "after delete")  # orphans: parked, expire after 5 min
    return st


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

_TYPES = ("Runtime", "OrchestrationDispatcher", "EngineCache", "ThreadDriver", "generator", "coroutine", "Connection", "Thread", "Timer", "_Engine", "HistoryView", "CommitWaiter",
          "Client", "ActivityContext", "Signal", "_UnixSelectorEventLoop", "ThreadPoolExecutor", "OrchestrationItem",
          "WorkItemLease", "frame", "cell", "function")


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, val = line.partition(":")
            if key in ("VmRSS", "Threads", "VmHWM"):
                out[key] = int(val.split()[0])
    return out


def fd_kinds() -> collections.Counter:
    kinds: collections.Counter = collections.Counter()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith("-wal"):
            kinds["db-wal"] += 1
        elif target.endswith("-shm"):
            kinds["db-shm"] += 1
        elif target.endswith(".db"):
            kinds["db"] += 1
        else:
            kinds[target.split(":")[0] if ":" in target else "other"] += 1
    return kinds


def db_stats(provider: SqliteProvider) -> dict[str, Any]:
    """Row counts and page figures, read on the provider's own read connection of this thread
    (a separate connection would add file descriptors of its own to what is measured)."""
    with provider._tx("soak_stats", write=False) as conn:
        out: dict[str, Any] = {}
        for table in ("instances", "executions", "history", "orchestrator_queue", "worker_queue", "instance_locks",
                      "sessions", "kv_store", "kv_delta"):
            out[f"rows.{table}"] = conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
        out["rows.orchestrator_queue.parked"] = conn.execute(
            "SELECT COUNT(*) FROM orchestrator_queue WHERE visible_at < -(1 << 61)").fetchone()[0]
        out["db.page_count"] = conn.execute("PRAGMA page_count").fetchone()[0]
        out["db.freelist_count"] = conn.execute("PRAGMA freelist_count").fetchone()[0]
        out["lock_tokens"] = [r[0] for r in conn.execute("SELECT lock_token FROM instance_locks")]
        out["instance_ids"] = {r[0] for r in conn.execute("SELECT instance_id FROM instances")}
        out["leftover"] = [list(r) for r in conn.execute(
            "SELECT i.instance_id, e.status, i.current_execution_id, (SELECT COUNT(*) FROM orchestrator_queue q "
            "WHERE q.instance_id = i.instance_id) FROM instances i LEFT JOIN executions e ON e.instance_id = "
            "i.instance_id AND e.execution_id = i.current_execution_id ORDER BY i.created_seq LIMIT 5")]
        return out


def notify_cost_us(provider: SqliteProvider, n: int = 200) -> float:
    """Cost of one commit notification (fan-out to every registered listener)."""
    t0 = time.perf_counter()
    for _ in range(n):
        provider._notify(["committed"], "soak-nonexistent-instance")
    return (time.perf_counter() - t0) / n * 1e6


def measure(rt: Runtime, client: Client, provider: SqliteProvider, path: str) -> dict[str, Any]:
    gc.collect()
    m: dict[str, Any] = {}
    ps = proc_status()
    m["rss_kib"] = ps.get("VmRSS", 0)
    m["os_threads"] = ps.get("Threads", 0)
    m["py_threads"] = threading.active_count()
    names = collections.Counter(t.name.rsplit("-", 1)[0] if t.name.startswith("duroxide") else
                                ("Timer" if isinstance(t, threading.Timer) else "other") for t in threading.enumerate())
    m["threads.timer"] = names.get("Timer", 0)
    m["fds"] = fd_count()
    for k, v in fd_kinds().items():
        m[f"fds.{k}"] = v
    m["file.db_bytes"] = os.path.getsize(path)
    m["file.wal_bytes"] = os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0
    # provider
    m["p._known_pins"] = len(provider._known_pins)
    m["p._hcache"] = len(provider._hcache)
    m["p._hcache.events"] = sum(len(e[2]) for e in list(provider._hcache.values()))
    m["p._commit_listeners"] = len(provider._commit_listeners)
    m["p._listeners"] = len(provider._listeners)
    m["p._conns"] = len(provider._conns)
    m["p._conns.dead_threads"] = sum(1 for ref, _ in provider._conns if ref() is None or not ref().is_alive())
    m["p._gc_queue"] = len(provider._gc_queue)
    # runtime
    od, wd = rt.orchestration_dispatcher, rt.worker_dispatcher
    m["rt.engine_cache"] = len(od.cache) if od.cache is not None else 0
    renewer = rt._renewer
    m["rt.renewer._watched"] = len(renewer._watched) if renewer is not None else 0
    m["rt.renewer._periods"] = len(renewer._periods) if renewer is not None else 0
    m["rt.worker._sessions"] = len(wd._sessions)
    m["rt.worker._aborts"] = len(wd._aborts)
    m["rt.worker._stopped_tokens"] = len(wd._stopped_tokens)
    drv = rt._driver
    if drv is not None:
        m["rt.driver._threads"] = len(drv._threads)
        m["rt.driver.idle"] = sum(len(lane._idle) for lane in drv._lanes.values())
    # client
    waiter = getattr(client, "_sleep", None)
    m["client.waiters"] = len(getattr(waiter, "_waiters", {}))
    # all CommitWaiters alive (ctx.get_client() builds one per call)
    cws = [o for o in gc.get_objects() if type(o).__name__ == "CommitWaiter"]
    m["all.commitwaiter._waiters"] = sum(len(c._waiters) for c in cws)
    # live objects by type
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    for name in _TYPES:
        m[f"obj.{name}"] = counts.get(name, 0)
    m["obj.total_gc_tracked"] = sum(counts.values())
    # database
    stats = db_stats(provider)
    tokens = set(stats.pop("lock_tokens"))
    existing = stats.pop("instance_ids")
    m["leftover_instances"] = stats.pop("leftover")
    m.update(stats)
    if od.cache is not None:
        with od.cache._lock:
            cached = list(od.cache._items)
        m["rt.engine_cache.dead"] = sum(1 for i in cached if i not in existing)
        m["rt.engine_cache.hits"] = od.cache.hits
        m["rt.engine_cache.misses"] = od.cache.misses
    with provider._hcache_lock:
        hkeys = list(provider._hcache)
    m["p._hcache.dead"] = sum(1 for i in hkeys if i not in existing)
    m["p._known_pins.stale"] = sum(1 for t in list(provider._known_pins) if t not in tokens)
    m["notify_cost_us"] = round(notify_cost_us(provider), 1)
    snap = rt.metrics_snapshot()
    for key in ("provider_errors", "orch_infrastructure_errors", "activity_infra_errors", "orch_poison",
                "activity_poison"):
        m[f"metric.{key}"] = snap[key]
    return m


def quiesce(rt: Runtime, provider: SqliteProvider, path: str, timeout_s: float = 4.0) -> None:
    """Wait until no work is queued or running (parked orphans and far timers aside)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with provider._tx("soak_quiesce", write=False) as conn:
            now = int(time.time() * 1000)
            busy = conn.execute("SELECT (SELECT COUNT(*) FROM worker_queue) + (SELECT COUNT(*) FROM orchestrator_queue "
                                "WHERE visible_at > -(1 << 61) AND visible_at <= ?) + "
                                "(SELECT COUNT(*) FROM instance_locks WHERE locked_until > ?)",
                                (now, now)).fetchone()[0]
        renewer = rt._renewer
        if busy == 0 and (renewer is None or not renewer._watched) and \
                not any(isinstance(t, threading.Timer) for t in threading.enumerate()):
            break
        time.sleep(0.05)
    time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# tracemalloc
# --------------------------------------------------------------------------------------------

def pkg_snapshot() -> tracemalloc.Snapshot:
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, f"{PKG_DIR}/*")])


def top_growth(new: tracemalloc.Snapshot, old: tracemalloc.Snapshot, n: int) -> list[tuple[str, int, int]]:
    out = []
    for stat in new.compare_to(old, "lineno"):
        if stat.size_diff <= 0:
            continue
        frame = stat.traceback[0]
        out.append((f"{os.path.relpath(frame.filename, ROOT)}:{frame.lineno}", stat.size_diff, stat.count_diff))
    out.sort(key=lambda r: -r[1])
    return out[:n]


# --------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------

# metric -> growth per wave above which a steady rise is reported
_THRESH = collections.defaultdict(lambda: 0.5, {
    "rss_kib": 100, "file.db_bytes": 8192, "file.wal_bytes": 8192, "db.page_count": 2, "obj.total_gc_tracked": 200,
    "obj.function": 5, "obj.cell": 5, "notify_cost_us": 0.5, "obj.frame": 2,
})
_SKIP = {"rt.engine_cache.hits", "rt.engine_cache.misses", "metric.provider_errors", "metric.orch_infrastructure_errors", "metric.activity_infra_errors",
         "metric.orch_poison", "metric.activity_poison"}  # cumulative counters by design


#: What a growing metric means (the structure and the code path that does not remove entries).
EXPLAIN = {
    "p._commit_listeners": "SqliteProvider._commit_listeners (providers/sqlite.py:705 add_commit_listener): every Client() "
                           "registers its CommitWaiter._wake (runtime/realtime.py:103-105) and nothing ever removes it; "
                           "ctx.get_client() builds a new Client per call (runtime/runtime.py:65, runtime/activity.py:84)",
    "obj.CommitWaiter": "CommitWaiters kept alive by the provider's listener list (see p._commit_listeners)",
    "notify_cost_us": "each commit calls every registered commit listener (providers/sqlite.py:718-728): O(clients ever made)",
    "rt.engine_cache": "EngineCache entries (core/replay.py:223) of instances whose next turn never comes here "
                       "(force-deleted, or finished on another runtime); only LRU above capacity removes them, and "
                       "runtime/dispatchers.py:312-313 stops admitting short-history engines once 512 are cached",
    "rt.engine_cache.dead": "engine-cache entries whose instance no longer exists (see rt.engine_cache)",
    "obj._Engine": "live engines (suspended generators) held by the engine cache (see rt.engine_cache)",
    "obj.generator": "suspended orchestration generators held by cached engines (see rt.engine_cache)",
    "p._known_pins": "SqliteProvider._known_pins (providers/sqlite.py:995-998): filled by every fetch of an existing "
                     "instance, popped only by an ack that gets past the lock check (providers/sqlite.py:1241); "
                     "abandons, lost locks, never-acked fetches and rolled-back group fetches leave entries "
                     "(cleared wholesale at 4096)",
    "p._known_pins.stale": "_known_pins entries whose lock token no longer exists (see p._known_pins)",
    "rows.orchestrator_queue.parked": "orphan messages (raise_event to deleted instances) parked by design; expire "
                                      "after 5 minutes (providers/_shared.py ORPHAN_RETENTION_MS)",
    "rows.orchestrator_queue": "see rows.orchestrator_queue.parked",
    "p._hcache": "SqliteProvider._hcache (providers/sqlite.py:776): entries are dropped on a terminal ack "
                 "(providers/sqlite.py:1276) but not on delete/prune (providers/sql_admin.py _delete_ids/_prune), "
                 "and management reads re-insert finished histories (providers/sqlite.py:801)",
    "p._listeners": "SqliteProvider._listeners: Runtime.start() adds driver.wake (runtime/runtime.py:145-146), "
                    "shutdown() never removes it: the old driver, dispatchers and engine cache stay reachable",
}


def growth_report(rows: list[dict[str, Any]], warm: int) -> list[tuple[str, float, list[Any]]]:
    flagged = []
    if len(rows) - warm < 3:
        return flagged
    keys = [k for k in rows[-1] if isinstance(rows[-1][k], (int, float)) and k not in _SKIP]
    for k in keys:
        vals = [r.get(k, 0) for r in rows]
        tail = vals[warm:]
        per_wave = (tail[-1] - tail[0]) / (len(tail) - 1)
        rises = sum(1 for a, b in zip(tail, tail[1:], strict=False) if b > a)
        falls = sum(1 for a, b in zip(tail, tail[1:], strict=False) if b < a)
        if per_wave > _THRESH[k] and rises >= max(2, (len(tail) - 1) * 0.6) and falls <= (len(tail) - 1) * 0.25:
            flagged.append((k, per_wave, vals))
    return flagged


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------

def make_runtime(provider: SqliteProvider, args: argparse.Namespace) -> Runtime:
    opts = RuntimeOptions(
        orchestration_concurrency=2, worker_concurrency=4, dispatcher_poll_interval_ms=10,
        worker_lock_timeout_ms=1_000, orchestrator_lock_timeout_ms=1_000,
        session_lock_timeout_ms=1_000, session_idle_timeout_ms=args.session_idle_ms,
        max_sessions_per_runtime=10,
        activity_cancellation_grace_period_ms=200, session_cleanup_interval_ms=1_000,
        unregistered_backoff_base_ms=10, unregistered_backoff_max_ms=100,
    )
    rt = Runtime(provider, opts)
    register(rt)
    return rt


SHOW = ("rss_kib", "fds", "py_threads", "p._known_pins", "p._known_pins.stale", "p._hcache", "p._hcache.events", "p._commit_listeners",
        "p._listeners", "rt.engine_cache", "rt.renewer._watched", "rt.worker._sessions", "client.waiters",
        "file.wal_bytes", "file.db_bytes", "rows.instances", "rows.history", "rows.orchestrator_queue",
        "rows.sessions", "notify_cost_us")


def hit_rate(rt: Runtime, before: tuple[int, int]) -> tuple[float, int, int]:
    cache = rt.orchestration_dispatcher.cache
    if cache is None:
        return 0.0, 0, 0
    hits, misses = cache.hits - before[0], cache.misses - before[1]
    return (hits / (hits + misses) if hits + misses else 0.0), hits, misses


def cache_counts(rt: Runtime) -> tuple[int, int]:
    cache = rt.orchestration_dispatcher.cache
    return (cache.hits, cache.misses) if cache is not None else (0, 0)


def probe_wave(tag: str, client: Client, n: int) -> None:
    """n Chain instances (six turns each: five of them can resume a cached engine), deleted after."""
    ids = [f"{tag}-Chain-{i}" for i in range(n)]
    for i, iid in enumerate(ids):
        client.start_orchestration(iid, "Chain", i)
    for iid in ids:
        client.wait_for_orchestration(iid, timeout_ms=30_000)
    client.delete_instance_bulk(InstanceFilter(instance_ids=ids, limit=n + 1))


def pollution_phase(rt: Runtime, client: Client, provider: SqliteProvider, n: int) -> dict[str, Any]:
    """Fill the engine cache with engines of instances that no longer exist (force-deleted while
    waiting), then look at the hit rate of an ordinary workload before and after."""
    out: dict[str, Any] = {}
    _flaky_seen.clear()
    before = cache_counts(rt)
    probe_wave("probe-a", client, 100)
    out["hit_rate_before"], out["hits_before"], out["misses_before"] = hit_rate(rt, before)
    ids = [f"pollute-{i}" for i in range(n)]
    for iid in ids:
        client.start_orchestration(iid, "Forever", 0)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # every first turn committed (the engine is then cached)
        with provider._tx("soak_pollute", write=False) as db:
            done = db.execute("SELECT COUNT(*) FROM instances WHERE instance_id LIKE 'pollute-%'").fetchone()[0]
        if done >= n:
            break
        time.sleep(0.05)
    for iid in ids:
        client.delete_instance(iid, force=True)
    out["engine_cache_after_deletes"] = len(rt.orchestration_dispatcher.cache or ())
    _flaky_seen.clear()
    before = cache_counts(rt)
    probe_wave("probe-b", client, 100)
    out["hit_rate_after"], out["hits_after"], out["misses_after"] = hit_rate(rt, before)
    out["engine_cache_end"] = len(rt.orchestration_dispatcher.cache or ())
    return out


def hcache_phase(rt: Runtime, client: Client, provider: SqliteProvider, faults: AckFaults, n: int) -> dict[str, Any]:
    """Decoded histories of instances that finished and were read by a client, then deleted:
    are they dropped from the provider's history cache? (Ack faults are off here: a failed
    group write clears the whole cache and would hide the answer.)"""
    faults.enabled = False
    try:
        ids = [f"hcache-Long-{i}" for i in range(n)]
        for iid in ids:
            client.start_orchestration(iid, "Long", 60)
        for iid in ids:
            client.wait_for_orchestration(iid, timeout_ms=30_000)
        after_complete = len(provider._hcache)
        for iid in ids:
            client.read_execution_history(iid, 1)
        after_read = len(provider._hcache)
        client.delete_instance_bulk(InstanceFilter(instance_ids=ids, limit=n + 1))
        with provider._hcache_lock:
            left = [k for k in provider._hcache if k.startswith("hcache-")]
            events = sum(len(provider._hcache[k][2]) for k in left)
        return {"after_complete": after_complete, "after_read": after_read, "dead_after_delete": len(left),
                "dead_events": events}
    finally:
        faults.enabled = True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--waves", type=int, default=14)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies the per-wave instance counts")
    ap.add_argument("--ghosts", type=int, default=8, help="ghost fetches per queue per wave")
    ap.add_argument("--peer-waves", type=int, default=2,
                    help="waves run with a second runtime (own SqliteProvider on the same file) beside the first")
    ap.add_argument("--pollute", type=int, default=520,
                    help="instances force-deleted while cached in the engine-cache phase (0: skip)")
    ap.add_argument("--hcache", type=int, default=40, help="long instances in the history-cache phase")
    ap.add_argument("--restarts", type=int, default=3, help="runtime restarts in the final phase")
    ap.add_argument("--warm", type=int, default=2, help="waves ignored by the growth analysis (caches fill)")
    ap.add_argument("--session-idle-ms", type=int, default=2_000)
    ap.add_argument("--no-tracemalloc", action="store_true")
    ap.add_argument("--json", help="write every measurement to this file")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (its path is printed)")
    args = ap.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="soak-leaks-")
    path = os.path.join(tmp, "soak.db")
    print(f"database: {path}", flush=True)
    t_start = time.monotonic()
    if not args.no_tracemalloc:
        tracemalloc.start(1)
    provider = SqliteProvider.open(path)
    faults = AckFaults(provider)
    rt = make_runtime(provider, args)
    rt.start()
    client = Client(provider)
    rows: list[dict[str, Any]] = []
    snaps: list[tracemalloc.Snapshot] = []
    per_wave_top: list[list[tuple[str, int, int]]] = []
    failures: list[str] = []
    baseline = measure(rt, client, provider, path)
    print("baseline: " + " ".join(f"{k}={baseline.get(k)}" for k in SHOW), flush=True)
    if not args.no_tracemalloc:
        snaps.append(pkg_snapshot())
    restart_rows: list[dict[str, Any]] = []
    peer_rows: list[dict[str, Any]] = []
    pollution: dict[str, Any] = {}
    try:
        for wave in range(1, args.waves + 1):
            t0 = time.monotonic()
            before = cache_counts(rt)
            st = run_wave(wave, client, provider, args.scale, args.ghosts, faults)
            quiesce(rt, provider, path)
            m = measure(rt, client, provider, path)
            m["wave"] = wave
            m["wave_s"] = round(time.monotonic() - t0, 2)
            m["started"] = st.started
            m["deleted"] = st.deleted
            m["engine_hit_rate"] = round(hit_rate(rt, before)[0], 3)
            rows.append(m)
            failures += [f"wave {wave}: {u}" for u in st.unexpected]
            line = f"wave {wave:2d} {m['wave_s']:5.2f}s started={st.started} deleted={st.deleted} " + \
                " ".join(f"{k}={m.get(k)}" for k in SHOW)
            if st.unexpected:
                line += f" UNEXPECTED={len(st.unexpected)}"
            print(line, flush=True)
            if not args.no_tracemalloc:
                snap = pkg_snapshot()
                top = top_growth(snap, snaps[-1], 6)
                per_wave_top.append(top)
                snaps.append(snap)
                if len(snaps) > args.warm + 2:  # keep the warm-up baseline and the latest only
                    del snaps[args.warm + 1:-1]
                print("   tracemalloc growth this wave: " + "; ".join(f"{loc} +{sz}B/+{cnt}" for loc, sz, cnt in top[:4]),
                      flush=True)

        # --- peer phase: a second runtime process-alike on the same file takes turns too ----
        if args.peer_waves:
            provider2 = SqliteProvider.open(path)
            rt2 = make_runtime(provider2, args)
            rt2.start()
            try:
                for w in range(args.peer_waves):
                    dead0 = measure(rt, client, provider, path)["rt.engine_cache.dead"]
                    st = run_wave(500 + w, client, provider, args.scale, 0, faults, peer=True)
                    quiesce(rt, provider, path)
                    quiesce(rt2, provider2, path)
                    m = measure(rt, client, provider, path)
                    m["dead_added"] = m["rt.engine_cache.dead"] - dead0
                    m["peer.engine_cache"] = len(rt2.orchestration_dispatcher.cache or ())
                    m["peer.p._commit_listeners"] = len(provider2._commit_listeners)
                    peer_rows.append(m)
                    failures += [f"peer wave {w}: {u}" for u in st.unexpected]
                    print(f"peer wave {w + 1}: engine_cache={m['rt.engine_cache']} dead={m['rt.engine_cache.dead']} "
                          f"(+{m['dead_added']} this wave; peer's cache {m['peer.engine_cache']}) "
                          f"p._known_pins={m['p._known_pins']}", flush=True)
            finally:
                rt2.shutdown(2_000)
                provider2.close()

        # --- provider history cache: entries of deleted instances ----------------------------
        hc = hcache_phase(rt, client, provider, faults, args.hcache)
        pollution["hcache"] = hc
        print(f"history cache: {hc['after_complete']} entries after {args.hcache} long instances completed, "
              f"{hc['after_read']} after a client read their histories, {hc['dead_after_delete']} entries "
              f"({hc['dead_events']} decoded events) of them left after they were deleted", flush=True)

        # --- engine cache pollution: dead engines keep new short-history ones out -----------
        if args.pollute:
            pollution["wal_bytes_before"] = os.path.getsize(path + "-wal")
            pollution.update(pollution_phase(rt, client, provider, args.pollute))
            print(f"engine cache pollution: hit rate {pollution['hit_rate_before']:.2f} "
                  f"({pollution['hits_before']} hits / {pollution['misses_before']} misses) before, "
                  f"{pollution['hit_rate_after']:.2f} ({pollution['hits_after']} / {pollution['misses_after']}) after "
                  f"{args.pollute} force-deletes; cache size {pollution['engine_cache_after_deletes']} -> "
                  f"{pollution['engine_cache_end']}; WAL {pollution['wal_bytes_before']} -> "
                  f"{os.path.getsize(path + '-wal')} bytes", flush=True)

        # --- restart phase: shut the runtime down and start a new one on the same provider ---
        for r in range(args.restarts):
            rt.shutdown(2_000)
            rt = make_runtime(provider, args)
            rt.start()
            st = run_wave(1000 + r, client, provider, min(args.scale, 0.3), 2, faults)
            quiesce(rt, provider, path)
            m = measure(rt, client, provider, path)
            restart_rows.append(m)
            failures += [f"restart {r}: {u}" for u in st.unexpected]
            print(f"restart {r + 1}: " + " ".join(f"{k}={m.get(k)}" for k in
                  ("p._listeners", "p._commit_listeners", "py_threads", "os_threads", "fds", "rss_kib",
                   "obj.Runtime", "obj.EngineCache", "obj.ThreadDriver", "obj._Engine", "obj.Thread")), flush=True)
    finally:
        rt.shutdown(2_000)

    # --- summary ------------------------------------------------------------------------------
    print()
    print(f"=== summary ({len(rows)} waves, {time.monotonic() - t_start:.1f} s; growth judged after wave {args.warm}) ===")
    flagged = growth_report(rows, args.warm)
    if flagged:
        print("GROWING per wave (steady rise after warm-up):")
        for k, per_wave, vals in sorted(flagged, key=lambda f: f[0]):
            print(f"  {k:34s} +{per_wave:10.1f}/wave   {vals}")
        print("what the growing structures are:")
        for k, _, _ in sorted(flagged, key=lambda f: f[0]):
            if k in EXPLAIN:
                print(f"  {k}: {EXPLAIN[k]}")
    else:
        print("nothing grew steadily after warm-up")
    print("other watched values per wave (bounded / steady):")
    for k in SHOW + ("engine_hit_rate", "p._hcache.dead", "rt.engine_cache.dead", "fds.db", "fds.db-wal",
                     "p._conns", "obj.Connection", "threads.timer", "all.commitwaiter._waiters", "db.freelist_count"):
        if k not in {f[0] for f in flagged}:
            print(f"  {k:34s} {[r.get(k) for r in rows]}")
    if len(snaps) > args.warm + 1 and len(rows) > args.warm:
        print(f"tracemalloc growth (duroxide_sim lines) from wave {args.warm} to wave {len(rows)}:")
        span = len(rows) - args.warm
        for loc, sz, cnt in top_growth(snaps[-1], snaps[args.warm], 14):
            print(f"  {loc:50s} +{sz:9d} B  +{cnt:6d} blocks   ({sz / span:8.0f} B/wave)")
    if restart_rows:
        print("restart phase:", {k: [r.get(k) for r in restart_rows] for k in
                                 ("p._listeners", "obj.Runtime", "obj.EngineCache", "obj._Engine", "obj.Thread")})
    print(f"injected ack failures: {dict(faults.injected)}")
    if LOG.counts:
        print("runtime log records (count, level, message start):")
        for (level, msg), c in LOG.counts.most_common(12):
            print(f"  {c:5d} {level:7s} {msg}")
        for (level, msg), _c in LOG.counts.most_common(4):
            print(f"  sample of {msg!r}: {LOG.samples[(level, msg)][:300]!r}")
        for (level, _msg), text in LOG.samples.items():
            if level in ("ERROR", "CRITICAL"):
                print(f"  sample {level}: {text}")
    if failures:
        print(f"UNEXPECTED outcomes ({len(failures)}):")
        for f in failures[:30]:
            print("  " + f)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"baseline": baseline, "waves": rows, "peer": peer_rows, "pollution": pollution,
                       "restarts": restart_rows, "flagged": [(k, v) for k, v, _ in flagged],
                       "tracemalloc_per_wave": per_wave_top, "failures": failures,
                       "log_counts": [[lv, msg, c] for (lv, msg), c in LOG.counts.items()]}, fh, indent=1, default=str)
    provider.close()
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
