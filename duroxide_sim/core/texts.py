"""The rules every stored name and id follows, in one place (client, orchestration context,
history import): a non-empty string that every provider can store - no NUL (PostgreSQL text
holds none), valid Unicode (no driver encodes a lone surrogate) - and, for ids, a size bound in
UTF-8 bytes. Callers raise their own error type with the returned problem. Pure."""

from __future__ import annotations

from typing import Any

__all__ = ["plain_text", "text_problem"]


def text_problem(value: Any, limit: int | None = None) -> str | None:
    """Why ``value`` is not a storable name/id (``"must not contain NUL characters"``, ...), or
    None. ``limit``: the most UTF-8 bytes allowed."""
    if not isinstance(value, str) or not value:
        return f"must be a non-empty string, got {value!r}"
    if "\x00" in value:
        return "must not contain NUL characters"
    if value.isascii():
        size = len(value)
    else:
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            return "is not valid Unicode (it holds a lone surrogate)"
    if limit is not None and size > limit:
        return f"is longer than {limit} bytes"
    return None


def plain_text(value: str) -> str:
    """``value`` as a plain ``str``: a subclass (a ``StrEnum`` member, a ``NewType``-like class)
    is stored as its text, since the in-memory provider keeps the objects it is given and its
    reads would otherwise differ from SQLite's (and the reference's) plain strings."""
    return value if type(value) is str else str.__str__(value)
