"""PostgreSQL scaling: W4 (``/work/shared/BENCHMARKS.md``) on 1, 2 and 4 runtime processes.

    python bench/pg_scaling.py [--procs 1,2,4] [--runs 3] [--n 500] [--write-results]

W4: M=500 instances, each ``x = 0``, then K=5 sequential ``x = inc(x)``, return x; started back
to back from a client, then waited for in id order. Each run is fresh processes on a fresh
schema: a coordinator process (``--run``) starts the runtime processes (``--worker``, tuned
settings: poll 5 ms, 4 orchestration + 4 activity slots), waits until each has started, then
times from right before the first ``start_orchestration`` until the client has observed the last
completion (``wait_for_orchestration``), verifies every output, stops the workers and prints
ONE JSON line. The table shows the median (min-max) of ``--runs`` runs per process count and
the speedup over one process; ``--write-results`` puts it, with the machine facts, into the
"PostgreSQL scaling" section of ``bench/RESULTS.md``.

Server: ``$DUROXIDE_PG_URL``, else a private PostgreSQL started for the benchmark
(``tests/pg_server.py``) with fsync on and ``synchronous_commit=off`` - the durability of the
SQLite file provider (WAL, ``synchronous=NORMAL``): an OS crash may lose the last commits but
never corrupts. The settings in force are printed and recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K = 5
WAIT_TIMEOUT_MS = 600_000
SECTION = "## PostgreSQL scaling"


def _register(rt) -> None:
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def many(ctx, k):
        x = 0
        for _ in range(k):
            x = yield ctx.schedule_activity("inc", x)
        return x

    rt.register_orchestration("Many", many)


def worker(url: str, schema: str) -> None:
    """One runtime process: run until SIGTERM."""
    import threading

    from duroxide_sim import Runtime, RuntimeOptions
    from duroxide_sim.providers.postgres import PostgresProvider

    provider = PostgresProvider.connect_with_schema(url, schema)
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, orchestration_concurrency=4,
                                          worker_concurrency=4))
    _register(rt)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    rt.start()
    print("READY", flush=True)
    stop.wait()
    rt.shutdown(5_000)
    provider.close()


def run(url: str, procs: int, n: int) -> dict:
    """One timed W4 run with ``procs`` runtime processes on a fresh schema."""
    import psycopg
    from psycopg import sql

    from duroxide_sim import Client
    from duroxide_sim.providers.postgres import PostgresProvider

    schema = f"bench_w4_{os.getpid()}"
    t_start = time.perf_counter()
    provider = PostgresProvider.connect_with_schema(url, schema)
    client = Client(provider)
    workers = [subprocess.Popen([sys.executable, __file__, "--worker", url, schema], cwd=ROOT,
                                stdout=subprocess.PIPE) for _ in range(procs)]
    try:
        for w in workers:
            assert w.stdout is not None and w.stdout.readline().strip() == b"READY", "a worker did not start"
        startup_s = time.perf_counter() - t_start
        ids = [f"w4-{i:05d}" for i in range(n)]
        t0 = time.perf_counter()
        for inst in ids:
            client.start_orchestration(inst, "Many", K)
        results = [client.wait_for_orchestration(inst, WAIT_TIMEOUT_MS) for inst in ids]
        seconds = time.perf_counter() - t0
        errors = [f"{i}: {r.status} {r.output!r}" for i, r in zip(ids, results, strict=True) if (r.status, r.output) != ("Completed", K)]
    finally:
        for w in workers:
            w.send_signal(signal.SIGTERM)
        for w in workers:
            try:
                w.wait(30)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait(5)
        provider.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # the runtime processes, after they exited
    return {"benchmark": "pg_scaling", "workload": "W4", "processes": procs, "instances": n, "activities": n * K,
            "seconds": round(seconds, 3), "orchestrations_per_s": round(n / seconds, 2),
            "activities_per_s": round(n * K / seconds, 2), "startup_s": round(startup_s, 3),
            "runtime_cpu_s": round(children.ru_utime + children.ru_stime, 2),
            "ok": not errors, "errors": errors[:5]}


def machine_facts(url: str) -> dict:
    import psycopg
    import psycopg_pool

    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with psycopg.connect(url) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        fsync = conn.execute("SHOW fsync").fetchone()[0]
        sync_commit = conn.execute("SHOW synchronous_commit").fetchone()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "postgres": server.split()[0], "fsync": fsync,
            "synchronous_commit": sync_commit, "psycopg": psycopg.__version__, "psycopg_pool": psycopg_pool.__version__}


def table(rows: dict[int, list[dict]]) -> str:
    base = statistics.median(r["seconds"] for r in rows[min(rows)])
    lines = ["| runtime processes | W4 seconds, median (min-max) | orchestrations/s | activities/s | speedup vs 1 "
             "| runtime CPU s (all processes) |",
             "|---|---|---|---|---|---|"]
    for procs, runs in sorted(rows.items()):
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        n = runs[0]["instances"]
        cpu = statistics.median(r["runtime_cpu_s"] for r in runs)
        lines.append(f"| {procs} | {med:.2f} s ({min(secs):.2f}-{max(secs):.2f}) | {n / med:.1f} | "
                     f"{n * K / med:.1f} | {base / med:.2f}x | {cpu:.1f} |")
    return "\n".join(lines)


def reading(rows: dict[int, list[dict]], facts: dict) -> str:
    """One factual paragraph on what the table shows (CPU used versus cores available)."""
    med = {p: (statistics.median(r["seconds"] for r in runs), statistics.median(r["runtime_cpu_s"] for r in runs))
           for p, runs in rows.items()}
    one, most = min(med), max(med)
    return (f"Reading: the runtime processes, the client and the PostgreSQL server share {facts['cores']} cores. "
            f"With {one} process the runtime used {med[one][1]:.1f} CPU-s in {med[one][0]:.1f} s of wall time (the "
            f"server's CPU comes on top); with {most} processes the same work took {med[most][1]:.1f} CPU-s of "
            "runtime CPU (more fetchers racing for the same instances and rows, more idle polls at 5 ms, "
            "NOTIFY wake-ups in every process). Throughput scales only while cores are free, so on a machine "
            "this small the table measures the cost of coordination between processes rather than the "
            "provider's capacity; every run was correct (each output checked, no failures).")


def write_results(text: str) -> None:
    path = ROOT / "bench" / "RESULTS.md"
    current = path.read_text(encoding="utf-8")
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    block = f"{SECTION}\n\n{text.strip()}\n\n"
    if pattern.search(current):
        updated = pattern.sub(lambda _: block, current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + block
    path.write_text(updated.rstrip("\n") + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--procs", default="1,2,4", help="comma-separated runtime process counts")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--write-results", action="store_true")
    ap.add_argument("--worker", nargs=2, metavar=("URL", "SCHEMA"), help=argparse.SUPPRESS)
    ap.add_argument("--run", nargs=2, metavar=("URL", "PROCS"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(*args.worker)
        return 0
    if args.run:
        result = run(args.run[0], int(args.run[1]), args.n)
        print(json.dumps(result), flush=True)
        return 0 if result["ok"] else 1

    server = None
    url = os.environ.get("DUROXIDE_PG_URL")
    if not url:
        from tests.pg_server import PgServer

        # fsync on; commits do not wait for their WAL flush, like the SQLite file provider's
        # WAL + synchronous=NORMAL (an OS crash may lose the last commits, never corrupts).
        server = PgServer(durable=True, options="-c synchronous_commit=off").start()
        url = server.url
    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    try:
        facts = machine_facts(url)
        rows: dict[int, list[dict]] = {}
        for procs in [int(p) for p in args.procs.split(",")]:
            for _ in range(args.runs):  # each run in fresh processes
                out = subprocess.run([sys.executable, __file__, "--run", url, str(procs), "--n", str(args.n)],
                                     cwd=ROOT, capture_output=True, text=True, timeout=900)
                line = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
                if out.returncode != 0 or not line:
                    print(out.stdout, out.stderr, file=sys.stderr)
                    return 1
                result = json.loads(line)
                print(line, flush=True)
                rows.setdefault(procs, []).append(result)
    finally:
        if server is not None:
            server.destroy()
    load_after = os.getloadavg()
    text = table(rows)
    print()
    print(text)
    if args.write_results:
        facts_line = (f"Machine: {facts['cpu']}, {facts['cores']} cores, {facts['os']}; CPython {facts['python']}; "
                      f"PostgreSQL {facts['postgres']} on the same machine over loopback TCP (fsync={facts['fsync']}, "
                      f"synchronous_commit={facts['synchronous_commit']}); psycopg {facts['psycopg']}, "
                      f"psycopg_pool {facts['psycopg_pool']}.")
        intro = (f"Measured {started} with `python bench/pg_scaling.py --write-results` (load average "
                 f"{' '.join(f'{x:.2f}' for x in load_before)} before, {' '.join(f'{x:.2f}' for x in load_after)} "
                 f"after): W4 ({args.n} instances x {K} sequential `inc`, "
                 "started back to back, then waited for in id order) with 1, 2 and 4 runtime processes sharing "
                 "one PostgreSQL schema; each process runs the tuned settings (poll 5 ms, 4 orchestration + 4 "
                 f"activity slots); every run in fresh processes on a fresh schema; median (min-max) of {args.runs} "
                 "runs, every output verified.")
        write_results(f"{intro}\n\n{facts_line}\n\n{text}\n\n{reading(rows, facts)}")
        print(f"\nwrote the {SECTION[3:]!r} section of bench/RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
