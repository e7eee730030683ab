"""Coalesced audit of high-rate reads (slide tiles): one row per caller and resource
per window, written before the window's first answer, and never skipped when the
write failed."""

from __future__ import annotations

import functools
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any

from atrium.api.http import Response
from atrium.auth.audit import AuditEvent
from atrium.auth.request_audit import CoalescedAudit

SLIDE = uuid.uuid4()


class FakeDatabase:
    autocommit = True  # each statement stands alone, as record_alone asks

    def __init__(self) -> None:
        self.rows: list[Any] = []
        self.fail = False
        self.delay = 0.0

    @contextmanager
    def connect(self) -> Any:
        yield self

    def execute(self, query: str, params: Any) -> Any:
        if self.fail:
            raise OSError("database down")
        time.sleep(self.delay)
        self.rows.append(params)
        return self

    def fetchone(self) -> tuple[int, bytes, bytes]:
        return (len(self.rows), b"h", b"p")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def event(phi: bool = True, resource: uuid.UUID = SLIDE) -> AuditEvent:
    return AuditEvent(action="GET /api/slides/{id}/tiles/{level}/{col}/{row}",
                      resource_type="slide", resource_id=resource, details={"status": 200},
                      phi_accessed=phi)


OK = Response(200, b"jpeg", "image/jpeg")


def test_one_row_per_window_and_a_new_one_after_it() -> None:
    db, clock = FakeDatabase(), Clock()
    audit = CoalescedAudit(db.connect, seconds=300, clock=clock)
    for _ in range(50):
        assert audit.answer(("alice", SLIDE), event, OK) is OK
    assert len(db.rows) == 1
    clock.now += 299
    audit.answer(("alice", SLIDE), event, OK)
    assert len(db.rows) == 1
    clock.now += 2
    audit.answer(("alice", SLIDE), event, OK)
    assert len(db.rows) == 2


def test_callers_and_resources_have_their_own_windows() -> None:
    db = FakeDatabase()
    audit = CoalescedAudit(db.connect, clock=Clock())
    other = uuid.uuid4()
    for key, resource in [(("alice", SLIDE), SLIDE), (("bob", SLIDE), SLIDE),
                          (("alice", other), other), (("alice", SLIDE), SLIDE)]:
        audit.answer(key, functools.partial(event, resource=resource), OK)
    assert len(db.rows) == 3


def test_the_row_says_it_stands_for_a_window() -> None:
    db = FakeDatabase()
    CoalescedAudit(db.connect, seconds=300, clock=Clock()).answer(("a",), event, OK)
    details = db.rows[0][8].obj  # the Jsonb of the details column
    assert details == {"status": 200, "coalesced_seconds": 300}


def test_a_failed_write_withholds_phi_and_does_not_open_the_window() -> None:
    db = FakeDatabase()
    audit = CoalescedAudit(db.connect, clock=Clock())
    db.fail = True
    assert audit.answer(("alice",), event, OK).status == 503
    db.fail = False
    assert audit.answer(("alice",), event, OK) is OK
    assert len(db.rows) == 1  # the second request wrote the window's row itself


def test_concurrent_first_answers_wait_for_the_windows_row() -> None:
    db = FakeDatabase()
    db.delay = 0.2
    audit = CoalescedAudit(db.connect, clock=time.monotonic)
    answered_before_row: list[bool] = []

    def read() -> None:
        audit.answer(("alice",), event, OK)
        answered_before_row.append(len(db.rows) == 0)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(db.rows) == 1
    assert answered_before_row == [False] * 8


def test_answers_within_a_window_build_no_row() -> None:
    built: list[AuditEvent] = []

    def counted() -> AuditEvent:
        built.append(event())
        return built[-1]

    audit = CoalescedAudit(FakeDatabase().connect, clock=Clock())
    for _ in range(50):
        audit.answer(("alice", SLIDE), counted, OK)
    assert len(built) == 1
