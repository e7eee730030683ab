"""Resumable uploads: a large file sent as chunks in any order, each stored as its own
object, assembled into one object when a consumer (slides, recordings) claims it.
No Orthanc and no HTTP in here."""
