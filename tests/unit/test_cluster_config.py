"""What `atrium run --nodes N` generates, without starting anything: HAProxy's
configuration, each node's Orthanc configuration and the keys the nodes share."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from atrium import balancer
from atrium.auth.dev_issuer import load_or_create
from atrium.auth.internal import internal_secret
from atrium.auth.tokens import validator_for
from atrium.balancer import NODE_HEADER, Node, haproxy_config
from atrium.cli import main
from atrium.pgserver import Databases, StartupError
from atrium.runner import node_configs, node_dir, share_keys, wait_healthy
from atrium.settings import Settings, load_settings

NODES = [Node("node-1", 41001, 42001), Node("node-2", 41002, 42002)]


def sections(text: str) -> dict[str, list[str]]:
    """'frontend atrium_http' -> its directive lines, comments dropped."""
    result: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if not stripped:
            continue
        if not line.startswith(" "):
            current = result.setdefault(stripped, [])
        else:
            current.append(stripped)
    return result


@pytest.fixture
def config() -> dict[str, list[str]]:
    return sections(haproxy_config(http_port=8042, dicom_port=4242, nodes=NODES))


def test_http_is_round_robin_on_loopback_with_health_checks_and_retries(
        config: dict[str, list[str]]) -> None:
    frontend = config["frontend atrium_http"]
    assert "bind 127.0.0.1:8042" in frontend and "mode http" in frontend
    assert "option http-keep-alive" in frontend
    backend = config["backend atrium_http_nodes"]
    assert "balance roundrobin" in backend and "option httpchk" in backend
    assert "http-check send meth GET uri /api/health" in backend
    assert "http-check expect status 200" in backend
    assert any(line.startswith("retry-on conn-failure") for line in backend)
    assert f"http-response set-header {NODE_HEADER} %[srv_name]" in backend
    defaults = config["defaults"]
    assert "option redispatch 1" in defaults
    assert any(re.fullmatch(r"retries [1-9]", line) for line in defaults)
    servers = [line.split() for line in backend if line.startswith("server ")]
    assert [(s[1], s[2]) for s in servers] == [("node-1", "127.0.0.1:41001"),
                                               ("node-2", "127.0.0.1:41002")]
    assert all("check" in s for s in servers)


def test_dicom_is_tcp_leastconn_checked_on_each_nodes_http_health(
        config: dict[str, list[str]]) -> None:
    frontend = config["frontend atrium_dicom"]
    assert "bind 127.0.0.1:4242" in frontend and "mode tcp" in frontend
    backend = config["backend atrium_dicom_nodes"]
    assert "mode tcp" in backend and "balance leastconn" in backend
    assert "http-check send meth GET uri /api/health" in backend
    servers = [line.split() for line in backend if line.startswith("server ")]
    assert [(s[1], s[2], s[s.index("port") + 1]) for s in servers] == [
        ("node-1", "127.0.0.1:42001", "41001"), ("node-2", "127.0.0.1:42002", "41002")]


@pytest.mark.parametrize("nodes", [[], [Node("a", 1, 2), Node("a", 3, 4)],
                                   [Node("two words", 1, 2)]])
def test_node_names_must_be_distinct_words(nodes: list[Node]) -> None:
    with pytest.raises(ValueError):
        haproxy_config(http_port=8042, dicom_port=4242, nodes=nodes)


@pytest.mark.skipif(shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(),
                    reason="HAProxy is not installed (scripts/bootstrap.sh --test installs it)")
def test_haproxy_itself_accepts_the_configuration(tmp_path: Path) -> None:
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(http_port=8042, dicom_port=4242, nodes=NODES))
    checked = subprocess.run([balancer.haproxy_binary(), "-c", "-f", str(path)],
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr + checked.stdout
    assert "WARNING" not in checked.stderr + checked.stdout


# -- the nodes ---------------------------------------------------------------------

def top_settings(data_dir: Path, **environ: str) -> Settings:
    return load_settings({}, environ={
        "ATRIUM_DATA_DIR": str(data_dir), "ATRIUM_DATABASE_URL":
        "postgresql://atrium_app:pw@127.0.0.1:5499/atrium",
        "ATRIUM_AET_ORGANIZATIONS": '{"NORTH_CT": "Radiology North"}', **environ})


DATABASES = Databases(owner_url="postgresql://atrium:pw@127.0.0.1:5499/atrium",
                      runtime_url="postgresql://atrium_app:pw@127.0.0.1:5499/atrium",
                      runtime_role="atrium_app",
                      index_url="postgresql://atrium:pw@127.0.0.1:5499/orthanc")


def test_each_node_has_its_own_ports_and_data_dir_and_shares_the_rest(tmp_path: Path) -> None:
    settings = top_settings(tmp_path / "data", ATRIUM_AUDIT_ANCHOR_KEY="anchor.pem")
    base: dict[str, Any] = {"Atrium": {"DataDir": "/elsewhere"}}
    configs = node_configs(settings, base, DATABASES, [(41001, 42001), (41002, 42002)])
    assert [(c["HttpPort"], c["DicomPort"]) for c in configs] == [(41001, 42001),
                                                                  (41002, 42002)]
    assert len({c["Name"] for c in configs}) == 2
    assert {c["DicomAet"] for c in configs} == {settings.orthanc_aet}
    assert {c["StorageDirectory"] for c in configs} == {str(tmp_path / "data" / "orthanc" /
                                                            "storage")}
    assert {c["PostgreSQL"]["ConnectionUri"] for c in configs} == {DATABASES.index_url}
    assert {c["PostgreSQL"]["Lock"] for c in configs} == {False}

    # What Atrium inside each node reads, with no variable to override its file.
    nodes = [load_settings(c, environ={}) for c in configs]
    assert [n.data_dir for n in nodes] == [node_dir(settings.data_dir, 1),
                                           node_dir(settings.data_dir, 2)]
    assert [n.orthanc_url for n in nodes] == ["http://127.0.0.1:41001",
                                              "http://127.0.0.1:41002"]
    for node in nodes:
        assert node.database_url == DATABASES.runtime_url
        assert node.storage_url == settings.storage_url == f"file://{tmp_path}/data/objects"
        assert node.audit_anchor_key == tmp_path / "data" / "anchor.pem"
        assert dict(node.aet_organizations) == {"NORTH_CT": "Radiology North"}


def test_every_node_validates_tokens_of_the_one_dev_issuer(tmp_path: Path) -> None:
    settings = top_settings(tmp_path / "data")
    token = load_or_create(settings.data_dir).mint("alice", ["admin"], "Default")
    for index in (1, 2):
        directory = node_dir(settings.data_dir, index)
        share_keys(settings, directory)
        share_keys(settings, directory)  # a second start finds its links in place
        node = top_settings(directory)
        assert load_or_create(node.data_dir).kid == load_or_create(settings.data_dir).kid
        assert validator_for(node).validate(token).username == "alice"
        # The loopback credential the commands send through the balancer.
        assert internal_secret(directory) == internal_secret(settings.data_dir)
    assert not (node_dir(settings.data_dir, 1) / "keys" / "dev-issuer.pem").resolve() \
        .is_relative_to(node_dir(settings.data_dir, 1))


def test_a_missing_haproxy_is_one_line_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "data"
    for name in ("ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_OWNER_URL", "ORTHANC_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ATRIUM_DATA_DIR", str(data_dir))
    monkeypatch.setattr(balancer.shutil, "which", lambda *_args, **_kw: None)
    monkeypatch.setattr(balancer, "HAPROXY_CANDIDATES", [])

    status = main(["run", "--nodes", "2"])

    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "HAProxy is not installed" in lines[0], captured.err
    assert "make cluster" in lines[0]
    assert not (data_dir / "postgres").exists() and not (data_dir / "nodes").exists()


@pytest.mark.parametrize("nodes", ["0", "17", "two"])
def test_a_wrong_node_count_is_refused(nodes: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "--nodes", nodes])
    assert exited.value.code == 2
    assert "--nodes" in capsys.readouterr().err


class _Health(BaseHTTPRequestHandler):
    """Answers ``/api/health`` with the statuses queued on the server, then 200."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        queued: list[int] = self.server.statuses  # type: ignore[attr-defined]
        status = queued.pop(0) if queued else 200
        body = b'{"status": "degraded", "checks": {"mirror": {"status": "degraded"}}}' \
            if status != 200 else b'{"status": "ok"}'
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@dataclass
class _Node:
    """What the health wait reads of a node: its URL, process and log."""
    url: str
    logfile: Path
    proc: subprocess.Popen[bytes] | None = None


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    server.statuses = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_node_is_announced_once_its_health_turns_ok(
        health_server: ThreadingHTTPServer, tmp_path: Path) -> None:
    health_server.statuses = [503, 503]  # type: ignore[attr-defined]
    node = _Node(f"http://127.0.0.1:{health_server.server_port}", tmp_path / "orthanc.log")
    wait_healthy("node-1", node, timeout=30)  # type: ignore[arg-type]
    assert health_server.statuses == []  # type: ignore[attr-defined]


def test_a_node_whose_health_stays_down_stops_the_start_with_what_it_said(
        health_server: ThreadingHTTPServer, tmp_path: Path) -> None:
    health_server.statuses = [503] * 1000  # type: ignore[attr-defined]
    node = _Node(f"http://127.0.0.1:{health_server.server_port}", tmp_path / "orthanc.log")
    with pytest.raises(StartupError) as raised:
        wait_healthy("node-2", node, timeout=0.5)  # type: ignore[arg-type]
    said = str(raised.value)
    assert "node-2" in said and '"mirror": {"status": "degraded"}' in said
    assert str(tmp_path / "orthanc.log") in said


def test_a_node_that_exits_before_it_is_healthy_is_reported_at_once(
        tmp_path: Path) -> None:
    exited = subprocess.Popen(["true"])
    exited.wait()
    node = _Node("http://127.0.0.1:9", tmp_path / "orthanc.log", exited)
    with pytest.raises(StartupError, match="node-1 exited"):
        wait_healthy("node-1", node, timeout=60)  # type: ignore[arg-type]
