"""Writing annotations: version 1 of a new annotation about a target already found
in the writer's scope — for the API and for DICOM SRs imported from Orthanc alike."""

from __future__ import annotations

import json
import uuid
from typing import Any

from psycopg.types.json import Jsonb

from atrium.annotations.geometry import check_shape_for, normalized
from atrium.api.targets import Target
from atrium.errors import PayloadTooLarge

__all__ = ["MAX_PROPERTIES_BYTES", "check_properties", "create_annotation"]

MAX_PROPERTIES_BYTES = 64 * 1024
"""``properties`` as JSON: room for a model's output or a viewer's state, not for
files (those belong in object storage)."""


def check_properties(properties: dict[str, Any] | None) -> None:
    if properties is None:
        return
    size = len(json.dumps(properties, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PROPERTIES_BYTES:
        raise PayloadTooLarge(f"properties take {size} bytes as JSON; at most "
                              f"{MAX_PROPERTIES_BYTES} are kept with an annotation. Keep "
                              "large data in object storage and refer to it.")


def create_annotation(conn: Any, target: Target, *, annotation_type: str,
                      label: str | None, coordinates: dict[str, Any] | None,
                      properties: dict[str, Any], user_id: uuid.UUID | None) -> uuid.UUID:
    """Insert version 1 of an annotation about ``target`` (already found in the
    writer's scope) and return its id. ``coordinates`` must have passed the
    request schema; they are checked against the target and normalised here."""
    check_shape_for(annotation_type, target.type, coordinates)
    check_properties(properties)
    row = conn.execute(
        "INSERT INTO annotations (annotation_type, target_id, target_type, user_id, label, "
        "coordinates, properties, organization_id, patient_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (annotation_type, target.id, target.type, user_id, label,
         Jsonb(normalized(coordinates)) if coordinates is not None else None,
         Jsonb(properties), target.organization_id, target.patient_id)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


