"""Orthanc runs the Atrium beside the entry script it was given, whatever the venv's
editable install names: a second checkout sharing the first one's venv (as the
benchmarks' clean clones do) must not run the first one's code."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from atrium.devenv import REPO_ROOT, LocalCluster, OrthancProcess, orthanc_config
from atrium.migrations import apply_migrations
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def test_orthanc_imports_the_package_beside_its_entry_script(tmp_path: Path,
                                                             pg_cluster: LocalCluster) -> None:
    copy = tmp_path / "checkout" / "plugin"
    shutil.copytree(REPO_ROOT / "plugin", copy,
                    ignore=shutil.ignore_patterns("__pycache__", "*.nbi", "*.nbc"))
    imported = tmp_path / "imported-from.txt"
    with (copy / "atrium" / "__init__.py").open("a") as init:
        init.write(f"\nopen({str(imported)!r}, 'a').write(__file__ + '\\n')\n")
    name = f"entry_{os.getpid()}"
    pg_cluster.ensure_database(f"{name}_index")
    pg_cluster.ensure_database(f"{name}_atrium")
    apply_migrations(pg_cluster.url(f"{name}_atrium"))
    workdir = tmp_path / "orthanc"
    config = orthanc_config(
        base=json.loads((REPO_ROOT / "orthanc-config" / "orthanc.json").read_text()),
        data_dir=workdir, cluster=pg_cluster, index_database=f"{name}_index",
        http_port=free_port(), dicom_port=free_port(), aet="ATRIUM",
        atrium={"DatabaseUrl": pg_cluster.url(f"{name}_atrium"),
                "StorageUrl": f"file://{workdir / 'objects'}"},
        python_script=copy / "atrium_entry.py")
    # The copy has no venv of its own: it uses this checkout's, whose editable
    # install puts this checkout's plugin directory on sys.path.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATRIUM_")}
    env["ATRIUM_VENV"] = str(REPO_ROOT / ".venv")
    orthanc = OrthancProcess(workdir, config, env)
    orthanc.start()
    try:
        assert imported.read_text().splitlines() == [str(copy / "atrium" / "__init__.py")]
    finally:
        orthanc.stop()
