"""The slide viewer end to end: a generated pyramid uploaded to the real Orthanc,
annotated through the API, opened in headless Chromium at
``/api/slides/{id}/view#token=…`` — and the screenshot shows the slide's known
pattern where the viewer's transform puts the image, and the annotations' outlines
on it. The page's own behaviour in detail is ``test_slide_viewer_page.py``'s."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from selenium import webdriver

from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_slides import upload
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
from tests.support.slidegen import write_pyramid_tiff

pytestmark = [pytest.mark.integration, needs_chromium]

WIDTH, HEIGHT, TILE, MPP = 2600, 1800, 256, 0.5
POLYGON: dict[str, Any] = {
    "type": "polygon",
    "points": [{"x": 700, "y": 250}, {"x": 1900, "y": 400}, {"x": 1300, "y": 1100}]}
RECTANGLE_UM: dict[str, Any] = {  # 300..900 × 1300..1600 in pixels
    "type": "rectangle", "x": 150, "y": 650, "width": 300, "height": 150,
    "units": "micrometer"}


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    with headless_chromium() as driver:
        yield driver


@pytest.fixture(scope="module")
def organization() -> str:
    return f"Viewer {uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def slide(atrium: AtriumUnderTest, organization: str) -> dict[str, Any]:
    """A JPEG pyramid of the known pattern at 0.5 µm/px, with a polygon in pixels and
    a rectangle in micrometres on it."""
    blob = io.BytesIO()
    write_pyramid_tiff(blob, WIDTH, HEIGHT, tile=TILE, mpp=MPP, associated=())
    answer = upload(atrium, blob.getvalue(), org=organization, filename="viewer.tiff")
    assert answer.status_code == 201, answer.text
    made = answer.json()
    headers = atrium.auth("clinician", organization)
    for shape in (POLYGON, RECTANGLE_UM):
        created = requests.post(f"{atrium.url}/api/annotations", headers=headers, timeout=30,
                                json={"annotation_type": "wsi", "target_type": "slide",
                                      "target_id": made["id"], "label": shape["type"],
                                      "coordinates": shape})
        assert created.status_code == 201, created.text
    return dict(made)


def test_the_viewer_shows_the_uploaded_slide_and_its_annotations(
        atrium: AtriumUnderTest, browser: webdriver.Chrome, slide: dict[str, Any],
        organization: str) -> None:
    view = f"{atrium.url}/api/slides/{slide['id']}/view"
    open_page(browser, f"{view}#token={atrium.token('clinician', organization)}")
    wait_ready(browser, timeout=60)

    assert browser.current_url == view  # the token is out of the address bar
    assert browser.execute_script("return window.atriumViewerWarning") is None
    assert not policy_violations(browser)
    assert len(browser.execute_script("return window.atriumViewer.drawnAnnotationIds()")) == 2

    placement = Placement.read(browser, WIDTH, HEIGHT)
    show_annotations(browser, False)
    bare = screenshot(browser)
    show_annotations(browser, True)
    drawn = screenshot(browser)

    assert pattern_mismatches(bare, placement, (WIDTH, HEIGHT), tolerance=18) == []
    edge = blue_edge(bare, placement.to_window(440, 700), placement.to_window(584, 700))
    assert edge[0] == pytest.approx(placement.to_window(512, 700)[0], abs=SEAM)
    edge = blue_edge(bare, placement.to_window(2200, 1440), placement.to_window(2200, 1584))
    assert edge[1] == pytest.approx(placement.to_window(2200, 1536)[1], abs=SEAM)

    for shape in (POLYGON, RECTANGLE_UM):
        for point in outline_points(shape, (MPP, MPP)):
            assert colour_near(drawn, placement.to_window(*point), OUTLINE), \
                f"no outline of the {shape['type']} at image {point}"
        inside = placement.to_window(*centre(shape, (MPP, MPP)))
        assert not colour_near(drawn, inside, OUTLINE, radius=4)


@pytest.mark.parametrize(("who", "title"), [
    ("another organization", "Slide not found"),
    ("a forged token", "Your sign-in is missing or has expired"),
])
def test_the_viewer_explains_a_refusal_of_the_real_api(
        atrium: AtriumUnderTest, browser: webdriver.Chrome, slide: dict[str, Any], who: str,
        title: str) -> None:
    token = (atrium.token("clinician", f"Elsewhere {uuid.uuid4().hex[:8]}")
             if who == "another organization" else "eyJhbGciOiJub25lIn0.e30.")
    open_page(browser, f"{atrium.url}/api/slides/{slide['id']}/view#token={token}")
    error = wait_settled(browser, timeout=60)

    assert error is not None and error["title"] == title
    assert browser.find_element("id", "message").is_displayed()


def test_the_page_and_its_assets_are_public_and_carry_their_policy(
        atrium: AtriumUnderTest) -> None:
    page = requests.get(f"{atrium.url}/api/slides/{uuid.uuid4()}/view", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    library = requests.get(f"{atrium.url}/api/viewer/openseadragon.min.js", timeout=10)
    assert library.status_code == 200
    assert library.headers["Content-Type"].startswith("text/javascript")
    assert b"openseadragon 6.1.1" in library.content[:100]
