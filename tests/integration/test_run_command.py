"""`atrium run` (what `make run` runs): sets everything up, serves, and stops all it
started on SIGTERM; a second run reuses what the first created; a wrong setting
stops it with one line naming the setting."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from atrium.devenv import REPO_ROOT, wait_until
from tests.conftest import free_port
from tests.support.dicomgen import StudySpec, make_study

pytestmark = pytest.mark.integration

ATRIUM = str(REPO_ROOT / ".venv" / "bin" / "atrium")


def run_env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ATRIUM_", "ORTHANC_"))}
    env.update(ATRIUM_DATA_DIR=str(data_dir), ATRIUM_PG_PORT=str(free_port()),
               ORTHANC_HTTP_PORT=str(free_port()), ORTHANC_DICOM_PORT=str(free_port()))
    env.update(extra)
    return env


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([ATRIUM, "run"], env=env, cwd=REPO_ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def serve_once(env: dict[str, str], log: Path) -> None:
    http, pg = int(env["ORTHANC_HTTP_PORT"]), int(env["ATRIUM_PG_PORT"])
    proc = start(env, log)
    try:
        wait_until(lambda: "Atrium is running" in log.read_text(), 120,
                   what=f"`atrium run` to start (log {log})")
        text = log.read_text()
        assert f"http://127.0.0.1:{http}/api/health" in text
        health = requests.get(f"http://127.0.0.1:{http}/api/health", timeout=10)
        assert health.status_code == 200, health.text
        assert "atrium token --user" in text
        token = subprocess.run([ATRIUM, "token", "--user", "alice", "--role", "admin", "--org",
                                "Default"], env=env, cwd=REPO_ROOT, capture_output=True,
                               text=True, check=True, timeout=60).stdout.strip()
        auth = {"Authorization": f"Bearer {token}"}
        assert requests.get(f"http://127.0.0.1:{http}/instances",
                            timeout=10).status_code == 403  # Orthanc's API: tokens only
        blob = make_study(StudySpec(patient_id=f"RUN-{http}", series=1, instances_per_series=1))[0]
        assert requests.post(f"http://127.0.0.1:{http}/instances", data=blob, headers=auth,
                             timeout=30).status_code == 200
        wait_until(lambda: requests.get(f"http://127.0.0.1:{http}/api/mirror/status",
                                        headers=auth,
                                        timeout=10).json()["mirror"]["instances"] >= 1,
                   30, what="the upload in the mirror")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert not listening(http), "Orthanc still listening after SIGTERM"
    assert not listening(pg), "PostgreSQL still listening after SIGTERM"


def test_run_serves_and_stops_everything_on_sigterm_twice(workspace: Path) -> None:
    data_dir = workspace / "run-data"
    env = run_env(data_dir)
    serve_once(env, workspace / "run-1.log")
    assert (data_dir / "postgres" / "PG_VERSION").exists()
    started = time.monotonic()
    serve_once(env, workspace / "run-2.log")  # same data directory: reused, not rebuilt
    assert "migrations applied: 0" in (workspace / "run-2.log").read_text()
    assert time.monotonic() - started < 120


def test_a_wrong_setting_stops_start_up_with_one_line(workspace: Path) -> None:
    env = run_env(workspace / "bad-data", ORTHANC_HTTP_PORT="eighty")
    result = subprocess.run([ATRIUM, "run"], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORTHANC_HTTP_PORT" in lines[0] and "eighty" in lines[0]
    assert not (workspace / "bad-data").exists(), "nothing is created before settings are valid"
