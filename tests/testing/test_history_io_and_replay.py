"""Export/import round trip, the replay checker (CLI and pytest helper), and ``show``."""

from __future__ import annotations

import json
import pathlib
import shutil

import pytest

from duroxide_sim import Client, Runtime
from duroxide_sim.cli import main as cli
from duroxide_sim.errors import SerializationError
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.history_io import export_to_path, import_documents, load_documents
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import assert_replays
from tests.fixtures.replay import app_v1

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "replay"
HISTORIES = FIXTURES / "histories_v1"


def _sqlite_world(path: pathlib.Path):
    clock = SimClock()
    provider = SqliteProvider.open(str(path), clock=clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    app_v1.register(rt)
    driver = SequentialDriver(rt, clock)
    return provider, Client(provider, clock=clock, sleep=driver.sleep), driver


def test_export_then_import_reproduces_identical_histories(tmp_path: pathlib.Path) -> None:
    """SQLite -> JSON -> fresh SQLite -> JSON: the histories and the files are identical."""
    provider, client, driver = _sqlite_world(tmp_path / "a.db")
    for n, hostile in enumerate(["inv-1", "inv \"quoted\" 'x'", "инвойс-✓", "a/b\\c:d"], 1):
        client.start_orchestration(hostile, "Billing::orchestration::invoice", {"id": hostile, "amount": n})
    driver.run_until_quiet()
    client.raise_event("inv-1", "paid", True)
    driver.run_until_quiet()
    assert cli(["export", str(tmp_path / "a.db"), "--out", str(tmp_path / "export1")]) == 0
    assert cli(["import", str(tmp_path / "export1"), "--db", str(tmp_path / "b.db")]) == 0
    second = SqliteProvider.open(str(tmp_path / "b.db"), clock=SimClock())
    for inst in provider.list_instances():
        for e in range(1, provider.latest_execution_id(inst) + 1):
            assert second.read_with_execution(inst, e) == provider.read_with_execution(inst, e)
    export_to_path(second, tmp_path / "export2", [d["instance_id"] for d in load_documents(tmp_path / "export1")])
    files1 = sorted(p.name for p in (tmp_path / "export1").iterdir())
    assert files1 == sorted(p.name for p in (tmp_path / "export2").iterdir())
    for name in files1:
        assert (tmp_path / "export1" / name).read_bytes() == (tmp_path / "export2" / name).read_bytes()


def test_import_refuses_to_overwrite(tmp_path: pathlib.Path) -> None:
    docs = load_documents(HISTORIES)
    target = SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock())
    import_documents(target, docs)
    with pytest.raises(ValueError, match="already exists"):
        import_documents(target, docs)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json", "not valid JSON"),
        ('{"format": "other", "version": 1}', "not a duroxide-sim-history document"),
        ('{"format": "duroxide-sim-history", "version": 99, "instance_id": "x", "executions": []}', "newer than"),
        ('{"format": "duroxide-sim-history", "version": 1, "instance_id": "x", "executions": [{"execution_id": 1, "events": [{"kind": "Bogus"}]}]}', "unknown event kind"),
    ],
)
def test_bad_export_files_get_clear_errors(tmp_path: pathlib.Path, content: str, message: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(SerializationError, match=message):
        load_documents(bad)


def test_replay_cli_passes_v1_and_reports_v2_divergence(capsys: pytest.CaptureFixture[str]) -> None:
    """Committed v1 histories replay cleanly against v1 and diverge exactly against v2."""
    assert cli(["replay", str(HISTORIES), "--app", str(FIXTURES / "app_v1.py") + ":register"]) == 0
    assert "every history replays cleanly" in capsys.readouterr().out
    assert cli(["replay", str(HISTORIES), "--app", str(FIXTURES / "app_v2.py") + ":register", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert {r["instance"] for r in report} == {"inv-1", "inv-2", "inv-3", "inv-4"}
    msg = next(r["message"] for r in report if r["instance"] == "inv-3")
    assert "event_id=2" in msg
    assert "history has ActivityScheduled(name='Billing::activity::charge'" in msg
    assert "code did CallActivity(name='Billing::activity::fraud_check'" in msg
    lines = (FIXTURES / "app_v2.py").read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if "NEW IN V2" in text)
    assert f"app_v2.py:{line}" in msg


def test_replay_latest_lists_only_in_flight_instances_that_break(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["replay", str(HISTORIES), "--app", str(FIXTURES / "app_v2.py") + ":register", "--latest", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert sorted(r["instance"] for r in report) == ["inv-3", "inv-4"]
    assert all(r["in_flight"] for r in report)


def test_replay_cli_usage_errors_exit_2(tmp_path: pathlib.Path) -> None:
    assert cli(["replay", str(tmp_path / "missing"), "--app", str(FIXTURES / "app_v1.py") + ":register"]) == 2
    assert cli(["replay", str(HISTORIES), "--app", "no_colon_here"]) == 2


def test_assert_replays_pytest_helper(tmp_path: pathlib.Path) -> None:
    assert_replays(str(HISTORIES), app_v1.register)
    with pytest.raises(AssertionError, match="inv-3 \\(execution 1, in-flight\\)"):
        assert_replays(str(HISTORIES), str(FIXTURES / "app_v2.py") + ":register")


def test_replay_reads_a_sqlite_database(tmp_path: pathlib.Path) -> None:
    provider, client, driver = _sqlite_world(tmp_path / "live.db")
    client.start_orchestration("i", "Billing::orchestration::invoice", {"id": "i", "amount": 5})
    driver.run_until_quiet()
    assert cli(["replay", str(tmp_path / "live.db"), "--app", str(FIXTURES / "app_v1.py") + ":register"]) == 0
    assert cli(["replay", str(tmp_path / "live.db"), "--app", str(FIXTURES / "app_v2.py") + ":register"]) == 1


def test_show_prints_a_timeline(capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    assert cli(["show", str(HISTORIES), "--instance", "inv-3"]) == 0
    out = capsys.readouterr().out
    assert "inv-3  (Billing::orchestration::invoice 1.0.0)" in out
    assert "TimerFired <- #4" in out and "+ 86400000 ms" in out
    assert cli(["show", str(HISTORIES), "--instance", "nope"]) == 2


def test_fixture_generator_is_reproducible(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regenerating the committed fixtures gives byte-identical files."""
    from tests.fixtures.replay import make_fixtures

    monkeypatch.setattr(make_fixtures, "OUT", tmp_path / "regen")
    make_fixtures.main()
    for f in HISTORIES.iterdir():
        assert (tmp_path / "regen" / f.name).read_bytes() == f.read_bytes(), f.name
    shutil.rmtree(tmp_path / "regen")


def _rich_source(path: pathlib.Path):
    """Instances with everything an import must restore beside the events: several executions
    (continue-as-new), custom status, KV values, a sub-orchestration, a failure, one still running."""
    clock = SimClock()
    provider = SqliteProvider.open(str(path), clock=clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def counter(ctx, n):
        ctx.set_custom_status(f"at {n}")
        ctx.set_kv_value("last", str(n))
        if n == 0:
            ctx.set_kv_value("first", "yes")
        n = yield ctx.schedule_activity("inc", n)
        if n < 3:
            yield ctx.continue_as_new(n)
        return n

    def child(ctx, x):
        return (yield ctx.schedule_activity("inc", x))

    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration_with_id("Child", "kid", x))

    def fails(ctx, _):
        yield ctx.schedule_timer(10)
        raise ValueError("no")

    def waits(ctx, _):
        ctx.set_custom_status("waiting")
        return (yield ctx.wait_for_event("go"))

    for name, fn in (("Counter", counter), ("Child", child), ("Parent", parent), ("Fails", fails), ("Waits", waits)):
        rt.register_orchestration(name, fn)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    for inst, name in (("count", "Counter"), ("p", "Parent"), ("bad", "Fails"), ("wait", "Waits")):
        client.start_orchestration(inst, name, 0)
        driver.run_until_quiet()
    return provider, client


def _views(client: Client) -> dict:
    out = {}
    for inst in sorted(client.list_all_instances()):
        st = client.get_status(inst)
        info = client.get_instance_info(inst)
        out[inst] = {
            "status": (st.status, st.output, st.error, st.custom_status),
            "info": info,
            "executions": [client.get_execution_info(inst, e) for e in client.list_executions(inst)],
            "kv": client.get_kv_all_values(inst),
            "tree": client.get_instance_tree(inst) if info.parent_instance_id is None else None,
        }
    return out


@pytest.mark.parametrize("target", ["sqlite", "memory"])
def test_an_imported_instance_is_listed_and_described_like_the_original(tmp_path: pathlib.Path, target: str) -> None:
    """Import used to write only the events: the instances were missing from list_instances, so
    `show` and `export` of the imported database found nothing, and their status, custom status
    and KV store were not there."""
    from duroxide_sim.providers.memory import InMemoryProvider

    _provider, client = _rich_source(tmp_path / "a.db")
    before = _views(client)
    assert set(before) == {"count", "p", "kid", "bad", "wait"} and len(before["count"]["executions"]) == 3
    assert before["count"]["kv"] == {"first": "yes", "last": "2"} and before["wait"]["status"][3] == "waiting"
    docs = load_documents(export_to_path(client.provider, tmp_path / "out")[0].parent)
    target_provider = SqliteProvider.open(str(tmp_path / "b.db"), clock=SimClock()) if target == "sqlite" \
        else InMemoryProvider(SimClock())
    assert import_documents(target_provider, docs) == 7  # executions
    after = _views(Client(target_provider, clock=SimClock()))
    assert after == before
    # And the imported database exports to the same files (list_instances finds them now).
    export_to_path(target_provider, tmp_path / "again")
    for file in sorted((tmp_path / "out").iterdir()):
        assert (tmp_path / "again" / file.name).read_bytes() == file.read_bytes(), file.name


def test_import_of_an_existing_instance_writes_nothing_at_all(tmp_path: pathlib.Path) -> None:
    _provider, client = _rich_source(tmp_path / "a.db")
    docs = load_documents(export_to_path(client.provider, tmp_path / "out")[0].parent)
    target = SqliteProvider.open(str(tmp_path / "b.db"), clock=SimClock())
    import_documents(target, [d for d in docs if d["instance_id"] == "wait"])
    with pytest.raises(Exception, match="already exists"):
        import_documents(target, docs)  # "wait" is there: nothing else is written either
    assert target.list_instances() == ["wait"]
