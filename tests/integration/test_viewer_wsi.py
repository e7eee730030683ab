"""DICOM whole-slide images in OHIF's microscopy mode, in headless Chromium against
the real Orthanc with Atrium: a VL Whole Slide Microscopy study stored by STOW-RS
is listed with the mode's button, opens in it, and its slide is drawn — every
request of the microscopy viewer (series metadata, frames of TILED_FULL instances)
through Atrium's gateway with the user's token.

Screenshots go where tests/integration/test_viewer_ohif.py puts its own."""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageCms
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_slides_dicom import stow, wait_slide
from tests.integration.test_viewer_ohif import list_text, save, sign_in, wait_on_page
from tests.support.browser import needs_chromium
from tests.support.wsigen import WsiSpec, make_wsi_series

pytestmark = [pytest.mark.integration, needs_chromium]


def with_icc_profile(blob: bytes) -> bytes:
    """``blob`` with an sRGB ICC profile on its optical path, as scanners write one:
    the microscopy viewer reads it as bulk data."""
    dataset = pydicom.dcmread(io.BytesIO(blob))
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    dataset.OpticalPathSequence[0].ICCProfile = profile
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def slide(atrium: AtriumUnderTest) -> dict[str, Any]:
    """A three-level JPEG slide with an ICC profile, of an organization of its own,
    mirrored as a slide."""
    tag = uuid.uuid4().hex[:6].upper()
    organization = f"Pathology {tag}"
    spec = WsiSpec(width=1024, height=768, levels=3, patient_id=f"WSI-{tag}",
                   patient_name=f"SLIDE^EPSILON{tag}")
    stow(atrium, organization, [with_icc_profile(blob) for blob in make_wsi_series(spec)])
    wait_slide(atrium, spec.series_uid)
    return {"organization": organization, "spec": spec}


def slide_pixels(driver: webdriver.Chrome) -> np.ndarray | None:
    """The window's pixels over the microscopy viewer's largest canvas."""
    canvases = [c for c in driver.find_elements(By.CSS_SELECTOR, "canvas")
                if c.size["width"] > 100 and c.size["height"] > 100]
    if not canvases:
        return None
    canvas = max(canvases, key=lambda c: c.size["width"] * c.size["height"])
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
    x, y = int(canvas.location["x"]), int(canvas.location["y"])
    w, h = int(canvas.size["width"]), int(canvas.size["height"])
    return shot[y:y + h, x:x + w]


def complaints(driver: webdriver.Chrome) -> list[str]:
    """What the console reported since the last read of refused or failed requests
    and Content-Security-Policy refusals."""
    return [entry["message"][:300] for entry in driver.get_log("browser")
            if "Failed to load resource" in entry["message"]
            or "Content Security Policy" in entry["message"]]


def test_a_slide_opens_from_the_study_list_in_the_microscopy_mode_and_is_drawn(
        atrium: AtriumUnderTest, slide: dict[str, Any], browser: webdriver.Chrome,
        screenshots: Path) -> None:
    spec = slide["spec"]
    sign_in(browser, atrium, slide["organization"], "clinician", screenshots, "7-wsi")
    name = spec.patient_name.split("^")[1]
    row = wait_on_page(browser, screenshots, "7-wsi", lambda: browser.find_elements(
        By.XPATH, f"//div[text()='SLIDE, {name}']"), "the slide's study in the list")
    row[0].click()
    (mode,) = wait_on_page(browser, screenshots, "7-wsi", lambda: browser.find_elements(
        By.XPATH, "//button[normalize-space()='Microscopy']"), "the microscopy mode's button")
    save(browser, screenshots, "7-wsi-study-list")
    # The mode takes the study: QIDO-RS said its modalities include SM.
    assert mode.is_enabled() and "SM" in list_text(browser)
    mode.click()
    wait_on_page(browser, screenshots, "7-wsi", lambda: "/viewer/microscopy?" in
                 browser.current_url, "the microscopy mode")
    assert spec.study_uid in browser.current_url

    def both_blues(pixels: np.ndarray | None) -> bool:
        # The slide is a checkerboard of two blues (tests.support.slidegen.pattern):
        # both fill a good part of the viewer once its tiles are drawn.
        if pixels is None:
            return False
        blue = pixels[..., 2].astype(int)
        return min(float((abs(blue - value) <= 12).mean()) for value in (48, 208)) > 0.15

    wait_on_page(browser, screenshots, "7-wsi", lambda: both_blues(slide_pixels(browser)),
                 "the slide drawn", timeout=90)
    pixels = slide_pixels(browser)
    assert pixels is not None and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 16
    save(browser, screenshots, "7-wsi-slide")
    # Its tiles are the stored frames, and its colour profiles bulk data, read
    # through Atrium's gateway (WADO-RS).
    urls = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)")
    series = f"{atrium.url}/dicom-web/studies/{spec.study_uid}/series/{spec.series_uid}/"
    for kind in ("/frames/", "/bulk/"):
        read = [url for url in urls if kind in url]
        assert read and all(url.startswith(series + "instances/") for url in read), (kind, urls)
    assert complaints(browser) == []
