"""Batch fan-out / fan-in: process 10,000 items with pages, batches and continue-as-new.

What it models
    ``run_job`` (typed input ``JobCursor``) processes the items of a job one *page* (500 items)
    per execution: it fans the page out as 10 ``process_batch`` activities of 50 items each
    (``ctx.all``), fans the results back in, and continues as new with the cursor moved to the
    next page - so no execution's history grows with the job (each holds ~22 events), however
    many items there are. After the last page, ``finish_job`` publishes the summary.

    ``process_batch`` writes each item's result under ``item:<job>:<index>`` with
    ``put_if_absent`` and counts ``job:<job>:items_written`` only for items it actually wrote:
    re-running a batch (a crash after its effect, a lost ack, a stolen lock) writes nothing new.
    Its result is the batch's range and checksum - the same whichever delivery produced it.

Jobs
    ``job-big``: 10,000 items = 20 pages = 200 activity calls; ``job-small``: 1,234 items (a
    partial last page and a partial last batch), started a minute later.

Properties
    ``every_item_processed_exactly_once`` - the items written are exactly 0..n-1 and the
    written-items counter equals n (no duplicates in effect); ``summaries_match`` - the summary
    published and returned has the expected item count and checksum; ``pages_bounded`` - one
    execution per page, each with at most 25 events.

Planted bug (``VARIANTS``)
    ``non-idempotent-metering``: ``process_batch`` meters usage (``job:<job>:items_written``,
    what the customer is billed for) by adding the batch size every time it runs, instead of
    counting the items it actually wrote. A re-delivered batch is billed twice. Caught by the
    idempotency checker (naming ``process_batch``) and ``every_item_processed_exactly_once``,
    with ``FaultPlan.only("crash_after_effect")``.
"""

from __future__ import annotations

import functools
import itertools

import attrs

from duroxide_sim.sim.harness import SimSpec, Start
from scenarios._common import instances_of, poisoned, status_of


class Names:
    class Orchestrations:
        RUN_JOB = "batch::orchestration::run_job"

    class Activities:
        PROCESS_BATCH = "batch::activity::process_batch"
        FINISH_JOB = "batch::activity::finish_job"


MAX_EVENTS_PER_PAGE = 25


def item_value(index: int) -> int:
    """The 'work' done per item (deterministic)."""
    return (index * 7919 + 13) % 10_007


# --- typed payloads ---------------------------------------------------------------------------


@attrs.define
class JobCursor:
    job_id: str
    total_items: int
    page_size: int = 500
    batch_size: int = 50
    next_item: int = 0
    processed: int = 0
    checksum: int = 0
    pages: int = 0


@attrs.define
class Batch:
    job_id: str
    first: int
    count: int


@attrs.define
class BatchResult:
    first: int
    count: int
    checksum: int


@attrs.define
class JobSummary:
    job_id: str
    items: int
    checksum: int
    pages: int


class JobFailed(Exception):
    pass


# --- handlers -----------------------------------------------------------------------------------


def register_activities(rt, world, *, non_idempotent_metering: bool = False):
    @rt.register_activity_typed(Names.Activities.PROCESS_BATCH)
    def process_batch(ctx, batch: Batch) -> BatchResult:
        written = 0
        checksum = 0
        for index in range(batch.first, batch.first + batch.count):
            value = item_value(index)
            checksum += value
            if world.put_if_absent(f"item:{batch.job_id}:{index}", value):
                written += 1
        if non_idempotent_metering:
            world.incr(f"job:{batch.job_id}:items_written", batch.count)  # BUG: billed on every delivery
        elif written:
            world.incr(f"job:{batch.job_id}:items_written", written)
        return BatchResult(batch.first, batch.count, checksum)

    @rt.register_activity_typed(Names.Activities.FINISH_JOB)
    def finish_job(ctx, summary: JobSummary) -> JobSummary:
        world.put_if_absent(f"summary:{summary.job_id}", attrs.asdict(summary))
        return summary


def run_job(ctx, cursor: JobCursor):
    end = min(cursor.next_item + cursor.page_size, cursor.total_items)
    batches = [Batch(cursor.job_id, first, min(cursor.batch_size, end - first))
               for first in range(cursor.next_item, end, cursor.batch_size)]
    ctx.trace_info(f"[{cursor.job_id}] page {cursor.pages + 1}: items {cursor.next_item}..{end - 1} in {len(batches)} batches")
    results = yield ctx.all([ctx.schedule_activity_typed(Names.Activities.PROCESS_BATCH, b) for b in batches])
    failed = [r["err"] for r in results if "err" in r]
    if failed:
        raise JobFailed(f"{len(failed)} batches of page {cursor.pages + 1} failed; first: {failed[0]}")
    done = [BatchResult(**r["ok"]) for r in results]
    cursor = attrs.evolve(
        cursor, next_item=end, processed=cursor.processed + sum(b.count for b in done),
        checksum=cursor.checksum + sum(b.checksum for b in done), pages=cursor.pages + 1,
    )
    if end < cursor.total_items:
        yield ctx.continue_as_new_typed(cursor)
    summary = JobSummary(cursor.job_id, cursor.processed, cursor.checksum, cursor.pages)
    return (yield ctx.schedule_activity_typed(Names.Activities.FINISH_JOB, summary, result_type=JobSummary))


def register(rt, world, *, non_idempotent_metering: bool = False):
    register_activities(rt, world, non_idempotent_metering=non_idempotent_metering)
    rt.register_orchestration_typed(Names.Orchestrations.RUN_JOB, run_job)


# --- the scenario ---------------------------------------------------------------------------------

JOBS = {"job-big": 10_000, "job-small": 1_234}


def _pages(n: int, page_size: int = 500) -> int:
    return -(-n // page_size)


def every_item_processed_exactly_once(result):
    w = result.world
    for job, total in JOBS.items():
        if job not in result.statuses or poisoned(result, job):
            continue
        prefix = f"item:{job}:"
        state = w.state
        written = sum(map(str.startswith, state, itertools.repeat(prefix)))  # keys with the prefix
        absent = _item_keys(prefix, total) - state.keys()
        if absent or written != total:  # (written > total: keys outside 0..n-1)
            missing = sorted(int(k[len(prefix):]) for k in absent)
            return f"{job}: {written} items written, {len(missing)} missing (first {missing[:5]})"
        written = w.get(f"job:{job}:items_written", 0)
        if written != total:
            return f"{job}: {written} item writes counted for {total} items (duplicates in effect)"
    return None


@functools.lru_cache(maxsize=None)
def _item_keys(prefix: str, total: int) -> frozenset[str]:
    return frozenset(f"{prefix}{i}" for i in range(total))


@functools.lru_cache(maxsize=None)
def _checksum(total: int) -> int:
    return sum(item_value(i) for i in range(total))


def summaries_match(result):
    for job, total in JOBS.items():
        if job not in result.statuses or poisoned(result, job):
            continue
        want = {"job_id": job, "items": total, "checksum": _checksum(total), "pages": _pages(total)}
        got = status_of(result, job)
        if got != ("Completed", want):
            return f"{job}: expected Completed {want!r}, got {got[0]} {str(got[1]).splitlines()[0]!r}"
        if result.world.get(f"summary:{job}") != want:
            return f"{job}: published summary {result.world.get(f'summary:{job}')!r} != {want!r}"
    return None


def pages_bounded(result):
    for inst, executions in instances_of(result, Names.Orchestrations.RUN_JOB).items():
        if poisoned(result, inst):
            continue
        if len(executions) != _pages(JOBS[inst]):
            return f"{inst}: {len(executions)} executions for {_pages(JOBS[inst])} pages"
        for exe, events in executions.items():
            if len(events) > MAX_EVENTS_PER_PAGE:
                return f"{inst} execution {exe} has {len(events)} events (> {MAX_EVENTS_PER_PAGE})"
    return None


def make_spec(*, name: str, ref: str, non_idempotent_metering: bool = False, small_at_ms: int = 60_000) -> SimSpec:
    def setup(rt, world):
        register(rt, world, non_idempotent_metering=non_idempotent_metering)

    return SimSpec(
        name=name,
        setup=setup,
        starts=[Start(instance="job-big", orchestration=Names.Orchestrations.RUN_JOB, input=JobCursor("job-big", JOBS["job-big"])),
                Start(instance="job-small", orchestration=Names.Orchestrations.RUN_JOB, input=JobCursor("job-small", JOBS["job-small"]),
                      at_ms=small_at_ms)],
        invariants=[every_item_processed_exactly_once, summaries_match, pages_bounded],
        ref=ref,
    )


SPEC = make_spec(name="batch_fanout", ref="scenarios/batch_fanout.py:SPEC")
PRODUCTION = make_spec(name="batch_fanout-production", ref="scenarios/batch_fanout.py:PRODUCTION", small_at_ms=50)

# --- planted bugs ---------------------------------------------------------------------------------

NON_IDEMPOTENT_METERING = make_spec(name="batch_fanout/non-idempotent-metering", ref="scenarios/batch_fanout.py:NON_IDEMPOTENT_METERING",
                                    non_idempotent_metering=True)

VARIANTS = {"non-idempotent-metering": NON_IDEMPOTENT_METERING}
