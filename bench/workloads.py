"""One benchmark workload, in one process, against one engine; prints ONE JSON line.

    python bench/workloads.py --engine ours|peer --workload W1..W6 \
        --provider sqlite-file|sqlite-memory [--settings tuned|default] [--n N]

``--engine ours`` imports ``duroxide_sim`` (run it with the project's interpreter);
``--engine peer`` imports ``duroxide`` (run it with ``bench/.peer/bin/python``). Both expose the
same Python API (SPEC §17), so every workload below is written once.

Rules (``/work/shared/BENCHMARKS.md``): the activity is ``inc`` (x -> x + 1, no sleep, no I/O);
timing starts right before the first ``start_orchestration`` call and stops when the client has
observed the last completion through ``wait_for_orchestration``; engine start-up (open provider,
create schema, register, start runtime) is reported separately as ``startup_s``; every run
verifies its outputs, prints ``"ok": true`` and exits 0 only when they are all correct.

Workloads (``--n`` overrides the size):

* W1 hello: ``Hello(x) = inc(x)``; 2 warm-up iterations, then N=20 sequential start -> wait,
  each a new instance. Figures: latency median/min/max (ms, client-observed).
* W2 chain: one orchestration, ``x = inc(x)`` N=100 times. Figures: seconds, activities/s.
* W3 fanout: one orchestration, ``ctx.all`` of ``inc(i)`` for i < N=1000, returns the sum.
* W4 many: M=500 instances (5 sequential ``inc`` each) started back to back, then waited for in
  id order. Figures: seconds, orchestrations/s, activities/s, peak RSS (MiB).
* W5 timers: M=200 instances, each a 100 ms durable timer then ``inc(i)``.
* W6 continue-as-new: 1 instance, N=201 executions, each ``m = inc(n)`` then continue-as-new.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time

DEFAULT_N = {"W1": 20, "W2": 100, "W3": 1000, "W4": 500, "W5": 200, "W6": 201}
W1_WARMUP = 2
W4_K = 5
W5_TIMER_MS = 100
WAIT_TIMEOUT_MS = 600_000  # the runner's per-process timeout is the real guard


def _import_engine(engine: str):
    if engine == "ours":
        try:  # the installed package, or a snapshot the runner put on PYTHONPATH
            import duroxide_sim as dx
        except ImportError:  # run from a checkout without installing
            sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            import duroxide_sim as dx
    elif engine == "peer":
        import duroxide as dx
    else:  # pragma: no cover - argparse restricts the choices
        raise SystemExit(f"unknown engine {engine!r}")
    # Resolve every name the workloads use here, so that ``import_s`` covers the engine's
    # import even when the package loads its modules lazily on first attribute access.
    for name in ("Runtime", "RuntimeOptions", "Client", "SqliteProvider"):
        getattr(dx, name)
    return dx


def _options(dx, settings: str):
    if settings == "tuned":
        return dx.RuntimeOptions(dispatcher_poll_interval_ms=5, orchestration_concurrency=4, worker_concurrency=4)
    return None  # the engine's defaults


def _register(rt, workload: str, n: int) -> None:
    def inc(ctx, x):
        return x + 1

    rt.register_activity("inc", inc)

    if workload == "W1":
        def hello(ctx, x):
            r = yield ctx.schedule_activity("inc", x)
            return r

        rt.register_orchestration("Hello", hello)
    elif workload == "W2":
        def chain(ctx, count):
            x = 0
            for _ in range(count):
                x = yield ctx.schedule_activity("inc", x)
            return x

        rt.register_orchestration("Chain", chain)
    elif workload == "W3":
        def fanout(ctx, count):
            results = yield ctx.all([ctx.schedule_activity("inc", i) for i in range(count)])
            return sum(r["ok"] for r in results)

        rt.register_orchestration("Fanout", fanout)
    elif workload == "W4":
        def many(ctx, k):
            x = 0
            for _ in range(k):
                x = yield ctx.schedule_activity("inc", x)
            return x

        rt.register_orchestration("Many", many)
    elif workload == "W5":
        def timer_then_inc(ctx, i):
            yield ctx.schedule_timer(W5_TIMER_MS)
            r = yield ctx.schedule_activity("inc", i)
            return r

        rt.register_orchestration("TimerThenInc", timer_then_inc)
    elif workload == "W6":
        last = n - 1  # executions take inputs 0..n-1; the last one returns n

        def can(ctx, x):
            m = yield ctx.schedule_activity("inc", x)
            if m <= last:
                yield ctx.continue_as_new(m)
                return None  # never reached: continue-as-new does not resume
            return m

        rt.register_orchestration("Can", can)


def _wait(client, instance: str):
    return client.wait_for_orchestration(instance, WAIT_TIMEOUT_MS)


def _check(errors: list[str], instance: str, res, want) -> None:
    if res.status != "Completed" or res.output != want:
        detail = res.error if res.status == "Failed" else res.output
        errors.append(f"{instance}: {res.status} {detail!r}, expected Completed {want!r}")


def run_workload(client, workload: str, n: int) -> tuple[float, dict, list[str]]:
    """Returns (seconds, extra figures, errors)."""
    errors: list[str] = []
    extra: dict = {}
    clock = time.perf_counter
    if workload == "W1":
        latencies = []
        for i in range(W1_WARMUP + n):
            inst = f"w1-{i:04d}"
            t0 = clock()
            client.start_orchestration(inst, "Hello", i)
            res = _wait(client, inst)
            dt = clock() - t0
            _check(errors, inst, res, i + 1)
            if i >= W1_WARMUP:
                latencies.append(dt)
        seconds = sum(latencies)
        extra = {
            "iterations": n,
            "latency_median_ms": round(statistics.median(latencies) * 1000, 3),
            "latency_min_ms": round(min(latencies) * 1000, 3),
            "latency_max_ms": round(max(latencies) * 1000, 3),
        }
        return seconds, extra, errors

    if workload in ("W2", "W3", "W6"):
        name, inst = {"W2": ("Chain", "w2"), "W3": ("Fanout", "w3"), "W6": ("Can", "w6")}[workload]
        arg = 0 if workload == "W6" else n
        t0 = clock()
        client.start_orchestration(inst, name, arg)
        res = _wait(client, inst)
        seconds = clock() - t0
        want = {"W2": n, "W3": n * (n + 1) // 2, "W6": n}[workload]
        _check(errors, inst, res, want)
        if workload == "W6":
            extra = {"executions": n, "executions_per_s": round(n / seconds, 2), "activities": n,
                     "activities_per_s": round(n / seconds, 2)}
        else:
            extra = {"activities": n, "activities_per_s": round(n / seconds, 2)}
        return seconds, extra, errors

    if workload in ("W4", "W5"):
        name, arg_of, want_of = {
            "W4": ("Many", lambda i: W4_K, lambda i: W4_K),
            "W5": ("TimerThenInc", lambda i: i, lambda i: i + 1),
        }[workload]
        ids = [f"{workload.lower()}-{i:05d}" for i in range(n)]
        results = []
        t0 = clock()
        for i, inst in enumerate(ids):
            client.start_orchestration(inst, name, arg_of(i))
        for inst in ids:
            results.append(_wait(client, inst))
        seconds = clock() - t0
        for i, (inst, res) in enumerate(zip(ids, results, strict=True)):
            _check(errors, inst, res, want_of(i))
        acts = n * (W4_K if workload == "W4" else 1)
        extra = {"orchestrations": n, "orchestrations_per_s": round(n / seconds, 2), "activities": acts,
                 "activities_per_s": round(acts / seconds, 2)}
        if workload == "W5":
            extra["timer_ms"] = W5_TIMER_MS
        return seconds, extra, errors

    raise SystemExit(f"unknown workload {workload!r}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=("ours", "peer"), required=True)
    ap.add_argument("--workload", choices=sorted(DEFAULT_N), required=True)
    ap.add_argument("--provider", choices=("sqlite-file", "sqlite-memory"), default="sqlite-file")
    ap.add_argument("--settings", choices=("tuned", "default"), default="tuned")
    ap.add_argument("--n", type=int, default=None, help="override the workload size")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else DEFAULT_N[args.workload]
    if n < 1:
        ap.error("--n must be >= 1")

    t_import = time.perf_counter()
    dx = _import_engine(args.engine)
    import_s = time.perf_counter() - t_import

    tmpdir = None
    rt = None
    out: dict = {
        "engine": args.engine, "workload": args.workload, "provider": args.provider, "settings": args.settings,
        "n": n,
    }
    try:
        t_start = time.perf_counter()
        if args.provider == "sqlite-file":
            tmpdir = tempfile.mkdtemp(prefix=f"dxbench-{args.engine}-")
            provider = dx.SqliteProvider.open(os.path.join(tmpdir, "bench.db"))
        else:
            provider = dx.SqliteProvider.in_memory()
        opts = _options(dx, args.settings)
        rt = dx.Runtime(provider, opts) if opts is not None else dx.Runtime(provider)
        _register(rt, args.workload, n)
        rt.start()
        client = dx.Client(provider)
        startup_s = time.perf_counter() - t_start

        seconds, extra, errors = run_workload(client, args.workload, n)
        rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        out.update({"seconds": round(seconds, 6), **extra, "startup_s": round(startup_s, 6),
                    "import_s": round(import_s, 6), "peak_rss_mib": round(rss_kib / 1024, 2)})
        if errors:
            out["errors"] = errors[:5]
            out["error_count"] = len(errors)
        out["ok"] = not errors
    except Exception as exc:  # noqa: BLE001 - any failure is reported as a non-ok line
        out["ok"] = False
        out["exception"] = f"{type(exc).__name__}: {exc}"
    finally:
        if rt is not None:
            try:
                rt.shutdown()
            except Exception as exc:  # noqa: BLE001
                out.setdefault("shutdown_error", f"{type(exc).__name__}: {exc}")
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    out["python"] = platform.python_version()
    out["engine_module"] = os.path.dirname(getattr(dx, "__file__", "") or "")
    print(json.dumps(out), flush=True)
    return 0 if out.get("ok") else 1


if __name__ == "__main__":
    sys.exit(main())
