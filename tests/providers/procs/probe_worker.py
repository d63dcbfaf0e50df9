"""Helper processes for ``tests/providers/test_sqlite_production_probe.py``.

Run as a script (``python tests/providers/procs/probe_worker.py MODE ...``); the test imports
this module too, for the workflow constants and the ``expected_*`` functions (plain arithmetic).

Modes:

* ``worker DB --effects EFFECTS --ready READY [--orch-lock-ms] [--worker-lock-ms] [--poll-ms]
  [--max-attempts]``: a production ``Runtime`` (thread driver, wall clock) on the SQLite file
  ``DB`` until SIGTERM (graceful, exit 0) or SIGKILL. Activities do an idempotency-checked side
  effect (``INSERT OR IGNORE`` then read back) in the separate SQLite file ``EFFECTS`` and
  append one row per execution to ``runs``.
* ``client DB --plan PLAN --out OUT``: a ``Client`` only (no runtime) in its own process: starts
  the instances of PLAN (JSON), raises events / enqueues queue messages once the instances are
  ready for them, cancels the ``Victim`` instances, then ``wait_for_orchestration`` on every
  instance and writes ``{instance: [status, output, error]}`` to OUT.
* ``chdir-open DB_NAME WORKDIR OTHERDIR OUT``: opens a provider with a RELATIVE path in WORKDIR,
  starts an instance, changes the working directory to OTHERDIR and reads the queue depth from
  a new thread; writes the outcome to OUT.
* ``open PATH OUT``: ``SqliteProvider.open(PATH)``; writes ``{"ok", "error", "seconds"}`` to OUT.
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

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

CAN_LEN = 6  # executions of one CanChain instance (5 continue-as-new)
FAN = 5  # sub-orchestrations of one Fan instance

EFFECTS_DDL = (
    "CREATE TABLE IF NOT EXISTS effects (instance_id TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, "
    "PRIMARY KEY (instance_id, key))",
    "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, "
    "execution_id INTEGER NOT NULL, activity_id INTEGER NOT NULL, key TEXT NOT NULL, pid INTEGER NOT NULL)",
)


# --- pure arithmetic shared with the test ------------------------------------------------------


def bump_value(n: int, i: int) -> int:
    return n * 100 + i


def leaf_value(n: int, k: int) -> int:
    return n * 10 + k


def expected_can(n: int) -> dict[str, Any]:
    return {"n": n, "acc": sum(bump_value(n, i) for i in range(CAN_LEN)), "last": str(CAN_LEN - 1)}


def expected_fan(n: int) -> int:
    return sum(leaf_value(n, k) for k in range(FAN))


def expected_waiter(n: int) -> dict[str, Any]:
    return {"n": n, "ev": {"go": n}, "q": f"q{n}", "bump": bump_value(n, 0)}


def create_effects_db(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        for ddl in EFFECTS_DDL:
            conn.execute(ddl)
    finally:
        conn.close()


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


# --- worker mode -------------------------------------------------------------------------------


def register(runtime: Any, effects_path: str) -> None:
    local = threading.local()
    pid = os.getpid()

    def conn() -> sqlite3.Connection:
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(effects_path, isolation_level=None, timeout=60)
        return c

    def effect(ctx: Any, key: str, value: int) -> int:
        c = conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO runs (instance_id, execution_id, activity_id, key, pid) VALUES (?, ?, ?, ?, ?)",
                      (ctx.instance_id, ctx.execution_id, ctx.activity_id, key, pid))
            c.execute("INSERT OR IGNORE INTO effects (instance_id, key, value) VALUES (?, ?, ?)",
                      (ctx.instance_id, key, value))
            stored = c.execute("SELECT value FROM effects WHERE instance_id = ? AND key = ?",
                               (ctx.instance_id, key)).fetchone()[0]
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        time.sleep(0.03)  # a kill in this window re-runs an activity whose effect is done
        return stored

    @runtime.register_activity("Bump")
    def bump(ctx: Any, arg: dict) -> int:
        return effect(ctx, f"bump{arg['i']}", bump_value(arg["n"], arg["i"]))

    @runtime.register_activity("Leaf")
    def leaf(ctx: Any, arg: dict) -> int:
        return effect(ctx, "leaf", leaf_value(arg["n"], arg["k"]))

    @runtime.register_activity("Slow")
    def slow(ctx: Any, n: int) -> int:
        for _ in range(20):
            if ctx.is_cancelled():
                break
            time.sleep(0.05)
        return n

    @runtime.register_activity("KillProcess")
    def kill_process(ctx: Any, _arg: Any) -> None:  # native crash / OOM kill stand-in
        os.kill(os.getpid(), signal.SIGKILL)

    @runtime.register_orchestration("CanChain")
    def can_chain(ctx: Any, arg: dict) -> Any:
        n, i, acc = arg["n"], arg["i"], arg["acc"]
        v = yield ctx.schedule_activity("Bump", {"n": n, "i": i})
        yield ctx.schedule_timer(10 + (n + i) % 30)
        ctx.set_kv_value("last", str(i))
        ctx.set_custom_status(f"step {i}")
        if i + 1 < CAN_LEN:
            yield ctx.continue_as_new({"n": n, "i": i + 1, "acc": acc + v})
            return None
        return {"n": n, "acc": acc + v, "last": ctx.get_kv_value("last")}

    @runtime.register_orchestration("FanLeaf")
    def fan_leaf(ctx: Any, arg: dict) -> Any:
        yield ctx.schedule_timer(15 + arg["k"] * 7)
        return (yield ctx.schedule_activity("Leaf", arg))

    @runtime.register_orchestration("Fan")
    def fan(ctx: Any, n: int) -> Any:
        results = yield ctx.all([ctx.schedule_sub_orchestration("FanLeaf", {"n": n, "k": k}) for k in range(FAN)])
        return sum(r["ok"] for r in results)

    @runtime.register_orchestration("Waiter")
    def waiter(ctx: Any, n: int) -> Any:
        ev = yield ctx.wait_for_event("go")
        q = yield ctx.dequeue_event("q")
        b = yield ctx.schedule_activity("Bump", {"n": n, "i": 0})
        return {"n": n, "ev": ev, "q": q, "bump": b}

    @runtime.register_orchestration("Victim")
    def victim(ctx: Any, n: int) -> Any:
        yield ctx.schedule_activity("Slow", n)
        yield ctx.wait_for_event("never")
        return "not cancelled"

    @runtime.register_orchestration("KillerTurn")
    def killer_turn(ctx: Any, _arg: Any) -> Any:
        # Orchestration code that takes the whole process down (a native crash, an OOM kill)
        # on every delivery: the poison rule (attempt counts) must end it.
        os.kill(os.getpid(), signal.SIGKILL)
        yield ctx.schedule_timer(1)

    @runtime.register_orchestration("KillerActivity")
    def killer_activity(ctx: Any, _arg: Any) -> Any:
        try:
            yield ctx.schedule_activity("KillProcess", None)
        except Exception as exc:  # noqa: BLE001
            return f"activity failed: {exc}"
        return "activity returned"

    @runtime.register_orchestration("Plain")
    def plain(ctx: Any, n: int) -> Any:
        v = yield ctx.schedule_activity("Bump", {"n": n, "i": 7})
        return v


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--effects", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--orch-lock-ms", type=int, default=1_000)
    parser.add_argument("--worker-lock-ms", type=int, default=1_500)
    parser.add_argument("--poll-ms", type=int, default=20)
    parser.add_argument("--max-attempts", type=int, default=10)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    from duroxide_sim import Runtime, RuntimeOptions, SqliteProvider

    provider = SqliteProvider.open(args.db)
    runtime = Runtime(provider, RuntimeOptions(
        dispatcher_poll_interval_ms=args.poll_ms,
        orchestration_concurrency=2,
        worker_concurrency=2,
        orchestrator_lock_timeout_ms=args.orch_lock_ms,
        worker_lock_timeout_ms=args.worker_lock_ms,
        max_attempts=args.max_attempts,
        activity_cancellation_grace_period_ms=1_000,
    ))
    register(runtime, args.effects)
    runtime.start()
    _write_json(args.ready, {"pid": os.getpid(), "open_id": provider._open_id})
    while not stop.wait(0.05):
        pass
    runtime.shutdown(5_000)
    provider.close()
    return 0


# --- client mode -------------------------------------------------------------------------------


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with open(args.plan) as fh:
        plan = json.load(fh)

    from duroxide_sim import Client, SqliteProvider

    provider = SqliteProvider.open(args.db)
    client = Client(provider)
    pending = list(plan["starts"])  # started in waves, so work keeps arriving while workers are killed
    per_wave = -(-len(pending) // plan["waves"])
    next_wave = time.monotonic()
    started: list[str] = []
    waiters = {inst: inp for inst, name, inp in plan["starts"] if name == "Waiter"}
    victims = [inst for inst, name, _ in plan["starts"] if name == "Victim"]
    queued: set[str] = set()
    raised: set[str] = set()
    cancelled: set[str] = set()
    deadline = time.monotonic() + plan["signal_timeout_s"]
    # Queue messages are buffered once the instance exists; a positional event counts only
    # once its subscription is persisted (SPEC §6.1), so raise it after that.
    while (pending or len(raised) < len(waiters) or len(cancelled) < len(victims)) and time.monotonic() < deadline:
        if pending and time.monotonic() >= next_wave:
            for inst, name, inp in pending[:per_wave]:
                client.start_orchestration(inst, name, inp)
                started.append(inst)
            del pending[:per_wave]
            next_wave += plan["wave_gap_s"]
        for inst, n in waiters.items():
            if inst not in started:
                continue
            if inst not in queued and client.get_status(inst).status == "Running":
                client.enqueue_event(inst, "q", f"q{n}")
                queued.add(inst)
            if inst in queued and inst not in raised:
                kinds = [e["kind"] for e in client.read_execution_history(inst, 1)]
                if "ExternalSubscribed" in kinds:
                    client.raise_event(inst, "go", {"go": n})
                    raised.add(inst)
        for inst in victims:
            if inst in started and inst not in cancelled and client.get_status(inst).status == "Running":
                client.cancel_instance(inst, "probe says stop")
                cancelled.add(inst)
        time.sleep(0.02)
    out: dict[str, Any] = {"_raised": sorted(raised), "_cancelled": sorted(cancelled)}
    for inst, _name, _inp in plan["starts"]:
        try:
            st = client.wait_for_orchestration(inst, plan["wait_timeout_ms"])
            out[inst] = [st.status, st.output, st.error]
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[inst] = ["ERROR", None, f"{type(exc).__name__}: {exc}"]
    provider.close()
    _write_json(args.out, out)
    return 0


# --- chdir-open mode ---------------------------------------------------------------------------


def chdir_open_main(argv: list[str]) -> int:
    name, workdir, otherdir, out = argv
    from duroxide_sim import Client, SqliteProvider

    os.chdir(workdir)
    provider = SqliteProvider.open(name)  # a relative path, as in SqliteProvider.open("app.db")
    client = Client(provider)
    client.start_orchestration("rel-1", "Plain", 1)
    before = provider.get_queue_depths().orchestrator_queue
    os.chdir(otherdir)  # e.g. a daemonizing library, a test helper, a subprocess wrapper
    seen: list[Any] = []

    def read() -> None:
        try:
            seen.append(["ok", provider.get_queue_depths().orchestrator_queue,
                         client.get_status("rel-1").status])
        except Exception as exc:  # noqa: BLE001 - reported to the test
            seen.append(["error", f"{type(exc).__name__}: {exc}", None])

    t = threading.Thread(target=read)
    t.start()
    t.join()
    provider.close()
    _write_json(out, {"before": before, "thread": seen[0], "otherdir": sorted(os.listdir(otherdir))})
    return 0


# --- open mode ---------------------------------------------------------------------------------


def open_main(argv: list[str]) -> int:
    path, out = argv
    from duroxide_sim import SqliteProvider

    t0 = time.monotonic()
    try:
        provider = SqliteProvider.open(path)
    except Exception as exc:  # noqa: BLE001 - reported to the test
        _write_json(out, {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                          "retryable": getattr(exc, "retryable", None), "seconds": time.monotonic() - t0})
        return 0
    provider.close()
    _write_json(out, {"ok": True, "error": None, "retryable": None, "seconds": time.monotonic() - t0})
    return 0


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"worker": worker_main, "client": client_main, "chdir-open": chdir_open_main,
              "open": open_main}[mode](rest))
