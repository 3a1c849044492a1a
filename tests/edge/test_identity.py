"""The client address: the socket peer unless a trusted proxy forwarded it, in the one header the operator
names; one form for every address (IPv4-mapped made IPv4, no scope); networks by the operator's prefixes."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from floodwall.identity import Networks, TrustedProxies, client, client_address, is_https


def scope(peer: str, *headers: tuple[str, str], scheme: str = "http") -> dict[str, Any]:
    return {"client": (peer, 5000), "scheme": scheme,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}


TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])
TRUSTED_FORWARDED = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"], "forwarded")


def test_untrusted_peer_is_the_client_whatever_it_claims() -> None:
    assert client_address(scope("198.51.100.7", ("X-Forwarded-For", "1.2.3.4")), TRUSTED) == "198.51.100.7"
    assert client_address(scope("198.51.100.7", ("X-Forwarded-For", "1.2.3.4")), TrustedProxies([])) == "198.51.100.7"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("X-Forwarded-For", "203.0.113.5"),), "203.0.113.5"),
        # a client can put anything on the left; the rightmost untrusted hop is the truth
        ((("X-Forwarded-For", "6.6.6.6, 203.0.113.5, 10.1.1.1"),), "203.0.113.5"),
        ((("X-Forwarded-For", "6.6.6.6"), ("X-Forwarded-For", "203.0.113.5")), "203.0.113.5"),
        ((("X-Forwarded-For", "garbage"),), "10.0.0.9"),
        ((("X-Forwarded-For", "203.0.113.5, unknown"),), "10.0.0.9"),
        ((("X-Forwarded-For", "::ffff:203.0.113.5"),), "203.0.113.5"),
        ((("X-Forwarded-For", "[fe80::1%eth0]:80"),), "fe80::1"),
        # the proxy writes X-Forwarded-For and passes the client's own Forwarded through: never read
        ((("Forwarded", "for=127.0.0.1"), ("X-Forwarded-For", "203.0.113.5")), "203.0.113.5"),
        ((("Forwarded", "for=127.0.0.1"),), "10.0.0.9"),
        ((), "10.0.0.9"),
    ],
)
def test_trusted_proxy_chain(headers: tuple[tuple[str, str], ...], expected: str) -> None:
    assert client_address(scope("10.0.0.9", *headers), TRUSTED) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("Forwarded", 'for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711"'),), "192.0.2.60"),
        ((("Forwarded", "for=198.51.100.17:8080"),), "198.51.100.17"),
        ((("Forwarded", 'for="[::ffff:198.51.100.17]:8080"'),), "198.51.100.17"),
        # configured for Forwarded, a client's X-Forwarded-For is the claim that is not read
        ((("X-Forwarded-For", "127.0.0.1"), ("Forwarded", "for=198.51.100.17")), "198.51.100.17"),
        ((("X-Forwarded-For", "127.0.0.1"),), "10.0.0.9"),
    ],
)
def test_forwarded_when_the_operator_names_it(headers: tuple[tuple[str, str], ...], expected: str) -> None:
    assert client_address(scope("10.0.0.9", *headers), TRUSTED_FORWARDED) == expected


def test_a_dual_stack_socket_gives_ipv4_clients_as_ipv4() -> None:
    assert client_address(scope("::ffff:127.0.0.1"), TrustedProxies([])) == "127.0.0.1"
    assert client_address(scope("::ffff:10.0.0.9", ("X-Forwarded-For", "203.0.113.5")), TRUSTED) == "203.0.113.5"
    assert client_address(scope("fe80::1%eth0"), TrustedProxies([])) == "fe80::1"


def test_https_only_believed_from_a_trusted_proxy() -> None:
    assert is_https(scope("10.0.0.9", ("X-Forwarded-Proto", "https")), TRUSTED)
    assert not is_https(scope("198.51.100.7", ("X-Forwarded-Proto", "https")), TRUSTED)
    assert is_https(scope("198.51.100.7", scheme="https"), TRUSTED)
    assert is_https(scope("10.0.0.9", ("Forwarded", "for=1.2.3.4;proto=https")), TRUSTED_FORWARDED)


def test_the_scheme_comes_from_the_hop_the_address_does() -> None:
    # the client wrote its own X-Forwarded-Proto; the proxy appended its own: the proxy's is read
    appended = scope("10.0.0.9", ("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-Proto", "https, http"))
    assert client(appended, TRUSTED) == ("203.0.113.5", "http")
    two_proxies = scope("10.0.0.9", ("X-Forwarded-For", "203.0.113.5, 10.0.0.8"),
                        ("X-Forwarded-Proto", "http, https, http"))
    assert client(two_proxies, TRUSTED) == ("203.0.113.5", "https")
    # a proxy that overwrites leaves one value: its own
    assert client(scope("10.0.0.9", ("X-Forwarded-For", "203.0.113.5"), ("X-Forwarded-Proto", "https")),
                  TRUSTED) == ("203.0.113.5", "https")
    forwarded = scope("10.0.0.9", ("Forwarded", "for=6.6.6.6;proto=https, for=203.0.113.5;proto=http"))
    assert client(forwarded, TRUSTED_FORWARDED) == ("203.0.113.5", "http")


def test_a_long_chain_is_read_from_the_right_and_bounded() -> None:
    chain = ", ".join(["10.0.0.1"] * 100_000 + ["203.0.113.5", "10.0.0.2"])
    assert client_address(scope("10.0.0.9", ("X-Forwarded-For", chain)), TRUSTED) == "203.0.113.5"
    only_proxies = ", ".join(["10.0.0.1"] * 100_000)
    assert ipaddress.ip_address(client_address(scope("10.0.0.9", ("X-Forwarded-For", only_proxies)), TRUSTED))


def test_networks_follow_the_prefixes_and_keep_families_apart() -> None:
    networks = Networks(ipv4_prefix=16, ipv6_prefix=48, ipv6_subscriber_prefix=64)
    ip, network = networks.text_keys("198.51.100.7")
    assert ip == int(ipaddress.ip_address("198.51.100.7"))
    assert network == int(ipaddress.ip_address("198.51.0.0"))
    one, one_net = networks.text_keys("2001:db8:1:2::1")
    other, other_net = networks.text_keys("2001:db8:1:2:ffff::9")
    assert one == other and one_net == other_net  # one /64: one subscriber
    assert networks.text_keys("2001:db8:1:3::1")[1] == one_net != networks.text_keys("2001:db8:2::1")[1]
    assert networks.text_keys("::c633:6407")[0] != ip  # ::198.51.100.7 is not 198.51.100.7
    assert networks.subscriber("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert networks.subscriber("198.51.100.7") == "198.51.100.7"
    assert Networks(ipv6_subscriber_prefix=128).subscriber("2001:db8::1") == "2001:db8::1"


def test_translated_ipv4_clients_and_mapped_proxies_take_the_ipv4_form() -> None:
    assert client_address(scope("64:ff9b::8.8.4.4"), TrustedProxies([])) == "8.8.4.4"  # RFC 6052
    assert client_address(scope("64:ff9b::7f00:1"), TrustedProxies([])) == "64:ff9b::7f00:1"  # not loopback
    mapped = TrustedProxies(["::ffff:10.0.0.0/104"])  # a proxy listed as a dual-stack socket shows it
    assert client_address(scope("::ffff:10.0.0.9", ("X-Forwarded-For", "203.0.113.5")), mapped) == "203.0.113.5"
