"""Resumable uploads: rows in PostgreSQL (``uploads``, ``upload_chunks``; sql/0017),
bytes in object storage.

Each chunk is stored as it arrives, as its own object, under a name no other write
uses (``uploads/<id>/<first>-<last>-<random>``): a chunk sent again never
overwrites an object that a concurrent claim may be reading, and a chunk whose row
could not be written leaves no row pointing at it. The row of the replaced chunk
then points at the new object and the old one is deleted.

Concurrency rests on the upload's row lock. A chunk write holds it for the few
milliseconds of its row changes (waiting at most :data:`CHUNK_LOCK_TIMEOUT`); a
claim holds it, in its own transaction, from the check that the upload is complete
until the consumer's block has finished — so a second claim, or a chunk arriving
meanwhile, is refused with 409 rather than seeing a half-consumed upload. A crash
ends the transaction, which releases the lock: nothing stays stuck.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg

from atrium.errors import BadRequest, Conflict, FieldError, Location, NotFound
from atrium.storage import OCTET_STREAM, ObjectStore, StorageError, validate_object_name
from atrium.uploads.ranges import ContentRange, Range, cover, describe, inclusive, missing

__all__ = ["CHUNK_LOCK_TIMEOUT", "Claimed", "Upload", "UploadLimits", "UploadStore"]

log = logging.getLogger(__name__)

GiB = 1024 ** 3
RECEIVING, COMPLETE, CONSUMED = "receiving", "complete", "consumed"

CHUNK_LOCK_TIMEOUT = "5s"
"""How long a chunk write waits for the upload's row: far above another chunk's
row changes, far below a claim assembling gigabytes."""

Connect = Callable[[], AbstractContextManager[Any]]


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be (``ATRIUM_UPLOAD_MAX_BYTES``, ``ATRIUM_UPLOAD_EXPIRY_HOURS``).

    ``max_chunks`` bounds the distinct byte ranges of one upload, and so its rows
    and the parts of its assembly (S3 composes at most 10,000 parts).
    """

    max_bytes: int = 64 * GiB
    expiry: dt.timedelta = dt.timedelta(hours=24)
    max_chunks: int = 10_000

    def __post_init__(self) -> None:
        if self.max_bytes <= 0 or self.max_chunks <= 0:
            raise ValueError("max_bytes and max_chunks must be positive")
        if self.expiry <= dt.timedelta(0):
            raise ValueError("expiry must be a positive duration")


@dataclass(frozen=True)
class Upload:
    """An upload as its owner sees it. ``missing`` holds half-open ranges."""

    id: uuid.UUID
    organization_id: uuid.UUID
    user_id: uuid.UUID
    filename: str
    media_type: str
    size: int  # bytes, as declared when it was created
    received: int  # distinct bytes received
    status: str  # receiving | complete | consumed
    missing: tuple[Range, ...]
    created_at: dt.datetime
    updated_at: dt.datetime
    expires_at: dt.datetime

    @property
    def complete(self) -> bool:
        return not self.missing


@dataclass(frozen=True)
class Claimed:
    """What a consumer gets inside :meth:`UploadStore.claim`: the assembled object."""

    upload_id: uuid.UUID
    name: str  # the destination object, holding the whole file
    size: int  # bytes
    filename: str  # as the client declared it
    media_type: str


_COLUMNS = ("id, organization_id, user_id, filename, media_type, size_bytes, received_bytes, "
            "status, created_at, updated_at, expires_at")
_FIND = (f"SELECT {_COLUMNS} FROM uploads "
         "WHERE id = %s AND user_id = %s AND expires_at > now()")
_CREATE = (f"INSERT INTO uploads (organization_id, user_id, filename, media_type, size_bytes, "
           f"expires_at) VALUES (%s, %s, %s, %s, %s, now() + %s) RETURNING {_COLUMNS}")
_RANGES = "SELECT start_byte, end_byte FROM upload_chunks WHERE upload_id = %s"
_CHUNKS = ("SELECT object_name, start_byte, end_byte FROM upload_chunks WHERE upload_id = %s "
           "ORDER BY received_at DESC, object_name")
_CHUNK_NAMES = "SELECT object_name FROM upload_chunks WHERE upload_id = %s"
_SAME_CHUNK = ("SELECT object_name FROM upload_chunks "
               "WHERE upload_id = %s AND start_byte = %s AND end_byte = %s")
_COUNT_CHUNKS = "SELECT count(*) FROM upload_chunks WHERE upload_id = %s"
_PUT_CHUNK = """
INSERT INTO upload_chunks (upload_id, start_byte, end_byte, object_name) VALUES (%s, %s, %s, %s)
ON CONFLICT (upload_id, start_byte, end_byte)
DO UPDATE SET object_name = EXCLUDED.object_name, received_at = now()
"""
_PROGRESS = (f"UPDATE uploads SET received_bytes = %s, status = %s, expires_at = now() + %s "
             f"WHERE id = %s RETURNING {_COLUMNS}")
_CONSUME = ("UPDATE uploads SET status = 'consumed', consumed_at = now(), "
            "expires_at = now() + %s WHERE id = %s")
# Expired uploads, and consumed ones whose chunks a claim could not delete.
_NEXT_TO_CLEAN = """
SELECT u.id, u.expires_at <= now() FROM uploads u
 WHERE u.expires_at <= now()
    OR (u.status = 'consumed' AND EXISTS (SELECT 1 FROM upload_chunks c WHERE c.upload_id = u.id))
 ORDER BY u.expires_at LIMIT 1
 FOR UPDATE OF u SKIP LOCKED
"""


def _size_text(size: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1024 ** 2)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} bytes"


def _as_upload(row: Sequence[Any], gaps: Sequence[Range]) -> Upload:
    """An ``uploads`` row (columns of ``_COLUMNS``) and its missing ranges."""
    (upload_id, organization_id, user_id, filename, media_type, size, received, status,
     created_at, updated_at, expires_at) = row
    return Upload(upload_id, organization_id, user_id, filename, media_type, size, received,
                  status, tuple(gaps), created_at, updated_at, expires_at)


def _not_found(upload_id: uuid.UUID) -> NotFound:
    return NotFound(f"No upload {upload_id}: it does not exist, is another user's, or has "
                    "expired. Start again with POST /api/uploads.")


def _invalid(location: Location, name: str, message: str) -> BadRequest:
    return BadRequest.invalid([FieldError(location, name, message)])


class UploadStore:
    """Resumable uploads of one Atrium: create, receive chunks, read, claim, expire.

    Parameters
    ----------
    connect
        Lends a psycopg connection as a context manager (``pool.connection``).
    objects
        Where chunks and assembled files are stored.
    limits
        Largest upload, expiry, most chunks.
    """

    def __init__(self, connect: Connect, objects: ObjectStore,
                 limits: UploadLimits | None = None) -> None:
        self._connect = connect
        self._objects = objects
        self.limits = limits or UploadLimits()

    # ---------------------------------------------------------------- reading

    def _upload(self, conn: Any, row: Sequence[Any]) -> Upload:
        return _as_upload(row, missing(conn.execute(_RANGES, (row[0],)).fetchall(), row[5]))

    def _find(self, conn: Any, upload_id: uuid.UUID, user_id: uuid.UUID,
              lock: str = "") -> Upload:
        row = conn.execute(_FIND + lock, (upload_id, user_id)).fetchone()
        if row is None:
            raise _not_found(upload_id)
        return self._upload(conn, row)

    def get(self, upload_id: uuid.UUID, user_id: uuid.UUID) -> Upload:
        """The upload, if ``user_id`` created it and it has not expired.

        Raises
        ------
        NotFound
            Alike for an upload that does not exist, another user's, and an expired one.
        """
        with self._connect() as conn:
            return self._find(conn, upload_id, user_id)

    # ---------------------------------------------------------------- writing

    def create(self, *, user_id: uuid.UUID, organization_id: uuid.UUID, filename: str,
               size: int, media_type: str = OCTET_STREAM) -> Upload:
        """A new, empty upload of a ``size``-byte file.

        Raises
        ------
        BadRequest
            When ``size`` is not between 1 byte and ``limits.max_bytes``.
        """
        if not 0 < size <= self.limits.max_bytes:
            raise _invalid("body", "size", f"must be between 1 and {self.limits.max_bytes} "
                           f"bytes ({_size_text(self.limits.max_bytes)}, the largest upload "
                           "this server accepts)")
        with self._connect() as conn:
            row = conn.execute(_CREATE, (organization_id, user_id, filename, media_type, size,
                                         self.limits.expiry)).fetchone()
            upload = self._upload(conn, row)
        log.info("upload.created id=%s user=%s bytes=%d", upload.id, user_id, size)
        return upload

    def put_chunk(self, upload_id: uuid.UUID, user_id: uuid.UUID, chunk: ContentRange,
                  data: bytes) -> Upload:
        """Store ``data`` as the bytes ``chunk`` names; return the upload after it.

        A chunk may be sent again (it replaces the earlier one of the same range) and
        may overlap others. Each chunk pushes the upload's expiry back.

        Raises
        ------
        NotFound
            As :meth:`get`.
        Conflict
            When the upload is consumed, being claimed, or has ``limits.max_chunks``
            ranges already.
        BadRequest
            When ``data`` is empty or not ``chunk.length`` bytes, or ``chunk.total``
            is not the upload's size. Nothing is stored then.
        """
        upload = self.get(upload_id, user_id)
        if upload.status == CONSUMED:
            raise self._consumed(upload.id)
        if not data:
            raise _invalid("body", "", "the chunk is empty: send the bytes its Content-Range "
                           "names")
        if chunk.total != upload.size:
            raise _invalid("header", "content-range",
                           f"SIZE is {chunk.total} but this upload is of a {upload.size}-byte "
                           "file; send the whole file's size after '/'")
        if len(data) != chunk.length:
            raise _invalid("body", "", f"the body has {len(data)} bytes but Content-Range "
                           f"'{chunk}' names {chunk.length}; send exactly those bytes")
        name = f"uploads/{upload.id}/{chunk.start}-{chunk.end - 1}-{secrets.token_hex(4)}"
        self._objects.put(name, data, length=len(data))
        try:
            replaced, upload = self._record_chunk(upload, user_id, chunk, name)
        except BaseException:
            self._delete_quietly([name])
            raise
        if replaced:
            self._delete_quietly([replaced])
        log.debug("upload.chunk id=%s start=%d end=%d received=%d", upload.id, chunk.start,
                  chunk.end, upload.received)
        return upload

    def _record_chunk(self, upload: Upload, user_id: uuid.UUID, chunk: ContentRange,
                      name: str) -> tuple[str | None, Upload]:
        """The chunk's row and the upload's progress; the name of the object replaced."""
        with self._connect() as conn, conn.transaction():
            conn.execute("SELECT set_config('lock_timeout', %s, true)", (CHUNK_LOCK_TIMEOUT,))
            try:
                current = self._find(conn, upload.id, user_id, " FOR NO KEY UPDATE")
            except psycopg.errors.LockNotAvailable:
                raise self._busy(upload.id) from None
            if current.status == CONSUMED:
                raise self._consumed(upload.id)
            found = conn.execute(_SAME_CHUNK, (upload.id, chunk.start, chunk.end)).fetchone()
            if found is None:
                count = conn.execute(_COUNT_CHUNKS, (upload.id,)).fetchone()[0]
                if count >= self.limits.max_chunks:
                    raise Conflict(
                        f"Upload {upload.id} has {count} chunks, the most one upload may "
                        f"have; send the {describe(current.missing)} still missing in fewer, "
                        "larger chunks, or start again with larger chunks.")
            conn.execute(_PUT_CHUNK, (upload.id, chunk.start, chunk.end, name))
            ranges = conn.execute(_RANGES, (upload.id,)).fetchall()
            gaps = missing(ranges, current.size)
            received = current.size - sum(end - start for start, end in gaps)
            row = conn.execute(_PROGRESS, (received, RECEIVING if gaps else COMPLETE,
                                           self.limits.expiry, upload.id)).fetchone()
            return (found[0] if found else None), _as_upload(row, gaps)

    # --------------------------------------------------------------- claiming

    @contextmanager
    def claim(self, upload_id: uuid.UUID, user_id: uuid.UUID,
              destination: str) -> Iterator[Claimed]:
        """Assemble a complete upload into the object ``destination`` for a consumer::

            with uploads.claim(upload_id, caller.user_id, f"slides/{slide_id}/original") as c:
                ...  # read c.name (c.size bytes), record it; raising undoes the claim

        The upload is locked for the whole block. When the block returns, the upload
        is consumed and its chunk objects are deleted; when it raises, the destination
        object is deleted and the upload stays complete, claimable again.

        Raises
        ------
        NotFound
            As :meth:`get`.
        Conflict
            When the upload is not complete (the problem's ``missing`` lists the
            inclusive byte ranges to send), is consumed, or another claim or a chunk
            write holds it.
        InvalidObjectName
            When ``destination`` is not a valid object name.
        StorageError
            When the chunks cannot be assembled; the upload stays complete.
        """
        validate_object_name(destination)
        with self._connect() as conn:
            with conn.transaction():
                try:
                    upload = self._find(conn, upload_id, user_id, " FOR UPDATE NOWAIT")
                except psycopg.errors.LockNotAvailable:
                    raise self._busy(upload_id) from None
                if upload.status == CONSUMED:
                    raise self._consumed(upload.id)
                if upload.missing:
                    raise Conflict(
                        f"Upload {upload.id} is not complete: {describe(upload.missing)} have "
                        f"not been received. PUT them to /api/uploads/{upload.id} first "
                        "('missing' lists them as inclusive byte ranges).",
                        missing=inclusive(upload.missing))
                chunks = conn.execute(_CHUNKS, (upload.id,)).fetchall()
                parts = cover(chunks, upload.size)
                size = self._objects.compose(destination, parts, content_type=upload.media_type)
                claimed = Claimed(upload.id, destination, size, upload.filename,
                                  upload.media_type)
                try:
                    yield claimed
                except BaseException:
                    self._delete_quietly([destination])
                    log.info("upload.claim_undone id=%s", upload.id)
                    raise
                conn.execute(_CONSUME, (self.limits.expiry, upload.id))
            log.info("upload.consumed id=%s destination=%s bytes=%d parts=%d", upload.id,
                     destination, size, len(parts))
            # Committed: from here on the chunks are garbage, which expire() also sweeps.
            with conn.transaction():
                self._delete_chunks(conn, upload.id)

    # --------------------------------------------------------------- expiring

    def expire(self) -> int:
        """Delete every upload past its ``expires_at`` — its chunk objects first, then
        its rows — and the leftover chunks of consumed uploads; return how many
        uploads were deleted. An upload being claimed is skipped. When storage fails,
        the sweep stops (logged) and the next one resumes it."""
        deleted = 0
        while True:
            with self._connect() as conn, conn.transaction():
                row = conn.execute(_NEXT_TO_CLEAN).fetchone()
                if row is None:
                    break
                upload_id, expired = row
                if not self._delete_chunks(conn, upload_id):
                    break
                if expired:
                    conn.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
                    deleted += 1
        if deleted:
            log.info("upload.expired count=%d", deleted)
        return deleted

    # ---------------------------------------------------------------- helpers

    def _delete_chunks(self, conn: Any, upload_id: uuid.UUID) -> bool:
        """The upload's chunk objects, then their rows; False (rows kept) when storage
        failed."""
        names = [row[0] for row in conn.execute(_CHUNK_NAMES, (upload_id,)).fetchall()]
        try:
            for name in names:
                self._objects.delete(name)
        except StorageError as exc:
            log.warning("upload.chunks_not_deleted id=%s reason=%s", upload_id, exc)
            return False
        conn.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (upload_id,))
        return True

    def _delete_quietly(self, names: list[str]) -> None:
        for name in names:
            try:
                self._objects.delete(name)
            except StorageError as exc:
                log.warning("upload.object_not_deleted name=%s reason=%s", name, exc)

    @staticmethod
    def _consumed(upload_id: uuid.UUID) -> Conflict:
        return Conflict(f"Upload {upload_id} has been consumed already: its file was stored "
                        "and its chunks deleted. Start a new upload to send the file again.")

    @staticmethod
    def _busy(upload_id: uuid.UUID) -> Conflict:
        return Conflict(f"Upload {upload_id} is being claimed or written by another request; "
                        "retry in a moment.")
