"""Edge policy as data: request classes, caller tiers, and named limit rules per defense level.

The rules come from a TOML file (default_policy.toml beside this module, or `edge.policy`); this module
parses them once and turns a request's facts into the buckets to check. It has no special cases.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import msgspec

from floodwall.config import ConfigError, per_level, typed
from floodwall.levels import LEVELS, Level
from floodwall.limits import Bucket, Caller, Limit, parse_limit

DEFAULT_POLICY = Path(__file__).with_name("default_policy.toml")
RequestClass = Literal[
    "static", "page", "auth-register", "auth-login", "api-inference", "api-other", "status", "admin",
    # not request classes: the gate checks credential-lookup before looking up a credential it has not
    # seen lately; the login guard spends login-failure on each sign-in attempt and gives it back on success;
    # prompt screening spends prompt-strike on each flagged prompt
    "credential-lookup", "login-failure", "prompt-strike"]
CLASSES = frozenset(get_args(RequestClass))
# callers' tiers; a sign-in attempt's tier says whether it comes from a device that signed in to that
# account before (a signed device cookie)
Tier = Literal["anonymous", "new", "established", "known-device", "unknown-device"]
TIERS = frozenset(get_args(Tier))
# `login` is the e-mail address a sign-in names (hashed; counted whether or not an account has it),
# `device` the device cookie's id; keys join with "+", like "login+ip"
KEYS = frozenset({"ip", "network", "account", "key", "global", "login", "device"})
STRIKE_KEYS = frozenset({"account", "key", "global"})  # what prompt screening knows of a caller


INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/app/chat"})
PAGE_PATHS = frozenset({"/", "/register", "/login", "/forgot", "/chat", "/keys", "/activity", "/password",
                        "/two-factor"})


def classify(method: str, path: str) -> str:
    """The request class, from the method and path alone (cheap, before routing)."""
    if path.startswith("/static/"):
        return "static"
    if path in INFERENCE_PATHS and method == "POST":
        return "api-inference"
    if path in ("/auth/register", "/auth/queue") and method == "POST":
        return "auth-register"  # taking a number in the waiting room counts as a sign-up attempt
    if path in ("/auth/login", "/auth/password-reset", "/auth/reset") and method == "POST":
        return "auth-login"  # each a try at an account: the login/* rules count them together
    if path.startswith("/admin"):
        return "admin"
    if path.startswith(("/status", "/api/v2/")) or path in ("/healthz", "/metrics"):
        return "status"
    if path in PAGE_PATHS or (method == "GET" and not path.startswith(("/v1/", "/account/", "/auth/"))):
        return "page"
    return "api-other"


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    classes: frozenset[str]
    key: str
    tiers: frozenset[str]
    limits: Mapping[str, Limit | None]


# sign-up modes: open (the register/* rules), queued (those, behind the waiting room), limited (those and
# one trickle shared by everyone), closed
RegistrationMode = Literal["open", "queued", "limited", "closed"]
REGISTRATION_MODES: tuple[str, ...] = get_args(RegistrationMode)


KEPT_ACCOUNTS = 8192  # (class, level, caller) bucket lists kept, then forgotten all at once


class Policy:
    """The edge's tables of the policy file: the limit rules ([[rule]]) and the sign-up modes
    ([registration])."""

    def __init__(self, rules: Iterable[Rule], registration: Mapping[str, str] | None = None,
                 trickle: Limit | None = None, queue: Limit | None = None,
                 challenge: Mapping[str, int] | None = None) -> None:
        self.rules = tuple(rules)
        self.registration = {level: (registration or {}).get(level, "open") for level in LEVELS}
        pace = trickle or Limit(60, 60.0, 10)
        # one global bucket: while sign-ups are limited, this many a period get through, from anyone
        self.trickle = Bucket("registration/limited", 0, pace.interval, pace.tolerance)
        # the waiting room's pace: admissions a period, and how many an idle queue lets straight through
        self.queue = queue or Limit(30, 60.0, 10)
        # proof-of-work on sign-up per level: the counter's range (hashes to find it: half that on average)
        self.challenge = {level: (challenge or {}).get(level, 0) for level in LEVELS}
        # precomputed: for each (class, level, tier), the rules that apply, so a request is a dict lookup
        self._index: dict[tuple[str, str, str], tuple[tuple[Rule, Limit], ...]] = {}
        for klass in CLASSES:
            for level in LEVELS:
                for tier in TIERS:
                    self._index[(klass, level, tier)] = tuple(
                        (rule, limit) for rule in self.rules
                        if klass in rule.classes and tier in rule.tiers
                        and (limit := rule.limits.get(level)) is not None
                    )
        # an account's buckets for a (class, level, caller), as last worked out: its calls come again and again
        # from one address (anonymous callers are not kept: a flood's addresses would only churn it)
        self._accounts: dict[tuple[str, str, Caller], tuple[Bucket, ...]] = {}

    @classmethod
    def from_data(cls, rules: Any, registration: Any, where: str) -> Policy:
        """From the policy file's [[rule]] list and [registration] table."""
        if not isinstance(rules, list):
            raise ConfigError(f"{where} rule: must be a list of tables ([[rule]])")
        found = [_rule(typed(_RULE, entry, f"{where} rule {i + 1}"), f"{where} rule {i + 1}")
                 for i, entry in enumerate(rules)]
        names = [rule.name for rule in found]
        if len(set(names)) < len(names):  # a name is the rule's key in the Store: two would share one count
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ConfigError(f"{where} rule: each rule needs its own name; twice: {', '.join(twice)}")
        table = msgspec.structs.asdict(typed(_REGISTRATION, registration, f"{where} [registration]"))
        limits = {name: parse_limit(table[name], f"{where} [registration] {name}") if table[name] else None
                  for name in ("trickle", "queue")}
        modes = {level: table[level] for level in LEVELS if table[level] is not None}
        return cls(found, modes, limits["trickle"], limits["queue"], table["challenge"])

    def registration_mode(self, level: str, pinned: str = "auto") -> str:
        """The sign-up mode in force: the operator's pin, else the level's column."""
        return pinned if pinned in REGISTRATION_MODES else self.registration.get(level, "open")

    def buckets(self, klass: str, level: str, caller: Caller) -> tuple[Bucket, ...]:
        """The buckets of the rules for (class, level, the caller's tier), keyed on the caller. A tuple: an
        account's is kept for its next call (measured in the granian worker: the gate's decision
        85-117 µs, of which working out the buckets about 20)."""
        if caller.account is None:
            return self._buckets(klass, level, caller)
        key = (klass, level, caller)
        found = self._accounts.get(key)
        if found is None:
            if len(self._accounts) >= KEPT_ACCOUNTS:
                self._accounts.clear()
            found = self._accounts[key] = self._buckets(klass, level, caller)
        return found

    def _buckets(self, klass: str, level: str, caller: Caller) -> tuple[Bucket, ...]:
        found = []
        for rule, limit in self._index[(klass, level, caller.tier)]:
            ident = _ident(rule.key, caller)
            if ident is not None:
                found.append(Bucket(rule.name, ident, limit.interval, limit.tolerance))
        return tuple(found)

    def rule_names(self, key: str, excluding_tier: str) -> frozenset[str]:
        """The rules keyed by `key` that do not apply to `excluding_tier` (the login guard's account-wide ones)."""
        return frozenset(rule.name for rule in self.rules if rule.key == key and excluding_tier not in rule.tiers)

    def limits_for(self, level: str) -> dict[str, str]:
        return {rule.name: str(rule.limits.get(level) or "off") for rule in self.rules}


def _ident(key: str, caller: Caller) -> int | str | None:
    if key == "ip":
        return caller.ip
    if key == "network":
        return caller.network
    if key == "account":
        return caller.account
    if key == "key":
        return caller.key
    if key == "login":
        return caller.login
    if key == "device":
        return caller.device
    if "+" in key:
        parts = [_ident(part, caller) for part in key.split("+")]
        return None if None in parts else "|".join(map(str, parts))
    return 0  # global


# [registration] as written: a sign-up mode per level, the trickle and the queue's pace, the challenge
_REGISTRATION = per_level("RegistrationTable", RegistrationMode | None, None,
                          ("trickle", str | None, None), ("queue", str | None, None),
                          ("challenge", dict[Level, Annotated[int, msgspec.Meta(ge=0, le=10**8)]], {}))
# one [[rule]] as written: a limit (or "off") per level
_RULE = per_level("RuleTable", str | None, None, ("name", Annotated[str, msgspec.Meta(min_length=1)]),
                  ("classes", Annotated[list[RequestClass], msgspec.Meta(min_length=1)]), ("key", str),
                  ("tiers", list[Tier], []))


def _rule(entry: Any, where: str) -> Rule:
    where = f"{where} ({entry.name})"
    parts = entry.key.split("+")
    if not set(parts) <= KEYS or (len(parts) > 1 and "global" in parts):
        raise ConfigError(f"{where}: key must be one of {', '.join(sorted(KEYS))}, or several joined with '+'")
    if "prompt-strike" in entry.classes and not set(parts) <= STRIKE_KEYS:
        # screening knows the account and its key, not the address: an address key would be one count for all
        raise ConfigError(f"{where}: prompt-strike rules are keyed by {', '.join(sorted(STRIKE_KEYS))}")
    limits = {level: parse_limit(value, f"{where} {level}") if (value := getattr(entry, level)) is not None
              else None for level in LEVELS}
    return Rule(entry.name, frozenset(entry.classes), entry.key, frozenset(entry.tiers or TIERS), limits)
