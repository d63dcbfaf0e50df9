"""Production benchmark runner: our engine vs the peer (``duroxide`` 0.2.2), W1-W6, one table.

    python bench/run.py [--runs 5] [--peer-default] [--write-results] [--quick] [--timeout S]

Every cell is the median of ``--runs`` fresh processes of ``bench/workloads.py`` (one workload,
one engine, one provider per process), with min and max. Columns: our engine on a SQLite file
and on SQLite in memory, the peer with tuned settings on a SQLite file (and, with
``--peer-default``, the peer's default settings). Runs are interleaved (run 1 of every column,
then run 2...) so a noisy stretch of the shared machine hits every column alike. The ratio
column compares the file cells and is oriented so that > 1 means we are better (peer time /
our time, our throughput / peer throughput, peer RSS / our RSS).

The replay-scaling figure runs W2 with N=1,000 and N=10,000 on our engine (SQLite file) and
reports the time ratio (target <= 12x; 10x is linear). The fan-in scaling figure runs W3 with
N=1,000 and N=4,000 the same way (a guard, not an issue target: <= 6x, 4x is linear; a turn that
re-decodes the whole history made it ~13x, unseen by the ratio against the peer at one size).

The peer runs under ``bench/.peer/bin/python``; the venv is created when missing
(``python3 -m venv bench/.peer && bench/.peer/bin/pip install duroxide==0.2.2``), except in
``--quick`` mode, which uses the peer only if it is already installed.

Our engine is measured from a snapshot of ``duroxide_sim/`` copied at start-up (so edits made to
the working tree during a long run do not mix versions); ``--live`` uses the working tree.

``--quick``: 1 run per cell, smaller sizes, the whole thing in well under a minute.
``--write-results``: rewrite the "Production" section of ``bench/RESULTS.md``.
Progress goes to stderr; the table to stdout.
"""

from __future__ import annotations

import argparse
import compileall
import datetime as _dt
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = pathlib.Path(__file__).resolve().parent
ROOT = BENCH.parent
WORKLOADS = BENCH / "workloads.py"
RESULTS = BENCH / "RESULTS.md"
PEER_VENV = BENCH / ".peer"
PEER_PY = PEER_VENV / "bin" / "python"
PEER_PIN = "duroxide==0.2.2"

WORKLOAD_IDS = ("W1", "W2", "W3", "W4", "W5", "W6")
QUICK_N = {"W1": 5, "W2": 50, "W3": 200, "W4": 100, "W5": 50, "W6": 51}
FULL_N = {"W1": 20, "W2": 100, "W3": 1000, "W4": 500, "W5": 200, "W6": 201}
SCALING_N = (1_000, 10_000)
QUICK_SCALING_N = (100, 1_000)
FANIN_N = (1_000, 4_000)
QUICK_FANIN_N = (200, 800)
#: The size-scaling figures: (workload, what it shows, its label, sizes, quick sizes, highest
#: acceptable time ratio, the ratio linear time would give).
SCALINGS = (
    ("W2", "replay scaling", "W2 chain", SCALING_N, QUICK_SCALING_N, 12, 10),
    ("W3", "fan-in scaling", "W3 fanout", FANIN_N, QUICK_FANIN_N, 6, 4),
)

# (figure key, label, unit, higher_is_better, target ratio or None)
FIGURES = {
    "W1": [("latency_median_ms", "latency median", "ms", False, 5.0),
           ("latency_min_ms", "latency min", "ms", False, None),
           ("latency_max_ms", "latency max", "ms", False, None)],
    "W2": [("seconds", "time", "s", False, 5.0), ("activities_per_s", "activities/s", "/s", True, 5.0)],
    "W3": [("seconds", "time", "s", False, 5.0), ("activities_per_s", "activities/s", "/s", True, 5.0)],
    "W4": [("seconds", "time", "s", False, 5.0), ("orchestrations_per_s", "orchestrations/s", "/s", True, 5.0),
           ("peak_rss_mib", "peak RSS", "MiB", False, 1.0)],
    "W5": [("seconds", "time", "s", False, 5.0)],
    "W6": [("seconds", "time", "s", False, 5.0), ("executions_per_s", "executions/s", "/s", True, 5.0)],
}
TITLES = {"W1": "W1 hello", "W2": "W2 chain", "W3": "W3 fanout", "W4": "W4 many", "W5": "W5 timers",
          "W6": "W6 continue-as-new"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# environment


def peer_installed() -> bool:
    if not PEER_PY.exists():
        return False
    probe = subprocess.run([str(PEER_PY), "-c", "import duroxide"], capture_output=True, timeout=60)
    return probe.returncode == 0


def ensure_peer() -> bool:
    if peer_installed():
        return True
    log(f"creating the peer venv: python3 -m venv {PEER_VENV} && pip install {PEER_PIN}")
    try:
        if not PEER_PY.exists():
            subprocess.run(["python3", "-m", "venv", str(PEER_VENV)], check=True, timeout=300)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "--quiet", PEER_PIN], check=True, timeout=900)
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"could not install the peer: {exc}")
        return False
    return peer_installed()


def snapshot_package(dest: pathlib.Path) -> str:
    """Copy duroxide_sim/ into dest; return a short hash of its sources."""
    src = ROOT / "duroxide_sim"
    shutil.copytree(src, dest / "duroxide_sim", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # Byte-compile the snapshot once, as ``pip install`` does for an installed package: without
    # it every fresh process compiles each module from source (~40 ms and ~2.5 MiB of transient
    # compiler memory that stays in the process's peak RSS), since PYTHONDONTWRITEBYTECODE may
    # forbid caching the result. The peer's Python files are installed (compiled) by pip.
    compileall.compile_dir(str(dest / "duroxide_sim"), quiet=1)
    h = hashlib.sha256()
    for path in sorted((dest / "duroxide_sim").rglob("*.py")):
        h.update(str(path.relative_to(dest)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def git_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "duroxide_sim"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return f"{head}{' + uncommitted changes to duroxide_sim/' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_facts() -> dict:
    cpu = "unknown"
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    os_name = platform.platform()
    try:
        for line in pathlib.Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip().strip('"')
                os_name = f"{pretty} (Linux {platform.release()})"
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "arch": platform.machine(),
            "python": f"{platform.python_implementation()} {platform.python_version()}", "os": os_name}


def calibration() -> dict:
    """Two figures that tell machines apart where the ratios depend on them (sessions 21-22: the
    same code ran ~2.5x slower on one VM than on another, and an fsync took ~5 ms on one): the
    best of 3 runs of a 2,000,000-iteration empty Python loop, and the median of 5 fsyncs, each
    after writing 4 MiB (what a checkpoint at SQLite's default 1,000 pages flushes) to a file in
    the temporary directory the workloads put their databases in. Measured in this process
    before the cells run."""
    loops = []
    for _ in range(3):
        t0 = time.perf_counter()
        for _i in range(2_000_000):
            pass
        loops.append(time.perf_counter() - t0)
    syncs = []
    fd, path = tempfile.mkstemp(prefix="duroxide-bench-fsync-")
    try:
        block = b"x" * (4 << 20)
        for _ in range(5):
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, block)
            t0 = time.perf_counter()
            os.fsync(fd)
            syncs.append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"python_loop_ms": round(min(loops) * 1000, 1), "fsync_ms": round(statistics.median(syncs) * 1000, 2)}


def loadavg() -> str:
    try:
        return " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


# --------------------------------------------------------------------------------------------
# one process


def run_one(python: str, engine: str, workload: str, provider: str, settings: str, n: int | None,
            timeout_s: float, env: dict) -> dict:
    cmd = [python, str(WORKLOADS), "--engine", engine, "--workload", workload, "--provider", provider,
           "--settings", settings]
    if n is not None:
        cmd += ["--n", str(n)]
    began = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group of the child we started
        except ProcessLookupError:
            pass
        proc.communicate()
        return {"ok": False, "status": "timeout", "wall_s": round(time.perf_counter() - began, 3)}
    wall = time.perf_counter() - began
    rec = None
    for line in reversed(out.strip().splitlines()):
        try:
            rec = json.loads(line)
            break
        except ValueError:
            continue
    if rec is None:
        return {"ok": False, "status": "crash", "rc": proc.returncode, "stderr_tail": err[-1500:], "wall_s": wall}
    rec["rc"] = proc.returncode
    rec["wall_s"] = round(wall, 3)
    # The peer's tracing goes to stdout: count its lock back-offs in both streams (log lines only).
    logs = [ln for ln in (out + "\n" + err).splitlines() if ln and not ln.startswith("{")]
    rec["lock_warnings"] = sum("database is locked" in ln for ln in logs)
    rec["log_lines"] = len(logs)
    if proc.returncode != 0 or not rec.get("ok"):
        rec["ok"] = False
        rec["status"] = "fail"
        rec["stderr_tail"] = err[-1500:]
    else:
        rec["status"] = "ok"
    return rec


# --------------------------------------------------------------------------------------------
# aggregation and rendering


def summarize(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_num(v: float, unit: str) -> str:
    if unit == "s":
        return f"{v:.3f} s" if v < 10 else f"{v:.2f} s"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 100 else f"{v:.1f} ms"
    if unit == "MiB":
        return f"{v:.1f} MiB"
    if unit == "/s":
        return f"{v:,.0f}/s" if v >= 100 else f"{v:.1f}/s"
    return f"{v:g}"


def fmt_bare(v: float, unit: str) -> str:
    return fmt_num(v, unit).replace(" s", "").replace(" ms", "").replace(" MiB", "").replace("/s", "")


def cell_text(runs: list[dict], key: str, unit: str) -> str:
    if not runs:
        return "-"
    good = [r[key] for r in runs if r.get("ok") and key in r]
    bad = [r["status"] for r in runs if not r.get("ok")]
    if not good:
        return ", ".join(sorted(set(bad))) or "-"
    s = summarize(good)
    text = fmt_num(s["median"], unit)
    if s["n"] > 1:
        text += f" ({fmt_bare(s['min'], unit)}–{fmt_bare(s['max'], unit)})"
    if bad:
        text += f" [{len(bad)} {'/'.join(sorted(set(bad)))}]"
    return text


def median_of(runs: list[dict], key: str) -> float | None:
    good = [r[key] for r in runs if r.get("ok") and key in r]
    return statistics.median(good) if good else None


def ratio(ours: float | None, peer: float | None, higher_better: bool) -> float | None:
    if ours is None or peer is None or ours <= 0 or peer <= 0:
        return None
    return ours / peer if higher_better else peer / ours


def build_table(results: dict, columns: list[tuple[str, str, str, str, str]], workloads: list[str], sizes: dict,
                quick: bool) -> tuple[str, list[dict]]:
    """Markdown table + a list of verdict rows."""
    head = ["workload", "figure"] + [c[0] for c in columns] + ["ratio (peer/ours, file)", "target"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    verdicts = []
    for w in workloads:
        for key, label, unit, higher, target in FIGURES[w]:
            cells = [cell_text(results.get((c[1], c[2], c[3], w), []), key, unit) for c in columns]
            ours = median_of(results.get(("ours", "sqlite-file", "tuned", w), []), key)
            peer = median_of(results.get(("peer", "sqlite-file", "tuned", w), []), key)
            r = ratio(ours, peer, higher)
            rtext = "-" if r is None else f"{r:.2f}x"
            ttext = "-"
            if target is not None and r is not None:
                met = r >= target
                ttext = f">= {target:g}x: {'met' if met else 'missed'}"
                verdicts.append({"workload": w, "figure": label, "ratio": r, "target": target, "met": met})
            elif target is not None:
                ttext = f">= {target:g}x"
            size = f" ({sizes[w]})" if label in ("latency median", "time") else ""
            lines.append("| " + " | ".join([f"{TITLES[w]}{size}", f"{label} [{unit}]"] + cells + [rtext, ttext]) + " |")
    return "\n".join(lines), verdicts


def startup_table(results: dict, columns: list[tuple[str, str, str, str, str]]) -> str:
    head = ["start-up (open provider + schema + register + start)"] + [c[0] for c in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    row = ["median over all runs (min–max)"]
    row2 = ["engine import (median)"]
    for c in columns:
        runs = [r for (e, p, s, _w), rs in results.items() if (e, p, s) == (c[1], c[2], c[3]) for r in rs if r.get("ok")]
        su = summarize([r["startup_s"] * 1000 for r in runs if "startup_s" in r])
        im = summarize([r["import_s"] * 1000 for r in runs if "import_s" in r])
        row.append("-" if su is None else f"{su['median']:.1f} ms ({su['min']:.1f}–{su['max']:.1f})")
        row2.append("-" if im is None else f"{im['median']:.1f} ms")
    lines.append("| " + " | ".join(row) + " |")
    lines.append("| " + " | ".join(row2) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run W1-W6 against our engine and the peer; print one table.")
    ap.add_argument("--runs", type=int, default=5, help="fresh processes per cell (default 5)")
    ap.add_argument("--peer-runs", type=str, default="",
                    help="fewer runs for some peer cells, e.g. 'W3=3,W4=3' (the slowest ones)")
    ap.add_argument("--quick", action="store_true", help="1 run per cell, small sizes, < 60 s")
    ap.add_argument("--peer-default", action="store_true", help="also run the peer with default settings")
    ap.add_argument("--no-peer", action="store_true", help="our engine only")
    ap.add_argument("--no-scaling", action="store_true", help="skip the replay (W2) and fan-in (W3) scaling figures")
    ap.add_argument("--workloads", default=",".join(WORKLOAD_IDS), help="comma-separated subset, e.g. W1,W4")
    ap.add_argument("--timeout", type=float, default=None, help="per-process timeout in seconds (300; quick 60)")
    ap.add_argument("--live", action="store_true", help="measure the working tree, not a snapshot")
    ap.add_argument("--write-results", action="store_true", help="rewrite the Production section of RESULTS.md")
    ap.add_argument("--raw", type=pathlib.Path, default=None, help="write every run's JSON record to this file")
    args = ap.parse_args(argv)

    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for w in workloads:
        if w not in WORKLOAD_IDS:
            ap.error(f"unknown workload {w}")
    runs = 1 if args.quick else max(1, args.runs)
    timeout_s = args.timeout or (60.0 if args.quick else 300.0)
    sizes = QUICK_N if args.quick else FULL_N
    peer_runs = {}
    for part in filter(None, (p.strip() for p in args.peer_runs.split(","))):
        w, _, k = part.partition("=")
        peer_runs[w.upper()] = max(1, int(k))

    t_total = time.perf_counter()
    load_before = loadavg()
    calib = calibration()
    use_peer = False
    if not args.no_peer:
        use_peer = peer_installed() if args.quick else ensure_peer()
        if not use_peer:
            log("peer not available: running our engine only" + (" (quick mode never installs it)" if args.quick else ""))

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="dxbench-run-"))
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    ours_env = dict(env)
    if args.live:
        ours_env["PYTHONPATH"] = str(ROOT)
        code_id = "working tree"
    else:
        code_id = snapshot_package(tmp)
        ours_env["PYTHONPATH"] = str(tmp)
    git = git_state()
    log(f"our engine: {git}, sources hash {code_id}; python {platform.python_version()}; load {load_before}")

    # columns: (label, engine, provider, settings, python)
    columns = [("ours, file", "ours", "sqlite-file", "tuned", sys.executable),
               ("ours, memory", "ours", "sqlite-memory", "tuned", sys.executable)]
    if use_peer:
        columns.append(("peer tuned, file", "peer", "sqlite-file", "tuned", str(PEER_PY)))
        if args.peer_default:
            columns.append(("peer default, file", "peer", "sqlite-file", "default", str(PEER_PY)))

    results: dict = {}
    raw: list[dict] = []
    try:
        for w in workloads:
            n = sizes[w] if args.quick else None
            for i in range(runs):
                for label, engine, provider, settings, python in columns:
                    if engine == "peer" and i >= peer_runs.get(w, runs):
                        continue
                    rec = run_one(python, engine, w, provider, settings, n, timeout_s,
                                  ours_env if engine == "ours" else env)
                    rec.update({"engine": engine, "workload": w, "provider": provider, "settings": settings,
                                "run": i + 1})
                    results.setdefault((engine, provider, settings, w), []).append(rec)
                    raw.append(rec)
                    main_fig = FIGURES[w][0][0]
                    shown = rec.get(main_fig, rec.get("status"))
                    log(f"[{time.perf_counter() - t_total:7.1f}s] {w} {label:<18} run {i + 1}/{runs}: "
                        f"{main_fig}={shown} {'ok' if rec.get('ok') else rec.get('status', 'fail').upper()}")
                    if not rec.get("ok") and rec.get("stderr_tail"):
                        log("    " + rec["stderr_tail"].strip().splitlines()[-1][:300])

        scaling = None
        if not args.no_scaling:
            scaling = {}
            for w, _what, _label, full_n, quick_n, _limit, _linear in SCALINGS:
                for n in (quick_n if args.quick else full_n):
                    for i in range(runs):
                        if any(r.get("status") == "timeout" for r in scaling.get((w, n), [])):
                            break  # one timeout says enough; do not spend the budget again
                        rec = run_one(sys.executable, "ours", w, "sqlite-file", "tuned", n, timeout_s * 3, ours_env)
                        rec.update({"engine": "ours", "workload": w, "provider": "sqlite-file", "settings": "tuned",
                                    "run": i + 1, "scaling": True})
                        scaling.setdefault((w, n), []).append(rec)
                        raw.append(rec)
                        log(f"[{time.perf_counter() - t_total:7.1f}s] {w} scaling N={n:<6} run {i + 1}/{runs}: "
                            f"seconds={rec.get('seconds', rec.get('status'))}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - t_total
    load_after = loadavg()
    table, verdicts = build_table(results, columns, workloads, {w: _size_text(w, sizes[w]) for w in workloads},
                                  args.quick)
    st_table = startup_table(results, columns)
    scaling_text, scaling_verdicts = _scaling_text(scaling, args.quick)
    lock_text = _lock_text(results, columns)

    facts = machine_facts()
    date = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    runs_text = f"{runs} fresh process{'es' if runs > 1 else ''} per cell"
    if peer_runs:
        runs_text += " (peer: " + ", ".join(f"{w} {k}" for w, k in sorted(peer_runs.items())) + ")"
    summary = [
        f"Measured {date} in one invocation of `python bench/run.py {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"({elapsed / 60:.1f} min; {runs_text}; cells are median (min–max); load average {load_before} before, "
        f"{load_after} after).",
        f"Machine: {facts['cpu']}, {facts['cores']} cores ({facts['usable_cores']} usable), {facts['arch']}, "
        f"{facts['os']}, {facts['python']}. Calibration: a 2,000,000-iteration empty Python loop "
        f"{calib['python_loop_ms']} ms (best of 3), fsync after a 4 MiB write in the temporary directory "
        f"{calib['fsync_ms']} ms (median of 5).",
        f"Our engine: duroxide_sim at {git} (sources hash {code_id}), "
        "`RuntimeOptions(orchestration_concurrency=4, worker_concurrency=4, dispatcher_poll_interval_ms=5)`. "
        f"Peer: `{PEER_PIN}` (Rust core, bundled SQLite), tuned = "
        "`RuntimeOptions(dispatcher_poll_interval_ms=5, orchestration_concurrency=4, worker_concurrency=4)`"
        + ("; default = `Runtime(provider)`." if args.peer_default else "."),
    ]
    if args.quick:
        summary.append("QUICK MODE: reduced sizes and one run per cell; not comparable with the full figures.")

    out = ["\n".join(summary), "", table, "", st_table, "", scaling_text]
    if lock_text:
        out += ["", lock_text]
    failures = [r for r in raw if not r.get("ok")]
    if failures:
        out += ["", f"{len(failures)} run(s) failed or timed out: "
                + "; ".join(f"{r['workload']} {r['engine']}/{r['provider']}/{r['settings']} run {r['run']}: "
                            f"{r.get('status')} {r.get('exception', '')}{' ' + str(r.get('errors', ''))[:120] if r.get('errors') else ''}"
                            for r in failures[:8])]
    text = "\n".join(out)
    print(text)
    if verdicts or scaling_verdicts:
        met = [v for v in verdicts if v["met"]]
        log(f"targets met: {len(met)}/{len(verdicts)} ratio targets"
            + "".join(f"; {what} {'met' if ok else 'missed'}" for what, ok in scaling_verdicts.items() if ok is not None))

    if args.raw:
        args.raw.write_text("\n".join(json.dumps(r, sort_keys=True) for r in raw) + "\n")
    if args.write_results:
        write_results(text)
        log(f"wrote the Production section of {RESULTS}")
    return 0 if not failures else 1


def _size_text(w: str, n: int) -> str:
    return {"W1": f"{n} iterations", "W2": f"N={n}", "W3": f"N={n}", "W4": f"{n} x 5", "W5": f"{n} x 100 ms",
            "W6": f"{n} executions"}[w]


def _scaling_text(scaling: dict | None, quick: bool) -> tuple[str, dict[str, bool | None]]:
    """The size-scaling table (:data:`SCALINGS`) and each figure's verdict (None: not measured)."""
    if scaling is None:
        return "Replay and fan-in scaling: not measured (--no-scaling).", {}
    lines = ["| scaling (ours, SQLite file) | time | activities/s |", "|---|---|---|"]
    verdicts: dict[str, bool | None] = {}
    for w, what, label, full_n, quick_n, limit, linear in SCALINGS:
        lo, hi = quick_n if quick else full_n
        for n in (lo, hi):
            lines.append(f"| {label} N={n:,} | {cell_text(scaling.get((w, n), []), 'seconds', 's')} | "
                         f"{cell_text(scaling.get((w, n), []), 'activities_per_s', '/s')} |")
        m_lo = median_of(scaling.get((w, lo), []), "seconds")
        m_hi = median_of(scaling.get((w, hi), []), "seconds")
        verdicts[what] = None
        if m_lo and m_hi:
            r = m_hi / m_lo
            verdicts[what] = r <= limit
            lines.append(f"| {what}: ratio N={hi:,} / N={lo:,} | {r:.1f}x (target <= {limit}x; {linear}x = linear): "
                         f"{'met' if r <= limit else 'missed'} | |")
        else:
            lines.append(f"| {what}: ratio N={hi:,} / N={lo:,} | not available (a size failed or timed out) | |")
    return "\n".join(lines), verdicts


def _lock_text(results: dict, columns: list) -> str:
    parts = []
    for label, engine, provider, settings, _py in columns:
        if engine != "peer":
            continue
        counts = {w: sum(r.get("lock_warnings", 0) for r in rs) for (e, p, s, w), rs in results.items()
                  if (e, p, s) == (engine, provider, settings)}
        total = sum(counts.values())
        if total:
            parts.append(f"{label}: " + ", ".join(f"{w} {c}" for w, c in sorted(counts.items()) if c))
    if not parts:
        return ""
    return ("\"database is locked\" warnings logged by the peer (all runs of the cell summed; each is a back-off of "
            "200 ms or more): "
            + "; ".join(parts) + ".")


def write_results(text: str) -> None:
    body = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = "## Production\n\n" + text.strip() + "\n"
    pattern = re.compile(r"^## Production\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(body):
        body = pattern.sub(lambda _m: section + "\n", body, count=1)
    else:
        m = re.search(r"^## ", body, re.M)
        body = body[: m.start()] + section + "\n" + body[m.start():] if m else body.rstrip() + "\n\n" + section
    RESULTS.write_text(body.rstrip() + "\n")


if __name__ == "__main__":
    sys.exit(main())
