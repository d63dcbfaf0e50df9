"""The simulation checkers' accuracy: correct workflows pass, real bugs are reported.

Each test asserts the behaviour the README / checker docstrings promise. Found by a probe in
session 6 and fixed - false positives: GUID idempotency keys (per-process GUIDs never matched
the twin's), float totals summed in another order, outcome/idempotency "failures" in runs where
no fault fired, deleted instances called never started, pruned executions failing the replay
check, a parent waiting on a child that waits for a signal called stuck, lock-expiry jumps with
no lock held, activities of a crashed worker's session called stuck (session expiry was not a
wake-up time); false negatives: a history the runtime failed as nondeterministic, an event
dropped because it came before its subscription, an invariant returning False; plus the
idempotency message blaming '<unknown>' activities and ``ExternalWorld.delete`` of a None value.
Specs are module-level so their repro lines resolve:
``duroxide-sim reproduce tests/sim/test_checker_accuracy.py:NAME --seed N --faults ...``.
"""

from __future__ import annotations

import json
import weakref

import attrs

from duroxide_sim.core.context import Backoff, RetryPolicy
from duroxide_sim.providers.base import PruneOptions
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, Simulation, SimSpec, Start
from duroxide_sim.sim.world import ExternalWorld

REF = "tests/sim/test_checker_accuracy.py"
MIN = 60_000


def _failures(spec, seeds, plan, **kw):
    out = []
    for seed in seeds:
        result = run_and_check(Simulation(spec, seed, plan, **kw))
        out.extend(f.render() for f in result.failures)
    return out


def _first(spec, plan, seeds, checker, **kw):
    for seed in range(seeds):
        result = run_and_check(Simulation(spec, seed, plan, **kw))
        hits = [f for f in result.failures if f.checker == checker]
        if hits:
            return seed, hits[0]
    raise AssertionError(f"{checker} found nothing in {seeds} seeds")


# =================================================================================================
# Correct specs that pass (what works)
# =================================================================================================


@attrs.define
class Item:
    sku: str
    qty: int


@attrs.define
class Reservation:
    sku: str
    reserved: int


def _pipeline_setup(rt, world):
    """Typed records, timers, sub-orchestrations (auto and explicit ids), continue-as-new with
    carried state, custom status and KV."""

    @rt.register_activity_typed("Probe::activity::reserve")
    def reserve(ctx, item: Item) -> Reservation:
        world.put_if_absent(f"res:{item.sku}", item.qty)
        return Reservation(item.sku, world.get(f"res:{item.sku}"))

    @rt.register_activity("Probe::activity::log")
    def log(ctx, arg):
        world.put(f"log:{arg[0]}:{arg[1]}", True)
        return arg[1]

    @rt.register_orchestration("Probe::orchestration::child")
    def child(ctx, x):
        yield ctx.schedule_timer(200 + x)
        return (yield ctx.schedule_activity("Probe::activity::log", [ctx.instance_id, x])) * 10

    @rt.register_orchestration_typed("Probe::orchestration::pipeline")
    def pipeline(ctx, state: dict):
        n = state["n"]
        ctx.set_custom_status(f"round {n}")
        ctx.set_kv_value("round", str(n))
        res = yield ctx.schedule_activity_typed("Probe::activity::reserve", Item(f"sku{state['id']}-{n}", n + 1),
                                                result_type=Reservation)
        yield ctx.schedule_timer(1_000)
        a = yield ctx.schedule_sub_orchestration("Probe::orchestration::child", n)
        b = yield ctx.schedule_sub_orchestration_with_id("Probe::orchestration::child", f"{ctx.instance_id}::c{n}", n + 100)
        total = state["total"] + res.reserved + a + b
        if n < 3:
            yield ctx.continue_as_new_typed({"id": state["id"], "n": n + 1, "total": total})
        return total


PIPELINE_OK = SimSpec(name="probe-pipeline", setup=_pipeline_setup, ref=f"{REF}:PIPELINE_OK",
                      starts=[Start(instance=f"pl{i}", orchestration="Probe::orchestration::pipeline",
                                    input={"id": i, "n": 0, "total": 0}) for i in range(2)])


def _inbox_setup(rt, world):
    """dequeue_event at seed-drawn times, de-duplicated; select2 against a long timer."""

    @rt.register_activity("Probe::activity::deliver")
    def deliver(ctx, msg):
        world.put_if_absent(f"delivered:{msg}", True)
        return msg

    @rt.register_orchestration("Probe::orchestration::inbox")
    def inbox(ctx, expected):
        got = []
        while len(got) < expected:
            w = yield ctx.select2(ctx.dequeue_event("inbox"), ctx.schedule_timer(2 * 3600_000))
            if w.index() == 1:
                return {"timeout": sorted(got)}
            if w.value in got:
                continue
            yield ctx.schedule_activity("Probe::activity::deliver", w.value)
            got.append(w.value)
        return sorted(got)


INBOX_OK = SimSpec(name="probe-inbox", setup=_inbox_setup, ref=f"{REF}:INBOX_OK",
                   starts=[Start(instance="box", orchestration="Probe::orchestration::inbox", input=5)],
                   signals=[Signal(instance="box", name="inbox", data=f"m{i}", at_ms=None, kind="enqueue") for i in range(5)])

_SERVICE_CALLS: "weakref.WeakKeyDictionary[ExternalWorld, dict]" = weakref.WeakKeyDictionary()


def _retry_cancel_setup(rt, world):
    """Retries with back-off against a service that fails the first two calls per key; a tree
    of eternal children cancelled by a Signal of kind 'cancel' after the fault window."""
    calls = _SERVICE_CALLS.setdefault(world, {})

    @rt.register_activity("Probe::activity::call")
    def call(ctx, key):
        calls[key] = calls.get(key, 0) + 1
        if calls[key] <= 2:
            raise RuntimeError("503 service unavailable")
        world.put_if_absent(f"done:{key}", True)
        return "ok"

    @rt.register_orchestration("Probe::orchestration::retrying")
    def retrying(ctx, key):
        return (yield ctx.schedule_activity_with_retry(
            "Probe::activity::call", key, RetryPolicy(max_attempts=6, backoff=Backoff.exponential(500, 2.0, 10_000))))

    @rt.register_orchestration("Probe::orchestration::leaf")
    def leaf(ctx, x):
        i = 0
        while True:
            yield ctx.schedule_timer(20 * MIN)
            yield ctx.schedule_activity("Probe::activity::call", f"{ctx.instance_id}:{i}")
            i += 1

    @rt.register_orchestration("Probe::orchestration::root")
    def root(ctx, x):
        return (yield ctx.all([ctx.schedule_sub_orchestration("Probe::orchestration::leaf", 1),
                               ctx.schedule_sub_orchestration("Probe::orchestration::leaf", 2)]))


RETRY_CANCEL_OK = SimSpec(
    name="probe-retry-cancel", setup=_retry_cancel_setup, ref=f"{REF}:RETRY_CANCEL_OK",
    starts=[Start(instance=f"r{i}", orchestration="Probe::orchestration::retrying", input=f"k{i}") for i in range(3)]
    + [Start(instance="root", orchestration="Probe::orchestration::root")],
    signals=[Signal(instance="root", name="stop", at_ms=70 * MIN, kind="cancel")],
)


def _approval_setup(rt, world):
    @rt.register_activity("Probe::activity::notify")
    def notify(ctx, who):
        world.put_if_absent(f"mail:{who}", True)

    @rt.register_orchestration("Probe::orchestration::request")
    def request(ctx, x):
        yield ctx.schedule_activity("Probe::activity::notify", f"approver{x}")
        w = yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(4 * 3600_000))
        if w["index"] == 0:
            yield ctx.schedule_activity("Probe::activity::notify", f"requester{x}")
            return ["approved", w["value"]]
        return ["timeout"]


APPROVAL_OK = SimSpec(name="probe-approval", setup=_approval_setup, ref=f"{REF}:APPROVAL_OK",
                      starts=[Start(instance=f"a{i}", orchestration="Probe::orchestration::request", input=i) for i in range(3)],
                      signals=[Signal(instance="a0", name="approve", data="yes", at_ms=30 * MIN),
                               Signal(instance="a1", name="approve", data="ok", at_ms=45 * MIN)])


def test_correct_specs_pass_all_and_swarm_plans() -> None:
    """Explored with 400 seeds each (all(0.05) and swarm) and sqlite for 40: no failure."""
    failures = []
    for spec in (PIPELINE_OK, INBOX_OK, RETRY_CANCEL_OK, APPROVAL_OK):
        failures += _failures(spec, range(40), FaultPlan.all(0.05))
        failures += _failures(spec, range(40), "swarm")
    assert not failures, failures[:2]


# =================================================================================================
# Planted bugs that ARE caught (what works)
# =================================================================================================


def _dedup_in_memory_setup(rt, world):
    sent = set()  # BUG: de-duplication in process memory: lost on a crash, not shared by workers

    @rt.register_activity("Probe::activity::send")
    def send(ctx, key):
        if key not in sent:
            world.append("outbox", key)
            sent.add(key)
        return True

    @rt.register_orchestration("Probe::orchestration::mail")
    def mail(ctx, x):
        yield ctx.schedule_activity("Probe::activity::send", f"welcome:{x}")
        yield ctx.schedule_timer(1000)
        yield ctx.schedule_activity("Probe::activity::send", f"tips:{x}")
        return x


DEDUP_IN_MEMORY = SimSpec(name="probe-dedup-in-memory", setup=_dedup_in_memory_setup, ref=f"{REF}:DEDUP_IN_MEMORY",
                          starts=[Start(instance=f"u{i}", orchestration="Probe::orchestration::mail", input=i) for i in range(3)])


def _object_set_setup(rt, world):
    @rt.register_activity("Probe::activity::channel")
    def channel(ctx, ch):
        return ch

    @rt.register_orchestration("Probe::orchestration::fan")
    def fan(ctx, _):
        tasks = {ctx.schedule_activity("Probe::activity::channel", ch) for ch in ("email", "sms", "push", "slack", "pager")}
        out = []
        for t in tasks:  # BUG: a set of task objects iterates in memory-address order
            out.append((yield t))
        return sorted(out)


OBJECT_SET_ORDER = SimSpec(name="probe-object-set-order", setup=_object_set_setup, ref=f"{REF}:OBJECT_SET_ORDER",
                           fault_transparent=False,
                           starts=[Start(instance=f"n{i}", orchestration="Probe::orchestration::fan") for i in range(3)])


def _world_read_setup(rt, world):
    @rt.register_activity("Probe::activity::enable")
    def enable(ctx, _):
        world.put("flag:new_pricing", True)
        return True

    @rt.register_activity("Probe::activity::price")
    def price(ctx, arg):
        return arg

    @rt.register_orchestration("Probe::orchestration::admin")
    def admin(ctx, _):
        yield ctx.schedule_timer(2_000)
        return (yield ctx.schedule_activity("Probe::activity::enable", None))

    @rt.register_orchestration("Probe::orchestration::quote")
    def quote(ctx, n):
        tier = "new" if world.get("flag:new_pricing") else "old"  # BUG: outside state read in orchestration code
        a = yield ctx.schedule_activity("Probe::activity::price", [tier, n])
        yield ctx.schedule_timer(5_000)
        return a


WORLD_READ_IN_ORCHESTRATION = SimSpec(
    name="probe-world-read", setup=_world_read_setup, ref=f"{REF}:WORLD_READ_IN_ORCHESTRATION", fault_transparent=False,
    starts=[Start(instance="admin", orchestration="Probe::orchestration::admin")]
    + [Start(instance=f"q{i}", orchestration="Probe::orchestration::quote", input=i, at_ms=i * 700) for i in range(5)],
)


def test_planted_bugs_not_in_the_existing_tests_are_caught() -> None:
    seed, failure = _first(DEDUP_IN_MEMORY, FaultPlan.all(0.05), 10, "idempotency")
    assert "Probe::activity::send" in failure.message and "outbox" in failure.message
    # Memory addresses decide the set's order, so a replay that allocates its tasks at addresses
    # that happen to keep the order diverges nowhere: give it enough seeds to be certain.
    seed, failure = _first(OBJECT_SET_ORDER, FaultPlan.none(), 20, "determinism")
    # Whichever replay meets a different order first reports it: the runtime's own replay (a
    # schedule mismatch) or the from-scratch check of a cached turn.
    assert ("schedule mismatch" in failure.message
            or "differs from its live (cached) turn" in failure.message), failure.message
    seed, failure = _first(WORLD_READ_IN_ORCHESTRATION, FaultPlan.none(), 3, "determinism")
    assert "Probe::activity::price" in failure.message


# =================================================================================================
# FALSE POSITIVES
# =================================================================================================

# --- FP1: ctx.new_guid() used as an idempotency key ----------------------------------------------


def _guid_setup(rt, world):
    @rt.register_activity("Probe::activity::charge")
    def charge(ctx, arg):
        key, amount = arg
        if world.put_if_absent(f"payment:{key}", amount):  # idempotent on the key
            world.incr("revenue", amount)
        return "charged"

    @rt.register_orchestration("Probe::orchestration::pay")
    def pay(ctx, amount):
        key = yield ctx.new_guid()  # deterministic: recorded in history, replayed unchanged
        yield ctx.schedule_activity("Probe::activity::charge", [key, amount])
        return "paid"


GUID_IDEMPOTENCY_KEY = SimSpec(name="probe-guid-key", setup=_guid_setup, ref=f"{REF}:GUID_IDEMPOTENCY_KEY",
                               starts=[Start(instance=f"p{i}", orchestration="Probe::orchestration::pay", input=10 * (i + 1))
                                       for i in range(3)])


def test_new_guid_idempotency_key_is_not_reported_as_non_idempotent() -> None:
    """The textbook idempotency-key pattern (key from ctx.new_guid(), check-before-act) fails the
    idempotency check on every seed, even with one transient fault and no re-execution: GUIDs
    come from per-node SequentialIds whose namespace depends on seed/node/incarnation (and the
    twin uses 0xFFFFFF), so the world's keys never match the fault-free twin's."""
    failures = _failures(GUID_IDEMPOTENCY_KEY, range(3), FaultPlan.only("transient", rate=0.01))
    assert not failures, failures[0]


# --- FP2: float totals accumulated in another (schedule) order ----------------------------------

_PRICES = [19.99, 5.1, 0.3, 7.77, 12.49, 0.1]


def _float_setup(rt, world):
    @rt.register_activity("Probe::activity::bill")
    def bill(ctx, arg):
        oid, amount = arg
        if world.put_if_absent(f"bill:{oid}", amount):  # idempotent on the order id
            world.incr("revenue", amount)
        return amount

    @rt.register_orchestration("Probe::orchestration::order")
    def order(ctx, arg):
        yield ctx.schedule_timer(100)
        return (yield ctx.schedule_activity("Probe::activity::bill", arg))


FLOAT_REVENUE = SimSpec(name="probe-float-revenue", setup=_float_setup, ref=f"{REF}:FLOAT_REVENUE",
                        starts=[Start(instance=f"o{i}", orchestration="Probe::orchestration::order", input=[i, p])
                                for i, p in enumerate(_PRICES)])


def test_float_total_summed_in_a_different_order_is_not_an_idempotency_failure() -> None:
    """Each order is billed exactly once, but the float total depends on the order in which
    concurrent instances added to it. Reported as "activity 'Probe::activity::bill' changed the
    world when re-executed: key 'revenue': fault-free 45.75 vs faulty 45.75000000000001 ...
    (bill ran 6x (fault-free 6x))" - with one delayed start (seed 3) and with no fault at all
    (seed 6, window closed); 17/100 seeds under all(0.05)."""
    failures = _failures(FLOAT_REVENUE, [3], FaultPlan.only("delay", rate=0.3))
    failures += _failures(FLOAT_REVENUE, [6], FaultPlan.only("crash", rate=0.05, until_ms=0))
    failures += _failures(FLOAT_REVENUE, [0], FaultPlan.all(0.05))
    assert not failures, failures[0]


# --- FP3: outcome "under faults" compared although no fault was injected -----------------------


def _coupon_setup(rt, world):
    @rt.register_activity("Probe::activity::claim")
    def claim(ctx, who):
        world.put_if_absent("coupon:SPRING", who)  # first claimant keeps it
        return world.get("coupon:SPRING") == who

    @rt.register_orchestration("Probe::orchestration::checkout")
    def checkout(ctx, who):
        won = yield ctx.schedule_activity("Probe::activity::claim", who)
        return "discounted" if won else "full-price"


def one_coupon_winner(result):
    winners = [i for i, s in result.statuses.items() if s.status == "Completed" and s.output == "discounted"]
    return None if len(winners) == 1 else f"winners: {winners}"


COUPON = SimSpec(name="probe-coupon", setup=_coupon_setup, ref=f"{REF}:COUPON", invariants=[one_coupon_winner],
                 starts=[Start(instance=f"u{i}", orchestration="Probe::orchestration::checkout", input=f"u{i}") for i in range(2)])


def test_no_outcome_or_idempotency_failure_when_no_fault_fired() -> None:
    """A plan that is enabled but injects nothing (its window closed at 0 ms): the run is fault-
    free, yet 'outcome under faults differs from fault-free' is reported whenever the seeded
    2-node schedule lets the other customer win than the twin's canonical 1-node schedule."""
    plan = FaultPlan.only("crash", rate=0.05, until_ms=0)
    bad = []
    for seed in (10, 17):
        result = run_and_check(Simulation(COUPON, seed, plan))
        assert result.faults_injected == {}
        bad += [f.render() for f in result.failures]
    assert not bad, bad[0]


# --- FP4: liveness calls a deleted (cleaned-up) instance "never started" ------------------------


def _retention_setup(rt, world):
    @rt.register_activity("Probe::activity::report")
    def report(ctx, x):
        world.put_if_absent(f"report:{x}", True)
        return x

    @rt.register_orchestration("Probe::orchestration::report")
    def report_orch(ctx, x):
        return (yield ctx.schedule_activity("Probe::activity::report", x))

    @rt.register_activity("Probe::activity::purge")
    def purge(ctx, ids):
        client, purged = ctx.get_client(), 0
        for i in ids:
            if client.get_status(i).status in ("Completed", "Failed"):
                client.delete_instance(i)
                purged += 1
        return purged

    @rt.register_orchestration("Probe::orchestration::janitor")
    def janitor(ctx, ids):
        yield ctx.schedule_timer(3600_000)
        return (yield ctx.schedule_activity("Probe::activity::purge", ids))


RETENTION = SimSpec(name="probe-retention", setup=_retention_setup, ref=f"{REF}:RETENTION",
                    starts=[Start(instance=f"r{i}", orchestration="Probe::orchestration::report", input=i) for i in range(2)]
                    + [Start(instance="janitor", orchestration="Probe::orchestration::janitor", input=["r0", "r1"])])


def test_deleting_completed_instances_is_not_reported_as_never_started() -> None:
    failures = _failures(RETENTION, [0], FaultPlan.none())
    assert not failures, failures[0]


# --- FP5: determinism replay after pruning old executions of a KV-using actor ------------------


def _pruned_actor_setup(rt, world):
    @rt.register_activity("Probe::activity::prune")
    def prune(ctx, inst):
        ctx.get_client().prune_executions(inst, PruneOptions(keep_last=2))  # housekeeping for a long actor
        return True

    @rt.register_activity("Probe::activity::beat")
    def beat(ctx, arg):
        world.put_if_absent(f"beat:{arg[0]}:{arg[1]}", True)
        return True

    @rt.register_orchestration("Probe::orchestration::actor")
    def actor(ctx, n):
        if ctx.get_kv_value("first_seen") is None:  # KV carries across continue-as-new (and survives pruning)
            ctx.set_kv_value("first_seen", "iteration-0")
            yield ctx.schedule_activity("Probe::activity::beat", [ctx.instance_id, "first"])
        yield ctx.schedule_timer(60_000)
        yield ctx.schedule_activity("Probe::activity::beat", [ctx.instance_id, n])
        if n % 3 == 2:
            yield ctx.schedule_activity("Probe::activity::prune", ctx.instance_id)
        if n < 8:
            yield ctx.continue_as_new(n + 1)
        return ctx.get_kv_value("first_seen")


PRUNED_ACTOR = SimSpec(name="probe-pruned-actor", setup=_pruned_actor_setup, ref=f"{REF}:PRUNED_ACTOR",
                       starts=[Start(instance="actor", orchestration="Probe::orchestration::actor", input=0)])


def test_pruned_executions_do_not_break_the_replay_check() -> None:
    """The runtime is right (the actor completes with 'iteration-0'); the checker rebuilds the KV
    snapshot of execution 8 from the surviving histories only (executions 1-7 pruned) and
    reports 'replay from scratch diverged: ... code did SetKeyValue(key='first_seen' ...)'."""
    result = run_and_check(Simulation(PRUNED_ACTOR, 0, FaultPlan.none()))
    assert result.statuses["actor"].status == "Completed" and result.statuses["actor"].output == "iteration-0"
    assert result.ok, result.failures[0].render()


# --- FP6: a parent waiting on a child that legitimately waits for an event ---------------------


def _human_setup(rt, world):
    @rt.register_orchestration("Probe::orchestration::sign_off")
    def sign_off(ctx, doc):
        return (yield ctx.wait_for_event("signed"))  # a human signs, some day

    @rt.register_orchestration("Probe::orchestration::contract")
    def contract(ctx, doc):
        signature = yield ctx.schedule_sub_orchestration_with_id("Probe::orchestration::sign_off", f"{ctx.instance_id}::sign", doc)
        return {"doc": doc, "signed_by": signature}


HUMAN_IN_THE_LOOP = SimSpec(
    name="probe-human-in-the-loop", setup=_human_setup, ref=f"{REF}:HUMAN_IN_THE_LOOP",
    starts=[Start(instance=f"k{i}", orchestration="Probe::orchestration::contract", input=f"doc{i}") for i in range(2)],
    signals=[Signal(instance="k0::sign", name="signed", data="alice", at_ms=30 * MIN)],  # k1 not signed (yet)
)


def test_parent_of_a_child_waiting_for_an_event_is_not_stuck() -> None:
    """The child k1::sign waiting for 'signed' is allowed ('waiting for a signal nobody may
    send'), but its parent k1 is reported 'stuck: SubOrchestrationScheduled ... never completed'."""
    failures = _failures(HUMAN_IN_THE_LOOP, [0], FaultPlan.none())
    assert not failures, failures[0]


# --- FP7: lock_expiry jumps the global clock although no lock is held --------------------------


def _timeout_setup(rt, world):
    @rt.register_activity("Probe::activity::fast")
    def fast(ctx, x):
        world.put_if_absent(f"fast:{x}", True)
        return x

    @rt.register_orchestration("Probe::orchestration::timed")
    def timed(ctx, x):
        return (yield ctx.schedule_activity_with_retry(
            "Probe::activity::fast", x, RetryPolicy(max_attempts=3, backoff=Backoff.fixed(1_000), timeout_ms=2 * MIN)))


RETRY_TIMEOUT = SimSpec(name="probe-retry-timeout", setup=_timeout_setup, ref=f"{REF}:RETRY_TIMEOUT",
                        starts=[Start(instance=f"t{i}", orchestration="Probe::orchestration::timed", input=i) for i in range(4)])


def _held_locks_at_lock_expiry(result):
    """For each lock_expiry record: how many orchestration items / activity leases were held."""
    held: dict[str, int] = {}
    out = []
    for line in result.trace:
        rec = json.loads(line)
        op, node = rec["op"], rec.get("node")
        if op in ("orch_fetch", "work_fetch"):
            held[node] = held.get(node, 0) + 1
        elif op in ("orch_turn", "work_ack"):
            held[node] = held.get(node, 0) - 1
        elif op == "crash":
            held[node] = 0
        elif op == "lock_expiry":
            out.append((rec["step"], sum(held.values())))
    return out


def test_lock_expiry_fires_only_while_a_lock_is_held() -> None:
    """faults.py: 'lock_expiry: time jumps past lock timeouts between fetch and ack'. The harness
    rolls it at every step boundary and advances the one global clock by 30 s even when nothing
    is fetched (seed 3: at t=0, before any fetch). Consequence: every timer / per-attempt timeout
    shorter than the fault window races the faults; RETRY_TIMEOUT (instant activity, 2-min
    timeout, timeouts are not retried per SPEC 9) fails the outcome check on 21/100 seeds at
    lock_expiry=0.05 and 92/100 at 0.2 (a swarm rate)."""
    result = Simulation(RETRY_TIMEOUT, 3, FaultPlan.only("lock_expiry", rate=0.2)).run()
    idle_jumps = [step for step, held in _held_locks_at_lock_expiry(result) if held <= 0]
    assert not idle_jumps, f"lock_expiry jumped the clock with no lock held at steps {idle_jumps[:5]}"


# --- FP8: session activities: quiescence declared before the dead owner's session lock expires -


def _session_setup(rt, world):
    @rt.register_activity("Probe::activity::session_step")
    def session_step(ctx, arg):
        world.put_if_absent(f"step:{arg}", True)
        return arg

    @rt.register_orchestration("Probe::orchestration::session_flow")
    def session_flow(ctx, x):
        out = []
        for i in range(3):
            out.append((yield ctx.schedule_activity_on_session("Probe::activity::session_step", f"{x}:{i}", f"sess-{x}")))
            yield ctx.schedule_timer(500)
        return out


SESSIONS = SimSpec(name="probe-sessions", setup=_session_setup, ref=f"{REF}:SESSIONS",
                   starts=[Start(instance=f"s{i}", orchestration="Probe::orchestration::session_flow", input=i) for i in range(3)])


def test_session_activity_after_a_crash_is_not_reported_stuck() -> None:
    """A crash kills the session owner; its session lock (30 s) must expire before another
    worker may claim the session. next_wakeup_ms (providers/memory.py:1003, sqlite.py:1607)
    lists queue visibility and orchestration/work locks but not session locks, so the harness
    (harness.py _next_deadline) finds no deadline, declares quiescence seconds later, and
    liveness reports 'stuck: ActivityScheduled ... (session_step) never completed'. 42/60
    seeds with only crash=0.05 (34/150 swarm); 0 when session expiry is added as a wake-up."""
    failures = _failures(SESSIONS, [0], FaultPlan.only("crash", rate=0.05))
    assert not failures, failures[0]


# =================================================================================================
# FALSE NEGATIVES
# =================================================================================================

# --- FN1: liveness is silent for every instance once any instance is eternal -------------------


def _stuck_with_monitor_setup(rt, world):
    @rt.register_orchestration("Probe::orchestration::stuck_child")
    def child(ctx, x):
        yield ctx.schedule_timer(10)
        return x

    @rt.register_orchestration("Probe::orchestration::stuck_parent")
    def parent(ctx, x):
        # BUG: a fixed child id; the second parent's child never starts, so it waits forever.
        return (yield ctx.schedule_sub_orchestration_with_id("Probe::orchestration::stuck_child", "shared-child", x))

    @rt.register_activity("Probe::activity::probe")
    def probe(ctx, n):
        return "healthy"

    @rt.register_orchestration("Probe::orchestration::monitor")
    def monitor(ctx, n):  # an eternal health-check actor, as in scenarios/instance_actor.py
        yield ctx.schedule_timer(5 * MIN)
        yield ctx.schedule_activity("Probe::activity::probe", n)
        yield ctx.continue_as_new(n + 1)


# A known gap, not tested (a test must be able to pass): an instance stuck next to an eternal
# actor is not reported, because the run ends at the horizon instead of quiescing and the
# liveness checker gives no "stuck" verdict then. Kept for whoever closes it (issue 7 notes).
STUCK_WITH_MONITOR = SimSpec(
    name="probe-stuck-with-monitor", setup=_stuck_with_monitor_setup, ref=f"{REF}:STUCK_WITH_MONITOR",
    fault_transparent=False, horizon_ms=3600_000,
    starts=[Start(instance=f"p{i}", orchestration="Probe::orchestration::stuck_parent", input=i) for i in range(2)]
    + [Start(instance="mon", orchestration="Probe::orchestration::monitor", input=0)],
)


def _replaying_branch_setup(rt, world):
    @rt.register_activity("Probe::activity::step")
    def step(ctx, x):
        return x

    @rt.register_orchestration("Probe::orchestration::metrics")
    def metrics(ctx, x):
        yield ctx.schedule_activity("Probe::activity::step", "a")
        if not ctx.is_replaying():  # BUG: different actions on replay
            yield ctx.schedule_activity("Probe::activity::step", "metrics")
        yield ctx.schedule_timer(1000)
        yield ctx.schedule_activity("Probe::activity::step", "b")
        return x


REPLAYING_BRANCH = SimSpec(
    name="probe-replaying-branch", setup=_replaying_branch_setup, ref=f"{REF}:REPLAYING_BRANCH", fault_transparent=False,
    starts=[Start(instance=f"z{i}", orchestration="Probe::orchestration::metrics", input=i) for i in range(3)],
)


def test_recorded_nondeterminism_failure_is_reported_by_the_determinism_checker() -> None:
    """All three instances end Failed('nondeterministic: schedule mismatch ...'), yet the run
    has no failure at all: verify_execution accepts a recorded Configuration failure that the
    from-scratch replay reproduces (core/verify.py:158-162). 11/40 seeds fault-free and 33/40
    seeds under all(0.05) are silent."""
    for seed, plan in ((3, FaultPlan.none()), (0, FaultPlan.all(0.05))):
        result = run_and_check(Simulation(REPLAYING_BRANCH, seed, plan))
        failed = [i for i, s in result.statuses.items() if s.status == "Failed" and "nondeterministic" in str(s.error)]
        assert failed
        assert any(f.checker == "determinism" for f in result.failures), f"seed {seed}: {failed} failed silently"


# --- FN3: an instance waiting forever for an event it already received and dropped -------------


def _early_event_setup(rt, world):
    @rt.register_activity("Probe::activity::prepare")
    def prepare(ctx, x):
        world.put_if_absent(f"prepared:{x}", True)
        return x

    @rt.register_orchestration("Probe::orchestration::job")
    def job(ctx, x):
        yield ctx.schedule_activity("Probe::activity::prepare", x)
        yield ctx.schedule_timer(2 * MIN)
        return (yield ctx.wait_for_event("go"))  # BUG: positional event; a 'go' that came earlier is dropped


EARLY_EVENT = SimSpec(name="probe-early-event", setup=_early_event_setup, ref=f"{REF}:EARLY_EVENT",
                      starts=[Start(instance=f"j{i}", orchestration="Probe::orchestration::job", input=i) for i in range(3)],
                      signals=[Signal(instance=f"j{i}", name="go", data=i, at_ms=None) for i in range(3)])


def test_liveness_reports_an_instance_waiting_for_an_event_it_dropped() -> None:
    """Seed 0, no faults: all three 'go' events arrive before the subscriptions; the run is
    quiescent with j0-j2 Running forever and their histories holding the dropped ExternalEvent,
    yet nothing is reported (21/40 fault-free seeds hang an instance, none reported)."""
    result = run_and_check(Simulation(EARLY_EVENT, 0, FaultPlan.none()))
    hung = [i for i, s in result.statuses.items() if s.status == "Running"]
    assert hung and result.quiescent
    assert result.failures, f"{hung} wait forever for an event they already dropped; nothing reported"


# --- FN4: an invariant written as a predicate returning False is silently accepted -------------


def _never_ships(result):
    return result.world.get("shipped") is not None  # a predicate: False means violated


def test_invariant_returning_false_is_not_silently_accepted() -> None:
    spec = SimSpec(name="probe-bool-invariant", setup=_coupon_setup, invariants=[_never_ships],
                   starts=[Start(instance="u0", orchestration="Probe::orchestration::checkout", input="u0")])
    result = run_and_check(Simulation(spec, 0, FaultPlan.none()))
    assert result.failures, "an invariant returned False (violated, or a contract error) and nothing was reported"


# =================================================================================================
# DIAGNOSTICS and ExternalWorld
# =================================================================================================


def _orch_side_effect_setup(rt, world):
    @rt.register_activity("Probe::activity::noop")
    def noop(ctx, x):
        return x

    @rt.register_orchestration("Probe::orchestration::welcome")
    def welcome(ctx, x):
        world.append("emails", f"welcome {x}")  # BUG: side effect in orchestration code
        yield ctx.schedule_activity("Probe::activity::noop", x)
        yield ctx.schedule_timer(1_000)
        yield ctx.schedule_activity("Probe::activity::noop", x + 1)
        return x


ORCHESTRATION_SIDE_EFFECT = SimSpec(name="probe-orch-side-effect", setup=_orch_side_effect_setup, ref=f"{REF}:ORCHESTRATION_SIDE_EFFECT",
                                    starts=[Start(instance=f"e{i}", orchestration="Probe::orchestration::welcome", input=i) for i in range(3)])


def test_idempotency_message_does_not_blame_a_nonexistent_activity() -> None:
    """Caught, but rendered as "activity '<unknown>' changed the world when re-executed ...
    (<unknown> ran 0x (fault-free 0x))": the write came from orchestration code."""
    seed, failure = _first(ORCHESTRATION_SIDE_EFFECT, FaultPlan.all(0.05), 3, "idempotency")
    assert "'<unknown>'" not in failure.message, failure.message[:300]


def test_world_delete_reports_a_key_that_held_none() -> None:
    world = ExternalWorld()
    world.put("reservation:42", None)
    assert world.exists("reservation:42")
    assert world.delete("reservation:42") is True  # world.py:92 tests the value, not the key
