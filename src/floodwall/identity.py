"""Who is the client, and which network it is in: the socket peer, or the address the trusted proxy in front
wrote in the one header the operator names (`server.forwarded_header`), normalised once (IPv4-mapped IPv6
made IPv4, scope ids dropped) before any key, list, ban or log sees it.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable

from starlette.types import Scope

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FORWARDED_HEADERS = ("x-forwarded-for", "forwarded")
MAX_HOPS = 32  # hops read from the right of a forwarding header: no proxy chain is longer
MAX_ADDRESS = 64  # characters of one hop read: "[v6%scope]:port" fits


class TrustedProxies:
    """The proxies in front whose forwarding header is believed, and which header that is: the one they
    write (nginx, HAProxy and most load balancers write X-Forwarded-For and pass a client's own Forwarded
    through; RFC 7239 `forwarded` where the proxy writes that one)."""

    def __init__(self, cidrs: Iterable[str], header: str = "x-forwarded-for") -> None:
        if header not in FORWARDED_HEADERS:
            raise ValueError(f"the forwarding header must be one of {', '.join(FORWARDED_HEADERS)}")
        self.networks: tuple[IPNetwork, ...] = tuple(normalised_network(ipaddress.ip_network(c, strict=False))
                                                     for c in cidrs)
        self.header = header.encode()

    def __contains__(self, address: IPAddress | None) -> bool:
        return address is not None and any(address in net for net in self.networks)


_NAT64 = int(ipaddress.IPv6Address("64:ff9b::")) >> 32  # RFC 6052's well-known prefix, 64:ff9b::/96


def normalised(address: IPAddress) -> IPAddress:
    """One address, one form: ::ffff:a.b.c.d is the IPv4 client a.b.c.d (a dual-stack socket's view of it),
    so is 64:ff9b::a.b.c.d for a global a.b.c.d (an IPv4 client translated to reach an IPv6-only server; RFC
    6052 forbids the prefix for private and loopback addresses, which would otherwise open what is kept for
    this machine), and fe80::1%eth0 is fe80::1 (the scope is this machine's, not the client's)."""
    if address.version == 6:
        mapped = address.ipv4_mapped
        if mapped is not None:
            return mapped
        value = int(address)
        if value >> 32 == _NAT64:
            translated = ipaddress.IPv4Address(value & 0xFFFFFFFF)
            if translated.is_global:
                return translated
        if address.scope_id is not None:
            return ipaddress.IPv6Address(value)
    return address


def normalised_network(network: IPNetwork) -> IPNetwork:
    """A list entry, ban or trusted proxy in the clients' one form: an IPv4-mapped network is its IPv4
    network (RFC 6052 networks stay as written: a /96 of them would otherwise be every IPv4 address)."""
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen >= 96:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network(f"{mapped}/{network.prefixlen - 96}")
    return network


def parse_address(text: str) -> IPAddress | None:
    """An address from a header or a socket: bare, "v4:port", "[v6]:port", quoted; normalised."""
    text = text[:MAX_ADDRESS].strip().strip('"')
    if text.startswith("["):  # [v6]:port in Forwarded
        text = text[1 : text.find("]")] if "]" in text else text[1:]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        return normalised(ipaddress.ip_address(text))
    except ValueError:
        return None


@functools.lru_cache(maxsize=65_536)
def _peer_text(peer: str) -> str:
    address = parse_address(peer)
    return str(address) if address is not None else peer


def _hops(scope: Scope, header: bytes) -> list[tuple[str, str]]:
    """(address, scheme) per hop of the named header, left to right, at most MAX_HOPS from the right; for
    X-Forwarded-For, the schemes come from X-Forwarded-Proto, counted from the right as well."""
    values = [value for name, value in scope.get("headers", ()) if name == header]
    if not values:
        return []
    elements = b",".join(values).decode("latin-1").rsplit(",", MAX_HOPS)[-MAX_HOPS:]
    if header == b"forwarded":
        hops = []
        for element in elements:
            address, scheme = "", ""
            for pair in element.split(";", 8)[:8]:
                key, _, value = pair.partition("=")
                key = key.strip().lower()
                if key == "for":
                    address = value
                elif key == "proto":
                    scheme = value.strip().strip('"').lower()
            hops.append((address, scheme))
        return hops
    protos = [value for name, value in scope.get("headers", ()) if name == b"x-forwarded-proto"]
    schemes = b",".join(protos).decode("latin-1").rsplit(",", MAX_HOPS)[-MAX_HOPS:] if protos else []
    # each proxy that appends writes its peer's address and the scheme it was reached by: hop i from the right
    # pairs with scheme i from the right; a proxy that overwrites leaves one scheme, its own
    found = []
    for i, address in enumerate(elements):
        right = len(elements) - 1 - i
        scheme = schemes[max(0, len(schemes) - 1 - right)].strip().lower() if schemes else ""
        found.append((address, scheme))
    return found


def client(scope: Scope, trusted: TrustedProxies) -> tuple[str, str]:
    """The client's address as text, and the scheme it reached us by ("https" or "http"): the hops of the
    trusted header walked right to left, skipping trusted proxies; the scheme from the same hop."""
    scheme = "https" if scope.get("scheme") == "https" else "http"
    peer = scope.get("client")
    if not peer:
        return "unknown", scheme
    text = str(peer[0])
    if not trusted.networks:  # nobody is trusted to forward: the peer is the client
        return (text if ":" not in text else _peer_text(text)), scheme
    address = parse_address(text)
    if address is None:
        return text, scheme  # a unix socket or a test transport
    if address not in trusted:
        return str(address), scheme
    hops = _hops(scope, trusted.header)
    hop_scheme = ""
    for hop, written in reversed(hops):
        hop_scheme = written  # the scheme written with the address believed
        hop_address = parse_address(hop)
        if hop_address is None:
            break  # an unparseable hop ("unknown", a name) ends what can be believed
        address = hop_address
        if address not in trusted:
            break
    if not hops:  # a trusted proxy that forwards no address, only perhaps the scheme
        hop_scheme = _forwarded_scheme_alone(scope, trusted.header)
    return str(address), "https" if scheme == "https" or hop_scheme == "https" else "http"


def _forwarded_scheme_alone(scope: Scope, header: bytes) -> str:
    name = b"forwarded" if header == b"forwarded" else b"x-forwarded-proto"
    for key, value in scope.get("headers", ()):
        if key == name:
            text = value.decode("latin-1").rsplit(",", 1)[-1].lower()
            return "https" if ("proto=https" in text if name == b"forwarded" else text.strip() == "https") else ""
    return ""


def client_address(scope: Scope, trusted: TrustedProxies) -> str:
    return client(scope, trusted)[0]


def is_https(scope: Scope, trusted: TrustedProxies) -> bool:
    return client(scope, trusted)[1] == "https"


class Networks:
    """How limits group clients, as ints: the subscriber (an IPv4 address; for IPv6, the /64 one customer of a
    provider is given, `edge.ipv6_subscriber_prefix`: rotating addresses inside it is free, so per-address
    rules, probe counts and bans key on it, as Mastodon's throttles do) and the network (`edge.ipv4_prefix`,
    `edge.ipv6_prefix`). One helper for every part that groups clients (the gate, the login guard, the
    waiting room, telemetry, bans), so the operator's prefixes hold everywhere. IPv6 keys are set apart from
    IPv4 ones by a bit above 128, so ::a.b.c.d and a.b.c.d are never one key."""

    def __init__(self, ipv4_prefix: int = 24, ipv6_prefix: int = 48, ipv6_subscriber_prefix: int = 64) -> None:
        self.prefixes = {4: ipv4_prefix, 6: ipv6_prefix}
        self.subscriber_prefix = ipv6_subscriber_prefix
        v6 = 1 << 128
        self.v4_mask = ((1 << ipv4_prefix) - 1) << (32 - ipv4_prefix)
        self.v6_mask = (((1 << ipv6_prefix) - 1) << (128 - ipv6_prefix)) | v6
        self.v6_subscriber_mask = (((1 << ipv6_subscriber_prefix) - 1) << (128 - ipv6_subscriber_prefix)) | v6

    def keys(self, address: IPAddress) -> tuple[int, int]:
        """The subscriber's key and the network's."""
        value = int(address)
        if address.version == 4:
            return value, value & self.v4_mask
        value |= 1 << 128
        return value & self.v6_subscriber_mask, value & self.v6_mask

    def text_keys(self, text: str) -> tuple[int, int]:
        address = parse_address(text)
        return self.keys(address) if address is not None else (0, 0)  # a unix socket or a test transport

    def subscriber(self, text: str) -> str:
        """What a ban or a probe count names: the IPv4 address, or the IPv6 address's /64 as a network."""
        address = parse_address(text)
        if address is None or address.version == 4 or self.subscriber_prefix == 128:
            return text
        return str(ipaddress.ip_network(f"{address}/{self.subscriber_prefix}", strict=False))

    def network(self, address: IPAddress) -> IPNetwork:
        return ipaddress.ip_network(f"{address}/{self.prefixes[address.version]}", strict=False)
