"""Backup settings: the data model's defaults, and one clear line for a wrong value."""

from __future__ import annotations

from datetime import time
from pathlib import Path

import pytest

from atrium.backup.command import archive_config, schedule_of
from atrium.settings import SettingsError, load_settings

BASE = {"ATRIUM_DATABASE_URL": "postgresql://atrium@127.0.0.1:5432/atrium",
        "ATRIUM_DATA_DIR": "/srv/atrium"}


def test_defaults_are_the_data_models_schedule_and_a_store_in_the_data_directory() -> None:
    settings = load_settings({}, BASE)
    assert schedule_of(settings).full_at == time(2, 0)
    assert (settings.backup_incremental_hours, settings.backup_retention_days) == (6, 30)
    assert archive_config(settings).url == "file:///srv/atrium/backups"


def test_each_setting_is_configurable_from_the_atrium_section() -> None:
    settings = load_settings({"Atrium": {"BackupFullAt": "23:15", "BackupIncrementalHours": 4,
                                         "BackupRetentionDays": 35,
                                         "BackupUrl": "s3://backups/atrium",
                                         "S3Endpoint": "minio:9000"}}, BASE)
    schedule = schedule_of(settings)
    assert (schedule.full_at, schedule.incremental_hours, schedule.retention_days) == \
        (time(23, 15), 4, 35)
    config = archive_config(settings)
    assert (config.url, config.s3_endpoint) == ("s3://backups/atrium", "minio:9000")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("ATRIUM_BACKUP_FULL_AT", "2am", "ATRIUM_BACKUP_FULL_AT must be a time of day HH:MM"),
    ("ATRIUM_BACKUP_FULL_AT", "24:00", "ATRIUM_BACKUP_FULL_AT must be a time of day HH:MM"),
    ("ATRIUM_BACKUP_INCREMENTAL_HOURS", "0", "ATRIUM_BACKUP_INCREMENTAL_HOURS must be between"),
    ("ATRIUM_BACKUP_RETENTION_DAYS", "thirty", "ATRIUM_BACKUP_RETENTION_DAYS must be an integer"),
    ("ATRIUM_BACKUP_URL", "ftp://host/x", "ATRIUM_BACKUP_URL must start with file:// or s3://"),
    ("ATRIUM_BACKUP_URL", "s3://bucket", "ATRIUM_S3_ENDPOINT is required"),
])
def test_a_wrong_value_names_the_setting(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({}, {**BASE, name: value})


def test_restore_refuses_a_moment_without_a_zone_and_an_empty_store_in_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from atrium.cli import main

    for name, value in {**BASE, "ATRIUM_DATA_DIR": str(tmp_path),
                        "ATRIUM_BACKUP_URL": f"file://{tmp_path / 'backups'}"}.items():
        monkeypatch.setenv(name, value)
    into = str(tmp_path / "restored")
    assert main(["-q", "restore", "--to", "2026-11-27T14:32:00", "--into", into]) == 2
    assert "needs a time zone" in capsys.readouterr().err
    assert main(["-q", "restore", "--to", "2026-11-27T14:32:00+01:00", "--into", into]) == 1
    error = capsys.readouterr().err
    assert "the backup store holds none" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "restored").exists()
