"""`atrium run` (what `make run` runs): sets everything up, serves, and stops all it
started on SIGTERM; a second run reuses what the first created; a wrong setting
stops it with one line naming the setting. With `ATRIUM_DATABASE_URL` it keeps
everything on that server — Atrium's rows, Orthanc's index — starts no cluster of
its own, and still runs Atrium as a role that cannot change audit rows. Every
start-up failure is one line and a non-zero exit, never a traceback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from psycopg import errors

from atrium import devenv
from atrium.cli import main
from atrium.devenv import REPO_ROOT, LocalCluster, wait_until
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


def serve_once(env: dict[str, str], log: Path, own_server: LocalCluster | None = None,
               while_running: Callable[[], None] | None = None) -> str:
    """Start `atrium run`, upload one instance, see it mirrored, SIGTERM; the output."""
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
        assert requests.post(f"http://127.0.0.1:{http}/api/instances", data=blob,
                             headers={**auth, "Content-Type": "application/dicom"},
                             timeout=30).status_code == 201
        wait_until(lambda: requests.get(f"http://127.0.0.1:{http}/api/mirror/status",
                                        headers=auth,
                                        timeout=10).json()["mirror"]["instances"] >= 1,
                   30, what="the upload in the mirror")
        if while_running is not None:
            while_running()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(90) == 0
    assert not listening(http), "Orthanc still listening after SIGTERM"
    assert not listening(pg), "PostgreSQL still listening after SIGTERM"
    if own_server is not None:
        assert own_server.is_running(), "SIGTERM stopped a server `atrium run` did not start"
    return log.read_text()


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


# -- a team's own PostgreSQL server ---------------------------------------------------
@pytest.fixture(scope="module")
def own_server(workspace: Path) -> Iterator[LocalCluster]:
    """A PostgreSQL server started apart from `atrium run`, as a team's own would be;
    its superuser (`atrium`) plays the team's database administrator."""
    server = LocalCluster(workspace / "own-pg", port=free_port())
    server.init()
    server.start()
    yield server
    server.stop("immediate")


def as_admin(server: LocalCluster, *statements: str, database: str = "postgres") -> None:
    with psycopg.connect(server.url(database), autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement)


def query(url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(statement).fetchall()


def role_url(server: LocalCluster, role: str, password: str, database: str) -> str:
    return f"postgresql://{role}:{password}@127.0.0.1:{server.port}/{database}"


def runtime_url_of(data_dir: Path) -> str:
    """The URL Atrium runs with inside Orthanc, as `atrium run` configured it."""
    config = json.loads((data_dir / "orthanc" / "orthanc.json").read_text())
    return str(config["Atrium"]["DatabaseUrl"])


def assert_cannot_change_audit_rows(runtime_url: str, owner: str) -> None:
    with psycopg.connect(runtime_url, autocommit=True) as conn:
        current = conn.execute("SELECT current_user").fetchone()
        assert current is not None and current[0] != owner
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("UPDATE audit_log SET action = action")


def assert_connected_as(server: LocalCluster, database: str, role: str) -> None:
    """Atrium inside Orthanc holds connections to `database` as `role`."""
    def connected() -> bool:
        rows = query(server.url("postgres"), "SELECT usename, datname FROM pg_stat_activity")
        return (role, database) in rows

    wait_until(connected, 30, what=f"Atrium connected to {database} as {role}")


def test_run_with_a_database_url_keeps_atrium_and_orthanc_on_that_server(
        workspace: Path, own_server: LocalCluster) -> None:
    name = f"team_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    as_admin(own_server, f"CREATE ROLE {name} LOGIN CREATEDB CREATEROLE PASSWORD '{password}'",
             f"CREATE DATABASE {name} OWNER {name}")
    data_dir = workspace / f"own-run-{name}"
    env = run_env(data_dir, ATRIUM_DATABASE_URL=role_url(own_server, name, password, name))

    text = serve_once(env, workspace / f"{name}.log", own_server, while_running=lambda:
                      assert_connected_as(own_server, name, f"{name}_app"))

    assert not (data_dir / "postgres").exists(), "a private cluster was created"
    assert f"Atrium's rows on 127.0.0.1:{own_server.port}/{name} as {name}_app" in text
    assert f"Orthanc's index on 127.0.0.1:{own_server.port}/orthanc as {name}" in text
    assert password not in text
    # The uploaded instance is in Orthanc's index (database `orthanc`, created beside
    # Atrium's) and in Atrium's mirror, both on the team's server.
    assert query(own_server.url("orthanc"),
                 "SELECT count(*) FROM resources WHERE resourcetype = 3")[0][0] >= 1
    assert query(own_server.url(name), "SELECT count(*) FROM instances")[0][0] >= 1
    assert_cannot_change_audit_rows(runtime_url_of(data_dir), owner=name)


def test_run_with_an_owner_url_a_runtime_role_and_an_orthanc_database_url_uses_them(
        workspace: Path, own_server: LocalCluster) -> None:
    name = f"ward_{uuid.uuid4().hex[:8]}"
    owner, runtime, index = f"{name}_owner", f"{name}_rt", f"{name}_index"
    password = f"pw-{uuid.uuid4().hex}"
    # An owner who may create neither roles nor databases: the administrator made all.
    as_admin(own_server, f"CREATE ROLE {owner} LOGIN PASSWORD '{password}'",
             f"CREATE ROLE {runtime} LOGIN PASSWORD '{password}'",
             f"CREATE DATABASE {name} OWNER {owner}", f"CREATE DATABASE {index} OWNER {owner}")
    data_dir = workspace / f"own-run-{name}"
    env = run_env(data_dir,
                  ATRIUM_DATABASE_URL=role_url(own_server, runtime, password, name),
                  ATRIUM_DATABASE_OWNER_URL=role_url(own_server, owner, password, name),
                  ORTHANC_DATABASE_URL=role_url(own_server, owner, password, index))

    text = serve_once(env, workspace / f"{name}.log", own_server, while_running=lambda:
                      assert_connected_as(own_server, name, runtime))

    assert not (data_dir / "postgres").exists()
    assert f"Orthanc's index on 127.0.0.1:{own_server.port}/{index} as {owner}" in text
    assert query(own_server.url(index),
                 "SELECT count(*) FROM resources WHERE resourcetype = 3")[0][0] >= 1
    assert query(own_server.url(name), "SELECT count(*) FROM instances")[0][0] >= 1
    assert_cannot_change_audit_rows(runtime_url_of(data_dir), owner=owner)


def fails_in_one_line(env: dict[str, str]) -> str:
    """`atrium run` refuses to start: exit status non-zero, one line on stderr, no
    traceback anywhere, nothing left listening; that line."""
    result = subprocess.run([ATRIUM, "run"], env=env, cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("atrium: "), result.stderr
    assert not listening(int(env["ORTHANC_HTTP_PORT"])), "Orthanc left running"
    assert not listening(int(env["ATRIUM_PG_PORT"])), "a private cluster left running"
    return lines[0]


def test_an_unreachable_server_is_one_line(workspace: Path) -> None:
    port = free_port()
    url = f"postgresql://team:pw-unreachable@127.0.0.1:{port}/atrium"
    line = fails_in_one_line(run_env(workspace / "unreachable", ATRIUM_DATABASE_URL=url))
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port}/atrium" in line
    assert "pw-unreachable" not in line


def test_a_wrong_password_is_one_line(workspace: Path, own_server: LocalCluster) -> None:
    url = role_url(own_server, "atrium", "not-the-password", "postgres")
    line = fails_in_one_line(run_env(workspace / "wrong-pw", ATRIUM_DATABASE_URL=url))
    assert "ATRIUM_DATABASE_URL" in line and "password authentication failed" in line
    assert "not-the-password" not in line


def test_a_missing_database_that_may_not_be_created_is_one_line_saying_what_to_create(
        workspace: Path, own_server: LocalCluster) -> None:
    role = f"nodb_{uuid.uuid4().hex[:8]}"
    as_admin(own_server, f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    url = role_url(own_server, role, "pw", f"{role}_atrium")
    line = fails_in_one_line(run_env(workspace / role, ATRIUM_DATABASE_URL=url))
    assert f'CREATE DATABASE "{role}_atrium" OWNER "{role}";' in line


def test_an_owner_that_may_not_create_roles_is_refused_with_the_sql_to_run(
        workspace: Path, own_server: LocalCluster) -> None:
    role = f"norole_{uuid.uuid4().hex[:8]}"
    as_admin(own_server, f"CREATE ROLE {role} LOGIN PASSWORD 'pw'",
             f"CREATE DATABASE {role} OWNER {role}")
    line = fails_in_one_line(run_env(workspace / role,
                                     ATRIUM_DATABASE_URL=role_url(own_server, role, "pw", role)))
    assert f'CREATE ROLE "{role}_app" LOGIN PASSWORD' in line
    assert "ATRIUM_DATABASE_OWNER_URL" in line
    assert query(own_server.url(role), "SELECT to_regclass('schema_migrations')") == [(None,)], \
        "nothing is migrated before Atrium knows it can run as a role apart from the owner"


def test_a_runtime_role_that_owns_the_tables_is_refused(
        workspace: Path, own_server: LocalCluster) -> None:
    role = f"same_{uuid.uuid4().hex[:8]}"
    as_admin(own_server, f"CREATE ROLE {role} LOGIN CREATEROLE PASSWORD 'pw'",
             f"CREATE DATABASE {role} OWNER {role}")
    url = role_url(own_server, role, "pw", role)
    line = fails_in_one_line(run_env(workspace / role, ATRIUM_DATABASE_URL=url,
                                     ATRIUM_DATABASE_OWNER_URL=url))
    assert "could change audit rows" in line


@pytest.mark.skipif(os.geteuid() != 0, reason="PostgreSQL runs as `postgres` only for root")
def test_as_root_a_data_dir_the_postgres_user_cannot_reach_is_one_line(
        workspace: Path) -> None:
    private = workspace / "root-only"
    private.mkdir(mode=0o700)
    line = fails_in_one_line(run_env(private / "data"))
    assert "postgres system user cannot write" in line and "ATRIUM_DATA_DIR" in line


def test_a_private_cluster_port_in_use_is_one_line(workspace: Path) -> None:
    env = run_env(workspace / "pg-port-taken")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["ATRIUM_PG_PORT"])))
        taken.listen()
        result = subprocess.run([ATRIUM, "run"], env=env, cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ATRIUM_PG_PORT" in lines[0], result.stderr
    assert not listening(int(env["ORTHANC_HTTP_PORT"]))


def test_an_orthanc_port_in_use_is_one_line(workspace: Path, own_server: LocalCluster) -> None:
    env = run_env(workspace / "http-port-taken")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", int(env["ORTHANC_HTTP_PORT"])))
        taken.listen()
        result = subprocess.run([ATRIUM, "run"], env=env, cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "ORTHANC_HTTP_PORT" in lines[0], result.stderr
    assert not (workspace / "http-port-taken" / "postgres").exists(), \
        "nothing is started once a port is known to be taken"


def test_missing_postgresql_binaries_are_one_line(
        workspace: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for name, value in run_env(workspace / "no-binaries").items():
        monkeypatch.setenv(name, value)
    for name in ("ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_OWNER_URL", "ORTHANC_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(devenv, "POSTGRES_BIN_CANDIDATES", [])
    monkeypatch.setattr(devenv.shutil, "which", lambda *_args, **_kw: None)

    status = main(["run"])

    captured = capsys.readouterr()
    assert status == 1 and "Traceback" not in captured.out + captured.err
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "initdb is not installed" in lines[0], captured.err
