"""Model-based, differential stateful test of the providers (SPEC §15, §16, §14).

One Hypothesis ``RuleBasedStateMachine`` drives the SAME operation sequence against
``InMemoryProvider``, ``SqliteProvider.open(<temp file>)`` and ``SqliteProvider.in_memory()``,
all on one injected :class:`SimClock` that only a rule advances, and

* compares every observable result across the providers (after normalising what may
  legitimately differ, see ``_norm``), including a full public-API snapshot after every step;
* checks the results against a small reference model: the orchestrator queue (items in
  insertion order, visibility, attempts, which lock tagged them), the worker queue (items,
  visibility, locks, attempts, tags, sessions: a fetch is predicted exactly), the lock state of
  every token handed out, and the stored history of every execution;
* checks SPEC invariants: peek-lock (redelivery after expiry/abandon, one fetcher per instance),
  an ack with an expired/foreign/stale token fails, a failed operation changes nothing, history
  is append-only, messages arriving during a lock survive the ack (the ack deletes exactly its
  batch), attempt counting, activity cancellation (insert then cancel), delete/prune safety.

Legitimate differences that are normalised (not bugs):

* lock-token strings (``mem-lock-N`` vs ``sql-<open id>-N[-w<row>]``): handles map one logical
  token to each provider's own string; results are compared without tokens;
* ``OrchestrationItem.history`` is a tuple or a ``HistoryView``: compared as tuples;
* the exception *message* (only the class is compared);
* ``InstanceTree.all_ids``/``kv_snapshot`` containers: compared as lists / sorted items.

What the machine found is pinned by the two plain tests at the end of this file (each failed
before its fix; they run on every shipped provider). ``AVOID_KNOWN_BUGS`` names triggers the
machine should skip while a bug it found is open (none now).
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections import Counter

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, multiple, precondition, rule

from duroxide_sim.core.events import (
    ActivityCompletedMsg, ActivityExecute, ActivityFailedMsg, ActivityScheduled, ApplicationError, CancelInstance,
    ContinueAsNew, CustomStatusUpdated, ExternalEvent, ExternalRaised, KeyValueCleared, KeyValuesCleared, KeyValueSet,
    OrchestrationCompleted, OrchestrationContinuedAsNew, OrchestrationFailed, OrchestrationStarted, QueueMessage,
    StartOrchestration, SubOrchCompletedMsg, TimerCreated, TimerFiredMsg,
)
from duroxide_sim.providers.base import (
    ExecutionMetadata, InstanceFilter, PruneOptions, ScheduledActivityIdentifier, SessionConfig, TagFilter,
)
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.sim.clock import SimClock

#: Triggers the machine skips while a bug it found is open (see the module docstring).
AVOID_KNOWN_BUGS: set[str] = set()

ROOTS = ("i1", "i2", "i3")
CHILD = "i1::sub::2"  # its start names i1 as parent
GHOST = "ghost"  # never started: messages for it are orphans (SPEC §3.12)
INSTANCES = (*ROOTS, CHILD)
ALL = (*INSTANCES, GHOST)
STATUSES = ("Running", "Completed", "Failed", "ContinuedAsNew")
TAG_FILTERS = (TagFilter.DEFAULT_ONLY, TagFilter.ANY, TagFilter.NONE, TagFilter.tags(["gpu"]),
               TagFilter.default_and(["gpu"]))
PIN = "0.1.0"

_tmpdir = tempfile.mkdtemp(prefix="dx-statemachine-")
_files = itertools.count()


def _error(exc: BaseException) -> tuple[str, str]:
    return ("error", type(exc).__name__)


def _norm(value):
    """Provider result -> comparable value without lock tokens."""
    from duroxide_sim.providers.base import InstanceTree, OrchestrationItem, WorkItemLease

    if isinstance(value, OrchestrationItem):
        return ("item", value.instance, value.orchestration_name, value.execution_id, value.version,
                tuple(value.history), tuple(value.messages), value.attempt_count, value.history_error,
                tuple(sorted(value.kv_snapshot.items())))
    if isinstance(value, WorkItemLease):
        return ("lease", value.item, value.attempt_count)
    if isinstance(value, InstanceTree):
        return ("tree", value.root_id, list(value.all_ids))
    if isinstance(value, dict):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_norm(v) for v in value]
    return value


def _try(fn, *args):
    try:
        return ("ok", _norm(fn(*args)))
    except Exception as exc:  # noqa: BLE001 - compared as data
        return _error(exc)


ACK_ARGS = dict(
    kind=st.sampled_from(["running", "running", "complete", "fail", "can", "noop"]),
    id_mode=st.sampled_from(["next", "next", "gap", "fill", "fill", "dup"]),
    n_acts=st.integers(0, 2), act_tag=st.sampled_from([None, None, "gpu"]),
    act_session=st.sampled_from([None, None, "s1"]), timer=st.sampled_from([None, 0, 3000, -5]),
    status=st.sampled_from([None, None, "st-a", "st-b"]),
    kv=st.sampled_from([None, None, "set1", "set2", "clear1", "clear_all"]),
    cancel=st.sampled_from(["none", "none", "existing", "new", "unknown"]),
    extra=st.sampled_from([None, None, "child_start", "queue_other", "suborch_parent"]),
    exec_mode=st.sampled_from(["natural"] * 6 + ["stale"]),
    md_mode=st.sampled_from(["runtime"] * 8 + ["always", "never"]),
)


class OrchHandle:
    """One logical orchestrator lock: the token each provider returned for one fetch."""

    _ids = itertools.count()

    def __init__(self, tokens, item, locked_until):
        self.n = next(self._ids)
        self.tokens = tokens
        self.item = item  # the fetched OrchestrationItem (of the first provider; all were equal)
        self.locked_until = locked_until
        self.live = True  # not acked, abandoned, superseded by a later fetch, or deleted

    def __repr__(self):
        return f"OrchHandle#{self.n}({self.item.instance})"


class WorkHandle:
    _ids = itertools.count()

    def __init__(self, tokens, key):
        self.n = next(self._ids)
        self.tokens = tokens
        self.key = key

    def __repr__(self):
        return f"WorkHandle#{self.n}{self.key}"


class _ORow:
    __slots__ = ("seq", "item", "visible_at", "attempts", "tag")

    def __init__(self, seq, item, visible_at):
        self.seq, self.item, self.visible_at, self.attempts, self.tag = seq, item, visible_at, 0, None


class _WRow:
    __slots__ = ("seq", "item", "visible_at", "attempts", "lock", "locked_until")

    def __init__(self, seq, item, visible_at):
        self.seq, self.item, self.visible_at = seq, item, visible_at
        self.attempts, self.lock, self.locked_until = 0, None, None


class ProviderStateMachine(RuleBasedStateMachine):
    orch_handles = Bundle("orch_handles")
    work_handles = Bundle("work_handles")

    def __init__(self):
        super().__init__()
        self.clock = SimClock()
        path = f"{_tmpdir}/sm-{next(_files)}.db"
        self.providers = [
            InMemoryProvider(self.clock),
            SqliteProvider.open(path, clock=self.clock),
            SqliteProvider.in_memory(clock=self.clock),
        ]
        self.names = ["memory", "sqlite-file", "sqlite-memory"]
        # --- reference model ---
        self.seq = itertools.count(1)
        self.orch: list[_ORow] = []  # insertion order
        self.work: list[_WRow] = []  # insertion order
        self.sessions: dict[str, list] = {}  # id -> [owner, locked_until, last_activity]
        self.locks: dict[str, OrchHandle] = {}  # instance -> newest handle
        self.history: dict[tuple[str, int], list] = {}  # (instance, execution) -> events by id
        self.aid = itertools.count(1000)
        self.snap = None

    def teardown(self):
        for p in self.providers:
            p.close() if hasattr(p, "close") else None

    # --- plumbing ------------------------------------------------------------------------------

    def now(self):
        return self.clock.now_ms()

    def all_same(self, what, results):
        first = results[0]
        for name, r in zip(self.names[1:], results[1:], strict=True):
            assert r == first, f"{what}: providers disagree\n  memory: {first!r}\n  {name}: {r!r}"
        return first

    def each(self, what, call):
        """``call(provider, index)`` on every provider; results compared; the common result."""
        out = []
        for i, p in enumerate(self.providers):
            try:
                out.append(("ok", _norm(call(p, i))))
            except Exception as exc:  # noqa: BLE001
                out.append(_error(exc))
        return self.all_same(what, out)

    def raw_each(self, what, call):
        """As :meth:`each` but also returns the raw per-provider results (tokens needed)."""
        raws, out = [], []
        for i, p in enumerate(self.providers):
            try:
                raw = call(p, i)
                raws.append(raw)
                out.append(("ok", _norm(raw)))
            except Exception as exc:  # noqa: BLE001
                raws.append(None)
                out.append(_error(exc))
        return self.all_same(what, out), raws

    def snapshot(self, p):
        s = {}
        for inst in ALL:
            execs = p.list_executions(inst)
            s[inst] = (
                _norm(p.read(inst)), execs,
                {e: _norm(p.read_with_execution(inst, e)) for e in execs},
                _try(p.get_instance_info, inst),
                {e: _try(p.get_execution_info, inst, e) for e in execs},
                p.get_kv_all_values(inst), p.get_kv_value(inst, "k1"), p.get_custom_status(inst, -1),
                _try(p.list_children, inst), _try(p.get_parent_id, inst), _try(p.get_instance_tree, inst),
                p.latest_execution_id(inst), p.pending_messages(inst),
            )
        s["_global"] = (
            p.list_instances(), [p.list_instances_by_status(x) for x in STATUSES], p.get_system_metrics(),
            p.get_queue_depths(), p.next_wakeup_ms(), p.session_locks(),
            {k: list(v) for k, v in sorted(p.queued_work().items())},
        )
        return s

    def snapshots(self):
        snaps = [self.snapshot(p) for p in self.providers]
        for name, s in zip(self.names[1:], snaps[1:], strict=True):
            if s != snaps[0]:
                diffs = {k: (snaps[0][k], s[k]) for k in s if s[k] != snaps[0][k]}
                raise AssertionError(f"snapshot differs: memory vs {name}: {diffs}")
        return snaps[0]

    def expect_unchanged(self, what):
        """A failed operation changes nothing (SPEC §15.1: every operation is atomic)."""
        after = self.snapshots()
        if self.snap is not None and after != self.snap:
            diffs = {k: (self.snap[k], after[k]) for k in after if after[k] != self.snap[k]}
            raise AssertionError(f"{what} failed but changed state: {diffs}")

    # --- model helpers --------------------------------------------------------------------------

    def add_orch(self, item, visible_at):
        self.orch.append(_ORow(next(self.seq), item, visible_at))

    def add_work(self, item):
        self.work.append(_WRow(next(self.seq), item, self.now()))

    def work_row(self, key):
        for r in self.work:
            if (r.item.instance, r.item.execution_id, r.item.id) == key:
                return r
        return None

    def live_lock(self, instance):
        h = self.locks.get(instance)
        return h if h is not None and h.live and h.locked_until > self.now() else None

    def current_exec(self, inst):
        execs = [e for (i, e) in self.history if i == inst]
        return max(execs) if execs else 1

    def reconcile_orch(self):
        """Drop model rows whose items the providers deleted on their own (orphans at fetch,
        deletes): nothing may appear that the model does not know of."""
        actual = {}
        for inst, items in self.providers[0].queued_work().items():
            actual[inst] = [x for x in items if not isinstance(x, ActivityExecute)]
        kept = []
        remaining = {k: list(v) for k, v in actual.items()}
        for r in self.orch:
            lst = remaining.get(r.item.target_instance, [])
            if lst and lst[0] == r.item:
                lst.pop(0)
                kept.append(r)
        self.orch = kept
        assert all(not v for v in remaining.values()), f"queued items the model never saw: {remaining}"

    # --- enqueue ----------------------------------------------------------------------------------

    @rule(inst=st.sampled_from(INSTANCES), delay=st.sampled_from([None, None, 0, 1000, 40_000]))
    def enqueue_start(self, inst, delay):
        if inst == CHILD:
            item = StartOrchestration(instance=inst, orchestration="Child", input="cin", parent_instance="i1",
                                      parent_id=2, parent_execution_id=1)
        else:
            item = StartOrchestration(instance=inst, orchestration="Orch", input="in")
        r = self.each("enqueue_start", lambda p, i: p.enqueue_for_orchestrator(item, delay))
        assert r == ("ok", None), r
        self.add_orch(item, self.now() + max(0, delay or 0))

    @rule(inst=st.sampled_from(ALL), kind=st.sampled_from(["external", "queue", "cancel", "act_done", "timer",
                                                            "suborch_done"]),
          delay=st.sampled_from([None, None, 0, 2000]), data=st.sampled_from(["d1", "d2"]))
    def enqueue_message(self, inst, kind, delay, data):
        ex = self.current_exec(inst)
        item = {
            "external": lambda: ExternalRaised(instance=inst, name="ev", data=data),
            "queue": lambda: QueueMessage(instance=inst, name="q", data=data),
            "cancel": lambda: CancelInstance(instance=inst, reason=data),
            "act_done": lambda: ActivityCompletedMsg(instance=inst, execution_id=ex, id=2, result=data),
            "timer": lambda: TimerFiredMsg(instance=inst, execution_id=ex, id=3, fire_at_ms=self.now()),
            "suborch_done": lambda: SubOrchCompletedMsg(parent_instance=inst, parent_execution_id=ex, parent_id=2,
                                                        result=data),
        }[kind]()
        r = self.each("enqueue_message", lambda p, i: p.enqueue_for_orchestrator(item, delay))
        assert r == ("ok", None), r
        self.add_orch(item, self.now() + max(0, delay or 0))

    @rule(inst=st.sampled_from(ALL), tag=st.sampled_from([None, None, "gpu", "cpu"]),
          session=st.sampled_from([None, None, "s1", "s2"]))
    def enqueue_worker(self, inst, tag, session):
        item = ActivityExecute(instance=inst, execution_id=1, id=next(self.aid), name="Act", input="x", tag=tag,
                               session_id=session)
        r = self.each("enqueue_worker", lambda p, i: p.enqueue_for_worker(item))
        assert r == ("ok", None), r
        self.add_work(item)

    # --- orchestrator queue ---------------------------------------------------------------------

    @rule(target=orch_handles, lock_ms=st.sampled_from([1000, 5000, 30_000]))
    def fetch_orch(self, lock_ms):
        now = self.now()
        result, raws = self.raw_each("fetch_orchestration_item", lambda p, i: p.fetch_orchestration_item(lock_ms))
        assert result[0] == "ok", result
        if raws[0] is None:
            self.reconcile_orch()
            return multiple()
        item = raws[0]
        inst = item.instance
        # A4/A1: never an instance someone holds a live lock on.
        assert self.live_lock(inst) is None, f"fetched {inst!r} while {self.live_lock(inst)} holds a live lock"
        # The batch: every visible message of the instance, oldest first; attempts +1 each.
        self.reconcile_orch_except(inst)
        batch = sorted((r for r in self.orch if r.item.target_instance == inst and r.visible_at <= now),
                       key=lambda r: (r.visible_at, r.seq))
        assert Counter(map(repr, item.messages)) == Counter(repr(r.item) for r in batch), \
            f"batch {item.messages} != visible messages {[r.item for r in batch]}"
        old = self.locks.get(inst)
        if old is not None:
            old.live = False  # an expired lock taken over: its token becomes unknown
        h = OrchHandle([r.lock_token for r in raws], item, now + lock_ms)
        for r in batch:
            r.attempts += 1
            r.tag = h
        assert item.attempt_count == max(r.attempts for r in batch), (item.attempt_count, [r.attempts for r in batch])
        # History as stored (model): the fetched execution's events in id order.
        stored = self.history.get((inst, item.execution_id), [])
        # Legitimate (both providers agree, SPEC §15.1): an instance WITHOUT a row (its acks never
        # named the orchestration, md_mode="never") takes its metadata from the latest execution's
        # OrchestrationStarted, else from the start item as "execution 1, empty history". Only
        # instances with a row are checked against the stored history.
        if self.snap is not None and self.snap.get(inst, (None,) * 4)[3][0] == "ok":
            assert list(item.history) == stored, f"fetched history {list(item.history)} != stored {stored}"
        self.locks[inst] = h
        return h

    def reconcile_orch_except(self, inst):
        """reconcile_orch, for a fetch of ``inst`` (its own rows are all still queued)."""
        self.reconcile_orch()

    def expect_lock(self, h, what, result, need_unexpired=True):
        ok = h.live and (h.locked_until > self.now() or not need_unexpired)
        if not ok:
            assert result == ("error", "LockLostError"), f"{what} with a dead/expired token {h}: {result}"
        return ok

    @rule(h=orch_handles, **ACK_ARGS)
    def ack(self, h, kind, id_mode, n_acts, act_tag, act_session, timer, status, kv, cancel, extra, exec_mode,
            md_mode):
        item, inst, now = h.item, h.item.instance, self.now()
        can_item = next((m for m in item.messages if isinstance(m, ContinueAsNew)), None)
        start_item = next((m for m in item.messages if isinstance(m, StartOrchestration)), None)
        execution = item.execution_id + 1 if can_item is not None else item.execution_id
        if exec_mode == "stale" and execution > 1:
            execution -= 1
        base = self.history.get((inst, execution), [])
        ids = [e.event_id for e in base]
        last = max(ids, default=0)
        gaps = sorted(set(range(1, last)) - set(ids))
        if id_mode == "fill" and "fill" in AVOID_KNOWN_BUGS:
            id_mode = "next"
        if id_mode == "fill" and not gaps:
            id_mode = "next"
        if md_mode == "never" and kind == "can" and "rowless_can" in AVOID_KNOWN_BUGS:
            md_mode = "runtime"
        if id_mode == "dup" and not ids:
            id_mode = "next"
        counter = itertools.count(last + (2 if id_mode == "gap" else 1))
        fill = iter(gaps)

        def nid():
            if id_mode == "fill":
                nonlocal_fill = next(fill, None)
                if nonlocal_fill is not None:
                    return nonlocal_fill
            return next(counter)

        delta, workers, orchs, cancelled = [], [], [], []
        if id_mode == "dup":
            delta.append(CustomStatusUpdated(event_id=ids[-1], instance_id=inst, execution_id=execution, status="dup"))
        name = item.orchestration_name
        parent = start_item.parent_instance if start_item is not None else None
        new_exec = not base
        if kind != "noop":
            if new_exec:
                delta.append(OrchestrationStarted(event_id=nid(), instance_id=inst, execution_id=execution, name=name,
                                                  version="1.0.0", input="in", parent_instance=parent,
                                                  duroxide_version=PIN))
            for _ in range(n_acts):
                eid = nid()
                delta.append(ActivityScheduled(event_id=eid, instance_id=inst, execution_id=execution, name="Act",
                                               input="x", tag=act_tag, session_id=act_session))
                workers.append(ActivityExecute(instance=inst, execution_id=execution, id=eid, name="Act", input="x",
                                               tag=act_tag, session_id=act_session))
            if timer is not None:
                eid = nid()
                delta.append(TimerCreated(event_id=eid, instance_id=inst, execution_id=execution,
                                          fire_at_ms=now + timer))
                orchs.append(TimerFiredMsg(instance=inst, execution_id=execution, id=eid, fire_at_ms=now + timer))
            if status is not None:
                delta.append(CustomStatusUpdated(event_id=nid(), instance_id=inst, execution_id=execution,
                                                 status=status))
            if kv is not None:
                eid = nid()
                delta.append({
                    "set1": lambda: KeyValueSet(event_id=eid, instance_id=inst, execution_id=execution, key="k1",
                                                value=f"v{eid}", last_updated_at_ms=now),
                    "set2": lambda: KeyValueSet(event_id=eid, instance_id=inst, execution_id=execution, key="k2",
                                                value=f"v{eid}", last_updated_at_ms=now),
                    "clear1": lambda: KeyValueCleared(event_id=eid, instance_id=inst, execution_id=execution, key="k1"),
                    "clear_all": lambda: KeyValuesCleared(event_id=eid, instance_id=inst, execution_id=execution),
                }[kv]())
            if kind == "running" and not any(e.event_id not in ids for e in delta):
                # a turn that records only an arrival (the runtime's ExternalEvent)
                delta.append(ExternalEvent(event_id=nid(), instance_id=inst, execution_id=execution, name="ev",
                                           data="d"))
            if extra == "child_start" and inst == "i1":
                orchs.append(StartOrchestration(instance=CHILD, orchestration="Child", input="cin",
                                                parent_instance="i1", parent_id=2, parent_execution_id=execution))
            elif extra == "queue_other":
                orchs.append(QueueMessage(instance="i2" if inst != "i2" else "i3", name="q", data=f"from-{inst}"))
            elif extra == "suborch_parent" and parent is not None:
                orchs.append(SubOrchCompletedMsg(parent_instance=parent, parent_execution_id=1, parent_id=2,
                                                 result="child-done"))
        md_status = {"complete": "Completed", "fail": "Failed", "can": "ContinuedAsNew"}.get(kind)
        if md_status is not None:
            eid = nid()
            delta.append({
                "Completed": lambda: OrchestrationCompleted(event_id=eid, instance_id=inst, execution_id=execution,
                                                            output="out"),
                "Failed": lambda: OrchestrationFailed(event_id=eid, instance_id=inst, execution_id=execution,
                                                      details=ApplicationError(kind="OrchestrationFailed",
                                                                               message="boom")),
                "ContinuedAsNew": lambda: OrchestrationContinuedAsNew(event_id=eid, instance_id=inst,
                                                                      execution_id=execution, input="next"),
            }[md_status]())
            if md_status == "ContinuedAsNew":
                orchs.append(ContinueAsNew(instance=inst, orchestration=name, input="next", execution_id=execution))
        if cancel == "existing":
            cancelled += [ScheduledActivityIdentifier(r.item.instance, r.item.execution_id, r.item.id)
                          for r in self.work if r.item.instance == inst][:2]
        elif cancel == "new" and workers:
            cancelled.append(ScheduledActivityIdentifier(inst, execution, workers[0].id))
        elif cancel == "unknown":
            cancelled.append(ScheduledActivityIdentifier(inst, execution, 99_999))
        give_name = (md_mode == "always" or (md_mode == "runtime" and any(
            isinstance(e, OrchestrationStarted) for e in delta)))
        if kind == "noop":
            md = ExecutionMetadata()
        else:
            md = ExecutionMetadata(status=md_status, output={"Completed": "out", "Failed": "boom",
                                                             "ContinuedAsNew": "next"}.get(md_status),
                                   orchestration_name=name if give_name else None,
                                   orchestration_version="1.0.0" if give_name else None,
                                   parent_instance_id=parent if give_name else None,
                                   pinned_duroxide_version=PIN if new_exec and kind != "noop" else None)
        result = self.each("ack_orchestration_item", lambda p, i: p.ack_orchestration_item(
            h.tokens[i], execution, list(delta), list(workers), list(orchs), md, list(cancelled)))
        if not self.expect_lock(h, "ack", result):
            self.expect_unchanged("ack with a lost lock")
            return
        if id_mode == "dup":
            # A5: duplicate event id -> the ack fails, nothing changes, the lock is still held.
            assert result[0] == "error" and result[1] != "LockLostError", result
            self.expect_unchanged("ack with a duplicate event id")
            return
        assert result == ("ok", None), f"valid ack failed: {result}"
        # --- model ---
        h.live = False
        hist = self.history.setdefault((inst, execution), [])
        hist.extend(delta)
        hist.sort(key=lambda e: e.event_id)
        self.orch = [r for r in self.orch if r.tag is not h]  # exactly the batch (A3)
        for r in self.orch:
            if r.tag is h:
                r.tag = None
        for w in workers:
            self.add_work(w)
        doomed = {(c.instance, c.execution_id, c.activity_id) for c in cancelled}
        self.work = [r for r in self.work if (r.item.instance, r.item.execution_id, r.item.id) not in doomed]
        for o in orchs:
            self.add_orch(o, o.fire_at_ms if isinstance(o, TimerFiredMsg) else now)

    @rule(h=orch_handles, delay=st.sampled_from([None, None, 0, 1500, 60_000]), ignore=st.booleans())
    def abandon(self, h, delay, ignore):
        now = self.now()
        result = self.each("abandon_orchestration_item",
                           lambda p, i: p.abandon_orchestration_item(h.tokens[i], delay, ignore))
        if not self.expect_lock(h, "abandon", result, need_unexpired=False):
            self.expect_unchanged("abandon with a lost lock")
            return
        assert result == ("ok", None), result
        h.live = False
        inst = h.item.instance
        for r in self.orch:
            if r.tag is h:
                r.tag = None
                if ignore:
                    r.attempts = max(0, r.attempts - 1)
            if delay is not None and r.item.target_instance == inst and r.visible_at <= now:
                r.visible_at = max(r.visible_at, now + delay)

    @rule(h=orch_handles, extend=st.sampled_from([500, 5000, 40_000]))
    def renew(self, h, extend):
        result = self.each("renew_orchestration_item_lock",
                           lambda p, i: p.renew_orchestration_item_lock(h.tokens[i], extend))
        if not self.expect_lock(h, "renew", result):
            self.expect_unchanged("renew with a lost lock")
            return
        assert result == ("ok", None), result
        h.locked_until = self.now() + extend

    def unissued_work_token(self, i):
        """A token of provider ``i``'s own worker-lock shape that no fetch handed out."""
        return "mem-lock-999" if i == 0 else "sql-1-999-w1"

    @rule(which=st.sampled_from(["bogus", "work-token", "empty"]), op=st.sampled_from(["ack", "abandon", "renew"]))
    def foreign_token(self, which, op):
        """A2: unknown / foreign tokens fail (LockLostError) and change nothing."""
        def token(i):
            if which == "work-token":
                return self.unissued_work_token(i)
            return "" if which == "empty" else "no-such-token"

        def call(p, i):
            if op == "ack":
                return p.ack_orchestration_item(token(i), 1, [], [], [], ExecutionMetadata(), [])
            if op == "abandon":
                return p.abandon_orchestration_item(token(i))
            return p.renew_orchestration_item_lock(token(i), 1000)

        result = self.each(f"{op} with a foreign token", call)
        assert result == ("error", "LockLostError"), result
        self.expect_unchanged(f"{op} with a foreign token")

    # --- worker queue ----------------------------------------------------------------------------

    def predict_work(self, tf, session):
        now = self.now()
        if tf.mode == "none":
            return None
        for r in sorted(self.work, key=lambda r: (r.visible_at, r.seq)):
            if r.visible_at > now or (r.locked_until is not None and r.locked_until > now):
                continue
            if not tf.matches(r.item.tag):
                continue
            sid = r.item.session_id
            if sid is not None:
                if session is None:
                    continue
                s = self.sessions.get(sid)
                if s is not None and s[1] > now and s[0] != session.owner_id:
                    continue
            return r
        return None

    @rule(target=work_handles, lock_ms=st.sampled_from([1000, 30_000]), tf=st.sampled_from(TAG_FILTERS),
          owner=st.sampled_from([None, None, "w1", "w2"]), session_lock=st.sampled_from([2000, 30_000]))
    def fetch_work(self, lock_ms, tf, owner, session_lock):
        now = self.now()
        session = SessionConfig(owner_id=owner, lock_timeout_ms=session_lock) if owner else None
        expected = self.predict_work(tf, session)
        result, raws = self.raw_each("fetch_work_item", lambda p, i: p.fetch_work_item(lock_ms, 0, session, tf))
        assert result[0] == "ok", result
        if expected is None:
            assert raws[0] is None, f"fetched {raws[0]} but the model expected nothing"
            return multiple()
        assert raws[0] is not None and raws[0].item == expected.item, f"fetched {raws[0]}, expected {expected.item}"
        expected.attempts += 1
        assert raws[0].attempt_count == expected.attempts, (raws[0].attempt_count, expected.attempts)
        h = WorkHandle([r.lock_token for r in raws], (expected.item.instance, expected.item.execution_id,
                                                       expected.item.id))
        expected.lock, expected.locked_until = h, now + lock_ms
        if expected.item.session_id is not None and session is not None:
            self.sessions[expected.item.session_id] = [owner, now + session_lock, now]
        return h

    def work_live(self, h):
        r = self.work_row(h.key)
        return r if r is not None and r.lock is h else None

    def bump_session(self, sid):
        s = self.sessions.get(sid) if sid else None
        if s is not None and s[1] > self.now():
            s[2] = self.now()

    @rule(h=work_handles, completion=st.sampled_from(["done", "done", "failed", None, "invalid"]))
    def ack_work(self, h, completion):
        inst, ex, aid = h.key
        comp = {
            "done": lambda: ActivityCompletedMsg(instance=inst, execution_id=ex, id=aid, result="r"),
            "failed": lambda: ActivityFailedMsg(instance=inst, execution_id=ex, id=aid,
                                                details=ApplicationError(kind="ActivityFailed", message="m")),
            None: lambda: None,
            "invalid": lambda: QueueMessage(instance=inst, name="q", data="not a completion"),
        }[completion]()
        result = self.each("ack_work_item", lambda p, i: p.ack_work_item(h.tokens[i], comp))
        row = self.work_live(h)
        if row is None or row.locked_until <= self.now():
            assert result == ("error", "LockLostError"), f"work ack with a dead/expired token: {result}"
            self.expect_unchanged("work ack with a lost lock")
            return
        if completion == "invalid":
            assert result[0] == "error", result
            self.expect_unchanged("work ack with a non-completion")
            return
        assert result == ("ok", None), result
        self.work.remove(row)
        self.bump_session(row.item.session_id)
        if comp is not None:
            self.add_orch(comp, self.now())

    @rule(h=work_handles, delay=st.sampled_from([None, None, 0, 2000]), ignore=st.booleans())
    def abandon_work(self, h, delay, ignore):
        result = self.each("abandon_work_item", lambda p, i: p.abandon_work_item(h.tokens[i], delay, ignore))
        row = self.work_live(h)
        if row is None:
            assert result == ("error", "LockLostError"), f"work abandon with a dead token: {result}"
            self.expect_unchanged("work abandon with a lost lock")
            return
        assert result == ("ok", None), result
        row.lock = row.locked_until = None
        if ignore:
            row.attempts = max(0, row.attempts - 1)
        if delay is not None:
            row.visible_at = max(row.visible_at, self.now() + delay)

    @rule(h=work_handles, extend=st.sampled_from([500, 30_000]))
    def renew_work(self, h, extend):
        result = self.each("renew_work_item_lock", lambda p, i: p.renew_work_item_lock(h.tokens[i], extend))
        row = self.work_live(h)
        if row is None or row.locked_until <= self.now():
            assert result == ("error", "LockLostError"), f"work renew with a dead/expired token: {result}"
            self.expect_unchanged("work renew with a lost lock")
            return
        assert result == ("ok", None), result
        row.locked_until = self.now() + extend
        self.bump_session(row.item.session_id)

    @rule(owners=st.sampled_from([("w1",), ("w2",), ("w1", "w2"), ()]), extend=st.sampled_from([1000, 30_000]),
          idle=st.sampled_from([1000, 300_000]))
    def renew_sessions(self, owners, extend, idle):
        now = self.now()
        result = self.each("renew_session_lock", lambda p, i: p.renew_session_lock(list(owners), extend, idle))
        expected = 0
        for s in self.sessions.values():
            if s[0] in owners and s[1] > now and s[2] > now - idle:
                s[1] = now + extend
                expected += 1
        assert result == ("ok", expected), (result, expected)

    @rule(idle=st.sampled_from([1000, 300_000]))
    def cleanup_sessions(self, idle):
        now = self.now()
        result = self.each("cleanup_orphaned_sessions", lambda p, i: p.cleanup_orphaned_sessions(idle))
        in_use = {r.item.session_id for r in self.work}
        doomed = [sid for sid, s in self.sessions.items() if s[1] < now and sid not in in_use]
        for sid in doomed:
            del self.sessions[sid]
        assert result == ("ok", len(doomed)), (result, doomed)

    # --- time ------------------------------------------------------------------------------------

    @rule(ms=st.sampled_from([1, 999, 1000, 2500, 5000, 30_000, 61_000, 301_000]))
    def advance(self, ms):
        self.clock.advance(ms)

    # --- management ------------------------------------------------------------------------------

    def after_delete(self, before_instances):
        now_instances = set(self.providers[0].list_instances())
        deleted = set(before_instances) - now_instances
        for inst in deleted:
            for key in [k for k in self.history if k[0] == inst]:
                del self.history[key]
            h = self.locks.pop(inst, None)
            if h is not None:
                h.live = False
        self.work = [r for r in self.work if r.item.instance not in deleted]
        self.reconcile_orch()
        # the rows a deleted lock tagged are gone or (other instances) untouched
        return deleted

    @rule(inst=st.sampled_from(INSTANCES + (GHOST,)), force=st.booleans())
    def delete_instance(self, inst, force):
        before = self.providers[0].list_instances()
        result = self.each("delete_instance", lambda p, i: p.delete_instance(inst, force))
        if result[0] == "error":
            self.expect_unchanged("delete_instance")
            return
        self.after_delete(before)

    @rule(ids=st.sampled_from([None, ("i1",), ("i2", "i3"), ()]), before_ms=st.sampled_from([None, 0, 10**13]),
          limit=st.sampled_from([None, 1, 2]))
    def delete_bulk(self, ids, before_ms, limit):
        before = self.providers[0].list_instances()
        flt = InstanceFilter(instance_ids=ids, completed_before=before_ms, limit=limit)
        result = self.each("delete_instance_bulk", lambda p, i: p.delete_instance_bulk(flt))
        assert result[0] == "ok", result
        deleted = self.after_delete(before)
        for inst in deleted:  # bulk delete never takes a Running root (SPEC §14)
            assert inst == CHILD or self.snap[inst][3][1].status != "Running", (inst, self.snap[inst][3])

    @rule(inst=st.sampled_from(INSTANCES), keep=st.sampled_from([None, 0, 1, 2]),
          before_ms=st.sampled_from([None, 10**13, 0]), bulk=st.booleans())
    def prune(self, inst, keep, before_ms, bulk):
        opts = PruneOptions(keep_last=keep, completed_before=before_ms)
        if bulk:
            result = self.each("prune_executions_bulk",
                               lambda p, i: p.prune_executions_bulk(InstanceFilter(instance_ids=[inst]), opts))
        else:
            result = self.each("prune_executions", lambda p, i: p.prune_executions(inst, opts))
        if result[0] == "error":
            self.expect_unchanged("prune")
            return
        after = set(self.providers[0].list_executions(inst))
        info = self.snap[inst][3]
        for (i, e) in [k for k in self.history if k[0] == inst]:
            if e not in after:
                # never the current execution, never a Running one (SPEC §14, §16 F24)
                assert info[0] == "ok" and e != info[1].current_execution_id, (inst, e, info)
                assert self.snap[inst][4][e][1].status != "Running", (inst, e)
                del self.history[(i, e)]


    @rule(h=orch_handles, **ACK_ARGS)
    def ack_2(self, **kw):
        self.ack(**kw)

    @rule(h=orch_handles, **ACK_ARGS)
    def ack_3(self, **kw):
        self.ack(**kw)

    def live_handles(self):
        return [h for h in self.locks.values() if h.live]

    @precondition(lambda self: self.live_handles())
    @rule(**ACK_ARGS)
    def ack_newest_live(self, **kw):
        """The runtime's usual path: ack the turn it just fetched (live lock)."""
        self.ack(h=max(self.live_handles(), key=lambda h: h.n), **kw)

    @rule(lock_ms=st.sampled_from([5000, 30_000]), **ACK_ARGS)
    def turn(self, lock_ms, **kw):
        """fetch + ack in one step (a whole runtime turn), so histories grow long."""
        h = self.fetch_orch(lock_ms)
        if isinstance(h, OrchHandle):
            self.snap = self.snapshots()  # the state the ack starts from
            self.ack(h=h, **kw)

    @rule(tf=st.sampled_from(TAG_FILTERS[:2]), owner=st.sampled_from([None, "w1", "w2"]),
          completion=st.sampled_from(["done", "failed", None]))
    def work_turn(self, tf, owner, completion):
        h = self.fetch_work(30_000, tf, owner, 30_000)
        if isinstance(h, WorkHandle):
            self.snap = self.snapshots()
            self.ack_work(h, completion)

    # --- weights: Hypothesis picks enabled rules uniformly, so the turn rules get aliases -----------

    @rule(target=orch_handles, lock_ms=st.sampled_from([1000, 5000, 30_000]))
    def fetch_orch_2(self, lock_ms):
        return self.fetch_orch(lock_ms)

    @rule(target=orch_handles, lock_ms=st.sampled_from([5000, 30_000]))
    def fetch_orch_3(self, lock_ms):
        return self.fetch_orch(lock_ms)

    @rule(inst=st.sampled_from(INSTANCES), delay=st.sampled_from([None]))
    def enqueue_start_2(self, inst, delay):
        self.enqueue_start(inst, delay)

    @rule(target=work_handles, lock_ms=st.sampled_from([1000, 30_000]), tf=st.sampled_from(TAG_FILTERS[:2]),
          owner=st.sampled_from([None, "w1"]), session_lock=st.sampled_from([30_000]))
    def fetch_work_2(self, lock_ms, tf, owner, session_lock):
        return self.fetch_work(lock_ms, tf, owner, session_lock)

    # --- invariants ------------------------------------------------------------------------------

    @invariant()
    def consistent(self):
        snap = self.snapshots()  # all providers agree on every observable
        # Orchestrator queue == model (insertion order): ack deleted exactly its batch, nothing lost.
        actual_orch = {k: [x for x in v if not isinstance(x, ActivityExecute)] for k, v in snap["_global"][6].items()}
        actual_orch = {k: v for k, v in actual_orch.items() if v}
        model_orch: dict = {}
        for r in self.orch:
            model_orch.setdefault(r.item.target_instance, []).append(r.item)
        assert actual_orch == model_orch, f"orchestrator queue {actual_orch} != model {model_orch}"
        actual_work = {k: [x for x in v if isinstance(x, ActivityExecute)] for k, v in snap["_global"][6].items()}
        actual_work = {k: v for k, v in actual_work.items() if v}
        model_work: dict = {}
        for r in self.work:
            model_work.setdefault(r.item.instance, []).append(r.item)
        assert actual_work == model_work, f"worker queue {actual_work} != model {model_work}"
        # History: exactly what the acks stored; append-only (the model only ever appends).
        for inst in ALL:
            stored = snap[inst][2]
            model = {e: evs for (i, e), evs in self.history.items() if i == inst}
            assert stored == model, f"history of {inst}: stored {stored} != model {model}"
        self.snap = snap


ProviderStateMachine.TestCase.settings = settings(
    derandomize=True, max_examples=250, stateful_step_count=60, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestProviderStateMachine = ProviderStateMachine.TestCase


def teardown_module(module):
    shutil.rmtree(_tmpdir, ignore_errors=True)


# --- bugs found by the machine (plain tests: they fail until fixed) ----------------------------------


def _started(inst, eid=1):
    return OrchestrationStarted(event_id=eid, instance_id=inst, name="Orch", version="1.0.0", input="in",
                                duroxide_version=PIN)


def _ext(inst, eid):
    return ExternalEvent(event_id=eid, instance_id=inst, name="ev", data="d")


def test_an_event_id_filling_a_gap_is_read_and_fetched_after_the_history_was_cached(each_provider):
    """Ids are stored verbatim (SPEC §1, §15.1; §16 C15 / J37: gaps and non-monotonic ids are
    accepted): an event acked with an id below the execution's highest (filling a gap) is in
    every later read and fetch. SqliteProvider's and PostgresProvider's decoded-history caches
    read only rows after their last cached id, so once [1, 3] had been fetched event 2 was
    stored (``event_count`` 3) but missing from ``read`` and the next fetch's history."""
    p, _clock = each_provider
    p.enqueue_for_orchestrator(StartOrchestration(instance="a", orchestration="Orch", input="in"))
    item = p.fetch_orchestration_item(30_000)
    p.ack_orchestration_item(item.lock_token, 1, [_started("a"), _ext("a", 3)], [], [],
                             ExecutionMetadata(orchestration_name="Orch", orchestration_version="1.0.0",
                                               pinned_duroxide_version=PIN))
    p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="ev", data="d"))
    item = p.fetch_orchestration_item(30_000)  # history [1, 3]: now cached
    assert [e.event_id for e in item.history] == [1, 3]
    p.ack_orchestration_item(item.lock_token, 1, [_ext("a", 2)], [], [], ExecutionMetadata())
    p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="ev", data="d"))
    item = p.fetch_orchestration_item(30_000)
    assert p.get_execution_info("a", 1).event_count == 3
    assert [e.event_id for e in p.read("a")] == [1, 2, 3]
    assert [e.event_id for e in item.history] == [1, 2, 3]
    p.append_with_execution("a", 1, [_ext("a", 5)])
    assert [e.event_id for e in p.read("a")] == [1, 2, 3, 5]  # cached again
    p.append_with_execution("a", 1, [_ext("a", 4)])
    assert [e.event_id for e in p.read_with_execution("a", 1)] == [1, 2, 3, 4, 5]


def test_a_hidden_continue_as_new_is_awaited_also_for_an_instance_without_a_row(each_provider):
    """When the current execution continued-as-new and its ContinueAsNew item is queued but not
    yet visible (abandoned with a delay), a fetch waits for it rather than hand out a batch
    without it, which the runtime would discard (SPEC §3.1 step 3, §8: the message was lost).
    This holds also for an instance whose acks named no orchestration (no instance row; its
    current execution is the latest stored one): SQLite and PostgreSQL checked only instances
    with a row and handed out the ExternalRaised alone."""
    p, _clock = each_provider
    p.enqueue_for_orchestrator(StartOrchestration(instance="a", orchestration="Orch", input="in"))
    item = p.fetch_orchestration_item(30_000)
    p.ack_orchestration_item(
        item.lock_token, 1,
        [_started("a"), OrchestrationContinuedAsNew(event_id=2, instance_id="a", input="next")], [],
        [ContinueAsNew(instance="a", orchestration="Orch", input="next")],
        ExecutionMetadata(status="ContinuedAsNew", output="next"))  # no name: no instance row
    item = p.fetch_orchestration_item(30_000)  # the ContinueAsNew batch
    assert any(isinstance(m, ContinueAsNew) for m in item.messages)
    p.abandon_orchestration_item(item.lock_token, 60_000)  # hidden for a minute
    p.enqueue_for_orchestrator(ExternalRaised(instance="a", name="ev", data="d"))
    got = p.fetch_orchestration_item(30_000)
    assert got is None, f"{type(p).__name__} handed out {got.messages} without the ContinueAsNew item"
