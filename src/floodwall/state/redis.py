"""The shared Store: Redis or Valkey, one round trip per decision (a Lua script over every bucket).

The script reads Redis's own clock, so replicas with skewed clocks still share one limit exactly.
When Redis cannot be reached, decisions fall back to a MemoryStore in this process: limits still hold
per process (looser by the number of replicas), nobody gets a 500, established users keep being served.
Every fallback is counted and logged (the first one, and the recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from floodwall import logs
from floodwall.limits import Bucket, Verdict
from floodwall.state.memory import STRIKE_MEMORY, MemoryStore
from floodwall.state.store import TRAFFIC_MEMORY, Ban, held_refund

log = logging.getLogger("floodwall.state")
# charges made without asking (a call's tokens reconciled, a prompt strike, a refund) wait, merged per
# bucket, and ride along with the next decision's round trip (any caller's); with no decision for this long,
# they go on their own. So a model call's round trips are its decisions only.
CHARGE_DELAY = 1.0
MAX_PENDING_CHARGES = 10_000  # buckets waiting: beyond, they go at once
RIDE_ALONG = 64  # charges one decision takes along at most (its round trip stays short)
FLUSH_BATCH = 1_000  # charges one flush sends in a round trip

# KEYS: one per bucket. ARGV: for each bucket interval, tolerance, cost; then the mode (0 peek, 1 hit,
# 2 force), how many buckets from the first the mode applies to, how many after those are only peeked, and how
# many after those are held: hit (all or none) only where the first were, each counting at least what the
# peeked one in its place has spent (where there are as many of both). The keys after those are charges
# riding along: forced (never refused, never before now) before anything is decided, whatever the decision.
# Returns, for each bucket decided, peeked or held: allowed (0/1), retry_after, remaining, reset_after (as
# strings: Lua numbers would be truncated to integers on the way back).
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n = #KEYS
local mode = ARGV[n * 3 + 1]
local spending = tonumber(ARGV[n * 3 + 2])
local peeked = spending + tonumber(ARGV[n * 3 + 3])
local looked = peeked + tonumber(ARGV[n * 3 + 4] or '0')
local out = {}
local tats = {}
local all = true
local held = true
local paired = looked - peeked == peeked - spending
local function put(i, value)
  redis.call('SET', KEYS[i], string.format('%.17g', value), 'EX', math.ceil(value - now) + 1)
end
local function forced(i, tat)
  return math.max(math.max(tat, now) + tonumber(ARGV[i * 3 - 2]) * tonumber(ARGV[i * 3]), now)
end
-- the charges riding along first: what is decided after them sees them (a refund, a strike)
for i = looked + 1, n do
  put(i, forced(i, tonumber(redis.call('GET', KEYS[i]) or '0')))
end
for i = 1, looked do
  local interval = tonumber(ARGV[i * 3 - 2])
  local tolerance = tonumber(ARGV[i * 3 - 1])
  local cost = tonumber(ARGV[i * 3])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if i > peeked and paired then tat = math.max(tat, tats[i - peeked + spending]) end
  local start = math.max(tat, now)
  local new_tat = start + interval * cost
  local over = new_tat - now - tolerance
  if over > 1e-9 then
    if i <= spending then all = false elseif i > peeked then held = false end
    local remaining = math.floor((tolerance - (start - now)) / interval)
    out[#out + 1] = {0, tostring(over), math.max(0, remaining), tostring(start - now)}
  else
    out[#out + 1] = {1, '0', math.floor((tolerance - (new_tat - now)) / interval + 1e-9), tostring(new_tat - now)}
  end
  tats[i] = tat
end
if mode == '2' then
  for i = 1, spending do put(i, forced(i, tats[i])) end
elseif mode == '1' and all then
  for i = 1, spending do
    put(i, math.max(tats[i], now) + tonumber(ARGV[i * 3 - 2]) * tonumber(ARGV[i * 3]))
  end
  if held then
    for i = peeked + 1, looked do
      put(i, math.max(tats[i], now) + tonumber(ARGV[i * 3 - 2]) * tonumber(ARGV[i * 3]))
    end
  end
end
return out
"""

BAN = """
local strikes_key = KEYS[2]
local strikes = tonumber(redis.call('GET', strikes_key) or '0')
local duration = tonumber(ARGV[1])
if ARGV[3] == '1' then
  duration = duration * (2 ^ strikes)
  strikes = strikes + 1
  redis.call('SET', strikes_key, strikes, 'EX', ARGV[4])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + duration
redis.call('HSET', KEYS[1], ARGV[2], cjson.encode({reason = ARGV[5], ['until'] = until_, strikes = strikes}))
return {tostring(until_), strikes}
"""

# KEYS: the queue's hash. ARGV: rate, burst, join (0/1). The same formula as store.advance.
QUEUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'issued', 'frontier', 'last')
local issued = tonumber(state[1] or '0')
local frontier = tonumber(state[2] or tostring(burst))
local last = tonumber(state[3] or tostring(now))
frontier = math.min(issued + burst, frontier + rate * math.max(0, now - last))
if ARGV[3] == '1' then issued = issued + 1 end
redis.call('HSET', KEYS[1], 'issued', issued, 'frontier', tostring(frontier), 'last', tostring(now))
redis.call('EXPIRE', KEYS[1], 604800)
return {issued, tostring(frontier)}
"""

# KEYS: the role's lease. ARGV: owner, ttl in ms. Take the lease if free, renew it if ours.
LEAD = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# KEYS: the board. ARGV: owner, its figures (JSON), ttl in seconds. File this owner's figures with the server's
# time; drop owners not heard from within the ttl; return the others' figures.
SHARE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], tostring(now) .. ' ' .. ARGV[2])
redis.call('EXPIRE', KEYS[1], math.ceil(ttl) + 60)
local all = redis.call('HGETALL', KEYS[1])
local others = {}
for i = 1, #all, 2 do
  local space = string.find(all[i + 1], ' ', 1, true)
  local at = space and tonumber(string.sub(all[i + 1], 1, space - 1))
  if not at or now - at > ttl then
    redis.call('HDEL', KEYS[1], all[i])
  elseif all[i] ~= ARGV[1] then
    table.insert(others, string.sub(all[i + 1], space + 1))
  end
end
return others
"""


class RedisStore:
    def __init__(self, url: str, timeout: float = 0.25, max_connections: int = 64) -> None:
        # ?prefix=name: keeps several floodwall deployments (or test runs) apart in one Redis database
        parts = urlsplit(url.replace("valkey://", "redis://", 1))
        query = dict(parse_qsl(parts.query))
        self.prefix = query.pop("prefix", "fw:")
        self.url = urlunsplit(parts._replace(query=urlencode(query)))
        # a bounded pool that waits for a free connection: a burst of decisions queues briefly instead of
        # opening a connection each (and failing over to local limits when the pool runs out)
        pool = aioredis.BlockingConnectionPool.from_url(
            self.url, max_connections=max_connections, timeout=timeout * 4, socket_timeout=timeout,
            socket_connect_timeout=timeout, health_check_interval=30,
        )
        self.pool = pool
        self.client = aioredis.Redis(connection_pool=pool)
        self._gcra = self.client.register_script(GCRA)
        self._ban = self.client.register_script(BAN)
        self._queue = self.client.register_script(QUEUE)
        self._lead = self.client.register_script(LEAD)
        self._share = self.client.register_script(SHARE)
        self.local = MemoryStore()
        self.fallbacks = 0
        self.round_trips = 0
        self._failing = False
        self._pending: dict[tuple[str, int | str, float, float], float] = {}
        self._flushing: asyncio.Task[None] | None = None
        self._waiting_since: float | None = None  # when the oldest charge waiting was made

    def _failed(self, exc: Exception) -> None:
        self.fallbacks += 1
        if not self._failing:
            logs.event(log, "redis_unreachable", logging.ERROR, url=self.url, error=repr(exc),
                       effect="limits now decided in this process only")
        self._failing = True

    def _recovered(self) -> None:
        if self._failing:
            logs.event(log, "redis_recovered", logging.WARNING, url=self.url, fallbacks=self.fallbacks)
        self._failing = False

    async def _decide(self, buckets: Sequence[Bucket], spend: bool, force: bool = False,
                      peek: Sequence[Bucket] = (), hold: Sequence[Bucket] = ()) -> list[Verdict]:
        if not buckets and not peek and not hold and not self._pending:
            return []
        charges = self._pending_charges(RIDE_ALONG)  # riding along: no round trip of their own
        every = [*buckets, *peek, *hold, *charges]
        keys = [f"{self.prefix}rl:{b.rule}:{b.ident}" for b in every]
        args: list[str] = []
        for b in every:
            args += [repr(b.interval), repr(b.tolerance), repr(b.cost)]
        args += ["2" if force else "1" if spend else "0", str(len(buckets)), str(len(peek)), str(len(hold))]
        try:
            self.round_trips += 1
            rows = await self._gcra(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed(exc)
            self._keep(charges)
            if force:  # (a flush: its charges are as those riding along)
                self._keep(buckets)
                return []
            if not spend:
                return self.local.decide([*buckets, *peek, *hold], False)
            # no strike is held here: its release could not tell which store to go to (while this fallback
            # decides, `holding` says so, and prompts go aside without one)
            return self.local.decide_now(buckets, peek) + [Verdict(False, 0.0, 0, 0.0)] * len(hold)
        except BaseException:  # cancelled on the way (a client gone, a shutdown): the charges wait again, but
            # not the refunds: Redis may have applied them already, and one given twice undoes a charge (a
            # strike held), where one lost only errs toward the limit
            self._merge([charge for charge in charges if charge.cost > 0])
            raise
        self._recovered()
        return [Verdict(bool(int(a)), float(r), int(rem), float(reset)) for a, r, rem, reset in rows]

    def _keep(self, charges: Sequence[Bucket]) -> None:
        """Charges Redis could not take: applied in this process, whose limits stand meanwhile; but a hold given
        back waits for Redis, the only store that held it (forced here, it stayed held there for minutes)."""
        self.local.force([charge for charge in charges if not held_refund(charge)])
        self._merge([charge for charge in charges if held_refund(charge)])

    async def hit(self, buckets: Sequence[Bucket], peek: Sequence[Bucket] = (),
                  hold: Sequence[Bucket] = ()) -> list[Verdict]:
        return await self._decide(buckets, True, peek=peek, hold=hold)

    def decide_now(self, buckets: Sequence[Bucket], peek: Sequence[Bucket] = (),
                   hold: Sequence[Bucket] = ()) -> list[Verdict] | None:
        return None  # a decision is a round trip to Redis

    async def peek(self, buckets: Sequence[Bucket]) -> list[Verdict]:
        return await self._decide(buckets, False)

    def holding(self) -> bool:
        return not self._failing  # (in the fallback nothing is held: its release could go to the wrong store)

    async def charge(self, buckets: Sequence[Bucket]) -> None:
        await self._decide(buckets, True, force=True)

    def charge_later(self, buckets: Sequence[Bucket]) -> None:
        loop = asyncio.get_running_loop()  # before anything changes: no loop, no charge
        self._merge(buckets)
        if self._flushing is None or self._flushing.done():
            self._flushing = loop.create_task(self._flush_later())

    def _merge(self, buckets: Sequence[Bucket]) -> None:
        pending = self._pending
        for b in buckets:
            key = (b.rule, b.ident, b.interval, b.tolerance)
            pending[key] = pending.get(key, 0.0) + b.cost
        if pending and self._waiting_since is None:
            self._waiting_since = time.monotonic()

    async def _flush_later(self) -> None:
        # charges go on their own once the oldest has waited CHARGE_DELAY with no decision taking them, or
        # at once when too many wait
        while self._pending:
            due = (self._waiting_since or 0.0) + CHARGE_DELAY
            if len(self._pending) >= MAX_PENDING_CHARGES or time.monotonic() >= due:
                await self.flush()
                return
            await asyncio.sleep(min(0.1, max(0.0, due - time.monotonic())))

    def _pending_charges(self, most: int) -> list[Bucket]:
        """Up to `most` of the charges waiting, taken (the rest keep waiting)."""
        taken = dict(itertools.islice(self._pending.items(), most))
        for key in taken:
            del self._pending[key]
        if not self._pending:
            self._waiting_since = None
        return [Bucket(rule, ident, interval, tolerance, cost)
                for (rule, ident, interval, tolerance), cost in taken.items() if cost]

    async def flush(self) -> None:
        """Send every charge waiting that no decision took along, FLUSH_BATCH to a round trip (until Redis
        fails: the refunds it kept wait for the next decision or charge)."""
        while self._pending:
            charges = self._pending_charges(FLUSH_BATCH)
            if charges:
                await self.charge(charges)
                if self._failing:
                    return

    async def queue(self, name: str, rate: float, burst: float, join: bool) -> tuple[int, float]:
        try:
            issued, frontier = await self._queue(keys=[f"{self.prefix}queue:{name}"],
                                                 args=[repr(rate), repr(burst), "1" if join else "0"])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return self.local.queue_now(name, rate, burst, join)
        self._recovered()
        return int(issued), float(frontier)

    async def ban(self, target: str, reason: str, duration: float, escalate: bool = True) -> Ban:
        until, strikes = await self._ban(
            keys=[f"{self.prefix}bans", f"{self.prefix}strikes:{target}"],
            args=[repr(duration), target, "1" if escalate else "0", str(int(STRIKE_MEMORY)), reason],
        )
        return Ban(target, reason, float(until), int(strikes))

    async def unban(self, target: str) -> bool:
        return bool(await self.client.hdel(f"{self.prefix}bans", target))

    async def bans(self) -> list[Ban]:
        raw = await self.client.hgetall(f"{self.prefix}bans")
        now = time.time()
        found, expired = [], []
        for target, value in raw.items():
            data = json.loads(value)
            if data["until"] > now:
                found.append(Ban(_text(target), data["reason"], float(data["until"]), int(data["strikes"])))
            else:
                expired.append(target)
        if expired:
            await self.client.hdel(f"{self.prefix}bans", *expired)
        return sorted(found, key=lambda b: b.until)

    async def list_entries(self) -> list[dict[str, str]]:
        raw = await self.client.hgetall(f"{self.prefix}lists")
        return [json.loads(v) for v in raw.values()]

    async def set_list_entry(self, entry: dict[str, str]) -> None:
        await self.client.hset(f"{self.prefix}lists", f"{entry['list']}|{entry['cidr']}", json.dumps(entry))

    async def remove_list_entry(self, list_name: str, cidr: str) -> bool:
        return bool(await self.client.hdel(f"{self.prefix}lists", f"{list_name}|{cidr}"))

    async def get_level(self) -> dict[str, object] | None:
        raw = await self.client.get(f"{self.prefix}level")
        return json.loads(raw) if raw else None

    async def set_level(self, record: dict[str, object], history_limit: int = 200) -> None:
        text = json.dumps(record)
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.set(f"{self.prefix}level", text)
            pipe.lpush(f"{self.prefix}level:history", text)
            pipe.ltrim(f"{self.prefix}level:history", 0, history_limit - 1)
            await pipe.execute()

    async def level_history(self, limit: int = 50) -> list[dict[str, object]]:
        return [json.loads(v) for v in await self.client.lrange(f"{self.prefix}level:history", 0, limit - 1)]

    async def add_traffic(self, second: int, counts: Mapping[str, int]) -> None:
        if not counts:
            return
        key = f"{self.prefix}traffic:{second}"
        async with self.client.pipeline(transaction=False) as pipe:
            for name, count in counts.items():
                pipe.hincrby(key, name, count)
            pipe.expire(key, TRAFFIC_MEMORY)
            await pipe.execute()

    async def traffic(self, second: int) -> dict[str, int]:
        raw = await self.client.hgetall(f"{self.prefix}traffic:{second}")
        return {_text(name): int(count) for name, count in raw.items()}

    async def share(self, name: str, owner: str, figures: Mapping[str, int],
                    ttl: float) -> list[dict[str, int]] | None:
        try:
            rows = await self._share(keys=[f"{self.prefix}share:{name}"], args=[owner, json.dumps(figures), repr(ttl)])
        except (RedisError, OSError) as exc:
            self._failed(exc)
            return None
        self._recovered()
        found = []
        for row in rows:
            with contextlib.suppress(ValueError):
                value = json.loads(row)
                if isinstance(value, dict):  # a process of another version may publish more, or otherwise
                    found.append({str(k): int(v) for k, v in value.items() if isinstance(v, int)})
        return found

    async def unshare(self, name: str, owner: str) -> None:
        try:
            await self.client.hdel(f"{self.prefix}share:{name}", owner)
        except (RedisError, OSError) as exc:
            self._failed(exc)  # the others drop this process after the ttl all the same

    async def lead(self, role: str, owner: str, ttl: float) -> bool:
        held = await self._lead(keys=[f"{self.prefix}lead:{role}"], args=[owner, int(ttl * 1000)])
        return bool(held)

    async def close(self) -> None:
        task = self._flushing
        if task is not None and not task.done():
            task.cancel()  # a round trip cancelled on its way puts its charges back: they go just below
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
        await self.client.aclose()
        await self.pool.disconnect()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
