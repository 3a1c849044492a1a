"""The simulator's populations: established users, whose service must not suffer, and the attackers.

Each population sets itself up before the run (accounts it needs) and then acts until told to stop. Users
act as people do (a request, a pause); attackers send at a fixed rate whatever the answers (open loop), up
to a bound on requests in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import importlib
import itertools
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any

import httpx

from floodwall.sim.attack import corpus
from floodwall.sim.attack.recorder import Recorder, percentile
from floodwall.sim.attack.traffic import Client, Reply, Sources, Target, sign_up

# the counter of answers that failed rather than refused: a 500, or another 5xx without a reason code
SERVER_FAILURE = "server_failure"

CHAT = "/v1/chat/completions"
MODEL = "floodwall-simulated-chat"


@dataclasses.dataclass
class Context:
    target: Target
    recorder: Recorder
    sources: Sources
    corpora: corpus.Corpora
    forwarded_for: bool = False
    admin_token: str = ""  # with it, set-up can make what existed before the attack at the normal level
    rate: float = 1000.0  # the flood's requests per second
    flood_sources: int = 5000
    model: str = MODEL
    rng: random.Random = dataclasses.field(default_factory=lambda: random.Random(7))
    # registration attempts and "registration_busy" refusals, by second of the run
    registrations: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)
    registrations_busy: collections.Counter[int] = dataclasses.field(default_factory=collections.Counter)

    def client(self, source: str) -> Client:
        return Client(self.target, source, forwarded_for=self.forwarded_for)

    def web(self, source: str) -> httpx.AsyncClient:
        """A cookie-keeping client for set-up steps (register, log in, make a key)."""
        if self.forwarded_for:
            return httpx.AsyncClient(base_url=self.target.url, timeout=30, headers={"x-forwarded-for": source})
        transport = httpx.AsyncHTTPTransport(local_address=source)
        return httpx.AsyncClient(base_url=self.target.url, timeout=30, transport=transport)

    def note_registration(self, reply: Reply) -> None:
        """Registration limited and reopened, as the service's answers show it."""
        second = int(self.recorder.now())
        self.registrations[second] += 1
        if reply.status in (429, 503) and reply.code == "registration_busy":
            self.registrations_busy[second] += 1

    def registration_limited(self, end: float) -> list[list[int]]:
        """The windows [from, to) in seconds when most registration attempts were refused as busy."""
        windows: list[list[int]] = []
        for second in range(int(end) + 1):
            tried = self.registrations[second]
            if tried and self.registrations_busy[second] * 2 >= tried:
                if windows and second - windows[-1][1] <= 2:  # a quiet second or two does not reopen it
                    windows[-1][1] = second + 1
                else:
                    windows.append([second, second + 1])
        return windows


@contextlib.asynccontextmanager
async def at_normal_level(ctx: Context) -> AsyncIterator[None]:
    """With the operator's token: the level set to normal while set-up makes what existed before the attack
    (accounts, and the devices their owners have used), then the operator's mode again."""
    if not ctx.admin_token:
        yield
        return
    async with httpx.AsyncClient(base_url=ctx.target.url, timeout=30,
                                 headers={"authorization": f"Bearer {ctx.admin_token}"}) as admin:
        before = (await admin.get("/admin/api/level")).json().get("mode", "auto")
        await admin.put("/admin/api/level", json={"level": "normal", "reason": "simulator set-up"})
        try:
            yield
        finally:
            await admin.put("/admin/api/level", json={"level": before, "reason": "simulator set-up done"})


async def make_account(ctx: Context, source: str, email: str, password: str) -> str | None:
    """Register, log in and create an API key; None when the target has no accounts (a bare model server)."""
    async with ctx.web(source) as web:
        try:
            await sign_up(web, email, password)
            login = await web.post("/auth/login", json={"email": email, "password": password})
            if login.status_code != 200:
                return None
            made = await web.post("/account/keys", json={"name": "simulator"})
            key = made.json().get("key") if made.status_code in (200, 201) else None
            return str(key) if key else None
        except (httpx.HTTPError, ValueError):
            return None


def chat_body(ctx: Context, text: str, max_tokens: int = 16, stream: bool = False) -> dict[str, Any]:
    return {"model": ctx.model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens,
            "stream": stream}


class Population:
    name = "population"
    attacker = True

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def setup(self) -> None:
        pass

    async def run(self, until: float) -> None:
        raise NotImplementedError

    def outcomes(self) -> dict[str, Any]:
        """What this population achieved, in its own terms, for the report."""
        return {}

    def record(self, reply: Reply, *, reached_model: bool = False) -> None:
        if reply.status == 0:  # no HTTP answer: say how it failed
            self.ctx.recorder.counters[f"{self.name}.no_answer.{reply.error}"] += 1
        elif reply.status == 500 or (reply.status > 500 and not reply.code):
            # a failure, not a refusal: a deliberate 502-504 says why in an OpenAI-shaped error
            self.ctx.recorder.counters[f"{self.name}.{SERVER_FAILURE}"] += 1
        self.ctx.recorder.add(self.name, 200 <= reply.status < 300, reply.status, reply.latency,
                              reached_model=reached_model)


class Attacker(Population):
    """An open-loop attacker: `one()` `rate` times a second from its source addresses in turn."""

    max_in_flight = 512

    def __init__(self, ctx: Context, rate: float, sources: int) -> None:
        super().__init__(ctx)
        self.rate = rate
        self.addresses = ctx.sources.take(sources)
        self.turn = itertools.cycle(self.addresses)
        self.clients: dict[str, Client] = {}

    def kept(self, source: str) -> Client:
        """The keep-alive client of `source` (bots that rotate addresses make a new one each time)."""
        client = self.clients.get(source)
        if client is None:
            client = self.clients[source] = self.ctx.client(source)
        return client

    async def run(self, until: float) -> None:
        await paced(self.rate, until, self.one, max_in_flight=self.max_in_flight, recorder=self.ctx.recorder,
                    name=self.name)
        await asyncio.gather(*(client.close() for client in self.clients.values()))

    async def one(self) -> None:
        raise NotImplementedError


STOP_GRACE = 5.0


async def paced(rate: float, until: float, fire: Callable[[], Coroutine[Any, Any, None]], *, max_in_flight: int,
                recorder: Recorder, name: str) -> None:
    """Open loop: `rate` calls of `fire` a second until `until` (recorder time), whatever the answers."""
    tasks: set[asyncio.Task[None]] = set()
    owed = 0.0
    last = recorder.now()
    while last < until:
        await asyncio.sleep(0.01)
        now = recorder.now()
        # by the time that passed, not by the ticks: a busy simulator sends late, not less
        owed += rate * (min(now, until) - last)
        last = now
        while owed >= 1:
            owed -= 1
            if len(tasks) >= max_in_flight:
                recorder.counters[f"{name}.not_sent"] += 1  # the simulator's own bound, not the target's doing
                continue
            task = asyncio.create_task(fire())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    if tasks:
        # then the tool stops, as an attacker's does: what is unanswered a few seconds on is abandoned, and
        # calls still waiting in the simulator for a connection are never sent after the attack's end
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        recorder.counters[f"{name}.unfinished"] += len(pending)
        for task in pending:
            task.cancel()


class Established(Population):
    """Accounts that existed before the attack, chatting through the official openai client (streaming)."""

    name = "established"
    attacker = False

    def __init__(self, ctx: Context, keys: Sequence[str] = (), users: int = 8, think: float = 1.0) -> None:
        super().__init__(ctx)
        self.keys = list(keys)
        self.users = len(self.keys) or users
        self.think = think
        self.addresses = ctx.sources.take(self.users, own_networks=True)

    async def setup(self) -> None:
        if self.keys:
            return
        made = await asyncio.gather(*(
            make_account(self.ctx, source, f"user{i}.{secrets.token_hex(3)}@example.com", secrets.token_urlsafe(12))
            for i, source in enumerate(self.addresses)))
        # a bare model server has no accounts: any key will do
        self.keys = [key or "sk-simulator" for key in made]
        self.ctx.recorder.counters["established.registered_by_simulator"] = sum(k is not None for k in made)

    async def run(self, until: float) -> None:
        await asyncio.gather(*(self._user(key, source, until) for key, source in
                               zip(self.keys, self.addresses, strict=True)))

    async def _user(self, key: str, source: str, until: float) -> None:
        import openai

        headers = {"x-forwarded-for": source} if self.ctx.forwarded_for else None
        # the HTTP library openai is built on (httpx, or its successor httpx2), to speak from `source`
        library: Any = importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])
        transport = None if self.ctx.forwarded_for else library.AsyncHTTPTransport(local_address=source)
        async with openai.DefaultAsyncHttpxClient(transport=transport, timeout=30) as http:
            client = openai.AsyncOpenAI(base_url=f"{self.ctx.target.url}/v1", api_key=key, max_retries=0,
                                        http_client=http, default_headers=headers)
            rng = random.Random(source)
            await asyncio.sleep(rng.uniform(0, self.think))
            while self.ctx.recorder.now() < until:
                await self._chat(client)
                await asyncio.sleep(rng.expovariate(1 / self.think))

    async def _chat(self, client: Any) -> None:
        import openai

        started = time.monotonic()
        first: float | None = None
        status = 200
        try:
            stream = await client.chat.completions.create(
                model=self.ctx.model, messages=[{"role": "user", "content": "Hello! How are you today?"}],
                max_tokens=16, stream=True)
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.monotonic() - started
        except openai.APIStatusError as exc:
            status = exc.status_code
        except openai.APIError:  # no HTTP answer: refused, reset or timed out
            status = 0
        latency = time.monotonic() - started
        self.ctx.recorder.add(self.name, status == 200, status, latency, ttft=first, reached_model=status == 200)


class Flood(Attacker):
    """An HTTP flood from many source addresses: inference calls without a key, with a wrong key and with
    keys of freshly made accounts, and page loads."""

    name = "flood"
    max_in_flight = 4096

    def __init__(self, ctx: Context, accounts: int = 10) -> None:
        super().__init__(ctx, ctx.rate, ctx.flood_sources)
        self.accounts = accounts
        self.keys: list[str] = []

    async def setup(self) -> None:
        made = await asyncio.gather(*(
            make_account(self.ctx, source, f"flood{i}.{secrets.token_hex(3)}@example.net", secrets.token_urlsafe(12))
            for i, source in enumerate(self.addresses[:self.accounts])))
        self.keys = [key for key in made if key]

    async def one(self) -> None:
        client = self.kept(next(self.turn))
        kind = self.ctx.rng.random()
        body = chat_body(self.ctx, "Write a very long story about anything.", max_tokens=256)
        if kind < 0.35:
            reply = await client.call("POST", CHAT, body)
        elif kind < 0.5:
            reply = await client.call("POST", CHAT, body, headers={"authorization": "Bearer fw_" + "x" * 43})
        elif kind < 0.7 and self.keys:
            key = self.ctx.rng.choice(self.keys)
            reply = await client.call("POST", CHAT, body, headers={"authorization": f"Bearer {key}"})
        else:
            reply = await client.call("GET", self.ctx.rng.choice(("/", "/login", "/register", "/chat")))
            self.record(reply)
            return
        self.record(reply, reached_model=reply.status == 200)


class Stuffing(Attacker):
    """Credential stuffing: a leaked list of e-mail and password pairs, the right password of every victim
    among many wrong ones. Some victims' owners sign in now and then from the browsers they signed up with:
    `own` each on a network of their own, `shared` behind one /24 (a carrier's NAT, an office); the rest
    (`dormant`) are not around."""

    name = "stuffing"

    def __init__(self, ctx: Context, rate: float = 50.0, own: int = 5, shared: int = 25, dormant: int = 100,
                 sources: int = 2000) -> None:
        super().__init__(ctx, rate, sources)
        self.owner_sources = ctx.sources.take(own, own_networks=True) + ctx.sources.take_network(shared)
        self.shared = set(self.owner_sources[own:])
        self.dormant_sources = ctx.sources.take(dormant, own_networks=True)
        self.pairs: Iterator[tuple[str, str, bool]] = iter(())  # email, password, right
        self.leaked = 0
        self.attempts = 0
        self.takeovers = 0
        self.wrong_password_logins = 0
        self.owners: list[tuple[str, str, httpx.AsyncClient, str]] = []
        self.owner_every = 5.0
        self.owner_logins: collections.Counter[str] = collections.Counter()
        self.owner_logins_ok: collections.Counter[str] = collections.Counter()
        self.owner_latencies: list[float] = []

    async def setup(self) -> None:
        room = asyncio.Semaphore(4)  # people sign up over time, not 130 hashes at once (that is 503 auth_busy)
        async with at_normal_level(self.ctx):  # the accounts, and the owners' devices, predate the attack
            made = await asyncio.gather(*(self._victim(i, source, room) for i, source in
                                          enumerate(self.owner_sources + self.dormant_sources)))
        accounts = [(email, password) for email, password, web, source in made if web is not None]
        for email, password, web, source in made:
            if web is None:
                continue
            if source in self.dormant_sources:
                await web.aclose()
            else:
                self.owners.append((email, password, web, "shared" if source in self.shared else "own"))
        rng = self.ctx.rng
        pairs = [(email, password, True) for email, password in accounts]
        self.leaked = len(pairs)
        pairs += [(email, rng.choice(self.ctx.corpora.common_passwords), False) for email, _ in accounts
                  for _ in range(20)]
        pairs += [(f"{secrets.token_hex(4)}@example.com", rng.choice(self.ctx.corpora.common_passwords), False)
                  for _ in range(2000)]
        rng.shuffle(pairs)
        self.pairs = itertools.cycle(pairs)

    async def _victim(self, i: int, source: str,
                      room: asyncio.Semaphore) -> tuple[str, str, httpx.AsyncClient | None, str]:
        """One account, signed up from its owner's browser (which keeps its device cookie for the run)."""
        email, password = f"victim{i}.{secrets.token_hex(3)}@example.com", secrets.token_urlsafe(12)
        web = self.ctx.web(source)
        try:
            async with room:
                for _ in range(3):
                    status = await sign_up(web, email, password)
                    if status == 201:
                        return email, password, web, source
                    if status != 503:
                        break
                    await asyncio.sleep(2)
        except (httpx.HTTPError, ValueError):
            pass
        await web.aclose()
        return email, password, None, source

    async def run(self, until: float) -> None:
        await asyncio.gather(super().run(until), *(self._owner(*owner, until) for owner in self.owners))

    async def _owner(self, email: str, password: str, web: httpx.AsyncClient, group: str, until: float) -> None:
        """The account's owner signs in now and then from their own device, as the wave goes on."""
        try:
            await asyncio.sleep(self.ctx.rng.uniform(0, self.owner_every))
            while self.ctx.recorder.now() < until:
                started = time.monotonic()
                try:
                    status = (await web.post("/auth/login", json={"email": email, "password": password})).status_code
                except httpx.HTTPError:
                    status = 0
                self.owner_logins[group] += 1
                self.owner_logins_ok[group] += status == 200
                self.owner_latencies.append(time.monotonic() - started)
                await asyncio.sleep(self.owner_every)
        finally:
            await web.aclose()

    async def one(self) -> None:
        email, password, right = next(self.pairs)
        client = self.ctx.client(next(self.turn))
        self.attempts += 1
        reply = await client.call("POST", "/auth/login", {"email": email, "password": password})
        await client.close()
        if reply.status == 200:
            if right:
                self.takeovers += 1
            else:
                self.wrong_password_logins += 1
        self.record(reply)

    def outcomes(self) -> dict[str, Any]:
        p95 = percentile(self.owner_latencies, 95)
        return {"stuffing_attempts": self.attempts, "stuffing_leaked_pairs": self.leaked,
                "takeovers_with_leaked_password": self.takeovers,
                "logins_with_wrong_password": self.wrong_password_logins,
                "owner_logins": sum(self.owner_logins.values()), "owner_logins_ok": sum(self.owner_logins_ok.values()),
                # by where the owners are: each on a network of their own, or many behind one /24
                "owner_logins_by_network": {group: {"tried": self.owner_logins[group],
                                                    "ok": self.owner_logins_ok[group]} for group in ("own", "shared")},
                "owner_login_p95_ms": round(p95 * 1000, 1) if p95 is not None else None}


class Probe(Attacker):
    """Scanners: attack payloads in URL parameters, paths and JSON bodies; malformed and mistyped input."""

    name = "probe"

    def __init__(self, ctx: Context, rate: float = 50.0, sources: int = 200) -> None:
        super().__init__(ctx, rate, sources)

    async def one(self) -> None:
        client = self.kept(next(self.turn))
        rng = self.ctx.rng
        payload = rng.choice(self.ctx.corpora.web_payloads)
        quoted = corpus.url_quote(payload)
        shape = rng.randrange(7)
        if shape == 0:
            reply = await client.call("GET", f"/v1/models?q={quoted}")
        elif shape == 1:
            reply = await client.call("GET", f"/{quoted}")
        elif shape == 2:
            reply = await client.call("POST", CHAT, chat_body(self.ctx, payload))
        elif shape == 3:
            reply = await client.call("POST", "/auth/login", {"email": payload, "password": payload})
        elif shape == 4:
            reply = await client.call("POST", CHAT, raw=b'{"model": "x", "messages": [' + payload.encode()[:200])
        elif shape == 5:
            reply = await client.call("POST", CHAT, {"model": [payload], "messages": "x", "max_tokens": "lots"})
        else:
            path = rng.choice(("/admin/api/level", "/.env", "/wp-login.php", "/v1/../../etc/passwd", "/api/v1/users"))
            reply = await client.call("GET", path)
        self.record(reply, reached_model=reply.status == 200 and shape == 2)

    def outcomes(self) -> dict[str, Any]:
        return {"probe_server_errors": self.ctx.recorder.counters[f"{self.name}.{SERVER_FAILURE}"]}


class Jailbreak(Attacker):
    """Accounts sending prompt-injection and jailbreak prompts."""

    name = "jailbreak"

    def __init__(self, ctx: Context, rate: float = 10.0, accounts: int = 10) -> None:
        super().__init__(ctx, rate, accounts)
        self.keys: dict[str, str] = {}

    async def setup(self) -> None:
        made = await asyncio.gather(*(
            make_account(self.ctx, source, f"jb{i}.{secrets.token_hex(3)}@example.net", secrets.token_urlsafe(12))
            for i, source in enumerate(self.addresses)))
        self.keys = {source: key or "sk-simulator" for key, source in zip(made, self.addresses, strict=True)}

    async def one(self) -> None:
        source = next(self.turn)
        key, client = self.keys[source], self.kept(source)
        prompt = self.ctx.rng.choice(self.ctx.corpora.jailbreaks)
        reply = await client.call("POST", CHAT, chat_body(self.ctx, prompt, max_tokens=64),
                                  headers={"authorization": f"Bearer {key}"})
        self.record(reply, reached_model=reply.status == 200)
