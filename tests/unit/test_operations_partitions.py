"""Month arithmetic, partition names, the retention policy and the TimescaleDB path
(which cannot be installed here: a recording fake stands in for PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from atrium.operations.partitions import (
    Partition,
    drop_partitions,
    expired_partitions,
    month_start,
    partition_name,
)
from atrium.operations.retention import Plan, RetentionPolicy


@pytest.mark.parametrize("when, months, expected", [
    (dt.datetime(2026, 12, 31, 23, 59, tzinfo=dt.UTC), 1, dt.datetime(2027, 1, 1, tzinfo=dt.UTC)),
    (dt.datetime(2026, 1, 15, tzinfo=dt.UTC), -1, dt.datetime(2025, 12, 1, tzinfo=dt.UTC)),
    (dt.datetime(2026, 3, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))), 0,
     dt.datetime(2026, 2, 1, tzinfo=dt.UTC)),  # still February in UTC
    (dt.date(2026, 5, 9), 12, dt.datetime(2027, 5, 1, tzinfo=dt.UTC)),
])
def test_month_start_is_utc_and_shifts_across_years(when: Any, months: int,
                                                     expected: dt.datetime) -> None:
    assert month_start(when, months) == expected


def test_a_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        month_start(dt.datetime(2026, 1, 1))


def test_partition_names_follow_the_migrations_convention() -> None:
    assert partition_name("audit_log", dt.datetime(2026, 3, 1, tzinfo=dt.UTC)) == \
        "audit_log_y2026m03"


class TimescaleFake:
    """Answers as a server with TimescaleDB would; records the statements."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Any]] = []

    def execute(self, statement: Any, params: Any = None) -> TimescaleFake:
        self.statements.append((str(statement), params))
        self._last = str(statement)
        return self

    def fetchone(self) -> tuple[bool]:
        return (True,)

    def fetchall(self) -> list[tuple[str]]:
        return [("_timescaledb_internal._hyper_1_1_chunk",)]


def test_under_timescaledb_expired_chunks_are_listed_and_dropped_with_drop_chunks() -> None:
    conn = TimescaleFake()
    cutoff = dt.datetime(2019, 1, 1, tzinfo=dt.UTC)

    expired = expired_partitions(conn, "audit_log", cutoff)  # type: ignore[arg-type]
    dropped = drop_partitions(conn, expired, cutoff)  # type: ignore[arg-type]

    assert expired == [Partition("audit_log", "_timescaledb_internal._hyper_1_1_chunk",
                                 None, None)]
    assert dropped == 1
    assert any("show_chunks" in s and p == ("audit_log", cutoff) for s, p in conn.statements)
    assert any("drop_chunks" in s and p == ("audit_log", cutoff) for s, p in conn.statements)
    assert not any("DROP TABLE" in s for s, _ in conn.statements)


def test_a_retention_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="RetentionPolicy.jobs must be a positive period"):
        RetentionPolicy(jobs=dt.timedelta(0))
    assert RetentionPolicy.from_days(1, 2, 3, 4).predictions == dt.timedelta(days=2)


def test_the_plan_lists_one_line_per_thing_removed() -> None:
    plan = Plan(dt.datetime(2033, 1, 1, tzinfo=dt.UTC),
                [Partition("audit_log", "audit_log_y2026m01", None, None)], 7,
                [(dt.date(2027, 12, 1), 3)], ["j1"], {"slides": ["s1"]})

    assert plan.lines() == ["audit_log partition audit_log_y2026m01",
                            "predictions month 2027-12: 3 rows archived then removed",
                            "job j1", "slides s1 (soft-deleted)"]
