"""Helper processes for ``tests/providers/test_postgres_production_probe.py`` (run as
``python -m tests.providers.pg_procs.probe_pg_worker MODE ...``; not collected).

The workload (orchestrations, activities with an idempotency-checked side effect in a separate
SQLite file, expected outputs) is the SQLite probe's: ``tests/providers/procs/probe_worker.py``.

Modes:

* ``worker URL SCHEMA --effects EFFECTS --ready READY --record RECORD [--orch-lock-ms]
  [--worker-lock-ms] [--poll-ms] [--max-attempts]``: a production ``Runtime`` (thread driver, wall clock) on
  ``PostgresProvider.connect_with_schema(URL, SCHEMA)`` until SIGTERM (graceful, exit 0) or
  SIGKILL. Every *committed* orchestrator ack is appended to RECORD as one JSON line (lock
  token, instance, execution, delta event ids). Every connection of the process (pool and
  LISTEN) runs with ``application_name = 'dx_probe_worker'`` so the test can terminate exactly
  these backends.
* ``client URL SCHEMA --plan PLAN --out OUT``: a ``Client`` only (no runtime) in its own
  process (``application_name = 'dx_probe_client'``): starts the instances of PLAN in waves,
  enqueues queue messages and raises events once the instances are ready for them, cancels the
  ``Victim`` instances, writes OUT.signalled, then ``wait_for_orchestration`` on every instance
  and writes ``{instance: [status, output, error]}`` to OUT. With ``"pace": {"file": F,
  "faults": K}`` in PLAN, wave ``w`` also waits until the number in F (the faults the test has
  injected so far, or -1 once it injects no more) reaches ``w * K / waves``: the work then
  outlasts the faults however slowly the test's kill-and-restart loop runs on a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from duroxide_sim.providers.postgres import PostgresProvider  # noqa: E402

WORKER_APP = "dx_probe_worker"
CLIENT_APP = "dx_probe_client"


class _NamedProvider(PostgresProvider):
    """Every connection (pool: configure hook; LISTEN: the connect kwargs read when the listen
    thread starts) carries ``APP`` as its application_name."""

    APP = "dx_probe"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._conn_kwargs["application_name"] = self.APP  # the LISTEN thread starts later

    def _configure_connection(self, conn: Any) -> None:
        super()._configure_connection(conn)
        conn.execute("SELECT set_config('application_name', %s, false)", (self.APP,))


class WorkerProvider(_NamedProvider):
    APP = WORKER_APP

    def __init__(self, *args: Any, record_path: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._record = open(record_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._record_lock = threading.Lock()

    def ack_orchestration_item(self, lock_token, execution_id, history_delta, *args, **kwargs):  # noqa: ANN001
        super().ack_orchestration_item(lock_token, execution_id, history_delta, *args, **kwargs)
        delta = list(history_delta)
        line = json.dumps({"token": lock_token, "pid": os.getpid(),
                           "instance": delta[0].instance_id if delta else None, "execution": execution_id,
                           "events": [e.event_id for e in delta]})
        with self._record_lock:
            self._record.write(line + "\n")


class ClientProvider(_NamedProvider):
    APP = CLIENT_APP


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh)
    os.replace(tmp, path)


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("schema")
    parser.add_argument("--effects", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--record", required=True)
    parser.add_argument("--orch-lock-ms", type=int, default=1_000)
    parser.add_argument("--worker-lock-ms", type=int, default=1_500)
    parser.add_argument("--poll-ms", type=int, default=20)
    parser.add_argument("--max-attempts", type=int, default=10)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    from duroxide_sim import Runtime, RuntimeOptions
    from tests.providers.procs.probe_worker import register

    provider = WorkerProvider(args.url, args.schema, record_path=args.record, pool_timeout_s=3)
    runtime = Runtime(provider, RuntimeOptions(
        dispatcher_poll_interval_ms=args.poll_ms,
        orchestration_concurrency=2,
        worker_concurrency=2,
        orchestrator_lock_timeout_ms=args.orch_lock_ms,
        worker_lock_timeout_ms=args.worker_lock_ms,
        max_attempts=args.max_attempts,
        activity_cancellation_grace_period_ms=1_000,
    ))
    register(runtime, args.effects)
    runtime.start()
    _write_json(args.ready, {"pid": os.getpid(), "open_id": provider._open_id})
    while not stop.wait(0.05):
        pass
    runtime.shutdown(5_000)
    provider.close()
    return 0


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("schema")
    parser.add_argument("--plan", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    with open(args.plan) as fh:
        plan = json.load(fh)

    from duroxide_sim import Client

    provider = ClientProvider(args.url, args.schema)
    client = Client(provider)
    pending = list(plan["starts"])
    per_wave = -(-len(pending) // plan["waves"])
    next_wave = time.monotonic()
    started: list[str] = []
    waiters = {inst: inp for inst, name, inp in plan["starts"] if name == "Waiter"}
    victims = [inst for inst, name, _ in plan["starts"] if name == "Victim"]
    queued: set[str] = set()
    raised: set[str] = set()
    cancelled: set[str] = set()
    deadline = time.monotonic() + plan["signal_timeout_s"]
    pace = plan.get("pace")
    wave = 0

    def paced() -> bool:  # may wave ``wave`` start, as far as the test's faults go?
        if pace is None or wave == 0:
            return True
        try:
            with open(pace["file"]) as fh:
                landed = int(fh.read() or 0)
        except (OSError, ValueError):
            landed = 0
        return landed < 0 or landed * plan["waves"] >= wave * pace["faults"]

    while (pending or len(raised) < len(waiters) or len(cancelled) < len(victims)) and time.monotonic() < deadline:
        if pending and time.monotonic() >= next_wave and paced():
            wave += 1
            for inst, name, inp in pending[:per_wave]:
                client.start_orchestration(inst, name, inp)
                started.append(inst)
            del pending[:per_wave]
            next_wave += plan["wave_gap_s"]
        for inst, n in waiters.items():
            if inst not in started:
                continue
            if inst not in queued and client.get_status(inst).status == "Running":
                client.enqueue_event(inst, "q", f"q{n}")
                queued.add(inst)
            if inst in queued and inst not in raised:
                kinds = [e["kind"] for e in client.read_execution_history(inst, 1)]
                if "ExternalSubscribed" in kinds:
                    client.raise_event(inst, "go", {"go": n})
                    raised.add(inst)
        for inst in victims:
            if inst in started and inst not in cancelled and client.get_status(inst).status == "Running":
                client.cancel_instance(inst, "probe says stop")
                cancelled.add(inst)
        time.sleep(0.02)
    out: dict[str, Any] = {"_raised": sorted(raised), "_cancelled": sorted(cancelled)}
    _write_json(args.out + ".signalled", {})  # from here on only waits (which ride over outages)
    for inst, _name, _inp in plan["starts"]:
        try:
            st = client.wait_for_orchestration(inst, plan["wait_timeout_ms"])
            out[inst] = [st.status, st.output, st.error]
        except Exception as exc:  # noqa: BLE001 - reported to the test
            out[inst] = ["ERROR", None, f"{type(exc).__name__}: {exc}"]
    provider.close()
    _write_json(args.out, out)
    return 0


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    sys.exit({"worker": worker_main, "client": client_main}[mode](rest))
