"""Background workers that poll the mirror for work: the SR and bulk-annotation
importers, the DICOM WSI registry.

Each is a daemon thread off Orthanc's store path. It waits until ``ready()`` (the
schema is migrated by the mirror's start-up), then — while ``only_while``'s
condition holds, if one is set — calls ``step()``: again at once
after a full batch, else after ``poll_seconds``. It outlives any failure — a
database down for an hour — with one log line per attempt and a backoff doubling
up to 30 s, never a traceback per poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["PollingWorker"]

MAX_BACKOFF_SECONDS = 30.0


class PollingWorker:
    """Subclasses set ``thread_name`` and ``log_name`` and implement :meth:`step`."""

    thread_name = "atrium-worker"
    log_name = "worker"  # the retry line reads "<log_name>.retry error=… backoff_s=…"

    def __init__(self, *, ready: Callable[[], bool], poll_seconds: float, batch: int) -> None:
        self._ready = ready
        self._poll_seconds = poll_seconds
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._active: Callable[[], bool] = lambda: True

    def only_while(self, active: Callable[[], bool]) -> PollingWorker:
        """Step only while ``active()`` holds: work that must run once in a cluster
        runs on the mirror's leader (docs/SCALING.md). Returns the worker."""
        self._active = active
        return self

    def step(self) -> int:
        """Look at up to one batch of work; how many items were looked at."""
        raise NotImplementedError

    def busy(self, looked_at: int) -> bool:
        """Whether to step again at once: a full batch may have left work behind."""
        return looked_at == self._batch

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._ready():
            if self._stop.wait(self._poll_seconds):
                return
        backoff = self._poll_seconds
        while not self._stop.is_set():
            if not self._active():
                self._stop.wait(min(self._poll_seconds, 1.0))
                continue
            try:
                busy = self.busy(self.step())
                backoff = self._poll_seconds
            except Exception as exc:  # noqa: BLE001 — the worker must outlive any failure
                log.warning("%s.retry error=%r backoff_s=%.1f", self.log_name, exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if not busy:
                self._stop.wait(self._poll_seconds)
