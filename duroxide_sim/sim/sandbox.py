"""Sandbox: catch orchestration code that reads the clock, draws randomness or does I/O.

Orchestration code must be a pure function of its history. While the sandbox is active, a
profile hook (``sys.setprofile``) watches calls made *while the replay engine is running
orchestration code* (inside ``_Engine.poll``) and records each forbidden call with the
orchestration's name and the user source line that made it. Activity code (which may do
anything) runs outside ``poll`` and is not flagged.

Forbidden: ``time.time/time_ns/monotonic/perf_counter/process_time/thread_time/clock_gettime/
sleep``, ``time.localtime/gmtime/ctime/asctime/strftime`` without their time argument (they
read the clock then; with it they are pure), ``datetime.now/utcnow/today`` (also on
subclasses, as libraries such as pendulum or freezegun define), module-level ``random.*`` (the
hidden global ``Random``) and any ``Random`` seeded from the OS (``random.Random()``,
``random.seed()``), ``uuid.uuid1/uuid4``, ``os.urandom/getrandom``, reading ``os.environ`` (``os.getenv``
included), ``print`` (use
``ctx.trace_*``), ``open``, sockets, and starting threads. A clock read by ``logging`` is
reported as logging (use ``ctx.trace_*``, which is replay-safe).

Profile hooks see calls no matter how the function was imported (``from time import time``
included), because they compare the called objects, not names. The reported line is the
innermost frame of the orchestration's own code (not this package, not the standard library,
not generated code such as a dataclass ``__init__`` when a real source line calls it); calls the
engine itself makes while running a turn (formatting a traceback reads source files) are not
the orchestration's and are not reported.
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
_TOOLING = {"hypothesis", "_pytest", "pytest", "pluggy", "coverage", "_hypothesis_globals"}


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


def _clock_when_short() -> dict[Any, int]:
    """Functions that read the clock only when their time argument is left out: called with
    fewer positional arguments than this, ``time.localtime()`` is "now", ``time.localtime(ts)``
    is a pure function of ``ts`` (formatting a time the orchestration got from its context)."""
    import time

    return {time.localtime: 1, time.gmtime: 1, time.ctime: 1, time.asctime: 1, time.strftime: 2}


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
    import threading
    import uuid

    table: dict[Any, str] = {
        uuid.uuid4.__code__: "uuid.uuid4()",
        uuid.uuid1.__code__: "uuid.uuid1()",
        threading.Thread.start.__code__: "threading.Thread.start()",
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

        self._poll_code = engine._Engine.poll.__code__
        self._c = _forbidden_c()
        self._py = _forbidden_py()
        self._clock_when_short = _clock_when_short()
        self._global_random = __import__("random")._inst  # type: ignore[attr-defined]
        import datetime

        self._date, self._datetime = datetime.date, datetime.datetime
        self.violations: list[Violation] = []
        self._depth = 0
        self._engines: list[Any] = []
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
            if code is self._poll_code:
                self._depth += 1
                self._engines.append(frame.f_locals.get("self"))
            elif self._depth and code in self._py:
                if code.co_name in ("randint", "choice", "shuffle", "uniform", "randrange", "sample", "gauss"):
                    if frame.f_locals.get("self") is not self._global_random:
                        return  # a seeded Random instance is fine
                elif code.co_name == "seed" and frame.f_locals.get("a") is not None:
                    return  # seeded from a value (e.g. one the orchestration got from history)
                self._report(self._py[code], frame.f_back)
        elif event == "return":
            if frame.f_code is self._poll_code and self._depth:
                self._depth -= 1
                self._engines.pop()
        elif event == "c_call" and self._depth:
            label = self._c.get(arg)
            short = self._clock_when_short.get(arg) if label is None else None
            if short is not None:
                nargs = _call_args(frame)
                if nargs is not None and nargs < short:
                    label = f"time.{arg.__name__}() without a time argument (reads the clock)"
            if label is None:
                owner = getattr(arg, "__self__", None)
                name = getattr(arg, "__name__", "")
                if owner is self._global_random:
                    label = self._c.get(("random", name))
                elif isinstance(owner, type) and issubclass(owner, self._date):
                    label = self._c.get(("datetime" if issubclass(owner, self._datetime) else "date", name))
            if label is not None:
                self._report(label, frame)

    def _report(self, label: str, frame: Any) -> None:
        # Test tooling can run inside a poll without being called by it (Hypothesis installs a
        # gc callback that reads perf_counter): calls made from those frames are not the
        # orchestration's doing.
        g = frame
        while g is not None and g.f_code is not self._poll_code:
            if g.f_globals.get("__name__", "").split(".")[0] in _TOOLING:
                return
            g = g.f_back
        # Walk out to the first frame that belongs to user code (not this package, not stdlib
        # wrappers such as random.py or uuid.py, generated code only if nothing else is found).
        # Orchestration code runs *inside* the engine's poll: reaching the poll frame first
        # means the engine itself made the call (e.g. linecache reading a source file while a
        # traceback is formatted), not the orchestration.
        f, generated, via_logging = frame, None, False
        while f is not None and f.f_code is not self._poll_code:
            fn = f.f_code.co_filename
            if f.f_globals.get("__name__", "").split(".")[0] == "logging":
                via_logging = True
            if not fn.startswith(_PKG_DIR) and not _is_stdlib(fn):
                if not fn.startswith("<") or fn.startswith("<stdin>"):
                    break
                generated = generated or f  # a dataclass/attrs __init__: keep looking for its caller
            f = f.f_back
        if f is None or f.f_code is self._poll_code:
            f = generated
        if f is None:
            return
        if via_logging:
            label = "logging (use ctx.trace_info: replay-safe)"
        engine = self._engines[-1] if self._engines else None
        orch = getattr(getattr(engine, "handler", None), "name", "?")
        v = Violation(orch, label, f.f_code.co_filename, f.f_lineno)
        if v not in self.violations:
            self.violations.append(v)
