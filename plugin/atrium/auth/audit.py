"""The audit log: writing events, listing them, and proving the hash chain intact.

Rows are chained by the database (``sql/0007_audit_chain.sql``): a BEFORE INSERT
trigger gives each row its ``seq``, the previous row's hash and its own
``row_hash = sha256(canonical serialization)``. :func:`record` therefore only
inserts; the row lock on the chain head it takes is held until the caller's
transaction ends, so record last in a transaction and commit before the response
leaves, or, for a row on its own, use :func:`record_alone`.

:func:`verify_chain` recomputes every hash here, in Python, from the columns —
it does not ask ``atrium_audit_canonical()`` or the trigger, which whoever can
change rows could also replace. Only PostgreSQL's built-in text forms of ``jsonb``
and ``inet`` are taken from the server (``jsonb``'s is canonical; re-deriving it in
Python would be a second, fragile implementation). docs/AUDIT.md has the design.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import logging
import types
import uuid
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.types.json import Jsonb

from atrium.api.pagination import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Keyset,
    Page,
    PageRequest,
    decode_cursor,
)

log = logging.getLogger(__name__)

__all__ = [
    "AUDIT_KEYSET", "CHAIN_VERSION", "DEFAULT_MIN_RETENTION", "GENESIS_HASH", "AuditEvent",
    "BrokenLink", "RecordedEvent", "VerifyResult", "canonical_bytes", "canonical_row", "query",
    "record", "record_alone", "record_many", "verify_chain",
]

CHAIN_VERSION = b"atrium-audit-v1"
GENESIS_HASH = bytes(32)
"""The ``prev_hash`` of the first row ever written."""

DEFAULT_MIN_RETENTION = dt.timedelta(days=7 * 365)
"""A dropped partition whose newest row is younger than this was not removed by
retention (the data model keeps audit rows 7 years; 7×365 days is never longer)."""

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# ------------------------------------------------------------------ events

def _check_text(name: str, value: str | None, max_length: int | None, required: bool) -> None:
    if value is None:
        if required:
            raise ValueError(f"AuditEvent.{name} is required")
        return
    if not isinstance(value, str):
        raise TypeError(f"AuditEvent.{name} must be a str, not {type(value).__name__}")
    if required and not value:
        raise ValueError(f"AuditEvent.{name} must not be empty")
    if max_length is not None and len(value) > max_length:
        raise ValueError(f"AuditEvent.{name} is {len(value)} characters; at most {max_length} fit")
    if "\x00" in value:
        raise ValueError(f"AuditEvent.{name} must not contain NUL characters")


@dataclass(frozen=True)
class AuditEvent:
    """One audited event. ``details`` carries ids and counts, never names or other PHI.

    Raises ``TypeError``/``ValueError`` naming the field when a value would not fit
    its column, so a bad event fails where it is built, not inside the INSERT.
    """

    action: str
    user_id: uuid.UUID | None = None
    keycloak_id: str | None = None
    organization_id: uuid.UUID | None = None
    resource_type: str | None = None
    resource_id: uuid.UUID | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    phi_accessed: bool = False

    def __post_init__(self) -> None:
        _check_text("action", self.action, 100, required=True)
        _check_text("keycloak_id", self.keycloak_id, 255, required=False)
        _check_text("resource_type", self.resource_type, 100, required=False)
        _check_text("user_agent", self.user_agent, None, required=False)
        for name in ("user_id", "organization_id", "resource_id"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, uuid.UUID):
                raise TypeError(f"AuditEvent.{name} must be a uuid.UUID or None, "
                                f"not {type(value).__name__}")
        if self.ip_address is not None:
            try:
                address = ipaddress.ip_address(self.ip_address)
            except ValueError:
                raise ValueError("AuditEvent.ip_address must be an IPv4 or IPv6 host address, "
                                 f"got {self.ip_address!r}") from None
            if getattr(address, "scope_id", None):
                raise ValueError("AuditEvent.ip_address must not carry an IPv6 zone (%...)")
        if not isinstance(self.phi_accessed, bool):
            raise TypeError("AuditEvent.phi_accessed must be a bool")
        if not isinstance(self.details, Mapping):
            raise TypeError("AuditEvent.details must be a mapping (a JSON object)")
        try:
            encoded = json.dumps(dict(self.details), allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"AuditEvent.details must be JSON-serializable: {error}") from None
        if "\\u0000" in encoded:
            raise ValueError("AuditEvent.details must not contain NUL characters (jsonb "
                             "cannot store them)")
        object.__setattr__(self, "details", types.MappingProxyType(dict(self.details)))


@dataclass(frozen=True)
class RecordedEvent:
    id: uuid.UUID
    event_time: dt.datetime
    seq: int


_INSERT = """
INSERT INTO audit_log (user_id, keycloak_id, organization_id, action, resource_type,
                       resource_id, ip_address, user_agent, details, phi_accessed)
VALUES (%s, %s, %s, %s, %s, %s, %s::inet, %s, %s, %s)
RETURNING id, event_time, seq
"""


def _params(event: AuditEvent) -> tuple[Any, ...]:
    return (event.user_id, event.keycloak_id, event.organization_id, event.action,
            event.resource_type, event.resource_id, event.ip_address, event.user_agent,
            Jsonb(dict(event.details)), event.phi_accessed)


def record(conn: psycopg.Connection[Any], event: AuditEvent) -> RecordedEvent:
    """Insert ``event`` as one chained row, in ``conn``'s current transaction.

    Nothing is committed here: the caller commits (an autocommit connection commits
    at once). Until then the chain head stays locked and other writers of audit rows
    wait, so call this as the last statement of a transaction. In a REPEATABLE READ
    or SERIALIZABLE transaction a concurrent append makes this raise
    ``SerializationFailure``; retry the transaction.
    """
    row = conn.execute(_INSERT, _params(event)).fetchone()
    assert row is not None
    return RecordedEvent(row[0], row[1], row[2])


def record_alone(conn: psycopg.Connection[Any], event: AuditEvent) -> RecordedEvent:
    """Insert ``event`` as a transaction of its own, committed by the statement.

    :func:`record` then a commit holds the chain head's lock for a round trip to
    this process and back, and in Orthanc that round trip may wait for the GIL
    while every other writer of audit rows waits for the lock. Here PostgreSQL
    commits as the insert ends: the lock is held for the insert and the flush of
    its WAL only, and the row costs one round trip instead of three (BEGIN, INSERT,
    COMMIT). ``conn`` must have no transaction open.
    """
    if conn.autocommit:
        return record(conn, event)
    conn.autocommit = True
    try:
        return record(conn, event)
    finally:
        # A broken connection stays as it is: the pool discards it.
        if not conn.broken and conn.info.transaction_status == TransactionStatus.IDLE:
            conn.autocommit = False


def record_many(conn: psycopg.Connection[Any], events: Iterable[AuditEvent]
                ) -> list[RecordedEvent]:
    """Insert several events in one round trip, chained in the order given."""
    params = [_params(event) for event in events]
    if not params:
        return []
    recorded = []
    with conn.cursor() as cur:
        cur.executemany(_INSERT, params, returning=True)
        while True:
            row = cur.fetchone()
            assert row is not None
            recorded.append(RecordedEvent(row[0], row[1], row[2]))
            if not cur.nextset():
                break
    return recorded


# ------------------------------------------------------------------ the chain

def canonical_bytes(fields: Sequence[str | None]) -> bytes:
    """``atrium-audit-v1`` then, per field, ``|~`` for NULL or ``|<UTF-8 length>:<text>``.

    The length prefix makes the encoding unambiguous whatever the text holds (a
    ``|`` inside a value cannot pose as a field boundary) and tells NULL from ''.
    """
    parts = [CHAIN_VERSION]
    for value in fields:
        if value is None:
            parts.append(b"|~")
        else:
            data = value.encode("utf-8")
            parts.append(b"|%d:%s" % (len(data), data))
    return b"".join(parts)


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def canonical_row(*, id: uuid.UUID, event_time: dt.datetime, user_id: uuid.UUID | None,
                  keycloak_id: str | None, organization_id: uuid.UUID | None, action: str,
                  resource_type: str | None, resource_id: uuid.UUID | None,
                  ip_address_text: str | None, user_agent: str | None, details_text: str,
                  phi_accessed: bool, seq: int, prev_hash: bytes | None) -> bytes:
    """What ``atrium_audit_canonical()`` returns for a row, computed independently.

    ``event_time`` must be timezone-aware; it enters as whole microseconds since
    1970-01-01 UTC. ``ip_address_text`` and ``details_text`` are PostgreSQL's
    ``ip_address::text`` and ``details::text``.
    """
    micros = (event_time - _EPOCH) // dt.timedelta(microseconds=1)
    return canonical_bytes((
        str(id), str(micros), _text(user_id), keycloak_id, _text(organization_id), action,
        resource_type, _text(resource_id), ip_address_text, user_agent, details_text,
        "true" if phi_accessed else "false", str(seq),
        None if prev_hash is None else prev_hash.hex()))


@dataclass(frozen=True)
class BrokenLink:
    """Where verification failed. ``id``/``event_time`` are None when the broken
    place is missing rows at the end of the chain (there is no row to name)."""

    id: uuid.UUID | None
    event_time: dt.datetime | None
    seq: int | None
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {"id": _text(self.id),
                "event_time": self.event_time.isoformat() if self.event_time else None,
                "seq": self.seq, "reason": self.reason}


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    rows_checked: int
    first_broken: BrokenLink | None
    head_seq: int
    head_hash: str  # hex; record it outside the database to detect a rewritten chain
    first_seq: int | None  # the oldest remaining row, whose prev_hash is the anchor
    retention_dropped: int  # rows that left with partitions dropped by retention

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "rows_checked": self.rows_checked,
                "first_broken": self.first_broken.as_json() if self.first_broken else None,
                "head_seq": self.head_seq, "head_hash": self.head_hash,
                "first_seq": self.first_seq, "retention_dropped": self.retention_dropped}

    def describe(self) -> str:
        if self.first_broken is None:
            return (f"audit chain intact: {self.rows_checked} rows checked, head seq "
                    f"{self.head_seq} sha256 {self.head_hash}, {self.retention_dropped} rows "
                    "removed by retention")
        broken = self.first_broken
        where = (f"row {broken.id} ({broken.event_time.isoformat() if broken.event_time else '?'}"
                 f", seq {broken.seq})" if broken.id else f"seq {broken.seq}")
        return (f"audit chain BROKEN at {where}: {broken.reason} "
                f"({self.rows_checked} rows verified before it)")


class _Ledger:
    """What dropped partitions took with them, from ``audit_chain_partitions``."""

    def __init__(self, dropped: Sequence[tuple[str, int, int, int, dt.datetime]],
                 cutoff: dt.datetime) -> None:
        self.rows = sum(count for _, count, _, _, _ in dropped)
        self.premature = [(name, first, last, newest) for name, _, first, last, newest in dropped
                          if newest >= cutoff]
        merged: list[list[int]] = []
        for first, last in sorted((f, la) for _, _, f, la, newest in dropped if newest < cutoff):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self._starts = [start for start, _ in merged]
        self._ranges = merged

    def unexplained(self, first: int, last: int) -> str | None:
        """Why seq ``first``..``last`` should not be missing; None when retention removed them."""
        i = bisect_right(self._starts, first) - 1
        if i >= 0 and self._ranges[i][1] >= last:
            return None
        span = f"seq {first}" if first == last else f"seq {first}..{last}"
        for name, lo, hi, newest in self.premature:
            if lo <= last and first <= hi:
                return (f"rows {span} are missing: partition {name} was dropped before its "
                        f"retention period ended (newest row {newest.isoformat()})")
        return f"rows {span} are missing and no dropped partition accounts for them"


_ROWS = """
SELECT id, event_time, user_id, keycloak_id, organization_id, action, resource_type,
       resource_id, ip_address::text, user_agent, details::text, phi_accessed, seq,
       prev_hash, row_hash
FROM audit_log ORDER BY seq
"""

# Read after the row cursor is open: a partition still attached then was locked by it
# and is being read; one dropped before is not.
_DROPPED = """
SELECT p.relname, p.row_count, p.first_seq, p.last_seq, p.max_event_time
FROM audit_chain_partitions p
WHERE NOT EXISTS (SELECT 1 FROM pg_inherits i
                  WHERE i.inhrelid = p.relid AND i.inhparent = 'audit_log'::regclass)
"""


def verify_chain(conn: psycopg.Connection[Any], batch: int = 10_000, *,
                 min_retention: dt.timedelta = DEFAULT_MIN_RETENTION) -> VerifyResult:
    """Walk the whole chain in ``seq`` order and report the first broken row.

    Reads through a server-side cursor, ``batch`` rows per round trip, in one
    REPEATABLE READ READ ONLY transaction, so the rows, the head and the partition
    ledger are one snapshot while writers carry on. ``conn`` must not be inside a
    transaction. Rows missing from the start, the middle or the end of the chain
    are accepted only when partitions dropped at least ``min_retention`` after
    their newest row account for exactly that many rows; the row after such a gap
    (the oldest remaining row, normally) has its ``prev_hash`` taken as given: the
    anchor.
    """
    if conn.info.transaction_status != TransactionStatus.IDLE:
        raise ValueError("verify_chain needs a connection that is not inside a transaction")
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        head = conn.execute("SELECT seq, row_hash, now() FROM audit_chain_head").fetchone()
        assert head is not None, "audit_chain_head is empty: was migration 0007 applied?"
        head_seq, head_hash, now = head[0], bytes(head[1]), head[2]
        with conn.cursor(name="atrium_audit_verify") as rows:
            rows.itersize = batch
            rows.execute(_ROWS)
            ledger = _Ledger(conn.execute(_DROPPED).fetchall(), now - min_retention)
            walk = _Walk(ledger, head_seq)
            broken = None
            for row in rows:
                reason = walk.step(row)
                if reason is not None:
                    broken = BrokenLink(row[0], row[1], row[12], reason)
                    break
            else:
                broken = walk.finish(head_hash)
    result = VerifyResult(broken is None, walk.checked, broken, head_seq, head_hash.hex(),
                          walk.first_seq, ledger.rows)
    if broken is not None:
        log.warning("audit chain broken: id=%s seq=%s reason=%s", broken.id, broken.seq,
                    broken.reason)
    return result


class _Walk:
    """The state of one pass over the rows in seq order."""

    def __init__(self, ledger: _Ledger, head_seq: int) -> None:
        self.ledger, self.head_seq = ledger, head_seq
        self.checked, self.missing = 0, 0
        self.first_seq: int | None = None
        self.prev_seq, self.prev_hash = 0, GENESIS_HASH

    def step(self, row: Sequence[Any]) -> str | None:
        """Why ``row`` breaks the chain, or None when it extends it."""
        (id_, event_time, user_id, keycloak_id, organization_id, action, resource_type,
         resource_id, ip_text, user_agent, details_text, phi, seq, stored_prev,
         stored_hash) = row
        if seq is None or stored_hash is None:
            return "the row has no chain position: it was inserted with the chaining trigger off"
        if self.first_seq is None:
            self.first_seq = seq
        if seq > self.head_seq:
            return f"seq {seq} is beyond the chain head ({self.head_seq})"
        prev = None if stored_prev is None else bytes(stored_prev)
        expected = hashlib.sha256(canonical_row(
            id=id_, event_time=event_time, user_id=user_id, keycloak_id=keycloak_id,
            organization_id=organization_id, action=action, resource_type=resource_type,
            resource_id=resource_id, ip_address_text=ip_text, user_agent=user_agent,
            details_text=details_text, phi_accessed=phi, seq=seq, prev_hash=prev)).digest()
        if bytes(stored_hash) != expected:
            return "row_hash does not match the row's contents: it was changed after writing"
        if seq == self.prev_seq:
            return f"seq {seq} appears twice"
        if seq == self.prev_seq + 1:
            if prev != self.prev_hash:
                what = "the genesis hash" if seq == 1 else f"the hash of seq {self.prev_seq}"
                return f"prev_hash does not match {what}: the row before it was changed or replaced"
        else:
            reason = self.ledger.unexplained(self.prev_seq + 1, seq - 1)
            if reason is not None:
                return reason
            self.missing += seq - 1 - self.prev_seq  # retention; this prev_hash is the anchor
        self.prev_seq, self.prev_hash = seq, bytes(stored_hash)
        self.checked += 1
        return None

    def finish(self, head_hash: bytes) -> BrokenLink | None:
        """After the last row: the newest rows and the totals."""
        if self.prev_seq < self.head_seq:
            reason = self.ledger.unexplained(self.prev_seq + 1, self.head_seq)
            if reason is not None:
                return BrokenLink(None, None, self.prev_seq + 1, reason)
            self.missing += self.head_seq - self.prev_seq
        elif self.head_seq > 0 and self.prev_hash != head_hash:
            return BrokenLink(None, None, self.head_seq,
                              "the chain head records a different hash for the newest row")
        if self.missing != self.ledger.rows:
            return BrokenLink(None, None, None,
                              f"{self.missing} rows are missing but the dropped partitions held "
                              f"{self.ledger.rows}: rows were removed besides retention")
        return None


# ------------------------------------------------------------------ listing

AUDIT_KEYSET = Keyset("audit", ("event_time", "id"))
"""``GET /api/audit``'s order, newest first; its cursors fit no other list."""

_LIST = sql.SQL("""
SELECT id, event_time, user_id, keycloak_id, organization_id, action, resource_type,
       resource_id, host(ip_address), user_agent, details, phi_accessed, seq,
       encode(prev_hash, 'hex'), encode(row_hash, 'hex')
FROM audit_log WHERE {where} ORDER BY {order} LIMIT %s
""")
_KEYS = ("id", "event_time", "user_id", "keycloak_id", "organization_id", "action",
         "resource_type", "resource_id", "ip_address", "user_agent", "details", "phi_accessed",
         "seq", "prev_hash", "row_hash")


def select_page(conn: psycopg.Connection[Any], select: sql.SQL, keyset: Keyset,
                organization_id: uuid.UUID, *, limit: int, max_limit: int,
                cursor: str | None, time_from: dt.datetime | None,
                time_to: dt.datetime | None, equal: Mapping[str, Any] | None = None
                ) -> Page:
    """One page of an organization's audit rows through ``select`` (a statement with
    ``{where}`` and ``{order}`` whose rows start with ``id, event_time``), in
    ``keyset``'s order: ``time_from <= event_time < time_to`` and each column of
    ``equal`` whose value is not None equal to it. The audit list and the exports
    page this way; the items are the rows as fetched.

    Raises
    ------
    BadRequest
        For a ``cursor`` ``keyset`` did not issue (field ``cursor``).
    ValueError
        For ``limit`` outside ``1..max_limit`` or a naive time (routes validate first).
    """
    if not 1 <= limit <= max_limit:
        raise ValueError(f"limit must be between 1 and {max_limit}, got {limit}")
    for name, when in (("time_from", time_from), ("time_to", time_to)):
        if when is not None and when.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
    wanted = PageRequest(limit, decode_cursor(cursor, scope=keyset.scope, size=2)
                         if cursor else None)
    where: list[sql.Composable] = [sql.SQL("organization_id = %s")]
    params: list[Any] = [organization_id]
    for column, value in (equal or {}).items():
        if value is not None:
            where.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
    if time_from is not None:
        where.append(sql.SQL("event_time >= %s"))
        params.append(time_from)
    if time_to is not None:
        where.append(sql.SQL("event_time < %s"))
        params.append(time_to)
    after, after_values = keyset.after(wanted)
    where.append(after)
    statement = select.format(where=sql.SQL(" AND ").join(where), order=keyset.order_by())
    rows = conn.execute(statement, [*params, *after_values, wanted.fetch]).fetchall()
    return keyset.page(rows, limit, key=lambda row: (row[1], row[0]))


def query(conn: psycopg.Connection[Any], organization_id: uuid.UUID, *,
          user_id: uuid.UUID | None = None, action: str | None = None,
          resource_type: str | None = None, resource_id: uuid.UUID | None = None,
          phi_accessed: bool | None = None, time_from: dt.datetime | None = None,
          time_to: dt.datetime | None = None, limit: int = DEFAULT_LIMIT,
          cursor: str | None = None) -> Page:
    """One organization's audit rows, newest first, ``limit`` at a time.

    Filters left None are not applied; ``time_from <= event_time < time_to``. Items
    are JSON-ready dicts (ISO 8601 times, UUIDs as text, hashes as hex);
    ``next_cursor`` continues after the last item, None on the last page.

    Raises
    ------
    BadRequest
        For a ``cursor`` this list did not issue (field ``cursor``).
    ValueError
        For ``limit`` outside 1..1000 or a naive time (the route validates both first).
    """
    page = select_page(conn, _LIST, AUDIT_KEYSET, organization_id, limit=limit,
                       max_limit=MAX_LIMIT, cursor=cursor, time_from=time_from,
                       time_to=time_to, equal={
                           "user_id": user_id, "action": action,
                           "resource_type": resource_type, "resource_id": resource_id,
                           "phi_accessed": phi_accessed})
    return {"items": [_item(row) for row in page["items"]], "next_cursor": page["next_cursor"]}


def _item(row: Sequence[Any]) -> dict[str, Any]:
    item = dict(zip(_KEYS, row, strict=True))
    item["event_time"] = row[1].isoformat()
    for key in ("id", "user_id", "organization_id", "resource_id"):
        item[key] = _text(item[key])
    return item
