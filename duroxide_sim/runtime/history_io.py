"""History export and import: a versioned JSON format for committed fixtures and CI replay.

One document per instance::

    {"format": "duroxide-sim-history", "version": 1,
     "instance_id": "...", "orchestration_name": "...", "orchestration_version": "1.0.0",
     "executions": [{"execution_id": 1, "events": [<canonical event objects>]}, ...]}

Events use the engine's canonical JSON form (``core.events.to_dict``), so a document is
byte-stable: exporting the same history twice gives the same file. A directory export holds one
``<safe name>.json`` per instance (the file name percent-encodes the instance id, shortened with a
hash when long) and an ``index.json`` listing ``{file: instance_id}``.

Reading validates everything and raises :class:`~duroxide_sim.errors.SerializationError` naming
the file and the problem (not JSON, wrong format tag, newer version, malformed event). Nothing
here touches an engine: export reads through the Provider protocol, import writes through
``append_with_execution``.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import urllib.parse
from collections.abc import Iterable, Sequence
from typing import Any

from ..core.events import HistoryEvent, OrchestrationStarted, from_dict, to_dict
from ..errors import InvalidInputError, SerializationError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "export_instance",
    "export_to_path",
    "load_documents",
    "import_documents",
    "document_events",
]

FORMAT = "duroxide-sim-history"
FORMAT_VERSION = 1


def export_instance(provider: Any, instance: str) -> dict[str, Any]:
    """The document for one instance: every execution, oldest first."""
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
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "instance_id": instance,
        "orchestration_name": name,
        "orchestration_version": version,
        "executions": executions,
    }


def _dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def _safe_name(instance: str) -> str:
    quoted = urllib.parse.quote(instance, safe="-_.")
    if len(quoted) <= 120 and quoted not in ("", ".", ".."):
        return quoted + ".json"
    digest = hashlib.sha256(instance.encode("utf-8")).hexdigest()[:16]
    return f"{quoted[:80]}~{digest}.json"


def export_to_path(provider: Any, out: str | pathlib.Path, instances: Iterable[str] | None = None) -> list[pathlib.Path]:
    """Write documents. ``out`` ending in ``.json`` -> one file (exactly one instance required, or
    a JSON list when several); otherwise a directory with one file per instance + index.json."""
    out = pathlib.Path(out)
    ids = list(instances) if instances is not None else list(reversed(provider.list_instances()))
    docs = [export_instance(provider, i) for i in ids]
    if out.suffix == ".json":
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(_dumps(docs[0]) if len(docs) == 1 else json.dumps(docs, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    written, index = [], {}
    for doc in docs:
        name = _safe_name(doc["instance_id"])
        (out / name).write_text(_dumps(doc), encoding="utf-8")
        index[name] = doc["instance_id"]
        written.append(out / name)
    (out / "index.json").write_text(json.dumps(index, sort_keys=True, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return written


def _check_doc(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise SerializationError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise SerializationError(f"{where}: not a {FORMAT} document (format={doc.get('format')!r})")
    version = doc.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SerializationError(f"{where}: format version {version!r} is newer than this duroxide_sim understands ({FORMAT_VERSION})")
    if not isinstance(doc.get("instance_id"), str) or not isinstance(doc.get("executions"), list):
        raise SerializationError(f"{where}: missing instance_id or executions")
    for ex in doc["executions"]:
        if not isinstance(ex, dict) or not isinstance(ex.get("execution_id"), int) or not isinstance(ex.get("events"), list):
            raise SerializationError(f"{where}: malformed execution entry {str(ex)[:80]!r}")
        for i, ev in enumerate(ex["events"]):
            try:
                from_dict(ev, "event")
            except SerializationError as exc:
                raise SerializationError(f"{where}: execution {ex['execution_id']} event #{i}: {exc}") from exc
    return doc


def load_documents(path: str | pathlib.Path) -> list[dict[str, Any]]:
    """Read one file (a document or a list of them) or a directory of ``*.json`` documents."""
    path = pathlib.Path(path)
    if not path.exists():
        raise InvalidInputError(f"no such file or directory: {path}")
    files = sorted(p for p in path.glob("*.json") if p.name != "index.json") if path.is_dir() else [path]
    docs: list[dict[str, Any]] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise SerializationError(f"{file}: not valid JSON ({exc})") from exc
        items = data if isinstance(data, list) else [data]
        docs.extend(_check_doc(item, str(file)) for item in items)
    return docs


def document_events(doc: dict[str, Any]) -> dict[int, list[HistoryEvent]]:
    """``{execution_id: [events]}`` of a (validated) document."""
    return {ex["execution_id"]: [from_dict(e, "event") for e in ex["events"]] for ex in doc["executions"]}


def import_documents(provider: Any, docs: Sequence[dict[str, Any]]) -> int:
    """Append each document's histories to ``provider``; returns the number of executions written.
    Refuses to import onto an existing instance (nothing is overwritten)."""
    count = 0
    for doc in docs:
        instance = doc["instance_id"]
        if provider.latest_execution_id(instance) is not None:
            raise InvalidInputError(f"instance {instance!r} already exists in the target; refusing to overwrite it")
        for execution_id, events in document_events(doc).items():
            provider.append_with_execution(instance, execution_id, events)
            count += 1
    return count
