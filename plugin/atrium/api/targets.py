"""What an annotation or a prediction is about: a study, series, instance, slide or
recording of the caller's organization (SPEC §6, §7).

Targets are polymorphic (``target_type``, ``target_id``), so the resolver looks
the target up in its own table, with the same scope as every other read: the
caller's live organization, live rows up the hierarchy, and — for a caller
without ``READ_PHI`` — only a de-identified patient (or none, as for a slide
scanned without one). Anything else is the same 404 as a target that does not
exist.

The row written about a target keeps the target's organization and patient
(:class:`Target`), so later reads scope and flag PHI with :func:`row_scope`
alone, however many rows and target kinds a list spans.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from atrium.api.scope import Conditions, organization_scope
from atrium.errors import NotFound

__all__ = ["TARGET_TYPES", "Target", "find_target", "instance_by_uid", "phi_column",
           "row_scope"]

TARGET_TYPES = ("study", "series", "instance", "slide", "recording")

# Each query gives the target's organization, patient and whether that patient is
# de-identified, for a live target whose patient (if any) is live.
_LOOKUP = {
    "study": """
        SELECT s.organization_id, s.patient_id, p.is_deidentified
        FROM studies s JOIN patients p ON p.id = s.patient_id
        WHERE s.id = %s AND s.deleted_at IS NULL AND p.deleted_at IS NULL""",
    "series": """
        SELECT s.organization_id, s.patient_id, p.is_deidentified
        FROM series se JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id
        WHERE se.id = %s AND se.deleted_at IS NULL AND s.deleted_at IS NULL
          AND p.deleted_at IS NULL""",
    "instance": """
        SELECT s.organization_id, s.patient_id, p.is_deidentified
        FROM instances i JOIN series se ON se.id = i.series_id
        JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id
        WHERE i.id = %s AND i.deleted_at IS NULL AND se.deleted_at IS NULL
          AND s.deleted_at IS NULL AND p.deleted_at IS NULL""",
    "slide": """
        SELECT sl.organization_id, sl.patient_id, p.is_deidentified
        FROM slides sl LEFT JOIN patients p ON p.id = sl.patient_id
        WHERE sl.id = %s AND sl.deleted_at IS NULL
          AND (sl.patient_id IS NULL OR p.deleted_at IS NULL)""",
    "recording": """
        SELECT r.organization_id, r.patient_id, p.is_deidentified
        FROM recordings r LEFT JOIN patients p ON p.id = r.patient_id
        WHERE r.id = %s AND r.deleted_at IS NULL
          AND (r.patient_id IS NULL OR p.deleted_at IS NULL)""",
}


@dataclass(frozen=True)
class Target:
    type: str
    id: uuid.UUID
    organization_id: uuid.UUID
    patient_id: uuid.UUID | None
    deidentified: bool

    @property
    def phi(self) -> bool:
        """Whether data about this target is PHI: its patient is identified."""
        return self.patient_id is not None and not self.deidentified


def find_target(conn: Any, caller: Any, target_type: str, target_id: uuid.UUID) -> Target:
    """The target, as the caller may see it; :class:`NotFound` otherwise."""
    where = organization_scope(caller, "t")
    query = sql.SQL("SELECT t.organization_id, t.patient_id, t.is_deidentified "
                    "FROM ({}) t WHERE {}").format(sql.SQL(_LOOKUP[target_type]), where.sql())
    row = conn.execute(query, [target_id, *where.params]).fetchone()
    if row is not None:
        target = Target(target_type, target_id, row[0], row[1], bool(row[2]))
        if caller.can_read_phi or not target.phi:
            return target
    raise NotFound(f"No {target_type} {target_id}")


_INSTANCE_BY_UID = """
SELECT i.id, s.organization_id, s.patient_id, p.is_deidentified
FROM instances i JOIN series se ON se.id = i.series_id
JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id
WHERE i.sop_instance_uid = %s AND s.organization_id = %s AND i.deleted_at IS NULL
  AND se.deleted_at IS NULL AND s.deleted_at IS NULL AND p.deleted_at IS NULL"""


def instance_by_uid(conn: Any, organization_id: uuid.UUID, sop_instance_uid: str
                    ) -> Target | None:
    """The live instance with this SOP Instance UID in ``organization_id``: how a
    DICOM document that references images (an SR) finds its targets, with no
    caller — only the document's own organization counts."""
    row = conn.execute(_INSTANCE_BY_UID, (sop_instance_uid, organization_id)).fetchone()
    if row is None:
        return None
    return Target("instance", row[0], row[1], row[2], bool(row[3]))


def row_scope(caller: Any, alias: str, patient_alias: str = "p", *,
              target_checked: bool = False) -> Conditions:
    """Rows written about targets (``alias`` has ``organization_id`` and
    ``patient_id``; the query ``LEFT JOIN patients {patient_alias}`` on it) that the
    caller may see: their live organization's, whose patient is live and, without
    ``READ_PHI``, de-identified — and whose target is live, unless the query is
    about one target that :func:`find_target` has just found."""
    a, p = sql.Identifier(alias), sql.Identifier(patient_alias)
    where = organization_scope(caller, alias).add(
        sql.SQL("{a}.patient_id IS NULL OR {p}.deleted_at IS NULL").format(a=a, p=p))
    if not target_checked:
        where.add(sql.SQL("atrium_target_is_live({a}.target_type, {a}.target_id)").format(a=a))
    if not caller.can_read_phi:
        where.add(sql.SQL("{a}.patient_id IS NULL OR {p}.is_deidentified").format(a=a, p=p))
    return where


def phi_column(alias: str, patient_alias: str = "p") -> sql.Composable:
    """A boolean select expression: the row is about an identified patient."""
    return sql.SQL("({a}.patient_id IS NOT NULL AND NOT {p}.is_deidentified)").format(
        a=sql.Identifier(alias), p=sql.Identifier(patient_alias))
