"""A backup run as ``atrium backup`` does it: what is due, then the files, the
run's record, and the pruning of what the retention window no longer needs."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from atrium.backup.archive import archived_wal, ensure_ready, wal_object
from atrium.backup.basebackup import (
    Run,
    base_backups,
    delete_base_backup,
    label_for,
    record_run,
    require_archiving,
    runs,
    take_full,
    take_incremental,
)
from atrium.backup.files import prune_files, sync_files
from atrium.backup.restore import wal_command
from atrium.backup.schedule import BackupKind, Schedule, due, prune_plan
from atrium.storage import ObjectStore

log = logging.getLogger(__name__)

__all__ = ["PruneResult", "RunResult", "archive_settings", "prune", "run_backup", "what_is_due"]


def archive_settings(config: Path, archive_timeout_seconds: int = 300,
                     python: str = sys.executable) -> dict[str, str]:
    """The server settings that archive every WAL file to the backup store.

    ``archive_timeout`` bounds how long a committed change can wait on a quiet
    server before its segment is shipped (the recovery point objective).
    """
    return {"wal_level": "replica", "archive_mode": "on",
            "archive_command": wal_command("push", config, python),
            "archive_timeout": f"{archive_timeout_seconds}s"}


def what_is_due(store: ObjectStore, schedule: Schedule, now: datetime) -> BackupKind | None:
    done = runs(store)
    fulls = [r.finished_at for r in done if r.kind is BackupKind.FULL]
    return due(schedule, now, max(fulls, default=None),
               max((r.finished_at for r in done), default=None))


@dataclass(frozen=True)
class PruneResult:
    base_backups: list[str] = field(default_factory=list)
    wal_files: int = 0
    runs: int = 0
    orthanc_files: int = 0


@dataclass(frozen=True)
class RunResult:
    run: Run
    orthanc_files: int
    orthanc_copied: int
    pruned: PruneResult

    def describe(self) -> str:
        pruned = self.pruned
        return (f"{self.run.kind.value} backup {self.run.label} in {self.run.seconds:.1f}s "
                f"(WAL up to {self.run.wal or '-'}); Orthanc files: {self.orthanc_files}, "
                f"{self.orthanc_copied} new; pruned {len(pruned.base_backups)} base backup(s), "
                f"{pruned.wal_files} WAL file(s), {pruned.orthanc_files} Orthanc file(s)")


def run_backup(kind: BackupKind, *, url: str, store: ObjectStore, orthanc_storage: Path | None,
               pg_basebackup: str, workdir: Path, schedule: Schedule,
               now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> RunResult:
    """One run of ``kind``, then pruning by ``schedule``'s retention."""
    ensure_ready(store)
    require_archiving(url)
    started = time.monotonic()
    if kind is BackupKind.FULL:
        backup = take_full(url, store, pg_basebackup=pg_basebackup, workdir=workdir, now=now)
        label = backup.label
        # The end of the backup's WAL, so that a restore right after it needs nothing
        # the archive might still be receiving.
        wal = take_incremental(url, store)
    else:
        label = label_for(now())
        wal = take_incremental(url, store)
    files = sync_files(store, orthanc_storage, label) if orthanc_storage else None
    run = Run(label, kind, now(), wal, time.monotonic() - started)
    record_run(store, run)
    pruned = prune(store, schedule, now())
    log.info("backup run done kind=%s label=%s seconds=%.1f", kind.value, label, run.seconds)
    return RunResult(run, files.files if files else 0, files.copied if files else 0, pruned)


def prune(store: ObjectStore, schedule: Schedule, now: datetime) -> PruneResult:
    """Drop the base backups, WAL, run records and Orthanc file copies that no
    moment of the retention window needs."""
    backups = base_backups(store)
    if not backups:
        return PruneResult()
    plan = prune_plan(schedule, now, [b.info() for b in backups])
    for label in plan.drop:
        delete_base_backup(store, label)
    wal = plan.wal_to_drop(archived_wal(store))
    for name in wal:
        store.delete(wal_object(name))
    oldest = plan.keep[0]
    old_runs = [r for r in runs(store) if r.label < oldest]
    for run in old_runs:
        store.delete(f"runs/{run.label}.json")
    files = prune_files(store, oldest)
    if plan.drop:
        log.info("backups pruned base=%d wal=%d files=%d", len(plan.drop), len(wal), files)
    return PruneResult(plan.drop, len(wal), len(old_runs), files)
