"""Management operations shared by the SQL providers (SPEC §14 / §15.1 admin capability).

:class:`SqlAdminMixin` holds listing, info, metrics, queue depths, hierarchy, deletion and pruning
for :class:`~duroxide_sim.providers.sqlite.SqliteProvider` (through ``sqlite_admin.py``) and
:class:`~duroxide_sim.providers.postgres.PostgresProvider` (through ``postgres_admin.py``); the
semantics match ``InMemoryProvider``. Each public method is one transaction from the host's
``_tx`` helper, so a failure rolls everything back. The host's ``db`` only needs ``execute(sql,
params)`` returning a cursor (``fetchone``, ``fetchall``, ``rowcount``).

The statements are written with ``?`` parameter markers; a host whose driver wants ``%s``
(psycopg) sets ``_PARAM`` and gets them translated (none of them contains a literal ``?`` or
``%``). The one dialect difference, counting rows by status, is ``_STATUS_COUNTS_SQL``.
Deletion removes an instance's ``instance_locks`` row first: PostgreSQL's lock order (lock row,
then queue rows, then the rest) keeps a delete from deadlocking with a concurrent ack or fetch of
the same instance, and SQLite (one writer) does not mind the order. Before that a host may wait
out fetches in flight (``_exclude_fetchers``: PostgreSQL takes the fetchers' per-instance
advisory locks, since a fetch's uncommitted lock row is invisible to the delete).

Must not import a database driver or read a clock other than the host's ``_now()``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ..errors import CannotDeleteSubOrchestration, InstanceNotFound, InstanceStillRunning, ProviderError
from ._shared import check_instance_arg, tree_order
from .base import (
    DeleteInstanceResult, ExecutionInfo, InstanceFilter, InstanceInfo, InstanceTree, PruneOptions, PruneResult,
    QueueDepths, SystemMetrics,
)

__all__ = ["SqlAdminMixin", "TERMINAL_STATUSES"]

TERMINAL_STATUSES = ("Completed", "Failed", "ContinuedAsNew")
_DEFAULT_BULK_LIMIT = 1000  # SPEC §14: default limit of the bulk delete/prune filters
#: Ids per ``IN (...)`` list (under SQLite's oldest limit of 999 parameters per statement).
_CHUNK = 500


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i:i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _marks(n: int) -> str:
    return ", ".join("?" * n)
_NEWEST_FIRST = "ORDER BY i.created_at DESC, i.created_seq DESC"
_CURRENT_EXECUTION = ("LEFT JOIN executions e "
                      "ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id")


@functools.lru_cache(maxsize=256)
def _with_param(sql: str, param: str) -> str:
    return sql.replace("?", param)


class SqlAdminMixin:
    """ManagementProvider operations; the host supplies ``_tx``, ``_now`` and ``_current_execution_id``."""

    _tx: Any
    _now: Any
    _current_execution_id: Any
    #: The driver's parameter marker (the statements here are written with ``?``).
    _PARAM = "?"
    #: (total, running, completed, failed) instances by their current execution's status.
    _STATUS_COUNTS_SQL = ("SELECT COUNT(*), COALESCE(SUM(e.status = 'Running'), 0), "
                          "COALESCE(SUM(e.status = 'Completed'), 0), "
                          f"COALESCE(SUM(e.status = 'Failed'), 0) FROM instances i {_CURRENT_EXECUTION}")

    @staticmethod
    def _load_text(value: Any) -> Any:
        """The stored form of a verbatim text column (``executions.output``) as the caller wrote
        it: as it is here; PostgreSQL stores text with NUL escaped and overrides this."""
        return value

    def _x(self, db: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        """``db.execute`` with this host's parameter marker."""
        return db.execute(sql if self._PARAM == "?" else _with_param(sql, self._PARAM), params)

    # --- reads ---------------------------------------------------------------------------------

    def _row(self, db: Any, instance: str) -> tuple:
        row = self._x(db, "SELECT orchestration_name, orchestration_version, current_execution_id, created_at, "
                         "updated_at, parent_instance_id FROM instances WHERE instance_id = ?", (instance,)).fetchone()
        if row is None:
            raise InstanceNotFound(f"Instance {instance!r} not found", instance_id=instance)
        return row

    def list_instances(self) -> list[str]:
        """All instance ids, newest first."""
        with self._tx("list_instances", write=False) as db:
            return [r[0] for r in self._x(db, f"SELECT i.instance_id FROM instances i {_NEWEST_FIRST}")]

    def list_instances_by_status(self, status: str) -> list[str]:
        """Ids whose current execution has ``status``, newest first."""
        with self._tx("list_instances_by_status", write=False) as db:
            return [r[0] for r in self._x(db,
                f"SELECT i.instance_id FROM instances i {_CURRENT_EXECUTION} WHERE e.status = ? {_NEWEST_FIRST}",
                (status,))]

    def get_instance_info(self, instance: str) -> InstanceInfo:
        """The instance row joined with its current execution; unknown -> InstanceNotFound."""
        check_instance_arg(instance, "get_instance_info")
        with self._tx("get_instance_info", write=False) as db:
            name, version, current, created_at, updated_at, parent = self._row(db, instance)
            ex = self._x(db, "SELECT status, output FROM executions WHERE instance_id = ? AND execution_id = ?",
                            (instance, current)).fetchone()
        return InstanceInfo(
            instance_id=instance, orchestration_name=name, orchestration_version=version,
            current_execution_id=current, status=ex[0] if ex else "Unknown", output=self._load_text(ex[1]) if ex else None,
            created_at=created_at, updated_at=updated_at, parent_instance_id=parent,
        )

    def get_execution_info(self, instance: str, execution_id: int) -> ExecutionInfo:
        """One execution's record; unknown -> InstanceNotFound."""
        check_instance_arg(instance, "get_execution_info")
        with self._tx("get_execution_info", write=False) as db:
            ex = self._x(db, "SELECT status, output, started_at, completed_at FROM executions "
                            "WHERE instance_id = ? AND execution_id = ?", (instance, execution_id)).fetchone()
            if ex is None:
                raise InstanceNotFound(f"Execution {execution_id} not found for instance {instance!r}",
                                       instance_id=instance)
            count = self._x(db, "SELECT COUNT(*) FROM history WHERE instance_id = ? AND execution_id = ?",
                               (instance, execution_id)).fetchone()[0]
        return ExecutionInfo(execution_id=execution_id, status=ex[0], output=self._load_text(ex[1]), started_at=ex[2],
                             completed_at=ex[3], event_count=count)

    def list_executions(self, instance: str) -> list[int]:
        """Execution ids in ascending order; unknown -> []."""
        check_instance_arg(instance, "list_executions")
        with self._tx("list_executions", write=False) as db:
            return [r[0] for r in self._x(db,
                "SELECT execution_id FROM executions WHERE instance_id = ? ORDER BY execution_id", (instance,))]

    def get_system_metrics(self) -> SystemMetrics:
        """Counts over instances (by current execution status), executions and events."""
        with self._tx("get_system_metrics", write=False) as db:
            total, running, completed, failed = self._x(db, self._STATUS_COUNTS_SQL).fetchone()
            executions = self._x(db, "SELECT COUNT(*) FROM executions").fetchone()[0]
            events = self._x(db, "SELECT COUNT(*) FROM history").fetchone()[0]
        return SystemMetrics(total_instances=total, total_executions=executions, running_instances=running,
                             completed_instances=completed, failed_instances=failed, total_events=events)

    def get_queue_depths(self) -> QueueDepths:
        """Rows not under a live lock, per queue (delayed rows included)."""
        with self._tx("get_queue_depths", write=False) as db:
            now = self._now()
            orch = self._x(db,
                "SELECT COUNT(*) FROM orchestrator_queue q LEFT JOIN instance_locks l "
                "ON l.instance_id = q.instance_id AND l.lock_token = q.lock_token "
                "WHERE q.lock_token IS NULL OR l.locked_until IS NULL OR l.locked_until <= ?", (now,)).fetchone()[0]
            work = self._x(db, "SELECT COUNT(*) FROM worker_queue WHERE locked_until IS NULL OR locked_until <= ?",
                              (now,)).fetchone()[0]
        return QueueDepths(orchestrator_queue=orch, worker_queue=work, timer_queue=0)

    def _children(self, db: Any, instance: str) -> list[str]:
        return [r[0] for r in self._x(db,
            "SELECT instance_id FROM instances WHERE parent_instance_id = ? ORDER BY created_seq", (instance,))]

    def list_children(self, instance: str) -> list[str]:
        """Direct children, in creation order; unknown -> []."""
        check_instance_arg(instance, "list_children")
        with self._tx("list_children", write=False) as db:
            return self._children(db, instance)

    def get_parent_id(self, instance: str) -> str | None:
        """Parent id, None for roots; unknown -> InstanceNotFound."""
        check_instance_arg(instance, "get_parent_id")
        with self._tx("get_parent_id", write=False) as db:
            return self._row(db, instance)[5]

    def _tree_ids(self, db: Any, root: str) -> list[str]:
        return tree_order(root, lambda instance: self._children(db, instance))

    def get_instance_tree(self, instance: str) -> InstanceTree:
        """Root plus all descendants, children before parents; unknown -> InstanceNotFound."""
        check_instance_arg(instance, "get_instance_tree")
        with self._tx("get_instance_tree", write=False) as db:
            self._row(db, instance)
            return InstanceTree(root_id=instance, all_ids=tuple(self._tree_ids(db, instance)))

    # --- deletion ------------------------------------------------------------------------------

    def _status(self, db: Any, instance: str) -> str | None:
        execution_id = self._current_execution_id(db, instance)
        row = self._x(db, "SELECT status FROM executions WHERE instance_id = ? AND execution_id = ?",
                         (instance, execution_id)).fetchone()
        return row[0] if row else None

    def _delete_atomic(self, db: Any, ids: list[str], force: bool) -> DeleteInstanceResult:
        if not force:
            for instance in ids:
                if self._status(db, instance) == "Running":
                    raise InstanceStillRunning(f"Instance {instance!r} is still running. Use force=True to "
                                               "delete anyway, or cancel it first.", instance_id=instance)
        # Children of the chosen ids through idx_instances_parent (not a walk of every instance
        # with a parent: deleting instances one by one was quadratic in the store's size).
        chosen = set(ids)
        outside = []
        for chunk in _chunks(ids):
            outside += [row for row in self._x(db, "SELECT created_seq, instance_id, parent_instance_id FROM instances "
                                                   f"WHERE parent_instance_id IN ({_marks(len(chunk))})", chunk).fetchall()
                        if row[1] not in chosen]
        if outside:
            _, child, parent = min(outside)  # the first one created, as a walk in creation order finds
            raise ProviderError(
                f"Cannot delete: instance {parent!r} has child {child!r} outside the delete set (created after "
                "the tree was read?). Re-fetch the tree and retry.", operation="delete_instances_atomic")
        return self._delete_ids(db, ids)

    def _delete_ids(self, db: Any, ids: list[str]) -> DeleteInstanceResult:
        instances = executions = events = messages = 0
        forget = getattr(self, "_forget_history", None)  # SQLite's decoded-history cache
        retire = getattr(self, "_retire_seq", None)  # SQLite: a deleted instance's created_seq is not reused
        exclude = getattr(self, "_exclude_fetchers", None)  # PostgreSQL: wait out fetches in flight
        if exclude is not None:
            exclude(db, ids)
        for instance in ids:
            if forget is not None:
                forget(instance)  # a cache only: dropping it early is harmless if the delete rolls back
            # The lock row first (PostgreSQL's lock order, see the module docstring): a turn's ack
            # holds it (FOR UPDATE) from its first statement, so the delete waits for an ack in
            # flight to commit and then removes what it wrote, and a later ack finds no lock and
            # fails (SPEC §16 F21) instead of resurrecting the instance. (Deleting history and
            # executions first let an ack insert history in between: the delete then failed on
            # the history -> executions foreign key - found by test_postgres_concurrency_journeys.)
            # Dropping worker rows makes running activities fail renew/ack harmlessly. Activity
            # rows go before orchestrator messages: a worker ack holding its row (FOR UPDATE)
            # queues the completion when it commits, so the delete waits for it there and the
            # later statement removes what it queued (the other order left that completion
            # behind, and a new instance with the same id received it).
            self._x(db, "DELETE FROM instance_locks WHERE instance_id = ?", (instance,))
            if retire is not None:
                retire(db, instance)
            executions += self._x(db, "SELECT COUNT(*) FROM executions WHERE instance_id = ?", (instance,)).fetchone()[0]
            events += self._x(db, "DELETE FROM history WHERE instance_id = ?", (instance,)).rowcount
            self._x(db, "DELETE FROM executions WHERE instance_id = ?", (instance,))
            messages += self._x(db, "DELETE FROM worker_queue WHERE instance_id = ?", (instance,)).rowcount
            messages += self._x(db, "DELETE FROM orchestrator_queue WHERE instance_id = ?", (instance,)).rowcount
            for table in ("kv_store", "kv_delta"):
                self._x(db, f"DELETE FROM {table} WHERE instance_id = ?", (instance,))
            instances += self._x(db, "DELETE FROM instances WHERE instance_id = ?", (instance,)).rowcount
        messages += self._delete_unstarted_children(db, set(ids))
        return DeleteInstanceResult(instances_deleted=instances, executions_deleted=executions,
                                    events_deleted=events, queue_messages_deleted=messages)

    def _delete_unstarted_children(self, db: Any, deleted: set[str]) -> int:
        """Children of deleted instances whose start is still queued (scheduled by a committed
        turn, not yet run): no instance row puts them in the tree, so without this they started
        after the delete, as orphans nobody could delete, and completed into a recreated parent
        (SPEC §16 F20/F21). Their queued messages go with the tree. (Not a hot path: the queue's
        start items are read once per delete.)"""
        import json

        children = []
        for instance, text in self._x(db, "SELECT instance_id, work_item FROM orchestrator_queue WHERE work_item LIKE ?",
                                      ('%"StartOrchestration"%',)).fetchall():
            try:
                item = json.loads(text)
            except ValueError:
                continue
            if (isinstance(item, dict) and item.get("kind") == "StartOrchestration" and item.get("parent_instance") in deleted
                    and instance not in deleted
                    and self._x(db, "SELECT 1 FROM instances WHERE instance_id = ?", (instance,)).fetchone() is None):
                children.append(instance)
        removed = 0
        for child in dict.fromkeys(children):
            removed += self._x(db, "DELETE FROM orchestrator_queue WHERE instance_id = ?", (child,)).rowcount
        return removed

    def delete_instances_atomic(self, ids: Sequence[str], force: bool) -> DeleteInstanceResult:
        """Delete exactly ``ids`` (history, executions, both queues, locks, KV, rows), all or
        nothing. Without ``force`` any Running one -> InstanceStillRunning. A child outside
        ``ids`` that points into them (orphan race) -> ProviderError, nothing deleted."""
        with self._tx("delete_instances_atomic") as db:
            return self._delete_atomic(db, list(dict.fromkeys(ids)), force)

    def delete_instance(self, instance: str, force: bool) -> DeleteInstanceResult:
        """Delete a root with its whole tree. A child -> CannotDeleteSubOrchestration; unknown
        -> InstanceNotFound; anything Running without ``force`` -> InstanceStillRunning."""
        check_instance_arg(instance, "delete_instance")
        with self._tx("delete_instance") as db:
            if self._row(db, instance)[5] is not None:
                raise CannotDeleteSubOrchestration(f"Cannot delete sub-orchestration {instance!r} directly; "
                                                   "delete its root instead", instance_id=instance)
            return self._delete_atomic(db, self._tree_ids(db, instance), force)

    def _select(self, db: Any, filter: InstanceFilter, *, roots_terminal: bool) -> list[str]:
        """Instances matching ``filter`` (filters AND-ed), oldest first, up to the limit."""
        # The filters and the limit run in SQL, and explicit ids are looked up by key: a bulk
        # call naming one instance read every instance before (O(store) per call).
        ids = filter.instance_ids
        limit = filter.limit if filter.limit is not None else _DEFAULT_BULK_LIMIT
        where: list[str] = []
        params: list[Any] = []
        if roots_terminal:
            where.append(f"i.parent_instance_id IS NULL AND e.status IN ({_marks(len(TERMINAL_STATUSES))})")
            params += TERMINAL_STATUSES
        if filter.completed_before is not None:
            where.append("e.completed_at < ?")  # (NULL: not completed, never matches)
            params.append(filter.completed_before)
        head = f"SELECT i.created_seq, i.instance_id FROM instances i {_CURRENT_EXECUTION}"
        if ids is None:
            sql = head + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY i.created_seq LIMIT ?"
            return [row[1] for row in self._x(db, sql, (*params, max(limit, 0))).fetchall()]
        rows: list[tuple[int, str]] = []
        for chunk in _chunks(list(dict.fromkeys(ids))):  # an empty id list selects nothing
            sql = head + " WHERE " + " AND ".join([*where, f"i.instance_id IN ({_marks(len(chunk))})"])
            rows += self._x(db, sql, (*params, *chunk)).fetchall()
        rows.sort()
        return [instance for _, instance in rows[:max(limit, 0)]]

    def delete_instance_bulk(self, filter: InstanceFilter) -> DeleteInstanceResult:
        """Delete the terminal roots matching ``filter`` with their trees; Running ones are skipped."""
        with self._tx("delete_instance_bulk") as db:
            parts = [self._delete_ids(db, self._tree_ids(db, root))
                     for root in self._select(db, filter, roots_terminal=True)]
        return DeleteInstanceResult(
            instances_deleted=sum(r.instances_deleted for r in parts),
            executions_deleted=sum(r.executions_deleted for r in parts),
            events_deleted=sum(r.events_deleted for r in parts),
            queue_messages_deleted=sum(r.queue_messages_deleted for r in parts),
        )

    # --- pruning -------------------------------------------------------------------------------

    def _prune(self, db: Any, instance: str, options: PruneOptions) -> PruneResult:
        current = self._row(db, instance)[2]
        execs = self._x(db, "SELECT execution_id, status, completed_at FROM executions WHERE instance_id = ? "
                           "ORDER BY execution_id", (instance,)).fetchall()
        kept = {e[0] for e in execs[-options.keep_last:]} if options.keep_last else set()  # 0/None: nothing extra
        cutoff = options.completed_before
        doomed = [
            eid for eid, status, completed_at in execs
            if eid != current and eid not in kept and status != "Running"
            and (cutoff is None or (completed_at is not None and completed_at < cutoff))
        ]
        events = 0
        for eid in doomed:
            events += self._x(db, "DELETE FROM history WHERE instance_id = ? AND execution_id = ?",
                                 (instance, eid)).rowcount
            self._x(db, "DELETE FROM executions WHERE instance_id = ? AND execution_id = ?", (instance, eid))
        return PruneResult(instances_processed=1, executions_deleted=len(doomed), events_deleted=events)

    def prune_executions(self, instance: str, options: PruneOptions) -> PruneResult:
        """Delete old executions, never the current one nor Running ones; options AND-ed. KV
        is instance-scoped and untouched. Unknown -> InstanceNotFound."""
        check_instance_arg(instance, "prune_executions")
        with self._tx("prune_executions") as db:
            return self._prune(db, instance, options)

    def prune_executions_bulk(self, filter: InstanceFilter, options: PruneOptions) -> PruneResult:
        """``prune_executions`` over every instance matching ``filter``, of any status."""
        with self._tx("prune_executions_bulk") as db:
            parts = [self._prune(db, i, options) for i in self._select(db, filter, roots_terminal=False)]
        return PruneResult(
            instances_processed=len(parts),
            executions_deleted=sum(r.executions_deleted for r in parts),
            events_deleted=sum(r.events_deleted for r in parts),
        )
