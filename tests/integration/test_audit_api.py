"""The audit trail as Atrium writes it over HTTP: one row per request before the
answer leaves, refused attempts on record, a chain intact under concurrency, and
the routes that read and verify it."""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pydicom
import requests

from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

ORG = "Audit Clinic"


def rows_for(atrium: AtriumUnderTest, user: str) -> list[tuple]:
    return atrium.sql(
        "SELECT a.action, a.phi_accessed, (a.details->>'status')::int, a.resource_type "
        "FROM audit_log a JOIN users u ON u.id = a.user_id WHERE u.username = %s "
        "ORDER BY a.seq", (user,))


def test_a_phi_read_leaves_exactly_one_row_before_the_answer(atrium: AtriumUnderTest) -> None:
    spec = StudySpec(patient_id="AUDIT-PHI", series=1, instances_per_series=1)
    blob = make_study(spec)[0]
    headers = atrium.auth("clinician", ORG, user="audit-clinician")
    stored = requests.post(f"{atrium.url}/api/instances", data=blob, timeout=30,
                           headers={**headers, "Content-Type": "application/dicom"})
    assert stored.status_code == 201, stored.text
    atrium.wait_mirrored([pydicom.dcmread(io.BytesIO(blob)).SOPInstanceUID])
    before = len(rows_for(atrium, "audit-clinician"))
    metadata = requests.get(f"{atrium.url}/dicom-web/studies/{spec.study_uid}/metadata",
                            headers=headers, timeout=30)
    assert metadata.status_code == 200
    # The row is committed before the answer is sent: it is there when the answer is.
    after = rows_for(atrium, "audit-clinician")
    assert len(after) == before + 1
    assert after[-1] == ("GET dicom-web", True, 200, "dicom-web")


def test_refused_attempts_are_on_record(atrium: AtriumUnderTest) -> None:
    headers = atrium.auth("researcher", ORG, user="audit-researcher")
    assert requests.get(f"{atrium.url}/instances", headers=headers, timeout=30
                        ).status_code == 403
    assert requests.get(f"{atrium.url}/api/audit", headers=headers, timeout=30
                        ).status_code == 403
    rows = rows_for(atrium, "audit-researcher")
    assert [(r[0], r[2]) for r in rows] == [("GET orthanc", 403), ("GET /api/audit", 403)]
    anonymous = atrium.scalar(
        "SELECT count(*) FROM audit_log WHERE user_id IS NULL "
        "AND (details->>'status')::int = 401")
    requests.get(f"{atrium.url}/api/me", timeout=30)
    assert atrium.scalar("SELECT count(*) FROM audit_log WHERE user_id IS NULL "
                         "AND (details->>'status')::int = 401") == anonymous + 1


def test_fifty_concurrent_requests_leave_an_intact_chain(atrium: AtriumUnderTest) -> None:
    headers = atrium.auth("clinician", ORG, user="audit-burst")
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(
            lambda _: requests.get(f"{atrium.url}/api/me", headers=headers,
                                   timeout=30).status_code, range(50)))
    assert statuses == [200] * 50
    assert len(rows_for(atrium, "audit-burst")) == 50
    auditor = atrium.auth("auditor", ORG, user="audit-auditor")
    verdict = requests.get(f"{atrium.url}/api/audit/verify", headers=auditor, timeout=120)
    assert verdict.status_code == 200
    assert verdict.json()["ok"] is True and verdict.json()["first_broken"] is None
    seqs = [r[0] for r in atrium.sql("SELECT seq FROM audit_log ORDER BY seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


def test_the_audit_routes_list_the_organizations_rows_only(atrium: AtriumUnderTest) -> None:
    requests.get(f"{atrium.url}/api/me", headers=atrium.auth("clinician", "Audit Elsewhere",
                                                             user="audit-elsewhere"), timeout=30)
    auditor = atrium.auth("auditor", ORG, user="audit-auditor")
    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 20, **({"cursor": cursor} if cursor else {})}
        page = requests.get(f"{atrium.url}/api/audit", headers=auditor, params=params,
                            timeout=30)
        assert page.status_code == 200, page.text
        seen.extend(page.json()["items"])
        cursor = page.json()["next_cursor"]
        if not cursor:
            break
    organization = atrium.scalar("SELECT id::text FROM organizations WHERE name = %s", (ORG,))
    assert seen and {item["organization_id"] for item in seen} == {organization}
    times = [item["event_time"] for item in seen]
    assert times == sorted(times, reverse=True)
    phi_only = requests.get(f"{atrium.url}/api/audit", headers=auditor,
                            params={"phi_accessed": "true"}, timeout=30).json()["items"]
    assert phi_only and all(item["phi_accessed"] for item in phi_only)
    bad = requests.get(f"{atrium.url}/api/audit", headers=auditor,
                       params={"from": "yesterday"}, timeout=30)
    assert bad.status_code == 400


def test_a_row_edited_behind_the_triggers_back_is_named(atrium_factory) -> None:  # noqa: ANN001
    under_test = atrium_factory()
    headers = under_test.auth("clinician", ORG, user="audit-victim")
    for _ in range(3):
        assert requests.get(f"{under_test.url}/api/me", headers=headers,
                            timeout=30).status_code == 200
    victim = under_test.scalar("SELECT a.id::text FROM audit_log a JOIN users u "
                               "ON u.id = a.user_id WHERE u.username = 'audit-victim' "
                               "ORDER BY a.seq LIMIT 1 OFFSET 1")
    with psycopg.connect(under_test.database_url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE audit_log SET action = 'GET nothing' WHERE id = %s", (victim,))
    auditor = under_test.auth("auditor", ORG, user="audit-auditor")
    verdict = requests.get(f"{under_test.url}/api/audit/verify", headers=auditor,
                           timeout=120).json()
    assert verdict["ok"] is False and verdict["first_broken"]["id"] == victim
    cli = under_test.atrium_cli("audit", "verify")
    assert cli.returncode == 1 and victim in cli.stdout


def test_atrium_runs_as_a_role_that_cannot_change_audit_rows(atrium: AtriumUnderTest) -> None:
    assert requests.get(f"{atrium.url}/api/me", headers=atrium.auth("clinician", ORG),
                        timeout=30).status_code == 200
    roles = {row[0] for row in atrium.sql(
        "SELECT usename FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'atrium'")}
    assert roles == {"atrium_app"}
    runtime_url = atrium.orthanc.config["Atrium"]["DatabaseUrl"]
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        for statement in ("UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log",
                          "TRUNCATE audit_log", "UPDATE audit_chain_head SET seq = 0"):
            try:
                conn.execute(statement)
            except psycopg.errors.InsufficientPrivilege:
                continue
            raise AssertionError(f"{statement!r} was allowed to Atrium's role")
