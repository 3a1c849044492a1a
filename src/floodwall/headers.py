"""OpenAI's rate-limit headers: x-ratelimit-{limit,remaining,reset}-{requests,tokens}."""

from __future__ import annotations

from starlette.types import Message, Send


def duration(seconds: float) -> str:
    """OpenAI's reset format: 1s, 6m0s, 1h2m3s."""
    seconds = max(0, round(seconds))
    if seconds < 60:  # (most resets: one format, no division)
        return f"{seconds}s"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s"


def _names(kind: str) -> tuple[bytes, bytes, bytes]:
    return (f"x-ratelimit-limit-{kind}".encode(), f"x-ratelimit-remaining-{kind}".encode(),
            f"x-ratelimit-reset-{kind}".encode())


# made once: these go out on every admitted call, twice
_NAMES = {kind: _names(kind) for kind in ("requests", "tokens")}


def ratelimit(kind: str, limit: int, remaining: int, reset_after: float) -> list[tuple[bytes, bytes]]:
    """The three headers for one kind ("requests" or "tokens")."""
    limit_name, remaining_name, reset_name = _NAMES.get(kind) or _names(kind)
    return [(limit_name, b"%d" % limit), (remaining_name, b"%d" % max(0, remaining)),
            (reset_name, duration(reset_after).encode())]


def with_headers(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """A send that adds `headers` to the response it starts."""

    async def sender(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *headers]}
        await send(message)

    return sender
