"""Probes of the CI replay checker (``duroxide-sim replay`` / ``duroxide_sim.testing.replay``).

Histories are recorded by running real orchestrations to completion (or to a wait) on the
in-memory or SQLite provider, exported with the history_io API, then replayed against changed
code. Each test states what a demanding CI user expects. The tests under "fixed" headings failed
before session 6's fixes (KV snapshots across continue-as-new, failures compared without their
traceback, --latest under an exact-version policy, ``--app ../x.py``, a read-only replay of a
database, a located message for every kind of divergence, user packages named like this one).
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import textwrap
import types

import pytest

import duroxide_sim
from duroxide_sim import Client, InMemoryProvider, Runtime
from duroxide_sim.cli import main as cli
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.history_io import export_instance
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import build_registry, load_app, replay_documents

HERE = pathlib.Path(__file__).resolve()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _record(register, starts, after=None, provider=None):
    """Run ``register``'s orchestrations to quiescence; return (exported docs, client)."""
    clock = SimClock()
    provider = provider(clock) if provider is not None else InMemoryProvider(clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    register(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    for inst, name, inp in starts:
        client.start_orchestration(inst, name, inp)
    driver.run_until_quiet()
    if after is not None:
        after(client)
        driver.run_until_quiet()
    docs = [export_instance(provider, i) for i in reversed(provider.list_instances())]
    return docs, client, provider


def _replay(docs, register, *, latest=False):
    return replay_documents(docs, build_registry(register), latest=latest)


def _acts(rt):
    rt.register_activity("A", lambda ctx, x: x + 1)
    rt.register_activity("B", lambda ctx, x: x * 2)
    rt.register_activity("C", lambda ctx, x: x)


def _app(body, name="O"):
    def register(rt):
        _acts(rt)
        rt.register_orchestration(name, body)

        def child(ctx, x):
            return (yield ctx.schedule_activity("A", x))

        rt.register_orchestration("Child", child)
        rt.register_orchestration("Child2", child)

    return register


def _line(fn, marker: str = "# MARK") -> int:
    import inspect

    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, text in enumerate(lines) if marker in text)


def _write_module(path: pathlib.Path, source: str) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


# --------------------------------------------------------------------------------------------
# Fixed: false positives on unchanged / compatible code
# --------------------------------------------------------------------------------------------


def _kv_counter(ctx, n):
    count = int(ctx.get_kv_value("count") or "0") + 1  # read-modify-write across executions
    ctx.set_kv_value("count", str(count))
    n = yield ctx.schedule_activity("A", n)
    if n < 3:
        return ctx.continue_as_new(n)
    return count


def test_unchanged_code_with_kv_read_modify_write_across_continue_as_new_replays_cleanly() -> None:
    """SPEC J42: KV read-modify-write across CAN must replay. The runtime gives every later
    execution the KV store left by the earlier ones; the CI replay must do the same, else the
    *unchanged* code is reported as divergent in every execution after the first."""
    docs, client, _ = _record(_app(_kv_counter), [("counter", "O", 0)])
    assert client.get_status("counter").status == "Completed"
    assert client.get_status("counter").output == 3
    divergences = _replay(docs, _app(_kv_counter))
    assert divergences == [], [d.render() for d in divergences]


_FAILING_APP = '''
def register(rt):
    rt.register_activity("Charge", lambda ctx, x: x)

    @rt.register_orchestration("Refund")
    def refund(ctx, amount):
        charged = yield ctx.schedule_activity("Charge", amount)
        # (comment)
        if charged > 10:
            raise ValueError("amount over the refund limit")
        return charged
'''


@pytest.mark.parametrize("change", ["moved checkout", "comment line added"])
def test_failed_instance_replays_cleanly_when_only_file_location_changes(tmp_path: pathlib.Path, change: str) -> None:
    """A finished Failed instance recorded by code that raised on purpose. Replaying it against
    the *same logic* must pass when the checkout lives elsewhere (CI vs the developer machine)
    or a comment line was added above the raise. The recorded error text embeds the absolute
    file path and line of the raise, and verify_execution compares it verbatim."""
    recorded_app = _write_module(tmp_path / "dev" / "refund_app.py", _FAILING_APP)
    docs, client, _ = _record(load_app(f"{recorded_app}:register"), [("r-1", "Refund", 50)])
    assert client.get_status("r-1").status == "Failed"
    if change == "moved checkout":
        current = _write_module(tmp_path / "ci" / "build" / "refund_app.py", _FAILING_APP)
    else:  # same file, one comment line more above the raise
        current = _write_module(recorded_app, _FAILING_APP.replace("# (comment)", "# (comment)\n        # one more comment"))
    divergences = _replay(docs, load_app(f"{current}:register"))
    assert divergences == [], [d.render() for d in divergences]


# --------------------------------------------------------------------------------------------
# Fixed: --latest and app loading
# --------------------------------------------------------------------------------------------


def _v1(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    return a


def _v2(ctx, x):
    a = yield ctx.schedule_activity("B", x)  # MARK
    yield ctx.wait_for_event("go")
    return a


def test_latest_replays_with_latest_version_even_under_an_exact_version_policy() -> None:
    """``--latest``: "Each history is replayed with the *latest* registered version instead of its
    pinned one". A staged rollout registers 2.0.0 but keeps new starts on 1.0.0 with an Exact
    policy; asking whether 2.0.0 would break the in-flight 1.0.0 instances must still replay
    them with 2.0.0 (it does with the default Latest policy)."""

    def recorded(rt):
        _acts(rt)
        rt.register_orchestration_versioned("O", "1.0.0", _v1)

    def staged(rt):
        _acts(rt)
        rt.register_orchestration_versioned("O", "1.0.0", _v1)
        rt.register_orchestration_versioned("O", "2.0.0", _v2)
        rt.set_orchestration_version_policy("O", "1.0.0")

    docs, _, _ = _record(recorded, [("i", "O", 1)])
    divergences = _replay(docs, staged, latest=True)
    assert len(divergences) == 1, "the incompatible 2.0.0 was never replayed"
    assert f"{HERE}:{_line(_v2)}" in divergences[0].message


_APP_V1_SOURCE = (HERE.parents[1] / "fixtures" / "replay" / "app_v1.py").read_text()


def test_replay_app_given_relative_to_a_parent_directory(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--app ../workflows.py:register`` (the app next to the CI working directory)."""
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))  # load_app adds the cwd: undo afterwards
    _write_module(tmp_path / "probe_parent_app.py", _APP_V1_SOURCE)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    histories = HERE.parents[1] / "fixtures" / "replay" / "histories_v1"
    assert cli(["replay", str(histories), "--app", "../probe_parent_app.py:register"]) == 0


# --------------------------------------------------------------------------------------------
# Fixed: replay of a SQLite database must be a read-only check
# --------------------------------------------------------------------------------------------


def _sqlite_db(path: pathlib.Path) -> pathlib.Path:
    _, _, provider = _record(_app(_v1), [("i", "O", 1)], provider=lambda clock: SqliteProvider.open(str(path), clock=clock))
    getattr(provider, "close", lambda: None)()
    return path


def test_replay_of_a_read_only_database(tmp_path: pathlib.Path) -> None:
    """CI replays a database snapshot kept read-only (a fixture, a read-only mount)."""
    db = _sqlite_db(tmp_path / "prod.db")
    os.chmod(db, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        mod = _write_module(tmp_path / "ro_app.py", '''
            def register(rt):
                rt.register_activity("A", lambda ctx, x: x + 1)
                def o(ctx, x):
                    a = yield ctx.schedule_activity("A", x)
                    yield ctx.wait_for_event("go")
                    return a
                rt.register_orchestration("O", o)
        ''')
        assert cli(["replay", str(db), "--app", f"{mod}:register"]) == 0
    finally:
        os.chmod(db, stat.S_IRUSR | stat.S_IWUSR)


def test_replay_does_not_modify_the_database_it_checks(tmp_path: pathlib.Path) -> None:
    db = _sqlite_db(tmp_path / "prod.db")
    before = db.read_bytes()
    mod = _write_module(tmp_path / "rw_app.py", '''
        def register(rt):
            rt.register_activity("A", lambda ctx, x: x + 1)
            def o(ctx, x):
                a = yield ctx.schedule_activity("A", x)
                yield ctx.wait_for_event("go")
                return a
            rt.register_orchestration("O", o)
    ''')
    assert cli(["replay", str(db), "--app", f"{mod}:register"]) == 0
    assert db.read_bytes() == before, "a replay (a read-only check) wrote to the database"


# --------------------------------------------------------------------------------------------
# Fixed: every divergence must name what differs and the file:line
# --------------------------------------------------------------------------------------------


def _waits(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    return a


def _waits_then_raises(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    total = a["amount"]  # MARK  (the activity returns an int: TypeError during replay)
    yield ctx.wait_for_event("go")
    return total


def _waits_extra_parallel(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.all([ctx.wait_for_event("go"), ctx.schedule_activity("C", a)])  # MARK
    return a


def _done(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_activity("B", a)
    return "done"


def _done_plus_one(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    b = yield ctx.schedule_activity("B", a)
    yield ctx.schedule_activity("C", b)  # MARK
    return "done"


def _can(ctx, n):
    n = yield ctx.schedule_activity("A", n)
    if n < 2:
        yield ctx.continue_as_new(n)
    return n


def _can_changed(ctx, n):
    n = yield ctx.schedule_activity("A", n)
    if n < 2:
        yield ctx.continue_as_new(n + 100)  # MARK
    return n


def _raise_event(client):
    client.raise_event("i", "go", None)


CASES = {
    # running history; the new code raises while replaying recorded events
    "running: code now raises": (_waits, _waits_then_raises, None, "TypeError"),
    # running history; the new code schedules an extra activity in the recorded last turn
    "running: extra work in last turn": (_waits, _waits_extra_parallel, None, "'C'"),
    # completed history; the new code schedules one more activity before returning
    "completed: extra activity": (_done, _done_plus_one, None, "'C'"),
    # continue-as-new with a different input
    "continue-as-new input changed": (_can, _can_changed, None, "101"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_divergence_names_what_differs_and_the_source_line(case: str) -> None:
    recorded, changed, after, what = CASES[case]
    docs, _, _ = _record(_app(recorded), [("i", "O", 0 if "continue" in case else 1)], after=after)
    divergences = _replay(docs, _app(changed))
    assert divergences, "the change was not detected at all"
    message = divergences[0].message
    assert what in message, message
    assert f"{HERE}:{_line(changed)}" in message, message


# --------------------------------------------------------------------------------------------
# Fixed: user code in a package whose name starts with "duroxide_sim"
# --------------------------------------------------------------------------------------------


def test_divergence_site_found_in_a_user_package_named_like_duroxide_sim() -> None:
    """A user package ``duroxide_sim_workflows`` installed next to duroxide_sim (same parent
    directory: an editable checkout, or site-packages) is user code: its yield lines must be
    reported. The "is it the engine's own file?" test is a bare string prefix of the package
    directory, so ``.../duroxide_sim_workflows/...`` counts as engine code."""
    pkg_dir = os.path.dirname(os.path.abspath(duroxide_sim.__file__))
    fake_file = pkg_dir + "_workflows/billing_probe_unique.py"
    source = textwrap.dedent('''
        def register(rt):
            rt.register_activity("A", lambda ctx, x: x + 1)
            rt.register_activity("B", lambda ctx, x: x * 2)
            rt.register_activity("C", lambda ctx, x: x)
            def billing_probe_unique(ctx, x):
                a = yield ctx.schedule_activity("C", x + 12345)
                yield ctx.wait_for_event("go")
            rt.register_orchestration("O", billing_probe_unique)
    ''')
    module = types.ModuleType("duroxide_sim_workflows_probe")
    exec(compile(source, fake_file, "exec"), module.__dict__)
    docs, _, _ = _record(_app(_v1), [("i", "O", 1)])
    divergences = _replay(docs, module.register)
    assert len(divergences) == 1
    assert f"{fake_file}:7" in divergences[0].message, divergences[0].message


# --------------------------------------------------------------------------------------------
# Behaviour checked and found correct (kept as regression probes)
# --------------------------------------------------------------------------------------------


def _helper_module(tmp_path: pathlib.Path) -> types.ModuleType:
    path = _write_module(tmp_path / "probe_helpers_mod.py", '''
        def step(ctx, x):
            a = yield ctx.schedule_activity("A", x)
            b = yield ctx.schedule_activity("B", a)
            return b

        def step_changed(ctx, x):
            a = yield ctx.schedule_activity("A", x)
            b = yield ctx.schedule_activity("C", a)   # HELPER
            return b

        def outer(ctx, x):
            return (yield from inner(ctx, x))

        def inner(ctx, x):
            return (yield ctx.schedule_activity("C", x))   # INNER

        async def astep(ctx, x):
            a = await ctx.schedule_activity("A", x)
            return await ctx.schedule_activity("B", a)

        async def astep_changed(ctx, x):
            a = await ctx.schedule_activity("A", x)
            return await ctx.schedule_activity("C", a)   # ASYNC
    ''')
    module = load_app(f"{path}:step").__globals__
    return types.SimpleNamespace(path=path, **{k: v for k, v in module.items() if not k.startswith("__")})


def test_divergence_inside_helpers_in_another_module_names_the_helper_line(tmp_path: pathlib.Path) -> None:
    h = _helper_module(tmp_path)
    lines = h.path.read_text().splitlines()

    def line_of(marker):
        return next(i for i, t in enumerate(lines, 1) if marker in t)

    def g1(ctx, x):
        r = yield from h.step(ctx, x)
        yield ctx.wait_for_event("go")
        return r

    def g_helper(ctx, x):
        r = yield from h.step_changed(ctx, x)
        yield ctx.wait_for_event("go")
        return r

    def g_nested(ctx, x):
        a = yield ctx.schedule_activity("A", x)
        r = yield from h.outer(ctx, a)
        yield ctx.wait_for_event("go")
        return r

    async def a1(ctx, x):
        r = await h.astep(ctx, x)
        await ctx.wait_for_event("go")
        return r

    async def a_changed(ctx, x):
        r = await h.astep_changed(ctx, x)
        await ctx.wait_for_event("go")
        return r

    docs, _, _ = _record(_app(g1), [("i", "O", 1)])
    for changed, marker in ((g_helper, "# HELPER"), (g_nested, "# INNER")):
        (d,) = _replay(docs, _app(changed))
        assert f"{h.path}:{line_of(marker)}" in d.message
        assert "history has ActivityScheduled(name='B'" in d.message and "CallActivity(name='C'" in d.message
    docs, _, _ = _record(_app(a1), [("i", "O", 1)])
    assert _replay(docs, _app(a1)) == []
    (d,) = _replay(docs, _app(a_changed))
    assert f"{h.path}:{line_of('# ASYNC')}" in d.message


def _join(ctx, x):
    yield ctx.all([ctx.schedule_activity("A", x), ctx.schedule_activity("B", x)])
    yield ctx.wait_for_event("go")


def _join_swapped(ctx, x):
    yield ctx.all([ctx.schedule_activity("B", x), ctx.schedule_activity("A", x)])  # MARK
    yield ctx.wait_for_event("go")


def _race(ctx, x):
    w = yield ctx.select2(ctx.schedule_activity("A", x), ctx.schedule_timer(100_000))
    return w.index


def _race_swapped(ctx, x):
    w = yield ctx.select2(ctx.schedule_timer(100_000), ctx.schedule_activity("A", x))  # MARK
    return w.index


def _event(ctx, x):
    yield ctx.wait_for_event("go")
    return (yield ctx.schedule_activity("A", x))


def _event_renamed(ctx, x):
    yield ctx.wait_for_event("start")  # MARK
    return (yield ctx.schedule_activity("A", x))


def _sub(ctx, x):
    return (yield ctx.schedule_sub_orchestration_with_id("Child", "kid", x))


def _sub_renamed(ctx, x):
    return (yield ctx.schedule_sub_orchestration_with_id("Child2", "kid", x))  # MARK


def _sub_new_input(ctx, x):
    return (yield ctx.schedule_sub_orchestration_with_id("Child", "kid", x + 1))  # MARK


def _can_branch(ctx, n):
    if n == 0:
        a = yield ctx.schedule_activity("A", n)
        return ctx.continue_as_new(a)
    b = yield ctx.schedule_activity("B", n)
    yield ctx.wait_for_event("go")
    return b


def _can_branch_changed(ctx, n):
    if n == 0:
        a = yield ctx.schedule_activity("A", n)
        return ctx.continue_as_new(a)
    b = yield ctx.schedule_activity("B", n + 5)  # MARK
    yield ctx.wait_for_event("go")
    return b


WORKING = {
    "join order": (_join, _join_swapped, 1, None, "history has ActivityScheduled(name='A'", 1),
    "select branch order": (_race, _race_swapped, 1, None, "code did CreateTimer", 1),
    "event name (running)": (_event, _event_renamed, 1, None, "WaitExternal(name='start')", 1),
    "event name (completed)": (_event, _event_renamed, 1, _raise_event, "WaitExternal(name='start')", 1),
    "sub-orchestration name": (_sub, _sub_renamed, 1, None, "StartSubOrchestration(name='Child2'", 1),
    "sub-orchestration input": (_sub, _sub_new_input, 1, None, "input='2'", 1),
    "later execution after continue-as-new": (_can_branch, _can_branch_changed, 0, None, "execution 2", 2),
}


@pytest.mark.parametrize("case", list(WORKING))
def test_realistic_changes_are_reported_at_the_right_line(case: str) -> None:
    recorded, changed, inp, after, text, execution = WORKING[case]
    docs, _, _ = _record(_app(recorded), [("i", "O", inp)], after=after)
    assert _replay(docs, _app(recorded)) == []
    divergences = [d for d in _replay(docs, _app(changed)) if d.instance == "i"]
    assert len(divergences) == 1, [d.render() for d in divergences]
    assert divergences[0].execution_id == execution
    assert text in divergences[0].message
    assert f"{HERE}:{_line(changed)}" in divergences[0].message


def _add_after_wait(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.wait_for_event("go")
    b = yield ctx.schedule_activity("B", a)  # new step after the recorded end
    return b


async def _async_same(ctx, x):
    a = await ctx.schedule_activity("A", x)
    await ctx.wait_for_event("go")
    return a


def test_compatible_changes_are_not_reported() -> None:
    docs, _, _ = _record(_app(_waits), [("i", "O", 1)])
    assert _replay(docs, _app(_add_after_wait)) == []
    assert _replay(docs, _app(_async_same)) == []  # generator -> async def, same actions


def test_cancelled_and_failed_instances_replay_cleanly_against_the_same_code() -> None:
    docs, client, _ = _record(_app(_waits), [("i", "O", 1)], after=lambda c: c.cancel_instance("i", "user"))
    assert client.get_status("i").status == "Failed"
    assert _replay(docs, _app(_waits)) == []


def test_latest_with_default_policy_reports_only_in_flight() -> None:
    def recorded(rt):
        _acts(rt)
        rt.register_orchestration_versioned("O", "1.0.0", _v1)

    def upgraded(rt):
        _acts(rt)
        rt.register_orchestration_versioned("O", "1.0.0", _v1)
        rt.register_orchestration_versioned("O", "2.0.0", _v2)

    docs, _, _ = _record(recorded, [("i", "O", 1), ("done", "O", 2)], after=lambda c: c.raise_event("done", "go", None))
    assert _replay(docs, upgraded) == []  # pinned 1.0.0
    divergences = _replay(docs, upgraded, latest=True)
    assert [d.instance for d in divergences] == ["i"] and divergences[0].in_flight


def test_hostile_cli_inputs_exit_2(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    histories = HERE.parents[1] / "fixtures" / "replay" / "histories_v1"
    (tmp_path / "empty").mkdir()
    good = _write_module(tmp_path / "probe_good_app.py", _APP_V1_SOURCE)
    raising = _write_module(tmp_path / "probe_raising_app.py", "raise RuntimeError('boom at import')\n")
    noncallable = _write_module(tmp_path / "probe_nc_app.py", "register = 42\ndef nothing(rt):\n    pass\n")
    assert cli(["replay", str(tmp_path / "empty"), "--app", f"{good}:register"]) == 2
    assert cli(["replay", str(histories), "--app", f"{raising}:register"]) == 2
    assert "boom at import" in capsys.readouterr().err
    assert cli(["replay", str(histories), "--app", f"{noncallable}:register"]) == 2
    assert cli(["replay", str(histories), "--app", f"{noncallable}:missing"]) == 2
    # an app that knows none of the recorded orchestrations: every history is reported
    assert cli(["replay", str(histories), "--app", f"{noncallable}:nothing", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert len(report) == 4 and all("is not registered" in r["message"] for r in report)


# --------------------------------------------------------------------------------------------
# The code ending before the recorded history does (CI replay walks past SPEC §3.4's stop)
# --------------------------------------------------------------------------------------------


def _notify_then_detach(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_activity("B", a)
    yield ctx.start_orchestration("Child", "watch-1", a)  # recorded after the code returned
    return "done"


def _notify_dropped(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    return "done"  # MARK  (same output: only the removed steps tell)


def _detach_changed(ctx, x):
    a = yield ctx.schedule_activity("A", x)
    yield ctx.schedule_activity("B", a)
    yield ctx.start_orchestration("Child", "watch-2", a)
    return "done"  # MARK


def test_a_detached_start_just_before_the_return_replays_cleanly() -> None:
    """A detached start yielded right before ``return`` is recorded after the point where the
    replay's walk stops (the code returned in the same resumption). The check for removed final
    steps first reported it as one (found on the provisioning scenario's every seed): the code's
    last actions account for it."""
    docs, _, _ = _record(_app(_notify_then_detach), [("i", "O", 1)])
    assert _replay(docs, _app(_notify_then_detach)) == []


@pytest.mark.parametrize("changed,what", [(_notify_dropped, "ActivityScheduled(name='B'"),
                                          (_detach_changed, "watch-1")])
def test_steps_removed_or_changed_after_the_code_returns_are_reported_at_the_return(changed, what) -> None:
    docs, _, _ = _record(_app(_notify_then_detach), [("i", "O", 1)])
    divergences = [d for d in _replay(docs, _app(changed)) if d.instance == "i"]
    assert len(divergences) == 1, divergences
    message = divergences[0].message
    assert what in message and "no longer takes" in message, message
    assert f"{HERE}:{_line(changed)} (its return)" in message, message


def _one_step(ctx, x):
    return (yield ctx.schedule_activity("A", x))


def _plain_one_return(ctx, x):
    return x + 1  # MARK


def _plain_two_returns(ctx, x):  # MARK
    if x > 100:
        return "big"
    return x + 1


@pytest.mark.parametrize("changed,where", [(_plain_one_return, "(its return)"),
                                           (_plain_two_returns, "(the function, which returned without yielding)")])
def test_a_plain_function_that_replaced_the_code_is_reported_at_its_return_or_def_line(changed, where) -> None:
    """An orchestration edited into a plain function (no yield left) returns at once: its frame
    is gone, so the site comes from its bytecode - the line of its only ``return``, or with
    several its ``def`` line, said as such (it used to name no line)."""
    docs, _, _ = _record(_app(_one_step), [("i", "O", 1)])
    divergences = [d for d in _replay(docs, _app(changed)) if d.instance == "i"]
    assert len(divergences) == 1, divergences
    message = divergences[0].message
    assert "no longer takes" in message, message
    assert f"{HERE}:{_line(changed)} {where}" in message, message
