"""The mirror worker in a cluster: only the leader reads the change log and
completes headers; every node applies the deletions Orthanc told it of; a standby
cues the leader when it stored instances; the first-start work runs once a term."""

from __future__ import annotations

from typing import Any

from atrium.mirror.sync import MirrorWorker


class FakeMirror:
    def __init__(self) -> None:
        self.catch_ups = 0
        self.deleted: list[tuple[str, str]] = []

    def catch_up(self) -> int:
        self.catch_ups += 1
        return 0

    def complete_tags(self, limit: int = 100) -> int:
        return 0

    def apply_deletions(self, deletions: Any) -> int:
        self.deleted += list(deletions)
        return len(deletions)


class FakeLeadership:
    node = "node-a"

    def __init__(self, leading: bool) -> None:
        self.leading = leading

    def refresh(self) -> bool:
        return self.leading

    def release(self) -> None:
        self.leading = False


def worker(leading: bool) -> tuple[MirrorWorker, FakeMirror, FakeLeadership, list[str],
                                   list[str]]:
    mirror, lease = FakeMirror(), FakeLeadership(leading)
    announced: list[str] = []
    terms: list[str] = []
    made = MirrorWorker(mirror, prepare=lambda: None, idle_seconds=0,  # type: ignore[arg-type]
                        leadership=lease, on_lead=lambda: terms.append("lead"),  # type: ignore[arg-type]
                        announce=announced.append)
    return made, mirror, lease, announced, terms


def test_a_standby_applies_its_deletions_and_cues_the_leader_but_reads_no_changes() -> None:
    made, mirror, _, announced, terms = worker(leading=False)
    made.notify_new()
    made.notify_deleted("Study", "abc")
    assert made.step() is False
    assert mirror.catch_ups == 0
    assert mirror.deleted == [("Study", "abc")]
    assert announced == ["deleted", "stored"]
    assert terms == []
    assert made.leading is False
    assert made.step() is False
    assert announced == ["deleted", "stored"]  # no new store, no new cue


def test_the_leader_reads_the_change_log_and_runs_its_first_work_once_a_term() -> None:
    made, mirror, lease, announced, terms = worker(leading=True)
    made.notify_new()
    made.step()
    made.step()
    assert mirror.catch_ups == 2
    assert terms == ["lead"]
    assert announced == []  # the leader reads its own stores from the log
    assert made.leading is True
    lease.leading = False
    made.step()
    assert mirror.catch_ups == 2
    lease.leading = True
    made.step()
    assert terms == ["lead", "lead"]  # a new term


def test_a_node_alone_leads_without_a_lock() -> None:
    mirror = FakeMirror()
    made = MirrorWorker(mirror, prepare=lambda: None, idle_seconds=0)  # type: ignore[arg-type]
    assert made.leading is False  # not before its start-up work
    made.step()
    assert made.leading is True
    assert mirror.catch_ups == 1
