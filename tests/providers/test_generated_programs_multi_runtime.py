"""Generative probe: several production ``Runtime``s sharing one store run batches of generated
orchestration programs (``tests/sim/test_generated_programs.py``'s DSL, interpreter and pure
reference evaluator), with real threads and the wall clock.

Properties (each example: a batch of 4-8 programs, each run in generator and ``async def`` style):

a. two or three runtimes on one PostgreSQL schema (drawn: concurrency 2-4, instance cache off /
   1 / 2 / default per runtime, a split deployment - orchestrations on one runtime, activities on
   another -, queue messages sent before the instance exists) end every instance (roots,
   detached children, raced children) with the evaluator's outcome; every history is well
   formed (``check_well_formed`` plus: no child instance scheduled twice in one execution); no
   worker item is left behind; a client polling the statuses never sees one go back (terminal
   to anything else, a custom status version going down);
b. the same with two runtimes on one SQLite file (one ``SqliteProvider`` each);
c. a runtime shut down (timeout 0-50 ms) once it has run 1-8 activities, another (or the same
   object, restarted) taking over, with or without a second runtime running throughout, sync or
   ``async def`` activities, fast or slow (PostgreSQL and SQLite); a subprocess runtime
   SIGKILLed mid-batch (SQLite and PostgreSQL); a subprocess runtime frozen (SIGSTOP) past its
   locks while another finishes the batch, then thawed: every instance still ends with the
   evaluator's outcome, every history is well formed, every activity outcome in history was
   produced by at least one execution;
d. without faults (a, b, e) every activity scheduling ran exactly once (counted per (instance,
   execution, schedule id) across all runtimes); with locks of 300 ms and 400 ms activities
   (lock expiry invited on purpose) outcomes are unchanged and re-runs allowed;
e. programs that end waiting for good, cancelled by the client at 0-80 ms on two runtimes: every
   root ends cancelled (or with the program's own earlier failure), every instance of every tree
   ends.

Awaited events are re-sent every 20 ms until the instance ends (positional events raised before
the subscription is persisted are lost, SPEC §6.1); queue messages are enqueued once the instance
exists, or right after its start (drawn).

``GPMR_EXAMPLES=N`` sets the examples per property (default 12: the file takes ~75-90 s);
``GPMR_DEBUG=1`` prints each batch. Run as a script (``python -m
tests.providers.test_generated_programs_multi_runtime child DB LOG SCHEMA SLOW``) it is the
subprocess runtime of (c).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.sim.checkers import check_well_formed
from tests.sim.test_generated_programs import (
    instance_problems,
    ACTS,
    LIVE_TIMERS,
    act_fn,
    evaluate,
    event_data,
    prog_async,
    prog_gen,
    programs,
    wait_names,
)

pytestmark = pytest.mark.realtime

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENDED = ("Completed", "Failed")
SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
BATCH_TIMEOUT_S = 20.0
#: Examples per property (the kill test takes a third); GPMR_EXAMPLES=N for a longer hunt.
MANY = int(os.environ.get("GPMR_EXAMPLES", "12"))


# ------------------------------------------------------------------------------------------------
# Runtimes, activity counting
# ------------------------------------------------------------------------------------------------


class RunLog:
    """Thread-safe count of activity executions per (instance, execution, schedule id)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[tuple[str, int, int]] = Counter()
        self.by_runtime: Counter[str] = Counter()

    def record(self, key: tuple[str, int, int], who: str = "") -> None:
        with self._lock:
            self.counts[key] += 1
            self.by_runtime[who] += 1

    def recorder(self, who: str) -> Any:
        return lambda key: self.record(key, who)


def _delay_s(x: int) -> float:
    return 0.4 if x % 4 == 0 else (x % 3) * 0.01


def register(rt: Runtime, record: Any, slow: bool = False, use_async: bool = False) -> None:
    """The interpreter's orchestrations and activities; each activity execution is recorded.
    ``slow``: an activity whose input is a multiple of 4 sleeps 400 ms (longer than the tiny
    locks of ``test_tiny_locks_slow_activities``), the others 0-20 ms. ``use_async``: the
    activities are ``async def`` (a shutdown cancels them instead of letting them finish)."""
    for name in ACTS:
        if use_async:
            async def act(ctx: Any, x: int, _n: str = name) -> int:
                import asyncio

                record((ctx.instance_id, ctx.execution_id, ctx.activity_id))
                if slow:
                    await asyncio.sleep(_delay_s(x))
                return act_fn(_n, x)
        else:
            def act(ctx: Any, x: int, _n: str = name) -> int:
                record((ctx.instance_id, ctx.execution_id, ctx.activity_id))
                if slow:
                    time.sleep(_delay_s(x))
                return act_fn(_n, x)

        rt.register_activity(name, act)
    rt.register_orchestration("ProgGen", prog_gen)
    rt.register_orchestration("ProgAsync", prog_async)


def options(**kw: Any) -> RuntimeOptions:
    base = dict(dispatcher_poll_interval_ms=5, orchestration_concurrency=3, worker_concurrency=3)
    base.update(kw)
    return RuntimeOptions(**base)


def make_runtime(provider: Any, log: RunLog, who: str = "", slow: bool = False, use_async: bool = False,
                 **kw: Any) -> Runtime:
    rt = Runtime(provider, options(**kw))
    register(rt, log.recorder(who), slow, use_async)
    return rt


# ------------------------------------------------------------------------------------------------
# Driving a batch
# ------------------------------------------------------------------------------------------------


def instance_names(tag: str, batch: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(instance id, orchestration name, input) for every program and style."""
    out = []
    for k, inp in enumerate(batch):
        for style in ("gen", "async"):
            out.append((f"{tag}p{k}{style[0]}", "ProgGen" if style == "gen" else "ProgAsync", {**inp, "style": style}))
    return out


class Signaller(threading.Thread):
    """Re-sends every awaited event until its instance ends; enqueues the queue messages once the
    instance exists. Also watches every root's status as a client sees it: once terminal it
    stays so, and ``custom_status_version`` never goes down (``regressions``)."""

    def __init__(self, client: Client, starts: list[tuple[str, str, dict[str, Any]]]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.todo = {}
        for inst, _name, inp in starts:
            self.todo[inst] = (wait_names(inp["prog"]), evaluate(inp).got)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.regressions: list[str] = []

    def run(self) -> None:
        enqueued: set[str] = set()
        seen: dict[str, tuple[str, int]] = {}
        try:
            while not self.stop.is_set() and self.todo:
                for inst, (waits, got) in list(self.todo.items()):
                    st_ = self.client.get_status(inst)
                    prev = seen.get(inst)
                    now = (st_.status, st_.custom_status_version or 0)
                    if prev is not None and (now[1] < prev[1] or (prev[0] in ENDED and now[0] != prev[0])
                                             or (prev[0] != "NotFound" and now[0] == "NotFound")):
                        self.regressions.append(f"{inst}: status {prev} then {now}")
                    seen[inst] = now
                    if st_.status in ENDED:
                        del self.todo[inst]
                        continue
                    if st_.status == "NotFound":
                        continue
                    if got and inst not in enqueued:
                        enqueued.add(inst)
                        for v in got:
                            self.client.enqueue_event(inst, "q", v)
                    for j in waits:
                        self.client.raise_event(inst, f"ev{j}", event_data(j))
                self.stop.wait(0.02)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def wait_all_ended(client: Client, provider: Any, roots: list[str], timeout_s: float) -> dict[str, Any]:
    """Statuses of every instance of the store once all are terminal (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = sorted(set(roots) | set(provider.list_instances()))
        statuses = {n: client.get_status(n) for n in names}
        if all(s.status in ENDED for s in statuses.values()) or time.monotonic() > deadline:
            return statuses
        time.sleep(0.05)


def outcome_problems(statuses: dict[str, Any], starts: list[tuple[str, str, dict[str, Any]]],
                     cancelled: bool = False) -> list[str]:
    out = []
    for inst, _name, inp in starts:
        out += instance_problems(statuses, inst, evaluate(inp), cancelled)
    out += [f"{n} still {s.status}" for n, s in statuses.items() if s.status not in ENDED]
    return out


def history_problems(provider: Any, tag: str) -> tuple[list[str], dict[tuple[str, int, int], str]]:
    """Well-formedness problems of every stored history of the batch ``tag``, and the activity
    schedulings that reached an outcome in history: {(instance, execution, id): kind}."""
    problems: list[str] = []
    done: dict[tuple[str, int, int], str] = {}
    for inst in provider.list_instances():
        if not inst.startswith(tag):
            continue
        for ex in provider.list_executions(inst):
            events = provider.read_with_execution(inst, ex)
            problems += [f"{inst}#{ex}: {p}" for p in check_well_formed(inst, ex, events)]
            children = Counter(e.instance for e in events if type(e).__name__ == "SubOrchestrationScheduled")
            problems += [f"{inst}#{ex}: child {c} scheduled {n} times" for c, n in children.items() if n > 1]
            for e in events:
                if type(e).__name__ in ("ActivityCompleted", "ActivityFailed"):
                    done[(inst, ex, e.source_event_id)] = type(e).__name__
    return problems, done


def run_counts_problems(log: RunLog, done: dict[tuple[str, int, int], str], exact: bool) -> list[str]:
    out = []
    for key in done:
        n = log.counts.get(key, 0)
        if n == 0 or (exact and n != 1):
            out.append(f"activity {key} ran {n} times, its outcome is in history")
    if exact:
        out += [f"activity {k} ran {n} times" for k, n in log.counts.items() if n > 1]
    return out


def run_batch(batch: list[dict[str, Any]], runtimes: list[Runtime], client: Client, provider: Any, tag: str,
              during: Any = None, cancel_after_ms: list[int] | None = None,
              early: bool = False) -> tuple[list[str], dict[str, Any]]:
    """Start the batch on the running runtimes, call ``during()`` once some turns ran, wait for
    the end. ``cancel_after_ms``: every program ends waiting for good, and the client cancels
    the k-th root that many ms after the start (cycling through the list). ``early``: the queue
    messages are enqueued right after the start, before the instance exists (the start is
    ahead of them in the queue, so they are not orphans: SPEC §6.2 deletes only messages
    fetched alone). Returns the outcome problems and statuses."""
    if cancel_after_ms is not None:
        batch = [{**inp, "prog": [*inp["prog"], ["hang"]]} for inp in batch]
    starts = instance_names(tag, batch)
    sig = Signaller(client, starts)
    for inst, name, inp in starts:
        client.start_orchestration(inst, name, inp)
        if early:
            for v in sig.todo[inst][1]:
                client.enqueue_event(inst, "q", v)
            sig.todo[inst] = (sig.todo[inst][0], [])
    sig.start()
    t0 = time.monotonic()
    if cancel_after_ms is not None:
        cancels = sorted((cancel_after_ms[k % len(cancel_after_ms)], s[0]) for k, s in enumerate(starts))

        def canceller() -> None:
            for at, inst in cancels:
                time.sleep(max(0.0, t0 + at / 1000 - time.monotonic()))
                client.cancel_instance(inst, "stop")

        threading.Thread(target=canceller, daemon=True).start()
    try:
        if during is not None:
            during()
            if os.environ.get("GPMR_DEBUG"):
                ended = sum(client.get_status(s[0]).status in ENDED for s in starts)
                print(f"\n{tag}: {ended}/{len(starts)} ended at the stop ({time.monotonic() - t0:.2f} s)")
        names = [s[0] for s in starts]
        if cancel_after_ms is None:  # (a cancelled parent may never reach its detach step)
            names += [s[0] + suffix for s in starts for suffix in evaluate(s[2]).detached]
        statuses = wait_all_ended(client, provider, names, BATCH_TIMEOUT_S)
    finally:
        sig.stop.set()
        sig.join(5)
    assert sig.error is None, repr(sig.error)
    assert not sig.regressions, sig.regressions
    ours = {n: s for n, s in statuses.items() if n.startswith(tag)}
    if os.environ.get("GPMR_DEBUG"):
        print(f"\n{tag}: {time.monotonic() - t0:.2f} s {len(ours)} instances, steps {[len(b['prog']) for b in batch]}, "
              f"{Counter(s[0] for b in batch for s in b['prog'])}")
    return outcome_problems(ours, starts, cancelled=cancel_after_ms is not None), ours


def batches(n_min: int = 3, n_max: int = 5) -> Any:
    return st.lists(programs(timers=LIVE_TIMERS, backoffs=(0, 5)), min_size=n_min, max_size=n_max)


def roles(k: int, conc: int, split: bool) -> dict[str, int]:
    """Runtime ``k``'s concurrency; ``split``: runtime 0 runs only orchestrations, runtime 1
    only activities (a split deployment), a third both."""
    if split and k < 2:
        return dict(orchestration_concurrency=conc if k == 0 else 0, worker_concurrency=0 if k == 0 else conc)
    return dict(orchestration_concurrency=conc, worker_concurrency=conc)


#: Instance cache sizes: off, tiny (evictions all the time), the default.
CACHES = st.sampled_from([0, 1, 2, 1024])

_tags = iter(range(10**6))


def new_tag() -> str:
    return f"x{next(_tags)}_"


def shutdown_all(runtimes: list[Runtime]) -> None:
    for rt in runtimes:
        rt.shutdown(1_000)


# ------------------------------------------------------------------------------------------------
# (a) PostgreSQL, 2-3 runtimes; (d) activities once
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_store(pg_url: str) -> Any:
    """``pg_store()`` opens a PostgresProvider on one schema for the module (instance ids are
    unique per example); close it after the example (``close_all``)."""
    from duroxide_sim.providers.postgres import PostgresProvider
    from tests.providers.conftest import drop_schemas

    schema = f"dx_gpmr_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    yield lambda: PostgresProvider.connect_with_schema(pg_url, schema)
    drop_schemas(pg_url, [schema])


def close_all(providers: list[Any]) -> None:
    for p in providers:
        p.close()


def _check_store(provider: Any, log: RunLog, tag: str, exact: bool) -> list[str]:
    hp, done = history_problems(provider, tag)
    return hp + run_counts_problems(log, done, exact)


def _runtimes_match_evaluator(providers: list[Any], batch: list[dict[str, Any]], caches: list[int], conc: int,
                              split: bool, early: bool) -> None:
    """(a)/(b): one runtime per provider (all on one store) run the batch; outcomes, histories,
    run counts and the worker queue are checked; runtimes and providers are closed after."""
    log = RunLog()
    rts = [make_runtime(p, log, instance_cache_size=c, **roles(k, conc, split)).start()
           for k, (p, c) in enumerate(zip(providers, caches, strict=True))]
    client = Client(providers[0])
    try:
        tag = new_tag()
        problems, _ = run_batch(batch, rts, client, providers[0], tag, early=early)
        assert not problems, problems
        assert not _check_store(providers[0], log, tag, exact=True)
        assert providers[0].get_queue_depths().worker_queue == 0
    finally:
        shutdown_all(rts)
        close_all(providers)


@settings(max_examples=MANY, **SETTINGS)
@given(batch=batches(4, 8), caches=st.lists(CACHES, min_size=2, max_size=3), conc=st.integers(2, 4),
       split=st.booleans(), early=st.booleans())
def test_postgres_runtimes_match_evaluator(pg_store: Any, batch: list[dict[str, Any]], caches: list[int],
                                           conc: int, split: bool, early: bool) -> None:
    _runtimes_match_evaluator([pg_store() for _ in caches], batch, caches, conc, split, early)


# ------------------------------------------------------------------------------------------------
# (b) SQLite file, 2 runtimes (one provider each)
# ------------------------------------------------------------------------------------------------


@settings(max_examples=MANY, **SETTINGS)
@given(batch=batches(4, 8), caches=st.lists(CACHES, min_size=2, max_size=2), conc=st.integers(2, 4),
       split=st.booleans(), early=st.booleans())
def test_sqlite_runtimes_match_evaluator(tmp_path_factory: Any, batch: list[dict[str, Any]], caches: list[int],
                                         conc: int, split: bool, early: bool) -> None:
    path = tmp_path_factory.mktemp("gpmr") / "app.db"
    _runtimes_match_evaluator([SqliteProvider.open(str(path)) for _ in caches], batch, caches, conc, split, early)


# ------------------------------------------------------------------------------------------------
# (c) a runtime stopped mid-batch, another started on the same store
# ------------------------------------------------------------------------------------------------

#: Short locks, so work held by a stopped runtime comes back soon.
SHORT_LOCKS = dict(orchestrator_lock_timeout_ms=1_000, worker_lock_timeout_ms=1_500, worker_lock_renewal_buffer_ms=500)


def _wait_runs(log: RunLog, who: str, n: int, timeout_s: float = 1.0) -> None:
    deadline = time.monotonic() + timeout_s
    while log.by_runtime[who] < n and time.monotonic() < deadline:
        time.sleep(0.002)


def _handover(open_provider: Any, batch: list[dict[str, Any]], stop_after_runs: int, stop_timeout_ms: int,
              companion: bool, slow: bool, use_async: bool, restart: bool = False) -> None:
    """Runtime "first" (and, with ``companion``, a second one from the start) runs the batch;
    "first" is shut down once it has run ``stop_after_runs`` activities; a fresh runtime on
    its own provider takes over (``restart``: "first" itself is started again)."""
    log = RunLog()
    providers = [open_provider(), open_provider(), open_provider()]
    kw = dict(SHORT_LOCKS, slow=slow, use_async=use_async)
    first = make_runtime(providers[0], log, "first", **kw).start()
    later: list[Runtime] = []
    if companion:
        later.append(make_runtime(providers[2], log, "companion", **kw).start())
    client = Client(providers[1])
    tag = new_tag()

    def during() -> None:
        _wait_runs(log, "first", stop_after_runs)
        first.shutdown(stop_timeout_ms)
        if restart:
            first.start()
        else:
            later.append(make_runtime(providers[1], log, "next", **kw).start())

    try:
        problems, _ = run_batch(batch, [first], client, providers[1], tag, during=during)
        assert not problems, problems
        assert not _check_store(providers[1], log, tag, exact=False)
    finally:
        shutdown_all([first, *later])
        close_all(providers)


HANDOVER = dict(batch=batches(5, 8), stop_after_runs=st.integers(1, 8), stop_timeout_ms=st.sampled_from([0, 10, 50]),
                companion=st.booleans(), slow=st.booleans(), use_async=st.booleans(), restart=st.booleans())


@settings(max_examples=MANY, **SETTINGS)
@given(**HANDOVER)
def test_postgres_runtime_stopped_mid_batch_another_takes_over(pg_store: Any, batch: list[dict[str, Any]],
                                                                stop_after_runs: int, stop_timeout_ms: int,
                                                                companion: bool, slow: bool, use_async: bool,
                                                                restart: bool) -> None:
    _handover(pg_store, batch, stop_after_runs, stop_timeout_ms, companion, slow, use_async, restart)


@settings(max_examples=MANY, **SETTINGS)
@given(**HANDOVER)
def test_sqlite_runtime_stopped_mid_batch_another_takes_over(tmp_path_factory: Any, batch: list[dict[str, Any]],
                                                              stop_after_runs: int, stop_timeout_ms: int,
                                                              companion: bool, slow: bool, use_async: bool,
                                                              restart: bool) -> None:
    path = tmp_path_factory.mktemp("gpmr") / "app.db"
    _handover(lambda: SqliteProvider.open(str(path)), batch, stop_after_runs, stop_timeout_ms, companion, slow,
              use_async, restart)


# --- SIGKILL of a subprocess runtime (SQLite) ------------------------------------------------------


def child_main(db: str, log_path: str, schema: str = "", slow: bool = False) -> None:
    """The subprocess runtime: records each activity execution as a JSON line in ``log_path``.
    ``db``: a SQLite path, or a PostgreSQL URL with ``schema``."""
    lock = threading.Lock()
    out = open(log_path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process

    def record(key: tuple[str, int, int]) -> None:
        with lock:
            out.write(json.dumps(list(key)) + "\n")
            out.flush()

    if schema:
        from duroxide_sim.providers.postgres import PostgresProvider

        provider = PostgresProvider.connect_with_schema(db, schema)
    else:
        provider = SqliteProvider.open(db)
    rt = Runtime(provider, options(**SHORT_LOCKS))
    register(rt, record, slow)
    rt.start()
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    signal.signal(signal.SIGTERM, lambda *_: (rt.shutdown(1_000), os._exit(0)))
    while True:
        time.sleep(1)


def _spawn(db: Any, log_path: pathlib.Path, schema: str = "", slow: bool = False) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "tests.providers.test_generated_programs_multi_runtime", "child",
                             str(db), str(log_path), schema, "slow" if slow else ""], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert line.strip() == b"READY", line
    return proc


def _child_runs(log_path: pathlib.Path) -> list[tuple[str, int, int]]:
    if not log_path.exists():
        return []
    return [tuple(json.loads(ln)) for ln in log_path.read_text().splitlines() if ln.strip().endswith("]")]


@settings(max_examples=max(2, MANY // 3), **SETTINGS)
@given(batch=batches(5, 8), kill_after_runs=st.integers(1, 8), companion=st.booleans(),
       backend=st.sampled_from(["sqlite", "postgres"]), slow=st.booleans())
def test_subprocess_runtime_killed_mid_batch(pg_store: Any, pg_url: str, tmp_path_factory: Any,
                                             batch: list[dict[str, Any]], kill_after_runs: int, companion: bool,
                                             backend: str, slow: bool) -> None:
    """SIGKILL of a subprocess runtime (SQLite file or PostgreSQL schema) mid-batch."""
    d = tmp_path_factory.mktemp("gpmrk")
    db, child_log = d / "app.db", d / "child.jsonl"
    if backend == "postgres":
        provider = pg_store()
        proc = _spawn(pg_url, child_log, schema=provider.schema, slow=slow)
    else:
        provider = SqliteProvider.open(str(db))
        proc = _spawn(db, child_log, slow=slow)
    log = RunLog()
    later: list[Runtime] = [make_runtime(provider, log, "companion", slow=slow, **SHORT_LOCKS).start()] if companion else []
    client = Client(provider)
    tag = new_tag()

    def during() -> None:
        deadline = time.monotonic() + 1
        while len(_child_runs(child_log)) < kill_after_runs and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        later.append(make_runtime(provider, log, slow=slow, **SHORT_LOCKS).start())

    try:
        problems, _ = run_batch(batch, [], client, provider, tag, during=during)
        assert not problems, problems
        for key in _child_runs(child_log):
            log.record(key)
        assert not _check_store(provider, log, tag, exact=False)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        shutdown_all(later)
        provider.close()


# ------------------------------------------------------------------------------------------------
# (e) cancellation at arbitrary times, several runtimes: every instance of the tree ends
# ------------------------------------------------------------------------------------------------


@settings(max_examples=MANY, **SETTINGS)
@given(batch=batches(4, 8), cancel_after_ms=st.lists(st.integers(0, 80), min_size=1, max_size=4),
       backend=st.sampled_from(["postgres", "sqlite"]))
def test_cancelled_programs_end_on_several_runtimes(pg_store: Any, tmp_path_factory: Any, batch: list[dict[str, Any]],
                                                    cancel_after_ms: list[int], backend: str) -> None:
    if backend == "postgres":
        providers = [pg_store() for _ in range(3)]
    else:
        path = tmp_path_factory.mktemp("gpmrc") / "app.db"
        providers = [SqliteProvider.open(str(path)) for _ in range(3)]
    log = RunLog()
    rts = [make_runtime(p, log).start() for p in providers[:2]]
    client = Client(providers[2])
    tag = new_tag()
    try:
        problems, _ = run_batch(batch, rts, client, providers[2], tag, cancel_after_ms=cancel_after_ms)
        assert not problems, problems
        assert not _check_store(providers[2], log, tag, exact=True)
        assert providers[2].get_queue_depths().worker_queue == 0
    finally:
        shutdown_all(rts)
        close_all(providers)


# ------------------------------------------------------------------------------------------------
# (d') locks shorter than some activities and turns: redeliveries allowed, outcomes unchanged
# ------------------------------------------------------------------------------------------------

TINY_LOCKS = dict(orchestrator_lock_timeout_ms=300, orchestrator_lock_renewal_buffer_ms=100,
                  worker_lock_timeout_ms=300, worker_lock_renewal_buffer_ms=100)


@settings(max_examples=max(2, MANY // 2), **SETTINGS)
@given(batch=batches(4, 8), backend=st.sampled_from(["postgres", "sqlite"]))
def test_tiny_locks_slow_activities(pg_store: Any, tmp_path_factory: Any, batch: list[dict[str, Any]],
                                    backend: str) -> None:
    if backend == "postgres":
        providers = [pg_store() for _ in range(3)]
    else:
        path = tmp_path_factory.mktemp("gpmrt") / "app.db"
        providers = [SqliteProvider.open(str(path)) for _ in range(3)]
    log = RunLog()
    rts = [make_runtime(p, log, slow=True, **TINY_LOCKS).start() for p in providers[:2]]
    client = Client(providers[2])
    tag = new_tag()
    try:
        problems, _ = run_batch(batch, rts, client, providers[2], tag)
        assert not problems, problems
        assert not _check_store(providers[2], log, tag, exact=False)
        if os.environ.get("GPMR_DEBUG"):
            print(f"{tag}: re-runs {sum(n - 1 for n in log.counts.values())}")
    finally:
        shutdown_all(rts)
        close_all(providers)


# ------------------------------------------------------------------------------------------------
# (c') a runtime frozen (SIGSTOP) past its locks while another takes over, then thawed (a zombie)
# ------------------------------------------------------------------------------------------------


@settings(max_examples=max(2, MANY // 3), **SETTINGS)
@given(batch=batches(5, 8), freeze_after_runs=st.integers(1, 8), backend=st.sampled_from(["postgres", "sqlite"]))
def test_frozen_runtime_thawed_after_takeover(pg_store: Any, pg_url: str, tmp_path_factory: Any,
                                              batch: list[dict[str, Any]], freeze_after_runs: int,
                                              backend: str) -> None:
    d = tmp_path_factory.mktemp("gpmrz")
    child_log = d / "child.jsonl"
    if backend == "postgres":
        provider = pg_store()
        proc = _spawn(pg_url, child_log, schema=provider.schema, slow=True)
    else:
        provider = SqliteProvider.open(str(d / "app.db"))
        proc = _spawn(d / "app.db", child_log, slow=True)
    log = RunLog()
    other = make_runtime(provider, log, "other", slow=True, **SHORT_LOCKS).start()
    client = Client(provider)
    tag = new_tag()

    def during() -> None:
        deadline = time.monotonic() + 1
        while len(_child_runs(child_log)) < freeze_after_runs and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
        time.sleep(2.5)  # past every lock the child held (SHORT_LOCKS)
        proc.send_signal(signal.SIGCONT)

    try:
        problems, _ = run_batch(batch, [other], client, provider, tag, during=during)
        assert not problems, problems
        time.sleep(0.3)  # what the thawed child still commits
        for key in _child_runs(child_log):
            log.record(key, "child")
        assert not _check_store(provider, log, tag, exact=False)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)
        other.shutdown(1_000)
        provider.close()


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "child":
    child_main(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "slow")
