"""JSON answers: values PostgreSQL already encoded go out as they are, and nothing
a client wrote can pass for one of them."""

from __future__ import annotations

import json
import uuid

from atrium.api.http import RawJson, json_response


def test_raw_json_is_embedded_unchanged_among_other_values() -> None:
    key = uuid.uuid4()
    answer = json_response({"items": [{"id": key, "coordinates": RawJson('{"x": 1.5, "y": 2}')},
                                      {"id": key, "coordinates": None}],
                            "properties": RawJson("{}")})
    assert json.loads(answer.body) == {
        "items": [{"id": str(key), "coordinates": {"x": 1.5, "y": 2}},
                  {"id": str(key), "coordinates": None}],
        "properties": {}}
    assert b'{"x": 1.5, "y": 2}' in answer.body  # PostgreSQL's text, not re-encoded


def test_a_client_string_that_looks_like_a_stand_in_stays_a_string() -> None:
    forged = "\ue0000123456789abcdef:0\ue000"
    answer = json_response({"label": forged, "coordinates": RawJson("[1, 2]")})
    assert json.loads(answer.body) == {"label": forged, "coordinates": [1, 2]}
