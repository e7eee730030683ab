"""No request may take Orthanc down, however it is built.

Orthanc's HTTP threads have 100 KiB stacks. Python code that recurses in C on one
of them dies of a segmentation fault, not an exception, and takes every
connection with it. Two ways were found, and each is shut here:

* JSON nested a few hundred levels deep — a body, a form part, a bearer token's
  header (before any signature is checked: no credential needed) — reached the
  recursive ``json`` parser;
* the signal codec's first use in a process compiled its loops (numba, LLVM) on
  the thread that asked, so the first recording stored after an install killed
  Orthanc.

Each test sends the request, checks the answer, then that Orthanc still serves.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import AtriumUnderTest
from tests.integration.test_api_recordings import FORM, get, post_json
from tests.integration.test_hostile_dicom import alive

pytestmark = pytest.mark.integration

DEEP = 100_000  # far past what a 100 KiB stack survives (a few hundred)


def nested(depth: int = DEEP) -> str:
    return "[" * depth + "]" * depth


def base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def problem(answer: requests.Response, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    return dict(answer.json())


def test_a_deeply_nested_body_is_a_400_and_orthanc_stays_up(atrium: AtriumUnderTest) -> None:
    for depth in (65, 500, 30_000):  # the route takes at most 64 KiB
        answer = requests.post(f"{atrium.url}/api/patients", data=nested(depth), timeout=60,
                               headers={**atrium.auth("clinician"),
                                        "Content-Type": "application/json"})
        assert "nests deeper than 64 levels" in str(problem(answer, 400))
        assert alive(atrium)


def test_brackets_inside_strings_are_text_not_depth(atrium: AtriumUnderTest) -> None:
    mrn = "[" * 100 + "{" * 100 + uuid.uuid4().hex
    answer = requests.post(f"{atrium.url}/api/patients", timeout=60,
                           headers=atrium.auth("clinician"),
                           json={"mrn": mrn, "last_name": '"]\\['})
    assert answer.status_code == 201, answer.text[:300]
    assert answer.json()["mrn"] == mrn


def test_a_token_whose_header_nests_deeply_is_a_401_without_credentials(
        atrium: AtriumUnderTest) -> None:
    token = f"{base64url(nested(2000).encode())}.{base64url(b'{}')}.c2lnbmF0dXJl"
    answer = requests.get(f"{atrium.url}/api/me", timeout=60,
                          headers={"Authorization": f"Bearer {token}"})
    assert "not a flat JSON object" in problem(answer, 401)["detail"]
    assert alive(atrium)


def test_a_deeply_nested_form_part_is_a_400_and_nothing_is_stored(
        atrium: AtriumUnderTest) -> None:
    before = atrium.scalar("SELECT count(*) FROM recordings")
    answer = requests.post(f"{atrium.url}/api/recordings", timeout=60,
                           headers={**atrium.auth("clinician"), **FORM},
                           files=[("file", ("a.hea", b"a 1 100 1\n"))],
                           data={"recording_type": "ECG", "metadata": nested()})
    assert "nests deeper than 64 levels" in str(problem(answer, 400))
    assert atrium.scalar("SELECT count(*) FROM recordings") == before
    assert alive(atrium)


def test_a_deeply_nested_modality_definition_is_a_400(atrium: AtriumUnderTest) -> None:
    answer = requests.put(f"{atrium.url}/modalities/deep", data=nested(), timeout=60,
                          headers=atrium.auth("admin"))
    assert "nests deeper than 64 levels" in str(problem(answer, 400))
    assert alive(atrium)


def test_the_first_recording_after_an_install_compiles_the_codec_off_the_http_thread(
        atrium_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty numba cache is a fresh install: nothing compiled yet.
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba-cache"))
    fresh = atrium_factory()
    samples = [(n * 37) % 101 - 50 for n in range(2000)]
    answer = post_json(fresh, {"recording_type": "ECG", "sampling_rate": 500,
                               "channels": [{"name": "I", "samples": samples}]})
    assert answer.status_code == 201, answer.text[:300]
    read = get(fresh, f"/api/recordings/{answer.json()['id']}/signal")
    assert read.status_code == 200
    assert read.json()["channels"][0]["samples"] == samples
    assert any((tmp_path / "numba-cache").rglob("*.nbi")), "the codec was not compiled"
    assert alive(fresh)


def test_a_document_nested_to_the_limit_is_stored_and_read_back(atrium: AtriumUnderTest) -> None:
    # The body itself, "metadata", then 62 levels: 64, the most a body may nest.
    # Its whole way runs on the HTTP thread: parsing, the schema, the database's
    # JSON encoding, the answer's.
    deepest: Any = "bottom"
    for _ in range(62):
        deepest = [deepest]
    answer = post_json(atrium, {"recording_type": "ECG", "sampling_rate": 1,
                                "metadata": {"deep": deepest},
                                "channels": [{"name": "I", "samples": [1, 2, 3]}]})
    assert answer.status_code == 201, answer.text[:300]
    read = get(atrium, f"/api/recordings/{answer.json()['id']}")
    assert read.status_code == 200
    assert read.json()["metadata"]["deep"] == deepest
    assert alive(atrium)
