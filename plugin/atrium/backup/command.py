"""``atrium backup`` and ``atrium restore``: arguments in, one line per outcome out.

``atrium backup [run]`` does what the schedule says is due (``--full`` or
``--incremental`` force one), then prunes; ``setup`` turns WAL archiving on (the
private cluster: written and restarted; a server of one's own: the lines to add);
``list`` shows what the store holds and the span recovery can reach; ``prune``
applies the retention window alone; ``schedule`` stays in the foreground and runs
each slot. ``atrium restore --to TIMESTAMP --into DIR`` prepares a fresh data
directory that recovers to that moment when started.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import UTC, datetime
from datetime import time as time_of_day
from pathlib import Path

import psycopg

from atrium.backup.archive import (
    ArchiveConfig,
    ArchiveError,
    archived_wal,
    ensure_ready,
    prepare_for_server,
)
from atrium.backup.basebackup import base_backups, runs
from atrium.backup.files import restore_files
from atrium.backup.restore import restore
from atrium.backup.schedule import BackupKind, Schedule, next_slot
from atrium.backup.service import archive_settings, prune, run_backup, what_is_due
from atrium.pgserver import StartupError
from atrium.settings import Settings
from atrium.storage import ObjectStore, StorageError

log = logging.getLogger(__name__)

__all__ = ["add_backup_arguments", "add_restore_arguments", "backup_command",
           "restore_command"]

ARCHIVE_CONFIG = "backup-archive.json"


def archive_config(settings: Settings) -> ArchiveConfig:
    return ArchiveConfig(settings.backup_url or f"file://{settings.data_dir / 'backups'}",
                         settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key,
                         settings.s3_secure)


def schedule_of(settings: Settings) -> Schedule:
    hour, minute = (int(part) for part in settings.backup_full_at.split(":"))
    return Schedule(time_of_day(hour, minute), settings.backup_incremental_hours,
                    settings.backup_retention_days)


def add_backup_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("backup_action", nargs="?", default="run",
                         choices=["run", "setup", "list", "prune", "schedule"])
    kind = command.add_mutually_exclusive_group()
    kind.add_argument("--full", action="store_true", help="take a full backup now")
    kind.add_argument("--incremental", action="store_true",
                      help="ship the WAL written so far and copy new Orthanc files now")
    command.add_argument("--orthanc-storage", type=Path,
                         help="Orthanc's storage directory (default: <data dir>/orthanc/storage)")


def add_restore_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--to", required=True, dest="target",
                         help="the moment to recover to, ISO 8601 with a zone "
                              "(2026-11-27T14:32:00+01:00)")
    command.add_argument("--into", required=True, type=Path,
                         help="a fresh PostgreSQL data directory (absent or empty)")
    command.add_argument("--files-into", type=Path,
                         help="also restore Orthanc's stored files of that moment here")


def backup_command(settings: Settings, args: argparse.Namespace) -> int:
    config = archive_config(settings)
    try:
        store = config.open()
        action = args.backup_action
        if action == "setup":
            return _setup(settings, config)
        if action == "list":
            return _list(store)
        if action == "prune":
            ensure_ready(store)
            result = prune(store, schedule_of(settings), datetime.now(UTC))
            print(f"pruned {len(result.base_backups)} base backup(s), {result.wal_files} WAL "
                  f"file(s), {result.orthanc_files} Orthanc file(s)")
            return 0
        if action == "schedule":
            return _schedule(settings, store, args)
        kind = (BackupKind.FULL if args.full else BackupKind.INCREMENTAL if args.incremental
                else what_is_due(store, schedule_of(settings), datetime.now().astimezone()))
        if kind is None:
            upcoming = next_slot(schedule_of(settings), datetime.now().astimezone())
            print(f"nothing due; next run at {upcoming.isoformat(timespec='minutes')}")
            return 0
        return _run(settings, store, kind, args)
    except (ArchiveError, StorageError, StartupError, psycopg.Error, OSError) as error:
        print(f"atrium backup: {' '.join(str(error).split())}", file=sys.stderr)
        return 1


def _run(settings: Settings, store: ObjectStore, kind: BackupKind, args: argparse.Namespace) -> int:
    from atrium.devenv import postgres_tool

    storage = args.orthanc_storage or settings.data_dir / "orthanc" / "storage"
    result = run_backup(kind, url=settings.owner_url, store=store,
                        orthanc_storage=storage, pg_basebackup=postgres_tool("pg_basebackup"),
                        workdir=settings.data_dir / "tmp", schedule=schedule_of(settings))
    print(result.describe())
    return 0


def _setup(settings: Settings, config: ArchiveConfig) -> int:
    from atrium.devenv import LocalCluster

    path = settings.data_dir / ARCHIVE_CONFIG
    cluster = LocalCluster(settings.data_dir)
    owner = cluster.server_owner if settings.private_cluster else None
    prepare_for_server(config.open(), owner)
    config.write(path, owner)
    lines = archive_settings(path, settings.backup_archive_timeout_seconds)
    if not settings.private_cluster:
        print("Your PostgreSQL server archives its WAL itself; if it runs on this host and "
              "can run Atrium's Python, add to its postgresql.conf and restart it:")
        for key, value in lines.items():
            print(f"  {key} = '{value}'")
        print("Otherwise use pgBackRest or WAL-G (docs/OPERATIONS.md).")
        return 0
    if not cluster.initialized():
        print(f"atrium backup: no cluster in {cluster.pgdata} yet: run `make run` once first",
              file=sys.stderr)
        return 1
    cluster.configure(lines)
    if cluster.is_running():
        cluster.restart()
        print(f"WAL archiving to {config.url} is on (the cluster was restarted)")
    else:
        print(f"WAL archiving to {config.url} is on from the cluster's next start")
    return 0


def _list(store: ObjectStore) -> int:
    backups = base_backups(store)
    for backup in backups:
        size = sum(backup.files.values())
        print(f"full {backup.label}  finished {backup.finished_at.isoformat(timespec='seconds')}"
              f"  {size / 1e6:.1f} MB  from WAL {backup.start_wal}")
    done = runs(store)
    incrementals = [r for r in done if r.kind is BackupKind.INCREMENTAL]
    wal = archived_wal(store)
    print(f"{len(backups)} base backup(s), {len(incrementals)} incremental run(s), "
          f"{len(wal)} archived WAL file(s)")
    if backups:
        print(f"recovery reaches from {backups[0].finished_at.isoformat(timespec='seconds')} "
              f"to the last archived WAL ({wal[-1] if wal else '-'})")
    return 0


def _schedule(settings: Settings, store: ObjectStore, args: argparse.Namespace) -> int:
    schedule = schedule_of(settings)
    try:
        while True:
            now = datetime.now().astimezone()
            kind = what_is_due(store, schedule, now)
            if kind is not None:
                try:
                    _run(settings, store, kind, args)
                except (ArchiveError, StorageError, psycopg.Error, OSError) as error:
                    # A failed slot is retried in a minute, not abandoned until the next one.
                    log.error("backup run failed kind=%s error=%s", kind.value, error)
                    time.sleep(60)
                    continue
            upcoming = next_slot(schedule, datetime.now().astimezone())
            print(f"next backup run at {upcoming.isoformat(timespec='minutes')}", flush=True)
            while (left := (upcoming - datetime.now().astimezone()).total_seconds()) > 0:
                time.sleep(min(left, 60))
    except KeyboardInterrupt:
        return 0


def restore_command(settings: Settings, args: argparse.Namespace) -> int:
    from atrium.devenv import LocalCluster, postgres_tool

    try:
        target = datetime.fromisoformat(args.target)
    except ValueError:
        print(f"atrium restore: --to must be an ISO 8601 time, got {args.target!r}",
              file=sys.stderr)
        return 2
    if target.tzinfo is None:
        print("atrium restore: --to needs a time zone (e.g. 2026-11-27T14:32:00+01:00)",
              file=sys.stderr)
        return 2
    config = archive_config(settings)
    started = time.monotonic()
    try:
        store = config.open()
        restored = restore(store, config, target, args.into.resolve(),
                           pg_verifybackup=postgres_tool("pg_verifybackup"),
                           owner=LocalCluster(settings.data_dir).server_owner)
        files = restore_files(store, target, args.files_into) if args.files_into else None
    except (ArchiveError, StorageError, StartupError, OSError) as error:
        print(f"atrium restore: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"restored base backup {restored.base.label} into {restored.directory} in "
          f"{time.monotonic() - started:.1f}s; started, it replays the WAL archive to "
          f"{target.isoformat()} and opens as a primary")
    if files is not None:
        print(f"Orthanc files: {files.files} of that moment, {files.copied} copied to "
              f"{args.files_into}")
    return 0
