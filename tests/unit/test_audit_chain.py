"""The audit chain's canonical serialization and the verifier's accounting of missing
rows, without a database. tests/integration/test_audit.py checks that PostgreSQL's
``atrium_audit_canonical()`` produces exactly these bytes."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from atrium.auth.audit import (
    CHAIN_VERSION,
    GENESIS_HASH,
    _Ledger,
    _Walk,
    canonical_bytes,
    canonical_row,
)

ID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
AT = dt.datetime(2024, 5, 1, 13, 45, 0, 123456, tzinfo=dt.UTC)


def decode(data: bytes) -> list[str | None]:
    """The inverse of canonical_bytes: proof that the encoding is unambiguous."""
    assert data.startswith(CHAIN_VERSION)
    rest, fields = data[len(CHAIN_VERSION):], []
    while rest:
        assert rest[:1] == b"|"
        if rest[1:2] == b"~":
            fields.append(None)
            rest = rest[2:]
            continue
        match = re.match(rb"\|(\d+):", rest)
        assert match
        length = int(match.group(1))
        start = match.end()
        fields.append(rest[start:start + length].decode("utf-8"))
        rest = rest[start + length:]
    return fields


def test_the_encoding_of_null_empty_and_non_ascii_fields() -> None:
    assert canonical_bytes(["x", None, "", "é|1:y"]) == \
        b"atrium-audit-v1|1:x|~|0:|6:\xc3\xa9|1:y"


@given(st.lists(st.none() | st.text()))
def test_every_list_of_fields_has_its_own_encoding(fields: list[str | None]) -> None:
    assert decode(canonical_bytes(fields)) == fields


def row(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        id=ID, event_time=AT, user_id=None, keycloak_id="kc-1", organization_id=ID,
        action="read", resource_type="study", resource_id=None, ip_address_text="10.0.0.1/32",
        user_agent=None, details_text='{"n": 1}', phi_accessed=True, seq=7,
        prev_hash=GENESIS_HASH)
    fields.update(changes)
    return fields


def test_a_rows_fields_in_their_fixed_order() -> None:
    assert decode(canonical_row(**row())) == [
        str(ID), "1714571100123456", None, "kc-1", str(ID), "read", "study", None,
        "10.0.0.1/32", None, '{"n": 1}', "true", "7", "00" * 32]


def test_the_hash_of_a_known_row_never_changes() -> None:
    """Pinned: a change here invalidates every chain already written."""
    assert hashlib.sha256(canonical_row(**row())).hexdigest() == \
        hashlib.sha256(b"atrium-audit-v1|36:123e4567-e89b-12d3-a456-426614174000"
                       b"|16:1714571100123456|~|4:kc-1|36:123e4567-e89b-12d3-a456-426614174000"
                       b"|4:read|5:study|~|11:10.0.0.1/32|~|8:{\"n\": 1}|4:true|1:7"
                       b"|64:" + b"00" * 32).hexdigest()


def test_the_event_time_is_the_instant_whatever_its_zone() -> None:
    paris = AT.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert canonical_row(**row(event_time=paris)) == canonical_row(**row())
    before_1970 = dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC)
    assert decode(canonical_row(**row(event_time=before_1970)))[1] == "-1"


@pytest.mark.parametrize("change", [
    {"user_id": ID}, {"keycloak_id": ""}, {"keycloak_id": None}, {"phi_accessed": False},
    {"event_time": AT + dt.timedelta(microseconds=1)}, {"seq": 8}, {"prev_hash": None},
    {"details_text": '{"n": 2}'}, {"ip_address_text": "10.0.0.1/31"},
])
def test_any_change_to_any_field_changes_the_bytes(change: dict[str, Any]) -> None:
    assert canonical_row(**row(**change)) != canonical_row(**row())


# ------------------------------------------------------------ the verifier's walk

OLD = dt.datetime(2001, 1, 31, tzinfo=dt.UTC)
CUTOFF = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)


def chain(count: int) -> list[tuple[Any, ...]]:
    """``count`` rows as verify_chain reads them, each chained onto the one before."""
    rows, prev = [], GENESIS_HASH
    for seq in range(1, count + 1):
        fields = row(id=uuid.UUID(int=seq), seq=seq, prev_hash=prev,
                     event_time=AT + dt.timedelta(seconds=seq))
        digest = hashlib.sha256(canonical_row(**fields)).digest()
        rows.append((fields["id"], fields["event_time"], None, "kc-1", ID, "read", "study",
                     None, "10.0.0.1/32", None, '{"n": 1}', True, seq, prev, digest))
        prev = digest
    return rows


def walk(rows: list[tuple[Any, ...]], head: int, dropped: list[tuple[int, ...]]) -> str | None:
    """The first reason the chain is broken, or None. ``dropped``: (first, last, count)
    of each expired, dropped partition."""
    ledger = _Ledger([(f"p{i}", count, first, last, OLD)
                      for i, (first, last, count) in enumerate(dropped)], CUTOFF)
    state = _Walk(ledger, head)
    for r in rows:
        reason = state.step(r)
        if reason is not None:
            return reason
    broken = state.finish(rows[-1][14] if rows and rows[-1][12] == head else b"")
    return None if broken is None else broken.reason


@given(st.data())
def test_rows_that_dropped_partitions_account_for_may_be_missing(data: st.DataObject) -> None:
    rows = chain(12)
    gone = data.draw(st.sets(st.integers(1, 12), max_size=11))
    ranges = []
    for seq in sorted(gone):  # one partition per run of consecutive missing seqs
        if ranges and ranges[-1][1] == seq - 1:
            ranges[-1] = (ranges[-1][0], seq, ranges[-1][2] + 1)
        else:
            ranges.append((seq, seq, 1))
    kept = [r for r in rows if r[12] not in gone]
    assert walk(kept, 12, ranges) is None


@given(st.integers(1, 12), st.sets(st.integers(1, 12), max_size=11))
def test_a_row_missing_beyond_what_was_dropped_is_always_found(
        removed: int, dropped: set[int]) -> None:
    dropped.discard(removed)
    rows = [r for r in chain(12) if r[12] not in dropped and r[12] != removed]
    # The dropped rows as one partition spanning all of them (interleaved months):
    # its seq range may even cover the removed row; its count does not.
    ranges = [(min(dropped), max(dropped), len(dropped))] if dropped else []
    if not rows:
        return
    assert walk(rows, 12, ranges) is not None


def test_a_partition_dropped_too_early_does_not_excuse_its_rows() -> None:
    ledger = _Ledger([("public.audit_log_y2024m05", 2, 1, 2, AT)], CUTOFF)
    reason = ledger.unexplained(1, 2)
    assert reason is not None and "dropped before its retention period ended" in reason
    assert _Ledger([("old", 2, 1, 2, OLD)], CUTOFF).unexplained(1, 2) is None
