"""The mirror loses nothing: crashes, a database outage, deletions while Atrium is
down, and a first start over an Orthanc that already holds data."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from atrium.devenv import LocalCluster, wait_until
from tests.conftest import free_port
from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

Factory = Callable[..., AtriumUnderTest]


def many_instances(prefix: str, studies: int, per_series: int) -> list[bytes]:
    blobs: list[bytes] = []
    for n in range(studies):
        blobs += make_study(StudySpec(patient_id=f"{prefix}-{n % 7}", series=2,
                                      instances_per_series=per_series))
    return blobs


def assert_verify_clean(under_test: AtriumUnderTest) -> None:
    result = under_test.atrium_cli("verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean" in result.stdout


def test_kill_9_during_ingest_loses_nothing(atrium_factory: Factory) -> None:
    under_test = atrium_factory()
    blobs = many_instances("KILL", studies=20, per_series=8)  # 320 instances
    stored = threading.Event()
    count = 0
    lock = threading.Lock()

    def upload(blob: bytes) -> None:
        nonlocal count
        try:
            if under_test.upload(blob).status_code == 200:
                with lock:
                    count += 1
                    if count >= 120:
                        stored.set()
        except requests.RequestException:
            pass  # Orthanc was killed under this request

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(upload, b) for b in blobs]
        assert stored.wait(120), "120 instances should have been stored before the crash"
        under_test.orthanc.kill()
        for future in futures:
            future.result()
    under_test.restart()
    under_test.wait_caught_up()
    assert_verify_clean(under_test)
    # The instance the mirror was reading at the kill is read again, not set aside.
    assert under_test.scalar("SELECT count(*) FROM quarantined_instances") == 0
    assert under_test.scalar("SELECT count(*) FROM instances WHERE deleted_at IS NULL") == \
        under_test.api.get_json("/statistics")["CountInstances"] >= 120


def test_postgresql_down_for_30s_during_ingest(atrium_factory: Factory, workspace: Path) -> None:
    cluster = LocalCluster(workspace / "pg-outage", port=free_port())
    cluster.init()
    cluster.start()
    try:
        under_test = atrium_factory(atrium_cluster=cluster)
        blobs = many_instances("OUTAGE", studies=12, per_series=5)  # 120 instances
        first, rest = blobs[:30], blobs[30:]
        for blob in first:
            assert under_test.upload(blob).status_code == 200
        cluster.stop("immediate")
        outage_started = time.monotonic()
        statuses = []
        for blob in rest:
            statuses.append(under_test.upload(blob).status_code)
        while time.monotonic() - outage_started < 30:
            time.sleep(0.5)
        assert statuses == [200] * len(rest), "every store must succeed while PostgreSQL is down"
        health = requests.get(f"{under_test.url}/api/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["checks"]["database"]["status"] == "down"
        cluster.start()
        under_test.wait_caught_up(timeout=90)
        assert under_test.scalar("SELECT count(*) FROM instances WHERE deleted_at IS NULL") == 120
        assert_verify_clean(under_test)
    finally:
        cluster.stop("immediate")


def test_deletion_while_atrium_was_down_is_found_by_verify_and_repaired_by_reconcile(
        atrium_factory: Factory) -> None:
    under_test = atrium_factory()
    blobs = many_instances("OFFLINE-DELETE", studies=2, per_series=2)
    for blob in blobs:
        assert under_test.upload(blob).status_code == 200
    under_test.wait_caught_up()
    assert_verify_clean(under_test)

    under_test.restart(atrium=False)
    study = under_test.api.get_json("/studies")[0]
    under_test.api.delete(f"/studies/{study}")

    result = under_test.atrium_cli("verify")
    assert result.returncode == 1
    assert f"extra    Study    {study}" in result.stdout
    assert "extra    Instance" in result.stdout

    result = under_test.atrium_cli("reconcile")
    assert result.returncode == 0, result.stdout + result.stderr
    assert_verify_clean(under_test)
    assert under_test.scalar("SELECT deleted_at IS NOT NULL FROM studies WHERE orthanc_id = %s",
                             (study,)) is True
    assert under_test.scalar("SELECT status FROM jobs WHERE kind = 'reconcile'") == "succeeded"


def test_first_start_over_existing_data_backfills_as_a_job(atrium_factory: Factory) -> None:
    under_test = atrium_factory(with_atrium=False)
    blobs = many_instances("BACKFILL", studies=6, per_series=5)  # 60 instances
    for blob in blobs:
        assert under_test.upload(blob).status_code == 200
    under_test.restart(atrium=True)

    def job_done() -> bool:
        return under_test.scalar(
            "SELECT status FROM jobs WHERE kind = 'backfill'") == "succeeded"

    wait_until(job_done, 60, what="the backfill job")
    done, total = under_test.sql(
        "SELECT progress_done, progress_total FROM jobs WHERE kind = 'backfill'")[0]
    assert done == total == 60
    under_test.wait_caught_up()
    assert_verify_clean(under_test)
    status = requests.get(f"{under_test.url}/api/mirror/status", timeout=10,
                          headers=under_test.auth("admin")).json()
    assert status["mirror"]["instances"] == status["orthanc"]["instances"] == 60
    assert status["backfill"]["status"] == "succeeded"


def test_backfill_command_mirrors_an_orthanc_with_progress(atrium_factory: Factory) -> None:
    under_test = atrium_factory(with_atrium=False)
    blobs = many_instances("CLI-BACKFILL", studies=3, per_series=4)
    for blob in blobs:
        assert under_test.upload(blob).status_code == 200
    result = under_test.atrium_cli("backfill")
    assert result.returncode == 0, result.stderr
    assert '"instances": 24' in result.stdout
    assert under_test.scalar("SELECT count(*) FROM instances") == 24
    assert_verify_clean(under_test)


def test_without_orthancs_index_the_mirror_reads_everything_through_rest(
        atrium_factory: Factory) -> None:
    # An index that cannot be reached: every batch falls back to the REST API.
    under_test = atrium_factory(OrthancIndexUrl="postgresql://nobody@127.0.0.1:1/none")
    blobs = many_instances("NO-INDEX", studies=2, per_series=3)
    for blob in blobs:
        assert under_test.upload(blob).status_code == 200
    under_test.wait_caught_up()
    assert under_test.scalar("SELECT count(*) FROM instances WHERE deleted_at IS NULL "
                             "AND file_size_bytes > 0 AND metadata->'orthanc'->>'Origin' = "
                             "'RestApi'") == len(blobs)
    assert_verify_clean(under_test)
