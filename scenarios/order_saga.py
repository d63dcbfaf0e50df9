"""Order saga: reserve inventory, charge the payment, ship; compensate in reverse on failure.

What it models
    ``place_order`` (typed input ``Order``) runs three steps against three external systems:

    1. ``reserve_inventory`` - take ``qty`` units of ``sku`` from stock (``reservation:<order>``);
    2. ``charge_payment``    - bill what was reserved (``charge:<order>``, revenue ledger), with
                               a retry policy for the flaky payment gateway; a declined card
                               fails every attempt;
    3. ``ship_order``        - hand over to the carrier (``shipment:<order>``); addresses the
                               carrier does not serve fail deterministically.

    Each completed step pushes its compensation on a list (in orchestration code, so replay
    rebuilds it identically); on failure the compensations run in reverse - ``refund_payment``
    then ``release_inventory`` - each with retries, and the order completes as ``refunded`` or
    ``payment_declined``. Every activity is idempotent: it records its effect under the
    order id with ``put_if_absent`` and only then moves counters (stock, revenue).

Orders (deterministic by id)
    o-3 pays with a declined card -> ``payment_declined`` (inventory released);
    o-5 and o-8 ship to Antarctica -> ``refunded`` (payment refunded, inventory released);
    the others -> ``shipped``.

Properties
    ``money_charged_iff_shipped_or_refunded`` (charged => shipped xor refunded; shipped =>
    charged), ``inventory_reserved_iff_shipped_or_released``, ``stock_and_revenue_balance``
    (stock = initial - live reservations; revenue = charges - refunds), ``expected_outcomes``.

Planted bug (``VARIANTS``)
    ``parallel-reserve-and-charge``: to cut latency the team runs ``reserve_inventory`` and
    ``charge_payment`` concurrently with ``ctx.all``, assuming the (fast, local) reservation
    always completes before the (slow, remote) charge - which bills what was reserved. When the
    charge runs first it finds nothing to bill, fails, and a good order is cancelled. The
    compensation is correct (the money/inventory invariants hold); the outcome is not: caught by
    ``expected_outcomes`` and, against the fault-free run, by the outcome checker - whenever
    the scheduler (or the ``reorder`` fault) runs the charge first.
"""

from __future__ import annotations

import attrs

from duroxide_sim import Backoff, RetryPolicy
from duroxide_sim.sim.harness import SimSpec, Start
from scenarios._common import fixture_once, poisoned, status_of


class Names:
    class Orchestrations:
        PLACE_ORDER = "shop::orchestration::place_order"

    class Activities:
        RESERVE = "shop::activity::reserve_inventory"
        CHARGE = "shop::activity::charge_payment"
        SHIP = "shop::activity::ship_order"
        REFUND = "shop::activity::refund_payment"
        RELEASE = "shop::activity::release_inventory"


INITIAL_STOCK = {"sku-lamp": 100, "sku-desk": 100, "sku-chair": 100}
DECLINED_CARDS = {"4000-0000-0000-0002"}
UNSERVED_REGIONS = ("Antarctica",)


# --- typed payloads ---------------------------------------------------------------------------


@attrs.define
class Order:
    order_id: str
    sku: str
    qty: int
    unit_price_cents: int
    card: str
    address: str


@attrs.define
class OrderOutcome:
    order_id: str
    status: str  # "shipped" | "payment_declined" | "refunded"
    detail: str


class PaymentDeclined(Exception):
    pass


class Undeliverable(Exception):
    pass


# --- handlers -----------------------------------------------------------------------------------


def register_activities(rt, world):
    @rt.register_activity_typed(Names.Activities.RESERVE)
    def reserve_inventory(ctx, order: Order) -> int:
        if world.exists(f"reservation:{order.order_id}"):
            return world.get(f"reservation:{order.order_id}")["qty"]
        if world.get(f"stock:{order.sku}", 0) < order.qty:
            raise RuntimeError(f"{order.sku}: out of stock")
        world.put_if_absent(f"reservation:{order.order_id}", {"sku": order.sku, "qty": order.qty})
        world.incr(f"stock:{order.sku}", -order.qty)
        return order.qty

    @rt.register_activity_typed(Names.Activities.CHARGE)
    def charge_payment(ctx, order: Order) -> int:
        if world.exists(f"charge:{order.order_id}"):
            return world.get(f"charge:{order.order_id}")
        reservation = world.get(f"reservation:{order.order_id}")
        if reservation is None:
            raise RuntimeError(f"nothing reserved for {order.order_id}; refusing to bill")
        if order.card in DECLINED_CARDS:
            raise PaymentDeclined(f"card ending {order.card[-4:]} declined")
        amount = reservation["qty"] * order.unit_price_cents  # bill what was actually reserved
        world.put_if_absent(f"charge:{order.order_id}", amount)
        world.incr("ledger:revenue_cents", amount)
        return amount

    @rt.register_activity_typed(Names.Activities.SHIP)
    def ship_order(ctx, order: Order) -> str:
        if world.exists(f"shipment:{order.order_id}"):
            return world.get(f"shipment:{order.order_id}")
        if any(region in order.address for region in UNSERVED_REGIONS):
            raise Undeliverable(f"carrier does not serve {order.address!r}")
        tracking = f"TRK-{order.order_id}"
        world.put_if_absent(f"shipment:{order.order_id}", tracking)
        return tracking

    @rt.register_activity(Names.Activities.REFUND)
    def refund_payment(ctx, order_id: str) -> None:
        amount = world.get(f"charge:{order_id}")
        if amount is not None and world.put_if_absent(f"refund:{order_id}", amount):
            world.incr("ledger:revenue_cents", -amount)

    @rt.register_activity(Names.Activities.RELEASE)
    def release_inventory(ctx, order_id: str) -> None:
        reservation = world.get(f"reservation:{order_id}")
        if reservation is not None and world.put_if_absent(f"release:{order_id}", reservation["qty"]):
            world.incr(f"stock:{reservation['sku']}", reservation["qty"])


PAYMENT_RETRY = RetryPolicy(max_attempts=3, backoff=Backoff.exponential(base_ms=1_000, max_ms=10_000))
SHIP_RETRY = RetryPolicy(max_attempts=2, backoff=Backoff.fixed(2_000))
COMPENSATION_RETRY = RetryPolicy(max_attempts=10, backoff=Backoff.exponential(base_ms=1_000, max_ms=60_000))


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0]


def _compensate(ctx, order: Order, compensations: list[str]):
    for name in reversed(compensations):
        yield ctx.schedule_activity_with_retry(name, order.order_id, retry=COMPENSATION_RETRY)


def place_order(ctx, order: Order):
    ctx.trace_info(f"[{order.order_id}] {order.qty} x {order.sku}")
    compensations: list[str] = []  # rebuilt identically on every replay
    try:
        yield ctx.schedule_activity_typed(Names.Activities.RESERVE, order, result_type=int)
        compensations.append(Names.Activities.RELEASE)
        amount = yield ctx.schedule_activity_with_retry_typed(Names.Activities.CHARGE, order, retry=PAYMENT_RETRY, result_type=int)
        compensations.append(Names.Activities.REFUND)
        tracking = yield ctx.schedule_activity_with_retry_typed(Names.Activities.SHIP, order, retry=SHIP_RETRY, result_type=str)
    except Exception as err:  # noqa: BLE001 - any failed step: undo the completed ones
        ctx.trace_warn(f"[{order.order_id}] failed: {_first_line(err)}; compensating {list(reversed(compensations))}")
        yield from _compensate(ctx, order, compensations)
        status = "refunded" if Names.Activities.REFUND in compensations else "payment_declined"
        return OrderOutcome(order.order_id, status, _first_line(err))
    return OrderOutcome(order.order_id, "shipped", f"{tracking} ({amount} cents)")


def place_order_parallel(ctx, order: Order):
    """BUG: reserve and charge concurrently, assuming the reservation lands first."""
    reserved, charged = yield ctx.all([
        ctx.schedule_activity_typed(Names.Activities.RESERVE, order, result_type=int),
        ctx.schedule_activity_typed(Names.Activities.CHARGE, order, result_type=int),
    ])
    compensations = []
    if "ok" in reserved:
        compensations.append(Names.Activities.RELEASE)
    if "ok" in charged:
        compensations.append(Names.Activities.REFUND)
    error = reserved.get("err") or charged.get("err")
    if error is None:
        try:
            tracking = yield ctx.schedule_activity_with_retry_typed(Names.Activities.SHIP, order, retry=SHIP_RETRY, result_type=str)
            return OrderOutcome(order.order_id, "shipped", f"{tracking} ({charged['ok']} cents)")
        except Exception as err:  # noqa: BLE001
            error = _first_line(err)
    yield from _compensate(ctx, order, compensations)
    status = "refunded" if Names.Activities.REFUND in compensations else "payment_declined"
    return OrderOutcome(order.order_id, status, str(error).splitlines()[0])


def register(rt, world, *, parallel: bool = False):
    register_activities(rt, world)
    rt.register_orchestration_typed(Names.Orchestrations.PLACE_ORDER, place_order_parallel if parallel else place_order)


# --- the scenario ---------------------------------------------------------------------------------

ORDERS = [
    Order("o-1", "sku-lamp", 2, 2_500, "4242-4242-4242-4242", "1 Main St, Springfield"),
    Order("o-2", "sku-desk", 1, 19_900, "5555-5555-5555-4444", "2 Elm St, Shelbyville"),
    Order("o-3", "sku-chair", 4, 7_900, "4000-0000-0000-0002", "3 Oak Ave, Springfield"),
    Order("o-4", "sku-lamp", 1, 2_500, "4242-4242-4242-4242", "4 Pine Rd, Capital City"),
    Order("o-5", "sku-desk", 2, 19_900, "5555-5555-5555-4444", "McMurdo Station, Antarctica"),
    Order("o-6", "sku-chair", 1, 7_900, "4242-4242-4242-4242", "6 Birch Ln, Ogdenville"),
    Order("o-7", "sku-lamp", 3, 2_500, "5555-5555-5555-4444", "7 Cedar Ct, North Haverbrook"),
    Order("o-8", "sku-chair", 2, 7_900, "4242-4242-4242-4242", "Vostok Station, Antarctica"),
]
EXPECTED = {"o-1": "shipped", "o-2": "shipped", "o-3": "payment_declined", "o-4": "shipped", "o-5": "refunded",
            "o-6": "shipped", "o-7": "shipped", "o-8": "refunded"}


def _orders(result):
    """Orders whose saga ran to its end (poisoned ones are left to an operator)."""
    return [o for o in ORDERS if not poisoned(result, f"order-{o.order_id}")]


def money_charged_iff_shipped_or_refunded(result):
    w = result.world
    for o in _orders(result):
        oid = o.order_id
        charged, shipped, refunded = (w.exists(f"{k}:{oid}") for k in ("charge", "shipment", "refund"))
        if charged and shipped == refunded:
            return f"order {oid} was charged but is {'both shipped and refunded' if shipped else 'neither shipped nor refunded'}"
        if (shipped or refunded) and not charged:
            return f"order {oid} was {'shipped' if shipped else 'refunded'} without a charge"
    return None


def inventory_reserved_iff_shipped_or_released(result):
    w = result.world
    for o in _orders(result):
        oid = o.order_id
        reserved, shipped, released = (w.exists(f"{k}:{oid}") for k in ("reservation", "shipment", "release"))
        if reserved and shipped == released:
            return f"order {oid} holds a reservation that is {'both shipped and released' if shipped else 'neither shipped nor released'}"
        if (shipped or released) and not reserved:
            return f"order {oid} was {'shipped' if shipped else 'released'} without a reservation"
    return None


def stock_and_revenue_balance(result):
    w = result.world
    for sku, initial in INITIAL_STOCK.items():
        held = sum(v["qty"] for k, v in w.state.items()
                   if k.startswith("reservation:") and v["sku"] == sku and not w.exists("release:" + k.split(":", 1)[1]))
        if w.get(f"stock:{sku}") != initial - held:
            return f"stock of {sku} is {w.get(f'stock:{sku}')}, expected {initial} - {held} reserved"
    charges = sum(v for k, v in w.state.items() if k.startswith("charge:"))
    refunds = sum(v for k, v in w.state.items() if k.startswith("refund:"))
    if w.get("ledger:revenue_cents", 0) != charges - refunds:
        return f"revenue ledger {w.get('ledger:revenue_cents', 0)} != charges {charges} - refunds {refunds}"
    return None


def expected_outcomes(result):
    for o in _orders(result):
        status, output = status_of(result, f"order-{o.order_id}")
        got = output.get("status") if status == "Completed" else status
        if got != EXPECTED[o.order_id]:
            detail = output.get("detail") if status == "Completed" else str(output).splitlines()[0]
            return f"order {o.order_id}: expected {EXPECTED[o.order_id]}, got {got} ({detail})"
    return None


def make_spec(*, name: str, ref: str, parallel: bool = False, spacing_ms: int = 30_000) -> SimSpec:
    def setup(rt, world):
        if fixture_once(world, "order_saga"):
            for sku, qty in INITIAL_STOCK.items():
                world.put(f"stock:{sku}", qty)
        register(rt, world, parallel=parallel)

    return SimSpec(
        name=name,
        setup=setup,
        starts=[Start(instance=f"order-{o.order_id}", orchestration=Names.Orchestrations.PLACE_ORDER, input=o, at_ms=i * spacing_ms)
                for i, o in enumerate(ORDERS)],
        invariants=[money_charged_iff_shipped_or_refunded, inventory_reserved_iff_shipped_or_released, stock_and_revenue_balance,
                    expected_outcomes],
        ref=ref,
    )


SPEC = make_spec(name="order_saga", ref="scenarios/order_saga.py:SPEC")
PRODUCTION = make_spec(name="order_saga-production", ref="scenarios/order_saga.py:PRODUCTION", spacing_ms=20)

# --- planted bugs ---------------------------------------------------------------------------------

PARALLEL_RESERVE_AND_CHARGE = make_spec(name="order_saga/parallel-reserve-and-charge",
                                        ref="scenarios/order_saga.py:PARALLEL_RESERVE_AND_CHARGE", parallel=True)

VARIANTS = {"parallel-reserve-and-charge": PARALLEL_RESERVE_AND_CHARGE}
