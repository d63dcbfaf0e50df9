"""Simulation speed: seeds per second per scenario, and simulated activity executions per second.

    python bench/sim_throughput.py [--seeds 20] [--budget-s 20] [--scenarios PATH] [--jobs N]
                                   [--instances 500] [--repeats 3] [--write-results]

(a) For each scenario module in ``scenarios/`` (each defines ``SPEC``), ``run_and_check`` of
    ``Simulation(spec, seed, FaultPlan.all(0.05))`` for seeds 0, 1, ... until ``--seeds`` seeds
    or ``--budget-s`` seconds (at least 3 seeds); figure: seeds/s (the whole check, i.e. the
    faulty run, its fault-free twin when the spec is fault-transparent, and every checker).
    With ``--jobs N`` (N > 1) each scenario also runs ``--seeds`` x N seeds (0, 1, ...) through
    the multi-process path of ``duroxide-sim run --jobs N`` (``duroxide_sim.cli.run_seeds``);
    figure: ``seeds_per_s_jobs`` = seeds / the workers' span (first chunk start to last chunk
    end: the pool's start-up, paid once per command by the CLI, is left out; the whole call
    including it is ``jobs_wall_s``).
(b) A W4-shaped SimSpec (``--instances`` x 5 sequential ``inc``) simulated with faults off and
    with every fault kind on at 5 %; activity executions are counted from the trace
    (``op == "work_exec"``). Figures: executions/s of the simulation alone
    (``Simulation(...).run()``) and of ``run_and_check`` (executions of the checked run over the
    total time including the twin and the checkers). Median of ``--repeats`` seeds. With faults,
    an instance the faults poisoned (its activity delivered ``max_attempts`` times: the
    runtime's documented answer, which the checkers count as budget exhausted) counts as done.

(c) Ceilings: the W4-shaped work run by the production runtime alone (one Runtime, in-memory
    provider, SequentialDriver; no scheduler, trace, faults or checks), and per scenario the
    median ms of its fault-free run on one simulated process without checks (``floor_ms``).
    Every simulated step executes the same runtime code, so the simulator cannot beat these.

Prints one JSON line per measurement, then a small table. Issue targets (measured, not tuned
here): >= 20,000 simulated activity executions/s with faults off, >= 5,000 with all faults on,
>= 50 seeds/s per scenario.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import pathlib
import platform
import re
import statistics
import sys
import time
import traceback

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "RESULTS.md"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from duroxide_sim.cli import SimWorkerError, _jobs, run_seeds  # noqa: E402
from duroxide_sim.sim.checkers import run_and_check  # noqa: E402
from duroxide_sim.sim.faults import FaultPlan  # noqa: E402
from duroxide_sim.sim.harness import Simulation, SimSpec, Start  # noqa: E402

FAULT_RATE = 0.05
K = 5


def load_scenarios(path: pathlib.Path) -> list[tuple[str, object]]:
    """(module name, module) of every ``*.py`` not starting with ``_`` that defines SPEC."""
    root = str(path.resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    out = []
    for file in sorted(path.glob("*.py")):
        if file.name.startswith("_"):
            continue
        name = f"{path.name}.{file.stem}"
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - report, keep measuring the others
            out.append((file.stem, traceback.format_exc(limit=1)))
            continue
        if hasattr(module, "SPEC"):
            out.append((file.stem, module))
    return out


def bench_scenario(name: str, spec: object, seeds: int, budget_s: float) -> dict:
    times: list[float] = []
    failures = 0
    first_failure = None
    errors = 0
    began = time.perf_counter()
    seed = 0
    while seed < seeds and (seed < 3 or time.perf_counter() - began < budget_s):
        t0 = time.perf_counter()
        try:
            result = run_and_check(Simulation(spec, seed, FaultPlan.all(FAULT_RATE)))
            if not result.ok:
                failures += 1
                first_failure = first_failure or result.failures[0].render().splitlines()[0][:200]
        except Exception as exc:  # noqa: BLE001
            errors += 1
            first_failure = first_failure or f"{type(exc).__name__}: {exc}"[:200]
        times.append(time.perf_counter() - t0)
        seed += 1
    total = sum(times)
    floor_ms = scenario_runtime_alone_ms(spec, min(len(times), 10))
    return {
        "benchmark": "sim_seeds_per_s", "scenario": name, "faults": f"all@{FAULT_RATE}", "seeds": len(times),
        "floor_ms": round(floor_ms, 2),
        "seconds": round(total, 4), "seeds_per_s": round(len(times) / total, 2) if total else None,
        "seed_median_ms": round(statistics.median(times) * 1000, 2), "seed_max_ms": round(max(times) * 1000, 2),
        "failed_seeds": failures, "errors": errors, "first_failure": first_failure,
        "ok": failures == 0 and errors == 0,
    }


def bench_scenario_jobs(path: pathlib.Path, seeds: int, jobs: int) -> dict:
    """The same measurement through ``run_seeds(..., jobs=N)``: fields to merge into the row."""
    t0 = time.perf_counter()
    try:
        rows = run_seeds(path, range(seeds), jobs=jobs, faults="all", rate=FAULT_RATE, progress="none")
    except SimWorkerError as exc:
        return {"jobs": jobs, "seeds_jobs": 0, "seeds_per_s_jobs": None, "jobs_error": str(exc)[:200]}
    wall = time.perf_counter() - t0
    row = rows[0]
    span = row["seconds"] or wall
    return {
        "jobs": jobs, "seeds_jobs": row["seeds"], "seconds_jobs": span, "jobs_wall_s": round(wall, 4),
        "seeds_per_s_jobs": round(row["seeds"] / span, 2) if span else None, "failed_seeds_jobs": row["failures"],
        **({"first_failure_jobs": row["first_failure"].splitlines()[0][:200]} if row["first_failure"] else {}),
    }


def w4_spec(instances: int) -> SimSpec:
    def setup(rt, world):
        @rt.register_activity("inc")
        def inc(ctx, x):
            return x + 1

        @rt.register_orchestration("Many")
        def many(ctx, k):
            x = 0
            for _ in range(k):
                x = yield ctx.schedule_activity("inc", x)
            return x

    def all_return_k(result):
        for inst, st in result.statuses.items():
            if st.status == "Failed" and str(st.error).startswith("poison:") and result.faults_injected:
                continue  # faults used up its delivery budget (max_attempts): the runtime's documented answer
            if st.status != "Completed" or st.output != K:
                return f"{inst}: {st.status} {st.output if st.status == 'Completed' else st.error!r}"
        return None

    return SimSpec(
        name=f"w4-shaped-{instances}x{K}",
        setup=setup,
        starts=[Start(instance=f"w4-{i:05d}", orchestration="Many", input=K) for i in range(instances)],
        invariants=[all_return_k],
        ref=None,
    )


#: Providers :func:`bench_w4_runtime_alone` can run on (``bench/instructions.py`` counts each).
ALONE_PROVIDERS = ("memory", "sqlite-memory", "sqlite-file")


def bench_w4_runtime_alone(instances: int, repeats: int, provider_kind: str = "memory") -> dict:
    """The same W4-shaped work run by the production runtime alone: one Runtime on the in-memory
    provider stepped by :class:`~duroxide_sim.sim.SequentialDriver` (orchestration step, worker
    step, in turn), no scheduler, trace, faults, cache verification or provider self-checks.
    Every simulated activity executes this same runtime code, so this is the ceiling for the
    simulator's activity executions/s on this machine.

    ``provider_kind`` ``"sqlite-memory"`` / ``"sqlite-file"`` runs it on the SQLite provider
    instead (a fresh in-memory database, or a file in a temporary directory): the production
    path's Python and SQLite's C on one thread (each fetch and ack its own transaction: the
    driver does not chain a fetch to an ack or group commits, as the threaded driver does)."""
    import tempfile

    from duroxide_sim import Client, Runtime, RuntimeOptions
    from duroxide_sim.providers.memory import InMemoryProvider
    from duroxide_sim.providers.sqlite import SqliteProvider
    from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
    from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS

    if provider_kind not in ALONE_PROVIDERS:
        raise ValueError(f"unknown provider kind {provider_kind!r}; choose from {', '.join(ALONE_PROVIDERS)}")
    rates = []
    for _ in range(repeats):
        clock = SimClock(DEFAULT_EPOCH_MS)
        tmp = tempfile.TemporaryDirectory(prefix="dx-alone-") if provider_kind == "sqlite-file" else None
        if tmp is not None:
            provider = SqliteProvider.open(os.path.join(tmp.name, "alone.db"), clock=clock)
        elif provider_kind == "sqlite-memory":
            provider = SqliteProvider.in_memory(clock=clock)
        else:
            provider = InMemoryProvider(clock)
        rt = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds(0))
        w4_spec(instances).setup(rt, None)
        driver = SequentialDriver(rt, clock, max_steps=2_000_000)
        client = Client(provider, clock=clock, sleep=driver.sleep)
        for i in range(instances):
            client.start_orchestration(f"w4-{i:05d}", "Many", K)
        t0 = time.perf_counter()
        driver.run_until_quiet()
        dt = time.perf_counter() - t0
        done = sum(1 for i in range(instances) if client.get_orchestration_status(f"w4-{i:05d}").output == K)
        if provider_kind != "memory":
            provider.close()
        if tmp is not None:
            tmp.cleanup()
        assert done == instances, f"{done}/{instances} completed"
        rates.append(instances * K / dt)
    return {
        "benchmark": "runtime_alone_activity_execs_per_s", "workload": f"W4-shaped {instances}x{K}", "faults": "-",
        "mode": "runtime alone" + ("" if provider_kind == "memory" else f" ({provider_kind})"), "repeats": repeats,
        "execs_per_s_median": round(statistics.median(rates)),
        "execs_per_s_min": round(min(rates)), "execs_per_s_max": round(max(rates)), "ok": True,
    }


def scenario_runtime_alone_ms(spec: object, seeds: int) -> float:
    """Median ms per seed of the scenario's fault-free run on one simulated process with the
    cache verification and provider self-checks off and no checkers: the least a seed costs."""
    times = []
    for seed in range(seeds):
        t0 = time.perf_counter()
        Simulation(spec, seed, FaultPlan.none(), nodes=1, check_invariants=False, verify_cache=False).run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def count_execs(trace: list[str]) -> int:
    n = 0
    for line in trace:
        if '"work_exec"' in line and json.loads(line).get("op") == "work_exec":
            n += 1
    return n


def bench_w4(instances: int, faults: str, repeats: int) -> list[dict]:
    spec = w4_spec(instances)
    plan = FaultPlan.all(FAULT_RATE) if faults == "all" else FaultPlan.none()
    out = []
    for mode in ("run", "run_and_check"):
        rates, secs, execs_all, steps, ok = [], [], [], [], True
        detail = None
        for seed in range(repeats):
            sim = Simulation(spec, seed, plan, max_steps=2_000_000)
            t0 = time.perf_counter()
            result = sim.run() if mode == "run" else run_and_check(sim)
            dt = time.perf_counter() - t0
            execs = count_execs(result.trace)
            done = sum(1 for st in result.statuses.values() if st.status == "Completed" and st.output == K
                       or faults != "none" and st.status == "Failed" and str(st.error).startswith("poison:"))
            if done != instances or (mode == "run_and_check" and not result.ok):
                ok = False
                detail = detail or (result.failures[0].render().splitlines()[0][:200] if result.failures
                                    else f"{done}/{instances} completed with output {K}")
            rates.append(execs / dt)
            secs.append(dt)
            execs_all.append(execs)
            steps.append(result.steps)
        out.append({
            "benchmark": "sim_activity_execs_per_s", "workload": f"W4-shaped {instances}x{K}",
            "faults": "none" if faults == "none" else f"all@{FAULT_RATE}", "mode": mode, "repeats": repeats,
            "execs_per_s_median": round(statistics.median(rates)), "execs_per_s_min": round(min(rates)),
            "execs_per_s_max": round(max(rates)), "seconds_median": round(statistics.median(secs), 4),
            "activity_execs_median": statistics.median(execs_all), "steps_median": statistics.median(steps),
            "ok": ok, **({"problem": detail} if detail else {}),
        })
    return out


def _floor(r: dict) -> str:
    """The scenario's least cost per seed (fault-free, one process, no checks) as ms and seeds/s."""
    ms = r.get("floor_ms")
    return f"{ms:.0f} ms ({1000 / ms:.0f}/s)" if ms else "-"


def render(seed_rows: list[dict], exec_rows: list[dict], jobs: int = 1) -> str:
    floor_head = "runtime alone: fault-free, 1 process, no checks, ms/seed (seeds/s)"
    if jobs > 1:
        lines = [f"| scenario (all faults at 5 %) | seeds | seeds/s | median ms/seed | max ms/seed | {floor_head} | seeds ({jobs} processes) | seeds/s with {jobs} processes | "
                 f"target >= 50 seeds/s (1 process) | target >= 50 seeds/s ({jobs} processes) | check failures |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    else:
        lines = [f"| scenario (all faults at 5 %) | seeds | seeds/s | median ms/seed | max ms/seed | {floor_head} | target >= 50 seeds/s | check failures |",
                 "|---|---|---|---|---|---|---|---|"]
    for r in seed_rows:
        if "seeds_per_s" not in r:
            lines.append(f"| {r['scenario']} | - | import failed | | | | |{' | | | |' if jobs > 1 else ''} {r.get('first_failure', '')[:80]} |")
            continue
        met = "met" if (r["seeds_per_s"] or 0) >= 50 else "missed"
        fails = f"{r['failed_seeds'] + r['errors']}/{r['seeds']}"
        if r.get("first_failure"):
            fails += f": {r['first_failure'][:100]}"
        if jobs > 1:
            if r.get("seeds_per_s_jobs") is None:
                multi, met_jobs = "error", "-"
                fails += f"; {jobs} processes: {r.get('jobs_error', '')[:100]}"
            else:
                multi = f"{r['seeds_per_s_jobs']:.1f}"
                met_jobs = "met" if r["seeds_per_s_jobs"] >= 50 else "missed"
                fails += f"; {r['failed_seeds_jobs']}/{r['seeds_jobs']} with {jobs} processes"
                if r.get("first_failure_jobs"):
                    fails += f": {r['first_failure_jobs'][:100]}"
            lines.append(f"| {r['scenario']} | {r['seeds']} | {r['seeds_per_s']:.1f} | {r['seed_median_ms']:.0f} | "
                         f"{r['seed_max_ms']:.0f} | {_floor(r)} | {r.get('seeds_jobs', 0)} | {multi} | {met} | {met_jobs} | {fails} |")
            continue
        lines.append(f"| {r['scenario']} | {r['seeds']} | {r['seeds_per_s']:.1f} | {r['seed_median_ms']:.0f} | "
                     f"{r['seed_max_ms']:.0f} | {_floor(r)} | {met} | {fails} |")
    lines += ["", "| W4-shaped simulation | faults | mode | activity executions/s median (min–max) | seconds (median) | executions | target |",
              "|---|---|---|---|---|---|---|"]
    for r in exec_rows:
        if r["mode"] == "runtime alone":
            lines.append(f"| {r['workload']} | - | runtime alone (no simulator: the ceiling) | {r['execs_per_s_median']:,} "
                         f"({r['execs_per_s_min']:,}–{r['execs_per_s_max']:,}) | | | - |")
            continue
        target = 20_000 if r["faults"] == "none" else 5_000
        met = "met" if r["execs_per_s_median"] >= target else "missed"
        lines.append(f"| {r['workload']} | {r['faults']} | {r['mode']} | {r['execs_per_s_median']:,} "
                     f"({r['execs_per_s_min']:,}–{r['execs_per_s_max']:,}) | {r['seconds_median']:.2f} | "
                     f"{r['activity_execs_median']:.0f} | >= {target:,}/s: {met}"
                     f"{'' if r['ok'] else ' (NOT OK: ' + r.get('problem', '') + ')'} |")
    return "\n".join(lines)


def write_results(text: str) -> None:
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = "## Simulation throughput\n\n" + text.strip() + "\n"
    pattern = re.compile(r"^## Simulation throughput\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(body):
        body = pattern.sub(lambda _m: section + "\n", body, count=1)
    else:
        body = body.rstrip() + "\n\n" + section
    RESULTS.write_text(body.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Simulation throughput: seeds/s per scenario, activity executions/s.")
    ap.add_argument("--scenarios", type=pathlib.Path, default=ROOT / "scenarios")
    ap.add_argument("--seeds", type=int, default=20, help="max seeds per scenario (default 20)")
    ap.add_argument("--budget-s", type=float, default=20.0, help="time budget per scenario (at least 3 seeds)")
    ap.add_argument("--instances", type=int, default=500, help="W4-shaped instances (5 activities each)")
    ap.add_argument("--repeats", type=int, default=3, help="seeds per W4-shaped measurement")
    ap.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                    help="also measure each scenario over --seeds x N seeds on N worker processes ('auto': one per CPU)")
    ap.add_argument("--skip-scenarios", action="store_true")
    ap.add_argument("--write-results", action="store_true", help="rewrite the 'Simulation throughput' section")
    args = ap.parse_args(argv)

    began = time.perf_counter()
    seed_rows: list[dict] = []
    if not args.skip_scenarios:
        for name, module in load_scenarios(args.scenarios):
            if isinstance(module, str):
                row = {"benchmark": "sim_seeds_per_s", "scenario": name, "ok": False, "first_failure": module.strip().splitlines()[-1]}
            else:
                print(f"scenario {name} ...", file=sys.stderr, flush=True)
                row = bench_scenario(name, module.SPEC, args.seeds, args.budget_s)
                if args.jobs > 1:
                    print(f"scenario {name} on {args.jobs} processes ...", file=sys.stderr, flush=True)
                    row.update(bench_scenario_jobs(args.scenarios / f"{name}.py", args.seeds * args.jobs, args.jobs))
                    row["ok"] = row["ok"] and row.get("seeds_per_s_jobs") is not None and row["failed_seeds_jobs"] == 0
            seed_rows.append(row)
            print(json.dumps(row), flush=True)
    exec_rows: list[dict] = []
    for faults in ("none", "all"):
        print(f"W4-shaped {args.instances}x{K}, faults {faults} ...", file=sys.stderr, flush=True)
        for row in bench_w4(args.instances, faults, args.repeats):
            exec_rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"W4-shaped {args.instances}x{K}, runtime alone ...", file=sys.stderr, flush=True)
    row = bench_w4_runtime_alone(args.instances, args.repeats)
    exec_rows.append(row)
    print(json.dumps(row), flush=True)
    elapsed = time.perf_counter() - began

    table = render(seed_rows, exec_rows, args.jobs)
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    header = (f"Measured {date} by `python bench/sim_throughput.py` ({elapsed:.0f} s; CPython "
              f"{platform.python_version()}, {platform.machine()}; in-memory provider, 2 simulated nodes, "
              f"the harness defaults). Seeds/s counts the whole `run_and_check` (faulty run + fault-free twin "
              f"for fault-transparent specs + checkers); activity executions are `work_exec` trace records.")
    if args.jobs > 1:
        header += (f" Seeds/s with {args.jobs} processes (`--jobs {args.jobs}`, {os.cpu_count()} CPUs): "
                   f"{args.seeds * args.jobs} seeds per scenario through `duroxide-sim run --jobs {args.jobs}`'s "
                   f"path, over the workers' span (pool start-up excluded).")
    print()
    print(header)
    print()
    print(table)
    if args.write_results:
        write_results(header + "\n\n" + table)
        print(f"wrote the Simulation throughput section of {RESULTS}", file=sys.stderr)
    return 0 if all(r.get("ok") for r in seed_rows + exec_rows) else 1


if __name__ == "__main__":
    sys.exit(main())
