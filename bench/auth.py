"""Request-path benchmark: what Orthanc's hand-off, a bearer token and its audit row
add to a request, and where the milliseconds of an API answer go.

One Orthanc with Atrium (local dev issuer), one client with a kept-alive
connection, requests one after another, so each figure is a request's latency:

* Orthanc's ``GET /system`` with Atrium's internal credential (the request filter's
  cheapest path) against the same request with an administrator's token (token
  signature and claims checked, the user resolved, one audit row committed);
* DICOMweb QIDO-RS ``/studies`` straight to the plugin's private root against the
  same search through Atrium's gateway (token, SQL scoping, audit row);
* ``GET /api/health`` (public: Orthanc's hand-off to the plugin and Atrium's router,
  no token, no row) and ``GET /api/me`` (token, user row, audit row) for the
  absolute figures, with the split of ``/api/me`` that Atrium reports in each
  answer's ``Server-Timing`` header: ``auth`` (token and caller), ``app`` (the
  route), ``audit`` (its row and commit); the rest is Orthanc's HTTP server, the
  hand-off into Python and back, and the client.

Prints p50/p99 of each and the added cost, for ``docs/BENCHMARKS.md``.

    .venv/bin/python bench/auth.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from atrium.auth.internal import INTERNAL_HEADER, internal_secret  # noqa: E402
from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config  # noqa: E402
from atrium.migrations import apply_migrations  # noqa: E402
from bench.common import private_cluster  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.support.dicomgen import StudySpec, make_study  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def timed(session: requests.Session, url: str, headers: dict[str, str], count: int,
          split: dict[str, list[float]] | None = None, warm: int = 20) -> list[float]:
    """Latencies in ms; with ``split``, the answers' Server-Timing parts as well."""
    for _ in range(warm):  # warm caches and connections
        session.get(url, headers=headers, timeout=300).raise_for_status()
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        answer = session.get(url, headers=headers, timeout=300)
        samples.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        if split is not None:
            for item in answer.headers.get("Server-Timing", "").split(","):
                name, _, duration = item.strip().partition(";dur=")
                if duration:
                    split.setdefault(name, []).append(float(duration))
    return samples


def line(label: str, samples: list[float]) -> str:
    return (f"{label:58} p50 {statistics.median(samples):6.2f} ms   "
            f"p99 {percentile(samples, 0.99):6.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()

    root, cluster = private_cluster("atrium-bench-auth-")
    orthanc = None
    try:
        cluster.ensure_database("index")
        cluster.ensure_database("atrium")
        apply_migrations(cluster.url("atrium"))
        workdir = root / "orthanc"
        base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
        config = orthanc_config(
            base=base, data_dir=workdir, cluster=cluster, index_database="index",
            http_port=free_port(), dicom_port=free_port(), aet="ATRIUM",
            atrium={"DatabaseUrl": cluster.url("atrium"),
                    "StorageUrl": f"file://{workdir / 'objects'}"},
            python_script=REPO_ROOT / "plugin" / "atrium_entry.py")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
        orthanc = OrthancProcess(workdir, config, env)
        orthanc.start()
        url = orthanc.url
        internal = {INTERNAL_HEADER: internal_secret(workdir)}
        token = load_or_create(workdir).mint("bench", ["admin"], "Default")
        bearer = {"Authorization": f"Bearer {token}"}

        # A few studies for the searches to find.
        with requests.Session() as session:
            for n in range(20):
                for blob in make_study(StudySpec(patient_id=f"AUTH-{n}", series=1,
                                                 instances_per_series=1)):
                    session.post(f"{url}/instances", data=blob, headers=internal,
                                 timeout=30).raise_for_status()
        time.sleep(3)  # let the mirror file them

        count = args.requests
        plugin_root = base["DicomWeb"]["Root"].rstrip("/")
        with requests.Session() as session:
            system_internal = timed(session, f"{url}/system", internal, count)
            system_token = timed(session, f"{url}/system", bearer, count)
            qido_plugin = timed(session, f"{url}{plugin_root}/studies", internal, count)
            qido_gateway = timed(session, f"{url}/dicom-web/studies", bearer, count)
            health = timed(session, f"{url}/api/health", {}, count)
            me_split: dict[str, list[float]] = {}
            me = timed(session, f"{url}/api/me", bearer, count, me_split)
        audit_rows = int(cluster_query(cluster, "SELECT count(*) FROM audit_log"))

        print(f"requests: {count} per measure, one client, kept-alive connection")
        print(line("Orthanc GET /system, internal credential", system_internal))
        print(line("Orthanc GET /system, admin token (validated + audited)", system_token))
        print(line("QIDO-RS /studies, plugin directly", qido_plugin))
        print(line("QIDO-RS /studies, through the gateway (token, scope, audit)", qido_gateway))
        print(line("GET /api/health (public: hand-off and router only)", health))
        print(line("GET /api/me (token, user, audit)", me))
        parts = {name: statistics.median(values) for name, values in me_split.items()}
        rest = statistics.median(me) - sum(parts.values())
        print("GET /api/me split, medians: " + ", ".join(
            f"{name} {value:.2f} ms" for name, value in parts.items())
            + f", Orthanc's HTTP + hand-off + client {rest:.2f} ms")
        added = statistics.median(system_token) - statistics.median(system_internal)
        added99 = percentile(system_token, 0.99) - percentile(system_internal, 0.99)
        gateway = statistics.median(qido_gateway) - statistics.median(qido_plugin)
        print(f"added by token validation + audit row: p50 {added:.2f} ms, p99 {added99:.2f} ms;"
              f" by the DICOMweb gateway: p50 {gateway:.2f} ms")
        print(f"audit rows written: {audit_rows}")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
    finally:
        if orthanc is not None:
            orthanc.stop()
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)
    return 0


def cluster_query(cluster: LocalCluster, query: str) -> object:
    import psycopg

    with psycopg.connect(cluster.url("atrium"), autocommit=True) as conn:
        row = conn.execute(query).fetchone()
    return row[0] if row else None


if __name__ == "__main__":
    raise SystemExit(main())
