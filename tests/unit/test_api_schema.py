"""Schema builders, asserted formats, and field errors a caller can act on."""

from __future__ import annotations

from typing import Any

import pytest

from atrium.api.schema import (
    INT64_MAX,
    MAX_ERRORS,
    array,
    compile_schema,
    date_time,
    enum,
    field_errors,
    integer,
    nullable,
    number,
    obj,
    string,
    uuid,
)
from atrium.errors import BadRequest, FieldError


def errors(schema: dict[str, Any], instance: Any) -> list[tuple[str, str]]:
    found = field_errors(compile_schema(schema), instance, "body")
    return [(error.field, error.message) for error in found]


def test_objects_refuse_unknown_fields_unless_told_otherwise() -> None:
    closed = obj({"a": string()})
    assert errors(closed, {"a": "x", "b": 1}) == [("b", "is not a known field; known fields: a")]
    assert errors(obj({"a": string()}, additional=True), {"b": 1}) == []


def test_builders_take_snake_case_keywords() -> None:
    assert string(max_length=3, description="d") == {
        "type": "string", "maxLength": 3, "description": "d"}
    assert array(string(), min_items=1, unique_items=True)["uniqueItems"] is True
    assert integer()["maximum"] == INT64_MAX
    assert integer(minimum=None)["type"] == "integer" and "minimum" not in integer(minimum=None)


def test_required_names_must_be_declared_properties() -> None:
    with pytest.raises(ValueError, match="'nmae'"):
        obj({"name": string()}, required=["nmae"])


def test_nullable_accepts_null_and_keeps_the_rest() -> None:
    schema = obj({"kind": nullable(enum("a", "b")), "n": nullable(obj({}))})
    assert errors(schema, {"kind": None, "n": None}) == []
    assert errors(schema, {"kind": "c"})[0][0] == "kind"


@pytest.mark.parametrize(("schema", "instance", "expected"), [
    (obj({"n": integer(minimum=0)}), {"n": -1}, [("n", "must be at least 0")]),
    (obj({"n": number(exclusive_maximum=1)}), {"n": 1}, [("n", "must be less than 1")]),
    (obj({"n": integer()}), {"n": 2**70}, [("n", f"must be at most {INT64_MAX}")]),
    (obj({"n": integer()}), {"n": "1"}, [("n", "must be an integer")]),
    (obj({"n": nullable(integer())}), {"n": "1"}, [("n", "must be an integer or null")]),
    (obj({"id": uuid()}), {"id": "123"}, [("id", "must be a UUID such as "
                                                  "123e4567-e89b-12d3-a456-426614174000")]),
    (obj({"at": date_time()}), {"at": "2024-13-01T00:00:00Z"},
     [("at", "must be a date-time with a zone, such as 2024-05-01T13:45:00Z")]),
    (obj({"tags": array(string(max_length=2), max_items=2)}), {"tags": ["a", "abc"]},
     [("tags[1]", "must be at most 2 characters long")]),
    (obj({"p": obj({"x": number()}, required=["x"])}), {"p": {}}, [("p.x", "is required")]),
    (obj({"s": string(pattern="^[A-Z]+$")}), {"s": "a"}, [("s", "must match the pattern "
                                                              "^[A-Z]+$")]),
    (array(obj({"a": string()})), [{"a": 1}], [("[0].a", "must be a string")]),
])
def test_each_rule_has_a_sentence(schema: dict[str, Any], instance: Any,
                                  expected: list[tuple[str, str]]) -> None:
    assert errors(schema, instance) == expected


def test_a_flood_of_errors_is_capped() -> None:
    found = errors(array(integer()), ["x"] * 10_000)
    assert len(found) == MAX_ERRORS


def test_an_invalid_schema_is_refused_when_compiled() -> None:
    with pytest.raises(ValueError, match="body of POST /x is not a valid JSON Schema"):
        compile_schema({"type": "thing"}, what="body of POST /x")


def test_a_bad_request_names_the_first_field_and_lists_all() -> None:
    problem = BadRequest.invalid([FieldError("query", "limit", "must be at most 1000"),
                                  FieldError("body", "name", "is required")]).problem()
    assert problem["status"] == 400
    assert problem["detail"] == ("Invalid query parameter 'limit': must be at most 1000 "
                                 "(and 1 more; see 'errors')")
    assert problem["errors"][1] == {"in": "body", "field": "name", "message": "is required"}


def test_a_long_field_name_is_shortened_when_echoed() -> None:
    name = "k" * 10_000
    [(field, _message)] = errors(obj({"a": string()}), {name: 1})
    assert len(field) == 64 and field.endswith("…")


def test_long_integer_lists_are_checked_whole_and_bad_items_still_named() -> None:
    samples = obj({"s": array(integer(minimum=-10, maximum=10))})
    good = list(range(-10, 11)) * 50_000  # a million samples: the shortcut
    assert errors(samples, {"s": good}) == []
    assert errors(samples, {"s": []}) == []
    assert errors(samples, {"s": [1, 2.0, -3]}) == []  # 2.0 is an integer in JSON Schema
    for bad, why in ((True, "a bool"), (1.5, "a fraction"), ("3", "a string"),
                     (11, "over the maximum"), (-11, "under the minimum"), (None, "null")):
        found = errors(samples, {"s": [*good[:1000], bad, *good[:1000]]})
        assert [field for field, _ in found] == ["s[1000]"], why
