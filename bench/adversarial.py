"""Issue 19: a worst case for every regular expression and parser on the request path, sent at its cap.

1. In process, per parser: hand-made pathological families (quote runs, %XX and JavaScript escapes, double
   encoding, NFKC-expanding characters, lone surrogates, 60,000-digit ranges, 100,000 hops, thousands of cookie
   pairs or multipart parts, JSON 10,000 deep, of 100,000 keys or 4 MiB of messages) and the slowest input
   hypothesis finds (a motif of the parser's special tokens repeated to its cap, steered by `target` toward CPU
   time). Every RE2 pattern on a soup of its own tokens at its cap; regexploit's verdict under Python's re.
2. The gate's own time per request, in process: the real app (default policy, memory state, SQLite) with a bare
   200 behind the gate; each family from a fresh address with new values (no answer of scoring's is known).
3. Over HTTP: `floodwall serve` (default policy, memory state, the simulated model; trusted proxies 127.0.0.0/8,
   so that X-Forwarded-For is read), every family at its cap (heads just under server.max_header_size, forms to
   /auth/login and /auth/register, JSON to /v1/chat/completions with and without a key), each from its own
   loopback address, while another process polls /healthz every 10 ms (against a calm period first) and
   floodwall_event_loop_lag_seconds from /metrics. Targets: the gate's own time at most 5 ms; no 5xx.

    python3 bench/adversarial.py [--quick]      (writes bench/out/adversarial.json; traffic to loopback only)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import dataclasses
import datetime
import gc
import json
import logging
import math
import multiprocessing
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import httpx
import re2
from hypothesis import HealthCheck, Phase, given, target
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from _common import account_key, process
from floodwall import bodies, percent
from floodwall.accounts import forms, service
from floodwall.accounts.guard import LoginGuard
from floodwall.config import load
from floodwall.db.signing import Signer
from floodwall.defense import prompts, scoring
from floodwall.defense import request_parts as rp
from floodwall.edge import credentials, identity
from floodwall.edge import gate as gates
from floodwall.errors import ApiError
from floodwall.inference import terms, validation
from floodwall.policy import PolicyFile
from floodwall.server import free_port
from floodwall.state import open_store

OUT = Path(__file__).with_name("out")
TARGET_MS = 5.0
SERVER = load(environ={}).server
HEADER_CAP, BODY_CAP = int(SERVER.max_header_size), int(SERVER.max_body_size)
HEAD = HEADER_CAP - 4096  # bytes a request's own parts take: the whole head stays under the header cap
TRUSTED, FORM = "127.0.0.0/8", "application/x-www-form-urlencoded"
SAFE = "!$'()*,/:;@[]\\^`{|}~%?"  # sent as they are in a query (granian refuses " < >, and ` in a path)
EXPECTED = {"ok", "ApiError", "ValueError", "JSONDecodeError"}  # a parser's answers and refusals
PATH_SAFE = SAFE.replace("?", "").replace("`", "")
RNG = random.Random(19)
Make = Callable[[int], str]


def rep(unit: str, n: int, head: str = "", tail: str = "") -> str:
    return head + unit * max(1, (n - len(head) - len(tail)) // len(unit)) + tail


def q(text: str, safe: str = SAFE) -> str:
    return quote(text, safe=safe)


def size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def sized(make: Make, n: int, enc: Callable[[str], str] = q) -> str:
    """make(m) encoded, m chosen so that the encoded text takes about n bytes."""
    text = enc(make(n))
    return text if size(text) <= n else enc(make(max(8, n * n // size(text))))


def fill(piece: Make, sep: str, count: int = 10**6, limit: int = HEAD) -> str:
    """piece(0), piece(1), ... joined by sep: as many as fit in `limit` bytes (at most `count`)."""
    out, used = [], 0
    for i in range(count):
        part = piece(i)
        if used + size(part) + len(sep) > limit:
            break
        out.append(part)
        used += size(part) + len(sep)
    return sep.join(out)


VALUES: dict[str, Make] = {  # a pathological value of about n characters, ASCII
    "quote run": lambda n: rep("'", n, "a", "b"),
    "quotes alternating": lambda n: rep("a'", n),
    "shell quotes mixed": lambda n: rep("a'b\"c\\d^", n),
    "%27 run": lambda n: rep("%27", n, "a", "b"),
    "%XX escapes": lambda n: rep("%41", n),
    "stray %": lambda n: rep("%41%", n),
    "double-encoded \\u": lambda n: rep("%255Cu0041", n),
    "\\u0041 escapes": lambda n: rep("\\u0041", n),
    "\\ud800 lone surrogates": lambda n: rep("\\ud800", n),
    "HTML entities": lambda n: rep("&#x27;", n),
    "NFKC-expanding (U+FDFA, ffi)": lambda n: rep("%EF%B7%BA%EF%AC%83", n),
    "base64 of escapes": lambda n: base64.b64encode(rep("%255Cu0041", n * 3 // 4).encode()).decode(),
    "e-mail-like": lambda n: rep("a@b.", n),
}
RAW: dict[str, Make] = {"U+FDFA raw": lambda n: rep("\ufdfa", n), "ligatures raw": lambda n: rep("\ufb03\ufb04", n)}


@dataclasses.dataclass
class Req:
    family: str
    method: str = "GET"
    path: str = "/login"
    query: str = ""
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""
    key: bool = False  # sent with an account's API key


def requests(salt: str, extra: dict[str, Make]) -> list[Req]:
    """What the gate reads, at the caps: each value family in each carrier, and the header families."""
    found, per = [], HEAD // rp.MAX_VALUES - 16
    for name, make in {**VALUES, **extra}.items():
        def value(n: int, i: int, m: Make = make) -> str:
            return f"{salt}{i}" + m(n)

        found += [
            Req(f"{name} / query, 4 KiB values", query=fill(lambda i: f"q{i}=" + q(value(rp.MAX_VALUE, i)), "&")),
            Req(f"{name} / query, 256 values",
                query=fill(lambda i: f"q{i}=" + sized(lambda n: value(n, i), per), "&", rp.MAX_VALUES)),
            Req(f"{name} / cookie, 256 pairs",
                headers=[("cookie", fill(lambda i: f"c{i}=" + sized(lambda n: value(n, i), per, str), "; ", 256))]),
            Req(f"{name} / 64 headers", headers=[(f"x-h{i}", sized(lambda n, i=i: value(n, i), HEAD // 64 - 16, str))
                                                 for i in range(64)]),
            Req(f"{name} / cookie, 4 KiB values",
                headers=[("cookie", fill(lambda i: f"c{i}=" + value(rp.MAX_VALUE, i), "; "))]),
            Req(f"{name} / path", path="/" + sized(lambda n: value(n, 0), HEAD, lambda t: q(t, PATH_SAFE))),
        ]
    hops = ["127.0.0.1"] * (HEAD // 11 - 40) + [f"100.64.{int(salt) % 250}.1"] + ["127.0.0.2"] * 31
    device = "eyJkIjoiYSIsImEiOlsieCJdfQ." + "A" * 4000 + ".c2ln"
    return [
        *found,
        Req("range: 60,000 digits", headers=[("range", "bytes=" + "9" * (HEAD - 20) + "-1")]),
        Req("range: ranges at the cap", headers=[("range", "bytes=" + fill(lambda i: f"{i}-{i + 1}", ","))]),
        Req("x-forwarded-for: hops at the cap", headers=[("x-forwarded-for", ", ".join(hops))]),
        Req("forwarded: elements at the cap", headers=[("forwarded", fill(
            lambda i: f"for=127.0.0.{i % 250};proto=https;by=x;host=y", ", "))]),
        Req("cookie: pairs at the cap", headers=[("cookie", fill(lambda i: f"a{i}=b", "; "))]),
        Req("cookie: fw_session repeated at the cap",
            headers=[("cookie", fill(lambda i: f"fw_session={salt}{i}", "; "))]),
        Req("authorization: Bearer at the cap", headers=[("authorization", "Bearer " + salt + "x" * (HEAD - 40))]),
        Req("sign-in: fw_device cookies at the cap", "POST", "/auth/login", body=b"email=a%40b.co&password=x",
            headers=[("content-type", FORM), ("cookie", fill(lambda i: f"fw_device={device}", "; "))]),
        Req("headers: 1,000 tiny (past granian's count)", headers=[(f"x-t{i}", "a") for i in range(1000)]),
        Req("query: 20,000 empty pairs", query="a&" * (HEAD // 3)),
        Req("user-agent: quote run at the cap", headers=[("user-agent", rep("'", HEAD, "a", "b"))]),
        Req("content-type: charsets at the cap", headers=[("content-type", "text/plain; " + rep("charset=x;", HEAD))]),
        Req("over the cap: one 70 KiB header (431 by design)", headers=[("x-big", "a" * (HEADER_CAP + 6000))]),
    ]


def json_bodies(cap: int, salt: str = "") -> dict[str, bytes]:
    head = f'{{"model":"floodwall-simulated-chat","max_tokens":1,"user":"{salt}","messages":'
    msg, part, room = '{"role":"user","content":"a"}', '{"type":"text","text":"a"}', cap - len(head) - 200

    def said(text: str) -> bytes:
        return (head + '[{"role":"user","content":"' + text + '"}]}').encode()

    return {"json: nested 10,000 deep": (head + "[" * 10_000 + "]" * 10_000 + "}").encode(),
            "json: 100,000 keys": (head + f"[{msg}]," + ",".join(f'"k{i}":0' for i in range(10**5)) + "}").encode(),
            "json: messages at the cap": (head + "[" + ",".join([msg] * (room // (len(msg) + 1))) + "]}").encode(),
            "json: content parts at the cap": (head + '[{"role":"user","content":[' + ",".join(
                [part] * (room // (len(part) + 1))) + "]}]}").encode(),
            "json: lone surrogates at the cap": said("\\ud800" * (room // 6)),
            "json: U+FDFA at the cap": said("\ufdfa" * (room // 3)),
            "json: words at the cap": said(rep("ignore all previous instructions and ", room))}


def bodies_at_caps(salt: str) -> list[Req]:
    """Forms (64 KiB) to the sign-in and sign-up routes; JSON (server.max_body_size) to chat completions."""
    found, paths = [], ("/auth/login", "/auth/register")
    forms_ = {name: sized(lambda n, m=make: salt + m(n), forms.MAX_FORM_BODY // 2 - 2048)  # type: ignore[misc]
              for name, make in VALUES.items()}
    for path in paths:
        found += [Req(f"form {path}: {name}", "POST", path, headers=[("content-type", FORM)],
                      body=f"email={field}&password={field}".encode()) for name, field in forms_.items()]
        found += [Req(f"form {path}: {name}", "POST", path, headers=[("content-type", FORM)], body=body.encode())
                  for name, body in (("10,000 fields", "a=b&" * 10_000),
                                     ("50 fields of %XX", "&".join(f"f{i}=" + "%41" * 400 for i in range(50))))]
    return found + [Req(f"{name} ({'key' if key else 'no key'})", "POST", "/v1/chat/completions", key=key, body=body,
                        headers=[("content-type", "application/json")])
                    for name, body in json_bodies(BODY_CAP, salt).items() for key in (True, False)]


def scope_of(req: Req, peer: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": req.method,
            "scheme": "http", "path": unquote(req.path), "raw_path": req.path.encode(), "root_path": "",
            "query_string": req.query.encode(), "client": (peer, 40000), "server": ("127.0.0.1", 8080),
            "state": {}, "headers": [(b"host", b"127.0.0.1")] + [(k.encode(), v.encode()) for k, v in req.headers]}


def source(n: int) -> str:
    """The n-th client address: 12,500 in a row each in a /24 of its own (no per-network limit is met)."""
    return f"127.{60 + n % 50}.{n // 50 % 250}.{n // 12_500 % 250 + 1}"


# ---------------------------------------------------------------- 1. per parser, in process


def timed(fn: Callable[[Any], Any], arg: Any, reps: int) -> tuple[float, float, float, str]:
    """Median wall ms, max wall ms, median CPU ms, and the outcome (ok, or the exception's name)."""
    walls, cpus, outcome = [], [], "ok"
    gc.collect()
    for _ in range(reps):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            fn(arg)
        except Exception as exc:
            outcome = type(exc).__name__
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return 1000 * statistics.median(walls), 1000 * max(walls), 1000 * statistics.median(cpus), outcome


def slowest(fn: Callable[[str], Any], tokens: list[str], cap: int, examples: int) -> str:
    """The motif of `tokens` whose repetition to `cap` characters costs `fn` the most CPU, by hypothesis."""
    worst: list[Any] = ["", -1.0]

    @hypothesis_settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                         phases=[Phase.generate, Phase.target], suppress_health_check=list(HealthCheck))
    @given(st.lists(st.sampled_from(tokens), min_size=1, max_size=8).map("".join))
    def search(motif: str) -> None:
        cpu = time.thread_time()
        with contextlib.suppress(Exception):  # timed() below reports the outcome
            fn((motif * (cap // len(motif) + 1))[:cap])
        spent = time.thread_time() - cpu
        target(spent)
        if spent > worst[1]:
            worst[:] = [motif, spent]

    search()
    return str(worst[0])


SCREEN = prompts.Screen(prompts.load_rules())


def chat_route(raw: bytes) -> None:
    """What /v1/chat/completions does with a body on the event loop before the model: parse, check, screen."""
    body = bodies.parse_json_object(raw)
    validation.chat_completion(body)
    text = prompts.prompt_text(body)
    SCREEN.score(text)
    prompts.signature(text)
    terms.estimate_cost(body, 512)


def parsers(args: argparse.Namespace) -> tuple[list[dict[str, Any]], dict[str, str]]:
    v = {name: make(rp.MAX_VALUE) for name, make in {**VALUES, **RAW}.items()}
    big = {name: make(HEAD) for name, make in {**VALUES, **RAW}.items()}
    heads = {r.family: gates.described(scope_of(r, "127.0.0.1")) for r in requests("0", {})}
    trusted, forwarded = identity.TrustedProxies([TRUSTED]), identity.TrustedProxies([TRUSTED], "forwarded")
    guard = LoginGuard(PolicyFile.load(None).edge, open_store("memory://"), lambda: "normal", Signer("k" * 48))
    raw_json = json_bodies(BODY_CAP)
    parsed = {}
    for name, body in raw_json.items():
        with contextlib.suppress(ValueError, ApiError):  # what the route refuses is never checked further
            parsed[name] = bodies.parse_json_object(body)
    free, budgeted = (scoring.Scorer(scoring.load_rules(), 1, b) for b in (math.inf, scoring.ScoringPolicy().budget))

    def scored(scorer: scoring.Scorer) -> Callable[[rp.Described], Any]:
        def score(request: rp.Described) -> Any:
            scorer._cache.clear()  # an attacker varies every value: no answer is known
            scorer.forget_requests()
            return scorer.score(request)
        return score

    def client(header: bytes, proxies: identity.TrustedProxies) -> Callable[[str], Any]:
        return lambda text: identity.client({"client": ("127.0.0.1", 1), "headers": [(header, text.encode())]},
                                            proxies)

    def cookie(name: bytes) -> Callable[[str], Any]:
        return lambda text: credentials.cookie_value({"headers": [(b"cookie", text.encode())]}, name)

    # (parser, function, inputs, on the live request path at this size)
    cases: list[tuple[str, Callable[[Any], Any], dict[str, Any], bool]] = [
        ("percent.unquoted (a value)", percent.unquoted, v, True),
        ("percent.unquoted_bytes (the query's first 4 KiB)", percent.unquoted_bytes,
         {k: t[:4 * rp.MAX_VALUE] for k, t in big.items()}, True),
        ("request_parts._decoded", rp._decoded, big, True),
        ("request_parts._js_unescaped", rp._js_unescaped, v, True),
        ("request_parts.whole (a value)", rp.whole, {k: rp._js_unescaped(m(rp.MAX_VALUE)) for k, m in
                                                     {**VALUES, **RAW}.items()}, True),
        ("request_parts.shell_words (decoded values)", rp.shell_words, {k: rp._decoded(x) for k, x in v.items()}, True),
        ("request_parts._base64_text", rp._base64_text, v, True),
        ("request_parts._odd_range", rp._odd_range, {"60,000 digits": "bytes=" + "9" * HEAD + "-1",
                                                     "ranges": "bytes=" + rep("0-1,", HEAD), **big}, True),
        ("Scorer.score, no budget (what the budget saves)", scored(free), heads, False),
        ("Scorer.score, 1 ms budget (the gate's)", scored(budgeted), heads, True),
        ("identity.client (x-forwarded-for)", client(b"x-forwarded-for", trusted),
         {"100,000 hops": "127.0.0.1, " * 100_000, "100,000 junk hops": ",[" * 100_000}, True),
        ("identity.client (forwarded)", client(b"forwarded", forwarded),
         {"100,000 elements": "for=127.0.0.1;proto=https, " * 100_000}, True),
        ("gate.cookie_value", cookie(b"fw_session="), {"12,000 pairs": rep("a=b; ", HEAD),
                                                       "fw_session repeated": rep("fw_session=x; ", HEAD)}, True),
        ("LoginGuard.device (signer.loads)", guard.device, {"4 KiB junk": "A" * 4096, "dots": "." * 4096,
                                                            "token-shaped": "eyJ" + "A" * 4000 + ".x.y", **v}, True),
        ("bodies.parse_json_object (orjson)", bodies.parse_json_object, raw_json, True),
        ("forms: percent.form_pairs(50 fields)", lambda t: percent.form_pairs(t, forms.MAX_FIELDS),
         {"10,000 fields": "a=b&" * 10_000, **{k: f"email={sized(m, 30_000)}&password={sized(m, 30_000)}"
                                              for k, m in VALUES.items()}}, True),
        ("validation.chat_completion", validation.chat_completion, parsed, True),
        ("chat route before the model: parse, check, screen", chat_route, raw_json, True),
        ("prompts.Screen.score", SCREEN.score, {**{k: prompts.prompt_text(b) for k, b in parsed.items()}, **big}, True),
        ("prompts.signature", prompts.signature, big, True),
    ]
    rows: list[dict[str, Any]] = []

    def row(parser: str, family: str, fn: Callable[[Any], Any], arg: Any, live: bool) -> None:
        median, worst, cpu, outcome = timed(fn, arg, args.reps)
        rows.append({"parser": parser, "family": family, "median_ms": round(median, 3), "max_ms": round(worst, 3),
                     "cpu_ms": round(cpu, 3), "outcome": outcome, "live": live})

    for parser, fn, inputs, live in cases:
        for family, arg in inputs.items():
            row(parser, family, fn, arg, live)
    searches: list[tuple[str, Callable[[str], Any], list[str], int]] = [
        ("request_parts._decoded", rp._decoded, ["%27", "%25", "%", "%5C", "\\u0041", "\\ud800", "&amp;", "&#", "'",
                                                 "a", "\ufdfa", "%EF%B7%BA"], HEAD),
        ("_decoded + shell_words (one value)", lambda t: rp.shell_words(rp._decoded(t)),
         ["a", "'", '"', "\\", "^", "_", " ", "\ufdfa", "%27", "\\u0027"], rp.MAX_VALUE),
        ("percent.unquoted", percent.unquoted, ["%41", "%", "%E9", "a", "%25", "\u00e9", "%F0%9F", "4"], 4096),
        ("request_parts._odd_range", lambda t: rp._odd_range("bytes=" + t), ["0", "9", "-", ",", "=", " "], HEAD),
        ("request_parts._base64_text", rp._base64_text, ["QUJD", "JTI3", "XHUw", "=", "+", "/", "A"], 4096),
        ("Scorer.score, 1 ms budget (a query)", lambda t: scored(budgeted)(rp.Described("GET", "/", t)),
         ["&", "=", "%27", "a", "'", "+", "%", "\\x41", "%EF%B7%BA"], HEAD),
        ("identity.client (x-forwarded-for)", client(b"x-forwarded-for", trusted),
         ["127.0.0.1", ",", " ", "[::1]", "unknown", ":80", '"'], HEAD),
        ("gate.cookie_value", cookie(b"fw_session="), ["fw_session=", ";", " ", "a", "fw_device="], HEAD),
        ("service._EMAIL", service._EMAIL.match, ["a", "@", "b", ".", "-", " ", "\u00e9"], HEAD),
        ("prompts.Screen.score", SCREEN.score, ["ignore", " previous", " instructions", " you are", " DAN",
                                                "\u200b", " ", "system"], 4 * prompts.MAX_SCANNED),
        ("prompts.signature", prompts.signature, ["word", " ", "\u00e9", ",", "x"], HEAD),
    ]
    motifs = {}
    for parser, fn, tokens, cap in searches:
        motifs[parser] = slowest(fn, tokens, cap, args.examples)
        row(parser, f"hypothesis: {motifs[parser]!r}"[:60], fn, (motifs[parser] * cap)[:cap], True)
    return rows, motifs


def patterns(reps: int) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Every RE2 pattern on the request path on a soup of its own tokens at its cap, and regexploit's verdict."""
    try:  # pip install regexploit: not a dependency of the project, and only informational
        from regexploit.ast.sre import SreOpParser
        from regexploit.redos import find
    except ImportError:
        SreOpParser = find = None

    caseless = re2.Options()
    caseless.case_sensitive = False
    found = [(f"{m.__name__.rsplit('.', 1)[1]}.{name}", obj.pattern, HEAD)
             for m in (rp, scoring, prompts, service, gates, identity, bodies, forms, validation)
             for name, obj in vars(m).items() if type(obj).__name__ == "_Regexp"]
    request_rules = scoring.load_rules()  # read once: the soups below are of these rules' tokens
    found += [(f"request rule {r.name}", r.pattern, rp.MAX_VALUE) for r in request_rules]
    found += [(f"prompt rule {r.name}", r.pattern.pattern, prompts.MAX_SCANNED) for r in prompts.load_rules()]
    rows, tokens = [], {}
    for name, pattern, cap in found:
        try:
            stars = max((r.starriness for r in find(SreOpParser().parse_sre(pattern))), default=0) if find else -2
        except Exception:
            stars = -1  # RE2 syntax that Python's parser does not read (\pL)
        tokens[name] = re.findall(r"[A-Za-z_]{2,}", pattern) + sorted(set(re.sub(r"[\w\s\\]", "", pattern))) + [" "]
        soup = "".join(RNG.choices(tokens[name], k=cap))[:cap]
        median, worst, cpu, _ = timed(re2.compile(pattern, caseless).search, soup, reps)
        rows.append({"pattern": name, "regexploit_starriness": stars, "median_ms": round(median, 3),
                     "max_ms": round(worst, 3), "cpu_ms": round(cpu, 3)})
    # scoring matches each target's rules as one set, whose automaton RE2 builds as it reads: a fresh soup of
    # one rule's tokens (new each run, as an attacker's would be) against its target's whole set
    for target_name, sets in scoring.Scorer(request_rules, 1, math.inf)._sets.items():
        for compiled, rules, negate, _ in sets:
            for rule in rules:
                pool = tokens[f"request rule {rule.name}"]
                median, worst, cpu, _ = timed(lambda _, p=pool, c=compiled: c.Match("".join(RNG.choices(
                    p, k=rp.MAX_VALUE))[:rp.MAX_VALUE]), None, min(reps, 3))
                rows.append({"pattern": f"set {target_name}{' (negated)' * negate} ({len(rules)} rules) on "
                             f"{rule.name}'s tokens", "regexploit_starriness": "", "median_ms": round(median, 3),
                             "max_ms": round(worst, 3), "cpu_ms": round(cpu, 3), "rule": rule.name})
    return rows, tokens


# ---------------------------------------------------------------- 2. the gate alone, in process


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def gate_settings(tmp: Path) -> Any:
    from floodwall.db.engine import upgrade

    settings = load(environ={}, overrides={
        "database": {"url": f"sqlite:///{tmp / 'gate.db'}"}, "state": {"url": "memory://"}, "edge": {"policy": ""},
        "server": {"trusted_proxies": [TRUSTED]}, "upstream": {"url": "http://127.0.0.1:9/v1"}})
    upgrade(settings.database.url)  # alembic runs an event loop of its own: before asyncio.run
    return settings


async def gate_phase(settings: Any, make: Callable[[str], list[Req]], reps: int) -> list[dict[str, Any]]:
    from floodwall.app import build_app

    gate = build_app(settings)
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    outbox: asyncio.Queue[Any] = asyncio.Queue()
    await inbox.put({"type": "lifespan.startup"})
    life = asyncio.ensure_future(gate({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get,
                                      outbox.put))
    await outbox.get()
    inner, gate.app = gate.app, ok
    assert isinstance(gate.scoring, scoring.Scoring)
    samples: dict[str, list[tuple[float, float, int]]] = collections.defaultdict(list)
    events: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    family, counted = "", gate.traffic.event
    gate.traffic.event = lambda name, count=1: (events[family].update([name]), counted(name, count))  # type: ignore

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    n = 0
    for r in range(reps):
        for spec in make(str(100 + r)):  # new values each round
            family = spec.family
            sent: list[int] = []

            async def send(message: Any, sent: list[int] = sent) -> None:
                sent.extend([message["status"]] if message["type"] == "http.response.start" else [])

            scope, n = scope_of(spec, source(100_000 + n)), n + 1
            gate.scoring.scorer._cache.clear()
            wall, cpu = time.perf_counter(), time.thread_time()
            await gate(scope, receive, send)
            samples[spec.family].append((1000 * (time.perf_counter() - wall), 1000 * (time.thread_time() - cpu),
                                         sent[0] if sent else 0))
    gate.app = inner
    await inbox.put({"type": "lifespan.shutdown"})
    await outbox.get()
    await life
    rows = []
    for family, got in samples.items():
        walls, cpus = sorted(w for w, _, _ in got), sorted(c for _, c, _ in got)
        rows.append({"family": family, "median_ms": round(statistics.median(walls), 3), "max_ms": round(walls[-1], 3),
                     "cpu_median_ms": round(statistics.median(cpus), 3), "cpu_max_ms": round(cpus[-1], 3),
                     "statuses": dict(collections.Counter(s for _, _, s in got)), "events": dict(events[family])})
    return rows


# ---------------------------------------------------------------- 3. over HTTP


def poll(base: str, stop: Any, out: Any) -> None:
    """/healthz every 10 ms from 20 addresses in turn (each under the status/ip limit); /metrics each second."""
    clients = [httpx.Client(base_url=base, timeout=30, transport=httpx.HTTPTransport(local_address=f"127.99.0.{i}"))
               for i in range(1, 21)]
    latencies, lags, failures, at = [], [], 0, 0.0
    gc.collect()
    gc.freeze()  # what this process imported is never walked again: a full collection took the poller 80 ms
    while not stop.is_set():
        began = time.perf_counter()
        try:
            failures += clients[len(latencies) % 20].get("/healthz").status_code != 200
        except httpx.HTTPError:
            failures += 1
        latencies.append(time.perf_counter() - began)
        if time.monotonic() > at:
            at = time.monotonic() + 1
            lags.append(loop_lag(clients[0]))
        time.sleep(max(0.0, 0.01 - (time.perf_counter() - began)))
    out.put({"latencies": latencies, "lags": lags, "failures": failures})


def loop_lag(client: httpx.Client) -> float:
    lines = client.get("/metrics").text.splitlines()
    return next((float(x.split()[1]) for x in lines if x.startswith("floodwall_event_loop_lag_seconds ")), math.nan)


def polled(base: str, work: Callable[[], Any]) -> tuple[dict[str, Any], Any]:
    """`work` while a poller runs in a process of its own (this one's GIL must not be what delays it)."""
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    poller = context.Process(target=poll, args=(base, stop, out))
    poller.start()
    time.sleep(1.5)  # its interpreter up
    result = work()
    stop.set()
    found = out.get(True, 60)
    poller.join(10)
    lat = sorted(1000 * x for x in found["latencies"][20:])  # past each client's first call (its connection)
    return {"polls": len(lat), **{f"p{p}": round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 2)
                                  for p in (50, 99, 99.9)}, "max": round(lat[-1], 2), "failures": found["failures"],
            "metrics_lag_max_ms": round(1000 * max(found["lags"], default=math.nan), 2)}, result


async def send_raw(port: int, spec: Req, n: int, key: str) -> tuple[str, float]:
    """One request as these exact bytes, from source(n); its status and X-Floodwall-Reason, and ms to the end."""
    headers = [("host", f"127.0.0.1:{port}"), ("connection", "close"), *spec.headers,
               *([("authorization", f"Bearer {key}")] if key else []),
               *([("content-length", str(len(spec.body)))] if spec.method == "POST" else [])]
    head = f"{spec.method} {spec.path}{'?' + spec.query if spec.query else ''} HTTP/1.1\r\n".encode()
    head += b"".join(f"{k}: ".encode() + v.encode() + b"\r\n" for k, v in headers) + b"\r\n"
    began, data = time.perf_counter(), bytearray()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source(n), 0))
    except OSError as exc:
        return f"connect {type(exc).__name__}", 0.0

    async def read() -> None:  # while sending: an answer given before the body was read is kept
        with contextlib.suppress(OSError):
            while chunk := await reader.read(65536):
                data.extend(chunk)

    reading = asyncio.ensure_future(read())
    with contextlib.suppress(OSError):
        writer.write(head + spec.body)
        await writer.drain()
    try:
        await asyncio.wait_for(reading, 60)
    except TimeoutError:
        return "timeout", 60_000.0
    finally:
        writer.close()
    if not data.startswith(b"HTTP/"):
        return "no answer (reset while sending)", 1000 * (time.perf_counter() - began)
    lines = bytes(data).split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    reason = next((x[19:].strip().decode() for x in lines if x.lower().startswith(b"x-floodwall-reason:")), "")
    return f"{lines[0].split()[1].decode()} {reason}".strip(), 1000 * (time.perf_counter() - began)


async def send_all(port: int, rounds: list[list[Req]], keys: list[str]) -> list[dict[str, Any]]:
    limit, results, counter = asyncio.Semaphore(4), collections.defaultdict(list), iter(range(10**9))

    async def one(spec: Req, n: int) -> None:
        async with limit:
            results[spec.family].append(await send_raw(port, spec, n, keys[n // 8 % len(keys)] if spec.key else ""))

    for specs in rounds:
        await asyncio.gather(*(one(spec, next(counter)) for spec in specs))
    return [{"family": f, "statuses": dict(collections.Counter(s for s, _ in got)),
             "max_ms": round(max(ms for _, ms in got), 1)} for f, got in results.items()]


def http_phase(tmp: Path, rounds: list[list[Req]], calm: float) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"FLOODWALL_EDGE_POLICY": "", "FLOODWALL_STATE_URL": "memory://", "FLOODWALL_DEFENSE_LEVEL": "normal",
           "FLOODWALL_ACCOUNTS_PASSWORD_HASH_PROFILE": "fast", "FLOODWALL_LOG_FORMAT": "json",
           "FLOODWALL_SERVER_TRUSTED_PROXIES": TRUSTED, "FLOODWALL_MODEL_TOKENS_PER_SECOND": "2000",
           "FLOODWALL_MODEL_FIRST_TOKEN_DELAY": "0"}
    log = tmp / "serve.log"
    with process([sys.executable, "-m", "floodwall", "serve", "--port", str(port), "--database",
                  f"sqlite:///{tmp / 'http.db'}"], env, f"{base}/healthz", log), \
            httpx.Client(base_url=base, timeout=30, transport=httpx.HTTPTransport(local_address="127.97.0.1")) as web:
        keys = [account_key(base, f"adversary{i}@example.com", f"127.98.{i}.1") for i in range(8)]
        before = loop_lag(web)
        calm_figures, _ = polled(base, lambda: time.sleep(calm))
        attack, rows = polled(base, lambda: asyncio.run(send_all(port, rounds, keys)))
        after = loop_lag(web)
    errors = [x[:300] for x in log.read_text(errors="replace").splitlines()
              if '"level": "error"' in x.lower() or '"level":"error"' in x.lower() or "Traceback" in x]
    return {"calm": calm_figures, "attack": attack, "families": rows, "loop_lag_s": [before, after],
            "server_errors": errors}


# ---------------------------------------------------------------- the report


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    return "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] +
                     ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, examples and seconds")
    args = parser.parse_args()
    args.reps, args.examples, gate_reps, http_reps, calm = (2, 12, 4, 1, 3.0) if args.quick else (5, 60, 20, 3, 10.0)
    git = [subprocess.run(["git", *c], capture_output=True, text=True).stdout.strip()
           for c in (["rev-parse", "--short", "HEAD"], ["status", "--porcelain", "src"])]
    print(f"# python3 bench/adversarial.py{' --quick' if args.quick else ''}: {datetime.date.today()}, commit "
          f"{git[0]}{' with uncommitted changes in src/' if git[1] else ''}, {os.cpu_count()} cores\n")
    caps = {"value (request_parts.MAX_VALUE, chars)": rp.MAX_VALUE, "values a part (MAX_VALUES)": rp.MAX_VALUES,
            "ranges (MAX_RANGES)": rp.MAX_RANGES,
            "range digits (MAX_RANGE_DIGITS)": rp.MAX_RANGE_DIGITS, "charsets (MAX_CHARSETS)": rp.MAX_CHARSETS,
            "scoring budget (CPU s, [scoring] budget)": scoring.ScoringPolicy().budget,
            "forwarding hops (identity.MAX_HOPS)": identity.MAX_HOPS, "a hop (MAX_ADDRESS)": identity.MAX_ADDRESS,
            "prompt read (prompts.MAX_SCANNED)": prompts.MAX_SCANNED, "prompt signed (SIGNED)": prompts.SIGNED,
            "form body (forms.MAX_FORM_BODY)": forms.MAX_FORM_BODY, "form fields (forms.MAX_FIELDS)": forms.MAX_FIELDS,
            "cookie value read (gate.cookie_value)": 4096, "signed token (Signer.loads)": 4096,
            "Content-Length digits (whole_number)": 18, "JSON depth (orjson)": 1024,
            "password (MAX_PASSWORD_LENGTH)": service.MAX_PASSWORD_LENGTH, "e-mail": 254,
            "server.max_header_size": HEADER_CAP, "server.max_body_size": BODY_CAP,
            "server.header_timeout / body_timeout (s)": f"{SERVER.header_timeout:g} / {SERVER.body_timeout:g}"}
    print(table([{"cap": k, "value": v} for k, v in caps.items()], ["cap", "value"]))
    began, findings = time.monotonic(), []
    pattern_rows, tokens = patterns(args.reps)
    parser_rows, motifs = parsers(args)
    print(f"\n## 1. Parsers in process ({args.reps} runs of each input; each parser's worst input by median CPU; "
          f"live: on the request path at this size)\n")
    worst = {}
    for r in parser_rows:
        if r["parser"] not in worst or r["cpu_ms"] > worst[r["parser"]]["cpu_ms"]:
            worst[r["parser"]] = r
    print(table(sorted(worst.values(), key=lambda r: -r["cpu_ms"]),
                ["parser", "family", "median_ms", "max_ms", "cpu_ms", "outcome", "live"]))
    stars = [r["regexploit_starriness"] for r in pattern_rows if "rule" not in r]
    counts = [sum(s > 2 for s in stars), sum(s == -1 for s in stars)]
    slow = sorted(pattern_rows, key=lambda r: -r["cpu_ms"])
    print(f"\nRE2 patterns: {len(stars)}; regexploit{' (not installed)' * (-2 in stars)}: {counts[0]} would backtrack "
          f"under Python's re (starriness > 2), {counts[1]} not readable (RE2-only syntax). The slowest on a soup of "
          f"their tokens at the cap, patterns alone and scoring's sets (a value is matched whole: the budget is "
          f"checked between values):\n")
    print(table(slow[:6], ["pattern", "regexploit_starriness", "median_ms", "max_ms", "cpu_ms"]))
    for parser_name in dict.fromkeys(r["parser"] for r in parser_rows):
        mine = [r for r in parser_rows if r["parser"] == parser_name]
        over = [r for r in mine if r["cpu_ms"] > TARGET_MS and r["live"]]
        if over:
            top = max(over, key=lambda r: r["cpu_ms"])
            findings.append(f"parser {parser_name}: {len(over)} input(s) above {TARGET_MS:g} ms of CPU, worst "
                            f"{top['cpu_ms']} ms on {top['family']}")
        findings += [f"parser {parser_name} raised {r['outcome']} on {r['family']}" for r in mine
                     if r["outcome"] not in EXPECTED]
    # the gate and HTTP also carry: fresh soups of the two slowest request rules' tokens, hypothesis's motifs
    rules = list(dict.fromkeys(r["rule"] for r in slow if "rule" in r))[:2]
    extra: dict[str, Make] = {f"RE2 soup of {rule}'s tokens": (lambda n, t=tokens[f"request rule {rule}"]: "".join(
        RNG.choices(t, k=n))[:n]) for rule in rules}
    extra.update({f"hypothesis motif of {k}": (lambda n, m=m: rep(m, n)) for k, m in motifs.items()
                  if k in ("request_parts._decoded", "_decoded + shell_words (one value)")})
    errors, handler = [], logging.Handler(logging.ERROR)  # what the gate logs as it fails (scoring errors)
    handler.emit = lambda record: errors.append(f"{record.name}: {record.getMessage()}"[:300])  # type: ignore
    logging.getLogger("floodwall").addHandler(handler)
    with tempfile.TemporaryDirectory(prefix="fw-adversarial-") as folder:
        gate_rows = asyncio.run(gate_phase(gate_settings(Path(folder)), lambda s: requests(s, extra), gate_reps))
        print(f"\n## 2. The gate alone, in process ({gate_reps} requests a family, each from a fresh address with "
              f"new values)\n")
        print(f"The {min(25, len(gate_rows))} slowest of {len(gate_rows)} families by CPU (all in the JSON):\n")
        print(table(sorted(gate_rows, key=lambda r: -r["cpu_max_ms"])[:25],
                    ["family", "median_ms", "max_ms", "cpu_median_ms", "cpu_max_ms", "statuses", "events"]))
        # judged on the gate's own CPU time (this thread's): wall time also counts other processes' turns
        over = [r for r in gate_rows if r["cpu_max_ms"] > TARGET_MS]
        top, wall = max(gate_rows, key=lambda r: r["cpu_max_ms"]), max(gate_rows, key=lambda r: r["max_ms"])
        print(f"\ngate: worst CPU {top['cpu_max_ms']} ms ({top['family']}), worst wall {wall['max_ms']} ms "
              f"({wall['family']}); {len(over)} of {len(gate_rows)} families above {TARGET_MS:g} ms of CPU at their "
              f"max, {sum(r['cpu_median_ms'] > TARGET_MS for r in gate_rows)} at their median; errors logged: "
              f"{len(errors)}")
        findings += [f"gate: {r['family']}: CPU max {r['cpu_max_ms']} ms, median {r['cpu_median_ms']} ms "
                     f"(wall max {r['max_ms']})" for r in over]
        findings += [f"gate logged: {e}" for e in errors[:5]]
        rounds = [requests(str(200 + r), extra) + bodies_at_caps(str(200 + r)) for r in range(http_reps)]
        http = http_phase(Path(folder), rounds, calm)
    print(f"\n## 3. Over HTTP ({http_reps} of each, 4 at a time, each from its own address)\n")
    print(f"The 20 slowest of {len(http['families'])} families, client-side (all in the JSON):\n")
    print(table(sorted(http["families"], key=lambda r: -r["max_ms"])[:20], ["family", "statuses", "max_ms"]))
    statuses: collections.Counter[str] = collections.Counter()
    for r in http["families"]:
        statuses.update(r["statuses"])
    failed = {s: c for s, c in statuses.items() if s[:1] == "5"}
    calm_f, attack = http["calm"], http["attack"]
    print(f"\nstatuses: {dict(sorted(statuses.items()))}\n5xx: {sum(failed.values())} {failed or ''}\n")
    print(table([{"/healthz every 10 ms": name, **f, **{f"x{k}": round(f[k] / calm_f[k], 1)
                                                       for k in ("p50", "p99", "p99.9", "max") if calm_f[k]}}
                 for name, f in (("calm", calm_f), ("under the families", attack))],
                ["/healthz every 10 ms", "polls", "p50", "p99", "p99.9", "max", "xp50", "xp99", "xp99.9", "xmax",
                 "failures", "metrics_lag_max_ms"]))
    print(f"\nfloodwall_event_loop_lag_seconds before / after: {http['loop_lag_s'][0]:.4f} / "
          f"{http['loop_lag_s'][1]:.4f}; errors in the server's log: {len(http['server_errors'])}")
    findings += [f"HTTP {r['family']}: {r['statuses']}" for r in http["families"]
                 if any(s[:1] == "5" or not s[:1].isdigit() for s in r["statuses"])]  # 5xx, resets, timeouts
    findings += [f"/healthz failed {f['failures']} times {name}" for name, f in (("calm", calm_f),
                                                                                 ("under the families", attack))
                 if f["failures"]]
    findings += [f"server log: {x}" for x in http["server_errors"][:5]]
    OUT.mkdir(exist_ok=True)
    (OUT / "adversarial.json").write_text(json.dumps(
        {"commit": git[0], "uncommitted_src": bool(git[1]), "quick": args.quick, "caps": caps,
         "patterns": pattern_rows, "parsers": parser_rows, "gate": gate_rows, "http": http, "findings": findings},
        indent=2, default=str))
    print(f"\n## Findings ({len(findings)})\n" + "\n".join(f"- {f}" for f in findings))
    print(f"\n{time.monotonic() - began:.0f} s; wrote {OUT / 'adversarial.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
