"""The canary watch's cost per streamed token (issue 24, inference/canaries.py): the proxy's own stream relay
(InferenceCall._relay_stream: splitting events, reading usage, the watch) run in this process over a
recorded answer, with 0, 1, 16 and 64 canaries, in interleaved rounds of the same run. The answer is what
vLLM and the simulated model send: one chat.completion.chunk event a token (English words), its usage chunk
and [DONE], one event a read; no canary in it (the common case: an honest answer is read to its end).
CPU is this process's (time.process_time), per token relayed.

    python bench/canaries.py [--tokens 256] [--streams 200] [--rounds 7]

Prints one line per canary count and writes bench/out/canaries.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from floodwall.config import UpstreamSettings
from floodwall.inference.canaries import Canaries
from floodwall.inference.proxy import InferenceCall, Outcome
from floodwall.inference.upstream import Upstream
from floodwall.principal import Principal

WORDS = ("The quick answer to your question depends on the context you are working in, and on what the "
         "model was told to do by the system prompt it was given before your message.").split()
COUNTS = (0, 1, 16, 64)


class Recorded:
    """A model server's streamed answer, read back one event a read."""

    content_type = "text/event-stream"

    def __init__(self, events: list[bytes]) -> None:
        self.events = events

    async def __aiter__(self) -> Any:
        for event in self.events:
            yield event


def answer(tokens: int) -> list[bytes]:
    base = {"id": "chatcmpl-0123456789abcdef01234567", "object": "chat.completion.chunk", "created": 1765000000,
            "model": "llama-3.1-8b-instruct"}

    def event(fields: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps({**base, **fields}, separators=(",", ":")).encode() + b"\n\n"

    events = [event({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}]})]
    for i in range(tokens):
        word = WORDS[i % len(WORDS)] + " "
        events.append(event({"choices": [{"index": 0, "delta": {"content": word}, "logprobs": None,
                                          "finish_reason": None}]}))
    events.append(event({"choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}]}))
    events.append(event({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": tokens,
                                                  "total_tokens": 20 + tokens}}))
    events.append(b"data: [DONE]\n\n")
    return events


def call(canaries: int) -> InferenceCall:
    # random markers of 24 characters, as an operator would make them (secrets.token_urlsafe)
    watched = Canaries([f"fw-{secrets.token_urlsafe(15)}" for _ in range(canaries)])
    upstream = Upstream(UpstreamSettings(), watched)
    principal = Principal(user_id=1, email="bench@example.com", created_at=datetime.datetime.now(datetime.UTC),
                          is_admin=False, key_id=1)
    body = {"model": "llama-3.1-8b-instruct", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    return InferenceCall(upstream, None, None, principal, "chat/completions", body)  # type: ignore[arg-type]


async def relay(proxy: InferenceCall, events: list[bytes], streams: int) -> float:
    async def send(message: Any) -> None:
        pass

    started = time.process_time()
    for _ in range(streams):
        outcome = Outcome()
        await proxy._relay_stream(Recorded(events), send, outcome, [])  # type: ignore[arg-type]
        assert outcome.status == "ok" and outcome.completion_tokens > 0
    return time.process_time() - started


async def run(tokens: int, streams: int, rounds: int) -> dict[int, list[float]]:
    events = answer(tokens)
    calls = {count: call(count) for count in COUNTS}
    per_token: dict[int, list[float]] = {count: [] for count in COUNTS}
    await relay(calls[0], events, streams // 4)  # warm-up
    for _ in range(rounds):
        for count in COUNTS:  # interleaved: the machine's drift falls on every count alike
            per_token[count].append(await relay(calls[count], events, streams) / (streams * tokens) * 1e6)
    return per_token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    per_token = asyncio.run(run(args.tokens, args.streams, args.rounds))
    base = statistics.median(per_token[0])
    results = {}
    for count, figures in per_token.items():
        median = statistics.median(figures)
        results[count] = {"us_per_token": round(median, 3), "min": round(min(figures), 3),
                          "max": round(max(figures), 3), "added_us_per_token": round(median - base, 3)}
        print(f"{count:>2} canaries: {median:.3f} µs CPU a token relayed (range {min(figures):.3f} to "
              f"{max(figures):.3f}), {median - base:+.3f} µs over none")
    out = Path(__file__).with_name("out")
    out.mkdir(exist_ok=True)
    (out / "canaries.json").write_text(json.dumps({"tokens": args.tokens, "streams": args.streams,
                                                   "rounds": args.rounds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
