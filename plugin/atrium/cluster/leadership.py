"""One mirror writer at a time: a PostgreSQL session advisory lock held on a
connection of its own.

Every node tries to take the lock; the one that holds it leads — it reads Orthanc's
shared change log and runs the work that must run once (importers, upkeep,
anchoring) — and the others stand by, trying again every ``retry_seconds``. The lock
lives exactly as long as the session holding it, so:

- a leader killed with ``kill -9`` loses it at once (the kernel closes the socket and
  the server ends the session);
- a leader cut off from the database loses it when the server notices the dead
  connection: the session asks for TCP keepalives of a few seconds, so a silent
  network partition ends it within about ten seconds rather than the kernel's two
  hours; the leader itself notices at its next check and stops leading.

Two writers for a moment (a leader that has not noticed yet, and its successor) are
harmless: every write of the mirror is an idempotent upsert and the cursor only moves
forward (docs/MIRROR.md). The lock makes the work efficient and single, not correct.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

log = logging.getLogger(__name__)

__all__ = ["MIRROR_LEADER_KEY", "Leadership", "leader_of"]

# 'atrium-m' in ASCII: distinct from the migrations', upkeep's and the audit's keys.
MIRROR_LEADER_KEY = 0x61747269756D2D6D
APPLICATION_NAME = "atrium-leader"

# The server ends a silent session after idle + interval × count seconds.
_KEEPALIVE_OPTIONS = ("-c tcp_keepalives_idle=3 -c tcp_keepalives_interval=2 "
                      "-c tcp_keepalives_count=3 -c statement_timeout=5000")

_LEADER = """
SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.database = (
      SELECT oid FROM pg_database WHERE datname = current_database())
  AND ((l.classid::bigint << 32) | l.objid::bigint) = %s
"""


class Leadership:
    """This node's claim on the lock.

    ``refresh()`` is called by the mirror's thread at each of its steps and does at
    most one round trip per ``check_seconds`` (leading) or ``retry_seconds``
    (standing by); ``leading`` is a plain read for any other thread.
    """

    def __init__(self, url: str, node: str, *, key: int = MIRROR_LEADER_KEY,
                 check_seconds: float = 1.0, retry_seconds: float = 1.0,
                 connect: Callable[..., Any] = psycopg.connect,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.node = node
        self._url = url
        self._key = key
        self._check_seconds = check_seconds
        self._retry_seconds = retry_seconds
        self._connect = connect
        self._clock = clock
        self._conn: Any = None
        self._leading = False
        self._next_round_trip = 0.0
        self._lock = threading.Lock()

    @property
    def leading(self) -> bool:
        return self._leading

    def refresh(self) -> bool:
        """Whether this node leads now: keep, check or try to take the lock."""
        with self._lock:
            now = self._clock()
            if now < self._next_round_trip:
                return self._leading
            self._next_round_trip = now + (self._check_seconds if self._leading
                                           else self._retry_seconds)
            try:
                if self._leading:
                    self._conn.execute("SELECT 1")
                else:
                    self._try_to_lead()
            except psycopg.Error as exc:
                self._lost(exc)
            return self._leading

    def release(self) -> None:
        """Give the lock up (at shutdown): a standby takes over without waiting."""
        with self._lock:
            if self._conn is not None:
                try:
                    # Closing alone frees the lock only once the server's backend has
                    # exited, a moment after close() returns: a standby asking at
                    # once could still find it held.
                    with contextlib.suppress(psycopg.Error):
                        self._conn.execute("SELECT pg_advisory_unlock_all()")
                    self._conn.close()
                finally:
                    self._conn = None
            if self._leading:
                log.info("mirror.leader_released node=%s", self.node)
            self._leading = False

    def _try_to_lead(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect(
                self._url, autocommit=True, connect_timeout=5,
                application_name=f"{APPLICATION_NAME}:{self.node}"[:63],
                options=_KEEPALIVE_OPTIONS)
        row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        if row and row[0]:
            self._leading = True
            log.info("mirror.leader node=%s", self.node)

    def _lost(self, exc: Exception) -> None:
        if self._leading:
            log.warning("mirror.leadership_lost node=%s error=%r", self.node, exc)
        self._leading = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it is already broken
                conn.close()


def leader_of(conn: Any, key: int = MIRROR_LEADER_KEY) -> str | None:
    """The node holding the lock, as it named itself; None when no node leads."""
    row = conn.execute(_LEADER, (key,)).fetchone()
    if row is None or not row[0]:
        return None
    name = str(row[0])
    prefix = f"{APPLICATION_NAME}:"
    return name[len(prefix):] if name.startswith(prefix) else name
