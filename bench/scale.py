"""Several nodes (docs/SCALING.md): ingest rate and search p95 with one node and with
two on the same machine, the mirror's lag with two nodes, and failover time.

    .venv/bin/python bench/scale.py [--instances 2000] [--rounds 3] [--failovers 3]

Each round starts one node, then two nodes sharing Orthanc's index and storage and
Atrium's database (fresh databases each time, one private PostgreSQL cluster), and
runs the same work against each: REST ingest from four clients with a user's token
(spread over the nodes), then searches from four clients (spread too). On this
two-core machine a second node adds no cores, so the goal is no loss beyond 10 %,
not a gain. The same ingest into one and two Orthanc processes WITHOUT Atrium on a
shared index is the baseline: what Orthanc itself loses with two writers. With two
nodes it then measures the mirror's lag under a steady load sent to both nodes, and
kills the leader (``kill -9``) ``--failovers`` times, timing until the other node
leads.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugin"))

from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config  # noqa: E402
from atrium.migrations import apply_migrations  # noqa: E402
from bench.common import percentile, private_cluster  # noqa: E402
from bench.ingest import RowWatcher, generate  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.support.oidc_issuer import OidcIssuer  # noqa: E402

CLIENTS = 4
DICOM = {"Content-Type": "application/dicom"}
SEARCHES = ("limit=20", "modality=CT&limit=20", "q=chest&limit=20",
            "date_from=2000-01-01&date_to=2030-12-31&limit=20")


class Nodes:
    """``count`` Orthanc + Atrium nodes over one index, one storage, one database."""

    def __init__(self, root: Path, cluster: LocalCluster, issuer: OidcIssuer, name: str,
                 count: int, with_atrium: bool = True) -> None:
        index_db, atrium_db = f"{name}_index", f"{name}_atrium"
        cluster.ensure_database(index_db)
        cluster.ensure_database(atrium_db)
        self.database_url = cluster.url(atrium_db)
        apply_migrations(self.database_url)
        shared = root / name
        (shared / "storage").mkdir(parents=True, exist_ok=True)
        base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
        self.processes: list[OrthancProcess] = []
        for n in range(count):
            workdir = shared / f"node{n}"
            config = orthanc_config(
                base=base, data_dir=workdir, cluster=cluster, index_database=index_db,
                http_port=free_port(), dicom_port=free_port(), aet="ATRIUM",
                atrium={"DatabaseUrl": self.database_url, "MirrorPollSeconds": 1,
                        "StorageUrl": f"file://{shared / 'objects'}",
                        "OidcIssuer": issuer.issuer},
                python_script=REPO_ROOT / "plugin" / "atrium_entry.py",
                with_atrium=with_atrium)
            config["StorageDirectory"] = config["IndexDirectory"] = str(shared / "storage")
            self.processes.append(OrthancProcess(workdir, config, env))
        for process in self.processes:
            process.launch()
        for process in self.processes:
            process.wait_ready(120)
        self.urls = [p.url for p in self.processes]

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


RETRIED: collections.Counter[str] = collections.Counter()  # 503s sent again, per phase
PHASE = ["ingest"]


def store(session: requests.Session, url: str, blob: bytes) -> None:
    """Store as a client should: a 503 (Orthanc's shared index collided with another
    node's write; nothing was stored) is sent again after a short pause."""
    for _ in range(50):
        answer = session.post(url, data=blob, timeout=60, headers=DICOM)
        if answer.status_code != 503:
            answer.raise_for_status()
            return
        RETRIED[PHASE[0]] += 1
        time.sleep(0.1)
    answer.raise_for_status()


def ingest(urls: list[str], data: list[tuple[str, bytes]], token: str | None,
           watcher: RowWatcher | None) -> tuple[float, float]:
    """Instances a second, stored (until the last acknowledgement) and mirrored
    (until the last row). Without a token: Orthanc's own ``POST /instances``."""
    chunks = [data[i::CLIENTS] for i in range(CLIENTS)]
    path = "/api/instances" if token else "/instances"

    def client(n: int) -> None:
        url = urls[n % len(urls)]
        with requests.Session() as session:
            if token:
                session.headers["Authorization"] = f"Bearer {token}"
            for _, blob in chunks[n]:
                store(session, f"{url}{path}", blob)

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    stored = time.perf_counter() - started
    if watcher is None:
        return len(data) / stored, len(data) / stored
    wanted = {sop for sop, _ in data}
    while not wanted <= watcher.seen.keys():
        time.sleep(0.02)
    mirrored = time.perf_counter() - started
    return len(data) / stored, len(data) / mirrored


def searches(urls: list[str], token: str, count: int) -> list[float]:
    """Milliseconds of ``count`` searches from four clients, spread over the nodes."""
    timings: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        url = urls[n % len(urls)]
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {token}"
            for i in range(count // CLIENTS):
                query = SEARCHES[i % len(SEARCHES)]
                started = time.perf_counter()
                session.get(f"{url}/api/studies?{query}", timeout=30).raise_for_status()
                with lock:
                    timings.append((time.perf_counter() - started) * 1000)

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    return timings


def lag(urls: list[str], data: list[tuple[str, bytes]], token: str, watcher: RowWatcher,
        rate: float) -> list[float]:
    """Seconds from each acknowledgement to its row, stores alternating between nodes
    at a steady ``rate``."""
    acks: dict[str, float] = {}
    sessions = [requests.Session() for _ in urls]
    for session in sessions:
        session.headers["Authorization"] = f"Bearer {token}"
    started = time.perf_counter()
    for n, (sop, blob) in enumerate(data):
        delay = started + n / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        store(sessions[n % len(urls)], f"{urls[n % len(urls)]}/api/instances", blob)
        acks[sop] = time.time()
    while not acks.keys() <= watcher.seen.keys():
        time.sleep(0.02)
    return [max(watcher.seen[sop] - acks[sop], 0.0) for sop in acks]


def leading(url: str, token: str) -> bool:
    answer = requests.get(f"{url}/api/mirror/status", timeout=5,
                          headers={"Authorization": f"Bearer {token}"})
    return bool(answer.ok and answer.json().get("leading"))


def failover(nodes: Nodes, token: str) -> float:
    """Seconds from ``kill -9`` of the leader to the other node leading; the killed
    node is started again (it stands by)."""
    deadline = time.monotonic() + 30
    while True:
        leaders = [p for p in nodes.processes if leading(p.url, token)]
        if len(leaders) == 1:
            break
        if time.monotonic() > deadline:
            raise RuntimeError("no single leader")
        time.sleep(0.1)
    killed = leaders[0]
    other = next(p for p in nodes.processes if p is not killed)
    killed.kill()
    started = time.perf_counter()
    while not leading(other.url, token):
        if time.perf_counter() - started > 60:
            raise RuntimeError("the standby did not take over within 60 s")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    index = nodes.processes.index(killed)
    nodes.processes[index] = OrthancProcess(killed.workdir, killed.config, killed.env)
    nodes.processes[index].start(120)
    return seconds


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--searches", type=int, default=400)
    parser.add_argument("--lag-seconds", type=float, default=30)
    parser.add_argument("--lag-rate", type=float, default=20)
    parser.add_argument("--failovers", type=int, default=3)
    args = parser.parse_args()

    root, cluster = private_cluster("atrium-scale-")
    results: dict[int, dict[str, list[float]]] = {1: {}, 2: {}}
    baseline: dict[int, list[float]] = {1: [], 2: []}
    lags: list[float] = []
    failovers: list[float] = []
    try:
        with OidcIssuer() as issuer:
            token = issuer.token_for("bench", ["admin"], "Default", exp=int(time.time()) + 86400)
            for round_ in range(1, args.rounds + 1):
                for count in (1, 2):
                    PHASE[0] = f"{count} Orthanc(s) alone"
                    alone = Nodes(root, cluster, issuer, f"r{round_}o{count}", count,
                                  with_atrium=False)
                    try:
                        rate, _ = ingest(alone.urls, generate(args.instances, "ALONE"),
                                         None, None)
                    finally:
                        alone.stop()
                    baseline[count].append(rate)
                    print(f"round {round_}, {count} Orthanc(s) without Atrium: stored "
                          f"{rate:.0f}/s", flush=True)
                for count in (1, 2):
                    PHASE[0] = f"{count} node(s)"
                    nodes = Nodes(root, cluster, issuer, f"r{round_}n{count}", count)
                    watcher = RowWatcher(nodes.database_url)
                    watcher.start()
                    try:
                        data = generate(args.instances, "SCALE")
                        stored, mirrored = ingest(nodes.urls, data, token, watcher)
                        timings = searches(nodes.urls, token, args.searches)
                        figures = results[count]
                        figures.setdefault("stored", []).append(stored)
                        figures.setdefault("mirrored", []).append(mirrored)
                        figures.setdefault("search_p50", []).append(percentile(timings, 0.5))
                        figures.setdefault("search_p95", []).append(percentile(timings, 0.95))
                        print(f"round {round_}, {count} node(s): stored {stored:.0f}/s, "
                              f"mirrored {mirrored:.0f}/s, search p50 "
                              f"{percentile(timings, 0.5):.1f} ms p95 "
                              f"{percentile(timings, 0.95):.1f} ms", flush=True)
                        if count == 2:
                            steady = generate(int(args.lag_seconds * args.lag_rate), "LAG")
                            round_lags = lag(nodes.urls, steady, token, watcher, args.lag_rate)
                            lags += round_lags
                            print(f"round {round_}: mirror lag p50 "
                                  f"{statistics.median(round_lags):.3f} s p99 "
                                  f"{percentile(round_lags, 0.99):.3f} s", flush=True)
                            if round_ == 1:
                                for _ in range(args.failovers):
                                    failovers.append(failover(nodes, token))
                                    print(f"failover {failovers[-1]:.2f} s", flush=True)
                    finally:
                        watcher.stop.set()
                        nodes.stop()
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)

    print("\n| | 1 node | 2 nodes | 2 / 1 |\n|---|---|---|---|")
    for key, label in (("stored", "REST ingest, stored/s"), ("mirrored", "ingest, mirrored/s"),
                       ("search_p50", "search p50, ms"), ("search_p95", "search p95, ms")):
        one, two = results[1][key], results[2][key]
        print(f"| {label} | {spread(one)} | {spread(two)} | "
              f"{statistics.median(two) / statistics.median(one):.2f} |")
    one, two = baseline[1], baseline[2]
    print(f"| Orthanc alone, REST ingest stored/s | {spread(one)} | {spread(two)} | "
          f"{statistics.median(two) / statistics.median(one):.2f} |")
    if lags:
        print(f"\nmirror lag with 2 nodes ({len(lags)} instances at {args.lag_rate:g}/s): "
              f"p50 {statistics.median(lags):.3f} s, p99 {percentile(lags, 0.99):.3f} s, "
              f"max {max(lags):.3f} s (goal p99 ≤ 1 s)")
    print("stores answered 503 and sent again: "
          + (", ".join(f"{phase} {count}" for phase, count in sorted(RETRIED.items()))
             or "none"))
    if failovers:
        print(f"failover after kill -9 of the leader ({len(failovers)}): median "
              f"{statistics.median(failovers):.2f} s, {min(failovers):.2f}–"
              f"{max(failovers):.2f} s (goal ≤ 10 s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
