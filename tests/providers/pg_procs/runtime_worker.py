"""One runtime process of the multi-runtime PostgreSQL test.

    python -m tests.providers.pg_procs.runtime_worker URL SCHEMA RECORD_FILE

Runs a Runtime over ``PostgresProvider.connect_with_schema(URL, SCHEMA)`` until SIGTERM (clean
shutdown) or SIGKILL. Every *committed* orchestrator ack is appended to RECORD_FILE as one JSON
line ``{"token", "instance", "execution", "events"}`` by a provider subclass (written after the
commit returns, so a kill can only lose a record, never invent one). Prints ``READY`` once the
dispatchers run.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from duroxide_sim import Runtime, RuntimeOptions
from duroxide_sim.providers.postgres import PostgresProvider
from tests.providers.pg_procs.workflows import register


class RecordingProvider(PostgresProvider):
    """Records lock token + delta event ids of every orchestrator ack that committed."""

    def __init__(self, *args, record_path: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._record = open(record_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
        self._record_lock = threading.Lock()

    def ack_orchestration_item(self, lock_token, execution_id, history_delta, *args, **kwargs):
        super().ack_orchestration_item(lock_token, execution_id, history_delta, *args, **kwargs)
        delta = list(history_delta)
        line = json.dumps({"token": lock_token, "pid": os.getpid(),
                           "instance": delta[0].instance_id if delta else None, "execution": execution_id,
                           "events": [e.event_id for e in delta]})
        with self._record_lock:
            self._record.write(line + "\n")  # line-buffered: in the kernel before the next ack


def main() -> None:
    url, schema, record_path = sys.argv[1:4]
    provider = RecordingProvider(url, schema, record_path=record_path, max_connections=12)
    options = RuntimeOptions(orchestration_concurrency=4, worker_concurrency=4, dispatcher_poll_interval_ms=50,
                             orchestrator_lock_timeout_ms=3_000, worker_lock_timeout_ms=4_000)
    rt = Runtime(provider, options)
    register(rt)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rt.start()
    print("READY", flush=True)
    stop.wait()
    rt.shutdown(5_000)
    provider.close()


if __name__ == "__main__":
    main()
