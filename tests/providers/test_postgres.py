"""PostgresProvider: the conformance suite on PostgreSQL, plus what only a server has - URLs and
credentials, schemas and migrations, LISTEN/NOTIFY wake-ups across provider objects, error
mapping, and a server outage in the middle of a running Runtime.

The server: ``$DUROXIDE_PG_URL`` (``.ci/run`` starts one), else a private server started on
first use (``tests/pg_server.py``). Every test works in its own schema, dropped afterwards. The
outage test always starts its own server, since it stops and restarts it.
"""

from __future__ import annotations

import logging
import threading
import time

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import PoolTimeout

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.errors import InvalidInputError, ProviderError
from duroxide_sim.providers import postgres_schema
from duroxide_sim.providers.base import ExecutionMetadata
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.sim.checkers import check_well_formed
from duroxide_sim.testing.conformance import *  # noqa: F403 - the suite: test classes + fixtures
from duroxide_sim.testing.conformance import ConformanceClock, act, create, fetch, kv_set, start_item
from tests.pg_server import PgServer, free_port


@pytest.fixture
def conformance_provider_factory(pg_url, pg_schema):
    def make():
        clock = ConformanceClock()
        return PostgresProvider.connect_with_schema(pg_url, pg_schema("conf"), clock=clock), clock

    return make




def _url(base: str, **changes: str) -> str:
    """``base`` rebuilt as a postgresql:// URL with some parts changed."""
    parts = {**conninfo_to_dict(base), **changes}
    return (f"postgresql://{parts['user']}:{parts['password']}@{parts.get('host', '127.0.0.1')}:"
            f"{parts.get('port', '5432')}/{parts['dbname']}")


# --- opening: URLs, credentials, schemas, migrations -----------------------------------------------


class TestOpen:
    def test_wrong_password_is_a_clear_error_without_the_password(self, pg_url):
        bad = _url(pg_url, password="not-the-Secret-42")
        with pytest.raises(ProviderError) as err:
            PostgresProvider.connect(bad)
        text = str(err.value)
        params = conninfo_to_dict(pg_url)
        assert err.value.operation == "open" and err.value.retryable is False
        assert "cannot connect to PostgreSQL" in text and "password authentication failed" in text
        assert f"{params['host']}:{params['port']}/{params['dbname']}" in text and repr(params["user"]) in text
        assert "not-the-Secret-42" not in text and "not-the-Secret-42" not in repr(err.value.__dict__)

    def test_unknown_database_names_it(self, pg_url):
        with pytest.raises(ProviderError) as err:
            PostgresProvider.connect(_url(pg_url, dbname="no_such_db_xyz"))
        assert "no_such_db_xyz" in str(err.value) and "does not exist" in str(err.value)
        assert err.value.retryable is False

    def test_nothing_listening_is_retryable_and_names_the_host(self, pg_url):
        port = str(free_port())
        started_at = time.monotonic()
        with pytest.raises(ProviderError) as err:
            PostgresProvider.connect(_url(pg_url, port=port, password="pw-that-must-not-leak"))
        assert time.monotonic() - started_at < 30
        text = str(err.value)
        assert f"127.0.0.1:{port}/" in text and "pw-that-must-not-leak" not in text
        assert err.value.retryable is True

    def test_malformed_url_does_not_echo_it(self):
        with pytest.raises(ProviderError) as err:
            PostgresProvider.connect("postgresql://u:hunter2-secret@127.0.0.1:notaport/db?bogus_option=1")
        assert "invalid PostgreSQL connection URL" in str(err.value) and "hunter2" not in str(err.value)
        with pytest.raises(InvalidInputError):
            PostgresProvider.connect("")

    @pytest.mark.parametrize("bad", ["", "pg_things", "x" * 64, "a\x00b", None])
    def test_bad_schema_names_are_refused(self, pg_url, bad):
        with pytest.raises(InvalidInputError):
            PostgresProvider.connect_with_schema(pg_url, bad)

    def test_connect_uses_public_and_schemas_are_isolated(self, pg_url, pg_schema, opened):
        weird = pg_schema('We"ird; DROP TABLE x; --')  # quoted safely as an identifier
        a, b = opened(weird), opened(pg_schema("other"))
        create(a, "inst")
        assert a.list_instances() == ["inst"] and b.list_instances() == [] and b.read("inst") == []
        with psycopg.connect(pg_url, autocommit=True) as conn:
            tables = {r[0] for r in conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (weird,))}
        assert {"instances", "history", "orchestrator_queue", "worker_queue", "instance_locks", "schema_version"} <= tables
        public = PostgresProvider.connect(pg_url, clock=ConformanceClock())
        try:
            assert public.schema == "public" and "inst" not in public.list_instances()
        finally:
            public.close()

    def test_reopen_keeps_data_and_allocates_new_tokens(self, pg_schema, opened):
        schema = pg_schema("reopen")
        first = opened(schema)
        create(first, "a")
        first.enqueue_for_orchestrator(start_item("b"))
        token1 = fetch(first).lock_token
        first.close()
        second = opened(schema)
        assert [e.event_id for e in second.read("a")] == [1]
        second.enqueue_for_orchestrator(start_item("c"))
        assert fetch(second).lock_token.split("-")[1] != token1.split("-")[1]  # open ids differ

    def test_concurrent_opens_of_a_new_schema_migrate_once(self, pg_url, pg_schema, opened):
        schema = pg_schema("race")
        providers: list[PostgresProvider] = []
        errors: list[BaseException] = []
        barrier = threading.Barrier(6)

        def open_it() -> None:
            barrier.wait()
            try:
                providers.append(opened(schema))
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=open_it) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [] and len(providers) == 6
        assert sorted(p._open_id for p in providers) == [1, 2, 3, 4, 5, 6]
        with psycopg.connect(pg_url, autocommit=True) as conn:
            versions = conn.execute(f'SELECT version FROM "{schema}".schema_version').fetchall()
        assert versions == [(postgres_schema.SCHEMA_VERSION,)]

    def test_newer_schema_version_is_refused(self, pg_url, pg_schema, opened):
        schema = pg_schema("newer")
        opened(schema).close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'INSERT INTO "{schema}".schema_version (version) VALUES (99)')
        with pytest.raises(ProviderError) as err:
            opened(schema)
        assert "schema version 99" in str(err.value) and err.value.retryable is False

    def test_a_planted_migration_is_applied_on_open(self, pg_url, pg_schema, opened, monkeypatch):
        schema = pg_schema("migrate")
        opened(schema).close()
        extra = (postgres_schema.SCHEMA_VERSION + 1, ("CREATE TABLE planted (x INTEGER)",))
        monkeypatch.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS + (extra,))
        monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", extra[0])
        opened(schema)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            assert conn.execute(f'SELECT MAX(version) FROM "{schema}".schema_version').fetchone()[0] == extra[0]
            conn.execute(f'SELECT * FROM "{schema}".planted')

    def test_no_clock_is_a_clear_error_until_bound(self, pg_url, pg_schema):
        provider = PostgresProvider.connect_with_schema(pg_url, pg_schema("clock"))
        try:
            with pytest.raises(ProviderError, match="no clock"):
                provider.enqueue_for_orchestrator(start_item("a"))
            provider.bind_clock(ConformanceClock())
            provider.enqueue_for_orchestrator(start_item("a"))
            assert fetch(provider).instance == "a"
        finally:
            provider.close()
        with pytest.raises(ProviderError, match="closed"):
            provider.list_instances()


# --- errors ------------------------------------------------------------------------------------------


class TestErrors:
    @pytest.mark.parametrize(("exc", "retryable"), [
        (pg_errors.UniqueViolation("duplicate key"), False),
        (pg_errors.SerializationFailure("could not serialize"), True),
        (pg_errors.DeadlockDetected("deadlock detected"), True),
        (pg_errors.AdminShutdown("terminating connection due to administrator command"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.InterfaceError("the connection is closed"), True),
        (PoolTimeout("couldn't get a connection after 10.00 sec"), True),
        (pg_errors.UndefinedTable("relation does not exist"), False),
        (psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes"), False),
    ])
    def test_error_mapping(self, pg_schema, opened, exc, retryable):
        provider = opened(pg_schema("errors"))
        mapped = provider._map_error(exc, "op")
        assert isinstance(mapped, ProviderError) and mapped.retryable is retryable and mapped.operation == "op"

    def test_nul_in_a_kv_key_is_a_permanent_error_and_changes_nothing(self, pg_schema, opened):
        provider = opened(pg_schema("nul"))
        create(provider, "a")
        provider.enqueue_for_orchestrator(start_item("a"))
        item = fetch(provider)
        with pytest.raises(ProviderError) as err:
            provider.ack_orchestration_item(item.lock_token, 1, [kv_set("a", 2, "bad\x00key", "v")], [], [],
                                            ExecutionMetadata())
        assert err.value.retryable is False
        assert provider.get_kv_all_values("a") == {} and [e.event_id for e in provider.read("a")] == [1]

    def test_nul_in_a_kv_value_is_stored_escaped_and_read_back_unchanged(self, pg_schema, opened):
        """PostgreSQL text cannot hold NUL; KV values (like outputs and custom statuses) are kept
        verbatim, so such a value is stored escaped (test_postgres_hostile.py covers the rest)."""
        provider = opened(pg_schema("nulv"))
        create(provider, "a")
        provider.enqueue_for_orchestrator(start_item("a"))
        item = fetch(provider)
        provider.ack_orchestration_item(item.lock_token, 1, [kv_set("a", 2, "k", "bad\x00value")], [], [],
                                        ExecutionMetadata())
        assert provider.get_kv_value("a", "k") == "bad\x00value"
        assert provider.get_kv_all_values("a") == {"k": "bad\x00value"}


# --- several provider objects (processes) on one schema ------------------------------------------------


class TestSharedSchema:
    def test_expired_lock_taken_over_by_another_object_and_stale_ack_fails(self, pg_schema, opened):
        """Two provider objects (two processes) on one schema and clock: after expiry the second
        takes the instance over; the first one's ack and renewal fail and change nothing."""
        from duroxide_sim.errors import LockLostError

        schema = pg_schema("takeover")
        clock = ConformanceClock()
        a, b = opened(schema, clock=clock), opened(schema, clock=clock)
        create(a, "x")
        a.enqueue_for_orchestrator(start_item("x"))
        first = a.fetch_orchestration_item(1_000)
        assert b.fetch_orchestration_item(1_000) is None  # locked
        clock.advance(1_000)
        second = b.fetch_orchestration_item(1_000)
        assert second.instance == "x" and second.attempt_count == 2 and second.lock_token != first.lock_token
        with pytest.raises(LockLostError):
            a.renew_orchestration_item_lock(first.lock_token, 1_000)
        with pytest.raises(LockLostError):
            a.ack_orchestration_item(first.lock_token, 1, [kv_set("x", 2, "k", "stale")], [], [], ExecutionMetadata())
        b.ack_orchestration_item(second.lock_token, 1, [kv_set("x", 2, "k", "fresh")], [], [], ExecutionMetadata())
        assert [e.event_id for e in a.read("x")] == [1, 2] and a.get_kv_value("x", "k") == "fresh"
        a._check()

    def test_many_objects_racing_fetch_each_instance_once(self, pg_schema, opened):
        """Eight provider objects (own pools) racing over 60 instances: each is fetched exactly once."""
        schema = pg_schema("race8")
        providers = [opened(schema) for _ in range(8)]
        for i in range(60):
            providers[0].enqueue_for_orchestrator(start_item(f"i{i:02}"))
        got: list[str] = []
        guard = threading.Lock()
        barrier = threading.Barrier(8)

        def run(p: PostgresProvider) -> None:
            barrier.wait()
            while (item := p.fetch_orchestration_item(30_000)) is not None:
                with guard:
                    got.append(item.instance)

        threads = [threading.Thread(target=run, args=(p,)) for p in providers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(got) == [f"i{i:02}" for i in range(60)]


# --- LISTEN / NOTIFY ---------------------------------------------------------------------------------


class TestNotify:
    def test_commits_wake_another_provider_objects_listener(self, pg_schema, opened):
        schema = pg_schema("notify")
        a, b = opened(schema), opened(schema)
        seen_a: list[str] = []
        seen_b: list[str] = []
        got = threading.Condition()

        def on_b(kind: str) -> None:
            with got:
                seen_b.append(kind)
                got.notify_all()

        a.add_wakeup_listener(seen_a.append)
        b.add_wakeup_listener(on_b)
        a.enqueue_for_orchestrator(start_item("x"))
        with got:
            assert got.wait_for(lambda: seen_b, timeout=10), "no NOTIFY reached the other provider"
        assert seen_b == ["orchestrator"]
        a.enqueue_for_worker(act("x", 1))
        with got:
            assert got.wait_for(lambda: len(seen_b) >= 2, timeout=10)
        assert seen_b == ["orchestrator", "worker"]
        time.sleep(0.5)  # nothing else arrives: a's own NOTIFYs are not echoed back to a
        assert seen_a == ["orchestrator", "worker"] and seen_b == ["orchestrator", "worker"]

    def test_idle_runtime_in_another_object_wakes_without_polling(self, pg_schema, opened):
        """A runtime polling only once a minute picks up work started through another provider
        object (another process, in production) at once: the NOTIFY wakes it."""
        schema = pg_schema("wake")
        from duroxide_sim.runtime.realtime import SystemClock

        worker_side = opened(schema, clock=SystemClock())
        client_side = opened(schema, clock=SystemClock())
        rt = Runtime(worker_side, RuntimeOptions(dispatcher_poll_interval_ms=60_000))
        rt.register_activity("inc", lambda ctx, x: x + 1)

        def twice(ctx, x):
            x = yield ctx.schedule_activity("inc", x)
            return (yield ctx.schedule_activity("inc", x))

        rt.register_orchestration("Twice", twice)
        rt.start()
        try:
            time.sleep(0.3)  # every dispatcher is idle, waiting out its 60 s poll interval
            client = Client(client_side)
            begin = time.monotonic()
            client.start_orchestration("w1", "Twice", 40)
            st = client.wait_for_orchestration("w1", 20_000)
            assert (st.status, st.output) == ("Completed", 42)
            assert time.monotonic() - begin < 10
        finally:
            rt.shutdown(2_000)


# --- outage ------------------------------------------------------------------------------------------


@pytest.fixture
def private_server():
    server = PgServer().start()
    yield server
    server.destroy()


def _register_outage_workload(rt: Runtime) -> None:
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def steps(ctx, x):
        for _ in range(6):
            x = yield ctx.schedule_activity("inc", x)
            yield ctx.schedule_timer(150)
        return x

    rt.register_orchestration("Steps", steps)


@pytest.mark.realtime
def test_server_outage_mid_run_backs_off_and_recovers(private_server, caplog):
    """Stop the server (pg_ctl stop -m fast) while a Runtime is mid-way through 8 orchestrations:
    operations fail with retryable ProviderErrors, the dispatchers back off; start it again and
    everything completes with the right outputs, each activity result applied exactly once."""
    caplog.set_level(logging.WARNING, logger="duroxide_sim.runtime")
    provider = PostgresProvider.connect_with_schema(private_server.url, "outage", pool_timeout_s=2)
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=20, orchestrator_lock_timeout_ms=3_000,
                                          worker_lock_timeout_ms=3_000))
    _register_outage_workload(rt)
    client = Client(provider)
    rt.start()
    try:
        ids = [f"o{i}" for i in range(8)]
        for n, instance in enumerate(ids):
            client.start_orchestration(instance, "Steps", n * 100)
        deadline = time.monotonic() + 30
        while min(len(provider.read(i)) for i in ids) < 4:  # every instance is under way
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert all(client.get_status(i).status == "Running" for i in ids)

        private_server.stop("fast")
        for op in (provider.get_queue_depths, lambda: provider.enqueue_for_orchestrator(start_item("late"))):
            with pytest.raises(ProviderError) as err:
                op()
            assert err.value.retryable is True and "PostgreSQL" in str(err.value)
        time.sleep(2.0)  # the dispatchers keep failing and back off meanwhile
        backoffs = [r.getMessage() for r in caplog.records if "backing off" in r.getMessage()]
        assert any("PostgreSQL" in m for m in backoffs), backoffs
        down_errors = len(backoffs)

        private_server.start()
        for n, instance in enumerate(ids):
            st = client.wait_for_orchestration(instance, 90_000)
            assert (st.status, st.output) == ("Completed", n * 100 + 6), (instance, st)
        for instance in ids:
            history = provider.read(instance)
            assert check_well_formed(instance, 1, history) == []
            assert sum(1 for e in history if type(e).__name__ == "ActivityCompleted") == 6
        assert down_errors >= 2  # more than one attempt failed while the server was down
        assert client.get_system_metrics().failed_instances == 0
    finally:
        rt.shutdown(2_000)
        provider.close()


# --- end to end ----------------------------------------------------------------------------------------


@pytest.mark.realtime
def test_runtime_end_to_end_on_postgres(pg_schema, opened):
    """Activities, timers, sub-orchestrations, external events, KV and continue-as-new through a
    real Runtime on PostgreSQL."""
    from duroxide_sim.runtime.realtime import SystemClock

    provider = opened(pg_schema("e2e"), clock=SystemClock())
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=10))
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def child(ctx, x):
        return (yield ctx.schedule_activity("inc", x)) * 10

    def parent(ctx, x):
        a = yield ctx.schedule_activity("inc", x)
        yield ctx.schedule_timer(50)
        b = yield ctx.schedule_sub_orchestration("Child", a)
        ctx.set_kv_value("seen", str(b))
        signal = yield ctx.wait_for_event("go")
        return [b, signal]

    def counter(ctx, n):
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return n

    rt.register_orchestration("Child", child)
    rt.register_orchestration("Parent", parent)
    rt.register_orchestration("Counter", counter)
    client = Client(provider)
    rt.start()
    try:
        client.start_orchestration("p", "Parent", 1)
        client.start_orchestration("c", "Counter", 0)
        assert client.wait_for_kv_value("p", "seen", 20_000) == "30"
        client.raise_event("p", "go", "yes")
        st = client.wait_for_orchestration("p", 20_000)
        assert (st.status, st.output) == ("Completed", [30, "yes"])
        assert client.wait_for_orchestration("c", 20_000).output == 3
        assert client.list_executions("c") == [1, 2, 3, 4]
        assert client.get_instance_tree("p").all_ids[0] == "p" and len(client.get_instance_tree("p").all_ids) == 2
    finally:
        rt.shutdown(2_000)
    provider._check()



def test_import_restores_instances_like_the_originals(opened, pg_schema, tmp_path) -> None:
    """history_io's import through PostgresProvider.import_history: listed, described, KV and
    custom status as in the source (the SQLite and memory variants are in
    tests/testing/test_history_io_and_replay.py)."""
    from duroxide_sim.runtime.history_io import document_events, export_to_path, import_documents, load_documents
    from duroxide_sim.sim import SimClock
    from tests.testing.test_history_io_and_replay import _rich_source, _views

    _source, client = _rich_source(tmp_path / "a.db")
    before = _views(client)
    docs = load_documents(export_to_path(client.provider, tmp_path / "out")[0].parent)
    target = opened(pg_schema("import_target"))  # (a fixed name outlived the run: a second run failed)
    assert import_documents(target, docs) == 7
    assert _views(Client(target, clock=SimClock())) == before
    wait = next(d for d in docs if d["instance_id"] == "wait")
    with pytest.raises(ProviderError, match="already exists"):
        target.import_history("wait", sorted(document_events(wait).items()))
