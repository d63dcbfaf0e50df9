"""Nondeterminism detection for CI: replay recorded histories against the current code.

Histories come from the export format (:mod:`duroxide_sim.runtime.history_io`) or straight from
a SQLite database or a PostgreSQL schema (a ``postgresql://`` URL, opened read-only: see
:func:`load_source`). Each execution is replayed from scratch (``core.verify.verify_execution``);
every divergence is reported with instance, execution, event id, the recorded call, the call the
code makes now, and the source line of its yield/await.

``latest=True`` answers the upgrade question: "if I deploy version N+1 and it picks up the
in-flight instances recorded under version N, which ones break?" Each history is replayed with
the *latest* registered version instead of its pinned one; only in-flight (non-terminal)
instances are judged, since finished ones will never replay again.

Use from pytest::

    from duroxide_sim.testing.replay import assert_replays
    def test_histories_still_replay():
        assert_replays("tests/fixtures/histories", "myapp/workflows.py:register")
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from typing import Any

import attrs

from ..core.events import (
    KeyValueCleared, KeyValuesCleared, KeyValueSet, OrchestrationCompleted, OrchestrationContinuedAsNew,
    OrchestrationFailed,
)
from ..core.registry import Registry
from ..core.verify import kv_snapshots, verify_execution
from ..errors import InvalidInputError
from ..runtime.history_io import check_document, document_events, document_kv_base, export_instance, load_documents

_ENDINGS = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)

#: How a sandbox finding's message starts (a call the code made, not a divergence of its history).
SANDBOX_FINDING = "nondeterministic call: "

__all__ = ["Divergence", "load_app", "build_registry", "replay_documents", "load_source", "replay_source",
           "assert_replays"]


@attrs.frozen
class Divergence:
    instance: str
    execution_id: int
    message: str
    in_flight: bool

    def render(self) -> str:
        state = "in-flight" if self.in_flight else "finished"
        # An id with control characters (a newline, a carriage return, an escape sequence) is
        # shown as a JSON string: one line per divergence, nothing raw on a terminal or CI log.
        shown = self.instance if self.instance.isprintable() else json.dumps(self.instance)
        return f"{shown} (execution {self.execution_id}, {state}): {self.message}"


class _LatestRegistry(Registry):
    """Resolves every lookup to the latest registered version (the upgrade check), whatever
    version policy the app sets for new starts (an exact-version policy pins *starts* during a
    staged rollout; the question here is what the newest code does with old histories)."""

    def __init__(self, inner: Registry) -> None:
        self.__dict__.update(inner.__dict__)

    def resolve(self, name: str, version: str | None = None):  # type: ignore[override]
        versions = self.versions(name)
        return super().resolve(name, versions[-1]) if versions else None


def build_registry(app: Any) -> Registry:
    """A Registry from a SimSpec, a ``fn(runtime)`` or a SimSpec-style ``setup(runtime, world)``
    that registers handlers, or a Registry."""
    from ..providers.memory import InMemoryProvider
    from ..runtime.runtime import Runtime
    from ..sim.clock import SimClock
    from ..sim.harness import SimSpec
    from ..sim.world import ExternalWorld

    if isinstance(app, Registry):
        return app
    clock = SimClock()
    rt = Runtime(InMemoryProvider(clock), clock=clock)
    if not isinstance(app, SimSpec) and not callable(app):
        raise TypeError(f"app must be a SimSpec, a callable(runtime) or a Registry, got {type(app).__name__}")
    try:
        if isinstance(app, SimSpec) or _takes_world(app):
            (app.setup if isinstance(app, SimSpec) else app)(rt, ExternalWorld())
        else:
            app(rt)
    except Exception as exc:  # noqa: BLE001 - anything the app's own code raises
        raise InvalidInputError(f"the app raised while registering its handlers: {_describe(exc)}") from exc
    return rt.registry


def _takes_world(fn: Any) -> bool:
    """A SimSpec-style ``setup(rt, world)`` (two positional parameters) rather than ``fn(rt)``."""
    import inspect

    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        return False
    return len(params) == 2


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame that raised."""
    import traceback

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames and not isinstance(exc, SyntaxError) else ""
    return f"{type(exc).__name__}: {exc}{where}"


def load_app(ref: str) -> Any:
    """Resolve ``path/to/file.py:NAME`` or ``package.module:NAME``."""
    import importlib
    import importlib.util
    import pathlib
    import sys

    if ":" not in ref:
        raise ValueError(f"app reference {ref!r} must look like path/to/file.py:NAME or package.module:NAME")
    where, name = ref.rsplit(":", 1)
    if not where.strip() or not name.strip():
        raise ValueError(f"app reference {ref!r} must look like path/to/file.py:NAME or package.module:NAME "
                         f"(the {'file or module' if not where.strip() else 'NAME'} is missing)")
    if ".py:" in where:
        raise ValueError(f"app reference {ref!r} must look like path/to/file.py:NAME (one ':' after the file)")
    if where.endswith(".py"):
        path = pathlib.Path(where)
        if not path.exists():
            raise ValueError(f"no such file: {where}")
        if str(pathlib.Path.cwd()) not in sys.path:
            sys.path.insert(0, str(pathlib.Path.cwd()))
        parts = path.with_suffix("").parts
        # Imported by its dotted name (so its package's relative imports work): the name its
        # enclosing packages (directories with __init__.py) give it, wherever the path points
        # from; else the relative path when it spells one. Otherwise ("../app.py", a plain
        # directory) it is loaded from its location.
        dotted = ""
        package_root = _package_root(path)
        if package_root is not None:
            root_dir, dotted = package_root
            if str(root_dir) not in sys.path:
                sys.path.insert(0, str(root_dir))
            _forget_if_elsewhere(dotted, path.resolve())
        elif not path.is_absolute() and all(p.isidentifier() for p in parts):
            dotted = ".".join(parts)
        module = None
        if dotted:
            try:
                module = importlib.import_module(dotted)
            except ImportError:
                module = None
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own code raised (or exited)
                raise ImportError(f"cannot import {where}: {_describe(exc)}") from exc
            if module is not None and not _is_file(module, path):
                module = None  # the name is another module's (``signal.py``: the standard library's)
        if module is None:
            # Its sibling modules are importable by name, as when it ran as a script (a scenario
            # file's `from _common import ...` works from any directory the repro line is pasted in).
            use_flat_directory(path.resolve().parent)
            # Registered in sys.modules (under a name unique to the file) as an import would be:
            # dataclasses, pickling and typing.get_type_hints look modules up there, and so does
            # a repro command naming a module-level spec.
            import hashlib

            resolved = str(path.resolve())
            name_in_sys = f"_duroxide_app_{path.stem}_{hashlib.sha1(resolved.encode()).hexdigest()[:10]}"
            spec = importlib.util.spec_from_file_location(name_in_sys, resolved)
            if spec is None or spec.loader is None or not path.is_file():
                raise ValueError(f"cannot load {where}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            previous = sys.modules.get(name_in_sys)
            sys.modules[name_in_sys] = module  # loaded afresh each time (the file may have changed)
            try:
                spec.loader.exec_module(module)
            except BaseException as exc:
                if previous is None:
                    sys.modules.pop(name_in_sys, None)
                else:
                    sys.modules[name_in_sys] = previous
                if isinstance(exc, SystemExit):  # (a script's sys.exit / argparse at module level)
                    raise ImportError(f"cannot import {where}: it exits when imported (SystemExit({exc.code!r}); "
                                      "guard script code with `if __name__ == \"__main__\":`)") from exc
                if not isinstance(exc, Exception):
                    raise
                raise ImportError(f"cannot import {where}: {_describe(exc)}") from exc
    else:
        try:
            module = importlib.import_module(where)
        except ImportError:
            raise
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the module's own code raised (or exited)
            raise ImportError(f"cannot import {where}: {_describe(exc)}") from exc
    if not hasattr(module, name):
        raise ValueError(f"{where} has no attribute {name!r}")
    return getattr(module, name)


def _is_file(module: Any, path: Any) -> bool:
    """Whether ``module`` was loaded from the file ``path``."""
    import pathlib

    origin = getattr(module, "__file__", None)
    return origin is not None and pathlib.Path(origin).resolve() == pathlib.Path(path).resolve()


def _package_root(path: Any) -> tuple[Any, str] | None:
    """(the directory above the outermost enclosing package, the module's dotted name) for a
    file inside a package (a directory with ``__init__.py``), else None."""
    resolved = path.resolve()
    names = [resolved.stem]
    directory = resolved.parent
    while (directory / "__init__.py").exists() and directory.name.isidentifier():
        names.insert(0, directory.name)
        directory = directory.parent
    if len(names) == 1 or not resolved.stem.isidentifier():
        return None
    return directory, ".".join(names)


#: Plain (non-package) directories put on sys.path for their modules' sibling imports, latest
#: last; only the newest stays (see use_flat_directory).
_FLAT_DIRS: list[str] = []


def use_flat_directory(directory: Any) -> None:
    """Make ``directory``'s modules importable by their plain names (``from _common import x``
    in a scenario or app file loaded by its path): the directory goes last on ``sys.path`` (a
    helper never shadows an installed module), the one an earlier call put there is taken off
    (two scenario directories may each have their own ``_common.py``), and a module already
    imported from another directory under the name of one of this directory's files is
    forgotten, so the import finds this directory's."""
    import pathlib
    import sys

    root = pathlib.Path(directory).resolve()
    entry = str(root)
    for old in _FLAT_DIRS:
        if old != entry and old in sys.path:
            sys.path.remove(old)
    _FLAT_DIRS[:] = [entry]
    if entry not in sys.path:
        sys.path.append(entry)
    for file in sorted(root.glob("*.py")):
        if file.stem.isidentifier():
            _forget_if_elsewhere(file.stem, file)


def _installed(origin: Any) -> bool:
    """Whether a module file lies in the standard library or an installed package's directory."""
    import sysconfig

    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return any(origin.is_relative_to(root) for root in roots)


def _forget_if_elsewhere(dotted: str, file: Any) -> None:
    """Drop an already-imported module of that name - with its top-level package and everything
    under it - when it was loaded from another file (two scenario or app directories may use the
    same names): the caller means this file."""
    import pathlib
    import sys

    loaded = sys.modules.get(dotted)
    origin = getattr(loaded, "__file__", None)
    if origin is not None and _installed(pathlib.Path(origin).resolve()):
        return  # the standard library's or an installed package's: never taken out from under the process
    if loaded is not None and origin is not None and pathlib.Path(origin).resolve() != pathlib.Path(file).resolve():
        top = dotted.split(".")[0]
        for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
            del sys.modules[key]


def _kv_starts(executions: dict[int, list[Any]], kv_base: dict[str, tuple[str, int]] | None) -> dict[int, Any]:
    """The KV store each execution started with, None where it is not known.

    Complete histories rebuild it from the events (:func:`kv_snapshots`). When earlier executions
    were pruned, the document's ``kv_base`` (the stored KV store: the running execution's start,
    or everything once the last one ended) gives the last execution's start, and an earlier one's
    only through executions that changed no key (a KV event cannot be undone to see what was
    there before it). A document without ``kv_base`` (an older export) is replayed as before."""
    ids = sorted(executions)
    if ids[0] == 1 or kv_base is None:
        return kv_snapshots(executions)
    out: dict[int, Any] = dict.fromkeys(ids)
    last = ids[-1]
    ended = any(isinstance(e, _ENDINGS) for e in executions[last])
    if ended and _changes_kv(executions[last]):
        return out
    out[last] = dict(kv_base)
    for execution_id in reversed(ids[:-1]):
        if _changes_kv(executions[execution_id]):
            break
        out[execution_id] = dict(kv_base)
    return out


def _changes_kv(events: list[Any]) -> bool:
    return any(isinstance(e, (KeyValueSet, KeyValueCleared, KeyValuesCleared)) for e in events)


def replay_documents(docs: list[dict[str, Any]], registry: Registry, *, latest: bool = False,
                     sandbox: bool = True, skipped: list[tuple[str, int]] | None = None) -> list[Divergence]:
    """Every divergence of ``docs`` from the code of ``registry``.

    With ``sandbox`` (the default) the replays run under the simulator's
    :class:`~duroxide_sim.sim.sandbox.Sandbox`: orchestration code that reads the clock, draws
    randomness or does I/O is reported even where its history still replays - a
    ``time.time()`` branch follows the recorded path only until the day it does not. Each call
    (a call and its line: two calls on one line are two reports) is reported once, on the first
    execution that made it.

    Executions whose starting KV store is unknown (earlier executions pruned, see
    :func:`_kv_starts`) are not replayed; ``(instance, execution)`` of each goes to ``skipped``."""
    from ..sim.sandbox import Sandbox

    reg: Registry = _LatestRegistry(registry) if latest else registry
    out: list[Divergence] = []
    seen_calls: dict[tuple[str, int, str], Divergence] = {}
    for doc in docs:
        executions = document_events(doc)
        if not executions:
            continue
        last = max(executions)
        snaps = _kv_starts(executions, document_kv_base(doc))
        for execution_id, events in executions.items():
            terminal = any(isinstance(e, _ENDINGS) for e in events)
            in_flight = execution_id == last and not terminal
            if latest and not in_flight:
                continue
            if snaps[execution_id] is None:
                if skipped is not None:
                    skipped.append((doc["instance_id"], execution_id))
                continue
            box = Sandbox() if sandbox else None
            with box if box is not None else contextlib.nullcontext():
                problem = verify_execution(doc["instance_id"], execution_id, events, reg, snaps[execution_id])
            for v in box.violations if box is not None else ():
                # One report per call and line: two calls on one line are both named (the sandbox
                # reports a call once, not what it does inside: uuid4's os.urandom is not a second).
                site = (v.filename, v.lineno, v.call)
                if site not in seen_calls:
                    seen_calls[site] = Divergence(doc["instance_id"], execution_id, (
                        f"{SANDBOX_FINDING}{v.render()} - orchestration code must not read the clock, draw "
                        "randomness or do I/O (use ctx.utc_now(), ctx.new_guid(), an activity); this history "
                        "still replays, but another run of the code may take another path"), in_flight)
                    out.append(seen_calls[site])
            if problem is not None:
                out.append(Divergence(doc["instance_id"], execution_id, problem, in_flight))
    return out


def _provider_documents(provider: Any, label: str) -> list[dict[str, Any]]:
    """Every instance of a database, checked like an export file: a database whose history rows
    are missing or corrupt is an input error (exit 2), not a divergence of the code, and never a
    clean pass."""
    docs = []
    for instance in reversed(provider.list_instances()):
        doc = export_instance(provider, instance)
        if not doc["executions"]:
            raise InvalidInputError(f"{label}: instance {instance!r} has no history rows (a truncated copy "
                                    "or a failed restore?): nothing of it can be replayed")
        docs.append(check_document(doc, f"{label}: instance {instance!r}"))
    return docs


def load_source(source: str, *, schema: str | None = None) -> list[dict[str, Any]]:
    """The recorded histories of ``source`` as export documents: an export (file or directory),
    a SQLite database file (read through an in-memory copy), or a PostgreSQL URL
    (``postgresql://`` / ``postgres://``; ``schema``, default ``public``), opened with
    :meth:`PostgresProvider.open_read_only <duroxide_sim.providers.postgres.PostgresProvider.open_read_only>`
    in snapshot mode: nothing is created, migrated or written, and every history comes from one
    consistent snapshot. Messages name a PostgreSQL source by schema, host, database and user,
    never its password. A source without any history raises :class:`InvalidInputError`."""
    import pathlib

    from ..providers.postgres import PostgresProvider, is_postgres_url

    if is_postgres_url(source):
        provider = PostgresProvider.open_read_only(source, "public" if schema is None else schema, snapshot=True)
        try:
            docs = _provider_documents(provider, provider.location)
            label = provider.location
        finally:
            provider.close()
    else:
        if schema is not None:
            raise InvalidInputError(f"a schema ({schema!r}) applies only to a PostgreSQL URL source "
                                    "(postgresql://...), not to a file or directory")
        path = pathlib.Path(source)
        label = str(path)
        if path.is_file() and path.suffix.lower() != ".json":
            from ..providers.sqlite import SqliteProvider

            # A read-only check: an in-memory copy, so the file may be read-only and stays untouched.
            provider = SqliteProvider.snapshot_of(path)
            try:
                docs = _provider_documents(provider, label)
            finally:
                getattr(provider, "close", lambda: None)()
        else:
            docs = load_documents(path)
    if not docs:
        raise InvalidInputError(f"no recorded histories in {label}: nothing to replay")
    return docs


def replay_source(source: str, app: Any, *, schema: str | None = None, latest: bool = False, sandbox: bool = True,
                  skipped: list[tuple[str, int]] | None = None) -> list[Divergence]:
    """Replay an export (file or directory), a SQLite database or a PostgreSQL database
    (``postgresql://...`` URL, ``schema`` default ``public``, read-only: see
    :func:`load_source`) against ``app``. A source that holds no history at all raises
    :class:`InvalidInputError`: "every history replays cleanly" after checking nothing would let
    CI pass on a wrong path. ``sandbox``: see :func:`replay_documents`."""
    docs = load_source(source, schema=schema)
    return replay_documents(docs, build_registry(app), latest=latest, sandbox=sandbox, skipped=skipped)


def assert_replays(source: str, app: Any | str, *, schema: str | None = None, latest: bool = False,
                   sandbox: bool = True) -> None:
    """pytest helper: fail with every divergence listed (one per line). ``source``: as
    :func:`replay_source` (a PostgreSQL URL too, with ``schema``). It replays in the calling
    process, under its string-hash seed only: ``duroxide-sim replay`` also replays under another
    one, which is what catches set-order dependence (see :mod:`.hashseed`)."""
    target: Callable[..., Any] | Any = load_app(app) if isinstance(app, str) else app
    divergences = replay_source(source, target, schema=schema, latest=latest, sandbox=sandbox)
    if divergences:
        raise AssertionError(
            f"{len(divergences)} recorded execution(s) no longer replay:\n" + "\n".join(d.render() for d in divergences)
        )
