"""The backup store: where base backups, the WAL archive and Orthanc's files go.

Layout under the store's root (``ATRIUM_BACKUP_URL``)::

    base/<label>/base.tar.gz, pg_wal.tar.gz, backup_manifest, backup.json
    runs/<label>.json            one record per run (full or incremental)
    wal/<segment>.gz             the WAL archive, one gzip object per file
    files/orthanc/<path>         copies of Orthanc's stored files (immutable)
    files/manifests/<label>.json Orthanc's files present at each run

``backup.json`` is written last: a base backup without it is incomplete and is
never chosen for a restore.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from atrium.storage import (
    FileObjectStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectStore,
    StorageError,
    open_store,
)

log = logging.getLogger(__name__)

WAL_PREFIX = "wal/"
# 24 hex digits: timeline, log, segment. Also ``.partial``, ``.backup``, ``.history``.
_WAL_NAME = re.compile(r"^[0-9A-F]{8}([0-9A-F]{16})?(\.partial|\.backup|\.history)?$|"
                       r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")


class ArchiveError(RuntimeError):
    """The backup store refused an operation, or holds something inconsistent."""


@dataclass(frozen=True)
class ArchiveConfig:
    """How to reach the backup store; also what ``archive_command`` reads from a
    file (mode 0600), so that no credential appears in PostgreSQL's settings."""

    url: str
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = True

    def open(self) -> ObjectStore:
        return open_store(self.url, s3_endpoint=self.s3_endpoint,
                          s3_access_key=self.s3_access_key,
                          s3_secret_key=self.s3_secret_key, s3_secure=self.s3_secure)

    def write(self, path: Path, owner: tuple[int, int] | None = None) -> None:
        """Write the file atomically, mode 0600, owned by ``owner`` (uid, gid) if given."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".archive-")
        with os.fdopen(fd, "w") as out:
            json.dump(asdict(self), out)
        os.chmod(tmp, 0o600)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> ArchiveConfig:
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except (OSError, ValueError, TypeError) as exc:
            raise ArchiveError(f"cannot read the archive configuration {path}: {exc}") from None


def ensure_ready(store: ObjectStore) -> None:
    """Create an S3 bucket when missing; check that the store answers."""
    if isinstance(store, S3ObjectStore):
        store.ensure_bucket()
    store.check()


def prepare_for_server(store: ObjectStore, owner: tuple[int, int] | None) -> None:
    """Make the store ready for ``archive_command``, which runs as the server's
    system user ``owner`` (uid, gid): on disk, that user must write ``wal/``, and
    it must be able to run this Python with Atrium on its path.

    Raises
    ------
    ArchiveError
        ``owner`` cannot run Atrium's Python (a checkout in a directory only its
        owner may enter), naming the directory to open.
    """
    _check_runnable_by(owner)
    ensure_ready(store)
    if isinstance(store, FileObjectStore) and owner is not None:
        (store.root / "wal").mkdir(parents=True, exist_ok=True)
        for directory in (store.root, store.root / "wal"):
            os.chown(directory, *owner)


def _check_runnable_by(owner: tuple[int, int] | None) -> None:
    if owner is None or os.geteuid() != 0 or owner[0] == 0:
        return
    probe = subprocess.run([sys.executable, "-c", "import atrium.backup.wal"],
                           user=owner[0], group=owner[1], capture_output=True, timeout=60,
                           cwd="/", check=False)
    if probe.returncode != 0:
        raise ArchiveError(
            f"PostgreSQL's system user (uid {owner[0]}) cannot run {sys.executable} with "
            f"Atrium, which archive_command needs: let it enter the directories above "
            f"the installation (chmod o+x) — {probe.stderr.decode(errors='replace')[-200:]}")


def list_objects(store: ObjectStore, prefix: str) -> Iterator[tuple[str, int]]:
    """Every object under ``prefix`` (a folder, ending in ``/``) as (name, size).

    The object-store interface has no listing (Atrium's objects are found through
    the database); backups need one, for both kinds of store.
    """
    if isinstance(store, FileObjectStore):
        top = store.root / prefix
        if not top.is_dir():
            return
        for directory, _, names in os.walk(top):
            for name in names:
                if name.startswith("."):  # temporary files of an unfinished put
                    continue
                path = Path(directory) / name
                yield path.relative_to(store.root).as_posix(), path.stat().st_size
    elif isinstance(store, S3ObjectStore):
        base = f"{store.prefix}/" if store.prefix else ""
        try:
            for item in store.client.list_objects(store.bucket, prefix=base + prefix,
                                                  recursive=True):
                if item.object_name and not item.is_dir:
                    yield item.object_name[len(base):], int(item.size or 0)
        except Exception as exc:  # noqa: BLE001 - minio and urllib3 errors alike
            raise ArchiveError(f"cannot list {prefix!r} in the backup store: {exc}") from exc
    else:  # pragma: no cover - the two stores above are the only ones
        raise ArchiveError(f"cannot list a {type(store).__name__}")


def read_json(store: ObjectStore, name: str) -> dict[str, object]:
    with store.get(name) as stream:
        data = json.loads(stream.read())
    if not isinstance(data, dict):
        raise ArchiveError(f"{name} in the backup store is not a JSON object")
    return data


def write_json(store: ObjectStore, name: str, data: dict[str, object]) -> None:
    store.put(name, json.dumps(data, indent=2, sort_keys=True).encode(),
              content_type="application/json")


# -- the WAL archive ------------------------------------------------------------------
def wal_object(file_name: str) -> str:
    if not _WAL_NAME.match(file_name):
        raise ArchiveError(f"{file_name!r} is not a WAL, history or backup file name")
    return f"{WAL_PREFIX}{file_name}.gz"


def push_wal(store: ObjectStore, path: Path, file_name: str) -> bool:
    """Archive one WAL file; True when stored, False when already there, identical.

    PostgreSQL may push a file again after a crash between our upload and its own
    bookkeeping: the same bytes succeed; different bytes under an archived name
    mean two clusters share one archive, which is refused rather than overwritten.
    """
    name = wal_object(file_name)
    data = path.read_bytes()
    try:
        with store.get(name) as stream:
            existing = gzip.decompress(stream.read())
    except ObjectNotFound:
        existing = None
    if existing is not None:
        if existing == data:
            return False
        raise ArchiveError(f"{name} is already archived with different contents: is another "
                           "cluster archiving into the same backup store?")
    # Level 1: a segment switched early is mostly zeros, and the archiver must keep up.
    store.put(name, gzip.compress(data, compresslevel=1, mtime=0))
    return True


def fetch_wal(store: ObjectStore, file_name: str, destination: Path) -> bool:
    """Restore one archived file to ``destination``; False when the archive lacks it
    (the normal end of recovery, not an error)."""
    name = wal_object(file_name)
    try:
        with store.get(name) as stream:
            data = gzip.decompress(stream.read())
    except ObjectNotFound:
        return False
    except (OSError, EOFError) as exc:
        raise ArchiveError(f"{name} in the backup store is damaged: {exc}") from exc
    tmp = destination.with_name(destination.name + ".atrium-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, destination)
    return True


def archived_wal(store: ObjectStore) -> list[str]:
    """The file names in the WAL archive, sorted."""
    names = []
    for name, _ in list_objects(store, WAL_PREFIX):
        base = name[len(WAL_PREFIX):].removesuffix(".gz")
        names.append(base)
    return sorted(names)


__all__ = ["ArchiveConfig", "ArchiveError", "StorageError", "archived_wal", "ensure_ready",
           "fetch_wal", "list_objects", "prepare_for_server", "push_wal", "read_json",
           "wal_object", "write_json"]
