"""The bounded scan every DICOM file meets before a parser sees it
(:mod:`atrium.dicom.scan`), and the upload admission built on it."""

from __future__ import annotations

import contextlib
import io
import struct
import sys
import warnings
import zlib
from pathlib import Path

import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from atrium.auth.request_filter import is_native_upload
from atrium.dicom.admission import admit_file
from atrium.dicom.scan import DEFAULT_LIMITS, DicomLimits, UnsafeDicom, scan, scan_stream
from atrium.errors import RefusedDicom
from tests.support import hostile

warnings.filterwarnings("ignore", module="pydicom")

REFUSED = {
    "nested_sequences": f"nest deeper than {DEFAULT_LIMITS.max_depth}",
    "truncated": "past the end of the file",
    "length_beyond_file": "past the end of the file",
    "wrong_vr": "'ZZ'",
    "odd_binary_length": "not a multiple of 2",
    "huge_pixel_matrix": "over the limit",
    "invalid_uids": "not a valid UID",
    "header_without_dataset": "no dataset",
    "empty": "empty",
    "not_dicom": "not a DICOM Part 10 file",
}


@pytest.mark.parametrize(("name", "words"), sorted(REFUSED.items()))
def test_each_hostile_file_is_refused_with_a_reason(name: str, words: str) -> None:
    blob = hostile.CORPUS[name]()
    with pytest.raises(UnsafeDicom, match=words):
        scan(blob)


def test_an_unknown_character_set_is_no_reason_to_refuse() -> None:
    summary = scan(hostile.invalid_character_set())
    assert summary.sop_instance_uid and summary.depth == 0


def _part10_testdata() -> list[Path]:
    """The Part 10 files that come with pydicom (not the ones it would download)."""
    shipped = Path(pydicom.data.__file__).parent / "test_files"
    return sorted(path for path in shipped.rglob("*")
                  if path.is_file() and path.read_bytes()[128:132] == b"DICM")


# pydicom's own files that really are broken: truncated values, a directory record
# sequence that runs past the end of its file, no transfer syntax.
BROKEN = {"MR_truncated.dcm", "rtplan_truncated.dcm", "DICOMDIR-nooffset",
          "meta_missing_tsyntax.dcm"}


def test_every_valid_part10_file_pydicom_ships_is_admitted() -> None:
    """Real encodings: implicit and explicit VR, big endian, deflated, encapsulated
    pixel data, private and UN sequences, implicit VR written under an explicit
    transfer syntax."""
    files = _part10_testdata()
    assert len(files) > 50
    for path in files:
        name = path.name
        data = path.read_bytes()
        if name in BROKEN:
            with pytest.raises(UnsafeDicom):
                scan(data, require_uids=False)
        else:
            scan(data, require_uids=False)


def _nested(depth: int, defined: bool) -> bytes:
    """A dataset holding one sequence nested ``depth`` deep, with defined or undefined
    lengths (explicit VR little endian)."""
    if defined:
        inner = b""
        for _ in range(depth):
            item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, len(item)) + item
    else:
        opening = (struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
                   + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF))
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        inner = opening * depth + closing * depth
    blob = hostile.ordinary("NESTED")
    at = blob.find(struct.pack("<HH", 0x7FE0, 0x0010), 132)
    return blob[:at] + inner + blob[at:]


@pytest.mark.parametrize("defined", [True, False])
def test_depth_is_counted_with_either_kind_of_length(defined: bool) -> None:
    deepest = DEFAULT_LIMITS.max_depth
    assert scan(_nested(deepest, defined)).depth == deepest
    with pytest.raises(UnsafeDicom, match=f"nest deeper than {deepest}"):
        scan(_nested(deepest + 1, defined))


def test_depth_costs_no_stack() -> None:
    """200,000 levels walked with the recursion limit far below them."""
    blob = _nested(200_000, defined=False)
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        assert scan(blob, DicomLimits(max_depth=10**6)).depth == 200_000
    finally:
        sys.setrecursionlimit(limit)


def test_too_many_elements_are_refused() -> None:
    with pytest.raises(UnsafeDicom, match="more than 10 elements"):
        scan(hostile.ordinary(), DicomLimits(max_elements=10))


def test_a_file_over_the_size_limit_is_refused() -> None:
    blob = hostile.ordinary()
    with pytest.raises(UnsafeDicom, match="over the limit"):
        scan(blob, DicomLimits(max_bytes=len(blob) - 1))


def test_pixels_fewer_than_declared_are_refused() -> None:
    blob = hostile.ordinary("SHORT", Rows=64, Columns=64)  # 16 x 16 pixels of data
    with pytest.raises(UnsafeDicom, match="declares 8,192 bytes of pixels but holds 512"):
        scan(blob)


def test_the_uids_and_shape_are_read_on_the_way() -> None:
    summary = scan(Path(str(get_testdata_file("CT_small.dcm"))).read_bytes())
    assert summary.study_instance_uid.startswith("1.3.6.1.4.1.5962")
    assert summary.image == {"samples": 1, "rows": 128, "columns": 128, "bits_allocated": 16}


def test_a_refusal_carries_what_was_learnt_before_it() -> None:
    with pytest.raises(UnsafeDicom) as refused:
        scan(hostile.nested_sequences())
    assert refused.value.summary is not None
    assert refused.value.summary.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"


def _file_meta(transfer_syntax: bytes) -> bytes:
    """A preamble and a file meta group naming ``transfer_syntax``."""
    def element(element_number: int, value: bytes) -> bytes:
        value += b"\x00" * (len(value) % 2)
        return struct.pack("<HH2sH", 0x0002, element_number, b"UI", len(value)) + value

    group = element(0x0002, b"1.2.840.10008.5.1.4.1.1.2") + element(0x0010, transfer_syntax)
    length = struct.pack("<HH2sHI", 0x0002, 0x0000, b"UL", 4, len(group))
    return b"\x00" * 128 + b"DICM" + length + group


def test_a_deflated_file_is_read_and_a_deflate_bomb_stops_at_the_size_limit() -> None:
    meta = _file_meta(b"1.2.840.10008.1.2.1.99")
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    element = struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 50_000_000)
    bomb = compressor.compress(element + b"\x00" * 50_000_000) + compressor.flush()
    assert len(bomb) < 100_000
    assert scan(meta + bomb, require_uids=False).elements == 1
    with pytest.raises(UnsafeDicom, match="inflates past"):
        scan(meta + bomb, DicomLimits(max_bytes=10_000_000), require_uids=False)


def test_a_stream_reads_as_the_bytes_do() -> None:
    data = Path(str(get_testdata_file("JPEG2000.dcm"))).read_bytes()
    stream = io.BytesIO(data)
    assert scan_stream(stream.read, len(data)) == scan(data)
    with pytest.raises(UnsafeDicom, match="truncated|past the end"):
        scan_stream(io.BytesIO(data[:-100]).read, None)


# Made once: Hypothesis replays examples and wants the same bytes each time.
DAMAGEABLE = {defined: _nested(3, defined) for defined in (True, False)}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_damaged_bytes_meet_a_refusal_never_another_error(data: st.DataObject) -> None:
    """Any cut or changed byte: the scan answers or refuses — never struct.error,
    UnicodeDecodeError, a loop or a recursion."""
    blob = bytearray(DAMAGEABLE[data.draw(st.booleans())])
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    with contextlib.suppress(UnsafeDicom):
        scan(bytes(blob[:cut]), require_uids=data.draw(st.booleans()))


def test_an_upload_is_admitted_or_refused_with_the_reason() -> None:
    assert admit_file(hostile.ordinary()).sop_instance_uid
    with pytest.raises(RefusedDicom, match="refused: Sequences nest deeper"):
        admit_file(hostile.nested_sequences())


@pytest.mark.parametrize(("uri", "method", "upload"), [
    ("/instances", "POST", True), ("/instances/", "POST", True), ("//instances", "POST", True),
    ("/./instances", "POST", True), ("/%69nstances", "POST", True),
    ("/instances?x=1", "POST", True), ("/instances", "GET", False),
    ("/instances/abc/modify", "POST", False), ("/api/instances", "POST", False),
])
def test_orthancs_own_upload_is_recognised_in_every_spelling(uri: str, method: str,
                                                             upload: bool) -> None:
    assert is_native_upload(uri, method) is upload
