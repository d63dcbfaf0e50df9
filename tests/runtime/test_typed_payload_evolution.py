"""Typed payloads across a change of the code's types (SPEC §3.5, §3.4, §12, §17; README
"typed I/O", "versioned orchestrations", ``duroxide-sim replay``).

The everyday reality of a long-running system: histories are recorded in production under the
v1 classes (attrs / dataclass / enum / Optional / list / nested records), some instances finish,
others wait on an event with typed values already in their history; then v2 of the code is
deployed with changed classes. Every test here records on the real threaded ``Runtime`` over a
``SqliteProvider`` *file*, shuts it down, and then (a) starts a new Runtime with the v2 code on
the same file to continue the waiting instances, and/or (b) replays the recorded database
against the v2 code as CI would (``replay_source`` / ``duroxide-sim replay``).

The app code of each version lives in its own module file (written under ``tmp_path`` and loaded
with ``load_app``, as the CLI loads it), so a class keeps its name across versions, as it does
in a real deploy.

What the references say:

* SPEC §3.5: an activity matches its history by name, *input* (the stored JSON text), session
  and tag; a sub-orchestration by name + input; SPEC §3.4: a KV set must match key and value,
  a custom status update's value is ignored. duroxide-python 0.2.2 (run from
  ``bench/.peer``) fails an instance whose activity input gained a key with
  ``nondeterministic: schedule mismatch: action=CallActivity { ..., name: "Reserve", input:
  "{\\"order_id\\": \\"A\\", \\"qty\\": 3, \\"gift\\": false}", ... } vs event=ActivityScheduled
  { name: "Reserve", input: "{\\"order_id\\": \\"A\\", \\"qty\\": 3}", ... }`` - both inputs
  in full.
* README: typed results convert only between matching JSON kinds, an int may widen to float,
  ``result_type=str`` returns the stored text; a mismatch fails at the yield naming the fields
  (``SerializationError ... @ $.field``); ``replay`` names for every divergence what differs
  (and reports changed outputs of finished histories); versioned orchestrations keep in-flight
  instances on the version they started with (SPEC §12).
* The README says nothing about type evolution itself (extra keys, defaults, enum values,
  activity inputs whose JSON changes); those behaviours are asserted as the probe found them
  where they are safe and clear, and as the correct behaviour where they are a trap.

Defects this file found (its tests assert the correct behaviour and fail until fixed):
``test_nondeterminism_report_for_a_realistic_record_input_shows_what_differs`` and
``test_kv_set_of_a_record_whose_json_changes_is_reported_with_what_differs`` (both inputs /
values cut at 120 characters before the key that differs: the report shows two identical
texts - core/nondeterminism.py ``_short``); ``test_all_typed_fan_out_over_a_changed_result_class
[required_field]`` (``all_typed`` hands ``{"err": ...}`` dicts to the code in place of records
that no longer structure, where a single typed yield and ``race_typed`` raise the
SerializationError - core/engine.py ``_outcome``).

Found by this file and fixed (each test failed before): a nondeterminism report cut both long
inputs (or KV values) at 120 characters, before the key that differed, so both sides read the
same (now cut around the first difference); ``all_typed`` handed a child's result that did not
fit its class over as an ``{"err": ...}`` entry (now raised at the yield, as a typed yield and a
race do).
"""

from __future__ import annotations

import json
import pathlib
import sqlite3
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.cli import main as cli
from duroxide_sim.testing.replay import load_app, replay_source

_HEADER = """\
from __future__ import annotations

import dataclasses
import datetime
import enum
import typing

import attrs

from duroxide_sim.core import codec
"""

_WAIT_S = 10.0


# --------------------------------------------------------------------------------------------
# helpers: app modules, production runs, snapshots
# --------------------------------------------------------------------------------------------


def _write_app(directory: pathlib.Path, name: str, source: str) -> tuple[Callable[[Any], None], pathlib.Path]:
    """Write one version of the app as a module file and load its ``register``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.py"
    path.write_text(_HEADER + textwrap.dedent(source))
    return load_app(f"{path}:register"), path


def _production(db: pathlib.Path, register: Callable[[Any], None], body: Callable[[Client], Any], **options: Any) -> Any:
    """Run ``body`` against a real threaded Runtime (the given code) on the SQLite file ``db``;
    shut the runtime down and close the file afterwards (a process that stops)."""
    provider = SqliteProvider.open(str(db))
    runtime = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, **options))
    register(runtime)
    runtime.start()
    try:
        return body(Client(provider))
    finally:
        runtime.shutdown(2_000)
        provider.close()


def _snapshot(db: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
    """A consistent copy of the production database (what CI gets to replay)."""
    src, dst = sqlite3.connect(str(db)), sqlite3.connect(str(dest))
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()
    return dest


def _wait_until(check: Callable[[], Any], what: str, timeout_s: float = _WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.01)


def _history(client: Client, instance: str, execution_id: int = 1) -> list[Any]:
    try:
        return list(client.read_execution_history(instance, execution_id))
    except Exception:  # noqa: BLE001 - not created yet
        return []


def _waiting_on(client: Client, instance: str, event: str, execution_id: int = 1) -> bool:
    """The instance's history holds a subscription to ``event`` (it is parked, waiting)."""
    return any(e["kind"] == "ExternalSubscribed" and json.loads(e["data"]).get("name") == event
               for e in _history(client, instance, execution_id))


def _replay(db: pathlib.Path, register: Callable[[Any], None], **kw: Any) -> dict[str, list[str]]:
    """instance -> divergence messages of replaying ``db`` against ``register``."""
    out: dict[str, list[str]] = {}
    for d in replay_source(str(db), register, **kw):
        out.setdefault(d.instance, []).append(d.render())
    return out


def _cli_replay(capsys: Any, db: pathlib.Path, app: pathlib.Path, *extra: str) -> tuple[int, list[dict[str, Any]]]:
    capsys.readouterr()
    rc = cli(["replay", str(db), "--app", f"{app}:register", "--no-hash-seed-check", "--json", *extra])
    out = capsys.readouterr().out
    return rc, json.loads(out)


# --------------------------------------------------------------------------------------------
# 1. the matrix: one recorded typed value meets its changed class, through three channels
#    (orchestration input, recorded activity result, recorded external event)
# --------------------------------------------------------------------------------------------

# (case id, v1 declarations, v2 declarations, the recorded value, expectation)
#   expectation: ("Completed", output seen by the client) | ("Failed", [substrings of the error])
# In the declarations ``{S}`` is the case suffix (one module holds every case).
_CASES: list[tuple[str, str, str, Any, tuple[str, Any]]] = [
    ("field_added_with_default",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n    gift: bool = False\n",
     {"sku": "A-1", "qty": 2},
     ("Completed", {"sku": "A-1", "qty": 2, "gift": False})),
    ("required_field_added",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n    gift: bool\n",
     {"sku": "A-1", "qty": 2},
     ("Failed", ["Rec{S}", "required field missing @ $.gift"])),
    ("field_removed",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n    note: str\n",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n",
     {"sku": "A-1", "qty": 2, "note": "fragile"},
     ("Completed", {"sku": "A-1", "qty": 2})),
    ("field_renamed",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    quantity: int\n",
     {"sku": "A-1", "qty": 2},
     ("Failed", ["Rec{S}", "required field missing @ $.quantity"])),
    ("int_to_str",
     "@attrs.define\nclass Rec{S}:\n    qty: int\n",
     "@attrs.define\nclass Rec{S}:\n    qty: str\n",
     {"qty": 2},
     ("Failed", ["Rec{S}", "expected a string, got an integer 2 @ $.qty"])),
    ("str_to_int",
     "@attrs.define\nclass Rec{S}:\n    code: str\n",
     "@attrs.define\nclass Rec{S}:\n    code: int\n",
     {"code": "7"},
     ("Failed", ["Rec{S}", "expected an integer, got a string '7' @ $.code"])),
    ("int_to_float",
     "@attrs.define\nclass Rec{S}:\n    qty: int\n",
     "@attrs.define\nclass Rec{S}:\n    qty: float\n",
     {"qty": 2},
     ("Completed", {"qty": 2.0})),
    ("float_to_int",
     "@attrs.define\nclass Rec{S}:\n    price: float\n",
     "@attrs.define\nclass Rec{S}:\n    price: int\n",
     {"price": 2.5},
     ("Failed", ["Rec{S}", "expected an integer, got a number 2.5 @ $.price"])),
    ("enum_value_changed",
     "class Color{S}(str, enum.Enum):\n    RED = 'red'\n\n@attrs.define\nclass Rec{S}:\n    color: Color{S}\n",
     "class Color{S}(str, enum.Enum):\n    RED = 'crimson'\n\n@attrs.define\nclass Rec{S}:\n    color: Color{S}\n",
     {"color": "red"},
     ("Failed", ["Rec{S}", "'red' is not a valid Color{S}", "$.color"])),
    ("enum_member_removed",
     "class Color{S}(str, enum.Enum):\n    RED = 'red'\n    BLUE = 'blue'\n\n@attrs.define\nclass Rec{S}:\n    color: Color{S}\n",
     "class Color{S}(str, enum.Enum):\n    RED = 'red'\n\n@attrs.define\nclass Rec{S}:\n    color: Color{S}\n",
     {"color": "blue"},
     ("Failed", ["Rec{S}", "'blue' is not a valid Color{S}", "$.color"])),
    ("enum_member_renamed_same_value",
     "class Color{S}(str, enum.Enum):\n    RED = 'red'\n\n@attrs.define\nclass Rec{S}:\n    color: Color{S}\n",
     "class Color{S}(str, enum.Enum):\n    SCARLET = 'red'\n\n@attrs.define\nclass Rec{S}:\n    color: Color{S}\n",
     {"color": "red"},
     ("Completed", {"color": "red"})),
    ("int_enum_member_added",
     "class Pri{S}(enum.IntEnum):\n    LOW = 1\n\n@attrs.define\nclass Rec{S}:\n    pri: Pri{S}\n",
     "class Pri{S}(enum.IntEnum):\n    LOW = 1\n    HIGH = 2\n\n@attrs.define\nclass Rec{S}:\n    pri: Pri{S}\n",
     {"pri": 1},
     ("Completed", {"pri": 1})),
    ("optional_added",
     "@attrs.define\nclass Rec{S}:\n    note: str\n",
     "@attrs.define\nclass Rec{S}:\n    note: typing.Optional[str]\n",
     {"note": "x"},
     ("Completed", {"note": "x"})),
    ("optional_removed",
     "@attrs.define\nclass Rec{S}:\n    note: typing.Optional[str] = None\n",
     "@attrs.define\nclass Rec{S}:\n    note: str = ''\n",
     {"note": None},
     ("Failed", ["Rec{S}", "expected a string, got null", "$.note"])),
    ("list_to_tuple",
     "@attrs.define\nclass Rec{S}:\n    tags: list[str]\n",
     "@attrs.define\nclass Rec{S}:\n    tags: tuple[str, ...]\n",
     {"tags": ["a", "b"]},
     ("Completed", {"tags": ["a", "b"]})),
    ("nested_required_field",
     "@attrs.define\nclass Line{S}:\n    sku: str\n    qty: int\n\n@attrs.define\nclass Rec{S}:\n    lines: list[Line{S}]\n",
     "@attrs.define\nclass Line{S}:\n    sku: str\n    qty: int\n    price: int\n\n@attrs.define\nclass Rec{S}:\n    lines: list[Line{S}]\n",
     {"lines": [{"sku": "a", "qty": 1}]},
     ("Failed", ["Rec{S}", "required field missing @ $.lines[0].price"])),
    ("nested_field_with_default",
     "@attrs.define\nclass Line{S}:\n    sku: str\n    qty: int\n\n@attrs.define\nclass Rec{S}:\n    lines: list[Line{S}]\n",
     "@attrs.define\nclass Line{S}:\n    sku: str\n    qty: int\n    price: int = 0\n\n@attrs.define\nclass Rec{S}:\n    lines: list[Line{S}]\n",
     {"lines": [{"sku": "a", "qty": 1}]},
     ("Completed", {"lines": [{"sku": "a", "qty": 1, "price": 0}]})),
    ("dataclass_to_attrs",
     "@dataclasses.dataclass\nclass Rec{S}:\n    sku: str\n    qty: int\n",
     "@attrs.define\nclass Rec{S}:\n    sku: str\n    qty: int\n",
     {"sku": "A-1", "qty": 2},
     ("Completed", {"sku": "A-1", "qty": 2})),
    ("str_to_datetime_without_hook",
     "@attrs.define\nclass Rec{S}:\n    when: str\n",
     "@attrs.define\nclass Rec{S}:\n    when: datetime.datetime\n",
     {"when": "2026-03-01T12:00:00"},
     ("Failed", ["Rec{S}", "datetime", "structure hook"])),
]

_CHANNELS = ("input", "result", "event", "queue", "child")
_ORCHESTRATION = {"input": "In", "result": "Res", "event": "Ev", "queue": "Q", "child": "Par"}


def _case_block(case: str, decls: str, value: Any) -> str:
    s = "_" + case
    return (decls.replace("{S}", s) + textwrap.dedent(f"""

        VALUE{s} = {value!r}

        def _register{s}(rt):
            @rt.register_activity_typed("Make{s}")
            def make(ctx, key: str) -> Rec{s}:
                return codec.converter.structure(VALUE{s}, Rec{s})

            @rt.register_orchestration_typed("In{s}")
            def by_input(ctx, r: Rec{s}):
                yield ctx.wait_for_event("go")
                return r

            @rt.register_orchestration_typed("Res{s}")
            def by_result(ctx, key: str):
                r = yield ctx.schedule_activity_typed("Make{s}", key, result_type=Rec{s})
                yield ctx.wait_for_event("go")
                return r

            @rt.register_orchestration_typed("Ev{s}")
            def by_event(ctx, key: str):
                r = yield ctx.wait_for_event_typed("data", result_type=Rec{s})
                yield ctx.wait_for_event("go")
                return r

            @rt.register_orchestration_typed("Q{s}")
            def by_queue(ctx, key: str):
                r = yield ctx.dequeue_event_typed("data", result_type=Rec{s})
                yield ctx.wait_for_event("go")
                return r

            # the child hands back the stored value as it is (its own output never changes)
            rt.register_orchestration("Kid{s}", lambda ctx, key: VALUE{s})

            @rt.register_orchestration_typed("Par{s}")
            def by_child(ctx, key: str):
                r = yield ctx.schedule_sub_orchestration_typed("Kid{s}", key, result_type=Rec{s})
                yield ctx.wait_for_event("go")
                return r
        """))


def _matrix_source(version: int) -> str:
    blocks = []
    for case, v1, v2, value, _ in _CASES:
        blocks.append(_case_block(case, v1 if version == 1 else v2, value))
    calls = "".join(f"    _register_{case}(rt)\n" for case, *_ in _CASES)
    return "\n\n".join(blocks) + "\n\ndef register(rt):\n" + calls


def _instance(case: str, channel: str) -> str:
    return f"{channel}-{case}"


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Record every case under v1 (all instances parked on ``go`` with the typed value in their
    history), snapshot the database for CI, then continue every instance under v2."""
    root = tmp_path_factory.mktemp("evolution-matrix")
    reg1, _ = _write_app(root / "v1", "app_v1", _matrix_source(1))
    reg2, v2_path = _write_app(root / "v2", "app_v2", _matrix_source(2))
    db = root / "prod.db"
    instances = [(_instance(c, ch), c, ch) for c, *_ in _CASES for ch in _CHANNELS]

    def record(client: Client) -> None:
        for inst, case, channel in instances:
            value = next(v for c, _, _, v, _ in _CASES if c == case)
            client.start_orchestration_typed(inst, f"{_ORCHESTRATION[channel]}_{case}", value if channel == "input" else "k")
        for inst, case, channel in instances:
            value = next(v for c, _, _, v, _ in _CASES if c == case)
            if channel == "event":
                _wait_until(lambda i=inst: _waiting_on(client, i, "data"), f"{inst} to wait for its data")
                client.raise_event(inst, "data", value)  # an old client sends the v1 shape
            elif channel == "queue":
                client.enqueue_event(inst, "data", value)
        for inst, _, _ in instances:
            _wait_until(lambda i=inst: _waiting_on(client, i, "go"), f"{inst} to park on 'go' under v1")
            st = client.get_status(inst)
            assert st.status == "Running", (inst, st)

    _production(db, reg1, record)
    ci_copy = _snapshot(db, root / "ci-copy.db")

    def continue_under_v2(client: Client) -> dict[str, Any]:
        for inst, _, _ in instances:
            client.raise_event(inst, "go", None)
        return {inst: client.wait_for_orchestration(inst, int(_WAIT_S * 1000)) for inst, _, _ in instances}

    results = _production(db, reg2, continue_under_v2)
    events = {}
    provider = SqliteProvider.open(str(db))
    try:
        c = Client(provider)
        events = {inst: [e["kind"] for e in c.read_execution_history(inst, 1)] for inst, _, _ in instances}
    finally:
        provider.close()
    return {"results": results, "events": events, "ci_copy": ci_copy, "reg2": reg2, "v2_path": v2_path,
            "divergences": _replay(ci_copy, reg2)}


_WHERE = {
    "input": "input of orchestration 'In_{case}'",
    "result": "result of activity 'Make_{case}'",
    "event": "result of wait for event 'data'",
    "queue": "result of dequeue from 'data'",
    "child": "result of sub-orchestration 'Kid_{case}'",
}


@pytest.mark.parametrize("channel", _CHANNELS)
@pytest.mark.parametrize("case", [c for c, *_ in _CASES])
def test_recorded_typed_value_meets_the_changed_class_when_the_instance_continues(matrix, case, channel):
    """Continuing an in-flight instance under v2: a compatible change (a defaulted field, a
    removed field, an Optional, a widening int -> float, list -> tuple, an enum member renamed
    with its value kept, a dataclass swapped for an attrs class) keeps working; an incompatible
    one fails the instance once, at the yield (or at the input), with a SerializationError that
    names the class, the place and the field - never a crash, hang or poison loop."""
    inst = _instance(case, channel)
    st = matrix["results"][inst]
    kind, expected = next(e for c, *_, e in _CASES if c == case)
    s = "_" + case
    if kind == "Completed":
        assert (st.status, st.error) == ("Completed", None), st.error
        assert st.output == expected
        if case == "int_to_float":
            assert type(st.output["qty"]) is float
    else:
        assert st.status == "Failed", (st.status, st.output)
        assert "SerializationError" in st.error, st.error
        assert _WHERE[channel].format(case=case) in st.error, st.error
        for part in expected:
            assert part.replace("{S}", s) in st.error, st.error
        # failed once, by the code, in the turn that met the value: no poison, no retry loop
        assert matrix["events"][inst].count("OrchestrationFailed") == 1, matrix["events"][inst]
        assert "poison" not in st.error and "infrastructure" not in st.error


@pytest.mark.parametrize("channel", _CHANNELS)
@pytest.mark.parametrize("case", [c for c, *_ in _CASES])
def test_ci_replay_of_the_in_flight_history_judges_the_change_like_the_runtime(matrix, case, channel):
    """``replay_source`` over the production copy, against v2 (what CI runs before the
    deploy): a change the runtime accepts is clean; one that will fail the instance is
    reported for it, with the class and the field in the message."""
    inst = _instance(case, channel)
    kind, expected = next(e for c, *_, e in _CASES if c == case)
    found = matrix["divergences"].get(inst, [])
    if kind == "Completed":
        assert found == []
    else:
        assert len(found) == 1, found
        assert "in-flight" in found[0] and "SerializationError" in found[0], found[0]
        for part in expected:
            assert part.replace("{S}", "_" + case) in found[0], found[0]


def test_cli_replay_exit_code_and_report_cover_every_incompatible_in_flight_instance(matrix, capsys):
    """``duroxide-sim replay copy.db --app v2.py:register``: exit 1, one row per instance that
    the v2 classes break, none for the compatible cases (all in flight: ``--latest`` agrees)."""
    failing = {_instance(c, ch) for c, *_, (kind, _) in _CASES if kind == "Failed" for ch in _CHANNELS}
    for extra in ((), ("--latest",)):
        rc, rows = _cli_replay(capsys, matrix["ci_copy"], matrix["v2_path"], *extra)
        assert rc == 1
        assert {r["instance"] for r in rows} == failing
        assert all(r["in_flight"] for r in rows)


# --------------------------------------------------------------------------------------------
# 2. activity inputs are compared as JSON text (SPEC §3.5): a record whose JSON changes
# --------------------------------------------------------------------------------------------

_RESERVE_APP = '''
{decls}

def register(rt):
    @rt.register_activity_typed("Reserve")
    def reserve(ctx, o: Order) -> int:
        return 1

    @rt.register_orchestration_typed("O")
    def orch(ctx, o: Order):
        n = yield ctx.schedule_activity_typed("Reserve", o, result_type=int)
        yield ctx.wait_for_event("go")
        return n
'''

_INPUT_CHANGES = [
    # (id, v1 class, v2 class, recorded input, input the v2 code sends)
    ("defaulted_field_added",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n    gift: bool = False\n",
     '{"order_id": "A", "qty": 3}', '{"order_id": "A", "qty": 3, "gift": false}'),
    ("optional_field_added",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n    note: typing.Optional[str] = None\n",
     '{"order_id": "A", "qty": 3}', '{"order_id": "A", "qty": 3, "note": null}'),
    ("int_widened_to_float",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: float\n",
     '{"order_id": "A", "qty": 3}', '{"order_id": "A", "qty": 3.0}'),
    ("field_removed",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n    note: str = ''\n",
     "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n",
     '{"order_id": "A", "qty": 3, "note": ""}', '{"order_id": "A", "qty": 3}'),
]


def _record_reserve(tmp_path: pathlib.Path, v1_decls: str, value: Any) -> pathlib.Path:
    reg1, _ = _write_app(tmp_path / "v1", "reserve_v1", _RESERVE_APP.format(decls=v1_decls))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("in-flight", "O", value)
        _wait_until(lambda: _waiting_on(client, "in-flight", "go"), "the instance to park on 'go'")

    _production(db, reg1, record)
    return db


def _continue(db: pathlib.Path, register: Callable[[Any], None], instance: str = "in-flight") -> Any:
    def body(client: Client) -> Any:
        client.raise_event(instance, "go", None)
        return client.wait_for_orchestration(instance, int(_WAIT_S * 1000))

    return _production(db, register, body)


@pytest.mark.parametrize("change", _INPUT_CHANGES, ids=[c[0] for c in _INPUT_CHANGES])
def test_record_passed_as_activity_input_whose_json_changes_is_nondeterminism_showing_both_inputs(tmp_path, change):
    """SPEC §3.5 (and duroxide-python 0.2.2, checked): the replayed ``CallActivity`` carries the
    v2 JSON of the record, which is not the recorded input text, so the in-flight instance fails
    as nondeterministic - even for a change the typed codec itself calls compatible (a defaulted
    field, an int widening to float). The report must show both inputs, so the user can see
    which key moved."""
    _, v1, v2, recorded, now = change
    db = _record_reserve(tmp_path, v1, json.loads(recorded))
    ci_copy = _snapshot(db, tmp_path / "ci.db")
    reg2, _ = _write_app(tmp_path / "v2", "reserve_v2", _RESERVE_APP.format(decls=v2))
    st = _continue(db, reg2)
    assert st.status == "Failed"
    assert st.error.startswith("nondeterministic: schedule mismatch"), st.error
    assert "Reserve" in st.error and repr(recorded) in st.error and repr(now) in st.error, st.error
    found = _replay(ci_copy, reg2)
    assert list(found) == ["in-flight"] and repr(recorded) in found["in-flight"][0] and repr(now) in found["in-flight"][0]


def test_dataclass_swapped_for_attrs_class_keeps_activity_input_json_and_replays(tmp_path):
    """Same fields, same order: the JSON is byte-identical, so the swap is invisible to replay."""
    v1 = "@dataclasses.dataclass\nclass Order:\n    order_id: str\n    qty: int\n"
    v2 = "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n"
    db = _record_reserve(tmp_path, v1, {"order_id": "A", "qty": 3})
    reg2, _ = _write_app(tmp_path / "v2", "reserve_v2", _RESERVE_APP.format(decls=v2))
    assert _replay(_snapshot(db, tmp_path / "ci.db"), reg2) == {}
    st = _continue(db, reg2)
    assert (st.status, st.output) == ("Completed", 1), st.error


_BIG_ORDER_V1 = """
@attrs.define
class Line:
    sku: str
    qty: int

@attrs.define
class Order:
    order_id: str
    customer: str
    lines: list[Line]
"""
_BIG_ORDER_V2 = _BIG_ORDER_V1 + "    gift_wrap: bool = False\n"
_BIG_ORDER = {"order_id": "ORD-2026-000123", "customer": "customer-0042@example.com",
              "lines": [{"sku": f"SKU-{i:04d}", "qty": i + 1} for i in range(4)]}


def test_nondeterminism_report_for_a_realistic_record_input_shows_what_differs(tmp_path):
    """DEFECT probe. A realistic order (a customer, four lines: ~190 characters of JSON) gains
    ``gift_wrap: bool = False``. The failure must let the user see the change: the new key, or
    at least two visibly different inputs (duroxide-python prints both inputs in full). The
    runtime cuts both inputs at 120 characters, before the key that differs, so the error and
    the CI report show two identical texts."""
    db = _record_reserve(tmp_path, _BIG_ORDER_V1, _BIG_ORDER)
    ci_copy = _snapshot(db, tmp_path / "ci.db")
    reg2, _ = _write_app(tmp_path / "v2", "reserve_v2", _RESERVE_APP.format(decls=_BIG_ORDER_V2))
    st = _continue(db, reg2)
    assert st.status == "Failed" and st.error.startswith("nondeterministic: schedule mismatch"), st.error
    assert "gift_wrap" in st.error, f"the error does not show what differs:\n{st.error}"
    found = _replay(ci_copy, reg2)
    assert "gift_wrap" in found["in-flight"][0], f"the CI report does not show what differs:\n{found['in-flight'][0]}"


_KV_APP = '''
{decls}

def register(rt):
    @rt.register_orchestration_typed("O")
    def orch(ctx, o: Order):
        ctx.set_kv_value("order", o)
        yield ctx.wait_for_event("go")
        return o.order_id
'''


def test_kv_set_of_a_record_whose_json_changes_is_reported_with_what_differs(tmp_path):
    """SPEC §3.4: a replayed KV set must match the recorded key and value, so a record stored
    with ``set_kv_value`` whose class gained a defaulted field makes the in-flight instance
    nondeterministic (``kv set mismatch``). DEFECT probe: the report must show what differs;
    both values are cut at 120 characters and read the same."""
    reg1, _ = _write_app(tmp_path / "v1", "kv_v1", _KV_APP.format(decls=_BIG_ORDER_V1))
    reg2, _ = _write_app(tmp_path / "v2", "kv_v2", _KV_APP.format(decls=_BIG_ORDER_V2))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("in-flight", "O", _BIG_ORDER)
        _wait_until(lambda: _waiting_on(client, "in-flight", "go"), "the instance to park on 'go'")

    _production(db, reg1, record)
    ci_copy = _snapshot(db, tmp_path / "ci.db")
    st = _continue(db, reg2)
    assert st.status == "Failed" and st.error.startswith("nondeterministic: kv set mismatch"), st.error
    assert "gift_wrap" in st.error, f"the error does not show what differs:\n{st.error}"
    found = _replay(ci_copy, reg2)
    assert "gift_wrap" in found["in-flight"][0], f"the CI report does not show what differs:\n{found['in-flight'][0]}"


def test_custom_status_record_whose_json_changes_still_replays(tmp_path):
    """SPEC §3.4: a replayed custom status update matches by kind, its value is ignored - a
    record set as custom status may change shape between deployments."""
    app = '''
{decls}

def register(rt):
    @rt.register_orchestration_typed("O")
    def orch(ctx, o: Order):
        ctx.set_custom_status(o)
        yield ctx.wait_for_event("go")
        return o.order_id
'''
    reg1, _ = _write_app(tmp_path / "v1", "cs_v1", app.format(decls=_BIG_ORDER_V1))
    reg2, _ = _write_app(tmp_path / "v2", "cs_v2", app.format(decls=_BIG_ORDER_V2))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("in-flight", "O", _BIG_ORDER)
        _wait_until(lambda: _waiting_on(client, "in-flight", "go"), "the instance to park on 'go'")

    _production(db, reg1, record)
    assert _replay(_snapshot(db, tmp_path / "ci.db"), reg2) == {}
    st = _continue(db, reg2)
    assert (st.status, st.output) == ("Completed", "ORD-2026-000123"), st.error
    assert json.loads(st.custom_status) == _BIG_ORDER  # as recorded by v1 (no new update since)


# --------------------------------------------------------------------------------------------
# 3. what a user can do about it: versioning, or keeping the JSON stable
# --------------------------------------------------------------------------------------------


def test_versioning_keeps_in_flight_instances_on_the_old_class_and_replay_agrees(tmp_path, capsys):
    """SPEC §12 / README "versioned orchestrations": v2 registers the old code as 1.0.0 *with a
    copy of the old class* and the new code as 1.1.0. The in-flight instance finishes on 1.0.0,
    a new start runs 1.1.0 with the new field, ``replay`` is clean, and ``replay --latest``
    names the in-flight instance the new code alone would break."""
    v1 = _RESERVE_APP.format(decls="@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n")
    v2 = '''
@attrs.define
class OrderV1:
    order_id: str
    qty: int

@attrs.define
class Order:
    order_id: str
    qty: int
    gift: bool = False

def register(rt):
    @rt.register_activity_typed("Reserve")
    def reserve(ctx, o: Order) -> int:
        return o.qty + (100 if o.gift else 0)

    @rt.register_orchestration_typed("O")
    def orch_1_0(ctx, o: OrderV1):
        n = yield ctx.schedule_activity_typed("Reserve", o, result_type=int)
        yield ctx.wait_for_event("go")
        return n

    @rt.register_orchestration_versioned_typed("O", "1.1.0")
    def orch_1_1(ctx, o: Order):
        n = yield ctx.schedule_activity_typed("Reserve", o, result_type=int)
        yield ctx.wait_for_event("go")
        return [n, o.gift]
'''
    reg1, _ = _write_app(tmp_path / "v1", "ver_v1", v1)
    reg2, v2_path = _write_app(tmp_path / "v2", "ver_v2", v2)
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("old", "O", {"order_id": "A", "qty": 3})
        _wait_until(lambda: _waiting_on(client, "old", "go"), "the instance to park on 'go'")

    _production(db, reg1, record)
    ci_copy = _snapshot(db, tmp_path / "ci.db")
    rc, rows = _cli_replay(capsys, ci_copy, v2_path)
    assert (rc, rows) == (0, [])
    rc, rows = _cli_replay(capsys, ci_copy, v2_path, "--latest")
    assert rc == 1 and [r["instance"] for r in rows] == ["old"] and "gift" in rows[0]["message"]

    def body(client: Client) -> dict[str, Any]:
        client.start_orchestration_typed("new", "O", {"order_id": "B", "qty": 4, "gift": True})
        _wait_until(lambda: _waiting_on(client, "new", "go"), "the new instance to park on 'go'")
        client.raise_event("old", "go", None)
        client.raise_event("new", "go", None)
        out = {}
        for inst in ("old", "new"):
            st = client.wait_for_orchestration(inst, int(_WAIT_S * 1000))
            out[inst] = (st.status, st.output, client.get_instance_info(inst).orchestration_version)
        return out

    assert _production(db, reg2, body) == {"old": ("Completed", 1, "1.0.0"), "new": ("Completed", [104, True], "1.1.0")}
    assert _cli_replay(capsys, _snapshot(db, tmp_path / "ci2.db"), v2_path) == (0, [])


def test_unstructure_hook_omitting_the_default_keeps_activity_input_json_stable(tmp_path):
    """The other way out (the converter is documented as open to hooks): unstructure the new
    field only when it differs from its default. Old records keep their old JSON, so in-flight
    histories replay; a record that uses the field sends it."""
    v2 = _RESERVE_APP.format(decls='''
@attrs.define
class Order:
    order_id: str
    qty: int
    gift: bool = False

from cattrs.gen import make_dict_unstructure_fn, override
codec.converter.register_unstructure_hook(
    Order, make_dict_unstructure_fn(Order, codec.converter, gift=override(omit_if_default=True)))
''')
    db = _record_reserve(tmp_path, "@attrs.define\nclass Order:\n    order_id: str\n    qty: int\n", {"order_id": "A", "qty": 3})
    reg2, _ = _write_app(tmp_path / "v2", "hook_v2", v2)
    assert _replay(_snapshot(db, tmp_path / "ci.db"), reg2) == {}
    st = _continue(db, reg2)
    assert (st.status, st.output) == ("Completed", 1), st.error


# --------------------------------------------------------------------------------------------
# 4. fan-out results: all_typed over a changed result class
# --------------------------------------------------------------------------------------------

_FANOUT_APP = '''
@attrs.define
class Quote:
    sku: str
    cents: int
{extra}

def register(rt):
    @rt.register_activity_typed("Quote")
    def quote(ctx, sku: str) -> Quote:
        return codec.converter.structure({{"sku": sku, "cents": 100, "currency": "EUR"}}, Quote)

    @rt.register_orchestration_typed("O")
    def orch(ctx, skus: list[str]):
        quotes = yield ctx.all_typed([ctx.schedule_activity_typed("Quote", s, result_type=Quote) for s in skus])
        yield ctx.wait_for_event("go")
        return sum(q.cents for q in quotes)
'''


@pytest.mark.parametrize("extra, ok", [("    currency: str = 'EUR'\n", True), ("    currency: str\n", False)],
                         ids=["defaulted_field", "required_field"])
def test_all_typed_fan_out_over_a_changed_result_class(tmp_path, extra, ok):
    """A fan-out recorded under v1 (two Quote results in history) replays under a v2 Quote.
    With a defaulted field it keeps working. With a required field the results no longer
    structure: a single typed yield and ``race_typed`` raise the SerializationError at the yield
    (README: a result that does not fit fails at the yield, naming the fields); ``all_typed``
    must do the same. DEFECT probe: it hands the code ``{"err": "..."}`` dicts in place of the
    records, and the instance fails later with ``AttributeError: 'dict' object has no attribute
    'cents'`` - naming neither the class nor the field."""
    reg1, _ = _write_app(tmp_path / "v1", "fan_v1", _FANOUT_APP.format(extra=""))
    reg2, _ = _write_app(tmp_path / "v2", "fan_v2", _FANOUT_APP.format(extra=extra))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("in-flight", "O", ["a", "b"])
        _wait_until(lambda: _waiting_on(client, "in-flight", "go"), "the fan-out to finish and park on 'go'")

    _production(db, reg1, record)
    st = _continue(db, reg2)
    if ok:
        assert (st.status, st.output) == ("Completed", 200), st.error
        return
    assert st.status == "Failed"
    assert "SerializationError" in st.error and "Quote" in st.error and "$.currency" in st.error, st.error
    assert "'dict' object has no attribute" not in st.error, st.error


# --------------------------------------------------------------------------------------------
# 5. work in flight across the deploy: a completion or an activity input in the old shape
# --------------------------------------------------------------------------------------------

_QUOTE_APP = '''
@attrs.define
class Quote:
    sku: str
    cents: int
{extra}

def register(rt):
    @rt.register_activity_typed("Quote")
    def quote(ctx, sku: str) -> Quote:
        return codec.converter.structure({{"sku": sku, "cents": 999, "currency": "USD"}}, Quote)

    @rt.register_orchestration_typed("O")
    def orch(ctx, sku: str):
        q = yield ctx.schedule_activity_typed("Quote", sku, result_type=Quote)  # YIELD
        return q
'''


@pytest.mark.parametrize("extra, ok", [("    currency: str = 'EUR'\n", True), ("    currency: str\n", False)],
                         ids=["defaulted_field", "required_field"])
def test_activity_completion_recorded_in_the_old_shape_while_in_flight(tmp_path, extra, ok):
    """The activity ran under v1 (its completion queued, not yet applied to the history) when
    v2 was deployed: the orchestration applies the old-shape result with the v2 class. A default
    fills in; a required field fails the instance once, at the yield, naming class and field."""
    reg1, _ = _write_app(tmp_path / "v1", "q_v1", _QUOTE_APP.format(extra=""))
    reg2, _ = _write_app(tmp_path / "v2", "q_v2", _QUOTE_APP.format(extra=extra))
    db = tmp_path / "prod.db"

    def schedule(client: Client) -> None:  # orchestrator only: the activity is scheduled
        client.start_orchestration_typed("in-flight", "O", "SKU-1")
        _wait_until(lambda: "ActivityScheduled" in [e["kind"] for e in _history(client, "in-flight")], "the schedule")

    def work(client: Client) -> None:  # worker only: the v1 activity completes
        _wait_until(lambda: client.get_queue_depths().orchestrator_queue == 1 and client.get_queue_depths().worker_queue == 0,
                    "the v1 completion to be queued")

    _production(db, reg1, schedule, worker_concurrency=0)
    _production(db, reg1, work, orchestration_concurrency=0)
    assert "ActivityCompleted" not in [e["kind"] for e in _history_of(db, "in-flight")]

    st = _production(db, reg2, lambda client: client.wait_for_orchestration("in-flight", int(_WAIT_S * 1000)))
    kinds = [e["kind"] for e in _history_of(db, "in-flight")]
    if ok:
        assert (st.status, st.output) == ("Completed", {"sku": "SKU-1", "cents": 999, "currency": "EUR"}), st.error
    else:
        assert st.status == "Failed"
        assert "SerializationError: result of activity 'Quote' does not match type Quote: required field missing @ $.currency" in st.error, st.error
        assert "# YIELD" in st.error or "schedule_activity_typed" in st.error  # the traceback shows the yield
    assert kinds.count("ActivityCompleted") == 1 and kinds.count("ActivityScheduled") == 1, kinds


def _history_of(db: pathlib.Path, instance: str) -> list[Any]:
    provider = SqliteProvider.open(str(db))
    try:
        return _history(Client(provider), instance)
    finally:
        provider.close()


def test_activity_input_queued_in_the_old_shape_meets_a_stricter_activity_class(tmp_path):
    """The activity was scheduled under v1 (its input JSON lacks ``carrier``) and runs under v2,
    whose input class requires it: the activity fails once with a readable error naming the
    activity, the class and the field; the orchestration sees it as an activity failure (no
    poison, no redelivery loop)."""
    app = '''
@attrs.define
class Parcel:
    parcel_id: str
{extra}

def register(rt):
    @rt.register_activity_typed("Ship")
    def ship(ctx, p: Parcel) -> str:
        return "shipped " + p.parcel_id

    @rt.register_orchestration("O")  # forwards the payload as it came (untyped)
    def orch(ctx, p):
        return (yield ctx.schedule_activity_typed("Ship", p, result_type=str))
'''
    reg1, _ = _write_app(tmp_path / "v1", "ship_v1", app.format(extra=""))
    reg2, _ = _write_app(tmp_path / "v2", "ship_v2", app.format(extra="    carrier: str\n"))
    db = tmp_path / "prod.db"

    def schedule(client: Client) -> None:
        client.start_orchestration_typed("in-flight", "O", {"parcel_id": "P-1"})
        _wait_until(lambda: client.get_queue_depths().worker_queue == 1, "the activity to be queued")

    _production(db, reg1, schedule, worker_concurrency=0)
    st = _production(db, reg2, lambda client: client.wait_for_orchestration("in-flight", int(_WAIT_S * 1000)))
    assert st.status == "Failed"
    assert ("Activity 'Ship' call failed: SerializationError: input of activity 'Ship' does not match type Parcel: "
            "required field missing @ $.carrier") in st.error, st.error
    kinds = [e["kind"] for e in _history_of(db, "in-flight")]
    assert kinds.count("ActivityFailed") == 1 and kinds.count("ActivityScheduled") == 1, kinds


# --------------------------------------------------------------------------------------------
# 6. finished histories, continue-as-new, and the client reading old outputs
# --------------------------------------------------------------------------------------------

_RECEIPT_APP = '''
@attrs.define
class Receipt:
    order_id: str
    total: int
{extra}

def register(rt):
    @rt.register_activity_typed("Bill")
    def bill(ctx, order_id: str) -> Receipt:
        return codec.converter.structure({{"order_id": order_id, "total": 42}}, Receipt)

    @rt.register_orchestration_typed("O")
    def orch(ctx, order_id: str):
        r = yield ctx.schedule_activity_typed("Bill", order_id, result_type=Receipt)
        yield ctx.wait_for_event("go")
        return r
'''


def test_ci_replay_after_a_defaulted_output_field_flags_finished_histories_only(tmp_path, capsys):
    """README ``replay``: a changed output of a finished history is a divergence reported at the
    ``return``; ``--latest`` judges only in-flight instances (testing/replay.py). Adding a
    defaulted field to the output record changes the finished instance's output JSON (flagged,
    with both outputs in full), leaves the in-flight one clean, and the in-flight one then
    completes under v2. The client reads the old output with the v2 class (default filled in)."""
    reg1, _ = _write_app(tmp_path / "v1", "rc_v1", _RECEIPT_APP.format(extra=""))
    reg2, v2_path = _write_app(tmp_path / "v2", "rc_v2", _RECEIPT_APP.format(extra="    currency: str = 'EUR'\n"))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        for inst in ("done", "in-flight"):
            client.start_orchestration_typed(inst, "O", inst)
            _wait_until(lambda i=inst: _waiting_on(client, i, "go"), f"{inst} to park on 'go'")
        client.raise_event("done", "go", None)
        assert client.wait_for_orchestration("done", int(_WAIT_S * 1000)).status == "Completed"

    _production(db, reg1, record)
    ci_copy = _snapshot(db, tmp_path / "ci.db")
    rc, rows = _cli_replay(capsys, ci_copy, v2_path)
    assert rc == 1 and [(r["instance"], r["in_flight"]) for r in rows] == [("done", False)], rows
    assert '{"order_id": "done", "total": 42}' in rows[0]["message"]
    assert '{"order_id": "done", "total": 42, "currency": "EUR"}' in rows[0]["message"]
    assert _cli_replay(capsys, ci_copy, v2_path, "--latest") == (0, [])

    receipt_v2 = load_app(f"{v2_path}:Receipt")

    def body(client: Client) -> Any:
        client.raise_event("in-flight", "go", None)
        st = client.wait_for_orchestration("in-flight", int(_WAIT_S * 1000))
        old = client.wait_for_orchestration_typed("done", 1_000, result_type=receipt_v2)
        return st, old

    st, old = _production(db, reg2, body)
    assert (st.status, st.output) == ("Completed", {"order_id": "in-flight", "total": 42, "currency": "EUR"}), st.error
    assert old == receipt_v2("done", 42, "EUR")


def test_client_reading_an_old_output_with_a_stricter_class_names_the_field(tmp_path):
    """``wait_for_orchestration_typed`` on an output written by v1, read with a v2 class that
    requires a new field: a SerializationError naming the instance, the class and the field."""
    from duroxide_sim import SerializationError

    reg1, _ = _write_app(tmp_path / "v1", "rd_v1", _RECEIPT_APP.format(extra=""))
    v2_path = tmp_path / "v2" / "rd_v2.py"
    _write_app(tmp_path / "v2", "rd_v2", _RECEIPT_APP.format(extra="    currency: str\n"))
    receipt_v2 = load_app(f"{v2_path}:Receipt")
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("done", "O", "done")
        _wait_until(lambda: _waiting_on(client, "done", "go"), "the instance to park on 'go'")
        client.raise_event("done", "go", None)
        assert client.wait_for_orchestration("done", int(_WAIT_S * 1000)).status == "Completed"
        with pytest.raises(SerializationError) as info:
            client.wait_for_orchestration_typed("done", 1_000, result_type=receipt_v2)
        return str(info.value)

    message = _production(db, reg1, record)
    assert "'done'" in message and "Receipt" in message and "$.currency" in message, message


def test_continue_as_new_state_gaining_a_defaulted_field_carries_on(tmp_path):
    """An eternal orchestration carries a typed state through continue-as-new; v2 adds a
    defaulted field. The running execution (its input written by v1's continue-as-new) reads
    it with the default and carries on; replaying only the in-flight execution is clean."""
    app = '''
@attrs.define
class State:
    count: int
{extra}

def register(rt):
    @rt.register_orchestration_typed("Counter")
    def counter(ctx, s: State):
        yield ctx.wait_for_event("tick")
        if s.count >= 2:
            return s
        return (yield ctx.continue_as_new_typed(attrs.evolve(s, count=s.count + 1)))
'''
    reg1, _ = _write_app(tmp_path / "v1", "can_v1", app.format(extra=""))
    reg2, _ = _write_app(tmp_path / "v2", "can_v2", app.format(extra="    label: str = 'none'\n"))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("counter", "Counter", {"count": 0})
        _wait_until(lambda: _waiting_on(client, "counter", "tick", 1), "execution 1 to wait")
        client.raise_event("counter", "tick", None)
        _wait_until(lambda: _waiting_on(client, "counter", "tick", 2), "execution 2 to wait")
        client.raise_event("counter", "tick", None)
        _wait_until(lambda: _waiting_on(client, "counter", "tick", 3), "execution 3 to wait")

    _production(db, reg1, record)
    assert _replay(_snapshot(db, tmp_path / "ci.db"), reg2, latest=True) == {}

    def body(client: Client) -> Any:
        client.raise_event("counter", "tick", None)
        return client.wait_for_orchestration("counter", int(_WAIT_S * 1000))

    st = _production(db, reg2, body)
    assert (st.status, st.output) == ("Completed", {"count": 2, "label": "none"}), st.error


def test_check_type_round_trips_passes_for_v2_types_that_cannot_read_v1_history(tmp_path):
    """README: ``check_type_round_trips(setup)`` round-trips every attrs type the handlers use.
    It checks v2 values against v2 classes only, so it passes for a change that breaks every
    in-flight instance; the guard for evolution is ``replay`` over recorded histories."""
    from duroxide_sim.testing import check_type_round_trips

    reg1, _ = _write_app(tmp_path / "v1", "rt_v1", _RECEIPT_APP.format(extra=""))
    reg2, _ = _write_app(tmp_path / "v2", "rt_v2", _RECEIPT_APP.format(extra="    currency: str\n"))
    db = tmp_path / "prod.db"

    def record(client: Client) -> None:
        client.start_orchestration_typed("in-flight", "O", "A-1")
        _wait_until(lambda: _waiting_on(client, "in-flight", "go"), "the instance to park on 'go'")

    _production(db, reg1, record)
    assert [t.__name__ for t in check_type_round_trips(reg2, max_examples=5)] == ["Receipt"]
    found = _replay(_snapshot(db, tmp_path / "ci.db"), reg2)
    assert list(found) == ["in-flight"] and "required field missing @ $.currency" in found["in-flight"][0], found
