"""``/api/patients``: search, create, read, change, soft-delete.

Scoped by :mod:`atrium.api.scope`: the caller's organization only; callers
without ``READ_PHI`` see de-identified patients only. Every answer that holds an
identified patient is audited as PHI.

Name search (``q``) is full-text on the data model's expression
``to_tsvector('english', coalesce(first_name, '') || ' ' || coalesce(last_name, ''))``
— written here exactly as ``idx_patients_name_fts`` indexes it, so the GIN index
answers — with every word of ``q`` taken as a prefix (``smi jo`` finds
"Smith^John"): people search names by their beginning, as DICOM's ``SMI*`` does.

Patients mirrored from Orthanc follow their DICOM: a change made here (a name
corrected) holds until another instance of that patient arrives. Their MRN cannot
change here (the mirror finds them by it), and a patient with live studies,
slides or recordings cannot be deleted (409): delete the images in Orthanc first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import AuditNote, Reply, Request, Response, Route, json_response, no_content
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.schema import (
    boolean,
    date,
    date_time,
    enum,
    integer,
    nullable,
    obj,
    string,
    uuid,
)
from atrium.api.scope import patient_scope, prefix_tsquery, require_live_organization, require_words
from atrium.auth.principal import Permission
from atrium.errors import Conflict, NotFound

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["PATIENT", "READERS", "routes"]

READERS = (Permission.READ_PHI, Permission.READ_DEIDENTIFIED)
"""Who may read patients and the DICOM hierarchy; the scope narrows what each sees."""

SEXES = ("M", "F", "O", "U")
_MRN = string(min_length=1, max_length=255, pattern=r"^\S(.*\S)?$",
              description="Medical record number, unique in the organization.")
_FIELDS = {
    "first_name": nullable(string(max_length=255)),
    "last_name": nullable(string(max_length=255)),
    "date_of_birth": nullable(date()),
    "sex": nullable(enum(*SEXES)),
    "metadata": obj({}, additional=True, description="Additional patient data (MRNs, "
                    "insurance, contact), as in the data model's patient metadata."),
}
NEW_PATIENT = obj({"mrn": _MRN, **_FIELDS,
                   "is_deidentified": boolean(description="A pseudonymous record that "
                                              "de-identified readers may see.")},
                  required=["mrn"])
PATIENT_CHANGES = obj({"mrn": _MRN, **_FIELDS}, min_properties=1)
PATIENT = obj({
    "id": uuid(), "mrn": string(), **_FIELDS, "is_deidentified": boolean(),
    "orthanc_id": nullable(string()), "number_of_studies": integer(minimum=0),
    "created_at": date_time(), "updated_at": date_time(),
}, required=["id", "mrn", "first_name", "last_name", "date_of_birth", "sex", "metadata",
             "is_deidentified", "orthanc_id", "number_of_studies", "created_at", "updated_at"])
PATIENT_SEARCH = obj({
    **PAGE_PARAMETERS,
    "q": string(min_length=1, max_length=200,
                description="Words starting the first or last name (full-text)."),
    "mrn": string(min_length=1, max_length=255, description="Exact MRN."),
    "sex": enum(*SEXES),
    "birth_date_from": date(description="Born on or after."),
    "birth_date_to": date(description="Born on or before."),
    "is_deidentified": boolean(),
})

ORDER = Keyset("patients", ("p.created_at", "p.id"))

_SELECT = sql.SQL("""
SELECT p.id, p.patient_id, p.first_name, p.last_name, p.date_of_birth, p.sex, p.metadata,
       p.is_deidentified, p.orthanc_id,
       (SELECT count(*) FROM studies s WHERE s.patient_id = p.id AND s.deleted_at IS NULL),
       p.created_at, p.updated_at
FROM patients p
""")
_COLUMNS = ("id", "mrn", "first_name", "last_name", "date_of_birth", "sex", "metadata",
            "is_deidentified", "orthanc_id", "number_of_studies", "created_at", "updated_at")
# The indexed expression of idx_patients_name_fts (sql/0002_core_tables.sql), verbatim.
_NAME_MATCHES = sql.SQL(
    "to_tsvector('english', coalesce(p.first_name, '') || ' ' || coalesce(p.last_name, '')) "
    "@@ to_tsquery('english', %s)")
_FILTERS: dict[str, str] = {
    "mrn": "p.patient_id = %s",
    "sex": "p.sex = %s",
    "birth_date_from": "p.date_of_birth >= %s",
    "birth_date_to": "p.date_of_birth <= %s",
    "is_deidentified": "p.is_deidentified = %s",
}
_WRITABLE = {"mrn": "patient_id", "first_name": "first_name", "last_name": "last_name",
             "date_of_birth": "date_of_birth", "sex": "sex", "metadata": "metadata",
             "is_deidentified": "is_deidentified"}
_HAS_DATA = """
SELECT EXISTS (SELECT 1 FROM studies WHERE patient_id = %(id)s AND deleted_at IS NULL)
    OR EXISTS (SELECT 1 FROM slides WHERE patient_id = %(id)s AND deleted_at IS NULL)
    OR EXISTS (SELECT 1 FROM recordings WHERE patient_id = %(id)s)
"""


def _patient(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_COLUMNS, row, strict=True))


def _audit(patient: dict[str, Any]) -> AuditNote:
    return AuditNote("patient", patient["id"], phi=not patient["is_deidentified"])


def _duplicate() -> Conflict:
    return Conflict("A patient with this MRN exists in the organization already.")


def routes(app: Atrium) -> list[Route]:
    def find(request: Request, conn: Any, lock: bool = False) -> dict[str, Any]:
        where = patient_scope(request.caller).add("p.id = %s", request.params["id"])
        query = sql.SQL("{} WHERE {}{}").format(_SELECT, where.sql(),
                                                sql.SQL(" FOR UPDATE OF p" if lock else ""))
        row = conn.execute(query, where.params).fetchone()
        if row is None:
            raise NotFound(f"No patient {request.params['id']}")
        return _patient(row)

    def search_patients(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where = patient_scope(request.caller).add(after, *values)
        if "q" in args:
            where.add(_NAME_MATCHES, prefix_tsquery(require_words(args["q"])))
        for name, condition in _FILTERS.items():
            if name in args:
                where.add(condition, args[name])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), ORDER.order_by())
        with app.pool.connection() as conn:
            # Planned for its values every time, never a generic plan (see
            # atrium.api.studies): how many rows the filters keep decides the plan.
            rows = conn.execute(query, [*where.params, wanted.fetch],
                                prepare=False).fetchall()
        patients = [_patient(r) for r in rows]
        answer = ORDER.page(patients, wanted.limit, key=lambda p: (p["created_at"], p["id"]))
        phi = any(not p["is_deidentified"] for p in answer["items"])
        return json_response(answer, audit=AuditNote("patient", phi=phi))

    def create_patient(request: Request) -> Response:
        body = request.json
        columns = [_WRITABLE[name] for name in body]
        values = [Jsonb(v) if name == "metadata" else v for name, v in body.items()]
        insert = sql.SQL("INSERT INTO patients (organization_id, {}) VALUES (%s, {}) "
                         "RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join([sql.Placeholder()] * len(columns)))
        try:
            with app.pool.connection() as conn, conn.transaction():
                require_live_organization(conn, request.caller)
                row = conn.execute(insert, [request.caller.organization_id, *values]).fetchone()
                assert row is not None
                created = _patient(conn.execute(sql.SQL("{} WHERE p.id = %s").format(_SELECT),
                                                (row[0],)).fetchone())
        except psycopg.errors.UniqueViolation:
            raise _duplicate() from None
        return json_response(created, status=201,
                             headers={"Location": f"/api/patients/{created['id']}"},
                             audit=_audit(created))

    def get_patient(request: Request) -> Response:
        with app.pool.connection() as conn:
            patient = find(request, conn)
        return json_response(patient, audit=_audit(patient))

    def update_patient(request: Request) -> Response:
        changes = request.json
        try:
            with app.pool.connection() as conn, conn.transaction():
                current = find(request, conn, lock=True)
                if ("mrn" in changes and changes["mrn"] != current["mrn"]
                        and current["orthanc_id"] is not None):
                    raise Conflict("This patient comes from DICOM in Orthanc, which the "
                                   "mirror matches by MRN; correct the MRN in the DICOM.")
                assignments = sql.SQL(", ").join(
                    sql.SQL("{} = %s").format(sql.Identifier(_WRITABLE[name]))
                    for name in changes)
                values = [Jsonb(v) if name == "metadata" else v for name, v in changes.items()]
                conn.execute(sql.SQL("UPDATE patients SET {} WHERE id = %s").format(assignments),
                             [*values, current["id"]])
                updated = find(request, conn)
        except psycopg.errors.UniqueViolation:
            raise _duplicate() from None
        return json_response(updated, audit=_audit(updated))

    def delete_patient(request: Request) -> Response:
        with app.pool.connection() as conn, conn.transaction():
            patient = find(request, conn, lock=True)
            has_data = conn.execute(_HAS_DATA, {"id": patient["id"]}).fetchone()
            if has_data and has_data[0]:
                raise Conflict("The patient still has studies, slides or recordings; delete "
                               "those first (studies in Orthanc).")
            conn.execute("UPDATE patients SET deleted_at = now() WHERE id = %s",
                         (patient["id"],))
        return no_content()

    tags = ("patients",)
    writers = (Permission.READ_PHI,)  # identified records: clinicians and admins
    return [
        Route("GET", "/api/patients", search_patients, tags=tags, auth=READERS,
              summary="Search patients (name words, MRN, sex, birth date)",
              query=PATIENT_SEARCH,
              responses={200: Reply("A page of patients, newest first",
                                    page_schema(PATIENT))}),
        Route("POST", "/api/patients", create_patient, tags=tags, auth=writers,
              summary="Create a patient", body=NEW_PATIENT, max_body_bytes=64 * 1024,
              responses={201: Reply("The new patient", PATIENT),
                         409: Reply("The MRN exists in the organization")}),
        Route("GET", "/api/patients/{id:uuid}", get_patient, tags=tags, auth=READERS,
              summary="Read a patient", responses={200: Reply("The patient", PATIENT)}),
        Route("PUT", "/api/patients/{id:uuid}", update_patient, tags=tags, auth=writers,
              summary="Change a patient (the fields given)", body=PATIENT_CHANGES,
              max_body_bytes=64 * 1024,
              responses={200: Reply("The patient", PATIENT),
                         409: Reply("The MRN exists, or the patient's MRN comes from DICOM")}),
        Route("DELETE", "/api/patients/{id:uuid}", delete_patient, tags=tags,
              auth=(Permission.MANAGE_ORGANIZATION,), summary="Soft-delete a patient",
              responses={204: Reply("Deleted"),
                         409: Reply("The patient still has studies, slides or recordings")}),
    ]
