"""The deterministic workflow vocabulary of ``test_generated_sqlite_production.py`` and its
model (``expected``: plain arithmetic, no runtime).

Every workflow takes a plain JSON dict. Activities are pure functions of their input except
``Flaky``, which fails while a per-(instance, key) counter in a side SQLite file (``EFFECTS``)
is at most ``fails``: re-executions after a SIGKILL only raise the counter, so with
``fails < max_attempts`` the orchestration's outcome does not depend on where kills land.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any

RETRY = {"max_attempts": 3, "backoff": "linear"}  # 100 ms, 200 ms between attempts
BOOM_TEXT = "Activity 'Boom' call failed: ValueError: boom"


def add(v: int, i: int) -> int:
    return (v * 3 + i + 1) % 100_003


def chain_value(n: int, k: int) -> int:
    v = n
    for i in range(k):
        v = add(v, i)
    return v


def fan_value(n: int, k: int) -> int:
    return sum(add(n, i) for i in range(k))


def expected(spec: dict[str, Any]) -> tuple[str, Any]:
    """("Completed", output) | ("Failed", text the error must contain) for a spec whose
    outcome does not depend on timing (a 'blocked' instance's outcome is the test's cancel)."""
    kind, n = spec["kind"], spec["n"]
    if kind == "chain":
        return "Completed", chain_value(n, spec["k"])
    if kind == "fan":
        return "Completed", fan_value(n, spec["k"])
    if kind == "timer":
        return "Completed", add(n, 0)
    if kind == "parent":
        return "Completed", sum(chain_value(n + j, 2) for j in range(spec["kids"]))
    if kind == "loop":
        acc = 0
        for i in range(spec["execs"]):
            acc += add(n, i)
        return "Completed", {"acc": acc, "i": spec["execs"]}
    if kind == "flaky":
        if spec["boom"]:
            return "Failed", BOOM_TEXT
        return "Completed", {"ok": add(n, 7)}
    if kind == "event":
        return "Completed", {"got": f"go-{n}"}
    if kind == "race":
        return "Completed", {"index": 0, "value": f"go-{n}"}
    if kind == "mailbox":
        raise ValueError("mailbox outcome depends on what was enqueued: judged by the test")
    raise ValueError(kind)


# --- orchestrations -----------------------------------------------------------------------------


def chain(ctx: Any, inp: dict) -> Any:
    v = inp["n"]
    for i in range(inp["k"]):
        v = yield ctx.schedule_activity("Add", {"v": v, "i": i})
        ctx.set_kv_value("last", str(v))
    return v


def fan(ctx: Any, inp: dict) -> Any:
    res = yield ctx.all([ctx.schedule_activity("Add", {"v": inp["n"], "i": i}) for i in range(inp["k"])])
    return sum(r["ok"] for r in res)


def timer(ctx: Any, inp: dict) -> Any:
    yield ctx.schedule_timer(inp["ms"])
    return (yield ctx.schedule_activity("Add", {"v": inp["n"], "i": 0}))


def parent(ctx: Any, inp: dict) -> Any:
    if inp.get("seq"):
        total = 0
        for j in range(inp["kids"]):
            total += yield ctx.schedule_sub_orchestration("Chain", {"n": inp["n"] + j, "k": 2})
        return total
    res = yield ctx.all([ctx.schedule_sub_orchestration("Chain", {"n": inp["n"] + j, "k": 2})
                         for j in range(inp["kids"])])
    return sum(r["ok"] for r in res)


def loop(ctx: Any, inp: dict) -> Any:
    i, acc = inp.get("i", 0), inp.get("acc", 0)
    v = yield ctx.schedule_activity("Add", {"v": inp["n"], "i": i})
    acc += v
    ctx.set_kv_value(f"e{i}", str(v))
    if i + 1 < inp["execs"]:
        yield ctx.continue_as_new({"n": inp["n"], "execs": inp["execs"], "i": i + 1, "acc": acc})
    return {"acc": acc, "i": i + 1}


def flaky(ctx: Any, inp: dict) -> Any:
    if inp["boom"]:
        yield ctx.schedule_activity_with_retry("Boom", inp["n"], RETRY)  # raises: the orchestration fails
    v = yield ctx.schedule_activity_with_retry("Flaky", {"n": inp["n"], "fails": inp["fails"]}, RETRY)
    return {"ok": v}


def event(ctx: Any, inp: dict) -> Any:
    ctx.set_kv_value("ready", "1")  # committed in the same turn as the subscription below
    data = yield ctx.wait_for_event("go")
    return {"got": data}


def mailbox(ctx: Any, inp: dict) -> Any:
    """Dequeues ``box`` until ``stop``; with ``can_every`` > 0 continues as new after every
    ``can_every`` messages (what is still buffered is carried forward: SPEC §6.2)."""
    items: list = list(inp.get("items", []))
    got = 0
    while True:
        msg = yield ctx.dequeue_event("box")
        if msg == "stop":
            return {"sum": sum(m[2] for m in items), "items": items}
        items.append(msg)
        got += 1
        if inp.get("can_every") and got == inp["can_every"]:
            yield ctx.continue_as_new({"n": inp["n"], "can_every": inp["can_every"], "items": items})


def race(ctx: Any, inp: dict) -> Any:
    """An event against an activity no worker serves (tag ``nobody``): the event wins, the
    activity is cancelled as the race's loser (its worker row deleted: SPEC §4, §3.10)."""
    ctx.set_kv_value("ready", "1")
    res = yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_activity("Add", {"v": 0, "i": 0}).with_tag("nobody"))
    return res


def blocked(ctx: Any, inp: dict) -> Any:
    if inp.get("kid"):
        yield ctx.schedule_sub_orchestration_with_id("Blocked", f"{ctx.instance_id}-kid", {"n": inp["n"]})
    ctx.set_kv_value("ready", "1")
    yield ctx.wait_for_event("never")
    return "unreachable"


ORCHESTRATIONS = {"Chain": chain, "Fan": fan, "Timer": timer, "Parent": parent, "Loop": loop, "Flaky": flaky,
                  "Event": event, "Mailbox": mailbox, "Blocked": blocked, "Race": race}
NAME = {"chain": "Chain", "fan": "Fan", "timer": "Timer", "parent": "Parent", "loop": "Loop", "flaky": "Flaky",
        "event": "Event", "mailbox": "Mailbox", "blocked": "Blocked", "race": "Race"}


def register(runtime: Any, effects_path: str, act_ms: int = 0) -> None:
    """Register the vocabulary; ``Add`` takes ``act_ms`` (a sleep), so kills land mid-activity."""
    local = threading.local()

    def conn() -> sqlite3.Connection:
        c = getattr(local, "conn", None)
        if c is None:
            c = local.conn = sqlite3.connect(effects_path, isolation_level=None, timeout=60)
        return c

    def add_act(ctx: Any, arg: dict) -> int:
        if act_ms:
            time.sleep(act_ms / 1000)
        return add(arg["v"], arg["i"])

    def boom(ctx: Any, n: int) -> int:
        raise ValueError("boom")

    def flaky_act(ctx: Any, arg: dict) -> int:
        c = conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute("INSERT INTO counts (instance_id, n) VALUES (?, 1) "
                      "ON CONFLICT (instance_id) DO UPDATE SET n = n + 1", (ctx.instance_id,))
            count = c.execute("SELECT n FROM counts WHERE instance_id = ?", (ctx.instance_id,)).fetchone()[0]
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        if count <= arg["fails"]:
            raise ValueError(f"flaky {count}")
        return add(arg["n"], 7)

    runtime.register_activity("Add", add_act)
    runtime.register_activity("Boom", boom)
    runtime.register_activity("Flaky", flaky_act)
    for name, fn in ORCHESTRATIONS.items():
        runtime.register_orchestration(name, fn)


def create_effects_db(path: str) -> None:
    c = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        c.execute("PRAGMA journal_mode = WAL")
        c.execute("CREATE TABLE IF NOT EXISTS counts (instance_id TEXT PRIMARY KEY, n INTEGER NOT NULL)")
    finally:
        c.close()
