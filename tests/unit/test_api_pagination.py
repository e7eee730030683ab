"""Keyset pagination: cursors that round-trip typed values and refuse tampering,
SQL fragments with server-side parameters, and pages that know if more follow."""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from atrium.api.pagination import (
    DEFAULT_LIMIT,
    Keyset,
    PageRequest,
    decode_cursor,
    encode_cursor,
    keyset_condition,
    keyset_order,
    page,
    page_request,
)
from atrium.errors import BadRequest

AT = dt.datetime(2024, 5, 1, 13, 45, 0, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
ID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def test_a_cursor_restores_the_types_of_its_values() -> None:
    values = (AT, ID, dt.date(2024, 5, 1), 7, 0.5, "x'; --", Decimal("1.10"), True, None)
    decoded = decode_cursor(encode_cursor(values))
    assert decoded == values
    assert [type(v) for v in decoded] == [type(v) for v in values]


def test_a_cursor_is_url_safe_text() -> None:
    cursor = encode_cursor((AT, ID))
    assert cursor.replace("-", "").replace("_", "").isalnum()


# Texts are bounded: a cursor longer than MAX_CURSOR_CHARS is refused by design, and
# four texts of any length (non-ASCII escaped six characters each) can pass it.
@given(st.lists(st.integers() | st.text(max_size=40) | st.booleans() | st.none() | st.uuids()
                | st.datetimes(timezones=st.just(dt.UTC)), max_size=4))
def test_any_sort_key_round_trips(values: list[Any]) -> None:
    assert decode_cursor(encode_cursor(values)) == tuple(values)


def test_a_cursor_past_the_length_bound_is_refused_not_decoded() -> None:
    cursor = encode_cursor(["é" * 200])  # escaped in JSON: over MAX_CURSOR_CHARS
    with pytest.raises(BadRequest):
        decode_cursor(cursor)
    assert decode_cursor(encode_cursor(["é" * 20])) == ("é" * 20,)


def _edit(cursor: str) -> str:
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    raw[10] ^= 1
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def _forged() -> str:
    payload = json.dumps({"v": 1, "k": [["t", "not a time"]]}).encode()
    return base64.urlsafe_b64encode(payload + b"\x00" * 12).decode()


@pytest.mark.parametrize("cursor", [
    "", "x", "!!!!", "a" * 2000, _edit(encode_cursor((AT, ID))), _forged(),
    encode_cursor((AT, ID))[:-3], base64.urlsafe_b64encode(b"\xff" * 40).decode(),
])
def test_a_cursor_not_issued_here_is_a_400_naming_the_cursor(cursor: str) -> None:
    with pytest.raises(BadRequest) as refused:
        decode_cursor(cursor)
    assert refused.value.problem()["errors"][0]["field"] == "cursor"


def test_a_cursor_only_works_for_the_list_that_issued_it() -> None:
    cursor = encode_cursor((AT, ID), scope="studies")
    assert decode_cursor(cursor, scope="studies") == (AT, ID)
    with pytest.raises(BadRequest):
        decode_cursor(cursor, scope="patients")
    with pytest.raises(BadRequest):
        decode_cursor(cursor, scope="studies", size=3)


def test_a_value_a_cursor_cannot_carry_is_a_bug() -> None:
    with pytest.raises(TypeError, match="bytes"):
        encode_cursor((b"raw",))


def test_the_page_request_reads_limit_and_cursor() -> None:
    assert page_request({}) == PageRequest(DEFAULT_LIMIT, None)
    wanted = page_request({"limit": 10, "cursor": encode_cursor((AT, ID))})
    assert (wanted.limit, wanted.after, wanted.fetch) == (10, (AT, ID), 11)


def test_the_keyset_condition_quotes_names_and_leaves_values_to_parameters() -> None:
    condition = keyset_condition(["s.created_at", "s.id"])
    assert condition.as_string(None) == '("s"."created_at", "s"."id") < (%s, %s)'
    ascending = keyset_condition(['na"me', "id"], descending=False)
    assert ascending.as_string(None) == '("na""me", "id") > (%s, %s)'
    assert keyset_order(["created_at", "id"]).as_string(None) == '"created_at" DESC, "id" DESC'
    with pytest.raises(ValueError):
        keyset_condition([])
    with pytest.raises(ValueError, match="column name"):
        Keyset("x", ("s.", "id"))


def test_a_keyset_gives_true_on_the_first_page_and_the_condition_after() -> None:
    studies = Keyset("studies", ("created_at", "id"))
    first, values = studies.after(studies.request({"limit": 5}))
    assert (first, values) == (sql.SQL("TRUE"), [])
    later, values = studies.after(studies.request(
        {"limit": 5, "cursor": encode_cursor((AT, ID), scope="studies")}))
    assert later.as_string(None) == '("created_at", "id") < (%s, %s)'
    assert values == [AT, ID]


def test_a_page_has_a_next_cursor_only_when_a_row_is_left() -> None:
    rows = [{"at": AT - dt.timedelta(minutes=n), "id": uuid.uuid4()} for n in range(4)]

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["at"], row["id"])

    full = page(rows, 3, key)
    assert full["items"] == rows[:3]
    assert decode_cursor(full["next_cursor"] or "") == key(rows[2])
    assert page(rows[:3], 3, key) == {"items": rows[:3], "next_cursor": None}
    assert page([], 3, key) == {"items": [], "next_cursor": None}
