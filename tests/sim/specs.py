"""Simulation specs used by the simulation tests: one correct workflow and planted bugs.

Each planted bug is something a real team writes; each spec names the fault kind or checker
that exists to catch it. Specs live at module level so their repro lines
(``duroxide-sim reproduce tests/sim/specs.py:NAME --seed N ...``) can import them.
"""

from __future__ import annotations

import random

from duroxide_sim.sim.harness import Signal, SimSpec, Start

REF = "tests/sim/specs.py"


# --- a correct workflow: idempotent activities, timers, race, join, sub-orchestration, CAN ------


def _orders_setup(rt, world, *, idempotent_ship=True):
    @rt.register_activity("Orders::activity::charge")
    def charge(ctx, order):
        world.put_if_absent(f"charge:{order}", 10)
        return "charged"

    @rt.register_activity("Orders::activity::ship")
    def ship(ctx, order):
        if idempotent_ship:
            if world.put_if_absent(f"shipped:{order}", True):
                world.append("shipments", order)
        else:
            world.append("shipments", order)  # BUG: no check, a re-delivery ships twice
        return "shipped"

    @rt.register_orchestration("Orders::orchestration::child")
    async def child(ctx, x):
        await ctx.schedule_timer(500)
        return x * 2

    @rt.register_orchestration("Orders::orchestration::order")
    def order(ctx, oid):
        a = yield ctx.schedule_activity("Orders::activity::charge", oid)
        yield ctx.race(ctx.schedule_timer(1_000), ctx.wait_for_event("expedite"))
        r = yield ctx.all([ctx.schedule_activity("Orders::activity::ship", oid),
                           ctx.schedule_sub_orchestration("Orders::orchestration::child", oid)])
        if oid % 2:
            yield ctx.continue_as_new(oid + 1)
        return [a, r]


ORDERS_OK = SimSpec(
    name="orders-ok",
    setup=_orders_setup,
    starts=[Start(instance=f"o{i}", orchestration="Orders::orchestration::order", input=i) for i in range(4)],
    ref=f"{REF}:ORDERS_OK",
)

ORDERS_NON_IDEMPOTENT = SimSpec(
    name="orders-non-idempotent",
    setup=lambda rt, world: _orders_setup(rt, world, idempotent_ship=False),
    starts=[Start(instance=f"o{i}", orchestration="Orders::orchestration::order", input=i) for i in range(4)],
    ref=f"{REF}:ORDERS_NON_IDEMPOTENT",
)


# --- determinism: branching on the global RNG inside orchestration code -----------------------


def _random_setup(rt, world):
    @rt.register_activity("Coin::activity::record")
    def record(ctx, side):
        return side

    @rt.register_orchestration("Coin::orchestration::flip")
    def flip(ctx, _):
        side = "heads" if random.random() < 0.5 else "tails"  # BUG: nondeterministic
        first = yield ctx.schedule_activity("Coin::activity::record", side)
        yield ctx.schedule_timer(100)
        second = yield ctx.schedule_activity("Coin::activity::record", side)
        return [first, second]


RANDOM_BRANCH = SimSpec(
    name="random-branch",
    setup=_random_setup,
    starts=[Start(instance=f"c{i}", orchestration="Coin::orchestration::flip") for i in range(3)],
    fault_transparent=False,
    ref=f"{REF}:RANDOM_BRANCH",
)


# --- outcome under reordering: assumes A finishes before B ------------------------------------


def _reorder_setup(rt, world):
    @rt.register_activity("Race::activity::write")
    def write(ctx, who):
        world.put("last_writer", who)
        return who

    @rt.register_activity("Race::activity::read")
    def read(ctx, _):
        return world.get("last_writer")

    @rt.register_orchestration("Race::orchestration::two_writers")
    def two_writers(ctx, _):
        # BUG: assumes the second write lands last; completions may arrive in any order.
        yield ctx.all([ctx.schedule_activity("Race::activity::write", "A"), ctx.schedule_activity("Race::activity::write", "B")])
        return (yield ctx.schedule_activity("Race::activity::read", None))


REORDER_ASSUMPTION = SimSpec(
    name="reorder-assumption",
    setup=_reorder_setup,
    starts=[Start(instance="w", orchestration="Race::orchestration::two_writers")],
    ref=f"{REF}:REORDER_ASSUMPTION",
)


# --- duplicate client sends: counting messages without de-duplication --------------------------


def _votes_setup(rt, world):
    @rt.register_orchestration("Votes::orchestration::tally")
    def tally(ctx, needed):
        votes = []
        while len(votes) < needed:
            votes.append((yield ctx.dequeue_event("vote")))  # BUG: a re-sent vote counts twice
        return sorted(votes)


VOTES_COUNTING = SimSpec(
    name="votes-counting",
    setup=_votes_setup,
    starts=[Start(instance="poll", orchestration="Votes::orchestration::tally", input=3)],
    signals=[Signal(instance="poll", name="vote", data=v, at_ms=10 + i, kind="enqueue") for i, v in enumerate("abc")],
    ref=f"{REF}:VOTES_COUNTING",
)


# --- delayed messages: a deadline that is really a race ----------------------------------------


def _approval_setup(rt, world):
    @rt.register_orchestration("Approval::orchestration::request")
    def request(ctx, _):
        winner = yield ctx.select2(ctx.wait_for_event("approve"), ctx.schedule_timer(2_000))
        return "approved" if winner.index() == 0 else "auto-rejected"  # BUG: treats lateness as rejection


APPROVAL_DEADLINE = SimSpec(
    name="approval-deadline",
    setup=_approval_setup,
    starts=[Start(instance="req", orchestration="Approval::orchestration::request")],
    signals=[Signal(instance="req", name="approve", data=True, at_ms=1_000)],
    ref=f"{REF}:APPROVAL_DEADLINE",
)


# --- liveness: a parent whose child's completion never reaches it --------------------------------
#
# The runtime fails a parent whose child id is already taken (it used to hang, which was this
# spec's planted bug), so the stuck parent now comes from a planted *provider* bug: an ack that
# loses the child's SubOrchCompleted message (``plant_lost_child_completions``), as a third-party
# provider might. The workflow itself is correct.


def _stuck_setup(rt, world):
    @rt.register_orchestration("Stuck::orchestration::child")
    def child(ctx, x):
        yield ctx.schedule_timer(10)
        return x

    @rt.register_orchestration("Stuck::orchestration::parent")
    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration("Stuck::orchestration::child", x))


def plant_lost_child_completions(monkeypatch) -> None:
    """BUG (planted): the in-memory provider's ack drops every SubOrchCompleted it should
    enqueue, so each parent waits for good for a child that has finished."""
    from duroxide_sim.core.events import SubOrchCompletedMsg
    from duroxide_sim.providers.memory import InMemoryProvider

    original = InMemoryProvider.ack_orchestration_item

    def ack(self, lock_token, execution_id, history_delta, worker_items, orchestrator_items, *args, **kwargs):
        kept = [m for m in orchestrator_items if not isinstance(m, SubOrchCompletedMsg)]
        return original(self, lock_token, execution_id, history_delta, worker_items, kept, *args, **kwargs)

    monkeypatch.setattr(InMemoryProvider, "ack_orchestration_item", ack)


STUCK_CHILD = SimSpec(
    name="stuck-child",
    setup=_stuck_setup,
    starts=[Start(instance=f"p{i}", orchestration="Stuck::orchestration::parent", input=i) for i in range(2)],
    fault_transparent=False,
    ref=f"{REF}:STUCK_CHILD",
)


# --- user invariant: money charged iff shipped or refunded --------------------------------------


def _saga_setup(rt, world, *, skip_even_compensation: bool = True):
    """The order saga; with ``skip_even_compensation`` (the planted bug) even orders are not
    refunded when shipping fails. ``saga_fixed_setup`` is the corrected twin."""

    @rt.register_activity("Saga::activity::charge")
    def charge(ctx, oid):
        world.put_if_absent(f"charged:{oid}", True)
        return True

    @rt.register_activity("Saga::activity::ship")
    def ship(ctx, oid):
        if oid % 3 == 0:
            raise RuntimeError("warehouse refused")
        world.put_if_absent(f"shipped:{oid}", True)
        return True

    @rt.register_activity("Saga::activity::refund")
    def refund(ctx, oid):
        world.put_if_absent(f"refunded:{oid}", True)
        return True

    @rt.register_orchestration("Saga::orchestration::order")
    def order(ctx, oid):
        yield ctx.schedule_activity("Saga::activity::charge", oid)
        try:
            yield ctx.schedule_activity("Saga::activity::ship", oid)
        except Exception:  # noqa: BLE001
            if skip_even_compensation and oid % 2 == 0:  # BUG: the compensation is skipped for even orders
                return "failed"
            yield ctx.schedule_activity("Saga::activity::refund", oid)
            return "refunded"
        return "shipped"


def saga_fixed_setup(rt, world):
    """The order saga that always compensates."""
    _saga_setup(rt, world, skip_even_compensation=False)


def money_charged_iff_shipped_or_refunded(result):
    state = result.world.state
    for key in state:
        if key.startswith("charged:"):
            oid = key.split(":", 1)[1]
            if not (state.get(f"shipped:{oid}") or state.get(f"refunded:{oid}")):
                return f"order {oid} was charged but neither shipped nor refunded"
    return None


SAGA_SKIPPED_COMPENSATION = SimSpec(
    name="saga-skipped-compensation",
    setup=_saga_setup,
    starts=[Start(instance=f"s{i}", orchestration="Saga::orchestration::order", input=i) for i in range(1, 7)],
    invariants=[money_charged_iff_shipped_or_refunded],
    ref=f"{REF}:SAGA_SKIPPED_COMPENSATION",
)


# --- set-order dependence: invisible within one process, exposed across hash seeds ------------


def _set_order_setup(rt, world):
    @rt.register_activity("Notify::activity::send")
    def send(ctx, channel):
        return channel

    @rt.register_orchestration("Notify::orchestration::fan_out")
    def fan_out(ctx, _):
        sent = []
        for channel in {"email", "sms", "push", "slack", "pager"}:  # BUG: set order varies by process
            sent.append((yield ctx.schedule_activity("Notify::activity::send", channel)))
        return sent


SET_ORDER = SimSpec(
    name="set-order",
    setup=_set_order_setup,
    starts=[Start(instance="n", orchestration="Notify::orchestration::fan_out")],
    ref=f"{REF}:SET_ORDER",
)


# --- a bug that needs two faults: a rate-limited API plus a compensation -----------------------


def _two_fault_setup(rt, world):
    @rt.register_activity("Ship::activity::reserve_carrier")
    def reserve(ctx, oid):
        world.put_if_absent(f"reserved:{oid}", True)
        return True

    @rt.register_activity("Ship::activity::ship")
    def ship(ctx, oid):
        # The carrier API rejects a third call for the same parcel (rate limit). The ship itself
        # is idempotent, so one re-delivery is harmless - it takes two to trip the limit.
        if ctx.attempt >= 3:
            raise RuntimeError("carrier: too many requests for this parcel")
        world.put_if_absent(f"shipped:{oid}", True)
        return "shipped"

    @rt.register_activity("Ship::activity::refund")
    def refund(ctx, oid):
        world.put_if_absent(f"refunded:{oid}", True)
        return "refunded"

    @rt.register_orchestration("Ship::orchestration::order")
    def order(ctx, oid):
        yield ctx.schedule_activity("Ship::activity::reserve_carrier", oid)
        try:
            return (yield ctx.schedule_activity("Ship::activity::ship", oid))
        except Exception:  # noqa: BLE001
            # BUG: assumes a failed ship means nothing was shipped.
            return (yield ctx.schedule_activity("Ship::activity::refund", oid))


def shipped_xor_refunded(result):
    state = result.world.state
    for key in state:
        if key.startswith("shipped:") and state.get("refunded:" + key.split(":", 1)[1]):
            return f"order {key.split(':', 1)[1]} was both shipped and refunded"
    return None


TWO_FAULT_BUG = SimSpec(
    name="two-fault-bug",
    setup=_two_fault_setup,
    starts=[Start(instance=f"t{i}", orchestration="Ship::orchestration::order", input=i) for i in range(2)],
    invariants=[shipped_xor_refunded],
    fault_transparent=False,
    ref=f"{REF}:TWO_FAULT_BUG",
)
