"""Crash test of the production SQLite provider: worker processes SIGKILLed at random moments.

Two worker processes (``procs/worker.py``: a production Runtime with thread driver and wall
clock) share ONE database file. A controller kills one of them with SIGKILL at moments drawn
from a seeded ``random.Random`` (``DUROXIDE_CRASH_SEED`` overrides the seed) and restarts it,
again and again, while 200+ orchestrations run activities, short durable timers (20-200 ms)
and a sub-orchestration each. New orchestrations keep arriving during the kill phase, so kills
land on work in flight. Short lock timeouts (orchestrator 1 s, worker 1.5 s) let survivors take
over killed work quickly. Finally one fresh worker runs until every instance is terminal.

Then, independently of where the kills landed:

* every orchestration Completed with its fault-free output (a pure function of its input);
* every history is well formed (``check_well_formed``: ids increase, no completion applied
  twice, one terminal event) and every activity / timer / sub-orchestration schedule has
  exactly one completion;
* the idempotent side effects are exactly the fault-free ones, although activities ran more
  often than they were scheduled (re-executions after kills);
* no lock token was acked twice and no event id was committed by two turns (worker logs);
* the database passes the provider's invariant check and both queues are empty.
"""

from __future__ import annotations

import os
import random
import time

import pytest

from duroxide_sim import Client
from duroxide_sim.providers.sqlite import SqliteProvider

from .procs import harness, workflows

SEED = int(os.environ.get("DUROXIDE_CRASH_SEED", "20250611"))
SLOTS = 2  # worker processes alive at any time during the kill phase
KILLS = 36  # kills during the kill phase (+ SLOTS more when it ends)
INITIAL = 60  # orchestrations started before the first kill
PER_KILL = 5  # orchestrations started just before each kill -> 60 + 36 * 5 = 240
WORKER_ARGS = ("--orch-lock-ms", "1000", "--worker-lock-ms", "1500", "--poll-ms", "20", "--activity-ms", "15")


def _queued(provider: SqliteProvider) -> int:
    depths = provider.get_queue_depths()
    return depths.orchestrator_queue + depths.worker_queue


@pytest.mark.realtime
def test_sigkilled_workers_lose_nothing_and_duplicate_nothing(tmp_path):
    rng = random.Random(SEED)
    db = tmp_path / "crash.db"
    provider = SqliteProvider.open(db)
    client = Client(provider)
    workflows.create_side_tables(str(db))

    parents: dict[str, int] = {}
    next_n = 0

    def start(count: int) -> None:
        nonlocal next_n
        for _ in range(count):
            inst = f"crash-{next_n}"
            client.start_orchestration(inst, "CrashParent", next_n)
            parents[inst] = next_n
            next_n += 1

    incarnations = 0
    every: list[harness.WorkerProc] = []  # every incarnation, alive or dead

    def spawn() -> harness.WorkerProc:
        nonlocal incarnations
        w = harness.WorkerProc(db, tmp_path, f"w{incarnations}", *WORKER_ARGS)
        incarnations += 1
        every.append(w)
        return w

    kills = 0
    interrupted = []  # per kill: locks the killed process held at the moment it died
    t0 = time.monotonic()
    try:
        workers = [spawn() for _ in range(SLOTS)]
        for w in workers:
            w.wait_ready()
        start(INITIAL)
        while kills < KILLS:
            slot = rng.randrange(SLOTS)
            victim = workers[slot]
            victim.wait_ready()
            start(PER_KILL)  # fresh work, so the kill below lands while it is in flight
            time.sleep(rng.uniform(0.0, 0.6))
            assert victim.proc.poll() is None, f"worker died by itself:\n{victim.stderr_tail()}"
            victim.kill()
            kills += 1
            interrupted.append(harness.held_locks(db, victim.open_id, client.clock.now_ms()))
            workers[slot] = spawn()
        for w in workers:  # the kill phase ends with a kill of every survivor
            w.wait_ready()
            time.sleep(rng.uniform(0.0, 0.3))
            assert w.proc.poll() is None, f"worker died by itself:\n{w.stderr_tail()}"
            w.kill()
            kills += 1
            interrupted.append(harness.held_locks(db, w.open_id, client.clock.now_ms()))
        kill_phase_s = time.monotonic() - t0

        final = spawn()
        workers = [final]
        final.wait_ready()
        statuses = harness.wait_terminal(client, sorted(parents), timeout_s=120)
        deadline = time.monotonic() + 20
        while _queued(provider) and time.monotonic() < deadline:
            time.sleep(0.05)  # messages for terminal instances are discarded by a last noop turn
        assert final.stop() == 0, final.stderr_tail()
        total_s = time.monotonic() - t0
    finally:
        for w in every:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait(10)

    reports = harness.crash_reports(every)
    assert not reports, "\n".join(reports)

    # --- outcomes ------------------------------------------------------------------------------
    assert kills >= 20
    assert len(parents) >= 200
    wrong = {inst: (st.status, st.output, st.error) for inst, st in statuses.items()
             if (st.status, st.output) != ("Completed", workflows.expected_crash_parent(parents[inst]))}
    assert not wrong, f"{len(wrong)} orchestration(s) with a wrong outcome, e.g. {list(wrong.items())[:3]}"

    histories = harness.all_histories(provider)
    children = {f"{inst}::sub::10": n for inst, n in parents.items()}
    assert set(provider.list_instances()) == set(parents) | set(children)
    for child, n in children.items():
        st = client.get_status(child)
        assert (st.status, st.output) == ("Completed", workflows.expected_crash_child(n)), (child, st)
    assert all(exe == 1 for _, exe in histories)

    # --- histories: well formed, every schedule resolved exactly once ----------------------------
    problems = harness.history_problems(histories)
    assert not problems, f"{len(problems)} history problem(s):\n" + "\n".join(problems[:20])

    # --- idempotent side effects, at-least-once activity execution -------------------------------
    conn = harness.raw(db)
    side = {(i, k): v for i, k, v in conn.execute("SELECT instance_id, key, value FROM side_effects")}
    expected_side = {}
    for inst, n in parents.items():
        expected_side.update(workflows.expected_side_effects(inst, n))
    assert side == expected_side
    runs = {}
    for inst, exe, aid, count in conn.execute("SELECT instance_id, execution_id, activity_id, COUNT(*) FROM "
                                              "activity_runs GROUP BY instance_id, execution_id, activity_id"):
        runs[(inst, exe, aid)] = count
    conn.close()
    scheduled = {(inst, exe, e.event_id) for (inst, exe), events in histories.items() for e in events
                 if type(e).__name__ == "ActivityScheduled"}
    assert set(runs) == scheduled, "an activity ran that was never scheduled, or a scheduled one never ran"
    reruns = sum(runs.values()) - len(scheduled)

    # --- turn logs: one commit per lock token, no event committed twice --------------------------
    records = harness.read_logs([w.log for w in every])
    log_problems = harness.turn_log_problems(records, histories)
    assert not log_problems, "\n".join(log_problems[:20])

    # --- the database itself -----------------------------------------------------------------------
    depths = provider.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
    provider._check()
    provider.close()

    # The kills must have hit work in flight (not just idle processes); which ones did is timing.
    assert sum(1 for n in interrupted if n) >= 1, interrupted
    print(f"\ncrash test (seed {SEED}): {kills} SIGKILLs over {incarnations} worker incarnations, "
          f"{len(parents)} parents + {len(children)} children, {len(scheduled)} activity schedules, "
          f"{reruns} activity re-executions, {sum(1 for n in interrupted if n)} kills held locks "
          f"({sum(interrupted)} locks), {len(records)} logged acks; kill phase {kill_phase_s:.1f} s, "
          f"total {total_s:.1f} s")
