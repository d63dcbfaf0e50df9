"""Provisioning: the control-plane workflow that creates a managed database instance.

What it models
    ``provision_instance`` (typed input ``ProvisionRequest``):

    1. ``create_record``   - the instance row in the control-plane DB (status ``creating``);
    2. ``deploy``          - ask the cloud for a deployment, with ``schedule_activity_with_retry``:
                             4 attempts, exponential back-off from 2 s, 15-minute per-attempt
                             timeout (the cloud API throttles some requests with a 503);
    3. wait until ready    - poll ``check_ready`` on a durable timer (every ``poll_interval_ms``,
                             at most ``max_polls`` times); the simulated cloud reports a deployment
                             ready after a number of polls that depends on its size;
    4. ``mark_ready``      - record status ``ready`` with the endpoint;
    5. start the instance's actor (``instance_actor.py``) *detached*: ``ctx.start_orchestration``.

    On any failure after the record exists it compensates in reverse order - delete the
    deployment, then delete the record - and fails with ``ProvisioningFailed``.

    Every activity checks for its effect first (``exists`` / ``put_if_absent``), so a re-delivery
    after a crash is harmless; ``deploy`` refuses to deploy when the record is gone, so a late
    deploy attempt can never leave a deployment without its record.

    The simulated world: ``record:<db>``, ``deployment:<db>`` (state ``creating`` until the
    cloud reports it ``running``: after a size-dependent number of poll intervals; the probe
    carries its poll number, so re-running a probe changes nothing) and
    ``cloud:throttled:<db>`` (503s served so far, capped). Region ``eu-north-9`` has no capacity.

Requests (deterministic outcomes)
    ``db-1`` small (ready after 2 polls) -> ready; ``db-2`` large, deploy throttled twice (5
    polls) -> ready after retries; ``db-3`` in a region without capacity -> deploy fails 4 times
    -> record deleted -> Failed; ``db-4`` xlarge (needs 14 polls, max 10) -> deployment and
    record deleted -> Failed. The actors of db-1 and db-2 receive ``InstanceDeleted`` two hours
    in, so the run ends.

Properties (instances failed by *poison* - the fault budget used up, SPEC §10.2 - are exempt:
the runtime fails them without running the compensation)
    ``no_deployment_without_record``, ``failed_provisioning_leaves_nothing_behind`` (no record,
    no deployment, no actor), ``ready_instances_are_complete`` (record ``ready`` with endpoint,
    deployment, actor started and stopped on deletion), ``expected_outcomes``.

Planted bug (``VARIANTS``)
    ``in-memory-teardown``: the deploy activity keeps the cloud SDK's deployment handle in
    process memory and ``delete_deployment`` tears down "the handle this worker created".
    After a crash (a new process, empty memory) - or whenever the teardown runs on another
    worker - the compensation finds no handle, reports success, and the deployment leaks.
    Exposed by crashes on a single node (``nodes=1``, ``FaultPlan.only("crash")``).
"""

from __future__ import annotations

import attrs

from duroxide_sim import Backoff, RetryPolicy
from duroxide_sim.sim.harness import Signal, SimSpec, Start
from scenarios._common import instances_of, poisoned, status_of
from scenarios.instance_actor import ActorState, DeletionNotice, actor_id, register_actor
from scenarios.instance_actor import Names as ActorNames


class Names:
    class Orchestrations:
        PROVISION = "dbaas::orchestration::provision_instance"

    class Activities:
        CREATE_RECORD = "dbaas::activity::create_record"
        DEPLOY = "dbaas::activity::deploy"
        CHECK_READY = "dbaas::activity::check_ready"
        MARK_READY = "dbaas::activity::mark_ready"
        DELETE_DEPLOYMENT = "dbaas::activity::delete_deployment"
        DELETE_RECORD = "dbaas::activity::delete_record"


#: Polls until the simulated cloud reports a deployment of that size ready.
READY_AFTER_POLLS = {"small": 2, "large": 5, "xlarge": 14}
#: Regions without capacity: deploy always fails there.
NO_CAPACITY = {"eu-north-9"}


# --- typed payloads ---------------------------------------------------------------------------


@attrs.define
class ProvisionRequest:
    db_id: str
    region: str
    size: str
    throttled_deploys: int = 0  # how many 503s the simulated cloud serves this request first
    poll_interval_ms: int = 30_000
    max_polls: int = 10
    health_interval_ms: int = 10 * 60_000
    deploy_timeout_ms: int = 15 * 60_000
    deploy_backoff_ms: int = 2_000


@attrs.define
class Deployment:
    db_id: str
    deployment_id: str
    endpoint: str


@attrs.define
class ReadyProbe:
    db_id: str
    poll: int


@attrs.define
class Readiness:
    db_id: str
    ready: bool


@attrs.define
class ProvisionResult:
    db_id: str
    status: str
    endpoint: str


class ProvisioningFailed(Exception):
    pass


# --- handlers -----------------------------------------------------------------------------------


def register_activities(rt, world, *, in_memory_teardown: bool = False):
    # Only used by the planted bug: cloud SDK handles of the deployments *this process* created.
    handles: dict[str, Deployment] = {}

    @rt.register_activity_typed(Names.Activities.CREATE_RECORD)
    def create_record(ctx, req: ProvisionRequest) -> bool:
        created = world.put_if_absent(
            f"record:{req.db_id}", {"db_id": req.db_id, "region": req.region, "size": req.size, "status": "creating"}
        )
        return created

    @rt.register_activity_typed(Names.Activities.DEPLOY)
    def deploy(ctx, req: ProvisionRequest) -> Deployment:
        existing = world.get(f"deployment:{req.db_id}")
        if existing is not None:  # 409 Conflict: it is ours, from an earlier delivery
            return Deployment(req.db_id, existing["deployment_id"], existing["endpoint"])
        if not world.exists(f"record:{req.db_id}"):
            raise ProvisioningFailed(f"record of {req.db_id} is gone; refusing to deploy")
        if req.region in NO_CAPACITY:
            raise RuntimeError(f"no capacity for {req.size} in {req.region}")
        throttled = world.get(f"cloud:throttled:{req.db_id}", 0)
        if throttled < req.throttled_deploys:
            world.put(f"cloud:throttled:{req.db_id}", throttled + 1)
            raise RuntimeError("503 Service Unavailable: throttled, retry later")
        dep = Deployment(req.db_id, f"dep-{req.db_id}", f"{req.db_id}.{req.region}.db.example.net")
        world.put_if_absent(f"deployment:{req.db_id}", attrs.asdict(dep) | {"size": req.size, "state": "creating"})
        handles[req.db_id] = dep
        return dep

    @rt.register_activity_typed(Names.Activities.CHECK_READY)
    def check_ready(ctx, probe: ReadyProbe) -> Readiness:
        dep = world.get(f"deployment:{probe.db_id}")
        if dep is None:
            raise ProvisioningFailed(f"deployment of {probe.db_id} not found")
        # The simulated cloud finishes a deployment after a size-dependent number of poll
        # intervals; the probe carries the poll number, so re-running a probe changes nothing.
        ready = probe.poll >= READY_AFTER_POLLS[dep["size"]]
        if ready and dep.get("state") != "running":
            world.put(f"deployment:{probe.db_id}", dep | {"state": "running"})
        return Readiness(probe.db_id, ready)

    @rt.register_activity_typed(Names.Activities.MARK_READY)
    def mark_ready(ctx, dep: Deployment) -> None:
        record = world.get(f"record:{dep.db_id}")
        if record is None:
            raise ProvisioningFailed(f"record of {dep.db_id} vanished")
        if record.get("status") != "ready":
            world.put(f"record:{dep.db_id}", record | {"status": "ready", "endpoint": dep.endpoint})

    @rt.register_activity(Names.Activities.DELETE_DEPLOYMENT)
    def delete_deployment(ctx, db_id: str) -> bool:
        if in_memory_teardown:
            handle = handles.pop(db_id, None)  # BUG: the only trace of the deployment is in memory
            if handle is None:
                ctx.trace_info(f"no deployment handle for {db_id} on this worker; nothing to tear down")
                return False
        existed = world.exists(f"deployment:{db_id}")
        if existed:
            world.delete(f"deployment:{db_id}")
        return existed

    @rt.register_activity(Names.Activities.DELETE_RECORD)
    def delete_record(ctx, db_id: str) -> bool:
        if world.exists(f"deployment:{db_id}"):
            raise ProvisioningFailed(f"deployment of {db_id} still exists; refusing to orphan it")
        existed = world.exists(f"record:{db_id}")
        if existed:
            world.delete(f"record:{db_id}")
        return existed


def deploy_retry(req: ProvisionRequest) -> RetryPolicy:
    return RetryPolicy(max_attempts=4, backoff=Backoff.exponential(base_ms=req.deploy_backoff_ms, max_ms=60_000),
                       timeout_ms=req.deploy_timeout_ms)


CLEANUP_RETRY = RetryPolicy(max_attempts=5, backoff=Backoff.exponential(base_ms=1_000, max_ms=30_000))


def provision_instance(ctx, req: ProvisionRequest):
    ctx.trace_info(f"[{req.db_id}] provisioning {req.size} in {req.region}")
    yield ctx.schedule_activity_typed(Names.Activities.CREATE_RECORD, req, result_type=bool)
    try:
        dep = yield ctx.schedule_activity_with_retry_typed(Names.Activities.DEPLOY, req, retry=deploy_retry(req), result_type=Deployment)
        for poll in range(1, req.max_polls + 1):
            readiness = yield ctx.schedule_activity_typed(
                Names.Activities.CHECK_READY, ReadyProbe(req.db_id, poll), result_type=Readiness
            )
            if readiness.ready:
                ctx.trace_info(f"[{req.db_id}] ready after {poll} polls")
                break
            yield ctx.schedule_timer(req.poll_interval_ms)
        else:
            raise ProvisioningFailed(f"deployment not ready after {req.max_polls} polls")
        yield ctx.schedule_activity_typed(Names.Activities.MARK_READY, dep)
    except Exception as err:  # noqa: BLE001 - compensate whatever went wrong, then fail
        ctx.trace_warn(f"[{req.db_id}] provisioning failed ({str(err).splitlines()[0]}); compensating")
        # Reverse order: the deployment first (never a deployment without its record).
        yield ctx.schedule_activity_with_retry(Names.Activities.DELETE_DEPLOYMENT, req.db_id, retry=CLEANUP_RETRY)
        yield ctx.schedule_activity_with_retry(Names.Activities.DELETE_RECORD, req.db_id, retry=CLEANUP_RETRY)
        raise ProvisioningFailed(f"{req.db_id}: {str(err).splitlines()[0]}") from None
    yield ctx.start_orchestration_typed(
        ActorNames.Orchestrations.INSTANCE_ACTOR, actor_id(req.db_id),
        ActorState(db_id=req.db_id, health_interval_ms=req.health_interval_ms),
    )
    return ProvisionResult(req.db_id, "ready", dep.endpoint)


def register(rt, world, *, in_memory_teardown: bool = False):
    register_activities(rt, world, in_memory_teardown=in_memory_teardown)
    rt.register_orchestration_typed(Names.Orchestrations.PROVISION, provision_instance)
    register_actor(rt, world)


# --- the scenario ---------------------------------------------------------------------------------


@attrs.frozen
class Params:
    poll_interval_ms: int
    health_interval_ms: int
    delete_actors_at_ms: int
    deploy_timeout_ms: int = 15 * 60_000
    deploy_backoff_ms: int = 2_000


SIM_PARAMS = Params(poll_interval_ms=30_000, health_interval_ms=10 * 60_000, delete_actors_at_ms=2 * 3600 * 1000)
PRODUCTION_PARAMS = Params(poll_interval_ms=20, health_interval_ms=100, delete_actors_at_ms=2_500, deploy_timeout_ms=10_000,
                           deploy_backoff_ms=20)

#: db -> (region, size, 503s served first, expected outcome)
REQUESTS = {
    "db-1": ("us-east-1", "small", 0, "ready"),
    "db-2": ("us-east-1", "large", 2, "ready"),
    "db-3": ("eu-north-9", "small", 0, "no capacity for small in eu-north-9"),
    "db-4": ("us-east-1", "xlarge", 0, "deployment not ready after 10 polls"),
}


def _request(db: str, p: Params) -> ProvisionRequest:
    region, size, throttled, _ = REQUESTS[db]
    return ProvisionRequest(db, region, size, throttled_deploys=throttled, poll_interval_ms=p.poll_interval_ms,
                            health_interval_ms=p.health_interval_ms, deploy_timeout_ms=p.deploy_timeout_ms,
                            deploy_backoff_ms=p.deploy_backoff_ms)


def no_deployment_without_record(result):
    for key in result.world.state:
        if key.startswith("deployment:"):
            db = key.split(":", 1)[1]
            if not result.world.exists(f"record:{db}"):
                return f"deployment of {db} exists without its record"
    return None


def failed_provisioning_leaves_nothing_behind(result):
    for inst in instances_of(result, Names.Orchestrations.PROVISION):
        db = inst.removeprefix("provision-")
        if status_of(result, inst)[0] != "Failed" or poisoned(result, inst):
            continue
        left = [k for k in (f"record:{db}", f"deployment:{db}") if result.world.exists(k)]
        if actor_id(db) in result.histories:
            left.append(f"actor instance {actor_id(db)}")
        if left:
            return f"failed provisioning of {db} left behind: {', '.join(left)}"
    return None


def ready_instances_are_complete(result):
    for inst in instances_of(result, Names.Orchestrations.PROVISION):
        db = inst.removeprefix("provision-")
        status, output = status_of(result, inst)
        if status != "Completed":
            continue
        if poisoned(result, actor_id(db)):
            continue
        record = result.world.get(f"record:{db}") or {}
        if record.get("status") != "ready" or record.get("endpoint") != output.get("endpoint"):
            return f"{db} completed but its record is {record!r}"
        if not result.world.exists(f"deployment:{db}"):
            return f"{db} completed without a deployment"
        actor = status_of(result, actor_id(db))
        if actor[0] != "Completed" or actor[1].get("reason") != "deleted":
            return f"{db} completed but its actor is {actor!r}"
    return None


def expected_outcomes(result):
    for db, (_, _, _, want) in REQUESTS.items():
        status, output = status_of(result, f"provision-{db}")
        if poisoned(result, f"provision-{db}"):
            continue
        if want == "ready":
            if status != "Completed" or output.get("status") != "ready":
                return f"provision-{db}: expected ready, got {status} {str(output).splitlines()[0]!r}"
        elif status != "Failed" or f"ProvisioningFailed: {db}: " not in str(output) or want not in str(output):
            return f"provision-{db}: expected failure {want!r}, got {status} {str(output).splitlines()[0]!r}"
    return None


def make_spec(p: Params, *, name: str, ref: str, in_memory_teardown: bool = False) -> SimSpec:
    def setup(rt, world):
        register(rt, world, in_memory_teardown=in_memory_teardown)

    return SimSpec(
        name=name,
        setup=setup,
        starts=[Start(instance=f"provision-{db}", orchestration=Names.Orchestrations.PROVISION, input=_request(db, p))
                for db in REQUESTS],
        # The databases that came up are deleted two hours later; their actors stop.
        signals=[Signal(instance=actor_id(db), name=ActorNames.Queues.INSTANCE_DELETED, data=DeletionNotice(db, "ops"),
                        at_ms=p.delete_actors_at_ms, kind="enqueue")
                 for db, (_, _, _, want) in REQUESTS.items() if want == "ready"],
        invariants=[no_deployment_without_record, failed_provisioning_leaves_nothing_behind, ready_instances_are_complete,
                    expected_outcomes],
        ref=ref,
    )


SPEC = make_spec(SIM_PARAMS, name="provisioning", ref="scenarios/provisioning.py:SPEC")
PRODUCTION = make_spec(PRODUCTION_PARAMS, name="provisioning-production", ref="scenarios/provisioning.py:PRODUCTION")

# --- planted bugs ---------------------------------------------------------------------------------

IN_MEMORY_TEARDOWN = make_spec(SIM_PARAMS, name="provisioning/in-memory-teardown", ref="scenarios/provisioning.py:IN_MEMORY_TEARDOWN",
                               in_memory_teardown=True)

VARIANTS = {"in-memory-teardown": IN_MEMORY_TEARDOWN}
