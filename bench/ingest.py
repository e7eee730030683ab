"""Ingest benchmark: Orthanc with Atrium against the same Orthanc without it.

One run, same machine, same settings, same generated data stored into an Orthanc
without Atrium and an Orthanc with Atrium, both running: by REST upload (4
parallel clients) in ``--rounds`` rounds of ``--instances`` (default 5 × 2,000)
that alternate which Orthanc goes first — on a small shared machine one pair of
runs swings by ±15 %, the median of five does not — and by dcmtk's ``storescu``
(4 parallel senders). Between measurements the mirror is let finish (rows and
headers), so its catching up never falls into the baseline's time.

Prints the throughput ratios (goal ≥ 0.95), the mirror lag from store
acknowledgement to row visible (p50/p99, goal p99 ≤ 1 s) and the backfill rate
(goal ≥ 1,000 instances/s), for ``docs/BENCHMARKS.md``.

    .venv/bin/python bench/ingest.py [--instances 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydicom.uid import generate_uid  # noqa: E402

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
from tests.support.dicomgen import StudySpec, make_instance, write_files  # noqa: E402

CLIENTS = 4
PACED_COUNT, PACED_RATE = 500, 50.0


def generate(count: int, tag: str) -> list[tuple[str, bytes]]:
    """``count`` instances in studies of 2 series × 25 instances, as (SOP UID, bytes)."""
    out: list[tuple[str, bytes]] = []
    study = 0
    while len(out) < count:
        spec = StudySpec(patient_id=f"{tag}-{study % 50}", rows=64)
        for series_number in (1, 2):
            series_uid = generate_uid()
            for n in range(1, 26):
                sop = generate_uid()
                out.append((sop, make_instance(spec, series_uid, series_number, n, sop)))
        study += 1
    return out[:count]


def start_orthanc(root: Path, cluster: LocalCluster, name: str, with_atrium: bool
                  ) -> tuple[OrthancProcess, str]:
    index_db, atrium_db = f"bench_index_{name}", f"bench_atrium_{name}"
    cluster.ensure_database(index_db)
    cluster.ensure_database(atrium_db)
    database_url = cluster.url(atrium_db)
    apply_migrations(database_url)
    workdir = root / name
    base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
    config = orthanc_config(
        base=base, data_dir=workdir, cluster=cluster, index_database=index_db,
        http_port=free_port(), dicom_port=free_port(), aet="ATRIUM",
        atrium={"DatabaseUrl": database_url, "MirrorPollSeconds": 1,
                "StorageUrl": f"file://{workdir / 'objects'}"},
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py", with_atrium=with_atrium)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    process = OrthancProcess(workdir, config, env)
    process.start()
    return process, database_url


def rest_ingest(url: str, data: list[tuple[str, bytes]], acks: dict[str, float],
                headers: dict[str, str]) -> float:
    chunks = [data[i::CLIENTS] for i in range(CLIENTS)]

    def client(chunk: list[tuple[str, bytes]]) -> None:
        with requests.Session() as session:
            session.headers.update(headers)
            for sop, blob in chunk:
                response = session.post(f"{url}/instances", data=blob, timeout=60)
                response.raise_for_status()
                acks[sop] = time.time()

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, chunks))
    return time.perf_counter() - started


def paced_ingest(url: str, data: list[tuple[str, bytes]], rate: float,
                 acks: dict[str, float], headers: dict[str, str]) -> None:
    """One client storing at a steady ``rate`` per second: a busy department, not a burst."""
    started = time.perf_counter()
    with requests.Session() as session:
        session.headers.update(headers)
        for n, (sop, blob) in enumerate(data):
            delay = started + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            session.post(f"{url}/instances", data=blob, timeout=60).raise_for_status()
            acks[sop] = time.time()


def lag_line(label: str, watcher: RowWatcher, acks: dict[str, float]) -> str:
    lags = [max(watcher.seen[sop] - acks[sop], 0.0) for sop in acks]
    return (f"mirror lag, {label} ({len(lags)} instances): p50 {statistics.median(lags):.3f} s"
            f"   p99 {percentile(lags, 0.99):.3f} s   max {max(lags):.3f} s   (goal p99 ≤ 1 s)")


def storescu_ingest(port: int, files: list[Path]) -> float:
    chunks = [files[i::CLIENTS] for i in range(CLIENTS)]
    started = time.perf_counter()
    senders = [subprocess.Popen(["storescu", "-aet", "BENCH", "-aec", "ATRIUM", "127.0.0.1",
                                 str(port), *map(str, chunk)]) for chunk in chunks]
    for sender in senders:
        if sender.wait() != 0:
            raise RuntimeError("storescu failed")
    return time.perf_counter() - started


class RowWatcher(threading.Thread):
    """Records when each instance row first becomes visible in the mirror.

    Each poll asks only for rows written by transactions newer than the last one
    seen (the mirror has one writer, so its transactions commit in order): the
    observer must not load the machine it measures."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.database_url = database_url
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        last_xid = 0
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            while not self.stop.is_set():
                rows = conn.execute(
                    "SELECT sop_instance_uid, xmin::text::bigint FROM instances "
                    "WHERE xmin::text::bigint > %s", (last_xid,)).fetchall()
                now = time.time()
                for sop, xid in rows:
                    self.seen.setdefault(sop, now)
                    last_xid = max(last_xid, xid)
                self.stop.wait(0.02)


def headers_pending(database_url: str) -> int:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM instances WHERE metadata->>'tags_source' = "
                           "'index' AND deleted_at IS NULL").fetchone()
    return int(row[0]) if row else 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(round(q * (len(ordered) - 1))), len(ordered) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000,
                        help="instances per REST round and for storescu")
    parser.add_argument("--rounds", type=int, default=5,
                        help="REST rounds, alternating which Orthanc goes first")
    args = parser.parse_args()

    root, cluster = private_cluster("atrium-bench-")
    processes: list[OrthancProcess] = []
    try:
        rounds = [generate(args.instances, f"REST{r}") for r in range(args.rounds)]
        paced_data = generate(PACED_COUNT, "PACED")
        scu_data = generate(args.instances, "SCU")
        scu_files = write_files(root / "scu", [b for _, b in scu_data])
        size_mb = sum(len(b) for _, b in rounds[0]) / 1e6
        print(f"data: {args.instances} instances ({size_mb:.1f} MB) per REST round, "
              f"{args.rounds} rounds; {args.instances} instances for storescu")

        servers = {}
        for name, with_atrium in (("without", False), ("with", True)):
            process, database_url = start_orthanc(root, cluster, name, with_atrium)
            processes.append(process)
            # Atrium's request filter lets only credentials through to Orthanc's own
            # API; the clients use Atrium's internal one (the baseline ignores it).
            servers[name] = (process, database_url, {INTERNAL_HEADER: internal_secret(root / name)})
        process, database_url, headers = servers["with"]
        watcher = RowWatcher(database_url)
        watcher.start()
        stored = 0

        def settle() -> None:
            """Until the mirror has every row and every whole header: its catching up
            must not run into the next measurement of the other Orthanc."""
            wait_until(lambda: len(watcher.seen) >= stored, 300, what="the mirror's rows")
            wait_until(lambda: headers_pending(database_url) == 0, 300,
                       what="the mirror's headers")

        # REST: rounds alternate which Orthanc goes first, so that drift of the
        # machine (other load, caches) falls on both sides; the median ratio counts.
        ratios, acks = [], {}
        for number, data in enumerate(rounds):
            order = ("without", "with") if number % 2 == 0 else ("with", "without")
            rate = {}
            for name in order:
                url, round_headers = servers[name][0].url, servers[name][2]
                seconds = rest_ingest(url, data, acks if name == "with" else {}, round_headers)
                rate[name] = args.instances / seconds
                if name == "with":
                    stored += len(data)
                    settle()
            ratios.append(rate["with"] / rate["without"])
            print(f"REST round {number + 1}: without {rate['without']:6.1f} inst/s, "
                  f"with {rate['with']:6.1f} inst/s, ratio {ratios[-1]:.3f}")
        burst_lag = lag_line(f"REST burst, {CLIENTS} clients", watcher, acks)

        scu = {}
        for name in ("without", "with"):
            scu[name] = args.instances / storescu_ingest(
                int(servers[name][0].config["DicomPort"]), scu_files)
            if name == "with":
                stored += len(scu_files)
                settle()
        paced_acks: dict[str, float] = {}
        paced_ingest(process.url, paced_data, PACED_RATE, paced_acks, headers)
        stored += PACED_COUNT
        wait_until(lambda: len(watcher.seen) >= stored, 60, what="the paced instances")
        watcher.stop.set()

        print(f"throughput ratio with/without: REST median {statistics.median(ratios):.3f} "
              f"(rounds {min(ratios):.3f}-{max(ratios):.3f})   storescu "
              f"{scu['with'] / scu['without']:.3f} ({scu['without']:.1f} / "
              f"{scu['with']:.1f} inst/s)   (goal ≥ 0.95)")
        print(burst_lag)
        print(lag_line(f"steady {PACED_RATE:.0f} instances/s", watcher, paced_acks))

        # Backfill: the Orthanc without Atrium holds every data set; restart it with
        # Atrium over an empty mirror and read the backfill job's rate.
        baseline = processes[0]
        baseline.stop()
        config = dict(baseline.config)
        config["Plugins"] = [*config["Plugins"],
                             "/usr/share/orthanc/plugins/libOrthancPython.so"]
        config["PythonScript"] = str(REPO_ROOT / "plugin" / "atrium_entry.py")
        restarted = OrthancProcess(baseline.workdir, config, baseline.env)
        restarted.start()
        processes.append(restarted)
        database_url = cluster.url("bench_atrium_without")

        def backfill_done() -> bool:
            with psycopg.connect(database_url) as conn:
                row = conn.execute("SELECT status FROM jobs WHERE kind='backfill'").fetchone()
            return bool(row and row[0] in ("succeeded", "failed"))

        wait_until(backfill_done, 600, what="the backfill job")
        with psycopg.connect(database_url) as conn:
            status, result = conn.execute(
                "SELECT status, result FROM jobs WHERE kind='backfill'").fetchone()
        print(f"backfill (in Orthanc, at start-up): {status}, {result['instances']} instances "
              f"in {result['seconds']} s = {result['rate_per_s']} instances/s (goal ≥ 1,000)")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
              f"{platform.python_version()}")
        return 0
    finally:
        for process in processes:
            process.stop()
        cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
