"""Python allocations inside Orthanc, for finding what grows (``ATRIUM_TRACEMALLOC_SECONDS``).

Off unless the setting is above zero. When on, :mod:`tracemalloc` is started from the
plugin (not from ``sitecustomize``: tracing the imports of Orthanc's start-up made it
too slow to answer in time), and a daemon thread appends to a report file, every
period, the allocation sites that grew most since the first snapshot. The first
snapshot is taken one period after the start, so start-up's allocations are not
reported as growth. Tracing slows Python down a lot: a diagnostic, never a default.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import tracemalloc
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["MemoryTrace"]

# The tracer's own bookkeeping would otherwise top every report. "<unknown>" stays:
# it is what C code allocates with no Python frame running — the plugin's own
# objects handed to a callback, say.
_IGNORED = (tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"))


class MemoryTrace:
    """Traces allocations and reports their growth to ``path`` every ``every_seconds``."""

    def __init__(self, path: Path, every_seconds: float, *, frames: int = 8,
                 top: int = 25) -> None:
        if every_seconds <= 0:
            raise ValueError(f"every_seconds must be > 0, got {every_seconds}")
        self.path = path
        self.every_seconds = every_seconds
        self.frames = frames
        self.top = top
        self._first: tracemalloc.Snapshot | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_tracing = False

    def start(self) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._started_tracing = True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        log.warning("tracemalloc.on every_s=%g report=%s (Python runs slower while "
                    "traced)", self.every_seconds, self.path)
        self._thread = threading.Thread(target=self._run, name="atrium-tracemalloc",
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._started_tracing:
            tracemalloc.stop()
            self._started_tracing = False
        self._first = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_seconds):
            try:
                self.report()
            except Exception as exc:  # noqa: BLE001 — a diagnostic must never stop Orthanc
                log.warning("tracemalloc.report_failed error=%r", exc)

    def snapshot(self) -> tracemalloc.Snapshot:
        return tracemalloc.take_snapshot().filter_traces(_IGNORED)

    def report(self) -> str:
        """Appends one report to the file and returns it. The first call only takes
        the reference snapshot."""
        current = self.snapshot()
        traced, peak = tracemalloc.get_traced_memory()
        stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        if self._first is None:
            self._first = current
            text = (f"== {stamp} reference snapshot; traced {traced / 2**20:.1f} MiB "
                    f"(peak {peak / 2**20:.1f} MiB)\n")
        else:
            lines = [f"== {stamp} traced {traced / 2**20:.1f} MiB (peak {peak / 2**20:.1f} "
                     f"MiB); top {self.top} growths since the reference, by site"]
            by_line = current.compare_to(self._first, "lineno")
            for stat in by_line[:self.top]:
                lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks"
                             f"  {stat.traceback[0]}")
            lines.append(f"-- top {min(5, self.top)} by call stack")
            for stat in current.compare_to(self._first, "traceback")[:min(5, self.top)]:
                lines.append(f"{stat.size_diff / 1024:+10.1f} KiB {stat.count_diff:+8d} blocks")
                # Frames as file:line only: format() would read every source file
                # through linecache, which then grows and tops the next report.
                lines.extend(f"      {frame}" for frame in stat.traceback)
            text = "\n".join(lines) + "\n"
        with self.path.open("a", encoding="utf-8") as out:
            out.write(text)
        return text
