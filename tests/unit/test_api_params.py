"""Path patterns, query-string coercion and strict JSON bodies."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
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
from tests.support.app_routes import app_routes

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


# ------------------------------------------- the quick path changes no outcome

_TEXTS = ["", "0", "3", "-1", "1.5", "1e3", "9" * 30, "true", "false", "1", "jpeg", "png",
          "x" * 300, "a,b", "2024-02-29", "2024-02-30", "2024-05-01T13:45:00Z",
          "2024-05-01 13:45:00 01:00", "123e4567-e89b-12d3-a456-426614174000",
          "123E4567-E89B-12D3-A456-426614174000", "123e4567e89b12d3a456426614174000",
          "\x00", "NaN", " 7", "07"]


def _edges(prop: dict[str, Any]) -> list[str]:
    """Texts on both sides of each limit ``prop`` declares, and its allowed values."""
    items = prop.get("items", {})
    texts = [str(value) for value in prop.get("enum", items.get("enum", []))]
    for name in ("minLength", "maxLength"):
        if name in prop or name in items:
            n = prop.get(name, items.get(name))
            texts += ["x" * max(n - 1, 0), "x" * n, "x" * (n + 1)]
    for name in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        if name in prop:
            texts += [str(prop[name] + step) for step in (-1, 0, 1)]
    for name in ("minItems", "maxItems"):
        if name in prop:
            texts += [",".join(["1"] * n) for n in (prop[name] - 1, prop[name], prop[name] + 1)
                      if n > 0]
    return texts


def _raw_parameters(spec: ParamSpec) -> st.SearchStrategy[dict[str, str]]:
    names = [*spec.properties, "unknown"]
    edges = [text for prop in spec.properties.values() for text in _edges(prop)]
    texts = st.sampled_from(_TEXTS) | st.text(max_size=12) \
        | st.lists(st.sampled_from(_TEXTS[:8]), min_size=1, max_size=3).map(",".join)
    if edges:
        texts = st.sampled_from(edges) | texts
    return st.dictionaries(st.sampled_from(names), texts, max_size=len(names))


def test_the_quick_check_of_parameters_never_changes_what_a_route_answers(
        tmp_path: Path) -> None:
    """Every path and query of Atrium's routes, parsed with the quick check and by
    the schema validator alone, gives the same values or the same errors."""
    specs = [spec for route in app_routes(tmp_path)
             for spec in (route.inputs.path, route.inputs.query) if spec.properties]
    quick = [spec for spec in specs if spec.accepts is not None]
    assert len(quick) > 0.9 * len(specs), "most routes' parameters should take the quick path"
    accepted = [0]

    @settings(max_examples=4000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data(), spec=st.sampled_from(quick))
    def same_outcome(data: st.DataObject, spec: ParamSpec) -> None:
        raw = data.draw(_raw_parameters(spec))
        assert spec.parse(raw) == replace(spec, accepts=None).parse(raw), raw
        accepted[0] += bool(spec.accepts and spec.accepts(
            {name: value for name, value in spec.parse(raw)[0].items() if name in raw}))

    same_outcome()
    assert accepted[0] > 100  # the valid side was explored, not only refusals


def test_a_tile_request_takes_the_quick_path(tmp_path: Path) -> None:
    tile = next(route for route in app_routes(tmp_path)
                if route.pattern.startswith("/api/slides/{id:uuid}/tiles/"))
    for spec in (tile.inputs.path, tile.inputs.query):
        assert spec.accepts is not None
    assert tile.inputs.path.accepts({"id": "123e4567-e89b-12d3-a456-426614174000",  # type: ignore[misc]
                                     "level": 3, "col": 10, "row": 0})
