"""Whether an uploaded file may go on to Orthanc: the edges that take DICOM from a
client over HTTP (``POST /api/instances``; STOW-RS scans part by part) ask here
first, before anything parses the bytes. Orthanc's own ``POST /instances`` is
closed to everyone but Atrium (:func:`atrium.auth.request_filter.is_native_upload`).

A refusal is a :class:`~atrium.errors.RefusedDicom` (400) whose detail says what
is wrong with the file, in words its sender can act on.
"""

from __future__ import annotations

from atrium.dicom.scan import (
    DEFAULT_LIMITS,
    DicomLimits,
    DicomSummary,
    UnsafeDicom,
    scan,
)
from atrium.errors import RefusedDicom

__all__ = ["admit_file"]


def admit_file(body: bytes, limits: DicomLimits = DEFAULT_LIMITS) -> DicomSummary:
    """The scan of one Part 10 file; :class:`RefusedDicom` when it must not be stored."""
    try:
        return scan(body, limits)
    except UnsafeDicom as unsafe:
        raise RefusedDicom(f"The DICOM file was refused: {unsafe}") from None
