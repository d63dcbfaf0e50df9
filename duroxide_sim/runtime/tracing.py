"""``init_tracing``: duroxide-python's one-call log file, built on ``logging``.

duroxide-python exports ``init_tracing(log_file, log_level=None, log_format=None)``, which
installs the Rust core's tracing subscriber writing to a file; a module that calls it at
start-up must keep working after the import is renamed. Here the runtime's records already
are ``logging`` records under ``duroxide_sim.*`` (orchestration and activity ``trace_*`` lines
with their instance, execution and activity fields; runtime warnings), so the call installs one
``FileHandler`` on the ``duroxide_sim`` logger and sets that logger's level (process-wide, as
the peer's filter and ``RuntimeOptions(log_level=...)`` are).

As in the peer: the first call wins (a second raises ``RuntimeError("Failed to init tracing:
...")``), and a file that cannot be opened raises ``RuntimeError("Failed to open log file
...")``. Formats: ``"compact"`` (the default; one line: time, level, logger, message, fields),
``"pretty"`` (the fields on an indented second line) and ``"json"`` (one object per line).
Nothing here runs in the simulation: its records go to the trace (:mod:`~duroxide_sim.core.logsink`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

from .options import LOG_LEVELS
from .realtime import utc_iso_ms

__all__ = ["init_tracing"]

#: Record attributes the runtime sets through ``extra=`` (written as the line's fields).
FIELDS = ("instance_id", "execution_id", "orchestration_name", "orchestration_version", "activity_name", "activity_id", "worker_id")
FORMATS = ("compact", "pretty", "json")

_lock = threading.Lock()
_installed: str | None = None  # the file the first successful call writes to


def _timestamp(record: logging.LogRecord) -> str:
    return utc_iso_ms(record.created)


def _level(record: logging.LogRecord) -> str:
    """The record's level name; the "trace" level (5, below DEBUG) has no name in ``logging``
    (it showed as "Level 5"). Named here rather than with ``logging.addLevelName``, which would
    rename level 5 for every logger of the process."""
    return "TRACE" if record.levelno == LOG_LEVELS["trace"] else record.levelname


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if getattr(record, name, None) not in (None, "")}


class _Formatter(logging.Formatter):
    def __init__(self, style: str) -> None:
        super().__init__()
        self.style_name = style

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = _fields(record)
        if self.style_name == "json":
            doc: dict[str, Any] = {"timestamp": _timestamp(record), "level": _level(record), "target": record.name,
                                   "message": message}
            if fields:
                doc["fields"] = fields
            if record.exc_info:
                doc["exception"] = self.formatException(record.exc_info)
            return json.dumps(doc, ensure_ascii=False, default=str)
        pairs = " ".join(f"{k}={v}" for k, v in fields.items())
        head = f"{_timestamp(record)} {_level(record):>7} {record.name}: {message}"
        if self.style_name == "pretty":
            text = head + (f"\n    {pairs}" if pairs else "")
        else:
            text = head + (f" {pairs}" if pairs else "")
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def init_tracing(log_file: str | os.PathLike[str], log_level: str | None = None, log_format: str | None = None) -> None:
    """Write the runtime's log records (``duroxide_sim.*``) to ``log_file`` (appended), at
    ``log_level`` ("trace", "debug", "info", "warn", "error"...; default "info") and above, in
    ``log_format`` ("compact", "pretty" or "json"; default "compact"). Once per process."""
    global _installed
    if not isinstance(log_file, (str, os.PathLike)) or isinstance(log_file, bytes):
        raise TypeError(f"init_tracing: log_file must be a path (str), got {type(log_file).__name__}")
    path = os.fspath(log_file)
    if not path:
        raise ValueError("init_tracing: log_file is empty")
    if log_level is not None and not isinstance(log_level, str):
        raise TypeError(f"init_tracing: log_level must be a string or None, got {type(log_level).__name__}")
    level_name = (log_level or "info").strip().lower()
    if level_name not in LOG_LEVELS:
        raise ValueError(f"init_tracing: unknown log_level {log_level!r}; use one of {', '.join(LOG_LEVELS)}")
    if log_format is not None and not isinstance(log_format, str):
        raise TypeError(f"init_tracing: log_format must be a string or None, got {type(log_format).__name__}")
    style = (log_format or "compact").strip().lower()
    if style not in FORMATS:
        raise ValueError(f"init_tracing: unknown log_format {log_format!r}; use one of {', '.join(FORMATS)}")
    with _lock:
        if _installed is not None:
            raise RuntimeError(f"Failed to init tracing: a tracing subscriber is already installed (writing to {_installed!r})")
        try:
            handler = logging.FileHandler(path, mode="a", encoding="utf-8")
        except OSError as exc:
            raise RuntimeError(f"Failed to open log file {path!r}: {exc.strerror or exc}") from exc
        handler.setFormatter(_Formatter(style))
        level = LOG_LEVELS[level_name]
        handler.setLevel(level)
        logger = logging.getLogger("duroxide_sim")
        logger.setLevel(level)
        logger.addHandler(handler)
        _installed = path


def _reset_for_tests() -> None:
    """Remove the handler the first call installed (tests only: the peer has no way back)."""
    global _installed
    with _lock:
        logger = logging.getLogger("duroxide_sim")
        for h in list(logger.handlers):
            if isinstance(h.formatter, _Formatter):
                logger.removeHandler(h)
                h.close()
        logger.setLevel(logging.NOTSET)
        _installed = None
