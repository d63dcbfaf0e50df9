"""Crash safety of the production SQLite provider across PROCESSES sharing one database file.

Worker processes (``_sqlite_worker.py worker``: a production Runtime, thread driver, wall clock,
2 orchestration + 2 worker threads, 1.5 s lock timeouts) run the ``Job`` orchestration: a chain
of ``CHAIN`` activities, then a fan-out of ``FAN`` activities. Every activity does an
idempotency-checked side effect in a separate SQLite file and logs each execution, so
re-executions are counted and duplicated effects would be seen.

* ``test_sigkill_one_of_two_workers_mid_run``: 2 workers, 50 instances; one worker is SIGKILLed
  when a seeded random fraction of the activities has run (plus a seeded delay), and a
  replacement is started. Lock expiry hands the killed process's work to the others.
* ``test_sigkill_while_holding_the_write_transaction``: one worker stalls INSIDE the write
  transaction of an orchestration ack (after all of the ack's statements, with uncommitted pages
  spilled into the WAL) while the other worker queues behind SQLite's write lock; the staller is
  SIGKILLed there. Nothing of that transaction may survive, and everybody must go on.
* ``test_processes_racing_to_create_a_new_database``: several processes ``SqliteProvider.open``
  the same brand-new path at the same moment, several rounds; and its deterministic core,
  ``test_open_waits_for_a_concurrent_creator_instead_of_failing`` (both failed before
  ``SqliteProvider._journal_wal`` retried the WAL switch on SQLITE_BUSY, see that test).
* ``test_wal_deleted_while_a_process_has_it_open``: an operator deletes ``db-wal`` while a
  process has the database open; nothing must be corrupted, nothing the open process committed
  may be lost once it closes, and other openers must fail loudly rather than see stale data.

After every run (independent of where the kills landed): every instance Completed with its
output; every history has event ids exactly 1..n, starts with OrchestrationStarted, has exactly
one terminal event (the last one), every activity completion matches exactly one schedule and no
schedule is completed twice; the side effects are exactly the fault-free ones; both queues and
the instance-lock table are empty; ``PRAGMA integrity_check`` and ``foreign_key_check`` pass; no
worker logged a traceback (a crashed dispatcher step).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from duroxide_sim import Client
from duroxide_sim.core.events import (
    ActivityCompleted, ActivityFailed, ActivityScheduled, OrchestrationCompleted, OrchestrationContinuedAsNew,
    OrchestrationFailed, OrchestrationStarted,
)
from duroxide_sim.errors import ProviderError
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.providers.sqlite_schema import SCHEMA_VERSION

from . import _sqlite_worker as W
from .procs.harness import wait_terminal

ROOT = Path(__file__).resolve().parents[2]
HELPER = str(Path(__file__).resolve().parent / "_sqlite_worker.py")
SEED = int(os.environ.get("DUROXIDE_PROC_SEED", "7321"))
TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


# --- process handling ----------------------------------------------------------------------------


class Proc:
    """One worker process; ``kill()`` is SIGKILL (no cleanup of any kind)."""

    def __init__(self, tmp: Path, name: str, db: Path, effects: Path, *extra: str) -> None:
        self.name = name
        self.ready = tmp / f"{name}.ready"
        self.stalled = tmp / f"{name}.ready.stalled"
        self.opened = tmp / f"{name}.ready.opened"
        self.err_path = tmp / f"{name}.stderr"
        with open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, HELPER, "worker", str(db), "--effects", str(effects), "--ready", str(self.ready),
                 *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    def wait_for(self, path: Path, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}) before {path.name}:\n{self.stderr()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: no {path.name} after {timeout_s} s:\n{self.stderr()}")
            time.sleep(0.005)

    def open_id(self) -> int:
        return json.loads(self.ready.read_text())["open_id"]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.stderr()}") from None

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _reap(procs: list) -> None:
    for p in procs:
        proc = getattr(p, "proc", p)
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL is not ignorable
            pass


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, timeout=60)


def _count(path: Path, sql: str) -> int:
    conn = _raw(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def _held_locks(db: Path, open_id: int) -> int:
    """Live instance locks and worker leases whose token was issued by the opener ``open_id``."""
    like, now = f"sql-{open_id}-%", time.time_ns() // 1_000_000
    return _count(db, f"SELECT (SELECT COUNT(*) FROM instance_locks WHERE lock_token LIKE '{like}' AND locked_until > {now})"
                      f" + (SELECT COUNT(*) FROM worker_queue WHERE lock_token LIKE '{like}' AND locked_until > {now})")


def _setup(tmp: Path) -> tuple[Path, Path, SqliteProvider, Client]:
    db, effects = tmp / "shared.db", tmp / "effects.db"
    provider = SqliteProvider.open(db)
    conn = _raw(db)
    conn.execute(W.JUNK_DDL)  # written only by a stalled (then killed) transaction: must stay empty
    conn.close()
    W.create_effects_db(str(effects))
    return db, effects, provider, Client(provider)




def _wait_file(path: Path, proc: subprocess.Popen, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"helper exited ({proc.returncode}) before {path.name}: "
                                 f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {path.name} after {timeout_s} s")
        time.sleep(0.005)


def _wait_queues_empty(db: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _count(db, "SELECT (SELECT COUNT(*) FROM orchestrator_queue) + (SELECT COUNT(*) FROM worker_queue)") == 0:
            return
        time.sleep(0.02)


# --- the checks ------------------------------------------------------------------------------------


def _history_problems(inst: str, n: int, events: list) -> list[str]:
    """Event ids exactly 1..len; Started first; one terminal event, last; every activity
    completion matches a schedule; every schedule completed exactly once with its value."""
    out = []
    ids = [e.event_id for e in events]
    if ids != list(range(1, len(events) + 1)):
        out.append(f"{inst}: event ids {ids} are not 1..{len(events)}")
    if not events or not isinstance(events[0], OrchestrationStarted):
        out.append(f"{inst}: does not start with OrchestrationStarted")
    terminal = [e for e in events if isinstance(e, TERMINAL)]
    if len(terminal) != 1 or events[-1] is not terminal[0] or not isinstance(terminal[0], OrchestrationCompleted):
        out.append(f"{inst}: terminal events {[type(e).__name__ for e in terminal]} (want one, last, Completed)")
    scheduled = {e.event_id: e for e in events if isinstance(e, ActivityScheduled)}
    if sorted(e.name for e in scheduled.values()) != sorted(["Step"] * W.CHAIN + ["Leaf"] * W.FAN):
        out.append(f"{inst}: schedules {[e.name for e in scheduled.values()]}")
    completions = Counter(e.source_event_id for e in events if isinstance(e, (ActivityCompleted, ActivityFailed)))
    for src, times in completions.items():
        if src not in scheduled:
            out.append(f"{inst}: activity completion for unknown schedule id {src}")
        if times != 1:
            out.append(f"{inst}: activity {src} completed {times} times in history")
    for sid in scheduled:
        if completions[sid] != 1:
            out.append(f"{inst}: activity schedule {sid} completed {completions[sid]} times")
    if any(isinstance(e, ActivityFailed) for e in events):
        out.append(f"{inst}: an activity failed")
    expected = W.expected_effects(inst, n)
    for e in events:
        if isinstance(e, ActivityCompleted) and e.source_event_id in scheduled:
            sched = scheduled[e.source_event_id]
            arg = json.loads(sched.input)
            key = f"step{arg['i']}" if sched.name == "Step" else f"leaf{arg['k']}"
            if json.loads(e.result) != expected[(inst, key)]:
                out.append(f"{inst}: {key} completed with {e.result}, want {expected[(inst, key)]}")
    return out


def _check_everything(db: Path, effects: Path, provider: SqliteProvider, statuses: dict, jobs: dict[str, int],
                      procs: list[Proc]) -> dict[str, int]:
    wrong = {inst: (st.status, st.output, st.error) for inst, st in statuses.items()
             if (st.status, st.output) != ("Completed", W.expected_output(jobs[inst]))}
    assert not wrong, f"{len(wrong)} wrong outcome(s), e.g. {list(wrong.items())[:3]}"
    assert sorted(provider.list_instances()) == sorted(jobs)

    problems = []
    for inst, n in jobs.items():
        assert provider.list_executions(inst) == [1], inst
        problems += _history_problems(inst, n, provider.read_with_execution(inst, 1))
    assert not problems, f"{len(problems)} history problem(s):\n" + "\n".join(problems[:20])

    conn = _raw(effects)
    side = {(i, k): v for i, k, v in conn.execute("SELECT instance_id, key, value FROM effects")}
    runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
    conn.close()
    expected = {}
    for inst, n in jobs.items():
        expected.update(W.expected_effects(inst, n))
    assert side == expected, "side effects differ from the fault-free ones"
    scheduled = len(jobs) * (W.CHAIN + W.FAN)
    assert runs >= scheduled

    _wait_queues_empty(db)
    conn = _raw(db)
    try:
        counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("orchestrator_queue", "worker_queue", "instance_locks", "junk")}
        assert counts == dict.fromkeys(counts, 0), counts
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        conn.close()
    crashed = [f"{p.name}:\n{p.stderr()}" for p in procs if "Traceback" in p.stderr() or "crashed" in p.stderr()]
    assert not crashed, "a worker logged a traceback:\n" + "\n".join(crashed)
    return {"scheduled": scheduled, "runs": runs}


# --- tests -------------------------------------------------------------------------------------------


@pytest.mark.realtime
def test_sigkill_one_of_two_workers_mid_run(tmp_path):
    """Two workers; at ``KILLS`` seeded moments (a random share of the activity runs done, a
    random delay, then the first moment the victim holds a lock, if one comes within 2 s) one of
    the two live workers is SIGKILLed and a replacement started."""
    rng = random.Random(SEED)
    db, effects, provider, client = _setup(tmp_path)
    jobs = {f"job-{n}": n for n in range(60)}
    total = len(jobs) * (W.CHAIN + W.FAN)
    kills = 3
    thresholds = sorted(rng.sample(range(total // 6, (total * 5) // 6), kills))
    procs: list[Proc] = []
    report = []
    t0 = time.monotonic()
    try:
        workers = [Proc(tmp_path, f"w{i}", db, effects) for i in range(2)]
        procs += workers
        for w in workers:
            w.wait_for(w.ready)
        for inst, n in jobs.items():
            client.start_orchestration(inst, "Job", n)
        for k, kill_at in enumerate(thresholds):
            deadline = time.monotonic() + 60
            while _count(effects, "SELECT COUNT(*) FROM runs") < kill_at:
                assert time.monotonic() < deadline, f"no progress before kill {k}"
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.05))
            slot = rng.randrange(2)
            victim = workers[slot]
            victim.wait_for(victim.ready)
            held_deadline = time.monotonic() + 2.0
            while not _held_locks(db, victim.open_id()) and time.monotonic() < held_deadline:
                time.sleep(0.001)
            assert victim.proc.poll() is None, f"{victim.name} died by itself:\n{victim.stderr()}"
            victim.kill()
            report.append((victim.name, _count(effects, "SELECT COUNT(*) FROM runs"), _held_locks(db, victim.open_id())))
            workers[slot] = Proc(tmp_path, f"w{2 + k}", db, effects)
            procs.append(workers[slot])
        statuses = wait_terminal(client, list(jobs), timeout_s=120)
        stats = _check_everything(db, effects, provider, statuses, jobs, procs)
        for w in workers:
            assert w.stop() == 0, w.stderr()
    finally:
        _reap(procs)
        provider.close()
    print(f"\nseed {SEED}: kills (victim, activity runs so far of {total}, locks it held) {report}; "
          f"{stats['runs'] - stats['scheduled']} re-executions; {time.monotonic() - t0:.1f} s")


@pytest.mark.realtime
def test_sigkill_while_holding_the_write_transaction(tmp_path):
    db, effects, provider, client = _setup(tmp_path)
    jobs = {f"stall-{n}": n for n in range(30)}
    procs: list[Proc] = []
    try:
        # Every start is queued before the workers run: a start still being written when the
        # staller takes the write lock for good waited for the busy timeout and failed (under
        # load, the CI run was slow enough for that).
        for inst, n in jobs.items():
            client.start_orchestration(inst, "Job", n)
        # Both open the file before either runtime starts (--go): opening writes (the open id),
        # and under load the staller could stall before the other process had opened.
        go = tmp_path / "go"
        staller = Proc(tmp_path, "staller", db, effects, "--stall-ack", "12", "--go", str(go))
        other = Proc(tmp_path, "other", db, effects, "--go", str(go))
        procs += [staller, other]
        for p in (staller, other):
            p.wait_for(p.opened, timeout_s=60)
        go.touch()
        staller.wait_for(staller.ready)
        other.wait_for(other.ready)
        staller.wait_for(staller.stalled, timeout_s=60)
        # The staller holds SQLite's write lock with uncommitted frames in the WAL; the other
        # worker (and this client) queue behind it. Readers still see the last commit.
        assert _count(db, "SELECT COUNT(*) FROM junk") == 0
        wal_bytes = os.path.getsize(str(db) + "-wal")
        time.sleep(2.0)  # longer than the 1.5 s lock timeouts: locks of the blocked worker expire meanwhile
        staller.kill()
        replacement = Proc(tmp_path, "replacement", db, effects)
        procs.append(replacement)
        statuses = wait_terminal(client, list(jobs), timeout_s=120)
        _check_everything(db, effects, provider, statuses, jobs, procs)
        for p in (other, replacement):
            assert p.stop() == 0, p.stderr()
    finally:
        _reap(procs)
        provider.close()
    print(f"\nstalled ack SIGKILLed with {wal_bytes} bytes in the WAL")


@pytest.mark.realtime
def test_processes_racing_to_create_a_new_database(tmp_path):
    """Every opener of a brand-new file must succeed (SQLITE_BUSY is waited out, as
    ``busy_timeout`` promises), the schema must be created exactly once and every open must
    get its own open id (lock-token prefix).

    Failed (1-5 of 24 opens per run) while ``SqliteProvider._connect`` ran
    ``PRAGMA journal_mode = WAL`` once: while another opener holds a lock on the still
    rollback-journal file, SQLite answers SQLITE_BUSY at once (the busy handler is not used
    for a journal-mode change), and ``open()`` raised "database is busy" after ~1 ms instead of
    waiting. ``_journal_wal`` now retries the switch on SQLITE_BUSY up to the busy timeout."""
    rounds, openers = 6, 4
    failures = []
    for r in range(rounds):
        path = tmp_path / f"fresh-{r}.db"
        go = time.time() + 0.6  # the openers have imported everything by then
        outs = [tmp_path / f"open-{r}-{i}.json" for i in range(openers)]
        procs = []
        try:
            procs = [subprocess.Popen([sys.executable, HELPER, "open", str(path), repr(go), str(out)], cwd=ROOT,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for out in outs]
            for p in procs:
                _, err = p.communicate(timeout=90)
                assert p.returncode == 0, err.decode(errors="replace")
        finally:
            _reap(procs)
        results = [json.loads(out.read_text()) for out in outs]
        failures += [f"round {r}: {res['error']}" for res in results if not res["ok"]]
        ok_ids = sorted(res["open_id"] for res in results if res["ok"])
        assert len(set(ok_ids)) == len(ok_ids), f"round {r}: two opens share an open id: {ok_ids}"
        conn = _raw(path)
        try:
            assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == \
                [(v,) for v in range(1, SCHEMA_VERSION + 1)]
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            conn.close()
    assert not failures, (f"{len(failures)} of {rounds * openers} concurrent opens of a new database failed:\n"
                          + "\n".join(failures))


@pytest.mark.realtime
def test_wal_deleted_while_a_process_has_it_open(tmp_path):
    """Deleting ``db-wal`` under a live process is an operator error SQLite cannot hide (the
    live process keeps writing to the unlinked file). What the provider must still give:
    no corruption, no loss of what the live process committed once it closes gracefully (its
    close checkpoints the unlinked WAL into the database), and other openers fail loudly with a
    ProviderError instead of working on a stale snapshot."""
    db = tmp_path / "wal.db"
    SqliteProvider.open(db).close()
    holder = subprocess.Popen([sys.executable, HELPER, "wal-holder", str(db), str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_file(tmp_path / "phase1", holder)
        wal = Path(str(db) + "-wal")
        assert wal.exists() and wal.stat().st_size > 0
        wal.unlink()
        (tmp_path / "deleted").write_text("")
        _wait_file(tmp_path / "phase2", holder)
        phase2 = json.loads((tmp_path / "phase2").read_text())
        assert phase2["errors"] == []  # the holder's own (already open) writer keeps working

        # A second opener must either fail loudly or see everything committed so far: never
        # work on a stale snapshot that silently misses w0..w39.
        try:
            other = SqliteProvider.open(db, clock=_Clock())
        except ProviderError as exc:
            refused = str(exc)
            if "I/O" in refused:  # permanent, with the likely cause (it does not pass by retrying)
                assert exc.retryable is False and "-wal" in refused, refused
        else:
            refused = None
            try:
                depth = other.get_queue_depths().orchestrator_queue
            except ProviderError as exc:
                refused = str(exc)
            else:
                assert depth == len(phase2["enqueued"]), f"a second opener sees a stale database: {depth} starts"
            finally:
                other.close()
        print(f"\nsecond opener while the WAL is deleted: {refused or 'sees every commit'}")

        (tmp_path / "go-close").write_text("")
        _wait_file(tmp_path / "closed", holder)
        _, err = holder.communicate(timeout=30)
        assert holder.returncode == 0, err.decode(errors="replace")
    finally:
        _reap([holder])

    provider = SqliteProvider.open(db)  # the WAL is gone for good: a normal open works again
    try:
        assert sorted(_queued_instances(provider)) == sorted(phase2["enqueued"])
        assert len(phase2["enqueued"]) == 40
    finally:
        provider.close()
    conn = _raw(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


class _Clock:
    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def _queued_instances(provider: SqliteProvider) -> list[str]:
    conn = _raw(Path(provider.path))
    try:
        return [r[0] for r in conn.execute("SELECT instance_id FROM orchestrator_queue")]
    finally:
        conn.close()


def test_open_waits_for_a_concurrent_creator_instead_of_failing(tmp_path):
    """The deterministic core of the creation race above: another opener has just created the
    file and holds its write lock for 0.3 s (the file is still in rollback-journal mode, as it
    is before any opener has switched it to WAL). ``open()`` has a 60 s busy timeout, so it must
    wait the 0.3 s out and succeed, not fail at once with "database is busy"."""
    import threading

    path = tmp_path / "creating.db"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("BEGIN IMMEDIATE")
    first.execute("CREATE TABLE someone_else_is_creating (x)")
    release = threading.Timer(0.3, lambda: first.execute("COMMIT"))
    release.start()
    try:
        t0 = time.monotonic()
        try:
            provider = SqliteProvider.open(path)
        except ProviderError as exc:
            raise AssertionError(f"open() failed after {time.monotonic() - t0:.3f} s instead of waiting for the "
                                 f"other opener's lock: {exc}") from exc
        provider.close()
    finally:
        release.join()
        first.close()
    conn = _raw(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()
