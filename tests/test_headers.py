"""OpenAI's rate-limit headers, as floodwall writes them."""

from __future__ import annotations

import pytest

from floodwall.headers import duration, ratelimit


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (-3, "0s"), (0.4, "0s"), (59.4, "59s"), (59.6, "1m0s"), (61, "1m1s"), (3599.6, "1h0m0s"),
    (3725, "1h2m5s"),
])
def test_reset_durations_read_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


def test_the_three_headers_of_a_kind_and_never_a_negative_remaining() -> None:
    assert ratelimit("requests", 30, -2, 12.3) == [
        (b"x-ratelimit-limit-requests", b"30"), (b"x-ratelimit-remaining-requests", b"0"),
        (b"x-ratelimit-reset-requests", b"12s")]
    assert ratelimit("tokens", 200000, 199990, 0.2)[1] == (b"x-ratelimit-remaining-tokens", b"199990")
    assert ratelimit("other", 1, 1, 90)[2] == (b"x-ratelimit-reset-other", b"1m30s")
