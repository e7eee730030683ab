"""A task run inside Atrium every so many seconds, on a daemon thread of its own.

It rides on :class:`atrium.workers.PollingWorker`: it waits until the schema is
ready, survives any failure with one log line and a backoff, and never runs on an
Orthanc callback thread. ``at_stop``, when given, runs once more as Atrium stops
(the audit anchor's checkpoint at shutdown).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from atrium.workers import PollingWorker

log = logging.getLogger(__name__)

__all__ = ["ScheduledTask"]


class ScheduledTask(PollingWorker):
    """Runs ``task()`` once ready, then every ``every_seconds``."""

    def __init__(self, name: str, task: Callable[[], Any], *, every_seconds: float,
                 ready: Callable[[], bool], at_stop: Callable[[], Any] | None = None) -> None:
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
        super().__init__(ready=ready, poll_seconds=every_seconds, batch=-1)
        self.thread_name = f"atrium-{name}"
        self.log_name = name
        self._task = task
        self._at_stop = at_stop
        self.runs = 0

    def step(self) -> int:
        self._task()
        self.runs += 1
        return 0

    def busy(self, looked_at: int) -> bool:
        return False

    def stop(self, timeout: float = 10) -> None:
        super().stop(timeout)
        if self._at_stop is not None and self._ready():
            try:
                self._at_stop()
            except Exception as exc:  # noqa: BLE001 — stopping must not fail on it
                log.warning("%s.at_stop_failed error=%r", self.log_name, exc)
