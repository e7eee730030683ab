"""Scheduled tasks inside Atrium: they wait for the schema, survive failures and run
their last step at shutdown."""

from __future__ import annotations

import threading

import pytest

from atrium.devenv import wait_until
from atrium.operations.scheduled import ScheduledTask


def test_a_task_runs_once_ready_and_its_stop_step_runs_at_shutdown() -> None:
    ready = threading.Event()
    ran = threading.Event()
    stopped: list[bool] = []
    task = ScheduledTask("test", ran.set, every_seconds=3600, ready=ready.is_set,
                         at_stop=lambda: stopped.append(True))
    task._poll_seconds = 0.01  # waiting for readiness polls at this pace
    task.start()
    assert not ran.is_set()

    ready.set()
    assert ran.wait(10)
    task.stop()

    assert task.runs >= 1 and stopped == [True]


def test_a_failing_task_is_retried_and_a_failing_stop_step_does_not_raise() -> None:
    calls: list[int] = []

    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database down")

    def broken() -> None:
        raise RuntimeError("storage down")

    task = ScheduledTask("test", flaky, every_seconds=0.01, ready=lambda: True, at_stop=broken)
    task.start()
    wait_until(lambda: task.runs >= 1, 10, what="a successful run after the failure")
    task.stop()

    assert len(calls) >= 2


def test_the_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every_seconds must be > 0"):
        ScheduledTask("test", lambda: None, every_seconds=0, ready=lambda: True)
