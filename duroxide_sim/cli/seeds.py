"""Running seeds of scenarios: what ``duroxide-sim run`` / ``explore`` (and :func:`run_seeds`) do.

A scenario module (``*.py`` not starting with ``_``) defines ``SPEC``, a SimSpec, and optionally
``VARIANTS`` (planted-bug specs by name); :func:`_load_modules` imports them from a directory or
one file and :func:`_targets` turns them into ``(label, spec)`` pairs. Each seed of each target is
simulated with the chosen fault plan and checked by ``run_and_check``; the results of a scenario
are folded into one row (the ``--json`` row: seeds, faults injected, fault kinds, properties
checked, failures, the first failure with its repro line, budget exhaustions, seconds).

Two paths:

* In-process (``--jobs 1``, the default): :func:`_run_targets` runs the seeds one after another
  in this process, with a rich progress bar on a terminal (or with ``--progress``) and plain
  ``scenario: k/n seeds`` lines on stderr otherwise.
* ``--jobs N``: :func:`_run_targets_jobs` spreads contiguous chunks of seeds over N worker
  processes started with "spawn" (:func:`_process_pool`). Workers re-import the scenario modules
  from the path (:func:`_worker_spec`; specs may hold closures and are never pickled) and run
  :func:`_run_chunk`, which is pickled by reference and so must live in an importable module -
  this one, ``duroxide_sim.cli.seeds``. Each worker sends back one small :class:`_SeedSummary`
  per seed; a worker that raises or dies becomes a :class:`SimWorkerError` after the pool has
  been stopped (also on Ctrl-C).

Determinism: a seed's run depends only on the spec, the seed and the options, never on the
process that runs it, and the parent aggregates summaries in seed order (:func:`_aggregate`).
So the rows of ``--jobs N`` are identical to those of one process except the wall-clock
``seconds``; for ``explore`` the row stops at the lowest failing seed, as in-process (seeds above
it that happened to run in other workers are not counted).

:func:`run_seeds` is the programmatic entry point for both paths (used by ``bench/``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import pathlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..sim.shrink import SHRINK_RUNS, shrink_failure  # noqa: F401 - SHRINK_RUNS: importable here as before
from ..testing.replay import _forget_if_elsewhere, use_flat_directory

__all__ = ["SimWorkerError", "run_seeds"]


def _load_modules(path: pathlib.Path, problems: list[tuple[str, str]] | None = None) -> list[Any]:
    """Import every scenario module (``*.py`` defining ``SPEC``) under ``path``.

    A directory with ``__init__.py`` is a package: its modules are imported as
    ``<dir>.<module>`` (their relative imports work). A flat directory's modules are imported by
    file location, with the directory on ``sys.path`` (so ``from _helpers import x`` works).
    Either way a module is registered in ``sys.modules`` under its name, and a module of the
    same name loaded earlier from another directory is replaced, not reused.

    With ``problems`` (a list), a module that fails to import is recorded there as ``(file,
    reason)`` and the others still load; without it the first failure raises."""
    files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_")) if path.is_dir() else [path]
    root = (path if path.is_dir() else path.parent).resolve()
    package = (root / "__init__.py").exists() and root.name.isidentifier()
    # The package's parent goes first (its modules import as ``<dir>.<module>``); the working
    # directory last (a scenario may import the application it tests from there, but a file in
    # it named like an installed or standard-library module must not shadow that module).
    if package and str(root.parent) not in sys.path:
        sys.path.insert(0, str(root.parent))
    if str(pathlib.Path.cwd()) not in sys.path:
        sys.path.append(str(pathlib.Path.cwd()))
    if not package:
        use_flat_directory(root)  # last on sys.path; another directory's `_common` is forgotten
    if package:
        _forget_if_elsewhere(root.name, root / "__init__.py")
    modules = []
    for file in files:
        try:
            module = _import_scenario(file.resolve(), root, package)
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own code: reported per file
            if problems is None:
                raise
            if isinstance(exc, SystemExit):  # (a script's sys.exit / argparse at module level)
                problems.append((str(file), f"SystemExit({exc.code!r}): the module exits when imported (guard "
                                            "script code with `if __name__ == \"__main__\":`)"))
            else:
                problems.append((str(file), f"{type(exc).__name__}: {exc}"))
            continue
        if hasattr(module, "SPEC"):
            modules.append(module)
    return modules


def _import_scenario(file: pathlib.Path, root: pathlib.Path, package: bool) -> Any:
    if package:
        name = f"{root.name}.{file.stem}"
        _forget_if_elsewhere(name, file)
        return importlib.import_module(name)
    name = f"_duroxide_scenario_{file.stem}"
    _forget_if_elsewhere(name, file)
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {file}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a repro line can then name a spec found as a module-level name
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def _plan(faults: str, rate: float) -> Any:
    from ..sim.faults import FaultPlan

    if faults == "all":
        return FaultPlan.all(rate)
    if faults == "none":
        return None
    if faults == "swarm":
        return "swarm"
    if not faults.lstrip().startswith("{"):
        raise ValueError(f"not a fault plan: expected all, swarm, none or a JSON object, got {faults!r}"[:200])
    return FaultPlan.from_json(faults)


def _targets(modules: list[Any], variants: str | None,
             problems: list[tuple[str, str]] | None = None) -> list[tuple[str, Any]]:
    """(label, spec) of every scenario (or planted-bug variant) of ``modules``. With
    ``problems``, a module whose ``SPEC`` is not a SimSpec or whose ``VARIANTS`` is not a dict
    of SimSpecs is recorded there and skipped; without it, that raises."""
    from ..sim.harness import SimSpec

    out = []
    owners: dict[str, str] = {}  # label -> the module that defined it first
    for module in modules:
        where = getattr(module, "__file__", None) or module.__name__
        problem = None
        if not isinstance(module.SPEC, SimSpec):
            problem = f"SPEC is a {type(module.SPEC).__name__}, not a SimSpec"
        elif variants is not None and not isinstance(getattr(module, "VARIANTS", {}), dict):
            problem = f"VARIANTS is a {type(module.VARIANTS).__name__}, not a dict of name -> SimSpec"
        elif variants is not None and not all(isinstance(v, SimSpec) for v in getattr(module, "VARIANTS", {}).values()):
            problem = "VARIANTS holds a value that is not a SimSpec"
        if problem is not None:
            if problems is None:
                raise ValueError(f"{where}: {problem}")
            problems.append((where, problem))
            continue
        found = ([(module.SPEC.name, module.SPEC)] if variants is None else
                 [(f"{module.SPEC.name}/{name}", spec) for name, spec in getattr(module, "VARIANTS", {}).items()
                  if variants in ("all", name)])
        for label, spec in found:
            if label in owners:
                # Rows, reproduce lines and shrinking go by this name: the two would be mixed up.
                problem = (f"scenario {label!r} is also defined by {owners[label]}: each SimSpec in a directory needs "
                           "its own name (this one is left out)")
                if problems is None:
                    raise ValueError(f"{where}: {problem}")
                problems.append((where, problem))
                continue
            owners[label] = where
            out.append((label, spec))
    return out


def _variant_names(modules: list[Any]) -> list[str]:
    names: dict[str, None] = {}
    for module in modules:
        variants = getattr(module, "VARIANTS", {})
        if isinstance(variants, dict):
            names.update(dict.fromkeys(str(k) for k in variants))
    return list(names)


def _printable(text: str) -> str:
    """Control characters shown escaped, never sent to the terminal raw."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii") for ch in text)


def _escape_markup(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _properties(spec: Any) -> list[str]:
    from ..sim.checkers import CHECKERS

    names = [c for c in CHECKERS if c not in ("invariants", "sandbox")]
    if not spec.fault_transparent:
        names = [c for c in names if c not in ("outcome", "idempotency")]
    return names + [getattr(inv, "__name__", "invariant") for inv in spec.invariants]


def _share_end(began_ms: int, budget_s: float | None, now_ms: int, targets_left: int) -> int | None:
    """When the current scenario's share of a time budget ends: the budget left is shared
    equally by the scenarios not yet run (one that finishes early leaves its time to the next)."""
    if budget_s is None:
        return None
    end = began_ms + int(budget_s * 1000)
    return now_ms + max(end - now_ms, 0) // max(targets_left, 1)


def _run_targets(targets: list[tuple[str, Any]], seeds: range, args: argparse.Namespace, *, stop_at_first: bool = False,
                 budget_s: float | None = None, quiet: bool = False) -> list[dict[str, Any]]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from ..runtime.realtime import SystemClock
    from ..sim.checkers import run_and_check
    from ..sim.harness import Simulation

    clock = SystemClock()
    began = clock.now_ms()
    rows = []
    # A live bar on terminals; plain "scenario: k/n seeds" lines on stderr otherwise (CI logs).
    live = sys.stderr.isatty() or args.progress
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  disable=not live, transient=False) as progress:
        for index, (label, spec) in enumerate(targets):
            task = progress.add_task(_escape_markup(_printable(label)), total=len(seeds))
            row: dict[str, Any] = {"scenario": label, "seeds": 0, "faults_injected": 0, "fault_kinds": set(),
                                   "properties": _properties(spec), "failures": 0, "first_failure": None,
                                   "first_failing_seed": None, "unshrunk_failure": None, "budget_exhausted": 0, "seconds": 0.0}
            t0 = clock.now_ms()
            share_end = _share_end(began, budget_s, t0, len(targets) - index)
            for seed in seeds:
                try:
                    sim = Simulation(spec, seed, _plan(args.faults, args.rate), provider=args.provider, nodes=args.nodes,
                                     sandbox=args.sandbox, **_steps(args))
                    result = run_and_check(sim)
                except Exception as exc:  # noqa: BLE001 - as a worker process reports it (--jobs)
                    raise SimWorkerError(label, seed, seed, f"{type(exc).__name__}: {exc}", seed=seed,
                                         in_worker=False) from exc
                row["seeds"] += 1
                row["faults_injected"] += sum(result.faults_injected.values())
                row["fault_kinds"].update(result.faults_injected)
                row["budget_exhausted"] += len(result.budget_exhausted)
                if result.failures:
                    row["failures"] += 1
                    if row["first_failure"] is None:
                        row["first_failure"] = result.failures[0].render()
                        row["first_failing_seed"] = seed
                progress.advance(task)
                if not live and not quiet and (row["seeds"] % max(len(seeds) // 4, 1) == 0 or result.failures and row["failures"] == 1):
                    print(f"{_printable(label)}: {row['seeds']}/{len(seeds) if len(seeds) < 10**8 else '?'} seeds, "
                          f"{row['failures']} failing", file=sys.stderr, flush=True)
                if stop_at_first and result.failures:
                    break
                if share_end is not None and clock.now_ms() >= share_end:
                    break
            row["seconds"] = round((clock.now_ms() - t0) / 1000, 2)
            row["fault_kinds"] = sorted(row["fault_kinds"])
            rows.append(row)
            if stop_at_first and row["failures"]:
                break
    return rows


# --- shrinking the plan of a failing seed (the shrinker itself: ..sim.shrink) ------------------------


def shrink_rows(rows: list[dict[str, Any]], specs: dict[str, Any], options: Any) -> None:
    """Replace each failing row's first failure by the failure of a shrunk plan (see
    :func:`shrink_failure`), when one is found; the row keeps the original under
    ``unshrunk_failure`` (None when the failure was not shrunk)."""
    for row in rows:
        seed = row.get("first_failing_seed")
        spec = specs.get(row["scenario"])
        if seed is None or spec is None:
            continue
        try:
            found = shrink_failure(spec, seed, _plan(options.faults, options.rate),
                                   {"provider": options.provider, "nodes": options.nodes, "sandbox": options.sandbox,
                                    **_steps(options)})
        except Exception as exc:  # noqa: BLE001 - the unshrunk failure is still reported
            row["unshrunk_failure"] = row["first_failure"]
            row["first_failure"] += f"\n(could not shrink its plan: {type(exc).__name__}: {exc})"
            continue
        if found is not None:
            result, note = found
            row["unshrunk_failure"] = row["first_failure"]
            row["first_failure"] = result.failures[0].render() + f"\n({note})"


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
    max_steps: int | None = None


def _steps(options: Any) -> dict[str, int]:
    """``max_steps`` for Simulation when the command line set it (else the harness default)."""
    value = getattr(options, "max_steps", None)
    return {} if value is None else {"max_steps": value}


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
                 worker_traceback: str = "", in_worker: bool = True) -> None:
        where = f"seed {seed}" if seed is not None else (f"seeds {first}-{last}" if last > first else f"seed {first}")
        # (``in_worker=False``: raised in the command's own process - ``--jobs 1`` has no worker)
        super().__init__(f"{'worker error' if in_worker else 'error'} in scenario {label}, {where}: {detail}")
        self.label, self.first, self.last, self.seed = label, first, last, seed
        self.detail, self.worker_traceback = detail, worker_traceback


_WORKER_TARGETS: dict[tuple[str, str | None], list[tuple[str, Any]]] = {}


def _worker_init() -> None:
    # Ctrl-C goes to the whole foreground process group: only the parent reacts (it stops the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Results travel back through the pool; what scenario code prints goes to stderr, so the
    # parent's stdout (a --json document) holds nothing else.
    sys.stdout = sys.stderr


def _worker_spec(ref: _TargetRef) -> Any:
    key = (ref.path, ref.variants)
    if key not in _WORKER_TARGETS:
        # Loaded as the parent did (broken modules skipped), so target indexes agree.
        ignored: list[tuple[str, str]] = []
        _WORKER_TARGETS[key] = _targets(_load_modules(pathlib.Path(ref.path), ignored), ref.variants, ignored)
    targets = _WORKER_TARGETS[key]
    if ref.index >= len(targets) or targets[ref.index][0] != ref.label:
        raise RuntimeError(f"the worker found other scenarios in {ref.path} than the parent: {[t[0] for t in targets]}")
    return targets[ref.index][1]


def _warm_worker(ref: _TargetRef) -> None:
    """Worker side: load what a chunk needs (the simulator, the scenarios' modules) and return.
    A failure to load is left for the first chunk to report."""
    from ..sim.checkers import run_and_check  # noqa: F401
    from ..sim.harness import Simulation  # noqa: F401

    with contextlib.suppress(Exception):
        _worker_spec(ref)


def _run_chunk(ref: _TargetRef, options: _SimOptions, first: int, stop: int, stop_at_first: bool,
               deadline_ms: int | None) -> _ChunkResult:
    """Worker side: seeds ``first..stop-1`` of one scenario (at least one; with ``stop_at_first`` up to
    the first failing seed; with a deadline until the wall clock passes it, checked after each seed)."""
    import traceback

    from ..runtime.realtime import SystemClock
    from ..sim.checkers import run_and_check
    from ..sim.harness import Simulation

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
                             nodes=options.nodes, sandbox=options.sandbox, **_steps(options))
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


#: Set when a stopped pool's manager thread did not finish: the interpreter would wait for it
#: at exit (concurrent.futures joins it), so the CLI then exits without running exit handlers.
_STUCK_POOL = False


def _stop_pool(pool: Any) -> None:
    """Stop a pool now: kill its workers, cancel what is queued, and wait (bounded) for its
    manager thread. Workers are terminated *before* the shutdown request, so the manager thread
    sees a broken pool and takes the path that closes the call queue's pipe (a shutdown request
    first could leave its feeder thread blocked on a pipe nobody reads, and the interpreter
    would then hang at exit joining it)."""
    global _STUCK_POOL
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    for proc in processes:  # a running chunk may take seconds: do not wait for it
        if proc.is_alive():
            proc.terminate()
    for proc in processes:
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)
    pool.shutdown(wait=False, cancel_futures=True)
    if manager is not None:
        manager.join(timeout=10)
        if manager.is_alive():
            _STUCK_POOL = True


def pool_left_running() -> bool:
    """True when a stopped pool's manager thread did not finish within its time (see
    ``_stop_pool``): only our own pool's thread counts, never threads the caller started."""
    return _STUCK_POOL


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
        self.task = progress.add_task(_escape_markup(_printable(label)), total=total)
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
            print(f"{_printable(self.label)}: {self.done}/{self.total if self.total < 10**8 else '?'} seeds, "
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
                           "first_failing_seed": None, "unshrunk_failure": None, "budget_exhausted": 0, "seconds": 0.0}
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
                row["first_failing_seed"] = s.seed
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

    from ..runtime.realtime import SystemClock

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

        if budget_s is not None and refs:
            # Start the workers (spawned interpreters importing the package and the scenario
            # modules) before the first share is measured: their start-up came out of the first
            # scenario's share alone, which on a loaded machine left it a seed or two while the
            # later ones split the rest. The budget still counts the start-up.
            wait([pool.submit(_warm_worker, refs[0]) for _ in range(jobs)])
        for index, ((label, spec), ref) in enumerate(zip(targets, refs, strict=True)):
            builder = _RowBuilder(label, spec, len(seeds), bar, progress == "lines")
            t0 = clock.now_ms()
            deadline = _share_end(began, budget_s, t0, len(targets) - index)
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
