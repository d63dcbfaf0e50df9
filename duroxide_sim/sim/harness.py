"""Simulation: run real runtimes in a virtual world chosen by one seed (ARCHITECTURE "The seam").

A :class:`SimSpec` says *what* to simulate: a ``setup(runtime, world)`` that registers the
workflow's handlers (activities act on the :class:`~duroxide_sim.sim.world.ExternalWorld`),
the orchestrations to start, the signals to send, and the properties to hold. A
:class:`Simulation` says *how*: seed, fault plan, provider, number of runtime processes.

The run is single-threaded. At each step the scheduler lists the runnable steps — fetch an
orchestration batch, run a turn (replay + ack), fetch an activity, execute it, ack it, deliver a
client message that is due, restart a crashed process — and picks one with the seeded
``random.Random``. When nothing is runnable the virtual clock jumps to the next deadline, so a
30-day timer costs nothing. Faults come from the :class:`~duroxide_sim.sim.faults.FaultPlan`
through a second seeded source; every decision is recorded in the trace (canonical JSON lines),
and the same seed gives the byte-identical trace.

Nothing here touches the wall clock, threads, global randomness or hash order.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import operator
import random
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from ..core.events import ActivityExecute, HistoryEvent
from ..core.logsink import captured
from ..errors import DuroxideError, NondeterminismError, ProviderError
from ..providers.faulty import FaultyProvider
from ..providers.memory import InMemoryProvider
from ..runtime.client import Client
from ..runtime.dispatchers import ActivityOutcome
from ..runtime.options import RuntimeOptions
from ..runtime.runtime import Runtime
from .clock import DEFAULT_EPOCH_MS, SequentialIds, SimClock
from .faults import FaultPlan
from .gc_pause import quiet_gc
from .world import ExternalWorld

__all__ = ["Start", "Signal", "SimSpec", "Simulation", "SimResult", "Failure"]

#: The provider's structural ``_check()`` runs at least this many steps apart, and at the end of
#: a run. When the check reports how many rows/events it walked, the next one waits as many steps
#: more, so the amortized cost per step stays constant as the state grows.
_INVARIANT_EVERY = 16
_INVARIANT_WORK_PER_STEP = 1

#: Canonical trace lines: compact separators, keys in the (fixed) order the logging code uses.
#: The C encoder is built once (``JSONEncoder.encode`` builds one per call); same bytes.
class _Later(functools.partial):
    """A trace value computed when the line is encoded (from immutable inputs, so the bytes are
    the same as computing it at once): turn digests and event lists cost nothing until read.

    ``_Later(fn, arg)`` is ``fn`` bound to ``arg`` (a ``functools.partial``: built in C, as a
    few are per step); ``fn`` and ``arg`` name the two."""

    __slots__ = ()

    @property
    def fn(self) -> Callable[[Any], Any]:
        return self.func

    @property
    def arg(self) -> Any:
        return self.args[0]


def _trace_default(value: Any) -> Any:
    return value() if type(value) is _Later else str(value)


_ENCODE = json.JSONEncoder(separators=(",", ":"), default=_trace_default).encode
if json.encoder.c_make_encoder is not None:  # pragma: no branch - CPython has it
    _C_ENCODER = json.encoder.c_make_encoder(
        None, _trace_default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )

    def _ENCODE(rec: dict[str, Any]) -> str:  # noqa: N802 - a drop-in for the encoder above
        return "".join(_C_ENCODER(rec, 0))

#: Fault kinds injected by the storage wrapper (``FaultyProvider``); the others are decided here.
_STORAGE_FAULTS = ("transient", "commit_lost", "duplicate", "delay")


def _check_at_ms(attribute: Any, value: Any, *, optional: bool) -> None:
    """Virtual times and durations of a spec: ints >= 0 (None too where documented)."""
    if value is None and optional:
        return
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be a non-negative integer of ms{' or None' if optional else ''}, "
                         f"got {value!r}")


def _check_signal_kind(kind: Any) -> None:
    if kind not in ("raise", "enqueue", "cancel"):
        raise ValueError(f"Signal.kind must be 'raise', 'enqueue' or 'cancel', got {kind!r}")


def _check_spec_text(attribute: Any, value: Any, optional: bool) -> None:
    """A SimSpec's name (and ref): a non-empty string - reports, repro lines and file names
    are made of it."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        raise TypeError(f"SimSpec.{attribute.name} must be a non-empty string, got {value!r}"[:200])


def _check_invariants(value: Any) -> None:
    """Each invariant a function ``fn(result) -> str | None`` (a name in quotes would fail every
    seed with a TypeError pointing at the harness, not at the scenario)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):  # (checked, not consumed)
        raise TypeError(f"SimSpec.invariants must be a list of functions fn(result) -> str | None, got {value!r}"[:200])
    for fn in value:
        if not callable(fn):
            raise TypeError(f"SimSpec.invariants must hold functions fn(result) -> str | None, got {fn!r}"[:200])


def _check_setup(value: Any) -> None:
    if not callable(value):
        raise TypeError(f"SimSpec.setup must be a function setup(rt, world), got {value!r}"[:200])


@attrs.frozen(kw_only=True)
class Start:
    """Start ``orchestration`` as ``instance`` at virtual time ``at_ms`` (from the run's start)."""

    instance: str
    orchestration: str
    input: Any = None
    at_ms: int = attrs.field(default=0, validator=lambda _s, a, v: _check_at_ms(a, v, optional=False))
    version: str | None = None


@attrs.frozen(kw_only=True)
class Signal:
    """A client message at ``at_ms``: ``kind`` is ``raise`` (event), ``enqueue`` (queue) or ``cancel``.

    ``at_ms=None`` means "at an arbitrary time": drawn from the run's seed within the spec's
    ``signal_window_ms`` (by default the fault window, ``FaultPlan.until_ms``), so different
    seeds deliver the signal at different points of the workflow."""

    instance: str
    name: str = ""
    data: Any = None
    at_ms: int | None = attrs.field(default=0, validator=lambda _s, a, v: _check_at_ms(a, v, optional=True))
    kind: str = attrs.field(default="raise", validator=lambda _s, _a, v: _check_signal_kind(v))


@attrs.define(kw_only=True)
class SimSpec:
    """What to simulate. ``starts``/``signals`` may be lists or ``fn(random.Random) -> list``."""

    name: str = attrs.field(validator=lambda _s, a, v: _check_spec_text(a, v, optional=False))
    setup: Callable[[Runtime, ExternalWorld], None] = attrs.field(validator=lambda _s, _a, v: _check_setup(v))
    starts: Sequence[Start] | Callable[[random.Random], Sequence[Start]] = ()
    signals: Sequence[Signal] | Callable[[random.Random], Sequence[Signal]] = ()
    invariants: Sequence[Callable[["SimResult"], str | None]] = attrs.field(default=(), validator=lambda _s, _a, v: _check_invariants(v))
    #: The workflow promises the same outputs and external world with and without faults.
    fault_transparent: bool = True
    #: Virtual time after which the run stops even if work remains (eternal actors).
    horizon_ms: int = attrs.field(default=7 * 24 * 3600 * 1000, validator=lambda _s, a, v: _check_at_ms(a, v, optional=False))
    options: RuntimeOptions | None = None
    #: Where this spec can be imported from, ``path/to/module.py:NAME`` (for repro lines).
    ref: str | None = attrs.field(default=None, validator=lambda _s, a, v: _check_spec_text(a, v, optional=True))
    #: The span (ms from the start) in which signals with ``at_ms=None`` are drawn; None: the
    #: fault plan's window (10 minutes by default). A spec on a production time scale (a mailbox
    #: that closes after 1.5 s) sets its own, or its "arbitrary" messages all come after it ended.
    signal_window_ms: int | None = attrs.field(default=None, validator=lambda _s, a, v: _check_at_ms(a, v, optional=True))


@attrs.frozen(kw_only=True)
class Failure:
    """One broken property, with where it broke."""

    checker: str
    message: str
    seed: int
    step: int | None = None
    instance: str | None = None
    repro: str = ""

    def render(self) -> str:
        where = f" at step {self.step}" if self.step is not None else ""
        inst = f" [{self.instance}]" if self.instance else ""
        text = f"{self.checker}{inst}{where} (seed {self.seed}): {self.message}"
        return text + (f"\nreproduce: {self.repro}" if self.repro else "")


def _code_key(fn: Any, depth: int = 0) -> tuple[Any, ...]:
    """What makes a handler's code: its code object and what its closure holds - values of
    plain types by value, functions by their own key (a few levels deep), anything else by
    identity. Every simulated process runs in one interpreter, so module code and globals are
    shared; two processes' handlers differ only through what ``setup`` closed over (a flag, a
    per-process object). An equal key means the same code for certain; a different key may
    still be the same code (a closure over a per-process object), which costs one more replay."""
    f = getattr(fn, "__func__", fn)
    code = getattr(f, "__code__", None)
    if code is None:
        return ("obj", fn)
    cells: list[tuple[Any, ...]] = []
    for cell in f.__closure__ or ():
        try:
            v = cell.cell_contents
        except ValueError:  # an empty cell
            cells.append(("empty",))
            continue
        if v is None or type(v) in (bool, int, float, str, bytes):
            cells.append(("v", type(v).__name__, v))
        elif depth < 3 and hasattr(getattr(v, "__func__", v), "__code__"):
            cells.append(("f", _code_key(v, depth + 1)))
        else:
            cells.append(("o", v))
    return ("fn", code, tuple(cells))


def _same_key(a: Any, b: Any) -> bool:
    """Keys compared element by element, objects by identity (no user ``__eq__`` runs)."""
    if type(a) is tuple and type(b) is tuple:
        # (``map`` over both, not a generator: keys are compared for every checked execution)
        return len(a) == len(b) and all(map(_same_key, a, b))
    if type(a) in (bool, int, float, str, bytes) or a is None:
        return type(a) is type(b) and a == b
    return a is b


@attrs.define(kw_only=True)
class SimResult:
    seed: int
    plan: FaultPlan
    trace: Trace
    steps: int
    end_ms: int
    faults_injected: dict[str, int]
    histories: dict[str, dict[int, list[HistoryEvent]]]
    statuses: dict[str, Any]
    world: ExternalWorld
    quiescent: bool
    #: The first booted process's registry (the spec's code as set up at the start).
    registry: Any
    #: ``(instance, execution) -> ((process name, registry), ...)`` of the processes that
    #: committed its turns, in boot order; see :meth:`replay_registries`.
    writers: dict[tuple[str, int], tuple[tuple[str, Any], ...]] = attrs.Factory(dict)
    failures: list[Failure] = attrs.Factory(list)
    crash_reports: list[str] = attrs.Factory(list)
    #: Instances that failed with poison because faults exhausted max_attempts deliveries.
    budget_exhausted: list[str] = attrs.Factory(list)
    #: (step, instance, message): live turns that a from-scratch replay did not reproduce.
    divergences: list[tuple[int, str | None, str]] = attrs.Factory(list)
    #: The client operations (starts, signals) as realized for this seed.
    realized: tuple[list[Any], list[Any]] = ([], [])
    #: The faults injected, as ``(opportunity number of its kind, kind)`` in order: the script
    #: that names them (``FaultPlan.scripted``), for shrinking a failing seed's plan.
    fired: list[tuple[int, str]] = attrs.Factory(list)
    #: Runs that stopped with work left (the horizon or the step budget; None when quiescent):
    #: what the store still held, by the instance it is for (orchestrator messages, activity
    #: items), and the instances a client operation was still to reach. The liveness checker
    #: judges an instance of such a run only when neither holds anything for it.
    queued: dict[str, list[Any]] | None = None
    to_come: frozenset[str] = frozenset()

    def replay_registries(self, instance: str, execution_id: int, history: Any = ()) -> list[tuple[str | None, Any]]:
        """``(process name, registry)`` to replay an execution with: each process that committed
        one of its turns and registers the history's orchestration version, once per distinct
        handler code (:func:`_code_key`), the latest booted first - any of them could have taken
        the next turn, so each must replay the history (a rolling deploy that changes code in
        place is caught here; an upgrade that adds versions is not a finding). Without such a
        writer: ``[(None, registry)]``, the first booted process's."""
        first = history[0] if history else None
        name, version = getattr(first, "name", None), getattr(first, "version", None)
        out: list[tuple[str | None, Any]] = []
        seen: list[Any] = []
        for process, registry in reversed(self.writers.get((instance, execution_id), ())):
            handler = registry.resolve(name, version) if first is not None else None
            if handler is None:
                continue
            key = _code_key(handler.fn)
            if any(_same_key(key, k) for k in seen):
                continue
            seen.append(key)
            out.append((process, registry))
        return out or [(None, self.registry)]

    def registry_for(self, instance: str, execution_id: int, history: Any = ()) -> Any:
        """The registry of the latest booted process that committed a turn of the execution and
        registers its version (see :meth:`replay_registries`), else :attr:`registry`."""
        return self.replay_registries(instance, execution_id, history)[0][1]

    def settled(self, instance: str) -> bool:
        """Nothing can move ``instance`` any more: the run went quiet, or it stopped with nothing
        queued for the instance and no client operation still to reach it."""
        return self.quiescent or (self.queued is not None and instance not in self.queued
                                  and instance not in self.to_come)

    @property
    def trace_hash(self) -> str:
        h = hashlib.sha256()
        for line in self.trace:
            h.update(line.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    @property
    def ok(self) -> bool:
        return not self.failures

    def outputs(self) -> dict[str, tuple[str, Any]]:
        return {i: (s.status, s.output if s.status == "Completed" else s.error) for i, s in self.statuses.items()}


class Trace(Sequence[str]):
    """The run's trace: one canonical JSON line per record, encoded when first read.

    The harness appends records (fresh dicts, never changed afterwards) and a passing run whose
    trace nobody reads never pays for the encoding; reading any line encodes them all, once.
    Behaves as a read-only list of strings (indexing, slicing, ``len``, iteration, equality
    with lists and other traces)."""

    __slots__ = ("_records", "_lines")

    def __init__(self, lines: Sequence[str] = ()) -> None:
        self._records: list[dict[str, Any]] = []
        self._lines: list[str] = list(lines)

    def _record(self, rec: dict[str, Any]) -> None:
        self._records.append(rec)

    def _materialize(self) -> list[str]:
        if self._records:
            self._lines.extend(map(_ENCODE, self._records))
            self._records = []
        return self._lines

    def __getitem__(self, index: Any) -> Any:
        return self._materialize()[index]

    def __len__(self) -> int:
        return len(self._lines) + len(self._records)

    def __iter__(self) -> Any:
        return iter(self._materialize())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Trace):
            return self._materialize() == other._materialize()
        if isinstance(other, list):
            return self._materialize() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Trace({len(self)} lines)"


def _kinds(messages: Sequence[Any]) -> list[str]:
    return [type(m).KIND for m in messages]


def _event_labels(events: Sequence[HistoryEvent]) -> list[str]:
    return [f"{e.event_id}:{type(e).__name__}" for e in events]


def _digest(events: Sequence[HistoryEvent]) -> str:
    """Short hash of the events' field values, so payload changes show up in the trace.

    Hashes ``repr``: events are frozen attrs records of strings, numbers, tuples and nested
    records, whose repr lists every field in declaration order, is the same in every process,
    and survives a storage round trip unchanged; it costs a fifth of canonical JSON. The
    directories of traceback frames (``File "/home/me/app/flows.py", line 3``) are left out:
    the same seed gives the same trace in any checkout, on any machine."""
    text = "\x1e".join(map(repr, events))
    if 'File "' in text:
        text = _FRAME_DIR.sub(r'File "\1", line', text)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


#: A traceback frame's file path, keeping only the file's name.
_FRAME_DIR = re.compile(r'File "(?:[^"\n]*[/\\])?([^"/\\\n]+)", line')


def _virtual_run_coroutine(coro: Any, on_start: Any = None) -> Any:
    """Async activities on virtual time (:mod:`.vloop`, imported with asyncio on first use).
    Each activity's loop clock starts at 0 (``loop.time()`` has no meaning but differences, as
    ``time.monotonic()``): elapsed times computed from it come out the same whenever the
    activity runs, instead of differing in the last bits with the simulated time of day."""
    from .vloop import run_virtual

    return run_virtual(coro, on_start, 0)


class _Node:
    """One simulated runtime process."""

    def __init__(self, index: int, runtime: Runtime) -> None:
        self.index = index
        self.name = f"n{index}"
        self.runtime = runtime
        self.alive = True
        self.restart_at: int | None = None
        self.orch_items: list[Any] = []
        self.leases: list[Any] = []
        self.executed: list[tuple[Any, ActivityOutcome]] = []
        self.orch_idle = False
        self.work_idle = False
        self.incarnation = 0
        #: ``(instance, execution)`` of every turn with events this incarnation committed: the code
        #: that wrote each history, which the determinism checker replays it with (a restarted
        #: process runs ``setup`` again and may register other code: an upgrade, a rolling deploy).
        self.wrote: set[tuple[str, int]] = set()
        #: This incarnation's runnable-action tuples ``(kind, node, handler)``, built once by
        #: ``_Run._boot`` (the scheduler lists them every step).
        self.act_restart: tuple[Any, ...] = ()
        self.act_orch_fetch: tuple[Any, ...] = ()
        self.act_orch_turn: tuple[Any, ...] = ()
        self.act_work_fetch: tuple[Any, ...] = ()
        self.act_work_exec: tuple[Any, ...] = ()
        self.act_work_ack: tuple[Any, ...] = ()
        #: The node's slice of the scheduler's runnable list while it is alive (``_Run._node_acts``),
        #: kept from step to step; None: to be listed again. Everything that changes what decides
        #: it - the in-flight lists, the idle flags, ``alive`` - sets it to None (the step
        #: handlers, ``_wake_all``, ``_crash``); a dead node's is never kept (its restart
        #: becomes due with the clock).
        self.acts: list[tuple[Any, ...]] | None = None


#: ``node.alive`` (for ``filter``: the crash opportunity lists the live nodes at every step).
_ALIVE = operator.attrgetter("alive")

#: Scheduler steps after which a run stops (and liveness fails if work is left).
DEFAULT_MAX_STEPS = 200_000


def _module_ref(spec: SimSpec) -> str | None:
    """``path/to/module.py:NAME`` when ``spec`` is a module-level name of the module that
    defines its setup function (the usual ``SPEC = SimSpec(...)``), else None."""
    module = sys.modules.get(getattr(spec.setup, "__module__", None) or "")
    path = getattr(module, "__file__", None)
    if module is None or not path:
        return None
    for name, value in sorted(vars(module).items()):
        if value is spec:
            return f"{path}:{name}"
    return None


class Simulation:
    """One seeded run of a :class:`SimSpec` (and, for some checks, its fault-free twin)."""

    def __init__(
        self,
        spec: SimSpec,
        seed: int,
        faults: FaultPlan | str | None = "swarm",
        *,
        provider: str = "memory",
        nodes: int = 2,
        max_steps: int = DEFAULT_MAX_STEPS,
        sandbox: bool = False,
        check_invariants: bool = True,
        verify_cache: bool = True,
    ) -> None:
        if provider not in ("memory", "sqlite"):
            raise ValueError(f"provider must be 'memory' or 'sqlite', got {provider!r}")
        if type(seed) is not int:
            raise ValueError(f"seed must be an integer, got {seed!r}")
        if not isinstance(spec, SimSpec):
            hint = " (a 'file.py:NAME' reference: load it with duroxide_sim.cli.load_spec)" if isinstance(spec, str) else ""
            raise TypeError(f"Simulation needs a SimSpec, got {type(spec).__name__}{hint}")
        for name, value in (("nodes", nodes), ("max_steps", max_steps)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.spec = spec
        self.seed = seed
        self.provider_kind = provider
        self.n_nodes = nodes
        self.max_steps = max_steps
        self.sandbox = sandbox
        self.check_invariants = check_invariants
        #: Re-run every cached turn from scratch and compare (the instance cache must be invisible).
        self.verify_cache = verify_cache
        if faults == "swarm":
            self.plan = FaultPlan.swarm(random.Random(f"plan:{self.seed}"))
        elif faults is None:
            self.plan = FaultPlan.none()
        elif isinstance(faults, FaultPlan):
            self.plan = faults
        else:
            raise ValueError(f"faults must be a FaultPlan, 'swarm' or None, got {faults!r}")

    # ------------------------------------------------------------------------------------------

    def repro_command(self) -> str:
        """The shell command that re-runs this seed (arguments quoted for a POSIX shell). The
        spec is named by its ``ref``; a spec without one is found as a module-level name of the
        module that defines its setup, else the command says to set ``ref``."""
        ref = self.spec.ref or _module_ref(self.spec)
        if not ref:
            return (f"(no command: spec {self.spec.name!r} has no ref; give it ref='path/to/file.py:NAME') "
                    f"seed {self.seed}, faults {self.plan.to_json()}")
        cmd = (f"duroxide-sim reproduce {shlex.quote(ref)} --seed {self.seed} "
               f"--provider {self.provider_kind} --nodes {self.n_nodes}")
        if self.max_steps != DEFAULT_MAX_STEPS:
            cmd += f" --max-steps {self.max_steps}"
        if self.sandbox:
            cmd += " --sandbox"
        return cmd + f" --faults {shlex.quote(self.plan.to_json())}"

    def _make_provider(self, clock: SimClock) -> Any:
        if self.provider_kind == "memory":
            return InMemoryProvider(clock)
        from ..providers.sqlite import SqliteProvider  # imported lazily: optional in memory runs

        return SqliteProvider.in_memory(clock=clock)

    def run(self) -> SimResult:
        """Run once and record the trace; properties are checked by :mod:`.checkers`."""
        return _Run(self, self.plan).execute()


class _Run:
    """One execution of a simulation.

    ``twin_of``: run as the fault-free *reference* for another run: the same client operations
    (``inputs``, as that run realized them from its seed) under a canonical schedule and id
    source that do not depend on the seed, so the reference is a function of the inputs alone
    and can be shared by every seed that draws the same inputs (see ``checkers``)."""

    def __init__(self, sim: Simulation, plan: FaultPlan, *, twin_of: tuple[list[Any], list[Any]] | None = None) -> None:
        self.sim = sim
        self.spec = sim.spec
        self.plan = plan
        self.seed = sim.seed
        self.is_twin = twin_of is not None
        self.rng = random.Random("sched:twin" if self.is_twin else f"sched:{self.seed}")
        self.fault_rng = random.Random(f"faults:{self.seed}")
        self.inputs_rng = random.Random(f"inputs:{self.seed}")
        self.clock = SimClock(DEFAULT_EPOCH_MS)
        self.run_coroutine = _virtual_run_coroutine  # async activities: sim/vloop.py
        self.world = ExternalWorld()
        self.trace = Trace()
        self.step = 0
        self.faults_injected: dict[str, int] = {}
        self.fired: list[tuple[int, str]] = []
        self.total_faults = 0
        self.fault_until_ms = DEFAULT_EPOCH_MS + plan.until_ms
        self.max_faults = plan.max_faults
        self.scripted = set(plan.script)
        self.kind_opportunities: dict[str, int] = {}
        # Kinds that can fire at all (a rate above 0 or a scripted entry): opportunities of the
        # other kinds are neither counted nor rolled, which changes nothing observable.
        self.active_kinds = frozenset(k for k in plan.enabled())
        #: The rate of every active kind (0 for a kind only scripted): ``_decide`` reads it once
        #: the kind is known to be active.
        self.rates = {k: plan.rate(k) for k in plan.enabled()}
        #: False once no fault can fire any more (see ``_close_faults``); also False from the
        #: start when no kind is active.
        self.faults_open = bool(self.active_kinds)
        # ``randrange(n)`` for n > 0 is exactly ``_randbelow(n)`` (same draws, same value); the
        # scheduler calls it once per step, so it skips randrange's argument checks.
        self._below = self.rng._randbelow
        self._act_client: tuple[Any, ...] = ("client", None, self._client_step)
        self._turned: str | None = None  # the instance of the last item an orch_turn step took
        self.inner = sim._make_provider(self.clock)
        if self.active_kinds.intersection(_STORAGE_FAULTS):
            self.provider = FaultyProvider(self.inner, self._decide, on_fault=self._on_fault)
        else:
            self.provider = self.inner  # no storage fault can fire: skip the wrapper
        self.options = self.spec.options or RuntimeOptions()
        self.registry = None
        #: Every process incarnation booted, in boot order (each remembers the executions it
        #: committed turns of: ``_Node.wrote``, read by ``_writers``).
        self.booted: list[_Node] = []
        #: Nodes whose ``orch_idle`` / ``work_idle`` a fetch set since the last ``_wake_all``
        #: (the flags are set nowhere else; a node may be listed twice, or after it crashed).
        self._idle: list[_Node] = []
        self.nodes = [self._boot(i) for i in range(sim.n_nodes)]
        self.client = Client(self.provider, clock=self.clock, sleep=lambda ms: None)
        if twin_of is not None:
            starts, signals = twin_of
        else:
            starts = self.spec.starts(self.inputs_rng) if callable(self.spec.starts) else self.spec.starts
            signals = self.spec.signals(self.inputs_rng) if callable(self.spec.signals) else self.spec.signals
            window = plan.until_ms if self.spec.signal_window_ms is None else self.spec.signal_window_ms
            signals = [
                attrs.evolve(sig, at_ms=self.inputs_rng.randrange(max(window, 1))) if sig.at_ms is None else sig
                for sig in signals
            ]
        self._check_client_ops(starts, signals)
        #: The client operations as realized for this seed (what a twin must replay).
        self.realized: tuple[list[Any], list[Any]] = (list(starts), list(signals))
        # Client operations in due order; ties keep declaration order (stable sort).
        self.pending: list[Any] = sorted(list(starts) + list(signals), key=lambda x: x.at_ms)
        self.instances = list(dict.fromkeys(s.instance for s in starts))
        self.crash_reports: list[str] = []
        self.divergences: list[tuple[int, str | None, str]] = []
        self.check_invariants = getattr(self.inner, "_check", None) if sim.check_invariants else None
        self.next_invariant_check = _INVARIANT_EVERY
        opts = self.options
        self.orch_slots = max(opts.orchestration_concurrency, 1)
        self.work_slots = opts.worker_concurrency if opts.worker_tag_filter.mode != "none" else 0

    def _check_client_ops(self, starts: Any, signals: Any) -> None:
        """A start of an orchestration the spec's setup does not register would never run, and
        (the horizon reached with the start still queued) no checker could call it stuck: a typo
        in a spec would pass every seed. Refused up front, like operations that are not
        :class:`Start` / :class:`Signal` records."""
        for op in starts:
            if not isinstance(op, Start):
                raise ValueError(f"SimSpec {self.spec.name!r}: starts must be Start records, got {op!r}")
            if self.registry.resolve(op.orchestration, op.version) is None:
                versions = self.registry.versions(op.orchestration)
                if versions:  # the name is registered, not the version asked for (or its policy's)
                    wanted = op.version or self.registry.policy_version(op.orchestration)
                    why = "" if op.version else " (its version policy)"
                    raise ValueError(f"SimSpec {self.spec.name!r}: instance {op.instance!r} starts orchestration "
                                     f"{op.orchestration!r} version {wanted}{why}, which its setup does not register "
                                     f"(registered versions: {', '.join(versions)})")
                known = ", ".join(repr(n) for n in self.registry.orchestration_names()) or "none"
                raise ValueError(f"SimSpec {self.spec.name!r}: instance {op.instance!r} starts orchestration "
                                 f"{op.orchestration!r}, which its setup does not register (registered: {known})")
        for op in signals:
            if not isinstance(op, Signal):
                raise ValueError(f"SimSpec {self.spec.name!r}: signals must be Signal records, got {op!r}")

    # --- faults -----------------------------------------------------------------------------

    def _faulting(self) -> bool:
        return self.clock.now_ms() < self.fault_until_ms and self.total_faults < self.max_faults

    def _decide(self, kind: str, op: str) -> bool:
        """One fault opportunity. Scripted faults name the n-th opportunity *of their kind*
        (so a shrinker moving an entry earlier stays meaningful); otherwise roll the rate."""
        if kind not in self.active_kinds:
            return False
        opportunities = self.kind_opportunities
        n = opportunities[kind] = opportunities.get(kind, 0) + 1
        if self.scripted and (n, kind) in self.scripted:
            return self._faulting()
        rate = self.rates[kind]
        # (``_faulting()`` written out: this runs for every fault opportunity)
        if rate <= 0.0 or self.clock.now_ms() >= self.fault_until_ms or self.total_faults >= self.max_faults:
            return False
        return self.fault_rng.random() < rate

    def _fault(self, kind: str, op: str) -> bool:
        """A harness-level fault opportunity (crash, lock expiry, reorder), recorded if taken."""
        if self._decide(kind, op):
            self._on_fault(kind, op)
            return True
        return False

    def _close_faults(self) -> None:
        """The fault window has closed for good: virtual time only moves forward and the fault
        count only grows, so ``_faulting()`` stays False and every later opportunity would answer
        False without drawing from ``fault_rng``. Stop asking: no kind is active any more and
        the storage wrapper passes calls straight through. Nothing observable changes (the
        per-kind opportunity counts, which only scripted faults read, stop mattering)."""
        self.faults_open = False
        self.active_kinds = frozenset()
        if self.provider is not self.inner:
            self.provider.stop_injecting()

    def _on_fault(self, kind: str, op: str) -> None:
        self.faults_injected[kind] = self.faults_injected.get(kind, 0) + 1
        self.fired.append((self.kind_opportunities.get(kind, 0), kind))
        self.total_faults += 1
        self._log("fault", kind=kind, operation=op)

    # --- processes ----------------------------------------------------------------------------

    def _boot(self, index: int, incarnation: int = 0) -> _Node:
        namespace = (0xFFFFFF << 8 if self.is_twin else self.seed << 8) + index * 16 + incarnation
        rt = Runtime(self.provider, self.options, clock=self.clock, ids=SequentialIds(namespace),
                     verify_cache=self.sim.verify_cache, runtime_id=f"sim-n{index}-{incarnation}",
                     run_coroutine=self.run_coroutine)
        self.spec.setup(rt, self.world)
        if self.registry is None:
            self.registry = rt.registry
        node = _Node(index, rt)
        node.incarnation = incarnation
        self.booted.append(node)
        node.act_restart = ("restart", node, self._restart_step)
        node.act_orch_fetch = ("orch_fetch", node, self._orch_fetch)
        node.act_orch_turn = ("orch_turn", node, self._orch_turn)
        node.act_work_fetch = ("work_fetch", node, self._work_fetch)
        node.act_work_exec = ("work_exec", node, self._work_exec)
        node.act_work_ack = ("work_ack", node, self._work_ack)
        return node

    def _crash(self, node: _Node, why: str) -> None:
        node.alive = False
        node.acts = None
        lost = len(node.orch_items) + len(node.leases) + len(node.executed)
        node.orch_items, node.leases, node.executed = [], [], []
        node.restart_at = self.clock.now_ms() + self.fault_rng.randint(50, 2_000)
        self._log("crash", node=node.name, reason=why, lost_work=lost)

    def _restart(self, node: _Node) -> None:
        fresh = self._boot(node.index, node.incarnation + 1)
        self.nodes[node.index] = fresh
        self._log("restart", node=fresh.name, incarnation=fresh.incarnation)

    # --- trace --------------------------------------------------------------------------------

    def _log(self, op: str, **detail: Any) -> None:
        # Keys keep their insertion order (fixed by the code that logs), so the line is canonical
        # without the cost of sorting; it is encoded when the trace is first read. The per-step
        # records of the step handlers below are built the same way, as one dict literal each.
        self.trace._records.append({"step": self.step, "t": self.clock.now_ms() - DEFAULT_EPOCH_MS, "op": op, **detail})

    # --- the loop -------------------------------------------------------------------------------

    def _runnable(self) -> list[tuple[Any, ...]]:
        """The runnable steps as ``(kind, node, handler)``, in a fixed order (the scheduler
        indexes this list with its seeded draw): a due client operation, then per node in
        index order restart | orch_fetch, orch_turn, work_fetch, work_exec, work_ack. The
        tuples are built once per node incarnation (``_boot``), not per step, and a live
        node's slice of the list is kept until its state changes (``_Node.acts``): a step
        changes one node, so the others' slices are reused as they are."""
        pending = self.pending
        if pending and pending[0].at_ms + DEFAULT_EPOCH_MS <= self.clock.now_ms():
            acts = [self._act_client]
        else:
            acts = []
        for node in self.nodes:
            seg = node.acts
            acts += self._node_acts(node) if seg is None else seg
        return acts

    def _node_acts(self, node: _Node) -> list[tuple[Any, ...]]:
        """One node's runnable steps (see ``_runnable``); kept on the node while it is alive."""
        if not node.alive:
            if node.restart_at is not None and node.restart_at <= self.clock.now_ms():
                return [node.act_restart]
            return []
        orch_items = node.orch_items
        seg = [node.act_orch_fetch] if not node.orch_idle and len(orch_items) < self.orch_slots else []
        if orch_items:
            seg.append(node.act_orch_turn)
        leases, executed = node.leases, node.executed
        # (no worker slots: ``work_slots`` is 0, which no count is below)
        if not node.work_idle and len(leases) + len(executed) < self.work_slots:
            seg.append(node.act_work_fetch)
        if leases:
            seg.append(node.act_work_exec)
        if executed:
            seg.append(node.act_work_ack)
        node.acts = seg
        return seg

    def _next_deadline(self) -> int | None:
        cands = []
        hint = getattr(self.inner, "next_wakeup_ms", None)
        if hint is not None:
            nxt = hint()
            if nxt is not None:
                cands.append(nxt)
        if self.pending:
            cands.append(self.pending[0].at_ms + DEFAULT_EPOCH_MS)
        cands.extend(n.restart_at for n in self.nodes if not n.alive and n.restart_at is not None)
        future = [c for c in cands if c > self.clock.now_ms()]
        return min(future) if future else None

    def _wake_all(self) -> None:
        """Something may have become fetchable: every fetcher that found nothing looks again.
        Only the nodes a fetch marked idle since the last wake-up (``_idle``) have a flag to
        clear; the others' state, and so their listed steps, do not change."""
        idle = self._idle
        if idle:
            for node in idle:
                node.orch_idle = node.work_idle = False
                node.acts = None
            idle.clear()

    def _pick(self, items: list[Any]) -> int:
        """Index of the in-flight item to act on: oldest first unless the reorder fault fires."""
        if len(items) > 1 and "reorder" in self.active_kinds and self._fault("reorder", "schedule"):
            return 1 + self._below(len(items) - 1)  # a fired reorder takes another than the oldest
        return 0

    def execute(self) -> SimResult:
        """Run with the runtime's log records captured into the trace (not printed): replay-safe
        ``trace_*`` messages then show up, in order, where they happened. They reach the trace
        through :mod:`..core.logsink`, not through ``logging``, so the process's logging
        configuration (levels, ``logging.disable``, a ``dictConfig``) cannot change the trace."""
        with captured(self._log_record), quiet_gc():
            return self._execute()

    def _log_record(self, level: int, logger: str, message: str, extra: Any) -> None:
        self._log("log", level=logging.getLevelName(level), logger=logger, message=message,
                  instance=extra.get("instance_id") if extra else None)

    def _execute(self) -> SimResult:
        horizon = DEFAULT_EPOCH_MS + self.spec.horizon_ms
        quiescent = False
        self._log("begin", seed=self.seed, plan=self.plan.to_json(), nodes=len(self.nodes))
        max_steps = self.sim.max_steps
        runnable, below, clock = self._runnable, self._below, self.clock
        # The step count and the next provider check are kept in locals (``self.step`` is still
        # set before each step: the handlers' trace records read it).
        step, check, next_check = self.step, self.check_invariants, self.next_invariant_check
        if check is None:
            next_check = max_steps + 1  # (no provider check: never due)
        while step < max_steps:
            acts = runnable()
            if not acts:
                nxt = self._next_deadline()
                if nxt is None:
                    quiescent = True
                    break
                if nxt > horizon:
                    break
                self._advance_renewing_sessions(nxt)
                self._wake_all()
                continue
            self.step = step = step + 1
            if self.faults_open:
                if clock.now_ms() >= self.fault_until_ms or self.total_faults >= self.max_faults:
                    self._close_faults()  # this step's opportunities would all answer False
                elif self._maybe_process_faults():
                    acts = runnable()  # a crash or clock jump changed what can run
                    if not acts:
                        continue
            kind, node, handler = acts[below(len(acts))]
            try:
                handler(node)
            except NondeterminismError as exc:
                # The live turn and a from-scratch replay of it disagree (verify_cache): the
                # turn is not committed; its lock expires and it is retried.
                self.divergences.append((self.step, getattr(exc, "instance_id", None), str(exc)))
                self._log("replay_divergence", instance=getattr(exc, "instance_id", None), error=str(exc)[:300],
                          node=node.name, turned=self._turned)
            except ProviderError as exc:
                # A provider failure escaping a step is what a real dispatcher loop would log and
                # back off from; the step is simply lost. A turn's names the item it took (the
                # node's, by instance: the lock checker must know which fetch it used up).
                if kind == "orch_turn":
                    self._log("provider_error", action=kind, error=str(exc), node=node.name, turned=self._turned)
                else:
                    self._log("provider_error", action=kind, error=str(exc))
            if step >= next_check:
                walked = check()  # the provider's own _check(): fails loudly on corruption
                extra = walked // _INVARIANT_WORK_PER_STEP if isinstance(walked, int) else 0
                self.next_invariant_check = next_check = step + max(_INVARIANT_EVERY, extra)
        if check is not None:
            check()
        self._log("end", quiescent=quiescent, steps=self.step)
        return self._result(quiescent)

    def _advance_renewing_sessions(self, target: int) -> None:
        """Move virtual time to ``target`` as a live runtime's maintenance thread would see it:
        it renews the session locks its worker owns (while they are not idle) about every
        second, so a quiet stretch - a timer between two session activities - does not hand a
        live owner's session to another node. Each lock is renewed just before it would lapse
        (the same state as renewing every second); sessions that are idle by then, or owned by
        a crashed process, lapse. Runs without sessions advance in one step, as before."""
        locks = getattr(self.inner, "session_locks", None)
        while locks is not None:
            owners = {n.runtime.worker_dispatcher.owner_id: n for n in self.nodes if n.alive}
            idle_ms = self.options.session_idle_timeout_ms
            now = self.clock.now_ms()
            due = [until - 1 for _sid, owner, until, last in locks()
                   if owner in owners and now < until - 1 and until <= target and last > until - 1 - idle_ms]
            if not due:
                break
            self.clock.advance_to(min(due))
            for node in owners.values():  # (dict of alive nodes, in node order)
                try:
                    node.runtime._maintenance()
                except ProviderError as exc:
                    self._log("provider_error", action="session_renewal", error=str(exc))
            self._log("session_renewal", nodes=[n.name for n in owners.values()])
        self.clock.advance_to(target)

    def _maybe_process_faults(self) -> bool:
        """Step-boundary faults: a process crash, or time jumping past lock timeouts."""
        changed = False
        active = self.active_kinds
        if "crash" in active:
            alive = list(filter(_ALIVE, self.nodes))
            if alive and self._fault("crash", "step"):
                self._crash(alive[self._below(len(alive))], "injected crash")
                changed = True
        # Lock expiry is a jump "between fetch and ack": an opportunity only while some
        # process holds fetched work (a jump with no lock held only moves time, making
        # per-attempt timeouts fire that no lock problem would cause).
        if "lock_expiry" in active and self._holding_work() and self._fault("lock_expiry", "step"):
            jump = max(self.options.orchestrator_lock_timeout_ms, self.options.worker_lock_timeout_ms) + 1
            self.clock.advance(jump)
            self._log("lock_expiry", advanced_ms=jump)
            self._wake_all()
            changed = True
        return changed

    def _holding_work(self) -> bool:
        for n in self.nodes:  # (a loop, not any(genexpr): asked at every step with faults on)
            if n.alive and (n.orch_items or n.leases or n.executed):
                return True
        return False

    # --- the steps: one handler per kind, called as ``handler(node)`` --------------------------

    def _client_step(self, _node: None) -> None:
        self._client_op(self.pending[0])

    def _restart_step(self, node: _Node) -> None:
        self._restart(node)
        self._wake_all()

    def _orch_fetch(self, node: _Node) -> None:
        item = node.runtime.orchestration_dispatcher.fetch()
        node.acts = None
        if item is None:
            node.orch_idle = True
            self._idle.append(node)
            return
        node.orch_items.append(item)
        self.trace._records.append({
            "step": self.step, "t": self.clock.now_ms() - DEFAULT_EPOCH_MS, "op": "orch_fetch", "node": node.name,
            "instance": item.instance, "execution": item.execution_id, "messages": _Later(_kinds, item.messages),
            "attempts": item.attempt_count,
        })

    def _orch_turn(self, node: _Node) -> None:
        items = node.orch_items
        item = items.pop(self._pick(items) if len(items) > 1 else 0)
        node.acts = None
        self._turned = item.instance  # (named by the error record if the turn raises)
        result = node.runtime.orchestration_dispatcher.process(item)
        if result is not None and result.delta:
            node.wrote.add((item.instance, result.execution_id))
        self.trace._records.append({
            "step": self.step, "t": self.clock.now_ms() - DEFAULT_EPOCH_MS, "op": "orch_turn", "node": node.name,
            "instance": item.instance, "result": None if result is None else result.kind,
            "events": [] if result is None else _Later(_event_labels, result.delta),
            "digest": None if result is None else _Later(_digest, result.delta),
        })
        self._wake_all()

    def _work_fetch(self, node: _Node) -> None:
        lease = node.runtime.worker_dispatcher.fetch()
        node.acts = None
        if lease is None:
            node.work_idle = True
            self._idle.append(node)
            return
        node.leases.append(lease)
        item = lease.item
        self.trace._records.append({
            "step": self.step, "t": self.clock.now_ms() - DEFAULT_EPOCH_MS, "op": "work_fetch", "node": node.name,
            "instance": item.instance, "activity": item.name, "id": item.id, "attempts": lease.attempt_count,
        })

    def _work_exec(self, node: _Node) -> None:
        leases = node.leases
        lease = leases.pop(self._pick(leases) if len(leases) > 1 else 0)
        node.acts = None  # (and executed grows below: nothing lists the steps in between)
        item = lease.item
        world = self.world
        world._enter(item.name, item.instance)
        try:
            outcome = node.runtime.worker_dispatcher.execute(lease)
        finally:
            world._exit()
        node.executed.append((lease, outcome))
        self.trace._records.append({
            "step": self.step, "t": self.clock.now_ms() - DEFAULT_EPOCH_MS, "op": "work_exec", "node": node.name,
            "instance": item.instance, "activity": item.name, "id": item.id, "outcome": outcome.action,
            "completion": None if outcome.completion is None else type(outcome.completion).KIND,
        })
        if "crash_after_effect" in self.active_kinds and self._fault("crash_after_effect", "work_exec"):
            self._crash(node, "crash after activity side effect, before its ack")

    def _work_ack(self, node: _Node) -> None:
        executed = node.executed
        lease, outcome = executed.pop(self._pick(executed) if len(executed) > 1 else 0)
        node.acts = None
        ok = node.runtime.worker_dispatcher.commit(lease, outcome)
        self.trace._records.append({
            "step": self.step, "t": self.clock.now_ms() - DEFAULT_EPOCH_MS, "op": "work_ack", "node": node.name,
            "instance": lease.item.instance, "id": lease.item.id, "committed": ok,
        })
        self._wake_all()

    def _client_op(self, op: Any) -> None:
        try:
            if isinstance(op, Start):
                if op.version is None:
                    self.client.start_orchestration(op.instance, op.orchestration, op.input)
                else:
                    self.client.start_orchestration_versioned(op.instance, op.orchestration, op.input, op.version)
            elif op.kind == "raise":
                self.client.raise_event(op.instance, op.name, op.data)
            elif op.kind == "enqueue":
                self.client.enqueue_event(op.instance, op.name, op.data)
            elif op.kind == "cancel":
                self.client.cancel_instance(op.instance, op.name or None)
            else:
                raise ValueError(f"unknown signal kind {op.kind!r}")
        except ProviderError as exc:
            self._log("client_retry", instance=op.instance, error=str(exc))
            return  # stays pending: a real client retries
        self.pending.pop(0)
        self._log("client", instance=op.instance, what=type(op).__name__ if isinstance(op, Start) else op.kind,
                  name=getattr(op, "orchestration", getattr(op, "name", "")))
        self._wake_all()

    # --- results --------------------------------------------------------------------------------

    def _result(self, quiescent: bool) -> SimResult:
        histories: dict[str, dict[int, list[HistoryEvent]]] = {}
        statuses: dict[str, Any] = {}
        names = list(dict.fromkeys(self.instances + list(reversed(self.inner.list_instances()))))
        reader = Client(self.inner, clock=self.clock, sleep=lambda ms: None)  # stateless: one for all
        for inst in names:
            last = self.inner.latest_execution_id(inst) or 0
            histories[inst] = {e: list(self.inner.read_with_execution(inst, e)) for e in range(1, last + 1)}
            try:
                statuses[inst] = reader.get_status(inst)
            except DuroxideError as exc:  # pragma: no cover - reported, never hidden
                self.crash_reports.append(f"status of {inst}: {exc}")
        return SimResult(
            seed=self.seed,
            plan=self.plan,
            trace=self.trace,
            steps=self.step,
            end_ms=self.clock.now_ms() - DEFAULT_EPOCH_MS,
            faults_injected=dict(sorted(self.faults_injected.items())),
            fired=self.fired,
            histories=histories,
            statuses=statuses,
            world=self.world,
            quiescent=quiescent,
            registry=self.registry,
            writers=self._writers(),
            crash_reports=self.crash_reports,
            divergences=self.divergences,
            realized=self.realized,
            queued=None if quiescent else self._queued(),
            to_come=frozenset(op.instance for op in self.pending),
        )

    def _writers(self) -> dict[tuple[str, int], tuple[tuple[str, Any], ...]]:
        """``(instance, execution) -> ((process, registry), ...)`` in boot order, sorted by key."""
        out: dict[tuple[str, int], list[tuple[str, Any]]] = {}
        for node in self.booted:
            label = f"{node.name}, incarnation {node.incarnation}"
            for key in sorted(node.wrote):
                out.setdefault(key, []).append((label, node.runtime.registry))
        return {key: tuple(out[key]) for key in sorted(out)}

    def _queued(self) -> dict[str, list[Any]] | None:
        """What the store still holds by instance, leaving out activity items no simulated
        process will ever fetch (a tag outside every worker's filter, or no worker slots): those
        cannot move their instance, so they do not make it unsettled."""
        reader = getattr(self.inner, "queued_work", None)
        if reader is None:
            return None
        opts = self.options
        serves = opts.worker_tag_filter.matches if opts.worker_concurrency > 0 else (lambda _tag: False)
        out: dict[str, list[Any]] = {}
        for inst, items in reader().items():
            live = [i for i in items if not isinstance(i, ActivityExecute) or serves(i.tag)]
            if live:
                out[inst] = live
        return out
