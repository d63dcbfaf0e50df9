"""A worker process: runs a production Runtime (thread driver, wall clock) on a SQLite file
until SIGTERM (graceful shutdown, exit 0) or SIGKILL (the crash tests).

    python tests/providers/procs/worker.py DB_PATH --log LOG --ready READY [options]

* ``--log``: every successful ``ack_orchestration_item`` (instance, execution, the delta's
  event ids, lock token) and ``ack_work_item`` is appended as one JSON line, written with a
  single ``os.write`` on an ``O_APPEND`` descriptor (a SIGKILL loses at most the line of a turn
  that committed just before the kill, never corrupts another);
* ``--ready``: written (atomically, by rename) once the runtime runs, holding the pid and the
  provider's open id (lock tokens of this process are ``sql-{open_id}-N``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from duroxide_sim import Runtime, RuntimeOptions  # noqa: E402
from duroxide_sim.providers.sqlite import SqliteProvider  # noqa: E402
from tests.providers.procs import workflows  # noqa: E402


class LoggingSqliteProvider(SqliteProvider):
    """SqliteProvider that records every committed turn and activity ack to a log file."""

    log_fd: int | None = None

    def _init_log(self, path: str | None) -> None:
        self._owners: dict[str, tuple] = {}
        self._owners_lock = threading.Lock()
        self.log_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644) if path else None

    def _write(self, record: dict) -> None:
        if self.log_fd is not None:
            os.write(self.log_fd, (json.dumps(record, sort_keys=True) + "\n").encode())

    def fetch_orchestration_item(self, *args, **kwargs):
        item = super().fetch_orchestration_item(*args, **kwargs)
        if item is not None:
            with self._owners_lock:
                self._owners[item.lock_token] = (item.instance,)
        return item

    def ack_orchestration_item(self, lock_token, execution_id, history_delta, *args, **kwargs):
        super().ack_orchestration_item(lock_token, execution_id, history_delta, *args, **kwargs)
        with self._owners_lock:
            owner = self._owners.pop(lock_token, (None,))
        ids = [e.event_id for e in history_delta]
        self._write({"op": "turn", "pid": os.getpid(), "instance": owner[0], "execution": execution_id,
                     "first": ids[0] if ids else None, "ids": ids, "token": lock_token})

    def abandon_orchestration_item(self, lock_token, *args, **kwargs):
        with self._owners_lock:
            self._owners.pop(lock_token, None)
        return super().abandon_orchestration_item(lock_token, *args, **kwargs)

    def fetch_work_item(self, *args, **kwargs):
        lease = super().fetch_work_item(*args, **kwargs)
        if lease is not None:
            with self._owners_lock:
                self._owners[lease.lock_token] = (lease.item.instance, lease.item.execution_id, lease.item.id)
        return lease

    def ack_work_item(self, lock_token, completion):
        super().ack_work_item(lock_token, completion)
        with self._owners_lock:
            owner = self._owners.pop(lock_token, (None, None, None))
        self._write({"op": "work", "pid": os.getpid(), "instance": owner[0], "execution": owner[1],
                     "activity_id": owner[2], "token": lock_token})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("db_path")
    parser.add_argument("--log")
    parser.add_argument("--ready")
    parser.add_argument("--orch-lock-ms", type=int, default=1_000)
    parser.add_argument("--worker-lock-ms", type=int, default=1_500)
    parser.add_argument("--poll-ms", type=int, default=20)
    parser.add_argument("--orch-threads", type=int, default=2)
    parser.add_argument("--worker-threads", type=int, default=2)
    parser.add_argument("--activity-ms", type=int, default=0)
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    provider = LoggingSqliteProvider.open(args.db_path)
    provider._init_log(args.log)
    runtime = Runtime(provider, RuntimeOptions(
        orchestration_concurrency=args.orch_threads,
        worker_concurrency=args.worker_threads,
        dispatcher_poll_interval_ms=args.poll_ms,
        orchestrator_lock_timeout_ms=args.orch_lock_ms,
        worker_lock_timeout_ms=args.worker_lock_ms,
        activity_cancellation_grace_period_ms=1_000,
    ))
    workflows.register(runtime, args.db_path, args.activity_ms)
    runtime.start()
    if args.ready:
        tmp = args.ready + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"pid": os.getpid(), "open_id": provider._open_id}, fh)
        os.replace(tmp, args.ready)
    while not stop.wait(0.05):
        pass
    runtime.shutdown(5_000)
    provider.close()
    if provider.log_fd is not None:
        os.close(provider.log_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
