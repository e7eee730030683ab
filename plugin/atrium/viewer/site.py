"""``/viewer/``: the installed OHIF build, its generated configuration, Atrium's
extension script.

Every file here is public: the build holds no data, and OHIF reads studies through
``/dicom-web/`` with the user's token. A request names a file by a path of plain
segments (letters, digits, ``.``, ``_``, ``-``; none starting with a dot): nothing
else is looked up, and the resolved file must lie inside the build, so neither
``..`` nor a symbolic link reaches outside it. A path without a file extension
that names no file is one of OHIF's own pages (``/viewer/viewer?StudyInstanceUIDs=``,
``/viewer/callback``): the answer is ``index.html``, whose router shows it.

``index.html`` is rendered once, when Atrium starts: its links point under
``/viewer/``, and so do the root paths its import function is given (the
microscopy viewer's); it loads Atrium's extension and the generated
``app-config.js``, and it drops OHIF's service-worker loader (which fetches Workbox
from a CDN). Files
whose names carry a content hash are cached for good; the others are revalidated.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from atrium.api.http import Response
from atrium.errors import NotFound
from atrium.viewer.config import EXTENSION_SCRIPT
from atrium.viewer.install import MOUNT, STAMP

log = logging.getLogger(__name__)

__all__ = ["EXTENSION_SCRIPT", "OhifSite", "resolve", "security_policy"]

_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}$")
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_TYPES: Mapping[str, str] = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
    ".json": "application/json", ".map": "application/json", ".wasm": "application/wasm",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".woff2": "font/woff2", ".woff": "font/woff", ".ttf": "font/ttf",
    ".xml": "application/xml", ".txt": "text/plain; charset=utf-8",
}
# What index.html of @ohif/app 3.x says, and what Atrium serves instead. Each must
# be found: a build that changed them would otherwise half-load from "/".
_SERVICE_WORKER = re.compile(r'<script[^>]*src="/init-service-worker\.js"[^>]*></script>')
_APP_CONFIG = re.compile(r'<script[^>]*src="/app-config\.js"[^>]*></script>')
_ROOT_LINK = re.compile(r'(\s(?:src|href))="/(?!/)')
_PUBLIC_URL = 'window.PUBLIC_URL="/"'
# OHIF imports some files at run time by a path from the site's root that no build
# step relocates (the microscopy viewer's "/dicom-microscopy-viewer/…"): the page's
# import function puts such paths under /viewer/.
_IMPORT = "function browserImportFunction(n){return import(n)}"
_IMPORT_UNDER_MOUNT = (
    "function browserImportFunction(n){return import(typeof n===\"string\"&&"
    f"/^\\/(?!\\/|{MOUNT[1:-1]}\\/)/.test(n)?\"{MOUNT[:-1]}\"+n:n)}}")
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def _content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return _TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def security_policy(html: str, connect: tuple[str, ...] = ()) -> str:
    """The Content-Security-Policy of OHIF's page: scripts from this server and the
    page's own inline scripts (by hash), connections to this server and
    ``connect`` (the OIDC issuer's origin) only — so text that finds its way into
    the page can neither run nor send a token elsewhere. OHIF needs inline styles,
    WebAssembly, and workers and images made from blobs."""
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(
        body.encode()).digest()).decode() + "'" for body in _INLINE_SCRIPT.findall(html))
    return "; ".join([
        "default-src 'self'", f"script-src 'self' 'wasm-unsafe-eval' {hashes}".strip(),
        "style-src 'self' 'unsafe-inline'", "img-src 'self' data: blob:",
        "font-src 'self' data:", "worker-src 'self' blob:",
        " ".join(["connect-src 'self' data: blob:", *connect]),
        "object-src 'none'", "base-uri 'self'", "form-action 'self'",
        "frame-ancestors 'self'",
    ])


def _etag(data: bytes) -> str:
    return '"' + hashlib.sha256(data).hexdigest()[:20] + '"'


def resolve(root: Path, path: str) -> Path | None:
    """The file ``path`` (relative, ``/``-separated) names inside ``root``, or None
    when it names nothing or something outside (never raises on hostile input)."""
    segments = path.split("/")
    if not path or len(segments) > 6 or not all(_SEGMENT.match(s) for s in segments):
        return None
    try:
        candidate = root.joinpath(*segments).resolve()
        if not candidate.is_relative_to(root) or not candidate.is_file():
            return None
    except (OSError, ValueError):
        return None
    return candidate


@dataclass(frozen=True)
class _Page:
    body: bytes
    content_type: str
    etag: str


class OhifSite:
    """The files of one installed build, rendered for one configuration.

    Parameters
    ----------
    root
        The installed build (``atrium.viewer.install``), or None when there is none:
        every request then answers 404 with the remedy.
    config_script
        ``app-config.js`` (:func:`atrium.viewer.config.app_config_script`).
    """

    def __init__(self, root: Path | None, config_script: str,
                 connect: tuple[str, ...] = ()) -> None:
        self._root = root.resolve() if root is not None else None
        extension = EXTENSION_SCRIPT.read_bytes()
        self._generated = {
            "app-config.js": _Page(config_script.encode(), _TYPES[".js"],
                                   _etag(config_script.encode())),
            "atrium-ohif.js": _Page(extension, _TYPES[".js"], _etag(extension)),
        }
        self._index: _Page | None = None
        self._policy = ""
        if self._root is not None:
            html = self.render_index((self._root / "index.html").read_text("utf-8"),
                                     self._generated["atrium-ohif.js"].etag.strip('"'))
            self._index = _Page(html.encode(), _TYPES[".html"], _etag(html.encode()))
            self._policy = security_policy(html, connect)

    @classmethod
    def load(cls, root: Path | None, config_script: str, connect: tuple[str, ...] = ()
             ) -> OhifSite:
        """The site of ``root``; an absent or unfinished install logs a warning
        (Atrium starts without its viewer rather than not at all)."""
        if root is not None and not (root / STAMP).is_file():
            log.warning("viewer.not_installed path=%s advice=run scripts/bootstrap.sh", root)
            root = None
        return cls(root, config_script, connect)

    @property
    def installed(self) -> bool:
        return self._root is not None

    @staticmethod
    def render_index(html: str, extension_version: str) -> str:
        """OHIF's ``index.html`` relocated under ``/viewer/``.

        Raises
        ------
        ValueError
            The page is not laid out as the pinned build's is.
        """
        if _PUBLIC_URL not in html or _IMPORT not in html or not _APP_CONFIG.search(html):
            raise ValueError("OHIF's index.html has no PUBLIC_URL, import function or "
                             "app-config.js script: not the build atrium.viewer.install pins")
        html = html.replace(_IMPORT, _IMPORT_UNDER_MOUNT)
        html = _SERVICE_WORKER.sub("", html)
        extension = f'<script src="/atrium-ohif.js?v={extension_version}"></script>'
        html = _APP_CONFIG.sub(lambda m: extension + m.group(0), html, count=1)
        html = html.replace(_PUBLIC_URL, f'window.PUBLIC_URL="{MOUNT}"')
        return _ROOT_LINK.sub(lambda m: f'{m.group(1)}="{MOUNT}', html)

    def _page(self, headers: Mapping[str, str]) -> Response:
        assert self._index is not None
        answer = _answer(headers, self._index, _REVALIDATE)
        return Response(answer.status, answer.body, answer.content_type, {
            **answer.headers, "Content-Security-Policy": self._policy,
            "Referrer-Policy": "no-referrer"})

    def handle(self, path: str, headers: Mapping[str, str]) -> Response:
        """The answer to ``GET /viewer/<path>`` (``path`` without the leading ``/viewer/``).

        Raises
        ------
        NotFound
            No such file, or no installed build.
        """
        if self._root is None or self._index is None:
            raise NotFound("The OHIF viewer is not installed on this server: run "
                           "scripts/bootstrap.sh (it installs @ohif/app from npm)")
        generated = self._generated.get(path)
        if generated is not None:
            return _answer(headers, generated, _REVALIDATE)
        if path in ("", "index.html"):
            return self._page(headers)
        file = resolve(self._root, path)
        if file is None:
            if "." in path.rsplit("/", 1)[-1]:
                raise NotFound("No such file in the viewer")
            return self._page(headers)
        stat = file.stat()
        etag = f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"'
        cache = _IMMUTABLE if _HASHED.search(file.name) else _REVALIDATE
        common = {"ETag": etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
        if headers.get("if-none-match") == etag:
            return Response(304, b"", _content_type(file.name), common)
        return Response(200, file.read_bytes(), _content_type(file.name), common)


def _answer(headers: Mapping[str, str], page: _Page, cache: str) -> Response:
    common = {"ETag": page.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff"}
    if headers.get("if-none-match") == page.etag:
        return Response(304, b"", page.content_type, common)
    return Response(200, page.body, page.content_type, common)
