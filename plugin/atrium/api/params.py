"""What a request carries — path parameters, query string, body — turned into the
validated, typed values a handler works with.

Path and query parameters arrive as text. Each is first *coerced* to the type its
schema declares (``"20"`` → ``20``, ``"true"`` → ``True``, ``"a,b"`` → ``["a", "b"]``);
text that does not coerce is left as it is, so that the schema validator reports
it with the same wording as any other type error. After validation, values with a
``uuid``, ``date`` or ``date-time`` format become :class:`uuid.UUID`,
:class:`datetime.date` and aware :class:`datetime.datetime` objects, and declared
defaults fill absent parameters.

A body is checked in the order a client fixes it: size (413), media type (415),
then JSON well-formedness and the schema (400). JSON is parsed strictly: UTF-8
only, no duplicate keys, no ``NaN``/``Infinity`` and no number outside a double's
range, nesting at most :data:`MAX_JSON_DEPTH`. Text anywhere (parameters, keys,
strings) may not contain NUL or unpaired surrogates, which PostgreSQL cannot store
— refusing them here keeps a hostile string from becoming a 500 later.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from jsonschema.protocols import Validator

from atrium.api.schema import (
    Check,
    Schema,
    compile_schema,
    field_errors,
    integer,
    obj,
    quick_acceptor,
    string,
)
from atrium.api.schema import uuid as uuid_schema
from atrium.errors import (
    BadRequest,
    FieldError,
    Location,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from atrium.json_nesting import nests_deeper_than

__all__ = [
    "JSON", "MAX_JSON_DEPTH", "PATH_CONVERTERS", "BodySpec", "Inputs", "ParamSpec", "PathTemplate",
    "is_json_media_type", "parse_json", "parse_json_part", "parse_pattern",
]

JSON = "application/json"
MAX_JSON_DEPTH = 64
_MAX_INT_DIGITS = 64  # far above any bigint; stops int() from working on huge literals

# ------------------------------------------------------------------- path patterns

PATH_CONVERTERS: dict[str, Schema] = {
    "str": string(min_length=1),
    "uuid": uuid_schema(),
    "int": integer(minimum=0),
}
"""``{name:converter}`` in a route pattern → the schema of that path segment.
``{name}`` alone is ``str``."""

_PARAM = re.compile(r"\{(\w+)(?::(\w+))?\}")


@dataclass(frozen=True)
class PathTemplate:
    """A compiled route pattern such as ``/api/slides/{id:uuid}/tiles/{level:int}``.

    Every parameter matches any one non-empty segment, so a malformed value reaches
    validation (400 naming the parameter) rather than falling through to a 404.
    """

    regex: re.Pattern[str]
    template: str  # OpenAPI's form: "/api/slides/{id}/tiles/{level}"
    params: dict[str, Schema]
    specificity: tuple[int, ...]  # per segment, 1 when literal: "/a/b" beats "/a/{x}"

    @property
    def shape(self) -> str:
        """The template without parameter names: two routes of one shape collide."""
        return _PARAM.sub("{}", self.template)


def parse_pattern(pattern: str) -> PathTemplate:
    """Compile ``pattern``; a ``ValueError`` names what is wrong with it."""
    if not pattern.startswith("/") or "//" in pattern:
        raise ValueError(f"route pattern {pattern!r} must start with '/' and have no "
                         "empty segments")
    params: dict[str, Schema] = {}
    regex, template, position = "", "", 0
    for match in _PARAM.finditer(pattern):
        name, converter = match.group(1), match.group(2) or "str"
        if converter not in PATH_CONVERTERS:
            raise ValueError(f"route pattern {pattern!r}: unknown converter {converter!r}; "
                             f"use one of {sorted(PATH_CONVERTERS)}")
        if name in params:
            raise ValueError(f"route pattern {pattern!r} names {name!r} twice")
        params[name] = PATH_CONVERTERS[converter]
        literal = pattern[position:match.start()]
        regex += re.escape(literal) + f"(?P<{name}>[^/]+)"
        template += literal + "{" + name + "}"
        position = match.end()
    regex += re.escape(pattern[position:])
    template += pattern[position:]
    if "{" in _PARAM.sub("", pattern) or "}" in _PARAM.sub("", pattern):
        raise ValueError(f"route pattern {pattern!r} has a malformed '{{...}}' parameter")
    specificity = tuple(0 if _PARAM.fullmatch(part) else 1 for part in pattern.split("/")[1:])
    return PathTemplate(re.compile(f"^{regex}$"), template, params, specificity)


# ------------------------------------------------------------ text parameters

_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_BAD_TEXT_MESSAGE = "must not contain NUL characters or unpaired surrogates"
_INTEGER = re.compile(rf"[+-]?\d{{1,{_MAX_INT_DIGITS}}}")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d{1,3})?")
_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_SPACED_OFFSET = re.compile(r" (\d{2}:\d{2})$")


def _to_int(text: str) -> Any:
    return int(text) if _INTEGER.fullmatch(text) else text


def _to_float(text: str) -> Any:
    if not _NUMBER.fullmatch(text):
        return text
    value = float(text)
    return value if math.isfinite(value) else text


def _to_bool(text: str) -> Any:
    return _BOOLEANS.get(text.lower(), text)


_COERCE: dict[str, Callable[[str], Any]] = {
    "integer": _to_int, "number": _to_float, "boolean": _to_bool,
}


def _scalar_type(schema: Schema) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return kind if isinstance(kind, str) else None


def _identity(value: Any) -> Any:
    return value


def _coercer(schema: Schema) -> Callable[[str], Any]:
    """What turns a parameter's text into the type ``schema`` declares, leaving it
    unchanged when it does not fit."""
    kind = _scalar_type(schema)
    if kind == "array":
        items = schema.get("items")
        item = _coercer(items) if isinstance(items, dict) else _identity
        return lambda text: [item(part) for part in text.split(",")] if text else []
    if kind == "string" and schema.get("format") == "date-time":
        # An unencoded '+' of a zone offset arrives as a space after URL decoding.
        return lambda text: _SPACED_OFFSET.sub(r"+\1", text)
    return _COERCE.get(kind or "", _identity)


_DECODE: dict[str, Callable[[str], Any]] = {
    "uuid": uuid.UUID,
    "date": dt.date.fromisoformat,
    "date-time": lambda text: dt.datetime.fromisoformat(text.upper()),
}


def _decoder(schema: Schema) -> Callable[[Any], Any]:
    """What turns a validated value with a known format into its Python object."""
    if _scalar_type(schema) == "array":
        items = schema.get("items")
        item = _decoder(items if isinstance(items, dict) else {})
        return lambda value: [item(part) for part in value] if isinstance(value, list) \
            else value
    decode = _DECODE.get(str(schema.get("format")))
    if decode is None:
        return _identity
    return lambda value: decode(value) if isinstance(value, str) else value


def _check_flat(schema: Schema, what: str) -> None:
    if schema.get("type") != "object" or not isinstance(schema.get("properties"), dict):
        raise ValueError(f"The {what} must be an object schema with 'properties' "
                         "(build it with schema.obj)")
    for name, prop in schema["properties"].items():
        kind = _scalar_type(prop)
        if kind == "array":
            kind = _scalar_type(prop.get("items") or {})
        if kind not in ("string", "integer", "number", "boolean"):
            raise ValueError(f"The {what}: parameter {name!r} must be a string, integer, "
                             "number, boolean or a list of those; text parameters cannot "
                             "carry objects")


@dataclass(frozen=True)
class ParamSpec:
    """Named text parameters (the path's or the query string's) and the object
    schema that types them."""

    location: Location
    schema: Schema
    validator: Validator
    accepts: Check | None = None  # passes only what the validator passes, quicker

    @classmethod
    def compile(cls, location: Location, schema: Schema | None, what: str) -> ParamSpec:
        """``schema`` None means no parameter is accepted."""
        schema = obj({}) if schema is None else schema
        _check_flat(schema, what)
        return cls(location, schema, compile_schema(schema, what=what), quick_acceptor(schema))

    @property
    def properties(self) -> dict[str, Schema]:
        return dict(self.schema["properties"])

    @functools.cached_property
    def _converters(self) -> dict[str, tuple[Callable[[str], Any], Callable[[Any], Any]]]:
        """Per parameter, its coercion and its decoding, worked out once."""
        return {name: (_coercer(prop), _decoder(prop))
                for name, prop in self.schema["properties"].items()}

    @functools.cached_property
    def _defaults(self) -> tuple[tuple[str, Any], ...]:
        return tuple((name, prop["default"]) for name, prop in self.schema["properties"].items()
                     if "default" in prop)

    def parse(self, raw: Mapping[str, str]) -> tuple[dict[str, Any], list[FieldError]]:
        """Typed values, or the errors that prevent them."""
        dirty = [FieldError(self.location, name[:64], _BAD_TEXT_MESSAGE)
                 for name, text in raw.items() if _BAD_TEXT.search(name + text)]
        if dirty:
            return {}, dirty
        converters = self._converters
        values = {name: converters[name][0](text) if name in converters else text
                  for name, text in raw.items()}
        if self.accepts is None or not self.accepts(values):
            errors = field_errors(self.validator, values, self.location)
            if errors:
                return {}, errors
        typed = {name: converters[name][1](value) if name in converters else value
                 for name, value in values.items()}
        for name, default in self._defaults:
            if name not in typed:
                typed[name] = default
        return typed, []


# --------------------------------------------------------------------- JSON bodies

class _Rejected(Exception):
    """A body that is not acceptable JSON; the message completes "The body ..."."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Rejected(f"repeats the field '{key[:64]}'")
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise _Rejected(f"contains {name}, which JSON does not allow; send a number or null")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected("contains a number too large for a double")
    return value


def _bounded_int(text: str) -> int:
    if len(text) > _MAX_INT_DIGITS:
        raise _Rejected(f"contains an integer longer than {_MAX_INT_DIGITS} digits")
    return int(text)


def _check_text(value: Any) -> None:
    """NUL and surrogates in strings (keys included), which only escapes can write.

    Iterative, so that walking a document costs memory, not stack.
    """
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            if _BAD_TEXT.search(node):
                raise _Rejected(f"has a string that {_BAD_TEXT_MESSAGE}")
        elif isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _loads(text: str) -> Any:
    # Measured before parsing: json's C parser recurses, and on one of Orthanc's
    # HTTP threads a few hundred levels overflow the stack (atrium.json_nesting).
    if nests_deeper_than(text, MAX_JSON_DEPTH):
        raise _Rejected(f"nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates,
                           parse_constant=_no_constant, parse_float=_finite,
                           parse_int=_bounded_int)
    except json.JSONDecodeError as error:
        raise _Rejected(f"is not valid JSON: {error.msg} at line {error.lineno} "
                        f"column {error.colno}") from None
    if "\\u" in text:
        _check_text(value)
    return value


def parse_json(body: bytes) -> Any:
    """``body`` as JSON, strictly.

    Raises
    ------
    BadRequest
        Naming what is wrong: encoding, syntax (with line and column), duplicate
        keys, non-finite numbers, depth, or forbidden characters.
    """
    try:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Rejected(f"is not valid UTF-8 (at byte {error.start})") from None
        return _loads(text)
    except _Rejected as rejected:
        raise BadRequest.invalid([FieldError("body", "", f"the body {rejected}")]) from None


def parse_json_part(text: str, name: str) -> Any:
    """A form part's text as JSON, as strictly as :func:`parse_json` reads a body.

    Raises
    ------
    BadRequest
        For the field ``name``, saying what is wrong.
    """
    try:
        return _loads(text)
    except _Rejected as rejected:
        raise BadRequest.invalid([FieldError("body", name, f"the part {rejected}")]) from None


# ------------------------------------------------------------------ body checks

def is_json_media_type(media_type: str) -> bool:
    return media_type == JSON or (media_type.startswith("application/")
                                  and media_type.endswith("+json"))


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    """``"Application/JSON; charset=UTF-8"`` → ``("application/json", {"charset": "utf-8"})``."""
    kind, *parameters = header.split(";")
    pairs = (p.split("=", 1) for p in parameters if "=" in p)
    return kind.strip().lower(), {k.strip().lower(): v.strip().strip('"').lower()
                                  for k, v in pairs}


@dataclass(frozen=True)
class BodySpec:
    """What a route accepts as a body.

    ``validator`` None with only JSON accepted means the route takes no body;
    non-JSON media types (uploads) reach the handler as raw bytes.
    """

    validator: Validator | None
    media_types: tuple[str, ...]
    max_bytes: int
    too_large_hint: str = ""  # appended to the 413's detail

    @property
    def takes_body(self) -> bool:
        return self.validator is not None or any(
            not is_json_media_type(m) for m in self.media_types)

    def check_size(self, headers: Mapping[str, str], body: bytes) -> None:
        """413 when the declared or the actual length exceeds the limit."""
        declared = headers.get("content-length", "").strip()
        if declared and not declared.isdigit():
            raise BadRequest.invalid([FieldError("header", "content-length",
                                                 "must be a whole number of bytes")])
        if max(int(declared or 0), len(body)) > self.max_bytes:
            hint = f" {self.too_large_hint}" if self.too_large_hint else ""
            raise PayloadTooLarge(f"The body is larger than this route's limit of "
                                  f"{self.max_bytes} bytes.{hint}", max_bytes=self.max_bytes)

    def parse(self, headers: Mapping[str, str], body: bytes) -> tuple[Any, list[FieldError]]:
        """The validated JSON body (None for none or for raw uploads), or the errors."""
        self.check_size(headers, body)
        if not body:
            missing = FieldError("body", "", "this route needs a JSON body")
            return None, ([missing] if self.validator is not None else [])
        if not self.takes_body:
            return None, [FieldError("body", "", "this route takes no body; send none")]
        media_type, parameters = _media_type(headers.get("content-type", ""))
        if media_type not in self.media_types:
            got = f" (got {media_type[:80]})" if media_type else " (none was given)"
            raise UnsupportedMediaType(
                f"Send the body as {' or '.join(self.media_types)}{got}.",
                accepted=list(self.media_types))
        if not is_json_media_type(media_type) or self.validator is None:
            return None, []
        if parameters.get("charset", "utf-8") != "utf-8":
            raise UnsupportedMediaType("Send JSON encoded as UTF-8 (charset=utf-8).",
                                       accepted=list(self.media_types))
        value = parse_json(body)
        return value, field_errors(self.validator, value, "body")


# ------------------------------------------------------------------- all inputs

@dataclass(frozen=True)
class Inputs:
    """A route's three inputs, compiled once when the route is declared."""

    path: ParamSpec
    query: ParamSpec
    body: BodySpec

    def read(self, raw_params: Mapping[str, str], query: Mapping[str, str],
             headers: Mapping[str, str], body: bytes
             ) -> tuple[dict[str, Any], dict[str, Any], Any]:
        """Typed path parameters, query parameters and JSON body.

        Raises
        ------
        PayloadTooLarge, UnsupportedMediaType
            First, as they make the rest moot.
        BadRequest
            With every field error of path, query and body in one answer.
        """
        json_body, body_errors = self.body.parse(headers, body)
        params, path_errors = self.path.parse(raw_params)
        args, query_errors = self.query.parse(query)
        errors = [*path_errors, *query_errors, *body_errors]
        if errors:
            raise BadRequest.invalid(errors)
        return params, args, json_body
