"""The slides Atrium serves: open readers and encoded tiles kept in bounded caches,
whatever the slide's source.

A slide is named by a :class:`SlideRef` (its row's id, storage path and format).
A file in object storage is read through ranged reads (:mod:`atrium.slides.tiff`);
a DICOM WSI series through the frames Orthanc stores (``open_dicom``, given by the
application). Tiles are immutable — a slide's file never changes — so an encoded
tile is cached by slide and position, and the reader of a slide stays open for the
next request; deleting a slide forgets both.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from atrium.cache import ByteLru
from atrium.errors import NotFound
from atrium.slides.cache import ReaderCache
from atrium.slides.deepzoom import dzi_tile
from atrium.slides.model import ImageFormat, SlideInfo, SlideReader
from atrium.slides.source import StoreSource
from atrium.slides.tiff import open_tiff_slide
from atrium.slides.tiled import encode_image, thumbnail
from atrium.storage import ObjectStore

__all__ = ["SlideLibrary", "SlideRef"]

DICOM = "DICOM"


@dataclass(frozen=True)
class SlideRef:
    id: uuid.UUID
    storage_path: str | None  # None for a DICOM WSI series: its pixels are in Orthanc
    file_format: str
    # The row's version (its updated_at): a DICOM WSI slide changes when instances
    # of its series arrive or go, and then must not be served from older readers.
    version: str = ""


class SlideLibrary:
    """Readers and tiles of slides, shared by every request thread.

    Parameters
    ----------
    store
        Where uploaded slide files are.
    open_dicom
        Opens the reader of a DICOM WSI slide by its id; None when DICOM WSI is
        not served (the ``atrium`` command, tests of files only).
    max_readers, tile_cache_bytes, decoded_cache_bytes
        Bounds of the caches: open readers (each holds its file's tile index,
        ~16 bytes per tile), encoded tiles, and decoded stored tiles that edge
        tiles, regions and Deep Zoom levels between the file's levels reuse.
    """

    def __init__(self, store: ObjectStore,
                 open_dicom: Callable[[uuid.UUID], SlideReader] | None = None, *,
                 max_readers: int = 64, tile_cache_bytes: int = 256 * 1024 * 1024,
                 decoded_cache_bytes: int = 128 * 1024 * 1024) -> None:
        self._store = store
        self._open_dicom = open_dicom
        self._readers: ReaderCache[SlideReader] = ReaderCache(max_readers)
        self._tiles: ByteLru[Hashable, bytes] = ByteLru(tile_cache_bytes)
        self._decoded: ByteLru[Hashable, np.ndarray] = ByteLru(decoded_cache_bytes)
        self._versions: dict[uuid.UUID, str] = {}  # the last version opened, to forget it
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ opening

    def _open(self, ref: SlideRef) -> SlideReader:
        if ref.file_format == DICOM and ref.storage_path is None:
            if self._open_dicom is None:
                raise NotFound(f"Slide {ref.id} is a DICOM WSI series, which this process "
                               "does not serve.")
            return self._open_dicom(ref.id)
        if ref.storage_path is None:
            raise NotFound(f"Slide {ref.id} has no file.")
        size = self._store.size(ref.storage_path)
        return open_tiff_slide(StoreSource(self._store, ref.storage_path, size), self._decoded)

    def inspect(self, object_name: str, size: int) -> SlideInfo:
        """What a newly stored file holds, checked by opening it: the 4xx problem of
        :func:`~atrium.slides.tiff.open_tiff_slide` when it cannot be served."""
        reader = open_tiff_slide(StoreSource(self._store, object_name, size))
        try:
            return reader.info
        finally:
            reader.close()

    def _key(self, ref: SlideRef) -> Hashable:
        with self._lock:
            self._versions[ref.id] = ref.version
        return (ref.id, ref.version)

    def reader(self, ref: SlideRef) -> SlideReader:
        """The slide's open reader (kept open for the next request); for its ``info``:
        a caller reading pixels goes through the methods below, which hold it."""
        with self._readers.borrow(self._key(ref), lambda: self._open(ref)) as reader:
            return reader

    def forget(self, slide_id: uuid.UUID) -> None:
        """Drop what is cached of a deleted slide. Its tiles are dropped lazily: the
        routes check that a slide is live before asking for any."""
        with self._lock:
            version = self._versions.pop(slide_id, None)
        if version is not None:
            self._readers.invalidate((slide_id, version))

    # ------------------------------------------------------------------- images

    def _cached(self, ref: SlideRef, key: Hashable,
                render: Callable[[SlideReader], bytes]) -> bytes:
        """The image cached under ``key`` (which names the slide's version), else
        rendered with the slide's reader, which a cached image does not need."""
        data = self._tiles.get(key)
        if data is None:
            with self._readers.borrow(self._key(ref), lambda: self._open(ref)) as reader:
                data = render(reader)
            self._tiles.put(key, data)
        return data

    def tile(self, ref: SlideRef, level: int, col: int, row: int,
             image_format: ImageFormat) -> bytes:
        return self._cached(ref, (ref.id, ref.version, "tile", level, col, row, image_format),
                            lambda reader: reader.tile(level, col, row, image_format))

    def dzi_tile(self, ref: SlideRef, dzi_level: int, col: int, row: int,
                 image_format: ImageFormat) -> bytes:
        return self._cached(ref, (ref.id, ref.version, "dzi", dzi_level, col, row, image_format),
                            lambda reader: dzi_tile(reader, dzi_level, col, row, image_format))

    def thumbnail(self, ref: SlideRef, max_size: int, image_format: ImageFormat) -> bytes:
        return self._cached(ref, (ref.id, ref.version, "thumbnail", max_size, image_format),
                            lambda reader: encode_image(thumbnail(reader, max_size),
                                                        image_format))

    def region(self, ref: SlideRef, level: int, x: int, y: int, width: int, height: int,
               image_format: ImageFormat) -> bytes:
        # Not cached: regions are large and rarely asked twice.
        with self._readers.borrow(self._key(ref), lambda: self._open(ref)) as reader:
            return encode_image(reader.region(level, x, y, width, height), image_format)

    def associated(self, ref: SlideRef, name: str, image_format: ImageFormat) -> bytes:
        with self._readers.borrow(self._key(ref), lambda: self._open(ref)) as reader:
            if name not in reader.info.associated:
                raise NotFound(f"Slide {ref.id} has no associated image {name!r}; it has "
                               f"{', '.join(reader.info.associated) or 'none'}.")
            return encode_image(reader.associated(name), image_format)

    def close(self) -> None:
        self._readers.clear()
        self._tiles.clear()
        self._decoded.clear()
