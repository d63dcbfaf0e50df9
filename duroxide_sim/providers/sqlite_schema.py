"""The SQLite provider's schema (SPEC §15.2, times as integer ms) and its migrations.

Pure data: ``SCHEMA_VERSION`` and ``MIGRATIONS``, a tuple of ``(version, statements)`` where
migration N upgrades a version N-1 database. ``sqlite.py`` applies them on open, in one
transaction, and records each applied version in ``schema_version``. To change the schema,
append a migration and bump ``SCHEMA_VERSION``; never edit a released migration.

Must not import ``sqlite3`` (only ``sqlite.py`` does) or execute anything itself.
"""

from __future__ import annotations

__all__ = ["SCHEMA_VERSION", "MIGRATIONS", "TABLES"]

#: The schema this code writes. Opening a database with a newer version is refused.
SCHEMA_VERSION = 4

# Each migration is a list of single statements (``executescript`` would COMMIT implicitly
# and break the one-transaction migration). Migration N upgrades a version N-1 database.
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE provider_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)""",
        """INSERT INTO provider_meta (key, value) VALUES ('opens', 0)""",
        """CREATE TABLE instances (
            instance_id TEXT PRIMARY KEY,
            orchestration_name TEXT NOT NULL,
            orchestration_version TEXT,
            current_execution_id INTEGER NOT NULL DEFAULT 1,
            custom_status TEXT,
            custom_status_version INTEGER NOT NULL DEFAULT 0,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            parent_instance_id TEXT,
            created_seq INTEGER NOT NULL  -- creation order: breaks created_at ties
        )""",
        """CREATE INDEX idx_instances_parent ON instances (parent_instance_id)""",
        """CREATE TABLE executions (
            instance_id TEXT NOT NULL,
            execution_id INTEGER NOT NULL,
            status TEXT NOT NULL DEFAULT 'Running',
            output TEXT,
            duroxide_version_major INTEGER,
            duroxide_version_minor INTEGER,
            duroxide_version_patch INTEGER,
            started_at INTEGER NOT NULL,
            completed_at INTEGER,
            PRIMARY KEY (instance_id, execution_id)
        )""",
        """CREATE TABLE history (
            instance_id TEXT NOT NULL,
            execution_id INTEGER NOT NULL,
            event_id INTEGER NOT NULL,
            event_type TEXT NOT NULL,
            event_data TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (instance_id, execution_id, event_id),
            FOREIGN KEY (instance_id, execution_id) REFERENCES executions (instance_id, execution_id)
        )""",
        """CREATE TABLE orchestrator_queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_id TEXT NOT NULL,
            work_item TEXT NOT NULL,
            visible_at INTEGER NOT NULL,
            lock_token TEXT,
            locked_until INTEGER,  -- unused: the instance lock in instance_locks is authoritative
            attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
            created_at INTEGER NOT NULL
        )""",
        """CREATE INDEX idx_orch_visible ON orchestrator_queue (visible_at, id)""",
        """CREATE INDEX idx_orch_instance ON orchestrator_queue (instance_id, visible_at, id)""",
        """CREATE INDEX idx_orch_token ON orchestrator_queue (lock_token)""",
        """CREATE TABLE worker_queue (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            work_item TEXT NOT NULL,
            visible_at INTEGER NOT NULL,
            lock_token TEXT,
            locked_until INTEGER,
            attempt_count INTEGER NOT NULL DEFAULT 0 CHECK (attempt_count >= 0),
            created_at INTEGER NOT NULL,
            instance_id TEXT NOT NULL,
            execution_id INTEGER NOT NULL,
            activity_id INTEGER NOT NULL,
            session_id TEXT,
            tag TEXT
        )""",
        """CREATE INDEX idx_worker_visible ON worker_queue (visible_at, id)""",
        """CREATE INDEX idx_worker_activity ON worker_queue (instance_id, execution_id, activity_id)""",
        """CREATE INDEX idx_worker_token ON worker_queue (lock_token)""",
        """CREATE TABLE instance_locks (
            instance_id TEXT PRIMARY KEY,
            lock_token TEXT NOT NULL UNIQUE,
            locked_until INTEGER NOT NULL,
            locked_at INTEGER NOT NULL
        )""",
        """CREATE TABLE sessions (
            session_id TEXT PRIMARY KEY,
            worker_id TEXT NOT NULL,
            locked_until INTEGER NOT NULL,
            last_activity_at INTEGER NOT NULL
        )""",
        """CREATE TABLE kv_store (
            instance_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            last_updated_at_ms INTEGER NOT NULL,
            PRIMARY KEY (instance_id, key)
        )""",
        """CREATE TABLE kv_delta (
            instance_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT,  -- NULL = tombstone
            last_updated_at_ms INTEGER,
            PRIMARY KEY (instance_id, key)
        )""",
    )),
    # Version 2: fewer pages written per commit (measured: W4 and W5 ~3 % faster). Every query
    # on orchestrator_queue.lock_token also names instance_id, which idx_orch_instance serves,
    # so idx_orch_token only cost a page per fetch and per ack. instance_locks is a small,
    # hot table keyed by instance_id: WITHOUT ROWID keeps a row in its primary-key b-tree
    # instead of a rowid table plus that key's index (one page less per lock and release).
    (2, (
        """DROP INDEX idx_orch_token""",
        """CREATE TABLE instance_locks_v2 (
            instance_id TEXT PRIMARY KEY,
            lock_token TEXT NOT NULL UNIQUE,
            locked_until INTEGER NOT NULL,
            locked_at INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """INSERT INTO instance_locks_v2 (instance_id, lock_token, locked_until, locked_at)
            SELECT instance_id, lock_token, locked_until, locked_at FROM instance_locks""",
        """DROP TABLE instance_locks""",
        """ALTER TABLE instance_locks_v2 RENAME TO instance_locks""",
    )),
    # Version 3: a work item's lock token now ends with its row id ("...-w<id>"), and acks,
    # renewals and abandons look the row up by id (and check the token), so the index on
    # worker_queue.lock_token only cost two page writes per activity (W5 ~2 % faster). Leases
    # taken before the upgrade carry tokens without the id: they are treated as lost (the
    # activity runs again after its lock expires, as after any lost lock).
    (3, (
        """DROP INDEX idx_worker_token""",
    )),
    # Version 4: a new instance's row takes ``MAX(created_seq) + 1``; without an index that was
    # a scan of every instance on the first ack of each new instance and sub-orchestration
    # (measured 429 us at 10,000 instances: building a large store was quadratic). The index
    # also serves the listings ordered by creation.
    (4, (
        """CREATE INDEX idx_instances_seq ON instances (created_seq)""",
    )),
)
assert MIGRATIONS[-1][0] == SCHEMA_VERSION

#: The tables a database at SCHEMA_VERSION has (checked at every open: a core table lost to a
#: botched restore or a manual clean-up is refused by name, before any work runs into it).
TABLES_VERSION = SCHEMA_VERSION  # (tests that plant extra migrations raise SCHEMA_VERSION: not checked then)
TABLES = ("schema_version", "provider_meta", "instances", "executions", "history", "orchestrator_queue",
          "worker_queue", "instance_locks", "sessions", "kv_store", "kv_delta")
