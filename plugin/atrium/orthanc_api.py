"""Orthanc's REST API behind one small interface.

:class:`SdkOrthancApi` calls through the plugin SDK (the ``orthanc`` module passed
in, never imported here); :class:`HttpOrthancApi` reads the same routes over HTTP,
which the mirror uses even inside Orthanc (see ``atrium.app``). Both raise
:class:`OrthancError` carrying the HTTP status.
"""

from __future__ import annotations

import contextlib
import http.client as http_client
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import urllib3

__all__ = ["HttpOrthancApi", "OrthancApi", "OrthancError", "SdkOrthancApi", "iter_changes",
           "send"]

log = logging.getLogger(__name__)


def send(http: urllib3.PoolManager, method: str, url: str,
         **options: Any) -> urllib3.BaseHTTPResponse:
    """``http.request(method, url, **options)``, sent once more (on another
    connection) if Orthanc closed the connection before any answer. Orthanc closes
    a keep-alive connection idle for about a second, and a request sent on one as it
    closes is lost before Orthanc reads it. Only that is repeated — the connection
    gone with no status line (``RemoteDisconnected``, a broken pipe) — never an
    answer that broke off after it began, whose request Orthanc may have carried out
    (an anonymization started twice makes two copies). Other failures raise at once."""
    try:
        return http.request(method, url, **options)
    except urllib3.exceptions.ProtocolError as exc:
        cause = exc.args[1] if len(exc.args) > 1 else None
        if not isinstance(cause, http_client.RemoteDisconnected | BrokenPipeError):
            raise
        log.warning("orthanc.request_dropped method=%s error=%s; sending it once more",
                    method, exc)
    return http.request(method, url, **options)


class OrthancError(RuntimeError):
    """A call to Orthanc's REST API failed; ``status`` is the HTTP status (404: gone)."""

    def __init__(self, path: str, status: int, detail: str = "") -> None:
        super().__init__(f"Orthanc {path}: HTTP {status} {detail}".strip())
        self.path = path
        self.status = status


class OrthancApi(Protocol):
    def get_json(self, path: str) -> Any: ...

    def get_bytes(self, path: str) -> bytes: ...

    def delete(self, path: str) -> None: ...


class SdkOrthancApi:
    """Calls through the plugin SDK. Never use from an Orthanc callback thread:
    the Orthanc Book warns that REST calls there can deadlock."""

    def __init__(self, orthanc_module: Any) -> None:
        self._orthanc = orthanc_module

    def _call(self, method: Any, path: str) -> Any:
        try:
            return method(path)
        except Exception as exc:  # the SDK raises orthanc.OrthancException
            code = getattr(exc, "args", [None, None])
            status = 404 if "Unknown resource" in str(exc) or "InexistentItem" in str(code) \
                else 500
            raise OrthancError(path, status, str(exc)) from exc

    def get_json(self, path: str) -> Any:
        return json.loads(self._call(self._orthanc.RestApiGet, path))

    def get_bytes(self, path: str) -> bytes:
        return bytes(self._call(self._orthanc.RestApiGet, path))

    def delete(self, path: str) -> None:
        self._call(self._orthanc.RestApiDelete, path)


class HttpOrthancApi:
    """Calls Orthanc over HTTP: the mirror inside Orthanc (loopback) and the
    ``atrium`` command. urllib3 directly, not requests: the mirror makes thousands
    of small calls, and requests' per-call work (proxy lookup in the environment,
    request preparation) costs more than Orthanc's answer."""

    def __init__(self, base_url: str, timeout: float = 60, max_connections: int = 8,
                 headers: dict[str, str] | None = None) -> None:
        """``headers`` go with every call: Atrium's internal credential."""
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers or {})
        self._http = urllib3.PoolManager(
            maxsize=max_connections, block=False, retries=False,
            timeout=urllib3.Timeout(connect=5, read=timeout))

    def _request(self, method: str, path: str, body: bytes | None = None,
                 content_type: str | None = None) -> urllib3.BaseHTTPResponse:
        headers = {**self._headers, **({"Content-Type": content_type} if content_type else {})}
        try:
            response = send(self._http, method, self.base_url + path, body=body,
                            headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            raise OrthancError(path, 503, f"Orthanc unreachable: {exc}") from exc
        if response.status >= 400:
            detail = response.data[:200].decode("utf-8", "replace")
            raise OrthancError(path, response.status, detail)
        return response

    def get_json(self, path: str) -> Any:
        return json.loads(self._request("GET", path).data)

    def get_bytes(self, path: str) -> bytes:
        return bytes(self._request("GET", path).data)

    @contextlib.contextmanager
    def stream(self, path: str) -> Iterator[tuple[Callable[[int], bytes], int | None]]:
        """``(read(n), size)`` over the answer's body, read as it arrives: a file of
        any size in bounded memory."""
        try:
            response = send(self._http, "GET", self.base_url + path, headers=self._headers,
                            preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise OrthancError(path, 503, f"Orthanc unreachable: {exc}") from exc
        try:
            if response.status >= 400:
                raise OrthancError(path, response.status,
                                   response.read(200).decode("utf-8", "replace"))
            length = response.headers.get("Content-Length")
            yield response.read, int(length) if length and length.isdigit() else None
        finally:
            response.drain_conn()
            response.release_conn()

    def delete(self, path: str) -> None:
        self._request("DELETE", path)

    def post(self, path: str, body: bytes, content_type: str = "application/dicom") -> bytes:
        return bytes(self._request("POST", path, body, content_type).data)

    def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON; the JSON answer."""
        answer = self._request("POST", path, json.dumps(body).encode(), "application/json")
        return json.loads(answer.data)

    def put_json(self, path: str, body: Any) -> Any:
        """PUT ``body`` as JSON; the JSON answer (None when Orthanc sends none)."""
        answer = self._request("PUT", path, json.dumps(body).encode(), "application/json")
        return json.loads(answer.data) if answer.data.strip() else None


def iter_changes(api: OrthancApi, since: int, limit: int) -> Iterator[tuple[list[dict[str, Any]],
                                                                               int, bool]]:
    """Pages of Orthanc's durable change log after ``since``: (changes, last, done)."""
    while True:
        page = api.get_json(f"/changes?since={since}&limit={limit}")
        changes = list(page.get("Changes", []))
        last = int(page.get("Last", since))
        done = bool(page.get("Done", True))
        yield changes, last, done
        if done or last <= since:
            return
        since = last
