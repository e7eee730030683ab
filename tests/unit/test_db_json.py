"""JSON parameters of the pool's connections (atrium.db.json_dumps): orjson's speed,
json's acceptance, the same values."""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrium.db import json_dumps

_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30)


@given(_values)
def test_what_json_encodes_reads_back_as_the_same_value(value: Any) -> None:
    assert json.loads(json_dumps(value)) == value


def test_what_orjson_refuses_is_encoded_as_json_would() -> None:
    assert json.loads(json_dumps({1: "one"})) == {"1": "one"}
    huge = {"count": 2**70, "below": -(2**64)}
    assert json.loads(json_dumps(huge)) == huge  # exact, not a float


def test_text_is_utf8_and_what_json_cannot_encode_is_still_refused() -> None:
    assert json_dumps({"name": "Zoë"}) == '{"name":"Zoë"}'.encode()
    with pytest.raises(TypeError):
        json_dumps({"id": object()})
    with pytest.raises(TypeError):
        json_dumps({3.5: "float keys are json's only, and json_dumps falls back"} | {
            uuid.uuid4(): "a key json cannot take either"})


def test_a_float_keeps_every_bit() -> None:
    for value in (0.1, 1 / 3, 5e-324, 1.7976931348623157e308, -0.0):
        decoded = json.loads(json_dumps(value))
        assert decoded == value and math.copysign(1, decoded) == math.copysign(1, value)
