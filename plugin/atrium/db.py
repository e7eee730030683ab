"""The connection pool. One per process, created by the application, never at import.

``open_pool`` does not wait for PostgreSQL: Atrium must start (and Orthanc keep
storing) while the database is down; borrowing a connection then fails after
``timeout`` seconds and the caller retries later.
"""

from __future__ import annotations

import logging
from typing import Any

from psycopg_pool import ConnectionPool

log = logging.getLogger(__name__)

__all__ = ["open_pool"]


def open_pool(database_url: str, *, max_size: int = 10, timeout: float = 5.0,
              name: str = "atrium") -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = ConnectionPool(
        database_url,
        min_size=1,
        max_size=max_size,
        timeout=timeout,
        name=name,
        open=False,
        reconnect_timeout=0,  # keep trying for ever: PostgreSQL may be down for a while
        kwargs={"application_name": name, "connect_timeout": 5},
        check=ConnectionPool.check_connection,
    )
    pool.open(wait=False)
    return pool
