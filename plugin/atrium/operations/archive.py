"""Expired predictions archived to object storage as Parquet, one object per month.

``archive/predictions/YYYY-MM/predictions.parquet`` holds the month's rows (by
``created_at``, UTC): ``id``, ``created_at``, ``model_id`` and ``row``, the whole
row as PostgreSQL's ``to_jsonb`` text, so that a restore puts back exactly what
left (``jsonb_populate_record``) whatever columns later migrations add. Each
prediction's segmentation files are copied to ``.../files/<id>/<kind>`` before the
rows and the originals are removed. Rows are read and written in batches through
a temporary file: a month of predictions never sits in memory whole.

A restored month is held (``prediction_archives.restored_at``): retention leaves
it alone until :func:`release_month`.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from atrium.operations.partitions import month_start
from atrium.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

__all__ = ["ArchiveRecord", "archive_month", "expired_months", "month_prefix", "release_month",
           "restore_month"]

BATCH_ROWS = 5000
SCHEMA = pa.schema([
    ("id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
    ("model_id", pa.string()),
    ("row", pa.string()),
])


class ArchiveError(Exception):
    """An archive is missing or does not hold what its record says."""


@dataclass(frozen=True)
class ArchiveRecord:
    month: dt.date
    object_name: str
    row_count: int
    file_count: int
    sha256: str


def month_prefix(month: dt.date) -> str:
    return f"archive/predictions/{month:%Y-%m}"


def _parquet_name(month: dt.date) -> str:
    return f"{month_prefix(month)}/predictions.parquet"


def _bounds(month: dt.date) -> tuple[dt.datetime, dt.datetime]:
    start = month_start(month)
    return start, month_start(start, 1)


def expired_months(conn: psycopg.Connection[Any], before: dt.datetime
                   ) -> list[tuple[dt.date, int]]:
    """Months (first day) wholly before ``before`` that still hold predictions, with
    their row counts, oldest first; held (restored) months are left out."""
    rows = conn.execute("""
        SELECT m.month, m.rows FROM (
            SELECT date_trunc('month', created_at AT TIME ZONE 'UTC')::date AS month,
                   count(*) AS rows
            FROM predictions WHERE created_at < %s GROUP BY 1) m
        WHERE NOT EXISTS (SELECT 1 FROM prediction_archives a
                          WHERE a.month = m.month AND a.restored_at IS NOT NULL)
        ORDER BY 1""", (before,)).fetchall()
    return [(month, int(count)) for month, count in rows]


def _segmentation_kinds(row_json: str) -> list[str]:
    results = json.loads(row_json).get("results") or {}
    segmentation = results.get("segmentation") if isinstance(results, dict) else None
    if not isinstance(segmentation, dict):
        return []
    return sorted(key[:-4] for key in segmentation if key.endswith("_url"))


def _copy(store: ObjectStore, source: str, target: str) -> bool:
    try:
        with store.get(source) as stream:
            store.put(target, stream)
    except ObjectNotFound:
        return False
    return True


def _batches(conn: psycopg.Connection[Any], month: dt.date
             ) -> Iterator[list[tuple[str, dt.datetime, str, str]]]:
    start, end = _bounds(month)
    with conn.cursor(name="atrium_archive_predictions") as cur:
        cur.itersize = BATCH_ROWS
        cur.execute("SELECT p.id::text, p.created_at, p.model_id::text, to_jsonb(p)::text "
                    "FROM predictions p WHERE p.created_at >= %s AND p.created_at < %s "
                    "ORDER BY p.created_at, p.id", (start, end))
        while batch := cur.fetchmany(BATCH_ROWS):
            yield batch


def _table(batch: list[tuple[str, dt.datetime, str, str]]) -> pa.Table:
    columns: list[Any] = [list(c) for c in zip(*batch, strict=True)] or [[], [], [], []]
    return pa.Table.from_arrays([pa.array(c, type=t.type) for c, t in zip(columns, SCHEMA,
                                                                           strict=True)],
                                schema=SCHEMA)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def archive_month(conn: psycopg.Connection[Any], store: ObjectStore, month: dt.date
                  ) -> ArchiveRecord:
    """Archive the predictions of ``month`` and their files, then remove them.

    ``conn`` in autocommit (the read is one REPEATABLE READ snapshot; only rows that
    were archived are deleted). Rows of an earlier archive of the same month are
    kept in the new object.
    """
    name = _parquet_name(month)
    ids: list[str] = []
    files: list[str] = []  # the originals copied, removed once the rows are
    archived_files = 0
    with tempfile.TemporaryDirectory(prefix="atrium-archive-") as tmp:
        path = Path(tmp) / "predictions.parquet"
        with pq.ParquetWriter(path, SCHEMA, compression="zstd") as writer:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                for batch in _batches(conn, month):
                    writer.write_table(_table(batch))
                    for row_id, _, _, row_json in batch:
                        ids.append(row_id)
                        for kind in _segmentation_kinds(row_json):
                            source = f"predictions/{row_id}/{kind}"
                            if _copy(store, source, f"{month_prefix(month)}/files/{row_id}/{kind}"):
                                files.append(source)
            if store.exists(name):  # an earlier archive of this month: keep its other rows
                again = pa.array(ids, type=pa.string())
                for old in _read_batches(store, name, Path(tmp) / "previous.parquet"):
                    kept = old.filter(pc.invert(pc.is_in(old.column("id"), value_set=again)))
                    writer.write_table(kept)
                    archived_files += sum(len(_segmentation_kinds(r))
                                          for r in kept.column("row").to_pylist())
        total = pq.ParquetFile(path).metadata.num_rows
        digest = _sha256(path)
        with path.open("rb") as parquet:
            store.put(name, parquet, content_type="application/vnd.apache.parquet")
    with conn.transaction():
        conn.execute("""
            INSERT INTO prediction_archives (month, object_name, row_count, file_count, sha256)
            VALUES (%s, %s, %s, %s, %s)
            ON CONFLICT (month) DO UPDATE SET object_name = excluded.object_name,
                row_count = excluded.row_count,
                file_count = excluded.file_count,
                sha256 = excluded.sha256, archived_at = now(), restored_at = NULL""",
                     (month, name, total, len(files) + archived_files, digest))
        for start in range(0, len(ids), BATCH_ROWS):
            conn.execute("DELETE FROM predictions WHERE id = ANY(%s::uuid[])",
                         (ids[start:start + BATCH_ROWS],))
    for source in files:
        store.delete(source)
    log.info("retention.predictions_archived month=%s rows=%d files=%d object=%s",
             f"{month:%Y-%m}", len(ids), len(files), name)
    return ArchiveRecord(month, name, len(ids), len(files), digest)


def _download(store: ObjectStore, name: str, local: Path) -> None:
    with store.get(name) as stream, local.open("wb") as out:
        while block := stream.read(1024 * 1024):
            out.write(block)


def _read_batches(store: ObjectStore, name: str, local: Path) -> Iterator[pa.Table]:
    _download(store, name, local)
    parquet = pq.ParquetFile(local)
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS):
        yield pa.Table.from_batches([batch], schema=SCHEMA)


def restore_month(conn: psycopg.Connection[Any], store: ObjectStore, month: dt.date) -> int:
    """Put the archived predictions of ``month`` back, with their files; rows
    already present are left as they are. Returns the rows inserted and holds the
    month against the next retention run.

    Raises
    ------
    ArchiveError
        When no archive of ``month`` exists or its object differs from the record.
    """
    record = conn.execute("SELECT object_name, sha256 FROM prediction_archives WHERE month = %s",
                          (month,)).fetchone()
    if record is None:
        raise ArchiveError(f"no predictions archive for {month:%Y-%m}")
    name, expected = record
    restored = 0
    with tempfile.TemporaryDirectory(prefix="atrium-restore-") as tmp:
        local = Path(tmp) / "predictions.parquet"
        try:
            _download(store, name, local)
        except ObjectNotFound:
            raise ArchiveError(f"the archive object {name} is missing") from None
        if _sha256(local) != expected.strip():
            raise ArchiveError(f"the archive object {name} does not match its recorded "
                               "SHA-256: it was changed after archiving")
        with conn.transaction():
            for batch in pq.ParquetFile(local).iter_batches(batch_size=BATCH_ROWS):
                restored += _restore_rows(conn, store, month, batch.column("row").to_pylist())
            conn.execute("UPDATE prediction_archives SET restored_at = now() WHERE month = %s",
                         (month,))
    log.info("retention.predictions_restored month=%s rows=%d", f"{month:%Y-%m}", restored)
    return restored


def _restore_rows(conn: psycopg.Connection[Any], store: ObjectStore, month: dt.date,
                  rows: list[str]) -> int:
    inserted = 0
    with conn.cursor() as cur:
        for row_json in rows:
            cur.execute("INSERT INTO predictions SELECT * FROM "
                        "jsonb_populate_record(NULL::predictions, %s::jsonb) "
                        "ON CONFLICT (id) DO NOTHING", (row_json,))
            inserted += cur.rowcount
            row_id = json.loads(row_json)["id"]
            for kind in _segmentation_kinds(row_json):
                _copy(store, f"{month_prefix(month)}/files/{row_id}/{kind}",
                      f"predictions/{row_id}/{kind}")
    return inserted


def release_month(conn: psycopg.Connection[Any], month: dt.date) -> bool:
    """Lift the hold a restore put on ``month``: the next retention run archives it again."""
    cur = conn.execute("UPDATE prediction_archives SET restored_at = NULL "
                       "WHERE month = %s AND restored_at IS NOT NULL", (month,))
    return cur.rowcount > 0
