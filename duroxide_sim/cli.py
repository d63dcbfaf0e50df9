"""Command-line interface: ``duroxide-sim`` / ``python -m duroxide_sim``.

Commands:

* ``reproduce REF --seed N [--faults JSON] [--provider memory|sqlite] [--nodes K] [--trace]
  [--timeline PATH]`` - re-run one simulated seed of the spec at REF (``path/to/file.py:NAME`` or
  ``package.module:NAME``) and report every broken property with its step; ``--trace`` prints
  the canonical trace; ``--timeline`` writes the run as a self-contained HTML timeline (lanes per
  instance and node over virtual time) and prints its path. Exit 1 when a property fails.

* ``run PATH [--seeds N] [--faults all|swarm|none|JSON]`` - for every scenario module in PATH
  (each defines ``SPEC``, a SimSpec), simulate N seeds with faults, check every property, show
  progress, print a table; a failing scenario prints its first failure and its repro line.
* ``explore PATH [--budget-s S]`` - keep simulating new seeds until the budget runs out or a
  property fails.
* Both take ``--jobs N`` (or ``--jobs auto`` = one per CPU): spread the seeds over N worker
  processes (see :func:`run_seeds`). The rows are the same as with ``--jobs 1`` (the default,
  in-process) except the wall-clock ``seconds``.

* ``export DB --out PATH [--instance ID ...]`` - write the JSON histories of a SQLite database
  (one file per instance in a directory, or one ``.json`` file).
* ``import PATH --db DB`` - load exported histories into a SQLite database (never overwrites).
* ``replay SOURCE --app REF [--latest]`` - replay exported histories (file/directory) or a SQLite
  database against the current code (REF = ``path/to/file.py:NAME``: a SimSpec or a
  ``register(runtime)`` function); every divergence is listed with instance, execution, event
  id, recorded vs current call and source line. ``--latest`` replays in-flight instances with
  the latest registered version (will an upgrade break them?).
* ``show SOURCE [--instance ID]`` - an instance's history as a readable timeline, from a SQLite
  database, an export, or a trace file (``reproduce --trace`` output).

Exit codes everywhere: 0 all good, 1 a property failed / a divergence, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import pathlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["SimWorkerError", "main", "run_seeds"]


def _load_modules(path: pathlib.Path) -> list[Any]:
    """Import every scenario module (``*.py`` defining ``SPEC``) under ``path``."""
    files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_")) if path.is_dir() else [path]
    root = path if path.is_dir() else path.parent
    for entry in (str(pathlib.Path.cwd()), str(root.resolve().parent)):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    modules = []
    for file in files:
        name = f"{root.name}.{file.stem}" if (root / "__init__.py").exists() else f"_duroxide_scenario_{file.stem}"
        try:
            module = importlib.import_module(name)
        except ImportError:
            spec = importlib.util.spec_from_file_location(f"_duroxide_scenario_{file.stem}", file)
            if spec is None or spec.loader is None:
                raise ValueError(f"cannot import {file}") from None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        if hasattr(module, "SPEC"):
            modules.append(module)
    return modules


def _plan(faults: str, rate: float) -> Any:
    from .sim.faults import FaultPlan

    if faults == "all":
        return FaultPlan.all(rate)
    if faults == "none":
        return None
    if faults == "swarm":
        return "swarm"
    return FaultPlan.from_json(faults)


def _targets(modules: list[Any], variants: str | None) -> list[tuple[str, Any]]:
    out = []
    for module in modules:
        if variants is None:
            out.append((module.SPEC.name, module.SPEC))
            continue
        for name, spec in getattr(module, "VARIANTS", {}).items():
            if variants in ("all", name):
                out.append((f"{module.SPEC.name}/{name}", spec))
    return out


def _properties(spec: Any) -> list[str]:
    from .sim.checkers import CHECKERS

    names = [c for c in CHECKERS if c not in ("invariants", "sandbox")]
    if not spec.fault_transparent:
        names = [c for c in names if c not in ("outcome", "idempotency")]
    return names + [getattr(inv, "__name__", "invariant") for inv in spec.invariants]


def _run_targets(targets: list[tuple[str, Any]], seeds: range, args: argparse.Namespace, *, stop_at_first: bool = False,
                 budget_s: float | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runtime.realtime import SystemClock
    from .sim.checkers import run_and_check
    from .sim.harness import Simulation

    clock = SystemClock()
    began = clock.now_ms()
    rows = []
    # A live bar on terminals; plain "scenario: k/n seeds" lines on stderr otherwise (CI logs).
    live = sys.stderr.isatty() or args.progress
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not live, transient=False) as progress:
        for label, spec in targets:
            task = progress.add_task(label, total=len(seeds))
            row: dict[str, Any] = {"scenario": label, "seeds": 0, "faults_injected": 0, "fault_kinds": set(),
                                   "properties": _properties(spec), "failures": 0, "first_failure": None,
                                   "budget_exhausted": 0, "seconds": 0.0}
            t0 = clock.now_ms()
            for seed in seeds:
                sim = Simulation(spec, seed, _plan(args.faults, args.rate), provider=args.provider, nodes=args.nodes,
                                 sandbox=args.sandbox)
                result = run_and_check(sim)
                row["seeds"] += 1
                row["faults_injected"] += sum(result.faults_injected.values())
                row["fault_kinds"].update(result.faults_injected)
                row["budget_exhausted"] += len(result.budget_exhausted)
                if result.failures:
                    row["failures"] += 1
                    if row["first_failure"] is None:
                        row["first_failure"] = result.failures[0].render()
                progress.advance(task)
                if not live and not quiet and (row["seeds"] % max(len(seeds) // 4, 1) == 0 or result.failures and row["failures"] == 1):
                    print(f"{label}: {row['seeds']}/{len(seeds) if len(seeds) < 10**8 else '?'} seeds, "
                          f"{row['failures']} failing", file=sys.stderr, flush=True)
                if stop_at_first and result.failures:
                    break
                if budget_s is not None and (clock.now_ms() - began) / 1000 >= budget_s:
                    break
            row["seconds"] = round((clock.now_ms() - t0) / 1000, 2)
            row["fault_kinds"] = sorted(row["fault_kinds"])
            rows.append(row)
            if stop_at_first and row["failures"]:
                break
    return rows


# --- --jobs N: the seeds of each scenario spread over worker processes ---------------------------
#
# Seeds are independent, so a worker process runs a contiguous chunk of them exactly as the
# in-process loop above does and sends back one small summary per seed; the parent aggregates in
# seed order, so the rows equal --jobs 1's except the wall-clock "seconds". Workers re-import the
# scenario modules from the path given on the command line (specs may hold closures: they are
# never pickled) and are started with "spawn": the parent may hold threads (the live progress
# bar) and locks that a forked child would inherit in an unknown state. Spawning costs one
# interpreter start plus the imports (~0.3 s, in parallel over the workers) once per command.

#: Seeds per chunk for ``run``: about four chunks per worker per scenario, at most 25.
_MAX_CHUNK = 25
#: Seeds per chunk for ``explore`` (an open-ended seed range): small, so that a failure or the
#: end of the budget wastes little work in the other workers.
_EXPLORE_CHUNK = 8


@dataclasses.dataclass(frozen=True)
class _TargetRef:
    """How a worker finds a scenario again: entry ``index`` (labelled ``label``) of
    ``_targets(_load_modules(path), variants)``, re-imported in the worker."""

    path: str
    variants: str | None
    index: int
    label: str


@dataclasses.dataclass(frozen=True)
class _SimOptions:
    faults: str
    rate: float
    provider: str
    nodes: int
    sandbox: bool


@dataclasses.dataclass(frozen=True)
class _SeedSummary:
    seed: int
    faults_injected: dict[str, int]
    failure: str | None  # the seed's first failure, rendered (with its "reproduce:" line)
    budget_exhausted: int


@dataclasses.dataclass(frozen=True)
class _ChunkResult:
    seeds: list[_SeedSummary]
    started_ms: int
    finished_ms: int
    #: (seed or None when loading the scenario failed, the worker's traceback) when a seed raised.
    error: tuple[int | None, str] | None = None


class SimWorkerError(Exception):
    """A worker process raised, or died, while simulating ``label`` over seeds ``first..last``."""

    def __init__(self, label: str, first: int, last: int, detail: str, *, seed: int | None = None,
                 worker_traceback: str = "") -> None:
        where = f"seed {seed}" if seed is not None else (f"seeds {first}-{last}" if last > first else f"seed {first}")
        super().__init__(f"worker error in scenario {label}, {where}: {detail}")
        self.label, self.first, self.last, self.seed = label, first, last, seed
        self.detail, self.worker_traceback = detail, worker_traceback


_WORKER_TARGETS: dict[tuple[str, str | None], list[tuple[str, Any]]] = {}


def _worker_init() -> None:
    # Ctrl-C goes to the whole foreground process group: only the parent reacts (it stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _worker_spec(ref: _TargetRef) -> Any:
    key = (ref.path, ref.variants)
    if key not in _WORKER_TARGETS:
        _WORKER_TARGETS[key] = _targets(_load_modules(pathlib.Path(ref.path)), ref.variants)
    targets = _WORKER_TARGETS[key]
    if ref.index >= len(targets) or targets[ref.index][0] != ref.label:
        raise RuntimeError(f"the worker found other scenarios in {ref.path} than the parent: {[t[0] for t in targets]}")
    return targets[ref.index][1]


def _run_chunk(ref: _TargetRef, options: _SimOptions, first: int, stop: int, stop_at_first: bool,
               deadline_ms: int | None) -> _ChunkResult:
    """Worker side: seeds ``first..stop-1`` of one scenario (at least one; with ``stop_at_first`` up to
    the first failing seed; with a deadline until the wall clock passes it, checked after each seed)."""
    import traceback

    from .runtime.realtime import SystemClock
    from .sim.checkers import run_and_check
    from .sim.harness import Simulation

    clock = SystemClock()
    try:
        spec = _worker_spec(ref)
    except Exception:  # noqa: BLE001 - sent back and reported by the parent
        return _ChunkResult([], clock.now_ms(), clock.now_ms(), (None, traceback.format_exc()))
    started = clock.now_ms()
    out: list[_SeedSummary] = []
    for seed in range(first, stop):
        try:
            sim = Simulation(spec, seed, _plan(options.faults, options.rate), provider=options.provider,
                             nodes=options.nodes, sandbox=options.sandbox)
            result = run_and_check(sim)
        except Exception:  # noqa: BLE001 - sent back and reported by the parent
            return _ChunkResult(out, started, clock.now_ms(), (seed, traceback.format_exc()))
        out.append(_SeedSummary(seed, dict(result.faults_injected),
                                result.failures[0].render() if result.failures else None, len(result.budget_exhausted)))
        if stop_at_first and result.failures:
            break
        if deadline_ms is not None and clock.now_ms() >= deadline_ms:
            break
    return _ChunkResult(out, started, clock.now_ms())


@contextmanager
def _process_pool(jobs: int) -> Iterator[Any]:
    """A spawn-context process pool; on any exception (a worker error, Ctrl-C) the queued chunks
    are cancelled and the workers terminated and reaped before the exception propagates."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
    try:
        yield pool
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _stop_pool(pool: Any) -> None:
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:  # a running chunk may take seconds: do not wait for it
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    pool.shutdown(wait=True)


def _chunk_result(fut: Any, label: str, lo: int, hi: int) -> _ChunkResult:
    from concurrent.futures.process import BrokenProcessPool

    try:
        chunk = fut.result()
    except BrokenProcessPool as exc:
        raise SimWorkerError(label, lo, hi - 1, "a worker process died abruptly (killed, out of memory, or the "
                             "interpreter crashed) while these seeds were being run") from exc
    except Exception as exc:  # e.g. a result that cannot be pickled
        cause = exc.__cause__
        raise SimWorkerError(label, lo, hi - 1, f"{type(exc).__name__}: {exc}",
                             worker_traceback=str(cause) if cause is not None else "") from exc
    if chunk.error is not None:
        seed, text = chunk.error
        last = text.strip().splitlines()[-1] if text.strip() else "error"
        detail = last if seed is not None else f"loading the scenario failed: {last}"
        raise SimWorkerError(label, lo, hi - 1, detail, seed=seed, worker_traceback=text)
    return chunk


class _RowBuilder:
    """One scenario's row, fed chunk summaries in completion order, aggregated in seed order."""

    def __init__(self, label: str, spec: Any, total: int, progress: Any, lines: bool) -> None:
        self.label, self.spec, self.total = label, spec, total
        self.progress, self.lines = progress, lines
        self.task = progress.add_task(label, total=total)
        self.summaries: list[_SeedSummary] = []
        self.done = self.failing = 0
        self.started_ms: int | None = None
        self.finished_ms: int | None = None

    def add(self, chunk: _ChunkResult) -> None:
        self.summaries.extend(chunk.seeds)
        self.started_ms = chunk.started_ms if self.started_ms is None else min(self.started_ms, chunk.started_ms)
        self.finished_ms = chunk.finished_ms if self.finished_ms is None else max(self.finished_ms, chunk.finished_ms)
        before, failing_before = self.done, self.failing
        self.done += len(chunk.seeds)
        self.failing += sum(1 for s in chunk.seeds if s.failure is not None)
        self.progress.advance(self.task, len(chunk.seeds))
        quarter = max(self.total // 4, 1)
        if self.lines and (self.done // quarter > before // quarter or (self.failing and not failing_before)):
            print(f"{self.label}: {self.done}/{self.total if self.total < 10**8 else '?'} seeds, "
                  f"{self.failing} failing", file=sys.stderr, flush=True)

    def row(self, *, upto: int | None = None, seconds: float | None = None) -> dict[str, Any]:
        """The row over the seeds run, in seed order, up to and including seed ``upto``."""
        row = _aggregate(self.label, _properties(self.spec), self.summaries, upto=upto)
        if seconds is None and self.started_ms is not None and self.finished_ms is not None:
            seconds = (self.finished_ms - self.started_ms) / 1000
        row["seconds"] = round(seconds or 0.0, 2)
        return row


def _aggregate(label: str, properties: list[str], summaries: list[_SeedSummary], *, upto: int | None = None) -> dict[str, Any]:
    """The row ``_run_targets`` builds, from per-seed summaries (any order; duplicates rejected)."""
    row: dict[str, Any] = {"scenario": label, "seeds": 0, "faults_injected": 0, "fault_kinds": set(),
                           "properties": properties, "failures": 0, "first_failure": None,
                           "budget_exhausted": 0, "seconds": 0.0}
    ordered = sorted(summaries, key=lambda s: s.seed)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if a.seed == b.seed:
            raise ValueError(f"scenario {label}: seed {a.seed} was run twice")
    for s in ordered:
        if upto is not None and s.seed > upto:
            break
        row["seeds"] += 1
        row["faults_injected"] += sum(s.faults_injected.values())
        row["fault_kinds"].update(s.faults_injected)
        row["budget_exhausted"] += s.budget_exhausted
        if s.failure is not None:
            row["failures"] += 1
            if row["first_failure"] is None:
                row["first_failure"] = s.failure
    row["fault_kinds"] = sorted(row["fault_kinds"])
    return row


def _chunk_size(seeds: int, jobs: int) -> int:
    return max(1, min(_MAX_CHUNK, -(-seeds // (jobs * 4))))


def _run_targets_jobs(targets: list[tuple[str, Any]], refs: list[_TargetRef], seeds: range, options: _SimOptions,
                      jobs: int, *, progress: str = "auto", stop_at_first: bool = False,
                      budget_s: float | None = None) -> list[dict[str, Any]]:
    """``_run_targets`` on ``jobs`` worker processes. ``progress``: "auto" (a bar on a terminal,
    else plain stderr lines), "bar", "lines" or "none".

    Without ``stop_at_first``/``budget_s`` (``run``) every chunk of every scenario is queued at
    once, in scenario and seed order, so no worker idles at a scenario boundary; a row's
    ``seconds`` is then the wall-clock span from its first chunk's start to its last chunk's end
    (spans of neighbouring scenarios overlap). Otherwise (``explore``) scenarios run one after
    another with about two chunks per worker in flight; on a failure no new chunks start, the
    lower-seeded chunks still in flight finish, and the row covers the seeds up to the lowest
    failing seed, as with one process (the seeds above it that ran are not counted).
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .runtime.realtime import SystemClock

    if progress == "auto":
        progress = "bar" if sys.stderr.isatty() else "lines"
    clock = SystemClock()
    began = clock.now_ms()
    rows: list[dict[str, Any]] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=progress != "bar", transient=False) as bar, _process_pool(jobs) as pool:
        if not stop_at_first and budget_s is None:
            size = _chunk_size(len(seeds), jobs)
            builders: list[_RowBuilder] = []
            inflight: dict[Any, tuple[int, _RowBuilder, int, int]] = {}
            for (label, spec), ref in zip(targets, refs, strict=True):
                builder = _RowBuilder(label, spec, len(seeds), bar, progress == "lines")
                builders.append(builder)
                for lo in range(seeds.start, seeds.stop, size):
                    hi = min(lo + size, seeds.stop)
                    inflight[pool.submit(_run_chunk, ref, options, lo, hi, False, None)] = (len(inflight), builder, lo, hi)
            while inflight:
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: inflight[f][0]):
                    _order, builder, lo, hi = inflight.pop(fut)
                    builder.add(_chunk_result(fut, builder.label, lo, hi))
            return [b.row() for b in builders]

        deadline = None if budget_s is None else began + int(budget_s * 1000)
        for (label, spec), ref in zip(targets, refs, strict=True):
            builder = _RowBuilder(label, spec, len(seeds), bar, progress == "lines")
            t0 = clock.now_ms()
            window: dict[Any, tuple[int, int]] = {}
            nxt = seeds.start
            lowest: int | None = None
            while True:
                while lowest is None and nxt < seeds.stop and len(window) < 2 * jobs:
                    over = deadline is not None and clock.now_ms() >= deadline
                    if over and nxt != seeds.start:
                        break
                    hi = min(nxt + (1 if over else _EXPLORE_CHUNK), seeds.stop)  # past the budget: one seed, as in-process
                    window[pool.submit(_run_chunk, ref, options, nxt, hi, stop_at_first, deadline)] = (nxt, hi)
                    nxt = hi
                if not window:
                    break
                done, _ = wait(window, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: window[f][0]):
                    lo, hi = window.pop(fut)
                    chunk = _chunk_result(fut, label, lo, hi)
                    builder.add(chunk)
                    failing = [s.seed for s in chunk.seeds if s.failure is not None]
                    if stop_at_first and failing:
                        lowest = min(failing) if lowest is None else min(lowest, *failing)
                if lowest is not None:
                    for fut, (lo, _hi) in list(window.items()):
                        if lo > lowest and fut.cancel():
                            del window[fut]
            row = builder.row(upto=lowest, seconds=(clock.now_ms() - t0) / 1000)
            rows.append(row)
            if stop_at_first and row["failures"]:
                break
    return rows


def run_seeds(path: str | pathlib.Path, seeds: range, *, jobs: int = 1, scenario: str | None = None,
              variants: str | None = None, faults: str = "all", rate: float = 0.05, provider: str = "memory",
              nodes: int = 2, sandbox: bool = False, stop_at_first: bool = False, budget_s: float | None = None,
              progress: str = "none") -> list[dict[str, Any]]:
    """Simulate the scenario modules at ``path`` (or only the one labelled ``scenario``) over
    ``seeds`` and check every property, as ``duroxide-sim run`` does; one ``--json`` row per
    scenario. ``jobs`` 1 runs in this process; more spreads the seeds over that many worker
    processes (same rows except ``seconds``). ``progress``: "none", "lines", "bar" or "auto".
    Raises :class:`SimWorkerError` when a worker raises or dies (the pool is stopped first).
    Workers are started with "spawn", which re-imports the caller's ``__main__`` module: a script
    calling this with ``jobs > 1`` needs the ``if __name__ == "__main__":`` guard."""
    modules = _load_modules(pathlib.Path(path))
    targets = _targets(modules, variants)
    refs = [_TargetRef(str(path), variants, i, label) for i, (label, _spec) in enumerate(targets)]
    picked = [i for i, (label, _spec) in enumerate(targets) if scenario is None or label == scenario]
    if scenario is not None and not picked:
        raise ValueError(f"no scenario {scenario!r} in {path} (found: {', '.join(t[0] for t in targets)})")
    targets, refs = [targets[i] for i in picked], [refs[i] for i in picked]
    if jobs <= 1:
        args = argparse.Namespace(faults=faults, rate=rate, provider=provider, nodes=nodes, sandbox=sandbox,
                                  progress=progress == "bar")
        return _run_targets(targets, seeds, args, stop_at_first=stop_at_first, budget_s=budget_s, quiet=progress == "none")
    return _run_targets_jobs(targets, refs, seeds, _SimOptions(faults, rate, provider, nodes, sandbox), jobs,
                             progress=progress, stop_at_first=stop_at_first, budget_s=budget_s)


def _jobs(text: str) -> int:
    """``--jobs``: a positive integer, or ``auto`` (one per CPU)."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    failed = any(r["failures"] for r in rows)
    if args.json:
        print(json.dumps({"ok": not failed, "scenarios": rows}, indent=2, sort_keys=True))
        return 1 if failed else 0
    console = Console(highlight=False, width=max(Console().width, 150))
    table = Table(title="duroxide-sim: scenario properties under faults")
    for col in ("scenario", "seeds", "faults injected", "fault kinds", "properties checked", "failures", "seconds"):
        table.add_column(col, justify="right" if col in ("seeds", "faults injected", "failures", "seconds") else "left")
    for r in rows:
        table.add_row(r["scenario"], str(r["seeds"]), str(r["faults_injected"]), str(len(r["fault_kinds"])),
                      ", ".join(r["properties"]), str(r["failures"]), f"{r['seconds']:.2f}")
    console.print(table)
    for r in rows:
        if r["first_failure"]:
            console.print(f"\n[bold red]FAILED[/] {r['scenario']}: {r['failures']} of {r['seeds']} seeds broke a property; first:")
            console.print(r["first_failure"], markup=False)
    if not failed:
        console.print("all properties held")
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.path)
    if not path.exists():
        print(f"duroxide-sim: no such file or directory: {path}", file=sys.stderr)
        return 2
    try:
        modules = _load_modules(path)
        _plan(args.faults, args.rate)
    except Exception as exc:  # noqa: BLE001 - report import problems as input errors
        print(f"duroxide-sim: cannot load scenarios from {path}: {exc}", file=sys.stderr)
        return 2
    targets = _targets(modules, args.variants)
    if not targets:
        print(f"duroxide-sim: no scenario modules (defining SPEC{' and VARIANTS' if args.variants else ''}) in {path}", file=sys.stderr)
        return 2
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.jobs > 1:
        return _cmd_run_jobs(targets, args)
    if args.command == "explore":
        rows = _run_targets(targets, range(args.first_seed, args.first_seed + 10**9), args, stop_at_first=True,
                            budget_s=args.budget_s)
    else:
        rows = _run_targets(targets, seeds, args)
    return _report(rows, args)


def _cmd_run_jobs(targets: list[tuple[str, Any]], args: argparse.Namespace) -> int:
    refs = [_TargetRef(args.path, args.variants, i, label) for i, (label, _spec) in enumerate(targets)]
    options = _SimOptions(args.faults, args.rate, args.provider, args.nodes, args.sandbox)
    progress = "bar" if sys.stderr.isatty() or args.progress else "lines"
    try:
        if args.command == "explore":
            rows = _run_targets_jobs(targets, refs, range(args.first_seed, args.first_seed + 10**9), options, args.jobs,
                                     progress=progress, stop_at_first=True, budget_s=args.budget_s)
        else:
            rows = _run_targets_jobs(targets, refs, range(args.first_seed, args.first_seed + args.seeds), options,
                                     args.jobs, progress=progress)
    except SimWorkerError as exc:
        if exc.worker_traceback:
            print(exc.worker_traceback.rstrip(), file=sys.stderr)
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("duroxide-sim: interrupted; the worker processes were stopped", file=sys.stderr)
        return 130
    return _report(rows, args)


def load_spec(ref: str) -> Any:
    """Resolve ``path/to/file.py:NAME`` or ``package.module:NAME`` to a SimSpec."""
    from .sim.harness import SimSpec
    from .testing.replay import load_app

    obj = load_app(ref)
    if not isinstance(obj, SimSpec):
        raise ValueError(f"{ref} is a {type(obj).__name__}, not a SimSpec")
    return obj


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .sim.checkers import run_and_check
    from .sim.faults import FaultPlan
    from .sim.harness import Simulation

    try:
        spec = load_spec(args.ref)
        faults: Any = "swarm" if args.faults == "swarm" else (None if args.faults == "none" else FaultPlan.from_json(args.faults))
    except (ValueError, ImportError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    sim = Simulation(spec, args.seed, faults, provider=args.provider, nodes=args.nodes, sandbox=args.sandbox)
    result = run_and_check(sim)
    if args.trace:
        for line in result.trace:
            print(line)
    summary = {
        "spec": spec.name,
        "seed": args.seed,
        "plan": sim.plan.describe(),
        "steps": result.steps,
        "trace_sha256": result.trace_hash,
        "faults_injected": result.faults_injected,
        "failures": [{"checker": f.checker, "instance": f.instance, "step": f.step, "message": f.message} for f in result.failures],
    }
    timeline = None
    if args.timeline:
        from .sim.timeline import write_timeline

        timeline = write_timeline(result, args.timeline, spec_name=spec.name, repro=sim.repro_command())
        summary["timeline"] = str(timeline)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"{spec.name} seed {args.seed}: {result.steps} steps, faults: {sim.plan.describe()}, trace {result.trace_hash[:16]}")
        for f in result.failures:
            print(f.render())
        if not result.failures:
            print("all properties hold")
        if timeline is not None:
            print(f"timeline: {timeline}")
    return 1 if result.failures else 0


def _open_db(path: str, *, must_exist: bool) -> Any:
    from .providers.sqlite import SqliteProvider
    from .runtime.realtime import SystemClock

    if must_exist and not pathlib.Path(path).is_file():
        raise ValueError(f"no such database file: {path}")
    return SqliteProvider.open(path, clock=SystemClock())


def _cmd_export(args: argparse.Namespace) -> int:
    from .errors import DuroxideError
    from .runtime.history_io import export_to_path

    try:
        provider = _open_db(args.db, must_exist=True)
        written = export_to_path(provider, args.out, args.instance or None)
    except (ValueError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    print(f"exported {len(written)} file(s) to {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .errors import DuroxideError
    from .runtime.history_io import import_documents, load_documents

    try:
        docs = load_documents(args.path)
        provider = _open_db(args.db, must_exist=False)
        count = import_documents(provider, docs)
    except (ValueError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    print(f"imported {len(docs)} instance(s), {count} execution(s) into {args.db}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from .errors import DuroxideError
    from .testing.replay import load_app, replay_source

    try:
        app = load_app(args.app)
        divergences = replay_source(args.source, app, latest=args.latest)
    except (ValueError, TypeError, ImportError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([{"instance": d.instance, "execution": d.execution_id, "in_flight": d.in_flight, "message": d.message}
                          for d in divergences], indent=2))
    elif divergences:
        what = "in-flight instance(s) would break on upgrade" if args.latest else "execution(s) diverge from the current code"
        print(f"{len(divergences)} {what}:")
        for d in divergences:
            print(f"  {d.render()}")
    else:
        print("every history replays cleanly" if not args.latest else "no in-flight instance would break")
    return 1 if divergences else 0


def _event_line(ev: Any, t0: int) -> str:
    from .core.events import to_dict

    data = {k: v for k, v in to_dict(ev).items()
            if k not in ("kind", "event_id", "source_event_id", "timestamp_ms", "instance_id", "execution_id", "duroxide_version")}
    src = f" <- #{ev.source_event_id}" if ev.source_event_id is not None else ""
    detail = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)[:80]}" for k, v in data.items())
    return f"  #{ev.event_id:<4} +{ev.timestamp_ms - t0:>9} ms  {type(ev).__name__}{src}  {detail}"


def _cmd_show(args: argparse.Namespace) -> int:
    from .errors import DuroxideError
    from .runtime.history_io import document_events, export_instance, load_documents

    source = pathlib.Path(args.source)
    try:
        if source.is_file() and source.suffix in (".jsonl", ".trace", ".txt"):
            lines = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
            for rec in lines:
                if args.instance and rec.get("instance") not in (args.instance, None):
                    continue
                rest = {k: v for k, v in rec.items() if k not in ("step", "t", "op")}
                print(f"step {rec.get('step'):>6}  t={rec.get('t'):>10} ms  {rec.get('op'):<14} {json.dumps(rest, sort_keys=True)[:160]}")
            return 0
        if source.is_file() and source.suffix != ".json":
            provider = _open_db(str(source), must_exist=True)
            ids = [args.instance] if args.instance else list(reversed(provider.list_instances()))
            docs = [export_instance(provider, i) for i in ids]
        else:
            docs = [d for d in load_documents(source) if not args.instance or d["instance_id"] == args.instance]
    except (ValueError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    if not docs:
        print(f"duroxide-sim: no instance {args.instance!r} in {source}", file=sys.stderr)
        return 2
    for doc in docs:
        print(f"{doc['instance_id']}  ({doc.get('orchestration_name')} {doc.get('orchestration_version')})")
        for execution_id, events in document_events(doc).items():
            print(f" execution {execution_id}")
            t0 = events[0].timestamp_ms if events else 0
            for ev in events:
                print(_event_line(ev, t0))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duroxide-sim", description="Durable workflows: run, test and simulate.")
    sub = parser.add_subparsers(dest="command")
    for command, help_text in (("run", "run scenario specs over many seeds and check their properties"),
                               ("explore", "keep running seeds until a time budget runs out or a property fails")):
        run = sub.add_parser(command, help=help_text)
        run.add_argument("path", help="a directory of scenario modules (each defining SPEC), or one module file")
        run.add_argument("--seeds", type=int, default=100, help="seeds per scenario (run; default 100)")
        run.add_argument("--first-seed", type=int, default=0)
        run.add_argument("--budget-s", type=float, default=60.0, help="time budget in seconds (explore; default 60)")
        run.add_argument("--faults", default="all", help="'all' (default), 'swarm', 'none' or a fault plan as JSON")
        run.add_argument("--rate", type=float, default=0.05, help="per-opportunity fault rate for --faults all")
        run.add_argument("--variants", default=None, help="run planted-bug variants: a name or 'all'")
        run.add_argument("--provider", choices=("memory", "sqlite"), default="memory")
        run.add_argument("--nodes", type=int, default=2)
        run.add_argument("--sandbox", action="store_true", help="flag clock/random/I-O calls in orchestration code")
        run.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
        run.add_argument("--json", action="store_true", help="print results as JSON")
        run.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                         help="worker processes for the seeds: a number or 'auto' (one per CPU); default 1, in-process. "
                              "Same results except wall-clock seconds (explore: the lowest failing seed; a few more "
                              "seeds than needed may run)")
        run.set_defaults(func=_cmd_run)
    exp = sub.add_parser("export", help="write the JSON histories of a SQLite database")
    exp.add_argument("db")
    exp.add_argument("--out", required=True, help="a directory, or a .json file")
    exp.add_argument("--instance", action="append", help="only these instances (repeatable)")
    exp.set_defaults(func=_cmd_export)
    imp = sub.add_parser("import", help="load exported histories into a SQLite database")
    imp.add_argument("path")
    imp.add_argument("--db", required=True)
    imp.set_defaults(func=_cmd_import)
    rpl = sub.add_parser("replay", help="replay recorded histories against the current code")
    rpl.add_argument("source", help="an export (file or directory) or a SQLite database")
    rpl.add_argument("--app", required=True, help="path/to/file.py:NAME (a SimSpec or a register(runtime) function)")
    rpl.add_argument("--latest", action="store_true", help="replay in-flight instances with the latest version")
    rpl.add_argument("--json", action="store_true")
    rpl.set_defaults(func=_cmd_replay)
    shw = sub.add_parser("show", help="print an instance's history as a timeline")
    shw.add_argument("source", help="a SQLite database, an export, or a trace file (.jsonl)")
    shw.add_argument("--instance")
    shw.set_defaults(func=_cmd_show)
    rep = sub.add_parser("reproduce", help="re-run one simulated seed and report its failures")
    rep.add_argument("ref", help="the SimSpec: path/to/file.py:NAME or package.module:NAME")
    rep.add_argument("--seed", type=int, required=True)
    rep.add_argument("--faults", default="swarm", help="fault plan JSON, 'swarm' (default) or 'none'")
    rep.add_argument("--provider", choices=("memory", "sqlite"), default="memory")
    rep.add_argument("--nodes", type=int, default=2)
    rep.add_argument("--sandbox", action="store_true", help="flag clock/random/I-O calls in orchestration code")
    rep.add_argument("--trace", action="store_true", help="print the canonical trace")
    rep.add_argument("--json", action="store_true", help="print a JSON summary")
    rep.add_argument("--timeline", metavar="PATH", default=None, help="write an HTML timeline of the run to PATH")
    rep.set_defaults(func=_cmd_reproduce)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))
