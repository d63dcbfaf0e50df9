"""Small helpers shared by the provider implementations (memory, SQLite, PostgreSQL).

Kept here so every provider parses pins and reports lost locks the same way; no I/O."""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, LockLostError

__all__ = ["parse_semver", "lock_lost"]


def parse_semver(text: str, what: str) -> tuple[int, int, int]:
    """``"1.2.3"`` (optionally ``-pre``/``+build``) -> ``(1, 2, 3)``; bad text -> InvalidInputError."""
    parts = str(text).split("+", 1)[0].split("-", 1)[0].split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise InvalidInputError(f"{what} must be a semver 'major.minor.patch', got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def lock_lost(op: str, token: str, message: str, **fields: Any) -> LockLostError:
    """The error for an unknown, expired or stolen lock token (message names the token)."""
    return LockLostError(message, operation=op, retryable=False, lock_token=token, **fields)
