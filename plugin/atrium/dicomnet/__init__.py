"""DICOM networking scoped per organization: C-FIND and C-MOVE answered from the
mirror for the calling AE title's organization, C-GET refused.

A domain package: no ``orthanc`` import. ``atrium_entry.py`` adapts the plugin's
find and move callbacks to :class:`~atrium.dicomnet.service.DicomNetwork`.
"""
