"""Registries of orchestrations and activities: names, versions, policies (SPEC §12, §5).

* Activities are unversioned: one handler per name. Names starting with the reserved
  ``__duroxide_syscall:`` prefix are refused.
* Orchestrations are registered per (name, semver). ``register`` means version 1.0.0;
  versioned registrations must come in strictly ascending order per name. Each name has a
  policy: ``Latest`` (default) or ``Exact(v)``. A lookup with an explicit version matches
  exactly; without one it follows the policy.
* Names are opaque strings: the ``{crate}::{type}::{name}`` convention works as-is.

Handlers remember how to call the user function (generator, coroutine or plain function, sync
or async activity) and, for typed registrations, the input type to structure into.
"""

from __future__ import annotations

import functools
import inspect
import re
import typing
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import ConfigurationError
from .texts import plain_text, text_problem

__all__ = [
    "SYSCALL_PREFIX",
    "SYSCALL_UTC_NOW",
    "SYSCALL_NEW_GUID",
    "SYSCALL_GET_KV",
    "parse_semver",
    "semver_numbers",
    "Handler",
    "Registry",
]

SYSCALL_PREFIX = "__duroxide_syscall:"
SYSCALL_UTC_NOW = SYSCALL_PREFIX + "utc_now_ms"
SYSCALL_NEW_GUID = SYSCALL_PREFIX + "new_guid"
SYSCALL_GET_KV = SYSCALL_PREFIX + "get_kv_value"

DEFAULT_VERSION = "1.0.0"


def semver_numbers(text: str, *, suffix: bool = False) -> tuple[int, int, int] | None:
    """The semver rule, the only copy of it: ``(major, minor, patch)`` of ``text`` when it is
    exactly ``MAJOR.MINOR.PATCH`` (see :data:`_SEMVER_NUMBER` for what a number may be), else
    None. ``suffix``: a ``-pre`` / ``+build`` tail is cut off first (engine versions and the
    providers' pins and filters carry one; orchestration versions may not). Callers raise their
    own error type (:func:`parse_semver` here, ``providers._shared.parse_semver`` there)."""
    if suffix:
        text = text.split("+", 1)[0].split("-", 1)[0]
    match = _SEMVER.fullmatch(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch)


def parse_semver(version: str) -> tuple[int, int, int]:
    """``"1.2.3"`` -> ``(1, 2, 3)``; anything else raises ConfigurationError."""
    if not isinstance(version, str):
        raise ConfigurationError(f"version must be a string like '1.2.0', got {type(version).__name__}")
    numbers = semver_numbers(version)
    if numbers is None:
        raise ConfigurationError(f"version {version!r}"[:120] + " is not semver 'major.minor.patch' (ASCII numbers "
                                 "without leading zeros, at most 18 digits each)")
    return numbers


def parse_engine_version(text: str) -> tuple[int, int, int]:
    """An engine version (a pin, a ``supported_versions`` bound) as ``(major, minor, patch)``; a
    ``-pre``/``+build`` suffix is ignored, as the providers' capability filters ignore it.
    ConfigurationError for anything else."""
    if not isinstance(text, str):
        raise ConfigurationError(f"version must be a string like '0.1.0', got {type(text).__name__}")
    return parse_semver(text.split("+", 1)[0].split("-", 1)[0])


#: A semver number: no leading zero (``01.0.0`` would order as 1.0.0 but match as another
#: string), ASCII digits only (``str.isdigit`` accepts ``²`` and Arabic-Indic digits), and small
#: enough for the providers' 64-bit version columns.
_SEMVER_NUMBER = r"(0|[1-9][0-9]{0,17})"
#: A whole version: three such numbers separated by dots (one match, not a split and three:
#: every simulated process restart and every dispatcher parses versions).
_SEMVER = re.compile(rf"{_SEMVER_NUMBER}\.{_SEMVER_NUMBER}\.{_SEMVER_NUMBER}", re.ASCII)

#: Names :func:`_check_name` accepted (plain ``str`` only: immutable, so the verdict stands); a
#: simulation registers the same names again on every simulated process restart.
_CHECKED_NAMES: set[str] = set()
_CHECKED_NAMES_MAX = 4096


def _check_name(name: Any, what: str) -> str:
    if type(name) is str and name in _CHECKED_NAMES:
        return name  # (what plain_text returns for a plain str)
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError(f"{what} name must be a non-empty string, got {name!r}")
    problem = text_problem(name)  # (a name no client or store can hold could never be started)
    if problem is not None:
        raise ConfigurationError(f"{what} name {problem}, got {name!r}"[:300])
    if type(name) is str and len(_CHECKED_NAMES) < _CHECKED_NAMES_MAX:
        _CHECKED_NAMES.add(name)
    return plain_text(name)


def _annotated(fn: Callable[..., Any]) -> Any:
    """The function whose annotations describe ``fn``'s parameters: itself, the function of a
    ``functools.partial``, or the ``__call__`` of a callable object."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.isfunction(fn) or inspect.ismethod(fn):
        return fn
    call = vars(type(fn)).get("__call__") if callable(fn) else None  # a class-level def __call__
    return call if inspect.isfunction(call) else fn


def _input_type(fn: Callable[..., Any]) -> Any:
    """The annotation of the input parameter (``fn(ctx, input: T)``), if any. An annotation
    that names nothing reachable (a class local to a function, under ``from __future__ import
    annotations``) is a ConfigurationError at registration: silently treating the handler as
    untyped would hand it a dict where it expects the record."""
    params = list(inspect.signature(fn).parameters.values())
    if len(params) < 2:
        return None
    return resolve_annotation(fn, params[1].name)


def resolve_annotation(fn: Callable[..., Any], name: str) -> Any:
    """The annotation of parameter ``name`` (or ``"return"``) of a handler, resolved: through
    ``typing.get_type_hints`` when it can, else the one annotation evaluated in the function's
    module and closure. None when there is no annotation; ConfigurationError when a string
    annotation names nothing reachable. Reads the function behind a ``functools.partial`` or a
    callable object."""
    target = _annotated(fn)
    raw = getattr(target, "__annotations__", {}).get(name)
    if raw is None:
        return None
    try:
        return typing.get_type_hints(target).get(name)
    except Exception:  # noqa: BLE001 - resolve the one annotation that matters below
        pass
    if not isinstance(raw, str):
        return raw
    scope = dict(getattr(target, "__globals__", {}))
    try:
        scope.update(inspect.getclosurevars(target).nonlocals)
    except (TypeError, ValueError):
        pass
    try:
        return eval(raw, scope)  # noqa: S307 - the user's own annotation, as typing evaluates it
    except Exception as exc:  # noqa: BLE001
        what = "the return value" if name == "return" else f"parameter {name!r}"
        raise ConfigurationError(
            f"cannot resolve the type annotation {raw!r} of {what} of {getattr(fn, '__qualname__', fn)!r} "
            f"({type(exc).__name__}: {exc}); define the type at module level, or register the handler untyped"
        ) from exc


@attrs.frozen(kw_only=True)
class Handler:
    """A registered function and how to drive it."""

    name: str
    fn: Callable[..., Any]
    version: str = DEFAULT_VERSION
    style: str = "plain"  # "generator" | "coroutine" | "plain" (orchestrations); "sync" | "async" (activities)
    typed: bool = False
    input_type: Any = None
    takes_input: bool = True


#: Introspection results by what they depend on (see :func:`_shape_key`): a simulation
#: re-registers the same functions on every simulated process restart, and
#: ``inspect``/``get_type_hints`` dominate that.
_SHAPES: dict[Any, tuple[str, int, Any]] = {}
_SHAPES_MAX = 4096
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class _Ident:
    """Hashes and compares by identity, and keeps the object alive (so its id stays unique)."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Ident) and other.obj is self.obj


def _shape_key(fn: Callable[..., Any], *, typed: bool, activity: bool) -> Any:
    """What a handler's shape depends on, or None (not cached). For each function of the
    ``__wrapped__`` chain (``inspect.signature`` follows it, so every handler wrapped by one
    ``functools.wraps`` decorator shares the wrapper's code but not its signature): the code
    object and module globals by identity (code objects compare equal across files when their
    bodies match), the annotations, and for typed handlers the closure variables that string
    annotations name (a class local to ``setup`` is a new class on every call, and each
    registration must resolve to its own). A function with its own ``__signature__`` is not
    cached."""
    parts: list[Any] = []
    f: Any = fn
    while True:
        code = getattr(f, "__code__", None)
        if code is None or "__signature__" in getattr(f, "__dict__", ()) or len(parts) > 32:
            return None
        annotations = getattr(f, "__annotations__", None) or {}
        cells: tuple[Any, ...] = ()
        closure = getattr(f, "__closure__", None)
        if typed and closure:
            names = frozenset(  # membership only
                word for raw in annotations.values() if isinstance(raw, str) for word in _IDENTIFIER.findall(raw)
            )
            if names:
                cells = tuple(
                    (name, _Ident(_cell_value(cell)))
                    for name, cell in zip(code.co_freevars, closure, strict=False)
                    if name in names
                )
        parts.append((_Ident(code), id(getattr(f, "__globals__", None)), tuple(annotations.items()), cells))
        f = getattr(f, "__wrapped__", None)
        if f is None:
            return (typed, activity, tuple(parts))


def _cell_value(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell (a variable assigned later in the enclosing function)
        return None


def _shape(name: str, fn: Callable[..., Any], *, typed: bool, activity: bool) -> tuple[str, int, Any]:
    """(style, parameter count, input type) of a handler function, cached (:func:`_shape_key`).
    ConfigurationError for an async generator (never cached: a hit is a function that passed)."""
    key = _shape_key(fn, typed=typed, activity=activity)
    if key is not None:
        try:
            hit = _SHAPES.get(key)
        except TypeError:  # an unhashable annotation: just do not cache
            key = hit = None
        if hit is not None:
            return hit
    shape = _inspect_shape(name, fn, typed=typed, activity=activity)
    if key is not None and len(_SHAPES) < _SHAPES_MAX:
        _SHAPES[key] = shape
    return shape


def _inspect_shape(name: str, fn: Callable[..., Any], *, typed: bool, activity: bool) -> tuple[str, int, Any]:
    # (checked here, with the shape: it reads the code flags, which the cache key holds by identity)
    if inspect.isasyncgenfunction(fn):
        raise ConfigurationError(f"{name!r}: async generators are not supported; use async def or a generator")
    if inspect.iscoroutinefunction(fn):
        style = "async" if activity else "coroutine"
    elif activity:
        style = "sync"
    else:
        style = "generator" if inspect.isgeneratorfunction(fn) else "plain"
    try:
        nparams = len(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        nparams = 2
    return style, nparams, _input_type(fn) if typed else None


def _make_handler(name: str, fn: Callable[..., Any], *, version: str, typed: bool, activity: bool) -> Handler:
    if not callable(fn):
        raise ConfigurationError(f"handler for {name!r} must be callable, got {type(fn).__name__}")
    style, nparams, input_type = _shape(name, fn, typed=typed, activity=activity)  # (refuses async generators)
    return Handler(
        name=name,
        fn=fn,
        version=version,
        style=style,
        typed=typed,
        input_type=input_type,
        takes_input=nparams >= 2,
    )


class Registry:
    """Orchestration and activity handlers of one runtime (or one simulation)."""

    def __init__(self) -> None:
        self._activities: dict[str, Handler] = {}
        # name -> list of (semver, Handler) in ascending order
        self._orchestrations: dict[str, list[tuple[tuple[int, int, int], Handler]]] = {}
        self._policies: dict[str, str | None] = {}  # None = Latest, else exact version

    # --- activities ------------------------------------------------------------------------

    def add_activity(self, name: str, fn: Callable[..., Any], *, typed: bool = False) -> Handler:
        name = _check_name(name, "activity")
        if name.startswith(SYSCALL_PREFIX):
            raise ConfigurationError(f"activity name {name!r} uses the reserved prefix {SYSCALL_PREFIX!r}")
        if name in self._activities:
            raise ConfigurationError(f"activity {name!r} is already registered")
        handler = _make_handler(name, fn, version="", typed=typed, activity=True)
        self._activities[name] = handler
        return handler

    def activity(self, name: str) -> Handler | None:
        return self._activities.get(name)

    def activity_names(self) -> list[str]:
        return list(self._activities)

    # --- orchestrations ----------------------------------------------------------------------

    def add_orchestration(
        self, name: str, fn: Callable[..., Any], *, version: str | None = None, typed: bool = False
    ) -> Handler:
        name = _check_name(name, "orchestration")
        ver = DEFAULT_VERSION if version is None else version
        key = parse_semver(ver)
        versions = self._orchestrations.get(name, [])
        if any(k == key for k, _ in versions):
            raise ConfigurationError(f"orchestration {name!r} version {ver} is already registered")
        if versions and key < versions[-1][0]:
            raise ConfigurationError(
                f"orchestration {name!r}: versions must be registered in ascending order "
                f"({ver} after {versions[-1][1].version})"
            )
        handler = _make_handler(name, fn, version=ver, typed=typed, activity=False)
        # (the name is added only now: a refused handler left it behind with no version)
        self._orchestrations.setdefault(name, versions).append((key, handler))
        return handler

    def set_version_policy(self, name: str, exact_version: str | None) -> None:
        """``None`` = Latest (default); a version string = always start that version."""
        name = _check_name(name, "orchestration")
        if exact_version is not None:
            parse_semver(exact_version)
        self._policies[name] = exact_version

    def resolve(self, name: str, version: str | None = None) -> Handler | None:
        """Exact match when ``version`` is given, else the name's policy. None if missing."""
        versions = self._orchestrations.get(name)
        if not versions:
            return None
        wanted = version if version is not None else self._policies.get(name)
        if wanted is None:
            return versions[-1][1]
        for _, handler in versions:
            if handler.version == wanted:
                return handler
        return None

    def orchestration_names(self) -> list[str]:
        return list(self._orchestrations)

    def policy_version(self, name: str) -> str | None:
        """The exact version the name's policy starts, or None (Latest)."""
        return self._policies.get(name)

    def describe_missing(self, name: str, version: str | None = None) -> str:
        """What :meth:`resolve` did not find, in words: ``orchestration 'F' version 3.0.0 (its
        version policy) is not registered (registered: 1.0.0)``."""
        wanted, why = (version, "") if version else (self._policies.get(name), " (its version policy)")
        what = f"orchestration {name!r}" + (f" version {wanted}{why}" if wanted else "")
        known = self.versions(name)
        return f"{what} is not registered" + (f" (registered: {', '.join(known)})" if known else "")

    def versions(self, name: str) -> list[str]:
        return [h.version for _, h in self._orchestrations.get(name, [])]
