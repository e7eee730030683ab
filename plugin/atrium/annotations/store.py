"""Writing annotations — version 1 of a new annotation about a target already found
in the writer's scope, and each later version — for the API and for DICOM SRs
imported from Orthanc alike."""

from __future__ import annotations

import json
import uuid
from typing import Any

from psycopg.types.json import Jsonb

from atrium.annotations.geometry import check_shape_for, normalized
from atrium.api.targets import Target
from atrium.errors import PayloadTooLarge

__all__ = ["MAX_PROPERTIES_BYTES", "add_version", "create_annotation"]

MAX_PROPERTIES_BYTES = 64 * 1024
"""``properties`` as JSON: room for a model's output or a viewer's state, not for
files (those belong in object storage)."""


def _check_properties(properties: dict[str, Any] | None) -> None:
    if properties is None:
        return
    size = len(json.dumps(properties, separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_PROPERTIES_BYTES:
        raise PayloadTooLarge(f"properties take {size} bytes as JSON; at most "
                              f"{MAX_PROPERTIES_BYTES} are kept with an annotation. Keep "
                              "large data in object storage and refer to it.")


def _checked(annotation_type: str, target_type: str, coordinates: dict[str, Any] | None,
            properties: dict[str, Any]) -> dict[str, Any] | None:
    """The coordinates to store, once type, target, shape and properties go
    together; ``coordinates`` must have passed the request schema."""
    check_shape_for(annotation_type, target_type, coordinates)
    _check_properties(properties)
    return normalized(coordinates) if coordinates is not None else None


def create_annotation(conn: Any, target: Target, *, annotation_type: str,
                      label: str | None, coordinates: dict[str, Any] | None,
                      properties: dict[str, Any], user_id: uuid.UUID | None) -> uuid.UUID:
    """Insert version 1 of an annotation about ``target`` (already found in the
    writer's scope) and return its id."""
    stored = _checked(annotation_type, target.type, coordinates, properties)
    row = conn.execute(
        "INSERT INTO annotations (annotation_type, target_id, target_type, user_id, label, "
        "coordinates, properties, organization_id, patient_id) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
        (annotation_type, target.id, target.type, user_id, label,
         Jsonb(stored) if stored is not None else None,
         Jsonb(properties), target.organization_id, target.patient_id)).fetchone()
    assert row is not None
    return uuid.UUID(str(row[0]))


def add_version(conn: Any, current: dict[str, Any], *, label: str | None,
                coordinates: dict[str, Any] | None, properties: dict[str, Any],
                user_id: uuid.UUID | None) -> None:
    """Replace the latest version ``current`` (as the API shows it, locked by the
    caller) with the next one, whose ``parent_id`` is ``current``'s row."""
    stored = _checked(current["annotation_type"], current["target_type"], coordinates,
                     properties)
    conn.execute("UPDATE annotations SET is_latest = FALSE WHERE id = %s",
                 (current["version_id"],))
    conn.execute(
        "INSERT INTO annotations (annotation_type, target_id, target_type, user_id, label, "
        "coordinates, properties, version, parent_id, root_id, organization_id, patient_id, "
        "created_at) "
        "SELECT annotation_type, target_id, target_type, %s, %s, %s, %s, version + 1, id, "
        "root_id, organization_id, patient_id, created_at FROM annotations WHERE id = %s",
        (user_id, label, Jsonb(stored) if stored is not None else None, Jsonb(properties),
         current["version_id"]))
