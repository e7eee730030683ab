"""A PostgreSQL server for `atrium run`: URLs described without their password,
rewritten without losing options, translated into Orthanc's `PostgreSQL` section
and back; `ORTHANC_DATABASE_URL` validated in one line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict

from atrium.devenv import LocalCluster, orthanc_config, orthanc_index_section
from atrium.pgserver import describe, runtime_role_name, with_params
from atrium.runner import _one_line
from atrium.settings import SettingsError, load_settings, orthanc_index_url

URL = "postgresql://team:s3cret%2F@db.example.org:6543/atrium?sslmode=require"
OWN = {"ATRIUM_DATABASE_URL": URL}


@pytest.mark.parametrize("url", [URL, "host=db.example.org port=6543 dbname=atrium "
                                      "user=team password=s3cret/ sslmode=require"])
def test_a_url_is_described_by_server_database_and_role_never_its_password(url: str) -> None:
    assert describe(url) == "db.example.org:6543/atrium as team"


def test_a_url_without_host_or_port_is_described_with_libpq_defaults() -> None:
    assert describe("postgresql:///atrium?user=x") == "the local socket:5432/atrium as x"


def test_with_params_replaces_what_is_named_and_keeps_every_other_option() -> None:
    index = conninfo_to_dict(with_params(URL, dbname="orthanc"))
    assert index == {"host": "db.example.org", "port": "6543", "dbname": "orthanc",
                     "user": "team", "password": "s3cret/", "sslmode": "require"}


def test_the_runtime_role_is_named_after_its_database_and_fits_an_identifier() -> None:
    assert runtime_role_name("atrium") == "atrium_app"
    long = runtime_role_name("d" * 63)
    assert len(long) == 63 and long.endswith("_app")


@pytest.mark.parametrize("url", [URL, with_params(URL, dbname="orthanc")])
def test_orthanc_index_section_passes_the_url_and_atrium_reads_it_back(url: str) -> None:
    section = orthanc_index_section(url)
    assert section["EnableIndex"] is True and section["EnableStorage"] is False
    assert section["ConnectionUri"] == url
    assert orthanc_index_url({"PostgreSQL": section}) == url


def test_orthanc_config_keeps_the_index_where_it_is_told(tmp_path: Path) -> None:
    common = {"base": {"Atrium": {}}, "data_dir": tmp_path, "http_port": 1, "dicom_port": 2,
              "aet": "A", "atrium": {}, "python_script": tmp_path / "x.py"}
    given = orthanc_config(index_url=URL, **common)  # type: ignore[arg-type]
    assert given["PostgreSQL"]["ConnectionUri"] == URL
    cluster = LocalCluster(tmp_path, port=5599)
    private = orthanc_config(cluster=cluster, index_database="idx", **common)  # type: ignore[arg-type]
    assert private["PostgreSQL"]["ConnectionUri"] == cluster.url("idx")


def test_orthanc_database_url_reaches_the_mirror_unless_orthanc_says_otherwise(
        tmp_path: Path) -> None:
    index = with_params(URL, dbname="orthanc")
    settings = load_settings({}, {**OWN, "ORTHANC_DATABASE_URL": index}, cwd=tmp_path)
    assert settings.orthanc_database_url == index and settings.orthanc_index_url == index
    inside_orthanc = load_settings({"PostgreSQL": orthanc_index_section(URL)},
                                   {**OWN, "ORTHANC_DATABASE_URL": index}, cwd=tmp_path)
    assert inside_orthanc.orthanc_index_url == URL
    assert load_settings({}, OWN, cwd=tmp_path).orthanc_index_url is None


@pytest.mark.parametrize("bad", ["mysql://team:hunter2@db/orthanc", "team hunter2",
                                 "host=db password='hunter2"])
def test_a_malformed_orthanc_database_url_is_one_line_without_the_password(
        tmp_path: Path, bad: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({}, {**OWN, "ORTHANC_DATABASE_URL": bad}, cwd=tmp_path)
    message = str(raised.value)
    assert "ORTHANC_DATABASE_URL" in message and "\n" not in message
    assert "hunter2" not in message


def test_private_cluster_only_when_no_database_url_is_configured(tmp_path: Path) -> None:
    assert load_settings({}, OWN, cwd=tmp_path).private_cluster is False
    assert not (tmp_path / ".data").exists(), "a given URL creates nothing in the data dir"
    assert load_settings({}, {}, cwd=tmp_path).private_cluster is True


def test_a_failed_postgresql_tool_is_one_line_naming_the_tool_and_the_log(
        tmp_path: Path) -> None:
    failed = subprocess.CalledProcessError(
        1, ["runuser", "-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "start"],
        stderr="pg_ctl: could not start server\nExamine the log output.\n")
    line = _one_line(failed, tmp_path)
    assert line == ("PostgreSQL's pg_ctl failed (exit 1): pg_ctl: could not start server; "
                    f"see {tmp_path / 'postgres.log'}")


def test_an_unforeseen_failure_is_one_line_and_its_traceback_is_kept(tmp_path: Path) -> None:
    def fail() -> None:
        raise KeyError("missing")

    try:
        fail()
    except KeyError as exc:
        line = _one_line(exc, tmp_path)
    assert line.startswith("start-up failed: KeyError: 'missing'") and "\n" not in line
    assert "Traceback" in (tmp_path / "run-error.log").read_text()


def test_an_owner_url_in_keyword_form_is_accepted_as_atrium_run_writes_it(
        tmp_path: Path) -> None:
    owner = with_params(URL)  # what `atrium run` hands Orthanc when given that form
    settings = load_settings({}, {**OWN, "ATRIUM_DATABASE_OWNER_URL": owner}, cwd=tmp_path)
    assert settings.owner_url == owner
