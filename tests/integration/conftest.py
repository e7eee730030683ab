"""Real services for integration tests: Orthanc with Atrium loaded, PostgreSQL.

``atrium`` is one shared Orthanc+Atrium for the session (tests use their own UIDs,
so they don't step on each other). ``atrium_factory`` starts a private one for a
test that crashes, restarts or cuts off its services.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import psycopg.sql
import pytest
import requests

from atrium.auth.dev_issuer import load_or_create
from atrium.auth.internal import INTERNAL_HEADER, internal_secret
from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config, wait_until
from atrium.migrations import apply_migrations
from atrium.operations.anchoring import Anchorer, load_or_create_key
from atrium.orthanc_api import HttpOrthancApi
from atrium.storage import FileObjectStore
from tests.conftest import free_port

AET_MAP = {"MAPPED_AE": "Radiology North"}


@dataclass
class AtriumUnderTest:
    orthanc: OrthancProcess
    database_url: str
    index_cluster: LocalCluster
    atrium_cluster: LocalCluster
    dicom_port: int
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.orthanc.url

    @property
    def internal_headers(self) -> dict[str, str]:
        """Atrium's own credential: what the mirror sends to Orthanc. Tests that are
        not about security use it to talk to Orthanc directly."""
        return {INTERNAL_HEADER: internal_secret(self.workdir)}

    @property
    def api(self) -> HttpOrthancApi:
        return HttpOrthancApi(self.url, headers=self.internal_headers)

    def token(self, role: str = "admin", org: str = "Default", user: str | None = None,
              **kwargs: Any) -> str:
        """A token of this Orthanc's local dev issuer."""
        return load_or_create(self.workdir).mint(user or f"{role}-{org}".lower(), [role], org,
                                                 **kwargs)

    def auth(self, role: str = "admin", org: str = "Default", user: str | None = None
             ) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(role, org, user)}"}

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(query, params).fetchall()

    def scalar(self, query: str, params: Any = None) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def upload(self, blob: bytes) -> requests.Response:
        return requests.post(f"{self.url}/instances", data=blob, timeout=30,
                             headers={"Content-Type": "application/dicom",
                                      **self.internal_headers})

    def wait_mirrored(self, sop_uids: list[str], timeout: float = 30) -> None:
        def done() -> bool:
            count = self.scalar(
                "SELECT count(*) FROM instances WHERE sop_instance_uid = ANY(%s) "
                "AND deleted_at IS NULL", (sop_uids,))
            return bool(count == len(set(sop_uids)))

        wait_until(done, timeout, what=f"{len(sop_uids)} instances in the mirror")

    def wait_caught_up(self, timeout: float = 60) -> None:
        """Until the mirror's cursor reaches Orthanc's last change."""
        def done() -> bool:
            last = self.api.get_json("/changes?last")["Last"]
            return bool(self.scalar(
                "SELECT last_seq FROM mirror_state WHERE name='orthanc'") >= last)

        wait_until(done, timeout, what="the mirror to reach Orthanc's last change")

    def restart(self, atrium: bool = True) -> None:
        self.orthanc.stop()
        self.orthanc = OrthancProcess(self.workdir, _with_atrium(self.orthanc.config, atrium),
                                      self.orthanc.env)
        self.orthanc.start()

    def atrium_cli(self, *args: str) -> Any:
        import subprocess
        import sys

        env = {**self.orthanc.env, "ATRIUM_DATABASE_URL": self.database_url,
               "ATRIUM_ORTHANC_URL": self.url, "ATRIUM_DATA_DIR": str(self.workdir)}
        return subprocess.run(
            [sys.executable, "-m", "atrium.cli", *args], env=env, text=True,
            capture_output=True, timeout=600, check=False)


def _with_atrium(config: dict[str, Any], atrium: bool) -> dict[str, Any]:
    config = dict(config)
    plugins = [p for p in config["Plugins"] if "Python" not in p]
    if atrium:
        plugins.append("/usr/share/orthanc/plugins/libOrthancPython.so")
        config["PythonScript"] = str(REPO_ROOT / "plugin" / "atrium_entry.py")
    else:
        config.pop("PythonScript", None)
    config["Plugins"] = plugins
    return config


def _start(workspace: Path, index_cluster: LocalCluster, atrium_cluster: LocalCluster,
           with_atrium: bool = True, migrate: bool = True,
           orthanc_settings: dict[str, Any] | None = None, **atrium: Any) -> AtriumUnderTest:
    """``orthanc_settings``: top-level Orthanc configuration (``DicomModalities``...);
    ``atrium``: entries of the ``Atrium`` section."""
    name = uuid.uuid4().hex[:10]
    workdir = workspace / f"orthanc-{name}"
    index_db, atrium_db = f"orthanc_{name}", f"atrium_{name}"
    index_cluster.ensure_database(index_db)
    atrium_cluster.ensure_database(atrium_db)
    database_url = atrium_cluster.url(atrium_db)
    atrium_cluster.ensure_app_role()
    if migrate:
        apply_migrations(database_url)
    http_port, dicom_port = free_port(), free_port()
    base = json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text())
    # Atrium runs as a role that cannot change audit rows; migrations and upkeep
    # as the owner. The tests themselves inspect the database as the owner.
    section = {"DatabaseUrl": atrium_cluster.app_url(atrium_db),
               "DatabaseOwnerUrl": database_url, "AetOrganizations": AET_MAP,
               "MirrorPollSeconds": 0.5, "MirrorFullCheckSeconds": 3600,
               "StorageUrl": f"file://{workdir / 'objects'}", **atrium}
    config = orthanc_config(
        base=base, data_dir=workdir, cluster=index_cluster, index_database=index_db,
        http_port=http_port, dicom_port=dicom_port, aet="ATRIUM", atrium=section,
        python_script=REPO_ROOT / "plugin" / "atrium_entry.py", with_atrium=with_atrium)
    config.update(orthanc_settings or {})
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("ATRIUM_")}
    process = OrthancProcess(workdir, config, env)
    process.start()
    return AtriumUnderTest(process, database_url, index_cluster, atrium_cluster, dicom_port,
                           workdir)


@pytest.fixture(scope="session")
def atrium(workspace: Path, pg_cluster: LocalCluster) -> Iterator[AtriumUnderTest]:
    under_test = _start(workspace, pg_cluster, pg_cluster)
    yield under_test
    under_test.orthanc.stop()


@pytest.fixture
def atrium_factory(workspace: Path, pg_cluster: LocalCluster
                   ) -> Iterator[Callable[..., AtriumUnderTest]]:
    started: list[AtriumUnderTest] = []

    def factory(atrium_cluster: LocalCluster | None = None, **kwargs: Any) -> AtriumUnderTest:
        under_test = _start(workspace, pg_cluster, atrium_cluster or pg_cluster, **kwargs)
        started.append(under_test)
        return under_test

    yield factory
    for under_test in started:
        under_test.orthanc.kill()


@pytest.fixture(scope="session")
def migrated_template(pg_cluster: LocalCluster) -> Iterator[str]:
    """A migrated database that :func:`db_url` copies: migrating anew costs
    seconds a test."""
    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    pg_cluster.ensure_database(name)
    apply_migrations(pg_cluster.url(name))
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture
def db_url(pg_cluster: LocalCluster, migrated_template: str) -> Iterator[str]:
    """A fresh migrated database of this test's own, without Orthanc."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url("postgres"), autocommit=True) as admin:
        admin.execute(psycopg.sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            psycopg.sql.Identifier(name), psycopg.sql.Identifier(migrated_template)))
    yield pg_cluster.url(name)
    pg_cluster.drop_database(name)


@pytest.fixture
def db(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to :func:`db_url`."""
    with psycopg.connect(db_url, autocommit=True) as connection:
        yield connection


@pytest.fixture
def store(tmp_path: Path) -> FileObjectStore:
    """An empty local object store of this test's own."""
    return FileObjectStore(tmp_path / "objects")


@pytest.fixture
def anchorer(db_url: str, store: FileObjectStore, tmp_path: Path) -> Anchorer:
    """Checkpoints of :func:`db`'s audit chain into :func:`store`, a key of the test's own."""
    key = load_or_create_key(tmp_path / "keys" / "anchor.pem")
    return Anchorer(lambda: psycopg.connect(db_url, autocommit=True), store, key, node="test")


@pytest.fixture(scope="module")
def screenshots() -> Path:
    """Where the viewer tests save a screenshot of each step for a person to look at
    (``ATRIUM_SCREENSHOTS``, else ``build/viewer-screenshots``, which git ignores)."""
    directory = Path(os.environ.get("ATRIUM_SCREENSHOTS")
                     or REPO_ROOT / "build" / "viewer-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    return directory


@pytest.fixture
def browser() -> Iterator[Any]:
    """A fresh headless Chromium per test, nothing signed in, WebGL drawn by
    SwiftShader as OHIF's viewports need (the slide viewer's modules define their own)."""
    from tests.support.browser import ohif_chromium

    with ohif_chromium() as driver:
        yield driver
