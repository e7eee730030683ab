"""Numbered SQL migrations from ``sql/``, each applied exactly once.

Files are named ``NNNN_description.sql`` and applied in number order, each in its
own transaction together with its row in ``schema_migrations``. A session-level
advisory lock serialises concurrent callers (two Atrium processes starting at
once): the second waits, then finds nothing left to do. An applied file whose
content has changed since is refused rather than silently skipped — a migration
is changed by adding a new one.

Partitions ahead of time are not made here: migration 0004 creates the first
year, and the running Atrium's upkeep (:mod:`atrium.operations.partitions`) keeps a
year in hand.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import psycopg

log = logging.getLogger(__name__)

__all__ = ["Migration", "MigrationError", "apply_migrations", "discover", "sql_directory"]

# Any constant shared by every Atrium process; "atrium-migrate" in ASCII.
_LOCK_KEY = 0x617472696D
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        VARCHAR(255) NOT NULL,
    checksum    CHAR(64) NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The migrations on disk and in the database disagree, or one failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def sql_directory() -> Path:
    """``ATRIUM_SQL_DIR`` when set (an installed image), else ``sql/`` of the checkout."""
    configured = os.environ.get("ATRIUM_SQL_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "sql"


def discover(directory: Path) -> list[Migration]:
    if not directory.is_dir():
        raise MigrationError(f"migration directory {directory} does not exist (set ATRIUM_SQL_DIR)")
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNNN_description.sql")
        migrations.append(Migration(int(match.group(1)), path.stem, path))
    versions = [m.version for m in migrations]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"two migration files share version(s) {duplicates}")
    return migrations


def apply_migrations(database_url: str, directory: Path | None = None) -> list[str]:
    """Apply every pending migration; return the names of those applied."""
    migrations = discover(directory or sql_directory())
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(_CREATE_TABLE)
            done: dict[int, str] = dict(conn.execute(
                "SELECT version, checksum FROM schema_migrations").fetchall())
            for migration in migrations:
                recorded = done.get(migration.version)
                if recorded is not None:
                    if recorded.strip() != migration.checksum:
                        raise MigrationError(
                            f"{migration.path.name} was changed after it was applied; "
                            "add a new migration instead of editing an applied one")
                    continue
                _apply_one(conn, migration)
                applied_now.append(migration.name)
            unknown = sorted(set(done) - {m.version for m in migrations})
            if unknown:
                log.warning("the database has migrations this Atrium does not know: %s "
                            "(is an older version running?)", unknown)
            grantable = conn.execute(
                "SELECT to_regprocedure('atrium_grant_app_role(name)') IS NOT NULL").fetchone()
            if applied_now and grantable and grantable[0]:
                # Tables a migration added are granted to Atrium's runtime role (when
                # it exists) before anything runs as that role.
                conn.execute("SELECT atrium_grant_app_role()")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now


def _apply_one(conn: psycopg.Connection[tuple[object, ...]], migration: Migration) -> None:
    log.info("applying migration %s", migration.name)
    try:
        with conn.transaction():
            conn.execute(migration.sql.encode("utf-8"))
            conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (migration.version, migration.name, migration.checksum))
    except psycopg.Error as exc:
        raise MigrationError(f"{migration.path.name} failed: {exc}".strip()) from exc
