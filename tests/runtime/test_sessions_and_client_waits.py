"""Activity sessions across two runtimes and the client's waiting/reading API (SPEC §15.3, §13,
§14, §17): a probe written in session 9, kept. Found and fixed: the client's waits took a bool
as a timeout (True = 1 ms); the rest behaved as SPEC and README say and is pinned here."""

from __future__ import annotations

import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

PROVIDERS = ("memory", "sqlite")


class Pair:
    """Two runtimes (worker ids A and B) over one provider and one simulated clock."""

    def __init__(self, kind, tmp_path, opts_a=None, opts_b=None):
        self.clock = SimClock()
        if kind == "memory":
            self.provider = InMemoryProvider(self.clock)
        else:
            self.provider = SqliteProvider.open(str(tmp_path / "p.db"), clock=self.clock)
        self.a = Runtime(self.provider, opts_a or RuntimeOptions(worker_node_id="A"), clock=self.clock, ids=SequentialIds(1))
        self.b = Runtime(self.provider, opts_b or RuntimeOptions(worker_node_id="B"), clock=self.clock, ids=SequentialIds(2))
        self.driver = SequentialDriver(self.a, self.clock)
        self.client = Client(self.provider, clock=self.clock, sleep=self.driver.sleep)
        self.runs = []

    def register(self, orch_name, orch):
        for rt in (self.a, self.b):
            label = rt.options.worker_node_id

            def work(ctx, x, label=label):
                self.runs.append((ctx.session_id, label, x))
                return x

            rt.register_activity("Work", work)
            rt.register_orchestration(orch_name, orch)

    def orch_steps(self):
        did = False
        while self.a.orchestration_dispatcher.step() or self.b.orchestration_dispatcher.step():
            did = True
        return did

    def drive(self, worker_order=("b", "a"), rounds=10_000):
        for _ in range(rounds):
            did = self.orch_steps()
            for w in worker_order:
                did = getattr(self, w).worker_dispatcher.step() or did
            if not did:
                return


def _sessions_of(runs):
    out = {}
    for sid, worker, _ in runs:
        out.setdefault(sid, set()).add(worker)
    return out


# --- sessions: affinity ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
def test_session_sequential_activities_stay_on_owner_across_turns(kind, tmp_path):
    """Five sequential activities of session s (one per turn) all run on the worker that claimed
    it, even though the other worker polls first on every later round."""
    p = Pair(kind, tmp_path)

    def orch(ctx, _):
        out = []
        for i in range(5):
            out.append((yield ctx.schedule_activity_on_session("Work", i, "s")))
        return out

    p.register("Seq", orch)
    p.client.start_orchestration("i1", "Seq")
    p.orch_steps()
    assert p.a.worker_dispatcher.step()  # A claims the session with the first activity
    p.drive(worker_order=("b", "a"))  # B always polls first afterwards
    assert p.client.get_status("i1").output == [0, 1, 2, 3, 4]
    assert _sessions_of(p.runs) == {"s": {"A"}}


@pytest.mark.parametrize("kind", PROVIDERS)
def test_session_fan_out_runs_in_order_on_one_worker(kind, tmp_path):
    """A fan-out of one session's activities: all on one worker, in scheduling (FIFO) order."""
    p = Pair(kind, tmp_path)

    def orch(ctx, _):
        return (yield ctx.all_typed([ctx.schedule_activity_on_session("Work", i, "s") for i in range(6)]))

    p.register("Fan", orch)
    p.client.start_orchestration("i1", "Fan")
    p.drive(worker_order=("a", "b"))
    assert p.client.get_status("i1").output == list(range(6))
    assert _sessions_of(p.runs) == {"s": {"A"}}
    assert [x for _, _, x in p.runs] == list(range(6))


@pytest.mark.parametrize("kind", PROVIDERS)
def test_other_worker_takes_session_only_after_lock_expires(kind, tmp_path):
    """A claims s and then goes silent (no renewal). B cannot fetch s's next activity while A's
    session lock (session_lock_timeout_ms) lives; once it expires B takes over."""
    p = Pair(kind, tmp_path,
             RuntimeOptions(worker_node_id="A", session_lock_timeout_ms=10_000),
             RuntimeOptions(worker_node_id="B", session_lock_timeout_ms=10_000))

    def orch(ctx, _):
        a = yield ctx.schedule_activity_on_session("Work", 1, "s")
        b = yield ctx.schedule_activity_on_session("Work", 2, "s")
        return [a, b]

    p.register("Two", orch)
    p.client.start_orchestration("i1", "Two")
    p.orch_steps()
    assert p.a.worker_dispatcher.step()
    p.orch_steps()  # schedules activity 2
    p.clock.advance(5_000)
    assert not p.b.worker_dispatcher.step(), "B took a session whose lock A still holds"
    p.clock.advance(5_001)  # past the 10 s session lock
    assert p.b.worker_dispatcher.step()
    p.orch_steps()
    assert p.client.get_status("i1").output == [1, 2]
    assert p.runs == [("s", "A", 1), ("s", "B", 2)]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_session_renewal_keeps_owner_until_idle_timeout(kind, tmp_path):
    """Renewal (the runtime's maintenance) keeps A's live session while it is not idle; after
    session_idle_timeout_ms without activity, renewal stops and B may take it over."""
    opts = dict(session_lock_timeout_ms=10_000, session_lock_renewal_buffer_ms=2_000,
                session_idle_timeout_ms=60_000)
    p = Pair(kind, tmp_path, RuntimeOptions(worker_node_id="A", **opts), RuntimeOptions(worker_node_id="B", **opts))

    def orch(ctx, _):
        a = yield ctx.schedule_activity_on_session("Work", 1, "s")
        b = yield ctx.schedule_activity_on_session("Work", 2, "s")
        return [a, b]

    p.register("Two", orch)
    p.client.start_orchestration("i1", "Two")
    p.orch_steps()
    assert p.a.worker_dispatcher.step()
    p.orch_steps()
    # A keeps renewing every 5 s: within the idle window B never gets the session.
    for _ in range(10):  # 50 s of renewals
        p.clock.advance(5_000)
        p.a._maintenance()
        assert not p.b.worker_dispatcher.step(), f"B took A's renewed session at {p.clock.now_ms()}"
    # Idle for > 60 s since the last ack: renewals stop extending, the lock lapses.
    for _ in range(6):
        p.clock.advance(5_000)
        p.a._maintenance()
    p.clock.advance(10_001)
    p.a._maintenance()
    assert p.b.worker_dispatcher.step()
    p.orch_steps()
    assert p.runs == [("s", "A", 1), ("s", "B", 2)]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_max_sessions_per_runtime_splits_sessions_between_runtimes(kind, tmp_path):
    """max_sessions_per_runtime=1 on both: with two in-flight sessions each runtime holds one."""
    p = Pair(kind, tmp_path, RuntimeOptions(worker_node_id="A", max_sessions_per_runtime=1, worker_concurrency=4),
             RuntimeOptions(worker_node_id="B", max_sessions_per_runtime=1, worker_concurrency=4))

    def orch(ctx, _):
        return (yield ctx.all_typed([ctx.schedule_activity_on_session("Work", i, f"s{i % 2}") for i in range(4)]))

    p.register("Fan", orch)
    p.client.start_orchestration("i1", "Fan")
    p.orch_steps()
    wa, wb = p.a.worker_dispatcher, p.b.worker_dispatcher
    la1 = wa.fetch()
    assert la1 is not None
    assert wa.fetch() is None or False  # at cap, only session-less work; there is none
    lb1 = wb.fetch()
    assert lb1 is not None and lb1.item.session_id != la1.item.session_id
    assert wa.active_sessions() == [la1.item.session_id] and wb.active_sessions() == [lb1.item.session_id]
    for w, l in ((wa, la1), (wb, lb1)):
        assert w.commit(l, w.execute(l))
    p.drive(worker_order=("a", "b"))
    assert p.client.get_status("i1").output == [0, 1, 2, 3]
    s = _sessions_of(p.runs)
    assert len(s["s0"]) == 1 and len(s["s1"]) == 1 and s["s0"] != s["s1"]


@pytest.mark.parametrize("kind", PROVIDERS)
def test_cleanup_removes_expired_unused_session_and_keeps_queued(kind, tmp_path):
    """cleanup_orphaned_sessions deletes expired sessions with no queued rows only."""
    p = Pair(kind, tmp_path, RuntimeOptions(worker_node_id="A", session_lock_timeout_ms=1_000),
             RuntimeOptions(worker_node_id="B", session_lock_timeout_ms=1_000))

    def orch(ctx, _):
        return (yield ctx.schedule_activity_on_session("Work", 1, "s"))

    p.register("One", orch)
    p.client.start_orchestration("i1", "One")
    p.drive(worker_order=("a",))
    assert p.client.get_status("i1").output == 1
    p.clock.advance(2_000)
    assert p.provider.cleanup_orphaned_sessions(60_000) == 1
    assert p.provider.cleanup_orphaned_sessions(60_000) == 0


# --- sessions: simulation -----------------------------------------------------------------------


def _session_spec():
    def setup(rt, world):
        @rt.register_activity("Step")
        def step(ctx, x):
            world.put(f"log:{ctx.instance_id}:{x}", x)  # idempotent (at-least-once)
            return x * 10

        @rt.register_orchestration("S")
        def s(ctx, n):
            sid = f"sess-{ctx.instance_id}"
            first = yield ctx.schedule_activity_on_session("Step", 1, sid)
            rest = yield ctx.all_typed([ctx.schedule_activity_on_session("Step", i, sid) for i in (2, 3)])
            ctx.set_custom_status(f"done {n}")
            ctx.set_kv_value("k", str(first))
            return [first] + rest

    return SimSpec(name="sessions", setup=setup,
                   starts=[Start(instance=f"i{i}", orchestration="S", input=i) for i in range(3)])


@pytest.mark.parametrize("provider", PROVIDERS)
def test_session_workflow_passes_every_checker_under_faults(provider):
    spec = _session_spec()
    for seed in range(3):
        r = run_and_check(Simulation(spec, seed, FaultPlan.all(0.05), provider=provider))
        assert r.ok, "\n".join(f.render() for f in r.failures)
        assert r.outputs() == {f"i{i}": ("Completed", [10, 20, 30]) for i in range(3)}


# --- client: status, waits, KV ------------------------------------------------------------------


def _one(kind="memory", tmp_path=None, opts=None):
    clock = SimClock()
    provider = InMemoryProvider(clock) if kind == "memory" else SqliteProvider.open(str(tmp_path / "c.db"), clock=clock)
    rt = Runtime(provider, opts or RuntimeOptions(), clock=clock, ids=SequentialIds())
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    return rt, client, driver, clock


@pytest.mark.parametrize("kind", PROVIDERS)
def test_wait_for_status_change_versions_and_terminal(kind, tmp_path):
    rt, client, driver, clock = _one(kind, tmp_path)

    @rt.register_orchestration("St")
    def st(ctx, _):
        ctx.set_custom_status("a")
        yield ctx.schedule_timer(1_000)
        ctx.set_custom_status("b")
        ctx.set_custom_status("c")  # same turn: one version bump, last value wins
        yield ctx.schedule_timer(1_000)
        ctx.reset_custom_status()
        yield ctx.schedule_timer(1_000)
        return "end"

    client.start_orchestration("i1", "St")
    r1 = client.wait_for_status_change("i1", 0, 10, 60_000)
    assert (r1.status, r1.custom_status, r1.custom_status_version) == ("Running", "a", 1)
    r2 = client.wait_for_status_change("i1", 1, 10, 60_000)
    assert (r2.custom_status, r2.custom_status_version) == ("c", 2)
    r3 = client.wait_for_status_change("i1", 2, 10, 60_000)
    assert (r3.custom_status, r3.custom_status_version) == (None, 3)
    r4 = client.wait_for_status_change("i1", 3, 10, 60_000)  # terminal, no new version
    assert (r4.status, r4.output, r4.custom_status_version) == ("Completed", "end", 3)
    # already terminal with last_seen far ahead: returns at once
    r5 = client.wait_for_status_change("i1", 99, 10, 0)
    assert r5.status == "Completed"


def test_wait_for_status_change_timeout_is_runtime_error():
    rt, client, driver, clock = _one()

    @rt.register_orchestration("W")
    def w(ctx, _):
        yield ctx.wait_for_event("never")

    client.start_orchestration("i1", "W")
    driver.run_until_quiet()
    t0 = clock.now_ms()
    with pytest.raises(RuntimeError) as ei:
        client.wait_for_status_change("i1", 0, 10, 500)
    assert isinstance(ei.value, TimeoutError)
    assert "timed out" in str(ei.value).lower()
    assert clock.now_ms() - t0 >= 500
    # unknown instance: waits, then times out (not NotFound returned as a change)
    with pytest.raises(RuntimeError):
        client.wait_for_status_change("nope", 0, 10, 100)


def test_custom_status_large_and_structured_values():
    rt, client, driver, clock = _one()
    big = "x" * 200_000

    @rt.register_orchestration("Big")
    def b(ctx, _):
        ctx.set_custom_status("")
        yield ctx.schedule_timer(10)
        ctx.set_custom_status(big)
        yield ctx.schedule_timer(10)
        return None

    client.start_orchestration("i1", "Big")
    r = client.wait_for_status_change("i1", 0, 10, 10_000)
    assert r.custom_status == "" and r.custom_status_version == 1
    r = client.wait_for_status_change("i1", 1, 10, 10_000)
    assert r.status in ("Running", "Completed")
    final = client.wait_for_orchestration("i1", 10_000)
    # either the value is stored verbatim, or the instance failed with a limit error
    if final.status == "Completed":
        assert final.custom_status == big and final.custom_status_version == 2
        assert final.output is None
    else:
        assert "custom" in (final.error or "").lower()


def test_get_status_unknown_instance_is_not_found():
    rt, client, driver, clock = _one()
    r = client.get_status("ghost")
    assert (r.status, r.output, r.error, r.custom_status, r.custom_status_version) == ("NotFound", None, None, None, 0)
    assert vars(r).keys() >= {"status", "output", "error", "custom_status", "custom_status_version"}
    assert client.get_kv_value("ghost", "k") is None
    assert client.get_kv_all_values("ghost") == {}


@pytest.mark.parametrize("kind", PROVIDERS)
def test_kv_typed_reads_and_wait(kind, tmp_path):
    rt, client, driver, clock = _one(kind, tmp_path)

    @rt.register_orchestration("Kv")
    def kv(ctx, _):
        ctx.set_kv_value("n", "42")
        ctx.set_kv_value("obj", {"a": [1, 2]})
        ctx.set_kv_value("empty", "")
        yield ctx.wait_for_event("go")
        ctx.set_kv_value("late", "here")
        return "ok"

    client.start_orchestration("i1", "Kv")
    driver.run_until_idle()
    assert client.get_kv_value_typed("i1", "n", int) == 42
    assert client.get_kv_value_typed("i1", "obj", dict) == {"a": [1, 2]}
    assert client.get_kv_value("i1", "empty") == ""
    assert client.get_kv_value_typed("i1", "missing", int) is None
    assert client.wait_for_kv_value("i1", "empty", 0) == ""
    with pytest.raises(RuntimeError) as ei:
        client.wait_for_kv_value("i1", "late", 1_000)
    assert isinstance(ei.value, TimeoutError) and "late" in str(ei.value)
    client.raise_event("i1", "go")
    assert client.wait_for_kv_value("i1", "late", 10_000) == "here"
    assert client.wait_for_kv_value_typed("i1", "n", 10, int) == 42
    assert client.wait_for_orchestration("i1", 10_000).status == "Completed"
    assert client.get_kv_all_values("i1") == {"n": "42", "obj": '{"a": [1, 2]}', "empty": "", "late": "here"}


def test_get_kv_value_from_instance_reads_other_instance():
    rt, client, driver, clock = _one()

    @rt.register_orchestration("Writer")
    def w(ctx, _):
        ctx.set_kv_value("shared", "v1")
        yield ctx.wait_for_event("go")

    @rt.register_orchestration("Reader")
    def r(ctx, _):
        a = yield ctx.get_kv_value_from_instance("w1", "shared")
        b = yield ctx.get_kv_value_from_instance("w1", "absent")
        c = yield ctx.get_kv_value_from_instance("nobody", "shared")
        return [a, b, c]

    client.start_orchestration("w1", "Writer")
    driver.run_until_quiet()
    client.start_orchestration("r1", "Reader")
    assert client.wait_for_orchestration("r1", 10_000).output == ["v1", None, None]


def test_wait_for_orchestration_typed_raises_failure_text():
    rt, client, driver, clock = _one()

    @rt.register_activity("Boom")
    def boom(ctx, _):
        raise ValueError("kaboom")

    @rt.register_orchestration("F")
    def f(ctx, _):
        yield ctx.schedule_activity("Boom")

    client.start_orchestration("i1", "F")
    with pytest.raises(Exception) as ei:
        client.wait_for_orchestration_typed("i1", 10_000)
    st = client.get_status("i1")
    assert st.status == "Failed" and st.output is None
    assert str(ei.value) == st.error
    assert "kaboom" in st.error


def test_results_after_continue_as_new():
    rt, client, driver, clock = _one()

    @rt.register_orchestration("C")
    def c(ctx, n):
        ctx.set_custom_status(f"gen {n}")
        ctx.set_kv_value(f"k{n}", str(n))
        if n < 3:
            yield ctx.schedule_timer(100)
            yield ctx.continue_as_new(n + 1)
        return {"final": n}

    client.start_orchestration("i1", "C", 0)
    st = client.wait_for_orchestration("i1", 100_000)
    assert st.status == "Completed" and st.output == {"final": 3}
    assert st.custom_status == "gen 3"
    assert st.custom_status_version == 4
    assert client.wait_for_orchestration_typed("i1", 0, dict) == {"final": 3}
    assert client.get_kv_all_values("i1") == {"k0": "0", "k1": "1", "k2": "2", "k3": "3"}
    assert client.list_executions("i1") == [1, 2, 3, 4]


def test_cancelled_instance_status_and_error():
    rt, client, driver, clock = _one()

    @rt.register_orchestration("W")
    def w(ctx, _):
        ctx.set_custom_status("waiting")
        yield ctx.wait_for_event("never")

    client.start_orchestration("i1", "W")
    driver.run_until_quiet()
    client.cancel_instance("i1", "user asked")
    st = client.wait_for_orchestration("i1", 10_000)
    assert st.status == "Failed" and st.output is None
    assert st.error == "canceled: user asked"
    assert st.custom_status == "waiting"
    with pytest.raises(RuntimeError) as ei:
        client.wait_for_orchestration_typed("i1", 0)
    assert str(ei.value) == "canceled: user asked"
    ws = client.wait_for_status_change("i1", st.custom_status_version, 10, 0)
    assert ws.status == "Failed"


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "s" * 1025, "\u00e9" * 513, 5, b"s", ["s"], "a\x00b"])
def test_bad_session_ids_rejected_clearly(bad):
    rt, client, driver, clock = _one()
    rt.register_activity("Work", lambda ctx, x: x)
    seen = {}

    @rt.register_orchestration("O")
    def o(ctx, _):
        for label, call in (
            ("on_session", lambda: ctx.schedule_activity_on_session("Work", 1, bad)),
            ("plain", lambda: ctx.schedule_activity("Work", 1, session_id=bad)),
            ("retry", lambda: ctx.schedule_activity_with_retry_on_session("Work", 1, {"max_attempts": 2}, bad)),
            ("typed", lambda: ctx.schedule_activity_on_session_typed("Work", 1, bad)),
        ):
            try:
                call()
                seen[label] = "accepted"
            except TypeError as exc:
                seen[label] = f"TypeError:{exc}"
        return "x"
        yield

    client.start_orchestration("i1", "O")
    assert client.wait_for_orchestration("i1", 10_000).status == "Completed"
    for label, outcome in seen.items():
        assert outcome.startswith("TypeError:session_id"), (label, outcome)


def test_max_length_session_id_accepted():
    rt, client, driver, clock = _one()
    rt.register_activity("Work", lambda ctx, x: ctx.session_id)
    sid = "s" * 1024

    @rt.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.schedule_activity_on_session("Work", 1, sid))

    client.start_orchestration("i1", "O")
    assert client.wait_for_orchestration("i1", 10_000).output == sid


@pytest.mark.parametrize("bad", [-1, 1.5, "100", None])
def test_bad_timeouts_rejected(bad):
    rt, client, driver, clock = _one()
    from duroxide_sim.errors import InvalidInputError

    calls = [
        lambda: client.wait_for_orchestration("i1", bad),
        lambda: client.wait_for_status_change("i1", 0, 10, bad),
        lambda: client.wait_for_kv_value("i1", "k", bad),
        lambda: client.wait_for_kv_value_typed("i1", "k", bad, int),
        lambda: client.wait_for_orchestration_typed("i1", bad),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError):
            call()


@pytest.mark.parametrize("bad", [-1, 1.0, "0", None])
def test_bad_last_seen_and_poll_rejected(bad):
    rt, client, driver, clock = _one()
    from duroxide_sim.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        client.wait_for_status_change("i1", bad, 10, 10)
    if bad != "0":
        with pytest.raises(InvalidInputError):
            client.wait_for_status_change("i1", 0, bad if bad != -1 else 0, 10)


@pytest.mark.parametrize("bad", [0, -5, 1.5, None])
def test_bad_session_runtime_options_rejected(bad):
    if bad is None:
        # None means "unset -> default"
        assert RuntimeOptions(max_sessions_per_runtime=None).max_sessions_per_runtime == 10
        return
    with pytest.raises((ValueError, TypeError)):
        RuntimeOptions(max_sessions_per_runtime=bad)
    with pytest.raises((ValueError, TypeError)):
        RuntimeOptions(session_idle_timeout_ms=bad)


# --- more sessions ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", PROVIDERS)
def test_session_ownership_carries_across_continue_as_new(kind, tmp_path):
    """SPEC §8: sessions are carried across continue-as-new: the next execution's session
    activity still goes to the owner while its lock lives."""
    p = Pair(kind, tmp_path)

    def orch(ctx, n):
        r = yield ctx.schedule_activity_on_session("Work", n, "s")
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return r

    p.register("Loop", orch)
    p.client.start_orchestration("i1", "Loop", 0)
    p.orch_steps()
    assert p.a.worker_dispatcher.step()
    p.drive(worker_order=("b", "a"))
    assert p.client.get_status("i1").output == 3
    assert _sessions_of(p.runs) == {"s": {"A"}}


def test_session_affinity_on_production_ack_and_fetch_path(tmp_path):
    """The production driver's chained ack-and-fetch (SQLite) keeps session affinity and the
    per-runtime session cap."""
    p = Pair("sqlite", tmp_path, RuntimeOptions(worker_node_id="A", max_sessions_per_runtime=1),
             RuntimeOptions(worker_node_id="B", max_sessions_per_runtime=1))

    def orch(ctx, _):
        return (yield ctx.all_typed([ctx.schedule_activity_on_session("Work", i, f"s{i % 2}") for i in range(6)]))

    p.register("Fan", orch)
    p.client.start_orchestration("i1", "Fan")
    p.orch_steps()
    ca, cb = {}, {}
    for _ in range(50):
        did = p.a.worker_dispatcher.step(ca)
        did = p.b.worker_dispatcher.step(cb) or did
        did = p.orch_steps() or did
        if not did and not ca.get("item") and not cb.get("item"):
            break
    assert p.client.get_status("i1").output == list(range(6))
    s = _sessions_of(p.runs)
    assert len(s["s0"]) == 1 and len(s["s1"]) == 1, s


@pytest.mark.parametrize("bad", [True, False])
def test_bool_timeouts_rejected_like_other_int_params(bad):
    """wait_for_status_change rejects bool last_seen_version / poll_interval_ms (type() is int);
    the timeout of every client wait must be validated the same way (a bool is not a timeout)."""
    rt, client, driver, clock = _one()
    from duroxide_sim.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        client.wait_for_status_change("i1", bad, 10, 10)
    with pytest.raises(InvalidInputError):
        client.wait_for_orchestration("i1", bad)
    with pytest.raises(InvalidInputError):
        client.wait_for_kv_value("i1", "k", bad)


def test_wait_for_orchestration_zero_timeout_on_running_raises_at_once():
    rt, client, driver, clock = _one()

    @rt.register_orchestration("W")
    def w(ctx, _):
        yield ctx.wait_for_event("never")

    client.start_orchestration("i1", "W")
    driver.run_until_quiet()
    t0 = clock.now_ms()
    with pytest.raises(RuntimeError, match="timed out"):
        client.wait_for_orchestration("i1", 0)
    assert clock.now_ms() == t0
    st = client.get_status("i1")
    assert (st.status, st.output, st.error) == ("Running", None, None)
