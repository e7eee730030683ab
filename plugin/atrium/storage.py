"""Object storage behind one small interface: a directory (``file://``) or S3 (``s3://``).

Slides, recordings, model artefacts and exports are stored as objects under names
that :func:`validate_object_name` accepts, so a name can never leave its directory
or bucket. Constructing a store does no I/O: call ``check()`` (and, for S3,
``ensure_bucket()``) at start-up. Both stores may be shared between threads.
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ComposeSource
from minio.error import MinioException, S3Error
from minio.helpers import check_bucket_name

logger = logging.getLogger(__name__)

MAX_NAME_LENGTH = 512
#: Most filesystems refuse a single path component longer than 255 bytes.
MAX_SEGMENT_LENGTH = 255
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
_CHUNK = 1024 * 1024
# "~" is not allowed in object names, so a temporary file never collides with an object.
_TMP_PREFIX = ".atrium~"
_MIB = 1024 * 1024


class StorageError(Exception):
    """Object storage is unusable or refused an operation; the message says why."""


class ObjectNotFound(StorageError):
    """No object has this name."""


class InvalidObjectName(StorageError, ValueError):
    """An object name breaks the rules of :func:`validate_object_name`."""


_HINTS = {
    "\\": "a backslash; separate segments with '/'",
    "%": "'%'; names are never percent-decoded, write the characters themselves",
}


def _describe(char: str) -> str:
    if char in _HINTS:
        return _HINTS[char]
    return repr(char) if char.isascii() and char.isprintable() else f"U+{ord(char):04X}"


def validate_object_name(name: str) -> str:
    """Return ``name`` unchanged if it is a safe object name, else raise.

    A name is 1-512 characters of '/'-separated segments; each segment is 1-255 of
    the ASCII letters, digits, ``.``, ``_`` and ``-``, and is neither ``.`` nor
    ``..``. Non-ASCII is refused rather than normalised, so look-alikes (fullwidth
    letters, U+2215 DIVISION SLASH) cannot alias other names, and an accepted name is
    already in normal form: it means the same key on every backend.

    Raises
    ------
    InvalidObjectName
        With a sentence naming the broken rule (never echoing the whole name).
    """
    if not isinstance(name, str):
        raise InvalidObjectName(f"an object name must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidObjectName("the object name is empty")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidObjectName(
            f"the object name is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    if name.startswith("/"):
        raise InvalidObjectName("the object name must be relative: remove the leading '/'")
    for segment in name.split("/"):
        if not segment:
            raise InvalidObjectName("the object name has an empty segment ('//' or a trailing '/')")
        if segment in {".", ".."}:
            raise InvalidObjectName("the object name must not contain '.' or '..' segments")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise InvalidObjectName(
                f"a segment of the object name is longer than {MAX_SEGMENT_LENGTH} characters"
            )
        if not _SEGMENT.fullmatch(segment):
            bad = next(c for c in segment if not _SEGMENT.fullmatch(c))
            raise InvalidObjectName(
                f"the object name contains {_describe(bad)}; use only ASCII letters, digits, "
                "'.', '_', '-' and '/' between segments"
            )
    return name


class ReadableStream(Protocol):
    """Anything with a binary ``read``: an open file, ``io.BytesIO``, an HTTP body."""

    def read(self, size: int = -1, /) -> bytes: ...


Data = bytes | memoryview | ReadableStream
OCTET_STREAM = "application/octet-stream"
Part = tuple[str, int, int]
"""A piece of an object for :meth:`ObjectStore.compose`: (source name, offset, length)."""


class RangeReader(Protocol):
    """Ranges of one object (:meth:`ObjectStore.open_ranges`); safe to share
    between threads."""

    def read(self, offset: int, length: int) -> bytes:
        """At most ``length`` bytes from ``offset``: fewer at the end, none past it."""

    def close(self) -> None:
        """Release what the reader holds."""


@runtime_checkable
class ObjectStore(Protocol):
    """Named blobs. Every method validates ``name`` first (:class:`InvalidObjectName`)."""

    def put(
        self, name: str, data: Data, length: int | None = None, content_type: str = OCTET_STREAM
    ) -> int:
        """Store ``data`` under ``name``, replacing any object there; return the bytes written.

        A stream is copied in bounded chunks. With ``length``, exactly that many bytes
        are read (a longer stream is left unread, a shorter one raises
        :class:`StorageError`); without, to the end. The object appears whole or not
        at all: a failed put leaves the previous object intact.
        """

    def compose(
        self, name: str, parts: Sequence[Part], content_type: str = OCTET_STREAM
    ) -> int:
        """Store under ``name`` the concatenation of ``parts``; return the bytes written.

        Each part is ``(source name, offset, length)``: that many bytes of the source
        object from that offset, which the source must hold (else
        :class:`StorageError`; :class:`ObjectNotFound` for a missing source). Sources
        are left as they are and may include ``name`` itself. Memory stays bounded
        whatever the sizes, and the object appears whole or not at all, like ``put``.
        """

    def get(self, name: str) -> AbstractContextManager[ReadableStream]:
        """Stream the object: ``with store.get(name) as stream``; ObjectNotFound on entering.

        Leaving the block releases the file or connection, read to the end or not.
        """

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """At most ``length`` bytes from ``offset``: fewer at the end, none past it."""

    def open_ranges(self, name: str) -> RangeReader:
        """A reader of the object's ranges for many reads (a slide's tiles): the file
        store opens the file once, and each read is then one system call; object
        storage sends each read as a ranged GET. :class:`ObjectNotFound` when absent."""

    def delete(self, name: str) -> None:
        """Remove the object; deleting an absent object is not an error."""

    def exists(self, name: str) -> bool:
        """Whether an object has this name."""

    def size(self, name: str) -> int:
        """The object's size in bytes; :class:`ObjectNotFound` if absent."""

    def url(self, name: str) -> str:
        """The canonical location: ``file:///root/name`` or ``s3://bucket/prefix/name``."""

    def check(self) -> None:
        """Health probe: raises :class:`StorageError` saying why the store is unusable."""


def _read_bytes(stream: ReadableStream, size: int) -> bytes:
    chunk = stream.read(size)
    if not isinstance(chunk, bytes | bytearray):
        raise TypeError("the stream must be binary: open it with 'rb', not 'r'")
    return bytes(chunk)


class _ViewReader:
    """Reads a memoryview (a file part of a request body) without copying it whole."""

    def __init__(self, view: memoryview) -> None:
        self._view = view.cast("B")
        self._position = 0

    def read(self, size: int = -1, /) -> bytes:
        end = len(self._view) if size < 0 else min(len(self._view), self._position + size)
        chunk = bytes(self._view[self._position:end])
        self._position = end
        return chunk


def _as_stream(data: Data, length: int | None) -> tuple[ReadableStream, int | None]:
    if length is not None and length < 0:
        raise ValueError(f"length must be None (unknown) or >= 0, got {length}")
    if isinstance(data, memoryview):
        if length is not None and length != data.nbytes:
            raise ValueError(f"length is {length} but the data has {data.nbytes} bytes")
        return _ViewReader(data), data.nbytes
    if isinstance(data, bytes | bytearray):
        if length is not None and length != len(data):
            raise ValueError(f"length is {length} but the data has {len(data)} bytes")
        return io.BytesIO(data), len(data)
    return data, length


class _FileRanges:
    """An open object file read with ``pread``: no path checks, opening or seeking
    per read, and a single release of the GIL, which other HTTP threads wait for."""

    def __init__(self, stream: BinaryIO, name: str) -> None:
        self._stream, self._name = stream, name
        self._fd = stream.fileno()

    def read(self, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        try:
            data = os.pread(self._fd, length, offset)
            while len(data) < length:  # a short read is allowed; the end gives b""
                more = os.pread(self._fd, length - len(data), offset + len(data))
                if not more:
                    break
                data += more
        except OSError as exc:
            raise StorageError(f"cannot read object {self._name!r}: "
                               f"{exc.strerror or exc}") from exc
        return data

    def close(self) -> None:
        self._stream.close()


class _EachRange:
    """Ranges of an object that has no handle to keep: one ranged read each."""

    def __init__(self, store: ObjectStore, name: str) -> None:
        self._store, self._name = store, name

    def read(self, offset: int, length: int) -> bytes:
        return self._store.get_range(self._name, offset, length)

    def close(self) -> None:
        pass


def _check_range(offset: int, length: int) -> None:
    if offset < 0 or length < 0:
        raise ValueError(f"offset and length must be >= 0, got offset={offset} length={length}")


def _checked_parts(parts: Sequence[Part]) -> list[Part]:
    """``parts`` with every name validated and empty parts dropped."""
    checked = []
    for source, offset, length in parts:
        validate_object_name(source)
        _check_range(offset, length)
        if length:
            checked.append((source, offset, length))
    return checked


def _short_source(source: str, size: int, offset: int, length: int) -> StorageError:
    return StorageError(f"object {source!r} has {size} bytes: it has no {length} bytes "
                        f"from offset {offset} to compose")


class FileObjectStore:
    """Objects as files under ``root`` (created as needed).

    Writes go to a temporary file in the object's directory, are fsynced, and are
    renamed over the object, so readers see the old or the new object, never a
    mix. Files are created mode 0600. The content type is not kept. A name cannot
    be both an object and a directory of objects (``a`` and ``a/b``): storing the
    second raises :class:`StorageError`.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def _path(self, name: str) -> Path:
        path = self.root / validate_object_name(name)
        # Defense in depth: a symbolic link inside root must not lead outside it.
        if not path.resolve().is_relative_to(self.root):
            logger.warning("object path leaves the store root=%s name=%s", self.root, name)
            raise StorageError(f"object {name!r} resolves outside the storage directory")
        return path

    def put(
        self, name: str, data: Data, length: int | None = None, content_type: str = OCTET_STREAM
    ) -> int:
        path = self._path(name)
        stream, length = _as_stream(data, length)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        except OSError as exc:
            raise StorageError(f"cannot store object {name!r}: {exc.strerror or exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                written = _copy(stream, out, length)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            _fsync_directory(path.parent)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot store object {name!r}: {exc.strerror or exc}") from exc
            raise
        logger.debug("object stored backend=file name=%s bytes=%d", name, written)
        return written

    def compose(
        self, name: str, parts: Sequence[Part], content_type: str = OCTET_STREAM
    ) -> int:
        path = self._path(name)
        checked = _checked_parts(parts)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
        except OSError as exc:
            raise StorageError(f"cannot store object {name!r}: {exc.strerror or exc}") from exc
        try:
            try:
                for source, offset, length in checked:
                    with self._open(source) as stream:
                        size = os.fstat(stream.fileno()).st_size
                        if offset + length > size:
                            raise _short_source(source, size, offset, length)
                        _append_range(stream.fileno(), fd, offset, length)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            _fsync_directory(path.parent)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(tmp)
            if isinstance(exc, OSError):
                raise StorageError(f"cannot store object {name!r}: {exc.strerror or exc}") from exc
            raise
        written = sum(length for _, _, length in checked)
        logger.debug("object composed backend=file name=%s parts=%d bytes=%d",
                     name, len(checked), written)
        return written

    def _open(self, name: str) -> BinaryIO:
        try:
            return self._path(name).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object named {name!r}") from exc
        except OSError as exc:
            raise StorageError(f"cannot read object {name!r}: {exc.strerror or exc}") from exc

    @contextmanager
    def get(self, name: str) -> Iterator[ReadableStream]:
        with self._open(name) as stream:
            yield stream

    def open_ranges(self, name: str) -> RangeReader:
        return _FileRanges(self._open(name), name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        with self._open(name) as stream:
            stream.seek(offset)
            return stream.read(length)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink(missing_ok=True)
        except (IsADirectoryError, NotADirectoryError):
            return  # a directory of other objects, or under an object: no object to delete
        except OSError as exc:
            raise StorageError(f"cannot delete object {name!r}: {exc.strerror or exc}") from exc
        logger.debug("object deleted backend=file name=%s", name)

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def size(self, name: str) -> int:
        path = self._path(name)
        if not path.is_file():
            raise ObjectNotFound(f"no object named {name!r}")
        return path.stat().st_size

    def url(self, name: str) -> str:
        return self._path(name).as_uri()

    def check(self) -> None:
        """Create the root if missing and prove a file can be written there."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=self.root, prefix=_TMP_PREFIX)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise StorageError(
                f"storage directory {self.root} is unusable: {exc.strerror or exc}"
            ) from exc


def _copy(stream: ReadableStream, out: BinaryIO, length: int | None) -> int:
    written = 0
    while length is None or written < length:
        chunk = _read_bytes(stream, _CHUNK if length is None else min(_CHUNK, length - written))
        if not chunk:
            break
        out.write(chunk)
        written += len(chunk)
    if length is not None and written < length:
        raise StorageError(f"the stream ended after {written} of the {length} bytes declared")
    return written


# copy_file_range refuses some pairs of files (across filesystems on older kernels,
# some network filesystems): the bytes then go through a bounded buffer instead.
_NO_COPY_FILE_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def _append_range(source: int, out: int, offset: int, length: int) -> None:
    """Append ``length`` bytes of ``source`` from ``offset`` at ``out``'s position.

    ``copy_file_range`` moves the bytes inside the kernel (or shares blocks, on
    filesystems that can), so a gigabyte never passes through Python.
    """
    done = 0
    try:
        while done < length:
            copied = os.copy_file_range(source, out, length - done, offset + done)
            if copied == 0:
                break
            done += copied
    except OSError as exc:
        if exc.errno not in _NO_COPY_FILE_RANGE:
            raise
        while done < length:
            block = os.pread(source, min(_CHUNK, length - done), offset + done)
            if not block:
                break
            view = memoryview(block)
            while view:
                view = view[os.write(out, view):]
            done += len(block)
    if done < length:
        raise StorageError(f"a source object ended after {done} of the {length} bytes to compose")


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX only persists it with the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What the minio client raises: S3 errors, bad responses, and urllib3's network errors.
_S3_FAILURES = (MinioException, urllib3.exceptions.HTTPError, OSError)


@contextmanager
def _s3_errors(action: str, name: str, bucket: str) -> Iterator[None]:
    """Turn minio's and urllib3's exceptions into ours; NoSuchKey is ObjectNotFound."""
    try:
        yield
    except S3Error as exc:
        if exc.code == "NoSuchKey":
            raise ObjectNotFound(f"no object named {name!r}") from exc
        if exc.code == "NoSuchBucket":
            raise StorageError(f"S3 bucket {bucket!r} does not exist; create it first") from exc
        raise StorageError(f"S3 {action} of {name!r} failed: {exc.code}: {exc.message}") from exc
    except _S3_FAILURES as exc:
        raise StorageError(f"S3 {action} of {name!r} failed: {exc}") from exc


class _CountingReader:
    """Hands minio a stream's bytes (type-checked) and counts them."""

    def __init__(self, stream: ReadableStream) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = _read_bytes(self._stream, size)
        self.count += len(chunk)
        return chunk


class _ResponseReader:
    """An S3 object's body: read raw (never content-decoded); failures are StorageError."""

    def __init__(self, response: urllib3.BaseHTTPResponse, name: str, bucket: str) -> None:
        self._response, self._name, self._bucket = response, name, bucket

    def read(self, size: int = -1, /) -> bytes:
        with _s3_errors("download", self._name, self._bucket):
            chunk = self._response.read(None if size < 0 else size, decode_content=False)
        return chunk


class S3ObjectStore:
    """Objects in an S3 bucket (MinIO, AWS, moto) under an optional key ``prefix``.

    Uploads of unknown length go up in ``part_size`` parts (multipart; minio holds a
    few parts in memory at once), so memory stays bounded for objects up to 10,000
    parts. ``exists`` answers False when the bucket itself is missing: ``check()``
    tells the two apart.
    """

    def __init__(
        self, client: Minio, bucket: str, prefix: str = "", *, part_size: int = 8 * _MIB
    ) -> None:
        try:
            check_bucket_name(bucket, strict=True)
        except ValueError as exc:
            raise StorageError(
                f"{bucket!r} is not a valid S3 bucket name: use 3-63 lowercase letters, "
                "digits, '.' and '-', starting and ending with a letter or digit"
            ) from exc
        self.prefix = prefix.strip("/")
        if self.prefix:
            try:
                validate_object_name(self.prefix)
            except InvalidObjectName as exc:
                raise StorageError(f"the S3 key prefix is invalid: {exc}") from exc
        if not 5 * _MIB <= part_size <= 5 * 1024 * _MIB:
            raise ValueError("part_size must be between 5 MiB and 5 GiB (S3's limits)")
        self.client, self.bucket, self.part_size = client, bucket, part_size

    def _key(self, name: str) -> str:
        validate_object_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def put(
        self, name: str, data: Data, length: int | None = None, content_type: str = OCTET_STREAM
    ) -> int:
        key = self._key(name)
        stream, length = _as_stream(data, length)
        reader = _CountingReader(stream)
        with _s3_errors("upload", name, self.bucket):
            self.client.put_object(
                self.bucket,
                key,
                reader,  # type: ignore[arg-type]  # minio only calls read()
                length=-1 if length is None else length,
                content_type=content_type,
                part_size=self.part_size if length is None else 0,
            )
        logger.debug("object stored backend=s3 key=%s bytes=%d", key, reader.count)
        return reader.count

    def compose(
        self, name: str, parts: Sequence[Part], content_type: str = OCTET_STREAM
    ) -> int:
        """Server-side copy (``UploadPartCopy``) when S3 allows it — every part but
        the last at least 5 MiB, at most 5 GiB each, at most 10,000 — else the parts
        stream through this process into a multipart upload, a few parts at a time."""
        key = self._key(name)
        checked = _checked_parts(parts)
        sizes = {source: self.size(source) for source, _, _ in checked}
        for source, offset, length in checked:
            if offset + length > sizes[source]:
                raise _short_source(source, sizes[source], offset, length)
        total = sum(length for _, _, length in checked)
        if not _copyable_on_server(checked):
            reader = _PartsReader(self, checked)
            try:
                written = self.put(name, reader, length=total, content_type=content_type)
            finally:
                reader.close()
            logger.debug("object composed backend=s3 key=%s parts=%d bytes=%d by=stream",
                         key, len(checked), written)
            return written
        sources = [ComposeSource(self.bucket, self._key(source), offset=offset, length=length)
                   for source, offset, length in checked]
        with _s3_errors("composition", name, self.bucket):
            self.client.compose_object(self.bucket, key, sources,
                                       metadata={"Content-Type": content_type})
        logger.debug("object composed backend=s3 key=%s parts=%d bytes=%d by=copy",
                     key, len(checked), total)
        return total

    def _open_range(self, name: str, offset: int, length: int) -> urllib3.BaseHTTPResponse:
        with _s3_errors("ranged read", name, self.bucket):
            return self.client.get_object(self.bucket, self._key(name), offset=offset,
                                          length=length)

    @contextmanager
    def get(self, name: str) -> Iterator[ReadableStream]:
        with _s3_errors("download", name, self.bucket):
            response = self.client.get_object(self.bucket, self._key(name))
        try:
            yield _ResponseReader(response, name, self.bucket)
        finally:
            # close() drops a half-read connection rather than returning it to the pool.
            response.close()
            response.release_conn()

    def open_ranges(self, name: str) -> RangeReader:
        return _EachRange(self, name)

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        _check_range(offset, length)
        if length == 0:  # minio would read the whole object for length 0
            self.size(name)
            return b""
        with _s3_errors("ranged read", name, self.bucket):
            try:
                response = self.client.get_object(
                    self.bucket, self._key(name), offset=offset, length=length
                )
            except S3Error as exc:
                if exc.code == "InvalidRange":  # offset at or past the end of the object
                    return b""
                raise
        try:
            return _ResponseReader(response, name, self.bucket).read(length)
        finally:
            response.close()
            response.release_conn()

    def delete(self, name: str) -> None:
        key = self._key(name)
        with _s3_errors("deletion", name, self.bucket):
            self.client.remove_object(self.bucket, key)
        logger.debug("object deleted backend=s3 key=%s", key)

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except ObjectNotFound:
            return False
        return True

    def size(self, name: str) -> int:
        with _s3_errors("stat", name, self.bucket):
            stat = self.client.stat_object(self.bucket, self._key(name))
        return int(stat.size or 0)

    def url(self, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(name)}"

    def check(self) -> None:
        try:
            found = self.client.bucket_exists(self.bucket)
        except _S3_FAILURES as exc:
            raise StorageError(f"S3 storage is unreachable or refused the request: {exc}") from exc
        if not found:
            raise StorageError(f"S3 bucket {self.bucket!r} does not exist")

    def ensure_bucket(self) -> None:
        """Create the bucket if it does not exist (safe when two processes race)."""
        with _s3_errors("bucket creation", self.bucket, self.bucket):
            if self.client.bucket_exists(self.bucket):
                return
            try:
                self.client.make_bucket(self.bucket)
            except S3Error as exc:
                if exc.code != "BucketAlreadyOwnedByYou":
                    raise
        logger.info("S3 bucket created bucket=%s", self.bucket)


_S3_MIN_PART = 5 * _MIB
_S3_MAX_PART = 5 * 1024 * _MIB
_S3_MAX_PARTS = 10_000


def _copyable_on_server(parts: Sequence[Part]) -> bool:
    """Whether S3's UploadPartCopy can assemble ``parts`` (one copied part each)."""
    if not parts or len(parts) > _S3_MAX_PARTS:
        return False
    if any(length > _S3_MAX_PART for _, _, length in parts):
        return False
    return all(length >= _S3_MIN_PART for _, _, length in parts[:-1])


class _PartsReader:
    """The concatenation of ranges of S3 objects as one stream, read one ranged GET
    at a time: what passes through memory is what the reader asks for."""

    def __init__(self, store: S3ObjectStore, parts: Sequence[Part]) -> None:
        self._store = store
        self._parts = iter(parts)
        self._response: urllib3.BaseHTTPResponse | None = None
        self._source = ""
        self._left = 0

    def read(self, size: int = -1, /) -> bytes:
        if size == 0:
            return b""
        while self._left == 0:
            self.close()
            part = next(self._parts, None)
            if part is None:
                return b""
            self._source, offset, self._left = part
            self._response = self._store._open_range(self._source, offset, self._left)
        assert self._response is not None
        wanted = self._left if size < 0 else min(size, self._left)
        chunk = _ResponseReader(self._response, self._source, self._store.bucket).read(
            min(wanted, _CHUNK))
        if not chunk:
            raise StorageError(f"object {self._source!r} ended before the bytes to compose")
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        if self._response is not None:
            self._response.close()
            self._response.release_conn()
            self._response = None


def _http_client() -> urllib3.PoolManager:
    """minio's own default waits 5 minutes to connect; a health probe must not."""
    return urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=10, read=120),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=3, connect=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )


def _parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """``host:port`` uses ``secure``; a URL's scheme decides for itself (https = TLS)."""
    if "://" not in endpoint:
        host, scheme, path = endpoint, ("https" if secure else "http"), ""
    else:
        parsed = urlparse(endpoint)
        host, scheme, path = parsed.netloc, parsed.scheme, parsed.path + parsed.query
    if scheme not in {"http", "https"} or not host or path.strip("/") or "/" in host:
        raise StorageError(
            f"ATRIUM_S3_ENDPOINT must be host:port or http(s)://host:port, got {endpoint!r}"
        )
    return host, scheme == "https"


def open_store(
    storage_url: str,
    *,
    s3_endpoint: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_secure: bool = True,
) -> ObjectStore:
    """The store a storage URL names (no I/O happens here).

    ``file:///abs/path`` (percent-escapes decoded) gives a :class:`FileObjectStore`;
    ``s3://bucket[/prefix]`` an :class:`S3ObjectStore` on ``s3_endpoint``.

    Raises
    ------
    StorageError
        With one sentence naming what is wrong with the URL or the S3 settings.
    """
    parsed = urlparse(storage_url)
    if parsed.params or parsed.query or parsed.fragment:
        raise StorageError(f"ATRIUM_STORAGE_URL must not have a query or fragment: {storage_url!r}")
    if parsed.scheme == "file":
        if parsed.netloc not in {"", "localhost"} or not parsed.path.startswith("/"):
            raise StorageError(f"ATRIUM_STORAGE_URL must be file:///absolute/path: {storage_url!r}")
        return FileObjectStore(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        if not s3_endpoint:
            raise StorageError("ATRIUM_S3_ENDPOINT is required when ATRIUM_STORAGE_URL is s3://")
        host, secure = _parse_endpoint(s3_endpoint, s3_secure)
        try:
            client = Minio(
                host,
                access_key=s3_access_key,
                secret_key=s3_secret_key,
                secure=secure,
                http_client=_http_client(),
            )
        except ValueError as exc:
            raise StorageError(f"the S3 settings are invalid: {exc}") from exc
        return S3ObjectStore(client, parsed.netloc, parsed.path)
    raise StorageError(f"ATRIUM_STORAGE_URL must start with file:// or s3://: {storage_url!r}")
