"""Subprocess runtime of ``test_generated_sqlite_production.py``: a production ``Runtime``
(thread driver, wall clock) on the SQLite file DB with the vocabulary of ``workflows``, until
SIGTERM (graceful shutdown, exit 0) or SIGKILL.

    python tests/providers/gen_sqlite_prod/worker.py DB EFFECTS READY ACT_MS

ACT_MS: how long each ``Add`` activity sleeps.

READY is written (atomically, by rename) once the runtime runs: ``{"pid": ...}``.
"""

from __future__ import annotations

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
from tests.providers.gen_sqlite_prod import workflows  # noqa: E402

#: The options of every runtime of the test (the in-process ones too): short locks so that a
#: SIGKILLed process's work is taken over within about a second.
OPTIONS = dict(dispatcher_poll_interval_ms=10, orchestration_concurrency=2, worker_concurrency=2,
               orchestrator_lock_timeout_ms=1_000, worker_lock_timeout_ms=1_500,
               activity_cancellation_grace_period_ms=500)


def main(argv: list[str]) -> int:
    db, effects, ready, act_ms = argv
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(process)d %(threadName)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    provider = SqliteProvider.open(db)
    runtime = Runtime(provider, RuntimeOptions(**OPTIONS))
    workflows.register(runtime, effects, int(act_ms))
    runtime.start()
    tmp = ready + ".tmp"
    with open(tmp, "w") as fh:
        json.dump({"pid": os.getpid()}, fh)
    os.replace(tmp, ready)
    while not stop.wait(0.05):
        pass
    runtime.shutdown(3_000)
    provider.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
