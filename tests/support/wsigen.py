"""Synthetic DICOM whole-slide images (VL Whole Slide Microscopy, TILED_FULL) whose
every level is :func:`tests.support.slidegen.pattern` exactly — so a tile read
back from Orthanc can be checked against what it must show.

Level k of a ``width`` × ``height`` slide is ``pattern(0, 0, *level_shape(w, h, k),
2**k)``, cut into ``tile`` squares (edge tiles padded by repeating the last
row/column, as scanners do, so JPEG keeps the image's edge clean). Frames are
JPEG baseline (YBR_FULL_422, or RGB without an Adobe marker, as some converters
write them) or uncompressed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import imagecodecs
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import UID, JPEGBaseline8Bit, generate_uid

from tests.support.slidegen import level_shape, pattern

__all__ = ["EXPLICIT_LE", "JPEG_2000_LOSSLESS", "WSI_SOP_CLASS", "WsiSpec", "label_image",
           "make_wsi_series", "simplified_tags", "strip_adobe_marker", "wsi_instance"]

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
EXPLICIT_LE = UID("1.2.840.10008.1.2.1")
JPEG_2000_LOSSLESS = UID("1.2.840.10008.1.2.4.90")
LABEL_SIZE = (300, 120)  # (width, height) of the label image


@dataclass
class WsiSpec:
    width: int = 1500
    height: int = 1100
    tile: int = 256
    levels: int = 3  # level k is 2**k smaller
    skip_levels: tuple[int, ...] = ()  # levels left out of the series
    photometric: str = "YBR_FULL_422"  # or "RGB"; JPEG 2000 frames are YBR_RCT
    transfer_syntax: str = JPEGBaseline8Bit  # or EXPLICIT_LE, JPEG_2000_LOSSLESS
    quality: int = 92
    mpp: float = 0.25  # micrometres per pixel at level 0
    objective_power: float | None = 40.0
    label: bool = True
    patient_id: str = "WSI-0001"
    patient_name: str = "Doe^Slide"
    deidentified: bool = False
    container_id: str | None = "S-2024-0001"
    study_uid: str = field(default_factory=generate_uid)
    series_uid: str = field(default_factory=generate_uid)
    frame_of_reference_uid: str = field(default_factory=generate_uid)
    model: str = "Atrium TestScanner 2"


def strip_adobe_marker(jpeg: bytes) -> bytes:
    """The JPEG without its APP14 "Adobe" segment (libjpeg writes one for RGB)."""
    at = jpeg.find(b"\xff\xee")
    if at < 0:
        return jpeg
    length = int.from_bytes(jpeg[at + 2:at + 4], "big")
    return jpeg[:at] + jpeg[at + 2 + length:]


def _encode(tile: np.ndarray, spec: WsiSpec) -> bytes:
    if spec.transfer_syntax == JPEG_2000_LOSSLESS:
        return bytes(imagecodecs.jpeg2k_encode(tile, level=0, codecformat="J2K",
                                               reversible=True))
    if spec.transfer_syntax != JPEGBaseline8Bit:
        return tile.tobytes()
    if spec.photometric == "RGB":
        return strip_adobe_marker(bytes(imagecodecs.jpeg8_encode(
            tile, level=spec.quality, outcolorspace="RGB")))
    return bytes(imagecodecs.jpeg8_encode(tile, level=spec.quality, subsampling=(2, 1)))


def _frames(image: np.ndarray, tile: int, spec: WsiSpec) -> list[bytes]:
    """TILED_FULL order: along the first row of tiles, then the next row."""
    height, width = image.shape[:2]
    rows, cols = -(-height // tile), -(-width // tile)
    padded = np.pad(image, ((0, rows * tile - height), (0, cols * tile - width), (0, 0)),
                    mode="edge")
    return [_encode(np.ascontiguousarray(padded[r * tile:(r + 1) * tile,
                                                c * tile:(c + 1) * tile]), spec)
            for r in range(rows) for c in range(cols)]


def label_image() -> np.ndarray:
    """The label: a pattern of its own (seen from far), distinct from every level."""
    width, height = LABEL_SIZE
    return pattern(0, 0, width, height, 37)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _common(spec: WsiSpec, number: int) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = WSI_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.PatientID = spec.patient_id
    ds.PatientName = spec.patient_name
    ds.PatientBirthDate = "19650412"
    ds.PatientSex = "F"
    if spec.deidentified:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "test"
    ds.StudyInstanceUID = spec.study_uid
    ds.StudyDate, ds.StudyTime = "20240305", "091500"
    ds.StudyID, ds.AccessionNumber = "1", "PATH-1"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Biopsy"
    ds.Modality = "SM"
    ds.SeriesInstanceUID = spec.series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "H&E"
    ds.InstanceNumber = number
    ds.FrameOfReferenceUID = spec.frame_of_reference_uid
    ds.PositionReferenceIndicator = "SLIDE_CORNER"
    ds.Manufacturer = "Atrium Tests"
    ds.ManufacturerModelName = spec.model
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = "1"
    ds.AcquisitionDateTime = "20240305091012.500000"
    ds.ContentDate, ds.ContentTime = "20240305", "091012"
    if spec.container_id is not None:
        ds.ContainerIdentifier = spec.container_id
    ds.IssuerOfTheContainerIdentifierSequence = Sequence()
    ds.ContainerTypeCodeSequence = Sequence([_code("433466003", "SCT", "Microscope slide")])
    specimen = Dataset()
    specimen.SpecimenIdentifier = f"{spec.container_id or 'specimen'}-1"
    specimen.SpecimenUID = generate_uid()
    specimen.IssuerOfTheSpecimenIdentifierSequence = Sequence()
    specimen.SpecimenPreparationSequence = Sequence()
    ds.SpecimenDescriptionSequence = Sequence([specimen])
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = ("YBR_RCT" if spec.transfer_syntax == JPEG_2000_LOSSLESS
                                    else spec.photometric)
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.BurnedInAnnotation = "NO"
    ds.SpecimenLabelInImage = "NO"
    ds.FocusMethod = "AUTO"
    ds.ExtendedDepthOfField = "NO"
    ds.VolumetricProperties = "VOLUME"
    ds.ImageOrientationSlide = [0, -1, 0, -1, 0, 0]
    ds.NumberOfOpticalPaths = 1
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    path.IlluminationTypeCodeSequence = Sequence([_code("111744", "DCM",
                                                        "Brightfield illumination")])
    path.IlluminationColorCodeSequence = Sequence([_code("414298005", "SCT", "Full Spectrum")])
    if spec.objective_power is not None:
        path.ObjectiveLensPower = spec.objective_power
    ds.OpticalPathSequence = Sequence([path])
    if spec.transfer_syntax == JPEGBaseline8Bit:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionRatio = 10
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    return ds


def _finish(ds: Dataset, frames: list[bytes], spec: WsiSpec) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(spec.transfer_syntax)
    ds.file_meta = meta
    if spec.transfer_syntax in (JPEGBaseline8Bit, JPEG_2000_LOSSLESS):
        ds.PixelData = encapsulate(frames, has_bot=True)
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = b"".join(frames)
        ds["PixelData"].VR = "OB"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _level(spec: WsiSpec, k: int, number: int) -> bytes:
    width, height = level_shape(spec.width, spec.height, k)
    ds = _common(spec, number)
    ds.ImageType = (["ORIGINAL", "PRIMARY", "VOLUME", "NONE"] if k == 0
                    else ["DERIVED", "PRIMARY", "VOLUME", "RESAMPLED"])
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = width, height
    ds.TotalPixelMatrixFocalPlanes = 1
    origin = Dataset()
    origin.XOffsetInSlideCoordinateSystem = 20.0
    origin.YOffsetInSlideCoordinateSystem = 40.0
    ds.TotalPixelMatrixOriginSequence = Sequence([origin])
    ds.Columns = ds.Rows = spec.tile
    frames = _frames(pattern(0, 0, width, height, 2 ** k), spec.tile, spec)
    ds.NumberOfFrames = len(frames)
    spacing_mm = spec.mpp * 2 ** k / 1000
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]  # row spacing \ column spacing
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.ImagedVolumeWidth = spec.width * spec.mpp / 1000
    ds.ImagedVolumeHeight = spec.height * spec.mpp / 1000
    ds.ImagedVolumeDepth = 0.001
    return _finish(ds, frames, spec)


def _label(spec: WsiSpec, number: int) -> bytes:
    image = label_image()
    ds = _common(spec, number)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
    ds.SpecimenLabelInImage = "YES"
    ds.BurnedInAnnotation = "YES"
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.Rows, ds.Columns = image.shape[:2]
    ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns = image.shape[:2]
    ds.NumberOfFrames = 1
    return _finish(ds, [_encode(image, spec)], spec)


def make_wsi_series(spec: WsiSpec) -> list[bytes]:
    """The series' files: its levels, largest first, then the label."""
    blobs = [_level(spec, k, k + 1) for k in range(spec.levels) if k not in spec.skip_levels]
    if spec.label:
        blobs.append(_label(spec, spec.levels + 1))
    return blobs


def wsi_instance(blob: bytes) -> Dataset:
    return dcmread(io.BytesIO(blob))


def simplified_tags(ds: Dataset) -> dict[str, object]:
    """The dataset as Orthanc's ``/instances/{id}/tags?simplify`` shows it: keywords,
    values as strings (several joined by backslashes), sequences as lists, binary
    values as null, no pixel data and no file meta."""
    tags: dict[str, object] = {}
    for element in ds:
        if element.keyword in ("", "PixelData"):
            continue
        if element.VR == "SQ":
            tags[element.keyword] = [simplified_tags(item) for item in element.value]
        elif element.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            tags[element.keyword] = None
        elif element.VM > 1:
            tags[element.keyword] = "\\".join(str(v) for v in element.value)
        else:
            tags[element.keyword] = "" if element.value is None else str(element.value)
    return tags
