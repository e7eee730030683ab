"""The dev issuer's sign-in for the viewers: authorization code with PKCE, refresh
tokens, loopback only; its tokens are the ones Atrium's validator accepts. And the
request filter's share: /viewer/ passes without a token, for plain paths only."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest
from jose import jwt

from atrium.auth.client_address import is_loopback
from atrium.auth.dev_issuer import DEV_ISSUER, DevLogin, LoginError, load_or_create
from atrium.auth.request_filter import route_kind
from atrium.auth.tokens import validator_for
from atrium.settings import load_settings

VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijklmnop"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()
                                     ).rstrip(b"=").decode()
REDIRECT = "http://127.0.0.1:8042/viewer/callback"


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def login(data_dir: Path, clock: Clock) -> DevLogin:
    return DevLogin(load_or_create(data_dir), clock=clock)


def code_for(login: DevLogin, **overrides: str) -> str:
    request = {"username": "ana", "organization": "North", "role": "clinician",
               "client_id": "atrium", "redirect_uri": REDIRECT, "code_challenge": CHALLENGE,
               "code_challenge_method": "S256", "nonce": "n-1", **overrides}
    return login.authorize(**request)


def test_a_code_and_its_verifier_give_tokens_atrium_accepts(login: DevLogin,
                                                            data_dir: Path) -> None:
    tokens = login.redeem(code=code_for(login), code_verifier=VERIFIER, client_id="atrium",
                          redirect_uri=REDIRECT)
    settings = load_settings({}, {"ATRIUM_DATA_DIR": str(data_dir),
                                  "ATRIUM_DATABASE_URL": "postgresql://a@127.0.0.1/a"})
    principal = validator_for(settings).validate(tokens["access_token"])
    assert principal.organization == "North" and "clinician" in principal.roles
    identity = jwt.get_unverified_claims(tokens["id_token"])
    assert identity["iss"] == DEV_ISSUER and identity["aud"] == "atrium"
    assert identity["nonce"] == "n-1"
    assert tokens["token_type"] == "Bearer" and tokens["expires_in"] > 0


def test_a_code_is_spent_once_and_only_with_its_verifier(login: DevLogin) -> None:
    code = code_for(login)
    with pytest.raises(LoginError, match="verifier") as wrong:
        login.redeem(code=code, code_verifier="w" * 50, client_id="atrium",
                     redirect_uri=REDIRECT)
    assert wrong.value.error == "invalid_grant"
    with pytest.raises(LoginError, match="used"):  # spent by the failed attempt
        login.redeem(code=code, code_verifier=VERIFIER, client_id="atrium",
                     redirect_uri=REDIRECT)


def test_a_code_expires(login: DevLogin, clock: Clock) -> None:
    code = code_for(login)
    clock.now += 121
    with pytest.raises(LoginError, match="expired"):
        login.redeem(code=code, code_verifier=VERIFIER, client_id="atrium",
                     redirect_uri=REDIRECT)


def test_a_code_is_for_the_client_and_address_it_was_issued_to(login: DevLogin) -> None:
    with pytest.raises(LoginError, match="another client"):
        login.redeem(code=code_for(login), code_verifier=VERIFIER, client_id="atrium",
                     redirect_uri="http://127.0.0.1:8042/elsewhere")


@pytest.mark.parametrize("overrides", [
    {"redirect_uri": "https://evil.example/callback"},
    {"redirect_uri": "javascript:alert(1)"},
    {"code_challenge_method": "plain"},
    {"code_challenge": "short"},
    {"role": "superuser"},
    {"organization": " "},
])
def test_a_sign_in_that_cannot_be_honoured_is_refused(login: DevLogin,
                                                      overrides: dict[str, str]) -> None:
    with pytest.raises(LoginError):
        code_for(login, **overrides)


def test_refresh_tokens_rotate(login: DevLogin) -> None:
    first = login.redeem(code=code_for(login), code_verifier=VERIFIER, client_id="atrium",
                         redirect_uri=REDIRECT)
    second = login.refresh(refresh_token=first["refresh_token"], client_id="atrium")
    assert second["access_token"] != first["access_token"]
    with pytest.raises(LoginError):
        login.refresh(refresh_token=first["refresh_token"], client_id="atrium")


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.5.0.1", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("::ffff:127.0.0.1", True), ("10.0.0.1", False),
    ("example.org", False), ("", False)])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_browser_session_names_its_user_until_it_ends_or_expires(login: DevLogin,
                                                                   clock: Clock) -> None:
    token = login.start_session("ana", "North", "clinician")
    assert login.session(token) == ("ana", "North", "clinician")
    assert login.session("forged") is None
    login.end_session(token)
    assert login.session(token) is None
    later = login.start_session("ana", "North", "clinician")
    clock.now += 12 * 3600 + 1
    assert login.session(later) is None


@pytest.mark.parametrize(("uri", "kind"), [
    ("/viewer", "viewer"), ("/viewer/", "viewer"), ("/viewer/app.bundle.0f61.js", "viewer"),
    ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "viewer"), ("/viewer/../instances", "orthanc"),
    ("/viewer/%2e%2e/instances", "orthanc"), ("/viewer/.hidden", "orthanc"),
    ("/viewerx/a", "orthanc")])
def test_only_plain_viewer_paths_pass_the_filter_without_a_token(uri: str, kind: str) -> None:
    assert route_kind(uri, "/dicom-web/", "/plugin-dicomweb/").value == kind
