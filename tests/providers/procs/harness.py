"""Test-side helpers for the multi-process SQLite tests: spawn/kill worker processes, read
their logs, wait for instances, and check histories."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from duroxide_sim.core.events import (
    ActivityCompleted, ActivityFailed, ActivityScheduled, SubOrchestrationCompleted, SubOrchestrationFailed,
    SubOrchestrationScheduled, TimerCreated, TimerFired,
)
from duroxide_sim.sim.checkers import check_well_formed

ROOT = Path(__file__).resolve().parents[3]
WORKER = "tests/providers/procs/worker.py"


class WorkerProc:
    """One incarnation of a worker process."""

    def __init__(self, db_path: Path, workdir: Path, name: str, *extra: str) -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.ready_file = workdir / f"{name}.ready"
        self.err = workdir / f"{name}.stderr"
        self.open_id: int | None = None
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, WORKER, str(db_path), "--log", str(self.log), "--ready", str(self.ready_file), *extra],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode} before ready:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {self.name} not ready after {timeout_s} s:\n{self.stderr_tail()}")
            time.sleep(0.01)
        self.open_id = json.loads(self.ready_file.read_text())["open_id"]

    def kill(self) -> None:
        """SIGKILL (no cleanup of any kind) and reap."""
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(f"worker {self.name} ignored SIGTERM:\n{self.stderr_tail()}") from None

    def stderr_tail(self, n: int = 4000) -> str:
        try:
            return self.err.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def crash_reports(workers: list[WorkerProc]) -> list[str]:
    """Tracebacks / crashed dispatcher steps reported on any worker's stderr."""
    out = []
    for w in workers:
        text = w.stderr_tail(10**7)
        if "Traceback" in text or "crashed" in text:
            out.append(f"{w.name}:\n{text[-3000:]}")
    return out


def raw(db_path: Path) -> sqlite3.Connection:
    return sqlite3.connect(db_path, isolation_level=None, timeout=60)


def held_locks(db_path: Path, open_id: int, now_ms: int) -> int:
    """Live instance locks and worker-row locks whose token belongs to the opener ``open_id``."""
    like = f"sql-{open_id}-%"
    conn = raw(db_path)
    try:
        orch = conn.execute("SELECT COUNT(*) FROM instance_locks WHERE lock_token LIKE ? AND locked_until > ?",
                            (like, now_ms)).fetchone()[0]
        work = conn.execute("SELECT COUNT(*) FROM worker_queue WHERE lock_token LIKE ? AND locked_until > ?",
                            (like, now_ms)).fetchone()[0]
        return orch + work
    finally:
        conn.close()


def read_logs(paths: list[Path]) -> list[dict[str, Any]]:
    """All JSON lines of the worker logs (a torn last line of a killed process is skipped)."""
    out = []
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
    return out


def wait_terminal(client: Any, instances: list[str], timeout_s: float) -> dict[str, Any]:
    """Status of every instance once all are terminal; AssertionError naming the stragglers."""
    deadline = time.monotonic() + timeout_s
    done: dict[str, Any] = {}
    pending = list(instances)
    while pending:
        still = []
        for inst in pending:
            st = client.get_status(inst)
            if st.is_terminal:
                done[inst] = st
            else:
                still.append(inst)
        pending = still
        if pending:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(pending)} instance(s) not terminal after {timeout_s} s: {pending[:10]}")
            time.sleep(0.05)
    return done


def all_histories(provider: Any) -> dict[tuple[str, int], list]:
    return {(inst, exe): provider.read_with_execution(inst, exe)
            for inst in provider.list_instances() for exe in provider.list_executions(inst)}


def history_problems(histories: dict[tuple[str, int], list]) -> list[str]:
    """check_well_formed over every execution, plus: every activity schedule has exactly one
    ActivityCompleted (and no ActivityFailed), every timer exactly one TimerFired, every
    sub-orchestration exactly one SubOrchestrationCompleted."""
    problems = []
    pairs = ((ActivityScheduled, ActivityCompleted, (ActivityCompleted, ActivityFailed)),
             (TimerCreated, TimerFired, (TimerFired,)),
             (SubOrchestrationScheduled, SubOrchestrationCompleted, (SubOrchestrationCompleted, SubOrchestrationFailed)))
    for (inst, exe), events in histories.items():
        for message, event_id in check_well_formed(inst, exe, events):
            problems.append(f"{inst!r} execution {exe}: {message} (event {event_id})")
        for sched_type, ok_type, done_types in pairs:
            done = Counter((type(e), e.source_event_id) for e in events if isinstance(e, done_types))
            for ev in events:
                if isinstance(ev, sched_type):
                    got = {t.__name__: done[(t, ev.event_id)] for t in done_types if done[(t, ev.event_id)]}
                    if got != {ok_type.__name__: 1}:
                        problems.append(f"{inst!r} execution {exe}: {sched_type.__name__} {ev.event_id} "
                                        f"resolved by {got or 'nothing'} (want exactly one {ok_type.__name__})")
    return problems


def turn_log_problems(records: list[dict[str, Any]], histories: dict[tuple[str, int], list]) -> list[str]:
    """No lock token acked twice; no event id committed by two turns of one instance/execution;
    every logged event id is in the final history."""
    problems = []
    tokens = Counter(r["token"] for r in records)
    problems += [f"lock token {t} acked {n} times" for t, n in tokens.items() if n > 1]
    owner: dict[tuple[str, int, int], str] = {}
    for r in records:
        if r["op"] != "turn":
            continue
        key = (r["instance"], r["execution"])
        ids = set((e.event_id for e in histories.get(key, [])))
        for event_id in r["ids"]:
            where = (r["instance"], r["execution"], event_id)
            if where in owner:
                problems.append(f"event {event_id} of {r['instance']!r} execution {r['execution']} committed twice "
                                f"(tokens {owner[where]} and {r['token']})")
            owner[where] = r["token"]
            if event_id not in ids:
                problems.append(f"logged event {event_id} of {r['instance']!r} execution {r['execution']} missing "
                                "from history")
    return problems


def per_pid(records: list[dict[str, Any]], op: str) -> dict[int, int]:
    counts: dict[int, int] = defaultdict(int)
    for r in records:
        if r["op"] == op:
            counts[r["pid"]] += 1
    return dict(counts)
