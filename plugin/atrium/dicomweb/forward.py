"""Calls to the DICOMweb plugin's private root over loopback HTTP.

Over HTTP, not through the SDK: an SDK call cannot carry the request's headers
(``Accept``, a STOW's multipart ``Content-Type``) and holds the GIL while Orthanc
works; over loopback the plugin answers from Orthanc's own threads.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import urllib3

from atrium.errors import ServiceUnavailable
from atrium.orthanc_api import send

log = logging.getLogger(__name__)

__all__ = ["Forwarded", "PluginForwarder", "Upstream"]

CHUNK_BYTES = 256 * 1024
"""How much of a streamed answer is read from the plugin at a time."""

# Request headers worth passing on; Authorization never (the plugin trusts Atrium).
_PASSED = ("accept", "content-type", "host", "forwarded", "x-forwarded-proto",
           "x-forwarded-host")


# Characters sent as they are: Orthanc 1.10 hands query values to the plugin without
# decoding them, so '*' sent as %2A would be matched literally. Only what would
# break the URL (space, '&', '#', '%', '+', '=') is escaped.
_RAW = "*^,.-_~:/\\!$'()@;?[]|"


@dataclass(frozen=True)
class Forwarded:
    status: int
    content_type: str
    body: bytes


class Upstream:
    """The plugin's answer, its status and headers read, its body not yet.

    Read it with :meth:`chunks` or :meth:`read`, and :meth:`close` it in any case:
    a body left unread holds a connection."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self.status = response.status
        self.content_type = response.headers.get("Content-Type", "")

    def chunks(self, size: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The body as it arrives, at most ``size`` bytes at a time. A connection
        that breaks mid-answer raises :class:`ServiceUnavailable`."""
        try:
            yield from self._response.stream(size, decode_content=True)
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceUnavailable("Orthanc's DICOMweb service broke off its answer."
                                     ) from exc

    def read(self) -> Forwarded:
        """The whole answer, the body held in memory."""
        try:
            body = b"".join(self.chunks())
        except BaseException:
            self.close()
            raise
        self._response.release_conn()  # read to its end: the connection can be reused
        return Forwarded(self.status, self.content_type, body)

    def close(self) -> None:
        """Drops the connection: an answer left half read cannot be reused."""
        try:
            self._response.close()
            self._response.release_conn()
        except Exception:  # noqa: BLE001 - closing is best effort, never an answer
            log.warning("dicomweb.upstream_close_failed", exc_info=True)


class PluginForwarder:
    def __init__(self, orthanc_url: str, plugin_root: str, internal_headers: Mapping[str, str],
                 timeout: float = 300) -> None:
        self._base = orthanc_url.rstrip("/") + plugin_root.rstrip("/")
        self._internal = dict(internal_headers)
        self._http = urllib3.PoolManager(maxsize=16, block=False, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=timeout))

    def __call__(self, method: str, path: str, query: Mapping[str, str],
                 headers: Mapping[str, str], body: bytes = b"") -> Forwarded:
        """``path`` below the root, e.g. ``/studies/1.2.3/metadata``; the answer
        whole, in memory."""
        return self.open(method, path, query, headers, body).read()

    def open(self, method: str, path: str, query: Mapping[str, str],
             headers: Mapping[str, str], body: bytes = b"") -> Upstream:
        """The same call, answered once the plugin's status and headers are in; the
        body is left to be streamed (:class:`Upstream`)."""
        url = self._base + path + (f"?{urlencode(query, safe=_RAW, quote_via=quote)}"
                                   if query else "")
        passed = {name: headers[name] for name in _PASSED if name in headers}
        try:
            response = send(self._http, method, url, body=body or None,
                            headers={**passed, **self._internal}, preload_content=False)
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceUnavailable("Orthanc's DICOMweb service did not answer; try again."
                                     ) from exc
        return Upstream(response)
