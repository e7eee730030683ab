"""Orthanc's REST API behind one small interface.

Inside Orthanc the mirror reads through the plugin SDK (:class:`SdkOrthancApi`,
the ``orthanc`` module passed in, never imported here); the ``atrium`` command
reads the same routes over HTTP (:class:`HttpOrthancApi`). Both raise
:class:`OrthancError` carrying the HTTP status.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

import requests

__all__ = ["HttpOrthancApi", "OrthancApi", "OrthancError", "SdkOrthancApi", "iter_changes"]


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
    """Calls Orthanc over HTTP, for the command line and the tests."""

    def __init__(self, base_url: str, session: requests.Session | None = None,
                 timeout: float = 60) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.timeout = timeout

    def _request(self, method: str, path: str) -> requests.Response:
        response = self.session.request(method, self.base_url + path, timeout=self.timeout)
        if response.status_code >= 400:
            raise OrthancError(path, response.status_code, response.text[:200])
        return response

    def get_json(self, path: str) -> Any:
        return self._request("GET", path).json()

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path).content

    def delete(self, path: str) -> None:
        self._request("DELETE", path)


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
