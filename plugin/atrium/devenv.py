"""The local, embedded environment behind ``make run`` and ``make test``.

A private PostgreSQL cluster in the data directory and an Orthanc process loading
Atrium. Production runs neither: it points ``ATRIUM_DATABASE_URL`` at its own
PostgreSQL and runs the ``orthancteam/orthanc`` image. The test suite uses the
same classes, so what the tests start is what ``make run`` starts.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from atrium.pgserver import StartupError, ensure_login_role, secret_file

log = logging.getLogger(__name__)

POSTGRES_BIN_CANDIDATES = [Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin")]
DEFAULT_PG_PORT = 5499
REPO_ROOT = Path(__file__).resolve().parents[2]


def _postgres_bin(tool: str) -> str:
    for candidate in POSTGRES_BIN_CANDIDATES:
        if (candidate / tool).exists():
            return str(candidate / tool)
    found = shutil.which(tool)
    if not found:
        raise StartupError(f"PostgreSQL's {tool} is not installed: run `make run` (which "
                           "installs it) or apt-get install postgresql, or set "
                           "ATRIUM_DATABASE_URL to a server of your own")
    return found


def wait_until(
    condition: Callable[[], bool], timeout: float, interval: float = 0.1, what: str = "condition"
) -> None:
    """Poll ``condition`` until it is true; raise ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001, S110 - a failing probe means "not yet"
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class LocalCluster:
    """A private PostgreSQL cluster under ``<data_dir>/postgres``.

    PostgreSQL refuses to run as root, so when we are root the cluster belongs to
    the ``postgres`` system user and every server command runs as that user.
    The superuser is ``atrium`` with a random password kept in
    ``<data_dir>/postgres.password`` (mode 0600); the server listens on loopback only.
    """

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.pgdata = self.data_dir / "postgres"
        self.password_file = self.data_dir / "postgres.password"
        self.port = port or int(os.environ.get("ATRIUM_PG_PORT", DEFAULT_PG_PORT))
        self.user = "atrium"

    # -- identity ---------------------------------------------------------------
    @property
    def _as_other_user(self) -> str | None:
        return "postgres" if os.geteuid() == 0 else None

    def _run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if self._as_other_user:
            args = ["runuser", "-u", self._as_other_user, "--", *args]
        return subprocess.run(args, check=True, text=True, capture_output=True, **kwargs)

    def password(self) -> str:
        return secret_file(self.password_file)

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}:{self.password()}@127.0.0.1:{self.port}/{database}"

    # -- Atrium's runtime role ----------------------------------------------------
    APP_ROLE = "atrium_app"

    @property
    def app_password_file(self) -> Path:
        return self.data_dir / "postgres-app.password"

    def app_password(self) -> str:
        return secret_file(self.app_password_file)

    def app_url(self, database: str) -> str:
        """The URL Atrium runs with: a role that is neither superuser nor owner, so
        that audit rows are beyond its reach (sql/0007)."""
        return (f"postgresql://{self.APP_ROLE}:{self.app_password()}@127.0.0.1:{self.port}"
                f"/{database}")

    def ensure_app_role(self) -> None:
        """Create Atrium's runtime role once (cluster-wide); its password follows
        the file."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            ensure_login_role(conn, self.APP_ROLE, self.app_password())

    # -- lifecycle --------------------------------------------------------------
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def init(self) -> None:
        """Create the cluster once; later calls do nothing."""
        if self.initialized():
            return
        self.pgdata.mkdir(parents=True, exist_ok=True)
        pwfile = self.data_dir / ".initdb-pw"
        pwfile.write_text(self.password())
        try:
            if self._as_other_user:
                owner = pwd.getpwnam(self._as_other_user)
                os.chown(self.pgdata, owner.pw_uid, owner.pw_gid)
                os.chown(pwfile, owner.pw_uid, owner.pw_gid)
                self._check_reachable()
            self.pgdata.chmod(0o700)
            self._run([
                _postgres_bin("initdb"), "-D", str(self.pgdata), "-U", self.user,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8",
                "--locale=C.UTF-8",
            ])
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# Atrium's private cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 200\n"
                "shared_buffers = 256MB\n"
                "fsync = on\n"
                "synchronous_commit = on\n"
                "logging_collector = off\n"
            )

    def _check_reachable(self) -> None:
        """As root, the ``postgres`` user must be able to reach the data directory."""
        probe = subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-w", str(self.pgdata)],
            check=False,
        )
        if probe.returncode != 0:
            raise StartupError(
                f"the postgres system user cannot write {self.pgdata} (PostgreSQL does not "
                "run as root): set ATRIUM_DATA_DIR to a directory every user can traverse "
                "(not under /root), make its parents traversable, or set "
                "ATRIUM_DATABASE_URL to a server of your own"
            )

    def is_running(self) -> bool:
        result = subprocess.run(
            [_postgres_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            check=False,
        )
        return result.returncode == 0

    def start(self, timeout: float = 60) -> None:
        if self.is_running():
            return
        logfile = self.data_dir / "postgres.log"
        logfile.touch()
        if self._as_other_user:
            owner = pwd.getpwnam(self._as_other_user)
            os.chown(logfile, owner.pw_uid, owner.pw_gid)
        self._run([
            _postgres_bin("pg_ctl"), "-D", str(self.pgdata), "-l", str(logfile),
            "-o", f"-p {self.port}", "-w", "-t", str(int(timeout)), "start",
        ])
        wait_until(self.is_running, timeout, what="PostgreSQL to accept connections")

    def stop(self, mode: str = "fast") -> None:
        if not self.initialized():
            return
        subprocess.run(
            (["runuser", "-u", "postgres", "--"] if self._as_other_user else [])
            + [_postgres_bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
            check=False, capture_output=True,
        )

    def ensure_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    # -- backups and replication (docs/OPERATIONS.md) ------------------------------------
    BACKUP_CONF = "atrium-backup.conf"

    @property
    def server_owner(self) -> tuple[int, int] | None:
        """(uid, gid) of the server's system user when it is not us."""
        if not self._as_other_user:
            return None
        entry = pwd.getpwnam(self._as_other_user)
        return entry.pw_uid, entry.pw_gid

    def configure(self, settings: Mapping[str, str]) -> None:
        """Make ``settings`` the cluster's backup settings: a file of their own,
        included once by ``postgresql.conf`` and rewritten whole by each call. A
        changed ``archive_mode`` takes effect at the next start (:meth:`restart`)."""
        conf = self.pgdata / "postgresql.conf"
        include = f"include_if_exists = '{self.BACKUP_CONF}'"
        if include not in conf.read_text():
            with conf.open("a") as out:
                out.write(f"\n# backups and replication: atrium backup setup\n{include}\n")
        lines = [f"{key} = '{value.replace(chr(39), chr(39) * 2)}'"
                 for key, value in settings.items()]
        target = self.pgdata / self.BACKUP_CONF
        target.write_text("# written by Atrium (atrium backup setup); edits are replaced\n"
                          + "\n".join(lines) + "\n")
        target.chmod(0o600)
        if self.server_owner:
            os.chown(target, *self.server_owner)

    def restart(self, timeout: float = 60) -> None:
        self.stop()
        wait_until(lambda: not (self.pgdata / "postmaster.pid").exists(), timeout,
                   what="PostgreSQL to stop")
        self.start(timeout)

    def in_recovery(self) -> bool:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
        return bool(row and row[0])

    def wait_promoted(self, timeout: float = 60) -> None:
        """Until recovery has ended and the server accepts writes."""
        wait_until(lambda: not self.in_recovery(), timeout,
                   what=f"PostgreSQL on port {self.port} to leave recovery")

    def create_standby(self, data_dir: Path, port: int, *, synchronous: bool = False
                       ) -> LocalCluster:
        """A streaming-replication standby of this (running) cluster in
        ``<data_dir>/postgres``, started: ``pg_basebackup -R`` on loopback.

        With ``synchronous``, this cluster waits for the standby to have flushed each
        commit before reporting it (``synchronous_standby_names``): a commit the
        client saw survives the loss of this server. Without, the standby may lag
        by what was in flight.
        """
        standby = LocalCluster(data_dir, port=port)
        standby.data_dir.mkdir(parents=True, exist_ok=True)
        standby.data_dir.chmod(0o755)
        for source, target in ((self.password_file, standby.password_file),
                               (self.app_password_file, standby.app_password_file)):
            if source.exists():
                shutil.copyfile(source, target)
                target.chmod(0o600)
        if standby.initialized():
            raise StartupError(f"{standby.pgdata} already holds a cluster")
        standby.pgdata.mkdir(parents=True, exist_ok=True)
        standby.pgdata.chmod(0o700)
        if self.server_owner:
            os.chown(standby.pgdata, *self.server_owner)
        name = f"standby_{port}"
        conninfo = (f"host=127.0.0.1 port={self.port} user={self.user} "
                    f"application_name={name}")
        env = {**os.environ, "PGPASSWORD": self.password()}
        args = [_postgres_bin("pg_basebackup"), "-d", conninfo, "-D", str(standby.pgdata),
                "-R", "-X", "stream", "-c", "fast", "--no-password"]
        if self.server_owner:
            args = ["runuser", "-u", "postgres", "--", *args]
        subprocess.run(args, check=True, capture_output=True, text=True, env=env)
        standby.start()
        if synchronous:
            import psycopg

            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
                conn.execute("SELECT pg_reload_conf()")
        return standby

    def promote(self, timeout: float = 60) -> None:
        """End this standby's recovery: it becomes a primary on a new timeline."""
        self._run([_postgres_bin("pg_ctl"), "-D", str(self.pgdata), "-w", "-t",
                   str(int(timeout)), "promote"])
        self.wait_promoted(timeout)

    def replay_lag_bytes(self) -> int | None:
        """How far this standby's replay trails what it received; None on a primary."""
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())"
            ).fetchone()
        return None if row is None or row[0] is None else int(row[0])


def postgres_tool(tool: str) -> str:
    """The path of a PostgreSQL program (``pg_basebackup``, ``pg_verifybackup``...)."""
    return _postgres_bin(tool)


def orthanc_index_section(url: str) -> dict[str, Any]:
    """Orthanc's ``PostgreSQL`` section keeping its index at the libpq ``url``.

    ``ConnectionUri`` rather than Host/Port/Database/Username/Password: the plugin
    (orthanc-postgresql 4.0 in Debian bookworm, and later) hands it to libpq as it
    is, so both libpq forms and every option (sslmode, several hosts, a socket
    directory) reach the server unchanged, which the five fields cannot express.
    """
    return {"EnableIndex": True, "EnableStorage": False, "ConnectionUri": url, "Lock": False}


def orthanc_config(
    *,
    base: Mapping[str, Any],
    data_dir: Path,
    cluster: LocalCluster | None = None,
    index_database: str = "orthanc",
    index_url: str | None = None,
    http_port: int,
    dicom_port: int,
    aet: str,
    atrium: Mapping[str, Any],
    python_script: Path,
    with_atrium: bool = True,
    bind_loopback: bool = True,
) -> dict[str, Any]:
    """Orthanc's full configuration for the local environment, derived from ``base``
    (``orthanc-config/orthanc.json``): storage in the data directory, the index at
    ``index_url`` (else ``index_database`` in ``cluster``), the plugins, Atrium's
    section. ``with_atrium=False`` gives the same Orthanc without Atrium, the
    baseline of the benchmarks."""
    if index_url is None:
        if cluster is None:
            raise ValueError("orthanc_config needs index_url or cluster")
        index_url = cluster.url(index_database)
    config = dict(base)
    storage = data_dir / "orthanc" / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    plugins = ["/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so",
               "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
    if with_atrium:
        plugins.append("/usr/share/orthanc/plugins/libOrthancPython.so")
        config["PythonScript"] = str(python_script)
        config["PythonVerbose"] = False
    config.update({
        "Name": f"Atrium {aet}",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "Plugins": plugins,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "PostgreSQL": orthanc_index_section(index_url),
    })
    if bind_loopback:
        # Orthanc 1.10 has no listen-address option; loopback-only is enforced by
        # refusing remote HTTP access and keeping DICOM peers explicit.
        config["RemoteAccessAllowed"] = False
    section = dict(config.get("Atrium") or {})
    section.update(atrium)
    section.setdefault("DataDir", str(data_dir))
    config["Atrium"] = section
    return config


def terminate(proc: subprocess.Popen[Any] | None, timeout: float) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class OrthancProcess:
    """One Orthanc process started from a configuration file we write."""

    def __init__(self, workdir: Path, config: Mapping[str, Any],
                 env: Mapping[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.config = dict(config)
        self.env = dict(os.environ if env is None else env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.logfile = self.workdir / "orthanc.log"

    @property
    def http_port(self) -> int:
        return int(self.config["HttpPort"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 60) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Write the configuration (0600) and start the process, without waiting:
        several nodes then load Atrium at the same time (:meth:`wait_ready`)."""
        import json

        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "orthanc.json"
        config_path.write_text(json.dumps(self.config, indent=2))
        config_path.chmod(0o600)
        log_handle = self.logfile.open("ab")
        self.proc = subprocess.Popen(
            ["Orthanc", str(config_path)], stdout=log_handle, stderr=subprocess.STDOUT,
            env=self.env, cwd=self.workdir, start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        import requests

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited with code {self.proc.returncode}; the end of "
                    f"{self.logfile}:\n{self.log_tail()}")
            return requests.get(f"{self.url}/system", timeout=2).status_code in (200, 401, 403)

        deadline = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except RuntimeError:
                raise
            except Exception:  # noqa: BLE001, S110 - not listening yet
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Orthanc did not start within {timeout}s; see {self.logfile}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 30) -> None:
        terminate(self.proc, timeout)

    def kill(self) -> None:
        """``kill -9``: no clean-up, no flush, exactly like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
