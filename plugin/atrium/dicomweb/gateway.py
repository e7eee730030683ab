"""DICOMweb as each caller may see it: Atrium's gateway in front of the plugin.

The DICOMweb plugin serves every study in Orthanc to anyone who reaches it, and
Orthanc's request filter cannot change its answers. So the plugin lives under a
private root that only Atrium's internal credential reaches, and the public root
(``/dicom-web/``) is this gateway, which for every request:

1. authenticates the bearer token (401 problem without a valid one);
2. scopes it: QIDO-RS lists only the caller's organization's studies (and only
   de-identified ones for roles without PHI access); WADO-RS and series/instance
   searches inside a study need that study to be in scope (else 404, as if
   absent); STOW-RS files new studies under the caller's organization and refuses
   instances of another organization's study;
3. forwards to the plugin over loopback, with the caller's ``Accept`` and
   ``Content-Type``, and rewrites the private root into the public one in JSON;
4. writes one audit row before the answer leaves (PHI when an identified
   patient's data is in it).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from atrium.api.http import Request, Response, problem_response
from atrium.assignments import claim_study
from atrium.auth.guard import AuthGuard, Caller
from atrium.auth.principal import Permission
from atrium.auth.request_audit import audit_event, recorded_or_withheld
from atrium.dicomweb.forward import Forwarded, PluginForwarder
from atrium.dicomweb.qido import (
    MAX_LIMIT,
    MAX_OFFSET,
    paging_value,
    parse_study_query,
    study_page_sql,
)
from atrium.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

__all__ = ["DicomWebGateway"]

DICOM_JSON = "application/dicom+json"
UID_LIST_CHUNK = 50  # UIDs per forwarded QIDO: keeps each URL well under 8 kB
_STUDY_UID_TAG = "0020000D"
_UID = re.compile(r"^[0-9.]{1,64}$")

_STUDY_IN_SCOPE = """
SELECT p.is_deidentified FROM studies s JOIN patients p ON p.id = s.patient_id
WHERE s.study_instance_uid = %(uid)s AND s.organization_id = %(org)s
  AND s.deleted_at IS NULL AND p.deleted_at IS NULL AND (%(phi)s OR p.is_deidentified)
"""
_STUDIES_IN_SCOPE = """
SELECT s.study_instance_uid, p.is_deidentified FROM studies s
JOIN patients p ON p.id = s.patient_id
WHERE s.study_instance_uid = ANY(%(uids)s) AND s.organization_id = %(org)s
  AND s.deleted_at IS NULL AND p.deleted_at IS NULL AND (%(phi)s OR p.is_deidentified)
"""
@dataclass(frozen=True)
class _Answer:
    response: Response
    phi: bool = False
    study_uid: str | None = None


def _study_uid_of(answer_item: Mapping[str, Any]) -> str | None:
    values = (answer_item.get(_STUDY_UID_TAG) or {}).get("Value") or []
    return str(values[0]) if values else None


def _multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    """The payloads of a ``multipart/related`` body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/related") or not match:
        raise UnsupportedMediaType("STOW-RS takes multipart/related; type=\"application/dicom\" "
                                   "with a boundary.")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _headers, _, payload = chunk.partition(b"\r\n\r\n")
        parts.append(payload.removesuffix(b"\r\n"))
    return parts


def _stow_study_uids(parts: list[bytes]) -> set[str]:
    """The StudyInstanceUIDs of the DICOM parts (unreadable parts are left for the
    plugin to refuse in its answer)."""
    uids = set()
    for payload in parts:
        try:
            dataset = pydicom.dcmread(io.BytesIO(payload), stop_before_pixels=True, force=True,
                                      specific_tags=["StudyInstanceUID"])
        except (InvalidDicomError, ValueError, TypeError, EOFError, OSError):
            continue
        uid = str(getattr(dataset, "StudyInstanceUID", "") or "").strip()
        if uid:
            uids.add(uid)
    return uids


class DicomWebGateway:
    def __init__(self, guard: AuthGuard, connect: Callable[[], Any], forward: PluginForwarder,
                 *, public_root: str, plugin_root: str) -> None:
        self._guard = guard
        self._connect = connect
        self._forward = forward
        self._public_root = public_root.encode()
        self._plugin_root = plugin_root.encode()

    # -- the edge ------------------------------------------------------------------
    def handle(self, request: Request) -> Response:
        """``request.path`` is below the public root, e.g. ``/studies``."""
        caller: Caller | None = None
        try:
            caller = self._guard.caller(request.headers.get("authorization"))
            answer = self._serve(caller, request)
        except ApiError as error:
            answer = _Answer(problem_response(error))
        except Exception:
            log.exception("dicomweb.unhandled method=%s", request.method)
            answer = _Answer(problem_response(ApiError("The DICOMweb request failed.")))
        event = audit_event(
            action=f"{request.method} dicom-web", caller=caller,
            status=answer.response.status, client_ip=request.client_ip,
            headers=request.headers, resource_type="dicom-web", phi=answer.phi,
            path=request.path[:200], study_instance_uid=answer.study_uid)
        return recorded_or_withheld(self._connect, event, answer.response)

    def _serve(self, caller: Caller, request: Request) -> _Answer:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            if not (caller.can(Permission.READ_PHI) or caller.can(Permission.READ_DEIDENTIFIED)):
                raise Forbidden("Reading images needs a role that reads patient data.")
            if parts == ["studies"]:
                return self._search_studies(caller, request)
            if parts in (["series"], ["instances"]):
                return self._search_across_studies(caller, request)
            if len(parts) >= 2 and parts[0] == "studies":
                return self._within_study(caller, request, parts[1])
            raise NotFound("No such DICOMweb resource.")
        if request.method == "POST" and parts and parts[0] == "studies" and len(parts) <= 2:
            return self._store(caller, request, parts[1] if len(parts) == 2 else None)
        allowed = ["GET", "POST"] if parts and parts[0] == "studies" and len(parts) <= 2 \
            else ["GET"]
        raise MethodNotAllowed(f"{request.method} is not supported here", allowed=allowed)

    # -- reads ---------------------------------------------------------------------
    def _search_studies(self, caller: Caller, request: Request) -> _Answer:
        query = parse_study_query(request.query)
        statement, params = study_page_sql(query, caller.organization_id, caller.can_read_phi)
        with self._connect() as conn:
            page = conn.execute(statement, params).fetchall()
        if not page:
            return _Answer(Response(200, b"[]", DICOM_JSON))
        order = {uid: n for n, (uid, _) in enumerate(page)}
        found: list[dict[str, Any]] = []
        uids = list(order)
        for start in range(0, len(uids), UID_LIST_CHUNK):
            chunk = uids[start:start + UID_LIST_CHUNK]
            forwarded = self._forward("GET", "/studies", {
                **query.passthrough, "StudyInstanceUID": ",".join(chunk),
                "limit": str(len(chunk))}, request.headers)
            found.extend(self._json_list(forwarded))
        found.sort(key=lambda item: order.get(_study_uid_of(item) or "", len(order)))
        phi = any(not deidentified for uid, deidentified in page
                  if uid in {_study_uid_of(item) for item in found})
        return _Answer(self._json_answer(found), phi=phi)

    def _search_across_studies(self, caller: Caller, request: Request) -> _Answer:
        """``/series`` and ``/instances`` searches: the plugin's matches, kept to the
        caller's studies, then paged."""
        query = {k: v for k, v in request.query.items() if k not in ("limit", "offset")}
        forwarded = self._forward("GET", request.path, query, request.headers)
        items = self._json_list(forwarded)
        uids = sorted({uid for item in items if (uid := _study_uid_of(item))})
        with self._connect() as conn:
            scope = dict(conn.execute(_STUDIES_IN_SCOPE, {
                "uids": uids, "org": caller.organization_id,
                "phi": caller.can_read_phi}).fetchall())
        kept = [item for item in items if _study_uid_of(item) in scope]
        offset = paging_value("offset", request.query.get("offset"), 0, MAX_OFFSET)
        limit = paging_value("limit", request.query.get("limit"), len(kept), MAX_LIMIT)
        kept = kept[offset:offset + limit]
        phi = any(not scope[uid] for item in kept if (uid := _study_uid_of(item)) in scope)
        return _Answer(self._json_answer(kept), phi=phi)

    def _within_study(self, caller: Caller, request: Request, study_uid: str) -> _Answer:
        if not _UID.match(study_uid):
            raise NotFound("No such study.")
        with self._connect() as conn:
            row = conn.execute(_STUDY_IN_SCOPE, {"uid": study_uid, "org": caller.organization_id,
                                                 "phi": caller.can_read_phi}).fetchone()
        if row is None:
            raise NotFound(f"No study {study_uid} in your organization.")
        forwarded = self._forward("GET", request.path, dict(request.query), request.headers)
        return _Answer(self._relay(forwarded), phi=not row[0], study_uid=study_uid)

    # -- STOW-RS -------------------------------------------------------------------
    def _store(self, caller: Caller, request: Request, target_uid: str | None) -> _Answer:
        if not caller.can(Permission.UPLOAD):
            raise Forbidden("Storing instances needs the upload permission (clinician, admin).")
        parts = _multipart_parts(request.body, request.headers.get("content-type", ""))
        if not parts:
            raise BadRequest("The STOW-RS body holds no part.")
        uids = _stow_study_uids(parts) | ({target_uid} if target_uid else set())
        with self._connect() as conn, conn.transaction():
            for uid in sorted(uids):
                claim_study(conn, uid, caller.organization_id)
        forwarded = self._forward("POST", request.path, dict(request.query), request.headers,
                                  request.body)
        return _Answer(self._relay(forwarded))

    # -- answers -------------------------------------------------------------------
    def _json_list(self, forwarded: Forwarded) -> list[dict[str, Any]]:
        if forwarded.status == 204 or not forwarded.body.strip():
            return []
        if forwarded.status >= 400:
            raise BadRequest(f"The DICOMweb search was refused ({forwarded.status}): "
                             f"{forwarded.body[:200].decode('utf-8', 'replace')}")
        try:
            items = json.loads(forwarded.body)
        except ValueError as exc:
            raise ServiceUnavailable("Orthanc's DICOMweb service answered badly.") from exc
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) \
            else []

    def _json_answer(self, items: list[dict[str, Any]]) -> Response:
        body = json.dumps(items, separators=(",", ":")).encode()
        return Response(200, body.replace(self._plugin_root, self._public_root), DICOM_JSON)

    def _relay(self, forwarded: Forwarded) -> Response:
        body = forwarded.body
        if "json" in forwarded.content_type or "xml" in forwarded.content_type:
            body = body.replace(self._plugin_root, self._public_root)
        return Response(forwarded.status, body,
                        forwarded.content_type or "application/octet-stream")
