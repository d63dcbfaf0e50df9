"""Four runtime processes on one PostgreSQL schema, two of them SIGKILLed and restarted mid-run.

1,000 ``Root`` orchestrations (activities, a durable timer, every 10th a sub-orchestration; see
``pg_procs/workflows.py``) are started from this process and processed by four worker processes
(``pg_procs/runtime_worker.py``). While they run, two workers are killed with SIGKILL and
started again. Afterwards:

* every instance completed with the output computed directly from its input (fault-free);
* no turn was processed twice: the workers record each committed orchestrator ack (lock token +
  delta event ids); no token and no (instance, execution, event id) appears twice across all
  processes, and every recorded event is in the stored history;
* ``check_well_formed`` finds nothing in any history (ids increase, each completion matches one
  schedule of the right kind and is applied once, one terminal event).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from duroxide_sim import Client
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.sim.checkers import check_well_formed
from tests.providers.pg_procs import workflows

pytestmark = pytest.mark.realtime

ROOT = pathlib.Path(__file__).resolve().parents[2]
N = 1_000
WORKERS = 4
DEADLINE_S = 150
TURNS = 4_300  # committed orchestration turns of the whole run (roughly)


class Worker:
    def __init__(self, url: str, schema: str, record: pathlib.Path, log: pathlib.Path) -> None:
        self.args = [sys.executable, "-m", "tests.providers.pg_procs.runtime_worker", url, schema, str(record)]
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == b"READY", f"worker did not start: {line!r}\n{self.log.read_text()[-3000:]}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _turns_committed(tmp_path: pathlib.Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in tmp_path.glob("acks-*.jsonl"))


def _completed(provider: PostgresProvider) -> int:
    return provider.get_system_metrics().completed_instances


def test_four_runtimes_two_killed_no_turn_twice(pg_url, pg_schema, tmp_path):
    schema = pg_schema("multi")
    provider = PostgresProvider.connect_with_schema(pg_url, schema)
    client = Client(provider)
    total = N + N // workflows.CHILD_EVERY  # roots + children
    workers = [Worker(pg_url, schema, tmp_path / f"acks-{w}.jsonl", tmp_path / f"worker-{w}.log")
               for w in range(WORKERS)]
    try:
        for w in workers:
            w.start()
        t0 = time.monotonic()
        starter = threading.Thread(target=lambda: [client.start_orchestration(f"root-{i:04}", "Root", i)
                                                   for i in range(N)], daemon=True)
        starter.start()  # the kills below may already happen while instances are being started
        # Kill by committed turns (about 4,300 in all): completions come late and together,
        # since every instance is started at once and moves in step.
        kills = [(TURNS // 4, workers[1]), (TURNS // 2, workers[3])]
        while _completed(provider) < total:
            assert time.monotonic() - t0 < DEADLINE_S, (
                f"only {_completed(provider)}/{total} completed after {DEADLINE_S} s; queues "
                f"{provider.get_queue_depths()}\n" + "\n".join(w.log.read_text()[-2000:] for w in workers))
            turns = _turns_committed(tmp_path)
            while kills and turns >= kills[0][0]:
                _, victim = kills.pop(0)
                victim.kill()  # mid-turn: locks held, activities in flight
                victim.start()
            time.sleep(0.1)
        assert not kills, "the run finished before both kills happened"
        starter.join(30)
        elapsed = time.monotonic() - t0

        # every instance completed with its fault-free output
        for i in range(N):
            st = client.get_status(f"root-{i:04}")
            assert (st.status, st.output) == ("Completed", workflows.expected(i)), (i, st)
        assert provider.get_system_metrics().failed_instances == 0
        depths = provider.get_queue_depths()
        assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)

        # no turn committed twice, across all processes (killed ones included)
        records = [json.loads(line) for w in range(WORKERS)
                   for line in (tmp_path / f"acks-{w}.jsonl").read_text().splitlines() if line.strip()]
        tokens = Counter(r["token"] for r in records)
        assert [t for t, n in tokens.items() if n > 1] == []
        events = Counter((r["instance"], r["execution"], e) for r in records for e in r["events"])
        assert [k for k, n in events.items() if n > 1] == []
        assert len({r["pid"] for r in records}) >= WORKERS + 2  # the restarted processes committed too

        # well-formed histories; every recorded event is stored
        stored: set[tuple[str, int, int]] = set()
        problems = []
        for instance in provider.list_instances():
            for execution in provider.list_executions(instance):
                history = provider.read_with_execution(instance, execution)
                problems += [(instance, execution, p) for p in check_well_formed(instance, execution, history)]
                stored.update((instance, execution, e.event_id) for e in history)
        assert problems == []
        assert set(events) <= stored
        assert len(provider.list_instances()) == total
        print(f"\n{N} roots + {N // workflows.CHILD_EVERY} children on {WORKERS} processes (2 killed): "
              f"{elapsed:.1f} s, {len(records)} committed turns")
    finally:
        for w in workers:
            w.stop()
        provider.close()

