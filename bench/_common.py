"""Helpers the benchmarks share: starting a server process, and running wrk with a Lua script."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx

from floodwall.config import SETTINGS_ENV, load
from floodwall.server import wait_until_up

# one worker of granian, the server floodwall runs on, for the benchmarks' own servers
GRANIAN = [sys.executable, "-m", "granian", "--interface", "asgi", "--workers", "1", "--no-ws",
           "--log-level", "warning", "--backlog", "2048"]

CHAT = (
    '{"model":"floodwall-simulated-chat","messages":[{"role":"user","content":"Hello, how are you?"}],'
    '"max_tokens":8}'
)
LUA = """
wrk.method = os.getenv("FW_METHOD") or "GET"
if wrk.method == "POST" then
  wrk.body = os.getenv("FW_BODY")
  wrk.headers["Content-Type"] = "application/json"
end
local encoding = os.getenv("FW_ACCEPT_ENCODING")
if encoding and encoding ~= "" then wrk.headers["Accept-Encoding"] = encoding end
local key = os.getenv("FW_KEY")
if key and key ~= "" then wrk.headers["Authorization"] = "Bearer " .. key end
-- think time per connection: exponential around FW_DELAY_MS, so that the connections arrive as independent
-- users would (a Poisson stream) and do not move in lockstep, sending their requests in bunches
local pause = tonumber(os.getenv("FW_DELAY_MS") or "0")
function init(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end
function delay()
  if pause == 0 then return 0 end
  return math.floor(-pause * math.log(1 - math.random()))
end
"""


def fast_model_env() -> dict[str, str]:
    """The simulated model as a floor to measure against: as many slots as callers, no delay, 8-token replies."""
    return {SETTINGS_ENV: load(environ={}, overrides={"model": {
        "slots": 4096, "queue_size": 4096, "tokens_per_second": 100000, "reply_tokens": 8,
        "first_token_delay": 0}}).to_json()}


def write_lua(folder: Path) -> Path:
    script = folder / "bench.lua"
    script.write_text(LUA)
    return script


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], health: str, log: Path, expect: int = 200) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_up(health, timeout=60, process=proc, expect=expect)
        yield
    finally:
        proc.terminate()
        proc.wait(20)


def wrk(url: str, script: Path, duration: int, connections: int, *, method: str = "GET", key: str = "",
        delay_ms: int = 0, accept_encoding: str = "", body: str = CHAT) -> dict[str, float]:
    env = {**os.environ, "FW_METHOD": method, "FW_BODY": body, "FW_KEY": key, "FW_DELAY_MS": str(delay_ms),
           "FW_ACCEPT_ENCODING": accept_encoding}
    result = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
                            env=env, capture_output=True, text=True, check=True)
    text = result.stdout
    figures = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)),  # type: ignore[union-attr]
               "requests": float(re.search(r"(\d+) requests in", text).group(1))}  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        match = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if match:
            scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
            figures[f"p{pct}_ms"] = float(match.group(1)) * scale
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    figures["non_2xx"] = float(errors.group(1)) if errors else 0.0
    return figures




# the operator's token the benchmarks' floodwall takes (admin.token: 32 characters at least)
ADMIN_TOKEN = "bench-admin-token-0123456789-abcdefgh"


def pin_level(base: str, level: str, reason: str) -> None:
    """Pin the defense level through the admin API, as an operator would."""
    httpx.put(f"{base}/admin/api/level", json={"level": level, "reason": reason},
              headers={"authorization": f"Bearer {ADMIN_TOKEN}"}).raise_for_status()


def account_key(base: str, email: str = "bench@example.com", source: str | None = None) -> str:
    """Register (or log in) and make an API key, from the loopback address `source` if given."""
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(base_url=base, timeout=30, transport=transport) as web:
        web.post("/auth/register", json={"email": email, "password": "benchmark password"})
        web.post("/auth/login", json={"email": email, "password": "benchmark password"})
        key: str = web.post("/account/keys", json={"name": "bench"}).json()["key"]
        return key
