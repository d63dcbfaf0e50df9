"""An instance actor: health-check on a durable timer forever with continue-as-new, and exit
gracefully when an ``InstanceDeleted`` signal wins ``select2(timer, wait)``."""

from __future__ import annotations

from scenarios import Case


class Names:
    HEALTH_CHECK = "actor::activity::health_check"
    ACTOR = "actor::orchestration::instance_actor"


NAME = "instance-actor"


def register(rt):
    @rt.register_activity(Names.HEALTH_CHECK)
    def health_check(ctx, state):
        return {**state, "healthy": True, "checks": state["checks"] + 1}

    @rt.register_orchestration(Names.ACTOR)
    def actor(ctx, state):
        state = yield ctx.schedule_activity(Names.HEALTH_CHECK, state)
        if state["checks"] >= state.get("stop_after", 10**9):
            return {"reason": "limit", "checks": state["checks"]}
        winner = yield ctx.select2(ctx.schedule_timer(20), ctx.schedule_wait("InstanceDeleted"))
        if winner.index() == 1:
            ctx.trace_info("instance deleted; actor exiting")
            return {"reason": "deleted", "checks": state["checks"]}
        yield ctx.continue_as_new({"checks": state["checks"], "stop_after": state["stop_after"]})


CASES = [
    Case("actor-limit", Names.ACTOR, {"checks": 0, "stop_after": 5}, {"reason": "limit", "checks": 5}),
]
