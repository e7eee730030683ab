"""``/api/organizations``: the caller's own organization, and new ones.

Atrium has no super-administrator: every caller, an admin included, sees and
changes only the organization their token names. An admin may create another
organization (for users the identity provider will assign to it); it is then
theirs to read only through a token of that organization.

An organization's **name** is how tokens (the organization claim) and the
AE-title mapping find it, so it cannot be changed through the API: a rename would
make the next token naming the old name create a new, empty organization.

**Deletion** is soft (``deleted_at``) and removes access, not data:

* its users keep their rows (the audit log refers to them) but lose access at
  once: the guard refuses tokens naming a deleted organization (403), and every
  resource query is scoped to live organizations, so even an identity cached
  before the deletion finds nothing;
* its patients, studies and the rest stay in the database and in Orthanc —
  destroying clinical data is a retention decision, not a side effect;
* its name stays taken (a new organization cannot inherit its data by name);
* the default organization and organizations that AE titles map to cannot be
  deleted (409): DICOM would keep arriving into them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import (
    AUTHENTICATED,
    AuditNote,
    Reply,
    Request,
    Response,
    Route,
    json_response,
    no_content,
)
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.schema import date_time, enum, nullable, obj, string, uuid
from atrium.auth.principal import Permission
from atrium.cluster.bus import publish
from atrium.errors import Conflict, NotFound

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["ORGANIZATION", "routes"]

TYPES = ("hospital", "clinic", "lab", "university", "research")

_NAME = string(min_length=1, max_length=255, pattern=r"^\S(.*\S)?$",
               description="Unique; no leading or trailing spaces.")
_FIELDS = {
    "type": nullable(enum(*TYPES)),
    "email": nullable(string(max_length=255, pattern=r"^[^@\s]+@[^@\s]+$")),
    "phone": nullable(string(max_length=50)),
    "address": nullable(obj({}, additional=True, description="Structured address")),
    "settings": obj({}, additional=True, description="Organization-specific settings"),
}
NEW_ORGANIZATION = obj({"name": _NAME, **_FIELDS}, required=["name"])
ORGANIZATION_CHANGES = obj(
    {"name": {**_NAME, "description": "The current name only: names cannot change."},
     **_FIELDS}, min_properties=1)
ORGANIZATION = obj({
    "id": uuid(), "name": string(), **_FIELDS, "created_at": date_time(),
    "updated_at": date_time(),
}, required=["id", "name", "type", "email", "phone", "address", "settings", "created_at",
             "updated_at"])

ORDER = Keyset("organizations", ("o.created_at", "o.id"))

_COLUMNS = ("id", "name", "type", "email", "phone", "address", "settings", "created_at",
            "updated_at")
_SELECT = sql.SQL("SELECT o.id, o.name, o.type, o.email, o.phone, o.address, o.settings, "
                  "o.created_at, o.updated_at FROM organizations o")
_OWN = sql.SQL("o.id = %s AND o.deleted_at IS NULL")


def _row(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_COLUMNS, row, strict=True))


def _json(value: Any) -> Any:
    return Jsonb(value) if isinstance(value, dict) else value


def routes(app: Atrium) -> list[Route]:
    def own(request: Request, conn: Any, lock: bool = False) -> dict[str, Any]:
        """The caller's organization when ``id`` names it; 404 for any other."""
        org_id = request.params["id"]
        if org_id != request.caller.organization_id:
            raise NotFound(f"No organization {org_id}")
        query = sql.SQL("{} WHERE {}{}").format(_SELECT, _OWN,
                                                sql.SQL(" FOR UPDATE" if lock else ""))
        row = conn.execute(query, (org_id,)).fetchone()
        if row is None:
            raise NotFound(f"No organization {org_id}")
        return _row(row)

    def list_organizations(request: Request) -> Response:
        wanted = ORDER.request(request.args)
        after, values = ORDER.after(wanted)
        query = sql.SQL("{} WHERE {} AND {} ORDER BY {} LIMIT %s").format(
            _SELECT, _OWN, after, ORDER.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [request.caller.organization_id, *values,
                                        wanted.fetch]).fetchall()
        items = [_row(r) for r in rows]
        return json_response(ORDER.page(items, wanted.limit,
                                        key=lambda o: (o["created_at"], o["id"])),
                             audit=AuditNote("organization"))

    def create_organization(request: Request) -> Response:
        body = request.json
        values = {name: _json(body.get(name)) for name in ("name", "type", "email", "phone",
                                                            "address")}
        values["settings"] = Jsonb(body.get("settings") or {})
        try:
            with app.pool.connection() as conn:
                row = conn.execute(
                    sql.SQL("INSERT INTO organizations (name, type, email, phone, address, "
                            "settings) VALUES (%(name)s, %(type)s, %(email)s, %(phone)s, "
                            "%(address)s, %(settings)s) RETURNING id"), values).fetchone()
                assert row is not None
                created = _row(conn.execute(sql.SQL("{} WHERE o.id = %s").format(_SELECT),
                                            (row[0],)).fetchone())
        except psycopg.errors.UniqueViolation:
            raise Conflict("An organization with this name exists already (names of "
                           "deleted organizations stay taken); choose another name.") from None
        return json_response(created, status=201,
                             headers={"Location": f"/api/organizations/{created['id']}"},
                             audit=AuditNote("organization", created["id"]))

    def get_organization(request: Request) -> Response:
        with app.pool.connection() as conn:
            organization = own(request, conn)
        return json_response(organization, audit=AuditNote("organization", organization["id"]))

    def update_organization(request: Request) -> Response:
        changes = {name: value for name, value in request.json.items()
                   if name in _FIELDS or name == "name"}
        with app.pool.connection() as conn, conn.transaction():
            current = own(request, conn, lock=True)
            if changes.pop("name", current["name"]) != current["name"]:
                raise Conflict("An organization's name cannot change: tokens and AE-title "
                               "mappings find the organization by it. Leave 'name' out.")
            if changes:
                assignments = sql.SQL(", ").join(
                    sql.SQL("{} = %s").format(sql.Identifier(name)) for name in changes)
                conn.execute(sql.SQL("UPDATE organizations SET {} WHERE id = %s").format(
                    assignments), [*(_json(v) for v in changes.values()), current["id"]])
            updated = own(request, conn)
        return json_response(updated, audit=AuditNote("organization", updated["id"]))

    def delete_organization(request: Request) -> Response:
        with app.pool.connection() as conn, conn.transaction():
            current = own(request, conn, lock=True)
            settings = app.settings
            if current["name"] == settings.default_organization:
                raise Conflict("This is the default organization: DICOM from unmapped "
                               "senders arrives into it, so it cannot be deleted.")
            if current["name"] in set(settings.aet_organizations.values()):
                raise Conflict("AE titles are mapped to this organization "
                               "(ATRIUM_AET_ORGANIZATIONS); remove the mapping first.")
            conn.execute("UPDATE organizations SET deleted_at = now() WHERE id = %s",
                         (current["id"],))
            publish(conn, "identities")  # every node's cached logins of its members end
        if app.identities is not None:
            app.identities.forget()  # here at once, even if the bus is down
        return no_content()

    tags = ("organizations",)
    return [
        Route("GET", "/api/organizations", list_organizations, tags=tags,
              summary="The caller's organization (a list of one)", auth=AUTHENTICATED,
              query=obj(PAGE_PARAMETERS),
              responses={200: Reply("A page of organizations", page_schema(ORGANIZATION))}),
        Route("POST", "/api/organizations", create_organization, tags=tags,
              summary="Create an organization", auth=(Permission.MANAGE_ORGANIZATION,),
              body=NEW_ORGANIZATION, max_body_bytes=64 * 1024,
              responses={201: Reply("The new organization", ORGANIZATION),
                         409: Reply("The name is taken")}),
        Route("GET", "/api/organizations/{id:uuid}", get_organization, tags=tags,
              summary="Read the caller's organization", auth=AUTHENTICATED,
              responses={200: Reply("The organization", ORGANIZATION)}),
        Route("PUT", "/api/organizations/{id:uuid}", update_organization, tags=tags,
              summary="Change the caller's organization (fields given; the name is fixed)",
              auth=(Permission.MANAGE_ORGANIZATION,), body=ORGANIZATION_CHANGES,
              max_body_bytes=64 * 1024,
              responses={200: Reply("The organization", ORGANIZATION),
                         409: Reply("A rename was asked for")}),
        Route("DELETE", "/api/organizations/{id:uuid}", delete_organization, tags=tags,
              summary="Soft-delete the caller's organization: its users lose access, "
                      "its data stays", auth=(Permission.MANAGE_ORGANIZATION,),
              responses={204: Reply("Deleted"),
                         409: Reply("DICOM is routed to this organization")}),
    ]
