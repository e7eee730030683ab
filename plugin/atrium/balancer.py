"""HAProxy in front of the nodes of ``atrium run --nodes N`` (docs/DEPLOYMENT.md,
"Several nodes").

Debian's HAProxy on loopback owns the two ports a single node would have: HTTP on
``ORTHANC_HTTP_PORT``, round-robin over keep-alive connections, and DICOM on
``ORTHANC_DICOM_PORT``, passed through as TCP to the node with the fewest open
associations. A node is in rotation while its ``GET /api/health`` answers 200;
the DICOM side asks the same question on the node's HTTP port, so a node whose
database or storage is gone receives no association either.

The configuration is a pure function of the ports (:func:`haproxy_config`), written
into the data directory at each start; :class:`Balancer` runs HAProxy in the
foreground as a child of ``atrium run``, which stops it with everything else.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from atrium.devenv import terminate
from atrium.pgserver import StartupError

__all__ = ["NODE_HEADER", "Balancer", "Node", "haproxy_binary", "haproxy_config"]

# The response header naming the node that answered: which node served a request
# is otherwise invisible (every node is the same Orthanc, with the same Server header).
NODE_HEADER = "X-Atrium-Node"
HEALTH_PATH = "/api/health"
STICKY_COOKIE = "atrium_node"
# Debian installs it in /usr/sbin, which an unprivileged user's PATH may lack.
HAPROXY_CANDIDATES = [Path("/usr/sbin/haproxy")]
# A node leaves the rotation after two failed checks a second apart, and comes back
# after one good one; the retries below cover the requests sent in between.
_CHECK = "check inter 1s fall 2 rise 1"


@dataclass(frozen=True)
class Node:
    """One Orthanc + Atrium process as the balancer sees it."""

    name: str
    http_port: int
    dicom_port: int
    host: str = "127.0.0.1"


def haproxy_config(*, http_port: int, dicom_port: int, nodes: Sequence[Node],
                   bind: str = "127.0.0.1") -> str:
    """HAProxy's configuration: HTTP on ``http_port``, DICOM on ``dicom_port``, both
    spread over ``nodes``."""
    if not nodes:
        raise ValueError("the balancer needs at least one node")
    names = [node.name for node in nodes]
    if len(set(names)) != len(names) or not all(_is_name(name) for name in names):
        raise ValueError(f"node names must be distinct words: {names}")
    http_servers = "\n".join(
        f"    server {n.name} {n.host}:{n.http_port} {_CHECK} cookie {n.name}" for n in nodes)
    dicom_servers = "\n".join(
        f"    server {n.name} {n.host}:{n.dicom_port} {_CHECK} port {n.http_port}"
        for n in nodes)
    return f"""\
# Written by `atrium run --nodes {len(nodes)}` at each start: edits are replaced.
global
    maxconn 4096

defaults
    timeout connect 2s
    timeout check 5s
    # Long enough for a large upload or a slow C-STORE association.
    timeout client 10m
    timeout server 10m
    # A request whose node refused the connection goes to another node (a retry
    # moves to another server each time), instead of an error to the client.
    retries 3
    option redispatch 1

frontend atrium_http
    mode http
    bind {bind}:{http_port}
    option http-keep-alive
    timeout http-keep-alive 30s
    timeout http-request 30s
    default_backend atrium_http_nodes

backend atrium_http_nodes
    mode http
    balance roundrobin
    option httpchk
    http-check send meth GET uri {HEALTH_PATH}
    http-check expect status 200
    # Besides refused connections, a GET or HEAD whose node closed the connection
    # without a word (it died mid-request) is retried elsewhere. Other methods are
    # not: the node may have acted on them before it died.
    retry-on conn-failure empty-response
    http-request disable-l7-retry unless METH_GET
    http-response set-header {NODE_HEADER} %[srv_name]
    # A browser stays on one node: the dev sign-in keeps its codes and refresh tokens
    # in the memory of the node that issued them. Clients without a cookie jar
    # (scripts, the API's tests) are spread over every node.
    cookie {STICKY_COOKIE} insert indirect nocache httponly
{http_servers}

frontend atrium_dicom
    mode tcp
    bind {bind}:{dicom_port}
    default_backend atrium_dicom_nodes

backend atrium_dicom_nodes
    mode tcp
    balance leastconn
    # The DICOM listener of a node is up even when Atrium cannot store anything:
    # ask its HTTP health instead.
    option httpchk
    http-check send meth GET uri {HEALTH_PATH}
    http-check expect status 200
{dicom_servers}
"""


def _is_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name)


def haproxy_binary() -> str:
    """The path of ``haproxy``; a one-line :class:`StartupError` when it is missing."""
    found = shutil.which("haproxy") or next(
        (str(p) for p in HAPROXY_CANDIDATES if p.exists()), None)
    if not found:
        raise StartupError("HAProxy is not installed, and `atrium run --nodes N` puts it in "
                           "front of the nodes: run `make cluster` (which installs it) or "
                           "apt-get install haproxy")
    return found


class Balancer:
    """HAProxy in the foreground (``-db``), its configuration and log in ``workdir``."""

    def __init__(self, workdir: Path, config_text: str, http_port: int) -> None:
        self.workdir = Path(workdir)
        self.config_text = config_text
        self.http_port = http_port
        self.config_path = self.workdir / "haproxy.cfg"
        self.logfile = self.workdir / "haproxy.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        binary = haproxy_binary()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        self.config_path.chmod(0o600)
        checked = subprocess.run([binary, "-c", "-q", "-f", str(self.config_path)],
                                 capture_output=True, text=True, check=False)
        if checked.returncode != 0:
            said = [line for line in (checked.stderr + checked.stdout).splitlines()
                    if line.strip()]
            raise StartupError(f"HAProxy refused {self.config_path}: "
                               f"{said[0] if said else 'exit ' + str(checked.returncode)}")
        with self.logfile.open("ab") as log_handle:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(self.config_path)], stdout=log_handle,
                stderr=subprocess.STDOUT, cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise StartupError(f"HAProxy exited ({self.proc.returncode}): "
                                   f"{self._last_line()}; see {self.logfile}")
            if time.monotonic() > deadline:
                self.stop()
                raise StartupError(f"HAProxy did not listen on port {self.http_port} within "
                                   f"{timeout:.0f}s; see {self.logfile}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.http_port)) == 0

    def _last_line(self) -> str:
        try:
            lines = [line for line in self.logfile.read_text(errors="replace").splitlines()
                     if line.strip()]
        except OSError:
            return "no log"
        return lines[-1].strip() if lines else "no log"

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM: HAProxy closes its listeners and connections at once."""
        terminate(self.proc, timeout)
