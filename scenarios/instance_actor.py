"""Instance actor: one eternal orchestration per database instance (the DBaaS control plane's
"actor" started by ``provisioning.py`` and stopped by ``deletion.py``).

What it models
    Every ``health_interval_ms`` the actor probes its database (``health_check``, a read-only
    probe of the external world); a degraded instance gets an idempotent repair
    (``repair_instance``, retried with exponential back-off). After each iteration the actor
    *continues as new* with its state (``ActorState``) so its history never grows: every
    execution holds one iteration (at most 10 events) however long the database lives.

    It stops gracefully when an ``InstanceDeleted`` message arrives (or, as a fallback, when
    its health check finds the instance's record marked ``deleting``):
    ``select2(timer, dequeue_event("InstanceDeleted"))``. The deletion notice is a *queue*
    message (``enqueue_event``), not a positional event: a queue message that arrives while
    the actor is busy with a health check, or in the gap between two executions, is kept and
    carried across continue-as-new (SPEC §6.2), whereas a positional ``raise_event`` arriving
    in that gap would be lost and the actor would never stop.

Properties (besides the harness's determinism/idempotency/outcome/liveness/well-formedness)
    * ``history_bounded``: every execution of every actor has at most 10 events, over 1,000+
      iterations (in ``LONG_RUN`` the ``db-long`` actor runs 1,003 iterations in virtual time,
      ~3.5 days; ``SPEC``, swept over many seeds, runs it for 60);
    * ``long_actor_ran_all_iterations``: ``db-long`` really ran (at least 1,000 iterations in
      ``LONG_RUN``, 57 in ``SPEC``);
    * ``actors_exit_on_deletion``: each actor completed (``{"reason": "deleted"}``);
    * ``repairs_match_incidents``: exactly the scheduled incidents seen by the actor were
      repaired, once each.

    The spec is fault-transparent: the actor's output does not contain the iteration count
    (faults shift virtual time by a few minutes, so the number of iterations before the
    deletion notice may differ), and incidents are scheduled far from the end of the run.

Planted bug (``VARIANTS``)
    ``jittered-interval``: "spread the health checks to avoid a thundering herd" by adding
    ``random.randint(0, 30_000)`` ms to the timer *inside the orchestration*. Timer matching
    tolerates the different value (history's ``fire_at_ms`` wins), so replay does not even
    notice; the sandbox does (run with ``sandbox=True`` / ``--sandbox``). The fix: draw the
    jitter in an activity, or derive it from the instance id.

Durations come from the orchestration input, so production mode (``PRODUCTION``) runs the same
code with millisecond intervals and 30 iterations.
"""

from __future__ import annotations

import random

import attrs

from duroxide_sim import Backoff, RetryPolicy
from duroxide_sim.sim.harness import Signal, SimSpec, Start
from scenarios._common import fixture_once, instances_of, poisoned, status_of


class Names:
    class Orchestrations:
        INSTANCE_ACTOR = "dbaas::orchestration::instance_actor"

    class Activities:
        HEALTH_CHECK = "dbaas::activity::health_check"
        REPAIR = "dbaas::activity::repair_instance"

    class Queues:
        INSTANCE_DELETED = "InstanceDeleted"


MAX_EVENTS_PER_EXECUTION = 10


# --- typed payloads ---------------------------------------------------------------------------


@attrs.define
class ActorState:
    db_id: str
    health_interval_ms: int
    iteration: int = 0


@attrs.define
class HealthProbe:
    db_id: str
    iteration: int


@attrs.define
class HealthReport:
    db_id: str
    iteration: int
    status: str  # "healthy" | "degraded" | "missing" | "deleting"


@attrs.define
class RepairRequest:
    db_id: str
    iteration: int


@attrs.define
class DeletionNotice:
    db_id: str
    requested_by: str


@attrs.define
class ActorExit:
    db_id: str
    reason: str = "deleted"


def actor_id(db_id: str) -> str:
    """The actor's instance id for a database (used by provisioning and deletion)."""
    return f"actor-{db_id}"


# --- handlers -----------------------------------------------------------------------------------


def register_activities(rt, world):
    @rt.register_activity_typed(Names.Activities.HEALTH_CHECK)
    def health_check(ctx, probe: HealthProbe) -> HealthReport:
        # A read-only probe: re-running it changes nothing.
        record = world.get(f"record:{probe.db_id}")
        if world.exists(f"tombstone:{probe.db_id}") or (record is not None and record.get("status") == "deleting"):
            return HealthReport(probe.db_id, probe.iteration, "deleting")
        if not world.exists(f"deployment:{probe.db_id}"):
            return HealthReport(probe.db_id, probe.iteration, "missing")
        incidents = world.get(f"incidents:{probe.db_id}", [])
        status = "degraded" if probe.iteration in incidents else "healthy"
        return HealthReport(probe.db_id, probe.iteration, status)

    @rt.register_activity_typed(Names.Activities.REPAIR)
    def repair_instance(ctx, req: RepairRequest) -> bool:
        # Idempotent: one restart per incident, whatever the number of deliveries.
        restarted = world.put_if_absent(f"repair:{req.db_id}:{req.iteration}", "restarted")
        if restarted:
            ctx.trace_info(f"restarted {req.db_id} for incident at iteration {req.iteration}")
        return restarted


REPAIR_RETRY = RetryPolicy(max_attempts=3, backoff=Backoff.exponential(base_ms=1_000, max_ms=30_000))


def make_actor(*, jitter: bool = False):
    def instance_actor(ctx, state: ActorState):
        delay = state.health_interval_ms
        if jitter:
            delay += random.randint(0, 30_000)  # BUG: randomness inside orchestration code
        timer = ctx.schedule_timer(delay)
        deleted = ctx.dequeue_event_typed(Names.Queues.INSTANCE_DELETED, result_type=DeletionNotice)
        woke = yield ctx.select2(timer, deleted)
        if woke.index() == 1:
            notice = woke.value
            ctx.trace_info(f"[{state.db_id}] InstanceDeleted by {notice.requested_by} at iteration {state.iteration}; exiting")
            return ActorExit(state.db_id)
        report = yield ctx.schedule_activity_typed(
            Names.Activities.HEALTH_CHECK, HealthProbe(state.db_id, state.iteration), result_type=HealthReport
        )
        if report.status == "deleting":
            # The slow path: the notice may have been sent before this actor existed (a
            # message to an instance that does not exist yet is dropped, SPEC §6.2).
            ctx.trace_info(f"[{state.db_id}] instance is being deleted (seen by the health check); exiting")
            return ActorExit(state.db_id)
        if report.status == "degraded":
            ctx.trace_warn(f"[{state.db_id}] degraded at iteration {state.iteration}; repairing")
            yield ctx.schedule_activity_with_retry_typed(
                Names.Activities.REPAIR, RepairRequest(state.db_id, state.iteration), retry=REPAIR_RETRY, result_type=bool
            )
        elif report.status == "missing":
            ctx.trace_warn(f"[{state.db_id}] deployment missing at iteration {state.iteration}")
        yield ctx.continue_as_new_typed(attrs.evolve(state, iteration=state.iteration + 1))

    return instance_actor


def register_actor(rt, world, *, jitter: bool = False):
    """Register the actor and its activities (also used by provisioning.py and deletion.py)."""
    register_activities(rt, world)
    rt.register_orchestration_typed(Names.Orchestrations.INSTANCE_ACTOR, make_actor(jitter=jitter))


# --- the scenario ---------------------------------------------------------------------------------


@attrs.frozen
class Params:
    long_interval_ms: int
    long_iterations: int
    long_incidents: tuple[int, ...]
    short_interval_ms: int
    short_iterations: int
    short_incidents: tuple[int, ...]


SIM_PARAMS = Params(
    long_interval_ms=5 * 60_000, long_iterations=1_003, long_incidents=(97, 420, 777),
    short_interval_ms=10 * 60_000, short_iterations=12, short_incidents=(3,),
)
PRODUCTION_PARAMS = Params(
    long_interval_ms=20, long_iterations=30, long_incidents=(7, 19),
    short_interval_ms=50, short_iterations=6, short_incidents=(2,),
)


def _actors(p: Params) -> list[tuple[str, int, int, tuple[int, ...]]]:
    return [("db-long", p.long_interval_ms, p.long_iterations, p.long_incidents),
            ("db-short", p.short_interval_ms, p.short_iterations, p.short_incidents)]


def make_spec(p: Params, *, name: str, ref: str, jitter: bool = False, min_long_iterations: int = 1_000) -> SimSpec:
    actors = _actors(p)

    def setup(rt, world):
        if fixture_once(world, "instance_actor"):
            for db, _, _, incidents in actors:
                world.put(f"record:{db}", {"db_id": db, "status": "ready"})
                world.put(f"deployment:{db}", {"db_id": db, "engine": "postgres-16"})
                world.put(f"incidents:{db}", list(incidents))
        register_actor(rt, world, jitter=jitter)

    def history_bounded(result):
        for inst, executions in instances_of(result, Names.Orchestrations.INSTANCE_ACTOR).items():
            for exe, events in executions.items():
                if len(events) > MAX_EVENTS_PER_EXECUTION:
                    kinds = ", ".join(type(e).__name__ for e in events)
                    return f"{inst} execution {exe} has {len(events)} events (> {MAX_EVENTS_PER_EXECUTION}): {kinds}"
        return None

    def long_actor_ran_all_iterations(result):
        if poisoned(result, actor_id("db-long")):
            return None  # faults used up its delivery budget (budget_exhausted): stopped early by design
        executions = result.histories.get(actor_id("db-long"), {})
        if len(executions) - 1 < min_long_iterations:
            return f"{actor_id('db-long')} ran {max(len(executions) - 1, 0)} iterations, expected >= {min_long_iterations}"
        return None

    def actors_exit_on_deletion(result):
        for db, _, _, _ in actors:
            if poisoned(result, actor_id(db)):
                continue  # faults used up its delivery budget: counted as budget_exhausted
            status, output = status_of(result, actor_id(db))
            want = {"db_id": db, "reason": "deleted"}
            if (status, output) != ("Completed", want):
                return f"{actor_id(db)} ended as {status} {output!r}, expected Completed {want!r}"
        return None

    def repairs_match_incidents(result):
        for db, _, _, incidents in actors:
            if poisoned(result, actor_id(db)):
                continue  # stopped half-way by the runtime: no health checks to count
            checks = len(result.histories.get(actor_id(db), {})) - 1  # the last execution exits
            want = sorted(i for i in incidents if i < checks)
            got = sorted(int(k.rsplit(":", 1)[1]) for k in result.world.state if k.startswith(f"repair:{db}:"))
            if got != want:
                return f"{db}: repaired at iterations {got}, expected {want} (after {checks} health checks)"
        return None

    return SimSpec(
        name=name,
        setup=setup,
        starts=[
            Start(instance=actor_id(db), orchestration=Names.Orchestrations.INSTANCE_ACTOR,
                  input=ActorState(db_id=db, health_interval_ms=interval))
            for db, interval, _, _ in actors
        ],
        # Half an interval after the last wanted health check: far from any timer, late enough
        # that the faults of the first minutes cannot matter.
        signals=[
            Signal(instance=actor_id(db), name=Names.Queues.INSTANCE_DELETED, data=DeletionNotice(db, "ops"),
                   at_ms=iterations * interval + interval // 2, kind="enqueue")
            for db, interval, iterations, _ in actors
        ],
        invariants=[history_bounded, long_actor_ran_all_iterations, actors_exit_on_deletion, repairs_match_incidents],
        horizon_ms=max(iterations * interval for _, interval, iterations, _ in actors) + 24 * 3600 * 1000,
        ref=ref,
    )


#: The seed sweep (`duroxide-sim run scenarios`): 60 iterations keep a seed well under a second.
SPEC = make_spec(attrs.evolve(SIM_PARAMS, long_iterations=60, long_incidents=(7, 33)), name="instance_actor",
                 ref="scenarios/instance_actor.py:SPEC", min_long_iterations=57)

#: The bounded-history claim at full length: one actor for 1,003 iterations (~3.5 virtual days).
#: Run for a few seeds by tests/scenarios/test_correct_scenarios.py (about 1.5 s per seed).
LONG_RUN = make_spec(SIM_PARAMS, name="instance_actor-1000", ref="scenarios/instance_actor.py:LONG_RUN")

#: Same workflow, millisecond timers: for production mode (real Runtime on SQLite, wall clock).
#: (On the wall clock an iteration also costs its turns, so fewer than 30 may fit before the
#: deletion notice; the history bound is what matters there.)
PRODUCTION = make_spec(PRODUCTION_PARAMS, name="instance_actor-production", ref="scenarios/instance_actor.py:PRODUCTION",
                       min_long_iterations=5)

# --- planted bugs ---------------------------------------------------------------------------------

#: Random jitter drawn inside the orchestration (sandbox). A short run is enough to show it.
JITTERED_INTERVAL = make_spec(
    attrs.evolve(SIM_PARAMS, long_iterations=20, long_incidents=(5,)),
    name="instance_actor/jittered-interval", ref="scenarios/instance_actor.py:JITTERED_INTERVAL",
    jitter=True, min_long_iterations=0,
)

VARIANTS = {"jittered-interval": JITTERED_INTERVAL}
