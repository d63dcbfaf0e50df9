"""The bad-argument probe of the public API (``tests/runtime/test_generated_api_bad_input.py``,
imported as ``bp``) with ``PostgresProvider`` next to ``InMemoryProvider``. The product rule:
bad input gets a clear error naming the problem and never loses data, and the providers answer
alike (SPEC §14-§17; README "Documented limits").

What it generates
-----------------
Each example builds a ``PgPair``: the probe's world (production ``Runtime``, ``SequentialDriver``
on a ``SimClock``, ``SequentialIds``, the two bystanders - one completed, one waiting with KV,
custom status and a consumed queue message) once on an InMemoryProvider and once on a
PostgresProvider in a fresh schema (dropped at the end of the example). The values come from
the probe's strategies (bad values and valid neighbours per parameter kind), plus
PostgreSQL-minded valid neighbours: text with quotes, ``%s``/``%(x)s`` placeholders,
backslashes, ``'; DROP TABLE``, ``_%``, the verbatim-text escape marker of postgres.py
(``"\ufdd0duroxide-json:"``) as ids, names, KV keys, sessions and tags; NUL in payload strings,
KV values, custom status and cancel reasons (allowed there; PostgreSQL stores it escaped);
64-bit-edge numbers (``last_seen_version`` up to 2^80, execution ids, filter/prune numbers up to
2^63 - 1, ``prune_kv_values_updated_before`` cutoffs beyond ±2^63, the longest timer).

* ``Client`` calls - the probe's methods plus ``enqueue_event_typed``, ``raise_event_persistent``,
  ``start_orchestration_versioned_typed``, ``wait_for_kv_value_typed`` - one to four per example;
* ``OrchestrationContext`` calls inside running orchestrations (the probe's methods plus
  ``schedule_orchestration_versioned``, ``start_orchestration_versioned_typed``, ``select2``,
  ``join2``), in the first or a later turn, caught by the code or not, with the instance cache
  on or off (off: every turn replays over the history PostgreSQL decodes from JSON);
* odd-but-valid inputs that must round-trip (ids, names, payloads, KV, custom status,
  sub-orchestration ids; the probe's limit values; NUL and the escape marker), cache on or off;
* ``ActivityContext``: ``trace_*`` of anything and ``get_client()`` with bad ids (the probe's
  property), and any generated client call made from inside an activity.

What it checks
--------------
Memory and PostgreSQL answer every call identically (exception class and message, or the
result); a bad argument is refused naming the parameter, a valid one is accepted (or answers a
domain error); no psycopg error, no encoding error, no other internal exception reaches a
caller; the dispatcher never raises and the run goes quiet within 3,000 steps (a livelock is a
StuckError); afterwards both stores show the same instances, queue depths, system metrics and,
per instance, status, info, executions, execution info, histories, KV, tree and stats; the
bystanders are unchanged and the waiting one still completes; ``check_well_formed`` and the
PostgreSQL schema's own ``_check`` pass.

What it found
-------------
* ``test_a_runtime_id_no_store_can_hold_is_refused_at_construction`` (fixed; failed before):
  ``Runtime(..., runtime_id=...)`` took
  a NUL, a lone surrogate or an int; it is the worker identity PostgreSQL binds into every
  worker fetch, so there no activity ever runs (ProviderError on each fetch, a hang under
  ``rt.start()``) while InMemoryProvider completes the same workflow. Found by reading where
  the properties' fixed ``runtime_id="rt-probe"`` goes, after they came out clean.

The properties found no difference between the providers: the default run, a hunt of 400 random
examples per property on the final properties (2,000 examples) and two 300-example hunts on
drafts passed. Pinned as observed
(``test_pinned_*``): the known PostgreSQL limit (incompressible instance ids over ~2.7 KB; the
generators keep valid ids short or compressible) is met by the client as a permanent
ProviderError at the call, nothing stored.

Knobs: ``DX_API_BAD_INPUT_PG_EXAMPLES`` (default 50 per property; about 50 s in all),
``DX_API_BAD_INPUT_PG_RANDOM=1`` (not derandomized: a new hunt each run). The server:
``pg_url`` (``DUROXIDE_PG_URL``, else a private server started on first use).
"""

from __future__ import annotations

import itertools
import os
import random
import string
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import psycopg
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from duroxide_sim import Client, InMemoryProvider, InstanceFilter, PruneOptions, Runtime, RuntimeOptions
from duroxide_sim.core.context import MAX_TIMER_DELAY_MS
from duroxide_sim.core.turn import LIMITS
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.runtime.client import MAX_INSTANCE_ID_BYTES
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from tests.providers.conftest import drop_schemas
from tests.runtime import test_generated_api_bad_input as bp

EXAMPLES = int(os.environ.get("DX_API_BAD_INPUT_PG_EXAMPLES", "50"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    derandomize=os.environ.get("DX_API_BAD_INPUT_PG_RANDOM") != "1",
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
#: A livelock shows as StuckError long before the in-memory world's 20,000 steps.
PG_MAX_STEPS = 3_000

_RUN = uuid.uuid4().hex[:6]
_SCHEMAS = itertools.count(1)

#: Text PostgreSQL treats specially (quotes, placeholders, backslashes, the verbatim-text escape
#: marker of postgres.py ``_ESCAPED``, LIKE wildcards); all valid wherever text is valid.
PG_HOSTILE = ["it's \"q\" 'x'", "%s %% %(x)s {}", "back\\slash\\\\ \\x00 \\'", "'; DROP TABLE instances; --",
              "\ufdd0duroxide-json:\"x", "\ufdd0duroxide-json:", "_%", "\\", "\ufdd0", "ünï-名-🎉-\u202e"]
PG_HOSTILE_TEXT = st.sampled_from(PG_HOSTILE)
#: Verbatim text (KV values, custom status, outputs, cancel reasons) may hold NUL: PostgreSQL
#: stores it escaped (postgres.py ``_store_text``).
NUL_OK_TEXT = st.one_of(bp.NUL_TEXT, st.builds(lambda s: "\ufdd0duroxide-json:" + s, bp.CLEAN_TEXT),
                        st.just("\x00"), PG_HOSTILE_TEXT)


# ─── a pair of worlds: memory and PostgreSQL ────────────────────────────────────────────────


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    """``bp.outcome`` with psycopg errors also counted as leaked internal errors."""

    def guarded() -> Any:
        try:
            return call()
        except psycopg.Error as exc:
            raise AssertionError(f"psycopg error leaked: {type(exc).__name__}: {exc}") from exc

    return bp.outcome(guarded)


def make_world(kind: str, url: str, schema: str, setup: Callable[[Runtime, list[Any]], None] | None,
               options: RuntimeOptions) -> bp.World:
    """``bp.make_world`` on an InMemoryProvider or a PostgresProvider in ``schema``, under
    ``options`` (same runtime, registrations, bystanders and snapshot)."""
    clock = SimClock()
    provider = (InMemoryProvider(clock) if kind == "memory"
                else PostgresProvider.connect_with_schema(url, schema, clock=clock, max_connections=4))
    try:
        return bp.make_world(kind, None, setup, provider=provider, clock=clock, options=options,
                             max_steps=20_000 if kind == "memory" else PG_MAX_STEPS)
    except BaseException:
        getattr(provider, "close", lambda: None)()
        raise


def _instance_views(c: Client, inst: str) -> tuple[Any, ...]:
    """Everything the client shows of one instance (the memory/SQLite probe compares the status)."""
    executions = c.list_executions(inst)
    return (c.get_status(inst), c.get_instance_info(inst), executions,
            [(c.get_execution_info(inst, e), c.read_execution_history(inst, e)) for e in executions],
            c.get_kv_all_values(inst), c.get_instance_tree(inst), c.get_orchestration_stats(inst))


class PgPair(bp.Pair):
    """``bp.Pair`` with PostgreSQL (a fresh schema, dropped at ``close``) in place of SQLite."""

    def __init__(self, url: str, setup: Callable[[Runtime, list[Any]], None] | None = None,
                 options: RuntimeOptions = bp.OPTIONS) -> None:
        self.url = url
        self.schema = f"dx_abi_{os.getpid()}_{_RUN}_{next(_SCHEMAS)}"
        self.worlds = []
        try:
            for kind in ("memory", "postgres"):
                self.worlds.append(make_world(kind, url, self.schema, setup, options))
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for w in self.worlds:
            if w.kind == "postgres":
                w.provider.close()
        drop_schemas(self.url, [self.schema])

    def run(self, where: str) -> None:
        for w in self.worlds:
            try:
                w.run()
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"{where}: the dispatcher raised on {w.kind}: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        """Run out, compare the providers' final views and statuses, check the bystanders."""
        self.run("finish")
        mem, pg = self.worlds
        assert mem.views() == pg.views(), f"memory {mem.views()} != postgres {pg.views()}"
        for inst in mem.client.list_all_instances():
            a, b = _instance_views(mem.client, inst), _instance_views(pg.client, inst)
            assert a == b, f"{inst!r}: memory {a} != postgres {b}"
        for w in self.worlds:
            bp.verify_bystanders(w)


# ─── property 1-4 for the Client ───────────────────────────────────────────────────────────

#: Extra valid neighbours PostgreSQL might treat differently: NUL in cancel reasons (the
#: README allows it there), hostile text as ids/names/keys, extreme filter numbers.
PG_NEIGHBOURS: dict[str, st.SearchStrategy[Any]] = {
    "start_id": PG_HOSTILE_TEXT.map(lambda s: "z-" + s),
    "id": PG_HOSTILE_TEXT.map(lambda s: "z-" + s),
    "signal_id": PG_HOSTILE_TEXT.map(lambda s: "z-" + s),
    "name": PG_HOSTILE_TEXT,
    "payload": st.one_of(NUL_OK_TEXT, st.just({"\x00": "\x00"}), st.just(2**200), st.just(-(2**70))),
    "reason": NUL_OK_TEXT,
    "kv_key": PG_HOSTILE_TEXT,
    "count": st.sampled_from([2**63 - 1, 2**63, 2**64, 2**80]),
    "exec": st.sampled_from([2**31, 2**63 - 1]),
    "exec_opt": st.sampled_from([2**31, 2**63 - 1]),
    "ms": st.sampled_from([0, 1]),
    "poll": st.sampled_from([1, 2**31, 2**63 - 1]),
    "filter": st.builds(lambda ids, before, limit: InstanceFilter(instance_ids=ids, completed_before=before, limit=limit),
                        st.lists(PG_HOSTILE_TEXT.map(lambda s: "z-" + s), min_size=1, max_size=3),
                        st.sampled_from([None, 0, 2**31, 2**63 - 1]), st.sampled_from([None, 0, 1, 2**63 - 1])),
    "options": st.builds(lambda k, b: PruneOptions(keep_last=k, completed_before=b),
                         st.sampled_from([None, 0, 1, 2**31, 2**63 - 1]), st.sampled_from([None, 0, 2**63 - 1])),
}


#: Client methods the memory/SQLite probe does not vary (same argument kinds).
EXTRA_CLIENT_METHODS: list[tuple[str, list[Any], list[str | None]]] = [
    ("enqueue_event_typed", ["by-wait", "e-other", 1], ["signal_id", "name", "payload"]),
    ("raise_event_persistent", ["by-wait", "e-other", 1], ["signal_id", "name", "payload"]),
    ("start_orchestration_versioned_typed", ["z-new", "Child", 1, "1.0.0"], ["start_id", "name", "payload", "version"]),
    ("wait_for_kv_value_typed", ["by-done", "by", 0], ["id", "kv_key", "ms"]),
]
CLIENT_METHODS = [*bp.CLIENT_METHODS, *EXTRA_CLIENT_METHODS]


@st.composite
def pg_client_calls(draw: Any) -> tuple[str, list[Any], str, bool]:
    """``bp.client_calls`` over ``CLIENT_METHODS``; a valid neighbour is drawn from
    ``PG_NEIGHBOURS`` half of the time when there is one for the kind."""
    method, args, kinds = draw(st.sampled_from(CLIENT_METHODS))
    pos = draw(st.sampled_from([i for i, k in enumerate(kinds) if k is not None]))
    kind = kinds[pos]
    assert kind is not None
    bad_values, neighbours, _ = bp.CLIENT_KINDS[kind]
    bad = draw(st.booleans())
    if not bad and kind in PG_NEIGHBOURS and draw(st.booleans()):
        neighbours = PG_NEIGHBOURS[kind]
    args = list(args)
    args[pos] = draw(bad_values if bad else neighbours)
    return method, args, kind, bad


def _check_answers(where: str, kind: str, bad: bool, answers: list[tuple[str, Any]]) -> None:
    assert answers[0] == answers[1], f"{where}: memory {answers[0]} != postgres {answers[1]}"
    name, message = answers[0]
    if bad:
        assert name != "ok", f"{where}: a bad {kind} was accepted"
        assert name not in bp.DOMAIN_ERRORS, f"{where}: a bad {kind} answered {name}: {message}"
        words = bp.CLIENT_KINDS[kind][2]
        assert any(word in message for word in words), f"{where}: {name}: {message!r} names none of {words}"
        assert len(message) < 2_000, f"{where}: a {len(message)}-character message"
    else:
        assert name == "ok" or name in bp.DOMAIN_ERRORS, f"{where}: a valid {kind} was refused: {name}: {message}"


@SETTINGS
@given(calls=st.lists(pg_client_calls(), min_size=1, max_size=4))
def test_client_refuses_bad_arguments_alike_on_postgres(pg_url: str, calls: list[tuple[str, list[Any], str, bool]]) -> None:
    """Each generated call on memory and PostgreSQL: a bad argument is refused with an allowed
    error class naming the parameter, identically, changing nothing; a valid neighbour (the
    memory/SQLite probe's, plus PostgreSQL-hostile text, NUL in reasons and payload strings,
    64-bit-edge numbers) is accepted - or answers a domain error - identically. Afterwards the
    bystanders are intact and both providers hold the same instances and statuses."""
    pair = PgPair(pg_url)
    try:
        for method, args, kind, bad in calls:
            answers = []
            for w in pair.worlds:
                before = w.views()
                answer = outcome(lambda w=w, method=method, args=args: getattr(w.client, method)(*args))
                if answer[0] != "ok" and answer[0] not in bp.DOMAIN_ERRORS:
                    assert w.views() == before, f"{w.kind}: refused {method} changed the store"
                answers.append(answer)
            where = f"{method}({', '.join(bp._short(a) for a in args)}) [{kind}]"
            _check_answers(where, kind, bad, answers)
            pair.run(where)
        pair.finish()
    finally:
        pair.close()


# ─── property 1-4 inside orchestrations ─────────────────────────────────────────────────────

PG_CTX_NEIGHBOURS: dict[str, st.SearchStrategy[Any]] = {
    "act_name": PG_HOSTILE_TEXT,
    "orch_name": PG_HOSTILE_TEXT,
    "event": PG_HOSTILE_TEXT,
    "queue": PG_HOSTILE_TEXT,
    "payload": st.one_of(NUL_OK_TEXT, st.just({"\x00k": ["\x00"]})),
    "session": PG_HOSTILE_TEXT,
    "session_opt": PG_HOSTILE_TEXT,
    "child_id": PG_HOSTILE_TEXT.map(lambda s: "k-" + s),
    "root_id": PG_HOSTILE_TEXT.map(lambda s: "d-" + s),
    "kv_key": PG_HOSTILE_TEXT,
    "text": NUL_OK_TEXT,
    "int": st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**70, -(2**70)]),
    "delay": st.sampled_from([MAX_TIMER_DELAY_MS, MAX_TIMER_DELAY_MS - 1, 2**31]),
    "tag": PG_HOSTILE_TEXT,
}


CTX_KINDS = {**bp.CTX_KINDS,
             "task": (st.sampled_from([1, "task", None, b"t", {}, [bp.TIMER]]), st.just(bp.TIMER), ("takes tasks",))}
#: OrchestrationContext methods the memory/SQLite probe does not vary.
EXTRA_CTX_METHODS: list[tuple[str, list[Any], list[str | None]]] = [
    ("schedule_orchestration_versioned", ["Child", "1.0.0", "det", 1], [None, "version_opt", "root_id", "payload"]),
    ("start_orchestration_versioned_typed", ["Child", "1.0.0", "det", 1], [None, "version_opt", "root_id", "payload_typed"]),
    ("select2", [bp.TIMER, bp.TIMER], ["task", "task"]),
    ("join2", [bp.TIMER, bp.TIMER], ["task", "task"]),
]
CTX_METHODS = [*bp.CTX_METHODS, *EXTRA_CTX_METHODS]


@st.composite
def pg_ctx_calls(draw: Any) -> tuple[str, list[Any], str, bool, bool]:
    """``bp.ctx_calls`` over ``CTX_METHODS``, with ``PG_CTX_NEIGHBOURS`` as for the client."""
    method, args, kinds = draw(st.sampled_from(CTX_METHODS))
    pos = draw(st.sampled_from([i for i, k in enumerate(kinds) if k is not None]))
    kind = kinds[pos]
    assert kind is not None
    bad_values, neighbours, _ = CTX_KINDS[kind]
    bad = draw(st.booleans())
    if not bad and kind in PG_CTX_NEIGHBOURS and draw(st.booleans()):
        neighbours = PG_CTX_NEIGHBOURS[kind]
    args = list(args)
    args[pos] = draw(bad_values if bad else neighbours)
    return method, args, kind, bad, draw(st.booleans())


#: The runtime without an instance cache: every turn replays the code over the history read
#: back from the provider (PostgreSQL: decoded from JSON; memory: the stored event objects).
REPLAY_OPTIONS = attrs.evolve(bp.OPTIONS, instance_cache_size=0)


@SETTINGS
@given(call=pg_ctx_calls(), replay=st.booleans())
def test_orchestration_context_refuses_bad_arguments_alike_on_postgres(pg_url: str, call: tuple[str, list[Any], str, bool, bool],
                                                                       replay: bool) -> None:
    """A bad argument to an OrchestrationContext call raises at the call on both providers (the
    catching instance sees an allowed class naming the problem; the other fails with it as the
    last line of its error); a valid neighbour is accepted; the dispatcher never raises; memory
    and PostgreSQL end with the same statuses; the bystanders are intact."""
    method, args, kind, bad, warmup = call
    where = (f"ctx.{method}({', '.join(bp._short(a) for a in args)}) [{kind}{', second turn' if warmup else ''}"
             f"{', replayed' if replay else ''}]")

    def setup(rt: Runtime, _effects: list[Any]) -> None:
        rt.register_orchestration("Probe", bp.probe_orchestration(method, args, warmup))

    pair = PgPair(pg_url, setup, REPLAY_OPTIONS if replay else bp.OPTIONS)
    try:
        for w in pair.worlds:
            w.client.start_orchestration("probe-caught", "Probe", True)
            w.client.start_orchestration("probe-uncaught", "Probe", False)
        pair.run(where)
        results = [(w.client.get_status("probe-caught"), w.client.get_status("probe-uncaught")) for w in pair.worlds]
        assert results[0] == results[1], f"{where}: memory {results[0]} != postgres {results[1]}"
        caught, uncaught = results[0]
        if bad:
            words = CTX_KINDS[kind][2]
            assert caught.status == "Completed" and isinstance(caught.output, dict) and "raised" in caught.output, \
                f"{where}: not refused at the call: {caught}"
            name, message = caught.output["raised"], caught.output["message"]
            assert name in bp.REFUSAL_NAMES and name not in bp.FORBIDDEN_NAMES, (where, name, message)
            assert any(word in message for word in words), f"{where}: {name}: {message!r} names none of {words}"
            assert uncaught.status == "Failed", (where, uncaught)
            assert bp._last_exception(uncaught.error or "", message) == name, (where, name, message, uncaught.error)
        else:
            for st_ in (caught, uncaught):
                assert not (isinstance(st_.output, dict) and "raised" in st_.output), f"{where}: refused: {st_.output}"
                assert "infrastructure" not in (st_.error or ""), f"{where}: {st_.error}"
        pair.finish()
    finally:
        pair.close()


# ─── property 3: valid-but-odd inputs round-trip exactly ─────────────────────────────────────

PG_NAME_TEXT = st.one_of(bp.NAME_TEXT, PG_HOSTILE_TEXT)


@SETTINGS
@given(instance=PG_NAME_TEXT.map(lambda s: "r-" + s).filter(bp._not_reserved), payload=bp.ROUND_TRIP_PAYLOADS,
       event=PG_NAME_TEXT, queue=PG_NAME_TEXT, key=st.one_of(st.just(""), PG_NAME_TEXT),
       kv=st.one_of(st.just(""), bp.CLEAN_TEXT, NUL_OK_TEXT), status=st.one_of(st.just(""), bp.CLEAN_TEXT, NUL_OK_TEXT),
       child=PG_NAME_TEXT.map(lambda s: "c-" + s).filter(bp._not_reserved),
       event_data=bp.ROUND_TRIP_PAYLOADS, queue_data=bp.ROUND_TRIP_PAYLOADS, replay=st.booleans())
@example(instance="r-::%\n名", payload="", event="go", queue="q", key="", kv="", status="", child="c-x",
         event_data=None, queue_data=[], replay=False).via("empty payloads and key")
@example(instance="r-" + "é" * (MAX_INSTANCE_ID_BYTES // 2 - 1), payload={"\ud800": "\udfff"}, event="e",
         queue="q\t", key="k", kv="v" * LIMITS["kv_value_bytes"], status="s" * LIMITS["custom_status_bytes"],
         child="c-" + "x" * (MAX_INSTANCE_ID_BYTES - 2), event_data=2**200, queue_data=-0.0, replay=True).via("values at their limits")
@example(instance="r-\ufdd0duroxide-json:1", payload="\x00", event="\ufdd0duroxide-json:", queue="%s",
         key="\ufdd0duroxide-json:\"k", kv="\x00", status="\ufdd0duroxide-json:\"s\"", child="c-'; --",
         event_data="\x00\ufdd0", queue_data={"\x00": None}, replay=True).via("NUL and the escape marker")
def test_valid_but_odd_inputs_round_trip_alike_on_postgres(pg_url: str, instance: str, payload: Any, event: str,
                                                           queue: str, key: str, kv: str, status: str, child: str,
                                                           event_data: Any, queue_data: Any, replay: bool) -> None:
    """Odd but valid ids, names, payloads, KV keys/values and custom status (PostgreSQL-hostile
    text, NUL and the escape marker in verbatim text, values at their limits) come back exactly
    through an activity, an event, a queue, KV, custom status and a sub-orchestration - the
    same status and histories on memory and PostgreSQL."""
    if instance == child:
        child = child + "-c"
    inp = {"payload": payload, "event": event, "queue": queue, "key": key, "kv": kv, "status": status, "child": child}

    def setup(rt: Runtime, _effects: list[Any]) -> None:
        rt.register_orchestration("Mirror", bp._mirror)

    pair = PgPair(pg_url, setup, REPLAY_OPTIONS if replay else bp.OPTIONS)
    try:
        seen = []
        for w in pair.worlds:
            c = w.client
            c.start_orchestration(instance, "Mirror", inp)
        pair.run("start")
        for w in pair.worlds:
            w.client.raise_event(instance, event, event_data)
            w.client.enqueue_event(instance, queue, queue_data)
        pair.run("signals")
        for w in pair.worlds:
            c = w.client
            st_ = c.get_status(instance)
            assert st_.status == "Completed", (w.kind, st_)
            expected = {"activity": payload, "event": event_data, "queue": queue_data, "child": payload,
                        "kv": kv, "status": status, "me": instance}
            assert st_.output == expected, w.kind
            assert bp._same_json(st_.output, expected), w.kind
            assert st_.custom_status == status and c.get_kv_value(instance, key) == kv, w.kind
            assert c.get_kv_all_values(instance) == {key: kv}, w.kind
            assert instance in c.list_all_instances() and c.get_instance_info(instance).instance_id == instance
            assert c.get_status(child).output == payload, w.kind
            seen.append((st_, c.read_execution_history(instance, 1), c.read_execution_history(child, 1),
                         c.get_instance_info(instance), c.get_instance_tree(instance)))
        assert seen[0] == seen[1], f"memory {seen[0]} != postgres {seen[1]}"
        pair.finish()
    finally:
        pair.close()


# ─── ActivityContext ──────────────────────────────────────────────────────────────────────


@SETTINGS
@given(message=st.one_of(bp.WRONG_TYPES, bp.NUL_TEXT, bp.SURROGATE_TEXT, bp.CLEAN_TEXT), bad_id=bp.BAD_IDS)
def test_activity_context_client_refuses_bad_ids_alike_on_postgres(pg_url: str, message: Any, bad_id: Any) -> None:
    """``trace_*`` in an activity takes any message; ``ctx.get_client()`` refuses a bad id as
    the client outside does, failing the activity with that message - the same on PostgreSQL
    (the activity's client is then a PostgreSQL client inside a worker turn)."""
    pair = PgPair(pg_url, bp.noisy_setup(message, bad_id))
    try:
        for w in pair.worlds:
            w.client.start_orchestration("noisy", "CallNoisy", None)
        pair.run("noisy")
        outs = [w.client.get_status("noisy") for w in pair.worlds]
        assert outs[0] == outs[1], f"memory {outs[0]} != postgres {outs[1]}"
        out = outs[0].output
        assert outs[0].status == "Completed" and "err" in out, outs[0]
        assert out["err"].startswith("Activity 'Noisy' call failed: InvalidInput") and "instance_id" in out["err"], out
        pair.finish()
    finally:
        pair.close()


def _classify(call: Callable[[], Any]) -> list[Any]:
    """What a client call inside an activity answered, as JSON: [class name, message or result
    repr (cut), whether the class is one that must never leak]."""
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - classified
        leaked = isinstance(exc, (*bp.FORBIDDEN, psycopg.Error))
        return [type(exc).__name__, str(exc)[:4_000], leaked]
    return ["ok", repr(result)[:4_000], False]


@SETTINGS
@given(calls=st.lists(pg_client_calls(), min_size=1, max_size=3))
def test_activity_context_client_calls_answer_alike_on_postgres(pg_url: str,
                                                               calls: list[tuple[str, list[Any], str, bool]]) -> None:
    """The generated client calls (bad and valid, as in the client property) made from inside
    an activity through ``ctx.get_client()`` (waits end at once there): each answers as it does
    outside - a bad argument refused naming it, a valid one accepted - identically on memory
    and PostgreSQL, no internal error leaks, and the activity's effects (starts, events,
    cancels, deletes of unknown ids) leave both stores alike with the bystanders intact."""

    def setup(rt: Runtime, _effects: list[Any]) -> None:
        def caller(ctx: Any, _: Any) -> Any:
            client = ctx.get_client()
            return [_classify(lambda m=m, a=a: getattr(client, m)(*a)) for m, a, _k, _b in calls]

        rt.register_activity("Caller", caller)
        rt.register_orchestration("CallsClient", lambda ctx, _: (yield ctx.schedule_activity("Caller", None)))

    pair = PgPair(pg_url, setup)
    try:
        for w in pair.worlds:
            w.client.start_orchestration("caller", "CallsClient", None)
        pair.run("caller")
        outs = [w.client.get_status("caller") for w in pair.worlds]
        assert outs[0] == outs[1], f"memory {outs[0]} != postgres {outs[1]}"
        assert outs[0].status == "Completed", outs[0]
        for (method, args, kind, bad), (name, message, leaked) in zip(calls, outs[0].output, strict=True):
            where = f"in an activity: {method}({', '.join(bp._short(a) for a in args)}) [{kind}]"
            assert not leaked, f"{where}: internal error leaked: {name}: {message}"
            _check_answers(where, kind, bad, [(name, message)] * 2)
        pair.finish()
    finally:
        pair.close()


# ─── bugs found (each fails today) ────────────────────────────────────────────────────────


def _runtime_id_run(provider: Any, clock: SimClock, runtime_id: Any) -> Any:
    """One instance scheduling one plain activity on a Runtime named ``runtime_id``: the
    refusal of ``Runtime(...)`` (kind, message), the final status, or what a dispatcher step
    raised."""
    try:
        rt = Runtime(provider, bp.OPTIONS, clock=clock, ids=SequentialIds(), runtime_id=runtime_id)
    except Exception as exc:  # noqa: BLE001 - reported
        return ("refused", type(exc).__name__, str(exc))
    driver = SequentialDriver(rt, clock, max_steps=PG_MAX_STEPS)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    rt.register_activity("Where", lambda ctx, _: ctx.worker_id)
    rt.register_orchestration("O", lambda ctx, _: (yield ctx.schedule_activity("Where", None)))
    client.start_orchestration("i", "O", None)
    try:
        driver.run_until_quiet(60_000)
    except Exception as exc:  # noqa: BLE001 - reported
        return ("raised", type(exc).__name__, str(exc))
    st_ = client.get_status("i")
    return ("ran", st_.status, st_.output)


@pytest.mark.parametrize("runtime_id", ["node\x00a", "node\udc80", 5], ids=["nul", "lone-surrogate", "int"])
def test_a_runtime_id_no_store_can_hold_is_refused_at_construction(pg_url: str, runtime_id: Any) -> None:
    """Rule: bad input gets a clear error naming the problem, and the providers answer alike
    (SPEC §15 provider parity; README "Documented limits": "Names, ids, tags, a worker's
    ``worker_node_id`` and tag filter ... must be text every store holds (no lone surrogates;
    no NUL ...) and are refused where they are given"). ``Runtime(provider, ...,
    runtime_id=...)`` (runtime/runtime.py; an SDK keyword beyond SPEC §17's ``Runtime(provider,
    options=None)``, read back as ``rt.runtime_id`` in the README's simulation notes) takes any
    value unchecked, and it is the worker identity whenever ``worker_node_id`` is unset
    (``WorkerDispatcher`` passes it to ``fetch_work_item`` as the owner id and to
    ``renew_session_lock``) - the hole the fixed ``worker_node_id`` check closed for the option.

    Was, before the fix (one instance, one plain activity, SequentialDriver): on PostgreSQL every worker
    fetch raises ``ProviderError: fetch_work_item: PostgreSQL rejected the data: PostgreSQL
    text fields cannot contain NUL (0x00) bytes`` (lone surrogate: "... a string is not valid
    Unicode and cannot be stored (surrogates not allowed at position 4)"; the int 5:
    "... operator does not exist: text <> smallint LINE 1: ... s.worker_id <> $2 ... HINT: ...",
    PostgreSQL's own SQL error text), so the activity never runs and the driver raises.
    InMemoryProvider completes the same workflow in all three cases (``ctx.worker_id`` is the
    odd value); SqliteProvider does for NUL and the int and leaks ``UnicodeEncodeError`` from
    the fetch for the lone surrogate. Under ``rt.start()`` (worker threads fetch as
    ``f"{runtime_id}-{slot}"``, so the int happens to work there) the NUL and surrogate cases
    hang: the worker dispatcher treats the error as an outage ("dispatcher provider error N of
    this outage (backing off ...)", WARNING), the maintenance thread logs "maintenance task
    failed" (``renew_session_lock``), and the instance stays Running
    (``wait_for_orchestration(id, 3000)`` timed out). Expected: ``Runtime(...)`` refuses such
    a runtime_id with a ConfigurationError naming ``runtime_id`` (as ``RuntimeOptions(
    worker_node_id=...)`` does for the same text) - or, at the least, PostgreSQL runs the
    workflow as InMemoryProvider does.

    Reproduce: ``Runtime(PostgresProvider.connect_with_schema(url, s), runtime_id="node\\x00a")``,
    register an activity and an orchestration that schedules it, start one instance, run."""
    clock = SimClock()
    mem = _runtime_id_run(InMemoryProvider(clock), clock, runtime_id)
    schema = f"dx_abi_{os.getpid()}_{_RUN}_{next(_SCHEMAS)}"
    clock = SimClock()
    provider = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
    try:
        pg = _runtime_id_run(provider, clock, runtime_id)
    finally:
        provider.close()
        drop_schemas(pg_url, [schema])
    if pg[0] == "refused":
        assert pg[1] == "ConfigurationError" and "runtime_id" in pg[2], pg
        assert mem == pg, f"memory {mem} != postgres {pg}"
    else:
        assert mem == ("ran", "Completed", runtime_id), mem
        assert pg == mem, f"memory {mem} != postgres {pg}"


# ─── PostgreSQL limits, pinned as observed ──────────────────────────────────────────────────


def test_pinned_an_incompressible_long_id_is_refused_at_the_call_on_postgres(pg_url: str) -> None:
    """The known PostgreSQL limit (tests/providers/test_postgres_hostile.py docstring:
    incompressible instance ids over ~2.7 KB exceed btree index rows), as the client meets it:
    the generators above keep their valid ids short or compressible, so it is pinned here.
    ``raise_event`` / ``start_orchestration`` to a 3,002-character random id, which the client
    accepts (under 16 KiB) and InMemoryProvider queues, are refused on PostgreSQL at the call
    with a permanent ``ProviderError`` (operation ``enqueue_for_orchestrator``, "a value is too
    large for PostgreSQL: index row size ... exceeds btree ... maximum 2704 ...") and nothing is
    stored; the bystanders are intact. (psycopg also logs "error ignored terminating
    <psycopg.Pipeline ...>: pipeline aborted" on the way.)"""
    from duroxide_sim.errors import ProviderError

    rnd = random.Random(1)
    noise = "z-" + "".join(rnd.choice(string.ascii_letters + string.digits) for _ in range(3_000))
    pair = PgPair(pg_url)
    try:
        mem, pg = pair.worlds
        pg_before = pg.views()
        for call in (lambda c: c.raise_event(noise, "e", 1), lambda c: c.start_orchestration(noise, "Child", 1)):
            assert outcome(lambda call=call: call(mem.client)) == ("ok", "None")
            with pytest.raises(ProviderError) as err:
                call(pg.client)
            assert err.value.retryable is False and err.value.operation == "enqueue_for_orchestrator"
            assert "too large for PostgreSQL" in str(err.value) and "index row size" in str(err.value)
        assert pg.views() == pg_before
        for w in pair.worlds:
            w.run()
            bp.verify_bystanders(w)
    finally:
        pair.close()
