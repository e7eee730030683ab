"""Annotations: coordinates, versions and the DICOM SR round trip."""
