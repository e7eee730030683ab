"""The audit log in the shapes hospital SIEMs and auditors read.

* FHIR R4 ``AuditEvent`` resources (JSON), gathered in a ``searchset`` Bundle.
* RFC 5424 syslog lines in the IHE ATNA shape: ``MSGID`` ``IHE+RFC-3881`` and, as
  the message, the DICOM audit message XML (DICOM PS3.15 A.5), one line each.

Rows are read one page at a time, oldest first, by ``(event_time, id)``: a long
range is exported page after page through cursors, never built in memory.
Each row keeps its place in the hash chain (``seq``, ``row_hash``) so that an
exported copy can be matched against the database.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import quoteattr

import psycopg
from psycopg import sql

from atrium.api.pagination import Keyset
from atrium.auth.audit import select_page

__all__ = ["EXPORT_FORMATS", "ExportPage", "export_page", "fhir_audit_event", "syslog_line"]

EXPORT_FORMATS = ("fhir", "syslog")
EXPORT_KEYSET = Keyset("audit-export", ("event_time", "id"), descending=False)
MAX_EXPORT_LIMIT = 5000
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:atrium:audit-action"
CHAIN_EXTENSION = "urn:atrium:audit-chain"
# RFC 5424 structured data needs an enterprise number; 32473 is the one RFC 5612
# reserves for documentation, kept until Atrium has its own.
SD_ID = "atrium@32473"
_FACILITY_AUTHPRIV = 10

_ACTION_CODES = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}
_INTERACTIONS = {"GET": "read", "HEAD": "read", "POST": "create", "PUT": "update",
                 "PATCH": "patch", "DELETE": "delete"}


@dataclass(frozen=True)
class AuditRow:
    id: uuid.UUID
    event_time: dt.datetime
    user_id: uuid.UUID | None
    keycloak_id: str | None
    organization_id: uuid.UUID | None
    action: str
    resource_type: str | None
    resource_id: uuid.UUID | None
    ip_address: str | None
    user_agent: str | None
    details: dict[str, Any]
    phi_accessed: bool
    seq: int
    row_hash: str

    @property
    def method(self) -> str | None:
        head = self.action.split(" ", 1)[0]
        return head if head in _ACTION_CODES else None

    @property
    def status(self) -> int | None:
        status = self.details.get("status")
        return status if isinstance(status, int) else None


def _outcome(row: AuditRow) -> str:
    """FHIR/DICOM outcome: 0 success, 4 minor failure (refused), 8 serious failure."""
    if row.status is None or row.status < 400:
        return "0"
    return "4" if row.status < 500 else "8"


def _event_type(row: AuditRow) -> tuple[str, str, str]:
    if row.phi_accessed:
        return DCM, "110110", "Patient Record"
    if row.action.startswith("dicom.c-find"):
        return DCM, "110112", "Query"
    if row.action.startswith("dicom."):
        return DCM, "110106", "Export"
    if row.method is not None:
        return "http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", \
            "RESTful Operation"
    return DCM, "110100", "Application Activity"


def _utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def fhir_audit_event(row: AuditRow, source: str) -> dict[str, Any]:
    """One row as a FHIR R4 ``AuditEvent`` resource."""
    system, code, display = _event_type(row)
    subtype = [{"system": ACTION_SYSTEM, "code": row.action}]
    if row.method is not None:
        subtype.append({"system": "http://hl7.org/fhir/restful-interaction",
                        "code": _INTERACTIONS[row.method]})
    who: dict[str, Any] = {"display": row.keycloak_id or "Atrium"}
    if row.user_id is not None:
        who["identifier"] = {"system": "urn:atrium:user", "value": str(row.user_id)}
    agent: dict[str, Any] = {"who": who, "requestor": row.user_id is not None
                             or row.keycloak_id is not None}
    if row.ip_address:
        agent["network"] = {"address": row.ip_address, "type": "2"}
    if row.user_agent:
        agent["name"] = row.user_agent[:200]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(row.id),
        "extension": [{"url": CHAIN_EXTENSION, "extension": [
            {"url": "seq", "valueInteger": row.seq} if row.seq < 2**31 else
            {"url": "seq", "valueString": str(row.seq)},
            {"url": "rowHash", "valueString": row.row_hash}]}],
        "type": {"system": system, "code": code, "display": display},
        "subtype": subtype,
        "recorded": _utc(row.event_time),
        "outcome": _outcome(row),
        "agent": [agent],
        "source": {"observer": {"display": source},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/"
                                       "security-source-type",
                             "code": "4", "display": "Application Server"}]},
    }
    if row.method is not None:
        event["action"] = _ACTION_CODES[row.method]
    entity: dict[str, Any] = {
        "detail": [{"type": "details", "valueString": json.dumps(row.details, sort_keys=True)}]}
    if row.resource_id is not None or row.resource_type is not None:
        entity["what"] = {"identifier": {"system": f"urn:atrium:{row.resource_type or 'resource'}",
                                         "value": str(row.resource_id or "")}}
        entity["type"] = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type",
                          "code": "2", "display": "System Object"}
    if row.organization_id is not None:
        entity["detail"].append({"type": "organization", "valueString": str(row.organization_id)})
    event["entity"] = [entity]
    return event


def dicom_audit_message(row: AuditRow, source: str) -> str:
    """The DICOM PS3.15 A.5 audit message of one row, on one line."""
    system, code, display = _event_type(row)
    action = _ACTION_CODES.get(row.method or "", "E")
    user = row.keycloak_id or (str(row.user_id) if row.user_id else source)
    network = ""
    if row.ip_address:
        network = (f" NetworkAccessPointID={quoteattr(row.ip_address)}"
                   f' NetworkAccessPointTypeCode="2"')
    participant = ""
    if row.resource_id is not None or row.resource_type is not None:
        details = base64.b64encode(json.dumps(row.details, sort_keys=True).encode()).decode()
        participant = (
            f"<ParticipantObjectIdentification ParticipantObjectID="
            f"{quoteattr(str(row.resource_id or ''))} ParticipantObjectTypeCode=\"2\">"
            f"<ParticipantObjectIDTypeCode csd-code={quoteattr(row.resource_type or 'resource')}"
            f" codeSystemName=\"urn:atrium:resource-type\""
            f" originalText={quoteattr(row.resource_type or 'resource')}/>"
            f"<ParticipantObjectDetail type=\"details\" value=\"{details}\"/>"
            "</ParticipantObjectIdentification>")
    return (
        "<AuditMessage>"
        f"<EventIdentification EventActionCode=\"{action}\" EventDateTime="
        f"\"{_utc(row.event_time)}\" EventOutcomeIndicator=\"{_outcome(row)}\">"
        f"<EventID csd-code=\"{code}\" codeSystemName="
        f"{quoteattr('DCM' if system == DCM else system)} originalText={quoteattr(display)}/>"
        f"<EventTypeCode csd-code={quoteattr(row.action)} codeSystemName=\"{ACTION_SYSTEM}\""
        f" originalText={quoteattr(row.action)}/>"
        "</EventIdentification>"
        f"<ActiveParticipant UserID={quoteattr(user)} UserIsRequestor="
        f"\"{'true' if row.user_id or row.keycloak_id else 'false'}\"{network}/>"
        f"<AuditSourceIdentification AuditSourceID={quoteattr(source)}/>"
        f"{participant}</AuditMessage>")


def syslog_line(row: AuditRow, hostname: str, source: str = "atrium") -> str:
    """One RFC 5424 line (no trailing newline): authpriv, notice for a success and
    warning for a failure, ``MSGID`` ``IHE+RFC-3881``, the chain position as
    structured data and the DICOM audit message, after a BOM, as the message."""
    severity = 5 if _outcome(row) == "0" else 4
    pri = _FACILITY_AUTHPRIV * 8 + severity
    host = "".join(c for c in hostname if 33 <= ord(c) <= 126)[:255] or "-"
    data = f'[{SD_ID} seq="{row.seq}" rowHash="{row.row_hash}"]'
    return (f"<{pri}>1 {_utc(row.event_time)} {host} {source[:48]} - IHE+RFC-3881 {data} "
            f"\ufeff{dicom_audit_message(row, source)}")


# ------------------------------------------------------------------ pages

_PAGE = sql.SQL("""
SELECT id, event_time, user_id, keycloak_id, organization_id, action, resource_type,
       resource_id, host(ip_address), user_agent, details, phi_accessed, seq,
       encode(row_hash, 'hex')
FROM audit_log WHERE {where} ORDER BY {order} LIMIT %s
""")


@dataclass(frozen=True)
class ExportPage:
    rows: list[AuditRow]
    next_cursor: str | None


def export_page(conn: psycopg.Connection[Any], organization_id: uuid.UUID, *,
                time_from: dt.datetime | None = None, time_to: dt.datetime | None = None,
                limit: int = 1000, cursor: str | None = None) -> ExportPage:
    """One page of the organization's audit rows, oldest first, with
    ``time_from <= event_time < time_to``.

    Raises
    ------
    BadRequest
        For a cursor this export did not issue (field ``cursor``).
    ValueError
        For ``limit`` outside 1..5000 or a naive time (the route validates both first).
    """
    page = select_page(conn, _PAGE, EXPORT_KEYSET, organization_id, limit=limit,
                       max_limit=MAX_EXPORT_LIMIT, cursor=cursor, time_from=time_from,
                       time_to=time_to)
    return ExportPage([_row(r) for r in page["items"]], page["next_cursor"])


def _row(r: Sequence[Any]) -> AuditRow:
    return AuditRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                    dict(r[10] or {}), bool(r[11]), int(r[12]), r[13])
