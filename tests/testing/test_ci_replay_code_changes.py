"""A user's CI journey with ``duroxide-sim replay``, end to end, on real production recordings.

1. A v1 workflow module (saga with compensation, fan-out/fan-in, a timer + external-event loop,
   parent/child sub-orchestration, a continue-as-new counter, an ``async def`` orchestration,
   an attrs-typed orchestration, a broadcast loop) is written into tmp_path.
2. A "production" process (a subprocess: its own PYTHONHASHSEED, a real ``Runtime`` with its
   real-time dispatcher threads on a ``SqliteProvider`` file) runs it: some instances complete,
   some are left waiting on an external event, a long timer, or an event after a continue-as-new.
3. v2 modules with ONE change each are replayed against that database the way the README says
   (``duroxide-sim replay app.db --app path.py:register``, as a subprocess; and the Python API
   ``duroxide_sim.testing.replay.replay_source``).

README (replay): exit 0 clean, 1 divergences, 2 bad input; every divergence names what differs
and the source line of the code's side; the replay runs under the sandbox, so a ``time.time()``,
``random``, ``uuid4`` or I/O call in orchestration code is reported with its line even where the
history still replays. Product promise: "point at the exact ``yield`` that diverged; catch
``time.time()``, ``random``, ``uuid4`` and set-order dependence inside orchestrations".

Markers: each v2 change puts ``# DIVERGE`` on the line the report must name.

Found by this file and fixed (each test failed before): a completed instance whose code now
returns before a recorded step (a removed final step, a shorter loop, the same output) replayed
cleanly; a changed output, and a ``return ctx.continue_as_new(...)`` with another input, were
reported without a source line (now the ``return``'s); ``os.environ``/``os.getenv`` in
orchestration code was not flagged by the sandbox; set-order dependence passed when CI's hash seed
iterated the set as production had (the CLI now replays again under another hash seed).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest

from duroxide_sim.testing.replay import load_app, replay_source

REPO = pathlib.Path(__file__).resolve().parents[2]
REC_HASH_SEED = 11  # PYTHONHASHSEED of the recording "production" process
CHANNELS = ("email", "sms", "push", "slack")

# --------------------------------------------------------------------------------------------
# v1: the code that ran in production
# --------------------------------------------------------------------------------------------

V1 = '''\
"""Shop workflows, v1."""
from __future__ import annotations

import datetime
import logging
import os
import random
import secrets
import time
import uuid

import attrs

log = logging.getLogger("shop.workflows")


@attrs.frozen
class Order:
    order_id: str
    amount: int
    items: list[str]


@attrs.frozen
class Quote:
    order_id: str
    total: int


def register(rt):
    @rt.register_activity("Reserve")
    def reserve(ctx, order):
        return f"res-{order['order_id']}"

    @rt.register_activity("Charge")
    def charge(ctx, req):
        if req["amount"] > 1000:  # CHARGE-LIMIT
            raise ValueError("card declined")
        return f"ch-{req['order_id']}"

    @rt.register_activity("Release")
    def release(ctx, reservation):
        return f"released {reservation}"

    @rt.register_activity("Ship")
    def ship(ctx, order):
        return f"ship-{order['order_id']}"

    @rt.register_activity("Notify")
    def notify(ctx, msg):
        return f"sent {msg}"

    @rt.register_activity("Price")
    def price(ctx, item):
        return len(item) * 10

    @rt.register_activity("Audit")
    def audit(ctx, total):
        return total

    @rt.register_activity("Poll")
    def poll(ctx, i):
        return {"tick": i}

    @rt.register_activity("Double")
    def double(ctx, x):
        return x * 2

    @rt.register_activity("Tick")
    def tick(ctx, n):
        return n + 1

    @rt.register_activity_typed("QuoteOrder")
    def quote_order(ctx, order: Order) -> Quote:
        return Quote(order.order_id, order.amount + 5)

    # ---- saga with compensation ----
    @rt.register_orchestration("Saga")
    def saga(ctx, order):
        reservation = yield ctx.schedule_activity("Reserve", order)  # SAGA-RESERVE
        try:
            charge_id = yield ctx.schedule_activity(  # SAGA-CHARGE
                "Charge", {"order_id": order["order_id"], "amount": order["amount"]},
            )
        except Exception as exc:
            yield ctx.schedule_activity("Release", reservation)  # SAGA-RELEASE
            return {"status": "compensated", "error": "declined" in str(exc)}
        shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP
        yield ctx.schedule_activity("Notify", f"order {order['order_id']} shipped")  # SAGA-NOTIFY
        return {"status": "done", "charge": charge_id, "shipment": shipment}  # SAGA-RETURN

    # ---- fan-out / fan-in ----
    @rt.register_orchestration("FanOut")
    def fan_out(ctx, items):
        results = yield ctx.all([ctx.schedule_activity("Price", item) for item in items])  # FAN-ALL
        total = sum(r["ok"] for r in results)  # FAN-SUM
        yield ctx.schedule_activity("Audit", total)  # FAN-AUDIT
        return total

    # ---- loop with timers, then an external event ----
    @rt.register_orchestration("Monitor")
    def monitor(ctx, cfg):
        readings = []
        for i in range(cfg["checks"]):  # MON-LOOP
            yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER
            readings.append((yield ctx.schedule_activity("Poll", i)))  # MON-POLL
        decision = yield ctx.wait_for_event("approve")  # MON-WAIT
        yield ctx.schedule_activity("Notify", f"approved by {decision['by']}")  # MON-NOTIFY
        return {"readings": len(readings), "by": decision["by"]}

    # ---- parent / child ----
    @rt.register_orchestration("Child")
    def child(ctx, x):
        return (yield ctx.schedule_activity("Double", x))  # CHILD-DOUBLE

    @rt.register_orchestration("Parent")
    def parent(ctx, x):
        doubled = yield ctx.schedule_sub_orchestration("Child", x)  # PARENT-SUB
        for i in range(3):  # PARENT-LOOP
            yield ctx.schedule_activity("Notify", f"reminder {i} for {doubled}")  # PARENT-NOTIFY
        return doubled  # PARENT-RETURN

    # ---- continue-as-new loop ----
    @rt.register_orchestration("Counter")
    def counter(ctx, state):
        n = yield ctx.schedule_activity("Tick", state["n"])  # CTR-TICK
        if n < state["limit"]:
            return ctx.continue_as_new({"n": n, "limit": state["limit"], "wait": state.get("wait", False)})  # CTR-CAN
        if state.get("wait"):
            yield ctx.wait_for_event("stop")  # CTR-WAIT
        return n

    # ---- async def ----
    @rt.register_orchestration("Reminder")
    async def reminder(ctx, req):
        await ctx.schedule_activity("Notify", f"hello {req['who']}")  # REM-HELLO
        await ctx.schedule_timer(req["delay_ms"])  # REM-TIMER
        await ctx.schedule_activity("Notify", f"reminder for {req['who']}")  # REM-REMIND
        return req["who"]

    # ---- typed (attrs) input ----
    @rt.register_orchestration_typed("Checkout")
    async def checkout(ctx, order: Order):
        quote = await ctx.schedule_activity_typed("QuoteOrder", order, Quote)  # CHK-QUOTE
        await ctx.schedule_activity("Notify", f"quote {quote.total}")  # CHK-NOTIFY
        return {"order_id": quote.order_id, "total": quote.total}

    # ---- broadcast over channels ----
    @rt.register_orchestration("Broadcast")
    def broadcast(ctx, msg):
        sent = []
        for channel in __CHANNELS__:  # BCAST-LOOP
            sent.append((yield ctx.schedule_activity("Notify", f"{channel}:{msg}")))  # BCAST-SEND
        return sent
'''

# --------------------------------------------------------------------------------------------
# The production process
# --------------------------------------------------------------------------------------------

RECORDER = '''\
import json, sys, time
from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.testing.replay import load_app

db, ref = sys.argv[1], sys.argv[2]
provider = SqliteProvider.open(db)
rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
load_app(ref)(rt)
rt.start()
client = Client(provider)
starts = [
    ("saga-ok", "Saga", {"order_id": "A1", "amount": 100, "items": ["pen"]}),
    ("saga-comp", "Saga", {"order_id": "A2", "amount": 5000, "items": ["car"]}),
    ("fan-1", "FanOut", ["apple", "kiwi", "banana"]),
    ("mon-done", "Monitor", {"checks": 3, "interval_ms": 20}),
    ("mon-wait", "Monitor", {"checks": 2, "interval_ms": 20}),
    ("parent-1", "Parent", 21),
    ("ctr-done", "Counter", {"n": 0, "limit": 3}),
    ("ctr-wait", "Counter", {"n": 0, "limit": 2, "wait": True}),
    ("rem-wait", "Reminder", {"who": "ann", "delay_ms": 3600000}),
    ("chk-1", "Checkout", {"order_id": "C1", "amount": 40, "items": ["pen", "ink"]}),
    ("bcast-1", "Broadcast", "sale"),
]
for inst, name, inp in starts:
    client.start_orchestration(inst, name, inp)


def reached(inst, kind, execution=None, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = client.read_history_events(inst, execution)
        if any(type(e).__name__ == kind for e in events):
            return
        time.sleep(0.01)
    raise SystemExit(f"{inst} never reached {kind}")


reached("mon-done", "ExternalSubscribed")
client.raise_event("mon-done", "approve", {"by": "bob"})
out = {}
for inst in ("saga-ok", "saga-comp", "fan-1", "mon-done", "parent-1", "ctr-done", "chk-1", "bcast-1"):
    st = client.wait_for_orchestration(inst, 30000)
    out[inst] = [st.status, st.output, st.error]
reached("mon-wait", "ExternalSubscribed")
reached("ctr-wait", "ExternalSubscribed", 2)
reached("rem-wait", "TimerCreated")
time.sleep(0.1)
for inst in ("mon-wait", "ctr-wait", "rem-wait"):
    st = client.get_status(inst)
    out[inst] = [st.status, st.output, st.error]
rt.shutdown(2000)
provider.close()
print(json.dumps(out))
'''


def _env(hash_seed: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _set_order(hash_seed: int) -> list[str]:
    code = f"import json; print(json.dumps(list({set(CHANNELS)!r})))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(hash_seed), timeout=30)
    return json.loads(proc.stdout)


class Recording:
    def __init__(self, root: pathlib.Path, db: pathlib.Path, v1: pathlib.Path, v1_text: str,
                 statuses: dict, other_seed: int, order: list[str]) -> None:
        self.order = order
        self.root, self.db, self.v1, self.v1_text = root, db, v1, v1_text
        self.statuses, self.other_seed = statuses, other_seed
        self._n = 0

    def v2(self, name: str, changes: list[tuple[str, str]]) -> tuple[pathlib.Path, str]:
        text = self.v1_text
        listed = json.dumps(self.order)
        for old, new in changes:
            old, new = old.replace("__LIST__", listed), new.replace("__LIST__", listed)
            assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times in v1"
            text = text.replace(old, new)
        assert text != self.v1_text
        self._n += 1
        path = self.root / f"ci_{self._n:02d}_{name}" / "workflows.py"
        path.parent.mkdir(parents=True)
        path.write_text(text)
        return path, text


@pytest.fixture(scope="module")
def rec(tmp_path_factory: pytest.TempPathFactory) -> Recording:
    root = tmp_path_factory.mktemp("ci_replay")
    order = _set_order(REC_HASH_SEED)
    # a hash seed under which the same set iterates in another order (CI's own process)
    other_seed = next(s for s in range(REC_HASH_SEED + 1, REC_HASH_SEED + 40) if _set_order(s) != order)
    v1_text = V1.replace("__CHANNELS__", json.dumps(order))  # v1 iterates a list, in that order
    v1 = root / "prod" / "workflows.py"
    v1.parent.mkdir()
    v1.write_text(v1_text)
    (root / "record.py").write_text(RECORDER)
    db = root / "prod.db"
    proc = subprocess.run([sys.executable, str(root / "record.py"), str(db), f"{v1}:register"],
                          capture_output=True, text=True, env=_env(REC_HASH_SEED), cwd=root, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    statuses = json.loads(proc.stdout.strip().splitlines()[-1])
    return Recording(root, db, v1, v1_text, statuses, other_seed, order)


def _cli_replay(rec: Recording, app: pathlib.Path, *extra: str, hash_seed: int = REC_HASH_SEED,
                json_out: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "duroxide_sim", "replay", str(rec.db), "--app", f"{app}:register", *extra]
    if json_out:
        args.append("--json")
    return subprocess.run(args, capture_output=True, text=True, env=_env(hash_seed), cwd=rec.root, timeout=60)


def _line_of(text: str, marker: str) -> int:
    hits = [i for i, t in enumerate(text.splitlines(), 1) if marker in t]
    assert len(hits) == 1, (marker, hits)
    return hits[0]


def _report_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("  ")]


# --------------------------------------------------------------------------------------------
# 0. the recording itself, and v1 against v1
# --------------------------------------------------------------------------------------------


def test_production_recording_has_completed_and_waiting_instances(rec: Recording) -> None:
    s = rec.statuses
    assert s["saga-ok"][:2] == ["Completed", {"status": "done", "charge": "ch-A1", "shipment": "ship-A1"}]
    assert s["saga-comp"][:2] == ["Completed", {"status": "compensated", "error": True}]
    assert s["fan-1"][:2] == ["Completed", 150]
    assert s["mon-done"][:2] == ["Completed", {"readings": 3, "by": "bob"}]
    assert s["parent-1"][:2] == ["Completed", 42]
    assert s["ctr-done"][:2] == ["Completed", 3]
    assert s["chk-1"][:2] == ["Completed", {"order_id": "C1", "total": 45}]
    assert s["bcast-1"][0] == "Completed"
    for inst in ("mon-wait", "ctr-wait", "rem-wait"):
        assert s[inst][0] == "Running", (inst, s[inst])


def test_unchanged_v1_replays_cleanly_cli_and_api(rec: Recording) -> None:
    proc = _cli_replay(rec, rec.v1)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every history replays cleanly" in proc.stdout
    assert replay_source(str(rec.db), load_app(f"{rec.v1}:register")) == []
    # CI runs in its own process, under whatever hash seed: v1 itself has no set dependence
    other = _cli_replay(rec, rec.v1, hash_seed=rec.other_seed)
    assert other.returncode == 0, other.stdout + other.stderr


# --------------------------------------------------------------------------------------------
# 1. changes that MUST be reported, at the exact line of the diverging yield/await
# --------------------------------------------------------------------------------------------

# (case: the v2 changes, the instances whose report line must name the ``# DIVERGE`` line)
# Removed steps / fewer iterations in a COMPLETED instance: the runtime's engine stops walking
# the history once the code returns (SPEC §3.4), but the CI checker promises more:
# core/verify.py "the code must match every recorded schedule", README "names for every
# divergence what differs and the source line of the code's side". The code's side of a
# shortened run is the ``return`` that now ends it where the history has further steps; for a
# changed continue-as-new, the ``continue_as_new`` line (verify: "the yield ... of the
# continue-as-new").
MUST_REPORT: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "reorder_two_activities": ([
        ('        shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP\n'
         '        yield ctx.schedule_activity("Notify", f"order {order[\'order_id\']} shipped")  # SAGA-NOTIFY\n',
         '        yield ctx.schedule_activity("Notify", f"order {order[\'order_id\']} shipped")  # DIVERGE\n'
         '        shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP\n'),
    ], ["saga-ok"]),
    "rename_activity": ([
        ('yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP', 'yield ctx.schedule_activity("Dispatch", order)  # DIVERGE'),
        ('    @rt.register_activity("Ship")', '    @rt.register_activity("Dispatch")'),
    ], ["saga-ok"]),
    "rename_activity_in_async_in_flight": ([
        ('await ctx.schedule_activity("Notify", f"hello {req[\'who\']}")  # REM-HELLO',
         'await ctx.schedule_activity("Greet", f"hello {req[\'who\']}")  # DIVERGE'),
    ], ["rem-wait"]),
    "change_activity_input_multiline_yield": ([
        ('charge_id = yield ctx.schedule_activity(  # SAGA-CHARGE\n'
         '                "Charge", {"order_id": order["order_id"], "amount": order["amount"]},',
         'charge_id = yield ctx.schedule_activity(  # DIVERGE\n'
         '                "Charge", {"order_id": order["order_id"], "amount": order["amount"] * 100},'),
    ], ["saga-ok", "saga-comp"]),
    "change_typed_attrs_input": ([
        ('await ctx.schedule_activity_typed("QuoteOrder", order, Quote)  # CHK-QUOTE',
         'await ctx.schedule_activity_typed("QuoteOrder", attrs.evolve(order, amount=order.amount + 1), Quote)  # DIVERGE'),
    ], ["chk-1"]),
    "insert_timer_before_activity": ([
        ('        shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP\n',
         '        yield ctx.schedule_timer(1000)  # DIVERGE\n'
         '        shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP\n'),
    ], ["saga-ok"]),
    "remove_step_in_completed_instance": ([
        # the Notify step is gone: the code now returns where the history has Notify scheduled
        ('        yield ctx.schedule_activity("Notify", f"order {order[\'order_id\']} shipped")  # SAGA-NOTIFY\n'
         '        return {"status": "done", "charge": charge_id, "shipment": shipment}  # SAGA-RETURN\n',
         '        return {"status": "done", "charge": charge_id, "shipment": shipment}  # DIVERGE\n'),
    ], ["saga-ok"]),
    "loop_count_more_completed": ([
        ('for i in range(3):  # PARENT-LOOP', 'for i in range(4):  # PARENT-LOOP'),
        ('yield ctx.schedule_activity("Notify", f"reminder {i} for {doubled}")  # PARENT-NOTIFY',
         'yield ctx.schedule_activity("Notify", f"reminder {i} for {doubled}")  # DIVERGE'),
    ], ["parent-1"]),
    "loop_count_fewer_completed": ([
        ('for i in range(3):  # PARENT-LOOP', 'for i in range(2):  # PARENT-LOOP'),
        ('return doubled  # PARENT-RETURN', 'return doubled  # DIVERGE'),
    ], ["parent-1"]),
    "loop_count_more_before_wait": ([
        ('for i in range(cfg["checks"]):  # MON-LOOP', 'for i in range(cfg["checks"] + 1):  # MON-LOOP'),
        ('yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER', 'yield ctx.schedule_timer(cfg["interval_ms"])  # DIVERGE'),
    ], ["mon-done", "mon-wait"]),
    "insert_timer_in_async_in_flight": ([
        ('        await ctx.schedule_activity("Notify", f"hello {req[\'who\']}")  # REM-HELLO\n',
         '        await ctx.schedule_timer(50)  # DIVERGE\n'
         '        await ctx.schedule_activity("Notify", f"hello {req[\'who\']}")  # REM-HELLO\n'),
    ], ["rem-wait"]),
    "loop_count_fewer_completed_output_changes": ([
        ('for channel in __LIST__:  # BCAST-LOOP', 'for channel in __LIST__[:3]:  # BCAST-LOOP'),
        ('        return sent\n', '        return sent  # DIVERGE\n'),
    ], ["bcast-1"]),
    "child_orchestration_changed": ([
        ('return (yield ctx.schedule_activity("Double", x))  # CHILD-DOUBLE',
         'return (yield ctx.schedule_activity("Double", x + 1))  # DIVERGE'),
    ], ["parent-1::sub::"]),
    "add_retry_policy_to_a_step_that_failed": ([
        ('charge_id = yield ctx.schedule_activity(  # SAGA-CHARGE\n'
         '                "Charge", {"order_id": order["order_id"], "amount": order["amount"]},\n',
         'charge_id = yield ctx.schedule_activity_with_retry(  # DIVERGE\n'
         '                "Charge", {"order_id": order["order_id"], "amount": order["amount"]},\n'
         '                {"max_attempts": 3, "backoff": "fixed"},\n'),
    ], ["saga-comp"]),
    "remove_step_in_running_instance": ([
        ('            readings.append((yield ctx.schedule_activity("Poll", i)))  # MON-POLL\n', ''),
        ('yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER', 'yield ctx.schedule_timer(cfg["interval_ms"])  # DIVERGE'),
    ], ["mon-done", "mon-wait"]),
    "change_continue_as_new_input": ([
        ('return ctx.continue_as_new({"n": n, "limit": state["limit"], "wait": state.get("wait", False)})  # CTR-CAN',
         'return ctx.continue_as_new({"n": n, "limit": state["limit"], "wait": state.get("wait", False), "v": 2})  # DIVERGE'),
    ], ["ctr-done", "ctr-wait"]),
    "switch_all_order": ([
        ('for item in items])  # FAN-ALL', 'for item in reversed(items)])  # DIVERGE'),
    ], ["fan-1"]),
    "continue_as_new_later_execution_input": ([
        ('n = yield ctx.schedule_activity("Tick", state["n"])  # CTR-TICK',
         'n = yield ctx.schedule_activity("Tick", state["n"] if state["n"] == 0 else -state["n"])  # DIVERGE'),
    ], ["ctr-done", "ctr-wait"]),
}


@pytest.mark.parametrize("case", list(MUST_REPORT))
def test_incompatible_change_is_reported_at_its_line(rec: Recording, case: str) -> None:
    changes, instances = MUST_REPORT[case]
    app, text = rec.v2(case, changes)
    line = _line_of(text, "# DIVERGE")
    site = f"{app}:{line}"
    # Python API
    divergences = replay_source(str(rec.db), load_app(f"{app}:register"))
    rendered = [d.render() for d in divergences]
    for inst in instances:
        mine = [r for r in rendered if r.startswith(inst if inst.endswith("::") else f"{inst} (")]
        assert mine, f"{case}: no divergence reported for {inst}: {rendered}"
        assert any(site in r for r in mine), f"{case}: {inst} not reported at {site}: {mine}"
    # CLI, as the README documents it
    proc = _cli_replay(rec, app)
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    lines = _report_lines(proc)
    for inst in instances:
        assert any(ln.startswith(inst if inst.endswith("::") else f"{inst} (") and site in ln for ln in lines), (
            inst, site, proc.stdout)


NONDETERMINISTIC_CALLS: dict[str, tuple[tuple[str, str], list[str], str]] = {
    "time.time()": (
        ('shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP',
         'shipment = yield ctx.schedule_activity("Ship" if time.time() > 0 else "ShipLater", order)  # DIVERGE'),
        ["saga-ok"], "time.time()"),
    "random.random()": (
        ('total = sum(r["ok"] for r in results)  # FAN-SUM',
         'total = sum(r["ok"] for r in results) if random.random() < 2 else 0  # DIVERGE'),
        ["fan-1"], "random.random()"),
    "uuid.uuid4()": (
        ('for i in range(3):  # PARENT-LOOP', 'for i in range(3 if uuid.uuid4().int >= 0 else 1):  # DIVERGE'),
        ["parent-1"], "uuid.uuid4()"),
    "datetime.now()": (
        ('for i in range(cfg["checks"]):  # MON-LOOP',
         'for i in range(cfg["checks"] if datetime.datetime.now().year > 2000 else 0):  # DIVERGE'),
        ["mon-done", "mon-wait"], "datetime.now()"),
    "os.urandom()": (
        ('if n < state["limit"]:', 'if n < state["limit"] and len(os.urandom(2)) == 2:  # DIVERGE'),
        ["ctr-done", "ctr-wait"], "os.urandom()"),
    "secrets": (
        ('quote = await ctx.schedule_activity_typed("QuoteOrder", order, Quote)  # CHK-QUOTE',
         'quote = await ctx.schedule_activity_typed("QuoteOrder", order if secrets.token_hex(4) else None, Quote)  # DIVERGE'),
        ["chk-1"], ""),
    "os.environ": (
        ('await ctx.schedule_timer(req["delay_ms"])  # REM-TIMER',
         'await ctx.schedule_timer(req["delay_ms"] if os.environ.get("SHOP_FAST_REMINDERS") != "1" else 10)  # DIVERGE'),
        ["rem-wait"], "os.environ"),
}


@pytest.mark.parametrize("call", list(NONDETERMINISTIC_CALLS))
def test_nondeterministic_branch_is_reported_even_though_the_history_replays(rec: Recording, call: str) -> None:
    change, instances, label = NONDETERMINISTIC_CALLS[call]
    app, text = rec.v2("nd_" + re.sub(r"\W", "_", call), [change])
    site = f"{app}:{_line_of(text, '# DIVERGE')}"
    # the history itself still replays: no schedule mismatch without the sandbox
    quiet = replay_source(str(rec.db), load_app(f"{app}:register"), sandbox=False)
    assert quiet == [], [d.render() for d in quiet]
    divergences = replay_source(str(rec.db), load_app(f"{app}:register"))
    rendered = [d.render() for d in divergences]
    assert rendered, f"{call} in orchestration code was not reported at all"
    assert all("nondeterministic call" in r for r in rendered), rendered
    assert any(site in r and r.split(" (")[0] in instances for r in rendered), (site, rendered)
    if label:
        assert any(f"called {label}" in r for r in rendered), rendered
    proc = _cli_replay(rec, app)
    assert proc.returncode == 1, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    assert any(site in ln for ln in _report_lines(proc)), proc.stdout
    off = _cli_replay(rec, app, "--no-sandbox")
    assert off.returncode == 0, off.stdout + off.stderr  # README: --no-sandbox turns that off


def _to_set(rec: Recording) -> tuple[pathlib.Path, str]:
    return rec.v2("set_order", [("for channel in __LIST__:  # BCAST-LOOP",
                                 f"for channel in {set(CHANNELS)!r}:  # DIVERGE")])


def test_set_order_dependence_is_caught_when_ci_hash_seed_gives_another_order(rec: Recording) -> None:
    app, text = _to_set(rec)
    loop = _line_of(text, "# DIVERGE")
    proc = _cli_replay(rec, app, hash_seed=rec.other_seed)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = [ln for ln in _report_lines(proc) if ln.startswith("bcast-1 (")]
    assert lines and any(f"{app}:{loop}" in ln or f"{app}:{loop + 1}" in ln for ln in lines), proc.stdout


def test_set_order_dependence_is_caught_even_when_ci_iterates_the_set_in_the_recorded_order(rec: Recording) -> None:
    """Promise: "catch ... set-order dependence inside orchestrations". v2 iterates a set of
    strings; CI's process happens to iterate it in the recorded order, so the history replays -
    but the next production process (another hash seed) will not. Found by this file and fixed:
    the replay passed; it now replays a second time in a subprocess under another hash seed and
    reports what only that one finds, at the yield in the loop, saying why."""
    app, text = _to_set(rec)
    loop = _line_of(text, "# DIVERGE")
    proc = _cli_replay(rec, app, hash_seed=REC_HASH_SEED)
    assert proc.returncode == 1, f"set-order dependence passed CI (exit {proc.returncode}): {proc.stdout.strip()}"
    lines = [ln for ln in _report_lines(proc) if ln.startswith("bcast-1 (")]
    assert any(f"{app}:{loop}" in ln or f"{app}:{loop + 1}" in ln for ln in lines), proc.stdout
    assert any(f"PYTHONHASHSEED={REC_HASH_SEED + 1}" in ln and "set" in ln for ln in lines), proc.stdout
    off = _cli_replay(rec, app, "--no-hash-seed-check", hash_seed=REC_HASH_SEED)
    assert off.returncode == 0, off.stdout + off.stderr  # (the documented way to skip the second replay)


# --------------------------------------------------------------------------------------------
# 2. changes that MUST pass
# --------------------------------------------------------------------------------------------

SAGA_HELPER_V2 = (
    '        shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP\n'
    '        yield ctx.schedule_activity("Notify", f"order {order[\'order_id\']} shipped")  # SAGA-NOTIFY\n',
    '        shipment = yield from _fulfil(ctx, order)\n',
)
HELPER_DEF = (
    "def register(rt):\n",
    "def _fulfil(ctx, order):\n"
    "    shipment = yield ctx.schedule_activity(\"Ship\", order)\n"
    "    yield ctx.schedule_activity(\"Notify\", f\"order {order['order_id']} shipped\")\n"
    "    return shipment\n"
    "\n\n"
    "def register(rt):\n",
)

MUST_PASS: dict[str, list[tuple[str, str]]] = {
    "trace_info_and_debug_logging": [
        ('        reservation = yield ctx.schedule_activity("Reserve", order)  # SAGA-RESERVE\n',
         '        ctx.trace_info(f"saga start {order[\'order_id\']}")\n'
         '        log.debug("saga for %s", order["order_id"])\n'
         '        reservation = yield ctx.schedule_activity("Reserve", order)  # SAGA-RESERVE\n'
         '        ctx.trace_info(f"reserved {reservation}")\n'),
        ('        await ctx.schedule_timer(req["delay_ms"])  # REM-TIMER\n',
         '        ctx.trace_warn("waiting")\n'
         '        await ctx.schedule_timer(req["delay_ms"])  # REM-TIMER\n'),
    ],
    "rename_local_variables": [
        ('        reservation = yield ctx.schedule_activity("Reserve", order)  # SAGA-RESERVE\n',
         '        res_id = yield ctx.schedule_activity("Reserve", order)  # SAGA-RESERVE\n'),
        ('yield ctx.schedule_activity("Release", reservation)', 'yield ctx.schedule_activity("Release", res_id)'),
        ('results = yield ctx.all(', 'priced = yield ctx.all('),
        ('total = sum(r["ok"] for r in results)', 'total = sum(p["ok"] for p in priced)'),
    ],
    "helper_generator_yield_from": [SAGA_HELPER_V2, HELPER_DEF],
    "new_work_after_last_recorded_point_of_running_instance": [
        ('        await ctx.schedule_activity("Notify", f"reminder for {req[\'who\']}")  # REM-REMIND\n',
         '        await ctx.schedule_activity("Notify", f"reminder for {req[\'who\']}")  # REM-REMIND\n'
         '        await ctx.schedule_timer(1000)\n'
         '        await ctx.schedule_activity("Audit", 1)\n'),
    ],
    "activity_bodies_changed": [
        ('if req["amount"] > 1000:  # CHARGE-LIMIT', 'if req["amount"] > 50 or time.time() < 0:  # CHARGE-LIMIT'),
        ('return len(item) * 10', 'return random.randint(1, 9) + len(str(uuid.uuid4()))'),
    ],
    "generator_to_async_def": [
        ('    def monitor(ctx, cfg):', '    async def monitor(ctx, cfg):'),
        ('yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER', 'await ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER'),
        ('readings.append((yield ctx.schedule_activity("Poll", i)))', 'readings.append(await ctx.schedule_activity("Poll", i))'),
        ('decision = yield ctx.wait_for_event("approve")', 'decision = await ctx.wait_for_event("approve")'),
        ('yield ctx.schedule_activity("Notify", f"approved by', 'await ctx.schedule_activity("Notify", f"approved by'),
    ],
    "timer_durations_changed": [  # SPEC §3.5: a timer matches any TimerCreated (fire_at_ms from history)
        ('yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER', 'yield ctx.schedule_timer(cfg["interval_ms"] * 3)  # MON-TIMER'),
        ('await ctx.schedule_timer(req["delay_ms"])  # REM-TIMER', 'await ctx.schedule_timer(req["delay_ms"] // 2)  # REM-TIMER'),
    ],
    "new_orchestration_and_activity": [
        ('    # ---- broadcast over channels ----\n',
         '    @rt.register_activity("Refund")\n'
         '    def refund(ctx, x):\n'
         '        return x\n'
         '\n'
         '    @rt.register_orchestration("RefundFlow")\n'
         '    def refund_flow(ctx, x):\n'
         '        return (yield ctx.schedule_activity("Refund", x))\n'
         '\n'
         '    # ---- broadcast over channels ----\n'),
    ],
}


@pytest.mark.parametrize("case", list(MUST_PASS))
def test_compatible_change_passes(rec: Recording, case: str) -> None:
    app, _ = rec.v2("ok_" + case, MUST_PASS[case])
    divergences = replay_source(str(rec.db), load_app(f"{app}:register"))
    assert divergences == [], [d.render() for d in divergences]
    proc = _cli_replay(rec, app)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "every history replays cleanly" in proc.stdout


def test_logging_warning_in_orchestration_is_reported_as_logging_with_the_trace_hint(rec: Recording) -> None:
    """The sandbox (sim/sandbox.py, README: I/O) reports an emitted ``logging`` record at its line
    and says to use ctx.trace_info (a log line that is not emitted reads no clock: passes above)."""
    app, text = rec.v2("logging_warning", [(
        '        yield ctx.schedule_activity("Audit", total)  # FAN-AUDIT\n',
        '        log.warning("fan-out total %s", total)  # DIVERGE\n'
        '        yield ctx.schedule_activity("Audit", total)  # FAN-AUDIT\n')])
    site = f"{app}:{_line_of(text, '# DIVERGE')}"
    proc = _cli_replay(rec, app)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = _report_lines(proc)
    assert line.startswith("fan-1 (") and site in line and "logging" in line and "ctx.trace_info" in line, line


# --------------------------------------------------------------------------------------------
# 3. the report: readable, one line per divergence, exit codes
# --------------------------------------------------------------------------------------------


def test_report_is_one_readable_line_per_divergence_with_expected_and_actual(rec: Recording) -> None:
    app, text = rec.v2("report_reorder_and_input", [
        ('shipment = yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP',
         'shipment = yield ctx.schedule_activity("Ship", {**order, "express": True})  # DIVERGE-SHIP'),
        ('yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER',
         'yield ctx.schedule_activity("Poll", -1)  # DIVERGE-MON'),
    ])
    proc = _cli_replay(rec, app)
    assert proc.returncode == 1
    out = proc.stdout.splitlines()
    body = _report_lines(proc)
    assert re.match(r"^\d+ execution\(s\) diverge from the current code:$", out[0]), out[0]
    assert len(body) == int(out[0].split()[0]) == len(out) - 1, out
    by_inst = {ln.split(" (")[0]: ln for ln in body}
    assert set(by_inst) == {"saga-ok", "mon-done", "mon-wait"}, body
    ship = by_inst["saga-ok"]
    assert "finished" in ship and f"{app}:{_line_of(text, '# DIVERGE-SHIP')}" in ship
    assert "history has ActivityScheduled(name='Ship'" in ship and "code did CallActivity(name='Ship'" in ship
    assert "express" in ship.split("code did")[1] and "express" not in ship.split("code did")[0], ship
    for inst, state in (("mon-done", "finished"), ("mon-wait", "in-flight")):
        ln = by_inst[inst]
        assert state in ln and f"{app}:{_line_of(text, '# DIVERGE-MON')}" in ln, ln
        assert "history has TimerCreated" in ln and "code did CallActivity(name='Poll'" in ln, ln
    js = _cli_replay(rec, app, json_out=True)
    assert js.returncode == 1
    rows = json.loads(js.stdout)
    assert {(r["instance"], r["in_flight"]) for r in rows} == {("saga-ok", False), ("mon-done", False), ("mon-wait", True)}


def test_exit_code_2_for_bad_input_and_bad_app(rec: Recording) -> None:
    missing = subprocess.run([sys.executable, "-m", "duroxide_sim", "replay", str(rec.root / "nope.db"), "--app",
                              f"{rec.v1}:register"], capture_output=True, text=True, env=_env(0), timeout=60)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    broken, _ = rec.v2("syntax_error", [("def register(rt):\n", "def register(rt:\n")])
    bad_app = _cli_replay(rec, broken)
    assert bad_app.returncode == 2, bad_app.stdout + bad_app.stderr
    assert str(broken) in bad_app.stderr and "Traceback" not in bad_app.stderr, bad_app.stderr


def test_latest_flag_judges_only_in_flight_instances(rec: Recording) -> None:
    """README: ``--latest`` answers "will the upgrade break in-flight instances"; completed
    ones never replay again. A renamed first step of Monitor breaks mon-wait only."""
    app, text = rec.v2("latest_monitor", [(
        'yield ctx.schedule_timer(cfg["interval_ms"])  # MON-TIMER',
        'yield ctx.schedule_activity("Poll", -1)  # DIVERGE')])
    proc = _cli_replay(rec, app, "--latest")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    body = _report_lines(proc)
    assert [ln.split(" (")[0] for ln in body] == ["mon-wait"], body
    assert f"{app}:{_line_of(text, '# DIVERGE')}" in body[0], body


def test_orchestration_renamed_away_is_reported_for_its_instances(rec: Recording) -> None:
    """v2 registers the continue-as-new loop under a new name only: the recorded Counter
    instances (one still running) cannot be replayed by this code at all."""
    app, _ = rec.v2("renamed_orchestration", [('@rt.register_orchestration("Counter")',
                                               '@rt.register_orchestration("TickCounter")')])
    proc = _cli_replay(rec, app)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    named = {ln.split(" (")[0] for ln in _report_lines(proc)}
    assert named == {"ctr-done", "ctr-wait"}, proc.stdout
    assert all("Counter" in ln for ln in _report_lines(proc)), proc.stdout


def test_exported_histories_replay_like_the_database_and_assert_replays_lists_them(rec: Recording) -> None:
    """README: ``export app.db --out histories/`` (committed), then ``replay histories/`` in CI;
    the pytest helper ``assert_replays`` fails with every divergence, one per line."""
    from duroxide_sim.testing.replay import assert_replays

    out = rec.root / "histories"
    exported = subprocess.run([sys.executable, "-m", "duroxide_sim", "export", str(rec.db), "--out", str(out)],
                              capture_output=True, text=True, env=_env(0), timeout=60)
    assert exported.returncode == 0, exported.stderr
    assert len([p for p in out.glob("*.json") if p.name != "index.json"]) == 12  # 11 started + the child
    assert_replays(str(out), f"{rec.v1}:register")
    app, text = rec.v2("export_rename", [('yield ctx.schedule_activity("Ship", order)  # SAGA-SHIP',
                                          'yield ctx.schedule_activity("Dispatch", order)  # DIVERGE')])
    site = f"{app}:{_line_of(text, '# DIVERGE')}"
    proc = subprocess.run([sys.executable, "-m", "duroxide_sim", "replay", str(out), "--app", f"{app}:register"],
                          capture_output=True, text=True, env=_env(REC_HASH_SEED), cwd=rec.root, timeout=60)
    assert proc.returncode == 1 and _report_lines(proc) == _report_lines(_cli_replay(rec, app)), proc.stdout
    with pytest.raises(AssertionError) as info:
        assert_replays(str(out), f"{app}:register")
    lines = str(info.value).splitlines()
    assert lines[0].startswith("1 recorded execution(s) no longer replay"), lines
    assert lines[1].startswith("saga-ok (execution 1, finished)") and site in lines[1], lines
