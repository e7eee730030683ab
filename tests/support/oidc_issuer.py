"""A test OIDC issuer on 127.0.0.1 that answers like Keycloak's realm ``atrium``.

It serves, over plain HTTP from a thread of the test process::

    /realms/atrium/.well-known/openid-configuration   issuer, jwks_uri, endpoints
    /realms/atrium/protocol/openid-connect/certs      the JWKS (kid, kty, use, alg, n/e or x/y)

and signs tokens with its private keys. Use it as a context manager or through the
fixtures at the bottom (register them with
``pytest_plugins = ["tests.support.oidc_issuer"]`` in the root ``conftest.py``)::

    with OidcIssuer() as issuer:
        token = issuer.token_for("alice", roles=["clinician"], organization="Hospital A")
        settings: ATRIUM_OIDC_ISSUER=issuer.issuer, ATRIUM_OIDC_AUDIENCE=issuer.audience

Keys: one RS256 key exists from the start and signs by default. :meth:`OidcIssuer.add_key`
publishes another (``"ES256"`` for an EC key), :meth:`OidcIssuer.rotate` makes a new
key the signer and, with ``keep_old=False``, withdraws the others from the JWKS (they
can still sign, to prove that withdrawn keys stop verifying). :meth:`OidcIssuer.outage`
makes the server drop every connection without answering, as an unreachable Keycloak
would look. ``jwks_fetches`` and ``discovery_fetches`` count requests.

:func:`malicious_tokens` builds every token a validator must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwk, jwt
from jose.backends.base import Key

__all__ = ["OMIT", "OidcIssuer", "SigningKey", "malicious_tokens", "oidc_issuer",
           "oidc_issuer_session"]

OMIT: Any = object()
"""Pass as a claim's value to :meth:`OidcIssuer.mint` to leave the claim out."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json_part(value: Mapping[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


@dataclass(frozen=True)
class SigningKey:
    """A key pair: the private PEM signs, ``public_jwk`` is what the JWKS publishes."""

    kid: str
    alg: str  # "RS256" or "ES256"
    private_pem: str = field(repr=False)
    public_pem: str = field(repr=False)
    public_jwk: Mapping[str, Any] = field(repr=False)
    signer: Key = field(repr=False)  # parsed once: parsing a PEM per token is slow

    @classmethod
    def generate(cls, alg: str = "RS256", kid: str | None = None) -> SigningKey:
        if alg == "RS256":
            private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = \
                rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif alg == "ES256":
            private = ec.generate_private_key(ec.SECP256R1())
        else:
            raise ValueError(f"the test issuer signs with RS256 or ES256, not {alg!r}")
        private_pem = private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()).decode()
        public_pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        kid = kid or f"{alg.lower()}-{uuid.uuid4().hex[:12]}"
        public = jwk.construct(public_pem, alg).to_dict()
        return cls(kid, alg, private_pem, public_pem, {**public, "kid": kid, "use": "sig"},
                   jwk.construct(private_pem, alg))

    def sign(self, claims: Mapping[str, Any], headers: Mapping[str, Any] | None = None) -> str:
        """A JWS of ``claims``; ``headers`` are added to (or replace) alg/typ/kid."""
        return str(jwt.encode(dict(claims), self.signer, algorithm=self.alg,
                              headers={"kid": self.kid, "typ": "JWT", **(headers or {})}))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    issuer: OidcIssuer


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 - the name http.server dispatches to
        issuer = self.server.issuer
        if issuer.down:
            self.close_connection = True  # answer nothing: as if nobody listened
            return
        document = issuer.document(self.path)
        if document is None:
            self.send_error(404)
            return
        body = json.dumps(document).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base
        pass


class OidcIssuer:
    """A Keycloak-like issuer for ``realm`` and client ``audience`` on 127.0.0.1.

    Not started until :meth:`start` (or ``with``); :attr:`issuer` is the URL that
    goes into ``ATRIUM_OIDC_ISSUER`` and into every token's ``iss``.
    """

    def __init__(self, audience: str = "atrium", realm: str = "atrium",
                 org_claim: str = "organization") -> None:
        self.audience, self.realm, self.org_claim = audience, realm, org_claim
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._published: list[str] = []
        self.signing_kid = self.add_key("RS256")
        self.jwks_fetches = 0
        self.discovery_fetches = 0
        self.down = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- the server ----------------------------------------------------------------

    def start(self) -> OidcIssuer:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.issuer = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,),
                                        name="oidc-issuer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OidcIssuer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the test issuer is not started: call start() or use `with`")
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/realms/{self.realm}"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Within the block, every request is dropped without an answer."""
        self.down = True
        try:
            yield
        finally:
            self.down = False

    def reset(self) -> None:
        """Back up, counters at zero (keys are kept: a running Atrium may have cached them)."""
        with self._lock:
            self.down, self.jwks_fetches, self.discovery_fetches = False, 0, 0

    def discovery(self) -> dict[str, Any]:
        base = f"{self.issuer}/protocol/openid-connect"
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{base}/auth",
            "token_endpoint": f"{base}/token",
            "userinfo_endpoint": f"{base}/userinfo",
            "end_session_endpoint": f"{base}/logout",
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["code", "id_token", "code id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
        }

    def jwks(self) -> dict[str, Any]:
        with self._lock:
            return {"keys": [dict(self._keys[kid].public_jwk) for kid in self._published]}

    def document(self, path: str) -> dict[str, Any] | None:
        """The JSON answer to a GET of ``path``, counting fetches; ``None`` → 404."""
        prefix = f"/realms/{self.realm}"
        if path == f"{prefix}/.well-known/openid-configuration":
            with self._lock:
                self.discovery_fetches += 1
            return self.discovery()
        if path == f"{prefix}/protocol/openid-connect/certs":
            with self._lock:
                self.jwks_fetches += 1
            return self.jwks()
        return None

    # -- keys ----------------------------------------------------------------------

    def key(self, kid: str | None = None) -> SigningKey:
        return self._keys[kid or self.signing_kid]

    def add_key(self, alg: str = "RS256", *, publish: bool = True) -> str:
        """A new key (``"RS256"`` or ``"ES256"``); published in the JWKS unless told not."""
        key = SigningKey.generate(alg)
        with self._lock:
            self._keys[key.kid] = key
            if publish:
                self._published.append(key.kid)
        return key.kid

    def rotate(self, alg: str = "RS256", *, keep_old: bool = True) -> str:
        """Publish a new key and sign with it from now on; ``keep_old=False`` withdraws
        every other key from the JWKS. Returns the new kid."""
        kid = self.add_key(alg)
        with self._lock:
            self.signing_kid = kid
            if not keep_old:
                self._published = [kid]
        return kid

    def withdraw(self, kid: str) -> None:
        """Remove ``kid`` from the JWKS; the key can still sign (as a thief would)."""
        with self._lock:
            self._published.remove(kid)

    # -- tokens --------------------------------------------------------------------

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """The claims of a valid Keycloak access token, with ``overrides`` applied
        (a value of :data:`OMIT` removes the claim)."""
        now = int(time.time())
        username = overrides.get("preferred_username", "alice")
        claims: dict[str, Any] = {
            "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), "iss": self.issuer,
            "aud": self.audience, "azp": self.audience, "typ": "Bearer",
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.issuer}/users/{username}")),
            "preferred_username": username, "email": f"{username}@example.org",
            "given_name": "Alice", "family_name": "Liddell",
            "realm_access": {"roles": ["clinician", "offline_access", "uma_authorization"]},
            "resource_access": {"account": {"roles": ["manage-account"]}},
            self.org_claim: "Hospital A",
        }
        claims.update(overrides)
        return {name: value for name, value in claims.items() if value is not OMIT}

    def mint(self, *, kid: str | None = None, alg: str | None = None,
             headers: Mapping[str, Any] | None = None, **claims: Any) -> str:
        """A signed token of :meth:`claims` with ``claims`` overriding.

        ``kid`` picks the signing key (default: the current signer, or the newest
        published key of ``alg`` when ``alg`` is given).
        """
        if kid is None and alg is not None and self.key().alg != alg:
            candidates = [k for k in self._published if self._keys[k].alg == alg]
            if not candidates:
                raise ValueError(f"no published {alg} key: call add_key({alg!r}) first")
            kid = candidates[-1]
        return self.key(kid).sign(self.claims(**claims), headers)

    def token_for(self, username: str, roles: list[str], organization: str | None,
                  client_roles: list[str] | None = None, **claims: Any) -> str:
        """A valid token for ``username`` with realm ``roles`` (and roles of the
        ``audience`` client) in ``organization`` (``None``: no organization claim)."""
        overrides: dict[str, Any] = {
            "preferred_username": username, "realm_access": {"roles": roles},
            "resource_access": {self.audience: {"roles": client_roles or []}},
            self.org_claim: OMIT if organization is None else organization, **claims}
        return self.mint(**overrides)


def _hs256_with_public_key(issuer: OidcIssuer) -> str:
    """The key-confusion attack: HS256 with the issuer's public PEM as the HMAC secret.
    Built by hand because python-jose refuses a PEM as an HMAC key."""
    signing_input = (f"{_json_part({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.signing_kid})}."
                     f"{_json_part(issuer.claims())}")
    signature = hmac.new(issuer.key().public_pem.encode(), signing_input.encode(),
                         hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def malicious_tokens(issuer: OidcIssuer) -> dict[str, str]:
    """Every token Atrium must refuse with 401, by name."""
    now = int(time.time())
    attacker = SigningKey.generate("RS256", kid=issuer.signing_kid)
    good = issuer.mint()
    header, payload, signature = good.split(".")
    forged_claims = issuer.claims(realm_access={"roles": ["admin"]})
    return {
        "garbage": "not-a-token",
        "empty_signature": f"{header}.{payload}.",
        "tampered_payload": f"{header}.{_json_part(forged_claims)}.{signature}",
        "expired": issuer.mint(exp=now - 3600, iat=now - 7200),
        "not_yet_valid": issuer.mint(nbf=now + 3600),
        "issued_in_future": issuer.mint(iat=now + 3600, exp=now + 7200),
        "wrong_aud": issuer.mint(aud="someone-else", azp="someone-else"),
        "wrong_iss": issuer.mint(iss="http://127.0.0.1:1/realms/evil"),
        "no_aud": issuer.mint(aud=OMIT, azp=OMIT),
        "no_exp": issuer.mint(exp=OMIT),
        "no_iss": issuer.mint(iss=OMIT),
        "no_sub": issuer.mint(sub=OMIT),
        "id_token": issuer.mint(typ="ID"),
        "unknown_kid": SigningKey.generate("RS256").sign(issuer.claims()),
        "no_kid": issuer.mint(headers={"kid": None}),
        "alg_none": f"{_json_part({'alg': 'none', 'typ': 'JWT', 'kid': issuer.signing_kid})}."
                    f"{_json_part(issuer.claims())}.",
        "hs256_public_key": _hs256_with_public_key(issuer),
        "embedded_jwk": attacker.sign(issuer.claims(), {"jwk": dict(attacker.public_jwk)}),
        "jku_header": attacker.sign(issuer.claims(), {"jku": f"{issuer.base_url}/evil.json"}),
        "jwe": ".".join([_json_part({"alg": "RSA-OAEP", "enc": "A256GCM",
                                     "kid": issuer.signing_kid}),
                         b64url(b"k" * 256), b64url(b"iv" * 6), b64url(b"c" * 64),
                         b64url(b"t" * 16)]),
        "oversized": issuer.mint(padding="x" * 9000),
    }


@pytest.fixture
def oidc_issuer() -> Iterator[OidcIssuer]:
    """A fresh issuer for one test (its own keys; rotate and outage freely)."""
    with OidcIssuer() as issuer:
        yield issuer


@pytest.fixture(scope="session")
def oidc_issuer_session() -> Iterator[OidcIssuer]:
    """One issuer for the whole session, e.g. the one Orthanc with Atrium is
    configured to trust; tests that take it down call ``reset()`` afterwards."""
    with OidcIssuer() as issuer:
        yield issuer
