"""The backup schedule and the retention window, as pure functions."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

import pytest

from atrium.backup.basebackup import label_for, parse_label, parse_lsn, wal_file_name
from atrium.backup.schedule import (
    BackupKind,
    BaseBackupInfo,
    Schedule,
    due,
    next_slot,
    prune_plan,
)

SCHEDULE = Schedule()  # 02:00 daily, every 6 hours, 30 days


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, minute, tzinfo=UTC)


def test_defaults_follow_the_data_model() -> None:
    assert (SCHEDULE.full_at, SCHEDULE.incremental_hours, SCHEDULE.retention_days) == \
        (time(2, 0), 6, 30)


@pytest.mark.parametrize(("now", "slot"), [
    (at(10, 1, 59), at(9, 20)), (at(10, 2), at(10, 2)), (at(10, 7, 59), at(10, 2)),
    (at(10, 8), at(10, 8)), (at(10, 23), at(10, 20)),
])
def test_incremental_slots_fall_every_6_hours_from_the_full_backup(
        now: datetime, slot: datetime) -> None:
    assert SCHEDULE.last_incremental_slot(now) == slot


def test_a_first_run_is_a_full_backup() -> None:
    assert due(SCHEDULE, at(10, 12), None, None) is BackupKind.FULL


def test_full_backup_is_due_once_02_00_passes() -> None:
    assert due(SCHEDULE, at(10, 1), at(9, 2, 5), at(9, 20, 1)) is None
    assert due(SCHEDULE, at(10, 2, 1), at(9, 2, 5), at(9, 20, 1)) is BackupKind.FULL


def test_incremental_is_due_after_each_6_hour_slot() -> None:
    assert due(SCHEDULE, at(10, 7), at(10, 2, 3), at(10, 2, 3)) is None
    assert due(SCHEDULE, at(10, 8, 1), at(10, 2, 3), at(10, 2, 3)) is BackupKind.INCREMENTAL
    assert due(SCHEDULE, at(10, 9), at(10, 2, 3), at(10, 8, 1)) is None


def test_missed_slots_are_caught_up_by_one_run_of_the_most_important_kind() -> None:
    # The host was off for two days: one full backup, not a backlog of runs.
    assert due(SCHEDULE, at(12, 15), at(10, 2, 3), at(10, 8, 1)) is BackupKind.FULL


def test_next_slot_is_the_nearest_of_either_kind() -> None:
    assert next_slot(SCHEDULE, at(10, 7)) == at(10, 8)
    assert next_slot(SCHEDULE, at(10, 21)) == at(11, 2)
    daily = Schedule(time(23, 30), incremental_hours=24)
    assert next_slot(daily, at(10, 23, 45)) == at(11, 23, 30)


def test_settings_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="incremental_hours"):
        Schedule(incremental_hours=0)
    with pytest.raises(ValueError, match="retention_days"):
        Schedule(retention_days=0)


def backup(day: int, start_segment: int) -> BaseBackupInfo:
    return BaseBackupInfo(label_for(at(day, 2)), at(day, 2, 5),
                          f"0000000100000000{start_segment:08X}")


def test_retention_keeps_the_window_and_the_backup_just_before_it() -> None:
    backups = [backup(day, day * 10) for day in range(1, 29)]
    plan = prune_plan(Schedule(retention_days=20), at(28, 12), backups)
    # The window starts on the 8th at 12:00: the backup of the 8th (02:05) is needed
    # to recover to the window's first moments; the 1st to the 7th are not.
    assert plan.drop == [b.label for b in backups[:7]]
    assert plan.keep[0] == backups[7].label
    assert plan.oldest_kept_wal == backups[7].start_wal


def test_wal_older_than_the_oldest_kept_backup_goes_but_history_files_stay() -> None:
    plan = prune_plan(Schedule(retention_days=1), at(28, 12),
                      [backup(10, 0x10), backup(20, 0x30), backup(28, 0x50)])
    archived = ["000000010000000000000010", "000000010000000000000020",
                "000000010000000000000020.00000028.backup", "00000002.history",
                "00000002000000000000002F", "000000020000000000000030",
                "000000020000000000000051"]
    assert plan.oldest_kept_wal == "000000010000000000000030"
    assert plan.wal_to_drop(archived) == [
        "000000010000000000000010", "000000010000000000000020",
        "000000010000000000000020.00000028.backup", "00000002000000000000002F"]


def test_nothing_is_pruned_while_only_old_backups_exist() -> None:
    plan = prune_plan(SCHEDULE, at(28, 12), [backup(1, 1)])
    assert plan.drop == [] and plan.keep == [backup(1, 1).label]


def test_wal_file_names_follow_postgresql() -> None:
    segment = 16 * 1024 * 1024
    assert wal_file_name(1, parse_lsn("0/2000028"), segment) == "000000010000000000000002"
    assert wal_file_name(3, parse_lsn("1/FF000000"), segment) == "0000000300000001000000FF"
    assert wal_file_name(1, parse_lsn("2/00000000"), 64 * 1024 * 1024) == \
        "000000010000000200000000"


def test_labels_are_utc_and_sort_as_time_does() -> None:
    local = datetime(2026, 11, 27, 3, 30, tzinfo=UTC) + timedelta(hours=0)
    assert label_for(local) == "20261127T033000Z"
    assert parse_label(label_for(local)) == local
