"""Bearer tokens: OIDC discovery, a JWKS cache keyed by ``kid``, and validation with
python-jose (algorithms pinned, claims required and checked twice).

How a token is judged, in order; the first failure answers 401
(:class:`~atrium.errors.Unauthorized`), with a detail that never quotes the token:

1. shape: the ``Bearer`` scheme, at most :data:`MAX_TOKEN_BYTES`, three
   base64url parts (five parts is an encrypted JWE: refused), a JSON header whose
   ``alg`` is in :data:`ALGORITHMS` and which has a ``kid`` and no ``crit``;
2. key: the ``kid`` is looked up in keys that came from the issuer's JWKS only;
   ``jwk``, ``jku``, ``x5u`` and ``x5c`` headers are never read, and a key is only
   used with the algorithm of its own type (an RSA key never verifies ES256, and no
   key ever verifies HS*);
3. signature and claims by python-jose, then the same claims again here with the
   injected clock: ``exp``, ``iss`` and ``sub`` required; ``aud`` containing the
   audience, or else ``azp`` equal to it; ``nbf`` and ``iat`` when present; all
   times with :data:`LEEWAY_SECONDS` of leeway.

A token whose signature verified is remembered (:data:`VERIFIED_TOKENS` of them,
by SHA-256 of the exact token, with the key object that verified it): the same
token again skips the RSA or ECDSA verification — about a millisecond and a
half of every request — but never the claims of step 3, which are checked on
every request with the clock of that request, so an expired token is refused
as before. A remembered token counts only while the key that verified it is
still the issuer's key for its ``kid``: a key withdrawn from the JWKS or
replaced under the same ``kid`` verifies nothing remembered.

An unknown ``kid`` refetches the JWKS (rotation is picked up without a restart),
at most once per :data:`REFETCH_INTERVAL_SECONDS` so that a flood of made-up
``kid`` values cannot hammer the identity provider. When the provider cannot be
reached and no cached key fits, the answer is :class:`~atrium.errors.ServiceUnavailable`
(503): the token may well be good, the caller should retry, and nothing is let
through.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import urllib3
from jose import jwk, jwt
from jose.backends.base import Key
from jose.exceptions import ExpiredSignatureError, JOSEError, JWTClaimsError

from atrium.auth.principal import Principal, principal_from_claims
from atrium.errors import ServiceUnavailable, Unauthorized
from atrium.json_nesting import nests_deeper_than
from atrium.settings import Settings

log = logging.getLogger(__name__)

__all__ = [
    "ALGORITHMS", "LEEWAY_SECONDS", "MAX_TOKEN_BYTES", "REFETCH_INTERVAL_SECONDS", "FetchJson",
    "IssuerUnreachable", "JwksSource", "OidcDiscovery", "StaticJwks", "TokenValidator",
    "http_fetch_json", "validator_for",
]

#: The only signature algorithms accepted → the JWK key type (and curve) each needs.
ALGORITHMS: Mapping[str, tuple[str, str | None]] = {"RS256": ("RSA", None),
                                                    "ES256": ("EC", "P-256")}
MAX_TOKEN_BYTES = 8192
LEEWAY_SECONDS = 30
REFETCH_INTERVAL_SECONDS = 10.0
#: Cached keys are refreshed after this long, so a key the issuer withdrew stops
#: verifying within the hour even when no unknown ``kid`` triggers a refetch.
KEYS_MAX_AGE_SECONDS = 3600.0
HTTP_TIMEOUT_SECONDS = 3.0
_MAX_DOCUMENT_BYTES = 1024 * 1024
_JWS = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# A JOSE header is a flat object (a ``jwk`` member nests two levels); the issuer's
# documents nest a few. Deeper text is never parsed (atrium.json_nesting).
_MAX_HEADER_NESTING = 4
_MAX_DOCUMENT_NESTING = 16
#: Keycloak's ``typ`` claim of tokens that are not access tokens.
_NOT_ACCESS_TOKENS = frozenset({"id", "refresh", "offline", "logout"})

# python-jose's claim options. ``verify_aud`` is off because jose would refuse a
# Keycloak token with ``aud: account, azp: atrium``; the audience rule (aud, else
# azp) is applied in ``_check_claims``. ``nbf``/``iat``/``jti`` are optional in
# OIDC access tokens and ``at_hash`` belongs to ID tokens, so they are verified
# when present, not required.
_JOSE_OPTIONS: Mapping[str, Any] = {
    "verify_signature": True, "verify_exp": True, "verify_nbf": True, "verify_iat": True,
    "verify_iss": True, "verify_sub": True, "verify_jti": True, "verify_aud": False,
    "require_exp": True, "require_iss": True, "require_sub": True,
    "require_aud": False, "require_nbf": False, "require_iat": False, "require_jti": False,
    "require_at_hash": False, "leeway": LEEWAY_SECONDS,
}

FetchJson = Callable[[str], Mapping[str, Any]]
"""GET a URL, return its JSON object; raise :class:`IssuerUnreachable` otherwise."""


class IssuerUnreachable(Exception):
    """The identity provider did not answer with a usable document; says which and why."""


class JwksSource(Protocol):
    """Where trusted keys come from: the issuer's JWKS, or a fixed one (dev issuer)."""

    @property
    def description(self) -> str:
        """For messages: the issuer URL, or "the local dev issuer"."""
        ...

    def fetch_jwks(self) -> Mapping[str, Any]:
        """The current JWK Set; raise :class:`IssuerUnreachable` when unavailable."""
        ...


def http_fetch_json(timeout: float = HTTP_TIMEOUT_SECONDS) -> FetchJson:
    """A :data:`FetchJson` over one urllib3 pool (no proxy lookup per call, unlike
    ``requests``), no retries, ``timeout`` seconds in all per request."""
    pool = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout), retries=False)

    def fetch(url: str) -> Mapping[str, Any]:
        try:
            response = pool.request("GET", url, headers={"Accept": "application/json"},
                                    preload_content=False)
            try:
                body = response.read(_MAX_DOCUMENT_BYTES + 1)
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as exc:
            raise IssuerUnreachable(f"GET {url} failed: {type(exc).__name__}") from exc
        if response.status != 200:
            raise IssuerUnreachable(f"GET {url} answered HTTP {response.status}")
        if len(body) > _MAX_DOCUMENT_BYTES:
            raise IssuerUnreachable(f"GET {url} answered more than {_MAX_DOCUMENT_BYTES} bytes")
        try:
            if nests_deeper_than(body.decode("utf-8"), _MAX_DOCUMENT_NESTING):
                raise IssuerUnreachable(f"GET {url} answered JSON nested over "
                                        f"{_MAX_DOCUMENT_NESTING} levels")
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise IssuerUnreachable(f"GET {url} did not answer JSON") from None
        if not isinstance(document, dict):
            raise IssuerUnreachable(f"GET {url} did not answer a JSON object")
        return document

    return fetch


class OidcDiscovery:
    """The JWKS of an OIDC issuer, found through ``{issuer}/.well-known/openid-configuration``.

    The discovery document is read once and kept; a failed JWKS fetch forgets it,
    so an issuer that moved its ``jwks_uri`` is rediscovered on the next attempt.
    """

    def __init__(self, issuer: str, fetch: FetchJson) -> None:
        self.issuer = issuer
        self.description = issuer
        self._fetch = fetch
        self._jwks_uri: str | None = None

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        document = self._fetch(url)
        if document.get("issuer") != self.issuer:  # OIDC Discovery §4.3
            raise IssuerUnreachable(f"{url} names issuer {document.get('issuer')!r}, not the "
                                    f"configured ATRIUM_OIDC_ISSUER {self.issuer!r}")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri.startswith(("https://", "http://")):
            raise IssuerUnreachable(f"{url} has no http(s) jwks_uri")
        return jwks_uri

    def fetch_jwks(self) -> Mapping[str, Any]:
        if self._jwks_uri is None:
            self._jwks_uri = self._discover()
        try:
            return self._fetch(self._jwks_uri)
        except IssuerUnreachable:
            self._jwks_uri = None
            raise


@dataclass(frozen=True)
class StaticJwks:
    """A fixed JWK Set: the local dev issuer's public key."""

    jwks: Mapping[str, Any]
    description: str = "the local dev issuer"

    def fetch_jwks(self) -> Mapping[str, Any]:
        return self.jwks


@dataclass(frozen=True)
class _TrustedKey:
    alg: str
    key: Key


def _algorithm_of(entry: Mapping[str, Any]) -> str | None:
    """The accepted algorithm a JWK may verify, or ``None`` when it may verify none."""
    if entry.get("use", "sig") != "sig":
        return None
    for alg, (kty, crv) in ALGORITHMS.items():
        if entry.get("kty") == kty and entry.get("crv") == crv and entry.get("alg", alg) == alg:
            return alg
    return None


def trusted_keys(jwks: Mapping[str, Any]) -> dict[str, _TrustedKey]:
    """``kid`` → key for every signing key of ``jwks`` that an accepted algorithm fits.

    Encryption keys, HMAC secrets, unknown key types and malformed entries are
    skipped (Keycloak publishes an ``RSA-OAEP`` encryption key beside its signing key).
    """
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise IssuerUnreachable("the JWKS has no \"keys\" list")
    keys: dict[str, _TrustedKey] = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("kid"), str):
            continue
        alg = _algorithm_of(entry)
        if alg is None:
            continue
        try:
            keys[entry["kid"]] = _TrustedKey(alg, jwk.construct(dict(entry), alg))
        except (JOSEError, ValueError, TypeError) as exc:
            log.warning("jwks key skipped kid=%s reason=%s", entry["kid"], type(exc).__name__)
    return keys


def _bearer_token(credentials: str | None) -> str:
    """The token of an ``Authorization`` header value (or a bare token)."""
    if not credentials or not credentials.strip():
        raise Unauthorized("a bearer token is required: send Authorization: Bearer <token>")
    parts = credentials.strip().split(None, 1)
    if len(parts) == 1:
        return parts[0]
    if parts[0].lower() != "bearer":
        raise Unauthorized("the Authorization header must use the Bearer scheme")
    return parts[1].strip()


def _unverified_header(token: str) -> Mapping[str, Any]:
    """Check the token's shape and return its header (not yet trusted)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise Unauthorized(f"the token is longer than {MAX_TOKEN_BYTES} bytes")
    if token.count(".") == 4:
        raise Unauthorized("encrypted tokens (JWE) are not accepted; send a signed JWT")
    if not _JWS.fullmatch(token):
        raise Unauthorized("the token is not a JWT (three base64url parts separated by dots)")
    # Decoded and parsed here, once, so that its depth is measured before json sees it.
    segment = token.split(".", 1)[0]
    try:
        header_text = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)).decode()
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        raise Unauthorized("the token's header is not valid base64url JSON") from None
    if nests_deeper_than(header_text, _MAX_HEADER_NESTING):
        raise Unauthorized("the token's header is not a flat JSON object")
    try:
        header = json.loads(header_text)
    except ValueError:
        raise Unauthorized("the token's header is not valid base64url JSON") from None
    if not isinstance(header, dict):
        raise Unauthorized("the token's header is not valid base64url JSON")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALGORITHMS:
        raise Unauthorized(f"the token's algorithm is not accepted (only "
                           f"{', '.join(ALGORITHMS)})")
    if "crit" in header:
        raise Unauthorized("the token has critical header extensions, which are not supported")
    if not isinstance(header.get("kid"), str) or not header["kid"]:
        raise Unauthorized("the token's header has no key id (kid)")
    return header


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Unauthorized(f"the token's {name} claim is not a number of seconds")
    return float(value)


def _times(claims: Mapping[str, Any]) -> tuple[float, float | None, float | None]:
    """The token's ``exp``, ``nbf`` and ``iat``; ``exp`` is required."""
    exp = _number(claims, "exp")
    if exp is None:
        raise Unauthorized("the token lacks the required claim exp")
    return exp, _number(claims, "nbf"), _number(claims, "iat")


def _has_audience(claims: Mapping[str, Any], audience: str) -> bool:
    """``aud`` contains ``audience``, or else ``azp`` equals it (Keycloak access
    tokens often carry ``aud: account`` and name the client in ``azp``)."""
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    return audience in audiences or claims.get("azp") == audience


def _jose_refusal(exc: Exception) -> str:
    """A detail for python-jose's other failures, in our words (its own may quote input)."""
    missing = re.match(r'missing required key "(\w+)"', str(exc))
    if missing:
        return f"the token lacks the required claim {missing[1]}"
    if "Signature verification failed" in str(exc):
        return "the token's signature does not verify with the issuer's key"
    if isinstance(exc, TypeError | ValueError | ArithmeticError):
        return "the token's claims are malformed"
    return "the token is malformed"


VERIFIED_TOKENS = 4096
"""Tokens whose signature verified that a validator remembers (the oldest go first)."""


class TokenValidator:
    """Validates bearer tokens of one issuer for one audience; safe to share between
    threads. Keys are fetched lazily, on the first token.

    Parameters
    ----------
    issuer:
        The exact ``iss`` every token must carry.
    audience:
        Required in ``aud``, or else equal to ``azp``.
    org_claim:
        The claim naming the caller's organization.
    jwks_source:
        Where keys come from (:class:`OidcDiscovery` or :class:`StaticJwks`).
    clock:
        Seconds since the epoch; used for the time claims and for throttling
        refetches. Injectable for tests.
    """

    def __init__(self, issuer: str, audience: str, org_claim: str, jwks_source: JwksSource,
                 clock: Callable[[], float] = time.time, *,
                 refetch_interval: float = REFETCH_INTERVAL_SECONDS,
                 keys_max_age: float = KEYS_MAX_AGE_SECONDS) -> None:
        if not issuer or not audience or not org_claim:
            raise ValueError("issuer, audience and org_claim must be non-empty")
        self.issuer = issuer
        self.audience = audience
        self.org_claim = org_claim
        self._source = jwks_source
        self._clock = clock
        self._refetch_interval = refetch_interval
        self._keys_max_age = keys_max_age
        self._lock = threading.Lock()
        self._keys: Mapping[str, _TrustedKey] = {}  # replaced whole, never mutated
        self._fetched_at: float | None = None  # last successful fetch
        self._attempted_at: float | None = None  # last attempt, successful or not
        self._last_error: str | None = None  # why the last attempt failed
        self._verified: OrderedDict[bytes, _Verified] = OrderedDict()  # by SHA-256

    def validate(self, credentials: str | None) -> Principal:
        """The caller of a request, from its ``Authorization`` value or a bare token.

        Raises
        ------
        Unauthorized
            The token is missing, malformed, expired, or not trusted.
        ServiceUnavailable
            The identity provider is unreachable and no cached key fits the token.
        Forbidden
            The token is valid but names several organizations.
        """
        entry = self._verified_token(credentials)
        if entry.principal is None:
            # Set once; a race sets an equal value twice.
            entry.principal = principal_from_claims(entry.claims, self.audience, self.org_claim)
        return entry.principal

    def claims(self, credentials: str | None) -> dict[str, Any]:
        """The verified claims of a token (see :meth:`validate` for the errors)."""
        return dict(self._verified_token(credentials).claims)

    def _verified_token(self, credentials: str | None) -> _Verified:
        token = _bearer_token(credentials)
        digest = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(digest)
        # The same bytes passed every check before; only the key's trust and the
        # time can have changed since.
        if remembered is not None and self._trusted_key(remembered.kid) is remembered.key:
            self._check_times(*remembered.times)
            return remembered
        header = _unverified_header(token)
        trusted = self._trusted_key(header["kid"])
        if trusted.alg != header["alg"]:
            raise Unauthorized(f"the token's algorithm does not match its key ({trusted.alg})")
        claims = self._decode(token, trusted)
        self._check_claims(claims)
        entry = _Verified(header["kid"], trusted, claims, _times(claims))
        with self._lock:
            self._verified[digest] = entry
            while len(self._verified) > VERIFIED_TOKENS:
                self._verified.popitem(last=False)
        return entry

    def refresh_keys(self) -> int:
        """Fetch the JWKS now (e.g. at start-up, to log a misconfiguration early);
        returns how many keys are trusted. Raises :class:`ServiceUnavailable`."""
        with self._lock:
            self._refresh(self._clock())
            if self._last_error is not None:
                raise ServiceUnavailable(self._unavailable_detail())
            return len(self._keys)

    def _stale(self, now: float) -> bool:
        return self._fetched_at is None or now - self._fetched_at >= self._keys_max_age

    def _may_fetch(self, now: float) -> bool:
        # A clock that went backwards allows a fetch rather than blocking until it catches up.
        return self._attempted_at is None or not (
            0 <= now - self._attempted_at < self._refetch_interval)

    def _refresh(self, now: float) -> None:
        """Fetch the JWKS and replace the cached keys; keep them when the fetch fails."""
        self._attempted_at = now
        try:
            keys = trusted_keys(self._source.fetch_jwks())
        except IssuerUnreachable as exc:
            self._last_error = str(exc)
            log.warning("identity provider unreachable source=%s reason=%s cached_keys=%d",
                        self._source.description, exc, len(self._keys))
            return
        if set(keys) != set(self._keys):
            log.info("jwks keys changed source=%s kids=%s", self._source.description,
                     ",".join(sorted(keys)))
        self._keys, self._fetched_at, self._last_error = keys, now, None

    def _trusted_key(self, kid: str) -> _TrustedKey:
        now = self._clock()
        trusted = self._keys.get(kid)
        if trusted is not None and not self._stale(now):
            return trusted
        with self._lock:
            trusted = self._keys.get(kid)
            if (trusted is None or self._stale(now)) and self._may_fetch(now):
                self._refresh(now)
                trusted = self._keys.get(kid)
            failed = self._last_error is not None
        if trusted is not None:
            return trusted
        if failed:
            raise ServiceUnavailable(self._unavailable_detail())
        raise Unauthorized(f"the token is signed by a key that {self._source.description} "
                           "does not publish (unknown kid)")

    def _unavailable_detail(self) -> str:
        return (f"the identity provider {self._source.description} cannot be reached "
                f"({self._last_error}) and no cached key fits this token; retry shortly")

    def _decode(self, token: str, trusted: _TrustedKey) -> dict[str, Any]:
        try:
            claims = jwt.decode(token, trusted.key, algorithms=[trusted.alg],
                                options=dict(_JOSE_OPTIONS), issuer=self.issuer)
        except ExpiredSignatureError:
            raise Unauthorized("the token has expired") from None
        except JWTClaimsError as exc:  # jose's messages are fixed sentences
            raise Unauthorized(f"the token's claims are invalid: {exc}") from None
        except (JOSEError, ValueError, TypeError, ArithmeticError) as exc:
            raise Unauthorized(_jose_refusal(exc)) from None
        if not isinstance(claims, dict):
            raise Unauthorized("the token's payload is not a JSON object")
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """The rules again, explicitly and with the injected clock, so that no default
        of python-jose (which accepts a token without ``aud`` or ``exp``) decides."""
        self._check_times(*_times(claims))
        if claims.get("iss") != self.issuer:
            raise Unauthorized(f"the token was not issued by {self.issuer}")
        if not _has_audience(claims, self.audience):
            raise Unauthorized(f"the token is not meant for {self.audience!r} "
                               "(neither aud nor azp names it)")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject.strip():
            raise Unauthorized("the token's sub claim is missing or empty")
        kind = claims.get("typ")
        if isinstance(kind, str) and kind.lower() in _NOT_ACCESS_TOKENS:
            raise Unauthorized(f"the token is of type {kind!r}, not an access token")


    def _check_times(self, exp: float, nbf: float | None, iat: float | None) -> None:
        now = self._clock()
        if now >= exp + LEEWAY_SECONDS:
            raise Unauthorized("the token has expired")
        if nbf is not None and nbf > now + LEEWAY_SECONDS:
            raise Unauthorized("the token is not valid yet (nbf)")
        if iat is not None and iat > now + LEEWAY_SECONDS:
            raise Unauthorized("the token was issued in the future (iat)")


@dataclass
class _Verified:
    """A token whose signature and claims were checked: its key id, the key that
    verified it, its claims and (once asked) the caller they describe."""

    kid: str
    key: _TrustedKey
    claims: dict[str, Any]
    times: tuple[float, float | None, float | None]  # exp, nbf, iat
    principal: Principal | None = None


def validator_for(settings: Settings, fetch: FetchJson | None = None) -> TokenValidator:
    """The validator Atrium uses: the configured OIDC issuer, or else the local dev
    issuer, whose key pair is created in the data directory on first use."""
    if settings.oidc_issuer:
        source: JwksSource = OidcDiscovery(settings.oidc_issuer, fetch or http_fetch_json())
        issuer = settings.oidc_issuer
    else:
        from atrium.auth.dev_issuer import DEV_ISSUER, load_or_create

        source, issuer = StaticJwks(load_or_create(settings.data_dir).jwks()), DEV_ISSUER
    return TokenValidator(issuer, settings.oidc_audience, settings.org_claim, source)
