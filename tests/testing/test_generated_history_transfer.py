"""Generative probe of history EXPORT / IMPORT as a round trip of real state
(``duroxide_sim.runtime.history_io``; ``duroxide-sim export`` / ``import`` / ``replay``; SPEC §2
data model, §13 custom status and KV, §14 management views, §15 providers; the module docstring
of history_io and the README's "Command line" section for what a document carries).

What it generates (plain JSON data, shrinkable by Hypothesis):

* **Programs**: 1-3 root instances (ids from a pool that holds plain, percent-encoded,
  case-colliding and >120-byte ids, so the directory export names files every way it can) of
  one interpreted orchestration ``P`` registered as 1.0.0 and 2.0.0 (policy Latest; a start
  sometimes asks for 1.0.0). Each instance runs a chain of 1-3 executions; each execution runs
  0-5 steps and then returns, raises, continues as new or continues as new on 2.0.0. Steps: an
  activity (``Add``), an activity that fails and is caught (``Boom``), a timer (0 ms - 1 min),
  a positional wait, a dequeue, custom status set / reset, KV set / clear / clear-all /
  prune-all / read, a sub-orchestration with an automatic id or an explicit id (the child sets
  KV and maybe custom status, maybe waits for ``cgo``, runs an activity, maybe fails), and a
  detached start.
* **A stop point**: the production ``Runtime`` on a ``SimClock`` (``SequentialDriver``) on a
  ``SqliteProvider`` file or an ``InMemoryProvider`` is stepped a random number of steps
  between random raises / enqueues / ``cgo`` to children / cancels / clock jumps /
  ``prune_executions(keep_last=1)``, then stopped (some instances running with work queued,
  some waiting on events or timers, some terminal, some pruned).

The model is the source store itself: whatever it holds at the stop point is what an import
must reproduce, and whatever the source does next is what the import must do next.

Checks, per example:

1. export (directory) -> import into a FRESH SQLite file and a fresh InMemoryProvider -> export
   again: the same files, byte for byte (the README: "byte-stable"); ``duroxide-sim export`` of
   the imported SQLite file gives those bytes too.
2. every management view equal on both sides: ``get_status`` (output, error, custom status and
   its version), ``get_kv_all_values`` / ``get_kv_value``, ``get_instance_info``,
   ``list_executions``, ``get_execution_info``, ``read_execution_history``,
   ``get_instance_tree``, ``list_all_instances`` (order), ``list_instances_by_status``,
   ``get_system_metrics``, ``get_orchestration_stats``, ``get_queue_depths`` and the queued work
   itself - except what the README says is not carried: the start of an instance that has not
   run and has no parent (a root or detached start still queued).
3. the source and both imports carry on under the same registry, clock and signals (rounds of
   raises / enqueues / ``cgo`` to every running instance, sometimes a late cancel): the same
   instances end with the same status, output, error, KV, custom status and version, and the
   same management views.
4. ``replay_documents`` (what ``duroxide-sim replay`` runs) passes on the export with the same
   code, and with the code changed (activity ``Add`` renamed) reports exactly the executions
   whose history schedules ``Add``, at that event id and at the line of the yield.
5. importing into a store that already holds some of the instances is refused with an error
   naming the first one, and the store is unchanged (its own export, queue depths).

Separately: corrupted documents (random byte flips, truncation, wrong field types, duplicated
event ids, unknown kinds, hostile ids with NUL / lone surrogates / huge strings) are refused
with a ``SerializationError`` naming the problem and leave the target store unchanged, or -
when the corruption still spells a valid document - are imported and export back to the same
document; the CLI (``export``, ``import``, ``replay --json``) on one generated store.

PostgreSQL: the corpus store imported into a fresh schema exports the same files (the server:
``$DUROXIDE_PG_URL``, which CI starts, else a private one from tests/pg_server.py).

Found (both fixed; each test failed before its fix): a document's ``kv_base`` was not checked
like the rest (SQLite raised a raw ``UnicodeEncodeError`` after the instances before it were
written, memory stored the key:
``test_kv_base_with_a_lone_surrogate_is_refused_before_anything_is_written``); a
``CancelInstance`` queued for a child whose start was still queued travelled with no document,
so the restored child ran to the end instead of being cancelled
(``test_cancel_of_a_child_that_has_not_started_travels_with_its_parent``; reached only when the
child's handler is not deployed yet, which the generators - every handler registered - never
do). Pinned (``test_pinned_*``, the documented
policy leaves them open): a queued child start that names an instance the target already has
(imported; the parent's child call fails at run time); a document carrying ``kv_base`` for an
unpruned instance (the store is replaced; the re-export drops it). Noticed, not asserted as a
defect: an event missing ``execution_id`` or ``timestamp_ms`` is read with the record's default
(1, 0) instead of being refused; the top-level ``orchestration_name`` / ``orchestration_version``
are never checked against the events (import ignores them, export recomputes them).
"""

from __future__ import annotations

import copy
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim import Client, InMemoryProvider, PruneOptions, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.cli import main as cli
from duroxide_sim.core.events import StartOrchestration, from_dict, to_dict
from duroxide_sim.errors import InvalidInputError, SerializationError
from duroxide_sim.runtime.history_io import export_to_path, import_documents, load_documents
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import build_registry, replay_documents

SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])

M = 10_007
V1, V2 = "1.0.0", "2.0.0"
WAITS, QUEUES = ("e0", "e1"), ("q0", "q1")
KEYS, VALUES = ("a", "b", "ключ"), ("1", "", "v😀")
PRUNE_ALL = 4_000_000_000_000_000
STATUSES = ("Running", "Completed", "Failed", "ContinuedAsNew")
ID_POOL = ("r0", "ordér/1 ü", "Case", "case", "L" * 130, "index")
THIS = pathlib.Path(__file__).resolve()

# --------------------------------------------------------------------------------------------
# The app: one interpreter (the program travels in the input), so the registry is fixed and the
# CLI can load it by reference (``<this file>:register`` / ``:register_changed``).
# --------------------------------------------------------------------------------------------


def body(ctx: Any, inp: dict[str, Any], version: str, changed: bool) -> Any:
    execs, i, acc, logs = inp["execs"], inp["i"], inp["acc"], inp["logs"]
    ex = execs[i]
    elog: list[Any] = [["hdr", ctx.execution_id, ctx.orchestration_version, version,
                        sorted(ctx.get_kv_all_values().items()), ctx.get_custom_status()]]
    for j, step in enumerate(ex["steps"]):
        kind = step[0]
        if kind == "act":
            name = "AddV2" if changed else "Add"
            acc = yield ctx.schedule_activity(name, [acc, step[1]])  # <- ACT YIELD
            elog.append(["act", acc])
        elif kind == "boom":
            try:
                yield ctx.schedule_activity("Boom", step[1])
                elog.append(["boom", "no error?"])
            except Exception as exc:  # noqa: BLE001 - the activity's failure, as user code sees it
                elog.append(["boom", str(exc)])
        elif kind == "timer":
            yield ctx.schedule_timer(step[1])
            elog.append(["t"])
        elif kind == "wait":
            elog.append(["w", (yield ctx.wait_for_event(step[1]))])
        elif kind == "deq":
            elog.append(["q", (yield ctx.dequeue_event(step[1]))])
        elif kind == "cs":
            ctx.set_custom_status(step[1])
        elif kind == "csr":
            ctx.reset_custom_status()
        elif kind == "kv":
            ctx.set_kv_value(step[1], step[2])
        elif kind == "kvc":
            ctx.clear_kv_value(step[1])
        elif kind == "kvca":
            ctx.clear_all_kv_values()
        elif kind == "kvp":
            elog.append(["kvp", ctx.prune_kv_values_updated_before(PRUNE_ALL)])
        elif kind == "kvr":
            elog.append(["kvr", sorted(ctx.get_kv_all_values().items()), ctx.get_custom_status()])
        elif kind in ("sub", "subid"):
            cin = {"k": step[1], "hold": step[2], "fail": step[3], "cs": step[4]}
            task = (ctx.schedule_sub_orchestration("C", cin) if kind == "sub" else
                    ctx.schedule_sub_orchestration_with_id("C", f"{ctx.instance_id}.x{i}.{j}", cin))
            try:
                elog.append([kind, (yield task)])
            except Exception as exc:  # noqa: BLE001 - the child's failure
                elog.append([kind, "err", str(exc).splitlines()[-1]])
        elif kind == "det":
            yield ctx.start_orchestration("D", f"{ctx.instance_id}.d{i}.{j}", step[1])
            elog.append(["det"])
    logs = logs + [elog]
    end = ex["end"]
    if end in ("can", "canv") and i + 1 < len(execs):
        nxt = {"execs": execs, "i": i + 1, "acc": acc, "logs": logs}
        if end == "can":
            yield ctx.continue_as_new(nxt)
        else:
            yield ctx.continue_as_new_versioned(nxt, V2)
    if end == "fail":
        raise ValueError(f"planned failure acc={acc}")
    return {"acc": acc, "logs": logs}


def child(ctx: Any, x: dict[str, Any]) -> Any:
    ctx.set_kv_value("ck", str(x["k"]))
    if x["cs"]:
        ctx.set_custom_status(f"child {x['k']}")
    go = (yield ctx.wait_for_event("cgo")) if x["hold"] else None
    r = yield ctx.schedule_activity("Inc", x["k"])
    if x["fail"]:
        raise ValueError(f"child failed r={r}")
    return {"r": r, "go": go}


def detached(ctx: Any, k: int) -> Any:
    return (yield ctx.schedule_activity("Inc", k))


def _register(rt: Runtime, changed: bool) -> None:
    rt.register_activity("Add", lambda ctx, x: (x[0] * 3 + x[1]) % M)
    rt.register_activity("AddV2", lambda ctx, x: (x[0] * 5 + x[1]) % M)
    rt.register_activity("Inc", lambda ctx, k: k + 1)

    def boom(ctx: Any, k: int) -> Any:
        raise ValueError(f"declined {k}")

    rt.register_activity("Boom", boom)
    for version in (V1, V2):
        rt.register_orchestration_versioned(
            "P", version, lambda ctx, inp, _v=version: body(ctx, inp, _v, changed))
    rt.register_orchestration("C", child)
    rt.register_orchestration("D", detached)


def register(rt: Runtime) -> None:
    """The app (``duroxide-sim replay --app <this file>:register``)."""
    _register(rt, changed=False)


def register_changed(rt: Runtime) -> None:
    """The same app with activity ``Add`` renamed ``AddV2`` at the ACT YIELD line."""
    _register(rt, changed=True)


ACT_LINE = next(n for n, text in enumerate(THIS.read_text(encoding="utf-8").splitlines(), 1)
                if text.rstrip().endswith("# <- ACT YIELD"))

# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------

_sub = st.tuples(st.integers(0, 9), st.booleans(), st.booleans(), st.booleans())
STEP = st.one_of(
    st.tuples(st.just("act"), st.integers(0, 99)),
    st.tuples(st.just("boom"), st.integers(0, 9)),
    st.tuples(st.just("timer"), st.sampled_from([0, 10, 1_000, 60_000])),
    st.tuples(st.just("wait"), st.sampled_from(WAITS)),
    st.tuples(st.just("deq"), st.sampled_from(QUEUES)),
    st.tuples(st.just("cs"), st.text(alphabet="ab✓", max_size=3)),
    st.just(("csr",)),
    st.tuples(st.just("kv"), st.sampled_from(KEYS), st.sampled_from(VALUES)),
    st.tuples(st.just("kvc"), st.sampled_from(KEYS)),
    st.just(("kvca",)),
    st.just(("kvp",)),
    st.just(("kvr",)),
    _sub.map(lambda t: ("sub", *t)),
    _sub.map(lambda t: ("subid", *t)),
    st.tuples(st.just("det"), st.integers(0, 9)),
).map(list)

EXEC = st.fixed_dictionaries({"steps": st.lists(STEP, max_size=5),
                              "end": st.sampled_from(["ret", "fail", "can", "canv"])})

OP = st.one_of(
    st.tuples(st.just("run"), st.integers(1, 8)),
    st.tuples(st.just("orch"), st.integers(1, 4)),  # orchestration turns only: their work stays queued
    st.tuples(st.just("work"), st.integers(1, 2)),
    st.just(("idle",)),
    st.just(("tick",)),
    st.tuples(st.just("raise"), st.integers(0, 2), st.sampled_from(WAITS)),
    st.tuples(st.just("enqueue"), st.integers(0, 2), st.sampled_from(QUEUES)),
    st.just(("cgo",)),
    st.tuples(st.just("cancel"), st.integers(0, 2)),
    st.tuples(st.just("prune"), st.integers(0, 2)),
)


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 3))
    ids = draw(st.lists(st.sampled_from(ID_POOL), min_size=n, max_size=n, unique=True))
    roots = []
    for inst in ids:
        execs = draw(st.lists(EXEC, min_size=1, max_size=3))
        roots.append({"id": inst, "execs": execs, "start_ver": draw(st.sampled_from([None, V1]))})
    return {"roots": roots, "ops": draw(st.lists(OP, max_size=10)), "prune_end": draw(st.booleans()),
            "late_cancel": draw(st.one_of(st.none(), st.tuples(st.integers(0, 2), st.integers(0, 3))))}


# --------------------------------------------------------------------------------------------
# Worlds
# --------------------------------------------------------------------------------------------


class World:
    """A production Runtime + Client + SequentialDriver on a SimClock over one provider."""

    def __init__(self, provider: Any, clock: SimClock, ids: int, changed: bool = False) -> None:
        self.provider, self.clock = provider, clock
        self.runtime = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(ids))
        _register(self.runtime, changed)
        self.driver = SequentialDriver(self.runtime, clock)
        self.client = Client(provider, clock=clock, sleep=self.driver.sleep)

    def close(self) -> None:
        getattr(self.provider, "close", lambda: None)()


def open_provider(kind: str, clock: SimClock, path: pathlib.Path | None = None) -> Any:
    if kind == "memory":
        return InMemoryProvider(clock)
    return SqliteProvider.open(str(path), clock=clock)


def run_phase_one(w: World, sc: dict[str, Any]) -> None:
    roots = [r["id"] for r in sc["roots"]]
    for r in sc["roots"]:
        inp = {"execs": r["execs"], "i": 0, "acc": 1, "logs": []}
        if r["start_ver"] is None:
            w.client.start_orchestration(r["id"], "P", inp)
        else:
            w.client.start_orchestration_versioned(r["id"], "P", inp, r["start_ver"])
    for n, op in enumerate(sc["ops"]):
        kind = op[0]
        if kind == "run":
            for _ in range(op[1]):
                if not w.driver._step_once():
                    break
        elif kind in ("orch", "work"):
            dispatcher = w.runtime.orchestration_dispatcher if kind == "orch" else w.runtime.worker_dispatcher
            for _ in range(op[1]):
                if not dispatcher.step():
                    break
        elif kind == "idle":
            w.driver.run_until_idle()
        elif kind == "tick":
            nxt = w.driver._next_deadline()
            if nxt is not None and nxt > w.clock.now_ms():
                w.clock.advance_to(nxt)
        elif kind == "raise":
            w.client.raise_event(roots[op[1] % len(roots)], op[2], f"{op[2]}#{n}")
        elif kind == "enqueue":
            w.client.enqueue_event(roots[op[1] % len(roots)], op[2], f"{op[2]}#{n}")
        elif kind == "cgo":
            for inst in w.client.list_all_instances():
                if w.client.get_instance_info(inst).orchestration_name == "C":
                    w.client.raise_event(inst, "cgo", f"cgo#{n}")
        elif kind == "cancel":
            w.client.cancel_instance(roots[op[1] % len(roots)], f"stop#{n}")
        elif kind == "prune":
            prune(w, roots[op[1] % len(roots)])
    if sc["prune_end"]:
        for inst in w.client.list_all_instances():
            prune(w, inst)


def prune(w: World, inst: str) -> None:
    """``prune_executions(keep_last=1)``: every execution but the current one goes (SPEC §14:
    never the current one; the others ended by continuing as new)."""
    if w.provider.latest_execution_id(inst) is not None:
        w.client.prune_executions(inst, PruneOptions(keep_last=1))
        assert w.client.list_executions(inst) == [w.provider.latest_execution_id(inst)]


def not_carried(provider: Any) -> tuple[set[str], list[Any]]:
    """What the README says an export does not carry: work queued for an instance that has no
    history (a root or detached start not run yet, and whatever else waits for it), except a
    child's: the start of a child that has not run and whatever waits for it go with its parent.
    Returns (those instances, those items)."""
    ids: set[str] = set()
    items: list[Any] = []
    for target, queued in provider.queued_work().items():
        if provider.latest_execution_id(target) is not None:
            continue
        if any(isinstance(i, StartOrchestration) and i.parent_instance is not None for i in queued):
            continue
        ids.add(target)
        items.extend(queued)
    return ids, items


def views(w: World, skip: set[str] = frozenset(), lost: list[Any] = (),  # type: ignore[assignment]
          metrics: bool = True) -> dict[str, Any]:
    """Every management view of the store (minus the instances in ``skip`` and the queued
    ``lost`` items: not carried by an export; ``metrics=False``: without the system-wide
    counts, which the skipped instances are part of)."""
    c, p = w.client, w.provider
    listed = [i for i in c.list_all_instances() if i not in skip]
    out: dict[str, Any] = {
        "list": listed,
        "by_status": {s: [i for i in c.list_instances_by_status(s) if i not in skip] for s in STATUSES},
        "metrics": c.get_system_metrics() if metrics else None,
    }
    depths = c.get_queue_depths()
    out["depths"] = (depths.orchestrator_queue - len(lost), depths.worker_queue, depths.timer_queue)
    lost_dicts = [to_dict(i) for i in lost]
    queued = {}
    for target, items in p.queued_work().items():
        kept = [to_dict(i) for i in items]
        kept = [d for d in kept if d not in lost_dicts]
        if kept:
            queued[target] = kept
    out["queued"] = queued
    for inst in listed:
        st_ = c.get_status(inst)
        info = c.get_instance_info(inst)
        kv = c.get_kv_all_values(inst)
        execs = c.list_executions(inst)
        out[inst] = {
            "status": (st_.status, st_.output, st_.error, st_.custom_status, st_.custom_status_version),
            # (updated_at is rebuilt from the events' timestamps - README: the source stored its
            # last ack, which may have added no event: see check_updated_at)
            "info": attrs.evolve(info, updated_at=None),
            "kv": kv,
            "kv_each": {k: c.get_kv_value(inst, k) for k in [*sorted(kv), "absent-key"]},
            "executions": execs,
            "exec_info": [c.get_execution_info(inst, e) for e in execs],
            "history": [c.read_execution_history(inst, e) for e in execs],
            "tree": c.get_instance_tree(inst) if info.parent_instance_id is None else None,
            "stats": c.get_orchestration_stats(inst),
        }
    return out


def check_updated_at(src: World, target: World, instances: list[str]) -> None:
    """README: ``updated_at`` is "rebuilt from the events' timestamps: a turn's start, where the
    source stored its commit" - here (virtual time does not pass during a turn) the last
    event's timestamp, never later than the source's and never before the creation."""
    for inst in instances:
        a, b = src.client.get_instance_info(inst), target.client.get_instance_info(inst)
        last = max(e["timestamp_ms"] for x in target.client.list_executions(inst)
                   for e in target.client.read_execution_history(inst, x))
        assert b.created_at <= b.updated_at == last <= a.updated_at, (inst, a, b, last)


def timeless(view: Any) -> Any:
    """A view without its clock readings (event timestamps, execution start/end, created / updated at):
    for runs whose clocks parted (the source ran instances the export did not carry, and their
    timers moved its clock)."""
    if isinstance(view, Mapping):  # (dicts, and the client's Event / stats records)
        return {k: timeless(_untimed_data(v) if k == "data" else v) for k, v in view.items()
                if k not in ("timestamp_ms", "started_at", "completed_at", "updated_at", "created_at")}
    if isinstance(view, (list, tuple)):
        return [timeless(v) for v in view]
    if attrs.has(type(view)):
        return timeless(attrs.asdict(view, recurse=False))
    return view


def _untimed_data(data: Any) -> Any:
    """An event's ``data`` without the clock readings it records (KV timestamps, fire times)."""
    try:
        decoded = json.loads(data)
    except (TypeError, ValueError):
        return data
    if isinstance(decoded, dict):
        return {k: v for k, v in decoded.items() if k not in ("last_updated_at_ms", "fire_at_ms")}
    return decoded


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            if isinstance(a.get(k), dict) and isinstance(b.get(k), dict):
                out += [f"{k}.{d}" for d in diff(a[k], b[k])]
            else:
                out.append(f"{k}: {str(a.get(k))[:300]} != {str(b.get(k))[:300]}")
    return out


def export_bytes(provider: Any, out: pathlib.Path) -> dict[str, bytes]:
    export_to_path(provider, out)
    return {f.name: f.read_bytes() for f in sorted(out.iterdir())}


def continue_run(w: World, sc: dict[str, Any], skip: set[str]) -> None:
    """Rounds of signals to every running instance (outside ``skip``) until all have ended."""
    roots = [r["id"] for r in sc["roots"]]
    for rnd in range(14):
        w.driver.run_until_quiet()
        lc = sc["late_cancel"]
        if lc is not None and lc[1] == rnd:
            inst = roots[lc[0] % len(roots)]
            if inst not in skip:
                w.client.cancel_instance(inst, f"late#{rnd}")
                continue
        running = [i for i in w.client.list_all_instances()
                   if i not in skip and w.client.get_status(i).status == "Running"]
        if not running:
            return
        for inst in running:
            for name in (*WAITS, "cgo"):
                w.client.raise_event(inst, name, f"{name}@{rnd}")
            for q in QUEUES:
                w.client.enqueue_event(inst, q, f"{q}@{rnd}")
    w.driver.run_until_quiet()


def final_state(w: World, skip: set[str]) -> dict[str, Any]:
    c = w.client
    return {i: (c.get_status(i).status, c.get_status(i).output, c.get_status(i).error, c.get_kv_all_values(i),
                c.get_status(i).custom_status, c.get_status(i).custom_status_version)
            for i in c.list_all_instances() if i not in skip}


# --------------------------------------------------------------------------------------------
# The round trip
# --------------------------------------------------------------------------------------------


def round_trip(sc: dict[str, Any], source_kind: str, tmp: pathlib.Path) -> None:
    clock = SimClock()
    src = World(open_provider(source_kind, clock, tmp / "src.db"), clock, 0)
    worlds = [src]
    try:
        run_phase_one(src, sc)
        skip, lost = not_carried(src.provider)
        before = views(src, skip, lost, metrics=not skip)
        files = export_bytes(src.provider, tmp / "out1")
        docs = load_documents(tmp / "out1")
        assert sorted(d["instance_id"] for d in docs) == sorted(before["list"])
        now = clock.now_ms()

        targets = []
        for n, kind in enumerate(("sqlite", "memory")):
            tclock = SimClock(now)
            t = World(open_provider(kind, tclock, tmp / f"t{n}.db"), tclock, n + 1)
            worlds.append(t)
            assert import_documents(t.provider, load_documents(tmp / "out1")) == sum(len(d["executions"]) for d in docs)
            # (1) the imported store exports to the same bytes
            again = export_bytes(t.provider, tmp / f"out-{kind}")
            assert again == files, (kind, sorted(set(again) ^ set(files)) or
                                    [k for k in files if files[k] != again.get(k)][:3])
            # (2) every management view
            problems = diff(before, views(t, metrics=not skip))
            assert not problems, (kind, problems[:6])
            check_updated_at(src, t, before["list"])
            targets.append(t)
        # (1b) the CLI export of the imported SQLite file gives the same bytes
        if not docs:  # (nothing ran before the stop: the CLI refuses an empty export)
            return
        assert cli(["export", str(tmp / "t0.db"), "--out", str(tmp / "out-cli")]) == 0
        assert {f.name: f.read_bytes() for f in sorted((tmp / "out-cli").iterdir())} == files

        # (4) replay: clean with the same code; with Add renamed, exactly the executions that
        # schedule Add, at that event and that line
        skipped: list[tuple[str, int]] = []
        assert replay_documents(docs, build_registry(register), skipped=skipped) == []
        changed = replay_documents(docs, build_registry(register_changed))
        expected = {}
        for d in docs:
            for ex in d["executions"]:
                if (d["instance_id"], ex["execution_id"]) in skipped:
                    continue
                first = next((e["event_id"] for e in ex["events"]
                              if e["kind"] == "ActivityScheduled" and e["name"] == "Add"), None)
                if first is not None:
                    expected[(d["instance_id"], ex["execution_id"])] = first
        got = {(dv.instance, dv.execution_id): dv.message for dv in changed}
        assert set(got) == set(expected), (sorted(got), sorted(expected))
        for key, event_id in expected.items():
            msg = got[key]
            assert f"event_id={event_id}" in msg and "name='Add'" in msg and "name='AddV2'" in msg, msg
            assert f"{THIS.name}:{ACT_LINE}" in msg, msg

        # (5) a store that already holds some of the instances refuses the whole import
        if len(docs) > 1:
            occupied = World(open_provider("sqlite", SimClock(now), tmp / "occ.db"), SimClock(now), 9)
            worlds.append(occupied)
            some = [d for k, d in enumerate(docs) if k % 2 == 1]
            import_documents(occupied.provider, some)
            snapshot = (export_bytes(occupied.provider, tmp / "occ1"), occupied.client.get_queue_depths())
            order = sorted(docs, key=lambda d: d["instance_id"])  # any order: the first occupied one is named
            first_taken = next(d["instance_id"] for d in order if d in some)
            with pytest.raises(InvalidInputError) as info:
                import_documents(occupied.provider, order)
            assert f"instance {first_taken!r} already exists" in str(info.value)
            assert (export_bytes(occupied.provider, tmp / "occ2"), occupied.client.get_queue_depths()) == snapshot

        # (3) carry on: the source and both imports end the same way
        continue_run(src, sc, skip)
        skip = _descendants_of(src, skip)
        expect = final_state(src, skip)
        # (when the source ran instances the export did not carry, their timers moved its clock
        # and the continuations' clock readings part: compared without them)
        clean = timeless if skip else (lambda v: v)
        expect_views = clean(views(src, skip, metrics=not skip))
        for t in targets:
            continue_run(t, sc, skip)
            assert final_state(t, skip) == expect
            problems = diff(expect_views, clean(views(t, metrics=not skip)))
            assert not problems, problems[:6]
    finally:
        for w in worlds:
            w.close()


def _descendants_of(w: World, roots: set[str]) -> set[str]:
    """``roots`` and every instance they created (children, detached starts), transitively: what
    only the source runs when their starts were not carried."""
    out = set(roots)
    grew = True
    while grew:
        grew = False
        for inst in w.client.list_all_instances():
            if inst in out:
                continue
            parent = w.client.get_instance_info(inst).parent_instance_id
            if parent in out or any(inst.startswith(r + ".d") for r in out):
                out.add(inst)
                grew = True
    return out


@settings(max_examples=250, **SETTINGS)
@given(sc=scenarios())
def test_round_trip_from_sqlite_file(sc: dict[str, Any], tmp_path_factory: Any) -> None:
    round_trip(sc, "sqlite", tmp_path_factory.mktemp("xfer"))


@settings(max_examples=250, **SETTINGS)
@given(sc=scenarios())
def test_round_trip_from_memory(sc: dict[str, Any], tmp_path_factory: Any) -> None:
    round_trip(sc, "memory", tmp_path_factory.mktemp("xfer"))


# --------------------------------------------------------------------------------------------
# Corrupted documents: refused with the problem named and the target unchanged, or (still a
# valid document) imported and exported back the same
# --------------------------------------------------------------------------------------------

#: A store with everything a document can hold: several executions, a pruned chain (kv_base),
#: children with automatic and explicit ids, a detached start, failures, a cancel, custom status,
#: KV, and queued work of every kind (an activity, a child start, a continue-as-new, a fired
#: timer, raised events and queue messages).
CORPUS_SCENARIO: dict[str, Any] = {
    "roots": [
        {"id": "r0", "start_ver": V1, "execs": [
            {"steps": [["kv", "a", "1"], ["cs", "x"], ["act", 3]], "end": "can"},
            {"steps": [["sub", 1, True, False, True], ["wait", "e0"]], "end": "ret"}]},
        {"id": "ordér/1 ü", "start_ver": None, "execs": [
            {"steps": [["subid", 2, False, True, False], ["boom", 1], ["det", 4], ["timer", 10], ["deq", "q0"]],
             "end": "fail"}]},
        {"id": "Case", "start_ver": None, "execs": [
            {"steps": [["kv", "b", "v😀"], ["act", 1], ["timer", 60_000]], "end": "ret"}]},
    ],
    "ops": [("run", 4), ("orch", 2), ("raise", 0, "e0"), ("enqueue", 1, "q0"), ("orch", 1), ("tick",),
            ("cancel", 2), ("raise", 0, "e1")],
    "prune_end": True,
    "late_cancel": None,
}

_CORPUS: dict[str, Any] = {}


def corpus(tmp: pathlib.Path) -> list[dict[str, Any]]:
    """The export (a list of documents) of CORPUS_SCENARIO's store at its stop point."""
    if "docs" not in _CORPUS:
        clock = SimClock()
        w = World(open_provider("memory", clock), clock, 0)
        run_phase_one(w, CORPUS_SCENARIO)
        export_to_path(w.provider, tmp / "corpus")
        _CORPUS["docs"] = load_documents(tmp / "corpus")
        _CORPUS["now"] = clock.now_ms()
    return copy.deepcopy(_CORPUS["docs"])


def test_corpus_holds_what_the_corruption_probe_needs(tmp_path: pathlib.Path) -> None:
    docs = corpus(tmp_path)
    kinds = {q["kind"] for d in docs for q in d.get("queued", ())}
    assert any("kv_base" in d for d in docs) and len(docs) >= 4, [d["instance_id"] for d in docs]
    assert {"StartOrchestration", "ActivityExecute", "TimerFired", "CancelInstance", "QueueMessage",
            "ExternalRaised"} <= kinds, kinds


def _canonical(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Documents as a re-export must give them back. Normalised (documented / informational):
    ``instance.order`` is recomputed from the target's creation order; ``orchestration_name`` /
    ``orchestration_version`` at the top are read from the events (import never reads them)."""
    out = []
    for d in docs:
        d = copy.deepcopy(d)
        for ex in d["executions"]:  # (a record's canonical form: a field left at its default may be absent)
            ex["events"] = [to_dict(from_dict(e, "event")) for e in ex["events"]]
        if "queued" in d:
            d["queued"] = [to_dict(from_dict(q, "work")) for q in d["queued"]]
        (d.get("instance") or {}).pop("order", None)
        if not d.get("instance"):
            d.pop("instance", None)
        d.pop("orchestration_name", None)
        d.pop("orchestration_version", None)
        out.append(d)
    return sorted(out, key=lambda d: d["instance_id"])


def _event_paths(docs: list[dict[str, Any]]) -> list[tuple[int, int, int]]:
    return [(n, x, e) for n, d in enumerate(docs) for x, ex in enumerate(d["executions"]) for e in range(len(ex["events"]))]


HOSTILE_TEXT = ("\udc00", "a\ud800b")  # lone surrogates: not valid Unicode anywhere
WRONG_VALUES = ([[1]], {"x": 1})  # wrong for every field of every event kind


@st.composite
def corruptions(draw: Any) -> tuple[str, Any]:
    kind = draw(st.sampled_from(["flip", "truncate", "wrong_type", "duplicate", "unknown_kind", "drop_field",
                                 "hostile_id", "hostile_field", "huge_id", "foreign_queued", "exec_twice"]))
    return kind, draw(st.tuples(st.integers(0, 10**9), st.integers(0, 10**9), st.integers(1, 255)))


def corrupt(docs: list[dict[str, Any]], kind: str, r: tuple[int, int, int]) -> tuple[bytes, bool]:
    """(the corrupted file's bytes, whether it can no longer be a valid document)."""
    a, b, c = r
    if kind in ("flip", "truncate"):
        raw = bytearray(json.dumps(docs, sort_keys=True, indent=1, ensure_ascii=False).encode("utf-8"))
        if kind == "flip":
            raw[a % len(raw)] ^= c
            return bytes(raw), False
        return bytes(raw[: a % len(raw)]), True
    n, x, e = _event_paths(docs)[a % len(_event_paths(docs))]
    doc = docs[n]
    events = doc["executions"][x]["events"]
    ev = events[e]
    if kind == "wrong_type":
        field = sorted(k for k in ev if k != "kind")[b % (len(ev) - 1)]
        ev[field] = WRONG_VALUES[c % 2]
    elif kind == "duplicate":
        events.insert(e + 1, copy.deepcopy(ev))
    elif kind == "unknown_kind":
        ev["kind"] = "Bogus" + ev["kind"]
    elif kind == "drop_field":
        field = ("event_id", "instance_id", "execution_id", "timestamp_ms")[b % 4]
        ev.pop(field)
        # (execution_id and timestamp_ms have defaults in the event records - 1 and 0 - and the
        # reader takes a missing one as its default: see the report)
        return json.dumps(docs, sort_keys=True, indent=1).encode("utf-8"), field in ("event_id", "instance_id")
    elif kind == "hostile_id":
        doc["instance_id"] = ("a\u0000b", *HOSTILE_TEXT)[b % 3]
    elif kind == "huge_id":
        doc["instance_id"] = "x" * (17_409 + b % 100_000)
    elif kind == "hostile_field":
        texts = sorted(k for k, v in ev.items() if isinstance(v, str) and k not in ("kind", "instance_id"))
        if not texts:
            ev["kind"] = "Bogus"
        else:
            ev[texts[b % len(texts)]] = HOSTILE_TEXT[c % 2]
    elif kind == "foreign_queued":
        queued = [q for d in docs for q in d.get("queued", ())]
        if not queued:
            ev["kind"] = "Bogus"
        else:
            q = queued[b % len(queued)]
            for key in ("instance", "parent_instance"):
                if key in q and q[key] is not None:
                    q[key] = q[key] + "-elsewhere"
    elif kind == "exec_twice":
        doc["executions"].append(copy.deepcopy(doc["executions"][x]))
    return json.dumps(docs, sort_keys=True, indent=1).encode("utf-8"), True


@settings(max_examples=300, **SETTINGS)
@given(change=corruptions(), target_kind=st.sampled_from(["sqlite", "memory"]))
def test_corrupted_documents_are_refused_with_the_problem_named_and_nothing_written(
        change: tuple[str, Any], target_kind: str, tmp_path_factory: Any) -> None:
    tmp = tmp_path_factory.mktemp("bad")
    docs = corpus(tmp)
    raw, must_fail = corrupt(docs, *change)
    bad = tmp / "bad.json"
    bad.write_bytes(raw)
    clock = SimClock(_CORPUS["now"])
    target = World(open_provider(target_kind, clock, tmp / "t.db"), clock, 3)
    try:
        # a bystander instance already in the target: an import must not touch it
        target.client.start_orchestration("bystander", "P", {"execs": [{"steps": [["kv", "a", "1"], ["wait", "e0"]],
                                                                        "end": "ret"}], "i": 0, "acc": 1, "logs": []})
        target.driver.run_until_quiet()
        before = (export_bytes(target.provider, tmp / "before"), target.client.get_queue_depths())
        try:
            loaded = load_documents(bad)
            count = import_documents(target.provider, loaded)
        except (SerializationError, InvalidInputError) as exc:
            message = str(exc)
            assert message.strip() and "Traceback" not in message
            # the file is named (load_documents) or the document / instance (import_documents)
            assert str(bad) in message or "document #" in message or "instance " in message, message
            after = (export_bytes(target.provider, tmp / "after"), target.client.get_queue_depths())
            assert after == before, f"a refused import changed the target: {message}"
            return
        assert not must_fail, f"{change[0]} was accepted"
        assert count == sum(len(d["executions"]) for d in loaded)
        export_to_path(target.provider, tmp / "again.json", [d["instance_id"] for d in loaded])
        again = json.loads((tmp / "again.json").read_text(encoding="utf-8"))
        again = again if isinstance(again, list) else [again]
        assert _canonical(again) == _canonical(loaded), change
        assert target.client.get_status("bystander").status == "Running"
    finally:
        target.close()


@pytest.mark.parametrize("target_kind", ["sqlite", "memory"])
def test_kv_base_with_a_lone_surrogate_is_refused_before_anything_is_written(tmp_path: pathlib.Path, target_kind: str) -> None:
    """history_io's docstring: "Reading validates everything and raises SerializationError
    naming the file and the problem (... a field of the wrong type ...)"; "Every document is
    validated and every instance checked before the first write, so those refusals write
    nothing". Strings are checked for valid Unicode everywhere else (event fields:
    "field 'name' is not valid Unicode"; the instance's custom status likewise).

    A document whose ``kv_base`` (exported for instances with pruned executions) holds a key with
    a lone surrogate, imported after other documents: a SerializationError naming ``kv_base``,
    nothing written. (Before the fix ``check_document`` let it through: SQLite raised a bare
    ``UnicodeEncodeError`` - no file, document or field named - after the documents before it
    were written; the in-memory provider stored the key.)"""
    docs = corpus(tmp_path)
    pruned = next(d for d in docs if "kv_base" in d)
    pruned["kv_base"] = {"k\udc00": ["v", 1]}
    pruned.setdefault("instance", {})["order"] = 10**6  # imported last: the others go first
    (tmp_path / "bad.json").write_text(json.dumps(docs), encoding="utf-8")
    target = open_provider(target_kind, SimClock(_CORPUS["now"]), tmp_path / "t.db")
    outcome: Any
    try:
        import_documents(target, load_documents(tmp_path / "bad.json"))
        outcome = "accepted"
    except SerializationError as exc:
        outcome = ("SerializationError", "kv_base" in str(exc))
    except Exception as exc:  # noqa: BLE001 - what escapes is the finding
        outcome = type(exc).__name__
    written = target.list_instances()
    getattr(target, "close", lambda: None)()
    assert (outcome, written) == (("SerializationError", True), []), (outcome, written)


def test_cancel_of_a_child_that_has_not_started_travels_with_its_parent(tmp_path: pathlib.Path) -> None:
    """README: ``export`` writes "the work still queued for it (messages not yet in its history
    ...) ... the start of a child that has not run: without them a restored instance waited for
    good"; "Not carried: session claims and locks ..., and the start of a detached orchestration
    that had not run". SPEC §3.9: a cancelled parent sends CancelInstance("parent canceled") to
    every outstanding child; §11.1: start + cancel in one batch -> Started, CancelRequested,
    Failed.

    A rolling deployment: the parent ``Par`` is deployed, its child ``Kid`` not yet (the child's
    start is abandoned with the unregistered backoff and stays queued). The parent is cancelled:
    the CancelInstance for the child is queued behind its start. Export, import, then the same
    new deployment (with ``Kid``) on both stores. Expected: the restored child is cancelled as
    the original is ("canceled: parent canceled"). It was not (fixed): the child's start
    travelled with the parent's document but the CancelInstance (queued under the child's id,
    which has no document) was dropped, so the restored child ran and waited for good, orphaned
    (its parent had failed): ``queued_by_instance`` moved only StartOrchestration items of an
    unstarted child to the parent."""

    def deploy(provider: Any, clock: SimClock, ids: int, kid: bool) -> tuple[Client, SequentialDriver]:
        rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(ids))

        def par(ctx: Any, x: int) -> Any:
            return (yield ctx.schedule_sub_orchestration_with_id("Kid", "kid", x))

        def kid_fn(ctx: Any, x: int) -> Any:
            return (yield ctx.wait_for_event("go"))

        rt.register_orchestration("Par", par)
        if kid:
            rt.register_orchestration("Kid", kid_fn)
        driver = SequentialDriver(rt, clock)
        return Client(provider, clock=clock, sleep=driver.sleep), driver

    clock = SimClock()
    source = SqliteProvider.open(str(tmp_path / "a.db"), clock=clock)
    client, driver = deploy(source, clock, 0, kid=False)
    client.start_orchestration("par", "Par", 1)
    driver.run_until_idle()
    client.cancel_instance("par", "stop")
    driver.run_until_idle()
    assert [type(i).__name__ for i in source.queued_work()["kid"]] == ["StartOrchestration", "CancelInstance"]
    export_to_path(source, tmp_path / "out")
    target = SqliteProvider.open(str(tmp_path / "b.db"), clock=SimClock(clock.now_ms()))
    import_documents(target, load_documents(tmp_path / "out"))
    outcomes = []
    for provider, clk, ids in ((source, clock, 1), (target, target.clock, 2)):
        c, d = deploy(provider, clk, ids, kid=True)
        d.run_until_quiet()
        outcomes.append((c.get_status("par").status, c.get_status("kid").status, c.get_status("kid").error))
    source.close()
    target.close()
    assert outcomes[0] == ("Failed", "Failed", "canceled: parent canceled")
    assert outcomes[1] == outcomes[0], outcomes


def test_pinned_a_queued_child_start_naming_an_instance_the_target_has(tmp_path: pathlib.Path) -> None:
    """Pinned, not specified (history_io refuses documents whose instance exists; a document's
    ``queued`` start of a child that has not run is not checked against the target). A parent
    exported right after scheduling child ``kid`` (explicit id, start still queued) is imported
    into a store that already has an unrelated running ``kid``: the import succeeds, the other
    ``kid`` is untouched (its history, its outcome, no parent link), and the restored parent's
    child call fails loudly at its next turn ("sub-orchestration instance 'kid' already exists",
    an error the parent's code sees) - nothing is lost silently."""
    clock = SimClock()
    src = World(open_provider("sqlite", clock, tmp_path / "a.db"), clock, 0)
    src.client.start_orchestration("par", "P", {"execs": [{"steps": [["subid", 1, True, False, False]], "end": "ret"}],
                                                "i": 0, "acc": 1, "logs": []})
    assert src.runtime.orchestration_dispatcher.step()
    (start,) = src.provider.queued_work()["par.x0.0"]
    assert isinstance(start, StartOrchestration) and start.parent_instance == "par"
    export_to_path(src.provider, tmp_path / "out")
    tclock = SimClock(clock.now_ms())
    target = World(open_provider("sqlite", tclock, tmp_path / "b.db"), tclock, 1)
    target.client.start_orchestration("par.x0.0", "C", {"k": 7, "hold": True, "fail": False, "cs": False})
    target.driver.run_until_quiet()
    theirs = target.client.read_execution_history("par.x0.0", 1)
    import_documents(target.provider, load_documents(tmp_path / "out"))
    target.driver.run_until_quiet()
    target.client.raise_event("par.x0.0", "cgo", "go")
    target.driver.run_until_quiet()
    par, kid = target.client.get_status("par"), target.client.get_status("par.x0.0")
    assert par.status == "Completed", par  # (the app catches the child's failure and logs it)
    (child_log,) = [entry for entry in par.output["logs"][0] if entry[0] == "subid"]
    assert child_log[:2] == ["subid", "err"] and "sub-orchestration instance 'par.x0.0' already exists" in child_log[2]
    assert (kid.status, kid.output) == ("Completed", {"r": 8, "go": "go"})
    assert target.client.read_execution_history("par.x0.0", 1)[: len(theirs)] == theirs
    assert target.client.get_instance_info("par.x0.0").parent_instance_id is None
    src.close()
    target.close()


@pytest.mark.parametrize("target_kind", ["sqlite", "memory"])
def test_pinned_kv_base_in_a_document_without_pruned_executions(tmp_path: pathlib.Path, target_kind: str) -> None:
    """Pinned, not specified (export writes ``kv_base`` only when the first executions were
    pruned; a document may carry it anyway). Imported: the KV store becomes ``kv_base`` plus the
    running execution's own changes (the stored store is replaced, as for a pruned instance), and
    a re-export leaves ``kv_base`` out (execution 1 is there): the round trip of such a document
    is not the identity."""
    clock = SimClock()
    w = World(open_provider("memory", clock), clock, 0)
    w.client.start_orchestration("i", "P", {"execs": [{"steps": [["kv", "a", "1"], ["wait", "e0"]], "end": "ret"}],
                                            "i": 0, "acc": 1, "logs": []})
    w.driver.run_until_quiet()
    export_to_path(w.provider, tmp_path / "i.json")
    doc = json.loads((tmp_path / "i.json").read_text(encoding="utf-8"))
    doc["kv_base"] = {"z": ["9", 5]}
    (tmp_path / "i.json").write_text(json.dumps(doc), encoding="utf-8")
    target = World(open_provider(target_kind, SimClock(clock.now_ms()), tmp_path / "t.db"), SimClock(clock.now_ms()), 1)
    import_documents(target.provider, load_documents(tmp_path / "i.json"))
    assert target.client.get_kv_all_values("i") == {"z": "9", "a": "1"}
    export_to_path(target.provider, tmp_path / "again.json")
    assert "kv_base" not in json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    target.close()


# --------------------------------------------------------------------------------------------
# The command line on one generated store: export, import, replay (same and changed code)
# --------------------------------------------------------------------------------------------


def test_cli_export_import_replay_on_a_generated_store(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``duroxide-sim export`` of the SQLite file = the library's export; ``import`` into a fresh
    file then ``export`` gives the same bytes; ``import`` again exits 2 naming an instance and
    writes nothing; ``replay`` (export directory and the database itself) passes with the same
    code and lists, with the code changed, the executions that schedule ``Add`` at that event id
    and the line of the yield - the same rows ``replay_documents`` gives. The clock starts in
    2100: the CLI stamps queued work with the wall clock, always earlier."""
    clock = SimClock(4_102_444_800_000)
    src = World(open_provider("sqlite", clock, tmp_path / "a.db"), clock, 0)
    run_phase_one(src, CORPUS_SCENARIO)
    src.close()
    app, changed = f"{THIS}:register", f"{THIS}:register_changed"
    assert cli(["export", str(tmp_path / "a.db"), "--out", str(tmp_path / "cli")]) == 0
    lib = export_bytes(SqliteProvider.open(str(tmp_path / "a.db"), clock=clock), tmp_path / "lib")
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "cli").iterdir())} == lib
    assert cli(["import", str(tmp_path / "cli"), "--db", str(tmp_path / "b.db")]) == 0
    assert cli(["export", str(tmp_path / "b.db"), "--out", str(tmp_path / "cli2")]) == 0
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "cli2").iterdir())} == lib
    capsys.readouterr()
    assert cli(["import", str(tmp_path / "cli"), "--db", str(tmp_path / "b.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("duroxide-sim: instance ") and "already exists" in err and err.count("\n") == 1, err
    assert cli(["export", str(tmp_path / "b.db"), "--out", str(tmp_path / "cli3")]) == 0
    assert {f.name: f.read_bytes() for f in sorted((tmp_path / "cli3").iterdir())} == lib
    docs = load_documents(tmp_path / "cli")
    expected = [{"instance": d.instance, "execution": d.execution_id, "in_flight": d.in_flight, "message": d.message}
                for d in replay_documents(docs, build_registry(register_changed))]
    assert expected and all(f"{THIS.name}:{ACT_LINE}" in r["message"] for r in expected)
    for source in (tmp_path / "cli", tmp_path / "a.db"):
        capsys.readouterr()
        assert cli(["replay", str(source), "--app", app, "--no-hash-seed-check", "--json"]) == 0
        assert json.loads(capsys.readouterr().out) == []
        assert cli(["replay", str(source), "--app", changed, "--no-hash-seed-check", "--json"]) == 1
        assert json.loads(capsys.readouterr().out) == expected


def test_round_trip_into_postgres(tmp_path: pathlib.Path) -> None:
    """The corpus store exported and imported into a fresh PostgreSQL schema: the same files.
    (The server: ``$DUROXIDE_PG_URL`` - CI starts one - else a private one, tests/pg_server.py.)"""
    import uuid

    from duroxide_sim.providers.postgres import PostgresProvider
    from tests import pg_server
    from tests.providers.conftest import drop_schemas

    url = pg_server.shared_url()
    docs = corpus(tmp_path)
    schema = f"dx_xfer_{uuid.uuid4().hex[:8]}"
    provider = PostgresProvider.connect_with_schema(url, schema, clock=SimClock(_CORPUS["now"]))
    try:
        mem = InMemoryProvider(SimClock(_CORPUS["now"]))
        import_documents(mem, docs)
        import_documents(provider, docs)
        assert export_bytes(provider, tmp_path / "pg") == export_bytes(mem, tmp_path / "mem")
    finally:
        provider.close()
        drop_schemas(url, [schema])
