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
import types
import typing
from typing import Any

import attrs

from ..errors import PayloadTooLargeError, SerializationError
from .texts import plain_text

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
#: The most characters of an error text that is stored (an activity's exception message, an
#: orchestration's traceback): longer ones are cut in the middle, so a dumped response body in an
#: exception cannot put more than MAX_PAYLOAD_BYTES into a history event or a status row (even
#: JSON-escaped: at most 6 bytes per character).
MAX_ERROR_TEXT_CHARS = 1024 * 1024
#: The deepest nesting of arrays and objects a payload may have. Python's JSON reader recurses
#: once per level within the interpreter's recursion limit (1000 by default), from wherever it
#: is called: a value the client encoded near the top of its stack failed to decode deep in a
#: dispatcher and arrived as its raw text. Refused where encoded, with room to spare for any
#: reader. (The reference's serde_json reads at most 128 levels.)
MAX_NESTING_DEPTH = 512

_converter: Any = None


def get_converter() -> Any:
    """The cattrs converter used for typed I/O (``codec.converter``), created on first use so a
    program that never passes records does not import cattrs. Users may register hooks on it.

    Stricter than cattrs' defaults, which convert by calling the type (``bool("false")`` is
    True, ``int(2.9)`` is 2, ``str({...})`` a repr, ``list("abc")`` three letters): a JSON value
    of the wrong kind is an error at the point of use. Numbers may widen (an int where a float
    is declared), nothing else converts; records and sequences must come as JSON objects and
    arrays."""
    global _converter
    if _converter is None:
        _converter = _strict_converter()
    return _converter


def _strict_converter() -> Any:
    import dataclasses

    import cattrs
    from cattrs.cols import (
        homogenous_tuple_structure_factory,
        is_mapping,
        is_sequence,
        list_structure_factory,
        mapping_structure_factory,
    )
    from cattrs.gen import make_dict_structure_fn

    conv = cattrs.Converter()

    def exact(kinds: tuple[type, ...], label: str) -> Any:
        def hook(value: Any, type_: Any) -> Any:
            if type(value) not in kinds:
                raise ValueError(f"expected {label}, got {_kind(value)}")
            # A subclass target (a string or integer enum) is built from the value, as cattrs
            # builds enums: Level("1") - only from the exact JSON kind, so no coercion.
            return value if type_ in kinds else type_(value)
        return hook

    conv.register_structure_hook(str, exact((str,), "a string"))
    conv.register_structure_hook(bool, exact((bool,), "true or false"))
    conv.register_structure_hook(int, exact((int,), "an integer"))

    def to_float(value: Any, type_: Any) -> float:
        if type(value) not in (int, float):
            raise ValueError(f"expected a number, got {_kind(value)}")
        return float(value) if type_ is float else type_(value)

    conv.register_structure_hook(float, to_float)

    def none_hook(value: Any, _type: Any) -> None:
        if value is not None:
            raise ValueError(f"expected null, got {_kind(value)}")

    conv.register_structure_hook_func(lambda t: t is type(None), none_hook)

    # A union of JSON scalars (``int | str``, ``int | float | None``): the member of the value's
    # exact JSON kind, as the hooks above would read it (cattrs has no hook for such unions).
    scalar_kinds = {str: "a string", int: "an integer", float: "a number", bool: "true or false", type(None): "null"}

    def is_scalar_union(tp: Any) -> bool:
        args = typing.get_args(tp)
        return (typing.get_origin(tp) in (typing.Union, types.UnionType) and bool(args)
                and all(a in scalar_kinds for a in args))

    def scalar_union_hook(value: Any, tp: Any) -> Any:
        args = typing.get_args(tp)
        kind = type(value)
        if kind in args:
            return value
        if kind is int and float in args:
            return float(value)
        raise ValueError(f"expected {' or '.join(scalar_kinds[a] for a in args)}, got {_kind(value)}")

    conv.register_structure_hook_func(is_scalar_union, scalar_union_hook)

    def sequence_factory(tp: Any, c: Any) -> Any:
        inner = (homogenous_tuple_structure_factory(tp, c) if (typing.get_origin(tp) or tp) is tuple
                 else list_structure_factory(tp, c))

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"expected a JSON array, got {_kind(value)}")
            return inner(value, t)
        return hook

    conv.register_structure_hook_factory(is_sequence, sequence_factory)

    def mapping_factory(tp: Any, c: Any) -> Any:
        # JSON object keys are strings: a dict[int, ...] (or float keys, or an int enum) wrote
        # its keys as "81"; they are read back as numbers, and only when they spell one.
        inner = mapping_structure_factory(tp, c)
        args = typing.get_args(tp)
        key_type = args[0] if args else Any
        numeric = isinstance(key_type, type) and issubclass(key_type, (int, float)) and key_type is not bool

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object, got {_kind(value)}")
            if numeric:
                value = {_numeric_key(k, key_type): v for k, v in value.items()}
            return inner(value, t)
        return hook

    conv.register_structure_hook_factory(is_mapping, mapping_factory)

    def is_record(tp: Any) -> bool:
        return isinstance(tp, type) and (attrs.has(tp) or dataclasses.is_dataclass(tp))

    def record_factory(tp: Any, c: Any) -> Any:
        inner = make_dict_structure_fn(tp, c)

        def hook(value: Any, t: Any) -> Any:
            if not isinstance(value, dict):
                raise ValueError(f"expected a JSON object for {tp.__name__}, got {_kind(value)}")
            return inner(value, t)
        return hook

    conv.register_structure_hook_factory(is_record, record_factory)
    _strict_unstructure(conv, is_record)
    return conv


def _strict_unstructure(conv: Any, is_record: Any) -> None:
    """Sending: cattrs unstructures a record's fields by their declared types, so a value of
    another kind was silently reshaped (a ``str`` in a ``list[str]`` field went out as a list of
    its letters, a dict as a list of its keys, a 3-tuple in a ``tuple[int, str]`` field was cut
    to two items) or failed with cattrs' internal error (an enum field holding a plain string).
    These hooks refuse such a value with what was declared, what was found and the field's name.
    A record's scalar fields (``str``, ``int``, ``float``, ``bool`` and unions of them with
    ``None``) are checked by the JSON kind they would be written as, by the receiver's rules
    (an ``int`` is accepted where a ``float`` is declared; a ``bool`` is not an ``int``), so an
    ``int`` field holding ``"5"`` is refused where it is sent, not where it is read."""
    import collections.abc as abc
    import enum

    from cattrs.cols import (
        is_mapping,
        is_sequence,
        iterable_unstructure_factory,
        make_hetero_tuple_unstructure_fn,
        mapping_unstructure_factory,
    )
    from cattrs.gen import make_dict_unstructure_fn

    def sequence_factory(tp: Any, c: Any) -> Any:
        inner = iterable_unstructure_factory(tp, c)

        def hook(value: Any) -> Any:
            t = type(value)
            if t is not list and t is not tuple and (
                    isinstance(value, (str, bytes, bytearray)) or not isinstance(value, abc.Sequence)):
                raise TypeError(f"expected a list or tuple for {_type_label(tp)}, got {_kind(value)}")
            return inner(value)
        return hook

    def mapping_factory(tp: Any, c: Any) -> Any:
        inner = mapping_unstructure_factory(tp, c)

        def hook(value: Any) -> Any:
            if not isinstance(value, abc.Mapping):
                raise TypeError(f"expected a dict for {_type_label(tp)}, got {_kind(value)}")
            return inner(value)
        return hook

    def is_fixed_tuple(tp: Any) -> bool:
        args = typing.get_args(tp)
        return typing.get_origin(tp) is tuple and bool(args) and not (len(args) == 2 and args[1] is Ellipsis)

    def fixed_tuple_factory(tp: Any, c: Any) -> Any:
        inner = make_hetero_tuple_unstructure_fn(tp, c)
        n = len(typing.get_args(tp))

        def hook(value: Any) -> Any:
            if type(value) not in (list, tuple) or len(value) != n:
                raise TypeError(f"expected {n} items for {_type_label(tp)}, got {_kind(value)}")
            return inner(value)
        return hook

    def is_enum(tp: Any) -> bool:
        return isinstance(tp, type) and issubclass(tp, enum.Enum)

    def enum_factory(tp: Any, c: Any) -> Any:
        def hook(value: Any) -> Any:
            if not isinstance(value, tp):
                raise TypeError(f"expected a {tp.__name__} member, got {_kind(value)}")
            return c.unstructure(value.value)
        return hook

    # The JSON kinds the receiver's scalar hooks accept for each declared scalar type.
    json_kinds = {str: ("a string", (str,)), int: ("an integer", (int,)), float: ("a number", (int, float)),
                  bool: ("true or false", (bool,)), type(None): ("null", (type(None),))}

    def json_kind(value: Any) -> type | None:
        """The JSON kind ``value`` is written as (bool before int: True is an int; an enum
        member as its value), or None for anything else (records, containers)."""
        if isinstance(value, enum.Enum):
            value = value.value
        for kind in (bool, str, int, float, type(None)):
            if isinstance(value, kind):
                return kind
        return None

    def scalar_checks(tp: Any) -> tuple[tuple[str, str, tuple[type, ...]], ...]:
        """(field name, label, accepted JSON kinds) for the record's fields declared as a JSON
        scalar or a union of them."""
        import dataclasses

        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # noqa: BLE001 - unresolvable annotations: not checked here
            return ()
        names = [f.name for f in (attrs.fields(tp) if attrs.has(tp) else dataclasses.fields(tp))]
        checks = []
        for name in names:
            declared = hints.get(name)
            members = (typing.get_args(declared) if typing.get_origin(declared) in (typing.Union, types.UnionType)
                       else (declared,))
            if not members or not all(m in json_kinds for m in members):
                continue
            accepted = tuple(dict.fromkeys(k for m in members for k in json_kinds[m][1]))
            label = " or ".join(json_kinds[m][0] for m in members)
            checks.append((name, label, accepted))
        return tuple(checks)

    def record_factory(tp: Any, c: Any) -> Any:
        inner = make_dict_unstructure_fn(tp, c)
        checks = scalar_checks(tp)

        def hook(value: Any) -> Any:
            for name, label, accepted in (checks if isinstance(value, tp) else ()):
                field_value = getattr(value, name, None)
                # (a value whose exact type is accepted is of that JSON kind: json_kind only
                # decides the rest - bool vs int, str / int subclasses such as enum members)
                if type(field_value) not in accepted and json_kind(field_value) not in accepted:
                    raise TypeError(f"{tp.__name__}.{name}: expected {label}, got {_kind(field_value)}")
            try:
                return inner(value)
            except RecursionError:
                raise  # (a circular value: encode() words it; probing its fields would recurse again)
            except Exception as exc:  # noqa: BLE001 - named by field, then raised again
                raise _field_error(c, tp, value, exc) from exc
        return hook

    conv.register_unstructure_hook_factory(is_sequence, sequence_factory)
    conv.register_unstructure_hook_factory(is_mapping, mapping_factory)
    conv.register_unstructure_hook_factory(is_fixed_tuple, fixed_tuple_factory)
    conv.register_unstructure_hook_factory(is_enum, enum_factory)
    conv.register_unstructure_hook_factory(is_record, record_factory)


def _type_label(tp: Any) -> str:
    text = repr(tp) if typing.get_args(tp) else getattr(tp, "__name__", repr(tp))
    return text.replace("typing.", "")


def _field_error(conv: Any, tp: type, value: Any, exc: Exception) -> Exception:
    """``exc`` re-raised with the first field of ``value`` (a ``tp``) that does not unstructure
    named in front (``Order.items: expected a list ...``; nested records chain the names)."""
    import dataclasses

    if type(value) is tp:
        fields = attrs.fields(tp) if attrs.has(tp) else dataclasses.fields(tp)
        try:
            hints = typing.get_type_hints(tp)
        except Exception:  # noqa: BLE001 - unresolvable annotations: the declared ones
            hints = {}
        for f in fields:
            try:
                conv.unstructure(getattr(value, f.name), hints.get(f.name, f.type))
            except Exception as inner:  # noqa: BLE001
                return TypeError(f"{tp.__name__}.{f.name}: {inner}")
    return exc


def _numeric_key(key: Any, key_type: type) -> Any:
    """A JSON object key read as the number it spells (``"81"`` -> 81, ``"1.5"`` -> 1.5); other
    keys are left for the key type's hook to refuse."""
    if isinstance(key, str):
        try:
            number = json.loads(key)
        except ValueError:
            return key
        if type(number) is int or (type(number) is float and not issubclass(key_type, int)):
            return number
    return key


def _kind(value: Any) -> str:
    """A short description of a JSON value for error messages."""
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", type(None): "null",
             list: "an array", dict: "an object"}
    text = repr(value)
    return f"{names.get(type(value), type(value).__name__)} {text[:60] + ('...' if len(text) > 60 else '')}"


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


def bounded_error_text(text: str) -> str:
    """``text`` if at most :data:`MAX_ERROR_TEXT_CHARS` long, else its head and tail around a
    note of how much was cut (the head says what failed, the tail ends with the exception line)."""
    if len(text) <= MAX_ERROR_TEXT_CHARS:
        return text
    keep = MAX_ERROR_TEXT_CHARS // 2
    return f"{text[:keep]}\n... [{len(text) - 2 * keep} characters cut] ...\n{text[-keep:]}"


#: Values that are never types: a ``result_type`` of one of these was accepted by the typed calls,
#: the work ran, and then its result "did not match type {}" - blaming the result.
_NOT_TYPES = (dict, list, tuple, set, frozenset, str, bytes, bytearray, int, float, complex, bool)


def check_result_type(result_type: Any) -> Any:
    """``result_type`` if it can describe a value (None, a class, a typing form such as
    ``list[int]`` or ``Optional[Order]``); TypeError naming it when it is a value instead."""
    if result_type is not None and isinstance(result_type, _NOT_TYPES):
        raise TypeError(f"result_type must be a type (a class, or a typing form such as list[int]), "
                        f"got {type(result_type).__name__} {result_type!r}"[:300])
    return result_type


def check_text(text: str, what: str) -> str:
    """``text`` if every store can hold it: SerializationError for a lone surrogate (what
    ``os.fsdecode`` or ``errors="surrogateescape"`` make of undecodable bytes), which no store
    can encode as UTF-8 - refused where it is set, with what and where, instead of failing the
    commit that would store it."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise SerializationError(
                f"{what} is not valid Unicode text: it holds a lone surrogate ({text[exc.start]!r} at index "
                f"{exc.start}), which cannot be stored; decode bytes strictly, or escape them first "
                "(e.g. text.encode('utf-8', 'backslashreplace').decode())",
                what=what,
            ) from None
    # A str subclass (a StrEnum member) is stored as plain text: the in-memory provider kept the
    # caller's object, so reads differed from SQLite's (and the reference's) plain str.
    return plain_text(text)


def check_size(text: str, what: str) -> str:
    if text.isascii():
        size = len(text)  # (one byte per character)
    else:
        check_text(text, what)
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
        try:
            text = int.__repr__(value)  # what json.dumps writes
        except ValueError as exc:  # over the interpreter's int-to-text digit limit
            raise SerializationError(f"{what} cannot be encoded as JSON: {exc}", what=what) from exc
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
        except Exception as exc:  # noqa: BLE001 - TypeError/ValueError, or cattrs failing on the record's type
            raise SerializationError(
                f"{what} cannot be encoded as JSON: {type(exc).__name__ + ': ' if not isinstance(exc, (TypeError, ValueError)) else ''}"
                f"{exc} (value of type {type(value).__name__})",
                what=what,
            ) from exc
        # (only a container's text nests: a scalar's - a JSON string's brackets included - never does)
        if len(text) > 2 * MAX_NESTING_DEPTH and text.count("[") + text.count("{") > MAX_NESTING_DEPTH:
            depth = _nesting_depth(text)
            if depth > MAX_NESTING_DEPTH:
                raise SerializationError(
                    f"{what} is nested {depth} levels deep (arrays and objects), over the limit of "
                    f"{MAX_NESTING_DEPTH}: flatten it (value of type {type(value).__name__})",
                    what=what,
                )
    return check_size(text, what)


#: A JSON string (escapes included), compiled on first use; the ASCII that is not a bracket;
#: the depth step of each bracket byte.
_JSON_STRING: Any = None
_NOT_BRACKETS = {c: None for c in range(128) if chr(c) not in "[]{}"}
_BRACKET_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _nesting_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in a JSON text (brackets inside strings ignored).
    Only for texts with more brackets than the limit: ~the time of encoding them again."""
    import itertools
    import re

    global _JSON_STRING
    if _JSON_STRING is None:
        _JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
    brackets = _JSON_STRING.sub("", text).translate(_NOT_BRACKETS).encode("ascii", "ignore")
    return max(itertools.accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def encode_typed(value: Any, what: str = "payload") -> str:
    """Typed encoding: a ``str`` passes through raw; anything else (a ``str`` subclass such as a
    string enum included) as :func:`encode`."""
    if type(value) is str:
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
    except (ValueError, TypeError, RecursionError):  # (text of many "[": not JSON this parser reads)
        return text


def decode_typed(text: str | None, result_type: Any = None, what: str = "payload") -> Any:
    """Decode and, when ``result_type`` is given, structure into it with cattrs.

    ``result_type=str`` reads the text as the typed API wrote it: a JSON string is its value,
    any other text is returned as it is (``"1.50"`` stays ``"1.50"``, not the number 1.5 made
    into ``"1.5"``), as the reference's typed codec does."""
    value = decode(text)
    if result_type is None or result_type is Any:
        return value
    if result_type is str:
        if isinstance(value, str) or text is None:
            return value if text is not None else _str_from_null(what)
        return text
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


def _str_from_null(what: str) -> Any:
    raise SerializationError(f"{what} does not match type str: there is no value (null)", what=what)


def _structure_problems(exc: Exception) -> str:
    """What cattrs found wrong, field by field ("invalid value for type, expected int @ $.n"),
    instead of its summary line ("While structuring Inp (1 sub-exception)")."""
    import cattrs

    if isinstance(exc, cattrs.BaseValidationError):
        try:
            problems = cattrs.transform_error(exc, path="$", format_exception=_format_problem)
        except Exception:  # noqa: BLE001 - the summary line is still better than nothing
            return str(exc)
        return "; ".join(problems) if problems else str(exc)
    return f"{type(exc).__name__}: {exc}"


def _format_problem(exc: BaseException, type_: Any) -> str:
    """cattrs' wording for one problem, plus the exception's own message when it says more
    (a validator's "'qty' must be > 0", our "expected an integer, got a string '2'")."""
    from cattrs.v import format_exception

    base = format_exception(exc, type_)
    message = str(exc)
    if isinstance(exc, ValueError) and message.startswith("expected "):
        return message  # ours already says what was expected and what came
    if isinstance(exc, ValueError) and message and message not in base:
        return f"{base}: {message}" if base != "invalid value" else f"invalid value: {message}"
    return base
