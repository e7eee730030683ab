"""Fixtures shared by every test: a private PostgreSQL cluster for the session.

Integration fixtures (Orthanc with Atrium, the S3 server, the OIDC issuer) live in
``tests/integration/conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from atrium.devenv import LocalCluster

pytest_plugins = ["tests.integration.s3server", "tests.support.oidc_issuer"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def workspace() -> Iterator[Path]:
    """A scratch directory every service user can traverse (pytest's own tmp
    directories are private to the invoking user, and PostgreSQL runs as
    ``postgres`` when the suite runs as root)."""
    path = Path(tempfile.mkdtemp(prefix="atrium-test-"))
    path.chmod(0o755)
    yield path
    if not os.environ.get("ATRIUM_KEEP_TEST_DATA"):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster(workspace: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(workspace / "pg", port=free_port())
    cluster.init()
    cluster.start()
    yield cluster
    cluster.stop("immediate")


@pytest.fixture
def empty_database_url(pg_cluster: LocalCluster) -> Iterator[str]:
    """A new, empty database for one test; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    pg_cluster.ensure_database(name)
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)
