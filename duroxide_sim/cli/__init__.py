"""Command-line interface: ``duroxide-sim`` / ``python -m duroxide_sim``.

Commands:

* ``reproduce REF --seed N [--faults JSON] [--provider memory|sqlite] [--nodes K] [--max-steps S] [--trace]
  [--timeline PATH]`` - re-run one simulated seed of the spec at REF (``path/to/file.py:NAME`` or
  ``package.module:NAME``) and report every broken property with its step; ``--trace`` prints
  the canonical trace; ``--timeline`` writes the run as a self-contained HTML timeline (lanes per
  instance and node over virtual time) and prints its path. Exit 1 when a property fails.

* ``run PATH [--seeds N] [--faults all|swarm|none|JSON] [--max-steps S]`` - for every scenario module in PATH
  (each defines ``SPEC``, a SimSpec), simulate N seeds with faults, check every property, show
  progress, print a table; a failing scenario prints its first failure and its repro line.
* ``explore PATH [--budget-s S]`` - keep simulating new seeds until the budget runs out or a
  property fails; the scenarios share the budget equally (what one leaves goes to the next).
* Both take ``--jobs N`` (or ``--jobs auto`` = one per CPU): spread the seeds over N worker
  processes (see :func:`run_seeds`). The rows are the same as with ``--jobs 1`` (the default,
  in-process) except the wall-clock ``seconds``.

* ``export DB --out PATH [--instance ID ...]`` - write the JSON histories of a SQLite database
  (one file per instance in a directory, or one ``.json`` file).
* ``import PATH --db DB`` - load exported histories into a SQLite database (never overwrites;
  a PostgreSQL URL is refused: the CLI never writes to PostgreSQL).
* ``export``, ``show`` and ``replay`` also take a ``postgresql://`` (``postgres://``) URL where
  they take a SQLite path, with ``--schema NAME`` (default ``public``): opened with
  ``PostgresProvider.open_read_only`` in snapshot mode, so nothing is created, migrated or
  written, and messages never show the password.
* ``replay SOURCE --app REF [--latest]`` - replay exported histories (file/directory) or a SQLite
  database against the current code (REF = ``path/to/file.py:NAME``: a SimSpec or a
  ``register(runtime)`` function); every divergence is listed with instance, execution, event
  id, recorded vs current call and source line. ``--latest`` replays in-flight instances with
  the latest registered version (will an upgrade break them?). The replay runs a second time,
  in a subprocess under another ``PYTHONHASHSEED``, and adds what only that one finds (code
  that depends on a set's iteration order; ``--no-hash-seed-check`` skips it).
* ``show SOURCE [--instance ID]`` - an instance's history as a readable timeline, from a SQLite
  database, an export, or a trace file (``reproduce --trace`` output).

Exit codes everywhere: 0 all good, 1 a property failed / a divergence, 2 usage or input error.

This module holds the argument parser, :func:`main` and the commands. Running seeds of scenarios
(loading scenario modules, the in-process loop with its progress bar, the ``--jobs N`` process
pool, aggregation into rows, :func:`run_seeds`, :class:`SimWorkerError`) lives in
:mod:`duroxide_sim.cli.seeds`; ``SimWorkerError`` and ``run_seeds`` are re-exported here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys
from typing import Any

# The seed-running machinery lives in .seeds (spawned workers import it by that path).
from .seeds import (
    SimWorkerError,
    _load_modules,
    _plan,
    _printable,
    _run_targets,
    shrink_rows,
    _run_targets_jobs,
    _SimOptions,
    _TargetRef,
    _targets,
    _variant_names,
    pool_left_running,
    run_seeds,
)

# Re-exported for ``from duroxide_sim.cli import ...`` (tests/testing/test_cli_jobs.py).
from .seeds import _aggregate, _SeedSummary  # noqa: F401
from ..testing.argtypes import positive_int as _positive_int

__all__ = ["SimWorkerError", "main", "run_seeds"]


def _jobs(text: str) -> int:
    """``--jobs``: a positive integer, or ``auto`` (one per CPU)."""
    if text.strip().lower() == "auto":
        return os.cpu_count() or 1
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}") from None


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive, finite number of seconds, got {text!r}")
    return value


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a probability between 0 and 1, got {text!r}")
    return value


def _report(rows: list[dict[str, Any]], args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    failed = any(r["failures"] for r in rows)
    if args.json:
        # Scenarios left out (a module that cannot load, a spec that cannot run) make the document
        # not ok, and are listed: the exit code (2) alone would not reach a JSON consumer.
        load_errors = [{"scenario": where, "problem": problem} for where, problem in getattr(args, "_load_errors", [])]
        print(json.dumps({"ok": not failed and not load_errors, "scenarios": rows, "load_errors": load_errors},
                         indent=2, sort_keys=True))
        return 1 if failed else 0
    from rich.text import Text

    console = Console(highlight=False, width=max(Console().width, 150))
    table = Table(title="duroxide-sim: scenario properties under faults")
    for col in ("scenario", "seeds", "faults injected", "fault kinds", "properties checked", "failures", "seconds"):
        table.add_column(col, justify="right" if col in ("seeds", "faults injected", "failures", "seconds") else "left")
    for r in rows:  # names as Text: brackets in a scenario's name are not rich markup
        table.add_row(Text(_printable(r["scenario"])), str(r["seeds"]), str(r["faults_injected"]), str(len(r["fault_kinds"])),
                      Text(_printable(", ".join(r["properties"]))), str(r["failures"]), f"{r['seconds']:.2f}")
    console.print(table)
    for r in rows:
        if r["first_failure"]:
            line = Text("\nFAILED", style="bold red")
            line.append(f" {_printable(r['scenario'])}: {r['failures']} of {r['seeds']} seeds broke a property; first:")
            console.print(line)
            # soft_wrap: the reproduce line must stay one line, to be pasted as it is
            console.print(r["first_failure"], markup=False, soft_wrap=True)
    if not failed:
        console.print("all properties held")
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    """``run`` / ``explore``. A scenario module that cannot load or run is reported (with its
    file and reason) and left out; the others still run, and the exit code is then 2."""
    path = pathlib.Path(args.path)
    if not path.exists():
        print(f"duroxide-sim: no such file or directory: {path}", file=sys.stderr)
        return 2
    # Options the command or the plan would ignore are refused: a user who wrote them expected
    # them to matter (``--rate 0.5 --faults swarm`` ran swarm's own rates; ``run --budget-s 5``
    # ran every seed however long it took).
    for given, applies, hint in (
            (args.rate is not None and args.faults != "all", "--rate", "it sets the rate of --faults all"),
            (args.budget_s is not None and args.command == "run", "--budget-s",
             "it is explore's time budget; run takes --seeds"),
            (args.seeds is not None and args.command == "explore", "--seeds",
             "explore runs new seeds until --budget-s runs out; use run for a fixed number"),
            (args.hash_seed_check and args.command == "explore", "--hash-seed-check",
             "it checks a fixed first seed; use run")):
        if given:
            print(f"duroxide-sim {args.command}: {applies} does not apply here: {hint}", file=sys.stderr)
            return 2
    args.rate = 0.05 if args.rate is None else args.rate
    args.budget_s = 60.0 if args.budget_s is None else args.budget_s
    args.seeds = 100 if args.seeds is None else args.seeds
    try:
        _plan(args.faults, args.rate)
    except ValueError as exc:
        print(f"duroxide-sim: --faults: {exc}", file=sys.stderr)
        return 2
    problems: list[tuple[str, str]] = []
    args._load_errors = problems  # (reported in the --json document too)
    # With --json, stdout holds the one JSON document: what scenario modules print while they are
    # imported and checked (their setup runs once here) goes to stderr, as during the run.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            modules = _load_modules(path, problems)
    except Exception as exc:  # noqa: BLE001 - the directory itself could not be read
        print(f"duroxide-sim: cannot load scenarios from {path}: {exc}", file=sys.stderr)
        return 2
    targets = _targets(modules, args.variants, problems)
    for where, problem in problems:
        print(f"duroxide-sim: cannot load scenario {_printable(where)}: {_printable(problem)}", file=sys.stderr)
    if args.variants not in (None, "all") and not targets and modules:
        known = ", ".join(_variant_names(modules)) or "none"
        print(f"duroxide-sim: no variant named {_printable(args.variants)!r} (known: {_printable(known)})", file=sys.stderr)
        return 2
    runnable = []  # (index in targets, label, spec): worker processes find a scenario by its index
    for index, (label, spec) in enumerate(targets):
        with quiet_stdout:
            problem = _spec_problem(spec, args)
        if problem is not None:
            print(f"duroxide-sim: scenario {_printable(label)} cannot run: {_printable(problem)}", file=sys.stderr)
            problems.append((label, problem))
        else:
            runnable.append((index, label, spec))
    if not runnable:
        if not problems:
            none_found = f"no scenario modules (defining SPEC{' and VARIANTS' if args.variants else ''}) in {path}"
            print(f"duroxide-sim: {none_found}{_subdirectory_hint(path)}", file=sys.stderr)
            args._load_errors = [*getattr(args, "_load_errors", []), (str(path), none_found)]
        if args.json:  # (the document README promises, not ok, with what could not load)
            _report([], args)
        return 2
    code = _run_and_report(runnable, args)
    return 2 if problems and code == 0 else code


def _subdirectory_hint(path: pathlib.Path) -> str:
    """Only the directory's own ``*.py`` files are scenario modules; when the scenarios sit one
    level down, say where (``run`` takes one directory or file per call)."""
    try:
        if not path.is_dir():
            return ""
        below = sorted(d.name for d in path.iterdir()
                       if d.is_dir() and not d.name.startswith((".", "_")) and any(d.glob("*.py")))
    except OSError:
        return ""
    if not below:
        return ""
    shown = ", ".join(_printable(str(path / name)) for name in below[:3]) + (", ..." if len(below) > 3 else "")
    return f" (subdirectories are not searched; modules are in: {shown})"


def _run_and_report(runnable: list[tuple[int, str, Any]], args: argparse.Namespace) -> int:
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    if args.jobs > 1:
        return _cmd_run_jobs(runnable, args)
    targets = [(label, spec) for _, label, spec in runnable]
    # With --json, stdout holds the one JSON document: anything scenario code prints goes to stderr.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            if args.command == "explore":
                rows = _run_targets(targets, range(args.first_seed, args.first_seed + 10**9), args, stop_at_first=True,
                                    budget_s=args.budget_s)
            else:
                rows = _run_targets(targets, seeds, args)
            _shrink(rows, targets, args, args)
            _hash_seed_check(rows, targets, args)
    except KeyboardInterrupt:
        print("duroxide-sim: interrupted", file=sys.stderr)
        return 130
    except SimWorkerError as exc:
        print(f"duroxide-sim: {_printable(str(exc))}", file=sys.stderr)
        return 2
    return _report(rows, args)




def _hash_seed_check(rows: list[dict[str, Any]], targets: list[tuple[str, Any]], args: argparse.Namespace) -> None:
    """``run --hash-seed-check``: the first seed of each scenario, fault-free, reproduced in two
    subprocesses under different ``PYTHONHASHSEED`` values; different traces mean the workflow
    depends on the iteration order of sets (or other hash-ordered collections), which one process
    never shows - its string hashes are fixed - but the next production process does. Counted as
    a failing property of that seed."""
    if not args.hash_seed_check:
        return
    from ..sim.harness import _module_ref
    from ..testing.hashseed import check_hash_seed_independence

    specs = dict(targets)
    extra = ("--provider", args.provider, "--nodes", str(args.nodes))
    for row in rows:
        spec = specs[row["scenario"]]
        row["properties"] = [*row["properties"], "hash-seed independence"]
        ref = spec.ref or _module_ref(spec)
        if not ref:
            row["hash_seed"] = "not checked: the spec has no ref (give it ref='path/to/file.py:NAME')"
            print(f"duroxide-sim: {_printable(row['scenario'])}: hash-seed check {row['hash_seed']}", file=sys.stderr)
            continue
        try:
            problem = check_hash_seed_independence(ref, args.first_seed, faults="none", extra=extra)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            raise SimWorkerError(row["scenario"], args.first_seed, args.first_seed,
                                 f"the hash-seed check could not run: {exc}", seed=args.first_seed,
                                 in_worker=False) from exc
        row["hash_seed"] = problem or "independent"
        if problem is not None:
            if row["first_failing_seed"] != args.first_seed:
                row["failures"] += 1
            if row["first_failure"] is None:
                row["first_failure"] = f"hash-seed independence (seed {args.first_seed}): {problem}"
                row["first_failing_seed"] = args.first_seed
            else:
                row["first_failure"] += f"\nalso: hash-seed independence (seed {args.first_seed}): {problem}"


def _spec_problem(spec: Any, args: argparse.Namespace) -> str | None:
    """Why ``spec`` cannot run at all (its setup raises, a start names an orchestration the setup
    does not register, a signal of an unknown kind, ...), checked once with the first seed before
    any seed runs: a usage error with the reason, not a traceback from the middle of the run."""
    from ..sim.harness import Simulation, _Run

    try:
        sim = Simulation(spec, args.first_seed, _plan(args.faults, args.rate), provider=args.provider,
                         nodes=args.nodes, sandbox=args.sandbox,
                         **({} if args.max_steps is None else {"max_steps": args.max_steps}))
        _Run(sim, sim.plan)
    except Exception as exc:  # noqa: BLE001 - anything the spec's own code raises
        return f"{type(exc).__name__}: {exc}"
    return None


def _cmd_run_jobs(runnable: list[tuple[int, str, Any]], args: argparse.Namespace) -> int:
    targets = [(label, spec) for _, label, spec in runnable]
    refs = [_TargetRef(args.path, args.variants, i, label) for i, label, _spec in runnable]
    options = _SimOptions(args.faults, args.rate, args.provider, args.nodes, args.sandbox, args.max_steps)
    progress = "bar" if sys.stderr.isatty() or args.progress else "lines"
    previous = _sigterm_as_interrupt()
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
        return _exit_now_if_stuck(2)
    except KeyboardInterrupt:
        print("duroxide-sim: interrupted; the worker processes were stopped", file=sys.stderr)
        return _exit_now_if_stuck(130)
    finally:
        _restore_sigterm(previous)
    try:
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            _shrink(rows, targets, args, options)
            _hash_seed_check(rows, targets, args)
    except KeyboardInterrupt:
        print("duroxide-sim: interrupted", file=sys.stderr)
        return 130
    return _report(rows, args)


def _shrink(rows: list[dict[str, Any]], targets: list[tuple[str, Any]], args: argparse.Namespace, options: Any) -> None:
    """The first failure of each failing scenario, with its seed's plan shrunk (``--no-shrink``:
    as found)."""
    if not args.no_shrink and any(r.get("first_failing_seed") is not None for r in rows):
        if not args.json:
            print("duroxide-sim: shrinking the failing seeds' fault plans ...", file=sys.stderr, flush=True)
        shrink_rows(rows, dict(targets), options)


def _sigterm_as_interrupt() -> Any:
    """While worker processes run: SIGTERM (``kill``, ``timeout``, a cancelled CI job) stops
    them the way Ctrl-C does, instead of leaving them running without their parent."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _restore_sigterm(previous: Any) -> None:
    import signal

    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def _exit_now_if_stuck(code: int) -> int:
    """The workers are gone; if the pool's manager thread is not, a normal exit would wait for it
    forever (concurrent.futures joins it at exit): leave at once instead."""
    if pool_left_running():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def load_spec(ref: str) -> Any:
    """Resolve ``path/to/file.py:NAME`` or ``package.module:NAME`` to a SimSpec."""
    from ..sim.harness import SimSpec
    from ..testing.replay import load_app

    obj = load_app(ref)
    if not isinstance(obj, SimSpec):
        raise ValueError(f"{ref} is a {type(obj).__name__}, not a SimSpec")
    return obj


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from ..sim.checkers import run_and_check
    from ..sim.harness import Simulation

    # With --json, stdout holds the one JSON document: what scenario code prints (when its module
    # is imported too) goes to stderr.
    quiet_stdout = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    try:
        with quiet_stdout:
            spec = load_spec(args.ref)
        faults: Any = _plan(args.faults, 0.05)  # (all: every kind at run's default rate)
    except (ValueError, ImportError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    extra = {} if args.max_steps is None else {"max_steps": args.max_steps}
    try:
        with quiet_stdout:
            sim = Simulation(spec, args.seed, faults, provider=args.provider, nodes=args.nodes, sandbox=args.sandbox, **extra)
            result = run_and_check(sim)
    except KeyboardInterrupt:
        print("duroxide-sim: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the spec's own code (setup, starts) raised: an input error
        print(f"duroxide-sim: {args.ref} seed {args.seed} cannot run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.trace:
        # (with --json, stdout is JSON lines: each trace record, then the summary last)
        for line in result.trace:
            print(line)
    summary = {
        "spec": spec.name,
        "seed": args.seed,
        "plan": sim.plan.describe(),
        "plan_json": sim.plan.to_json(),
        "steps": result.steps,
        "trace_sha256": result.trace_hash,
        "faults_injected": result.faults_injected,
        "failures": [{"checker": f.checker, "instance": f.instance, "step": f.step, "message": f.message, "repro": f.repro}
                     for f in result.failures],
    }
    timeline = None
    if args.timeline:
        from ..sim.timeline import write_timeline

        try:
            timeline = write_timeline(result, args.timeline, spec_name=spec.name, repro=sim.repro_command())
        except (OSError, ValueError) as exc:
            print(f"duroxide-sim: cannot write the timeline to {_printable(str(args.timeline))}: "
                  f"{_printable(str(getattr(exc, 'strerror', None) or exc))}", file=sys.stderr)
            return 2
        summary["timeline"] = str(timeline)
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(_printable(f"{spec.name} seed {args.seed}: {result.steps} steps, faults: {sim.plan.describe()}, "
                         f"trace {result.trace_hash[:16]}"))
        for f in result.failures:  # control characters in messages shown escaped, line by line
            print("\n".join(_printable(line) for line in f.render().split("\n")))
        if not result.failures:
            print("all properties hold")
        if timeline is not None:
            print(f"timeline: {timeline}")
    return 1 if result.failures else 0


def _open_db(path: str, *, must_exist: bool) -> Any:
    from ..providers.sqlite import SqliteProvider
    from ..runtime.realtime import SystemClock

    if must_exist and not pathlib.Path(path).is_file():
        raise ValueError(f"no such database file: {path}")
    return SqliteProvider.open(path, clock=SystemClock())


def _read_db(source: str, schema: str | None = None) -> Any:
    """A database to read only (export, show). A SQLite file: an in-memory copy, so a read-only
    file (a CI fixture, a mounted backup) works, and the file is never migrated, counted or
    created. A PostgreSQL URL: :meth:`PostgresProvider.open_read_only` in snapshot mode (one
    read-only transaction: nothing created, migrated or written; a consistent view of a running
    system). Close it after use."""
    from ..providers.postgres import PostgresProvider, is_postgres_url
    from ..runtime.realtime import SystemClock

    if is_postgres_url(source):
        return PostgresProvider.open_read_only(source, "public" if schema is None else schema, clock=SystemClock(),
                                               snapshot=True)
    from ..providers.sqlite import SqliteProvider

    if schema is not None:
        raise ValueError(f"--schema applies only to a PostgreSQL URL (postgresql://...), not to {source}")
    if not pathlib.Path(source).is_file():
        raise ValueError(f"no such database file: {source}")
    return SqliteProvider.snapshot_of(source, clock=SystemClock())


def _where(provider: Any, source: str) -> str:
    """How messages name a database: a PostgreSQL one by schema, host, database and user (its URL
    may hold the password), a SQLite one by its path."""
    return getattr(provider, "location", None) or source


def _cmd_export(args: argparse.Namespace) -> int:
    from ..errors import DuroxideError
    from ..runtime.history_io import export_to_path

    provider = None
    try:
        provider = _read_db(args.db, args.schema)
        if not args.instance and not provider.list_instances():
            raise ValueError(f"no instances in {_where(provider, args.db)}: nothing to export")
        written = export_to_path(provider, args.out, args.instance or None)
    except (ValueError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    finally:
        getattr(provider, "close", lambda: None)()
    print(f"exported {len(written)} file(s) to {args.out}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from ..errors import DuroxideError
    from ..providers.postgres import is_postgres_url
    from ..runtime.history_io import import_documents, load_documents

    if is_postgres_url(args.db):
        # Deliberate: the command-line tools never write to a PostgreSQL database (the target
        # would be a production store). Restoring there is a program's explicit choice.
        print("duroxide-sim import: --db takes a SQLite file; import does not write to PostgreSQL (from Python: "
              "import_documents(PostgresProvider.connect_with_schema(url, schema), load_documents(path)))",
              file=sys.stderr)
        return 2
    if is_postgres_url(args.path):  # (and its URL, which may hold a password, is not echoed)
        print("duroxide-sim import: PATH is an export (a file or directory of JSON histories), not a database: "
              "run duroxide-sim export URL --schema NAME --out DIR first", file=sys.stderr)
        return 2
    try:
        docs = load_documents(args.path)
        if not docs:
            print(f"duroxide-sim: no exported histories in {args.path}: nothing to import", file=sys.stderr)
            return 2
        provider = _open_db(args.db, must_exist=False)
        count = import_documents(provider, docs)
    except (ValueError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    print(f"imported {len(docs)} instance(s), {count} execution(s) into {args.db}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from ..errors import DuroxideError
    from ..providers.postgres import is_postgres_url
    from ..testing.replay import build_registry, load_app, load_source, replay_documents, replay_source

    try:
        app = load_app(args.app)
        skipped: list[tuple[str, int]] = []
        if is_postgres_url(args.source):
            # Read once (one read-only snapshot); the replay under another hash seed reads the
            # same documents from a temporary file, not the database again (nor its URL, with
            # its password, on a subprocess's command line).
            docs = load_source(args.source, schema=args.schema)
            divergences = replay_documents(docs, build_registry(app), latest=args.latest, sandbox=not args.no_sandbox,
                                           skipped=skipped)
        else:
            docs = None
            divergences = replay_source(args.source, app, schema=args.schema, latest=args.latest,
                                        sandbox=not args.no_sandbox, skipped=skipped)
    except (ValueError, TypeError, ImportError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    if not args.no_hash_seed_check:
        if docs is None:
            divergences = _with_hash_seed_divergences(args, divergences, args.source)
        else:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="duroxide-replay-") as tmp:
                copy = pathlib.Path(tmp) / "histories.json"
                copy.write_text(json.dumps(docs, sort_keys=True, ensure_ascii=False), encoding="utf-8")
                divergences = _with_hash_seed_divergences(args, divergences, str(copy))
    if skipped:
        first = ", ".join(f"{_printable(i)} execution {e}" for i, e in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        print(f"note: {len(skipped)} execution(s) not replayed: earlier executions of their instances were pruned, and "
              f"with them what the KV store held when these started ({first})", file=sys.stderr)
    if args.json:
        print(json.dumps([{"instance": d.instance, "execution": d.execution_id, "in_flight": d.in_flight, "message": d.message}
                          for d in divergences], indent=2))
    elif divergences:
        what = "in-flight instance(s) would break on upgrade" if args.latest else "execution(s) diverge from the current code"
        # Executions, not lines: one execution may have a divergence and sandbox findings.
        print(f"{len({(d.instance, d.execution_id) for d in divergences})} {what}:")
        for d in divergences:
            print(f"  {_printable(d.render())}")
    else:
        clean = "every history replays cleanly" if not args.latest else "no in-flight instance would break"
        print(clean if not skipped else f"{clean} of those replayed ({len(skipped)} execution(s) not replayed: see the note)")
    return 1 if divergences else 0


_HASH_DEPENDENCE = ("the code depends on string hashing - the iteration order of a set (or another hash-ordered "
                    "collection), or hash() of a str, which differ between processes; iterate sorted(...) instead "
                    "(and route with a stable hash such as zlib.crc32)")


def _with_hash_seed_divergences(args: argparse.Namespace, found: list[Any], source: str) -> list[Any]:
    """``found`` with what a second replay under another ``PYTHONHASHSEED`` adds: the code
    depends on string hashing (a set's iteration order), which production processes draw at
    random - this process may iterate in the recorded order by chance. An execution the second
    replay finds diverging is listed once: a new line when only that replay finds it, else its
    line here says so when the other seed makes it diverge differently (``hash(order_id) % N``
    gives another value under each seed)."""
    from ..testing.hashseed import replay_under_another_hash_seed
    from ..testing.replay import SANDBOX_FINDING, Divergence

    try:
        seed, rows = replay_under_another_hash_seed(source, args.app, latest=args.latest)
    except (RuntimeError, OSError) as exc:
        print(f"note: the replay under another hash seed (set-order check) could not run: {_printable(str(exc))}",
              file=sys.stderr)
        return found
    out = list(found)
    # The second replay runs without the sandbox: its rows match this one's divergences, not
    # its sandbox findings (which share the execution's key).
    index = {(d.instance, d.execution_id): i for i, d in enumerate(out) if not d.message.startswith(SANDBOX_FINDING)}
    seen: set[tuple[Any, Any]] = set()
    for row in rows:
        key = (row.get("instance"), row.get("execution"))
        message = row.get("message")
        if key in seen or not isinstance(key[0], str) or not isinstance(key[1], int) or not isinstance(message, str):
            continue
        seen.add(key)
        at = index.get(key)
        if at is None:
            index[key] = len(out)
            out.append(Divergence(key[0], key[1], f"{message} [found only under PYTHONHASHSEED={seed}: {_HASH_DEPENDENCE}]",
                                  bool(row.get("in_flight"))))
        elif out[at].message != message:
            d = out[at]
            out[at] = Divergence(d.instance, d.execution_id, (
                f"{d.message} [under PYTHONHASHSEED={seed} it diverges differently: {_HASH_DEPENDENCE}]"), d.in_flight)
    return out


def _event_line(ev: Any, t0: int) -> str:
    from ..core.events import to_dict

    data = {k: v for k, v in to_dict(ev).items()
            if k not in ("kind", "event_id", "source_event_id", "timestamp_ms", "instance_id", "execution_id", "duroxide_version")}
    src = f" <- #{ev.source_event_id}" if ev.source_event_id is not None else ""
    parts = []
    for k, v in data.items():
        details = getattr(ev, "details", None) if k == "details" else None
        if details is not None and hasattr(details, "display_message"):
            # Why it failed: the whole message up to a bound, keeping its end (a traceback's
            # last line is the exception), not the first 80 characters of its JSON.
            text = details.display_message()
            text = text if len(text) <= _SHOWN_ERROR else text[:100] + " ... " + text[-(_SHOWN_ERROR - 105):]
            parts.append(f"{k}={json.dumps(text, ensure_ascii=False)}")
        else:
            parts.append(f"{k}={json.dumps(v, ensure_ascii=False)[:80]}")
    # Control characters (C0, DEL, C1, lone surrogates) shown escaped: never raw on a terminal.
    return _printable(f"  #{ev.event_id:<4} +{ev.timestamp_ms - t0:>9} ms  {type(ev).__name__}{src}  {', '.join(parts)}")


#: Characters of an error message ``show`` prints (its beginning and its end).
_SHOWN_ERROR = 600


def _cmd_show(args: argparse.Namespace) -> int:
    from ..errors import DuroxideError
    from ..providers.postgres import is_postgres_url
    from ..runtime.history_io import document_events, export_instance, load_documents

    source = pathlib.Path(args.source)
    where = str(source)
    provider = None
    try:
        if is_postgres_url(args.source) or args.schema is not None:  # (--schema with a file: refused)
            provider = _read_db(args.source, args.schema)
            where = _where(provider, args.source)
            ids = [args.instance] if args.instance else list(reversed(provider.list_instances()))
            docs = [export_instance(provider, i) for i in ids]
        elif source.is_file() and source.suffix in (".jsonl", ".trace", ".txt"):
            lines = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.startswith("{")]
            if not any(isinstance(rec, dict) for rec in lines):
                print(f"duroxide-sim: no trace records (JSON lines) in {source}", file=sys.stderr)
                return 2
            for rec in lines:
                if not isinstance(rec, dict):
                    continue  # not a trace record
                if args.instance and rec.get("instance") not in (args.instance, None):
                    continue
                rest = {k: v for k, v in rec.items() if k not in ("step", "t", "op")}
                print(f"step {rec.get('step')!s:>6}  t={rec.get('t')!s:>10} ms  {rec.get('op')!s:<14} "
                      f"{json.dumps(rest, sort_keys=True)[:160]}")
            return 0
        elif source.is_file() and source.suffix.lower() != ".json":
            provider = _read_db(str(source))
            ids = [args.instance] if args.instance else list(reversed(provider.list_instances()))
            docs = [export_instance(provider, i) for i in ids]
        else:
            docs = [d for d in load_documents(source) if not args.instance or d["instance_id"] == args.instance]
    except (ValueError, DuroxideError) as exc:
        print(f"duroxide-sim: {exc}", file=sys.stderr)
        return 2
    finally:
        getattr(provider, "close", lambda: None)()
    if not docs:
        what = f"no instance {args.instance!r}" if args.instance else "no instances"
        print(f"duroxide-sim: {what} in {where}", file=sys.stderr)
        return 2
    for doc in docs:
        # Ids are printed as JSON strings when they hold control characters (a newline or an
        # escape sequence in an id must not reach the terminal raw).
        inst = doc["instance_id"]
        shown = _printable(json.dumps(inst, ensure_ascii=False)) if not inst.isprintable() else inst
        print(f"{shown}  ({_printable(str(doc.get('orchestration_name')))} {_printable(str(doc.get('orchestration_version')))})")
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
        run.add_argument("--seeds", type=_positive_int, default=None, help="seeds per scenario (run only; default 100)")
        run.add_argument("--first-seed", type=int, default=0)
        run.add_argument("--budget-s", type=_positive_seconds, default=None, help="time budget in seconds, shared equally by the scenarios (explore only; default 60)")
        run.add_argument("--faults", default="all", help="'all' (default), 'swarm', 'none' or a fault plan as JSON")
        run.add_argument("--rate", type=_rate, default=None, help="per-opportunity fault rate for --faults all (default 0.05; refused with other plans)")
        run.add_argument("--variants", default=None, help="run planted-bug variants: a name or 'all'")
        run.add_argument("--provider", choices=("memory", "sqlite"), default="memory")
        run.add_argument("--nodes", type=_positive_int, default=2)
        run.add_argument("--sandbox", action="store_true", help="flag clock/random/I-O calls in orchestration code")
        run.add_argument("--hash-seed-check", action="store_true",
                         help="also reproduce each scenario's first seed (no faults) under two PYTHONHASHSEEDs in "
                              "subprocesses: different traces mean set-order dependence (run only)")
        run.add_argument("--no-shrink", action="store_true",
                         help="report a failing seed with the plan it ran (default: the fewest of its faults that still fail it)")
        run.add_argument("--max-steps", type=_positive_int, default=None,
                         help="scheduler steps per seed before a run stops as not quiescent (default 200000)")
        run.add_argument("--progress", action="store_true", help="show the progress bar even when not on a terminal")
        run.add_argument("--json", action="store_true", help="print results as JSON")
        run.add_argument("--jobs", type=_jobs, default=1, metavar="N",
                         help="worker processes for the seeds: a number or 'auto' (one per CPU); default 1, in-process. "
                              "Same results except wall-clock seconds (explore: the lowest failing seed; a few more "
                              "seeds than needed may run)")
        run.set_defaults(func=_cmd_run)
    schema_help = ("the PostgreSQL schema (default public) when the database is a postgresql:// URL; "
                   "it is opened read-only: nothing is created, migrated or written")
    exp = sub.add_parser("export", help="write the JSON histories of a SQLite or PostgreSQL database")
    exp.add_argument("db", help="a SQLite database file, or a postgresql:// (postgres://) URL")
    exp.add_argument("--schema", default=None, help=schema_help)
    exp.add_argument("--out", required=True, help="a directory, or a .json file")
    exp.add_argument("--instance", action="append", help="only these instances (repeatable)")
    exp.set_defaults(func=_cmd_export)
    imp = sub.add_parser("import", help="load exported histories into a SQLite database")
    imp.add_argument("path")
    imp.add_argument("--db", required=True, help="a SQLite database file (created if missing); "
                                                 "PostgreSQL URLs are refused: the CLI never writes to PostgreSQL")
    imp.set_defaults(func=_cmd_import)
    rpl = sub.add_parser("replay", help="replay recorded histories against the current code")
    rpl.add_argument("source", help="an export (file or directory), a SQLite database, or a postgresql:// URL")
    rpl.add_argument("--schema", default=None, help=schema_help)
    rpl.add_argument("--app", required=True, help="path/to/file.py:NAME (a SimSpec or a register(runtime) function)")
    rpl.add_argument("--latest", action="store_true", help="replay in-flight instances with the latest version")
    rpl.add_argument("--no-sandbox", action="store_true",
                     help="do not report clock, randomness or I/O calls of orchestration code that still replays")
    rpl.add_argument("--no-hash-seed-check", action="store_true",
                     help="do not replay a second time under another PYTHONHASHSEED (the set-order check)")
    rpl.add_argument("--json", action="store_true")
    rpl.set_defaults(func=_cmd_replay)
    shw = sub.add_parser("show", help="print an instance's history as a timeline")
    shw.add_argument("source", help="a SQLite database, a postgresql:// URL, an export, or a trace file (.jsonl)")
    shw.add_argument("--schema", default=None, help=schema_help)
    shw.add_argument("--instance")
    shw.set_defaults(func=_cmd_show)
    rep = sub.add_parser("reproduce", help="re-run one simulated seed and report its failures")
    rep.add_argument("ref", help="the SimSpec: path/to/file.py:NAME or package.module:NAME")
    rep.add_argument("--seed", type=int, required=True)
    rep.add_argument("--faults", default="swarm", help="fault plan JSON, 'swarm' (default), 'all' (5 %%) or 'none'")
    rep.add_argument("--provider", choices=("memory", "sqlite"), default="memory")
    rep.add_argument("--nodes", type=_positive_int, default=2)
    rep.add_argument("--max-steps", type=_positive_int, default=None,
                     help="scheduler steps before the run stops (default: the harness's, 200000)")
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
    for name in ("path", "db", "source", "ref", "app", "out", "schema"):
        value = getattr(args, name, None)
        if isinstance(value, str) and not value.strip():
            # (an unset shell variable: "" would be taken as the current directory)
            print(f"duroxide-sim {args.command}: the {name} argument is empty", file=sys.stderr)
            return 2
    for name in ("db", "source", "path"):
        value = getattr(args, name, None)
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value) if isinstance(value, str) else None
        if scheme and not value.startswith(("postgresql://", "postgres://")):
            # (not echoed whole: a URL may hold a password)
            print(f"duroxide-sim {args.command}: unsupported URL scheme {scheme.group(0)!r}: the {name} argument takes "
                  "a file or directory, or a postgresql:// (postgres://) URL", file=sys.stderr)
            return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        # Ctrl-C anywhere (loading the scenarios, replaying, a subprocess): a message, no
        # traceback, the shell's code for an interrupted command.
        print(f"duroxide-sim {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of stdout went away (`... | head -1`): nothing more to say to it. Point
        # stdout at devnull so the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # (128 + SIGPIPE, what a shell reports for a writer stopped by a closed pipe)
    except OSError as exc:
        # A path the system refuses (too long, a loop of links, a device gone): an input
        # problem of the command line, not a finding (1).
        print(f"duroxide-sim {args.command}: {exc.strerror or exc}" + (f": {_printable(str(exc.filename))[:200]}"
              if exc.filename else ""), file=sys.stderr)
        return 2
