"""C-FIND benchmark: Atrium's organization-scoped SCP against Orthanc's own.

One run, same machine, same data: two Orthancs on one private PostgreSQL cluster,
one without Atrium (its own C-FIND SCP answers from its index) and one with Atrium
(the plugin answers from the mirror). The same generated studies are stored into
both by dcmtk's ``storescu`` from a workstation AE title that Atrium maps to an
organization. A pynetdicom SCU then sends the same C-FIND requests to each, over
one association per round, in rounds that alternate which Orthanc goes first;
each request's time runs from the request to its final response.

Queries: a patient's studies (PatientID), a name wildcard, a date range, all
studies of the organization, the series of one study, the instances of one series.

Prints p50/p95 per Orthanc, per query kind and overall, for ``docs/BENCHMARKS.md``.

    .venv/bin/python bench/cfind.py [--studies 200] [--repeats 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atrium.devenv import (  # noqa: E402
    REPO_ROOT,
    LocalCluster,
    OrthancProcess,
    orthanc_config,
    wait_until,
)
from atrium.migrations import apply_migrations  # noqa: E402
from bench.common import private_cluster  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.support.dicomgen import StudySpec, make_instance, write_files  # noqa: E402

WORKSTATION = "BENCH_WS"
ORG = "Bench Radiology"
WORDS = ("chest", "abdomen", "brain", "spine", "knee", "cardiac")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def start(root: Path, cluster: LocalCluster, name: str, with_atrium: bool
          ) -> tuple[OrthancProcess, int, str]:
    index_db, atrium_db = f"cfind_index_{name}", f"cfind_atrium_{name}"
    cluster.ensure_database(index_db)
    cluster.ensure_database(atrium_db)
    database_url = cluster.url(atrium_db)
    apply_migrations(database_url)
    workdir = root / name
    dicom_port = free_port()
    base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
    config = orthanc_config(
        base=base, data_dir=workdir, cluster=cluster, index_database=index_db,
        http_port=free_port(), dicom_port=dicom_port, aet="ATRIUM",
        atrium={"DatabaseUrl": database_url, "MirrorPollSeconds": 0.5,
                "AetOrganizations": {WORKSTATION: ORG},
                "StorageUrl": f"file://{workdir / 'objects'}"},
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py", with_atrium=with_atrium)
    config["DicomModalities"] = {"bench": [WORKSTATION, "127.0.0.1", free_port()]}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    # DCMTK reads TCP_NODELAY from the environment; without it each response waits
    # on a delayed ACK, a floor shared by both SCPs that hides their difference.
    env["TCP_NODELAY"] = "1"
    process = OrthancProcess(workdir, config, env)
    process.start()
    return process, dicom_port, database_url


def generate(directory: Path, studies: int) -> list[dict[str, str]]:
    """``studies`` studies of 2 series × 2 instances over studies/4 patients; their keys."""
    blobs: list[bytes] = []
    keys = []
    for n in range(studies):
        spec = StudySpec(patient_id=f"CF-{n // 4:05d}", patient_name=f"Bench^P{n // 4:05d}",
                         accession=f"CFA{n:06d}", description=f"CT {WORDS[n % len(WORDS)]}")
        date = f"2024{1 + n % 12:02d}{1 + n % 28:02d}"
        series = []
        for s in (1, 2):
            series_uid = generate_uid()
            series.append(series_uid)
            for i in (1, 2):
                blobs.append(make_instance(spec, series_uid, s, i, StudyDate=date))
        keys.append({"PatientID": spec.patient_id, "StudyInstanceUID": spec.study_uid,
                     "SeriesInstanceUID": series[0]})
    write_files(directory, blobs)
    return keys


def store(files: Path, port: int) -> None:
    paths = sorted(str(p) for p in files.iterdir())
    chunks = [paths[i::2] for i in range(2)]
    senders = [subprocess.Popen(["storescu", "-aet", WORKSTATION, "-aec", "ATRIUM",
                                 "127.0.0.1", str(port), *chunk]) for chunk in chunks]
    for sender in senders:
        if sender.wait(timeout=1800) != 0:
            raise SystemExit("storescu failed")


def queries(keys: list[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """Kind → identifiers (each with the keys to return)."""
    picks = keys[:: max(1, len(keys) // 10)][:10]
    study_keys = {"StudyInstanceUID": "", "PatientName": "", "StudyDate": "",
                  "AccessionNumber": "", "StudyDescription": ""}
    return {
        "patient's studies": [{"QueryRetrieveLevel": "STUDY", **study_keys,
                               "PatientID": k["PatientID"]} for k in picks],
        "name wildcard": [{"QueryRetrieveLevel": "STUDY", **study_keys,
                           "PatientName": f"Bench^P{i:02d}*"} for i in range(10)],
        "date range": [{"QueryRetrieveLevel": "STUDY", **study_keys,
                        "StudyDate": f"2024{m:02d}01-2024{m:02d}10"} for m in range(1, 11)],
        "all studies": [{"QueryRetrieveLevel": "STUDY", **study_keys}],
        "series of a study": [{"QueryRetrieveLevel": "SERIES",
                               "StudyInstanceUID": k["StudyInstanceUID"],
                               "SeriesInstanceUID": "", "Modality": "",
                               "SeriesNumber": ""} for k in picks],
        "instances of a series": [{"QueryRetrieveLevel": "IMAGE",
                                   "StudyInstanceUID": k["StudyInstanceUID"],
                                   "SeriesInstanceUID": k["SeriesInstanceUID"],
                                   "SOPInstanceUID": ""} for k in picks],
    }


def dataset(identifier: dict[str, str]) -> Dataset:
    ds = Dataset()
    for keyword, value in identifier.items():
        setattr(ds, keyword, value)
    return ds


def run_queries(port: int, plan: dict[str, list[dict[str, str]]], repeats: int
                ) -> tuple[dict[str, list[float]], dict[str, int]]:
    ae = AE(ae_title=WORKSTATION)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title="ATRIUM")
    if not assoc.is_established:
        raise SystemExit(f"association to port {port} refused")
    # pynetdicom writes a request's command and dataset in separate sends; with
    # Nagle's algorithm on, the second waits for a delayed ACK (~40 ms) and every
    # query, to either SCP, would sit on that floor.
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    samples: dict[str, list[float]] = {kind: [] for kind in plan}
    answers: dict[str, int] = {kind: 0 for kind in plan}
    try:
        for kind, identifiers in plan.items():
            for r in range(repeats):
                for identifier in identifiers:
                    started = time.perf_counter()
                    count = 0
                    for status, found in assoc.send_c_find(
                            dataset(identifier), StudyRootQueryRetrieveInformationModelFind):
                        if status and status.Status in (0xFF00, 0xFF01) and found is not None:
                            count += 1
                    samples[kind].append((time.perf_counter() - started) * 1000)
                    if r == 0:
                        answers[kind] += count
    finally:
        assoc.release()
    return samples, answers


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5,
                        help="times each identifier is sent per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    root, cluster = private_cluster("atrium-bench-cfind-")
    processes: list[OrthancProcess] = []
    try:
        plain, plain_port, _ = start(root, cluster, "plain", with_atrium=False)
        processes.append(plain)
        atrium, atrium_port, atrium_db = start(root, cluster, "atrium", with_atrium=True)
        processes.append(atrium)
        keys = generate(root / "files", args.studies)
        started = time.perf_counter()
        store(root / "files", plain_port)
        store(root / "files", atrium_port)
        expected = args.studies * 4

        def mirrored() -> bool:
            with psycopg.connect(atrium_db, autocommit=True) as conn:
                row = conn.execute("SELECT count(*) FROM instances WHERE deleted_at IS NULL"
                                   ).fetchone()
            return bool(row and row[0] >= expected)

        wait_until(mirrored, 300, what="the mirror to hold every instance")
        print(f"stored {expected} instances into each Orthanc in "
              f"{time.perf_counter() - started:.0f} s")
        plan = queries(keys)
        totals: dict[str, dict[str, list[float]]] = {"orthanc": {}, "atrium": {}}
        rounds: list[tuple[float, float]] = []
        for n in range(args.rounds):
            order = [("orthanc", plain_port), ("atrium", atrium_port)]
            if n % 2:
                order.reverse()
            p95 = {}
            for name, port in order:
                samples, answers = run_queries(port, plan, args.repeats)
                if n == 0:
                    print(f"{name}: answers per kind (first pass) {answers}")
                for kind, values in samples.items():
                    totals[name].setdefault(kind, []).extend(values)
                p95[name] = percentile([v for vs in samples.values() for v in vs], 0.95)
            rounds.append((p95["orthanc"], p95["atrium"]))
            print(f"round {n + 1}: p95 Orthanc {p95['orthanc']:.1f} ms, "
                  f"Atrium {p95['atrium']:.1f} ms")
        print(f"\n{'query':24} {'Orthanc p50/p95 ms':>20} {'Atrium p50/p95 ms':>20}")
        for kind in plan:
            o, a = totals["orthanc"][kind], totals["atrium"][kind]
            print(f"{kind:24} {percentile(o, .5):9.1f} /{percentile(o, .95):7.1f} "
                  f"{percentile(a, .5):9.1f} /{percentile(a, .95):7.1f}")
        every_o = [v for vs in totals["orthanc"].values() for v in vs]
        every_a = [v for vs in totals["atrium"].values() for v in vs]
        print(f"{'all':24} {percentile(every_o, .5):9.1f} /{percentile(every_o, .95):7.1f} "
              f"{percentile(every_a, .5):9.1f} /{percentile(every_a, .95):7.1f}")
        ratios = [a / o for o, a in rounds]
        print(f"p95 Atrium/Orthanc per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
              f"median {statistics.median(ratios):.2f}")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
    finally:
        for process in processes:
            process.stop()
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
