"""Deleting a root removes the queued starts of its children that have not run yet (memory,
SQLite, PostgreSQL). Such a child has no instance row, so the tree read from the rows missed it:
it started after the delete as an orphan nobody could delete, and its completion reached a
recreated root (found by tests/runtime/test_cancel_and_manage_realistic.py; SPEC §16 F20/F21)."""

from __future__ import annotations

from duroxide_sim.core.events import ExternalRaised, StartOrchestration
from duroxide_sim.testing.conformance import LOCK, ack, meta, start_item, started


def test_force_delete_takes_the_queued_starts_of_unstarted_children(each_provider) -> None:
    p, _clock = each_provider
    p.enqueue_for_orchestrator(start_item("r"))
    item = p.fetch_orchestration_item(LOCK)
    ack(p, item, [started("r")], md=meta(), orch=[
        StartOrchestration(instance="r::sub::2", orchestration="Kid", input="1", parent_instance="r", parent_id=2,
                           parent_execution_id=1),
        StartOrchestration(instance="explicit-kid", orchestration="Kid", input="2", parent_instance="r", parent_id=3,
                           parent_execution_id=1)])
    p.enqueue_for_orchestrator(ExternalRaised(instance="explicit-kid", name="go", data="1"))
    p.enqueue_for_orchestrator(StartOrchestration(instance="other", orchestration="Kid", input="3"))  # not r's
    assert set(p.queued_work()) == {"r::sub::2", "explicit-kid", "other"}
    result = p.delete_instance("r", True)
    assert result.instances_deleted == 1 and result.queue_messages_deleted == 3
    assert set(p.queued_work()) == {"other"}
