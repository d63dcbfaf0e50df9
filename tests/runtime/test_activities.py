"""End-to-end: activities through Runtime + Client (SPEC §2.4, §10.1, §17)."""

from __future__ import annotations

import pytest

from duroxide_sim import TaskFailedError

from ._helpers import STYLES, kinds, pick


@pytest.mark.parametrize("style", STYLES)
def test_sync_activity_result_is_returned(world, style):
    """A sync activity's return value reaches the orchestration and becomes its output."""

    @world.runtime.register_activity("Greet")
    def greet(ctx, name):
        return f"Hello, {name}!"

    def gen(ctx, name):
        return (yield ctx.schedule_activity("Greet", name))

    async def coro(ctx, name):
        return await ctx.schedule_activity("Greet", name)

    world.runtime.register_orchestration("Hello", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Hello", "World")
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output == "Hello, World!"


@pytest.mark.parametrize("style", STYLES)
def test_async_activity_result_is_returned(world, style):
    """An ``async def`` activity runs to completion and its value reaches the orchestration."""

    @world.runtime.register_activity("Double")
    async def double(ctx, x):
        return x * 2

    def gen(ctx, x):
        return (yield ctx.schedule_activity("Double", x))

    async def coro(ctx, x):
        return await ctx.schedule_activity("Double", x)

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", 21)
    assert world.result("i1").output == 42


@pytest.mark.parametrize(
    "value",
    [None, 0, 7, -3.5, True, "", "text", '{"looks": "like json"}', [1, "two", None], {"a": {"b": [1, 2]}}, [], {}],
    ids=repr,
)
@pytest.mark.parametrize("style", STYLES)
def test_activity_result_shapes_round_trip(world, style, value):
    """JSON-shaped activity results (scalars, strings, lists, dicts, None) arrive unchanged."""

    @world.runtime.register_activity("Echo")
    def echo(ctx, v):
        return v

    def gen(ctx, v):
        got = yield ctx.schedule_activity("Echo", v)
        return {"got": got}

    async def coro(ctx, v):
        got = await ctx.schedule_activity("Echo", v)
        return {"got": got}

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", value)
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output == {"got": value}


def test_activity_without_input_parameter(world):
    """An activity declared as ``fn(ctx)`` is called without input."""

    @world.runtime.register_activity("NoArg")
    def no_arg(ctx):
        return "called"

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("NoArg"))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "called"


@pytest.mark.parametrize("style", STYLES)
def test_activity_context_identifies_its_caller(world, style):
    """ActivityContext carries instance, execution, orchestration name/version, activity name and id."""
    seen = {}

    @world.runtime.register_activity("Inspect")
    def inspect(ctx, _):
        seen.update(
            instance_id=ctx.instance_id,
            execution_id=ctx.execution_id,
            orchestration_name=ctx.orchestration_name,
            orchestration_version=ctx.orchestration_version,
            activity_name=ctx.activity_name,
            activity_id=ctx.activity_id,
            worker_id=ctx.worker_id,
            session_id=ctx.session_id,
            tag=ctx.tag(),
            cancelled=ctx.is_cancelled(),
        )
        return None

    def gen(ctx, _):
        yield ctx.schedule_activity("Inspect")

    async def coro(ctx, _):
        await ctx.schedule_activity("Inspect")

    world.runtime.register_orchestration("Inspector", pick(style, gen, coro))
    world.client.start_orchestration("inst-7", "Inspector")
    assert world.result("inst-7").status == "Completed"
    assert seen == {
        "instance_id": "inst-7",
        "execution_id": 1,
        "orchestration_name": "Inspector",
        "orchestration_version": "1.0.0",
        "activity_name": "Inspect",
        "activity_id": 2,
        "worker_id": world.runtime.worker_dispatcher.owner_id,
        "session_id": None,
        "tag": None,
        "cancelled": False,
    }


@pytest.mark.parametrize("style", STYLES)
def test_activity_exception_is_task_failed_error_in_orchestration(world, style):
    """An activity that raises surfaces as TaskFailedError('Activity 'name' call failed: Type: msg')."""

    @world.runtime.register_activity("Boom")
    def boom(ctx, _):
        raise ValueError("bad input")

    def gen(ctx, _):
        try:
            yield ctx.schedule_activity("Boom")
        except TaskFailedError as exc:
            return {"type": type(exc).__name__, "text": str(exc)}
        return "not reached"

    async def coro(ctx, _):
        try:
            await ctx.schedule_activity("Boom")
        except TaskFailedError as exc:
            return {"type": type(exc).__name__, "text": str(exc)}
        return "not reached"

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output == {"type": "TaskFailedError", "text": "Activity 'Boom' call failed: ValueError: bad input"}


@pytest.mark.parametrize("style", STYLES)
def test_async_activity_exception_is_task_failed_error(world, style):
    """An ``async def`` activity that raises fails the same way as a sync one."""

    @world.runtime.register_activity("AsyncBoom")
    async def boom(ctx, _):
        raise KeyError("missing")

    def gen(ctx, _):
        try:
            yield ctx.schedule_activity("AsyncBoom")
        except TaskFailedError as exc:
            return str(exc)

    async def coro(ctx, _):
        try:
            await ctx.schedule_activity("AsyncBoom")
        except TaskFailedError as exc:
            return str(exc)

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "Activity 'AsyncBoom' call failed: KeyError: 'missing'"


@pytest.mark.parametrize("style", STYLES)
def test_uncaught_activity_failure_fails_instance(world, style):
    """An activity error the orchestration does not catch fails the instance with that text."""

    @world.runtime.register_activity("Boom")
    def boom(ctx, _):
        raise ValueError("msg")

    def gen(ctx, _):
        yield ctx.schedule_activity("Boom")
        return "not reached"

    async def coro(ctx, _):
        await ctx.schedule_activity("Boom")
        return "not reached"

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert "Activity 'Boom' call failed: ValueError: msg" in st.error
    assert st.output is None
    assert kinds(world, "i1")[-1] == "OrchestrationFailed"


def test_activity_failure_recorded_in_history(world):
    """A failed activity is recorded as ActivityFailed pointing at its ActivityScheduled event."""

    @world.runtime.register_activity("Boom")
    def boom(ctx, _):
        raise RuntimeError("nope")

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("Boom", 1)
        except TaskFailedError:
            return "handled"

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "handled"
    hist = world.client.read_execution_history("i1", 1)
    sched = next(e for e in hist if e["kind"] == "ActivityScheduled")
    failed = next(e for e in hist if e["kind"] == "ActivityFailed")
    assert failed["source_event_id"] == sched["event_id"]
    assert "Activity 'Boom' call failed: RuntimeError: nope" in failed["data"]


def test_activity_result_not_json_serializable_fails_activity(world):
    """An activity returning something JSON cannot encode fails that activity with a SerializationError."""

    @world.runtime.register_activity("BadResult")
    def bad(ctx, _):
        return object()

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("BadResult")
        except TaskFailedError as exc:
            return str(exc)

    world.client.start_orchestration("i1", "O")
    out = world.result("i1").output
    assert out.startswith("Activity 'BadResult' call failed: SerializationError:")
    assert "object" in out


@pytest.mark.parametrize("style", STYLES)
def test_sequential_activities_chain_results(world, style):
    """Activities awaited one after another see the previous results (replay resumes correctly)."""

    @world.runtime.register_activity("Inc")
    def inc(ctx, x):
        return x + 1

    def gen(ctx, n):
        x = 0
        for _ in range(n):
            x = yield ctx.schedule_activity("Inc", x)
        return x

    async def coro(ctx, n):
        x = 0
        for _ in range(n):
            x = await ctx.schedule_activity("Inc", x)
        return x

    world.runtime.register_orchestration("Chain", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Chain", 10)
    assert world.result("i1").output == 10
    assert kinds(world, "i1").count("ActivityCompleted") == 10


def test_activity_can_use_client(world):
    """``ActivityContext.get_client()`` returns a Client on the same provider."""

    @world.runtime.register_activity("Peek")
    def peek(ctx, _):
        return ctx.get_client().get_status(ctx.instance_id).status

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Peek"))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "Running"


def test_activity_trace_logs_with_logger(world, caplog):
    """``ActivityContext.trace_info`` logs on the ``duroxide_sim.activity`` logger."""

    @world.runtime.register_activity("Talk")
    def talk(ctx, _):
        ctx.trace_info("activity says hi")
        return None

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_activity("Talk")

    caplog.set_level("INFO", logger="duroxide_sim.activity")
    world.client.start_orchestration("i1", "O")
    world.result("i1")
    assert [r.getMessage() for r in caplog.records if r.name == "duroxide_sim.activity"] == ["activity says hi"]


def test_activity_runs_once_per_schedule(world):
    """Replays never re-run completed activities: each schedule executes exactly once."""
    calls = []

    @world.runtime.register_activity("Count")
    def count(ctx, x):
        calls.append(x)
        return x

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        out = []
        for i in range(4):
            out.append((yield ctx.schedule_activity("Count", i)))
            yield ctx.schedule_timer(10)
        return out

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [0, 1, 2, 3]
    assert calls == [0, 1, 2, 3]


def test_reserved_syscall_activity_name_is_rejected(world):
    """Registering an activity with the ``__duroxide_syscall:`` prefix is a ConfigurationError."""
    from duroxide_sim import ConfigurationError

    with pytest.raises(ConfigurationError):
        world.runtime.register_activity("__duroxide_syscall:mine", lambda ctx, x: x)


def test_duplicate_activity_registration_is_rejected(world):
    """Registering the same activity name twice is a ConfigurationError."""
    from duroxide_sim import ConfigurationError

    world.runtime.register_activity("A", lambda ctx, x: x)
    with pytest.raises(ConfigurationError):
        world.runtime.register_activity("A", lambda ctx, x: x)


def test_async_activity_may_await_asyncio(world):
    """An ``async def`` activity can await ordinary asyncio code."""
    import asyncio

    @world.runtime.register_activity("Nap")
    async def nap(ctx, x):
        await asyncio.sleep(0)
        return x

    @world.runtime.register_orchestration("O")
    async def orch(ctx, n):
        return await ctx.all_typed([ctx.schedule_activity("Nap", i) for i in range(n)])

    world.client.start_orchestration("i1", "O", 3)
    assert world.result("i1").output == [0, 1, 2]


@pytest.mark.parametrize("style", STYLES)
def test_orchestration_helpers_compose(world, style):
    """Orchestration code can be factored into helpers (``yield from`` sub-generators / awaited coroutines)."""

    @world.runtime.register_activity("Inc")
    def inc(ctx, x):
        return x + 1

    def gen_helper(ctx, x):
        a = yield ctx.schedule_activity("Inc", x)
        return (yield ctx.schedule_activity_with_retry("Inc", a, {"max_attempts": 2}))

    async def coro_helper(ctx, x):
        a = await ctx.schedule_activity("Inc", x)
        return await ctx.schedule_activity_with_retry("Inc", a, {"max_attempts": 2})

    def gen(ctx, x):
        y = yield from gen_helper(ctx, x)
        return (yield from gen_helper(ctx, y))

    async def coro(ctx, x):
        y = await coro_helper(ctx, x)
        return await coro_helper(ctx, y)

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", 0)
    assert world.result("i1").output == 4
    assert kinds(world, "i1").count("ActivityCompleted") == 4


@pytest.mark.parametrize("style", STYLES)
def test_orchestration_context_attributes(world, style):
    """OrchestrationContext exposes instance_id, execution_id, orchestration_name and orchestration_version."""

    def gen(ctx, _):
        yield ctx.schedule_timer(1)
        return [ctx.instance_id, ctx.execution_id, ctx.orchestration_name, ctx.orchestration_version]

    async def coro(ctx, _):
        await ctx.schedule_timer(1)
        return [ctx.instance_id, ctx.execution_id, ctx.orchestration_name, ctx.orchestration_version]

    world.runtime.register_orchestration("Named", pick(style, gen, coro))
    world.client.start_orchestration("inst", "Named")
    assert world.result("inst").output == ["inst", 1, "Named", "1.0.0"]
