"""The polling worker: waits until ready, steps again at once after a full batch,
outlives failures with a backoff, stops promptly."""

from __future__ import annotations

import threading
import time

from atrium.workers import PollingWorker


class Counting(PollingWorker):
    thread_name = "test-worker"

    def __init__(self, results: list[object], ready: threading.Event) -> None:
        super().__init__(ready=ready.is_set, poll_seconds=0.05, batch=3)
        self.results = results
        self.calls: list[float] = []

    def step(self) -> int:
        self.calls.append(time.monotonic())
        result = self.results.pop(0) if self.results else 0
        if isinstance(result, Exception):
            raise result
        assert isinstance(result, int)
        return result


def test_waits_for_ready_then_steps_again_at_once_after_a_full_batch() -> None:
    ready = threading.Event()
    worker = Counting([3, 3, 1], ready)
    worker.start()
    time.sleep(0.15)
    assert worker.calls == []  # not ready: no step
    ready.set()
    deadline = time.monotonic() + 5
    while len(worker.calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    first, second, third, fourth = worker.calls[:4]
    assert second - first < 0.04 and third - second < 0.04  # full batches: no pause
    assert fourth - third >= 0.045  # a partial batch: the poll interval


def test_a_failure_is_retried_after_a_backoff() -> None:
    ready = threading.Event()
    ready.set()
    worker = Counting([RuntimeError("database down"), 1], ready)
    worker.start()
    deadline = time.monotonic() + 5
    while len(worker.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop(timeout=1)
    assert len(worker.calls) >= 2
    assert worker.calls[1] - worker.calls[0] >= 0.045
    assert worker._thread is not None and not worker._thread.is_alive()
