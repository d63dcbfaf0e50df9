"""Helper processes for ``test_sqlite_processes.py`` (multi-process crash safety of SqliteProvider).

Run as a script (``python tests/providers/_sqlite_worker.py MODE ...``); the test imports this
module too, for the workflow constants and the ``expected_*`` functions (plain arithmetic).

Modes:

* ``worker DB --effects EFFECTS --ready READY [--stall-ack N] [...]``: a production ``Runtime``
  (thread driver, wall clock) on the SQLite file ``DB`` until SIGTERM (graceful, exit 0) or
  SIGKILL. Registers the ``Job`` orchestration: a chain of ``CHAIN`` ``Step`` activities, then a
  fan-out of ``FAN`` ``Leaf`` activities. Every activity does an idempotency-checked side effect
  (``INSERT OR IGNORE`` then read back, in one transaction) in the separate SQLite file
  ``EFFECTS`` and appends one row to ``runs`` per execution (so re-executions can be counted).
  ``READY`` is written (atomically) once the runtime runs: ``{"pid", "open_id"}``.
  ``--stall-ack N``: the N-th orchestration ack of this process runs all of its statements, then
  (still inside the write transaction, holding SQLite's write lock) shrinks the page cache and
  writes ~2 MB into the ``junk`` table so uncommitted frames spill into the WAL, touches
  ``READY + ".stalled"`` and sleeps forever: the test SIGKILLs it there. ``--go PATH``: after
  opening the database (a write: the open id), touch ``READY + ".opened"`` and start the runtime
  only once ``PATH`` exists (so a staller cannot take the write lock for good before another
  process has opened the file).
* ``open PATH GO_EPOCH_S OUT``: busy-waits until wall time ``GO_EPOCH_S``, then
  ``SqliteProvider.open(PATH)`` (schema creation race); writes ``{"ok", "open_id", "error"}``
  as JSON to ``OUT``.
* ``wal-holder DB DIR``: keeps one provider open on ``DB`` and enqueues starts on a file
  protocol driven by the test (see ``test_wal_deleted_while_a_process_has_it_open``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sqlite3
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CHAIN = 4  # Step activities run one after the other
FAN = 3  # Leaf activities run in parallel after the chain

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS effects (instance_id TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, "
    "PRIMARY KEY (instance_id, key))",
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, "
    "activity_id INTEGER NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL)",
)
JUNK_DDL = "CREATE TABLE IF NOT EXISTS junk (id INTEGER PRIMARY KEY, blob BLOB NOT NULL)"


# --- pure workflow arithmetic (shared with the test) -----------------------------------------------


def step_value(i: int, v: int) -> int:
    return v * 3 + i


def leaf_value(k: int, n: int) -> int:
    return n * 10 + k


def expected_output(n: int) -> dict[str, Any]:
    v = n
    for i in range(CHAIN):
        v = step_value(i, v)
    return {"n": n, "chain": v, "fan": [leaf_value(k, n) for k in range(FAN)]}


def expected_effects(instance: str, n: int) -> dict[tuple[str, str], int]:
    out, v = {}, n
    for i in range(CHAIN):
        v = step_value(i, v)
        out[(instance, f"step{i}")] = v
    for k in range(FAN):
        out[(instance, f"leaf{k}")] = leaf_value(k, n)
    return out


def create_effects_db(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for ddl in EFFECTS_DDL:
            conn.execute(ddl)
    finally:
        conn.close()


# --- worker mode -------------------------------------------------------------------------------


def _register(runtime: Any, effects_path: str, activity_ms: int) -> None:
    local = threading.local()
    pid = os.getpid()

    def conn() -> sqlite3.Connection:
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(effects_path, isolation_level=None, timeout=60)
        return c

    def effect(ctx: Any, key: str, value: int) -> int:
        """Idempotency-checked side effect: the first execution stores ``value``; every
        execution (first or re-run after a crash) returns the stored one. The activity then
        "works" ``activity_ms`` before returning: a kill in that window re-runs an activity
        whose side effect is already done."""
        c = conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO runs (instance_id, activity_id, key, pid) VALUES (?, ?, ?, ?)",
                      (ctx.instance_id, ctx.activity_id, key, pid))
            c.execute("INSERT OR IGNORE INTO effects (instance_id, key, value) VALUES (?, ?, ?)",
                      (ctx.instance_id, key, value))
            stored = c.execute("SELECT value FROM effects WHERE instance_id = ? AND key = ?",
                               (ctx.instance_id, key)).fetchone()[0]
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        if activity_ms:
            time.sleep(activity_ms / 1000)
        return stored

    def step(ctx: Any, arg: dict) -> int:
        return effect(ctx, f"step{arg['i']}", step_value(arg["i"], arg["v"]))

    def leaf(ctx: Any, arg: dict) -> int:
        return effect(ctx, f"leaf{arg['k']}", leaf_value(arg["k"], arg["n"]))

    def job(ctx: Any, n: int) -> Any:
        v = n
        for i in range(CHAIN):
            v = yield ctx.schedule_activity("Step", {"i": i, "v": v})
        fan = yield ctx.all([ctx.schedule_activity("Leaf", {"k": k, "n": n}) for k in range(FAN)])
        return {"n": n, "chain": v, "fan": [r["ok"] for r in fan]}

    runtime.register_activity("Step", step)
    runtime.register_activity("Leaf", leaf)
    runtime.register_orchestration("Job", job)


def _install_stall(provider_cls: Any, nth: int, marker: str) -> None:
    """Make the ``nth`` orchestration ack of this process stall inside its write transaction."""
    original = provider_cls._ack_orch
    calls = [0]
    guard = threading.Lock()

    def stalling_ack(self: Any, db: sqlite3.Connection, *args: Any, **kwargs: Any) -> Any:
        result = original(self, db, *args, **kwargs)
        with guard:
            calls[0] += 1
            hit = calls[0] == nth
        if hit:
            db.execute("PRAGMA cache_size = 4")  # dirty pages no longer fit: spill them into the WAL
            blob = b"x" * 8192
            db.executemany("INSERT INTO junk (blob) VALUES (?)", [(blob,) for _ in range(256)])
            tmp = marker + ".tmp"
            with open(tmp, "w") as fh:
                fh.write(str(os.getpid()))
            os.replace(tmp, marker)
            while True:  # holds the write transaction until SIGKILL
                time.sleep(3600)
        return result

    provider_cls._ack_orch = stalling_ack


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--effects", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--orch-lock-ms", type=int, default=1_500)
    parser.add_argument("--worker-lock-ms", type=int, default=1_500)
    parser.add_argument("--poll-ms", type=int, default=5)
    parser.add_argument("--activity-ms", type=int, default=5)
    parser.add_argument("--stall-ack", type=int, default=0)
    parser.add_argument("--go", default=None)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    from duroxide_sim import Runtime, RuntimeOptions
    from duroxide_sim.providers.sqlite import SqliteProvider

    if args.stall_ack:
        _install_stall(SqliteProvider, args.stall_ack, args.ready + ".stalled")
    provider = SqliteProvider.open(args.db)
    runtime = Runtime(provider, RuntimeOptions(
        dispatcher_poll_interval_ms=args.poll_ms,
        orchestration_concurrency=2,
        worker_concurrency=2,
        orchestrator_lock_timeout_ms=args.orch_lock_ms,
        worker_lock_timeout_ms=args.worker_lock_ms,
        activity_cancellation_grace_period_ms=1_000,
    ))
    _register(runtime, args.effects, args.activity_ms)
    if args.go:
        _write_json(args.ready + ".opened", {"pid": os.getpid()})
        while not os.path.exists(args.go):
            if stop.wait(0.005):
                provider.close()
                return 0
    runtime.start()
    _write_json(args.ready, {"pid": os.getpid(), "open_id": provider._open_id})
    while not stop.wait(0.05):
        pass
    runtime.shutdown(5_000)
    provider.close()
    return 0


# --- open mode (schema creation race) -----------------------------------------------------------


def open_main(argv: list[str]) -> int:
    path, go, out = argv[0], float(argv[1]), argv[2]
    from duroxide_sim.providers.sqlite import SqliteProvider

    while time.time() < go:  # all openers leave this loop within microseconds of each other
        pass
    try:
        provider = SqliteProvider.open(path)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        _write_json(out, {"ok": False, "open_id": None, "error": f"{type(exc).__name__}: {exc}"})
        return 0
    try:
        _write_json(out, {"ok": True, "open_id": provider._open_id, "error": None})
    finally:
        provider.close()
    return 0


# --- wal-holder mode -------------------------------------------------------------------------------


def _wait_file(path: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {path}")
        time.sleep(0.005)


def wal_holder_main(argv: list[str]) -> int:
    """Phase files in DIR: the holder enqueues starts w0..w19 and writes ``phase1``; after the
    test writes ``deleted`` (it removed DB-wal) it enqueues w20..w39 and writes ``phase2`` with
    the ids whose enqueue returned without error; after ``go-close`` it closes the provider
    (graceful: SQLite checkpoints its WAL) and writes ``closed``."""
    db, d = argv[0], argv[1]
    from duroxide_sim import Client
    from duroxide_sim.providers.sqlite import SqliteProvider

    provider = SqliteProvider.open(db)
    client = Client(provider)
    done = []
    for i in range(20):
        client.start_orchestration(f"w{i}", "Job", i)
        done.append(f"w{i}")
    _write_json(os.path.join(d, "phase1"), {"enqueued": done})
    _wait_file(os.path.join(d, "deleted"))
    errors = []
    for i in range(20, 40):
        try:
            client.start_orchestration(f"w{i}", "Job", i)
            done.append(f"w{i}")
        except Exception as exc:  # noqa: BLE001 - reported to the test
            errors.append(f"{type(exc).__name__}: {exc}")
    _write_json(os.path.join(d, "phase2"), {"enqueued": done, "errors": errors})
    _wait_file(os.path.join(d, "go-close"))
    provider.close()
    _write_json(os.path.join(d, "closed"), {})
    return 0


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"worker": worker_main, "open": open_main, "wal-holder": wal_holder_main}[mode](rest))
