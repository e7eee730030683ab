"""The operations settings: the data model's periods by default, each overridable,
and a wrong value stopping start-up with a line that names it."""

from __future__ import annotations

from pathlib import Path

import pytest

from atrium.operations.wiring import anchor_key_path, retention_policy
from atrium.settings import SettingsError, load_settings

BASE = {"ATRIUM_DATABASE_URL": "postgresql://atrium@db/atrium", "ATRIUM_DATA_DIR": "/srv/a"}


def test_the_defaults_are_the_data_models() -> None:
    settings = load_settings({}, BASE)
    policy = retention_policy(settings)

    assert (policy.audit.days, policy.predictions.days, policy.jobs.days,
            policy.deleted.days) == (2555, 1825, 90, 30)
    assert settings.audit_anchor_seconds == 300 and settings.retention_automatic
    assert anchor_key_path(settings) == Path("/srv/a/keys/audit-anchor-ed25519.pem")
    assert settings.audit_anchor_url is None


def test_each_setting_is_read_from_the_environment_or_the_configuration() -> None:
    settings = load_settings(
        {"Atrium": {"RetentionJobsDays": 7, "AuditAnchorKey": "/etc/atrium/anchor.pem"}},
        {**BASE, "ATRIUM_RETENTION_AUDIT_DAYS": "3000", "ATRIUM_AUDIT_ANCHOR_SECONDS": "0",
         "ATRIUM_AUDIT_ANCHOR_URL": "file:///srv/anchors", "ATRIUM_RETENTION_AUTOMATIC": "false"})

    assert settings.retention_jobs_days == 7 and settings.retention_audit_days == 3000
    assert settings.audit_anchor_seconds == 0 and not settings.retention_automatic
    assert anchor_key_path(settings) == Path("/etc/atrium/anchor.pem")
    assert settings.audit_anchor_url == "file:///srv/anchors"


@pytest.mark.parametrize("name, value, message", [
    ("ATRIUM_RETENTION_PREDICTIONS_DAYS", "0", "ATRIUM_RETENTION_PREDICTIONS_DAYS"),
    ("ATRIUM_RETENTION_DELETED_DAYS", "soon", "ATRIUM_RETENTION_DELETED_DAYS"),
    ("ATRIUM_AUDIT_ANCHOR_URL", "ftp://anchors", "ATRIUM_AUDIT_ANCHOR_URL must start with"),
    ("ATRIUM_MAINTENANCE_SECONDS", "0", "ATRIUM_MAINTENANCE_SECONDS"),
])
def test_a_wrong_value_is_refused_naming_its_setting(name: str, value: str,
                                                     message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({}, {**BASE, name: value})
