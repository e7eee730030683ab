"""``atrium run``, what ``make run`` runs: PostgreSQL ready, migrations applied,
Orthanc with Atrium started, then served in the foreground until a signal.

PostgreSQL is the team's own server when ``ATRIUM_DATABASE_URL`` is set — Atrium's
rows there, Orthanc's index there too (``ORTHANC_DATABASE_URL``, or a database
``orthanc`` beside Atrium's), and no private cluster — and otherwise a private
cluster in the data directory. Either way Atrium runs inside Orthanc as a role that
cannot change audit rows (:mod:`atrium.pgserver`).

With ``--nodes N`` (``make cluster``) it starts N Orthanc + Atrium processes over the
same databases, storage directory and object store, and HAProxy in front of them on
the two ports a single Orthanc would have (:mod:`atrium.balancer`).

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
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atrium.balancer import HEALTH_PATH, NODE_HEADER, Balancer, Node, haproxy_binary, haproxy_config
from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config
from atrium.pgserver import Databases, StartupError, grant_runtime, prepare
from atrium.settings import Settings

__all__ = ["node_configs", "node_dir", "run", "share_keys"]

# Orthanc gets the database URLs through the configuration file we write (mode
# 0600), never from the environment: inside Orthanc an environment variable would
# override the file and Atrium would run as the owner.
_DATABASE_VARIABLES = frozenset({"ATRIUM_DATABASE_URL", "ATRIUM_DATABASE_OWNER_URL",
                                 "ATRIUM_ORTHANC_INDEX_URL", "ORTHANC_DATABASE_URL"})


def run(settings: Settings, base_config: Mapping[str, Any], nodes: int = 1) -> int:
    """Start, serve until SIGINT/SIGTERM, stop everything started; the exit status.
    With ``nodes`` > 1: that many Orthanc + Atrium processes behind HAProxy
    (:func:`_start_nodes`)."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # Until Atrium serves, SIGTERM interrupts start-up as Ctrl-C does, so that what
    # was already started is stopped rather than left behind.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with contextlib.ExitStack() as started:
            try:
                if nodes > 1:
                    cluster = _start_nodes(settings, base_config, started, nodes)
                else:
                    orthanc = _start(settings, base_config, started)
            except KeyboardInterrupt:
                print("atrium: interrupted during start-up", file=sys.stderr)
                return 130
            except Exception as exc:  # noqa: BLE001 - the edge: one line, never a traceback
                print(f"atrium: {_one_line(exc, settings.data_dir)}", file=sys.stderr)
                return 1
            if nodes > 1:
                return _serve_nodes(settings, cluster)
            return _serve(settings, orthanc)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _start(settings: Settings, base_config: Mapping[str, Any],
           started: contextlib.ExitStack) -> OrthancProcess:
    databases = _prepare(settings, started)
    config = orthanc_config(
        base=base_config, data_dir=settings.data_dir, index_url=databases.index_url,
        http_port=settings.orthanc_http_port, dicom_port=settings.orthanc_dicom_port,
        aet=settings.orthanc_aet,
        atrium={"DatabaseUrl": databases.runtime_url, "DatabaseOwnerUrl": databases.owner_url,
                "OrthancIndexUrl": databases.index_url},
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py",
    )
    env = {k: v for k, v in os.environ.items() if k not in _DATABASE_VARIABLES}
    orthanc = OrthancProcess(settings.data_dir / "orthanc", config, env)
    started.callback(orthanc.stop)
    try:
        orthanc.start()
    except (RuntimeError, TimeoutError) as exc:
        raise StartupError(f"Orthanc did not start: {_orthanc_error(orthanc, exc)}; "
                           f"see {orthanc.logfile}") from exc
    return orthanc


def _prepare(settings: Settings, started: contextlib.ExitStack) -> Databases:
    """The listening ports free, PostgreSQL ready, the migrations applied."""
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
    return databases


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


def _banner(settings: Settings, url: str, headline: str, middle: str) -> str:
    if settings.oidc_issuer:
        how = f"from {settings.oidc_issuer} (audience {settings.oidc_audience})"
    else:
        how = ("TOKEN=$(.venv/bin/atrium token --user alice --role admin "
               f"--org {settings.default_organization})")
    sign_in = ("sign in with the identity provider" if settings.oidc_issuer
               else "sign in on the local form: any user, organization and role")
    return f"""
{headline}
  REST API   {url}/api/health   {url}/api/openapi.json   {url}/api/me
  Orthanc    {url}/ (administrators' tokens only)
  DICOMweb   {url}/dicom-web/
  Viewer     {url}/viewer/ (OHIF; {sign_in})
  DICOM      AE title {settings.orthanc_aet} on 127.0.0.1:{settings.orthanc_dicom_port}
{middle}
  Token      {how}
             then: curl -H "Authorization: Bearer $TOKEN" {url}/api/me
"""


def _serve(settings: Settings, orthanc: OrthancProcess) -> int:
    print(_banner(settings, orthanc.url, "Atrium is running (Ctrl-C stops everything).",
                  f"  Logs       {orthanc.logfile}"), flush=True)
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


# -- several nodes: atrium run --nodes N --------------------------------------------

# Settings that differ per node, or paths a node would resolve inside its own data
# directory: the runner resolves each once and writes it into every node's
# configuration file, where an inherited variable of the same name would override it.
_NODE_VARIABLES = frozenset({"ATRIUM_DATA_DIR", "ORTHANC_HTTP_PORT", "ORTHANC_DICOM_PORT",
                             "ATRIUM_ORTHANC_URL", "ATRIUM_STORAGE_URL",
                             "ATRIUM_AUDIT_ANCHOR_KEY", "ATRIUM_AET_ORGANIZATIONS"})
# A node loads Atrium while the others do, on the same cores.
_NODE_START_SECONDS = 180


@dataclass
class _Nodes:
    orthancs: list[OrthancProcess]
    names: list[str]
    balancer: Balancer


def node_dir(data_dir: Path, index: int) -> Path:
    """Node ``index``'s own data directory (1-based): its Orthanc configuration and
    log, the mirror's parse memory."""
    return data_dir / "nodes" / f"node-{index}"


def share_keys(settings: Settings, node_data_dir: Path) -> None:
    """Make the node use the data directory's dev issuer key and internal secret.

    A symbolic link per file, made before the node starts, rather than a copy: one
    key, so that a token of ``atrium token`` (which reads ``<data_dir>``) is
    accepted by every node, and a key replaced in ``<data_dir>`` is replaced for all
    at their next start. The internal secret is shared so that the commands acting
    on a running Atrium (status, verify, backfill) work through the balancer, which
    forwards from loopback. Per file, not the whole ``keys/`` directory: what
    another feature keeps there stays the node's own unless it is added here.
    """
    from atrium.auth.dev_issuer import load_or_create
    from atrium.auth.internal import internal_secret

    internal_secret(settings.data_dir)
    # Where atrium.auth.internal keeps it (tests/unit/test_cluster_config.py checks).
    shared = [settings.data_dir / "keys" / "internal-secret"]
    if not settings.oidc_issuer:
        shared.append(load_or_create(settings.data_dir).path)
    for target in shared:
        link = node_data_dir / target.relative_to(settings.data_dir)
        link.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(target, link.parent))


def node_configs(settings: Settings, base_config: Mapping[str, Any], databases: Databases,
                 ports: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """Orthanc's configuration of each node: its own ports and data directory; one
    index, one Orthanc storage directory, one Atrium database, one object store, one
    audit anchoring key and one AE title map for all."""
    from atrium.operations.wiring import anchor_key_path

    configs = []
    for index, (http_port, dicom_port) in enumerate(ports, start=1):
        config = orthanc_config(
            base=base_config, data_dir=settings.data_dir, index_url=databases.index_url,
            http_port=http_port, dicom_port=dicom_port, aet=settings.orthanc_aet,
            atrium={"DatabaseUrl": databases.runtime_url,
                    "DatabaseOwnerUrl": databases.owner_url,
                    "OrthancIndexUrl": databases.index_url,
                    "DataDir": str(node_dir(settings.data_dir, index)),
                    "OrthancUrl": f"http://127.0.0.1:{http_port}",
                    "StorageUrl": settings.storage_url,
                    "AuditAnchorKey": str(anchor_key_path(settings)),
                    "AetOrganizations": dict(settings.aet_organizations)},
            python_script=REPO_ROOT / "plugin" / "atrium_entry.py",
        )
        config["Name"] = f"Atrium {settings.orthanc_aet} node-{index}"
        configs.append(config)
    return configs


def _start_nodes(settings: Settings, base_config: Mapping[str, Any],
                 started: contextlib.ExitStack, count: int) -> _Nodes:
    haproxy_binary()  # before anything is started: a missing HAProxy is one line
    databases = _prepare(settings, started)
    from atrium.operations.anchoring import load_or_create_key
    from atrium.operations.wiring import anchor_key_path

    load_or_create_key(anchor_key_path(settings))  # once, before the nodes race for it
    ports = [(_free_port(), _free_port()) for _ in range(count)]
    env = {k: v for k, v in os.environ.items()
           if k not in _DATABASE_VARIABLES | _NODE_VARIABLES}
    orthancs, names = [], []
    for index, config in enumerate(node_configs(settings, base_config, databases, ports),
                                   start=1):
        directory = node_dir(settings.data_dir, index)
        share_keys(settings, directory)
        orthanc = OrthancProcess(directory / "orthanc", config, env)
        started.callback(orthanc.stop)
        orthanc.launch()
        orthancs.append(orthanc)
        names.append(f"node-{index}")
    for name, orthanc in zip(names, orthancs, strict=True):
        try:
            orthanc.wait_ready(_NODE_START_SECONDS)
        except (RuntimeError, TimeoutError) as exc:
            raise StartupError(f"Orthanc {name} did not start: "
                               f"{_orthanc_error(orthanc, exc)}; see {orthanc.logfile}") from exc
        wait_healthy(name, orthanc, _NODE_START_SECONDS)
        print(f"atrium: {name} on {orthanc.url} (DICOM {orthanc.config['DicomPort']})",
              flush=True)
    config_text = haproxy_config(
        http_port=settings.orthanc_http_port, dicom_port=settings.orthanc_dicom_port,
        nodes=[Node(name, http, dicom) for name, (http, dicom) in zip(names, ports,
                                                                       strict=True)])
    balancer = Balancer(settings.data_dir / "balancer", config_text,
                        settings.orthanc_http_port)
    started.callback(balancer.stop)
    balancer.start()
    return _Nodes(orthancs, names, balancer)


def _serve_nodes(settings: Settings, nodes: _Nodes) -> int:
    """Serve until a signal. A node that exits is reported and the others go on
    serving (HAProxy takes it out of rotation); no node left, or no HAProxy, ends
    the run with status 1."""
    url = f"http://127.0.0.1:{settings.orthanc_http_port}"
    rows = [f"  {'Nodes' if i == 0 else '':<10} {name} {orthanc.url} (DICOM "
            f"{orthanc.config['DicomPort']}), log {orthanc.logfile}"
            for i, (name, orthanc) in enumerate(zip(nodes.names, nodes.orthancs, strict=True))]
    rows.append(f"  Balancer   HAProxy, {nodes.balancer.config_path}; the {NODE_HEADER} "
                "header names the node that answered")
    print(_banner(settings, url, f"Atrium is running on {len(nodes.orthancs)} nodes behind "
                  "HAProxy (Ctrl-C stops everything).", "\n".join(rows)), flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    reported: set[str] = set()
    try:
        while not stop.is_set():
            for name, orthanc in zip(nodes.names, nodes.orthancs, strict=True):
                if name not in reported and orthanc.proc is not None \
                        and orthanc.proc.poll() is not None:
                    reported.add(name)
                    print(f"atrium: Orthanc {name} exited ({orthanc.proc.returncode}); the "
                          f"other nodes serve on; see {orthanc.logfile}", file=sys.stderr)
            if len(reported) == len(nodes.orthancs):
                print("atrium: every node exited", file=sys.stderr)
                return 1
            proc = nodes.balancer.proc
            if proc is not None and proc.poll() is not None:
                print(f"atrium: HAProxy exited ({proc.returncode}); see "
                      f"{nodes.balancer.logfile}", file=sys.stderr)
                return 1
            stop.wait(1)
        return 0
    finally:
        print("atrium: stopping", file=sys.stderr)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def wait_healthy(name: str, orthanc: OrthancProcess, timeout: float) -> None:
    """Until the node's health answers 200: the balancer keeps a node out of rotation
    before that, so "running" is said only of nodes that can take requests. A node
    that answered ``/system`` has been seen to answer 503 here just after (which
    check said so was not recorded); if one stays down, the start says what it
    reported."""
    import requests

    said = "no answer"
    deadline = time.monotonic() + timeout
    while True:
        if orthanc.proc is not None and orthanc.proc.poll() is not None:
            raise StartupError(f"Orthanc {name} exited ({orthanc.proc.returncode}); "
                               f"see {orthanc.logfile}")
        try:
            reply = requests.get(f"{orthanc.url}{HEALTH_PATH}", timeout=5)
            if reply.status_code == 200:
                return
            said = reply.text[:300]
        except requests.RequestException as exc:
            said = type(exc).__name__
        if time.monotonic() > deadline:
            raise StartupError(f"Orthanc {name} started but its health did not turn ok "
                               f"within {timeout:.0f}s ({said}); see {orthanc.logfile}")
        time.sleep(0.2)


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
