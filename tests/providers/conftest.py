"""Fixtures for the PostgreSQL provider tests (``test_postgres*.py``).

``pg_url``: ``$DUROXIDE_PG_URL`` when set (``.ci/run`` starts a server and exports it), else a
private server this test process starts on first use (``tests/pg_server.py``), so
``python -m pytest`` works locally with nothing set up. ``pg_schema``: a fresh, unique schema
name per call; every schema handed out is dropped at teardown. ``opened``: open
PostgresProviders in such schemas, all closed at teardown. The other provider tests never
request these fixtures, so they start nothing. ``each_provider``: a test run once per shipped
provider (memory, SQLite file, PostgreSQL).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests import pg_server

_RUN = uuid.uuid4().hex[:6]
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg_url() -> str:
    return pg_server.shared_url()


def drop_schemas(url: str, schemas: list[str]) -> None:
    import psycopg
    from psycopg import sql

    if not schemas:
        return
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        for schema in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema(pg_url: str) -> Iterator[Callable[[str], str]]:
    """``pg_schema(prefix)`` -> a new unique schema name (dropped after the test)."""
    made: list[str] = []

    def make(prefix: str = "t") -> str:
        name = f"dx_{prefix}_{os.getpid()}_{_RUN}_{next(_counter)}"
        made.append(name)
        return name

    yield make
    drop_schemas(pg_url, made)


@pytest.fixture
def opened(pg_url: str) -> Iterator[Callable[..., object]]:
    """``opened(schema, *, url=None, clock=None, cls=PostgresProvider, **options)`` opens a
    provider on ``pg_url`` (or ``url``) in ``schema`` (default clock: a ConformanceClock); every
    provider opened is closed after the test."""
    from duroxide_sim.providers.postgres import PostgresProvider
    from duroxide_sim.testing.conformance import ConformanceClock

    made: list = []

    def open_one(schema: str, *, url: str | None = None, clock=None, cls: type = PostgresProvider, **kw):
        provider = cls.connect_with_schema(url or pg_url, schema, clock=clock or ConformanceClock(), **kw)
        made.append(provider)
        return provider

    yield open_one
    for provider in made:
        provider.close()


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def each_provider(request, tmp_path):
    """``(provider, clock)`` for each shipped provider in turn: InMemoryProvider, SqliteProvider
    on a file, PostgresProvider in a fresh schema (its server started on first use). Checked
    (``_check``) and closed after the test."""
    from duroxide_sim.providers.memory import InMemoryProvider
    from duroxide_sim.providers.sqlite import SqliteProvider
    from duroxide_sim.testing.conformance import ConformanceClock

    clock = ConformanceClock()
    if request.param == "memory":
        provider = InMemoryProvider(clock)
    elif request.param == "sqlite":
        provider = SqliteProvider.open(tmp_path / "each.db", clock=clock)
    else:
        from duroxide_sim.providers.postgres import PostgresProvider

        url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")
        provider = PostgresProvider.connect_with_schema(url, schema("each"), clock=clock)
    yield provider, clock
    provider._check()
    getattr(provider, "close", lambda: None)()
