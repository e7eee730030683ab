"""The address a request came from, through the proxies the deployment trusts.

Behind a load balancer (the compose deployment's HAProxy, the viewer's nginx) every
connection Orthanc accepts is the balancer's, so an audit row written from the
socket's address would name the balancer for every user. A proxy adds the address
it heard from to ``X-Forwarded-For``; the right-most hops of that list were added
by proxies Atrium trusts, the first one from the right that is not a trusted proxy
is the client. Everything to its left was written by the client itself and proves
nothing, and a peer that is not a trusted proxy has its header ignored entirely:
anyone can send one.

Only the audit and checks about who a person is use this address. Whether a
connection is Atrium's own (the internal credential, ``atrium.auth.internal``)
is decided on the socket's address, never on a header.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

__all__ = ["TrustedProxies", "is_loopback"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=1024)
def is_loopback(host_or_ip: str) -> bool:
    """Whether an address (or ``localhost``) is this machine's loopback, also as a
    dual-stack server may report it (``::ffff:127.0.0.1``). Cached: the request
    filter asks on every request, and a node hears from few distinct addresses."""
    host = host_or_ip.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _hop(text: str) -> Address | None:
    """One ``X-Forwarded-For`` entry as an address: ``1.2.3.4``, ``1.2.3.4:5678``,
    ``2001:db8::1`` or ``[2001:db8::1]:5678``; None for anything else ("unknown",
    an obfuscated name, garbage)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:10.0.0.1 is 10.0.0.1
    return mapped or address


@dataclass(frozen=True)
class TrustedProxies:
    """The networks whose connections are proxies that tell the truth in
    ``X-Forwarded-For``; none by default."""

    networks: tuple[Network, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """From addresses and CIDR blocks (``10.0.0.0/8``, ``::1``). Raises
        ValueError naming the first entry that is neither."""
        networks = []
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                raise ValueError(f"{entry.strip()!r} is not an IP address or CIDR block"
                                 ) from None
        return cls(tuple(networks))

    def trusts(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def client(self, peer: str, headers: Mapping[str, str]) -> str:
        """The client's address for a connection from ``peer`` with these headers
        (lower-case names): ``peer`` itself unless it is a trusted proxy; else the
        right-most ``X-Forwarded-For`` hop that is not one. A hop that is not an
        address stops the walk at the proxy that reported it, and a list of trusted
        hops only gives its left-most."""
        if not self.networks:
            return peer
        current = _hop(peer)
        if current is None or not self.trusts(current):
            return peer
        forwarded = headers.get("x-forwarded-for", "")
        for entry in reversed(forwarded.split(",") if forwarded.strip() else []):
            hop = _hop(entry)
            if hop is None:
                break
            current = hop
            if not self.trusts(hop):
                break
        return str(current)
