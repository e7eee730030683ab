"""WADO-RS through the gateway, streamed: a large study goes out instance by
instance without the gateway holding it, every byte intact, audited before the
first byte; and an error answer of the plugin reaches the client as it was sent."""

from __future__ import annotations

import hashlib
import io
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from atrium.dicomweb.multipart_stream import iter_parts, multipart_type
from tests.integration.conftest import AtriumUnderTest
from tests.support.dicomgen import StudySpec, make_instance

ORG = "Streaming Hospital"
INSTANCES = 60
ROWS = 1448  # 1448 x 1448 x 16 bits: 4.2 MB of pixels per instance
STOW_BATCH = 10
MiB = 1024 * 1024


def resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@contextmanager
def peak_resident(pid: int, interval: float = 0.02) -> Iterator[list[int]]:
    """``[baseline, peak]`` resident bytes of ``pid`` while in the ``with``."""
    sample = [resident_bytes(pid)] * 2
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            sample[1] = max(sample[1], resident_bytes(pid))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield sample
    finally:
        done.set()
        watcher.join()
        sample[1] = max(sample[1], resident_bytes(pid))


def store_study(atrium: AtriumUnderTest, spec: StudySpec) -> tuple[dict[str, str], int]:
    """Stores ``spec`` through the gateway as a clinician of ``ORG``: the SHA-256 of
    each instance by SOP Instance UID, and the study's size in bytes."""
    stower = DICOMwebClient(url=f"{atrium.url}/dicom-web",
                            headers=atrium.auth("clinician", ORG))
    series_uid = pydicom.uid.generate_uid()
    count = spec.series * spec.instances_per_series
    hashes: dict[str, str] = {}
    size = 0
    for start in range(1, count + 1, STOW_BATCH):
        batch = [make_instance(spec, series_uid, 1, n)
                 for n in range(start, min(start + STOW_BATCH, count + 1))]
        datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in batch]
        stower.store_instances(datasets)
        for blob, dataset in zip(batch, datasets, strict=True):
            hashes[dataset.SOPInstanceUID] = hashlib.sha256(blob).hexdigest()
            size += len(blob)
    atrium.wait_mirrored(list(hashes), timeout=120)
    return hashes, size


@pytest.fixture(scope="module")
def small_study(atrium: AtriumUnderTest) -> StudySpec:
    spec = StudySpec(patient_id=f"STREAM-S-{uuid.uuid4().hex[:6]}", series=1,
                     instances_per_series=3)
    store_study(atrium, spec)
    return spec


def test_a_large_study_is_streamed_without_the_gateway_holding_it(
        atrium_factory: Callable[..., AtriumUnderTest]) -> None:
    """60 instances of 4.2 MB (250 MB): Orthanc's resident memory grows by well
    under a third of that while a client reads the study. Orthanc's own storage
    cache (128 MB by default) is turned off so that what is measured is the
    gateway's share; the DICOMweb plugin itself reads one instance at a time."""
    atrium = atrium_factory(orthanc_settings={"MaximumStorageCacheSize": 0})
    spec = StudySpec(patient_id=f"STREAM-{uuid.uuid4().hex[:6]}", rows=ROWS, series=1,
                     instances_per_series=INSTANCES)
    hashes, size = store_study(atrium, spec)
    assert atrium.orthanc.proc is not None
    received: dict[str, str] = {}
    with peak_resident(atrium.orthanc.proc.pid) as memory, requests.get(
            f"{atrium.url}/dicom-web/studies/{spec.study_uid}", stream=True, timeout=300,
            headers={**atrium.auth("clinician", ORG),
                     "Accept": 'multipart/related; type="application/dicom"'}) as answer:
        assert answer.status_code == 200, answer.text[:300]
        found = multipart_type(answer.headers["Content-Type"])
        assert found is not None and found[1] == "application/dicom"
        for part in iter_parts(answer.iter_content(MiB), found[2]):
            dataset = pydicom.dcmread(io.BytesIO(part.body), stop_before_pixels=True)
            received[dataset.SOPInstanceUID] = hashlib.sha256(part.body).hexdigest()
    growth = memory[1] - memory[0]
    print(f"study {size / MiB:.0f} MiB, Orthanc resident growth {growth / MiB:.1f} MiB")
    assert received == hashes  # every instance, once, byte for byte
    assert growth < size / 3, f"Orthanc grew by {growth / MiB:.0f} MiB for a " \
                              f"{size / MiB:.0f} MiB study"
    # The retrieval was recorded, as an access to an identified patient's data.
    assert atrium.scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'GET dicom-web' "
        "AND details->>'study_instance_uid' = %s AND (details->>'status')::int = 200 "
        "AND phi_accessed", (spec.study_uid,)) >= 1


def test_a_streamed_retrieval_stays_within_the_callers_organization(
        atrium: AtriumUnderTest, small_study: StudySpec) -> None:
    spec = small_study
    refused = requests.get(f"{atrium.url}/dicom-web/studies/{spec.study_uid}", stream=True,
                           timeout=60, headers=atrium.auth("clinician", "Another Hospital"))
    assert refused.status_code == 404 and len(refused.content) < 10_000
    with requests.get(f"{atrium.url}/dicom-web/studies/{spec.study_uid}", stream=True,
                      timeout=60, headers=atrium.auth("clinician", ORG)) as allowed:
        assert allowed.status_code == 200
        found = multipart_type(allowed.headers["Content-Type"])
        assert found is not None
        assert len(list(iter_parts(allowed.iter_content(MiB), found[2]))) == 3


def test_an_error_answer_of_the_plugin_reaches_the_client_byte_for_byte(
        atrium: AtriumUnderTest, small_study: StudySpec) -> None:
    """A series that is not in the (in scope) study: the plugin's own 4xx, relayed
    with its status, its content type (here none) and its bytes. (A binary error
    body on orthanc-python 4.0: tests/unit/test_multipart_stream.py.)"""
    spec = small_study
    path = f"/studies/{spec.study_uid}/series/1.2.826.0.1.3680043.99.{uuid.uuid4().int % 10**9}"
    accept = {"Accept": 'multipart/related; type="application/dicom"'}
    direct = requests.get(f"{atrium.url}/atrium-dicomweb-plugin{path}", timeout=60,
                          headers={**atrium.internal_headers, **accept})
    relayed = requests.get(f"{atrium.url}/dicom-web{path}", timeout=60,
                           headers={**atrium.auth("clinician", ORG), **accept})
    assert direct.status_code >= 400
    assert relayed.status_code == direct.status_code
    assert relayed.headers.get("Content-Type") == direct.headers.get("Content-Type")
    assert relayed.content == direct.content

