"""Sessions and activity tags under faults, in the simulator and in production.

SPEC §15.3 (sessions and tags), §11.2 (lock stealing), §16 H28/H29, §17 (``schedule_activity_on_session``,
``with_tag``, ``TagFilter``, ``RuntimeOptions.max_sessions_per_runtime`` / ``session_*`` /
``worker_node_id``); duroxide-python 0.2.2 (``bench/.peer``) was run on the same shapes.

Workloads: a per-tenant cache that a first activity of a session warms and later activities of
the same session use (correct only while they run on the process that warmed it: the session's
owner); GPU work (tagged ``gpu``, plain and on a session) that only a GPU node may run; plain
session-less work beside it; more sessions than ``max_sessions_per_runtime`` lets a node hold.

Properties (checked on every run, also the fault-free twin):

* tags: no activity is fetched by a worker whose tag filter excludes its tag;
* affinity: a worker fetches a session's activity only if no *other* owner holds a live session
  lock (its last claim + ``session_lock_timeout_ms`` lies in the past) - after expiry a takeover is
  allowed (SPEC §15.3);
* cap: a worker never has more than ``max_sessions_per_runtime`` distinct sessions in flight
  (fetched, not yet acked - "distinct in-flight sessions", SPEC §15.3; the peer counts the same);
* no activity is fetched after its orchestration finished (SPEC §11.2: the terminal ack deletes
  its open activity rows);
* liveness / outcome / idempotency / determinism: the package's own checkers (run_and_check), and
  each instance's output is the expected one (nothing lost, nothing starved: a crashed owner's
  session is taken over once its lock expires).

The simulator applies ONE ``RuntimeOptions`` (``SimSpec.options``) to every node; it has no
per-node options. "Only node 0 runs GPU work" and per-node ``worker_node_id`` are expressed here
by giving each simulated node's worker dispatcher its own options from the spec's ``setup``
(``rt.worker_dispatcher.s.options``, chosen by the node index in ``rt.runtime_id``); the global
``worker_tag_filter`` is the union of the nodes' filters (the harness judges which queued items
some node will ever fetch by it), and the GPU box is node 0 because the checkers' fault-free twin
runs a single node (node 0). A ``worker_node_id`` in ``SimSpec.options`` makes every simulated
node the same session owner (see test_affinity_checker_flags_...).

Found by this file and fixed (the test failed before): the simulated nodes never renewed their
session locks (the runtime's maintenance task,
``Runtime._maintenance`` -> ``renew_session_lock``, runs only on the production thread driver), so
a live, non-idle owner loses its session ``session_lock_timeout_ms`` after its last fetch, where
production keeps it until ``session_idle_timeout_ms`` of idleness
(test_simulated_owner_keeps_its_live_non_idle_session_across_a_timer). The simulator now renews
live owners' locks across a jump of virtual time (harness._advance_renewing_sessions).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs
import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider, TagFilter
from duroxide_sim.core.events import OrchestrationCompleted, OrchestrationContinuedAsNew, OrchestrationFailed
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, Simulation, SimSpec, Start

REF = "tests/sim/test_sessions_tags_under_faults.py"

CAP = 2


# =================================================================================================
# The simulated workload
# =================================================================================================


def _probe(world: Any) -> dict[str, Any]:
    """Side records of a run (kept out of ``world.state``: the checkers compare that with the
    fault-free run, and which node ran what legitimately differs)."""
    probe = getattr(world, "probe", None)
    if probe is None:
        probe = {"fetches": [], "violations": [], "misses": [], "execs": []}
        world.probe = probe
    return probe


def _node_index(rt: Runtime) -> int:
    # the simulator names runtimes "sim-n{index}-{incarnation}"
    return int(rt.runtime_id.split("-")[1][1:])


def _gpu_node_filters(index: int) -> TagFilter:
    """Node 0: untagged and ``gpu`` work (the GPU box). Node 1: untagged work only (a CPU box).
    (The GPU box is node 0 because the checkers' fault-free twin runs one node, node 0.)"""
    return TagFilter.default_and(["gpu"]) if index == 0 else TagFilter.default_only()


def _terminal(provider: Any, instance: str, execution: int) -> bool:
    inner = getattr(provider, "inner", provider)
    try:
        events = inner.read_with_execution(instance, execution)
    except Exception:  # noqa: BLE001 - unknown instance
        return False
    return any(isinstance(e, (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)) for e in events)


def _make_setup(*, buggy: bool = False, node_filters: Any = _gpu_node_filters, node_ids: Any = None):
    """``node_filters(index)`` / ``node_ids(index)``: the per-node worker options (None: keep
    the spec's global options)."""

    def setup(rt: Runtime, world: Any) -> None:
        probe = _probe(world)
        process = rt.runtime_id
        index = _node_index(rt)
        wd = rt.worker_dispatcher
        changes: dict[str, Any] = {}
        if node_filters is not None:
            changes["worker_tag_filter"] = node_filters(index)
        if node_ids is not None:
            changes["worker_node_id"] = node_ids(index)
        if changes:
            wd.s.options = attrs.evolve(wd.s.options, **changes)
        opts = wd.s.options
        tag_filter, cap = opts.worker_tag_filter, opts.max_sessions_per_runtime
        cache: dict[str, str] = {}  # this process's memory: lost when it crashes
        gpu_models: dict[str, str] = {}
        inflight: dict[str, str | None] = {}  # lease token -> session id
        fetch, commit = wd.fetch, wd.commit

        def recording_fetch() -> Any:
            lease = fetch()
            if lease is not None:
                item = lease.item
                inflight[lease.lock_token] = item.session_id
                probe["fetches"].append({
                    "t": rt.clock.now_ms(), "process": process, "node": index, "owner": wd.owner_id,
                    "session": item.session_id, "tag": item.tag, "allowed": tag_filter.matches(item.tag),
                    "instance": item.instance, "id": item.id, "name": item.name,
                    "inflight_sessions": len({s for s in inflight.values() if s is not None}), "cap": cap,
                    "session_lock_ms": opts.session_lock_timeout_ms,
                    "after_terminal": _terminal(rt.provider, item.instance, item.execution_id),
                })
            return lease

        def recording_commit(lease: Any, outcome: Any, carry: Any = None) -> Any:
            try:
                return commit(lease, outcome, carry)
            finally:
                inflight.pop(lease.lock_token, None)

        wd.fetch = recording_fetch  # type: ignore[method-assign]
        wd.commit = recording_commit  # type: ignore[method-assign]

        def note(ctx: Any, what: str) -> None:
            probe["execs"].append((what, ctx.instance_id, ctx.session_id, ctx.tag(), ctx.worker_id, process))
            if not tag_filter.matches(ctx.tag()):
                probe["violations"].append(f"{what} (tag {ctx.tag()!r}) ran on {process} whose filter is {tag_filter!r}")

        @rt.register_activity("Tenant::warm")
        def warm(ctx: Any, tenant: str) -> str:
            note(ctx, "warm")
            cache[tenant] = f"cfg-{tenant}"
            return "warm"

        @rt.register_activity("Tenant::use")
        def use(ctx: Any, arg: dict) -> str:
            note(ctx, "use")
            tenant, item = arg["tenant"], arg["item"]
            if tenant not in cache:
                probe["misses"].append((ctx.session_id, process, ctx.instance_id, item))
                if buggy:
                    return f"{tenant}/{item}@STALE"  # planted: assumes the session's cache is warm
                cache[tenant] = f"cfg-{tenant}"  # correct: rehydrate on a miss
            value = f"{tenant}/{item}@{cache[tenant]}"
            world.put(f"bill:{ctx.instance_id}:{item}", value)
            return value

        @rt.register_activity("Gpu::render")
        def render(ctx: Any, x: str) -> str:
            note(ctx, "render")
            world.put(f"render:{x}", True)
            return f"frame-{x}"

        @rt.register_activity("Gpu::load")
        def load(ctx: Any, tenant: str) -> str:
            note(ctx, "load")
            gpu_models[tenant] = f"model-{tenant}"
            return "loaded"

        @rt.register_activity("Gpu::infer")
        def infer(ctx: Any, arg: dict) -> str:
            note(ctx, "infer")
            tenant = arg["tenant"]
            if tenant not in gpu_models:
                probe["misses"].append((ctx.session_id, process, ctx.instance_id, "infer"))
                gpu_models[tenant] = f"model-{tenant}"
            return f"{gpu_models[tenant]}:{arg['q']}"

        @rt.register_activity("Plain::audit")
        def audit(ctx: Any, x: str) -> str:
            note(ctx, "audit")
            world.put(f"audit:{x}", True)
            return "audited"

        @rt.register_orchestration("Tenant::job")
        def job(ctx: Any, arg: dict) -> Any:
            tenant, n = arg["tenant"], arg["n"]
            sid, gsid = f"tenant-{tenant}", f"gpu-{tenant}"
            yield ctx.schedule_activity_on_session("Tenant::warm", tenant, sid)
            uses = yield ctx.all_typed(
                [ctx.schedule_activity_on_session("Tenant::use", {"tenant": tenant, "item": i}, sid) for i in range(n)])
            frame = yield ctx.schedule_activity("Gpu::render", ctx.instance_id).with_tag("gpu")
            audited = yield ctx.schedule_activity("Plain::audit", ctx.instance_id)
            yield ctx.schedule_activity_on_session("Gpu::load", tenant, gsid).with_tag("gpu")
            answer = yield ctx.schedule_activity_on_session("Gpu::infer", {"tenant": tenant, "q": ctx.instance_id},
                                                            gsid).with_tag("gpu")
            last = yield ctx.schedule_activity_on_session("Tenant::use", {"tenant": tenant, "item": "final"}, sid)
            return {"uses": uses, "frame": frame, "audit": audited, "answer": answer, "last": last}

    return setup


def _expected(instance: str, tenant: str, n: int) -> dict[str, Any]:
    cfg = f"cfg-{tenant}"
    return {"uses": [f"{tenant}/{i}@{cfg}" for i in range(n)], "frame": f"frame-{instance}", "audit": "audited",
            "answer": f"model-{tenant}:{instance}", "last": f"{tenant}/final@{cfg}"}


# Six tenants (12 sessions: tenant-* and gpu-*) for two nodes capped at 2 sessions each; two
# instances per tenant share the tenant's sessions.
TENANTS = ("acme", "bolt", "cato", "dune", "echo", "fjord")
STARTS = [Start(instance=f"{t}-{k}", orchestration="Tenant::job", input={"tenant": t, "n": 3}, at_ms=k * 10)
          for t in TENANTS for k in range(2)]
EXPECTED = {s.instance: ("Completed", _expected(s.instance, s.input["tenant"], s.input["n"])) for s in STARTS}

OPTIONS = RuntimeOptions(worker_concurrency=3, max_sessions_per_runtime=CAP,
                         worker_tag_filter=TagFilter.default_and(["gpu"]))


# --- the properties, as spec invariants --------------------------------------------------------


def _session_claims_ok(result: Any, key: str = "owner") -> str | None:
    """A session's row is fetched by ``key`` only if no other ``key`` holds a live session lock:
    every fetch of a session row claims (or re-claims) it until ``t + session_lock_timeout``."""
    held: dict[str, tuple[str, int, Any]] = {}
    for f in _probe(result.world)["fetches"]:
        sid = f["session"]
        if sid is None:
            continue
        who = f[key]
        cur = held.get(sid)
        if cur is not None and cur[0] != who and cur[1] > f["t"]:
            prev = cur[2]
            return (f"session {sid!r}: {key} {who} fetched {f['name']} ({f['instance']}#{f['id']}) at t={f['t']} "
                    f"while {key} {cur[0]} held the session lock until t={cur[1]} "
                    f"(claimed by its fetch of {prev['name']} ({prev['instance']}#{prev['id']}) at t={prev['t']})")
        held[sid] = (who, f["t"] + f["session_lock_ms"], f)
    return None


def session_affinity(result: Any) -> str | None:
    return _session_claims_ok(result, "owner")


def tags_respected(result: Any) -> str | None:
    probe = _probe(result.world)
    bad = [f for f in probe["fetches"] if not f["allowed"]]
    if bad:
        f = bad[0]
        return f"{f['name']} tagged {f['tag']!r} fetched by {f['process']} whose filter excludes it ({len(bad)} such)"
    if probe["violations"]:
        return probe["violations"][0]
    return None


def gpu_only_on_node_0(result: Any) -> str | None:
    bad = [f for f in _probe(result.world)["fetches"] if f["tag"] == "gpu" and f["node"] != 0]
    return f"gpu work ran on node {bad[0]['node']}: {bad[0]}" if bad else None


def session_cap(result: Any) -> str | None:
    bad = [f for f in _probe(result.world)["fetches"] if f["inflight_sessions"] > f["cap"]]
    return (f"{bad[0]['process']} had {bad[0]['inflight_sessions']} sessions in flight (cap {bad[0]['cap']}) "
            f"after fetching {bad[0]['name']} at t={bad[0]['t']}") if bad else None


def nothing_after_terminal(result: Any) -> str | None:
    bad = [f for f in _probe(result.world)["fetches"] if f["after_terminal"]]
    return (f"{bad[0]['name']} ({bad[0]['instance']}#{bad[0]['id']}) fetched by {bad[0]['process']} after its "
            f"orchestration finished") if bad else None


INVARIANTS = (session_affinity, tags_respected, gpu_only_on_node_0, session_cap, nothing_after_terminal)

TENANT_CACHE = SimSpec(name="tenant-cache", setup=_make_setup(), ref=f"{REF}:TENANT_CACHE", starts=STARTS,
                       options=OPTIONS, invariants=INVARIANTS)
# Stable per-node identities (worker_node_id = pod name): a restarted node reclaims its sessions.
TENANT_CACHE_PODS = SimSpec(name="tenant-cache-pods", setup=_make_setup(node_ids=lambda i: f"pod-{i}"),
                            ref=f"{REF}:TENANT_CACHE_PODS", starts=STARTS, options=OPTIONS, invariants=INVARIANTS)
# Planted application bug: Tenant::use assumes the session's cache is warm.
TENANT_CACHE_BUGGY = SimSpec(name="tenant-cache-buggy", setup=_make_setup(buggy=True), ref=f"{REF}:TENANT_CACHE_BUGGY",
                             starts=STARTS, options=OPTIONS, invariants=INVARIANTS)


def _run(spec: SimSpec, seed: int, plan: Any, **kw: Any) -> Any:
    return run_and_check(Simulation(spec, seed, plan, **kw))


def _report(r: Any) -> str:
    return "\n".join(f.render() for f in r.failures)


def _check_outputs(r: Any, expected: dict[str, Any]) -> None:
    got = r.outputs()
    for inst, want in expected.items():
        if inst in r.budget_exhausted:
            continue
        assert got.get(inst) == want, f"seed {r.seed}: {inst}: {got.get(inst)!r} != {want!r}\n{r.plan.to_json()}"


# --- a session that mixes tags: its GPU step waits for the CPU owner's lock to lapse ---------------


def _mixed_setup(rt: Runtime, world: Any) -> None:
    _make_setup()(rt, world)

    @rt.register_orchestration("Pipeline::job")
    def pipeline(ctx: Any, tenant: str) -> Any:
        sid = f"pipe-{tenant}"
        yield ctx.schedule_activity_on_session("Tenant::warm", tenant, sid)  # any node may claim the session
        yield ctx.schedule_activity_on_session("Gpu::load", tenant, sid).with_tag("gpu")  # only node 0 may run it
        return (yield ctx.schedule_activity_on_session("Gpu::infer", {"tenant": tenant, "q": ctx.instance_id},
                                                       sid).with_tag("gpu"))


MIXED_STARTS = [Start(instance=f"pipe-{t}", orchestration="Pipeline::job", input=t) for t in TENANTS[:4]]
MIXED_EXPECTED = {s.instance: ("Completed", f"model-{s.input}:{s.instance}") for s in MIXED_STARTS}
MIXED_TAG_SESSION = SimSpec(name="mixed-tag-session", setup=_mixed_setup, ref=f"{REF}:MIXED_TAG_SESSION",
                            starts=MIXED_STARTS, options=OPTIONS, invariants=INVARIANTS)


# --- a per-tenant actor that continues as new, its session carried across executions --------------


def _actor_setup(rt: Runtime, world: Any) -> None:
    _make_setup()(rt, world)

    @rt.register_orchestration("Tenant::actor")
    def actor(ctx: Any, arg: dict) -> Any:
        tenant, left = arg["tenant"], arg["left"]
        sid = f"actor-{tenant}"
        if arg.get("first", True):
            yield ctx.schedule_activity_on_session("Tenant::warm", tenant, sid)
        out = yield ctx.all_typed([ctx.schedule_activity_on_session(
            "Tenant::use", {"tenant": tenant, "item": f"b{left}-{i}"}, sid) for i in range(2)])
        yield ctx.schedule_activity("Plain::audit", f"{ctx.instance_id}-{left}")
        if left > 0:
            return (yield ctx.continue_as_new({"tenant": tenant, "left": left - 1, "first": False}))
        return out


ACTOR_STARTS = [Start(instance=f"actor-{t}", orchestration="Tenant::actor", input={"tenant": t, "left": 3})
                for t in TENANTS[:3]]
ACTOR_EXPECTED = {s.instance: ("Completed", [f"{s.input['tenant']}/b0-{i}@cfg-{s.input['tenant']}" for i in range(2)])
                  for s in ACTOR_STARTS}
TENANT_ACTOR = SimSpec(name="tenant-actor", setup=_actor_setup, ref=f"{REF}:TENANT_ACTOR", starts=ACTOR_STARTS,
                       options=OPTIONS, invariants=INVARIANTS)

# One session per worker at a time, four worker slots, a session lock 4x the worker lock: a lock
# expiry jump (worker lock + 1 ms) expires leases but not the sessions.
TIGHT_OPTIONS = RuntimeOptions(worker_concurrency=4, max_sessions_per_runtime=1, session_lock_timeout_ms=120_000,
                               worker_tag_filter=TagFilter.default_and(["gpu"]))
TENANT_CACHE_TIGHT = SimSpec(name="tenant-cache-tight", setup=_make_setup(), ref=f"{REF}:TENANT_CACHE_TIGHT",
                             starts=STARTS, options=TIGHT_OPTIONS, invariants=INVARIANTS)


# --- client cancellations racing the session work (outcomes depend on timing: not fault-transparent)


CANCEL_STARTS = STARTS[:6]
CANCELS = SimSpec(name="tenant-cache-cancels", setup=_make_setup(), ref=f"{REF}:CANCELS", starts=CANCEL_STARTS,
                  signals=[Signal(instance=s.instance, kind="cancel", name="tenant offboarded", at_ms=k * 3)
                           for k, s in enumerate(CANCEL_STARTS) if k % 2 == 0],
                  options=OPTIONS, invariants=INVARIANTS, fault_transparent=False)


def _check_cancel_outputs(r: Any) -> None:
    for inst, (status, value) in r.outputs().items():
        if inst in r.budget_exhausted:
            continue
        if status == "Failed" and str(value).startswith("poison:"):
            continue  # the faults used up the retry budget (max_attempts deliveries): documented
        assert (status, value) == EXPECTED[inst] or (status, value) == ("Failed", "canceled: tenant offboarded"), \
            f"seed {r.seed}: {inst}: {(status, value)!r}"


# =================================================================================================
# Simulation tests
# =================================================================================================

PLANS = {
    "all-5%": FaultPlan.all(0.05),
    "all-20%": FaultPlan.all(0.2),
    "crash+expiry-10%": FaultPlan.only("crash", "crash_after_effect", "lock_expiry", rate=0.1),
    "swarm": "swarm",
}
SEEDS = range(20)


@pytest.mark.parametrize("plan", list(PLANS), ids=list(PLANS))
@pytest.mark.parametrize("spec", [TENANT_CACHE, TENANT_CACHE_PODS, TENANT_CACHE_TIGHT, MIXED_TAG_SESSION, TENANT_ACTOR],
                         ids=lambda s: s.name)
def test_session_and_tag_workloads_hold_every_property_under_faults(spec: SimSpec, plan: str) -> None:
    """Tags never routed to an excluded worker, no fetch of a session another owner holds a live
    lock on, at most max_sessions_per_runtime sessions in flight per worker, nothing fetched after
    its orchestration ended, every instance done with its expected output (no starvation: a
    crashed owner's session is taken over after its lock expires), and the package's checkers."""
    expected = {MIXED_TAG_SESSION.name: MIXED_EXPECTED, TENANT_ACTOR.name: ACTOR_EXPECTED}.get(spec.name, EXPECTED)
    for seed in SEEDS:
        r = _run(spec, seed, PLANS[plan])
        assert r.ok, _report(r)
        _check_outputs(r, expected)


@pytest.mark.parametrize("plan", ["all-5%", "swarm"])
def test_cancelled_tenants_leave_no_activity_running_after_they_end(plan: str) -> None:
    """A client cancel racing the session work: the instance ends cancelled or completed, and no
    activity of it is fetched after it ended (SPEC §11.1/§11.2); the other properties hold."""
    for seed in SEEDS:
        r = _run(CANCELS, seed, PLANS[plan])
        assert r.ok, _report(r)
        _check_cancel_outputs(r)


def test_workloads_pass_on_the_sqlite_provider_too() -> None:
    for spec, expected in ((TENANT_CACHE, EXPECTED), (TENANT_CACHE_PODS, EXPECTED), (MIXED_TAG_SESSION, MIXED_EXPECTED)):
        for seed in range(4):
            r = _run(spec, seed, FaultPlan.all(0.05), provider="sqlite")
            assert r.ok, _report(r)
            _check_outputs(r, expected)


def test_the_properties_are_exercised() -> None:
    """The invariants are not vacuous: sessions beyond the cap wait (some worker reaches its cap),
    GPU work reaches the GPU node, sessions are taken over after crashes / lock expiry (and only
    then), restarted pods reclaim their own sessions at once (SPEC §16 H28 self-reclaim)."""
    at_cap = gpu = takeovers = self_reclaims = misses = 0
    for spec in (TENANT_CACHE, TENANT_CACHE_PODS):
        for seed in range(10):
            r = _run(spec, seed, FaultPlan.only("crash", "lock_expiry", rate=0.1))
            assert r.ok, _report(r)
            probe = r.world.probe
            misses += len(probe["misses"])
            last: dict[str, dict[str, Any]] = {}
            for f in probe["fetches"]:
                at_cap += f["inflight_sessions"] == f["cap"]
                gpu += f["tag"] == "gpu"
                sid = f["session"]
                if sid is None:
                    continue
                prev = last.get(sid)
                if prev is not None and prev["owner"] != f["owner"]:
                    takeovers += 1
                    assert f["t"] >= prev["t"] + prev["session_lock_ms"], (prev, f)
                if (prev is not None and prev["owner"] == f["owner"] and prev["process"] != f["process"]
                        and f["t"] < prev["t"] + prev["session_lock_ms"]):
                    self_reclaims += 1
                last[sid] = f
    assert at_cap > 0 and gpu > 0 and takeovers > 0 and self_reclaims > 0 and misses > 0, \
        (at_cap, gpu, takeovers, self_reclaims, misses)
    # a GPU step of a session the CPU box claimed waited for that lock to lapse (30 s), then ran
    waited = 0
    for seed in range(5):
        r = _run(MIXED_TAG_SESSION, seed, None)
        assert r.ok, _report(r)
        waited += any(f["tag"] == "gpu" and f["node"] == 0 and f["t"] - r.world.probe["fetches"][0]["t"] >= 30_000
                      for f in r.world.probe["fetches"])
    assert waited > 0


def test_checkers_catch_an_activity_that_assumes_the_session_cache_is_warm() -> None:
    """Planted bug: Tenant::use returns a stale value on a cold cache instead of rehydrating.
    Without faults the session never leaves its owner (no bug visible); under crashes / lock
    expiry the session moves (legitimately) and the outcome/idempotency checkers must report it,
    while the runtime's own properties (the invariants) still hold."""
    for seed in range(5):
        r = _run(TENANT_CACHE_BUGGY, seed, None)
        assert r.ok, _report(r)
        assert not r.world.probe["misses"]
    caught = []
    for seed in range(10):
        r = _run(TENANT_CACHE_BUGGY, seed, FaultPlan.only("crash", "lock_expiry", rate=0.05))
        assert not [f for f in r.failures if f.checker == "invariants"], _report(r)
        caught += [f for f in r.failures if f.checker in ("outcome", "idempotency")]
    assert caught, "the stale-cache bug was never reported"
    assert any("STALE" in f.message for f in caught if f.checker == "outcome")
    assert any("Tenant::use" in f.message for f in caught if f.checker == "idempotency")


def test_affinity_checker_flags_two_processes_sharing_one_session_owner_id() -> None:
    """The simulator has no per-node options: a ``worker_node_id`` in ``SimSpec.options`` is given
    to every node, so all simulated processes become ONE session owner and a session's activities
    run on two processes at once (both caches cold/warm independently). The provider is right to
    allow it (same owner); checked per process the affinity property breaks, which shows the
    checker is not vacuous and what that configuration does."""
    shared = SimSpec(name="shared-node-id", setup=_make_setup(), starts=STARTS,
                     options=attrs.evolve(OPTIONS, worker_node_id="pod"), invariants=INVARIANTS)
    r = _run(shared, 0, None)
    assert r.ok, _report(r)  # per owner id everything holds
    message = _session_claims_ok(r, "process")
    assert message is not None and message.startswith("session ") and "process sim-n" in message, message


def _gap_setup(rt: Runtime, world: Any) -> None:
    probe = _probe(world)

    @rt.register_activity("Step")
    def step(ctx: Any, x: str) -> str:
        probe["execs"].append((x, ctx.worker_id, rt.clock.now_ms()))
        return x

    @rt.register_orchestration("Gap")
    def gap(ctx: Any, _: Any) -> Any:
        out = [(yield ctx.schedule_activity_on_session("Step", "before", "s"))]
        yield ctx.schedule_timer(60_000)  # 1 min: longer than the session lock (30 s), far below the idle timeout (5 min)
        out.append((yield ctx.schedule_activity_on_session("Step", "after", "s")))
        return out


SESSION_GAP = SimSpec(name="session-gap", setup=_gap_setup, ref=f"{REF}:SESSION_GAP",
                      starts=[Start(instance="gap", orchestration="Gap")])


def test_simulated_owner_keeps_its_live_non_idle_session_across_a_timer() -> None:
    """SPEC §15.3/§14: the owner renews its live, non-idle sessions (``renew_session_lock``,
    every session-lock renewal period) until they are idle for ``session_idle_timeout_ms`` (5 min
    by default): production keeps a session on its (alive) owner across a 1-minute timer (see
    ``test_production_owner_renews_its_session_across_timer_gaps``). The simulated nodes run the
    same runtime, with no fault injected: the second activity must run where the first ran."""
    moved = []
    for seed in SEEDS:
        r = _run(SESSION_GAP, seed, None)
        assert r.ok, _report(r)
        owners = [w for _, w, _ in r.world.probe["execs"]]
        if len(set(owners)) > 1:
            moved.append((seed, r.world.probe["execs"]))
    assert not moved, (f"{len(moved)}/{len(SEEDS)} fault-free seeds moved a live owner's session to the other node "
                       f"after a 60 s timer (no session lock renewal in the simulator), e.g. seed {moved[0][0]}: "
                       f"{moved[0][1]}")


# =================================================================================================
# Production: real Runtimes (threads, wall clock) on one SQLite file
# =================================================================================================


class _Recorder:
    """What ran where, per runtime: executions, cache misses, concurrently executing sessions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: list[dict[str, Any]] = []
        self.executing: dict[str, dict[str, int]] = {}  # worker -> session -> running activities
        self.peak: dict[str, int] = {}
        self.violations: list[str] = []

    def enter(self, ctx: Any, what: str, tag_filter: TagFilter, cold: bool) -> None:
        with self.lock:
            self.runs.append({"what": what, "instance": ctx.instance_id, "session": ctx.session_id,
                              "tag": ctx.tag(), "worker": ctx.worker_id, "cold": cold, "at": time.monotonic()})
            if not tag_filter.matches(ctx.tag()):
                self.violations.append(f"{what} tagged {ctx.tag()!r} ran on {ctx.worker_id} ({tag_filter!r})")
            if ctx.session_id is not None:
                mine = self.executing.setdefault(ctx.worker_id, {})
                mine[ctx.session_id] = mine.get(ctx.session_id, 0) + 1
                self.peak[ctx.worker_id] = max(self.peak.get(ctx.worker_id, 0), len(mine))

    def leave(self, ctx: Any) -> None:
        if ctx.session_id is None:
            return
        with self.lock:
            mine = self.executing[ctx.worker_id]
            mine[ctx.session_id] -= 1
            if not mine[ctx.session_id]:
                del mine[ctx.session_id]

    def owners(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for r in self.runs:
            if r["session"] is not None:
                out.setdefault(r["session"], set()).add(r["worker"])
        return out


def _production_runtime(db: str, rec: _Recorder, **opts: Any) -> Runtime:
    options = RuntimeOptions(dispatcher_poll_interval_ms=5, **opts)
    rt = Runtime(SqliteProvider.open(db), options)  # one provider per runtime, as separate processes
    tag_filter = options.worker_tag_filter
    cache: dict[str, str] = {}
    models: dict[str, str] = {}

    def run(ctx: Any, what: str, cold: bool, fn: Any) -> Any:
        rec.enter(ctx, what, tag_filter, cold)
        try:
            time.sleep(0.01)  # long enough for activities of several sessions to overlap
            return fn()
        finally:
            rec.leave(ctx)

    @rt.register_activity("Tenant::warm")
    def warm(ctx: Any, tenant: str) -> str:
        def body() -> str:
            cache[tenant] = f"cfg-{tenant}"
            return "warm"
        return run(ctx, "warm", False, body)

    @rt.register_activity("Tenant::use")
    def use(ctx: Any, arg: dict) -> str:
        tenant = arg["tenant"]
        cold = tenant not in cache

        def body() -> str:
            cache.setdefault(tenant, f"cfg-{tenant}")
            return f"{tenant}/{arg['item']}@{cache[tenant]}"
        return run(ctx, "use", cold, body)

    @rt.register_activity("Gpu::render")
    def render(ctx: Any, x: str) -> str:
        return run(ctx, "render", False, lambda: f"frame-{x}")

    @rt.register_activity("Gpu::load")
    def load(ctx: Any, tenant: str) -> str:
        def body() -> str:
            models[tenant] = f"model-{tenant}"
            return "loaded"
        return run(ctx, "load", False, body)

    @rt.register_activity("Gpu::infer")
    def infer(ctx: Any, arg: dict) -> str:
        cold = arg["tenant"] not in models
        return run(ctx, "infer", cold, lambda: f"{models.setdefault(arg['tenant'], 'model-' + arg['tenant'])}:{arg['q']}")

    @rt.register_activity("Plain::audit")
    def audit(ctx: Any, x: str) -> str:
        return run(ctx, "audit", False, lambda: "audited")

    @rt.register_orchestration("Tenant::job")
    def job(ctx: Any, arg: dict) -> Any:  # the simulated workload's orchestration
        tenant, n = arg["tenant"], arg["n"]
        sid, gsid = f"tenant-{tenant}", f"gpu-{tenant}"
        yield ctx.schedule_activity_on_session("Tenant::warm", tenant, sid)
        uses = yield ctx.all_typed(
            [ctx.schedule_activity_on_session("Tenant::use", {"tenant": tenant, "item": i}, sid) for i in range(n)])
        frame = yield ctx.schedule_activity("Gpu::render", ctx.instance_id).with_tag("gpu")
        audited = yield ctx.schedule_activity("Plain::audit", ctx.instance_id)
        yield ctx.schedule_activity_on_session("Gpu::load", tenant, gsid).with_tag("gpu")
        answer = yield ctx.schedule_activity_on_session("Gpu::infer", {"tenant": tenant, "q": ctx.instance_id},
                                                        gsid).with_tag("gpu")
        last = yield ctx.schedule_activity_on_session("Tenant::use", {"tenant": tenant, "item": "final"}, sid)
        return {"uses": uses, "frame": frame, "audit": audited, "answer": answer, "last": last}

    @rt.register_orchestration("Sticky")
    def sticky(ctx: Any, arg: dict) -> Any:
        """warm; wait (a queue message, or timers with a use after each); use three times - all on
        one session."""
        sid = arg["session"]
        yield ctx.schedule_activity_on_session("Tenant::warm", arg["tenant"], sid)
        if arg.get("event"):
            yield ctx.dequeue_event(arg["event"])  # a queue: buffered even if sent before the wait (SPEC §6.2)
        for _ in range(arg.get("gaps", 0)):
            yield ctx.schedule_timer(arg["gap_ms"])
            yield ctx.schedule_activity_on_session("Tenant::use", {"tenant": arg["tenant"], "item": "gap"}, sid)
        return (yield ctx.all_typed([ctx.schedule_activity_on_session(
            "Tenant::use", {"tenant": arg["tenant"], "item": i}, sid) for i in range(3)]))

    @rt.register_orchestration("Mixed")
    def mixed(ctx: Any, tenant: str) -> Any:
        sid = f"mixed-{tenant}"
        yield ctx.schedule_activity_on_session("Tenant::warm", tenant, sid)
        yield ctx.schedule_activity_on_session("Gpu::load", tenant, sid).with_tag("gpu")
        return (yield ctx.schedule_activity_on_session("Gpu::infer", {"tenant": tenant, "q": "x"}, sid).with_tag("gpu"))

    return rt


def _wait_all(client: Client, instances: list[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    out = {}
    for inst in instances:
        left = max(int((deadline - time.monotonic()) * 1000), 1)
        try:
            st = client.wait_for_orchestration(inst, left)
        except RuntimeError as exc:  # timed out: report where it stands
            st = client.get_status(inst)
            out[inst] = ("TIMEOUT", st.status, str(exc))
            continue
        out[inst] = (st.status, st.output if st.status == "Completed" else st.error)
    return out


@pytest.fixture
def shutdown_later() -> Any:
    started: list[Runtime] = []
    yield started
    for rt in started:
        rt.shutdown(2_000)


def test_production_gpu_node_and_cpu_node_sessions_tags_and_cap(tmp_path: Any, shutdown_later: list) -> None:
    """Two runtimes on one SQLite file: a GPU box (default_and(['gpu'])) and a CPU box
    (default_only), each capped at 2 sessions, 12 instances over 12 sessions. GPU work runs only on
    the GPU box, each session on one box (its lock lives: renewed), the cache is never cold, no box
    ever executes activities of more than 2 sessions at once, and everything completes."""
    db = str(tmp_path / "shared.db")
    rec = _Recorder()
    common = dict(worker_concurrency=4, max_sessions_per_runtime=CAP)
    gpu = _production_runtime(db, rec, worker_node_id="gpu-box", worker_tag_filter=TagFilter.default_and(["gpu"]), **common)
    cpu = _production_runtime(db, rec, worker_node_id="cpu-box", worker_tag_filter=TagFilter.default_only(), **common)
    for rt in (gpu, cpu):
        shutdown_later.append(rt.start())
    client = Client(SqliteProvider.open(db))
    for s in STARTS:
        client.start_orchestration(s.instance, s.orchestration, s.input)
    got = _wait_all(client, [s.instance for s in STARTS], 60)
    assert got == EXPECTED
    assert not rec.violations, rec.violations
    assert {r["worker"] for r in rec.runs if r["tag"] == "gpu"} == {"gpu-box"}
    owners = rec.owners()
    assert all(owners[f"gpu-{t}"] == {"gpu-box"} for t in TENANTS), owners  # GPU sessions: GPU box only
    assert all(len(w) == 1 for w in owners.values()), owners  # one owner per session
    assert not [r for r in rec.runs if r["cold"]], [r for r in rec.runs if r["cold"]]
    assert all(p <= CAP for p in rec.peak.values()), rec.peak


def test_production_session_of_a_stopped_owner_is_taken_over_after_its_lock_expires(tmp_path: Any,
                                                                                      shutdown_later: list) -> None:
    """Owner A warms the session and stops (no more renewals). B takes the session over once the
    session lock (1.5 s) has expired - not before - and the instance completes (no starvation);
    B's cache is cold, so a correct activity rehydrates."""
    db = str(tmp_path / "takeover.db")
    rec = _Recorder()
    opts = dict(session_lock_timeout_ms=1_500, session_lock_renewal_buffer_ms=500)
    a = _production_runtime(db, rec, worker_node_id="A", **opts)
    a.start()
    client = Client(SqliteProvider.open(db))
    client.start_orchestration("t1", "Sticky", {"tenant": "acme", "session": "s-acme", "event": "go"})
    deadline = time.monotonic() + 10
    while not rec.runs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r["worker"] for r in rec.runs] == ["A"]
    b = _production_runtime(db, rec, worker_node_id="B", **opts)
    shutdown_later.append(b.start())
    a.shutdown(2_000)
    stopped = time.monotonic()
    client.enqueue_event("t1", "go", "now")
    got = _wait_all(client, ["t1"], 20)
    assert got == {"t1": ("Completed", [f"acme/{i}@cfg-acme" for i in range(3)])}
    later = rec.runs[1:]
    assert {r["worker"] for r in later} == {"B"}
    assert later[0]["cold"]  # B's memory never had it: the application must rehydrate (SPEC §15.3 takeover)
    # not before A's lock (claimed when A fetched the warm-up, renewed while A ran) expired ...
    assert later[0]["at"] >= rec.runs[0]["at"] + 1.5 - 0.2, (rec.runs[0]["at"], later[0]["at"])
    # ... and soon after (no starvation)
    assert later[0]["at"] - stopped < 15


def test_production_owner_renews_its_session_across_timer_gaps(tmp_path: Any, shutdown_later: list) -> None:
    """SPEC §15.3: the owner's maintenance renews its live, non-idle sessions: with a 1 s session
    lock and 2.5 s timers between the session's activities, both runtimes alive, every activity of
    the session runs on the owner that claimed it (the other runtime is never let in)."""
    db = str(tmp_path / "renew.db")
    rec = _Recorder()
    opts = dict(session_lock_timeout_ms=1_000, session_lock_renewal_buffer_ms=500, session_idle_timeout_ms=60_000)
    for node in ("A", "B"):
        shutdown_later.append(_production_runtime(db, rec, worker_node_id=node, **opts).start())
    client = Client(SqliteProvider.open(db))
    client.start_orchestration("g1", "Sticky", {"tenant": "bolt", "session": "s-bolt", "gaps": 2, "gap_ms": 2_500})
    got = _wait_all(client, ["g1"], 30)
    assert got == {"g1": ("Completed", [f"bolt/{i}@cfg-bolt" for i in range(3)])}
    assert len(rec.owners()["s-bolt"]) == 1, rec.runs
    assert not [r for r in rec.runs if r["cold"]]


def test_production_gpu_step_of_a_session_held_by_a_cpu_node_waits_only_until_the_lock_lapses(
        tmp_path: Any, shutdown_later: list) -> None:
    """A session claimed by the CPU box (its untagged first step) whose next steps are tagged
    ``gpu``: the GPU box may not take the session while the CPU box's lock lives (SPEC §15.3),
    and the CPU box cannot run them (its filter); the CPU box stops renewing once the session is
    idle (session_idle_timeout_ms), the lock lapses, the GPU box claims it. Bounded wait, no
    starvation (duroxide-python 0.2.2: the same shape completes after its fixed 30 s lock)."""
    db = str(tmp_path / "mixed.db")
    rec = _Recorder()
    opts = dict(session_lock_timeout_ms=1_000, session_lock_renewal_buffer_ms=500, session_idle_timeout_ms=1_500,
                worker_lock_timeout_ms=2_000)
    cpu = _production_runtime(db, rec, worker_node_id="cpu-box", worker_tag_filter=TagFilter.default_only(), **opts)
    shutdown_later.append(cpu.start())
    client = Client(SqliteProvider.open(db))
    client.start_orchestration("m1", "Mixed", "cato")
    deadline = time.monotonic() + 10
    while not rec.runs and time.monotonic() < deadline:
        time.sleep(0.01)
    gpu = _production_runtime(db, rec, worker_node_id="gpu-box", worker_tag_filter=TagFilter.tags(["gpu"]), **opts)
    shutdown_later.append(gpu.start())
    got = _wait_all(client, ["m1"], 20)
    assert got == {"m1": ("Completed", "model-cato:x")}
    assert [(r["what"], r["worker"]) for r in rec.runs] == [("warm", "cpu-box"), ("load", "gpu-box"), ("infer", "gpu-box")]
    assert not rec.violations
