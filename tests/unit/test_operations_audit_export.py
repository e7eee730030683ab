"""The export shapes: FHIR R4 AuditEvent and RFC 5424 / IHE ATNA syslog lines."""

from __future__ import annotations

import datetime as dt
import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any

from atrium.operations.audit_export import AuditRow, fhir_audit_event, syslog_line

WHEN = dt.datetime(2026, 11, 27, 21, 5, 1, 5, tzinfo=dt.timezone(dt.timedelta(hours=1)))
USER = uuid.UUID("00000000-0000-4000-8000-0000000000f1")
STUDY = uuid.UUID("00000000-0000-4000-8000-0000000000f2")


def row(**changes: Any) -> AuditRow:
    fields: dict[str, Any] = dict(
        id=uuid.UUID("00000000-0000-4000-8000-0000000000f3"), event_time=WHEN, user_id=USER,
        keycloak_id="kc-7", organization_id=None, action="GET /api/studies/{id}",
        resource_type="study", resource_id=STUDY, ip_address="10.0.0.7",
        user_agent="curl/8", details={"status": 200}, phi_accessed=True, seq=12,
        row_hash="ab" * 32)
    fields.update(changes)
    return AuditRow(**fields)


def test_a_phi_read_is_a_patient_record_read_by_its_user() -> None:
    event = fhir_audit_event(row(), "Atrium")

    assert event["resourceType"] == "AuditEvent"
    assert event["type"]["code"] == "110110" and event["action"] == "R"
    assert event["recorded"] == "2026-11-27T20:05:01.000005Z"
    assert event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == str(USER)
    assert event["agent"][0]["network"] == {"address": "10.0.0.7", "type": "2"}
    assert event["entity"][0]["what"]["identifier"]["value"] == str(STUDY)
    assert event["extension"][0]["extension"][0] == {"url": "seq", "valueInteger": 12}


def test_refusals_and_server_errors_are_failures_and_dicom_queries_are_queries() -> None:
    assert fhir_audit_event(row(details={"status": 403}), "A")["outcome"] == "4"
    assert fhir_audit_event(row(details={"status": 503}), "A")["outcome"] == "8"
    query = fhir_audit_event(row(action="dicom.c-find", phi_accessed=False), "A")
    assert query["type"]["code"] == "110112" and "action" not in query


SYSLOG = re.compile(r'^<(\d+)>1 (\S+) (\S+) atrium - IHE\+RFC-3881 '
                    r'\[atrium@32473 seq="12" rowHash="(ab){32}"\] \ufeff(.*)$')


def test_a_syslog_line_is_one_rfc_5424_line_with_the_dicom_audit_message() -> None:
    line = syslog_line(row(details={"status": 403}, user_agent='evil"\n<x>'), "host one")

    match = SYSLOG.match(line)
    assert match is not None and "\n" not in line
    assert match.group(1) == "84"  # authpriv.warning: refused
    assert match.group(2) == "2026-11-27T20:05:01.000005Z"
    assert match.group(3) == "hostone"
    message = ET.fromstring(match.group(5))  # noqa: S314 — our own output
    identification = message.find("EventIdentification")
    assert identification is not None
    assert identification.get("EventOutcomeIndicator") == "4"
    assert identification.get("EventActionCode") == "R"
    participant = message.find("ActiveParticipant")
    assert participant is not None and participant.get("UserID") == "kc-7"
    assert participant.get("NetworkAccessPointID") == "10.0.0.7"


def test_markup_in_values_cannot_break_the_xml() -> None:
    line = syslog_line(row(keycloak_id='a"/><Injected x="', action="GET <x>"), "h")

    message = ET.fromstring(line.split("\ufeff", 1)[1])  # noqa: S314 — our own output
    assert message.find("Injected") is None
    participant = message.find("ActiveParticipant")
    assert participant is not None and participant.get("UserID") == 'a"/><Injected x="'
