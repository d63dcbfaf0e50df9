"""The floor of a durable loop in CPython: W4's shape (500 instances x 5 sequential activities)
through a minimal in-process loop that does only what any durable runtime must per activity -
append history events (small slotted objects), queue a work item, take it, run the activity,
JSON-encode its result, queue the completion, take the instance, resume its live generator,
JSON-decode the result. No locks, tokens, validation, replay matching, limits, metrics,
simulator or checks.

    python bench/skeleton_floor.py [--runs 5]

Prints activities/s (median of fresh in-process runs) beside the real runtime alone on the same
work (bench/sim_throughput.py's ceiling), so RESULTS.md can say how far the runtime's per-activity
machinery is from the language's floor. Not a target: a measure of where the time goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


class _Event:
    __slots__ = ("event_id", "kind", "a", "b")

    def __init__(self, event_id: int, kind: str, a: object = None, b: object = None) -> None:
        self.event_id, self.kind, self.a, self.b = event_id, kind, a, b


def _many(k: int):
    x = 0
    for _ in range(k):
        x = yield ("inc", x)
    return x


def skeleton(instances: int = 500, k: int = 5) -> float:
    histories: dict[str, list[_Event]] = {}
    live: dict[str, object] = {}
    orch: collections.deque = collections.deque((f"w4-{i:05d}", None) for i in range(instances))
    work: collections.deque = collections.deque()
    done = activities = 0
    t0 = time.perf_counter()
    while orch or work:
        if orch:
            inst, msg = orch.popleft()
            h = histories.setdefault(inst, [])
            if msg is None:
                h.append(_Event(1, "started", "null"))
                gen = live[inst] = _many(k)
                asked = gen.send(None)
            else:
                sid, text = msg
                h.append(_Event(len(h) + 1, "completed", sid, text))
                gen = live[inst]
                try:
                    asked = gen.send(json.loads(text))
                except StopIteration as stop:
                    h.append(_Event(len(h) + 1, "done", json.dumps(stop.value)))
                    done += 1
                    continue
            eid, inp = len(h) + 1, json.dumps(asked[1])
            h.append(_Event(eid, "scheduled", asked[0], inp))
            work.append((inst, eid, inp))
        if work:
            inst, eid, inp = work.popleft()
            activities += 1
            orch.append((inst, (eid, json.dumps(json.loads(inp) + 1))))
    elapsed = time.perf_counter() - t0
    assert done == instances
    return activities / elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from sim_throughput import bench_w4_runtime_alone

    floor = statistics.median(skeleton() for _ in range(args.runs))
    runtime = bench_w4_runtime_alone(500, args.runs)["execs_per_s_median"]
    print(json.dumps({"skeleton_activities_per_s": round(floor), "runtime_alone_activities_per_s": runtime,
                      "ratio": round(floor / runtime, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
