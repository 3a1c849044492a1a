"""Request scoring, after the OWASP Core Rule Set's anomaly scoring: the request's parts are decoded, each
rule that matches the parts it targets adds its score, and rules apply up to a paranoia level. Rules are
data (request_rules.toml). All the patterns for one part are compiled into one RE2 set, so each value is
read once whatever the number of rules.

The gate scores each request of a caller that is not an established account (its path, query, headers and
cookies; the body is left to the routes, and a model route's messages to prompt screening) and acts as
`[scoring]` says per level. bench/probes.py measures the rules against the CRS regression tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec
import re2

from floodwall.config import ConfigError, Seconds, per_level, read_toml, typed
from floodwall.defense.request_parts import Budget, clock_due, cut, parts
from floodwall.inspection import Described, Score
from floodwall.levels import LEVELS, Action

DEFAULT_RULES = Path(__file__).with_name("request_rules.toml")
_HEADER = re2.compile(r"header:[A-Za-z0-9-]+")
CACHED, CACHED_LENGTH = 50_000, 256  # answers kept, and the longest value whose answer is kept
# whole requests' scores kept, and the largest request (characters of path, query and headers) kept: a
# flood repeats one request from many addresses, and its score is then a lookup (some 1 µs, against 50 to
# 90 µs to read it again); a flood that varies its requests reads each, as before
REQUESTS_KEPT, REQUEST_SIZE_KEPT = 4096, 2048
EVIDENCE = 120  # characters of a matched value kept as evidence
BUDGET_ANOMALY = "scoring-budget"  # the anomaly of a request whose reading ran past the budget
# what a rule may read (request_parts.py says how each is decoded); also "header:NAME", one header's value
TARGETS = ("method", "path", "args", "commands", "base64", "names", "cookies", "cookie-names", "headers", "agent",
           "referer", "header-names", "extension", "charset", "anomalies")


DEFAULT_ACTION = "flag"  # what a flagged request brings at a level [scoring] does not name

@dataclasses.dataclass(frozen=True)
class ScoringPolicy:
    """`[scoring]` in the policy: the paranoia level (which rules apply), the score that flags a request, a
    rules file in place of the default, and per level what a flagged request brings: off, log (logged and
    counted), flag (also a step in the address's http-probing bucket: a source sending many gets banned),
    refuse (also refused, 403 request_blocked)."""

    paranoia: int = 1
    threshold: int = 5
    rules: str = ""
    # time one request's scoring may take: past it, the values not yet read are not scored (`scoring/budget`)
    budget: float = 0.001
    actions: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict.fromkeys(LEVELS, DEFAULT_ACTION))

    @classmethod
    def from_data(cls, data: Any, where: str) -> ScoringPolicy:
        table = msgspec.structs.asdict(typed(_SCORING, data, where))
        if not table["budget"] <= 1:
            raise ConfigError(f"{where} budget: must be at most 1s")
        if table["rules"]:  # a rules file that cannot be read stops start-up here, named
            try:
                load_rules(table["rules"])
            except ConfigError as exc:
                raise ConfigError(f"{where} rules: {exc}") from None
        return cls(table["paranoia"], table["threshold"], table["rules"], float(table["budget"]),
                   {level: table[level] for level in LEVELS})


# [scoring] as written: a column per level of what a flagged request brings
_SCORING = per_level("ScoringTable", Action, DEFAULT_ACTION,
                     ("paranoia", Annotated[int, msgspec.Meta(ge=1, le=4)], ScoringPolicy.paranoia),
                     ("threshold", Annotated[int, msgspec.Meta(ge=1)], ScoringPolicy.threshold),
                     ("rules", str, ScoringPolicy.rules), ("budget", Seconds, Seconds(ScoringPolicy.budget)))


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRule:
    name: str
    category: str
    paranoia: int
    score: int
    targets: frozenset[str]
    pattern: str
    # fires when a value of its targets does NOT match: the pattern says what is allowed (CRS's !@rx)
    negate: bool = False
    # counts only when the request also has this anomaly (CRS's chained rules: a second condition)
    requires: str = ""


def load_rules(path: str | Path | None = None) -> tuple[RequestRule, ...]:
    source = Path(path) if path else DEFAULT_RULES
    data = read_toml(source, "request rules")
    rules = []
    for i, entry in enumerate(data.get("rule", [])):
        where = f"{source} rule {i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        targets = entry.get("targets")
        if not isinstance(targets, list) or not targets or not all(
                target in TARGETS or (isinstance(target, str) and _HEADER.fullmatch(target)) for target in targets):
            raise ConfigError(f"{where}: targets must be some of {', '.join(TARGETS)}, or header:NAME")
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}: needs a pattern")
        paranoia, score = entry.get("paranoia", 1), entry.get("score", 5)
        if not (isinstance(paranoia, int) and 1 <= paranoia <= 4 and isinstance(score, int) and score > 0):
            raise ConfigError(f"{where}: paranoia must be 1 to 4 and score above 0")
        negate, requires = entry.get("negate", False), entry.get("requires", "")
        if not isinstance(negate, bool) or not isinstance(requires, str):
            raise ConfigError(f"{where}: negate must be true or false, requires an anomaly's name")
        rules.append(RequestRule(str(entry.get("name")), str(entry.get("category")), paranoia, score,
                                 frozenset(t.lower() for t in targets), pattern, negate, requires))
    return tuple(rules)


class Scorer:
    def __init__(self, rules: Iterable[RequestRule], paranoia: int = 1, budget: float = 0.001) -> None:
        self.paranoia = paranoia
        self.budget = budget
        self.rules = [rule for rule in rules if rule.paranoia <= paranoia]
        options = re2.Options()
        options.case_sensitive = False
        # a set's DFA is built lazily as values are read; the default 8 MB runs out on attack-laden values
        # and RE2 starts over, which costs more than the memory
        options.max_mem = 64 << 20
        # per target, one set of the patterns that flag and one of the patterns that allow (negated rules)
        self._sets: dict[str, list[tuple[Any, list[RequestRule], bool, int]]] = {}
        targets = sorted({target for rule in self.rules for target in rule.targets})
        for target in targets:
            for negate in (False, True):
                patterned = [rule for rule in self.rules if target in rule.targets and rule.negate is negate]
                if patterned:  # each set gets a number, for the cache's keys
                    number = sum(len(found) for found in self._sets.values())
                    self._sets.setdefault(target, []).append((_compiled(patterned, options), patterned, negate,
                                                              number))
        self.headers = frozenset(target[len("header:"):] for target in targets if target.startswith("header:"))
        self._cache: dict[tuple[int, str], frozenset[int]] = {}
        # by the request's hash (Python's, keyed at random per process: nobody outside can aim at a value), not
        # the request: an entry's size does not grow with its headers, and no key or cookie is kept
        self._requests: dict[int, Score] = {}
        # RE2 builds each set's automaton as values are read: the first requests would pay for it against
        # their budget. A browser's request and a scanner's build the common states now.
        budget, self.budget = self.budget, math.inf
        for warm_up in _WARM_UP:
            self.score(warm_up)
        self.budget = budget
        self._cache.clear()
        self._requests.clear()

    def __len__(self) -> int:
        """Answers kept (at most CACHED)."""
        return len(self._cache)

    def forget_requests(self) -> None:
        """Forget the whole requests' scores (kept values' answers stay): for timing the reading itself."""
        self._requests.clear()

    def score(self, request: Described) -> Score:
        key = hash(request)
        known = self._requests.get(key)
        if known is not None:
            return known
        found = self._score(request)
        if found.complete and len(request.path) + len(request.query) + sum(
                len(name) + len(value) for name, value in request.headers) <= REQUEST_SIZE_KEPT:
            if len(self._requests) >= REQUESTS_KEPT:
                self._requests.clear()
            self._requests[key] = found
        return found

    def _score(self, request: Described) -> Score:
        matched: dict[str, RequestRule] = {}
        seen: dict[str, str] = {}
        hit: set[str] = set()
        cache = self._cache
        if len(cache) > CACHED:
            cache.clear()
        # the budget is this thread's CPU time: a busy machine that preempts the worker does not cut scoring
        budget = Budget(self.budget)
        found_parts = parts(request, self.headers, budget)
        complete = not budget.spent()
        for target, values in found_parts.items():
            complete = self._read(target, values, matched, seen, hit, budget, complete)
        anomalies = found_parts["anomalies"]
        if not complete:  # a request that costs more than the budget to read is itself odd (CRS's 920380)
            anomaly = cut(BUDGET_ANOMALY, "\n".join((request.path, request.query,
                                                     *(f"{name}: {value}" for name, value in request.headers))))
            anomalies.append(anomaly)
            self._read("anomalies", [anomaly], matched, seen, hit, Budget(), True)
        ordered = sorted((rule for rule in matched.values() if not rule.requires or rule.requires in anomalies),
                         key=lambda rule: -rule.score)
        return Score(sum(rule.score for rule in ordered), tuple(rule.name for rule in ordered),
                     tuple(sorted({rule.category for rule in ordered})),
                     tuple(seen.get(rule.name, f"anomalies: {rule.requires}") for rule in ordered), complete,
                     cut("hits", "\n".join(sorted(hit))) if ordered else "")


    def _read(self, target: str, values: list[str], matched: dict[str, RequestRule], seen: dict[str, str],
              hit: set[str], budget: Budget, complete: bool) -> bool:
        """Match one target's values; past the deadline only answers already known are used. Whether the
        budget still holds."""
        cache = self._cache
        read = 0
        for found, patterned, negate, ident in self._sets.get(target, ()):
            for value in values:
                if not value:
                    continue
                # a browser sends the same headers, names and methods again and again: a short value's
                # answer is kept (a set's match costs about 2 µs from Python, a lookup 0.1 µs)
                key = (ident, value)
                hits = cache.get(key)
                if hits is None:
                    read += 1
                    if complete and clock_due(read, len(value)) and budget.spent():
                        complete = False
                    if not complete:
                        continue  # past the budget, only answers already known
                    hits = frozenset(found.Match(value) or ())
                    if len(value) <= CACHED_LENGTH:
                        cache[key] = hits
                if negate:
                    if len(hits) < len(patterned):
                        for i, rule in enumerate(patterned):
                            if i not in hits:
                                matched[rule.name] = rule
                                seen.setdefault(rule.name, f"{target}: {value[:EVIDENCE]}")
                                hit.add(f"{target}: {value}")
                else:
                    for i in hits:
                        matched[patterned[i].name] = patterned[i]
                        seen.setdefault(patterned[i].name, f"{target}: {value[:EVIDENCE]}")
                        hit.add(f"{target}: {value}")
        return complete


class Scoring:
    """Request scoring as the policy's [scoring] table sets it: the rules at its paranoia, its threshold and
    the action per level (what the gate holds, as inspection.RequestScoring)."""

    def __init__(self, policy: ScoringPolicy) -> None:
        self.policy = policy
        self.threshold = policy.threshold
        self.scorer = Scorer(load_rules(policy.rules or None), policy.paranoia, policy.budget)

    def action(self, level: str) -> str:
        return self.policy.actions[level]

    def score(self, request: Described) -> Score:
        return self.scorer.score(request)

    def __len__(self) -> int:
        return len(self.scorer)


_BROWSER = (("host", "example.com"), ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0"),
            ("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"), ("accept-language", "en-GB,en;q=0.5"),
            ("cookie", "fw_session=abc; theme=dark"), ("referer", "https://example.com/chat"))
_WARM_UP = (
    Described("GET", "/chat", "page=2&q=hello+world", _BROWSER),
    Described("POST", "/v1/chat/completions", "", (("host", "api.example.com"), ("authorization", "Bearer x"),
                                                  ("content-type", "application/json"))),
    Described("GET", "/index.php", "id=1%27+or+1%3D1--&file=../../etc/passwd&x=%3Cscript%3Ealert(1)%3C/script%3E",
              (("host", "example.com"), ("user-agent", "sqlmap/1.7"))),
)


def _compiled(rules: list[RequestRule], options: Any) -> Any:
    found = re2.Set.SearchSet(options)
    for rule in rules:
        try:
            found.Add(rule.pattern)
        except re2.error as exc:
            raise ConfigError(f"request rule {rule.name}: the pattern does not compile: {exc}") from None
    found.Compile()
    return found
