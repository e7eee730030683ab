"""C-FIND and C-MOVE for one calling AE title, from the mirror, on record.

Both are *interventions*: they decide the peer's answer. Each request writes one
audit row (``dicom.c-find`` / ``dicom.c-move``) before its answer leaves, refused
ones too; when the row cannot be written and the answer would carry identified
patients' data, the answer is withheld (a failure), as for HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from psycopg.rows import dict_row

from atrium.auth.audit import AuditEvent, record
from atrium.dicomnet.answers import answer_dataset, answer_values
from atrium.dicomnet.matching import QueryError, identifier_from_elements, parse_find
from atrium.dicomnet.modalities import lock_down_get
from atrium.dicomnet.policy import AetPolicy
from atrium.dicomnet.search import MoveIdentifiers, find_statement, move_statement

__all__ = ["DicomNetwork", "FindOutcome", "MoveOutcome", "MoveRefused"]

log = logging.getLogger(__name__)

MAX_ANSWERS = 10_000
"""Beyond this many matches a C-FIND answers the first ones and says it is
incomplete (Orthanc's ``LimitFindResults`` does the same)."""

ORGANIZATION_ID = "SELECT id FROM organizations WHERE name = %s AND deleted_at IS NULL"


class OrthancStore(Protocol):
    """What a move needs of Orthanc's REST API (loopback HTTP, never the SDK: the
    move runs on Orthanc's DICOM thread and the SDK holds the GIL for a whole call)."""

    def get_json(self, path: str) -> Any: ...

    def post_json(self, path: str, body: Any) -> Any: ...

    def put_json(self, path: str, body: Any) -> Any: ...


class MoveRefused(Exception):
    """The move is answered with a failure status (unknown destination, unmapped
    caller, Orthanc could not send)."""


@dataclass(frozen=True)
class FindOutcome:
    answers: list[bytes] = field(default_factory=list)
    incomplete: bool = False
    failed: bool = False


@dataclass(frozen=True)
class MoveOutcome:
    instances: int
    target_modality: str | None


class DicomNetwork:
    """C-FIND and C-MOVE scoped to the calling AE title's organization.

    Parameters
    ----------
    connect:
        Borrows a database connection (``pool.connection``).
    policy:
        AE title → organization.
    orthanc:
        Orthanc's REST API over loopback HTTP with Atrium's internal credential.
    local_aet:
        Orthanc's own AE title, returned as RetrieveAETitle.
    """

    def __init__(self, connect: Callable[[], Any], policy: AetPolicy, orthanc: OrthancStore,
                 local_aet: str, max_answers: int = MAX_ANSWERS) -> None:
        self._connect = connect
        self._policy = policy
        self._orthanc = orthanc
        self._local_aet = local_aet
        self._max_answers = max_answers
        self._lockdown: threading.Thread | None = None

    # ------------------------------------------------------------------ C-FIND

    def find(self, elements: Iterable[tuple[int, int, str]], calling_aet: str) -> FindOutcome:
        """Answers to one C-FIND: ``elements`` are the identifier's (group, element,
        value) as Orthanc decoded them."""
        identifier = identifier_from_elements(elements)
        level = (identifier.get("QueryRetrieveLevel") or "").strip().upper()
        organization = self._policy.organization_for(calling_aet)
        details = {"protocol": "dicom", "calling_aet": calling_aet[:16], "level": level[:8]}
        try:
            query = parse_find(identifier)
        except QueryError as error:
            log.warning("dicom.c_find_invalid calling_aet=%s reason=%s", calling_aet, error)
            self._audit("dicom.c-find", None, {**details, "status": "invalid"}, False)
            return FindOutcome(failed=True)
        with self._connect() as conn:
            org_id = self._organization_id(conn, organization)
            if org_id is None:
                log.info("dicom.c_find_refused calling_aet=%s (unmapped)", calling_aet)
                record(conn, AuditEvent(action="dicom.c-find", resource_type=query.level.lower(),
                                        details={**details, "status": "refused", "answers": 0}))
                return FindOutcome()
            statement, params = find_statement(query, org_id, self._max_answers + 1)
            with conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(statement, params).fetchall()
            incomplete = len(rows) > self._max_answers
            rows = rows[: self._max_answers]
            phi = any(not row["is_deidentified"] for row in rows)
            answers = [answer_dataset(answer_values(query.level, query.return_keys, row,
                                                    self._local_aet)) for row in rows]
            event = AuditEvent(action="dicom.c-find", organization_id=org_id,
                               resource_type=query.level.lower(), phi_accessed=phi,
                               details={**details, "status": "answered",
                                        "answers": len(answers), "incomplete": incomplete})
        # Committed when the connection went back: only now may the answers leave.
        if not self._audit_event(event) and phi:
            return FindOutcome(failed=True)
        return FindOutcome(answers, incomplete)

    # ------------------------------------------------------------------ C-MOVE

    def move(self, request: Mapping[str, Any]) -> MoveOutcome:
        """Sends the caller's organization's instances that the move names to its
        target modality, through Orthanc. Another organization's study, or nothing
        at all, moves nothing and succeeds: the peer learns nothing of what exists.

        ``request`` holds the plugin's keys: ``Level``, ``PatientID``,
        ``AccessionNumber``, ``StudyInstanceUID``, ``SeriesInstanceUID``,
        ``SOPInstanceUID``, ``OriginatorAET``, ``TargetAET``.

        Raises
        ------
        MoveRefused
            Unmapped caller, unknown target, or Orthanc failed to send.
        """
        calling_aet = str(request.get("OriginatorAET") or "")
        target_aet = str(request.get("TargetAET") or "")
        identifiers = MoveIdentifiers(str(request.get("Level") or ""), {
            k: str(request.get(k) or "") for k in ("PatientID", "AccessionNumber",
                                                   "StudyInstanceUID", "SeriesInstanceUID",
                                                   "SOPInstanceUID")})
        level = identifiers.effective_level() or ""
        details: dict[str, Any] = {"protocol": "dicom", "calling_aet": calling_aet[:16],
                                   "target_aet": target_aet[:16], "level": level}
        organization = self._policy.organization_for(calling_aet)
        with self._connect() as conn:
            org_id = self._organization_id(conn, organization)
            if org_id is None:
                record(conn, AuditEvent(action="dicom.c-move", resource_type=level.lower() or None,
                                        details={**details, "status": "refused"}))
                log.info("dicom.c_move_refused calling_aet=%s (unmapped)", calling_aet)
                raise MoveRefused(f"calling AE title {calling_aet!r} is not mapped to an "
                                  "organization")
            planned = move_statement(identifiers, org_id)
            rows = conn.execute(planned[0], planned[1]).fetchall() if planned else []
        instances = [row[0] for row in rows]
        phi = any(not row[1] for row in rows)
        modality = self._modality_named(target_aet)
        if modality is None:
            self._audit("dicom.c-move", org_id, {**details, "status": "unknown_target"}, False)
            raise MoveRefused(f"move destination {target_aet!r} is not a declared modality")
        event = AuditEvent(action="dicom.c-move", organization_id=org_id,
                           resource_type=level.lower() or None, phi_accessed=phi,
                           details={**details, "status": "moved", "instances": len(instances)})
        if not self._audit_event(event) and phi:
            raise MoveRefused("the move could not be recorded in the audit log")
        if instances:
            try:
                self._orthanc.post_json(f"/modalities/{quote(modality, safe='')}/store",
                                        {"Resources": instances, "Synchronous": True})
            except Exception as error:  # noqa: BLE001 - reported to the peer as a failure
                log.warning("dicom.c_move_store_failed target=%s instances=%d error=%s",
                            target_aet, len(instances), error)
                raise MoveRefused(f"storing to {target_aet!r} failed") from error
        log.info("dicom.c_move calling_aet=%s target=%s level=%s instances=%d",
                 calling_aet, target_aet, level, len(instances))
        return MoveOutcome(len(instances), modality)

    # ------------------------------------------------------------------ C-GET

    def start(self, retry_seconds: float = 2.0, attempts: int = 30) -> None:
        """Refuse C-GET on every modality Orthanc already knows, in a thread: called
        when Orthanc has started, never on an Orthanc callback thread."""
        def run() -> None:
            for _ in range(attempts):
                try:
                    lock_down_get(self._orthanc)
                    return
                except Exception as error:  # noqa: BLE001 - retried, then reported
                    log.warning("dicom.c_get_lockdown_retry error=%s", error)
                    time.sleep(retry_seconds)
            log.error("dicom.c_get_lockdown_failed: modalities may still allow C-GET")

        self._lockdown = threading.Thread(target=run, name="atrium-cget-lockdown", daemon=True)
        self._lockdown.start()

    # ------------------------------------------------------------------ helpers

    def _modality_named(self, aet: str) -> str | None:
        """The symbolic name of the declared modality whose AE title is ``aet``."""
        modalities = self._orthanc.get_json("/modalities?expand")
        for name, definition in sorted(dict(modalities).items()):
            declared = definition.get("AET") if isinstance(definition, Mapping) else (
                definition[0] if isinstance(definition, list) and definition else None)
            if declared is not None and str(declared).strip() == aet.strip():
                return str(name)
        return None

    @staticmethod
    def _organization_id(conn: Any, name: str | None) -> uuid.UUID | None:
        if name is None:
            return None
        row = conn.execute(ORGANIZATION_ID, (name,)).fetchone()
        return row[0] if row else None

    def _audit(self, action: str, org_id: uuid.UUID | None, details: dict[str, Any],
               phi: bool) -> bool:
        return self._audit_event(AuditEvent(action=action, organization_id=org_id,
                                            details=details, phi_accessed=phi))

    def _audit_event(self, event: AuditEvent) -> bool:
        try:
            with self._connect() as conn:
                record(conn, event)
            return True
        except Exception:  # noqa: BLE001 - the caller decides what is withheld
            log.exception("audit.unwritten action=%s", event.action)
            return False
