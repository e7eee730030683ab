"""Bearer-token validation against a Keycloak-like issuer on loopback: the refusal
matrix, rotation, refetch throttling, failing closed, audience, roles, organization."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from atrium.auth.principal import Permission, Principal, principal_from_claims
from atrium.auth.tokens import (
    IssuerUnreachable,
    OidcDiscovery,
    StaticJwks,
    TokenValidator,
    http_fetch_json,
    validator_for,
)
from atrium.errors import ApiError, Forbidden, ServiceUnavailable, Unauthorized
from atrium.settings import load_settings
from tests.support.oidc_issuer import OMIT, OidcIssuer, malicious_tokens

MATRIX = (
    "garbage", "empty_signature", "tampered_payload", "expired", "not_yet_valid",
    "issued_in_future", "wrong_aud", "wrong_iss", "no_aud", "no_exp", "no_iss", "no_sub",
    "id_token", "unknown_kid", "no_kid", "alg_none", "hs256_public_key", "embedded_jwk",
    "jku_header", "jwe", "oversized",
)


class FakeClock:
    """Wall-clock seconds that move only when told (starts at the real time, so that
    python-jose's own checks, which read the real clock, agree)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def matrix_issuer() -> Iterator[OidcIssuer]:
    with OidcIssuer() as running:
        yield running


@pytest.fixture(scope="module")
def matrix(matrix_issuer: OidcIssuer) -> dict[str, str]:
    return malicious_tokens(matrix_issuer)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def validator(issuer: OidcIssuer, clock: FakeClock | None = None,
              **options: Any) -> TokenValidator:
    source = OidcDiscovery(issuer.issuer, http_fetch_json(timeout=2))
    return TokenValidator(issuer.issuer, issuer.audience, issuer.org_claim, source,
                          clock or FakeClock(), **options)


def refusal(call: Any, token: str, kind: type[ApiError] = Unauthorized) -> ApiError:
    """The error ``call(token)`` raises; asserts it is ``kind`` and does not echo the token."""
    with pytest.raises(kind) as caught:
        call(token)
    problem = json.dumps(caught.value.problem())
    assert token not in problem
    assert not [part for part in token.split(".") if len(part) >= 8 and part in problem]
    return caught.value


# -- accepted --------------------------------------------------------------------------


def test_a_valid_rs256_token_gives_its_principal(issuer: OidcIssuer) -> None:
    token = issuer.token_for("alice", roles=["clinician", "offline_access"],
                             organization="Hospital A")
    principal = validator(issuer).validate(f"Bearer {token}")
    claims = issuer.claims()
    assert principal == Principal(
        keycloak_id=claims["sub"], username="alice", issuer=issuer.issuer,
        expires_at=principal.expires_at, roles=frozenset({"clinician"}),
        organization="Hospital A", email="alice@example.org", given_name="Alice",
        family_name="Liddell")
    assert principal.expires_at > time.time() and principal.can_read_phi


def test_an_es256_token_is_accepted(issuer: OidcIssuer) -> None:
    issuer.add_key("ES256")
    token = issuer.mint(alg="ES256")
    assert validator(issuer).validate(token).username == "alice"


def test_the_bare_token_and_any_case_of_the_bearer_scheme_are_accepted(
        issuer: OidcIssuer) -> None:
    token, check = issuer.mint(), validator(issuer)
    for credentials in (token, f"Bearer {token}", f"bearer  {token} ", f"BEARER {token}"):
        assert check.validate(credentials).username == "alice"


@pytest.mark.parametrize("credentials", [None, "", "   ", "Basic YWxpY2U6c2VjcmV0", "Bearer"])
def test_a_missing_token_or_another_scheme_is_refused(issuer: OidcIssuer,
                                                      credentials: str | None) -> None:
    with pytest.raises(Unauthorized):
        validator(issuer).validate(credentials)


# -- refused ---------------------------------------------------------------------------


def test_the_matrix_covers_every_malicious_token(matrix: dict[str, str]) -> None:
    assert set(matrix) == set(MATRIX)


@pytest.mark.parametrize("name", MATRIX)
def test_every_malicious_token_is_refused_without_echoing_it(
        matrix_issuer: OidcIssuer, matrix: dict[str, str], name: str) -> None:
    token = matrix[name]
    check = validator(matrix_issuer)
    error = refusal(check.validate, token)
    assert error.status == 401 and error.detail
    assert refusal(check.validate, f"Bearer {token}").detail == error.detail


@pytest.mark.parametrize(("name", "words"), [
    ("expired", "expired"), ("not_yet_valid", "nbf"), ("issued_in_future", "iat"),
    ("wrong_aud", "not meant for"),
    ("wrong_iss", "invalid"), ("no_exp", "exp"), ("no_aud", "neither aud nor azp"),
    ("alg_none", "algorithm"), ("hs256_public_key", "algorithm"), ("jwe", "JWE"),
    ("oversized", "8192"), ("unknown_kid", "unknown kid"), ("embedded_jwk", "signature"),
    ("id_token", "not an access token"),
])
def test_a_refusal_says_what_is_wrong(matrix_issuer: OidcIssuer, matrix: dict[str, str],
                                      name: str, words: str) -> None:
    token = matrix[name]
    assert words in refusal(validator(matrix_issuer).validate, token).detail


def test_a_token_is_verified_only_with_a_key_of_its_algorithm(issuer: OidcIssuer) -> None:
    """An EC signature claiming the RSA key's kid is refused before any verification."""
    ec_kid = issuer.add_key("ES256")
    token = issuer.key(ec_kid).sign(issuer.claims(), {"kid": issuer.signing_kid})
    assert "does not match its key" in refusal(validator(issuer).validate, token).detail


@pytest.mark.parametrize(("offset", "accepted"), [(-10, True), (-60, False)])
def test_expiry_has_thirty_seconds_of_leeway(issuer: OidcIssuer, offset: int,
                                             accepted: bool) -> None:
    now = int(time.time())
    token = issuer.mint(exp=now + offset, iat=now - 600)
    if accepted:
        assert validator(issuer).validate(token).username == "alice"
    else:
        refusal(validator(issuer).validate, token)


def test_not_before_has_thirty_seconds_of_leeway(issuer: OidcIssuer) -> None:
    token = issuer.mint(nbf=int(time.time()) + 10)
    assert validator(issuer).validate(token).username == "alice"


@pytest.mark.parametrize("claims", [
    {"exp": float("inf")}, {"exp": float("nan")}, {"exp": "9999999999"}, {"exp": True},
    {"exp": None}, {"iat": [1]}, {"nbf": {"at": 1}}, {"iat": "yesterday"}, {"sub": 42},
    {"sub": " "}, {"iss": ["a"]},
])
def test_claims_of_the_wrong_type_are_refused(issuer: OidcIssuer, claims: dict[str, Any]) -> None:
    refusal(validator(issuer).validate, issuer.mint(**claims))


def test_the_injected_clock_decides_expiry(issuer: OidcIssuer, clock: FakeClock) -> None:
    token, check = issuer.mint(), validator(issuer, clock)
    check.validate(token)
    clock.advance(300 + 31)
    assert "expired" in refusal(check.validate, token).detail


# -- audience --------------------------------------------------------------------------


@pytest.mark.parametrize(("aud", "azp", "accepted"), [
    ("account", "atrium", True),  # Keycloak's default access token
    (["account", "other"], "atrium", True),
    (OMIT, "atrium", True),
    (["account", "atrium"], OMIT, True),
    ("atrium", "some-other-client", True),
    ("account", "some-other-client", False),
    (["account"], OMIT, False),
    ("", "", False),
])
def test_the_audience_is_aud_or_else_azp(issuer: OidcIssuer, aud: Any, azp: Any,
                                         accepted: bool) -> None:
    token = issuer.mint(aud=aud, azp=azp)
    if accepted:
        assert validator(issuer).validate(token).username == "alice"
    else:
        assert "not meant for" in refusal(validator(issuer).validate, token).detail


# -- keys: rotation, throttling, failing closed ----------------------------------------


def test_a_rotated_key_is_picked_up_without_restart(issuer: OidcIssuer,
                                                    clock: FakeClock) -> None:
    check = validator(issuer, clock)
    old_token = issuer.mint()
    check.validate(old_token)
    clock.advance(10)
    issuer.rotate()
    assert check.validate(issuer.mint()).username == "alice"
    assert check.validate(old_token).username == "alice"  # kept in the JWKS
    assert issuer.jwks_fetches == 2 and issuer.discovery_fetches == 1


def test_unknown_kids_refetch_the_jwks_at_most_once_per_ten_seconds(
        issuer: OidcIssuer, clock: FakeClock) -> None:
    check = validator(issuer, clock)
    strangers = [issuer.mint(kid=issuer.add_key(publish=False)) for _ in range(3)]
    refusal(check.validate, strangers[0])
    clock.advance(9.9)
    refusal(check.validate, strangers[1])
    assert issuer.jwks_fetches == 1
    clock.advance(0.1)
    refusal(check.validate, strangers[2])
    assert issuer.jwks_fetches == 2


def test_a_key_rotated_in_during_the_throttle_is_accepted_once_it_ends(
        issuer: OidcIssuer, clock: FakeClock) -> None:
    check = validator(issuer, clock)
    check.validate(issuer.mint())
    issuer.rotate()
    token = issuer.mint()
    assert "unknown kid" in refusal(check.validate, token).detail
    clock.advance(10)
    assert check.validate(token).username == "alice"


def test_a_withdrawn_key_stops_verifying_once_the_cache_is_refreshed(
        issuer: OidcIssuer, clock: FakeClock) -> None:
    check = validator(issuer, clock, keys_max_age=60)
    old_token = issuer.mint()
    check.validate(old_token)
    issuer.rotate(keep_old=False)
    clock.advance(61)
    assert "unknown kid" in refusal(check.validate, old_token).detail
    assert check.validate(issuer.mint()).username == "alice"


def test_issuer_down_and_no_cached_key_fails_closed_with_503(issuer: OidcIssuer) -> None:
    token = issuer.mint()
    with issuer.outage():
        error = refusal(validator(issuer).validate, token, ServiceUnavailable)
    assert error.status == 503
    assert issuer.issuer in error.detail and "retry" in error.detail


def test_issuer_down_with_a_cached_key_still_validates(issuer: OidcIssuer,
                                                       clock: FakeClock) -> None:
    check = validator(issuer, clock, keys_max_age=60)
    token = issuer.mint()
    check.validate(token)
    with issuer.outage():
        clock.advance(61)  # the keys are due for a refresh, which fails
        assert check.validate(token).username == "alice"
        assert check.validate(issuer.mint()).username == "alice"


def test_validation_recovers_when_the_issuer_comes_back(issuer: OidcIssuer,
                                                        clock: FakeClock) -> None:
    check, token = validator(issuer, clock), issuer.mint()
    with issuer.outage():
        refusal(check.validate, token, ServiceUnavailable)
    clock.advance(10)
    assert check.validate(token).username == "alice"


def test_refresh_keys_reports_an_unreachable_issuer(issuer: OidcIssuer) -> None:
    with issuer.outage(), pytest.raises(ServiceUnavailable):
        validator(issuer).refresh_keys()
    assert validator(issuer).refresh_keys() == 1


def test_a_discovery_document_naming_another_issuer_is_not_trusted() -> None:
    def fetch(url: str) -> Mapping[str, Any]:
        return {"issuer": "https://evil.example/realms/atrium", "jwks_uri": "https://evil/jwks"}

    source = OidcDiscovery("https://idp.example/realms/atrium", fetch)
    with pytest.raises(IssuerUnreachable, match="names issuer"):
        source.fetch_jwks()


def test_jwks_entries_that_cannot_sign_are_ignored(issuer: OidcIssuer) -> None:
    good = dict(issuer.key().public_jwk)
    jwks = {"keys": [
        {**good, "kid": "enc", "use": "enc"},
        {"kid": "hmac", "kty": "oct", "k": "c2VjcmV0", "alg": "HS256"},
        {**good, "kid": "mislabelled", "alg": "ES256"},
        "not a key",
        good,
    ]}
    check = TokenValidator(issuer.issuer, "atrium", "organization", StaticJwks(jwks))
    assert check.validate(issuer.mint()).username == "alice"
    for kid in ("enc", "hmac", "mislabelled"):
        token = issuer.key().sign(issuer.claims(), {"kid": kid})
        assert "unknown kid" in refusal(check.validate, token).detail


# -- principal: roles and organization -------------------------------------------------


def test_roles_come_from_the_realm_and_the_audience_client_only(issuer: OidcIssuer) -> None:
    token = issuer.mint(
        realm_access={"roles": ["researcher", "offline_access", "default-roles-atrium"]},
        resource_access={"atrium": {"roles": ["annotator"]},
                         "account": {"roles": ["admin", "manage-account"]}})
    principal = validator(issuer).validate(token)
    assert principal.roles == {"researcher", "annotator"}
    assert not principal.can_read_phi and principal.can(Permission.ANNOTATE)


def test_malformed_role_claims_grant_nothing(issuer: OidcIssuer) -> None:
    token = issuer.mint(realm_access={"roles": "admin"}, resource_access=["admin"])
    assert validator(issuer).validate(token).roles == frozenset()


@pytest.mark.parametrize(("value", "organization"), [
    ("Hospital A", "Hospital A"), (["Hospital A"], "Hospital A"), ([], None), (OMIT, None),
    (42, None), (" Hospital B ", "Hospital B"),
])
def test_the_organization_claim_may_be_a_string_or_a_one_element_list(
        issuer: OidcIssuer, value: Any, organization: str | None) -> None:
    token = issuer.mint(organization=value)
    assert validator(issuer).validate(token).organization == organization


def test_a_token_naming_several_organizations_is_forbidden(issuer: OidcIssuer) -> None:
    token = issuer.mint(organization=["Hospital A", "Hospital B"])
    assert "exactly one" in refusal(validator(issuer).validate, token, Forbidden).detail


def test_the_organization_claim_name_is_configurable() -> None:
    with OidcIssuer(org_claim="tenant") as issuer:
        check = TokenValidator(issuer.issuer, "atrium", "tenant",
                               OidcDiscovery(issuer.issuer, http_fetch_json()))
        assert check.validate(issuer.mint()).organization == "Hospital A"


def test_the_username_falls_back_to_sub() -> None:
    claims = {"sub": "f00", "iss": "i", "exp": 1, "preferred_username": ""}
    assert principal_from_claims(claims, "atrium").username == "f00"


# -- permissions (SPEC §7) -------------------------------------------------------------


def principal_with(*roles: str) -> Principal:
    return Principal("sub", "user", "iss", 0.0, roles=frozenset(roles), organization="Org")


@pytest.mark.parametrize(("role", "allowed", "refused"), [
    ("admin", set(Permission), set()),
    ("clinician", {Permission.READ_PHI, Permission.DEIDENTIFY, Permission.UPLOAD,
                   Permission.ANNOTATE}, {Permission.READ_AUDIT, Permission.ORTHANC_ADMIN}),
    ("researcher", {Permission.READ_DEIDENTIFIED, Permission.ANNOTATE},
     {Permission.READ_PHI, Permission.UPLOAD, Permission.REGISTER_MODELS}),
    ("annotator", {Permission.READ_DEIDENTIFIED, Permission.ANNOTATE}, {Permission.READ_PHI}),
    ("ml-engineer", {Permission.REGISTER_MODELS, Permission.WRITE_PREDICTIONS,
                     Permission.READ_DEIDENTIFIED}, {Permission.READ_PHI, Permission.ANNOTATE}),
    ("auditor", {Permission.READ_AUDIT}, set(Permission) - {Permission.READ_AUDIT}),
])
def test_each_role_grants_what_the_security_model_says(role: str, allowed: set[Permission],
                                                       refused: set[Permission]) -> None:
    principal = principal_with(role)
    assert all(principal.can(permission) for permission in allowed)
    assert not any(principal.can(permission) for permission in refused)


def test_require_names_the_roles_that_would_grant_the_permission() -> None:
    with pytest.raises(Forbidden, match="admin, clinician"):
        principal_with("researcher").require(Permission.READ_PHI)
    principal_with("researcher", "clinician").require(Permission.READ_PHI)
    assert principal_with("auditor").has_any("admin", "auditor")
    assert not principal_with("auditor").has_any("admin")


# -- wiring ----------------------------------------------------------------------------


def test_validator_for_uses_the_configured_issuer(issuer: OidcIssuer, tmp_path: Path) -> None:
    settings = load_settings({}, {"ATRIUM_OIDC_ISSUER": issuer.issuer, "ATRIUM_DATA_DIR":
                                  str(tmp_path), "ATRIUM_DATABASE_URL": "postgresql://x@h/db"})
    assert validator_for(settings).validate(issuer.mint()).organization == "Hospital A"
    assert not (tmp_path / "keys").exists()


# -- remembered signatures -------------------------------------------------------------


def test_a_tokens_signature_is_verified_once_and_its_claims_every_time(
        issuer: OidcIssuer, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    import atrium.auth.tokens as tokens

    verified: list[str] = []
    real_decode = tokens.jwt.decode

    def counting_decode(token: str, *args: Any, **kwargs: Any) -> Any:
        verified.append(token)
        return real_decode(token, *args, **kwargs)

    monkeypatch.setattr(tokens.jwt, "decode", counting_decode)
    check, token = validator(issuer, clock), issuer.mint()
    for _ in range(3):
        assert check.validate(token).username == "alice"
    assert verified == [token]
    clock.advance(300 + 31)
    assert "expired" in refusal(check.validate, token).detail, "remembered, yet expired"


def test_a_remembered_token_vouches_for_no_other_signature(issuer: OidcIssuer) -> None:
    check, token = validator(issuer), issuer.mint()
    check.validate(token)
    head, payload, signature = token.split(".")
    forged = ".".join([head, payload, signature[:-6] + ("AAAAAA" if signature[-6:] != "AAAAAA"
                                                         else "BBBBBB")])
    assert "signature" in refusal(check.validate, forged).detail


def test_the_memory_of_verified_tokens_is_bounded(issuer: OidcIssuer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import atrium.auth.tokens as tokens

    monkeypatch.setattr(tokens, "VERIFIED_TOKENS", 3)
    check = validator(issuer)
    for n in range(5):
        check.validate(issuer.token_for(f"user{n}", ["clinician"], "Hospital A"))
    assert len(check._verified) == 3
