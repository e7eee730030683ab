"""Viewer benchmark: OHIF opening a 200-image CT study through Atrium's gateway,
against the same OHIF reading Orthanc's DICOMweb plugin directly.

One run, one machine, two Orthancs on one private PostgreSQL cluster, both holding
the same study (``--series`` × ``--images`` CT images of ``--rows``² 16 bits,
uncompressed, with slice geometry):

* **gateway**: Orthanc with Atrium. OHIF at Atrium's ``/viewer/`` as users get it
  (Atrium's extension loaded, signed in through the dev issuer's form as a
  clinician); its data source is Atrium's ``/dicom-web/``, with the bearer token.
* **direct**: Orthanc without Atrium, its DICOMweb plugin at its own
  ``/dicom-web/``, no authentication. A small Python plugin of this benchmark
  (written into the run's directory) serves the same OHIF files at ``/viewer/``
  with the same code (``atrium.viewer.site.OhifSite``: the same relocated
  ``index.html``, headers and caching), with an app configuration that differs
  only in what must: no OIDC, no Atrium extension, the data source at that
  Orthanc's ``/dicom-web/``. Both sides are one origin (no CORS, no proxy in the way).

Each round opens both sides, in alternating order, each in a new headless Chromium
(Debian's, as the browser tests: WebGL by SwiftShader, 1400 × 900) with a new,
empty profile: no HTTP cache, storage or code cache survives between sides or
rounds. In that browser the side is first made "code-warm" alike: the direct side
opens a one-image warm-up study in the viewer; the gateway side signs in through
the form with that same warm-up study as the page asked for. OHIF's scripts,
styles, WebAssembly and viewer chunks are then in the browser's cache on both
sides, and none of the measured study's data is (OHIF keeps study data in the
page's memory only). Then the measured study is opened by a full navigation to
``/viewer/viewer?StudyInstanceUIDs=…``.

Clock: the browser's own. A script installed with DevTools'
``Page.addScriptToEvaluateOnNewDocument`` runs in the study's page before OHIF and
checks every 20 ms (``setInterval``) for

(a) **first image**: OHIF's largest viewport canvas, scaled down to 64 × 64, has
    more than 16 grey levels (the generated slices are ramps; an empty viewport is
    black), as the browser tests judge a drawn image;
(b) **thumbnails**: as many ``<img>`` with a ``data:`` or ``blob:`` source, loaded
    (``complete``, ``naturalWidth`` > 0), as the study has series — OHIF 3.13's
    study panel draws each series' thumbnail as such an ``<img>``.

Each time is ``performance.timeOrigin + performance.now()`` at the event minus the
same clock read in ``about:blank`` just before the navigation, so it includes the
page's load and its (cached) scripts. The gateway side's tab is signed in already
(the warm-up's sign-in): Atrium's extension gives OHIF the user its OIDC client kept
in the tab's sessionStorage, so the full load goes to no issuer (the page "began" at
once; a request to the issuer would be counted as ``sign-in``). Until 2026-11-28 it
signed in again on every load, about 1.4 s. The page's resource timings of
``/dicom-web/`` and ``/api/`` requests give, per side, where the time went
(``--verbose``: per request kind, every round), and the times from the first
DICOMweb request are printed too.
``--without-extension`` blocks ``/viewer/atrium-ohif.js`` in the gateway side's
browser: the gateway's own share, without the extension's ``/api/`` reads.

While ``/tmp/atrium-quiet`` exists (someone is measuring), the benchmark waits
before each side. Prints per-round times, then median and spread (min–max) per
side and the gateway/direct ratios (goal ≤ 1.2×) for ``docs/BENCHMARKS.md``.

    .venv/bin/python bench/viewer.py [--rounds 5] [--series 4] [--images 50] [--rows 512]
        [--without-extension] [--verbose] [--screenshots DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from selenium import webdriver
from selenium.webdriver.common.by import By

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config  # noqa: E402
from atrium.viewer.config import app_config  # noqa: E402
from atrium.viewer.install import target_dir  # noqa: E402
from bench.common import private_cluster, start_atrium, stow_body  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.support.browser import CHROMEDRIVER, CHROMIUM, headless_chromium  # noqa: E402
from tests.support.dicomgen import StudySpec, make_instance  # noqa: E402

QUIET = Path("/tmp/atrium-quiet")
ORGANIZATION = "Bench"
WINDOW = (1400, 900)
POLL_MS = 20

# The direct side's app-config.js: Atrium's generated configuration
# (atrium.viewer.config) with its data source pointed at this Orthanc, no OIDC and
# no extension. The roots are made absolute from the page's origin, as Atrium's are.
DIRECT_CONFIG = """(function () {
  var config = %s;
  var source = config.dataSources[0].configuration;
  ["qidoRoot", "wadoRoot", "wadoUriRoot"].forEach(function (key) {
    source[key] = window.location.origin + source[key];
  });
  window.config = config;
})();
"""

# Orthanc's Python plugin in the direct Orthanc: OHIF's files at /viewer/ through
# atrium.viewer.site, as Atrium serves them, and nothing else of Atrium's.
DIRECT_PLUGIN = '''"""Serves OHIF at /viewer/ for bench/viewer.py's direct side (generated)."""
import site
import sys
from pathlib import Path

site.addsitedir({site_packages!r})
sys.path.insert(0, {plugin_dir!r})

import orthanc

from atrium.api.http import problem_response
from atrium.errors import ApiError
from atrium.rest_output import write_answer
from atrium.viewer.site import OhifSite

SITE = OhifSite.load(Path({build!r}), {config!r})


def on_viewer(output, uri, **request):
    path = uri[len("/viewer/"):] if uri.startswith("/viewer/") else ""
    headers = {{str(k).lower(): str(v) for k, v in dict(request.get("headers") or {{}}).items()}}
    try:
        answer = SITE.handle(path, headers)
    except ApiError as error:
        answer = problem_response(error)
    write_answer(output, answer)


orthanc.RegisterRestCallback("/viewer(/.*)?", on_viewer)
'''

# Whether OHIF's largest viewport canvas shows an image: scaled down to 64 × 64 it
# has more than 16 colours (the slices are ramps; an empty viewport is black).
IMAGE_DRAWN = """function imageDrawn(context) {
  var best = null, area = 0;
  document.querySelectorAll(".cornerstone-viewport-element canvas").forEach(function (c) {
    var r = c.getBoundingClientRect();
    if (r.width > 100 && r.height > 100 && r.width * r.height > area) {
      best = c; area = r.width * r.height;
    }
  });
  if (!best || !best.width || !best.height) { return false; }
  context.clearRect(0, 0, 64, 64);
  context.drawImage(best, 0, 0, 64, 64);
  var data = context.getImageData(0, 0, 64, 64).data, seen = {}, count = 0;
  for (var i = 0; i < data.length; i += 4) {
    var v = data[i] * 65536 + data[i + 1] * 256 + data[i + 2];
    if (!seen[v]) { seen[v] = true; if (++count > 16) { return true; } }
  }
  return false;
}
function smallContext() {
  var small = document.createElement("canvas");
  small.width = small.height = 64;
  return small.getContext("2d", {willReadFrequently: true});
}
"""

# Runs in the measured page before OHIF (DevTools' addScriptToEvaluateOnNewDocument).
PROBE = r"""(function () {
  // Atrium's OHIF signs in again on a full load: the issuer's session answers at
  // once and the study is shown by the page of /viewer/callback.
  if (!/^\/viewer\/(viewer|callback)/.test(location.pathname)) { return; }
  performance.setResourceTimingBufferSize(100000);
  var marks = window.__viewerBench = {};
  var expected = %d;
  %s
  var context = smallContext();
  function now() { return performance.timeOrigin + performance.now(); }
  function thumbnails() {
    var n = 0;
    document.querySelectorAll("img").forEach(function (img) {
      var src = img.getAttribute("src") || "";
      if ((src.indexOf("data:image") === 0 || src.indexOf("blob:") === 0) &&
          img.complete && img.naturalWidth > 0) { n++; }
    });
    marks.thumbnailCount = n;
    return n >= expected;
  }
  var timer = setInterval(function () {
    try {
      if (marks.image === undefined && imageDrawn(context)) { marks.image = now(); }
      if (marks.thumbnails === undefined && thumbnails()) { marks.thumbnails = now(); }
    } catch (error) { marks.error = String(error); }
    if (marks.image !== undefined && marks.thumbnails !== undefined) { clearInterval(timer); }
  }, %d);
})();
"""

RESOURCES = """return performance.getEntriesByType("resource").filter(function (e) {
  return e.name.indexOf("/dicom-web/") >= 0 || e.name.indexOf("/api/") >= 0;
}).map(function (e) {
  return {name: e.name, start: performance.timeOrigin + e.startTime,
          end: performance.timeOrigin + e.responseEnd,
          wait: e.responseStart - e.requestStart, bytes: e.encodedBodySize,
          status: e.responseStatus};
});"""


def wait_quiet() -> None:
    if QUIET.exists():
        print("  (waiting: /tmp/atrium-quiet exists)", flush=True)
        while QUIET.exists():
            time.sleep(20)


def study_blobs(spec: StudySpec, images: int) -> list[bytes]:
    """``spec.series`` axial CT series of ``images`` slices with geometry (one frame
    of reference, 0.7 mm pixels, 1.5 mm apart); the pixels a ramp per slice."""
    blobs: list[bytes] = []
    frame_of_reference = pydicom.uid.generate_uid()
    for s in range(1, spec.series + 1):
        series_uid = pydicom.uid.generate_uid()
        for n in range(1, images + 1):
            blobs.append(make_instance(
                spec, series_uid, s, n, ImagePositionPatient=[-180.0, -180.0, 1.5 * n],
                ImageOrientationPatient=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
                PixelSpacing=[0.7, 0.7], SliceThickness=1.5, RescaleIntercept=-1024,
                RescaleSlope=1, FrameOfReferenceUID=frame_of_reference,
                SeriesDescription=f"Axial {s}"))
    return blobs


def stow(url: str, headers: dict[str, str], blobs: Sequence[bytes], batch: int = 25) -> None:
    with requests.Session() as session:
        for i in range(0, len(blobs), batch):
            body, content_type = stow_body(blobs[i:i + batch])
            answer = session.post(f"{url}/dicom-web/studies", data=body, timeout=300,
                                  headers={**headers, "Content-Type": content_type,
                                           "Accept": "application/dicom+json"})
            if answer.status_code != 200:
                raise SystemExit(f"STOW to {url}: {answer.status_code} {answer.text[:300]}")


def wait_listed(url: str, headers: dict[str, str], study_uid: str, images: int,
                timeout: float = 300) -> None:
    """Until QIDO-RS at ``url`` counts all the study's instances (Atrium's gateway
    answers from its mirror, which follows Orthanc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = requests.get(f"{url}/dicom-web/studies", headers=headers, timeout=30,
                              params={"StudyInstanceUID": study_uid,
                                      "includefield": "00201208"})
        if answer.status_code == 200 and answer.text.strip():
            found = answer.json()
            if found and found[0].get("00201208", {}).get("Value", [0])[0] >= images:
                return
        time.sleep(1)
    raise SystemExit(f"{url}: the study's {images} instances were not listed in {timeout}s")


def start_direct(root: Path, cluster: LocalCluster, build: Path) -> OrthancProcess:
    """Orthanc without Atrium, DICOMweb at ``/dicom-web/``, OHIF at ``/viewer/``."""
    cluster.ensure_database("direct_index")
    workdir = root / "direct"
    workdir.mkdir()
    config = app_config(issuer=None, client_id="atrium", dicomweb_root="/dicom-web")
    del config["oidc"]
    config["name"] = "orthanc"
    script = DIRECT_CONFIG % json.dumps(config, indent=1, sort_keys=True)
    venv = Path(sys.prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    plugin = workdir / "direct_viewer.py"
    plugin.write_text(DIRECT_PLUGIN.format(
        site_packages=str(venv / "lib" / version / "site-packages"),
        plugin_dir=str(REPO_ROOT / "plugin"), build=str(build), config=script))
    base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
    orthanc = orthanc_config(
        base=base, data_dir=workdir, cluster=cluster, index_database="direct_index",
        http_port=free_port(), dicom_port=free_port(), aet="DIRECT", atrium={},
        python_script=plugin, with_atrium=False)
    orthanc["DicomWeb"] = {**orthanc["DicomWeb"], "Root": "/dicom-web/"}
    orthanc["Plugins"] = [*orthanc["Plugins"], "/usr/share/orthanc/plugins/libOrthancPython.so"]
    orthanc["PythonScript"] = str(plugin)
    orthanc["PythonVerbose"] = False
    orthanc.pop("Atrium", None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    process = OrthancProcess(workdir, orthanc, env)
    process.start()
    return process


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(f"waited {timeout:.0f}s for {what}")


def viewer_url(url: str, study_uid: str) -> str:
    return f"{url}/viewer/viewer?StudyInstanceUIDs={study_uid}"


def no_tour(driver: webdriver.Chrome) -> None:
    # OHIF's first-visit tour would lie over the viewport; both sides skip it.
    driver.execute_script("localStorage.setItem('shownTours', '[\"basicViewerTour\"]')")


def warm_direct(driver: webdriver.Chrome, url: str, warmup_uid: str, timeout: float) -> None:
    driver.get(f"{url}/viewer/")
    no_tour(driver)
    driver.get(viewer_url(url, warmup_uid))
    wait_drawn(driver, timeout)


def warm_gateway(driver: webdriver.Chrome, url: str, warmup_uid: str, timeout: float) -> None:
    """Sign in through the dev issuer's form, asking for the warm-up study."""
    driver.get(viewer_url(url, warmup_uid))
    wait_for(lambda: driver.find_elements(By.ID, "username"), "the dev sign-in form", timeout)
    for name, value in (("username", "bench-viewer"), ("organization", ORGANIZATION)):
        element = driver.find_element(By.ID, name)
        element.clear()
        element.send_keys(value)
    driver.execute_script("document.getElementById('role').value = 'clinician'")
    no_tour(driver)
    driver.find_element(By.ID, "sign-in").click()
    wait_for(lambda: "/viewer/viewer" in driver.current_url, "the way back to OHIF", timeout)
    wait_drawn(driver, timeout)


def wait_drawn(driver: webdriver.Chrome, timeout: float) -> None:
    """Until the viewport shows an image (the warm-up study's), judged as PROBE does."""
    script = IMAGE_DRAWN + "return imageDrawn(smallContext());"
    wait_for(lambda: driver.execute_script(script), "the warm-up image", timeout)


@dataclass
class Sample:
    image: float
    thumbnails: float
    requests: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0
    page: float = 0.0  # the document that showed the study began (s after t0)

    @property
    def first_request(self) -> float:
        """Seconds from the navigation to the first DICOMweb request."""
        starts = [e["start"] for e in self.requests if "/dicom-web/" in e["name"]]
        return (min(starts) - self.t0) / 1000 if starts else float("nan")


def measure(driver: webdriver.Chrome, url: str, study_uid: str, series: int,
            timeout: float, shots: Path | None, label: str) -> Sample:
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                           {"source": PROBE % (series, IMAGE_DRAWN, POLL_MS)})
    driver.get("about:blank")
    t0 = float(driver.execute_script("return performance.timeOrigin + performance.now()"))
    driver.get(viewer_url(url, study_uid))

    def done() -> dict[str, Any] | None:
        marks = driver.execute_script("return window.__viewerBench || null")
        if marks and marks.get("error"):
            raise RuntimeError(f"{label}: the probe failed: {marks['error']}")
        if marks and "image" in marks and "thumbnails" in marks:
            return dict(marks)
        return None

    try:
        marks = wait_for(done, "the image and every thumbnail", timeout)
    except TimeoutError:
        # Counted as never (inf), with what the page saw, rather than ending the run.
        if shots:
            driver.save_screenshot(str(shots / f"{label}-stuck.png"))
        marks = dict(driver.execute_script("return window.__viewerBench || {}") or {})
        failed = [(e["status"], e["name"][-60:]) for e in driver.execute_script(RESOURCES)
                  if e.get("status") not in (None, 0, 200, 204, 304)]
        print(f"{label}: not all drawn in {timeout:.0f}s (probe: {marks}; failed "
              f"requests: {failed[:5]})", flush=True)
        marks.setdefault("image", math.inf)
        marks.setdefault("thumbnails", math.inf)
    if shots:
        driver.save_screenshot(str(shots / f"{label}.png"))
    return Sample(image=(marks["image"] - t0) / 1000, thumbnails=(marks["thumbnails"] - t0) / 1000,
                  requests=list(driver.execute_script(RESOURCES)), t0=t0,
                  page=(float(driver.execute_script("return performance.timeOrigin")) - t0)
                  / 1000)


def kind(name: str) -> str:
    if "/api/dev-login/" in name:
        return "sign-in"
    if "/api/" in name:
        return "api"
    if "/frames/" in name:
        return "frames"
    if name.split("?")[0].endswith("/metadata"):
        return "metadata"
    if "/rendered" in name or "/thumbnail" in name:
        return "rendered"
    return "qido"


def breakdown(sample: Sample) -> dict[str, tuple[int, float, float, float]]:
    """Per request kind: count, median server wait (ms), span from the navigation
    to the last response (s), bytes (MB)."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in sample.requests:
        groups[kind(entry["name"])].append(entry)
    return {name: (len(entries), statistics.median(e["wait"] for e in entries),
                   (max(e["end"] for e in entries) - sample.t0) / 1000,
                   sum(e["bytes"] or 0 for e in entries) / 1e6)
            for name, entries in sorted(groups.items())}


def spread(values: Sequence[float]) -> str:
    return (f"{statistics.median(values):6.2f} s (min {min(values):.2f}, "
            f"max {max(values):.2f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="rounds (both sides each)")
    parser.add_argument("--series", type=int, default=4)
    parser.add_argument("--images", type=int, default=50, help="images per series")
    parser.add_argument("--rows", type=int, default=512, help="rows = columns of each image")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds a side may take to draw")
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="a directory for a screenshot of each measured page")
    parser.add_argument("--without-extension", action="store_true",
                        help="the gateway side without Atrium's OHIF extension (the browser "
                             "blocks /viewer/atrium-ohif.js): the gateway's own share")
    parser.add_argument("--verbose", action="store_true",
                        help="print each side's requests by kind, every round")
    args = parser.parse_args()
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        raise SystemExit("Debian's chromium and chromium-driver are needed "
                         "(scripts/bootstrap.sh --test installs them)")
    build = target_dir(REPO_ROOT / "build" / "viewer")
    if not (build / "index.html").is_file():
        raise SystemExit(f"no OHIF build in {build}: run scripts/bootstrap.sh")
    if args.screenshots:
        args.screenshots.mkdir(parents=True, exist_ok=True)
    wait_quiet()
    root, cluster = private_cluster("atrium-bench-viewer-")
    processes: list[OrthancProcess] = []
    try:
        gateway = start_atrium(root, cluster, "viewer")
        processes.append(gateway)
        direct = start_direct(root, cluster, build)
        processes.append(direct)
        token = load_or_create(root / "orthanc").mint("bench-viewer", ["clinician"],
                                                      ORGANIZATION)
        auth = {"Authorization": f"Bearer {token}"}
        spec = StudySpec(patient_name="BENCH^VIEWER", patient_id="BENCH-VIEWER",
                         description="Viewer bench CT", series=args.series, rows=args.rows)
        warmup = StudySpec(patient_name="BENCH^WARMUP", patient_id="BENCH-WARMUP",
                           description="Warm-up CT", series=1, rows=args.rows)
        began = time.perf_counter()
        blobs = study_blobs(spec, args.images)
        warm_blobs = study_blobs(warmup, 1)
        total = len(blobs)
        megabytes = sum(map(len, blobs)) / 1e6
        for url, headers in ((gateway.url, auth), (direct.url, {})):
            stow(url, headers, blobs + warm_blobs)
        for url, headers in ((gateway.url, auth), (direct.url, {})):
            wait_listed(url, headers, spec.study_uid, total)
            wait_listed(url, headers, warmup.study_uid, 1)
        print(f"study: {args.series} series × {args.images} CT images of {args.rows}² × 16 "
              f"bits ({total} images, {megabytes:,.0f} MB), stored in both Orthancs in "
              f"{time.perf_counter() - began:.0f} s", flush=True)
        sides: dict[str, tuple[str, Callable[..., None]]] = {
            "gateway": (gateway.url, warm_gateway), "direct": (direct.url, warm_direct)}
        results: dict[str, list[Sample]] = {"gateway": [], "direct": []}
        for n in range(args.rounds):
            order = ["gateway", "direct"] if n % 2 == 0 else ["direct", "gateway"]
            for name in order:
                wait_quiet()
                url, warm = sides[name]
                with headless_chromium(WINDOW, webgl=True) as driver:
                    if args.without_extension and name == "gateway":
                        driver.execute_cdp_cmd("Network.enable", {})
                        driver.execute_cdp_cmd("Network.setBlockedURLs",
                                               {"urls": ["*/viewer/atrium-ohif.js*"]})
                    warm(driver, url, warmup.study_uid, args.timeout)
                    sample = measure(driver, url, spec.study_uid, args.series, args.timeout,
                                     args.screenshots, f"round{n + 1}-{name}")
                results[name].append(sample)
                print(f"round {n + 1}: {name:8s} first image {sample.image:6.2f} s, "
                      f"all thumbnails {sample.thumbnails:6.2f} s (page began at "
                      f"{sample.page:.2f} s, first DICOMweb request at "
                      f"{sample.first_request:.2f} s)", flush=True)
                if args.verbose:
                    for what, (count, wait, span, mb) in breakdown(sample).items():
                        print(f"    {what:9s} {count:4d} requests, median wait {wait:7.1f} "
                              f"ms, last answer at {span:6.2f} s, {mb:7.1f} MB")
        if args.without_extension:
            print("\nthe gateway side WITHOUT Atrium's OHIF extension")
        print(f"\n{total} images, {args.rounds} rounds, cold browser each side "
              f"({platform.node()}, {os.cpu_count()} cores):")
        ratios = {}
        for event in ("image", "thumbnails"):
            label = "first image" if event == "image" else "all thumbnails"
            values = {name: [getattr(s, event) for s in samples]
                      for name, samples in results.items()}
            ratios[event] = (statistics.median(values["gateway"])
                             / statistics.median(values["direct"]))
            print(f"  {label:15s} gateway {spread(values['gateway'])}")
            print(f"  {'':15s} direct  {spread(values['direct'])}")
            print(f"  {'':15s} gateway/direct {ratios[event]:.2f}× (goal ≤ 1.2×)")
            data = {name: [getattr(s, event) - s.first_request for s in samples]
                    for name, samples in results.items()}
            print(f"  {'':15s} from the first DICOMweb request: gateway "
                  f"{spread(data['gateway'])}, direct {spread(data['direct'])}, "
                  f"{statistics.median(data['gateway']) / statistics.median(data['direct']):.2f}×")
        print("  requests (median over rounds: count, server wait, last answer):")
        for name, samples in results.items():
            kinds: dict[str, list[tuple[int, float, float, float]]] = defaultdict(list)
            for sample in samples:
                for what, row in breakdown(sample).items():
                    kinds[what].append(row)
            for what, rows in sorted(kinds.items()):
                print(f"    {name:8s} {what:9s} {statistics.median(r[0] for r in rows):5.0f} "
                      f"requests, wait {statistics.median(r[1] for r in rows):7.1f} ms, "
                      f"last at {statistics.median(r[2] for r in rows):6.2f} s")
        return 0
    finally:
        for process in processes:
            process.stop()
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
