"""`atrium run --nodes 2` (what `make cluster` runs): two Orthanc + Atrium nodes over
one private PostgreSQL cluster, one Orthanc storage directory and one object store,
behind HAProxy on the HTTP and DICOM ports. Both nodes serve, the balancer spreads
requests over them and keeps answering when one dies, DICOM stored through it is
mirrored, a dev token is accepted by each node, and SIGTERM stops every process the
command started."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from atrium.balancer import NODE_HEADER
from atrium.devenv import REPO_ROOT, wait_until
from tests.integration.test_run_command import ATRIUM, listening, run_env
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

NODE_LINE = re.compile(r"^atrium: (node-\d+) on (http://127\.0\.0\.1:\d+) \(DICOM (\d+)\)$",
                       re.MULTILINE)


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    env: dict[str, str]
    data_dir: Path
    log: Path
    nodes: dict[str, str]  # name -> URL

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['ORTHANC_HTTP_PORT']}"

    @property
    def dicom_port(self) -> int:
        return int(self.env["ORTHANC_DICOM_PORT"])

    def token(self) -> str:
        return subprocess.run([ATRIUM, "token", "--user", "alice", "--role", "admin", "--org",
                               "Default"], env=self.env, cwd=REPO_ROOT, capture_output=True,
                              text=True, check=True, timeout=60).stdout.strip()


def processes_under(data_dir: Path) -> dict[int, str]:
    """pid -> command line of every process whose command line names ``data_dir``:
    the nodes' Orthanc (their configuration file), PostgreSQL (-D), HAProxy (-f)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(data_dir) in command:
            found[int(entry.name)] = command
    return found


@pytest.fixture(scope="module")
def cluster(workspace: Path) -> Iterator[Cluster]:
    data_dir = workspace / f"cluster-{uuid.uuid4().hex[:6]}"
    env = run_env(data_dir)
    log = workspace / f"{data_dir.name}.log"
    proc = subprocess.Popen([ATRIUM, "run", "--nodes", "2"], env=env, cwd=REPO_ROOT,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        running = "Atrium is running on 2 nodes"
        wait_until(lambda: running in log.read_text() or proc.poll() is not None, 240,
                   what=f"`atrium run --nodes 2` to start (log {log})")
        assert running in log.read_text(), log.read_text()[-3000:]
        nodes = {name: url for name, url, _ in NODE_LINE.findall(log.read_text())}
        assert sorted(nodes) == ["node-1", "node-2"], log.read_text()
        yield Cluster(proc, env, data_dir, log, nodes)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in processes_under(data_dir):  # only after a failure above
            os.kill(pid, signal.SIGKILL)


def test_both_nodes_serve_and_the_balancer_spreads_requests_over_them(
        cluster: Cluster) -> None:
    for url in cluster.nodes.values():
        health = requests.get(f"{url}/api/health", timeout=10)
        assert health.status_code == 200, (url, health.text)
    # No cookie jar: a browser would stay on one node (the dev sign-in's state).
    answered = []
    for _ in range(6):
        reply = requests.get(f"{cluster.url}/api/health", timeout=10)
        assert reply.status_code == 200, reply.text
        answered.append(reply.headers[NODE_HEADER])
    assert set(answered) == {"node-1", "node-2"}, answered
    text = cluster.log.read_text()
    assert f"{cluster.url}/api/health" in text and "Balancer   HAProxy" in text


def test_a_dev_token_is_accepted_by_each_node_and_through_the_balancer(
        cluster: Cluster) -> None:
    auth = {"Authorization": f"Bearer {cluster.token()}"}
    for url in [*cluster.nodes.values(), cluster.url]:
        reply = requests.get(f"{url}/api/me", headers=auth, timeout=10)
        assert reply.status_code == 200, (url, reply.text)
    forged = {"Authorization": f"Bearer {cluster.token()[:-4]}AAAA"}
    for url in cluster.nodes.values():
        assert requests.get(f"{url}/api/me", headers=forged, timeout=10).status_code == 401


def test_dicom_stored_through_the_balancer_is_mirrored_once(
        cluster: Cluster, workspace: Path) -> None:
    patient = f"CL-{uuid.uuid4().hex[:8]}"
    spec = StudySpec(patient_id=patient, series=1, instances_per_series=3)
    files = []
    for index, blob in enumerate(make_study(spec)):
        path = workspace / f"{patient}-{index}.dcm"
        path.write_bytes(blob)
        files.append(str(path))
    done = subprocess.run(["storescu", "-aet", "CLUSTER_TEST", "-aec", "ATRIUM", "127.0.0.1",
                           str(cluster.dicom_port), *files], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    auth = {"Authorization": f"Bearer {cluster.token()}"}

    def instances(url: str) -> list[object]:
        reply = requests.get(f"{url}/api/studies", headers=auth, timeout=10,
                             params={"study_instance_uid": spec.study_uid})
        assert reply.status_code == 200, reply.text
        return [study["number_of_instances"] for study in reply.json()["items"]]

    wait_until(lambda: instances(cluster.url) == [3], 30, what="the C-STORE in the mirror")
    # One mirror: each node finds the study, once, whichever node received it.
    for url in cluster.nodes.values():
        assert instances(url) == [3]


def test_a_dead_node_leaves_the_balancer_answering_and_sigterm_stops_everything(
        cluster: Cluster) -> None:
    """Last in this module: it kills a node and stops the command."""
    started = processes_under(cluster.data_dir)
    kinds = {kind: [pid for pid, command in started.items() if kind in command]
             for kind in ("Orthanc", "postgres -D", "haproxy")}
    assert len(kinds["Orthanc"]) == 2 and kinds["postgres -D"] and kinds["haproxy"], started
    node_1 = next(pid for pid in kinds["Orthanc"]
                  if "node-1" in started[pid])
    os.kill(node_1, signal.SIGKILL)
    # Before the health check notices, a refused connection is retried on node-2.
    for _ in range(6):
        reply = requests.get(f"{cluster.url}/api/health", timeout=10)
        assert reply.status_code == 200 and reply.headers[NODE_HEADER] == "node-2"
    wait_until(lambda: "Orthanc node-1 exited" in cluster.log.read_text(), 10,
               what="the runner to report node-1")
    assert cluster.proc.poll() is None, "one dead node stopped the whole cluster"

    cluster.proc.send_signal(signal.SIGTERM)
    assert cluster.proc.wait(90) == 0
    assert not processes_under(cluster.data_dir), processes_under(cluster.data_dir)
    for port in (cluster.env["ORTHANC_HTTP_PORT"], cluster.env["ORTHANC_DICOM_PORT"],
                 cluster.env["ATRIUM_PG_PORT"]):
        assert not listening(int(port)), f"port {port} still listening after SIGTERM"
