"""Sandbox: catch orchestration code that reads the clock, draws randomness or does I/O.

Orchestration code must be a pure function of its history. While the sandbox is active, a
profile hook (``sys.setprofile``) watches calls made *while the replay engine is running
orchestration code* (inside ``_Engine.poll``, and inside ``_Engine._resolve_text``, where a
typed result - an attrs class or dataclass whose default factory may read the clock - is built
when a completion is applied) and records each forbidden call with the orchestration's name and
the user source line that made it. Activity code (which may do anything) runs outside those and
is not flagged.

Forbidden: ``time.time/time_ns/monotonic/perf_counter/process_time/thread_time/clock_gettime/
sleep``, ``time.localtime/gmtime/ctime/asctime/strftime`` without their time argument (they
read the clock then; with it they are pure; a literal ``None`` time, ``localtime(None)``, reads
the clock too and is reported; a variable holding None is not seen), ``datetime.now/utcnow/today`` (also on
subclasses, as libraries such as pendulum or freezegun define), module-level ``random.*`` (the
hidden global ``Random``) and any ``Random`` seeded from the OS (``random.Random()``,
``random.seed()``), ``uuid.uuid1/uuid4``, ``os.urandom/getrandom``, reading ``os.environ``
(``os.getenv`` included), the process's and host's identity (``os.getpid/getppid``,
``socket.gethostname``, ``threading.get_ident/get_native_id``: they differ between the process
that recorded a history and the one that replays it), ``print`` (use ``ctx.trace_*``), ``open``
and other filesystem calls (``os.stat`` - behind ``os.path.exists/isfile``, ``Path.exists`` -,
``os.listdir/scandir/access/open``, creating, renaming or removing files), starting a process
(``subprocess``, ``os.system``), sockets, and starting threads. A clock read by ``logging`` is
reported as logging (use ``ctx.trace_*``, which is replay-safe).

One call is one report: while a forbidden Python-level call is running (``uuid.uuid4()``,
``random.choice()``, ``subprocess.Popen()``), what it does inside (``os.urandom``,
``getrandbits``, reading ``os.environ``) is not reported again. Calls the standard library
makes to read static data are not the orchestration's doing and are not reported: the import
machinery (a lazy ``import`` stats and reads files), ``linecache``/``tokenize`` (formatting a
traceback or showing a warning reads the source file) and ``zoneinfo`` (the time zone database).
The process and thread identity functions are reported only when called directly from
non-stdlib code (``dataclasses``' ``__repr__`` reads the thread id as a recursion guard).

Profile hooks see calls no matter how the function was imported (``from time import time``
included), because they compare the called objects, not names. The reported line is the
innermost frame of the orchestration's own code (not this package, not the standard library,
not generated code such as a dataclass ``__init__`` when a real source line calls it, not the
cattrs/attrs machinery that builds a typed value; when no user frame made the call - a typed
result whose default factory is the C function itself, ``attrs.field(factory=time.time)`` - the
line the orchestration waits at for that result); calls the
engine itself makes while running a turn (formatting a traceback reads source files) are not
the orchestration's and are not reported.

What escapes: CPython reports to a profile hook only the calls made from Python code. A C
function (``time.time``, ``datetime.now``, ``os.urandom``...) that C code calls on the
orchestration's behalf is invisible: through ``functools.partial(datetime.now, tz)``,
``map(time.time, ...)``, ``sorted(key=...)``/``min``/``max`` with a C key, a
``defaultdict(time.time)`` factory. (A Python function behind them - ``uuid.uuid4``,
``random.choice`` - is still seen.) The determinism replay (every history replayed from scratch,
in the simulator and in ``duroxide-sim replay``) still catches such a call when it changes what
the code schedules.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any

import attrs

__all__ = ["Sandbox", "Violation"]

_PKG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "")
#: The standard library's directories, and the installed-packages ones inside them (user code
#: installed with pip lives in site-packages, which is under the stdlib directory).
_STDLIB = tuple(dict.fromkeys(os.path.join(os.path.realpath(p), "") for p in
                              (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"],
                               os.path.dirname(os.__file__))))
_SITE = tuple(dict.fromkeys(os.path.join(os.path.realpath(p), "") for p in
                            (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"])))


def _is_stdlib(filename: str) -> bool:
    if not filename.startswith(_STDLIB):
        real = os.path.realpath(filename) if filename[:1] not in ("<", "") else filename
        if not real.startswith(_STDLIB):
            return False
        filename = real
    return not filename.startswith(_SITE) and "site-packages" not in filename and "dist-packages" not in filename
#: Libraries that build typed values for the engine (cattrs structuring a result): a forbidden
#: call made under them is reported at the user frame that asked for the value.
_CONVERTERS = {"cattrs", "cattr", "attr", "attrs"}
_TOOLING = {"hypothesis", "_pytest", "pytest", "pluggy", "coverage", "_hypothesis_globals"}
#: Standard-library modules that read static data for the interpreter: a forbidden call made
#: by (or under) one of them, before the walk reaches the orchestration's line, is not the
#: orchestration's doing - the import machinery stats and reads files (a lazy ``import``),
#: ``linecache``/``tokenize`` read a source file (a traceback formatted, a warning shown),
#: ``zoneinfo`` reads the time zone database.
_MACHINERY = {"importlib", "_frozen_importlib", "_frozen_importlib_external", "zipimport", "linecache", "tokenize",
              "zoneinfo"}


@attrs.frozen
class Violation:
    orchestration: str
    call: str
    filename: str
    lineno: int

    def render(self) -> str:
        return f"orchestration {self.orchestration!r} called {self.call} at {self.filename}:{self.lineno}"


def _forbidden_c() -> dict[Any, str]:
    import datetime
    import random
    import socket
    import threading
    import time

    table: dict[Any, str] = {}
    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns", "sleep",
                 "process_time", "process_time_ns", "thread_time", "thread_time_ns", "clock_gettime",
                 "clock_gettime_ns"):
        fn = getattr(time, name, None)  # (clock_gettime and thread_time are not on every platform)
        if fn is not None:
            table[fn] = f"time.{name}()"
    table[os.urandom] = "os.urandom()"
    if hasattr(os, "getrandom"):
        table[os.getrandom] = "os.getrandom()"
    table[print] = "print() (use ctx.trace_info)"
    table[open] = "open() (file I/O)"
    for name in ("stat", "lstat", "listdir", "scandir", "access", "open", "readlink", "mkdir", "rmdir", "remove",
                 "unlink", "rename", "replace", "truncate", "chmod", "utime"):
        fn = getattr(os, name, None)
        if fn is not None:
            table[fn] = f"os.{name}() (filesystem I/O)"
    table[os.stat] = "os.stat() (filesystem I/O: os.path.exists/isfile/isdir/getsize, Path.exists/is_file...)"
    table[os.system] = "os.system() (starting a process)"
    for fn, what in ((os.getpid, "os.getpid()"), (getattr(os, "getppid", None), "os.getppid()"),
                     (socket.gethostname, "socket.gethostname()"), (threading.get_ident, "threading.get_ident()"),
                     (getattr(threading, "get_native_id", None), "threading.get_native_id()")):
        if fn is not None:
            table[fn] = f"{what} (the process, host or thread identity differs between the run that recorded " \
                        "a history and every replay)"
    for meth in ("random", "getrandbits", "randbytes"):
        fn = getattr(random._inst, meth, None)  # type: ignore[attr-defined]
        if fn is not None:
            table[("random", meth)] = f"random.{meth}() (global RNG)"
    table[("datetime", "now")] = "datetime.now()"
    table[("datetime", "utcnow")] = "datetime.utcnow()"
    table[("datetime", "today")] = "datetime.today()"
    table[("date", "today")] = "date.today()"
    table[socket.socket] = "socket.socket() (network I/O)"
    _ = datetime
    return table


def _identity() -> set[Any]:
    """C functions of :func:`_forbidden_c` reported only when non-stdlib code calls them itself:
    the standard library reads the thread id as a recursion guard (``reprlib.recursive_repr``,
    a dataclass ``__repr__``) and the pid to notice a fork, never to compute a value."""
    import threading

    return {fn for fn in (os.getpid, getattr(os, "getppid", None), threading.get_ident,
                          getattr(threading, "get_native_id", None)) if fn is not None}


def _clock_when_short() -> dict[Any, int]:
    """Functions that read the clock only when their time argument is left out: called with
    fewer positional arguments than this, ``time.localtime()`` is "now", ``time.localtime(ts)``
    is a pure function of ``ts`` (formatting a time the orchestration got from its context)."""
    import time

    return {time.localtime: 1, time.gmtime: 1, time.ctime: 1, time.asctime: 1, time.strftime: 2}


_ARG_LOADS: dict[Any, dict[int, bool]] = {}  # code -> {CALL offset: its last argument is the constant None}


def _last_arg_is_none(frame: Any) -> bool:
    """Whether the CALL the frame is executing got the literal ``None`` as its last argument
    (``time.localtime(None)`` reads the clock as ``localtime()`` does). Read from the bytecode:
    a variable that holds None is not seen."""
    import dis

    code = frame.f_code
    calls = _ARG_LOADS.get(code)
    if calls is None:
        calls = {}
        previous = None
        for ins in dis.get_instructions(code):
            if ins.opname in ("CACHE", "PRECALL", "KW_NAMES", "EXTENDED_ARG"):
                continue
            if ins.opname == "CALL":
                calls[ins.offset] = previous is not None and previous.opname == "LOAD_CONST" and previous.argval is None
            previous = ins
        if len(_ARG_LOADS) < 4096:
            _ARG_LOADS[code] = calls
    return calls.get(frame.f_lasti, False)


def _call_args(frame: Any) -> int | None:
    """Arguments passed by the CALL instruction the frame is executing (None if it is not a
    plain CALL, e.g. ``f(*args)``: then the count is unknown and nothing is flagged)."""
    import dis

    code, i = frame.f_code.co_code, frame.f_lasti
    if 0 <= i < len(code) - 1 and dis.opname[code[i]] == "CALL":
        return code[i + 1]
    return None


def _forbidden_py() -> dict[Any, str]:
    import random
    import subprocess
    import threading
    import uuid

    table: dict[Any, str] = {
        uuid.uuid4.__code__: "uuid.uuid4()",
        uuid.uuid1.__code__: "uuid.uuid1()",
        threading.Thread.start.__code__: "threading.Thread.start()",
        # subprocess.run/call/check_output, os.popen: all start a Popen
        subprocess.Popen.__init__.__code__: "subprocess (starting a process)",
        random.Random.seed.__code__: "random.Random() / seed() without a seed (OS entropy)",
        # os.environ[...], .get, os.getenv, `in`, iteration: all reach these (Python code in os.py)
        os._Environ.__getitem__.__code__: "os.environ / os.getenv() (the environment differs between machines and runs)",
        os._Environ.__iter__.__code__: "os.environ / os.getenv() (the environment differs between machines and runs)",
    }
    for name in ("randint", "choice", "shuffle", "uniform", "randrange", "sample", "gauss"):
        table[getattr(random.Random, name).__code__] = f"random.{name}() (global RNG)"
    return table


class Sandbox:
    """Context manager: while active, record forbidden calls made by orchestration code."""

    def __init__(self) -> None:
        from ..core import engine

        # The engine code during which orchestration code runs: poll (the code itself; _begin,
        # which decodes a typed input, runs inside it) and _resolve_text (a typed result built
        # when a completion is applied, outside poll: its default factories are user code).
        self._poll_code = engine._Engine.poll.__code__
        self._resolve_code = engine._Engine._resolve_text.__code__
        self._watched = frozenset((self._poll_code, self._resolve_code))
        # C functions -> label, or -> the positional-argument count below which they read the
        # clock (one lookup per C call on the common path).
        self._c: dict[Any, str | int] = {**_forbidden_c(), **_clock_when_short()}
        self._py = _forbidden_py()
        # A code object's hash is recomputed from its contents on every lookup: the profile hook
        # looks at the (cached) hash of its name first, and at the code only when the name matches.
        self._py_names = frozenset(code.co_name for code in self._py)
        self._identity = _identity()
        import time

        self._none_reads_clock = frozenset((time.localtime, time.gmtime, time.ctime))  # f(None) is f()
        self._global_random = __import__("random")._inst  # type: ignore[attr-defined]
        import datetime

        self._date, self._datetime = datetime.date, datetime.datetime
        self.violations: list[Violation] = []
        self._depth = 0
        self._engines: list[Any] = []
        # The frame of the forbidden Python-level call in progress (reported, or exempt): what
        # it calls inside is part of that one call, not another one of the orchestration's.
        self._inside: Any = None
        self._previous: Any = None

    def __enter__(self) -> "Sandbox":
        self._previous = sys.getprofile()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: Any) -> None:
        sys.setprofile(self._previous)

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "call":
            code = frame.f_code
            if code is self._poll_code or code is self._resolve_code:
                self._depth += 1
                self._engines.append(frame.f_locals.get("self"))
            elif self._depth and code.co_name in self._py_names and code in self._py and self._inside is None:
                if code.co_name in ("randint", "choice", "shuffle", "uniform", "randrange", "sample", "gauss"):
                    if frame.f_locals.get("self") is not self._global_random:
                        return  # a seeded Random instance is fine
                elif code.co_name == "seed" and frame.f_locals.get("a") is not None:
                    return  # seeded from a value (e.g. one the orchestration got from history)
                self._inside = frame
                self._report(self._py[code], frame.f_back)
        elif event == "return":
            if frame is self._inside:
                self._inside = None
            elif self._depth and (frame.f_code is self._poll_code or frame.f_code is self._resolve_code):
                self._depth -= 1
                self._engines.pop()
        elif event == "c_call" and self._depth and self._inside is None:
            label = self._c.get(arg)
            if label is None:
                owner = getattr(arg, "__self__", None)
                if owner is self._global_random:
                    label = self._c.get(("random", arg.__name__))
                elif isinstance(owner, type) and issubclass(owner, self._date):
                    label = self._c.get(("datetime" if issubclass(owner, self._datetime) else "date", arg.__name__))
                if label is None:
                    return
            elif label.__class__ is int:
                nargs = _call_args(frame)
                if nargs is None or (nargs >= label and not (
                        nargs == 1 and arg in self._none_reads_clock and _last_arg_is_none(frame))):
                    return
                label = f"time.{arg.__name__}() without a time argument (reads the clock)"
            elif arg in self._identity:
                fn = frame.f_code.co_filename
                if fn.startswith(_PKG_DIR) or _is_stdlib(fn):
                    return  # the stdlib's recursion guard / fork check, not a value the code uses
            self._report(label, frame)  # type: ignore[arg-type]

    @staticmethod
    def _yield_site(engine: Any) -> tuple[str, int] | None:
        """The user line the engine's orchestration code is suspended at (None: not known)."""
        from ..core.engine import _site_of

        stack = getattr(engine, "stack", None)
        return _site_of(stack[0]) if stack else None

    def _report(self, label: str, frame: Any) -> None:
        # Test tooling can run inside a poll without being called by it (Hypothesis installs a
        # gc callback that reads perf_counter): calls made from those frames are not the
        # orchestration's doing.
        watched = self._watched
        g = frame
        while g is not None and g.f_code not in watched:
            if g.f_globals.get("__name__", "").split(".")[0] in _TOOLING:
                return
            g = g.f_back
        # Walk out to the first frame that belongs to user code (not this package, not stdlib
        # wrappers such as random.py or uuid.py, generated code only if nothing else is found).
        # Orchestration code runs *inside* the engine's poll: reaching the poll frame first
        # means the engine itself made the call (e.g. linecache reading a source file while a
        # traceback is formatted), not the orchestration. A call made by the interpreter's
        # machinery on the way (an import, linecache, zoneinfo) is not the orchestration's.
        f, generated, via_logging = frame, None, False
        while f is not None and f.f_code not in watched:
            fn = f.f_code.co_filename
            module = f.f_globals.get("__name__", "").split(".")[0]
            if module in _MACHINERY or fn.startswith("<frozen importlib"):
                return
            if module == "logging":
                via_logging = True
            if not fn.startswith(_PKG_DIR) and not _is_stdlib(fn):
                if module in _CONVERTERS:
                    pass  # cattrs / attrs building a typed value: look for who asked for it
                elif not fn.startswith("<") or fn.startswith("<stdin>"):
                    break
                else:
                    generated = generated or f  # a dataclass/attrs __init__: keep looking for its caller
            f = f.f_back
        engine = self._engines[-1] if self._engines else None
        site: tuple[str, int] | None = None
        if f is None or f.f_code in watched:
            # No user frame made the call: a typed result's default factory that is the C function
            # itself (``attrs.field(factory=time.time)``), called by the generated ``__init__``
            # that cattrs runs while the engine applies a completion. The orchestration's own line
            # is where it waits for that value (its yield); the generated frame is the fallback.
            site = self._yield_site(engine)
            f = generated
        if site is None:
            if f is None:
                return
            site = (f.f_code.co_filename, f.f_lineno)
        if via_logging:
            label = "logging (use ctx.trace_info: replay-safe)"
        orch = getattr(getattr(engine, "handler", None), "name", "?")
        v = Violation(orch, label, site[0], site[1])
        if v not in self.violations:
            self.violations.append(v)
