"""Retention as the data model sets it: what expires, the plan, and the run.

* ``audit_log`` (7 years): whole expired months are dropped, never a DELETE. Before
  the drop, the boundary (the newest chained row that leaves) is signed into a
  ``retention`` checkpoint in object storage and recorded in
  ``audit_retention_cuts``; the oldest remaining row chains onto it.
* ``predictions`` (5 years): each expired month is archived first as one Parquet
  object with its segmentation files (:mod:`atrium.operations.archive`), then removed.
* ``jobs`` (90 days after they finished) are deleted.
* Soft-deleted studies, slides, recordings and annotations (30 days after their
  deletion) are purged with their objects.

:func:`plan` lists everything a run at ``now`` removes; :func:`execute` removes
exactly that plan, so ``atrium retention --dry-run`` shows what the real run does.
The run holds the maintenance lock (:func:`atrium.operations.partitions.maintenance_lock`).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from atrium.operations import archive
from atrium.operations.anchoring import Anchorer
from atrium.operations.partitions import (
    Partition,
    drop_partitions,
    expired_partitions,
    maintenance_lock,
    month_start,
)
from atrium.storage import ObjectStore

log = logging.getLogger(__name__)

__all__ = ["Plan", "RetentionPolicy", "RunReport", "execute", "plan", "run"]


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of data is kept (docs/RETENTION.md)."""

    audit: dt.timedelta = dt.timedelta(days=7 * 365)
    predictions: dt.timedelta = dt.timedelta(days=5 * 365)
    jobs: dt.timedelta = dt.timedelta(days=90)
    deleted: dt.timedelta = dt.timedelta(days=30)

    def __post_init__(self) -> None:
        for name in ("audit", "predictions", "jobs", "deleted"):
            if getattr(self, name) <= dt.timedelta(0):
                raise ValueError(f"RetentionPolicy.{name} must be a positive period")

    @classmethod
    def from_days(cls, audit: int, predictions: int, jobs: int, deleted: int) -> RetentionPolicy:
        return cls(*(dt.timedelta(days=d) for d in (audit, predictions, jobs, deleted)))


@dataclass
class Plan:
    """Everything one run removes, computed at ``now``."""

    now: dt.datetime
    audit_partitions: list[Partition] = field(default_factory=list)
    audit_rows: int = 0
    prediction_months: list[tuple[dt.date, int]] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    deleted: dict[str, list[str]] = field(default_factory=dict)  # table -> ids

    def lines(self) -> list[str]:
        """One line per thing removed: what ``--dry-run`` prints."""
        out = [f"audit_log partition {p.name}" for p in self.audit_partitions]
        out += [f"predictions month {m:%Y-%m}: {n} rows archived then removed"
                for m, n in self.prediction_months]
        out += [f"job {job}" for job in self.jobs]
        for table, ids in sorted(self.deleted.items()):
            out += [f"{table} {row_id} (soft-deleted)" for row_id in ids]
        return out

    def as_json(self) -> dict[str, Any]:
        return {"now": self.now.isoformat(),
                "audit_partitions": [p.name for p in self.audit_partitions],
                "audit_rows": self.audit_rows,
                "prediction_months": [{"month": f"{m:%Y-%m}", "rows": n}
                                      for m, n in self.prediction_months],
                "jobs": self.jobs, "deleted": self.deleted}


@dataclass
class RunReport:
    plan: Plan
    audit_cut: str | None = None  # the retention checkpoint's object name
    audit_partitions_dropped: int = 0
    predictions_archived: int = 0
    jobs_deleted: int = 0
    deleted_purged: dict[str, list[str]] = field(default_factory=dict)
    kept: list[str] = field(default_factory=list)  # planned but still referenced

    def as_json(self) -> dict[str, Any]:
        return {"audit_cut": self.audit_cut,
                "audit_partitions_dropped": self.audit_partitions_dropped,
                "predictions_archived": self.predictions_archived,
                "jobs_deleted": self.jobs_deleted, "deleted_purged": self.deleted_purged,
                "kept": self.kept}


# ------------------------------------------------------------------ planning

_SOFT_DELETED: dict[str, str] = {
    # table -> the query of its expired soft-deleted rows (one id each)
    "studies": "SELECT id::text FROM studies WHERE deleted_at < %s ORDER BY id",
    "slides": "SELECT id::text FROM slides WHERE deleted_at < %s ORDER BY id",
    "recordings": "SELECT DISTINCT id::text FROM recordings WHERE deleted_at < %s ORDER BY 1",
    # an annotation is its root: every version leaves together, once all are deleted
    "annotations": ("SELECT root_id::text FROM annotations GROUP BY root_id "
                    "HAVING bool_and(deleted_at < %s) ORDER BY 1"),
}


def plan(conn: psycopg.Connection[Any], policy: RetentionPolicy,
         now: dt.datetime | None = None) -> Plan:
    """What a run at ``now`` removes (nothing is changed)."""
    now = now or dt.datetime.now(dt.UTC)
    result = Plan(now)
    audit_cutoff = now - policy.audit
    result.audit_partitions = expired_partitions(conn, "audit_log", audit_cutoff)
    if result.audit_partitions:
        row = conn.execute("SELECT count(*) FROM audit_log WHERE tableoid = ANY(%s::regclass[])",
                           ([p.name for p in result.audit_partitions],)).fetchone()
        result.audit_rows = int(row[0]) if row else 0
    result.prediction_months = archive.expired_months(conn, month_start(now - policy.predictions))
    result.jobs = [r[0] for r in conn.execute(
        "SELECT id::text FROM jobs WHERE finished_at < %s ORDER BY id",
        (now - policy.jobs,)).fetchall()]
    deleted_cutoff = now - policy.deleted
    for table, query in _SOFT_DELETED.items():
        ids = [r[0] for r in conn.execute(query, (deleted_cutoff,)).fetchall()]
        if ids:
            result.deleted[table] = ids
    return result


# ------------------------------------------------------------------ running

_BOUNDARY = """
SELECT seq, id, row_hash FROM audit_log WHERE tableoid = ANY(%s::regclass[])
ORDER BY seq DESC LIMIT 1
"""


def _cut_audit(conn: psycopg.Connection[Any], the_plan: Plan, policy: RetentionPolicy,
               anchorer: Anchorer, report: RunReport) -> None:
    partitions = the_plan.audit_partitions
    if not partitions:
        return
    cutoff = the_plan.now - policy.audit
    names = [p.name for p in partitions]
    with conn.transaction():
        boundary = conn.execute(_BOUNDARY, (names,)).fetchone()
        rows = conn.execute("SELECT count(*) FROM audit_log WHERE tableoid = ANY(%s::regclass[])",
                            (names,)).fetchone()
        dropped_rows = int(rows[0]) if rows else 0
        if boundary is not None:
            seq, row_id, row_hash = int(boundary[0]), str(boundary[1]), bytes(boundary[2])
            # Anchored before anything leaves: if the drop then fails, the checkpoint
            # still names a row that exists and matches.
            checkpoint = anchorer.write("retention", seq, row_id, row_hash.hex(), the_plan.now)
            report.audit_cut = checkpoint.name
            conn.execute("INSERT INTO audit_retention_cuts (cutoff, partitions, rows_dropped, "
                         "boundary_seq, boundary_hash, checkpoint) VALUES (%s, %s, %s, %s, %s, %s)",
                         (cutoff, names, dropped_rows, seq, row_hash, checkpoint.name))
        report.audit_partitions_dropped = drop_partitions(conn, partitions, cutoff)
    log.info("retention.audit partitions=%d rows=%d boundary=%s", len(partitions),
             dropped_rows, report.audit_cut)


def _delete_jobs(conn: psycopg.Connection[Any], ids: list[str], report: RunReport) -> None:
    if ids:
        cur = conn.execute("DELETE FROM jobs WHERE id = ANY(%s::uuid[])", (ids,))
        report.jobs_deleted = cur.rowcount


_PURGE: dict[str, tuple[str, ...]] = {
    "studies": (
        "DELETE FROM instances WHERE series_id IN (SELECT id FROM series WHERE study_id = %s)",
        "DELETE FROM series WHERE study_id = %s",
        "DELETE FROM studies WHERE id = %s RETURNING NULL"),
    "slides": ("DELETE FROM slides WHERE id = %s RETURNING storage_path",),
    "recordings": ("DELETE FROM recordings WHERE id = %s RETURNING storage_path",),
    "annotations": ("DELETE FROM annotations WHERE root_id = %s RETURNING NULL",),
}


def _purge_deleted(conn: psycopg.Connection[Any], store: ObjectStore, the_plan: Plan,
                   report: RunReport) -> None:
    """Each planned row in its own transaction: one still referenced elsewhere (a
    registry row naming a slide, say) is kept and reported, the others go."""
    for table, ids in the_plan.deleted.items():
        for row_id in ids:
            objects: list[str] = []
            try:
                with conn.transaction():
                    for statement in _PURGE[table]:
                        cur = conn.execute(statement, (row_id,))
                        if cur.description is not None:
                            objects += [r[0] for r in cur.fetchall() if r[0]]
            except psycopg.errors.ForeignKeyViolation as exc:
                report.kept.append(f"{table} {row_id}: still referenced "
                                   f"({exc.diag.table_name or 'another table'})")
                continue
            for name in objects:
                store.delete(name)
            report.deleted_purged.setdefault(table, []).append(row_id)


def execute(conn: psycopg.Connection[Any], the_plan: Plan, policy: RetentionPolicy,
            store: ObjectStore, anchorer: Anchorer, *,
            on_step: Callable[[str], None] | None = None) -> RunReport:
    """Remove exactly what ``the_plan`` lists. ``conn``: the owner's, in autocommit."""
    report = RunReport(the_plan)
    step = on_step or (lambda _name: None)
    step("audit")
    _cut_audit(conn, the_plan, policy, anchorer, report)
    step("predictions")
    for month, _count in the_plan.prediction_months:
        report.predictions_archived += archive.archive_month(conn, store, month).row_count
    step("jobs")
    _delete_jobs(conn, the_plan.jobs, report)
    step("deleted")
    _purge_deleted(conn, store, the_plan, report)
    return report


def run(owner_url: str, policy: RetentionPolicy, store: ObjectStore, anchorer: Anchorer,
        now: dt.datetime | None = None, *, dry_run: bool = False) -> RunReport:
    """Plan and (unless ``dry_run``) execute retention under the maintenance lock."""
    with (psycopg.connect(owner_url, autocommit=True, connect_timeout=10) as conn,
          maintenance_lock(conn)):
        the_plan = plan(conn, policy, now)
        if dry_run:
            return RunReport(the_plan)
        report = execute(conn, the_plan, policy, store, anchorer)
    log.info("retention.run %s", {k: v for k, v in report.as_json().items() if v})
    return report
