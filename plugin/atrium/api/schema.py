"""JSON Schema (Draft 2020-12): small builders for the schemas routes declare, the
validator that checks requests against them, and the translation of its findings
into :class:`~atrium.errors.FieldError` values a caller can act on.

One schema serves twice: the router validates requests with it and the OpenAPI
document publishes it unchanged, so the contract and its enforcement cannot drift
apart. Objects built by :func:`obj` refuse unknown fields by default — a typo in a
field name is a 400 naming the field, not a silently ignored value.

Formats ``uuid``, ``date`` and ``date-time`` are asserted (not just annotations),
with Atrium's own strict checks so that they never depend on optional packages:
``date-time`` is RFC 3339 and must carry a zone.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from atrium.errors import FieldError, Location

__all__ = [
    "INT64_MAX", "INT64_MIN", "MAX_ERRORS", "Schema", "array", "boolean", "compile_schema",
    "date", "date_time", "enum", "field_errors", "integer", "nullable", "number", "obj",
    "quick_acceptor", "string", "uuid",
]

Schema = dict[str, Any]

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""Default bounds of :func:`integer`: what a PostgreSQL ``bigint`` holds, so that a
valid request never fails later in the database."""

MAX_ERRORS = 20
"""At most this many field errors per answer: enough to fix a form, bounded for a
hostile body of a million wrong items."""

# ------------------------------------------------------------------------ builders

def _camel(name: str) -> str:
    """``max_length`` → ``maxLength``: Python keyword arguments for JSON Schema keywords."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _schema(base: Schema, keywords: Mapping[str, Any]) -> Schema:
    """``base`` plus the keywords given (snake_case accepted), ``None`` ones left out."""
    extra = {_camel(name): value for name, value in keywords.items() if value is not None}
    return {**base, **extra}


def string(**keywords: Any) -> Schema:
    """A string; e.g. ``string(max_length=200, pattern="^[A-Z]+$", description=...)``."""
    return _schema({"type": "string"}, keywords)


def integer(*, minimum: int | None = INT64_MIN, maximum: int | None = INT64_MAX,
            **keywords: Any) -> Schema:
    """An integer, bounded to a ``bigint`` unless other bounds are given."""
    return _schema({"type": "integer"}, {"minimum": minimum, "maximum": maximum, **keywords})


def number(**keywords: Any) -> Schema:
    """A finite number (JSON has no NaN or infinity; the body parser refuses them)."""
    return _schema({"type": "number"}, keywords)


def boolean(**keywords: Any) -> Schema:
    """``true`` or ``false`` (in a query string also ``1``/``0``)."""
    return _schema({"type": "boolean"}, keywords)


def uuid(**keywords: Any) -> Schema:
    """A UUID in its canonical 8-4-4-4-12 hexadecimal form."""
    return _schema({"type": "string", "format": "uuid"}, keywords)


def date(**keywords: Any) -> Schema:
    """A calendar date, ``YYYY-MM-DD``."""
    return _schema({"type": "string", "format": "date"}, keywords)


def date_time(**keywords: Any) -> Schema:
    """An RFC 3339 timestamp with a zone (``Z`` or ``±HH:MM``)."""
    return _schema({"type": "string", "format": "date-time"}, keywords)


def enum(*values: str, **keywords: Any) -> Schema:
    """One of a fixed set of strings."""
    if not values:
        raise ValueError("enum() needs at least one allowed value")
    return _schema({"type": "string", "enum": list(values)}, keywords)


def array(items: Schema, **keywords: Any) -> Schema:
    """A list of ``items``; in a query string, comma-separated values."""
    return _schema({"type": "array", "items": items}, keywords)


def nullable(schema: Schema) -> Schema:
    """``schema`` or JSON ``null`` (for body fields a client may clear)."""
    kind = schema.get("type")
    if not isinstance(kind, str):
        return {"anyOf": [schema, {"type": "null"}]}
    widened = {**schema, "type": [kind, "null"]}
    if "enum" in schema:
        widened["enum"] = [*schema["enum"], None]
    return widened


def obj(properties: Mapping[str, Schema], *, required: Iterable[str] = (),
        additional: bool = False, **keywords: Any) -> Schema:
    """An object with these ``properties``; any other field is refused unless
    ``additional`` is true. Every name in ``required`` must be a property."""
    required = list(required)
    unknown = [name for name in required if name not in properties]
    if unknown:
        raise ValueError(f"required names {unknown} are not among the properties "
                         f"{sorted(properties)}; add them or correct the spelling")
    base: Schema = {"type": "object", "properties": dict(properties),
                    "additionalProperties": additional}
    if required:
        base["required"] = required
    return _schema(base, keywords)


# ----------------------------------------------------------------------- formats

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})", re.IGNORECASE)


def is_uuid(text: str) -> bool:
    return _UUID.fullmatch(text) is not None


def is_date(text: str) -> bool:
    if not _DATE.fullmatch(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def is_date_time(text: str) -> bool:
    if not _DATE_TIME.fullmatch(text):
        return False
    try:
        dt.datetime.fromisoformat(text.upper())
    except ValueError:
        return False
    return True


_FORMAT_CHECKS: dict[str, Callable[[str], bool]] = {
    "uuid": is_uuid, "date": is_date, "date-time": is_date_time,
}

_FORMAT_HINTS = {
    "uuid": "a UUID such as 123e4567-e89b-12d3-a456-426614174000",
    "date": "a date as YYYY-MM-DD",
    "date-time": "a date-time with a zone, such as 2024-05-01T13:45:00Z",
}


def _format_checker() -> FormatChecker:
    """jsonschema's checks for the other formats, ours for the three the API relies on."""
    checker = FormatChecker()
    for name, check in _FORMAT_CHECKS.items():
        checker.checks(name)(lambda value, check=check: not isinstance(value, str)
                             or check(value))
    return checker


# ------------------------------------------------------------- the quick path

Check = Callable[[Any], bool]

_ANNOTATIONS = frozenset({"description", "title", "examples", "default", "deprecated",
                          "readOnly", "writeOnly", "$comment"})
_NUMBER_BOUNDS: dict[str, Callable[[Any, Any], bool]] = {
    "minimum": lambda value, bound: value >= bound,
    "maximum": lambda value, bound: value <= bound,
    "exclusiveMinimum": lambda value, bound: value > bound,
    "exclusiveMaximum": lambda value, bound: value < bound,
}


def _all_of(checks: list[Check]) -> Check:
    return lambda value: all(check(value) for check in checks)


def _of_type(*types: type) -> Check:
    # type() rather than isinstance(): a bool is no integer to JSON Schema.
    return lambda value: type(value) in types


def _length_within(low: int, high: float) -> Check:
    return lambda value: low <= len(value) <= high


def _matches(pattern: str) -> Check:
    regex = re.compile(pattern)  # as jsonschema does: re.search, not a full match
    return lambda value: regex.search(value) is not None


def _among(allowed: Iterable[str]) -> Check:
    values = frozenset(allowed)
    return lambda value: value in values


def _bounded(test: Callable[[Any, Any], bool], bound: Any) -> Check:
    return lambda value: test(value, bound)


def _every_item(item: Check) -> Check:
    return lambda value: type(value) is list and all(item(part) for part in value)


def _string_checks(schema: Schema) -> list[Check] | None:
    checks = [_of_type(str)]
    if "minLength" in schema or "maxLength" in schema:
        checks.append(_length_within(schema.get("minLength", 0),
                                     schema.get("maxLength", math.inf)))
    if "pattern" in schema:
        checks.append(_matches(schema["pattern"]))
    if "format" in schema:
        known = _FORMAT_CHECKS.get(schema["format"])
        if known is None:
            return None
        checks.append(known)
    if "enum" in schema:
        if not all(isinstance(item, str) for item in schema["enum"]):
            return None
        checks.append(_among(schema["enum"]))
    return checks


def _scalar_check(schema: Any) -> Check | None:
    """A check of one string, integer, number, boolean or list of those that passes
    only values ``schema`` accepts (it may refuse some that the schema accepts, such
    as ``1.0`` for an integer); None when ``schema`` uses a keyword it does not know."""
    if not isinstance(schema, dict):
        return None
    kind = schema.get("type")
    keywords = set(schema) - _ANNOTATIONS - {"type"}
    checks: list[Check] | None
    if kind == "string":
        handled = {"minLength", "maxLength", "pattern", "format", "enum"}
        checks = _string_checks(schema)
    elif kind in ("integer", "number"):
        handled = set(_NUMBER_BOUNDS)
        checks = [_of_type(int) if kind == "integer" else _of_type(int, float)]
        checks += [_bounded(test, schema[name]) for name, test in _NUMBER_BOUNDS.items()
                   if name in schema]
    elif kind == "boolean":
        handled, checks = set(), [_of_type(bool)]
    elif kind == "array":
        handled = {"items", "minItems", "maxItems"}
        items = schema.get("items")
        item = _scalar_check(items) if isinstance(items, dict) \
            and items.get("type") != "array" else None
        if item is None:
            return None
        checks = [_every_item(item)]
        if "minItems" in schema or "maxItems" in schema:
            checks.append(_length_within(schema.get("minItems", 0),
                                         schema.get("maxItems", math.inf)))
    else:
        return None
    if checks is None or keywords - handled:
        return None
    return _all_of(checks)


def quick_acceptor(schema: Schema) -> Check | None:
    """For a flat object of scalar properties (a route's path or query parameters):
    a check that passes only instances the validator of ``schema`` accepts, at a
    fraction of its cost, so the validator runs only for what it might refuse and
    its findings keep their wording. None for any other schema."""
    if schema.get("type") != "object" or set(schema) - _ANNOTATIONS - {
            "type", "properties", "required", "additionalProperties"}:
        return None
    extra = schema.get("additionalProperties", True)
    if not isinstance(extra, bool):
        return None
    properties = schema.get("properties", {})
    checks = {name: _scalar_check(prop) for name, prop in properties.items()}
    if any(check is None for check in checks.values()):
        return None
    required = frozenset(schema.get("required", ()))

    def accepts(instance: Any) -> bool:
        if type(instance) is not dict or not required <= instance.keys():
            return False
        for name, value in instance.items():
            check = checks.get(name)
            if check is None:
                if not extra:
                    return False
            elif not check(value):
                return False
        return True

    return accepts


_PLAIN_INTEGER_KEYS = frozenset({"type", "minimum", "maximum", "description", "format"})
_items = Draft202012Validator.VALIDATORS["items"]


def _fast_items(validator: Any, items: Any, instance: Any, schema: Schema
                ) -> Iterable[ValidationError]:
    """``items``, with a shortcut for long lists of plain integers (a recording's
    samples: millions of them): when every item is an ``int`` within the bounds the
    list is valid, found at C speed instead of one schema check per item (seconds
    for a million). Any other list goes through the full check, which finds and
    names the bad items exactly as before."""
    if (isinstance(instance, list) and isinstance(items, dict)
            and items.get("type") == "integer" and _PLAIN_INTEGER_KEYS.issuperset(items)
            and all(type(item) is int for item in instance)):
        low, high = items.get("minimum"), items.get("maximum")
        if not instance or ((low is None or min(instance) >= low)
                            and (high is None or max(instance) <= high)):
            return
    yield from _items(validator, items, instance, schema)


_Validator = extend(Draft202012Validator, {"items": _fast_items})


def compile_schema(schema: Schema, *, what: str = "schema") -> Validator:
    """A validator for ``schema``, asserting formats.

    Raises
    ------
    ValueError
        When ``schema`` is not a valid Draft 2020-12 schema; ``what`` names it in the
        message (e.g. ``"body of POST /api/notes"``) so start-up points at the route.
    """
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as error:
        raise ValueError(f"The {what} is not a valid JSON Schema: {error.message}") from None
    return _Validator(schema, format_checker=_format_checker())


# ------------------------------------------------------------------------ errors

_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "object": "an object", "array": "a list",
               "null": "null"}


def _one_of(values: Iterable[Any]) -> str:
    shown = [str(value) if value is not None else "null" for value in values]
    if len(shown) > 20:
        shown = [*shown[:20], "…"]
    return ", ".join(shown)


def _type_message(error: ValidationError) -> str:
    kinds = error.validator_value if isinstance(error.validator_value, list) \
        else [error.validator_value]
    return "must be " + " or ".join(_TYPE_NAMES.get(str(kind), str(kind)) for kind in kinds)


def _plural(count: Any, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


_MESSAGES: dict[str, Callable[[ValidationError], str]] = {
    "type": _type_message,
    "format": lambda e: "must be " + _FORMAT_HINTS.get(str(e.validator_value),
                                                      f"in '{e.validator_value}' format"),
    "minimum": lambda e: f"must be at least {e.validator_value}",
    "maximum": lambda e: f"must be at most {e.validator_value}",
    "exclusiveMinimum": lambda e: f"must be greater than {e.validator_value}",
    "exclusiveMaximum": lambda e: f"must be less than {e.validator_value}",
    "multipleOf": lambda e: f"must be a multiple of {e.validator_value}",
    "enum": lambda e: f"must be one of: {_one_of(e.validator_value)}",
    "const": lambda e: f"must be {_one_of([e.validator_value])}",
    "pattern": lambda e: f"must match the pattern {e.validator_value}",
    "minLength": lambda e: f"must be at least {_plural(e.validator_value, 'character')} long",
    "maxLength": lambda e: f"must be at most {_plural(e.validator_value, 'character')} long",
    "minItems": lambda e: f"must have at least {_plural(e.validator_value, 'item')}",
    "maxItems": lambda e: f"must have at most {_plural(e.validator_value, 'item')}",
    "uniqueItems": lambda e: "must not repeat an item",
    "minProperties": lambda e: f"must have at least {_plural(e.validator_value, 'field')}",
    "maxProperties": lambda e: f"must have at most {_plural(e.validator_value, 'field')}",
    "anyOf": lambda e: "does not match any of the allowed forms",
    "oneOf": lambda e: "must match exactly one of the allowed forms",
    "not": lambda e: "is not allowed here",
}


def _name(name: str) -> str:
    """A client's field name, shortened: it is echoed back and may be anything."""
    return name if len(name) <= 64 else name[:63] + "…"


def _path(parts: Iterable[str | int]) -> str:
    text = ""
    for part in parts:
        text = f"{text}[{part}]" if isinstance(part, int) else _child(text, str(part))
    return text


def _child(parent: str, name: str) -> str:
    return f"{parent}.{_name(name)}" if parent else _name(name)


def _missing(error: ValidationError) -> list[tuple[str, str]]:
    present = error.instance if isinstance(error.instance, dict) else {}
    return [(str(name), "is required") for name in error.validator_value
            if name not in present]


def _unknown(error: ValidationError) -> list[tuple[str, str]]:
    known = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
    patterns = [re.compile(p) for p in (error.schema.get("patternProperties") or {})] \
        if isinstance(error.schema, dict) else []
    names = [name for name in (error.instance if isinstance(error.instance, dict) else {})
             if name not in known and not any(p.search(name) for p in patterns)]
    hint = f"; known fields: {_one_of(sorted(known))}" if known else ""
    return [(name, f"is not a known field{hint}") for name in names]


_PER_PROPERTY: dict[str, Callable[[ValidationError], list[tuple[str, str]]]] = {
    "required": _missing,
    "additionalProperties": _unknown,
    "unevaluatedProperties": _unknown,
}


def _describe(error: ValidationError) -> list[tuple[str, str]]:
    """(field, message) pairs for one validation error, the field relative to the
    error's location — several when one keyword names several properties."""
    per_property = _PER_PROPERTY.get(str(error.validator))
    if per_property is not None:
        return per_property(error)
    message = _MESSAGES.get(str(error.validator), lambda e: f"breaks the '{e.validator}' rule")
    return [("", message(error))]


def field_errors(validator: Validator, instance: Any, location: Location) -> list[FieldError]:
    """Everything wrong with ``instance`` (at most :data:`MAX_ERRORS`), as field
    errors; an empty list when it is valid."""
    found: list[FieldError] = []
    for error in islice(validator.iter_errors(instance), MAX_ERRORS):
        base = _path(error.absolute_path)
        for name, message in _describe(error):
            item = FieldError(location, _child(base, name) if name else base, message)
            if item not in found:
                found.append(item)
    return found[:MAX_ERRORS]
