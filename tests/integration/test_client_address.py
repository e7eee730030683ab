"""Audit rows name the client behind trusted proxies, and only behind them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.integration.conftest import AtriumUnderTest

pytestmark = pytest.mark.integration

CLIENT = "198.51.100.23"


def last_address(under_test: AtriumUnderTest, action: str) -> str:
    return str(under_test.scalar(
        "SELECT host(ip_address) FROM audit_log WHERE action = %s ORDER BY seq DESC LIMIT 1",
        (action,)))


def test_behind_a_trusted_proxy_the_forwarded_client_is_recorded(
        atrium_factory: Callable[..., AtriumUnderTest]) -> None:
    behind = atrium_factory(TrustedProxies=["127.0.0.1", "::1"])
    forwarded = {"X-Forwarded-For": f"203.0.113.99, {CLIENT}"}
    me = requests.get(f"{behind.url}/api/me", timeout=10, headers={**behind.auth(), **forwarded})
    assert me.status_code == 200
    assert last_address(behind, "GET /api/me") == CLIENT
    # Orthanc's own API, audited by the request filter: the same address.
    system = requests.get(f"{behind.url}/system", timeout=10,
                          headers={**behind.auth(), **forwarded})
    assert system.status_code == 200
    assert last_address(behind, "GET orthanc") == CLIENT
    # Whether a request is Atrium's own is decided on the connection, not the header.
    internal = requests.get(f"{behind.url}/system", timeout=10,
                            headers={**behind.internal_headers, **forwarded})
    assert internal.status_code == 200
    # The dev sign-in answers this machine only: a client forwarded from elsewhere
    # is refused, as it would be without the proxy.
    discovery = f"{behind.url}/api/dev-login/.well-known/openid-configuration"
    assert requests.get(discovery, timeout=10).status_code == 200
    refused = requests.get(discovery, timeout=10, headers=forwarded)
    assert refused.status_code == 403
    assert refused.headers["Content-Type"].startswith("application/problem+json")


def test_without_trusted_proxies_a_forwarded_header_is_ignored(atrium: AtriumUnderTest
                                                              ) -> None:
    spoofed: dict[str, Any] = {"X-Forwarded-For": CLIENT}
    me = requests.get(f"{atrium.url}/api/me", timeout=10, headers={**atrium.auth(), **spoofed})
    assert me.status_code == 200
    assert last_address(atrium, "GET /api/me") == "127.0.0.1"
