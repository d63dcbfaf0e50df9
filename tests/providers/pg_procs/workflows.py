"""The workload of the multi-runtime PostgreSQL test: registration plus the expected outputs,
computed directly (no engine involved), shared by the worker processes and the test.

``Root(i)``: ``a = inc(i)``; a 30 ms durable timer; every 10th instance calls the
sub-orchestration ``Child(a)`` (``inc(a) + 100``), the others keep ``a``; then ``inc`` once more.
"""

from __future__ import annotations

TIMER_MS = 30
CHILD_EVERY = 10


def register(rt) -> None:  # noqa: ANN001 - a duroxide_sim Runtime
    def inc(ctx, x):
        return x + 1

    def child(ctx, x):
        y = yield ctx.schedule_activity("inc", x)
        return y + 100

    def root(ctx, i):
        a = yield ctx.schedule_activity("inc", i)
        yield ctx.schedule_timer(TIMER_MS)
        c = (yield ctx.schedule_sub_orchestration("Child", a)) if i % CHILD_EVERY == 0 else a
        return (yield ctx.schedule_activity("inc", c))

    rt.register_activity("inc", inc)
    rt.register_orchestration("Child", child)
    rt.register_orchestration("Root", root)


def expected(i: int) -> int:
    a = i + 1
    c = a + 1 + 100 if i % CHILD_EVERY == 0 else a
    return c + 1
