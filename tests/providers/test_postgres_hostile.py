"""Hostile input and unusual situations against PostgresProvider, directly and through Runtime +
Client (the SQLite/memory counterparts are in ``test_bad_input.py``).

Project standard: bad input (wrong types, non-JSON payloads, unknown names, oversized data,
hostile ids, SQL-looking strings) gets a clear error naming the problem and never loses data;
provider errors are ``ProviderError`` with a sensible ``retryable``, never a raw psycopg (or
encoding) exception. Where PostgreSQL cannot hold what SQLite holds (NUL characters, index keys
over ~2.7 KB) the outcome must still be clear, permanent and local to the offending instance.

The runtime cases run the real dispatchers on a SimClock (``SequentialDriver``), so back-offs and
poison take no wall time; a bounded ``max_steps`` turns a livelock into a ``StuckError``.

Tests whose docstring says ``BUG:`` failed before their fix (the docstring keeps the cause).
Incompressible instance ids over ~2.7 KB exceed btree index rows: refused by PostgreSQL at the
call with a permanent ProviderError, nothing stored (memory and SQLite accept up to 16 KiB).
Session ids and the KV keys a turn writes are limited to 1 KiB on every provider (a long session
id once blocked every session-aware fetch of the schema; a long KV key failed its turn). (A NUL in an error message, custom status or KV value, once a third finding, is now
stored escaped and read back unchanged: ``test_verbatim_text_with_nul_round_trips``.)
"""

from __future__ import annotations

import itertools
import random
import socket
import string
import threading
import time
import uuid
from typing import Any

import attrs
import psycopg
import pytest
from psycopg import errors as pg_errors

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.errors import DuroxideError, InvalidInputError, OperationTimeout, ProviderError
from duroxide_sim.providers.base import ExecutionMetadata, InstanceFilter, PruneOptions
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.checkers import check_well_formed
from duroxide_sim.testing.conformance import (
    can_ev, completed_ev, create, fetch, kv_set, start_item, started, status_ev,
)
from tests.providers.conftest import drop_schemas

_UID = uuid.uuid4().hex[:6]
_n = itertools.count(1)

HOSTILE = [
    "it's \"quoted\" 'x'",
    "%s %% %(x)s %(instance)s {}",
    "back\\slash\\\\ \\x00 \\'",
    "'; DROP TABLE instances; --",
    "ünï-名前-🎉-\u202e\t\n",
]


def _noise(n: int, seed: int = 1) -> str:
    """``n`` incompressible ASCII characters (TOAST cannot shrink them inside an index)."""
    rnd = random.Random(seed)
    return "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(n))


@pytest.fixture
def schemas(pg_url):
    """``schemas(name)`` registers an exact schema name for dropping at teardown."""
    made: list[str] = []

    def keep(name: str) -> str:
        made.append(name)
        return name

    yield keep
    drop_schemas(pg_url, made)




def verbatim_text(ctx, inp):
    """Writes ``inp["text"]`` to every column that keeps user text verbatim: a KV value (read
    back through the next execution's fetched KV snapshot), the custom status, and (as the
    error message of a failure) the execution's output."""
    if inp["n"] == 0:
        ctx.set_kv_value("k", inp["text"])
        ctx.set_custom_status(inp["text"])
        yield ctx.continue_as_new({"n": 1, "text": inp["text"], "fail": inp["fail"]})
    seen = ctx.get_kv_value("k")
    if seen != inp["text"]:
        raise AssertionError(f"the KV snapshot changed the value: {seen!r}")
    ctx.set_custom_status(inp["text"])
    if inp["fail"]:
        raise ValueError(inp["text"])
    return inp["text"]


# --- a simulated world on PostgreSQL ----------------------------------------------------------------


@attrs.define
class PgWorld:
    provider: PostgresProvider
    runtime: Runtime
    client: Client
    clock: SimClock
    driver: SequentialDriver

    def run(self) -> None:
        self.driver.run_until_quiet()

    def status(self, instance: str) -> Any:
        return self.client.get_status(instance)


def _register(rt: Runtime) -> None:
    rt.register_activity("Echo", lambda ctx, x: x)
    rt.register_activity("WhoAmI", lambda ctx: ctx.instance_id)

    def boom(ctx, msg):
        raise ValueError(msg)

    rt.register_activity("Boom", boom)

    def id_echo(ctx, key):
        me = yield ctx.schedule_activity("WhoAmI")
        ctx.set_kv_value(key, key)
        ctx.set_custom_status(key)
        go = yield ctx.wait_for_event(key)
        return {"id": ctx.instance_id, "activity": me, "event": go}

    def kv_first(ctx, key):  # the KV write is in the FIRST turn (empty fetched history)
        ctx.set_kv_value(key, "v")
        return (yield ctx.schedule_activity("Echo", 1))

    def kv_later(ctx, key):
        yield ctx.schedule_activity("Echo", 1)
        ctx.set_kv_value(key, "v")
        return "done"

    def call_boom(ctx, msg):
        return (yield ctx.schedule_activity("Boom", msg))

    def on_session(ctx, sid):
        return (yield ctx.schedule_activity_on_session("Echo", "s", sid))

    def plain(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    rt.register_orchestration("IdEcho", id_echo)
    rt.register_orchestration("KvFirst", kv_first)
    rt.register_orchestration("KvLater", kv_later)
    rt.register_orchestration("CallBoom", call_boom)
    rt.register_orchestration("OnSession", on_session)
    rt.register_orchestration("Plain", plain)
    rt.register_orchestration("VerbatimText", verbatim_text)


@pytest.fixture
def world(pg_url, pg_schema):
    clock = SimClock()
    provider = PostgresProvider.connect_with_schema(pg_url, pg_schema("hw"), clock=clock)
    runtime = Runtime(provider, RuntimeOptions(max_attempts=3, unregistered_backoff_base_ms=10,
                                               unregistered_backoff_max_ms=50), clock=clock, ids=SequentialIds())
    _register(runtime)
    driver = SequentialDriver(runtime, clock, max_steps=400)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    yield PgWorld(provider, runtime, client, clock, driver)
    provider.close()


def _queued(w: PgWorld) -> tuple[int, int]:
    d = w.provider.get_queue_depths()
    return d.orchestrator_queue, d.worker_queue


# --- hostile strings -----------------------------------------------------------------------------------


def test_sql_looking_ids_event_names_kv_keys_and_statuses_round_trip(world):
    """Quotes, %s / %(x)s placeholders, backslashes, '; DROP TABLE and odd unicode as instance
    id, event name, KV key/value and custom status: all stored and read back verbatim; the
    schema is intact; bulk delete by those ids deletes exactly them."""
    for n, text in enumerate(HOSTILE):
        world.client.start_orchestration(text, "IdEcho", text)
        world.client.start_orchestration(f"by-{n}", "Plain", n)
    world.run()
    for text in HOSTILE:
        world.client.raise_event(text, text, text)
    world.run()
    for n, text in enumerate(HOSTILE):
        st = world.status(text)
        assert (st.status, st.output) == ("Completed", {"id": text, "activity": text, "event": text}), (text, st)
        assert st.custom_status == text
        assert world.client.get_kv_value(text, text) == text and world.client.get_kv_all_values(text) == {text: text}
        assert world.client.get_instance_info(text).instance_id == text
        assert check_well_formed(text, 1, world.provider.read(text)) == []
        assert world.status(f"by-{n}").output == n
    assert set(HOSTILE) <= set(world.client.list_all_instances())
    world.provider._check()
    result = world.provider.delete_instance_bulk(InstanceFilter(instance_ids=HOSTILE[:3]))
    assert result.instances_deleted == 3
    left = set(world.client.list_all_instances())
    assert not left & set(HOSTILE[:3]) and set(HOSTILE[3:]) <= left and {f"by-{n}" for n in range(5)} <= left


def test_nul_in_provider_arguments_is_a_permanent_provider_error(pg_schema, opened):
    """PostgreSQL text cannot hold NUL: every entry point refuses it with a permanent
    ProviderError (never a raw psycopg error) and nothing changes."""
    p = opened(pg_schema("nul"))
    create(p, "keep")
    bad = "nul\x00inside"
    calls = {
        "read": lambda: p.read(bad),
        "read_with_execution": lambda: p.read_with_execution(bad, 1),
        "latest_execution_id": lambda: p.latest_execution_id(bad),
        "read_status": lambda: p.read_status(bad),
        "get_kv_value": lambda: p.get_kv_value("keep", bad),
        "get_kv_all_values": lambda: p.get_kv_all_values(bad),
        "enqueue_for_orchestrator": lambda: p.enqueue_for_orchestrator(start_item(bad)),
        "get_instance_info": lambda: p.get_instance_info(bad),
        "delete_instance": lambda: p.delete_instance(bad, True),
        "abandon_orchestration_item": lambda: p.abandon_orchestration_item(bad),
    }
    for op, call in calls.items():
        with pytest.raises(ProviderError) as err:
            call()
        assert err.value.retryable is False and "NUL" in str(err.value), op
    assert p.list_instances() == ["keep"] and p.get_queue_depths().orchestrator_queue == 0
    p._check()


def test_lone_surrogates_are_duroxide_errors_not_unicode_errors(pg_schema, opened):
    """BUG: a lone surrogate (e.g. from os.fsdecode / surrogateescape) in an instance id or KV
    key reaching the provider escapes as a raw ``UnicodeEncodeError`` from psycopg's encoder
    (postgres.py ``_tx``/``_probe`` catch only ``psycopg.Error``). Expected: an
    InvalidInputError/ProviderError (a DuroxideError) saying the text is not valid Unicode; a
    failed ack keeps the lock and changes nothing."""
    p = opened(pg_schema("sur"))
    create(p, "a")
    bad = "sur\udc80rogate"
    for call in (lambda: p.read(bad), lambda: p.latest_execution_id(bad), lambda: p.read_status(bad),
                 lambda: p.get_kv_value("a", bad), lambda: p.enqueue_for_orchestrator(start_item(bad))):
        with pytest.raises(DuroxideError, match="(?i)unicode|surrogate"):
            call()
    p.enqueue_for_orchestrator(start_item("a"))
    item = fetch(p)
    with pytest.raises(DuroxideError, match="(?i)unicode|surrogate"):
        p.ack_orchestration_item(item.lock_token, 1, [kv_set("a", 2, bad, "v")], [], [], ExecutionMetadata())
    p.ack_orchestration_item(item.lock_token, 1, [kv_set("a", 2, "k", "v")], [], [], ExecutionMetadata())
    assert p.get_kv_value("a", "k") == "v"


def test_client_refuses_surrogate_names_before_they_reach_postgres(world):
    """BUG: ``Client._check_name`` (runtime/client.py) accepts event / queue / orchestration
    names holding a lone surrogate; ``events.dumps`` keeps it (ensure_ascii=False) and psycopg's
    UTF-8 encoder raises a raw UnicodeEncodeError out of raise_event / enqueue_event /
    start_orchestration. Expected: InvalidInputError naming the argument, nothing enqueued."""
    world.client.start_orchestration("target", "Plain", 1)
    world.run()
    before = _queued(world)
    for call in (lambda: world.client.raise_event("target", "ev\udc80", 1),
                 lambda: world.client.enqueue_event("target", "q\udc80", 1),
                 lambda: world.client.start_orchestration("new", "Name\udc80", 1)):
        with pytest.raises(InvalidInputError, match="(?i)unicode|surrogate"):
            call()
    assert _queued(world) == before


def test_nul_in_an_orchestration_name_does_not_livelock(world):
    """BUG (livelock): ``start_orchestration(id, "Nul\\x00Name")`` is accepted by the Client
    (``_check_name`` only checks non-empty); every ack of the first turn fails permanently on
    ``instances.orchestration_name`` (PostgreSQL text cannot hold NUL); the dispatcher's
    ``_commit_infrastructure_failure`` (runtime/dispatchers.py) abandons when the fetched history
    is empty, and the poison turn carries the same name, so the instance is fetched and
    abandoned forever (SQLite completes it). Expected: refused up front with InvalidInputError
    naming the NUL, or the instance ends Failed with an error naming it."""
    try:
        world.client.start_orchestration("nul-name", "Nul\x00Name", 1)
    except InvalidInputError as exc:
        assert "NUL" in str(exc)
        return
    world.run()  # StuckError today: no quiescence after 400 steps
    st = world.status("nul-name")
    assert st.status in ("Completed", "Failed"), st
    if st.status == "Failed":
        assert "NUL" in st.error


@pytest.mark.parametrize("text", ["bad\x00thing", "\x00", "\ufdd0duroxide-json:\"not json", "a\x00\ufdd0duroxide-json:\\"],
                         ids=["nul", "only-nul", "escape-marker", "both"])
@pytest.mark.parametrize("fail", [True, False], ids=["failed", "completed"])
def test_verbatim_text_with_nul_round_trips(world, pg_url, text, fail):
    """BUG: PostgreSQL ``text`` cannot hold NUL, so an orchestration whose error message, custom
    status or KV value contained one could not be committed: the instance ended with an
    infrastructure error instead of its own failure (SQLite and memory keep the text). Now those
    columns store such text escaped and every read returns it as written; text that merely looks
    like the escape is escaped too, so it cannot be mistaken for it."""
    world.client.start_orchestration("vt", "VerbatimText", {"n": 0, "text": text, "fail": fail})
    world.run()
    st = world.status("vt")
    if fail:
        assert st.status == "Failed" and text in st.error, st
    else:
        assert st.status == "Completed" and st.output == text, st
    assert st.custom_status == text
    assert world.client.get_kv_value("vt", "k") == text
    assert world.provider.get_kv_all_values("vt") == {"k": world.provider.get_kv_value("vt", "k")}
    info = world.provider.get_instance_info("vt")
    assert info.current_execution_id == 2 and info.output == world.provider.get_execution_info("vt", 2).output
    assert info.output == world.provider.read_status("vt")[1]
    if fail:
        assert text in info.output
    first = world.provider.get_execution_info("vt", 1)
    assert first.status == "ContinuedAsNew"
    # What the columns hold: never NUL, and the marker only as the escape.
    with psycopg.connect(pg_url) as conn:
        conn.execute(f'SET search_path TO "{world.provider.schema}"')
        status_col, = conn.execute("SELECT custom_status FROM instances WHERE instance_id = 'vt'").fetchone()
    assert "\x00" not in status_col and status_col.startswith("\ufdd0duroxide-json:")


def test_nul_in_a_kv_key_set_in_the_first_turn_fails_with_a_clear_error(world):
    """BUG: a permanent ack failure in a FIRST turn (here a KV key with NUL) is not turned into a
    failure naming the problem: ``_commit_infrastructure_failure`` abandons (fetched history is
    empty), the instance is re-fetched until max_attempts and ends ``poison: orchestration ...
    exceeded 4 attempts`` - the cause is lost. The same code in a later turn fails with the
    infrastructure error naming NUL (checked below); bystanders are unaffected."""
    world.client.start_orchestration("kv-first", "KvFirst", "k\x00")
    world.client.start_orchestration("kv-later", "KvLater", "k\x00")
    world.client.start_orchestration("by", "Plain", 5)
    world.run()
    later = world.status("kv-later")
    assert later.status == "Failed" and "NUL" in later.error
    assert world.status("by").output == 5
    first = world.status("kv-first")
    assert first.status == "Failed" and "NUL" in first.error, first.error


# --- oversized data ------------------------------------------------------------------------------------


def test_program_limit_errors_are_permanent():
    """BUG: SQLSTATE class 54 (program_limit_exceeded, e.g. 'index row size 2832 exceeds btree
    version 4 maximum 2704') is a psycopg ``OperationalError``, so ``_map_error`` (postgres.py,
    the OperationalError branch) reports it as a *retryable* 'connection ... failed'. Retrying
    can never help; the runtime then retries acks 6 times per turn and fetches forever."""
    provider = PostgresProvider.__new__(PostgresProvider)  # only _map_error's inputs are needed
    provider._password, provider._where, provider._pool_timeout_s = None, "h:1/db as user 'u'", 1.0
    provider._pool, provider._closed = None, True
    mapped = provider._map_error(pg_errors.ProgramLimitExceeded("index row size 2832 exceeds btree version 4 "
                                                                "maximum 2704 for index \"idx_orch_instance\""), "op")
    assert isinstance(mapped, ProviderError) and mapped.retryable is False
    assert "connection" not in str(mapped)


def test_a_long_kv_key_is_not_retried_into_poison(world):
    """BUG: a KV key of 3,000 random characters (SQLite stores it) fails every ack on
    ``kv_delta_pkey`` with a *retryable* error; the dispatcher retries each ack 6 times, abandons,
    and the instance ends ``poison: ... exceeded 4 attempts``, a message that hides the cause.
    Since KV keys are limited to 1024 bytes where the code writes them (``MAX_KV_KEY_BYTES``,
    the same on every provider) the write raises a ValueError naming the limit; unhandled, it
    fails the orchestration with that message. A key at the limit (1024 incompressible bytes,
    multi-byte characters included) is stored and read back."""
    key = _noise(3_000, seed=7)
    world.client.start_orchestration("long-key", "KvLater", key)
    world.run()
    st = world.status("long-key")
    assert st.status == "Failed" and "poison" not in st.error, st.error
    assert "KV keys are limited to 1024 bytes" in st.error, st.error
    at_limit = _noise(1_000, seed=8) + "\u00e9" * 12  # 1,024 UTF-8 bytes
    assert len(at_limit.encode()) == 1_024
    world.client.start_orchestration("limit-key", "KvLater", at_limit)
    world.run()
    assert world.status("limit-key").status == "Completed", world.status("limit-key").error
    assert world.client.get_kv_value("limit-key", at_limit) == "v"


def test_multi_mib_payloads_round_trip(world):
    """An 8 MiB input, the same value echoed by an activity and returned, a 3 MiB event: stored
    and delivered intact through PostgreSQL (the codec's 16 MiB limit is the only limit)."""
    big = "x" * (8 * 1024 * 1024)
    world.client.start_orchestration("big", "Plain", big)
    world.client.start_orchestration("waiter", "IdEcho", "k")
    world.run()
    world.client.raise_event("waiter", "k", "e" * (3 * 1024 * 1024))
    world.run()
    assert world.status("big").output == big
    assert len(world.status("waiter").output["event"]) == 3 * 1024 * 1024
    assert _queued(world) == (0, 0)


# --- schemas and URLs ------------------------------------------------------------------------------------


def test_hostile_schema_names_are_separate_stores(pg_url, schemas, opened):
    """Upper/lower case variants, spaces, %-placeholders, a dot and a 63-byte multibyte name are
    each their own schema (quoted identifiers, case kept) with their own data and channel."""
    names = [schemas(n) for n in (f"Case_{_UID}", f"case_{_UID}", f" sp ace {_UID} ", f"%s%(x)s_{_UID}",
                                  f"a.b_{_UID}", "é" * 28 + f"{_UID}")]
    assert len(names[-1].encode()) <= 63
    providers = [opened(n) for n in names]
    for n, p in enumerate(providers):
        create(p, f"only-in-{n}")
    for n, p in enumerate(providers):
        assert p.list_instances() == [f"only-in-{n}"]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        found = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", (names,))}
    assert found == set(names)


def test_concurrent_opens_of_a_quoted_mixed_case_schema_migrate_once(pg_url, schemas, opened):
    schema = schemas(f'Mi"xed Case;{_UID}')
    out: list[Any] = []
    barrier = threading.Barrier(4)

    def go() -> None:
        barrier.wait()
        try:
            out.append(opened(schema))
        except BaseException as exc:  # noqa: BLE001 - reported below
            out.append(exc)

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert all(isinstance(p, PostgresProvider) for p in out) and len(out) == 4, out
    assert sorted(p._open_id for p in out) == [1, 2, 3, 4]


def test_a_schema_name_with_a_lone_surrogate_is_invalid_input(pg_url):
    """BUG: ``_check_schema_name`` (postgres.py) calls ``schema.encode("utf-8")`` unguarded, so a
    lone surrogate escapes as a raw UnicodeEncodeError instead of InvalidInputError."""
    with pytest.raises(InvalidInputError):
        PostgresProvider.connect_with_schema(pg_url, "s\udc80")


def _other_app(pg_url: str, schema: str, statements: list[str]) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("CREATE SCHEMA {}").format(psycopg.sql.Identifier(schema)))
        conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
        for statement in statements:
            conn.execute(statement)


def _tables(pg_url: str, schema: str) -> dict[str, list]:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = %s "
                                            "ORDER BY table_name", (schema,))]
        return {n: conn.execute(psycopg.sql.SQL("SELECT * FROM {}.{} ORDER BY 1").format(
            psycopg.sql.Identifier(schema), psycopg.sql.Identifier(n))).fetchall() for n in names}


OTHER_APPS = {
    "versioned": ["CREATE TABLE schema_version (version INTEGER PRIMARY KEY)", "INSERT INTO schema_version VALUES (1)",
                  "CREATE TABLE instances (id INTEGER, secret TEXT)", "INSERT INTO instances VALUES (1, 'keep')"],
    "unversioned": ["CREATE TABLE instances (id INTEGER, secret TEXT)", "INSERT INTO instances VALUES (1, 'keep')"],
    "text-version": ["CREATE TABLE schema_version (version TEXT, note TEXT)", "INSERT INTO schema_version VALUES ('1.0', 'x')"],
}


@pytest.mark.parametrize("app", list(OTHER_APPS))
def test_another_applications_schema_is_refused_untouched(pg_url, schemas, app):
    """Opening a schema that belongs to another application fails permanently and changes
    nothing in it (the migration is one transaction)."""
    schema = schemas(f"other_{app}_{_UID}")
    _other_app(pg_url, schema, OTHER_APPS[app])
    before = _tables(pg_url, schema)
    with pytest.raises(ProviderError) as err:
        PostgresProvider.connect_with_schema(pg_url, schema)
    assert err.value.retryable is False and err.value.operation == "open"
    assert _tables(pg_url, schema) == before


def test_another_applications_schema_error_names_the_schema(pg_url, schemas):
    """BUG (unclear error): a schema holding another application's ``schema_version`` (version
    1) is taken for a migrated duroxide schema; the open then fails with 'relation
    "provider_meta" does not exist' - naming neither the schema nor the problem. Expected: a
    message naming the schema and saying it is not a duroxide_sim schema (``_migrate``: check
    for provider_meta / a duroxide marker before trusting schema_version)."""
    schema = schemas(f"other_named_{_UID}")
    _other_app(pg_url, schema, OTHER_APPS["versioned"])
    with pytest.raises(ProviderError) as err:
        PostgresProvider.connect_with_schema(pg_url, schema)
    assert repr(schema) in str(err.value) or schema in str(err.value), str(err.value)


def test_silent_server_and_unresolvable_host_fail_in_bounded_time():
    """A port that accepts TCP and never answers, and a name that does not resolve: retryable
    ProviderErrors naming host and port, within a few seconds, never the password."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[Any] = []

    done = threading.Event()
    server.settimeout(0.05)

    def accept() -> None:
        while not done.is_set() and len(held) < 4:
            try:
                held.append(server.accept())
            except OSError:  # the accept timeout, or the socket closed at the end of the test
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    port = server.getsockname()[1]
    try:
        for url, where in ((f"postgresql://u:s3cret-pw@127.0.0.1:{port}/db", f"127.0.0.1:{port}/db"),
                           ("postgresql://u:s3cret-pw@no-such-host.invalid:5432/db", "no-such-host.invalid:5432/db")):
            began = time.monotonic()
            with pytest.raises(ProviderError) as err:
                PostgresProvider.connect(url, connect_timeout_s=1)
            assert time.monotonic() - began < 8
            assert err.value.retryable is True and where in str(err.value) and "s3cret-pw" not in str(err.value)
    finally:
        done.set()
        acceptor.join(5)
        server.close()
        for conn, _ in held:
            conn.close()


def test_wrong_option_types_are_invalid_input(pg_url):
    """BUG (minor): ``connect_timeout_s="abc"`` / ``max_connections="many"`` escape as raw
    TypeError/ValueError from ``int(round(...))`` in ``PostgresProvider.__init__``. Expected:
    InvalidInputError naming the option."""
    with pytest.raises(InvalidInputError, match="connect_timeout_s"):
        PostgresProvider.connect(pg_url, connect_timeout_s="abc")
    with pytest.raises(InvalidInputError, match="max_connections"):
        PostgresProvider.connect(pg_url, max_connections="many")


# --- bulk management with hostile filters ------------------------------------------------------------------


def test_bulk_delete_and_prune_with_hostile_ids_touch_exactly_those(pg_schema, opened):
    p = opened(pg_schema("bulk"))
    for text in [*HOSTILE, "keep"]:
        p.enqueue_for_orchestrator(start_item(text))
        item = fetch(p)
        p.ack_orchestration_item(item.lock_token, 1, [started(text), can_ev(text, 2, 1, "n")], [], [],
                                 ExecutionMetadata(status="ContinuedAsNew", output="n", orchestration_name="Orch"))
        p.enqueue_for_orchestrator(attrs.evolve(start_item(text), input="n"))
        item = fetch(p)
        p.ack_orchestration_item(item.lock_token, 2, [started(text, execution=2), completed_ev(text, 2, 2)], [], [],
                                 ExecutionMetadata(status="Completed", output="done", orchestration_name="Orch"))
    pruned = p.prune_executions_bulk(InstanceFilter(instance_ids=[HOSTILE[0], HOSTILE[3], "nope'; --"]),
                                     PruneOptions(keep_last=1))
    assert (pruned.instances_processed, pruned.executions_deleted) == (2, 2)
    assert p.list_executions(HOSTILE[0]) == [2] and p.list_executions(HOSTILE[1]) == [1, 2]
    assert p.prune_executions_bulk(InstanceFilter(limit=0), PruneOptions(keep_last=0)).instances_processed == 0
    deleted = p.delete_instance_bulk(InstanceFilter(instance_ids=HOSTILE[1:], completed_before=2**62))
    assert deleted.instances_deleted == len(HOSTILE) - 1
    assert sorted(p.list_instances()) == sorted([HOSTILE[0], "keep"])
    with pytest.raises(InvalidInputError):
        InstanceFilter(instance_ids="'; DROP TABLE instances; --")
    p._check()


# --- import_history ---------------------------------------------------------------------------------------


def _ex1(i: str) -> list:
    return [started(i, 1), kv_set(i, 2, "k", "old"), status_ev(i, 3, "s1"), can_ev(i, 4, 1, "next")]


def _ex2(i: str) -> list:
    import attrs

    return [started(i, 1, execution=2), attrs.evolve(kv_set(i, 2, "k", "new", ts=9), execution_id=2),
            attrs.evolve(status_ev(i, 3, "s2"), execution_id=2), completed_ev(i, 4, 2, "done")]


def test_import_with_executions_out_of_order_matches_the_ordered_import(pg_schema, opened):
    """BUG: ``import_history`` applies executions in the order given (postgres.py import_history:
    KV merged and custom status set per execution in list order), so [(2, ...), (1, ...)] leaves
    execution 1's stale KV value 'old' and custom status 's1' as the instance's current state.
    (``import_documents`` sorts, but the provider method is public.) Expected: the same state
    as the ordered import, or a refusal naming the order; never a silently different state."""
    p = opened(pg_schema("imp"))
    p.import_history("ordered", [(1, _ex1("ordered")), (2, _ex2("ordered"))])
    try:
        p.import_history("shuffled", [(2, _ex2("shuffled")), (1, _ex1("shuffled"))])
    except (ProviderError, InvalidInputError) as exc:
        assert "order" in str(exc)
        assert p.latest_execution_id("shuffled") is None
        return
    assert p.get_kv_value("shuffled", "k") == p.get_kv_value("ordered", "k") == "new"
    assert p.read_status("shuffled") == p.read_status("ordered")


@pytest.mark.parametrize("case", ["other-instance", "execution-mismatch", "execution-zero"])
def test_import_refuses_events_that_do_not_belong_to_the_target(pg_schema, opened, case):
    """BUG: events whose ``instance_id`` names another instance, or whose ``execution_id``
    differs from the execution they are imported as (or execution id 0), are stored verbatim
    under the target (postgres.py import_history / _shared.imported_execution check only that
    the first event is OrchestrationStarted). Expected: ProviderError/InvalidInputError, nothing
    written."""
    p = opened(pg_schema("impbad"))
    executions = {"other-instance": [(1, _ex1("someone-else"))],
                  "execution-mismatch": [(5, _ex1("mine"))],
                  "execution-zero": [(0, [started("mine", 1, execution=0), completed_ev("mine", 2, 0)])]}[case]
    with pytest.raises((ProviderError, InvalidInputError)):
        p.import_history("mine", executions)
    assert p.latest_execution_id("mine") is None and p.list_instances() == []


def test_import_documents_names_the_instance_postgres_refuses(pg_schema, opened, tmp_path):
    """Data SQLite holds and PostgreSQL cannot (an incompressible instance id over PostgreSQL's
    ~2.7 KB index rows) is refused by PostgresProvider.import_history with a permanent error
    naming the problem; each instance is its own transaction (documented in import_documents),
    so the instances before it stay. A KV value with NUL, which PostgreSQL once refused too,
    now imports and reads back unchanged."""
    from duroxide_sim.providers.sqlite import SqliteProvider
    from duroxide_sim.runtime.history_io import export_to_path, import_documents, load_documents

    long_id = "c-" + _noise(4000)
    source = SqliteProvider.open(str(tmp_path / "src.db"), clock=SimClock())
    try:
        source.import_history("a-good", [(1, [started("a-good"), completed_ev("a-good", 2)])])
        source.import_history("b-nul", [(1, [started("b-nul"), kv_set("b-nul", 2, "k", "a\x00b"),
                                             completed_ev("b-nul", 3)])])
        source.import_history(long_id, [(1, [started(long_id), completed_ev(long_id, 2)])])
        docs = load_documents(export_to_path(source, tmp_path / "out")[0].parent)
    finally:
        source.close()
    docs.sort(key=lambda d: d["instance_id"])
    target = opened(pg_schema("impdocs"))
    with pytest.raises(DuroxideError) as err:
        import_documents(target, docs)
    assert "too large" in str(err.value) and getattr(err.value, "retryable", False) is False
    assert sorted(target.list_instances()) == ["a-good", "b-nul"]
    assert target.get_kv_value("b-nul", "k") == "a\x00b"


# --- connections killed under the provider ----------------------------------------------------------------


class _TrackedProvider(PostgresProvider):
    """Records the backend pid of every pool connection it opens (to kill them)."""

    def _configure_connection(self, conn: Any) -> None:
        super()._configure_connection(conn)
        self.__dict__.setdefault("pids", set()).add(conn.info.backend_pid)


def _kill(pg_url: str, pids: set[int]) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)", (list(pids),))


def test_killed_idle_connections_give_retryable_errors_then_recover(pg_url, pg_schema, opened):
    p = opened(pg_schema("kill"), cls=_TrackedProvider, min_connections=2)
    create(p, "a")
    _kill(pg_url, set(p.pids))
    outcomes: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            assert [e.event_id for e in p.read("a")] == [1]
            outcomes.append("ok")
            if outcomes[-3:] == ["ok"] * 3:
                break
        except ProviderError as exc:
            assert exc.retryable is True, exc
            outcomes.append("retryable")
    assert outcomes[-3:] == ["ok"] * 3 and outcomes.count("retryable") <= 2, outcomes
    p._check()


def test_connection_killed_in_the_middle_of_an_ack_changes_nothing(pg_url, pg_schema, opened, monkeypatch):
    """The backend is terminated after the ack sent its first writes, before COMMIT: a retryable
    ProviderError, nothing of the ack stored, the lock still held; the same ack then succeeds."""
    from duroxide_sim.providers import postgres as pgmod

    p = opened(pg_schema("midack"))
    create(p, "a")
    p.enqueue_for_orchestrator(start_item("a"))
    item = fetch(p)
    original = pgmod._Db.executemany
    fired: list[int] = []

    def executemany(self, query, rows):
        if not fired and query.startswith("INSERT INTO history"):
            fired.append(self.conn.info.backend_pid)
            _kill(pg_url, {self.conn.info.backend_pid})
        return original(self, query, rows)

    monkeypatch.setattr(pgmod._Db, "executemany", executemany)
    delta = [kv_set("a", 2, "k", "v"), completed_ev("a", 3)]
    md = ExecutionMetadata(status="Completed", output="o", orchestration_name="Orch")
    with pytest.raises(ProviderError) as err:
        p.ack_orchestration_item(item.lock_token, 1, delta, [], [], md)
    assert fired and err.value.retryable is True
    assert [e.event_id for e in p.read("a")] == [1] and p.get_kv_value("a", "k") is None
    p.ack_orchestration_item(item.lock_token, 1, delta, [], [], md)
    assert p.read_status("a")[:2] == ("Completed", "o") and p.get_kv_value("a", "k") == "v"
    p._check()


def _wait_tolerantly(client: Client, instance: str, seconds: float) -> Any:
    """client.wait_for_orchestration, retrying its retryable ProviderErrors (see the next test)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return client.wait_for_orchestration(instance, 1_000)
        except (ProviderError, OperationTimeout) as exc:
            if isinstance(exc, ProviderError) and not exc.retryable or time.monotonic() > deadline:
                raise


def test_client_wait_rides_over_a_killed_connection(pg_url, pg_schema, opened):
    """BUG: ``Client._wait`` (runtime/client.py) lets the first *retryable* ProviderError escape:
    after a server restart / killed connection, ``wait_for_orchestration(id, 5000)`` on an
    instance that is already Completed raises 'terminating connection due to administrator
    command' at once instead of retrying within its timeout (the pool has a fresh connection
    a moment later). Expected: the Completed result."""
    p = opened(pg_schema("killwait"), cls=_TrackedProvider)
    p.enqueue_for_orchestrator(start_item("done"))
    item = fetch(p)
    p.ack_orchestration_item(item.lock_token, 1, [started("done"), completed_ev("done", 2, output='"ok"')], [], [],
                             ExecutionMetadata(status="Completed", output='"ok"', orchestration_name="Orch"))
    client = Client(p)
    _kill(pg_url, set(p.pids))
    st = client.wait_for_orchestration("done", 5_000)
    assert (st.status, st.output) == ("Completed", "ok")


@pytest.mark.realtime
def test_runtime_survives_every_connection_being_killed_mid_run(pg_url, pg_schema, opened):
    """A real Runtime with 6 orchestrations under way; every connection of the provider (pool and
    LISTEN) is terminated twice: all complete with the right outputs, each activity applied once."""
    from duroxide_sim.runtime.realtime import SystemClock

    p = opened(pg_schema("killrt"), clock=SystemClock(), cls=_TrackedProvider, pool_timeout_s=2)
    rt = Runtime(p, RuntimeOptions(dispatcher_poll_interval_ms=20, orchestrator_lock_timeout_ms=2_000,
                                   worker_lock_timeout_ms=2_000))
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def steps(ctx, x):
        for _ in range(5):
            x = yield ctx.schedule_activity("inc", x)
            yield ctx.schedule_timer(40)
        return x

    rt.register_orchestration("Steps", steps)
    client = Client(p)
    rt.start()
    try:
        ids = [f"k{i}" for i in range(6)]
        for n, instance in enumerate(ids):
            client.start_orchestration(instance, "Steps", n * 10)
        for _ in range(2):
            time.sleep(0.25)
            listen = p._listen_conn
            _kill(pg_url, set(p.pids) | ({listen.info.backend_pid} if listen is not None else set()))
        for n, instance in enumerate(ids):
            st = _wait_tolerantly(client, instance, 30)
            assert (st.status, st.output) == ("Completed", n * 10 + 5), (instance, st)
            history = p.read(instance)
            assert check_well_formed(instance, 1, history) == []
            assert sum(type(e).__name__ == "ActivityCompleted" for e in history) == 5
    finally:
        rt.shutdown(2_000)
    p._check()
