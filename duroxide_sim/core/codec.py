"""Payload codec: the JSON layer over the engine's opaque strings (SPEC §17), plus typed I/O.

At the core every payload (inputs, results, event data) is a string. This module decides how
Python values become those strings and back, exactly as duroxide-python does:

* plain API: values are ``json.dumps``'d (a string becomes ``"\\"text\\""``); results are
  ``json.loads``'d when they parse and returned as the raw string otherwise;
* ``*_typed`` API: a ``str`` value is passed through raw (not re-encoded), everything else is
  JSON; results can be *structured* into a declared type (attrs classes, dataclasses, lists,
  dicts, enums...) with cattrs.

attrs / dataclass instances are accepted anywhere a payload is (unstructured with cattrs), so a
typed workflow can pass records end to end. Anything else JSON cannot represent raises
:class:`~duroxide_sim.errors.SerializationError` naming the value's type and where it was going.
Payloads over :data:`MAX_PAYLOAD_BYTES` raise :class:`~duroxide_sim.errors.PayloadTooLargeError`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..errors import PayloadTooLargeError, SerializationError

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "converter",  # noqa: F822 - provided by the module __getattr__ (built on first use)
    "get_converter",
    "encode",
    "encode_typed",
    "decode",
    "decode_typed",
    "check_size",
]

#: Largest payload (UTF-8 bytes) accepted for an input, result or event. The reference has no
#: cap; we set one so a runaway value fails loudly at its source instead of bloating history.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024

_converter: Any = None


def get_converter() -> Any:
    """The cattrs converter used for typed I/O (``codec.converter``), created on first use so a
    program that never passes records does not import cattrs. Users may register hooks on it."""
    global _converter
    if _converter is None:
        import cattrs

        _converter = cattrs.Converter()
    return _converter


def __getattr__(name: str) -> Any:  # PEP 562: ``codec.converter`` is the lazily built converter
    if name == "converter":
        return get_converter()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

_SCALARS = (str, int, float, bool, type(None))


def _default(value: Any) -> Any:
    """json.dumps fallback: unstructure attrs classes, dataclasses, enums. Sets are refused
    like any other non-JSON value (cattrs returns them as sets, which would recurse forever)."""
    unstructured = get_converter().unstructure(value)
    if unstructured is value or isinstance(unstructured, (set, frozenset)):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
    return unstructured


def check_size(text: str, what: str) -> str:
    size = len(text.encode("utf-8")) if len(text) * 4 > MAX_PAYLOAD_BYTES else len(text)
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadTooLargeError(
            f"{what} is {size} bytes, over the {MAX_PAYLOAD_BYTES}-byte payload limit; "
            "store large data elsewhere and pass a reference",
            size=size,
            limit=MAX_PAYLOAD_BYTES,
        )
    return text


#: ``json.dumps`` of a str / int / None without building an encoder per call (same bytes).
_encode_str = json.encoder.encode_basestring_ascii
_JSON = json.JSONEncoder(default=_default, allow_nan=False)
# The C encoder json.dumps builds on every call, built once (~1 us per payload, a few % of a
# simulation whose payloads are attrs classes). No markers dict: it is shared by every thread,
# so a circular value is reported by the recursion limit instead (see encode).
_c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
_C_JSON = (_c_make_encoder(None, _default, _encode_str, None, ": ", ", ", False, False, False)
           if _c_make_encoder is not None else None)
_LITERALS = {None: "null", True: "true", False: "false"}
#: The C scanner behind ``json.loads`` (see decode).
_SCAN = json.scanner.c_make_scanner(json.JSONDecoder()) if getattr(json.scanner, "c_make_scanner", None) else None


def encode(value: Any, what: str = "payload") -> str:
    """Plain encoding: always JSON (``None`` -> ``"null"``, ``"a"`` -> ``'"a"'``)."""
    t = type(value)
    if t is int:
        text = int.__repr__(value)  # what json.dumps writes (and the same digit-limit error)
    elif t is str:
        text = _encode_str(value)
    elif t is bool or value is None:
        text = _LITERALS[value]
    elif t in _SCALARS and t is not float:
        text = json.dumps(value)
    else:
        try:
            text = "".join(_C_JSON(value, 0)) if _C_JSON is not None else _JSON.encode(value)
        except RecursionError as exc:
            raise SerializationError(
                f"{what} cannot be encoded as JSON: it refers to itself (a circular reference) or is nested "
                f"deeper than the recursion limit (value of type {type(value).__name__})",
                what=what,
            ) from exc
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"{what} cannot be encoded as JSON: {exc} (value of type {type(value).__name__})",
                what=what,
            ) from exc
    return check_size(text, what)


def encode_typed(value: Any, what: str = "payload") -> str:
    """Typed encoding: a ``str`` passes through raw; anything else as :func:`encode`."""
    if isinstance(value, str):
        return check_size(value, what)
    return encode(value, what)


def decode(text: str | None) -> Any:
    """Plain decoding: JSON when it parses, else the raw string; ``None`` stays ``None``."""
    if text is None:
        return None
    if text.isdigit() and text.isascii() and (len(text) == 1 or text[0] != "0") and len(text) < 19:
        return int(text)  # the common small non-negative integer, exactly as json.loads reads it
    if _SCAN is not None:
        # json.loads without its wrapper: one C scan from the first character; a value that fills
        # the text is what json.loads returns. Anything else (surrounding whitespace, trailing
        # data, an error, a non-str) goes through json.loads, which decides and words the error.
        try:
            value, end = _SCAN(text, 0)
        except Exception:  # noqa: BLE001 - StopIteration, JSONDecodeError, TypeError, RecursionError...
            pass
        else:
            if end == len(text):
                return value
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def decode_typed(text: str | None, result_type: Any = None, what: str = "payload") -> Any:
    """Decode and, when ``result_type`` is given, structure into it with cattrs."""
    value = decode(text)
    if result_type is None or result_type is Any:
        return value
    if result_type is str and isinstance(value, str):
        return value
    if attrs.has(result_type) and not isinstance(value, dict):
        # cattrs would try to read fields out of it and report a confusing field error.
        raise SerializationError(
            f"{what} does not match type {result_type.__name__}: expected a JSON object, got "
            f"{type(value).__name__} {str(value)[:80]!r}", what=what)
    try:
        return get_converter().structure(value, result_type)
    except Exception as exc:  # cattrs raises several classes (ClassValidationError, ...)
        name = getattr(result_type, "__name__", repr(result_type))
        raise SerializationError(
            f"{what} does not match type {name}: {_structure_problems(exc)}", what=what
        ) from exc


def _structure_problems(exc: Exception) -> str:
    """What cattrs found wrong, field by field ("invalid value for type, expected int @ $.n"),
    instead of its summary line ("While structuring Inp (1 sub-exception)")."""
    import cattrs

    if isinstance(exc, cattrs.BaseValidationError):
        try:
            problems = cattrs.transform_error(exc, path="$")
        except Exception:  # noqa: BLE001 - the summary line is still better than nothing
            return str(exc)
        return "; ".join(problems) if problems else str(exc)
    return f"{type(exc).__name__}: {exc}"
