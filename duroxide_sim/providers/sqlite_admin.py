"""Management operations of the SQLite provider (SPEC §14 / §15.1 admin capability).

:class:`SqliteAdminMixin` is :class:`~duroxide_sim.providers.sql_admin.SqlAdminMixin` (listing,
info, metrics, queue depths, hierarchy, deletion and pruning, shared with PostgreSQL) with
sqlite3's ``?`` parameters. Each public method is one transaction from the host's ``_tx``
helper (writes take the write lock up front with ``BEGIN IMMEDIATE``), so a failure rolls
everything back. Semantics match ``InMemoryProvider`` exactly.

Must not import ``sqlite3`` (only ``sqlite.py`` does).
"""

from __future__ import annotations

from .sql_admin import TERMINAL_STATUSES, SqlAdminMixin

__all__ = ["SqliteAdminMixin", "TERMINAL_STATUSES"]


class SqliteAdminMixin(SqlAdminMixin):
    """ManagementProvider operations; the host supplies ``_tx``, ``_now`` and ``_current_execution_id``."""
