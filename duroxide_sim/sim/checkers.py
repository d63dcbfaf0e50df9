"""Property checkers for simulated runs. Each failure names the seed, the step and a repro line.

1. ``determinism``    every final history replays from scratch against the code (and, when asked,
                      the same seed run twice gives the same trace bytes);
2. ``idempotency``    the external world after the faulty run equals the fault-free world; the
                      message names the activity whose re-execution changed it;
3. ``outcome``        each instance's outcome equals its fault-free outcome (fault-transparent specs);
4. ``liveness``       after faults stop, every instance is terminal or waits only on external
                      events / timers beyond the horizon; the run must reach quiescence within
                      its step budget. A run that stops at the horizon with work left (an eternal
                      monitor keeps a timer queued) still judges every instance that nothing can
                      move any more: nothing queued for it in the store, no client operation to
                      come (``SimResult.settled``); instances with work queued get no verdict;
5. ``well_formed``    ids increase, completions match schedules of the right kind, no completion
                      is applied twice, at most one terminal event;
6. ``invariants``     the spec's own callables over the result;
7. ``sandbox``        orchestration code made no clock/random/I-O calls (when the sandbox is on);
8. ``one_turn_per_fetch`` (SPEC §18) each orchestration fetch (a lock on an instance's batch)
                      leads to at most one committed turn: no turn commits under a lock another
                      fetch of the instance took over, nor twice under one fetch (a provider that
                      accepts a stale or used-up lock token);
9. ``cancelled_activity`` (SPEC §18) no completion for a cancelled-and-deleted activity: once the
                      turn that records an activity's ``ActivityCancelRequested`` commits (its
                      work item is deleted in that ack), no worker ack of a lease fetched before
                      it commits (a completion acked before the cancel is legitimate).

:func:`run_and_check` runs a simulation (and its fault-free twin when needed) and returns the
result with ``failures`` filled in.
"""

from __future__ import annotations

import json
import re
import traceback
from collections import OrderedDict
from collections.abc import Sequence
from itertools import compress
from typing import Any

from ..core.events import (
    ApplicationError,
    SCHEDULE_EVENTS,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityFailed,
    ActivityScheduled,
    ExternalEvent,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    ConfigurationErrorDetails,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
    TimerCreated,
    TimerFired,
)
from ..core import codec
from ..core.turn import child_instance_id
from ..core.verify import kv_snapshots, verify_execution
from .faults import FaultPlan
from .gc_pause import quiet_gc
from .harness import Failure, Simulation, SimResult, SimSpec, Start, _Later, _Run

__all__ = ["run_and_check", "check_well_formed", "check_lock_fencing", "CHECKERS"]

#: The outcome of an instance a run does not have.
_NOT_FOUND = ("NotFound", None)

CHECKERS = ("determinism", "idempotency", "outcome", "liveness", "well_formed", "invariants", "sandbox",
            "one_turn_per_fetch", "cancelled_activity")
_TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)
_COMPLETES = {
    ActivityCompleted: ActivityScheduled,
    ActivityFailed: ActivityScheduled,
    TimerFired: TimerCreated,
    SubOrchestrationCompleted: SubOrchestrationScheduled,
    SubOrchestrationFailed: SubOrchestrationScheduled,
}
_CRUMBS = (ActivityCancelRequested, SubOrchestrationCancelRequested, ExternalSubscribedCancelled, QueueSubscriptionCancelled)


def _step_of(result: SimResult, instance: str, event_id: int | None = None) -> int | None:
    """The trace step of the turn that wrote ``event_id`` (or the instance's last turn)."""
    found = None
    for line in result.trace:
        rec = json.loads(line)
        if rec.get("op") != "orch_turn" or rec.get("instance") != instance:
            continue
        if event_id is None:
            found = rec["step"]
        elif any(e.split(":", 1)[0] == str(event_id) for e in rec.get("events", [])):
            return rec["step"]
    return found


def check_well_formed(instance: str, execution: int, events: list[HistoryEvent]) -> list[tuple[str, int | None]]:
    """Structural problems of one execution's history: (message, offending event id)."""
    problems: list[tuple[str, int | None]] = []
    if not events:
        return problems
    if not isinstance(events[0], OrchestrationStarted):
        problems.append((f"execution {execution} starts with {type(events[0]).__name__}", events[0].event_id))
    schedules: dict[int, HistoryEvent] = {}
    completed: set[int] = set()
    terminal_seen: HistoryEvent | None = None
    limit_failure_seen = False
    last_id = 0
    for ev in events:
        if ev.event_id <= last_id:
            problems.append((f"event id {ev.event_id} does not increase (after {last_id})", ev.event_id))
        last_id = ev.event_id
        appended_limit_failure = False
        if terminal_seen is not None and not isinstance(ev, _CRUMBS):
            if (isinstance(ev, OrchestrationFailed) and not limit_failure_seen
                    and isinstance(ev.details, ApplicationError) and ev.details.kind == "OrchestrationFailed"):
                # a size-limit failure appended after the turn's ending (SPEC §10.3): the last
                # terminal event decides the status - not a second ending
                limit_failure_seen = appended_limit_failure = True
            else:
                problems.append((f"{type(ev).__name__} after terminal {type(terminal_seen).__name__}", ev.event_id))
        if isinstance(ev, SCHEDULE_EVENTS):
            schedules[ev.event_id] = ev
        want = _COMPLETES.get(type(ev))
        if want is not None:
            src = ev.source_event_id
            sched = schedules.get(src) if src is not None else None
            if sched is None:
                problems.append((f"{type(ev).__name__} for unknown schedule id {src}", ev.event_id))
            elif not isinstance(sched, want):
                problems.append((f"{type(ev).__name__} completes a {type(sched).__name__} (id {src})", ev.event_id))
            elif src in completed:
                problems.append((f"completion for id {src} applied twice", ev.event_id))
            completed.add(src)  # type: ignore[arg-type]
        if isinstance(ev, _TERMINAL):
            if terminal_seen is not None and not appended_limit_failure:
                problems.append(("second terminal event", ev.event_id))
            terminal_seen = ev
    return problems


def _trace_records(trace: Any) -> Any:
    """The trace's records as dicts, in order, without encoding them: lines already encoded are
    parsed, records not yet encoded are read as recorded (their event lists may still be
    :class:`~.harness._Later` values: see :func:`_cancel_sources`)."""
    records = getattr(trace, "_records", None)
    if records is None:  # (a plain list of lines)
        return map(json.loads, trace)
    lines = trace._lines
    if not lines:
        return iter(records)
    return (rec for part in (map(json.loads, lines), records) for rec in part)


def _cancel_sources(result: SimResult, instance: str, events: Any, fetch: dict[str, Any]) -> list[int]:
    """The activity ids whose ``ActivityCancelRequested`` a committed turn of ``instance`` wrote
    (``events``: the turn record's event list; ``fetch``: the record of the fetch it used).

    A record not yet encoded holds the events themselves. An encoded one only has labels
    (``"7:ActivityCancelRequested"``): the source is read from the final history of the
    execution the turn wrote to - the fetched one, or the next when the turn started it from a
    continue-as-new message."""
    if type(events) is _Later:
        delta = events.arg
        if ActivityCancelRequested not in map(type, delta):
            return []
        return [e.source_event_id for e in delta if type(e) is ActivityCancelRequested]
    ids = [int(label.split(":", 1)[0]) for label in events if label.endswith(":ActivityCancelRequested")]
    if not ids:
        return []
    execution = fetch.get("execution")
    messages = fetch.get("messages") or ()
    if type(messages) is _Later:
        messages = messages.fn(messages.arg)
    if "ContinueAsNew" in messages and any(label.endswith(":OrchestrationStarted") for label in events):
        execution = (execution or 0) + 1
    history = result.histories.get(instance, {}).get(execution, ())
    crumbs = {e.event_id: e.source_event_id for e in history if type(e) is ActivityCancelRequested}
    return [crumbs[i] for i in ids if crumbs.get(i) is not None]  # type: ignore[misc]


#: Findings per run and checker at most (a provider that accepts every stale token would
#: otherwise report every turn of a long run).
_MAX_FINDINGS = 5


def check_lock_fencing(result: SimResult) -> tuple[list[tuple[str, str, int]], list[tuple[str, str, int]]]:
    """SPEC §18's lock invariants, from the trace in one pass: (stale turns, cancelled acks), each
    a list of (message, instance, step).

    *One committed turn per fetch.* Each fetch (``orch_fetch``) locks the instance under a new
    token; a correct store lets another fetch lock it only once the lock expired or was
    released, and refuses the old token from then on. So a committed turn (``orch_turn`` with a
    result) must use the instance's latest fetch (each fetch is one item, turned once: the way a
    fetch gets a second committed turn is an older fetch's turn committing after it). A turn is
    paired with the fetch it used by following each node's fetched items as the harness
    holds them: a turn takes the node's oldest item unless a reorder fault fired at its step; a
    turn that raised (``provider_error`` / ``replay_divergence``, which name the node and the
    instance it ``turned``) used one up the same way; a crash drops the node's items. Where the
    trace cannot say which item was taken (a fired reorder), the turn is taken to have used the
    node's newest item when it committed (the oldest when it did not), and a raised turn's
    instance is not judged on that node any more: no verdict rests on a guess. Turns whose ack
    failed (no result) are never reported - among them the lock-lost acks of taken-over locks,
    and acks that committed and then reported failure (retried, such an ack finds its token
    used up).

    *No completion for a cancelled-and-deleted activity.* A committed turn whose delta holds an
    ``ActivityCancelRequested`` deleted that activity's work item in its ack; a worker ack of the
    item (``work_ack`` committed) at a later step is reported when the last fetch of that
    (instance, activity id) came before the cancelling turn: the lease is of the deleted row.
    A completion acked before the cancel committed is legitimate (its message was already
    queued; history may record it after the breadcrumb); a fetch after the cancel is of another
    item with the same id (a later execution's, after continue-as-new), so the ack is not
    judged. (The trace's acks name (instance, activity id), not the execution.) Breadcrumbs
    written by an ack that reported failure after committing (no result in the trace) are not
    known, so acks after them are not judged."""
    stale: list[tuple[str, str, int]] = []
    cancelled: list[tuple[str, str, int]] = []
    latest: dict[str, tuple[str, int]] = {}  # instance -> (node, step) of its latest fetch
    held: dict[str, dict[str, list[dict[str, Any]]]] = {}  # node -> instance -> fetch records of its items
    reorder_at = -1  # the step of the last reorder fault
    unrecorded_at = -1  # the last step whose turn raised (its item left the node without a record)
    cancel_at: dict[tuple[str, int], int] = {}  # (instance, activity id) -> step of the cancelling turn
    work_fetch: dict[tuple[str, int], tuple[int, str, str]] = {}  # -> (step, node, activity) of the last fetch
    for rec in _trace_records(result.trace):
        op = rec["op"]
        if op == "orch_fetch":
            inst, node, step = rec["instance"], rec["node"], rec["step"]
            latest[inst] = (node, step)
            held.setdefault(node, {}).setdefault(inst, []).append(rec)
        elif op == "orch_turn":
            inst, node, step = rec["instance"], rec["node"], rec["step"]
            committed = rec["result"] is not None
            mine = held.get(node, {}).get(inst)
            if not mine:
                continue  # (not fetched in this trace: nothing to pair it with)
            if len(mine) == 1 or (reorder_at != step and unrecorded_at < mine[0]["step"]):
                fetch = mine.pop(0)  # the node's oldest item (or its only one of this instance)
            else:
                fetch = mine.pop() if committed else mine.pop(0)
            if not committed:
                continue
            used = fetch["step"]
            last_node, last_step = latest[inst]
            if used < last_step and len(stale) < _MAX_FINDINGS:
                # (each fetch is one item, taken once: a fetch cannot commit twice but through a
                # stale token - the older fetch's turn committing after the newer one locked)
                by = "its own later fetch" if last_node == node else f"{last_node}'s fetch"
                stale.append((f"{node} committed a turn under a stale lock: its fetch of the instance at step {used} "
                              f"was taken over by {by} at step {last_step} (the store accepted an expired or taken-over "
                              "lock token, so the instance can commit two turns for one lock; SPEC §18: one committed "
                              "turn per fetch)", inst, step))
            for source in _cancel_sources(result, inst, rec["events"], fetch):
                cancel_at[(inst, source)] = step
        elif op == "work_fetch":
            work_fetch[(rec["instance"], rec["id"])] = (rec["step"], rec["node"], rec["activity"])
        elif op == "work_ack":
            if not cancel_at or rec["committed"] is not True:
                continue
            key = (rec["instance"], rec["id"])
            at = cancel_at.get(key)
            got = work_fetch.get(key)
            if at is None or got is None or got[0] >= at or len(cancelled) >= _MAX_FINDINGS:
                continue
            cancelled.append((f"{rec['node']}'s ack of activity id {key[1]} ({got[2]}) committed although the turn at "
                              f"step {at} had cancelled the activity and deleted its work item (the item was last fetched "
                              f"at step {got[0]}, by {got[1]}, before the cancel): the store accepted a completion for a "
                              "cancelled-and-deleted activity (SPEC §18)", key[0], rec["step"]))
        elif op == "crash":
            held.pop(rec["node"], None)
        elif op == "fault":
            if rec["kind"] == "reorder":
                reorder_at = rec["step"]
        elif op == "replay_divergence" or (op == "provider_error" and rec.get("action") == "orch_turn"):
            # A turn that raised took an item too: the node's oldest unless a reorder fault fired
            # at its step. Without that removal the used-up fetch stayed held, every later turn of
            # the instance on the node paired with the fetch before its own, and the committed one
            # was reported as stale (an abandon that committed and then reported an error, found
            # by the generated versioning probe).
            mine = held.get(rec.get("node"), {}).get(rec.get("turned"))
            if mine and (len(mine) == 1 or reorder_at != rec["step"]):
                mine.pop(0)
            elif mine:
                mine.clear()  # (which of several a reorder took is unknown: no later verdict on them)
            elif rec.get("turned") is None:
                unrecorded_at = rec["step"]  # (a record that does not say: the pairing stays cautious)
    return stale, cancelled


def _check(sim: Simulation, result: SimResult, reference: SimResult | None, sandbox_violations: list[Any]) -> list[Failure]:
    seed, repro = result.seed, sim.repro_command()
    fails: list[Failure] = []
    # (first: the trace's records are read as recorded, before a failure's step lookup encodes them)
    stale_turns, cancelled_acks = check_lock_fencing(result)

    def fail(checker: str, message: str, instance: str | None = None, step: int | None = None) -> None:
        fails.append(Failure(checker=checker, message=message, seed=seed, step=step, instance=instance, repro=repro))

    for report in result.crash_reports:
        fail("harness", report)
    for step, instance, message in result.divergences[:5]:
        fail("determinism", message, instance, step)
    # 7. sandbox
    for v in sandbox_violations:
        fail("sandbox", v.render())
    # 5. well-formedness and 1. determinism (replay from scratch)
    for inst, executions in result.histories.items():
        snaps = kv_snapshots(executions)
        # Executions whose predecessors were pruned cannot get their starting KV store back
        # from history: replaying them would report KV differences that are not there.
        present = [e for e in sorted(executions) if executions[e]]
        complete_from = next((e for e in present if all(executions.get(p) for p in range(1, e))), None)
        for exe, events in executions.items():
            for message, event_id in check_well_formed(inst, exe, events):
                fail("well_formed", message, inst, _step_of(result, inst, event_id))
            for ev in events:
                # The runtime itself found the code nondeterministic (a schedule mismatch while
                # replaying): that is this checker's finding, even if a from-scratch replay
                # reproduces the same failure.
                if isinstance(ev, OrchestrationFailed) and isinstance(ev.details, ConfigurationErrorDetails):
                    fail("determinism", f"the runtime failed the instance as nondeterministic: {ev.details.display_message()}",
                         inst, _step_of(result, inst, ev.event_id))
            if complete_from is None or exe < complete_from:
                continue
            codes = result.replay_registries(inst, exe, events)
            for process, registry in codes:
                problem = verify_execution(inst, exe, events, registry, snaps.get(exe))
                if problem is not None:
                    # (several codes wrote this history - a rolling deploy, a restart that changed
                    # code: name the process whose code does not replay it)
                    whose = f" (with the code of process {process})" if len(codes) > 1 else ""
                    fail("determinism", f"replay from scratch diverged{whose}: {problem}", inst, _step_of(result, inst))
                    break
    # 8. one committed turn per fetch and 9. no completion for a cancelled-and-deleted activity
    for message, inst, step in stale_turns:
        fail("one_turn_per_fetch", message, inst, step)
    for message, inst, step in cancelled_acks:
        fail("cancelled_activity", message, inst, step)
    # 4. liveness
    if not result.quiescent and result.steps >= sim.max_steps:
        # A livelock spins at one virtual time; an eternal orchestration (a monitor's timer loop)
        # moves the clock on: it needs a horizon the step budget reaches, not a fix.
        moved = (f"; virtual time reached {_duration(result.end_ms)} of the {_duration(sim.spec.horizon_ms)} horizon "
                 "(an eternal orchestration needs a shorter horizon_ms or a larger max_steps)") if result.end_ms > 0 else ""
        fail("liveness", f"no quiescence within {sim.max_steps} steps (livelock?){moved}", step=result.steps)
    end_ms = result.end_ms
    for inst, executions in result.histories.items():
        if not executions:
            continue
        events = executions[max(executions)]
        ending = next((e for e in reversed(events) if isinstance(e, _TERMINAL)), None)
        if ending is not None:
            if isinstance(ending, OrchestrationContinuedAsNew):  # (the last terminal event decides, SPEC §10.3)
                if result.settled(inst):
                    fail("liveness", "continued-as-new but the next execution never started", inst)
            continue
        if result.settled(inst):
            earlier = [executions[e] for e in sorted(executions) if e < max(executions)]
            for name in _waits_on_a_dropped_event(events, earlier):
                fail("liveness", f"waits for event {name!r}, which was raised before it subscribed and so was "
                     "dropped (positional events reach only subscriptions that exist; SPEC §6.1): the sender "
                     "raced the subscription", inst, _step_of(result, inst))
        done = {e.source_event_id for e in events if type(e) in _COMPLETES or isinstance(e, _CRUMBS)}
        for ev in events:
            if not isinstance(ev, SCHEDULE_EVENTS) or ev.event_id in done:
                continue
            if isinstance(ev, (ExternalSubscribed, QueueSubscribed, OrchestrationChained)):
                continue  # waiting for a signal nobody may send: allowed; a detached start completes nothing
            if isinstance(ev, SubOrchestrationScheduled):
                child = child_instance_id(inst, ev.instance)  # (auto ids are recorded relative to the parent)
                if _still_running(result, child) or not result.settled(child):
                    continue  # the child is judged on its own (it may be waiting for a signal too), or is yet to start
            if isinstance(ev, TimerCreated) and (not result.settled(inst) or ev.fire_at_ms - 1_767_225_600_000 > end_ms):
                continue
            if not result.settled(inst):
                continue  # stopped with work queued for it (or a client operation to come): not a verdict
            fail("liveness", f"stuck: {type(ev).__name__} id {ev.event_id} ({getattr(ev, 'name', '')}) never completed", inst,
                 _step_of(result, inst))
    # (all records: a failure's step lookup above may have encoded some of them already)
    ran = {r.get("instance") for r in _trace_records(result.trace) if r.get("op") == "orch_turn"}
    for inst, status in result.statuses.items():
        if status.status == "NotFound" and result.settled(inst) and inst not in ran:
            fail("liveness", "instance never started", inst)  # (one that ran and was deleted did start)
    # 3. outcome equivalence and 2. idempotency, against the fault-free twin
    # With no fault injected, a difference from the twin (one canonical schedule) is scheduling,
    # not a fault the workflow failed to tolerate: not an outcome or idempotency finding.
    if reference is not None and sim.spec.fault_transparent and result.faults_injected:
        ref_out = reference.outputs()
        got_out = result.outputs()
        for inst, got in got_out.items():
            want = ref_out.get(inst)
            if got[0] == "Failed" and str(got[1]).startswith("poison:") and want is not None and got != want:
                # The faults used up the retry budget (max_attempts deliveries): the runtime's
                # documented answer to repeated failure, not a workflow bug. Counted, not failed.
                # Also when the fault-free outcome is itself a poison, another one (an instance
                # that backs off on a missing version until it is poisoned, whose activity the
                # faults poisoned first; found by the generated versioning probe).
                result.budget_exhausted.append(inst)
        # A poisoned instance stopped half-way, so the world (and every instance that reads it
        # later) may differ from the fault-free run without any bug: the twin is no longer a
        # yardstick for this run. Its outcomes and world are compared only when no instance was
        # poisoned; the spec's own invariants (below) still judge every run.
        if not result.budget_exhausted:
            unfaulted: list[SimResult] = []

            def without_faults() -> SimResult:
                # The same seed with no fault injected: what its schedule alone does. A difference
                # from the twin that this run shows too comes from scheduling (an outcome that
                # depends on which completion lands first), not from a fault the workflow failed
                # to tolerate; reporting it would blame whatever harmless fault the run had, and
                # shrinking would end at that fault. Run only when a difference is found.
                if not unfaulted:
                    plain = Simulation(sim.spec, sim.seed, FaultPlan.none(), provider=sim.provider_kind,
                                       nodes=sim.n_nodes, max_steps=sim.max_steps, check_invariants=False,
                                       verify_cache=False)
                    unfaulted.append(_Run(plain, plain.plan).execute())
                return unfaulted[0]

            # A run the horizon cut with work left is compared only where the cut cannot explain a
            # difference: faults shift virtual time (restarts, lock-expiry jumps), so the twin may
            # have got further by the horizon - a timer fired, an instance started, a key written.
            # Not compared: instances with work still queued (not settled), instances only the
            # twin has, and world keys any of those wrote.
            cut: set[str] = set()
            if not result.quiescent:
                cut = {i for i in {**got_out, **ref_out} if not result.settled(i) or i not in got_out}
            for inst in dict.fromkeys([*got_out, *ref_out]):  # (an instance the faults never started counts)
                want, got = ref_out.get(inst), got_out.get(inst, _NOT_FOUND)
                if inst in cut or (want is not None and _same_outcome(got, want)):
                    continue
                if "::sub::" in inst and (inst not in got_out or want is None):
                    # An auto child id names the event position of its schedule (SPEC §7), which
                    # a message recorded earlier or later moves: the child exists under another
                    # id in one of the runs, and its parent's outcome is compared.
                    continue
                plain = without_faults().outputs().get(inst, _NOT_FOUND)
                if want is None:
                    # Only the faulty run has it (a re-delivered activity started a second
                    # follow-up, say): reported unless the same seed without faults has it too.
                    if plain is _NOT_FOUND:
                        fail("outcome", f"instance exists only under faults (outcome {got!r}): neither the fault-free "
                             "run nor the same seed without faults created it", inst, _step_of(result, inst))
                    continue
                if not _same_outcome(plain, got):
                    fail("outcome", f"outcome under faults {got!r} differs from fault-free {want!r} (the same seed "
                         f"without faults gives {plain!r})", inst, _step_of(result, inst))
            a, b = _canonical_state(result), _canonical_state(reference)
            if a != b:
                c = _canonical_state(without_faults())
                keys = [k for k in dict.fromkeys(list(b) + list(a))
                        if a.get(k, _ABSENT) != b.get(k, _ABSENT) and a.get(k, _ABSENT) != c.get(k, _ABSENT)]
                if cut:
                    keys = [k for k in keys if cut.isdisjoint(_writer_instances(result, reference, k))]
                if keys:
                    fail("idempotency", _world_diff(result, reference, keys), *_effect_site(result, reference, keys[0]))
    # 6. user invariants
    for inv in sim.spec.invariants:
        try:
            message = inv(result)
        except AssertionError as exc:
            message = str(exc) or "assertion failed"
        except Exception as exc:  # noqa: BLE001 - a property that crashes is a failed property
            # (reported with the seed's repro like any other, instead of aborting the whole run)
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            message = f"raised {type(exc).__name__}: {exc} (at {frame.filename}:{frame.lineno})"
        if message is True or message is None:
            continue  # (True: an invariant written as a predicate, holding)
        if message is False:
            message = "returned False (invariants return None when they hold, else a message)"
        if message:
            fail("invariants", f"{getattr(inv, '__name__', 'invariant')}: {message}")
    return fails


def _pair_positional(events: list[HistoryEvent]) -> tuple[dict[str, int], dict[str, list[str]], dict[str, list[str]]]:
    """One execution's positional events paired as SPEC §6.1 pairs them: (active subscriptions,
    delivered arrivals, dropped arrivals) by name."""
    active: dict[str, int] = {}
    subscribed: dict[int, str] = {}
    delivered: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    for e in events:
        if isinstance(e, ExternalSubscribed):
            active[e.name] = active.get(e.name, 0) + 1
            subscribed[e.event_id] = e.name
        elif isinstance(e, ExternalSubscribedCancelled) and e.source_event_id in subscribed:
            name = subscribed[e.source_event_id]
            active[name] -= 1
        elif isinstance(e, ExternalEvent):
            got = delivered.setdefault(e.name, [])
            if active.get(e.name, 0) > len(got):
                got.append(e.data)
            else:
                dropped.setdefault(e.name, []).append(e.data)
    return active, delivered, dropped


def _waits_on_a_dropped_event(events: list[HistoryEvent], earlier: Sequence[list[HistoryEvent]] = ()) -> list[str]:
    """Event names the execution still waits for although an event of that name was dropped.

    Pairs subscriptions and arrivals per name as SPEC §6.1 does: an arrival is delivered only if,
    at its place in history, the name's active (not cancelled) subscriptions outnumber the
    arrivals delivered so far; otherwise it is dropped (kept for audit only). Cancelled
    subscriptions consume nothing. A name is reported when some active subscription is still
    unresolved and a dropped arrival is not a repeat of one delivered (same data: a client that
    retried a raise whose commit was lost sends it twice - at-least-once - and the repeat being
    dropped is harmless).

    ``earlier``: the instance's earlier executions (oldest first). An event dropped by one of
    them - raised before a continue-as-new, to an execution that did not wait for it - is as
    lost for the execution that waits for it now (positional events are not carried forward);
    repeats are judged against what any execution received."""
    active, delivered, dropped = _pair_positional(events)
    lost_by_name: dict[str, list[str]] = {}
    received: dict[str, list[str]] = {name: list(got) for name, got in delivered.items()}
    for older in earlier:
        _, got_then, dropped_then = _pair_positional(older)
        for name, data in got_then.items():
            received.setdefault(name, []).extend(data)
        for name, data in dropped_then.items():
            lost_by_name.setdefault(name, []).extend(data)
    for name, data in dropped.items():
        lost_by_name.setdefault(name, []).extend(data)
    return [name for name, lost in lost_by_name.items()
            if active.get(name, 0) > len(delivered.get(name, ()))
            and any(d not in received.get(name, ()) for d in lost)]


_ATTEMPTS = re.compile(r"exceeded \d+ attempts")


def _same_outcome(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal outcomes, where two poison failures count as equal whatever attempt they came at: a
    fault (a lost ack, a crash) adds a delivery, so the count in the text differs, not the outcome
    (an orchestration whose version no runtime registers is poisoned in both runs, say)."""
    if a == b:
        return True
    return (a[0] == b[0] == "Failed" and str(a[1]).startswith("poison:") and str(b[1]).startswith("poison:")
            and _ATTEMPTS.sub("exceeded N attempts", str(a[1])) == _ATTEMPTS.sub("exceeded N attempts", str(b[1])))


def _writer_instances(result: SimResult, reference: SimResult, key: str) -> set[str | None]:
    """The instances whose activities changed ``key``, in either run."""
    return {e.instance for run in (result, reference) for e in run.world.ledger if e.key == key}


def _duration(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1_000)):
        if ms >= size:
            return f"{ms / size:.1f} {unit}"
    return f"{ms} ms"


def _still_running(result: SimResult, instance: str) -> bool:
    """The instance exists and its latest execution has no terminal event."""
    executions = result.histories.get(instance)
    if not executions:
        return False
    return not any(isinstance(e, _TERMINAL) for e in executions[max(executions)])


def _writers_of(result: SimResult, reference: SimResult, key: str) -> list[str]:
    """Activities that wrote ``key`` (setup may have seeded it: not an activity), the one that
    ran more often than in the fault-free run first: that re-execution changed the world."""
    names = [w for w in dict.fromkeys(result.world.writers(key) + reference.world.writers(key))
             if w != "<outside an activity>"]
    return sorted(names, key=lambda w: result.world.executions.get(w, 0) == reference.world.executions.get(w, 0))


def _effect_site(result: SimResult, reference: SimResult, key: str) -> tuple[str | None, int | None]:
    """(instance, step) of the execution that changed ``key`` differently from the fault-free
    run: the instance whose activity wrote it more often than there (else its last writer), and
    the step of that activity's second execution for it (the re-execution; else its last)."""
    writers = _writers_of(result, reference, key)
    if not writers:
        return None, None
    activity = writers[0]

    def per_instance(world: Any) -> dict[str | None, int]:
        counts: dict[str | None, int] = {}
        for effect in world.ledger:
            if effect.key == key and effect.activity == activity:
                counts[effect.instance] = counts.get(effect.instance, 0) + 1
        return counts

    mine, theirs = per_instance(result.world), per_instance(reference.world)
    instance = next((i for i, n in mine.items() if n > theirs.get(i, 0)), None)
    if instance is None and mine:
        instance = list(mine)[-1]
    if instance is None:
        return None, None
    steps = []
    for line in result.trace:
        if '"work_exec"' in line:
            rec = json.loads(line)
            if rec.get("op") == "work_exec" and rec.get("instance") == instance and rec.get("activity") == activity:
                steps.append(rec["step"])
    return instance, (steps[1] if len(steps) > 1 else steps[-1] if steps else None)


#: A key missing from a world (distinct from a key holding None).
_ABSENT = object()


def _world_diff(result: SimResult, reference: SimResult, keys: list[str] | None = None) -> str:
    """What differs (``keys``: the keys to report, default every differing key), and which
    activity wrote it."""
    a, b = _canonical_state(result), _canonical_state(reference)
    if keys is None:
        keys = [k for k in dict.fromkeys(list(b) + list(a)) if a.get(k) != b.get(k)]

    def writers_of(key: str) -> list[str]:
        return _writers_of(result, reference, key)

    def ran(w: str) -> tuple[int, int]:
        return result.world.executions.get(w, 0), reference.world.executions.get(w, 0)

    parts = []
    for key in keys[:5]:
        writers = writers_of(key)
        diff = f"key {key!r}: fault-free {json.dumps(b.get(key), default=repr)} vs faulty {json.dumps(a.get(key), default=repr)}"
        if writers:
            counts = ", ".join(f"{w} ran {ran(w)[0]}x (fault-free {ran(w)[1]}x)" for w in writers)
            parts.append(f"{diff}; written by activity {writers[0]!r} ({counts})")
        else:
            parts.append(f"{diff}; written outside any activity (orchestration code or setup writing the world?)")
    if not keys:
        return "worlds differ"
    first = writers_of(keys[0])
    if not first:
        head = "the world differs from the fault-free run, changed outside any activity"
    elif ran(first[0])[0] > ran(first[0])[1]:
        head = f"activity {first[0]!r} changed the world when re-executed"
    else:
        head = f"activity {first[0]!r} changed the world differently from the fault-free run"
    return head + ": " + "; ".join(parts)


def _canonical_state(result: SimResult) -> dict[str, Any]:
    """World state with lists compared as multisets: the order in which concurrent instances
    append is a scheduling detail, a duplicate entry is not.

    Only the values that need it are rewritten (lists, floats, dicts and their subclasses): a
    world of ten thousand scalar keys and one summary dict is copied at C speed and the dict
    replaced, instead of a per-key Python loop twice per seed. A world without such values is
    returned as it is (read-only use). The answer is kept on the world until it changes, so a
    fault-free twin shared by many seeds is canonicalized once."""
    world = result.world
    state = world.state
    stamp = (len(world.ledger), len(state))
    cached = getattr(world, "_canonical", None)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    # The distinct value types, collected at C speed (ordered: no set iteration in the sim).
    kinds = [t for t in dict.fromkeys(map(type, state.values())) if issubclass(t, (list, float, dict))]
    if kinds:
        wanted = frozenset(kinds).__contains__  # membership only
        keys = list(compress(state.keys(), map(wanted, map(type, state.values()))))
        state = dict(state)
        for key in keys:
            state[key] = _canonical_value(state[key])
    world._canonical = (stamp, state)
    return state


def _canonical_value(value: Any) -> Any:
    """Lists as multisets (sorted), and floats to 12 significant digits: a total summed in
    another order (concurrent instances adding amounts) differs in the last bits only, which is
    arithmetic, not a duplicated effect."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, list):
        return sorted((_canonical_value(v) for v in value), key=_sort_key)
    if isinstance(value, dict):
        return {k: _canonical_value(v) for k, v in value.items()}
    return value


#: ``json.dumps(value, sort_keys=True, default=repr)``, with the encoder built once (``dumps``
#: builds one per call with these options; same bytes, same errors).
_SORT_KEY_ENCODE = json.JSONEncoder(sort_keys=True, default=repr).encode


def _sort_key(value: Any) -> str:
    """A total order for list items of any JSON-like shape (dicts with keys of mixed types,
    which ``sort_keys`` cannot order, fall back to their repr)."""
    try:
        return _SORT_KEY_ENCODE(value)
    except TypeError:
        return repr(value)


#: Fault-free twins by (spec, provider, max_steps, realized client operations), most
#: recently used last. A twin runs the inputs under a canonical schedule (``_Run(twin_of=...)``),
#: so it is a pure function of that key: seeds that draw the same inputs share it.
_TWINS: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], SimResult]] = OrderedDict()
_TWINS_MAX = 16


class _Same:
    """Compares by identity (``is``), whatever the wrapped object's own ``__eq__`` says."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Same) and other.obj is self.obj

    __hash__ = None  # type: ignore[assignment]


def _spec_identity(spec: SimSpec) -> tuple[Any, ...]:
    return (_Same(spec), _Same(spec.setup), _Same(spec.options), spec.horizon_ms)


def _twin_key(sim: Simulation, realized: tuple[list[Any], list[Any]]) -> tuple[Any, ...] | None:
    try:
        ops = tuple(
            (type(op).__name__, op.instance, getattr(op, "orchestration", None), getattr(op, "name", None),
             getattr(op, "kind", None), getattr(op, "version", None), op.at_ms,
             codec.encode(op.input if isinstance(op, Start) else op.data))
            for op in [*realized[0], *realized[1]]
        )
    except Exception:  # noqa: BLE001 - an input the codec refuses: run the twin, do not share it
        return None
    return (id(sim.spec), sim.provider_kind, sim.max_steps, ops)


def fault_free_twin(sim: Simulation, realized: tuple[list[Any], list[Any]]) -> SimResult:
    """The fault-free reference run for ``sim``'s realized inputs (computed once per inputs):
    one simulated process, canonical schedule, no faults.

    Only a yardstick for the outcome and idempotency checks, so it skips the provider
    self-checks and cache verification; its trace is not part of the checked run's trace."""
    key = _twin_key(sim, realized)
    if key is not None:
        hit = _TWINS.get(key)
        # The entry holds the spec itself, so its id() cannot be reused while the entry lives;
        # a spec edited in place since (another setup, options or horizon) misses.
        if hit is not None and hit[0] == _spec_identity(sim.spec):
            _TWINS.move_to_end(key)
            return hit[1]
    # One process: the simplest execution of the inputs is the best yardstick, and its instance
    # cache is always warm (no cold replays), which makes the reference cheap.
    twin = Simulation(sim.spec, sim.seed, FaultPlan.none(), provider=sim.provider_kind, nodes=1,
                      max_steps=sim.max_steps, check_invariants=False, verify_cache=False)
    reference = _Run(twin, twin.plan, twin_of=realized).execute()
    if key is not None:
        _TWINS[key] = (_spec_identity(sim.spec), reference)
        while len(_TWINS) > _TWINS_MAX:
            _TWINS.popitem(last=False)
    return reference


def run_and_check(
    sim: Simulation,
    *,
    check_repeat: bool = False,
) -> SimResult:
    """Run ``sim``; run its fault-free twin when outcome/idempotency need it; check everything."""
    with quiet_gc():  # the runs and the checkers' replays (see gc_pause)
        return _run_and_check(sim, check_repeat=check_repeat)


def _run_and_check(sim: Simulation, *, check_repeat: bool) -> SimResult:
    from .sandbox import Sandbox

    violations: list[Any] = []
    if sim.sandbox:
        with Sandbox() as box:
            result = _Run(sim, sim.plan).execute()
        violations = box.violations
    else:
        result = _Run(sim, sim.plan).execute()
    reference = None
    if sim.plan.enabled() and sim.spec.fault_transparent:
        reference = fault_free_twin(sim, result.realized)
    failures = _check(sim, result, reference, violations)
    if check_repeat:
        again = _Run(sim, sim.plan).execute()
        if again.trace != result.trace:
            first = next((i for i, (x, y) in enumerate(zip(result.trace, again.trace, strict=False)) if x != y), min(len(result.trace), len(again.trace)))
            step = json.loads(result.trace[first]).get("step") if first < len(result.trace) else result.steps
            failures.append(Failure(
                checker="determinism",
                message=f"same seed gave a different trace at line {first}: {result.trace[first] if first < len(result.trace) else '<end>'} vs {again.trace[first] if first < len(again.trace) else '<end>'}",
                seed=sim.seed, step=step, repro=sim.repro_command(),
            ))
    result.failures = failures
    return result
