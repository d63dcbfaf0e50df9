"""duroxide_sim's public API and typed I/O against duroxide-python (``duroxide`` 0.2.2): a probe
written in session 9, kept.

Each test states the behaviour a user porting a duroxide-python workflow module (or using the
``*_typed`` attrs API) relies on; each failed before its fix (client ``*_typed`` calls passing
strings raw, management errors that were not ``RuntimeError``, ``get_instance_tree`` of an
unknown id, orchestrations registered through a decorator or a callable object, retry tasks
without ``with_tag``, unions of scalars in records, a ``race_typed`` winner whose result does not
fit its type, huge ints, non-string KV keys, text of many ``[``). The peer is not needed to run
this file: what it did was observed once with its own interpreter (``bench/.peer/bin/python``,
its ``SqliteProvider`` on a temp file) and is recorded below as constants, with the peer source
line that explains it where there is one.
"""

from __future__ import annotations

import functools
import os
import typing

import attrs
import pytest

from duroxide_sim import (
    Client,
    Runtime,
    RuntimeOptions,
    SerializationError,
    SqliteProvider,
    TagFilter,
)
from duroxide_sim.core import codec
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

from .conftest import make_world

# ─── helpers ────────────────────────────────────────────────────────────────────────────────────


class _SqliteWorld:
    """The production Runtime and Client over a SQLite file, driven sequentially on a SimClock."""

    def __init__(self, path: str, options: RuntimeOptions | None = None) -> None:
        self.clock = SimClock()
        self.provider = SqliteProvider.open(path)
        self.runtime = Runtime(self.provider, options or RuntimeOptions(), clock=self.clock, ids=SequentialIds())
        self.driver = SequentialDriver(self.runtime, self.clock)
        self.client = Client(self.provider, clock=self.clock, sleep=self.driver.sleep)

    def run(self) -> None:
        self.driver.run_until_quiet()

    def result(self, instance: str):
        return self.client.wait_for_orchestration(instance, 10**12)


@pytest.fixture
def sqlite_world(tmp_path):
    return _SqliteWorld(os.path.join(tmp_path, "probe.db"))


# ─── 1. Client *_typed send strings JSON-encoded (they are aliases of the plain calls) ──────────

#: Observed on duroxide 0.2.2: ``client.raise_event_typed(id, e, s)`` /
#: ``client.enqueue_event_typed(id, q, s)`` with a string ``s``, received by a plain
#: ``ctx.wait_for_event`` / ``ctx.dequeue_event`` (and by the ``_typed`` waits too): the string
#: itself. duroxide/__init__.py: ``raise_event_typed`` calls ``self.raise_event(...)`` which
#: ``json.dumps``'s the data; ``start_orchestration_typed`` likewise calls
#: ``self.start_orchestration``. SPEC §17 (Client): "``*_typed`` aliases for start/raise/enqueue".
#: (Only the *context's* ``_typed`` scheduling calls pass a string raw.)
PEER_CLIENT_TYPED_STRINGS = {"123": "123", "null": "null", '{"x": 1}': '{"x": 1}', '"q"': '"q"', "abc": "abc"}


def test_client_typed_start_raise_enqueue_json_encode_strings_like_peer(world):
    sent = list(PEER_CLIENT_TYPED_STRINGS)

    @world.runtime.register_orchestration("Recv")
    def recv(ctx, inp):
        ev = yield ctx.wait_for_event("e")
        msg = yield ctx.dequeue_event("q")
        return {"input": inp, "event": ev, "queued": msg}

    for i, s in enumerate(sent):
        world.client.start_orchestration_typed(f"t{i}", "Recv", s)
    world.run()
    for i, s in enumerate(sent):
        world.client.raise_event_typed(f"t{i}", "e", s)
        world.client.enqueue_event_typed(f"t{i}", "q", s)
    world.run()
    got = {s: world.result(f"t{i}").output for i, s in enumerate(sent)}
    want = {s: {"input": PEER_CLIENT_TYPED_STRINGS[s], "event": PEER_CLIENT_TYPED_STRINGS[s],
                "queued": PEER_CLIENT_TYPED_STRINGS[s]} for s in sent}
    assert got == want


# ─── 2. Management "not found" / "child" errors are RuntimeErrors, as on the peer ───────────────

#: Observed on duroxide 0.2.2 (exception class, message):
PEER_MANAGEMENT_ERRORS = {
    "get_instance_info('nope')": ("RuntimeError", "get_instance_info: Instance nope not found"),
    "get_execution_info('nope', 1)": ("RuntimeError", "get_execution_info: Execution 1 not found for instance nope"),
    "delete_instance('nope')": ("RuntimeError", "Instance nope not found"),
    "prune_executions('nope')": ("RuntimeError", "prune_executions: Instance nope not found"),
    "delete_instance('kid')": ("RuntimeError", "Cannot delete sub-orchestration kid directly. Delete the root "
                                               "orchestration instead."),
    "delete_instance('kid', True)": ("RuntimeError", "Cannot delete sub-orchestration kid directly. Delete the root "
                                                     "orchestration instead."),
}


def test_management_errors_are_runtime_errors_like_peer(world):
    """SPEC §17: "Other failures ... raise RuntimeError"; errors.py promises that code written
    against duroxide-python's plain RuntimeError keeps working. ``except RuntimeError`` around a
    management call must catch what ours raises."""

    @world.runtime.register_orchestration("Kid")
    def kid(ctx, _):
        return (yield ctx.wait_for_event("go"))

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Kid", "kid", None))

    world.client.start_orchestration("par", "Parent", None)
    world.run()
    c = world.client
    calls = {
        "get_instance_info('nope')": lambda: c.get_instance_info("nope"),
        "get_execution_info('nope', 1)": lambda: c.get_execution_info("nope", 1),
        "delete_instance('nope')": lambda: c.delete_instance("nope"),
        "prune_executions('nope')": lambda: c.prune_executions("nope"),
        "delete_instance('kid')": lambda: c.delete_instance("kid"),
        "delete_instance('kid', True)": lambda: c.delete_instance("kid", True),
    }
    not_runtime_errors = {}
    for label, call in calls.items():
        try:
            call()
        except RuntimeError:
            continue
        except Exception as exc:  # noqa: BLE001 - the finding
            not_runtime_errors[label] = f"{type(exc).__name__}{tuple(k.__name__ for k in type(exc).__mro__[1:-2])}: {exc}"
        else:
            not_runtime_errors[label] = "no error"
    assert not_runtime_errors == {}, (not_runtime_errors, PEER_MANAGEMENT_ERRORS)


#: Observed on duroxide 0.2.2: ``get_instance_tree("nope")`` returns an InstanceTree with
#: ``root_id == "nope"``, ``all_ids == ["nope"]``, ``size == 1`` (no error). SPEC §14 names an
#: error for an unknown id only for ``get_parent_id``.
PEER_TREE_OF_UNKNOWN = ("nope", ["nope"], 1)


def test_instance_tree_of_unknown_instance_like_peer(world):
    tree = world.client.get_instance_tree("nope")
    assert (tree.root_id, list(tree.all_ids), tree.size) == PEER_TREE_OF_UNKNOWN


# ─── 3. Orchestrations registered through a wrapper still run (the peer looks at the result) ────

#: Observed on duroxide 0.2.2: all four complete with output 7. driver.py ``create_generator``
#: calls ``fn(ctx, input)`` and treats the result as a generator when
#: ``isinstance(gen, types.GeneratorType)`` - what kind of callable ``fn`` is does not matter.
PEER_WRAPPED = {"Wrapped": ("Completed", 7), "CallableGen": ("Completed", 7), "Lambda": ("Completed", 7),
                "Partial": ("Completed", 7)}


def _logged(fn):
    """A typical decorator (logging, metrics) put on orchestration functions."""

    @functools.wraps(fn)
    def wrapper(ctx, x):
        return fn(ctx, x)

    return wrapper


def _gen_orch(ctx, x):
    r = yield ctx.schedule_activity("Echo", x)
    return r


async def _async_orch(ctx, x):
    return await ctx.schedule_activity("Echo", x)


class _GenOrch:
    """A class-based orchestration (dependency injection style)."""

    def __call__(self, ctx, x):
        r = yield ctx.schedule_activity("Echo", x)
        return r


class _AsyncOrch:
    async def __call__(self, ctx, x):
        return await ctx.schedule_activity("Echo", x)


def test_wrapped_and_callable_object_orchestrations_run_like_peer(world):
    @world.runtime.register_activity("Echo")
    def echo(ctx, x):
        return x

    fns = {
        "Wrapped": _logged(_gen_orch),
        "CallableGen": _GenOrch(),
        "Lambda": lambda ctx, x: _gen_orch(ctx, x),
        "Partial": functools.partial(_gen_orch),
        # the async def counterparts (async def orchestrations are ours only; parity with generators)
        "WrappedAsync": _logged(_async_orch),
        "CallableAsync": _AsyncOrch(),
    }
    for name, fn in fns.items():
        world.runtime.register_orchestration(name, fn)
        world.client.start_orchestration(name, name, 7)
    world.run()
    got = {}
    for name in fns:
        st = world.result(name)
        got[name] = (st.status, st.output) if st.status == "Completed" else (st.status, st.error)
    want = dict(PEER_WRAPPED, WrappedAsync=("Completed", 7), CallableAsync=("Completed", 7))
    assert got == want


# ─── 4. Retry tasks take .with_tag like every other activity task ───────────────────────────────

#: Observed on duroxide 0.2.2 (worker filter ``TagFilter.default_and(["gpu"])``, the activity
#: returns ``[ctx.tag(), ctx.session_id]``): the retry forms return ScheduledTask and
#: ``.with_tag("gpu")`` routes every attempt with the tag.
PEER_RETRY_TAGS = {"retry": ["gpu", None], "retry_session": ["gpu", "s1"], "retry_typed": ["gpu", None],
                   "retry_session_typed": ["gpu", "s1"]}


def test_retry_tasks_take_with_tag_like_peer():
    w = make_world(RuntimeOptions(worker_tag_filter=TagFilter.default_and(["gpu"])))

    @w.runtime.register_activity("Tag")
    def tag(ctx, _):
        return [ctx.tag(), ctx.session_id]

    @w.runtime.register_orchestration("O")
    def orch(ctx, _):
        out = {}
        makers = {
            "retry": lambda: ctx.schedule_activity_with_retry("Tag", None, {"max_attempts": 2}),
            "retry_session": lambda: ctx.schedule_activity_with_retry_on_session("Tag", None, {"max_attempts": 2}, "s1"),
            "retry_typed": lambda: ctx.schedule_activity_with_retry_typed("Tag", None, {"max_attempts": 2}),
            "retry_session_typed": lambda: ctx.schedule_activity_with_retry_on_session_typed(
                "Tag", None, {"max_attempts": 2}, "s1"),
        }
        for label, make in makers.items():
            try:
                task = make().with_tag("gpu")
            except Exception as exc:  # noqa: BLE001
                out[label] = f"with_tag raised {type(exc).__name__}: {exc}"
                continue
            out[label] = yield task
        return out

    w.client.start_orchestration("i", "O")
    w.run()
    assert w.result("i").output == PEER_RETRY_TAGS


# ─── 5. Typed records: unions of scalars round-trip ─────────────────────────────────────────────


@attrs.frozen
class Ref:
    """An id that is a number for some sources and a string for others; an optional score."""

    id: int | str
    score: typing.Union[int, float, None] = None


def test_union_of_scalars_round_trips_through_the_codec():
    """What ``encode_typed`` writes, ``decode_typed`` must read back (the README's promise:
    attrs classes round-tripping through cattrs; ``check_type_round_trips`` asserts exactly this)."""
    problems = {}
    for value in (Ref(7), Ref("A-7", 1.5), Ref(8, 2)):
        text = codec.encode_typed(value, "probe")
        try:
            back = codec.decode_typed(text, Ref, "probe")
        except SerializationError as exc:
            problems[text] = str(exc)
            continue
        if back != value:
            problems[text] = repr(back)
    assert problems == {}


def test_union_record_returned_by_a_typed_activity_reaches_the_orchestration(sqlite_world):
    w = sqlite_world

    @w.runtime.register_activity_typed("Lookup")
    def lookup(ctx, key: str) -> Ref:
        return Ref(int(key)) if key.isdigit() else Ref(key)

    @w.runtime.register_orchestration_typed("O")
    def orch(ctx, keys: list[str]):
        refs = []
        for k in keys:
            refs.append((yield ctx.schedule_activity_typed("Lookup", k, result_type=Ref)))
        return [[type(r).__name__, r.id] for r in refs]

    w.client.start_orchestration_typed("i", "O", ["42", "abc"])
    w.run()
    st = w.result("i")
    assert (st.status, st.output, st.error) == ("Completed", [["Ref", 42], ["Ref", "abc"]], None)


# ─── 6. A typed result that does not fit: raised at the yield, also when it wins a race ─────────


@attrs.frozen
class Order:
    oid: str
    qty: int


@pytest.mark.parametrize("style", ["generator", "async"])
def test_race_typed_result_type_mismatch_raises_instead_of_returning_the_error_text(world, style):
    """A plain ``yield ctx.schedule_activity_typed(..., result_type=Order)`` whose result does not
    fit raises SerializationError at the yield (tests/runtime/test_typed.py). Won by a race, the
    same mismatch came back as ``{"index": 0, "value": "<error text>"}``: the activity's result is
    lost and the code gets a str where it expects an Order, with nothing flagging it (SPEC §17's
    ⚠ is about a *failing* winner; this activity succeeded)."""

    @world.runtime.register_activity("Bad")
    def bad(ctx, _):
        return {"oid": 1}

    def gen(ctx, _):
        try:
            r = yield ctx.race_typed(ctx.schedule_activity_typed("Bad", None, result_type=Order),
                                     ctx.schedule_timer(60_000))
        except SerializationError as exc:
            return ["raised", "Order" in str(exc)]
        return ["returned", r["index"], type(r["value"]).__name__]

    async def coro(ctx, _):
        try:
            r = await ctx.race_typed(ctx.schedule_activity_typed("Bad", None, result_type=Order),
                                     ctx.schedule_timer(60_000))
        except SerializationError as exc:
            return ["raised", "Order" in str(exc)]
        return ["returned", r["index"], type(r["value"]).__name__]

    world.runtime.register_orchestration("O", gen if style == "generator" else coro)
    world.client.start_orchestration("i", "O")
    world.run()
    assert world.result("i").output == ["raised", True]


# ─── 7. Bad payloads: one error class, naming where the value was going ─────────────────────────


def test_huge_int_payload_raises_serialization_error_naming_where(world):
    """``[10**5000]`` and ``{"n": 10**5000}`` give SerializationError("input of activity 'X' cannot
    be encoded as JSON: Exceeds the limit (4300 digits) ..."); the bare ``10**5000`` gave a plain
    ValueError without the place, which ``except SerializationError`` (TypeError) misses."""
    huge = 10**5000
    with pytest.raises(SerializationError, match="input of activity 'X'"):
        codec.encode([huge], "input of activity 'X'")  # the nested case: works
    with pytest.raises(SerializationError, match="input of activity 'X'"):
        codec.encode(huge, "input of activity 'X'")

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            ctx.schedule_activity("X", huge)
        except SerializationError as exc:
            return ["SerializationError", "input of activity 'X'" in str(exc)]
        except Exception as exc:  # noqa: BLE001
            return [type(exc).__name__, str(exc)[:60]]
        return "accepted"
        yield  # a generator

    world.client.start_orchestration("i", "O")
    world.run()
    assert world.result("i").output == ["SerializationError", True]
    with pytest.raises(SerializationError, match="input of orchestration 'O'"):
        world.client.start_orchestration("c", "O", huge)


# ─── 8. KV keys: the orchestration's view and the stored state never diverge ────────────────────

#: duroxide 0.2.2 (context.py): ``set_kv_value``/``get_kv_value``/``clear_kv_value`` pass
#: ``str(key)`` to the core, so ``clear_kv_value(1)`` clears key "1" and ``get_kv_value(1)``
#: reads it. Observed (after ``set_kv_value("1", "one")``; status, output, client read of "1"):
PEER_KV_NON_STR_KEYS = {
    "int-key": ["Completed", {"get_int": "one", "clear": "accepted", "sees": None}, None, None],
    "none-key": ["Completed", {"get_int": "one", "clear": "accepted", "sees": "one"}, None, "one"],
}
#: Ours validates keys in ``set_kv_value`` only.


def test_clear_kv_value_with_a_non_str_key_is_refused_or_applied_consistently(sqlite_world):
    """On SQLite ``clear_kv_value(1)`` after ``set_kv_value("1", "one")`` left the orchestration
    seeing "one" while the store (TEXT affinity turns 1 into '1') had cleared it: client reads
    None. ``clear_kv_value(None)`` was accepted and the turn's ack then failed the instance with
    "infrastructure:ack_orchestration_item: ... NOT NULL constraint failed: kv_delta.key" (on the
    in-memory provider both were silently ignored). Either refuse the key at the call (TypeError,
    as ``set_kv_value`` does) or apply it as the peer does; never let the two views diverge."""
    w = sqlite_world

    @w.runtime.register_orchestration("O")
    def orch(ctx, key):
        ctx.set_kv_value("1", "one")
        try:
            ctx.clear_kv_value(key)
            outcome = "accepted"
        except TypeError:
            outcome = "refused"
        yield ctx.schedule_timer(1)
        return {"outcome": outcome, "sees": ctx.get_kv_value("1")}

    w.client.start_orchestration("int-key", "O", 1)
    w.client.start_orchestration("none-key", "O", None)
    w.run()
    report = {}
    for inst in ("int-key", "none-key"):
        st = w.result(inst)
        report[inst] = (st.status, st.error, st.output, w.client.get_kv_value(inst, "1"))
    for _inst, (status, _error, output, stored) in report.items():
        assert status == "Completed", report
        assert output["sees"] == stored, report


def test_get_kv_value_with_a_non_str_key_is_refused_or_reads_the_key(world):
    """``get_kv_value(1)`` after ``set_kv_value("1", "one")``: the peer reads "one" (str(key));
    ours returned None silently, as if the key were absent."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value("1", "one")
        try:
            return ["read", ctx.get_kv_value(1)]
        except TypeError:
            return ["refused"]
        yield  # a generator

    world.client.start_orchestration("i", "O")
    world.run()
    assert world.result("i").output in (["read", "one"], ["refused"])


def test_text_of_many_open_brackets_is_a_string_not_a_recursion_error(world):
    """The typed API passes a str raw (SPEC §17); decoding is "JSON when it parses, else the raw
    string" (codec.decode). A text starting with thousands of "[" does not parse, but
    ``json.loads`` hits the recursion limit first and ``decode`` let the RecursionError out: a
    typed activity annotated ``str`` failed with "RecursionError: maximum recursion depth exceeded
    while decoding a JSON array", and afterwards ``read_execution_history`` of the instance raised
    RecursionError too (runtime/records.py only catches ValueError), so the history could not be
    read at all."""
    text = "[" * 5000
    assert codec.decode(text) == text
    assert codec.decode_typed(text, str, "probe") == text

    @world.runtime.register_activity_typed("Length")
    def length(ctx, s: str) -> int:
        return len(s)

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity_typed("Length", text, result_type=int))

    world.client.start_orchestration("i", "O")
    world.run()
    st = world.result("i")
    assert (st.status, st.output) == ("Completed", 5000), st.error
    kinds = [e.kind for e in world.client.read_execution_history("i", 1)]
    assert kinds[:2] == ["OrchestrationStarted", "ActivityScheduled"]


def test_kv_keys_are_checked_the_same_way_everywhere(world):
    """README: KV keys must be strings in every KV call (the empty string included, as
    duroxide-python takes it). The context's ``get_kv_value_from_instance`` used to accept any
    key."""
    from duroxide_sim import InvalidInputError

    for read in (lambda: world.client.get_kv_value("i", 1), lambda: world.client.get_kv_value_typed("i", None),
                 lambda: world.client.wait_for_kv_value("i", b"k", 1)):
        with pytest.raises(InvalidInputError, match="KV key must be a string"):
            read()
    assert world.client.get_kv_value("i", "") is None  # an empty key is a key (nothing stored under it)

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.get_kv_value_from_instance("other", 1)
        except TypeError as exc:
            return str(exc)
        return "accepted"

    world.client.start_orchestration("i", "O")
    world.run()
    assert "KV key name must be a non-empty string" in world.result("i").output
