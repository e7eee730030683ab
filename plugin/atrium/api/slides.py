"""``/api/slides``: whole-slide images — upload, list, read, soft-delete, and their
pixels (tiles, Deep Zoom, thumbnail, region, associated images).

A slide comes from a file uploaded here (pyramidal TIFF, Aperio SVS, OME-TIFF;
whole in one ``multipart/form-data`` request, or first as a resumable upload of
:mod:`atrium.api.uploads`) or from a DICOM WSI series stored in Orthanc
(:mod:`atrium.slides.wsi_registry`). The file is checked by opening it with its
reader before any row exists: a file that cannot be tiled leaves nothing behind.

Scope as for studies: the caller's organization; without ``READ_PHI`` only slides
of de-identified patients (or of no patient). Associated images (label, macro)
often show the patient's name, so they go only to PHI readers, and never from a
de-identified slide. Tile, Deep Zoom and thumbnail reads are audited coalesced —
one row per caller and slide per window (:class:`atrium.auth.request_audit.CoalescedAudit`)
— so a viewer panning at hundreds of tiles a second does not write hundreds of rows.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import uuid as uuid_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import (
    JSON,
    AuditNote,
    Reply,
    Request,
    Response,
    Route,
    json_response,
)
from atrium.api.multipart import FormPart, parse_form_data
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.params import parse_json_part
from atrium.api.schema import (
    compile_schema,
    date_time,
    enum,
    field_errors,
    integer,
    nullable,
    number,
    obj,
    string,
    uuid,
)
from atrium.api.scope import RecentlyVisible, owned_scope, patient_scope, visible_key
from atrium.auth.principal import Permission
from atrium.cluster.bus import publish
from atrium.errors import BadRequest, Conflict, FieldError, NotFound, ServiceUnavailable
from atrium.slides.deepzoom import dzi_descriptor
from atrium.slides.library import SlideRef
from atrium.slides.model import ImageFormat
from atrium.storage import StorageError

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["SLIDE", "routes"]

log = logging.getLogger(__name__)

READERS = (Permission.READ_PHI, Permission.READ_DEIDENTIFIED)
FORMATS = ("jpeg", "png")
MEDIA_TYPES = {"jpeg": "image/jpeg", "png": "image/png"}
MAX_THUMBNAIL = 2048
# Changes when the way tiles are encoded changes, so cached copies are not reused.
_ENCODING_VERSION = "1"

MULTIPART_NOTE = (
    "Orthanc's HTTP server takes every multipart/form-data POST for its own upload form "
    "and never lets a plugin answer it, so Atrium refuses such POSTs (403) rather than "
    "let them vanish. Send a form with the header 'X-HTTP-Method-Override: PUT' "
    "(curl -H 'X-HTTP-Method-Override: PUT' -F file=@case.svs -F slide_id=S1 …), or "
    "send the file as a resumable upload and POST its upload_id.")
_TEXT = r"^\S(.*\S)?$"
_FIELDS = {
    "patient_id": nullable(uuid(description="A patient of the caller's organization")),
    "specimen_type": nullable(string(max_length=100)),
    "stain": nullable(string(max_length=100)),
    "scan_date": nullable(date_time()),
    "metadata": obj({}, additional=True, max_properties=200,
                    description="Descriptive data of the caller's; Atrium adds what it reads "
                                "from the file under 'source', 'levels', 'associated'"),
}
_SLIDE_ID = string(min_length=1, max_length=255, pattern=_TEXT,
                   description="The lab's name for the slide, unique in the organization")
NEW_SLIDE_FIELDS = obj({"slide_id": _SLIDE_ID, **_FIELDS}, required=["slide_id"])
NEW_SLIDE_FROM_UPLOAD = obj({"upload_id": uuid(description="A complete upload of /api/uploads"),
                             "slide_id": _SLIDE_ID, **_FIELDS},
                            required=["upload_id", "slide_id"])
SLIDE = obj({
    "id": uuid(), "slide_id": string(), "organization_id": uuid(), **_FIELDS,
    "magnification": nullable(string()), "scanner_model": nullable(string()),
    "width_pixels": integer(minimum=1), "height_pixels": integer(minimum=1),
    "mpp_x": nullable(number()), "mpp_y": nullable(number()),
    "tile_size": integer(minimum=1), "pyramid_levels": integer(minimum=1),
    "storage_path": nullable(string()), "file_size_bytes": nullable(integer(minimum=0)),
    "file_format": string(), "created_at": date_time(), "updated_at": date_time(),
}, required=["id", "slide_id", "organization_id", "patient_id", "width_pixels",
             "height_pixels", "tile_size", "pyramid_levels", "file_format", "metadata",
             "created_at", "updated_at"])
SLIDE_SEARCH = obj({
    **PAGE_PARAMETERS,
    "slide_id": string(min_length=1, max_length=255),
    "patient_id": uuid(),
    "stain": string(min_length=1, max_length=100),
    "specimen_type": string(min_length=1, max_length=100),
    "file_format": string(min_length=1, max_length=50),
    "scan_date_from": date_time(description="Scanned at or after"),
    "scan_date_to": date_time(description="Scanned before"),
})
TILE_QUERY = obj({"format": enum(*FORMATS, default="jpeg")})
THUMBNAIL_QUERY = obj({"max_size": integer(minimum=16, maximum=MAX_THUMBNAIL, default=512),
                       "format": enum(*FORMATS, default="jpeg")})
REGION_QUERY = obj({
    "level": integer(minimum=0, maximum=64, default=0),
    "x": integer(minimum=0, maximum=10_000_000), "y": integer(minimum=0, maximum=10_000_000),
    "width": integer(minimum=1, maximum=100_000), "height": integer(minimum=1, maximum=100_000),
    "format": enum(*FORMATS, default="png"),
}, required=["x", "y", "width", "height"])

ORDER = Keyset("slides", ("sl.created_at", "sl.id"))
_COLUMNS = ("id", "slide_id", "patient_id", "organization_id", "specimen_type", "stain",
            "magnification", "scan_date", "scanner_model", "width_pixels", "height_pixels",
            "mpp_x", "mpp_y", "tile_size", "pyramid_levels", "storage_path", "file_size_bytes",
            "file_format", "metadata", "created_at", "updated_at")
_PHI = sql.SQL("(sl.patient_id IS NOT NULL AND NOT coalesce(p.is_deidentified, false))")
_FROM = sql.SQL("FROM slides sl LEFT JOIN patients p ON p.id = sl.patient_id")
_SELECT = sql.SQL("SELECT {}, {} {}").format(
    sql.SQL(", ").join(sql.Identifier("sl", c) for c in _COLUMNS), _PHI, _FROM)
# The hot path of every tile: what opening the slide's reader and checking the
# answer need, nothing more.
_SELECT_REF = sql.SQL("SELECT sl.id, sl.storage_path, sl.file_format, sl.tile_size, "
                      "sl.updated_at, {}, sl.patient_id IS NOT NULL AND "
                      "coalesce(p.is_deidentified, false) {}").format(_PHI, _FROM)
_FILTERS = {
    "slide_id": "sl.slide_id = %s", "patient_id": "sl.patient_id = %s",
    "stain": "sl.stain = %s", "specimen_type": "sl.specimen_type = %s",
    "file_format": "upper(sl.file_format) = upper(%s)",
    "scan_date_from": "sl.scan_date >= %s", "scan_date_to": "sl.scan_date < %s",
}
# A plain file name: no directories, no control characters, not "." or "..".
_FILE_NAME = re.compile(r"^(?!\.{1,2}$)[^/\\\x00-\x1f\x7f]{1,255}$")
_NEW_SLIDE_VALIDATOR = compile_schema(NEW_SLIDE_FIELDS, what="slide fields")


@dataclass(frozen=True)
class _Visible:
    """A slide as a pixel route needs it."""

    ref: SlideRef
    tile_size: int
    phi: bool
    deidentified: bool
    version: str  # changes when the slide's row does

    @functools.cached_property
    def etag_base(self) -> str:
        """What every image validator of this slide starts with: a digest of the
        slide, its version and the encoder's, taken once per lookup, not per tile."""
        return hashlib.blake2b(repr((self.ref.id, self.version, _ENCODING_VERSION)).encode(),
                               digest_size=12).hexdigest()


def _slide(row: tuple[Any, ...]) -> tuple[dict[str, Any], bool]:
    return dict(zip(_COLUMNS, row[:-1], strict=True)), bool(row[-1])


def checked_file_name(name: str | None) -> str:
    """The uploaded file's name, if it is a plain file name (kept in the slide's
    metadata; never used as a path)."""
    if not name or not _FILE_NAME.fullmatch(name.strip()):
        raise BadRequest.invalid([FieldError(
            "body", "file", "needs a plain file name (no directories, '..' or control "
            "characters), e.g. 'case-12.svs'")])
    return name.strip()


def _form_fields(parts: list[FormPart]) -> tuple[dict[str, Any], FormPart]:
    files = [part for part in parts if part.name == "file"]
    if len(files) != 1 or files[0].filename is None:
        raise BadRequest.invalid([FieldError("body", "file", "must be exactly one file part "
                                             "named 'file' (with a filename)")])
    fields: dict[str, Any] = {}
    for part in parts:
        if part.name == "file":
            continue
        if part.name in fields:
            raise BadRequest.invalid([FieldError("body", part.name, "is given twice")])
        text = part.text()
        if part.name == "metadata":
            fields["metadata"] = parse_json_part(text, "metadata")
        else:
            fields[part.name] = text
    errors = field_errors(_NEW_SLIDE_VALIDATOR, fields, "body")
    if errors:
        raise BadRequest.invalid(errors)
    return fields, files[0]


def _etag(slide: _Visible, *key: Any) -> str:
    # The key is hashed too: it may hold a name from the URL (an associated image).
    digest = hashlib.blake2b(repr(key).encode(), digest_size=8).hexdigest()
    return f'"{slide.etag_base}-{digest}"'


def routes(app: Atrium) -> list[Route]:
    library = app.slides
    assert library is not None, "the slide library is built before the routes"
    max_request = app.settings.upload_max_request_bytes

    recently_visible: RecentlyVisible[_Visible] = RecentlyVisible()

    def deleted_elsewhere(slide_id: str) -> None:
        library.forget(uuid_module.UUID(slide_id))
        recently_visible.clear()

    if app.bus is not None:  # a deletion through any node ends the pixels here at once
        app.bus.subscribe("slide", deleted_elsewhere, resync=recently_visible.clear)

    def visible(request: Request) -> _Visible:
        caller = request.caller
        key = visible_key(caller, request.params["id"])
        known = recently_visible.get(key)
        if known is not None:
            return known
        where = owned_scope(caller, "sl").add("sl.id = %s", request.params["id"])
        with app.pool.connection() as conn:
            row = conn.execute(sql.SQL("{} WHERE {}").format(_SELECT_REF, where.sql()),
                               where.params).fetchone()
        if row is None:
            raise NotFound(f"No slide {request.params['id']}")
        slide_id, storage_path, file_format, tile_size, updated_at, phi, deidentified = row
        version = updated_at.isoformat()
        found = _Visible(SlideRef(slide_id, storage_path, file_format, version), tile_size,
                         bool(phi), bool(deidentified), version)
        recently_visible.put(key, found)
        return found

    def image(request: Request, slide: _Visible, image_format: str, render: Any,
              *key: Any) -> Response:
        """An image answer with its validators; 304 when the client has it."""
        etag = _etag(slide, image_format, *key)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400"}
        audit = AuditNote("slide", slide.ref.id, phi=slide.phi)
        wanted = request.headers.get("if-none-match", "")
        if etag in (tag.strip() for tag in wanted.split(",")) or wanted.strip() == "*":
            return Response(304, b"", MEDIA_TYPES[image_format], headers, audit)
        return Response(200, render(), MEDIA_TYPES[image_format], headers, audit)

    # ----------------------------------------------------------------- resource

    def find(conn: Any, request: Request, slide_id: Any) -> tuple[dict[str, Any], bool]:
        where = owned_scope(request.caller, "sl").add("sl.id = %s", slide_id)
        row = conn.execute(sql.SQL("{} WHERE {}").format(_SELECT, where.sql()),
                           where.params).fetchone()
        if row is None:
            raise NotFound(f"No slide {slide_id}")
        return _slide(row)

    def check_patient(conn: Any, request: Request, patient_id: Any) -> None:
        if patient_id is None:
            return
        where = patient_scope(request.caller).add("p.id = %s", patient_id)
        found = conn.execute(sql.SQL("SELECT 1 FROM patients p WHERE {}").format(where.sql()),
                             where.params).fetchone()
        if found is None:
            raise BadRequest.invalid([FieldError("body", "patient_id",
                                                 f"names no patient of your organization: "
                                                 f"{patient_id}")])

    def check_free(conn: Any, request: Request, slide_id: str) -> None:
        taken = conn.execute("SELECT 1 FROM slides WHERE organization_id = %s AND slide_id = %s "
                             "AND deleted_at IS NULL",
                             (request.caller.organization_id, slide_id)).fetchone()
        if taken:
            raise _taken(slide_id)

    def _taken(slide_id: str) -> Conflict:
        return Conflict(f"The organization has a slide {slide_id!r} already; choose another "
                        "slide_id or delete that slide first.")

    def insert(request: Request, fields: dict[str, Any], new_id: uuid_module.UUID,
               object_name: str, size: int, file_name: str) -> tuple[dict[str, Any], bool]:
        info = library.inspect(object_name, size)
        metadata = {**fields.get("metadata", {}), "source": info.properties,
                    "original_filename": file_name, "associated": list(info.associated),
                    "levels": [{"width": lv.width, "height": lv.height,
                                "downsample": lv.downsample} for lv in info.levels],
                    "lossless": info.lossless}
        row = {
            "id": new_id, "slide_id": fields["slide_id"],
            "patient_id": fields.get("patient_id"),
            "organization_id": request.caller.organization_id,
            "specimen_type": fields.get("specimen_type"), "stain": fields.get("stain"),
            "magnification": info.magnification, "scan_date": fields.get("scan_date")
            or info.scan_date, "scanner_model": info.scanner_model,
            "width_pixels": info.width, "height_pixels": info.height,
            "mpp_x": info.mpp_x, "mpp_y": info.mpp_y, "tile_size": info.tile_size,
            "pyramid_levels": len(info.levels), "storage_path": object_name,
            "file_size_bytes": size, "file_format": info.file_format,
            "metadata": Jsonb(metadata),
        }
        statement = sql.SQL("INSERT INTO slides ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, row)),
            sql.SQL(", ").join(sql.Placeholder() * len(row)))
        try:
            with app.pool.connection() as conn, conn.transaction():
                conn.execute(statement, list(row.values()))
                return find(conn, request, new_id)
        except psycopg.errors.UniqueViolation:
            raise _taken(fields["slide_id"]) from None

    def store_and_insert(request: Request, fields: dict[str, Any], data: memoryview,
                         file_name: str) -> tuple[uuid_module.UUID, dict[str, Any], bool]:
        if data.nbytes == 0:
            raise BadRequest.invalid([FieldError("body", "file", "is empty")])
        new_id = uuid_module.uuid4()
        object_name = f"slides/{request.caller.organization_id}/{new_id}"
        with app.pool.connection() as conn:
            check_patient(conn, request, fields.get("patient_id"))
            check_free(conn, request, fields["slide_id"])
        app.store.put(object_name, data, length=data.nbytes)
        try:
            created, phi = insert(request, fields, new_id, object_name, data.nbytes, file_name)
        except BaseException:
            app.store.delete(object_name)
            raise
        return new_id, created, phi

    def create_slide(request: Request) -> Response:
        try:
            return add_slide(request)
        except StorageError as error:
            log.error("slides.storage_failed error=%s", error)
            raise ServiceUnavailable("Object storage could not store or assemble the file; "
                                     "nothing was kept. Try again shortly.") from None

    def add_slide(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == JSON:
            fields = dict(request.json)
            upload_id = fields.pop("upload_id")
            new_id = uuid_module.uuid4()
            object_name = f"slides/{request.caller.organization_id}/{new_id}"
            with app.pool.connection() as conn:
                check_patient(conn, request, fields.get("patient_id"))
                check_free(conn, request, fields["slide_id"])
            with app.uploads.claim(upload_id, request.caller.user_id, object_name) as claimed:
                file_name = checked_file_name(claimed.filename)
                created, phi = insert(request, fields, new_id, object_name, claimed.size,
                                      file_name)
        else:
            fields, part = _form_fields(parse_form_data(request.body,
                                                        request.headers["content-type"]))
            file_name = checked_file_name(part.filename)
            new_id, created, phi = store_and_insert(request, fields, part.data, file_name)
        return json_response(created, status=201, headers={"Location": f"/api/slides/{new_id}"},
                             audit=AuditNote("slide", new_id, phi=phi))

    def list_slides(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where = owned_scope(request.caller, "sl").add(after, *values)
        for name, condition in _FILTERS.items():
            if name in args:
                where.add(condition, args[name])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), ORDER.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [*where.params, wanted.fetch], prepare=False).fetchall()
        slides = [_slide(r) for r in rows]
        answer = ORDER.page([s for s, _ in slides], wanted.limit,
                            key=lambda s: (s["created_at"], s["id"]))
        return json_response(answer, audit=AuditNote("slide", phi=any(phi for _, phi in slides)))

    def get_slide(request: Request) -> Response:
        with app.pool.connection() as conn:
            slide, phi = find(conn, request, request.params["id"])
        return json_response(slide, audit=AuditNote("slide", slide["id"], phi=phi))

    def delete_slide(request: Request) -> Response:
        with app.pool.connection() as conn, conn.transaction():
            slide, phi = find(conn, request, request.params["id"])
            conn.execute("UPDATE slides SET deleted_at = now() WHERE id = %s", (slide["id"],))
            publish(conn, "slide", str(slide["id"]))
        library.forget(slide["id"])
        recently_visible.clear()
        return Response(204, b"", JSON, {}, AuditNote("slide", slide["id"], phi=phi))

    # ------------------------------------------------------------------- pixels

    def tile(request: Request) -> Response:
        slide = visible(request)
        level, col, row = (request.params[k] for k in ("level", "col", "row"))
        image_format = request.args["format"]
        return image(request, slide, image_format,
                     lambda: library.tile(slide.ref, level, col, row, image_format),
                     "tile", level, col, row)

    def dzi(request: Request) -> Response:
        slide = visible(request)
        reader = library.reader(slide.ref)
        etag = _etag(slide, "dzi")
        return Response(200, dzi_descriptor(reader.info).encode(), "application/xml",
                        {"ETag": etag, "Cache-Control": "private, max-age=3600"},
                        AuditNote("slide", slide.ref.id, phi=slide.phi))

    def dzi_file(request: Request) -> Response:
        match = re.fullmatch(r"(\d{1,7})_(\d{1,7})\.(jpeg|jpg|png)", request.params["name"])
        if match is None:
            raise NotFound("A Deep Zoom tile is named {col}_{row}.jpeg or {col}_{row}.png")
        col, row = int(match.group(1)), int(match.group(2))
        image_format: ImageFormat = "png" if match.group(3) == "png" else "jpeg"
        slide = visible(request)
        level = request.params["level"]
        return image(request, slide, image_format,
                     lambda: library.dzi_tile(slide.ref, level, col, row, image_format),
                     "dzi", level, col, row)

    def thumbnail(request: Request) -> Response:
        slide = visible(request)
        size, image_format = request.args["max_size"], request.args["format"]
        return image(request, slide, image_format,
                     lambda: library.thumbnail(slide.ref, size, image_format),
                     "thumbnail", size)

    def region(request: Request) -> Response:
        slide = visible(request)
        args = request.args
        return image(request, slide, args["format"],
                     lambda: library.region(slide.ref, args["level"], args["x"], args["y"],
                                            args["width"], args["height"], args["format"]),
                     "region", args["level"], args["x"], args["y"], args["width"],
                     args["height"])

    def associated(request: Request) -> Response:
        slide = visible(request)
        name = request.params["name"]
        # A label shows what was written on the glass — often the patient's name.
        if slide.deidentified:
            raise NotFound(f"Slide {slide.ref.id} is de-identified: its associated images "
                           "are not served.")
        return image(request, slide, "jpeg",
                     lambda: library.associated(slide.ref, name, "jpeg"), "associated", name)

    tags = ("slides",)
    too_large = (f"Send files over {max_request // (1024 * 1024)} MiB as a resumable upload: "
                 "POST /api/uploads, PUT the chunks with Content-Range, then POST /api/slides "
                 "with {\"upload_id\"}.")
    image_replies = {200: Reply("The image", {"type": "string", "format": "binary"},
                                media_type="image/jpeg"),
                     304: Reply("The client's copy is current (If-None-Match)")}
    return [
        # multipart/form-data is documented on PUT only: a POST of it never reaches
        # Atrium (MULTIPART_NOTE), though clients send it as a POST with the override.
        Route("POST", "/api/slides", create_slide, tags=tags, auth=(Permission.UPLOAD,),
              media_types=(JSON,), body=NEW_SLIDE_FROM_UPLOAD,
              max_body_bytes=max_request, too_large_hint=too_large,
              summary="Add a slide: a complete upload (JSON with upload_id) or "
                      "multipart/form-data (see the description)",
              description=MULTIPART_NOTE,
              responses={201: Reply("The slide", SLIDE),
                         404: Reply("No upload with this upload_id for the caller (or it "
                                    "expired)"),
                         409: Reply("The slide_id is taken in the organization, or the "
                                    "upload is not complete")}),
        Route("PUT", "/api/slides", create_slide, tags=tags, auth=(Permission.UPLOAD,),
              media_types=(JSON, "multipart/form-data"), body=NEW_SLIDE_FROM_UPLOAD,
              max_body_bytes=max_request, too_large_hint=too_large,
              operation_id="put_api_slides_multipart",
              summary="The same as POST /api/slides; what a multipart/form-data POST "
                      "becomes with X-HTTP-Method-Override: PUT", description=MULTIPART_NOTE,
              responses={201: Reply("The slide", SLIDE),
                         404: Reply("No upload with this upload_id for the caller (or it "
                                    "expired)"),
                         409: Reply("The slide_id is taken in the organization, or the "
                                    "upload is not complete")}),
        Route("GET", "/api/slides", list_slides, tags=tags, auth=READERS, query=SLIDE_SEARCH,
              summary="Slides, newest first",
              responses={200: Reply("A page of slides", page_schema(SLIDE))}),
        Route("GET", "/api/slides/{id:uuid}", get_slide, tags=tags, auth=READERS,
              summary="Read a slide", responses={200: Reply("The slide", SLIDE)}),
        Route("DELETE", "/api/slides/{id:uuid}", delete_slide, tags=tags,
              auth=(Permission.MANAGE_ORGANIZATION,), summary="Soft-delete a slide",
              responses={204: Reply("Deleted")}),
        Route("GET", "/api/slides/{id:uuid}/tiles/{level:int}/{col:int}/{row:int}", tile,
              tags=tags, auth=READERS, query=TILE_QUERY, coalesce_audit=True,
              summary="A tile: level 0 is full resolution; edge tiles are cropped",
              responses=image_replies),
        Route("GET", "/api/slides/{id:uuid}/dzi", dzi, tags=tags, auth=READERS,
              coalesce_audit=True, summary="The Deep Zoom descriptor (OpenSeadragon)",
              responses={200: Reply("DZI XML", {"type": "string"},
                                    media_type="application/xml")}),
        Route("GET", "/api/slides/{id:uuid}/dzi.dzi", dzi, tags=tags, auth=READERS,
              coalesce_audit=True, operation_id="get_api_slides_id_dzi_dzi",
              summary="The Deep Zoom descriptor, named as OpenSeadragon derives tile URLs",
              responses={200: Reply("DZI XML", {"type": "string"},
                                    media_type="application/xml")}),
        Route("GET", "/api/slides/{id:uuid}/dzi_files/{level:int}/{name}", dzi_file,
              tags=tags, auth=READERS, coalesce_audit=True,
              summary="A Deep Zoom tile, {col}_{row}.jpeg or .png (the top level is full "
                      "resolution)", responses=image_replies),
        Route("GET", "/api/slides/{id:uuid}/thumbnail", thumbnail, tags=tags, auth=READERS,
              query=THUMBNAIL_QUERY, coalesce_audit=True,
              summary="The whole slide, at most max_size pixels on its longer side",
              responses=image_replies),
        Route("GET", "/api/slides/{id:uuid}/region", region, tags=tags, auth=READERS,
              query=REGION_QUERY,
              summary="A rectangle of a level's pixels (for ML pipelines; size capped)",
              responses=image_replies),
        Route("GET", "/api/slides/{id:uuid}/associated/{name}", associated, tags=tags,
              auth=(Permission.READ_PHI,),
              summary="An associated image (label, macro, thumbnail): PHI readers only",
              responses=image_replies),
    ]
