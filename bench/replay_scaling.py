"""Benchmark: does a turn's cost grow faster than it should with history length, per pattern?

Each pattern is one orchestration that loops over *units* (one activity, one timer, one race,
...; most take one turn each). For every size N the history of N units is built through the
runtime (Runtime + provider + the real dispatchers on a SimClock, with the default instance
cache, so building costs each turn only its new events), then:

* **cold**: ``execute_turn(inp, registry, None)`` - a from-scratch replay of the full history
  plus the next message (the item the provider hands out next) - ``--runs`` times, median. A
  cold replay should grow linearly: N=10k vs N=k about 10x (quadratic: 100x).
* **warm**: the next ``--warm`` units are driven one at a time; each main-instance turn is timed
  as the dispatcher runs it (fetch + execute + ack, with the three parts timed separately) while
  the cached engine takes the turn. A warm turn should cost only its new events: about 1x.

GC is off while timing (``--gc`` leaves it on), like ``timeit``. Prints one JSON line per
(pattern, N) and one summary line per pattern with the ratios; ``--provider sqlite`` runs the
same patterns on ``SqliteProvider.in_memory`` (``--patterns`` picks a subset; ``--no-cold``
skips the cold replays).

    python bench/replay_scaling.py [--sizes 500 5000] [--runs 5] [--warm 15] [--patterns ...]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from duroxide_sim import Runtime, RuntimeOptions  # noqa: E402
from duroxide_sim.core.context import Backoff, RetryPolicy  # noqa: E402
from duroxide_sim.core.replay import execute_turn  # noqa: E402
from duroxide_sim.providers.memory import InMemoryProvider  # noqa: E402
from duroxide_sim.runtime import dispatchers as _dispatchers  # noqa: E402
from duroxide_sim.runtime.client import Client  # noqa: E402
from duroxide_sim.sim import SequentialIds, SimClock  # noqa: E402
from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS  # noqa: E402

MAIN = "main"
LONG_MS = 3_600_000  # a timer that never fires while the bench runs (the clock is not moved)
SHORT_MS = 1_000


# ---------------------------------------------------------------------------------------------
# Patterns: setup(rt) registers "Main" (an endless loop of units) and whatever it needs.
# ---------------------------------------------------------------------------------------------


class Pattern:
    def __init__(self, name: str, setup: Callable[[Runtime], None], turns_per_unit: int = 1,
                 scale: float = 1.0, note: str = "") -> None:
        self.name = name
        self.setup = setup
        self.turns_per_unit = turns_per_unit  # main-instance turns per unit
        self.scale = scale  # units built = size * scale (kept under the 100,000-event limit)
        self.note = note


def _echo(rt: Runtime) -> None:
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x


def p_activities(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            yield ctx.schedule_activity("Echo", i)
            i += 1


def p_timers(rt: Runtime) -> None:
    @rt.register_orchestration("Main")
    def main(ctx, _):
        while True:
            yield ctx.schedule_timer(SHORT_MS)


def p_race_activity_wins(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            r = yield ctx.race(ctx.schedule_activity("Echo", i), ctx.schedule_timer(LONG_MS))
            assert r["index"] == 0, r
            i += 1


def p_race_timer_wins_activity(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            # Tagged: the default worker filter never runs it, so the timer always wins and
            # the activity is dropped (ActivityCancelRequested breadcrumb + row cancelled).
            r = yield ctx.race(ctx.schedule_activity("Echo", i).with_tag("never"), ctx.schedule_timer(SHORT_MS))
            assert r["index"] == 1, r
            i += 1


def p_race_timer_wins_event(rt: Runtime) -> None:
    @rt.register_orchestration("Main")
    def main(ctx, _):
        while True:
            r = yield ctx.race(ctx.wait_for_event("ev"), ctx.schedule_timer(SHORT_MS))
            assert r["index"] == 1, r


def p_race_timer_wins_queue(rt: Runtime) -> None:
    @rt.register_orchestration("Main")
    def main(ctx, _):
        while True:
            r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(SHORT_MS))
            assert r["index"] == 1, r


def p_race_timer_wins_sub(rt: Runtime) -> None:
    @rt.register_orchestration("Child")
    def child(ctx, _):
        yield ctx.wait_for_event("never")  # never raised: the parent's timer always wins

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            r = yield ctx.race(ctx.schedule_sub_orchestration("Child", i), ctx.schedule_timer(SHORT_MS))
            assert r["index"] == 1, r
            i += 1


def p_kv_rolling(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            ctx.set_kv_value(f"k{i}", str(i))
            if i >= 100:
                ctx.clear_kv_value(f"k{i - 100}")  # distinct keys, at most 100 live (limit 150)
            yield ctx.schedule_activity("Echo", i)
            i += 1


def p_kv_one_key(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            ctx.set_kv_value("k", str(i))
            yield ctx.schedule_activity("Echo", i)
            i += 1


def p_custom_status(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            ctx.set_custom_status(f"unit {i}")
            yield ctx.schedule_activity("Echo", i)
            i += 1


def p_sub_orchestrations(rt: Runtime) -> None:
    @rt.register_orchestration("Child")
    def child(ctx, x):
        return x

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            yield ctx.schedule_sub_orchestration("Child", i)
            i += 1


def p_fanout(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            yield ctx.all([ctx.schedule_activity("Echo", i * 10 + j) for j in range(10)])
            i += 1


def p_retry(rt: Runtime) -> None:
    attempts: dict[int, int] = {}

    @rt.register_activity("Flaky")
    def flaky(ctx, x):
        attempts[x] = attempts.get(x, 0) + 1
        if attempts[x] == 1:
            raise RuntimeError(f"first attempt of {x} fails")
        return x

    policy = RetryPolicy(max_attempts=3, backoff=Backoff.fixed(SHORT_MS))

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            yield ctx.schedule_activity_with_retry("Flaky", i, policy)
            i += 1


def p_now_guid(rt: Runtime) -> None:
    @rt.register_orchestration("Main")
    def main(ctx, _):
        while True:
            yield ctx.utc_now()
            yield ctx.new_guid()


def p_detached(rt: Runtime) -> None:
    _echo(rt)

    @rt.register_orchestration("Noop")
    def noop(ctx, x):
        return x

    @rt.register_orchestration("Main")
    def main(ctx, _):
        i = 0
        while True:
            yield ctx.start_orchestration("Noop", f"detached-{i}", i)  # resolves at once
            yield ctx.schedule_activity("Echo", i)  # the unit's turn boundary
            i += 1


PATTERNS: dict[str, Pattern] = {p.name: p for p in (
    Pattern("activities", p_activities),
    Pattern("timers", p_timers),
    Pattern("race_activity_wins", p_race_activity_wins, note="timer (1 h) dropped, never fires during the bench"),
    Pattern("race_timer_wins_activity", p_race_timer_wins_activity, note="activity dropped: ActivityCancelRequested"),
    Pattern("race_timer_wins_event", p_race_timer_wins_event, note="wait dropped: ExternalSubscribedCancelled"),
    Pattern("race_timer_wins_queue", p_race_timer_wins_queue, note="dequeue dropped: QueueSubscriptionCancelled"),
    Pattern("race_timer_wins_sub", p_race_timer_wins_sub, turns_per_unit=2,
            note="extra: sub-orchestration dropped (2 turns: the timer, then the cancelled child's late failure)"),
    Pattern("kv_rolling", p_kv_rolling, note="distinct keys, the one 100 back cleared (at most 150 keys: the KV limit)"),
    Pattern("kv_one_key", p_kv_one_key),
    Pattern("custom_status", p_custom_status),
    Pattern("sub_orchestrations", p_sub_orchestrations),
    Pattern("fanout10", p_fanout, scale=0.5, note="ctx.all over 10 activities; half the units (event limit)"),
    Pattern("retry_fail_once", p_retry, turns_per_unit=3),
    Pattern("now_guid", p_now_guid, turns_per_unit=2),
    Pattern("detached", p_detached),
)}


# ---------------------------------------------------------------------------------------------
# Timing hooks (installed in this process only)
# ---------------------------------------------------------------------------------------------

_LAST: dict[str, float] = {}
_orig_execute_turn = _dispatchers.execute_turn


def _timed_execute_turn(inp: Any, registry: Any, cache: Any = None, inspect: Any = None) -> Any:
    t0 = time.perf_counter()
    try:
        return _orig_execute_turn(inp, registry, cache, inspect)
    finally:
        _LAST["exec"] = time.perf_counter() - t0


_dispatchers.execute_turn = _timed_execute_turn


class BuildError(RuntimeError):
    pass


class Harness:
    def __init__(self, pattern: Pattern, provider_kind: str) -> None:
        self.clock = SimClock(DEFAULT_EPOCH_MS)
        if provider_kind == "sqlite":
            from duroxide_sim.providers.sqlite import SqliteProvider

            self.provider: Any = SqliteProvider.in_memory(clock=self.clock)
        else:
            self.provider = InMemoryProvider(self.clock)
        self.rt = Runtime(self.provider, RuntimeOptions(), clock=self.clock, ids=SequentialIds(0))
        pattern.setup(self.rt)
        self.od = self.rt.orchestration_dispatcher
        self.wd = self.rt.worker_dispatcher
        ack = self.provider.ack_orchestration_item

        def timed_ack(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return ack(*a, **k)
            finally:
                _LAST["ack"] = time.perf_counter() - t0

        self.provider.ack_orchestration_item = timed_ack  # instance attribute: this provider only
        self.client = Client(self.provider, clock=self.clock)
        self.main_turns = 0

    def next_main_item(self) -> tuple[Any, float]:
        """Drive everything else (workers first, so a fan-out's completions arrive in one batch;
        other instances' turns; the clock to the next deadline when nothing is runnable) until
        the main instance's next batch is fetched; return it and the fetch's duration."""
        while True:
            while self.wd.step():
                pass
            t0 = time.perf_counter()
            item = self.od.fetch()
            dt = time.perf_counter() - t0
            if item is None:
                nxt = self.provider.next_wakeup_ms()
                if nxt is None or nxt <= self.clock.now_ms():
                    raise BuildError("stuck: nothing runnable and no future deadline")
                self.clock.advance_to(nxt)
                continue
            if item.instance != MAIN:
                self.od.process(item)
                continue
            return item, dt

    def process_main(self, item: Any) -> Any:
        _LAST.clear()
        result = self.od.process(item)
        self.main_turns += 1
        if result is None:
            raise BuildError("turn not committed (abandoned or lock lost)")
        if result.kind != "continue":
            raise BuildError(f"main turn {self.main_turns} ended the orchestration: kind={result.kind} "
                             f"output={result.output!r}")
        return result

    def build(self, units: int, turns_per_unit: int, budget_s: float) -> float:
        t0 = time.perf_counter()
        self.client.start_orchestration(MAIN, "Main", None)
        item, _ = self.next_main_item()
        self.process_main(item)  # the first turn: the code starts, schedules unit 1
        self.main_turns = 0
        for _ in range(units * turns_per_unit):
            item, _ = self.next_main_item()
            self.process_main(item)
            if time.perf_counter() - t0 > budget_s:
                raise BuildError(f"build over budget: {self.main_turns} turns in {budget_s:.0f} s "
                                 f"({self.main_turns // turns_per_unit} of {units} units)")
        return time.perf_counter() - t0


def _median_ms(xs: list[float]) -> float:
    return round(statistics.median(xs) * 1000, 4) if xs else float("nan")


def measure(pattern: Pattern, size: int, args: argparse.Namespace) -> dict[str, Any]:
    units = max(1, int(size * pattern.scale))
    h = Harness(pattern, args.provider)
    row: dict[str, Any] = {"benchmark": "replay_scaling", "pattern": pattern.name, "provider": args.provider,
                           "size": size, "units": units}
    try:
        row["build_s"] = round(h.build(units, pattern.turns_per_unit, args.build_budget_s), 2)
    except BuildError as exc:
        row["error"] = str(exc)
        row["units_built"] = h.main_turns // pattern.turns_per_unit
        return row
    except Exception as exc:  # noqa: BLE001 - reported, the other patterns go on
        row["error"] = f"{type(exc).__name__}: {exc}"
        row["units_built"] = h.main_turns // pattern.turns_per_unit
        return row
    gc.collect()
    if not args.gc:
        gc.disable()
    try:
        # --- cold: a from-scratch replay of the full history plus the next batch ---------------
        item, fetch_dt = h.next_main_item()
        row["history_events"] = len(item.history)
        row["next_messages"] = [type(m).__name__ for m in item.messages]
        if not args.no_cold:
            inp = h.od.turn_input(item)
            cold = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                res = execute_turn(inp, h.rt.registry, None)
                cold.append(time.perf_counter() - t0)
                if res.kind != "continue":
                    row["cold_error"] = f"kind={res.kind} output={res.output!r}"
            row["cold_ms"] = _median_ms(cold)
            row["cold_min_ms"] = round(min(cold) * 1000, 3)
        h.process_main(item)  # the real turn (warm: the cache still holds the engine)
        # --- warm: the next units, each turn with its cached engine ---------------------------
        cache = h.od.cache
        unit_total, unit_exec, fetches, execs, acks = [], [], [], [], []
        hits, turns = 0, 0  # main-instance turns that resumed a cached engine
        for _ in range(args.warm):
            tot = ex = 0.0
            for _ in range(pattern.turns_per_unit):
                item, fetch_dt = h.next_main_item()
                hits0 = cache.hits
                t0 = time.perf_counter()
                h.process_main(item)
                proc_dt = time.perf_counter() - t0
                hits += cache.hits - hits0
                turns += 1
                tot += fetch_dt + proc_dt
                ex += _LAST.get("exec", 0.0)
                fetches.append(fetch_dt)
                execs.append(_LAST.get("exec", 0.0))
                acks.append(_LAST.get("ack", 0.0))
            unit_total.append(tot)
            unit_exec.append(ex)
        row["warm_unit_ms"] = _median_ms(unit_total)
        row["warm_unit_exec_ms"] = _median_ms(unit_exec)
        row["warm_turn_fetch_ms"] = _median_ms(fetches)
        row["warm_turn_exec_ms"] = _median_ms(execs)
        row["warm_turn_ack_ms"] = _median_ms(acks)
        row["warm_cache_hits"] = f"{hits}/{turns}"
    except Exception as exc:  # noqa: BLE001
        row["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        gc.enable()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5_000])
    ap.add_argument("--runs", type=int, default=5, help="cold replays per size (median)")
    ap.add_argument("--warm", type=int, default=15, help="warm units timed per size (median)")
    ap.add_argument("--patterns", nargs="+", default=list(PATTERNS), choices=list(PATTERNS))
    ap.add_argument("--provider", choices=("memory", "sqlite"), default="memory")
    ap.add_argument("--no-cold", action="store_true", help="warm turns only")
    ap.add_argument("--gc", action="store_true", help="leave the garbage collector on while timing")
    ap.add_argument("--build-budget-s", type=float, default=120.0, help="give up building a history after this long")
    args = ap.parse_args(argv)
    # The retry pattern's warnings would go to stderr through logging's last resort; a handler
    # on the package logger keeps them (and their cost) without the noise.
    logging.getLogger("duroxide_sim").addHandler(logging.NullHandler())
    sizes = sorted(args.sizes)
    summary = []
    for name in args.patterns:
        pattern = PATTERNS[name]
        rows = {}
        for n in sizes:
            row = measure(pattern, n, args)
            row["python"] = platform.python_version()
            rows[n] = row
            print(json.dumps(row), flush=True)
        lo, hi = sizes[0], sizes[-1]
        if lo == hi:
            continue
        a, b = rows[lo], rows[hi]
        out: dict[str, Any] = {"pattern": name, "provider": args.provider, "sizes": [lo, hi]}
        for key, label in (("cold_ms", "cold"), ("warm_unit_ms", "warm"), ("warm_unit_exec_ms", "warm_exec"),
                           ("warm_turn_fetch_ms", "warm_fetch"), ("warm_turn_ack_ms", "warm_ack")):
            if key in a and key in b and a[key] and a[key] == a[key]:
                out[label] = round(b[key] / a[key], 2)
        errors = {n: r["error"] for n, r in rows.items() if "error" in r}
        if errors:
            out["errors"] = errors
        if pattern.note:
            out["note"] = pattern.note
        summary.append(out)
        print(json.dumps({"summary": out}), flush=True)
    print(f"\nratios N={sizes[-1]:,} / N={sizes[0]:,} (linear cold ~{sizes[-1] / sizes[0]:.0f}x, warm ~1x)")
    print(f"{'pattern':28} {'cold':>7} {'warm':>7} {'w.exec':>7} {'w.fetch':>7} {'w.ack':>7}  errors")
    for s in summary:
        def f(k: str, s: dict = s) -> str:
            return f"{s[k]:.1f}x" if k in s else "-"
        print(f"{s['pattern']:28} {f('cold'):>7} {f('warm'):>7} {f('warm_exec'):>7} {f('warm_fetch'):>7} "
              f"{f('warm_ack'):>7}  {'; '.join(f'N={n}: {e}' for n, e in s.get('errors', {}).items())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
