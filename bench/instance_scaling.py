"""Benchmark: does one operation's cost grow with the number of OTHER instances / queued items?

``replay_scaling.py`` asks how a turn grows with its OWN history. This probe asks the other
question: one instance (the *target*) does the same small thing - a turn, a status read, an
activity fetch, a delete - while N *others* sit in the store, and N goes from small to large
(default 1,000 vs 10,000). An operation that should be O(1) / O(log N) / O(its own rows) must
then cost about the same at both sizes; a ratio near N_large/N_small (10x) means it walks the
others. Operations that are O(N) by nature (list all instances, system metrics, queue depths)
are measured too, and flagged only when they grow faster than N.

Each *scenario* builds one world per (provider, N) through the providers' public methods (no
SQL, no private state, except where noted) on a hand-moved clock, then times its operations:

* ``idle``        N instances waiting: half on far-off timers (a queued TimerFiredMsg each), half
                  (sub-orchestration children of the first half) on an external event; histories
                  of ``--history`` events. Orchestration turns of the target (raise_event + fetch
                  + ack; a timer firing; a first turn of a new instance), every client read and
                  management call, ``next_wakeup_ms``.
* ``locked``      N instances locked by another runtime (fetched, not acked, long lock).
* ``orphans``     N ``raise_event`` to ids never started (parked by the first fetch).
* ``can_pending`` N instances that continued-as-new whose ContinueAsNew item is delayed (abandoned
                  with a delay) and that have a visible event queued.
* ``pinned``      N instances pinned to a newer engine version than this runtime's filter, each
                  with a visible event (a rolling upgrade: an old runtime must skip them).
* ``w_queued``    N activities queued (unlocked): fetch/ack/renew/abandon of the oldest.
* ``w_locked``    N activities in flight (locked by another worker).
* ``w_session``   N activities of one session owned by another worker (live session lock).
* ``w_tagged``    N activities with a tag this worker's filter excludes.
* ``sessions``    N sessions owned by other workers: renew_session_lock / cleanup / next_wakeup.
* ``runtime``     ``Runtime`` + ``SequentialDriver`` + ``Client`` over an ``idle`` world: a new
                  instance from start to result; an event to a waiting instance (cached engine).
* ``structs``     the runtime's own bookkeeping: ``CommitWaiter`` (in-process client waits:
                  one commit with N clients waiting on OTHER instances) and ``ThreadRenewer``
                  (one tick with N watched locks, none due). These poke at their objects
                  directly (``CommitWaiter._waiters`` is filled with N waiters instead of
                  starting N threads; the renewer's tick is timed by counting its clock reads).

Per operation: ``--runs`` runs of ``reps`` repetitions (reps shrink for slow operations, see
``--budget``); a run's figure is the median of its repetitions, the result the median of the
runs (min-max shown). GC is off while timing. One JSON line per (provider, scenario, op, part,
N) on stdout, then a summary table (ratio = largest N / smallest N) with a flag where the ratio
is clearly above what the operation's complexity allows (``--threshold``, default 3x for
O(1)/O(log n)/O(own) operations; 1.5 x the size ratio for O(n) ones).

    python bench/instance_scaling.py                     # memory + sqlite (file), N = 1,000 vs 10,000
    python bench/instance_scaling.py --sizes 2000 20000 --providers sqlite --scenarios idle locked
    python bench/instance_scaling.py --quick             # N = 300 vs 3,000, fewer runs
    python bench/instance_scaling.py --ops orch_turn empty_poll --parts fetch   # subsets by op / part name
    python bench/instance_scaling.py --scenarios locked --providers sqlite --profile    # + cProfile at the largest N

Providers: ``memory`` (InMemoryProvider), ``sqlite`` (SqliteProvider.open on a file in a temp
dir, WAL), ``sqlite-mem`` (SqliteProvider.in_memory). ``--profile`` cProfiles each op at the
largest N (to stderr). ``empty_poll`` ops time an idle dispatcher's poll (nothing it may take).

Reading the table: in scenarios where a fetch walks the N others (locked, can_pending, pinned,
w_locked, w_session, w_tagged), the cheap parts timed right after that fetch (its ack, the next
raise_event / enqueue) also read 2-4x at the large N. That is CPU-cache pollution from the walk,
not their own cost (measured: an in-memory enqueue right after a 10,000-row fetch walk 9.3 us,
the next one 3.1 us); the fetch is the finding there.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import pathlib
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from duroxide_sim import Runtime, RuntimeOptions  # noqa: E402
from duroxide_sim.core.events import (  # noqa: E402
    ENGINE_VERSION, ActivityCompleted, ActivityCompletedMsg, ActivityExecute, ActivityScheduled, ContinueAsNew,
    ExternalEvent, ExternalSubscribed, OrchestrationCompleted, OrchestrationContinuedAsNew,
    OrchestrationStarted, StartOrchestration, TimerCreated, TimerFired, TimerFiredMsg,
)
from duroxide_sim.providers.base import (  # noqa: E402
    ExecutionMetadata, InstanceFilter, PruneOptions, SessionConfig, TagFilter,
)
from duroxide_sim.providers.memory import InMemoryProvider  # noqa: E402
from duroxide_sim.providers.sqlite import SqliteProvider  # noqa: E402
from duroxide_sim.runtime.client import Client  # noqa: E402
from duroxide_sim.runtime.realtime import CommitWaiter, Signal, ThreadRenewer  # noqa: E402
from duroxide_sim.sim import SequentialDriver, SequentialIds  # noqa: E402
from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS  # noqa: E402

FILTER = ("0.0.0", ENGINE_VERSION)  # what the runtime's orchestration dispatcher passes
LOCK_MS = 30_000
FAR_MS = 10**9  # timers that never fire while the bench runs
HUGE_LOCK_MS = 10**10  # locks of "another runtime" that never expire while the bench runs
NAME, VERSION = "Idle", "1.0.0"
ORDER = {"O(1)": 0, "O(log n)": 0, "O(own)": 0, "O(expired)": 0, "O(n)": 1}


class Clock:
    """A clock moved by hand (also backwards, to build worlds cheaply: see ``_decreasing``)."""

    def __init__(self, t: int = DEFAULT_EPOCH_MS) -> None:
        self.t = t

    def now_ms(self) -> int:
        return self.t

    def set(self, t: int) -> None:
        self.t = t

    def advance(self, ms: int) -> None:
        self.t += int(ms)

    def advance_to(self, t: int) -> None:
        if t > self.t:
            self.t = int(t)


class World:
    """One provider with N others built in, plus the counters the ops use."""

    def __init__(self, kind: str, n: int, tmp: str, label: str, history: int, target_history: int) -> None:
        self.kind, self.n, self.history, self.target_history = kind, n, history, target_history
        self.clock = Clock()
        self.path = None
        if kind == "memory":
            self.p: Any = InMemoryProvider(self.clock)
        elif kind == "sqlite":
            self.path = os.path.join(tmp, f"{label}-{n}.db")
            self.p = SqliteProvider.open(self.path, clock=self.clock)
        elif kind == "sqlite-mem":
            self.p = SqliteProvider.in_memory(clock=self.clock)
        else:
            raise SystemExit(f"unknown provider {kind!r}")
        self.client = Client(self.p, clock=self.clock, sleep=lambda ms: None)
        self.seq = 0
        self.eids: dict[str, int] = {}  # instance -> last event id written
        self.extra: dict[str, Any] = {}

    def next(self, prefix: str) -> str:
        self.seq += 1
        return f"{prefix}-{self.seq}"

    def close(self) -> None:
        close = getattr(self.p, "close", None)
        if close is not None:
            close()
        if self.path:
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.remove(self.path + suffix)
                except FileNotFoundError:
                    pass


# ---------------------------------------------------------------------------------------------
# Building blocks (public provider methods only)
# ---------------------------------------------------------------------------------------------


def _filler(inst: str, first_id: int, count: int, now: int) -> list:
    """``count`` events (activity scheduled/completed pairs) from event id ``first_id``."""
    out = []
    eid = first_id
    while len(out) < count:
        out.append(ActivityScheduled(event_id=eid, instance_id=inst, timestamp_ms=now, name="Echo", input="1"))
        eid += 1
        if len(out) < count:
            out.append(ActivityCompleted(event_id=eid, instance_id=inst, timestamp_ms=now, source_event_id=eid - 1,
                                         result="1"))
            eid += 1
    return out


def create_instance(w: World, inst: str, *, history: int = 4, wait: str = "event", parent: str | None = None,
                    pin: str = ENGINE_VERSION, complete: bool = False, check: bool = True) -> None:
    """Start ``inst`` and commit its first turn: OrchestrationStarted, filler events, then a wait
    (``timer``: TimerCreated + a TimerFiredMsg FAR_MS ahead; ``event``: ExternalSubscribed) or
    completion. The fetch must hand out ``inst`` (callers build so nothing else is visible)."""
    p, now = w.p, w.clock.now_ms()
    p.enqueue_for_orchestrator(StartOrchestration(instance=inst, orchestration=NAME, input="null", version=VERSION,
                                                  parent_instance=parent, parent_id=1 if parent else None))
    item = p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    if check and (item is None or item.instance != inst):
        raise RuntimeError(f"build: fetched {item and item.instance!r}, expected {inst!r}")
    delta = [OrchestrationStarted(event_id=1, instance_id=inst, timestamp_ms=now, name=NAME, version=VERSION,
                                  input="null", parent_instance=parent, parent_id=1 if parent else None)]
    delta += _filler(inst, 2, max(0, history - 2), now)
    eid = len(delta) + 1
    orch = []
    status = None
    if complete:
        delta.append(OrchestrationCompleted(event_id=eid, instance_id=inst, timestamp_ms=now, output="1"))
        status = "Completed"
    elif wait == "timer":
        fire = now + FAR_MS + eid
        delta.append(TimerCreated(event_id=eid, instance_id=inst, timestamp_ms=now, fire_at_ms=fire))
        orch.append(TimerFiredMsg(instance=inst, execution_id=1, id=eid, fire_at_ms=fire))
    else:
        delta.append(ExternalSubscribed(event_id=eid, instance_id=inst, timestamp_ms=now, name="go"))
    p.ack_orchestration_item(item.lock_token, 1, delta, [], orch,
                             ExecutionMetadata(status=status, output="1" if complete else None, orchestration_name=NAME,
                                               orchestration_version=VERSION, parent_instance_id=parent,
                                               pinned_duroxide_version=pin))
    w.eids[inst] = eid


def _event_turn(w: World, inst: str, *, timer: bool = False) -> dict[str, int]:
    """raise_event(inst) -> fetch -> ack (ExternalEvent [+ a timer firing 1 ms later]); timed."""
    p, c = w.p, w.client
    t0 = time.perf_counter_ns()
    c.raise_event(inst, "go", 1)
    t1 = time.perf_counter_ns()
    item = p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    t2 = time.perf_counter_ns()
    if item is None or item.instance != inst:
        raise RuntimeError(f"fetch handed out {item and item.instance!r}, expected {inst!r}")
    eid = w.eids[inst]
    now = w.clock.now_ms()
    delta = [ExternalEvent(event_id=eid + 1, instance_id=inst, timestamp_ms=now, name="go", data="1")]
    orch = []
    if timer:
        delta.append(TimerCreated(event_id=eid + 2, instance_id=inst, timestamp_ms=now, fire_at_ms=now + 1))
        orch.append(TimerFiredMsg(instance=inst, execution_id=1, id=eid + 2, fire_at_ms=now + 1))
    delta.append(ExternalSubscribed(event_id=eid + len(delta) + 1, instance_id=inst, timestamp_ms=now, name="go"))
    t3 = time.perf_counter_ns()
    p.ack_orchestration_item(item.lock_token, 1, delta, [], orch, ExecutionMetadata())
    t4 = time.perf_counter_ns()
    w.eids[inst] = eid + len(delta)
    return {"raise_event": t1 - t0, "fetch": t2 - t1, "ack": t4 - t3}


def op_orch_turn(w: World) -> dict[str, int]:
    return _event_turn(w, w.extra["target"])


def op_timer_fire(w: World) -> dict[str, int]:
    """A turn that creates a 1 ms timer (untimed), then the timer's turn: fetch + ack (timed)."""
    inst = w.extra["target"]
    _event_turn(w, inst, timer=True)
    w.clock.advance(2)
    p = w.p
    t0 = time.perf_counter_ns()
    item = p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    t1 = time.perf_counter_ns()
    if item is None or item.instance != inst:
        raise RuntimeError(f"timer fetch handed out {item and item.instance!r}")
    eid = w.eids[inst]
    now = w.clock.now_ms()
    fired = [m for m in item.messages if isinstance(m, TimerFiredMsg)]
    delta = [TimerFired(event_id=eid + 1, instance_id=inst, timestamp_ms=now, source_event_id=fired[0].id,
                        fire_at_ms=fired[0].fire_at_ms)]
    t2 = time.perf_counter_ns()
    p.ack_orchestration_item(item.lock_token, 1, delta, [], [], ExecutionMetadata())
    t3 = time.perf_counter_ns()
    w.eids[inst] = eid + 1
    return {"timer_fetch": t1 - t0, "timer_ack": t3 - t2}


def op_new_instance(w: World) -> dict[str, int]:
    """start_orchestration + the first turn (fetch + ack creating the instance, completed)."""
    p, inst = w.p, w.next("new")
    t0 = time.perf_counter_ns()
    w.client.start_orchestration(inst, NAME, None)
    t1 = time.perf_counter_ns()
    item = p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    t2 = time.perf_counter_ns()
    assert item is not None and item.instance == inst, item
    now = w.clock.now_ms()
    delta = [OrchestrationStarted(event_id=1, instance_id=inst, timestamp_ms=now, name=NAME, version=VERSION,
                                  input="null"),
             OrchestrationCompleted(event_id=2, instance_id=inst, timestamp_ms=now, output="1")]
    t3 = time.perf_counter_ns()
    p.ack_orchestration_item(item.lock_token, 1, delta, [], [], ExecutionMetadata(
        status="Completed", output="1", orchestration_name=NAME, orchestration_version=VERSION,
        pinned_duroxide_version=ENGINE_VERSION))
    t4 = time.perf_counter_ns()
    return {"start_orchestration": t1 - t0, "first_fetch": t2 - t1, "first_ack": t4 - t3}


def op_orch_empty_poll(w: World) -> dict[str, int]:
    """An idle dispatcher's poll: nothing it may take is visible (every dispatcher thread pays
    this each poll interval while the others sit there)."""
    t0 = time.perf_counter_ns()
    got = w.p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    t1 = time.perf_counter_ns()
    if got is not None:
        raise RuntimeError(f"empty poll handed out {got.instance!r}")
    return {"fetch_empty_poll": t1 - t0}


def op_next_wakeup(w: World) -> dict[str, int]:
    t0 = time.perf_counter_ns()
    w.p.next_wakeup_ms()
    return {"next_wakeup_ms": time.perf_counter_ns() - t0}


def _timed(name: str, fn: Callable[[World], Any]) -> Callable[[World], dict[str, int]]:
    def op(w: World) -> dict[str, int]:
        t0 = time.perf_counter_ns()
        fn(w)
        return {name: time.perf_counter_ns() - t0}
    return op


def _with_fresh_root(name: str, fn: Callable[[World, str], Any]) -> Callable[[World], dict[str, int]]:
    """Create a completed root instance (untimed), then time ``fn(world, instance)``."""
    def op(w: World) -> dict[str, int]:
        inst = w.next("del")
        create_instance(w, inst, history=4, complete=True)
        t0 = time.perf_counter_ns()
        fn(w, inst)
        return {name: time.perf_counter_ns() - t0}
    return op


# ---------------------------------------------------------------------------------------------
# Scenarios: build(world) puts the N others in; ops time the target's operations
# ---------------------------------------------------------------------------------------------


def _target(w: World) -> None:
    """The target: a running instance waiting for an event, with a --target-history history."""
    create_instance(w, "target", history=w.target_history, wait="event")
    w.extra["target"] = "target"


def build_idle(w: World) -> None:
    _target(w)
    for i in range(w.n):
        root = i % 2 == 0
        inst = f"idle-{i:07d}"
        create_instance(w, inst, history=w.history, wait="timer" if root else "event",
                        parent=None if root else f"idle-{i - 1:07d}")
    create_instance(w, "done", history=4, complete=True)


def build_locked(w: World) -> None:
    """N starts fetched by "another runtime" and never acked (lock: HUGE_LOCK_MS). Each is
    enqueued and fetched at a clock EARLIER than the previous one, so a building fetch never
    sees (walks) the rows locked before it; the clock then moves past all of them."""
    _target(w)
    base = w.clock.now_ms() + 10
    for i in range(w.n):
        w.clock.set(base + w.n - i)
        inst = f"locked-{i:07d}"
        w.p.enqueue_for_orchestrator(StartOrchestration(instance=inst, orchestration=NAME, input="null",
                                                        version=VERSION))
        item = w.p.fetch_orchestration_item(HUGE_LOCK_MS, 0, FILTER)
        assert item is not None and item.instance == inst, (item and item.instance, inst)
    w.clock.set(base + w.n + 10)


def build_orphans(w: World) -> None:
    """N raise_event to ids never started; the first fetch afterwards parks them all (timed
    once, reported as first_fetch_parks_all)."""
    _target(w)
    for i in range(w.n):
        w.client.raise_event(f"ghost-{i:07d}", "go", 1)
    gc.disable()
    t0 = time.perf_counter_ns()
    got = w.p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    w.extra["once"] = {"first_fetch_parks_all": time.perf_counter_ns() - t0}
    gc.enable()
    assert got is None, got


def build_can_pending(w: World) -> None:
    """N instances whose execution 1 continued-as-new and whose ContinueAsNew item was fetched
    and abandoned with a long delay (a failed first turn of execution 2, say); then one visible
    event each, which a fetch must skip (SPEC: wait for the ContinueAsNew item)."""
    _target(w)
    p = w.p
    for i in range(w.n):
        inst = f"can-{i:07d}"
        now = w.clock.now_ms()
        p.enqueue_for_orchestrator(StartOrchestration(instance=inst, orchestration=NAME, input="null", version=VERSION))
        item = p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
        assert item is not None and item.instance == inst, item
        delta = [OrchestrationStarted(event_id=1, instance_id=inst, timestamp_ms=now, name=NAME, version=VERSION,
                                      input="null"),
                 OrchestrationContinuedAsNew(event_id=2, instance_id=inst, timestamp_ms=now, input="null")]
        p.ack_orchestration_item(item.lock_token, 1, delta, [], [ContinueAsNew(
            instance=inst, orchestration=NAME, input="null", version=VERSION, execution_id=1)], ExecutionMetadata(
            status="ContinuedAsNew", output="null", orchestration_name=NAME, orchestration_version=VERSION,
            pinned_duroxide_version=ENGINE_VERSION))
        item = p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
        assert item is not None and item.instance == inst and isinstance(item.messages[0], ContinueAsNew), item
        p.abandon_orchestration_item(item.lock_token, HUGE_LOCK_MS, True)
    for i in range(w.n):
        w.client.raise_event(f"can-{i:07d}", "go", 1)


def build_pinned(w: World) -> None:
    """N instances pinned to engine 9.0.0 (newer than FILTER admits), each with a visible event."""
    _target(w)
    for i in range(w.n):
        create_instance(w, f"pin-{i:07d}", history=4, wait="event", pin="9.0.0")
    for i in range(w.n):
        w.client.raise_event(f"pin-{i:07d}", "go", 1)


def _activity(inst: str, i: int, *, session: str | None = None, tag: str | None = None) -> ActivityExecute:
    return ActivityExecute(instance=inst, execution_id=1, id=i, name="Echo", input="1", session_id=session, tag=tag,
                           orchestration_name=NAME, orchestration_version=VERSION)


def build_w_queued(w: World) -> None:
    for i in range(w.n):
        w.p.enqueue_for_worker(_activity(f"wq-{i % 97}", i + 1))


def build_w_locked(w: World) -> None:
    """N activities fetched by worker B (never acked; HUGE_LOCK_MS). Built at a decreasing clock
    (see build_locked) so no building fetch walks the rows locked before it."""
    base = w.clock.now_ms() + 10
    leases = []
    for i in range(w.n):
        w.clock.set(base + w.n - i)
        w.p.enqueue_for_worker(_activity(f"wl-{i % 97}", i + 1))
        lease = w.p.fetch_work_item(HUGE_LOCK_MS, 0, None, TagFilter.default_only())
        assert lease is not None and lease.item.id == i + 1, lease
        leases.append(lease.lock_token)
    w.clock.set(base + w.n + 10)
    w.extra["leases"] = leases


def build_w_session(w: World) -> None:
    """N activities of session "S", claimed by worker B (its first row locked, the session
    lock live for HUGE_LOCK_MS)."""
    for i in range(w.n):
        w.p.enqueue_for_worker(_activity(f"ws-{i % 97}", i + 1, session="S"))
    lease = w.p.fetch_work_item(HUGE_LOCK_MS, 0, SessionConfig(owner_id="B", lock_timeout_ms=HUGE_LOCK_MS),
                                TagFilter.default_only())
    assert lease is not None and lease.item.session_id == "S", lease


def build_w_tagged(w: World) -> None:
    for i in range(w.n):
        w.p.enqueue_for_worker(_activity(f"wt-{i % 97}", i + 1, tag="gpu"))


def build_sessions(w: World) -> None:
    """N sessions owned by workers B0..B9 (live locks, no queued rows left), plus one of "A"."""
    for i in range(w.n):
        w.p.enqueue_for_worker(_activity("sess", i + 1, session=f"s-{i:07d}"))
        lease = w.p.fetch_work_item(LOCK_MS, 0, SessionConfig(owner_id=f"B{i % 10}", lock_timeout_ms=HUGE_LOCK_MS),
                                    TagFilter.default_only())
        assert lease is not None, i
        w.p.ack_work_item(lease.lock_token, None)
    w.p.enqueue_for_worker(_activity("sess", w.n + 1, session="s-A"))
    lease = w.p.fetch_work_item(LOCK_MS, 0, SessionConfig(owner_id="A", lock_timeout_ms=HUGE_LOCK_MS),
                                TagFilter.default_only())
    assert lease is not None and lease.item.session_id == "s-A"
    w.extra["a_lease"] = lease.lock_token


def _worker_turn(session: SessionConfig | None, tag_filter: TagFilter) -> Callable[[World], dict[str, int]]:
    """Enqueue one plain activity (the newest row), fetch it as worker A, ack it."""
    def op(w: World) -> dict[str, int]:
        p = w.p
        w.seq += 1
        t0 = time.perf_counter_ns()
        p.enqueue_for_worker(_activity("target", 10**6 + w.seq))
        t1 = time.perf_counter_ns()
        lease = p.fetch_work_item(LOCK_MS, 0, session, tag_filter)
        t2 = time.perf_counter_ns()
        if lease is None or lease.item.instance != "target":
            raise RuntimeError(f"worker fetch handed out {lease and lease.item!r}")
        completion = ActivityCompletedMsg(instance="target", execution_id=1, id=lease.item.id, result="1")
        t3 = time.perf_counter_ns()
        p.ack_work_item(lease.lock_token, completion)
        t4 = time.perf_counter_ns()
        return {"enqueue_for_worker": t1 - t0, "fetch_work_item": t2 - t1, "ack_work_item": t4 - t3}
    return op


def _worker_empty_poll(session: SessionConfig | None, tag_filter: TagFilter) -> Callable[[World], dict[str, int]]:
    """An idle worker's poll: nothing it may take is queued."""
    def op(w: World) -> dict[str, int]:
        t0 = time.perf_counter_ns()
        lease = w.p.fetch_work_item(LOCK_MS, 0, session, tag_filter)
        t1 = time.perf_counter_ns()
        if lease is not None:
            raise RuntimeError(f"empty worker poll handed out {lease.item!r}")
        return {"fetch_work_empty_poll": t1 - t0}
    return op


_A_SESSION = SessionConfig(owner_id="A", lock_timeout_ms=LOCK_MS)


def op_w_oldest_ack(w: World) -> dict[str, int]:
    """Fetch the oldest queued activity, ack it with its completion, enqueue a replacement."""
    p = w.p
    t0 = time.perf_counter_ns()
    lease = p.fetch_work_item(LOCK_MS, 0, None, TagFilter.default_only())
    t1 = time.perf_counter_ns()
    item = lease.item
    completion = ActivityCompletedMsg(instance=item.instance, execution_id=1, id=item.id, result="1")
    t2 = time.perf_counter_ns()
    p.ack_work_item(lease.lock_token, completion)
    t3 = time.perf_counter_ns()
    p.enqueue_for_worker(_activity(item.instance, item.id))
    t4 = time.perf_counter_ns()
    return {"fetch_oldest": t1 - t0, "ack_work_item": t3 - t2, "enqueue_for_worker": t4 - t3}


def op_w_renew_abandon(w: World) -> dict[str, int]:
    """Fetch the oldest, renew its lock, abandon it (attempt not counted): the queue is unchanged."""
    p = w.p
    lease = p.fetch_work_item(LOCK_MS, 0, None, TagFilter.default_only())
    t0 = time.perf_counter_ns()
    p.renew_work_item_lock(lease.lock_token, LOCK_MS)
    t1 = time.perf_counter_ns()
    p.abandon_work_item(lease.lock_token, None, True)
    t2 = time.perf_counter_ns()
    return {"renew_work_item_lock": t1 - t0, "abandon_work_item": t2 - t1}


def op_w_renew_other(w: World) -> dict[str, int]:
    """Worker B renews one of its N in-flight leases."""
    leases = w.extra["leases"]
    w.seq += 1
    token = leases[(w.seq * 7919) % len(leases)]
    t0 = time.perf_counter_ns()
    w.p.renew_work_item_lock(token, HUGE_LOCK_MS)
    return {"renew_work_item_lock": time.perf_counter_ns() - t0}


def op_renew_sessions(w: World) -> dict[str, int]:
    t0 = time.perf_counter_ns()
    renewed = w.p.renew_session_lock(["A"], HUGE_LOCK_MS, 300_000)
    t1 = time.perf_counter_ns()
    assert renewed == 1, renewed
    return {"renew_session_lock": t1 - t0}


def op_cleanup_sessions(w: World) -> dict[str, int]:
    t0 = time.perf_counter_ns()
    w.p.cleanup_orphaned_sessions(300_000)
    return {"cleanup_orphaned_sessions": time.perf_counter_ns() - t0}


def op_ghost_raise(w: World) -> dict[str, int]:
    """raise_event to one more never-started id, then the fetch that parks it."""
    inst = w.next("ghost-new")
    t0 = time.perf_counter_ns()
    w.client.raise_event(inst, "go", 1)
    t1 = time.perf_counter_ns()
    got = w.p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    t2 = time.perf_counter_ns()
    assert got is None, got
    return {"raise_event": t1 - t0, "fetch_parks_one": t2 - t1}


def op_orphan_sweep(w: World) -> dict[str, int]:
    """A fetch that runs the orphan sweep (every ORPHAN_SWEEP_INTERVAL_MS of the clock; forced
    here by clearing the provider's ``_orphan_sweep_at``) while nothing has expired yet."""
    w.p._orphan_sweep_at = None
    t0 = time.perf_counter_ns()
    got = w.p.fetch_orchestration_item(LOCK_MS, 0, FILTER)
    t1 = time.perf_counter_ns()
    assert got is None, got
    return {"fetch_with_orphan_sweep": t1 - t0}


# --- runtime scenario ------------------------------------------------------------------------


def build_runtime(w: World) -> None:
    build_idle(w)
    ids = SequentialIds(0)
    rt = Runtime(w.p, RuntimeOptions(), clock=w.clock, ids=ids)

    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_orchestration("Quick")
    def quick(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("Loop")
    def loop(ctx, _):
        n = 0
        while True:
            yield ctx.wait_for_event("go")
            n += 1

    @rt.register_orchestration(NAME)
    def idle(ctx, _):  # the others never get a turn (far timers, events never raised)
        yield ctx.wait_for_event("never")

    driver = SequentialDriver(rt, w.clock, max_steps=10**9)
    w.extra.update(rt=rt, driver=driver, rclient=Client(w.p, clock=w.clock, sleep=driver.sleep))
    w.extra["rclient"].start_orchestration("loop", "Loop", None)
    driver.run_until_idle()


def op_rt_start_to_result(w: World) -> dict[str, int]:
    c, inst = w.extra["rclient"], w.next("quick")
    t0 = time.perf_counter_ns()
    c.start_orchestration(inst, "Quick", 1)
    res = c.wait_for_orchestration(inst, 10**12)
    t1 = time.perf_counter_ns()
    assert res.status == "Completed", res
    return {"start_to_result": t1 - t0}


def op_rt_event_turn(w: World) -> dict[str, int]:
    c, driver = w.extra["rclient"], w.extra["driver"]
    t0 = time.perf_counter_ns()
    c.raise_event("loop", "go", 1)
    driver.run_until_idle()
    return {"raise_and_turn": time.perf_counter_ns() - t0}


# --- runtime structures ----------------------------------------------------------------------


def build_structs(w: World) -> None:
    _target(w)
    waiter = CommitWaiter(w.p)  # registers itself as the provider's commit / wakeup listener
    for i in range(w.n):  # N clients waiting (wait_for_orchestration) on OTHER instances
        waiter._waiters[Signal()] = f"other-{i}"
    w.extra["waiter"] = waiter


def op_ack_with_waiters(w: World) -> dict[str, int]:
    parts = _event_turn(w, w.extra["target"])
    return {"ack_with_N_waiters": parts["ack"]}


def op_renewer_tick(w: World) -> dict[str, int]:
    """One ThreadRenewer tick with N watched locks, none due: tick_ms=0 makes the thread spin;
    each tick reads the clock once, so ticks = clock reads."""
    class Counting:
        def __init__(self) -> None:
            self.calls = 0

        def now_ms(self) -> int:
            self.calls += 1
            return DEFAULT_EPOCH_MS

    clk = Counting()
    renewer = ThreadRenewer(w.p, clk, orch_buffer_ms=5_000, worker_buffer_ms=5_000, tick_ms=0)  # type: ignore[arg-type]
    for i in range(w.n):
        renewer.watch("worker", f"tok-{i}", HUGE_LOCK_MS, lambda: None)
    clk.calls = 0
    t0 = time.perf_counter_ns()
    renewer.start()
    time.sleep(0.05)
    renewer.stop()
    elapsed = time.perf_counter_ns() - t0
    return {"renewer_tick": elapsed // max(clk.calls, 1)}


# ---------------------------------------------------------------------------------------------
# The catalogue
# ---------------------------------------------------------------------------------------------

OpSpec = tuple[str, str, Callable[[World], dict[str, int]]]  # (name, expected complexity, fn)

IDLE_OPS: list[OpSpec] = [
    ("orch_turn", "O(1)", op_orch_turn),
    ("timer_fire", "O(log n)", op_timer_fire),
    ("new_instance", "O(log n)", op_new_instance),
    ("next_wakeup", "O(log n)", op_next_wakeup),
    ("get_status", "O(1)", _timed("get_orchestration_status", lambda w: w.client.get_orchestration_status("target"))),
    ("wait_done", "O(1)", _timed("wait_for_orchestration", lambda w: w.client.wait_for_orchestration("done", 1000))),
    ("instance_info", "O(1)", _timed("get_instance_info", lambda w: w.client.get_instance_info("target"))),
    ("stats", "O(own)", _timed("get_orchestration_stats", lambda w: w.client.get_orchestration_stats("target"))),
    ("read_history", "O(own)", _timed("read_execution_history", lambda w: w.client.read_execution_history("target", 1))),
    ("tree", "O(own)", _timed("get_instance_tree", lambda w: w.client.get_instance_tree("target"))),
    ("delete", "O(own)", _with_fresh_root("delete_instance", lambda w, i: w.client.delete_instance(i))),
    ("delete_bulk_ids", "O(own)", _with_fresh_root(
        "delete_instance_bulk(ids=[x])", lambda w, i: w.client.delete_instance_bulk(InstanceFilter(instance_ids=[i])))),
    ("prune", "O(own)", _timed("prune_executions", lambda w: w.client.prune_executions("target", PruneOptions(keep_last=1)))),
    ("prune_bulk_ids", "O(own)", _timed("prune_executions_bulk(ids=[x])", lambda w: w.client.prune_executions_bulk(
        InstanceFilter(instance_ids=["target"]), PruneOptions(keep_last=1)))),
    ("list_all", "O(n)", _timed("list_all_instances", lambda w: w.client.list_all_instances())),
    ("list_by_status", "O(n)", _timed("list_instances_by_status", lambda w: w.client.list_instances_by_status("Running"))),
    ("metrics", "O(n)", _timed("get_system_metrics", lambda w: w.client.get_system_metrics())),
    ("queue_depths", "O(n)", _timed("get_queue_depths", lambda w: w.client.get_queue_depths())),
]

SCENARIOS: dict[str, tuple[str, Callable[[World], None], list[OpSpec]]] = {
    "idle": ("N idle instances (half far-off timers, half sub-orchestrations waiting for an event)", build_idle,
             IDLE_OPS),
    "locked": ("N instances locked by another runtime", build_locked,
               [("orch_turn", "O(1)", op_orch_turn), ("empty_poll", "O(1)", op_orch_empty_poll),
                ("next_wakeup", "O(log n)", op_next_wakeup)]),
    "orphans": ("N raise_event to never-started ids (parked)", build_orphans,
                [("orch_turn", "O(1)", op_orch_turn), ("ghost_raise", "O(log n)", op_ghost_raise),
                 ("orphan_sweep", "O(expired)", op_orphan_sweep), ("next_wakeup", "O(log n)", op_next_wakeup)]),
    "can_pending": ("N instances with a continue-as-new pending (delayed) and a visible event", build_can_pending,
                    [("orch_turn", "O(1)", op_orch_turn), ("empty_poll", "O(1)", op_orch_empty_poll)]),
    "pinned": ("N instances pinned to a newer engine, each with a visible event", build_pinned,
               [("orch_turn", "O(1)", op_orch_turn), ("empty_poll", "O(1)", op_orch_empty_poll)]),
    "w_queued": ("N queued activities (unlocked)", build_w_queued,
                 [("oldest_fetch_ack", "O(log n)", op_w_oldest_ack), ("renew_abandon", "O(log n)", op_w_renew_abandon),
                  ("next_wakeup", "O(log n)", op_next_wakeup),
                  ("queue_depths", "O(n)", _timed("get_queue_depths", lambda w: w.client.get_queue_depths()))]),
    "w_locked": ("N activities in flight (locked by worker B)", build_w_locked,
                 [("worker_turn", "O(1)", _worker_turn(None, TagFilter.default_only())),
                  ("empty_poll", "O(1)", _worker_empty_poll(None, TagFilter.default_only())),
                  ("renew_other", "O(log n)", op_w_renew_other), ("next_wakeup", "O(log n)", op_next_wakeup)]),
    "w_session": ("N activities of a session owned by worker B", build_w_session,
                  [("worker_turn", "O(1)", _worker_turn(_A_SESSION, TagFilter.default_only())),
                   ("empty_poll", "O(1)", _worker_empty_poll(_A_SESSION, TagFilter.default_only())),
                   ("next_wakeup", "O(log n)", op_next_wakeup)]),
    "w_tagged": ("N activities tagged 'gpu' (excluded by default_only)", build_w_tagged,
                 [("worker_turn", "O(1)", _worker_turn(None, TagFilter.default_only())),
                  ("empty_poll", "O(1)", _worker_empty_poll(None, TagFilter.default_only()))]),
    "sessions": ("N sessions owned by other workers", build_sessions,
                 [("renew_sessions", "O(own)", op_renew_sessions), ("cleanup_sessions", "O(expired)", op_cleanup_sessions),
                  ("next_wakeup", "O(log n)", op_next_wakeup)]),
    "runtime": ("Runtime+SequentialDriver over N idle instances", build_runtime,
                [("rt_start_to_result", "O(log n)", op_rt_start_to_result), ("rt_event_turn", "O(1)", op_rt_event_turn)]),
    "structs": ("runtime bookkeeping: N clients waiting on other instances / N watched locks", build_structs,
                [("ack_with_waiters", "O(1)", op_ack_with_waiters), ("renewer_tick", "O(own)", op_renewer_tick)]),
}


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


def measure(w: World, fn: Callable[[World], dict[str, int]], runs: int, max_reps: int, budget_s: float,
            use_gc: bool) -> dict[str, dict[str, float]]:
    """Per part: median over ``runs`` of the median per-rep time (us), with min and max of the runs."""
    gc.collect()
    if not use_gc:
        gc.disable()
    try:
        t0 = time.perf_counter()
        first = fn(w)  # warm-up and calibration (not recorded)
        once = time.perf_counter() - t0
        reps = max(1, min(max_reps, int(budget_s / runs / max(once, 1e-6))))
        per_run: dict[str, list[float]] = {k: [] for k in first}
        for _ in range(runs):
            samples: dict[str, list[int]] = {k: [] for k in first}
            for _ in range(reps):
                for k, v in fn(w).items():
                    samples[k].append(v)
            for k, vals in samples.items():
                per_run[k].append(statistics.median(vals) / 1000.0)
    finally:
        gc.enable()
    return {k: {"us": statistics.median(v), "min_us": min(v), "max_us": max(v), "reps": reps, "runs": runs}
            for k, v in per_run.items()}


def profile(w: World, fn: Callable[[World], dict[str, int]], label: str, calls: int = 10, top: int = 12) -> None:
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn(w)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    lines = [line for line in out.getvalue().splitlines() if line.strip()]
    print(f"# profile {label} ({calls} calls)", file=sys.stderr)
    print("\n".join(lines[2:]), file=sys.stderr, flush=True)


def _wanted(words: list[str] | None, *names: str) -> bool:
    return not words or any(word in name for word in words for name in names)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="numbers of others (default 1000 10000)")
    ap.add_argument("--providers", nargs="+", default=["memory", "sqlite"], choices=["memory", "sqlite", "sqlite-mem"])
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    ap.add_argument("--ops", nargs="+", default=None,
                    help="only ops whose name contains one of these words (orch_turn, empty_poll, new_instance, ...)")
    ap.add_argument("--parts", nargs="+", default=None,
                    help="only report parts whose name contains one of these words (fetch, first_ack, ...)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20, help="most repetitions per run")
    ap.add_argument("--budget", type=float, default=0.6, help="seconds per (op, size) that set the repetitions")
    ap.add_argument("--history", type=int, default=20, help="events per other instance (idle scenario)")
    ap.add_argument("--target-history", type=int, default=200, help="events of the target instance")
    ap.add_argument("--threshold", type=float, default=3.0, help="flag O(1)/O(log n)/O(own) ops above this ratio")
    ap.add_argument("--quick", action="store_true", help="sizes 300 3000, 3 runs, budget 0.3 s")
    ap.add_argument("--gc", action="store_true", help="leave GC on while timing")
    ap.add_argument("--tmp", default=None, help="directory for the SQLite files (default: a new temp dir)")
    ap.add_argument("--profile", action="store_true",
                    help="at the largest N, cProfile 10 more calls of each op (top functions by tottime, to stderr)")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or [300, 3000]
        args.runs, args.budget = 3, 0.3
    sizes = sorted(args.sizes or [1000, 10000])
    tmp = args.tmp or tempfile.mkdtemp(prefix="instance_scaling-")
    started = time.perf_counter()
    print(json.dumps({"bench": "instance_scaling", "python": platform.python_version(), "machine": platform.machine(),
                      "sizes": sizes, "providers": args.providers, "runs": args.runs, "history": args.history,
                      "target_history": args.target_history}), flush=True)
    results: dict[tuple[str, str, str, str], dict[int, dict[str, float]]] = {}
    expected: dict[tuple[str, str, str, str], str] = {}
    errors: list[str] = []
    try:
        for kind in args.providers:
            for scen in args.scenarios:
                desc, build, ops = SCENARIOS[scen]
                ops = [o for o in ops if _wanted(args.ops, o[0])]
                if not ops:
                    continue
                for n in sizes:
                    w = World(kind, n, tmp, scen, args.history, args.target_history)
                    try:
                        tb = time.perf_counter()
                        build(w)
                        build_s = time.perf_counter() - tb
                        print(json.dumps({"provider": kind, "scenario": scen, "n": n, "build_s": round(build_s, 3)}),
                              file=sys.stderr, flush=True)
                        for part, ns in w.extra.get("once", {}).items():
                            key = (kind, scen, "once", part)
                            results.setdefault(key, {})[n] = {"us": ns / 1000.0, "min_us": ns / 1000.0,
                                                              "max_us": ns / 1000.0, "reps": 1, "runs": 1}
                            expected[key] = "O(n)"
                            print(json.dumps({"provider": kind, "scenario": scen, "op": "once", "part": part, "n": n,
                                              "us": round(ns / 1000.0, 1)}), flush=True)
                        for name, expect, fn in ops:
                            try:
                                parts = measure(w, fn, args.runs, args.reps, args.budget, args.gc)
                            except Exception as exc:  # noqa: BLE001 - reported, the others go on
                                errors.append(f"{kind} {scen} {name} n={n}: {type(exc).__name__}: {exc}")
                                print(json.dumps({"provider": kind, "scenario": scen, "op": name, "n": n,
                                                  "error": f"{type(exc).__name__}: {exc}"}), flush=True)
                                continue
                            if args.profile and n == sizes[-1]:
                                    profile(w, fn, f"{kind} {scen} {name} N={n}")
                            for part, fig in parts.items():
                                if not _wanted(args.parts, part):
                                    continue
                                key = (kind, scen, name, part)
                                results.setdefault(key, {})[n] = fig
                                expected[key] = expect
                                print(json.dumps({"provider": kind, "scenario": scen, "op": name, "part": part,
                                                  "expect": expect, "n": n, **{k: round(v, 2) if isinstance(v, float)
                                                                               else v for k, v in fig.items()}}),
                                      flush=True)
                    except Exception as exc:  # noqa: BLE001
                        errors.append(f"{kind} {scen} build n={n}: {type(exc).__name__}: {exc}")
                        print(json.dumps({"provider": kind, "scenario": scen, "n": n, "error":
                                          f"build: {type(exc).__name__}: {exc}"}), flush=True)
                    finally:
                        w.close()
    finally:
        if args.tmp is None:
            shutil.rmtree(tmp, ignore_errors=True)
    summary(results, expected, sizes, args.threshold)
    print(f"# total {time.perf_counter() - started:.1f} s", file=sys.stderr)
    for e in errors:
        print(f"# ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


def summary(results: dict, expected: dict, sizes: list[int], threshold: float) -> None:
    lo, hi = sizes[0], sizes[-1]
    size_ratio = hi / lo
    rows = []
    for key, by_n in results.items():
        if lo not in by_n or hi not in by_n:
            continue
        kind, scen, op, part = key
        a, b = by_n[lo]["us"], by_n[hi]["us"]
        ratio = b / a if a > 0 else float("inf")
        exp = expected[key]
        limit = size_ratio * 1.5 if ORDER.get(exp, 0) else threshold
        flag = "FLAG" if ratio > limit else ""
        rows.append((scen, op, part, kind, exp, a, b, ratio, flag))
        print(json.dumps({"summary": True, "scenario": scen, "op": op, "part": part, "provider": kind, "expect": exp,
                          f"us_{lo}": round(a, 2), f"us_{hi}": round(b, 2), "ratio": round(ratio, 2),
                          "flag": bool(flag)}), flush=True)
    print(f"\n# ratio = time at N={hi} / time at N={lo} (x{size_ratio:g} others); FLAG: above {threshold:g}x "
          f"for O(1)/O(log n)/O(own)/O(expired), above {size_ratio * 1.5:g}x for O(n). A cheap part timed right "
          "after a fetch that walks the N others (its ack, the next enqueue) pays CPU-cache misses from that walk: "
          "2-4x there is not its own cost")
    head = f"{'scenario':<12} {'op':<18} {'part':<30} {'provider':<10} {'expect':<10} {'N=' + str(lo):>12} " \
           f"{'N=' + str(hi):>12} {'ratio':>8}"
    print(head)
    print("-" * len(head))
    for scen, op, part, kind, exp, a, b, ratio, flag in rows:
        print(f"{scen:<12} {op:<18} {part:<30} {kind:<10} {exp:<10} {_fmt(a):>12} {_fmt(b):>12} {ratio:>7.1f}x {flag}")
    sys.stdout.flush()


def _fmt(us: float) -> str:
    return f"{us:.1f} us" if us < 1000 else f"{us / 1000:.2f} ms"


if __name__ == "__main__":
    sys.exit(main())
