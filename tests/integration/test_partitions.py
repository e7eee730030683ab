"""Partition upkeep against a real PostgreSQL: months ahead for every partitioned
table, several nodes at once, the months retention would drop, ``atrium maintain``."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
from typing import Any

import psycopg
import pytest

from atrium.devenv import REPO_ROOT, wait_until
from atrium.operations.partitions import (
    MAINTENANCE_LOCK,
    ensure_partitions,
    expired_partitions,
    maintenance_lock,
    month_start,
    partition_name,
    partitioned_tables,
    upkeep,
)

pytestmark = pytest.mark.integration

NOW = dt.datetime(2031, 6, 15, 12, tzinfo=dt.UTC)  # the clock, moved forward
TABLES = {"audit_log", "recordings", "signal_segments"}


def months_of(db: psycopg.Connection[Any], parent: str) -> set[str]:
    return {r[0] for r in db.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass", (parent,)).fetchall()}


def expected(parent: str, now: dt.datetime, back: int = 1, ahead: int = 12) -> set[str]:
    return {partition_name(parent, month_start(now, i)) for i in range(-back, ahead + 1)}


def test_every_time_partitioned_table_is_found(db: psycopg.Connection[Any]) -> None:
    found = {t.name: (t.time_column, t.default_partition) for t in partitioned_tables(db)}

    assert found == {"audit_log": ("event_time", "audit_log_default"),
                     "recordings": ("recording_date", "recordings_default"),
                     "signal_segments": ("segment_start", "signal_segments_default")}


def test_every_partitioned_table_gets_a_month_back_and_a_year_ahead(
        db: psycopg.Connection[Any]) -> None:
    created = ensure_partitions(db, NOW)

    assert len(created) == 3 * 14
    for table in TABLES:
        assert expected(table, NOW) <= months_of(db, table)
    assert ensure_partitions(db, NOW) == []


def test_rows_of_a_created_month_land_in_it_not_in_the_default(
        db: psycopg.Connection[Any]) -> None:
    ensure_partitions(db, NOW)

    db.execute("INSERT INTO audit_log (action, event_time) VALUES ('later', %s)",
                 (NOW + dt.timedelta(days=40),))

    where = db.execute("SELECT tableoid::regclass::text FROM audit_log "
                         "WHERE action = 'later'").fetchone()
    assert where == ("audit_log_y2031m07",)


def test_a_table_added_by_a_later_migration_is_kept_too(db: psycopg.Connection[Any]) -> None:
    db.execute("CREATE TABLE sensor_events (at timestamptz NOT NULL) PARTITION BY RANGE (at)")
    db.execute("CREATE TABLE sensor_events_default PARTITION OF sensor_events DEFAULT")

    ensure_partitions(db, NOW, months_back=0, months_ahead=2)

    assert expected("sensor_events", NOW, back=0, ahead=2) <= months_of(db, "sensor_events")


def test_a_month_whose_rows_sit_in_the_default_partition_is_left_there(
        db: psycopg.Connection[Any]) -> None:
    db.execute("INSERT INTO audit_log (action, event_time) VALUES ('early', %s)",
                 (month_start(NOW, 2) + dt.timedelta(days=3),))

    created = ensure_partitions(db, NOW)

    assert partition_name("audit_log", month_start(NOW, 2)) not in created
    assert partition_name("audit_log", month_start(NOW, 3)) in created


def test_several_nodes_at_once_create_each_partition_exactly_once(db_url: str) -> None:
    results: list[list[str]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def node() -> None:
        try:
            start.wait()
            results.append(upkeep(db_url, NOW))
        except BaseException as exc:  # noqa: BLE001 — reported below
            errors.append(exc)

    threads = [threading.Thread(target=node) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    created = [name for result in results for name in result]
    assert len(created) == len(set(created)) == 3 * 14


def test_a_node_waits_for_the_lock_another_holds(db_url: str,
                                                 db: psycopg.Connection[Any]) -> None:
    done: list[list[str]] = []
    with psycopg.connect(db_url, autocommit=True) as holder, maintenance_lock(holder):
        worker = threading.Thread(target=lambda: done.append(upkeep(db_url, NOW)))
        worker.start()
        wait_until(lambda: db.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND ((classid::bigint << 32) | objid::bigint) = %s",
            (MAINTENANCE_LOCK,)).fetchone() == (1,), 10, what="the second node to wait")
        assert done == []
    worker.join(30)
    assert done and len(done[0]) == 3 * 14


def test_expired_months_are_those_ended_by_the_cutoff_and_never_the_default(
        db: psycopg.Connection[Any]) -> None:
    ensure_partitions(db, dt.datetime(2001, 2, 10, tzinfo=dt.UTC), months_back=1,
                      months_ahead=1)

    expired = expired_partitions(db, "audit_log", dt.datetime(2001, 3, 1, tzinfo=dt.UTC))

    assert [p.name for p in expired] == ["audit_log_y2001m01", "audit_log_y2001m02"]
    assert expired[0].start == dt.datetime(2001, 1, 1, tzinfo=dt.UTC)
    assert expired[1].end == dt.datetime(2001, 3, 1, tzinfo=dt.UTC)


def test_atrium_maintain_creates_what_is_missing(db_url: str, db: psycopg.Connection[Any],
                                                 tmp_path: Any) -> None:
    upkeep(db_url)
    newest = partition_name("audit_log", month_start(dt.datetime.now(dt.UTC), 12))
    db.execute(f"DROP TABLE {newest}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    env.update(ATRIUM_DATABASE_URL=db_url, ATRIUM_DATA_DIR=str(tmp_path))

    done = subprocess.run([sys.executable, "-m", "atrium.cli", "maintain"], env=env,
                          cwd=REPO_ROOT, text=True, capture_output=True, timeout=120,
                          check=False)

    assert done.returncode == 0, done.stderr
    assert f"created 1 partition(s): {newest}" in done.stdout
