"""``atrium run``, what ``make run`` runs: PostgreSQL ready, migrations applied,
Orthanc with Atrium started, then served in the foreground until a signal.

PostgreSQL is the team's own server when ``ATRIUM_DATABASE_URL`` is set — Atrium's
rows there, Orthanc's index there too (``ORTHANC_DATABASE_URL``, or a database
``orthanc`` beside Atrium's), and no private cluster — and otherwise a private
cluster in the data directory. Either way Atrium runs inside Orthanc as a role that
cannot change audit rows (:mod:`atrium.pgserver`).

Every start-up failure ends here, at the command's edge, as one line on stderr and
exit status 1: never a traceback. What was started before the failure is stopped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config
from atrium.pgserver import StartupError, grant_runtime, prepare
from atrium.settings import Settings

__all__ = ["run"]

# Orthanc gets the database URLs through the configuration file we write (mode
# 0600), never from the environment: inside Orthanc an environment variable would
# override the file and Atrium would run as the owner.
_DATABASE_VARIABLES = frozenset({"ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_OWNER_URL",
                                 "ATRIUM_ORTHANC_INDEX_URL", "ORTHANC_DATABASE_URL"})


def run(settings: Settings, base_config: Mapping[str, Any]) -> int:
    """Start, serve until SIGINT/SIGTERM, stop everything started; the exit status."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Until Atrium serves, SIGTERM interrupts start-up as Ctrl-C does, so that what
    # was already started is stopped rather than left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as started:
            try:
                orthanc = _start(settings, base_config, started)
            except KeyboardInterrupt:
                print("atrium: interrupted during start-up", file=sys.stderr)
                return 130
            except Exception as exc:  # noqa: BLE001 - the edge: one line, never a traceback
                print(f"atrium: {_one_line(exc, settings.data_dir)}", file=sys.stderr)
                return 1
            return _serve(settings, orthanc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(settings: Settings, base_config: Mapping[str, Any],
           started: contextlib.ExitStack) -> OrthancProcess:
    for name, port in (("ORTHANC_HTTP_PORT", settings.orthanc_http_port),
                       ("ORTHANC_DICOM_PORT", settings.orthanc_dicom_port)):
        if _port_taken(port):
            raise StartupError(f"{name}: port {port} is in use by another program: stop it "
                               f"or set {name} to a free port")
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    if settings.private_cluster:
        cluster = _start_cluster(data_dir, started)
        owner_setting = f"the private cluster in {cluster.pgdata}"
    else:
        owner_setting = ("ATRIUM_DATABASE_OWNER_URL" if settings.database_owner_url
                         else "ATRIUM_DATABASE_URL")
        print("atrium: PostgreSQL is your server (ATRIUM_DATABASE_URL): no private cluster")
    databases = prepare(
        owner_url=settings.owner_url, owner_setting=owner_setting,
        runtime_url=settings.database_url if settings.database_owner_url else None,
        index_url=settings.orthanc_database_url,
        password_file=data_dir / "postgres-app.password")
    for line in databases.lines():
        print(f"atrium: {line}")

    from atrium.migrations import apply_migrations

    applied = apply_migrations(databases.owner_url)
    print(f"atrium: migrations applied: {len(applied)}", flush=True)
    grant_runtime(databases)

    config = orthanc_config(
        base=base_config, data_dir=data_dir, index_url=databases.index_url,
        http_port=settings.orthanc_http_port, dicom_port=settings.orthanc_dicom_port,
        aet=settings.orthanc_aet,
        atrium={"DatabaseUrl": databases.runtime_url, "DatabaseOwnerUrl": databases.owner_url,
                "OrthancIndexUrl": databases.index_url},
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py",
    )
    env = {k: v for k, v in os.environ.items() if k not in _DATABASE_VARIABLES}
    orthanc = OrthancProcess(data_dir / "orthanc", config, env)
    started.callback(orthanc.stop)
    try:
        orthanc.start()
    except (RuntimeError, TimeoutError) as exc:
        raise StartupError(f"Orthanc did not start: {_orthanc_error(orthanc, exc)}; "
                           f"see {orthanc.logfile}") from exc
    return orthanc


def _start_cluster(data_dir: Path, started: contextlib.ExitStack) -> LocalCluster:
    data_dir.chmod(0o755)  # the postgres system user must reach its cluster
    cluster = LocalCluster(data_dir)
    print(f"atrium: PostgreSQL cluster in {cluster.pgdata} (port {cluster.port})")
    cluster.init()
    taken = f"ATRIUM_PG_PORT: port {cluster.port} is in use by another program"
    if cluster.is_running():
        if not (cluster.pgdata / "postmaster.pid").exists():
            raise StartupError(f"{taken} (a PostgreSQL server that is not the private "
                               "cluster): set ATRIUM_PG_PORT to a free port, or "
                               "ATRIUM_DATABASE_URL to use that server")
    elif _port_taken(cluster.port):
        raise StartupError(f"{taken}: stop it or set ATRIUM_PG_PORT to a free port")
    started.callback(cluster.stop)  # registered first: a half-started cluster stops too
    cluster.start()
    return cluster


def _serve(settings: Settings, orthanc: OrthancProcess) -> int:
    url = orthanc.url
    if settings.oidc_issuer:
        how = f"from {settings.oidc_issuer} (audience {settings.oidc_audience})"
    else:
        how = ("TOKEN=$(.venv/bin/atrium token --user alice --role admin "
               f"--org {settings.default_organization})")
    sign_in = ("sign in with the identity provider" if settings.oidc_issuer
               else "sign in on the local form: any user, organization and role")
    print(f"""
Atrium is running (Ctrl-C stops everything).
  REST API   {url}/api/health   {url}/api/openapi.json   {url}/api/me
  Orthanc    {url}/ (administrators' tokens only)
  DICOMweb   {url}/dicom-web/
  Viewer     {url}/viewer/ (OHIF; {sign_in})
  DICOM      AE title {settings.orthanc_aet} on 127.0.0.1:{settings.orthanc_dicom_port}
  Logs       {orthanc.logfile}
  Token      {how}
             then: curl -H "Authorization: Bearer $TOKEN" {url}/api/me
""", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.is_set():
            if orthanc.proc is not None and orthanc.proc.poll() is not None:
                print(f"atrium: Orthanc exited ({orthanc.proc.returncode}); see "
                      f"{orthanc.logfile}", file=sys.stderr)
                return 1
            stop.wait(1)
        return 0
    finally:
        print("atrium: stopping", file=sys.stderr)


def _port_taken(port: int) -> bool:
    """Whether something listens on ``port``. SO_REUSEADDR as the servers set it, so
    that the TIME_WAIT connections of a previous run do not count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _orthanc_error(orthanc: OrthancProcess, exc: BaseException) -> str:
    """Orthanc's last error line (its log lines start with their level: E, W, I)."""
    errors = [line for line in orthanc.log_tail(200).splitlines() if line.startswith("E")]
    if errors:
        return errors[-1].split("] ", 1)[-1].strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _one_line(exc: BaseException, data_dir: Path) -> str:
    if isinstance(exc, StartupError):
        return str(exc)
    if isinstance(exc, subprocess.CalledProcessError):
        tool = next((Path(str(arg)).name for arg in exc.cmd if "/" in str(arg)), str(exc.cmd[0]))
        said = [line.strip() for line in (exc.stderr or "").splitlines() if line.strip()]
        return (f"PostgreSQL's {tool} failed (exit {exc.returncode})"
                + (f": {said[0]}" if said else "") + f"; see {data_dir / 'postgres.log'}")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    line = f"start-up failed: {type(exc).__name__}" + (f": {first}" if first else "")
    # An unforeseen failure: the traceback is kept for whoever looks into it.
    path = data_dir / "run-error.log"
    try:
        with path.open("a") as handle:
            handle.write("".join(traceback.format_exception(exc)))
    except OSError:
        return line
    return f"{line} (traceback in {path})"
