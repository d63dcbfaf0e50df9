"""Command-line interface: ``duroxide-sim`` / ``python -m duroxide_sim``.

Commands so far:

* ``run PATH`` - load every scenario module in PATH (a directory of ``*.py`` files or one
  file), run each scenario's cases end to end on the in-memory provider with the production
  runtime, check each output, print a table. Exit codes: 0 all good, 1 a case failed,
  2 usage or input error.

A scenario module defines ``NAME``, ``register(runtime)`` and ``CASES``: a list of
``scenarios.Case``-like objects with ``instance``, ``orchestration``, ``input``, ``expect``
(and optional ``events``: ``[(kind, name, data)]`` with kind ``raise`` or ``enqueue``, sent right
after the start; queue messages are buffered, raised events need a persisted subscription).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import time
from typing import Any

__all__ = ["main"]


def _load_modules(path: pathlib.Path) -> list[Any]:
    files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_")) if path.is_dir() else [path]
    modules = []
    root = str(path if path.is_dir() else path.parent)
    parent = str(pathlib.Path(root).parent)
    if parent not in sys.path:
        sys.path.insert(0, parent)
    for file in files:
        spec = importlib.util.spec_from_file_location(f"_duroxide_scenario_{file.stem}", file)
        if spec is None or spec.loader is None:
            raise ValueError(f"cannot import {file}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if hasattr(module, "register") and hasattr(module, "CASES"):
            modules.append(module)
    return modules


def _run_module(module: Any, timeout_ms: int) -> dict[str, Any]:
    from . import Client, InMemoryProvider, Runtime, RuntimeOptions

    provider = InMemoryProvider()
    runtime = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    module.register(runtime)
    client = Client(provider)
    started = time.perf_counter()
    failures: list[str] = []
    runtime.start()
    try:
        for case in module.CASES:
            client.start_orchestration(case.instance, case.orchestration, case.input)
            for kind, name, data in getattr(case, "events", ()):
                if kind == "raise":
                    client.raise_event(case.instance, name, data)
                else:
                    client.enqueue_event(case.instance, name, data)
        for case in module.CASES:
            status = client.wait_for_orchestration(case.instance, timeout_ms)
            got = status.output if status.status == "Completed" else f"{status.status}: {status.error}"
            if got != case.expect:
                failures.append(f"{case.instance}: expected {case.expect!r}, got {got!r}")
    finally:
        runtime.shutdown(2000)
    return {
        "scenario": getattr(module, "NAME", module.__name__),
        "cases": len(module.CASES),
        "failures": failures,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _cmd_run(args: argparse.Namespace) -> int:
    path = pathlib.Path(args.path)
    if not path.exists():
        print(f"duroxide-sim: no such file or directory: {path}", file=sys.stderr)
        return 2
    try:
        modules = _load_modules(path)
    except Exception as exc:  # noqa: BLE001 - report import problems as input errors
        print(f"duroxide-sim: cannot load scenarios from {path}: {exc}", file=sys.stderr)
        return 2
    if not modules:
        print(f"duroxide-sim: no scenario modules (with register() and CASES) in {path}", file=sys.stderr)
        return 2
    results = [_run_module(m, args.timeout_ms) for m in modules]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        width = max(len(r["scenario"]) for r in results)
        print(f"{'scenario':<{width}}  cases  failures  seconds")
        for r in results:
            print(f"{r['scenario']:<{width}}  {r['cases']:>5}  {len(r['failures']):>8}  {r['seconds']:>7.3f}")
            for failure in r["failures"]:
                print(f"  FAILED {failure}")
    return 1 if any(r["failures"] for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duroxide-sim", description="Durable workflows: run, test and simulate.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run scenario modules end to end and check their outputs")
    run.add_argument("path", help="a directory of scenario modules, or one module file")
    run.add_argument("--timeout-ms", type=int, default=30_000, help="per-instance wait (default 30000)")
    run.add_argument("--json", action="store_true", help="print results as JSON")
    run.set_defaults(func=_cmd_run)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))
