"""DICOMweb as each caller may see it: Atrium's gateway in front of the plugin.

The DICOMweb plugin serves every study in Orthanc to anyone who reaches it, and
Orthanc's request filter cannot change its answers. So the plugin lives under a
private root that only Atrium's internal credential reaches, and the public root
(``/dicom-web/``) is this gateway, which for every request:

1. authenticates the bearer token (401 problem without a valid one);
2. scopes it: QIDO-RS lists only the caller's organization's studies, series and
   instances (and only de-identified patients' for roles without PHI access);
   WADO-RS and searches inside a study need that study to be in scope (else 404,
   as if absent); STOW-RS files new studies under the caller's organization and refuses
   instances of another organization's study;
3. forwards to the plugin over loopback, with the caller's ``Accept`` and
   ``Content-Type``, and rewrites the private root into the public one in JSON;
4. writes one audit row before the answer leaves (PHI when an identified
   patient's data is in it).

A WADO-RS retrieval of a study, series or instance is relayed part by part
(:class:`MultipartAnswer`): the row is committed once the plugin's status is in
and before the first part goes out, and the gateway then holds one instance at a
time. Every other answer is read whole, then relayed with its status, content
type and bytes as the plugin sent them.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from atrium.api.http import Request, Response, problem_response
from atrium.assignments import claim_study
from atrium.auth.guard import AuthGuard, Caller
from atrium.auth.principal import Permission
from atrium.auth.request_audit import RequestObserver, audit_event, recorded_or_withheld
from atrium.db import unreachable
from atrium.dicom.scan import DEFAULT_LIMITS, DicomLimits, UnsafeDicom, scan
from atrium.dicomweb.forward import Forwarded, PluginForwarder, Upstream
from atrium.dicomweb.multipart_stream import (
    MalformedMultipart,
    MultipartAnswer,
    iter_parts,
    multipart_type,
)
from atrium.dicomweb.qido import LEVELS, Level, page_sql, parse_query
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
_UID = re.compile(r"^[0-9.]{1,64}$")

_STUDY_IN_SCOPE = """
SELECT p.is_deidentified FROM studies s JOIN patients p ON p.id = s.patient_id
WHERE s.study_instance_uid = %(uid)s AND s.organization_id = %(org)s
  AND s.deleted_at IS NULL AND p.deleted_at IS NULL AND (%(phi)s OR p.is_deidentified)
"""
_SEARCHES = {level.path.strip("/"): level for level in LEVELS}
# What recorded_or_withheld hands back when a streamed answer may go out.
_MAY_GO_OUT = Response(200, b"")


@dataclass(frozen=True)
class _Answer:
    response: Response | MultipartAnswer
    phi: bool = False
    study_uid: str | None = None


def _is_retrieval(parts: list[str]) -> bool:
    """Whether ``parts`` name a study, series or instance itself (WADO-RS retrieve
    of whole instances): ``studies/{uid}[/series/{uid}[/instances/{uid}]]``.

    Only these are streamed. Their parts carry no header of their own, which
    orthanc-python 4.0's ``SendMultipartItem`` could not relay; frames and bulk data
    carry ``Content-Location`` and are one instance's worth at most."""
    levels = ["series", "instances"]
    return len(parts) in (2, 4, 6) and parts[2::2] == levels[:len(parts) // 2 - 1] \
        and all(parts[1::2])


def _streamed(upstream: Upstream) -> MultipartAnswer:
    """The parts of a 200 ``multipart/...`` answer, relayed as they arrive.

    A part or a connection that breaks mid-answer raises from the iterator: the
    status line is gone by then, so the client sees an answer without its closing
    delimiter, never a shorter answer that looks complete."""
    found = multipart_type(upstream.content_type)
    assert found is not None
    subtype, kind, boundary = found

    def bodies() -> Iterator[memoryview]:
        count = 0
        try:
            for part in iter_parts(upstream.chunks(), boundary):
                yield part.body
                count += 1
        except (MalformedMultipart, ServiceUnavailable) as broken:
            log.warning("dicomweb.stream_broken parts_sent=%d reason=%s", count, broken)
            raise
        log.info("dicomweb.streamed parts=%d", count)

    return MultipartAnswer(subtype, kind or "application/octet-stream", bodies(),
                           upstream.close)


def _uid_of(answer_item: Mapping[str, Any], tag: str) -> str | None:
    values = (answer_item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


@dataclass(frozen=True)
class _Part:
    headers: bytes  # the part's header block, as sent
    payload: bytes


def _multipart_parts(body: bytes, content_type: str) -> tuple[bytes, list[_Part]]:
    """The boundary and the parts of a ``multipart/related`` body."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.lower().startswith("multipart/related") or not match:
        raise UnsupportedMediaType("STOW-RS takes multipart/related; type=\"application/dicom\" "
                                   "with a boundary.")
    boundary = match.group(1).encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        headers, _, payload = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        parts.append(_Part(headers, payload.removesuffix(b"\r\n")))
    return boundary, parts


def _multipart_body(boundary: bytes, parts: list[_Part]) -> bytes:
    out = [b"--" + boundary + b"\r\n" + p.headers + b"\r\n\r\n" + p.payload + b"\r\n"
           for p in parts]
    return b"".join(out) + b"--" + boundary + b"--\r\n"


# PS3.18 STOW-RS: FailedSOPSequence items, FailureReason 0xC000 "cannot understand".
_FAILED_SOP_SEQUENCE, _FAILURE_REASON = "00081198", "00081197"
_REFERENCED_SOP_CLASS, _REFERENCED_SOP_INSTANCE = "00081150", "00081155"
_CANNOT_UNDERSTAND = 0xC000


def _failure_item(refused: UnsafeDicom) -> dict[str, Any]:
    summary = refused.summary
    item: dict[str, Any] = {_FAILURE_REASON: {"vr": "US", "Value": [_CANNOT_UNDERSTAND]}}
    if summary is not None and summary.sop_class_uid:
        item[_REFERENCED_SOP_CLASS] = {"vr": "UI", "Value": [summary.sop_class_uid[:64]]}
    if summary is not None and summary.sop_instance_uid:
        item[_REFERENCED_SOP_INSTANCE] = {"vr": "UI", "Value": [summary.sop_instance_uid[:64]]}
    return item


_RESOURCE_OF = {"studies": "{study}", "series": "{series}", "instances": "{instance}",
                "frames": "{frames}"}
_KNOWN_TAILS = frozenset({*_RESOURCE_OF, "metadata", "rendered", "thumbnail", "bulkdata"})


def route_template(public_root: str, path: str) -> str:
    """``/dicom-web/studies/1.2.3/series/4.5`` → ``/dicom-web/studies/{study}/series/{series}``:
    a DICOMweb request's route for metrics, with no UID in it (nor any other free text)."""
    template, after = [public_root.rstrip("/")], None
    for part in (p for p in path.split("/") if p):
        if after is not None:
            template.append(after)
            after = None
        elif part in _KNOWN_TAILS:
            template.append(part)
            after = _RESOURCE_OF.get(part)
        else:
            template.append("{other}")
    return "/".join(template)


class DicomWebGateway:
    def __init__(self, guard: AuthGuard, connect: Callable[[], Any], forward: PluginForwarder,
                 *, public_root: str, plugin_root: str,
                 limits: DicomLimits = DEFAULT_LIMITS,
                 observe: RequestObserver | None = None) -> None:
        self._observe = observe
        self._guard = guard
        self._limits = limits
        self._connect = connect
        self._forward = forward
        self._public_root = public_root.encode()
        self._plugin_root = plugin_root.encode()

    # -- the edge ------------------------------------------------------------------
    def handle(self, request: Request) -> Response | MultipartAnswer:
        """``request.path`` is below the public root, e.g. ``/studies``. A
        :class:`MultipartAnswer` is returned only once its audit row is committed;
        its caller sends its parts and closes it."""
        began = time.perf_counter()
        sent, withheld = self._answer(request)
        if self._observe is not None:
            status = sent.status if isinstance(sent, Response) else 200
            self._observe(request.method, route_template(self._public_root.decode(), request.path),
                          status, time.perf_counter() - began, withheld)
        return sent

    def _answer(self, request: Request) -> tuple[Response | MultipartAnswer, bool]:
        """The answer to send, and whether it replaces one withheld for want of its
        audit row."""
        caller: Caller | None = None
        try:
            caller = self._guard.caller(request.headers.get("authorization"))
            answer = self._serve(caller, request)
        except ApiError as error:
            answer = _Answer(problem_response(error))
        except Exception as error:
            if unreachable(error):
                log.warning("dicomweb.database_unreachable method=%s error=%s",
                            request.method, type(error).__name__)
                answer = _Answer(problem_response(ServiceUnavailable(
                    "The database cannot be reached right now; retry in a few seconds.")))
            else:
                log.exception("dicomweb.unhandled method=%s", request.method)
                answer = _Answer(problem_response(ApiError("The DICOMweb request failed.")))
        event = audit_event(
            action=f"{request.method} dicom-web", caller=caller,
            status=answer.response.status, client_ip=request.client_ip,
            headers=request.headers, resource_type="dicom-web", phi=answer.phi,
            path=request.path[:200], study_instance_uid=answer.study_uid)
        if not isinstance(answer.response, MultipartAnswer):
            sent = recorded_or_withheld(self._connect, event, answer.response)
            return sent, sent is not answer.response
        outcome = recorded_or_withheld(self._connect, event, _MAY_GO_OUT)
        if outcome is _MAY_GO_OUT:
            return answer.response, False
        answer.response.close()
        return outcome, True

    def _serve(self, caller: Caller, request: Request) -> _Answer:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET":
            if not (caller.can(Permission.READ_PHI) or caller.can(Permission.READ_DEIDENTIFIED)):
                raise Forbidden("Reading images needs a role that reads patient data.")
            if len(parts) == 1 and parts[0] in _SEARCHES:
                return self._search(caller, request, _SEARCHES[parts[0]])
            if len(parts) >= 2 and parts[0] == "studies":
                return self._within_study(caller, request, parts[1])
            raise NotFound("No such DICOMweb resource.")
        if request.method == "POST" and parts and parts[0] == "studies" and len(parts) <= 2:
            return self._store(caller, request, parts[1] if len(parts) == 2 else None)
        allowed = ["GET", "POST"] if parts and parts[0] == "studies" and len(parts) <= 2 \
            else ["GET"]
        raise MethodNotAllowed(f"{request.method} is not supported here", allowed=allowed)

    # -- reads ---------------------------------------------------------------------
    def _search(self, caller: Caller, request: Request, level: Level) -> _Answer:
        """A QIDO-RS search at ``level``: the caller's page from the mirror, then the
        plugin's answer for exactly those items, in the page's order."""
        query = parse_query(request.query, level)
        statement, params = page_sql(query, caller.organization_id, caller.can_read_phi)
        with self._connect() as conn:
            rows = conn.execute(statement, params).fetchall()
        page, more = rows[:query.limit], len(rows) > query.limit
        # PS3.18: a server that returns fewer matches than there are says so.
        headers = {"Warning": "299 atrium: There are additional results that can be "
                              "requested"} if more else {}
        order = {uid: n for n, (uid, _) in enumerate(page)}
        found: list[dict[str, Any]] = []
        uids = list(order)
        for start in range(0, len(uids), UID_LIST_CHUNK):
            chunk = uids[start:start + UID_LIST_CHUNK]
            forwarded = self._forward("GET", level.path, {
                **query.passthrough, level.uid_key: ",".join(chunk),
                "limit": str(len(chunk))}, request.headers)
            found.extend(self._json_list(forwarded))
        found.sort(key=lambda item: order.get(_uid_of(item, level.uid_tag) or "", len(order)))
        answered = {_uid_of(item, level.uid_tag) for item in found}
        phi = any(not deidentified for uid, deidentified in page if uid in answered)
        return _Answer(replace(self._json_answer(found), headers=headers), phi=phi)

    def _within_study(self, caller: Caller, request: Request, study_uid: str) -> _Answer:
        if not _UID.match(study_uid):
            raise NotFound("No such study.")
        with self._connect() as conn:
            row = conn.execute(_STUDY_IN_SCOPE, {"uid": study_uid, "org": caller.organization_id,
                                                 "phi": caller.can_read_phi}).fetchone()
        if row is None:
            raise NotFound(f"No study {study_uid} in your organization.")
        phi = not row[0]
        if _is_retrieval([p for p in request.path.split("/") if p]):
            upstream = self._forward.open("GET", request.path, dict(request.query),
                                          request.headers)
            if upstream.status == 200 and multipart_type(upstream.content_type):
                return _Answer(_streamed(upstream), phi=phi, study_uid=study_uid)
            forwarded = upstream.read()
        else:
            forwarded = self._forward("GET", request.path, dict(request.query),
                                      request.headers)
        return _Answer(self._relay(forwarded), phi=phi, study_uid=study_uid)

    # -- STOW-RS -------------------------------------------------------------------
    def _store(self, caller: Caller, request: Request, target_uid: str | None) -> _Answer:
        """STOW-RS: every part scanned before anything parses it. Refused parts
        become FailedSOPSequence items (0xC000) of the answer — 409 when none is
        left to store, 202 when some were stored — and never reach Orthanc."""
        if not caller.can(Permission.UPLOAD):
            raise Forbidden("Storing instances needs the upload permission (clinician, admin).")
        boundary, parts = _multipart_parts(request.body, request.headers.get("content-type", ""))
        if not parts:
            raise BadRequest("The STOW-RS body holds no part.")
        accepted: list[_Part] = []
        failures: list[dict[str, Any]] = []
        reasons: list[str] = []
        uids = {target_uid} if target_uid else set()
        for part in parts:
            try:
                summary = scan(part.payload, self._limits)
            except UnsafeDicom as refused:
                log.warning("dicomweb.stow_refused reason=%r", str(refused))
                failures.append(_failure_item(refused))
                reasons.append(str(refused))
                continue
            accepted.append(part)
            uids.add(summary.study_instance_uid)
        # PS3.18 lets a STOW answer explain itself in Warning headers; the failure
        # items only carry a code.
        warning = {"Warning": "299 atrium " + json.dumps(
            f"{len(reasons)} part(s) refused; the first: {reasons[0]}"[:1000])} if reasons else {}
        if not accepted:
            refusal = json.dumps({_FAILED_SOP_SEQUENCE: {"vr": "SQ", "Value": failures}})
            return _Answer(Response(409, refusal.encode(), DICOM_JSON, headers=warning))
        with self._connect() as conn, conn.transaction():
            for uid in sorted(uids):
                claim_study(conn, uid, caller.organization_id)
        body = request.body if not failures else _multipart_body(boundary, accepted)
        forwarded = self._forward("POST", request.path, dict(request.query), request.headers,
                                  body)
        if not failures:
            return _Answer(self._relay(forwarded))
        answer = self._with_failures(forwarded, failures)
        return _Answer(replace(answer, headers=warning))

    def _with_failures(self, forwarded: Forwarded, failures: list[dict[str, Any]]) -> Response:
        """The plugin's STOW answer for the parts it was given, with the refused parts
        added to its FailedSOPSequence; 202 (some stored, some not)."""
        try:
            answer = json.loads(forwarded.body) if forwarded.body.strip() else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        failed = answer.setdefault(_FAILED_SOP_SEQUENCE, {"vr": "SQ", "Value": []})
        failed.setdefault("Value", []).extend(failures)
        status = forwarded.status if forwarded.status >= 400 else 202
        return self._json_object(answer, status)

    def _json_object(self, answer: dict[str, Any], status: int) -> Response:
        body = json.dumps(answer, separators=(",", ":")).encode()
        return Response(status, body.replace(self._plugin_root, self._public_root), DICOM_JSON)

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
        # An error without a Content-Type (Orthanc's own 404s) goes out without one.
        default = "application/octet-stream" if forwarded.status < 300 else ""
        return Response(forwarded.status, body, forwarded.content_type or default)
