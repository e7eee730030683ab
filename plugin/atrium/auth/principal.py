"""Who is calling: a :class:`Principal` built from a validated token's claims, and
what each role may do (SPEC §7) as one table.

Nothing here checks a signature: :mod:`atrium.auth.tokens` validates the token and
only then calls :func:`principal_from_claims`. Roles not in :data:`KNOWN_ROLES`
(Keycloak adds ``offline_access``, ``uma_authorization``, ``default-roles-…``)
are dropped, so no unknown name can ever grant anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from atrium.errors import Forbidden

__all__ = [
    "KNOWN_ROLES", "ROLE_PERMISSIONS", "Permission", "Principal", "principal_from_claims",
    "roles_granting",
]


class Permission(StrEnum):
    """One thing a caller may do; routes ask for a permission, never for a role."""

    READ_PHI = "read-phi"  # identified patient data, DICOM metadata and pixels
    READ_DEIDENTIFIED = "read-deidentified"
    ANNOTATE = "annotate"
    UPLOAD = "upload"  # slides, recordings, DICOM through the API or STOW-RS
    DEIDENTIFY = "deidentify"
    REGISTER_MODELS = "register-models"
    WRITE_PREDICTIONS = "write-predictions"
    READ_AUDIT = "read-audit"
    MANAGE_ORGANIZATION = "manage-organization"  # organizations, users, deletions
    ORTHANC_ADMIN = "orthanc-admin"  # Orthanc's own REST API and administrative routes
    READ_METRICS = "read-metrics"  # counts and latencies across organizations, no PHI


_READ_AND_ANNOTATE = frozenset({Permission.READ_DEIDENTIFIED, Permission.ANNOTATE})

#: SPEC §7: role → what it may do, always within the caller's own organization.
ROLE_PERMISSIONS: Mapping[str, frozenset[Permission]] = {
    "admin": frozenset(Permission),
    "clinician": frozenset({
        Permission.READ_PHI, Permission.READ_DEIDENTIFIED, Permission.ANNOTATE,
        Permission.UPLOAD, Permission.DEIDENTIFY,
    }),
    "researcher": _READ_AND_ANNOTATE,
    "annotator": _READ_AND_ANNOTATE,
    "ml-engineer": frozenset({
        Permission.READ_DEIDENTIFIED, Permission.REGISTER_MODELS, Permission.WRITE_PREDICTIONS,
    }),
    "auditor": frozenset({Permission.READ_AUDIT}),
    # Not in SPEC §7: whoever runs the platform watches it (GET /api/metrics) and
    # reads nothing else.
    "operator": frozenset({Permission.READ_METRICS}),
}

KNOWN_ROLES: frozenset[str] = frozenset(ROLE_PERMISSIONS)


def roles_granting(permission: Permission) -> tuple[str, ...]:
    """The roles that grant ``permission``, sorted, for messages that say what to ask for."""
    return tuple(sorted(role for role, granted in ROLE_PERMISSIONS.items()
                        if permission in granted))


@dataclass(frozen=True)
class Principal:
    """The authenticated caller.

    ``keycloak_id`` is the token's ``sub``, stable across logins and renames;
    ``username`` falls back to it when the token has no ``preferred_username``.
    ``organization`` is the organization's name or id as the token states it, or
    ``None`` when the token names none (such a caller can reach no organization's
    data: the API layer answers 403).
    """

    keycloak_id: str
    username: str
    issuer: str
    expires_at: float  # seconds since the epoch (the token's ``exp``)
    roles: frozenset[str] = frozenset()
    organization: str | None = None
    email: str | None = None
    given_name: str | None = None
    family_name: str | None = None

    @functools.cached_property
    def permissions(self) -> frozenset[Permission]:
        """Everything the caller's roles grant, together (worked out once: a token's
        principal serves all of its requests)."""
        granted: frozenset[Permission] = frozenset()
        for role in self.roles:
            granted |= ROLE_PERMISSIONS.get(role, frozenset())
        return granted

    def can(self, permission: Permission) -> bool:
        return permission in self.permissions

    @property
    def can_read_phi(self) -> bool:
        """Identified data (admin, clinician); everyone else sees de-identified data only."""
        return self.can(Permission.READ_PHI)

    def has_any(self, *roles: str) -> bool:
        return not self.roles.isdisjoint(roles)

    def require(self, permission: Permission) -> None:
        """Raise :class:`~atrium.errors.Forbidden` naming the roles that would grant
        ``permission`` when the caller lacks it."""
        if not self.can(permission):
            raise Forbidden(
                f"this action needs the {permission.value} permission, granted by the role(s) "
                f"{', '.join(roles_granting(permission))}; the token carries "
                f"{', '.join(sorted(self.roles)) or 'no Atrium role'}"
            )


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _role_names(container: Any) -> Iterable[str]:
    """``{"roles": [...]}`` → the role names; anything malformed → none."""
    roles = container.get("roles") if isinstance(container, Mapping) else None
    if not isinstance(roles, list):
        return ()
    return (role for role in roles if isinstance(role, str))


def token_roles(claims: Mapping[str, Any], audience: str) -> frozenset[str]:
    """Realm roles plus the roles of the ``audience`` client, known roles only.

    Keycloak puts realm roles in ``realm_access.roles`` and client roles in
    ``resource_access.<client>.roles``; roles of other clients are ignored, so a
    role named ``admin`` in some unrelated client grants nothing here.
    """
    clients = claims.get("resource_access")
    client = clients.get(audience) if isinstance(clients, Mapping) else None
    names = {*_role_names(claims.get("realm_access")), *_role_names(client)}
    return frozenset(names & KNOWN_ROLES)


def token_organization(claims: Mapping[str, Any], org_claim: str) -> str | None:
    """The organization the token names in ``org_claim``.

    Keycloak maps a user attribute either as a string or, for a multivalued
    attribute, as a list: one element is accepted like a string. Several
    organizations are refused (403) rather than one picked at random.
    """
    value = claims.get(org_claim)
    if isinstance(value, list):
        named = [text for text in map(_text, value) if text]
        if len(named) > 1:
            raise Forbidden(f"the token names {len(named)} organizations in its "
                            f"{org_claim!r} claim; Atrium needs exactly one")
        return named[0] if named else None
    return _text(value)


def principal_from_claims(claims: Mapping[str, Any], audience: str,
                          org_claim: str = "organization") -> Principal:
    """Build the caller from claims that have already been validated.

    ``sub``, ``iss`` and ``exp`` are trusted to be present and well-typed (the
    validator checked them); every optional claim of the wrong type is treated as
    absent.
    """
    subject = str(claims["sub"])
    return Principal(
        keycloak_id=subject,
        username=_text(claims.get("preferred_username")) or subject,
        issuer=str(claims["iss"]),
        expires_at=float(claims["exp"]),
        roles=token_roles(claims, audience),
        organization=token_organization(claims, org_claim),
        email=_text(claims.get("email")),
        given_name=_text(claims.get("given_name")),
        family_name=_text(claims.get("family_name")),
    )
