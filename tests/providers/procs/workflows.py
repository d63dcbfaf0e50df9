"""Deterministic workflows (and their fault-free outputs) run by the multi-process SQLite tests.

Shared by the worker processes (``worker.py`` registers them) and the tests (which compute the
expected outputs with the ``expected_*`` functions below: plain arithmetic, no runtime).

Activities are idempotent: the pure ones compute from their input; ``Record`` writes
``INSERT OR IGNORE`` into ``side_effects`` of the same database file through its own
``sqlite3`` connection and returns the stored value, so re-running it after a crash changes
nothing. Every activity execution is also appended to ``activity_runs`` (plain INSERT) so the
tests can count re-executions.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from typing import Any

SIDE_DDL = (
    "CREATE TABLE IF NOT EXISTS side_effects (instance_id TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, "
    "PRIMARY KEY (instance_id, key))",
    "CREATE TABLE IF NOT EXISTS activity_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, instance_id TEXT NOT NULL, "
    "execution_id INTEGER NOT NULL, activity_id INTEGER NOT NULL, name TEXT NOT NULL, pid INTEGER NOT NULL)",
)


def create_side_tables(db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None, timeout=60)
    try:
        for ddl in SIDE_DDL:
            conn.execute(ddl)
    finally:
        conn.close()


# --- pure helpers shared by workflows and expectations -------------------------------------------


def timer_ms(n: int) -> int:
    """A short durable timer, 20..200 ms, fixed per input."""
    return 20 + (n * 37) % 181


def square(n: int) -> int:
    return n * n


def add_one(n: int) -> int:
    return n + 1


def double(n: int) -> int:
    return 2 * n


def combine(values: list[int]) -> int:
    return sum(values) * 3 + 1


# --- crash test workflow -------------------------------------------------------------------------


def crash_child(ctx: Any, n: int) -> Any:
    yield ctx.schedule_timer(timer_ms(n + 7))
    d = yield ctx.schedule_activity("Double", n)
    r = yield ctx.schedule_activity("Record", {"key": "child", "value": d})
    return d + r


def crash_parent(ctx: Any, n: int) -> Any:
    sq = yield ctx.schedule_activity("Square", n)
    yield ctx.schedule_timer(timer_ms(n))
    pair = yield ctx.all([ctx.schedule_activity("AddOne", sq), ctx.schedule_activity("Record", {"key": "sq", "value": sq})])
    child = yield ctx.schedule_sub_orchestration("CrashChild", n)
    total = yield ctx.schedule_activity("Combine", [pair[0]["ok"], pair[1]["ok"], child])
    return {"n": n, "sq": sq, "plus": pair[0]["ok"], "rec": pair[1]["ok"], "child": child, "total": total}


def expected_crash_child(n: int) -> int:
    return double(n) * 2


def expected_crash_parent(n: int) -> dict[str, int]:
    sq = square(n)
    child = expected_crash_child(n)
    return {"n": n, "sq": sq, "plus": sq + 1, "rec": sq, "child": child, "total": combine([sq + 1, sq, child])}


def expected_side_effects(instance: str, n: int) -> dict[tuple[str, str], int]:
    """Rows of ``side_effects`` one crash-test parent (and its child, scheduled as event 10) leave behind."""
    return {(instance, "sq"): square(n), (f"{instance}::sub::10", "child"): double(n)}


# --- concurrency test workflow -------------------------------------------------------------------


def conc_child(ctx: Any, n: int) -> Any:
    d = yield ctx.schedule_activity("Double", n)
    yield ctx.schedule_timer(5)
    return d + 1


def conc_parent(ctx: Any, n: int) -> Any:
    a = yield ctx.schedule_activity("Square", n)
    b = yield ctx.schedule_activity("AddOne", a)
    yield ctx.schedule_timer(10 + n % 40)
    if n % 3 == 0:
        c = yield ctx.schedule_sub_orchestration("ConcChild", n)
    else:
        c = yield ctx.schedule_activity("Double", n)
    return [n, a, b, c]


def expected_conc_parent(n: int) -> list[int]:
    a = square(n)
    c = double(n) + 1 if n % 3 == 0 else double(n)
    return [n, a, a + 1, c]


# --- registration ------------------------------------------------------------------------------


def register(runtime: Any, db_path: str, activity_ms: int = 0) -> None:
    """Register every workflow and activity on ``runtime``; ``Record`` writes to ``db_path``.
    The pure activities take ``activity_ms`` each (a sleep), so kills can land mid-activity."""
    local = threading.local()
    pid = os.getpid()

    def side_conn() -> sqlite3.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(db_path, isolation_level=None, timeout=60)
            local.conn = conn
        return conn

    def log_run(ctx: Any, conn: sqlite3.Connection | None = None) -> None:
        (conn or side_conn()).execute(
            "INSERT INTO activity_runs (instance_id, execution_id, activity_id, name, pid) VALUES (?, ?, ?, ?, ?)",
            (ctx.instance_id, ctx.execution_id, ctx.activity_id, ctx.activity_name, pid))

    def pure(fn: Any) -> Any:
        def activity(ctx: Any, x: Any) -> Any:
            log_run(ctx)
            if activity_ms:
                time.sleep(activity_ms / 1000)
            return fn(x)
        return activity

    def record(ctx: Any, arg: dict[str, Any]) -> int:
        conn = side_conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            log_run(ctx, conn)
            conn.execute("INSERT OR IGNORE INTO side_effects (instance_id, key, value) VALUES (?, ?, ?)",
                         (ctx.instance_id, arg["key"], arg["value"]))
            value = conn.execute("SELECT value FROM side_effects WHERE instance_id = ? AND key = ?",
                                 (ctx.instance_id, arg["key"])).fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return value

    runtime.register_activity("Square", pure(square))
    runtime.register_activity("AddOne", pure(add_one))
    runtime.register_activity("Double", pure(double))
    runtime.register_activity("Combine", pure(combine))
    runtime.register_activity("Record", record)
    runtime.register_orchestration("CrashParent", crash_parent)
    runtime.register_orchestration("CrashChild", crash_child)
    runtime.register_orchestration("ConcParent", conc_parent)
    runtime.register_orchestration("ConcChild", conc_child)
