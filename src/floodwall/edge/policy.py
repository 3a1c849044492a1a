"""Edge policy as data: request classes, caller tiers, and named limit rules per defense level.

The rules come from a TOML file (default_policy.toml beside this module, or `edge.policy`); this module
parses them once and turns a request's facts into the buckets to check. It has no special cases.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from floodwall.config import ConfigError, parse_duration
from floodwall.defense.detector import DetectorPolicy
from floodwall.defense.probing import ProbingPolicy
from floodwall.defense.prompts import PromptPolicy
from floodwall.defense.scoring import ScoringPolicy
from floodwall.inference.admission import AdmissionPolicy
from floodwall.levels import LEVELS
from floodwall.state.store import Bucket

DEFAULT_POLICY = Path(__file__).with_name("default_policy.toml")
CLASSES = frozenset(
    {"static", "page", "auth-register", "auth-login", "api-inference", "api-other", "status", "admin",
     # not request classes: the gate checks credential-lookup before looking up a credential it has not
     # seen lately; the login guard spends login-failure on each sign-in attempt and gives it back on success;
     # prompt screening spends prompt-strike on each flagged prompt
     "credential-lookup", "login-failure", "prompt-strike"}
)
# callers' tiers; a sign-in attempt's tier says whether it comes from a device that signed in to that
# account before (a signed device cookie)
TIERS = frozenset({"anonymous", "new", "established", "known-device", "unknown-device"})
# `login` is the e-mail address a sign-in names (hashed; counted whether or not an account has it),
# `device` the device cookie's id; keys join with "+", like "login+ip"
KEYS = frozenset({"ip", "network", "account", "key", "global", "login", "device"})
_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*([\w.]+)\s*(?:burst\s+(\d+))?\s*$")

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
class Limit:
    count: int
    period: float
    burst: int

    @property
    def interval(self) -> float:
        return self.period / self.count

    @property
    def tolerance(self) -> float:
        return self.interval * self.burst

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s burst {self.burst}"


def parse_limit(text: str, where: str) -> Limit | None:
    if text.strip().lower() in {"off", "none", ""}:
        return None
    match = _LIMIT.match(text)
    if not match:
        raise ConfigError(f"{where}: {text!r} is not a limit like '120/1m' or '5/30m burst 2'")
    count = int(match.group(1))
    period = float(parse_duration(match.group(2) if match.group(2)[0].isdigit() else "1" + match.group(2)))
    burst = int(match.group(3)) if match.group(3) else count
    if count < 1 or period <= 0 or burst < 1:
        raise ConfigError(f"{where}: {text!r} needs a count, a period and a burst above zero")
    return Limit(count, period, burst)


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    name: str
    classes: frozenset[str]
    key: str
    tiers: frozenset[str]
    limits: Mapping[str, Limit | None]


class Caller(NamedTuple):
    """The facts about one request that rules key on."""

    ip: int
    network: int
    tier: str
    account: int | None
    key: int | None
    login: str | None = None
    device: str | None = None


# sign-up modes: open (the register/* rules), queued (those, behind the waiting room), limited (those and
# one trickle shared by everyone), closed
REGISTRATION_MODES = ("open", "queued", "limited", "closed")
# what a right password from a device new to the account needs, per level (accounts/sign_in_codes.py)
NEW_DEVICE_MODES = ("allow", "confirm")


class Policy:
    def __init__(self, rules: Iterable[Rule], admission: AdmissionPolicy | None = None,
                 registration: Mapping[str, str] | None = None, trickle: Limit | None = None,
                 queue: Limit | None = None, challenge: Mapping[str, int] | None = None,
                 detector: DetectorPolicy | None = None, prompts: PromptPolicy | None = None,
                 probing: ProbingPolicy | None = None, scoring: ScoringPolicy | None = None,
                 new_device: Mapping[str, str] | None = None) -> None:
        self.rules = tuple(rules)
        # per level: a right password from a device new to the account signs in (allow), or also needs a
        # code sent to the account's e-mail (confirm)
        self.new_device = {level: (new_device or {}).get(level, "allow") for level in LEVELS}
        self.probing = probing  # None: no behavioural probe detection
        self.scoring = scoring  # None: requests are not scored
        self.detector = detector or DetectorPolicy()
        self.prompts = prompts or PromptPolicy()
        self.admission = admission or AdmissionPolicy()
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

    @classmethod
    def load(cls, path: str | Path | None = None) -> Policy:
        source = Path(path) if path else DEFAULT_POLICY
        try:
            data = tomllib.loads(source.read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the edge policy {source}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        unknown = set(data) - {"rule", "admission", "registration", "detector", "prompts", "probing", "scoring",
                               "sign_in"}
        if unknown:
            raise ConfigError(f"{source}: unknown tables {', '.join(sorted(unknown))}")
        rules = [_rule(entry, f"{source} rule {i + 1}") for i, entry in enumerate(data.get("rule", []))]
        modes, trickle, queue, challenge = _registration(data.get("registration", {}), f"{source} [registration]")
        detector = DetectorPolicy.from_data(data.get("detector", {}), f"{source} [detector]")
        prompts = PromptPolicy.from_data(data.get("prompts", {}), f"{source} [prompts]", LEVELS)
        probing = ProbingPolicy.from_data(data["probing"], f"{source} [probing]") if "probing" in data else None
        scoring = ScoringPolicy.from_data(data["scoring"], f"{source} [scoring]") if "scoring" in data else None
        return cls(rules, AdmissionPolicy.from_data(data.get("admission", {}), f"{source} [admission]"), modes,
                   trickle, queue, challenge, detector, prompts, probing, scoring,
                   _new_device(data.get("sign_in", {}), f"{source} [sign_in]"))

    def registration_mode(self, level: str, pinned: str = "auto") -> str:
        """The sign-up mode in force: the operator's pin, else the level's column."""
        return pinned if pinned in REGISTRATION_MODES else self.registration.get(level, "open")

    def buckets(self, klass: str, level: str, caller: Caller) -> list[Bucket]:
        found = []
        for rule, limit in self._index[(klass, level, caller.tier)]:
            ident = _ident(rule.key, caller)
            if ident is not None:
                found.append(Bucket(rule.name, ident, limit.interval, limit.tolerance))
        return found

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


def _registration(data: Any, where: str) -> tuple[dict[str, str], Limit | None, Limit | None, dict[str, int]]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(data) - {*LEVELS, "trickle", "queue", "challenge"}
    if unknown:
        raise ConfigError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    modes = {level: data[level] for level in LEVELS if level in data}
    for level, mode in modes.items():
        if mode not in REGISTRATION_MODES:
            raise ConfigError(f"{where} {level}: must be one of {', '.join(REGISTRATION_MODES)}, not {mode!r}")
    trickle = parse_limit(data["trickle"], f"{where} trickle") if "trickle" in data else None
    queue = parse_limit(data["queue"], f"{where} queue") if "queue" in data else None
    return modes, trickle, queue, _challenge(data.get("challenge", {}), f"{where} challenge")


def _new_device(data: Any, where: str) -> dict[str, str]:
    if not isinstance(data, dict) or set(data) - {"new_device"}:
        raise ConfigError(f"{where}: must be a table with new_device")
    modes = data.get("new_device", {})
    if not isinstance(modes, dict) or set(modes) - set(LEVELS) or \
            any(mode not in NEW_DEVICE_MODES for mode in modes.values()):
        raise ConfigError(f"{where} new_device: must be a table of {', '.join(LEVELS)}, each one of "
                          f"{', '.join(NEW_DEVICE_MODES)}")
    return dict(modes)


def _challenge(data: Any, where: str) -> dict[str, int]:
    if not isinstance(data, dict) or set(data) - set(LEVELS):
        raise ConfigError(f"{where}: must be a table of {', '.join(LEVELS)}")
    for level, difficulty in data.items():
        if not isinstance(difficulty, int) or isinstance(difficulty, bool) or not 0 <= difficulty <= 10**8:
            raise ConfigError(f"{where} {level}: must be a whole number from 0 (no challenge) to 100000000")
    return dict(data)


def _rule(entry: Any, where: str) -> Rule:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be a table")
    unknown = set(entry) - {"name", "classes", "key", "tiers", *LEVELS}
    if unknown:
        raise ConfigError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}: needs a name like 'login/ip'")
    where = f"{where} ({name})"
    classes = frozenset(entry.get("classes") or [])
    if not classes or not classes <= CLASSES:
        raise ConfigError(f"{where}: classes must be some of {', '.join(sorted(CLASSES))}")
    key = entry.get("key")
    if not isinstance(key, str) or not set(key.split("+")) <= KEYS or (len(key.split("+")) > 1 and "global" in key):
        raise ConfigError(f"{where}: key must be one of {', '.join(sorted(KEYS))}, or several joined with '+'")
    tiers = frozenset(entry.get("tiers") or TIERS)
    if not tiers <= TIERS:
        raise ConfigError(f"{where}: tiers must be some of {', '.join(sorted(TIERS))}")
    limits = {level: parse_limit(str(entry[level]), f"{where} {level}") if level in entry else None
              for level in LEVELS}
    return Rule(name, classes, key, tiers, limits)
