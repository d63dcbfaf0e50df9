"""Count the SQL statements one benchmark cell makes, by statement shape, on all threads.

    python bench/sql_statements.py --workload W5 [--provider sqlite-file|sqlite-memory] [--n N] [--limit 30]

Runs the cell as ``workloads.py --engine ours`` does (the production runtime, its threads, the
tuned settings) with SQLite's trace callback on every connection the provider opens, and prints
to stderr how many statements of each shape ran while the workload ran (set-up and shutdown
excluded), with literals replaced by ``?`` (strings) and ``N`` (numbers), most frequent first,
and the total per unit of work (per instance for W1/W4/W5, per activity or execution for the
rest). The workload's JSON line still goes to stdout.

What it is for: the SQLite provider's cost is mostly its statements (each pays the sqlite3
module's call and GIL hand-off and SQLite's own work), and counts, unlike timings on a noisy VM,
are exact. A change meant to save a statement per ack shows here as a number that moved.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import threading
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import workloads  # noqa: E402

_STRING = re.compile(r"'(?:[^']|'')*'")
_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?\b")
_SPACE = re.compile(r"\s+")


def shape(sql: str) -> str:
    """``sql`` as SQLite's trace callback reports it (bound values expanded) with its literals
    replaced: strings by ``?``, numbers by ``N``, runs of white space by one space."""
    return _SPACE.sub(" ", _NUMBER.sub("N", _STRING.sub("?", sql))).strip()


class StatementCounter:
    """Counts statement shapes from trace callbacks of any thread while ``active``."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.active = False
        self._lock = threading.Lock()

    def __call__(self, sql: str) -> None:
        if self.active:
            key = shape(sql)
            with self._lock:
                self.counts[key] += 1

    def install(self, provider_cls: type) -> Callable[[], None]:
        """Trace every connection ``provider_cls`` opens from now on (its ``_connect``); returns
        the call that puts the class back as it was."""
        original = provider_cls.__dict__["_connect"]
        counter = self

        def _connect(provider, *args, **kwargs):  # noqa: ANN001, ANN202
            conn = original(provider, *args, **kwargs)
            conn.set_trace_callback(counter)
            return conn

        provider_cls._connect = _connect
        return lambda: setattr(provider_cls, "_connect", original)


def units(workload: str, n: int) -> tuple[int, str]:
    """What the per-unit figure divides by: (count, name)."""
    if workload == "W1":
        return n + workloads.W1_WARMUP, "instance"
    if workload in ("W4", "W5"):
        return n, "instance"
    return n, "execution" if workload == "W6" else "activity"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=sorted(workloads.DEFAULT_N), required=True)
    ap.add_argument("--provider", choices=("sqlite-file", "sqlite-memory"), default="sqlite-file")
    ap.add_argument("--n", type=int, default=None, help="override the workload size")
    ap.add_argument("--limit", type=int, default=30, help="shapes to print (most frequent first)")
    args = ap.parse_args(argv)
    n = args.n if args.n is not None else workloads.DEFAULT_N[args.workload]

    from duroxide_sim.providers.sqlite import SqliteProvider

    counter = StatementCounter()
    uninstall = counter.install(SqliteProvider)
    original_run = workloads.run_workload

    def counted_run(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        counter.active = True
        try:
            return original_run(*a, **kw)
        finally:
            counter.active = False

    workloads.run_workload = counted_run
    try:
        rc = workloads.main(["--engine", "ours", "--workload", args.workload, "--provider", args.provider,
                             *(["--n", str(n)] if args.n is not None else [])])
    finally:
        workloads.run_workload = original_run
        uninstall()
    total = sum(counter.counts.values())
    per, unit = units(args.workload, n)
    out = sys.stderr
    print(f"# {args.workload} on {args.provider}: {total:,} statements, {total / per:.1f} per {unit} "
          f"({len(counter.counts)} shapes)", file=out)
    for sql, count in counter.counts.most_common(args.limit):
        print(f"{count:8,d} {count / per:7.2f}/{unit}  {sql[:160]}", file=out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
