"""The client address: the socket peer unless a trusted proxy forwarded it (XFF or RFC 7239)."""

from __future__ import annotations

from typing import Any

import pytest

from floodwall.edge.identity import TrustedProxies, client_address, is_https


def scope(peer: str, *headers: tuple[str, str], scheme: str = "http") -> dict[str, Any]:
    return {"client": (peer, 5000), "scheme": scheme,
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}


TRUSTED = TrustedProxies(["10.0.0.0/8", "2001:db8::/32"])


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
        ((("Forwarded", 'for=192.0.2.60;proto=https, for="[2001:db8:cafe::17]:4711"'),), "192.0.2.60"),
        ((("Forwarded", "for=198.51.100.17:8080"),), "198.51.100.17"),
        ((("X-Forwarded-For", "garbage"),), "10.0.0.9"),
        ((("X-Forwarded-For", "203.0.113.5, unknown"),), "10.0.0.9"),
        ((), "10.0.0.9"),
    ],
)
def test_trusted_proxy_chain(headers: tuple[tuple[str, str], ...], expected: str) -> None:
    assert client_address(scope("10.0.0.9", *headers), TRUSTED) == expected


def test_forwarded_wins_over_xff() -> None:
    s = scope("10.0.0.9", ("X-Forwarded-For", "1.1.1.1"), ("Forwarded", "for=2.2.2.2"))
    assert client_address(s, TRUSTED) == "2.2.2.2"


def test_https_only_believed_from_a_trusted_proxy() -> None:
    assert is_https(scope("10.0.0.9", ("X-Forwarded-Proto", "https")), TRUSTED)
    assert not is_https(scope("198.51.100.7", ("X-Forwarded-Proto", "https")), TRUSTED)
    assert is_https(scope("198.51.100.7", scheme="https"), TRUSTED)
    assert is_https(scope("10.0.0.9", ("Forwarded", "for=1.2.3.4;proto=https")), TRUSTED)
