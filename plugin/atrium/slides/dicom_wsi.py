"""DICOM VL Whole Slide Microscopy series as slides: which instances make the
pyramid, whether the series is whole, and tiles from the frames Orthanc stores.

A series becomes one slide. Its VOLUME instances are the pyramid levels (largest
first), its LABEL, OVERVIEW and THUMBNAIL instances the associated images
``label``, ``macro`` and ``thumbnail``. Tiles are the instances' frames, read
through a :data:`FrameReader` (the app's reads Orthanc's
``/instances/{id}/frames/{n}/raw``): there is no second copy of the pixels.

What a series must be to become a slide (:func:`describe_series`, which raises
:class:`UnusableSeries` with the reason otherwise):

* every VOLUME instance ``TILED_FULL`` (frames in row-major tile order), 8 bits,
  one or three samples, in a transfer syntax decoded here; its NumberOfFrames is
  ``ceil(columns / tile width) × ceil(rows / tile height) × focal planes × optical
  paths`` — only the first focal plane and optical path are shown;
* one instance per level: two VOLUME instances of one size (a concatenation,
  optical paths or focal planes split over instances) are not served;
* the largest level is full resolution: ImageType value 4 is not ``RESAMPLED``;
* no level missing: when every downsample is a power of two, the pyramid steps
  by the factor of its first step (2 or 4 …) and only its last step may be
  smaller (a pyramid that stops early, 1-4-16-32). A step larger than the first
  means a level is missing (1-2-8). Downsamples that are not powers of two are
  only checked to grow.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset
from pydicom.valuerep import DA, DT, TM

from atrium.errors import NotFound
from atrium.slides.model import Level, SlideInfo
from atrium.slides.tiled import (
    DecodedTileCache,
    StoredLevel,
    TiledSlideReader,
    TiledSource,
    assemble,
)

__all__ = [
    "ASSOCIATED_KINDS", "JPEG_BASELINE", "WSI_SOP_CLASS", "DicomWsiSource", "FrameReader",
    "UnusableSeries", "WsiImage", "WsiSeries", "decode_frame", "describe_series",
    "open_dicom_slide", "passthrough_jpeg", "wsi_image",
]

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"

FrameReader = Callable[[str, int], bytes]
"""``(orthanc instance id, frame index from 0) -> the frame's stored bytes``."""

ASSOCIATED_KINDS = {"LABEL": "label", "OVERVIEW": "macro", "THUMBNAIL": "thumbnail"}

_NATIVE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")
_JPEG_8BIT = (JPEG_BASELINE, "1.2.840.10008.1.2.4.51")
_JPEG_2000 = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
              "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")
_JPEG_LS = ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")
_PHOTOMETRIC = ("RGB", "YBR_FULL_422", "YBR_FULL", "YBR_ICT", "YBR_RCT", "MONOCHROME2")
_POWER_OF_TWO_TOLERANCE = 0.02  # odd sizes round: 1001 → 501 is a downsample of 1.998


class UnusableSeries(ValueError):
    """A WSI series that cannot be served as a slide; the message says why, for an
    operator (ids, never names)."""


def _decoder(transfer_syntax: str) -> Callable[[bytes], np.ndarray] | None:
    """How frames of this transfer syntax are decoded here; None when they cannot be."""
    if transfer_syntax in _JPEG_8BIT:
        return imagecodecs.jpeg8_decode
    if transfer_syntax in _JPEG_2000 and imagecodecs.JPEG2K.available:
        return imagecodecs.jpeg2k_decode
    if transfer_syntax in _JPEG_LS and imagecodecs.JPEGLS.available:
        return imagecodecs.jpegls_decode
    return None


@dataclass(frozen=True)
class WsiImage:
    """One instance of the series, as the reader needs it."""

    orthanc_id: str
    sop_instance_uid: str
    kind: str  # ImageType value 3: VOLUME, LABEL, OVERVIEW, THUMBNAIL
    resampled: bool  # ImageType value 4 is RESAMPLED
    width: int  # TotalPixelMatrixColumns
    height: int
    tile_width: int  # Columns
    tile_height: int
    frames: int
    transfer_syntax: str
    photometric: str
    samples_per_pixel: int
    planar_configuration: int

    @property
    def grid(self) -> tuple[int, int]:
        """(columns, rows) of tiles."""
        return -(-self.width // self.tile_width), -(-self.height // self.tile_height)

    @property
    def passthrough(self) -> bool:
        """Whether a stored frame is a JPEG a browser shows as it is (with an Adobe
        marker added to an RGB one, :func:`passthrough_jpeg`)."""
        return (self.transfer_syntax == JPEG_BASELINE
                and self.photometric in ("RGB", "YBR_FULL_422", "YBR_FULL", "MONOCHROME2"))

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> WsiImage:
        return cls(**{name: value[name] for name in cls.__dataclass_fields__})


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int:
    value = ds.get(keyword)
    if value in (None, ""):
        if default is None:
            raise UnusableSeries(f"instance {ds.get('SOPInstanceUID', '?')} has no {keyword}")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnusableSeries(f"instance {ds.get('SOPInstanceUID', '?')}: {keyword} is not "
                             "a number") from None


def wsi_image(orthanc_id: str, ds: Dataset) -> WsiImage:
    """The instance's geometry and coding; the transfer syntax is the file meta's."""
    uid = str(ds.get("SOPInstanceUID", "?"))
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if len(image_type) < 3:
        raise UnusableSeries(f"instance {uid}: ImageType has no value 3 (VOLUME, LABEL…)")
    meta = getattr(ds, "file_meta", None)
    transfer_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    tile_width, tile_height = _int(ds, "Columns"), _int(ds, "Rows")
    return WsiImage(
        orthanc_id=orthanc_id, sop_instance_uid=uid, kind=image_type[2],
        resampled=len(image_type) > 3 and image_type[3] == "RESAMPLED",
        width=_int(ds, "TotalPixelMatrixColumns", tile_width),
        height=_int(ds, "TotalPixelMatrixRows", tile_height),
        tile_width=tile_width, tile_height=tile_height,
        frames=_int(ds, "NumberOfFrames", 1), transfer_syntax=transfer_syntax,
        photometric=str(ds.get("PhotometricInterpretation", "")).strip().upper(),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        planar_configuration=_int(ds, "PlanarConfiguration", 0))


def _check_image(image: WsiImage, ds: Dataset) -> None:
    """Refuse what the reader cannot show faithfully."""
    uid = image.sop_instance_uid
    organization = str(ds.get("DimensionOrganizationType", "")).upper()
    if image.frames > 1 and organization != "TILED_FULL":
        raise UnusableSeries(f"instance {uid}: DimensionOrganizationType is "
                             f"{organization or 'absent'}; only TILED_FULL is served")
    if _int(ds, "BitsAllocated", 8) != 8:
        raise UnusableSeries(f"instance {uid}: {ds.BitsAllocated}-bit samples; only 8-bit "
                             "images are served")
    if image.samples_per_pixel not in (1, 3) or image.photometric not in _PHOTOMETRIC:
        raise UnusableSeries(f"instance {uid}: PhotometricInterpretation "
                             f"{image.photometric or 'absent'} with {image.samples_per_pixel} "
                             "samples is not served")
    if image.transfer_syntax not in _NATIVE and _decoder(image.transfer_syntax) is None:
        raise UnusableSeries(f"instance {uid}: transfer syntax {image.transfer_syntax or '?'} "
                             "cannot be decoded here")
    if "SOPInstanceUIDOfConcatenationSource" in ds:
        raise UnusableSeries(f"instance {uid} is part of a concatenation; concatenations "
                             "are not served")
    planes = _int(ds, "TotalPixelMatrixFocalPlanes", 1)
    paths = _int(ds, "NumberOfOpticalPaths", 1)
    cols, rows = image.grid
    expected = cols * rows * planes * paths
    if image.frames != expected:
        raise UnusableSeries(
            f"instance {uid}: NumberOfFrames is {image.frames}, but {image.width}×"
            f"{image.height} in {image.tile_width}×{image.tile_height} tiles"
            f"{f' × {planes} focal planes' if planes > 1 else ''}"
            f"{f' × {paths} optical paths' if paths > 1 else ''} makes {expected}")


def _check_pyramid(levels: Sequence[WsiImage]) -> list[float]:
    """The levels' downsamples, once the pyramid is known to be whole."""
    base = levels[0]
    if base.resampled:
        raise UnusableSeries(f"no full-resolution level: the largest VOLUME instance "
                             f"{base.sop_instance_uid} ({base.width}×{base.height}) is "
                             "RESAMPLED")
    downsamples = [base.width / level.width for level in levels]
    for level, downsample in zip(levels[1:], downsamples[1:], strict=True):
        # Each side of a level is rounded on its own: allow that rounding, seen
        # through the other side's.
        if abs(base.height / downsample - level.height) > 2 + level.height / level.width:
            raise UnusableSeries(f"level {level.sop_instance_uid} ({level.width}×"
                                 f"{level.height}) does not keep the slide's proportions")
    exponents = [math.log2(d) for d in downsamples]
    if all(abs(e - round(e)) * math.log(2) < _POWER_OF_TWO_TOLERANCE for e in exponents):
        steps = [round(b) - round(a) for a, b in zip(exponents, exponents[1:], strict=False)]
        for n, step in enumerate(steps):
            if steps and step > steps[0]:
                raise UnusableSeries(
                    f"a level is missing between {levels[n].width}×{levels[n].height} and "
                    f"{levels[n + 1].width}×{levels[n + 1].height}: the pyramid steps by "
                    f"{2 ** steps[0]} but skips {2 ** step}")
    return downsamples


def _spacing_um(ds: Dataset) -> tuple[float | None, float | None]:
    """(x, y) micrometres per pixel; PixelSpacing is (row spacing, column spacing) in mm,
    so x — along a row, from column to column — is its second value."""
    try:
        measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        row_mm, column_mm = (float(v) for v in measures.PixelSpacing)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None, None
    if not (row_mm > 0 and column_mm > 0 and math.isfinite(row_mm + column_mm)):
        return None, None
    return column_mm * 1000, row_mm * 1000


def _magnification(ds: Dataset) -> str | None:
    for path in ds.get("OpticalPathSequence") or []:
        power = path.get("ObjectiveLensPower")
        try:
            if power not in (None, "") and float(power) > 0:
                return f"{float(power):g}x"
        except (TypeError, ValueError):
            continue
    return None


def _scan_date(ds: Dataset) -> dt.datetime | None:
    """AcquisitionDateTime, else ContentDate + ContentTime. DICOM gives local time,
    with an offset only if the scanner wrote one; without it the time is taken as
    UTC (the TimezoneOffsetFromUTC attribute corrects it when present)."""
    when: dt.datetime | None = None
    try:
        if ds.get("AcquisitionDateTime"):
            when = DT(str(ds.AcquisitionDateTime))
        elif ds.get("ContentDate"):
            day = DA(str(ds.ContentDate))
            time = TM(str(ds.ContentTime)) if ds.get("ContentTime") else dt.time()
            when = dt.datetime.combine(day, time)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is not None:
        return when
    offset = str(ds.get("TimezoneOffsetFromUTC", "") or "")
    zone = dt.UTC
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:])
        zone = dt.timezone(dt.timedelta(minutes=minutes if offset[0] == "+" else -minutes))
    return when.replace(tzinfo=zone)


def _text(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").replace("\x00", "").strip()
    return value or None


@dataclass(frozen=True)
class WsiSeries:
    """A usable WSI series: the slide row's values and what the reader needs."""

    series_instance_uid: str
    study_instance_uid: str | None
    container_identifier: str | None
    levels: tuple[WsiImage, ...]
    associated: dict[str, WsiImage]
    info: SlideInfo

    @property
    def slide_id(self) -> str:
        """The lab's name for the slide: its Container Identifier, else the series UID."""
        return (self.container_identifier or self.series_instance_uid)[:255]

    def metadata(self) -> dict[str, Any]:
        """The slide row's ``metadata``: the series' identity, the levels as every
        slide has them, and under ``dicom`` what :func:`open_dicom_slide` needs to
        serve the slide without asking Orthanc for the headers again."""
        info = self.info
        return {
            "series_instance_uid": self.series_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "container_identifier": self.container_identifier,
            "source": info.properties,
            "associated": list(info.associated),
            "levels": [{"width": lv.width, "height": lv.height, "downsample": lv.downsample}
                       for lv in info.levels],
            "lossless": info.lossless,
            "dicom": {
                "levels": [image.as_json() for image in self.levels],
                "associated": {name: image.as_json() for name, image in self.associated.items()},
                "tile_size": info.tile_size, "mpp": [info.mpp_x, info.mpp_y],
                "magnification": info.magnification, "scanner_model": info.scanner_model,
                "scan_date": info.scan_date.isoformat() if info.scan_date else None,
            },
        }

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> WsiSeries:
        """The series as :meth:`metadata` wrote it.

        Raises
        ------
        ValueError
            If ``metadata`` was not written by :meth:`metadata` (no ``dicom`` part).
        """
        try:
            dicom = metadata["dicom"]
            levels = tuple(WsiImage.from_json(v) for v in dicom["levels"])
            associated = {name: WsiImage.from_json(v)
                          for name, v in dicom.get("associated", {}).items()}
            mpp_x, mpp_y = dicom.get("mpp") or (None, None)
            scan_date = dicom.get("scan_date")
            info = SlideInfo(
                file_format="DICOM",
                levels=tuple(Level(lv.width, lv.height, levels[0].width / lv.width)
                             for lv in levels),
                tile_size=int(dicom["tile_size"]), mpp_x=mpp_x, mpp_y=mpp_y,
                magnification=dicom.get("magnification"),
                scanner_model=dicom.get("scanner_model"),
                scan_date=dt.datetime.fromisoformat(scan_date) if scan_date else None,
                associated=tuple(sorted(associated)),
                lossless=all(lv.transfer_syntax in _NATIVE for lv in levels),
                properties=dict(metadata.get("source") or {}))
        except (KeyError, TypeError, IndexError, ZeroDivisionError) as exc:
            raise ValueError(f"not the metadata of a DICOM slide: {exc!r}") from exc
        if not levels:
            raise ValueError("not the metadata of a DICOM slide: no levels")
        return cls(metadata["series_instance_uid"], metadata.get("study_instance_uid"),
                   metadata.get("container_identifier"), levels, associated, info)


def describe_series(series_instance_uid: str, instances: Sequence[tuple[str, Dataset]]
                    ) -> WsiSeries:
    """The slide that the series' WSI instances (``(orthanc id, header)``) make.

    Raises
    ------
    UnusableSeries
        When the series is not a whole, servable pyramid (see the module's rules).
    """
    parsed = [(wsi_image(orthanc_id, ds), ds) for orthanc_id, ds in instances
              if str(ds.get("SOPClassUID", "")) == WSI_SOP_CLASS]
    volumes = sorted(((image, ds) for image, ds in parsed if image.kind == "VOLUME"),
                     key=lambda pair: -pair[0].width * pair[0].height)
    if not volumes:
        raise UnusableSeries("no VOLUME instance: the series has no pyramid")
    for image, ds in volumes:
        _check_image(image, ds)
    for (first, _), (second, _) in zip(volumes, volumes[1:], strict=False):
        if (first.width, first.height) == (second.width, second.height):
            raise UnusableSeries(f"two VOLUME instances of {first.width}×{first.height} "
                                 f"({first.sop_instance_uid}, {second.sop_instance_uid}); "
                                 "levels split over instances are not served")
    levels = tuple(image for image, _ in volumes)
    downsamples = _check_pyramid(levels)
    associated: dict[str, WsiImage] = {}
    for image, ds in parsed:
        name = ASSOCIATED_KINDS.get(image.kind)
        if name is None or name in associated:
            continue
        try:
            _check_image(image, ds)
        except UnusableSeries:
            continue  # a slide without its label is still a slide
        associated[name] = image
    base = volumes[0][1]
    mpp_x, mpp_y = _spacing_um(base)
    info = SlideInfo(
        file_format="DICOM",
        levels=tuple(Level(image.width, image.height, downsample)
                     for image, downsample in zip(levels, downsamples, strict=True)),
        tile_size=max(levels[0].tile_width, levels[0].tile_height), mpp_x=mpp_x, mpp_y=mpp_y,
        magnification=_magnification(base),
        scanner_model=_text(base, "ManufacturerModelName"), scan_date=_scan_date(base),
        associated=tuple(sorted(associated)),
        lossless=all(image.transfer_syntax in _NATIVE for image in levels),
        properties={"transfer_syntax": levels[0].transfer_syntax,
                    "photometric_interpretation": levels[0].photometric,
                    "manufacturer": _text(base, "Manufacturer"),
                    "tile_width": levels[0].tile_width, "tile_height": levels[0].tile_height})
    return WsiSeries(series_instance_uid, _text(base, "StudyInstanceUID"),
                     _text(base, "ContainerIdentifier"), levels, associated, info)


# ------------------------------------------------------------------ frames

_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, transform 0


def _segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of the header segments between SOI and SOS."""
    found, at = [], 2
    while at + 4 <= len(jpeg) and jpeg[at] == 0xFF:
        marker = jpeg[at + 1]
        if marker == 0xDA:  # SOS: the entropy-coded data follows
            break
        end = at + 2 + int.from_bytes(jpeg[at + 2:at + 4], "big")
        found.append((marker, at, end))
        at = end
    return found


def passthrough_jpeg(frame: bytes, photometric: str) -> bytes:
    """The stored JPEG frame as a browser must get it. A YCbCr or grey frame is sent
    unchanged. An RGB frame (encoded without colour transform) gets an Adobe APP14
    marker with transform 0 and loses any JFIF APP0, which would make decoders
    assume YCbCr and show false colours."""
    if photometric != "RGB" or not frame.startswith(b"\xff\xd8"):
        return frame
    segments = _segments(frame)
    if any(marker == 0xEE for marker, _, _ in segments):
        return frame
    jfif = [(start, end) for marker, start, end in segments
            if marker == 0xE0 and frame[start + 4:start + 9] == b"JFIF\x00"]
    body = frame[2:]
    for start, end in reversed(jfif):
        body = body[:start - 2] + body[end - 2:]
    return b"\xff\xd8" + _ADOBE_RGB + body


def decode_frame(image: WsiImage, data: bytes) -> np.ndarray:
    """uint8 RGB array (tile height, tile width, 3) of a frame as
    :func:`passthrough_jpeg` or Orthanc's raw frame route gives it."""
    if image.transfer_syntax in _NATIVE:
        samples = image.samples_per_pixel
        shape = ((samples, image.tile_height, image.tile_width) if image.planar_configuration
                 else (image.tile_height, image.tile_width, samples))
        size = image.tile_width * image.tile_height * samples
        if len(data) < size:
            raise ValueError(f"frame of {image.sop_instance_uid} has {len(data)} bytes, "
                             f"{size} expected")
        pixels = np.frombuffer(data[:size], np.uint8).reshape(shape)
        if image.planar_configuration:
            pixels = pixels.transpose(1, 2, 0)
        if image.photometric == "YBR_FULL":
            from pydicom.pixels import convert_color_space

            pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
    else:
        decoder = _decoder(image.transfer_syntax)
        if decoder is None:
            raise ValueError(f"transfer syntax {image.transfer_syntax} cannot be decoded")
        pixels = np.asarray(decoder(data))
    if pixels.ndim == 2 or pixels.shape[-1] == 1:
        pixels = np.repeat(pixels.reshape(pixels.shape[0], pixels.shape[1], 1), 3, axis=2)
    return np.ascontiguousarray(pixels[:image.tile_height, :image.tile_width, :3],
                                dtype=np.uint8)


# ------------------------------------------------------------------ the reader

class DicomWsiSource(TiledSource):
    """The series' pyramid as a :class:`~atrium.slides.tiled.TiledSource`: tile
    (col, row) of a level is frame ``row × columns + col`` of its instance (the
    first focal plane and optical path of a TILED_FULL instance)."""

    def __init__(self, series: WsiSeries, frame: FrameReader) -> None:
        self.series = series
        self._frame = frame
        self.stored_levels = tuple(
            StoredLevel(image.width, image.height, image.tile_width, image.tile_height,
                        level.downsample, is_jpeg=image.passthrough,
                        lossless=image.transfer_syntax in _NATIVE)
            for image, level in zip(series.levels, series.info.levels, strict=True))

    def _stored(self, image: WsiImage, col: int, row: int) -> bytes:
        data = self._frame(image.orthanc_id, row * image.grid[0] + col)
        if image.transfer_syntax in _JPEG_8BIT:
            return passthrough_jpeg(data, image.photometric)
        return data

    def stored_tile(self, level: int, col: int, row: int) -> bytes:
        return self._stored(self.series.levels[level], col, row)

    def decode(self, level: int, data: bytes) -> np.ndarray:
        return decode_frame(self.series.levels[level], data)

    def associated(self, name: str) -> np.ndarray:
        image = self.series.associated.get(name)
        if image is None:
            raise NotFound(f"this slide has no {name} image")
        whole = StoredLevel(image.width, image.height, image.tile_width, image.tile_height, 1.0)
        return assemble(whole, 0, 0, image.width, image.height,
                        lambda col, row: decode_frame(image, self._stored(image, col, row)))


def open_dicom_slide(metadata: dict[str, Any], frame: FrameReader,
                     cache: DecodedTileCache | None = None) -> TiledSlideReader:
    """The reader of a DICOM slide row, from its ``metadata`` alone (see
    :meth:`WsiSeries.metadata`); frames are read through ``frame``.

    Raises
    ------
    ValueError
        If the row's metadata is not a DICOM slide's.
    """
    series = WsiSeries.from_metadata(metadata)
    return TiledSlideReader(DicomWsiSource(series, frame), series.info, cache)
