"""``/api/slides/{id}/annotations/dicom``: a slide's annotations as a DICOM
Microscopy Bulk Simple Annotations object, for viewers and archives that speak
DICOM pathology (Slim, QuPath with DICOM, a PACS) and not Atrium.

``GET`` answers the ANN file; ``POST`` makes the same object and stores it in
Orthanc, where the mirror files it in the slide's study like any instance. Every
stored export of a slide goes to one series, "Atrium slide annotations", whose UID
is derived from the slide's series.

Only slides that are DICOM series have a source image for the object to refer
to; an uploaded file (SVS, TIFF) is answered 409. Annotations without an image
shape, and micrometre shapes on a slide without a pixel spacing, are left out and
counted in ``Atrium-Annotations-Skipped``. The reverse direction — ANN objects
arriving in Orthanc — is :mod:`atrium.slides.ann_importer`.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import TYPE_CHECKING, Any

from psycopg import sql
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from atrium.api.annotation_reports import DICOM, STORED
from atrium.api.http import AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.patients import READERS
from atrium.api.targets import Target, find_target, row_scope
from atrium.auth.principal import Permission
from atrium.errors import Conflict, ServiceUnavailable
from atrium.slides.bulk_annotations import ExportedAnnotation, build_bulk_annotations
from atrium.slides.wsi_registry import dataset_from_tags

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["routes", "series_uid_for"]

SERIES_NUMBER = 9902

_SLIDE = """
SELECT sl.file_format, sl.mpp_x, sl.mpp_y, sl.metadata FROM slides sl WHERE sl.id = %s
"""
_ANNOTATIONS = """
SELECT a.root_id, a.label, a.coordinates FROM annotations a
LEFT JOIN patients p ON p.id = a.patient_id
WHERE a.target_type = 'slide' AND a.target_id = %s AND a.is_latest AND a.deleted_at IS NULL
  AND {scope}
ORDER BY a.created_at, a.root_id
"""
# Attributes highdicom copies from the source image, which a header read through
# Orthanc may lack when the file left out a type 2 value.
_TYPE_2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
           "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName", "FrameOfReferenceUID")


def series_uid_for(series_instance_uid: str) -> str:
    """The one "Atrium slide annotations" series of a slide: a UUID-derived UID (2.25)."""
    return "2.25." + str(uuid.uuid5(uuid.NAMESPACE_OID,
                                    f"atrium-slide-annotations:{series_instance_uid}").int)


def routes(app: Atrium) -> list[Route]:
    def source_image(orthanc_id: str) -> Dataset:
        try:
            tags = app.orthanc_http.get_json(f"/instances/{orthanc_id}/tags?simplify")
        except Exception as error:  # noqa: BLE001 — Orthanc's failures vary
            raise ServiceUnavailable("The slide's image could not be read from Orthanc; "
                                     "try again.") from error
        header = dataset_from_tags(tags)
        for keyword in _TYPE_2:
            if keyword not in header:
                setattr(header, keyword, "")
        return header

    def report(request: Request) -> tuple[bytes, Target, int, int, Dataset]:
        slide_id = request.params["id"]
        scope = row_scope(request.caller, "a", target_checked=True)
        with app.pool.connection() as conn:
            target = find_target(conn, request.caller, "slide", slide_id)
            file_format, mpp_x, mpp_y, metadata = conn.execute(_SLIDE, (slide_id,)).fetchone()
            rows = conn.execute(sql.SQL(_ANNOTATIONS).format(scope=scope.sql()),
                                [slide_id, *scope.params]).fetchall()
        levels: list[dict[str, Any]] = (metadata.get("dicom") or {}).get("levels") or []
        if str(file_format).upper() != "DICOM" or not levels:
            raise Conflict("Only a slide stored in Orthanc as a DICOM series can have its "
                           "annotations exported as DICOM; this one is a "
                           f"{file_format or 'non-DICOM'} file.")
        annotations = [ExportedAnnotation(row[0], row[1], row[2]) for row in rows
                       if row[2] is not None]
        document, unplaced = build_bulk_annotations(
            annotations, source_image(levels[0]["orthanc_id"]), mpp=(mpp_x, mpp_y),
            series_instance_uid=series_uid_for(metadata["series_instance_uid"]),
            series_number=SERIES_NUMBER, sop_instance_uid=generate_uid())
        buffer = io.BytesIO()
        document.save_as(buffer, enforce_file_format=True)
        return (buffer.getvalue(), target, len(annotations) - unplaced,
                unplaced + len(rows) - len(annotations), document)

    def export(request: Request) -> Response:
        blob, target, count, skipped, document = report(request)
        return Response(200, blob, DICOM, {
            "Content-Disposition": f'attachment; filename="{document.SOPInstanceUID}.dcm"',
            "Atrium-Annotations": str(count), "Atrium-Annotations-Skipped": str(skipped)},
            AuditNote("slide", target.id, phi=target.phi))

    def store(request: Request) -> Response:
        blob, target, count, skipped, document = report(request)
        answer = json.loads(app.orthanc_http.post("/instances", blob))
        stored = {"sop_instance_uid": str(document.SOPInstanceUID),
                  "series_instance_uid": str(document.SeriesInstanceUID),
                  "orthanc_id": answer["ID"], "annotations": count, "skipped": skipped}
        return json_response(stored, status=201,
                             audit=AuditNote("slide", target.id, phi=target.phi))

    path = "/api/slides/{id:uuid}/annotations/dicom"
    tags = ("annotations", "slides")
    conflict = {409: Reply("The slide is not a DICOM series")}
    return [
        Route("GET", path, export, tags=tags, auth=READERS,
              summary="The slide's annotations as DICOM Microscopy Bulk Simple Annotations",
              responses={200: Reply("The ANN file", media_type=DICOM), **conflict}),
        Route("POST", path, store, tags=tags, auth=(Permission.ANNOTATE,),
              summary="Store the slide's annotations in Orthanc as DICOM Microscopy Bulk "
                      "Simple Annotations",
              responses={201: Reply("Where the object was stored", STORED), **conflict}),
    ]
