"""Who is calling, and may they: the guard of every non-public route.

A request's bearer token becomes a :class:`~atrium.auth.principal.Principal`
(:mod:`atrium.auth.tokens`), the principal becomes a :class:`Caller` — its
``users`` row and its organization, created or updated from the token's claims on
first use — and the route's ``auth`` declaration decides. The caller is what every
handler scopes its queries with: ``caller.organization_id`` and
``caller.can_read_phi``.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import psycopg

from atrium.api.http import AUTHENTICATED, Request, Route
from atrium.auth.principal import Permission, Principal
from atrium.errors import Conflict, Forbidden, Unauthorized

__all__ = ["AuthGuard", "Caller", "Identities", "current_caller", "permits"]


@dataclass(frozen=True)
class Caller:
    """An authenticated user, resolved to rows of the database."""

    principal: Principal
    user_id: uuid.UUID
    organization_id: uuid.UUID

    @property
    def can_read_phi(self) -> bool:
        return self.principal.can_read_phi

    def can(self, permission: Permission) -> bool:
        return self.principal.can(permission)


# The caller of the request being handled on this thread, for the audit record
# written after the handler (the router answers a Response, not the request).
current_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "atrium_caller", default=None)

_ORGANIZATION_BY_ID = "SELECT id FROM organizations WHERE id = %s AND deleted_at IS NULL"
_ENSURE_ORGANIZATION = """
INSERT INTO organizations (name) VALUES (%(name)s) ON CONFLICT (name) DO NOTHING
"""
_ORGANIZATION_BY_NAME = """
SELECT id, deleted_at IS NOT NULL FROM organizations WHERE name = %(name)s
"""
_UPSERT_USER = """
INSERT INTO users (keycloak_id, organization_id, username, email, first_name, last_name,
                   roles, last_login_at)
VALUES (%(sub)s, %(org)s, %(username)s, %(email)s, %(first)s, %(last)s, %(roles)s, now())
ON CONFLICT (keycloak_id) DO UPDATE SET
    organization_id = EXCLUDED.organization_id, username = EXCLUDED.username,
    email = EXCLUDED.email, first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name,
    roles = EXCLUDED.roles, last_login_at = now()
RETURNING id
"""


class Identities:
    """Principal → :class:`Caller`. The ``users`` row is written on first use and
    whenever the claims change, and at most every ``refresh_seconds`` otherwise
    (``last_login_at``): not on every request."""

    def __init__(self, connect: Callable[[], Any], refresh_seconds: float = 300,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._connect = connect
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self._known: dict[tuple[Any, ...], tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    def resolve(self, principal: Principal) -> Caller:
        key = (principal.keycloak_id, principal.username, principal.organization,
               principal.roles, principal.email, principal.given_name, principal.family_name)
        now = self._clock()
        with self._lock:
            known = self._known.get(key)
        if known is not None and now - known[1] < self._refresh_seconds:
            # The validator hands out one principal per token: most calls are its own.
            caller = known[0]
            return caller if caller.principal is principal else replace(caller,
                                                                        principal=principal)
        caller = self._write(principal)
        with self._lock:
            if len(self._known) > 10_000:
                self._known.clear()
            self._known[key] = (caller, now)
        return caller

    def forget(self) -> None:
        """Drop what is cached (an organization was deleted, say)."""
        with self._lock:
            self._known.clear()

    def _write(self, principal: Principal) -> Caller:
        if not principal.organization:
            raise Forbidden("The token names no organization; ask the identity provider's "
                            "administrator to set the user's organization attribute.")
        claims = {"sub": principal.keycloak_id[:255],
                  "username": principal.username[:255],
                  "email": principal.email[:255] if principal.email else None,
                  "first": (principal.given_name or "")[:255] or None,
                  "last": (principal.family_name or "")[:255] or None,
                  "roles": sorted(principal.roles)}
        with self._connect() as conn, conn.transaction():
            organization_id = self._organization(conn, principal.organization)
            # A user's first requests may arrive together. The upsert is keyed on
            # keycloak_id, but a concurrent insert of the same user can trip the
            # username or email index first; once that insert has committed, the
            # second attempt finds the row and updates it. A second violation is
            # another account's username or email.
            for attempt in (1, 2):
                try:
                    with conn.transaction():
                        row = conn.execute(_UPSERT_USER,
                                           {**claims, "org": organization_id}).fetchone()
                    break
                except psycopg.errors.UniqueViolation:
                    if attempt == 2:
                        raise Conflict("Another account already uses this username or "
                                       "email; ask the identity provider's administrator "
                                       "to resolve it.") from None
        assert row is not None
        return Caller(principal, row[0], organization_id)

    @staticmethod
    def _organization(conn: Any, named: str) -> uuid.UUID:
        """The organization a token names, by id or by name; a name not seen before
        is created (the identity provider is trusted to assert it)."""
        try:
            by_id = uuid.UUID(named)
        except ValueError:
            by_id = None
        if by_id is not None:
            row = conn.execute(_ORGANIZATION_BY_ID, (by_id,)).fetchone()
            if row is None:
                raise Forbidden("The token's organization does not exist in Atrium.")
            return row[0]
        name = named.strip()[:255]
        conn.execute(_ENSURE_ORGANIZATION, {"name": name})
        org_id, deleted = conn.execute(_ORGANIZATION_BY_NAME, {"name": name}).fetchone()
        if deleted:
            raise Forbidden("The token's organization has been deleted.")
        return org_id


def permits(route_auth: Any, principal: Principal) -> bool:
    """Whether ``principal`` may call a route declaring ``route_auth``: any valid
    token for AUTHENTICATED, else any one of the permissions or roles listed."""
    if route_auth is AUTHENTICATED:
        return True
    return any(principal.can(item) if isinstance(item, Permission) else principal.has_any(item)
               for item in route_auth)


class AuthGuard:
    """The router's guard: 401 without a valid token, 403 without the permission."""

    def __init__(self, validate: Callable[[str | None], Principal], identities: Identities
                 ) -> None:
        self._validate = validate
        self._identities = identities

    def caller(self, authorization: str | None) -> Caller:
        if not authorization:
            raise Unauthorized("This route needs a bearer token: send "
                               "'Authorization: Bearer <token>'.")
        return self._identities.resolve(self._validate(authorization))

    def __call__(self, route: Route, request: Request) -> Request:
        if route.is_public:
            return request
        caller = self.caller(request.headers.get("authorization"))
        current_caller.set(caller)
        if not permits(route.auth, caller.principal):
            wanted = ", ".join(str(getattr(a, "value", a)) for a in route.roles)
            carried = ", ".join(sorted(caller.principal.roles)) or "no Atrium role"
            raise Forbidden(f"{request.method} {route.path.template} needs one of: {wanted}; "
                            f"the token carries {carried}.")
        return replace(request, caller=caller)
