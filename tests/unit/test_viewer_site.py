"""/viewer/: OHIF's files served from an installed build, the rendered index, the
generated app configuration, and no way out of the build's directory."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from atrium.errors import NotFound
from atrium.viewer.config import app_config, app_config_script
from atrium.viewer.install import STAMP, relocate
from atrium.viewer.site import OhifSite, resolve

# The layout of @ohif/app 3.13.2's dist/index.html, cut down.
INDEX = ('<!doctype html><html><head><script>console.time("x"),window.PUBLIC_URL="/"'
         '</script><link rel="manifest" href="/manifest.json"><script rel="preload" '
         'as="script" src="/app-config.js"></script><script rel="preload" as="script" '
         'type="module" src="/init-service-worker.js"></script><script>function '
         'browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"'
         '</script><script defer src="/app.bundle.0f6159c501addfe9.js"></script>'
         '<link href="/app.bundle.css" rel="stylesheet"></head><body></body></html>')


@pytest.fixture
def build(tmp_path: Path) -> Path:
    root = tmp_path / "ohif"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(INDEX)
    (root / "app.bundle.0f6159c501addfe9.js").write_text('__webpack_require__.p = "/";')
    (root / "app.bundle.css").write_text("body{}")
    (root / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm")
    (root / "assets" / "favicon.ico").write_bytes(b"ico")
    (root / STAMP).write_text("installed")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "escape.js").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def site(build: Path) -> OhifSite:
    config = app_config(issuer=None, client_id="atrium", dicomweb_root="/dicom-web/")
    return OhifSite.load(build, app_config_script(config))


def test_the_index_loads_everything_from_under_viewer_and_nothing_from_a_cdn(
        site: OhifSite) -> None:
    page = site.handle("", {}).body.decode()
    assert 'window.PUBLIC_URL="/viewer/"' in page and 'PUBLIC_URL="/"' not in page
    links = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert links and all(link.startswith("/viewer/") for link in links), links
    assert "init-service-worker" not in page
    # Atrium's extension is defined before the configuration that adds it.
    assert page.index("/viewer/atrium-ohif.js") < page.index("/viewer/app-config.js")


@pytest.mark.skipif(shutil.which("node") is None, reason="no node (bootstrap installs npm)")
def test_files_ohif_imports_from_the_root_at_run_time_are_looked_for_under_viewer(
        site: OhifSite) -> None:
    page = site.handle("", {}).body.decode()
    function = re.search(r"function browserImportFunction\(n\)\{.*?\}(?=window)", page)
    assert function is not None and "return import(n)}" not in page
    # The page's own function, run by node with import() swapped for the identity.
    paths = ["/dicom-microscopy-viewer/dicomMicroscopyViewer.min.js", "/viewer/x.js",
             "//cdn.example/x.js", "x.js", "/viewerx.js"]
    program = (function.group(0).replace("import(", "(") +
               f"console.log(JSON.stringify({json.dumps(paths)}.map(browserImportFunction)))")
    run = subprocess.run(["node", "-e", program], capture_output=True, text=True, check=True,
                         timeout=30)
    assert json.loads(run.stdout) == [
        "/viewer/dicom-microscopy-viewer/dicomMicroscopyViewer.min.js", "/viewer/x.js",
        "//cdn.example/x.js", "x.js", "/viewer/viewerx.js"]


def test_a_page_of_ohifs_router_is_answered_with_the_index(site: OhifSite) -> None:
    index = site.handle("", {}).body
    assert site.handle("viewer", {}).body == index
    assert site.handle("callback", {}).body == index


@pytest.mark.parametrize("path", [
    "../secret.txt", "assets/../../secret.txt", "%2e%2e/secret.txt", ".atrium-installed",
    "escape.js", "assets//favicon.ico", "missing.js", "assets/missing.png", "a\\b.js",
    "x\0.js"])
def test_nothing_outside_the_build_nor_a_missing_file_is_served(site: OhifSite,
                                                                 path: str) -> None:
    with pytest.raises(NotFound):
        site.handle(path, {})


def test_resolve_never_leaves_the_root(build: Path) -> None:
    assert resolve(build.resolve(), "assets/favicon.ico") == build.resolve() / "assets" / \
        "favicon.ico"
    assert resolve(build.resolve(), "escape.js") is None
    assert resolve(build.resolve(), "../secret.txt") is None


def test_files_have_their_types_and_hashed_names_are_cached_for_good(site: OhifSite) -> None:
    wasm = site.handle("0ddf166f7a343eda.wasm", {})
    assert wasm.content_type == "application/wasm"
    assert "immutable" in wasm.headers["Cache-Control"]
    css = site.handle("app.bundle.css", {})
    assert css.content_type.startswith("text/css") and css.headers["Cache-Control"] == "no-cache"
    again = site.handle("app.bundle.css", {"if-none-match": css.headers["ETag"]})
    assert again.status == 304 and again.body == b""


def test_without_an_install_every_request_names_the_remedy(tmp_path: Path) -> None:
    site = OhifSite.load(tmp_path / "absent", "window.config = {};")
    assert not site.installed
    with pytest.raises(NotFound, match="bootstrap"):
        site.handle("", {})


def test_an_index_of_another_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="PUBLIC_URL"):
        OhifSite.render_index("<html></html>", "v")
    with pytest.raises(ValueError, match="import function"):
        OhifSite.render_index(INDEX.replace("browserImportFunction", "load"), "v")


def test_the_configuration_reads_atriums_gateway_and_signs_in_with_pkce() -> None:
    config = app_config(issuer="https://id.example/realms/atrium", client_id="atrium",
                        dicomweb_root="/dicom-web/")
    source = config["dataSources"][0]["configuration"]
    assert source["qidoRoot"] == source["wadoRoot"] == "/dicom-web"
    assert config["defaultDataSourceName"] == config["dataSources"][0]["sourceName"]
    (oidc,) = config["oidc"]
    assert oidc["response_type"] == "code" and oidc["automaticSilentRenew"] is True
    assert oidc["authority"] == "https://id.example/realms/atrium"
    dev = app_config(issuer=None, client_id="atrium", dicomweb_root="/dicom-web/")
    assert dev["oidc"][0]["authority"] == "/api/dev-login"
    script = app_config_script({**dev, "name": "</script><script>alert(1)"})
    assert "</script>" not in script
    embedded = script.split("var config = ", 1)[1].split(";\n", 1)[0]
    assert json.loads(embedded)["name"] == "</script><script>alert(1)"


def test_relocation_points_scripts_fonts_and_icons_under_viewer(build: Path) -> None:
    (build / "app.bundle.css").write_text("@font-face{src:url(/a34f9d1faa5f3315.woff2)}"
                                          "a{background:url(//cdn.example/x.png)}")
    (build / "manifest.json").write_text('{"icons": [{"src": "/assets/a.png"}], '
                                         '"start_url": "./index.html"}')
    assert relocate(build) == ["app.bundle.0f6159c501addfe9.js", "app.bundle.css",
                               "manifest.json"]
    assert (build / "app.bundle.0f6159c501addfe9.js").read_text() == \
        '__webpack_require__.p = "/viewer/";'
    assert (build / "app.bundle.css").read_text() == (
        "@font-face{src:url(/viewer/a34f9d1faa5f3315.woff2)}"
        "a{background:url(//cdn.example/x.png)}")
    assert '"/viewer/assets/a.png"' in (build / "manifest.json").read_text()
    assert relocate(build) == []


def test_the_page_may_run_its_own_inline_scripts_and_talk_to_this_server_and_the_issuer(
        build: Path) -> None:
    site = OhifSite.load(build, "window.config = {};", ("https://id.example",))
    answer = site.handle("", {})
    policy = dict(part.split(" ", 1) for part in
                  answer.headers["Content-Security-Policy"].split("; "))
    inline = re.findall(r"<script>(.*?)</script>", answer.body.decode())
    assert len(inline) == 2
    for body in inline:
        digest = base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"]
    assert "'unsafe-inline'" not in policy["script-src"]
    assert policy["connect-src"] == "'self' data: blob: https://id.example"
