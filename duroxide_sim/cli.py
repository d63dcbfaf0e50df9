"""Command-line interface: ``duroxide-sim`` / ``python -m duroxide_sim``.

Commands:

* ``reproduce REF --seed N [--faults JSON] [--provider memory|sqlite] [--nodes K] [--trace]`` -
  re-run one simulated seed of the spec at REF (``path/to/file.py:NAME`` or
  ``package.module:NAME``) and report every broken property with its step; ``--trace`` prints
  the canonical trace. Exit 1 when a property fails.

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


def load_spec(ref: str) -> Any:
    """Resolve ``path/to/file.py:NAME`` or ``package.module:NAME`` to a SimSpec."""
    from .sim.harness import SimSpec

    if ":" not in ref:
        raise ValueError(f"spec reference {ref!r} must look like path/to/file.py:NAME or package.module:NAME")
    where, name = ref.rsplit(":", 1)
    if where.endswith(".py"):
        path = pathlib.Path(where)
        if not path.exists():
            raise ValueError(f"no such file: {where}")
        cwd = str(pathlib.Path.cwd())
        if cwd not in sys.path:
            sys.path.insert(0, cwd)
        dotted = ".".join(path.with_suffix("").parts) if not path.is_absolute() else None
        module = None
        if dotted:
            try:
                module = importlib.import_module(dotted)
            except ImportError:
                module = None
        if module is None:
            spec = importlib.util.spec_from_file_location(f"_duroxide_spec_{path.stem}", path)
            if spec is None or spec.loader is None:
                raise ValueError(f"cannot import {where}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    obj = getattr(module, name, None)
    if obj is None:
        raise ValueError(f"{where} has no attribute {name!r}")
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
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"{spec.name} seed {args.seed}: {result.steps} steps, faults: {sim.plan.describe()}, trace {result.trace_hash[:16]}")
        for f in result.failures:
            print(f.render())
        if not result.failures:
            print("all properties hold")
    return 1 if result.failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="duroxide-sim", description="Durable workflows: run, test and simulate.")
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("run", help="run scenario modules end to end and check their outputs")
    run.add_argument("path", help="a directory of scenario modules, or one module file")
    run.add_argument("--timeout-ms", type=int, default=30_000, help="per-instance wait (default 30000)")
    run.add_argument("--json", action="store_true", help="print results as JSON")
    run.set_defaults(func=_cmd_run)
    rep = sub.add_parser("reproduce", help="re-run one simulated seed and report its failures")
    rep.add_argument("ref", help="the SimSpec: path/to/file.py:NAME or package.module:NAME")
    rep.add_argument("--seed", type=int, required=True)
    rep.add_argument("--faults", default="swarm", help="fault plan JSON, 'swarm' (default) or 'none'")
    rep.add_argument("--provider", choices=("memory", "sqlite"), default="memory")
    rep.add_argument("--nodes", type=int, default=2)
    rep.add_argument("--sandbox", action="store_true", help="flag clock/random/I-O calls in orchestration code")
    rep.add_argument("--trace", action="store_true", help="print the canonical trace")
    rep.add_argument("--json", action="store_true", help="print a JSON summary")
    rep.set_defaults(func=_cmd_reproduce)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if exc.code in (0, None) else 2
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.func(args))
