"""Probe of the production SQLite setup beyond the existing crash/process/concurrency tests.

Every test asserts the behaviour a production user may rely on; a failure names a defect.

* Several OS processes (``procs/probe_worker.py``) share one file: continue-as-new chains,
  sub-orchestration fan-out, durable timers, external events and queue messages raised by a
  CLIENT-ONLY process, cancellation from that process; workers SIGKILLed at seeded moments and
  restarted. Outcomes, KV, custom status, executions, histories, side effects, locks, queues.
* A turn or an activity that takes its whole process down on every delivery is poisoned after
  ``max_attempts`` instead of crash-looping the fleet.
* Lock renewal for a turn / an activity longer than its lock timeout.
* Late events / cancels for deleted (or never started) instances: no unbounded slow-down.
* Text a driver cannot encode (a lone surrogate, e.g. from ``os.fsdecode``) in custom status,
  KV values or an orchestration's error: the instance ends cleanly, no dispatcher crash.
* Opening: a relative path (then ``os.chdir``), an empty path, a foreign SQLite database,
  a truncated database, a path with spaces/unicode/URI characters.
* Shutdown with continue-as-new and fan-out in flight; a new Runtime on the file finishes them.

Written as a probe; the defects it found were fixed with it: lone surrogates reached SQLite and
failed every ack until poison (now refused where set, escaped in error texts); SPEC §1's
renewal period could end 1-99 ms before the lock expired (now at least 250 ms before); orphan
events and cancels were re-walked by every fetch, forever (now parked and expired); a relative
path named another file after ``os.chdir``; an empty path hung for the busy timeout; a foreign
database was switched to WAL before being refused with a retryable error.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.core.events import CancelInstance, ExternalRaised
from duroxide_sim.errors import ProviderError
from duroxide_sim.providers._shared import ORPHAN_RETENTION_MS, ORPHAN_SWEEP_INTERVAL_MS
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.sim.checkers import check_well_formed
from duroxide_sim.testing.conformance import ConformanceClock, ack, fetch, meta, qmsg, start_item, started

from .procs import probe_worker as pw

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "tests/providers/procs/probe_worker.py"
SEED = int(os.environ.get("DUROXIDE_PROBE_SEED", "4242"))
KILLS = 12
N_CAN, N_FAN, N_WAIT, N_VICTIM = 16, 8, 10, 3

pytestmark = pytest.mark.realtime


# --- process helpers -----------------------------------------------------------------------------


class Proc:
    """One worker incarnation (``probe_worker.py worker``)."""

    def __init__(self, db: Path, effects: Path, workdir: Path, name: str, *extra: str) -> None:
        self.name = name
        self.ready = workdir / f"{name}.ready"
        self.err = workdir / f"{name}.stderr"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, SCRIPT, "worker", str(db), "--effects", str(effects), "--ready", str(self.ready),
                 *extra], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self, timeout_s: float = 30.0) -> bool:
        """True once ready; False if the process died first (it may kill itself on purpose)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.stderr_tail()}"
            time.sleep(0.01)
        return True

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.stderr_tail()}") from None

    def stderr_tail(self, n: int = 3000) -> str:
        try:
            return self.err.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _fresh_db(tmp_path: Path) -> tuple[Path, Path]:
    db, effects = tmp_path / "probe.db", tmp_path / "effects.db"
    SqliteProvider.open(db).close()  # created (and migrated) once, before any worker starts
    pw.create_effects_db(str(effects))
    return db, effects


def _history_problems(provider: SqliteProvider) -> list[str]:
    problems = []
    for inst in provider.list_instances():
        for exe in provider.list_executions(inst):
            events = provider.read_with_execution(inst, exe)
            ids = [e.event_id for e in events]
            if ids != list(range(1, len(ids) + 1)):
                problems.append(f"{inst}#{exe}: event ids {ids[:12]}...")
            problems += [f"{inst}#{exe}: {p}" for p in check_well_formed(inst, exe, events)]
    return problems


class _HistoryOnly:
    """The provider without its status fast path: Client.get_status then derives the status
    from the history (SPEC §14) instead of the executions row."""

    def __init__(self, provider: Any) -> None:
        self._p = provider

    def __getattr__(self, name: str) -> Any:
        if name == "read_status":
            raise AttributeError(name)
        return getattr(self._p, name)


def _status_mismatches(provider: SqliteProvider) -> list[str]:
    fast, slow = Client(provider), Client(_HistoryOnly(provider))
    out = []
    for inst in provider.list_instances():
        a, b = fast.get_status(inst), slow.get_status(inst)
        if (a.status, a.output, a.error, a.custom_status) != (b.status, b.output, b.error, b.custom_status):
            out.append(f"{inst}: row says {a}, history says {b}")
    return out


def _live_locks(db: Path, now_ms: int) -> list[tuple]:
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    try:
        orch = conn.execute("SELECT instance_id, locked_until FROM instance_locks WHERE locked_until > ?",
                            (now_ms,)).fetchall()
        work = conn.execute("SELECT id, locked_until FROM worker_queue WHERE locked_until > ?", (now_ms,)).fetchall()
        return orch + work
    finally:
        conn.close()


# --- 1. many processes, kills, a client-only process ---------------------------------------------


def test_kills_during_continue_as_new_fan_out_and_signals_from_a_client_process(tmp_path):
    """Two worker processes share one file; a third process has only a Client: it starts the
    instances, enqueues queue messages and raises events once each instance is ready for them,
    cancels the Victims, and waits for every instance (wait_for_orchestration across processes).
    Meanwhile the test SIGKILLs a worker at seeded moments and starts a new one.

    Afterwards: every instance has its fault-free outcome, both in the client process's view
    and in ours; continue-as-new chains have CAN_LEN executions, their KV and custom status;
    every execution's history is well formed (ids 1..n, one terminal event); the idempotent side
    effects are exactly the expected ones; no lock is live after a graceful stop; both queues
    are empty; the provider invariants hold."""
    rng = random.Random(SEED)
    db, effects = _fresh_db(tmp_path)
    starts: list[list[Any]] = []
    for n in range(N_CAN):
        starts.append([f"can-{n}", "CanChain", {"n": n, "i": 0, "acc": 0}])
    for n in range(N_FAN):
        starts.append([f"fan-{n}", "Fan", n])
    for n in range(N_WAIT):
        starts.append([f"wait-{n}", "Waiter", n])
    for n in range(N_VICTIM):
        starts.append([f"victim-{n}", "Victim", n])
    plan = tmp_path / "plan.json"
    rng.shuffle(starts)
    plan.write_text(json.dumps({"starts": starts, "signal_timeout_s": 60, "wait_timeout_ms": 60_000,
                                "waves": 16, "wave_gap_s": 0.5}))
    out = tmp_path / "client.json"

    args = ("--orch-lock-ms", "1000", "--worker-lock-ms", "1500", "--poll-ms", "20")
    every: list[Proc] = []
    count = [0]

    def spawn() -> Proc:
        p = Proc(db, effects, tmp_path, f"w{count[0]}", *args)
        count[0] += 1
        every.append(p)
        return p

    client_err = tmp_path / "client.stderr"
    with open(client_err, "wb") as err:
        client_proc = subprocess.Popen([sys.executable, SCRIPT, "client", str(db), "--plan", str(plan), "--out",
                                        str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        workers = [spawn(), spawn()]
        for w in workers:
            assert w.wait_ready(), w.stderr_tail()
        kills_in_flight = 0
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.1, 0.8))
            slots = [0, 1] if rng.random() < 0.25 else [rng.randrange(2)]  # sometimes no survivor
            for slot in slots:
                assert workers[slot].proc.poll() is None, f"worker died by itself:\n{workers[slot].stderr_tail()}"
                workers[slot].kill()
            kills_in_flight += client_proc.poll() is None  # the client still waits: work was in flight
            for slot in slots:
                workers[slot] = spawn()
            for slot in slots:
                assert workers[slot].wait_ready(), workers[slot].stderr_tail()
        client_proc.wait(120)
        assert client_proc.returncode == 0, client_err.read_text(errors="replace")[-3000:]
        codes = [w.stop() for w in workers]
        assert codes == [0, 0], [w.stderr_tail() for w in workers]
    finally:
        for w in every:
            if w.proc.poll() is None:
                w.kill()
        if client_proc.poll() is None:
            client_proc.kill()
            client_proc.wait(10)

    crashed = [f"{w.name}:\n{w.stderr_tail()}" for w in every if "Traceback" in w.stderr_tail(10**7)]
    assert not crashed, "\n".join(crashed)

    seen = json.loads(out.read_text())
    assert kills_in_flight >= KILLS // 2, f"only {kills_in_flight} kills landed while work was in flight"
    assert len(seen["_raised"]) == N_WAIT and len(seen["_cancelled"]) == N_VICTIM, seen
    expected: dict[str, tuple[str, Any]] = {}
    for n in range(N_CAN):
        expected[f"can-{n}"] = ("Completed", pw.expected_can(n))
    for n in range(N_FAN):
        expected[f"fan-{n}"] = ("Completed", pw.expected_fan(n))
    for n in range(N_WAIT):
        expected[f"wait-{n}"] = ("Completed", pw.expected_waiter(n))
    wrong = {i: seen[i] for i, (st, o) in expected.items() if (seen[i][0], seen[i][1]) != (st, o)}
    assert not wrong, f"client process saw wrong outcomes: {wrong}"
    for n in range(N_VICTIM):
        st, _o, err = seen[f"victim-{n}"]
        assert st == "Failed" and "probe says stop" in (err or ""), seen[f"victim-{n}"]

    provider = SqliteProvider.open(db)
    try:
        client = Client(provider)
        for inst, (st, o) in expected.items():
            mine = client.get_status(inst)
            assert (mine.status, mine.output) == (st, o), (inst, mine)
        for n in range(N_CAN):
            inst = f"can-{n}"
            assert provider.list_executions(inst) == list(range(1, pw.CAN_LEN + 1)), inst
            assert client.get_kv_value(inst, "last") == str(pw.CAN_LEN - 1)
            assert client.get_status(inst).custom_status == f"step {pw.CAN_LEN - 1}"
        for n in range(N_FAN):
            tree = client.get_instance_tree(f"fan-{n}")
            assert len(tree.all_ids) == 1 + pw.FAN, tree
        problems = _history_problems(provider)
        assert not problems, "\n".join(problems[:20])
        mismatches = _status_mismatches(provider)
        assert not mismatches, mismatches[:5]

        conn = sqlite3.connect(effects)
        got = {(i, k): v for i, k, v in conn.execute("SELECT instance_id, key, value FROM effects")}
        reruns = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0] - len(got)
        conn.close()
        want = {}
        for n in range(N_CAN):
            for i in range(pw.CAN_LEN):
                want[(f"can-{n}", f"bump{i}")] = pw.bump_value(n, i)
        for n in range(N_WAIT):
            want[(f"wait-{n}", "bump0")] = pw.bump_value(n, 0)
        leaves = {k: v for k, v in got.items() if k[1] == "leaf"}
        assert {k: v for k, v in got.items() if k[1] != "leaf"} == want
        for n in range(N_FAN):
            children = set(client.get_instance_tree(f"fan-{n}").all_ids) - {f"fan-{n}"}
            assert {i for i, _ in leaves if i.startswith(f"fan-{n}::")} == children
            assert sorted(v for (i, _), v in leaves.items() if i in children) == \
                [pw.leaf_value(n, k) for k in range(pw.FAN)]
        assert len(leaves) == N_FAN * pw.FAN

        assert _live_locks(db, client.clock.now_ms()) == []
        depths = provider.get_queue_depths()
        assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
        provider._check()
    finally:
        provider.close()
    print(f"\nprobe seed {SEED}: {KILLS} kills ({kills_in_flight} with work in flight), {count[0]} worker "
          f"incarnations, {reruns} activity re-executions")


# --- 2. work that kills its process on every delivery --------------------------------------------


@pytest.mark.parametrize("orchestration", ["KillerTurn", "KillerActivity"])
def test_work_that_kills_its_process_on_every_delivery_is_poisoned(tmp_path, orchestration):
    """A turn (or an activity) that takes its whole process down (native crash, OOM kill) on
    every delivery: each fetch counts an attempt in the database, so after ``max_attempts``
    deliveries the poison rule fails it (SPEC §10.2) and the restarted workers go on with the
    other instances instead of crash-looping forever."""
    db, effects = _fresh_db(tmp_path)
    provider = SqliteProvider.open(db)
    client = Client(provider)
    client.start_orchestration("poison-me", orchestration, None)
    client.start_orchestration("bystander", "Plain", 3)
    args = ("--orch-lock-ms", "600", "--worker-lock-ms", "800", "--poll-ms", "10", "--max-attempts", "2")
    deaths = 0
    procs: list[Proc] = []
    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            st = client.get_status("poison-me")
            if st.is_terminal and client.get_status("bystander").is_terminal:
                break
            p = Proc(db, effects, tmp_path, f"k{len(procs)}", *args)
            procs.append(p)
            p.wait_ready()
            while p.proc.poll() is None and time.monotonic() < deadline:
                if client.get_status("poison-me").is_terminal and client.get_status("bystander").is_terminal:
                    break
                time.sleep(0.02)
            if p.proc.poll() is not None:
                deaths += 1
        for p in procs:
            if p.proc.poll() is None:
                assert p.stop() == 0, p.stderr_tail()
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()
    st = client.get_status("poison-me")
    assert st.status == "Failed" or (st.status == "Completed" and "activity failed" in str(st.output)), st
    assert "oison" in (st.error or str(st.output)), st  # Poison: the message says why
    assert 1 <= deaths <= 4, deaths
    bystander = client.get_status("bystander")
    assert (bystander.status, bystander.output) == ("Completed", pw.bump_value(3, 7))
    assert _status_mismatches(provider) == []
    assert _history_problems(provider) == []
    provider.close()


# --- 3. lock renewal ------------------------------------------------------------------------------


def _rt(tmp_path: Path, **opts: Any) -> tuple[SqliteProvider, Runtime]:
    provider = SqliteProvider.open(tmp_path / "rt.db")
    base: dict[str, Any] = dict(dispatcher_poll_interval_ms=5, activity_cancellation_grace_period_ms=500)
    base.update(opts)
    return provider, Runtime(provider, RuntimeOptions(**base))


def test_activity_longer_than_a_2001_ms_worker_lock_runs_once(tmp_path):
    """worker_lock_timeout_ms=2001 is accepted, so a 2.6 s activity must be renewed in time and
    run once. (options.renewal_period_ms gives 2000 ms for it, 1 ms before expiry, and the
    ThreadRenewer looks only every 100 ms: the lock lapses, the activity is cancelled and run
    again, over and over, until poison. Any timeout in (1000, 1100) or (2000, 2100) ms, or
    >= 15 s with a renewal buffer under 100 ms, lapses the same way with a probability of
    (100 - margin) %: 2010 fails about 9 times in 10.)"""
    provider, rt = _rt(tmp_path, worker_lock_timeout_ms=2_001)
    runs: list[float] = []

    @rt.register_activity("Long")
    def long(ctx, x):
        runs.append(time.monotonic())
        time.sleep(2.6)
        return x

    @rt.register_orchestration("O")
    def orch(ctx, x):
        return (yield ctx.schedule_activity("Long", x))

    rt.start()
    time.sleep(0.05)  # work arrives at an arbitrary moment, not in step with the renewer's 100 ms tick
    try:
        client = Client(provider)
        client.start_orchestration("long", "O", "done")
        try:
            st = client.wait_for_orchestration("long", 7_000)
            outcome = (st.status, st.output, st.error)
        except Exception as exc:  # noqa: BLE001
            outcome = (type(exc).__name__, None, str(exc))
        assert (outcome, len(runs)) == (("Completed", "done", None), 1)
    finally:
        rt.shutdown(0)
        provider.close()


def test_turn_longer_than_a_2001_ms_orchestrator_lock_commits(tmp_path):
    """One runtime, orchestrator_lock_timeout_ms=2001, a first turn that computes for 2.6 s:
    the lock must be renewed during the turn so its ack commits. (Same renewal-period problem
    as above: the turn is lost to lock expiry on every delivery and the instance never
    progresses until it is poisoned.)"""
    provider, rt = _rt(tmp_path, orchestrator_lock_timeout_ms=2_001)
    calls: list[int] = []

    @rt.register_activity("A")
    def a(ctx, x):
        return x

    @rt.register_orchestration("Heavy")
    def heavy(ctx, x):
        calls.append(1)
        time.sleep(2.6)  # a CPU-heavy first turn, e.g. building a large plan
        return (yield ctx.schedule_activity("A", x))

    rt.start()
    time.sleep(0.05)  # as above
    try:
        client = Client(provider)
        client.start_orchestration("heavy", "Heavy", 5)
        try:
            st = client.wait_for_orchestration("heavy", 7_000)
            outcome = (st.status, st.output)
        except Exception as exc:  # noqa: BLE001
            outcome = (type(exc).__name__, None)
        assert outcome == ("Completed", 5), f"{outcome}, turn ran {len(calls)} times"
    finally:
        rt.shutdown(0)
        provider.close()


# --- 3b. events for instances that are gone -------------------------------------------------------


def test_late_events_for_deleted_instances_do_not_slow_every_turn(tmp_path):
    """Retention deletes finished instances; webhooks keep raising events for them (and
    ``cancel_instance`` "always succeeds, even for unknown ids"). Such messages have no instance
    row, no history and no start item: SqliteProvider keeps them queued forever (only
    QueueMessages are dropped) and every fetch, in a BEGIN IMMEDIATE write transaction, walks
    past each of them with 3-4 queries. With 2,000 of them a hello-world turn becomes ~50x
    slower and an idle runtime burns CPU polling. Expected: throughput stays in the same
    order of magnitude (here: at most 4x the baseline + 0.5 s)."""
    provider, rt = _rt(tmp_path, dispatcher_poll_interval_ms=20)

    @rt.register_orchestration("Hello")
    def hello(ctx, x):
        return x

    rt.start()
    try:
        client = Client(provider)

        def hellos(prefix: str) -> float:
            t0 = time.monotonic()
            for i in range(100):
                client.start_orchestration(f"{prefix}{i}", "Hello", i)
            for i in range(100):
                assert client.wait_for_orchestration(f"{prefix}{i}", 60_000).output == i
            return time.monotonic() - t0

        baseline = hellos("a")
        client.delete_instance_bulk()  # retention: every finished root instance
        assert provider.list_instances() == []
        for i in range(2_000):
            target = f"a{i % 100}" if i % 2 else f"order-{i}"  # deleted above / deleted long ago
            if i % 5:
                client.raise_event(target, "payment-webhook", {"n": i})
            else:
                client.cancel_instance(target, "late cancel")
        loaded = hellos("b")
        assert loaded <= 4 * baseline + 0.5, (
            f"100 hello orchestrations took {loaded:.2f} s with 2,000 stray messages queued, "
            f"{baseline:.2f} s without; {provider.get_queue_depths().orchestrator_queue} messages still queued")
    finally:
        rt.shutdown(0)
        provider.close()


def _orphan_provider(kind: str, tmp_path: Path, request: Any) -> tuple[Any, ConformanceClock]:
    clock = ConformanceClock()
    if kind == "memory":
        return InMemoryProvider(clock), clock
    if kind == "sqlite":
        return SqliteProvider.open(tmp_path / "orphans.db", clock=clock), clock
    from duroxide_sim.providers.postgres import PostgresProvider

    url = request.getfixturevalue("pg_url")
    return PostgresProvider.connect_with_schema(url, request.getfixturevalue("pg_schema")("orph"), clock=clock), clock


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_orphans_reach_a_late_start_within_retention_and_expire_after_it(kind, tmp_path, request):
    """SPEC §3.12, the same on every provider: an event / cancel for an instance that does not
    exist stays queued (it may be racing the start) and a start arriving within the retention
    period gets it in its first batch, in order, counted once; after the retention period an
    orphan whose instance still does not exist is deleted, and a later start sees only itself.
    An orphan whose instance exists by then (history imported, say) is delivered normally."""
    p, clock = _orphan_provider(kind, tmp_path, request)
    try:
        p.enqueue_for_orchestrator(CancelInstance(instance="ghost", reason="late"))
        p.enqueue_for_orchestrator(ExternalRaised(instance="ghost", name="e", data="1"))
        p.enqueue_for_orchestrator(CancelInstance(instance="gone", reason="late"))
        p.enqueue_for_orchestrator(ExternalRaised(instance="restored", name="e", data="2"))
        p.enqueue_for_orchestrator(qmsg("nobody"))  # QueueMessages only: dropped at once, as before
        assert fetch(p) is None
        assert p.get_queue_depths().orchestrator_queue == 4
        clock.advance(ORPHAN_RETENTION_MS - 1)
        assert fetch(p) is None  # nothing expired yet
        p.enqueue_for_orchestrator(start_item("ghost"))
        item = fetch(p)
        assert item.instance == "ghost" and item.attempt_count == 1, item
        assert [type(m).__name__ for m in item.messages] == ["CancelInstance", "ExternalRaised", "StartOrchestration"]
        ack(p, item, [started("ghost")], md=meta())
        p.append_with_execution("restored", 1, [started("restored")])  # history without a row
        clock.advance(ORPHAN_SWEEP_INTERVAL_MS + 2)
        item = fetch(p)  # the sweep: "gone" expired, "restored" delivered
        assert item is not None and item.instance == "restored", item
        assert [type(m).__name__ for m in item.messages] == ["ExternalRaised"]
        ack(p, item, md=meta())
        assert fetch(p) is None
        assert p.get_queue_depths().orchestrator_queue == 0
        p.enqueue_for_orchestrator(start_item("gone"))
        assert fetch(p).messages == (start_item("gone"),)
    finally:
        close = getattr(p, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_fetch_does_not_walk_orphans_it_has_seen(kind, tmp_path, request):
    """Once a fetch has looked at an orphan, later fetches (an idle poll included) do not look
    at it again: their cost does not grow with the number of orphans queued."""
    p, clock = _orphan_provider(kind, tmp_path, request)
    looked: list[str] = []
    try:
        for i in range(300):
            p.enqueue_for_orchestrator(CancelInstance(instance=f"ghost-{i}", reason="late"))
        assert fetch(p) is None
        if kind == "sqlite":
            p._shared.set_trace_callback(looked.append)
        else:
            real = p._batch_metadata
            p._batch_metadata = lambda instance, *rest: looked.append(instance) or real(instance, *rest)
        clock.advance(1_000)
        assert fetch(p) is None
        p.enqueue_for_orchestrator(start_item("real"))
        assert fetch(p).instance == "real"
        assert not [x for x in looked if "ghost" in x], looked[:5]
        assert p.get_queue_depths().orchestrator_queue == 300  # kept (real is locked)
    finally:
        if kind == "sqlite":
            p._shared.set_trace_callback(None)
            p.close()


# --- 4. text SQLite cannot encode ---------------------------------------------------------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_lone_surrogates_in_status_kv_or_error_end_the_instance_cleanly(tmp_path):
    """``os.fsdecode`` / ``errors="surrogateescape"`` give str values with lone surrogates
    (a file name with invalid UTF-8, a subprocess's output). Activity results and outputs are
    JSON-escaped, but a custom status, a KV value or an orchestration's exception text reaches
    SQLite verbatim and the ack raises ``UnicodeEncodeError`` (not a ProviderError): the
    dispatcher step crashes, the lock is held until it expires, and the instance is re-run on
    every lock expiry. Expected: each instance ends promptly (Completed with the value escaped,
    or Failed naming the problem); no dispatcher step crashes; others are unaffected."""
    provider, rt = _rt(tmp_path, orchestrator_lock_timeout_ms=1_000)
    bad = os.fsdecode(b"report-\xff.csv")

    @rt.register_orchestration("Status")
    def status(ctx, _):
        ctx.set_custom_status(f"processing {bad}")
        return "ok"

    @rt.register_orchestration("Kv")
    def kv(ctx, _):
        ctx.set_kv_value("file", bad)
        return "ok"

    @rt.register_orchestration("Raise")
    def raise_(ctx, _):
        raise FileNotFoundError(f"no such file: {bad}")
        yield  # pragma: no cover

    @rt.register_orchestration("Fine")
    def fine(ctx, x):
        return x

    handler = _Records()
    logging.getLogger("duroxide_sim").addHandler(handler)
    rt.start()
    try:
        client = Client(provider)
        for name in ("Status", "Kv", "Raise"):
            client.start_orchestration(name.lower(), name, None)
        client.start_orchestration("fine", "Fine", 1)
        names = ("status", "kv", "raise", "fine")
        deadline = time.monotonic() + 4.0  # four lock timeouts
        while time.monotonic() < deadline and not all(client.get_status(i).is_terminal for i in names):
            time.sleep(0.02)
        outcomes = {inst: client.get_status(inst).status for inst in names}
        crashed = [r.getMessage() + " " + str(r.exc_info[1] if r.exc_info else "") for r in handler.records]
        assert outcomes == {"status": outcomes["status"], "kv": outcomes["kv"], "raise": "Failed", "fine": "Completed"} \
            and outcomes["status"] in ("Completed", "Failed") and outcomes["kv"] in ("Completed", "Failed"), \
            (outcomes, crashed[:3])
        err = client.get_status("raise").error or ""
        assert "FileNotFoundError" in err, err
        assert not crashed, crashed[:3]
    finally:
        logging.getLogger("duroxide_sim").removeHandler(handler)
        rt.shutdown(0)
        provider.close()


# --- 5. opening -----------------------------------------------------------------------------------


def _run_helper(tmp_path: Path, *args: str, timeout_s: float) -> dict:
    out = tmp_path / "helper.json"
    proc = subprocess.Popen([sys.executable, SCRIPT, *args, str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"helper {args[0]} did not finish within {timeout_s} s") from None
    assert proc.returncode == 0, err.decode(errors="replace")[-3000:]
    return json.loads(out.read_text())


def test_relative_path_keeps_naming_the_same_file_after_chdir(tmp_path):
    """``SqliteProvider.open("app.db")`` then ``os.chdir`` (a daemonizing library, a job
    runner): connections opened later by other threads (every thread gets its own) must still
    use the file that was opened, not create an empty ``app.db`` in the new directory and fail
    with "no such table"."""
    work, other = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    other.mkdir()
    res = _run_helper(tmp_path, "chdir-open", "app.db", str(work), str(other), timeout_s=30)
    assert res["before"] == 1
    assert res["thread"] == ["ok", 1, "NotFound"], res
    assert res["otherdir"] == [], res


def test_empty_path_is_refused_at_once(tmp_path):
    """``SqliteProvider.open("")`` (an unset setting: ``os.environ.get("DB_PATH", "")``) opens
    a private temporary database per connection in SQLite. It must be refused at once with a
    ProviderError; it used to retry the WAL switch for the whole 60 s busy timeout and then
    report "stayed in journal mode 'delete'"."""
    res = _run_helper(tmp_path, "open", "", timeout_s=8)
    assert res["ok"] is False and res["error"].startswith("ProviderError"), res
    assert res["seconds"] < 5, res


def test_a_foreign_sqlite_database_is_refused_clearly_and_untouched(tmp_path):
    """Pointing the provider at another application's SQLite file that has a table named like
    one of ours: the open must fail with a permanent error that says the file is not a
    duroxide_sim database (not "table instances already exists", retryable), and the file must
    be left byte-for-byte as it was (today it is switched to WAL mode even though the open
    fails)."""
    path = tmp_path / "crm.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE instances (id INTEGER PRIMARY KEY, customer TEXT)")
    conn.executemany("INSERT INTO instances (customer) VALUES (?)", [(f"c{i}",) for i in range(100)])
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ProviderError) as info:
        SqliteProvider.open(path)
    err = info.value
    assert err.retryable is False, str(err)
    assert str(path) in str(err)
    assert path.read_bytes() == before, "the foreign database file was modified by a failed open"
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 100
    conn.close()


def test_only_an_empty_or_a_duroxide_sim_database_is_opened(tmp_path):
    """What "foreign" means: a database with tables of its own and no duroxide_sim schema, also
    when no table is named like ours, is refused (permanently, untouched; by ``snapshot_of``
    too) rather than getting our tables added. A database without tables (a 0-byte file, or
    one with only settings) is ours to fill; so is one of ours that a user added a table to.
    A blank path is refused like an empty one."""
    other = tmp_path / "notes.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    for opener in (SqliteProvider.open, SqliteProvider.snapshot_of):
        with pytest.raises(ProviderError, match="not a duroxide_sim database") as info:
            opener(other)
        assert info.value.retryable is False and str(other) in str(info.value) and "notes" in str(info.value)
    assert other.read_bytes() == before

    bare = tmp_path / "bare.db"
    conn = sqlite3.connect(bare)
    conn.execute("PRAGMA user_version = 7")  # a database file with a header and no tables
    conn.close()
    ours = tmp_path / "ours.db"
    for path in (bare, tmp_path / "zero.db", ours):
        if path.name == "zero.db":
            path.write_bytes(b"")
        with SqliteProvider.open(path) as provider:
            Client(provider).start_orchestration("x", "Nope", None)
    conn = sqlite3.connect(ours)
    conn.execute("CREATE TABLE my_audit (at TEXT)")
    conn.commit()
    conn.close()
    with SqliteProvider.open(ours) as provider:
        assert Client(provider).get_queue_depths().orchestrator_queue == 1  # the start queued above
    with pytest.raises(ProviderError, match="path is empty") as info:
        SqliteProvider.open("  ")
    assert info.value.retryable is False


@pytest.mark.parametrize("cut", [0.5, 0.95])
def test_a_truncated_database_is_refused_untouched(tmp_path, cut):
    """A copy cut short (a partial backup, a full disk during cp): a permanent "corrupt" error,
    file unchanged."""
    path = tmp_path / "full.db"
    provider = SqliteProvider.open(path)
    client = Client(provider)
    for i in range(400):
        client.start_orchestration(f"i{i}", "Nope", "x" * 500)
    provider.close()
    data = path.read_bytes()
    cut_path = tmp_path / "cut.db"
    cut_path.write_bytes(data[: int(len(data) * cut)])
    before = cut_path.read_bytes()
    with pytest.raises(ProviderError, match="corrupt|not a SQLite database") as info:
        SqliteProvider.open(cut_path)
    assert info.value.retryable is False and str(cut_path) in str(info.value)
    assert cut_path.read_bytes() == before


def test_paths_with_spaces_unicode_and_uri_characters(tmp_path):
    """Spaces, non-ASCII and ``? # %`` in directory and file names: open, run, reopen, and
    ``snapshot_of`` (which goes through a file: URI) all reach the same file."""
    d = tmp_path / "my data é ✓"
    d.mkdir()
    path = d / "we?ird #name%20 ü.db"
    provider, rt = SqliteProvider.open(path), None
    try:
        rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))

        @rt.register_orchestration("Echo")
        def echo(ctx, x):
            return x

        rt.start()
        client = Client(provider)
        client.start_orchestration("é 1", "Echo", "ü")
        assert client.wait_for_orchestration("é 1", 5_000).output == "ü"
    finally:
        if rt is not None:
            rt.shutdown(1_000)
        provider.close()
    assert sorted(p.name for p in d.iterdir()) == [path.name]
    with SqliteProvider.snapshot_of(path) as snap:
        assert Client(snap).get_status("é 1").output == "ü"
    with SqliteProvider.open(path) as again:
        assert Client(again).get_status("é 1").output == "ü"


# --- 6. shutdown with work in flight --------------------------------------------------------------


def test_shutdown_mid_continue_as_new_and_fan_out_then_a_new_runtime_finishes(tmp_path):
    """shutdown(0) while continue-as-new chains, sub-orchestration fan-outs and timers are in
    flight; a new Runtime (new provider) on the same file finishes every instance with the
    fault-free outcome, well-formed histories and each side effect once."""
    db, effects = _fresh_db(tmp_path)
    opts = RuntimeOptions(dispatcher_poll_interval_ms=5, orchestrator_lock_timeout_ms=1_000,
                          worker_lock_timeout_ms=1_500, activity_cancellation_grace_period_ms=300)
    p1 = SqliteProvider.open(db)
    rt1 = Runtime(p1, opts)
    pw.register(rt1, str(effects))
    rt1.start()
    client = Client(p1)
    for n in range(6):
        client.start_orchestration(f"can-{n}", "CanChain", {"n": n, "i": 0, "acc": 0})
        client.start_orchestration(f"fan-{n}", "Fan", n)
    time.sleep(0.25)
    rt1.shutdown(0)
    p1.close()
    mid = SqliteProvider.open(db)
    unfinished = [i for i in mid.list_instances() if not Client(mid).get_status(i).is_terminal]
    mid.close()

    p2 = SqliteProvider.open(db)
    rt2 = Runtime(p2, opts)
    pw.register(rt2, str(effects))
    rt2.start()
    try:
        c2 = Client(p2)
        for n in range(6):
            assert (c2.wait_for_orchestration(f"can-{n}", 20_000).output) == pw.expected_can(n)
            assert (c2.wait_for_orchestration(f"fan-{n}", 20_000).output) == pw.expected_fan(n)
        problems = _history_problems(p2)
        assert not problems, problems[:10]
    finally:
        rt2.shutdown(2_000)
        p2.close()
    assert unfinished, "shutdown came too late to interrupt anything"
    conn = sqlite3.connect(effects)
    counts = conn.execute("SELECT COUNT(*), COUNT(DISTINCT instance_id || '/' || key) FROM effects").fetchone()
    conn.close()
    assert counts == (6 * pw.CAN_LEN + 6 * pw.FAN,) * 2
