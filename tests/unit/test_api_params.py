"""Path patterns, query-string coercion and strict JSON bodies."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrium.api.params import (
    MAX_JSON_DEPTH,
    BodySpec,
    ParamSpec,
    parse_json,
    parse_pattern,
)
from atrium.api.schema import (
    array,
    boolean,
    compile_schema,
    date,
    date_time,
    enum,
    integer,
    nullable,
    number,
    obj,
    string,
)
from atrium.api.schema import uuid as uid
from atrium.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

# ----------------------------------------------------------------------- patterns


def test_a_pattern_compiles_to_a_regex_an_openapi_template_and_schemas() -> None:
    template = parse_pattern("/api/slides/{id:uuid}/tiles/{level:int}/{name}")
    assert template.template == "/api/slides/{id}/tiles/{level}/{name}"
    assert template.params["id"]["format"] == "uuid"
    assert template.params["level"]["type"] == "integer"
    match = template.regex.match("/api/slides/abc/tiles/1/x.jpg")
    assert match is not None and match.groupdict() == {"id": "abc", "level": "1",
                                                      "name": "x.jpg"}
    assert template.regex.match("/api/slides/abc/tiles/1/x/y") is None


def test_regex_metacharacters_in_a_pattern_are_literal() -> None:
    template = parse_pattern("/api/a.b+c")
    assert template.regex.match("/api/a.b+c") and not template.regex.match("/api/aXbbc")


# ---------------------------------------------------------------------- queries

QUERY = ParamSpec.compile("query", obj({
    "limit": integer(minimum=1, maximum=1000, default=50),
    "score": number(minimum=0, maximum=1),
    "flag": boolean(),
    "kind": enum("a", "b"),
    "ids": array(uid(), max_items=3),
    "sizes": array(integer()),
    "day": date(),
    "since": date_time(),
    "q": string(max_length=20),
    "maybe": nullable(integer()),
}, required=[]), "test query")


def parse(**raw: str) -> dict[str, Any]:
    values, errors = QUERY.parse(raw)
    assert errors == [], errors
    return values


def errors_of(**raw: str) -> dict[str, str]:
    values, errors = QUERY.parse(raw)
    assert values == {}
    return {error.field: error.message for error in errors}


@pytest.mark.parametrize(("raw", "expected"), [
    ({"limit": "20"}, {"limit": 20}),
    ({"limit": "+20"}, {"limit": 20}),
    ({"score": "0.5"}, {"score": 0.5, "limit": 50}),
    ({"score": ".5"}, {"score": 0.5, "limit": 50}),
    ({"flag": "true"}, {"flag": True, "limit": 50}),
    ({"flag": "0"}, {"flag": False, "limit": 50}),
    ({"flag": "FALSE"}, {"flag": False, "limit": 50}),
    ({"ids": ""}, {"ids": [], "limit": 50}),
    ({"sizes": "1,2,3"}, {"sizes": [1, 2, 3], "limit": 50}),
    ({"maybe": "4"}, {"maybe": 4, "limit": 50}),
    ({"day": "2024-02-29"}, {"day": dt.date(2024, 2, 29), "limit": 50}),
    ({"q": "'; DROP TABLE x; --"}, {"q": "'; DROP TABLE x; --", "limit": 50}),
])
def test_query_values_are_coerced_to_their_declared_types(raw: dict[str, str],
                                                          expected: dict[str, Any]) -> None:
    assert parse(**raw) == {"limit": 50, **expected}


def test_formats_become_python_objects() -> None:
    an_id = "123e4567-e89b-12d3-a456-426614174000"
    values = parse(ids=f"{an_id},{an_id.upper()}", since="2024-05-01T13:45:00.5+02:00")
    assert values["ids"] == [uuid.UUID(an_id)] * 2
    assert values["since"] == dt.datetime(2024, 5, 1, 11, 45, 0, 500000, tzinfo=dt.UTC)


def test_an_unencoded_plus_of_a_zone_offset_is_restored() -> None:
    since = parse(since="2024-05-01T13:45:00 02:00")["since"]
    assert since.utcoffset() == dt.timedelta(hours=2)


@pytest.mark.parametrize(("raw", "field", "message"), [
    ({"limit": "0"}, "limit", "must be at least 1"),
    ({"limit": "1001"}, "limit", "must be at most 1000"),
    ({"limit": "ten"}, "limit", "must be an integer"),
    ({"limit": "1.5"}, "limit", "must be an integer"),
    ({"limit": "1e3"}, "limit", "must be an integer"),
    ({"limit": ""}, "limit", "must be an integer"),
    ({"limit": "9" * 5000}, "limit", "must be an integer"),
    ({"score": "nan"}, "score", "must be a number"),
    ({"score": "inf"}, "score", "must be a number"),
    ({"score": "1e999"}, "score", "must be a number"),
    ({"flag": "yes"}, "flag", "must be true or false"),
    ({"kind": "c"}, "kind", "must be one of: a, b"),
    ({"ids": "123"}, "ids[0]", "must be a UUID"),
    ({"ids": "{123e4567-e89b-12d3-a456-426614174000}"}, "ids[0]", "must be a UUID"),
    ({"sizes": "1,x"}, "sizes[1]", "must be an integer"),
    ({"day": "2024-02-30"}, "day", "must be a date"),
    ({"day": "20240201"}, "day", "must be a date"),
    ({"since": "2024-05-01T13:45:00"}, "since", "with a zone"),
    ({"since": "2024-05-01"}, "since", "with a zone"),
    ({"q": "x" * 21}, "q", "at most 20 characters"),
    ({"q": "a\x00b"}, "q", "NUL"),
    ({"q": "\ud800"}, "q", "surrogates"),
    ({"orderBy": "name"}, "orderBy", "is not a known field"),
])
def test_bad_query_values_are_named_with_a_reason(raw: dict[str, str], field: str,
                                                  message: str) -> None:
    found = errors_of(**raw)
    assert field in found and message in found[field]


def test_an_error_message_never_repeats_the_rejected_value() -> None:
    found = errors_of(kind="<script>secret</script>")
    assert "secret" not in found["kind"]


@given(st.dictionaries(st.text(max_size=10), st.text(max_size=30), max_size=6))
def test_any_query_string_is_either_parsed_or_refused_with_field_errors(
        raw: dict[str, str]) -> None:
    values, errors = QUERY.parse(raw)
    assert bool(values) != bool(errors)  # typed values (with the default limit) or errors
    assert all(error.location == "query" and error.message for error in errors)


# ------------------------------------------------------------------------ JSON


@pytest.mark.parametrize(("body", "reason"), [
    (b"", "not valid JSON"),
    (b"{", "not valid JSON: Expecting property name enclosed in double quotes at line 1"),
    (b"\xff\xfe{\x00}\x00", "not valid UTF-8"),
    (b'\xef\xbb\xbf{"a": 1}', "not valid JSON"),  # a BOM
    (b'{"a": 1, "a": 2}', "repeats the field 'a'"),
    (b'{"a": NaN}', "NaN"),
    (b'{"a": -Infinity}', "-Infinity"),
    (b'{"a": 1e400}', "too large for a double"),
    (b'{"a": ' + b"1" * 100 + b"}", "longer than"),
    (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "deeper than 64"),
    (b"[" * 100_000, "deeper than 64"),
    (b'{"a": "x\\u0000y"}', "NUL"),
    (b'{"x\\u0000": 1}', "NUL"),
    (b'["\\udc00"]', "surrogates"),
])
def test_malformed_json_is_a_400_saying_why(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as refused:
        parse_json(body)
    assert reason in refused.value.detail


def test_acceptable_json_edge_cases_parse() -> None:
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json(nested) is not None
    assert parse_json('{"emoji": "\\ud83d\\ude00", "é": "ü"}'.encode()) == {
        "emoji": "😀", "é": "ü"}
    assert parse_json(b'{"big": 9223372036854775807, "tiny": 1e-300}')["big"] == 2**63 - 1


@given(st.binary(max_size=300))
def test_arbitrary_bytes_either_parse_or_are_a_400(body: bytes) -> None:
    try:
        parse_json(body)
    except BadRequest as refused:
        assert refused.detail


# ----------------------------------------------------------------------- bodies

THING = compile_schema(obj({"name": string()}, required=["name"]))


def spec(**overrides: Any) -> BodySpec:
    return BodySpec(**{"validator": THING, "media_types": ("application/json",),
                       "max_bytes": 100, **overrides})


def test_a_json_body_is_checked_for_size_then_type_then_content() -> None:
    body = json.dumps({"name": "x"}).encode()
    assert spec().parse({"content-type": "application/json; charset=UTF-8"}, body) == (
        {"name": "x"}, [])
    with pytest.raises(PayloadTooLarge):
        spec().parse({"content-type": "text/plain"}, b"x" * 101)
    with pytest.raises(UnsupportedMediaType, match="none was given"):
        spec().parse({}, body)
    with pytest.raises(UnsupportedMediaType, match="UTF-8"):
        spec().parse({"content-type": "application/json; charset=latin-1"}, body)
    with pytest.raises(BadRequest, match="content-length"):
        spec().parse({"content-length": "12abc"}, body)


def test_a_missing_or_wrong_body_gives_field_errors() -> None:
    _, missing = spec().parse({}, b"")
    assert [e.message for e in missing] == ["this route needs a JSON body"]
    _, wrong = spec().parse({"content-type": "application/json"}, b'{"name": 1}')
    assert [(e.field, e.message) for e in wrong] == [("name", "must be a string")]
