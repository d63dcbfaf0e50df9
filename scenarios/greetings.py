"""Hello, chain and fan-out: the smallest workflows, written the way the Duroxide skill recommends
(name constants, idempotent activities, replay-safe tracing)."""

from __future__ import annotations

from duroxide_sim.sim.harness import SimSpec, Start


class Names:
    class Activities:
        GREET = "greetings::activity::greet"
        INC = "greetings::activity::inc"

    class Orchestrations:
        HELLO = "greetings::orchestration::hello"
        CHAIN = "greetings::orchestration::chain"
        FANOUT = "greetings::orchestration::fanout"


def setup(rt, world):
    @rt.register_activity(Names.Activities.GREET)
    def greet(ctx, name):
        return f"Hello, {name}!"

    @rt.register_activity(Names.Activities.INC)
    def inc(ctx, x):
        return x + 1

    @rt.register_orchestration(Names.Orchestrations.HELLO)
    def hello(ctx, name):
        ctx.trace_info(f"greeting {name}")
        return (yield ctx.schedule_activity(Names.Activities.GREET, name))

    @rt.register_orchestration(Names.Orchestrations.CHAIN)
    async def chain(ctx, n):
        x = 0
        for _ in range(n):
            x = await ctx.schedule_activity(Names.Activities.INC, x)
        return x

    @rt.register_orchestration(Names.Orchestrations.FANOUT)
    def fanout(ctx, n):
        results = yield ctx.all_typed([ctx.schedule_activity(Names.Activities.INC, i) for i in range(n)])
        return sum(results)


def expected_outputs(result):
    want = {"greet-1": "Hello, World!", "chain-1": 10, "fanout-1": sum(range(1, 21))}
    for instance, output in want.items():
        status = result.statuses[instance]
        if status.status == "Completed" and status.output != output:
            return f"{instance} returned {status.output!r}, expected {output!r}"
    return None


SPEC = SimSpec(
    name="greetings",
    setup=setup,
    starts=[
        Start(instance="greet-1", orchestration=Names.Orchestrations.HELLO, input="World"),
        Start(instance="chain-1", orchestration=Names.Orchestrations.CHAIN, input=10),
        Start(instance="fanout-1", orchestration=Names.Orchestrations.FANOUT, input=20),
    ],
    invariants=[expected_outputs],
    ref="scenarios/greetings.py:SPEC",
)
