"""Generative probe of the simulation sandbox (nondeterminism detection in orchestration code).

Orchestration MODULES are generated as real ``.py`` files in a temp dir and imported
(``load_app``), so the reported ``file:line`` can be checked against the generated source.

Properties (``duroxide_sim.sim.sandbox`` docstring):

(a) a forbidden call (clock, global RNG, ``uuid4``, ``os.urandom``, ``os.environ``, file system,
    ``print``) planted at a generated place - the orchestration body (before the first yield,
    between yields, after the last), a plain / nested / generator (``yield from``) / ``async def``
    helper, a comprehension, a generator expression, a lambda, a default argument, a decorator
    (its wrapper, or at decoration time), a property, an attrs / dataclass default factory of a
    typed activity result, the construction of a join or race, a loop's second iteration only, a
    replay-only path (``ctx.is_replaying()``), an ``except`` block, a context manager's ``__enter__``, an ``lru_cache`` helper, a ``sorted`` key lambda, a class body, a dataclass ``__post_init__`` / attrs converter of a typed result, a bound-method orchestration, a child sub-orchestration, an exception's ``__str__`` - imported in different styles (``import time``,
    ``from time import time as t``, ``import random as r``, ``from uuid import uuid4``...) is
    reported exactly ONCE (one report per call site per run: the violation list is deduplicated
    by orchestration, call, file and line, and "one call is one report"), naming the
    orchestration, the right call and the planted line of the generated file (the innermost
    frame of the orchestration's own code);
(b) a CLEAN program using allowed things heavily (``ctx.utc_now``, ``ctx.new_guid``,
    ``ctx.trace_*``, ``sorted(set(...))``, json, math, hashlib, re, decimal, ``uuid5``, a seeded
    ``Random``, pure ``time.gmtime(ts)``/``strftime(fmt, t)``, dataclass/attrs records, typed
    results, caught exceptions and formatted tracebacks, joins and races) gets NO report;
(c) activities doing every forbidden thing are never flagged;
(d) a set-iteration-order dependent orchestration is caught by the hash-seed check; the
    ``sorted()`` version is not.

The two bugs the generator's sweeps found are pinned by the plain tests at the end (each failed
before its fix); the generator itself avoids their triggers.
"""

from __future__ import annotations

import atexit
import pathlib
import shutil
import tempfile
import textwrap

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.harness import Simulation, SimSpec, Start
from duroxide_sim.testing.hashseed import check_hash_seed_independence
from duroxide_sim.testing.replay import load_app

REPO = pathlib.Path(__file__).resolve().parents[2]
SETTINGS = dict(derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_TMP = pathlib.Path(tempfile.mkdtemp(prefix="gen_sandbox_"))
atexit.register(shutil.rmtree, _TMP, True)
_COUNTER = [0]

# ------------------------------------------------------------------------------------------------
# Forbidden calls: (import line, expression, label the report must contain)
# ------------------------------------------------------------------------------------------------

CALLS: dict[str, list[tuple[str, str, str]]] = {
    "time": [("import time", "time.time()", "called time.time()"),
             ("from time import time as t", "t()", "called time.time()"),
             ("import time as tm", "tm.monotonic()", "called time.monotonic()"),
             ("from time import perf_counter_ns", "perf_counter_ns()", "called time.perf_counter_ns()"),
             ("import time", "time.localtime()", "called time.localtime() without a time argument")],
    "random": [("import random", "random.random()", "called random.random()"),
               ("import random as r", "r.randint(1, 6)", "called random.randint()"),
               ("from random import choice", 'choice("abc")', "called random.choice()"),
               ("import random", "random.Random().random()", "without a seed")],
    "uuid": [("import uuid", "uuid.uuid4()", "called uuid.uuid4()"),
             ("from uuid import uuid4", "uuid4()", "called uuid.uuid4()"),
             ("from uuid import uuid1 as u1", "u1()", "called uuid.uuid1()")],
    "datetime": [("import datetime", "datetime.datetime.now()", "called datetime.now()"),
                 ("from datetime import datetime as dt", "dt.utcnow()", "called datetime.utcnow()"),
                 ("from datetime import date", "date.today()", "called date.today()")],
    "os": [("import os", "os.urandom(4)", "called os.urandom()"),
           ("import os", 'os.environ.get("HOME")', "called os.environ"),
           ("from os import getenv", 'getenv("HOME")', "called os.environ"),
           ("import os.path", 'os.path.exists("/nonexistent-gen-sandbox")', "called os.stat()"),
           ("import os", "os.getpid()", "called os.getpid()")],
    "io": [("import builtins", 'print("hello", end="")', "called print()")],
}
CALL_CHOICES = [c for group in CALLS.values() for c in group]

# ------------------------------------------------------------------------------------------------
# Placements: source templates; {E} is the forbidden expression, "# PLANT" marks the line that
# must be reported. Each template defines module-level ``main`` and optionally ``Quote``.
# ------------------------------------------------------------------------------------------------

_GEN_TAIL = '''
def main(ctx, x):
{body}
'''

PLACEMENTS: dict[str, str] = {
    "before_first_yield": '''
def main(ctx, x):
    _nd = str({E})  # PLANT
    a = yield ctx.schedule_activity("act", x)
    b = yield ctx.schedule_activity("act", a + 1)
    return b
''',
    "between_yields": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    _nd = str({E})  # PLANT
    b = yield ctx.schedule_activity("act", a + 1)
    return b
''',
    "after_last_yield": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    b = yield ctx.schedule_activity("act", a + 1)
    _nd = str({E})  # PLANT
    return b
''',
    "in_return_expression": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    return [a, str({E})]  # PLANT
''',
    "plain_helper": '''
def helper(v):
    _nd = str({E})  # PLANT
    return v + 1


def main(ctx, x):
    a = yield ctx.schedule_activity("act", helper(x))
    return a
''',
    "helper_two_deep": '''
def inner_helper():
    return str({E})  # PLANT


def outer_helper(v):
    return [v, inner_helper()]


def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    pair = outer_helper(a)
    return pair[0]
''',
    "nested_helper": '''
def main(ctx, x):
    def nested(v):
        _nd = str({E})  # PLANT
        return v * 2
    a = yield ctx.schedule_activity("act", nested(x))
    return a
''',
    "generator_helper": '''
def step(ctx, v):
    _nd = str({E})  # PLANT
    return (yield ctx.schedule_activity("act", v))


def main(ctx, x):
    a = yield from step(ctx, x)
    b = yield from step(ctx, a)
    return b
''',
    "async_helper": '''
async def step(ctx, v):
    _nd = str({E})  # PLANT
    return await ctx.schedule_activity("act", v)


async def main(ctx, x):
    a = await step(ctx, x)
    return a
''',
    "async_body": '''
async def main(ctx, x):
    a = await ctx.schedule_activity("act", x)
    _nd = str({E})  # PLANT
    return await ctx.schedule_activity("act", a)
''',
    "list_comprehension": '''
def main(ctx, x):
    _nd = [str({E}) for _ in range(3)]  # PLANT
    a = yield ctx.schedule_activity("act", x)
    return a
''',
    "dict_comprehension": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    _nd = {{k: str({E}) for k in ("p", "q")}}  # PLANT
    return a
''',
    "generator_expression": '''
def main(ctx, x):
    _nd = list(str({E}) for _ in range(2))  # PLANT
    a = yield ctx.schedule_activity("act", x)
    return a
''',
    "lambda": '''
def main(ctx, x):
    make = lambda: str({E})  # PLANT
    a = yield ctx.schedule_activity("act", x)
    _nd = make()
    return a
''',
    "default_argument": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    def stamped(v, at=str({E})):  # PLANT
        return v
    return stamped(a)
''',
    "decorator_wrapper": '''
import functools


def audited(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        _nd = str({E})  # PLANT
        return fn(*args)
    return wrapper


@audited
def price(v):
    return v + 3


def main(ctx, x):
    a = yield ctx.schedule_activity("act", price(x))
    return a
''',
    "decorator_at_decoration": '''
def register_step(fn):
    fn.tag = str({E})  # PLANT
    return fn


def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    @register_step
    def local(v):
        return v
    return local(a)
''',
    "property": '''
class Order:
    def __init__(self, n):
        self.n = n

    @property
    def stamp(self):
        return str({E})  # PLANT


def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    _nd = Order(a).stamp
    return a
''',
    "method_and_init": '''
class Order:
    def __init__(self, n):
        self.n = n
        self.at = str({E})  # PLANT


def main(ctx, x):
    order = Order(x)
    a = yield ctx.schedule_activity("act", order.n)
    return a
''',
    "attrs_result_factory": '''
import attrs


@attrs.frozen
class Quote:
    total: int
    stamp: str = attrs.field(factory=lambda: str({E}))  # PLANT


def main(ctx, x):
    q = yield ctx.schedule_activity_typed("Quote", x, Quote)
    a = yield ctx.schedule_activity("act", q.total)
    return a
''',
    "dataclass_result_factory": '''
import dataclasses


@dataclasses.dataclass
class Quote:
    total: int
    stamp: str = dataclasses.field(default_factory=lambda: str({E}))  # PLANT


def main(ctx, x):
    q = yield ctx.schedule_activity_typed("Quote", x, Quote)
    return q.total
''',
    "join_construction": '''
def main(ctx, x):
    tasks = [ctx.schedule_activity("act", len(str({E}))) for _ in range(2)]  # PLANT
    results = yield ctx.all(tasks)
    return len(results)
''',
    "race_construction": '''
def main(ctx, x):
    winner = yield ctx.race(
        ctx.schedule_activity("act", len(str({E}))),  # PLANT
        ctx.schedule_timer(60_000),
    )
    return 1
''',
    "loop_second_iteration": '''
def main(ctx, x):
    for i in range(3):
        if i == 1:
            _nd = str({E})  # PLANT
        x = yield ctx.schedule_activity("act", x + 1)
    return x
''',
    "replay_only": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    if ctx.is_replaying():
        _nd = str({E})  # PLANT
    b = yield ctx.schedule_activity("act", a)
    c = yield ctx.schedule_activity("act", b)
    return c
''',
    "context_manager": '''
class Timed:
    def __enter__(self):
        self.start = str({E})  # PLANT
        return self

    def __exit__(self, *exc):
        return False


def main(ctx, x):
    with Timed():
        a = yield ctx.schedule_activity("act", x)
    return a
''',
    "lru_cache_helper": '''
import functools


@functools.lru_cache(maxsize=None)
def config(key):
    return key + str({E})  # PLANT


def main(ctx, x):
    a = yield ctx.schedule_activity("act", len(config("k")))
    return a
''',
    "sorted_key_lambda": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    _nd = sorted(["b", "a"], key=lambda v: (str({E}), v))  # PLANT
    return a
''',
    "class_body_inside_orchestration": '''
def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    class Local:
        stamp = str({E})  # PLANT
    return a
''',
    "async_helper_from_generator": '''
async def step(ctx, v):
    _nd = str({E})  # PLANT
    return await ctx.schedule_activity("act", v)


def main(ctx, x):
    a = yield step(ctx, x)
    return a
''',
    "dataclass_result_post_init": '''
import dataclasses


@dataclasses.dataclass
class Quote:
    total: int

    def __post_init__(self):
        self.seen = str({E})  # PLANT


def main(ctx, x):
    q = yield ctx.schedule_activity_typed("Quote", x, Quote)
    return q.total
''',
    "attrs_result_converter": '''
import attrs


@attrs.define
class Quote:
    total: int = attrs.field(converter=lambda v: v + len(str({E})))  # PLANT


def main(ctx, x):
    q = yield ctx.schedule_activity_typed("Quote", x, Quote)
    return q.total
''',
    "bound_method_orchestration": '''
class Workflow:
    def run(self, ctx, x):
        a = yield ctx.schedule_activity("act", x)
        _nd = str({E})  # PLANT
        return a


main = Workflow().run
''',
    "sub_orchestration_child": '''
def child(ctx, v):
    _nd = str({E})  # PLANT CHILD
    return (yield ctx.schedule_activity("act", v))


def main(ctx, x):
    a = yield ctx.schedule_sub_orchestration("child", x)
    return a
''',
    "custom_exception_str": '''
class Declined(Exception):
    def __str__(self):
        return "declined " + str({E})  # PLANT


def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    raise Declined()
''',
    "exception_handler": '''
def main(ctx, x):
    try:
        yield ctx.schedule_activity("boom", x)
    except Exception:
        _nd = str({E})  # PLANT
    a = yield ctx.schedule_activity("act", x)
    return a
''',
}

SETUP = '''

def setup(rt, world):
    def boom(ctx, v):
        raise ValueError("declined")

    rt.register_activity("act", lambda ctx, v: v)
    rt.register_activity("boom", boom)
    rt.register_activity("Quote", lambda ctx, v: {"total": v})  # an old-shape result: no stamp
    rt.register_orchestration("main", main)
    if "child" in globals():
        rt.register_orchestration("child", globals()["child"])
'''


def write_module(source: str, tag: str) -> pathlib.Path:
    _COUNTER[0] += 1
    path = _TMP / f"m{_COUNTER[0]:04d}_{tag}" / "workflows.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    return path


def run_module(path: pathlib.Path, *, entry: str = "setup"):
    setup = load_app(f"{path}:{entry}")
    spec = SimSpec(name="gen-sandbox", setup=setup, starts=[Start(instance="p", orchestration="main", input=1)],
                   fault_transparent=False)
    result = run_and_check(Simulation(spec, 0, None, sandbox=True))
    return result, [f.message for f in result.failures if f.checker == "sandbox"]


def render_planted(placement: str, call: tuple[str, str, str]) -> tuple[str, int]:
    imp, expr, _ = call
    body = textwrap.dedent(PLACEMENTS[placement]).replace("{E}", expr)
    if "{{" in body:
        body = body.replace("{{", "{").replace("}}", "}")
    source = imp + "\n" + body + SETUP
    line = next(i for i, text in enumerate(source.splitlines(), 1) if "# PLANT" in text)
    return source, line


def _lineno_of(source: str, marker: str) -> int:
    return next(i for i, text in enumerate(source.splitlines(), 1) if marker in text)


@settings(max_examples=150, **SETTINGS)
@given(placement=st.sampled_from(sorted(PLACEMENTS)), call=st.sampled_from(CALL_CHOICES))
def test_planted_forbidden_call_is_reported_once_at_its_line(placement: str, call: tuple[str, str, str]) -> None:
    source, line = render_planted(placement, call)
    path = write_module(source, placement)
    result, messages = run_module(path)
    label = call[2]
    orchestration = "child" if "# PLANT CHILD" in source else "main"
    expected = f"orchestration '{orchestration}' {label}" if label.startswith("called") else label
    at = f"at {path}:{line}"
    ok = [m for m in messages if expected in m and m.endswith(at)]
    assert len(messages) == 1 and len(ok) == 1, (
        f"placement={placement} call={call[1]!r}: expected exactly one report '{label} ... {at}', got {messages}"
        f"\n--- {path}\n{source}")


# ------------------------------------------------------------------------------------------------
# Two call sites: two reports (and the same site hit again and again: still one)
# ------------------------------------------------------------------------------------------------


@settings(max_examples=12, **SETTINGS)
@given(first=st.sampled_from(CALL_CHOICES), second=st.sampled_from(CALL_CHOICES), repeat=st.integers(1, 4))
def test_distinct_call_sites_are_reported_once_each(first, second, repeat) -> None:
    source = "\n".join([first[0], second[0], textwrap.dedent(f'''
        def main(ctx, x):
            for i in range({repeat}):
                _a = str({first[1]})  # FIRST
                x = yield ctx.schedule_activity("act", x)
                _b = str({second[1]})  # SECOND
            return x
    '''), SETUP])
    path = write_module(source, "two_sites")
    _, messages = run_module(path)
    l1, l2 = _lineno_of(source, "# FIRST"), _lineno_of(source, "# SECOND")
    assert len(messages) == 2, messages
    assert sum(m.endswith(f"at {path}:{l1}") for m in messages) == 1, messages
    assert sum(m.endswith(f"at {path}:{l2}") for m in messages) == 1, messages


# ------------------------------------------------------------------------------------------------
# Clean programs: heavy use of allowed things, no report
# ------------------------------------------------------------------------------------------------

CLEAN_HEADER = '''
import collections
import dataclasses
import datetime
import decimal
import hashlib
import json
import math
import random
import re
import time
import traceback
import uuid

import attrs


@attrs.frozen
class Quote:
    total: int
    lines: list = attrs.field(factory=list)
    note: str = "none"


@dataclasses.dataclass
class Record:
    key: str
    tags: list = dataclasses.field(default_factory=list)
    meta: dict = dataclasses.field(default_factory=dict)


def pure_helper(v):
    return int(hashlib.sha256(str(v).encode()).hexdigest()[:4], 16) % 97


def step(ctx, v):
    return (yield ctx.schedule_activity("act", v))


async def astep(ctx, v):
    return await ctx.schedule_activity("act", v)
'''

CLEAN_SNIPPETS: list[str] = [
    "now = yield ctx.utc_now()\nctx.trace_info(f'now={now} {time.strftime(\"%Y-%m-%d\", time.gmtime(now // 1000))}')",
    "guid = yield ctx.new_guid()\nctx.trace_debug('guid ' + str(uuid.UUID(guid)))",
    "for name in sorted(set(['b', 'a', 'c', 'a'])):\n    acc = (yield ctx.schedule_activity('act', acc + len(name))) % 1000",
    "ctx.trace_info(json.dumps({'acc': acc, 'xs': [1, 2, 3]}, sort_keys=True))",
    "acc = (acc + int(math.sqrt(16)) + math.floor(2.5) + pure_helper(acc)) % 1000",
    "acc = (acc + random.Random(acc).randint(1, 6)) % 1000",
    "rec = Record(key=f'{acc:05d}')\nrec.tags.append(re.sub(r'[0-9]', 'x', rec.key))\nctx.trace_warn(repr(rec))",
    "q = yield ctx.schedule_activity_typed('Quote', acc, Quote)\nacc = (acc + q.total + len(q.lines)) % 1000",
    "try:\n    raise ValueError('business rule')\nexcept ValueError:\n    ctx.trace_error(traceback.format_exc())",
    "try:\n    yield ctx.schedule_activity('boom', acc)\nexcept Exception as exc:\n    ctx.trace_warn('boom failed: ' + str(exc))",
    "results = yield ctx.all([ctx.schedule_activity('act', i) for i in range(3)])\nacc = (acc + len(results)) % 1000",
    "winner = yield ctx.race(ctx.schedule_activity('act', acc), ctx.schedule_timer(60_000))",
    "acc = (acc + int(decimal.Decimal('1.25') * 4)) % 1000",
    "u5 = uuid.uuid5(uuid.NAMESPACE_URL, f'order/{acc}')\nctx.trace_info(u5.hex)",
    "stamp = datetime.datetime.fromtimestamp(0, datetime.timezone.utc).isoformat()\nctx.trace_info(stamp)",
    "counts = collections.Counter('abracadabra')\nacc = (acc + counts.most_common(1)[0][1]) % 1000",
    "acc = yield from step(ctx, acc)",
    "acc = yield astep(ctx, acc)",
    "ordered = dict(sorted({'z': 1, 'y': 2}.items()))\nctx.trace_info(','.join(f'{k}={v}' for k, v in ordered.items()))",
    "yield ctx.schedule_timer(1000)",
]


@settings(max_examples=35, **SETTINGS)
@given(snippets=st.lists(st.sampled_from(range(len(CLEAN_SNIPPETS))), min_size=1, max_size=7))
def test_clean_program_is_never_reported(snippets: list[int]) -> None:
    body = ["def main(ctx, x):", "    acc = x"]
    for k in snippets:
        body.extend("    " + ln for ln in CLEAN_SNIPPETS[k].splitlines())
    body.append("    acc = yield ctx.schedule_activity('act', acc)")
    body.append("    return acc")
    source = CLEAN_HEADER + "\n\n" + "\n".join(body) + "\n" + SETUP
    path = write_module(source, "clean")
    result, messages = run_module(path)
    assert result.statuses["p"].status == "Completed", (result.statuses["p"], source)
    assert messages == [], f"false positive(s): {messages}\n--- {path}\n{source}"


# ------------------------------------------------------------------------------------------------
# Activities may do anything
# ------------------------------------------------------------------------------------------------


@settings(max_examples=10, **SETTINGS)
@given(calls=st.lists(st.sampled_from(CALL_CHOICES), min_size=1, max_size=5), use_async=st.booleans())
def test_forbidden_calls_in_activities_are_never_flagged(calls, use_async: bool) -> None:
    imports = sorted({c[0] for c in calls})
    lines = [f"    _v{i} = str({c[1]})" for i, c in enumerate(calls)]
    source = "\n".join([
        *imports, "", "",
        f"{'async ' if use_async else ''}def noisy(ctx, v):", *lines, "    return v + 1", "", "",
        "def main(ctx, x):",
        '    a = yield ctx.schedule_activity("noisy", x)',
        '    b = yield ctx.all([ctx.schedule_activity("noisy", a), ctx.schedule_activity("noisy", a + 1)])',
        "    return len(b)", "", "",
        "def setup(rt, world):",
        '    rt.register_activity("noisy", noisy)',
        '    rt.register_orchestration("main", main)', ""])
    path = write_module(source, "activity")
    result, messages = run_module(path)
    assert result.statuses["p"].status == "Completed", (result.statuses["p"], source)
    assert messages == [], f"activity code flagged: {messages}\n{source}"


# ------------------------------------------------------------------------------------------------
# Set-iteration order: the hash-seed check
# ------------------------------------------------------------------------------------------------

_SET_ORDER = '''
from duroxide_sim.sim.harness import SimSpec, Start


def setup(rt, world):
    rt.register_activity("notify", lambda ctx, who: who)

    @rt.register_orchestration("main")
    def main(ctx, x):
        names = {{"alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"}}
        out = []
        for who in {ITER}:
            out.append((yield ctx.schedule_activity("notify", who)))
        return out


SPEC = SimSpec(name="set-order-gen", setup=setup, starts=[Start(instance="n", orchestration="main", input=0)],
               ref=__file__ + ":SPEC")
'''


def test_set_order_dependence_is_caught_by_the_hash_seed_check_and_sorted_is_not() -> None:
    dependent = write_module(_SET_ORDER.replace("{ITER}", "names").replace("{{", "{").replace("}}", "}"), "setdep")
    fixed = write_module(_SET_ORDER.replace("{ITER}", "sorted(names)").replace("{{", "{").replace("}}", "}"), "setok")
    message = check_hash_seed_independence(f"{dependent}:SPEC", 0, hash_seeds=(0, 1), cwd=str(REPO))
    assert message is not None and "depends on PYTHONHASHSEED" in message
    assert check_hash_seed_independence(f"{fixed}:SPEC", 0, hash_seeds=(0, 1), cwd=str(REPO)) is None


# ------------------------------------------------------------------------------------------------
# Bugs found by the generator's sweeps (minimal reproductions; each failed before its fix; the
# generator above avoids their triggers: its factories are lambdas, its time arguments real)
# ------------------------------------------------------------------------------------------------

_C_FACTORY = '''
import time

import attrs


@attrs.frozen
class Quote:
    total: int
    quoted_at: float = attrs.field(factory=time.time)  # FACTORY


def main(ctx, x):
    q = yield ctx.schedule_activity_typed("Quote", x, Quote)  # TYPED-YIELD
    return q.total
'''


def test_typed_result_whose_factory_is_a_c_clock_function_is_reported_in_user_code() -> None:
    """sandbox.py: "The reported line is the innermost frame of the orchestration's own code (not
    this package, not the standard library, not generated code such as a dataclass ``__init__``
    ...)". A typed activity result whose default factory is the C function itself
    (``attrs.field(factory=time.time)``, or ``dataclasses.field(default_factory=time.time)``) is
    built by cattrs when the completion is applied; the only Python frames between the C call and
    the engine are the generated ``__init__`` (``<attrs generated init>``) and cattrs - a
    site-packages file, which ``_report``'s walk takes for user code (``_is_stdlib`` is False for
    site-packages and it is not this package). Expected: the user's file (the factory's or the
    ``schedule_activity_typed`` line); before the fix: ``.../site-packages/cattrs/converters.py:601``."""
    path = write_module(_C_FACTORY + SETUP, "bug_c_factory")
    result, messages = run_module(path)
    assert result.statuses["p"].status == "Completed"
    assert len(messages) == 1 and "called time.time()" in messages[0], messages
    wanted = {f"at {path}:{_lineno_of(_C_FACTORY + SETUP, m)}" for m in ("# FACTORY", "# TYPED-YIELD")}
    assert any(messages[0].endswith(w) for w in wanted), f"expected one of {sorted(wanted)}, got {messages}"


_NONE_TIME = '''
import time


def main(ctx, x):
    a = yield ctx.schedule_activity("act", x)
    label = time.strftime("%H:%M", time.localtime(None))  # PLANT
    return label
'''


def test_clock_formatting_with_a_literal_none_time_is_reported() -> None:
    """sandbox.py: ``time.localtime/gmtime/ctime/asctime/strftime`` are forbidden "without their
    time argument (they read the clock then; with it they are pure)". ``time.localtime(None)``
    (and ``ctime(None)``, ``gmtime(None)``) reads the clock exactly like ``time.localtime()`` - a
    ``ts`` that is None when an optional timestamp is missing is a common shape - but
    ``_call_args`` only counts positional arguments, so one argument passes as "pure".
    Expected: one report ``time.localtime() without a time argument`` at the planted line;
    before the fix: no report (the returned label differs on every replay)."""
    path = write_module(_NONE_TIME + SETUP, "bug_none_time")
    result, messages = run_module(path)
    assert result.statuses["p"].status == "Completed"
    at = f"at {path}:{_lineno_of(_NONE_TIME + SETUP, '# PLANT')}"
    assert len(messages) == 1 and "time.localtime()" in messages[0] and messages[0].endswith(at), messages
