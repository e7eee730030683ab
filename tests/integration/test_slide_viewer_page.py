"""The slide viewer page (``/api/slides/{id}/view``) in headless Chromium, against a
stand-in of the API: a small HTTP server in the test that serves the viewer's real
routes (``atrium.api.slide_viewer``, through the real router), a Deep Zoom pyramid
of ``tests.support.slidegen``'s known pattern, the annotation query with its
``bbox`` (in pages of 3, so that the page must follow cursors) — and, for sign-in,
an OIDC provider with an authorization endpoint and a PKCE-checking token endpoint.

It checks what a user sees: the pattern where the page's transform says the image
is, every shape of ``atrium.annotations.geometry`` outlined where it belongs (in
pixels and in micrometres), queries that follow the view, and a sentence for each
way of being refused. ``test_slide_viewer.py`` runs the same page against the real
Orthanc.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
import secrets
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from selenium import webdriver

from atrium.annotations.geometry import bounding_box
from atrium.api.http import Request, Router
from atrium.api.slide_viewer import ViewerFiles, viewer_routes
from atrium.devenv import wait_until
from tests.support.browser import (
    OUTLINE,
    SEAM,
    Placement,
    blue_edge,
    centre,
    colour_near,
    headless_chromium,
    needs_chromium,
    open_page,
    outline_points,
    pattern_mismatches,
    policy_violations,
    screenshot,
    show_annotations,
    wait_ready,
    wait_settled,
)
from tests.support.slidegen import pattern

WIDTH, HEIGHT, TILE = 3000, 2000, 256
MPP = (0.5, 0.5)
MAGENTA = "#ff00ff"

SHAPES: dict[str, dict[str, Any]] = {
    "rectangle": {"type": "rectangle", "x": 600, "y": 300, "width": 800, "height": 500},
    "polygon": {"type": "polygon", "points": [{"x": 2000, "y": 300}, {"x": 2600, "y": 300},
                                              {"x": 2300, "y": 900}]},
    "polyline": {"type": "polyline", "points": [{"x": 300, "y": 1300}, {"x": 900, "y": 1300},
                                                {"x": 900, "y": 1800}]},
    "ellipse": {"type": "ellipse", "center": {"x": 2200, "y": 1450}, "radius_x": 300,
                "radius_y": 150, "rotation": 30},
    "point": {"type": "point", "points": [{"x": 1500, "y": 1050}]},
    # 1400..1700 × 1500..1700 in pixels at 0.5 µm/px
    "micrometres": {"type": "rectangle", "x": 700, "y": 750, "width": 150, "height": 100,
                    "units": "micrometer"},
}
COLOURED = "polygon"  # drawn in its properties' colour


# ------------------------------------------------------------------ the stand-in


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, str]
    authorization: str | None


@dataclass
class StandIn:
    """The API as the page sees it, for one slide."""

    files: ViewerFiles
    slide_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    forbidden_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    annotations: list[dict[str, Any]] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    tiles: dict[tuple[int, int, int], bytes] = field(default_factory=dict)
    failing: dict[str, int] = field(default_factory=dict)  # path pattern → status
    url: str = ""

    def __post_init__(self) -> None:
        self.router = Router(viewer_routes(self.files))
        self.max_level = math.ceil(math.log2(max(WIDTH, HEIGHT)))

    def view_url(self, slide_id: str | None = None) -> str:
        return f"{self.url}/api/slides/{slide_id or self.slide_id}/view"

    def annotate(self, coordinates: dict[str, Any], **properties: Any) -> str:
        annotation_id = str(uuid.uuid4())
        shape = {**coordinates, "bounding_box": bounding_box(coordinates)}
        self.annotations.append({"id": annotation_id, "version": 1, "target_type": "slide",
                                 "target_id": self.slide_id, "annotation_type": "wsi",
                                 "label": None, "coordinates": shape,
                                 "properties": properties})
        return annotation_id

    def queries(self) -> list[Seen]:
        return [s for s in self.seen if s.path == "/api/annotations"]

    def answer(self, method: str, target: str, headers: dict[str, str]
               ) -> tuple[int, bytes, str, dict[str, str]]:
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self.seen.append(Seen(method, parts.path, query, headers.get("authorization")))
        if parts.path.startswith("/api/viewer/") or parts.path.endswith("/view"):
            response = self.router.handle(Request(method, parts.path, query, headers))
            return response.status, response.body, response.content_type, dict(
                response.headers)
        for failing, status in self.failing.items():
            if re.search(failing, parts.path):
                return _problem(status, "Failing on purpose.")
        authorization = headers.get("authorization")
        if authorization == f"Bearer {self.forbidden_token}":
            return _problem(403, "The caller lacks the role read-phi or read-deidentified.")
        if authorization != f"Bearer {self.token}":
            return _problem(401, "A valid bearer token is required.")
        found = re.fullmatch(r"/api/slides/([^/]+)(?:/(dzi)|/dzi_files/(\d+)/(\d+)_(\d+)"
                             r"\.jpeg)?", parts.path)
        if parts.path == "/api/annotations":
            return self.search(query)
        if found is None or found.group(1) != self.slide_id:
            return _problem(404, f"No slide {parts.path.split('/')[3]}")
        if found.group(2):
            xml = (f'<?xml version="1.0" encoding="UTF-8"?><Image TileSize="{TILE}" '
                   'Overlap="0" Format="jpeg" xmlns="http://schemas.microsoft.com/deepzoom/'
                   f'2008"><Size Width="{WIDTH}" Height="{HEIGHT}"/></Image>')
            return 200, xml.encode(), "application/xml", {}
        if found.group(3):
            level, col, row = (int(found.group(k)) for k in (3, 4, 5))
            return 200, self.tile(level, col, row), "image/jpeg", {}
        return 200, json.dumps({
            "id": self.slide_id, "slide_id": "S-VIEWER-1", "width_pixels": WIDTH,
            "height_pixels": HEIGHT, "tile_size": TILE, "pyramid_levels": 4,
            "mpp_x": MPP[0], "mpp_y": MPP[1]}).encode(), "application/json", {}

    def tile(self, level: int, col: int, row: int) -> bytes:
        cached = self.tiles.get((level, col, row))
        if cached is not None:
            return cached
        factor = 2 ** (self.max_level - level)
        width, height = -(-WIDTH // factor), -(-HEIGHT // factor)
        x0, y0 = col * TILE, row * TILE
        pixels = pattern(x0, y0, min(TILE, width - x0), min(TILE, height - y0), factor)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, "JPEG", quality=92)
        self.tiles[level, col, row] = out.getvalue()
        return out.getvalue()

    def search(self, query: dict[str, str]) -> tuple[int, bytes, str, dict[str, str]]:
        x, y, w, h = (float(v) for v in query["bbox"].split(","))
        hits = []
        for item in self.annotations:
            box = item["coordinates"]["bounding_box"]
            if (item["target_id"] == query["target_id"] and box["x"] <= x + w
                    and x <= box["x"] + box["width"] and box["y"] <= y + h
                    and y <= box["y"] + box["height"]):
                hits.append(item)
        start = int(query.get("cursor", "0"))
        page = hits[start:start + min(3, int(query.get("limit", "50")))]
        following = start + len(page)
        body = {"items": page, "next_cursor": str(following) if following < len(hits) else None}
        return 200, json.dumps(body).encode(), "application/json", {}


def _problem(status: int, detail: str) -> tuple[int, bytes, str, dict[str, str]]:
    body = json.dumps({"type": "about:blank", "title": "Refused", "status": status,
                       "detail": detail}).encode()
    return status, body, "application/problem+json", {}


@dataclass
class Provider:
    """An OIDC provider for a user who is signed in already: its authorization
    endpoint answers at once, with a code (or with ``refuse``'s error)."""

    client_id: str
    token: str
    url: str = ""
    refuse: str | None = None
    codes: dict[str, dict[str, str]] = field(default_factory=dict)
    exchanged: list[dict[str, str]] = field(default_factory=list)

    def answer(self, method: str, target: str, body: bytes
               ) -> tuple[int, bytes, str, dict[str, str]]:
        parts = urlsplit(target)
        if parts.path == "/.well-known/openid-configuration":
            return _json({"issuer": self.url, "authorization_endpoint": f"{self.url}/auth",
                          "token_endpoint": f"{self.url}/token",
                          "response_modes_supported": ["query", "fragment"]})
        if parts.path == "/auth":
            asked = dict(parse_qsl(parts.query))
            if self.refuse:
                answer = {"error": self.refuse, "error_description": "The user said no.",
                          "state": asked["state"]}
            else:
                code = secrets.token_urlsafe(16)
                self.codes[code] = asked
                answer = {"code": code, "state": asked["state"]}
            separator = "#" if asked.get("response_mode") == "fragment" else "?"
            return 302, b"", "text/plain", {
                "Location": asked["redirect_uri"] + separator + urlencode(answer)}
        if parts.path == "/token" and method == "POST":
            form = dict(parse_qsl(body.decode()))
            self.exchanged.append(form)
            code = form.get("code", "")
            issued = self.codes.pop(code) if code in self.codes else None
            challenge = base64.urlsafe_b64encode(hashlib.sha256(
                form.get("code_verifier", "").encode()).digest()).rstrip(b"=").decode()
            if (issued is None or issued["code_challenge"] != challenge
                    or issued["code_challenge_method"] != "S256"
                    or form.get("redirect_uri") != issued["redirect_uri"]
                    or form.get("client_id") != self.client_id):
                return 400, json.dumps({"error": "invalid_grant"}).encode(), \
                    "application/json", {}
            return _json({"access_token": self.token, "token_type": "Bearer",
                          "expires_in": 300})
        return 404, b"", "text/plain", {}


def _json(value: Any) -> tuple[int, bytes, str, dict[str, str]]:
    return 200, json.dumps(value).encode(), "application/json", {}


Reply = tuple[int, bytes, str, dict[str, str]]
Answer = Callable[[str, str, dict[str, str], bytes], Reply]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    answer: Answer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, payload, content_type, extra = self.server.answer(method, self.path, headers,
                                                                  body)
        self.send_response(status)
        if status != 304:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        if status != 304:
            self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        self._handle("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._handle("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@contextmanager
def serve(answer: Answer) -> Iterator[str]:
    """``answer`` on a free port of 127.0.0.1, from a thread; its base URL."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.answer = answer
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def stand_in(issuer: str | None = None, client_id: str = "atrium") -> Iterator[StandIn]:
    api = StandIn(ViewerFiles.load(issuer, client_id))
    with serve(lambda method, target, headers, _body: api.answer(method, target, headers)
               ) as url:
        api.url = url
        yield api


@contextmanager
def provider(client_id: str, token: str, refuse: str | None = None) -> Iterator[Provider]:
    idp = Provider(client_id, token, refuse=refuse)

    def answer(method: str, target: str, _headers: dict[str, str], body: bytes) -> Reply:
        status, payload, content_type, extra = idp.answer(method, target, body)
        return status, payload, content_type, {**extra, "Access-Control-Allow-Origin": "*"}

    with serve(answer) as url:
        idp.url = url
        yield idp


# ---------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture
def api() -> Iterator[StandIn]:
    with stand_in() as running:
        yield running


def move(browser: webdriver.Chrome, script: str) -> None:
    """Run ``script`` (with ``viewer`` and ``await pause(ms)`` at hand), then wait two
    frames: the page has seen the change, and its ready flag is down, on return."""
    browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const viewer = window.atriumViewer.viewer;
        const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
        const frame = () => new Promise((resolve) => requestAnimationFrame(resolve));
        (async () => {""" + script + """
          await frame();
          await frame();
        })().then(() => done(true));""")


# ------------------------------------------------------------------------- tests


@needs_chromium
def test_the_page_shows_the_slide_and_outlines_every_shape_where_it_belongs(
        browser: webdriver.Chrome, api: StandIn) -> None:
    ids = {name: api.annotate(shape, **({"color": MAGENTA} if name == COLOURED else {}))
           for name, shape in SHAPES.items()}
    api.annotate({"type": "rectangle", "x": 10, "y": 10, "width": 5, "height": 5},
                 color="red; stroke: url(javascript:alert(1))")  # not a colour: the default

    open_page(browser, f"{api.view_url()}#token={api.token}")
    wait_ready(browser)

    # The token left the address bar, and went with every request for data.
    assert browser.execute_script("return location.href") == api.view_url()
    data = [s for s in api.seen if not s.path.startswith("/api/viewer/")
            and not s.path.endswith("/view")]
    tiles = [s for s in data if "/dzi_files/" in s.path]
    assert tiles and data
    assert {s.authorization for s in data} == {f"Bearer {api.token}"}, \
        [s for s in data if s.authorization is None]
    assert not policy_violations(browser)
    assert set(browser.execute_script("return window.atriumViewer.drawnAnnotationIds()")) \
        == {*ids.values(), api.annotations[-1]["id"]}

    placement = Placement.read(browser, WIDTH, HEIGHT)
    frame = browser.execute_script("const r = document.getElementById('viewer')"
                                   ".getBoundingClientRect(); return [r.width, r.height];")
    # Home fits the whole image in the viewer.
    assert placement.scale == pytest.approx(min(frame[0] / WIDTH, frame[1] / HEIGHT), rel=1e-3)

    show_annotations(browser, False)
    bare = screenshot(browser)
    show_annotations(browser, True)
    drawn = screenshot(browser)

    assert pattern_mismatches(bare, placement, (WIDTH, HEIGHT)) == []
    # The checkerboard's edges at x = 512 and y = 512 are where the transform says.
    edge = blue_edge(bare, placement.to_window(440, 256), placement.to_window(584, 256))
    assert edge[0] == pytest.approx(placement.to_window(512, 256)[0], abs=SEAM)
    edge = blue_edge(bare, placement.to_window(256, 440), placement.to_window(256, 584))
    assert edge[1] == pytest.approx(placement.to_window(256, 512)[1], abs=SEAM)

    for name, shape in SHAPES.items():
        colour = (255, 0, 255) if name == COLOURED else OUTLINE
        for point in outline_points(shape, MPP):
            where = placement.to_window(*point)
            assert colour_near(drawn, where, colour), f"{name}: no outline at image {point}"
        if name not in ("point", "polyline"):
            inside = placement.to_window(*centre(shape, MPP))
            assert not colour_near(drawn, inside, colour, radius=4), f"{name} is filled"
    for empty in ((1700, 300), (200, 200), (2800, 1900)):  # no shape near these
        x, y = (round(v) for v in placement.to_window(*empty))
        assert np.abs(drawn[y, x].astype(int) - bare[y, x].astype(int)).max() <= 6


@needs_chromium
def test_annotations_are_queried_for_the_view_as_it_moves(browser: webdriver.Chrome,
                                                          api: StandIn) -> None:
    near = api.annotate(SHAPES["rectangle"])
    far = api.annotate(SHAPES["ellipse"])
    microns = api.annotate(SHAPES["micrometres"])
    open_page(browser, f"{api.view_url()}#token={api.token}")
    wait_ready(browser)
    first = len(api.queries())
    # Both units are asked for the whole image, and every page of the answer is read.
    assert {q.query["bbox"] for q in api.queries()} == {"0,0,3000,2000", "0,0,1500,1000"}

    # Zoom in on the rectangle, in five quick steps: the page asks once they rest.
    move(browser, """
        const image = viewer.world.getItemAt(0);
        const target = image.imageToViewportRectangle(500, 200, 1000, 700);
        for (let k = 0; k < 5; k++) {
          await pause(40);
          viewer.viewport.fitBounds(target.times(1 + (4 - k) * 0.1));
        }""")
    wait_ready(browser)
    rounds = [q for q in api.queries()[first:] if "cursor" not in q.query]
    assert len(rounds) == 2, [q.query for q in rounds]  # pixels, micrometres: once
    x, y, w, h = (float(v) for v in rounds[0].query["bbox"].split(","))
    visible = browser.execute_script("""
        const v = window.atriumViewer.viewer;
        const r = v.world.getItemAt(0).viewportToImageRectangle(v.viewport.getBounds());
        return [r.x, r.y, r.width, r.height];""")
    assert x <= visible[0] and y <= visible[1]
    assert x + w >= visible[0] + visible[2] and y + h >= visible[1] + visible[3]
    assert w <= visible[2] * 1.5 + 2  # the view and a margin, not the whole image
    assert rounds[1].query["bbox"] == ",".join(
        f"{v * MPP[0]:g}" for v in (x, y, w, h))
    drawn = set(browser.execute_script("return window.atriumViewer.drawnAnnotationIds()"))
    assert near in drawn and far not in drawn and microns not in drawn

    # A small move inside the region already fetched asks nothing.
    before = len(api.queries())
    move(browser, "viewer.viewport.panBy(new OpenSeadragon.Point(0.005, 0));")
    wait_ready(browser)
    assert len(api.queries()) == before


@needs_chromium
def test_sign_in_with_pkce_brings_a_token_and_leaves_no_code_in_the_address(
        browser: webdriver.Chrome) -> None:
    token = secrets.token_urlsafe(24)
    with provider("atrium-viewer", token) as idp, stand_in(idp.url, "atrium-viewer") as api:
        api.token = token
        open_page(browser, api.view_url())
        wait_ready(browser)

        assert browser.current_url == api.view_url()
        assert len(idp.exchanged) == 1 and not idp.codes  # the code was used, once
        assert {s.authorization for s in api.seen if "/dzi" in s.path} == {f"Bearer {token}"}
        assert not policy_violations(browser)


@needs_chromium
def test_a_refused_sign_in_is_explained_with_a_way_to_try_again(
        browser: webdriver.Chrome) -> None:
    with provider("atrium", "unused", refuse="access_denied") as idp, stand_in(idp.url) as api:
        open_page(browser, api.view_url())
        error = wait_settled(browser)

        assert error is not None and error["title"] == "Sign-in failed"
        assert "The user said no." in browser.find_element("id", "message-detail").text
        assert browser.find_element("id", "sign-in").is_displayed()
        assert browser.current_url == api.view_url()


@needs_chromium
@pytest.mark.parametrize(("case", "status", "title"), [
    ("expired token", 401, "Your sign-in is missing or has expired"),
    ("no role", 403, "You may not view this slide"),
    ("another slide", 404, "Slide not found"),
    ("no token", None, "Sign-in needed"),
])
def test_a_refusal_is_explained_on_the_page(browser: webdriver.Chrome, api: StandIn, case: str,
                                             status: int | None, title: str) -> None:
    url = {"expired token": f"{api.view_url()}#token=not-{api.token}",
           "no role": f"{api.view_url()}#token={api.forbidden_token}",
           "another slide": f"{api.view_url(str(uuid.uuid4()))}#token={api.token}",
           "no token": api.view_url()}[case]
    open_page(browser, url)
    error = wait_settled(browser)

    assert error == {"title": title, "detail": error and error["detail"], "status": status}
    message = browser.find_element("id", "message")
    assert message.is_displayed() and title in message.text
    assert not browser.find_element("id", "sign-in").is_displayed()  # no issuer to go to


@needs_chromium
def test_a_token_that_expires_while_tiles_load_is_explained(browser: webdriver.Chrome,
                                                            api: StandIn) -> None:
    api.failing[r"/dzi_files/11/"] = 401
    open_page(browser, f"{api.view_url()}#token={api.token}")
    error = wait_settled(browser)

    assert error is not None and error["status"] == 401
    assert browser.find_element("id", "message").is_displayed()


@needs_chromium
def test_a_failed_annotation_query_leaves_the_image_and_says_so(browser: webdriver.Chrome,
                                                                 api: StandIn) -> None:
    api.annotate(SHAPES["rectangle"])
    api.failing[r"^/api/annotations$"] = 503
    open_page(browser, f"{api.view_url()}#token={api.token}")
    wait_ready(browser)

    warning = browser.execute_script("return window.atriumViewerWarning")
    assert warning.startswith("Annotations could not be loaded")
    assert browser.find_element("id", "status").text == warning
    assert browser.execute_script("return window.atriumViewer.drawnAnnotationIds()") == []

    # The next move asks again, and draws what it gets.
    del api.failing[r"^/api/annotations$"]
    move(browser, "viewer.viewport.panBy(new OpenSeadragon.Point(0.01, 0));")
    wait_ready(browser)
    assert len(browser.execute_script("return window.atriumViewer.drawnAnnotationIds()")) == 1
    assert browser.find_element("id", "status").text == "1 annotation"


@needs_chromium
def test_a_new_token_in_the_fragment_starts_the_page_over(browser: webdriver.Chrome,
                                                          api: StandIn) -> None:
    open_page(browser, f"{api.view_url()}#token=expired")
    assert wait_settled(browser) is not None

    browser.execute_script("window.before = true; location.hash = 'token=' + arguments[0]",
                           api.token)
    wait_until(lambda: browser.execute_script("return window.before === undefined"), 10,
               what="the page to load again")
    wait_ready(browser)
    assert browser.current_url == api.view_url()


# ------------------------------------------------------- the routes, without a browser


def test_the_page_is_revalidated_and_its_assets_cached_for_good(api: StandIn) -> None:
    page = requests.get(api.view_url(), timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.headers["Cache-Control"] == "no-cache"
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    again = requests.get(api.view_url(), headers={"If-None-Match": page.headers["ETag"]},
                         timeout=10)
    assert again.status_code == 304

    links = re.findall(r'(?:src|href)="\.\./\.\./viewer/([^"?]+)\?v=([0-9a-f]+)"', page.text)
    assert {name for name, _ in links} == {"sign-in.js", "slide-viewer.js", "slide-viewer.css",
                                           "openseadragon.min.js", "openseadragon-license.txt"}
    for name, version in links:
        asset = requests.get(f"{api.url}/api/viewer/{name}?v={version}", timeout=10)
        assert asset.status_code == 200
        assert asset.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        kind = {"js": "text/javascript", "css": "text/css", "txt": "text/plain"}
        assert asset.headers["Content-Type"].startswith(kind[name.rsplit(".", 1)[1]])
        unversioned = requests.get(f"{api.url}/api/viewer/{name}", timeout=10)
        assert unversioned.headers["Cache-Control"] == "no-cache"
    assert requests.get(f"{api.url}/api/viewer/..%2fslide_viewer.py", timeout=10
                        ).status_code == 404
    assert requests.get(f"{api.url}/api/viewer/openseadragon.min.js.map", timeout=10
                        ).status_code == 404


def test_the_issuer_and_client_reach_the_page_and_its_policy_and_nothing_else() -> None:
    files = ViewerFiles.load("https://login.example.org/realms/atrium", "atrium-viewer")
    page = files.page.body.decode()
    config = re.search(r'id="atrium-viewer-config" type="application/json">([^<]*)<', page)
    assert config is not None
    assert json.loads(config.group(1)) == {"issuer": "https://login.example.org/realms/atrium",
                                           "client_id": "atrium-viewer"}
    assert "connect-src 'self' https://login.example.org;" in files.security_policy
    # A value cannot close the <script> element that carries the configuration.
    hostile = ViewerFiles.load("https://x.example/</script><script>alert(1)//", "a")
    assert "</script><script>" not in hostile.page.body.decode()
