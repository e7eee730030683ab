"""DICOM whole-slide series arriving in Orthanc become slides.

However a VL Whole Slide Microscopy series reaches Orthanc — C-STORE from a
scanner, STOW-RS through the gateway, ``POST /instances`` — the mirror files its
instances like any others. This worker then looks, off Orthanc's store path, at
every microscopy series (modality SM) whose mirror row changed, reads the headers
of its WSI instances from Orthanc (``read_tags``: Orthanc's simplified tags, which
Orthanc reads up to the pixel data only), and makes the series one ``slides`` row
(:mod:`atrium.slides.dicom_wsi` says what a servable series is). Pixels stay in
Orthanc; the row's ``metadata`` says which instance holds which level.

The row is the series' study's: same organization, same patient. It is found
again by ``metadata->>'series_instance_uid'`` within the organization, so a
changed series (a level added, an instance replaced) updates its row; a series
that stops being servable (an instance deleted), or is deleted, has its row
soft-deleted; one that becomes whole again gets the same row back, annotations
and all. Each change is one transaction with its ``wsi_series`` record and audit
row: never a half-written slide.

Timing: a series is looked at once its row has not changed for ``settle_seconds``
(the instances of one series arrive over several mirror batches, and a pyramid
missing the levels still on their way would be refused for nothing), on the next
poll — with the defaults, a new series is a slide within about two seconds of its
last instance being mirrored.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID

from atrium.auth.audit import AuditEvent, record
from atrium.slides.dicom_wsi import WSI_SOP_CLASS, UnusableSeries, WsiSeries, describe_series
from atrium.workers import PollingWorker

log = logging.getLogger(__name__)

__all__ = ["SeriesCandidate", "WsiRegistry", "dataset_from_tags", "register_series",
           "retire_series"]

_CHANGED = """
SELECT se.id, se.series_instance_uid, se.orthanc_id, se.updated_at,
       se.deleted_at IS NOT NULL OR st.deleted_at IS NOT NULL, st.organization_id, st.patient_id
FROM series se JOIN studies st ON st.id = se.study_id
LEFT JOIN wsi_series w ON w.series_id = se.id
WHERE se.modality = 'SM'
  AND (w.series_id IS NULL OR w.series_updated_at IS DISTINCT FROM se.updated_at)
  AND (w.series_id IS NOT NULL OR se.deleted_at IS NULL)
  AND se.updated_at <= now() - make_interval(secs => %s)
ORDER BY se.updated_at
LIMIT %s
"""

_INSTANCES = """
SELECT orthanc_id, coalesce(file_size_bytes, 0), metadata #>> '{orthanc,SopClassUid}',
       metadata #>> '{orthanc,TransferSyntax}'
FROM instances WHERE series_id = %s AND deleted_at IS NULL AND orthanc_id IS NOT NULL
ORDER BY orthanc_id
"""

# A live row first, else the latest deleted one: a series that comes back gets its
# row (and the annotations on it) back.
_SLIDE_OF_SERIES = """
SELECT id, slide_id, deleted_at IS NOT NULL FROM slides
WHERE organization_id = %s AND metadata->>'series_instance_uid' = %s
ORDER BY deleted_at IS NULL DESC, updated_at DESC LIMIT 1
"""

_RECORD = """
INSERT INTO wsi_series (series_id, series_instance_uid, series_updated_at, fingerprint, outcome,
                        slide_id, detail)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (series_id) DO UPDATE SET
    series_updated_at = EXCLUDED.series_updated_at, fingerprint = EXCLUDED.fingerprint,
    outcome = EXCLUDED.outcome, slide_id = coalesce(EXCLUDED.slide_id, wsi_series.slide_id),
    detail = EXCLUDED.detail, checked_at = now()
"""

MAX_ATTEMPTS = 3
"""Failed reads of a series' headers (Orthanc busy, an instance being replaced)
before the series is recorded as ``failed`` until it changes again."""


@dataclass(frozen=True)
class SeriesCandidate:
    series_id: uuid.UUID
    series_instance_uid: str
    orthanc_id: str | None
    updated_at: dt.datetime
    gone: bool
    organization_id: uuid.UUID
    patient_id: uuid.UUID | None


# ------------------------------------------------------------- Orthanc's tags

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_INTEGER_VRS = {"US", "UL", "SS", "SL", "SV", "UV", "AT"}
_FLOAT_VRS = {"FL", "FD"}


def _element_value(vr: str, text: str) -> Any:
    if vr not in _INTEGER_VRS | _FLOAT_VRS:
        return text  # pydicom splits multiple values on backslashes itself
    numbers = [int(v) if vr in _INTEGER_VRS else float(v) for v in text.split("\\") if v]
    return numbers[0] if len(numbers) == 1 else numbers


def dataset_from_tags(tags: Mapping[str, Any], transfer_syntax: str | None = None) -> Dataset:
    """A dataset from Orthanc's simplified tags (``/instances/{id}/tags?simplify``:
    keywords, values as text, sequences as lists). Binary values, values Orthanc
    left out (null) and keywords pydicom does not know are dropped; a value that
    does not parse is dropped rather than failing the whole header."""
    ds = Dataset()
    for keyword, value in tags.items():
        tag = tag_for_keyword(keyword)
        if tag is None or value is None:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        try:
            if vr == "SQ":
                if isinstance(value, list):
                    ds.add_new(tag, vr, Sequence([dataset_from_tags(item) for item in value
                                                  if isinstance(item, Mapping)]))
            elif isinstance(value, str) and vr not in _BINARY_VRS:
                ds.add_new(tag, vr, _element_value(vr, value))
        except (TypeError, ValueError, OverflowError):
            continue
    if transfer_syntax:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    return ds


# ---------------------------------------------------------------- the rows

def _record(conn: Any, candidate: SeriesCandidate, fingerprint: str | None, outcome: str,
            slide_row: uuid.UUID | None = None, detail: str | None = None) -> None:
    conn.execute(_RECORD, (candidate.series_id, candidate.series_instance_uid,
                           candidate.updated_at, fingerprint, outcome, slide_row,
                           detail[:10_000] if detail else None))


def _free_slide_id(conn: Any, candidate: SeriesCandidate, wanted: str,
                   own: uuid.UUID | None) -> str:
    """``wanted`` unless another live slide of the organization has that name (a
    re-scan of the same glass slide, an uploaded file): then the Series Instance UID."""
    taken = conn.execute(
        "SELECT 1 FROM slides WHERE organization_id = %s AND slide_id = %s "
        "AND deleted_at IS NULL AND id IS DISTINCT FROM %s",
        (candidate.organization_id, wanted, own)).fetchone()
    if taken is None:
        return wanted
    log.info("wsi.slide_id_taken series=%s slide_id=%s; named by its series UID instead",
             candidate.series_instance_uid, wanted)
    return candidate.series_instance_uid[:255]


def register_series(conn: Any, candidate: SeriesCandidate, series: WsiSeries,
                    fingerprint: str, size: int) -> uuid.UUID:
    """Insert or update the series' slide row, record it, audit it: one transaction.
    The id of the slide row."""
    info = series.info
    columns = {
        "patient_id": candidate.patient_id, "magnification": info.magnification,
        "scan_date": info.scan_date, "scanner_model": info.scanner_model,
        "width_pixels": info.width, "height_pixels": info.height,
        "mpp_x": info.mpp_x, "mpp_y": info.mpp_y, "tile_size": info.tile_size,
        "pyramid_levels": len(info.levels),
        "storage_path": None,  # the pixels are Orthanc's: no file of Atrium's
        "file_size_bytes": size, "file_format": "DICOM",
    }
    with conn.transaction():
        # Two Atrium processes on one database must not both insert the series.
        conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                     (f"atrium-wsi:{candidate.organization_id}:{series.series_instance_uid}",))
        existing = conn.execute(_SLIDE_OF_SERIES, (candidate.organization_id,
                                                   series.series_instance_uid)).fetchone()
        if existing is None:
            slide_id = _free_slide_id(conn, candidate, series.slide_id, None)
            insert = sql.SQL("INSERT INTO slides (slide_id, organization_id, metadata, {}) "
                             "VALUES (%s, %s, %s, {}) RETURNING id").format(
                sql.SQL(", ").join(map(sql.Identifier, columns)),
                sql.SQL(", ").join(sql.Placeholder() * len(columns)))
            row = conn.execute(insert, (slide_id, candidate.organization_id,
                                        Jsonb(series.metadata()), *columns.values())).fetchone()
            slide_row, action = row[0], "slide.register_dicom"
        else:
            slide_row, name, was_deleted = existing
            # The lab may have renamed the slide: its name changes only when it
            # comes back and another live slide has taken it meanwhile.
            name = _free_slide_id(conn, candidate, name, slide_row) if was_deleted else name
            update = sql.SQL("UPDATE slides SET slide_id = %s, metadata = metadata || %s, "
                             "deleted_at = NULL, {} WHERE id = %s").format(
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(c))
                                   for c in columns))
            conn.execute(update, (name, Jsonb(series.metadata()), *columns.values(), slide_row))
            action = "slide.update_dicom"
        _record(conn, candidate, fingerprint, "slide", slide_row)
        record(conn, AuditEvent(
            action=action, organization_id=candidate.organization_id, resource_type="slide",
            resource_id=slide_row, details={"series_instance_uid": series.series_instance_uid,
                                            "levels": len(info.levels)},
            phi_accessed=False))
    return uuid.UUID(str(slide_row))


def retire_series(conn: Any, candidate: SeriesCandidate, fingerprint: str | None,
                  outcome: str, detail: str | None) -> uuid.UUID | None:
    """Soft-delete the series' live slide row, if any, and record why: one
    transaction. The id of the row retired."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE slides SET deleted_at = now() WHERE organization_id = %s "
            "AND metadata->>'series_instance_uid' = %s AND deleted_at IS NULL RETURNING id",
            (candidate.organization_id, candidate.series_instance_uid)).fetchone()
        retired = row[0] if row else None
        _record(conn, candidate, fingerprint, outcome, retired, detail)
        if retired is not None:
            record(conn, AuditEvent(
                action="slide.retire_dicom", organization_id=candidate.organization_id,
                resource_type="slide", resource_id=retired,
                details={"series_instance_uid": candidate.series_instance_uid,
                         "outcome": outcome}, phi_accessed=False))
    return uuid.UUID(str(retired)) if retired else None


# --------------------------------------------------------------- the worker

class WsiRegistry(PollingWorker):
    """Polls the mirror for microscopy series that changed; a daemon thread.

    ``read_tags(orthanc_id)`` gives an instance's simplified tags from Orthanc;
    ``changed(slide_row_id)`` is told of every slide row updated or retired, so that
    what this process caches of the old version (open readers, tiles) is dropped.
    """

    thread_name = "atrium-wsi-registry"
    log_name = "wsi.registry"

    def __init__(self, connect: Callable[[], Any], read_tags: Callable[[str], Mapping[str, Any]],
                 *, ready: Callable[[], bool] = lambda: True, poll_seconds: float = 1.0,
                 settle_seconds: float = 1.0, batch: int = 20,
                 changed: Callable[[uuid.UUID], None] = lambda slide_row: None) -> None:
        super().__init__(ready=ready, poll_seconds=poll_seconds, batch=batch)
        self._connect = connect
        self._read_tags = read_tags
        self._settle_seconds = settle_seconds
        self._changed = changed
        self._failures: dict[uuid.UUID, int] = {}

    def step(self) -> int:
        """Look at up to one batch of changed series; how many were looked at."""
        with self._connect() as conn:
            rows = conn.execute(_CHANGED, (self._settle_seconds, self._batch)).fetchall()
        for row in rows:
            self.look_at(SeriesCandidate(*row))
        return len(rows)

    def look_at(self, candidate: SeriesCandidate) -> None:
        with self._connect() as conn:
            instances = conn.execute(_INSTANCES, (candidate.series_id,)).fetchall()
            known = conn.execute("SELECT fingerprint, outcome FROM wsi_series "
                                 "WHERE series_id = %s", (candidate.series_id,)).fetchone()
        fingerprint = hashlib.sha256(";".join(
            f"{orthanc_id}:{size}" for orthanc_id, size, _, _ in instances).encode()).hexdigest()
        if candidate.gone or not instances:
            with self._connect() as conn:
                retired = retire_series(conn, candidate, None, "gone", "the series was deleted")
            if retired:
                self._changed(retired)
                log.info("wsi.gone series=%s slide=%s", candidate.series_instance_uid, retired)
            return
        if known is not None and known[0] == fingerprint and known[1] != "failed":
            with self._connect() as conn:  # seen: the instances are as they were
                conn.execute("UPDATE wsi_series SET series_updated_at = %s, checked_at = now() "
                             "WHERE series_id = %s", (candidate.updated_at, candidate.series_id))
            return
        try:
            headers = [(orthanc_id, dataset_from_tags(self._read_tags(orthanc_id), syntax))
                       for orthanc_id, _, sop_class, syntax in instances
                       if sop_class in (None, WSI_SOP_CLASS)]
        except Exception as error:  # noqa: BLE001 — Orthanc's failures vary; count them
            attempts = self._failures.get(candidate.series_id, 0) + 1
            self._failures[candidate.series_id] = attempts
            if attempts >= MAX_ATTEMPTS:
                self._failures.pop(candidate.series_id)
                log.warning("wsi.failed series=%s reason=headers unreadable: %r",
                            candidate.series_instance_uid, error)
                with self._connect() as conn, conn.transaction():
                    _record(conn, candidate, None, "failed", detail=f"headers unreadable: {error}")
            return
        self._failures.pop(candidate.series_id, None)
        self._decide(candidate, headers, fingerprint,
                     sum(size for _, size, _, _ in instances))

    def _decide(self, candidate: SeriesCandidate, headers: list[tuple[str, Dataset]],
                fingerprint: str, size: int) -> None:
        if not any(str(ds.get("SOPClassUID", "")) == WSI_SOP_CLASS for _, ds in headers):
            with self._connect() as conn:
                retired = retire_series(conn, candidate, fingerprint, "ignored",
                                        "no VL Whole Slide Microscopy instance")
            if retired:
                self._changed(retired)
            return
        try:
            series = describe_series(candidate.series_instance_uid, headers)
        except UnusableSeries as why:
            with self._connect() as conn:
                retired = retire_series(conn, candidate, fingerprint, "refused", str(why))
            if retired:
                self._changed(retired)
            log.warning("wsi.refused series=%s reason=%s%s", candidate.series_instance_uid,
                        why, f"; slide {retired} no longer served" if retired else
                        "; not made a slide")
            return
        with self._connect() as conn:
            slide_row = register_series(conn, candidate, series, fingerprint, size)
        self._changed(slide_row)
        log.info("wsi.registered series=%s slide=%s levels=%d size=%dx%d",
                 candidate.series_instance_uid, slide_row, len(series.levels),
                 series.info.width, series.info.height)
