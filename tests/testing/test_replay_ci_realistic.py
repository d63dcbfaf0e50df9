"""Nondeterminism detection in CI (``duroxide-sim replay`` / ``duroxide_sim.testing.replay``) on
realistic recordings (a probe written in session 9, kept).

Histories are recorded the way a team gets them - real orchestrations driven to completion (or to
a wait) on the in-memory or SQLite provider, with a second Runtime standing in for a deploy -
then replayed against changed (or unchanged) code. Found and fixed (each test in the "defects"
sections failed before): hostile ids printed raw; a size-limit failure in a waiting turn and a
recorded nondeterminism failure naming another checkout's path reported against unchanged code;
a poisoned instance's recorded steps never checked; a pruned instance's KV store lost (replay
reported unchanged code, import made the copy fail); a database with missing or corrupt history
passing or blamed on the code; ``export`` refusing a read-only database; a ``time.time()`` branch
that still replays never flagged (replays now run under the sandbox).
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime
from duroxide_sim.cli import main as cli
from duroxide_sim.providers.base import PruneOptions
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.history_io import export_instance
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import load_app
from tests.testing.test_replay_divergences import _acts, _record, _replay  # (the same helpers)

HERE = pathlib.Path(__file__).resolve()
REPO = HERE.parents[2]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _sqlite(path: pathlib.Path):
    return lambda clock: SqliteProvider.open(str(path), clock=clock)


def _app(body, name="O"):
    def register(rt):
        _acts(rt)
        rt.register_orchestration(name, body)

    return register


def _line(fn, marker: str = "# MARK") -> int:
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, text in enumerate(lines) if marker in text)


def _module(path: pathlib.Path, source: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


_WAIT_APP = '''
def register(rt):
    rt.register_activity("A", lambda ctx, x: x + 1)
    rt.register_activity("B", lambda ctx, x: x * 2)
    def o(ctx, x):
        a = yield ctx.schedule_activity({activity!r}, x)
        yield ctx.wait_for_event("go")
        return a
    rt.register_orchestration("O", o)
'''


def _wait_body(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    return a


# ============================================================================================
# Defects
# ============================================================================================


def test_replay_output_escapes_control_characters_in_instance_ids(tmp_path: pathlib.Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Instance ids come from callers (order numbers, e-mail subjects...). ``show`` prints an id
    holding control characters as an escaped JSON string; ``replay`` prints it raw at the start
    of each divergence line, so a newline splits the report, ``\\r`` overwrites it in a CI log
    ("all histories replay cleanly") and an escape sequence recolours the terminal."""
    db = tmp_path / "prod.db"
    _record(_app(_wait_body), [("evil\n\x1b[31mred", "O", 1), ("ok\rall histories replay cleanly", "O", 2)],
            provider=_sqlite(db))
    app = _module(tmp_path / "esc_app.py", _WAIT_APP.format(activity="B"))
    capsys.readouterr()
    assert cli(["replay", str(db), "--app", f"{app}:register"]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out, repr(out)
    lines = out.splitlines()
    assert len(lines) == 3, lines  # the header and one line per divergence


def _status_before_wait(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    ctx.set_custom_status("x" * 300_000)  # over the 262,144-byte limit (SPEC §10.3)
    yield ctx.wait_for_event("go")
    return a


def _kv_value_before_wait(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    ctx.set_kv_value("blob", "v" * 70_000)  # over the KV value limit
    yield ctx.wait_for_event("go")
    return a


def _long_tag(ctx, x):
    return (yield ctx.schedule_activity("A", x).with_tag("t" * 300))  # over the 256-byte tag limit


@pytest.mark.parametrize("body", [_status_before_wait, _kv_value_before_wait, _long_tag],
                         ids=["custom status size", "kv value size", "tag size"])
def test_limit_failure_in_a_non_final_turn_replays_cleanly_against_unchanged_code(body) -> None:
    """SPEC §10.3: a turn that breaks a size limit gets OrchestrationFailed appended. The recorded
    history then holds the offending events as persisted ones, and a from-scratch replay of the
    *unchanged* code never re-derives the failure (the limits are checked on a turn's new events
    only): CI reports "recorded Failed('... exceeds limit ...'), replay gave continue(None)" for
    every such production instance. (A limit broken in the final turn replays cleanly, because
    the code returns before the offending event is walked.)"""
    docs, client, _ = _record(_app(body), [("i", "O", 1)])
    status = client.get_status("i")
    assert status.status == "Failed" and "exceeds limit" in status.error
    divergences = _replay(docs, _app(body))
    assert divergences == [], [d.render() for d in divergences]


def _poisoned(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    return (yield ctx.schedule_activity("NotDeployed", a))  # unregistered: poison (SPEC §10.2)


def _poisoned_renamed_first_step(ctx, x):
    a = yield ctx.schedule_activity("C", x)  # MARK
    return (yield ctx.schedule_activity("NotDeployed", a))


def _completed(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    return (yield ctx.schedule_activity("B", a))


def _completed_renamed_first_step(ctx, x):
    a = yield ctx.schedule_activity("C", x)  # MARK
    return (yield ctx.schedule_activity("B", a))


def test_poisoned_instance_still_checks_the_steps_its_code_recorded() -> None:
    """verify: "Failures not produced by the code (poison, infrastructure) are not re-derivable
    and are accepted as recorded" - but the whole execution is accepted without replaying it, so
    a renamed first step goes unreported for an instance that ended in poison, while the very
    same change is reported for a Completed one (both finished)."""
    docs, client, _ = _record(_app(_poisoned), [("p", "O", 1)])
    assert client.get_status("p").error.startswith("poison: activity NotDeployed")
    assert _replay(docs, _app(_poisoned)) == []
    completed_docs, _, _ = _record(_app(_completed), [("c", "O", 1)])
    assert len(_replay(completed_docs, _app(_completed_renamed_first_step))) == 1  # the reference point
    divergences = _replay(docs, _app(_poisoned_renamed_first_step))
    assert len(divergences) == 1, "a renamed activity passed because the instance ended in poison"
    assert f"{HERE}:{_line(_poisoned_renamed_first_step)}" in divergences[0].message


_KV_APP = '''
def register(rt):
    rt.register_activity("A", lambda ctx, x: x + 1)
    def counter(ctx, n):
        count = int(ctx.get_kv_value("count") or "0") + 1   # read-modify-write across executions
        ctx.set_kv_value("count", str(count))
        n = yield ctx.schedule_activity("A", n)
        if n < 3:
            return ctx.continue_as_new(n)
        yield ctx.wait_for_event("go")
        return count
    rt.register_orchestration("O", counter)
'''


def _pruned_counter_db(tmp_path: pathlib.Path, keep_last: int = 1) -> tuple[pathlib.Path, pathlib.Path]:
    app = _module(tmp_path / "kv_counter_app.py", _KV_APP)
    register = load_app(f"{app}:register")
    db = tmp_path / "prod.db"
    _, client, provider = _record(register, [("k", "O", 0)], provider=_sqlite(db))
    assert client.get_status("k").status == "Running" and provider.latest_execution_id("k") == 3
    # An eternal / long-lived orchestration: operations prune its old executions (SPEC §14);
    # the instance's KV store is kept ("prune keeps keys", SPEC §13).
    client.prune_executions("k", PruneOptions(keep_last=keep_last))
    assert client.get_kv_value("k", "count") == "3"
    provider.close()
    return db, app


def test_database_with_pruned_executions_replays_cleanly_against_unchanged_code(tmp_path: pathlib.Path,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The runtime resumes the pruned instance fine (its turns get the instance's KV store). The
    CI replay rebuilds the starting KV store only from the executions still present, so the
    unchanged code reads an empty store and is reported as ``kv set mismatch``."""
    db, app = _pruned_counter_db(tmp_path)
    capsys.readouterr()
    code = cli(["replay", str(db), "--app", f"{app}:register"])
    out = capsys.readouterr().out
    assert code == 0, out


def test_pruned_execution_whose_starting_kv_store_is_unknown_is_named_not_judged(
        tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """keep_last=2: execution 3 (running) starts from the stored KV store and is replayed;
    execution 2 changed the counter, so what it started with cannot be known (a KV event cannot
    be undone): it is not replayed, and the output says so instead of passing it silently. A
    change to the code is still caught in execution 3."""
    db, app = _pruned_counter_db(tmp_path, keep_last=2)
    capsys.readouterr()
    assert cli(["replay", str(db), "--app", f"{app}:register"]) == 0
    captured = capsys.readouterr()
    assert "note: 1 execution(s) not replayed" in captured.err and "k execution 2" in captured.err, captured.err
    assert "of those replayed (1 execution(s) not replayed" in captured.out, captured.out
    changed = _module(tmp_path / "kv_counter_changed.py", _KV_APP.replace('str(count))', 'str(count * 10))'))
    assert cli(["replay", str(db), "--app", f"{changed}:register"]) == 1
    out = capsys.readouterr().out
    assert "k (execution 3, in-flight)" in out and "kv set mismatch" in out, out


def test_import_of_a_pruned_export_keeps_the_kv_store(tmp_path: pathlib.Path) -> None:
    """README: ``import`` restores instances, statuses, custom status and KV. After pruning, the
    export holds only the last execution, and the import rebuilds the KV store from the events
    it has: the starting store of the running execution (count=2) is lost, so the restored
    instance fails as nondeterministic when it resumes, while the original completes."""
    db, app = _pruned_counter_db(tmp_path)
    assert cli(["export", str(db), "--out", str(tmp_path / "exported")]) == 0
    assert cli(["import", str(tmp_path / "exported"), "--db", str(tmp_path / "restored.db")]) == 0
    register = load_app(f"{app}:register")
    outcomes = {}
    for name in ("prod.db", "restored.db"):
        clock = SimClock()
        provider = SqliteProvider.open(str(tmp_path / name), clock=clock)
        rt = Runtime(provider, clock=clock, ids=SequentialIds())
        register(rt)
        driver = SequentialDriver(rt, clock)
        client = Client(provider, clock=clock, sleep=driver.sleep)
        client.raise_event("k", "go", None)
        driver.run_until_quiet()
        status = client.get_status("k")
        outcomes[name] = (status.status, status.output, status.error)
        provider.close()
    assert outcomes["prod.db"] == ("Completed", 3, None)
    assert outcomes["restored.db"] == outcomes["prod.db"], outcomes


def test_database_whose_instances_have_no_history_is_not_a_clean_pass(tmp_path: pathlib.Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """replay_source's own rule: "every history replays cleanly" after checking nothing would let
    CI pass on a wrong input. A database whose instance rows survive but whose history is gone
    (a truncated copy, a botched restore) is checked as zero executions and passes with exit 0."""
    db = tmp_path / "prod.db"
    _record(_app(_wait_body), [("a", "O", 1), ("b", "O", 2)], provider=_sqlite(db))[2].close()
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("DELETE FROM history")
    con.commit()
    con.close()
    app = _module(tmp_path / "nohist_app.py", _WAIT_APP.format(activity="A"))
    capsys.readouterr()
    code = cli(["replay", str(db), "--app", f"{app}:register"])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.out)
    assert "history" in captured.err, captured.err


def test_corrupt_database_history_is_an_input_error_like_a_corrupt_export(tmp_path: pathlib.Path,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The same corruption (an execution that does not begin with OrchestrationStarted) is an input
    error naming the problem when it comes from an export file (exit 2) but is reported as a
    divergence of the *code* (exit 1) when it comes from a database: CI blames the change under
    review for a broken database."""
    db = tmp_path / "prod.db"
    _record(_app(_wait_body), [("a", "O", 1)], provider=_sqlite(db))[2].close()
    import sqlite3

    con = sqlite3.connect(db)
    con.execute("DELETE FROM history WHERE event_id = 1")
    con.commit()
    con.close()
    app = _module(tmp_path / "corrupt_app.py", _WAIT_APP.format(activity="A"))
    capsys.readouterr()
    code = cli(["replay", str(db), "--app", f"{app}:register"])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.out)
    assert "OrchestrationStarted" in captured.err, captured.err


_FLIP_APP = '''
MODE = {"v": 2}


def register(rt):
    rt.register_activity("A", lambda ctx, x: x + 1)
    rt.register_activity("B", lambda ctx, x: x * 2)

    def o(ctx, x):
        a = yield ctx.schedule_activity("A" if MODE["v"] == 1 else "B", x)
        yield ctx.wait_for_event("go")
        return a

    rt.register_orchestration("O", o)
'''


def test_recorded_nondeterminism_failure_verdict_does_not_depend_on_the_checkout_path(tmp_path: pathlib.Path) -> None:
    """A deploy changed the code under a running instance; production failed it as
    nondeterministic (the message embeds the production file path and line). CI replays that
    history against the very same code. The verdict flips with the directory the code is
    checked out in: "clean" at the production path, a divergence anywhere else - while failures
    are otherwise compared without their paths (README: "paths and line numbers move with a
    checkout"). The simulation's determinism checker counts such a recorded failure as a finding
    either way."""
    prod = _module(tmp_path / "prod" / "flip_app.py", _FLIP_APP)
    ci = _module(tmp_path / "ci" / "flip_app.py", _FLIP_APP)
    register = load_app(f"{prod}:register")
    register.__globals__["MODE"]["v"] = 1  # the old release
    clock = SimClock()
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    register(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("f1", "O", 1)
    driver.run_until_quiet()
    register.__globals__["MODE"]["v"] = 2  # the new release, on a new process
    rt2 = Runtime(provider, clock=clock, ids=SequentialIds())
    register(rt2)
    driver2 = SequentialDriver(rt2, clock)
    client2 = Client(provider, clock=clock, sleep=driver2.sleep)
    client2.raise_event("f1", "go", None)
    driver2.run_until_quiet()
    status = client2.get_status("f1")
    assert status.status == "Failed" and status.error.startswith("nondeterministic: schedule mismatch"), status.error
    docs = [export_instance(provider, "f1")]
    at_prod_path = bool(_replay(docs, load_app(f"{prod}:register")))
    at_ci_path = bool(_replay(docs, load_app(f"{ci}:register")))
    assert at_prod_path == at_ci_path, f"same code: diverges at the production path={at_prod_path}, elsewhere={at_ci_path}"


def test_an_export_named_in_capitals_is_an_export(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--out history.JSON`` writes one file (it made a directory), and ``replay``/``show`` of
    ``history.JSON`` read it as an export (they opened it as a SQLite database: "is not a SQLite
    database")."""
    db = tmp_path / "prod.db"
    _record(_app(_wait_body), [("a", "O", 1)], provider=_sqlite(db))[2].close()
    out = tmp_path / "history.JSON"
    assert cli(["export", str(db), "--out", str(out)]) == 0
    assert out.is_file()
    app = _module(tmp_path / "caps_app.py", _WAIT_APP.format(activity="A"))
    capsys.readouterr()
    assert cli(["replay", str(out), "--app", f"{app}:register"]) == 0, capsys.readouterr()
    assert cli(["show", str(out)]) == 0
    assert "OrchestrationStarted" in capsys.readouterr().out


def test_an_app_reference_with_two_names_says_so(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--app app.py:register:extra`` said "No module named '/.../app'"."""
    db = tmp_path / "prod.db"
    _record(_app(_wait_body), [("a", "O", 1)], provider=_sqlite(db))[2].close()
    app = _module(tmp_path / "two_app.py", _WAIT_APP.format(activity="A"))
    capsys.readouterr()
    assert cli(["replay", str(db), "--app", f"{app}:register:extra"]) == 2
    err = capsys.readouterr().err
    assert "one ':' after the file" in err and "No module named" not in err, err


def test_a_database_on_a_read_only_mount_is_read(tmp_path: pathlib.Path) -> None:
    """A WAL database's reader needs its -shm file beside it: on a read-only mount (a backup, a CI
    fixture volume) ``replay``, ``export`` and ``show`` failed with "unable to open database
    file" (exit 2). Run in a private mount namespace (``unshare -m``, as root) where the
    directory is bind-mounted read-only."""
    ro = tmp_path / "ro"
    ro.mkdir()
    db = ro / "app.db"
    _record(_app(_wait_body), [("a", "O", 1)], provider=_sqlite(db))[2].close()  # (a backup: no -wal/-shm)
    assert sorted(f.name for f in ro.iterdir()) == ["app.db"]
    app = _module(tmp_path / "ro_app.py", _WAIT_APP.format(activity="A"))
    script = (f"mount --bind {ro} {ro} && mount -o remount,ro,bind {ro} && "
              f"{sys.executable} -m duroxide_sim show {db} && "
              f"{sys.executable} -m duroxide_sim replay {db} --app {app}:register && "
              f"{sys.executable} -m duroxide_sim export {db} --out {tmp_path / 'out'}")
    done = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ExternalSubscribed" in done.stdout and "every history replays cleanly" in done.stdout, done.stdout
    assert (tmp_path / "out" / "a.json").is_file()


def test_export_of_a_read_only_database(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``replay`` reads a read-only database (a CI fixture, a read-only mount of a production
    backup) through an in-memory copy; ``export``, the step that turns that database into
    committed fixtures, opens it read-write and refuses it (it also bumps a counter in the file
    of a writable one). An export only reads."""
    db = tmp_path / "prod.db"
    _record(_app(_wait_body), [("a", "O", 1)], provider=_sqlite(db))[2].close()
    os.chmod(db, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        capsys.readouterr()
        code = cli(["export", str(db), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 0, err
        assert (tmp_path / "out" / "a.json").is_file()
    finally:
        os.chmod(db, stat.S_IRUSR | stat.S_IWUSR)


_CLOCK_APP = '''
import time


def register(rt):
    rt.register_activity("Charge", lambda ctx, x: "charged")
    rt.register_activity("Escalate", lambda ctx, x: "escalated")

    def order(ctx, o):
        charged = yield ctx.schedule_activity("Charge", o["id"])
        yield ctx.wait_for_event("shipped")
        if time.time() * 1000 > o["deadline_ms"]:  # CLOCK: a wall-clock business rule
            yield ctx.schedule_activity("Escalate", o["id"])
        return charged

    rt.register_orchestration("Order", order)
'''


def test_replay_flags_a_wall_clock_read_that_happens_to_replay_the_recorded_path(tmp_path: pathlib.Path) -> None:
    """The orchestration reads ``time.time()`` to decide whether to escalate. Recorded and
    replayed before the deadline, the branch is the same and CI is green - until the day the
    deadline passes, when every such in-flight instance breaks in production. The simulation's
    sandbox flags exactly this call with its line; the CI replay, sold as the "nondeterminism
    check for CI", runs the same orchestration code without it and says nothing."""
    app = _module(tmp_path / "clock_app.py", _CLOCK_APP)
    register = load_app(f"{app}:register")
    deadline = int(time.time() * 1000) + 30 * 24 * 3600 * 1000
    docs, client, _ = _record(register, [("o1", "Order", {"id": "o1", "deadline_ms": deadline})],
                              after=lambda c: c.raise_event("o1", "shipped", None))
    assert client.get_status("o1").status == "Completed"
    line = next(i for i, t in enumerate(app.read_text().splitlines(), 1) if "# CLOCK" in t)
    divergences = _replay(docs, register)
    assert divergences, "a wall-clock read in orchestration code passed the CI nondeterminism check"
    assert "time.time" in divergences[0].message and f"{app}:{line}" in divergences[0].message


# ============================================================================================
# Behaviour found correct (kept as regression probes)
# ============================================================================================


def _base(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_timer(1000)
    b = yield ctx.schedule_activity("B", a)
    return b


def _timer_longer(ctx, x):
    ctx.trace_info("starting")  # logging is replay-safe (no history)
    a = yield ctx.schedule_activity("A", x)
    ctx.trace_warn(f"got {a}")
    yield ctx.schedule_timer(5000)  # SPEC §3.5: any TimerCreated matches; the recorded fire time stands
    b = yield ctx.schedule_activity("B", a)
    return b


async def _async_same(ctx, x):
    a = await ctx.schedule_activity("A", x)
    await ctx.schedule_timer(1000)
    return await ctx.schedule_activity("B", a)


def _reordered(ctx, x):
    b = yield ctx.schedule_activity("B", x)  # MARK
    a = yield ctx.schedule_activity("A", x)
    return b


def _renamed(ctx, x):
    a = yield ctx.schedule_activity("C", x)  # MARK
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", a))


def _new_input(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", a + 1))  # MARK


def _inserted(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_activity("C", a)  # MARK
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", a))


def _status_inserted(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    ctx.set_custom_status("waiting")  # MARK  (SPEC §3.4/3.5: an action of another kind)
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", a))


def _sub_inserted(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_sub_orchestration("O", 0)  # MARK
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", a))


def _clock_input(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", int(time.time() * 1000)))  # MARK


def _uuid_input(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_timer(1000)
    return (yield ctx.schedule_activity("B", str(uuid.uuid4())))  # MARK


def test_compatible_changes_replay_cleanly() -> None:
    docs, client, _ = _record(_app(_base), [("i", "O", 1)])
    assert client.get_status("i").output == 4
    for changed in (_base, _timer_longer, _async_same):
        assert _replay(docs, _app(changed)) == [], changed.__name__


@pytest.mark.parametrize("changed, what", [
    (_reordered, "code did CallActivity(name='B'"),
    (_renamed, "code did CallActivity(name='C'"),
    (_new_input, "input='3'"),
    (_inserted, "code did CallActivity(name='C'"),
    (_status_inserted, "UpdateCustomStatus"),
    (_sub_inserted, "StartSubOrchestration(name='O'"),
    (_clock_input, "history has ActivityScheduled(name='B', input='2')"),
    (_uuid_input, "history has ActivityScheduled(name='B', input='2')"),
], ids=lambda v: getattr(v, "__name__", "")[1:] if callable(v) else "")
def test_incompatible_changes_are_reported_at_their_line(changed, what) -> None:
    docs, _, _ = _record(_app(_base), [("i", "O", 1)])
    divergences = _replay(docs, _app(changed))
    (divergence,) = [d for d in divergences if not d.message.startswith("nondeterministic call:")]
    assert what in divergence.message, divergence.message
    assert f"{HERE}:{_line(changed)}" in divergence.message, divergence.message
    calls = [d for d in divergences if d.message.startswith("nondeterministic call:")]
    if changed in (_clock_input, _uuid_input):  # the sandbox names the call too, at the same line
        assert len(calls) == 1 and f"{HERE}:{_line(changed)}" in calls[0].message, [d.message for d in divergences]
    else:
        assert not calls, calls


def _running(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    return (yield ctx.schedule_activity("C", a))


def _running_after(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    b = yield ctx.schedule_activity("B", a)  # not reached yet by the recorded instance
    return (yield ctx.schedule_activity("C", b))


def _running_before(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_activity("B", a)  # MARK
    yield ctx.wait_for_event("go")
    return (yield ctx.schedule_activity("C", a))


def test_in_flight_instance_accepts_steps_past_its_position_and_rejects_steps_before_it() -> None:
    docs, client, _ = _record(_app(_running), [("i", "O", 1)])
    assert client.get_status("i").status == "Running"
    assert _replay(docs, _app(_running_after)) == []
    (divergence,) = _replay(docs, _app(_running_before))
    assert divergence.in_flight and f"{HERE}:{_line(_running_before)}" in divergence.message


def test_old_versions_replay_against_old_code_and_latest_judges_in_flight_only() -> None:
    def v2(ctx, x):
        a = yield ctx.schedule_activity("B", x)  # MARK
        yield ctx.wait_for_event("go")
        return a

    def recorded(rt):
        _acts(rt)
        rt.register_orchestration_versioned("O", "1.0.0", _wait_body)

    def upgraded(rt):
        recorded(rt)
        rt.register_orchestration_versioned("O", "2.0.0", v2)

    docs, _, _ = _record(recorded, [("live", "O", 1), ("done", "O", 2)], after=lambda c: c.raise_event("done", "go", None))
    assert _replay(docs, upgraded) == []
    divergences = _replay(docs, upgraded, latest=True)
    assert [d.instance for d in divergences] == ["live"] and f"{HERE}:{_line(v2)}" in divergences[0].message


_SET_APP = '''
def register(rt):
    rt.register_activity("Notify", lambda ctx, x: x)
    def fanout(ctx, _):
        for region in {"us-east", "eu-west", "ap-south", "sa-east", "af-south"}:  # SET
            yield ctx.schedule_activity("Notify", region)
        return "ok"
    rt.register_orchestration("Fanout", fanout)
'''

_SET_RECORDER = '''
import sys
from duroxide_sim import Client, Runtime
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import load_app
clock = SimClock()
provider = SqliteProvider.open(sys.argv[1], clock=clock)
rt = Runtime(provider, clock=clock, ids=SequentialIds())
load_app(sys.argv[2])(rt)
driver = SequentialDriver(rt, clock)
Client(provider, clock=clock, sleep=driver.sleep).start_orchestration("f1", "Fanout", None)
driver.run_until_quiet()
provider.close()
'''


def test_set_iteration_order_is_caught_when_ci_runs_under_another_hash_seed(tmp_path: pathlib.Path) -> None:
    app = _module(tmp_path / "set_app.py", _SET_APP)
    recorder = _module(tmp_path / "record_set.py", _SET_RECORDER)
    db = tmp_path / "prod.db"

    def run(args, hash_seed):
        env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120)

    recorded = run([str(recorder), str(db), f"{app}:register"], 1)
    assert recorded.returncode == 0, recorded.stderr
    # CI under the recording's own hash seed iterates the set as production did; the second
    # replay (another hash seed, in a subprocess) catches it - it passed before that existed.
    same = run(["-m", "duroxide_sim", "replay", str(db), "--app", f"{app}:register"], 1)
    same_only = run(["-m", "duroxide_sim", "replay", str(db), "--app", f"{app}:register", "--no-hash-seed-check"], 1)
    other = run(["-m", "duroxide_sim", "replay", str(db), "--app", f"{app}:register", "--json"], 2)
    assert same.returncode == 1 and "PYTHONHASHSEED=2" in same.stdout, same.stdout + same.stderr
    assert same_only.returncode == 0, same_only.stdout + same_only.stderr
    assert other.returncode == 1, other.stdout + other.stderr
    line = next(i for i, t in enumerate(app.read_text().splitlines(), 1) if "# SET" in t)
    (report,) = json.loads(other.stdout)
    assert f"{app}:{line + 1}" in report["message"], report["message"]


def test_cli_exit_codes_for_bad_inputs(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    import sqlite3

    app = _module(tmp_path / "exit_app.py", _WAIT_APP.format(activity="A"))
    (tmp_path / "garbage.db").write_bytes(b"not a database at all")
    con = sqlite3.connect(tmp_path / "foreign.db")
    con.execute("CREATE TABLE users(id INTEGER)")
    con.commit()
    con.close()
    (tmp_path / "truncated.json").write_text('{"format": "duroxide-sim-history", "version": 1, "instance_id": "a", "execu')
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "foreign.json").write_text('{"events": [{"kind": "OrchestrationStarted"}]}')
    cases = {
        "garbage.db": "is not a SQLite database",
        "foreign.db": "is not a duroxide_sim database",
        "truncated.json": "not valid JSON",
        "list.json": "no recorded histories",
        "foreign.json": "not a duroxide-sim-history document",
        "missing.db": "no such file or directory",
    }
    for name, message in cases.items():
        capsys.readouterr()
        assert cli(["replay", str(tmp_path / name), "--app", f"{app}:register"]) == 2, name
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (name, err)
    docs, _, _ = _record(_app(_wait_body), [("a", "O", 1)])
    (tmp_path / "ok.json").write_text(json.dumps(docs[0]))
    capsys.readouterr()
    assert cli(["replay", str(tmp_path / "ok.json"), "--app", f"{app}:register"]) == 0
    assert cli(["replay", str(tmp_path / "ok.json"), "--app", "no_such_module_xyz:register"]) == 2
    other = _module(tmp_path / "exit_app_b.py", _WAIT_APP.format(activity="B"))
    assert cli(["replay", str(tmp_path / "ok.json"), "--app", f"{other}:register"]) == 1
