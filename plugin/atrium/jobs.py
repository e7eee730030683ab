"""Background jobs (``jobs`` table): backfill, reconcile, de-identification...

A job row is created ``running``, its progress updated as it goes, and finished
``succeeded`` or ``failed`` with its result or error. Progress writes are cheap
single-row updates in their own short transactions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

log = logging.getLogger(__name__)

__all__ = ["Job"]


class Job:
    """One running job; ``connect`` returns a context manager yielding a connection."""

    def __init__(self, connect: Callable[[], Any], kind: str,
                 parameters: dict[str, Any] | None = None, total: int | None = None) -> None:
        self._connect = connect
        self.kind = kind
        self._last_write = 0.0
        self.done = 0
        with connect() as conn:
            row = conn.execute(
                "INSERT INTO jobs (kind, status, parameters, progress_total, started_at) "
                "VALUES (%s, 'running', %s, %s, now()) RETURNING id",
                (kind, Jsonb(parameters or {}), total),
            ).fetchone()
        self.id: UUID = row[0]
        log.info("job.started id=%s kind=%s total=%s", self.id, kind, total)

    def progress(self, done: int, total: int | None = None, force: bool = False) -> None:
        """Record progress; at most a few writes per second unless ``force``."""
        self.done = done
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        with self._connect() as conn:
            conn.execute(
                "UPDATE jobs SET progress_done = %s, "
                "progress_total = COALESCE(%s, progress_total) WHERE id = %s",
                (done, total, self.id),
            )

    def succeed(self, result: dict[str, Any]) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'succeeded', result = %s, progress_done = %s, "
                "finished_at = now() WHERE id = %s",
                (Jsonb(result), self.done, self.id),
            )
        log.info("job.succeeded id=%s kind=%s done=%s", self.id, self.kind, self.done)

    def fail(self, error: str) -> None:
        try:
            with self._connect() as conn:
                conn.execute(
                    "UPDATE jobs SET status = 'failed', error = %s, finished_at = now() "
                    "WHERE id = %s", (error[:2000], self.id))
        finally:
            log.error("job.failed id=%s kind=%s error=%r", self.id, self.kind, error)
