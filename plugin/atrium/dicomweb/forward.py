"""Calls to the DICOMweb plugin's private root over loopback HTTP.

Over HTTP, not through the SDK: an SDK call cannot carry the request's headers
(``Accept``, a STOW's multipart ``Content-Type``) and holds the GIL while Orthanc
works; over loopback the plugin answers from Orthanc's own threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import urllib3

from atrium.errors import ServiceUnavailable

__all__ = ["Forwarded", "PluginForwarder"]

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


class PluginForwarder:
    def __init__(self, orthanc_url: str, plugin_root: str, internal_headers: Mapping[str, str],
                 timeout: float = 300) -> None:
        self._base = orthanc_url.rstrip("/") + plugin_root.rstrip("/")
        self._internal = dict(internal_headers)
        self._http = urllib3.PoolManager(maxsize=16, block=False, retries=False,
                                         timeout=urllib3.Timeout(connect=5, read=timeout))

    def __call__(self, method: str, path: str, query: Mapping[str, str],
                 headers: Mapping[str, str], body: bytes = b"") -> Forwarded:
        """``path`` below the root, e.g. ``/studies/1.2.3/metadata``."""
        url = self._base + path + (f"?{urlencode(query, safe=_RAW, quote_via=quote)}"
                                   if query else "")
        passed = {name: headers[name] for name in _PASSED if name in headers}
        try:
            response = self._http.request(method, url, body=body or None,
                                          headers={**passed, **self._internal})
        except urllib3.exceptions.HTTPError as exc:
            raise ServiceUnavailable("Orthanc's DICOMweb service did not answer; try again."
                                     ) from exc
        return Forwarded(response.status, response.headers.get("Content-Type", ""),
                         bytes(response.data))
