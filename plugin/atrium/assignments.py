"""Which organization a study belongs to before its first instance is mirrored.

An upload by a user (STOW-RS through the DICOMweb gateway, ``POST /api/instances``)
claims the study for the uploader's organization before the instance reaches
Orthanc; the mirror then files the study there (``study_assignments``, read by
:mod:`atrium.mirror.writer`). A study that already belongs to another
organization cannot be claimed: the upload is refused as if the study did not
exist, so that its existence is not revealed.
"""

from __future__ import annotations

import uuid
from typing import Any

from atrium.errors import NotFound

__all__ = ["claim_study"]

_STUDY_OWNER = "SELECT organization_id FROM studies WHERE study_instance_uid = %(uid)s"
_ASSIGN = """
INSERT INTO study_assignments (study_instance_uid, organization_id) VALUES (%(uid)s, %(org)s)
ON CONFLICT (study_instance_uid) DO NOTHING
"""
_ASSIGNED = "SELECT organization_id FROM study_assignments WHERE study_instance_uid = %(uid)s"


def claim_study(conn: Any, study_uid: str, organization_id: uuid.UUID) -> None:
    """Make ``study_uid`` a study of ``organization_id``, or raise NotFound."""
    owner = conn.execute(_STUDY_OWNER, {"uid": study_uid}).fetchone()
    if owner is None:
        conn.execute(_ASSIGN, {"uid": study_uid, "org": organization_id})
        owner = conn.execute(_ASSIGNED, {"uid": study_uid}).fetchone()
    if owner[0] != organization_id:
        raise NotFound(f"No study {study_uid[:64]} in your organization can receive instances; "
                       "store it under new UIDs.")
