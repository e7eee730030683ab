"""Point-in-time recovery into a fresh data directory.

The newest base backup finished before the target moment is unpacked, checked
against its manifest (``pg_verifybackup``), and given the recovery settings:
``restore_command`` reading the WAL archive, ``recovery_target_time``, and
``recovery_target_action = 'promote'``. Started, the server replays the archive up
to the moment (the last transaction committed at or before it is in, the first
one after it is not), then becomes an ordinary primary. A target later than the
archive reaches makes the server stop with "recovery ended before configured
recovery target was reached" rather than open with less than asked.

The restored cluster does not archive (``archive_mode = off``): a drill must not
write into the production archive. After a real recovery, run
``atrium backup setup`` on it (docs/OPERATIONS.md).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

from atrium.backup.archive import ArchiveConfig, ArchiveError
from atrium.backup.basebackup import BaseBackup, base_backups
from atrium.storage import ObjectStore

log = logging.getLogger(__name__)

__all__ = ["RestoreError", "Restored", "choose_base", "restore", "wal_command"]

RESTORE_CONFIG = "atrium-restore.json"


class RestoreError(ArchiveError):
    """The restore cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Restored:
    base: BaseBackup
    target: datetime
    directory: Path


def choose_base(backups: list[BaseBackup], target: datetime) -> BaseBackup:
    """The newest base backup that finished at or before ``target``."""
    if target.tzinfo is None:
        raise RestoreError("the target time needs a time zone (e.g. 2026-11-27T14:32:00+01:00)")
    candidates = [b for b in backups if b.finished_at <= target]
    if not candidates:
        earliest = min((b.finished_at for b in backups), default=None)
        raise RestoreError(
            f"no base backup finished before {target.isoformat()}: "
            + (f"the earliest finished at {earliest.isoformat()}" if earliest
               else "the backup store holds none (run `atrium backup --full`)"))
    return max(candidates, key=lambda b: b.finished_at)


def wal_command(action: str, config: Path, python: str = sys.executable) -> str:
    """The shell command PostgreSQL runs for ``action`` (push or fetch)."""
    placeholders = "%p %f" if action == "push" else "%f %p"
    return (f"{shlex.quote(python)} -m atrium.backup.wal {action} "
            f"--config {shlex.quote(str(config))} {placeholders}")


def _conf_value(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _safe_extract(archive: Path, into: Path) -> None:
    """Unpack a tar the way PostgreSQL wrote it; a member leaving ``into`` is refused
    (the backup store might have been tampered with)."""
    with tarfile.open(archive, "r:*") as tar:
        for member in tar.getmembers():
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or member.isdev() or \
                    (member.issym() or member.islnk()):
                raise RestoreError(f"{archive.name} holds an unsafe member {member.name!r}; "
                                   "tablespaces and links are not supported")
        tar.extractall(into)  # noqa: S202 - members checked above


def restore(store: ObjectStore, config: ArchiveConfig, target: datetime, into: Path, *,
            pg_verifybackup: str | None = None, owner: tuple[int, int] | None = None,
            python: str = sys.executable) -> Restored:
    """Prepare ``into`` (absent or empty) to recover to ``target`` when started.

    Parameters
    ----------
    owner:
        (uid, gid) the files are given to — the server's system user when we are root.
    pg_verifybackup:
        The tool's path; None skips the check of the files against the manifest.
    """
    base = choose_base(base_backups(store), target)
    if into.exists() and any(into.iterdir()):
        raise RestoreError(f"{into} is not empty: restore into a fresh directory")
    into.mkdir(parents=True, exist_ok=True)
    into.chmod(0o700)
    staging = into / ".atrium-restore"
    staging.mkdir()
    try:
        for name in base.files:
            with store.get(f"{base.prefix}{name}") as stream, (staging / name).open("wb") as out:
                while chunk := stream.read(1024 * 1024):
                    out.write(chunk)
        _safe_extract(staging / "base.tar.gz", into)
        if (staging / "pg_wal.tar.gz").exists():
            _safe_extract(staging / "pg_wal.tar.gz", into / "pg_wal")
        if pg_verifybackup:
            result = subprocess.run(
                [pg_verifybackup, "-n", "-q", "-m", str(staging / "backup_manifest"),
                 "-i", staging.name, str(into)],
                capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise RestoreError(f"base backup {base.label} does not match its manifest: "
                                   + " ".join(result.stderr.split())[:400])
    finally:
        for path in staging.iterdir():
            path.unlink()
        staging.rmdir()
    config_path = into / RESTORE_CONFIG
    config.write(config_path)
    with (into / "postgresql.auto.conf").open("a") as conf:
        conf.write(
            f"\n# atrium restore: base backup {base.label}, to {target.isoformat()}\n"
            f"restore_command = {_conf_value(wal_command('fetch', config_path, python))}\n"
            f"recovery_target_time = {_conf_value(target.isoformat())}\n"
            "recovery_target_action = 'promote'\n"
            "archive_mode = 'off'\n")
    (into / "recovery.signal").touch()
    if owner is not None:
        for directory, dirs, files in os.walk(into):
            os.chown(directory, *owner)
            for name in dirs + files:
                os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)
    log.info("restore prepared base=%s target=%s into=%s", base.label, target.isoformat(), into)
    return Restored(base, target, into)
