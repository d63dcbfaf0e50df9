"""Benchmark: a cold replay of an actor that waited on one name N times (queue or external event).

An actor loops ``msg = yield ctx.dequeue_event("inbox")`` (or ``wait_for_event``) and receives
one message per turn. After N messages its history holds ~2N events. A *cold* turn (no cached
engine: another runtime took the previous turn, a restart, an evicted cache) replays the whole
history; its cost must grow linearly with N, like W2's (issue 7, target 2). Before the engine
kept a per-name watermark of settled subscriptions, every arrival re-walked all earlier
subscriptions of its name, and the replay grew quadratically (measured at c286086: N=10,000 took
4.7 s, 96x N=1,000's 49 ms; see bench/RESULTS.md).

For each N the history is built once through the runtime (cached engines, so building is
linear), then ``execute_turn`` replays it from scratch with one more message, ``--runs`` times;
the figure is the median. Prints one JSON line per (kind, N) and the ratio of the largest N to
the smallest (linear: about largest/smallest).

    python bench/actor_replay.py [--sizes 1000 10000] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from duroxide_sim import Client, Runtime, RuntimeOptions  # noqa: E402
from duroxide_sim.core.events import ExternalRaised, QueueMessage  # noqa: E402
from duroxide_sim.core.replay import TurnInput, execute_turn  # noqa: E402
from duroxide_sim.providers.memory import InMemoryProvider  # noqa: E402
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock  # noqa: E402
from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS  # noqa: E402


def build(kind: str, n: int) -> tuple[Runtime, list]:
    clock = SimClock(DEFAULT_EPOCH_MS)
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))

    @rt.register_orchestration("Actor")
    def actor(ctx, limit):
        total = 0
        for _ in range(limit):
            msg = yield (ctx.dequeue_event("inbox") if kind == "queue" else ctx.wait_for_event("inbox"))
            total += len(msg)
        return total

    driver = SequentialDriver(rt, clock, max_steps=10 * n + 100)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("actor", "Actor", n + 1)
    driver.run_until_idle()
    send = client.enqueue_event if kind == "queue" else client.raise_event
    for i in range(n):
        send("actor", "inbox", f"m{i}")
        driver.run_until_idle()
    status = client.get_orchestration_status("actor")
    assert status.status == "Running", status
    return rt, provider.read("actor")


def replay_once(rt: Runtime, kind: str, history: list) -> float:
    msg = (QueueMessage(instance="actor", name="inbox", data='"last"') if kind == "queue"
           else ExternalRaised(instance="actor", name="inbox", data='"last"'))
    inp = TurnInput(instance="actor", execution_id=1, orchestration_name="Actor", version=None,
                    history=history, messages=[msg], now_ms=DEFAULT_EPOCH_MS + 1)
    t0 = time.perf_counter()
    result = execute_turn(inp, rt.registry, None)  # no cache: a from-scratch replay
    dt = time.perf_counter() - t0
    assert result.kind == "completed", (result.kind, result.error)
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    sizes = sorted(args.sizes)
    for kind in ("queue", "event"):
        medians = {}
        for n in sizes:
            rt, history = build(kind, n)
            times = [replay_once(rt, kind, history) for _ in range(args.runs)]
            medians[n] = statistics.median(times)
            print(json.dumps({"benchmark": "actor_cold_replay", "kind": kind, "messages": n, "history_events": len(history),
                              "runs": args.runs, "median_ms": round(medians[n] * 1000, 2),
                              "min_ms": round(min(times) * 1000, 2), "max_ms": round(max(times) * 1000, 2),
                              "python": platform.python_version()}))
        lo, hi = sizes[0], sizes[-1]
        if lo != hi:
            ratio = medians[hi] / medians[lo]
            print(f"{kind}: N={hi:,} / N={lo:,} cold replay = {ratio:.1f}x (linear: {hi / lo:.0f}x, quadratic: {(hi / lo) ** 2:.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
