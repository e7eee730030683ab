"""A de-identification interrupted by a restart continues where Orthanc is: it
follows Orthanc's job when Orthanc still has it, starts again when not, and removes
the partial copy of the interrupted run, never a copy of another study."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, cast

from atrium.api.jobs import Deidentifier, Work
from atrium.jobs import Orphan, Runner, interrupted
from atrium.mirror.extract import orthanc_id
from atrium.orthanc_api import HttpOrthancApi, OrthancError

SOURCE = "source-study"
PARTIAL = "partial-copy"
NEW_COPY = "new-copy"
RESTARTED_COPY = "restarted-copy"
INSTANCES = 4


class FakeOrthanc:
    """Orthanc's jobs (id → state, None: forgotten; a running one finishes by the
    next look) and studies (id → the study they are ``AnonymizedFrom``)."""

    def __init__(self, jobs: dict[str, str | None], studies: dict[str, str],
                 counts: dict[str, int] | None = None) -> None:
        self.jobs = jobs
        self.studies = {SOURCE: "", **studies}
        self.counts = counts or {}
        self.started: list[str] = []
        self.bodies: list[Any] = []
        self.before_post: Any = lambda: None  # what a test records as the POST is sent
        self.seen_at_post: list[Any] = []
        self.deleted: list[str] = []

    def get_json(self, path: str) -> Any:
        parts = path.strip("/").split("/")
        if parts[0] == "jobs":
            state = self.jobs.get(parts[1])
            if state is None:
                raise OrthancError(path, 404)
            if state in ("Pending", "Running"):
                self.jobs[parts[1]] = "Success"  # it finishes by the next look
            copy = RESTARTED_COPY if parts[1] == "restarted-job" else NEW_COPY
            return {"State": state, "Progress": 100, "Content": {"ID": copy}}
        study = parts[1].split("?")[0]
        if study not in self.studies:
            raise OrthancError(path, 404)
        if path.endswith("/metadata?expand"):
            return {"AnonymizedFrom": self.studies[study]}
        if path.endswith("/statistics"):
            return {"CountInstances": self.counts.get(study, INSTANCES)}
        return {"MainDicomTags": {"StudyInstanceUID": "2.25.1"}}

    def post_json(self, path: str, body: Any) -> Any:
        assert path == f"/studies/{SOURCE}/anonymize", path
        self.started.append(path)
        self.bodies.append(body)
        self.seen_at_post.append(self.before_post())
        self.jobs["restarted-job"] = "Success"
        return {"ID": "restarted-job"}

    def delete(self, path: str) -> None:
        self.deleted.append(path)


class FakeConnection:
    """Every job update touches its row; the copy is mirrored, complete, in place;
    discarded copies stay live in the mirror for ``lingering`` looks."""

    def __init__(self, organization: uuid.UUID, lingering: int = 0) -> None:
        self.organization = organization
        self.lingering = lingering
        self.rowcount = 1
        self.finished: list[dict[str, Any]] = []
        self.results: list[dict[str, Any]] = []  # the job's result as each update wrote it

    def execute(self, query: str, params: Any = None) -> FakeConnection:
        self._query = query
        if "status = %(status)s" in query:
            self.finished.append(params)
        elif query.startswith("UPDATE jobs SET result"):
            self.results.append(dict(params[0].obj))
        return self

    def fetchone(self) -> tuple[Any, ...]:
        if self._query.startswith("SELECT count(*) FROM studies"):
            self.lingering = max(0, self.lingering - 1)
            return (1 if self.lingering else 0,)
        assert "FROM studies s" in self._query, self._query
        return (uuid.uuid4(), self.organization, uuid.uuid4(), True, INSTANCES)


def deidentifier(orthanc: FakeOrthanc, conn: FakeConnection,
                 mirror_seconds: float = 0) -> Deidentifier:
    @contextmanager
    def connect() -> Any:
        yield conn

    client = cast(HttpOrthancApi, orthanc)  # the calls the Deidentifier makes, faked
    return Deidentifier(connect, lambda: client, Runner("node-a:8042"), poll_seconds=0,
                        mirror_seconds=mirror_seconds)


def resumed_work(organization: uuid.UUID, previous: dict[str, Any]) -> Work:
    return Work(uuid.uuid4(), organization, SOURCE, previous=previous)


def test_a_job_orthanc_still_has_is_followed_and_the_partial_copy_deleted() -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({"old-job": "Running"}, {PARTIAL: SOURCE, NEW_COPY: SOURCE})
    conn = FakeConnection(organization)
    deidentifier(orthanc, conn).run(resumed_work(
        organization, {"orthanc_job_id": "old-job", "orthanc_study_id": PARTIAL}))

    assert orthanc.started == []
    assert orthanc.deleted == [f"/studies/{PARTIAL}"]
    [finished] = conn.finished
    assert finished["status"] == "succeeded", finished["error"]
    result = finished["result"].obj
    assert result["resumed"] is True and result["discarded_copies"] == [PARTIAL]
    assert result["orthanc_job_id"] == "old-job"
    assert "superseded_copies" not in result


def test_a_job_orthanc_forgot_is_started_again() -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({"old-job": None}, {RESTARTED_COPY: SOURCE})
    conn = FakeConnection(organization)
    deidentifier(orthanc, conn).run(resumed_work(organization, {"orthanc_job_id": "old-job"}))

    assert orthanc.started == [f"/studies/{SOURCE}/anonymize"]
    [finished] = conn.finished
    assert finished["status"] == "succeeded", finished["error"]
    assert finished["result"].obj["orthanc_job_id"] == "restarted-job"
    assert finished["result"].obj["discarded_copies"] == []


def test_a_failed_orthanc_job_is_started_again() -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({"old-job": "Failure"}, {RESTARTED_COPY: SOURCE})
    conn = FakeConnection(organization)
    deidentifier(orthanc, conn).run(resumed_work(organization, {"orthanc_job_id": "old-job"}))
    assert orthanc.started == [f"/studies/{SOURCE}/anonymize"]


def test_a_followed_job_whose_copy_has_instances_done_twice_is_redone_from_scratch(
        ) -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({"old-job": "Running"},
                          {NEW_COPY: SOURCE, RESTARTED_COPY: SOURCE},
                          counts={NEW_COPY: INSTANCES + 2})
    conn = FakeConnection(organization)
    deidentifier(orthanc, conn).run(resumed_work(
        organization, {"orthanc_job_id": "old-job", "orthanc_study_id": NEW_COPY}))

    assert orthanc.started == [f"/studies/{SOURCE}/anonymize"]
    assert orthanc.deleted == [f"/studies/{NEW_COPY}"]
    [finished] = conn.finished
    assert finished["status"] == "succeeded", finished["error"]
    result = finished["result"].obj
    assert result["orthanc_study_id"] == RESTARTED_COPY
    assert result["discarded_copies"] == [NEW_COPY]


def test_a_recorded_copy_of_another_study_is_never_deleted() -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({"old-job": "Success"},
                          {PARTIAL: "some-other-study", NEW_COPY: SOURCE})
    conn = FakeConnection(organization)
    deidentifier(orthanc, conn).run(resumed_work(
        organization, {"orthanc_job_id": "old-job", "orthanc_study_id": PARTIAL}))

    assert orthanc.deleted == []
    assert conn.finished[0]["result"].obj["discarded_copies"] == []


def test_a_study_gone_from_orthanc_fails_the_resumed_job_with_that_reason() -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({}, {})
    conn = FakeConnection(organization)
    deidentifier(orthanc, conn).run(Work(uuid.uuid4(), organization, "", previous={}))

    [finished] = conn.finished
    assert (finished["status"], finished["error"]) == \
        ("failed", "The study is no longer in Orthanc.")
    assert orthanc.started == []


def test_the_reason_of_an_unresumable_job_says_when_and_what_to_do() -> None:
    orphan = Orphan(uuid.uuid4(), "reconcile", "running", {}, None, None, "node-b:8042#1",
                    datetime(2026, 3, 1, 4, 5, 6, tzinfo=UTC))
    assert interrupted(orphan, "run `atrium reconcile` again.") == (
        "Interrupted by a restart of Atrium at 2026-03-01 04:05:06 UTC; "
        "run `atrium reconcile` again.")


def test_a_new_anonymization_names_its_copy_before_orthanc_writes_it() -> None:
    """The copy's PatientID and StudyInstanceUID are Atrium's, so its Orthanc id is
    in the job's row before the anonymization starts: a node killed at any moment
    after leaves no copy that the run resuming the job cannot find."""
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({}, {RESTARTED_COPY: SOURCE})
    conn = FakeConnection(organization)
    orthanc.before_post = lambda: list(conn.results)
    deidentifier(orthanc, conn).run(Work(uuid.uuid4(), organization, SOURCE))

    [body] = orthanc.bodies
    replaced = body["Replace"]
    assert body["Force"] is True and replaced["StudyInstanceUID"].startswith("2.25.")
    named = orthanc_id(replaced["PatientID"], replaced["StudyInstanceUID"])
    [written_before_post] = orthanc.seen_at_post
    assert written_before_post == [{"orthanc_study_id": named}]


def test_the_job_ends_once_the_discarded_copy_has_left_the_mirror() -> None:
    organization = uuid.uuid4()
    orthanc = FakeOrthanc({"old-job": "Running"}, {PARTIAL: SOURCE, NEW_COPY: SOURCE})
    conn = FakeConnection(organization, lingering=3)
    deidentifier(orthanc, conn, mirror_seconds=30).run(resumed_work(
        organization, {"orthanc_job_id": "old-job", "orthanc_study_id": PARTIAL}))

    assert conn.lingering == 0, "the job ended while the mirror still showed the copy"
    assert conn.finished[0]["status"] == "succeeded"
