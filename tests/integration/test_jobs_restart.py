"""Jobs survive restarts: a job left ``running`` by a crash is found at start-up and
resumed (de-identification) or failed with a reason (platform jobs); a job that a
live process still runs is left alone."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from atrium.devenv import wait_until
from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

Factory = Callable[..., AtriumUnderTest]

SERIES, PER_SERIES = 4, 150  # 600 instances of 256x256: anonymization takes seconds


def store_study(under_test: AtriumUnderTest, spec: StudySpec) -> str:
    """The study stored through Orthanc (organization "Default"), once mirrored; its id."""
    blobs = make_study(spec)
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda blob: under_test.upload(blob).status_code, blobs))
    assert statuses == [200] * len(blobs)

    def mirrored() -> bool:
        return bool(under_test.scalar(
            "SELECT number_of_instances FROM studies WHERE study_instance_uid = %s",
            (spec.study_uid,)) == len(blobs))

    wait_until(mirrored, 120, interval=0.5, what="the study in the mirror")
    return str(under_test.scalar("SELECT id FROM studies WHERE study_instance_uid = %s",
                                 (spec.study_uid,)))


def read_job(under_test: AtriumUnderTest, job_id: str) -> dict[str, Any]:
    answer = requests.get(f"{under_test.url}/api/jobs/{job_id}", timeout=30,
                          headers=under_test.auth("clinician"))
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_deidentification_killed_mid_job_is_resumed_after_the_restart(
        atrium_factory: Factory) -> None:
    under_test = atrium_factory()
    spec = StudySpec(patient_id=f"RESTART-{uuid.uuid4().hex[:8]}", series=SERIES,
                     instances_per_series=PER_SERIES, rows=256)
    source = store_study(under_test, spec)
    started = requests.post(f"{under_test.url}/api/studies/{source}/deidentify", timeout=30,
                            headers=under_test.auth("clinician"))
    assert started.status_code == 202, started.text
    job_id = started.json()["id"]

    job: dict[str, Any] = {}

    def under_way() -> bool:
        nonlocal job
        job = read_job(under_test, job_id)
        assert job["status"] in ("queued", "running"), \
            f"the job ended before the crash ({job['status']}): make the study bigger"
        return bool(job["status"] == "running" and job["progress_done"] > 0)

    wait_until(under_way, 120, interval=0.1, what="the de-identification to be under way")
    assert 0 < job["progress_done"] < 100
    under_test.orthanc.kill()
    under_test.restart()

    def ended() -> bool:
        nonlocal job
        job = read_job(under_test, job_id)
        return job["status"] in ("succeeded", "failed", "cancelled")

    wait_until(ended, 300, interval=0.5, what="the interrupted job to end after the restart")
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["resumed"] is True
    assert job["result"]["mirrored"] is True
    copy_id = job["result"]["study_id"]

    # Exactly one de-identified copy, complete, in the mirror and in Orthanc: a
    # partial copy written before the crash is not left behind.
    under_test.wait_caught_up()

    expected = [(copy_id, SERIES * PER_SERIES)]
    copies: list[tuple[Any, ...]] = []

    def one_live_copy() -> bool:
        nonlocal copies
        copies = under_test.sql(
            "SELECT s.id::text, s.number_of_instances FROM studies s "
            "JOIN patients p ON p.id = s.patient_id "
            "WHERE p.is_deidentified AND s.deleted_at IS NULL")
        return copies == expected

    with contextlib.suppress(TimeoutError):
        wait_until(one_live_copy, 60, interval=0.5, what="exactly one live copy")
    assert copies == expected, f"live de-identified studies {copies}; job {job['result']}"
    assert len(under_test.api.get_json("/studies")) == 2  # the source and its one copy


def insert_job(under_test: AtriumUnderTest, node: str, heartbeat_age_s: int) -> str:
    """A ``reconcile`` job that ``node`` claims to run, last heard of ``heartbeat_age_s`` ago."""
    return str(under_test.scalar(
        "INSERT INTO jobs (kind, status, started_at, runner_node, runner, heartbeat_at) "
        "VALUES ('reconcile', 'running', now() - interval '1 hour', %s, %s, "
        "        now() - %s * interval '1 second') RETURNING id",
        (node, f"{node}#{uuid.uuid4().hex[:12]}", heartbeat_age_s)))


def test_a_job_another_live_node_runs_is_not_taken_but_a_silent_ones_is_failed(
        atrium_factory: Factory) -> None:
    under_test = atrium_factory()
    alive = insert_job(under_test, "other-node:8042", heartbeat_age_s=0)
    silent = insert_job(under_test, "gone-node:8042", heartbeat_age_s=3600)
    under_test.restart()

    def failed() -> bool:
        return bool(under_test.scalar("SELECT status FROM jobs WHERE id = %s",
                                      (silent,)) == "failed")

    wait_until(failed, 60, interval=0.5, what="the silent node's job to be failed")
    error, runner_node = under_test.sql("SELECT error, runner_node FROM jobs WHERE id = %s",
                                        (silent,))[0]
    assert "interrupted" in error.lower() and "atrium reconcile" in error
    assert runner_node != "gone-node:8042"
    status, runner_node, error = under_test.sql(
        "SELECT status, runner_node, error FROM jobs WHERE id = %s", (alive,))[0]
    assert (status, runner_node, error) == ("running", "other-node:8042", None)
