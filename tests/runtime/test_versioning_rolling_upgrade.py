"""Orchestration versioning and rolling upgrades (a probe written in session 9, kept) (SPEC §3.1 step 5, §3.2, §7, §8, §10.2,
§12, §16 I30, §17).

Production-like: two Runtimes over ONE provider (an InMemoryProvider, or one SqliteProvider
file), each with its own registry - the old deployment knows F 1.0.0 only, the new one 1.0.0
and 2.0.0 - stepped in a seeded random interleaving on one SimClock. Simulation: versioned
SimSpecs under FaultPlan.all(0.05). Bad input: malformed versions and options.

Each test asserts what SPEC/README say should happen. Found and fixed (those tests failed
before): a non-string version in orchestration code looped forever on SQLite (its ack could
never store it; now refused at the call); a runtime ran a turn of an execution pinned outside
its supported_versions that its provider let through (now abandoned, SPEC §12); the outcome
checker compared poison texts with their attempt counts; versions with leading zeros or
non-ASCII digits were accepted and then never matched; malformed supported_versions and a None
version at registration were accepted; the unregistered-version warning and the simulation's
refusal did not name the version the policy wanted.
"""

from __future__ import annotations

import json
import logging
import random

import pytest

from duroxide_sim import Client, ConfigurationError, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.errors import DuroxideError
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.driver import StuckError
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

PROVIDERS = ("mem", "sqlite")
FAST_BACKOFF = dict(unregistered_backoff_base_ms=1, unregistered_backoff_max_ms=2)


def _provider(kind, clock, tmp_path):
    if kind == "mem":
        return InMemoryProvider(clock)
    return SqliteProvider.open(str(tmp_path / "shared.db"), clock=clock)


class Fleet:
    """Runtimes over one provider and clock, stepped in a seeded random order (a rolling
    upgrade: both deployments poll the same store)."""

    def __init__(self, provider, clock, n=2, options=None, seed=0):
        self.provider, self.clock = provider, clock
        self.rts = [Runtime(provider, options or RuntimeOptions(), clock=clock, ids=SequentialIds(i + 1))
                    for i in range(n)]
        self.drivers = [SequentialDriver(rt, clock, max_steps=200_000) for rt in self.rts]
        self.client = Client(provider, clock=clock, sleep=self.drivers[-1].sleep)
        self.rng = random.Random(seed)

    def run(self, max_rounds=20_000):
        for _ in range(max_rounds):
            progress = True
            while progress:
                progress = False
                order = list(self.drivers)
                self.rng.shuffle(order)
                for d in order:
                    if d._step_once():
                        progress = True
            nxt = self.provider.next_wakeup_ms()
            if nxt is None:
                return
            self.clock.advance_to(max(nxt, self.clock.now_ms()))
        raise AssertionError("the fleet never went quiet")

    def started_versions(self, instance):
        out = []
        for ex in self.client.list_executions(instance):
            first = self.client.read_execution_history(instance, ex)[0]
            assert first["kind"] == "OrchestrationStarted"
            out.append(json.loads(first["data"])["version"])
        return out


def _register_fleet(old, new, calls):
    """old: F 1.0.0 + Kid 1.0.0; new: F 1.0.0/2.0.0 + Kid 1.0.0/2.0.0. ``calls`` records
    (deployment, orchestration, version) for every poll of orchestration code."""

    def make(tag):
        def work(ctx, x):
            return x + 1

        def f_v1(ctx, n):
            calls.append((tag, "F", "1.0.0"))
            r = yield ctx.schedule_activity("Work", n)
            ev = yield ctx.wait_for_event("go")
            kid = yield ctx.schedule_sub_orchestration_versioned("Kid", "1.0.0", n)
            return ["v1", ctx.orchestration_version, r, ev, kid]

        def f_v2(ctx, n):
            calls.append((tag, "F", "2.0.0"))
            r = yield ctx.schedule_activity("Work", n)
            ev = yield ctx.wait_for_event("go")
            kid = yield ctx.schedule_sub_orchestration_versioned("Kid", "2.0.0", n)
            if n == 0:
                yield ctx.continue_as_new_versioned(1, "2.0.0")
            return ["v2", ctx.orchestration_version, r, ev, kid]

        def kid_v1(ctx, n):
            calls.append((tag, "Kid", "1.0.0"))
            yield ctx.schedule_timer(10)
            return ["k1", ctx.orchestration_version]

        def kid_v2(ctx, n):
            calls.append((tag, "Kid", "2.0.0"))
            yield ctx.schedule_timer(10)
            return ["k2", ctx.orchestration_version]

        return work, f_v1, f_v2, kid_v1, kid_v2

    for rt, tag, both in ((old, "old", False), (new, "new", True)):
        work, f_v1, f_v2, kid_v1, kid_v2 = make(tag)
        rt.register_activity("Work", work)
        rt.register_orchestration_versioned("F", "1.0.0", f_v1)
        rt.register_orchestration_versioned("Kid", "1.0.0", kid_v1)
        if both:
            rt.register_orchestration_versioned("F", "2.0.0", f_v2)
            rt.register_orchestration_versioned("Kid", "2.0.0", kid_v2)


# ------------------------------------------------------------------ (1) production-like


@pytest.mark.parametrize("kind", PROVIDERS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rolling_upgrade_pinned_versions_on_one_store(kind, seed, tmp_path):
    """In-flight 1.0.0 instances finish on 1.0.0 whichever deployment runs them; explicit 2.0.0
    starts and 2.0.0 children are never run by the deployment that lacks 2.0.0 (it abandons
    them, SPEC §3.1 step 5) and finish on 2.0.0; continue_as_new_versioned keeps 2.0.0."""
    clock = SimClock()
    provider = _provider(kind, clock, tmp_path)
    calls: list[tuple[str, str, str]] = []
    fleet = Fleet(provider, clock, seed=seed)
    old, new = fleet.rts
    _register_fleet(old, new, calls)
    c = fleet.client
    # phase 1: only the old deployment runs
    for i in range(3):
        c.start_orchestration(f"a{i}", "F", i + 1)
    fleet.drivers[0].run_until_quiet()
    assert all(c.get_status(f"a{i}").status == "Running" for i in range(3))
    # phase 2: the new deployment joins; new work is explicitly 2.0.0
    for i in range(3):
        c.start_orchestration_versioned(f"b{i}", "F", 0, "2.0.0")
        c.raise_event(f"a{i}", "go", i)
    fleet.run()
    for _ in range(3):  # (events raised before a subscription is persisted are dropped, §6.1)
        for i in range(3):
            if c.get_status(f"b{i}").status == "Running":
                c.raise_event(f"b{i}", "go", 9)
        fleet.run()
    for i in range(3):
        st = c.get_status(f"a{i}")
        assert (st.status, st.output) == ("Completed", ["v1", "1.0.0", i + 2, i, ["k1", "1.0.0"]]), st
        assert fleet.started_versions(f"a{i}") == ["1.0.0"]
        st = c.get_status(f"b{i}")
        assert (st.status, st.output) == ("Completed", ["v2", "2.0.0", 2, 9, ["k2", "2.0.0"]]), st
        assert fleet.started_versions(f"b{i}") == ["2.0.0", "2.0.0"]
        assert c.get_instance_info(f"b{i}").orchestration_version == "2.0.0"
    assert not [x for x in calls if x[0] == "old" and x[2] == "2.0.0"]
    if kind == "sqlite":
        provider.close()


@pytest.mark.parametrize("kind", PROVIDERS)
def test_old_deployment_abandons_unknown_version_without_running_it(kind, tmp_path):
    """The old deployment fetching a 2.0.0 start abandons it with the unregistered backoff,
    writes nothing and keeps the attempt (SPEC §3.1 step 5, §10.2); the new one then runs it."""
    clock = SimClock()
    provider = _provider(kind, clock, tmp_path)
    fleet = Fleet(provider, clock)
    old, new = fleet.rts
    _register_fleet(old, new, [])
    fleet.client.start_orchestration_versioned("b", "F", 0, "2.0.0")
    assert old.orchestration_dispatcher.step() is True  # fetched and abandoned
    assert fleet.client.get_status("b").status == "NotFound"
    assert fleet.client.get_queue_depths().orchestrator_queue == 1
    assert new.orchestration_dispatcher.step() is False  # hidden for the 1 s backoff
    clock.advance(1_000)
    item = new.orchestration_dispatcher.fetch()
    assert item is not None and item.attempt_count == 2
    new.orchestration_dispatcher.process(item)
    assert fleet.started_versions("b") == ["2.0.0"]
    if kind == "sqlite":
        provider.close()


@pytest.mark.parametrize("kind", PROVIDERS)
def test_unversioned_continue_as_new_upgrades_on_new_deployment(kind, tmp_path):
    """A 1.0.0 instance whose continue_as_new (no version) is processed by the new deployment
    starts its next execution on 2.0.0 (SPEC §8, §12)."""
    clock = SimClock()
    provider = _provider(kind, clock, tmp_path)
    old_w = Fleet(provider, clock, n=1)

    def v1(ctx, n):
        x = yield ctx.wait_for_event("go")
        yield ctx.continue_as_new(n + x)

    def v2(ctx, n):
        yield ctx.schedule_timer(1)
        return ["v2", ctx.orchestration_version, n, ctx.execution_id]

    old_w.rts[0].register_orchestration_versioned("F", "1.0.0", v1)
    old_w.client.start_orchestration("i", "F", 1)
    old_w.run()
    new_w = Fleet(provider, clock, n=1)
    new_w.rts[0].register_orchestration_versioned("F", "1.0.0", v1)
    new_w.rts[0].register_orchestration_versioned("F", "2.0.0", v2)
    new_w.client.raise_event("i", "go", 5)
    new_w.run()
    assert new_w.client.get_status("i").output == ["v2", "2.0.0", 6, 2]
    assert new_w.started_versions("i") == ["1.0.0", "2.0.0"]
    assert new_w.client.get_instance_info("i").orchestration_version == "2.0.0"
    if kind == "sqlite":
        provider.close()


@pytest.mark.parametrize("kind", PROVIDERS)
def test_version_removed_after_old_instances_completed(kind, tmp_path):
    """A deployment registering only 2.0.0, after every 1.0.0 instance completed: messages for
    the completed 1.0.0 instances are discarded (SPEC §3.1 step 3), new starts run 2.0.0, and
    an explicit 1.0.0 start backs off and is poisoned (SPEC §10.2), not run or crashed."""
    clock = SimClock()
    provider = _provider(kind, clock, tmp_path)
    w1 = Fleet(provider, clock, n=1)

    def v1(ctx, n):
        yield ctx.schedule_timer(1)
        return ["v1", n]

    def v2(ctx, n):
        yield ctx.schedule_timer(1)
        return ["v2", n, ctx.orchestration_version]

    w1.rts[0].register_orchestration_versioned("F", "1.0.0", v1)
    w1.client.start_orchestration("done", "F", 1)
    w1.run()
    w2 = Fleet(provider, clock, n=1, options=RuntimeOptions(max_attempts=3, **FAST_BACKOFF))
    w2.rts[0].register_orchestration_versioned("F", "2.0.0", v2)
    w2.client.raise_event("done", "late", 1)
    w2.client.cancel_instance("done", "too late")
    w2.client.start_orchestration("new", "F", 2)
    w2.client.start_orchestration_versioned("old", "F", 3, "1.0.0")
    w2.run()
    assert w2.client.get_status("done").output == ["v1", 1]
    assert w2.client.get_status("new").output == ["v2", 2, "2.0.0"]
    st = w2.client.get_status("old")
    assert st.status == "Failed" and st.error.startswith("poison: orchestration old exceeded 4 attempts")
    assert w2.client.get_queue_depths().orchestrator_queue == 0
    if kind == "sqlite":
        provider.close()


def test_dispatcher_abandons_item_outside_supported_versions_that_slips_through():
    """SPEC §12: 'incompatible items that slip through [the provider's capability filter] are
    abandoned (1 s)' (the reference tests inject exactly this 'filter bypass', SPEC §18). A
    runtime supporting only 9.x must not run a turn of an execution pinned to 0.1.0 even when
    its provider hands it over."""

    class FilterIgnoring(InMemoryProvider):
        def fetch_orchestration_item(self, lock_timeout_ms, poll_timeout_ms=0, filter=None):
            return super().fetch_orchestration_item(lock_timeout_ms, poll_timeout_ms, None)

    clock = SimClock()
    provider = FilterIgnoring(clock)

    def waiter(ctx, _):
        x = yield ctx.wait_for_event("go")
        return x

    home = Fleet(provider, clock, n=1)
    home.rts[0].register_orchestration("O", waiter)
    home.client.start_orchestration("i", "O")
    home.run()
    before = home.client.read_execution_history("i", 1)
    pinned = Runtime(provider, RuntimeOptions(supported_versions=("9.0.0", "9.9.9")), clock=clock, ids=SequentialIds(7))
    pinned.register_orchestration("O", waiter)
    home.client.raise_event("i", "go", 5)
    pinned.orchestration_dispatcher.step()
    assert home.client.get_status("i").status == "Running", "a runtime outside the pin's range ran the turn"
    assert home.client.read_execution_history("i", 1) == before
    assert home.client.get_queue_depths().orchestrator_queue == 1


# ------------------------------------------------------------------ (2) simulation


def _versioned_setup(rt, world):
    @rt.register_activity("Work")
    def work(ctx, x):
        if world.put_if_absent(f"work:{ctx.instance_id}:{ctx.execution_id}:{x}", True):
            world.append("work", x)
        return x * 2

    def f_v1(ctx, n):
        r = yield ctx.schedule_activity("Work", n)
        if n < 2:
            yield ctx.continue_as_new(n + 1)  # upgrades to the latest (2.0.0)
        return ["v1", ctx.orchestration_version, r]

    def f_v2(ctx, n):
        r = yield ctx.schedule_activity("Work", n)
        if n == 0:
            yield ctx.continue_as_new_versioned(n + 1, "1.0.0")  # explicit downgrade
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        pinned = yield ctx.schedule_sub_orchestration_versioned("Kid", "1.0.0", n)
        latest = yield ctx.schedule_sub_orchestration("Kid", n)
        return ["v2", ctx.orchestration_version, r, pinned, latest]

    def kid(tag):
        def fn(ctx, n):
            yield ctx.schedule_timer(5)
            return [tag, ctx.orchestration_version]
        return fn

    rt.register_orchestration_versioned("F", "1.0.0", f_v1)
    rt.register_orchestration_versioned("F", "2.0.0", f_v2)
    rt.register_orchestration_versioned("Kid", "1.0.0", kid("k1"))
    rt.register_orchestration_versioned("Kid", "1.5.0", kid("k15"))


VERSIONED_SPEC = SimSpec(
    name="versioned", setup=_versioned_setup,
    starts=[Start(instance="a", orchestration="F", input=0, version="1.0.0"),
            Start(instance="b", orchestration="F", input=0),
            Start(instance="c", orchestration="F", input=2, version="2.0.0")],
)


def test_sim_versioned_spec_under_faults():
    """A versioned spec (pinned starts, CAN upgrade/downgrade, versioned children) passes every
    checker under FaultPlan.all(0.05)."""
    plain = run_and_check(Simulation(VERSIONED_SPEC, 0, FaultPlan.none()))
    assert plain.ok
    assert plain.statuses["a"].output == ["v2", "2.0.0", 6, ["k1", "1.0.0"], ["k15", "1.5.0"]]
    for seed in range(25):
        result = run_and_check(Simulation(VERSIONED_SPEC, seed, FaultPlan.all(0.05)))
        assert result.ok, result.failures[0].render()


def _missing_version_setup(rt, world):
    def can(ctx, n):
        yield ctx.schedule_timer(1)
        if n == 0:
            yield ctx.continue_as_new_versioned(1, "7.0.0")  # no deployment has 7.0.0
        return n

    rt.register_orchestration("C", can)


MISSING_VERSION_SPEC = SimSpec(name="missing_version", setup=_missing_version_setup,
                               starts=[Start(instance="c", orchestration="C", input=0)])


@pytest.mark.parametrize("seed", [2, 8])
def test_sim_outcome_checker_accepts_poison_of_unregistered_version_under_faults(seed):
    """continue-as-new to a version nobody registers backs off and is poisoned (SPEC §10.2) -
    in the fault-free twin as well. A fault that costs an extra delivery only changes the
    attempt count inside the poison text; the run is still the documented outcome (README:
    poison from faults is budget_exhausted, not compared), so no checker may fail the seed."""
    result = run_and_check(Simulation(MISSING_VERSION_SPEC, seed, FaultPlan.all(0.05)))
    assert result.statuses["c"].status == "Failed"
    assert result.statuses["c"].error.startswith("poison: orchestration c exceeded")
    assert result.ok, result.failures[0].render()


def test_sim_start_refusal_names_the_policy_version():
    """A spec whose setup sets a version policy naming an unregistered version: the up-front
    refusal must name the problem (the policy's version), not claim that 'F' - listed as
    registered in the same sentence - is not registered."""

    def setup(rt, world):
        rt.register_orchestration_versioned("F", "1.0.0", lambda ctx, x: x)
        rt.set_orchestration_version_policy("F", "3.0.0")

    spec = SimSpec(name="policy", setup=setup, starts=[Start(instance="a", orchestration="F", input=1)])
    with pytest.raises(ValueError) as info:
        run_and_check(Simulation(spec, 0, FaultPlan.none()))
    assert "3.0.0" in str(info.value), str(info.value)


# ------------------------------------------------------------------ (3) bad input


def test_unregistered_warning_names_the_policy_version(caplog):
    """An unversioned start resolved through an Exact policy whose version is not registered
    backs off (SPEC §3.1 step 5); the warning must name the missing version, not say the
    (registered) orchestration is unregistered."""
    clock = SimClock()
    w = Fleet(InMemoryProvider(clock), clock, n=1, options=RuntimeOptions(max_attempts=2, **FAST_BACKOFF))
    w.rts[0].register_orchestration_versioned("F", "1.0.0", lambda ctx, x: x)
    w.rts[0].set_orchestration_version_policy("F", "3.0.0")
    w.client.start_orchestration("i", "F", 1)
    with caplog.at_level(logging.WARNING, logger="duroxide_sim"):
        w.run()
    assert w.client.get_status("i").status == "Failed"  # poison, as SPEC §10.2
    warnings = [r.getMessage() for r in caplog.records if "not registered" in r.getMessage()]
    assert warnings and all("3.0.0" in m for m in warnings), warnings


@pytest.mark.parametrize("bad", ["1.0.\u00b2", "\u00b9.0.0", "1." + "9" * 5000 + ".0"],
                         ids=["superscript-patch", "superscript-major", "5000-digit-minor"])
def test_malformed_version_raises_configuration_error(bad):
    """parse_semver promises ConfigurationError for anything that is not major.minor.patch; a
    superscript digit (str.isdigit() is True, int() refuses it) or an over-long number must not
    escape as a bare ValueError from int() at registration, policy or client start."""
    clock = SimClock()
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds())
    client = Client(provider, clock=clock)
    with pytest.raises(ConfigurationError):
        rt.register_orchestration_versioned("F", bad, lambda ctx, x: x)
    with pytest.raises(ConfigurationError):
        rt.set_orchestration_version_policy("F", bad)
    with pytest.raises(ConfigurationError):
        client.start_orchestration_versioned("i", "F", None, bad)


@pytest.mark.parametrize("registered,requested", [("1.0.0", "01.0.0"), ("1.0.0", "1.00.0"), ("01.0.0", "1.0.0"),
                                                  ("1.0.0", "\u0661.\u0660.\u0660")],
                         ids=["start-01.0.0", "start-1.00.0", "register-01.0.0", "start-arabic-indic-digits"])
def test_version_spellings_are_rejected_or_match(registered, requested):
    """The registry treats '1.0.0' and '01.0.0' (or Arabic-Indic digits) as the same version
    (registering both is 'already registered') but matches explicit versions as strings, so a
    start the client accepted is never run and is poisoned. Either the spelling is refused up
    front (semver forbids leading zeros; digits are ASCII) or it resolves to that version."""
    clock = SimClock()
    w = Fleet(InMemoryProvider(clock), clock, n=1, options=RuntimeOptions(max_attempts=2, **FAST_BACKOFF))
    try:
        w.rts[0].register_orchestration_versioned("F", registered, lambda ctx, x: ["ran", x])
        w.client.start_orchestration_versioned("i", "F", 1, requested)
    except ConfigurationError:
        return  # refused with a clear error: fine
    w.run()
    st = w.client.get_status("i")
    assert (st.status, st.output) == ("Completed", ["ran", 1]), st


@pytest.mark.parametrize("where", ["continue_as_new", "sub_orchestration", "detached"])
def test_non_string_version_in_orchestration_code_does_not_hang_sqlite(where, tmp_path):
    """ctx.continue_as_new_versioned("2.0.0", payload) - the Rust argument order (SPEC §17) - or
    a non-string version to schedule_sub_orchestration_versioned / start_orchestration_versioned
    is accepted by the context. On SQLite the started execution can then never be stored (its
    ack fails binding the dict), so the instance loops forever instead of failing: at worst it
    must end Failed (poison, SPEC §10.2), as on the in-memory provider. Fixed by refusing the
    version at the call."""
    clock = SimClock()
    provider = SqliteProvider.open(str(tmp_path / "app.db"), clock=clock)
    rt = Runtime(provider, RuntimeOptions(max_attempts=2, **FAST_BACKOFF), clock=clock, ids=SequentialIds())
    driver = SequentialDriver(rt, clock, max_steps=3_000)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    rt.register_orchestration_versioned("K", "1.0.0", lambda ctx, x: "k")

    def parent(ctx, n):
        yield ctx.schedule_timer(1)
        if where == "continue_as_new":
            if n == 0:
                yield ctx.continue_as_new_versioned("2.0.0", {"tier": "gold"})
            return n
        if where == "sub_orchestration":
            return (yield ctx.schedule_sub_orchestration_versioned("K", {"v": 1}, 1))
        yield ctx.start_orchestration_versioned("K", ["1.0.0"], "kid", 1)
        yield ctx.schedule_timer(1)
        return "started"

    rt.register_orchestration_versioned("P", "1.0.0", parent)
    rt.register_orchestration_versioned("P", "2.0.0", parent)
    client.start_orchestration("p", "P", 0)
    try:
        driver.run_until_quiet()
    except StuckError:
        pass
    st = client.get_status("p")
    kid = client.get_status("kid").status
    provider.close()
    # Refused at the call (a ConfigurationError naming the version), so the code that made it
    # fails - no execution with that version is ever written, and no child is started.
    assert st.status == "Failed", f"p is {st.status} after {driver.steps} steps (livelock)"
    assert "version must be a string like" in st.error, st.error
    assert kid == "NotFound"


def test_runtime_options_rejects_malformed_supported_versions():
    """RuntimeOptions validates at construction 'so a typo fails at start-up, not mid-run'
    (options.py docstring); a malformed supported_versions is only reported by the provider on
    every fetch, as 'filter minimum must be ...'."""
    for bad in [("abc", "1.0.0"), ("0.0.0", "latest"), "0.1.0", ("0.0.0",)]:
        with pytest.raises(DuroxideError):
            RuntimeOptions(supported_versions=bad)


def test_register_versioned_requires_a_version():
    """register_orchestration_versioned(name, version, fn) with version None silently registers
    1.0.0 (a missing configuration value becomes a real version); it must be refused like any
    other non-semver version (the client refuses None-typed garbage the same way)."""
    rt = Runtime(InMemoryProvider(SimClock()), RuntimeOptions(), clock=SimClock(), ids=SequentialIds())
    with pytest.raises(ConfigurationError):
        rt.register_orchestration_versioned("F", None, lambda ctx, x: x)


def test_duplicate_registration_keeps_first_and_names_version():
    """SPEC §12: duplicates are a build error, first kept; out-of-order is a hard error."""
    rt = Runtime(InMemoryProvider(SimClock()), RuntimeOptions(), clock=SimClock(), ids=SequentialIds())
    first = rt.register_orchestration_versioned("F", "1.0.0", lambda ctx, x: "first")
    with pytest.raises(ConfigurationError, match="1.0.0"):
        rt.register_orchestration_versioned("F", "1.0.0", lambda ctx, x: "second")
    with pytest.raises(ConfigurationError, match="1.0.0"):
        rt.register_orchestration("F", lambda ctx, x: "plain")
    assert rt.registry.resolve("F", "1.0.0").fn is first
    rt.register_orchestration_versioned("F", "2.0.0", lambda ctx, x: "v2")
    with pytest.raises(ConfigurationError, match="ascending"):
        rt.register_orchestration_versioned("F", "1.5.0", lambda ctx, x: "v15")
