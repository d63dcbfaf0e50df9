"""Migrating a duroxide-python (``duroxide`` 0.2.2) workflow module by changing only the import.

A probe ran the peer SDK's own session, tag, typed-API, admin, lifecycle, replay-isolation and
lock-option suites and the runnable examples of its user guide against duroxide_sim (through a
shim that only re-exports ``duroxide_sim``). Every behaviour below is written fresh, in our words,
as a small reproduction on the SQLite provider and the real threaded runtime.

What a migrating user hit (session 13, fixed since):

- ``ScheduledTask`` is in the peer's ``__all__`` but was not importable from ``duroxide_sim``
  (now the base class of our tasks: ``isinstance`` checks and type hints work);
- ``TagFilter`` constants/builders were objects, not the peer's plain strings (now a ``str``
  subclass whose value is the peer's string form);
- ``with_tag`` returned a copy instead of tagging the task it is called on (a non-chained
  ``task.with_tag("gpu")`` silently lost the tag);
- a retry dict with a key the SDK does not read (the user guide's own ``"backoff_strategy"``
  example) failed the orchestration instead of being ignored (now ignored, with a warning);
- ``Runtime.shutdown`` with a timeout that is not a non-negative int was accepted (``-1``) or
  raised an unrelated error *after* stopping the runtime (``"0"``).

Deliberately different, not tested here: the peer's scheduling calls return dict subclasses
(``task["tag"]``); ours return task objects (README, tests/test_peer_api_compat.py).

The probe also found ``from duroxide_sim import PostgresProvider`` failing and
``get_orchestration_stats`` of an unknown instance not being ``None``; both were fixed while it ran
(53972a4, 76c4f9f) and are pinned here. The rest pin behaviours the peer suites rely on that work
today and are not covered elsewhere.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, TagFilter

from ._helpers import SqliteRig


def _opts(**kw: Any) -> RuntimeOptions:
    base: dict[str, Any] = dict(dispatcher_poll_interval_ms=5)
    base.update(kw)
    return RuntimeOptions(**base)


@pytest.fixture
def rig(tmp_path) -> Iterator[SqliteRig]:
    r = SqliteRig(tmp_path / "peer_b.db", _opts)
    yield r
    r.close()


def _run(rig: SqliteRig, rt: Runtime, instance: str, name: str, input: Any = None, timeout_ms: int = 5_000):
    rt.start()
    client = rig.client()
    client.start_orchestration(instance, name, input)
    return client.wait_for_orchestration(instance, timeout_ms)


# ─── Names a migrating module imports ──────────────────────────────────────────────────────────


def test_postgres_provider_is_importable_from_the_package() -> None:
    """``from duroxide import PostgresProvider`` is how every peer PostgreSQL test and the user
    guide ("Providers / PostgreSQL") get the provider; it is in duroxide 0.2.2's ``__all__``.
    Changing only the import must keep working: ``from duroxide_sim import PostgresProvider``
    should give the provider of ``duroxide_sim.providers.postgres`` (SPEC §17: same names)."""
    from duroxide_sim.providers.postgres import PostgresProvider as documented

    import duroxide_sim

    assert getattr(duroxide_sim, "PostgresProvider", None) is documented


def test_scheduled_task_is_exported_like_the_peers() -> None:
    """duroxide 0.2.2 exports ``ScheduledTask`` (the type of every descriptor a scheduling call
    returns) from ``duroxide`` and ``duroxide.context``; a module doing
    ``isinstance(x, ScheduledTask)`` or importing it for type hints must import unchanged."""
    import duroxide_sim
    import duroxide_sim.context

    assert hasattr(duroxide_sim, "ScheduledTask")
    assert hasattr(duroxide_sim.context, "ScheduledTask")


# ─── TagFilter values ──────────────────────────────────────────────────────────────────────────


def test_tag_filter_constants_and_builders_are_the_peers_strings() -> None:
    """In duroxide 0.2.2 ``TagFilter.DEFAULT_ONLY/ANY/NONE`` are the strings ``"default_only"``,
    ``"any"``, ``"none"`` and ``tags([...])`` / ``default_and([...])`` return JSON strings
    (``{"tags": [...]}``, ``{"default_and": [...]}``). Users compare them, log them, put them in
    config and ``json.loads`` them; SPEC §17 names exactly these members."""
    assert TagFilter.DEFAULT_ONLY == "default_only"
    assert TagFilter.ANY == "any"
    assert TagFilter.NONE == "none"
    assert set(json.loads(TagFilter.tags(["gpu", "cpu"]))["tags"]) == {"gpu", "cpu"}
    assert json.loads(TagFilter.default_and(["gpu"])) == {"default_and": ["gpu"]}


# ─── Descriptors and with_tag ──────────────────────────────────────────────────────────────────


def test_with_tag_tags_the_task_it_is_called_on(rig) -> None:
    """The peer's ``with_tag`` sets the tag on the descriptor itself and returns it (``tagged is
    task``), so a user who writes ``task.with_tag("gpu")`` as a statement and yields ``task``
    routes the activity to the GPU workers. Ours returned a tagged copy: the yielded task was
    untagged and ran on default workers (``ctx.tag()`` was None), silently. SPEC §17:
    ``schedule_activity(...)`` "(chain ``.with_tag(tag)``)"; §6 worker tag routing."""
    rt = rig.runtime(_opts(worker_tag_filter=TagFilter.ANY))
    rt.register_activity("WhereAmI", lambda ctx, _x: ctx.tag())

    @rt.register_orchestration("TagLater")
    def tag_later(ctx, _):
        task = ctx.schedule_activity("WhereAmI", None)
        task.with_tag("gpu")
        return (yield task)

    r = _run(rig, rt, "tag-later", "TagLater")
    assert r.status == "Completed", r.error
    assert r.output == "gpu"


# ─── Retry dicts ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("on_session", [False, True], ids=["with_retry", "with_retry_on_session"])
def test_retry_dict_keys_the_sdk_does_not_read_are_ignored(rig, on_session, caplog) -> None:
    """The peer builds its retry policy from the keys it knows (``max_attempts``, ``timeout_ms``,
    ``total_timeout_ms``, ``backoff`` and camelCase forms) and ignores the rest; its user guide's
    "Retry on Session" example passes ``{"max_attempts": 3, "backoff_strategy": "none"}``. Ours
    failed the orchestration with ``ValueError: unknown retry option(s) ['backoff_strategy']``.
    SPEC §17 lists the keys read and says an absent ``backoff`` is the default exponential one.
    The ignored key is named once in a warning of the orchestration's log."""
    rt = rig.runtime()
    calls: list[Any] = []
    lock = threading.Lock()

    @rt.register_activity("Flaky")
    def flaky(ctx, _x):
        with lock:
            calls.append(ctx.session_id)
            n = len(calls)
        if n < 2:
            raise RuntimeError("transient")
        return list(calls)

    retry = {"max_attempts": 3, "backoff_strategy": "none"}

    @rt.register_orchestration("RetryGuide")
    def retry_guide(ctx, _):
        if on_session:
            return (yield ctx.schedule_activity_with_retry_on_session("Flaky", None, retry, "gpu-session-1"))
        return (yield ctx.schedule_activity_with_retry("Flaky", None, retry))

    with caplog.at_level(logging.WARNING, logger="duroxide_sim.orchestration"):
        r = _run(rig, rt, "retry-guide", "RetryGuide")
    assert r.status == "Completed", r.error
    assert r.output == (["gpu-session-1"] * 2 if on_session else [None, None])
    warned = [rec.getMessage() for rec in caplog.records if "not used" in rec.getMessage()]
    assert len(warned) == 1 and "backoff_strategy" in warned[0], warned  # once, not per replay


# ─── Client management answers ─────────────────────────────────────────────────────────────────


def test_orchestration_stats_of_an_unknown_instance_is_none(rig) -> None:
    """The peer's ``Client.get_orchestration_stats`` returns ``None`` for an instance that does not
    exist (its admin test asserts exactly that), so ``if stats is None`` is how users detect a
    missing instance. Ours returns a stats object with ``status='NotFound'`` and zero counts.
    SPEC §17 lists ``get_orchestration_stats`` [SDK-only] with the SDK's behaviour."""
    client = rig.client()
    assert client.get_orchestration_stats("no-such-instance") is None


# ─── Runtime.shutdown argument checking ────────────────────────────────────────────────────────


@pytest.mark.parametrize("bad", ["0", -1], ids=["str", "negative"])
def test_shutdown_refuses_a_bad_timeout_and_keeps_running(rig, bad) -> None:
    """duroxide 0.2.2's ``shutdown(timeout_ms: int = None)`` converts the argument before doing
    anything: ``"0"`` is a TypeError and ``-1`` an OverflowError, and the runtime keeps running.
    Ours accepts ``-1`` (an immediate stop) and, for ``"0"``, stops the dispatchers and only then
    raises ``TypeError: unsupported operand type(s) for /: 'str' and 'float'`` - an error that
    does not name ``timeout_ms`` and a stop the caller is told did not happen. SPEC §17
    ``shutdown(timeout_ms=None)``; a bad argument should be refused with nothing changed."""
    rt = rig.runtime()
    rt.register_orchestration("Echo", lambda ctx, x: x)
    rt.start()
    client = rig.client()
    with pytest.raises((TypeError, ValueError, OverflowError)) as info:
        rt.shutdown(bad)
    assert "timeout" in str(info.value)
    client.start_orchestration("after-bad-shutdown", "Echo", 7)
    assert client.wait_for_orchestration("after-bad-shutdown", 3_000).output == 7


# ─── Working behaviours the peer suites rely on ────────────────────────────────────────────────


def test_worker_only_runtime_serves_the_tag_another_runtime_schedules(rig) -> None:
    """Peer ``test_dual_runtime_orchestrator_plus_gpu_worker``: runtime A orchestrates and runs
    default activities (DEFAULT_ONLY); runtime B runs no orchestrations
    (``orchestration_concurrency=0``) and only ``gpu``-tagged activities. A pipeline with a GPU
    step completes, each step on its own runtime (SPEC §6 tag routing, §14 concurrency 0)."""
    provider = rig.provider()
    ran_on: dict[str, str] = {}

    def make(label: str, **kw: Any) -> Runtime:
        rt = rig.runtime(_opts(**kw), provider=provider)
        for step in ("Pre", "Train", "Save"):
            def act(ctx, x, step=step, label=label):
                ran_on[step] = label
                return f"{step.lower()}({x})"

            rt.register_activity(step, act)

        @rt.register_orchestration("Pipeline")
        def pipeline(ctx, x):
            a = yield ctx.schedule_activity("Pre", x)
            b = yield ctx.schedule_activity("Train", a).with_tag("gpu")
            return (yield ctx.schedule_activity("Save", b))

        return rt

    a = make("A", worker_tag_filter=TagFilter.DEFAULT_ONLY)
    b = make("B", orchestration_concurrency=0, worker_tag_filter=TagFilter.tags(["gpu"]))
    a.start()
    b.start()
    client = Client(provider)
    client.start_orchestration("ml-1", "Pipeline", "data")
    r = client.wait_for_orchestration("ml-1", 5_000)
    assert (r.status, r.output) == ("Completed", "save(train(pre(data)))"), r.error
    assert ran_on == {"Pre": "A", "Train": "B", "Save": "A"}


def test_session_work_continues_across_a_versioned_continue_as_new(rig) -> None:
    """Peer ``test_session_can_versioned_upgrade``: v1 runs a session activity, then
    ``continue_as_new_versioned(result, "2.0.0")``; v2 runs on the same session and sees v1's
    result as input (SPEC §8 CAN, §12 versions, §17 ``continue_as_new_versioned(input, version)``)."""
    rt = rig.runtime()
    rt.register_activity("Work", lambda ctx, x: f"{x}@{ctx.session_id}")

    @rt.register_orchestration_versioned("Upgrade", "1.0.0")
    def v1(ctx, _):
        r = yield ctx.schedule_activity_on_session("Work", "v1", "sess")
        yield ctx.continue_as_new_versioned(r, "2.0.0")

    @rt.register_orchestration_versioned("Upgrade", "2.0.0")
    def v2(ctx, prev):
        r = yield ctx.schedule_activity_on_session("Work", "v2", "sess")
        return f"{prev}+{r}"

    rt.start()
    client = rig.client()
    client.start_orchestration_versioned("up", "Upgrade", None, "1.0.0")
    r = client.wait_for_orchestration("up", 5_000)
    assert (r.status, r.output) == ("Completed", "v1@sess+v2@sess"), r.error
    assert client.get_instance_info("up").orchestration_version == "2.0.0"


def test_multi_step_blocks_joined_as_sub_orchestrations(rig) -> None:
    """User guide "Multi-Step Parallel Blocks": two multi-step sub-orchestrations joined with
    ``ctx.all`` give ``[{"ok": a}, {"ok": b}]`` in input order (SPEC §17 all results)."""
    rt = rig.runtime()
    rt.register_activity("Step", lambda ctx, x: f"step{x}")

    @rt.register_orchestration("BlockA")
    def block_a(ctx, _):
        first = yield ctx.schedule_activity("Step", "A1")
        second = yield ctx.schedule_activity("Step", "A2")
        return [first, second]

    @rt.register_orchestration("BlockB")
    def block_b(ctx, _):
        yield ctx.schedule_timer(5)
        return (yield ctx.schedule_activity("Step", "B1"))

    @rt.register_orchestration("Blocks")
    def blocks(ctx, _):
        return (yield ctx.all([ctx.schedule_sub_orchestration("BlockA", ""),
                               ctx.schedule_sub_orchestration("BlockB", "")]))

    r = _run(rig, rt, "blocks", "Blocks")
    assert r.status == "Completed", r.error
    assert r.output == [{"ok": ["stepA1", "stepA2"]}, {"ok": "stepB1"}]


def test_with_tag_refuses_what_it_cannot_route(rig) -> None:
    """Tagging is for activities before they are yielded: tagging a timer, or an activity that
    is already scheduled, is a TypeError naming the problem (a tag set then would be ignored)."""
    rt = rig.runtime(_opts(worker_tag_filter=TagFilter.ANY))
    rt.register_activity("Work", lambda ctx, x: x)

    @rt.register_orchestration("BadTags")
    def bad_tags(ctx, _):
        problems = []
        try:
            ctx.schedule_timer(5).with_tag("gpu")
        except TypeError as exc:
            problems.append(str(exc))
        task = ctx.schedule_activity("Work", 1)
        yield task
        try:
            task.with_tag("gpu")
        except TypeError as exc:
            problems.append(str(exc))
        return problems

    r = _run(rig, rt, "bad-tags", "BadTags")
    assert r.status == "Completed", r.error
    assert len(r.output) == 2
    assert "only activities can be tagged" in r.output[0]
    assert "after it was yielded" in r.output[1]


def test_tag_filter_strings_round_trip_through_runtime_options_and_pickle() -> None:
    """A filter kept as its string (config, environment) is the same filter; equal filters are
    equal strings whatever the tag order; the worker processes of ``--jobs`` pickle them."""
    import pickle

    f = TagFilter.default_and(["gpu", "cpu"])
    assert f == TagFilter.default_and(["cpu", "gpu"]) == '{"default_and": ["cpu", "gpu"]}'
    opts = RuntimeOptions(worker_tag_filter=str(f))
    assert opts.worker_tag_filter == f and opts.worker_tag_filter.mode == "default_and"
    back = pickle.loads(pickle.dumps(f))
    assert type(back) is TagFilter and back.tag_set == frozenset({"gpu", "cpu"}) and back.matches(None)
    assert RuntimeOptions(worker_tag_filter="any").worker_tag_filter.matches("x")
    with pytest.raises(AttributeError):
        f.mode = "any"  # type: ignore[misc]
