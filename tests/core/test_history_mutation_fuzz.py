"""Generative robustness probe of replay and of history import/export (a probe, kept).

Real histories are recorded once per session (a realistic app on the SQLite provider, driven by
the sequential simulator: activities, timers, join, race, external events, a queue, a
sub-orchestration, a retry, custom status and KV, continue-as-new, failures, and instances left
waiting), exported, then mutated with Hypothesis (derandomized): events dropped, duplicated,
swapped, retyped; ids, source ids, names, inputs, payloads, timestamps and execution ids changed
to hostile values (invalid JSON, huge or deeply nested strings, wrong JSON types, nulls);
truncated; the orchestration renamed. The mutants go to

* the replay engine (``execute_turn`` with no or with stray messages) and the CI replay
  (``replay_documents`` behind ``assert_replays`` / ``replay_source``);
* ``import_documents`` and ``duroxide-sim import`` (also corrupted at the JSON text level);
* ``duroxide-sim show`` (in-process) and ``duroxide-sim replay`` (a subprocess, few examples).

Properties: only documented errors (``DuroxideError`` and its subclasses - a
``SerializationError`` or ``InvalidInputError`` naming the problem - or a result/exit code 2),
never an internal ``AttributeError``/``KeyError``/``TypeError``/``IndexError``/
``RecursionError``, never a hang; an import that fails leaves the target database as it was;
what imports exports back unchanged; an unmutated history replays clean; a history whose
recorded schedule the code would not make now is a divergence naming that event.

The last three tests pin what the probe found in import (each failed before its fix): a document
the reader accepted but the provider refused (a partial import), an import into a provider without
a clock (a half-restored instance), queued work for other instances accepted.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import io
import json
import pathlib
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from functools import lru_cache
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim import Client, RetryPolicy, Runtime
from duroxide_sim.cli import main as cli
from duroxide_sim.core.events import (
    ActivityCompletedMsg,
    ActivityFailedMsg,
    ApplicationError,
    CancelInstance,
    ExternalRaised,
    QueueMessage,
    SubOrchCompletedMsg,
    TimerFiredMsg,
    from_dict,
    to_dict,
)
from duroxide_sim.core.registry import Registry
from duroxide_sim.core.replay import TurnInput, TurnResult, execute_turn
from duroxide_sim.errors import DuroxideError, SerializationError
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.history_io import (
    check_document,
    export_instance,
    export_to_path,
    import_documents,
    queued_by_instance,
)
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.testing.replay import build_registry, replay_documents, replay_source

HERE = pathlib.Path(__file__).resolve()
#: Every file this module writes goes under one temporary directory, removed at exit.
_TMP = pathlib.Path(tempfile.mkdtemp(prefix="hist-fuzz-"))
atexit.register(shutil.rmtree, _TMP, True)
REPO = HERE.parents[2]
APP_REF = f"{HERE}:register"

# --------------------------------------------------------------------------------------------
# The app (also loaded by `duroxide-sim replay --app <this file>:register`)
# --------------------------------------------------------------------------------------------

_FLAKY: dict[str, int] = {}


def register(rt: Any) -> None:
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Double")
    def double(ctx, x):
        return x * 2

    @rt.register_activity("Flaky")
    def flaky(ctx, x):
        _FLAKY[x] = _FLAKY.get(x, 0) + 1
        if _FLAKY[x] < 2:
            raise RuntimeError("transient")
        return x

    @rt.register_activity("Boom")
    def boom(ctx, x):
        raise ValueError(f"boom {x}")

    @rt.register_orchestration("Child")
    def child(ctx, x):
        r = yield ctx.schedule_activity("Double", x)
        return r + 1

    @rt.register_orchestration("Main")
    def main(ctx, x):
        ctx.set_custom_status({"stage": "start"})
        ctx.set_kv_value("k", str(x))
        a = yield ctx.schedule_activity("Echo", x)
        yield ctx.schedule_timer(1000)
        both = yield ctx.join([ctx.schedule_activity("Double", a), ctx.schedule_sub_orchestration("Child", a)])
        won = yield ctx.select2(ctx.schedule_timer(60_000), ctx.wait_for_event("go"))
        r = yield ctx.schedule_activity_with_retry("Flaky", f"f{x}", RetryPolicy(max_attempts=3))
        ctx.set_custom_status({"stage": "done"})
        ctx.clear_kv_value("k")
        return {"a": a, "both": both, "won": won.winner, "r": r}

    @rt.register_orchestration("Loop")
    def loop(ctx, n):
        ctx.set_kv_value("n", str(n))
        yield ctx.schedule_activity("Echo", n)
        if n < 2:
            return (yield ctx.continue_as_new(n + 1))
        return n

    @rt.register_orchestration("Fails")
    def fails(ctx, x):
        try:
            yield ctx.schedule_activity("Boom", x)
        except Exception:  # noqa: BLE001
            pass
        yield ctx.schedule_activity("Boom", x + 1)

    @rt.register_orchestration("Waits")
    def waits(ctx, x):
        y = yield ctx.schedule_activity("Echo", x)
        e = yield ctx.wait_for_event("approve")
        return [y, e]

    @rt.register_orchestration("Queue")
    def queue(ctx, x):
        m = yield ctx.dequeue_event("inbox")
        yield ctx.utc_now()
        yield ctx.new_guid()
        return m

    @rt.register_orchestration("DropChild")
    def drop_child(ctx, x):
        # a race the timer wins: the child is dropped (SubOrchestrationCancelRequested), then a
        # detached start
        won = yield ctx.select2(ctx.schedule_sub_orchestration("Slow", x), ctx.schedule_timer(10))
        yield ctx.start_orchestration("Child", f"detached-{x}", x)
        return won.winner

    @rt.register_orchestration("Slow")
    def slow(ctx, x):
        yield ctx.schedule_timer(10_000_000)
        return x

    @rt.register_orchestration("Racer")
    def racer(ctx, x):
        # left mid-way: a race of a long timer and an event, plus a queued activity
        won = yield ctx.select2(ctx.schedule_timer(3_600_000), ctx.wait_for_event("never"))
        return won.winner


# --------------------------------------------------------------------------------------------
# Recording (once per session)
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _recording() -> tuple[pathlib.Path, dict[str, dict[str, Any]]]:
    """(the SQLite file, {instance: export document}) of a realistic run."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="hist-fuzz-", dir=_TMP))
    db = root / "app.db"
    clock = SimClock()
    provider = SqliteProvider.open(str(db), clock=clock)
    rt = Runtime(provider, clock=clock, ids=SequentialIds())
    register(rt)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("m1", "Main", 3)
    client.start_orchestration("loop", "Loop", 0)
    client.start_orchestration("fails", "Fails", 1)
    client.start_orchestration("waits", "Waits", 5)
    client.start_orchestration("q", "Queue", 5)
    client.start_orchestration("drop", "DropChild", 2)
    client.enqueue_event("q", "inbox", "hello")
    driver.run_until_idle()
    client.raise_event("m1", "go", "yes")
    driver.run_until_quiet()
    client.start_orchestration("racer", "Racer", 1)  # left waiting (timer not yet due)
    driver.run_until_idle()
    # Work still queued when the export is taken: an event raised to "waits", the racer's timer,
    # and "pending"'s activity (its turn ran, its worker did not).
    client.start_orchestration("pending", "Waits", 7)
    while provider.latest_execution_id("pending") is None:
        assert rt.orchestration_dispatcher.step()
    client.raise_event("waits", "approve", {"by": "probe"})
    queued = queued_by_instance(provider)
    docs = {i: export_instance(provider, i, queued) for i in reversed(provider.list_instances())}
    provider.close()
    return db, docs


def _docs() -> dict[str, dict[str, Any]]:
    return _recording()[1]


@lru_cache(maxsize=1)
def _registry() -> Registry:
    return build_registry(register)


INSTANCES = ["m1", "loop", "fails", "waits", "q", "m1::sub::10", "racer", "pending", "drop", "drop::sub::2", "detached-2"]

# --------------------------------------------------------------------------------------------
# Guards
# --------------------------------------------------------------------------------------------

#: Internal errors: a crash of the code, not a documented refusal.
INTERNAL = (AttributeError, KeyError, TypeError, IndexError, RecursionError, AssertionError, UnboundLocalError,
            NameError, ZeroDivisionError, OverflowError, StopIteration, UnicodeError)


class _Hang(Exception):
    pass


@contextlib.contextmanager
def _deadline(seconds: float):
    """Fail (instead of hanging) a call that takes more than ``seconds``."""

    def on_alarm(signum, frame):  # noqa: ARG001
        raise _Hang(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _documented(call, *args, **kw):
    """Run ``call``; a documented refusal (a DuroxideError) is returned as the exception; an
    internal error fails the test naming it."""
    with _deadline(20):
        try:
            return call(*args, **kw)
        except DuroxideError as exc:
            assert str(exc).strip(), f"{type(exc).__name__} with no message"
            return exc
        except INTERNAL as exc:  # pragma: no cover - a finding
            raise AssertionError(f"internal {type(exc).__name__} escaped {call.__name__}: {exc!r}"[:2000]) from exc


# --------------------------------------------------------------------------------------------
# Mutations (on the JSON documents)
# --------------------------------------------------------------------------------------------

HOSTILE_TEXT = [
    "", "null", "{", "[1,2", "}", "\"unterminated", "NaN", "1e999", "-0", "99999999999999999999999",
    "[" * 5000, "[" * 100_000, '{"a":' * 3000, "x" * 200_000, "\x00", "\ud800", "😀\n\r\t", "true", "[]", "{}",
    '"a"', "0", "-1", " 7 ", "\"\\ud800\"",
]
HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2, 3, 5, 10, 2**63 - 1, 2**63, -(2**63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=12),
    st.lists(st.integers(), max_size=3),
    st.sampled_from([{}, {"type": "Application"}, {"type": "Application", "kind": "ActivityFailed", "message": 5},
                     {"type": "Poison"}, {"type": "Nope"}, [["a", "b"]], [["a"]], [[1, 2]], "details"]),
)
FIELDS = ["event_id", "source_event_id", "execution_id", "instance_id", "timestamp_ms", "name", "input", "result",
          "output", "data", "details", "fire_at_ms", "version", "key", "value", "instance", "reason", "status",
          "kind", "duroxide_version", "carry_forward_events", "parent_instance", "parent_id", "session_id", "tag",
          "last_updated_at_ms", "bogus"]
KINDS = ["OrchestrationStarted", "OrchestrationCompleted", "OrchestrationFailed", "OrchestrationContinuedAsNew",
         "ActivityScheduled", "ActivityCompleted", "ActivityFailed", "TimerCreated", "TimerFired",
         "ExternalSubscribed", "ExternalEvent", "SubOrchestrationScheduled", "SubOrchestrationCompleted",
         "SubOrchestrationFailed", "CustomStatusUpdated", "KeyValueSet", "KeyValueCleared", "KeyValuesCleared",
         "ExternalSubscribedPersistent", "ExternalEventPersistent", "OrchestrationCancelRequested",
         "ActivityCancelRequested", "ExternalSubscribedCancelled", "OrchestrationChained", "Unknown"]

MUTATION = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("dup"), st.integers(0, 40)),
    st.tuples(st.just("swap"), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("set"), st.integers(0, 40), st.sampled_from(FIELDS), HOSTILE_VALUES),
    st.tuples(st.just("del"), st.integers(0, 40), st.sampled_from(FIELDS)),
    st.tuples(st.just("rekind"), st.integers(0, 40), st.sampled_from(KINDS)),
    st.tuples(st.just("truncate"), st.integers(0, 40)),
    st.tuples(st.just("wrong_completion"), st.integers(0, 40), st.sampled_from(
        ["TimerFired", "ActivityCompleted", "ActivityFailed", "SubOrchestrationCompleted", "ExternalEvent"])),
    st.tuples(st.just("orch"), st.sampled_from(["name", "version"]), st.sampled_from(["Nope", "", "Main", "Loop", "9.9.9",
                                                                                        "1.0.0", "x" * 300])),
    st.tuples(st.just("exec_id"), HOSTILE_VALUES),
)
#: Changes to a document's own fields and to the work it carries (``queued``).
DOC_MUTATION = st.one_of(
    st.tuples(st.just("top"), st.sampled_from(["instance_id", "orchestration_name", "orchestration_version", "kv_base",
                                               "instance", "queued", "format", "version", "executions"]),
              st.one_of(HOSTILE_VALUES, st.sampled_from([{"k": ["v", 1]}, {"k": ["v", 2**63]}, {"created_at": -1},
                                                         {"created_at": 2**63 - 1}, {"order": 3, "bogus": 1},
                                                         {"custom_status_version": 0}, [{"kind": "CancelInstance"}],
                                                         [{"kind": "ActivityExecute"}], ["x"]]))),
    st.tuples(st.just("qset"), st.integers(0, 5), st.sampled_from(["instance", "id", "execution_id", "fire_at_ms", "name",
                                                                   "data", "input", "kind", "session_id", "bogus"]),
              HOSTILE_VALUES),
    st.tuples(st.just("qtarget"), st.sampled_from(["fails", "victim", "m1"])),
    st.tuples(st.just("qadd"), st.sampled_from([
        {"kind": "ExternalRaised", "instance": "fails", "name": "n", "data": "1"},
        {"kind": "CancelInstance", "instance": "fails", "reason": "forged"},
        {"kind": "TimerFired", "instance": "x", "execution_id": 1, "id": 1, "fire_at_ms": 2**63 - 1},
        {"kind": "ActivityExecute", "instance": "victim", "execution_id": 1, "id": 1, "name": "Echo", "input": "1"},
        {"kind": "StartOrchestration", "instance": "new-one", "orchestration": "Main", "input": "1"},
    ])),
)

#: Type-preserving changes (they pass the reader's field checks and reach the engine).
HOSTILE_INTS = st.one_of(st.integers(-3, 40), st.sampled_from([2**63 - 1, -(2**63), 2**62, 10**15]))
TYPED_MUTATION = st.one_of(
    st.tuples(st.just("tset"), st.integers(0, 40), st.integers(0, 20), st.one_of(st.sampled_from(HOSTILE_TEXT),
                                                                                  st.text(max_size=8)), HOSTILE_INTS),
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("dup"), st.integers(0, 40)),
    st.tuples(st.just("swap"), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("truncate"), st.integers(1, 40)),
    st.tuples(st.just("wrong_completion"), st.integers(0, 40), st.sampled_from(
        ["TimerFired", "ActivityCompleted", "ActivityFailed", "SubOrchestrationCompleted", "ExternalEvent"])),
    st.tuples(st.just("orch"), st.sampled_from(["name", "version"]), st.sampled_from(["Nope", "Main", "Loop", "9.9.9",
                                                                                        "1.0.0", "Child"])),
)


def _apply(doc: dict[str, Any], mutations: list[tuple], renumber: bool) -> dict[str, Any]:
    """A mutated deep copy of ``doc`` (mutations on its last execution's events; ``renumber``:
    event ids made consecutive again, so structural mutants get past the id-order check)."""
    doc = copy.deepcopy(doc)
    ex = doc["executions"][-1]
    evs: list[Any] = ex["events"]
    for m in mutations:
        op = m[0]
        n = len(evs)
        if op == "orch":
            first = (doc["executions"][0]["events"] or [None])[0]
            if isinstance(first, dict):
                first[m[1]] = m[2]
            doc["orchestration_" + m[1]] = m[2]
            continue
        if op == "exec_id":
            ex["execution_id"] = m[1]
            continue
        if op in ("top", "qset", "qtarget", "qadd"):
            queued = doc.get("queued")
            if op == "top":
                doc[m[1]] = copy.deepcopy(m[2])
            elif op == "qadd":
                doc["queued"] = [*(queued if isinstance(queued, list) else []), dict(m[1])]
            elif isinstance(queued, list) and queued and isinstance(queued[0], dict):
                item = queued[(m[1] if op == "qset" else 0) % len(queued)]
                if isinstance(item, dict):
                    if op == "qset":
                        item[m[2]] = m[3]
                    else:
                        item["parent_instance" if "parent_instance" in item else "instance"] = m[1]
            continue
        if n == 0:
            continue
        i = m[1] % n
        if op == "drop":
            del evs[i]
        elif op == "dup":
            evs.insert(i + 1, copy.deepcopy(evs[i]))
        elif op == "swap":
            j = m[2] % n
            evs[i], evs[j] = evs[j], evs[i]
        elif op == "set" and isinstance(evs[i], dict):
            evs[i][m[2]] = m[3]
        elif op == "tset" and isinstance(evs[i], dict):
            names = sorted(k for k in evs[i] if k not in ("kind", "event_id", "instance_id", "execution_id"))
            if names:
                name = names[m[2] % len(names)]
                old = evs[i][name]
                if isinstance(old, str):
                    evs[i][name] = m[3]
                elif type(old) is int:
                    evs[i][name] = m[4]
        elif op == "del" and isinstance(evs[i], dict):
            evs[i].pop(m[2], None)
        elif op == "rekind" and isinstance(evs[i], dict):
            evs[i]["kind"] = m[2]
        elif op == "truncate":
            del evs[i:]
        elif op == "wrong_completion":
            # a completion of the wrong kind for the id of the i-th event (usually a schedule)
            src = evs[i].get("event_id", 1) if isinstance(evs[i], dict) else 1
            extra = {"TimerFired": {"fire_at_ms": 0}, "ActivityCompleted": {"result": "1"},
                     "SubOrchestrationCompleted": {"result": "1"}, "ExternalEvent": {"name": "go", "data": "1"},
                     "ActivityFailed": {"details": {"type": "Application", "kind": "ActivityFailed", "message": "m"}}}[m[2]]
            evs.append({"kind": m[2], "event_id": 0, "source_event_id": src if m[2] != "ExternalEvent" else None,
                        "instance_id": doc["instance_id"], "execution_id": ex["execution_id"], "timestamp_ms": 1,
                        **extra})
            if evs[-1]["source_event_id"] is None:
                del evs[-1]["source_event_id"]
    if renumber:
        for k, e in enumerate(evs):
            if isinstance(e, dict):
                e["event_id"] = k + 1
    return doc


def _canonical(doc: dict[str, Any]) -> dict[str, Any]:
    return {**doc, "executions": [{"execution_id": ex["execution_id"],
                                   "events": [to_dict(from_dict(e, "event")) for e in ex["events"]]}
                                  for ex in doc["executions"]]}


def _validated(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The document when it passes the reader's validation, None when refused (documented)."""
    got = _documented(check_document, doc, "probe")
    return None if isinstance(got, DuroxideError) else got


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------


def test_recording_covers_the_feature_list() -> None:
    docs = _docs()
    assert sorted(docs) == sorted(INSTANCES)
    kinds = {e["kind"] for d in docs.values() for ex in d["executions"] for e in ex["events"]}
    for k in ("ActivityScheduled", "ActivityFailed", "TimerFired", "SubOrchestrationCompleted", "ExternalEvent",
              "ExternalSubscribedCancelled", "CustomStatusUpdated", "KeyValueSet", "KeyValueCleared",
              "OrchestrationContinuedAsNew", "OrchestrationFailed", "ExternalSubscribedPersistent"):
        assert k in kinds, k
    assert len(docs["loop"]["executions"]) == 3
    assert not any(e["kind"].startswith("Orchestration") and e["kind"] != "OrchestrationStarted"
                   for e in docs["racer"]["executions"][-1]["events"])  # in flight


def test_unmutated_histories_replay_clean_from_db_and_export(tmp_path: pathlib.Path) -> None:
    db, _ = _recording()
    assert replay_source(str(db), register) == []
    export_to_path(SqliteProvider.snapshot_of(db), tmp_path / "out")
    assert replay_source(str(tmp_path / "out"), register) == []
    assert replay_documents(list(_docs().values()), _registry()) == []


def test_unmutated_documents_import_and_export_back_identically(tmp_path: pathlib.Path) -> None:
    target = SqliteProvider.open(str(tmp_path / "t.db"), clock=SimClock())
    docs = list(copy.deepcopy(_docs()).values())
    assert import_documents(target, docs) == sum(len(d["executions"]) for d in docs)
    for d in docs:
        back = export_instance(target, d["instance_id"])
        assert back["executions"] == d["executions"]


# --------------------------------------------------------------------------------------------
# (a) the replay engine and the CI replay
# --------------------------------------------------------------------------------------------


def _stray_messages(instance: str, execution_id: int, ids: list[int]) -> list[Any]:
    out: list[Any] = []
    for k, sid in enumerate(ids):
        out.append([
            ActivityCompletedMsg(instance=instance, execution_id=execution_id, id=sid, result="[" * 3000),
            ActivityFailedMsg(instance=instance, execution_id=execution_id, id=sid,
                              details=ApplicationError(kind="ActivityFailed", message="x")),
            TimerFiredMsg(instance=instance, execution_id=execution_id, id=sid, fire_at_ms=0),
            SubOrchCompletedMsg(parent_instance=instance, parent_execution_id=execution_id, parent_id=sid, result="{"),
            ExternalRaised(instance=instance, name="go", data="\ud800"),
            QueueMessage(instance=instance, name="inbox", data="null"),
            CancelInstance(instance=instance, reason="probe"),
        ][k % 7])
    return out


@settings(derandomize=True, max_examples=350, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(instance=st.sampled_from(INSTANCES), mutations=st.one_of(st.lists(MUTATION, min_size=1, max_size=4),
                                                                 st.lists(TYPED_MUTATION, min_size=1, max_size=4)),
       renumber=st.booleans(), stray=st.lists(st.integers(-2, 30), max_size=3))
def test_mutated_histories_replay_with_only_documented_outcomes(instance, mutations, renumber, stray) -> None:
    doc = _validated(_apply(_docs()[instance], mutations, renumber))
    if doc is None:
        return
    reg = _registry()
    got = _documented(replay_documents, [doc], reg)
    if not isinstance(got, DuroxideError):
        assert isinstance(got, list)
        for d in got:
            assert d.render()
    # The engine itself, with the history as a live turn would fetch it and stray messages.
    ex = doc["executions"][-1]
    events = [from_dict(e, "event") for e in ex["events"]]
    inp = TurnInput(instance=instance, execution_id=ex["execution_id"], orchestration_name=events[0].name,
                    version=events[0].version, history=events,
                    messages=_stray_messages(instance, ex["execution_id"], stray), now_ms=10**12, kv_snapshot={})
    result = _documented(execute_turn, inp, reg)
    if not isinstance(result, DuroxideError):
        assert isinstance(result, TurnResult)
        assert result.kind in ("continue", "completed", "failed", "continued_as_new", "cancelled", "noop",
                               "unregistered"), result.kind


def _schedule_sites() -> list[tuple[str, int, int]]:
    """(instance, execution index, event index) of every recorded schedule the code matches by
    name/input."""
    out = []
    for inst, d in _docs().items():
        for x, ex in enumerate(d["executions"]):
            for k, e in enumerate(ex["events"]):
                if e["kind"] in ("ActivityScheduled", "SubOrchestrationScheduled", "ExternalSubscribed",
                                 "ExternalSubscribedPersistent"):
                    out.append((inst, x, k))
    return out


@settings(derandomize=True, max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(pick=st.integers(0, 10_000), field=st.sampled_from(["name", "input"]),
       value=st.sampled_from(["Other", '"other"', "", "{", "[" * 4000, "null", "x" * 50_000]))
def test_a_changed_schedule_is_a_divergence_naming_its_event(pick, field, value) -> None:
    sites = _schedule_sites()
    inst, x, k = sites[pick % len(sites)]
    doc = copy.deepcopy(_docs()[inst])
    ev = doc["executions"][x]["events"][k]
    if field == "input" and "input" not in ev:
        field = "name"
    if ev.get(field) == value:
        return
    ev[field] = value
    if field == "name" and value == "":
        # A name no client or context accepts: the reader refuses it, naming the field, so there
        # is nothing to replay.
        with pytest.raises(SerializationError, match="field 'name' must be a non-empty string"):
            check_document(doc, "probe")
        return
    assert _validated(doc) is not None
    got = _documented(replay_documents, [doc], _registry())
    assert not isinstance(got, DuroxideError), got
    exe = doc["executions"][x]["execution_id"]
    mine = [d for d in got if d.instance == inst and d.execution_id == exe]
    assert mine, f"no divergence for {inst} execution {exe} after changing {field} of event {ev['event_id']}"
    assert any(f"event_id={ev['event_id']}" in d.message or f"event {ev['event_id']}" in d.message for d in mine), \
        [d.message[:300] for d in mine]


def _without_step(events: list[dict[str, Any]], k: int) -> list[dict[str, Any]]:
    """``events`` without the k-th (a schedule) and everything that refers to it, ids renumbered
    and source ids remapped: a history in which that step was never taken."""
    gone = events[k]["event_id"]
    kept = [e for e in events if e["event_id"] != gone and e.get("source_event_id") != gone]
    remap = {e["event_id"]: n + 1 for n, e in enumerate(kept)}
    out = []
    for e in kept:
        e = dict(e, event_id=remap[e["event_id"]])
        if e.get("source_event_id") is not None:
            e["source_event_id"] = remap[e["source_event_id"]]
        out.append(e)
    return out


@settings(derandomize=True, max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(pick=st.integers(0, 10_000))
def test_a_removed_step_is_a_divergence_naming_the_step(pick) -> None:
    """A recorded step (schedule plus its completion) removed: the code still takes it, so the
    replay must diverge, naming the step the code takes (its activity / orchestration / event
    name)."""
    sites = [site for site in _schedule_sites() if site[0] != "q"]  # ("q" names no step by name)
    inst, x, k = sites[pick % len(sites)]
    doc = copy.deepcopy(_docs()[inst])
    ex = doc["executions"][x]
    step = ex["events"][k]
    ex["events"] = _without_step(ex["events"], k)
    assert _validated(doc) is not None
    got = _documented(replay_documents, [doc], _registry())
    assert not isinstance(got, DuroxideError), got
    mine = [d for d in got if d.instance == inst and d.execution_id == ex["execution_id"]]
    assert mine, f"no divergence for {inst} execution {ex['execution_id']} without step {step}"
    assert any(repr(step["name"]) in d.message for d in mine), ([d.message[:400] for d in mine], step)


# --------------------------------------------------------------------------------------------
# (b) import: import_documents and `duroxide-sim import`
# --------------------------------------------------------------------------------------------


def _dump(db: pathlib.Path) -> list[str]:
    con = sqlite3.connect(str(db))
    try:
        # (the open counter in provider_meta moves with every open: not data)
        return [line for line in con.iterdump() if "'opens'" not in line]
    finally:
        con.close()


@lru_cache(maxsize=1)
def _seeded_target_bytes() -> bytes:
    """A target database already holding one instance (so a partial write shows)."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="hist-fuzz-target-", dir=_TMP))
    p = SqliteProvider.open(str(root / "t.db"))
    import_documents(p, [copy.deepcopy(_docs()["fails"])])
    p.close()
    return (root / "t.db").read_bytes()


def _fresh_target() -> pathlib.Path:
    root = pathlib.Path(tempfile.mkdtemp(prefix="hist-fuzz-t-", dir=_TMP))
    (root / "t.db").write_bytes(_seeded_target_bytes())
    return root / "t.db"


def _queue_rows(db: pathlib.Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(str(db))
    try:
        return sorted([*con.execute("SELECT instance_id, work_item FROM orchestrator_queue"),
                       *con.execute("SELECT instance_id, work_item FROM worker_queue")])
    finally:
        con.close()


@settings(derandomize=True, max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(instance=st.sampled_from([i for i in INSTANCES if i != "fails"]),
       mutations=st.one_of(st.lists(MUTATION, min_size=1, max_size=3), st.lists(TYPED_MUTATION, min_size=1, max_size=3),
                           st.lists(DOC_MUTATION, min_size=1, max_size=2)),
       renumber=st.booleans(), good_first=st.booleans())
def test_import_of_mutated_documents_is_all_or_nothing(instance, mutations, renumber, good_first) -> None:
    bad = _apply(_docs()[instance], mutations, renumber)
    good = copy.deepcopy(_docs()["loop" if instance != "loop" else "q"])
    docs = [good, bad] if good_first else [bad, good]
    db = _fresh_target()
    before, queue_before = _dump(db), _queue_rows(db)
    provider = SqliteProvider.open(str(db), clock=SimClock())
    try:
        got = _documented(import_documents, provider, docs)
    finally:
        provider.close()
    if isinstance(got, DuroxideError):
        assert _dump(db) == before, f"import raised {got!r} but changed the database"
        return
    # Imported: exported back unchanged (in canonical form: a field left out at its default
    # comes back written out), and the work it queued is for the imported instances only (a
    # document restores its own instance, not messages to others).
    provider = SqliteProvider.open(str(db), clock=SimClock())
    try:
        for d in docs:
            back = _documented(export_instance, provider, d["instance_id"])
            assert not isinstance(back, DuroxideError), back
            assert back["executions"] == _canonical(d)["executions"]
    finally:
        provider.close()
    # What was imported reads back as a replay source (the database is not "corrupt").
    got = _documented(replay_source, str(db), register)
    assert not isinstance(got, DuroxideError), f"imported, but the database no longer loads: {got}"
    mine = {d["instance_id"] for d in docs}
    for target, text in _queue_rows(db):
        if (target, text) in queue_before:
            continue
        item = json.loads(text)
        owner = item.get("parent_instance") if item.get("kind") == "StartOrchestration" else target
        assert owner in mine, f"import of {sorted(mine)} queued work for instance {target!r}: {text[:200]}"


def _corrupt_text(text: str, how: str, at: int, junk: str) -> str:
    at = at % max(1, len(text))
    if how == "truncate":
        return text[:at]
    if how == "insert":
        return text[:at] + junk + text[at:]
    if how == "replace":
        return text[:at] + junk + text[at + len(junk):]
    if how == "nest":
        return "[" * 3000 + text + "]" * 3000
    if how == "bom":
        return "\ufeff" + text
    return text.replace('"event_id": ', '"event_id": ' + junk[:1], 1) if junk else text


@settings(derandomize=True, max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(instance=st.sampled_from([i for i in INSTANCES if i != "fails"]),
       how=st.sampled_from(["truncate", "insert", "replace", "nest", "bom", "number"]),
       at=st.integers(0, 10**6), junk=st.sampled_from(["", "x", "}", "]", ",", "\"", "\\", "NaN", "1e400", "-", "0",
                                                        "\x00", "\ud800", "null", "{\"a\":1}", "[[[[", "😀"]),
       as_list=st.booleans(), mutations=st.lists(MUTATION, max_size=2))
def test_cli_import_of_corrupt_json_is_exit_2_and_writes_nothing(instance, how, at, junk, as_list, mutations) -> None:
    doc = _apply(_docs()[instance], mutations, True) if mutations else copy.deepcopy(_docs()[instance])
    good = copy.deepcopy(_docs()["waits" if instance != "waits" else "loop"])
    payload: Any = [good, doc] if as_list else doc
    try:
        text = json.dumps(payload, ensure_ascii=False, indent=1)
    except ValueError:
        return
    text = _corrupt_text(text, how, at, junk)
    db = _fresh_target()
    src = db.parent / "in.json"
    src.write_text(text, encoding="utf-8", errors="surrogatepass")
    before = _dump(db)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _deadline(20):
        try:
            rc = cli(["import", str(src), "--db", str(db)])
        except INTERNAL as exc:  # pragma: no cover - a finding
            raise AssertionError(f"duroxide-sim import raised {type(exc).__name__}: {exc!r}"[:2000]) from exc
    assert rc in (0, 2), (rc, err.getvalue()[:500])
    if rc == 2:
        assert err.getvalue().startswith("duroxide-sim"), err.getvalue()[:500]
        assert "Traceback" not in err.getvalue()
        assert _dump(db) == before, "exit 2 but the database changed"


# --------------------------------------------------------------------------------------------
# `duroxide-sim show` (in-process) and `duroxide-sim replay` (subprocess)
# --------------------------------------------------------------------------------------------


def _write_mutant(doc: dict[str, Any], tag: str) -> pathlib.Path | None:
    """``doc`` as a JSON file in a fresh temp directory; None when it cannot be written as UTF-8
    (a lone surrogate the mutation put in)."""
    src = pathlib.Path(tempfile.mkdtemp(prefix=f"hist-fuzz-{tag}-", dir=_TMP)) / "h.json"
    try:
        src.write_text(json.dumps(doc, ensure_ascii=False), encoding="utf-8", errors="surrogatepass")
    except ValueError:
        return None
    return src


@settings(derandomize=True, max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(instance=st.sampled_from(INSTANCES), mutations=st.lists(MUTATION, min_size=1, max_size=3), renumber=st.booleans())
def test_cli_show_and_replay_in_process_of_mutants(instance, mutations, renumber) -> None:
    doc = _apply(_docs()[instance], mutations, renumber)
    src = _write_mutant(doc, "show")
    if src is None:
        return
    for argv, codes in ((["show", str(src)], (0, 2)),
                        (["replay", str(src), "--app", APP_REF, "--no-hash-seed-check"], (0, 1, 2))):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _deadline(20):
            try:
                rc = cli(argv)
            except INTERNAL as exc:  # pragma: no cover - a finding
                raise AssertionError(f"duroxide-sim {argv[0]} raised {type(exc).__name__}: {exc!r}"[:2000]) from exc
        assert rc in codes, (argv[0], rc, err.getvalue()[:500])
        assert "Traceback" not in err.getvalue(), err.getvalue()[:2000]


@settings(derandomize=True, max_examples=4, deadline=None, database=None, suppress_health_check=list(HealthCheck))
@given(instance=st.sampled_from(INSTANCES), mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_cli_replay_subprocess_of_mutants(instance, mutations) -> None:
    doc = _apply(_docs()[instance], mutations, True)
    src = _write_mutant(doc, "cli")
    if src is None:
        return
    proc = subprocess.run([sys.executable, "-m", "duroxide_sim", "replay", str(src), "--app", APP_REF],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1, 2), (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    if proc.returncode == 2:
        assert proc.stderr.startswith("duroxide-sim"), proc.stderr[-500:]


# --------------------------------------------------------------------------------------------
# What the probe found (each failed before its fix)
# --------------------------------------------------------------------------------------------


def test_a_bad_duroxide_version_is_refused_before_anything_is_imported(tmp_path: pathlib.Path) -> None:
    """A document whose ``OrchestrationStarted.duroxide_version`` is not a semver (``"x"``).

    The reader refuses it as a ``SerializationError`` naming the document, execution and event,
    and nothing is written (history_io: "Import validates every document and checks every target
    instance before it writes anything"). It used to pass ``check_document``; ``import_documents`` writes the instances sorted
    before it (here ``loop``), then the provider's ``import_history`` raises
    ``InvalidInputError: pinned_duroxide_version must be a semver ... got 'x'`` (no document,
    instance or event named): a partial import. ``duroxide-sim import`` exits 2 with ``loop``
    left in the database."""
    bad = copy.deepcopy(_docs()["m1"])
    bad["executions"][0]["events"][0]["duroxide_version"] = "x"
    with pytest.raises(SerializationError, match="duroxide_version"):
        check_document(copy.deepcopy(bad), "probe")
    db = tmp_path / "t.db"
    provider = SqliteProvider.open(str(db), clock=SimClock())
    with pytest.raises(DuroxideError):
        import_documents(provider, [copy.deepcopy(_docs()["loop"]), bad])
    assert provider.list_instances() == [], "a refused import left instances behind"


def test_import_into_a_provider_without_a_clock_restores_history_and_queued_work(tmp_path: pathlib.Path) -> None:
    """``import_documents`` into a provider opened without a clock (``SqliteProvider.open(path)``;
    the README's Python example ``import_documents(PostgresProvider.connect_with_schema(url,
    schema), load_documents(path))`` passes none either) of a document with queued work (an
    instance waiting for an event that was already raised).

    The import works: the provider gets the system clock (as a Runtime or Client binds one), and
    history and queued work are written in one transaction. It used to commit the history,
    then ``_requeue`` -> ``provider.enqueue_for_orchestrator`` -> ``SqliteProvider._now`` raises
    ``ProviderError: SqliteProvider has no clock ...``: ``waits`` is restored without the event
    raised to it (it waited for good) and the documents after it were not imported."""
    docs = [copy.deepcopy(_docs()["waits"]), copy.deepcopy(_docs()["loop"])]
    assert docs[0]["queued"], "the recording should leave an event queued for 'waits'"
    provider = SqliteProvider.open(str(tmp_path / "t.db"))
    try:
        import_documents(provider, docs)
    except DuroxideError:
        assert provider.list_instances() == [], "a refused import left a half-restored instance behind"
    else:
        assert [i for i, items in provider.queued_work().items() if items] == ["waits"]


def test_queued_work_for_another_instance_is_refused(tmp_path: pathlib.Path) -> None:
    """A document for ``m1`` whose ``queued`` list holds a ``CancelInstance`` for ``racer`` (an
    export only carries work for the document's own instance, or the start of a child it
    scheduled).

    Refused as corrupt (``SerializationError`` naming queued item #0 and the instance it is
    for), nothing written. ``check_document`` used not to look at the target of queued items; ``duroxide-sim import`` exits 0 and ``racer`` - imported alongside, or already in the
    target - gets a forged cancel queued (any instance id: a raised event, a timer, an activity
    for an instance the import does not restore)."""
    bad = copy.deepcopy(_docs()["m1"])
    bad["queued"] = [{"kind": "CancelInstance", "instance": "racer", "reason": "forged"}]
    with pytest.raises(SerializationError, match="racer"):
        check_document(copy.deepcopy(bad), "probe")
    db = tmp_path / "t.db"
    provider = SqliteProvider.open(str(db), clock=SimClock())
    with contextlib.suppress(DuroxideError):
        import_documents(provider, [copy.deepcopy(_docs()["racer"]), bad])
    assert not any("forged" in text for _, text in _queue_rows(db)), "a forged cancel was queued for racer"
