"""The backup store without a server: the WAL archive's push and fetch (and the
command PostgreSQL runs), Orthanc's files, the choice of a base backup, unpacking."""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atrium.backup import wal
from atrium.backup.archive import (
    ArchiveConfig,
    ArchiveError,
    archived_wal,
    fetch_wal,
    list_objects,
    push_wal,
    wal_object,
)
from atrium.backup.basebackup import BaseBackup, label_for
from atrium.backup.files import prune_files, restore_files, sync_files
from atrium.backup.restore import RestoreError, _safe_extract, choose_base, wal_command
from atrium.storage import FileObjectStore

SEGMENT = "000000010000000000000003"


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    return FileObjectStore(tmp_path / "backups")


def segment(tmp_path: Path, content: bytes) -> Path:
    path = tmp_path / "pg_wal" / SEGMENT
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_pushed_segment_is_fetched_back_identical(store: FileObjectStore,
                                                     tmp_path: Path) -> None:
    data = b"\x01" * 1000 + b"\x00" * 100_000
    assert push_wal(store, segment(tmp_path, data), SEGMENT) is True
    assert store.size(wal_object(SEGMENT)) < 10_000  # compressed
    target = tmp_path / "RECOVERYXLOG"
    assert fetch_wal(store, SEGMENT, target) is True
    assert target.read_bytes() == data
    assert archived_wal(store) == [SEGMENT]


def test_pushing_the_same_segment_again_succeeds_but_different_bytes_are_refused(
        store: FileObjectStore, tmp_path: Path) -> None:
    push_wal(store, segment(tmp_path, b"first"), SEGMENT)
    assert push_wal(store, segment(tmp_path, b"first"), SEGMENT) is False
    with pytest.raises(ArchiveError, match="different contents"):
        push_wal(store, segment(tmp_path, b"other"), SEGMENT)
    target = tmp_path / "out"
    fetch_wal(store, SEGMENT, target)
    assert target.read_bytes() == b"first"


def test_fetching_a_segment_the_archive_lacks_answers_false(store: FileObjectStore,
                                                            tmp_path: Path) -> None:
    assert fetch_wal(store, "00000002.history", tmp_path / "x") is False
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("name", ["../etc/passwd", "000000010000000000000003/../x", "x.gz", ""])
def test_names_that_are_not_wal_files_are_refused(name: str) -> None:
    with pytest.raises(ArchiveError):
        wal_object(name)


def test_wal_command_exit_codes_are_what_postgresql_expects(store: FileObjectStore,
                                                             tmp_path: Path) -> None:
    config = tmp_path / "archive.json"
    ArchiveConfig(f"file://{store.root}").write(config)
    assert config.stat().st_mode & 0o777 == 0o600
    path = segment(tmp_path, b"wal bytes")
    assert wal.main(["push", "--config", str(config), str(path), SEGMENT]) == 0
    out = tmp_path / "restored"
    assert wal.main(["fetch", "--config", str(config), SEGMENT, str(out)]) == 0
    assert out.read_bytes() == b"wal bytes"
    assert wal.main(["fetch", "--config", str(config), "00000002.history", str(out)]) == 1
    assert wal.main(["push", "--config", str(tmp_path / "missing.json"), str(path),
                     SEGMENT]) == 2


def test_wal_command_quotes_paths_for_the_shell() -> None:
    command = wal_command("fetch", Path("/data dir/a.json"), python="/opt/py thon")
    assert command == "'/opt/py thon' -m atrium.backup.wal fetch --config '/data dir/a.json' %f %p"


def orthanc_file(storage: Path, name: str, content: bytes) -> None:
    path = storage / name[:2] / name[2:4] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)


def test_orthanc_files_are_copied_once_and_restored_as_of_a_moment(
        store: FileObjectStore, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    t0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    orthanc_file(storage, "aaaa-1", b"first")
    assert sync_files(store, storage, label_for(t0)).copied == 1
    orthanc_file(storage, "bbbb-2", b"second")
    again = sync_files(store, storage, label_for(t0 + timedelta(hours=6)))
    assert (again.files, again.copied) == (2, 1)
    # aaaa-1 deleted by Orthanc, cccc-3 stored: the copy of aaaa-1 stays in the store.
    (storage / "aa" / "aa" / "aaaa-1").unlink()
    orthanc_file(storage, "cccc-3", b"third")
    sync_files(store, storage, label_for(t0 + timedelta(hours=12)))

    into = tmp_path / "restored"
    result = restore_files(store, t0 + timedelta(hours=3), into)
    restored = sorted(p.name for p in into.rglob("*") if p.is_file())
    # The moment's files (aaaa-1) and those the next run saw (bbbb-2), not later ones.
    assert restored == ["aaaa-1", "bbbb-2"] and result.copied == 2
    assert (into / "aa" / "aa" / "aaaa-1").read_bytes() == b"first"

    dropped = prune_files(store, label_for(t0 + timedelta(hours=12)))
    assert dropped == 1  # aaaa-1 is in no manifest kept
    names = sorted(name for name, _ in list_objects(store, "files/orthanc/"))
    assert names == ["files/orthanc/bb/bb/bbbb-2", "files/orthanc/cc/cc/cccc-3"]


def base(finished: datetime) -> BaseBackup:
    return BaseBackup(label_for(finished), finished - timedelta(minutes=5), finished, 1,
                      "0/2000028", "0/2000100", "000000010000000000000002", {})


def test_the_newest_base_backup_finished_before_the_target_is_chosen() -> None:
    day = datetime(2026, 11, 27, 2, 5, tzinfo=UTC)
    backups = [base(day - timedelta(days=1)), base(day), base(day + timedelta(days=1))]
    assert choose_base(backups, day + timedelta(hours=3)) == backups[1]
    assert choose_base(backups, day) == backups[1]
    with pytest.raises(RestoreError, match="no base backup finished before"):
        choose_base(backups, day - timedelta(days=2))
    with pytest.raises(RestoreError, match="time zone"):
        choose_base(backups, datetime(2026, 11, 27, 12, 0))


def test_a_tar_member_leaving_the_directory_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "base.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(RestoreError, match="unsafe member"):
        _safe_extract(archive, tmp_path / "into")
    assert not (tmp_path / "escaped").exists()


def test_a_file_copied_while_orthanc_was_writing_it_is_copied_again(
        store: FileObjectStore, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    t0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    orthanc_file(storage, "dddd-4", b"hal")
    sync_files(store, storage, label_for(t0))
    orthanc_file(storage, "dddd-4", b"half written, then whole")
    assert sync_files(store, storage, label_for(t0 + timedelta(hours=6))).copied == 1
    restore_files(store, t0 + timedelta(hours=7), tmp_path / "into")
    assert (tmp_path / "into" / "dd" / "dd" / "dddd-4").read_bytes() == \
        b"half written, then whole"
