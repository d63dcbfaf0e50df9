"""``kv_base()`` and ``import_history(..., kv_base=)``: the stored KV store of an instance, which
an export carries when earlier executions were pruned (their KV events, which rebuild the store,
are gone) - so an imported copy resumes with the keys the original has, and a replay knows what
the running execution started with. Same answers from memory, SQLite and PostgreSQL.

Found by a probe of CI replay (tests/testing/test_replay_ci_realistic.py): a pruned instance's
export lost its KV store on import, and the imported copy failed as nondeterministic.
"""

from __future__ import annotations

import pytest

from duroxide_sim.core.events import KeyValueSet
from duroxide_sim.testing.conformance import ack, can_ev, create, fetch, meta, start_item, started


@pytest.fixture
def provider(each_provider):
    return each_provider[0]


def _set(inst, eid, key, value, execution=1, ts=5):
    return KeyValueSet(event_id=eid, instance_id=inst, execution_id=execution, key=key, value=value, last_updated_at_ms=ts)


def test_kv_base_is_what_the_running_execution_started_with(provider) -> None:
    assert provider.kv_base("nope") == {}
    create(provider, "a", extra=[_set("a", 2, "count", "1", ts=7)])
    # execution 1 running: its own set is not in the base yet
    assert provider.kv_base("a") == {}
    assert provider.get_kv_all_values("a") == {"count": "1"}
    # it continues as new: the store the next execution starts with holds count=1
    provider.enqueue_for_orchestrator(start_item("a"))  # (a message to fetch the instance with)
    item = fetch(provider)
    ack(provider, item, [can_ev("a", 3)], md=meta(status="ContinuedAsNew", output=""))
    assert provider.kv_base("a") == {"count": ("1", 7)}


def test_import_with_kv_base_restores_the_stored_store(provider) -> None:
    """Execution 3 alone (1 and 2 pruned), running, having set count=3 from the stored count=2:
    imported with kv_base, the store holds count=2 under execution 3's own change, as on the
    original; imported without it, the store would be execution 3's change alone."""
    events = [started("b", execution=3), _set("b", 2, "count", "3", execution=3, ts=30)]
    provider.import_history("b", [(3, events)], kv_base={"count": ("2", 20), "other": ("x", 1)})
    assert provider.kv_base("b") == {"count": ("2", 20), "other": ("x", 1)}
    assert provider.get_kv_all_values("b") == {"count": "3", "other": "x"}
    provider.import_history("c", [(3, [started("c", execution=3), _set("c", 2, "count", "3", execution=3)])])
    assert provider.kv_base("c") == {} and provider.get_kv_all_values("c") == {"count": "3"}
