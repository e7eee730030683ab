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

For the viewers (docs/VIEWER.md) it also runs an OpenID Connect sign-in of its own,
:class:`DevLogin`: authorization code with PKCE (S256 only), a form that asks for a
user, an organization and a role, refresh tokens. It is for a developer's machine:
Atrium offers it only when no ``ATRIUM_OIDC_ISSUER`` is configured and only to
loopback clients, and it sends codes only to loopback redirect addresses.

The key file is created on first use, mode 0600 in a 0700 directory, written to a
temporary file and hard-linked into place, so two processes starting together
(Orthanc and ``atrium token``) end up with the same key: the first link wins and
the loser reads the winner's file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from atrium.auth.client_address import is_loopback
from atrium.auth.principal import KNOWN_ROLES

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TTL_SECONDS", "DEV_ISSUER", "MAX_TTL_SECONDS", "DevIssuer", "DevIssuerError",
    "DevLogin", "LoginError", "check_redirect", "dev_subject", "key_path",
    "load_or_create",
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
             now: float | None = None, nonce: str | None = None) -> str:
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
        if nonce:
            claims["nonce"] = nonce  # an ID token answers the sign-in request's nonce
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


# ---------------------------------------------------------------- the dev sign-in

CODE_TTL_SECONDS = 120
REFRESH_TTL_SECONDS = 12 * 3600
_PKCE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")


class LoginError(ValueError):
    """A sign-in step was refused; ``error`` is the OAuth 2.0 error code to answer."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


def check_redirect(redirect_uri: str) -> str:
    """``redirect_uri`` if a code may be sent there: http(s) on a loopback host.

    Raises
    ------
    LoginError
        Any other address (a code sent elsewhere would leave the machine).
    """
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("http", "https") or not is_loopback(parts.hostname or "") \
            or parts.username or parts.fragment:
        raise LoginError("invalid_request", "the dev sign-in sends codes to loopback "
                         "http(s) addresses only")
    return redirect_uri


def _s256(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass(frozen=True)
class _Grant:
    username: str
    organization: str
    role: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    expires: float


class DevLogin:
    """Codes and refresh tokens of the dev sign-in, kept in memory (a restart signs
    everyone out, which is what a dev server should do).

    Parameters
    ----------
    issuer
        Signs the tokens.
    audience, org_claim
        Those of the access tokens (Atrium's ``ATRIUM_OIDC_AUDIENCE``, ``ATRIUM_ORG_CLAIM``).
    ttl
        Lifetime of an access token, seconds.
    clock
        Seconds, monotonic (tests pass their own).
    """

    def __init__(self, issuer: DevIssuer, *, audience: str = "atrium",
                 org_claim: str = "organization", ttl: int = DEFAULT_TTL_SECONDS,
                 clock: Any = time.monotonic) -> None:
        self._issuer = issuer
        self._audience = audience
        self._org_claim = org_claim
        self._ttl = ttl
        self._clock = clock
        self._codes: dict[str, _Grant] = {}
        self._refresh: dict[str, _Grant] = {}
        self._sessions: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    def start_session(self, username: str, organization: str, role: str) -> str:
        """A browser session of the sign-in form (a cookie's value), valid
        :data:`REFRESH_TTL_SECONDS`: the next authorization request of that browser
        is answered without the form, as a real issuer's single sign-on does."""
        token = secrets.token_urlsafe(32)
        grant = _Grant(username.strip(), organization.strip(), role, "", "", "", None,
                       self._clock() + REFRESH_TTL_SECONDS)
        with self._lock:
            self._sweep()
            self._sessions[token] = grant
        return token

    def session(self, token: str) -> tuple[str, str, str] | None:
        """(user, organization, role) of a live session, or None."""
        with self._lock:
            grant = self._sessions.get(token)
        if grant is None or grant.expires < self._clock():
            return None
        return grant.username, grant.organization, grant.role

    def end_session(self, token: str) -> None:
        with self._lock:
            self._sessions.pop(token, None)

    def authorize(self, *, username: str, organization: str, role: str, client_id: str,
                  redirect_uri: str, code_challenge: str, code_challenge_method: str,
                  nonce: str | None = None) -> str:
        """A single-use code for this sign-in, valid :data:`CODE_TTL_SECONDS`.

        Raises
        ------
        LoginError
            No S256 challenge, a redirect that is not loopback, or a user,
            organization or role a token cannot carry.
        """
        check_redirect(redirect_uri)
        if code_challenge_method != "S256" or not _PKCE.match(code_challenge or ""):
            raise LoginError("invalid_request", "the dev sign-in needs PKCE with S256")
        username, organization = username.strip(), organization.strip()
        try:  # the checks mint makes, before a code promises a token
            self._issuer.mint(username, [role], organization, audience=self._audience,
                              org_claim=self._org_claim)
        except DevIssuerError as error:
            raise LoginError("invalid_request", str(error)) from None
        code = secrets.token_urlsafe(32)
        grant = _Grant(username, organization, role, client_id, redirect_uri,
                       code_challenge, nonce, self._clock() + CODE_TTL_SECONDS)
        with self._lock:
            self._sweep()
            self._codes[code] = grant
        return code

    def redeem(self, *, code: str, code_verifier: str, client_id: str,
               redirect_uri: str) -> dict[str, Any]:
        """The token answer for a code (RFC 6749 §5.1); the code is spent either way.

        Raises
        ------
        LoginError
            ``invalid_grant``: unknown, spent or expired code, another client or
            redirect address, or a verifier that does not match the challenge.
        """
        with self._lock:
            grant = self._codes.pop(code, None)
        if grant is None or grant.expires < self._clock():
            raise LoginError("invalid_grant", "unknown, used or expired code")
        if grant.client_id != client_id or grant.redirect_uri != redirect_uri:
            raise LoginError("invalid_grant", "the code was issued to another client")
        if not _PKCE.match(code_verifier or "") or \
                not hmac.compare_digest(_s256(code_verifier), grant.challenge):
            raise LoginError("invalid_grant", "the code verifier does not match")
        return self._tokens(grant)

    def refresh(self, *, refresh_token: str, client_id: str) -> dict[str, Any]:
        """New tokens for a refresh token, which is replaced (rotation).

        Raises
        ------
        LoginError
            ``invalid_grant``: unknown, used or expired, or another client's.
        """
        with self._lock:
            grant = self._refresh.pop(refresh_token, None)
        if grant is None or grant.expires < self._clock() or grant.client_id != client_id:
            raise LoginError("invalid_grant", "unknown, used or expired refresh token")
        return self._tokens(grant)

    def _tokens(self, grant: _Grant) -> dict[str, Any]:
        mint = self._issuer.mint
        access = mint(grant.username, [grant.role], grant.organization,
                      audience=self._audience, org_claim=self._org_claim, ttl=self._ttl)
        identity = mint(grant.username, [grant.role], grant.organization,
                        audience=grant.client_id, org_claim=self._org_claim, ttl=self._ttl,
                        nonce=grant.nonce)
        refresh = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh[refresh] = _Grant(
                grant.username, grant.organization, grant.role, grant.client_id,
                grant.redirect_uri, grant.challenge, None,
                self._clock() + REFRESH_TTL_SECONDS)
        return {"access_token": access, "id_token": identity, "token_type": "Bearer",
                "expires_in": self._ttl, "refresh_token": refresh, "scope": "openid"}

    def _sweep(self) -> None:
        now = self._clock()
        for book in (self._codes, self._refresh, self._sessions):
            for key in [k for k, grant in book.items() if grant.expires < now]:
                del book[key]
