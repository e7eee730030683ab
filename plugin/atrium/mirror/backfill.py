"""Backfill: mirror everything an Orthanc already holds, as a job with progress.

The change-log position is read *before* the instances are listed; once they are
all written the cursor moves there. Whatever arrives during the backfill is in the
log after that position and is applied by the normal replay (twice is harmless).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from atrium.jobs import Job, Runner
from atrium.mirror.sync import Mirror

log = logging.getLogger(__name__)

__all__ = ["backfill", "needs_backfill"]


def needs_backfill(mirror: Mirror) -> bool:
    """True on a first start over an Orthanc that already holds instances."""
    if mirror.writer.cursor() > 0:
        return False
    return int(mirror.api.get_json("/statistics").get("CountInstances", 0)) > 0


def backfill(mirror: Mirror, connect: Callable[[], Any],
             on_progress: Callable[[int, int], None] | None = None,
             runner: Runner | None = None) -> dict[str, Any]:
    """Mirror every instance of Orthanc; returns the job's result. ``runner`` is
    who runs the job (:mod:`atrium.jobs`); by default this process alone."""
    started = time.monotonic()
    position = mirror.last_change()
    total = int(mirror.api.get_json("/statistics").get("CountInstances", 0))
    job = Job(connect, "backfill", {"change_position": position}, total=total, runner=runner)
    try:
        listed = 0

        def pages() -> Iterator[tuple[list[str], None]]:
            since = 0
            while True:
                ids = mirror.api.get_json(f"/instances?since={since}&limit={page_size}")
                if ids:
                    yield ids, None
                since += len(ids)
                if len(ids) < page_size:
                    return

        def progressed(count: int) -> None:
            nonlocal listed
            listed += count
            job.progress(listed, total)
            if on_progress:
                on_progress(listed, total)

        page_size = mirror.batch_size
        written = mirror.ingest_batches(pages(), progressed)
        mirror.writer.apply([], cursor_seq=position)
        seconds = time.monotonic() - started
        result = {"instances": written, "listed": listed, "seconds": round(seconds, 3),
                  "rate_per_s": round(written / seconds, 1) if seconds else None,
                  "cursor": position}
        job.progress(listed, total, force=True)
        job.succeed(result)
        return result
    except Exception as exc:
        job.fail(f"{type(exc).__name__}: {exc}")
        raise
