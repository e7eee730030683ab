"""Audit anchoring and export against the real thing: signed checkpoints outside the
database catch what the hash chain alone cannot (a rewritten table, a cut tail),
Atrium writes them on its schedule and at shutdown, and auditors export the log
as FHIR AuditEvent and IHE ATNA syslog, page by page."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from atrium.auth.audit import GENESIS_HASH, AuditEvent, record, verify_chain
from atrium.devenv import REPO_ROOT, wait_until
from atrium.operations.anchoring import Anchorer, list_names, load_or_create_key
from atrium.operations.audit_verify import verify_audit
from atrium.storage import FileObjectStore, open_store
from tests.integration.conftest import AtriumUnderTest
from tests.integration.s3server import S3Server

pytestmark = pytest.mark.integration

ORG = uuid.UUID("00000000-0000-4000-8000-0000000000a1")


def write(db: psycopg.Connection[Any], count: int) -> None:
    for i in range(count):
        record(db, AuditEvent(f"event-{i}", organization_id=ORG, details={"i": i}))


def verdict(db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> Any:
    return verify_audit(db, store, anchorer.key.public_key())


def behind_the_triggers(db: psycopg.Connection[Any], *statements: str) -> None:
    """What the schema's owner can do: statements with every user trigger off."""
    db.execute("ALTER TABLE audit_log DISABLE TRIGGER USER")
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.execute("ALTER TABLE audit_log ENABLE TRIGGER USER")


# ------------------------------------------------------------------ checkpoints

def test_a_checkpoint_records_the_chain_head_and_the_chain_matches_it(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> None:
    write(db, 3)

    checkpoint = anchorer.anchor()

    assert checkpoint is not None and checkpoint.seq == 3
    head = db.execute("SELECT encode(row_hash, 'hex') FROM audit_chain_head").fetchone()
    assert head == (checkpoint.row_hash,)
    assert list_names(store, "audit-anchors") == [checkpoint.name]
    result = verdict(db, store, anchorer)
    assert result.ok, result.describe()
    assert result.anchors.checkpoints == 1


def test_nothing_is_anchored_while_the_head_has_not_moved(
        db: psycopg.Connection[Any], anchorer: Anchorer) -> None:
    assert anchorer.anchor() is None  # an empty chain
    write(db, 1)
    assert anchorer.anchor() is not None
    assert anchorer.anchor() is None
    write(db, 1)
    moved = anchorer.anchor()
    assert moved is not None and moved.seq == 2


def test_a_whole_table_rewritten_with_a_self_consistent_chain_is_named(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> None:
    write(db, 4)
    checkpoint = anchorer.anchor()
    assert checkpoint is not None

    # The owner empties the table, resets the head to the genesis and lets the
    # trigger chain a fabricated history: every hash is consistent again.
    behind_the_triggers(db, "DELETE FROM audit_log")
    db.execute("UPDATE audit_chain_head SET seq = 0, row_hash = %s", (GENESIS_HASH,))
    db.execute("DELETE FROM audit_chain_partitions")
    for i in range(5):
        record(db, AuditEvent(f"fabricated-{i}", organization_id=ORG))
    assert verify_chain(db).ok  # the chain alone cannot tell

    result = verdict(db, store, anchorer)

    assert not result.ok
    [problem] = result.anchors.problems
    assert problem.startswith(f"checkpoint {checkpoint.name}: row seq 4 is now ")
    assert f"the checkpoint recorded {checkpoint.row_id} hashed" in problem
    assert problem.endswith("the audit log was rewritten")


def cut_tail(db: psycopg.Connection[Any], keep: int) -> None:
    """Remove the rows after seq ``keep`` and make the head and ledger agree."""
    behind_the_triggers(db, f"DELETE FROM audit_log WHERE seq > {keep}")
    db.execute("UPDATE audit_chain_head SET seq = a.seq, row_hash = a.row_hash "
                 "FROM audit_log a WHERE a.seq = %s", (keep,))
    db.execute("UPDATE audit_chain_partitions p SET row_count = c.n, last_seq = c.last "
                 "FROM (SELECT tableoid AS relid, count(*) AS n, max(seq) AS last "
                 "FROM audit_log GROUP BY tableoid) c WHERE c.relid = p.relid")


def test_a_truncated_tail_is_detected_and_the_checkpoint_named(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> None:
    write(db, 3)
    early = anchorer.anchor()
    write(db, 2)
    late = anchorer.anchor()
    assert early is not None and late is not None

    cut_tail(db, 3)
    assert verify_chain(db).ok  # the chain alone cannot tell

    result = verdict(db, store, anchorer)

    assert result.anchors.problems == [
        f"checkpoint {late.name}: it recorded seq 5 but the chain now ends at seq 3: rows "
        "were removed from the tail of the audit log"]


def test_an_altered_checkpoint_is_refused(
        db: psycopg.Connection[Any], store: FileObjectStore, anchorer: Anchorer) -> None:
    write(db, 2)
    checkpoint = anchorer.anchor()
    assert checkpoint is not None
    path = store.root / checkpoint.name
    document = json.loads(path.read_text())
    document["checkpoint"]["seq"] = 1
    path.write_text(json.dumps(document))

    result = verdict(db, store, anchorer)

    assert result.anchors.problems == [
        f"checkpoint {checkpoint.name}: the signature does not verify: the checkpoint was "
        "altered"]


def atrium_cli(db_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    env.update(ATRIUM_DATABASE_URL=db_url, ATRIUM_DATA_DIR=str(data_dir))
    return subprocess.run([sys.executable, "-m", "atrium.cli", "-q", *args], env=env,
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def test_the_command_anchors_then_fails_naming_the_checkpoint_of_a_cut_tail(
        db: psycopg.Connection[Any], db_url: str, tmp_path: Path) -> None:
    write(db, 4)
    anchored = atrium_cli(db_url, tmp_path, "audit", "anchor")
    assert anchored.returncode == 0, anchored.stderr
    name = anchored.stdout.split(": ", 1)[1].strip()
    key = tmp_path / "keys" / "audit-anchor-ed25519.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"

    intact = atrium_cli(db_url, tmp_path, "audit", "verify")
    assert intact.returncode == 0, intact.stdout
    assert "anchors match: 1 signed checkpoint(s) checked" in intact.stdout

    cut_tail(db, 2)
    broken = atrium_cli(db_url, tmp_path, "audit", "verify")

    assert broken.returncode == 1, broken.stdout
    assert "audit chain intact" in broken.stdout
    assert f"checkpoint {name}: it recorded seq 4 but the chain now ends at seq 2" \
        in broken.stdout


def test_checkpoints_in_an_s3_bucket_under_a_prefix_are_listed_and_checked(
        db: psycopg.Connection[Any], db_url: str, s3_server: S3Server, tmp_path: Path) -> None:
    bucket = f"anchors-{uuid.uuid4().hex[:12]}"
    s3_server.client().make_bucket(bucket)
    store = open_store(f"s3://{bucket}/site-a", s3_endpoint=f"http://{s3_server.endpoint}",
                       s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key)
    key = load_or_create_key(tmp_path / "anchor.pem")
    s3_anchorer = Anchorer(lambda: psycopg.connect(db_url, autocommit=True), store, key)
    write(db, 2)
    first = s3_anchorer.anchor()
    write(db, 1)
    second = s3_anchorer.anchor()
    assert first is not None and second is not None

    assert list_names(store, "audit-anchors") == [first.name, second.name]
    assert verify_audit(db, store, key.public_key()).ok
    cut_tail(db, 2)
    problems = verify_audit(db, store, key.public_key()).anchors.problems
    assert problems == [f"checkpoint {second.name}: it recorded seq 3 but the chain now ends "
                        "at seq 2: rows were removed from the tail of the audit log"]


# ------------------------------------------------------------------ inside Atrium

def checkpoints(workdir: Path) -> list[str]:
    return list_names(FileObjectStore(workdir / "objects"), "audit-anchors/head")


def test_atrium_anchors_on_its_schedule_and_at_shutdown(
        atrium_factory: Callable[..., AtriumUnderTest]) -> None:
    under_test = atrium_factory(AuditAnchorSeconds=1)
    me = requests.get(f"{under_test.url}/api/me", headers=under_test.auth(), timeout=10)
    assert me.status_code == 200
    wait_until(lambda: len(checkpoints(under_test.workdir)) >= 1, 30,
               what="a scheduled checkpoint")

    under_test.orthanc.stop()

    head = under_test.scalar("SELECT seq FROM audit_chain_head")
    newest = max(checkpoints(under_test.workdir))
    assert f"/{head:015d}-" in newest  # the head as Atrium stopped
    key = under_test.workdir / "keys" / "audit-anchor-ed25519.pem"
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    with psycopg.connect(under_test.database_url, autocommit=True) as db:
        result = verify_audit(db, FileObjectStore(under_test.workdir / "objects"),
                              load_or_create_key(key).public_key())
    assert result.ok, result.describe()


# ------------------------------------------------------------------ export

SYSLOG = re.compile(r'^<8[45]>1 \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z \S+ atrium - '
                    r'IHE\+RFC-3881 \[atrium@32473 seq="(\d+)" rowHash="[0-9a-f]{64}"\] '
                    '\ufeff(<AuditMessage>.*</AuditMessage>)$')


def fetch_all(atrium: AtriumUnderTest, url: str, headers: dict[str, str]
              ) -> list[requests.Response]:
    pages = []
    while url:
        response = requests.get(f"{atrium.url}{url}", headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        pages.append(response)
        url = response.links.get("next", {}).get("url", "")
    return pages


def test_auditors_export_fhir_audit_events_page_by_page(atrium: AtriumUnderTest) -> None:
    start = dt.datetime.now(dt.UTC).isoformat()
    for _ in range(5):
        requests.get(f"{atrium.url}/api/me", headers=atrium.auth(), timeout=10)
    end = dt.datetime.now(dt.UTC).isoformat()
    query = requests.compat.urlencode({"format": "fhir", "from": start, "to": end, "limit": 2})

    pages = fetch_all(atrium, f"/api/audit/export?{query}", atrium.auth("auditor"))

    assert len(pages) == 3
    bundles = [page.json() for page in pages]
    assert all(b["resourceType"] == "Bundle" and b["type"] == "searchset" for b in bundles)
    assert pages[0].headers["Content-Type"].startswith("application/fhir+json")
    events = [entry["resource"] for b in bundles for entry in b["entry"]]
    assert len(events) == 5
    assert [e["recorded"] for e in events] == sorted(e["recorded"] for e in events)
    first = events[0]
    assert first["resourceType"] == "AuditEvent" and first["action"] == "R"
    assert first["outcome"] == "0"
    assert first["subtype"][0] == {"system": "urn:atrium:audit-action", "code": "GET /api/me"}
    assert first["agent"][0]["requestor"] is True
    assert bundles[0]["link"][1]["relation"] == "next"


def test_auditors_export_ihe_atna_syslog_lines(atrium: AtriumUnderTest) -> None:
    start = dt.datetime.now(dt.UTC).isoformat()
    requests.get(f"{atrium.url}/api/me", headers=atrium.auth("clinician"), timeout=10)
    requests.get(f"{atrium.url}/api/audit", headers=atrium.auth("clinician"), timeout=10)
    query = requests.compat.urlencode({"format": "syslog", "from": start})

    pages = fetch_all(atrium, f"/api/audit/export?{query}", atrium.auth("auditor"))

    lines = [line for page in pages for line in page.text.splitlines()]
    assert pages[0].headers["Content-Type"] == "text/plain; charset=utf-8"
    matches = [SYSLOG.match(line) for line in lines]
    assert all(matches), lines
    messages = [ET.fromstring(m.group(2)) for m in matches if m]  # noqa: S314 — our own output
    refused = [m for m in messages if m.find("EventIdentification").get(
        "EventOutcomeIndicator") == "4"]
    assert refused, "the clinician's refused read of /api/audit is exported as a failure"
    assert lines[0].startswith("<85>1 ") and any(line.startswith("<84>1 ") for line in lines)


def test_the_export_keeps_the_audit_read_rule(atrium: AtriumUnderTest) -> None:
    denied = requests.get(f"{atrium.url}/api/audit/export?format=fhir",
                          headers=atrium.auth("clinician"), timeout=10)
    other = requests.get(f"{atrium.url}/api/audit/export?format=fhir",
                         headers=atrium.auth("auditor", "Radiology North"), timeout=10)
    bad = requests.get(f"{atrium.url}/api/audit/export?format=csv",
                       headers=atrium.auth("auditor"), timeout=10)

    assert denied.status_code == 403
    assert other.status_code == 200
    default_org = atrium.scalar("SELECT id::text FROM organizations WHERE name = 'Default'")
    for entry in other.json()["entry"]:
        organizations = [d["valueString"] for d in entry["resource"]["entity"][0]["detail"]
                         if d["type"] == "organization"]
        assert default_org not in organizations
    assert bad.status_code == 400
    assert bad.headers["Content-Type"] == "application/problem+json"
