"""``/api/jobs``: background work of the caller's organization, and the runner of
de-identification jobs (``POST /api/studies/{id}/deidentify``, :mod:`atrium.api.studies`).

Jobs belong to the organization that asked for them; platform jobs (backfill,
reconcile: no organization) are nobody's to read through the API. Callers who may
read PHI see all of their organization's jobs, the others only their own.

De-identification is Orthanc's anonymization (the DICOM PS3.15 basic profile, its
default) run as an Orthanc job. :class:`Deidentifier` drives it from one worker
thread, started when work arrives and ended when idle: it starts Orthanc's job
asynchronously, follows its progress, then waits (bounded) until the mirror holds
the copy and checks that the copy sits in the source's organization under a
de-identified patient (:func:`atrium.app.organization_resolver` puts it there).

De-identification survives restarts. Its jobs carry the Deidentifier's runner and
its heartbeat (:mod:`atrium.jobs`); a job orphaned by a crash or restart is handed
to :meth:`Deidentifier.resume` and continues. Orthanc persists its own jobs, so
when the Orthanc job it started still exists (pending, running, paused or done)
it is followed to its end; else — it failed, or another node whose Orthanc never
heard of it took the job over — the anonymization starts again from the study
named in the job's parameters. Orthanc reloads a running job from its last saved
state, which leaves either a partial first copy beside a new one, or one copy
with instances done twice under new SOP UIDs. So each anonymization is given its
copy's PatientID and StudyInstanceUID, and the job records the copy's Orthanc id
(computed from them) before Orthanc writes anything; a followed job's copy is
kept only when it holds as many instances as the source (else the anonymization
starts again), and every other copy of an interrupted run is deleted from
Orthanc — after checking that it is an anonymized copy of the same study — once
the job's copy is complete. ``result.resumed`` says the job was resumed,
``result.discarded_copies`` what was deleted. A study gone from Orthanc
meanwhile fails the job with that reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import AUTHENTICATED, AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.schema import date_time, enum, integer, nullable, obj, string
from atrium.api.schema import uuid as uuid_schema
from atrium.api.scope import Conditions, organization_scope
from atrium.errors import NotFound, ServiceUnavailable
from atrium.jobs import Orphan, Runner
from atrium.mirror.extract import orthanc_id
from atrium.orthanc_api import HttpOrthancApi, OrthancError

if TYPE_CHECKING:
    from atrium.app import Atrium

log = logging.getLogger(__name__)

__all__ = ["JOB", "Deidentifier", "routes"]

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")

JOB = obj({
    "id": uuid_schema(), "kind": string(), "status": enum(*STATUSES),
    "parameters": obj({}, additional=True), "progress_done": integer(minimum=0),
    "progress_total": nullable(integer(minimum=0)),
    "result": nullable(obj({}, additional=True)), "error": nullable(string()),
    "created_by": nullable(uuid_schema()), "created_at": date_time(),
    "updated_at": date_time(), "started_at": nullable(date_time()),
    "finished_at": nullable(date_time()),
}, required=["id", "kind", "status", "parameters", "progress_done", "progress_total",
             "result", "error", "created_by", "created_at", "updated_at", "started_at",
             "finished_at"])
JOB_SEARCH = obj({**PAGE_PARAMETERS, "kind": string(min_length=1, max_length=50),
                  "status": enum(*STATUSES)})

ORDER = Keyset("jobs", ("j.created_at", "j.id"))

_COLUMNS = ("id", "kind", "status", "parameters", "progress_done", "progress_total", "result",
            "error", "created_by", "created_at", "updated_at", "started_at", "finished_at")
_SELECT = sql.SQL(
    "SELECT j.id, j.kind, j.status, j.parameters, j.progress_done, j.progress_total, "
    "j.result, j.error, j.created_by, j.created_at, j.updated_at, j.started_at, "
    "j.finished_at FROM jobs j")


def job_row(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_COLUMNS, row, strict=True))


def job_scope(caller: Any) -> Conditions:
    """The caller's organization's jobs; only their own without PHI access."""
    where = organization_scope(caller, "j")
    if not caller.can_read_phi:
        where.add("j.created_by = %s", caller.user_id)
    return where


def read_job(conn: Any, job_id: uuid.UUID) -> dict[str, Any]:
    row = conn.execute(sql.SQL("{} WHERE j.id = %s").format(_SELECT), (job_id,)).fetchone()
    assert row is not None, f"job {job_id} vanished"
    return job_row(row)


def routes(app: Atrium) -> list[Route]:
    def list_jobs(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where = job_scope(request.caller).add(after, *values)
        if "kind" in args:
            where.add("j.kind = %s", args["kind"])
        if "status" in args:
            where.add("j.status = %s", args["status"])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), ORDER.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [*where.params, wanted.fetch]).fetchall()
        jobs = [job_row(r) for r in rows]
        return json_response(ORDER.page(jobs, wanted.limit,
                                        key=lambda j: (j["created_at"], j["id"])),
                             audit=AuditNote("job"))

    def get_job(request: Request) -> Response:
        where = job_scope(request.caller).add("j.id = %s", request.params["id"])
        with app.pool.connection() as conn:
            row = conn.execute(sql.SQL("{} WHERE {}").format(_SELECT, where.sql()),
                               where.params).fetchone()
        if row is None:
            raise NotFound(f"No job {request.params['id']}")
        job = job_row(row)
        return json_response(job, audit=AuditNote("job", job["id"]))

    tags = ("jobs",)
    return [
        Route("GET", "/api/jobs", list_jobs, tags=tags, auth=AUTHENTICATED, query=JOB_SEARCH,
              summary="Background jobs of the caller's organization, newest first",
              responses={200: Reply("A page of jobs", page_schema(JOB))}),
        Route("GET", "/api/jobs/{id:uuid}", get_job, tags=tags, auth=AUTHENTICATED,
              summary="A background job and its progress",
              responses={200: Reply("The job", JOB)}),
    ]


# ------------------------------------------------------------- Orthanc's jobs


# --------------------------------------------------------- de-identification

_NEW_JOB = """
INSERT INTO jobs (kind, status, organization_id, created_by, parameters, progress_total,
                  runner_node, runner, heartbeat_at)
VALUES ('deidentify', 'queued', %s, %s, %s, 100, %s, %s, now()) RETURNING id
"""
_RUNNING = ("UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, now()) "
            "WHERE id = %s AND runner = %s")
_COPY_NAMED = "UPDATE jobs SET result = %s WHERE id = %s AND runner = %s"
_PROGRESS = ("UPDATE jobs SET progress_done = %s, result = %s WHERE id = %s AND runner = %s "
             "AND (progress_done, result) IS DISTINCT FROM (%s, %s)")
_FINISHED = """
UPDATE jobs SET status = %(status)s, result = COALESCE(%(result)s::jsonb, result),
       error = %(error)s, finished_at = now(),
       progress_done = CASE WHEN %(succeeded)s THEN progress_total ELSE progress_done END
WHERE id = %(id)s AND runner = %(runner)s AND status IN ('queued', 'running')
"""
_SOURCE_STUDY = "SELECT orthanc_id FROM studies WHERE id = %s AND deleted_at IS NULL"
# Orthanc job states worth following after a restart; a failed one is started again.
_FOLLOWABLE = ("Pending", "Running", "Paused", "Retry", "Success")
_MIRRORED_COPY = """
SELECT s.id, s.organization_id, s.patient_id, p.is_deidentified, s.number_of_instances
FROM studies s JOIN patients p ON p.id = s.patient_id
WHERE s.orthanc_id = %s AND s.deleted_at IS NULL
"""
_LIVE_COPIES = "SELECT count(*) FROM studies WHERE orthanc_id = ANY(%s) AND deleted_at IS NULL"


class JobFailed(Exception):
    """A de-identification that cannot complete; the message is the job's ``error``."""


@dataclass(frozen=True)
class Work:
    """A job to run; ``previous`` is the result of an interrupted run when resuming."""

    job_id: uuid.UUID
    organization_id: uuid.UUID
    study_orthanc_id: str
    previous: dict[str, Any] | None = None


class Deidentifier:
    """Runs de-identification jobs, one at a time, on a worker thread started when
    work arrives and ended after ``idle_seconds`` without any.

    Parameters
    ----------
    connect
        The pool's ``connection``.
    orthanc
        Factory of the :class:`HttpOrthancApi` client (called once, on first use).
    runner
        Who runs the jobs (this process on this node); it keeps them heartbeating.
    poll_seconds
        How often Orthanc's job and then the mirror are looked at.
    max_seconds
        Longest wait for Orthanc's job; the job fails after it.
    mirror_seconds
        Longest wait for the mirror to hold the whole copy; after it the job
        succeeds with ``"mirrored": false`` (the mirror will still catch up).
    capacity
        Jobs waiting at most; more are refused (503) rather than queued unboundedly.
    """

    def __init__(self, connect: Callable[[], Any], orthanc: Callable[[], HttpOrthancApi],
                 runner: Runner, *, poll_seconds: float = 0.5, max_seconds: float = 6 * 3600,
                 mirror_seconds: float = 120, idle_seconds: float = 30,
                 capacity: int = 64) -> None:
        self._connect = connect
        self._orthanc_factory = orthanc
        self._orthanc: HttpOrthancApi | None = None
        self.runner = runner
        self.poll_seconds = poll_seconds
        self.max_seconds = max_seconds
        self.mirror_seconds = mirror_seconds
        self.idle_seconds = idle_seconds
        self._queue: queue.Queue[Work] = queue.Queue(maxsize=capacity)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def create(self, conn: Any, caller: Any, parameters: dict[str, Any]) -> uuid.UUID:
        """The ``queued`` job row, in the caller's transaction."""
        row = conn.execute(_NEW_JOB, (caller.organization_id, caller.user_id,
                                      Jsonb(parameters), self.runner.node,
                                      self.runner.id)).fetchone()
        assert row is not None
        return row[0]

    def submit(self, work: Work) -> None:
        """Hand a created job to the worker; 503 when too many are waiting."""
        self.runner.keep_alive(self._connect)
        try:
            self._queue.put_nowait(work)
        except queue.Full:
            self._finish(work.job_id, "failed", None, "Too many de-identifications waiting.")
            raise ServiceUnavailable("Too many de-identifications are waiting; try again "
                                     "in a few minutes.") from None
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="atrium-deidentify",
                                                daemon=True)
                self._thread.start()

    def resume(self, orphan: Orphan) -> None:
        """Take over an orphaned job (claimed by this runner): queue it to continue
        from where its Orthanc job is, or to start again (the module's docstring)."""
        assert orphan.organization_id is not None, "de-identification jobs have an owner"
        with self._connect() as conn:
            row = conn.execute(_SOURCE_STUDY, (orphan.parameters.get("study_id"),)).fetchone()
        self.submit(Work(orphan.id, orphan.organization_id, str(row[0] or "") if row else "",
                         previous=dict(orphan.result or {})))

    def _run(self) -> None:
        while True:
            try:
                work = self._queue.get(timeout=self.idle_seconds)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            self.run(work)

    # -- one job ----------------------------------------------------------------
    def run(self, work: Work) -> None:
        """Run one job to its end; never raises (the job row says what happened)."""
        log.info("deidentify.started job=%s resumed=%s", work.job_id, work.previous is not None)
        try:
            with self._connect() as conn:
                conn.execute(_RUNNING, (work.job_id, self.runner.id))
            result = self._anonymize(work)
        except JobFailed as failed:
            self._finish(work.job_id, "failed", None, str(failed))
        except Exception as exc:  # noqa: BLE001 - the worker outlives any one job
            log.exception("deidentify.crashed job=%s", work.job_id)
            self._finish(work.job_id, "failed", None, f"{type(exc).__name__}: {exc}")
        else:
            self._finish(work.job_id, "succeeded", result, None)

    def _client(self) -> HttpOrthancApi:
        if self._orthanc is None:
            self._orthanc = self._orthanc_factory()
        return self._orthanc

    def _anonymize(self, work: Work) -> dict[str, Any]:
        orthanc = self._client()
        previous = work.previous or {}
        result: dict[str, Any] = {}
        copy_id: str | None = None
        if work.previous is not None:
            # Copies an interrupted run began; whichever copy the job ends with
            # supersedes them.
            result["resumed"] = True
            result["superseded_copies"] = sorted(
                {*previous.get("superseded_copies", []), previous.get("orthanc_study_id")}
                - {None})
            copy_id = self._resume_orthanc_job(work, previous.get("orthanc_job_id"), result)
        if copy_id is None:
            result["orthanc_job_id"] = self._start_anonymization(work, result)
            copy_id = self._copy_named_by(self._follow(work.job_id, result))
        superseded = [c for c in result.pop("superseded_copies", []) if c != copy_id]
        if work.previous is not None:
            result["discarded_copies"] = [c for c in superseded
                                          if self._discard_partial_copy(work, c)]
        copy = orthanc.get_json(f"/studies/{copy_id}")
        expected = int(orthanc.get_json(f"/studies/{copy_id}/statistics")["CountInstances"])
        result.update(orthanc_study_id=copy_id,
                      study_instance_uid=copy.get("MainDicomTags", {}).get("StudyInstanceUID"))
        result.update(self._mirrored(work, copy_id, expected,
                                     result.get("discarded_copies", [])))
        return result

    @staticmethod
    def _copy_named_by(job: dict[str, Any]) -> str:
        copy_id = str((job.get("Content") or {}).get("ID") or "")
        if not copy_id:
            raise JobFailed("Orthanc's anonymization finished without naming its copy.")
        return copy_id

    def _resume_orthanc_job(self, work: Work, orthanc_job: str | None,
                            result: dict[str, Any]) -> str | None:
        """The copy made by the interrupted run's Orthanc job, followed to its end, if
        that copy is exact; None when the anonymization must start again.

        Orthanc reloads a running job from its last saved state: sometimes from
        the start with new UIDs (a second copy), sometimes with the study's UIDs
        but redoing instances under new SOP UIDs (a copy with duplicates). Only a
        copy with as many instances as the source is kept; any other is discarded.
        """
        followed = self._followable(orthanc_job)
        if followed is None:
            return None
        result["orthanc_job_id"] = followed
        try:
            copy_id = self._copy_named_by(self._follow(work.job_id, result))
        except JobFailed as failed:
            log.info("deidentify.restart job=%s reason=%r", work.job_id, str(failed))
            return None
        if self._instance_count(copy_id) == self._instance_count(work.study_orthanc_id):
            return copy_id
        log.warning("deidentify.copy_inexact job=%s copy=%s: starting again", work.job_id,
                 copy_id)
        result["superseded_copies"] = sorted({*result["superseded_copies"], copy_id})
        return None

    def _instance_count(self, study_orthanc_id: str) -> int | None:
        if not study_orthanc_id:
            return None
        try:
            statistics = self._client().get_json(f"/studies/{study_orthanc_id}/statistics")
        except OrthancError as exc:
            if exc.status == 404:
                return None
            raise
        return int(statistics["CountInstances"])

    def _start_anonymization(self, work: Work, result: dict[str, Any]) -> str:
        """Start Orthanc's anonymization with a PatientID and StudyInstanceUID of our
        own, so that the copy's Orthanc id is known — and recorded in the job — before
        Orthanc writes its first instance: a run interrupted at any moment leaves no
        copy that a resumed run cannot find and discard. (With Orthanc's own UIDs the
        id came with the job's progress, and a node killed in the half-second before
        left a partial copy beside the resumed run's.)"""
        if not work.study_orthanc_id:
            raise JobFailed("The study is no longer in Orthanc.")
        patient_id, study_uid = str(uuid.uuid4()), f"2.25.{uuid.uuid4().int}"
        result["orthanc_study_id"] = orthanc_id(patient_id, study_uid)
        with self._connect() as conn:
            conn.execute(_COPY_NAMED, (Jsonb(result), work.job_id, self.runner.id))
        try:
            started = self._client().post_json(
                f"/studies/{work.study_orthanc_id}/anonymize",
                {"Asynchronous": True, "Force": True,  # Force: Orthanc's rule for PatientID
                 "Replace": {"PatientID": patient_id, "StudyInstanceUID": study_uid}})
        except OrthancError as exc:
            if exc.status == 404:
                raise JobFailed("The study is no longer in Orthanc.") from None
            raise
        return str(started["ID"])

    def _followable(self, orthanc_job: str | None) -> str | None:
        """The Orthanc job of an interrupted run, if it can still be followed."""
        if not orthanc_job:
            return None
        try:
            job = self._client().get_json(f"/jobs/{orthanc_job}")
        except OrthancError as exc:
            if exc.status == 404:  # another Orthanc's job, or Orthanc forgot it
                return None
            raise
        state = job.get("State")
        if state not in _FOLLOWABLE:
            return None
        if state == "Paused":
            self._client().post_json(f"/jobs/{orthanc_job}/resume", {})
        return orthanc_job

    def _discard_partial_copy(self, work: Work, copy_id: str) -> bool:
        """Delete an interrupted run's copy from Orthanc, but only an anonymized copy
        of this job's study; whether it was deleted."""
        try:
            source = self._client().get_json(f"/studies/{copy_id}/metadata?expand")
        except OrthancError as exc:
            if exc.status == 404:
                return False
            raise
        if not work.study_orthanc_id or \
                source.get("AnonymizedFrom") != work.study_orthanc_id:
            log.warning("deidentify.partial_copy_kept job=%s copy=%s: not an anonymized copy "
                        "of the job's study", work.job_id, copy_id)
            return False
        self._client().delete(f"/studies/{copy_id}")
        log.warning("deidentify.partial_copy_deleted job=%s copy=%s", work.job_id, copy_id)
        return True

    def _follow(self, job_id: uuid.UUID, result: dict[str, Any]) -> dict[str, Any]:
        """Orthanc's job until it ends, its progress copied into ours, and the copy's
        Orthanc id as soon as Orthanc names it (so a run interrupted after this
        leaves no copy that a resumed run cannot find)."""
        orthanc_job = result["orthanc_job_id"]
        deadline = time.monotonic() + self.max_seconds
        last: tuple[int, str | None] = (-1, None)
        while True:
            job = self._client().get_json(f"/jobs/{orthanc_job}")
            state = job.get("State")
            progress = max(0, min(100, int(job.get("Progress") or 0)))
            copy_id = (job.get("Content") or {}).get("ID")
            if copy_id:
                result["orthanc_study_id"] = str(copy_id)
            if (progress, copy_id) != last:
                last = (progress, copy_id)
                with self._connect() as conn:
                    conn.execute(_PROGRESS, (progress, Jsonb(result), job_id, self.runner.id,
                                             progress, Jsonb(result)))
            if state == "Success":
                return dict(job)
            if state == "Failure":
                detail = job.get("ErrorDetails") or job.get("ErrorDescription") or "no detail"
                raise JobFailed(f"Orthanc's anonymization failed: {detail}")
            if time.monotonic() > deadline:
                raise JobFailed(f"Orthanc's anonymization did not finish in "
                                f"{self.max_seconds:.0f} s (Orthanc job {orthanc_job}).")
            self._stop.wait(self.poll_seconds)

    def _mirrored(self, work: Work, copy_id: str, expected: int,
                  discarded: list[str]) -> dict[str, Any]:
        """The copy's rows in the mirror, once all ``expected`` instances are there and
        the ``discarded`` copies are gone from it (the mirror applies a deletion a
        moment after Orthanc's event: a job that said "succeeded" before that showed
        two copies); a copy filed in another organization fails the job."""
        deadline = time.monotonic() + self.mirror_seconds
        row = None
        while True:
            with self._connect() as conn:
                row = conn.execute(_MIRRORED_COPY, (copy_id,)).fetchone()
                lingering = discarded and conn.execute(_LIVE_COPIES, (discarded,)).fetchone()[0]
            if row is not None and row[4] >= expected and not lingering:
                break
            if time.monotonic() > deadline:
                break
            self._stop.wait(self.poll_seconds)
        if row is None:
            return {"study_id": None, "patient_id": None, "mirrored": False}
        study_id, organization_id, patient_id, deidentified, count = row
        if organization_id != work.organization_id:
            log.error("deidentify.misfiled job=%s copy=%s", work.job_id, copy_id)
            raise JobFailed("The de-identified copy was mirrored into another organization; "
                            "report this to the administrator.")
        if not deidentified:
            raise JobFailed("The copy's patient is not marked de-identified "
                            "(PatientIdentityRemoved is not YES).")
        return {"study_id": str(study_id), "patient_id": str(patient_id),
                "mirrored": count >= expected}

    def _finish(self, job_id: uuid.UUID, status: str, result: dict[str, Any] | None,
                error: str | None) -> None:
        try:
            with self._connect() as conn:
                owned = conn.execute(_FINISHED, {
                    "status": status, "succeeded": status == "succeeded", "id": job_id,
                    "runner": self.runner.id, "error": error[:2000] if error else None,
                    "result": Jsonb(result) if result is not None else None}).rowcount
        except Exception:  # noqa: BLE001 - nothing more can be done; the log says it
            log.exception("deidentify.unrecorded job=%s status=%s", job_id, status)
            return
        if not owned:
            log.warning("deidentify.taken_over job=%s status=%s: another runner had claimed "
                        "it; its outcome stands", job_id, status)
            return
        log.info("deidentify.%s job=%s", status, job_id)
