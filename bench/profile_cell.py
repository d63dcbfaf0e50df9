"""Profile one benchmark cell across ALL threads (``python -m cProfile`` sees only the main
thread, which in these workloads just sleeps in the client's wait).

    python bench/profile_cell.py --engine ours --workload W4 --provider sqlite-file \
        [--n N] [--sort cumtime|tottime] [--limit 40] [--out cell.pstats]

Every thread started after this module loads runs under its own ``cProfile.Profile``; at the end
the per-thread profiles and the main thread's are merged into one ``pstats.Stats`` and the top
``--limit`` entries are printed to stderr (the workload's JSON line still goes to stdout).
Thread time overlaps (4 orchestration + 4 worker threads mostly wait), so read ``tottime`` of
the engine's own functions, not the ``cumtime`` of thread loops.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()
_orig_run = threading.Thread.run


def _profiled_run(self):  # noqa: ANN001, ANN202
    prof = cProfile.Profile()
    with _lock:
        _profiles.append(prof)
    prof.enable()
    try:
        _orig_run(self)
    finally:
        prof.disable()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sort", default="tottime", choices=("cumtime", "tottime", "ncalls"))
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--out", default=None, help="also dump the merged stats to this file")
    args, rest = ap.parse_known_args()
    threading.Thread.run = _profiled_run
    main_prof = cProfile.Profile()
    main_prof.enable()
    try:
        rc = workloads.main(rest)
    finally:
        main_prof.disable()
        threading.Thread.run = _orig_run
    stats = pstats.Stats(main_prof, stream=io.StringIO())
    with _lock:
        for prof in _profiles:
            try:
                stats.add(prof)
            except TypeError:  # a thread that never ran anything
                pass
    if args.out:
        stats.dump_stats(args.out)
    buf = io.StringIO()
    stats.stream = buf
    stats.sort_stats(args.sort).print_stats(args.limit)
    print(f"# merged profile of {len(_profiles) + 1} threads, sorted by {args.sort}", file=sys.stderr)
    print(buf.getvalue(), file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
