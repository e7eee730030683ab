"""Whole-slide images: readers (TIFF family, DICOM WSI), Deep Zoom, caches, the
slides table. No Orthanc and no HTTP in here."""
