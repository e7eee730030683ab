"""OHIF at /viewer/ in headless Chromium, against the real Orthanc with Atrium:
signing in through the dev issuer's form, the study list holds exactly the
organization's studies, a study opens with its image drawn, and measurements drawn
in OHIF are kept in /api/annotations (written, drawn again, edited, deleted).

Screenshots of each step go to ``$ATRIUM_SCREENSHOTS`` (default: the checkout's
``build/viewer-screenshots/``, which git ignores) for a person to look at."""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By

from tests.integration.conftest import AtriumUnderTest
from tests.support.browser import needs_chromium, ohif_chromium
from tests.support.dicomgen import StudySpec, make_instance, make_study

pytestmark = [pytest.mark.integration, needs_chromium]

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 60) -> T:
    """Poll ``condition`` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}")


def save(driver: webdriver.Chrome, directory: Path, name: str) -> None:
    driver.save_screenshot(str(directory / f"{name}.png"))


def stow(atrium: AtriumUnderTest, org: str, spec: StudySpec,
         blobs: list[bytes] | None = None) -> None:
    client = DICOMwebClient(url=f"{atrium.url}/dicom-web",
                            headers=atrium.auth("clinician", org))
    client.store_instances([pydicom.dcmread(io.BytesIO(blob))
                            for blob in blobs or make_study(spec)])


@pytest.fixture(scope="module")
def studies(atrium: AtriumUnderTest) -> dict[str, Any]:
    """Two organizations: North holds an identified and a de-identified study,
    South one study."""
    tag = uuid.uuid4().hex[:6].upper()
    north, south = f"North {tag}", f"South {tag}"
    specs = {
        "north": StudySpec(patient_name=f"NORTH^ALPHA{tag}", patient_id=f"N-{tag}",
                           description="North CT", series=1, instances_per_series=2,
                           rows=128),
        "north_deid": StudySpec(patient_name=f"ANON^BETA{tag}", patient_id=f"D-{tag}",
                                description="North anonymised", deidentified=True,
                                series=1, instances_per_series=1, rows=64),
        "south": StudySpec(patient_name=f"SOUTH^GAMMA{tag}", patient_id=f"S-{tag}",
                           description="South CT", series=1, instances_per_series=1,
                           rows=64),
    }
    stow(atrium, north, specs["north"])
    stow(atrium, north, specs["north_deid"])
    stow(atrium, south, specs["south"])
    return {"north": north, "south": south, "specs": specs}


def sign_in(driver: webdriver.Chrome, atrium: AtriumUnderTest, organization: str,
            role: str, screenshots: Path, step: str, page: str = "") -> None:
    """Open ``/viewer/<page>``: OHIF sends the browser to the dev issuer's form,
    which is filled in and sent; OHIF then shows the page asked for."""
    driver.get(f"{atrium.url}/viewer/{page}")
    wait_for(lambda: driver.find_elements(By.ID, "username"), "the dev sign-in form")
    assert driver.current_url.startswith(f"{atrium.url}/api/dev-login/authorize?")
    for field, value in (("username", f"{role}-ohif"), ("organization", organization)):
        element = driver.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    driver.find_element(By.CSS_SELECTOR, f"#role option[value='{role}'], #role").click()
    driver.execute_script("document.getElementById('role').value = arguments[0]", role)
    save(driver, screenshots, f"{step}-sign-in-form")
    # OHIF's first-visit tour would lie over the viewport (same origin: one storage).
    driver.execute_script("localStorage.setItem('shownTours', '[\"basicViewerTour\"]')")
    driver.find_element(By.ID, "sign-in").click()
    wait_on_page(driver, screenshots, step, lambda: "/viewer" in driver.current_url and
                 "callback" not in driver.current_url, "the way back to OHIF")


def wait_on_page(driver: webdriver.Chrome, screenshots: Path, step: str,
                 condition: Callable[[], T], what: str, timeout: float = 60) -> T:
    """:func:`wait_for`; on a timeout, a screenshot and the console's last words."""
    try:
        return wait_for(condition, what, timeout)
    except TimeoutError:
        save(driver, screenshots, f"{step}-stuck")
        raise AssertionError(f"waited {timeout:.0f}s for {what}, at {driver.current_url}: "
                             f"{console(driver)}") from None


def console(driver: webdriver.Chrome) -> list[str]:
    """The console's last lines, and what Atrium's extension recorded."""
    extension = driver.execute_script(
        "const s = window.atriumOhif; return s ? JSON.stringify({errors: s.errors, "
        "pending: s.pending, saved: Object.keys(s.saved)}) : null")
    lines = [entry["message"][:300] for entry in driver.get_log("browser")][-15:]
    return [*lines, f"atrium-ohif: {extension}"]


def policy_violations(driver: webdriver.Chrome) -> list[str]:
    """Content-Security-Policy refusals the console reported since the last call."""
    return [entry["message"][:300] for entry in driver.get_log("browser")
            if "Content Security Policy" in entry["message"]]


def list_text(driver: webdriver.Chrome) -> str:
    return str(driver.execute_script("return document.body.innerText") or "")


def shown(spec: StudySpec) -> str:
    """What the study list shows of a patient's name (OHIF writes "FAMILY, GIVEN")."""
    return spec.patient_name.split("^")[1]


def test_a_clinician_signs_in_and_lists_exactly_the_organizations_studies(
        atrium: AtriumUnderTest, studies: dict[str, Any], browser: webdriver.Chrome,
        screenshots: Path) -> None:
    specs = studies["specs"]
    sign_in(browser, atrium, studies["north"], "clinician", screenshots, "1-clinician")
    wait_on_page(browser, screenshots, "1-clinician",
                 lambda: shown(specs["north"]) in list_text(browser),
                 "North's study in the study list")
    save(browser, screenshots, "1-clinician-study-list")
    text = list_text(browser)
    assert shown(specs["north_deid"]) in text and "North anonymised" in text
    assert shown(specs["south"]) not in text and "South CT" not in text
    assert policy_violations(browser) == []


def test_a_researcher_lists_only_de_identified_studies(
        atrium: AtriumUnderTest, studies: dict[str, Any], browser: webdriver.Chrome,
        screenshots: Path) -> None:
    specs = studies["specs"]
    sign_in(browser, atrium, studies["north"], "researcher", screenshots, "2-researcher")
    wait_on_page(browser, screenshots, "2-researcher",
                 lambda: shown(specs["north_deid"]) in list_text(browser),
                 "the de-identified study in the study list")
    save(browser, screenshots, "2-researcher-study-list")
    text = list_text(browser)
    assert shown(specs["north"]) not in text and shown(specs["south"]) not in text


def viewport_pixels(driver: webdriver.Chrome) -> np.ndarray | None:
    """The pixels of OHIF's largest canvas on screen, once it has a size."""
    canvases = driver.find_elements(By.CSS_SELECTOR, ".cornerstone-viewport-element canvas")
    canvases = [c for c in canvases if c.size["width"] > 100 and c.size["height"] > 100]
    if not canvases:
        return None
    canvas = max(canvases, key=lambda c: c.size["width"] * c.size["height"])
    shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("L"))
    x, y = int(canvas.location["x"]), int(canvas.location["y"])
    w, h = int(canvas.size["width"]), int(canvas.size["height"])
    return shot[y:y + h, x:x + w]


def test_opening_a_study_draws_its_image(
        atrium: AtriumUnderTest, studies: dict[str, Any], browser: webdriver.Chrome,
        screenshots: Path) -> None:
    spec = studies["specs"]["north"]
    sign_in(browser, atrium, studies["north"], "clinician", screenshots, "3-open",
            page=f"viewer?StudyInstanceUIDs={spec.study_uid}")

    def drawn() -> bool:
        pixels = viewport_pixels(browser)
        # The generated CT is a ramp: a drawn image has many grey levels.
        return pixels is not None and len(np.unique(pixels)) > 16

    wait_on_page(browser, screenshots, "3-open", drawn, "the image drawn in the viewport",
                 timeout=90)
    save(browser, screenshots, "3-study-open")
    pixels = viewport_pixels(browser)
    assert pixels is not None and float(pixels.std()) > 5
    assert policy_violations(browser) == []


LOAD_TIMINGS = """
const navigation = performance.getEntriesByType("navigation")[0];
return {page: navigation.name, redirects: navigation.redirectCount,
        requests: performance.getEntriesByType("resource").map(entry => entry.name)};
"""


def test_a_full_load_of_a_study_in_a_signed_in_tab_goes_not_to_the_issuer(
        atrium: AtriumUnderTest, studies: dict[str, Any], browser: webdriver.Chrome,
        screenshots: Path) -> None:
    """The tab keeps its user (sessionStorage): opening a study's address afresh shows
    the study with the token it has, without a round trip through the issuer."""
    spec = studies["specs"]["north"]
    sign_in(browser, atrium, studies["north"], "clinician", screenshots, "7-reload")
    wait_on_page(browser, screenshots, "7-reload",
                 lambda: shown(spec) in list_text(browser), "the study list")
    study = f"{atrium.url}/viewer/viewer?StudyInstanceUIDs={spec.study_uid}"
    browser.get("about:blank")
    browser.get(study)

    def drawn() -> bool:
        pixels = viewport_pixels(browser)
        return pixels is not None and len(np.unique(pixels)) > 16

    wait_on_page(browser, screenshots, "7-reload", drawn, "the image drawn", timeout=90)
    save(browser, screenshots, "7-reload-study-open")
    timings = browser.execute_script(LOAD_TIMINGS)
    # Through the issuer, the page showing the study would be /viewer/callback's, and
    # it would have asked the issuer's token endpoint for the code.
    assert timings["page"] == study and timings["redirects"] == 0, timings["page"]
    issuer = [name for name in timings["requests"] if "/api/dev-login/" in name]
    assert issuer == []
    assert "/api/dev-login/" not in browser.current_url
    # The user is kept in the tab's sessionStorage, nowhere that outlives the tab.
    assert browser.execute_script(
        "return Object.keys(sessionStorage).some(k => k.indexOf('atrium.oidc.user:') === 0)"
        " && !Object.keys(localStorage).some(k => k.indexOf('user:') >= 0)")
    assert policy_violations(browser) == []


def test_the_dev_sign_in_answers_and_refuses_as_documented(atrium: AtriumUnderTest) -> None:
    discovery = requests.get(f"{atrium.url}/api/dev-login/.well-known/openid-configuration",
                             timeout=10)
    assert discovery.status_code == 200, discovery.text
    assert discovery.json()["code_challenge_methods_supported"] == ["S256"]
    refused = requests.get(f"{atrium.url}/api/dev-login/authorize", timeout=10, params={
        "response_type": "code", "client_id": "atrium", "state": "s",
        "redirect_uri": "https://evil.example/cb", "code_challenge": "c" * 43,
        "code_challenge_method": "S256"})
    assert refused.status_code == 400
    token = requests.post(f"{atrium.url}/api/dev-login/token", timeout=10,
                          data={"grant_type": "authorization_code", "code": "nope",
                                "code_verifier": "v" * 43, "client_id": "atrium",
                                "redirect_uri": f"{atrium.url}/viewer/callback"})
    assert token.status_code == 400 and token.json()["error"] == "invalid_grant"
    # The form's answer: a code for the client, and a session that answers the next
    # request of the same browser without the form (as a real issuer's SSO does).
    verifier = "x" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()
                                         ).rstrip(b"=").decode()
    callback = f"{atrium.url}/viewer/callback"
    fields = {"client_id": "atrium", "redirect_uri": callback, "state": "s1", "nonce": "n",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    session = requests.Session()
    signed = session.post(f"{atrium.url}/api/dev-login/authorize", timeout=10,
                          allow_redirects=False, data={**fields, "username": "ana",
                                                       "organization": "North",
                                                       "role": "clinician"})
    assert signed.status_code == 303, signed.text
    code = parse_qs(urlsplit(signed.headers["Location"]).query)["code"][0]
    tokens = session.post(f"{atrium.url}/api/dev-login/token", timeout=10, data={
        "grant_type": "authorization_code", "code": code, "code_verifier": verifier,
        "client_id": "atrium", "redirect_uri": callback})
    assert tokens.status_code == 200, tokens.text
    me = requests.get(f"{atrium.url}/api/me", timeout=10, headers={
        "Authorization": f"Bearer {tokens.json()['access_token']}"})
    assert me.status_code == 200, me.text
    again = session.get(f"{atrium.url}/api/dev-login/authorize", timeout=10,
                        allow_redirects=False, params={**fields, "response_type": "code"})
    assert again.status_code == 303 and again.headers["Location"].startswith(callback)
    # The viewer's files need no token; Orthanc's own routes still do.
    page = requests.get(f"{atrium.url}/viewer/", timeout=10)
    assert page.status_code == 200, page.text
    assert page.headers["Content-Type"].startswith("text/html")
    assert "connect-src 'self' data: blob:;" in page.headers["Content-Security-Policy"]
    assert requests.get(f"{atrium.url}/viewer/../instances", timeout=10).status_code in (
        401, 403, 404)
    assert requests.post(f"{atrium.url}/viewer/x", timeout=10).status_code == 403


@pytest.fixture(scope="module")
def ct(atrium: AtriumUnderTest, studies: dict[str, Any]) -> dict[str, Any]:
    """One CT image with its geometry (position, orientation, 0.7 mm pixels) in
    North: the image measurements are drawn on."""
    spec = StudySpec(patient_name=f"MEASURE^DELTA{uuid.uuid4().hex[:6].upper()}",
                     patient_id=f"M-{uuid.uuid4().hex[:6]}", description="Measured CT",
                     series=1, instances_per_series=1, rows=256)
    sop_uid = pydicom.uid.generate_uid()
    blob = make_instance(spec, pydicom.uid.generate_uid(), 1, 1, sop_uid=sop_uid,
                         ImagePositionPatient=[-90.0, -90.0, 10.0],
                         ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                         PixelSpacing=[0.7, 0.7], SliceThickness=1.0,
                         FrameOfReferenceUID=pydicom.uid.generate_uid())
    stow(atrium, studies["north"], spec, [blob])
    atrium.wait_mirrored([sop_uid])
    instance_id = atrium.scalar("SELECT id FROM instances WHERE sop_instance_uid = %s",
                                (sop_uid,))
    return {"spec": spec, "sop_uid": sop_uid, "instance_id": instance_id}


def open_study(driver: webdriver.Chrome, atrium: AtriumUnderTest, organization: str,
               study_uid: str, screenshots: Path, step: str) -> None:
    sign_in(driver, atrium, organization, "clinician", screenshots, step,
            page=f"viewer?StudyInstanceUIDs={study_uid}")

    def drawn() -> bool:
        pixels = viewport_pixels(driver)
        return pixels is not None and len(np.unique(pixels)) > 16

    wait_on_page(driver, screenshots, step, drawn, "the image drawn", timeout=90)


def lengths_on(atrium: AtriumUnderTest, organization: str, instance_id: Any
               ) -> list[dict[str, Any]]:
    """The live annotations OHIF's length tool made on an instance."""
    answer = requests.get(f"{atrium.url}/api/annotations", timeout=10,
                          headers=atrium.auth("clinician", organization),
                          params={"target_type": "instance", "target_id": str(instance_id)})
    assert answer.status_code == 200, answer.text
    return [item for item in answer.json()["items"]
            if item["properties"].get("ohif_tool") == "Length"]


def test_a_length_drawn_with_the_mouse_is_kept_in_atrium_and_comes_back(
        atrium: AtriumUnderTest, studies: dict[str, Any], ct: dict[str, Any],
        browser: webdriver.Chrome, screenshots: Path) -> None:
    north = studies["north"]
    open_study(browser, atrium, north, ct["spec"].study_uid, screenshots, "4-measure")
    wait_on_page(browser, screenshots, "4-measure", lambda: browser.execute_script(
        "return !!(window.atriumOhif && window.atriumOhif.listening)"), "Atrium's extension")
    browser.find_element(By.CSS_SELECTOR,
                         '[data-cy="MeasurementTools-split-button-primary"]').click()
    canvas = max((c for c in browser.find_elements(
        By.CSS_SELECTOR, ".cornerstone-viewport-element canvas") if c.size["width"] > 100),
        key=lambda c: c.size["width"] * c.size["height"])
    box = canvas.rect
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    start = (int(box["x"] + box["width"] * 0.35), int(box["y"] + box["height"] * 0.4))
    end = (int(box["x"] + box["width"] * 0.6), int(box["y"] + box["height"] * 0.55))
    # Where those window points are in the image, by the viewport's own transform.
    expected = browser.execute_script(
        "const e = window.cornerstone.getEnabledElements()"
        ".find(x => x.viewport.getCurrentImageId && x.viewport.getCurrentImageId());"
        "const r = e.viewport.canvas.getBoundingClientRect(); const id ="
        " e.viewport.getCurrentImageId();"
        "return arguments[0].map(p => window.cornerstone.utilities.worldToImageCoords(id,"
        " e.viewport.canvasToWorld([p[0] - r.left, p[1] - r.top])));", [start, end])
    drag = ActionChains(browser)
    drag.move_to_element_with_offset(canvas, int(start[0] - centre[0]),
                                     int(start[1] - centre[1]))
    drag.click_and_hold()
    steps, (dx, dy) = 10, (end[0] - start[0], end[1] - start[1])
    for k in range(steps):  # whole pixels that add up to the drag exactly
        drag.move_by_offset(dx * (k + 1) // steps - dx * k // steps,
                            dy * (k + 1) // steps - dy * k // steps)
    drag.release().perform()
    released = time.monotonic()
    saved = wait_on_page(browser, screenshots, "4-measure",
                         lambda: lengths_on(atrium, north, ct["instance_id"]),
                         "the length in /api/annotations", timeout=10)
    took = time.monotonic() - released
    save(browser, screenshots, "4-measure-drawn")
    (annotation,) = saved
    coordinates = annotation["coordinates"]
    assert coordinates["type"] == "polyline" and annotation["target_type"] == "instance"
    points = [(p["x"], p["y"]) for p in coordinates["points"]]
    for got, want in zip(points, expected, strict=True):
        assert abs(got[0] - want[0]) <= 1 and abs(got[1] - want[1]) <= 1, (points, expected)
    assert took <= 2, f"the annotation was written {took:.1f}s after the mouse was released"

    with ohif_chromium() as fresh:
        open_study(fresh, atrium, north, ct["spec"].study_uid, screenshots, "5-reopen")
        uid = f"atrium-{annotation['id']}"
        wait_on_page(fresh, screenshots, "5-reopen", lambda: fresh.execute_script(
            "return !!window.atriumOhif.services.measurementService.getMeasurement("
            "arguments[0])", uid), "the stored length drawn again")
        save(fresh, screenshots, "5-reopen-measurement")
        assert policy_violations(fresh) == []
        fresh.execute_script("window.atriumOhif.services.measurementService.remove("
                             "arguments[0])", uid)
        wait_on_page(fresh, screenshots, "5-reopen",
                     lambda: not lengths_on(atrium, north, ct["instance_id"]),
                     "the annotation deleted")
    history = requests.get(f"{atrium.url}/api/annotations/{annotation['id']}/history",
                           headers=atrium.auth("clinician", north), timeout=10)
    assert history.status_code == 200  # soft: its versions are still there
    assert atrium.scalar("SELECT bool_and(deleted_at IS NOT NULL) FROM annotations "
                         "WHERE id = %s", (annotation["id"],))


MOVE_HANDLES = """
const [uid, dx] = arguments;
const a = window.cornerstoneTools.annotation.state.getAnnotation(uid);
const id = a.metadata.referencedImageId, u = window.cornerstone.utilities;
a.data.handles.points = a.data.handles.points.map(p => {
  const q = u.worldToImageCoords(id, p);
  return u.imageToWorldCoords(id, [q[0] + dx, q[1]]);
});
a.invalidated = true;
window.cornerstone.triggerEvent(window.cornerstone.eventTarget,
  window.cornerstoneTools.Enums.Events.ANNOTATION_MODIFIED, {annotation: a});
"""
HANDLES_IN_IMAGE = """
const a = window.cornerstoneTools.annotation.state.getAnnotation(arguments[0]);
const id = a.metadata.referencedImageId;
return a.data.handles.points.map(p => window.cornerstone.utilities.worldToImageCoords(id, p));
"""


def test_an_edit_against_a_stale_version_is_shown_and_resolved_with_the_stored_one(
        atrium: AtriumUnderTest, studies: dict[str, Any], ct: dict[str, Any],
        browser: webdriver.Chrome, screenshots: Path) -> None:
    """A rectangle made through the API is drawn; changed meanwhile through the API,
    an edit in the viewer meets a 409, which the viewer shows and resolves by taking
    the stored version; its next edit is written (If-Match of that version)."""
    north = studies["north"]
    headers = atrium.auth("clinician", north)
    box = {"type": "rectangle", "x": 40, "y": 50, "width": 60, "height": 30}
    made = requests.post(f"{atrium.url}/api/annotations", headers=headers, timeout=10, json={
        "annotation_type": "dicom", "target_type": "instance",
        "target_id": str(ct["instance_id"]), "label": "API box", "coordinates": box})
    assert made.status_code == 201, made.text
    annotation_id, uid = made.json()["id"], f"atrium-{made.json()['id']}"
    open_study(browser, atrium, north, ct["spec"].study_uid, screenshots, "6-conflict")
    wait_on_page(browser, screenshots, "6-conflict", lambda: browser.execute_script(
        "return !!window.atriumOhif.services.measurementService.getMeasurement(arguments[0])",
        uid), "the API's rectangle drawn")
    corners = browser.execute_script(HANDLES_IN_IMAGE, uid)
    assert min(c[0] for c in corners) == pytest.approx(40, abs=0.01)
    assert max(c[1] for c in corners) == pytest.approx(80, abs=0.01)
    save(browser, screenshots, "6-conflict-drawn")

    elsewhere = requests.put(f"{atrium.url}/api/annotations/{annotation_id}", timeout=10,
                             headers={**headers, "If-Match": '"1"'},
                             json={"coordinates": {**box, "x": 45}})
    assert elsewhere.status_code == 200, elsewhere.text
    browser.execute_script(MOVE_HANDLES, uid, 10)
    wait_on_page(browser, screenshots, "6-conflict", lambda: browser.execute_script(
        "const s = window.atriumOhif; return s.pending === 0 && s.saved[arguments[0]] && "
        "s.saved[arguments[0]].version === 2", uid), "the stored version taken")
    save(browser, screenshots, "6-conflict-resolved")
    assert "changed elsewhere" in list_text(browser)
    stored = requests.get(f"{atrium.url}/api/annotations/{annotation_id}", headers=headers,
                          timeout=10).json()
    assert stored["version"] == 2 and stored["coordinates"]["x"] == 45
    corners = browser.execute_script(HANDLES_IN_IMAGE, uid)
    assert min(c[0] for c in corners) == pytest.approx(45, abs=0.01)

    browser.execute_script(MOVE_HANDLES, uid, 10)

    def written() -> dict[str, Any] | None:
        current = requests.get(f"{atrium.url}/api/annotations/{annotation_id}",
                               headers=headers, timeout=10).json()
        return current if current["version"] == 3 else None

    current = wait_on_page(browser, screenshots, "6-conflict", written, "the edit written")
    assert current["coordinates"]["x"] == pytest.approx(55, abs=0.01)
    assert current["coordinates"]["width"] == pytest.approx(60, abs=0.01)
    assert current["properties"]["ohif_tool"] == "RectangleROI"
