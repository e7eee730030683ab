"""The mirrored DICOM hierarchy: ``/api/studies`` (search, read),
``/api/series/{id}`` (and its instances), ``/api/instances/{id}``, and
``POST /api/studies/{id}/deidentify``.

Read-only: the hierarchy is Orthanc's, mirrored (SPEC §5); it changes through
Orthanc. Scoped by :mod:`atrium.api.scope` — the study's organization, live rows at
every level, and for callers without ``READ_PHI`` de-identified patients only.
Everything below an identified patient is PHI (dates, accession numbers, DICOM
tags), so such answers are audited as PHI.

Description search (``q``) is full-text with web-search syntax (``chest -contrast``,
``"lung nodule"``, ``or``) on ``to_tsvector('english', study_description)``, stored
with each study as ``description_tsv`` (sql/0011_study_search_indexes.sql).

A search reads ``studies`` alone, and each of its conditions is a column there: the
modalities of a study (its own and its live series') and its patient's
de-identified and deleted flags are derived columns the database keeps through
triggers on every write of a series or a patient (sql/0022_study_search_columns.sql).
It pages newest first, and PostgreSQL answers it either by walking
``idx_studies_org_created`` (``idx_studies_org_created_deidentified`` for a caller
without ``READ_PHI``) and filtering until the page is full (matches are common) or
by finding the matches through another index — ``idx_studies_search`` for words and
modality together — and sorting them (matches are rare). It never reads
``patients``: the answer's ``patient_is_deidentified`` is the study's copy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql

from atrium.api.http import AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.jobs import JOB, Work, read_job
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page, page_request, page_schema
from atrium.api.patients import READERS
from atrium.api.schema import (
    array,
    boolean,
    date,
    date_time,
    integer,
    nullable,
    obj,
    string,
    uuid,
)
from atrium.api.scope import (
    Conditions,
    live_study_scope,
    organization_scope,
    require_live_organization,
    require_words,
)
from atrium.auth.principal import Permission
from atrium.errors import Conflict, NotFound

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["INSTANCE", "SERIES", "STUDY", "routes"]

_TAGS = obj({}, additional=True, description="DICOM tags (the data model's tag JSON)")
_COMMON = {"orthanc_id": nullable(string()), "metadata": _TAGS, "created_at": date_time(),
           "updated_at": date_time()}
SERIES_SUMMARY = obj({
    "id": uuid(), "series_instance_uid": string(), "series_number": nullable(integer()),
    "series_description": nullable(string()), "modality": nullable(string()),
    "body_part_examined": nullable(string()), "number_of_instances": integer(minimum=0),
}, required=["id", "series_instance_uid", "series_number", "series_description", "modality",
             "body_part_examined", "number_of_instances"])
_STUDY_FIELDS = {
    "id": uuid(), "study_instance_uid": string(), "patient_id": uuid(),
    "patient_is_deidentified": boolean(), "accession_number": nullable(string()),
    "study_date": nullable(date()), "study_time": nullable(string()),
    "study_description": nullable(string()), "modality": nullable(string()),
    "referring_physician": nullable(string()), "number_of_series": integer(minimum=0),
    "number_of_instances": integer(minimum=0), "storage_size_bytes": integer(minimum=0),
    **_COMMON,
}
STUDY_ITEM = obj(_STUDY_FIELDS, required=list(_STUDY_FIELDS))
STUDY = obj({**_STUDY_FIELDS, "series": array(SERIES_SUMMARY)},
            required=[*_STUDY_FIELDS, "series"])
_SERIES_FIELDS = {
    "id": uuid(), "series_instance_uid": string(), "study_id": uuid(), "patient_id": uuid(),
    "patient_is_deidentified": boolean(), "series_number": nullable(integer()),
    "series_description": nullable(string()), "modality": nullable(string()),
    "body_part_examined": nullable(string()), "number_of_instances": integer(minimum=0),
    **_COMMON,
}
SERIES = obj(_SERIES_FIELDS, required=list(_SERIES_FIELDS))
INSTANCE_SUMMARY = obj({
    "id": uuid(), "sop_instance_uid": string(), "instance_number": nullable(integer()),
    "orthanc_id": nullable(string()), "file_size_bytes": nullable(integer(minimum=0)),
}, required=["id", "sop_instance_uid", "instance_number", "orthanc_id", "file_size_bytes"])
_INSTANCE_FIELDS = {
    "id": uuid(), "sop_instance_uid": string(), "series_id": uuid(), "study_id": uuid(),
    "patient_id": uuid(), "patient_is_deidentified": boolean(),
    "instance_number": nullable(integer()), "acquisition_date": nullable(date()),
    "acquisition_time": nullable(string()), "storage_path": nullable(string()),
    "file_size_bytes": nullable(integer(minimum=0)), **_COMMON,
}
INSTANCE = obj(_INSTANCE_FIELDS, required=list(_INSTANCE_FIELDS))

STUDY_SEARCH = obj({
    **PAGE_PARAMETERS,
    "q": string(min_length=1, max_length=200,
                description="Full-text search of the description, web-search syntax."),
    "patient_id": uuid(),
    "modality": string(min_length=1, max_length=50,
                       description="The study's modality or that of one of its series."),
    "date_from": date(description="Study date on or after."),
    "date_to": date(description="Study date on or before."),
    "accession_number": string(min_length=1, max_length=255),
    "study_instance_uid": string(min_length=1, max_length=255),
})

ORDER = Keyset("studies", ("s.created_at", "s.id"))
INSTANCES_SCOPE = "series-instances"
_LAST_NUMBER = 2**31 - 1  # instances without a number come last

_STUDY_SELECT = sql.SQL("""
SELECT s.id, s.study_instance_uid, s.patient_id, p.is_deidentified, s.accession_number,
       s.study_date, s.study_time, s.study_description, s.modality, s.referring_physician,
       s.number_of_series, s.number_of_instances, s.storage_size_bytes, s.orthanc_id,
       s.metadata, s.created_at, s.updated_at
FROM studies s JOIN patients p ON p.id = s.patient_id
""")
_SERIES_OF_STUDY = """
SELECT se.id, se.series_instance_uid, se.series_number, se.series_description, se.modality,
       se.body_part_examined, se.number_of_instances
FROM series se WHERE se.study_id = %s AND se.deleted_at IS NULL
ORDER BY se.series_number NULLS LAST, se.id
"""
_SERIES_SELECT = sql.SQL("""
SELECT se.id, se.series_instance_uid, se.study_id, s.patient_id, p.is_deidentified,
       se.series_number, se.series_description, se.modality, se.body_part_examined,
       se.number_of_instances, se.orthanc_id, se.metadata, se.created_at, se.updated_at
FROM series se JOIN studies s ON s.id = se.study_id JOIN patients p ON p.id = s.patient_id
""")
_INSTANCES_OF_SERIES = """
SELECT i.id, i.sop_instance_uid, i.instance_number, i.orthanc_id, i.file_size_bytes,
       COALESCE(i.instance_number, %(last)s)
FROM instances i
WHERE i.series_id = %(series)s AND i.deleted_at IS NULL
  AND (%(after_number)s::integer IS NULL
       OR (COALESCE(i.instance_number, %(last)s), i.id) > (%(after_number)s, %(after_id)s::uuid))
ORDER BY COALESCE(i.instance_number, %(last)s), i.id
LIMIT %(fetch)s
"""
_INSTANCE_SELECT = sql.SQL("""
SELECT i.id, i.sop_instance_uid, i.series_id, se.study_id, s.patient_id, p.is_deidentified,
       i.instance_number, i.acquisition_date, i.acquisition_time, i.storage_path,
       i.file_size_bytes, i.orthanc_id, i.metadata, i.created_at, i.updated_at
FROM instances i JOIN series se ON se.id = i.series_id JOIN studies s ON s.id = se.study_id
JOIN patients p ON p.id = s.patient_id
""")

# The search's own SELECT: the columns of _STUDY_SELECT, from studies alone (the
# derived s.deidentified is the patient's is_deidentified, kept by sql/0022).
_SEARCH_SELECT = sql.SQL("""
SELECT s.id, s.study_instance_uid, s.patient_id, s.deidentified, s.accession_number,
       s.study_date, s.study_time, s.study_description, s.modality, s.referring_physician,
       s.number_of_series, s.number_of_instances, s.storage_size_bytes, s.orthanc_id,
       s.metadata, s.created_at, s.updated_at
FROM studies s
""")
# description_tsv is to_tsvector('english', study_description), stored (a generated
# column): the same studies match as with the data model's expression index.
_DESCRIPTION_MATCHES = sql.SQL("s.description_tsv @@ websearch_to_tsquery('english', %s)")
# s.modalities holds the study's own modality and those of its live series: the same
# studies as "s.modality = x OR a live series has modality x", from idx_studies_search.
_MODALITY = sql.SQL("s.modalities @> ARRAY[%s]::text[]")
_FILTERS: dict[str, str] = {
    "patient_id": "s.patient_id = %s",
    "date_from": "s.study_date >= %s",
    "date_to": "s.study_date <= %s",
    "accession_number": "s.accession_number = %s",
    "study_instance_uid": "s.study_instance_uid = %s",
}


def _named(fields: Any, row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(fields, row, strict=True))


# The SELECTs above list their columns in the order of these fields.
_STUDY_COLUMNS = list(_STUDY_FIELDS)
_SERIES_COLUMNS = list(_SERIES_FIELDS)
_INSTANCE_COLUMNS = list(_INSTANCE_FIELDS)


def _phi(item: dict[str, Any]) -> bool:
    return not item["patient_is_deidentified"]


def search_scope(caller: Any) -> Conditions:
    """:func:`~atrium.api.scope.study_scope` on the study's derived columns: its
    organization (the caller's, live), the study live and its patient too
    (``patient_deleted``), and de-identified (``deidentified``) unless the caller
    may read PHI — the same studies, without joining ``patients``."""
    where = organization_scope(caller, "s").add(
        "s.deleted_at IS NULL AND NOT s.patient_deleted")
    if not caller.can_read_phi:
        where.add("s.deidentified")
    return where


def routes(app: Atrium) -> list[Route]:
    deidentifier = app.deidentifier

    def find_study(request: Request, conn: Any) -> dict[str, Any]:
        where = live_study_scope(request.caller).add("s.id = %s", request.params["id"])
        row = conn.execute(sql.SQL("{} WHERE {}").format(_STUDY_SELECT, where.sql()),
                           where.params).fetchone()
        if row is None:
            raise NotFound(f"No study {request.params['id']}")
        return _named(_STUDY_COLUMNS, row)

    def find_series(request: Request, conn: Any) -> dict[str, Any]:
        where = live_study_scope(request.caller, "se").add("se.id = %s", request.params["id"])
        row = conn.execute(sql.SQL("{} WHERE {}").format(_SERIES_SELECT, where.sql()),
                           where.params).fetchone()
        if row is None:
            raise NotFound(f"No series {request.params['id']}")
        return _named(_SERIES_COLUMNS, row)

    def search_studies(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where = search_scope(request.caller).add(after, *values)
        # The modality before the words: PostgreSQL tests conditions of equal cost in
        # the order given, and comparing a short array is cheaper than a text search.
        if "modality" in args:
            where.add(_MODALITY, args["modality"])
        if "q" in args:
            require_words(args["q"])
            where.add(_DESCRIPTION_MATCHES, args["q"])
        for name, condition in _FILTERS.items():
            if name in args:
                where.add(condition, args[name])
        # The page's ids first, from the walk's index alone (sql/0025), then their rows.
        query = sql.SQL("{} JOIN (SELECT s.id FROM studies s WHERE {} ORDER BY {} LIMIT %s) "
                        "page ON page.id = s.id ORDER BY {}").format(
            _SEARCH_SELECT, where.sql(), ORDER.order_by(), ORDER.order_by())
        with app.pool.connection() as conn:
            # Planned for its values every time. psycopg prepares a statement it has
            # run 5 times, and PostgreSQL may then reuse a generic plan that guesses how
            # many rows the filters keep (a date range: 0.5%) — for a modality and a
            # year at 100,000 studies, a 40 ms plan instead of a 5 ms one.
            rows = conn.execute(query, [*where.params, wanted.fetch],
                                prepare=False).fetchall()
        studies = [_named(_STUDY_COLUMNS, r) for r in rows]
        answer = ORDER.page(studies, wanted.limit, key=lambda s: (s["created_at"], s["id"]))
        return json_response(answer, audit=AuditNote(
            "study", phi=any(_phi(s) for s in answer["items"])))

    def get_study(request: Request) -> Response:
        with app.pool.connection() as conn:
            study = find_study(request, conn)
            series = conn.execute(_SERIES_OF_STUDY, (study["id"],)).fetchall()
        study["series"] = [_named(SERIES_SUMMARY["properties"], r) for r in series]
        return json_response(study, audit=AuditNote("study", study["id"], phi=_phi(study)))

    def get_series(request: Request) -> Response:
        with app.pool.connection() as conn:
            series = find_series(request, conn)
        return json_response(series, audit=AuditNote("series", series["id"], phi=_phi(series)))

    def list_series_instances(request: Request) -> Response:
        wanted = page_request(request.args, scope=INSTANCES_SCOPE, size=2)
        after_number, after_id = wanted.after or (None, None)
        with app.pool.connection() as conn:
            series = find_series(request, conn)
            rows = conn.execute(_INSTANCES_OF_SERIES, {
                "series": series["id"], "last": _LAST_NUMBER, "after_number": after_number,
                "after_id": after_id, "fetch": wanted.fetch}).fetchall()
        answer = page(rows, wanted.limit, key=lambda r: (r[5], r[0]), scope=INSTANCES_SCOPE)
        answer["items"] = [_named(INSTANCE_SUMMARY["properties"], r[:5])
                           for r in answer["items"]]
        return json_response(answer, audit=AuditNote("series", series["id"],
                                                     phi=_phi(series)))

    def get_instance(request: Request) -> Response:
        where = live_study_scope(request.caller, "se", "i").add("i.id = %s",
                                                                request.params["id"])
        with app.pool.connection() as conn:
            row = conn.execute(sql.SQL("{} WHERE {}").format(_INSTANCE_SELECT, where.sql()),
                               where.params).fetchone()
        if row is None:
            raise NotFound(f"No instance {request.params['id']}")
        instance = _named(_INSTANCE_COLUMNS, row)
        return json_response(instance, audit=AuditNote("instance", instance["id"],
                                                       phi=_phi(instance)))

    def deidentify_study(request: Request) -> Response:
        with app.pool.connection() as conn, conn.transaction():
            study = find_study(request, conn)
            if study["patient_is_deidentified"]:
                raise Conflict("The study is de-identified already.")
            if not study["orthanc_id"]:
                raise Conflict("The study is not in Orthanc; nothing to de-identify.")
            require_live_organization(conn, request.caller)
            job_id = deidentifier.create(conn, request.caller, {"study_id": str(study["id"])})
            job = read_job(conn, job_id)
        deidentifier.submit(Work(job_id, request.caller.organization_id, study["orthanc_id"]))
        return json_response(job, status=202, headers={"Location": f"/api/jobs/{job_id}"},
                             audit=AuditNote("study", study["id"]))

    return [
        Route("GET", "/api/studies", search_studies, tags=("studies",), auth=READERS,
              summary="Search studies (description words, patient, modality, dates, "
                      "accession number, Study Instance UID)", query=STUDY_SEARCH,
              responses={200: Reply("A page of studies, newest first",
                                    page_schema(STUDY_ITEM))}),
        Route("GET", "/api/studies/{id:uuid}", get_study, tags=("studies",), auth=READERS,
              summary="Read a study, its counts and its series",
              responses={200: Reply("The study", STUDY)}),
        Route("POST", "/api/studies/{id:uuid}/deidentify", deidentify_study,
              tags=("studies",), auth=(Permission.DEIDENTIFY,),
              summary="Make a de-identified copy (Orthanc's anonymization, PS3.15 basic "
                      "profile) as a job",
              responses={202: Reply("The job; follow its Location", JOB),
                         409: Reply("Already de-identified, or not in Orthanc"),
                         503: Reply("Too many de-identifications waiting")}),
        Route("GET", "/api/series/{id:uuid}", get_series, tags=("series",), auth=READERS,
              summary="Read a series", responses={200: Reply("The series", SERIES)}),
        Route("GET", "/api/series/{id:uuid}/instances", list_series_instances,
              tags=("series",), auth=READERS, query=obj(PAGE_PARAMETERS),
              summary="The instances of a series, by instance number",
              responses={200: Reply("A page of instances", page_schema(INSTANCE_SUMMARY))}),
        Route("GET", "/api/instances/{id:uuid}", get_instance, tags=("instances",),
              auth=READERS, summary="Read an instance and its DICOM tags",
              responses={200: Reply("The instance", INSTANCE)}),
    ]
