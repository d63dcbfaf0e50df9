"""Probe of the production PostgreSQL setup, beyond ``test_postgres*.py`` (the SQLite
counterpart is ``test_sqlite_production_probe.py``).

Every test asserts what a production user may rely on; a failure names a defect.

* Several OS processes on one schema (``pg_procs/probe_pg_worker.py``): two runtime processes
  and a CLIENT-ONLY process (starts, queue messages, events, cancels, waits). Workers are
  SIGKILLed and restarted, and their server backends are terminated (pg_terminate_backend) at
  seeded moments. Outcomes, exactly-once turns, side effects, histories, locks, queues.
* A first turn whose ack PostgreSQL refuses permanently (a value over its ~2.7 KB index row)
  must fail the instance with an error naming the cause, not an anonymous poison.
* Orphan events / cancels (SPEC §3.12): a ready instance behind freshly parked orphans is
  fetched at once and later fetches do not walk the orphans again (as memory / SQLite); late
  events for deleted instances through a runtime; expiry isolated per schema.
* Lock renewal for 2001 ms locks; a renewal that fails once on a dropped connection.
* Two schemas (names differing only in case) in one database, two runtimes at once.
* Hostile text (NUL, lone surrogates, unicode / normalisation-variant ids, ids near the index
  limit, payloads at the size limits): the same outcomes and histories as memory and SQLite.
* One mixed workload on memory, SQLite and PostgreSQL: identical outputs and histories.
* Work that SIGKILLs its own process on every delivery is poisoned; sessions keep one owner
  across two runtimes; the server restarts under two runtime processes and a waiting client.
* Opening: wrong password / unknown role / missing database / malformed connection options
  (permanent, nothing created, no password echoed); quoted mixed-case schema names.
* Shutdown with continue-as-new and fan-out in flight; a new Runtime finishes them.

Defects found when written (the tests below fail on them): a first turn PostgreSQL refuses
permanently ends "poison: ..." without its cause; a fetch skips a ready instance behind 8+
fresh orphans (OFFSET paging while parking/dropping rows) and later fetches walk orphans
again; one retryable renewal failure loses the lock (retry only a whole period later);
malformed connection options are reported as retryable at open.

Written as a probe; fixed with it: a permanently refused first turn was abandoned until poison
(now the instance is created failed with the reason); the candidate scan paged with OFFSET while
parking orphans, so a ready instance behind fresh orphans was missed (now keyset paging); one
renewal lost to a dropped connection was retried only after the lock expired (now at the next
tick); impossible connection settings were reported as retryable; a dropped connection during
maintenance logged a traceback.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import string
import subprocess
import sys
import time
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.core.events import CancelInstance, ExternalRaised
from duroxide_sim.errors import DuroxideError, ProviderError
from duroxide_sim.providers._shared import ORPHAN_RETENTION_MS, ORPHAN_SWEEP_INTERVAL_MS
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import check_well_formed
from duroxide_sim.testing.conformance import ConformanceClock, fetch, qmsg, start_item
from tests.providers.pg_procs import probe_pg_worker as ppw

from .procs import probe_worker as pw

ROOT = Path(__file__).resolve().parents[2]
SEED = int(os.environ.get("DUROXIDE_PROBE_SEED", "4243"))
KILLS = 14
N_CAN, N_FAN, N_WAIT, N_VICTIM = 12, 6, 8, 3


def _noise(n: int, seed: int = 1) -> str:
    """``n`` incompressible ASCII characters (no TOAST compression inside an index)."""
    rnd = random.Random(seed)
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


def _admin(pg_url: str) -> psycopg.Connection:
    return psycopg.connect(pg_url, autocommit=True, connect_timeout=10)


def _history_problems(provider: Any) -> list[str]:
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
    """The provider without its status fast path (Client.get_status then reads history)."""

    def __init__(self, provider: Any) -> None:
        self._p = provider

    def __getattr__(self, name: str) -> Any:
        if name == "read_status":
            raise AttributeError(name)
        return getattr(self._p, name)


def _status_mismatches(provider: Any) -> list[str]:
    fast, slow = Client(provider), Client(_HistoryOnly(provider))
    out = []
    for inst in provider.list_instances():
        a, b = fast.get_status(inst), slow.get_status(inst)
        if (a.status, a.output, a.error, a.custom_status) != (b.status, b.output, b.error, b.custom_status):
            out.append(f"{inst}: row says {a}, history says {b}")
    return out


# --- 1. processes: two runtimes, a client process, SIGKILLs and terminated backends -------------


class Proc:
    """One worker incarnation (``probe_pg_worker worker``)."""

    def __init__(self, url: str, schema: str, effects: Path, workdir: Path, name: str, *extra: str) -> None:
        self.name = name
        self.ready = workdir / f"{name}.ready"
        self.err = workdir / f"{name}.stderr"
        self.record = workdir / f"acks-{name}.jsonl"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.providers.pg_procs.probe_pg_worker", "worker", url, schema,
                 "--effects", str(effects), "--ready", str(self.ready), "--record", str(self.record),
                 *(extra or ("--orch-lock-ms", "1000", "--worker-lock-ms", "1500", "--poll-ms", "20"))],
                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self, timeout_s: float = 30.0, may_die: bool = False) -> bool:
        """True once ready; False if the process died first (only allowed with ``may_die``)."""
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None:
                assert may_die, f"{self.name} died at start:\n{self.stderr_tail()}"
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


def _terminate_worker_backends(pg_url: str) -> int:
    with _admin(pg_url) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                                (ppw.WORKER_APP,)).fetchall())


def _verify_process_run(pg_url: str, schema: str, out: Path, every: list["Proc"], effects: Path,
                        n_can: int, n_fan: int, n_wait: int, n_victim: int) -> list[dict]:
    """The checks after a multi-process run (see the test below); returns the committed acks."""
    crashed = [f"{w.name}:\n{w.stderr_tail()}" for w in every if "Traceback" in w.stderr_tail(10**7)]
    assert not crashed, "\n".join(crashed)[-6000:]
    seen = json.loads(out.read_text())
    assert len(seen["_raised"]) == n_wait and len(seen["_cancelled"]) == n_victim, seen
    expected: dict[str, tuple[str, Any]] = {}
    expected.update({f"can-{n}": ("Completed", pw.expected_can(n)) for n in range(n_can)})
    expected.update({f"fan-{n}": ("Completed", pw.expected_fan(n)) for n in range(n_fan)})
    expected.update({f"wait-{n}": ("Completed", pw.expected_waiter(n)) for n in range(n_wait)})
    wrong = {i: seen[i] for i, (st, o) in expected.items() if (seen[i][0], seen[i][1]) != (st, o)}
    assert not wrong, f"client process saw wrong outcomes: {wrong}"
    for n in range(n_victim):
        st, _o, err_text = seen[f"victim-{n}"]
        assert st == "Failed" and "probe says stop" in (err_text or ""), seen[f"victim-{n}"]

    # exactly-once turns, from the workers' records of committed acks
    acks = [json.loads(line) for p in every if p.record.exists() for line in p.record.read_text().splitlines()]
    tokens = Counter(a["token"] for a in acks)
    assert [t for t, c in tokens.items() if c > 1] == []
    events = Counter((a["instance"], a["execution"], e) for a in acks for e in a["events"])
    assert [k for k, c in events.items() if c > 1] == [], "an event was committed by two acks"

    provider = PostgresProvider.connect_with_schema(pg_url, schema)
    try:
        client = Client(provider)
        for inst, (st, o) in expected.items():
            mine = client.get_status(inst)
            assert (mine.status, mine.output) == (st, o), (inst, mine)
        for n in range(n_can):
            inst = f"can-{n}"
            assert provider.list_executions(inst) == list(range(1, pw.CAN_LEN + 1)), inst
            assert client.get_kv_value(inst, "last") == str(pw.CAN_LEN - 1)
            assert client.get_status(inst).custom_status == f"step {pw.CAN_LEN - 1}"
        for n in range(n_fan):
            assert len(client.get_instance_tree(f"fan-{n}").all_ids) == 1 + pw.FAN
        stored = {(i, x, e.event_id) for i in provider.list_instances() for x in provider.list_executions(i)
                  for e in provider.read_with_execution(i, x)}
        assert set(events) <= stored, "a recorded committed event is missing from the history"
        problems = _history_problems(provider)
        assert not problems, "\n".join(problems[:20])
        assert _status_mismatches(provider) == []

        conn = sqlite3.connect(effects)
        got = {(i, k): v for i, k, v in conn.execute("SELECT instance_id, key, value FROM effects")}
        conn.close()
        want = {(f"can-{n}", f"bump{i}"): pw.bump_value(n, i) for n in range(n_can) for i in range(pw.CAN_LEN)}
        want.update({(f"wait-{n}", "bump0"): pw.bump_value(n, 0) for n in range(n_wait)})
        assert {k: v for k, v in got.items() if k[1] != "leaf"} == want
        assert sum(1 for k in got if k[1] == "leaf") == n_fan * pw.FAN

        with _admin(pg_url) as admin:
            admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            locks = admin.execute("SELECT instance_id, locked_until FROM instance_locks").fetchall()
            work_locks = admin.execute("SELECT id FROM worker_queue WHERE lock_token IS NOT NULL").fetchall()
        assert (locks, work_locks) == ([], []), "lock rows left behind after every instance finished"
        depths = provider.get_queue_depths()
        assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
        provider._check()
    finally:
        provider.close()
    return acks


@pytest.mark.realtime
def test_kills_and_dropped_connections_with_a_client_process(pg_url, pg_schema, tmp_path):
    """Two runtime processes share one schema; a third process has only a Client: it starts
    continue-as-new chains, sub-orchestration fan-outs, waiters and victims in waves, enqueues
    queue messages and raises events once each instance is ready for them, cancels the victims
    and waits for every instance. Meanwhile the test SIGKILLs workers (sometimes both) and
    restarts them, or terminates every server backend of the workers (pool and LISTEN).

    Afterwards: every instance has its fault-free outcome in the client process's view and in
    ours; no committed turn twice (each lock token and each (instance, execution, event id) in
    one committed ack only); histories well formed; the status row agrees with the history;
    the idempotent side effects are exactly the expected ones; no lock row left after a
    graceful stop; both queues empty; the schema invariants hold."""
    rng = random.Random(SEED)
    schema = pg_schema("procs")
    PostgresProvider.connect_with_schema(pg_url, schema).close()  # created once, before any worker
    effects = tmp_path / "effects.db"
    pw.create_effects_db(str(effects))
    starts: list[list[Any]] = []
    starts += [[f"can-{n}", "CanChain", {"n": n, "i": 0, "acc": 0}] for n in range(N_CAN)]
    starts += [[f"fan-{n}", "Fan", n] for n in range(N_FAN)]
    starts += [[f"wait-{n}", "Waiter", n] for n in range(N_WAIT)]
    starts += [[f"victim-{n}", "Victim", n] for n in range(N_VICTIM)]
    rng.shuffle(starts)
    plan = tmp_path / "plan.json"
    # The client's waves are paced by the faults as well as by time (``pace``): on a loaded
    # machine each kill-and-restart takes longer while the client's clock runs on, and the
    # client used to finish with half the faults still to come.
    pace = tmp_path / "faults-landed"
    plan.write_text(json.dumps({"starts": starts, "signal_timeout_s": 180, "wait_timeout_ms": 120_000,
                                "waves": 20, "wave_gap_s": 0.5, "pace": {"file": str(pace), "faults": KILLS}}))
    out = tmp_path / "client.json"

    def landed(n: int) -> None:
        ppw._write_json(str(pace), n)

    every: list[Proc] = []

    def spawn() -> Proc:
        p = Proc(pg_url, schema, effects, tmp_path, f"w{len(every)}")
        every.append(p)
        return p

    client_err = tmp_path / "client.stderr"
    with open(client_err, "wb") as err:
        client_proc = subprocess.Popen(
            [sys.executable, "-m", "tests.providers.pg_procs.probe_pg_worker", "client", pg_url, schema,
             "--plan", str(plan), "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    sigkills = terminations = in_flight = 0
    try:
        workers = [spawn(), spawn()]
        for w in workers:
            w.wait_ready()
        for fault in range(KILLS):
            landed(fault)
            time.sleep(rng.uniform(0.2, 0.9))
            in_flight += client_proc.poll() is None
            if rng.random() < 0.35:
                terminations += _terminate_worker_backends(pg_url) > 0
                continue
            slots = [0, 1] if rng.random() < 0.25 else [rng.randrange(2)]
            for slot in slots:
                assert workers[slot].proc.poll() is None, f"worker died by itself:\n{workers[slot].stderr_tail()}"
                workers[slot].kill()
                sigkills += 1
            for slot in slots:
                workers[slot] = spawn()
            for slot in slots:
                workers[slot].wait_ready()
        landed(-1)  # no more faults: the client's remaining waves go by time alone
        client_proc.wait(240)
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

    assert in_flight >= KILLS // 2, f"only {in_flight} faults landed while work was in flight"

    acks = _verify_process_run(pg_url, schema, out, every, effects, N_CAN, N_FAN, N_WAIT, N_VICTIM)
    print(f"\npg probe seed {SEED}: {sigkills} SIGKILLs, {terminations} backend terminations, "
          f"{len(every)} worker incarnations, {len(acks)} committed turns")


# --- shared: a simulated world (SimClock, sequential driver) on any provider -----------------------


class _World:
    def __init__(self, provider: Any, clock: SimClock, *, max_attempts: int = 3, max_steps: int = 20_000) -> None:
        self.provider, self.clock = provider, clock
        self.runtime = Runtime(provider, RuntimeOptions(max_attempts=max_attempts, unregistered_backoff_base_ms=10,
                                                        unregistered_backoff_max_ms=50),
                               clock=clock, ids=SequentialIds())
        self.driver = SequentialDriver(self.runtime, clock, max_steps=max_steps)
        self.client = Client(provider, clock=clock, sleep=self.driver.sleep)

    def run(self) -> None:
        self.driver.run_until_quiet()


def _make(kind: str, clock: Any, pg_url: str | None = None, schema: str | None = None, tmp: Path | None = None) -> Any:
    if kind == "memory":
        return InMemoryProvider(clock)
    if kind == "sqlite":
        return SqliteProvider.open(tmp / "p.db", clock=clock) if tmp is not None else SqliteProvider.in_memory(clock=clock)
    return PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)


# --- 2. a first turn PostgreSQL refuses for good -----------------------------------------------------


@pytest.mark.parametrize("case", ["kv-key", "child-id"])
def test_a_first_turn_postgres_refuses_names_the_cause(pg_url, pg_schema, case):
    """A value PostgreSQL cannot index (over its ~2.7 KB btree row; SQLite stores it) written in
    an instance's FIRST turn: a 3,000-character KV key, or a sub-orchestration whose derived id
    ``{parent}::sub::N`` runs past the limit although the parent id (2,672 bytes) was accepted by
    ``start_orchestration``. Every ack of that turn fails with the permanent ProviderError
    "a value is too large for PostgreSQL". Expected (SPEC §3.1 step 10, as for the same failure
    in a later turn): the instance ends Failed with an error naming that cause, bystanders
    unaffected. (The dispatcher used to abandon a first turn whose ack failed permanently
    (``_commit_infrastructure_failure``: empty fetched history) and the instance ended
    "poison: ... exceeded N attempts" - the cause was lost.) Since KV keys a turn writes are
    limited to 1 KiB on every provider (``MAX_KV_KEY_BYTES``), the KV key never reaches
    PostgreSQL: ``set_kv_value`` raises, and the instance fails naming that limit instead."""
    clock = SimClock()
    provider = PostgresProvider.connect_with_schema(pg_url, pg_schema("big1"), clock=clock)
    try:
        w = _World(provider, clock)
        w.runtime.register_activity("Echo", lambda ctx, x: x)

        def kv_first(ctx, key):
            ctx.set_kv_value(key, "v")
            return (yield ctx.schedule_activity("Echo", 1))

        def parent(ctx, x):
            return (yield ctx.schedule_sub_orchestration("Leaf", x))

        def leaf(ctx, x):
            return (yield ctx.schedule_activity("Echo", x))

        w.runtime.register_orchestration("KvFirst", kv_first)
        w.runtime.register_orchestration("Parent", parent)
        w.runtime.register_orchestration("Leaf", leaf)
        if case == "kv-key":
            victim = "kv-first"
            w.client.start_orchestration(victim, "KvFirst", _noise(3_000, seed=7))
        else:
            victim = "P" + _noise(2_671, seed=2672)
            w.client.start_orchestration(victim, "Parent", 5)  # accepted: the id itself fits
        w.client.start_orchestration("bystander", "Parent", 7)
        w.run()
        assert (w.client.get_status("bystander").status, w.client.get_status("bystander").output) == ("Completed", 7)
        st = w.client.get_status(victim)
        assert st.status == "Failed", st
        cause = "KV keys are limited to 1024 bytes" if case == "kv-key" else "too large"
        assert cause in (st.error or "") and not (st.error or "").startswith("poison"), st.error[-300:]
    finally:
        provider.close()


# --- 3. orphans ------------------------------------------------------------------------------------


def _orphan_provider(kind: str, clock: Any, request: Any) -> Any:
    if kind == "postgres":
        return PostgresProvider.connect_with_schema(request.getfixturevalue("pg_url"),
                                                    request.getfixturevalue("pg_schema")("orph"), clock=clock)
    return _make(kind, clock)


@pytest.mark.parametrize("orphans", [8, 10, 40, 200])
@pytest.mark.parametrize("message", ["cancel", "queue-message"])
@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_a_ready_instance_behind_new_orphans_is_fetched_at_once(kind, message, orphans, request):
    """Late cancels (parked) or queue messages (dropped, SPEC §6.2) for instances that do not
    exist, queued ahead of a real start: the first fetch deals with the orphans and returns the
    real instance (memory and SQLite do). PostgresProvider pages its candidates with OFFSET
    inside the fetch transaction while parking (UPDATE) or dropping (DELETE) moves the rows it
    has just examined out of the scanned range, so the next page skips as many unexamined rows
    as it handled: with e.g. 8, 10 or 200 fresh orphans ahead of it (40 happen to line up with
    the page sizes 8 and 128) the ready instance is skipped and the fetch returns None although
    it is ready (postgres.py fetch_orchestration_item, ``params["offset"] += params["limit"]``)."""
    clock = ConformanceClock()
    p = _orphan_provider(kind, clock, request)
    try:
        for i in range(orphans):
            if message == "cancel":
                p.enqueue_for_orchestrator(CancelInstance(instance=f"ghost-{i}", reason="late"))
            else:
                p.enqueue_for_orchestrator(qmsg(f"ghost-{i}"))
        p.enqueue_for_orchestrator(start_item("real"))
        item = fetch(p)
        assert item is not None and item.instance == "real", f"{orphans} orphans ahead: fetch gave {item}"
    finally:
        close = getattr(p, "close", None)
        if close is not None:
            close()


def test_a_postgres_fetch_does_not_walk_orphans_it_has_seen(pg_url, pg_schema):
    """As the SQLite probe's check for memory / SQLite: once a fetch has looked at the queued
    orphans (and returned None), later fetches - from this provider object or another one on
    the schema - read none of them as candidates and lock none of them: their cost does not
    grow with the number of orphans. (Fails with the OFFSET paging above: the first fetch
    examines only part of the 300 and the next fetches walk the rest.)"""
    clock = ConformanceClock()
    schema = pg_schema("orphwalk")
    p = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
    other = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
    looked: list[str] = []

    class Spy:
        def __init__(self, provider: PostgresProvider) -> None:
            real_probe, real_lock = provider._probe, provider._lock_batch

            def probe(op, query, params):
                rows = real_probe(op, query, params)
                if op == "fetch_orchestration_item":
                    looked.extend(str(r[0]) for r in rows)
                return rows

            def lock_batch(db, instance, *args, **kwargs):
                looked.append(instance)
                return real_lock(db, instance, *args, **kwargs)

            provider._probe, provider._lock_batch = probe, lock_batch

    try:
        for i in range(300):
            p.enqueue_for_orchestrator(CancelInstance(instance=f"ghost-{i}", reason="late"))
        assert fetch(p) is None
        Spy(p), Spy(other)
        clock.advance(1_000)
        assert fetch(p) is None and fetch(other) is None
        p.enqueue_for_orchestrator(start_item("real"))
        assert fetch(other).instance == "real"
        walked = sorted({x for x in looked if "ghost" in x})
        assert walked == [], f"{len(walked)} orphans walked again, e.g. {walked[:5]}"
        assert p.get_queue_depths().orchestrator_queue == 300  # kept (parked), "real" is locked
    finally:
        p.close()
        other.close()


@pytest.mark.realtime
def test_late_events_for_deleted_instances_do_not_slow_a_postgres_runtime(pg_url, pg_schema):
    """Retention deleted the finished instances; webhooks keep raising events and cancels for
    them (2,000 stray messages): 100 hello orchestrations take the same order of time as
    without them (at most 4x + 0.5 s), and the strays stay parked (not lost before the
    retention period)."""
    from duroxide_sim.runtime.realtime import SystemClock

    provider = PostgresProvider.connect_with_schema(pg_url, pg_schema("late"), clock=SystemClock())
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=20))
    rt.register_orchestration("Hello", lambda ctx, x: x)
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
        client.delete_instance_bulk()
        assert provider.list_instances() == []
        for i in range(2_000):
            target = f"a{i % 100}" if i % 2 else f"order-{i}"
            if i % 5:
                client.raise_event(target, "payment-webhook", {"n": i})
            else:
                client.cancel_instance(target, "late cancel")
        loaded = hellos("b")
        assert loaded <= 4 * baseline + 0.5, f"{loaded:.2f} s with 2,000 strays vs {baseline:.2f} s without"
        assert provider.get_queue_depths().orchestrator_queue == 2_000
    finally:
        rt.shutdown(0)
        provider.close()


def test_orphan_expiry_and_parking_stay_in_their_schema(pg_url, pg_schema):
    """Two schemas of one database, each with orphans: the retention sweep of one deletes only
    its own expired orphans; the other schema's (same instance ids) stay and reach their late
    start; a start in one schema never carries the other's messages."""
    clock = ConformanceClock()
    a = PostgresProvider.connect_with_schema(pg_url, pg_schema("orphA"), clock=clock)
    b = PostgresProvider.connect_with_schema(pg_url, pg_schema("orphB"), clock=clock)
    try:
        a.enqueue_for_orchestrator(ExternalRaised(instance="x", name="e", data='"a"'))
        assert fetch(a) is None  # parked in A
        clock.advance(ORPHAN_RETENTION_MS + ORPHAN_SWEEP_INTERVAL_MS + 5)
        b.enqueue_for_orchestrator(ExternalRaised(instance="x", name="e", data='"b"'))
        assert fetch(b) is None  # parked in B (B's first sweep ran: nothing of B was old)
        assert fetch(a) is None  # A's sweep: A's orphan expired
        assert a.get_queue_depths().orchestrator_queue == 0
        assert b.get_queue_depths().orchestrator_queue == 1
        b.enqueue_for_orchestrator(start_item("x"))
        item = fetch(b)
        assert item.instance == "x" and [type(m).__name__ for m in item.messages] == ["ExternalRaised",
                                                                                     "StartOrchestration"]
        assert item.messages[0].data == '"b"'
        a.enqueue_for_orchestrator(start_item("x"))
        assert [type(m).__name__ for m in fetch(a).messages] == ["StartOrchestration"]
    finally:
        a.close()
        b.close()


# --- 4. lock renewal ------------------------------------------------------------------------------


def _rt(pg_url: str, schema: str, cls: type = PostgresProvider, **opts: Any) -> tuple[PostgresProvider, Runtime]:
    from duroxide_sim.runtime.realtime import SystemClock

    provider = cls.connect_with_schema(pg_url, schema, clock=SystemClock())
    base: dict[str, Any] = dict(dispatcher_poll_interval_ms=5, activity_cancellation_grace_period_ms=500)
    base.update(opts)
    return provider, Runtime(provider, RuntimeOptions(**base))


@pytest.mark.realtime
def test_activity_longer_than_a_2001_ms_worker_lock_runs_once_on_postgres(pg_url, pg_schema):
    """worker_lock_timeout_ms=2001 and a 2.6 s activity: renewed in time (over PostgreSQL round
    trips), run once, Completed."""
    provider, rt = _rt(pg_url, pg_schema("renew1"), worker_lock_timeout_ms=2_001)
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
    time.sleep(0.05)
    try:
        client = Client(provider)
        client.start_orchestration("long", "O", "done")
        st = client.wait_for_orchestration("long", 7_000)
        assert ((st.status, st.output), len(runs)) == (("Completed", "done"), 1)
    finally:
        rt.shutdown(0)
        provider.close()


@pytest.mark.realtime
def test_turn_longer_than_a_2001_ms_orchestrator_lock_commits_on_postgres(pg_url, pg_schema):
    """orchestrator_lock_timeout_ms=2001 and a first turn computing for 2.6 s: the instance lock
    row is renewed during the turn and the ack commits (turn run once)."""
    provider, rt = _rt(pg_url, pg_schema("renew2"), orchestrator_lock_timeout_ms=2_001)
    calls: list[int] = []
    rt.register_activity("A", lambda ctx, x: x)

    @rt.register_orchestration("Heavy")
    def heavy(ctx, x):
        calls.append(1)
        time.sleep(2.6)
        return (yield ctx.schedule_activity("A", x))

    rt.start()
    time.sleep(0.05)
    try:
        client = Client(provider)
        client.start_orchestration("heavy", "Heavy", 5)
        st = client.wait_for_orchestration("heavy", 7_000)
        assert (st.status, st.output, len(calls)) == ("Completed", 5, 1)
    finally:
        rt.shutdown(0)
        provider.close()


class _RenewOnDeadConnection(PostgresProvider):
    """A connection drop that hits the first work-item renewal: every server backend of this
    provider is terminated (pg_terminate_backend), and the renewal fails with the retryable
    ProviderError the provider raises on a dropped connection (raised here directly, so the
    renewal fails whichever pool connection it would have drawn); later renewals run normally."""

    def _configure_connection(self, conn: Any) -> None:
        super()._configure_connection(conn)
        self.__dict__.setdefault("pids", set()).add(conn.info.backend_pid)

    def renew_work_item_lock(self, lock_token: str, extend_ms: int) -> None:
        failures = self.__dict__.setdefault("renew_failures", [])
        if failures:
            return super().renew_work_item_lock(lock_token, extend_ms)
        with psycopg.connect(self._url, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
                          (sorted(self.__dict__.get("pids", ())),))
        exc = ProviderError(f"renew_work_item_lock: PostgreSQL connection to {self._where} failed: terminating "
                            "connection due to administrator command", operation="renew_work_item_lock",
                            retryable=True)
        failures.append(exc)
        raise exc


@pytest.mark.realtime
def test_one_renewal_lost_to_a_dropped_connection_does_not_run_the_activity_twice(pg_url, pg_schema):
    """A server connection drops once while a long activity runs (a failover, an idle-session
    killer, a proxy restart): its lock renewal fails with a *retryable* ProviderError. The
    renewer says "will retry", but schedules the retry a whole renewal period later
    (runtime/realtime.py ThreadRenewer._run: ``next_due = now + period`` after any
    ProviderError), which is after the lock's expiry for every lock timeout (2001 ms: renewal at
    1,751 ms, retry at 3,502 ms; the 30 s default: 25 s, then 50 s). So one transient error
    loses the lease: the lock lapses under the running activity, its ack fails ("Work item
    lock expired") and the activity runs a second time. Expected: the renewal is retried while
    the lock is still valid; the activity runs once."""
    provider, rt = _rt(pg_url, pg_schema("renew3"), cls=_RenewOnDeadConnection, worker_lock_timeout_ms=2_001)
    runs: list[float] = []
    cancelled: list[bool] = []

    @rt.register_activity("Long")
    def long(ctx, x):
        runs.append(time.monotonic())
        time.sleep(2.6)
        cancelled.append(ctx.is_cancelled())
        return x

    @rt.register_orchestration("O")
    def orch(ctx, x):
        return (yield ctx.schedule_activity("Long", x))

    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration("long", "O", "done")
        try:
            st = client.wait_for_orchestration("long", 8_000)
            outcome = (st.status, st.output)
        except DuroxideError as exc:
            outcome = (type(exc).__name__, str(exc))
        failures = provider.__dict__.get("renew_failures", [])
        assert failures and all(f.retryable for f in failures), failures
        assert (outcome, len(runs), cancelled[:1]) == (("Completed", "done"), 1, [False]), \
            f"outcome {outcome}, activity ran {len(runs)} times, cancelled: {cancelled}"
    finally:
        rt.shutdown(0)
        provider.close()


# --- 5. two schemas in one database ------------------------------------------------------------------


@pytest.fixture
def exact_schemas(pg_url):
    from tests.providers.conftest import drop_schemas

    made: list[str] = []

    def keep(name: str) -> str:
        made.append(name)
        return name

    yield keep
    drop_schemas(pg_url, made)


@pytest.mark.realtime
def test_two_schemas_differing_in_case_are_isolated_stores_with_their_own_wakeups(pg_url, exact_schemas):
    """Schemas ``Tenant_<uid>`` and ``tenant_<uid>`` (and a pair long enough that the NOTIFY
    channel name is hashed): a commit in one wakes listeners of that schema only; two runtimes,
    one per schema, run the same instance ids at the same time with different code and each
    store ends with its own outputs, histories and KV only."""
    uid = f"{os.getpid()}_{random.Random().randrange(10**6)}"
    short = [exact_schemas(f"Tenant_{uid}"), exact_schemas(f"tenant_{uid}")]
    long_ = [exact_schemas(f"Tenant_{uid}_" + "x" * 36), exact_schemas(f"tenant_{uid}_" + "x" * 36)]
    from duroxide_sim.runtime.realtime import SystemClock

    clock = SystemClock()
    opened: list[PostgresProvider] = []
    try:
        for a_name, b_name in (short, long_):
            a, b = (PostgresProvider.connect_with_schema(pg_url, n, clock=clock) for n in (a_name, b_name))
            a_watch, b_watch = (PostgresProvider.connect_with_schema(pg_url, n, clock=clock) for n in (a_name, b_name))
            opened += [a, b, a_watch, b_watch]
            woke: dict[str, list[str]] = {"a": [], "b": []}
            a_watch.add_wakeup_listener(woke["a"].append)
            b_watch.add_wakeup_listener(woke["b"].append)
            a.enqueue_for_orchestrator(start_item("x"))
            deadline = time.monotonic() + 5
            while not woke["a"] and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)
            assert "orchestrator" in woke["a"] and woke["b"] == [], (a_name, woke)
            assert b.list_instances() == [] and b.get_queue_depths().orchestrator_queue == 0

        providers = [PostgresProvider.connect_with_schema(pg_url, n, clock=clock) for n in short]
        opened += providers
        runtimes = []
        for tenant, provider in zip("AB", providers, strict=True):
            rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=10))
            rt.register_activity("Who", lambda ctx, x, t=tenant: f"{t}:{x}")

            def o(ctx, x):
                who = yield ctx.schedule_activity("Who", x)
                ctx.set_kv_value("who", who)
                yield ctx.schedule_timer(5)
                return who

            rt.register_orchestration("O", o)
            runtimes.append(rt)
        for rt in runtimes:
            rt.start()
        try:
            clients = [Client(p) for p in providers]
            for i in range(15):
                for c in clients:
                    c.start_orchestration(f"i{i}", "O", i)
            for tenant, c, p in zip("AB", clients, providers, strict=True):
                for i in range(15):
                    st = c.wait_for_orchestration(f"i{i}", 20_000)
                    assert (st.status, st.output) == ("Completed", f"{tenant}:{i}")
                    assert c.get_kv_value(f"i{i}", "who") == f"{tenant}:{i}"
                    assert check_well_formed(f"i{i}", 1, p.read(f"i{i}")) == []
                assert set(p.list_instances()) - {"x"} == {f"i{i}" for i in range(15)}
            assert "x" not in providers[1].list_instances()
        finally:
            for rt in runtimes:
                rt.shutdown(1_000)
    finally:
        for p in opened:
            p.close()


# --- 6. hostile text and limits: PostgreSQL ends where memory and SQLite end --------------------------

_BAD = os.fsdecode(b"report-\xff.csv")  # a lone surrogate, as os.fsdecode / surrogateescape give
_EVENT = "évent ✓ \u202eright-to-left"
_QUEUE = "队列 'q' %s"
HOSTILE_IDS = [
    unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café"), "Case", "case", "trail ", "trail",
    "🎉 party", "\u202eevil", "tab\tand\nnewline", "it's %s %(x)s {}", "looks:sub::1", "L" + _noise(2_399, 24),
]  # ("x::sub::1" itself is refused at the client: the reserved marker of auto child ids)


def _hostile_run(provider: Any, clock: SimClock) -> dict[str, Any]:
    w = _World(provider, clock)
    w.runtime.register_activity("Echo", lambda ctx, x: x)
    status_text = ("s\x00✓" * 40_000)[: 262_144 // 4]  # multibyte and NUL, under the 256 KiB limit
    big_value = "\x00nul " + "v" * (65_536 - 5)
    keys = ["ключ", "🔑", "a\tb", "%s", "'; DROP TABLE kv_store; --", "k" * 100]

    def hostile(ctx, inp):
        ctx.set_custom_status(status_text)
        for n, key in enumerate(keys):
            ctx.set_kv_value(key, f"value {n} \x00 ü")
        ctx.set_kv_value("big", big_value)
        echoed = yield ctx.schedule_activity("Echo", {"nul": "a\x00b", "bad": _BAD, "id": ctx.instance_id})
        ev = yield ctx.wait_for_event(_EVENT)
        q = yield ctx.dequeue_event(_QUEUE)
        if inp == "fail":
            raise ValueError(f"failed on {_BAD} with \x00 inside")
        return {"echoed": echoed, "ev": ev, "q": q, "me": ctx.instance_id}

    def bad_status(ctx, _):
        ctx.set_custom_status(f"processing {_BAD}")
        return "ok"

    def bad_kv(ctx, _):
        ctx.set_kv_value("file", _BAD)
        return "ok"

    def near_limit(ctx, n):
        return "z" * n

    for name, fn in (("Hostile", hostile), ("BadStatus", bad_status), ("BadKv", bad_kv), ("NearLimit", near_limit)):
        w.runtime.register_orchestration(name, fn)
    for n, inst in enumerate(HOSTILE_IDS):
        w.client.start_orchestration(inst, "Hostile", "fail" if n % 4 == 3 else n)
    w.client.start_orchestration("bad-status", "BadStatus", None)
    w.client.start_orchestration("bad-kv", "BadKv", None)
    w.client.start_orchestration("near-limit", "NearLimit", 16 * 1024 * 1024 - 64)
    w.client.start_orchestration("over-limit", "NearLimit", 16 * 1024 * 1024 + 64)
    w.run()
    for inst in HOSTILE_IDS:
        w.client.enqueue_event(inst, _QUEUE, {"q": "\x00" + inst})
        w.client.raise_event(inst, _EVENT, ["ev", "\x00", inst])
    w.run()
    out: dict[str, Any] = {}
    for inst in sorted(provider.list_instances()):
        st = w.client.get_status(inst)
        out[inst] = {
            "status": (st.status, st.output if inst != "near-limit" else len(st.output or ""), st.error,
                       st.custom_status),
            "kv": w.client.get_kv_all_values(inst),
            "executions": provider.list_executions(inst),
            "history": [repr(e) for x in provider.list_executions(inst) for e in provider.read_with_execution(inst, x)
                        if inst != "near-limit"],
        }
    out["_mismatches"] = _status_mismatches(provider)
    out["_queues"] = (provider.get_queue_depths().orchestrator_queue, provider.get_queue_depths().worker_queue)
    return out


def test_hostile_text_and_limits_end_as_on_memory_and_sqlite(pg_url, pg_schema, tmp_path):
    """Instance ids that differ only by Unicode normalisation, case or a trailing space;
    emoji, RTL override, tabs and newlines, placeholders, ``::sub::`` and a 2,400-byte
    incompressible id; custom status (256 KiB, NUL and multibyte), KV keys and values (NUL, a
    64 KiB value), event and queue names with unicode; activity inputs with NUL and a lone
    surrogate; errors with both; custom status / KV value with a lone surrogate; outputs just
    under and over the 16 MiB payload limit. PostgreSQL gives exactly the outcomes, KV,
    executions and histories memory and SQLite give, and every instance is distinct."""
    results = {}
    for kind in ("memory", "sqlite", "postgres"):
        clock = SimClock()
        provider = _make(kind, clock, pg_url, pg_schema("hostile") if kind == "postgres" else None,
                         tmp_path if kind == "sqlite" else None)
        try:
            results[kind] = _hostile_run(provider, clock)
        finally:
            close = getattr(provider, "close", None)
            if close is not None:
                close()
    ref = results["memory"]
    assert set(HOSTILE_IDS) <= set(ref) and len(set(HOSTILE_IDS)) == len(HOSTILE_IDS)
    done = [i for i in HOSTILE_IDS if ref[i]["status"][0] == "Completed"]
    assert len(done) == 9 and all(ref[i]["status"][1]["me"] == i for i in done), {i: ref[i]["status"] for i in ref
                                                                                    if not i.startswith("_")}
    assert ref["_mismatches"] == [] and ref["_queues"] == (0, 0)
    for kind in ("sqlite", "postgres"):
        got = results[kind]
        assert sorted(got) == sorted(ref), (kind, set(got) ^ set(ref))
        diff = {i: (ref[i], got[i]) for i in ref if got[i] != ref[i]}
        for inst, (a, b) in diff.items():
            if isinstance(a, dict):
                fields = {f: (repr(a[f])[:300], repr(b[f])[:300]) for f in a if a[f] != b[f]}
                if "history" in fields:
                    pairs = [(x, y) for x, y in zip(a["history"], b["history"], strict=False) if x != y]
                    fields["history"] = (len(a["history"]), len(b["history"]), [(x[:200], y[:200]) for x, y in pairs[:2]])
                diff[inst] = fields  # type: ignore[assignment]
        assert not diff, f"{kind} differs from memory: {diff}"


# --- 7. one mixed workload on memory, SQLite and PostgreSQL ------------------------------------------


def _mixed_run(provider: Any, clock: SimClock) -> tuple:
    w = _World(provider, clock)
    rt, client = w.runtime, w.client
    rt.register_activity("Hello", lambda ctx, x: f"hi {x}")

    def boom(ctx, x):
        raise ValueError(f"boom {x}")

    rt.register_activity("Boom", boom)

    def child(ctx, x):
        yield ctx.schedule_timer(1_000 + x)
        if x == 3:
            raise RuntimeError("child 3 fails")
        return x * 2

    def parent(ctx, x):
        ctx.set_kv_value("k", f"v{x}")
        ctx.set_custom_status(f"round {x} ✓")
        a = yield ctx.schedule_activity("Hello", x)
        kids = yield ctx.all([ctx.schedule_sub_orchestration("Child", i) for i in range(5)])
        e = yield ctx.wait_for_event("go")
        q = yield ctx.dequeue_event("q")
        won = yield ctx.race(ctx.wait_for_event("never"), ctx.schedule_timer(500))
        try:
            yield ctx.schedule_activity_with_retry("Boom", x, {"max_attempts": 2})
            b = "no"
        except Exception as exc:  # noqa: BLE001
            b = str(exc).splitlines()[0][:60]
        if x < 2:
            yield ctx.continue_as_new(x + 1)
        return [a, [sorted(k) for k in kids], e, q, repr(won), b]

    def victim(ctx, x):
        yield ctx.schedule_activity("Hello", x)
        yield ctx.wait_for_event("never")

    rt.register_orchestration("Child", child)
    rt.register_orchestration("Parent", parent)
    rt.register_orchestration("Victim", victim)
    client.start_orchestration("p1", "Parent", 0)
    client.start_orchestration("vé", "Victim", 1)
    client.start_orchestration("dup", "Victim", 2)
    client.start_orchestration("dup", "Parent", 9)  # a second start of the same id, before any fetch
    client.raise_event("ghost", "x", 1)
    for r in range(3):
        w.run()
        client.raise_event("p1", "go", f"ok{r}")
        client.enqueue_event("p1", "q", f"q{r}")
        if r == 0:
            client.cancel_instance("vé", "stop")
    st = client.wait_for_orchestration("p1", 10**9)
    w.run()
    histories = {i: [[repr(e) for e in provider.read_with_execution(i, x)] for x in provider.list_executions(i)]
                 for i in sorted(provider.list_instances())}
    victim_st = client.get_status("vé")
    depths = provider.get_queue_depths()
    dup = client.get_status("dup")
    return (st.status, st.output, victim_st.status, victim_st.error, client.get_kv_value("p1", "k"),
            provider.get_custom_status("p1", 0), clock.now_ms(), (depths.orchestrator_queue, depths.worker_queue),
            (dup.status, dup.output, dup.error), provider.list_instances(), histories)


def test_one_mixed_workload_is_identical_on_memory_sqlite_and_postgres(pg_url, pg_schema, tmp_path):
    """Activities, a failing activity with retry, timers, a 5-way sub-orchestration fan-out with
    a failing child, positional and queued events, a race, custom status, KV, continue-as-new,
    a client cancel, two starts of one id, a stray event for an unknown instance - the real
    runtime on a SimClock: same outputs, statuses, KV, custom status, virtual end time, queue
    depths, instance listing order and event-by-event histories on all three providers."""
    results = {}
    for kind in ("memory", "sqlite", "postgres"):
        clock = SimClock()
        provider = _make(kind, clock, pg_url, pg_schema("mixed") if kind == "postgres" else None,
                         tmp_path if kind == "sqlite" else None)
        try:
            results[kind] = _mixed_run(provider, clock)
            if kind != "memory":
                provider._check()
        finally:
            close = getattr(provider, "close", None)
            if close is not None:
                close()
    ref = results["memory"]
    assert ref[:3] == ("Completed", ref[1], "Failed") and ref[1][0] == "hi 2" and ref[1][2:4] == ["ok2", "q2"], ref[:6]
    assert ref[7] == (1, 0)  # the stray event stays parked
    for kind in ("sqlite", "postgres"):
        got = results[kind]
        assert got[:10] == ref[:10], (kind, got[:10], ref[:10])  # list_instances in the same order too
        assert sorted(got[10]) == sorted(ref[10]), kind
        for inst in ref[10]:
            assert got[10][inst] == ref[10][inst], (kind, inst)


# --- 8. work that kills its process on every delivery ----------------------------------------------------


@pytest.mark.realtime
@pytest.mark.parametrize("orchestration", ["KillerTurn", "KillerActivity"])
def test_work_that_kills_its_process_on_every_delivery_is_poisoned_on_postgres(pg_url, pg_schema, tmp_path,
                                                                                orchestration):
    """A turn (or an activity) that takes its whole runtime process down on every delivery:
    the attempt is counted in the database at fetch, so after ``max_attempts`` deliveries the
    poison rule fails it and restarted processes carry on with other instances instead of
    crash-looping (a bystander started once it is poisoned completes)."""
    schema = pg_schema("poison")
    effects = tmp_path / "effects.db"
    pw.create_effects_db(str(effects))
    provider = PostgresProvider.connect_with_schema(pg_url, schema)
    client = Client(provider)
    client.start_orchestration("poison-me", orchestration, None)
    args = ("--orch-lock-ms", "600", "--worker-lock-ms", "800", "--poll-ms", "10", "--max-attempts", "2")
    procs: list[Proc] = []
    deaths = 0
    started: list[str] = []

    def both_done() -> bool:
        if not client.get_status("poison-me").is_terminal:
            return False
        if not started:
            # Started once the killer is poisoned: with max_attempts=2, work of another
            # instance in flight in two of the dying processes was poisoned as collateral (each
            # kill takes the whole process down), which is not what this test is about.
            client.start_orchestration("bystander", "Plain", 3)
            started.append("bystander")
        return client.get_status("bystander").is_terminal

    try:
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if both_done():
                break
            p = Proc(pg_url, schema, effects, tmp_path, f"k{len(procs)}", *args)
            procs.append(p)
            p.wait_ready(may_die=True)
            while p.proc.poll() is None and time.monotonic() < deadline:
                if both_done():
                    break
                time.sleep(0.02)
            deaths += p.proc.poll() is not None
        for p in procs:
            if p.proc.poll() is None:
                assert p.stop() == 0, p.stderr_tail()
        st = client.get_status("poison-me")
        assert st.status == "Failed" or (st.status == "Completed" and "activity failed" in str(st.output)), st
        assert "oison" in (st.error or str(st.output)), st
        assert 1 <= deaths <= 4, deaths
        bystander = client.get_status("bystander")
        assert (bystander.status, bystander.output) == ("Completed", pw.bump_value(3, 7))
        assert _status_mismatches(provider) == [] and _history_problems(provider) == []
    finally:
        for p in procs:
            if p.proc.poll() is None:
                p.kill()
        provider.close()


# --- 9. opening -----------------------------------------------------------------------------------------


def _variant(base: str, *, password: str | None = None, dbname: str | None = None, user: str | None = None,
             port: str | None = None, query: str = "") -> str:
    parts = conninfo_to_dict(base)
    return (f"postgresql://{user or parts['user']}:{password or parts['password']}@{parts.get('host', '127.0.0.1')}:"
            f"{port or parts.get('port', '5432')}/{dbname or parts['dbname']}{query}")


BAD_OPENS = {
    "wrong-password": dict(password="Wr0ng-Pw-x9"),
    "unknown-user": dict(user="no_such_role_x", password="Wr0ng-Pw-x9"),
    "missing-database": dict(dbname="no_such_db_probe", password="Wr0ng-Pw-x9"),
    "bad-sslmode": dict(password="Wr0ng-Pw-x9", query="?sslmode=bogus"),
    "port-out-of-range": dict(password="Wr0ng-Pw-x9", port="99999"),
    "non-integer-option": dict(password="Wr0ng-Pw-x9", query="?keepalives=abc"),
}


@pytest.mark.parametrize("case", list(BAD_OPENS))
def test_a_misconfigured_url_is_a_permanent_error_and_creates_nothing(pg_url, pg_schema, case):
    """A URL that can never work - wrong password, unknown role, missing database, and
    malformed connection options libpq refuses before connecting (``sslmode=bogus``, port
    99999, ``keepalives=abc``): a ProviderError that is NOT retryable (retrying a typo forever
    helps nobody), names host/port/database, never echoes the password, and creates no
    schema. (The option errors come back retryable today: ``PostgresProvider._bootstrap``
    counts only auth / does-not-exist failures as permanent; psycopg reports these as
    "connection is bad: invalid ... value" with no SQLSTATE.)"""
    schema = pg_schema("nothing")
    url = _variant(pg_url, **BAD_OPENS[case])
    began = time.monotonic()
    with pytest.raises(ProviderError) as err:
        PostgresProvider.connect_with_schema(url, schema, connect_timeout_s=3)
    text = str(err.value)
    assert time.monotonic() - began < 10
    assert "Wr0ng-Pw-x9" not in text and "Wr0ng-Pw-x9" not in repr(err.value.__dict__)
    assert err.value.operation == "open" and "PostgreSQL" in text
    with _admin(pg_url) as conn:
        assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchall() == []
    assert err.value.retryable is False, f"{case}: retryable error for a URL that can never work: {text}"


def test_quoted_mixed_case_schema_round_trips_and_is_not_its_lowercase(pg_url, exact_schemas):
    """``connect_with_schema(url, 'Mixed "Q" Case')`` creates exactly that schema (quoted, case
    kept); reopening it finds the data; the lower-case spelling is another, empty store."""
    uid = f"{os.getpid()}_{random.Random().randrange(10**6)}"
    name = exact_schemas(f'Mixed "Q" Case {uid}')
    lower = exact_schemas(name.lower())
    clock = ConformanceClock()
    with PostgresProvider.connect_with_schema(pg_url, name, clock=clock) as p:
        p.enqueue_for_orchestrator(start_item("one"))
    with PostgresProvider.connect_with_schema(pg_url, name, clock=clock) as p:
        assert p.get_queue_depths().orchestrator_queue == 1
    with PostgresProvider.connect_with_schema(pg_url, lower, clock=clock) as p:
        assert p.get_queue_depths().orchestrator_queue == 0
    with _admin(pg_url) as conn:
        found = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname ILIKE %s",
                                            (f"%{uid}",)).fetchall()}
    assert found == {name, lower}


# --- 10. shutdown with work in flight --------------------------------------------------------------------


@pytest.mark.realtime
def test_shutdown_mid_continue_as_new_and_fan_out_then_a_new_runtime_finishes_on_postgres(pg_url, pg_schema,
                                                                                         tmp_path):
    """shutdown(0) while continue-as-new chains, sub-orchestration fan-outs and timers are in
    flight; a new Runtime on a new provider object finishes every instance with the fault-free
    outcome, well-formed histories and each side effect once; no lock rows remain."""
    schema = pg_schema("shut")
    effects = tmp_path / "effects.db"
    pw.create_effects_db(str(effects))
    opts = RuntimeOptions(dispatcher_poll_interval_ms=5, orchestrator_lock_timeout_ms=1_000,
                          worker_lock_timeout_ms=1_500, activity_cancellation_grace_period_ms=300)
    p1 = PostgresProvider.connect_with_schema(pg_url, schema)
    rt1 = Runtime(p1, opts)
    pw.register(rt1, str(effects))
    rt1.start()
    client = Client(p1)
    for n in range(6):
        client.start_orchestration(f"can-{n}", "CanChain", {"n": n, "i": 0, "acc": 0})
        client.start_orchestration(f"fan-{n}", "Fan", n)
    time.sleep(0.3)
    rt1.shutdown(0)
    unfinished = [i for i in p1.list_instances() if not client.get_status(i).is_terminal]
    p1.close()

    p2 = PostgresProvider.connect_with_schema(pg_url, schema)
    rt2 = Runtime(p2, opts)
    pw.register(rt2, str(effects))
    rt2.start()
    try:
        c2 = Client(p2)
        for n in range(6):
            assert c2.wait_for_orchestration(f"can-{n}", 20_000).output == pw.expected_can(n)
            assert c2.wait_for_orchestration(f"fan-{n}", 20_000).output == pw.expected_fan(n)
        problems = _history_problems(p2)
        assert not problems, problems[:10]
    finally:
        rt2.shutdown(2_000)
    with _admin(pg_url) as admin:
        admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        assert admin.execute("SELECT COUNT(*) FROM instance_locks").fetchone()[0] == 0
    p2._check()
    p2.close()
    assert unfinished, "shutdown came too late to interrupt anything"
    conn = sqlite3.connect(effects)
    counts = conn.execute("SELECT COUNT(*), COUNT(DISTINCT instance_id || '/' || key) FROM effects").fetchone()
    conn.close()
    assert counts == (6 * pw.CAN_LEN + 6 * pw.FAN,) * 2


# --- 11. sessions across runtimes -------------------------------------------------------------------------


@pytest.mark.realtime
def test_a_session_is_served_by_one_runtime_while_its_lock_lives(pg_url, pg_schema):
    """Two runtimes (own provider objects, own worker_node_id) on one schema; 40 instances run
    3 activities each on one of 5 sessions: every session's activities run on one runtime only
    (SPEC §15.3: one owner per live session), all instances complete."""
    from duroxide_sim.runtime.realtime import SystemClock

    schema = pg_schema("sess")
    ran: list[tuple[str, str]] = []
    runtimes, providers = [], []
    for node in ("node-a", "node-b"):
        provider = PostgresProvider.connect_with_schema(pg_url, schema, clock=SystemClock())
        rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, worker_node_id=node, worker_concurrency=4,
                                              session_lock_timeout_ms=3_000, session_lock_renewal_buffer_ms=1_000))

        def act(ctx, x, node=node):
            ran.append((x["s"], node))
            time.sleep(0.01)
            return x["i"]

        def orch(ctx, x):
            total = 0
            for k in range(3):
                total += yield ctx.schedule_activity_on_session("A", {"s": x["s"], "i": k}, x["s"])
            return total

        rt.register_activity("A", act)
        rt.register_orchestration("O", orch)
        runtimes.append(rt)
        providers.append(provider)
    for rt in runtimes:
        rt.start()
    try:
        client = Client(providers[0])
        for i in range(40):
            client.start_orchestration(f"i{i}", "O", {"s": f"s{i % 5}"})
        for i in range(40):
            assert client.wait_for_orchestration(f"i{i}", 30_000).output == 3
    finally:
        for rt in runtimes:
            rt.shutdown(1_000)
        for p in providers:
            p.close()
    owners: dict[str, set[str]] = {}
    for session, node in ran:
        owners.setdefault(session, set()).add(node)
    assert len(ran) == 120 and all(len(nodes) == 1 for nodes in owners.values()), owners


# --- 12. the server restarts under two runtime processes and a waiting client process -------------------


@pytest.fixture
def private_server():
    from tests.pg_server import PgServer

    server = PgServer().start()
    yield server
    server.destroy()


@pytest.mark.realtime
def test_server_restart_under_runtime_processes_and_a_waiting_client_process(private_server, tmp_path):
    """A private server is stopped (pg_ctl -m fast: every connection dropped) for 2 s and
    started again while two runtime processes have work in flight and a client process is
    waiting (wait_for_orchestration) on every instance: each process reconnects on its own
    (pool and LISTEN), the client's waits ride over the outage, every instance ends with its
    fault-free outcome, each turn committed once, each side effect once, no locks left."""
    url, schema = private_server.url, "restart"
    PostgresProvider.connect_with_schema(url, schema).close()
    effects = tmp_path / "effects.db"
    pw.create_effects_db(str(effects))
    n_can, n_fan, n_wait, n_victim = 6, 3, 3, 1
    starts: list[list[Any]] = []
    starts += [[f"can-{n}", "CanChain", {"n": n, "i": 0, "acc": 0}] for n in range(n_can)]
    starts += [[f"fan-{n}", "Fan", n] for n in range(n_fan)]
    starts += [[f"wait-{n}", "Waiter", n] for n in range(n_wait)]
    starts += [[f"victim-{n}", "Victim", n] for n in range(n_victim)]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"starts": starts, "signal_timeout_s": 30, "wait_timeout_ms": 60_000,
                                "waves": 2, "wave_gap_s": 0.2}))
    out = tmp_path / "client.json"
    signalled = Path(str(out) + ".signalled")
    every = [Proc(url, schema, effects, tmp_path, f"r{k}") for k in range(2)]
    client_err = tmp_path / "client.stderr"
    with open(client_err, "wb") as err:
        client_proc = subprocess.Popen(
            [sys.executable, "-m", "tests.providers.pg_procs.probe_pg_worker", "client", url, schema,
             "--plan", str(plan), "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    try:
        for w in every:
            w.wait_ready()
        deadline = time.monotonic() + 30
        while not signalled.exists():
            assert client_proc.poll() is None, client_err.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the client process never finished signalling"
            time.sleep(0.02)
        with _admin(url) as admin:
            admin.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            finished_before = admin.execute(
                "SELECT COUNT(*) FROM instances i JOIN executions e ON e.instance_id = i.instance_id AND "
                "e.execution_id = i.current_execution_id WHERE e.status IN ('Completed', 'Failed')").fetchone()[0]
        private_server.stop("fast")
        time.sleep(2.0)
        assert client_proc.poll() is None, "the client process gave up during the outage:\n" + \
            client_err.read_text(errors="replace")[-3000:]
        private_server.start()
        client_proc.wait(90)
        assert client_proc.returncode == 0, client_err.read_text(errors="replace")[-3000:]
        assert [w.stop() for w in every] == [0, 0], [w.stderr_tail() for w in every]
    finally:
        for w in every:
            if w.proc.poll() is None:
                w.kill()
        if client_proc.poll() is None:
            client_proc.kill()
            client_proc.wait(10)
    assert finished_before < len(starts), "everything had finished before the server stopped"
    _verify_process_run(url, schema, out, every, effects, n_can, n_fan, n_wait, n_victim)
