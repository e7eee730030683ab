"""Atrium's HTTP calls to Orthanc (the DICOMweb forwarder, the mirror's and the
command's ``HttpOrthancApi``) against a loopback server that drops a kept-alive
connection the way Orthanc does when its keep-alive timeout ends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from atrium.dicomweb.forward import PluginForwarder
from atrium.errors import ServiceUnavailable
from atrium.orthanc_api import HttpOrthancApi, OrthancError

_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom+json\r\n"
           b"Content-Length: 2\r\nConnection: keep-alive\r\n\r\n[]")


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        rest += conn.recv(4096)
    return head


class DroppingServer:
    """Answers the first request of each connection and keeps it open; a second
    request on the same connection is read and then dropped without an answer.
    ``drop_every_request``: drop even first requests (an upstream that is gone).
    ``break_off``: answer every request with a body cut short, then close (an answer
    that began: the request may have been carried out)."""

    def __init__(self, drop_every_request: bool = False, break_off: bool = False) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._drop_all = drop_every_request
        self._break_off = break_off
        self.requests: list[bytes] = []
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn:
            first = True
            while True:
                head = _read_request(conn)
                if not head:
                    return
                self.requests.append(head)
                if self._break_off:
                    conn.sendall(_ANSWER.replace(b"Content-Length: 2", b"Content-Length: 200"))
                    return
                if not first or self._drop_all:
                    return  # closed with the request read and unanswered
                conn.sendall(_ANSWER)
                first = False

    def close(self) -> None:
        self._listener.close()


@pytest.fixture
def server() -> Iterator[DroppingServer]:
    running = DroppingServer()
    yield running
    running.close()


def _forwarder(port: int) -> PluginForwarder:
    return PluginForwarder(f"http://127.0.0.1:{port}", "/dicom-web", {"x-internal": "s"},
                           timeout=5)


@pytest.mark.parametrize("method, body", [("GET", b""), ("POST", b"--boundary--")])
def test_a_request_dropped_on_a_kept_alive_connection_is_sent_again(
        server: DroppingServer, method: str, body: bytes) -> None:
    forwarder = _forwarder(server.port)
    assert forwarder("GET", "/studies", {}, {}).status == 200
    again = forwarder(method, "/studies", {"limit": "1"}, {}, body)
    assert (again.status, again.body) == (200, b"[]")
    # The dropped request, then the same one on a new connection.
    assert len(server.requests) == 3 and server.connections == 2
    assert server.requests[1] == server.requests[2]
    assert server.requests[2].startswith(method.encode() + b" /dicom-web/studies?limit=1 ")


def test_an_upstream_that_drops_every_request_is_a_503_after_one_more_try() -> None:
    server = DroppingServer(drop_every_request=True)
    try:
        with pytest.raises(ServiceUnavailable, match="did not answer"):
            _forwarder(server.port)("GET", "/studies", {}, {})
        assert len(server.requests) == 2
    finally:
        server.close()


def test_an_upstream_that_is_not_listening_is_a_503_at_once() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with pytest.raises(ServiceUnavailable, match="did not answer"):
        _forwarder(port)("GET", "/studies", {}, {})


def test_the_mirror_s_calls_are_sent_again_too(server: DroppingServer) -> None:
    api = HttpOrthancApi(f"http://127.0.0.1:{server.port}", timeout=5)
    assert api.get_json("/changes") == []
    assert api.get_json("/changes?since=1") == []
    assert len(server.requests) == 3 and server.connections == 2


def test_the_mirror_s_calls_fail_as_503_when_every_try_is_dropped() -> None:
    server = DroppingServer(drop_every_request=True)
    try:
        with pytest.raises(OrthancError) as raised:
            HttpOrthancApi(f"http://127.0.0.1:{server.port}", timeout=5).get_json("/system")
        assert raised.value.status == 503 and len(server.requests) == 2
    finally:
        server.close()


def test_an_answer_that_broke_off_is_not_sent_again() -> None:
    server = DroppingServer(break_off=True)
    try:
        with pytest.raises(OrthancError) as raised:
            HttpOrthancApi(f"http://127.0.0.1:{server.port}", timeout=5).post_json(
                "/studies/x/anonymize", {"Asynchronous": True})
        assert raised.value.status == 503 and len(server.requests) == 1
    finally:
        server.close()
