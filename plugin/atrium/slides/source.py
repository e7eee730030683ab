"""The bytes of a slide file, read by ranges — never downloaded whole.

A slide can be tens of gigabytes in S3; a tile is tens of kilobytes of it. Readers
see a :class:`ByteSource` (a size and ``read(offset, length)``), which for stored
slides is :class:`StoreSource`: one ranged GET of object storage per read, or, in
the file store, one ``pread`` of the file it opened on its first read.

Parsers that expect a file (tifffile) get :class:`SourceFile`, a read-only
file-like view with a small block cache: TIFF headers are many small reads close
to each other, so reading 64 KiB blocks turns hundreds of tiny requests into a
few. It is for parsing only; tiles are read with :meth:`ByteSource.read`, one
request each.
"""

from __future__ import annotations

import io
import os
import threading
from collections import OrderedDict
from typing import Protocol

from atrium.errors import BadRequest, NotFound, ServiceUnavailable
from atrium.storage import ObjectNotFound, ObjectStore, RangeReader, StorageError

__all__ = ["BLOCK_SIZE", "MAX_READ", "ByteSource", "MemorySource", "SourceFile", "StoreSource"]

BLOCK_SIZE = 64 * 1024
"""Bytes per block of :class:`SourceFile`'s cache."""
_CACHED_BLOCKS = 64
MAX_READ = 256 * 1024 * 1024
"""Bytes of one read of :class:`SourceFile`: a header claiming more (a tag of a
billion values) is an attack or damage, not a slide."""
# A read this long goes straight to the source: caching it would evict the headers.
_DIRECT_READ = 4 * BLOCK_SIZE


def truncated() -> BadRequest:
    """The problem for a file whose structure points past its end."""
    return BadRequest("the slide file is truncated: its structure points past the end "
                      "of the file; upload the complete file")


class ByteSource(Protocol):
    """A file's bytes by ranges. Implementations are safe to share between threads."""

    @property
    def size(self) -> int:
        """The file's length in bytes."""

    def read(self, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes from ``offset``.

        Raises
        ------
        BadRequest
            If the range reaches past the end of the file (the file is truncated).
        """

    def close(self) -> None:
        """Release what the source holds (an open file); a later read opens again."""


class MemorySource:
    """A file held in memory (tests, small uploads being checked)."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > len(self._data):
            raise truncated()
        return self._data[offset:offset + length]

    def close(self) -> None:
        pass


class StoreSource:
    """The object ``name`` of an :class:`~atrium.storage.ObjectStore`, ``size``
    bytes long (the caller knows it from the slides row or ``store.size``).

    Storage failures become problems: a missing object is
    :class:`~atrium.errors.NotFound`, an unreachable store
    :class:`~atrium.errors.ServiceUnavailable`.
    """

    def __init__(self, store: ObjectStore, name: str, size: int) -> None:
        if size < 0:
            raise ValueError(f"size must be >= 0, got {size}")
        self.store, self.name, self._size = store, name, size
        self._ranges: RangeReader | None = None
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        return self._size

    def _reader(self) -> RangeReader:
        ranges = self._ranges
        if ranges is None:
            with self._lock:
                if self._ranges is None:
                    self._ranges = self.store.open_ranges(self.name)
                ranges = self._ranges
        return ranges

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self._size:
            raise truncated()
        if length == 0:
            return b""
        try:
            data = self._reader().read(offset, length)
        except ObjectNotFound as exc:
            raise NotFound("the slide's file is missing from storage") from exc
        except StorageError as exc:
            raise ServiceUnavailable("object storage cannot be read; try again later") from exc
        if len(data) != length:
            # The object is shorter than the size recorded for it.
            raise truncated()
        return data

    def close(self) -> None:
        with self._lock:
            ranges, self._ranges = self._ranges, None
        if ranges is not None:
            ranges.close()


class SourceFile(io.RawIOBase):
    """A read-only, seekable file over a :class:`ByteSource`, with a block cache.

    Not thread-safe (it has a position): one per parse. Reads past the end return
    fewer bytes, as files do.
    """

    def __init__(self, source: ByteSource, name: str = "slide") -> None:
        super().__init__()
        self.source = source
        self.name = name
        self._size = source.size
        self._position = 0
        self._blocks: OrderedDict[int, bytes] = OrderedDict()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._position = base + offset
        return self._position

    def _block(self, index: int) -> bytes:
        block = self._blocks.get(index)
        if block is None:
            start = index * BLOCK_SIZE
            block = self.source.read(start, min(BLOCK_SIZE, self._size - start))
            self._blocks[index] = block
            if len(self._blocks) > _CACHED_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(index)
        return block

    def read(self, size: int | None = -1, /) -> bytes:
        start = self._position
        end = self._size if size is None or size < 0 else min(start + size, self._size)
        if end <= start:
            return b""
        if end - start > MAX_READ:
            raise BadRequest(f"the slide file declares a structure of {end - start} bytes; "
                             f"the limit is {MAX_READ}")
        self._position = end
        if end - start >= _DIRECT_READ:
            return self.source.read(start, end - start)
        first, last = start // BLOCK_SIZE, (end - 1) // BLOCK_SIZE
        data = b"".join(self._block(index) for index in range(first, last + 1))
        offset = start - first * BLOCK_SIZE
        return data[offset:offset + end - start]

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        memoryview(buffer)[:len(data)] = data
        return len(data)
