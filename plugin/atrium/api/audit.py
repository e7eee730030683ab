"""``GET /api/audit`` and ``GET /api/audit/verify``: the audit log of the caller's
organization, and the proof that the whole chain is intact (auditor, admin)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg

from atrium.api.http import Reply, Request, Response, Route, json_response
from atrium.api.pagination import PAGE_PARAMETERS, page_schema
from atrium.api.schema import boolean, date_time, integer, nullable, obj, string, uuid
from atrium.auth.audit import query, verify_chain
from atrium.auth.principal import Permission

if TYPE_CHECKING:
    from atrium.app import Atrium

AUDIT_QUERY = obj({
    **PAGE_PARAMETERS,
    "user_id": uuid(), "action": string(max_length=100), "resource_type": string(max_length=100),
    "resource_id": uuid(), "phi_accessed": boolean(),
    "from": date_time(description="Rows at or after this time"),
    "to": date_time(description="Rows before this time"),
})
AUDIT_ROW = obj({
    "id": uuid(), "event_time": date_time(), "user_id": nullable(uuid()),
    "keycloak_id": nullable(string()), "organization_id": nullable(uuid()), "action": string(),
    "resource_type": nullable(string()), "resource_id": nullable(uuid()),
    "ip_address": nullable(string()), "user_agent": nullable(string()),
    "details": obj({}, additional=True), "phi_accessed": boolean(), "seq": integer(),
    "prev_hash": string(), "row_hash": string(),
}, additional=True)
BROKEN = nullable(obj({"id": nullable(string()), "event_time": nullable(string()),
                       "seq": nullable(integer()), "reason": string()}))
VERDICT = obj({"ok": boolean(), "rows_checked": integer(), "first_broken": BROKEN},
              required=["ok", "rows_checked", "first_broken"], additional=True)

_READERS = (Permission.READ_AUDIT,)


def routes(app: Atrium) -> list[Route]:
    def list_audit(request: Request) -> Response:
        args = request.args
        with app.pool.connection() as conn:
            page = query(conn, request.caller.organization_id, user_id=args.get("user_id"),
                         action=args.get("action"), resource_type=args.get("resource_type"),
                         resource_id=args.get("resource_id"),
                         phi_accessed=args.get("phi_accessed"), time_from=args.get("from"),
                         time_to=args.get("to"), limit=args["limit"],
                         cursor=args.get("cursor"))
        return json_response(page)

    def verify(_request: Request) -> Response:
        # A connection of its own: the check reads the whole chain in one snapshot.
        with psycopg.connect(app.settings.database_url, autocommit=True,
                             connect_timeout=10) as conn:
            result = verify_chain(conn)
        return json_response(result.as_json())

    tags = ("audit",)
    return [
        Route("GET", "/api/audit", list_audit, auth=_READERS, tags=tags, query=AUDIT_QUERY,
              summary="The organization's audit log, newest first",
              responses={200: Reply("A page of audit rows", page_schema(AUDIT_ROW))}),
        Route("GET", "/api/audit/verify", verify, auth=_READERS, tags=tags,
              summary="Check the audit log's hash chain; names the first broken row",
              responses={200: Reply("The verdict", VERDICT)}),
    ]
