"""Orthanc's stored files in the backup store.

Orthanc writes each attachment once, under a new UUID, and never changes it: a
file is either present or deleted. So every run copies the files it has not
copied before (``files/orthanc/<path>``) and writes a manifest of the files present
(``files/manifests/<label>.json``). A restore to a moment brings back every file of
the manifests up to the first run after that moment: the index restored to the
moment references a subset of them (files created and deleted between two runs
are the gap, which the object store's versioning closes in production; see
``docs/OPERATIONS.md``).
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from atrium.backup.archive import list_objects, read_json, write_json
from atrium.backup.basebackup import label_for
from atrium.storage import ObjectNotFound, ObjectStore

log = logging.getLogger(__name__)

__all__ = ["FilesResult", "prune_files", "restore_files", "sync_files"]

FILES = "files/orthanc/"
MANIFESTS = "files/manifests/"


@dataclass(frozen=True)
class FilesResult:
    files: int
    copied: int
    bytes_copied: int


def _present(storage_dir: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for directory, _, names in os.walk(storage_dir):
        for name in names:
            path = Path(directory) / name
            relative = path.relative_to(storage_dir).as_posix()
            if name.startswith(".") or relative.startswith("index"):  # SQLite index, if any
                continue
            try:
                found[relative] = path.stat().st_size
            except FileNotFoundError:  # deleted by Orthanc while we looked
                continue
    return found


def sync_files(store: ObjectStore, storage_dir: Path, label: str) -> FilesResult:
    """Copy the files of ``storage_dir`` not yet in the store; write the manifest."""
    present = _present(storage_dir) if storage_dir.is_dir() else {}
    copied = {name[len(FILES):]: size for name, size in list_objects(store, FILES)}
    count = total = 0
    # A size that differs from the copy's is a file Orthanc was still writing when
    # the last run copied it: copied again.
    for relative in sorted(name for name, size in present.items() if copied.get(name) != size):
        try:
            with (storage_dir / relative).open("rb") as stream:
                total += store.put(FILES + relative, stream)
        except FileNotFoundError:
            present.pop(relative)
            continue
        count += 1
    write_json(store, f"{MANIFESTS}{label}.json", {"label": label, "files": present})
    log.info("orthanc files backed up label=%s present=%d copied=%d", label, len(present), count)
    return FilesResult(len(present), count, total)


def _manifests(store: ObjectStore) -> list[str]:
    return sorted(name[len(MANIFESTS):].removesuffix(".json")
                  for name, _ in list_objects(store, MANIFESTS) if name.endswith(".json"))


def _manifest(store: ObjectStore, label: str) -> dict[str, int]:
    files = read_json(store, f"{MANIFESTS}{label}.json").get("files")
    if not isinstance(files, dict):
        return {}
    return {str(name): int(size) for name, size in files.items()}


def restore_files(store: ObjectStore, target: datetime, into: Path) -> FilesResult:
    """Copy into ``into`` the files of every manifest up to the first one after
    ``target``; returns how many there are, and how many were already there."""
    labels = _manifests(store)
    moment = label_for(target)
    # The last run at or before the moment lists every file older than it; the first
    # run after it adds those created in between (and not deleted before that run).
    later = [label for label in labels if label > moment]
    chosen = [label for label in labels if label <= moment][-1:] + later[:1]
    if not later:
        log.warning("no backup run after %s: Orthanc files stored since the last run "
                    "(%s) are not in the backup store", moment, labels[-1] if labels else "-")
    wanted: dict[str, int] = {}
    for label in chosen:
        wanted.update(_manifest(store, label))
    count = total = 0
    for relative in sorted(wanted):
        destination = into / relative
        if destination.exists():
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with store.get(FILES + relative) as stream, destination.open("wb") as out:
                shutil.copyfileobj(stream, out)
        except ObjectNotFound:
            destination.unlink(missing_ok=True)
            log.warning("orthanc file missing from the backup store path=%s", relative)
            continue
        total += destination.stat().st_size
        count += 1
    return FilesResult(len(wanted), count, total)


def prune_files(store: ObjectStore, oldest_kept: str) -> int:
    """Drop manifests older than the run ``oldest_kept`` (a label) and the copies no
    remaining manifest lists; returns the number of copies dropped."""
    labels = _manifests(store)
    for label in labels:
        if label < oldest_kept:
            store.delete(f"{MANIFESTS}{label}.json")
    needed: set[str] = set()
    for label in labels:
        if label >= oldest_kept:
            needed.update(_manifest(store, label))
    dropped = 0
    for name in _copies_not_in(store, needed):
        store.delete(name)
        dropped += 1
    return dropped


def _copies_not_in(store: ObjectStore, needed: Iterable[str]) -> list[str]:
    keep = set(needed)
    return [name for name, _ in list_objects(store, FILES) if name[len(FILES):] not in keep]
