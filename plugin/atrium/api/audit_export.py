"""``GET /api/audit/export``: the caller's organization's audit log as FHIR R4
``AuditEvent`` resources (a Bundle) or RFC 5424 syslog lines (IHE ATNA), one page
at a time (auditor, admin: whoever may read the audit log)."""

from __future__ import annotations

import json
import socket
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from atrium.api.http import Reply, Request, Response, Route
from atrium.api.pagination import MAX_CURSOR_CHARS
from atrium.api.schema import array, date_time, enum, integer, obj, string
from atrium.auth.principal import Permission
from atrium.operations.audit_export import (
    EXPORT_FORMATS,
    MAX_EXPORT_LIMIT,
    export_page,
    fhir_audit_event,
    syslog_line,
)

if TYPE_CHECKING:
    from atrium.app import Atrium

EXPORT_QUERY = obj({
    "format": enum(*EXPORT_FORMATS, description="fhir: a FHIR R4 Bundle of AuditEvent; "
                   "syslog: RFC 5424 lines in the IHE ATNA shape"),
    "from": date_time(description="Rows at or after this time"),
    "to": date_time(description="Rows before this time"),
    "limit": integer(minimum=1, maximum=MAX_EXPORT_LIMIT, default=1000,
                     description="Rows per page"),
    "cursor": string(max_length=MAX_CURSOR_CHARS, pattern="^[A-Za-z0-9_-]+$",
                     description="From the previous page's next link; absent for the first"),
}, required=["format"])
FHIR_JSON = "application/fhir+json"
BUNDLE = obj({"resourceType": enum("Bundle"), "type": enum("searchset"),
              "link": array(obj({"relation": string(), "url": string()})),
              "entry": array(obj({}, additional=True))}, additional=True)
SOURCE = "Atrium"

_READERS = (Permission.READ_AUDIT,)


def routes(app: Atrium) -> list[Route]:
    hostname = socket.gethostname()

    def link(request: Request, cursor: str | None) -> str:
        query = {k: v for k, v in request.query.items() if k != "cursor"}
        if cursor:
            query["cursor"] = cursor
        return f"/api/audit/export?{urlencode(query)}"

    def export(request: Request) -> Response:
        args = request.args
        with app.pool.connection() as conn:
            page = export_page(conn, request.caller.organization_id,
                               time_from=args.get("from"), time_to=args.get("to"),
                               limit=args["limit"], cursor=args.get("cursor"))
        next_url = link(request, page.next_cursor) if page.next_cursor else None
        headers = {"Cache-Control": "no-store"}
        if next_url:
            headers["Link"] = f'<{next_url}>; rel="next"'
        if args["format"] == "syslog":
            body = "".join(f"{syslog_line(row, hostname)}\n" for row in page.rows)
            return Response(200, body.encode(), "text/plain; charset=utf-8", headers)
        links: list[dict[str, Any]] = [{"relation": "self", "url": link(request,
                                                                        args.get("cursor"))}]
        if next_url:
            links.append({"relation": "next", "url": next_url})
        bundle = {"resourceType": "Bundle", "type": "searchset", "link": links,
                  "entry": [{"fullUrl": f"urn:uuid:{row.id}",
                             "resource": fhir_audit_event(row, SOURCE),
                             "search": {"mode": "match"}} for row in page.rows]}
        return Response(200, json.dumps(bundle, separators=(",", ":")).encode(), FHIR_JSON,
                        headers)

    return [Route(
        "GET", "/api/audit/export", export, auth=_READERS, tags=("audit",),
        query=EXPORT_QUERY,
        summary="Export the organization's audit log for a SIEM or an auditor",
        description="Oldest first. A page holds at most `limit` rows; the next page is the "
                    "`Link: rel=next` header (and, in FHIR, the Bundle's `next` link).",
        responses={200: Reply("A FHIR Bundle of AuditEvent", BUNDLE, media_type=FHIR_JSON,
                              alternatives={"text/plain": string()})})]
