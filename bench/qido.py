"""QIDO-RS ``/series`` and ``/instances`` across studies: what a caller's search
costs when Orthanc holds far more than the caller may see.

One Orthanc with Atrium; ``--studies`` single-series studies of the default
organization (stored over Orthanc's REST API), and a small organization's few
studies (stored by STOW-RS through the gateway by its clinician). Requests one
after another on a kept-alive connection:

* the plugin's ``/series`` and ``/instances`` over all of Orthanc, at its private
  root: the search the gateway used to forward before keeping the answer to the
  caller's studies;
* the same searches through the gateway by the small organization's clinician
  (its page chosen in SQL, the plugin asked for those items only);
* a page of 100 series, the plugin directly and through the gateway by an
  administrator of the large organization.

Prints p50/p99 of each and the ratios, for ``docs/BENCHMARKS.md``.

    .venv/bin/python bench/qido.py [--studies 2000] [--requests 200]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import psycopg
import pydicom
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from atrium.auth.internal import INTERNAL_HEADER, internal_secret  # noqa: E402
from atrium.devenv import LocalCluster  # noqa: E402
from bench.auth import line, timed  # noqa: E402
from bench.common import private_cluster, start_atrium, stow_body  # noqa: E402
from tests.support.dicomgen import StudySpec, make_study  # noqa: E402

SMALL = "Bench Small Clinic"


def stow(url: str, headers: dict[str, str], blobs: list[bytes]) -> None:
    body, content_type = stow_body(blobs)
    requests.post(f"{url}/dicom-web/studies", data=body, timeout=120, headers={
        **headers, "Accept": "application/dicom+json", "Content-Type": content_type,
    }).raise_for_status()


def mirrored_instances(cluster: LocalCluster) -> int:
    with psycopg.connect(cluster.url("qido_atrium"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM instances").fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=200,
                        help="per measure of a small organization's search")
    parser.add_argument("--slow-requests", type=int, default=5,
                        help="per measure of a search of all of Orthanc (seconds each)")
    parser.add_argument("--page-requests", type=int, default=50,
                        help="per measure of a page of 100")
    args = parser.parse_args()

    root, cluster = private_cluster("atrium-bench-qido-")
    orthanc = None
    try:
        orthanc = start_atrium(root, cluster, "qido")
        url, workdir = orthanc.url, root / "orthanc"
        plugin_root = orthanc.config["DicomWeb"]["Root"].rstrip("/")
        internal = {INTERNAL_HEADER: internal_secret(workdir)}
        issuer = load_or_create(workdir)
        admin = {"Authorization": f"Bearer {issuer.mint('bench', ['admin'], 'Default')}"}
        clinician = {"Authorization": f"Bearer {issuer.mint('small', ['clinician'], SMALL)}"}

        started = time.perf_counter()
        with requests.Session() as session:
            for n in range(args.studies):
                for blob in make_study(StudySpec(patient_id=f"QIDO-{n}", series=1,
                                                 instances_per_series=1)):
                    session.post(f"{url}/instances", data=blob, headers=internal,
                                 timeout=30).raise_for_status()
        small_blobs = [blob for n in range(5) for blob in make_study(StudySpec(
            patient_id=f"SMALL-{n}", series=2, instances_per_series=2))]
        stow(url, clinician, small_blobs)
        expected = args.studies + len(small_blobs)
        deadline = time.monotonic() + 300
        while mirrored_instances(cluster) < expected:
            if time.monotonic() > deadline:
                raise SystemExit("the mirror did not catch up within 300 s")
            time.sleep(1)
        print(f"stored and mirrored {expected} instances in "
              f"{time.perf_counter() - started:.0f} s")
        small_series = {str(pydicom.dcmread(io.BytesIO(b)).SeriesInstanceUID)
                        for b in small_blobs}

        count, plugin = args.requests, plugin_root
        slow, pages = args.slow_requests, args.page_requests
        with requests.Session() as session:
            answer = session.get(f"{url}/dicom-web/series", headers=clinician, timeout=30)
            found = {item["0020000E"]["Value"][0] for item in answer.json()}
            assert found == small_series, "the small organization's search is not exact"
            all_series = timed(session, f"{url}{plugin}/series", internal, slow, warm=1)
            small = timed(session, f"{url}/dicom-web/series", clinician, count)
            all_instances = timed(session, f"{url}{plugin}/instances", internal, slow, warm=1)
            small_instances = timed(session, f"{url}/dicom-web/instances", clinician, count)
            page_plugin = timed(session, f"{url}{plugin}/series?limit=100", internal, pages)
            page_gateway = timed(session, f"{url}/dicom-web/series?limit=100", admin, pages)

        print(f"requests: {count} per small search, {slow} per search of all of Orthanc, "
              f"{pages} per page of 100; one client, kept-alive connection; Orthanc holds "
              f"{args.studies + 10} series, the small organization 10")
        print(line("plugin /series, all of Orthanc (forwarded before)", all_series))
        print(line("gateway /series, small organization (10)", small))
        print(line("plugin /instances, all of Orthanc (forwarded before)", all_instances))
        print(line("gateway /instances, small organization (20)", small_instances))
        print(line("plugin /series?limit=100", page_plugin))
        print(line("gateway /series?limit=100, large organization", page_gateway))

        def ratio(a: list[float], b: list[float]) -> float:
            return statistics.median(a) / statistics.median(b)

        print(f"small organization's /series: {ratio(small, all_series):.3f}x the plugin's "
              f"search of all of Orthanc; /instances: {ratio(small_instances, all_instances):.3f}x;"
              f" a page of 100 through the gateway: {ratio(page_gateway, page_plugin):.2f}x "
              "the plugin's")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
    finally:
        if orthanc is not None:
            orthanc.stop()
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
