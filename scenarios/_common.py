"""Helpers shared by the scenario modules (not a scenario: the CLI skips ``_``-prefixed files).

Everything here works on a :class:`~duroxide_sim.sim.harness.SimResult` *or* on the small
result object the production-mode tests build (``.world``, ``.statuses``, ``.histories``), so a
scenario's invariants hold in both modes.
"""

from __future__ import annotations

from typing import Any


def fixture_once(world: Any, name: str) -> bool:
    """True the first time it is called for ``world`` and ``name``.

    ``setup(runtime, world)`` runs once per simulated process (and again after every crash),
    so pre-populating the external world there must happen once per world, or a restarted
    process would resurrect what a workflow already deleted. The marker lives in the world
    itself (``fixture:<name>``), identically in the faulty and the fault-free run.
    """
    return world.put_if_absent(f"fixture:{name}", True)


def orchestration_name(executions: dict[int, list[Any]]) -> str | None:
    """The orchestration name of an instance, from the Started event of its first execution."""
    for exe in sorted(executions):
        events = executions[exe]
        if events and type(events[0]).__name__ == "OrchestrationStarted":
            return events[0].name
    return None


def instances_of(result: Any, name: str) -> dict[str, dict[int, list[Any]]]:
    """The histories (``instance -> execution -> events``) of every instance running ``name``."""
    return {inst: exes for inst, exes in result.histories.items() if orchestration_name(exes) == name}


def status_of(result: Any, instance: str) -> tuple[str, Any]:
    """(status, output-or-error) of an instance; ``("NotFound", None)`` when unknown."""
    st = result.statuses.get(instance)
    if st is None:
        return ("NotFound", None)
    return (st.status, st.output if st.status == "Completed" else st.error)


def poisoned(result: Any, instance: str) -> bool:
    """The instance failed with a *poison* error: faults used up its delivery budget
    (``max_attempts``), and the runtime failed it without running any more user code - no
    compensation, no cleanup (SPEC §10.2). Business invariants cannot hold for such instances;
    the harness counts them as ``budget_exhausted`` instead of failures, and so do we."""
    status, error = status_of(result, instance)
    return status == "Failed" and str(error).startswith("poison:")


def discarded_in_can_gap(result: Any) -> list[str]:
    """Queue messages the *runtime* discarded in a continue-as-new gap (simulated runs only).

    Known runtime issue (SPEC §3.1 step 3, reported with a repro): when the batch holding an
    instance's ``ContinueAsNew`` item is abandoned with a delay (an ack failed) and a queue
    message arrives meanwhile, the next fetch holds the message without the ContinueAsNew item;
    the execution is ``ContinuedAsNew``, so the turn acks "with no changes" and the message is
    gone - although SPEC §6.2 promises to carry unconsumed messages forward. Found by the
    mailbox scenario. Detected here from the trace: a fetch of queue messages without the
    ContinueAsNew item, answered by a ``noop`` turn, for an execution that was followed by
    another one. Returns ``"<instance> at step <n>"`` for each."""
    import json

    found: list[str] = []
    pending: dict[str, tuple[int, int]] = {}  # instance -> (execution, step) of a suspicious fetch
    for line in getattr(result, "trace", ()) or ():
        rec = json.loads(line)
        inst = rec.get("instance")
        if rec.get("op") == "orch_fetch":
            msgs = rec.get("messages", [])
            if "QueueMessage" in msgs and not {"ContinueAsNew", "StartOrchestration"} & set(msgs):
                pending[inst] = (rec.get("execution"), rec["step"])
            else:
                pending.pop(inst, None)
        elif rec.get("op") == "orch_turn" and inst in pending:
            execution, step = pending.pop(inst)
            if rec.get("result") == "noop" and execution + 1 in result.histories.get(inst, {}):
                found.append(f"{inst} at step {step}")
    return found
