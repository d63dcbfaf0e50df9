"""``duroxide-sim export / show / replay`` (and ``replay_source``) on a PostgreSQL database,
opened read-only through ``PostgresProvider.open_read_only``.

A team running production on PostgreSQL records its histories for CI's nondeterminism check with
``duroxide-sim export postgresql://... --schema orders --out histories/``, or replays the live
schema directly. A diagnostics tool must never change a production database: these tests run
real workflows on a PostgreSQL schema (and the same workflows on SQLite, for comparison), then
check that the commands give what they give on SQLite, that the schema is byte-for-byte the same
afterwards (every table, ``provider_meta``'s open counter and ``schema_version`` included), that
bad sources (missing schema, wrong password, nothing listening, a schema at another version, a
foreign or damaged schema) are exit 2 with a one-line message that never shows the password and
create nothing, and that every write method of a read-only provider raises.

The server: ``$DUROXIDE_PG_URL`` (``.ci/run`` starts one), else a private server started on first
use (``tests/pg_server.py``), through the ``pg_url`` / ``pg_schema`` fixtures of
``tests/providers/conftest.py`` (imported below; this directory has no conftest of its own).
The CLI runs in-process (``duroxide_sim.cli.main``).
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import pathlib
import textwrap
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

psycopg = pytest.importorskip("psycopg")

from psycopg import sql  # noqa: E402
from psycopg.conninfo import conninfo_to_dict  # noqa: E402

from duroxide_sim import Client, Runtime  # noqa: E402
from duroxide_sim.cli import main as cli  # noqa: E402
from duroxide_sim.core.events import ActivityExecute, StartOrchestration  # noqa: E402
from duroxide_sim.errors import ProviderError  # noqa: E402
from duroxide_sim.providers import postgres_schema  # noqa: E402
from duroxide_sim.providers.base import ExecutionMetadata, InstanceFilter, PruneOptions  # noqa: E402
from duroxide_sim.providers.postgres import PostgresProvider  # noqa: E402
from duroxide_sim.providers.sqlite import SqliteProvider  # noqa: E402
from duroxide_sim.runtime.history_io import load_documents  # noqa: E402
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock  # noqa: E402
from duroxide_sim.testing.replay import assert_replays, load_app, replay_source  # noqa: E402
from tests.pg_server import free_port  # noqa: E402
from tests.providers import conftest as _pg_fixtures  # noqa: E402

# The fixtures of tests/providers/conftest.py (tests/testing/ has no conftest of its own).
pg_url = _pg_fixtures.pg_url
pg_schema = _pg_fixtures.pg_schema
drop_schemas = _pg_fixtures.drop_schemas

# --------------------------------------------------------------------------------------------
# the app, recorded on PostgreSQL and on SQLite
# --------------------------------------------------------------------------------------------

APP = textwrap.dedent('''
    def register(rt):
        rt.register_activity("Charge", lambda ctx, n: n * 10)
        rt.register_activity("Ship", lambda ctx, n: f"parcel-{n}")

        def ship(ctx, n):
            return (yield ctx.schedule_activity("Ship", n))

        def order(ctx, n):
            ctx.set_custom_status("charging")
            paid = yield ctx.schedule_activity("Charge", n)  # ORDER-CHARGE
            ctx.set_kv_value("paid", str(paid))
            yield ctx.schedule_timer(1000)
            label = yield ctx.schedule_sub_orchestration("Ship", n)
            ctx.set_custom_status("shipped")
            return {"paid": paid, "label": label}

        def approval(ctx, n):
            paid = yield ctx.schedule_activity("Charge", n)
            decision = yield ctx.wait_for_event("approve")  # in flight until someone approves
            return [paid, decision]

        def counter(ctx, n):
            yield ctx.schedule_activity("Charge", n)
            if n < 2:
                return ctx.continue_as_new(n + 1)
            return n

        rt.register_orchestration("Ship", ship)
        rt.register_orchestration("Order", order)
        rt.register_orchestration("Approval", approval)
        rt.register_orchestration("Counter", counter)
''')

#: The same app charging another amount: every recorded order diverges at ORDER-CHARGE (the
#: activity's input differs); the other orchestrations are unchanged.
CHANGED_APP = APP.replace('paid = yield ctx.schedule_activity("Charge", n)  # ORDER-CHARGE',
                          'paid = yield ctx.schedule_activity("Charge", n + 1)  # ORDER-CHARGE')
assert CHANGED_APP != APP

STARTS = [("order-1", "Order", 1), ("order-2", "Order", 2), ("approval-1", "Approval", 5), ("counter-1", "Counter", 0)]


def _record(provider: Any, clock: SimClock, app: pathlib.Path) -> dict[str, Any]:
    """Run the app's workflows to quiescence on ``provider`` (real dispatchers on a SimClock, as
    production would, deterministically); one in-flight instance is left waiting. Returns each
    started instance's status."""
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    load_app(f"{app}:register")(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    for instance, name, arg in STARTS:
        client.start_orchestration(instance, name, arg)
    driver.run_until_quiet()
    return {instance: client.get_status(instance) for instance, _, _ in STARTS}


_RUN = uuid.uuid4().hex[:6]
_counter = itertools.count(1)


def _schema_name(prefix: str) -> str:
    return f"dx_{prefix}_{os.getpid()}_{_RUN}_{next(_counter)}"


class Recorded:
    """The module's recording: the same workflows run on a PostgreSQL schema and on a SQLite file."""

    def __init__(self, url: str, schema: str, db: pathlib.Path, app: pathlib.Path, changed_app: pathlib.Path,
                 statuses: dict[str, Any]) -> None:
        self.url, self.schema, self.db, self.app, self.changed_app = url, schema, db, app, changed_app
        self.statuses = statuses


@pytest.fixture(scope="module")
def recorded(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    base = tmp_path_factory.mktemp("pg_cli_sources")
    app = base / "orders_app.py"
    app.write_text(APP)
    changed = base / "orders_app_changed.py"
    changed.write_text(CHANGED_APP)
    schema = _schema_name("cli")
    try:
        clock = SimClock()
        provider = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
        try:
            statuses = _record(provider, clock, app)
        finally:
            provider.close()
        clock = SimClock()
        db = base / "orders.db"
        sqlite = SqliteProvider.open(str(db), clock=clock)
        try:
            sqlite_statuses = _record(sqlite, clock, app)
        finally:
            getattr(sqlite, "close", lambda: None)()
        assert {k: v.status for k, v in sqlite_statuses.items()} == {k: v.status for k, v in statuses.items()}
        yield Recorded(pg_url, schema, db, app, changed, statuses)
    finally:
        drop_schemas(pg_url, [schema])


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _dump(url: str, schema: str) -> dict[str, Any]:
    """Every table of ``schema`` (all rows, in a total order) and every sequence's state: two
    equal dumps mean nothing in the schema changed."""
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                                             (schema,)).fetchall()]
        for table in tables:
            ident = sql.Identifier(schema, table)
            ncols = conn.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(ident)).description
            order = sql.SQL(", ").join(sql.Literal(i + 1) for i in range(len(ncols)))  # ORDER BY 1, 2, ...
            rows = conn.execute(sql.SQL("SELECT * FROM {} ORDER BY ").format(ident) + order).fetchall()
            out[f"table {table}"] = rows
        for (seq,) in conn.execute("SELECT sequencename FROM pg_sequences WHERE schemaname = %s ORDER BY 1",
                                   (schema,)).fetchall():
            out[f"sequence {seq}"] = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(schema, seq))).fetchone()
    assert "table provider_meta" in out and "table schema_version" in out, sorted(out)
    return out


def _schema_exists(url: str, schema: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchone() is not None


def _url(base: str, **changes: str) -> str:
    """``base`` rebuilt as a postgresql:// URL with some parts changed."""
    parts = {**conninfo_to_dict(base), **changes}
    return (f"postgresql://{parts['user']}:{parts['password']}@{parts.get('host', '127.0.0.1')}:"
            f"{parts.get('port', '5432')}/{parts['dbname']}")


def _shape(doc: dict[str, Any]) -> dict[str, Any]:
    """A document without its times (``timestamp_ms`` of events and queued items, the instance's
    ``created_at``): what must agree between providers."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ("timestamp_ms", "created_at")}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(copy.deepcopy(doc))


def _documents(directory: pathlib.Path) -> dict[str, dict[str, Any]]:
    return {doc["instance_id"]: doc for doc in load_documents(directory)}


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err and len(err.splitlines()) == 1, captured.err
    return err + captured.out


# --------------------------------------------------------------------------------------------
# the journey: record on PostgreSQL, export / show / replay from it
# --------------------------------------------------------------------------------------------


def test_the_workflows_ran_on_postgres(recorded: Recorded) -> None:
    statuses = {k: v.status for k, v in recorded.statuses.items()}
    assert statuses == {"order-1": "Completed", "order-2": "Completed", "approval-1": "Running",
                        "counter-1": "Completed"}
    assert recorded.statuses["order-1"].output == {"paid": 10, "label": "parcel-1"}


def test_export_writes_what_an_export_of_the_same_workflows_on_sqlite_writes(
        recorded: Recorded, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    pg_out, sqlite_out = tmp_path / "from_pg", tmp_path / "from_sqlite"
    assert cli(["export", recorded.url, "--schema", recorded.schema, "--out", str(pg_out)]) == 0
    assert cli(["export", str(recorded.db), "--out", str(sqlite_out)]) == 0
    out = capsys.readouterr().out
    assert recorded.url not in out
    # The same files (one per instance, children included, plus index.json) ...
    assert sorted(p.name for p in pg_out.iterdir()) == sorted(p.name for p in sqlite_out.iterdir())
    assert (pg_out / "index.json").read_text() == (sqlite_out / "index.json").read_text()
    pg_docs, sqlite_docs = _documents(pg_out), _documents(sqlite_out)
    assert set(pg_docs) >= {i for i, _, _ in STARTS} and len(pg_docs) == len(STARTS) + 2  # + the two Ship children
    # ... holding the same documents: executions, events, queued work, KV base, custom status
    # version and creation order, times aside.
    for instance, doc in pg_docs.items():
        assert _shape(doc) == _shape(sqlite_docs[instance]), instance
    counter = pg_docs["counter-1"]
    assert [e["execution_id"] for e in counter["executions"]] == [1, 2, 3]
    approval = pg_docs["approval-1"]
    assert approval["executions"][0]["events"][-1]["kind"] != "OrchestrationCompleted"  # still waiting
    # One instance to one .json file works too.
    single = tmp_path / "order-1.json"
    assert cli(["export", recorded.url, "--schema", recorded.schema, "--out", str(single),
                "--instance", "order-1"]) == 0
    assert _shape(json.loads(single.read_text())) == _shape(sqlite_docs["order-1"])


def test_show_prints_an_instance_from_postgres(recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert cli(["show", recorded.url, "--schema", recorded.schema, "--instance", "order-1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("order-1  (Order ")
    assert " execution 1" in lines
    assert any("OrchestrationStarted" in line for line in lines)
    assert any("ActivityScheduled" in line and '"Charge"' in line for line in lines)
    assert any("TimerCreated" in line for line in lines) and any("OrchestrationCompleted" in line for line in lines)
    # Without --instance: every instance; the same text as from the SQLite recording.
    assert cli(["show", recorded.url, "--schema", recorded.schema]) == 0
    from_pg = capsys.readouterr().out
    assert cli(["show", str(recorded.db)]) == 0
    assert from_pg == capsys.readouterr().out
    # An unknown instance: exit 2, its id named, never the URL.
    assert cli(["show", recorded.url, "--schema", recorded.schema, "--instance", "nope"]) == 2
    err = _one_line_error(capsys)
    assert "nope" in err and recorded.url not in err


def test_replay_against_unchanged_code_passes_and_against_changed_code_reports_the_divergence(
        recorded: Recorded, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    # With the hash-seed check (a second replay in a subprocess, from a copy of the documents).
    assert cli(["replay", recorded.url, "--schema", recorded.schema, "--app", f"{recorded.app}:register"]) == 0, \
        capsys.readouterr()
    captured = capsys.readouterr()
    assert "every history replays cleanly" in captured.out and "could not run" not in captured.err
    assert cli(["replay", recorded.url, "--schema", recorded.schema, "--app", f"{recorded.changed_app}:register",
                "--no-hash-seed-check"]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "2 execution(s) diverge from the current code:", out
    assert {line.split(" ")[2] for line in lines[1:]} == {"order-1", "order-2"}
    assert all("finished" in line and "Charge" in line and "orders_app_changed.py:" in line for line in lines[1:]), out
    # --json, and the same answer as from the SQLite recording.
    assert cli(["replay", recorded.url, "--schema", recorded.schema, "--app", f"{recorded.changed_app}:register",
                "--no-hash-seed-check", "--json"]) == 1
    from_pg = json.loads(capsys.readouterr().out)
    assert cli(["replay", str(recorded.db), "--app", f"{recorded.changed_app}:register", "--no-hash-seed-check",
                "--json"]) == 1
    assert from_pg == json.loads(capsys.readouterr().out)
    # --latest: the in-flight approval still replays on the newest code.
    assert cli(["replay", recorded.url, "--schema", recorded.schema, "--app", f"{recorded.changed_app}:register",
                "--latest", "--no-hash-seed-check"]) == 0


def test_replay_source_and_assert_replays_take_the_url(recorded: Recorded) -> None:
    assert replay_source(recorded.url, load_app(f"{recorded.app}:register"), schema=recorded.schema) == []
    changed = replay_source(recorded.url, load_app(f"{recorded.changed_app}:register"), schema=recorded.schema)
    assert sorted(d.instance for d in changed) == ["order-1", "order-2"]
    assert_replays(recorded.url, f"{recorded.app}:register", schema=recorded.schema)
    with pytest.raises(AssertionError, match="2 recorded execution"):
        assert_replays(recorded.url, f"{recorded.changed_app}:register", schema=recorded.schema)


def test_export_show_and_replay_leave_the_database_byte_for_byte_unchanged(
        recorded: Recorded, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _dump(recorded.url, recorded.schema)
    src = [recorded.url, "--schema", recorded.schema]
    assert cli(["export", *src, "--out", str(tmp_path / "out")]) == 0
    assert cli(["export", *src, "--out", str(tmp_path / "one.json"), "--instance", "approval-1"]) == 0
    assert cli(["show", *src]) == 0
    assert cli(["show", *src, "--instance", "counter-1"]) == 0
    assert cli(["replay", *src, "--app", f"{recorded.app}:register"]) == 0
    assert cli(["replay", *src, "--app", f"{recorded.changed_app}:register", "--no-hash-seed-check"]) == 1
    assert cli(["replay", *src, "--app", f"{recorded.app}:register", "--latest", "--no-hash-seed-check"]) == 0
    replay_source(recorded.url, load_app(f"{recorded.app}:register"), schema=recorded.schema)
    capsys.readouterr()
    after = _dump(recorded.url, recorded.schema)
    assert after == before
    assert after["table provider_meta"] == before["table provider_meta"]  # (the opens counter: not bumped)


@pytest.mark.parametrize("command", ["export", "show", "replay"])
def test_without_schema_the_public_schema_is_opened_read_only(command: str, recorded: Recorded, tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """(The server's ``public`` schema is shared with other tests, so its content is not relied
    on: the open is intercepted.)"""
    opened: list[tuple[str, dict[str, Any]]] = []

    def fake_open(cls: Any, url: str, schema: str = "public", **kw: Any) -> Any:
        opened.append((schema, kw))
        raise ProviderError("open: intercepted", operation="open")

    monkeypatch.setattr(PostgresProvider, "open_read_only", classmethod(fake_open))
    argv = {"export": ["export", recorded.url, "--out", str(tmp_path / "out")], "show": ["show", recorded.url],
            "replay": ["replay", recorded.url, "--app", f"{recorded.app}:register"]}[command]
    assert cli(argv) == 2
    assert "intercepted" in _one_line_error(capsys)
    assert [(schema, kw.get("snapshot")) for schema, kw in opened] == [("public", True)]


# --------------------------------------------------------------------------------------------
# bad sources: exit 2, one line, no password, nothing created
# --------------------------------------------------------------------------------------------

SECRET = "Not-The-Password-7734"


def _argv(command: str, source: str, schema: str | None, recorded: Recorded, tmp: pathlib.Path) -> list[str]:
    extra = ["--schema", schema] if schema is not None else []
    if command == "export":
        return ["export", source, *extra, "--out", str(tmp / "out")]
    if command == "show":
        return ["show", source, *extra]
    return ["replay", source, *extra, "--app", f"{recorded.app}:register"]


COMMANDS = ["export", "show", "replay"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_schema_is_exit_2_and_is_not_created(command: str, recorded: Recorded, tmp_path: pathlib.Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    schema = _schema_name("missing")
    try:
        assert cli(_argv(command, recorded.url, schema, recorded, tmp_path)) == 2
        err = _one_line_error(capsys)
        assert f"PostgreSQL schema {schema!r}" in err and "does not exist" in err, err
        params = conninfo_to_dict(recorded.url)
        assert f"{params['host']}:{params['port']}/{params['dbname']}" in err
        assert f":{params['password']}@" not in err and recorded.url not in err
        assert not _schema_exists(recorded.url, schema)
        assert not (tmp_path / "out").exists()
    finally:
        drop_schemas(recorded.url, [schema])


@pytest.mark.parametrize("command", COMMANDS)
def test_a_wrong_password_is_exit_2_without_the_password(command: str, recorded: Recorded, tmp_path: pathlib.Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    bad = _url(recorded.url, password=SECRET)
    assert cli(_argv(command, bad, recorded.schema, recorded, tmp_path)) == 2
    err = _one_line_error(capsys)
    assert "password authentication failed" in err and "cannot connect to PostgreSQL" in err, err
    assert SECRET not in err


@pytest.mark.parametrize("command", COMMANDS)
def test_nothing_listening_is_exit_2_naming_the_port(command: str, recorded: Recorded, tmp_path: pathlib.Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    port = str(free_port())
    bad = _url(recorded.url, port=port, password=SECRET)
    assert cli(_argv(command, bad, recorded.schema, recorded, tmp_path)) == 2
    err = _one_line_error(capsys)
    assert f"127.0.0.1:{port}/" in err and "cannot connect to PostgreSQL" in err, err
    assert SECRET not in err


def _plant_a_newer_migration(monkeypatch: pytest.MonkeyPatch) -> int:
    """Make this code one schema version ahead of every existing schema (as a release with a
    migration would be)."""
    extra = (postgres_schema.SCHEMA_VERSION + 1, ("CREATE TABLE planted (x INTEGER)",))
    monkeypatch.setattr(postgres_schema, "MIGRATIONS", postgres_schema.MIGRATIONS + (extra,))
    monkeypatch.setattr(postgres_schema, "SCHEMA_VERSION", extra[0])
    return extra[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_an_older_schema_version_is_exit_2_and_is_not_migrated(command: str, recorded: Recorded,
                                                               tmp_path: pathlib.Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    before = _dump(recorded.url, recorded.schema)
    old = postgres_schema.SCHEMA_VERSION
    new = _plant_a_newer_migration(monkeypatch)
    assert cli(_argv(command, recorded.url, recorded.schema, recorded, tmp_path)) == 2
    err = _one_line_error(capsys)
    assert f"has schema version {old}, older than this duroxide_sim's {new}" in err, err
    assert "run a runtime of this version on it to migrate it first" in err
    assert _dump(recorded.url, recorded.schema) == before  # no migration, no "planted" table


def test_a_newer_schema_version_is_exit_2_asking_for_an_upgrade(pg_url: str, pg_schema: Callable[[str], str],
                                                                 tmp_path: pathlib.Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    schema = pg_schema("newer")
    PostgresProvider.connect_with_schema(pg_url, schema, clock=SimClock()).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (99)").format(sql.Identifier(schema)))
    before = _dump(pg_url, schema)
    assert cli(["export", pg_url, "--schema", schema, "--out", str(tmp_path / "out")]) == 2
    err = _one_line_error(capsys)
    assert "has schema version 99" in err and "upgrade duroxide_sim" in err, err
    assert _dump(pg_url, schema) == before


@pytest.mark.parametrize("damage", ["foreign", "empty schema", "table missing", "schema_version emptied"])
def test_a_foreign_or_damaged_schema_is_exit_2_and_left_alone(damage: str, pg_url: str,
                                                              pg_schema: Callable[[str], str], tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    schema = pg_schema("damaged")
    ident = sql.Identifier(schema)
    if damage in ("foreign", "empty schema"):
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
            if damage == "foreign":
                conn.execute(sql.SQL("CREATE TABLE {}.schema_version (version INTEGER)").format(ident))
                conn.execute(sql.SQL("INSERT INTO {}.schema_version VALUES (1)").format(ident))
    else:
        PostgresProvider.connect_with_schema(pg_url, schema, clock=SimClock()).close()
        with psycopg.connect(pg_url, autocommit=True) as conn:
            if damage == "table missing":
                conn.execute(sql.SQL("DROP TABLE {}.kv_store").format(ident))
            else:
                conn.execute(sql.SQL("DELETE FROM {}.schema_version").format(ident))
    with psycopg.connect(pg_url, autocommit=True) as conn:
        tables_before = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                                     (schema,)).fetchall()
    assert cli(["show", pg_url, "--schema", schema]) == 2
    err = _one_line_error(capsys)
    expected = {"foreign": "is not a duroxide_sim schema", "empty schema": "is not a duroxide_sim schema",
                "table missing": "table(s) kv_store missing", "schema_version emptied": "schema_version table is empty"}
    assert f"PostgreSQL schema {schema!r}" in err and expected[damage] in err, err
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1",
                            (schema,)).fetchall() == tables_before


@pytest.mark.parametrize("command", COMMANDS)
def test_another_url_scheme_is_exit_2_without_echoing_the_url(command: str, recorded: Recorded,
                                                              tmp_path: pathlib.Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A mistyped scheme would otherwise be taken for a file name and printed whole ("no such
    file: postgressql://user:password@...")."""
    bad = _url(recorded.url, password=SECRET).replace("postgresql://", "postgressql://")
    assert cli(_argv(command, bad, None, recorded, tmp_path)) == 2
    err = _one_line_error(capsys)
    assert "unsupported URL scheme 'postgressql://'" in err and SECRET not in err, err


def test_schema_with_a_file_source_and_import_into_postgres_are_refused(recorded: Recorded, tmp_path: pathlib.Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    exported = tmp_path / "histories"
    assert cli(["export", str(recorded.db), "--out", str(exported)]) == 0
    capsys.readouterr()
    for argv in (["export", str(recorded.db), "--schema", "orders", "--out", str(tmp_path / "x")],
                 ["show", str(recorded.db), "--schema", "orders"],
                 ["show", str(exported), "--schema", "orders"],
                 ["replay", str(exported), "--schema", "orders", "--app", f"{recorded.app}:register"]):
        assert cli(argv) == 2, argv
        err = _one_line_error(capsys)
        assert "schema" in err and "PostgreSQL URL" in err, err
    schema = _schema_name("import")
    try:
        assert cli(["import", str(exported), "--db", f"{recorded.url}?options=-csearch_path%3D{schema}"]) == 2
        err = _one_line_error(capsys)
        assert "does not write to PostgreSQL" in err and recorded.url not in err
        assert not _schema_exists(recorded.url, schema)
        assert cli(["import", recorded.url, "--db", str(tmp_path / "restored.db")]) == 2  # a URL for the export
        err = _one_line_error(capsys)
        assert "not a database" in err and recorded.url not in err and not (tmp_path / "restored.db").exists()
    finally:
        drop_schemas(recorded.url, [schema])


# --------------------------------------------------------------------------------------------
# the read-only provider itself
# --------------------------------------------------------------------------------------------


def _write_calls(instance: str) -> list[tuple[str, Callable[[PostgresProvider], Any]]]:
    start = StartOrchestration(instance="x-new", orchestration="Order", input="1", version="1.0.0")
    act = ActivityExecute(instance=instance, execution_id=1, id=99, name="Charge", input="1")
    return [
        ("fetch_orchestration_item", lambda p: p.fetch_orchestration_item(30_000)),
        ("ack_orchestration_item", lambda p: p.ack_orchestration_item("pg-1-1", 1, [], [], [], ExecutionMetadata())),
        ("abandon_orchestration_item", lambda p: p.abandon_orchestration_item("pg-1-1")),
        ("renew_orchestration_item_lock", lambda p: p.renew_orchestration_item_lock("pg-1-1", 1000)),
        ("fetch_work_item", lambda p: p.fetch_work_item(30_000)),
        ("ack_work_item", lambda p: p.ack_work_item("pg-1-1", None)),
        ("renew_work_item_lock", lambda p: p.renew_work_item_lock("pg-1-1", 1000)),
        ("abandon_work_item", lambda p: p.abandon_work_item("pg-1-1")),
        ("renew_session_lock", lambda p: p.renew_session_lock(["w"], 1000, 1000)),
        ("cleanup_orphaned_sessions", lambda p: p.cleanup_orphaned_sessions(0)),
        ("enqueue_for_orchestrator", lambda p: p.enqueue_for_orchestrator(start)),
        ("enqueue_for_worker", lambda p: p.enqueue_for_worker(act)),
        ("append_with_execution", lambda p: p.append_with_execution(instance, 1, [])),
        ("import_history", lambda p: p.import_history("x-new", [])),
        ("delete_instance", lambda p: p.delete_instance(instance, True)),
        ("delete_instances_atomic", lambda p: p.delete_instances_atomic([instance], True)),
        ("delete_instance_bulk", lambda p: p.delete_instance_bulk(InstanceFilter())),
        ("prune_executions", lambda p: p.prune_executions(instance, PruneOptions(keep_last=1))),
        ("prune_executions_bulk", lambda p: p.prune_executions_bulk(InstanceFilter(), PruneOptions(keep_last=1))),
        ("_corrupt_history", lambda p: p._corrupt_history(instance)),
    ]


@pytest.mark.parametrize("snapshot", [False, True], ids=["pooled", "snapshot"])
def test_the_read_only_provider_reads_and_refuses_every_write(snapshot: bool, recorded: Recorded) -> None:
    before = _dump(recorded.url, recorded.schema)
    with PostgresProvider.open_read_only(recorded.url, recorded.schema, clock=SimClock(), snapshot=snapshot) as ro:
        assert ro.read_only and "dx_cli_" in ro.location and recorded.url not in ro.location
        # reads
        assert set(ro.list_instances()) >= {i for i, _, _ in STARTS}
        assert ro.read("counter-1") and ro.read_with_execution("counter-1", 1)
        assert ro.list_executions("counter-1") == [1, 2, 3]
        assert ro.get_instance_info("approval-1").status == "Running"
        assert ro.get_kv_value("order-1", "paid") == "10"
        assert ro.read_status("order-1")[0] == "Completed"
        assert ro.get_system_metrics().total_instances >= len(STARTS)
        ro.get_queue_depths()
        ro.queued_work()
        ro.add_wakeup_listener(lambda kind: None)  # kept, but no LISTEN thread is started
        assert ro._listen_thread is None
        # writes: refused before they reach the server, naming the operation
        for name, call in _write_calls("order-1"):
            with pytest.raises(ProviderError) as err:
                call(ro)
            assert err.value.retryable is False, name
            assert str(err.value).startswith(f"{name}: ") and "opened read-only" in str(err.value), str(err.value)
        # ... and the server refuses a write that got past them (the sessions are read-only)
        with pytest.raises(ProviderError) as err:
            with ro._tx("planted write", write=False) as db:
                db.execute("UPDATE provider_meta SET value = value + 1")
        assert "read-only" in str(err.value) and err.value.retryable is False
        if not snapshot:
            assert ro.list_instances()  # (the pooled provider goes on reading)
    assert _dump(recorded.url, recorded.schema) == before


def test_a_snapshot_sees_the_database_as_it_was_when_opened(pg_url: str, pg_schema: Callable[[str], str],
                                                           tmp_path: pathlib.Path) -> None:
    """The CLI's read (snapshot mode) is one consistent view, whatever a running system commits
    meanwhile; a pooled read-only provider sees each commit."""
    schema = pg_schema("snap")
    app = tmp_path / "orders_app.py"
    app.write_text(APP)
    clock = SimClock()
    writer = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
    try:
        _record(writer, clock, app)
        with PostgresProvider.open_read_only(pg_url, schema, snapshot=True) as snap, \
                PostgresProvider.open_read_only(pg_url, schema) as pooled:
            seen = sorted(snap.list_instances())
            history = snap.read("approval-1")
            client = Client(writer, clock=clock)
            client.start_orchestration("late-1", "Order", 3)
            client.raise_event("approval-1", "approve", "yes")
            assert sorted(snap.list_instances()) == seen and snap.pending_messages("approval-1") == 0
            assert snap.read("approval-1") == history
            assert "late-1" not in snap.list_instances() and snap.queued_work() == {}
            assert pooled.pending_messages("approval-1") == 1 and "late-1" in pooled.queued_work()
    finally:
        writer.close()
