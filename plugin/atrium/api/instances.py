"""``POST /api/instances``: a DICOM file uploaded through Atrium's API lands in the
uploader's organization.

Orthanc's own ``POST /instances`` cannot say who uploaded; this route reads the
file's StudyInstanceUID (header only), claims the study for the caller's
organization (:func:`~atrium.assignments.claim_study`), then stores the file in
Orthanc, from where the mirror files it as any other instance.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from atrium.api.http import AuditNote, MiB, Reply, Request, Response, Route, json_response
from atrium.api.schema import obj, string
from atrium.assignments import claim_study
from atrium.auth.principal import Permission
from atrium.dicom.admission import admit_file
from atrium.errors import ApiError, BadRequest, ServiceUnavailable
from atrium.orthanc_api import OrthancError

if TYPE_CHECKING:
    from atrium.app import Atrium

MAX_UPLOAD_BYTES = 2048 * MiB

STORED = obj({"orthanc_id": string(), "study_instance_uid": string(),
              "sop_instance_uid": string(), "status": string()},
             required=["orthanc_id", "study_instance_uid", "sop_instance_uid", "status"])


def routes(app: Atrium) -> list[Route]:
    def upload(request: Request) -> Response:
        summary = admit_file(request.body, app.dicom_limits)
        study_uid, sop_uid = summary.study_instance_uid, summary.sop_instance_uid
        with app.pool.connection() as conn, conn.transaction():
            claim_study(conn, study_uid, request.caller.organization_id)
        try:
            stored = app.orthanc_http.post("/instances", request.body)
        except OrthancError as exc:
            if exc.status in (400, 404, 415):
                raise BadRequest(f"Orthanc refused the file: {str(exc)[:300]}") from None
            if exc.status == 503:
                # Orthanc's index collided with another node's write (several nodes
                # share it) or is unreachable: nothing was stored, a retry will do.
                raise ServiceUnavailable("Orthanc could not store the file just now; "
                                         "send it again.") from None
            raise ApiError("Orthanc could not store the file.") from exc
        answer = json.loads(stored) if stored else {}
        status = str(answer.get("Status", ""))
        return json_response({"orthanc_id": str(answer.get("ID", "")),
                              "study_instance_uid": study_uid, "sop_instance_uid": sop_uid,
                              "status": status},
                             status=200 if status == "AlreadyStored" else 201,
                             audit=AuditNote("instance"))

    return [Route("POST", "/api/instances", upload, auth=(Permission.UPLOAD,),
                  tags=("instances",), media_types=("application/dicom",),
                  max_body_bytes=MAX_UPLOAD_BYTES,
                  summary="Store a DICOM file in the caller's organization",
                  responses={201: Reply("Stored", STORED),
                             200: Reply("Already stored", STORED)})]
