"""When backups are due and what the retention window lets go: pure functions.

The data model's strategy: a full backup daily at 02:00, an incremental one every
6 hours, recovery to any moment of the last 30 days (``ATRIUM_BACKUP_FULL_AT``,
``ATRIUM_BACKUP_INCREMENTAL_HOURS``, ``ATRIUM_BACKUP_RETENTION_DAYS``). Slots are
in the time zone of the ``now`` given (the host's local time for the command):
incremental slots fall every ``incremental_hours`` from the full backup's time
(02:00, 08:00, 14:00, 20:00), and a run that finds several slots missed (the host
was off) does the most important one once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum

__all__ = ["BackupKind", "BaseBackupInfo", "Schedule", "due", "next_slot", "prune_plan",
           "segment_key"]


class BackupKind(StrEnum):
    FULL = "full"
    INCREMENTAL = "incremental"


@dataclass(frozen=True)
class Schedule:
    """When to run, and how long recovery must reach back.

    Parameters
    ----------
    full_at:
        Time of day of the full (base) backup.
    incremental_hours:
        Hours between incremental runs, 1-24; 24 means none beyond the full one.
    retention_days:
        Recovery must reach any moment of this many days back, 1-3650.
    """

    full_at: time = time(2, 0)
    incremental_hours: int = 6
    retention_days: int = 30

    def __post_init__(self) -> None:
        if not 1 <= self.incremental_hours <= 24:
            raise ValueError("incremental_hours must be between 1 and 24")
        if not 1 <= self.retention_days <= 3650:
            raise ValueError("retention_days must be between 1 and 3650")

    def _anchor(self, now: datetime) -> datetime:
        """The full backup's slot on ``now``'s day."""
        return now.replace(hour=self.full_at.hour, minute=self.full_at.minute, second=0,
                           microsecond=0)

    def last_full_slot(self, now: datetime) -> datetime:
        anchor = self._anchor(now)
        return anchor if anchor <= now else anchor - timedelta(days=1)

    def last_incremental_slot(self, now: datetime) -> datetime:
        step = timedelta(hours=self.incremental_hours)
        full = self.last_full_slot(now)
        return full + step * ((now - full) // step)


def due(schedule: Schedule, now: datetime, last_full: datetime | None,
        last_run: datetime | None) -> BackupKind | None:
    """What a run at ``now`` should do: a full backup when none finished since the
    last full slot, an incremental one when no run at all did since the last
    incremental slot, else nothing. ``last_full``/``last_run`` are when the latest
    full backup / the latest run of either kind finished."""
    if last_full is None or last_full < schedule.last_full_slot(now):
        return BackupKind.FULL
    if last_run is None or last_run < schedule.last_incremental_slot(now):
        return BackupKind.INCREMENTAL
    return None


def next_slot(schedule: Schedule, now: datetime) -> datetime:
    """The first slot (of either kind) strictly after ``now``."""
    slot = schedule.last_incremental_slot(now)
    step = timedelta(hours=schedule.incremental_hours)
    next_full = schedule.last_full_slot(now) + timedelta(days=1)
    return min(slot + step, next_full)


@dataclass(frozen=True)
class BaseBackupInfo:
    label: str
    finished_at: datetime
    start_wal: str  # the first WAL file the backup needs


def segment_key(wal_file: str) -> str:
    """A WAL file's position regardless of timeline: the log and segment digits."""
    return wal_file[8:24]


@dataclass(frozen=True)
class PrunePlan:
    keep: list[str]
    drop: list[str]          # base backup labels
    oldest_kept_wal: str | None

    def wal_to_drop(self, archived: Iterable[str]) -> list[str]:
        """Archived files older than the oldest kept backup needs. Timeline history
        files stay: they are tiny, and recovery reads them to choose its timeline."""
        if self.oldest_kept_wal is None:
            return []
        limit = segment_key(self.oldest_kept_wal)
        return [name for name in archived
                if not name.endswith(".history") and len(name) >= 24
                and segment_key(name) < limit]


def prune_plan(schedule: Schedule, now: datetime,
               backups: Sequence[BaseBackupInfo]) -> PrunePlan:
    """Which base backups the retention window still needs.

    Every backup finished inside the window is kept, and so is the newest one
    finished before it: recovery to the window's first moment starts from that one.
    Nothing is dropped while fewer than one backup would remain.
    """
    window_start = now - timedelta(days=schedule.retention_days)
    ordered = sorted(backups, key=lambda b: b.finished_at)
    inside = [b for b in ordered if b.finished_at >= window_start]
    before = [b for b in ordered if b.finished_at < window_start]
    kept = inside + before[-1:]
    kept.sort(key=lambda b: b.finished_at)
    dropped = [b.label for b in ordered if b not in kept]
    oldest = min((b.start_wal for b in kept), key=segment_key, default=None)
    return PrunePlan([b.label for b in kept], dropped, oldest)
