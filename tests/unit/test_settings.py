"""Settings: the Atrium section, environment overrides, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from atrium.settings import SettingsError, load_settings

BASE_ENV = {"ATRIUM_DATABASE_URL": "postgresql://u:p@127.0.0.1:5432/atrium"}


def test_defaults(tmp_path: Path) -> None:
    settings = load_settings({}, BASE_ENV, cwd=tmp_path)
    assert settings.data_dir == tmp_path / ".data"
    assert settings.storage_url == f"file://{tmp_path / '.data' / 'objects'}"
    assert settings.oidc_audience == "atrium" and settings.org_claim == "organization"
    assert settings.default_organization == "Default"
    assert (settings.orthanc_http_port, settings.orthanc_dicom_port, settings.orthanc_aet) == \
        (8042, 4242, "ATRIUM")
    assert settings.oidc_issuer is None


def test_environment_overrides_the_configuration_section(tmp_path: Path) -> None:
    config = {"HttpPort": 9000, "Atrium": {"DefaultOrganization": "FromConfig",
                                           "AetOrganizations": {"CT1": "Radiology"}}}
    settings = load_settings(config, {**BASE_ENV, "ATRIUM_DEFAULT_ORGANIZATION": "FromEnv"},
                             cwd=tmp_path)
    assert settings.default_organization == "FromEnv"
    assert settings.orthanc_http_port == 9000
    assert settings.organization_for_aet("CT1") == "Radiology"
    assert settings.organization_for_aet("OTHER") == "FromEnv"
    assert settings.organization_for_aet(None) == "FromEnv"
    env = {**BASE_ENV, "ORTHANC_HTTP_PORT": "9100", "ATRIUM_AET_ORGANIZATIONS": '{"X": "Y"}'}
    settings = load_settings(config, env, cwd=tmp_path)
    assert settings.orthanc_http_port == 9100 and settings.organization_for_aet("X") == "Y"


@pytest.mark.parametrize(("env", "named"), [
    ({"ORTHANC_HTTP_PORT": "eighty"}, "ORTHANC_HTTP_PORT"),
    ({"ORTHANC_DICOM_PORT": "70000"}, "ORTHANC_DICOM_PORT"),
    ({"ORTHANC_AET": "THIS-AE-TITLE-IS-TOO-LONG"}, "ORTHANC_AET"),
    ({"ATRIUM_STORAGE_URL": "ftp://x"}, "ATRIUM_STORAGE_URL"),
    ({"ATRIUM_STORAGE_URL": "s3://bucket"}, "ATRIUM_S3_ENDPOINT"),
    ({"ATRIUM_STORAGE_URL": "file://relative"}, "ATRIUM_STORAGE_URL"),
    ({"ATRIUM_OIDC_ISSUER": "keycloak"}, "ATRIUM_OIDC_ISSUER"),
    ({"ATRIUM_AET_ORGANIZATIONS": "[1, 2]"}, "ATRIUM_AET_ORGANIZATIONS"),
    ({"ATRIUM_AET_ORGANIZATIONS": "{not json"}, "ATRIUM_AET_ORGANIZATIONS"),
    ({"ATRIUM_S3_SECURE": "maybe"}, "ATRIUM_S3_SECURE"),
    ({"ATRIUM_DATABASE_URL": "mysql-ish"}, "ATRIUM_DATABASE_URL"),
    ({"ATRIUM_MIRROR_BATCH_SIZE": "0"}, "ATRIUM_MIRROR_BATCH_SIZE"),
])
def test_a_wrong_setting_fails_with_one_line_naming_it(env: dict[str, str], named: str,
                                                       tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({}, {**BASE_ENV, **env}, cwd=tmp_path)
    message = str(error.value)
    assert named in message and "\n" not in message


def test_s3_storage_with_an_endpoint_is_accepted(tmp_path: Path) -> None:
    settings = load_settings({}, {**BASE_ENV, "ATRIUM_STORAGE_URL": "s3://atrium",
                                  "ATRIUM_S3_ENDPOINT": "minio:9000", "ATRIUM_S3_SECURE": "false"},
                             cwd=tmp_path)
    assert settings.storage_url == "s3://atrium" and settings.s3_secure is False


def test_the_orthanc_index_url_comes_from_orthancs_postgresql_section() -> None:
    config = {"PostgreSQL": {"EnableIndex": True, "Host": "db", "Port": 5433,
                             "Database": "orthanc", "Username": "orthanc",
                             "Password": "p@ss/word"}}
    settings = load_settings(config, BASE_ENV, Path("/srv"))
    assert settings.orthanc_index_url == "postgresql://orthanc:p%40ss%2Fword@db:5433/orthanc"
    assert load_settings({"PostgreSQL": {"EnableIndex": False}}, BASE_ENV,
                         Path("/srv")).orthanc_index_url is None
    assert load_settings({}, BASE_ENV, Path("/srv")).orthanc_index_url is None
    override = load_settings(config, {**BASE_ENV, "ATRIUM_ORTHANC_INDEX_URL": "postgresql://x/y"},
                             Path("/srv"))
    assert override.orthanc_index_url == "postgresql://x/y"


@pytest.mark.parametrize("root", ["/dicom-web/", "/", "dicom-web/", "/private"])
def test_the_dicomweb_plugin_root_must_be_private(root: str) -> None:
    with pytest.raises(SettingsError, match="DicomWeb.Root"):
        load_settings({"DicomWeb": {"Root": root}}, BASE_ENV, Path("/srv"))


def test_the_dicomweb_plugin_root_is_read_from_orthancs_configuration() -> None:
    configured = load_settings({"DicomWeb": {"Root": "/internal-dw/"}}, BASE_ENV, Path("/srv"))
    assert configured.dicomweb_plugin_root == "/internal-dw/"
    assert load_settings({}, BASE_ENV, Path("/srv")).dicomweb_plugin_root == \
        "/atrium-dicomweb-plugin/"


def test_upload_limits_have_defaults_and_come_from_the_section_or_the_environment(
        tmp_path: Path) -> None:
    defaults = load_settings({}, BASE_ENV, cwd=tmp_path)
    assert defaults.upload_max_request_bytes == 256 * 1024 ** 2
    assert defaults.upload_max_bytes == 64 * 1024 ** 3
    assert defaults.upload_expiry_hours == 24
    config = {"Atrium": {"UploadMaxRequestBytes": 32 * 1024 ** 2,
                         "UploadMaxBytes": 1024 ** 3, "UploadExpiryHours": 2}}
    configured = load_settings(config, BASE_ENV, cwd=tmp_path)
    assert (configured.upload_max_request_bytes, configured.upload_max_bytes,
            configured.upload_expiry_hours) == (32 * 1024 ** 2, 1024 ** 3, 2)
    overridden = load_settings(config, {**BASE_ENV, "ATRIUM_UPLOAD_EXPIRY_HOURS": "48"},
                               cwd=tmp_path)
    assert overridden.upload_expiry_hours == 48
    assert overridden.upload_max_bytes == 1024 ** 3


@pytest.mark.parametrize(("env", "named"), [
    ({"ATRIUM_UPLOAD_MAX_REQUEST_BYTES": "1000"}, "ATRIUM_UPLOAD_MAX_REQUEST_BYTES"),
    ({"ATRIUM_UPLOAD_MAX_REQUEST_BYTES": "4 GiB"}, "ATRIUM_UPLOAD_MAX_REQUEST_BYTES"),
    ({"ATRIUM_UPLOAD_MAX_BYTES": "0"}, "ATRIUM_UPLOAD_MAX_BYTES"),
    ({"ATRIUM_UPLOAD_EXPIRY_HOURS": "0"}, "ATRIUM_UPLOAD_EXPIRY_HOURS"),
    ({"ATRIUM_UPLOAD_EXPIRY_HOURS": "1.5"}, "ATRIUM_UPLOAD_EXPIRY_HOURS"),
])
def test_a_wrong_upload_limit_fails_with_one_line_naming_it(env: dict[str, str], named: str,
                                                            tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as error:
        load_settings({}, {**BASE_ENV, **env}, cwd=tmp_path)
    assert named in str(error.value) and "\n" not in str(error.value)
