"""``/api/studies/{id}/annotations/sr``: a study's annotations as a DICOM SR (TID
1500 Measurement Report), for viewers and PACS that speak DICOM and not Atrium.

``GET`` answers the SR file; ``POST`` makes the same document and stores it in
Orthanc, where the mirror files it in the study like any instance. Every stored
export of a study goes to one series, "Atrium annotations", whose UID is derived
from the study's, so a PACS shows one series that grows rather than a new series
per save.

Only image annotations on the study's instances have a place in a measurement
report (a region on a referenced image); annotations of the study or a series as
a whole, and slide annotations in micrometres, are left out and counted in
``Atrium-Annotations-Skipped``. The reverse direction — SRs arriving in Orthanc —
is :mod:`atrium.annotations.importer`.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import TYPE_CHECKING, Any

import pydicom
from psycopg import sql
from pydicom.uid import generate_uid

from atrium.annotations.geometry import IMAGE_SHAPES
from atrium.annotations.sr import ExportedAnnotation, build_measurement_report
from atrium.api.http import AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.patients import READERS
from atrium.api.schema import integer, obj, string
from atrium.api.targets import Target, find_target, row_scope
from atrium.auth.principal import Permission
from atrium.errors import ServiceUnavailable

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["routes", "series_uid_for"]

DICOM = "application/dicom"
SERIES_NUMBER = 9901

_ANNOTATIONS = """
SELECT a.root_id, a.label, a.coordinates, i.sop_instance_uid, i.orthanc_id
FROM annotations a
LEFT JOIN patients p ON p.id = a.patient_id
JOIN instances i ON i.id = a.target_id AND a.target_type = 'instance'
JOIN series se ON se.id = i.series_id
WHERE se.study_id = %s AND a.is_latest AND a.deleted_at IS NULL AND i.deleted_at IS NULL
  AND {scope}
ORDER BY a.created_at, a.root_id
"""
_OTHERS = """
SELECT count(*) FROM annotations a LEFT JOIN patients p ON p.id = a.patient_id
WHERE a.is_latest AND a.deleted_at IS NULL AND {scope} AND (
      (a.target_type = 'study' AND a.target_id = %s)
   OR (a.target_type = 'series' AND a.target_id IN (SELECT id FROM series WHERE study_id = %s)))
"""
_ANY_INSTANCE = """
SELECT i.orthanc_id FROM instances i JOIN series se ON se.id = i.series_id
WHERE se.study_id = %s AND i.deleted_at IS NULL AND se.deleted_at IS NULL
  AND i.orthanc_id IS NOT NULL AND se.modality IS DISTINCT FROM 'SR'
ORDER BY se.series_number NULLS LAST, i.instance_number NULLS LAST LIMIT 1
"""

STORED = obj({
    "sop_instance_uid": string(), "series_instance_uid": string(), "orthanc_id": string(),
    "annotations": integer(minimum=0), "skipped": integer(minimum=0),
}, required=["sop_instance_uid", "series_instance_uid", "orthanc_id", "annotations",
             "skipped"])


def series_uid_for(study_instance_uid: str) -> str:
    """The one "Atrium annotations" series of a study: a UUID-derived UID (2.25)."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID,
                                    f"atrium-annotations:{study_instance_uid}").int)


def _exportable(coordinates: dict[str, Any] | None) -> bool:
    return (coordinates is not None and coordinates.get("type") in IMAGE_SHAPES
            and coordinates.get("units", "pixel") == "pixel")


def routes(app: Atrium) -> list[Route]:
    def header(orthanc_id: str) -> pydicom.Dataset:
        try:
            blob = app.orthanc_http.get_bytes(f"/instances/{orthanc_id}/file")
        except Exception as error:  # noqa: BLE001 — Orthanc's failures vary
            raise ServiceUnavailable("An image of the study could not be read from "
                                     "Orthanc; try again.") from error
        return pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True)

    def report(request: Request) -> tuple[bytes, Target, int, int, pydicom.Dataset]:
        study_id = request.params["id"]
        scope = row_scope(request.caller, "a")
        with app.pool.connection() as conn:
            target = find_target(conn, request.caller, "study", study_id)
            rows = conn.execute(sql.SQL(_ANNOTATIONS).format(scope=scope.sql()),
                                [study_id, *scope.params]).fetchall()
            others = conn.execute(sql.SQL(_OTHERS).format(scope=scope.sql()),
                                  [*scope.params, study_id, study_id]).fetchone()
            chosen = [row for row in rows if _exportable(row[2])]
            # The referenced images, or — for a report with no measurement — any
            # image of the study, whose header gives the patient and study modules.
            images = {row[3]: row[4] for row in chosen}
            if not images:
                fallback = conn.execute(_ANY_INSTANCE, (study_id,)).fetchone()
                if fallback is None:
                    raise ServiceUnavailable("The study has no image in Orthanc yet to "
                                             "describe.")
        skipped = len(rows) - len(chosen) + (others[0] if others else 0)
        evidence = {uid: header(orthanc_id) for uid, orthanc_id in images.items()}
        if not evidence:
            first = header(fallback[0])
            evidence[str(first.SOPInstanceUID)] = first
        exported = [ExportedAnnotation(
            annotation_id=row[0], label=row[1] or "annotation", coordinates=row[2],
            sop_instance_uid=row[3], sop_class_uid=str(evidence[row[3]].SOPClassUID))
            for row in chosen]
        any_image = next(iter(evidence.values()))
        dataset = build_measurement_report(
            exported, list(evidence.values()),
            series_instance_uid=series_uid_for(str(any_image.StudyInstanceUID)),
            series_number=SERIES_NUMBER, sop_instance_uid=generate_uid(),
            manufacturer="Atrium")
        buffer = io.BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue(), target, len(chosen), skipped, dataset

    def export(request: Request) -> Response:
        blob, target, count, skipped, dataset = report(request)
        return Response(200, blob, DICOM, {
            "Content-Disposition": f'attachment; filename="{dataset.SOPInstanceUID}.dcm"',
            "Atrium-Annotations": str(count), "Atrium-Annotations-Skipped": str(skipped)},
            AuditNote("study", target.id, phi=target.phi))

    def store(request: Request) -> Response:
        blob, target, count, skipped, dataset = report(request)
        answer = json.loads(app.orthanc_http.post("/instances", blob))
        stored = {"sop_instance_uid": str(dataset.SOPInstanceUID),
                  "series_instance_uid": str(dataset.SeriesInstanceUID),
                  "orthanc_id": answer["ID"], "annotations": count, "skipped": skipped}
        return json_response(stored, status=201,
                             audit=AuditNote("study", target.id, phi=target.phi))

    path = "/api/studies/{id:uuid}/annotations/sr"
    tags = ("annotations",)
    return [
        Route("GET", path, export, tags=tags, auth=READERS,
              summary="The study's annotations as a DICOM SR (TID 1500 Measurement Report)",
              responses={200: Reply("The SR file", media_type=DICOM)}),
        Route("POST", path, store, tags=tags, auth=(Permission.ANNOTATE,),
              summary="Store the study's annotations in Orthanc as a DICOM SR",
              responses={201: Reply("Where the SR was stored", STORED)}),
    ]
