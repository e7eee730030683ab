"""Signal recordings (ECG, EEG): file readers and writers, the lossless codec, the store."""

from __future__ import annotations

from collections.abc import Mapping

from atrium.errors import BadRequest, UnsupportedMediaType
from atrium.signals.model import Recording

__all__ = ["read_signal_files"]

_EDF_SUFFIXES = (".edf", ".bdf", ".rec")


def read_signal_files(files: Mapping[str, bytes]) -> Recording:
    """The recording of an upload's files, by file name.

    A ``.hea`` makes it a WFDB record (with its ``.dat`` and annotation files,
    :func:`atrium.signals.wfdb.read_wfdb`). Otherwise the EDF/BDF files: exactly
    one with signals, plus any EDF+ files of annotations only (a Sleep-EDF
    hypnogram), whose events are merged in (:mod:`atrium.signals.edf`).

    Raises
    ------
    BadRequest, UnsupportedMediaType
        As the readers do; 415 when no file is of a known kind.
    """
    from atrium.signals import edf, wfdb  # noqa: PLC0415 - they import this package

    names = {name.replace("\\", "/").rsplit("/", 1)[-1]: name for name in files}
    if any(base.lower().endswith(".hea") for base in names):
        return wfdb.read_wfdb(files)
    edfs = sorted(original for base, original in names.items()
                  if base.lower().endswith(_EDF_SUFFIXES))
    if not edfs:
        raise UnsupportedMediaType(
            "no signal file recognised; upload a WFDB record (.hea with its .dat files), "
            "an EDF, EDF+ or BDF file")
    recordings, annotation_only = [], []
    for name in edfs:
        if edf.is_annotation_only(files[name]):
            annotation_only.append(name)
        else:
            recordings.append(edf.read_edf(files[name], _stem(name)))
    if len(recordings) != 1:
        raise BadRequest(f"an EDF upload needs exactly one file with signals, not "
                         f"{len(recordings)}; upload each recording on its own")
    recording = recordings[0]
    if not annotation_only:
        return recording
    events = list(recording.events)
    for name in annotation_only:
        events.extend(edf.read_edf_annotations(files[name], recording.sampling_rate))
    events.sort(key=lambda event: event.time)
    return Recording(name=recording.name, sampling_rate=recording.sampling_rate,
                     frames=recording.frames, channels=recording.channels,
                     start=recording.start, events=tuple(events))


def _stem(name: str) -> str:
    """A file name without directories and extension (the record name of an EDF)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] or base
