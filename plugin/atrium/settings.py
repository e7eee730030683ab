"""Atrium's settings: read once from the Orthanc configuration's ``Atrium`` section,
overridden by environment variables of the same meaning, validated, frozen.

A wrong or missing setting raises :class:`SettingsError` whose message is one line
naming the setting, so start-up can stop with exactly that line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from atrium.auth.client_address import TrustedProxies

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names it in one line."""


_AET_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_MiB = 1024 * 1024
_GiB = 1024 * _MiB

# setting name -> key in the ``Atrium`` configuration section
_CONFIG_KEYS: dict[str, str] = {
    "ATRIUM_DATA_DIR": "DataDir",
    "ATRIUM_DATABASE_URL": "DatabaseUrl",
    "ATRIUM_DATABASE_OWNER_URL": "DatabaseOwnerUrl",
    "ATRIUM_STORAGE_URL": "StorageUrl",
    "ATRIUM_S3_ENDPOINT": "S3Endpoint",
    "ATRIUM_S3_ACCESS_KEY": "S3AccessKey",
    "ATRIUM_S3_SECRET_KEY": "S3SecretKey",
    "ATRIUM_S3_SECURE": "S3Secure",
    "ATRIUM_OIDC_ISSUER": "OidcIssuer",
    "ATRIUM_OIDC_AUDIENCE": "OidcAudience",
    "ATRIUM_ORG_CLAIM": "OrganizationClaim",
    "ATRIUM_DEFAULT_ORGANIZATION": "DefaultOrganization",
    "ATRIUM_AET_ORGANIZATIONS": "AetOrganizations",
    "ATRIUM_DICOM_UNMAPPED_AET": "DicomUnmappedAet",
    "ATRIUM_ORTHANC_URL": "OrthancUrl",
    "ATRIUM_ORTHANC_INDEX_URL": "OrthancIndexUrl",
    "ORTHANC_DATABASE_URL": "OrthancDatabaseUrl",
    "ATRIUM_MIRROR_BATCH_SIZE": "MirrorBatchSize",
    "ATRIUM_MIRROR_POLL_SECONDS": "MirrorPollSeconds",
    "ATRIUM_MIRROR_FULL_CHECK_SECONDS": "MirrorFullCheckSeconds",
    "ATRIUM_JOB_HEARTBEAT_SECONDS": "JobHeartbeatSeconds",
    "ATRIUM_JOB_STALE_SECONDS": "JobStaleSeconds",
    "ATRIUM_DICOM_MAX_DEPTH": "DicomMaxDepth",
    "ATRIUM_UPLOAD_MAX_REQUEST_BYTES": "UploadMaxRequestBytes",
    "ATRIUM_UPLOAD_MAX_BYTES": "UploadMaxBytes",
    "ATRIUM_UPLOAD_EXPIRY_HOURS": "UploadExpiryHours",
    "ATRIUM_METRICS_TOKEN": "MetricsToken",
    "ATRIUM_MAINTENANCE_SECONDS": "MaintenanceSeconds",
    "ATRIUM_AUDIT_ANCHOR_SECONDS": "AuditAnchorSeconds",
    "ATRIUM_AUDIT_ANCHOR_KEY": "AuditAnchorKey",
    "ATRIUM_AUDIT_ANCHOR_URL": "AuditAnchorUrl",
    "ATRIUM_RETENTION_AUTOMATIC": "RetentionAutomatic",
    "ATRIUM_RETENTION_AUDIT_DAYS": "RetentionAuditDays",
    "ATRIUM_RETENTION_PREDICTIONS_DAYS": "RetentionPredictionsDays",
    "ATRIUM_RETENTION_JOBS_DAYS": "RetentionJobsDays",
    "ATRIUM_RETENTION_DELETED_DAYS": "RetentionDeletedDays",
    "ATRIUM_VIEWER_DIR": "ViewerDir",
    "ATRIUM_BACKUP_URL": "BackupUrl",
    "ATRIUM_BACKUP_FULL_AT": "BackupFullAt",
    "ATRIUM_BACKUP_INCREMENTAL_HOURS": "BackupIncrementalHours",
    "ATRIUM_BACKUP_RETENTION_DAYS": "BackupRetentionDays",
    "ATRIUM_BACKUP_ARCHIVE_TIMEOUT_SECONDS": "BackupArchiveTimeoutSeconds",
    "ATRIUM_TRACEMALLOC_SECONDS": "TracemallocSeconds",
    "ATRIUM_TRUSTED_PROXIES": "TrustedProxies",
}

# Orthanc's own listeners live at the top level of its configuration.
_ORTHANC_KEYS: dict[str, str] = {
    "ORTHANC_HTTP_PORT": "HttpPort",
    "ORTHANC_DICOM_PORT": "DicomPort",
    "ORTHANC_AET": "DicomAet",
}


@dataclass(frozen=True)
class Settings:
    """Every Atrium setting, validated. See SPEC §3 and ``docs/CONFIGURATION.md``."""

    data_dir: Path
    database_url: str
    storage_url: str
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_secure: bool = True
    oidc_issuer: str | None = None
    oidc_audience: str = "atrium"
    org_claim: str = "organization"
    default_organization: str = "Default"
    aet_organizations: Mapping[str, str] = field(default_factory=dict)
    # What a C-FIND/C-MOVE peer whose AE title is not mapped reaches: "none" (nothing)
    # or "default" (the default organization's data).
    dicom_unmapped_aet: str = "none"
    orthanc_http_port: int = 8042
    orthanc_dicom_port: int = 4242
    orthanc_aet: str = "ATRIUM"
    orthanc_url: str = "http://127.0.0.1:8042"
    orthanc_index_url: str | None = None
    mirror_batch_size: int = 500
    mirror_poll_seconds: float = 5.0
    mirror_full_check_seconds: float = 3600.0
    # A running job's process stamps it every job_heartbeat_seconds; a job silent
    # for job_stale_seconds is taken over by another node (atrium.jobs).
    job_heartbeat_seconds: float = 10.0
    job_stale_seconds: float = 60.0
    # How deep DICOM sequences may nest in a file Atrium lets a parser see
    # (atrium/dicom/scan.py); deeper files are refused at the edge or quarantined.
    dicom_max_depth: int = 24
    # The largest body of one file-upload request (a whole file, or one chunk of a
    # resumable upload): Orthanc holds it in memory while it passes.
    upload_max_request_bytes: int = 256 * _MiB
    # The largest file a resumable upload may declare, and how long an upload lives
    # after its last chunk (docs/API.md, "Uploads").
    upload_max_bytes: int = 64 * _GiB
    upload_expiry_hours: int = 24
    # Operations (docs/RETENTION.md, docs/AUDIT.md "Anchoring"): partition upkeep and
    # automatic retention every maintenance_seconds; a signed checkpoint of the audit
    # chain every audit_anchor_seconds (0: never) and at shutdown, with the Ed25519 key
    # in audit_anchor_key (None: <data_dir>/keys/audit-anchor-ed25519.pem), into
    # audit_anchor_url (None: the storage URL) under audit-anchors/.
    maintenance_seconds: float = 3600.0
    audit_anchor_seconds: float = 300.0
    audit_anchor_key: Path | None = None
    audit_anchor_url: str | None = None
    retention_automatic: bool = True
    retention_audit_days: int = 7 * 365
    retention_predictions_days: int = 5 * 365
    retention_jobs_days: int = 90
    retention_deleted_days: int = 30
    dicomweb_plugin_root: str = "/atrium-dicomweb-plugin/"
    # Migrations and partition upkeep need the schema's owner; everything else runs
    # as ``database_url``'s role, which cannot change audit rows. None: the same.
    database_owner_url: str | None = None
    # Orthanc's PostgreSQL index as ``atrium run`` configures it (None: beside
    # Atrium's database, or in the private cluster).
    orthanc_database_url: str | None = None
    # No database URL was configured: ``atrium run`` keeps a cluster in data_dir.
    private_cluster: bool = False
    # A secret a scraper may send as its bearer token, for GET /api/metrics only
    # (docs/METRICS.md); None: administrators' tokens only.
    metrics_token: str | None = None
    # The OHIF build /viewer/ serves (atrium.viewer.install); None: the one
    # scripts/bootstrap.sh installs in the checkout's build/viewer/.
    viewer_dir: Path | None = None
    # Backups (docs/OPERATIONS.md): where base backups, the WAL archive and Orthanc's
    # files go (None: file://<data_dir>/backups), the full backup's time of day
    # ("HH:MM", local time), hours between incremental runs, days recovery reaches
    # back, and how long a quiet server may hold a WAL segment before archiving it.
    backup_url: str | None = None
    backup_full_at: str = "02:00"
    backup_incremental_hours: int = 6
    backup_retention_days: int = 30
    backup_archive_timeout_seconds: int = 300
    # A diagnostic (atrium.memtrace): trace Python's allocations and report their
    # growth to <data_dir>/tracemalloc.txt every this many seconds; 0: off.
    tracemalloc_seconds: float = 0.0
    # The proxies (addresses, CIDR blocks) whose X-Forwarded-For names the client an
    # audit row records (atrium.auth.client_address); none: the connection's address.
    trusted_proxies: TrustedProxies = field(default_factory=TrustedProxies)

    @property
    def owner_url(self) -> str:
        return self.database_owner_url or self.database_url

    def organization_for_aet(self, calling_aet: str | None) -> str:
        """The organization name DICOM from ``calling_aet`` belongs to."""
        if calling_aet:
            name = self.aet_organizations.get(calling_aet.strip())
            if name:
                return name
        return self.default_organization


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


def _parse_int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _parse_float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _parse_aet_map(raw: str) -> dict[str, str]:
    name = "ATRIUM_AET_ORGANIZATIONS"
    try:
        parsed = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as exc:
        raise SettingsError(f"{name} must be a JSON object of AE title -> organization: {exc.msg}")\
            from None
    if not isinstance(parsed, dict):
        raise SettingsError(f"{name} must be a JSON object of AE title -> organization")
    mapping: dict[str, str] = {}
    for aet, org in parsed.items():
        if not _AET_RE.match(aet) or not isinstance(org, str) or not org.strip():
            raise SettingsError(f"{name} has an invalid entry {aet!r}: {org!r}")
        mapping[aet.strip()] = org.strip()
    return mapping


def _parse_trusted_proxies(raw: str) -> TrustedProxies:
    """A JSON list (the configuration's ``TrustedProxies``) or a comma-separated list
    (the environment's) of addresses and CIDR blocks."""
    name = "ATRIUM_TRUSTED_PROXIES"
    entries: Any = raw.split(",")
    if raw.strip().startswith("["):
        try:
            entries = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{name} must be a list of addresses or CIDR blocks: "
                                f"{exc.msg}") from None
        if not all(isinstance(entry, str) for entry in entries):
            raise SettingsError(f"{name} must be a list of addresses or CIDR blocks (text)")
    try:
        return TrustedProxies.parse(entry for entry in entries if entry.strip())
    except ValueError as exc:
        raise SettingsError(f"{name}: {exc}") from None


def _check_storage_url(url: str, s3_endpoint: str | None) -> None:
    name = "ATRIUM_STORAGE_URL"
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if not parsed.path.startswith("/"):
            raise SettingsError(f"{name} must be file:///absolute/path, got {url!r}")
    elif parsed.scheme == "s3":
        if not parsed.netloc:
            raise SettingsError(f"{name} must name a bucket: s3://bucket, got {url!r}")
        if not s3_endpoint:
            raise SettingsError("ATRIUM_S3_ENDPOINT is required when ATRIUM_STORAGE_URL is s3://")
    else:
        raise SettingsError(f"{name} must start with file:// or s3://, got {url!r}")


def _check_http_url(name: str, url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in {"http", "https"} or not parsed.netloc:
        raise SettingsError(f"{name} must be an http(s) URL, got {url!r}")


def _check_libpq_url(name: str, url: str) -> None:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
        valid = url.startswith(("postgresql://", "postgres://")) or "=" in url
    except ProgrammingError:
        valid = False
    if not valid:  # the value is not echoed: it may hold a password
        raise SettingsError(f"{name} must be a libpq URL "
                            "(postgresql://user:password@host:port/database)")


def _check_metrics_token(token: str | None) -> str | None:
    if token is None:
        return None
    if len(token) < 32 or not all(33 <= ord(c) <= 126 for c in token):
        # The value is not echoed: it is a secret.
        raise SettingsError("ATRIUM_METRICS_TOKEN must be at least 32 printable ASCII "
                            "characters without spaces (e.g. openssl rand -hex 32)")
    return token


def default_database_url(data_dir: Path) -> str:
    """The libpq URL of the private cluster that ``make run`` keeps under ``data_dir``."""
    from atrium.devenv import LocalCluster  # local import: devenv is not needed in production

    return LocalCluster(data_dir).url("atrium")


def orthanc_index_url(orthanc_config: Mapping[str, Any]) -> str | None:
    """The libpq URL of Orthanc's index, when Orthanc keeps it in PostgreSQL."""
    section = orthanc_config.get("PostgreSQL")
    if not isinstance(section, Mapping) or not section.get("EnableIndex"):
        return None
    if section.get("ConnectionUri"):
        return str(section["ConnectionUri"])
    user = quote(str(section.get("Username", "")), safe="")
    password = quote(str(section.get("Password", "")), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = section.get("Host", "localhost")
    port = section.get("Port", 5432)
    database = quote(str(section.get("Database", "orthanc")), safe="")
    return f"postgresql://{credentials}{host}:{port}/{database}"



PUBLIC_DICOMWEB_ROOT = "/dicom-web/"


def dicomweb_plugin_root(orthanc_config: Mapping[str, Any]) -> str:
    """The DICOMweb plugin's root (``DicomWeb.Root``): private to Atrium's gateway,
    which serves the public ``/dicom-web/`` itself."""
    section = orthanc_config.get("DicomWeb")
    root = str(section.get("Root") or "") if isinstance(section, Mapping) else ""
    root = root or "/atrium-dicomweb-plugin/"
    if not (root.startswith("/") and root.endswith("/")) or root in ("/", PUBLIC_DICOMWEB_ROOT):
        raise SettingsError(
            f"DicomWeb.Root is {root!r}: it must be a private path such as "
            f"'/atrium-dicomweb-plugin/' (Atrium serves {PUBLIC_DICOMWEB_ROOT} itself)")
    return root


def _operations_settings(raw: Any, data_dir: Path, s3_endpoint: str | None) -> dict[str, Any]:
    """The settings of partition upkeep, retention and audit anchoring."""
    anchor_url = raw("ATRIUM_AUDIT_ANCHOR_URL")
    if anchor_url:
        try:
            _check_storage_url(anchor_url, s3_endpoint)
        except SettingsError as error:
            raise SettingsError(str(error).replace("ATRIUM_STORAGE_URL",
                                                   "ATRIUM_AUDIT_ANCHOR_URL")) from None
    anchor_key = raw("ATRIUM_AUDIT_ANCHOR_KEY")
    days = {name: _parse_int(f"ATRIUM_RETENTION_{name}_DAYS",
                             raw(f"ATRIUM_RETENTION_{name}_DAYS") or str(default), 1, 100 * 366)
            for name, default in (("AUDIT", 7 * 365), ("PREDICTIONS", 5 * 365), ("JOBS", 90),
                                  ("DELETED", 30))}
    return {
        "maintenance_seconds": _parse_float(
            "ATRIUM_MAINTENANCE_SECONDS", raw("ATRIUM_MAINTENANCE_SECONDS") or "3600", 1, 86400),
        "audit_anchor_seconds": _parse_float(
            "ATRIUM_AUDIT_ANCHOR_SECONDS", raw("ATRIUM_AUDIT_ANCHOR_SECONDS") or "300", 0, 86400),
        "audit_anchor_key": (data_dir / anchor_key) if anchor_key else None,
        "audit_anchor_url": anchor_url,
        "retention_automatic": _parse_bool("ATRIUM_RETENTION_AUTOMATIC",
                                           raw("ATRIUM_RETENTION_AUTOMATIC") or "true"),
        "retention_audit_days": days["AUDIT"],
        "retention_predictions_days": days["PREDICTIONS"],
        "retention_jobs_days": days["JOBS"],
        "retention_deleted_days": days["DELETED"],
    }


_HHMM_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def _backup_settings(raw: Any, s3_endpoint: str | None) -> dict[str, Any]:
    url = raw("ATRIUM_BACKUP_URL")
    if url:
        try:
            _check_storage_url(url, s3_endpoint)
        except SettingsError as error:
            raise SettingsError(str(error).replace("ATRIUM_STORAGE_URL",
                                                   "ATRIUM_BACKUP_URL")) from None
    full_at = raw("ATRIUM_BACKUP_FULL_AT") or "02:00"
    if not _HHMM_RE.match(full_at):
        raise SettingsError(f"ATRIUM_BACKUP_FULL_AT must be a time of day HH:MM, got {full_at!r}")
    return {
        "backup_url": url,
        "backup_full_at": full_at,
        "backup_incremental_hours": _parse_int(
            "ATRIUM_BACKUP_INCREMENTAL_HOURS", raw("ATRIUM_BACKUP_INCREMENTAL_HOURS") or "6",
            1, 24),
        "backup_retention_days": _parse_int(
            "ATRIUM_BACKUP_RETENTION_DAYS", raw("ATRIUM_BACKUP_RETENTION_DAYS") or "30", 1, 3650),
        "backup_archive_timeout_seconds": _parse_int(
            "ATRIUM_BACKUP_ARCHIVE_TIMEOUT_SECONDS",
            raw("ATRIUM_BACKUP_ARCHIVE_TIMEOUT_SECONDS") or "300", 10, 86400),
    }


def load_settings(
    orthanc_config: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build :class:`Settings` from Orthanc's configuration and the environment.

    Parameters
    ----------
    orthanc_config:
        The whole Orthanc configuration (its ``Atrium`` section and the top-level
        ``HttpPort``/``DicomPort``/``DicomAet`` are read). ``None`` means empty.
    environ:
        Environment variables; default ``os.environ``. A variable overrides the
        configuration entry of the same meaning.
    cwd:
        Where a relative ``ATRIUM_DATA_DIR`` is resolved; default the process's.

    Raises
    ------
    SettingsError
        With one line naming the wrong or missing setting.
    """
    config = dict(orthanc_config or {})
    section = config.get("Atrium") or {}
    if not isinstance(section, dict):
        raise SettingsError("the Atrium configuration section must be a JSON object")
    env = os.environ if environ is None else environ

    def raw(name: str) -> str | None:
        if env.get(name) not in (None, ""):
            return env[name]
        if name in _CONFIG_KEYS and section.get(_CONFIG_KEYS[name]) is not None:
            return _as_text(section[_CONFIG_KEYS[name]])
        if name in _ORTHANC_KEYS and config.get(_ORTHANC_KEYS[name]) is not None:
            return _as_text(config[_ORTHANC_KEYS[name]])
        return None

    base = cwd or Path.cwd()
    data_dir = Path(raw("ATRIUM_DATA_DIR") or "./.data")
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()

    database_url = raw("ATRIUM_DATABASE_URL")
    is_libpq = database_url and (
        database_url.startswith(("postgresql://", "postgres://")) or "=" in database_url)
    if database_url and not is_libpq:
        raise SettingsError(
            f"ATRIUM_DATABASE_URL must be a libpq URL (postgresql://...), got {database_url!r}"
        )
    database_owner_url = raw("ATRIUM_DATABASE_OWNER_URL")
    if database_owner_url:
        _check_libpq_url("ATRIUM_DATABASE_OWNER_URL", database_owner_url)

    orthanc_database_url = raw("ORTHANC_DATABASE_URL")
    if orthanc_database_url:
        _check_libpq_url("ORTHANC_DATABASE_URL", orthanc_database_url)

    s3_endpoint = raw("ATRIUM_S3_ENDPOINT")
    storage_url = raw("ATRIUM_STORAGE_URL") or f"file://{data_dir / 'objects'}"
    _check_storage_url(storage_url, s3_endpoint)

    issuer = raw("ATRIUM_OIDC_ISSUER")
    if issuer:
        _check_http_url("ATRIUM_OIDC_ISSUER", issuer)

    http_port = _parse_int("ORTHANC_HTTP_PORT", raw("ORTHANC_HTTP_PORT") or "8042", 1, 65535)
    dicom_port = _parse_int("ORTHANC_DICOM_PORT", raw("ORTHANC_DICOM_PORT") or "4242", 1, 65535)
    aet = raw("ORTHANC_AET") or "ATRIUM"
    if not _AET_RE.match(aet):
        raise SettingsError(f"ORTHANC_AET must be 1-16 printable ASCII characters, got {aet!r}")

    orthanc_url = raw("ATRIUM_ORTHANC_URL") or f"http://127.0.0.1:{http_port}"
    _check_http_url("ATRIUM_ORTHANC_URL", orthanc_url)

    default_org = (raw("ATRIUM_DEFAULT_ORGANIZATION") or "Default").strip()
    if not default_org or len(default_org) > 255:
        raise SettingsError("ATRIUM_DEFAULT_ORGANIZATION must be 1-255 characters")

    unmapped_aet = (raw("ATRIUM_DICOM_UNMAPPED_AET") or "none").strip().lower()
    if unmapped_aet not in ("none", "default"):
        raise SettingsError(f"ATRIUM_DICOM_UNMAPPED_AET must be none or default, "
                            f"got {unmapped_aet!r}")
    if config.get("DicomAlwaysAllowGet") is True:
        raise SettingsError("DicomAlwaysAllowGet must be false: Orthanc's C-GET SCP answers "
                            "for every organization (docs/SECURITY.md, DICOM networking)")

    audience = raw("ATRIUM_OIDC_AUDIENCE") or "atrium"
    viewer_raw = raw("ATRIUM_VIEWER_DIR")
    viewer_dir = (base / viewer_raw).resolve() if viewer_raw else None
    org_claim = raw("ATRIUM_ORG_CLAIM") or "organization"
    job_heartbeat = _parse_float("ATRIUM_JOB_HEARTBEAT_SECONDS",
                                 raw("ATRIUM_JOB_HEARTBEAT_SECONDS") or "10", 0.5, 3600)

    # Last: the default names the private cluster's password file, which it creates,
    # and nothing is created before every other setting is known to be valid.
    private_cluster = not database_url
    database_url = database_url or default_database_url(data_dir)
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        storage_url=storage_url,
        s3_endpoint=s3_endpoint,
        s3_access_key=raw("ATRIUM_S3_ACCESS_KEY"),
        s3_secret_key=raw("ATRIUM_S3_SECRET_KEY"),
        s3_secure=_parse_bool("ATRIUM_S3_SECURE", raw("ATRIUM_S3_SECURE") or "true"),
        oidc_issuer=issuer,
        oidc_audience=audience,
        viewer_dir=viewer_dir,
        org_claim=org_claim,
        default_organization=default_org,
        aet_organizations=_parse_aet_map(raw("ATRIUM_AET_ORGANIZATIONS") or "{}"),
        dicom_unmapped_aet=unmapped_aet,
        orthanc_http_port=http_port,
        orthanc_dicom_port=dicom_port,
        orthanc_aet=aet,
        orthanc_url=orthanc_url.rstrip("/"),
        orthanc_index_url=(raw("ATRIUM_ORTHANC_INDEX_URL") or orthanc_index_url(config)
                           or orthanc_database_url),
        mirror_batch_size=_parse_int(
            "ATRIUM_MIRROR_BATCH_SIZE", raw("ATRIUM_MIRROR_BATCH_SIZE") or "500", 1, 10000
        ),
        mirror_poll_seconds=_parse_float(
            "ATRIUM_MIRROR_POLL_SECONDS", raw("ATRIUM_MIRROR_POLL_SECONDS") or "5", 0.05, 3600
        ),
        mirror_full_check_seconds=_parse_float(
            "ATRIUM_MIRROR_FULL_CHECK_SECONDS",
            raw("ATRIUM_MIRROR_FULL_CHECK_SECONDS") or "3600",
            1,
            7 * 86400,
        ),
        job_heartbeat_seconds=job_heartbeat,
        job_stale_seconds=_parse_float(
            "ATRIUM_JOB_STALE_SECONDS", raw("ATRIUM_JOB_STALE_SECONDS") or "60",
            3 * job_heartbeat, 86400),
        dicom_max_depth=_parse_int(
            "ATRIUM_DICOM_MAX_DEPTH", raw("ATRIUM_DICOM_MAX_DEPTH") or "24", 1, 1_000_000),
        upload_max_request_bytes=_parse_int(
            "ATRIUM_UPLOAD_MAX_REQUEST_BYTES",
            raw("ATRIUM_UPLOAD_MAX_REQUEST_BYTES") or str(256 * _MiB), _MiB, 2048 * _MiB),
        upload_max_bytes=_parse_int(
            "ATRIUM_UPLOAD_MAX_BYTES", raw("ATRIUM_UPLOAD_MAX_BYTES") or str(64 * _GiB),
            _MiB, 5 * 1024 * _GiB),
        upload_expiry_hours=_parse_int(
            "ATRIUM_UPLOAD_EXPIRY_HOURS", raw("ATRIUM_UPLOAD_EXPIRY_HOURS") or "24", 1, 24 * 365),
        **_operations_settings(raw, data_dir, s3_endpoint),
        **_backup_settings(raw, s3_endpoint),
        dicomweb_plugin_root=dicomweb_plugin_root(config),
        database_owner_url=database_owner_url,
        orthanc_database_url=orthanc_database_url,
        private_cluster=private_cluster,
        metrics_token=_check_metrics_token(raw("ATRIUM_METRICS_TOKEN")),
        tracemalloc_seconds=_parse_float(
            "ATRIUM_TRACEMALLOC_SECONDS", raw("ATRIUM_TRACEMALLOC_SECONDS") or "0", 0, 86400),
        trusted_proxies=_parse_trusted_proxies(raw("ATRIUM_TRUSTED_PROXIES") or ""),
    )
