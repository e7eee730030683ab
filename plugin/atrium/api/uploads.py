"""``/api/uploads``: resumable uploads of files too large for one request.

Orthanc hands a plugin the whole body of a request in memory, so one request is
limited (``ATRIUM_UPLOAD_MAX_REQUEST_BYTES``). A larger file is declared with
``POST /api/uploads``, sent as chunks with ``PUT /api/uploads/{id}`` and
``Content-Range`` — in any order, again after a failure — then handed by id to the
route that consumes it (``POST /api/slides`` with ``upload_id``). The protocol
lives in :mod:`atrium.uploads`; docs/API.md, "Uploads", shows it with curl.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from atrium.api.http import AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.schema import array, boolean, date_time, enum, integer, obj, string, uuid
from atrium.auth.principal import Permission
from atrium.errors import BadRequest, FieldError
from atrium.storage import OCTET_STREAM
from atrium.uploads.ranges import RangeError, inclusive, parse_content_range
from atrium.uploads.store import Upload

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["UPLOAD", "resumable_hint", "routes"]

_MiB = 1024 * 1024
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9_!#$&^.+-]*"  # a media type's type or subtype (RFC 6838)

NEW_UPLOAD = obj({
    "filename": string(min_length=1, max_length=255, pattern=r"^[^/\\\x00-\x1f\x7f]+$",
                       description="The file's name, without any directory"),
    "size": integer(minimum=1, description="The whole file's size in bytes"),
    "media_type": string(max_length=255,
                         pattern=rf"^{_RESTRICTED_NAME}/{_RESTRICTED_NAME}$",
                         description="The file's media type; application/octet-stream when "
                                     "absent"),
}, required=["filename", "size"])

BYTE_RANGES = array(
    array(integer(minimum=0), min_items=2, max_items=2),
    description="The byte ranges not received yet, in increasing order, each as "
                "[first, last]: zero-based offsets of its first and last byte, both "
                "inclusive, as in Content-Range (a 10 MiB file of which only the first "
                "MiB has come: [[1048576, 10485759]]). Empty when the upload is complete.")

UPLOAD = obj({
    "id": uuid(),
    "filename": string(),
    "media_type": string(),
    "size": integer(minimum=1, description="The whole file's size in bytes"),
    "received": integer(minimum=0, description="Distinct bytes received so far"),
    "missing": BYTE_RANGES,
    "complete": boolean(description="Every byte has been received: the upload may be "
                                    "handed to a consumer"),
    "status": enum("receiving", "complete", "consumed",
                   description="consumed: a consumer has stored the file; no chunk is "
                               "accepted any more"),
    "created_at": date_time(),
    "updated_at": date_time(),
    "expires_at": date_time(description="When the upload and its chunks are deleted unless "
                                        "consumed; each chunk moves it later"),
}, required=["id", "filename", "media_type", "size", "received", "missing", "complete",
             "status", "created_at", "updated_at", "expires_at"])

_PUT_DESCRIPTION = """Send bytes START to END (inclusive) of the file as the raw body, with
`Content-Type: application/octet-stream` and `Content-Range: bytes START-END/SIZE`, SIZE
being the size declared when the upload was created. Chunks may come in any order and
overlap; a chunk sent again replaces the earlier one of the same range. The answer's
`missing` says what is left to send. A missing or malformed Content-Range, a SIZE other
than the upload's, an empty body or a body whose length is not END - START + 1 is a 400
and stores nothing."""


def resumable_hint(max_request_bytes: int) -> str:
    """The sentence a file-upload route's 413 adds (``Route.too_large_hint``)."""
    return (f"Send files over {max_request_bytes // _MiB} MiB as a resumable upload: "
            "POST /api/uploads, then PUT the chunks to /api/uploads/{id} with Content-Range.")


def _answer(upload: Upload) -> dict[str, object]:
    return {"id": upload.id, "filename": upload.filename, "media_type": upload.media_type,
            "size": upload.size, "received": upload.received,
            "missing": inclusive(upload.missing), "complete": upload.complete,
            "status": upload.status, "created_at": upload.created_at,
            "updated_at": upload.updated_at, "expires_at": upload.expires_at}


def routes(app: Atrium) -> list[Route]:
    max_chunk = app.settings.upload_max_request_bytes

    def create(request: Request) -> Response:
        body = request.json
        upload = app.uploads.create(
            user_id=request.caller.user_id, organization_id=request.caller.organization_id,
            filename=body["filename"], size=body["size"],
            media_type=str(body.get("media_type") or OCTET_STREAM).lower())
        return json_response(_answer(upload), status=201,
                             headers={"Location": f"/api/uploads/{upload.id}"},
                             audit=AuditNote("upload", upload.id))

    def put_chunk(request: Request) -> Response:
        # Whose upload it is comes first: another user's is a 404 whatever was sent.
        app.uploads.get(request.params["id"], request.caller.user_id)
        try:
            chunk = parse_content_range(request.headers.get("content-range"))
        except RangeError as error:
            raise BadRequest.invalid([FieldError("header", "content-range",
                                                 error.reason)]) from None
        upload = app.uploads.put_chunk(request.params["id"], request.caller.user_id, chunk,
                                       request.body)
        return json_response(_answer(upload), audit=AuditNote("upload", upload.id))

    def read(request: Request) -> Response:
        upload = app.uploads.get(request.params["id"], request.caller.user_id)
        return json_response(_answer(upload), audit=AuditNote("upload", upload.id))

    tags, auth = ("uploads",), (Permission.UPLOAD,)
    return [
        Route("POST", "/api/uploads", create, tags=tags, auth=auth, body=NEW_UPLOAD,
              summary="Start a resumable upload of a file too large for one request",
              description=f"Declares the file; its bytes follow with PUT /api/uploads/{{id}}, "
                          f"in chunks of at most {max_chunk} bytes. The upload belongs to "
                          "the caller and expires unless a consumer (POST /api/slides with "
                          "upload_id) takes it.",
              responses={201: Reply("The upload, nothing received yet", UPLOAD)}),
        Route("PUT", "/api/uploads/{id:uuid}", put_chunk, tags=tags, auth=auth,
              media_types=(OCTET_STREAM,), max_body_bytes=max_chunk,
              too_large_hint=f"Send chunks of at most {max_chunk} bytes.",
              summary="Send one chunk of an upload (Content-Range: bytes START-END/SIZE)",
              description=_PUT_DESCRIPTION,
              responses={200: Reply("The upload after this chunk", UPLOAD),
                         409: Reply("The upload is consumed, being claimed, or has too "
                                    "many chunks")}),
        Route("GET", "/api/uploads/{id:uuid}", read, tags=tags, auth=auth,
              summary="Read one of the caller's uploads: what is received, what is missing",
              responses={200: Reply("The upload", UPLOAD)}),
    ]
