"""One hostile file must not take the PACS down.

The file of the issue — an ordinary CT with sequences nested 5,000 deep appended —
killed Orthanc 1.10 whenever it was parsed on an HTTP thread: by the mirror after a
C-STORE (and again after every restart: a crash loop), by Atrium's STOW-RS gateway,
by Orthanc's own ``POST /instances``. Here it and the rest of the generated corpus
(:mod:`tests.support.hostile`) go in through every door; each is refused or stored,
Orthanc and Atrium stay up, and the mirror stays equal to Orthanc.
"""

from __future__ import annotations

import contextlib
import io
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pydicom
import pytest
import requests

from atrium.devenv import wait_until
from atrium.dicom.scan import DEFAULT_LIMITS
from tests.integration.conftest import AtriumUnderTest
from tests.support.hostile import corpus, nested_sequences, ordinary

pytestmark = pytest.mark.integration

FAILED_SOP_SEQUENCE, FAILURE_REASON = "00081198", "00081197"


def storescu(under_test: AtriumUnderTest, path: Path, calling_aet: str = "MAPPED_AE",
             verbose: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", *(["-v"] if verbose else []), "-aet", calling_aet,
                           "-aec", "ATRIUM", "127.0.0.1", str(under_test.dicom_port),
                           str(path)],
                          capture_output=True, text=True, timeout=120, check=False)


def stow(under_test: AtriumUnderTest, blobs: list[bytes], role: str = "clinician"
         ) -> requests.Response:
    boundary = uuid.uuid4().hex
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n"
                    + blob + b"\r\n" for blob in blobs) + b"--" + boundary.encode() + b"--\r\n"
    return requests.post(
        f"{under_test.url}/dicom-web/studies", data=body, timeout=60,
        headers={**under_test.auth(role),
                 "Content-Type": f'multipart/related; type="application/dicom"; '
                                 f'boundary={boundary}',
                 "Accept": "application/dicom+json"})


def sop_uid(blob: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True).SOPInstanceUID)


def alive(under_test: AtriumUnderTest) -> bool:
    process = under_test.orthanc.proc
    if process is None or process.poll() is not None:
        return False
    return requests.get(f"{under_test.url}/api/health", timeout=10).status_code == 200


def quarantined(under_test: AtriumUnderTest) -> list[tuple[Any, ...]]:
    return under_test.sql("SELECT orthanc_id, detected_by, reason, object_key, "
                          "removed_from_orthanc, remote_aet FROM quarantined_instances "
                          "ORDER BY quarantined_at")


def verify_clean(under_test: AtriumUnderTest) -> None:
    result = under_test.atrium_cli("-q", "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "clean" in result.stdout


def test_a_nested_file_sent_by_c_store_is_quarantined_and_orthanc_stays_up(
        atrium_factory: Any, tmp_path: Path) -> None:
    under_test: AtriumUnderTest = atrium_factory()
    hostile, fine = tmp_path / "nested.dcm", tmp_path / "fine.dcm"
    hostile.write_bytes(nested_sequences())
    fine_blob = ordinary("FINE-NEIGHBOUR")
    fine.write_bytes(fine_blob)
    for path in (hostile, fine):
        sent = storescu(under_test, path)
        assert sent.returncode == 0, sent.stderr

    wait_until(lambda: len(quarantined(under_test)) == 1, 60, what="the quarantine row")
    orthanc_id, detected_by, reason, object_key, removed, remote_aet = quarantined(under_test)[0]
    assert detected_by == "scan"
    assert f"nest deeper than {DEFAULT_LIMITS.max_depth}" in reason
    assert remote_aet == "MAPPED_AE"
    assert alive(under_test), under_test.orthanc.log_tail()
    # Kept aside whole, and gone from Orthanc, where any reader could trip on it.
    kept = under_test.workdir / "objects" / object_key
    assert kept.read_bytes()[128:132] == b"DICM"
    assert removed is True
    assert requests.get(f"{under_test.url}/instances/{orthanc_id}", timeout=10,
                        headers=under_test.internal_headers).status_code == 404
    # Said by an audit row, a log line, the status route and the command.
    assert under_test.scalar("SELECT count(*) FROM audit_log WHERE action = "
                             "'mirror.quarantine' AND details->>'orthanc_id' = %s",
                             (orthanc_id,)) == 1
    assert f"mirror.quarantined instance={orthanc_id}" in under_test.orthanc.log_tail(400)
    status = requests.get(f"{under_test.url}/api/mirror/status", headers=under_test.auth(),
                          timeout=10).json()
    assert status["quarantine"]["count"] == 1
    assert status["quarantine"]["newest"][0]["orthanc_id"] == orthanc_id
    printed = under_test.atrium_cli("status")
    assert printed.returncode == 0 and orthanc_id in printed.stdout

    # The neighbour is mirrored; after a restart nothing is asked of the file again.
    under_test.wait_mirrored([sop_uid(fine_blob)])
    under_test.restart()
    under_test.wait_caught_up()
    assert alive(under_test), under_test.orthanc.log_tail()
    assert len(quarantined(under_test)) == 1
    verify_clean(under_test)


def test_a_crash_while_orthanc_parses_is_remembered_and_ends_in_quarantine(
        atrium_factory: Any, tmp_path: Path) -> None:
    """The second layer: with the scan's depth limit lifted, the mirror's request
    makes Orthanc crash for real; the next start knows which file it was reading
    and reads it again alone, which crashes Orthanc a second time; the start after
    that quarantines it, and Orthanc stays up — two crashes, no loop."""
    under_test: AtriumUnderTest = atrium_factory(DicomMaxDepth=1_000_000)
    hostile = tmp_path / "nested.dcm"
    hostile.write_bytes(nested_sequences())
    sent = storescu(under_test, hostile, verbose=True)
    # Orthanc stored the file; it may crash on it before storescu releases the
    # association (the mirror reads new files within a fraction of a second).
    assert "Received Store Response (Success)" in sent.stdout + sent.stderr, sent.stderr
    assert sent.returncode == 0 or "Association Release Failed" in sent.stderr, sent.stderr
    memory = under_test.workdir / "mirror" / "parsing"

    def crashed_reading() -> list[str]:
        process = under_test.orthanc.proc
        assert process is not None
        wait_until(lambda: process.poll() is not None, 60, what="Orthanc to crash on the file")
        left = list(memory.iterdir())
        assert len(left) == 1, "the crash memory names the file being parsed"
        lines = left[0].read_text().splitlines()
        return lines[:lines.index(".")]  # a record ends with its "." line

    first = crashed_reading()
    assert len(first) == 1 and " " not in first[0]
    suspect = first[0]
    # The start reads the suspect again alone (the crash may have been a kill -9).
    with contextlib.suppress(RuntimeError):  # it may die before it answers
        under_test.restart()
    assert crashed_reading() == [f"{suspect} again"]

    under_test.restart()
    wait_until(lambda: len(quarantined(under_test)) == 1, 60, what="the quarantine row")
    orthanc_id, detected_by, reason, *_ = quarantined(under_test)[0]
    assert detected_by == "crash"
    assert "stopped while reading" in reason
    assert orthanc_id == suspect
    under_test.wait_caught_up()
    assert alive(under_test), under_test.orthanc.log_tail()
    under_test.restart()
    under_test.wait_caught_up()
    assert alive(under_test), under_test.orthanc.log_tail()
    verify_clean(under_test)


def test_stow_of_the_nested_file_is_refused_and_orthanc_stays_up(
        atrium: AtriumUnderTest) -> None:
    refused = stow(atrium, [nested_sequences()])
    assert refused.status_code == 409, refused.text
    failures = refused.json()[FAILED_SOP_SEQUENCE]["Value"]
    assert failures[0][FAILURE_REASON]["Value"] == [0xC000]
    assert "nest deeper than" in refused.headers["Warning"]
    assert alive(atrium)

    good = ordinary("STOW-NEIGHBOUR")
    mixed = stow(atrium, [good, nested_sequences()])
    assert mixed.status_code == 202, mixed.text
    answer = mixed.json()
    assert len(answer[FAILED_SOP_SEQUENCE]["Value"]) == 1
    assert len(answer["00081199"]["Value"]) == 1  # ReferencedSOPSequence: the good one
    assert alive(atrium)
    atrium.wait_mirrored([sop_uid(good)])


def test_a_file_nested_to_the_limit_passes_every_door_that_parses_on_an_http_thread(
        atrium: AtriumUnderTest) -> None:
    """The limit leaves Orthanc's HTTP threads room: nested 48 levels, a file
    crashed Orthanc through STOW-RS and through a QIDO-RS ``includefield``."""
    deepest = DEFAULT_LIMITS.max_depth
    blob = nested_sequences(deepest, patient_id=f"NESTED-{deepest}")
    stored = stow(atrium, [blob], role="admin")
    assert stored.status_code == 200, stored.text[:300]
    study = str(pydicom.dcmread(io.BytesIO(blob), stop_before_pixels=True).StudyInstanceUID)
    # The plugin parses the whole file for an includefield (and leaves sequences out).
    # The gateway asks it only for instances the mirror has.
    atrium.wait_mirrored([sop_uid(blob)])
    found = requests.get(f"{atrium.url}/dicom-web/instances", timeout=60,
                         headers=atrium.auth("admin"),
                         params={"StudyInstanceUID": study, "includefield": "0040A730"})
    assert found.status_code == 200, found.text[:300]
    assert [item["00080018"]["Value"][0] for item in found.json()] == [sop_uid(blob)]
    orthanc_id = requests.post(f"{atrium.url}/tools/lookup", data=sop_uid(blob), timeout=60,
                               headers=atrium.internal_headers).json()[0]["ID"]
    tags = requests.get(f"{atrium.url}/instances/{orthanc_id}/tags?short", timeout=60,
                        headers=atrium.internal_headers)
    assert tags.status_code == 200
    depth, item = 0, tags.json()
    while "0040,a730" in item:  # ContentSequence → its first item → the next one down
        depth, item = depth + 1, item["0040,a730"][0]
    assert depth == deepest
    other = nested_sequences(deepest, patient_id=f"NESTED-API-{deepest}")
    uploaded = requests.post(f"{atrium.url}/api/instances", data=other, timeout=60,
                             headers={**atrium.auth("clinician"),
                                      "Content-Type": "application/dicom"})
    assert uploaded.status_code in (200, 201), uploaded.text[:300]
    atrium.wait_mirrored([sop_uid(blob), sop_uid(other)])
    assert alive(atrium)


def _send(atrium: AtriumUnderTest, door: str, name: str, blob: bytes, directory: Path
          ) -> int:
    """Sends one file through one door; the HTTP status (C-STORE: 0 stored, 1 not)."""
    if door == "stow":
        return stow(atrium, [blob]).status_code
    if door == "api":
        return requests.post(f"{atrium.url}/api/instances", data=blob, timeout=60,
                             headers={**atrium.auth("clinician"),
                                      "Content-Type": "application/dicom"}).status_code
    if door == "rest":
        return requests.post(f"{atrium.url}/instances", data=blob, timeout=60,
                             headers=atrium.auth("admin")).status_code
    path = directory / f"{name}.dcm"
    path.write_bytes(blob)
    return storescu(atrium, path).returncode


@pytest.mark.parametrize("door", ["stow", "api", "rest", "c-store"])
def test_the_corpus_through_each_door_is_refused_or_stored_and_everything_stays_up(
        atrium_factory: Any, tmp_path: Path, door: str) -> None:
    under_test: AtriumUnderTest = atrium_factory()
    outcomes: dict[str, int] = {}
    for name, blob in corpus().items():
        outcomes[name] = _send(under_test, door, name, blob, tmp_path)
        assert alive(under_test), f"{name} through {door}:\n{under_test.orthanc.log_tail()}"
    if door != "c-store":
        assert all(status < 500 for status in outcomes.values()), outcomes
        # What the scan refuses never reaches Orthanc through an HTTP door.
        refused = {name for name, status in outcomes.items() if status >= 400}
        assert {"nested_sequences", "truncated", "length_beyond_file", "wrong_vr",
                "odd_binary_length", "huge_pixel_matrix", "header_without_dataset",
                "empty", "not_dicom"} <= refused, outcomes
    under_test.wait_caught_up()
    under_test.restart()
    under_test.wait_caught_up()
    assert alive(under_test), under_test.orthanc.log_tail()
    # Whatever Orthanc kept is mirrored or quarantined, nothing else.
    wait_until(lambda: under_test.atrium_cli("-q", "verify").returncode == 0, 60,
               what="atrium verify to report a clean mirror")
    verify_clean(under_test)
