"""The audit log against a real PostgreSQL: chained appends, append-only for Atrium's
role, tampering found and named, concurrency, retention anchors, listing, the CLI."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from atrium.api.pagination import encode_cursor
from atrium.auth.audit import (
    GENESIS_HASH,
    AuditEvent,
    canonical_row,
    query,
    record,
    record_alone,
    record_many,
    verify_chain,
)
from atrium.devenv import REPO_ROOT, LocalCluster
from atrium.errors import BadRequest
from atrium.migrations import apply_migrations, sql_directory

pytestmark = pytest.mark.integration

ORG = uuid.UUID("00000000-0000-4000-8000-00000000000a")
OTHER_ORG = uuid.UUID("00000000-0000-4000-8000-00000000000b")


@pytest.fixture
def url(empty_database_url: str) -> str:
    apply_migrations(empty_database_url)
    return empty_database_url


@pytest.fixture
def conn(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=True) as connection:
        yield connection


def event(action: str = "read", **fields: Any) -> AuditEvent:
    return AuditEvent(action, **{"organization_id": ORG, **fields})


def seqs(conn: psycopg.Connection[Any]) -> list[int]:
    return [r[0] for r in conn.execute("SELECT seq FROM audit_log ORDER BY seq").fetchall()]


def behind_the_triggers(conn: psycopg.Connection[Any], statement: str, params: Any = None) -> None:
    """What a superuser can do to the table: run ``statement`` with every user trigger off."""
    conn.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    try:
        conn.execute(statement, params)
    finally:
        conn.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


# ------------------------------------------------------------------ appending

def test_each_row_is_chained_onto_the_previous_one_and_the_chain_verifies(
        conn: psycopg.Connection[Any]) -> None:
    written = [record(conn, event(f"action-{i}")) for i in range(5)]
    written += record_many(conn, [event("many-1"), event("many-2", phi_accessed=True)])

    assert [w.seq for w in written] == [1, 2, 3, 4, 5, 6, 7]
    rows = conn.execute("SELECT prev_hash, row_hash FROM audit_log ORDER BY seq").fetchall()
    assert rows[0][0] == GENESIS_HASH
    assert all(rows[i][0] == rows[i - 1][1] for i in range(1, len(rows)))
    result = verify_chain(conn, batch=3)
    assert result.ok and result.first_broken is None
    assert (result.rows_checked, result.first_seq, result.head_seq) == (7, 1, 7)
    assert result.head_hash == rows[-1][1].hex()


def test_python_recomputes_exactly_the_hash_the_database_stored(
        conn: psycopg.Connection[Any]) -> None:
    tricky = event("read|1:x", user_id=uuid.uuid4(), keycloak_id="", resource_type="study",
                   resource_id=uuid.uuid4(), ip_address="2001:db8::1", user_agent="Zoë/1.0 ☃",
                   details={"z": [1.50, 2e3, None], "a": {"é": "line\nbreak"}, "": True},
                   phi_accessed=True)
    record(conn, tricky)
    record(conn, AuditEvent("login.refused", ip_address="::ffff:10.0.0.1"))
    for (id_, event_time, user_id, keycloak_id, organization_id, action, resource_type,
         resource_id, ip_text, user_agent, details_text, phi, seq, prev, stored,
         canonical) in conn.execute(
            "SELECT id, event_time, user_id, keycloak_id, organization_id, action, "
            "resource_type, resource_id, ip_address::text, user_agent, details::text, "
            "phi_accessed, seq, prev_hash, row_hash, atrium_audit_canonical(id, event_time, "
            "user_id, keycloak_id, organization_id, action, resource_type, resource_id, "
            "ip_address, user_agent, details, phi_accessed, seq, prev_hash) "
            "FROM audit_log ORDER BY seq"):
        mine = canonical_row(id=id_, event_time=event_time, user_id=user_id,
                             keycloak_id=keycloak_id, organization_id=organization_id,
                             action=action, resource_type=resource_type,
                             resource_id=resource_id, ip_address_text=ip_text,
                             user_agent=user_agent, details_text=details_text,
                             phi_accessed=phi, seq=seq, prev_hash=prev)
        assert mine == canonical
        assert hashlib.sha256(mine).digest() == stored


def test_values_given_for_the_chain_columns_are_overwritten(
        conn: psycopg.Connection[Any]) -> None:
    conn.execute("INSERT INTO audit_log (action, seq, prev_hash, row_hash) "
                 "VALUES ('forged', 999, '\\x01', '\\x02')")
    assert seqs(conn) == [1]
    assert verify_chain(conn).ok


def test_a_rolled_back_append_leaves_no_gap(conn: psycopg.Connection[Any]) -> None:
    record(conn, event())
    with pytest.raises(RuntimeError), conn.transaction():
        record(conn, event("rolled-back"))
        raise RuntimeError("the request failed")
    record(conn, event())
    assert seqs(conn) == [1, 2]
    assert verify_chain(conn).ok


def test_a_row_recorded_alone_is_committed_and_the_connection_left_as_it_was(url: str) -> None:
    with psycopg.connect(url) as writer, psycopg.connect(url, autocommit=True) as other:
        recorded = record_alone(writer, event("alone"))
        # Committed by its own statement: another session sees it, and the chain
        # head is free for that session's append without waiting.
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert writer.autocommit is False
        other.execute("SET lock_timeout = '1s'")
        record(other, event("next"))
        assert seqs(other) == [recorded.seq, recorded.seq + 1]
        # The writer's next statement opens a transaction again, as before.
        writer.execute("SELECT 1")
        assert writer.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        writer.rollback()
    with psycopg.connect(url) as writer:
        writer.execute("SELECT 1")
        with pytest.raises(psycopg.ProgrammingError):
            record_alone(writer, event("inside a transaction"))
    with psycopg.connect(url, autocommit=True) as check:
        assert [r[0] for r in check.execute(
            "SELECT action FROM audit_log ORDER BY seq").fetchall()] == ["alone", "next"]
        assert verify_chain(check).ok


def test_rows_written_before_the_chain_existed_are_chained_by_its_migration(
        empty_database_url: str, tmp_path: Path) -> None:
    for path in sorted(sql_directory().glob("000[1-6]_*.sql")):
        shutil.copy(path, tmp_path / path.name)
    apply_migrations(empty_database_url, tmp_path)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        backdated(conn, "second", "2030-01-02")
        backdated(conn, "first", "1999-01-01")
        apply_migrations(empty_database_url)
        record(conn, event("after"))
        actions = conn.execute("SELECT action FROM audit_log ORDER BY seq").fetchall()
        assert [a for a, in actions] == ["first", "second", "after"]
        assert verify_chain(conn).ok


def test_an_infinite_event_time_is_refused(conn: psycopg.Connection[Any]) -> None:
    with pytest.raises(psycopg.errors.DatetimeFieldOverflow):
        conn.execute("INSERT INTO audit_log (action, event_time) VALUES ('x', 'infinity')")


def test_verification_refuses_a_connection_inside_a_transaction(url: str) -> None:
    with psycopg.connect(url) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(ValueError, match="not inside a transaction"):
            verify_chain(conn)


# ------------------------------------------------------------------ append-only

@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log", "TRUNCATE audit_log"])
def test_changing_or_removing_rows_is_rejected_even_for_the_superuser(
        conn: psycopg.Connection[Any], statement: str) -> None:
    record(conn, event())
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)
    assert seqs(conn) == [1]


@pytest.fixture
def app_role(pg_cluster: LocalCluster, empty_database_url: str) -> Iterator[str]:
    """The database with migrations applied while a role ``atrium_app`` exists."""
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = 'atrium_app'").fetchone():
            admin.execute("CREATE ROLE atrium_app NOLOGIN")
    apply_migrations(empty_database_url)
    yield empty_database_url
    with psycopg.connect(empty_database_url, autocommit=True) as owner:
        owner.execute("DROP OWNED BY atrium_app")
    # Another database of this session may still grant it something; then it stays.
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin, \
            contextlib.suppress(psycopg.errors.DependentObjectsStillExist):
        admin.execute("DROP ROLE atrium_app")


@pytest.mark.parametrize("statement", [
    "UPDATE audit_log SET action = 'x'",
    "DELETE FROM audit_log",
    "TRUNCATE audit_log",
    "UPDATE audit_chain_head SET seq = 0",
    "INSERT INTO audit_chain_partitions VALUES (1, 'x', 1, 1, 1, now())",
    "DELETE FROM {partition}",
    "TRUNCATE {partition}",
])
def test_the_app_role_may_append_and_read_but_not_change_the_audit_log(
        app_role: str, statement: str) -> None:
    with psycopg.connect(app_role, autocommit=True) as conn:
        conn.execute("SET ROLE atrium_app")
        recorded = record(conn, event())  # chained through the SECURITY DEFINER trigger
        conn.execute("SELECT count(*) FROM patients")
        partition = conn.execute("SELECT tableoid::regclass::text FROM audit_log").fetchone()
        assert partition is not None
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
            conn.execute(statement.format(partition=partition[0]))
        assert seqs(conn) == [recorded.seq]
        assert verify_chain(conn).ok


def test_without_an_app_role_the_grant_function_says_so(conn: psycopg.Connection[Any]) -> None:
    granted = conn.execute("SELECT atrium_grant_app_role('atrium_no_such_role')").fetchone()
    assert granted == (False,)


# ------------------------------------------------------------------ tampering

def chain_of(conn: psycopg.Connection[Any], count: int) -> list[tuple[uuid.UUID, dt.datetime]]:
    for i in range(count):
        record(conn, event(f"a{i}", user_id=uuid.uuid4(), ip_address="10.0.0.1",
                           details={"n": i}))
    return [(r[0], r[1]) for r in conn.execute(
        "SELECT id, event_time FROM audit_log ORDER BY seq").fetchall()]


@pytest.mark.parametrize("change", [
    "action = 'export'", "details = '{\"n\": 99}'", "phi_accessed = true",
    "ip_address = '10.0.0.2'", "user_id = NULL", "keycloak_id = ''", "user_agent = 'x'",
    "organization_id = gen_random_uuid()", "event_time = event_time + interval '1 microsecond'",
    "prev_hash = decode(repeat('11', 32), 'hex')",
])
def test_a_row_edited_behind_the_triggers_is_named(
        conn: psycopg.Connection[Any], change: str) -> None:
    rows = chain_of(conn, 6)
    target_id, target_time = rows[2]
    behind_the_triggers(conn, f"UPDATE audit_log SET {change} WHERE seq = 3")

    result = verify_chain(conn)

    assert not result.ok and result.first_broken is not None
    assert (result.first_broken.id, result.first_broken.seq) == (target_id, 3)
    if "event_time" not in change:
        assert result.first_broken.event_time == target_time
    assert "contents" in result.first_broken.reason
    assert result.rows_checked == 2


def test_editing_with_replication_role_replica_is_found_the_same_way(
        conn: psycopg.Connection[Any]) -> None:
    rows = chain_of(conn, 4)
    conn.execute("SET session_replication_role = replica")
    conn.execute("UPDATE audit_log SET action = 'nothing to see' WHERE seq = 2")
    conn.execute("RESET session_replication_role")
    broken = verify_chain(conn).first_broken
    assert broken is not None and broken.id == rows[1][0]


def test_a_row_rewritten_with_a_recomputed_hash_breaks_the_next_link(
        conn: psycopg.Connection[Any]) -> None:
    rows = chain_of(conn, 5)
    behind_the_triggers(conn, """
        UPDATE audit_log SET action = 'rewritten',
            row_hash = sha256(atrium_audit_canonical(id, event_time, user_id, keycloak_id,
                organization_id, 'rewritten', resource_type, resource_id, ip_address,
                user_agent, details, phi_accessed, seq, prev_hash))
        WHERE seq = 2""")
    broken = verify_chain(conn).first_broken
    assert broken is not None and (broken.id, broken.seq) == (rows[2][0], 3)
    assert "prev_hash does not match the hash of seq 2" in broken.reason


@pytest.mark.parametrize(("deleted", "named_seq", "named_row"), [
    (3, 4, 3),     # a middle row: the row after the hole is named
    (1, 2, 1),     # the oldest row: no retention dropped anything, so no anchor is accepted
    (5, 5, None),  # the newest row: the chain head still records it
])
def test_a_row_deleted_behind_the_triggers_is_detected(
        conn: psycopg.Connection[Any], deleted: int, named_seq: int, named_row: int | None
        ) -> None:
    rows = chain_of(conn, 5)
    behind_the_triggers(conn, "DELETE FROM audit_log WHERE seq = %s", (deleted,))

    broken = verify_chain(conn).first_broken

    assert broken is not None and broken.seq == named_seq
    assert broken.id == (rows[named_row][0] if named_row is not None else None)
    assert "missing" in broken.reason


def test_a_row_inserted_with_the_chaining_trigger_off_is_detected(
        conn: psycopg.Connection[Any]) -> None:
    chain_of(conn, 3)
    behind_the_triggers(conn, "INSERT INTO audit_log (action, seq, prev_hash, row_hash) "
                              "SELECT 'smuggled', 2, prev_hash, row_hash FROM audit_log "
                              "WHERE seq = 2")
    broken = verify_chain(conn).first_broken
    assert broken is not None and broken.seq == 2 and "contents" in broken.reason


# ------------------------------------------------------------------ concurrency

def test_fifty_concurrent_writers_leave_one_intact_chain(url: str) -> None:
    writers = 50
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def write(n: int) -> None:
        try:
            with psycopg.connect(url) as conn:
                start.wait(timeout=60)
                with conn.transaction():
                    conn.execute("SELECT pg_sleep(0.001)")  # the request's own work first
                    record(conn, event(f"writer-{n}", details={"writer": n}))
                with pytest.raises(RuntimeError), conn.transaction():
                    record(conn, event(f"writer-{n}-rolled-back"))
                    raise RuntimeError("rolled back")
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)

    with psycopg.connect(url, autocommit=True) as conn:
        assert seqs(conn) == list(range(1, writers + 1))
        result = verify_chain(conn)
        assert result.ok and result.rows_checked == writers


# ------------------------------------------------------------------ retention

def month(conn: psycopg.Connection[Any], start: str, end: str) -> None:
    name = f"audit_log_y{start[:4]}m{start[5:7]}"
    conn.execute(f"CREATE TABLE {name} PARTITION OF audit_log FOR VALUES FROM ('{start}') "
                 f"TO ('{end}')")


def backdated(conn: psycopg.Connection[Any], action: str, when: str) -> None:
    conn.execute("INSERT INTO audit_log (action, event_time, organization_id) "
                 "VALUES (%s, %s, %s)", (action, when, ORG))


@pytest.fixture
def old_months(conn: psycopg.Connection[Any]) -> psycopg.Connection[Any]:
    """Rows in January and February 2001; one late January row is chained after
    February rows, as a long transaction started before midnight would be."""
    month(conn, "2001-01-01", "2001-02-01")
    month(conn, "2001-02-01", "2001-03-01")
    backdated(conn, "jan-1", "2001-01-10")       # seq 1
    backdated(conn, "jan-2", "2001-01-31 23:59")  # seq 2
    backdated(conn, "feb-1", "2001-02-01 00:01")  # seq 3
    backdated(conn, "jan-late", "2001-01-31 23:59:59")  # seq 4
    backdated(conn, "feb-2", "2001-02-02")        # seq 5
    backdated(conn, "default", "1999-06-01")      # seq 6, in the DEFAULT partition
    record(conn, event("now"))                    # seq 7
    return conn


def drop_january(conn: psycopg.Connection[Any]) -> None:
    """Retention as atrium_maintain() runs it, with the cutoff in mid-February 2001."""
    dropped = conn.execute("SELECT atrium_drop_expired_partitions('audit_log', "
                           "now() - '2001-02-15'::timestamptz)").fetchone()
    assert dropped == (1,)


def test_after_retention_drops_the_oldest_month_the_chain_still_verifies(
        old_months: psycopg.Connection[Any]) -> None:
    drop_january(old_months)

    result = verify_chain(old_months)

    assert result.ok, result.first_broken
    assert seqs(old_months) == [3, 5, 6, 7]
    assert (result.first_seq, result.rows_checked, result.retention_dropped) == (3, 4, 3)


def test_rows_removed_by_hand_inside_a_dropped_months_seq_range_are_still_counted(
        old_months: psycopg.Connection[Any]) -> None:
    drop_january(old_months)
    behind_the_triggers(old_months, "DELETE FROM audit_log WHERE action = 'feb-1'")

    result = verify_chain(old_months)

    assert not result.ok and result.first_broken is not None
    assert "4 rows are missing but the dropped partitions held 3" in result.first_broken.reason


def test_a_month_dropped_before_its_retention_ended_is_detected(
        conn: psycopg.Connection[Any]) -> None:
    record(conn, event("first"))
    partition = conn.execute("SELECT tableoid::regclass::text FROM audit_log").fetchone()
    assert partition is not None
    backdated(conn, "default", "1999-06-01")
    conn.execute(f"DROP TABLE {partition[0]}")

    broken = verify_chain(conn).first_broken

    assert broken is not None and broken.seq == 2
    assert f"partition public.{partition[0]} was dropped before its retention period ended" \
        in broken.reason


# ------------------------------------------------------------------ listing

def test_listing_is_scoped_to_one_organization_newest_first_with_a_keyset_cursor(
        conn: psycopg.Connection[Any]) -> None:
    user = uuid.uuid4()
    for i in range(7):
        backdated(conn, f"read-{i}", f"2030-01-0{i + 1}")
    record(conn, AuditEvent("read-other-org", organization_id=OTHER_ORG))

    pages, cursor = [], None
    while True:
        page = query(conn, ORG, limit=3, cursor=cursor)
        pages.append([item["action"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [["read-6", "read-5", "read-4"], ["read-3", "read-2", "read-1"], ["read-0"]]

    record(conn, event("export", user_id=user, resource_type="study", phi_accessed=True,
                       ip_address="192.0.2.7"))
    item, = query(conn, ORG, user_id=user, action="export", resource_type="study",
                  phi_accessed=True)["items"]
    assert item["ip_address"] == "192.0.2.7" and item["user_id"] == str(user)
    assert dt.datetime.fromisoformat(item["event_time"]).tzinfo is not None
    assert len(item["row_hash"]) == 64 and item["seq"] == 9

    window = query(conn, ORG, time_from=dt.datetime(2030, 1, 2, tzinfo=dt.UTC),
                   time_to=dt.datetime(2030, 1, 4, tzinfo=dt.UTC))
    assert [i["action"] for i in window["items"]] == ["read-2", "read-1"]
    assert query(conn, OTHER_ORG, action="read-0") == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("cursor", [
    "garbage", "W10", encode_cursor((dt.datetime.now(dt.UTC), uuid.uuid4()), scope="studies")])
def test_a_cursor_this_list_did_not_issue_is_a_bad_request(
        conn: psycopg.Connection[Any], cursor: str) -> None:
    with pytest.raises(BadRequest) as raised:
        query(conn, ORG, cursor=cursor)
    assert raised.value.extra["errors"][0]["field"] == "cursor"


# ------------------------------------------------------------------ the command

def atrium_audit_verify(url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    env.update(ATRIUM_DATABASE_URL=url, ATRIUM_DATA_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "atrium.cli", "-q", "audit", "verify"],
                          env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_command_exits_0_when_intact_and_1_naming_the_broken_row(
        conn: psycopg.Connection[Any], url: str, tmp_path: Path) -> None:
    rows = chain_of(conn, 3)

    intact = atrium_audit_verify(url, tmp_path)
    assert intact.returncode == 0, intact.stderr
    assert "intact: 3 rows checked" in intact.stdout

    behind_the_triggers(conn, "UPDATE audit_log SET action = 'x' WHERE seq = 2")
    broken = atrium_audit_verify(url, tmp_path)
    assert broken.returncode == 1, broken.stderr
    assert f"BROKEN at row {rows[1][0]} ({rows[1][1].isoformat()}, seq 2)" in broken.stdout
