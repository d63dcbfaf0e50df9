"""Hostile data through history export/import/show/replay: every bad input gets a clear error
naming the problem (CLI: one ``duroxide-sim: ...`` line, exit 2) and no data is lost or altered."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, TagFilter
from duroxide_sim.cli import main as cli
from duroxide_sim.core.events import dumps
from duroxide_sim.errors import InvalidInputError, SerializationError
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.history_io import _safe_name, export_to_path, import_documents, load_documents
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import assert_replays, replay_source
from tests.fixtures.replay import app_v1

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "replay"
HISTORIES = FIXTURES / "histories_v1"
APP_V1 = str(FIXTURES / "app_v1.py") + ":register"
MARKUP = "</script><script>alert(1)</script><b>\"q\" 'x'\n😀"
LONG_ID = "L" * 16_384


def _register(rt: Runtime) -> None:
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_orchestration("Child")
    def child(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("Main")
    def main(ctx, x):
        ctx.set_custom_status(json.dumps(x)[:200])  # (the status and KV values have size limits)
        ctx.set_kv_value("k😀", json.dumps(x)[:200])  # (names may not hold NUL: PostgreSQL cannot store it)
        r = yield ctx.schedule_activity("Echo", x)
        c = yield ctx.schedule_sub_orchestration("Child", x)
        return [r, c]

    @rt.register_orchestration("Loop")
    def loop(ctx, n):
        if n < 2:
            yield ctx.schedule_activity("Echo", n)
            return (yield ctx.continue_as_new(n + 1))
        return n


def _db(path: pathlib.Path, starts: list[tuple[str, str, Any]]) -> SqliteProvider:
    clock = SimClock()
    provider = SqliteProvider.open(str(path), clock=clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    _register(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    for instance, name, value in starts:
        client.start_orchestration(instance, name, value)
    driver.run_until_quiet()
    return provider


def _histories(provider: SqliteProvider, instances: list[str]) -> dict[tuple[str, int], list[str]]:
    """Every execution's events as their canonical bytes."""
    out = {}
    for inst in instances:
        for e in range(1, (provider.latest_execution_id(inst) or 0) + 1):
            out[(inst, e)] = [dumps(ev) for ev in provider.read_with_execution(inst, e)]
    return out


def _one_line_error(capsys: pytest.CaptureFixture[str], *parts: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("duroxide-sim: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for part in parts:
        assert part in err, err
    return err


# --------------------------------------------------------------------------------------------
# Export -> import round trip
# --------------------------------------------------------------------------------------------


def test_round_trip_keeps_every_event_byte_for_byte_with_hostile_ids_and_payloads(tmp_path: pathlib.Path) -> None:
    """Ids that are HTML, emoji, 16 KiB long, named like the index file or like another
    instance's hashed file name; payloads with NUL, markup, deep nesting and several MiB; custom
    status, KV, sub-orchestrations and continue-as-new: the export holds them all and the
    import gives identical histories."""
    nested: Any = 0
    for _ in range(150):
        nested = [nested]
    hashed_twin = _safe_name(LONG_ID)[: -len(".json")]  # an id spelled like LONG_ID's file name
    starts = [
        (MARKUP, "Main", "pay\u0000load " + MARKUP),
        ("index", "Main", {"nul": "\u0000"}),
        (LONG_ID, "Main", "long"),
        (hashed_twin, "Main", "twin"),
        ("Case", "Main", 1),
        ("case", "Main", 2),
        ("big", "Main", "x" * (3 * 1024 * 1024)),
        ("nested", "Main", nested),
        ("loop", "Loop", 0),
    ]
    source = _db(tmp_path / "a.db", starts)
    instances = source.list_instances()
    assert len(instances) == 17  # 9 started + 8 sub-orchestrations
    assert {source.get_instance_info(i).status for i in instances} == {"Completed"}
    assert source.latest_execution_id("loop") == 3
    assert cli(["export", str(tmp_path / "a.db"), "--out", str(tmp_path / "out")]) == 0
    names = [p.name for p in (tmp_path / "out").iterdir()]
    assert len({n.casefold() for n in names}) == len(names) == len(instances) + 1  # + index.json
    docs = load_documents(tmp_path / "out")
    assert sorted(d["instance_id"] for d in docs) == sorted(instances)
    assert cli(["import", str(tmp_path / "out"), "--db", str(tmp_path / "b.db")]) == 0
    target = SqliteProvider.open(str(tmp_path / "b.db"), clock=SimClock())
    assert _histories(target, instances) == _histories(source, instances)


def test_export_to_an_unwritable_path_is_an_input_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    _db(tmp_path / "a.db", [("i", "Loop", 2)])
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "file").write_text("x")
    provider = SqliteProvider.open(str(tmp_path / "a.db"), clock=SimClock())
    with pytest.raises(InvalidInputError, match="cannot write the export to .*dir.json"):
        export_to_path(provider, tmp_path / "dir.json")
    for out in ("file", "file/sub", "dir.json"):
        assert cli(["export", str(tmp_path / "a.db"), "--out", str(tmp_path / out)]) == 2
        _one_line_error(capsys, "cannot write the export to", out)


# --------------------------------------------------------------------------------------------
# Corrupt export files
# --------------------------------------------------------------------------------------------


def _base() -> dict[str, Any]:
    return json.loads((HISTORIES / "inv-3.json").read_text(encoding="utf-8"))


def _edit(change) -> str:
    doc = _base()
    change(doc, doc["executions"][0]["events"])
    return json.dumps(doc)


def _set(key: str, value: Any, event: int | None = None):
    def change(doc, events):
        (doc if event is None else events[event])[key] = value
    return change


BAD_FILES = [
    ("version true", _edit(_set("version", True)), "format version must be a positive integer, got True"),
    ("version 0", _edit(_set("version", 0)), "format version must be a positive integer, got 0"),
    ("version string", _edit(_set("version", "1")), "format version must be a positive integer, got '1'"),
    ("version missing", _edit(lambda d, e: d.pop("version")), "format version must be a positive integer, got None"),
    ("timestamp string", _edit(_set("timestamp_ms", "soon", 1)), "event #1: field 'timestamp_ms' must be an integer"),
    ("timestamp float", _edit(_set("timestamp_ms", 1.5, 1)), "field 'timestamp_ms' must be an integer, got 1.5"),
    ("timestamp NaN", _edit(_set("timestamp_ms", float("nan"), 1)), "NaN is not a JSON number"),
    ("timestamp 2**70", _edit(_set("timestamp_ms", 2**70, 1)), "field 'timestamp_ms' is out of range"),
    ("event id string", _edit(_set("event_id", "two", 1)), "field 'event_id' must be an integer"),
    ("event id bool", _edit(_set("event_id", True, 1)), "field 'event_id' must be an integer, got true"),
    ("source id string", _edit(_set("source_event_id", "2", 2)), "field 'source_event_id' must be an integer"),
    ("name not a string", _edit(_set("name", 5, 1)), "field 'name' must be a string, got 5"),
    ("input an object", _edit(_set("input", {"a": 1}, 1)), "field 'input' must be a string"),
    ("duplicate event id", _edit(_set("event_id", 2, 2)), "event #2: event_id 2 does not follow 2"),
    ("event ids decrease", _edit(lambda d, e: e.insert(1, e.pop(3))), "event #2: event_id 2 does not follow 4"),
    ("no OrchestrationStarted", _edit(lambda d, e: e.pop(0)), "must begin with OrchestrationStarted, not ActivityScheduled"),
    ("event of another instance", _edit(_set("instance_id", "other", 1)), "belongs to instance 'other'"),
    ("event of another execution", _edit(_set("execution_id", 7, 1)), "belongs to instance 'inv-3' execution 7"),
    ("execution twice", _edit(lambda d, e: d["executions"].append(copy.deepcopy(d["executions"][0]))), "execution id 1 is repeated"),
    ("execution id 0", _edit(lambda d, e: d["executions"][0].update(execution_id=0)), "execution id 0 is not positive"),
    ("no executions", _edit(_set("executions", [])), "has no executions"),
    ("no events", _edit(lambda d, e: e.clear()), "execution 1 has no events"),
    ("empty instance id", _edit(_set("instance_id", "")), "instance_id must be a non-empty string"),
    ("NUL in instance id", _edit(_set("instance_id", "a\u0000b")), "instance_id must not contain NUL"),
    ("70 KB instance id", _edit(_set("instance_id", "x" * 70_000)), "instance_id is longer than 17408 bytes"),
    ("lone surrogate", _edit(lambda d, e: None).replace('"Billing::activity::charge"', '"\\udc00"', 1), "field 'name' is not valid Unicode"),
    ("carry not a list", _edit(_set("carry_forward_events", 5, 0)), "'carry_forward_events' must be a list of [name, data]"),
    ("carry pair of one", _edit(_set("carry_forward_events", [["a"]], 0)), "'carry_forward_events' must be a list"),
    ("carry of numbers", _edit(_set("carry_forward_events", [[1, 2]], 0)), "'carry_forward_events' must be a list"),
    ("nested 100000 deep", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
    # The top-level name / version must say what the events say (the import reads the events).
    ("name edited in one place", _edit(_set("orchestration_name", "Billing::orchestration::refund")),
     'orchestration_name is "Billing::orchestration::refund" but the last execution\'s OrchestrationStarted says'),
    ("version edited in one place", _edit(_set("orchestration_version", "9.9.9")),
     'orchestration_version is "9.9.9" but the last execution\'s OrchestrationStarted says'),
]


@pytest.mark.parametrize("content, message", [case[1:] for case in BAD_FILES], ids=[case[0] for case in BAD_FILES])
def test_corrupt_export_files_are_refused_with_the_problem_named(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    with pytest.raises(SerializationError) as info:
        load_documents(bad)
    assert message in str(info.value) and str(bad) in str(info.value)
    assert cli(["import", str(bad), "--db", str(tmp_path / "t.db")]) == 2
    _one_line_error(capsys, message)
    assert SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock()).latest_execution_id("inv-3") is None


def test_a_directory_where_a_document_should_be_is_an_input_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "x.json").mkdir()
    with pytest.raises(SerializationError, match="x.json: cannot read it"):
        load_documents(tmp_path / "in")
    assert cli(["show", str(tmp_path / "in")]) == 2
    _one_line_error(capsys, "x.json: cannot read it")


def test_an_instance_in_two_files_is_refused_before_anything_is_written(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "in").mkdir()
    for name in ("a.json", "b.json", "c.json"):
        (tmp_path / "in" / name).write_text((HISTORIES / ("inv-1.json" if name == "a.json" else "inv-2.json")).read_text())
    with pytest.raises(SerializationError, match="instance 'inv-2' appears twice"):
        load_documents(tmp_path / "in")
    assert cli(["import", str(tmp_path / "in"), "--db", str(tmp_path / "t.db")]) == 2
    _one_line_error(capsys, "c.json: instance 'inv-2' appears twice (also in", "b.json")
    assert SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock()).latest_execution_id("inv-1") is None


def test_index_json_must_match_the_documents(tmp_path: pathlib.Path) -> None:
    """A document lost from an export directory, or one left there by an earlier export, is
    reported instead of importing a different set of instances."""
    out = tmp_path / "out"
    out.mkdir()
    for f in HISTORIES.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    assert len(load_documents(out)) == 4
    (out / "stale.json").write_text(_edit(_set("instance_id", "stale")).replace('"inv-3"', '"stale"'))
    with pytest.raises(SerializationError, match="stale.json: not listed in .*index.json"):
        load_documents(out)
    (out / "stale.json").unlink()
    (out / "inv-2.json").unlink()
    with pytest.raises(SerializationError, match=r"lists inv-2.json \(instance 'inv-2'\) but that file is missing"):
        load_documents(out)
    (out / "inv-2.json").write_text((HISTORIES / "inv-1.json").read_text())
    with pytest.raises(SerializationError, match="inv-2.json: holds instance 'inv-1', but index.json says 'inv-2'"):
        load_documents(out)


def test_import_writes_nothing_when_one_instance_already_exists(tmp_path: pathlib.Path) -> None:
    target = SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock())
    docs = load_documents(HISTORIES)
    import_documents(target, [d for d in docs if d["instance_id"] == "inv-4"])
    with pytest.raises(InvalidInputError, match="'inv-4' already exists"):
        import_documents(target, docs)
    assert [target.latest_execution_id(i) for i in ("inv-1", "inv-2", "inv-3")] == [None, None, None]


def test_import_documents_validates_documents_it_did_not_load(tmp_path: pathlib.Path) -> None:
    target = SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock())
    doc = _base()
    doc["executions"][0]["events"][1]["instance_id"] = "someone-else"
    with pytest.raises(SerializationError, match="document #0: execution 1 event #1: event belongs to instance 'someone-else'"):
        import_documents(target, [doc])
    with pytest.raises(InvalidInputError, match="'inv-3' appears twice"):
        import_documents(target, [_base(), _base()])
    assert target.latest_execution_id("inv-3") is None


# --------------------------------------------------------------------------------------------
# Replay
# --------------------------------------------------------------------------------------------


def test_replay_of_nothing_is_an_input_error_not_a_pass(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    SqliteProvider.open(str(tmp_path / "empty.db"), clock=SimClock())
    for source in ("empty", "empty.db"):
        with pytest.raises(InvalidInputError, match="no recorded histories in .*nothing to replay"):
            replay_source(str(tmp_path / source), app_v1.register)
        with pytest.raises(InvalidInputError, match="no recorded histories"):
            assert_replays(str(tmp_path / source), app_v1.register)
        assert cli(["replay", str(tmp_path / source), "--app", APP_V1]) == 2
        _one_line_error(capsys, "no recorded histories in", source)


def test_replay_with_an_app_that_raises_is_an_input_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    app = tmp_path / "bad_app.py"
    app.write_text("def register(rt):\n    raise RuntimeError('boom in register')\n")
    assert cli(["replay", str(HISTORIES), "--app", f"{app}:register"]) == 2
    _one_line_error(capsys, "the app raised while registering its handlers: RuntimeError: boom in register", f"{app}:2")
    broken = tmp_path / "broken_module.py"
    broken.write_text("x = 1\nraise KeyError('at import')\n")
    assert cli(["replay", str(HISTORIES), "--app", f"{broken}:register"]) == 2
    _one_line_error(capsys, f"cannot import {broken}: KeyError: 'at import'", f"{broken}:2")
    syntax = tmp_path / "syntax_error.py"
    syntax.write_text("def f(:\n")
    assert cli(["replay", str(HISTORIES), "--app", f"{syntax}:f"]) == 2
    _one_line_error(capsys, f"cannot import {syntax}: SyntaxError")


def test_replay_of_a_directory_with_one_bad_file_names_it(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "good.json").write_text((HISTORIES / "inv-1.json").read_text())
    (tmp_path / "mixed" / "bad.json").write_text(_edit(_set("timestamp_ms", "later", 2)))
    assert cli(["replay", str(tmp_path / "mixed"), "--app", APP_V1]) == 2
    _one_line_error(capsys, "bad.json: execution 1 event #2: field 'timestamp_ms' must be an integer")


def test_show_of_an_empty_database_says_there_are_no_instances(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    SqliteProvider.open(str(tmp_path / "empty.db"), clock=SimClock()).close()
    assert cli(["show", str(tmp_path / "empty.db")]) == 2
    assert f"no instances in {tmp_path / 'empty.db'}" in capsys.readouterr().err  # was: "no instance None"


def test_show_of_a_trace_skips_records_that_are_not_objects_and_tolerates_missing_fields(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "run.jsonl"
    trace.write_text('{}\n{"step": 1, "t": 0, "op": "client", "instance": "a"}\n', encoding="utf-8")
    assert cli(["show", str(trace)]) == 0  # '{}' used to raise a TypeError formatting None
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "client" in out[1]


def test_show_prints_control_characters_of_an_id_escaped(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    _db(tmp_path / "a.db", [("evil\n\x1b[31mred", "Loop", 2)])
    assert cli(["show", str(tmp_path / "a.db")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and '"evil\\n\\u001b[31mred"' in out


def test_import_of_nothing_is_an_input_error(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert cli(["import", str(tmp_path / "empty"), "--db", str(tmp_path / "b.db")]) == 2
    assert "nothing to import" in capsys.readouterr().err
    assert not (tmp_path / "b.db").exists()


def test_client_refuses_an_id_with_a_lone_surrogate() -> None:
    client = Client(SqliteProvider.in_memory(clock=SimClock()), clock=SimClock())
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        client.start_orchestration("a\udc00", "Main", 1)


@pytest.mark.parametrize("kv_base, problem", [
    ({"k\udc00": ["v", 1]}, "kv_base key 'k\\udc00' is not valid Unicode"),
    ({"a\x00b": ["v", 1]}, "kv_base key 'a\\x00b' must not contain NUL characters"),
    ({"k" * 1025: ["v", 1]}, "is longer than 1024 bytes"),
    ({"k": ["\udc00", 1]}, "kv_base value for key 'k' is not valid Unicode"),
    ({"k": ["v" * 65_537, 1]}, "kv_base value for key 'k' is 65537 bytes, over the limit of 65536"),
    ({f"k{i}": ["v", 1] for i in range(151)}, "kv_base holds 151 keys, over the limit of 150"),
], ids=["surrogate-key", "nul-key", "long-key", "surrogate-value", "big-value", "too-many-keys"])
def test_kv_base_is_checked_like_what_a_turn_writes(tmp_path, kv_base, problem):
    """A document's ``kv_base`` (the stored KV store of an instance whose early executions were
    pruned) must be one a turn could have written (key rules, 1 KiB keys, 64 KiB values, 150
    keys): anything else is refused by name before the first write. The empty key, the longest
    key and value and the most keys are accepted."""
    doc = json.loads((HISTORIES / sorted(p.name for p in HISTORIES.glob("*.json") if p.name != "index.json")[0]).read_text())
    doc["kv_base"] = kv_base
    (tmp_path / "bad.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(SerializationError) as info:
        load_documents(tmp_path / "bad.json")
    assert problem in str(info.value) and "bad.json" in str(info.value), str(info.value)
    edge = {"": ["", 0], "é" * 512: ["v" * 65_536, 1], **{f"k{i}": ["v", 2] for i in range(148)}}
    doc["kv_base"] = edge
    (tmp_path / "edge.json").write_text(json.dumps(doc), encoding="utf-8")
    assert load_documents(tmp_path / "edge.json")[0]["kv_base"] == edge


def test_import_refuses_an_instance_whose_start_is_queued_in_the_target(tmp_path):
    """A client started ``a`` on the target and no runtime has run it yet: importing a document
    for ``a`` is refused by name (it would leave that start to be absorbed as a duplicate start
    of the imported instance), and nothing is written - the other documents included."""
    source = _db(tmp_path / "src.db", [("a", "Main", 1), ("b", "Main", 2)])
    export_to_path(source, tmp_path / "out")
    source.close()
    clock = SimClock()
    target = SqliteProvider.open(str(tmp_path / "t.db"), clock=clock)
    Client(target, clock=clock).start_orchestration("a", "Loop", 0)
    with pytest.raises(InvalidInputError, match="instance 'a' has a start queued in the target that has not run yet"):
        import_documents(target, load_documents(tmp_path / "out"))
    assert target.list_instances() == [] and [type(i).__name__ for i in target.queued_work()["a"]] == ["StartOrchestration"]
    target.close()


@pytest.mark.parametrize("field", ["event_id", "instance_id", "execution_id", "timestamp_ms"])
def test_an_event_without_its_envelope_fields_is_refused(tmp_path, field):
    """Every exported event carries its id, instance, execution and time; a document event
    without one is refused by name, not read with the record's default (execution 1, time 0)."""
    name = sorted(p.name for p in HISTORIES.glob("*.json") if p.name != "index.json")[0]
    doc = json.loads((HISTORIES / name).read_text())
    del doc["executions"][0]["events"][1][field]
    (tmp_path / "bad.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(SerializationError) as info:
        load_documents(tmp_path / "bad.json")
    text = str(info.value)
    assert "bad.json" in text and "execution 1 event #1: " in text and "missing" in text and f"'{field}'" in text, text


# --------------------------------------------------------------------------------------------
# Values the runtime would never have written
# --------------------------------------------------------------------------------------------

STATUS_LIMIT = 262_144  # (core.turn.LIMITS: what a turn may leave as its custom status)


def _append(kind: str, **fields: Any):
    """A change that adds a ``kind`` event after the last one of ``inv-3``'s only execution
    (which is still running: it ends with ExternalSubscribed)."""
    def change(doc, events):
        events.append({"kind": kind, "event_id": events[-1]["event_id"] + 1, "instance_id": doc["instance_id"],
                       "execution_id": 1, "timestamp_ms": events[-1]["timestamp_ms"], "duroxide_version": "0.1.0",
                       **fields})
    return change


def _both(*changes):
    def change(doc, events):
        for c in changes:
            c(doc, events)
    return change


def _queued(item: dict[str, Any]):
    def change(doc, events):
        doc["queued"] = [item]
    return change


def _status_row(status: str):
    def change(doc, events):
        doc["instance"].update(custom_status=status, custom_status_version=1)
    return change


def _versioned(version: str):
    return _both(_set("version", version, 0), _set("orchestration_version", version))


CHILD_START = {"kind": "StartOrchestration", "instance": "inv-3::sub::9", "orchestration": "Billing::orchestration::invoice",
               "input": "1", "parent_instance": "inv-3", "parent_id": 9, "parent_execution_id": 1, "execution_id": 1}

BAD_VALUES = [
    # custom status: the limit a turn is checked against (LIMITS["custom_status_bytes"])
    ("status row over the limit", _status_row("s" * (STATUS_LIMIT + 1)),
     f"instance custom_status is {STATUS_LIMIT + 1} bytes, over the limit of {STATUS_LIMIT} bytes"),
    ("status event over the limit", _append("CustomStatusUpdated", status="s" * (STATUS_LIMIT + 1)),
     f"execution 1 event #8: custom status is {STATUS_LIMIT + 1} bytes, over the limit of {STATUS_LIMIT} bytes "
     "(the runtime fails the turn that writes such a value, but no OrchestrationFailed follows it in this execution)"),
    ("status over the limit then reset", _both(_append("CustomStatusUpdated", status="é" * (STATUS_LIMIT // 2 + 1)),
                                               _append("CustomStatusUpdated")),
     f"execution 1 event #8: custom status is {STATUS_LIMIT + 2} bytes, over the limit"),
    ("initial status over the limit", _set("initial_custom_status", "s" * (STATUS_LIMIT + 1), 0),
     f"event #0: field 'initial_custom_status' is {STATUS_LIMIT + 1} bytes, over the custom status limit"),
    # orchestration versions: semver, as the registry and the client parse them
    ("version 1.0", _versioned("1.0"), "event #0: field 'version' must be a semver orchestration version 'major.minor.patch'"),
    ("version 1.0.0.0", _versioned("1.0.0.0"), "event #0: field 'version' must be a semver"),
    ("version 01.0.0", _versioned("01.0.0"), 'got "01.0.0"'),
    ("version with suffix", _versioned("1.0.0-beta"), 'field \'version\' must be a semver orchestration version'),
    ("version fullwidth digit", _versioned("\uff11.0.0"), "event #0: field 'version' must be a semver"),
    ("version empty", _versioned(""), "event #0: field 'version' must be a semver"),
    ("queued start version", _queued({**CHILD_START, "version": "2"}), "queued item #0: field 'version' must be a semver"),
    ("engine version of a later event", _set("duroxide_version", "0.1", 3), "event #3: field 'duroxide_version' must be an engine version"),
    # parent_instance: the client's instance id rules
    ("parent empty", _set("parent_instance", "", 0), "event #0: field 'parent_instance' must be a non-empty string, got ''"),
    ("parent with NUL", _set("parent_instance", "p\u0000q", 0), "event #0: field 'parent_instance' must not contain NUL characters"),
    ("parent too long", _set("parent_instance", "p" * 20_000, 0), "event #0: field 'parent_instance' is longer than 17408 bytes"),
    ("parent is itself", _set("parent_instance", "inv-3", 0), "event #0: field 'parent_instance' names the instance itself"),
    ("queued continue-as-new parent empty", _queued({"kind": "ContinueAsNew", "instance": "inv-3", "input": "1",
                                                     "orchestration": "Billing::orchestration::invoice",
                                                     "parent_instance": "", "parent_id": 2, "execution_id": 1}),
     "queued item #0: field 'parent_instance' must be a non-empty string"),
    # names and ids
    ("activity name empty", _set("name", "", 1), "event #1: field 'name' must be a non-empty string, got ''"),
    ("event name with NUL", _set("name", "pa\u0000id", 7), "event #7: field 'name' must not contain NUL characters"),
    ("queued event name empty", _queued({"kind": "ExternalRaised", "instance": "inv-3", "name": "", "data": "1"}),
     "queued item #0: field 'name' must be a non-empty string"),
    ("session id too long", _set("session_id", "s" * 1025, 1), "event #1: field 'session_id' is longer than 1024 bytes"),
    ("child id empty", _append("SubOrchestrationScheduled", name="Child", instance="", input="1"),
     "event #8: field 'instance' must be a non-empty string"),
    ("detached id with the child marker", _append("OrchestrationChained", name="Other", instance="x::sub::1", input="1"),
     "event #8: field 'instance' uses the reserved sub-orchestration marker"),
    # KV, tags, carry-forward, payloads: the runtime's limits
    ("KV key with NUL", _append("KeyValueSet", key="a\u0000b", value="v", last_updated_at_ms=1),
     "event #8: field 'key' must not contain NUL characters"),
    ("KV key too long", _append("KeyValueCleared", key="k" * 1025), "event #8: field 'key' is longer than 1024 bytes"),
    ("KV value over the limit", _append("KeyValueSet", key="k", value="v" * 65_537, last_updated_at_ms=1),
     "event #8: KV value for key 'k' is 65537 bytes, over the limit of 65536 bytes (the runtime fails the turn"),
    ("tag over the limit", _set("tag", "t" * 257, 1), "event #1: activity tag is 257 bytes, over the limit of 256 bytes"),
    ("queued tag over the limit", _queued({"kind": "ActivityExecute", "instance": "inv-3", "execution_id": 1, "id": 6,
                                           "name": "Billing::activity::send_receipt", "input": "1", "tag": "t" * 257}),
     "queued item #0: field 'tag' is 257 bytes, over the activity tag limit of 256 bytes"),
    ("carry-forward over the limit", _set("carry_forward_events", [["q", "1"]] * 21, 0),
     "event #0: field 'carry_forward_events' holds 21 messages, over the carry-forward limit of 20"),
    ("carry-forward name empty", _set("carry_forward_events", [["", "1"]], 0),
     "event #0: field 'carry_forward_events' message #0: name must be a non-empty string"),
    ("payload over 16 MiB", _set("input", "x" * (16 * 1024 * 1024 + 1), 1),
     "event #1: field 'input' is 16777217 bytes, over the 16777216-byte payload limit"),
]


@pytest.mark.parametrize("change, message", [case[1:] for case in BAD_VALUES], ids=[case[0] for case in BAD_VALUES])
def test_values_the_runtime_never_writes_are_refused_and_nothing_is_imported(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str], change, message: str) -> None:
    """A document whose values break a rule the runtime applies when it writes them (the
    custom status, KV value and tag limits, semver orchestration versions, the client's
    instance id rules for a parent, the name rules, payload sizes) is refused naming the field
    and where it is; an import of it alongside good documents writes none of them."""
    bad = tmp_path / "bad.json"
    bad.write_text(_edit(change), encoding="utf-8")
    with pytest.raises(SerializationError) as info:
        load_documents(bad)
    assert message in str(info.value) and str(bad) in str(info.value), str(info.value)[:600]
    assert cli(["import", str(bad), "--db", str(tmp_path / "t.db")]) == 2
    _one_line_error(capsys, message)
    target = SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock())
    good = [d for d in load_documents(HISTORIES) if d["instance_id"] != "inv-3"]
    doc = json.loads(bad.read_text(encoding="utf-8"))
    with pytest.raises(SerializationError, match="document #3: "):
        import_documents(target, [*good, doc])  # (the bad one last: every check comes before any write)
    assert [target.latest_execution_id(i) for i in ("inv-1", "inv-2", "inv-3", "inv-4")] == [None] * 4
    assert target.list_instances() == []
    target.close()


def _register_limits(rt: Runtime) -> None:
    """Every value kind the import checks, written by the runtime itself, within its limits and
    (each in an instance of its own) over them, which fails the turn but stays in history."""
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_orchestration_versioned("Kid", "2.10.3")
    def kid(ctx, x):
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration_versioned("Edge", "3.0.17")
    def edge(ctx, x):
        ctx.set_custom_status("s" * (STATUS_LIMIT - 2) + "é")  # exactly at the limit (UTF-8 bytes)
        ctx.set_kv_value("k" * 1024, "v" * 65_536)
        a = yield ctx.schedule_activity("Echo", x, session_id="s" * 1024).with_tag("t" * 256)
        b = yield ctx.schedule_sub_orchestration_versioned("Kid", "2.10.3", x)
        c = yield ctx.schedule_sub_orchestration_versioned_with_id("Kid", "2.10.3", f"explicit <kid>\n😀{x}", x)
        yield ctx.start_orchestration_versioned("Kid", "2.10.3", f"detached-kid-{x}", x)
        if x < 1:
            return (yield ctx.continue_as_new(x + 1))
        return [a, b, c]

    @rt.register_orchestration("BigStatus")
    def big_status(ctx, x):
        ctx.set_custom_status("s" * (STATUS_LIMIT + 1))
        yield ctx.schedule_timer(5)
        return x

    @rt.register_orchestration("BigThenSmall")
    def big_then_small(ctx, x):
        ctx.set_custom_status("s" * (STATUS_LIMIT + 1))  # replaced in the same turn: no failure
        ctx.set_custom_status("small")
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("BigKv")
    def big_kv(ctx, x):
        ctx.set_kv_value("k", "v" * 65_537)
        return (yield ctx.schedule_activity("Echo", x))

    @rt.register_orchestration("BigTag")
    def big_tag(ctx, x):
        return (yield ctx.schedule_activity("Echo", x).with_tag("t" * 257))


def test_an_exported_real_run_at_and_over_the_limits_imports_back_unchanged(tmp_path: pathlib.Path) -> None:
    """The import's checks refuse nothing the runtime writes: versioned orchestrations, children
    (auto and explicit ids: their parent_instance), a detached start, a session id, a tag, a KV
    key and value and a custom status each exactly at its limit, continue-as-new carrying the
    status; and the instances whose turn failed for a custom status / KV value / tag over the
    limit (history and status row keep the value). Export, import into a fresh database: the
    same histories, statuses and custom statuses."""
    clock = SimClock()
    source = SqliteProvider.open(str(tmp_path / "a.db"), clock=clock)
    rt = Runtime(source, RuntimeOptions(worker_tag_filter=TagFilter.any()), clock=clock, ids=SequentialIds())
    _register_limits(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(source, clock=clock, sleep=driver.sleep)
    client.start_orchestration_versioned("edge", "Edge", 0, "3.0.17")
    for name in ("BigStatus", "BigThenSmall", "BigKv", "BigTag"):
        client.start_orchestration(name.lower(), name, 1)
    driver.run_until_quiet()
    instances = source.list_instances()
    status = {i: client.get_status(i) for i in instances}
    assert {i: s.status for i, s in status.items() if s.status != "Completed"} == {
        "bigstatus": "Failed", "bigkv": "Failed", "bigtag": "Failed"}
    assert len(status["bigstatus"].custom_status) == STATUS_LIMIT + 1 and status["bigthensmall"].custom_status == "small"
    assert "explicit <kid>\n😀1" in instances and "detached-kid-1" in instances and source.latest_execution_id("edge") == 2
    export_to_path(source, tmp_path / "out")
    docs = load_documents(tmp_path / "out")
    target = SqliteProvider.open(str(tmp_path / "b.db"), clock=SimClock())
    import_documents(target, docs)
    assert sorted(target.list_instances()) == sorted(instances)
    assert _histories(target, instances) == _histories(source, instances)
    again = Client(target, clock=SimClock())
    assert {i: vars(again.get_status(i)) for i in instances} == {i: vars(s) for i, s in status.items()}
    source.close()
    target.close()
