"""The local dev issuer (SPEC §1): with no ``ATRIUM_OIDC_ISSUER``, Atrium trusts an
RSA key pair kept in ``$ATRIUM_DATA_DIR/keys/dev-issuer.pem``, and ``atrium token``
signs tokens with it.

Its tokens carry ``iss`` = :data:`DEV_ISSUER` (``atrium-dev``), deliberately not a
URL: ``ATRIUM_OIDC_ISSUER`` must be http(s), so a dev token can never pass for a
real issuer's, and nothing pretends to serve discovery. They have the claims of a
Keycloak access token (``sub``, ``aud`` and ``azp``, ``exp``, ``iat``,
``realm_access.roles``, the organization claim) and are validated by the same
:class:`~atrium.auth.tokens.TokenValidator`, through a static JWKS made from the
public half of the key.

The key file is created on first use, mode 0600 in a 0700 directory, written to a
temporary file and hard-linked into place, so two processes starting together
(Orthanc and ``atrium token``) end up with the same key: the first link wins and
the loser reads the winner's file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from atrium.auth.principal import KNOWN_ROLES

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TTL_SECONDS", "DEV_ISSUER", "MAX_TTL_SECONDS", "DevIssuer", "DevIssuerError",
    "dev_subject", "key_path", "load_or_create",
]

DEV_ISSUER = "atrium-dev"
DEFAULT_TTL_SECONDS = 3600
MAX_TTL_SECONDS = 30 * 86400
_ALGORITHM = "RS256"
_KEY_BITS = 2048
# Dev users get the same ``sub`` on every token, so /api/me finds the same user row.
_SUBJECT_NAMESPACE = uuid.UUID("5b0c4c1e-7d43-4d0e-9a43-8f2f6c1a7e10")


class DevIssuerError(ValueError):
    """The dev issuer's key is unusable, or a token was asked for with bad arguments."""


def key_path(data_dir: Path) -> Path:
    return data_dir / "keys" / "dev-issuer.pem"


def dev_subject(username: str) -> str:
    """The stable ``sub`` of a dev user: a UUID derived from the user name."""
    return str(uuid.uuid5(_SUBJECT_NAMESPACE, username))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_uint(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def _public_jwk(private_pem: bytes) -> dict[str, str]:
    """The public JWK of an RSA private key, its ``kid`` the RFC 7638 thumbprint (so a
    new key pair gets a new kid by itself)."""
    key = serialization.load_pem_private_key(private_pem, password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise TypeError("not an RSA private key")
    numbers = key.public_key().public_numbers()
    members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    kid = _b64url(hashlib.sha256(canonical).digest())
    return {**members, "kid": kid, "use": "sig", "alg": _ALGORITHM}


@dataclass(frozen=True)
class DevIssuer:
    """The dev issuer's key pair; :meth:`mint` signs tokens, :meth:`jwks` publishes.
    Built by :func:`load_or_create`."""

    private_pem: bytes = field(repr=False)
    public_jwk: Mapping[str, str]
    path: Path

    @property
    def kid(self) -> str:
        return self.public_jwk["kid"]

    def jwks(self) -> dict[str, Any]:
        return {"keys": [dict(self.public_jwk)]}

    def mint(self, username: str, roles: Iterable[str], organization: str, *,
             audience: str = "atrium", org_claim: str = "organization",
             ttl: int = DEFAULT_TTL_SECONDS, email: str | None = None,
             now: float | None = None) -> str:
        """A signed access token for ``username`` with realm ``roles`` in ``organization``.

        Raises
        ------
        DevIssuerError
            An empty name or organization, an unknown role, or ``ttl`` outside
            1..:data:`MAX_TTL_SECONDS` seconds.
        """
        username, organization = username.strip(), organization.strip()
        role_list = sorted(set(roles))
        if not username or not organization:
            raise DevIssuerError("a dev token needs a non-empty user name and organization")
        unknown = [role for role in role_list if role not in KNOWN_ROLES]
        if unknown or not role_list:
            raise DevIssuerError(f"roles must be among {', '.join(sorted(KNOWN_ROLES))}; "
                                 f"got {', '.join(unknown) or 'none'}")
        if not 1 <= ttl <= MAX_TTL_SECONDS:
            raise DevIssuerError(f"ttl must be 1..{MAX_TTL_SECONDS} seconds, got {ttl}")
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {
            "iss": DEV_ISSUER, "sub": dev_subject(username), "aud": audience, "azp": audience,
            "typ": "Bearer", "iat": issued, "exp": issued + ttl, "jti": str(uuid.uuid4()),
            "preferred_username": username, "realm_access": {"roles": role_list},
            org_claim: organization,
        }
        if email:
            claims["email"] = email
        headers = {"kid": self.kid, "typ": "JWT"}
        return str(jwt.encode(claims, self.private_pem.decode("ascii"), algorithm=_ALGORITHM,
                              headers=headers))


def _read(path: Path) -> DevIssuer:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("dev issuer key was readable by others path=%s mode=%o; now 0600", path, mode)
        path.chmod(0o600)
    pem = path.read_bytes()
    try:
        public = _public_jwk(pem)
    except (ValueError, TypeError) as exc:
        raise DevIssuerError(f"the dev issuer key {path} is unreadable ({exc}); delete it to "
                             "create a new one (tokens signed with the old key stop working)")\
            from None
    return DevIssuer(pem, public, path)


def _create(path: Path) -> None:
    """Write a new key to a temporary file and link it into place; if another process
    linked first, keep theirs."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=_KEY_BITS)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".dev-issuer.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:  # mkstemp creates the file 0600
            handle.write(pem)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
            log.info("dev issuer key created path=%s", path)
        except FileExistsError:
            pass
    finally:
        os.unlink(temporary)


def load_or_create(data_dir: Path) -> DevIssuer:
    """The dev issuer of ``data_dir``, its key pair created on first use."""
    path = key_path(data_dir)
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _create(path)
    return _read(path)
