"""DICOM waveform instances arriving in Orthanc become recordings.

However a waveform reaches Orthanc — an ECG cart's C-STORE, STOW-RS through the
gateway, ``POST /instances`` — the mirror files it like any instance. This worker
then looks, off Orthanc's store path, at every instance of a waveform SOP class
that becomes a recording (:data:`atrium.signals.dicom_waveform.RECORDING_TYPES`)
whose mirror row changed, reads its whole file from Orthanc (*Waveform Data* is
binary: Orthanc's tags leave it out), and stores one recording per
:class:`~atrium.signals.dicom_waveform.WaveformPart` — a 12-lead ECG's 10 s
``RHYTHM`` and 1.2 s ``MEDIAN BEAT`` groups make two. The recordings are the
instance's study's (same organization, same patient); :func:`recording_metadata`
says what links them to the instance, :func:`channel_metadata` what each channel
keeps of DICOM.

``waveform_instances`` (sql/0021) records, per instance, the row version looked
at, a SHA-256 of the file and the recordings made. Each change is one
transaction with that row and its audit rows, under an advisory lock per
instance (several Atrium processes may share the database), so:

* a restart, a replay of the change log or the same file stored again (the
  mirror touches the row) leaves the same recordings;
* a changed file (the instance replaced in Orthanc) retires the old recordings
  and writes new ones;
* a deleted instance (or its series, study, patient) retires its recordings;
  when it comes back with the same file, the same recordings come back, with
  the annotations on them;
* a file that cannot be read — over :data:`MAX_FILE_BYTES`, refused by the scan
  of :mod:`atrium.dicom.scan`, not DICOM, a waveform that does not match its
  header — is recorded ``failed`` with the reason, nothing half-stored, and not
  read again until it changes. A failure of Orthanc itself is retried
  :data:`MAX_ATTEMPTS` times first.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pydicom
from psycopg.types.json import Jsonb

from atrium.auth.audit import AuditEvent, record_many
from atrium.cluster.bus import publish
from atrium.dicom.scan import DEFAULT_LIMITS, DicomLimits, UnsafeDicom, scan
from atrium.errors import ApiError
from atrium.mirror.extract import sanitize_json
from atrium.signals.dicom_waveform import (
    RECORDING_TYPES,
    DicomWaveform,
    WaveformPart,
    read_dicom_waveform,
)
from atrium.signals.store import write_recording
from atrium.workers import PollingWorker

log = logging.getLogger(__name__)

__all__ = ["MAX_ATTEMPTS", "MAX_FILE_BYTES", "WaveformCandidate", "WaveformRefused",
           "WaveformRegistry", "channel_metadata", "extract_waveform", "recording_date",
           "recording_metadata", "register_waveform", "retire_waveform"]

MAX_FILE_BYTES = 256 * 1024 * 1024
"""The largest waveform file read (a 24 h 3-lead Holter at 200 Hz is ~100 MiB)."""
MAX_ATTEMPTS = 3
"""Failed reads of an instance's file (Orthanc busy, the instance being replaced)
before it is recorded as ``failed`` until it changes again."""

# The waveform classes' prefix matches the partial index idx_instances_waveforms.
_CHANGED = """
SELECT i.id, i.sop_instance_uid, i.orthanc_id, i.updated_at,
       i.metadata #>> '{orthanc,SopClassUid}', coalesce(i.file_size_bytes, 0),
       i.deleted_at IS NOT NULL OR se.deleted_at IS NOT NULL OR st.deleted_at IS NOT NULL,
       st.id, st.organization_id, st.patient_id, st.study_instance_uid,
       se.series_instance_uid, st.study_date, st.study_time
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies st ON st.id = se.study_id
LEFT JOIN waveform_instances w ON w.instance_id = i.id
WHERE i.metadata #>> '{orthanc,SopClassUid}' LIKE '1.2.840.10008.5.1.4.1.1.9.%%'
  AND i.metadata #>> '{orthanc,SopClassUid}' = ANY(%s)
  AND (w.instance_id IS NULL AND i.deleted_at IS NULL AND se.deleted_at IS NULL
                             AND st.deleted_at IS NULL
       OR w.instance_updated_at IS DISTINCT FROM i.updated_at
       OR w.outcome = 'registered' AND (se.deleted_at IS NOT NULL OR st.deleted_at IS NOT NULL))
ORDER BY i.updated_at
LIMIT %s
"""

_KNOWN = ("SELECT fingerprint, outcome, recording_ids FROM waveform_instances "
          "WHERE instance_id = %s")

_RECORD = """
INSERT INTO waveform_instances (instance_id, sop_instance_uid, instance_updated_at, fingerprint,
                                outcome, recording_ids, detail)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (instance_id) DO UPDATE SET
    sop_instance_uid = EXCLUDED.sop_instance_uid,
    instance_updated_at = EXCLUDED.instance_updated_at, fingerprint = EXCLUDED.fingerprint,
    outcome = EXCLUDED.outcome, recording_ids = EXCLUDED.recording_ids,
    detail = EXCLUDED.detail, attempts = waveform_instances.attempts + 1, checked_at = now()
"""

_TOUCH = ("UPDATE waveform_instances SET instance_updated_at = %s, checked_at = now() "
          "WHERE instance_id = %s")

_RETIRE = ("UPDATE recordings SET deleted_at = now() WHERE id = ANY(%s) AND deleted_at IS NULL "
           "RETURNING id")
_RESTORE = ("UPDATE recordings SET deleted_at = NULL WHERE id = ANY(%s) "
            "AND deleted_at IS NOT NULL RETURNING id")


class WaveformRefused(ValueError):
    """The file is not a waveform Atrium stores; the message says why."""


@dataclass(frozen=True)
class WaveformCandidate:
    """An instance of a waveform class whose mirror row changed, with its study."""

    instance_id: uuid.UUID
    sop_instance_uid: str
    orthanc_id: str | None
    updated_at: dt.datetime
    sop_class_uid: str
    file_size: int
    gone: bool
    study_id: uuid.UUID
    organization_id: uuid.UUID
    patient_id: uuid.UUID | None
    study_instance_uid: str
    series_instance_uid: str
    study_date: dt.date | None = None
    study_time: dt.time | None = None


# ------------------------------------------------------------------ pure parts

def extract_waveform(blob: bytes, limits: DicomLimits = DEFAULT_LIMITS,
                     max_bytes: int = MAX_FILE_BYTES) -> DicomWaveform:
    """The waveform of a DICOM file, or :class:`WaveformRefused` saying why not.

    The bytes meet the size cap and the non-recursive scan before pydicom parses
    them; whatever pydicom or the reader raise on a damaged file (a deep file is a
    ``RecursionError`` in this thread, never a crash) becomes the refusal.
    """
    if len(blob) > max_bytes:
        raise WaveformRefused(f"the file has {len(blob)} bytes, over the limit of {max_bytes}")
    try:
        scan(blob, limits, require_uids=False)
    except UnsafeDicom as unsafe:
        raise WaveformRefused(f"refused by the DICOM scan: {unsafe}") from None
    try:
        dataset = pydicom.dcmread(io.BytesIO(blob))
        return read_dicom_waveform(dataset)
    except ApiError as refused:
        raise WaveformRefused(refused.detail) from None
    except Exception as error:  # noqa: BLE001 — a hostile file may make pydicom raise anything
        raise WaveformRefused(f"not a readable DICOM waveform: {error!r}"[:2000]) from None


def recording_date(part: WaveformPart, study_date: dt.date | None,
                   study_time: dt.time | None) -> dt.datetime | None:
    """When the part's first sample was taken: the waveform's own acquisition or
    content date and time (already with its group's offset), else the study's
    date and time plus the offset; ``None`` (the store takes now) without either.
    Naive, as DICOM gives it: the store takes it as UTC."""
    if part.recording.start is not None:
        return part.recording.start
    if study_date is None:
        return None
    moment = dt.datetime.combine(study_date, study_time or dt.time())
    return moment + dt.timedelta(seconds=part.time_offset)


def recording_metadata(candidate: WaveformCandidate, waveform: DicomWaveform,
                       index: int) -> dict[str, Any]:
    """What links part ``index``'s recording to its instance, study and groups.
    Identifiers are the mirror's (what Atrium links to); JSON-ready, NUL-free."""
    part = waveform.parts[index]
    return sanitize_json({
        "source": "dicom-waveform",
        "sop_instance_uid": candidate.sop_instance_uid,
        "study_instance_uid": candidate.study_instance_uid,
        "series_instance_uid": candidate.series_instance_uid,
        "sop_class_uid": candidate.sop_class_uid,
        "study_id": str(candidate.study_id),
        "instance_id": str(candidate.instance_id),
        "orthanc_id": candidate.orthanc_id,
        "waveform_part": index,
        "waveform_parts": len(waveform.parts),
        "multiplex_groups": list(part.groups),
        "multiplex_group_labels": list(dict.fromkeys(c.group_label for c in part.channels)),
        "time_offset_seconds": part.time_offset,
        "statements": list(waveform.statements),
    })


def channel_metadata(stored: Sequence[dict[str, Any]], part: WaveformPart
                     ) -> list[dict[str, Any]]:
    """The store's ``metadata.channels`` with each channel's DICOM details beside
    its fields. DICOM's *Channel Baseline* (in the sensitivity units) becomes
    ``channel_baseline``: ``baseline`` is the store's, in digital units, which
    the routes use to compute physical values."""
    if len(stored) != len(part.channels):
        raise ValueError(f"{len(stored)} stored channels for {len(part.channels)} DICOM ones")
    merged = []
    for entry, detail in zip(stored, part.channels, strict=True):
        extra = detail.metadata()
        extra["channel_baseline"] = extra.pop("baseline")
        extra["sensitivity_units_meaning"] = detail.units_meaning
        merged.append({**dict(entry), **sanitize_json(extra)})
    return merged


# ---------------------------------------------------------------------- the rows

def _record(conn: Any, candidate: WaveformCandidate, fingerprint: str | None, outcome: str,
            recording_ids: Sequence[uuid.UUID] = (), detail: str | None = None) -> None:
    conn.execute(_RECORD, (candidate.instance_id, candidate.sop_instance_uid,
                           candidate.updated_at, fingerprint, outcome, list(recording_ids),
                           detail.replace("\x00", "")[:10_000] if detail else None))


def _lock(conn: Any, candidate: WaveformCandidate) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                 (f"atrium-waveform:{candidate.instance_id}",))


def _events(candidate: WaveformCandidate, action: str, recording_ids: Sequence[uuid.UUID],
            **details: Any) -> list[AuditEvent]:
    return [AuditEvent(action=action, organization_id=candidate.organization_id,
                       resource_type="recording", resource_id=uuid.UUID(str(rid)),
                       details={"sop_instance_uid": candidate.sop_instance_uid,
                                "instance_id": str(candidate.instance_id), **details},
                       phi_accessed=False)
            for rid in recording_ids]


def _set_deleted(conn: Any, recording_ids: Sequence[uuid.UUID], deleted: bool
                 ) -> list[uuid.UUID]:
    if not recording_ids:
        return []
    rows = conn.execute(_RETIRE if deleted else _RESTORE, (list(recording_ids),)).fetchall()
    return [uuid.UUID(str(r[0])) for r in rows]


def register_waveform(conn: Any, candidate: WaveformCandidate, waveform: DicomWaveform,
                      fingerprint: str) -> list[uuid.UUID]:
    """One recording per part, the instance's earlier recordings retired, the
    ``waveform_instances`` row and the audit rows: one transaction. The ids of
    the instance's recordings (those already there when another process
    registered the same file first)."""
    with conn.transaction():
        _lock(conn, candidate)
        known = conn.execute(_KNOWN, (candidate.instance_id,)).fetchone()
        if known is not None and known[0] == fingerprint and known[1] == "registered":
            conn.execute(_TOUCH, (candidate.updated_at, candidate.instance_id))
            return [uuid.UUID(str(r)) for r in known[2]]
        retired = _set_deleted(conn, known[2] if known else [], deleted=True)
        created: list[uuid.UUID] = []
        for index, part in enumerate(waveform.parts):
            recording_id = write_recording(
                conn, part.recording, organization_id=candidate.organization_id,
                patient_id=candidate.patient_id, recording_type=waveform.recording_type,
                recording_date=recording_date(part, candidate.study_date,
                                              candidate.study_time),
                metadata=recording_metadata(candidate, waveform, index))
            row = conn.execute("SELECT metadata -> 'channels' FROM recordings WHERE id = %s",
                               (recording_id,)).fetchone()
            conn.execute("UPDATE recordings SET metadata = jsonb_set(metadata, '{channels}', %s) "
                         "WHERE id = %s", (Jsonb(channel_metadata(row[0], part)), recording_id))
            created.append(recording_id)
        _record(conn, candidate, fingerprint, "registered", created)
        record_many(conn, [
            *_events(candidate, "recording.retire_dicom", retired, reason="replaced"),
            *_events(candidate, "recording.extract_dicom", created,
                     parts=len(waveform.parts))])
    return created


def retire_waveform(conn: Any, candidate: WaveformCandidate, fingerprint: str | None,
                    outcome: str, detail: str | None) -> list[uuid.UUID]:
    """Soft-delete the instance's live recordings and record why (``gone``: the
    instance was deleted; ``failed``: its file is not a waveform any more): one
    transaction. The ids retired — the ones a return of the same file restores."""
    with conn.transaction():
        _lock(conn, candidate)
        known = conn.execute(_KNOWN, (candidate.instance_id,)).fetchone()
        retired = _set_deleted(conn, known[2] if known else [], deleted=True)
        for recording_id in retired:  # every node stops serving its windows at once
            publish(conn, "recording", str(recording_id))
        kept: Sequence[uuid.UUID] = []
        if outcome == "gone":  # kept, so that the same file coming back restores them
            fingerprint = fingerprint or (known[0] if known else None)
            kept = retired or (known[2] if known and known[1] == "gone" else [])
        _record(conn, candidate, fingerprint, outcome, kept, detail)
        record_many(conn, _events(candidate, "recording.retire_dicom", retired,
                                  reason=outcome))
    return retired


def restore_waveform(conn: Any, candidate: WaveformCandidate, recording_ids: Sequence[uuid.UUID]
                     ) -> list[uuid.UUID]:
    """The instance came back with the file it had: its retired recordings live again."""
    with conn.transaction():
        _lock(conn, candidate)
        restored = _set_deleted(conn, recording_ids, deleted=False)
        known = conn.execute(_KNOWN, (candidate.instance_id,)).fetchone()
        _record(conn, candidate, known[0] if known else None, "registered", recording_ids)
        record_many(conn, _events(candidate, "recording.restore_dicom", restored))
    return restored


# -------------------------------------------------------------------- the worker

class WaveformRegistry(PollingWorker):
    """Polls the mirror for waveform instances that changed; a daemon thread.

    ``read_file(orthanc_id)`` gives an instance's whole file from Orthanc;
    ``limits`` are the scan's (:func:`atrium.app.dicom_limits`).
    """

    thread_name = "atrium-waveform-registry"
    log_name = "waveform.registry"

    def __init__(self, connect: Callable[[], Any], read_file: Callable[[str], bytes], *,
                 ready: Callable[[], bool] = lambda: True, poll_seconds: float = 1.0,
                 batch: int = 20, limits: DicomLimits = DEFAULT_LIMITS,
                 max_file_bytes: int = MAX_FILE_BYTES) -> None:
        super().__init__(ready=ready, poll_seconds=poll_seconds, batch=batch)
        self._connect = connect
        self._read_file = read_file
        self._limits = limits
        self._max_file_bytes = max_file_bytes
        self._failures: dict[uuid.UUID, int] = {}

    def step(self) -> int:
        """Look at up to one batch of changed waveform instances; how many."""
        with self._connect() as conn:
            rows = conn.execute(_CHANGED, (sorted(RECORDING_TYPES), self._batch)).fetchall()
        for row in rows:
            self.look_at(WaveformCandidate(*row))
        return len(rows)

    def look_at(self, candidate: WaveformCandidate) -> None:
        if candidate.gone or not candidate.orthanc_id:
            with self._connect() as conn:
                retired = retire_waveform(conn, candidate, None, "gone",
                                          "the instance was deleted")
            if retired:
                log.info("waveform.gone sop=%s recordings=%s", candidate.sop_instance_uid,
                         ",".join(map(str, retired)))
            return
        if candidate.file_size > self._max_file_bytes:
            self._refuse(candidate, None, f"the file has {candidate.file_size} bytes, over "
                         f"the limit of {self._max_file_bytes}")
            return
        try:
            blob = self._read_file(candidate.orthanc_id)
        except Exception as error:  # noqa: BLE001 — Orthanc's failures vary; count them
            attempts = self._failures.get(candidate.instance_id, 0) + 1
            self._failures[candidate.instance_id] = attempts
            if attempts >= MAX_ATTEMPTS:
                self._failures.pop(candidate.instance_id)
                log.warning("waveform.failed sop=%s reason=file unreadable: %r",
                            candidate.sop_instance_uid, error)
                with self._connect() as conn, conn.transaction():
                    _lock(conn, candidate)
                    # Orthanc's trouble, not the file's: its recordings stay, and
                    # the next change of the instance has it read again.
                    known = conn.execute(_KNOWN, (candidate.instance_id,)).fetchone()
                    _record(conn, candidate, None, "failed", known[2] if known else [],
                            f"file unreadable: {error}")
            return
        self._failures.pop(candidate.instance_id, None)
        fingerprint = hashlib.sha256(blob).hexdigest()
        with self._connect() as conn:
            known = conn.execute(_KNOWN, (candidate.instance_id,)).fetchone()
            if known is not None and known[0] == fingerprint:
                _, outcome, recording_ids = known
                if outcome != "gone":  # seen: the file is as it was
                    conn.execute(_TOUCH, (candidate.updated_at, candidate.instance_id))
                    return
                if recording_ids:  # back, with the file it had
                    restored = restore_waveform(conn, candidate, recording_ids)
                    log.info("waveform.restored sop=%s recordings=%s",
                             candidate.sop_instance_uid, ",".join(map(str, restored)))
                    return
        try:
            waveform = extract_waveform(blob, self._limits, self._max_file_bytes)
        except WaveformRefused as why:
            self._refuse(candidate, fingerprint, str(why))
            return
        try:
            with self._connect() as conn:
                created = register_waveform(conn, candidate, waveform, fingerprint)
        except (ApiError, ValueError, psycopg.DataError, psycopg.IntegrityError) as error:
            # The rows refused what the file holds (rolled back, nothing kept).
            detail = error.detail if isinstance(error, ApiError) else str(error)
            self._refuse(candidate, fingerprint, f"not stored: {detail}")
            return
        log.info("waveform.registered sop=%s type=%s recordings=%s",
                 candidate.sop_instance_uid, waveform.recording_type,
                 ",".join(map(str, created)))

    def _refuse(self, candidate: WaveformCandidate, fingerprint: str | None,
                detail: str) -> None:
        with self._connect() as conn:
            retired = retire_waveform(conn, candidate, fingerprint, "failed", detail)
        log.warning("waveform.failed sop=%s reason=%s%s", candidate.sop_instance_uid,
                    detail[:500], f"; recordings {','.join(map(str, retired))} retired"
                    if retired else "")
