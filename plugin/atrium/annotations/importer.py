"""DICOM SRs arriving in Orthanc become annotations.

Whatever path an SR takes into Orthanc — OHIF's "save measurements" over STOW-RS,
a PACS sending C-STORE, ``POST /api/studies/{id}/annotations/sr`` — the mirror
files it like any instance. This worker then looks, off Orthanc's store path, for
SR instances it has not seen: a TID 1500 measurement report becomes one
annotation per measurement group, on the instance the group references (in the
SR's own organization); any other SR is left alone, with a log line.

Idempotent: ``sr_imports`` gets the SR's SOP Instance UID in the transaction that
creates its annotations, so an SR is imported once however often it arrives or
the change log is replayed. A group that Atrium itself exported (its tracking UID
is an annotation's id) is skipped while that annotation is live: storing an
export must not duplicate what it came from, while re-sending it after the
annotations were deleted brings them back. Likewise a group whose image, frame and
points are those of a live measurement the OHIF viewer keeps in Atrium (its
"save as SR" of what it already saved here) is skipped.
"""

from __future__ import annotations

import io
import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from atrium.annotations.sr import ImportedMeasurement, ImportedReport, read_measurement_report
from atrium.annotations.store import create_annotation
from atrium.api.annotations import COORDINATES
from atrium.api.schema import compile_schema, field_errors
from atrium.api.targets import instance_by_uid
from atrium.auth.audit import AuditEvent, record
from atrium.errors import ApiError
from atrium.workers import PollingWorker

log = logging.getLogger(__name__)

__all__ = ["SrCandidate", "SrImporter", "import_report"]

_CANDIDATES = """
SELECT i.id, i.orthanc_id, i.sop_instance_uid, s.organization_id
FROM series se
JOIN instances i ON i.series_id = se.id
JOIN studies s ON s.id = se.study_id
WHERE se.modality = 'SR' AND se.deleted_at IS NULL AND i.deleted_at IS NULL
  AND i.orthanc_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM sr_imports r WHERE r.sop_instance_uid = i.sop_instance_uid)
ORDER BY i.created_at
LIMIT %s
"""

_LIVE_LINEAGE = """
SELECT 1 FROM annotations
WHERE root_id = %s AND organization_id = %s AND is_latest AND deleted_at IS NULL
"""

# The measurements the viewer keeps in Atrium itself (docs/VIEWER.md) on one image.
_LIVE_FROM_VIEWER = """
SELECT coordinates FROM annotations
WHERE target_id = %s AND target_type = 'instance' AND organization_id = %s
  AND is_latest AND deleted_at IS NULL AND properties ->> 'source' = 'ohif'
"""

SAME_POINT_PIXELS = 0.05
"""Coordinates closer than this are the same: a viewer's SR stores its points as
32-bit floats, its annotation as rounded decimals."""

MAX_ATTEMPTS = 3
"""Reads of an SR's file that may fail (Orthanc busy, file being written) before
the SR is recorded as ``failed`` rather than retried for ever."""


@dataclass(frozen=True)
class SrCandidate:
    instance_id: uuid.UUID
    orthanc_id: str
    sop_instance_uid: str
    organization_id: uuid.UUID


def _finite(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


# An SR's shapes meet the same schema as the API's (finite numbers within bounds,
# points per shape), since they do not pass through the API's router.
_SHAPE = compile_schema(COORDINATES, what="imported SR coordinates")


def _record(conn: Any, candidate: SrCandidate, outcome: str, created: int,
            detail: str | None) -> bool:
    """Claim the SR; False when another importer recorded it first."""
    row = conn.execute(
        "INSERT INTO sr_imports (sop_instance_uid, instance_id, outcome, annotations_created, "
        "detail) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (sop_instance_uid) DO NOTHING "
        "RETURNING 1", (candidate.sop_instance_uid, candidate.instance_id, outcome, created,
                        detail)).fetchone()
    return row is not None


def same_shape(a: Any, b: Any, tolerance: float = SAME_POINT_PIXELS) -> bool:
    """Whether two coordinate documents describe the same shape: the same keys and
    strings, numbers within ``tolerance`` of each other."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_shape(a[k], b[k], tolerance) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_shape(x, y, tolerance)
                                        for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= tolerance
    return bool(a == b)


def _kept_by_the_viewer(conn: Any, target_id: uuid.UUID, organization_id: uuid.UUID,
                        coordinates: Any) -> bool:
    """Whether the viewer already keeps this measurement as a live annotation: its
    "save as SR" gives each measurement a new tracking UID, so only the image, frame
    and points tell that a group is one Atrium has."""
    def drawn(shape: Any) -> Any:  # the bounding box is the server's, not the drawing
        return {k: v for k, v in shape.items() if k != "bounding_box"} if isinstance(
            shape, dict) else shape

    return any(same_shape(drawn(kept), drawn(coordinates)) for (kept,) in conn.execute(
        _LIVE_FROM_VIEWER, (target_id, organization_id)))


def _import_one(conn: Any, candidate: SrCandidate, measurement: ImportedMeasurement
                ) -> tuple[uuid.UUID | None, bool, str | None]:
    """The annotation made from one group, whether it is PHI, or why none was made."""
    if measurement.annotation_id is not None and conn.execute(
            _LIVE_LINEAGE, (measurement.annotation_id, candidate.organization_id)).fetchone():
        return None, False, None  # exported from a live annotation: already here
    target = instance_by_uid(conn, candidate.organization_id, measurement.sop_instance_uid)
    if target is None:
        return None, False, (f"image {measurement.sop_instance_uid} is not in the SR's "
                             "organization")
    if not _finite(measurement.coordinates):  # NaN passes any JSON Schema bound
        return None, False, "coordinates are not finite numbers"
    wrong = field_errors(_SHAPE, measurement.coordinates, "body")
    if wrong:
        return None, False, f"shape refused: {wrong[0].field or 'coordinates'} {wrong[0].message}"
    if _kept_by_the_viewer(conn, target.id, candidate.organization_id,
                           measurement.coordinates):
        return None, False, None  # the viewer's own measurement, saved as SR too
    properties: dict[str, Any] = {"source": "dicom-sr",
                                  "sr_sop_instance_uid": candidate.sop_instance_uid}
    if measurement.tracking_uid:
        properties["tracking_uid"] = measurement.tracking_uid
    try:
        with conn.transaction():  # a savepoint: one bad group does not undo the others
            created = create_annotation(
                conn, target, annotation_type="dicom",
                label=measurement.label[:255] or None, coordinates=measurement.coordinates,
                properties=properties, user_id=None)
    except ApiError as refused:
        return None, False, f"shape refused: {refused.detail}"
    return created, target.phi, None


def import_report(conn: Any, candidate: SrCandidate, report: ImportedReport) -> int:
    """Annotations for every importable group of ``report``, the ``sr_imports`` row
    and one audit row, in one transaction; the number created (0 when the SR was
    imported before)."""
    with conn.transaction():
        if not _record(conn, candidate, "imported", 0, None):
            return 0
        created: list[uuid.UUID] = []
        skipped = list(report.skipped)
        phi = False
        for measurement in report.measurements:
            annotation_id, is_phi, why = _import_one(conn, candidate, measurement)
            if annotation_id is not None:
                created.append(annotation_id)
                phi = phi or is_phi
            elif why:
                skipped.append(why)
        conn.execute("UPDATE sr_imports SET annotations_created = %s, detail = %s "
                     "WHERE sop_instance_uid = %s",
                     (len(created), "; ".join(skipped)[:10_000] or None,
                      candidate.sop_instance_uid))
        record(conn, AuditEvent(
            action="annotation.import_sr", organization_id=candidate.organization_id,
            resource_type="instance", resource_id=candidate.instance_id,
            details={"annotations_created": len(created), "groups_skipped": len(skipped),
                     "annotation_ids": [str(a) for a in created[:100]]},
            phi_accessed=phi))
    if skipped:
        log.info("sr.import sop=%s created=%d skipped=%d first=%s", candidate.sop_instance_uid,
                 len(created), len(skipped), skipped[0])
    return len(created)


class SrImporter(PollingWorker):
    """Polls the mirror for SR instances not yet looked at; a daemon thread."""

    thread_name = "atrium-sr-import"
    log_name = "sr.import"

    def __init__(self, connect: Callable[[], Any], read_file: Callable[[str], bytes], *,
                 ready: Callable[[], bool] = lambda: True, poll_seconds: float = 1.0,
                 batch: int = 20) -> None:
        super().__init__(ready=ready, poll_seconds=poll_seconds, batch=batch)
        self._connect = connect
        self._read_file = read_file
        self._failures: dict[str, int] = {}

    def step(self) -> int:
        """Look at up to one batch of new SRs; how many were looked at."""
        with self._connect() as conn:
            rows = conn.execute(_CANDIDATES, (self._batch,)).fetchall()
        for row in rows:
            self._look_at(SrCandidate(*row))
        return len(rows)

    def _look_at(self, candidate: SrCandidate) -> None:
        try:
            blob = self._read_file(candidate.orthanc_id)
        except Exception as error:  # noqa: BLE001 — Orthanc's failures vary; count them
            attempts = self._failures.get(candidate.sop_instance_uid, 0) + 1
            self._failures[candidate.sop_instance_uid] = attempts
            if attempts < MAX_ATTEMPTS:
                return
            self._failures.pop(candidate.sop_instance_uid)
            self._finish(candidate, "failed", f"file unreadable: {error}")
            return
        self._failures.pop(candidate.sop_instance_uid, None)
        try:
            dataset = pydicom.dcmread(io.BytesIO(blob))
        except (InvalidDicomError, ValueError, EOFError) as error:
            self._finish(candidate, "failed", f"not a readable DICOM file: {error}")
            return
        report = read_measurement_report(dataset)
        if report is None:
            log.info("sr.ignored sop=%s reason=not a TID 1500 measurement report",
                     candidate.sop_instance_uid)
            self._finish(candidate, "ignored", "not a TID 1500 measurement report")
            return
        with self._connect() as conn:
            created = import_report(conn, candidate, report)
        log.info("sr.imported sop=%s annotations=%d", candidate.sop_instance_uid, created)

    def _finish(self, candidate: SrCandidate, outcome: str, detail: str) -> None:
        with self._connect() as conn, conn.transaction():
            _record(conn, candidate, outcome, 0, detail[:10_000])
