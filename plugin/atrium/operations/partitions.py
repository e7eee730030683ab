"""Monthly partitions of the time-partitioned tables: created ahead, dropped when expired.

Every native range-partitioned table of the schema whose key is one
``timestamptz`` column is kept with a partition per month
(``<table>_yYYYYmMM``) from ``months_back`` before to ``months_ahead`` after
``now``, so new tables (a later migration's) are looked after without a list to
edit. A month whose rows already sit in the DEFAULT partition is left there:
PostgreSQL cannot attach a partition over rows the default holds.

With TimescaleDB the tables are hypertables (not native partitioned tables):
chunks are created by the inserts themselves, and expired ones are listed with
``show_chunks`` and removed with ``drop_chunks``.

All of it runs as the schema's owner under one session-level advisory lock, so
several Atrium nodes (or a node and ``atrium maintain``) may start it at once:
the second waits, then finds nothing left to create.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

__all__ = ["MAINTENANCE_LOCK", "Partition", "PartitionedTable", "drop_partitions",
           "ensure_partitions", "expired_partitions", "maintenance_lock", "month_start",
           "partition_name", "partitioned_tables", "uses_timescaledb"]

MAINTENANCE_LOCK = 0x61746D61696E74  # "atmaint" in ASCII; shared by every Atrium node
DEFAULT_MONTHS_BACK = 1
DEFAULT_MONTHS_AHEAD = 12
_MONTH_SUFFIX = re.compile(r"_y(\d{4})m(\d{2})$")


@dataclass(frozen=True)
class PartitionedTable:
    name: str
    time_column: str
    default_partition: str | None


@dataclass(frozen=True)
class Partition:
    """One month of a table (a native partition or a TimescaleDB chunk)."""

    parent: str
    name: str  # the relation's name, schema-qualified for chunks
    start: dt.datetime | None  # None for a chunk: TimescaleDB knows its range
    end: dt.datetime | None


def month_start(when: dt.datetime | dt.date, months: int = 0) -> dt.datetime:
    """The first instant (UTC) of the month of ``when``, shifted by ``months``."""
    if isinstance(when, dt.datetime):
        if when.tzinfo is None:
            raise ValueError("month_start needs a timezone-aware datetime")
        when = when.astimezone(dt.UTC)
    index = when.year * 12 + (when.month - 1) + months
    return dt.datetime(index // 12, index % 12 + 1, 1, tzinfo=dt.UTC)


def partition_name(parent: str, month: dt.datetime) -> str:
    return f"{parent}_y{month.year:04d}m{month.month:02d}"


def uses_timescaledb(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT atrium_uses_timescaledb()").fetchone()
    return bool(row and row[0])


_PARTITIONED = """
SELECT c.relname, a.attname, d.relname
FROM pg_partitioned_table p
JOIN pg_class c ON c.oid = p.partrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
LEFT JOIN pg_class d ON d.oid = p.partdefid
WHERE n.nspname = current_schema() AND p.partstrat = 'r' AND p.partnatts = 1
  AND a.atttypid = 'timestamptz'::regtype AND NOT c.relispartition
ORDER BY c.relname
"""


def partitioned_tables(conn: psycopg.Connection[Any]) -> list[PartitionedTable]:
    """The schema's monthly-partitioned tables (none under TimescaleDB)."""
    return [PartitionedTable(name, column, default)
            for name, column, default in conn.execute(_PARTITIONED).fetchall()]


def _occupied(conn: psycopg.Connection[Any], table: PartitionedTable,
              start: dt.datetime, end: dt.datetime) -> bool:
    if table.default_partition is None:
        return False
    statement = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} >= %s AND {} < %s)").format(
        sql.Identifier(table.default_partition), sql.Identifier(table.time_column),
        sql.Identifier(table.time_column))
    row = conn.execute(statement, (start, end)).fetchone()
    return bool(row and row[0])


def ensure_partitions(conn: psycopg.Connection[Any], now: dt.datetime | None = None, *,
                      months_back: int = DEFAULT_MONTHS_BACK,
                      months_ahead: int = DEFAULT_MONTHS_AHEAD) -> list[str]:
    """Create the missing monthly partitions around ``now``; the names created.

    ``conn`` must be the schema owner's, in autocommit: each partition is created
    in its own short transaction (it locks its parent). Call it under
    :func:`maintenance_lock` when other nodes may run it too.
    """
    if months_back < 0 or months_ahead < 0:
        raise ValueError("months_back and months_ahead must be >= 0")
    now = now or dt.datetime.now(dt.UTC)
    created = []
    for table in partitioned_tables(conn):
        for offset in range(-months_back, months_ahead + 1):
            start, end = month_start(now, offset), month_start(now, offset + 1)
            name = partition_name(table.name, start)
            found = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
            if (found and found[0] is not None) or _occupied(conn, table, start, end):
                continue
            conn.execute(sql.SQL("CREATE TABLE {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})")
                         .format(sql.Identifier(name), sql.Identifier(table.name),
                                 sql.Literal(start), sql.Literal(end)))
            created.append(name)
    if created:
        log.info("partitions.created count=%d first=%s last=%s", len(created), created[0],
                 created[-1])
    return created


_MONTHS_OF = """
SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname
"""


def expired_partitions(conn: psycopg.Connection[Any], parent: str,
                       cutoff: dt.datetime) -> list[Partition]:
    """The months of ``parent`` that ended at or before ``cutoff``, oldest first.

    Native partitions are recognised by their name (``_yYYYYmMM``); the DEFAULT
    partition is never expired. Under TimescaleDB, the chunks ``show_chunks``
    lists as older than ``cutoff``.
    """
    if uses_timescaledb(conn):
        rows = conn.execute("SELECT c::text FROM show_chunks(%s::regclass, older_than => %s) c",
                            (parent, cutoff)).fetchall()
        return [Partition(parent, name, None, None) for (name,) in rows]
    expired = []
    for (name,) in conn.execute(_MONTHS_OF, (parent,)).fetchall():
        match = _MONTH_SUFFIX.search(name)
        if match is None:
            continue
        start = dt.datetime(int(match[1]), int(match[2]), 1, tzinfo=dt.UTC)
        end = month_start(start, 1)
        if end <= cutoff:
            expired.append(Partition(parent, name, start, end))
    return sorted(expired, key=lambda p: (p.start or cutoff, p.name))


def drop_partitions(conn: psycopg.Connection[Any], partitions: list[Partition],
                    cutoff: dt.datetime) -> int:
    """Drop ``partitions`` (from :func:`expired_partitions` with the same ``cutoff``).

    Under TimescaleDB ``drop_chunks(older_than => cutoff)`` removes them, which
    TimescaleDB requires rather than a DROP TABLE of a chunk. Returns how many left.
    """
    if not partitions:
        return 0
    parents = {p.parent for p in partitions}
    if uses_timescaledb(conn):
        dropped = 0
        for parent in sorted(parents):
            rows = conn.execute("SELECT drop_chunks(%s::regclass, older_than => %s)",
                                (parent, cutoff)).fetchall()
            dropped += len(rows)
        return dropped
    for partition in partitions:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(partition.name)))
    log.info("partitions.dropped parents=%s count=%d", ",".join(sorted(parents)),
             len(partitions))
    return len(partitions)


@contextmanager
def maintenance_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    """Hold Atrium's maintenance lock on ``conn``'s session (waiting for it).

    Session-level, so it spans the many short transactions of one run; a node that
    dies mid-run loses its connection and with it the lock.
    """
    conn.execute("SELECT pg_advisory_lock(%s)", (MAINTENANCE_LOCK,))
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock(%s)", (MAINTENANCE_LOCK,))


def upkeep(owner_url: str, now: dt.datetime | None = None, *,
           months_ahead: int = DEFAULT_MONTHS_AHEAD) -> list[str]:
    """One run of partition upkeep as the schema owner, under the maintenance lock."""
    with (psycopg.connect(owner_url, autocommit=True, connect_timeout=10) as conn,
          maintenance_lock(conn)):
        return ensure_partitions(conn, now, months_ahead=months_ahead)
