"""``GET /api/slides/{id}/view``: the slide viewer page, and ``GET /api/viewer/…``: its
scripts, its style sheet and OpenSeadragon (vendored, see
``static/openseadragon/README.md``).

Both are public: the page holds no data. Its script takes a token (from the
address's ``#token=…`` fragment, or by OpenID Connect login with PKCE against the
configured issuer) and reads the slide, its Deep Zoom tiles and its annotations
through the token-guarded routes, so the scope, the roles and the audit are theirs.

The files are read once, when the routes are built: a missing one stops start-up
rather than failing the first viewer. The page names each asset with its content
hash (``?v=…``), so an asset is cached for good and a new release is fetched at
once; the page itself is revalidated (``ETag``) on every load. Its
Content-Security-Policy allows scripts and styles from this server only, and
connections to this server and the OIDC issuer: text that finds its way into the
page cannot run code that would read the token, nor send it elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from atrium.api.http import PUBLIC, Handler, Reply, Request, Response, Route
from atrium.api.schema import obj, string

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["ASSETS", "STATIC_DIR", "ViewerFiles", "routes", "viewer_routes"]

STATIC_DIR = Path(__file__).with_name("static")
PAGE = "viewer/slide-viewer.html"
_JS = "text/javascript; charset=utf-8"
ASSETS: Mapping[str, tuple[str, str]] = {
    # name served under /api/viewer/ → (file under STATIC_DIR, Content-Type)
    "sign-in.js": ("viewer/sign-in.js", _JS),
    "slide-viewer.js": ("viewer/slide-viewer.js", _JS),
    "slide-viewer.css": ("viewer/slide-viewer.css", "text/css; charset=utf-8"),
    "openseadragon.min.js": ("openseadragon/openseadragon.min.js", _JS),
    "openseadragon-license.txt": ("openseadragon/LICENSE.txt", "text/plain; charset=utf-8"),
}
"""Each is a route of its own: any other name under /api/viewer/ is the router's 404."""

# OpenSeadragon adds this <style> to the page when it starts (openseadragon.js,
# "Injecting mobile-only CSS"); the policy allows exactly this text by its hash.
# After an update of OpenSeadragon, the browser test reports a policy violation
# if the text changed: copy the new text here.
_OPENSEADRAGON_STYLE = ("@media (hover: none) {    .openseadragon-canvas:focus {        "
                        "outline: none !important;    }}")
_IMMUTABLE = "public, max-age=31536000, immutable"
_REVALIDATE = "no-cache"
_PLACEHOLDER = re.compile(r"\{\{(config|asset:[\w.-]+)\}\}")
_CALLBACK = string(max_length=4096)


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str  # '"<hash>"': also the ``v`` of the page's links

    @property
    def version(self) -> str:
        return self.etag.strip('"')


@dataclass(frozen=True)
class ViewerFiles:
    """The page, rendered for one configuration, and its assets.

    Parameters
    ----------
    page
        The HTML, with the configuration and the versioned asset links in it.
    assets
        Name served → file.
    security_policy
        The page's Content-Security-Policy.
    """

    page: StaticFile
    assets: Mapping[str, StaticFile]
    security_policy: str

    @classmethod
    def load(cls, issuer: str | None, client_id: str, directory: Path = STATIC_DIR
             ) -> ViewerFiles:
        """Read the files and render the page.

        ``issuer`` is the OIDC issuer URL the page signs in with (None: the local
        dev issuer, which has no login page — the page then needs ``#token=``);
        ``client_id`` the public client registered there for the viewer.

        Raises
        ------
        FileNotFoundError
            A file of the viewer is missing from the installed package.
        ValueError
            The page names an asset that is not served.
        """
        assets = {}
        for name, (relative, content_type) in ASSETS.items():
            path = directory / relative
            if not path.is_file():
                raise FileNotFoundError(f"The slide viewer's {relative} is missing from "
                                        f"{directory}; reinstall Atrium (setup.cfg ships it "
                                        "as package data).")
            body = path.read_bytes()
            assets[name] = StaticFile(body, content_type, _etag(body))
        config = {"issuer": issuer, "client_id": client_id}
        # "<" escaped: no value can close the <script> element that holds the JSON.
        config_json = json.dumps(config, separators=(",", ":")).replace("<", "\\u003c")

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            if key == "config":
                return config_json
            name = key.removeprefix("asset:")
            if name not in assets:
                raise ValueError(f"{PAGE} links the asset {name!r}, which is not among "
                                 f"{sorted(assets)}")
            # From /api/slides/{id}/view, ../../viewer/ is /api/viewer/ — relative, so
            # the page works behind a proxy that serves Atrium under a path prefix.
            return f"../../viewer/{name}?v={assets[name].version}"

        html = _PLACEHOLDER.sub(fill, (directory / PAGE).read_text("utf-8")).encode()
        connect = "'self'" + (f" {_origin(issuer)}" if issuer else "")
        policy = "; ".join([
            "default-src 'none'", "script-src 'self'",
            f"style-src 'self' {_csp_hash(_OPENSEADRAGON_STYLE)}",
            "img-src 'self' blob: data:", f"connect-src {connect}",
            "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
        ])
        return cls(StaticFile(html, "text/html; charset=utf-8", _etag(html)), assets, policy)


def _answer(request: Request, file: StaticFile, cache: str,
            extra: Mapping[str, str] | None = None) -> Response:
    headers = {"ETag": file.etag, "Cache-Control": cache, "X-Content-Type-Options": "nosniff",
               **(extra or {})}
    if request.headers.get("if-none-match") == file.etag:
        return Response(304, b"", file.content_type, headers)
    return Response(200, file.body, file.content_type, headers)


def viewer_routes(files: ViewerFiles) -> list[Route]:
    """The viewer's routes over ``files`` (a test serves them from its own server)."""

    def view(request: Request) -> Response:
        return _answer(request, files.page, _REVALIDATE, {
            "Content-Security-Policy": files.security_policy,
            "Referrer-Policy": "no-referrer"})

    def asset(file: StaticFile) -> Handler:
        def serve(request: Request) -> Response:
            current = request.args.get("v") == file.version
            return _answer(request, file, _IMMUTABLE if current else _REVALIDATE)
        return serve

    tags = ("slides",)
    version = obj({"v": string(max_length=64, pattern="^[0-9a-f]+$",
                               description="The version the page links: cached for good")})
    not_modified = {304: Reply("The client's copy is current (If-None-Match)")}
    return [
        Route("GET", "/api/slides/{id:uuid}/view", view, tags=tags, auth=PUBLIC,
              # What an OIDC provider adds when it answers in the query string.
              query=obj({name: _CALLBACK for name in (
                  "code", "state", "session_state", "iss", "error", "error_description",
                  "error_uri")}),
              summary="The slide viewer (an HTML page; it reads the slide with the "
                      "caller's token, from #token= or by OIDC login)",
              responses={200: Reply("The page", {"type": "string"}, "text/html"),
                         **not_modified}),
        *(Route("GET", f"/api/viewer/{name}", asset(file), tags=tags, auth=PUBLIC,
                query=version, summary=f"The slide viewer's {name}",
                operation_id="get_api_viewer_" + re.sub(r"\W", "_", name),
                responses={200: Reply("The file", {"type": "string"},
                                      file.content_type.split(";")[0]),
                           **not_modified})
          for name, file in files.assets.items()),
    ]


def routes(app: Atrium) -> list[Route]:
    settings = app.settings
    return viewer_routes(ViewerFiles.load(settings.oidc_issuer, settings.oidc_audience))
