"""History export and import: a versioned JSON format for committed fixtures and CI replay.

One document per instance::

    {"format": "duroxide-sim-history", "version": 1,
     "instance_id": "...", "orchestration_name": "...", "orchestration_version": "1.0.0",
     "executions": [{"execution_id": 1, "events": [<canonical event objects>]}, ...],
     "kv_base": {"key": ["value", last_updated_at_ms], ...}}   # only when executions were pruned

Events use the engine's canonical JSON form (``core.events.to_dict``), so a document is
byte-stable: exporting the same history twice gives the same file. A directory export holds one
``<safe name>.json`` per instance (the file name percent-encodes the instance id, shortened with a
hash when long) and an ``index.json`` listing ``{file: instance_id}``.

Reading validates everything and raises :class:`~duroxide_sim.errors.SerializationError` naming
the file and the problem (not JSON, wrong format tag, newer version, malformed event, a field of
the wrong type, event ids out of order, an execution without ``OrchestrationStarted``, a
top-level name / version other than the last execution's ``OrchestrationStarted`` says, an
instance id a client would refuse, the same instance twice), and refuses values the runtime
never writes, by the validators that guard them when it does: names, semver orchestration
versions, parent / child / detached instance ids, session ids and KV keys by the client's and
the context's rules; payloads over ``codec.MAX_PAYLOAD_BYTES``; a custom status, KV value or
activity tag over its limit (``core.turn.LIMITS``) unless an ``OrchestrationFailed`` follows it
in its execution (the runtime records such a value, then fails that turn). Import validates
every document and checks every target instance before it writes anything. Nothing here
touches an engine: export
reads through the Provider protocol, import writes through the provider's ``import_history``
(events plus the rows their acks would have written, and the work still queued for the
instance, in one transaction per instance). A document's ``queued`` items must be its own
instance's work or that of a child it scheduled whose start is queued with them (a child that
has not started has no document: its start and what waits for it - a cancel, an event - go with
its parent).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import pathlib
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ..core import codec
from ..core.context import MAX_INSTANCE_ID_BYTES, MAX_KV_KEY_BYTES, MAX_SESSION_ID_BYTES, reserved_id_problem
from ..core.events import (
    ActivityExecute,
    ActivityScheduled,
    CustomStatusUpdated,
    ErrorDetails,
    HistoryEvent,
    KeyValueSet,
    OrchestrationChained,
    OrchestrationFailed,
    OrchestrationStarted,
    StartOrchestration,
    SubOrchestrationScheduled,
    TimerFiredMsg,
    WorkItem,
    from_dict,
    to_dict,
)
from ..core.registry import parse_engine_version, parse_semver
from ..core.texts import text_problem
from ..core.turn import LIMITS
from ..errors import ConfigurationError, DuroxideError, InvalidInputError, SerializationError
from .client import MAX_ANY_INSTANCE_ID_BYTES

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "export_instance",
    "export_to_path",
    "load_documents",
    "import_documents",
    "document_events",
    "document_kv_base",
    "check_document",
]

FORMAT = "duroxide-sim-history"
FORMAT_VERSION = 1


def queued_by_instance(provider: Any) -> dict[str, list[WorkItem]] | None:
    """What an export carries beside each instance's history: the work still queued for it -
    messages not yet in its history (a raised event, a fired timer, a completion, a cancel, its
    continue-as-new), its activities not yet run, and the start of a child it scheduled that has
    not run yet (queued under the child's id, which has no history to carry it). Without it a
    restored instance waited for good on work its history promised. None when the provider
    cannot list its queues."""
    reader = getattr(provider, "queued_work", None)
    if reader is None:
        return None
    out: dict[str, list[WorkItem]] = {}
    for target, items in reader().items():
        owner = target
        if provider.latest_execution_id(target) is None:
            # A child that has not started: its start - and whatever else waits for it, a cancel
            # from its parent, a raised event - goes with its parent (it has no document).
            owner = next((item.parent_instance for item in items
                          if isinstance(item, StartOrchestration) and item.parent_instance is not None), target)
        out.setdefault(owner, []).extend(items)
    return out


def export_instance(provider: Any, instance: str, queued: dict[str, list[WorkItem]] | None = None) -> dict[str, Any]:
    """The document for one instance: every execution, oldest first, and (``queued``: see
    :func:`queued_by_instance`) the work still queued for it."""
    last = provider.latest_execution_id(instance)
    if last is None:
        from ..errors import InstanceNotFound

        raise InstanceNotFound(f"no instance {instance!r} to export")
    executions = []
    name, version = None, None
    for execution_id in range(1, last + 1):
        events = list(provider.read_with_execution(instance, execution_id))
        if not events:
            continue  # pruned
        if isinstance(events[0], OrchestrationStarted):
            name, version = events[0].name, events[0].version
        executions.append({"execution_id": execution_id, "events": [to_dict(e) for e in events]})
    doc = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "instance_id": instance,
        "orchestration_name": name,
        "orchestration_version": version,
        "executions": executions,
    }
    reader = getattr(provider, "kv_base", None)
    if executions and executions[0]["execution_id"] > 1 and reader is not None:
        # Earlier executions were pruned, and with them the KV events that rebuild the store:
        # the stored KV store goes along (see the providers' kv_base), so an import resumes with
        # it and a replay knows what the current execution started with.
        doc["kv_base"] = {k: [v, ts] for k, (v, ts) in reader(instance).items()}
    if queued and queued.get(instance):
        doc["queued"] = [to_dict(item) for item in queued[instance]]
    restored = _instance_fields(provider, instance)
    if restored:
        doc["instance"] = restored
    return doc


def _instance_fields(provider: Any, instance: str) -> dict[str, Any]:
    """The instance row's fields its events cannot rebuild: when it was created (its first
    executions may be pruned), its custom status version (one per ack that set one, however
    many executions did) and the custom status itself (the execution that set it may be
    pruned: an import rebuilt it from the events left, so a pruned instance came back with
    none)."""
    out: dict[str, Any] = {}
    info = getattr(provider, "get_instance_info", None)
    if info is not None:
        try:
            created = info(instance).created_at
        except Exception:  # noqa: BLE001 - no management support for it: left out
            created = None
        if type(created) is int:
            out["created_at"] = created
    status = getattr(provider, "get_custom_status", None)
    found = status(instance, 0) if status is not None else None
    if found is not None and type(found[1]) is int and found[1] > 0:
        out["custom_status_version"] = found[1]
        out["custom_status"] = found[0]
    return out


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _safe_name(instance: str, taken: Iterable[str] = ()) -> str:
    """The file name of ``instance``'s document: the percent-encoded id (``~`` encoded too, so a
    plain name never looks like a hashed one), or, when that is long, reserved (``index.json``,
    ``.``, ``..``) or already in ``taken`` (compared case-insensitively, as on macOS and
    Windows), a prefix plus ``~`` and a hash of the id."""
    quoted = urllib.parse.quote(instance, safe="-_.").replace("~", "%7E")
    taken = {name.casefold() for name in taken}
    plain = quoted + ".json"
    if len(quoted) <= 120 and quoted not in ("", ".", "..") and plain.casefold() not in taken | {"index.json"}:
        return plain
    digest = hashlib.sha256(instance.encode("utf-8")).hexdigest()[:16]
    return f"{quoted[:80]}~{digest}.json"


def export_to_path(provider: Any, out: str | pathlib.Path, instances: Iterable[str] | None = None) -> list[pathlib.Path]:
    """Write documents. ``out`` ending in ``.json`` -> one file (exactly one instance required, or
    a JSON list when several); otherwise a directory with one file per instance + index.json.
    A path that cannot be written (a directory where the file goes, a file where the directory
    goes) raises :class:`InvalidInputError` naming it."""
    out = pathlib.Path(out)
    ids = list(instances) if instances is not None else list(reversed(provider.list_instances()))
    queued = queued_by_instance(provider)
    docs = [export_instance(provider, i, queued) for i in dict.fromkeys(ids)]  # each instance once
    # Creation order (oldest first), whatever order the ids were asked in: import keeps it.
    rank = {inst: n for n, inst in enumerate(reversed(provider.list_instances()))}
    for doc in docs:
        if doc["instance_id"] in rank:
            doc.setdefault("instance", {})["order"] = rank[doc["instance_id"]]
    try:
        if out.suffix.lower() == ".json":
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(_dumps(docs[0]) if len(docs) == 1 else json.dumps(docs, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
            return [out]
        out.mkdir(parents=True, exist_ok=True)
        written, index = [], {}
        for doc in docs:
            name = _safe_name(doc["instance_id"], index)
            (out / name).write_text(_dumps(doc), encoding="utf-8")
            index[name] = doc["instance_id"]
            written.append(out / name)
        (out / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InvalidInputError(f"cannot write the export to {out}: {exc.strerror or exc}") from exc
    return written


#: Checks for the field types of event and error records (by their annotation).
_FIELD_CHECKS: dict[str, tuple[str, Any]] = {
    "int": ("an integer", lambda v: type(v) is int),
    "int | None": ("an integer", lambda v: v is None or type(v) is int),
    "str": ("a string", lambda v: isinstance(v, str)),
    "str | None": ("a string", lambda v: v is None or isinstance(v, str)),
    "bool": ("true or false", lambda v: type(v) is bool),
}
_INT64 = range(-(2**63), 2**63)


def _check_fields(record: Any) -> None:
    """Every field of a decoded record has its declared type (``from_dict`` does not check),
    integers fit a 64-bit column and strings are encodable as UTF-8 (no lone surrogates)."""
    for field in attrs.fields(type(record)):
        value = getattr(record, field.name)
        if isinstance(value, ErrorDetails):
            _check_fields(value)
            continue
        check = _FIELD_CHECKS.get(str(field.type))
        if check is not None and not check[1](value):
            raise SerializationError(f"field {field.name!r} must be {check[0]}, got {json.dumps(value)[:40]}")
        if type(value) is int and value not in _INT64:
            raise SerializationError(f"field {field.name!r} is out of range: {value}")
        for text in (value if isinstance(value, tuple) else (value,)):
            for item in (text if isinstance(text, tuple) else (text,)):
                if isinstance(item, str):
                    try:
                        item.encode("utf-8")
                    except UnicodeEncodeError as exc:
                        raise SerializationError(f"field {field.name!r} is not valid Unicode ({exc.reason})") from None


def _check_carry(ev: Any) -> None:
    """``carry_forward_events`` must be ``[[name, data], ...]`` of strings: ``from_dict`` would
    otherwise turn other values into strings (silently altering them)."""
    carry = ev.get("carry_forward_events") if isinstance(ev, dict) else None
    if carry is not None and not (isinstance(carry, list) and all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in carry)):
        raise SerializationError("field 'carry_forward_events' must be a list of [name, data] string pairs")


#: Fields every exported event carries; the record classes give them defaults (for the engine's
#: own construction), which an import must not fill in silently (execution 1, time 0).
_ENVELOPE = ("event_id", "instance_id", "execution_id", "timestamp_ms")


def _check_envelope(ev: Any) -> None:
    if isinstance(ev, dict):
        missing = [k for k in _ENVELOPE if k not in ev]
        if missing:
            raise SerializationError(f"missing field{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")


def _check_instance_id(instance: Any, what: str = "instance_id") -> None:
    """The client's rules for an instance id: imported instances must be addressable."""
    problem = text_problem(instance, MAX_ANY_INSTANCE_ID_BYTES)
    if problem is not None:
        raise SerializationError(f"{what} {problem}")


def _kv_key_problem(key: str) -> str | None:
    """Why a turn could not have written KV key ``key`` (the context's rules: the empty key is a
    key; otherwise no NUL, valid Unicode, at most ``MAX_KV_KEY_BYTES``), or None."""
    return text_problem(key, MAX_KV_KEY_BYTES) if key else None


def _utf8_size(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _over_limit(text: str | None, limit: str) -> int | None:
    """The UTF-8 size of ``text`` when it is over ``LIMITS[limit]``, else None."""
    if text is None or len(text) <= LIMITS[limit] // 4:
        return None
    size = _utf8_size(text)
    return size if size > LIMITS[limit] else None


#: Fields holding a name the context or the client checked before anything was written (an
#: orchestration, activity, event or queue name): the shared name rule, ``text_problem``.
_NAME_FIELDS = ("name", "orchestration")
#: Fields holding a payload the runtime encoded with ``codec`` (inputs, outputs, results, event
#: data, cancel reasons): at most ``codec.MAX_PAYLOAD_BYTES``. (Custom status, KV values and
#: tags have limits of their own, checked where their turns are known: ``_turn_limit``.)
_PAYLOAD_FIELDS = ("input", "output", "result", "data", "reason")


def _check_values(record: Any) -> None:
    """The values of a decoded event or work item (its field types already checked) are ones
    the runtime could have written: names, versions, ids, session ids, KV keys and payload
    sizes by the same validators the client, the orchestration context and the registry apply
    when the runtime writes them. Raises SerializationError naming the field."""
    is_event = isinstance(record, HistoryEvent)
    for field in _NAME_FIELDS:
        value = getattr(record, field, None)
        if isinstance(value, str):
            problem = text_problem(value)
            if problem is not None:
                raise SerializationError(f"field {field!r} {problem}")
    version = getattr(record, "version", None)
    if version is not None:
        try:
            parse_semver(version)
        except ConfigurationError:
            raise SerializationError(f"field 'version' must be a semver orchestration version 'major.minor.patch' "
                                     f"like '1.0.0' (ASCII numbers without leading zeros), got "
                                     f"{json.dumps(version)[:60]}") from None
    if is_event and record.duroxide_version is not None:
        try:
            parse_engine_version(record.duroxide_version)
        except ConfigurationError:
            raise SerializationError(f"field 'duroxide_version' must be an engine version like '0.1.0', "
                                     f"got {json.dumps(record.duroxide_version)[:60]}") from None
    parent = getattr(record, "parent_instance", None)
    if parent is not None:
        _check_instance_id(parent, "field 'parent_instance'")
        own = record.instance_id if is_event else getattr(record, "instance", None)
        if parent == own:
            raise SerializationError(f"field 'parent_instance' names the instance itself ({parent[:80]!r}): "
                                     "an instance cannot be its own parent")
    instance = getattr(record, "instance", None)
    if isinstance(instance, str):
        if isinstance(record, (SubOrchestrationScheduled, OrchestrationChained)):
            # The id the code asked for (a child's may be relative: "sub::N"), checked by the
            # context against the start limit; a detached start's also against the reserved marker.
            problem = text_problem(instance, MAX_INSTANCE_ID_BYTES)
            if problem is None and isinstance(record, OrchestrationChained):
                problem = reserved_id_problem(instance)
        else:
            problem = text_problem(instance, MAX_ANY_INSTANCE_ID_BYTES)
        if problem is not None:
            raise SerializationError(f"field 'instance' {problem}")
    session = getattr(record, "session_id", None)
    if session is not None:
        problem = text_problem(session, MAX_SESSION_ID_BYTES)
        if problem is not None:
            raise SerializationError(f"field 'session_id' {problem}")
    key = getattr(record, "key", None)
    if isinstance(key, str):
        problem = _kv_key_problem(key)
        if problem is not None:
            raise SerializationError(f"field 'key' {problem}")
    for field in _PAYLOAD_FIELDS:
        value = getattr(record, field, None)
        if isinstance(value, str):
            _check_payload(value, f"field {field!r}")
    carry = getattr(record, "carry_forward_events", None)
    if carry:
        if len(carry) > LIMITS["carry_forward"]:
            raise SerializationError(f"field 'carry_forward_events' holds {len(carry)} messages, over the "
                                     f"carry-forward limit of {LIMITS['carry_forward']}")
        for n, (name, data) in enumerate(carry):
            problem = text_problem(name)
            if problem is not None:
                raise SerializationError(f"field 'carry_forward_events' message #{n}: name {problem}")
            _check_payload(data, f"field 'carry_forward_events' message #{n}: data")
    initial = getattr(record, "initial_custom_status", None)
    size = _over_limit(initial, "custom_status_bytes")
    if size is not None:
        # (a continue-as-new carries the status its turn ended with: a turn ending with one over
        # the limit fails, and its continue-as-new is discarded)
        raise SerializationError(f"field 'initial_custom_status' is {size} bytes, over the custom status limit "
                                 f"of {LIMITS['custom_status_bytes']} bytes")
    if not is_event:
        # Queued work comes from a turn that passed its limits (a failed turn's work is discarded).
        tag = getattr(record, "tag", None)
        size = _over_limit(tag, "tag_bytes")
        if size is not None:
            raise SerializationError(f"field 'tag' is {size} bytes, over the activity tag limit of "
                                     f"{LIMITS['tag_bytes']} bytes")


def _check_payload(text: str, what: str) -> None:
    try:
        codec.check_size(text, what)
    except DuroxideError as exc:
        raise SerializationError(str(exc)) from None


def _turn_limit(event: HistoryEvent) -> str | None:
    """What is over one of the limits a turn is checked against when it ends (custom status,
    KV value, activity tag: SPEC §10.3) in ``event``, or None. The runtime records such an event
    and then fails the turn, so it is legitimate only when an OrchestrationFailed follows it in
    its execution: the caller checks that. (A custom status counts only when it is the last one
    set: a later one in the same turn replaces it before the check.)"""
    if type(event) is CustomStatusUpdated:
        size = _over_limit(event.status, "custom_status_bytes")
        if size is not None:
            return f"custom status is {size} bytes, over the limit of {LIMITS['custom_status_bytes']} bytes"
    elif type(event) is KeyValueSet:
        size = _over_limit(event.value, "kv_value_bytes")
        if size is not None:
            return (f"KV value for key {event.key[:40]!r} is {size} bytes, over the limit of "
                    f"{LIMITS['kv_value_bytes']} bytes")
    elif type(event) is ActivityScheduled:
        size = _over_limit(event.tag, "tag_bytes")
        if size is not None:
            return f"activity tag is {size} bytes, over the limit of {LIMITS['tag_bytes']} bytes"
    return None


def _check_kv_base(kv_base: dict[str, list[Any]], where: str) -> None:
    """The stored KV store a document carries must be one a turn could have written: keys by
    the context's rules (no NUL, valid Unicode, at most ``MAX_KV_KEY_BYTES``), values valid
    Unicode within the per-value limit, at most the key-count limit (SPEC §10.3)."""
    if len(kv_base) > LIMITS["kv_keys"]:
        raise SerializationError(f"{where}: kv_base holds {len(kv_base)} keys, over the limit of {LIMITS['kv_keys']}")
    for key, (value, _) in kv_base.items():
        problem = _kv_key_problem(key)
        if problem is not None:
            raise SerializationError(f"{where}: kv_base key {key[:40]!r} {problem}")
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise SerializationError(f"{where}: kv_base value for key {key[:40]!r} is not valid Unicode "
                                     "(it holds a lone surrogate)") from None
        if size > LIMITS["kv_value_bytes"]:
            raise SerializationError(f"{where}: kv_base value for key {key[:40]!r} is {size} bytes, over the limit "
                                     f"of {LIMITS['kv_value_bytes']}")


def check_document(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise SerializationError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise SerializationError(f"{where}: not a {FORMAT} document (format={doc.get('format')!r})")
    version = doc.get("version")
    if type(version) is not int or version < 1:
        raise SerializationError(f"{where}: format version must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise SerializationError(f"{where}: format version {version!r} is newer than this duroxide_sim understands ({FORMAT_VERSION})")
    if "instance_id" not in doc or not isinstance(doc.get("executions"), list):
        raise SerializationError(f"{where}: missing instance_id or executions")
    try:
        _check_instance_id(doc["instance_id"])
    except SerializationError as exc:
        raise SerializationError(f"{where}: {exc}") from None
    instance = doc["instance_id"]
    kv_base = doc.get("kv_base")
    if kv_base is not None and not (isinstance(kv_base, dict) and all(
            isinstance(k, str) and isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)
            and type(e[1]) is int and e[1] in _INT64 for k, e in kv_base.items())):
        raise SerializationError(f"{where}: kv_base must map each key to [value (a string), last_updated_at_ms (an integer)]")
    if kv_base:
        _check_kv_base(kv_base, where)
    fields = doc.get("instance")
    if fields is not None and not (isinstance(fields, dict) and all(
            (k in ("created_at", "custom_status_version", "order") and type(v) is int and 0 <= v < 2**63)
            or (k == "custom_status" and (v is None or isinstance(v, str)))
            for k, v in fields.items())):
        raise SerializationError(f"{where}: instance must map created_at / custom_status_version / order to non-negative "
                                 "integers, and custom_status to a string or null")
    if fields and isinstance(fields.get("custom_status"), str):
        try:
            fields["custom_status"].encode("utf-8")
        except UnicodeEncodeError:
            raise SerializationError(f"{where}: instance custom_status is not valid Unicode "
                                     "(it holds a lone surrogate)") from None
    queued = doc.get("queued")
    if queued is not None:
        if not isinstance(queued, list):
            raise SerializationError(f"{where}: queued must be a list of work items")
        items = []
        for i, raw in enumerate(queued):
            try:
                item = from_dict(raw, "work")
                _check_fields(item)
                _check_values(item)
            except SerializationError as exc:
                raise SerializationError(f"{where}: queued item #{i}: {exc}") from exc
            except (TypeError, ValueError, AttributeError) as exc:
                raise SerializationError(f"{where}: queued item #{i}: malformed record: {exc}") from exc
            items.append(item)
        # Children this instance scheduled that have not started: their start is queued here.
        children = {item.target_instance for item in items
                    if isinstance(item, StartOrchestration) and item.parent_instance == instance}
        for i, item in enumerate(items):
            owner = item.instance if isinstance(item, ActivityExecute) else item.target_instance
            if owner != instance and owner not in children:
                # An export carries only the instance's own work and that of a child it scheduled
                # that has not started (queued_by_instance): anything else would reach another
                # instance.
                raise SerializationError(f"{where}: queued item #{i} ({type(item).__name__}) is for instance "
                                         f"{owner!r}, not {instance!r} or a child it started")
    if not doc["executions"]:
        raise SerializationError(f"{where}: instance {instance!r} has no executions")
    previous = 0
    for ex in doc["executions"]:
        if not isinstance(ex, dict) or type(ex.get("execution_id")) is not int or not isinstance(ex.get("events"), list):
            raise SerializationError(f"{where}: malformed execution entry {str(ex)[:80]!r}")
        execution_id = ex["execution_id"]
        if execution_id <= previous:
            problem = "is not positive" if execution_id < 1 else ("is repeated" if execution_id == previous else "is out of order")
            raise SerializationError(f"{where}: execution id {execution_id} {problem} (execution ids increase from 1)")
        previous = execution_id
        if not ex["events"]:
            raise SerializationError(f"{where}: execution {execution_id} has no events")
        last_event = 0
        # Events over a limit a turn is checked against (custom status, KV value, tag): the
        # runtime records them only in a turn it then fails, so an OrchestrationFailed must
        # follow them (breadcrumbs may come after it, as the runtime writes them).
        over: list[str] = []
        last_status: str | None = None  # (the last custom status set: see _turn_limit)
        failed = False
        for i, ev in enumerate(ex["events"]):
            at = f"{where}: execution {execution_id} event #{i}"
            try:
                _check_carry(ev)
                event = from_dict(ev, "event")
                _check_envelope(ev)
                _check_fields(event)
                _check_values(event)
            except SerializationError as exc:
                raise SerializationError(f"{at}: {exc}") from exc
            except (TypeError, ValueError) as exc:  # from_dict's conversions of odd values
                raise SerializationError(f"{at}: malformed record: {exc}") from exc
            if i == 0 and not isinstance(event, OrchestrationStarted):
                raise SerializationError(f"{at}: an execution must begin with OrchestrationStarted, not {type(event).__name__}")
            if i == 0:
                started = event
            if type(event) is OrchestrationFailed:
                over.clear()
                last_status, failed = None, True
            elif type(event) is CustomStatusUpdated:
                if event.status is not None:
                    problem = _turn_limit(event)
                    last_status = None if problem is None else f"{at}: {problem}"
            else:
                problem = _turn_limit(event)
                if problem is not None:
                    over.append(f"{at}: {problem}")
            if event.event_id <= last_event:
                raise SerializationError(f"{at}: event_id {event.event_id} does not follow {last_event} (event ids increase from 1)")
            last_event = event.event_id
            if event.instance_id != instance or event.execution_id != execution_id:
                raise SerializationError(f"{at}: event belongs to instance {event.instance_id!r} execution {event.execution_id}, "
                                         f"not to instance {instance!r} execution {execution_id}")
        if last_status is not None:
            over.insert(0, last_status)
        if over:
            raise SerializationError(f"{over[0]} (the runtime fails the turn that writes such a value, but no "
                                     "OrchestrationFailed follows it in this execution)")
    status = (fields or {}).get("custom_status")
    size = _over_limit(status, "custom_status_bytes")
    if size is not None and not (failed and any(
            e.get("kind") == "CustomStatusUpdated" and e.get("status") == status for e in doc["executions"][-1]["events"])):
        # An instance shows a status over the limit only when the turn that set it failed: that
        # is in the last execution, which then holds the status and an OrchestrationFailed.
        raise SerializationError(f"{where}: instance custom_status is {size} bytes, over the limit of "
                                 f"{LIMITS['custom_status_bytes']} bytes (the runtime fails the turn that sets such "
                                 "a status; no failed last execution of this document set it)")
    # The top-level name / version say what the instance runs (export writes the last
    # execution's); an import takes them from the events, so a document edited in one place
    # only would be read as something it does not say.
    for key, recorded in (("orchestration_name", started.name), ("orchestration_version", started.version)):
        stated = doc.get(key)
        if stated is not None and stated != recorded:
            raise SerializationError(
                f"{where}: {key} is {json.dumps(stated)[:80]} but the last execution's OrchestrationStarted says "
                f"{json.dumps(recorded)[:80]}: the document disagrees with its events")
    return doc


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _read_json(file: pathlib.Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"), parse_constant=_no_constants)
    except OSError as exc:
        raise SerializationError(f"{file}: cannot read it ({exc.strerror or exc})") from exc
    except RecursionError:
        raise SerializationError(f"{file}: not valid JSON (nested too deeply)") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SerializationError(f"{file}: not valid JSON ({exc})") from exc


def _read_index(directory: pathlib.Path, files: list[pathlib.Path]) -> dict[str, str] | None:
    """A directory's ``index.json`` (None without one), checked against the files present: a
    listed file that is missing was lost, an unlisted one is not part of that export (left over
    from an earlier export into the same directory, say)."""
    index_file = directory / "index.json"
    if not index_file.exists():
        return None
    index = _read_json(index_file)
    if not isinstance(index, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in index.items()):
        raise SerializationError(f"{index_file}: expected a JSON object of file name -> instance id")
    names = {f.name for f in files}
    for name, instance in sorted(index.items()):
        if name not in names:
            raise SerializationError(f"{index_file}: lists {name} (instance {instance!r}) but that file is missing")
    unlisted = sorted(names - set(index))
    if unlisted:
        raise SerializationError(f"{directory / unlisted[0]}: not listed in {index_file} (left from another export? "
                                 "remove the file, or add it to index.json)")
    return index


def load_documents(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Read one file (a document or a list of them) or a directory of ``*.json`` documents.
    A directory's ``index.json``, when present, must list exactly its documents. An instance may
    appear only once among them."""
    path = pathlib.Path(path)
    if not path.exists():
        raise InvalidInputError(f"no such file or directory: {path}")
    files = sorted(p for p in path.glob("*.json") if p.name != "index.json") if path.is_dir() else [path]
    index = _read_index(path, files) if path.is_dir() else None
    docs: list[dict[str, Any]] = []
    origin: dict[str, pathlib.Path] = {}
    for file in files:
        data = _read_json(file)
        items = data if isinstance(data, list) else [data]
        for item in items:
            doc = check_document(item, str(file))
            if index is not None and index[file.name] != doc["instance_id"]:
                raise SerializationError(f"{file}: holds instance {doc['instance_id']!r}, but index.json says "
                                         f"{index[file.name]!r}")
            if doc["instance_id"] in origin:
                raise SerializationError(f"{file}: instance {doc['instance_id']!r} appears twice "
                                         f"(also in {origin[doc['instance_id']]})")
            origin[doc["instance_id"]] = file
            docs.append(doc)
    return docs


def document_events(doc: dict[str, Any]) -> dict[int, list[HistoryEvent]]:
    """``{execution_id: [events]}`` of a (validated) document."""
    return {ex["execution_id"]: [from_dict(e, "event") for e in ex["events"]] for ex in doc["executions"]}


def document_kv_base(doc: dict[str, Any]) -> dict[str, tuple[str, int]] | None:
    """The stored KV store a (validated) document carries - exported with instances whose earlier
    executions were pruned - or None."""
    kv = doc.get("kv_base")
    return None if kv is None else {k: (v, ts) for k, (v, ts) in kv.items()}


def import_documents(provider: Any, docs: Sequence[dict[str, Any]]) -> int:
    """Restore each document's instance in ``provider`` (its ``import_history``: the events
    verbatim plus the instance row, execution statuses, custom status and KV store their acks
    would have written, so the instance is listed, shown and exported like any other); returns
    the number of executions written. Refuses to import onto an existing instance, or one whose
    start is queued in the target (nothing is overwritten or absorbed). Every document is
    validated and every instance checked before the first write, so those refusals write
    nothing. Each instance is then one transaction: should the
    provider itself refuse one (a value too large for PostgreSQL, say), the instances before it
    stay imported and the error names the one refused."""
    restore = getattr(provider, "import_history", None)
    if restore is None:
        raise InvalidInputError(f"{type(provider).__name__} cannot import histories (it has no import_history)")
    if getattr(provider, "clock", True) is None and hasattr(provider, "bind_clock"):
        # Queued work is stamped with the provider's time (a timer is due at its fire time, the
        # rest now): a provider opened without a clock gets the system clock, as a Runtime or a
        # Client binds it, before anything is written.
        from .realtime import SystemClock

        provider.bind_clock(SystemClock())
    seen: set[str] = set()
    for n, doc in enumerate(docs):
        check_document(doc, f"document #{n}")
        instance = doc["instance_id"]
        if instance in seen:
            raise InvalidInputError(f"instance {instance!r} appears twice among the documents")
        seen.add(instance)
        if provider.latest_execution_id(instance) is not None:
            raise InvalidInputError(f"instance {instance!r} already exists in the target; refusing to overwrite it")
    reader = getattr(provider, "queued_work", None)
    if reader is not None:
        # A start queued in the target that has not run yet: the instance is about to exist
        # there. Importing over it would leave that start to be absorbed as a duplicate.
        pending = reader()
        for doc in docs:
            if any(isinstance(item, StartOrchestration) for item in pending.get(doc["instance_id"], ())):
                raise InvalidInputError(f"instance {doc['instance_id']!r} has a start queued in the target that has "
                                        "not run yet; refusing to import over it")
    count = 0
    queues_itself = _takes_queued(restore)
    # Oldest first, as they were created (an export directory lists them by file name): listings
    # and trees keep their order.
    for doc in sorted(docs, key=lambda d: ((d.get("instance") or {}).get("created_at", 0), (d.get("instance") or {}).get("order", 0))):
        executions = document_events(doc)
        extra: dict[str, Any] = {}
        kv_base = document_kv_base(doc)
        if kv_base is not None:
            extra["kv_base"] = kv_base
        fields = {k: v for k, v in (doc.get("instance") or {}).items() if k != "order"}
        if fields:
            extra["restored"] = fields
        queued = [from_dict(raw, "work") for raw in doc.get("queued") or ()]
        if queued and queues_itself:
            restore(doc["instance_id"], sorted(executions.items()), queued=queued, **extra)  # one transaction
        else:
            restore(doc["instance_id"], sorted(executions.items()), **extra)
            _requeue(provider, queued)
        count += len(executions)
    return count


def _takes_queued(restore: Any) -> bool:
    """Whether a provider's ``import_history`` queues the work itself (in its transaction): the
    shipped providers do; one written before that parameter existed gets it queued after."""
    try:
        return "queued" in inspect.signature(restore).parameters
    except (TypeError, ValueError):
        return False


def _requeue(provider: Any, queued: Sequence[WorkItem]) -> None:
    """Queue again the work a document carries (see :func:`queued_by_instance`) through the
    provider's enqueue calls, for an ``import_history`` without ``queued``: visible now, a fired
    timer at its fire time, activities unlocked (with a fresh attempt count)."""
    now = None
    for item in queued:
        if isinstance(item, ActivityExecute):
            provider.enqueue_for_worker(item)
            continue
        delay = None
        if isinstance(item, TimerFiredMsg):
            if now is None:
                clock = getattr(provider, "clock", None)
                if clock is None:
                    from .realtime import SystemClock

                    clock = SystemClock()
                now = int(clock.now_ms())
            delay = max(0, item.fire_at_ms - now)
        provider.enqueue_for_orchestrator(item, delay)
