"""Bad input against the production SQLite provider: every case fails clearly (exception type
AND a message naming the problem) and loses nothing else.

The runtime cases run in a simulated world on a SQLite *file*: the real Runtime, dispatchers and
Client, driven by the SequentialDriver on a SimClock (as ``tests/conftest.py``'s ``make_world``,
with a SqliteProvider instead of the in-memory one), so back-offs and poison take no wall time.
Each test first sets up bystanders — a completed instance, and a running one that already holds
a queued message — and finishes by showing they are intact: the completed history unchanged,
and the running one still receives its earlier and later messages and completes correctly.

Covered: non-JSON-serializable client inputs and activity results; payloads over
``MAX_PAYLOAD_BYTES`` (client input, event data, activity result; the limit itself is accepted);
unknown orchestration and activity names (poison after back-off, ``poison: ...`` in status);
awkward instance ids (quotes, unicode, 10 KB and exactly the byte maximum round-trip through
start/status/history/events; empty, NUL, non-string and one byte over the maximum are refused);
database files that are not SQLite, read-only, or of a newer schema version; and the per-
execution history cap ``LIMITS["history_events"]`` (tested with a small monkeypatched cap).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.core.codec import MAX_PAYLOAD_BYTES
from duroxide_sim.core.events import OrchestrationFailed, OrchestrationStarted
from duroxide_sim.core.turn import LIMITS
from duroxide_sim.errors import InvalidInputError, PayloadTooLargeError, ProviderError, SerializationError
from duroxide_sim.providers import sqlite_schema
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.client import MAX_ANY_INSTANCE_ID_BYTES, MAX_INSTANCE_ID_BYTES
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import check_well_formed

# --- a simulated world on a SQLite file -----------------------------------------------------------


@attrs.define
class SqliteWorld:
    path: Path
    provider: SqliteProvider
    runtime: Runtime
    client: Client
    clock: SimClock
    driver: SequentialDriver

    def run(self) -> None:
        self.driver.run_until_quiet()

    def status(self, instance: str) -> Any:
        return self.client.get_status(instance)

    def well_formed(self) -> None:
        for inst in self.provider.list_instances():
            for exe in self.provider.list_executions(inst):
                assert check_well_formed(inst, exe, self.provider.read_with_execution(inst, exe)) == []


class _Unencodable:
    def __repr__(self) -> str:
        return "<_Unencodable>"


def _register(rt: Runtime) -> None:
    rt.register_activity("Echo", lambda ctx, x: x)
    rt.register_activity("WhoAmI", lambda ctx: ctx.instance_id)
    rt.register_activity("ReturnSet", lambda ctx: {1, 2, 3})
    rt.register_activity("ReturnObject", lambda ctx: _Unencodable())
    rt.register_activity("ReturnHuge", lambda ctx: "x" * MAX_PAYLOAD_BYTES)  # +2 quote bytes in JSON

    def call(ctx, arg):
        """Call activity ``arg["name"]``; return its result, or the error text it raised."""
        try:
            return {"ok": (yield ctx.schedule_activity(arg["name"], arg.get("input")))}
        except Exception as exc:  # noqa: BLE001
            if arg.get("catch"):
                return {"err": str(exc)}
            raise

    def bystander(ctx, n):
        q1 = yield ctx.dequeue_event("q")
        q2 = yield ctx.dequeue_event("q")
        go = yield ctx.wait_for_event("go")
        echoed = yield ctx.schedule_activity("Echo", [n, q1, q2, go])
        return echoed

    def id_echo(ctx, _):
        me = yield ctx.schedule_activity("WhoAmI")
        go = yield ctx.wait_for_event("go")
        return {"id": ctx.instance_id, "activity": me, "event": go}

    def parent(ctx, name):
        return (yield ctx.schedule_sub_orchestration(name, 1))

    def grow(ctx, n):
        for i in range(n):
            yield ctx.schedule_activity("Echo", i)
        return n

    def bounded(ctx, arg):
        done, total = arg
        for i in range(10):
            yield ctx.schedule_activity("Echo", done + i)
        if done + 10 < total:
            yield ctx.continue_as_new([done + 10, total])
        return done + 10

    rt.register_orchestration("Call", call)
    rt.register_orchestration("Length", lambda ctx, s: len(s))
    rt.register_orchestration("ReturnSet", lambda ctx: {"a", "b"})

    def send_object(ctx):
        yield ctx.schedule_activity("Echo", _Unencodable())

    rt.register_orchestration("SendObject", send_object)
    rt.register_orchestration("Bystander", bystander)
    rt.register_orchestration("IdEcho", id_echo)
    rt.register_orchestration("Parent", parent)
    rt.register_orchestration("Grow", grow)
    rt.register_orchestration("Bounded", bounded)


def make_sqlite_world(path: Path, options: RuntimeOptions | None = None) -> SqliteWorld:
    clock = SimClock()
    provider = SqliteProvider.open(path, clock=clock)
    runtime = Runtime(provider, options or RuntimeOptions(), clock=clock, ids=SequentialIds())
    _register(runtime)
    driver = SequentialDriver(runtime, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    return SqliteWorld(path, provider, runtime, client, clock, driver)


POISON_OPTIONS = RuntimeOptions(max_attempts=3, unregistered_backoff_base_ms=10, unregistered_backoff_max_ms=50)


@pytest.fixture
def world(tmp_path):
    w = make_sqlite_world(tmp_path / "bad-input.db", POISON_OPTIONS)
    yield w
    w.provider._check()
    w.provider.close()


class Bystanders:
    """A completed instance and a running one holding a queued message: both must survive."""

    def __init__(self, w: SqliteWorld) -> None:
        w.client.start_orchestration("by-done", "Call", {"name": "Echo", "input": "done"})
        w.client.start_orchestration("by-wait", "Bystander", 7)
        w.run()
        w.client.enqueue_event("by-wait", "q", "q1")
        w.run()
        assert w.status("by-done").output == {"ok": "done"}
        assert w.status("by-wait").status == "Running"
        self.done_history = w.client.read_execution_history("by-done", 1)
        self.wait_history = w.client.read_execution_history("by-wait", 1)

    def verify(self, w: SqliteWorld) -> None:
        """Nothing lost: the completed history is unchanged, the running instance's history only
        grew, and it consumes the earlier queued message plus new ones and completes."""
        assert w.client.read_execution_history("by-done", 1) == self.done_history
        assert w.client.read_execution_history("by-wait", 1)[:len(self.wait_history)] == self.wait_history
        w.client.enqueue_event("by-wait", "q", "q2")
        w.run()
        w.client.raise_event("by-wait", "go", "go!")
        w.run()
        st = w.status("by-wait")
        assert (st.status, st.output) == ("Completed", [7, "q1", "q2", "go!"]), st
        w.well_formed()


def _queued(w: SqliteWorld) -> tuple[int, int]:
    d = w.provider.get_queue_depths()
    return d.orchestrator_queue, d.worker_queue


# --- non-JSON-serializable values ------------------------------------------------------------------

UNENCODABLE = [({1, 2}, "set"), (frozenset({"a"}), "frozenset"), (_Unencodable(), "_Unencodable"),
               ({"nested": {1}}, "set")]
UNENCODABLE_IDS = ["set", "frozenset", "object", "nested-set"]


@pytest.mark.parametrize("value,type_name", UNENCODABLE, ids=UNENCODABLE_IDS)
def test_unserializable_client_input_is_refused_and_nothing_is_enqueued(world, value, type_name):
    """start_orchestration / raise_event / enqueue_event with a value JSON cannot encode raise
    SerializationError (also a TypeError) naming the argument and the offending type; nothing is
    enqueued, the refused instance does not exist, and the bystanders are intact."""
    by = Bystanders(world)
    before = _queued(world)
    with pytest.raises(SerializationError, match=rf"^input of orchestration 'Call' cannot be encoded as JSON: "
                                                 rf"Object of type {type_name} is not JSON serializable"):
        world.client.start_orchestration("bad", "Call", value)
    with pytest.raises(TypeError, match=rf"^data of event 'go' cannot be encoded as JSON: Object of type {type_name}"):
        world.client.raise_event("by-wait", "go", value)
    with pytest.raises(SerializationError, match=rf"^message for queue 'q' cannot be encoded as JSON: .*{type_name}"):
        world.client.enqueue_event("by-wait", "q", value)
    assert _queued(world) == before
    world.run()
    assert world.status("bad").status == "NotFound"
    by.verify(world)


@pytest.mark.parametrize("activity,type_name", [("ReturnSet", "set"), ("ReturnObject", "_Unencodable")],
                         ids=["set", "object"])
def test_unserializable_activity_result_fails_only_its_orchestration(world, activity, type_name):
    """An activity returning a value JSON cannot encode fails (ActivityFailed, naming the type);
    uncaught, the orchestration fails with that message; caught, the code sees it. Instances
    running at the same time are unaffected."""
    by = Bystanders(world)
    world.client.start_orchestration("bad", "Call", {"name": activity})
    world.client.start_orchestration("bad-caught", "Call", {"name": activity, "catch": True})
    world.client.start_orchestration("good", "Call", {"name": "Echo", "input": [1, "two"]})
    world.run()
    message = (f"Activity '{activity}' call failed: SerializationError: result of activity '{activity}' cannot be "
               f"encoded as JSON: Object of type {type_name} is not JSON serializable (value of type {type_name})")
    st = world.status("bad")
    assert st.status == "Failed" and message in st.error, st
    assert world.status("bad-caught").output == {"err": message}
    assert world.status("good").output == {"ok": [1, "two"]}
    assert _queued(world) == (0, 0)
    by.verify(world)


def test_unserializable_values_in_orchestration_code_fail_only_that_orchestration(world):
    """Orchestration code returning a set, or passing an object as activity input, fails that
    orchestration with a message naming the value and its type; nothing is dispatched."""
    by = Bystanders(world)
    world.client.start_orchestration("ret-set", "ReturnSet")
    world.client.start_orchestration("send-object", "SendObject")
    world.run()
    st = world.status("ret-set")
    assert (st.status, st.error) == ("Failed", "output of orchestration 'ReturnSet' cannot be encoded as JSON: "
                                               "Object of type set is not JSON serializable (value of type set)")
    st = world.status("send-object")
    assert st.status == "Failed"
    assert ("SerializationError: input of activity 'Echo' cannot be encoded as JSON: Object of type _Unencodable "
            "is not JSON serializable (value of type _Unencodable)") in st.error
    assert [type(e).__name__ for e in world.provider.read("send-object")] == ["OrchestrationStarted", "OrchestrationFailed"]
    assert _queued(world) == (0, 0)
    by.verify(world)


# --- payload size --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["start", "raise_event", "enqueue_event"])
def test_client_payload_over_the_limit_is_refused(world, how):
    """A JSON payload one byte over MAX_PAYLOAD_BYTES raises PayloadTooLargeError (an
    InvalidInputError / ValueError) stating size and limit, with ``size``/``limit`` fields;
    nothing is enqueued."""
    by = Bystanders(world)
    before = _queued(world)
    huge = "x" * (MAX_PAYLOAD_BYTES - 1)  # JSON adds two quotes: MAX + 1 bytes
    call, what = {
        "start": (lambda: world.client.start_orchestration("bad", "Call", huge), "input of orchestration 'Call'"),
        "raise_event": (lambda: world.client.raise_event("by-wait", "go", huge), "data of event 'go'"),
        "enqueue_event": (lambda: world.client.enqueue_event("by-wait", "q", huge), "message for queue 'q'"),
    }[how]
    with pytest.raises(PayloadTooLargeError, match=rf"^{what} is {MAX_PAYLOAD_BYTES + 1} bytes, over the "
                                                    rf"{MAX_PAYLOAD_BYTES}-byte payload limit") as info:
        call()
    assert isinstance(info.value, InvalidInputError) and isinstance(info.value, ValueError)
    assert (info.value.size, info.value.limit) == (MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES)
    assert _queued(world) == before
    by.verify(world)


def test_payload_of_exactly_the_limit_is_accepted(world):
    """The limit itself is allowed: an input of exactly MAX_PAYLOAD_BYTES JSON bytes is stored
    in SQLite and delivered intact."""
    exact = "y" * (MAX_PAYLOAD_BYTES - 2)  # + two quotes = MAX_PAYLOAD_BYTES
    world.client.start_orchestration("exact", "Length", exact)
    world.run()
    assert world.status("exact").output == MAX_PAYLOAD_BYTES - 2
    started = world.provider.read("exact")[0]
    assert isinstance(started, OrchestrationStarted) and started.input == '"' + exact + '"'
    assert len(started.input.encode()) == MAX_PAYLOAD_BYTES


def test_activity_result_over_the_limit_fails_the_activity_with_the_size(world):
    """An activity result over MAX_PAYLOAD_BYTES fails that activity with the size message
    (nothing huge is written to history); other instances are unaffected."""
    by = Bystanders(world)
    world.client.start_orchestration("huge", "Call", {"name": "ReturnHuge", "catch": True})
    world.client.start_orchestration("huge-uncaught", "Call", {"name": "ReturnHuge"})
    world.run()
    message = (f"Activity 'ReturnHuge' call failed: PayloadTooLargeError: result of activity 'ReturnHuge' is "
               f"{MAX_PAYLOAD_BYTES + 2} bytes, over the {MAX_PAYLOAD_BYTES}-byte payload limit; store large data "
               "elsewhere and pass a reference")
    assert world.status("huge").output == {"err": message}
    st = world.status("huge-uncaught")
    assert st.status == "Failed" and message in st.error
    assert max(len(e["data"] or "") for e in world.client.read_execution_history("huge", 1)) < 10_000
    by.verify(world)


# --- unknown names -> poison after back-off ---------------------------------------------------------


def test_unknown_orchestration_is_poisoned_after_backoff(world):
    """Starting an unregistered orchestration is retried with back-off (10, 20, 40 ms here), then
    poisoned on fetch max_attempts+1: status Failed ``poison: orchestration ...``; the Poison
    details carry the batch (naming the orchestration). A parent calling an unregistered child
    fails with the child's poison."""
    by = Bystanders(world)
    t0 = world.clock.now_ms()
    world.client.start_orchestration("ghost", "NoSuchOrchestration", {"x": 1})
    world.client.start_orchestration("ghost-parent", "Parent", "NoSuchChild")
    world.run()
    st = world.status("ghost")
    assert (st.status, st.error) == ("Failed", "poison: orchestration ghost exceeded 4 attempts (max 3)")
    assert world.clock.now_ms() - t0 >= 10 + 20 + 40  # backed off before poisoning
    events = world.provider.read("ghost")
    assert [type(e).__name__ for e in events] == ["OrchestrationStarted", "OrchestrationFailed"]
    assert events[0].name == "NoSuchOrchestration" and events[0].input == '{"x": 1}'
    details = events[1].details
    assert details.category == "poison" and (details.attempt_count, details.max_attempts) == (4, 3)
    assert "NoSuchOrchestration" in details.message
    assert world.client.get_instance_info("ghost").orchestration_name == "NoSuchOrchestration"
    st = world.status("ghost-parent")
    assert (st.status, st.error) == (
        "Failed", "poison: orchestration ghost-parent::sub::2 exceeded 4 attempts (max 3)")
    assert _queued(world) == (0, 0)
    by.verify(world)


def test_unknown_activity_is_poisoned_after_backoff(world):
    """An unregistered activity is abandoned with back-off and attempts kept, then failed with
    Poison on fetch max_attempts+1; the orchestration fails ``poison: activity Name#id ...``
    (Poison is not catchable by user code); the bystanders are intact."""
    by = Bystanders(world)
    world.client.start_orchestration("lost", "Call", {"name": "NoSuchActivity", "catch": True})
    world.run()
    st = world.status("lost")
    assert (st.status, st.error) == ("Failed", "poison: activity NoSuchActivity#2 exceeded 4 attempts (max 3)")
    failed = [e for e in world.provider.read("lost") if isinstance(e, OrchestrationFailed)]
    assert len(failed) == 1 and failed[0].details.category == "poison"
    assert (failed[0].details.activity_name, failed[0].details.activity_id) == ("NoSuchActivity", 2)
    assert _queued(world) == (0, 0)
    by.verify(world)


# --- instance ids ---------------------------------------------------------------------------------

ACCEPTED_IDS = {
    "quotes": "it's \"quoted\" `back` [brackets] 'x'); DROP TABLE instances; --",
    "unicode": "ünïcødé-名前-🎉-\u202e-\t\n",
    "10KB": "k" * 10_240,
    "max-bytes": "é" * (MAX_INSTANCE_ID_BYTES // 2),  # exactly MAX_INSTANCE_ID_BYTES UTF-8 bytes
}


@pytest.mark.parametrize("instance", list(ACCEPTED_IDS.values()), ids=list(ACCEPTED_IDS))
def test_awkward_instance_ids_round_trip(world, instance):
    """Ids with quotes/SQL, unicode and control characters, 10 KB, and exactly the byte maximum
    are accepted and round-trip through start, events, activities (ctx.instance_id), status,
    history, and management reads."""
    by = Bystanders(world)
    world.client.start_orchestration(instance, "IdEcho")
    world.run()
    world.client.raise_event(instance, "go", instance)
    world.run()
    st = world.status(instance)
    assert (st.status, st.output) == ("Completed", {"id": instance, "activity": instance, "event": instance})
    events = world.client.read_history_events(instance)
    assert events and all(e.instance_id == instance for e in events)
    assert [e["kind"] for e in world.client.read_execution_history(instance, 1)][-1] == "OrchestrationCompleted"
    assert world.client.get_instance_info(instance).instance_id == instance
    assert instance in world.client.list_all_instances()
    by.verify(world)


REFUSED_IDS = [
    ("", "instance_id must not be empty"),
    ("é" * (MAX_INSTANCE_ID_BYTES // 2) + "x", f"instance_id is longer than {MAX_INSTANCE_ID_BYTES} bytes"),
    ("x" * (MAX_INSTANCE_ID_BYTES + 1), f"instance_id is longer than {MAX_INSTANCE_ID_BYTES} bytes"),
    ("nul\x00inside", "instance_id must not contain NUL characters"),
    (42, "instance_id must be a string, got int"),
]


@pytest.mark.parametrize("instance,message", REFUSED_IDS, ids=["empty", "max+1-bytes", "over-max", "nul", "int"])
def test_invalid_instance_ids_are_refused_everywhere(world, instance, message):
    """Empty, NUL-containing, non-string and over-maximum ids (counted in UTF-8 bytes: 8192 'é'
    + 'x' is 8193 characters but MAX+1 bytes) raise InvalidInputError naming the problem from
    every client entry point; nothing is enqueued."""
    by = Bystanders(world)
    before = _queued(world)
    calls = [
        lambda i: world.client.start_orchestration(i, "Call", {"name": "Echo"}),
        lambda i: world.client.raise_event(i, "go", 1),
        lambda i: world.client.enqueue_event(i, "q", 1),
        lambda i: world.client.cancel_instance(i, "because"),
        lambda i: world.client.get_status(i),
    ]
    for n, call in enumerate(calls):
        if n and isinstance(instance, str) and "longer than" in message:
            # Other calls accept derived sub-orchestration ids a little past the start limit.
            wider = instance + "x" * (MAX_ANY_INSTANCE_ID_BYTES - MAX_INSTANCE_ID_BYTES)
            with pytest.raises(InvalidInputError, match=f"^instance_id is longer than {MAX_ANY_INSTANCE_ID_BYTES} bytes"):
                call(wider)
            continue
        with pytest.raises(InvalidInputError, match=f"^{message}"):
            call(instance)
    assert _queued(world) == before
    by.verify(world)


# --- database files -------------------------------------------------------------------------------


def _populated(path: Path) -> tuple[Any, list[dict[str, Any]]]:
    """A database with one completed instance; returns its status and history, then closes."""
    w = make_sqlite_world(path)
    w.client.start_orchestration("keep", "Call", {"name": "Echo", "input": "kept"})
    w.run()
    out = (w.status("keep"), w.client.read_execution_history("keep", 1))
    w.provider.close()
    return out


def _reopened(path: Path) -> tuple[Any, list[dict[str, Any]]]:
    provider = SqliteProvider.open(path, clock=SimClock())
    client = Client(provider)
    out = (client.get_status("keep"), client.read_execution_history("keep", 1))
    provider._check()
    provider.close()
    return out


def test_a_file_that_is_not_sqlite_is_refused_untouched(tmp_path):
    """Opening a non-SQLite file raises a permanent ProviderError saying it is not a SQLite
    database; the file is left byte-for-byte unchanged and no WAL/shared-memory files appear."""
    path = tmp_path / "notes.db"
    content = b"just some notes, certainly not a database\n" * 500
    path.write_bytes(content)
    with pytest.raises(ProviderError, match=r"is not a SQLite database") as info:
        SqliteProvider.open(path, clock=SimClock())
    assert str(path) in str(info.value) and info.value.retryable is False and info.value.operation == "open"
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["notes.db"]


def test_a_corrupt_sqlite_header_is_refused_untouched(tmp_path):
    """A database whose header was overwritten is refused the same way; nothing is written."""
    path = tmp_path / "broken.db"
    _populated(path)
    data = bytearray(path.read_bytes())
    data[:16] = b"garbage garbage!"
    path.write_bytes(bytes(data))
    with pytest.raises(ProviderError, match=r"is not a SQLite database") as info:
        SqliteProvider.open(path, clock=SimClock())
    assert info.value.retryable is False
    assert path.read_bytes() == bytes(data)


def test_a_read_only_database_is_refused_and_keeps_its_data(tmp_path):
    """A database file with mode 0444 is refused with a permanent ProviderError that says
    read-only (checked from the permission bits, so also when running as root); the file is
    unchanged, and once writable again it opens with its data intact."""
    path = tmp_path / "ro.db"
    expected = _populated(path)
    data = path.read_bytes()
    os.chmod(path, 0o444)
    try:
        with pytest.raises(ProviderError, match=r"is read-only: SqliteProvider needs write access") as info:
            SqliteProvider.open(path, clock=SimClock())
        assert str(path) in str(info.value) and info.value.retryable is False
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o444 and path.read_bytes() == data
    finally:
        os.chmod(path, 0o644)
    status, history = _reopened(path)
    assert (status.status, status.output) == ("Completed", {"ok": "kept"})
    assert (status, history) == expected


def test_a_newer_schema_version_is_refused_naming_both_versions(tmp_path):
    """A database written by a newer duroxide_sim (schema version SCHEMA_VERSION+1) is refused
    with a permanent ProviderError naming the found and the supported version (also as fields);
    the refusal writes nothing (not even the open counter); the data is intact afterwards."""
    import sqlite3

    path = tmp_path / "future.db"
    expected = _populated(path)
    newer = sqlite_schema.SCHEMA_VERSION + 1
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_version (version) VALUES (?)", (newer,))
    opens = conn.execute("SELECT value FROM provider_meta WHERE key = 'opens'").fetchone()[0]
    conn.close()
    with pytest.raises(ProviderError, match=rf"has schema version {newer}, but this duroxide_sim supports schema "
                                            rf"version {sqlite_schema.SCHEMA_VERSION} at most") as info:
        SqliteProvider.open(path, clock=SimClock())
    err = info.value
    assert (err.found_version, err.supported_version, err.retryable) == (newer, sqlite_schema.SCHEMA_VERSION, False)
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == newer
    assert conn.execute("SELECT value FROM provider_meta WHERE key = 'opens'").fetchone()[0] == opens
    conn.execute("DELETE FROM schema_version WHERE version = ?", (newer,))
    conn.close()
    assert _reopened(path) == expected


# --- history size cap -------------------------------------------------------------------------------


def test_history_cap_default_is_documented():
    assert LIMITS["history_events"] == 100_000


def test_history_over_the_cap_fails_the_orchestration(world, monkeypatch):
    """With the cap at 50 events, an orchestration that keeps scheduling activities fails in the
    turn whose history would exceed it (OrchestrationFailed{Application}, message naming the
    size, the limit and the remedy); the activity scheduled in that turn is never dispatched;
    an orchestration that bounds its history with continue-as-new runs past the cap in total."""
    monkeypatch.setitem(LIMITS, "history_events", 50)
    by = Bystanders(world)
    world.client.start_orchestration("grow", "Grow", 100)
    world.client.start_orchestration("bounded", "Bounded", [0, 60])
    world.run()
    message = "history size (52 events) exceeds limit (50 events); use continue-as-new to bound history"
    st = world.status("grow")
    assert (st.status, st.error) == ("Failed", message)
    events = world.provider.read("grow")
    failed = [e for e in events if isinstance(e, OrchestrationFailed)]
    assert len(failed) == 1 and failed[0].event_id == 53
    assert (failed[0].details.category, failed[0].details.kind, failed[0].details.message) == (
        "application", "OrchestrationFailed", message)
    assert check_well_formed("grow", 1, events) == []
    st = world.status("bounded")
    assert (st.status, st.output) == ("Completed", 60)
    sizes = [len(world.provider.read_with_execution("bounded", e)) for e in world.provider.list_executions("bounded")]
    assert len(sizes) == 6 and max(sizes) <= 50 and sum(sizes) > 50
    assert _queued(world) == (0, 0)
    by.verify(world)


def test_children_of_a_maximal_parent_id_stay_reachable(world):
    """A parent id at the start limit gets children whose derived ids are longer; the client
    can still read them."""

    @world.runtime.register_orchestration("Kid")
    def kid(ctx, x):
        return x * 2

    @world.runtime.register_orchestration("Par")
    def par(ctx, x):
        return (yield ctx.schedule_sub_orchestration("Kid", x))

    parent = "é" * (MAX_INSTANCE_ID_BYTES // 2)
    world.client.start_orchestration(parent, "Par", 21)
    world.run()
    assert world.client.get_status(parent).output == 42
    assert world.client.get_status(parent + "::sub::2").output == 42


@pytest.mark.parametrize("where", ["missing-dir", "a-directory"])
def test_unopenable_paths_get_a_clear_permanent_error(tmp_path, where):
    from duroxide_sim import SqliteProvider
    from duroxide_sim.errors import ProviderError

    path = tmp_path / "no" / "such" / "dir" / "x.db" if where == "missing-dir" else tmp_path
    with pytest.raises(ProviderError, match="cannot open SQLite database") as err:
        SqliteProvider.open(str(path))
    assert err.value.retryable is False
