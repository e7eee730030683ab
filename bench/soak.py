"""Soak: a bounded mixed load on one Orthanc with Atrium for ``--minutes`` (default
10), with PostgreSQL restarted half-way (issue 12).

The load comes from one client thread per kind, each at a fixed rate. A slot missed
while an answer was slow is dropped, never caught up, so a slow stretch does not
turn into a burst: this measures stability, not throughput.

* **store**: STOW-RS ``POST /dicom-web/studies`` of a new study (1 series × 3
  instances of 16 × 16 pixels) as a clinician, 1/s;
* **search**: ``GET /api/studies`` with a filter from a rotating list (words,
  modality, dates, accession number, Study Instance UID), 4/s;
* **annotate**: ``POST``, ``PUT`` with ``If-Match`` and ``DELETE`` on
  ``/api/annotations`` for instances of the seeded studies, 3/s;
* **qido**: QIDO-RS ``/dicom-web/studies`` by patient, date and modality, and a
  study's series and instances, 3/s;
* **wado**: WADO-RS a study's metadata, the whole study, one instance, 2/s.

At half time the PostgreSQL server is stopped (``fast``), left down 5 s and
started again. It holds both Orthanc's index and Atrium's database, as the compose
deployment's single server does. The *restart window* runs from the stop to the
first success of every kind among requests sent once PostgreSQL is back, plus 5 s.
An error is an answer with a status the operation does not expect (a 5xx, an
unexpected 4xx), a STOW-RS 200 that lists a failed instance, or no answer at all;
an error is *in the window* when its request overlaps it.

Criteria (exit 1 when one fails): no error outside the window and every kind
recovered; the mirror equal to Orthanc (``atrium verify`` clean, equal instance
counts); the audit chain intact; Orthanc's resident memory at the end (median of
the last 10 s) less than 10 % above the baseline (median of the 10 s after the
warm-up: 1 min, or a quarter of a shorter run).

``--kinds`` applies only some kinds of load (all by default), to tell which one makes
the memory grow: ``--kinds wado --minutes 3``. ``--tracemalloc SECONDS`` has Atrium trace
Python's allocations (``ATRIUM_TRACEMALLOC_SECONDS``) and prints the sites that grew most
(tracing slows Python down: the latencies of such a run mean nothing).

    .venv/bin/python bench/soak.py [--minutes 10] [--kinds store,search,annotate,qido,wado]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pydicom
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from atrium.auth.audit import verify_chain  # noqa: E402
from atrium.auth.dev_issuer import load_or_create  # noqa: E402
from atrium.auth.internal import INTERNAL_HEADER, internal_secret  # noqa: E402
from atrium.devenv import LocalCluster, wait_until  # noqa: E402
from bench.common import (  # noqa: E402
    MemorySamples,
    percentile,
    private_cluster,
    start_atrium,
    stow_body,
)
from tests.support.dicomgen import StudySpec, make_study  # noqa: E402

ORG = "Bench Soak"
RATES = {"store": 1.0, "search": 4.0, "annotate": 3.0, "qido": 3.0, "wado": 2.0}
OUTAGE_SECONDS = 5.0
GRACE_SECONDS = 5.0
MEMORY_LIMIT_PERCENT = 10.0
SEED_STUDIES = 8
TIMEOUT = 30
WORDS = ("chest", "abdomen", "brain", "spine", "knee", "cardiac", "contrast", "trauma")
MODALITIES = ("CT", "MR", "US", "PT")
LABELS = ("lesion", "nodule", "cyst", "calcification")
DICOM_JSON = {"Accept": "application/dicom+json"}
DICOM_PARTS = {"Accept": 'multipart/related; type="application/dicom"'}


@dataclass(frozen=True)
class Outcome:
    kind: str
    op: str
    started: float  # seconds since the load began
    seconds: float
    status: int  # 0: no answer (refused, reset, timed out)
    ok: bool

    @property
    def ended(self) -> float:
        return self.started + self.seconds


@dataclass(frozen=True)
class Seed:
    """A study stored before the load: what the readers and annotators use."""
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    patient_id: str
    accession: str
    instance_ids: list[str]  # the mirror's ids, the annotations' targets


class Recorder:
    """Every request's outcome, from every client thread."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def call(self, kind: str, op: str, expected: Collection[int],
             send: Callable[[], requests.Response],
             complete: Callable[[requests.Response], bool] | None = None
             ) -> requests.Response | None:
        """Send, time and record one request; its answer when the status is expected
        (and ``complete`` finds the answer whole: an expected status with a body
        it refuses is recorded as the error ``<op> incomplete``)."""
        started = self.now()
        answer: requests.Response | None
        try:
            answer = send()
            status = answer.status_code
        except requests.RequestException:
            answer, status = None, 0
        ok = status in expected
        if ok and answer is not None and complete is not None and not complete(answer):
            ok, op = False, f"{op} incomplete"
        outcome = Outcome(kind, op, started, self.now() - started, status, ok)
        with self._lock:
            self.outcomes.append(outcome)
        return answer if outcome.ok else None


def paced(rate: float, stop: threading.Event, step: Callable[[], None]) -> None:
    """``step`` every 1/``rate`` s until ``stop``; slots missed are dropped."""
    interval, next_at = 1 / rate, time.monotonic()
    while not stop.is_set():
        try:
            step()
        except Exception:  # noqa: BLE001 - a bug in the client must not end its load
            traceback.print_exc()
        next_at += interval
        delay = next_at - time.monotonic()
        if delay < 0:
            next_at = time.monotonic()
        elif stop.wait(delay):
            return


class Client:
    """One kind of load: a session, the caller's headers, its own random stream."""

    kind = ""

    def __init__(self, url: str, headers: dict[str, str], seeds: list[Seed],
                 recorder: Recorder, rng_seed: int) -> None:
        self.url, self.headers, self.seeds, self.recorder = url, headers, seeds, recorder
        self.session = requests.Session()
        self.rng = random.Random(rng_seed)
        self.turn = 0

    def get(self, op: str, path: str, params: dict[str, Any] | None = None,
            headers: dict[str, str] | None = None) -> requests.Response | None:
        return self.recorder.call(self.kind, op, (200,), lambda: self.session.get(
            f"{self.url}{path}", params=params, headers={**self.headers, **(headers or {})},
            timeout=TIMEOUT))

    def step(self) -> None:
        raise NotImplementedError


class Stores(Client):
    kind = "store"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.stored_instances = 0  # acknowledged by a 200

    def step(self) -> None:
        self.turn += 1
        n = self.turn
        spec = StudySpec(patient_id=f"SOAK-P{n % 40}", patient_name=f"Soak^Patient{n % 40}",
                         accession=f"SOAK-{n}", modality=MODALITIES[n % len(MODALITIES)],
                         description=f"{WORDS[n % 8]} {WORDS[(n // 8) % 8]} soak",
                         series=1, instances_per_series=3)
        blobs = make_study(spec)
        body, content_type = stow_body(blobs)
        answer = self.recorder.call("store", "stow", (200,), lambda: self.session.post(
            f"{self.url}/dicom-web/studies", data=body, timeout=TIMEOUT,
            headers={**self.headers, **DICOM_JSON, "Content-Type": content_type}),
            complete=lambda a: len(stow_references(a)) == len(blobs))
        if answer is not None:
            self.stored_instances += len(blobs)


def stow_references(answer: requests.Response) -> list[Any]:
    """The instances a STOW-RS answer says were stored (ReferencedSOPSequence); none
    when it lists a failure (FailedSOPSequence) or is not the expected JSON."""
    try:
        body = answer.json()
    except ValueError:
        return []
    if not isinstance(body, dict) or (body.get("00081198") or {}).get("Value"):
        return []
    return list((body.get("00081199") or {}).get("Value") or [])


class Searches(Client):
    kind = "search"

    def step(self) -> None:
        self.turn += 1
        seed = self.rng.choice(self.seeds)
        filters: list[dict[str, Any]] = [
            {"q": self.rng.choice(WORDS)}, {"modality": self.rng.choice(MODALITIES)},
            {"date_from": "2024-01-01", "date_to": "2024-01-31"},
            {"accession_number": seed.accession}, {"study_instance_uid": seed.study_uid},
            {"q": "chest contrast", "modality": "CT"}]
        chosen = filters[self.turn % len(filters)]
        self.get("studies", "/api/studies", {**chosen, "limit": 50})


class Annotations(Client):
    """Keeps 5 to 30 live annotations: creates, updates (If-Match) and deletes them.
    An annotation whose request failed is forgotten, as its version is then unknown."""

    kind = "annotate"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.live: list[tuple[str, int]] = []  # (id, version)

    def shape(self) -> dict[str, Any]:
        x, y = self.rng.uniform(0, 12), self.rng.uniform(0, 12)
        return {"type": "rectangle", "x": round(x, 1), "y": round(y, 1),
                "width": round(self.rng.uniform(1, 4), 1),
                "height": round(self.rng.uniform(1, 4), 1)}

    def step(self) -> None:
        draw = self.rng.random()
        if len(self.live) < 5 or (len(self.live) < 30 and draw < 0.45):
            target = self.rng.choice(self.rng.choice(self.seeds).instance_ids)
            body: dict[str, Any] = {
                "annotation_type": "dicom", "target_type": "instance", "target_id": target,
                "label": self.rng.choice(LABELS), "coordinates": self.shape()}
            answer = self.recorder.call("annotate", "create", (201,), lambda: self.session.post(
                f"{self.url}/api/annotations", json=body, headers=self.headers,
                timeout=TIMEOUT))
            if answer is not None:
                self.live.append((answer.json()["id"], answer.json()["version"]))
            return
        annotation_id, version = self.live.pop(self.rng.randrange(len(self.live)))
        path = f"{self.url}/api/annotations/{annotation_id}"
        headers = {**self.headers, "If-Match": f'"{version}"'}
        if draw < 0.8:
            change: dict[str, Any] = {"label": self.rng.choice(LABELS),
                                      "coordinates": self.shape()}
            answer = self.recorder.call("annotate", "update", (200,), lambda: self.session.put(
                path, json=change, headers=headers, timeout=TIMEOUT))
            if answer is not None:
                self.live.append((annotation_id, answer.json()["version"]))
        else:
            self.recorder.call("annotate", "delete", (204,), lambda: self.session.delete(
                path, headers=headers, timeout=TIMEOUT))


class Qido(Client):
    kind = "qido"

    def step(self) -> None:
        self.turn += 1
        seed = self.seeds[self.turn % len(self.seeds)]
        study = f"/dicom-web/studies/{seed.study_uid}"
        searches: list[tuple[str, str, dict[str, Any]]] = [
            ("patient", "/dicom-web/studies", {"PatientID": seed.patient_id}),
            ("date", "/dicom-web/studies", {"StudyDate": "20240131", "limit": 20}),
            ("modality", "/dicom-web/studies", {"ModalitiesInStudy": "CT", "limit": 20}),
            ("series", f"{study}/series", {}),
            ("instances", f"{study}/instances", {})]
        op, path, params = searches[self.turn % len(searches)]
        self.get(op, path, params, DICOM_JSON)


class Wado(Client):
    kind = "wado"

    def step(self) -> None:
        self.turn += 1
        seed = self.seeds[self.turn % len(self.seeds)]
        study = f"/dicom-web/studies/{seed.study_uid}"
        instance = f"{study}/series/{seed.series_uid}/instances/{seed.sop_uids[0]}"
        retrievals = [("metadata", f"{study}/metadata", DICOM_JSON),
                      ("study", study, DICOM_PARTS), ("instance", instance, DICOM_PARTS)]
        op, path, accept = retrievals[self.turn % len(retrievals)]
        self.get(op, path, None, accept)


KINDS: dict[str, type[Client]] = {"store": Stores, "search": Searches, "annotate": Annotations,
                                  "qido": Qido, "wado": Wado}


def parse_kinds(text: str) -> list[str]:
    """``--kinds``: comma-separated names among :data:`KINDS`, at least one."""
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown kind(s) {', '.join(unknown) or '(none given)'}; "
            f"choose among {', '.join(KINDS)}")
    return [k for k in KINDS if k in kinds]


def seed_studies(url: str, headers: dict[str, str], database_url: str) -> list[Seed]:
    """``SEED_STUDIES`` studies stored through STOW-RS and waited for in the mirror."""
    stored = []
    with requests.Session() as session:
        for n in range(SEED_STUDIES):
            spec = StudySpec(patient_id=f"SOAK-SEED{n}", accession=f"SOAK-SEED-{n}",
                             description=f"{WORDS[n % 8]} seed", series=1,
                             instances_per_series=3)
            blobs = make_study(spec)
            body, content_type = stow_body(blobs)
            session.post(f"{url}/dicom-web/studies", data=body, timeout=TIMEOUT,
                         headers={**headers, **DICOM_JSON, "Content-Type": content_type}
                         ).raise_for_status()
            datasets = [pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True) for b in blobs]
            stored.append((spec, str(datasets[0].SeriesInstanceUID),
                           [str(d.SOPInstanceUID) for d in datasets]))
    query = ("SELECT i.id FROM instances i JOIN series se ON se.id = i.series_id "
             "WHERE se.series_instance_uid = %s AND i.deleted_at IS NULL "
             "ORDER BY i.instance_number")
    with psycopg.connect(database_url, autocommit=True) as conn:
        def mirrored() -> bool:
            return all(len(conn.execute(query, (series,)).fetchall()) == len(sops)
                       for _, series, sops in stored)

        wait_until(mirrored, 120, interval=0.5, what="the seeded studies in the mirror")
        return [Seed(spec.study_uid, series, sops, spec.patient_id, spec.accession,
                     [str(r[0]) for r in conn.execute(query, (series,))])
                for spec, series, sops in stored]


@dataclass
class Restart:
    stopped_at: float = 0.0  # when the stop was asked
    back_at: float = 0.0  # when PostgreSQL accepted connections again


def restart_postgres(cluster: LocalCluster, recorder: Recorder) -> Restart:
    restart = Restart(stopped_at=recorder.now())
    cluster.stop("fast")
    time.sleep(OUTAGE_SECONDS)  # the outage itself is the point: a fixed time down
    cluster.start()
    restart.back_at = recorder.now()
    return restart


def window_end(outcomes: list[Outcome], restart: Restart, kinds: Collection[str]
               ) -> tuple[float, dict[str, float]]:
    """The restart window's end (inf when a kind never recovered) and, per kind, the
    end of its first success among requests sent after PostgreSQL was back."""
    first = {}
    for kind in kinds:
        ends = [o.ended for o in outcomes if o.kind == kind and o.ok
                and o.started >= restart.back_at]
        if ends:
            first[kind] = min(ends)
    recovered = len(first) == len(kinds)
    return (max(first.values()) + GRACE_SECONDS if recovered else float("inf")), first


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atrium.cli", "-q", *args], env=env,
                          text=True, capture_output=True, timeout=600, check=False)


def report_load(outcomes: list[Outcome], restart: Restart, end: float,
                first: dict[str, float], kinds: Collection[str]) -> int:
    """Print per kind figures; the number of errors outside the window."""
    def in_window(o: Outcome) -> bool:
        return o.started < end and o.ended > restart.stopped_at

    print(f"restart: PostgreSQL stopped at {restart.stopped_at:.1f} s, back at "
          f"{restart.back_at:.1f} s; window {restart.stopped_at:.1f} → {end:.1f} s "
          f"({end - restart.stopped_at:.1f} s)")
    print(f"{'kind':9} {'requests':>8} {'p50 ms':>7} {'p95 ms':>7} {'errors in':>9} "
          f"{'out':>4}  first success after restart")
    outside_total = 0
    for kind in kinds:
        mine = [o for o in outcomes if o.kind == kind]
        steady = [o.seconds * 1000 for o in mine if not in_window(o)] or [float("nan")]
        errors = [o for o in mine if not o.ok]
        inside = sum(in_window(o) for o in errors)
        outside_total += len(errors) - inside
        recovered = f"{first[kind] - restart.back_at:.1f} s" if kind in first else "never"
        print(f"{kind:9} {len(mine):>8} {statistics.median(steady):>7.1f} "
              f"{percentile(steady, 0.95):>7.1f} {inside:>9} {len(errors) - inside:>4}  "
              f"{recovered}")
    for label, keep in (("in the window", True), ("outside it", False)):
        seen = Counter((o.kind, o.op, o.status) for o in outcomes
                       if not o.ok and in_window(o) == keep)
        if seen:
            print(f"errors {label}: " + ", ".join(
                f"{kind}/{op} {status or 'no answer'} ×{n}"
                for (kind, op, status), n in sorted(seen.items())))
    late = [o for o in outcomes if not o.ok and not in_window(o)]
    if late:
        print("first errors outside the window: " + ", ".join(
            f"{o.kind}/{o.op} {o.status or 'no answer'} at {o.started:.1f} s" for o in late[:8]))
    return outside_total


def orthanc_errors(logfile: Path) -> None:
    """How many error lines Orthanc (and Atrium through it) logged, and the first
    distinct ones, timestamps and thread ids cut."""
    try:
        lines = [line for line in logfile.read_text(errors="replace").splitlines()
                 if line.startswith("E")]
    except OSError:
        return
    distinct = dict.fromkeys(line.split("] ", 1)[-1][:160] for line in lines)
    unaudited = Counter(line.rsplit("status=", 1)[-1] for line in lines
                        if "audit.unwritten" in line)
    print(f"Orthanc log: {len(lines)} error line(s); audit rows not written "
          f"(by the handler's status): {dict(unaudited) or 'none'}" + "".join(
              f"\n  {message}" for message in list(distinct)[:6]))


def final_checks(url: str, internal: dict[str, str], database_url: str,
                 env: dict[str, str]) -> dict[str, bool]:
    """The mirror caught up, then ``atrium verify``, the counts and the audit chain."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        def caught_up() -> bool:
            last = requests.get(f"{url}/changes?last", headers=internal, timeout=30
                                ).json()["Last"]
            row = conn.execute("SELECT last_seq FROM mirror_state WHERE name = 'orthanc'"
                               ).fetchone()
            return bool(row and row[0] >= last)

        began = time.monotonic()
        wait_until(caught_up, 300, interval=0.5, what="the mirror to reach Orthanc's last change")
        print(f"mirror caught up {time.monotonic() - began:.1f} s after the load")
        orthanc = requests.get(f"{url}/statistics", headers=internal, timeout=30
                               ).json()["CountInstances"]
        row = conn.execute("SELECT count(*) FROM instances WHERE deleted_at IS NULL").fetchone()
        mirror = row[0] if row else -1
        chain = verify_chain(conn)
    verify = run_cli(env, "verify")
    verdict = (verify.stdout.strip().splitlines() or ["(no output)"])[-1]
    print(f"instances: Orthanc {orthanc}, mirror {mirror}; atrium verify: {verdict} "
          f"(exit {verify.returncode})")
    if verify.returncode != 0:
        print(verify.stdout[-3000:] + verify.stderr[-2000:])
    print(f"audit chain: {chain.describe()}")
    return {"mirror equal to Orthanc": verify.returncode == 0 and orthanc == mirror,
            "audit chain intact": chain.ok}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--kinds", type=parse_kinds, default=list(KINDS),
                        metavar="KIND,...",
                        help=f"the kinds of load to apply (default: all: {','.join(KINDS)})")
    parser.add_argument("--tracemalloc", type=float, default=0.0, metavar="SECONDS",
                        help="trace Python allocations in Orthanc; report every SECONDS")
    parser.add_argument("--keep-log", type=Path, metavar="PATH",
                        help="copy Orthanc's log (Atrium's lines included) to PATH")
    args = parser.parse_args()
    duration = args.minutes * 60
    warmup = min(60.0, duration / 4)
    root, cluster = private_cluster("atrium-bench-soak-")
    process = None
    try:
        process = start_atrium(root, cluster, "soak", {"TracemallocSeconds": args.tracemalloc})
        assert process.proc is not None
        url, workdir, database_url = process.url, root / "orthanc", cluster.url("soak_atrium")
        headers = {"Authorization": "Bearer " + load_or_create(workdir).mint(
            "soak-clinician", ["clinician"], ORG, ttl=int(duration) + 3600)}
        internal = {INTERNAL_HEADER: internal_secret(workdir)}
        seeds = seed_studies(url, headers, database_url)

        recorder = Recorder()
        memory = MemorySamples(process.proc.pid, recorder.t0)
        stop = threading.Event()
        # Each kind keeps its random stream whichever others run with it.
        clients = {kind: cls(url, headers, seeds, recorder, n)
                   for n, (kind, cls) in enumerate(KINDS.items()) if kind in args.kinds}
        threads = [threading.Thread(target=paced, args=(RATES[kind], stop, client.step),
                                    name=f"soak-{kind}") for kind, client in clients.items()]
        print(f"load: {', '.join(f'{k} {RATES[k]:g}/s' for k in clients)} for "
              f"{duration / 60:g} min; PostgreSQL restarted at {duration / 2:.0f} s")
        for thread in threads:
            thread.start()
        stop.wait(duration / 2)
        restart = restart_postgres(cluster, recorder)
        stop.wait(max(0.0, duration - recorder.now()))
        load_end = recorder.now()
        stop.set()
        for thread in threads:
            thread.join()
        memory.stop()
        for client in clients.values():
            client.session.close()

        outcomes = sorted(recorder.outcomes, key=lambda o: o.started)
        end, first = window_end(outcomes, restart, clients)
        outside = report_load(outcomes, restart, end, first, clients)
        baseline = memory.median(warmup, warmup + 10)
        last = memory.median(load_end - 10, load_end)
        peak = memory.peak(warmup)
        growth = (last - baseline) / baseline * 100
        print(f"Orthanc resident memory: baseline {baseline:.0f} MiB (at {warmup:.0f} s), "
              f"end {last:.0f} MiB, peak {peak:.0f} MiB; growth {growth:+.1f} % "
              f"(peak {(peak - baseline) / baseline * 100:+.1f} %)")
        step = max(10, int(load_end // 10))
        print("  by time: " + ", ".join(
            f"{at} s {memory.median(at - 5, at + 5):.0f}"
            for at in range(step, int(load_end) + 1, step)) + " MiB")
        stores = clients.get("store")
        acknowledged = stores.stored_instances if isinstance(stores, Stores) else 0
        print(f"stored: {sum(len(s.sop_uids) for s in seeds)} instances seeded before the "
              f"load, {acknowledged} acknowledged during it")
        env = {**process.env, "ATRIUM_DATABASE_URL": database_url, "ATRIUM_ORTHANC_URL": url,
               "ATRIUM_DATA_DIR": str(workdir)}
        verdicts = {"no error outside the restart window, every kind recovered":
                    outside == 0 and len(first) == len(clients),
                    **final_checks(url, internal, database_url, env),
                    f"memory growth < {MEMORY_LIMIT_PERCENT:g} %":
                    growth < MEMORY_LIMIT_PERCENT}
        for criterion, passed in verdicts.items():
            print(f"{'PASS' if passed else 'FAIL'}  {criterion}")
        print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")
        return 0 if all(verdicts.values()) else 1
    finally:
        if process is not None:
            process.stop()
            orthanc_errors(process.logfile)
            if args.keep_log:
                shutil.copyfile(process.logfile, args.keep_log)
            traced = root / "orthanc" / "tracemalloc.txt"
            if traced.exists():
                reports = traced.read_text().split("== ")
                print("tracemalloc, the last report:\n== " + reports[-1].rstrip())
                if args.keep_log:
                    shutil.copyfile(traced, f"{args.keep_log}.tracemalloc.txt")
        cluster.stop("fast")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
