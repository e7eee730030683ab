"""``GET /api/metrics`` on a real Orthanc with Atrium: who may scrape, the metrics
present, and the metrics moving under a small load (docs/METRICS.md)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from atrium.devenv import LocalCluster, wait_until
from tests.integration.conftest import AtriumUnderTest, _start
from tests.integration.test_api_resources import sop_uids
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

SCRAPE_TOKEN = uuid.uuid4().hex + uuid.uuid4().hex

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

EXPECTED = {
    "atrium_http_request_duration_seconds_bucket", "atrium_http_requests_total",
    "atrium_audit_withheld_answers_total", "atrium_audit_rows_total", "atrium_mirror_cursor",
    "atrium_mirror_lag_changes", "atrium_mirror_cursor_age_seconds",
    "atrium_mirror_instances_total", "atrium_mirror_pending_deletions",
    "atrium_mirror_seconds_since_sync", "atrium_mirror_healthy",
    "atrium_mirror_quarantined_instances", "atrium_jobs", "atrium_scrape_source_up",
    "atrium_scrape_collect_seconds", "process_resident_memory_bytes",
}


@pytest.fixture(scope="module")
def node(workspace: Path, pg_cluster: LocalCluster) -> Iterator[AtriumUnderTest]:
    """An Atrium of this module's own, with a scrape token configured."""
    under_test = _start(workspace, pg_cluster, pg_cluster, MetricsToken=SCRAPE_TOKEN)
    yield under_test
    under_test.orthanc.stop()


def scrape(node: AtriumUnderTest, authorization: str = f"Bearer {SCRAPE_TOKEN}",
           accept: str | None = None) -> requests.Response:
    headers = {"Authorization": authorization, **({"Accept": accept} if accept else {})}
    return requests.get(f"{node.url}/api/metrics", headers=headers, timeout=30)


def samples(node: AtriumUnderTest) -> Samples:
    answer = scrape(node)
    assert answer.status_code == 200, answer.text[:300]
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer.text)
            for sample in family.samples}


def one(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_operators_administrators_and_the_scrape_token_may_scrape_no_one_else(
        node: AtriumUnderTest) -> None:
    assert scrape(node).status_code == 200
    assert scrape(node, f"Bearer {node.token('admin', 'Metrics Org')}").status_code == 200
    operator = {"Authorization": f"Bearer {node.token('operator', 'Metrics Org')}"}
    assert scrape(node, operator["Authorization"]).status_code == 200
    # An operator reads the metrics and nothing else.
    assert requests.get(f"{node.url}/api/studies", headers=operator,
                        timeout=30).status_code == 403
    assert scrape(node, f"Bearer {node.token('researcher', 'Metrics Org')}").status_code == 403
    assert scrape(node, f"Bearer {node.token('auditor', 'Metrics Org')}").status_code == 403
    refused = scrape(node, f"Bearer {SCRAPE_TOKEN[:-1]}x")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer"
    assert scrape(node, "").status_code == 401
    # The scrape token opens /api/metrics only.
    assert requests.get(f"{node.url}/api/patients", timeout=30, headers={
        "Authorization": f"Bearer {SCRAPE_TOKEN}"}).status_code == 401


def test_every_scrape_is_on_the_audit_record(node: AtriumUnderTest) -> None:
    before = node.scalar("SELECT count(*) FROM audit_log WHERE action = 'GET /api/metrics' "
                         "AND (details->>'status')::int = 200")
    assert scrape(node).status_code == 200
    after = node.scalar("SELECT count(*) FROM audit_log WHERE action = 'GET /api/metrics' "
                        "AND (details->>'status')::int = 200")
    assert after == before + 1


def test_openmetrics_is_answered_when_the_scraper_asks_for_it(node: AtriumUnderTest) -> None:
    answer = scrape(node, accept="application/openmetrics-text;version=1.0.0,text/plain;q=0.5")
    assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
    assert answer.text.rstrip().endswith("# EOF")


def test_the_metrics_are_present_and_move_under_a_small_load(node: AtriumUnderTest) -> None:
    admin = {"Authorization": f"Bearer {node.token('admin', 'Metrics Org')}"}
    requests.get(f"{node.url}/api/me", headers=admin, timeout=30).raise_for_status()
    node.wait_caught_up()
    first = samples(node)

    # The load: instances stored, API requests made, a job recorded.
    blobs = make_study(StudySpec(patient_id=f"MET-{uuid.uuid4().hex[:8]}", series=2,
                                 instances_per_series=3))
    for blob in blobs:
        node.upload(blob).raise_for_status()
    node.wait_mirrored(sop_uids(blobs))
    for _ in range(5):
        assert requests.get(f"{node.url}/api/me", headers=admin, timeout=30).status_code == 200
    missing_study = uuid.uuid4()
    assert requests.get(f"{node.url}/api/studies/{missing_study}", headers=admin,
                        timeout=30).status_code == 404
    study_uid = str(pydicom.dcmread(io.BytesIO(blobs[0])).StudyInstanceUID)
    assert requests.get(f"{node.url}/dicom-web/studies/{study_uid}/metadata",  # its org's
                        headers=node.auth(), timeout=30).status_code == 200
    kind = f"metrics_{uuid.uuid4().hex[:6]}"
    node.sql("INSERT INTO jobs (kind, status) VALUES (%s, 'running') RETURNING id", (kind,))

    # PostgreSQL publishes its insert counts within seconds, not at commit.
    def instances_counted() -> bool:
        return (one(samples(node), "atrium_mirror_instances_total")
                >= one(first, "atrium_mirror_instances_total") + len(blobs))

    wait_until(instances_counted, 30, interval=0.5, what="the instances counted")
    second = samples(node)
    missing = EXPECTED - {name for name, _ in second}
    assert not missing, f"metrics missing from the scrape: {sorted(missing)}"
    me = {"method": "GET", "route": "/api/me"}
    assert (one(second, "atrium_http_requests_total", **me, status="200")
            >= one(first, "atrium_http_requests_total", **me, status="200") + 5)
    assert (one(second, "atrium_http_request_duration_seconds_count", **me)
            >= one(first, "atrium_http_request_duration_seconds_count", **me) + 5)
    assert one(second, "atrium_http_requests_total", method="GET", route="/api/studies/{id}",
               status="404") >= 1
    assert one(second, "atrium_http_requests_total", method="GET",
               route="/dicom-web/studies/{study}/metadata", status="200") >= 1
    assert str(missing_study) not in scrape(node).text  # templates, never paths
    assert study_uid not in scrape(node).text
    assert (one(second, "atrium_audit_rows_total")
            >= one(first, "atrium_audit_rows_total") + 6)
    assert one(second, "atrium_jobs", kind=kind, status="running") == 1
    assert one(second, "atrium_jobs", kind=kind, status="failed") == 0
    assert one(second, "atrium_mirror_cursor") > one(first, "atrium_mirror_cursor")
    assert one(second, "atrium_mirror_lag_changes") >= 0
    assert one(second, "atrium_scrape_source_up", source="database") == 1
    assert one(second, "atrium_scrape_source_up", source="orthanc") == 1
