"""A bounded, non-recursive walk over the bytes of a DICOM file, run before
anything recursive sees them.

Orthanc 1.10 (DCMTK) and pydicom both parse sequences by recursion. On a thread
with a small stack — Orthanc's HTTP threads — a file whose sequences nest a few
thousand levels deep takes the whole process down (a segmentation fault, not an
exception). :func:`scan` reads the same bytes with an explicit stack, so depth
costs memory, not stack, and refuses a file that exceeds any of
:class:`DicomLimits` or breaks the encoding in a way a parser may trip on:

* sequences nested deeper than ``max_depth`` (pydicom's proposed default is 100,
  fo-dicom's 256; real data nests a few levels, structured reports rarely 20);
* more than ``max_elements`` elements, or a file over ``max_bytes``;
* a length that runs past the end of its file, item or sequence;
* an unknown VR, an undefined length on anything but a sequence, an item or
  encapsulated pixel data, a binary value whose length is not a multiple of its
  size;
* native pixel data shorter than the matrix its attributes declare, or any matrix
  whose decoded size exceeds ``max_pixel_bytes`` (a 7 GB frame set declared over
  32 kB of data makes a decoder allocate the 7 GB);
* a missing or malformed Study/Series/SOP Instance UID;
* no Part 10 preamble, no dataset after the file meta group.

Pure: no Orthanc, no database, no pydicom parsing (only its data dictionary, for
implicit VR).
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR

__all__ = ["DEFAULT_LIMITS", "DicomLimits", "DicomSummary", "UnsafeDicom", "scan", "scan_stream"]

GiB = 1024 ** 3


class UnsafeDicom(ValueError):
    """The bytes are not a DICOM file Atrium lets a parser see; the message says why,
    in words a sender can act on. ``summary`` holds what the scan had learnt when it
    stopped (the UIDs a STOW-RS failure item names), when it got that far."""

    summary: DicomSummary | None = None


@dataclass(frozen=True)
class DicomLimits:
    """What :func:`scan` accepts. Defaults admit every real instance we know of."""

    # Orthanc 1.10's DCMTK parses sequences by recursion on 100 KiB HTTP threads:
    # a file nested 48 levels crashed it through STOW-RS and through a QIDO-RS
    # includefield (STOW-RS survived 40, the QIDO 44). Half of 48, with the margin
    # other doors may need.
    max_depth: int = 24
    max_elements: int = 2_000_000
    max_bytes: int = 4 * GiB
    max_pixel_bytes: int = 4 * GiB


DEFAULT_LIMITS = DicomLimits()


@dataclass
class DicomSummary:
    """What a scan learnt of the file, top-level attributes only."""

    transfer_syntax: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    sop_instance_uid: str = ""
    sop_class_uid: str = ""
    depth: int = 0  # deepest sequence nesting seen
    elements: int = 0
    image: dict[str, int] = field(default_factory=dict)


# -- encodings ------------------------------------------------------------------------
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")

_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
_VALUE_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"AT": 4, b"FD": 8,
               b"OW": 2, b"OF": 4, b"OL": 4, b"OD": 8, b"OV": 8, b"SV": 8, b"UV": 8}
UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")

# Top-level attributes read while walking: UIDs (text) and the image's shape.
_UID_TAGS = {0x0020000D: "study_instance_uid", 0x0020000E: "series_instance_uid",
             0x00080018: "sop_instance_uid", 0x00080016: "sop_class_uid"}
_IMAGE_US = {0x00280010: "rows", 0x00280011: "columns", 0x00280002: "samples",
             0x00280100: "bits_allocated"}
_NUMBER_OF_FRAMES = 0x00280008
_PHOTOMETRIC = 0x00280004
_MAX_TEXT_READ = 256


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


class _Source:
    """Forward-only reads over bytes or a stream, counting the offset. Small reads
    come from a buffer; a skip over a large value never copies it when the bytes
    are in memory."""

    def __init__(self, read: Callable[[int], bytes], size: int | None,
                 jump: Callable[[int], None] | None = None) -> None:
        self._read = read
        self._jump = jump  # skips n bytes of the underlying data without reading them
        self.size = size  # None: unknown until the end
        self.offset = 0
        self._buffer = b""
        self._pos = 0

    def _fill(self, n: int) -> bool:
        """At least ``n`` bytes buffered? Reads more when not."""
        have = len(self._buffer) - self._pos
        if have >= n:
            return True
        parts = [self._buffer[self._pos:]]
        while have < n:
            chunk = self._read(max(n - have, 65536))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self._buffer, self._pos = b"".join(parts), 0
        return have >= n

    def at_end(self) -> bool:
        return self._pos >= len(self._buffer) and not self._fill(1)

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buffer[self._pos:self._pos + n]

    def read(self, n: int, tag: int = -1) -> bytes:
        """``n`` bytes; ``tag`` names the element being read, for the message when
        the file ends first."""
        pos = self._pos
        if len(self._buffer) - pos < n:
            if not self._fill(n):
                where = f"the element {_tag_text(tag)}" if tag >= 0 else "its header"
                raise UnsafeDicom(f"The file ends inside {where} at offset {self.offset}: it "
                                  "is truncated.")
            pos = 0
        self._pos = pos + n
        self.offset += n
        return self._buffer[pos:pos + n]

    def skip(self, n: int, tag: int) -> None:
        buffered = len(self._buffer) - self._pos
        if n <= buffered:
            self._pos += n
            self.offset += n
            return
        if self.size is not None and self.offset + n > self.size:
            raise UnsafeDicom(f"{_tag_text(tag)} declares {n} bytes at offset {self.offset}, "
                              f"past the end of the file ({self.size} bytes).")
        self._buffer, self._pos = b"", 0
        self.offset += buffered
        n -= buffered
        if self._jump is not None:
            self._jump(n)
            self.offset += n
            return
        while n > 0:
            step = min(n, 1 << 20)
            self.read(step, tag)
            n -= step

    def rest(self) -> Callable[[int], bytes]:
        """A reader of everything not consumed yet (the buffer first)."""
        def read(n: int) -> bytes:
            if self._pos < len(self._buffer):
                data = self._buffer[self._pos:self._pos + n]
                self._pos += len(data)
                return data
            return self._read(n)

        return read


class _Frame:
    """An open sequence, item or run of pixel fragments: its end offset (None:
    undefined length, closed by a delimiter), how its elements are encoded, how
    many sequences deep it sits, and the innermost frame around it (itself
    included) whose length is defined — what no element inside may run past, known
    without walking the stack."""

    __slots__ = ("kind", "end", "explicit", "tag", "depth", "bound")

    def __init__(self, kind: str, end: int | None, explicit: bool, tag: int, depth: int,
                 parent: _Frame | None) -> None:
        self.kind, self.end, self.explicit, self.tag, self.depth = kind, end, explicit, tag, depth
        self.bound: _Frame | None = self if end is not None else (
            parent.bound if parent is not None else None)


_LE_TAG_LENGTH = struct.Struct("<HHI")
_BE_TAG_LENGTH = struct.Struct(">HHI")
_LE_SHORT = struct.Struct("<HH2sH")
_BE_SHORT = struct.Struct(">HH2sH")
_LE_U32, _BE_U32 = struct.Struct("<I"), struct.Struct(">I")
_LE_U16, _BE_U16 = struct.Struct("<H"), struct.Struct(">H")


class _Walker:
    def __init__(self, source: _Source, limits: DicomLimits) -> None:
        self.src = source
        self.limits = limits
        self.summary = DicomSummary()
        self.little = True
        self.pixel_length: int | None = None
        self.encapsulated = False
        self.photometric = ""

    # -- element headers -------------------------------------------------------------
    def _header(self, explicit: bool) -> tuple[int, bytes, int]:
        """(tag, VR, length) of the next element; VR b"" for item tags and implicit VR."""
        head = self.src.read(8)
        if not explicit or head[0:2] == b"\xfe\xff" or head[0:2] == b"\xff\xfe":
            group, element, length = (_LE_TAG_LENGTH if self.little or not explicit
                                      else _BE_TAG_LENGTH).unpack(head)
            if group == 0xFFFE or not explicit:
                return group << 16 | element, b"", length
        group, element, vr, length = (_LE_SHORT if self.little else _BE_SHORT).unpack(head)
        tag = group << 16 | element
        if vr in _SHORT_VRS:
            return tag, vr, length
        if vr in _LONG_VRS:
            return tag, vr, (_LE_U32 if self.little else _BE_U32).unpack(self.src.read(4, tag))[0]
        raise UnsafeDicom(f"{_tag_text(tag)} at offset {self.src.offset - 8} has the VR "
                          f"{vr!r}, which DICOM does not define.")

    @staticmethod
    def _dictionary_vr(tag: int) -> str:
        try:
            return str(dictionary_VR(tag))
        except KeyError:
            return "UN"

    # -- the walk --------------------------------------------------------------------
    def walk(self, explicit: bool) -> None:
        stack: list[_Frame] = []
        src = self.src
        max_elements = self.limits.max_elements
        elements = 0
        while True:
            if stack and stack[-1].end is not None:
                self._close_finished(stack)
            if src.at_end():
                if stack:
                    raise UnsafeDicom(f"The file ends inside the {stack[-1].kind} of "
                                      f"{_tag_text(stack[-1].tag)}: it is truncated.")
                break
            frame = stack[-1] if stack else None
            tag, vr, length = self._header(frame.explicit if frame else explicit)
            elements += 1
            if elements > max_elements:
                raise UnsafeDicom(f"The file holds more than {max_elements} elements.")
            if frame is not None and frame.kind != "item":
                self._in_sequence(stack, frame, tag, length)
            elif tag == _ITEM_END and frame is not None and frame.end is None:
                stack.pop()
            elif tag >> 16 == 0xFFFE:
                raise UnsafeDicom(f"An item tag {_tag_text(tag)} stands at offset "
                                  f"{src.offset - 8} where a data element belongs.")
            else:
                self._element(stack, frame, tag, vr, length)
        self.summary.elements = elements

    def _close_finished(self, stack: list[_Frame]) -> None:
        while stack and stack[-1].end is not None:
            end = stack[-1].end
            if self.src.offset < end:
                return
            if self.src.offset > end:
                raise UnsafeDicom(f"An element overruns the {stack[-1].kind} of "
                                  f"{_tag_text(stack[-1].tag)} (ends at {end}, reached "
                                  f"{self.src.offset}).")
            stack.pop()

    def _end_of(self, stack: list[_Frame], length: int, tag: int) -> int:
        end = self.src.offset + length
        if self.src.size is not None and end > self.src.size:
            raise UnsafeDicom(f"{_tag_text(tag)} declares {length} bytes at offset "
                              f"{self.src.offset}, past the end of the file "
                              f"({self.src.size} bytes).")
        bound = stack[-1].bound if stack else None
        if bound is not None and bound.end is not None and end > bound.end:
            raise UnsafeDicom(f"{_tag_text(tag)} declares {length} bytes, past the end "
                              f"of the {bound.kind} of {_tag_text(bound.tag)}.")
        return end

    def _push(self, stack: list[_Frame], kind: str, tag: int, length: int,
              explicit: bool) -> None:
        depth = (stack[-1].depth if stack else 0) + (kind == "sequence")
        if depth > self.limits.max_depth:
            raise UnsafeDicom(f"Sequences nest deeper than {self.limits.max_depth} levels "
                              f"(at {_tag_text(tag)}, offset {self.src.offset}).")
        self.summary.depth = max(self.summary.depth, depth)
        end = None if length == UNDEFINED else self._end_of(stack, length, tag)
        stack.append(_Frame(kind, end, explicit, tag, depth, stack[-1] if stack else None))

    def _in_sequence(self, stack: list[_Frame], frame: _Frame, tag: int, length: int) -> None:
        if tag == _SEQUENCE_END:
            if frame.end is not None:
                raise UnsafeDicom(f"A sequence delimiter closes {_tag_text(frame.tag)}, "
                                  "whose length is defined.")
            stack.pop()
            return
        if tag != _ITEM:
            raise UnsafeDicom(f"{_tag_text(tag)} stands inside the sequence "
                              f"{_tag_text(frame.tag)}, where only items belong.")
        if frame.kind == "fragments":
            if length == UNDEFINED:
                raise UnsafeDicom("A pixel data fragment has an undefined length.")
            self._end_of(stack, length, frame.tag)
            self.src.skip(length, frame.tag)
            return
        self._push(stack, "item", frame.tag, length, frame.explicit)

    def _element(self, stack: list[_Frame], frame: _Frame | None, tag: int, vr: bytes,
                 length: int) -> None:
        if vr == b"SQ" or (not vr and self._dictionary_vr(tag) == "SQ"):
            self._push(stack, "sequence", tag, length, explicit=bool(vr))
            return
        if length == UNDEFINED:
            if tag == _PIXEL_DATA and not stack:
                self.encapsulated = True
                self._push(stack, "fragments", tag, length, bool(vr))
                return
            if vr in (b"", b"UN", b"OB", b"OW"):
                # Parsers read an undefined length outside pixel data as a sequence
                # (implicit VR little endian inside, for UN).
                self._push(stack, "sequence", tag, length, explicit=False)
                return
            raise UnsafeDicom(f"{_tag_text(tag)} ({vr.decode()}) has an undefined length, "
                              "which only sequences and encapsulated pixel data may have.")
        size = _VALUE_SIZE.get(vr) if vr else None
        if size and length % size:
            raise UnsafeDicom(f"{_tag_text(tag)} ({vr.decode()}) has {length} bytes, not a "
                              f"multiple of {size}.")
        if stack:
            self._end_of(stack, length, tag)
            self.src.skip(length, tag)
            return
        self._top_level(tag, length)

    def _top_level(self, tag: int, length: int) -> None:
        src = self.src
        if tag in _UID_TAGS and length <= _MAX_TEXT_READ:
            text = src.read(length, tag).rstrip(b"\x00 ").decode("latin-1")
            setattr(self.summary, _UID_TAGS[tag], text)
        elif tag in _IMAGE_US and length == 2:
            self.summary.image[_IMAGE_US[tag]] = (_LE_U16 if self.little
                                                  else _BE_U16).unpack(src.read(2, tag))[0]
        elif tag == _PHOTOMETRIC and length <= 16:
            self.photometric = src.read(length, tag).strip(b"\x00 ").decode("latin-1")
        elif tag == _NUMBER_OF_FRAMES and length <= 16:
            frames = src.read(length, tag).strip(b"\x00 ")
            self.summary.image["frames"] = int(frames) if frames.isdigit() else 1
        else:
            if tag == _PIXEL_DATA:
                self.pixel_length = length
            if src.size is not None and src.offset + length > src.size:
                self._end_of([], length, tag)
            src.skip(length, tag)


def _looks_implicit(source: _Source) -> bool:
    """Whether a dataset announced as explicit VR is written in implicit VR: the
    two bytes after its first tag are no VR. Some modalities write such files;
    DCMTK and pydicom read them, so the walk does too."""
    vr = source.peek(6)[4:6]
    return len(vr) == 2 and not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90)


def _check_uids(summary: DicomSummary) -> None:
    for name in ("study_instance_uid", "series_instance_uid", "sop_instance_uid"):
        value = getattr(summary, name)
        label = name.replace("_", " ").replace("uid", "UID").title().replace("Uid", "UID")
        if not value:
            raise UnsafeDicom(f"The file has no {label}.")
        if len(value) > 64 or not _UID.match(value):
            raise UnsafeDicom(f"The {label} {value[:80]!r} is not a valid UID (digits and dots, "
                              "at most 64 characters).")


def _check_pixels(walker: _Walker, limits: DicomLimits) -> None:
    image = walker.summary.image
    if walker.pixel_length is None and not walker.encapsulated:
        return
    rows, columns = image.get("rows", 0), image.get("columns", 0)
    samples, bits = image.get("samples", 1), image.get("bits_allocated", 8)
    frames = image.get("frames", 1)
    declared = (rows * columns * samples * frames * bits + 7) // 8
    if walker.photometric.endswith("_422"):
        declared = declared * 2 // 3  # two chroma samples shared by each pair of pixels
    if declared > limits.max_pixel_bytes:
        raise UnsafeDicom(f"The image declares {rows} x {columns} pixels x {frames} frames "
                          f"({declared:,} bytes decoded), over the limit of "
                          f"{limits.max_pixel_bytes:,}.")
    if walker.pixel_length is not None and walker.pixel_length + 1 < declared:
        raise UnsafeDicom(f"The image declares {declared:,} bytes of pixels but holds "
                          f"{walker.pixel_length:,}.")


def _walk_file(source: _Source, limits: DicomLimits, require_uids: bool) -> DicomSummary:
    if source.size is not None and source.size > limits.max_bytes:
        raise UnsafeDicom(f"The file has {source.size:,} bytes, over the limit of "
                          f"{limits.max_bytes:,}.")
    if source.at_end():
        raise UnsafeDicom("The body is empty: no DICOM file.")
    if source.peek(132)[128:132] != b"DICM":
        raise UnsafeDicom("This is not a DICOM Part 10 file (no 'DICM' after the 128-byte "
                          "preamble).")
    source.read(132)
    walker = _Walker(source, limits)
    meta_end: int | None = None
    transfer_syntax = ""
    while (meta_end is None or source.offset < meta_end) and source.peek(2) == b"\x02\x00":
        tag, vr, length = walker._header(explicit=True)
        if length == UNDEFINED or length > 65536:
            raise UnsafeDicom(f"The file meta element {_tag_text(tag)} has an invalid length.")
        value = source.read(length, tag)
        if tag == 0x00020000 and length == 4:
            meta_end = source.offset + struct.unpack("<I", value)[0]
        elif tag == 0x00020010:
            transfer_syntax = value.rstrip(b"\x00 ").decode("latin-1")
    walker.summary.transfer_syntax = transfer_syntax
    if not transfer_syntax:
        raise UnsafeDicom("The file meta group names no transfer syntax.")
    if source.at_end():
        raise UnsafeDicom("The file holds a Part 10 header and no dataset.")
    if transfer_syntax in DEFLATED:
        source = _inflated(source, limits)
        walker.src = source
    walker.little = transfer_syntax != EXPLICIT_BE
    explicit = transfer_syntax != IMPLICIT_LE and not (walker.little and _looks_implicit(source))
    try:
        walker.walk(explicit=explicit)
        if require_uids:
            _check_uids(walker.summary)
        _check_pixels(walker, limits)
    except UnsafeDicom as unsafe:
        unsafe.summary = walker.summary
        raise
    return walker.summary


def _inflated(source: _Source, limits: DicomLimits) -> _Source:
    """The rest of ``source`` inflated, capped at ``limits.max_bytes`` (a deflate
    bomb stops there)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    compressed_rest = source.rest()
    pending = b""
    produced = 0

    def read(n: int) -> bytes:
        nonlocal pending, produced
        while not inflater.eof:
            compressed = pending or compressed_rest(65536)
            if not compressed:
                return inflater.flush()
            try:
                data = inflater.decompress(compressed, n)
            except zlib.error as exc:
                raise UnsafeDicom(f"The deflated dataset is corrupt: {exc}.") from None
            pending = inflater.unconsumed_tail
            produced += len(data)
            if produced > limits.max_bytes:
                raise UnsafeDicom("The deflated dataset inflates past the size limit.")
            if data:
                return data
            if len(pending) == len(compressed):
                raise UnsafeDicom("The deflated dataset is corrupt: it stops making progress.")
        return b""

    return _Source(read, None)


def scan(data: bytes | memoryview, limits: DicomLimits = DEFAULT_LIMITS, *,
         require_uids: bool = True) -> DicomSummary:
    """Walk a whole DICOM file held in memory; raise :class:`UnsafeDicom` when it
    must not reach a parser. ``require_uids``: refuse a file without valid Study,
    Series and SOP Instance UIDs (what storing it needs; a file Orthanc already
    holds has them by its own rules, whatever their form)."""
    view = memoryview(data)
    position = 0

    def read(n: int) -> bytes:
        nonlocal position
        chunk = bytes(view[position:position + n])
        position += len(chunk)
        return chunk

    def jump(n: int) -> None:
        nonlocal position
        position += n

    return _walk_file(_Source(read, len(view), jump), limits, require_uids)


def scan_stream(read: Callable[[int], bytes], size: int | None,
                limits: DicomLimits = DEFAULT_LIMITS, *, require_uids: bool = True
                ) -> DicomSummary:
    """:func:`scan` over a stream (``read(n)`` returns up to ``n`` bytes, ``b""`` at
    the end), holding only what one element needs in memory."""
    return _walk_file(_Source(read, size), limits, require_uids)
