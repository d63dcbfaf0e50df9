"""Production PostgreSQL provider: the Provider + ManagementProvider contract on one schema of a
PostgreSQL database, shared by any number of runtime processes.

Owns the connection policy (a ``psycopg_pool.ConnectionPool``); applying the schema (DDL and
migrations are data in ``postgres_schema.py``) on open; the mapping of psycopg errors to
:class:`~duroxide_sim.errors.ProviderError`; LISTEN/NOTIFY wake-ups; and every queue, lock,
history, KV and session operation. Management operations (SPEC §14) live in the
:class:`PostgresAdminMixin` of ``postgres_admin.py`` and share this module's transaction helper.

Behaviour matches :class:`~duroxide_sim.providers.sqlite.SqliteProvider` (and through it
``InMemoryProvider``), with the same documented deviations: orphan messages are parked
instead of blocking the queue and expire after 5 minutes (``_shared.ORPHAN_PARK_SHIFT``), the
batch is ordered by ``(visible_at, id)``, ``poll_timeout_ms`` is ignored. The shared
conformance suite runs against it.

Schema: every provider object works in one PostgreSQL schema (``connect`` -> ``public``,
``connect_with_schema`` -> any name), created if missing. ``open_read_only`` opens an existing
schema for diagnostics (export, show, replay) without creating, migrating or writing anything:
read-only sessions, write methods refused, optionally one snapshot transaction for all reads.
Migrations run on open in one
transaction holding a transaction-scoped advisory lock derived from the schema name, so two
processes opening the same schema at once never race. Pool connections have ``search_path``
set to the schema (quoted with ``psycopg.sql.Identifier``), so queries name tables unqualified.

Concurrency (several processes on one schema): every operation is ONE transaction (READ
COMMITTED for writes, REPEATABLE READ READ ONLY for multi-statement reads), run in psycopg's
pipeline mode so statements whose results are not needed travel together (an ack is two round
trips; an enqueue one). A fetch first reads a few candidates with one autocommit query, so an
idle poll costs one round trip and opens no transaction.

* Instance locks are rows of ``instance_locks``; ``locked_until`` is compared with the injected
  clock. Candidate instances are claimed with ``pg_try_advisory_xact_lock(schema key, instance
  key)`` - the SKIP LOCKED of the orchestrator queue: a fetcher never waits for another fetcher
  busy with the same instance, it skips to the next candidate. (Locking the queue rows
  themselves with ``FOR UPDATE SKIP LOCKED`` would let two fetchers hold different rows of one
  instance and deadlock when either tags the other's rows.) The claimer then inserts the lock
  row (``ON CONFLICT DO NOTHING``) or takes over an expired one (``UPDATE ... WHERE
  locked_until <= now``), and tags the visible messages only if the lock row now carries its
  token. Neither statement locks anything when it does nothing, so a fetcher that loses a race
  never blocks the holder's ack. Lock order everywhere: ``instance_locks`` row, then queue rows,
  then instance/execution/history rows.
* Acks, abandons and renewals re-verify the lock inside their transaction with
  ``SELECT ... FOR UPDATE`` on the lock row (by token, and unexpired by the injected clock), so
  two acks with one token serialize and the second finds the token gone; a takeover after
  expiry changes the token, so the old holder's ack fails with ``LockLostError``.
* The worker queue is claimed with ``FOR UPDATE SKIP LOCKED`` (conditions re-checked). Session
  claims are serialized by one transaction-scoped advisory lock per schema (re-checking the
  ``sessions`` row after taking it), so two workers never both claim one session.

Wake-ups: commits that add work ``pg_notify`` the channel ``duroxide_<schema>`` (hashed when
longer than PostgreSQL's 63-byte identifiers) with payload ``<queue>:<open id>``. In-process
listeners are called directly after the commit (as in SQLite); a daemon thread with its own
connection LISTENs and calls them for notifications from *other* provider objects (other
processes), so an idle runtime wakes without waiting for its poll interval. The thread
reconnects after an outage and then wakes every listener once (notifications may have been
missed).

Outages: connection failures (refused, reset, server shut down, pool timeout) raise
*retryable* ProviderErrors; broken connections are dropped and the pool reconnects in the
background once the server is back. Wrong URLs or credentials fail at open with a
ProviderError naming host, port, database and user (never the password).

Text PostgreSQL cannot hold: ``text`` columns refuse NUL. Names, ids and keys with NUL are
refused up front (clients and runtime check them); the columns that keep user text verbatim -
an execution's output (a result's JSON or an error message), the custom status and KV values -
store a string containing NUL (or starting with the escape marker) as the marker followed by its
JSON form, and read it back unchanged (``_store_text`` / ``_load_text``). History events and
queue items are JSON already.

Must not: read a wall clock (time comes only from ``self.clock.now_ms()``; the server's
``now()`` is never used), use randomness or uuids (lock tokens are ``pg-{open id}-{counter}``,
where the open id is allocated by the database), or assign event ids. This is the only module
of the package that imports psycopg.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import re
import select
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..core.events import (
    ActivityCompletedMsg, ActivityExecute, ActivityFailedMsg, ContinueAsNew, CustomStatusUpdated, HistoryEvent,
    KeyValueCleared, KeyValuesCleared, KeyValueSet, QueueMessage, StartOrchestration, TimerFiredMsg, WorkItem,
    dumps, loads,
)
from ..errors import ConfigurationError, InvalidInputError, ProviderError, SerializationError
from . import postgres_schema
from ._shared import ORPHAN_PARK_SHIFT, ORPHAN_RETENTION_MS, ORPHAN_SWEEP_INTERVAL_MS, PARKED_BELOW
from ._shared import imported_executions as _imported_executions
from ._shared import check_instance_arg
from ._shared import advisory_key32 as _key32
from ._shared import forget_if_filled_below
from ._shared import lock_lost as _lock_lost
from ._shared import parse_semver as _parse_semver
from .base import (
    Clock, ExecutionMetadata, KvEntry, OrchestrationItem, ScheduledActivityIdentifier, SessionConfig, TagFilter,
    WorkItemLease,
)
from .postgres_admin import TERMINAL_STATUSES, PostgresAdminMixin
from .postgres_schema import SCHEMA_VERSION

#: Prefix of a verbatim-text value stored in escaped form (a noncharacter, so no text a program
#: means to write starts with it by accident; a value that does is escaped too, so every
#: string round-trips). Values without NUL are stored as they are.
_ESCAPED = "\ufdd0duroxide-json:"


def _store_text(value: Any) -> Any:
    """The form of a verbatim text value (output, custom status, KV value) PostgreSQL can hold."""
    if isinstance(value, str) and ("\x00" in value or value.startswith(_ESCAPED)):
        return _ESCAPED + json.dumps(value)
    return value


def _load_text(value: Any) -> Any:
    """Inverse of :func:`_store_text`."""
    if isinstance(value, str) and value.startswith(_ESCAPED):
        return json.loads(value[len(_ESCAPED):])
    return value

try:  # optional dependency: pip install 'duroxide_sim[postgres]'
    import psycopg
    from psycopg import errors as pg_errors
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolTimeout
except ImportError:  # pragma: no cover - exercised only without the extra installed
    psycopg = None  # type: ignore[assignment]

__all__ = ["PostgresProvider", "SCHEMA_VERSION", "is_postgres_url"]

_log = logging.getLogger(__name__)
_HISTORY_CACHE_SIZE = 1024  # instances whose decoded current history is kept (LRU)
_CORRUPT_PREFIX = "#corrupt#"  # _corrupt_history marker: never valid JSON
_MAX_IDENT = 63  # PostgreSQL identifiers (NAMEDATALEN - 1 bytes)
_FIRST_PAGE = 8  # candidates read by a fetch's first look; usually the first one is taken
_CANDIDATE_PAGE = 128  # later pages (many candidates busy, filtered out or orphaned)
_START_KINDS = (StartOrchestration.KIND, ContinueAsNew.KIND)
# Connection failures that come from the settings themselves, not from the server's state
# (matched on the lower-cased message: libpq reports option errors without a SQLSTATE, and
# psycopg often none for the server's refusal at startup either): libpq's checks of the
# options ('invalid sslmode value: "bogus"', 'invalid port number: "99999"', 'invalid integer
# value "abc" for connection option "keepalives"', ...) and the server's refusal of startup
# settings (``options=-c ...``) or of the client by pg_hba.conf. Anything else (refused,
# unreachable, unresolvable, too many clients, starting up) stays retryable.
_BAD_CONNECT_SETTING = re.compile(
    r'invalid "?[a-z_]+"? value|invalid port number|invalid integer value|invalid connection option'
    r'|invalid value "[^"]*" for (?:minimum|maximum) ssl protocol version|invalid ssl protocol version range'
    r'|could not parse network address|could not match \d+ (?:host names|port numbers)'
    r'|invalid when ssl support is not compiled in|require_auth method|is not supported on this platform'
    r'|unrecognized configuration parameter|invalid value for parameter|cannot be changed without restarting'
    r'|no pg_hba\.conf entry|server does not support ssl, but ssl was required'
    r"|server doesn't support gssapi encryption, but it was required")
_UNKNOWN = object()

# Visible rows of unlocked instances in (visible_at, id) order; the first row of each instance
# is its oldest visible message, so first occurrences give SQLite's candidate order. ``{pin}``
# is empty or _PIN_FILTER (capability filtering, SPEC §16 I30: incompatible instances are
# skipped before anything is locked or read; a NULL pin is compatible). The range starts above
# the parked orphans (see _shared.PARKED_BELOW), so they are never walked.
# Pages are keyset-paginated: a page starts after the (visible_at, id) of the previous page's
# last row, (PARKED_BELOW, the least bigint) for the first. Never OFFSET: a fetch parks (moves below
# PARKED_BELOW) or deletes the orphans it examines inside its transaction, so an OFFSET would
# skip as many unexamined rows as were just handled (a ready instance behind fresh orphans
# would be missed, and orphans left unexamined walked again by later fetches).
_ORCH_CANDIDATES = """
    SELECT q.instance_id, q.visible_at, q.id FROM orchestrator_queue q
    WHERE q.visible_at >= %(parked_below)s AND q.visible_at <= %(now)s
      AND (q.visible_at, q.id) > (%(after_at)s, %(after_id)s) AND NOT EXISTS (
        SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > %(now)s) {pin}
    ORDER BY q.visible_at, q.id LIMIT %(limit)s
"""
_PIN_FILTER = """
    AND NOT EXISTS (
        SELECT 1 FROM executions e
        WHERE e.instance_id = q.instance_id
          AND e.execution_id = COALESCE(
              (SELECT i.current_execution_id FROM instances i WHERE i.instance_id = q.instance_id),
              (SELECT MAX(e2.execution_id) FROM executions e2 WHERE e2.instance_id = q.instance_id))
          AND e.duroxide_version_major IS NOT NULL
          AND ((e.duroxide_version_major, e.duroxide_version_minor, e.duroxide_version_patch)
                 < (%(lo0)s, %(lo1)s, %(lo2)s)
               OR (e.duroxide_version_major, e.duroxide_version_minor, e.duroxide_version_patch)
                 > (%(hi0)s, %(hi1)s, %(hi2)s)))"""
_CURRENT_EXECUTION_ID = ("SELECT COALESCE((SELECT current_execution_id FROM instances WHERE instance_id = %(i)s), "
                         "(SELECT MAX(execution_id) FROM executions WHERE instance_id = %(i)s))")
# The current execution (the instance row's, else the latest stored one: an instance whose acks
# named no orchestration has no row) continued-as-new and a ContinueAsNew item is queued outside
# the batch being fetched (tagged %(t)s).
_CAN_PENDING = ("SELECT COALESCE((SELECT e.status = 'ContinuedAsNew' FROM executions e WHERE e.instance_id = %(i)s "
                "AND e.execution_id = (" + _CURRENT_EXECUTION_ID + ")), FALSE) "
                "AND EXISTS (SELECT 1 FROM orchestrator_queue "
                "WHERE instance_id = %(i)s AND item_kind = 'ContinueAsNew' AND lock_token IS DISTINCT FROM %(t)s)")
_INSTANCE_INFO = ("SELECT orchestration_name, orchestration_version, current_execution_id, created_seq "
                  "FROM instances WHERE instance_id = %s")
# Orphan expiry (SPEC §3.12; see _shared.ORPHAN_PARK_SHIFT), as SqliteProvider: parked rows
# whose original visible_at is at least the retention old (bound %(b)s) are deleted while their
# instance has no row, no history and no start / ContinueAsNew queued ...
_EXPIRE_ORPHANS = """
    DELETE FROM orchestrator_queue q WHERE q.visible_at <= %(b)s
      AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id)
      AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.instance_id = q.instance_id)
      AND NOT EXISTS (SELECT 1 FROM orchestrator_queue s WHERE s.instance_id = q.instance_id
                      AND s.item_kind IN ('StartOrchestration', 'ContinueAsNew'))
"""
# ... and every parked row of an instance that exists by now is delivered normally.
_UNPARK_EXISTING = """
    UPDATE orchestrator_queue SET visible_at = visible_at + %(shift)s
    WHERE visible_at < %(parked_below)s AND instance_id IN (
        SELECT q.instance_id FROM orchestrator_queue q WHERE q.visible_at <= %(b)s
          AND (EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id)
               OR EXISTS (SELECT 1 FROM executions e WHERE e.instance_id = q.instance_id)))
"""


def is_postgres_url(source: Any) -> bool:
    """Whether ``source`` is a PostgreSQL connection URL (``postgresql://`` or ``postgres://``),
    as the CLI's read-only commands and ``replay_source`` take in place of a SQLite path."""
    return isinstance(source, str) and source.startswith(("postgresql://", "postgres://"))


def _key64(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def _check_schema_name(schema: Any) -> str:
    if not isinstance(schema, str) or not schema:
        raise InvalidInputError(f"schema must be a non-empty string, got {schema!r}")
    try:
        size = len(schema.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidInputError("schema name is not valid Unicode (it holds a lone surrogate)") from None
    if size > _MAX_IDENT:
        raise InvalidInputError(f"schema name {schema!r} is longer than PostgreSQL's {_MAX_IDENT}-byte identifier limit")
    if "\x00" in schema:
        raise InvalidInputError("schema name must not contain NUL characters")
    if schema.lower().startswith("pg_"):
        raise InvalidInputError(f"schema name {schema!r} is reserved by PostgreSQL (the pg_ prefix)")
    return schema


def _channel_for(schema: str) -> str:
    channel = f"duroxide_{schema}"
    if len(channel.encode("utf-8")) > _MAX_IDENT:
        channel = "duroxide_" + hashlib.blake2b(schema.encode("utf-8"), digest_size=16).hexdigest()
    return channel


def _not_unicode(op: str, exc: UnicodeEncodeError) -> ProviderError:
    """A string the driver cannot encode (a lone surrogate): the caller's data, not the server."""
    return ProviderError(f"{op}: a string is not valid Unicode and cannot be stored ({exc.reason} at position "
                         f"{exc.start})", operation=op, retryable=False)


class _Db:
    """One connection inside one transaction, in psycopg pipeline mode: statements whose
    results are not needed (``send``) travel with the next round trip, so a whole ack costs a
    few round trips instead of one per statement. ``execute`` waits for its result (rowcount
    included); ``one``/``all``/``scalar`` fetch rows."""

    __slots__ = ("conn", "pipeline", "notify_kinds")

    def __init__(self, conn: Any, pipeline: Any) -> None:
        self.conn = conn
        self.pipeline = pipeline
        self.notify_kinds: list[str] = []

    def start(self, query: str, params: Any = None) -> Any:
        """Send a query and return its cursor without waiting: several ``start``s followed by
        their fetches share one round trip."""
        return self.conn.execute(query, params)

    def send(self, query: str, params: Any = None) -> None:
        """Queue a statement; errors surface at the next result (or at COMMIT)."""
        self.conn.execute(query, params)

    def execute(self, query: str, params: Any = None) -> Any:
        cur = self.conn.execute(query, params)
        self.pipeline.sync()
        return cur

    def one(self, query: str, params: Any = None) -> Any:
        return self.conn.execute(query, params).fetchone()

    def all(self, query: str, params: Any = None) -> list:
        return self.conn.execute(query, params).fetchall()

    def scalar(self, query: str, params: Any = None) -> Any:
        row = self.conn.execute(query, params).fetchone()
        return None if row is None else row[0]

    def executemany(self, query: str, rows: Sequence[Any]) -> None:
        if rows:
            with self.conn.cursor() as cur:
                cur.executemany(query, rows)

    def notify(self, *kinds: str) -> None:
        """Queue a cross-process wake-up for ``kinds``; sent (pg_notify) just before COMMIT."""
        for kind in kinds:
            if kind not in self.notify_kinds:
                self.notify_kinds.append(kind)



def _drop_if_stale_plans(conn: Any, exc: BaseException) -> None:
    """A migration changed a table under a statement this connection prepared (SQLSTATE 0A000,
    "cached plan must not change result type"): every retry on the same connection fails the
    same way, since psycopg keeps the prepared statement. Closed, the pool replaces it with a
    fresh connection, so the (retryable) error is seen once per pooled connection."""
    if getattr(exc, "sqlstate", None) == "0A000" and "cached plan" in str(exc):
        with contextlib.suppress(Exception):
            conn.close()

class PostgresProvider(PostgresAdminMixin):
    """Provider + ManagementProvider backed by PostgreSQL (psycopg 3). See the module docstring.

    Build with :meth:`connect` (schema ``public``) or :meth:`connect_with_schema`; release with
    :meth:`close` or a ``with`` block.
    """

    def __init__(
        self,
        url: str,
        schema: str = "public",
        *,
        clock: Clock | None = None,
        min_connections: int = 1,
        max_connections: int = 16,
        connect_timeout_s: float = 5.0,
        pool_timeout_s: float = 10.0,
        read_only: bool = False,
        snapshot: bool = False,
    ) -> None:
        if psycopg is None:
            raise ConfigurationError("PostgresProvider needs psycopg 3 and psycopg-pool: "
                                     "pip install 'duroxide_sim[postgres]'")
        if not isinstance(url, str) or not url:
            raise InvalidInputError(f"url must be a non-empty PostgreSQL connection string, got {type(url).__name__}")
        for name, value in (("min_connections", min_connections), ("max_connections", max_connections)):
            if type(value) is not int or value < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
        for name, value in (("connect_timeout_s", connect_timeout_s), ("pool_timeout_s", pool_timeout_s)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise InvalidInputError(f"{name} must be a positive number of seconds, got {value!r}")
        if snapshot and not read_only:
            raise InvalidInputError("snapshot=True needs read_only=True (use PostgresProvider.open_read_only)")
        self.clock: Clock | None = clock
        self.schema = _check_schema_name(schema)
        #: Opened with :meth:`open_read_only`: nothing is created, migrated or written.
        self.read_only = bool(read_only)
        self._snapshot = bool(snapshot)
        self._snapshot_conn: Any = None  # snapshot mode: the one connection, holding its transaction
        self._snapshot_lock = threading.RLock()
        self._snapshot_failed: str | None = None
        self._closed = False
        self._listeners: list[Callable[[str], None]] = []
        # Reentrant: a Client's listener is removed by a weakref finalizer (runtime/realtime.py),
        # which the garbage collector may run in a thread that holds this lock already.
        self._listeners_lock = threading.RLock()
        self._tokens = itertools.count(1)
        self._hcache: OrderedDict[str, tuple[int, int, tuple[HistoryEvent, ...]]] = OrderedDict()
        self._hcache_lock = threading.Lock()
        self._pool: Any = None
        self._listen_thread: threading.Thread | None = None
        self._listen_stop = threading.Event()
        self._listen_conn: Any = None
        self._listen_ready = threading.Event()
        self._checking = threading.Lock()
        self._pool_timeout_s = float(pool_timeout_s)
        self._channel = _channel_for(self.schema)
        self._schema_key = _key32(f"duroxide_sim:{self.schema}")
        self._orphan_sweep_at: int | None = None  # clock time of the next orphan expiry
        self._url = url
        self._where, self._password = self._describe(url)
        self._conn_kwargs = {"autocommit": True, "connect_timeout": max(1, int(round(connect_timeout_s))),
                             "application_name": "duroxide_sim (read-only)" if self.read_only else "duroxide_sim"}
        try:
            if self.read_only:
                self._open_id = 0  # (no open is counted: provider_meta is not touched)
                self._snapshot_conn = self._open_read_only_check()
                if self._snapshot:
                    return  # every read uses that connection and its transaction: no pool
            else:
                self._open_id = self._bootstrap()
            self._pool = ConnectionPool(
                url, min_size=max(1, int(min_connections)), max_size=max(int(min_connections), int(max_connections)),
                kwargs=dict(self._conn_kwargs), configure=self._configure_connection, open=False,
                timeout=self._pool_timeout_s,
                name=f"duroxide-{self.schema}-{'ro' if self.read_only else self._open_id}",
                reconnect_timeout=3600.0,
            )
            self._pool.open(wait=True, timeout=max(connect_timeout_s * 2, 10.0))
        except PoolTimeout as exc:
            self.close()
            raise ProviderError(f"open: cannot fill the connection pool for PostgreSQL {self._where}: "
                                f"{self._redact(str(exc))}", operation="open", retryable=True) from exc
        except BaseException:
            self.close()
            raise

    @classmethod
    def connect(cls, database_url: str, *, clock: Clock | None = None, **options: Any) -> "PostgresProvider":
        """Open the database at ``database_url`` (``postgresql://user:password@host:port/db``;
        the parameter is named as in duroxide-python) and use (creating and migrating it if
        needed) the ``public`` schema."""
        return cls(database_url, "public", clock=clock, **options)

    @classmethod
    def connect_with_schema(cls, database_url: str, schema: str, *, clock: Clock | None = None,
                            **options: Any) -> "PostgresProvider":
        """Like :meth:`connect`, in schema ``schema`` (created if missing): several independent
        stores can share one database."""
        return cls(database_url, schema, clock=clock, **options)

    @classmethod
    def open_read_only(cls, database_url: str, schema: str = "public", *, clock: Clock | None = None,
                       snapshot: bool = False, **options: Any) -> "PostgresProvider":
        """Open an existing store to read it - diagnostics, export, replay - without writing anything.

        Unlike :meth:`connect`, it never creates the schema, never migrates it and does not count
        the open in ``provider_meta``: the database is left byte-for-byte unchanged. Every
        connection runs with ``default_transaction_read_only = on`` (reads in ``REPEATABLE READ
        READ ONLY`` transactions), so the server itself refuses a write; the write methods
        (fetches, acks, enqueues, imports, deletes, prunes, ...) raise a non-retryable
        :class:`ProviderError` ("opened read-only") before they reach it. No LISTEN thread is
        started (``add_wakeup_listener`` keeps its callbacks but nothing here commits work).

        Refused (non-retryable ``ProviderError`` naming schema, host, database and user, never the
        password) when the schema does not exist, is not a duroxide_sim schema, is damaged (tables
        missing, ``schema_version`` empty), or has another schema version than this code's: an
        older one must be migrated first by a runtime of this version, a newer one needs a newer
        duroxide_sim.

        ``snapshot=True``: one connection holds one read-only transaction from the open until
        :meth:`close`, so every read sees the database as it was at the open (an export of a
        running system is then consistent: no message counted both as queued and in a history).
        Meant for short-lived tools; it keeps PostgreSQL from vacuuming rows deleted since the
        open while it lives. Otherwise (the default) each read is its own transaction on a pool
        connection, as with :meth:`connect`. ``options``: as :meth:`connect` (connection and pool
        settings)."""
        return cls(database_url, schema, clock=clock, read_only=True, snapshot=snapshot, **options)

    @property
    def location(self) -> str:
        """``PostgreSQL schema 'name' on host:port/db as user 'u'`` (never the password), for messages."""
        return f"PostgreSQL schema {self.schema!r} on {self._where}"

    # --- connections and transactions ----------------------------------------------------------

    @staticmethod
    def _describe(url: str) -> tuple[str, str | None]:
        """``host:port/db as user`` for messages (never the password), and the password."""
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            # The message may quote the string, which may hold a password: do not echo it.
            raise ProviderError(f"open: invalid PostgreSQL connection URL ({type(exc).__name__}); expected "
                                "postgresql://user:password@host:port/dbname", operation="open",
                                retryable=False) from None
        host = params.get("host") or params.get("hostaddr") or "localhost"
        port = params.get("port") or "5432"
        user = params.get("user") or "(default user)"
        db = params.get("dbname") or "(default database)"
        return f"{host}:{port}/{db} as user {user!r}", params.get("password")

    def _redact(self, text: str) -> str:
        """``text`` without the password, on one line (libpq's connection errors span several
        lines: "... Connection refused", then "Is the server running on that host ...?")."""
        text = " ".join(line.strip() for line in text.splitlines() if line.strip())
        if self._password and len(self._password) >= 4:
            text = text.replace(self._password, "***")
        return text

    def _configure_connection(self, conn: Any) -> None:
        if self.read_only:  # the server refuses any write on this connection, whatever the code does
            conn.execute("SET default_transaction_read_only = on")
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))

    def _bootstrap(self) -> int:
        """Connect once to check the URL, create the schema and migrate it; return the open id."""
        conn = self._connect_once()
        try:
            return self._migrate(conn)
        except psycopg.Error as exc:
            raise self._map_error(exc, "open") from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    def _connect_once(self) -> Any:
        """One connection to ``self._url``; a failure is a ProviderError naming the server (never
        the password), permanent when the URL or the credentials are wrong."""
        try:
            return psycopg.connect(self._url, **self._conn_kwargs)
        except psycopg.Error as exc:
            state = getattr(exc, "sqlstate", None)
            text = self._redact(str(exc).strip())
            low = text.lower()
            if _BAD_CONNECT_SETTING.search(low):
                # Options libpq or the server refuse (sslmode=bogus, port 99999, keepalives=abc,
                # options=-c bad=...): the URL is wrong, so no retry can ever succeed.
                raise ProviderError(f"open: cannot connect to PostgreSQL {self._where}: invalid connection "
                                    f"settings in the URL (fix the URL; retrying cannot help): {text}",
                                    operation="open", retryable=False) from None
            permanent = state in ("28P01", "28000", "3D000") or "password" in low or "does not exist" in low \
                or "authentication" in low
            raise ProviderError(f"open: cannot connect to PostgreSQL {self._where}: {text}", operation="open",
                                retryable=not permanent) from None

    def _open_read_only_check(self) -> Any:
        """The read-only open: connect, start a ``REPEATABLE READ READ ONLY`` transaction on a
        read-only session and check the schema in it (:meth:`_check_existing_schema`). Returns
        the connection with that transaction still open in snapshot mode, else closes it and
        returns None. Writes nothing, takes no lock."""
        conn = self._connect_once()
        try:
            self._configure_connection(conn)
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            self._check_existing_schema(conn)
            if self._snapshot:
                return conn
            conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            with contextlib.suppress(Exception):
                conn.close()
            raise self._map_error(exc, "open") from exc
        except BaseException:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        with contextlib.suppress(Exception):
            conn.close()
        return None

    def _check_existing_schema(self, conn: Any) -> None:
        """Refuse (non-retryable ProviderError) a schema a read-only open cannot read: missing,
        foreign, damaged (as :meth:`_migrate` checks), or at another schema version than this
        code's. Only reads."""
        latest = postgres_schema.SCHEMA_VERSION  # read at call time: tests plant extra migrations
        where = f"PostgreSQL schema {self.schema!r} on {self._where}"

        def refuse(problem: str, **fields: Any) -> ProviderError:
            return ProviderError(f"open: {where} {problem}", operation="open", retryable=False, **fields)

        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
            raise refuse("does not exist (a read-only open creates nothing; check the schema name)")
        have = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                               (self.schema,)).fetchall()}
        if "schema_version" not in have:
            if "provider_meta" in have:
                raise refuse("is a damaged duroxide_sim schema: its schema_version table is missing, so its "
                             "schema version is unknown; restore it from a backup")
            raise refuse("is not a duroxide_sim schema (it has no schema_version table); check the schema name")
        current = conn.execute(sql.SQL("SELECT MAX(version) FROM {}.schema_version").format(
            sql.Identifier(self.schema))).fetchone()[0]
        if "provider_meta" not in have:
            raise refuse(f"is not a duroxide_sim schema (it has a schema_version table"
                         f"{'' if current is None else f' at version {current}'} but no provider_meta); "
                         "check the schema name")
        if current is None:
            raise refuse("is a damaged duroxide_sim schema: its schema_version table is empty, so its schema "
                         "version is unknown; restore it from a backup")
        if current > latest:
            raise refuse(f"has schema version {current}, but this duroxide_sim supports schema version {latest} "
                         "at most; upgrade duroxide_sim to read it", found_version=current, supported_version=latest)
        if current < latest:
            raise refuse(f"has schema version {current}, older than this duroxide_sim's {latest}; run a runtime "
                         "of this version on it to migrate it first (a read-only open never migrates)",
                         found_version=current, supported_version=latest)
        if latest == postgres_schema.TABLES_VERSION:
            missing = [t for t in postgres_schema.TABLES if t not in have]
            if missing:
                raise refuse(f"is a damaged duroxide_sim schema: table(s) {', '.join(missing)} missing (schema "
                             f"version {current}); restore it from a backup", missing_tables=missing)

    def _refuse_if_read_only(self, op: str) -> None:
        if self.read_only:
            raise ProviderError(f"{op}: {self.location} was opened read-only (PostgresProvider.open_read_only): "
                                "it writes nothing; open it with connect()/connect_with_schema() to change it",
                                operation=op, retryable=False)

    def _migrate(self, conn: Any) -> int:
        """Bring the schema to the latest version in one transaction; return this open's id."""
        latest = postgres_schema.SCHEMA_VERSION  # read at call time: tests plant extra migrations
        ident = sql.Identifier(self.schema)
        conn.execute("BEGIN")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_key64(f"duroxide_sim:migrate:{self.schema}"),))
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))  # needs CREATE on the database
            conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
            current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
            if current == 0 and conn.execute("SELECT to_regclass('provider_meta')").fetchone()[0] is not None:
                # (migration 1 would fail on "relation provider_meta already exists")
                raise ProviderError(
                    f"PostgreSQL schema {self.schema!r} on {self._where} is a damaged duroxide_sim schema: its "
                    "schema_version table is empty, so its schema version is unknown; restore it from a backup (it "
                    "was left unchanged)", operation="open", retryable=False)
            if current > latest:
                raise ProviderError(
                    f"PostgreSQL schema {self.schema!r} on {self._where} has schema version {current}, but this "
                    f"duroxide_sim supports schema version {latest} at most; upgrade duroxide_sim to open it",
                    operation="open", retryable=False, found_version=current, supported_version=latest)
            for version, statements in postgres_schema.MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement)
                    conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
            if current > 0 and conn.execute("SELECT to_regclass('provider_meta')").fetchone()[0] is None:
                # A schema_version table of some other application (ours always has provider_meta).
                raise ProviderError(
                    f"PostgreSQL schema {self.schema!r} on {self._where} is not a duroxide_sim schema (it has a "
                    f"schema_version table at version {current} but no provider_meta); pick another schema",
                    operation="open", retryable=False)
            if latest == postgres_schema.TABLES_VERSION:
                have = {row[0] for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = %s", (self.schema,)).fetchall()}
                missing = [t for t in postgres_schema.TABLES if t not in have]
                if missing:
                    raise ProviderError(
                        f"PostgreSQL schema {self.schema!r} on {self._where} is a damaged duroxide_sim schema: "
                        f"table(s) {', '.join(missing)} missing (schema version {max(current, latest)}); restore it "
                        "from a backup (it was left unchanged)", operation="open", retryable=False,
                        missing_tables=missing)
            open_id = conn.execute("UPDATE provider_meta SET value = value + 1 WHERE key = 'opens' "
                                   "RETURNING value").fetchone()[0]
            conn.execute("COMMIT")
            return int(open_id)
        except BaseException:
            with contextlib.suppress(Exception):
                conn.execute("ROLLBACK")
            raise

    def _map_error(self, exc: BaseException, op: str) -> ProviderError:
        """psycopg error -> ProviderError with ``retryable`` (SPEC §15.1): connection failures,
        pool timeouts, serialization failures and deadlocks are retryable; constraint
        violations, bad data and SQL errors are permanent."""
        text = self._redact(str(exc).strip())
        if isinstance(exc, PoolTimeout):
            self._schedule_pool_check()
            return ProviderError(f"{op}: no PostgreSQL connection to {self._where} within {self._pool_timeout_s:g} s "
                                 f"(server down or unreachable?): {text}", operation=op, retryable=True)
        state = getattr(exc, "sqlstate", None) or ""
        if isinstance(exc, pg_errors.IntegrityError):
            return ProviderError(f"{op}: constraint violated: {text}", operation=op, retryable=False)
        if state in ("40001", "40P01", "55P03", "57014"):  # serialization, deadlock, lock timeout, cancel
            return ProviderError(f"{op}: transaction conflict ({text}); retry", operation=op, retryable=True)
        if state == "0A000" and "cached plan" in text:  # a migration changed a table under a prepared plan
            return ProviderError(f"{op}: {text}; retry", operation=op, retryable=True)
        if state == "25006":  # read_only_sql_transaction: a write on a read-only provider's session
            return ProviderError(f"{op}: the server refused a write on a read-only connection: {text}", operation=op,
                                 retryable=False)
        if state.startswith("54"):  # program limit exceeded (e.g. an index row too large): retrying cannot help
            return ProviderError(f"{op}: a value is too large for PostgreSQL: {text}", operation=op, retryable=False)
        if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)):
            self._schedule_pool_check()
            return ProviderError(f"{op}: PostgreSQL connection to {self._where} failed: {text}", operation=op,
                                 retryable=True)
        if isinstance(exc, pg_errors.DataError) or state in ("22021", "22P05"):
            return ProviderError(f"{op}: PostgreSQL rejected the data: {text}", operation=op, retryable=False)
        if isinstance(exc, (psycopg.ProgrammingError, psycopg.NotSupportedError)):
            return ProviderError(f"{op}: {text}", operation=op, retryable=False)
        return ProviderError(f"{op}: PostgreSQL error on {self._where}: {text}", operation=op, retryable=True)

    def _schedule_pool_check(self) -> None:
        """After a connection failure, test the idle pool connections in the background so the
        broken ones are replaced instead of failing one operation each."""
        pool = self._pool
        if pool is None or self._closed or not self._checking.acquire(blocking=False):
            return

        def run() -> None:
            try:
                pool.check()
            except Exception:  # noqa: BLE001 - best effort; the pool reconnects on its own
                pass
            finally:
                self._checking.release()

        threading.Thread(target=run, name="duroxide-pg-check", daemon=True).start()

    @contextlib.contextmanager
    def _tx(self, op: str, *, write: bool = True) -> Iterator[_Db]:
        """One transaction: READ COMMITTED for writes, REPEATABLE READ READ ONLY for reads;
        COMMIT on success (after sending queued NOTIFYs), ROLLBACK on any error (psycopg
        errors re-raised as ProviderError). Runs in pipeline mode (see :class:`_Db`).

        Read-only providers refuse ``write`` transactions here (the last line of defence behind
        the write methods' own check and the server's read-only sessions); in snapshot mode a
        read runs inside the one long transaction (:meth:`_snapshot_tx`)."""
        if self.read_only:
            if write:
                self._refuse_if_read_only(op)
            if self._snapshot:
                with self._snapshot_tx(op) as db:
                    yield db
                return
        conn = self._getconn(op)
        try:
            try:
                with conn.pipeline() as pipeline:
                    db = _Db(conn, pipeline)
                    conn.execute("BEGIN" if write else "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    yield db
                    if db.notify_kinds:
                        conn.execute("SELECT pg_notify(%s, %s)",
                                     (self._channel, f"{','.join(db.notify_kinds)}:{self._open_id}"))
                    conn.execute("COMMIT")
            except BaseException as exc:
                if not conn.closed:
                    with contextlib.suppress(Exception):
                        conn.execute("ROLLBACK")
                if isinstance(exc, psycopg.Error):
                    _drop_if_stale_plans(conn, exc)
                    raise self._map_error(exc, op) from exc
                if isinstance(exc, UnicodeEncodeError):
                    raise _not_unicode(op, exc) from exc
                raise
        finally:
            self._putconn(conn)

    @contextlib.contextmanager
    def _snapshot_tx(self, op: str) -> Iterator[_Db]:
        """A read inside the snapshot transaction (see :meth:`open_read_only`), one at a time.
        A server error aborts that transaction: every later read then fails with the first error."""
        with self._snapshot_lock:
            conn = self._snapshot_conn
            if self._closed or conn is None:
                raise ProviderError(f"{op}: PostgresProvider {self._where} (schema {self.schema!r}) is closed",
                                    operation=op)
            if self._snapshot_failed is not None:
                raise ProviderError(f"{op}: the read-only snapshot of {self.location} failed earlier and cannot "
                                    f"be read any more (open it again): {self._snapshot_failed}", operation=op,
                                    retryable=False)
            try:
                with conn.pipeline() as pipeline:
                    yield _Db(conn, pipeline)
            except psycopg.Error as exc:
                error = self._map_error(exc, op)
                self._snapshot_failed = str(error)
                raise error from exc
            except UnicodeEncodeError as exc:
                raise _not_unicode(op, exc) from exc

    def _probe(self, op: str, query: str, params: Any) -> list:
        """One read-only statement outside any transaction (autocommit): the cheap first look
        of a fetch, so an idle poll costs one round trip. (In snapshot mode: inside the snapshot.)"""
        if self._snapshot:
            with self._snapshot_tx(op) as db:
                return db.all(query, params)
        conn = self._getconn(op)
        try:
            return conn.execute(query, params).fetchall()
        except psycopg.Error as exc:
            _drop_if_stale_plans(conn, exc)
            raise self._map_error(exc, op) from exc
        except UnicodeEncodeError as exc:
            raise _not_unicode(op, exc) from exc
        finally:
            self._putconn(conn)

    def _getconn(self, op: str) -> Any:
        pool = self._pool
        if self._closed or pool is None:
            raise ProviderError(f"{op}: PostgresProvider {self._where} (schema {self.schema!r}) is closed",
                                operation=op)
        try:
            return pool.getconn()
        except psycopg.Error as exc:  # PoolTimeout is an OperationalError
            raise self._map_error(exc, op) from exc

    def _putconn(self, conn: Any) -> None:
        pool = self._pool
        if pool is None:
            with contextlib.suppress(Exception):
                conn.close()
            return
        with contextlib.suppress(Exception):
            pool.putconn(conn)

    def close(self) -> None:
        """Stop the listener and close every connection. Further calls fail."""
        self._closed = True
        self._listen_stop.set()
        conn = self._listen_conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        thread = self._listen_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        snapshot_conn, self._snapshot_conn = self._snapshot_conn, None
        if snapshot_conn is not None:  # (closing ends its read-only transaction)
            with contextlib.suppress(Exception):
                snapshot_conn.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                pool.close(timeout=5)

    def __enter__(self) -> "PostgresProvider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def bind_clock(self, clock: Clock) -> None:
        """Use ``clock`` if none was injected at construction (never replaces one)."""
        with self._listeners_lock:
            if self.clock is None:
                self.clock = clock

    def remove_wakeup_listener(self, callback: Callable[[str], None]) -> None:
        """Undo :meth:`add_wakeup_listener` (a stopped runtime, a client that is gone); the
        LISTEN thread keeps running (it is one per provider object)."""
        with self._listeners_lock:
            self._listeners = [c for c in self._listeners if c is not callback]

    def add_wakeup_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("orchestrator"|"worker")`` after commits that add work: at once for
        this object's commits, through LISTEN/NOTIFY for other provider objects' (other
        processes'). The first listener starts the LISTEN thread (not on a read-only provider:
        it commits nothing and waits for nothing, so it keeps the callback and listens to nothing)."""
        with self._listeners_lock:
            self._listeners.append(callback)
            start = self._listen_thread is None and not self._closed and not self.read_only
            if start:
                self._listen_thread = threading.Thread(target=self._listen_loop, name="duroxide-pg-listen",
                                                       daemon=True)
        if start:
            assert self._listen_thread is not None
            self._listen_thread.start()
            self._listen_ready.wait(5)  # LISTEN is active before we return (best effort while the server is down)

    def _now(self) -> int:
        if self.clock is None:
            raise ProviderError(
                "PostgresProvider has no clock: pass clock= to connect()/connect_with_schema() or call "
                "bind_clock() (the Runtime and Client do this) before using it", operation="clock")
        return int(self.clock.now_ms())

    def _notify(self, kinds: Sequence[str]) -> None:
        # After COMMIT and outside every lock: a listener may call back into the provider, and a
        # failing listener must not make a committed operation look failed.
        with self._listeners_lock:
            listeners = list(self._listeners)
        for kind in dict.fromkeys(kinds):
            for callback in listeners:
                try:
                    callback(kind)
                except Exception:  # pragma: no cover - defensive
                    _log.exception("wakeup listener failed")

    def _listen_loop(self) -> None:
        """LISTEN on the schema's channel; call the listeners for other objects' NOTIFYs."""
        own = f":{self._open_id}"
        received: list[str] = []
        failures = 0
        first = True

        def on_notify(note: Any) -> None:  # runs inside conn.execute below, on this thread
            if not note.payload.endswith(own):
                received.extend(note.payload.rsplit(":", 1)[0].split(","))

        while not self._listen_stop.is_set():
            conn = None
            try:
                conn = psycopg.connect(self._url, **self._conn_kwargs)
                self._listen_conn = conn
                conn.add_notify_handler(on_notify)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                if not first:  # notifications sent while we were disconnected are lost
                    self._notify(["orchestrator", "worker"])
                first = False
                failures = 0
                self._listen_ready.set()
                while not self._listen_stop.is_set():
                    readable, _, _ = select.select([conn.fileno()], [], [], 0.5)
                    if not readable:
                        continue
                    conn.execute("SELECT 1")  # reads the pending notifications (handler above)
                    if received:
                        kinds = list(dict.fromkeys(received))
                        received.clear()
                        self._notify(kinds)
            except Exception as exc:  # noqa: BLE001 - reconnect with backoff until closed
                if self._listen_stop.is_set():
                    break
                failures += 1
                self._listen_ready.set()
                _log.debug("LISTEN connection to %s failed (%s); reconnecting", self._where, exc)
                self._listen_stop.wait(min(0.1 * 2 ** min(failures, 5), 2.0))
            finally:
                self._listen_conn = None
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()

    def _new_token(self) -> str:
        return f"pg-{self._open_id}-{next(self._tokens)}"

    # --- (de)serialization ---------------------------------------------------------------------

    @staticmethod
    def _load_work(text: str, op: str) -> WorkItem:
        try:
            return loads(text, "work")
        except SerializationError as exc:
            raise ProviderError(f"{op}: unreadable queued work item: {exc}", operation=op) from exc

    def _load_events(self, db: _Db, instance: str, execution_id: int, seq: Any = _UNKNOWN) -> list[HistoryEvent]:
        """History of one execution in event_id order; SerializationError if a row is unreadable.

        Histories are append-only, so decoded events are kept (per instance, bounded LRU) and
        only rows newer than the last cached event id are read and decoded on later calls. A
        cache entry is keyed by the instance row's ``created_seq`` (pass ``seq`` when already
        read) and the execution id, so a deleted-and-recreated instance or a new execution never
        reuses stale events. The cache lock is never held across a database round trip."""
        if seq is _UNKNOWN:
            seq = db.scalar("SELECT created_seq FROM instances WHERE instance_id = %s", (instance,))
        with self._hcache_lock:
            entry = self._hcache.get(instance)
            cached: tuple[HistoryEvent, ...] = ()
            if seq is not None and entry is not None and entry[0] == seq and entry[1] == execution_id:
                cached = entry[2]
        after = cached[-1].event_id if cached else 0
        fresh = self._decode_rows(db, instance, execution_id, after)
        events = cached + tuple(fresh)
        if seq is not None:
            with self._hcache_lock:
                current = self._hcache.get(instance)
                if current is None or (current[0], current[1]) != (seq, execution_id) or len(current[2]) < len(events):
                    self._hcache[instance] = (seq, execution_id, events)
                self._hcache.move_to_end(instance)
                while len(self._hcache) > _HISTORY_CACHE_SIZE:
                    self._hcache.popitem(last=False)
        return list(events)

    @staticmethod
    def _decode_rows(db: _Db, instance: str, execution_id: int, after: int) -> list[HistoryEvent]:
        rows = db.all("SELECT event_id, event_data FROM history WHERE instance_id = %s AND execution_id = %s "
                      "AND event_id > %s ORDER BY event_id", (instance, execution_id, after))
        out = []
        for event_id, text in rows:
            try:
                out.append(loads(text, "event"))
            except SerializationError as exc:
                raise SerializationError(f"event {event_id} of execution {execution_id} of instance "
                                         f"{instance!r}: {exc}") from exc
        return out

    def _read_events(self, db: _Db, instance: str, execution_id: int, op: str) -> list[HistoryEvent]:
        try:
            return self._load_events(db, instance, execution_id)
        except SerializationError as exc:
            raise ProviderError(f"{op}: history deserialization failed: {exc}", operation=op,
                                instance_id=instance) from exc

    @staticmethod
    def _check_orch_item(item: Any, op: str) -> None:
        if not isinstance(item, WorkItem) or isinstance(item, ActivityExecute):
            raise ProviderError(f"not an orchestrator work item: {item!r}", operation=op)

    @staticmethod
    def _check_worker_item(item: Any, op: str) -> None:
        if not isinstance(item, ActivityExecute):
            raise ProviderError(f"the worker queue takes ActivityExecute only, got {item!r}", operation=op)

    # --- row helpers ---------------------------------------------------------------------------

    @staticmethod
    def _orch_row(item: WorkItem, visible_at: int, now: int) -> tuple:
        return (item.target_instance, type(item).KIND, dumps(item), visible_at, now)

    _INSERT_ORCH = ("INSERT INTO orchestrator_queue (instance_id, item_kind, work_item, visible_at, attempt_count, "
                    "created_at) VALUES (%s, %s, %s, %s, 0, %s)")
    _INSERT_WORK = ("INSERT INTO worker_queue (work_item, visible_at, attempt_count, created_at, instance_id, "
                    "execution_id, activity_id, session_id, tag) VALUES (%s, %s, 0, %s, %s, %s, %s, %s, %s)")

    @staticmethod
    def _work_row(item: ActivityExecute, now: int) -> tuple:
        return (dumps(item), now, now, item.instance, item.execution_id, item.id, item.session_id, item.tag)

    def _held_orch_lock(self, db: _Db, token: str, now: int, op: str, row: Any = _UNKNOWN) -> str:
        """Instance held by ``token`` with an unexpired lock (row locked), else LockLostError.
        ``row``: the result of the same ``SELECT ... FOR UPDATE`` when the caller already sent it."""
        if row is _UNKNOWN:
            row = db.one("SELECT instance_id, locked_until FROM instance_locks WHERE lock_token = %s FOR UPDATE",
                         (token,))
        if row is None:
            raise _lock_lost(op, token, f"Invalid lock token {token!r}: unknown, already released, taken over "
                             "after expiry, or its instance was deleted")
        if row[1] <= now:
            raise _lock_lost(op, token, f"Instance lock expired for instance {row[0]!r} (lock token {token!r}); "
                             "the turn must not commit", instance_id=row[0])
        return row[0]

    @staticmethod
    def _release_orch_lock(db: _Db, instance: str, token: str) -> None:
        db.send("UPDATE orchestrator_queue SET lock_token = NULL WHERE instance_id = %s AND lock_token = %s",
                (instance, token))
        db.send("DELETE FROM instance_locks WHERE instance_id = %s AND lock_token = %s", (instance, token))

    @staticmethod
    def _work_row_for(db: _Db, token: str, now: int, op: str, *, need_live: bool) -> tuple:
        row = db.one("SELECT id, locked_until, session_id, attempt_count, visible_at FROM worker_queue "
                     "WHERE lock_token = %s FOR UPDATE", (token,))
        if row is None:
            raise _lock_lost(op, token, f"Work item lock token {token!r} is unknown: the activity was cancelled or "
                             "deleted, already acked/abandoned, or its lock was stolen after expiry")
        if need_live and row[1] is not None and row[1] <= now:
            raise _lock_lost(op, token, f"Work item lock expired (lock token {token!r})")
        return row

    @staticmethod
    def _bump_session(db: _Db, session_id: str | None, now: int) -> None:
        # Only while the session lock is live: never refresh a session another worker took over.
        if session_id is not None:
            db.send("UPDATE sessions SET last_activity_at = %s WHERE session_id = %s AND locked_until > %s",
                    (now, session_id, now))

    @staticmethod
    def _current_execution_id(db: _Db, instance: str) -> int | None:
        """From the instance row, else the latest stored execution, else None."""
        return db.scalar(_CURRENT_EXECUTION_ID, {"i": instance})

    # --- orchestrator queue --------------------------------------------------------------------

    def fetch_orchestration_item(
        self, lock_timeout_ms: int, poll_timeout_ms: int = 0, filter: tuple[str, str] | None = None
    ) -> OrchestrationItem | None:
        """Lock the instance of the oldest visible message and return its batch (SPEC §15.1).

        Locked instances, instances another fetcher is examining right now, filter-incompatible
        ones and orphans (SPEC §3.12, Recommend) are skipped so they never block others.
        ``poll_timeout_ms`` is ignored (short poll). An idle poll is one autocommit query.
        """
        op = "fetch_orchestration_item"
        self._refuse_if_read_only(op)
        params: dict[str, Any] = {"limit": _FIRST_PAGE, "after_at": PARKED_BELOW, "after_id": -(1 << 63),
                                  "parked_below": PARKED_BELOW}
        query = _ORCH_CANDIDATES.format(pin="")
        if filter is not None:
            lo = _parse_semver(filter[0], "filter minimum")
            hi = _parse_semver(filter[1], "filter maximum")
            params.update({f"lo{i}": v for i, v in enumerate(lo)})
            params.update({f"hi{i}": v for i, v in enumerate(hi)})
            query = _ORCH_CANDIDATES.format(pin=_PIN_FILTER)
        now = params["now"] = self._now()
        sweep_at = self._orphan_sweep_at
        if sweep_at is None or now >= sweep_at:
            self._orphan_sweep_at = now + ORPHAN_SWEEP_INTERVAL_MS
            self._expire_orphans(now)
        page = self._probe(op, query, params)
        if not page:
            return None
        with self._tx(op) as db:
            seen: set[str] = set()
            while True:
                for instance, _, _ in page:
                    if instance in seen:
                        continue
                    seen.add(instance)
                    # Claim the instance among fetchers (non-blocking) and look at its lock row
                    # and visible messages in one statement. The snapshot may predate the claim;
                    # the lock statements below are what decide, this only avoids useless work.
                    claimed, locked_until, visible = db.one(
                        "SELECT pg_try_advisory_xact_lock(%(k1)s, %(k2)s), (SELECT locked_until FROM instance_locks "
                        "WHERE instance_id = %(i)s), EXISTS (SELECT 1 FROM orchestrator_queue WHERE instance_id = "
                        "%(i)s AND visible_at <= %(now)s)",
                        {"k1": self._schema_key, "k2": _key32(instance), "i": instance, "now": now})
                    # The time the lock counts from is read now, not before the fetch began: the
                    # pool or the server may have kept this fetch waiting (a full pool, a table
                    # lock, a stall) longer than the lock lasts, and a lock that expired before
                    # it was handed out let a second fetcher run the same turn.
                    now = self._now()
                    if not claimed or not visible or (locked_until is not None and locked_until > now):
                        continue  # another fetcher is examining it, it was just fetched, or it is locked
                    result = self._lock_batch(db, instance, locked_until is not None, lock_timeout_ms, now, op)
                    if result is not None:
                        return result
                if len(page) < params["limit"]:
                    return None
                # Keyset paging (see _ORCH_CANDIDATES): rows parked or deleted above cannot
                # shift the next page, so no unexamined candidate is skipped.
                params["after_at"], params["after_id"] = page[-1][1], page[-1][2]
                params["limit"] = _CANDIDATE_PAGE
                page = db.all(query, params)

    def _expire_orphans(self, now: int) -> None:
        """Parked orphans (SPEC §3.12) at least ORPHAN_RETENTION_MS old: deleted if their
        instance still does not exist, delivered normally if it exists by now, left for the
        start's batch if one is queued (as SqliteProvider._expire_orphans). Run from a fetch at
        most every ORPHAN_SWEEP_INTERVAL_MS per provider object; each statement walks only the
        old parked rows (index on visible_at). A failure is logged, not raised: the fetch goes on
        and the next sweep retries."""
        params = {"b": now - ORPHAN_RETENTION_MS - ORPHAN_PARK_SHIFT, "shift": ORPHAN_PARK_SHIFT,
                  "parked_below": PARKED_BELOW}
        try:
            with self._tx("expire_orphans") as db:
                expired = db.execute(_EXPIRE_ORPHANS, params).rowcount
                db.send(_UNPARK_EXISTING, params)
        except ProviderError as exc:
            _log.warning("expiring orphan messages failed (retried in %d ms): %s", ORPHAN_SWEEP_INTERVAL_MS, exc)
            return
        if expired:
            _log.debug("expired %d queued message(s) for instances that did not exist %d ms after the messages "
                       "became deliverable (SPEC §3.12)", expired, ORPHAN_RETENTION_MS)

    @staticmethod
    def _take_instance_lock(db: _Db, instance: str, token: str, has_row: bool, lock_timeout_ms: int, now: int) -> None:
        """Send the statement inserting the lock row (``has_row`` False) or taking over an
        expired one; its effect is checked through the tagging UPDATE that follows it.

        Never ``INSERT ... ON CONFLICT DO UPDATE ... WHERE``: that locks the conflicting row even
        when the WHERE fails, so a fetcher that loses a race would block the holder's ack until
        the fetcher's transaction ends. ``ON CONFLICT DO NOTHING`` and a plain conditional
        UPDATE lock nothing when they do nothing. The caller holds the instance's advisory
        lock, so no other fetcher races these statements; an ack, abandon or renewal of the
        current holder may, and then the statement's WHERE / the unique key decides."""
        if not has_row:
            db.send("INSERT INTO instance_locks (instance_id, lock_token, locked_until, locked_at) "
                    "VALUES (%s, %s, %s, %s) ON CONFLICT (instance_id) DO NOTHING",
                    (instance, token, now + lock_timeout_ms, now))
        else:  # the takeover overwrites only an expired lock: the old token becomes unknown
            db.send("UPDATE instance_locks SET lock_token = %s, locked_until = %s, locked_at = %s "
                    "WHERE instance_id = %s AND locked_until <= %s",
                    (token, now + lock_timeout_ms, now, instance, now))

    def _batch_metadata(self, db: _Db, instance: str, info: tuple | None, items: list[WorkItem]) -> tuple | None:
        """(name, version, execution id, read history?, history error) or None for an orphan.
        ``info`` is the instance row (_INSTANCE_INFO) or None."""
        if info is not None:
            return info[0], info[1], info[2], True, None
        execution_id = self._current_execution_id(db, instance)
        error = None
        if execution_id is not None:  # history without a row: metadata from OrchestrationStarted
            started = db.one("SELECT event_data FROM history WHERE instance_id = %s AND execution_id = %s "
                             "AND event_type = 'OrchestrationStarted' ORDER BY event_id LIMIT 1",
                             (instance, execution_id))
            if started is not None:
                try:
                    event = loads(started[0], "event")
                    return event.name, event.version, execution_id, True, None
                except SerializationError as exc:
                    error = f"Failed to deserialize history: {exc}"
        for item in items:
            if isinstance(item, (StartOrchestration, ContinueAsNew)):
                return item.orchestration, item.version, 1, False, error
        if error is not None:
            return "", None, execution_id, False, error
        return None

    def _lock_batch(self, db: _Db, instance: str, has_lock_row: bool, lock_timeout_ms: int, now: int,
                    op: str) -> OrchestrationItem | None:
        token = self._new_token()
        # One round trip: take the lock, tag the visible messages (attempts +1) only if the lock
        # is ours, read the instance row and the KV snapshot.
        self._take_instance_lock(db, instance, token, has_lock_row, lock_timeout_ms, now)
        tagged = db.start("UPDATE orchestrator_queue SET lock_token = %(t)s, attempt_count = attempt_count + 1 "
                          "WHERE instance_id = %(i)s AND visible_at <= %(now)s AND EXISTS (SELECT 1 FROM "
                          "instance_locks WHERE instance_id = %(i)s AND lock_token = %(t)s) "
                          "RETURNING visible_at, id, work_item, attempt_count", {"t": token, "i": instance, "now": now})
        info_cur = db.start(_INSTANCE_INFO, (instance,))
        kv_cur = db.start("SELECT key, value, last_updated_at_ms FROM kv_store WHERE instance_id = %s ORDER BY key",
                          (instance,))
        can_cur = db.start(_CAN_PENDING, {"i": instance, "t": token})
        rows = sorted(tagged.fetchall())
        info = info_cur.fetchone()
        kv = {key: KvEntry(_load_text(value), ts) for key, value, ts in kv_cur.fetchall()}
        can_queued_elsewhere = can_cur.fetchone()[0]
        if not rows:  # the lock was not ours after all, or nothing is visible any more
            db.send("DELETE FROM instance_locks WHERE lock_token = %s", (token,))
            return None
        messages = [self._load_work(text, op) for _, _, text, _ in rows]
        meta = self._batch_metadata(db, instance, info, messages)
        if meta is None:
            self._give_back(db, instance, token, messages, orphan=True)
            return None
        if can_queued_elsewhere and not any(isinstance(m, ContinueAsNew) for m in messages):
            # The current execution continued-as-new and its ContinueAsNew item is queued but
            # not visible yet (abandoned with a delay): fetching now would hand the engine
            # messages that SPEC §3.1 step 3 discards. Wait for the item (as SqliteProvider).
            self._give_back(db, instance, token, messages, orphan=False)
            return None
        name, version, execution_id, read_history, error = meta
        attempts = max(count for _, _, _, count in rows)
        history: list[HistoryEvent] = []
        if read_history and error is None:
            try:
                history = self._load_events(db, instance, execution_id, seq=info[3] if info is not None else None)
            except SerializationError as exc:
                error = f"Failed to deserialize history: {exc}"  # lock held, attempts counted (SPEC §16 I31)
        return OrchestrationItem(
            instance=instance, orchestration_name=name, execution_id=execution_id, version=version,
            history=() if error is not None else tuple(history), messages=tuple(messages), lock_token=token,
            attempt_count=attempts, history_error=error, kv_snapshot=kv,
        )

    def _give_back(self, db: _Db, instance: str, token: str, messages: list[WorkItem], *, orphan: bool) -> None:
        """Release an instance just locked that has nothing to run now: untag its batch (attempt
        increments undone) and delete the lock row. For an ``orphan`` (no row, no history, no
        start item) QueueMessages sent before the instance exists are dropped instead (SPEC
        §6.2); anything else may be racing its start, so it stays queued, parked (see
        _shared.ORPHAN_PARK_SHIFT: no later fetch walks past it, the start's batch still carries
        it, and it expires after ORPHAN_RETENTION_MS). A start item queued but not yet visible
        (abandoned with a delay after a failed first ack) means the instance is about to exist:
        then everything is kept (parked)."""
        drop = False
        if orphan and messages and all(isinstance(m, QueueMessage) for m in messages):
            drop = db.one("SELECT 1 FROM orchestrator_queue WHERE instance_id = %s AND item_kind = ANY(%s) LIMIT 1",
                          (instance, list(_START_KINDS))) is None
        if drop:
            db.send("DELETE FROM orchestrator_queue WHERE lock_token = %s", (token,))
        elif orphan:
            db.send("UPDATE orchestrator_queue SET lock_token = NULL, attempt_count = GREATEST(0, attempt_count - 1), "
                    "visible_at = CASE WHEN visible_at >= %s THEN visible_at - %s ELSE visible_at END "
                    "WHERE lock_token = %s", (PARKED_BELOW, ORPHAN_PARK_SHIFT, token))
        else:
            db.send("UPDATE orchestrator_queue SET lock_token = NULL, attempt_count = GREATEST(0, attempt_count - 1) "
                    "WHERE lock_token = %s", (token,))
        db.send("DELETE FROM instance_locks WHERE lock_token = %s", (token,))

    def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[HistoryEvent],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivityIdentifier] = (),
    ) -> None:
        """Commit one turn in one transaction (SPEC §15.1) and release the instance lock.

        Raises LockLostError (unknown or expired token) or ProviderError (duplicate event id,
        malformed input); the transaction then rolls back, so nothing changes and a held lock
        stays held.
        """
        op = "ack_orchestration_item"
        self._refuse_if_read_only(op)
        delta, workers, orchs = list(history_delta), list(worker_items), list(orchestrator_items)
        self._check_events(delta, op)
        pin = metadata.pinned_duroxide_version
        pin = _parse_semver(pin, "pinned_duroxide_version") if pin is not None else None
        for item in workers:
            self._check_worker_item(item, op)
        for item in orchs:
            self._check_orch_item(item, op)
        with self._tx(op) as db:
            now = self._now()
            # Round trip 1: re-verify the lock (row-locked) and look for duplicate event ids.
            lock_cur = db.start("SELECT instance_id, locked_until FROM instance_locks WHERE lock_token = %s "
                                "FOR UPDATE", (lock_token,))
            dup_cur = db.start("SELECT event_id FROM history WHERE instance_id = (SELECT instance_id FROM "
                               "instance_locks WHERE lock_token = %s) AND execution_id = %s AND event_id = ANY(%s)",
                               (lock_token, execution_id, sorted({e.event_id for e in delta}))) if delta else None
            instance = self._held_orch_lock(db, lock_token, now, op, row=lock_cur.fetchone())
            if dup_cur is not None:
                self._raise_duplicates(instance, execution_id, delta, {r[0] for r in dup_cur.fetchall()}, op)
            # Round trip 2: every write, the NOTIFY and the COMMIT.
            db.send("DELETE FROM orchestrator_queue WHERE instance_id = %s AND lock_token = %s", (instance, lock_token))
            self._upsert_instance(db, instance, execution_id, metadata, now)
            self._append(db, instance, execution_id, delta, now)
            if pin is not None:
                db.send("UPDATE executions SET duroxide_version_major = %s, duroxide_version_minor = %s, "
                        "duroxide_version_patch = %s WHERE instance_id = %s AND execution_id = %s",
                        (*pin, instance, execution_id))
            statuses = [e for e in delta if isinstance(e, CustomStatusUpdated)]
            # (no-ops when the instance has no row yet: nothing to update)
            if statuses:  # the last one wins; one version bump per ack
                db.send("UPDATE instances SET current_execution_id = GREATEST(current_execution_id, %s), "
                        "updated_at = %s, custom_status = %s, custom_status_version = custom_status_version + 1 "
                        "WHERE instance_id = %s", (execution_id, now, _store_text(statuses[-1].status), instance))
            else:
                db.send("UPDATE instances SET current_execution_id = GREATEST(current_execution_id, %s), "
                        "updated_at = %s WHERE instance_id = %s", (execution_id, now, instance))
            if metadata.status is not None:
                db.send("UPDATE executions SET status = %s, output = %s, completed_at = %s "
                        "WHERE instance_id = %s AND execution_id = %s",
                        (metadata.status, _store_text(metadata.output), now, instance, execution_id))
            self._apply_kv(db, instance, delta)
            if metadata.status in TERMINAL_STATUSES:
                self._merge_kv(db, instance)
            db.executemany(self._INSERT_WORK, [self._work_row(item, now) for item in workers])
            # Cancel AFTER inserting: schedule+cancel in one ack must leave nothing (SPEC §11.2).
            db.executemany("DELETE FROM worker_queue WHERE instance_id = %s AND execution_id = %s "
                           "AND activity_id = %s",
                           [(c.instance, c.execution_id, c.activity_id) for c in cancelled_activities])
            db.executemany(self._INSERT_ORCH, [
                self._orch_row(item, item.fire_at_ms if isinstance(item, TimerFiredMsg) else now, now)
                for item in orchs])
            self._release_orch_lock(db, instance, lock_token)
            # "committed": clients waiting on an instance (here or in other processes) look again.
            kinds = (["orchestrator"] if orchs else []) + (["worker"] if workers else []) + ["committed"]
            db.notify(*kinds)
        if delta and self._hcache:
            forget_if_filled_below(self._hcache, self._hcache_lock, instance, execution_id, delta)
        self._notify(kinds)

    @staticmethod
    def _check_events(events: list, op: str) -> None:
        for event in events:
            if not isinstance(event, HistoryEvent):
                raise ProviderError(f"not a history event: {event!r}", operation=op)

    @staticmethod
    def _raise_duplicates(instance: str, execution_id: int, events: list, seen: set[int], op: str) -> None:
        seen = set(seen)
        for event in events:
            if event.event_id in seen:
                raise ProviderError(
                    f"duplicate event_id {event.event_id} in execution {execution_id} of instance {instance!r}; "
                    "history is append-only", operation=op, instance_id=instance, event_id=event.event_id)
            seen.add(event.event_id)

    def _validate_events(self, db: _Db, instance: str, execution_id: int, events: list, op: str) -> None:
        self._check_events(events, op)
        if events:
            seen = {r[0] for r in db.all("SELECT event_id FROM history WHERE instance_id = %s AND execution_id = %s "
                                         "AND event_id = ANY(%s)",
                                         (instance, execution_id, sorted({e.event_id for e in events})))}
            self._raise_duplicates(instance, execution_id, events, seen, op)

    @staticmethod
    def _append(db: _Db, instance: str, execution_id: int, events: list, now: int) -> None:
        """Create the execution if absent and store ``events`` verbatim."""
        db.send("INSERT INTO executions (instance_id, execution_id, status, started_at) "
                "VALUES (%s, %s, 'Running', %s) ON CONFLICT DO NOTHING", (instance, execution_id, now))
        db.executemany("INSERT INTO history (instance_id, execution_id, event_id, event_type, event_data, created_at) "
                       "VALUES (%s, %s, %s, %s, %s, %s)",
                       [(instance, execution_id, e.event_id, type(e).KIND, dumps(e), now) for e in events])

    @staticmethod
    def _upsert_instance(db: _Db, instance: str, execution_id: int, md: ExecutionMetadata, now: int) -> None:
        """Create-if-absent / update the instance row from metadata (nothing without a name)."""
        if md.orchestration_name is None:
            return
        # The parent link is immutable once created; a NULL version is filled in later, never cleared.
        db.send(
            "INSERT INTO instances (instance_id, orchestration_name, orchestration_version, current_execution_id, "
            "created_at, updated_at, parent_instance_id) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (instance_id) DO UPDATE SET orchestration_name = EXCLUDED.orchestration_name, "
            "orchestration_version = COALESCE(EXCLUDED.orchestration_version, instances.orchestration_version)",
            (instance, md.orchestration_name, md.orchestration_version, execution_id, now, now,
             md.parent_instance_id))

    @staticmethod
    def _apply_kv(db: _Db, instance: str, delta: list) -> None:
        upsert = ("INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms) VALUES (%s, %s, %s, %s) "
                  "ON CONFLICT (instance_id, key) DO UPDATE SET value = EXCLUDED.value, "
                  "last_updated_at_ms = EXCLUDED.last_updated_at_ms")
        for event in delta:
            if isinstance(event, KeyValueSet):
                db.send(upsert, (instance, event.key, _store_text(event.value), event.last_updated_at_ms))
            elif isinstance(event, KeyValueCleared):
                db.send(upsert, (instance, event.key, None, None))
            elif isinstance(event, KeyValuesCleared):
                # Tombstone every delta row and every store key, so reads hide the store too.
                db.send("UPDATE kv_delta SET value = NULL, last_updated_at_ms = NULL WHERE instance_id = %s",
                        (instance,))
                db.send("INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms) "
                        "SELECT instance_id, key, NULL, NULL FROM kv_store WHERE instance_id = %s "
                        "ON CONFLICT (instance_id, key) DO UPDATE SET value = NULL, last_updated_at_ms = NULL",
                        (instance,))

    @staticmethod
    def _merge_kv(db: _Db, instance: str) -> None:
        """At the end of an execution the delta folds into the store (tombstones delete)."""
        db.send("DELETE FROM kv_store WHERE instance_id = %s AND key IN "
                "(SELECT key FROM kv_delta WHERE instance_id = %s AND value IS NULL)", (instance, instance))
        db.send("INSERT INTO kv_store (instance_id, key, value, last_updated_at_ms) "
                "SELECT instance_id, key, value, last_updated_at_ms FROM kv_delta "
                "WHERE instance_id = %s AND value IS NOT NULL ORDER BY key "
                "ON CONFLICT (instance_id, key) DO UPDATE SET value = EXCLUDED.value, "
                "last_updated_at_ms = EXCLUDED.last_updated_at_ms", (instance,))
        db.send("DELETE FROM kv_delta WHERE instance_id = %s", (instance,))

    def abandon_orchestration_item(
        self, lock_token: str, delay_ms: int | None = None, ignore_attempt: bool = False
    ) -> None:
        """Release the instance lock; optionally hide its visible messages for ``delay_ms``
        and undo this fetch's attempt increment (``ignore_attempt``, floor 0)."""
        op = "abandon_orchestration_item"
        self._refuse_if_read_only(op)
        with self._tx(op) as db:
            now = self._now()
            row = db.one("SELECT instance_id FROM instance_locks WHERE lock_token = %s FOR UPDATE", (lock_token,))
            if row is None:
                raise _lock_lost(op, lock_token, f"Invalid lock token {lock_token!r}: unknown or already released")
            instance = row[0]
            if ignore_attempt:
                db.send("UPDATE orchestrator_queue SET attempt_count = GREATEST(0, attempt_count - 1) "
                        "WHERE instance_id = %s AND lock_token = %s", (instance, lock_token))
            if delay_ms is not None:
                db.send("UPDATE orchestrator_queue SET visible_at = GREATEST(visible_at, %s) "
                        "WHERE instance_id = %s AND visible_at <= %s", (now + delay_ms, instance, now))
            self._release_orch_lock(db, instance, lock_token)

    def renew_orchestration_item_lock(self, lock_token: str, extend_ms: int) -> None:
        """Extend a held, unexpired instance lock to now + ``extend_ms``."""
        op = "renew_orchestration_item_lock"
        self._refuse_if_read_only(op)
        with self._tx(op) as db:
            now = self._now()
            instance = self._held_orch_lock(db, lock_token, now, op)
            db.send("UPDATE instance_locks SET locked_until = %s WHERE instance_id = %s", (now + extend_ms, instance))

    # --- worker queue --------------------------------------------------------------------------

    def fetch_work_item(
        self,
        lock_timeout_ms: int,
        poll_timeout_ms: int = 0,
        session: SessionConfig | None = None,
        tag_filter: TagFilter = TagFilter.DEFAULT_ONLY,  # type: ignore[attr-defined]
    ) -> WorkItemLease | None:
        """Lock the oldest visible, unlocked (or expired) activity that the tag filter and the
        session rules allow (SPEC §15.3), claiming its session for ``session.owner_id``."""
        op = "fetch_work_item"
        self._refuse_if_read_only(op)
        if tag_filter.mode == "none":
            return None
        params: dict[str, Any] = {"tags": sorted(tag_filter.tag_set)}
        where = ["visible_at <= %(now)s", "(locked_until IS NULL OR locked_until <= %(now)s)"]
        where.append({"default_only": "tag IS NULL", "tags": "tag = ANY(%(tags)s)",
                      "default_and": "(tag IS NULL OR tag = ANY(%(tags)s))", "any": "TRUE"}[tag_filter.mode])
        if session is None:
            where.append("session_id IS NULL")  # session rows go only to session-aware fetchers
        else:
            params["owner"] = session.owner_id
            where.append("(session_id IS NULL OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = "
                         "worker_queue.session_id AND s.locked_until > %(now)s AND s.worker_id <> %(owner)s))")
        cond = " AND ".join(where)
        candidates = f"SELECT id, session_id FROM worker_queue WHERE {cond} ORDER BY visible_at, id " \
                     "LIMIT %(limit)s OFFSET %(offset)s"
        now = params["now"] = self._now()
        params.update(limit=_FIRST_PAGE, offset=0)
        page = self._probe(op, candidates, params)  # an idle poll is this one query
        if not page:
            return None
        with self._tx(op) as db:
            row = self._claim_work_row(db, page, candidates, cond, params, session, now)
            if row is None:
                return None
            rid, text, session_id = row
            item = self._load_work(text, op)
            token = self._new_token()  # an expired lock is stolen: its token becomes unknown
            now = self._now()  # (after any wait for the pool or the server: see fetch_orchestration_item)
            attempts = db.scalar("UPDATE worker_queue SET lock_token = %s, locked_until = %s, "
                                 "attempt_count = attempt_count + 1 WHERE id = %s RETURNING attempt_count",
                                 (token, now + lock_timeout_ms, rid))
        assert isinstance(item, ActivityExecute)
        return WorkItemLease(item=item, lock_token=token, attempt_count=attempts)

    def _claim_work_row(self, db: _Db, page: list, candidates: str, cond: str, params: dict,
                        session: SessionConfig | None, now: int) -> tuple | None:
        """First candidate this worker may take, row-locked (``FOR UPDATE SKIP LOCKED``, with
        the conditions re-checked), its session claimed.

        Candidates are read without locks (``page``, then further pages). A session row is only
        taken after the schema's session advisory lock (blocking, one per transaction) and a
        fresh look at ``sessions``: concurrent claimers of one session serialize, the losers
        see the winner's claim and skip its rows (SPEC §15.3: one owner per live session)."""
        serialized = False
        lost: set[str] = set()
        lock_first = (f"SELECT id, work_item, session_id FROM worker_queue WHERE id = ANY(%(ids)s) AND {cond} "
                      "ORDER BY visible_at, id LIMIT 1 FOR UPDATE SKIP LOCKED")
        while True:
            pos = 0
            while pos < len(page):
                if page[pos][1] is None:
                    # A run of session-less candidates: lock the first still-available one.
                    end = pos
                    while end < len(page) and page[end][1] is None:
                        end += 1
                    row = db.one(lock_first, {**params, "ids": [rid for rid, _ in page[pos:end]]})
                    if row is not None:
                        return row
                    pos = end
                    continue
                rid, session_id = page[pos]
                pos += 1
                if session is None or session_id in lost:
                    continue
                if not serialized:
                    db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self._schema_key, _key32("\x00sessions")))
                    serialized = True
                holder = db.one("SELECT worker_id FROM sessions WHERE session_id = %s AND locked_until > %s",
                                (session_id, now))
                if holder is not None and holder[0] != session.owner_id:
                    lost.add(session_id)
                    continue
                row = db.one(lock_first, {**params, "ids": [rid]})
                if row is None:
                    continue  # taken (or being taken) by another worker
                now = self._now()  # (the session lock counts from after any wait, as the item's)
                db.send("INSERT INTO sessions (session_id, worker_id, locked_until, last_activity_at) "
                        "VALUES (%s, %s, %s, %s) ON CONFLICT (session_id) DO UPDATE SET "
                        "worker_id = EXCLUDED.worker_id, locked_until = EXCLUDED.locked_until, "
                        "last_activity_at = EXCLUDED.last_activity_at",
                        (session_id, session.owner_id, now + session.lock_timeout_ms, now))
                return row
            if len(page) < params["limit"]:
                return None
            params["offset"] += params["limit"]
            params["limit"] = _CANDIDATE_PAGE
            page = db.all(candidates, params)

    def ack_work_item(self, lock_token: str, completion: WorkItem | None) -> None:
        """Delete the locked row and enqueue ``completion`` (if any) in one transaction.
        LockLostError if the row was cancelled or deleted, or its lock expired or was stolen."""
        op = "ack_work_item"
        self._refuse_if_read_only(op)
        with self._tx(op) as db:
            now = self._now()
            rid, _, session_id, _, _ = self._work_row_for(db, lock_token, now, op, need_live=True)
            if completion is not None and not isinstance(completion, (ActivityCompletedMsg, ActivityFailedMsg)):
                raise ProviderError(f"a worker ack takes ActivityCompleted/ActivityFailed, got {completion!r}",
                                    operation=op)
            db.send("DELETE FROM worker_queue WHERE id = %s", (rid,))
            self._bump_session(db, session_id, now)
            if completion is not None:
                db.send(self._INSERT_ORCH, self._orch_row(completion, now, now))
                db.notify("orchestrator")
        if completion is not None:
            self._notify(["orchestrator"])

    def renew_work_item_lock(self, lock_token: str, extend_ms: int) -> None:
        """Extend a live row lock. Failure is the worker's cancellation signal."""
        op = "renew_work_item_lock"
        self._refuse_if_read_only(op)
        with self._tx(op) as db:
            now = self._now()
            rid, _, session_id, _, _ = self._work_row_for(db, lock_token, now, op, need_live=True)
            db.send("UPDATE worker_queue SET locked_until = %s WHERE id = %s", (now + extend_ms, rid))
            self._bump_session(db, session_id, now)

    def abandon_work_item(self, lock_token: str, delay_ms: int | None = None, ignore_attempt: bool = False) -> None:
        """Unlock the row; ``delay_ms`` hides it until now + delay; ``ignore_attempt`` undoes
        the fetch's attempt increment (floor 0). Without a delay the row keeps its FIFO place."""
        op = "abandon_work_item"
        self._refuse_if_read_only(op)
        with self._tx(op) as db:
            now = self._now()
            rid, _, _, attempts, visible_at = self._work_row_for(db, lock_token, now, op, need_live=False)
            if ignore_attempt:
                attempts = max(0, attempts - 1)
            if delay_ms is not None:
                visible_at = max(visible_at, now + delay_ms)
            db.send("UPDATE worker_queue SET lock_token = NULL, locked_until = NULL, attempt_count = %s, "
                    "visible_at = %s WHERE id = %s", (attempts, visible_at, rid))

    def renew_session_lock(self, owner_ids: Sequence[str], extend_ms: int, idle_timeout_ms: int) -> int:
        """Extend the live, non-idle sessions owned by ``owner_ids``; return how many."""
        self._refuse_if_read_only("renew_session_lock")
        owners = list(dict.fromkeys(owner_ids))
        if not owners:
            return 0
        with self._tx("renew_session_lock") as db:
            now = self._now()
            cur = db.execute("UPDATE sessions SET locked_until = %s WHERE worker_id = ANY(%s) "
                             "AND locked_until > %s AND last_activity_at > %s",
                             (now + extend_ms, owners, now, now - idle_timeout_ms))
            return cur.rowcount

    def cleanup_orphaned_sessions(self, idle_timeout_ms: int) -> int:
        """Delete expired sessions that have no queued rows; return how many."""
        self._refuse_if_read_only("cleanup_orphaned_sessions")
        with self._tx("cleanup_orphaned_sessions") as db:
            now = self._now()
            cur = db.execute("DELETE FROM sessions s WHERE s.locked_until < %s AND NOT EXISTS "
                             "(SELECT 1 FROM worker_queue w WHERE w.session_id = s.session_id)", (now,))
            return cur.rowcount

    # --- enqueue and reads ---------------------------------------------------------------------

    def enqueue_for_orchestrator(self, item: WorkItem, delay_ms: int | None = None) -> None:
        """Queue ``item`` for its target instance, visible after ``delay_ms``. Never creates
        an instance (its first ack does)."""
        op = "enqueue_for_orchestrator"
        self._refuse_if_read_only(op)
        self._check_orch_item(item, op)
        with self._tx(op) as db:
            now = self._now()
            db.send(self._INSERT_ORCH, self._orch_row(item, now + max(0, delay_ms or 0), now))
            db.notify("orchestrator")
        self._notify(["orchestrator"])

    def enqueue_for_worker(self, item: ActivityExecute) -> None:
        """Queue an activity, visible now."""
        op = "enqueue_for_worker"
        self._refuse_if_read_only(op)
        self._check_worker_item(item, op)
        with self._tx(op) as db:
            db.send(self._INSERT_WORK, self._work_row(item, self._now()))
            db.notify("worker")
        self._notify(["worker"])

    def read(self, instance: str) -> list[HistoryEvent]:
        """History of the latest execution; unknown instance -> []."""
        check_instance_arg(instance, "read")
        with self._tx("read", write=False) as db:
            latest = db.scalar("SELECT MAX(execution_id) FROM executions WHERE instance_id = %s", (instance,))
            return [] if latest is None else self._read_events(db, instance, latest, "read")

    def read_with_execution(self, instance: str, execution_id: int) -> list[HistoryEvent]:
        """History of one execution; unknown -> []."""
        check_instance_arg(instance, "read_with_execution")
        with self._tx("read_with_execution", write=False) as db:
            return self._read_events(db, instance, execution_id, "read_with_execution")

    def append_with_execution(self, instance: str, execution_id: int, events: Sequence[HistoryEvent]) -> None:
        """Append events verbatim (tests, tools). Duplicate ids -> ProviderError, nothing stored."""
        op = "append_with_execution"
        self._refuse_if_read_only(op)
        events = list(events)
        with self._tx(op) as db:
            now = self._now()
            self._validate_events(db, instance, execution_id, events, op)
            self._append(db, instance, execution_id, events, now)
        forget_if_filled_below(self._hcache, self._hcache_lock, instance, execution_id, events)

    def import_history(self, instance: str, executions: Sequence[tuple[int, Sequence[HistoryEvent]]],
                       kv_base: Mapping[str, tuple[str, int]] | None = None,
                       restored: Mapping[str, int] | None = None, queued: Sequence[WorkItem] = ()) -> None:
        """Restore a recorded instance: events verbatim plus what their acks stored beside them,
        and the work still queued for it (see SqliteProvider.import_history, also for ``kv_base``
        and ``queued``); one transaction, refused when the instance exists."""
        op = "import_history"
        self._refuse_if_read_only(op)
        queued = list(queued)
        for item in queued:
            if not isinstance(item, ActivityExecute):
                self._check_orch_item(item, op)
        plans = []
        for execution_id, events, info in _imported_executions(instance, executions, op):
            self._check_events(events, op)
            pin = info.metadata.pinned_duroxide_version
            plans.append((execution_id, events, info, _parse_semver(pin, "pinned_duroxide_version") if pin is not None else None))
        with self._tx(op) as db:
            if db.all("SELECT 1 FROM instances WHERE instance_id = %s UNION ALL "
                      "SELECT 1 FROM executions WHERE instance_id = %s LIMIT 1", (instance, instance)):
                raise ProviderError(f"{op}: instance {instance!r} already exists; refusing to overwrite it",
                                    operation=op, instance_id=instance, retryable=False)
            for execution_id, events, info, pin in plans:
                md = info.metadata
                self._validate_events(db, instance, execution_id, events, op)
                self._upsert_instance(db, instance, execution_id, md, info.started_ms)
                self._append(db, instance, execution_id, events, info.started_ms)
                if pin is not None:
                    db.send("UPDATE executions SET duroxide_version_major = %s, duroxide_version_minor = %s, "
                            "duroxide_version_patch = %s WHERE instance_id = %s AND execution_id = %s",
                            (*pin, instance, execution_id))
                if info.custom_status is not None:
                    db.send("UPDATE instances SET current_execution_id = GREATEST(current_execution_id, %s), "
                            "updated_at = %s, custom_status = %s, custom_status_version = custom_status_version + 1 "
                            "WHERE instance_id = %s", (execution_id, info.ended_ms, _store_text(info.custom_status.status), instance))
                else:
                    db.send("UPDATE instances SET current_execution_id = GREATEST(current_execution_id, %s), "
                            "updated_at = %s WHERE instance_id = %s", (execution_id, info.ended_ms, instance))
                if md.status is not None:
                    db.send("UPDATE executions SET status = %s, output = %s, completed_at = %s "
                            "WHERE instance_id = %s AND execution_id = %s",
                            (md.status, _store_text(md.output), info.ended_ms, instance, execution_id))
                self._apply_kv(db, instance, events)
                if md.status in TERMINAL_STATUSES:
                    self._merge_kv(db, instance)
            if kv_base is not None:
                db.send("DELETE FROM kv_store WHERE instance_id = %s", (instance,))
                for k, (v, ts) in sorted(kv_base.items()):
                    db.send("INSERT INTO kv_store (instance_id, key, value, last_updated_at_ms) VALUES (%s, %s, %s, %s)",
                            (instance, k, _store_text(v), ts))
            if restored:
                db.send("UPDATE instances SET created_at = COALESCE(%s, created_at), "
                        "custom_status_version = COALESCE(%s, custom_status_version) WHERE instance_id = %s",
                        (restored.get("created_at"), restored.get("custom_status_version"), instance))
                if "custom_status" in restored:
                    db.send("UPDATE instances SET custom_status = %s WHERE instance_id = %s",
                            (_store_text(restored["custom_status"]), instance))
            if queued:
                now = self._now()
                for item in queued:
                    if isinstance(item, ActivityExecute):
                        db.send(self._INSERT_WORK, self._work_row(item, now))
                    else:
                        visible_at = max(now, item.fire_at_ms) if isinstance(item, TimerFiredMsg) else now
                        db.send(self._INSERT_ORCH, self._orch_row(item, visible_at, now))
                db.notify("orchestrator")
                db.notify("worker")
        if queued:
            self._notify(["worker" if isinstance(i, ActivityExecute) else "orchestrator" for i in queued])

    def kv_base(self, instance: str) -> dict[str, tuple[str, int]]:
        """The instance's stored KV store without the current execution's own changes: what the
        current execution started with while it runs (the KV store a turn of it replays from),
        everything once it has ended. ``{key: (value, last_updated_at_ms)}``; empty for an unknown
        instance. Export carries it for instances whose earlier executions were pruned (their
        KV events, which would rebuild it, are gone)."""
        check_instance_arg(instance, "kv_base")
        rows = self._probe("kv_base", "SELECT key, value, last_updated_at_ms FROM kv_store WHERE instance_id = %s "
                           "ORDER BY key", (instance,))
        return {k: (_load_text(v), int(ts)) for k, v, ts in rows}

    def latest_execution_id(self, instance: str) -> int | None:
        """Current execution id, or None for an unknown instance."""
        check_instance_arg(instance, "latest_execution_id")
        return self._probe("latest_execution_id", _CURRENT_EXECUTION_ID, {"i": instance})[0][0]

    def pending_messages(self, instance: str) -> int:
        """Messages queued for ``instance`` in the orchestrator queue (visible or not, locked or
        not): the client's ``get_orchestration_stats().queue_pending_count``."""
        check_instance_arg(instance, "pending_messages")
        return int(self._probe("pending_messages", "SELECT COUNT(*) FROM orchestrator_queue WHERE instance_id = %s",
                               (instance,))[0][0])

    def queued_work(self) -> dict[str, list[WorkItem]]:
        """Everything still queued, by the instance it is for: orchestrator messages (visible or
        not, locked or not, parked orphans too) then activity items (queued or in flight), each
        in queue order. Reads both whole queues: for diagnostics and the simulator's liveness
        checker (what can still move an instance once a run stops), not for hot paths."""
        op = "queued_work"
        out: dict[str, list[WorkItem]] = {}
        for table in ("orchestrator_queue", "worker_queue"):
            for instance, text in self._probe(op, f"SELECT instance_id, work_item FROM {table} ORDER BY id", ()):
                out.setdefault(instance, []).append(self._load_work(text, op))
        return out

    def read_status(self, instance: str) -> tuple[str, str | None, str | None, int] | None:
        """Cheap status read for clients: ``(execution status, output, custom status, version)``
        of the current execution, from the instance and execution rows (no history decoding).
        None when there is no instance row (the client then reads history)."""
        check_instance_arg(instance, "read_status")
        rows = self._probe(
            "read_status",
            "SELECT e.status, e.output, i.custom_status, i.custom_status_version FROM instances i "
            "JOIN executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
            "WHERE i.instance_id = %s", (instance,))
        return None if not rows else (rows[0][0], _load_text(rows[0][1]), _load_text(rows[0][2]), rows[0][3])

    def get_custom_status(self, instance: str, last_seen_version: int) -> tuple[str | None, int] | None:
        """``(status, version)`` if the version moved past ``last_seen_version``, else None."""
        check_instance_arg(instance, "get_custom_status")
        rows = self._probe("get_custom_status",
                           "SELECT custom_status, custom_status_version FROM instances WHERE instance_id = %s",
                           (instance,))
        row = rows[0] if rows else None
        if row is None or row[1] <= last_seen_version:
            return None
        return _load_text(row[0]), row[1]

    def get_kv_value(self, instance: str, key: str) -> str | None:
        """The store overlaid by the current execution's delta; tombstones hide."""
        check_instance_arg(instance, "get_kv_value")
        with self._tx("get_kv_value", write=False) as db:
            row = db.one("SELECT value FROM kv_delta WHERE instance_id = %s AND key = %s", (instance, key))
            if row is None:
                row = db.one("SELECT value FROM kv_store WHERE instance_id = %s AND key = %s", (instance, key))
            return _load_text(row[0]) if row is not None else None

    def get_kv_all_values(self, instance: str) -> dict[str, str]:
        """All live keys: the store overlaid by the delta; tombstones hide."""
        check_instance_arg(instance, "get_kv_all_values")
        with self._tx("get_kv_all_values", write=False) as db:
            out = dict(db.all("SELECT key, value FROM kv_store WHERE instance_id = %s ORDER BY key", (instance,)))
            for key, value in db.all("SELECT key, value FROM kv_delta WHERE instance_id = %s ORDER BY key",
                                     (instance,)):
                if value is None:
                    out.pop(key, None)
                else:
                    out[key] = value
            return {key: _load_text(value) for key, value in out.items()}

    @staticmethod
    def _load_text(value: Any) -> Any:  # SqlAdminMixin's hook for the output column
        return _load_text(value)

    # --- simulation and test hooks -------------------------------------------------------------

    def next_wakeup_ms(self) -> int | None:
        """Earliest future time at which a queued row becomes visible or a live lock (instance,
        work item, session) expires (None if nothing is pending), so a simulated clock can jump
        straight to it."""
        with self._tx("next_wakeup_ms", write=False) as db:
            now = self._now()
            return db.scalar(
                "SELECT MIN(t) FROM ("
                " SELECT MIN(visible_at) AS t FROM orchestrator_queue WHERE visible_at > %(now)s"
                " UNION ALL SELECT MIN(visible_at) FROM worker_queue WHERE visible_at > %(now)s"
                " UNION ALL SELECT MIN(locked_until) FROM instance_locks WHERE locked_until > %(now)s"
                " UNION ALL SELECT MIN(locked_until) FROM worker_queue WHERE locked_until > %(now)s"
                " UNION ALL SELECT MIN(locked_until) FROM sessions WHERE locked_until > %(now)s) AS w",
                {"now": now})

    def _corrupt_history(self, instance: str, error: str | None = "injected history corruption") -> None:
        """Test hook: make the current execution's history unreadable by writing invalid JSON
        into its history rows (the original text is kept behind a marker); ``error=None``
        restores it. Fetches then return ``history_error`` with the lock held (SPEC §16 I31)."""
        op = "_corrupt_history"
        self._refuse_if_read_only(op)
        with self._hcache_lock:
            self._hcache.pop(instance, None)
        with self._tx(op) as db:
            execution_id = self._current_execution_id(db, instance)
            rows = db.all("SELECT event_id, event_data FROM history WHERE instance_id = %s AND execution_id = %s",
                          (instance, execution_id))
            if error is not None and not rows:
                raise ProviderError(f"{op}: instance {instance!r} has no history to corrupt", operation=op)
            for event_id, text in rows:
                if error is None and text.startswith(_CORRUPT_PREFIX):
                    text = json.loads(text[len(_CORRUPT_PREFIX):])[1]
                elif error is not None and not text.startswith(_CORRUPT_PREFIX):
                    text = _CORRUPT_PREFIX + json.dumps([error, text])
                db.execute("UPDATE history SET event_data = %s WHERE instance_id = %s AND execution_id = %s "
                           "AND event_id = %s", (text, instance, execution_id, event_id))
        with self._hcache_lock:
            self._hcache.pop(instance, None)

    def _check(self) -> None:
        """Assert the schema's invariants (version, lock tokens, queue rows, executions)."""
        with self._tx("_check", write=False) as db:
            assert db.scalar("SELECT MAX(version) FROM schema_version") == postgres_schema.SCHEMA_VERSION
            # every tagged orchestrator row belongs to the lock of its own instance
            assert db.scalar("SELECT COUNT(*) FROM orchestrator_queue q WHERE q.lock_token IS NOT NULL AND NOT EXISTS "
                             "(SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id "
                             "AND l.lock_token = q.lock_token)") == 0
            assert db.scalar("SELECT COUNT(*) FROM worker_queue WHERE (lock_token IS NULL) <> (locked_until IS NULL)"
                             ) == 0
            tokens = [r[0] for r in db.all("SELECT lock_token FROM worker_queue WHERE lock_token IS NOT NULL "
                                           "UNION ALL SELECT lock_token FROM instance_locks")]
            assert len(tokens) == len(set(tokens)), "lock token shared by two holders"
            assert db.scalar("SELECT COUNT(*) FROM instances i WHERE NOT EXISTS (SELECT 1 FROM executions e "
                             "WHERE e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id)") == 0
            for kind, text in db.all("SELECT item_kind, work_item FROM orchestrator_queue"):
                assert type(loads(text, "work")).KIND == kind
            for (text,) in db.all("SELECT work_item FROM worker_queue"):
                loads(text, "work")
