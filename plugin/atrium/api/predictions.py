"""``/api/predictions``: what a model said about a study, series, instance, slide or
recording (SPEC §6, §7) — written, read, queried by model, target and time, with
segmentation files kept beside the row.

A prediction belongs to its target's organization: the target is resolved as the
caller may see it (:func:`~atrium.api.targets.find_target`, the same 404 for a
missing, foreign or — without ``READ_PHI`` — identified target) and its
organization and patient are copied onto the row, so every read scopes with
:func:`~atrium.api.targets.row_scope` alone. The model must be ``active``: a
deprecated or archived model (:mod:`atrium.api.models`) takes no new predictions.

``results`` follows the data model's *Prediction Results* (``class``,
``probability``, ``scores``, ``segmentation``) plus ``extra``, a free object of at
most :data:`MAX_EXTRA_BYTES` for model-specific output. ``segmentation`` is
read-only: Atrium sets ``<kind>_url`` (an Atrium route, never a storage URL, so
every download passes the guard), ``<kind>_media_type`` and ``<kind>_bytes`` when
a file is uploaded with ``PUT /api/predictions/{id}/segmentation/<kind>``.

Orthanc hands a request body to the plugin whole and takes the answer whole, so a
file is held in memory once each way: :data:`MAX_SEGMENTATION_BYTES` bounds it.
"""

from __future__ import annotations

import json
import logging
import uuid as uuid_module
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import AuditNote, MiB, Reply, Request, Response, Route, json_response
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.patients import READERS
from atrium.api.schema import date_time, enum, integer, nullable, number, obj, string, uuid
from atrium.api.targets import TARGET_TYPES, find_target, phi_column, row_scope
from atrium.auth.principal import Permission
from atrium.errors import BadRequest, Conflict, FieldError, NotFound, ServiceUnavailable
from atrium.storage import ObjectNotFound, StorageError

if TYPE_CHECKING:
    from atrium.app import Atrium

log = logging.getLogger(__name__)

__all__ = ["MAX_EXTRA_BYTES", "MAX_SEGMENTATION_BYTES", "PREDICTION", "SEGMENTATION_KINDS",
           "SEGMENTATION_MEDIA_TYPES", "routes"]

MAX_EXTRA_BYTES = 64 * 1024
"""``results.extra`` as compact UTF-8 JSON."""
MAX_SEGMENTATION_BYTES = 64 * MiB
"""One mask or overlay; held in memory while it passes (Orthanc buffers bodies)."""

SEGMENTATION_KINDS = ("mask", "overlay")
# Media type → (check of the file's first bytes, what the file should be). NIfTI
# travels gzipped (.nii.gz) as application/gzip; anything else as octet-stream.
_SIGNATURES: dict[str, tuple[Callable[[bytes], bool], str]] = {
    "application/octet-stream": (lambda data: True, "any file"),
    "image/png": (lambda data: data.startswith(b"\x89PNG\r\n\x1a\n"), "a PNG image"),
    "application/dicom": (lambda data: data[128:132] == b"DICM",
                          "a DICOM Part 10 file (with its 'DICM' preamble), e.g. a SEG"),
    "application/gzip": (lambda data: data.startswith(b"\x1f\x8b"),
                         "a gzip file, e.g. NIfTI .nii.gz"),
}
SEGMENTATION_MEDIA_TYPES = tuple(_SIGNATURES)
_EXTENSIONS = {"image/png": ".png", "application/dicom": ".dcm", "application/gzip": ".gz"}

_TEXT = r"^\S(.*\S)?$"
_UNIT = number(minimum=0, maximum=1)
SEGMENTATION = obj({
    **{f"{kind}_url": string(description=f"GET it: /api/predictions/{{id}}/segmentation/{kind}")
       for kind in SEGMENTATION_KINDS},
    **{f"{kind}_media_type": enum(*SEGMENTATION_MEDIA_TYPES) for kind in SEGMENTATION_KINDS},
    **{f"{kind}_bytes": integer(minimum=0) for kind in SEGMENTATION_KINDS},
}, read_only=True, description="Set by Atrium when a file is uploaded with PUT "
                               "/api/predictions/{id}/segmentation/mask (or /overlay); "
                               "never sent in a body.")
RESULTS = obj({
    "class": string(min_length=1, max_length=255, description="The predicted class"),
    "probability": _UNIT,
    "scores": obj({}, additional_properties=_UNIT, max_properties=1000,
                  property_names=string(min_length=1, max_length=255),
                  description="Class name → score in [0, 1]"),
    "segmentation": SEGMENTATION,
    "extra": obj({}, additional=True, description="Model-specific output, at most 64 KiB "
                                                  "as JSON"),
}, description="The data model's Prediction Results")
_OPTIONAL = {
    "prediction_type": nullable(string(min_length=1, max_length=50, pattern=_TEXT)),
    "confidence": nullable(_UNIT),
    "inference_time_ms": nullable(integer(minimum=0, maximum=2**31 - 1)),
}
NEW_PREDICTION = obj({
    "model_id": uuid(), "target_type": enum(*TARGET_TYPES), "target_id": uuid(),
    "results": RESULTS, **_OPTIONAL,
}, required=["model_id", "target_type", "target_id", "results"])
PREDICTION = obj({
    "id": uuid(), "model_id": uuid(), "target_type": enum(*TARGET_TYPES), "target_id": uuid(),
    "user_id": nullable(uuid()), "results": RESULTS, **_OPTIONAL, "created_at": date_time(),
}, required=["id", "model_id", "target_type", "target_id", "user_id", "results",
             "prediction_type", "confidence", "inference_time_ms", "created_at"])
PREDICTION_SEARCH = obj({
    **PAGE_PARAMETERS,
    "model_id": uuid(),
    "target_type": enum(*TARGET_TYPES),
    "target_id": uuid(),
    "prediction_type": string(min_length=1, max_length=50),
    "min_confidence": number(minimum=0, maximum=1, description="Confidence at least this "
                             "(predictions without a confidence are left out)."),
    "max_confidence": number(minimum=0, maximum=1, description="Confidence at most this."),
    "created_after": date_time(description="Written at or after this time."),
    "created_before": date_time(description="Written before this time."),
})

ORDER = Keyset("predictions", ("pr.created_at", "pr.id"))

_COLUMNS = ("id", "model_id", "target_type", "target_id", "user_id", "prediction_type",
            "results", "confidence", "inference_time_ms", "created_at")
_SELECT = sql.SQL("SELECT {}, {} FROM predictions pr "
                  "LEFT JOIN patients p ON p.id = pr.patient_id").format(
    sql.SQL(", ").join(sql.Identifier("pr", c) for c in _COLUMNS), phi_column("pr", "p"))
_FILTERS = {
    "model_id": "pr.model_id = %s",
    "target_type": "pr.target_type = %s",
    "target_id": "pr.target_id = %s",
    "prediction_type": "pr.prediction_type = %s",
    "min_confidence": "pr.confidence >= %s",
    "max_confidence": "pr.confidence <= %s",
    "created_after": "pr.created_at >= %s",
    "created_before": "pr.created_at < %s",
}
_RANGES = (("min_confidence", "max_confidence"), ("created_after", "created_before"))
_MODEL_STATUS = "SELECT model_name, model_version, status FROM ml_models WHERE id = %s FOR SHARE"
_INSERT = """
INSERT INTO predictions (model_id, target_type, target_id, user_id, prediction_type, results,
                         confidence, inference_time_ms, organization_id, patient_id)
VALUES (%(model_id)s, %(target_type)s, %(target_id)s, %(user_id)s, %(prediction_type)s,
        %(results)s, %(confidence)s, %(inference_time_ms)s, %(organization_id)s, %(patient_id)s)
RETURNING id
"""
# Merged into results.segmentation in one statement: a mask and an overlay uploaded
# at the same time both land.
_SET_SEGMENTATION = """
UPDATE predictions SET results = jsonb_set(results, '{segmentation}',
    CASE WHEN jsonb_typeof(results -> 'segmentation') = 'object'
         THEN results -> 'segmentation' ELSE '{}'::jsonb END || %s)
WHERE id = %s
"""


def segmentation_path(prediction_id: Any, kind: str) -> str:
    """The Atrium route serving a prediction's file (what ``<kind>_url`` holds)."""
    return f"/api/predictions/{prediction_id}/segmentation/{kind}"


def _object_name(prediction_id: Any, kind: str) -> str:
    return f"predictions/{prediction_id}/{kind}"


def _invalid(location: Any, name: str, message: str) -> BadRequest:
    return BadRequest.invalid([FieldError(location, name, message)])


def _check_results(results: dict[str, Any]) -> None:
    """What the schema cannot say: ``segmentation`` is Atrium's, ``extra`` is bounded."""
    if "segmentation" in results:
        raise _invalid("body", "results.segmentation",
                       "is set by Atrium, not sent: write the prediction without it, then "
                       "upload each file with PUT /api/predictions/{id}/segmentation/mask "
                       "(or /overlay)")
    if "extra" in results:
        size = len(json.dumps(results["extra"], separators=(",", ":")).encode())
        if size > MAX_EXTRA_BYTES:
            raise _invalid("body", "results.extra", f"must be at most {MAX_EXTRA_BYTES} bytes "
                           f"as JSON (it is {size}); store large output as a segmentation "
                           "file or elsewhere")


def _check_ranges(args: Mapping[str, Any]) -> None:
    errors = [FieldError("query", low, f"must not be greater than {high}")
              for low, high in _RANGES if low in args and high in args and args[low] > args[high]]
    if errors:
        raise BadRequest.invalid(errors)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _check_file(request: Request) -> str:
    """The upload's media type, once its first bytes agree with it."""
    if not request.body:
        raise _invalid("body", "", "the body is empty; send the file")
    media_type = _media_type(request)
    matches, what = _SIGNATURES[media_type]
    if not matches(request.body):
        raise _invalid("body", "", f"the body is not {what} as its Content-Type {media_type} "
                       "says; send the right type, or application/octet-stream")
    return media_type


def routes(app: Atrium) -> list[Route]:
    def find(conn: Any, caller: Any, prediction_id: Any, lock: bool = False
             ) -> tuple[dict[str, Any], bool]:
        """The prediction as ``caller`` may see it and whether it is PHI; 404 otherwise."""
        where = row_scope(caller, "pr", "p").add("pr.id = %s", prediction_id)
        query = sql.SQL("{} WHERE {}{}").format(_SELECT, where.sql(),
                                                sql.SQL(" FOR UPDATE OF pr" if lock else ""))
        row = conn.execute(query, where.params).fetchone()
        if row is None:
            raise NotFound(f"No prediction {prediction_id}")
        return dict(zip(_COLUMNS, row[:-1], strict=True)), bool(row[-1])

    def answer(prediction: dict[str, Any], phi: bool, status: int = 200,
               headers: dict[str, str] | None = None) -> Response:
        return json_response(prediction, status=status, headers=headers,
                             audit=AuditNote("prediction", prediction["id"], phi=phi))

    def list_predictions(request: Request) -> Response:
        args = request.args
        _check_ranges(args)
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where = row_scope(request.caller, "pr", "p").add(after, *values)
        for name, condition in _FILTERS.items():
            if name in args:
                where.add(condition, args[name])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), ORDER.order_by())
        with app.pool.connection() as conn:
            # Planned for its values each time (as the study search): a generic plan
            # guesses how many rows a time or confidence range keeps.
            rows = conn.execute(query, [*where.params, wanted.fetch], prepare=False).fetchall()
        found = [(dict(zip(_COLUMNS, r[:-1], strict=True)), bool(r[-1])) for r in rows]
        shown = ORDER.page(found, wanted.limit, key=lambda f: (f[0]["created_at"], f[0]["id"]))
        return json_response(
            {"items": [item for item, _ in shown["items"]], "next_cursor": shown["next_cursor"]},
            audit=AuditNote("prediction", phi=any(phi for _, phi in shown["items"])))

    def write_prediction(request: Request) -> Response:
        body, caller = request.json, request.caller
        _check_results(body["results"])
        with app.pool.connection() as conn, conn.transaction():
            # FOR SHARE: the model cannot be retired between this check and the insert.
            model = conn.execute(_MODEL_STATUS, (body["model_id"],)).fetchone()
            if model is None:
                raise NotFound(f"No model {body['model_id']}")
            name, version, status = model
            if status != "active":
                raise Conflict(f"Model {name} version {version} is {status}; only active "
                               "models take new predictions. Use an active version.")
            target = find_target(conn, caller, body["target_type"],
                                 uuid_module.UUID(body["target_id"]))
            row = conn.execute(_INSERT, {
                "model_id": body["model_id"], "target_type": target.type,
                "target_id": target.id, "user_id": caller.user_id,
                "prediction_type": body.get("prediction_type"),
                "results": Jsonb(body["results"]), "confidence": body.get("confidence"),
                "inference_time_ms": body.get("inference_time_ms"),
                "organization_id": target.organization_id,
                "patient_id": target.patient_id}).fetchone()
            assert row is not None
            prediction, phi = find(conn, caller, row[0])
        log.info("prediction.written id=%s model=%s target_type=%s", prediction["id"],
                 prediction["model_id"], target.type)
        return answer(prediction, phi, 201, {"Location": f"/api/predictions/{prediction['id']}"})

    def get_prediction(request: Request) -> Response:
        with app.pool.connection() as conn:
            prediction, phi = find(conn, request.caller, request.params["id"])
        return answer(prediction, phi)

    def upload(kind: str) -> Callable[[Request], Response]:
        def put_segmentation(request: Request) -> Response:
            prediction_id = request.params["id"]
            # The row stays locked while the file is stored: two uploads of one
            # prediction's file cannot leave the object and its media type disagreeing.
            with app.pool.connection() as conn, conn.transaction():
                find(conn, request.caller, prediction_id, lock=True)
                media_type = _check_file(request)
                try:
                    size = app.store.put(_object_name(prediction_id, kind), request.body,
                                         content_type=media_type)
                except StorageError as exc:
                    log.error("prediction.file_unstored id=%s kind=%s error=%s",
                              prediction_id, kind, exc)
                    raise ServiceUnavailable("Object storage could not store the file; try "
                                             "again shortly.") from None
                conn.execute(_SET_SEGMENTATION, (Jsonb({
                    f"{kind}_url": segmentation_path(prediction_id, kind),
                    f"{kind}_media_type": media_type, f"{kind}_bytes": size}), prediction_id))
                prediction, phi = find(conn, request.caller, prediction_id)
            return answer(prediction, phi)

        return put_segmentation

    def download(kind: str) -> Callable[[Request], Response]:
        def get_segmentation(request: Request) -> Response:
            prediction_id = request.params["id"]
            with app.pool.connection() as conn:
                prediction, phi = find(conn, request.caller, prediction_id)
            segmentation = prediction["results"].get("segmentation")
            media_type = segmentation.get(f"{kind}_media_type") \
                if isinstance(segmentation, dict) else None
            missing = NotFound(f"Prediction {prediction_id} has no {kind}; upload one with "
                               f"PUT {segmentation_path(prediction_id, kind)}")
            if media_type not in _SIGNATURES:
                raise missing
            try:
                with app.store.get(_object_name(prediction_id, kind)) as stream:
                    data = stream.read()
            except ObjectNotFound:
                raise missing from None
            except StorageError as exc:
                log.error("prediction.file_unread id=%s kind=%s error=%s",
                          prediction_id, kind, exc)
                raise ServiceUnavailable("Object storage could not read the file; try again "
                                         "shortly.") from None
            filename = f"prediction-{prediction_id}-{kind}{_EXTENSIONS.get(media_type, '')}"
            return Response(200, data, media_type, {
                "Content-Disposition": f'attachment; filename="{filename}"',
                "X-Content-Type-Options": "nosniff"},
                AuditNote("prediction", prediction["id"], phi=phi))

        return get_segmentation

    tags = ("predictions",)
    writers = (Permission.WRITE_PREDICTIONS,)
    files = [route for kind in SEGMENTATION_KINDS for route in (
        Route("PUT", segmentation_path("{id:uuid}", kind), upload(kind), tags=tags,
              auth=writers, media_types=SEGMENTATION_MEDIA_TYPES,
              max_body_bytes=MAX_SEGMENTATION_BYTES,
              summary=f"Upload the prediction's segmentation {kind} (replaces any before)",
              description="PNG, DICOM (e.g. SEG), gzip (NIfTI .nii.gz) or any file as "
                          "application/octet-stream; the first bytes must match the "
                          f"Content-Type. Sets results.segmentation.{kind}_url.",
              responses={200: Reply("The prediction", PREDICTION),
                         503: Reply("Object storage is unavailable")}),
        Route("GET", segmentation_path("{id:uuid}", kind), download(kind), tags=tags,
              auth=READERS, summary=f"Download the prediction's segmentation {kind}",
              responses={200: Reply(f"The {kind} as uploaded, with its Content-Type"),
                         503: Reply("Object storage is unavailable")}),
    )]
    return [
        Route("GET", "/api/predictions", list_predictions, tags=tags, auth=READERS,
              query=PREDICTION_SEARCH,
              summary="Query predictions by model, target, type, confidence and time",
              responses={200: Reply("A page of predictions, newest first",
                                    page_schema(PREDICTION))}),
        Route("POST", "/api/predictions", write_prediction, tags=tags, auth=writers,
              body=NEW_PREDICTION,
              summary="Write a prediction of an active model about a target of the "
                      "caller's organization",
              responses={201: Reply("The prediction", PREDICTION),
                         404: Reply("No such model, or no such target in the caller's "
                                    "organization (as the caller may see it)"),
                         409: Reply("The model is deprecated or archived")}),
        Route("GET", "/api/predictions/{id:uuid}", get_prediction, tags=tags, auth=READERS,
              summary="Read a prediction", responses={200: Reply("The prediction", PREDICTION)}),
        *files,
    ]
