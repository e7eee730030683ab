"""The slide library: readers opened once per slide version, tiles cached, a
deleted slide forgotten, a changed one never served from its old reader."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from atrium.errors import NotFound, UnsupportedMediaType
from atrium.slides.library import SlideLibrary, SlideRef
from atrium.slides.model import SlideReader
from atrium.storage import FileObjectStore, ObjectNotFound
from tests.support.slidegen import pattern, write_pyramid_tiff


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    store = FileObjectStore(tmp_path)
    blob = io.BytesIO()
    write_pyramid_tiff(blob, 600, 400, tile=256, levels=2, compression="zlib")
    store.put("slides/one", blob.getvalue())
    return store


def png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_inspect_reads_the_file_and_refuses_what_is_not_a_slide(store: FileObjectStore) -> None:
    library = SlideLibrary(store)
    info = library.inspect("slides/one", store.size("slides/one"))
    assert (info.width, info.height, len(info.levels)) == (600, 400, 2)
    store.put("slides/bad", b"not a slide at all" * 10)
    with pytest.raises(UnsupportedMediaType):
        library.inspect("slides/bad", store.size("slides/bad"))


def test_tiles_are_served_and_cached_per_version(store: FileObjectStore) -> None:
    library = SlideLibrary(store)
    ref = SlideRef(uuid.uuid4(), "slides/one", "TIFF", "v1")
    first = library.tile(ref, 0, 1, 1, "png")
    assert np.array_equal(png(first), pattern(256, 256, 256, 144))
    store.delete("slides/one")  # the cached tile and the open reader still serve
    assert library.tile(ref, 0, 1, 1, "png") == first
    assert library.reader(ref).info.width == 600
    library.forget(ref.id)
    with pytest.raises(ObjectNotFound):  # the reader is gone, and so is the file
        library.tile(SlideRef(ref.id, "slides/one", "TIFF", "v1"), 0, 0, 0, "png")


def test_dicom_slides_open_through_the_callback(store: FileObjectStore) -> None:
    calls: list[uuid.UUID] = []
    files = SlideLibrary(store)
    source = files.reader(SlideRef(uuid.uuid4(), "slides/one", "TIFF"))

    def open_dicom(slide_id: uuid.UUID) -> SlideReader:
        calls.append(slide_id)
        return source

    library = SlideLibrary(store, open_dicom=open_dicom)
    ref = SlideRef(uuid.uuid4(), None, "DICOM", "2026-01-01")
    library.tile(ref, 1, 0, 0, "jpeg")
    library.tile(ref, 1, 1, 0, "jpeg")
    assert calls == [ref.id]  # one reader for the version
    library.tile(SlideRef(ref.id, None, "DICOM", "2026-01-02"), 1, 0, 0, "jpeg")
    assert calls == [ref.id, ref.id]  # a new version, a new reader
    with pytest.raises(NotFound):
        SlideLibrary(store).tile(ref, 0, 0, 0, "jpeg")


def test_associated_images_by_name(store: FileObjectStore) -> None:
    library = SlideLibrary(store)
    ref = SlideRef(uuid.uuid4(), "slides/one", "TIFF")
    assert library.associated(ref, "label", "jpeg")[:2] == b"\xff\xd8"
    with pytest.raises(NotFound, match="label"):
        library.associated(ref, "nothing", "jpeg")
