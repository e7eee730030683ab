"""The allocation tracer a soak turns on (ATRIUM_TRACEMALLOC_SECONDS): off by default,
and its report names the site that grew."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from atrium.memtrace import MemoryTrace
from atrium.settings import SettingsError, load_settings

BASE_ENV = {"ATRIUM_DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/atrium"}


def test_off_unless_set(tmp_path: Path) -> None:
    assert load_settings({}, BASE_ENV, cwd=tmp_path).tracemalloc_seconds == 0
    assert load_settings({"Atrium": {"TracemallocSeconds": 30}}, BASE_ENV,
                         cwd=tmp_path).tracemalloc_seconds == 30
    env = {**BASE_ENV, "ATRIUM_TRACEMALLOC_SECONDS": "60"}
    assert load_settings({}, env, cwd=tmp_path).tracemalloc_seconds == 60
    with pytest.raises(SettingsError, match="ATRIUM_TRACEMALLOC_SECONDS"):
        load_settings({}, {**BASE_ENV, "ATRIUM_TRACEMALLOC_SECONDS": "-1"}, cwd=tmp_path)


_HELD: list[bytes] = []


def _grow() -> None:
    _HELD.extend(bytes(1024) + bytes([n % 256]) for n in range(2000))


def test_the_report_names_the_site_that_grew(tmp_path: Path) -> None:
    if tracemalloc.is_tracing():
        pytest.skip("tracemalloc is already on in this interpreter")
    trace = MemoryTrace(tmp_path / "trace" / "tracemalloc.txt", every_seconds=3600, top=5)
    trace.start()
    try:
        first = trace.report()
        _grow()
        second = trace.report()
    finally:
        trace.stop()
        _HELD.clear()
    assert "reference snapshot" in first
    growth = second.splitlines()[1]  # the largest growth comes first
    assert "test_memtrace.py" in growth and float(growth.split()[0]) > 1000  # KiB
    assert (tmp_path / "trace" / "tracemalloc.txt").read_text() == first + second
    assert not tracemalloc.is_tracing()  # stopped by the one that started it
