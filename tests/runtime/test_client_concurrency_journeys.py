"""A web application's worth of concurrency against one production Runtime (SPEC §14, §15, §17).

One started Runtime (thread driver, wall clock) on a SqliteProvider file and on the
InMemoryProvider; request-handler threads share ONE Client object or make one Client each, and
at the same time: start orchestrations (also the SAME instance id from all threads), raise /
enqueue event storms into one instance, wait on one instance from many threads (orchestration
and custom-status waits), cancel racing completion, force-delete racing running turns, and read
(status, lists, info, history, metrics, KV, custom status) while all that is written.

What is asserted (SPEC / README / duroxide-python 0.2.2):

* §14 start: "enqueue only; no duplicate check": every concurrent start of one id returns None
  (as duroxide-python does: checked with the peer, its start calls all return None and one
  instance runs once, from the first start in queue order, §3.2 "at most one start item";
  later ones are absorbed/dropped, §7 "Starting onto an existing id is not an error").
* §6.2 queue messages are buffered regardless of subscriptions; §6.1 positional events raised
  after the subscriptions are persisted are delivered: every event exactly once; each sender's
  events in the order it sent them; the orchestration's view equals the history order.
* §14 waits: all waiters wake with the same, correct result; none hang.
* §11.1 cancel: the result is Completed or Failed(`canceled: {reason}`); never both: ONE
  terminal event per execution; status agrees with history.
* §16 F21: "Force-delete during a turn makes its ack fail without resurrecting"; §16 F19 "ids
  reusable"; a stale activity cannot complete into a recreated instance.
* §15.1 "concurrency-safe; each one transaction": reads during writes raise nothing (no
  "database is locked", no "recursive use of cursors", no SQLite thread errors) and never see a
  torn state (two KV keys written in one turn always read equal; status never goes backwards).
* A closed SqliteProvider: "further calls fail" (close's docstring) with a clear ProviderError,
  never a raw sqlite3 error, never a hang; a forked child: works or a clear error, never a hang.

Every thread is a daemon joined with a deadline; every client wait has a timeout.

Found by this file and fixed (each test failed before): a deleted-and-recreated instance could
read the deleted one's history from the SQLite provider's cache (a reader racing the delete
put it back, and the new row got the deleted one's ``created_seq``: now never reused), and hung;
closing a SqliteProvider while other threads read crashed the process (a busy thread's
connection is now closed by that thread when its read ends); a provider used in a forked child
hung on locks copied from the parent (now a clear ProviderError).
"""

from __future__ import annotations

import collections
import faulthandler
import json
import logging
import os
import random
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.core.events import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ExternalEvent,
    OrchestrationCancelRequested,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueEventDelivered,
)
from duroxide_sim.errors import (
    InstanceNotFound,
    InstanceStillRunning,
    OperationTimeout,
    ProviderError,
)

pytestmark = pytest.mark.realtime

#: Dispatcher poll interval: in-process hand-offs wake dispatchers at once; this only bounds the
#: cost of a lost wake-up.
POLL_MS = 50
#: How long any joined thread may take before it is called hung.
HANG_S = 25.0
#: Client wait timeout (ms); far above what the work takes (milliseconds to a second).
WAIT_MS = 20_000
THREADS = 16
KINDS = ("sqlite", "memory", "sqlite_memory")
MODES = ("shared_client", "client_per_thread")

TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


# --- the application ---------------------------------------------------------------------------


class Ledger:
    """The outside world the activities act on: runs counted, effects applied if absent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: collections.Counter[str] = collections.Counter()
        self.effects: dict[str, Any] = {}
        self.applied: collections.Counter[str] = collections.Counter()

    def run(self, key: str, value: Any) -> None:
        with self.lock:
            self.runs[key] += 1
            if key not in self.effects:  # idempotent: check before acting
                self.effects[key] = value
                self.applied[key] += 1


def register(rt: Runtime, ledger: Ledger) -> None:
    @rt.register_activity("Charge")
    def charge(ctx: Any, x: Any) -> Any:
        ledger.run(f"charge:{ctx.instance_id}", x)
        return x * 2

    @rt.register_activity("Step")
    def step(ctx: Any, x: Any) -> Any:
        time.sleep(0.002)
        ledger.run(f"step:{ctx.instance_id}:{x}", x)
        return x

    @rt.register_orchestration("Order")
    def order(ctx: Any, x: Any) -> Any:
        charged = yield ctx.schedule_activity("Charge", x)
        ctx.set_custom_status("charged")
        ctx.set_kv_value("charged", str(charged))
        return {"order": x, "charged": charged}

    @rt.register_orchestration("Collector")
    def collector(ctx: Any, n: Any) -> Any:
        # n positional subscriptions persisted in the first turn, before any event is raised.
        waits = [ctx.wait_for_event("e") for _ in range(n)]
        ctx.set_custom_status("ready")
        results = yield ctx.all(waits)
        return [r["ok"] for r in results]

    @rt.register_orchestration("Actor")
    def actor(ctx: Any, n: Any) -> Any:
        got: list[Any] = []
        while len(got) < n:
            got.append((yield ctx.dequeue_event("q")))
            count = str(len(got))
            ctx.set_kv_value("a", count)  # two keys, one turn: a reader must see them equal
            ctx.set_kv_value("b", count)
            ctx.set_custom_status(f"got:{count}")
            if len(got) % 40 == 0:  # README: end the turn every so often (quiescence limit)
                yield ctx.schedule_timer(0)
        return got

    @rt.register_orchestration("Gate")
    def gate(ctx: Any, _: Any) -> Any:
        ctx.set_custom_status("waiting")
        s = yield ctx.wait_for_event("step")
        ctx.set_custom_status("stepped")
        g = yield ctx.wait_for_event("go")
        return {"step": s, "go": g}

    @rt.register_orchestration("Chain")
    def chain(ctx: Any, spec: Any) -> Any:
        base, n = spec["base"], spec["n"]
        out = []
        for i in range(n):
            out.append((yield ctx.schedule_activity("Step", base + i)))
            ctx.set_kv_value("i", str(i + 1))
        return out


class LogProblems(logging.Handler):
    """Collects the runtime's crash reports (``dispatcher step crashed``) and provider-error
    warnings from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []
        # Not ``self.lock``: that is logging.Handler's own lock, held (re-entrantly) around
        # emit(); a plain Lock under that name deadlocked the first warning logged.
        self._records_lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        with self._records_lock:
            self.records.append(f"{record.levelname} {record.name}: {text}"[:400])

    def crashes(self) -> list[str]:
        return [r for r in self.records if "crashed" in r or r.startswith(("ERROR", "CRITICAL"))]

    def locking(self) -> list[str]:
        keys = ("is locked", "busy", "recursive", "thread", "ProgrammingError")
        return [r for r in self.records if any(k in r for k in keys)]


class Rig:
    """A started production Runtime over one provider, plus the clients handed to threads."""

    def __init__(self, kind: str, tmp_path: Any, mode: str = "shared_client", name: str = "app.db") -> None:
        self.kind = kind
        self.mode = mode
        self.provider: Any = (SqliteProvider.open(tmp_path / name) if kind == "sqlite" else
                              SqliteProvider.in_memory() if kind == "sqlite_memory" else InMemoryProvider())
        self.ledger = Ledger()
        self.runtime = Runtime(self.provider, RuntimeOptions(dispatcher_poll_interval_ms=POLL_MS,
                                                             orchestration_concurrency=4, worker_concurrency=4))
        register(self.runtime, self.ledger)
        self.log = LogProblems()
        logging.getLogger("duroxide_sim").addHandler(self.log)
        self.runtime.start()
        self.client = Client(self.provider)

    def client_for_thread(self) -> Client:
        return self.client if self.mode == "shared_client" else Client(self.provider)

    def close(self) -> None:
        try:
            self.runtime.shutdown(2_000)
        finally:
            logging.getLogger("duroxide_sim").removeHandler(self.log)
            close = getattr(self.provider, "close", None)
            if close is not None:
                close()


@pytest.fixture
def rigs(tmp_path):
    made: list[Rig] = []

    def make(kind: str, mode: str = "shared_client", name: str = "app.db") -> Rig:
        rig = Rig(kind, tmp_path, mode, name)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.close()


# --- thread plumbing ------------------------------------------------------------------------------


def _start(target: Callable[..., Any], *args: Any, name: str) -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    t.start()
    return t


def _join_all(threads: list[threading.Thread], timeout_s: float = HANG_S) -> list[str]:
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    return [t.name for t in threads if t.is_alive()]


def _guard(problems: list[str], what: str, fn: Callable[..., Any], *args: Any) -> Callable[[], None]:
    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            problems.append(f"{what}: {type(exc).__module__}.{type(exc).__name__}: {exc}"[:500])
    return run


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:300]


# --- history checks -------------------------------------------------------------------------------


def history_problems(client: Client, instance: str) -> list[str]:
    """Well-formedness of every execution: ids 1..n consecutive, Started first and only once,
    exactly one terminal event (only ActivityCancelRequested breadcrumbs may follow it), each
    scheduled activity resolved at most once."""
    out: list[str] = []
    executions = client.list_executions(instance)
    if not executions:
        return [f"{instance}: no executions"]
    for ex in executions:
        events = client.read_history_events(instance, ex)
        where = f"{instance} exec {ex}"
        ids = [e.event_id for e in events]
        if ids != list(range(1, len(ids) + 1)):
            out.append(f"{where}: event ids not 1..n: {ids[:20]}")
        if not events or not isinstance(events[0], OrchestrationStarted):
            out.append(f"{where}: does not start with OrchestrationStarted")
        if sum(isinstance(e, OrchestrationStarted) for e in events) != 1:
            out.append(f"{where}: {sum(isinstance(e, OrchestrationStarted) for e in events)} Started events")
        terminals = [i for i, e in enumerate(events) if isinstance(e, TERMINAL)]
        if len(terminals) != 1:
            out.append(f"{where}: {len(terminals)} terminal events "
                       f"{[type(events[i]).__name__ for i in terminals]}")
        elif any(not isinstance(e, ActivityCancelRequested) for e in events[terminals[0] + 1:]):
            out.append(f"{where}: events after the terminal one: "
                       f"{[type(e).__name__ for e in events[terminals[0] + 1:]]}")
        scheduled = {e.event_id for e in events if isinstance(e, ActivityScheduled)}
        resolved = collections.Counter(e.source_event_id for e in events if isinstance(e, (ActivityCompleted, ActivityFailed)))
        dup = {k: v for k, v in resolved.items() if v > 1}
        if dup:
            out.append(f"{where}: activity completions duplicated: {dup}")
        if set(resolved) - scheduled:
            out.append(f"{where}: completions without schedule: {set(resolved) - scheduled}")
    return out


def _terminal_events(client: Client, instance: str) -> list[Any]:
    return [e for e in client.read_history_events(instance) if isinstance(e, TERMINAL)]


def _wait_all(c: Client, ids: list[str], total_s: float) -> dict[str, Any]:
    """The status of each id once terminal, or its last status when the shared deadline passed."""
    deadline = time.monotonic() + total_s
    out: dict[str, Any] = {}
    for inst in ids:
        try:
            out[inst] = c.wait_for_orchestration(inst, max(int((deadline - time.monotonic()) * 1000), 0))
        except OperationTimeout:
            out[inst] = c.get_status(inst)
    return out


def _brief(events: list[Any]) -> list[str]:
    return [f"{e.event_id}:{type(e).__name__}{'(' + e.input + ')' if isinstance(e, (OrchestrationStarted, ActivityScheduled)) else ''}"
            for e in events]


def _fresh_history(rig: Rig, inst: str) -> list[Any] | None:
    """The latest execution's history as stored in the file, read by a newly opened provider
    (no decoded-history cache shared with the running one); None for non-file providers."""
    if rig.kind != "sqlite":
        return None
    fresh = SqliteProvider.open(rig.provider.path)
    try:
        return list(Client(fresh).read_history_events(inst))
    finally:
        fresh.close()


def _stuck_report(rig: Rig, inst: str) -> str:
    """What a stuck instance looks like: status, history as the client reads it and as stored,
    queued work, activity runs."""
    c = rig.client
    seen = _brief(c.read_history_events(inst))
    fresh = _fresh_history(rig, inst)
    stored = "" if fresh is None else f", history as stored in the file {_brief(fresh)}"
    queued = rig.provider.queued_work().get(inst, []) if hasattr(rig.provider, "queued_work") else "?"
    runs = {k: v for k, v in rig.ledger.runs.items() if k.startswith(f"step:{inst}:") or k == f"charge:{inst}"}
    return (f"{inst}: {c.get_status(inst).status}, history as the client reads it {seen}{stored}, queued work "
            f"{queued}, activity runs {dict(sorted(runs.items()))}")


# --- concurrent readers ---------------------------------------------------------------------------


_RANK = {"NotFound": 0, "Running": 1, "Completed": 2, "Failed": 2}


class Readers:
    """Threads that read everything a dashboard reads while the writes happen, checking that no
    read raises (except InstanceNotFound where the instance may not exist yet / any more) and
    that no read is torn: status and custom-status version never go backwards for an instance
    that is not deleted, KV keys "a" and "b" (one turn writes both) always read equal, and every
    history read is a well-formed prefix (ids 1..n, Started first, at most one terminal)."""

    def __init__(self, rig: Rig, watched: Callable[[], list[str]], deletable: set[str] | None = None,
                 threads: int = 4, expect: Callable[[str, Any], str | None] | None = None) -> None:
        self.rig = rig
        self.expect = expect
        self.watched = watched
        self.deletable = deletable or set()
        self.stop = threading.Event()
        self.problems: list[str] = []
        self.reads = 0
        self.threads = [_start(self._loop, i, name=f"reader-{i}") for i in range(threads)]

    def _problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(text[:500])

    def _loop(self, index: int) -> None:
        client = self.rig.client if index % 2 == 0 else Client(self.rig.provider)
        rng = random.Random(index)
        seen_rank: dict[str, int] = {}
        seen_version: dict[str, int] = {}
        seen_kv: dict[str, int] = {}
        while not self.stop.is_set():
            ids = self.watched()
            if not ids:
                time.sleep(0.001)
                continue
            inst = rng.choice(ids)
            op = rng.randrange(10)
            try:
                if op <= 2:
                    st = client.get_orchestration_status(inst)
                    rank = _RANK[st.status]
                    if inst not in self.deletable:
                        if rank < seen_rank.get(inst, 0):
                            self._problem(f"status of {inst} went backwards to {st.status} (rank {rank} after "
                                          f"{seen_rank[inst]})")
                        if st.custom_status_version < seen_version.get(inst, 0):
                            self._problem(f"custom_status_version of {inst} went backwards: "
                                          f"{st.custom_status_version} after {seen_version[inst]}")
                    seen_rank[inst] = max(rank, seen_rank.get(inst, 0))
                    seen_version[inst] = max(st.custom_status_version, seen_version.get(inst, 0))
                    if st.status == "Completed" and st.error is not None:
                        self._problem(f"{inst}: Completed with an error {st.error!r}")
                    wrong = self.expect(inst, st) if self.expect is not None else None
                    if wrong:
                        self._problem(f"torn/wrong status read of {inst}: {wrong}")
                elif op == 3:
                    kv = client.get_kv_all_values(inst)
                    if "a" in kv or "b" in kv:
                        if kv.get("a") != kv.get("b"):
                            self._problem(f"torn KV read of {inst}: a={kv.get('a')!r} b={kv.get('b')!r}")
                        count = int(kv.get("a") or 0)
                        if inst not in self.deletable and count < seen_kv.get(inst, 0):
                            self._problem(f"KV count of {inst} went backwards: {count} after {seen_kv[inst]}")
                        seen_kv[inst] = max(count, seen_kv.get(inst, 0))
                    one = client.get_kv_value(inst, "a")
                    if one is not None and inst not in self.deletable and int(one) < seen_kv.get(inst, 0):
                        self._problem(f"get_kv_value(a) of {inst} went backwards: {one} after {seen_kv[inst]}")
                elif op == 4:
                    listed = client.list_all_instances()
                    if len(listed) != len(set(listed)):
                        self._problem(f"list_all_instances has duplicates: {len(listed)} vs {len(set(listed))}")
                    client.list_instances_by_status(rng.choice(["Running", "Completed", "Failed"]))
                elif op == 5:
                    try:
                        info = client.get_instance_info(inst)
                        if info.instance_id != inst:
                            self._problem(f"get_instance_info({inst}) answered for {info.instance_id}")
                    except InstanceNotFound:
                        pass  # not created yet, or deleted
                elif op == 6:
                    events = client.read_history_events(inst)
                    ids = [e.event_id for e in events]
                    if ids != list(range(1, len(ids) + 1)):
                        self._problem(f"history read of {inst} has ids {ids[:30]}")
                    if events and not isinstance(events[0], OrchestrationStarted):
                        self._problem(f"history read of {inst} does not start with Started")
                    if sum(isinstance(e, TERMINAL) for e in events) > 1:
                        self._problem(f"history read of {inst} has several terminal events")
                elif op == 7:
                    m = client.get_system_metrics()
                    if m.running_instances + m.completed_instances + m.failed_instances > m.total_instances:
                        self._problem(f"inconsistent metrics {m}")
                    d = client.get_queue_depths()
                    if d.orchestrator_queue < 0 or d.worker_queue < 0:
                        self._problem(f"negative queue depth {d}")
                elif op == 8:
                    try:
                        client.get_orchestration_stats(inst)
                    except InstanceNotFound:
                        pass
                else:
                    client.list_executions(inst)
                    client.get_instance_tree(inst)
                self.reads += 1
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self._problem(f"reader {index} op {op} on {inst}: {_describe(exc)}")

    def finish(self) -> list[str]:
        self.stop.set()
        hung = _join_all(self.threads, 10.0)
        if hung:
            self.problems.append(f"reader threads hung: {hung}")
        return self.problems


# --- 1. the journey: 16 request handlers on one runtime -------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_sixteen_request_handlers_journey_counts_every_instance_event_and_effect_exactly(rigs, kind, mode):
    """16 handler threads at once: each starts its own orders, starts three shared instance ids
    (the same ids from every thread), raises positional events into one collector, enqueues
    queue messages into one actor, polls statuses, and then waits for everything (16 waiters per
    shared instance). Dashboard readers run throughout. Totals at the end: every started
    instance exists once, completed once with the right output; every event delivered exactly
    once, per-sender order kept, the orchestration's order = the history's; every activity ran,
    its effect applied once; histories well formed; no runtime crash or locking warning."""
    rig = rigs(kind, mode)
    per_thread_orders, shared_ids, raise_per, enqueue_per = 3, 3, 4, 6
    n_events, n_msgs = THREADS * raise_per, THREADS * enqueue_per
    rig.client.start_orchestration("collector", "Collector", n_events)
    rig.client.start_orchestration("actor", "Actor", n_msgs)
    # §6.1: positional events are delivered only once the subscriptions are persisted.
    st = rig.client.wait_for_status_change("collector", 0, timeout_ms=WAIT_MS)
    assert (st.status, st.custom_status) == ("Running", "ready"), vars(st)

    orders = [f"order-{t}-{k}" for t in range(THREADS) for k in range(per_thread_orders)]
    dups = [f"dup-{j}" for j in range(shared_ids)]
    started: list[str] = []
    started_lock = threading.Lock()

    def expect(inst: str, st: Any) -> str | None:
        # Order's completing turn also sets its custom status: a Completed read must carry it,
        # a Running one must not (one ack writes both).
        if not inst.startswith(("order-", "dup-")):
            return None
        if st.status == "Completed":
            x = st.output["order"] if isinstance(st.output, dict) else None
            ok = (x is not None and st.output == {"order": x, "charged": 2 * x}
                  and (st.custom_status, st.custom_status_version) == ("charged", 1)
                  and (not inst.startswith("order-") or x == int(inst.split("-")[1]) * 10 + int(inst.split("-")[2])))
        elif st.status in ("Running", "NotFound"):
            ok = (st.output, st.error, st.custom_status, st.custom_status_version) == (None, None, None, 0)
        else:
            ok = False
        return None if ok else str(vars(st))

    readers = Readers(rig, lambda: list(started) + ["collector", "actor"], expect=expect)
    barrier = threading.Barrier(THREADS)
    problems: list[str] = []
    results: dict[str, list[Any]] = collections.defaultdict(list)
    results_lock = threading.Lock()

    def handler(t: int) -> None:
        c = rig.client_for_thread()
        barrier.wait(timeout=HANG_S)
        mine = [f"order-{t}-{k}" for k in range(per_thread_orders)]
        for j, dup in enumerate(dups):
            assert c.start_orchestration(dup, "Order", 1000 + t) is None  # same id from 16 threads
            if j < len(mine):
                assert c.start_orchestration(mine[j], "Order", t * 10 + j) is None
            with started_lock:
                started.extend([dup] + ([mine[j]] if j < len(mine) else []))
        for k in range(max(raise_per, enqueue_per)):
            if k < raise_per:
                c.raise_event("collector", "e", {"t": t, "k": k})
            if k < enqueue_per:
                c.enqueue_event("actor", "q", {"t": t, "k": k})
            if k % 2 == 0:
                c.get_status(mine[k % len(mine)])
        for inst in mine:
            st = c.wait_for_orchestration(inst, WAIT_MS)
            with results_lock:
                results[inst].append((st.status, st.output, st.error))
        for inst in [*dups, "collector", "actor"]:
            st = c.wait_for_orchestration(inst, WAIT_MS)
            with results_lock:
                results[inst].append((st.status, st.output, st.error))
        st = c.wait_for_status_change("actor", 0, timeout_ms=WAIT_MS)
        assert st.status == "Completed" and st.custom_status == f"got:{n_msgs}", vars(st)

    threads = [_start(_guard(problems, f"handler {t}", handler, t), name=f"handler-{t}") for t in range(THREADS)]
    hung = _join_all(threads)
    read_problems = readers.finish()
    assert not hung, f"handler threads hung: {hung}"
    assert not problems, problems[:5]
    assert not read_problems, read_problems[:10]

    c = rig.client
    # --- every started instance exists exactly once, completed once, right output ---------------
    every = set(orders) | set(dups) | {"collector", "actor"}
    listed = c.list_all_instances()
    assert sorted(listed) == sorted(every), f"extra {set(listed) - every}, missing {every - set(listed)}"
    for inst in orders:
        t, k = map(int, inst.split("-")[1:])
        x = t * 10 + k
        assert results[inst] == [("Completed", {"order": x, "charged": 2 * x}, None)], (inst, results[inst])
    for dup in dups:
        outcomes = {json.dumps(r, sort_keys=True) for r in results[dup]}
        assert len(results[dup]) == THREADS and len(outcomes) == 1, (dup, results[dup])
        status, output, _ = results[dup][0]
        assert status == "Completed" and output["order"] in range(1000, 1000 + THREADS), results[dup][0]
        assert output["charged"] == 2 * output["order"]
        started_ev = c.read_history_events(dup, 1)[0]
        assert json.loads(started_ev.input) == output["order"], "output is not from the start that ran"
        assert c.list_executions(dup) == [1]
    # --- events: each exactly once, per-sender order, orchestration order == history order ------
    for inst, n, per, kind_ev in (("collector", n_events, raise_per, ExternalEvent),
                                  ("actor", n_msgs, enqueue_per, QueueEventDelivered)):
        outs = results[inst]
        assert len(outs) == THREADS and all(o == outs[0] for o in outs), (inst, outs[:2])
        status, got, _ = outs[0]
        assert status == "Completed", outs[0]
        keys = [(m["t"], m["k"]) for m in got]
        dup_keys = [k for k, v in collections.Counter(keys).items() if v > 1]
        missing = {(t, k) for t in range(THREADS) for k in range(per)} - set(keys)
        assert not dup_keys and not missing and len(keys) == n, \
            f"{inst}: duplicated {dup_keys[:5]}, lost {sorted(missing)[:5]}, {len(keys)} of {n}"
        for t in range(THREADS):
            order = [k for (tt, k) in keys if tt == t]
            assert order == sorted(order), f"{inst}: sender {t}'s events out of order: {order}"
        in_history = [json.loads(e.data) for e in c.read_history_events(inst) if isinstance(e, kind_ev)]
        assert in_history == got, f"{inst}: the orchestration's order differs from the history's"
    # --- effects and histories ---------------------------------------------------------------
    for inst in [*orders, *dups]:
        assert rig.ledger.runs[f"charge:{inst}"] >= 1, f"{inst}: Charge never ran"
        assert rig.ledger.applied[f"charge:{inst}"] == 1, f"{inst}: effect applied {rig.ledger.applied[f'charge:{inst}']}x"
    for dup in dups:  # no fault was injected: the one instance ran its activity once
        assert rig.ledger.runs[f"charge:{dup}"] == 1, f"{dup}: Charge ran {rig.ledger.runs[f'charge:{dup}']}x"
    bad = [p for inst in sorted(every) for p in history_problems(c, inst)]
    assert not bad, bad[:10]
    m = c.get_system_metrics()
    assert (m.total_instances, m.completed_instances, m.running_instances, m.failed_instances) == \
        (len(every), len(every), 0, 0), m
    kv = c.get_kv_all_values("actor")
    assert kv == {"a": str(n_msgs), "b": str(n_msgs)}, kv
    assert c.get_kv_value(orders[0], "charged") == str(2 * 0), c.get_kv_value(orders[0], "charged")
    assert not rig.log.crashes(), rig.log.crashes()[:5]
    assert not rig.log.locking(), rig.log.locking()[:5]
    assert readers.reads > 50, f"the readers barely ran ({readers.reads} reads)"


# --- 2. the same instance id started from 16 threads at once -------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_same_instance_id_started_from_16_threads_runs_exactly_one_instance(rigs, kind, mode):
    """8 ids, each started by all 16 threads at once (released by a barrier per id), each
    thread with its own input; for the last 4 ids half the threads start another workflow
    (Chain) under the same id. SPEC §14: no duplicate check, so every call returns None (as
    duroxide-python); §3.2: one start item per batch, later ones absorbed: exactly one instance
    per id, one execution, one Started, one terminal, output and instance row from the start
    its Started event records, its activities run once; all 16 waiters see that same result."""
    rig = rigs(kind, mode)
    ids = [f"same-{j}" for j in range(8)]
    barrier = threading.Barrier(THREADS)
    problems: list[str] = []
    returned: list[Any] = []
    seen: dict[str, list[Any]] = collections.defaultdict(list)
    lock = threading.Lock()

    def starter(t: int) -> None:
        c = rig.client_for_thread()
        for j, inst in enumerate(ids):
            barrier.wait(timeout=HANG_S)
            if j >= 4 and t % 2:
                r = c.start_orchestration(inst, "Chain", {"base": 100 * t, "n": 2})
            else:
                r = c.start_orchestration(inst, "Order", 100 * t)
            with lock:
                returned.append(r)
        for inst in ids:
            st = c.wait_for_orchestration(inst, WAIT_MS)
            with lock:
                seen[inst].append((st.status, json.dumps(st.output, sort_keys=True)))

    hung = _join_all([_start(_guard(problems, f"starter {t}", starter, t), name=f"starter-{t}") for t in range(THREADS)])
    assert not hung, f"starters hung: {hung}"
    assert not problems, problems[:5]
    assert returned == [None] * (THREADS * len(ids))
    c = rig.client
    assert sorted(c.list_all_instances()) == sorted(ids)
    for inst in ids:
        assert len(set(seen[inst])) == 1 and len(seen[inst]) == THREADS, (inst, seen[inst])
        status, output = seen[inst][0]
        output = json.loads(output)
        started = c.read_history_events(inst, 1)[0]
        x = json.loads(started.input)
        assert c.get_instance_info(inst).orchestration_name == started.name, (inst, started.name)
        if started.name == "Order":
            assert status == "Completed" and output == {"order": x, "charged": 2 * x} and x % 100 == 0, (inst, output, x)
            assert rig.ledger.runs[f"charge:{inst}"] == 1, (inst, rig.ledger.runs[f"charge:{inst}"])
        else:
            b = x["base"]
            assert status == "Completed" and output == [b, b + 1], (inst, output, x)
            assert [rig.ledger.runs[f"step:{inst}:{v}"] for v in (b, b + 1)] == [1, 1]
            assert rig.ledger.runs[f"charge:{inst}"] == 0
        assert c.list_executions(inst) == [1]
        assert history_problems(c, inst) == []
    # Starting a completed id once more is not an error and changes nothing (§7, §14).
    before = c.read_history_events(ids[0])
    c.start_orchestration(ids[0], "Order", 7)
    time.sleep(0.3)
    assert c.read_history_events(ids[0]) == before
    assert not rig.log.crashes(), rig.log.crashes()[:5]


# --- 3. event storms into one instance ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_enqueue_storm_right_after_start_delivers_each_message_once_in_sender_order(rigs, kind, mode):
    """The actor is started and, at once (its first turn not yet run), 16 threads enqueue 10
    messages each while readers poll its KV (two keys written by each turn: never torn),
    custom status (versions never go back) and status. SPEC §6.2: every message buffered and
    delivered exactly once; README: messages sent while the start is pending are kept; each
    sender's messages in its send order; the delivered order equals the history's."""
    rig = rigs(kind, mode)
    per = 10
    n = THREADS * per
    rig.client.start_orchestration("storm", "Actor", n)
    readers = Readers(rig, lambda: ["storm"])
    barrier = threading.Barrier(THREADS)
    problems: list[str] = []

    def sender(t: int) -> None:
        c = rig.client_for_thread()
        barrier.wait(timeout=HANG_S)
        for k in range(per):
            c.enqueue_event("storm", "q", {"t": t, "k": k})
        last = 0
        while True:  # custom status polling: versions only grow until the instance completes
            st = c.wait_for_status_change("storm", last, timeout_ms=WAIT_MS)
            assert st.custom_status_version >= last, (st.custom_status_version, last)
            if st.is_terminal:
                break
            last = st.custom_status_version

    hung = _join_all([_start(_guard(problems, f"sender {t}", sender, t), name=f"sender-{t}") for t in range(THREADS)])
    read_problems = readers.finish()
    assert not hung, f"senders hung: {hung}"
    assert not problems, problems[:5]
    assert not read_problems, read_problems[:10]
    st = rig.client.wait_for_orchestration("storm", WAIT_MS)
    assert st.status == "Completed", vars(st)
    keys = [(m["t"], m["k"]) for m in st.output]
    assert sorted(keys) == sorted((t, k) for t in range(THREADS) for k in range(per)), \
        f"lost/duplicated: {len(keys)} delivered, {len(set(keys))} distinct of {n}"
    for t in range(THREADS):
        order = [k for tt, k in keys if tt == t]
        assert order == list(range(per)), f"sender {t}'s messages out of order: {order}"
    delivered = [json.loads(e.data) for e in rig.client.read_history_events("storm") if isinstance(e, QueueEventDelivered)]
    assert delivered == st.output
    assert history_problems(rig.client, "storm") == []
    assert not rig.log.crashes(), rig.log.crashes()[:5]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_raise_event_storm_to_persisted_subscriptions_delivers_each_event_once(rigs, kind, mode):
    """128 positional subscriptions persisted (status "ready"), then 16 threads raise 8 events
    each and all 16 wait for the result. SPEC §6.1: arrivals after the subscriptions are
    persisted are delivered first-to-first: every event exactly once, the join's order equals
    the history's ExternalEvent order, each sender's events in send order."""
    rig = rigs(kind, mode)
    per = 8
    n = THREADS * per
    rig.client.start_orchestration("col", "Collector", n)
    st = rig.client.wait_for_status_change("col", 0, timeout_ms=WAIT_MS)
    assert st.custom_status == "ready", vars(st)
    barrier = threading.Barrier(THREADS)
    problems: list[str] = []
    outs: list[Any] = []

    def raiser(t: int) -> None:
        c = rig.client_for_thread()
        barrier.wait(timeout=HANG_S)
        for k in range(per):
            c.raise_event("col", "e", {"t": t, "k": k})
        outs.append(c.wait_for_orchestration("col", WAIT_MS))

    hung = _join_all([_start(_guard(problems, f"raiser {t}", raiser, t), name=f"raiser-{t}") for t in range(THREADS)])
    assert not hung, f"raisers hung: {hung}"
    assert not problems, problems[:5]
    assert len(outs) == THREADS and all(vars(o) == vars(outs[0]) for o in outs)
    assert outs[0].status == "Completed", vars(outs[0])
    keys = [(m["t"], m["k"]) for m in outs[0].output]
    assert sorted(keys) == sorted((t, k) for t in range(THREADS) for k in range(per))
    for t in range(THREADS):
        assert [k for tt, k in keys if tt == t] == list(range(per)), t
    raised = [json.loads(e.data) for e in rig.client.read_history_events("col") if isinstance(e, ExternalEvent)]
    assert raised == outs[0].output
    assert history_problems(rig.client, "col") == []


# --- 4. many waiters on one instance ----------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", KINDS)
def test_32_waiters_on_one_instance_all_wake_with_the_same_result(rigs, kind, mode):
    """16 threads in wait_for_status_change(last_seen = the current version) and 16 in
    wait_for_orchestration on one Gate instance. Raising "step" must wake every status waiter
    with custom status "stepped" (SPEC §14: returns once version > last_seen); raising "go"
    must wake every orchestration waiter with the Completed output. All within seconds."""
    rig = rigs(kind, mode)
    rig.client.start_orchestration("gate", "Gate")
    st = rig.client.wait_for_status_change("gate", 0, timeout_ms=WAIT_MS)
    assert st.custom_status == "waiting", vars(st)
    v0 = st.custom_status_version
    problems: list[str] = []
    status_seen: list[Any] = []
    done_seen: list[Any] = []
    ready = threading.Barrier(2 * THREADS + 1)

    def status_waiter() -> None:
        c = rig.client_for_thread()
        ready.wait(timeout=HANG_S)
        t0 = time.monotonic()
        st = c.wait_for_status_change("gate", v0, timeout_ms=WAIT_MS)
        status_seen.append((st.status, st.custom_status, st.custom_status_version > v0, time.monotonic() - t0))

    def done_waiter() -> None:
        c = rig.client_for_thread()
        ready.wait(timeout=HANG_S)
        st = c.wait_for_orchestration("gate", WAIT_MS)
        done_seen.append((st.status, json.dumps(st.output, sort_keys=True)))

    threads = [_start(_guard(problems, "status waiter", status_waiter), name=f"sw-{i}") for i in range(THREADS)]
    threads += [_start(_guard(problems, "done waiter", done_waiter), name=f"dw-{i}") for i in range(THREADS)]
    ready.wait(timeout=HANG_S)
    time.sleep(0.1)  # every waiter is inside its wait
    rig.client.raise_event("gate", "step", "s")
    deadline = time.monotonic() + 10
    while len(status_seen) < THREADS and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(status_seen) == THREADS, f"only {len(status_seen)} of {THREADS} status waiters woke"
    assert not done_seen, f"orchestration waiters returned before completion: {done_seen}"
    rig.client.raise_event("gate", "go", "g")
    hung = _join_all(threads)
    assert not hung, f"waiters hung: {hung}"
    assert not problems, problems[:5]
    assert {s[:3] for s in status_seen} == {("Running", "stepped", True)}, status_seen
    assert done_seen == [("Completed", json.dumps({"go": "g", "step": "s"}, sort_keys=True))] * THREADS


# --- 5. cancel racing completion ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_racing_completion_gives_exactly_one_terminal_outcome(rigs, kind):
    """Per instance, two threads released together: one raises the event that completes it,
    one cancels it (SPEC §11.1); and Order instances cancelled a few ms after their start,
    racing their own completion. Each ends Completed (right output) or Failed with
    ``canceled: race`` - never both: ONE terminal event, get_status agreeing with history, a
    cancel request recorded at most once; a later cancel changes nothing."""
    rig = rigs(kind)
    c = rig.client
    gates = [f"cg-{i}" for i in range(12)]
    for g in gates:
        c.start_orchestration(g, "Gate")
    for g in gates:  # §6.1: raise only once the subscription is persisted
        assert c.wait_for_status_change(g, 0, timeout_ms=WAIT_MS).custom_status == "waiting"
        c.raise_event(g, "step", 1)
    for g in gates:
        st = c.wait_for_status_change(g, 1, timeout_ms=WAIT_MS)
        assert st.custom_status == "stepped", vars(st)
    problems: list[str] = []
    threads = []
    for i, g in enumerate(gates):
        b = threading.Barrier(2)

        def go(g: str = g, b: threading.Barrier = b) -> None:
            b.wait(timeout=HANG_S)
            rig.client_for_thread().raise_event(g, "go", 2)

        def cancel(g: str = g, b: threading.Barrier = b, i: int = i) -> None:
            cl = Client(rig.provider)
            b.wait(timeout=HANG_S)
            if i % 3 == 0:
                time.sleep(0.001)
            cl.cancel_instance(g, "race")

        threads += [_start(_guard(problems, f"go {g}", go), name=f"go-{g}"),
                    _start(_guard(problems, f"cancel {g}", cancel), name=f"cancel-{g}")]
    orders = [f"co-{i}" for i in range(12)]
    for i, o in enumerate(orders):
        c.start_orchestration(o, "Order", i)
        threads.append(_start(_guard(problems, f"cancel {o}", lambda o=o, i=i: (time.sleep(0.0005 * i),
                                                                               c.cancel_instance(o, "race"))),
                              name=f"cancel-{o}"))
    hung = _join_all(threads)
    assert not hung and not problems, (hung, problems[:5])
    outcomes = collections.Counter()
    for inst in gates + orders:
        st = c.wait_for_orchestration(inst, WAIT_MS)
        terminals = _terminal_events(c, inst)
        assert len(terminals) == 1, f"{inst}: terminal events {[type(e).__name__ for e in terminals]}"
        expected = {"step": 1, "go": 2} if inst in gates else {"order": int(inst[3:]), "charged": 2 * int(inst[3:])}
        if st.status == "Completed":
            assert st.output == expected and isinstance(terminals[0], OrchestrationCompleted), (inst, vars(st))
        else:
            assert st.status == "Failed" and st.error == "canceled: race", (inst, vars(st))
            assert isinstance(terminals[0], OrchestrationFailed)
        requests = [e for e in c.read_history_events(inst) if isinstance(e, OrchestrationCancelRequested)]
        assert len(requests) <= 1, (inst, requests)
        if st.status == "Failed":
            assert len(requests) == 1
        outcomes[st.status] += 1
        assert history_problems(c, inst) == []
    before = {inst: vars(c.get_status(inst)) for inst in gates[:3]}
    for inst in gates[:3]:  # cancelling a finished instance changes nothing
        c.cancel_instance(inst, "late")
    time.sleep(0.3)
    for inst in gates[:3]:
        assert len(_terminal_events(c, inst)) == 1
        assert vars(c.get_status(inst)) == before[inst]
    assert sum(outcomes.values()) == len(gates) + len(orders)
    assert not rig.log.crashes(), rig.log.crashes()[:5]


# --- 6. delete racing running turns ---------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_force_delete_racing_running_turns_never_resurrects_and_the_id_is_reusable(rigs, kind):
    """Chains of 25 sequential activities run (a turn every few ms) while a deleter force-deletes
    each once it has made progress, and readers read everything. SPEC §16 F21: the in-flight
    turn's ack fails without resurrecting: the instance is NotFound at once and stays so (no
    history, no KV, no queued work, not listed). Then the id is started again (F19) and runs
    from scratch: one execution, its own results only (no stale activity completes into it).
    Also: non-forced deletes racing an Order's completion give InstanceStillRunning (or
    InstanceNotFound before its first commit) until it is done, then delete it."""
    rig = rigs(kind)
    c = rig.client
    chains = [f"del-{i}" for i in range(8)]
    deleted: set[str] = set(chains)
    readers = Readers(rig, lambda: chains, deletable=deleted)
    for inst in chains:
        c.start_orchestration(inst, "Chain", {"base": 0, "n": 25})
    problems: list[str] = []
    delete_results: dict[str, Any] = {}

    def deleter() -> None:
        for inst in chains:
            cl = Client(rig.provider)
            cl.wait_for_kv_value(inst, "i", WAIT_MS)  # it has made progress
            delete_results[inst] = cl.delete_instance(inst, True)

    hung = _join_all([_start(_guard(problems, "deleter", deleter), name="deleter")])
    assert not hung and not problems, (hung, problems[:5])
    for inst in chains:
        assert delete_results[inst].instances_deleted == 1, (inst, delete_results[inst])
    time.sleep(0.5)  # in-flight turns and activities of the deleted instances end by now
    read_problems = readers.finish()
    assert not read_problems, read_problems[:10]
    for inst in chains:
        st = c.get_status(inst)
        assert st.status == "NotFound", f"{inst} resurrected after delete: {vars(st)}"
        assert c.read_history_events(inst) == [] and c.list_executions(inst) == []
        assert c.get_kv_all_values(inst) == {}
        assert c.get_orchestration_stats(inst) is None  # (unknown and nothing queued for it)
    assert not set(c.list_all_instances()) & set(chains)
    # The ids are reusable: fresh runs with other inputs, nothing stale completes into them.
    # Even ones restart with the very input they had (a cached engine of the deleted run must
    # not be resumed), odd ones with another.
    again = {inst: {"base": 0, "n": 25} if i % 2 == 0 else {"base": 1000, "n": 3} for i, inst in enumerate(chains)}
    for inst in chains:
        c.start_orchestration(inst, "Chain", again[inst])
    finals = _wait_all(c, chains, 10.0)
    stuck = [_stuck_report(rig, inst) for inst in chains if not finals[inst].is_terminal]
    assert not stuck, f"{len(stuck)} recreated instance(s) never finished: {stuck}"
    for inst in chains:
        st = finals[inst]
        b, n = again[inst]["base"], again[inst]["n"]
        assert (st.status, st.output) == ("Completed", list(range(b, b + n))), (inst, vars(st))
        assert sum(isinstance(e, ActivityScheduled) for e in c.read_history_events(inst)) == n
        assert c.list_executions(inst) == [1]
        assert history_problems(c, inst) == []
    # Non-forced deletes racing completion.
    orders = [f"nd-{i}" for i in range(6)]
    answers: dict[str, collections.Counter] = {o: collections.Counter() for o in orders}

    def polite_deleter(o: str) -> None:
        cl = Client(rig.provider)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                cl.delete_instance(o, False)
                answers[o]["deleted"] += 1
                return
            except InstanceStillRunning:
                answers[o]["InstanceStillRunning"] += 1
            except InstanceNotFound:
                answers[o]["InstanceNotFound"] += 1
            time.sleep(0.001)
        raise AssertionError(f"{o} never deleted: {answers[o]}")

    threads = []
    for i, o in enumerate(orders):
        c.start_orchestration(o, "Order", i)
        threads.append(_start(_guard(problems, f"polite {o}", polite_deleter, o), name=f"polite-{o}"))
    hung = _join_all(threads)
    assert not hung and not problems, (hung, problems[:5])
    time.sleep(0.2)
    for o in orders:
        assert answers[o]["deleted"] == 1 and c.get_status(o).status == "NotFound", (o, answers[o])
    assert not rig.log.crashes(), rig.log.crashes()[:5]


@pytest.mark.parametrize("kind", KINDS)
def test_history_reads_racing_a_delete_do_not_break_the_recreated_instance(rigs, kind):
    """A history viewer (4 threads reading ``read_execution_history`` of one id in a loop) while
    that instance is force-deleted mid-run and at once started again under the same id (SPEC
    §16 F19: ids reusable; F21), up to 25 cycles: every new run must complete with its own
    results. A stale copy of the deleted run's history (read by a viewer whose snapshot
    predates the delete) must never be taken for the new run's."""
    rig = rigs(kind)
    c = rig.client
    stop = threading.Event()
    problems: list[str] = []

    def viewer() -> None:
        cl = Client(rig.provider)
        while not stop.is_set():
            cl.read_execution_history("cyc", 1)

    viewers = [_start(_guard(problems, "viewer", viewer), name=f"viewer-{i}") for i in range(4)]
    failure = None
    t0 = time.monotonic()
    try:
        for cycle in range(25):
            if time.monotonic() - t0 > 6:
                break
            c.start_orchestration("cyc", "Chain", {"base": 0, "n": 25})
            try:
                Client(rig.provider).wait_for_kv_value("cyc", "i", 3_000)
            except OperationTimeout:
                failure = f"cycle {cycle}: first run (after the previous cycle's delete) stuck: {_stuck_report(rig, 'cyc')}"
                break
            c.delete_instance("cyc", True)
            c.start_orchestration("cyc", "Chain", {"base": 1000 + cycle, "n": 3})
            st = _wait_all(c, ["cyc"], 3.0)["cyc"]
            if (st.status, st.output) != ("Completed", [1000 + cycle + i for i in range(3)]):
                failure = f"cycle {cycle}: recreated run did not complete right: {vars(st)}; {_stuck_report(rig, 'cyc')}"
                break
            fresh = _fresh_history(rig, "cyc")
            if fresh is not None and _brief(c.read_history_events("cyc")) != _brief(fresh):
                failure = (f"cycle {cycle}: the client reads another history than the one stored: "
                           f"{_brief(c.read_history_events('cyc'))} vs {_brief(fresh)}")
                break
            c.delete_instance("cyc", True)
    finally:
        stop.set()
        hung = _join_all(viewers, 10.0)
    assert failure is None, failure
    assert not hung and not problems, (hung, problems[:5])


# --- 7. a client made in one thread and used in others --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_client_created_in_a_thread_that_ended_is_used_from_other_threads(rigs, kind):
    """A Client built in a short-lived thread (which then ends) serves the main thread and 8
    others: starts, waits, KV and management reads all work (the provider's per-thread
    connections are not tied to the Client's creator)."""
    rig = rigs(kind)
    box: list[Client] = []
    maker = _start(lambda: box.append(Client(rig.provider)), name="maker")
    assert not _join_all([maker], 5.0)
    (c,) = box
    c.start_orchestration("x-main", "Order", 1)
    assert c.wait_for_orchestration("x-main", WAIT_MS).output == {"order": 1, "charged": 2}
    problems: list[str] = []
    got: dict[int, Any] = {}

    def use(i: int) -> None:
        c.start_orchestration(f"x-{i}", "Order", i)
        got[i] = c.wait_for_orchestration(f"x-{i}", WAIT_MS).output
        assert c.get_kv_value(f"x-{i}", "charged") == str(2 * i)
        assert c.get_instance_info(f"x-{i}").status == "Completed"
        assert f"x-{i}" in c.list_all_instances()

    hung = _join_all([_start(_guard(problems, f"user {i}", use, i), name=f"user-{i}") for i in range(8)])
    assert not hung and not problems, (hung, problems[:5])
    assert got == {i: {"order": i, "charged": 2 * i} for i in range(8)}


# --- 7b. a Client per request, thousands of them ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_per_request_thousands_of_them_neither_leak_nor_block(rigs, kind):
    """A web app that makes a Client per request: 16 threads x 60 requests, each a new Client
    that starts or reads and waits, then is dropped. Results are right, nothing hangs, and the
    dropped clients do not stay registered with the provider (realtime.CommitWaiter: "a Client
    dropped by its owner is freed, and its callback is taken off the provider")."""
    import gc

    rig = rigs(kind)
    baseline = len(rig.provider._commit_listeners)
    final_baseline = len(getattr(rig.provider, "_final_listeners", ()))
    problems: list[str] = []
    outputs: dict[str, Any] = {}

    def requests(t: int) -> None:
        for k in range(60):
            c = Client(rig.provider)
            inst = f"req-{t}-{k // 4}"
            if k % 4 == 0:
                c.start_orchestration(inst, "Order", t * 100 + k // 4)
            elif k % 4 == 3:
                outputs[inst] = c.wait_for_orchestration(inst, WAIT_MS).output
            else:
                c.get_status(inst)
                c.get_kv_value(inst, "charged")
            del c

    hung = _join_all([_start(_guard(problems, f"requests {t}", requests, t), name=f"req-{t}") for t in range(THREADS)])
    assert not hung and not problems, (hung, problems[:5])
    assert outputs == {f"req-{t}-{j}": {"order": t * 100 + j, "charged": 2 * (t * 100 + j)}
                       for t in range(THREADS) for j in range(15)}
    gc.collect()
    assert len(rig.provider._commit_listeners) <= baseline + 1, \
        f"{len(rig.provider._commit_listeners) - baseline} dropped clients still registered"
    assert len(getattr(rig.provider, "_final_listeners", ())) <= final_baseline + 1, \
        "dropped clients still registered for instance ends"


# --- 8. a client whose provider was closed ------------------------------------------------------------


def _client_calls(c: Client) -> list[tuple[str, Callable[[], Any]]]:
    return [
        ("get_status", lambda: c.get_status("done")),
        ("start_orchestration", lambda: c.start_orchestration("new", "Order", 1)),
        ("raise_event", lambda: c.raise_event("done", "e", 1)),
        ("enqueue_event", lambda: c.enqueue_event("done", "q", 1)),
        ("cancel_instance", lambda: c.cancel_instance("done")),
        ("wait_for_orchestration", lambda: c.wait_for_orchestration("done", 5_000)),
        ("wait_for_orchestration(unknown)", lambda: c.wait_for_orchestration("ghost", 5_000)),
        ("wait_for_status_change", lambda: c.wait_for_status_change("done", 0, timeout_ms=5_000)),
        ("wait_for_kv_value", lambda: c.wait_for_kv_value("ghost", "k", 5_000)),
        ("get_kv_value", lambda: c.get_kv_value("done", "charged")),
        ("get_kv_all_values", lambda: c.get_kv_all_values("done")),
        ("list_all_instances", lambda: c.list_all_instances()),
        ("list_instances_by_status", lambda: c.list_instances_by_status("Completed")),
        ("get_instance_info", lambda: c.get_instance_info("done")),
        ("read_execution_history", lambda: c.read_execution_history("done", 1)),
        ("get_system_metrics", lambda: c.get_system_metrics()),
        ("get_queue_depths", lambda: c.get_queue_depths()),
        ("get_orchestration_stats", lambda: c.get_orchestration_stats("done")),
        ("delete_instance", lambda: c.delete_instance("done", True)),
    ]


def _closed_error_problem(what: str, fn: Callable[[], Any]) -> str | None:
    """None if ``fn`` raises a clear "closed" ProviderError within 1 s; else what happened."""
    t0 = time.monotonic()
    try:
        result = fn()
    except ProviderError as exc:
        took = time.monotonic() - t0
        if "closed" not in str(exc).lower():
            return f"{what}: ProviderError without saying the provider is closed: {exc}"
        if took > 1.0:
            return f"{what}: took {took:.1f}s to report the closed provider"
        return None
    except BaseException as exc:  # noqa: BLE001
        return f"{what}: {_describe(exc)}"
    return f"{what}: succeeded on a closed provider ({result!r})"[:200]


@pytest.mark.parametrize("target", ["file", "sqlite_in_memory"])
def test_client_used_after_its_provider_was_closed_gets_a_clear_error(tmp_path, target):
    """SqliteProvider.close(): "further calls fail". Every Client call afterwards - from the
    thread that used it before, from a new thread, and through a Client built after the close -
    raises a ProviderError saying the provider is closed, at once (a wait does not sit out its
    timeout), never a raw sqlite3 error or an AttributeError."""
    provider = SqliteProvider.open(tmp_path / "closed.db") if target == "file" else SqliteProvider.in_memory()
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=POLL_MS))
    register(rt, Ledger())
    rt.start()
    c = Client(provider)
    try:
        c.start_orchestration("done", "Order", 1)
        assert c.wait_for_orchestration("done", WAIT_MS).status == "Completed"
        c.get_status("done")  # this thread has a read connection now
    finally:
        rt.shutdown(2_000)
        provider.close()
    problems = [p for what, fn in _client_calls(c) if (p := _closed_error_problem(what, fn))]
    other: list[str] = []

    def from_other_thread() -> None:
        other.extend(p for what, fn in _client_calls(c) if (p := _closed_error_problem(f"[thread] {what}", fn)))
        late = Client(provider)
        other.extend(p for what, fn in _client_calls(late) if (p := _closed_error_problem(f"[new client] {what}", fn)))

    assert not _join_all([_start(from_other_thread, name="after-close")], 60.0)
    assert not problems + other, (problems + other)[:8]


#: The close race runs in a child process: a crash there (it segfaulted) must fail this test,
#: not kill the whole test run.
_CLOSE_RACE_CHILD = r"""
import collections, faulthandler, json, random, sys, threading, time
faulthandler.enable()
from duroxide_sim import Client, SqliteProvider
from duroxide_sim.errors import ProviderError

def describe(exc):
    return f"{type(exc).__module__}.{type(exc).__name__}: {exc}"[:300]

def one_round(path, run, target, loops):
    provider = SqliteProvider.open(path) if target == "file" else SqliteProvider.in_memory()
    c = Client(provider)
    c.start_orchestration("seed", "Order", 1)
    stop = threading.Event()
    bad, errors = [], collections.Counter()
    def loop(i):
        cl = c if i % 2 else Client(provider)
        rng = random.Random(i * 1000 + run)
        n = 0
        while not stop.is_set():
            n += 1
            op = rng.randrange(6) if rng.random() < 0.3 else rng.choice([3, 4])
            try:
                if op == 0: cl.get_status("seed")
                elif op == 1: cl.enqueue_event("seed", "q", n)
                elif op == 2: cl.list_all_instances()
                elif op == 3: cl.get_kv_all_values("seed")
                elif op == 4: cl.read_history_events("seed")
                else: cl.start_orchestration(f"s-{i}-{n}", "Order", n)
            except ProviderError as exc:
                if "closed" in str(exc).lower():
                    errors["closed"] += 1
                else:
                    bad.append(f"op {op}: {describe(exc)}")
                return
            except BaseException as exc:
                bad.append(f"op {op}: {describe(exc)}")
                return
    def waiter(i):  # a request parked in a long wait when the app shuts down
        cl = c if i % 2 else Client(provider)
        try:
            if i < 2:
                cl.wait_for_orchestration("seed", 60000)
            else:
                cl.wait_for_kv_value("seed", "k", 60000)
            bad.append(f"waiter {i}: returned from a wait on a closed provider")
        except ProviderError as exc:
            if "closed" in str(exc).lower():
                errors["waiter closed"] += 1
            else:
                bad.append(f"waiter {i}: {describe(exc)}")
        except BaseException as exc:
            bad.append(f"waiter {i}: {describe(exc)}")
    ts = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(loops)]
    ts += [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.03 + 0.01 * (run % 3))
    provider.close()
    t0 = time.monotonic()
    deadline = t0 + 15
    for t in ts:
        t.join(max(0.0, deadline - time.monotonic()))
    stop.set()
    return {"run": run, "bad": bad[:5], "hung": [t.name for t in ts if t.is_alive()], "errors": dict(errors),
            "took": round(time.monotonic() - t0, 2)}

target, base, rounds, loops = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for run in range(rounds):
    print(json.dumps(one_round(f"{base}/race{run}.db", run, target, loops)), flush=True)
"""


@pytest.mark.parametrize("target", ["file", "sqlite_in_memory"])
def test_closing_the_provider_while_clients_read_and_write_gives_only_clear_errors(tmp_path, target):
    """16 client threads read and write in a loop (shared and own Clients) and 4 sit in long
    waits; the provider is closed under them; 40 rounds, in a child process. Each call either
    succeeds (before the close) or raises a ProviderError saying the provider is closed; waits
    end at once with that error (not at their 60 s timeout); no raw sqlite3 error, no hang, and
    no crash of the process (close() "Close every connection. ... further calls fail")."""
    import subprocess
    import sys

    rounds, loops = 40, 16
    proc = subprocess.run([sys.executable, "-c", _CLOSE_RACE_CHILD, target, str(tmp_path), str(rounds), str(loops)],
                          capture_output=True, text=True, timeout=90)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0:
        err = proc.stderr.splitlines()
        current = next((i for i, ln in enumerate(err) if ln.startswith("Current thread")), None)
        where = [ln.strip() for ln in err[current + 1:current + 4]] if current is not None else err[-5:]
        pytest.fail(f"the process died (exit {proc.returncode}{', SIGSEGV' if proc.returncode == -11 else ''}) "
                    f"in round {len(lines)} of {rounds}: {err[0] if err else ''}; the crashing thread was in {where}")
    assert len(lines) == rounds, proc.stdout[-500:]
    for r in lines:
        assert not r["hung"], f"round {r['run']}: threads hung after close: {r['hung']}"
        assert not r["bad"], f"round {r['run']}: unclear errors after close: {r['bad']}"
        assert r["errors"] == {"closed": loops, "waiter closed": 4}, r
        assert r["took"] < 3.0, f"round {r['run']}: waits took {r['took']}s to notice the close"


# --- 9. a client used in a forked child -------------------------------------------------------------


FORKS = 20


def _fork_child_probe(c: Client, provider: Any, i: int, trace_path: Any) -> tuple[int, int]:
    """Fork; the child uses the inherited Client and provider and reports over a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            # Where a hung child is stuck: its stack, written when the parent signals it before
            # killing it. (Not dump_traceback_later: under pytest's faulthandler_timeout the
            # parent has a watchdog armed, and re-arming in the child waits for that watchdog
            # thread, which a forked child does not have - the child hung right there.)
            trace = open(trace_path, "w")  # noqa: SIM115
            faulthandler.register(signal.SIGUSR1, file=trace, all_threads=True)
            try:
                c.start_orchestration(f"forked-{i}", "Order", i)
                st = c.get_status(f"forked-{i}")
                Client(provider).get_status("busy-0")
                c.list_all_instances()
                msg = f"ok {st.status}"
            except BaseException as exc:  # noqa: BLE001
                msg = f"err {type(exc).__module__}.{type(exc).__name__}: {exc}"
            os.write(w, msg.encode()[:4000])
        except BaseException:  # noqa: BLE001
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _fork_child_outcome(pid: int, r: int, i: int, trace_path: Any) -> str:
    ready, _, _ = select.select([r], [], [], 5.0)
    if not ready:
        os.kill(pid, signal.SIGUSR1)  # the child writes its stack (see _fork_child_probe)
        time.sleep(0.5)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(r)
        stack = trace_path.read_text() if trace_path.exists() else ""
        frames = [ln.strip() for ln in stack.splitlines() if ln.strip().startswith("File")][:4]
        return f"child {i}: HUNG (no answer in 5 s; killed); stuck at {frames}"
    data = os.read(r, 4096).decode(errors="replace")
    os.close(r)
    for _ in range(100):
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        data += " (child did not exit: killed)"
    return f"child {i}: {data or 'no answer (child crashed)'}"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the platform does not fork")
def test_client_used_in_a_forked_child_works_or_fails_clearly(rigs, tmp_path):
    """While the parent's runtime, two readers and a writer thread (a request handler starting
    orders) are busy on the SQLite file, the process forks up to FORKS times (stopping at the
    first bad child); each child uses the inherited Client (and a new Client on the inherited
    provider) to start an instance and read statuses. Nothing documents fork support, so
    either it works (the parent's runtime then completes the child's instance) or it fails
    with a clear error naming the fork; a hang (a lock some parent thread held at the fork) or
    a raw sqlite3 error is a defect. Each child has 5 s."""
    rig = rigs("sqlite")
    c = rig.client
    for i in range(6):
        c.start_orchestration(f"busy-{i}", "Chain", {"base": 0, "n": 40})
    readers = Readers(rig, lambda: [f"busy-{i}" for i in range(6)], threads=2)
    stop = threading.Event()
    background: list[str] = []
    writer_problems: list[str] = []

    def writer() -> None:
        wc = Client(rig.provider)
        n = 0
        while not stop.is_set():
            wc.start_orchestration(f"bg-{n}", "Order", n)
            background.append(f"bg-{n}")
            n += 1
            time.sleep(0.001)

    wt = _start(_guard(writer_problems, "writer", writer), name="fork-writer")
    outcomes: list[str] = []
    try:
        for i in range(FORKS):
            time.sleep(0.01)
            trace_path = tmp_path / f"child{i}.trace"
            pid, r = _fork_child_probe(c, rig.provider, i, trace_path)
            outcome = _fork_child_outcome(pid, r, i, trace_path)
            outcomes.append(outcome)
            if not (": ok " in outcome or ("fork" in outcome.lower() and ": err " in outcome)):
                break
    finally:
        stop.set()
        _join_all([wt], 10.0)
        read_problems = readers.finish()
    bad = [o for o in outcomes if not (": ok " in o or ("fork" in o.lower() and ": err " in o and "sqlite3" not in o))]
    assert not bad, f"{len(bad)} of {len(outcomes)} children failed: {bad}; before it: {outcomes[:-1][-3:]}"
    assert not read_problems + writer_problems, (read_problems + writer_problems)[:5]
    for i, o in enumerate(outcomes):  # a start that worked is run by the parent's runtime
        if ": ok " in o:
            st = c.wait_for_orchestration(f"forked-{i}", WAIT_MS)
            assert (st.status, st.output) == ("Completed", {"order": i, "charged": 2 * i}), (o, vars(st))
    for inst in [*(f"busy-{i}" for i in range(6)), *background]:
        st = c.wait_for_orchestration(inst, WAIT_MS)
        assert st.status == "Completed", (inst, vars(st))
