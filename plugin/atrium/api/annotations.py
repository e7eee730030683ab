"""``/api/annotations``: versioned annotations of studies, series, instances, slides
and recordings (SPEC §6).

An annotation keeps the id it was created with. Each update adds a version row
(``parent_id`` = the row it replaces) and the id always answers with the latest
one; ``/history`` lists them all. Updates are optimistic: the client sends the
version it read in ``If-Match`` and a stale one is a 409, so two editors never
overwrite each other silently. Concurrent updates serialise on the row of
version 1, and the database's unique (root, version) would refuse a second
"version n + 1" even without that lock.

Who sees what follows the target: the caller's organization's, and for a caller
without ``READ_PHI`` only annotations on de-identified patients' data. A viewport
query (``bbox``) on a slide uses the GiST index on (target, bounding box).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from psycopg import sql

from atrium.annotations.geometry import (
    IMAGE_SHAPES,
    MAX_COORDINATE,
    MAX_POINTS,
)
from atrium.annotations.store import MAX_PROPERTIES_BYTES, add_version, create_annotation
from atrium.api.http import (
    AuditNote,
    MiB,
    RawJson,
    Reply,
    Request,
    Response,
    Route,
    json_response,
)
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.patients import READERS
from atrium.api.schema import (
    array,
    date_time,
    enum,
    integer,
    nullable,
    number,
    obj,
    string,
)
from atrium.api.schema import uuid as uuid_schema
from atrium.api.targets import TARGET_TYPES, find_target, phi_column, row_scope
from atrium.auth.principal import Permission
from atrium.errors import (
    BadRequest,
    Conflict,
    FieldError,
    NotFound,
    PreconditionRequired,
)

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["ANNOTATION", "ANNOTATION_TYPES", "COORDINATES", "etag", "routes"]

ANNOTATION_TYPES = ("dicom", "wsi", "signal", "general")
MAX_BODY_BYTES = 2 * MiB

# ------------------------------------------------------------------------- schemas

_COORD = number(minimum=-MAX_COORDINATE, maximum=MAX_COORDINATE)
_POINT = obj({"x": _COORD, "y": _COORD}, required=["x", "y"])
_EXTENT = number(exclusive_minimum=0, maximum=MAX_COORDINATE)
_IMAGE_COMMON = {
    "frame": integer(minimum=1, maximum=1_000_000,
                     description="Frame number in a multi-frame image (1 = first)"),
    "units": enum("pixel", "micrometer", description="'micrometer' only on slides"),
    "bounding_box": obj({}, additional=True,
                        description="Ignored on input: the server computes it"),
}


def _shape(kind: str, fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    common = _IMAGE_COMMON if kind in IMAGE_SHAPES else {"bounding_box": _IMAGE_COMMON[
        "bounding_box"]}
    return obj({"type": enum(kind), **fields, **common}, required=["type", *required])


def _points(minimum: int, maximum: int = MAX_POINTS) -> dict[str, Any]:
    return array(_POINT, min_items=minimum, max_items=maximum)


SHAPES = {
    "point": _shape("point", {"points": _points(1, 1)}, ["points"]),
    "polyline": _shape("polyline", {"points": _points(2)}, ["points"]),
    "polygon": _shape("polygon", {"points": _points(3)}, ["points"]),
    "rectangle": _shape("rectangle", {"x": _COORD, "y": _COORD, "width": _EXTENT,
                                      "height": _EXTENT}, ["x", "y", "width", "height"]),
    "ellipse": _shape("ellipse", {"center": _POINT, "radius_x": _EXTENT, "radius_y": _EXTENT,
                                  "rotation": number(exclusive_minimum=-90, maximum=90)},
                      ["center", "radius_x", "radius_y"]),
    "time_range": _shape("time_range", {
        "start": number(minimum=0, maximum=MAX_COORDINATE,
                        description="Seconds from the start of the recording"),
        "end": number(minimum=0, maximum=MAX_COORDINATE),
        "channels": array(integer(minimum=0, maximum=65535), min_items=1, max_items=4096,
                          description="Channel indices; all channels when absent"),
    }, ["start", "end"]),
}
COORDINATES: dict[str, Any] = {
    "type": "object",
    "description": "A shape in image pixel space (x = column, y = row), or a time range "
                   "on a recording; 'bounding_box' is set by the server.",
    "required": ["type"],
    "properties": {"type": enum(*SHAPES)},
    # if/then rather than oneOf: a wrong field is reported against its shape's
    # schema, with its path, instead of "matches none of the alternatives".
    "allOf": [{"if": {"properties": {"type": {"const": kind}}}, "then": schema}
              for kind, schema in SHAPES.items()],
}
_BOX = obj({"x": number(), "y": number(), "width": number(), "height": number()},
           required=["x", "y", "width", "height"])
_LABEL = nullable(string(min_length=1, max_length=255))
_PROPERTIES = obj({}, additional=True, max_properties=500,
                  description=f"Free-form details (at most {MAX_PROPERTIES_BYTES} bytes)")

NEW_ANNOTATION = obj({
    "annotation_type": enum(*ANNOTATION_TYPES),
    "target_type": enum(*TARGET_TYPES),
    "target_id": uuid_schema(),
    "label": _LABEL,
    "coordinates": nullable(COORDINATES),
    "properties": _PROPERTIES,
}, required=["annotation_type", "target_type", "target_id"])
ANNOTATION_CHANGES = obj({"label": _LABEL, "coordinates": nullable(COORDINATES),
                          "properties": _PROPERTIES}, min_properties=1)
ANNOTATION = obj({
    "id": uuid_schema(description="The annotation's id, the same in every version"),
    "version": integer(minimum=1),
    "version_id": uuid_schema(description="This version's own row"),
    "parent_id": nullable(uuid_schema(description="The version this one replaced")),
    "annotation_type": enum(*ANNOTATION_TYPES), "target_type": enum(*TARGET_TYPES),
    "target_id": uuid_schema(), "user_id": nullable(uuid_schema()), "label": _LABEL,
    "coordinates": nullable(obj({"type": enum(*SHAPES), "bounding_box": _BOX},
                                additional=True)),
    "properties": obj({}, additional=True),
    "created_at": date_time(), "updated_at": date_time(),
    "deleted_at": nullable(date_time()),
}, required=["id", "version", "version_id", "annotation_type", "target_type", "target_id",
             "properties", "created_at", "updated_at"])
ANNOTATION_SEARCH = obj({
    **PAGE_PARAMETERS,
    "target_type": enum(*TARGET_TYPES),
    "target_id": uuid_schema(),
    "study_id": uuid_schema(description="Annotations of this study, of its series and of "
                                        "their instances"),
    "annotation_type": enum(*ANNOTATION_TYPES),
    "label": string(min_length=1, max_length=255),
    "user_id": uuid_schema(),
    "created_after": date_time(), "created_before": date_time(),
    "updated_after": date_time(), "updated_before": date_time(),
    "bbox": array(number(minimum=-MAX_COORDINATE, maximum=MAX_COORDINATE),
                  min_items=4, max_items=4,
                  description="x,y,width,height: annotations whose bounding box "
                              "intersects this rectangle"),
})
HISTORY_PAGE = obj(PAGE_PARAMETERS)

ORDER = Keyset("annotations", ("a.created_at", "a.root_id"))
HISTORY = Keyset("annotation-history", ("a.version",), descending=False)

_COLUMNS = ("id", "version", "version_id", "parent_id", "annotation_type", "target_type",
            "target_id", "user_id", "label", "coordinates", "properties", "created_at",
            "updated_at", "deleted_at")
_SELECT = sql.SQL(
    "SELECT a.root_id, a.version, a.id, a.parent_id, a.annotation_type, a.target_type, "
    "a.target_id, a.user_id, a.label, a.coordinates::text, a.properties::text, a.created_at, "
    "a.updated_at, a.deleted_at, {phi} "
    "FROM annotations a LEFT JOIN patients p ON p.id = a.patient_id").format(
        phi=phi_column("a"))


_CREATED_AT = _COLUMNS.index("created_at")


def _item(row: tuple[Any, ...], parsed: bool = False) -> tuple[dict[str, Any], bool]:
    """The annotation as the API shows it, and whether it is PHI. Its JSON columns
    stay PostgreSQL's text (see :class:`RawJson`) unless ``parsed``."""
    item = dict(zip(_COLUMNS, row[:-1], strict=True))
    for name in ("coordinates", "properties"):
        text = item[name]
        if text is not None:
            item[name] = json.loads(text) if parsed else RawJson(text)
    return item, bool(row[-1])


def etag(version: int) -> str:
    return f'"{version}"'


_IF_MATCH = re.compile(r'^\s*(?:W/)?"?(\d{1,9})"?\s*$')


def _expected_version(request: Request, required: bool) -> int | None:
    value = request.headers.get("if-match")
    if value is None:
        if required:
            raise PreconditionRequired(
                "Send If-Match with the version you read (the ETag of GET "
                "/api/annotations/{id}), so that an update never overwrites one you "
                "have not seen.")
        return None
    found = _IF_MATCH.match(value)
    if not found:
        raise BadRequest.invalid([FieldError(
            "header", "If-Match", "must be the annotation's version, such as \"3\"")])
    return int(found.group(1))


def routes(app: Atrium) -> list[Route]:
    def latest(conn: Any, caller: Any, annotation_id: Any, parsed: bool = False
               ) -> tuple[dict[str, Any], bool]:
        where = row_scope(caller, "a").add(
            "a.root_id = %s AND a.is_latest AND a.deleted_at IS NULL", annotation_id)
        row = conn.execute(sql.SQL("{} WHERE {}").format(_SELECT, where.sql()),
                           where.params).fetchone()
        if row is None:
            raise NotFound(f"No annotation {annotation_id}")
        return _item(row, parsed)

    def lock(conn: Any, annotation_id: Any) -> None:
        # Version 1's row is the lineage's mutex: every writer takes it first, then
        # reads the latest version committed by whoever held it before.
        conn.execute("SELECT 1 FROM annotations WHERE id = %s AND root_id = id FOR UPDATE",
                     (annotation_id,))

    def answer(item: dict[str, Any], phi: bool, status: int = 200,
               extra: dict[str, str] | None = None) -> Response:
        return json_response(item, status=status,
                             headers={"ETag": etag(item["version"]), **(extra or {})},
                             audit=AuditNote("annotation", item["id"], phi=phi))

    def create(request: Request) -> Response:
        body = request.json
        with app.pool.connection() as conn, conn.transaction():
            target = find_target(conn, request.caller, body["target_type"], body["target_id"])
            annotation_id = create_annotation(
                conn, target, annotation_type=body["annotation_type"],
                label=body.get("label"), coordinates=body.get("coordinates"),
                properties=body.get("properties", {}), user_id=request.caller.user_id)
            item, phi = latest(conn, request.caller, annotation_id)
        return answer(item, phi, 201, {"Location": f"/api/annotations/{annotation_id}"})

    def search(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        # A named target, or study, is found first (its 404 is the caller's answer);
        # then the rows need not be checked against it one by one.
        named = args["target_id"] if "target_type" in args and "target_id" in args else None
        study = args.get("study_id")
        audit_target = named if named is not None else study
        where = row_scope(request.caller, "a", target_checked=audit_target is not None).add(
            "a.is_latest AND a.deleted_at IS NULL").add(after, *values)
        if "target_id" in args:
            where.add("a.target_id = %s", args["target_id"])
        if study is not None:
            # The study's live targets, matched on (target_id, target_type), the
            # columns of idx_annotations_target: one query for a whole study.
            where.add("(a.target_id, a.target_type) IN ("
                      "SELECT %s::uuid, 'study' "
                      "UNION ALL SELECT se.id, 'series' FROM series se "
                      "WHERE se.study_id = %s AND se.deleted_at IS NULL "
                      "UNION ALL SELECT i.id, 'instance' FROM series se "
                      "JOIN instances i ON i.series_id = se.id "
                      "WHERE se.study_id = %s AND se.deleted_at IS NULL "
                      "AND i.deleted_at IS NULL)", study, study, study)
        for name in ("target_type", "annotation_type", "label", "user_id"):
            # With its id found, the target's type is known; not asking for it again
            # keeps a viewport query an index-only scan.
            if name in args and not (name == "target_type" and named is not None):
                where.add(sql.SQL("{} = %s").format(sql.Identifier("a", name)), args[name])
        for name, column, op in (("created_after", "created_at", ">="),
                                 ("created_before", "created_at", "<"),
                                 ("updated_after", "updated_at", ">="),
                                 ("updated_before", "updated_at", "<")):
            if name in args:
                where.add(sql.SQL("{} {} %s").format(sql.Identifier("a", column), sql.SQL(op)),
                          args[name])
        if "bbox" in args:
            x, y, width, height = args["bbox"]
            if width < 0 or height < 0:
                raise BadRequest.invalid([FieldError(
                    "query", "bbox", "width and height must not be negative")])
            where.add("a.bbox && box(point(%s, %s), point(%s, %s))",
                      x, y, x + width, y + height)
        # The page is chosen first, by its keys alone (an index-only scan for a
        # viewport); only its rows are then read and rendered — a wide viewport
        # matches thousands of polygons. The page's order is restored here rather
        # than by sorting rendered rows in the database.
        query = sql.SQL(
            "{select} JOIN (SELECT a.id FROM annotations a "
            "LEFT JOIN patients p ON p.id = a.patient_id WHERE {where} ORDER BY {order} "
            "LIMIT %s) page ON page.id = a.id").format(
                select=_SELECT, where=where.sql(), order=ORDER.order_by())
        with app.pool.connection() as conn:
            if named is not None:
                find_target(conn, request.caller, args["target_type"], named)
            if study is not None:
                find_target(conn, request.caller, "study", study)
            # Planned for its values every time, never a generic plan (see
            # atrium.api.studies): the viewport's size decides the best plan.
            rows = conn.execute(query, [*where.params, wanted.fetch],
                                prepare=False).fetchall()
        rows.sort(key=lambda row: (row[_CREATED_AT], row[0]), reverse=True)
        found = [_item(row) for row in rows]
        items = [item for item, _ in found]
        page = ORDER.page(items, wanted.limit, key=lambda a: (a["created_at"], a["id"]))
        phi = any(is_phi for _, is_phi in found[:wanted.limit])
        return json_response(page, audit=AuditNote("annotation", audit_target, phi=phi))

    def read(request: Request) -> Response:
        with app.pool.connection() as conn:
            item, phi = latest(conn, request.caller, request.params["id"])
        return answer(item, phi)

    def update(request: Request) -> Response:
        changes = request.json
        annotation_id = request.params["id"]
        with app.pool.connection() as conn, conn.transaction():
            lock(conn, annotation_id)
            current, _ = latest(conn, request.caller, annotation_id, parsed=True)
            # Only now: an annotation the caller cannot see is a 404 whatever they sent.
            expected = _expected_version(request, required=True)
            if current["version"] != expected:
                raise Conflict(f"Annotation {annotation_id} is at version "
                               f"{current['version']}, not {expected}; read it again and "
                               "apply your change to the latest version.",
                               current_version=current["version"])
            add_version(conn, current, label=changes.get("label", current["label"]),
                        coordinates=changes.get("coordinates", current["coordinates"]),
                        properties=changes.get("properties", current["properties"]),
                        user_id=request.caller.user_id)
            item, phi = latest(conn, request.caller, annotation_id)
        return answer(item, phi)

    def delete(request: Request) -> Response:
        annotation_id = request.params["id"]
        with app.pool.connection() as conn, conn.transaction():
            lock(conn, annotation_id)
            current, phi = latest(conn, request.caller, annotation_id)
            expected = _expected_version(request, required=False)
            if expected is not None and current["version"] != expected:
                raise Conflict(f"Annotation {annotation_id} is at version "
                               f"{current['version']}, not {expected}.",
                               current_version=current["version"])
            conn.execute("UPDATE annotations SET deleted_at = now() "
                         "WHERE root_id = %s AND deleted_at IS NULL", (annotation_id,))
        return Response(204, b"", headers={}, audit=AuditNote("annotation", annotation_id,
                                                               phi=phi))

    def history(request: Request) -> Response:
        annotation_id = request.params["id"]
        wanted = HISTORY.request(request.args)
        after, values = HISTORY.after(wanted)
        where = row_scope(request.caller, "a").add("a.root_id = %s", annotation_id).add(
            after, *values)
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), HISTORY.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [*where.params, wanted.fetch]).fetchall()
        if not rows and wanted.after is None:
            raise NotFound(f"No annotation {annotation_id}")
        found = [_item(row) for row in rows]
        page = HISTORY.page([item for item, _ in found], wanted.limit,
                            key=lambda a: (a["version"],))
        return json_response(page, audit=AuditNote(
            "annotation", annotation_id, phi=any(is_phi for _, is_phi in found)))

    tags = ("annotations",)
    writers = (Permission.ANNOTATE,)
    one = "/api/annotations/{id:uuid}"
    precondition = {409: Reply("If-Match names an older version"),
                    400: Reply("If-Match is missing or malformed (type precondition-required "
                               "when missing)")}
    return [
        Route("POST", "/api/annotations", create, tags=tags, auth=writers,
              body=NEW_ANNOTATION, max_body_bytes=MAX_BODY_BYTES,
              summary="Annotate a study, series, instance, slide or recording",
              responses={201: Reply("The annotation, version 1", ANNOTATION),
                         404: Reply("No such target in the caller's organization")}),
        Route("GET", "/api/annotations", search, tags=tags, auth=READERS,
              query=ANNOTATION_SEARCH,
              summary="Find annotations by target, study, type, label, author, time or "
                      "viewport",
              responses={200: Reply("A page of annotations, newest first",
                                    page_schema(ANNOTATION)),
                         404: Reply("target_type and target_id, or study_id, name no target "
                                    "the caller may see")}),
        Route("GET", one, read, tags=tags, auth=READERS,
              summary="The latest version of an annotation (its ETag is the version)",
              responses={200: Reply("The annotation", ANNOTATION)}),
        Route("PUT", one, update, tags=tags, auth=writers, body=ANNOTATION_CHANGES,
              max_body_bytes=MAX_BODY_BYTES,
              summary="Change an annotation: a new version (If-Match: the version read)",
              responses={200: Reply("The new version", ANNOTATION), **precondition}),
        Route("DELETE", one, delete, tags=tags, auth=writers,
              summary="Delete an annotation (kept, with its history, as deleted)",
              responses={204: Reply("Deleted"),
                         409: Reply("If-Match names an older version")}),
        Route("GET", one + "/history", history, tags=tags, auth=READERS,
              query=HISTORY_PAGE, summary="Every version of an annotation, oldest first",
              responses={200: Reply("A page of versions", page_schema(ANNOTATION))}),
    ]
