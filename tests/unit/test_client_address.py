"""The client's address through trusted proxies (atrium.auth.client_address)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from atrium.auth.client_address import TrustedProxies
from atrium.settings import SettingsError, load_settings

BALANCER = TrustedProxies.parse(["10.0.0.0/8", "::1", "127.0.0.1"])


def xff(value: str) -> dict[str, str]:
    return {"x-forwarded-for": value}


def test_without_trusted_proxies_the_connection_is_the_client() -> None:
    assert TrustedProxies().client("10.0.0.5", xff("203.0.113.7")) == "10.0.0.5"


def test_a_header_from_a_peer_that_is_not_trusted_is_ignored() -> None:
    # Anyone can send X-Forwarded-For: only a trusted proxy's counts.
    assert BALANCER.client("198.51.100.9", xff("127.0.0.1")) == "198.51.100.9"


def test_the_right_most_hop_that_is_not_a_trusted_proxy_is_the_client() -> None:
    assert BALANCER.client("10.0.0.5", xff("203.0.113.7")) == "203.0.113.7"
    # The viewer's nginx (10.0.0.9) before the balancer: skipped, it is trusted.
    assert BALANCER.client("10.0.0.5", xff("203.0.113.7, 10.0.0.9")) == "203.0.113.7"
    # What the client wrote itself, left of the first untrusted hop, proves nothing.
    assert BALANCER.client("10.0.0.5", xff("1.1.1.1, 203.0.113.7, 10.0.0.9")) == "203.0.113.7"


def test_ports_brackets_and_mapped_addresses_are_read() -> None:
    assert BALANCER.client("10.0.0.5", xff("203.0.113.7:51234")) == "203.0.113.7"
    assert BALANCER.client("::1", xff("[2001:db8::7]:443")) == "2001:db8::7"
    assert BALANCER.client("::1", xff("2001:db8::7")) == "2001:db8::7"
    assert BALANCER.client("::ffff:10.0.0.5", xff("203.0.113.7")) == "203.0.113.7"


def test_a_hop_that_is_not_an_address_stops_at_the_proxy_that_reported_it() -> None:
    assert BALANCER.client("10.0.0.5", xff("203.0.113.7, unknown")) == "10.0.0.5"
    assert BALANCER.client("10.0.0.5", xff("203.0.113.7, garbage, 10.0.0.9")) == "10.0.0.9"


def test_only_trusted_hops_give_the_left_most_and_no_header_the_peer() -> None:
    assert BALANCER.client("10.0.0.5", xff("10.1.2.3, 10.0.0.9")) == "10.1.2.3"
    assert BALANCER.client("10.0.0.5", {}) == "10.0.0.5"
    assert BALANCER.client("10.0.0.5", xff(" ")) == "10.0.0.5"


def test_a_peer_that_is_not_an_address_is_kept_as_it_is() -> None:
    assert BALANCER.client("", xff("203.0.113.7")) == ""


@pytest.mark.parametrize(("config", "environ", "trusted", "not_trusted"), [
    ({"TrustedProxies": ["10.0.0.0/8", "::1"]}, {}, "10.2.3.4", "11.0.0.1"),
    ({}, {"ATRIUM_TRUSTED_PROXIES": "172.16.0.0/12, 127.0.0.1"}, "172.20.0.3", "10.0.0.1"),
    ({"TrustedProxies": ["10.0.0.0/8"]}, {"ATRIUM_TRUSTED_PROXIES": "192.168.1.1"},
     "192.168.1.1", "10.0.0.1"),
])
def test_settings_read_the_list_from_the_configuration_or_the_environment(
        tmp_path: Path, config: dict[str, object], environ: dict[str, str], trusted: str,
        not_trusted: str) -> None:
    settings = load_settings({"Atrium": {"DatabaseUrl": "postgresql://x@h/db", **config}},
                             environ, cwd=tmp_path)
    assert settings.trusted_proxies.trusts(ipaddress.ip_address(trusted))
    assert not settings.trusted_proxies.trusts(ipaddress.ip_address(not_trusted))


@pytest.mark.parametrize("value", ["10.0.0.0/8, balancer", '["10.0.0.0/33"]', "[1, 2]", "[oops"])
def test_a_wrong_entry_is_a_settings_error_naming_it(tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError, match="ATRIUM_TRUSTED_PROXIES"):
        load_settings({"Atrium": {"DatabaseUrl": "postgresql://x@h/db"}},
                      {"ATRIUM_TRUSTED_PROXIES": value}, cwd=tmp_path)


def test_none_trusted_by_default(tmp_path: Path) -> None:
    settings = load_settings({"Atrium": {"DatabaseUrl": "postgresql://x@h/db"}}, {},
                             cwd=tmp_path)
    assert settings.trusted_proxies == TrustedProxies()
