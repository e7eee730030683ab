"""Background jobs (``jobs`` table): backfill, reconcile, de-identification...

A job row is created ``running`` (or ``queued``), its progress updated as it goes,
and finished ``succeeded`` or ``failed`` with its result or error. Progress writes
are cheap single-row updates in their own short transactions.

Who runs a job, and what happens when it dies
---------------------------------------------
Every job row names its :class:`Runner`: ``runner_node``, the Orthanc+Atrium node
(host name and Orthanc's HTTP port: stable across restarts of that node, distinct
between nodes sharing one database), and ``runner``, one start of one process on
it. While a process has live jobs, one heartbeat thread of its runner stamps
``heartbeat_at`` on all of them every :data:`HEARTBEAT_SECONDS`.

A ``queued``/``running`` job is an *orphan* when nothing can be running it any
more: its runner is an earlier start of this node (this node restarted: found at
once, without waiting), or its heartbeat is older than :data:`STALE_SECONDS` (any
process on any node died: found by whichever node looks next), or it names no
runner (written before runners were recorded, sql/0016). :func:`recover_orphans`
claims orphans with ``FOR UPDATE SKIP LOCKED`` — a job is claimed by one node,
and a job a live process still runs is never touched — and hands each to the
handler of its kind; a kind without one is failed with a reason a user can act
on. Every node looks at start-up (after migrations) and then every third of the
stale period (:mod:`atrium.app`; ``ATRIUM_JOB_HEARTBEAT_SECONDS`` and
``ATRIUM_JOB_STALE_SECONDS`` set both periods). Per kind: ``deidentify`` is resumed
(:meth:`atrium.api.jobs.Deidentifier.resume`); ``backfill`` and ``reconcile`` are
failed with :data:`INTERRUPTED_ADVICE` — the mirror's replay of Orthanc's changes
covers their data. docs/API.md ("Jobs") says the same for users.

Every write of a runner to its job is fenced by ``runner``: a runner whose job
was claimed by another (it was silent too long, e.g. cut off from PostgreSQL)
cannot finish it over the new owner.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from psycopg.types.json import Jsonb

log = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_SECONDS", "INTERRUPTED_ADVICE", "STALE_SECONDS", "Job", "Orphan",
           "Runner", "fail_orphan", "interrupted", "recover_orphans"]

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0  # six missed heartbeats: a runner this silent is gone (JobStaleSeconds)
ACTIVE = ("queued", "running")


class Runner:
    """One start of one process that runs jobs, on one node.

    Parameters
    ----------
    node
        The node's stable name; see :meth:`for_node`. Jobs of this node but of
        another runner are orphans as soon as this runner recovers.
    beat_seconds
        Interval of the heartbeat while the runner has live jobs.
    """

    def __init__(self, node: str, beat_seconds: float = HEARTBEAT_SECONDS) -> None:
        self.node = node
        self.id = f"{node}#{uuid.uuid4().hex[:12]}"
        self.beat_seconds = beat_seconds
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wanted = False
        self._stop = threading.Event()

    @classmethod
    def for_node(cls, orthanc_http_port: int, beat_seconds: float = HEARTBEAT_SECONDS
                 ) -> Runner:
        """The runner of Atrium inside Orthanc: the node is this host and Orthanc's
        port (several Orthancs may share a host). Orchestrators should give nodes
        stable host names (compose ``hostname:``) so that a restarted node finds
        its own orphans at once rather than after :data:`STALE_SECONDS`."""
        return cls(f"{socket.gethostname()}:{orthanc_http_port}", beat_seconds)

    @classmethod
    def for_process(cls) -> Runner:
        """A runner for a one-off process (the ``atrium`` command): a node of its
        own, so that no Orthanc start ever takes its jobs while it lives."""
        return cls(f"{socket.gethostname()}/pid-{os.getpid()}")

    def keep_alive(self, connect: Callable[[], Any]) -> None:
        """Make sure the heartbeat runs; it stops by itself once no live job is left."""
        with self._lock:
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._beat, args=(connect,),
                                                name="atrium-job-heartbeat", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _beat(self, connect: Callable[[], Any]) -> None:
        while not self._stop.wait(self.beat_seconds):
            try:
                with connect() as conn:
                    live = conn.execute(
                        "UPDATE jobs SET heartbeat_at = now() WHERE runner = %s "
                        "AND status IN ('queued', 'running')", (self.id,)).rowcount
            except Exception as exc:  # noqa: BLE001 - beat again; silence makes orphans
                log.warning("job.heartbeat_failed runner=%s error=%r", self.id, exc)
                continue
            with self._lock:
                if live == 0 and not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
        with self._lock:
            self._thread = None


class Job:
    """One running job; ``connect`` returns a context manager yielding a connection.

    ``runner`` defaults to a runner of this process alone (:meth:`Runner.for_process`).
    """

    def __init__(self, connect: Callable[[], Any], kind: str,
                 parameters: dict[str, Any] | None = None, total: int | None = None,
                 runner: Runner | None = None) -> None:
        self._connect = connect
        self.kind = kind
        self.runner = runner or Runner.for_process()
        self._last_write = 0.0
        self.done = 0
        with connect() as conn:
            row = conn.execute(
                "INSERT INTO jobs (kind, status, parameters, progress_total, started_at, "
                "runner_node, runner, heartbeat_at) "
                "VALUES (%s, 'running', %s, %s, now(), %s, %s, now()) RETURNING id",
                (kind, Jsonb(parameters or {}), total, self.runner.node, self.runner.id),
            ).fetchone()
        self.id: UUID = row[0]
        self.runner.keep_alive(connect)
        log.info("job.started id=%s kind=%s total=%s runner=%s", self.id, kind, total,
                 self.runner.id)

    def progress(self, done: int, total: int | None = None, force: bool = False) -> None:
        """Record progress; at most a few writes per second unless ``force``."""
        self.done = done
        now = time.monotonic()
        if not force and now - self._last_write < 0.5:
            return
        self._last_write = now
        with self._connect() as conn:
            conn.execute(
                "UPDATE jobs SET progress_done = %s, heartbeat_at = now(), "
                "progress_total = COALESCE(%s, progress_total) WHERE id = %s AND runner = %s",
                (done, total, self.id, self.runner.id),
            )

    def succeed(self, result: dict[str, Any]) -> None:
        with self._connect() as conn:
            owned = conn.execute(
                "UPDATE jobs SET status = 'succeeded', result = %s, progress_done = %s, "
                "finished_at = now() WHERE id = %s AND runner = %s",
                (Jsonb(result), self.done, self.id, self.runner.id),
            ).rowcount
        if not owned:
            log.warning("job.taken_over id=%s kind=%s: finished here, but another runner "
                        "had already claimed it", self.id, self.kind)
            return
        log.info("job.succeeded id=%s kind=%s done=%s", self.id, self.kind, self.done)

    def fail(self, error: str) -> None:
        try:
            with self._connect() as conn:
                conn.execute(
                    "UPDATE jobs SET status = 'failed', error = %s, finished_at = now() "
                    "WHERE id = %s AND runner = %s", (error[:2000], self.id, self.runner.id))
        finally:
            log.error("job.failed id=%s kind=%s error=%r", self.id, self.kind, error)


# ------------------------------------------------------------------- recovery

@dataclass(frozen=True)
class Orphan:
    """A job claimed from a runner that is gone; ``interrupted_at`` is its last sign
    of life (heartbeat, else last update)."""

    id: UUID
    kind: str
    status: str
    parameters: dict[str, Any]
    result: dict[str, Any] | None
    organization_id: UUID | None
    previous_runner: str | None
    interrupted_at: datetime


_CLAIM_ORPHANS = """
WITH orphans AS (
    SELECT id, runner AS previous_runner,
           COALESCE(heartbeat_at, updated_at) AS interrupted_at
    FROM jobs
    WHERE status IN ('queued', 'running')
      AND (runner IS NULL
           OR (runner_node = %(node)s AND runner <> %(runner)s)
           OR heartbeat_at < now() - %(stale)s * interval '1 second')
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs j SET runner_node = %(node)s, runner = %(runner)s, heartbeat_at = now()
FROM orphans o WHERE j.id = o.id
RETURNING j.id, j.kind, j.status, j.parameters, j.result, j.organization_id,
          o.previous_runner, o.interrupted_at
"""
_FAIL_ORPHAN = """
UPDATE jobs SET status = 'failed', error = %s, finished_at = now(),
       result = COALESCE(result, '{}'::jsonb) || %s
WHERE id = %s AND runner = %s AND status IN ('queued', 'running')
"""

OrphanHandler = Callable[[Orphan], None]


def interrupted(orphan: Orphan, advice: str) -> str:
    """The ``error`` of a job that could not be resumed: when, and what to do."""
    when = orphan.interrupted_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    return f"Interrupted by a restart of Atrium at {when}; {advice}"


def fail_orphan(connect: Callable[[], Any], runner: Runner, orphan: Orphan,
                error: str) -> None:
    """Mark a claimed orphan ``failed``, its result saying it was interrupted."""
    with connect() as conn:
        conn.execute(_FAIL_ORPHAN, (error[:2000], Jsonb({"interrupted": True}), orphan.id,
                                    runner.id))
    log.warning("job.recovered id=%s kind=%s outcome=failed previous_runner=%s",
                orphan.id, orphan.kind, orphan.previous_runner)


def recover_orphans(connect: Callable[[], Any], runner: Runner,
                    handlers: Mapping[str, OrphanHandler], *,
                    advice: Mapping[str, str] | None = None,
                    stale_seconds: float = STALE_SECONDS) -> list[Orphan]:
    """Claim every orphaned job (see the module's docstring) and settle it.

    ``handlers`` resume a kind (they own the job from then on); any other kind is
    failed with ``advice[kind]`` (what the user should do), else "start it again".
    A handler that raises fails its job with the error. Returns the orphans.
    """
    with connect() as conn, conn.transaction():
        rows = conn.execute(_CLAIM_ORPHANS, {"node": runner.node, "runner": runner.id,
                                             "stale": stale_seconds}).fetchall()
    orphans = [Orphan(*row) for row in rows]
    if orphans:
        runner.keep_alive(connect)
    for orphan in orphans:
        handler = handlers.get(orphan.kind)
        if handler is None:
            reason = (advice or {}).get(orphan.kind, "start it again.")
            fail_orphan(connect, runner, orphan, interrupted(orphan, reason))
            continue
        try:
            handler(orphan)
            log.warning("job.recovered id=%s kind=%s outcome=resumed previous_runner=%s",
                        orphan.id, orphan.kind, orphan.previous_runner)
        except Exception as exc:  # noqa: BLE001 - one bad job must not stop start-up
            log.exception("job.recovery_failed id=%s kind=%s", orphan.id, orphan.kind)
            fail_orphan(connect, runner, orphan, interrupted(
                orphan, f"resuming it failed ({type(exc).__name__}: {exc}); start it again."))
    return orphans


# What a user should do about a platform job that cannot be resumed.
INTERRUPTED_ADVICE = {
    "backfill": "nothing is lost: the mirror replays Orthanc's changes from its cursor at "
                "every start, a backfill still needed starts again by itself, and "
                "`atrium verify` lists any difference left.",
    "reconcile": "run `atrium reconcile` again to repair the differences that remain.",
}
