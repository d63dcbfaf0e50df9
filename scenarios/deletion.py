"""Deletion: tear down a managed database instance, idempotently, after partial earlier attempts.

What it models
    ``delete_instance`` (typed input ``DeleteRequest``):

    1. ``describe_instance`` - read what exists: record, deployment, DNS name, backups, the IP
                               addresses still allocated to the instance; a tombstone means an
                               earlier request already finished -> ``deleted`` at once (DELETE
                               is idempotent: the same answer, nothing done);
    2. ``mark_deleting``     - record status ``deleting`` (so the API shows it);
    3. stop the actor        - ``signal_actor`` sends ``InstanceDeleted`` to the instance actor
                               (``instance_actor.py``) through ``ctx.get_client()`` - the way
                               production code signals another orchestration from an activity;
                               then ``actor_status`` is polled on a durable timer until the
                               actor is gone, so no health check ever probes a half-deleted
                               instance;
    4. free everything in parallel (``ctx.all``): ``release_ips``, ``delete_backups``,
       ``delete_dns``, ``delete_deployment``;
    5. ``finalize_deletion`` - tombstone, then delete the record.

    Every step checks before it acts (an IP is returned to the pool only while the instance
    still owns it; deleting something already gone is a success), so the workflow tolerates the
    half-finished attempts the world is seeded with and any re-delivery.

World (seeded once per world by ``setup``, as if earlier workflows had run)
    ``db-10``: fully provisioned, actor running (health check every minute).
    ``db-11``: an earlier deletion crashed half-way: record ``deleting``, DNS already gone, one of
    its two IPs already back in the pool, one of its backups deleted; its actor already stopped.
    ``db-12``: an earlier deletion got to the last step: only the record (``deleting``) is left.
    IP pool: 8 addresses, ``ip:<addr>`` = owner, ``pool:free`` = the free list.
    Deletion requests: db-10 and db-11 at 3 min, db-12 at 5 min (inside the fault window), and
    db-10 again at 3 h (a user clicking "delete" twice) -> ``deleted`` without doing anything.

Properties
    ``nothing_left_behind`` (only the tombstone remains), ``ip_pool_consistent`` (every address
    exactly once: allocated or free, never both, no duplicate in the free list),
    ``actor_stopped_before_teardown`` (no health check ever saw its deployment missing),
    ``expected_outcomes`` (all ``deleted``; the repeated request does nothing but describe).

Planted bug (``VARIANTS``)
    ``non-idempotent-free``: ``release_ips`` appends the addresses it was given to the free list
    without checking that the instance still owns them. A re-delivery (crash after the effect,
    before the ack) puts the same address twice in the free list: two future databases would
    get the same IP. Caught by the idempotency checker (it names ``release_ips``) and by
    ``ip_pool_consistent``, with ``FaultPlan.only("crash_after_effect")``.
"""

from __future__ import annotations

import attrs

from duroxide_sim import Backoff, RetryPolicy
from duroxide_sim.sim.harness import SimSpec, Start
from scenarios._common import fixture_once, instances_of, poisoned, status_of
from scenarios.instance_actor import ActorState, DeletionNotice, actor_id, register_actor
from scenarios.instance_actor import Names as ActorNames


class Names:
    class Orchestrations:
        DELETE = "dbaas::orchestration::delete_instance"

    class Activities:
        DESCRIBE = "dbaas::activity::describe_instance"
        MARK_DELETING = "dbaas::activity::mark_deleting"
        SIGNAL_ACTOR = "dbaas::activity::signal_actor"
        ACTOR_STATUS = "dbaas::activity::actor_status"
        RELEASE_IPS = "dbaas::activity::release_ips"
        DELETE_BACKUPS = "dbaas::activity::delete_backups"
        DELETE_DNS = "dbaas::activity::delete_dns"
        DELETE_DEPLOYMENT = "dbaas::activity::teardown_deployment"
        FINALIZE = "dbaas::activity::finalize_deletion"


# --- typed payloads ---------------------------------------------------------------------------


@attrs.define
class DeleteRequest:
    db_id: str
    requested_by: str
    poll_interval_ms: int = 5_000
    max_polls: int = 60


@attrs.define
class InstanceDescription:
    db_id: str
    tombstoned: bool
    addresses: list[str]
    backups: list[str]


@attrs.define
class ReleaseIps:
    db_id: str
    addresses: list[str]


@attrs.define
class DeleteBackups:
    db_id: str
    backups: list[str]


@attrs.define
class DeletionResult:
    db_id: str
    status: str  # "deleted", also for an instance that was already deleted


class DeletionFailed(Exception):
    pass


# --- the world before the scenario -------------------------------------------------------------------

POOL = [f"10.0.0.{i}" for i in range(10, 18)]


def seed_world(world) -> None:
    """Pre-populate the world: what provisioning and a crashed earlier deletion left."""
    allocations = {"10.0.0.10": "db-10", "10.0.0.11": "db-10", "10.0.0.13": "db-11"}  # 10.0.0.12 (db-11) was released
    for addr in POOL:
        if addr in allocations:
            world.put(f"ip:{addr}", allocations[addr])
    world.put("pool:free", [a for a in POOL if a not in allocations])
    # db-10: fully provisioned
    world.put("record:db-10", {"db_id": "db-10", "status": "ready", "endpoint": "db-10.us-east-1.db.example.net"})
    world.put("deployment:db-10", {"db_id": "db-10", "deployment_id": "dep-db-10", "size": "small", "state": "running"})
    world.put("dns:db-10", "db-10.us-east-1.db.example.net")
    for n in (1, 2, 3):
        world.put(f"backup:db-10:{n}", {"size_gb": 10 * n})
    # db-11: half-deleted by an earlier attempt (DNS gone, one IP released, backup 1 deleted)
    world.put("record:db-11", {"db_id": "db-11", "status": "deleting", "endpoint": "db-11.us-east-1.db.example.net"})
    world.put("deployment:db-11", {"db_id": "db-11", "deployment_id": "dep-db-11", "size": "large", "state": "running"})
    world.put("backup:db-11:2", {"size_gb": 40})
    # db-12: only the record is left
    world.put("record:db-12", {"db_id": "db-12", "status": "deleting", "endpoint": "db-12.us-east-1.db.example.net"})


# --- handlers -----------------------------------------------------------------------------------


def register_activities(rt, world, *, non_idempotent_free: bool = False):
    @rt.register_activity(Names.Activities.DESCRIBE)
    def describe_instance(ctx, db_id: str) -> InstanceDescription:
        return InstanceDescription(
            db_id=db_id,
            tombstoned=world.exists(f"tombstone:{db_id}"),
            addresses=sorted(k.split(":", 1)[1] for k, owner in world.items("ip:") if owner == db_id),
            backups=sorted(k for k, _ in world.items(f"backup:{db_id}:")),
        )

    @rt.register_activity(Names.Activities.MARK_DELETING)
    def mark_deleting(ctx, db_id: str) -> None:
        record = world.get(f"record:{db_id}")
        if record is not None and record.get("status") != "deleting":
            world.put(f"record:{db_id}", record | {"status": "deleting"})

    @rt.register_activity_typed(Names.Activities.SIGNAL_ACTOR)
    def signal_actor(ctx, notice: DeletionNotice) -> str:
        client = ctx.get_client()
        status = client.get_status(actor_id(notice.db_id)).status
        if status == "Running":
            # A second notice (re-delivery) is harmless: the actor exits on the first one.
            client.enqueue_event(actor_id(notice.db_id), ActorNames.Queues.INSTANCE_DELETED, notice)
            ctx.trace_info(f"sent InstanceDeleted to {actor_id(notice.db_id)}")
        return status

    @rt.register_activity(Names.Activities.ACTOR_STATUS)
    def actor_status(ctx, db_id: str) -> str:
        return ctx.get_client().get_status(actor_id(db_id)).status

    @rt.register_activity_typed(Names.Activities.RELEASE_IPS)
    def release_ips(ctx, req: ReleaseIps) -> None:
        for addr in req.addresses:
            if non_idempotent_free:
                # BUG: trusts its input; a second delivery frees the same address again.
                world.delete(f"ip:{addr}")
                world.append("pool:free", addr)
            elif world.get(f"ip:{addr}") == req.db_id:  # still ours: free it, exactly once
                world.delete(f"ip:{addr}")
                world.append("pool:free", addr)

    @rt.register_activity_typed(Names.Activities.DELETE_BACKUPS)
    def delete_backups(ctx, req: DeleteBackups) -> None:
        for key in req.backups:
            if world.exists(key):
                world.delete(key)

    @rt.register_activity(Names.Activities.DELETE_DNS)
    def delete_dns(ctx, db_id: str) -> None:
        if world.exists(f"dns:{db_id}"):
            world.delete(f"dns:{db_id}")

    @rt.register_activity(Names.Activities.DELETE_DEPLOYMENT)
    def teardown_deployment(ctx, db_id: str) -> None:
        if world.exists(f"deployment:{db_id}"):
            world.delete(f"deployment:{db_id}")

    @rt.register_activity(Names.Activities.FINALIZE)
    def finalize_deletion(ctx, db_id: str) -> None:
        world.put_if_absent(f"tombstone:{db_id}", {"db_id": db_id})
        if world.exists(f"record:{db_id}"):
            world.delete(f"record:{db_id}")


SIGNAL_RETRY = RetryPolicy(max_attempts=5, backoff=Backoff.exponential(base_ms=500, max_ms=10_000))


def delete_instance(ctx, req: DeleteRequest):
    desc = yield ctx.schedule_activity_typed(Names.Activities.DESCRIBE, req.db_id, result_type=InstanceDescription)
    if desc.tombstoned:
        # DELETE is idempotent: deleting a deleted instance succeeds with the same answer.
        ctx.trace_info(f"[{req.db_id}] already deleted")
        return DeletionResult(req.db_id, "deleted")
    yield ctx.schedule_activity(Names.Activities.MARK_DELETING, req.db_id)

    # Stop the actor first: it must not probe a database we are tearing down.
    seen = yield ctx.schedule_activity_with_retry_typed(
        Names.Activities.SIGNAL_ACTOR, DeletionNotice(req.db_id, req.requested_by), retry=SIGNAL_RETRY, result_type=str
    )
    ctx.trace_info(f"[{req.db_id}] actor was {seen}")
    for _ in range(req.max_polls):
        status = yield ctx.schedule_activity(Names.Activities.ACTOR_STATUS, req.db_id)
        if status != "Running":
            break
        yield ctx.schedule_timer(req.poll_interval_ms)
    else:
        raise DeletionFailed(f"actor of {req.db_id} still running after {req.max_polls} polls")

    results = yield ctx.all([
        ctx.schedule_activity_typed(Names.Activities.RELEASE_IPS, ReleaseIps(req.db_id, desc.addresses)),
        ctx.schedule_activity_typed(Names.Activities.DELETE_BACKUPS, DeleteBackups(req.db_id, desc.backups)),
        ctx.schedule_activity(Names.Activities.DELETE_DNS, req.db_id),
        ctx.schedule_activity(Names.Activities.DELETE_DEPLOYMENT, req.db_id),
    ])
    errors = [r["err"] for r in results if "err" in r]
    if errors:
        raise DeletionFailed(f"{req.db_id}: {errors[0]}")  # the next request resumes from here
    yield ctx.schedule_activity(Names.Activities.FINALIZE, req.db_id)
    ctx.trace_info(f"[{req.db_id}] deleted")
    return DeletionResult(req.db_id, "deleted")


def register(rt, world, *, non_idempotent_free: bool = False):
    register_activities(rt, world, non_idempotent_free=non_idempotent_free)
    rt.register_orchestration_typed(Names.Orchestrations.DELETE, delete_instance)
    register_actor(rt, world)


# --- the scenario ---------------------------------------------------------------------------------


@attrs.frozen
class Params:
    health_interval_ms: int
    poll_interval_ms: int
    first_at_ms: int
    second_at_ms: int
    again_at_ms: int


# The deletions run inside the fault window (the first 10 virtual minutes).
SIM_PARAMS = Params(health_interval_ms=60_000, poll_interval_ms=5_000, first_at_ms=3 * 60_000,
                    second_at_ms=5 * 60_000, again_at_ms=3 * 3600 * 1000)
PRODUCTION_PARAMS = Params(health_interval_ms=50, poll_interval_ms=20, first_at_ms=300, second_at_ms=500, again_at_ms=2_000)

EXPECTED = {"delete-db-10": "deleted", "delete-db-11": "deleted", "delete-db-12": "deleted", "delete-db-10-again": "deleted"}


def nothing_left_behind(result):
    for db in ("db-10", "db-11", "db-12"):
        if poisoned(result, f"delete-{db}"):
            continue
        left = [k for k, v in result.world.state.items()
                if (k.endswith(f":{db}") or f":{db}:" in k or v == db) and k != f"tombstone:{db}"]
        if left:
            return f"{db} deleted but {sorted(left)} remain"
        if not result.world.exists(f"tombstone:{db}"):
            return f"{db} has no tombstone"
    return None


def ip_pool_consistent(result):
    free = result.world.get("pool:free", [])
    dups = sorted({a for a in free if free.count(a) > 1})
    if dups:
        return f"addresses {dups} are in the free list more than once"
    allocated = {k.split(":", 1)[1] for k in result.world.state if k.startswith("ip:")}
    both = sorted(allocated & set(free))
    if both:
        return f"addresses {both} are both allocated and free"
    missing = sorted(set(POOL) - allocated - set(free))
    if missing:
        return f"addresses {missing} are neither allocated nor free"
    return None


def actor_stopped_before_teardown(result):
    for inst, executions in instances_of(result, ActorNames.Orchestrations.INSTANCE_ACTOR).items():
        for exe, events in executions.items():
            for ev in events:
                if type(ev).__name__ == "ActivityCompleted" and '"status": "missing"' in ev.result:
                    return f"{inst} execution {exe} health-checked a deleted deployment (event {ev.event_id})"
    return None


def expected_outcomes(result):
    for inst, want in EXPECTED.items():
        if poisoned(result, inst):
            continue
        status, output = status_of(result, inst)
        if status != "Completed" or output.get("status") != want:
            return f"{inst}: expected {want}, got {status} {str(output).splitlines()[0]!r}"
    # The repeated request takes the short path (one describe) unless the first one was poisoned.
    again = result.histories.get("delete-db-10-again", {}).get(1, [])
    scheduled = [ev.name for ev in again if type(ev).__name__ == "ActivityScheduled"]
    if not poisoned(result, "delete-db-10") and status_of(result, "delete-db-10-again")[0] == "Completed" \
            and scheduled != [Names.Activities.DESCRIBE]:
        return f"delete-db-10-again redid work after db-10 was deleted: {scheduled}"
    actor = status_of(result, actor_id("db-10"))
    if not poisoned(result, actor_id("db-10")) and (actor[0] != "Completed" or actor[1].get("reason") != "deleted"):
        return f"{actor_id('db-10')} ended as {actor!r}, expected Completed (deleted)"
    return None


def make_spec(p: Params, *, name: str, ref: str, non_idempotent_free: bool = False) -> SimSpec:
    def setup(rt, world):
        if fixture_once(world, "deletion"):
            seed_world(world)
        register(rt, world, non_idempotent_free=non_idempotent_free)

    def request(db):
        return DeleteRequest(db, "alice@example.com", poll_interval_ms=p.poll_interval_ms)

    return SimSpec(
        name=name,
        setup=setup,
        starts=[
            Start(instance=actor_id("db-10"), orchestration=ActorNames.Orchestrations.INSTANCE_ACTOR,
                  input=ActorState("db-10", p.health_interval_ms)),
            Start(instance="delete-db-10", orchestration=Names.Orchestrations.DELETE, input=request("db-10"), at_ms=p.first_at_ms),
            Start(instance="delete-db-11", orchestration=Names.Orchestrations.DELETE, input=request("db-11"), at_ms=p.first_at_ms),
            Start(instance="delete-db-12", orchestration=Names.Orchestrations.DELETE, input=request("db-12"), at_ms=p.second_at_ms),
            Start(instance="delete-db-10-again", orchestration=Names.Orchestrations.DELETE, input=request("db-10"),
                  at_ms=p.again_at_ms),
        ],
        invariants=[nothing_left_behind, ip_pool_consistent, actor_stopped_before_teardown, expected_outcomes],
        ref=ref,
    )


SPEC = make_spec(SIM_PARAMS, name="deletion", ref="scenarios/deletion.py:SPEC")
PRODUCTION = make_spec(PRODUCTION_PARAMS, name="deletion-production", ref="scenarios/deletion.py:PRODUCTION")

# --- planted bugs ---------------------------------------------------------------------------------

NON_IDEMPOTENT_FREE = make_spec(SIM_PARAMS, name="deletion/non-idempotent-free", ref="scenarios/deletion.py:NON_IDEMPOTENT_FREE",
                                non_idempotent_free=True)

VARIANTS = {"non-idempotent-free": NON_IDEMPOTENT_FREE}
