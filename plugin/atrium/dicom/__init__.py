"""DICOM files as Atrium meets them at its edges: bounded scans before any parser."""
