"""OHIF, the study viewer Atrium serves at ``/viewer/`` (docs/VIEWER.md).

``install`` puts a pinned, unmodified OHIF build from npm in place (relocated to
``/viewer/``); ``site`` serves it with an app configuration generated from the
settings. Neither knows Orthanc.
"""
