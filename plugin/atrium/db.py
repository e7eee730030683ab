"""The connection pool. One per process, created by the application, never at import.

``open_pool`` does not wait for PostgreSQL: Atrium must start (and Orthanc keep
storing) while the database is down; borrowing a connection then fails after
``timeout`` seconds and the caller retries later.

A connection is checked (an empty query) when it leaves the pool only if it has
sat there for :data:`TRUSTED_IDLE_SECONDS` or more: one that came back a moment
ago worked a moment ago, and a round trip on every borrow — several a request —
is a measurable share of a cheap request. If PostgreSQL went away in that moment,
the borrower's query fails and the pool discards the connection when it returns.

The pool's connections encode JSON parameters with orjson (:func:`json_dumps`).
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_dumps
from psycopg_pool import ConnectionPool, PoolTimeout

log = logging.getLogger(__name__)

__all__ = ["TRUSTED_IDLE_SECONDS", "json_dumps", "open_pool", "unreachable"]

TRUSTED_IDLE_SECONDS = 2.0


class _RecentlyReturned:
    """Check and reset callbacks for the pool: remembers when each connection came
    back, and checks only those idle long enough to have gone stale."""

    def __init__(self) -> None:
        self._returned: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def reset(self, conn: Any) -> None:
        self._returned[conn] = time.monotonic()

    def check(self, conn: Any) -> None:
        returned = self._returned.get(conn)
        if returned is not None and time.monotonic() - returned < TRUSTED_IDLE_SECONDS:
            return
        ConnectionPool.check_connection(conn)


def json_dumps(value: Any) -> bytes:
    """A ``json``/``jsonb`` parameter's text: orjson's, about ten times faster than
    ``json.dumps`` on the mirror's batches of rows (its largest share of Python time
    during a burst of stores), else ``json.dumps``'s for what orjson refuses (keys
    that are not strings, integers past 64 bits), so that nothing json accepted is
    refused. Only encoding: orjson reads integers past 64 bits as floats, so JSON
    read back from PostgreSQL keeps going through ``json.loads``."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError is one
        return json.dumps(value).encode()


def _configure(conn: psycopg.Connection[Any]) -> None:
    set_json_dumps(json_dumps, conn)


def open_pool(database_url: str, *, max_size: int = 10, timeout: float = 5.0,
              name: str = "atrium") -> ConnectionPool[Any]:
    recent = _RecentlyReturned()
    pool: ConnectionPool[Any] = ConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        timeout=timeout,
        name=name,
        open=False,
        reconnect_timeout=0,  # keep trying for ever: PostgreSQL may be down for a while
        kwargs={"application_name": name, "connect_timeout": 5},
        check=recent.check,
        reset=recent.reset,
        configure=_configure,
    )
    pool.open(wait=False)
    return pool


def unreachable(error: BaseException) -> bool:
    """Whether ``error`` says PostgreSQL cannot serve right now — shut down or
    restarting (``AdminShutdown``), the connection lost, no connection free within
    the pool's timeout — rather than that the request or the code is wrong: the
    caller answers 503 and the client retries."""
    return isinstance(error, psycopg.OperationalError | PoolTimeout)
