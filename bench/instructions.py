"""Instructions per simulated activity: a deterministic cost measure for noisy machines.

Timings on a shared 2-core VM drift by 10-20 % within an hour and swing more between runs, which
hides the few-percent changes hot-path work is made of. This benchmark counts the CPU
instructions (valgrind's callgrind, ``Ir``) that CPython executes for the W4-shaped work of
``sim_throughput.py`` (instances x 5 sequential activities): once with ``--small`` instances and
once with ``--large``, and divides the difference by the extra activities, so interpreter start-up,
imports and set-up cancel out. The count is the same from run to run (``PYTHONHASHSEED=0``; the
simulation is seeded), so one run per cell is enough and a change of 1 % is real.

    python bench/instructions.py                  # this checkout
    python bench/instructions.py --base HEAD~3    # and a git revision, side by side (ratios)

Configurations (each a fresh process under callgrind):

* ``alone``: the production runtime alone on the in-memory provider, stepped by
  SequentialDriver (the simulator's ceiling, as in sim_throughput.py);
* ``sqlite-memory`` / ``sqlite-file``: the same on the SQLite provider (an in-memory database /
  a file): the production path's Python and SQLite's C code, on one thread, for changes to the
  SQLite provider (its I/O and the threads' hand-offs are not instructions and are not seen);
* ``sim-bare``: the simulator with one simulated process, no cache verification, no provider
  self-checks (the harness's own cost over ``alone``);
* ``sim-noverify``: the simulator's defaults (two processes, provider self-checks) without the
  from-scratch check of cached turns;
* ``sim``: the simulator's defaults, faults off (the issue's W4-shaped target);
* ``sim-faults``: the defaults with every fault kind at 5 %.

Needs ``valgrind`` (Debian: ``apt-get install valgrind``); prints what is missing otherwise.
Not a timing: instructions are not time (cache misses and branch mispredictions are not
counted), but on one machine and one interpreter they track CPU time closely for this work.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
K = 5  # activities per instance (sim_throughput.K)

CONFIGS: dict[str, str] = {
    "alone": "st.bench_w4_runtime_alone(n, 1)",
    "sqlite-memory": "st.bench_w4_runtime_alone(n, 1, 'sqlite-memory')",
    "sqlite-file": "st.bench_w4_runtime_alone(n, 1, 'sqlite-file')",
    "sim-bare": "Simulation(st.w4_spec(n), 0, FaultPlan.none(), max_steps=2_000_000, nodes=1, verify_cache=False,"
                " check_invariants=False).run()",
    "sim-noverify": "Simulation(st.w4_spec(n), 0, FaultPlan.none(), max_steps=2_000_000, verify_cache=False).run()",
    "sim": "Simulation(st.w4_spec(n), 0, FaultPlan.none(), max_steps=2_000_000).run()",
    "sim-faults": "Simulation(st.w4_spec(n), 0, FaultPlan.all(0.05), max_steps=2_000_000).run()",
}

#: Measured when --configs is not given (the SQLite ones on request: they take longest).
DEFAULT_CONFIGS = ("alone", "sim-bare", "sim-noverify", "sim", "sim-faults")

_CHILD = """
import sys
root = {root!r}
sys.path[:0] = [root, root + "/bench"]
import sim_throughput as st
from duroxide_sim.sim.harness import Simulation
from duroxide_sim.sim.faults import FaultPlan
n = {n}
if n:
    {call}
"""

_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def count(root: pathlib.Path, config: str, instances: int) -> int:
    """Instructions executed by a fresh interpreter running ``config`` with ``instances``."""
    code = _CHILD.format(root=str(root), n=instances, call=CONFIGS[config])
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code],
        capture_output=True, text=True, env=env, cwd=str(root), check=False,
    )
    found = _COLLECTED.search(proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{config} ({instances} instances) under callgrind failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return int(found.group(1))


def per_activity(root: pathlib.Path, config: str, small: int, large: int) -> int:
    return round((count(root, config, large) - count(root, config, small)) / ((large - small) * K))


def checkout(ref: str, into: pathlib.Path) -> pathlib.Path:
    """``git archive`` of ``ref`` unpacked into ``into`` (the working tree is left alone)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"git archive {ref!r} failed: {archive.stderr.decode(errors='replace').strip()}")
    tar_path = into / "src.tar"
    tar_path.write_bytes(archive.stdout)
    with tarfile.open(tar_path) as tar:
        tar.extractall(into, filter="data")
    tar_path.unlink()
    return into


def describe(root: pathlib.Path) -> str:
    rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                         text=True, check=False).stdout.strip()
    return f"this checkout ({rev})" if root == ROOT else str(root)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="a git revision to measure beside this checkout (git archive)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, of {', '.join(CONFIGS)} (default: {', '.join(DEFAULT_CONFIGS)})")
    ap.add_argument("--small", type=int, default=100, help="instances of the smaller run (default 100)")
    ap.add_argument("--large", type=int, default=300, help="instances of the larger run (default 300)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="callgrind runs at once")
    args = ap.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        ap.error(f"unknown configuration(s) {', '.join(unknown)}; choose from {', '.join(CONFIGS)}")
    if not 0 <= args.small < args.large:
        ap.error("--small must be at least 0 and below --large")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind); nothing measured", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="dx-instr-") as tmp:
        roots = [ROOT] + ([checkout(args.base, pathlib.Path(tmp))] if args.base else [])
        cells = [(r, c) for c in configs for r in roots]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = {cell: pool.submit(per_activity, cell[0], cell[1], args.small, args.large) for cell in cells}
            results = {cell: f.result() for cell, f in futures.items()}
    print(f"Instructions per activity (callgrind Ir; W4-shaped {args.small} -> {args.large} instances x {K}; "
          f"CPython {sys.version.split()[0]})")
    head = ["configuration", describe(ROOT)] + ([f"base {args.base}", "this / base"] if args.base else [])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for c in configs:
        row = [c, f"{results[(ROOT, c)]:,}"]
        if args.base:
            base = results[(roots[1], c)]
            row += [f"{base:,}", f"{results[(ROOT, c)] / base:.3f}"]
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
