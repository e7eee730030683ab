"""An S3-compatible server on loopback for the whole test session (moto's server).

A pytest plugin module: register it with ``pytest_plugins = ["tests.integration.s3server"]``
in ``tests/integration/conftest.py`` (or import ``s3_server`` into a test module).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from minio import Minio
from moto.server import ThreadedMotoServer


@dataclass(frozen=True)
class S3Server:
    """Where the server listens and the credentials it accepts (moto accepts any)."""

    endpoint: str  # host:port, plain HTTP
    access_key: str = "atrium-test"
    secret_key: str = "atrium-test-secret"
    secure: bool = False

    def client(self) -> Minio:
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
        )


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's server in a thread of this process, on a free loopback port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3Server(endpoint=f"{host}:{port}")
    deadline = time.monotonic() + 30
    while True:  # bounded poll until it answers S3 requests
        try:
            s3.client().list_buckets()
            break
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
            time.sleep(0.1)
    yield s3
    server.stop()
