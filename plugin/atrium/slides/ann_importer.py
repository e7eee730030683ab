"""DICOM Microscopy Bulk Simple Annotations arriving in Orthanc become slide
annotations.

Whatever path an ANN object takes into Orthanc — a viewer saving over STOW-RS, an
AI pipeline's C-STORE, ``POST /api/slides/{id}/annotations/dicom`` — the mirror
files it like any instance (modality ANN). This worker then looks, off Orthanc's
store path, at ANN instances it has not seen: each annotation of a 2D object
becomes a ``wsi`` annotation, in level-0 pixels, on the slide of the series the
object references, in the object's own organization.

Idempotent like the SR importer: ``ann_imports`` gets the object's SOP Instance
UID in the transaction that creates its annotations, and an annotation that
Atrium exported (its id is in the group's private block) is skipped while that
annotation is live. An object that arrives before its slide is registered (the
same upload as the WSI series) waits for it, for :data:`WAIT_FOR_SLIDE_SECONDS`.
"""

from __future__ import annotations

import io
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from atrium.annotations.store import create_annotation
from atrium.api.annotations import COORDINATES
from atrium.api.schema import compile_schema, field_errors
from atrium.api.targets import Target
from atrium.auth.audit import AuditEvent, record
from atrium.errors import ApiError
from atrium.slides.bulk_annotations import (
    ImportedAnnotation,
    ImportedObject,
    read_bulk_annotations,
)
from atrium.slides.dicom_wsi import WsiSeries
from atrium.workers import PollingWorker

log = logging.getLogger(__name__)

__all__ = ["MAX_ANNOTATIONS", "AnnCandidate", "AnnImporter", "import_object"]

_CANDIDATES = """
SELECT i.id, i.orthanc_id, i.sop_instance_uid, s.organization_id,
       extract(epoch FROM now() - i.created_at)
FROM series se
JOIN instances i ON i.series_id = se.id
JOIN studies s ON s.id = se.study_id
WHERE se.modality = 'ANN' AND se.deleted_at IS NULL AND i.deleted_at IS NULL
  AND i.orthanc_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM ann_imports r WHERE r.sop_instance_uid = i.sop_instance_uid)
ORDER BY i.created_at
LIMIT %s
"""

_SLIDE = """
SELECT sl.id, sl.organization_id, sl.patient_id, coalesce(p.is_deidentified, false), sl.metadata
FROM slides sl LEFT JOIN patients p ON p.id = sl.patient_id
WHERE sl.organization_id = %s AND sl.metadata->>'series_instance_uid' = ANY(%s)
  AND sl.deleted_at IS NULL AND (sl.patient_id IS NULL OR p.deleted_at IS NULL)
LIMIT 1
"""

_LIVE_LINEAGE = """
SELECT 1 FROM annotations
WHERE root_id = %s AND organization_id = %s AND is_latest AND deleted_at IS NULL
"""

MAX_ATTEMPTS = 3
WAIT_FOR_SLIDE_SECONDS = 120.0
"""How long an object may wait for the slide it references to be registered."""
MAX_ANNOTATIONS = 10_000
"""Annotations imported from one object; the rest are counted as skipped. A
million cell detections belong in the object itself, not one row each."""

_SHAPE = compile_schema(COORDINATES, what="imported ANN coordinates")


@dataclass(frozen=True)
class AnnCandidate:
    instance_id: uuid.UUID
    orthanc_id: str
    sop_instance_uid: str
    organization_id: uuid.UUID
    age_seconds: float = 0.0


def _record(conn: Any, candidate: AnnCandidate, outcome: str, slide: uuid.UUID | None,
            created: int, detail: str | None) -> bool:
    """Claim the object; False when another importer recorded it first."""
    row = conn.execute(
        "INSERT INTO ann_imports (sop_instance_uid, instance_id, slide_id, outcome, "
        "annotations_created, detail) VALUES (%s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING 1",
        (candidate.sop_instance_uid, candidate.instance_id, slide, outcome, created,
         detail[:10_000] if detail else None)).fetchone()
    return row is not None


def level_scales(metadata: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """SOP Instance UID of each level of a DICOM slide → its (x, y) downsample."""
    levels = WsiSeries.from_metadata(metadata).levels
    base = levels[0]
    return {lv.sop_instance_uid: (base.width / lv.width, base.height / lv.height)
            for lv in levels}


def _import_one(conn: Any, target: Target, candidate: AnnCandidate,
                annotation: ImportedAnnotation) -> tuple[uuid.UUID | None, str | None]:
    if annotation.annotation_id is not None and conn.execute(
            _LIVE_LINEAGE, (annotation.annotation_id, target.organization_id)).fetchone():
        return None, None  # exported from a live annotation: already here
    wrong = field_errors(_SHAPE, annotation.coordinates, "body")
    if wrong:
        return None, f"shape refused: {wrong[0].field or 'coordinates'} {wrong[0].message}"
    properties = {"source": "dicom-ann", "ann_sop_instance_uid": candidate.sop_instance_uid,
                  "annotation_group_uid": annotation.group_uid}
    label = annotation.label[:255] if annotation.label else None
    try:
        with conn.transaction():  # a savepoint: one bad shape does not undo the others
            return create_annotation(conn, target, annotation_type="wsi", label=label,
                                     coordinates=annotation.coordinates,
                                     properties=properties, user_id=None), None
    except ApiError as refused:
        return None, f"shape refused: {refused.detail}"


def import_object(conn: Any, candidate: AnnCandidate, target: Target,
                  found: ImportedObject) -> int:
    """The slide annotations of ``found``, its ``ann_imports`` row and one audit row,
    in one transaction; the number created (0 when imported before)."""
    with conn.transaction():
        if not _record(conn, candidate, "imported", target.id, 0, None):
            return 0
        created: list[uuid.UUID] = []
        skipped = list(found.skipped)
        for annotation in found.annotations[:MAX_ANNOTATIONS]:
            annotation_id, why = _import_one(conn, target, candidate, annotation)
            if annotation_id is not None:
                created.append(annotation_id)
            elif why:
                skipped.append(why)
        if len(found.annotations) > MAX_ANNOTATIONS:
            skipped.append(f"{len(found.annotations) - MAX_ANNOTATIONS} annotations past "
                           f"the first {MAX_ANNOTATIONS}")
        conn.execute("UPDATE ann_imports SET annotations_created = %s, detail = %s "
                     "WHERE sop_instance_uid = %s",
                     (len(created), "; ".join(skipped)[:10_000] or None,
                      candidate.sop_instance_uid))
        record(conn, AuditEvent(
            action="annotation.import_ann", organization_id=target.organization_id,
            resource_type="slide", resource_id=target.id,
            details={"annotations_created": len(created), "skipped": len(skipped),
                     "sop_instance_uid": candidate.sop_instance_uid},
            phi_accessed=target.phi and bool(created)))
    if skipped:
        log.info("ann.import sop=%s created=%d skipped=%d first=%s", candidate.sop_instance_uid,
                 len(created), len(skipped), skipped[0])
    return len(created)


class AnnImporter(PollingWorker):
    """Polls the mirror for ANN instances not yet looked at; a daemon thread."""

    thread_name = "atrium-ann-import"
    log_name = "ann.import"

    def __init__(self, connect: Callable[[], Any], read_file: Callable[[str], bytes], *,
                 ready: Callable[[], bool] = lambda: True, poll_seconds: float = 1.0,
                 batch: int = 20) -> None:
        super().__init__(ready=ready, poll_seconds=poll_seconds, batch=batch)
        self._connect = connect
        self._read_file = read_file
        self._failures: dict[str, int] = {}

    def busy(self, looked_at: int) -> bool:
        # Objects waiting for their slide stay candidates: poll, never spin.
        return False

    def step(self) -> int:
        """Look at up to one batch of new ANN objects; how many were looked at."""
        with self._connect() as conn:
            rows = conn.execute(_CANDIDATES, (self._batch,)).fetchall()
        for row in rows:
            instance_id, orthanc_id, sop_uid, organization_id, age = row
            self._look_at(AnnCandidate(instance_id, orthanc_id, sop_uid, organization_id,
                                       float(age)))
        return len(rows)

    def _finish(self, candidate: AnnCandidate, outcome: str, detail: str) -> None:
        with self._connect() as conn, conn.transaction():
            _record(conn, candidate, outcome, None, 0, detail)

    def _look_at(self, candidate: AnnCandidate) -> None:
        try:
            blob = self._read_file(candidate.orthanc_id)
        except Exception as error:  # noqa: BLE001 — Orthanc's failures vary; count them
            attempts = self._failures.get(candidate.sop_instance_uid, 0) + 1
            self._failures[candidate.sop_instance_uid] = attempts
            if attempts >= MAX_ATTEMPTS:
                self._failures.pop(candidate.sop_instance_uid)
                self._finish(candidate, "failed", f"file unreadable: {error}")
            return
        self._failures.pop(candidate.sop_instance_uid, None)
        try:
            ds = pydicom.dcmread(io.BytesIO(blob))
        except (InvalidDicomError, ValueError, EOFError) as error:
            self._finish(candidate, "failed", f"not a readable DICOM file: {error}")
            return
        if str(ds.get("SOPClassUID", "")) != "1.2.840.10008.5.1.4.1.1.91.1":
            self._finish(candidate, "ignored", "not a Microscopy Bulk Simple Annotations object")
            return
        series = [str(item.get("SeriesInstanceUID", ""))
                  for item in ds.get("ReferencedSeriesSequence") or []]
        with self._connect() as conn:
            slide = conn.execute(_SLIDE, (candidate.organization_id, series)).fetchone()
        if slide is None:
            if candidate.age_seconds < WAIT_FOR_SLIDE_SECONDS:
                return  # its WSI series may still be on its way to becoming a slide
            log.warning("ann.failed sop=%s reason=no slide of the organization for series %s",
                        candidate.sop_instance_uid, ",".join(series) or "(none)")
            self._finish(candidate, "failed", "no slide of the object's organization for "
                         f"the referenced series {', '.join(series) or '(none)'}")
            return
        slide_id, organization_id, patient_id, deidentified, metadata = slide
        target = Target("slide", slide_id, organization_id, patient_id, bool(deidentified))
        try:
            found = read_bulk_annotations(ds, level_scales(metadata))
        except (ValueError, AttributeError, KeyError, TypeError) as error:
            self._finish(candidate, "failed", f"annotations unreadable: {error}")
            return
        with self._connect() as conn:
            created = import_object(conn, candidate, target, found)
        log.info("ann.imported sop=%s slide=%s annotations=%d", candidate.sop_instance_uid,
                 slide_id, created)
