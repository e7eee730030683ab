"""Point-in-time recovery, drilled: rows written, the time noted, more rows written,
a restore to the noted time into a fresh data directory, and exactly the rows of
that moment there — with PostgreSQL alone over S3, and with Orthanc and Atrium
started on the restored cluster (``atrium verify`` and the audit chain clean)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from atrium.backup.archive import ArchiveConfig, archived_wal, prepare_for_server
from atrium.backup.basebackup import base_backups, runs
from atrium.backup.restore import restore
from atrium.backup.schedule import BackupKind, Schedule
from atrium.backup.service import archive_settings, run_backup
from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, postgres_tool
from atrium.migrations import apply_migrations
from tests.conftest import free_port
from tests.integration.conftest import AtriumUnderTest, _start
from tests.integration.s3server import S3Server
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True, scope="module")
def checkout_reachable_by_the_server() -> None:
    """archive_command and restore_command run as PostgreSQL's system user (postgres,
    when the tests run as root), which must reach this checkout's Python: a clone
    in a directory only root may enter (``mktemp -d``) is opened for entering, as
    an installation would be."""
    if os.geteuid() != 0:
        return
    for top in {REPO_ROOT.resolve(), Path(sys.prefix).resolve()}:
        for directory in (top, *top.parents):
            mode = directory.stat().st_mode
            if not mode & stat.S_IXOTH:
                directory.chmod(mode | stat.S_IXOTH)


def archiving_cluster(root: Path, config: ArchiveConfig) -> LocalCluster:
    """A new cluster archiving its WAL as ``atrium backup setup`` configures it."""
    cluster = LocalCluster(root, port=free_port())
    cluster.init()
    prepare_for_server(config.open(), cluster.server_owner)
    path = root / "backup-archive.json"
    config.write(path, cluster.server_owner)
    cluster.configure(archive_settings(path, archive_timeout_seconds=60))
    cluster.start()
    return cluster


def restored_cluster(root: Path, original: LocalCluster) -> LocalCluster:
    """The cluster ``atrium restore`` prepared in ``root/postgres``, started and
    promoted; it keeps the original's passwords (its roles are the original's)."""
    cluster = LocalCluster(root, port=free_port())
    for source, target in ((original.password_file, cluster.password_file),
                           (original.app_password_file, cluster.app_password_file)):
        if source.exists():
            shutil.copyfile(source, target)
    cluster.start()
    cluster.wait_promoted(timeout=120)
    return cluster


def server_now(url: str) -> datetime:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def names(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [row[0] for row in conn.execute("SELECT name FROM organizations ORDER BY name")]


def insert_organizations(url: str, prefix: str, count: int) -> None:
    with psycopg.connect(url) as conn:
        for n in range(count):  # one transaction each: several commits to replay
            conn.execute("INSERT INTO organizations (name, type) VALUES (%s, 'hospital')",
                         (f"{prefix}-{n}",))
            conn.commit()


@pytest.fixture
def bucket(s3_server: S3Server) -> Iterator[str]:
    name = f"pitr-{uuid.uuid4().hex[:10]}"
    yield name
    client = s3_server.client()
    for item in client.list_objects(name, recursive=True):
        client.remove_object(name, item.object_name)
    client.remove_bucket(name)


def test_recovery_over_s3_has_exactly_the_rows_of_the_noted_moment(
        workspace: Path, s3_server: S3Server, bucket: str) -> None:
    config = ArchiveConfig(f"s3://{bucket}/pitr", s3_server.endpoint, s3_server.access_key,
                           s3_server.secret_key, s3_secure=False)
    root = workspace / f"pitr-s3-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    root.chmod(0o755)
    primary = LocalCluster(root / "primary", port=free_port())
    primary.init()
    primary.start()
    target: LocalCluster | None = None
    try:
        # `atrium backup setup` on the private cluster of a data directory: archiving
        # configured, the cluster restarted with it.
        env = {**os.environ, "ATRIUM_DATA_DIR": str(primary.data_dir),
               "ATRIUM_PG_PORT": str(primary.port), "ATRIUM_BACKUP_URL": config.url,
               "ATRIUM_S3_ENDPOINT": s3_server.endpoint,
               "ATRIUM_S3_ACCESS_KEY": s3_server.access_key,
               "ATRIUM_S3_SECRET_KEY": s3_server.secret_key, "ATRIUM_S3_SECURE": "false",
               "ATRIUM_BACKUP_ARCHIVE_TIMEOUT_SECONDS": "60"}
        for name in ("ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_OWNER_URL", "ATRIUM_STORAGE_URL"):
            env.pop(name, None)
        setup = subprocess.run([sys.executable, "-m", "atrium.cli", "backup", "setup"],
                               env=env, text=True, capture_output=True, timeout=120,
                               check=False)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert "cluster was restarted" in setup.stdout
        with psycopg.connect(primary.url("postgres"), autocommit=True) as conn:
            assert conn.execute("SHOW archive_mode").fetchone() == ("on",)
        primary.ensure_database("atrium")
        url = primary.url("atrium")
        apply_migrations(url)
        insert_organizations(url, "before-base", 2)
        store = config.open()
        schedule = Schedule()
        began = time.monotonic()
        full = run_backup(BackupKind.FULL, url=url, store=store, orthanc_storage=None,
                          pg_basebackup=postgres_tool("pg_basebackup"),
                          workdir=root / "tmp", schedule=schedule)
        backup_seconds = time.monotonic() - began
        insert_organizations(url, "kept", 3)
        noted = server_now(url)
        insert_organizations(url, "after", 3)
        run_backup(BackupKind.INCREMENTAL, url=url, store=store, orthanc_storage=None,
                   pg_basebackup=postgres_tool("pg_basebackup"), workdir=root / "tmp",
                   schedule=schedule)
        assert [r.kind for r in runs(store)] == [BackupKind.FULL, BackupKind.INCREMENTAL]
        assert [b.label for b in base_backups(store)] == [full.run.label]
        assert archived_wal(store), "the WAL archive is in the bucket"
        primary.stop("immediate")

        began = time.monotonic()
        restore(store, config, noted, root / "restored" / "postgres",
                pg_verifybackup=postgres_tool("pg_verifybackup"), owner=primary.server_owner)
        target = restored_cluster(root / "restored", primary)
        restore_seconds = time.monotonic() - began
        assert names(target.url("atrium")) == [
            "before-base-0", "before-base-1", "kept-0", "kept-1", "kept-2"]
        size = sum(base_backups(store)[0].files.values())
        print(f"\nPITR over S3: full backup of {size / 1e6:.1f} MB in {backup_seconds:.1f}s, "
              f"restore and recovery {restore_seconds:.1f}s")
    finally:
        primary.stop("immediate")
        if target is not None:
            target.stop("immediate")


# -- the whole drill, with Orthanc and Atrium --------------------------------------------
def moved(config: dict[str, Any], old_port: int, new_port: int) -> dict[str, Any]:
    """Orthanc's configuration with every database URL moved to ``new_port``, on new
    listening ports."""
    text = json.dumps(config).replace(f"127.0.0.1:{old_port}/", f"127.0.0.1:{new_port}/")
    result: dict[str, Any] = json.loads(text)
    result["HttpPort"], result["DicomPort"] = free_port(), free_port()
    return result


def orthanc_on(under_test: AtriumUnderTest, cluster: LocalCluster,
               storage: Path | None = None) -> AtriumUnderTest:
    """The same Orthanc and Atrium (same data directory: keys, secrets), started on
    ``cluster``, and on ``storage`` for Orthanc's files when given."""
    config = moved(under_test.orthanc.config, under_test.atrium_cluster.port, cluster.port)
    if storage is not None:
        config["StorageDirectory"] = config["IndexDirectory"] = str(storage)
    process = OrthancProcess(under_test.workdir / f"on-{cluster.port}", config,
                             under_test.orthanc.env)
    process.start()
    database_url = under_test.database_url.replace(
        f"127.0.0.1:{under_test.atrium_cluster.port}/", f"127.0.0.1:{cluster.port}/")
    return AtriumUnderTest(process, database_url, cluster, cluster, config["DicomPort"],
                           under_test.workdir)


def upload_all(under_test: AtriumUnderTest, blobs: list[bytes]) -> list[str]:
    ids = []
    for blob in blobs:
        response = under_test.upload(blob)
        assert response.status_code == 200, response.text
        ids.append(response.json()["ID"])
    return ids


def cli(under_test: AtriumUnderTest, backups: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**under_test.orthanc.env, "ATRIUM_DATABASE_URL": under_test.database_url,
           "ATRIUM_ORTHANC_URL": under_test.url, "ATRIUM_DATA_DIR": str(under_test.workdir),
           "ATRIUM_BACKUP_URL": f"file://{backups}"}
    return subprocess.run([sys.executable, "-m", "atrium.cli", *args], env=env, text=True,
                          capture_output=True, timeout=300, check=False)


def test_drill_restores_orthanc_and_atrium_to_the_noted_moment(workspace: Path) -> None:
    root = workspace / f"drill-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    root.chmod(0o755)
    backups = root / "backups"
    cluster = archiving_cluster(root / "primary", ArchiveConfig(f"file://{backups}"))
    started: list[AtriumUnderTest] = []
    restored: LocalCluster | None = None
    try:
        # Atrium's database and Orthanc's index in one cluster, as `make run` has them.
        under_test = _start(workspace, cluster, cluster)
        started.append(under_test)
        began = time.monotonic()
        result = cli(under_test, backups, "backup", "--full")
        backup_seconds = time.monotonic() - began
        assert result.returncode == 0, result.stdout + result.stderr
        assert "full backup" in result.stdout

        kept = make_study(StudySpec(patient_id="DRILL-KEPT", series=2, instances_per_series=3))
        kept_ids = upload_all(under_test, kept)
        under_test.wait_caught_up()
        token = under_test.auth("admin")
        assert requests.get(f"{under_test.url}/api/studies", headers=token,
                            timeout=30).status_code == 200  # an audit row of the moment
        audit_rows = under_test.scalar("SELECT count(*) FROM audit_log")
        noted = server_now(under_test.database_url)

        later = make_study(StudySpec(patient_id="DRILL-LATER", series=1, instances_per_series=4))
        upload_all(under_test, later)
        under_test.wait_caught_up()
        result = cli(under_test, backups, "backup", "--incremental")
        assert result.returncode == 0, result.stdout + result.stderr
        listing = cli(under_test, backups, "backup", "list")
        assert "1 base backup(s), 1 incremental run(s)" in listing.stdout, listing.stdout
        # Both kinds just ran: the schedule has nothing due before its next slot.
        assert "nothing due; next run at" in cli(under_test, backups, "backup").stdout
        assert under_test.scalar("SELECT count(*) FROM instances") == 10
        under_test.orthanc.stop()
        cluster.stop("immediate")

        began = time.monotonic()
        files = root / "restored-storage"
        result = cli(under_test, backups, "restore", "--to", noted.isoformat(),
                     "--into", str(root / "restored" / "postgres"), "--files-into", str(files))
        assert result.returncode == 0, result.stdout + result.stderr
        restored = restored_cluster(root / "restored", cluster)
        restore_seconds = time.monotonic() - began

        on_restored = orthanc_on(under_test, restored, storage=files)
        started.append(on_restored)
        on_restored.wait_caught_up()
        assert sorted(on_restored.api.get_json("/instances")) == sorted(kept_ids)
        assert on_restored.scalar("SELECT count(*) FROM instances") == len(kept)
        assert on_restored.scalar(
            "SELECT count(*) FROM patients WHERE patient_id = 'DRILL-LATER'") == 0
        assert on_restored.scalar("SELECT count(*) FROM audit_log WHERE event_time <= %s",
                                  (noted,)) == audit_rows
        for orthanc_id in kept_ids:  # the files of that moment came back
            file = requests.get(f"{on_restored.url}/instances/{orthanc_id}/file",
                                headers=on_restored.internal_headers, timeout=30)
            assert file.status_code == 200
        verify = on_restored.atrium_cli("verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "clean" in verify.stdout
        chain = on_restored.atrium_cli("audit", "verify")
        assert chain.returncode == 0, chain.stdout + chain.stderr
        print(f"\nrecovery drill: full backup {backup_seconds:.1f}s (CLI), restore and "
              f"recovery {restore_seconds:.1f}s; {listing.stdout.splitlines()[0]}")
    finally:
        for under in started:
            under.orthanc.stop()
        cluster.stop("immediate")
        if restored is not None:
            restored.stop("immediate")
