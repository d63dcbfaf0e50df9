"""Production durability journeys on a SQLite *file*: process crashes (SIGKILL) and restarts,
several runtime processes on one file, a client process starting work while runtimes restart,
graceful shutdown during long activities, and damaged / unusable database files.

Every test is self-contained: it writes a small worker script into ``tmp_path`` that runs a
production ``Runtime`` (thread driver, wall clock) on ``SqliteProvider.open(path)`` with short
lock timeouts (so a killed process's locks expire in about a second) and drives it with
``subprocess``. Activities append one line per execution to a side file (``effects.log``,
``os.write`` on an ``O_APPEND`` descriptor), which is how the tests decide when to kill and
how they count executions.

The common post-conditions (``_check_instance``): the instance completed with the output a
fault-free run gives; every history is well formed (event ids 1..n, no duplicates, one start,
one terminal event); every ActivityScheduled / TimerCreated / SubOrchestrationScheduled has
exactly one completion; every activity the history records ran at least once (side file);
``get_orchestration_stats`` agrees with ``read_execution_history`` and ``get_status``.

Found by this file and fixed: a duroxide_sim database missing a core table (``history``,
``worker_queue``: a botched restore) opened as if healthy, and every turn then failed on "no
such table" as a retryable error, the instance hanging; an emptied ``schema_version`` made the
open fail on "table provider_meta already exists". Both are refused at open now, naming what is
missing; "no such table/column" is no longer retryable.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from duroxide_sim import Client, SqliteProvider
from duroxide_sim.errors import ProviderError

ROOT = str(Path(__file__).resolve().parents[2])

WORKER = textwrap.dedent(
    r'''
    import json, os, signal, sys, threading, time
    from duroxide_sim import Runtime, RuntimeOptions, SqliteProvider

    db, side, ready = sys.argv[1], sys.argv[2], sys.argv[3]
    cfg = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    fd = os.open(os.path.join(side, "effects.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def effect(kind, tag, i):
        os.write(fd, f"{kind} {tag} {i} {os.getpid()}\n".encode())

    provider = SqliteProvider.open(db)
    opts = RuntimeOptions(
        dispatcher_poll_interval_ms=cfg.get("poll_ms", 10),
        orchestrator_lock_timeout_ms=cfg.get("orch_lock_ms", 1000),
        worker_lock_timeout_ms=cfg.get("worker_lock_ms", 1000),
        orchestration_concurrency=cfg.get("orch_conc", 2),
        worker_concurrency=cfg.get("worker_conc", 4),
    )
    rt = Runtime(provider, opts)

    @rt.register_activity("Step")
    def step(ctx, inp):
        effect("start", inp["tag"], inp["i"])
        time.sleep(inp.get("ms", 10) / 1000)
        effect("done", inp["tag"], inp["i"])
        return inp["i"] * inp["i"]

    @rt.register_orchestration("Chain")
    def chain(ctx, inp):
        total = 0
        for i in range(inp["n"]):
            total += yield ctx.schedule_activity("Step", {"tag": inp["tag"], "i": i, "ms": inp.get("ms", 10)})
        return {"tag": inp["tag"], "total": total}

    @rt.register_orchestration("Fan")
    def fan(ctx, inp):
        rs = yield ctx.all([ctx.schedule_activity("Step", {"tag": inp["tag"], "i": i, "ms": inp.get("ms", 10)})
                            for i in range(inp["n"])])
        return {"tag": inp["tag"], "total": sum(r["ok"] for r in rs)}

    @rt.register_orchestration("Timers")
    def timers(ctx, inp):
        total = 0
        for i in range(inp["n"]):
            yield ctx.schedule_timer(inp["timer_ms"])
            total += yield ctx.schedule_activity("Step", {"tag": inp["tag"], "i": i, "ms": 5})
        return {"tag": inp["tag"], "total": total}

    @rt.register_orchestration("Parent")
    def parent(ctx, inp):
        rs = yield ctx.all([ctx.schedule_sub_orchestration("Chain", {"tag": f"{inp['tag']}.c{j}", "n": inp["n"], "ms": inp.get("ms", 10)})
                            for j in range(inp["children"])])
        return {"tag": inp["tag"], "total": sum(r["ok"]["total"] for r in rs)}

    @rt.register_orchestration("Loop")
    def loop(ctx, inp):
        x = yield ctx.schedule_activity("Step", {"tag": inp["tag"], "i": inp["iter"], "ms": inp.get("ms", 10)})
        acc = inp["acc"] + x
        if inp["iter"] + 1 < inp["n"]:
            yield ctx.continue_as_new(dict(inp, iter=inp["iter"] + 1, acc=acc))
        return {"tag": inp["tag"], "total": acc}

    @rt.register_orchestration("Waiter")
    def waiter(ctx, inp):
        v = yield ctx.wait_for_event("go")
        x = yield ctx.schedule_activity("Step", {"tag": inp["tag"], "i": v, "ms": 5})
        return {"tag": inp["tag"], "total": x}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    rt.start()
    tmp = ready + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(os.getpid()))
    os.replace(tmp, ready)
    stop.wait()
    t0 = time.monotonic()
    rt.shutdown(cfg.get("shutdown_ms", 2000))
    provider.close()
    print(json.dumps({"shutdown_s": time.monotonic() - t0}), flush=True)
    '''
)


# --- expected outputs (pure arithmetic, no runtime) ---------------------------------------------


def sq_sum(n: int) -> int:
    return sum(i * i for i in range(n))


# --- process harness -----------------------------------------------------------------------------


class Worker:
    def __init__(self, env: "Env", name: str, cfg: dict | None = None) -> None:
        self.ready = env.dir / f"{name}.ready"
        self.err = open(env.dir / f"{name}.err", "w+")
        self.out = open(env.dir / f"{name}.out", "w+")
        self.proc = subprocess.Popen(
            [sys.executable, str(env.script), str(env.db), str(env.dir), str(self.ready), json.dumps(cfg or {})],
            stdout=self.out, stderr=self.err, env=dict(os.environ, PYTHONPATH=ROOT),
        )

    def wait_ready(self, timeout: float = 10) -> "Worker":
        deadline = time.monotonic() + timeout
        while not self.ready.exists():
            assert self.proc.poll() is None, f"worker died at start:\n{self.stderr()}"
            assert time.monotonic() < deadline, "worker not ready"
            time.sleep(0.01)
        return self

    def stderr(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()[-3000:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def term(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


class Env:
    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.db = tmp_path / "app.db"
        self.script = tmp_path / "worker.py"
        self.script.write_text(WORKER)
        (tmp_path / "effects.log").touch()
        self.workers: list[Worker] = []
        self.provider = SqliteProvider.open(self.db)
        self.client = Client(self.provider)

    def worker(self, cfg: dict | None = None) -> Worker:
        w = Worker(self, f"w{len(self.workers)}", cfg)
        self.workers.append(w)
        return w

    def effects(self) -> list[tuple[str, str, int, int]]:
        out = []
        for line in (self.dir / "effects.log").read_text().splitlines():
            kind, tag, i, pid = line.split()
            out.append((kind, tag, int(i), int(pid)))
        return out

    def wait_effects(self, count: int, timeout: float = 10, kind: str = "done") -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for e in self.effects() if e[0] == kind) < count:
            assert time.monotonic() < deadline, f"only {len(self.effects())} effects"
            time.sleep(0.005)

    def wait_all(self, instances: list[str], timeout_s: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        out = {}
        for inst in instances:
            left = max(1, int((deadline - time.monotonic()) * 1000))
            out[inst] = self.client.wait_for_orchestration(inst, left)
        return out

    def close(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)
            w.err.close()
            w.out.close()
        self.provider.close()


@pytest.fixture
def env(tmp_path):
    e = Env(tmp_path)
    yield e
    e.close()


COMPLETION = {"ActivityScheduled": ("ActivityCompleted", "ActivityFailed"),
              "TimerCreated": ("TimerFired",),
              "SubOrchestrationScheduled": ("SubOrchestrationCompleted", "SubOrchestrationFailed")}
TERMINAL = ("OrchestrationCompleted", "OrchestrationFailed", "OrchestrationContinuedAsNew")


def _check_history(client: Client, inst: str, execution: int) -> list[dict]:
    hist = client.read_execution_history(inst, execution)
    ids = [e["event_id"] for e in hist]
    assert ids == list(range(1, len(ids) + 1)), f"{inst}#{execution}: event ids {ids}"
    kinds = [e["kind"] for e in hist]
    assert kinds[0] == "OrchestrationStarted", (inst, kinds)
    assert sum(k in TERMINAL for k in kinds) == 1 and kinds[-1] in TERMINAL, (inst, execution, kinds)
    completions = Counter(e["source_event_id"] for e in hist if e["kind"] not in COMPLETION and e.get("source_event_id"))
    for e in hist:
        if e["kind"] in COMPLETION:
            assert completions[e["event_id"]] == 1, f"{inst}#{execution}: {e['kind']} {e['event_id']} completed {completions[e['event_id']]}x\n{kinds}"
    # the typed view agrees with the dict view
    typed = client.read_history_events(inst, execution)
    assert [ev.event_id for ev in typed] == ids
    return hist


def _check_instance(env: Env, inst: str, expected_output: Any, executions: int = 1) -> None:
    st = env.client.get_status(inst)
    assert st.status == "Completed", (inst, st.status, getattr(st, "error", None))
    out = json.loads(st.output) if isinstance(st.output, str) else st.output
    assert out == expected_output, (inst, out, expected_output)
    assert env.client.list_executions(inst) == list(range(1, executions + 1))
    ran = {(tag, i) for kind, tag, i, _ in env.effects() if kind == "done"}
    last = None
    for ex in range(1, executions + 1):
        last = _check_history(env.client, inst, ex)
        for e in last:
            if e["kind"] == "ActivityScheduled":
                data = json.loads(e["data"]) if isinstance(e.get("data"), str) else e.get("data")
                inp = data.get("input") if isinstance(data, dict) else None
                inp = json.loads(inp) if isinstance(inp, str) else inp
                if isinstance(inp, dict) and "tag" in inp:
                    assert (inp["tag"], inp["i"]) in ran, f"{inst}: activity {inp} completed but never ran"
    stats = env.client.get_orchestration_stats(inst)
    assert stats.status == "Completed"
    assert stats.executions == executions
    assert stats.history_event_count == len(last)
    assert stats.queue_pending_count == 0, (inst, stats.queue_pending_count)


def _no_stuck(env: Env) -> None:
    """Every instance the database knows is terminal and nothing is queued."""
    for inst in env.client.list_all_instances():
        assert env.client.get_status(inst).status in ("Completed", "Failed"), inst


# --- crash / restart journeys -------------------------------------------------------------------


@pytest.mark.realtime
def test_twenty_step_chains_survive_three_sigkills_at_growing_effect_counts(env):
    """The operator runs six 20-step sequential chains; the runtime process is SIGKILLed after
    10, 35 and 70 activity side effects, each time restarted on the same file. Every chain
    completes with its fault-free output, each step's completion is in the history exactly once
    (with ids 1..n), every step ran at least once, and re-executions are bounded by the kills."""
    insts = [f"chain-{k}" for k in range(6)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 20, "ms": 15})
    for threshold in (10, 35, 70):
        w = env.worker().wait_ready()
        env.wait_effects(threshold)
        w.kill()
    final = env.worker().wait_ready()
    env.wait_all(insts)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(20)})
    done = Counter((tag, i) for kind, tag, i, _ in env.effects() if kind == "done")
    assert set(done) == {(inst, i) for inst in insts for i in range(20)}
    # at most worker_concurrency activities were in flight at each kill
    assert sum(done.values()) - len(done) <= 3 * 4, done
    _no_stuck(env)
    assert final.term() == 0, final.stderr()


@pytest.mark.realtime
def test_fan_out_of_fifty_killed_twice_mid_fan_out_completes_once_each(env):
    """Two instances each fan out 50 activities (worker concurrency 4); the runtime is killed
    after 20 and again after 60 side effects and restarted. Both complete with the sum of all 50
    results; the history holds 50 ActivityScheduled and exactly 50 ActivityCompleted, one per
    schedule."""
    insts = ["fan-a", "fan-b"]
    for inst in insts:
        env.client.start_orchestration(inst, "Fan", {"tag": inst, "n": 50, "ms": 20})
    for threshold in (20, 60):
        w = env.worker().wait_ready()
        env.wait_effects(threshold)
        w.kill()
    env.worker().wait_ready()
    env.wait_all(insts)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(50)})
        kinds = Counter(e["kind"] for e in env.client.read_execution_history(inst, 1))
        assert kinds["ActivityScheduled"] == 50 and kinds["ActivityCompleted"] == 50, kinds
    _no_stuck(env)


@pytest.mark.realtime
def test_timers_that_come_due_while_no_runtime_runs_fire_once_after_restart(env):
    """Four instances alternate 300 ms durable timers with an activity. The runtime is killed
    after the first activity of each, and nothing runs for 1.5 s (the pending timers come due
    in the dead time). A new process fires each overdue timer exactly once and every instance
    completes; no TimerFired is duplicated and none is lost."""
    insts = [f"tm-{k}" for k in range(4)]
    for inst in insts:
        env.client.start_orchestration(inst, "Timers", {"tag": inst, "n": 3, "timer_ms": 300})
    w = env.worker().wait_ready()
    env.wait_effects(4)
    w.kill()
    time.sleep(1.5)
    env.worker().wait_ready()
    env.wait_all(insts)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(3)})
        kinds = Counter(e["kind"] for e in env.client.read_execution_history(inst, 1))
        assert kinds["TimerCreated"] == kinds["TimerFired"] == 3, kinds
    _no_stuck(env)


@pytest.mark.realtime
def test_parent_with_sub_orchestrations_killed_mid_children(env):
    """Two parents each start three 6-step child chains; the runtime is killed after 8 and 20
    side effects. After a restart both parents complete with the children's sum, each child
    instance exists exactly once (no duplicate child started by a replayed parent turn) and is
    Completed, and the instance tree names exactly the three children."""
    insts = ["par-0", "par-1"]
    for inst in insts:
        env.client.start_orchestration(inst, "Parent", {"tag": inst, "children": 3, "n": 6, "ms": 15})
    for threshold in (8, 20):
        w = env.worker().wait_ready()
        env.wait_effects(threshold)
        w.kill()
    env.worker().wait_ready()
    env.wait_all(insts)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": 3 * sq_sum(6)})
        tree = env.client.get_instance_tree(inst)
        assert len(tree.all_ids) == 4, tree.all_ids
    others = sorted(set(env.client.list_all_instances()) - set(insts))
    assert len(others) == 6, others
    for child in others:
        st = env.client.get_status(child)
        assert st.status == "Completed", (child, st.status)
    _no_stuck(env)


@pytest.mark.realtime
def test_continue_as_new_loop_killed_repeatedly_keeps_one_execution_per_iteration(env):
    """Three instances loop ten times by continue-as-new (one activity per execution); the
    runtime is killed after 5, 12 and 20 side effects. Each instance ends with exactly ten
    executions (list_executions 1..10), each execution well formed and ended by exactly one
    ContinuedAsNew (the last by Completed), and stats report ten executions."""
    insts = [f"loop-{k}" for k in range(3)]
    for inst in insts:
        env.client.start_orchestration(inst, "Loop", {"tag": inst, "iter": 0, "n": 10, "acc": 0, "ms": 20})
    for threshold in (5, 12, 20):
        w = env.worker().wait_ready()
        env.wait_effects(threshold)
        w.kill()
    env.worker().wait_ready()
    env.wait_all(insts)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(10)}, executions=10)
        for ex in range(1, 10):
            assert env.client.read_execution_history(inst, ex)[-1]["kind"] == "OrchestrationContinuedAsNew"
    _no_stuck(env)


@pytest.mark.realtime
def test_events_raised_while_the_runtime_is_dead_are_delivered_once_after_restart(env):
    """Five instances wait for an external event. The runtime runs until all are subscribed,
    is killed, and the client (another process's view) raises each event - twice for one
    instance - while no runtime runs. A restarted runtime delivers them: every instance
    completes with the value of the FIRST event, and the history holds exactly one
    ExternalEvent per consumed wait (the duplicate is not applied twice)."""
    insts = [f"wait-{k}" for k in range(5)]
    for inst in insts:
        env.client.start_orchestration(inst, "Waiter", {"tag": inst})
    w = env.worker().wait_ready()
    deadline = time.monotonic() + 10
    while not all(any(e["kind"] == "ExternalSubscribed" for e in env.client.read_execution_history(i, 1))
                  for i in insts if env.client.list_executions(i)) or len(env.client.list_all_instances()) < 5:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    w.kill()
    for k, inst in enumerate(insts):
        env.client.raise_event(inst, "go", k + 2)
    env.client.raise_event("wait-0", "go", 99)
    env.worker().wait_ready()
    env.wait_all(insts)
    for k, inst in enumerate(insts):
        _check_instance(env, inst, {"tag": inst, "total": (k + 2) ** 2})
    _no_stuck(env)


@pytest.mark.realtime
def test_two_processes_on_one_file_one_sigkilled_the_other_finishes_everything_once(env):
    """Two runtime processes share one file while ten 8-step chains run; one is SIGKILLed
    after 25 side effects and NOT restarted. The survivor takes over the dead process's
    expired locks (1 s) and completes every instance; no activity completion appears twice in
    any history and every step ran at least once."""
    insts = [f"two-{k}" for k in range(10)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 8, "ms": 15})
    a = env.worker().wait_ready()
    b = env.worker().wait_ready()
    env.wait_effects(25)
    a.kill()
    left = 80 - sum(1 for e in env.effects() if e[0] == "done")  # (a may have raced ahead before the kill)
    env.wait_all(insts)
    assert b.proc.poll() is None, b.stderr()
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(8)})
    pids = {pid for _, _, _, pid in env.effects()}
    assert b.proc.pid in pids or left <= 0, (left, pids)  # the survivor did the steps left at the kill
    _no_stuck(env)
    assert b.term() == 0, b.stderr()


CLIENT = textwrap.dedent(
    r'''
    import json, sys, time
    from duroxide_sim import Client, SqliteProvider
    db, count = sys.argv[1], int(sys.argv[2])
    p = SqliteProvider.open(db)
    c = Client(p)
    for k in range(count):
        c.start_orchestration(f"cl-{k}", "Chain", {"tag": f"cl-{k}", "n": 4, "ms": 5})
        time.sleep(0.03)
    p.close()
    print("started", count, flush=True)
    '''
)


@pytest.mark.realtime
def test_a_client_process_starts_instances_while_runtimes_are_killed_and_restarted(env):
    """A separate client process starts 40 instances over ~1.5 s while the runtime process is
    SIGKILLed and restarted three times underneath it. The client never sees an error, every
    one of the 40 instances completes exactly once, and no other instance appears."""
    script = env.dir / "client.py"
    script.write_text(CLIENT)
    cl = subprocess.Popen([sys.executable, str(script), str(env.db), "40"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    for _ in range(3):
        w = env.worker().wait_ready()
        time.sleep(0.35)
        w.kill()
    env.worker().wait_ready()
    out, err = cl.communicate(timeout=20)
    assert cl.returncode == 0 and "started 40" in out, err
    insts = [f"cl-{k}" for k in range(40)]
    env.wait_all(insts)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(4)})
    assert sorted(env.client.list_all_instances()) == sorted(insts)


@pytest.mark.realtime
def test_graceful_shutdown_during_long_activities_then_the_next_start_completes_them(env):
    """Three chains whose steps take 2 s each are running when the operator sends SIGTERM
    (shutdown(300 ms)). The process must exit promptly (well under the 2 s activity), exit 0,
    and the abandoned in-flight activities must not be recorded as failures: a new process
    started right after completes every chain with the right output, one completion per step,
    and the interrupted step is re-run (never lost)."""
    insts = [f"slow-{k}" for k in range(3)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 2, "ms": 2000})
    w = env.worker({"shutdown_ms": 300, "worker_lock_ms": 1000})
    w.wait_ready()
    env.wait_effects(3, kind="start")
    t0 = time.monotonic()
    assert w.term() == 0, w.stderr()
    assert time.monotonic() - t0 < 1.8, f"shutdown took {time.monotonic() - t0:.2f}s"
    for inst in insts:
        kinds = [e["kind"] for e in env.client.read_execution_history(inst, 1)]
        assert "ActivityFailed" not in kinds, kinds
    env.worker().wait_ready()
    env.wait_all(insts, timeout_s=15)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(2)})


@pytest.mark.realtime
def test_kill_right_after_start_before_any_turn_then_restart(env):
    """SIGKILL a runtime process twice within 50 ms of it becoming ready (it may hold fresh
    orchestrator locks with nothing committed), then restart: the instances started before
    every kill all complete once; nothing is stuck behind a dead lock for longer than the
    lock timeout plus a little."""
    insts = [f"early-{k}" for k in range(8)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 3, "ms": 5})
    for _ in range(2):
        w = env.worker().wait_ready()
        time.sleep(0.05)
        w.kill()
    t0 = time.monotonic()
    env.worker().wait_ready()
    env.wait_all(insts, timeout_s=10)
    assert time.monotonic() - t0 < 6
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(3)})


# --- damaged or unusable database files ---------------------------------------------------------


def _open_error(path: Any) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        p = SqliteProvider.open(path)
        p.close()
    return info.value


def _populated(path: Path, count: int = 40) -> None:
    p = SqliteProvider.open(path)
    c = Client(p)
    for k in range(count):
        c.start_orchestration(f"i{k}", "X", "x" * 400)
    p.close()


def test_a_database_with_a_corrupted_late_page_is_refused_or_fails_clearly_never_silently(tmp_path):
    """The operator's database has a page near its end overwritten with garbage (disk error).
    Opening it must either be refused with an error naming the path and corruption, or -- if
    the open succeeds -- the first read that touches the page raises a ProviderError (not a raw
    sqlite3 traceback) and the file is not rewritten/recreated behind the operator's back."""
    db = tmp_path / "late.db"
    _populated(db, 60)
    size = db.stat().st_size
    with open(db, "r+b") as f:
        f.seek(size - 4096)
        f.write(b"\xde\xad\xbe\xef" * 1024)
    before = db.read_bytes()
    try:
        p = SqliteProvider.open(db)
    except ProviderError as exc:
        assert "corrupt" in str(exc) or "malformed" in str(exc), exc
        assert str(db) in str(exc)
    else:
        try:
            with pytest.raises(ProviderError):
                Client(p).get_queue_depths()
                for k in range(60):
                    p.read(f"i{k}")
                p.fetch_orchestration_item(30_000, 0)
        finally:
            p.close()
    assert db.read_bytes()[:100] == before[:100]


def test_a_path_under_a_regular_file_names_the_problem(tmp_path):
    """The operator's configured path is ``<file>/app.db`` (its 'directory' is a regular file).
    The open fails with a ProviderError naming the path, not a bare sqlite3 error."""
    f = tmp_path / "notadir"
    f.write_text("x")
    exc = _open_error(f / "app.db")
    assert "notadir" in str(exc)


def test_a_database_stamped_by_a_newer_schema_is_refused_and_left_untouched(tmp_path):
    """A newer deployment upgraded the file (schema_version has a row above this code's
    SCHEMA_VERSION) and the operator rolls back the code. Opening must refuse naming both
    versions, and the file (including its data) stays byte-identical."""
    from duroxide_sim.providers.sqlite_schema import SCHEMA_VERSION

    db = tmp_path / "newer.db"
    _populated(db, 5)
    con = sqlite3.connect(db)
    cols = [r[1] for r in con.execute("PRAGMA table_info(schema_version)")]
    con.execute(f"INSERT INTO schema_version ({cols[0]}) VALUES (?)", (SCHEMA_VERSION + 3,)) if len(cols) == 1 else \
        con.execute(f"INSERT INTO schema_version VALUES ({', '.join('?' * len(cols))})", (SCHEMA_VERSION + 3,) + (0,) * (len(cols) - 1))
    con.commit()
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    before = db.read_bytes()
    exc = _open_error(db)
    assert str(SCHEMA_VERSION + 3) in str(exc) and str(SCHEMA_VERSION) in str(exc), exc
    assert db.read_bytes() == before
    n = sqlite3.connect(db).execute("SELECT count(*) FROM orchestrator_queue").fetchone()[0]
    assert n == 5

@pytest.mark.realtime
def test_a_wal_left_by_a_sigkilled_process_is_replayed_not_discarded(env):
    """A runtime process is SIGKILLed right after it committed turns (its -wal file still holds
    them, never checkpointed). The operator copies the database *with* its -wal file (no -shm)
    to a new path and opens it there: every committed completion is visible, none is lost, and
    nothing is left queued."""
    import shutil

    insts = [f"wal-{k}" for k in range(5)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 3, "ms": 5})
    w = env.worker().wait_ready()
    env.wait_all(insts)
    w.kill()
    counts = {i: len(env.client.read_execution_history(i, 1)) for i in insts}
    assert (env.dir / "app.db-wal").stat().st_size > 0
    copy = env.dir / "copy"
    copy.mkdir()
    shutil.copy(env.db, copy / "app.db")
    shutil.copy(str(env.db) + "-wal", copy / "app.db-wal")
    p = SqliteProvider.open(copy / "app.db")
    try:
        c = Client(p)
        for i in insts:
            assert len(c.read_execution_history(i, 1)) == counts[i]
            assert c.get_status(i).status == "Completed"
        depths = c.get_queue_depths()
        assert depths.orchestrator_queue == depths.worker_queue == 0, depths
    finally:
        p.close()


CLIENT_KILLED = textwrap.dedent(
    r'''
    import os, sys, time
    from duroxide_sim import Client, SqliteProvider
    p = SqliteProvider.open(sys.argv[1])
    c = Client(p)
    fd = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    k = 0
    while True:
        c.start_orchestration(f"k{k}", "Chain", {"tag": f"k{k}", "n": 2, "ms": 1})
        os.write(fd, f"start k{k}\n".encode())
        c.raise_event(f"k{k}", "go", k)
        os.write(fd, f"event k{k}\n".encode())
        k += 1
        time.sleep(0.004)
    ''')


@pytest.mark.realtime
def test_starts_and_events_acknowledged_to_a_client_that_is_then_sigkilled_are_never_lost(env):
    """A client process starts instances and raises an event to each in a loop, logging each
    call only after it returned; it is SIGKILLed at a random moment, three times. Every start
    and event the client saw acknowledged is in the database (queued); a runtime then
    completes the acknowledged instances with the right output."""
    script = env.dir / "client_killed.py"
    script.write_text(CLIENT_KILLED)
    log = env.dir / "acks.log"
    for delay in (0.5, 0.35, 0.6):
        size0 = log.stat().st_size if log.exists() else 0
        cl = subprocess.Popen([sys.executable, str(script), str(env.db), str(log)],
                              stderr=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=ROOT))
        deadline = time.monotonic() + 10
        while not log.exists() or log.stat().st_size == size0:
            assert cl.poll() is None, cl.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(delay)
        cl.kill()
        cl.wait(10)
        cl.stderr.close()
    acked = [line.split() for line in log.read_text().splitlines()]
    started = [i for kind, i in acked if kind == "start"]
    evented = {i for kind, i in acked if kind == "event"}
    assert len(started) > 20
    con = sqlite3.connect(env.db)
    try:
        queued = Counter(json.loads(w)["kind"] + ":" + i
                         for i, w in con.execute("SELECT instance_id, work_item FROM orchestrator_queue"))
    finally:
        con.close()
    kinds = {k.split(":")[0] for k in queued}
    ev_kind = next(k for k in kinds if k != "StartOrchestration")
    lost = [i for i in started if not queued["StartOrchestration:" + i]] + [i for i in evented if not queued[f"{ev_kind}:{i}"]]
    assert not lost, f"{len(lost)} acknowledged calls missing, e.g. {lost[:5]}; queue kinds {kinds}"
    sample = sorted(evented, key=lambda i: int(i[1:]))[:15]
    env.worker().wait_ready()
    env.wait_all(sample)
    for inst in sample:
        st = env.client.get_status(inst)
        out = json.loads(st.output) if isinstance(st.output, str) else st.output
        assert (st.status, out) == ("Completed", {"tag": inst, "total": sq_sum(2)})


@pytest.mark.realtime
def test_a_runtime_process_frozen_past_its_locks_then_resumed_does_not_double_commit(env):
    """Two runtime processes share the file; one is frozen (SIGSTOP, a VM pause or a long GC)
    for 2.5 s - longer than its 1 s locks - mid-run and then resumed (SIGCONT) with stale
    locks in hand. The other takes its work over; the resumed one's late acks are refused.
    Every chain completes with the right output and every history has exactly one completion
    per schedule; both processes still run and stop cleanly."""
    insts = [f"frz-{k}" for k in range(8)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 8, "ms": 60})
    a = env.worker().wait_ready()
    b = env.worker().wait_ready()
    env.wait_effects(10)
    a.proc.send_signal(signal.SIGSTOP)
    try:
        time.sleep(2.5)
    finally:
        a.proc.send_signal(signal.SIGCONT)
    env.wait_all(insts, timeout_s=25)
    time.sleep(0.5)  # the resumed process's late acks have been tried
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(8)})
    assert a.proc.poll() is None and b.proc.poll() is None
    assert a.term() == 0, a.stderr()
    assert b.term() == 0, b.stderr()


@pytest.mark.realtime
def test_an_outside_write_transaction_longer_than_the_locks_stalls_but_loses_nothing(env):
    """While two runtime processes run six 10-step chains, an operator tool (a VACUUM, a
    manual fix-up) holds the database's write lock for 2 s - twice the 1 s lock timeouts -
    twice. Renewals and acks wait behind it and then find their locks expired. Afterwards
    every chain still completes with the right output (none Failed by an 'infrastructure'
    ack failure) and no history holds a completion twice."""
    insts = [f"stall-{k}" for k in range(6)]
    for inst in insts:
        env.client.start_orchestration(inst, "Chain", {"tag": inst, "n": 10, "ms": 30})
    env.worker().wait_ready()
    env.worker().wait_ready()
    env.wait_effects(5)
    con = sqlite3.connect(env.db, isolation_level=None, timeout=60)
    try:
        for _ in range(2):
            con.execute("BEGIN IMMEDIATE")
            time.sleep(2.0)
            con.execute("COMMIT")
            time.sleep(0.3)
    finally:
        con.close()
    env.wait_all(insts, timeout_s=25)
    for inst in insts:
        _check_instance(env, inst, {"tag": inst, "total": sq_sum(10)})


@pytest.mark.parametrize(("damage", "named"), [
    ("DROP TABLE history", "history"),
    ("DROP TABLE worker_queue", "worker_queue"),
    ("DELETE FROM schema_version", "schema_version"),
], ids=["history-table-dropped", "worker_queue-dropped", "schema_version-emptied"])
def test_a_duroxide_database_with_a_damaged_schema_is_refused_at_open_naming_what_is_missing(tmp_path, damage, named):
    """A duroxide_sim database lost part of its schema (a botched restore or manual clean-up
    dropped a core table, or emptied schema_version). Opening it must be refused at once with a
    ProviderError naming what is missing/damaged - not opened as if healthy (a runtime on it
    then retries 'no such table' forever and its instances never finish) and not a misleading
    message - and the remaining data must stay untouched."""
    db = tmp_path / "damaged.db"
    _populated(db, 3)
    con = sqlite3.connect(db)
    con.execute(damage)
    con.commit()
    con.close()
    exc = _open_error(db)
    assert named in str(exc), f"{damage}: {exc}"
    con = sqlite3.connect(db)
    try:
        assert con.execute("SELECT count(*) FROM orchestrator_queue").fetchone()[0] == 3
    finally:
        con.close()
