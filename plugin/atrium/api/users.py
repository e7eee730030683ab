"""``/api/users``: the users of the caller's organization, and one's own preferences.

Users are created and updated from token claims (:mod:`atrium.auth.guard`), so the
API changes nothing of theirs but ``preferences`` — and only the user themself
may change their own (403 for a colleague's; another organization's user is a
404 like any missing one). Preferences are a JSON object of at most
:data:`MAX_PREFERENCES_BYTES`, replaced as a whole.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from psycopg import sql
from psycopg.types.json import Jsonb

from atrium.api.http import AUTHENTICATED, AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.me import USER
from atrium.api.pagination import PAGE_PARAMETERS, Keyset, page_schema
from atrium.api.schema import enum, obj
from atrium.api.scope import organization_scope
from atrium.auth.principal import KNOWN_ROLES
from atrium.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from atrium.app import Atrium

__all__ = ["MAX_PREFERENCES_BYTES", "routes"]

MAX_PREFERENCES_BYTES = 16 * 1024

PREFERENCES = obj({"preferences": obj({}, additional=True,
                                      description="Replaces the stored preferences.")},
                  required=["preferences"])
USER_SEARCH = obj({**PAGE_PARAMETERS,
                   "role": enum(*sorted(KNOWN_ROLES), description="Users holding this role.")})

ORDER = Keyset("users", ("u.username", "u.id"), descending=False)

_SELECT = sql.SQL(
    "SELECT u.id, u.keycloak_id, u.organization_id, o.name, u.username, u.email, "
    "u.first_name, u.last_name, u.roles, u.preferences, u.last_login_at, u.created_at, "
    "u.updated_at FROM users u JOIN organizations o ON o.id = u.organization_id")
_COLUMNS = ("id", "keycloak_id", "organization_id", "organization_name", "username", "email",
            "first_name", "last_name", "roles", "preferences", "last_login_at", "created_at",
            "updated_at")


def _user(row: tuple[Any, ...]) -> dict[str, Any]:
    return dict(zip(_COLUMNS, row, strict=True))


def routes(app: Atrium) -> list[Route]:
    def find(request: Request, conn: Any) -> dict[str, Any]:
        where = organization_scope(request.caller, "u").add("u.id = %s", request.params["id"])
        row = conn.execute(sql.SQL("{} WHERE {}").format(_SELECT, where.sql()),
                           where.params).fetchone()
        if row is None:
            raise NotFound(f"No user {request.params['id']}")
        return _user(row)

    def list_users(request: Request) -> Response:
        wanted = ORDER.request(request.args)
        after, values = ORDER.after(wanted)
        where = organization_scope(request.caller, "u").add(after, *values)
        if "role" in request.args:
            where.add("%s = ANY(u.roles)", request.args["role"])
        query = sql.SQL("{} WHERE {} ORDER BY {} LIMIT %s").format(
            _SELECT, where.sql(), ORDER.order_by())
        with app.pool.connection() as conn:
            rows = conn.execute(query, [*where.params, wanted.fetch]).fetchall()
        users = [_user(r) for r in rows]
        return json_response(ORDER.page(users, wanted.limit,
                                        key=lambda u: (u["username"], u["id"])),
                             audit=AuditNote("user"))

    def get_user(request: Request) -> Response:
        with app.pool.connection() as conn:
            user = find(request, conn)
        return json_response(user, audit=AuditNote("user", user["id"]))

    def update_preferences(request: Request) -> Response:
        preferences = request.json["preferences"]
        with app.pool.connection() as conn, conn.transaction():
            user = find(request, conn)
            if user["id"] != request.caller.user_id:
                raise Forbidden("Only the user themself may change their preferences.")
            conn.execute("UPDATE users SET preferences = %s WHERE id = %s",
                         (Jsonb(preferences), user["id"]))
            user = find(request, conn)
        return json_response(user, audit=AuditNote("user", user["id"]))

    tags = ("users",)
    return [
        Route("GET", "/api/users", list_users, tags=tags, auth=AUTHENTICATED,
              summary="Users of the caller's organization, by username", query=USER_SEARCH,
              responses={200: Reply("A page of users", page_schema(USER))}),
        Route("GET", "/api/users/{id:uuid}", get_user, tags=tags, auth=AUTHENTICATED,
              summary="Read a user of the caller's organization",
              responses={200: Reply("The user", USER)}),
        Route("PUT", "/api/users/{id:uuid}", update_preferences, tags=tags,
              auth=AUTHENTICATED, body=PREFERENCES, max_body_bytes=MAX_PREFERENCES_BYTES,
              summary="Replace one's own preferences (a JSON object of at most 16 KiB)",
              responses={200: Reply("The user", USER),
                         403: Reply("Another user's preferences")}),
    ]
