"""batch_fanout's own properties, on a correct run and on worlds with a planted defect: an item
missing, an item written outside 0..n-1, the counter off by one, a wrong checksum."""

from __future__ import annotations

import copy

import pytest

from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation
from scenarios import batch_fanout as bf


@pytest.fixture(scope="module")
def good():
    result = Simulation(bf.SPEC, 0, FaultPlan.none()).run()
    assert bf.every_item_processed_exactly_once(result) is None
    assert bf.summaries_match(result) is None
    return result


def _with_state(result, change):
    bad = copy.copy(result)
    bad.world = copy.copy(result.world)
    bad.world.state = dict(result.world.state)
    change(bad.world.state)
    return bad


def test_a_missing_item_is_caught(good):
    bad = _with_state(good, lambda s: s.pop("item:job-big:4321"))
    assert "1 missing (first [4321])" in bf.every_item_processed_exactly_once(bad)


def test_an_item_outside_the_range_is_caught(good):
    bad = _with_state(good, lambda s: s.__setitem__("item:job-small:1234", 1))  # n = 1,234: 0..1,233
    assert "1235 items written" in bf.every_item_processed_exactly_once(bad)
    bad = _with_state(good, lambda s: s.__setitem__("item:job-small:007", 1))  # not a canonical index
    assert bf.every_item_processed_exactly_once(bad) is not None


def test_a_counter_off_by_one_is_caught(good):
    bad = _with_state(good, lambda s: s.__setitem__("job:job-big:items_written", 10_001))
    assert "duplicates in effect" in bf.every_item_processed_exactly_once(bad)


def test_a_wrong_published_checksum_is_caught(good):
    def corrupt(s):
        s["summary:job-small"] = {**s["summary:job-small"], "checksum": s["summary:job-small"]["checksum"] + 1}
    bad = _with_state(good, corrupt)
    assert "published summary" in bf.summaries_match(bad)
