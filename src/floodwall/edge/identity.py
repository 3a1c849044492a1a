"""Who is the client: the socket peer, or the address a trusted proxy forwarded (RFC 7239 or XFF)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class TrustedProxies:
    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)

    def __contains__(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.networks)


def _parse(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):  # [v6]:port in Forwarded
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _forwarded_chain(scope: Scope) -> list[str]:
    """Hop addresses from Forwarded (preferred, RFC 7239) or X-Forwarded-For, leftmost first."""
    forwarded: list[str] = []
    xff: list[str] = []
    for name, value in scope.get("headers", ()):
        if name == b"forwarded":
            for element in value.decode("latin-1").split(","):
                for pair in element.split(";"):
                    key, _, val = pair.partition("=")
                    if key.strip().lower() == "for":
                        forwarded.append(val)
        elif name == b"x-forwarded-for":
            xff.extend(value.decode("latin-1").split(","))
    return forwarded or xff


def address_keys(text: str, ipv4_prefix: int = 24, ipv6_prefix: int = 64) -> tuple[int, int]:
    """An address as limits key it: the address and its network (IPv4 /24, IPv6 /64 by default) as ints."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:  # a unix socket or a test transport
        return 0, 0
    bits, prefix = (32, ipv4_prefix) if address.version == 4 else (128, ipv6_prefix)
    value = int(address)
    return value, value & (((1 << prefix) - 1) << (bits - prefix))


def client_address(scope: Scope, trusted: TrustedProxies) -> str:
    """The client's address as text; walks forwarded hops right to left, skipping trusted ones."""
    peer = scope.get("client")
    if not peer:
        return "unknown"
    if not trusted.networks:
        return str(peer[0])  # nobody is trusted to forward: the peer is the client, no parsing needed
    address = _parse(peer[0])
    if address is None:
        return str(peer[0])
    if address not in trusted:
        return str(address)
    for hop in reversed(_forwarded_chain(scope)):
        hop_address = _parse(hop)
        if hop_address is None:
            # an unparseable hop (e.g. "unknown") ends what can be believed
            break
        address = hop_address
        if address not in trusted:
            break
    return str(address)


def is_https(scope: Scope, trusted: TrustedProxies) -> bool:
    if scope.get("scheme") == "https":
        return True
    peer = scope.get("client")
    if not peer or _parse(peer[0]) not in trusted:
        return False
    for name, value in scope.get("headers", ()):
        if name == b"x-forwarded-proto":
            proto: str = value.decode("latin-1").split(",")[0].strip().lower()
            return proto == "https"
        if name == b"forwarded" and b"proto=https" in value.lower():
            return True
    return False
