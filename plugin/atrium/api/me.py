"""``GET /api/me``: the caller's own ``users`` row, created or updated from the
token's claims on first use (:class:`~atrium.auth.guard.Identities`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from atrium.api.http import AUTHENTICATED, AuditNote, Reply, Request, Response, Route, json_response
from atrium.api.schema import array, date_time, nullable, obj, string, uuid
from atrium.errors import NotFound

if TYPE_CHECKING:
    from atrium.app import Atrium

USER = obj({
    "id": uuid(), "keycloak_id": string(), "organization_id": nullable(uuid()),
    "organization_name": nullable(string()), "username": string(), "email": nullable(string()),
    "first_name": nullable(string()), "last_name": nullable(string()),
    "roles": array(string()), "preferences": obj({}, additional=True),
    "last_login_at": nullable(date_time()), "created_at": date_time(),
    "updated_at": date_time(),
}, required=["id", "keycloak_id", "username", "roles"])

_ME = """
SELECT u.id, u.keycloak_id, u.organization_id, o.name, u.username, u.email, u.first_name,
       u.last_name, u.roles, u.preferences, u.last_login_at, u.created_at, u.updated_at
FROM users u LEFT JOIN organizations o ON o.id = u.organization_id WHERE u.id = %s
"""
_COLUMNS = ("id", "keycloak_id", "organization_id", "organization_name", "username", "email",
            "first_name", "last_name", "roles", "preferences", "last_login_at", "created_at",
            "updated_at")


def routes(app: Atrium) -> list[Route]:
    def get_me(request: Request) -> Response:
        with app.pool.connection() as conn:
            row = conn.execute(_ME, (request.caller.user_id,)).fetchone()
        if row is None:
            raise NotFound("Your user record is gone; send the request again.")
        user = dict(zip(_COLUMNS, row, strict=True))
        return json_response(user, audit=AuditNote("user", user["id"]))

    return [Route("GET", "/api/me", get_me, auth=AUTHENTICATED, tags=("users",),
                  summary="The caller's user record, from the token's claims",
                  responses={200: Reply("The caller", USER)})]
