"""Keeping hostile files away from every parser the mirror would set on them.

The mirror asks Orthanc to parse each instance's file once (its whole header).
Orthanc 1.10 parses by recursion on a small HTTP-thread stack, so one file with
sequences nested a few thousand deep kills the process — and, since the mirror
asks again after every restart, keeps killing it. Two layers stop that:

* **The scan.** Before Orthanc is asked to parse a file, :class:`InstanceGuard`
  streams its bytes (``/instances/{id}/file``: a copy, no parse) through
  :func:`atrium.dicom.scan.scan_stream`. A file it refuses is quarantined.
* **Crash memory.** Around every parse Atrium causes, :class:`ParseMemory` keeps
  the instance's id in a small file of its own process. A crash leaves the file
  behind; the next start reads it. The process may have ended for a reason of
  its own (``kill -9``, the OOM killer, a power cut of its container), so a
  suspect is not yet a culprit: each is read again *alone*, marked as such. Only
  an instance that was being read again alone when the process died is
  quarantined — at most two crashes, never a loop, and a file Orthanc reads
  well is never set aside because the process was killed under it.

Quarantine (:class:`Quarantine`) keeps the file in object storage
(``quarantine/<orthanc id>.dcm``), records why in ``quarantined_instances``, writes
an audit row and a log line, and removes the instance from Orthanc, where any
reader — a DICOMweb client, Orthanc's own API — could trip on it again. The
mirror skips it; ``atrium status`` and ``GET /api/mirror/status`` list it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from atrium.auth.audit import AuditEvent, record
from atrium.dicom.scan import DEFAULT_LIMITS, DicomLimits, UnsafeDicom, scan_stream
from atrium.orthanc_api import OrthancError

log = logging.getLogger(__name__)

__all__ = ["InstanceGuard", "ParseMemory", "Quarantine", "quarantine_listing"]

FileReader = Callable[[str], contextlib.AbstractContextManager[tuple[Callable[[int], bytes],
                                                                      int | None]]]
"""Orthanc id → a context giving ``(read(n), size)`` over the instance's raw file."""

CRASH_REASON = ("Orthanc stopped while reading this file for Atrium, and stopped again "
                "when it was read alone; it is kept aside so that it cannot stop Orthanc "
                "again.")


class OrthancReader(Protocol):
    def get_json(self, path: str) -> Any: ...

    def delete(self, path: str) -> None: ...


_AGAIN = "again"
"""The mark of a parse that is itself the re-reading of a crash suspect."""
_END = "."
"""The line that ends a record of :class:`ParseMemory`."""


class ParseMemory:
    """The instances whose files Orthanc is parsing for this process right now,
    written to ``<directory>/<pid>`` on every change (no fsync: it must outlive a
    crash of the process, not of the machine). One line per instance: its id, and
    ``again`` when it is being read again alone after a crash; then a line ``.``.

    The file is rewritten in place, never replaced by a new one: a rename per parse
    made the filesystem write each new file out at once, and under a burst of stores
    that competed with PostgreSQL's and Orthanc's own writes. A shorter record written
    over a longer one leaves the longer one's tail behind its ``.`` until the file is
    cut to length, so a reader stops at the first ``.``."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._mine = self.directory / str(os.getpid())
        self._in_flight: dict[tuple[str, bool], int] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None

    def left_over(self) -> dict[str, bool]:
        """Instances other processes were parsing when they ended without clearing
        them, each with whether it was already being read again alone; their files
        are removed (the caller now owns the answer)."""
        found: dict[str, bool] = {}
        if not self.directory.is_dir():
            return found
        for path in sorted(self.directory.iterdir()):
            if path == self._mine or (path.name.isdigit() and _alive(int(path.name))):
                continue
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    if line == _END:
                        break
                    orthanc_id, _, mark = line.partition(" ")
                    if orthanc_id:
                        found[orthanc_id] = found.get(orthanc_id, False) or mark == _AGAIN
                path.unlink()
        return found

    @contextlib.contextmanager
    def parsing(self, orthanc_id: str, again: bool = False) -> Iterator[None]:
        key = (orthanc_id, again)
        with self._lock:
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            self._write()
        try:
            yield
        finally:
            with self._lock:
                count = self._in_flight.pop(key, 1) - 1
                if count:
                    self._in_flight[key] = count
                self._write()

    def _write(self) -> None:
        record = "".join(f"{orthanc_id} {_AGAIN}\n" if again else f"{orthanc_id}\n"
                         for orthanc_id, again in self._in_flight) + _END + "\n"
        if self._fd is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self._mine, os.O_WRONLY | os.O_CREAT, 0o600)
        data = record.encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Stream:
    """A ``read(n)`` callable as the stream object storage copies from."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def read(self, size: int = -1, /) -> bytes:
        return self._read(size if size > 0 else 1 << 20)


_QUARANTINED_IDS = "SELECT orthanc_id FROM quarantined_instances"
_ORGANIZATION_ID = "SELECT id FROM organizations WHERE name = %s"
_INSERT = """
INSERT INTO quarantined_instances (orthanc_id, organization_id, sop_instance_uid,
    series_instance_uid, study_instance_uid, remote_aet, origin, detected_by, reason,
    file_size_bytes, object_key)
VALUES (%(orthanc_id)s, %(organization_id)s, %(sop)s, %(series)s, %(study)s, %(aet)s,
        %(origin)s, %(detected_by)s, %(reason)s, %(size)s, %(object_key)s)
ON CONFLICT (orthanc_id) DO NOTHING
RETURNING id
"""
_REMOVED = "UPDATE quarantined_instances SET removed_from_orthanc = true WHERE orthanc_id = %s"
_LISTING = """
SELECT count(*) OVER (), orthanc_id, sop_instance_uid, study_instance_uid, remote_aet,
       origin, detected_by, reason, file_size_bytes, object_key, removed_from_orthanc,
       quarantined_at
FROM quarantined_instances ORDER BY quarantined_at DESC, id LIMIT %s
"""


def _cut(value: Any, width: int) -> str | None:
    text = str(value).replace("\x00", "").strip() if value is not None else ""
    return text[:width] or None


class Quarantine:
    """Sets instances aside: file to object storage, a row, an audit row, a log
    line, then removal from Orthanc."""

    def __init__(self, api: OrthancReader, read_file: FileReader, connect: Callable[[], Any],
                 store: Any, organization_for: Callable[[dict[str, Any]], str]) -> None:
        self.api = api
        self.read_file = read_file
        self.connect = connect
        self.store = store
        self.organization_for = organization_for
        self._known: set[str] | None = None
        self._lock = threading.Lock()

    def contains(self, orthanc_id: str) -> bool:
        with self._lock:
            if self._known is None:
                with self.connect() as conn:
                    self._known = {row[0] for row in conn.execute(_QUARANTINED_IDS)}
            return orthanc_id in self._known

    def add(self, orthanc_id: str, reason: str, detected_by: str) -> None:
        """Quarantine one instance; raises :class:`OrthancError` 404 when it has gone."""
        base = f"/instances/{orthanc_id}"
        # All three answers come from Orthanc's index: none parses the file.
        metadata: dict[str, Any] = self.api.get_json(f"{base}/metadata?expand")
        instance = self.api.get_json(base).get("MainDicomTags", {})
        series = self._parent(f"{base}/series")
        study = self._parent(f"{base}/study")
        object_key = f"quarantine/{orthanc_id}.dcm"
        with self.read_file(orthanc_id) as (read, size):
            stored = self.store.put(object_key, _Stream(read), size,
                                    content_type="application/dicom")
        organization = self.organization_for(metadata)
        with self.connect() as conn, conn.transaction():
            row = conn.execute(_ORGANIZATION_ID, (organization,)).fetchone()
            organization_id = row[0] if row else None
            inserted = conn.execute(_INSERT, {
                "orthanc_id": orthanc_id, "organization_id": organization_id,
                "sop": _cut(instance.get("SOPInstanceUID"), 255),
                "series": _cut(series.get("SeriesInstanceUID"), 255),
                "study": _cut(study.get("StudyInstanceUID"), 255),
                "aet": _cut(metadata.get("RemoteAET"), 64),
                "origin": _cut(metadata.get("Origin"), 32),
                "detected_by": detected_by, "reason": reason[:2000], "size": stored,
                "object_key": object_key}).fetchone()
            if inserted is not None:
                record(conn, AuditEvent(
                    action="mirror.quarantine", organization_id=organization_id,
                    resource_type="instance", details={
                        "orthanc_id": orthanc_id, "detected_by": detected_by,
                        "reason": reason[:500], "remote_aet": _cut(metadata.get("RemoteAET"), 64),
                        "object_key": object_key}))
        with self._lock:
            if self._known is not None:
                self._known.add(orthanc_id)
        log.warning("mirror.quarantined instance=%s detected_by=%s remote_aet=%s reason=%r "
                    "kept_as=%s", orthanc_id, detected_by, metadata.get("RemoteAET"), reason,
                    object_key)
        try:
            self.api.delete(base)
        except OrthancError as exc:
            if exc.status != 404:
                raise
        with self.connect() as conn:
            conn.execute(_REMOVED, (orthanc_id,))

    def _parent(self, path: str) -> dict[str, Any]:
        try:
            return dict(self.api.get_json(path).get("MainDicomTags", {}))
        except OrthancError:
            return {}


class InstanceGuard:
    """The gate every parse of an instance's file that Atrium causes goes through."""

    def __init__(self, quarantine: Quarantine, memory: ParseMemory,
                 limits: DicomLimits = DEFAULT_LIMITS) -> None:
        self.quarantine = quarantine
        self.memory = memory
        self.limits = limits

    def admit(self, orthanc_id: str) -> bool:
        """Whether Orthanc may be asked to parse this instance's file: False when it
        is (now, or was already) quarantined. Raises :class:`OrthancError` (404:
        gone) when the file cannot be read."""
        if self.quarantine.contains(orthanc_id):
            return False
        try:
            with self.quarantine.read_file(orthanc_id) as (read, size):
                scan_stream(read, size, self.limits, require_uids=False)
        except UnsafeDicom as unsafe:
            self.quarantine.add(orthanc_id, str(unsafe), "scan")
            return False
        return True

    def parsing(self, orthanc_id: str) -> contextlib.AbstractContextManager[None]:
        return self.memory.parsing(orthanc_id)

    def recover(self, reparse: Callable[[str], Any]) -> list[str]:
        """After the process died: quarantine each instance that was being read
        again alone when it did (its parse stopped Orthanc twice), and read every
        other suspect again alone (``reparse``) — the death may have had nothing to
        do with it. Returns the instances quarantined now."""
        suspects = self.memory.left_over()
        if not suspects:
            return []
        log.warning("mirror.crash_suspects count=%d instances=%s", len(suspects),
                    ",".join(list(suspects)[:20]))
        culprits = [orthanc_id for orthanc_id, again in suspects.items() if again]
        quarantined: list[str] = []
        for orthanc_id in culprits:
            try:
                self.quarantine.add(orthanc_id, CRASH_REASON, "crash")
                quarantined.append(orthanc_id)
            except OrthancError as exc:
                if exc.status != 404:
                    raise
        for orthanc_id in suspects:
            if orthanc_id in culprits:
                continue
            try:
                if self.admit(orthanc_id):
                    with self.memory.parsing(orthanc_id, again=True):
                        reparse(orthanc_id)
                log.info("mirror.crash_suspect_cleared instance=%s", orthanc_id)
            except OrthancError as exc:
                if exc.status != 404:
                    raise
        return quarantined


def quarantine_listing(conn: Any, limit: int = 20) -> dict[str, Any]:
    """The number of quarantined instances and the newest ``limit`` of them."""
    rows = conn.execute(_LISTING, (limit,)).fetchall()
    columns = ("orthanc_id", "sop_instance_uid", "study_instance_uid", "remote_aet", "origin",
               "detected_by", "reason", "file_size_bytes", "object_key",
               "removed_from_orthanc", "quarantined_at")
    return {"count": rows[0][0] if rows else 0,
            "newest": [dict(zip(columns, row[1:], strict=True)) for row in rows]}
