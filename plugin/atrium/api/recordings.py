"""``/api/recordings``: signal recordings (ECG, EEG) — upload, list, read,
soft-delete, their samples over any time window, and their events.

A recording comes from WFDB or EDF/EDF+/BDF files in one ``multipart/form-data``
request (``PUT``, see :data:`atrium.api.slides.MULTIPART_NOTE`) or from a JSON
body of integer samples. The files are read (:func:`atrium.signals.read_signal_files`)
and the samples encoded before any row exists, and the rows are written in one
transaction (:func:`atrium.signals.store.write_recording`): a bad upload leaves
nothing behind.

Scope and the PHI rule as for slides: the caller's organization; without
``READ_PHI`` only recordings of de-identified patients (or of no patient).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
import uuid as uuid_module
import zipfile
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from psycopg import sql

from atrium.api.http import JSON, AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.multipart import FormPart, parse_form_data
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.params import parse_json_part
from atrium.api.schema import (
    array,
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
from atrium.api.slides import MULTIPART_NOTE, checked_file_name
from atrium.auth.principal import Permission
from atrium.cluster.bus import publish
from atrium.errors import BadRequest, FieldError, NotFound, ServiceUnavailable
from atrium.signals import read_signal_files
from atrium.signals.answers import (
    ARROW_STREAM,
    BINARY,
    MAX_ANSWER_SAMPLES,
    MAX_EXPORT_SAMPLES,
    MAX_JSON_ANSWER_SAMPLES,
    MAX_WINDOW_SAMPLES,
    SignalAnswer,
    channel_answer,
    check_export_size,
    check_window_size,
    encode_arrow,
    encode_binary,
    window_samples,
)
from atrium.signals.edf import write_edf
from atrium.signals.model import Channel, EdfRange, Event, Recording
from atrium.signals.store import Layout, read_events, read_window, write_recording
from atrium.signals.wfdb import write_wfdb
from atrium.storage import StorageError

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["RECORDING", "routes"]

log = logging.getLogger(__name__)

READERS = (Permission.READ_PHI, Permission.READ_DEIDENTIFIED)
MAX_JSON_SAMPLES: Final = 5_000_000
"""Samples (all channels together) one JSON body may carry; more go as files."""
MAX_POINTS: Final = 1_000_000
FORMATS: Final = {"json": JSON, "binary": BINARY, "arrow": ARROW_STREAM}
"""``format`` of a ``signal`` answer → its media type."""

_INT32 = integer(minimum=-(2**31), maximum=2**31 - 1)
_TYPE = string(min_length=1, max_length=50, pattern=r"^\S(.*\S)?$",
               description="ECG, EEG, ...")
_FIELDS = {
    "recording_type": _TYPE,
    "patient_id": nullable(uuid(description="A patient of the caller's organization")),
    "recording_date": nullable(date_time(description="The instant of the first sample; "
                                                     "else the file's start, else now")),
    "metadata": obj({}, additional=True, max_properties=200,
                    description="Descriptive data of the caller's; Atrium adds 'channels', "
                                "'events', 'storage', 'frame_rate', 'frames', 'name', "
                                "'file_start'"),
}
NEW_CHANNEL = obj({
    "name": string(min_length=1, max_length=100),
    "units": string(max_length=50, default=""),
    "gain": number(description="ADC units per physical unit (not 0)", default=1),
    "baseline": number(description="The digital value of physical zero", default=0),
    "adc_resolution": integer(minimum=0, maximum=32, default=0),
    "samples": array(_INT32, min_items=1, description="Digital samples (integers)"),
}, required=["name", "samples"])
NEW_RECORDING = obj({
    **_FIELDS,
    "sampling_rate": number(minimum=0.001, maximum=1_000_000,
                            description="Samples per second of every channel"),
    "channels": array(NEW_CHANNEL, min_items=1, max_items=1024),
    "upload_ids": array(uuid(), min_items=1, max_items=64, unique_items=True,
                        description="Complete resumable uploads of /api/uploads, one per "
                                    "file (named by the upload's filename); instead of "
                                    "sampling_rate and channels"),
}, required=["recording_type"],
    one_of=[{"required": ["sampling_rate", "channels"]}, {"required": ["upload_ids"]}])
NEW_RECORDING_FIELDS = obj(_FIELDS, required=["recording_type"])
RECORDING = obj({
    "id": uuid(), "recording_type": string(), "patient_id": nullable(uuid()),
    "organization_id": uuid(), "recording_date": date_time(),
    "duration_seconds": nullable(number()), "sampling_rate": nullable(integer()),
    "number_of_channels": nullable(integer()), "storage_path": nullable(string()),
    "metadata": obj({}, additional=True), "created_at": date_time(),
    "updated_at": date_time(),
}, required=["id", "recording_type", "organization_id", "recording_date", "metadata",
             "created_at", "updated_at"])
RECORDING_SEARCH = obj({
    **PAGE_PARAMETERS,
    "patient_id": uuid(),
    "recording_type": string(min_length=1, max_length=50),
    "recording_date_from": date_time(description="Recorded at or after"),
    "recording_date_to": date_time(description="Recorded before"),
    "sampling_rate": integer(minimum=1, maximum=10_000_000),
    "sop_instance_uid": string(min_length=1, max_length=64),
})
SIGNAL_QUERY = obj({
    "start": number(minimum=0, maximum=1e9, default=0,
                    description="Seconds from the first sample"),
    "end": number(minimum=0, maximum=1e9, description="Seconds; default the end"),
    "channels": string(min_length=1, max_length=4000,
                       description="Comma-separated channel indices or names"),
    "units": enum("physical", "digital", default="physical"),
    "format": enum(*FORMATS, description="Default: by Accept (application/vnd.apache."
                                          "arrow.stream, application/octet-stream), else json"),
    "max_points": integer(minimum=2, maximum=MAX_POINTS,
                          description="Per channel: min/max of buckets for display"),
})
SIGNAL = obj({
    "sampling_rate": number(), "start": number(), "end": number(),
    "channels": array(obj({
        "index": integer(), "name": string(), "units": string(),
        "sampling_rate": number(), "first_sample": integer(),
        "positions": array(integer(), description="With max_points: the samples' "
                                                  "positions after first_sample"),
        "samples": array(number()),
    }, required=["index", "name", "units", "samples"])),
}, required=["sampling_rate", "start", "end", "channels"])
SIGNAL_DESCRIPTION: Final = (
    "Answers by format (or Accept): json (application/json, the schema below); binary "
    "(application/octet-stream: the little-endian layout of docs/SIGNALS.md, 'Binary "
    "answers'); arrow (application/vnd.apache.arrow.stream: an Arrow IPC stream, one "
    "column per channel named after it, int32 digital or float64 physical; shorter "
    "columns padded with nulls, field metadata 'length'; docs/SIGNALS.md, 'Arrow "
    f"answers'). One request decodes at most {MAX_WINDOW_SAMPLES:,} samples and answers "
    f"at most {MAX_JSON_ANSWER_SAMPLES:,} (json) or {MAX_ANSWER_SAMPLES:,} (binary, arrow) "
    "over all channels: beyond, a 400 asks for max_points, a shorter window or fewer "
    "channels.")
EVENTS_QUERY = obj({
    "start": number(minimum=0, maximum=1e9), "end": number(minimum=0, maximum=1e9),
    "label": string(min_length=1, max_length=200),
})
EXPORT_QUERY = obj({"format": enum("edf", "wfdb", default="edf")})
EVENT = obj({"time": number(), "sample": integer(), "label": string(),
             "channel": integer(), "text": string()}, required=["time", "sample", "label"],
            additional=True)

ORDER = Keyset("recordings", ("r.created_at", "r.id"))
_COLUMNS = ("id", "recording_type", "patient_id", "organization_id", "recording_date",
            "duration_seconds", "sampling_rate", "number_of_channels", "storage_path",
            "metadata", "created_at", "updated_at")
_PHI = sql.SQL("(r.patient_id IS NOT NULL AND NOT coalesce(p.is_deidentified, false))")
_SELECT = sql.SQL("SELECT {}, {} FROM recordings r LEFT JOIN patients p ON p.id = r.patient_id"
                  ).format(sql.SQL(", ").join(sql.Identifier("r", c) for c in _COLUMNS), _PHI)
_FILTERS = {
    "patient_id": "r.patient_id = %s", "recording_type": "r.recording_type = %s",
    "recording_date_from": "r.recording_date >= %s",
    "recording_date_to": "r.recording_date < %s",
    "sampling_rate": "r.sampling_rate = %s",
    "sop_instance_uid": "r.metadata ->> 'sop_instance_uid' = %s",
}
_FIELDS_VALIDATOR = compile_schema(NEW_RECORDING_FIELDS, what="recording fields")


def _recording(row: tuple[Any, ...]) -> tuple[dict[str, Any], bool]:
    return dict(zip(_COLUMNS, row[:-1], strict=True)), bool(row[-1])


def _moment(text: str | None) -> dt.datetime | None:
    """``recording_date`` as given, refused (400) outside the years 1900 to 8999."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text.upper())
    except ValueError:
        moment = None
    if moment is None or not 1900 <= moment.year < 9000:
        raise BadRequest.invalid([FieldError("body", "recording_date",
                                             "must be a date-time between the years 1900 "
                                             "and 8999, e.g. 2024-05-01T08:30:00Z")])
    return moment


def recording_from_json(body: dict[str, Any]) -> Recording:
    """The :class:`Recording` of a JSON body of samples (already schema-checked).

    Raises
    ------
    BadRequest
        Too many samples, channels of different lengths, a gain of 0.
    """
    total = sum(len(c["samples"]) for c in body["channels"])
    if total > MAX_JSON_SAMPLES:
        raise BadRequest(f"{total} samples is more than {MAX_JSON_SAMPLES} in one JSON body; "
                         "upload the recording as WFDB or EDF files")
    rate = float(body["sampling_rate"])
    lengths = {len(c["samples"]) for c in body["channels"]}
    if len(lengths) != 1:
        raise BadRequest.invalid([FieldError("body", "channels",
                                             "every channel needs the same number of samples")])
    try:
        channels = tuple(Channel(
            name=c["name"], units=c.get("units", ""), gain=float(c.get("gain", 1)),
            baseline=float(c.get("baseline", 0)), adc_resolution=int(c.get("adc_resolution", 0)),
            samples_per_frame=1, sampling_rate=rate,
            samples=np.asarray(c["samples"], dtype=np.int32)) for c in body["channels"])
        return Recording(name="json", sampling_rate=rate, frames=lengths.pop(),
                         channels=channels)
    except ValueError as error:
        raise BadRequest(f"The samples do not make a recording: {error}") from None


def _form(parts: list[FormPart]) -> tuple[dict[str, Any], dict[str, bytes]]:
    files: dict[str, bytes] = {}
    fields: dict[str, Any] = {}
    for part in parts:
        if part.name == "file":
            name = checked_file_name(part.filename)
            if name in files:
                raise BadRequest.invalid([FieldError("body", "file",
                                                     f"{name!r} is given twice")])
            files[name] = bytes(part.data)
            continue
        if part.name in fields:
            raise BadRequest.invalid([FieldError("body", part.name, "is given twice")])
        text = part.text()
        if part.name == "metadata":
            fields["metadata"] = parse_json_part(text, "metadata")
        else:
            fields[part.name] = text
    if not files:
        raise BadRequest.invalid([FieldError("body", "file", "needs at least one file part "
                                             "named 'file' (with a filename)")])
    errors = field_errors(_FIELDS_VALIDATOR, fields, "body")
    if errors:
        raise BadRequest.invalid(errors)
    return fields, files


def _selected(wanted: str | None, channels: list[dict[str, Any]]) -> list[int]:
    """Channel indices of a ``channels`` parameter: indices or names, comma-separated."""
    if wanted is None:
        return list(range(len(channels)))
    by_name = {c["name"]: i for i, c in reversed(list(enumerate(channels)))}
    chosen = []
    for item in (part.strip() for part in wanted.split(",")):
        if item.isascii() and item.isdigit() and int(item) < len(channels):
            chosen.append(int(item))
        elif item in by_name:
            chosen.append(by_name[item])
        else:
            raise BadRequest.invalid([FieldError(
                "query", "channels", f"{item[:100]!r} is neither a channel index (0 to "
                f"{len(channels) - 1}) nor a channel name of the recording")])
    return list(dict.fromkeys(chosen))


def _format_of(accept: str) -> str:
    """``format`` by the ``Accept`` header: Arrow or binary when named, else JSON."""
    types = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if ARROW_STREAM in types:
        return "arrow"
    return "binary" if BINARY in types else "json"


def layout_of(found: dict[str, Any]) -> Layout:
    """The store's :data:`Layout` from a recording the route has read already."""
    meta = found["metadata"]
    return found["recording_date"], meta["storage"], meta["channels"]


def stored_recording(conn: Any, found: dict[str, Any]) -> Recording:
    """The whole recording back from the store (digital samples, channels, events)."""
    meta = found["metadata"]
    samples = read_window(conn, found["id"], layout=layout_of(found))
    channels = []
    for index, c in enumerate(meta["channels"]):
        edf_range = c.get("edf_range")
        channels.append(Channel(
            name=c["name"], units=c["units"], gain=float(c["gain"]),
            baseline=float(c["baseline"]), adc_resolution=int(c["adc_resolution"]),
            samples_per_frame=int(c["samples_per_frame"]),
            sampling_rate=float(c["sampling_rate"]), samples=samples[index],
            initial_value=c.get("initial_value"), transducer=c.get("transducer", ""),
            prefilter=c.get("prefilter", ""),
            edf_range=None if edf_range is None else EdfRange(**edf_range)))
    events = tuple(Event(time=e["time"], sample=e["sample"], label=e["label"],
                         channel=e.get("channel"), text=e.get("text"),
                         duration=e.get("duration"), subtype=e.get("subtype", 0),
                         number=e.get("number", 0))
                   for e in read_events(conn, found["id"], layout=layout_of(found)))
    start = found["recording_date"].astimezone(dt.UTC).replace(tzinfo=None)
    return Recording(name=meta.get("name") or "recording",
                     sampling_rate=float(meta["frame_rate"]), frames=int(meta["frames"]),
                     channels=tuple(channels), start=start, events=events)


def routes(app: Atrium) -> list[Route]:
    max_request = app.settings.upload_max_request_bytes

    def find(conn: Any, request: Request, recording_id: Any) -> tuple[dict[str, Any], bool]:
        where = owned_scope(request.caller, "r").add("r.id = %s", recording_id)
        row = conn.execute(sql.SQL("{} WHERE {}").format(_SELECT, where.sql()),
                           where.params).fetchone()
        if row is None:
            raise NotFound(f"No recording {recording_id}")
        return _recording(row)

    # The lookups of the signal and events routes: a viewer scrolling asks for a
    # window (and its events) every few hundred milliseconds, and finding a recording
    # probes every partition of ``recordings`` (2-3 ms of planning and execution).
    recently_visible: RecentlyVisible[tuple[dict[str, Any], bool]] = RecentlyVisible()
    if app.bus is not None:  # a deletion through any node ends the windows here at once
        app.bus.subscribe("recording", recently_visible.clear, resync=recently_visible.clear)

    def find_recently(conn: Any, request: Request) -> tuple[dict[str, Any], bool]:
        key = visible_key(request.caller, request.params["id"])
        known = recently_visible.get(key)
        if known is None:
            known = find(conn, request, request.params["id"])
            recently_visible.put(key, known)
        return known

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

    def create_recording(request: Request) -> Response:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type == JSON and "upload_ids" in request.json:
            return from_uploads(request, dict(request.json))
        if media_type == JSON:
            fields = dict(request.json)
            recording = recording_from_json(fields)
        else:
            fields, files = _form(parse_form_data(request.body, request.headers["content-type"]))
            recording = read_signal_files(files)
        return store(request, fields, recording)

    def from_uploads(request: Request, fields: dict[str, Any]) -> Response:
        """Claims every upload, reads its bytes, stores the recording; a failure
        anywhere leaves every upload complete and claimable again."""
        with app.pool.connection() as conn:
            check_patient(conn, request, fields.get("patient_id"))
        prefix = f"recordings/{request.caller.organization_id}/{uuid_module.uuid4()}"
        names: list[str] = []
        try:
            with ExitStack() as claims:
                files: dict[str, bytes] = {}
                for upload_id in fields["upload_ids"]:
                    name = f"{prefix}/{len(names)}"
                    names.append(name)
                    claimed = claims.enter_context(
                        app.uploads.claim(upload_id, request.caller.user_id, name))
                    file_name = checked_file_name(claimed.filename)
                    if file_name in files:
                        raise BadRequest.invalid([FieldError(
                            "body", "upload_ids", f"two uploads are named {file_name!r}")])
                    with app.store.get(name) as stream:
                        files[file_name] = stream.read()
                recording = read_signal_files(files)
                files.clear()  # the samples are copied out: let the file bytes go
                answer = store(request, fields, recording)
        except StorageError as error:
            log.error("recordings.storage_failed error=%s", error)
            raise ServiceUnavailable("Object storage could not assemble the uploads; nothing "
                                     "was kept. Try again shortly.") from None
        # The samples are in the database now; the assembled files are not kept.
        for name in names:
            app.store.delete(name)
        return answer

    def store(request: Request, fields: dict[str, Any], recording: Recording) -> Response:
        patient_id = fields.get("patient_id")
        with app.pool.connection() as conn:
            check_patient(conn, request, patient_id)
            new_id = write_recording(
                conn, recording, organization_id=request.caller.organization_id,
                patient_id=patient_id, recording_type=fields["recording_type"],
                recording_date=_moment(fields.get("recording_date")),
                metadata=fields.get("metadata"))
            created, phi = find(conn, request, new_id)
        return json_response(created, status=201,
                             headers={"Location": f"/api/recordings/{new_id}"},
                             audit=AuditNote("recording", new_id, phi=phi))

    def list_recordings(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where = owned_scope(request.caller, "r").add(after, *values)
        for name, condition in _FILTERS.items():
            if name in args:
                where.add(condition, args[name])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), ORDER.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [*where.params, wanted.fetch], prepare=False).fetchall()
        found = [_recording(r) for r in rows]
        answer = ORDER.page([r for r, _ in found], wanted.limit,
                            key=lambda r: (r["created_at"], r["id"]))
        return json_response(answer, audit=AuditNote("recording",
                                                     phi=any(phi for _, phi in found)))

    def get_recording(request: Request) -> Response:
        with app.pool.connection() as conn:
            found, phi = find(conn, request, request.params["id"])
        return json_response(found, audit=AuditNote("recording", found["id"], phi=phi))

    def delete_recording(request: Request) -> Response:
        with app.pool.connection() as conn, conn.transaction():
            found, phi = find(conn, request, request.params["id"])
            conn.execute("UPDATE recordings SET deleted_at = now(), updated_at = now() "
                         "WHERE id = %s", (found["id"],))
            publish(conn, "recording", str(found["id"]))
        recently_visible.clear()
        return Response(204, b"", JSON, {}, AuditNote("recording", found["id"], phi=phi))

    def signal(request: Request) -> Response:
        args = request.args
        start, end = float(args["start"]), args.get("end")
        if end is not None and end < start:
            raise BadRequest.invalid([FieldError("query", "end",
                                                 f"({end}) is before start ({start})")])
        end = None if end is None else float(end)
        wanted_format = args.get("format") or _format_of(request.headers.get("accept", ""))
        digital, max_points = args["units"] == "digital", args.get("max_points")
        with app.pool.connection() as conn:
            found, phi = find_recently(conn, request)
            meta = found["metadata"]["channels"]
            frames = int(found["metadata"]["frames"])
            chosen = _selected(args.get("channels"), meta)
            counts = [window_samples(start, end, float(meta[c]["sampling_rate"]),
                                     frames * int(meta[c]["samples_per_frame"]))
                      for c in chosen]
            check_window_size(sum(counts), sum(n if max_points is None else min(n, max_points)
                                               for n in counts), wanted_format)
            samples = read_window(conn, found["id"], start=start, end=end, channels=chosen,
                                  decoded=app.signal_segments, layout=layout_of(found))
        duration = float(found["duration_seconds"])
        answer = SignalAnswer(
            sampling_rate=float(found["metadata"].get("frame_rate", found["sampling_rate"])),
            start=start, end=duration if end is None else min(end, duration), digital=digital,
            channels=tuple(channel_answer(c, meta[c], samples[c], start=start, frames=frames,
                                          digital=digital, max_points=max_points)
                           for c in chosen))
        audit = AuditNote("recording", found["id"], phi=phi)
        if wanted_format == "binary":
            return Response(200, encode_binary(answer), BINARY, {}, audit)
        if wanted_format == "arrow":
            return Response(200, encode_arrow(answer), ARROW_STREAM, {}, audit)
        return json_response(answer.to_json(), audit=audit)

    def events(request: Request) -> Response:
        args = request.args
        with app.pool.connection() as conn:
            found, phi = find_recently(conn, request)
            items = read_events(conn, found["id"], layout=layout_of(found),
                                start=args.get("start"),
                                end=args.get("end"), label=args.get("label"))
        return json_response({"items": items},
                             audit=AuditNote("recording", found["id"], phi=phi))

    def export(request: Request) -> Response:
        with app.pool.connection() as conn:
            found, phi = find(conn, request, request.params["id"])
            check_export_size(int(found["metadata"]["frames"]) * sum(
                int(c["samples_per_frame"]) for c in found["metadata"]["channels"]))
            recording = stored_recording(conn, found)
        if request.args["format"] == "edf":
            body, file_name = write_edf(recording), f"{found['id']}.edf"
        else:
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
                for name, data in write_wfdb(recording).items():
                    archive.writestr(name, data)
            body, file_name = out.getvalue(), f"{found['id']}-wfdb.zip"
        return Response(200, body, BINARY,
                        {"Content-Disposition": f'attachment; filename="{file_name}"'},
                        AuditNote("recording", found["id"], phi=phi))

    tags = ("recordings",)
    too_large = (f"Send files over {max_request // (1024 * 1024)} MiB in parts: split a long "
                 "recording, or upload it as WFDB with its .dat files.")
    created = {201: Reply("The recording, with metadata.channels", RECORDING),
               404: Reply("No upload with an upload_id for the caller (or it expired)"),
               409: Reply("An upload is not complete, consumed, or busy")}
    return [
        # multipart/form-data is documented on PUT only: a POST of it never reaches
        # Atrium (MULTIPART_NOTE), though clients send it as a POST with the override.
        Route("POST", "/api/recordings", create_recording, tags=tags,
              auth=(Permission.UPLOAD,), media_types=(JSON,), body=NEW_RECORDING,
              max_body_bytes=max_request, too_large_hint=too_large,
              summary="Add a recording from a JSON body of integer samples, or files as "
                      "multipart/form-data (see the description)",
              description=MULTIPART_NOTE.replace("case.svs -F slide_id=S1",
                                                 "100.hea -F file=@100.dat "
                                                 "-F recording_type=ECG"),
              responses=created),
        Route("PUT", "/api/recordings", create_recording, tags=tags,
              auth=(Permission.UPLOAD,), media_types=(JSON, "multipart/form-data"),
              body=NEW_RECORDING, max_body_bytes=max_request, too_large_hint=too_large,
              operation_id="put_api_recordings_multipart",
              summary="The same as POST /api/recordings; what a multipart/form-data POST "
                      "becomes with X-HTTP-Method-Override: PUT. Form: one 'file' part per "
                      "file (.hea, .dat, .atr, .edf, ...), 'recording_type', 'patient_id', "
                      "'recording_date', 'metadata' (JSON text)",
              description=MULTIPART_NOTE, responses=created),
        Route("GET", "/api/recordings", list_recordings, tags=tags, auth=READERS,
              query=RECORDING_SEARCH, summary="Recordings, newest first",
              responses={200: Reply("A page of recordings", page_schema(RECORDING))}),
        Route("GET", "/api/recordings/{id:uuid}", get_recording, tags=tags, auth=READERS,
              summary="Read a recording", responses={200: Reply("The recording", RECORDING)}),
        Route("DELETE", "/api/recordings/{id:uuid}", delete_recording, tags=tags,
              auth=(Permission.MANAGE_ORGANIZATION,), summary="Soft-delete a recording",
              responses={204: Reply("Deleted")}),
        Route("GET", "/api/recordings/{id:uuid}/signal", signal, tags=tags, auth=READERS,
              query=SIGNAL_QUERY, coalesce_audit=True,
              summary="Samples of a time window: samples i with start <= i / rate < end",
              description=SIGNAL_DESCRIPTION,
              responses={200: Reply("The samples: JSON, or binary or Arrow (layouts in the "
                                    "description)", SIGNAL,
                                    alternatives={BINARY: {"type": "string", "format": "binary"},
                                                  ARROW_STREAM: {"type": "string",
                                                                 "format": "binary"}})}),
        Route("GET", "/api/recordings/{id:uuid}/events", events, tags=tags, auth=READERS,
              query=EVENTS_QUERY, summary="The recording's annotations as timed events",
              responses={200: Reply("Events in time order",
                                    obj({"items": array(EVENT)}, required=["items"]))}),
        Route("GET", "/api/recordings/{id:uuid}/export", export, tags=tags, auth=READERS,
              query=EXPORT_QUERY,
              summary="The recording as a file: EDF+ (BDF+ for wider samples), or a zip of "
                      "the WFDB record (.hea, .dat, .atr), with the stored digital samples",
              description=f"Built in memory: a recording of more than {MAX_EXPORT_SAMPLES:,} "
                          "samples (all channels) is refused with 400; read it in windows "
                          "of /signal instead.",
              responses={200: Reply("The file (Content-Disposition names it)",
                                    {"type": "string", "format": "binary"},
                                    media_type=BINARY)}),
    ]
