"""Hello, chain and fan-out: the smallest workflows, written the way the Duroxide skill recommends
(name constants, idempotent activities, replay-safe tracing)."""

from __future__ import annotations

from scenarios import Case


class Names:
    class Activities:
        GREET = "greetings::activity::greet"
        INC = "greetings::activity::inc"

    class Orchestrations:
        HELLO = "greetings::orchestration::hello"
        CHAIN = "greetings::orchestration::chain"
        FANOUT = "greetings::orchestration::fanout"


NAME = "greetings"


def register(rt):
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


CASES = [
    Case("greet-1", Names.Orchestrations.HELLO, "World", "Hello, World!"),
    Case("chain-1", Names.Orchestrations.CHAIN, 20, 20),
    Case("fanout-1", Names.Orchestrations.FANOUT, 50, sum(range(1, 51))),
]
