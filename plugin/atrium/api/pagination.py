"""Keyset pagination: ``limit`` and an opaque ``cursor`` in, ``{"items": [...],
"next_cursor": "…" | null}`` out.

A cursor holds the sort key of the last row a page showed; the next page asks for
rows strictly after it — ``(sort_col, id) < (%s, %s)`` — which an index answers
directly however deep the page, unlike ``OFFSET``. A list is fetched with
``LIMIT limit + 1``: the extra row only tells whether there is a next page.

The cursor is base64url of a small versioned JSON of typed values (so a timestamp
comes back a ``datetime``, an id a ``UUID``) followed by a checksum keyed with the
list's ``scope``. A cursor that was edited, truncated, or issued by another list is
a 400, never a database error. The checksum is not a secret: a cursor is only a
position in a list the caller may read anyway — the query's own ``WHERE`` confines
the caller to their organization, never the cursor.

Row comparison in SQL treats ``NULL`` as unknown: every sort column must be ``NOT
NULL`` (or wrapped in ``COALESCE`` in both the ``ORDER BY`` and the condition), the
last one unique (the primary key), and all sorted in the same direction.

Usage in a resource::

    STUDIES = Keyset("studies", ("s.created_at", "s.id"))

    wanted = STUDIES.request(request.args)               # limit, after
    after, values = STUDIES.after(wanted)
    rows = conn.execute(sql.SQL("SELECT ... WHERE s.organization_id = %s AND {after} "
                                "ORDER BY {order} LIMIT %s").format(
                            after=after, order=STUDIES.order_by()),
                        [org_id, *values, wanted.fetch]).fetchall()
    return json_response(STUDIES.page(rows, wanted.limit, key=lambda r: (r[0], r[1])))
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypedDict, TypeVar

from psycopg import sql

from atrium.api.schema import Schema, array, integer, nullable, obj, string
from atrium.errors import BadRequest, FieldError

__all__ = [
    "DEFAULT_LIMIT", "MAX_LIMIT", "PAGE_PARAMETERS", "Keyset", "Page", "PageRequest",
    "decode_cursor", "encode_cursor", "keyset_condition", "keyset_order", "page",
    "page_request", "page_schema",
]

DEFAULT_LIMIT, MAX_LIMIT = 50, 1000
CURSOR_VERSION = 1
MAX_CURSOR_CHARS = 1024
_MAC_BYTES = 12

PAGE_PARAMETERS: dict[str, Schema] = {
    "limit": integer(minimum=1, maximum=MAX_LIMIT, default=DEFAULT_LIMIT,
                     description="How many items per page."),
    "cursor": string(max_length=MAX_CURSOR_CHARS, pattern="^[A-Za-z0-9_-]+$",
                     description="The previous page's next_cursor; absent for the first."),
}
"""The query parameters of every list; spread them into its query schema:
``obj({**PAGE_PARAMETERS, "q": string()})``."""


def page_schema(item: Schema) -> Schema:
    """The answer of a list of ``item`` (for its ``responses``)."""
    return obj({"items": array(item), "next_cursor": nullable(string())},
               required=["items", "next_cursor"])


# ------------------------------------------------------------------------ cursors

_ENCODERS: dict[type, tuple[str, Callable[[Any], Any]]] = {
    bool: ("b", bool), int: ("i", int), float: ("f", float), str: ("s", str),
    Decimal: ("n", str), uuid.UUID: ("u", str), dt.datetime: ("t", dt.datetime.isoformat),
    dt.date: ("d", dt.date.isoformat), type(None): ("z", lambda _: None),
}


def _expect(kind: type) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise ValueError(f"expected {kind.__name__}")
        return value
    return check


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "b": _expect(bool), "i": _expect(int), "f": _expect(float), "s": _expect(str),
    "n": lambda text: Decimal(_expect(str)(text)),
    "u": lambda text: uuid.UUID(_expect(str)(text)),
    "t": lambda text: dt.datetime.fromisoformat(_expect(str)(text)),
    "d": lambda text: dt.date.fromisoformat(_expect(str)(text)),
    "z": lambda value: _expect(type(None))(value),
}


def _mac(payload: bytes, scope: str) -> bytes:
    key = b"atrium-cursor/" + scope.encode()
    return hmac.new(key, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode_cursor(values: Sequence[Any], *, scope: str = "") -> str:
    """The cursor after a row whose sort key is ``values``.

    Raises
    ------
    TypeError
        For a value type a cursor cannot carry (a bug in the caller's ``key``).
    """
    typed = []
    for value in values:
        if type(value) not in _ENCODERS:
            raise TypeError(f"a cursor cannot carry {type(value).__name__}; use str, int, "
                            "float, bool, Decimal, UUID, date, datetime or None")
        tag, to_json = _ENCODERS[type(value)]
        typed.append([tag, to_json(value)])
    payload = json.dumps({"v": CURSOR_VERSION, "k": typed}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(payload + _mac(payload, scope)).rstrip(b"=").decode()


def _invalid_cursor() -> BadRequest:
    return BadRequest.invalid([FieldError(
        "query", "cursor", "is not a cursor this list issued; repeat the request without "
        "it to start from the first page")])


def decode_cursor(text: str, *, scope: str = "", size: int | None = None) -> tuple[Any, ...]:
    """The sort key a cursor carries, with its types restored.

    ``size``, when given, is the number of sort columns expected.

    Raises
    ------
    BadRequest
        For any cursor this code did not issue for ``scope`` (field ``cursor``).
    """
    try:
        if len(text) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, _mac(payload, scope)):
            raise ValueError("checksum")
        document = json.loads(payload)
        if document.get("v") != CURSOR_VERSION:
            raise ValueError("version")
        values = tuple(_DECODERS[tag](value) for tag, value in document["k"])
    except (ValueError, TypeError, KeyError, AttributeError, binascii.Error):
        raise _invalid_cursor() from None
    if size is not None and len(values) != size:
        raise _invalid_cursor()
    return values


# ------------------------------------------------------------------------ requests

@dataclass(frozen=True)
class PageRequest:
    """What a client asked for: ``limit`` items after the sort key ``after`` (None
    for the first page)."""

    limit: int
    after: tuple[Any, ...] | None

    @property
    def fetch(self) -> int:
        """Rows to ask the database for: one more than shown, to know if more exist."""
        return self.limit + 1


def page_request(args: Mapping[str, Any], *, scope: str = "", size: int | None = None
                 ) -> PageRequest:
    """The page asked for in validated query ``args`` (see :data:`PAGE_PARAMETERS`)."""
    cursor = args.get("cursor")
    after = decode_cursor(cursor, scope=scope, size=size) if cursor else None
    return PageRequest(int(args.get("limit", DEFAULT_LIMIT)), after)


# -------------------------------------------------------------------------- SQL

def _identifier(column: str) -> sql.Identifier:
    parts = column.split(".")
    if not all(parts):
        raise ValueError(f"{column!r} is not a column name (or table.column)")
    return sql.Identifier(*parts)


def keyset_condition(columns: Sequence[str], *, descending: bool = True) -> sql.Composed:
    """``("a", "b")`` → ``("a", "b") < (%s, %s)`` (``>`` when ascending).

    Column names are quoted identifiers; the values are server-side parameters the
    caller passes in the same order as ``columns``.
    """
    if not columns:
        raise ValueError("a keyset needs at least one column")
    names = sql.SQL(", ").join(_identifier(c) for c in columns)
    marks = sql.SQL(", ").join(sql.Placeholder() for _ in columns)
    operator = sql.SQL("<" if descending else ">")
    return sql.SQL("({}) {} ({})").format(names, operator, marks)


def keyset_order(columns: Sequence[str], *, descending: bool = True) -> sql.Composed:
    """``a DESC, b DESC``: the ``ORDER BY`` that :func:`keyset_condition` pages through."""
    direction = sql.SQL(" DESC" if descending else " ASC")
    return sql.SQL(", ").join(sql.Composed([_identifier(c), direction]) for c in columns)


# ------------------------------------------------------------------------- pages

T = TypeVar("T")


class Page(TypedDict):
    items: list[Any]
    next_cursor: str | None


def page(rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]], *,
         scope: str = "") -> Page:
    """The answer of a list from up to ``limit + 1`` fetched ``rows``; ``key`` gives a
    row's sort values, in the order of the keyset's columns."""
    shown = list(rows[:limit])
    if len(rows) <= limit or not shown:
        return {"items": shown, "next_cursor": None}
    return {"items": shown, "next_cursor": encode_cursor(key(shown[-1]), scope=scope)}


@dataclass(frozen=True)
class Keyset:
    """One list's ordering: its ``scope`` (binding cursors to it), sort ``columns``
    (the last unique) and direction — everything a resource needs to page."""

    scope: str
    columns: tuple[str, ...]
    descending: bool = True

    def __post_init__(self) -> None:
        keyset_condition(self.columns)  # validates the column names now, not per request

    def request(self, args: Mapping[str, Any]) -> PageRequest:
        return page_request(args, scope=self.scope, size=len(self.columns))

    def after(self, wanted: PageRequest) -> tuple[sql.Composable, list[Any]]:
        """The ``WHERE`` fragment and its values; ``TRUE`` and none on the first page."""
        if wanted.after is None:
            return sql.SQL("TRUE"), []
        return keyset_condition(self.columns, descending=self.descending), list(wanted.after)

    def order_by(self) -> sql.Composed:
        return keyset_order(self.columns, descending=self.descending)

    def page(self, rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Any]]) -> Page:
        return page(rows, limit, key, scope=self.scope)
