"""Taking backups: a full one is ``pg_basebackup`` of the whole cluster (Atrium's
database and Orthanc's index together, so they restore to one consistent moment);
an incremental one closes the current WAL segment and waits until the archive
holds it, so that everything committed before the run is in the backup store.

PostgreSQL 15 has no incremental base backup: between two full backups, the WAL
archive *is* the increment, shipped continuously by ``archive_command`` (and at
least every ``archive_timeout`` on a quiet server).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from atrium.backup.archive import (
    ArchiveError,
    list_objects,
    read_json,
    wal_object,
    write_json,
)
from atrium.backup.schedule import BackupKind, BaseBackupInfo
from atrium.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

__all__ = ["BaseBackup", "Run", "base_backups", "label_for", "runs", "take_full",
           "take_incremental", "wal_file_name"]

_LABEL_FORMAT = "%Y%m%dT%H%M%SZ"


def label_for(moment: datetime) -> str:
    """A run's label: its UTC time, which sorts as the runs do."""
    return moment.astimezone(UTC).strftime(_LABEL_FORMAT)


def parse_label(label: str) -> datetime:
    return datetime.strptime(label, _LABEL_FORMAT).replace(tzinfo=UTC)


def parse_lsn(lsn: str) -> int:
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def wal_file_name(timeline: int, lsn: int, segment_size: int) -> str:
    """The WAL file holding byte ``lsn`` (PostgreSQL's XLogFileName)."""
    per_log = 0x1_0000_0000 // segment_size
    segment = lsn // segment_size
    return f"{timeline:08X}{segment // per_log:08X}{segment % per_log:08X}"


@dataclass(frozen=True)
class BaseBackup:
    """A complete base backup in the store (its ``backup.json``)."""

    label: str
    started_at: datetime
    finished_at: datetime
    timeline: int
    start_lsn: str
    stop_lsn: str
    start_wal: str
    files: dict[str, int]

    @property
    def prefix(self) -> str:
        return f"base/{self.label}/"

    def info(self) -> BaseBackupInfo:
        return BaseBackupInfo(self.label, self.finished_at, self.start_wal)

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "started_at": self.started_at.isoformat(),
                "finished_at": self.finished_at.isoformat(), "timeline": self.timeline,
                "start_lsn": self.start_lsn, "stop_lsn": self.stop_lsn,
                "start_wal": self.start_wal, "files": self.files}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BaseBackup:
        return cls(str(data["label"]), datetime.fromisoformat(data["started_at"]),
                   datetime.fromisoformat(data["finished_at"]), int(data["timeline"]),
                   str(data["start_lsn"]), str(data["stop_lsn"]), str(data["start_wal"]),
                   {str(k): int(v) for k, v in dict(data["files"]).items()})


@dataclass(frozen=True)
class Run:
    """One backup run, full or incremental (``runs/<label>.json``)."""

    label: str
    kind: BackupKind
    finished_at: datetime
    wal: str | None          # the last WAL file known archived when the run ended
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind.value,
                "finished_at": self.finished_at.isoformat(), "wal": self.wal,
                "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        return cls(str(data["label"]), BackupKind(data["kind"]),
                   datetime.fromisoformat(data["finished_at"]),
                   None if data.get("wal") is None else str(data["wal"]),
                   float(data.get("seconds", 0)))


def base_backups(store: ObjectStore) -> list[BaseBackup]:
    """The complete base backups in the store, oldest first."""
    found = []
    for name, _ in list_objects(store, "base/"):
        if name.endswith("/backup.json"):
            found.append(BaseBackup.from_json(read_json(store, name)))
    return sorted(found, key=lambda b: b.finished_at)


def runs(store: ObjectStore) -> list[Run]:
    found = [Run.from_json(read_json(store, name))
             for name, _ in list_objects(store, "runs/") if name.endswith(".json")]
    return sorted(found, key=lambda r: r.finished_at)


def record_run(store: ObjectStore, run: Run) -> None:
    write_json(store, f"runs/{run.label}.json", run.to_json())


# -- full ---------------------------------------------------------------------------
def _client_environment(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and an environment carrying the password, so
    that it does not appear in the process list."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


def take_full(url: str, store: ObjectStore, *, pg_basebackup: str, workdir: Path,
              now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> BaseBackup:
    """A base backup of the cluster at ``url`` (a role with REPLICATION), into the store.

    The tar files are written to a temporary directory under ``workdir`` (the size
    of the compressed cluster) and then uploaded; ``backup.json`` goes last.
    """
    started = now()
    label = label_for(started)
    conninfo, env = _client_environment(url)
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        row = conn.execute("SELECT setting::bigint * CASE unit WHEN '8kB' THEN 8192 "
                           "WHEN 'MB' THEN 1048576 ELSE 1 END FROM pg_settings "
                           "WHERE name = 'wal_segment_size'").fetchone()
    segment_size = int(row[0]) if row else 16 * 1024 * 1024
    workdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="basebackup-") as tmp:
        target = Path(tmp) / "out"
        result = subprocess.run(
            [pg_basebackup, "-d", conninfo, "-D", str(target), "-F", "t", "-z",
             "-X", "stream", "-c", "fast", "-l", f"atrium {label}", "--no-password"],
            env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ArchiveError("pg_basebackup failed: " + " ".join(result.stderr.split())[:500])
        manifest = json.loads((target / "backup_manifest").read_text())
        wal_range = manifest["WAL-Ranges"][0]
        files: dict[str, int] = {}
        for path in sorted(target.iterdir()):
            with path.open("rb") as stream:
                files[path.name] = store.put(f"base/{label}/{path.name}", stream)
    backup = BaseBackup(
        label=label, started_at=started, finished_at=now(), timeline=int(wal_range["Timeline"]),
        start_lsn=wal_range["Start-LSN"], stop_lsn=wal_range["End-LSN"],
        start_wal=wal_file_name(int(wal_range["Timeline"]), parse_lsn(wal_range["Start-LSN"]),
                                segment_size),
        files=files)
    write_json(store, f"{backup.prefix}backup.json", backup.to_json())
    log.info("base backup stored label=%s bytes=%d", label, sum(files.values()))
    return backup


# -- incremental ------------------------------------------------------------------------
def take_incremental(url: str, store: ObjectStore, *, timeout: float = 120) -> str | None:
    """Close the current WAL segment and wait until the archive holds it.

    Returns the name of that WAL file (None on a standby, which cannot switch: its
    primary's archive is the one that counts).

    Raises
    ------
    ArchiveError
        The archive did not receive it within ``timeout`` seconds (``archive_command``
        failing: the server's log says why; ``pg_stat_archiver`` counts the failures).
    """
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        standby = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        if standby and standby[0]:
            return None
        _require_archiving(conn)
        row = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()
        assert row is not None  # noqa: S101 - the function always returns a row
        wal = str(row[0])
        deadline = time.monotonic() + timeout
        while not store.exists(wal_object(wal)):
            if time.monotonic() > deadline:
                failed = conn.execute("SELECT last_failed_wal, failed_count "
                                      "FROM pg_stat_archiver").fetchone()
                raise ArchiveError(
                    f"WAL file {wal} did not reach the backup store within {timeout:.0f}s "
                    f"(archiver: last failed {failed[0] if failed else '?'}, "
                    f"{failed[1] if failed else '?'} failures): see the PostgreSQL log")
            time.sleep(0.2)
    return wal


def _require_archiving(conn: psycopg.Connection[Any]) -> None:
    mode = conn.execute("SHOW archive_mode").fetchone()
    if not mode or mode[0] == "off":
        raise ArchiveError("WAL archiving is off on this server: run `atrium backup setup` "
                           "(or configure archive_command, docs/OPERATIONS.md)")


def require_archiving(url: str) -> None:
    """Refuse to start a run that could not complete: a base backup without the WAL
    archive restores to one moment only."""
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        _require_archiving(conn)


def delete_base_backup(store: ObjectStore, label: str) -> None:
    """``backup.json`` first, so that a half-deleted backup is never chosen."""
    prefix = f"base/{label}/"
    names = [name for name, _ in list_objects(store, prefix)]
    names.sort(key=lambda name: not name.endswith("/backup.json"))
    for name in names:
        with contextlib.suppress(ObjectNotFound):
            store.delete(name)
