"""End-to-end: session affinity and activity tags / worker tag filters (SPEC §15.3, §10.3)."""

from __future__ import annotations

import pytest

from duroxide_sim import ConfigurationError, RuntimeOptions, TagFilter

from ._helpers import STYLES, SecondRuntime, events_of, pick


def _drive_both(world, other, instance):
    """Interleave: orchestration turn on runtime 1, then one worker step on each runtime."""
    for _ in range(10_000):
        did = world.runtime.orchestration_dispatcher.step()
        did = world.runtime.worker_dispatcher.step() or did
        did = other.runtime.worker_dispatcher.step() or did
        if not did:
            break
    return world.client.get_status(instance)


@pytest.mark.parametrize("style", STYLES)
def test_session_activities_run_on_one_worker(world, style):
    """All activities of a session run on the worker that claimed it; other sessions may go elsewhere."""
    runs = []

    def work(ctx, x):
        runs.append((ctx.session_id, ctx.worker_id, x))
        return x

    def gen(ctx, n):
        tasks = [ctx.schedule_activity_on_session("Work", i, f"s{i % 2}") for i in range(n)]
        return (yield ctx.all_typed(tasks))

    async def coro(ctx, n):
        tasks = [ctx.schedule_activity_on_session("Work", i, f"s{i % 2}") for i in range(n)]
        return await ctx.all_typed(tasks)

    other = SecondRuntime(world, RuntimeOptions(worker_node_id="worker-2"))
    for rt in (world.runtime, other.runtime):
        rt.register_activity("Work", work)
        rt.register_orchestration("Fan", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Fan", 8)
    st = _drive_both(world, other, "i1")
    assert st.output == list(range(8))
    by_session = {}
    for session, worker, _ in runs:
        by_session.setdefault(session, set()).add(worker)
    assert by_session == {"s0": {world.runtime.worker_dispatcher.owner_id}, "s1": {"worker-2"}}


def test_session_stays_with_worker_across_turns(world):
    """A session keeps its worker across sequential activities in later turns."""
    runs = []

    def work(ctx, x):
        runs.append((ctx.session_id, ctx.worker_id))
        return x

    @world.runtime.register_orchestration("Seq")
    def seq(ctx, _):
        for i in range(4):
            yield ctx.schedule_activity_on_session("Work", i, "sticky")
            yield ctx.schedule_activity("Work", i)  # session-less: any worker
        return "done"

    other = SecondRuntime(world, RuntimeOptions(worker_node_id="worker-2"))
    world.runtime.register_activity("Work", work)
    other.runtime.register_activity("Work", work)
    world.client.start_orchestration("i1", "Seq")
    world.runtime.orchestration_dispatcher.step()
    assert other.runtime.worker_dispatcher.step()  # runtime 2 claims session "sticky"
    # from now on runtime 1's worker always polls first, yet never gets a "sticky" activity
    for _ in range(10_000):
        did = world.runtime.orchestration_dispatcher.step()
        did = world.runtime.worker_dispatcher.step() or did
        did = other.runtime.worker_dispatcher.step() or did
        if not did:
            break
    assert world.client.get_status("i1").output == "done"
    assert {w for s, w in runs if s == "sticky"} == {"worker-2"}
    assert {w for s, w in runs if s is None} == {world.runtime.worker_dispatcher.owner_id}


def test_session_id_reaches_activity_and_history(world):
    """The session id is recorded on ActivityScheduled and visible as ActivityContext.session_id."""

    @world.runtime.register_activity("Who")
    def who(ctx, _):
        return ctx.session_id

    @world.runtime.register_orchestration("O")
    async def orch(ctx, _):
        a = await ctx.schedule_activity_on_session("Who", None, "sess-1")
        b = await ctx.schedule_activity("Who", None, session_id="sess-2")
        c = await ctx.schedule_activity("Who")
        return [a, b, c]

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == ["sess-1", "sess-2", None]
    assert [e["data"].get("session_id") for e in events_of(world, "i1", "ActivityScheduled")] == ["sess-1", "sess-2", None]


def test_retry_on_session_pins_every_attempt(world):
    """schedule_activity_with_retry_on_session schedules every attempt on the same session."""
    calls = []

    @world.runtime.register_activity("Flaky")
    def flaky(ctx, _):
        calls.append(ctx.session_id)
        if len(calls) < 3:
            raise ValueError("again")
        return "ok"

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity_with_retry_on_session("Flaky", None, {"max_attempts": 3}, "pinned"))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "ok"
    assert calls == ["pinned"] * 3
    assert {e["data"]["session_id"] for e in events_of(world, "i1", "ActivityScheduled")} == {"pinned"}


def test_session_id_must_be_non_empty(world):
    """An empty or missing session id is refused with TypeError."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        errors = 0
        for sid in ("", None):
            try:
                ctx.schedule_activity_on_session("X", None, sid)
            except TypeError:
                errors += 1
        return errors
        yield

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == 2


# --- tags -----------------------------------------------------------------------------------


def _tag_flow(world, style):
    def gen(ctx, _):
        gpu = yield ctx.schedule_activity("Where", "g").with_tag("gpu")
        cpu = yield ctx.schedule_activity("Where", "c")
        return [gpu, cpu]

    async def coro(ctx, _):
        gpu = await ctx.schedule_activity("Where", "g").with_tag("gpu")
        cpu = await ctx.schedule_activity("Where", "c")
        return [gpu, cpu]

    return pick(style, gen, coro)


def _where(ctx, label):
    return {"label": label, "tag": ctx.tag(), "worker": ctx.worker_id}


@pytest.mark.parametrize("style", STYLES)
def test_tagged_activity_runs_only_on_matching_worker(world, style):
    """A .with_tag('gpu') activity is ignored by a default worker and run by a Tags(['gpu']) worker."""
    world.runtime.register_activity("Where", _where)
    world.runtime.register_orchestration("O", _tag_flow(world, style))
    world.client.start_orchestration("i1", "O")
    world.run()
    assert world.client.get_status("i1").status == "Running"
    assert world.client.get_queue_depths().worker_queue == 1
    assert events_of(world, "i1", "ActivityScheduled")[0]["data"]["tag"] == "gpu"

    gpu = SecondRuntime(world, RuntimeOptions(worker_node_id="gpu-box", worker_tag_filter=TagFilter.tags(["gpu"])))
    gpu.runtime.register_activity("Where", _where)
    gpu.runtime.register_orchestration("O", _tag_flow(world, style))
    gpu.run()
    # the gpu runtime ran the tagged activity; the untagged one waits for a default worker
    assert world.client.get_status("i1").status == "Running"
    assert world.client.get_queue_depths().worker_queue == 1
    world.run()
    out = world.result("i1").output
    assert out[0] == {"label": "g", "tag": "gpu", "worker": "gpu-box"}
    assert out[1] == {"label": "c", "tag": None, "worker": world.runtime.worker_dispatcher.owner_id}


def test_default_and_filter_runs_tagged_and_untagged(world):
    """TagFilter.default_and(['gpu']) runs untagged activities and the listed tags."""
    rt = SecondRuntime(world, RuntimeOptions(worker_node_id="both", worker_tag_filter=TagFilter.default_and(["gpu"])))
    rt.runtime.register_activity("Where", _where)
    rt.runtime.register_orchestration("O", _tag_flow(world, "generator"))
    rt.client.start_orchestration("i1", "O")
    out = rt.result("i1").output
    assert [o["worker"] for o in out] == ["both", "both"]


def test_any_filter_runs_every_tag(world):
    """TagFilter.any() runs activities with any tag, or none."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.all_typed([
            ctx.schedule_activity("Where", "x").with_tag("red"),
            ctx.schedule_activity("Where", "y").with_tag("blue"),
            ctx.schedule_activity("Where", "z"),
        ]))

    rt = SecondRuntime(world, RuntimeOptions(worker_tag_filter=TagFilter.any()))
    rt.runtime.register_activity("Where", _where)
    rt.runtime.register_orchestration("O", orch)
    rt.client.start_orchestration("i1", "O")
    assert [o["tag"] for o in rt.result("i1").output] == ["red", "blue", None]


def test_none_filter_runs_no_activities(world):
    """A runtime with TagFilter.none() runs orchestrations but no activities."""
    rt = SecondRuntime(world, RuntimeOptions(worker_tag_filter=TagFilter.none()))
    rt.runtime.register_activity("Where", _where)

    @rt.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Where", "x"))

    rt.client.start_orchestration("i1", "O")
    rt.run()
    assert rt.client.get_status("i1").status == "Running"
    assert rt.client.get_queue_depths().worker_queue == 1


def test_tag_filter_validation():
    """Worker tag filters take 1 to 5 tags, as a list."""
    with pytest.raises(ConfigurationError):
        TagFilter.tags([])
    with pytest.raises(ConfigurationError):
        TagFilter.tags(["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ConfigurationError):
        TagFilter.tags("gpu")
    assert TagFilter.tags(["a", "b", "c", "d", "e"]).mode == "tags"


def test_tag_over_limit_fails_instance(world):
    """An activity tag over 256 bytes fails the instance with the SPEC §10.3 message."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_activity("Where", 1).with_tag("t" * 257)

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.error == "Activity 'Where' tag size (257 bytes) exceeds limit (256 bytes)"
    assert world.client.get_queue_depths().worker_queue == 0


def test_empty_tag_rejected(world):
    """with_tag('') raises TypeError."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            ctx.schedule_activity("Where").with_tag("")
        except TypeError:
            return "rejected"
        yield

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "rejected"


def test_max_sessions_per_runtime_caps_the_sessions_a_worker_holds():
    """With max_sessions_per_runtime=1 a worker holding a session's activity fetches no other
    session's work (session-less work still flows); once that activity is acked it may take the next."""
    from tests.conftest import make_world

    w = make_world(RuntimeOptions(max_sessions_per_runtime=1))
    ran = []

    @w.runtime.register_activity("Work")
    def work(ctx, x):
        ran.append((ctx.session_id, x))
        return x

    @w.runtime.register_orchestration("Two")
    def two(ctx, _):
        tasks = [ctx.schedule_activity_on_session("Work", 1, "s1"), ctx.schedule_activity_on_session("Work", 2, "s2"),
                 ctx.schedule_activity("Work", 3)]
        return (yield ctx.all_typed(tasks))

    w.client.start_orchestration("i1", "Two")
    assert w.runtime.orchestration_dispatcher.step()
    wd = w.runtime.worker_dispatcher
    first = wd.fetch()
    assert first is not None and first.item.session_id is not None
    held = first.item.session_id
    assert wd.active_sessions() == [held]
    second = wd.fetch()  # at the cap: only session-less work is offered
    assert second is not None and second.item.session_id is None
    assert wd.fetch() is None  # the other session's activity waits
    assert wd.commit(first, wd.execute(first))
    assert wd.active_sessions() == []
    third = wd.fetch()
    assert third is not None and third.item.session_id not in (None, held)
    assert wd.commit(second, wd.execute(second)) and wd.commit(third, wd.execute(third))
    w.run()
    assert w.client.get_status("i1").output == [1, 2, 3]
