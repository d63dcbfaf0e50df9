"""The typed API (``*_typed``, cattrs codec) under realistic and hostile usage.

Each test states the behaviour a demanding user expects. Found by a probe in session 6 and
fixed: typed ``str`` values that look like JSON changed on the way ("1.50" -> "1.5"); string
enums passed raw as enum objects; results of the wrong kind silently coerced (``bool("false")``,
``int(2.9)``, ``list("abc")``); mismatch errors pointing at fields that do not exist or dropping
a validator's message; ``wait_for_orchestration_typed`` raising raw cattrs errors; handlers
whose input annotation could not be resolved (local classes, callable objects, partials) silently
untyped; ``None`` annotations; a retry with a timeout re-running a successful activity whose
result did not match; a bare ``NameError`` when encoding a record with unresolvable annotations.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import time
import typing

import attrs
import pytest

from duroxide_sim import (
    Client,
    ConfigurationError,
    OrchestrationFailedError,
    PayloadTooLargeError,
    Runtime,
    RuntimeOptions,
    SerializationError,
    SqliteProvider,
    TaskFailedError,
)
from duroxide_sim.core import codec
from duroxide_sim.core.codec import MAX_PAYLOAD_BYTES

from ._helpers import SecondRuntime, events_of

# --- types ----------------------------------------------------------------------------------


class Color(str, enum.Enum):
    RED = "red"
    BLUE = "blue"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Level(str, enum.Enum):
    """A str enum whose values look like JSON numbers (ticket priorities "1", "2")."""

    ONE = "1"
    TWO = "2"


@attrs.frozen
class Line:
    sku: str
    qty: int


@attrs.define(slots=True, kw_only=True)
class Order:
    order_id: str
    lines: list[Line] = attrs.field(factory=list)
    color: Color = Color.RED
    priority: Priority = Priority.LOW
    note: typing.Optional[str] = None
    dims: tuple[int, ...] = ()
    meta: dict[str, Line] = attrs.field(factory=dict)


@attrs.define
class Receipt:
    order_id: str
    total: int
    lines: int


@dataclasses.dataclass
class Point:
    x: int
    y: int


@attrs.define
class Approval:
    approved: bool


@attrs.define
class Count:
    count: int


@attrs.define
class Holder:
    line: Line


@attrs.define
class Positive:
    qty: int = attrs.field(validator=attrs.validators.gt(0))


@attrs.define
class Stamped:
    when: datetime.datetime


@attrs.define
class Tagged:
    tags: set[str]


@attrs.define
class Blob:
    data: str


# versions of one record, for replay across deployments
@attrs.define
class ItemV1:
    sku: str
    qty: int


@attrs.define
class ItemV2Added:
    sku: str
    qty: int
    gift: bool = False


@attrs.define
class ItemV2Removed:
    sku: str


@attrs.define
class ItemV2Renamed:
    sku: str
    quantity: int


def _receipt(ctx, order: Order) -> Receipt:
    assert isinstance(order, Order), type(order)
    return Receipt(order.order_id, sum(li.qty for li in order.lines), len(order.lines))


def _sample_order() -> Order:
    return Order(
        order_id="A-1",
        lines=[Line("x", 2), Line("y", 3)],
        color=Color.BLUE,
        priority=Priority.HIGH,
        note=None,
        dims=(1, 2, 3),
        meta={"gift": Line("g", 1)},
    )


# --- 1. strings passed raw must come back verbatim -------------------------------------------

JSONISH_STRINGS = ["1.50", "true", "null", "1e5", " 42", "[1,2]", '{"a":1}', "NaN"]


def test_typed_str_input_that_looks_like_json_reaches_str_handlers_verbatim(world):
    """A typed str is passed raw (SPEC §17); a handler annotated ``str`` must then receive exactly
    that text, not ``str(json.loads(text))`` ("1.50" -> "1.5", "true" -> "True", "null" -> "None")."""

    @world.runtime.register_activity_typed("Echo")
    def echo(ctx, text: str) -> str:
        return text

    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, text: str):
        back = yield ctx.schedule_activity_typed("Echo", text, result_type=str)
        return [text, back]

    for i, s in enumerate(JSONISH_STRINGS):
        world.client.start_orchestration_typed(f"i{i}", "O", s)
    got = {s: world.result(f"i{i}").output for i, s in enumerate(JSONISH_STRINGS)}
    assert got == {s: [s, s] for s in JSONISH_STRINGS}


def test_typed_str_event_and_kv_values_read_back_verbatim(world):
    """raise_event_typed + wait_for_event_typed(result_type=str), and a str KV value read with
    get_kv_value_typed(result_type=str), give back the text that was sent."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ev = yield ctx.wait_for_event_typed("answer", result_type=str)
        ctx.set_kv_value("price", "1.50")
        return ev

    world.client.start_orchestration("i", "O")
    world.run()
    world.client.raise_event_typed("i", "answer", "false")
    assert world.result("i").output == "false"
    assert world.client.get_kv_value("i", "price") == "1.50"
    assert world.client.get_kv_value_typed("i", "price", result_type=str) == "1.50"


def test_real_runtime_sqlite_typed_str_round_trip():
    """Same as above on the production threaded Runtime over SqliteProvider.in_memory()."""
    provider = SqliteProvider.in_memory()
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))

    @rt.register_activity_typed("Echo")
    def echo(ctx, text: str) -> str:
        return text

    @rt.register_orchestration_typed("O")
    def orch(ctx, text: str):
        return (yield ctx.schedule_activity_typed("Echo", text, result_type=str))

    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration_typed("price", "O", "1.50")
        assert client.wait_for_orchestration_typed("price", 10_000, result_type=str) == "1.50"
    finally:
        rt.shutdown(2_000)


# --- 2. str enums through the typed API -------------------------------------------------------


def test_str_enum_with_numeric_looking_values_round_trips_through_typed_activity(world):
    """A str enum (value "1") passed to a typed activity annotated with that enum arrives as the
    member; today it is sent raw, decoded as the int 1 and refused ("1 is not a valid Level")."""

    @world.runtime.register_activity_typed("Escalate")
    def escalate(ctx, level: Level) -> Level:
        assert level is Level.ONE
        return Level.TWO

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        r = yield ctx.schedule_activity_typed("Escalate", Level.ONE, result_type=Level)
        return r.value

    world.client.start_orchestration("i", "O")
    st = world.result("i")
    assert (st.status, st.output, st.error) == ("Completed", "2", None)


def test_encode_typed_returns_a_plain_string_payload_for_str_enums():
    """Payloads are opaque strings at the core (SPEC header): encode_typed of a str enum must
    give a plain ``str``, not the enum member itself (which then sits in history events)."""
    payload = codec.encode_typed(Color.RED, "input of activity 'Paint'")
    assert type(payload) is str
    assert codec.decode_typed(payload, Color) is Color.RED


# --- 3. a result that does not match result_type must fail, not be coerced --------------------


@pytest.mark.parametrize(
    "payload, result_type",
    [
        ({"approved": "false"}, Approval),  # bool("false") -> True
        ({"count": 2.9}, Count),  # int(2.9) -> 2
        ("abc", list[str]),  # list("abc") -> ['a', 'b', 'c']
        ({"n": 1}, list[int]),  # list(dict) -> its keys
    ],
    ids=["bool-from-string", "int-from-float", "list-from-string", "list-from-object"],
)
def test_result_type_mismatch_fails_at_the_yield_instead_of_coercing(world, payload, result_type):
    @world.runtime.register_activity("Produce")
    def produce(ctx, _):
        return payload

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            value = yield ctx.schedule_activity_typed("Produce", None, result_type=result_type)
        except SerializationError as exc:
            return ["SerializationError", str(exc)]
        return ["accepted", repr(value)]

    world.client.start_orchestration("i", "O")
    out = world.result("i").output
    assert out[0] == "SerializationError", f"mismatching payload {payload!r} was accepted as {out[1]}"


@pytest.mark.parametrize("payload, text", [({"id": "x"}, '{"id": "x"}'), (None, "null"), (1.50, "1.5")],
                         ids=["object", "null", "number"])
def test_result_type_str_reads_the_stored_text_as_the_reference_codec_does(world, payload, text):
    """``result_type=str`` is the one exception to "no coercion": the typed API passes strings
    raw, so a stored text that is not a JSON string is returned as that text (the reference's
    typed codec "decodes non-JSON text as a string"), never Python's ``str()`` of the value."""

    @world.runtime.register_activity("Produce")
    def produce(ctx, _):
        return payload

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity_typed("Produce", None, result_type=str))

    world.client.start_orchestration("i", "O")
    assert world.result("i").output == text


# --- 4. mismatch errors must name the right field --------------------------------------------


def test_mismatch_of_a_nested_record_given_a_scalar_points_at_that_field(world):
    """{"line": 5} for Holder(line: Line): the error must say $.line is not an object, not invent
    a missing int at a path that does not exist in the payload ($.line.qty)."""

    @world.runtime.register_activity("Produce")
    def produce(ctx, _):
        return {"line": 5}

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_typed("Produce", None, result_type=Holder)
        except SerializationError as exc:
            return str(exc)

    world.client.start_orchestration("i", "O")
    msg = world.result("i").output
    assert "$.line" in msg and "$.line.qty" not in msg and "$.line.sku" not in msg, msg


def test_mismatch_of_a_dataclass_given_a_scalar_says_an_object_was_expected(world):
    """attrs classes get "expected a JSON object, got int"; dataclasses (documented as supported)
    get "invalid value for type, expected int @ $.x", blaming a field of a payload that is 7."""

    @world.runtime.register_activity("Produce")
    def produce(ctx, _):
        return 7

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_typed("Produce", None, result_type=Point)
        except SerializationError as exc:
            return str(exc)

    world.client.start_orchestration("i", "O")
    msg = world.result("i").output
    assert "Point" in msg and "object" in msg.lower() and "$.x" not in msg, msg


def test_validator_failure_keeps_the_validators_message(world):
    """An attrs validator refusing the value: the error should carry what was wrong ('qty' must be
    > 0), not just "invalid value @ $"."""

    @world.runtime.register_activity("Produce")
    def produce(ctx, _):
        return {"qty": 0}

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_typed("Produce", None, result_type=Positive)
        except SerializationError as exc:
            return str(exc)

    world.client.start_orchestration("i", "O")
    msg = world.result("i").output
    assert "qty" in msg and "> 0" in msg, msg


# --- 5. the client's typed reads -----------------------------------------------------------


def test_wait_for_orchestration_typed_mismatch_raises_serialization_error_naming_fields(world):
    """Like every other typed read (get_kv_value_typed, results at a yield), a mismatching output
    raises SerializationError with the field paths, not a raw cattrs ClassValidationError
    ("While structuring Receipt (2 sub-exceptions)")."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return {"order_id": "A", "total": "lots"}

    world.client.start_orchestration("i", "O")
    world.run()
    with pytest.raises(SerializationError) as info:
        world.client.wait_for_orchestration_typed("i", result_type=Receipt)
    assert "$.total" in str(info.value) and "$.lines" in str(info.value)


def test_wait_for_orchestration_typed_none_output_into_record_is_a_clear_error(world):
    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return None

    world.client.start_orchestration("i", "O")
    world.run()
    assert world.client.wait_for_orchestration_typed("i", result_type=typing.Optional[Receipt]) is None
    with pytest.raises(SerializationError, match="Receipt"):
        world.client.wait_for_orchestration_typed("i", result_type=Receipt)


# --- 6. the input type of a typed handler -----------------------------------------------------


def test_typed_orchestration_with_local_class_and_string_annotations_structures_or_refuses(world):
    """With ``from __future__ import annotations`` (this module) an annotation naming a class
    defined inside a function cannot be resolved; registration silently drops the type and the
    typed handler receives a dict. Expected: the record, or a ConfigurationError at registration."""

    @attrs.define
    class LocalOrder:
        oid: str
        qty: int

    seen = {}

    def orch(ctx, order: LocalOrder):
        seen["type"] = type(order).__name__
        return order.qty

    try:
        world.runtime.register_orchestration_typed("O", orch)
    except ConfigurationError:
        return  # a clear refusal is acceptable
    world.client.start_orchestration_typed("i", "O", LocalOrder("x", 3))
    st = world.result("i")
    assert seen.get("type") == "LocalOrder", (seen, st)
    assert st.output == 3


class PricingService:
    """A class-based handler (dependency injection style)."""

    def __init__(self, factor: int) -> None:
        self.factor = factor

    def __call__(self, ctx, order: Order) -> Receipt:
        assert isinstance(order, Order), f"typed activity got {type(order).__name__}"
        return Receipt(order.order_id, self.factor * len(order.lines), len(order.lines))


def test_typed_activity_given_as_callable_object_structures_its_input(world):
    """register_activity_typed(name, obj) with obj.__call__(self, ctx, order: Order): the input
    type comes from __call__'s annotation; today get_type_hints(obj) fails and it is dropped."""
    world.runtime.register_activity_typed("Price", PricingService(10))

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        r = yield ctx.schedule_activity_typed("Price", _sample_order(), result_type=Receipt)
        return r.total

    world.client.start_orchestration("i", "O")
    st = world.result("i")
    assert (st.status, st.output) == ("Completed", 20), st.error


def test_typed_orchestration_annotated_none_accepts_none(world):
    """``def orch(ctx, _: None)`` started with no input: cattrs has no hook for NoneType, so the
    instance fails with StructureHandlerNotFoundError."""

    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, _: None) -> int:
        return 1

    world.client.start_orchestration_typed("i", "O", None)
    st = world.result("i")
    assert (st.status, st.output) == ("Completed", 1), st.error


# --- 7. retry + typed -----------------------------------------------------------------------


def test_retry_with_timeout_does_not_rerun_a_successful_activity_on_result_type_mismatch(world):
    """A result_type mismatch is not an activity failure: without a timeout the retry loop raises
    it after one run; with a timeout it re-runs the (successful) activity max_attempts times."""
    runs = []

    @world.runtime.register_activity("Charge")
    def charge(ctx, _):
        runs.append(1)
        return {"unexpected": True}

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_with_retry_typed(
                "Charge", None, {"max_attempts": 3, "timeout_ms": 60_000}, result_type=Receipt
            )
        except SerializationError:
            return "SerializationError"

    world.client.start_orchestration("i", "O")
    assert world.result("i").output == "SerializationError"
    assert len(runs) == 1, f"activity ran {len(runs)} times"


# --- 8. not JSON-serializable ---------------------------------------------------------------


def test_encoding_a_local_record_with_unresolvable_annotation_raises_serialization_error():
    """A record whose field annotation names another local class (string annotations): encoding
    it raises a bare NameError with no hint of where; expected a SerializationError."""

    @attrs.define
    class LocalLine:
        sku: str

    @attrs.define
    class LocalBasket:
        lines: list[LocalLine]

    with pytest.raises(SerializationError, match="input of activity 'Ship'"):
        codec.encode_typed(LocalBasket([LocalLine("a")]), "input of activity 'Ship'")


@pytest.mark.parametrize(
    "value, type_name",
    [
        (Stamped(datetime.datetime(2026, 1, 1)), "datetime"),
        (Tagged({"a"}), "set"),
        ({"raw": b"\x00\x01"}, "bytes"),
        ({"obj": object()}, "object"),
    ],
    ids=["datetime", "set", "bytes", "object"],
)
def test_non_json_payload_raises_serialization_error_naming_type_and_place(world, value, type_name):
    """Works: raised at the schedule call (catchable in the orchestration) and by the client."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            ctx.schedule_activity_typed("Ship", value)
        except SerializationError as exc:
            return str(exc)
        return "accepted"

    world.client.start_orchestration("i", "O")
    msg = world.result("i").output
    assert type_name in msg and "input of activity 'Ship'" in msg, msg
    with pytest.raises(SerializationError, match=type_name):
        world.client.start_orchestration_typed("c", "O", value)
    assert world.client.get_status("c").status == "NotFound"


def test_activity_returning_non_json_value_fails_with_clear_error(world):
    @world.runtime.register_activity_typed("Stamp")
    def stamp(ctx, n: int):
        return Stamped(datetime.datetime(2026, 1, 1))

    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_typed("Stamp", 1, result_type=Stamped)
        except TaskFailedError as exc:
            return str(exc)

    world.client.start_orchestration_typed("i", "O", None)
    msg = world.result("i").output
    assert "SerializationError" in msg and "datetime" in msg and "result of activity 'Stamp'" in msg


# --- 9. things that work: rich records end to end --------------------------------------------


def test_rich_records_round_trip_through_every_typed_channel(world):
    """Nested frozen/slotted/kw_only records with factories, str/int enums, Optional, tuple,
    dict[str, Line], list[...] results, dataclasses; activity, sub-orchestration, event, queue,
    continue-as-new, all_typed, race_typed; typed and untyped handlers mixed."""

    @world.runtime.register_activity_typed("Price")
    def price(ctx, order: Order) -> Receipt:
        return _receipt(ctx, order)

    @world.runtime.register_activity("PlainEcho")  # untyped activity called from typed code
    def plain_echo(ctx, value):
        assert isinstance(value, dict)
        return value

    @world.runtime.register_activity_typed("Split")
    def split(ctx, order: Order) -> list[Line]:
        return list(order.lines)

    @world.runtime.register_activity_typed("Mid")
    def mid(ctx, pts: list[Point]) -> Point:
        return Point(sum(p.x for p in pts), sum(p.y for p in pts))

    @world.runtime.register_orchestration_typed("Child")
    def child(ctx, order: Order) -> Receipt:
        return (yield ctx.schedule_activity_typed("Price", order, result_type=Receipt))

    @world.runtime.register_orchestration_typed("Main")
    def main(ctx, order: Order) -> list:
        assert isinstance(order, Order) and order.lines[0] == Line("x", 2) and order.dims == (1, 2, 3)
        assert order.meta["gift"] == Line("g", 1) and order.color is Color.BLUE and order.priority is Priority.HIGH
        echoed = yield ctx.schedule_activity_typed("PlainEcho", order, result_type=Order)
        lines = yield ctx.schedule_activity_typed("Split", order, result_type=list[Line])
        sub = yield ctx.schedule_sub_orchestration_typed("Child", order, result_type=Receipt)
        both = yield ctx.all_typed([
            ctx.schedule_activity_typed("Price", order, result_type=Receipt),
            ctx.schedule_activity_typed("Mid", [Point(1, 2), Point(3, 4)], result_type=Point),
        ])
        ev = yield ctx.wait_for_event_typed("extra", result_type=dict[str, Line])
        q = yield ctx.dequeue_event_typed("q", result_type=typing.Optional[Line])
        race = yield ctx.race_typed(ctx.wait_for_event_typed("late", result_type=Color), ctx.schedule_timer(1_000))
        return [echoed == order, lines == order.lines, sub, both[0] == sub, both[1], ev, q, race["index"]]

    order = _sample_order()
    world.client.start_orchestration_typed("m", "Main", order)
    world.run()
    world.client.raise_event_typed("m", "extra", {"k": Line("z", 9)})
    world.client.enqueue_event_typed("m", "q", None)
    st = world.result("m")
    assert st.status == "Completed", st.error
    assert st.output == [True, True, {"order_id": "A-1", "total": 5, "lines": 2}, True, {"x": 4, "y": 6},
                         {"k": {"sku": "z", "qty": 9}}, None, 1]
    assert events_of(world, "m", "OrchestrationStarted")[0]["data"]["input"]["color"] == "blue"


def test_untyped_orchestration_calls_typed_activity_and_child_with_plain_values(world):
    @world.runtime.register_activity_typed("Price")
    def price(ctx, order: Order) -> Receipt:
        return _receipt(ctx, order)

    @world.runtime.register_orchestration_typed("Child")
    def child(ctx, order: Order) -> Receipt:
        return (yield ctx.schedule_activity_typed("Price", order, result_type=Receipt))

    @world.runtime.register_orchestration("Plain")
    def plain(ctx, _):
        payload = {"order_id": "P", "lines": [{"sku": "a", "qty": 4}], "color": "red", "priority": 2}
        a = yield ctx.schedule_activity("Price", payload)
        b = yield ctx.schedule_sub_orchestration("Child", payload)
        return [a, b]

    world.client.start_orchestration("p", "Plain")
    r = {"order_id": "P", "total": 4, "lines": 1}
    assert world.result("p").output == [r, r]


def test_typed_continue_as_new_carries_records_and_enums(world):
    @world.runtime.register_orchestration_typed("Loop")
    def loop(ctx, order: Order) -> int:
        assert isinstance(order, Order) and isinstance(order.lines[0], Line)
        if len(order.lines) < 3:
            return ctx.continue_as_new_typed(attrs.evolve(order, lines=[*order.lines, Line("n", 1)], priority=Priority.HIGH))
        return sum(li.qty for li in order.lines) + int(order.priority)
        yield  # generator

    world.client.start_orchestration_typed("l", "Loop", Order(order_id="L", lines=[Line("a", 5)]))
    assert world.result("l").output == 5 + 1 + 1 + 2
    assert world.client.list_executions("l") == [1, 2, 3]


def test_typed_event_that_does_not_structure_is_catchable_and_queue_message_is_consumed(world):
    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        out = []
        try:
            yield ctx.wait_for_event_typed("e", result_type=Line)
        except SerializationError as exc:
            out.append("Line" in str(exc) and "$.qty" in str(exc))
        try:
            yield ctx.dequeue_event_typed("q", result_type=Line)
        except SerializationError as exc:
            out.append("expected a JSON object" in str(exc))
        nxt = yield ctx.dequeue_event_typed("q", result_type=Line)
        out.append(nxt == Line("ok", 1))
        return out

    world.client.start_orchestration("i", "O")
    world.run()
    world.client.raise_event_typed("i", "e", {"sku": "a"})
    world.client.enqueue_event_typed("i", "q", "garbage")
    world.client.enqueue_event_typed("i", "q", Line("ok", 1))
    assert world.result("i").output == [True, True, True]


def test_typed_records_and_enums_on_real_runtime_sqlite():
    provider = SqliteProvider.in_memory()
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))

    @rt.register_activity_typed("Price")
    def price(ctx, order: Order) -> Receipt:
        return _receipt(ctx, order)

    @rt.register_orchestration_typed("O")
    def orch(ctx, order: Order) -> Receipt:
        r = yield ctx.schedule_activity_typed("Price", order, result_type=Receipt)
        prio = yield ctx.wait_for_event_typed("prio", result_type=Priority)
        ctx.set_kv_value("last", Line("k", int(prio)))
        return r

    rt.start()
    try:
        client = Client(provider)
        client.start_orchestration_typed("o", "O", _sample_order())
        deadline = time.monotonic() + 5
        while not client.read_execution_history("o", 1) or "ActivityCompleted" not in [
            e["kind"] for e in client.read_execution_history("o", 1)
        ]:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.raise_event_typed("o", "prio", Priority.HIGH)
        assert client.wait_for_orchestration_typed("o", 10_000, result_type=Receipt) == Receipt("A-1", 5, 2)
        assert client.get_kv_value_typed("o", "last", result_type=Line) == Line("k", 2)
        assert client.wait_for_kv_value_typed("o", "last", 1_000, result_type=Line) == Line("k", 2)
    finally:
        rt.shutdown(2_000)


# --- 10. payload size ------------------------------------------------------------------------


def test_payload_limit_exact_and_one_over(world):
    overhead = len('{"data": ""}')

    @world.runtime.register_activity_typed("Size")
    def size(ctx, blob: Blob) -> int:
        return len(blob.data)

    @world.runtime.register_activity_typed("Big")
    def big(ctx, n: int) -> Blob:
        return Blob("x" * n)

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        out = [(yield ctx.schedule_activity_typed("Size", Blob("y" * (MAX_PAYLOAD_BYTES - overhead)), result_type=int))]
        try:
            ctx.schedule_activity_typed("Size", Blob("é" * ((MAX_PAYLOAD_BYTES - overhead) // 2 + 1)))
        except PayloadTooLargeError as exc:
            out.append("payload limit" in str(exc))
        r = yield ctx.schedule_activity_typed("Big", MAX_PAYLOAD_BYTES - overhead, result_type=Blob)
        out.append(len(r.data))
        try:
            yield ctx.schedule_activity_typed("Big", MAX_PAYLOAD_BYTES - overhead + 1, result_type=Blob)
        except TaskFailedError as exc:
            out.append("PayloadTooLargeError" in str(exc))
        return out

    world.client.start_orchestration("i", "O")
    assert world.result("i").output == [MAX_PAYLOAD_BYTES - overhead, True, MAX_PAYLOAD_BYTES - overhead, True]


# --- 11. evolving a type between deployments --------------------------------------------------


def _deploy_v1_and_leave_waiting(world):
    @world.runtime.register_activity_typed("Pick")
    def pick(ctx, n: int) -> ItemV1:
        return ItemV1("s", n)

    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, item: ItemV1):
        r = yield ctx.schedule_activity_typed("Pick", item.qty, result_type=ItemV1)
        yield ctx.wait_for_event("go")
        return r.qty

    world.client.start_orchestration_typed("i", "O", ItemV1("in", 3))
    world.run()
    assert world.client.get_status("i").status == "Running"


def _deploy_v2(world, new_type):
    v2 = SecondRuntime(world)

    @v2.runtime.register_activity_typed("Pick")
    def pick(ctx, n: int):
        raise AssertionError("already completed in history")

    def orch(ctx, item):
        r = yield ctx.schedule_activity_typed("Pick", 3, result_type=new_type)
        yield ctx.wait_for_event("go")
        return [type(item).__name__, type(r).__name__]

    orch.__annotations__ = {"item": new_type}
    v2.runtime.register_orchestration_typed("O", orch)
    v2.client.raise_event("i", "go", None)
    v2.run()
    return v2.result("i")


@pytest.mark.parametrize("new_type", [ItemV2Added, ItemV2Removed])
def test_compatible_type_change_replays_recorded_history(world, new_type):
    _deploy_v1_and_leave_waiting(world)
    st = _deploy_v2(world, new_type)
    assert (st.status, st.output) == ("Completed", [new_type.__name__, new_type.__name__]), st.error


def test_renamed_field_fails_replay_with_a_clear_error(world):
    _deploy_v1_and_leave_waiting(world)
    st = _deploy_v2(world, ItemV2Renamed)
    assert st.status == "Failed"
    assert "SerializationError" in st.error and "ItemV2Renamed" in st.error and "$.quantity" in st.error


def test_failed_typed_run_raises_orchestration_failed_error(world):
    @world.runtime.register_orchestration_typed("O")
    def orch(ctx, order: Order):
        return order.order_id

    world.client.start_orchestration_typed("i", "O", {"lines": []})
    with pytest.raises(OrchestrationFailedError, match="order_id"):
        world.client.wait_for_orchestration_typed("i", result_type=str)
