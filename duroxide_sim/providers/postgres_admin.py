"""Management operations of the PostgreSQL provider (SPEC §14 / §15.1 admin capability).

:class:`PostgresAdminMixin` is :class:`~duroxide_sim.providers.sql_admin.SqlAdminMixin` (listing,
info, metrics, queue depths, hierarchy, deletion and pruning, shared with SQLite) with psycopg's
``%s`` parameters and PostgreSQL's ``FILTER`` for counting by status. Each public method is one
transaction from the host's ``_tx`` helper (READ COMMITTED for writes, REPEATABLE READ READ ONLY
for reads), so a failure rolls everything back. Deletions remove an instance's
``instance_locks`` row first: the provider's lock order is lock row, then queue rows, then the
rest, so a delete never deadlocks with a concurrent ack or fetch of the same instance. Before
that it takes each instance's fetch claim (the advisory lock fetchers try, see ``postgres.py``),
so it runs wholly before or wholly after any fetch of them: a fetch inserts its lock row in its
own uncommitted transaction, which a delete running beside it cannot see - it then removed
everything else and left that lock row, and the turn's ack wrote the instance back (history
without its start; found by tests/providers/test_postgres_delete_race.py).

Must not import psycopg (only ``postgres.py`` does). Transactions are passed in as ``db`` (the
host's ``_Db`` helper).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._shared import advisory_key32 as _key32
from .sql_admin import _CURRENT_EXECUTION, TERMINAL_STATUSES, SqlAdminMixin

__all__ = ["PostgresAdminMixin", "TERMINAL_STATUSES"]


class PostgresAdminMixin(SqlAdminMixin):
    """ManagementProvider operations; the host supplies ``_tx``, ``_now`` and ``_current_execution_id``."""

    _PARAM = "%s"
    _STATUS_COUNTS_SQL = ("SELECT COUNT(*), COUNT(*) FILTER (WHERE e.status = 'Running'), "
                          "COUNT(*) FILTER (WHERE e.status = 'Completed'), "
                          f"COUNT(*) FILTER (WHERE e.status = 'Failed') FROM instances i {_CURRENT_EXECUTION}")

    def _exclude_fetchers(self, db: Any, ids: Sequence[str]) -> None:
        """Take the fetchers' advisory claim of every instance in ``ids`` (blocking, released at
        commit), in key order so two deletes of overlapping sets cannot deadlock. A fetcher only
        *tries* the claim (``pg_try_advisory_xact_lock``), so it skips these instances until the
        delete commits, and a fetch holding one finishes (its lock row committed, then deleted
        here) before the delete reads on."""
        keys = sorted({_key32(instance) for instance in ids})
        for key in keys:
            db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (self._schema_key, key))
