"""End-to-end: custom status and the per-instance key/value store (SPEC §13, §10.3)."""

from __future__ import annotations

import pytest

from duroxide_sim import OperationTimeout

from ._helpers import STYLES, events_of, kinds, pick


# --- custom status --------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_custom_status_visible_to_client_with_version(world, style):
    """set_custom_status is visible on get_status; the version increments once per turn that sets it."""

    def gen(ctx, _):
        ctx.set_custom_status("starting")
        yield ctx.wait_for_event("next")
        ctx.set_custom_status("halfway")
        ctx.set_custom_status("almost")  # two sets in one turn: one version bump
        yield ctx.wait_for_event("next")
        return "done"

    async def coro(ctx, _):
        ctx.set_custom_status("starting")
        await ctx.wait_for_event("next")
        ctx.set_custom_status("halfway")
        ctx.set_custom_status("almost")
        await ctx.wait_for_event("next")
        return "done"

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    world.run()
    st = world.client.get_status("i1")
    assert (st.status, st.custom_status, st.custom_status_version) == ("Running", "starting", 1)
    world.client.raise_event("i1", "next")
    world.run()
    st = world.client.get_status("i1")
    assert (st.custom_status, st.custom_status_version) == ("almost", 2)
    world.client.raise_event("i1", "next")
    st = world.result("i1")
    assert (st.status, st.custom_status, st.custom_status_version) == ("Completed", "almost", 2)
    assert len(events_of(world, "i1", "CustomStatusUpdated")) == 3


def test_new_instance_has_no_custom_status(world):
    """An instance that never set a status reports (None, 0)."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(1)

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert (st.custom_status, st.custom_status_version) == (None, 0)


@pytest.mark.parametrize("style", STYLES)
def test_wait_for_status_change_returns_on_new_version(world, style):
    """wait_for_status_change returns the status once its version exceeds last_seen_version."""

    def gen(ctx, _):
        for step in ("one", "two", "three"):
            ctx.set_custom_status(step)
            yield ctx.schedule_timer(60_000)
        return "end"

    async def coro(ctx, _):
        for step in ("one", "two", "three"):
            ctx.set_custom_status(step)
            await ctx.schedule_timer(60_000)
        return "end"

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    seen = []
    version = 0
    for _ in range(3):
        st = world.client.wait_for_status_change("i1", version, 10, 10**9)
        seen.append((st.custom_status, st.custom_status_version))
        version = st.custom_status_version
    assert seen == [("one", 1), ("two", 2), ("three", 3)]
    # a terminal instance also ends the wait
    st = world.client.wait_for_status_change("i1", version, 10, 10**9)
    assert st.status == "Completed"


def test_wait_for_status_change_times_out(world):
    """wait_for_status_change raises OperationTimeout when nothing changes in time."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_custom_status("only")
        yield ctx.wait_for_event("never")

    world.client.start_orchestration("i1", "O")
    world.run()
    with pytest.raises(OperationTimeout):
        world.client.wait_for_status_change("i1", 1, 10, 1_000)


@pytest.mark.parametrize("style", STYLES)
def test_reset_and_structured_custom_status(world, style):
    """A non-string status is JSON-encoded; reset_custom_status clears it (None) and bumps the version."""

    def gen(ctx, _):
        ctx.set_custom_status({"progress": 50})
        first = ctx.get_custom_status()
        yield ctx.schedule_timer(1)
        ctx.reset_custom_status()
        return [first, ctx.get_custom_status()]

    async def coro(ctx, _):
        ctx.set_custom_status({"progress": 50})
        first = ctx.get_custom_status()
        await ctx.schedule_timer(1)
        ctx.reset_custom_status()
        return [first, ctx.get_custom_status()]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.output == ['{"progress": 50}', None]
    assert (st.custom_status, st.custom_status_version) == (None, 2)


def test_custom_status_visible_on_failed_instance(world):
    """A failed instance still reports its last custom status."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_custom_status("about to fail")
        yield ctx.schedule_timer(1)
        raise RuntimeError("oops")

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.custom_status == "about to fail"


def test_custom_status_over_limit_fails_instance(world):
    """A custom status over 262144 bytes fails the instance with the SPEC §10.3 message."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_custom_status("x" * 262_145)
        yield ctx.schedule_timer(1)

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.error == "Custom status size (262145 bytes) exceeds limit (262144 bytes)"


# --- KV -------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_kv_set_get_clear_and_client_reads(world, style):
    """set/get/clear/clear_all work in the orchestration and are visible to client.get_kv_value."""

    def gen(ctx, _):
        ctx.set_kv_value("a", "1")
        ctx.set_kv_value("b", {"n": 2})  # non-strings are JSON-encoded
        ctx.set_kv_value("empty", "")
        snapshot = [ctx.get_kv_value("a"), ctx.get_kv_value("b"), ctx.get_kv_value("empty"), ctx.get_kv_value("nope")]
        yield ctx.wait_for_event("step")
        ctx.clear_kv_value("a")
        after_clear = [ctx.get_kv_all_keys(), ctx.get_kv_length()]
        yield ctx.wait_for_event("step")
        ctx.clear_all_kv_values()
        ctx.set_kv_value("final", "yes")
        return {"snapshot": snapshot, "after_clear": after_clear, "end": ctx.get_kv_all_values()}

    async def coro(ctx, _):
        ctx.set_kv_value("a", "1")
        ctx.set_kv_value("b", {"n": 2})
        ctx.set_kv_value("empty", "")
        snapshot = [ctx.get_kv_value("a"), ctx.get_kv_value("b"), ctx.get_kv_value("empty"), ctx.get_kv_value("nope")]
        await ctx.wait_for_event("step")
        ctx.clear_kv_value("a")
        after_clear = [ctx.get_kv_all_keys(), ctx.get_kv_length()]
        await ctx.wait_for_event("step")
        ctx.clear_all_kv_values()
        ctx.set_kv_value("final", "yes")
        return {"snapshot": snapshot, "after_clear": after_clear, "end": ctx.get_kv_all_values()}

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    c = world.client
    c.start_orchestration("i1", "O")
    world.run()
    assert c.get_kv_value("i1", "a") == "1"
    assert c.get_kv_value("i1", "b") == '{"n": 2}'
    assert c.get_kv_value("i1", "empty") == ""
    assert c.get_kv_value("i1", "nope") is None
    c.raise_event("i1", "step")
    world.run()
    assert c.get_kv_value("i1", "a") is None
    assert c.get_kv_all_values("i1") == {"b": '{"n": 2}', "empty": ""}
    c.raise_event("i1", "step")
    out = world.result("i1").output
    assert out == {
        "snapshot": ["1", '{"n": 2}', "", None],
        "after_clear": [["b", "empty"], 2],
        "end": {"final": "yes"},
    }
    assert c.get_kv_all_values("i1") == {"final": "yes"}


def test_kv_unknown_instance_reads_none(world):
    """KV reads for an unknown instance return None / empty."""
    assert world.client.get_kv_value("ghost", "k") is None
    assert world.client.get_kv_all_values("ghost") == {}


@pytest.mark.parametrize("style", STYLES)
def test_kv_survives_replay(world, style):
    """KV values written in earlier turns are seen on later turns (read-modify-write)."""

    def gen(ctx, n):
        for _ in range(n):
            ctx.set_kv_value("counter", str(int(ctx.get_kv_value("counter") or "0") + 1))
            yield ctx.schedule_timer(10)
        return ctx.get_kv_value("counter")

    async def coro(ctx, n):
        for _ in range(n):
            ctx.set_kv_value("counter", str(int(ctx.get_kv_value("counter") or "0") + 1))
            await ctx.schedule_timer(10)
        return ctx.get_kv_value("counter")

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", 5)
    assert world.result("i1").output == "5"
    assert world.client.get_kv_value("i1", "counter") == "5"


@pytest.mark.parametrize("style", STYLES)
def test_get_kv_value_from_other_instance(world, style):
    """ctx.get_kv_value_from_instance reads another instance's KV (None when missing)."""

    @world.runtime.register_orchestration("Owner")
    def owner(ctx, _):
        ctx.set_kv_value("config", "blue")
        yield ctx.wait_for_event("stop")

    def gen(ctx, _):
        a = yield ctx.get_kv_value_from_instance("owner", "config")
        b = yield ctx.get_kv_value_from_instance("owner", "missing")
        c = yield ctx.get_kv_value_from_instance("nobody", "config")
        return [a, b, c]

    async def coro(ctx, _):
        a = await ctx.get_kv_value_from_instance("owner", "config")
        b = await ctx.get_kv_value_from_instance("owner", "missing")
        c = await ctx.get_kv_value_from_instance("nobody", "config")
        return [a, b, c]

    world.runtime.register_orchestration("Reader", pick(style, gen, coro))
    world.client.start_orchestration("owner", "Owner")
    world.run()
    world.client.start_orchestration("reader", "Reader")
    assert world.result("reader").output == ["blue", None, None]


def test_wait_for_kv_value(world):
    """client.wait_for_kv_value returns once the key appears; times out otherwise."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(30_000)
        ctx.set_kv_value("ready", "now")
        yield ctx.schedule_timer(1)

    world.client.start_orchestration("i1", "O")
    assert world.client.wait_for_kv_value("i1", "ready", 10**9) == "now"
    with pytest.raises(OperationTimeout, match="Timed out waiting for value 'other'"):
        world.client.wait_for_kv_value("i1", "other", 1_000)


def test_kv_typed_reads(world):
    """get_kv_value_typed decodes the stored JSON into the requested type."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value("nums", [1, 2, 3])
        yield ctx.schedule_timer(1)

    world.client.start_orchestration("i1", "O")
    world.result("i1")
    assert world.client.get_kv_value_typed("i1", "nums", list[int]) == [1, 2, 3]
    assert world.client.get_kv_value_typed("i1", "missing", list[int]) is None


def test_kv_value_over_limit_fails_instance(world):
    """A KV value over 65536 bytes (the SDK's core limit, SPEC §10.3) fails the instance."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value("big", "x" * 65_536)  # exactly at the limit: fine
        yield ctx.schedule_timer(1)
        ctx.set_kv_value("huge", "y" * 65_537)
        yield ctx.schedule_timer(1)
        return "not reached"

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert st.error == "KV value for key 'huge' (65537 bytes) exceeds limit (65536 bytes)"
    assert len(world.client.get_kv_value("i1", "big")) == 65_536
    # the violating turn's events stay in history, but its work (the second timer) is discarded
    assert kinds(world, "i1") == [
        "OrchestrationStarted", "KeyValueSet", "TimerCreated", "TimerFired", "KeyValueSet", "TimerCreated",
        "OrchestrationFailed",
    ]


def test_kv_key_count_over_limit_fails_instance(world):
    """More than 150 KV keys (the SDK's core limit, SPEC §10.3) fail the instance."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        for i in range(n):
            ctx.set_kv_value(f"k{i}", "v")
        yield ctx.schedule_timer(1)
        return "ok"

    world.client.start_orchestration("fits", "O", 150)
    assert world.result("fits").output == "ok"
    world.client.start_orchestration("over", "O", 151)
    st = world.result("over")
    assert st.status == "Failed"
    assert st.error == "KV key count (151) exceeds limit (150)"


def test_kv_keys_over_1024_bytes_are_refused_where_written(world):
    """KV keys are limited to 1024 UTF-8 bytes (``MAX_KV_KEY_BYTES``), checked when the code sets
    or clears one: PostgreSQL indexes keys in btree rows that end near 2.7 KB, and such a key used
    to fail the turn there with an infrastructure error while memory and SQLite stored it. The
    code gets a ValueError naming the limit (it may handle it); reads of a longer key find
    nothing; a key of exactly 1024 bytes - multi-byte characters counted as bytes - is stored."""
    from duroxide_sim.core.context import MAX_KV_KEY_BYTES

    assert MAX_KV_KEY_BYTES == 1024
    at_limit = "\u00e9" * 512  # 1024 bytes in 512 characters
    over = "k" * 1023 + "\u00e9"  # 1025 bytes in 1024 characters

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value(at_limit, "fits")
        seen = []
        for write in (lambda: ctx.set_kv_value(over, "v"), lambda: ctx.clear_kv_value(over),
                      lambda: ctx.set_kv_value("x" * 5000, "v")):
            try:
                write()
            except ValueError as exc:
                seen.append(str(exc))
        seen.append(ctx.get_kv_value(over))
        yield ctx.schedule_timer(1)
        return seen

    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Completed", st.error
    assert len(st.output) == 4 and st.output[3] is None
    assert "is 1025 bytes; KV keys are limited to 1024 bytes" in st.output[0]
    assert "is 1025 bytes" in st.output[1] and "is 5000 bytes" in st.output[2]
    assert world.client.get_kv_value("i1", at_limit) == "fits"
    assert world.client.get_kv_value("i1", over) is None
    assert world.client.get_kv_all_values("i1") == {at_limit: "fits"}


def test_prune_kv_values_updated_before(world):
    """prune_kv_values_updated_before clears keys stamped before the cutoff and returns the count."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value("old1", "a")
        ctx.set_kv_value("old2", "b")
        yield ctx.schedule_timer(10_000)
        cutoff = yield ctx.utc_now()
        ctx.set_kv_value("new", "c")
        pruned = ctx.prune_kv_values_updated_before(cutoff)
        return [pruned, sorted(ctx.get_kv_all_keys())]

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [2, ["new"]]
    assert world.client.get_kv_all_values("i1") == {"new": "c"}


def test_kv_events_recorded_in_history(world):
    """KV mutations are recorded as KeyValueSet / KeyValueCleared / KeyValuesCleared events."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.set_kv_value("k", "v")
        ctx.clear_kv_value("k")
        ctx.clear_all_kv_values()
        yield ctx.schedule_timer(1)

    world.client.start_orchestration("i1", "O")
    world.result("i1")
    set_ev = events_of(world, "i1", "KeyValueSet")[0]
    assert set_ev["data"]["key"] == "k" and set_ev["data"]["value"] == "v"
    assert set_ev["data"]["last_updated_at_ms"] == set_ev["timestamp_ms"]
    assert events_of(world, "i1", "KeyValueCleared")[0]["data"]["key"] == "k"
    assert len(events_of(world, "i1", "KeyValuesCleared")) == 1


def test_wait_for_status_change_sees_status_set_in_final_turn(world):
    """A status set in the completing turn is visible when wait_for_status_change returns."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(10)
        ctx.set_custom_status("final")
        return 1

    world.client.start_orchestration("i1", "O")
    st = world.client.wait_for_status_change("i1", 0, 10, 10**6)
    assert (st.status, st.custom_status, st.custom_status_version) == ("Completed", "final", 1)


def test_the_empty_string_is_a_kv_key_like_any_other(world):
    """duroxide-python accepts ``""`` as a KV key (set, get, clear, client reads, reads from
    another instance); it used to fail the orchestration with a TypeError here."""

    @world.runtime.register_orchestration("EmptyKey")
    def empty_key(ctx, _):
        ctx.set_kv_value("", "blank")
        ctx.set_kv_value("k", "v")
        seen = [ctx.get_kv_value(""), sorted(ctx.get_kv_all_keys()), ctx.get_kv_length()]
        yield ctx.schedule_timer(1)
        ctx.clear_kv_value("k")
        return seen

    @world.runtime.register_orchestration("Reader")
    def reader(ctx, _):
        return (yield ctx.get_kv_value_from_instance("e", ""))

    world.client.start_orchestration("e", "EmptyKey")
    st = world.result("e")
    assert (st.status, st.output) == ("Completed", ["blank", ["", "k"], 2]), st.error
    assert world.client.get_kv_value("e", "") == "blank"
    assert world.client.get_kv_all_values("e") == {"": "blank"}
    world.client.start_orchestration("r", "Reader")
    assert world.result("r").output == "blank"
