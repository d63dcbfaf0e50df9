"""Journeys through errors, poison and limits as a demanding user meets them (SPEC §10, §3.11,
§3.12, §17 error shapes), checked against what duroxide 0.2.2 (the peer, Rust core + Python SDK)
was observed to do on the same workflow (``peer-observed``: the text it printed).

Each test says what the user does and what must hold. Production tests use the real Runtime and
Client (threads, wall clock, kept short); the others the deterministic ``world`` fixture, and a
few the simulator (``run_and_check`` with faults).

Found by this file and fixed (each test failed before): an activity raising KeyboardInterrupt on
a worker thread escaped the step (never acked, the instance hung; the peer fails the activity);
an exception whose ``__str__`` raises crashed the worker step (production hung, the simulator's
driver raised; now ``<exception str() failed>`` as the peer); a 16 MiB exception message was
stored whole (now cut in the middle beyond 1 Mi characters); a wrongly typed client id or name
was an InvalidInputError but not a TypeError (the peer raises TypeError): now
InvalidInputTypeError, both.
"""

from __future__ import annotations

import json

import pytest

from duroxide_sim import (
    MAX_PAYLOAD_BYTES,
    Client,
    InMemoryProvider,
    InvalidInputError,
    Runtime,
    RuntimeOptions,
    SerializationError,
    SqliteProvider,
)
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start
from duroxide_sim.sim.checkers import run_and_check
from tests.conftest import make_world

from ._helpers import events_of, kinds


# ─── helpers ─────────────────────────────────────────────────────────────────


class _BadStr(Exception):
    """An exception whose ``str()`` itself raises (a buggy third-party error class)."""

    def __str__(self) -> str:
        raise RuntimeError("str exploded")


class _NoMsg(Exception):
    pass


class _MyBase(BaseException):
    pass


def _raiser(exc):
    def act(ctx, _):
        raise exc

    return act


def _catching(ctx, name):
    """Call activity ``name``; report what the orchestration code saw."""
    try:
        r = yield ctx.schedule_activity(name, None)
        return {"ok": r}
    except Exception as e:  # noqa: BLE001 - what a user writes
        return {"err": str(e), "args": list(e.args), "is_exception": isinstance(e, Exception)}


def _plain(ctx, name):
    r = yield ctx.schedule_activity(name, None)
    return r


@pytest.fixture
def prod():
    """A production Runtime + Client on SqliteProvider.in_memory() (real threads), as the peer runs."""
    made = []

    def build(provider=None, **opts):
        p = provider or SqliteProvider.in_memory()
        defaults = dict(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=1_000)
        defaults.update(opts)
        rt = Runtime(p, RuntimeOptions(**defaults))
        made.append(rt)
        return rt, Client(p)

    yield build
    for rt in made:
        try:
            rt.shutdown(1_000)
        except Exception:  # noqa: BLE001 - teardown
            pass


# ─── activity failures: the text the orchestration sees and the status shows ─────────────────


@pytest.mark.parametrize(
    "exc, text",
    [
        (ValueError("bad value"), "Activity 'A' call failed: ValueError: bad value"),
        (KeyError("missing"), "Activity 'A' call failed: KeyError: 'missing'"),
        (ZeroDivisionError("division by zero"), "Activity 'A' call failed: ZeroDivisionError: division by zero"),
        (_NoMsg(), "Activity 'A' call failed: _NoMsg: "),
        (RuntimeError("line1\nline2"), "Activity 'A' call failed: RuntimeError: line1\nline2"),
    ],
    ids=["ValueError", "KeyError", "ZeroDivisionError", "no-message", "multiline"],
)
def test_each_common_activity_exception_reaches_the_code_as_the_peer_words_it(world, exc, text):
    """The user's activity raises a common exception; the orchestration catches it with
    ``except Exception``. ``str(e)`` and ``e.args`` are exactly the peer's (SPEC §17; peer-observed:
    ``Activity 'RaiseKey' call failed: KeyError: 'missing'``, ``... NoMsg: `` with the trailing
    space, multi-line messages kept verbatim, args == [text])."""
    world.runtime.register_activity("A", _raiser(exc))
    world.runtime.register_orchestration("C", _catching)
    world.client.start_orchestration("i1", "C", "A")
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output == {"err": text, "args": [text], "is_exception": True}


def test_an_uncaught_activity_failure_fails_the_instance_with_the_traceback_ending_in_the_peer_line(world):
    """Not catching the failure fails the instance; the status error is a Python traceback
    whose last line is ``Exception: Activity 'A' call failed: ValueError: bad value`` (peer-observed
    exactly that last line) and whose first line is ``Traceback (most recent call last):``."""
    world.runtime.register_activity("A", _raiser(ValueError("bad value")))
    world.runtime.register_orchestration("P", _plain)
    world.client.start_orchestration("i1", "P", "A")
    st = world.result("i1")
    assert st.status == "Failed" and st.output is None
    lines = st.error.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert lines[-1] == "Exception: Activity 'A' call failed: ValueError: bad value"
    assert kinds(world, "i1")[-1] == "OrchestrationFailed"
    failed = events_of(world, "i1", "ActivityFailed")
    assert len(failed) == 1


def test_the_exception_seen_by_orchestration_code_carries_message_and_details(world):
    """The user inspects the caught exception: it is an ``Exception`` (peer: plain ``Exception``),
    here a ``TaskFailedError`` whose ``message`` equals ``str(e)`` and whose ``details`` say the
    failure is an application ActivityFailed (SPEC §2.3)."""
    world.runtime.register_activity("A", _raiser(ValueError("nope")))

    @world.runtime.register_orchestration("C")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("A", None)
        except Exception as e:  # noqa: BLE001
            d = e.details
            return {"cls": type(e).__name__, "message": e.message, "str": str(e),
                    "category": d.category, "display": d.display_message()}

    world.client.start_orchestration("i1", "C")
    out = world.result("i1").output
    text = "Activity 'A' call failed: ValueError: nope"
    assert out == {"cls": "TaskFailedError", "message": text, "str": text, "category": "application", "display": text}


@pytest.mark.parametrize("exc, name", [(GeneratorExit("genexit"), "GeneratorExit"), (_MyBase("mybase"), "_MyBase"),
                                       (SystemExit(3), "SystemExit")], ids=["GeneratorExit", "BaseException-subclass", "SystemExit"])
def test_base_exceptions_in_an_activity_fail_the_activity_and_the_worker_lives_on(prod, exc, name):
    """Production: an activity raises a BaseException that is not an Exception. The activity
    fails (peer-observed: ``Activity 'GE' call failed: GeneratorExit: genexit``, ``... MyBase:
    mybase``, ``... SystemExit: 3``, within 20 ms) and the same runtime goes on to run the next
    instance."""
    rt, c = prod()
    rt.register_activity("B", _raiser(exc))
    rt.register_activity("Ok", lambda ctx, _: "fine")
    rt.register_orchestration("C", _catching)
    rt.start()
    c.start_orchestration("bad", "C", "B")
    st = c.wait_for_orchestration("bad", 2_000)
    assert st.status == "Completed"
    assert st.output["err"] == f"Activity 'B' call failed: {name}: {exc}"
    c.start_orchestration("after", "C", "Ok")
    assert c.wait_for_orchestration("after", 2_000).output == {"ok": "fine"}


def test_keyboard_interrupt_raised_by_activity_code_fails_the_activity_like_the_peer(prod):
    """Production: activity code raises ``KeyboardInterrupt`` itself (a library that converts a
    cancel into it; not a real Ctrl-C, which only reaches the main thread). Peer-observed: the
    activity fails at once with ``Activity 'KB' call failed: KeyboardInterrupt: ctrl-c in
    activity`` and the orchestration's ``except`` sees it. It must not leave the work item
    un-acked (instance stuck Running until the lock expires, then the activity re-run)."""
    rt, c = prod()
    rt.register_activity("KB", _raiser(KeyboardInterrupt("ctrl-c in activity")))
    rt.register_orchestration("C", _catching)
    rt.start()
    c.start_orchestration("kb", "C", "KB")
    st = c.wait_for_orchestration("kb", 2_000)
    assert st.status == "Completed"
    assert st.output["err"] == "Activity 'KB' call failed: KeyboardInterrupt: ctrl-c in activity"


def test_an_activity_exception_whose_str_raises_fails_the_activity_in_production(prod):
    """Production: an activity raises an exception whose ``__str__`` itself raises. Peer-observed:
    ``Activity 'BadStr' call failed: BadStr: <exception str() failed>`` within 20 ms (Python's
    own placeholder, as the orchestration path here already writes for such an exception). The
    dispatcher must not crash on formatting the error and leave the instance Running."""
    rt, c = prod()
    rt.register_activity("BadStr", _raiser(_BadStr()))
    rt.register_orchestration("C", _catching)
    rt.start()
    c.start_orchestration("b", "C", "BadStr")
    st = c.wait_for_orchestration("b", 2_000)
    assert st.status == "Completed"
    assert st.output["err"] == "Activity 'BadStr' call failed: _BadStr: <exception str() failed>"


def test_an_activity_exception_whose_str_raises_does_not_crash_the_simulated_driver(world):
    """Deterministic world: the same buggy exception class. ``world.run()`` must not raise
    (it raised ``RuntimeError: str exploded`` out of the driver) and the instance completes with
    the activity failure the code caught (peer-observed text as above)."""
    world.runtime.register_activity("BadStr", _raiser(_BadStr()))
    world.runtime.register_orchestration("C", _catching)
    world.client.start_orchestration("b", "C", "BadStr")
    world.run()
    st = world.client.get_status("b")
    assert st.status == "Completed"
    assert st.output["err"] == "Activity 'BadStr' call failed: _BadStr: <exception str() failed>"


def test_an_orchestration_exception_whose_str_raises_fails_with_pythons_placeholder(world):
    """The orchestration itself raises the buggy exception: the instance fails and the last
    line ends ``_BadStr: <exception str() failed>`` (what Python's traceback module prints, with
    the class's module path in front)."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(1)
        raise _BadStr()

    world.client.start_orchestration("o", "O")
    st = world.result("o")
    assert st.status == "Failed"
    assert st.error.splitlines()[-1].endswith("._BadStr: <exception str() failed>")


# ─── activity results that JSON cannot carry ─────────────────────────────────────────────────


@pytest.mark.parametrize("value, tname", [({1, 2}, "set"), (b"abc", "bytes"), (object(), "object")],
                         ids=["set", "bytes", "object"])
def test_an_activity_returning_a_non_json_value_fails_the_activity_naming_the_type(world, value, tname):
    """The activity returns something JSON cannot encode. The activity fails (not the worker, not
    the instance outright) and the code can catch it; the text names the activity and the type.
    Peer-observed: ``Activity 'RetSet' call failed: TypeError: Object of type set is not JSON
    serializable``; here the exception type reads SerializationError (a TypeError) with more
    context, the peer's sentence included."""
    world.runtime.register_activity("R", lambda ctx, _: value)
    world.runtime.register_orchestration("C", _catching)
    world.client.start_orchestration("i1", "C", "R")
    out = world.result("i1").output
    assert out["err"].startswith("Activity 'R' call failed: ")
    assert f"Object of type {tname} is not JSON serializable" in out["err"]


def test_lossy_but_encodable_activity_results_arrive_normalised_like_the_peer(world):
    """Tuples, int dict keys and ints beyond 64 bits: peer-observed ``[1, 2]``, ``{'1': 'a'}``,
    ``1180591620717411303424`` (exact). Same here."""
    world.runtime.register_activity("R", lambda ctx, _: {"t": (1, 2), 1: "a", "big": 2**70})
    world.runtime.register_orchestration("P", _plain)
    world.client.start_orchestration("i1", "P", "R")
    assert world.result("i1").output == {"t": [1, 2], "1": "a", "big": 2**70}


def test_a_nan_activity_result_fails_the_activity_clearly(world):
    """Deliberate difference from the peer (which round-trips NaN as the non-standard JSON token;
    peer-observed ``{'r': nan}``): a NaN result fails the activity naming the problem, catchable."""
    world.runtime.register_activity("R", lambda ctx, _: float("nan"))
    world.runtime.register_orchestration("C", _catching)
    world.client.start_orchestration("i1", "C", "R")
    err = world.result("i1").output["err"]
    assert err.startswith("Activity 'R' call failed: SerializationError:") and "Out of range float" in err


def test_an_activity_result_over_the_payload_limit_fails_the_activity_not_the_runtime(world):
    """The activity returns more than MAX_PAYLOAD_BYTES. The activity fails with a
    PayloadTooLargeError text naming the size and the limit (README "Documented limits"); the
    code catches it and the instance completes; nothing oversized is stored."""
    world.runtime.register_activity("Big", lambda ctx, _: "x" * (MAX_PAYLOAD_BYTES + 10))
    world.runtime.register_orchestration("C", _catching)
    world.client.start_orchestration("i1", "C", "Big")
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output["err"].startswith("Activity 'Big' call failed: PayloadTooLargeError:")
    assert f"over the {MAX_PAYLOAD_BYTES}-byte payload limit" in st.output["err"]
    assert all(len(e["data"] or "") < MAX_PAYLOAD_BYTES for e in world.client.read_execution_history("i1", 1))


def test_a_huge_activity_error_message_is_not_stored_over_the_payload_limit(world):
    """The activity raises ``ValueError`` with a 16 MiB+ message (a dumped response body). The
    documented payload limit (README: payloads up to MAX_PAYLOAD_BYTES) must hold for what is
    stored: the instance still reaches a terminal state, and neither the history nor the status
    error holds more than MAX_PAYLOAD_BYTES (truncate or refuse, but bounded)."""
    world.runtime.register_activity("E", _raiser(ValueError("e" * (MAX_PAYLOAD_BYTES + 10))))
    world.runtime.register_orchestration("P", _plain)
    world.client.start_orchestration("i1", "P", "E")
    st = world.result("i1")
    assert st.status == "Failed"
    assert len(st.error.encode()) <= MAX_PAYLOAD_BYTES
    assert all(len((e["data"] or "").encode()) <= MAX_PAYLOAD_BYTES for e in world.client.read_execution_history("i1", 1))


# ─── orchestration failures ─────────────────────────────────────────────────────────────────


def test_a_failing_child_fails_the_parent_with_the_childs_traceback_inside(world):
    """The parent awaits a child that raises ``ValueError("child broke")``. Uncaught: the parent
    fails and its error's last line is the child's ``ValueError: child broke`` (peer-observed).
    Caught: the text the parent sees is the child's own traceback (starts ``Traceback``, ends
    with that line)."""

    @world.runtime.register_orchestration("Child")
    def child(ctx, _):
        yield ctx.schedule_timer(1)
        raise ValueError("child broke")

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Child", None))

    @world.runtime.register_orchestration("ParentCatch")
    def parent_catch(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration("Child", None)
        except Exception as e:  # noqa: BLE001
            return str(e)

    world.client.start_orchestration("p", "Parent")
    world.client.start_orchestration("pc", "ParentCatch")
    st = world.result("p")
    assert st.status == "Failed" and st.error.strip().splitlines()[-1] == "ValueError: child broke"
    caught = world.result("pc").output
    assert caught.startswith("Traceback (most recent call last):")
    assert caught.strip().splitlines()[-1] == "ValueError: child broke"
    assert world.client.get_status("pc::sub::2").status == "Failed"


def test_returning_a_non_json_value_fails_the_instance_naming_the_type(world):
    """The orchestration returns a set. Peer-observed: Failed, last line ``TypeError: Object of
    type set is not JSON serializable``. Here: Failed, and the error names the orchestration, the
    type and carries the peer's sentence."""

    @world.runtime.register_orchestration("OSet")
    def orch(ctx, _):
        yield ctx.schedule_timer(1)
        return {1}

    world.client.start_orchestration("o", "OSet")
    st = world.result("o")
    assert st.status == "Failed" and st.output is None
    assert "OSet" in st.error and "Object of type set is not JSON serializable" in st.error


def test_changed_activity_name_is_reported_as_nondeterministic(replay_world):
    """A redeploy renames the first activity of a running instance (replay world: every turn
    replays from history). The instance fails in that turn with a status error starting
    ``nondeterministic: `` (SPEC §3.11) that names both activities; history ends
    OrchestrationFailed."""
    w = replay_world
    w.runtime.register_activity("Alpha", lambda ctx, x: x)
    w.runtime.register_activity("Beta", lambda ctx, x: x)
    state = {"name": "Alpha"}

    @w.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_activity(state["name"], 1)
        yield ctx.wait_for_event("go")
        return "done"

    w.client.start_orchestration("i1", "O")
    w.run()
    state["name"] = "Beta"
    w.client.raise_event("i1", "go", None)
    st = w.result("i1")
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic: ")
    assert "Alpha" in st.error and "Beta" in st.error
    assert kinds(w, "i1")[-1] == "OrchestrationFailed"


# ─── poison and unregistered handlers ────────────────────────────────────────────────────────


def test_an_unregistered_activity_backs_off_instead_of_failing_at_once(prod):
    """Production: the orchestration calls an activity nobody registered. Peer-observed: the
    instance stays Running (the worker abandons with 1 s, 2 s, 4 s back-off, ``will poison in 10
    more attempts``), get_status says Running with no error after ~1.5 s. Same here: not failed
    instantly, not lost."""
    rt, c = prod()
    rt.register_orchestration("P", _plain)
    rt.start()
    c.start_orchestration("u", "P", "NoSuchActivity")
    with pytest.raises(TimeoutError):
        c.wait_for_orchestration("u", 1_500)
    st = c.get_status("u")
    assert (st.status, st.error) == ("Running", None)


def test_a_poisoned_activity_message_text_and_status(world):
    """With max_attempts=2 an unregistered activity is poisoned on its third delivery: the
    instance fails with ``poison: activity Missing#2 exceeded 3 attempts (max 2)`` (SPEC §2.3
    display_message, §10.2) even though its code catches activity failures."""
    w = make_world(RuntimeOptions(max_attempts=2))
    w.runtime.register_orchestration("C", _catching)
    w.client.start_orchestration("i1", "C", "Missing")
    st = w.result("i1")
    assert (st.status, st.error) == ("Failed", "poison: activity Missing#2 exceeded 3 attempts (max 2)")


# ─── client-side bad input ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "call, arg",
    [
        (lambda c: c.start_orchestration(123, "O", 1), "instance_id"),
        (lambda c: c.start_orchestration(None, "O", 1), "instance_id"),
        (lambda c: c.start_orchestration("n1", 5, 1), "name"),
        (lambda c: c.get_status(5), "instance_id"),
        (lambda c: c.wait_for_orchestration(5, 100), "instance_id"),
        (lambda c: c.raise_event(5, "e", 1), "instance_id"),
        (lambda c: c.cancel_instance(5, "r"), "instance_id"),
    ],
    ids=["start-id-int", "start-id-none", "start-name-int", "get_status-int", "wait-int", "raise_event-int", "cancel-int"],
)
def test_a_wrongly_typed_id_or_name_is_a_type_error_naming_the_argument(world, call, arg):
    """A wrongly typed instance id or name: peer-observed ``TypeError: argument 'instance_id':
    'int' object cannot be converted to 'PyString'`` (``'orchestration_name'`` for the name).
    Code written for the peer catches ``TypeError``; here the error is an InvalidInputError that
    names the argument - it must also be a TypeError (as SerializationError is) so that code
    keeps working."""
    with pytest.raises(InvalidInputError) as info:
        call(world.client)
    assert arg in str(info.value)
    assert isinstance(info.value, TypeError), f"{type(info.value).__mro__} is not a TypeError (peer raises TypeError)"


@pytest.mark.parametrize("bad", [{1}, b"x"], ids=["set", "bytes"])
def test_a_non_json_client_input_is_refused_at_the_call_and_nothing_is_started(world, bad):
    """Peer-observed: ``TypeError: Object of type set is not JSON serializable`` from
    ``start_orchestration``/``raise_event``, and the instance never exists. Here a
    SerializationError (a TypeError) naming the type, and get_status stays NotFound."""
    world.runtime.register_orchestration("O", lambda ctx, x: x)
    with pytest.raises(TypeError, match=type(bad).__name__):
        world.client.start_orchestration("i1", "O", bad)
    with pytest.raises(SerializationError):
        world.client.raise_event("i1", "e", bad)
    world.run()
    assert world.client.get_status("i1").status == "NotFound"


def test_a_json_looking_string_input_stays_a_string(world):
    """Peer-observed: ``start_orchestration(id, name, "123")`` gives the orchestration the str
    ``'123'`` (json.dumps'd, then json.loads'd), not the int 123."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, inp):
        return {"inp": inp, "t": type(inp).__name__}

    world.client.start_orchestration("i1", "O", "123")
    assert world.result("i1").output == {"inp": "123", "t": "str"}


# ─── limits (SPEC §10.3, README "Documented limits") ────────────────────────────────────────


@pytest.mark.parametrize(
    "orch_name, n, expect",
    [
        ("BigStatus", 262_144, ("Completed", None)),
        ("BigStatus", 262_145, ("Failed", "Custom status size (262145 bytes) exceeds limit (262144 bytes)")),
        ("BigTag", 257, ("Failed", "Activity 'Echo' tag size (257 bytes) exceeds limit (256 bytes)")),
        ("KvBig", 65_536, ("Completed", None)),
        ("KvBig", 65_537, ("Failed", "KV value for key 'k' (65537 bytes) exceeds limit (65536 bytes)")),
        ("KvMany", 150, ("Completed", None)),
        ("KvMany", 151, ("Failed", "KV key count (151) exceeds limit (150)")),
    ],
)
def test_limits_at_the_boundary_match_the_peer_on_sqlite(prod, orch_name, n, expect):
    """Production on SQLite: exactly at each limit works, one byte/key over fails the instance
    with the peer's sentence (peer-observed, verbatim, for each row of this table)."""
    rt, c = prod()
    rt.register_activity("Echo", lambda ctx, i: i)

    def big_status(ctx, n):
        ctx.set_custom_status("x" * n)
        yield ctx.schedule_timer(1)
        return "done"

    def big_tag(ctx, n):
        return (yield ctx.schedule_activity("Echo", 1).with_tag("t" * n))

    def kv_big(ctx, n):
        ctx.set_kv_value("k", "v" * n)
        yield ctx.schedule_timer(1)
        return "done"

    def kv_many(ctx, n):
        for i in range(n):
            ctx.set_kv_value(f"k{i}", "v")
        yield ctx.schedule_timer(1)
        return "done"

    for name, fn in [("BigStatus", big_status), ("BigTag", big_tag), ("KvBig", kv_big), ("KvMany", kv_many)]:
        rt.register_orchestration(name, fn)
    rt.start()
    c.start_orchestration("i1", orch_name, n)
    st = c.wait_for_orchestration("i1", 2_500)
    assert (st.status, st.error) == expect


def test_the_turn_that_crosses_the_history_limit_fails_and_keeps_its_events(world, monkeypatch):
    """A loop of cheap timers without continue-as-new crosses the per-execution history cap (README:
    100,000 events; lowered here to 60 through core.turn.LIMITS to keep the test fast). The instance
    fails naming the limit and suggesting continue-as-new; the history it wrote is kept, ending
    OrchestrationFailed; the runtime goes on serving another instance."""
    from duroxide_sim.core import turn

    monkeypatch.setitem(turn.LIMITS, "history_events", 60)

    @world.runtime.register_orchestration("Loop")
    def loop(ctx, n):
        for _ in range(n):
            yield ctx.schedule_timer(0)
        return "done"

    world.client.start_orchestration("big", "Loop", 100)
    world.client.start_orchestration("small", "Loop", 5)
    st = world.result("big")
    assert st.status == "Failed"
    assert "exceeds limit (60 events)" in st.error and "continue-as-new" in st.error
    ks = kinds(world, "big")
    assert ks[-1] == "OrchestrationFailed" and len(ks) > 60
    assert world.result("small").output == "done"


def test_oversized_custom_status_fails_the_instance_without_storing_it_on_sqlite(prod):
    """Production on SQLite: ``set_custom_status`` with 17 MiB. The instance fails with the custom
    status limit sentence (SPEC §10.3) - no crash, no provider traceback. The oversized status
    stays what get_status reports, as the peer does (peer-observed for 3,000,000 bytes: Failed,
    ``custom_status`` of 3000000 chars, version 1)."""
    rt, c = prod()

    def orch(ctx, _):
        ctx.set_custom_status("s" * (MAX_PAYLOAD_BYTES + 1024))
        yield ctx.schedule_timer(1)
        return 1

    rt.register_orchestration("O", orch)
    rt.start()
    c.start_orchestration("i1", "O")
    st = c.wait_for_orchestration("i1", 2_500)
    assert st.status == "Failed"
    assert st.error == f"Custom status size ({MAX_PAYLOAD_BYTES + 1024} bytes) exceeds limit (262144 bytes)"
    assert (len(st.custom_status), st.custom_status_version) == (MAX_PAYLOAD_BYTES + 1024, 1)


# ─── under the simulator ───────────────────────────────────────────────────────────────────


def _failing_setup(rt, world):
    rt.register_activity("Reject", _raiser(ValueError("order rejected")))
    rt.register_orchestration("C", _catching)


def test_activity_failure_text_is_fault_transparent_under_swarm_faults():
    """Simulator: an activity that always raises, under the default swarm faults (crashes,
    lost locks, ack failures). Every checker passes and the orchestration saw exactly the
    fault-free text (no poison leaking in for an application failure, no duplicated prefix)."""
    spec = SimSpec(name="reject", setup=_failing_setup,
                   starts=[Start(instance=f"r{i}", orchestration="C", input="Reject") for i in range(2)])
    for seed in (1, 2, 3):
        result = run_and_check(Simulation(spec, seed))
        assert not result.failures, [f.render() for f in result.failures]
        for inst, st in result.statuses.items():
            if inst in result.budget_exhausted:
                continue
            assert st.status == "Completed"
            assert st.output["err"] == "Activity 'Reject' call failed: ValueError: order rejected"


def _badstr_setup(rt, world):
    rt.register_activity("BadStr", _raiser(_BadStr()))
    rt.register_orchestration("C", _catching)


def test_an_activity_exception_whose_str_raises_under_the_simulator():
    """Simulator, no faults: the buggy exception class from above. The run must go quiet with
    no checker failures or crash reports, and the instance Completed with the caught failure."""
    spec = SimSpec(name="badstr", setup=_badstr_setup, starts=[Start(instance="b", orchestration="C", input="BadStr")])

    result = run_and_check(Simulation(spec, 1, FaultPlan.none()))
    assert not result.failures, [f.render() for f in result.failures]
    assert not result.crash_reports
    st = result.statuses["b"]
    assert st.status == "Completed"
    assert st.output["err"] == "Activity 'BadStr' call failed: _BadStr: <exception str() failed>"


def test_in_memory_and_sqlite_report_the_same_failure_shape(prod):
    """The same failing workflow on InMemoryProvider and SqliteProvider (production): identical
    status, identical last error line, identical output None."""
    outs = []
    for provider in (InMemoryProvider(), SqliteProvider.in_memory()):
        rt, c = prod(provider)
        rt.register_activity("A", _raiser(KeyError("k")))
        rt.register_orchestration("P", _plain)
        rt.start()
        c.start_orchestration("i1", "P", "A")
        st = c.wait_for_orchestration("i1", 2_000)
        outs.append((st.status, st.output, st.error.strip().splitlines()[-1]))
    assert outs[0] == outs[1] == ("Failed", None, "Exception: Activity 'A' call failed: KeyError: 'k'")
    json.dumps(outs)
