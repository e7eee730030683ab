"""``/api/slides`` against the real Orthanc: generated pyramids with a known pattern
uploaded whole and in chunks, every level's tiles compared pixel by pixel, Deep
Zoom, thumbnail, region, validators, scope, coalesced audit, bad files."""

from __future__ import annotations

import io
import json
import random
import struct
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.integration.conftest import AtriumUnderTest
from tests.integration.s3server import S3Server
from tests.support.recording_proxy import RecordingProxy
from tests.support.slidegen import (
    NDPI_MODEL,
    NDPI_REFERENCE,
    SCAN_DATE,
    associated_pattern,
    level_shape,
    pattern,
    write_ndpi,
    write_pyramid_tiff,
)

WIDTH, HEIGHT, TILE, LEVELS = 1500, 1100, 256, 3
# Orthanc's HTTP server keeps multipart/form-data POSTs for itself (see MULTIPART_NOTE).
FORM = {"X-HTTP-Method-Override": "PUT"}


def tiff_bytes(**kwargs: Any) -> bytes:
    out = io.BytesIO()
    write_pyramid_tiff(out, kwargs.pop("width", WIDTH), kwargs.pop("height", HEIGHT),
                       tile=TILE, levels=kwargs.pop("levels", LEVELS), **kwargs)
    return out.getvalue()


def unique(prefix: str = "S") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def upload(atrium: AtriumUnderTest, blob: bytes, role: str = "clinician", org: str = "Default",
           filename: str = "case.tiff", **fields: Any) -> requests.Response:
    data = {k: (json.dumps(v) if k == "metadata" else str(v)) for k, v in fields.items()}
    data.setdefault("slide_id", unique())
    return requests.post(f"{atrium.url}/api/slides", headers={**atrium.auth(role, org), **FORM},
                         files={"file": (filename, blob, "image/tiff")}, data=data, timeout=60)


def decode(blob: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def expected_tile(level: int, col: int, row: int) -> np.ndarray:
    width, height = level_shape(WIDTH, HEIGHT, level)
    x, y = col * TILE, row * TILE
    return pattern(x, y, min(TILE, width - x), min(TILE, height - y), 2 ** level)


def close(a: np.ndarray, b: np.ndarray, mean: float = 6.0) -> bool:
    return a.shape == b.shape and float(np.abs(a.astype(int) - b.astype(int)).mean()) < mean


@pytest.fixture(scope="module")
def lossless(atrium: AtriumUnderTest) -> dict[str, Any]:
    answer = upload(atrium, tiff_bytes(compression="zlib"), stain="H&E",
                    specimen_type="liver", metadata={"study": "pilot"})
    assert answer.status_code == 201, answer.text
    return answer.json()


@pytest.fixture(scope="module")
def svs(atrium: AtriumUnderTest) -> dict[str, Any]:
    answer = upload(atrium, tiff_bytes(compression="jpeg", flavor="svs"), filename="case.svs",
                    stain="PAS")
    assert answer.status_code == 201, answer.text
    return answer.json()


def get(atrium: AtriumUnderTest, path: str, role: str = "clinician", org: str = "Default",
        **headers: str) -> requests.Response:
    return requests.get(f"{atrium.url}{path}", headers={**atrium.auth(role, org), **headers},
                        timeout=30)


def test_an_upload_reads_its_dimensions_from_the_file(atrium: AtriumUnderTest,
                                                      svs: dict[str, Any]) -> None:
    assert svs["width_pixels"] == WIDTH and svs["height_pixels"] == HEIGHT
    assert svs["pyramid_levels"] == LEVELS and svs["tile_size"] == TILE
    assert svs["file_format"] == "SVS" and svs["stain"] == "PAS"
    assert svs["mpp_x"] == pytest.approx(0.25) and svs["magnification"]
    assert svs["metadata"]["original_filename"] == "case.svs"
    answer = get(atrium, f"/api/slides/{svs['id']}")
    assert answer.status_code == 200 and answer.json() == svs


def test_png_tiles_of_a_lossless_slide_equal_the_source_at_every_level(
        atrium: AtriumUnderTest, lossless: dict[str, Any]) -> None:
    for level in range(LEVELS):
        width, height = level_shape(WIDTH, HEIGHT, level)
        for col in range(-(-width // TILE)):
            for row in range(-(-height // TILE)):
                answer = get(atrium, f"/api/slides/{lossless['id']}/tiles/{level}/{col}/{row}"
                             "?format=png")
                assert answer.status_code == 200, answer.text
                assert answer.headers["Content-Type"] == "image/png"
                assert np.array_equal(decode(answer.content), expected_tile(level, col, row)), \
                    (level, col, row)


def test_jpeg_tiles_are_close_to_the_source_and_edge_tiles_are_cropped(
        atrium: AtriumUnderTest, svs: dict[str, Any]) -> None:
    for level, col, row in [(0, 0, 0), (0, 2, 1), (0, 5, 4), (1, 2, 2), (2, 0, 0)]:
        answer = get(atrium, f"/api/slides/{svs['id']}/tiles/{level}/{col}/{row}")
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/jpeg"
        assert close(decode(answer.content), expected_tile(level, col, row)), (level, col, row)
    assert decode(get(atrium, f"/api/slides/{svs['id']}/tiles/0/5/4").content).shape == \
        (HEIGHT - 4 * TILE, WIDTH - 5 * TILE, 3)
    for outside in ["0/6/0", "0/0/5", "3/0/0", "2/2/0"]:
        answer = get(atrium, f"/api/slides/{svs['id']}/tiles/{outside}")
        assert answer.status_code == 404, outside
        assert answer.headers["Content-Type"] == "application/problem+json"


def test_image_answers_carry_validators_and_304(atrium: AtriumUnderTest,
                                                svs: dict[str, Any]) -> None:
    path = f"/api/slides/{svs['id']}/tiles/0/1/1"
    first = get(atrium, path)
    assert first.headers["Cache-Control"].startswith("private")
    etag = first.headers["ETag"]
    again = get(atrium, path, **{"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    other = get(atrium, f"/api/slides/{svs['id']}/tiles/0/1/2", **{"If-None-Match": etag})
    assert other.status_code == 200 and other.headers["ETag"] != etag


def test_deep_zoom_descriptor_and_tiles(atrium: AtriumUnderTest, lossless: dict[str, Any]
                                        ) -> None:
    for name in ("dzi", "dzi.dzi"):
        answer = get(atrium, f"/api/slides/{lossless['id']}/{name}")
        assert answer.status_code == 200, answer.text
        root = ET.fromstring(answer.content)  # noqa: S314 - our own answer
        size = root.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
        assert size is not None
        assert (int(size.get("Width", 0)), int(size.get("Height", 0))) == (WIDTH, HEIGHT)
        assert int(root.get("TileSize", 0)) == TILE and root.get("Overlap") == "0"
    top = 11  # ceil(log2(1500)): full resolution
    answer = get(atrium, f"/api/slides/{lossless['id']}/dzi_files/{top}/1_2.png")
    assert np.array_equal(decode(answer.content), expected_tile(0, 1, 2))
    answer = get(atrium, f"/api/slides/{lossless['id']}/dzi_files/{top - 1}/0_0.png")
    assert np.array_equal(decode(answer.content), expected_tile(1, 0, 0))
    single = decode(get(atrium, f"/api/slides/{lossless['id']}/dzi_files/0/0_0.jpeg").content)
    assert single.shape == (1, 1, 3)
    assert get(atrium, f"/api/slides/{lossless['id']}/dzi_files/{top + 1}/0_0.jpeg"
               ).status_code == 404
    assert get(atrium, f"/api/slides/{lossless['id']}/dzi_files/{top}/x_y.jpeg"
               ).status_code == 404


def test_thumbnail_and_region(atrium: AtriumUnderTest, lossless: dict[str, Any]) -> None:
    thumb = decode(get(atrium, f"/api/slides/{lossless['id']}/thumbnail?max_size=300").content)
    assert thumb.shape == (round(300 * HEIGHT / WIDTH), 300, 3)
    answer = get(atrium, f"/api/slides/{lossless['id']}/region?level=1&x=100&y=50&width=300"
                 "&height=200")
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
    assert np.array_equal(decode(answer.content), pattern(100, 50, 300, 200, 2))
    too_big = get(atrium, f"/api/slides/{lossless['id']}/region?x=0&y=0&width=100000"
                  "&height=100000")
    assert too_big.status_code == 400, too_big.text


def test_chunked_upload_in_any_order_becomes_a_slide(atrium: AtriumUnderTest) -> None:
    blob = tiff_bytes(compression="zlib", flavor="ome")
    auth = atrium.auth("clinician")
    created = requests.post(f"{atrium.url}/api/uploads", headers=auth, timeout=30,
                            json={"filename": "big.ome.tiff", "size": len(blob)})
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    size = 64 * 1024
    chunks = [(start, min(start + size, len(blob))) for start in range(0, len(blob), size)]
    order = chunks[:]
    random.Random(7).shuffle(order)
    for start, end in [*order, order[0]]:  # the first one twice
        answer = requests.put(f"{atrium.url}/api/uploads/{upload_id}", data=blob[start:end],
                              timeout=30, headers={
                                  **auth, "Content-Type": "application/octet-stream",
                                  "Content-Range": f"bytes {start}-{end - 1}/{len(blob)}"})
        assert answer.status_code == 200, answer.text
    assert answer.json()["missing"] == []
    slide_id = unique("CHUNKED")
    answer = requests.post(f"{atrium.url}/api/slides", headers=auth, timeout=60,
                           json={"upload_id": upload_id, "slide_id": slide_id})
    assert answer.status_code == 201, answer.text
    slide = answer.json()
    assert answer.headers["Location"] == f"/api/slides/{slide['id']}"
    assert slide["file_format"] == "OME-TIFF" and slide["file_size_bytes"] == len(blob)
    tile = get(atrium, f"/api/slides/{slide['id']}/tiles/1/1/1?format=png")
    assert np.array_equal(decode(tile.content), expected_tile(1, 1, 1))
    again = requests.post(f"{atrium.url}/api/slides", headers=auth, timeout=60,
                          json={"upload_id": upload_id, "slide_id": unique()})
    assert again.status_code == 409, again.text  # an upload makes one slide: consumed


def test_slide_id_is_unique_per_organization(atrium: AtriumUnderTest) -> None:
    blob = tiff_bytes(compression="zlib", width=300, height=300, levels=1)
    name = unique("DUP")
    assert upload(atrium, blob, slide_id=name).status_code == 201
    conflict = upload(atrium, blob, slide_id=name)
    assert conflict.status_code == 409 and name in conflict.json()["detail"]
    assert upload(atrium, blob, org="Radiology North", slide_id=name).status_code == 201


def test_list_filters_pages_and_soft_delete(atrium: AtriumUnderTest) -> None:
    stain = unique("STAIN")
    blob = tiff_bytes(compression="zlib", width=300, height=300, levels=1)
    ids = [upload(atrium, blob, stain=stain, scan_date=f"2026-0{m}-01T00:00:00Z").json()["id"]
           for m in (1, 2, 3)]
    page = get(atrium, f"/api/slides?stain={stain}&limit=2").json()
    assert [s["id"] for s in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = get(atrium, f"/api/slides?stain={stain}&limit=2&cursor={page['next_cursor']}").json()
    assert [s["id"] for s in rest["items"]] == ids[:1]
    dated = get(atrium, f"/api/slides?stain={stain}&scan_date_from=2026-02-01T00:00:00Z"
                "&scan_date_to=2026-03-01T00:00:00Z").json()
    assert [s["id"] for s in dated["items"]] == [ids[1]]
    assert get(atrium, f"/api/slides?stain={stain}&file_format=TIFF").json()["items"]
    deleted = requests.delete(f"{atrium.url}/api/slides/{ids[0]}", headers=atrium.auth(),
                              timeout=30)
    assert deleted.status_code == 204
    for path in ("", "/tiles/0/0/0", "/dzi", "/thumbnail"):
        assert get(atrium, f"/api/slides/{ids[0]}{path}").status_code == 404, path
    assert ids[0] not in {s["id"] for s in get(atrium, f"/api/slides?stain={stain}")
                          .json()["items"]}


def test_researchers_see_slides_of_deidentified_patients_only(atrium: AtriumUnderTest) -> None:
    admin = atrium.auth()
    patients = {}
    for deidentified in (False, True):
        answer = requests.post(f"{atrium.url}/api/patients", headers=admin, timeout=30,
                               json={"mrn": unique("MRN"), "is_deidentified": deidentified})
        patients[deidentified] = answer.json()["id"]
    blob = tiff_bytes(compression="jpeg", flavor="svs", width=600, height=400, levels=2)
    identified = upload(atrium, blob, patient_id=patients[False]).json()
    pseudonymous = upload(atrium, blob, patient_id=patients[True]).json()
    assert get(atrium, f"/api/slides/{identified['id']}", "researcher").status_code == 404
    assert get(atrium, f"/api/slides/{identified['id']}/tiles/0/0/0",
               "researcher").status_code == 404
    assert get(atrium, f"/api/slides/{pseudonymous['id']}/tiles/0/0/0",
               "researcher").status_code == 200
    listed = {s["id"] for s in get(atrium, "/api/slides?limit=1000", "researcher")
              .json()["items"]}
    assert pseudonymous["id"] in listed and identified["id"] not in listed
    # Associated images: PHI readers only, never from a de-identified slide.
    label = f"/api/slides/{identified['id']}/associated/label"
    assert get(atrium, label, "clinician").status_code == 200
    assert get(atrium, label, "researcher").status_code == 403
    assert get(atrium, f"/api/slides/{pseudonymous['id']}/associated/label",
               "clinician").status_code == 404
    assert get(atrium, f"/api/slides/{identified['id']}/associated/nothing",
               "clinician").status_code == 404


def test_tile_reads_are_audited_once_per_window(atrium: AtriumUnderTest,
                                                svs: dict[str, Any]) -> None:
    user = f"viewer-{uuid.uuid4().hex[:8]}"
    auth = atrium.auth("clinician", user=user)
    for path in ["/tiles/0/0/0", "/tiles/0/1/0", "/dzi", "/dzi_files/11/0_0.jpeg",
                 "/thumbnail", "/tiles/1/0/0"]:
        answer = requests.get(f"{atrium.url}/api/slides/{svs['id']}{path}", headers=auth,
                              timeout=30)
        assert answer.status_code == 200, path
    requests.get(f"{atrium.url}/api/slides/{svs['id']}", headers=auth, timeout=30)
    requests.get(f"{atrium.url}/api/slides/{svs['id']}", headers=auth, timeout=30)
    rows = atrium.sql(
        "SELECT a.action, a.details, a.phi_accessed FROM audit_log a JOIN users u "
        "ON u.id = a.user_id WHERE u.username = %s AND a.resource_id = %s ORDER BY a.id",
        (user, svs["id"]))
    pixel_rows = [r for r in rows if r[0] != "GET /api/slides/{id}"]
    assert len(pixel_rows) == 1 and pixel_rows[0][1]["coalesced_seconds"] == 300
    assert len(rows) - len(pixel_rows) == 2  # the resource itself: a row per read


def test_other_organizations_get_404_everywhere(atrium: AtriumUnderTest,
                                               svs: dict[str, Any]) -> None:
    for path in ["", "/tiles/0/0/0", "/dzi", "/dzi_files/11/0_0.jpeg", "/thumbnail",
                 "/region?x=0&y=0&width=10&height=10", "/associated/label"]:
        answer = get(atrium, f"/api/slides/{svs['id']}{path}", "clinician", "Radiology North")
        assert answer.status_code == 404, path


def objects_under(atrium: AtriumUnderTest, prefix: str) -> list[Path]:
    root = atrium.workdir / "objects" / prefix
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def with_declared_size(blob: bytes, width: int, height: int) -> bytes:
    """``blob`` whose first image claims to be ``width`` × ``height``: a header that
    would make a naive reader allocate terabytes."""
    import tifffile

    patched = bytearray(blob)
    with tifffile.TiffFile(io.BytesIO(blob)) as tif:
        order = tif.byteorder
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tif.pages[0].tags[name]
            code = {3: "H", 4: "I", 16: "Q"}[int(tag.dtype)]
            patched[tag.valueoffset:tag.valueoffset + struct.calcsize(code)] = \
                struct.pack(order + code, min(value, 2 ** (8 * struct.calcsize(code)) - 1))
    return bytes(patched)


def test_bad_files_are_4xx_and_leave_nothing(atrium: AtriumUnderTest) -> None:
    good = tiff_bytes(compression="jpeg", width=600, height=400, levels=2)
    cases = {
        "absurd dimensions": (with_declared_size(good, 3_000_000, 2_000_000), "b.tiff", 400),
        "garbage": (b"this is not a slide" * 100, "x.svs", 415),
        "truncated": (good[: len(good) // 2], "t.tiff", 400),
        "path traversal": (good, "../../etc/passwd.tiff", 400),
        "windows path": (good, "C:\\slides\\a.svs", 400),
        "empty": (b"", "e.tiff", 400),
    }
    organization = atrium.scalar("SELECT id FROM organizations WHERE name = 'Default'")
    before_objects = len(objects_under(atrium, f"slides/{organization}"))
    for case, (blob, filename, status) in cases.items():
        name = unique("BAD")
        answer = upload(atrium, blob, filename=filename, slide_id=name)
        assert answer.status_code == status, (case, answer.text)
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.json()["detail"], case
        assert atrium.scalar("SELECT count(*) FROM slides WHERE slide_id = %s", (name,)) == 0
    assert len(objects_under(atrium, f"slides/{organization}")) == before_objects


def test_bad_form_fields_are_400(atrium: AtriumUnderTest) -> None:
    blob = tiff_bytes(compression="zlib", width=300, height=300, levels=1)
    for fields in [{"metadata": "not json"}, {"scan_date": "yesterday"},
                   {"patient_id": str(uuid.uuid4())}, {"slide_id": " padded "},
                   {"unknown_field": "x"}]:
        data = {"slide_id": unique(), **fields}
        answer = requests.post(f"{atrium.url}/api/slides", timeout=30,
                               headers={**atrium.auth("clinician"), **FORM},
                               files={"file": ("a.tiff", blob)}, data=data)
        assert answer.status_code == 400, (fields, answer.text)
    missing_file = requests.post(f"{atrium.url}/api/slides",
                                 headers={**atrium.auth("clinician"), **FORM},
                                 files={"other": ("a.tiff", blob)},
                                 data={"slide_id": unique()}, timeout=30)
    assert missing_file.status_code == 400
    researcher = upload(atrium, blob, role="researcher")
    assert researcher.status_code == 403


def test_a_plain_form_post_is_refused_not_swallowed(atrium: AtriumUnderTest) -> None:
    """Orthanc answers a multipart/form-data POST itself (200, empty) after handing
    each part to the route alone; Atrium's filter refuses it instead."""
    blob = tiff_bytes(compression="zlib", width=300, height=300, levels=1)
    name = unique("FORM")
    answer = requests.post(f"{atrium.url}/api/slides", headers=atrium.auth("clinician"),
                           files={"file": ("a.tiff", blob)}, data={"slide_id": name},
                           timeout=30)
    assert answer.status_code == 403
    assert atrium.scalar("SELECT count(*) FROM slides WHERE slide_id = %s", (name,)) == 0


def test_on_s3_a_slide_is_read_with_ranged_reads_only(
        atrium_factory: Callable[..., AtriumUnderTest], s3_server: S3Server) -> None:
    """An uploaded slide in S3: its tiles come from ranged GETs of the bytes they
    need; the file is never downloaded whole, whatever is asked."""
    bucket = f"atrium-slides-{uuid.uuid4().hex[:12]}"
    with RecordingProxy(s3_server.endpoint) as proxy:
        under_test = atrium_factory(
            StorageUrl=f"s3://{bucket}/site", S3Endpoint=f"http://{proxy.endpoint}",
            S3AccessKey=s3_server.access_key, S3SecretKey=s3_server.secret_key,
            S3Secure=False)
        blob = tiff_bytes(compression="jpeg", flavor="svs", width=6000, height=5000,
                          levels=4)
        slide = upload(under_test, blob).json()
        assert slide["file_format"] == "SVS", slide

        def reads() -> list[tuple[int, int]]:
            found = [r for r in proxy.requests if r.method == "GET" and slide["id"] in r.path]
            assert all(r.range and r.range.startswith("bytes=") for r in found), found
            spans = [tuple(int(n) for n in r.range.removeprefix("bytes=").split("-"))
                     for r in found if r.range]
            proxy.requests.clear()
            return [(start, end) for start, end in spans]

        reads()
        for path in ["tiles/0/3/2", "tiles/0/20/10", "tiles/1/1/1?format=png"]:
            assert get(under_test, f"/api/slides/{slide['id']}/{path}").status_code == 200
        tile_reads = reads()
        assert tile_reads, "the tiles were read from S3"
        # Opening the slide (its tile index) and three tiles: a small part of the file.
        assert sum(end - start + 1 for start, end in tile_reads) < len(blob) / 5
        for path in ["dzi_files/12/1_1.jpeg", "thumbnail?max_size=200",
                     "region?level=0&x=700&y=300&width=300&height=200"]:
            assert get(under_test, f"/api/slides/{slide['id']}/{path}").status_code == 200
        assert all(end - start + 1 < len(blob) for start, end in reads())


def test_an_ndpi_slide_is_served_end_to_end(atrium: AtriumUnderTest) -> None:
    width, height = 1020, 700  # 128 × 16 restart intervals: interior tiles as built
    out = io.BytesIO()
    write_ndpi(out, width, height, levels=3)
    patient = requests.post(f"{atrium.url}/api/patients", headers=atrium.auth(), timeout=30,
                            json={"mrn": unique("MRN"), "is_deidentified": False}).json()["id"]
    answer = upload(atrium, out.getvalue(), filename="case.ndpi", patient_id=patient)
    assert answer.status_code == 201, answer.text
    slide = answer.json()
    assert slide["file_format"] == "NDPI" and slide["pyramid_levels"] == 3
    assert (slide["width_pixels"], slide["height_pixels"], slide["tile_size"]) == \
        (width, height, 256)
    assert slide["mpp_x"] == pytest.approx(0.25) and slide["magnification"] == "20"
    assert slide["scanner_model"] == " ".join(NDPI_MODEL)
    assert slide["scan_date"].startswith(SCAN_DATE.date().isoformat())
    assert slide["metadata"]["associated"] == ["macro"]
    assert NDPI_REFERENCE not in json.dumps(slide) and "Jane" not in json.dumps(slide)
    base = f"/api/slides/{slide['id']}"
    for level, col, row in [(0, 1, 1), (0, 3, 2), (1, 1, 1), (2, 0, 0)]:
        level_width, level_height = level_shape(width, height, level)
        x, y = col * 256, row * 256
        expected = pattern(x, y, min(256, level_width - x), min(256, level_height - y),
                           2 ** level)
        for suffix in ("", "?format=png"):
            tile = get(atrium, f"{base}/tiles/{level}/{col}/{row}{suffix}")
            assert tile.status_code == 200, tile.text
            assert close(decode(tile.content), expected, 2.0), (level, col, row, suffix)
    descriptor = ET.fromstring(get(atrium, f"{base}/dzi").content)  # noqa: S314 - ours
    size = descriptor.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert size is not None and (size.get("Width"), size.get("Height")) == ("1020", "700")
    top = 10  # ceil(log2(1020))
    deep = get(atrium, f"{base}/dzi_files/{top}/2_1.jpeg")
    assert close(decode(deep.content), pattern(512, 256, 256, 256), 2.0)
    thumb = get(atrium, f"{base}/thumbnail?max_size=200")
    assert decode(thumb.content).shape == (round(200 * height / width), 200, 3)
    macro = get(atrium, f"{base}/associated/macro", "clinician")
    assert macro.status_code == 200
    assert close(decode(macro.content), associated_pattern("macro"), 3.0)
    assert get(atrium, f"{base}/associated/macro", "researcher").status_code == 403
    assert get(atrium, f"{base}/associated/map", "clinician").status_code == 404
    # Damaged NDPI files: 400, and nothing stored.
    blob = bytearray(out.getvalue())
    (directory,) = struct.unpack_from("<Q", blob, 4)
    struct.pack_into("<I", blob, directory + 2 + 8, 3_000_000)  # ImageWidth, the first tag
    organization = atrium.scalar("SELECT id FROM organizations WHERE name = 'Default'")
    before = len(objects_under(atrium, f"slides/{organization}"))
    for bad in (bytes(blob), out.getvalue()[:-100]):
        name = unique("BAD")
        answer = upload(atrium, bad, filename="bad.ndpi", slide_id=name)
        assert answer.status_code == 400, answer.text
        assert atrium.scalar("SELECT count(*) FROM slides WHERE slide_id = %s", (name,)) == 0
    assert len(objects_under(atrium, f"slides/{organization}")) == before
