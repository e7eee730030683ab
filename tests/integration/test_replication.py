"""Streaming replication: a standby on loopback follows the primary; when the primary
is lost, the promoted standby holds every committed row and Atrium runs on it."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
import pytest
import requests

from atrium.devenv import LocalCluster, wait_until
from tests.conftest import free_port
from tests.integration.conftest import AtriumUnderTest, _start
from tests.integration.test_backup_restore import orthanc_on, upload_all
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

# What must survive the failover: the mirror, its cursor, the audit chain, the schema.
COUNTS = {
    "instances": "SELECT count(*) FROM instances",
    "studies": "SELECT count(*) FROM studies",
    "audit_log": "SELECT count(*) FROM audit_log",
    "audit_head": "SELECT max(seq) FROM audit_log",
    "cursor": "SELECT last_seq FROM mirror_state WHERE name = 'orthanc'",
    "migrations": "SELECT count(*) FROM schema_migrations",
}


def counts(url: str) -> dict[str, object]:
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: conn.execute(query).fetchone()[0]  # type: ignore[index]
                for name, query in COUNTS.items()}


def test_promoted_standby_has_every_committed_row_and_atrium_runs_on_it(
        workspace: Path) -> None:
    root = workspace / f"replication-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    root.chmod(0o755)
    primary = LocalCluster(root / "primary", port=free_port())
    primary.init()
    primary.start()
    standby: LocalCluster | None = None
    started: list[AtriumUnderTest] = []
    try:
        # Atrium's database and Orthanc's index on the primary, as `make run` has them.
        under_test = _start(workspace, primary, primary)
        started.append(under_test)
        # Synchronous: a commit is reported once the standby has it, so even a crash
        # of the primary loses nothing a client was told is committed.
        standby = primary.create_standby(root / "standby", free_port(), synchronous=True)
        assert standby.in_recovery()

        blobs = make_study(StudySpec(patient_id="REPL-1", series=2, instances_per_series=4))
        blobs += make_study(StudySpec(patient_id="REPL-2", series=1, instances_per_series=3))
        upload_all(under_test, blobs)
        under_test.wait_caught_up()
        for role in ("admin", "clinician"):
            assert requests.get(f"{under_test.url}/api/studies", headers=under_test.auth(role),
                                timeout=30).status_code == 200
        database = under_test.database_url.rsplit("/", 1)[1]
        on_standby = under_test.database_url.replace(
            f":{primary.port}/", f":{standby.port}/")
        # Read-only queries on the standby meanwhile (hot standby) see the same rows.
        wait_until(lambda: counts(on_standby) == counts(under_test.database_url), 30,
                   what="the standby to replay the primary's writes")

        under_test.orthanc.stop()
        committed = counts(under_test.database_url)
        assert committed["instances"] == len(blobs)
        primary.stop("immediate")  # the primary is lost, without a clean shutdown

        standby.promote()
        assert not standby.in_recovery()
        assert counts(standby.url(database)) == committed

        on_promoted = orthanc_on(under_test, standby)
        started.append(on_promoted)
        on_promoted.wait_caught_up()
        verify = on_promoted.atrium_cli("verify")
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "clean" in verify.stdout
        chain = on_promoted.atrium_cli("audit", "verify")
        assert chain.returncode == 0, chain.stdout + chain.stderr
        # The promoted server takes writes: a new study is mirrored there.
        more = make_study(StudySpec(patient_id="REPL-3", series=1, instances_per_series=2))
        upload_all(on_promoted, more)
        on_promoted.wait_caught_up()
        assert on_promoted.scalar("SELECT count(*) FROM instances") == len(blobs) + len(more)
    finally:
        for under in started:
            under.orthanc.stop()
        primary.stop("immediate")
        if standby is not None:
            standby.stop("immediate")
