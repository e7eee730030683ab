"""The pool's connections encode JSON parameters with atrium.db.json_dumps."""

from __future__ import annotations

import uuid

import pytest
from psycopg.types.json import Jsonb

from atrium.db import open_pool

pytestmark = pytest.mark.integration


def test_pool_connections_encode_json_with_orjson(empty_database_url: str) -> None:
    pool = open_pool(empty_database_url, max_size=1)
    try:
        pool.wait(timeout=10)
        with pool.connection() as conn:
            # A UUID value is orjson's to encode (json.dumps refuses it) and an
            # integer past 64 bits json's: both reach PostgreSQL exactly.
            some = uuid.uuid4()
            row = conn.execute("SELECT %s::jsonb->>'id', %s::jsonb->>'n'",
                               (Jsonb({"id": some}), Jsonb({"n": 2**70}))).fetchone()
        assert row == (str(some), str(2**70))
    finally:
        pool.close()
