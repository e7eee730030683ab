"""Headless Chromium for the slide viewer's tests, and what they check in its
screenshots.

The browser is Debian's ``chromium`` driven through its ``chromedriver``
(``scripts/bootstrap.sh --test`` installs both); nothing is downloaded.
:data:`needs_chromium` skips a test only where they are absent.

Screenshots are taken at a device pixel ratio of 1, so a screenshot pixel is a CSS
pixel of the window. :class:`Placement` maps image pixels to those, read from the
page's own transform (``window.atriumViewer.imageToClient``).
"""

from __future__ import annotations

import io
import math
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from tests.support.slidegen import CHECKER, pattern

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WINDOW = (1200, 900)
OUTLINE = (0, 255, 255)  # the viewer's default outline colour (slide-viewer.css)
SEAM = 1.5
"""Window pixels an edge may be off where it falls on a seam between tiles: at rest,
OpenSeadragon draws each tile at whole-pixel positions and sizes."""

needs_chromium = pytest.mark.skipif(
    not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()),
    reason="Debian's chromium and chromium-driver are not installed "
           "(scripts/bootstrap.sh --test installs them)")


@contextmanager
def headless_chromium(window: tuple[int, int] = WINDOW, *, webgl: bool = False
                      ) -> Iterator[webdriver.Chrome]:
    """Debian's Chromium, headless; ``webgl``: drawn by SwiftShader on the CPU (a
    viewer's WebGL canvases need it here)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    gl = ("--use-gl=swiftshader", "--enable-unsafe-swiftshader") if webgl else ()
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     f"--window-size={window[0]},{window[1]}",
                     "--force-device-scale-factor=1", "--hide-scrollbars",
                     "--no-first-run", "--disable-extensions", *gl):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@contextmanager
def ohif_chromium() -> Iterator[webdriver.Chrome]:
    """Headless Chromium for OHIF, whose viewports need WebGL (drawn by SwiftShader)."""
    with headless_chromium((1400, 900), webgl=True) as driver:
        yield driver


def open_page(driver: webdriver.Chrome, url: str) -> None:
    """Load ``url`` afresh (from a blank page: the same page with only another
    fragment would not load again), forgetting what earlier pages logged."""
    driver.get("about:blank")
    driver.get_log("browser")
    driver.get(url)


def wait_settled(driver: webdriver.Chrome, timeout: float = 30) -> dict[str, Any] | None:
    """Poll until the page is ready or has given up; its error (None when ready).

    Raises
    ------
    TimeoutError
        Neither happened within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = driver.execute_script(
            "return {ready: window.atriumViewerReady === true, "
            "error: window.atriumViewerError || null}")
        if state and state["error"] is not None:
            return dict(state["error"])
        if state and state["ready"]:
            return None
        time.sleep(0.1)
    status = driver.execute_script(
        "const s = document.getElementById('status'); return s && s.textContent")
    raise TimeoutError(f"the viewer was not ready after {timeout:.0f}s (status: {status!r})")


def wait_ready(driver: webdriver.Chrome, timeout: float = 30) -> None:
    error = wait_settled(driver, timeout)
    assert error is None, f"the viewer failed: {error}"


def screenshot(driver: webdriver.Chrome) -> np.ndarray:
    """The window as a (height, width, 3) uint8 array."""
    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    return np.asarray(image)


def show_annotations(driver: webdriver.Chrome, shown: bool) -> None:
    driver.execute_script("document.querySelector('svg.annotations').style.visibility = "
                          "arguments[0] ? 'visible' : 'hidden';", shown)
    # Two frames: the change is on screen before the next screenshot.
    driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "requestAnimationFrame(() => requestAnimationFrame(() => done(true)));")


def policy_violations(driver: webdriver.Chrome) -> list[str]:
    """Console messages of Content-Security-Policy refusals since the last call."""
    return [entry["message"] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


@dataclass(frozen=True)
class Placement:
    """Image pixels → window pixels, as the page draws them: an affine map."""

    origin: tuple[float, float]
    x_axis: tuple[float, float]  # window pixels per image pixel along x
    y_axis: tuple[float, float]

    @classmethod
    def read(cls, driver: webdriver.Chrome, width: int, height: int) -> Placement:
        o, r, d = driver.execute_script(
            "const v = window.atriumViewer;"
            "return [v.imageToClient(0, 0), v.imageToClient(arguments[0], 0), "
            "v.imageToClient(0, arguments[1])];", width, height)
        return cls((o["x"], o["y"]), ((r["x"] - o["x"]) / width, (r["y"] - o["y"]) / width),
                   ((d["x"] - o["x"]) / height, (d["y"] - o["y"]) / height))

    def to_window(self, x: float, y: float) -> tuple[float, float]:
        return (self.origin[0] + x * self.x_axis[0] + y * self.y_axis[0],
                self.origin[1] + x * self.x_axis[1] + y * self.y_axis[1])

    def to_image(self, wx: float, wy: float) -> tuple[float, float]:
        (a, c), (b, d) = self.x_axis, self.y_axis
        det = a * d - b * c
        dx, dy = wx - self.origin[0], wy - self.origin[1]
        return ((d * dx - b * dy) / det, (a * dy - c * dx) / det)

    @property
    def scale(self) -> float:
        return math.hypot(*self.x_axis)


def pattern_mismatches(shot: np.ndarray, placement: Placement, size: tuple[int, int],
                       steps: int = 24, tolerance: int = 14) -> list[str]:
    """Where the screenshot does not show tests.support.slidegen's pattern: a grid of
    sample points over the image, skipping those near a checkerboard edge (where
    resampling blends the squares)."""
    misses = []
    frame_h, frame_w = shot.shape[:2]
    margin = 4 / placement.scale  # image pixels of 4 window pixels
    for i in range(steps):
        for j in range(steps):
            x = (i + 0.5) * size[0] / steps
            y = (j + 0.5) * size[1] / steps
            near_edge = min(x % CHECKER, CHECKER - x % CHECKER,
                            y % CHECKER, CHECKER - y % CHECKER) < margin
            wx, wy = placement.to_window(x, y)
            if near_edge or not (0 <= wx < frame_w and 0 <= wy < frame_h):
                continue
            want = pattern(int(x), int(y), 1, 1)[0, 0].astype(int)
            got = shot[int(wy), int(wx)].astype(int)
            if np.abs(got - want).max() > tolerance:
                misses.append(f"image ({x:.0f}, {y:.0f}) at window ({wx:.0f}, {wy:.0f}): "
                              f"{got.tolist()} instead of {want.tolist()}")
    return misses


def blue_edge(shot: np.ndarray, start: tuple[float, float], end: tuple[float, float]
              ) -> tuple[float, float]:
    """Where, along the window segment ``start`` → ``end``, blue crosses from one
    checkerboard square's value to the other's (linear interpolation between the
    samples either side: a fraction of a pixel)."""
    count = int(max(abs(end[0] - start[0]), abs(end[1] - start[1]))) + 1
    xs = np.linspace(start[0], end[0], count)
    ys = np.linspace(start[1], end[1], count)
    line = shot[np.round(ys).astype(int), np.round(xs).astype(int), 2].astype(float)
    middle = (line[:3].mean() + line[-3:].mean()) / 2
    above = line > middle
    flip = int(np.flatnonzero(above != above[0])[0])
    before, after = line[flip - 1], line[flip]
    t = (flip - 1 + (middle - before) / (after - before)) / (count - 1)
    return (start[0] + t * (end[0] - start[0]), start[1] + t * (end[1] - start[1]))


def colour_near(shot: np.ndarray, point: tuple[float, float], colour: Sequence[int],
                radius: int = 3, tolerance: int = 70) -> bool:
    """Whether a pixel within ``radius`` of ``point`` (window pixels) is ``colour``."""
    x, y = round(point[0]), round(point[1])
    patch = shot[max(0, y - radius):y + radius + 1, max(0, x - radius):x + radius + 1]
    distance = np.abs(patch.astype(int) - np.asarray(colour, dtype=int)).max(axis=-1)
    return bool((distance <= tolerance).any())


def outline_points(coordinates: dict[str, Any], mpp: tuple[float, float] = (1.0, 1.0)
                   ) -> list[tuple[float, float]]:
    """Image pixels on the outline of a shape of atrium.annotations.geometry (in
    micrometres when ``units`` says so, converted with ``mpp``): vertices, the middle
    of every edge, eight points of an ellipse."""
    kind = coordinates["type"]
    if kind == "rectangle":
        x, y, w, h = (coordinates[k] for k in ("x", "y", "width", "height"))
        corners = [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]
        points = _with_midpoints(corners, closed=True)
    elif kind in ("polygon", "polyline"):
        corners = [(p["x"], p["y"]) for p in coordinates["points"]]
        points = _with_midpoints(corners, closed=kind == "polygon")
    elif kind == "point":
        points = [(coordinates["points"][0]["x"], coordinates["points"][0]["y"])]
    elif kind == "ellipse":
        cx, cy = coordinates["center"]["x"], coordinates["center"]["y"]
        rx, ry = coordinates["radius_x"], coordinates["radius_y"]
        theta = math.radians(coordinates.get("rotation", 0))
        points = []
        for k in range(8):
            t = k * math.pi / 4
            ex, ey = rx * math.cos(t), ry * math.sin(t)
            points.append((cx + ex * math.cos(theta) - ey * math.sin(theta),
                           cy + ex * math.sin(theta) + ey * math.cos(theta)))
    else:
        raise ValueError(f"no outline for {kind!r}")
    if coordinates.get("units") == "micrometer":
        return [(x / mpp[0], y / mpp[1]) for x, y in points]
    return points


def _with_midpoints(corners: list[tuple[float, float]], closed: bool
                    ) -> list[tuple[float, float]]:
    pairs = list(zip(corners, corners[1:] + corners[:1] if closed else corners[1:],
                     strict=False))
    return corners + [((a[0] + b[0]) / 2, (a[1] + b[1]) / 2) for a, b in pairs]


def centre(coordinates: dict[str, Any], mpp: tuple[float, float] = (1.0, 1.0)
           ) -> tuple[float, float]:
    """The middle of a shape's outline points (inside a convex shape), in image pixels."""
    points = outline_points(coordinates, mpp)
    return (sum(p[0] for p in points) / len(points), sum(p[1] for p in points) / len(points))
