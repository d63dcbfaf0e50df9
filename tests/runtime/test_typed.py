"""End-to-end: the ``_typed`` API with attrs classes (SPEC §17 typed variants, codec)."""

from __future__ import annotations

import attrs
import pytest

from duroxide_sim import OrchestrationFailedError, SerializationError, TaskFailedError

from ._helpers import STYLES, events_of, pick


@attrs.define
class Order:
    order_id: str
    quantity: int
    items: list[str] = attrs.field(factory=list)


@attrs.define
class Receipt:
    order_id: str
    total: float
    lines: int


@attrs.define
class Signal:
    kind: str
    payload: dict[str, int] = attrs.field(factory=dict)


def _price(ctx, order: Order) -> Receipt:
    assert isinstance(order, Order), type(order)
    return Receipt(order.order_id, order.quantity * 2.5, len(order.items))


@pytest.mark.parametrize("style", STYLES)
def test_attrs_round_trip_through_client_orchestration_and_activity(world, style):
    """attrs input/output round-trips: typed start, typed orchestration input, typed activity, typed wait."""
    seen = {}

    def gen(ctx, order: Order):
        seen["input_type"] = type(order)
        receipt = yield ctx.schedule_activity_typed("Price", order, result_type=Receipt)
        seen["result_type"] = type(receipt)
        return receipt

    async def coro(ctx, order: Order):
        seen["input_type"] = type(order)
        receipt = await ctx.schedule_activity_typed("Price", order, result_type=Receipt)
        seen["result_type"] = type(receipt)
        return receipt

    world.runtime.register_activity_typed("Price", _price)
    world.runtime.register_orchestration_typed("Checkout", pick(style, gen, coro))
    world.client.start_orchestration_typed("o1", "Checkout", Order("A-1", 4, ["x", "y"]))
    receipt = world.client.wait_for_orchestration_typed("o1", result_type=Receipt)
    assert receipt == Receipt("A-1", 10.0, 2)
    assert seen == {"input_type": Order, "result_type": Receipt}
    # on the wire the records are plain JSON objects
    started = events_of(world, "o1", "OrchestrationStarted")[0]["data"]
    assert started["input"] == {"order_id": "A-1", "quantity": 4, "items": ["x", "y"]}
    assert world.client.get_status("o1").output == {"order_id": "A-1", "total": 10.0, "lines": 2}


def test_wait_for_orchestration_typed_without_type_returns_plain_output(world):
    """wait_for_orchestration_typed without result_type returns the decoded JSON value."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return Receipt("z", 1.0, 0)

    world.client.start_orchestration("i1", "O")
    assert world.client.wait_for_orchestration_typed("i1") == {"order_id": "z", "total": 1.0, "lines": 0}


@pytest.mark.parametrize("style", STYLES)
def test_wait_for_orchestration_typed_raises_on_failure(world, style):
    """wait_for_orchestration_typed raises OrchestrationFailedError carrying the error text."""

    def gen(ctx, _):
        yield ctx.schedule_timer(1)
        raise RuntimeError("declined")

    async def coro(ctx, _):
        await ctx.schedule_timer(1)
        raise RuntimeError("declined")

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    with pytest.raises(OrchestrationFailedError, match="RuntimeError: declined") as info:
        world.client.wait_for_orchestration_typed("i1", result_type=Receipt)
    assert isinstance(info.value, RuntimeError)


@pytest.mark.parametrize("style", STYLES)
def test_typed_sub_orchestration(world, style):
    """schedule_sub_orchestration_typed passes an attrs input to a typed child and structures its result."""

    def child_gen(ctx, order: Order):
        return (yield ctx.schedule_activity_typed("Price", order, result_type=Receipt))

    async def child_coro(ctx, order: Order):
        return await ctx.schedule_activity_typed("Price", order, result_type=Receipt)

    def gen(ctx, n):
        r = yield ctx.schedule_sub_orchestration_typed("Child", Order("S", n), result_type=Receipt)
        r2 = yield ctx.schedule_sub_orchestration_with_id_typed("Child", "kid", Order("T", n + 1), result_type=Receipt)
        return [isinstance(r, Receipt), r.total, isinstance(r2, Receipt), r2.total]

    async def coro(ctx, n):
        r = await ctx.schedule_sub_orchestration_typed("Child", Order("S", n), result_type=Receipt)
        r2 = await ctx.schedule_sub_orchestration_with_id_typed("Child", "kid", Order("T", n + 1), result_type=Receipt)
        return [isinstance(r, Receipt), r.total, isinstance(r2, Receipt), r2.total]

    world.runtime.register_activity_typed("Price", _price)
    world.runtime.register_orchestration_typed("Child", pick(style, child_gen, child_coro))
    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent", 2)
    assert world.result("p").output == [True, 5.0, True, 7.5]


@pytest.mark.parametrize("style", STYLES)
def test_typed_event_and_queue(world, style):
    """raise_event_typed / wait_for_event_typed and enqueue_event_typed / dequeue_event_typed carry attrs records."""

    def gen(ctx, _):
        ev = yield ctx.wait_for_event_typed("sig", result_type=Signal)
        msg = yield ctx.dequeue_event_typed("q", result_type=Signal)
        return [type(ev).__name__, ev.kind, ev.payload, type(msg).__name__, msg.kind]

    async def coro(ctx, _):
        ev = await ctx.wait_for_event_typed("sig", result_type=Signal)
        msg = await ctx.dequeue_event_typed("q", result_type=Signal)
        return [type(ev).__name__, ev.kind, ev.payload, type(msg).__name__, msg.kind]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event_typed("i1", "sig", Signal("ping", {"n": 1}))
    world.client.enqueue_event_typed("i1", "q", Signal("job"))
    assert world.result("i1").output == ["Signal", "ping", {"n": 1}, "Signal", "job"]


def test_typed_string_is_not_re_encoded(world):
    """The context's typed calls pass a str through raw (the activity's input is that text); the
    client's typed start is an alias of the plain one (JSON-encodes it, as duroxide-python does),
    which a typed orchestration reads back as the same string."""

    @world.runtime.register_activity_typed("Upper")
    def upper(ctx, text: str):
        return text.upper()

    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, text: str):
        return (yield ctx.schedule_activity_typed("Upper", text, result_type=str))

    world.client.start_orchestration_typed("i1", "O", "plain words")
    assert world.result("i1").output == "PLAIN WORDS"
    assert events_of(world, "i1", "OrchestrationStarted")[0]["data"]["input"] == "plain words"
    assert events_of(world, "i1", "ActivityScheduled")[0]["data"]["input"] == "plain words"


@pytest.mark.parametrize("style", STYLES)
def test_all_typed_and_race_typed_with_records(world, style):
    """all_typed returns structured records; race_typed's value is structured by the winner's result_type."""

    def gen(ctx, _):
        receipts = yield ctx.all_typed([ctx.schedule_activity_typed("Price", Order(str(i), i), result_type=Receipt) for i in range(3)])
        race = yield ctx.race_typed(ctx.schedule_activity_typed("Price", Order("r", 8), result_type=Receipt), ctx.schedule_timer(60_000))
        return [[type(r).__name__ for r in receipts], [r.total for r in receipts], race["index"], type(race["value"]).__name__]

    async def coro(ctx, _):
        receipts = await ctx.all_typed([ctx.schedule_activity_typed("Price", Order(str(i), i), result_type=Receipt) for i in range(3)])
        race = await ctx.race_typed(ctx.schedule_activity_typed("Price", Order("r", 8), result_type=Receipt), ctx.schedule_timer(60_000))
        return [[type(r).__name__ for r in receipts], [r.total for r in receipts], race["index"], type(race["value"]).__name__]

    world.runtime.register_activity_typed("Price", _price)
    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [["Receipt"] * 3, [0.0, 2.5, 5.0], 0, "Receipt"]


def test_result_not_matching_result_type_raises_in_orchestration(world):
    """A result that does not fit result_type raises SerializationError at the yield."""

    @world.runtime.register_activity("Wrong")
    def wrong(ctx, _):
        return {"unexpected": True}

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_typed("Wrong", None, result_type=Receipt)
        except SerializationError as exc:
            return ["SerializationError", "Receipt" in str(exc)]

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == ["SerializationError", True]


def test_typed_activity_with_bad_input_fails_activity(world):
    """A typed activity whose input does not fit its annotation fails with a SerializationError."""
    world.runtime.register_activity_typed("Price", _price)

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("Price", {"nope": 1})
        except TaskFailedError as exc:
            return str(exc)

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output.startswith("Activity 'Price' call failed: SerializationError:")


def test_typed_orchestration_with_bad_input_fails(world):
    """A typed orchestration whose input does not fit its annotation fails the instance."""

    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, order: Order):
        return order.order_id

    world.client.start_orchestration("i1", "O", {"wrong": "shape"})
    st = world.result("i1")
    assert st.status == "Failed"
    assert "SerializationError" in st.error and "Order" in st.error


def test_versioned_typed_registration(world):
    """register_orchestration_versioned_typed structures the input for that version."""

    @world.runtime.register_orchestration_versioned_typed("O", "2.0.0")
    def orch(ctx, order: Order):
        return [ctx.orchestration_version, order.quantity]

    world.client.start_orchestration_versioned_typed("i1", "O", Order("v", 3), "2.0.0")
    assert world.result("i1").output == ["2.0.0", 3]


def test_typed_detached_start_and_continue_as_new(world):
    """start_orchestration_typed (detached) and continue_as_new_typed carry attrs records."""

    @world.runtime.register_orchestration_typed("Counter")
    def counter(ctx, order: Order):
        if order.quantity < 3:
            yield ctx.continue_as_new_typed(Order(order.order_id, order.quantity + 1))
        return order.quantity

    @world.runtime.register_orchestration("Starter")
    def starter(ctx, _):
        yield ctx.start_orchestration_typed("Counter", "counter-1", Order("c", 0))
        return "ok"

    world.client.start_orchestration("s", "Starter")
    assert world.result("s").output == "ok"
    assert world.result("counter-1").output == 3
    assert world.client.list_executions("counter-1") == [1, 2, 3, 4]
