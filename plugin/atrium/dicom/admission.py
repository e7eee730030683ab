"""Whether an uploaded body may go on to Orthanc: every edge that takes DICOM from
a client (STOW-RS through the gateway, ``POST /api/instances``, Orthanc's own
``POST /instances``) asks here first, before anything parses the bytes.

A refusal is a :class:`~atrium.errors.RefusedDicom` (400) whose detail says what
is wrong with the file, in words its sender can act on.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from typing import IO

from atrium.dicom.scan import (
    DEFAULT_LIMITS,
    DicomLimits,
    DicomSummary,
    UnsafeDicom,
    scan,
    scan_stream,
)
from atrium.errors import RefusedDicom

__all__ = ["admit_file", "admit_upload", "is_zip"]

MAX_ZIP_MEMBERS = 100_000


def admit_file(body: bytes, limits: DicomLimits = DEFAULT_LIMITS) -> DicomSummary:
    """The scan of one Part 10 file; :class:`RefusedDicom` when it must not be stored."""
    try:
        return scan(body, limits)
    except UnsafeDicom as unsafe:
        raise RefusedDicom(f"The DICOM file was refused: {unsafe}") from None


def is_zip(body: bytes) -> bool:
    return body[:4] == b"PK\x03\x04"


def admit_upload(body: bytes, limits: DicomLimits = DEFAULT_LIMITS) -> list[DicomSummary]:
    """One file, or a ZIP archive of files (what Orthanc's ``POST /instances`` takes):
    every file scanned, the whole refused when one is. A member's declared size is
    not trusted: its inflated bytes are counted as they come."""
    if not is_zip(body):
        return [admit_file(body, limits)]
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = [m for m in archive.infolist() if not m.is_dir()]
    except (zipfile.BadZipFile, ValueError, OSError) as error:
        raise RefusedDicom(f"The ZIP archive cannot be read: {error}.") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise RefusedDicom(f"The ZIP archive holds more than {MAX_ZIP_MEMBERS} files.")
    summaries = []
    for member in members:
        try:
            with archive.open(member) as stream:
                summaries.append(scan_stream(_capped(stream, limits.max_bytes), None, limits))
        except UnsafeDicom as unsafe:
            raise RefusedDicom(f"The file {member.filename[:200]!r} of the ZIP archive was "
                               f"refused: {unsafe}") from None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
            raise RefusedDicom(f"The file {member.filename[:200]!r} of the ZIP archive "
                               f"cannot be read: {error}.") from None
    return summaries


def _capped(stream: IO[bytes], limit: int) -> Callable[[int], bytes]:
    read_so_far = 0

    def read(n: int) -> bytes:
        nonlocal read_so_far
        data = stream.read(n)
        read_so_far += len(data)
        if read_so_far > limit:
            raise UnsafeDicom(f"The file inflates past {limit:,} bytes.")
        return data

    return read
