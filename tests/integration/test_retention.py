"""Retention against a real PostgreSQL, the clock moved forward (a ``now`` passed in):
audit months dropped whole with the chain verifiable from the anchored boundary,
predictions archived to Parquet, removed and restored equal, jobs and soft-deleted
rows purged, and the dry run listing exactly what the run removes."""

from __future__ import annotations

import datetime as dt
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.auth.audit import AuditEvent, record
from atrium.devenv import REPO_ROOT
from atrium.operations import archive
from atrium.operations.anchoring import Anchorer
from atrium.operations.audit_verify import verify_audit
from atrium.operations.retention import RetentionPolicy, execute, plan, run
from atrium.storage import FileObjectStore

pytestmark = pytest.mark.integration

POLICY = RetentionPolicy()  # the data model's periods
NOW = dt.datetime.now(dt.UTC)
MONTH = dt.date(NOW.year, NOW.month, 1)


@pytest.fixture
def organization(db: psycopg.Connection[Any]) -> uuid.UUID:
    row = db.execute("INSERT INTO organizations (name) VALUES ('Retention') "
                       "RETURNING id").fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def later(period: dt.timedelta) -> dt.datetime:
    """``now`` once ``period`` and two more months have passed: this month has expired."""
    return NOW + period + dt.timedelta(days=62)


def relations(db: psycopg.Connection[Any], names: list[str]) -> list[str]:
    return [n for n in names
            if db.execute("SELECT to_regclass(%s)", (n,)).fetchone() != (None,)]


# ------------------------------------------------------------------ audit_log

def test_expired_audit_months_leave_whole_and_the_chain_verifies_from_the_boundary(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> None:
    for i in range(3):
        record(db, AuditEvent(f"old-{i}"))
    anchorer.anchor()
    boundary = db.execute("SELECT id, row_hash FROM audit_log WHERE seq = 3").fetchone()
    assert boundary is not None
    now = later(POLICY.audit)

    the_plan = plan(db, POLICY, now)
    report = execute(db, the_plan, POLICY, store, anchorer)
    record(db, AuditEvent("after-the-cut"))  # chained onto the boundary

    names = [p.name for p in the_plan.audit_partitions]
    assert f"audit_log_y{NOW:%Y}m{NOW:%m}" in names and the_plan.audit_rows == 3
    assert relations(db, names) == []
    assert report.audit_partitions_dropped == len(names)
    cut = db.execute("SELECT boundary_seq, boundary_hash, rows_dropped, checkpoint "
                       "FROM audit_retention_cuts").fetchall()
    assert cut == [(3, boundary[1], 3, report.audit_cut)]
    assert store.exists(str(report.audit_cut))
    first = db.execute("SELECT seq, prev_hash FROM audit_log").fetchall()
    assert first == [(4, boundary[1])]
    verdict = verify_audit(db, store, anchorer.key.public_key(), retention=POLICY.audit,
                           now=now)
    assert verdict.ok, verdict.describe()
    assert (verdict.chain.first_seq, verdict.chain.retention_dropped) == (4, 3)
    assert verdict.anchors is not None and verdict.anchors.checkpoints == 2


def test_a_remaining_row_rechained_after_the_cut_is_caught_by_the_anchored_boundary(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> None:
    for i in range(2):
        record(db, AuditEvent(f"old-{i}"))
    now = later(POLICY.audit)
    execute(db, plan(db, POLICY, now), POLICY, store, anchorer)
    record(db, AuditEvent("after-the-cut"))
    # The owner forges the first remaining row onto a made-up predecessor and rehashes
    # it: the chain accepts whatever prev_hash the oldest row after a cut carries.
    db.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    db.execute("UPDATE audit_log a SET prev_hash = sha256('forged'), row_hash = sha256("
                 "atrium_audit_canonical(a.id, a.event_time, a.user_id, a.keycloak_id, "
                 "a.organization_id, 'forged', a.resource_type, a.resource_id, a.ip_address, "
                 "a.user_agent, a.details, a.phi_accessed, a.seq, sha256('forged'))), "
                 "action = 'forged'")
    db.execute("UPDATE audit_chain_head h SET row_hash = a.row_hash FROM audit_log a")
    db.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")

    verdict = verify_audit(db, store, anchorer.key.public_key(), retention=POLICY.audit,
                           now=now)

    assert verdict.chain.ok
    assert verdict.anchors is not None and not verdict.anchors.ok
    assert "the oldest remaining row, seq 3, does not chain onto the anchored retention " \
        "boundary" in verdict.anchors.problems[0]


# ------------------------------------------------------------------ predictions

def add_predictions(db: psycopg.Connection[Any], store: FileObjectStore,
                    organization: uuid.UUID) -> list[str]:
    model = db.execute("INSERT INTO ml_models (model_name, model_version, model_type) "
                         "VALUES ('nodules', '1.0', 'detection') RETURNING id").fetchone()
    assert model is not None
    ids = []
    for confidence in (0.125, 0.9):
        row = db.execute(
            "INSERT INTO predictions (model_id, target_id, target_type, results, confidence, "
            "organization_id) VALUES (%s, %s, 'study', %s, %s, %s) RETURNING id",
            (model[0], uuid.uuid4(), Jsonb({"label": "nodule", "scores": [confidence]}),
             confidence, organization)).fetchone()
        assert row is not None
        ids.append(str(row[0]))
    store.put(f"predictions/{ids[0]}/mask", b"\x89PNG mask bytes")
    db.execute("UPDATE predictions SET results = jsonb_set(results, '{segmentation}', %s) "
                 "WHERE id = %s", (Jsonb({"mask_url": f"/api/predictions/{ids[0]}/segmentation"
                                                      "/mask", "mask_bytes": 15}), ids[0]))
    return ids


def snapshot(db: psycopg.Connection[Any]) -> list[Any]:
    return db.execute("SELECT to_jsonb(p) FROM predictions p ORDER BY id").fetchall()


def test_expired_predictions_are_archived_removed_and_restored_equal(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer,
        organization: uuid.UUID) -> None:
    ids = add_predictions(db, store, organization)
    before = snapshot(db)
    now = later(POLICY.predictions)
    assert plan(db, POLICY, now - dt.timedelta(days=70)).prediction_months == []

    the_plan = plan(db, POLICY, now)
    report = execute(db, the_plan, POLICY, store, anchorer)

    assert the_plan.prediction_months == [(MONTH, 2)] and report.predictions_archived == 2
    assert snapshot(db) == []
    assert not store.exists(f"predictions/{ids[0]}/mask")
    prefix = archive.month_prefix(MONTH)
    with store.get(f"{prefix}/predictions.parquet") as stream:
        table = pq.read_table(io.BytesIO(stream.read()))
    assert sorted(table.column("id").to_pylist()) == sorted(ids)
    assert store.exists(f"{prefix}/files/{ids[0]}/mask")

    restored = archive.restore_month(db, store, MONTH)

    assert restored == 2
    assert snapshot(db) == before
    with store.get(f"predictions/{ids[0]}/mask") as stream:
        assert stream.read() == b"\x89PNG mask bytes"
    assert plan(db, POLICY, now).prediction_months == []  # held once restored
    assert archive.release_month(db, MONTH)
    assert plan(db, POLICY, now).prediction_months == [(MONTH, 2)]
    execute(db, plan(db, POLICY, now), POLICY, store, anchorer)  # archived again
    with store.get(f"{prefix}/predictions.parquet") as stream:
        again = pq.read_table(io.BytesIO(stream.read()))
    assert sorted(again.column("id").to_pylist()) == sorted(ids)  # not twice
    assert db.execute("SELECT row_count, file_count, restored_at FROM prediction_archives"
                        ).fetchall() == [(2, 1, None)]


def test_a_row_back_dated_into_an_archived_month_joins_its_archive(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer,
        organization: uuid.UUID) -> None:
    ids = add_predictions(db, store, organization)
    now = later(POLICY.predictions)
    execute(db, plan(db, POLICY, now), POLICY, store, anchorer)
    late = db.execute("INSERT INTO predictions (model_id, target_id, target_type, "
                        "created_at) SELECT id, %s, 'study', %s FROM ml_models "
                        "RETURNING id::text", (uuid.uuid4(), NOW)).fetchone()
    assert late is not None

    execute(db, plan(db, POLICY, now), POLICY, store, anchorer)

    with store.get(f"{archive.month_prefix(MONTH)}/predictions.parquet") as stream:
        table = pq.read_table(io.BytesIO(stream.read()))
    assert sorted(table.column("id").to_pylist()) == sorted([*ids, late[0]])
    assert archive.restore_month(db, store, MONTH) == 3


def test_a_changed_archive_is_refused_on_restore(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer,
        organization: uuid.UUID) -> None:
    add_predictions(db, store, organization)
    execute(db, plan(db, POLICY, later(POLICY.predictions)), POLICY, store, anchorer)
    store.put(f"{archive.month_prefix(MONTH)}/predictions.parquet", b"not parquet")

    with pytest.raises(archive.ArchiveError, match="does not match its recorded SHA-256"):
        archive.restore_month(db, store, MONTH)
    assert snapshot(db) == []


# ------------------------------------------------------------------ jobs, soft deletes

def test_finished_jobs_and_soft_deleted_rows_go_after_their_periods_with_their_objects(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer,
        organization: uuid.UUID) -> None:
    db.execute("INSERT INTO jobs (kind, status, finished_at) VALUES "
                 "('reconcile', 'succeeded', now()), ('backfill', 'running', NULL)")
    slides = []
    for deleted in (True, False):
        row = db.execute(
            "INSERT INTO slides (slide_id, organization_id, storage_path, deleted_at) "
            "VALUES (%s, %s, %s, %s) RETURNING id",
            (uuid.uuid4().hex, organization, f"slides/{organization}/{uuid.uuid4()}",
             NOW if deleted else None)).fetchone()
        assert row is not None
        slides.append(str(row[0]))
    paths = [r[0] for r in db.execute("SELECT storage_path FROM slides ORDER BY "
                                        "deleted_at NULLS LAST").fetchall()]
    for path in paths:
        store.put(path, b"tiff")
    now = NOW + max(POLICY.jobs, POLICY.deleted) + dt.timedelta(days=1)

    the_plan = plan(db, POLICY, now)
    report = execute(db, the_plan, POLICY, store, anchorer)

    assert len(the_plan.jobs) == 1 and report.jobs_deleted == 1
    assert db.execute("SELECT kind FROM jobs").fetchall() == [("backfill",)]
    assert the_plan.deleted == {"slides": [slides[0]]}
    assert report.deleted_purged == {"slides": [slides[0]]}
    assert db.execute("SELECT id::text FROM slides").fetchall() == [(slides[1],)]
    assert [store.exists(p) for p in paths] == [False, True]


def test_the_dry_run_lists_exactly_what_the_run_removes(
        db_url: str, db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer,
        organization: uuid.UUID) -> None:
    record(db, AuditEvent("old"))
    add_predictions(db, store, organization)
    db.execute("INSERT INTO jobs (kind, status, finished_at) VALUES ('reconcile', "
                 "'failed', now())")
    db.execute("INSERT INTO annotations (annotation_type, target_id, target_type, "
                 "organization_id, deleted_at) VALUES ('general', %s, 'study', %s, now())",
                 (uuid.uuid4(), organization))
    now = later(POLICY.audit)
    tables = ("audit_log", "predictions", "jobs", "annotations")
    counts = {t: db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
              .fetchone() for t in tables}

    dry = run(db_url, POLICY, store, anchorer, now, dry_run=True)
    unchanged = {t: db.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t)))
                 .fetchone() for t in tables}
    real = run(db_url, POLICY, store, anchorer, now)

    assert unchanged == counts
    assert dry.plan.lines() == real.plan.lines()
    assert dry.plan.audit_rows == 1 and len(dry.plan.jobs) == 1
    assert dry.plan.prediction_months == [(MONTH, 2)]
    assert list(dry.plan.deleted) == ["annotations"]
    assert real.as_json() | {"audit_cut": None} == {
        "audit_cut": None, "audit_partitions_dropped": len(dry.plan.audit_partitions),
        "predictions_archived": 2, "jobs_deleted": 1,
        "deleted_purged": dry.plan.deleted, "kept": []}
    for table in tables:
        assert db.execute(sql.SQL("SELECT count(*) FROM {}").format(
            sql.Identifier(table))).fetchone() == (0,)
    assert plan(db, POLICY, now).lines() == []


def test_the_command_lists_then_removes_what_has_expired(
        db_url: str, db: psycopg.Connection[Any], tmp_path: Path) -> None:
    job = db.execute("INSERT INTO jobs (kind, status, finished_at) VALUES ('reconcile', "
                       "'succeeded', now() - interval '91 days') RETURNING id::text").fetchone()
    assert job is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    env.update(ATRIUM_DATABASE_URL=db_url, ATRIUM_DATA_DIR=str(tmp_path))

    def atrium(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "atrium.cli", "-q", "retention", *args],
                              env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=120, check=False)

    dry = atrium("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.splitlines() == ["retention would remove 1 item(s)", f"  job {job[0]}"]
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (1,)

    real = atrium()
    assert real.returncode == 0, real.stderr
    assert real.stdout.splitlines() == ["retention removed 1 item(s)", f"  job {job[0]}"]
    assert db.execute("SELECT count(*) FROM jobs").fetchone() == (0,)

    missing = atrium("restore", "--month", "2001-01")
    assert missing.returncode == 1
    assert "no predictions archive for 2001-01" in missing.stderr
