"""Backups with point-in-time recovery, and what a restore needs.

PostgreSQL holds both Atrium's database and Orthanc's index (two databases in one
cluster locally), so one physical backup of the cluster covers both at the same
moment. A backup is a base backup (``pg_basebackup``) plus the continuous archive
of the write-ahead log (the cluster's ``archive_command`` pushes every segment to
the backup store, ``file://`` or ``s3://``); recovery replays the archive onto a
base backup up to a chosen moment. Orthanc's stored files are immutable and named
by their UUID: each run copies the new ones and writes a manifest of the files
present, so a restore brings back the files of its moment.

Modules: :mod:`.archive` (the backup store's layout, WAL push and fetch),
:mod:`.wal` (the command PostgreSQL runs), :mod:`.basebackup` (taking and listing
base backups), :mod:`.restore`, :mod:`.files` (Orthanc's files),
:mod:`.schedule` (what is due, what may go). Nothing here imports ``orthanc``.
See ``docs/OPERATIONS.md``.
"""
