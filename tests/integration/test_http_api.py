"""Atrium's HTTP layer as served by Orthanc: health, mirror status, problem documents."""

from __future__ import annotations

import pytest
import requests

from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration


def test_health_reports_each_dependency(atrium: AtriumUnderTest) -> None:
    response = requests.get(f"{atrium.url}/api/health", timeout=10)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["status"] for name, check in body["checks"].items()} == {
        "database": "ok", "storage": "ok", "mirror": "ok"}


def test_mirror_status_counts_both_sides(atrium: AtriumUnderTest) -> None:
    blobs = make_study(StudySpec(patient_id="STATUS-1", series=1, instances_per_series=2))
    for blob in blobs:
        assert atrium.upload(blob).status_code == 200
    atrium.wait_caught_up()
    status = requests.get(f"{atrium.url}/api/mirror/status", timeout=10,
                          headers=atrium.auth("admin")).json()
    assert status["lag_changes"] == 0
    assert status["cursor"] == status["orthanc_last_change"] > 0
    assert status["mirror"]["instances"] == status["orthanc"]["instances"] >= 2
    assert status["mirror"]["studies"] == status["orthanc"]["studies"]


def test_unknown_route_is_a_404_problem(atrium: AtriumUnderTest) -> None:
    response = requests.get(f"{atrium.url}/api/no-such-thing", timeout=10)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 404 and problem["title"] and "no-such-thing" in problem["detail"]


def test_wrong_method_is_a_405_naming_the_allowed_ones(atrium: AtriumUnderTest) -> None:
    response = requests.delete(f"{atrium.url}/api/health", timeout=10)
    assert response.status_code == 405
    assert "GET" in response.headers.get("Allow", "")
