"""The mirror's guard against hostile files (:mod:`atrium.mirror.quarantine`), with
a fake Orthanc: what is scanned, what is remembered across a crash, what is
quarantined."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from atrium.mirror.quarantine import CRASH_REASON, InstanceGuard, ParseMemory
from atrium.orthanc_api import OrthancError
from tests.support import hostile


class FakeQuarantine:
    """Files by Orthanc id; records what would be quarantined."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.added: list[tuple[str, str]] = []
        self.reads: list[str] = []

    def contains(self, orthanc_id: str) -> bool:
        return any(added == orthanc_id for added, _ in self.added)

    def add(self, orthanc_id: str, reason: str, detected_by: str) -> None:
        if orthanc_id not in self.files:
            raise OrthancError(f"/instances/{orthanc_id}", 404)
        self.added.append((orthanc_id, detected_by))

    @contextlib.contextmanager
    def read_file(self, orthanc_id: str) -> Iterator[tuple[Callable[[int], bytes], int]]:
        self.reads.append(orthanc_id)
        if orthanc_id not in self.files:
            raise OrthancError(f"/instances/{orthanc_id}/file", 404)
        data = self.files[orthanc_id]
        yield io.BytesIO(data).read, len(data)


def guard(tmp_path: Path, files: dict[str, bytes]) -> tuple[InstanceGuard, FakeQuarantine]:
    quarantine = FakeQuarantine(files)
    return InstanceGuard(quarantine, ParseMemory(tmp_path)), quarantine  # type: ignore[arg-type]


def dead_process_memory(directory: Path, ids: list[str]) -> None:
    """What a process that died while parsing ``ids`` leaves behind (a line
    ``<id> again``: it was being read again alone after an earlier death)."""
    # A pid that is no longer running: a finished child's.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    directory.mkdir(parents=True, exist_ok=True)
    (directory / str(child.pid)).write_text("\n".join(ids))


def held(path: Path) -> list[str]:
    """The instances a memory file names, as a reader after a crash takes them."""
    lines = path.read_text().splitlines()
    assert "." in lines, "a record ends with its '.' line"
    return sorted(lines[:lines.index(".")])


def test_the_memory_holds_what_is_being_parsed_and_only_that(tmp_path: Path) -> None:
    memory = ParseMemory(tmp_path)
    mine = tmp_path / str(os.getpid())
    with memory.parsing("a"), memory.parsing("b"):
        assert held(mine) == ["a", "b"]
        with memory.parsing("c", again=True):
            assert held(mine) == ["a", "b", "c again"]
        assert held(mine) == ["a", "b"]
    assert held(mine) == []
    assert mine.read_text() == ".\n", "cut to the length of what it holds"
    with pytest.raises(RuntimeError), memory.parsing("c"):
        raise RuntimeError("Orthanc answered badly")
    assert held(mine) == [], "a parse that failed without a crash is not a suspect"


def test_a_record_cut_short_by_a_crash_names_only_what_was_in_flight(tmp_path: Path) -> None:
    """A process that died between writing a shorter record over a longer one and
    cutting the file leaves the longer one's tail behind the '.': it is not read."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    tmp_path.joinpath(str(child.pid)).write_text("x\n.\ny again\nz\n.\n")
    assert ParseMemory(tmp_path).left_over() == {"x": False}


def test_what_a_dead_process_left_is_handed_over_once(tmp_path: Path) -> None:
    dead_process_memory(tmp_path, ["x", "y"])
    memory = ParseMemory(tmp_path)
    with memory.parsing("mine"):
        assert memory.left_over() == {"x": False, "y": False}
        assert memory.left_over() == {}, "handed over once"
        assert (tmp_path / str(os.getpid())).exists(), "a live process's memory stays"


def test_a_hostile_file_is_quarantined_and_never_reaches_the_parser(tmp_path: Path) -> None:
    files = {"bad": hostile.nested_sequences(), "good": hostile.ordinary()}
    instance_guard, quarantine = guard(tmp_path, files)
    assert instance_guard.admit("good") is True
    assert instance_guard.admit("bad") is False
    assert quarantine.added == [("bad", "scan")]
    reads = len(quarantine.reads)
    assert instance_guard.admit("bad") is False
    assert len(quarantine.reads) == reads, "a quarantined file is not read again"


def test_a_file_that_has_gone_is_an_orthanc_404(tmp_path: Path) -> None:
    instance_guard, _ = guard(tmp_path, {})
    with pytest.raises(OrthancError) as gone:
        instance_guard.admit("gone")
    assert gone.value.status == 404


def test_one_file_in_flight_when_the_process_died_is_read_again_not_quarantined(
        tmp_path: Path) -> None:
    """kill -9 or the OOM killer under an ordinary parse: the file is read again
    alone, marked, and kept."""
    dead_process_memory(tmp_path, ["innocent"])
    instance_guard, quarantine = guard(tmp_path, {"innocent": hostile.ordinary()})
    alone: list[list[str]] = []

    def reparse(orthanc_id: str) -> None:
        alone.append(held(tmp_path / str(os.getpid())))

    assert instance_guard.recover(reparse) == []
    assert alone == [["innocent again"]]
    assert quarantine.added == []
    assert held(tmp_path / str(os.getpid())) == [], "cleared once read again"


def test_a_file_that_stops_orthanc_again_when_read_alone_is_quarantined(
        tmp_path: Path) -> None:
    dead_process_memory(tmp_path, ["culprit again", "bystander"])
    instance_guard, quarantine = guard(tmp_path, {"culprit": hostile.ordinary(),
                                                  "bystander": hostile.ordinary()})
    reparsed: list[str] = []
    assert instance_guard.recover(reparsed.append) == ["culprit"]
    assert quarantine.added == [("culprit", "crash")]
    assert reparsed == ["bystander"], "a suspect of the second death is read again alone"
    assert "stopped while reading" in CRASH_REASON


def test_several_in_flight_are_each_read_again_alone(tmp_path: Path) -> None:
    dead_process_memory(tmp_path, ["a", "b", "gone"])
    instance_guard, quarantine = guard(tmp_path, {"a": hostile.ordinary(),
                                                  "b": hostile.ordinary()})
    alone: list[list[str]] = []

    def reparse(orthanc_id: str) -> None:
        # What the memory holds while this one is parsed: it alone.
        alone.append(held(tmp_path / str(os.getpid())))

    assert instance_guard.recover(reparse) == []
    assert alone == [["a again"], ["b again"]]
    assert quarantine.added == []


def test_a_suspect_that_has_gone_is_forgotten(tmp_path: Path) -> None:
    dead_process_memory(tmp_path, ["gone"])
    instance_guard, quarantine = guard(tmp_path, {})
    assert instance_guard.recover(lambda _: None) == []
    assert quarantine.added == []
