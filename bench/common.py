"""What several benchmarks share: an Orthanc with Atrium on a private PostgreSQL
cluster, its resident memory, a resumable upload through ``/api/uploads``, and a
STOW-RS body."""

from __future__ import annotations

import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config  # noqa: E402
from atrium.migrations import apply_migrations  # noqa: E402
from tests.conftest import free_port  # noqa: E402


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def private_cluster(prefix: str) -> tuple[Path, LocalCluster]:
    """A new temporary directory (open for PostgreSQL's system user to enter) and a
    private PostgreSQL cluster started in its ``pg/``; the caller stops both."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    cluster = LocalCluster(root / "pg", port=free_port())
    cluster.init()
    cluster.start()
    return root, cluster


def start_atrium(root: Path, cluster: LocalCluster, name: str,
                 atrium: dict[str, Any] | None = None) -> OrthancProcess:
    """Orthanc with Atrium, its index in database ``<name>_index`` and Atrium's in
    ``<name>_atrium``, objects under ``root/orthanc/objects``; ``atrium``: more keys
    of the ``Atrium`` section."""
    cluster.ensure_database(f"{name}_index")
    cluster.ensure_database(f"{name}_atrium")
    database_url = cluster.url(f"{name}_atrium")
    apply_migrations(database_url)
    workdir = root / "orthanc"
    base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
    config = orthanc_config(
        base=base, data_dir=workdir, cluster=cluster, index_database=f"{name}_index",
        http_port=free_port(), dicom_port=free_port(), aet="ATRIUM",
        atrium={"DatabaseUrl": database_url, "MirrorPollSeconds": 0.5,
                "StorageUrl": f"file://{workdir / 'objects'}", **(atrium or {})},
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py", with_atrium=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    process = OrthancProcess(workdir, config, env)
    process.start()
    return process


def resident_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakMemory:
    """Samples a process's resident memory every 50 ms while in the ``with``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = resident_mib(pid)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            self.peak = max(self.peak, resident_mib(self.pid))

    @property
    def growth(self) -> float:
        return self.peak - self.baseline

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()


def upload(url: str, headers: dict[str, str], path: Path, chunk: int) -> tuple[str, float]:
    """Sends ``path`` as a resumable upload in ``chunk``-byte parts: its id and MB/s."""
    size = path.stat().st_size
    created = requests.post(f"{url}/api/uploads", headers=headers, timeout=60,
                            json={"filename": path.name, "size": size}).json()
    began = time.perf_counter()
    with path.open("rb") as source, requests.Session() as session:
        for start_at in range(0, size, chunk):
            data = source.read(chunk)
            answer = session.put(
                f"{url}/api/uploads/{created['id']}", data=data, timeout=600,
                headers={**headers, "Content-Type": "application/octet-stream",
                         "Content-Range": f"bytes {start_at}-{start_at + len(data) - 1}/{size}"})
            answer.raise_for_status()
    return created["id"], size / (time.perf_counter() - began) / 1e6


class KeepAliveClient:
    """GETs over one kept-alive HTTP/1.1 connection, as a browser's or a tile
    client's connection is used, at a few tens of microseconds of this process's CPU
    per request: the load generator shares the machine's two cores with the server,
    and ``requests`` spends more of them on a small answer than Orthanc does."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._head = "".join(f"{name}: {value}\r\n" for name, value in
                             {"Host": parts.netloc, **headers}.items())
        self._socket: socket.socket | None = None

    def _connect(self) -> Any:
        self._socket = socket.create_connection(self._address, timeout=60)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._socket.makefile("rb")

    def get(self, path: str) -> tuple[int, bytes]:
        """The status and body of ``GET path``; answers must carry Content-Length.
        A kept connection the server has closed meanwhile (its idle timeout) is
        replaced and the request sent again, as browsers do for a GET."""
        reused = self._socket is not None
        try:
            status_line = self._send(path)
        except OSError:
            status_line = b""
        if not status_line and reused:
            self.close()
            status_line = self._send(path)
        if not status_line:
            raise ConnectionError(f"GET {path}: the server closed the connection")
        length, close = None, False
        while (line := self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection":
                close = value.strip().lower() == b"close"
            elif name == b"transfer-encoding":
                raise ValueError(f"GET {path}: a chunked answer; this client reads lengths")
        body = self._reader.read(length) if length else b""
        if close:
            self.close()
        return int(status_line.split()[1]), body

    def _send(self, path: str) -> bytes:
        if self._socket is None:
            self._reader = self._connect()
        assert self._socket is not None
        self._socket.sendall(f"GET {path} HTTP/1.1\r\n{self._head}\r\n".encode())
        line: bytes = self._reader.readline()
        return line

    def close(self) -> None:
        if self._socket is not None:
            self._reader.close()
            self._socket.close()
            self._socket = None


def stow_body(blobs: Sequence[bytes]) -> tuple[bytes, str]:
    """A STOW-RS request body holding ``blobs`` and its ``Content-Type``."""
    boundary = os.urandom(12).hex()
    head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    body = b"".join(head + blob + b"\r\n" for blob in blobs) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


class MemorySamples:
    """A process's resident memory (MiB) every ``interval`` s, as (seconds since
    ``t0`` on the monotonic clock, MiB), until :meth:`stop`."""

    def __init__(self, pid: int, t0: float, interval: float = 1.0) -> None:
        self.pid, self.t0, self.interval = pid, t0, interval
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self.interval):
            self.samples.append((time.monotonic() - self.t0, resident_mib(self.pid)))

    def stop(self) -> None:
        self._done.set()
        self._thread.join()

    def median(self, start: float, end: float) -> float:
        """The median of the samples taken from ``start`` to ``end`` s (NaN if none)."""
        values = [mib for at, mib in self.samples if start <= at <= end]
        return statistics.median(values) if values else float("nan")

    def peak(self, start: float = 0.0) -> float:
        """The highest sample from ``start`` s on (NaN if none)."""
        return max((mib for at, mib in self.samples if at >= start), default=float("nan"))
