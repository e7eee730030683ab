"""AuditEvent refuses, where it is built, any value its audit_log column would refuse;
and the verification result reads as an operator needs it."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from atrium.auth.audit import AuditEvent, BrokenLink, VerifyResult

ID = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def test_a_complete_event_keeps_its_values_and_cannot_be_changed() -> None:
    details = {"study": str(ID), "instances": 3}
    event = AuditEvent("study.read", user_id=ID, keycloak_id="kc", organization_id=ID,
                       resource_type="study", resource_id=ID, ip_address="2001:db8::7",
                       user_agent="OHIF", details=details, phi_accessed=True)
    details["instances"] = 4
    assert event.details == {"study": str(ID), "instances": 3}
    with pytest.raises(TypeError):
        event.details["x"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        event.action = "other"  # type: ignore[misc]


@pytest.mark.parametrize(("fields", "error", "names"), [
    ({"action": ""}, ValueError, "action"),
    ({"action": "x" * 101}, ValueError, "action"),
    ({"action": None}, ValueError, "action"),
    ({"keycloak_id": "k" * 256}, ValueError, "keycloak_id"),
    ({"resource_type": 7}, TypeError, "resource_type"),
    ({"user_agent": "a\x00b"}, ValueError, "user_agent"),
    ({"user_id": str(ID)}, TypeError, "user_id"),
    ({"organization_id": 1}, TypeError, "organization_id"),
    ({"ip_address": "10.0.0.0/8"}, ValueError, "ip_address"),
    ({"ip_address": "fe80::1%eth0"}, ValueError, "ip_address"),
    ({"ip_address": "localhost"}, ValueError, "ip_address"),
    ({"phi_accessed": 1}, TypeError, "phi_accessed"),
    ({"details": ["not", "an", "object"]}, TypeError, "details"),
    ({"details": {"x": float("nan")}}, ValueError, "details"),
    ({"details": {"x": object()}}, ValueError, "details"),
    ({"details": {"x": "a\x00b"}}, ValueError, "details"),
])
def test_a_value_its_column_would_refuse_is_refused_naming_the_field(
        fields: dict[str, Any], error: type[Exception], names: str) -> None:
    arguments = {"action": "read", **fields}
    with pytest.raises(error, match=rf"AuditEvent\.{names}"):
        AuditEvent(**arguments)


def test_an_intact_result_and_a_broken_one_describe_themselves() -> None:
    intact = VerifyResult(True, 3, None, 3, "ab" * 32, 1, 0)
    assert intact.describe().startswith("audit chain intact: 3 rows checked")
    assert intact.as_json()["first_broken"] is None

    at = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)
    broken = VerifyResult(False, 1, BrokenLink(ID, at, 2, "row_hash does not match"), 3,
                          "ab" * 32, 1, 0)
    assert broken.describe().startswith(
        f"audit chain BROKEN at row {ID} (2024-05-01T00:00:00+00:00, seq 2): row_hash")
    assert broken.as_json()["first_broken"] == {
        "id": str(ID), "event_time": "2024-05-01T00:00:00+00:00", "seq": 2,
        "reason": "row_hash does not match"}
    tail = VerifyResult(False, 3, BrokenLink(None, None, 4, "rows seq 4 are missing"), 4,
                        "ab" * 32, 1, 0)
    assert "BROKEN at seq 4: rows seq 4 are missing" in tail.describe()
