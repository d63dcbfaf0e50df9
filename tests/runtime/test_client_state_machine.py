"""A Hypothesis stateful probe of the Client and the management API against a live Runtime
(SPEC §6, §7, §8, §11, §13, §14, §17), stepped deterministically by SequentialDriver on a
SimClock: InMemoryProvider in the main machine, SqliteProvider (in memory) in a smaller one.

Rules start instances (fresh, duplicate, hostile and invalid ids), raise events and enqueue
queue messages (to running, finished and unknown instances), cancel, delete (forced or not,
roots, children, unknown), bulk-delete, prune (one and bulk), move the simulated clock, run
the driver for a few steps or until quiet, and read everything the client offers. The model
keeps what must hold:

* a terminal status (Completed/Failed, with its output or error) never changes until the
  instance is deleted;
* once the runtime is quiet each instance is in the state its orchestration and the signals it
  received imply (cancelled ones Failed with ``canceled: {reason}``, their children too);
* delete removes exactly the instance and its descendants, refuses a running tree without
  ``force`` (InstanceStillRunning), a sub-orchestration (CannotDeleteSubOrchestration, even
  forced) and an unknown id (InstanceNotFound);
* prune never removes the current execution, and never changes a status;
* list_all_instances / list_instances_by_status / get_instance_info / get_execution_info /
  read_execution_history / get_instance_tree / get_system_metrics / get_orchestration_stats
  agree with each other and with get_status;
* unknown ids read as documented (NotFound, None, [], InstanceNotFound, a one-id tree);
* every error is a documented exception type whose message names the problem.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from duroxide_sim import (
    CannotDeleteSubOrchestration,
    Client,
    InMemoryProvider,
    InstanceFilter,
    InstanceNotFound,
    InstanceStillRunning,
    InvalidInputError,
    OperationTimeout,
    PruneOptions,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
)
from duroxide_sim.errors import DuroxideError
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

DRAIN_EVERY = 2  # the Drain orchestration continues-as-new after this many messages
LONG_TIMER_MS = 3_600_000
LEAF_TIMER_MS = 5_000
KV_TIMER_MS = 1_000

ORCHS = ("WaitThenAct", "Drain", "Parent", "Fails", "LongTimer", "StatusKv", "NoSuchOrch")

#: Ids a client may start (odd but valid) and ids it must refuse.
HOSTILE_OK = ["ünï-ç😀", "with space", "x" * 300, "a::b", "q'\"%_;--", "../etc", "tab\there", "ℌ𝔢𝔩𝔩𝔬", "L" * 16_370]
INVALID_IDS = ["", "sub::x", "a::sub::b", "nul\x00id", "lone\ud800", "y" * 16_385, "z" * 17_409, 5, None, b"bytes"]


def register(rt: Runtime) -> None:
    @rt.register_activity("Echo")
    def echo(ctx, data):
        return {"echo": data}

    @rt.register_orchestration("WaitThenAct")
    def wait_then_act(ctx, inp):
        data = yield ctx.wait_for_event("go")
        out = yield ctx.schedule_activity("Echo", data)
        return out

    @rt.register_orchestration("Drain")
    def drain(ctx, inp):
        seen = (inp or {}).get("seen", 0)
        while True:
            msg = yield ctx.dequeue_event("q")
            if msg == "stop":
                return seen
            seen += 1
            ctx.set_custom_status(f"seen={seen}")
            ctx.set_kv_value("seen", str(seen))
            if seen % DRAIN_EVERY == 0:
                yield ctx.continue_as_new({"seen": seen})

    @rt.register_orchestration("Leaf")
    def leaf(ctx, n):
        yield ctx.schedule_timer(LEAF_TIMER_MS)
        return n * 10

    @rt.register_orchestration("Parent")
    def parent(ctx, inp):
        yield ctx.start_orchestration("Leaf", f"{ctx.instance_id}-det", 0)
        a = yield ctx.schedule_sub_orchestration("Leaf", 1)
        b = yield ctx.schedule_sub_orchestration_with_id("Leaf", f"{ctx.instance_id}-kid", 2)
        return [a, b]

    @rt.register_orchestration("Fails")
    def fails(ctx, inp):
        yield ctx.schedule_timer(10)
        raise ValueError("boom on purpose")

    @rt.register_orchestration("LongTimer")
    def long_timer(ctx, inp):
        yield ctx.schedule_timer(LONG_TIMER_MS)
        return "late"

    @rt.register_orchestration("StatusKv")
    def status_kv(ctx, inp):
        ctx.set_custom_status("one")
        ctx.set_kv_value("k", "v1")
        yield ctx.schedule_timer(KV_TIMER_MS)
        ctx.set_custom_status("two")
        ctx.set_kv_value("k", "v2")
        return "kv-done"


class Inst:
    """The model of one incarnation of a root instance the machine started."""

    def __init__(self, iid: str, name: str) -> None:
        self.iid = iid
        self.name = name
        self.cancel_reason: str | None = None  # a cancel sent while it was not terminal
        self.raised_live = False  # "go" raised while the subscription was persisted
        self.queue: list[str] = []  # messages enqueued while it (or its start) existed
        self.terminal: tuple | None = None  # first terminal status seen
        self.child_cancel: str | None = None  # a child of this Parent cancelled while both ran


def _check_error(exc: BaseException, *words: str) -> None:
    """A documented error type (DuroxideError; TypeError for a non-bool force) with a message
    naming the problem (one of ``words``, case-insensitive)."""
    assert isinstance(exc, (DuroxideError, TypeError)), f"undocumented error type {type(exc).__name__}: {exc!r}"
    text = str(exc).lower()
    assert text, f"{type(exc).__name__} without a message"
    if words:
        assert any(w.lower() in text for w in words), f"{type(exc).__name__} message {str(exc)!r} names none of {words}"


class ClientMachine(RuleBasedStateMachine):
    """Client + management API over a live runtime; subclasses choose the provider."""

    def make_provider(self, clock: SimClock):
        return InMemoryProvider(clock)

    def __init__(self) -> None:
        super().__init__()
        self.clock = SimClock()
        self.provider = self.make_provider(self.clock)
        self.rt = Runtime(self.provider, RuntimeOptions(), clock=self.clock, ids=SequentialIds())
        register(self.rt)
        self.driver = SequentialDriver(self.rt, self.clock, max_steps=200_000)
        self.client = Client(self.provider, clock=self.clock, sleep=self.driver.sleep)
        self.counter = itertools.count()
        self.insts: dict[str, Inst] = {}  # live root incarnations by id
        self.tainted: set[str] = set()  # ids a stray message may still reach: never restarted
        self.deleted: set[str] = set()  # ids deleted (all of a tree), not started again since
        self.terminal_seen: dict[str, tuple] = {}  # any instance id (children too) -> terminal status
        self.last_metrics: dict[str, int] = {}

    def teardown(self) -> None:
        close = getattr(self.provider, "close", None)
        if close is not None:
            close()

    # --- helpers -----------------------------------------------------------------------------

    def status(self, iid: str):
        st_ = self.client.get_status(iid)
        assert st_.status in ("NotFound", "Running", "Completed", "Failed"), st_
        if st_.is_terminal:
            snap = (st_.status, st_.output, st_.error)
            old = self.terminal_seen.get(iid)
            assert old is None or old == snap, f"terminal status of {iid!r} changed: {old} -> {snap}"
            self.terminal_seen[iid] = snap
        else:
            assert iid not in self.terminal_seen, (
                f"{iid!r} was {self.terminal_seen.get(iid)} and now reads {st_.status}")
        return st_

    def existing(self) -> list[str]:
        return self.client.list_all_instances()

    def forget(self, ids) -> None:
        for i in ids:
            self.terminal_seen.pop(i, None)
            self.insts.pop(i, None)
            self.deleted.add(i)

    def pick(self, data, pool):
        pool = sorted(pool)
        return data.draw(st.sampled_from(pool)) if pool else None

    # --- starting ----------------------------------------------------------------------------

    @initialize(names=st.lists(st.sampled_from(ORCHS), min_size=2, max_size=6))
    def start_some(self, names):
        for name in names:
            self.start_new(name, None)

    @rule(name=st.sampled_from(ORCHS))
    def start_plain(self, name):
        self.start_new(name, None)

    @rule(name=st.sampled_from(ORCHS), hostile=st.sampled_from([None] * 6 + HOSTILE_OK))
    def start_new(self, name, hostile):
        n = next(self.counter)
        iid = f"i{n}-{name}" if hostile is None else f"{hostile}{n}"
        self.client.start_orchestration(iid, name, {"n": n})
        self.insts[iid] = Inst(iid, name)
        self.deleted.discard(iid)

    @rule(data=st.data())
    def start_duplicate(self, data):
        """Start again onto a live id (same orchestration): not an error; a finished one stays
        as it was, a running one absorbs it (SPEC §7, §14: no duplicate check)."""
        iid = self.pick(data, self.insts)
        if iid is None:
            return
        self.client.start_orchestration(iid, self.insts[iid].name, {"again": True})

    @rule(data=st.data())
    def restart_deleted(self, data):
        """Start a deleted id afresh: a new incarnation, nothing of the old one visible."""
        iid = self.pick(data, self.deleted - self.tainted - set(self.insts))
        if iid is None or "-" not in iid or not iid.startswith("i"):
            return
        name = iid.split("-", 1)[1]
        if name not in ORCHS:
            return
        assert self.status(iid).status == "NotFound"
        self.client.start_orchestration(iid, name, {"reborn": True})
        self.insts[iid] = Inst(iid, name)
        self.deleted.discard(iid)

    @rule(bad=st.sampled_from(INVALID_IDS), op=st.sampled_from(["start", "raise", "enqueue", "cancel", "status",
                                                               "info", "delete", "prune", "kv", "tree", "stats"]))
    def invalid_id(self, bad, op):
        calls = {
            "start": lambda: self.client.start_orchestration(bad, "Fails"),
            "raise": lambda: self.client.raise_event(bad, "go", 1),
            "enqueue": lambda: self.client.enqueue_event(bad, "q", 1),
            "cancel": lambda: self.client.cancel_instance(bad, "r"),
            "status": lambda: self.client.get_status(bad),
            "info": lambda: self.client.get_instance_info(bad),
            "delete": lambda: self.client.delete_instance(bad, True),
            "prune": lambda: self.client.prune_executions(bad),
            "kv": lambda: self.client.get_kv_value(bad, "k"),
            "tree": lambda: self.client.get_instance_tree(bad),
            "stats": lambda: self.client.get_orchestration_stats(bad),
        }
        # "sub::"-marked ids are refused only where a root is named (start); elsewhere they are
        # the ids of real sub-orchestrations and must stay readable.
        # The same holds for ids between the start limit (16 KiB) and the read limit (17 KiB).
        readable = isinstance(bad, str) and ("sub::" in bad or len(bad) == 16_385)
        if readable and op != "start":
            try:
                calls[op]()
            except InstanceNotFound as exc:
                assert op in ("info", "delete", "prune"), (op, exc)
                _check_error(exc, "not found")
            return
        before = self.existing()
        with pytest.raises(Exception) as info:
            calls[op]()
        _check_error(info.value, "instance", "id")
        assert isinstance(info.value, (InvalidInputError, TypeError)), repr(info.value)
        assert self.existing() == before

    # --- signals -----------------------------------------------------------------------------

    @rule(data=st.data(), payload=st.sampled_from([None, 0, "x", {"a": [1, "ü"]}]))
    def raise_go(self, data, payload):
        iid = self.pick(data, self.insts)
        if iid is None:
            return
        inst = self.insts[iid]
        st_ = self.status(iid)
        self.client.raise_event(iid, "go", payload)
        if inst.name == "WaitThenAct" and st_.status == "Running":
            inst.raised_live = True  # first turn committed: the subscription is persisted (§6.1)

    @rule(data=st.data(), stop=st.sampled_from([False, False, False, True]), count=st.integers(1, 5))
    def enqueue(self, data, stop, count):
        iid = self.pick(data, [i for i, m in self.insts.items() if m.name == "Drain"])
        if iid is None:
            return
        inst = self.insts[iid]
        for k in range(count):
            if len(inst.queue) >= 14 or "stop" in inst.queue:
                return  # stays under the carry-forward limit of 20 (§6.2), which would drop some
            msg = "stop" if stop and k == count - 1 else f"m{len(inst.queue)}"
            self.client.enqueue_event(iid, "q", msg)
            inst.queue.append(msg)

    @rule(target_=st.sampled_from(["ghost", "finished"]), kind=st.sampled_from(["raise", "enqueue", "cancel"]))
    def signal_nowhere(self, target_, kind):
        """Signals to an unknown id or to finished instances: accepted, and change nothing."""
        if target_ == "ghost":
            iid = f"ghost-{next(self.counter)}"
        else:
            done = sorted(i for i, m in self.insts.items() if self.status(i).is_terminal)
            if not done:
                return
            iid = done[0]
        before = self.status(iid)
        {"raise": lambda: self.client.raise_event(iid, "go", "late"),
         "enqueue": lambda: self.client.enqueue_event(iid, "q", "late"),
         "cancel": lambda: self.client.cancel_instance(iid, "too late")}[kind]()
        self.driver.run_until_idle()
        after = self.status(iid)
        assert (after.status, after.output, after.error) == (before.status, before.output, before.error)
        if target_ == "ghost":
            assert after.status == "NotFound"
            assert iid not in self.existing()

    @rule(data=st.data(), reason=st.sampled_from(["stop it", "", "ünï reason"]))
    def cancel(self, data, reason):
        iid = self.pick(data, self.insts)
        if iid is None:
            return
        inst = self.insts[iid]
        st_ = self.status(iid)
        self.client.cancel_instance(iid, reason)
        if not st_.is_terminal and inst.cancel_reason is None:
            inst.cancel_reason = reason

    @rule(data=st.data(), reason=st.sampled_from(["kid stop", ""]))
    def cancel_child(self, data, reason):
        """Cancel a sub-orchestration directly: its parent sees ``canceled: ...`` (SPEC §7)."""
        existing = self.existing()
        kids = {i: self.client.get_instance_info(i).parent_instance_id for i in existing}
        kid = self.pick(data, [i for i, p in kids.items() if p is not None and p in self.insts])
        if kid is None:
            return
        parent = self.insts[kids[kid]]
        kst, pst = self.status(kid), self.status(parent.iid)
        self.client.cancel_instance(kid, reason)
        if not kst.is_terminal and not pst.is_terminal and parent.child_cancel is None:
            parent.child_cancel = reason

    # --- time --------------------------------------------------------------------------------

    @rule(n=st.integers(1, 6))
    def steps(self, n):
        for _ in range(n):
            if not self.driver._step_once():
                break

    @rule(ms=st.sampled_from([1, 50, 1_000, 6_000, 60_000]))
    def advance(self, ms):
        self.clock.advance(ms)
        self.driver.run_until_idle()

    @rule()
    def run_quiet(self):
        self.driver.run_until_quiet()
        self.check_quiet()

    @rule(data=st.data(), timeout=st.sampled_from([0, 10, 500, 10_000]))
    def wait(self, data, timeout):
        iid = self.pick(data, self.insts)
        if iid is None:
            return
        try:
            res = self.client.wait_for_orchestration(iid, timeout)
        except OperationTimeout as exc:
            _check_error(exc, "timed out")
            assert not self.status(iid).is_terminal
            return
        assert res.is_terminal
        again = self.status(iid)
        assert (again.status, again.output, again.error) == (res.status, res.output, res.error)

    @rule()
    def step_orchestrator_only(self):
        """One orchestration turn, no activity: lands between a turn and its activity, or in a
        continue-as-new gap."""
        self.rt.orchestration_dispatcher.step()

    @rule(data=st.data(), timeout=st.sampled_from([0, 20, 2_000]))
    def wait_status_change(self, data, timeout):
        iid = self.pick(data, self.insts)
        if iid is None:
            return
        seen = self.status(iid).custom_status_version
        try:
            res = self.client.wait_for_status_change(iid, seen, 10, timeout)
        except OperationTimeout as exc:
            _check_error(exc, "timed out")
            now = self.status(iid)
            assert not now.is_terminal and now.custom_status_version == seen, now
            return
        assert res.is_terminal or res.custom_status_version > seen, (seen, res)
        self.status(iid)

    @rule(data=st.data(), bad=st.sampled_from(["obj", "set", "bytes", "badname", "badreason", "timeout",
                                               "status", "force", "filter", "exec"]))
    def bad_arguments(self, data, bad):
        """Wrong arguments: a documented error naming the problem, and nothing changes."""
        iid = self.pick(data, self.insts) or "ghost-args"
        before = self.existing()
        calls = {
            "obj": (lambda: self.client.raise_event(iid, "go", object()), ("object", "serializ", "json", "data")),
            "set": (lambda: self.client.enqueue_event(iid, "q", {1, 2}), ("set", "serializ", "json", "message")),
            "bytes": (lambda: self.client.start_orchestration("bytes-start", "Fails", b"raw"),
                      ("bytes", "serializ", "json", "input")),
            "badname": (lambda: self.client.raise_event(iid, "", 1), ("event name",)),
            "badreason": (lambda: self.client.cancel_instance(iid, 5), ("reason",)),
            "timeout": (lambda: self.client.wait_for_orchestration(iid, -1), ("timeout",)),
            "status": (lambda: self.client.list_instances_by_status("Done"), ("status",)),
            "force": (lambda: self.client.delete_instance(iid, "yes"), ("force",)),
            "filter": (lambda: self.client.delete_instance_bulk({"instance_ids": [iid]}), ("filter",)),
            "exec": (lambda: self.client.get_execution_info(iid, 0), ("execution",)),
        }
        call, words = calls[bad]
        with pytest.raises(Exception) as info:
            call()
        _check_error(info.value, *words)
        assert isinstance(info.value, (ValueError, TypeError)), repr(info.value)
        assert self.existing() == before

    # --- management --------------------------------------------------------------------------

    def children_of(self, iid: str, existing) -> set[str]:
        return {i for i in existing if self.client.get_instance_info(i).parent_instance_id == iid}

    def tree_from_infos(self, root: str, existing: list[str], infos: dict | None = None) -> set[str]:
        if infos is None:
            infos = {i: self.client.get_instance_info(i) for i in existing}
        parents = {i: infos[i].parent_instance_id for i in existing}
        out = {root}
        changed = True
        while changed:
            changed = False
            for i, p in parents.items():
                if p in out and i not in out:
                    out.add(i)
                    changed = True
        return out

    @rule(data=st.data(), force=st.booleans())
    def delete(self, data, force):
        existing = self.existing()
        pool = set(existing) | set(self.insts) | {"ghost-del"}
        iid = self.pick(data, pool)
        info = self.client.get_instance_info(iid) if iid in existing else None
        tree = self.tree_from_infos(iid, existing) if info is not None else set()
        statuses = {i: self.client.get_instance_info(i).status for i in tree}
        running = {i for i, s_ in statuses.items() if s_ == "Running"}
        # (between executions of a continue-as-new the current execution reads ContinuedAsNew:
        # the reference deletes it without force, as its bulk delete does; either is accepted)
        can_gap = {i for i, s_ in statuses.items() if s_ == "ContinuedAsNew"}
        try:
            res = self.client.delete_instance(iid, force)
        except InstanceNotFound as exc:
            _check_error(exc, "not found")
            assert iid in str(exc) or repr(iid) in str(exc)
            assert info is None, f"InstanceNotFound for existing {iid!r}"
            assert self.status(iid).status == "NotFound"
            return
        except CannotDeleteSubOrchestration as exc:
            _check_error(exc, "sub-orchestration")
            assert info is not None and info.parent_instance_id is not None
            assert self.existing() == existing
            return
        except InstanceStillRunning as exc:
            _check_error(exc, "running")
            assert not force and (running or can_gap), (iid, statuses)
            assert self.existing() == existing
            return
        assert info is not None, f"deleted unknown {iid!r}: {res}"
        assert info.parent_instance_id is None, f"deleted the sub-orchestration {iid!r}"
        assert force or not running, f"deleted running {running} without force"
        after = self.existing()
        assert set(after) == set(existing) - tree, (sorted(tree), sorted(set(existing) - set(after)))
        assert res.instances_deleted == len(tree), (res, tree)
        for i in tree:
            assert self.status(i).status == "NotFound" if i not in self.terminal_seen else True
            self.terminal_seen.pop(i, None)
            assert self.client.get_status(i).status == "NotFound"
            assert self.client.list_executions(i) == []
            assert self.client.get_kv_value(i, "k") is None
        self.forget(tree)

    @rule(data=st.data(), limit=st.sampled_from([None, 0, 1, 3]), by_ids=st.booleans(),
          cutoff=st.sampled_from([None, None, "now", "past"]))
    def delete_bulk(self, data, limit, by_ids, cutoff):
        existing = self.existing()
        ids = None
        if by_ids:
            ids = data.draw(st.lists(st.sampled_from(sorted(set(existing) | {"ghost-bulk"})), max_size=4, unique=True)) \
                if existing else []
        infos = {i: self.client.get_instance_info(i) for i in existing}
        cb = {None: None, "now": self.clock.now_ms() + 1, "past": 0}[cutoff]
        completed_at = {i: self.client.get_execution_info(i, infos[i].current_execution_id).completed_at for i in existing}
        res = self.client.delete_instance_bulk(InstanceFilter(instance_ids=ids, limit=limit, completed_before=cb))
        after = set(self.existing())
        gone = set(existing) - after
        roots_gone = {i for i in gone if infos[i].parent_instance_id is None}
        for r in roots_gone:
            assert infos[r].status in ("Completed", "Failed", "ContinuedAsNew"), (r, infos[r])
            assert cb is None or (completed_at[r] is not None and completed_at[r] < cb), (r, completed_at[r], cb)
            assert ids is None or r in ids
            tree = self.tree_from_infos(r, existing, infos)
            assert tree <= gone
        for g in gone - roots_gone:  # a child goes only with its root
            root = g
            while infos[root].parent_instance_id is not None:
                root = infos[root].parent_instance_id
            assert root in roots_gone, (g, root)
        if limit is not None:
            assert len(roots_gone) <= limit
        if ids == []:
            assert not gone
        assert res.instances_deleted == len(gone), (res, gone)
        if ids is not None and limit is None and cb is None:
            for i in ids:  # every named terminal root went
                if i in infos and infos[i].parent_instance_id is None and infos[i].status in ("Completed", "Failed"):
                    assert i in gone, (i, infos[i])
        self.forget(gone)

    @rule(data=st.data(), keep=st.sampled_from([None, 0, 1, 2]), cutoff=st.sampled_from([None, "now", "past"]))
    def prune(self, data, keep, cutoff):
        existing = self.existing()
        iid = self.pick(data, set(existing) | {"ghost-prune"})
        before = self.status(iid)
        execs_before = self.client.list_executions(iid)
        cb = {None: None, "now": self.clock.now_ms() + 1, "past": 0}[cutoff]
        try:
            res = self.client.prune_executions(iid, PruneOptions(keep_last=keep, completed_before=cb))
        except InstanceNotFound as exc:
            _check_error(exc, "not found")
            assert iid not in existing
            return
        assert iid in existing
        info = self.client.get_instance_info(iid)
        execs = self.client.list_executions(iid)
        assert info.current_execution_id in execs, (info, execs)
        assert res.instances_processed == 1
        assert set(execs) <= set(execs_before) and len(execs_before) - len(execs) == res.executions_deleted
        if cutoff == "past":
            assert res.executions_deleted == 0, res
        for e in set(execs_before) - set(execs):  # a pruned execution reads as unknown
            assert self.client.read_execution_history(iid, e) == []
            with pytest.raises(InstanceNotFound):
                self.client.get_execution_info(iid, e)
        if keep:
            assert set(execs_before[-keep:]) <= set(execs), (execs_before, execs, keep)
        after = self.status(iid)
        assert (after.status, after.output, after.error) == (before.status, before.output, before.error)

    @rule(keep=st.sampled_from([None, 1, 2]))
    def prune_bulk(self, keep):
        existing = self.existing()
        before = {i: self.client.get_instance_info(i) for i in existing}
        execs_before = {i: self.client.list_executions(i) for i in existing}
        res = self.client.prune_executions_bulk(InstanceFilter(), PruneOptions(keep_last=keep))
        assert res.instances_processed == len(existing), (res, len(existing))
        for i in existing:
            info = self.client.get_instance_info(i)
            assert info.current_execution_id == before[i].current_execution_id
            assert info.status == before[i].status
            execs = self.client.list_executions(i)
            assert info.current_execution_id in execs
            assert set(execs_before[i][-(keep or 1):]) <= set(execs), (i, keep, execs_before[i], execs)
            assert set(execs) == {e for e in execs_before[i] if e == info.current_execution_id
                                  or e in execs_before[i][-(keep or 1):]}, (i, keep, execs_before[i], execs)

    # --- reads -------------------------------------------------------------------------------

    @rule(data=st.data())
    def read_one(self, data):
        iid = self.pick(data, set(self.existing()) | set(self.insts) | {"ghost-read"})
        existing = self.existing()
        st_ = self.status(iid)
        stats = self.client.get_orchestration_stats(iid)
        if iid not in existing:
            if st_.status == "NotFound":
                with pytest.raises(InstanceNotFound) as info:
                    self.client.get_instance_info(iid)
                _check_error(info.value, "not found")
                with pytest.raises(InstanceNotFound):
                    self.client.get_execution_info(iid, 1)
                assert self.client.list_executions(iid) == []
                assert self.client.read_execution_history(iid, 1) == []
                tree = self.client.get_instance_tree(iid)
                assert (tree.root_id, list(tree.all_ids)) == (iid, [iid])
                assert self.client.get_kv_value(iid, "k") is None
                assert self.client.get_kv_all_values(iid) == {}
                assert stats is None or (stats.status == "NotFound" and stats.executions == 0
                                         and stats.history_event_count == 0 and stats.queue_pending_count > 0), stats
            return
        info = self.client.get_instance_info(iid)
        assert info.instance_id == iid
        assert stats is not None and stats.status == st_.status
        assert stats.executions == info.current_execution_id
        hist = self.client.read_execution_history(iid, info.current_execution_id)
        assert stats.history_event_count == len(hist)
        assert stats.custom_status_version == st_.custom_status_version
        assert st_.status != "NotFound"
        assert hist and hist[0].kind == "OrchestrationStarted", [e.kind for e in hist]
        tree = self.client.get_instance_tree(iid)
        assert tree.root_id == iid and set(tree.all_ids) == self.tree_from_infos(iid, existing)
        assert len(tree.all_ids) == len(set(tree.all_ids))
        with pytest.raises(InstanceNotFound):
            self.client.get_execution_info(iid, info.current_execution_id + 1)
        assert self.client.read_execution_history(iid, info.current_execution_id + 5) == []

    @invariant()
    def reads_agree(self):
        existing = self.existing()
        assert len(existing) == len(set(existing)), existing
        by = {s: self.client.list_instances_by_status(s) for s in ("Running", "Completed", "Failed", "ContinuedAsNew")}
        metrics = self.client.get_system_metrics()
        assert metrics.total_instances == len(existing)
        assert metrics.running_instances == len(by["Running"])
        assert metrics.completed_instances == len(by["Completed"])
        assert metrics.failed_instances == len(by["Failed"])
        total_execs = total_events = 0
        created = []
        for iid in existing:
            st_ = self.status(iid)
            info = self.client.get_instance_info(iid)
            created.append(info.created_at)
            assert info.created_at <= info.updated_at <= self.clock.now_ms(), info
            if st_.status == "Completed":
                assert info.output is not None and json.loads(info.output) == st_.output, (info, st_)
            elif st_.status == "Failed":
                assert info.output == st_.error, (info, st_)
            kv = self.client.get_kv_all_values(iid)
            assert self.client.get_kv_value(iid, "k") == kv.get("k"), kv
            assert [s for s, ids in by.items() if iid in ids] == [info.status], (iid, info.status, by)
            public = "Running" if info.status == "ContinuedAsNew" else info.status
            assert st_.status == public, (iid, st_, info)
            if st_.status == "Completed":
                assert info.output is not None
            execs = self.client.list_executions(iid)
            assert execs == sorted(execs) and info.current_execution_id == execs[-1], (iid, execs, info)
            total_execs += len(execs)
            for e in execs:
                ei = self.client.get_execution_info(iid, e)
                hist = self.client.read_execution_history(iid, e)
                assert ei.execution_id == e and ei.event_count == len(hist), (iid, e, ei, len(hist))
                assert (ei.completed_at is not None) == (ei.status != "Running"), ei
                assert ei.completed_at is None or ei.started_at <= ei.completed_at, ei
                if e < execs[-1]:
                    assert ei.status == "ContinuedAsNew", (iid, e, ei)
                else:
                    assert ei.status == info.status, (ei, info)
                ids = [h.event_id for h in hist]
                assert ids == sorted(set(ids)), (iid, e, ids)
                total_events += len(hist)
            if info.parent_instance_id is not None:
                assert info.parent_instance_id in existing, f"orphan child {iid!r} of {info.parent_instance_id!r}"
                assert iid in self.client.get_instance_tree(info.parent_instance_id).all_ids
        assert created == sorted(created, reverse=True), "list_all_instances is not newest first"
        assert metrics.total_executions == total_execs
        assert metrics.total_events == total_events
        snap = dict(self.rt.metrics_snapshot())
        for k, v in self.last_metrics.items():
            assert snap[k] >= v, f"runtime metric {k} went down: {v} -> {snap[k]}"
        self.last_metrics = snap
        # every stored execution was started by this runtime (deletes and prunes only remove)
        assert snap["orch_starts"] >= metrics.total_executions, (snap, metrics)
        assert snap["orch_failures"] >= metrics.failed_instances, (snap, metrics)

    # --- the expected end states ---------------------------------------------------------------

    def check_quiet(self) -> None:
        existing = set(self.existing())
        assert self.client.get_queue_depths().worker_queue == 0
        for iid in existing:
            stats = self.client.get_orchestration_stats(iid)
            assert stats is not None and stats.queue_pending_count == 0, (iid, stats)
        for iid, inst in list(self.insts.items()):
            st_ = self.status(iid)
            where = f"{iid!r} ({inst.name})"
            if inst.cancel_reason is not None and inst.name == "NoSuchOrch":
                assert st_.status == "Failed", (where, st_)  # poison or cancel: either ends it
                continue
            if inst.cancel_reason is not None:
                assert st_.status == "Failed" and st_.error == f"canceled: {inst.cancel_reason}", (where, st_)
                continue
            if inst.name == "NoSuchOrch":
                assert st_.status == "Failed" and "poison" in (st_.error or ""), (where, st_)
            elif inst.name == "Fails":
                assert st_.status == "Failed" and "boom on purpose" in (st_.error or ""), (where, st_)
            elif inst.name == "LongTimer":
                assert (st_.status, st_.output) == ("Completed", "late"), (where, st_)
            elif inst.name == "StatusKv":
                assert (st_.status, st_.output, st_.custom_status) == ("Completed", "kv-done", "two"), (where, st_)
                assert self.client.get_kv_value(iid, "k") == "v2"
                assert st_.custom_status_version == 2, st_
            elif inst.name == "Parent" and inst.child_cancel is not None:
                assert st_.status == "Failed" and f"canceled: {inst.child_cancel}" in st_.error, (where, st_)
            elif inst.name == "Parent":
                assert (st_.status, st_.output) == ("Completed", [10, 20]), (where, st_)
                kids = self.children_of(iid, existing)
                auto = {k for k in kids if re.fullmatch(re.escape(iid) + r"::sub::\d+", k)}
                assert len(kids) == 2 and f"{iid}-kid" in kids and len(auto) == 1, (where, kids)
                for k in kids:
                    assert self.client.get_instance_info(k).parent_instance_id == iid
                    assert self.status(k).status == "Completed"
                assert set(self.client.get_instance_tree(iid).all_ids) == kids | {iid}
                det = f"{iid}-det"
                if det in existing:  # (it may have been deleted on its own: it is a root)
                    assert self.client.get_instance_info(det).parent_instance_id is None
            elif inst.name == "WaitThenAct":
                if inst.raised_live:
                    assert st_.status == "Completed", (where, st_)
                else:
                    assert st_.status in ("Running", "Completed"), (where, st_)
            elif inst.name == "Drain":
                q = inst.queue
                if "stop" in q:
                    assert (st_.status, st_.output) == ("Completed", q.index("stop")), (where, st_, q)
                else:
                    assert st_.status == "Running", (where, st_)
                    assert st_.custom_status == (f"seen={len(q)}" if q else None), (where, st_, q)
                    assert self.client.get_kv_value(iid, "seen") == (str(len(q)) if q else None), (where, q)
                    info = self.client.get_instance_info(iid)
                    assert info.current_execution_id == 1 + len(q) // DRAIN_EVERY, (where, info, q)
        # children of cancelled parents end cancelled too
        for iid, inst in self.insts.items():
            if inst.name == "Parent" and inst.cancel_reason is not None:
                for k in self.children_of(iid, existing):
                    if True:
                        kst = self.status(k)
                        assert kst.status in ("Completed", "Failed"), (k, kst)
                        if kst.status == "Failed":
                            assert kst.error.startswith("canceled: "), (k, kst)


ClientMachine.TestCase.settings = settings(
    derandomize=True, max_examples=300, stateful_step_count=50, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)
TestClientMemory = ClientMachine.TestCase


class SqliteClientMachine(ClientMachine):
    def make_provider(self, clock: SimClock):
        return SqliteProvider.in_memory(clock=clock)


SqliteClientMachine.TestCase.settings = settings(
    derandomize=True, max_examples=100, stateful_step_count=40, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)
TestClientSqlite = SqliteClientMachine.TestCase


# --- bugs the probe found (each fails today) ------------------------------------------------------


@pytest.mark.parametrize("provider", ["memory", "sqlite"])
def test_the_client_lists_an_instance_tree_root_first(provider):
    """``Client.get_instance_tree(root).all_ids`` starts with the root, as duroxide-python's does
    (the providers list the tree children first, for deletion; the client used to hand that
    order out unchanged, root last)."""
    machine = ClientMachine() if provider == "memory" else SqliteClientMachine()
    try:
        machine.client.start_orchestration("p", "Parent", 1)
        machine.driver.run_until_quiet()
        tree = machine.client.get_instance_tree("p")
        assert set(tree.all_ids) == {"p", "p::sub::3", "p-kid"}
        assert tree.all_ids[0] == "p", tree.all_ids
    finally:
        machine.teardown()


def test_an_instance_tree_is_in_duroxide_pythons_order():
    """The exact order duroxide 0.2.2 gave for this tree (run side by side on 2026-11-27): the
    root, then each child's subtree, last-created child first, depth first."""
    clock = SimClock()
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))

    def leaf(ctx, x):
        return x

    def mid(ctx, x):
        return (yield ctx.schedule_sub_orchestration_with_id("Leaf", f"zz-leaf-{x}", x))

    def root(ctx, x):
        a = yield ctx.schedule_sub_orchestration_with_id("Mid", "m-b", 1)
        b = yield ctx.schedule_sub_orchestration_with_id("Mid", "m-a", 2)
        c = yield ctx.schedule_sub_orchestration("Leaf", 3)
        return [a, b, c]

    for name, fn in (("Leaf", leaf), ("Mid", mid), ("Root", root)):
        rt.register_orchestration(name, fn)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("r", "Root", 0)
    driver.run_until_quiet()
    assert client.get_status("r").output == [1, 2, 3]
    tree = client.get_instance_tree("r")
    assert (tree.root_id, tree.all_ids) == ("r", ["r", "r::sub::6", "m-a", "zz-leaf-2", "m-b", "zz-leaf-1"])
    assert provider.get_instance_tree("r").all_ids == tree.all_ids[::-1]  # the provider: children first
