"""Management operations of the PostgreSQL provider (SPEC §14 / §15.1 admin capability).

:class:`PostgresAdminMixin` is :class:`~duroxide_sim.providers.sql_admin.SqlAdminMixin` (listing,
info, metrics, queue depths, hierarchy, deletion and pruning, shared with SQLite) with psycopg's
``%s`` parameters and PostgreSQL's ``FILTER`` for counting by status. Each public method is one
transaction from the host's ``_tx`` helper (READ COMMITTED for writes, REPEATABLE READ READ ONLY
for reads), so a failure rolls everything back. Deletions remove an instance's
``instance_locks`` row first: the provider's lock order is lock row, then queue rows, then the
rest, so a delete never deadlocks with a concurrent ack or fetch of the same instance.

Must not import psycopg (only ``postgres.py`` does). Transactions are passed in as ``db`` (the
host's ``_Db`` helper).
"""

from __future__ import annotations

from .sql_admin import _CURRENT_EXECUTION, TERMINAL_STATUSES, SqlAdminMixin

__all__ = ["PostgresAdminMixin", "TERMINAL_STATUSES"]


class PostgresAdminMixin(SqlAdminMixin):
    """ManagementProvider operations; the host supplies ``_tx``, ``_now`` and ``_current_execution_id``."""

    _PARAM = "%s"
    _STATUS_COUNTS_SQL = ("SELECT COUNT(*), COUNT(*) FILTER (WHERE e.status = 'Running'), "
                          "COUNT(*) FILTER (WHERE e.status = 'Completed'), "
                          f"COUNT(*) FILTER (WHERE e.status = 'Failed') FROM instances i {_CURRENT_EXECUTION}")
