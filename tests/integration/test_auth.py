"""Authentication on every kind of route Orthanc serves, against an Atrium that
trusts a Keycloak-like issuer on loopback (discovery and JWKS over HTTP).

Route kinds: Atrium's API and the DICOMweb gateway (401 with a problem document),
Orthanc's native REST API (its request filter can only refuse: 403).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from atrium.auth.tokens import REFETCH_INTERVAL_SECONDS
from atrium.devenv import LocalCluster
from tests.integration.conftest import AtriumUnderTest, _start
from tests.support.oidc_issuer import OidcIssuer, malicious_tokens

ATRIUM_ROUTE = "/api/me"
ORTHANC_ROUTE = "/instances"
DICOMWEB_ROUTE = "/dicom-web/studies"


@pytest.fixture(scope="module")
def secured(workspace: Path, pg_cluster: LocalCluster, oidc_issuer_session: OidcIssuer
            ) -> Iterator[AtriumUnderTest]:
    under_test = _start(workspace, pg_cluster, pg_cluster, OidcIssuer=oidc_issuer_session.issuer)
    yield under_test
    under_test.orthanc.stop()


def get(under_test: AtriumUnderTest, path: str, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return requests.get(f"{under_test.url}{path}", headers=headers, timeout=30)


def refused_rows(under_test: AtriumUnderTest) -> int:
    return int(under_test.scalar(
        "SELECT count(*) FROM audit_log WHERE (details->>'status')::int IN (401, 403)"))


def test_a_missing_token_is_a_401_problem_with_a_bearer_challenge(
        secured: AtriumUnderTest) -> None:
    before = refused_rows(secured)
    response = get(secured, ATRIUM_ROUTE, None)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.headers["Content-Type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 401 and problem["title"] and problem["detail"]
    assert get(secured, ORTHANC_ROUTE, None).status_code == 403
    assert refused_rows(secured) == before + 2


def _token_names() -> list[str]:
    with OidcIssuer() as issuer:
        return sorted(malicious_tokens(issuer))


@pytest.mark.parametrize("name", _token_names())
def test_every_bad_token_is_refused_on_every_route_kind(
        secured: AtriumUnderTest, oidc_issuer_session: OidcIssuer, name: str) -> None:
    token = malicious_tokens(oidc_issuer_session)[name]
    api = get(secured, ATRIUM_ROUTE, token)
    assert api.status_code == 401, (name, api.text)
    assert api.headers["WWW-Authenticate"].startswith("Bearer")
    assert token[:40] not in api.text  # the problem never echoes the token
    assert get(secured, ORTHANC_ROUTE, token).status_code == 403, name
    dicomweb = get(secured, DICOMWEB_ROUTE, token)
    assert dicomweb.status_code == 401, (name, dicomweb.text)
    assert dicomweb.headers["WWW-Authenticate"].startswith("Bearer")


def test_a_valid_token_reaches_what_its_role_allows(
        secured: AtriumUnderTest, oidc_issuer_session: OidcIssuer) -> None:
    admin = oidc_issuer_session.token_for("ada", ["admin"], "Default")
    researcher = oidc_issuer_session.token_for("rob", ["researcher"], "Hospital A")
    me = get(secured, ATRIUM_ROUTE, researcher)
    assert me.status_code == 200, me.text
    assert me.json()["username"] == "rob" and me.json()["roles"] == ["researcher"]
    assert me.json()["organization_name"] == "Hospital A"
    assert get(secured, ORTHANC_ROUTE, admin).status_code == 200
    assert get(secured, ORTHANC_ROUTE, researcher).status_code == 403
    assert get(secured, "/api/mirror/status", researcher).status_code == 403
    assert get(secured, "/api/mirror/status", admin).status_code == 200


def test_users_follow_their_claims(secured: AtriumUnderTest,
                                   oidc_issuer_session: OidcIssuer) -> None:
    first = oidc_issuer_session.token_for("carla", ["clinician"], "Hospital A",
                                          email="carla@a.example")
    assert get(secured, ATRIUM_ROUTE, first).json()["email"] == "carla@a.example"
    again = oidc_issuer_session.token_for("carla", ["clinician", "annotator"], "Hospital A",
                                          email="carla@b.example")
    body = get(secured, ATRIUM_ROUTE, again).json()
    assert body["email"] == "carla@b.example"
    assert body["roles"] == ["annotator", "clinician"]
    assert secured.scalar("SELECT count(*) FROM users WHERE username = 'carla'") == 1


def test_a_rotated_key_is_picked_up_without_restart(
        secured: AtriumUnderTest, oidc_issuer_session: OidcIssuer) -> None:
    old = oidc_issuer_session.token_for("dan", ["clinician"], "Hospital A")
    assert get(secured, ATRIUM_ROUTE, old).status_code == 200
    oidc_issuer_session.rotate(keep_old=False)
    new = oidc_issuer_session.token_for("dan", ["clinician"], "Hospital A")
    # An unknown key id makes Atrium refetch the JWKS at most once per 10 s (other
    # tests here have just used that chance with made-up key ids).
    time.sleep(REFETCH_INTERVAL_SECONDS + 0.5)
    assert get(secured, ATRIUM_ROUTE, new).status_code == 200
    assert get(secured, ORTHANC_ROUTE, oidc_issuer_session.token_for(
        "dan", ["admin"], "Default")).status_code == 200


def test_an_unreachable_issuer_fails_closed(workspace: Path, pg_cluster: LocalCluster,
                                            oidc_issuer: OidcIssuer) -> None:
    token = oidc_issuer.token_for("eve", ["admin"], "Hospital A")
    with oidc_issuer.outage():
        under_test = _start(workspace, pg_cluster, pg_cluster, OidcIssuer=oidc_issuer.issuer)
        try:
            response = get(under_test, ATRIUM_ROUTE, token)
            assert response.status_code == 503, response.text
            assert response.headers["Content-Type"].startswith("application/problem+json")
            assert get(under_test, ORTHANC_ROUTE, token).status_code == 403
        finally:
            under_test.orthanc.stop()
