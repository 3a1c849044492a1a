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
import html
import json
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, unquote_plus

import re2

from floodwall.config import ConfigError, read_toml
from floodwall.defense.levels import LEVELS

DEFAULT_RULES = Path(__file__).with_name("request_rules.toml")
TARGETS = ("method", "path", "args", "names", "cookies", "headers", "agent", "referer", "body")
_XML_VALUES = re2.compile(r'="([^"]*)"|>([^<]+)<')
MAX_VALUE = 4096  # characters of one value read
MAX_VALUES = 256  # values read from one request part
MAX_BODY = 64 * 1024


ACTIONS = ("off", "log", "flag", "refuse")


@dataclasses.dataclass(frozen=True)
class ScoringPolicy:
    """`[scoring]` in the policy: the paranoia level (which rules apply), the score that flags a request, a
    rules file in place of the default, and per level what a flagged request brings: off, log (logged and
    counted), flag (also a step in the address's http-probing bucket: a source sending many gets banned),
    refuse (also refused, 403 request_blocked)."""

    paranoia: int = 1
    threshold: int = 5
    rules: str = ""
    actions: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict.fromkeys(LEVELS, "flag"))

    @classmethod
    def from_data(cls, data: Any, where: str) -> ScoringPolicy:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: must be a table")
        unknown = set(data) - {"paranoia", "threshold", "rules", *LEVELS}
        if unknown:
            raise ConfigError(f"{where}: unknown fields {', '.join(sorted(unknown))}")
        paranoia, threshold = data.get("paranoia", cls.paranoia), data.get("threshold", cls.threshold)
        if not (isinstance(paranoia, int) and not isinstance(paranoia, bool) and 1 <= paranoia <= 4):
            raise ConfigError(f"{where} paranoia: must be 1, 2, 3 or 4")
        if not (isinstance(threshold, int) and not isinstance(threshold, bool) and threshold >= 1):
            raise ConfigError(f"{where} threshold: must be a whole number above 0")
        rules = data.get("rules", "")
        if not isinstance(rules, str):
            raise ConfigError(f"{where} rules: must be the path of a rules file")
        actions = {**cls().actions, **{level: data[level] for level in LEVELS if level in data}}
        for level, action in actions.items():
            if action not in ACTIONS:
                raise ConfigError(f"{where} {level}: must be one of {', '.join(ACTIONS)}, not {action!r}")
        return cls(paranoia, threshold, rules, actions)


@dataclasses.dataclass(frozen=True, slots=True)
class RequestRule:
    name: str
    category: str
    paranoia: int
    score: int
    targets: frozenset[str]
    pattern: str


@dataclasses.dataclass(frozen=True, slots=True)
class Described:
    """The parts of a request that are scored."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Score:
    score: int
    rules: tuple[str, ...]
    categories: tuple[str, ...]


def load_rules(path: str | Path | None = None) -> tuple[RequestRule, ...]:
    source = Path(path) if path else DEFAULT_RULES
    data = read_toml(source, "request rules")
    rules = []
    for i, entry in enumerate(data.get("rule", [])):
        where = f"{source} rule {i + 1}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{where}: must be a table")
        targets = entry.get("targets")
        if not isinstance(targets, list) or not targets or not set(targets) <= set(TARGETS):
            raise ConfigError(f"{where}: targets must be some of {', '.join(TARGETS)}")
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}: needs a pattern")
        paranoia, score = entry.get("paranoia", 1), entry.get("score", 5)
        if not (isinstance(paranoia, int) and 1 <= paranoia <= 4 and isinstance(score, int) and score > 0):
            raise ConfigError(f"{where}: paranoia must be 1 to 4 and score above 0")
        rules.append(RequestRule(str(entry.get("name")), str(entry.get("category")), paranoia, score,
                                 frozenset(targets), pattern))
    return tuple(rules)


def _decoded(value: str) -> str:
    value = value[:MAX_VALUE]
    for _ in range(2):  # double encoding is the oldest evasion
        if "%" not in value and "+" not in value:
            break
        value = unquote_plus(value)
    if "&" in value:
        value = html.unescape(value)
    if not value.isascii():  # full-width and compatibility forms read as what they look like
        value = unicodedata.normalize("NFKC", value)
    return value.replace("\x00", "")


def _leaves(value: Any, names: list[str], depth: int = 0) -> Iterator[str]:
    """The strings in a JSON document, its keys going to `names`."""
    if depth > 16:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            names.append(str(key))
            yield from _leaves(item, names, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item, names, depth + 1)
    elif isinstance(value, str):
        yield value
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _multipart(body: str, content_type: str) -> Iterator[tuple[str, str]]:
    """Each part's field name (and file name) and value."""
    at = content_type.lower().find("boundary=")
    boundary = content_type[at + len("boundary="):] if at >= 0 else ""
    boundary = boundary.split(";")[0].strip().strip('"')
    if not boundary:
        return
    for part in body.split("--" + boundary)[:MAX_VALUES]:
        head, _, value = part.replace("\r\n", "\n").partition("\n\n")
        for field in ("name", "filename"):
            marker = f'{field}="'
            at = head.find(marker)
            if at >= 0 and (field != "name" or head[at - 4:at] != "file"):
                yield head[at + len(marker):].split('"')[0], value.rstrip("\n-")


def parts(request: Described) -> dict[str, list[str]]:
    """Each target's decoded values."""
    names: list[str] = []
    args: list[str] = []
    for key, value in parse_qsl(request.query, keep_blank_values=True)[:MAX_VALUES]:
        names.append(key)
        args.append(value)
    headers = {name.lower(): value for name, value in request.headers}
    content_type = headers.get("content-type", "").lower()
    body = request.body[:MAX_BODY]
    if body:
        if "json" in content_type:
            try:
                args.extend(_leaves(json.loads(body), names))
            except ValueError:
                args.append(body)
        elif "multipart/form-data" in content_type:
            for name, value in _multipart(body, headers.get("content-type", "")):  # the boundary keeps its case
                names.append(name)
                args.append(value)
        elif "xml" in content_type or body.lstrip()[:1] == "<":
            args.extend(a or b for a, b in _XML_VALUES.findall(body)[:MAX_VALUES])  # attribute values, text
        elif "x-www-form-urlencoded" in content_type or not content_type:
            for key, value in parse_qsl(body, keep_blank_values=True)[:MAX_VALUES]:
                names.append(key)
                args.append(value)
        else:  # text/plain and the like: the body is one value
            args.append(body)
    cookies: list[str] = []
    for part in headers.get("cookie", "").split(";")[:MAX_VALUES]:
        key, _, value = part.strip().partition("=")
        names.append(key)
        cookies.append(value)
    found = {
        "method": [request.method.lower()],
        "path": [unquote(request.path)],
        "args": [_decoded(v) for v in args[:MAX_VALUES]],
        "names": [_decoded(v) for v in names[:MAX_VALUES]],
        "cookies": [_decoded(v) for v in cookies],
        "headers": [_decoded(v) for k, v in request.headers if k.lower() not in ("cookie", "user-agent")],
        "agent": [headers.get("user-agent", "")],
        "referer": [_decoded(headers.get("referer", ""))] if "referer" in headers else [],
        "body": [body] if body else [],
    }
    found["path"].append(_decoded(request.path))
    return found


class Scorer:
    def __init__(self, rules: Iterable[RequestRule], paranoia: int = 1) -> None:
        self.paranoia = paranoia
        self.rules = [rule for rule in rules if rule.paranoia <= paranoia]
        options = re2.Options()
        options.case_sensitive = False
        # a set's DFA is built lazily as values are read; the default 8 MB runs out on attack-laden values
        # and RE2 starts over, which costs more than the memory
        options.max_mem = 64 << 20
        self._sets: dict[str, tuple[Any, list[RequestRule]]] = {}
        for target in TARGETS:
            patterned = [rule for rule in self.rules if target in rule.targets]
            if patterned:
                found = re2.Set.SearchSet(options)
                for rule in patterned:
                    try:
                        found.Add(rule.pattern)
                    except re2.error as exc:
                        raise ConfigError(f"request rule {rule.name}: the pattern does not compile: {exc}") from None
                found.Compile()
                self._sets[target] = (found, patterned)

    def score(self, request: Described) -> Score:
        matched: dict[str, RequestRule] = {}
        for target, values in parts(request).items():
            compiled = self._sets.get(target)
            if compiled is None:
                continue
            for value in values:
                for index in (compiled[0].Match(value) if value else None) or ():
                    rule = compiled[1][index]
                    matched[rule.name] = rule
        ordered = sorted(matched.values(), key=lambda rule: -rule.score)
        return Score(sum(rule.score for rule in ordered), tuple(rule.name for rule in ordered),
                     tuple(sorted({rule.category for rule in ordered})))

