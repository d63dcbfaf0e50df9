"""Three runtimes in three processes on one SQLite file: every turn is executed once per lock.

Three worker processes (``procs/worker.py``, production Runtime with thread driver and wall
clock, 2 orchestration + 2 worker threads each) process 300 orchestrations (two activities, a
timer, and a sub-orchestration or a third activity) from one database file. Each worker wraps
its provider in a subclass that logs every successful ``ack_orchestration_item`` (instance,
execution, the delta's event ids, lock token) and ``ack_work_item`` to its own log file.

Checked: all orchestrations complete with their (independently computed) outputs; histories are
well formed with every schedule resolved exactly once; across all processes no lock token was
acked twice and no event id of an instance/execution was committed by two turns, and the logged
turns account for every event of every history exactly once; and the work was spread: each
process committed turns and ran activities.
"""

from __future__ import annotations

import time
from collections import defaultdict

import pytest

from duroxide_sim import Client
from duroxide_sim.providers.sqlite import SqliteProvider

from .procs import harness, workflows

PROCESSES = 3
ORCHESTRATIONS = 300


@pytest.mark.realtime
def test_three_processes_commit_every_turn_exactly_once(tmp_path):
    db = tmp_path / "shared.db"
    provider = SqliteProvider.open(db)
    client = Client(provider)
    workflows.create_side_tables(str(db))
    t0 = time.monotonic()
    workers = [harness.WorkerProc(db, tmp_path, f"p{i}", "--poll-ms", "20", "--orch-lock-ms", "5000",
                                  "--worker-lock-ms", "10000") for i in range(PROCESSES)]
    try:
        for w in workers:
            w.wait_ready()
        for n in range(ORCHESTRATIONS):
            client.start_orchestration(f"conc-{n}", "ConcParent", n)
        statuses = harness.wait_terminal(client, [f"conc-{n}" for n in range(ORCHESTRATIONS)], timeout_s=60)
        run_s = time.monotonic() - t0
        codes = [w.stop() for w in workers]
    finally:
        for w in workers:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)
    assert codes == [0] * PROCESSES, [w.stderr_tail() for w in workers]

    reports = harness.crash_reports(workers)
    assert not reports, "\n".join(reports)

    # --- outcomes and histories ----------------------------------------------------------------
    wrong = {inst: (st.status, st.output, st.error) for inst, st in statuses.items()
             if (st.status, st.output) != ("Completed", workflows.expected_conc_parent(int(inst.split("-")[1])))}
    assert not wrong, f"{len(wrong)} wrong outcome(s), e.g. {list(wrong.items())[:3]}"
    histories = harness.all_histories(provider)
    children = [inst for inst, _ in histories if "::sub::" in inst]
    assert len(children) == len(range(0, ORCHESTRATIONS, 3))
    problems = harness.history_problems(histories)
    assert not problems, "\n".join(problems[:20])

    # --- every turn once per lock ----------------------------------------------------------------
    records = harness.read_logs([w.log for w in workers])
    problems = harness.turn_log_problems(records, histories)
    assert not problems, "\n".join(problems[:20])
    # No process was killed, so the logged turns cover each history exactly: together they
    # committed every event of every execution, each once, in increasing id order per turn.
    committed: dict[tuple[str, int], list[int]] = defaultdict(list)
    for r in records:
        if r["op"] == "turn":
            ids = r["ids"]
            if ids:
                assert ids == list(range(ids[0], ids[0] + len(ids))), r  # consecutive new ids
            committed[(r["instance"], r["execution"])].extend(ids)
    assert {k: sorted(v) for k, v in committed.items()} == \
        {k: [e.event_id for e in events] for k, events in histories.items()}
    scheduled = sum(1 for events in histories.values() for e in events if type(e).__name__ == "ActivityScheduled")
    assert sum(1 for r in records if r["op"] == "work") == scheduled  # one successful ack per activity

    # --- the work was spread over the processes ----------------------------------------------------
    turns, acts = harness.per_pid(records, "turn"), harness.per_pid(records, "work")
    pids = {w.pid for w in workers}
    assert set(turns) == pids and set(acts) == pids, (turns, acts)
    n_turns = sum(turns.values())
    assert min(turns.values()) >= n_turns // 10, f"turns per process too uneven: {turns}"

    depths = provider.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
    provider._check()
    provider.close()
    print(f"\nconcurrency test: {PROCESSES} processes, {ORCHESTRATIONS} orchestrations + {len(children)} children, "
          f"{n_turns} turns {sorted(turns.values())}, {sum(acts.values())} activities {sorted(acts.values())}, "
          f"{run_s:.1f} s")
