"""Study search benchmark: Atrium's ``GET /api/studies`` at scale, and against
Orthanc's own ``/tools/find`` on the same studies.

1. **Scale.** 120,000 studies with 1,200,000 instances written straight into the
   mirror's tables (one organization: the caller's, so nothing is filtered away by
   scope), then the searches a study list makes — description words, modality, a
   date range, accession number, StudyInstanceUID, a patient, combinations —
   through the HTTP API with a clinician's token, then the same searches with a
   researcher's (who sees de-identified patients' studies only, one in five here),
   and a modality only a few studies have in a second series. p50/p95 per kind and
   overall (goal p95 ≤ 20 ms).
2. **Against Orthanc.** ``--orthanc-studies`` (default 20,000) one-instance studies
   stored in Orthanc and mirrored by Atrium; the same searches as ``/tools/find``
   queries and as ``/api/studies`` queries. Prints both and the ratio (goal ≥ 10×).

    .venv/bin/python bench/search.py [--studies 100000] [--orthanc-studies 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid  # noqa: E402

from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from atrium.auth.internal import INTERNAL_HEADER, internal_secret  # noqa: E402
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
from tests.support.dicomgen import StudySpec, make_instance  # noqa: E402

WORDS = ("chest", "abdomen", "pelvis", "brain", "spine", "knee", "shoulder", "cardiac",
         "angiography", "contrast", "trauma", "follow-up", "screening", "oncology", "neck")
MODALITIES = ("CT", "MR", "US", "XR", "PT", "NM")
RARE = "SEG"  # a second series of one study in 2,000
ORG = "Bench Search"
REPEATS = 40

_GENERATE = ("""
WITH org AS (INSERT INTO organizations (name) VALUES (%(org)s)
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING id)
INSERT INTO patients (patient_id, organization_id, first_name, last_name, date_of_birth, sex,
                      is_deidentified)
SELECT 'BP' || g, org.id, 'Given' || (g %% 997), 'Family' || (g %% 1013),
       DATE '1930-01-01' + (g %% 25000), (ARRAY['F','M'])[1 + g %% 2], g %% 5 = 0
FROM generate_series(1, %(patients)s) g, org
""", """
INSERT INTO studies (study_instance_uid, patient_id, organization_id, accession_number,
                     study_date, study_time, study_description, modality, number_of_series,
                     number_of_instances)
SELECT '1.2.826.0.1.3680043.10.543.' || g, p.id, p.organization_id, 'BACC' || g,
       DATE '2015-01-01' + (g %% 3650), TIME '08:00' + (g %% 600) * INTERVAL '1 minute',
       (%(words)s::text[])[1 + g %% 15] || ' ' || (%(words)s::text[])[1 + (g / 15) %% 15]
           || ' study',
       (%(modalities)s::text[])[1 + g %% 6], 1, %(per_study)s
FROM generate_series(1, %(studies)s) g
JOIN (SELECT id, organization_id, row_number() OVER (ORDER BY patient_id) AS n
      FROM patients WHERE patient_id LIKE 'BP%%') p ON p.n = 1 + g %% %(patients)s
""", """
INSERT INTO series (series_instance_uid, study_id, series_number, modality,
                    number_of_instances)
SELECT study_instance_uid || '.1', id, 1, modality, %(per_study)s FROM studies
WHERE study_instance_uid LIKE '1.2.826.0.1.3680043.10.543.%%'
""", """
INSERT INTO instances (sop_instance_uid, series_id, instance_number, file_size_bytes)
SELECT se.series_instance_uid || '.' || n, se.id, n, 524288
FROM series se, generate_series(1, %(per_study)s) n
WHERE se.series_instance_uid LIKE '1.2.826.0.1.3680043.10.543.%%'
""", """
INSERT INTO series (series_instance_uid, study_id, series_number, modality,
                    number_of_instances)
SELECT study_instance_uid || '.2', id, 2, %(rare)s, 0 FROM studies
WHERE study_instance_uid LIKE '1.2.826.0.1.3680043.10.543.%%'
  AND substring(study_instance_uid FROM 28)::integer %% 2000 = 7
""",
    # VACUUM as well as ANALYZE: a search walks an index and reads only the entries
    # whose page the visibility map marks all-visible (sql/0025). Rows written a
    # moment ago are on pages not marked yet, so each entry would cost a heap read
    # until autovacuum comes by — the state of a table just bulk-loaded, not of a
    # settled archive. Measured right after the generation, the searches that walk
    # far took two to four times as long (researcher, word + modality: p95 38 ms).
    "VACUUM (ANALYZE) patients", "VACUUM (ANALYZE) studies", "VACUUM (ANALYZE) series",
    "VACUUM (ANALYZE) instances")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def start(root: Path, cluster: LocalCluster) -> tuple[OrthancProcess, str]:
    cluster.ensure_database("index")
    cluster.ensure_database("atrium")
    database_url = cluster.url("atrium")
    apply_migrations(database_url)
    workdir = root / "orthanc"
    base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
    config = orthanc_config(
        base=base, data_dir=workdir, cluster=cluster, index_database="index",
        http_port=free_port(), dicom_port=free_port(), aet="ATRIUM",
        atrium={"DatabaseUrl": database_url, "MirrorPollSeconds": 1,
                "StorageUrl": f"file://{workdir / 'objects'}"},
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    process = OrthancProcess(workdir, config, env)
    process.start()
    return process, database_url


def measure(call: Callable[[], requests.Response], repeats: int = REPEATS) -> list[float]:
    call().raise_for_status()  # warm
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call().raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def api_searches(patient: str, uid: str, accession: str) -> dict[str, dict[str, str]]:
    return {
        "description word": {"q": "angiography"},
        "two words": {"q": "cardiac contrast"},
        "modality": {"modality": "MR"},
        "date range (1 month)": {"date_from": "2019-03-01", "date_to": "2019-03-31"},
        "modality + date range": {"modality": "CT", "date_from": "2018-01-01",
                                  "date_to": "2018-12-31"},
        "accession number": {"accession_number": accession},
        "study instance uid": {"study_instance_uid": uid},
        "patient": {"patient_id": patient},
        "word + modality": {"q": "brain", "modality": "MR"},
        "rare modality": {"modality": RARE},
    }


def part_scale(url: str, database_url: str, callers: dict[str, dict[str, str]],
               studies: int) -> None:
    started = time.perf_counter()
    with psycopg.connect(database_url, autocommit=True) as conn:
        params = {"org": ORG, "patients": studies // 3, "studies": studies, "per_study": 10,
                  "words": list(WORDS), "modalities": list(MODALITIES), "rare": RARE}
        for statement in _GENERATE:
            conn.execute(statement, params if "%(" in statement else None)
        counts = conn.execute("SELECT (SELECT count(*) FROM studies), "
                              "(SELECT count(*) FROM instances)").fetchone()
        patient = str(conn.execute(
            "SELECT id FROM patients WHERE patient_id = 'BP77'").fetchone()[0])
    print(f"scale: {counts[0]:,} studies, {counts[1]:,} instances generated in "
          f"{time.perf_counter() - started:.0f} s")
    n = studies // 2
    searches = api_searches(patient, f"1.2.826.0.1.3680043.10.543.{n}", f"BACC{n}")
    everything: list[float] = []
    with requests.Session() as session:
        for who, headers in callers.items():
            for label, params in searches.items():
                samples = measure(lambda p=params, h=headers: session.get(
                    f"{url}/api/studies", params={**p, "limit": 50}, headers=h, timeout=60))
                everything.extend(samples)
                print(f"  {who:10} {label:24} p50 {statistics.median(samples):6.1f} ms   "
                      f"p95 {percentile(samples, 0.95):6.1f} ms")
    print(f"study search over {counts[0]:,} studies: p50 {statistics.median(everything):.1f} ms"
          f"   p95 {percentile(everything, 0.95):.1f} ms   (goal p95 ≤ 20 ms)")


def part_orthanc(url: str, database_url: str, headers: dict[str, str],
                 internal: dict[str, str], count: int) -> None:
    rng = random.Random(7)
    specs = []
    for n in range(count):
        words = f"{WORDS[n % 15]} {WORDS[(n // 15) % 15]} exam"
        specs.append(StudySpec(patient_id=f"OP{n % 5000}", patient_name=f"Family{n % 997}^Given",
                               accession=f"OACC{n}", description=words,
                               modality=MODALITIES[n % 6], series=1, instances_per_series=1,
                               rows=4))
    rng.shuffle(specs)
    started = time.perf_counter()

    def store(chunk: list[StudySpec]) -> None:
        with requests.Session() as session:
            for spec in chunk:
                blob = make_instance(spec, generate_uid(), 1, 1)
                session.post(f"{url}/instances", data=blob, headers=internal,
                             timeout=60).raise_for_status()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store, [specs[i::4] for i in range(4)]))

    def mirrored() -> bool:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM studies WHERE accession_number LIKE 'OACC%'"
                               ).fetchone()
        return bool(row and row[0] >= count)

    wait_until(mirrored, 600, what="the studies in the mirror")
    print(f"orthanc: {count:,} studies stored and mirrored in "
          f"{time.perf_counter() - started:.0f} s")
    target = specs[len(specs) // 2]
    finds = {
        "description word": ({"StudyDescription": "*angiography*"}, {"q": "angiography"}),
        "modality": ({"ModalitiesInStudy": "MR"}, {"modality": "MR"}),
        "date range": ({"StudyDate": "20240101-20240131"},
                       {"date_from": "2024-01-01", "date_to": "2024-01-31"}),
        "accession number": ({"AccessionNumber": target.accession},
                             {"accession_number": target.accession}),
        "study instance uid": ({"StudyInstanceUID": target.study_uid},
                               {"study_instance_uid": target.study_uid}),
    }
    orthanc_all: list[float] = []
    atrium_all: list[float] = []
    with requests.Session() as session:
        for label, (find, params) in finds.items():
            orthanc = measure(lambda f=find: session.post(
                f"{url}/tools/find", json={"Level": "Study", "Query": f, "Limit": 50,
                                           "Expand": True}, headers=internal, timeout=120),
                repeats=10)
            atrium = measure(lambda p=params: session.get(
                f"{url}/api/studies", params={**p, "limit": 50}, headers=headers, timeout=60),
                repeats=10)
            orthanc_all.extend(orthanc)
            atrium_all.extend(atrium)
            print(f"  {label:20} /tools/find p50 {statistics.median(orthanc):8.1f} ms   "
                  f"/api/studies p50 {statistics.median(atrium):6.1f} ms   "
                  f"→ {statistics.median(orthanc) / statistics.median(atrium):6.1f}×")
    ratio = statistics.median(orthanc_all) / statistics.median(atrium_all)
    print(f"against Orthanc's /tools/find on {count:,} studies: p50 "
          f"{statistics.median(orthanc_all):.1f} ms vs {statistics.median(atrium_all):.1f} ms "
          f"= {ratio:.1f}× faster (goal ≥ 10×)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=120_000)
    parser.add_argument("--orthanc-studies", type=int, default=20_000)
    parser.add_argument("--keep", action="store_true",
                        help="leave the PostgreSQL cluster running with the generated rows "
                             "and print its URL, to EXPLAIN the searches; stop it with "
                             "pg_ctl (as the postgres user when run as root)")
    args = parser.parse_args()
    root, cluster = private_cluster("atrium-bench-search-")
    process = None
    database_url = None
    try:
        process, database_url = start(root, cluster)
        url = process.url
        workdir = root / "orthanc"
        token = load_or_create(workdir).mint("bench-clinician", ["clinician"], ORG)
        headers = {"Authorization": f"Bearer {token}"}
        researcher = {"Authorization": "Bearer " + load_or_create(workdir).mint(
            "bench-researcher", ["researcher"], ORG)}
        internal = {INTERNAL_HEADER: internal_secret(workdir)}
        # Orthanc's studies go to the default organization: search them as its clinician.
        default = {"Authorization": "Bearer " + load_or_create(workdir).mint(
            "bench-default", ["clinician"], "Default")}
        if args.orthanc_studies:
            part_orthanc(url, database_url, default, internal, args.orthanc_studies)
        if args.studies:
            part_scale(url, database_url, {"clinician": headers, "researcher": researcher},
                       args.studies)
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
    finally:
        if process is not None:
            process.stop()
        if args.keep and database_url is not None:
            print(f"kept: {database_url}  (stop: pg_ctl -D {cluster.pgdata} stop)")
        else:
            cluster.stop("fast")
            shutil.rmtree(root, ignore_errors=True)  # a 100k run leaves ~2 GB
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
