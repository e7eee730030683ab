"""``/api/models``: the platform-wide registry of ML models (SPEC §6, §7).

The data model gives ``ml_models`` no organization: every organization sees every
model, and only callers who may register models (ml-engineer, admin) register
them or change their status. A model is unique by (name, version); its status
only moves forward — ``active`` → ``deprecated`` → ``archived``, or straight to
``archived`` — so that predictions never point at a model revived after its
retirement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import AUTHENTICATED, AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.schema import date_time, enum, nullable, obj, string, uuid
from atrium.auth.principal import Permission
from atrium.errors import Conflict, NotFound

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["MODEL", "routes"]

TYPES = ("classification", "segmentation", "detection", "regression", "generation")
STATUSES = ("active", "deprecated", "archived")
# Where each status may go next: never back.
NEXT_STATUS = {"active": {"deprecated", "archived"}, "deprecated": {"archived"},
               "archived": set()}

_TEXT = r"^\S(.*\S)?$"
_SCHEMA_JSON = nullable(obj({}, additional=True, max_properties=200,
                            description="A JSON Schema of the model's input or output"))
_FIELDS = {
    "framework": nullable(string(max_length=50)),
    "mlflow_run_id": nullable(string(max_length=255, pattern=r"^[A-Za-z0-9_\-]+$")),
    "storage_path": nullable(string(max_length=500)),
    "input_schema": _SCHEMA_JSON,
    "output_schema": _SCHEMA_JSON,
    "metrics": obj({}, additional_properties={"type": ["number", "string", "boolean", "null"]},
                   max_properties=200, description="Named evaluation figures"),
}
NEW_MODEL = obj({
    "model_name": string(min_length=1, max_length=255, pattern=_TEXT),
    "model_version": string(min_length=1, max_length=50, pattern=_TEXT),
    "model_type": enum(*TYPES),
    **_FIELDS,
}, required=["model_name", "model_version", "model_type"])
MODEL_CHANGES = obj({"status": enum(*STATUSES), **_FIELDS}, min_properties=1)
MODEL = obj({
    "id": uuid(), "model_name": string(), "model_version": string(),
    "model_type": enum(*TYPES), **_FIELDS, "status": enum(*STATUSES),
    "created_at": date_time(), "updated_at": date_time(),
}, required=["id", "model_name", "model_version", "model_type", "status", "metrics",
             "created_at", "updated_at"])
MODEL_SEARCH = obj({
    **PAGE_PARAMETERS,
    "model_name": string(min_length=1, max_length=255),
    "model_type": enum(*TYPES),
    "status": enum(*STATUSES),
    "framework": string(min_length=1, max_length=50),
    "mlflow_run_id": string(min_length=1, max_length=255),
})

ORDER = Keyset("models", ("m.created_at", "m.id"))

_COLUMNS = ("id", "model_name", "model_version", "model_type", "framework", "mlflow_run_id",
            "storage_path", "input_schema", "output_schema", "metrics", "status",
            "created_at", "updated_at")
_SELECT = sql.SQL("SELECT {} FROM ml_models m").format(
    sql.SQL(", ").join(sql.Identifier("m", c) for c in _COLUMNS))
_JSON_FIELDS = ("input_schema", "output_schema", "metrics")
_CHANGEABLE = ("framework", "mlflow_run_id", "storage_path", "input_schema", "output_schema",
               "metrics", "status")


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_COLUMNS, row, strict=True))


def _value(name: str, value: Any) -> Any:
    return Jsonb(value) if name in _JSON_FIELDS and value is not None else value


def routes(app: Atrium) -> list[Route]:
    def find(conn: Any, model_id: Any, lock: bool = False) -> dict[str, Any]:
        query = sql.SQL("{} WHERE m.id = %s{}").format(
            _SELECT, sql.SQL(" FOR UPDATE" if lock else ""))
        row = conn.execute(query, (model_id,)).fetchone()
        if row is None:
            raise NotFound(f"No model {model_id}")
        return _row(row)

    def list_models(request: Request) -> Response:
        args = request.args
        wanted = ORDER.request(args)
        after, values = ORDER.after(wanted)
        where: list[sql.Composable] = [after]
        params: list[Any] = list(values)
        for name in ("model_name", "model_type", "status", "framework", "mlflow_run_id"):
            if name in args:
                where.append(sql.SQL("{} = %s").format(sql.Identifier("m", name)))
                params.append(args[name])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, sql.SQL(" AND ").join(where), ORDER.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [*params, wanted.fetch]).fetchall()
        items = [_row(r) for r in rows]
        return json_response(ORDER.page(items, wanted.limit,
                                        key=lambda m: (m["created_at"], m["id"])),
                             audit=AuditNote("ml_model"))

    def register_model(request: Request) -> Response:
        body = request.json
        names = ["model_name", "model_version", "model_type",
                 *(n for n in _FIELDS if n in body)]
        values = [_value(n, body[n]) for n in names]
        if "metrics" not in body:
            names.append("metrics")
            values.append(Jsonb({}))
        statement = sql.SQL("INSERT INTO ml_models ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder() * len(names)))
        try:
            with app.pool.connection() as conn:
                row = conn.execute(statement, values).fetchone()
                assert row is not None
                model = find(conn, row[0])
        except psycopg.errors.UniqueViolation:
            raise Conflict(f"Model {body['model_name']} version {body['model_version']} is "
                           "registered already; register a new version.") from None
        return json_response(model, status=201, headers={"Location": f"/api/models/{model['id']}"},
                             audit=AuditNote("ml_model", model["id"]))

    def get_model(request: Request) -> Response:
        with app.pool.connection() as conn:
            model = find(conn, request.params["id"])
        return json_response(model, audit=AuditNote("ml_model", model["id"]))

    def change_model(request: Request) -> Response:
        changes = request.json
        with app.pool.connection() as conn, conn.transaction():
            current = find(conn, request.params["id"], lock=True)
            wanted = changes.get("status", current["status"])
            if wanted != current["status"] and wanted not in NEXT_STATUS[current["status"]]:
                raise Conflict(f"A model goes from {current['status']} only to "
                               f"{', '.join(sorted(NEXT_STATUS[current['status']])) or 'nowhere'}"
                               "; register a new version instead.")
            names = [n for n in _CHANGEABLE if n in changes]
            conn.execute(sql.SQL("UPDATE ml_models SET {} WHERE id = %s").format(
                sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(n))
                                   for n in names)),
                [*(_value(n, changes[n]) for n in names), current["id"]])
            model = find(conn, current["id"])
        return json_response(model, audit=AuditNote("ml_model", model["id"]))

    tags = ("models",)
    return [
        Route("GET", "/api/models", list_models, tags=tags, auth=AUTHENTICATED,
              query=MODEL_SEARCH, summary="The model registry (every organization's view)",
              responses={200: Reply("A page of models, newest first", page_schema(MODEL))}),
        Route("POST", "/api/models", register_model, tags=tags,
              auth=(Permission.REGISTER_MODELS,), body=NEW_MODEL,
              summary="Register a model version (unique by name and version)",
              responses={201: Reply("The model", MODEL),
                         409: Reply("This name and version exist")}),
        Route("GET", "/api/models/{id:uuid}", get_model, tags=tags, auth=AUTHENTICATED,
              summary="Read a model", responses={200: Reply("The model", MODEL)}),
        Route("PUT", "/api/models/{id:uuid}", change_model, tags=tags,
              auth=(Permission.REGISTER_MODELS,), body=MODEL_CHANGES,
              summary="Change a model's status (active → deprecated → archived) or details",
              responses={200: Reply("The model", MODEL),
                         409: Reply("A status change backwards")}),
    ]
