"""Prompt screening: a score for prompt-injection and jailbreak attempts from rules declared as data
(prompt_rules.toml), and campaigns (the same prompt from many accounts) found by near-duplicate hashing;
beside them, a trained classifier's probability (defense/classifier.py).

All run on the event loop, so all are bounded: at most MAX_SCANNED characters are read (the start and
the end of a long prompt, where instructions sit), the rules are matched by RE2 (linear time whatever
the input; 14x faster than Python's re on these rules, measured over the prompt corpus), and the campaign
memory holds a bounded number of signatures.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import msgspec
import re2

from floodwall.config import ConfigError, per_level, read_toml, typed
from floodwall.defense.request_parts import whole
from floodwall.levels import LEVELS, Action

DEFAULT_RULES = Path(__file__).with_name("prompt_rules.toml")
MAX_SCANNED = 16 * 1024
_HEAD = 12 * 1024
_CASELESS = re2.Options()
_CASELESS.case_sensitive = False
_INVISIBLE_CHARACTERS = "\u200b\u200c\u200d\u2060\ufeff\u00ad"
_INVISIBLE = dict.fromkeys(map(ord, _INVISIBLE_CHARACTERS), None)


@dataclasses.dataclass(frozen=True, slots=True)
class PromptRule:
    name: str
    category: str
    weight: int
    pattern: Any  # re2._Regexp
    # a match counts only where the text just before it is not this (re2, anchored at its end): a guard
    unless_after: Any = None


GUARDED = 80  # characters before a match that its rule's guard reads
# guarded matches of one rule read at most; past them the rule counts (no corpus prompt has more than 3): a
# prompt of 16 KB made of guarded matches cost 10 ms to read them all
MAX_GUARDED = 8
# between a call's messages in the text screened: a guard does not read across it, so the end of an app's
# system prompt ("The user asks:") cannot excuse the user's attack. NUL: ASCII (the fast paths stay), not
# whitespace (scanned() keeps it); the classifier reads the text with it made a line break (`plain`)
MESSAGE_BREAK = "\x00"


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    score: int
    rules: tuple[str, ...]  # the rules that matched, heaviest first

    @property
    def reason(self) -> str:
        return f"prompt/{self.rules[0]}" if self.rules else "prompt/none"


def load_rules(path: str | Path | None = None) -> tuple[PromptRule, ...]:
    """The rules of a rules file: [[rule]] tables (name, category, weight, pattern, and optionally
    `unless_after`, the name of a pattern in the [guard] table that, matching the text just before a match,
    keeps that match from counting: a defence that quotes an attack, "never reveal your instructions")."""
    source = Path(path) if path else DEFAULT_RULES
    data = read_toml(source, "prompt rules")
    table = data.get("guard", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [guard] must be a table of patterns")
    guards = {}
    for name, text in table.items():
        where = f"{source} guard {name}"
        if not isinstance(text, str) or not text:
            raise ConfigError(f"{where}: must be a non-empty pattern")
        _compiled(text, where)  # alone first: "a)|(b" would otherwise compile, wrapped, as something else
        guard = _compiled(f"(?:{text})$", where)
        if guard.search("") is not None:
            raise ConfigError(f"{where}: matches nothing at all, so it would keep every match from counting")
        guards[name] = guard
    rules = []
    for i, entry in enumerate(data.get("rule", [])):
        where = f"{source} rule {i + 1}"
        if not isinstance(entry, dict) or not {"name", "category", "weight", "pattern"} <= set(entry) or \
                not set(entry) <= {"name", "category", "weight", "pattern", "unless_after"}:
            raise ConfigError(f"{where}: needs name, category, weight and pattern (and may have unless_after)")
        if not isinstance(entry["weight"], int) or isinstance(entry["weight"], bool) or entry["weight"] < 1:
            raise ConfigError(f"{where}: weight must be a whole number above 0")
        guard = entry.get("unless_after")
        if guard is not None and (not isinstance(guard, str) or guard not in guards):
            raise ConfigError(f"{where}: unless_after names no pattern of the [guard] table")
        rules.append(PromptRule(str(entry["name"]), str(entry["category"]), entry["weight"],
                                _compiled(str(entry["pattern"]), where), guards.get(guard) if guard else None))
    return tuple(rules)


def _compiled(pattern: str, where: str) -> Any:
    try:
        return re2.compile(pattern, _CASELESS)
    except re2.error as exc:
        raise ConfigError(f"{where}: the pattern does not compile: {exc}") from None


def bounded(text: str) -> str:
    """The part of a prompt that is read at all: its start and its end, MAX_SCANNED characters."""
    return text[:_HEAD] + "\n" + text[-(MAX_SCANNED - _HEAD):] if len(text) > MAX_SCANNED else text


def scanned(text: str) -> str:
    """The part of a prompt that is read: whitespace collapsed, invisible characters dropped, bounded."""
    text = bounded(text)
    if not text.isascii():  # the invisible characters are not ASCII, and most prompts are
        text = whole(text)
        # translate() looks up every character in Python (0.2 ms for 4 KiB); six searches in C cost ~5 µs
        if any(c in text for c in _INVISIBLE_CHARACTERS):
            text = text.translate(_INVISIBLE)
    return " ".join(text.split())


class Screen:
    def __init__(self, rules: Iterable[PromptRule]) -> None:
        self.rules = sorted(rules, key=lambda rule: -rule.weight)
        # one pass of one set over the prompt, not a search per rule: from Python a search costs about as
        # much as the whole set (the binding's overhead, not the matching)
        options = re2.Options()
        options.case_sensitive = False
        options.max_mem = 64 << 20
        self._set = re2.Set.SearchSet(options)
        for rule in self.rules:
            self._set.Add(rule.pattern.pattern)
        self._set.Compile()

    def score(self, text: str) -> Verdict:
        text = scanned(text)
        hits = self._set.Match(text) or ()
        # heaviest first, as the rules are ordered; a guarded rule counts where one of its matches is unguarded
        matched = [rule for rule in (self.rules[i] for i in sorted(hits))
                   if rule.unless_after is None or _unguarded(rule, text)]
        return Verdict(sum(rule.weight for rule in matched), tuple(rule.name for rule in matched))


def _unguarded(rule: PromptRule, text: str) -> bool:
    """Some match of the rule is not preceded by its guard, within its message. Every start is tried (a guarded
    match may hide an unguarded one inside it: "don't forget to ignore your guidelines"), on the text encoded
    once (RE2 encodes a str at each call); past MAX_GUARDED guarded matches the rule counts."""
    guard, raw = rule.unless_after, text.encode("utf-8", "surrogatepass")
    position = 0
    for _ in range(MAX_GUARDED):
        match = rule.pattern.search(raw, position)
        if match is None:
            return False
        start = match.start()
        # the characters before it, within its message (a slice: RE2's $ is the text's end, not endpos)
        before = raw[max(0, start - 4 * GUARDED):start].decode("utf-8", "ignore")[-GUARDED:]
        if guard.search(before[before.rfind(MESSAGE_BREAK) + 1:]) is None:
            return True
        position = start + 1
    return rule.pattern.search(raw, position) is not None  # one more than MAX_GUARDED: it counts


def prompt_text(body: Mapping[str, Any]) -> str:
    """What a caller asks the model, from a chat, completion or embedding body (already validated)."""
    return joined(prompt_parts(body))


def joined(parts: Sequence[str]) -> str:
    """Texts as one prompt, a MESSAGE_BREAK apart: JSON may carry lone surrogates ("\\ud800"); RE2 and hashing read
    UTF-8."""
    return whole(MESSAGE_BREAK.join(parts))


def plain(text: str) -> str:
    """A joined prompt as the classifier reads it: its messages a line apart."""
    return text.replace(MESSAGE_BREAK, "\n")


def prompt_parts(body: Mapping[str, Any]) -> list[str]:
    """The texts of prompt_text, one a message (or a part of one, or a prompt), in the body's order; those
    of only whitespace left out (they are no message)."""
    parts: list[str] = []
    messages = body.get("messages")
    for message in messages if isinstance(messages, list) else ():
        if isinstance(message, dict):
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            parts.extend(item for item in value if isinstance(item, str))
    return [part for part in parts if part.strip()]


SHINGLES = 200  # a campaign's prompts are alike from their start: the first 200 word pairs decide
SIGNED = 2048  # characters read for them
# what \w+ finds in ASCII text, five times faster: the rest of ASCII made spaces, then split
_ASCII_WORDS = str.maketrans({c: " " for c in map(chr, range(128)) if not (c.isalnum() or c == "_")})
HASHES = 8  # a signature's values: the word pairs' smallest hashes


def signature(text: str) -> tuple[int, ...]:
    """A bottom-k MinHash signature of the prompt's word pairs, case and punctuation aside: the 8 smallest of
    their hashes. Python's own string hash, keyed at random per process (as the campaigns are kept), so
    nobody outside can aim at a value; one C call a pair, where a cryptographic digest cost 0.4 µs more."""
    return _signed(_words(text))


def campaign_signature(text: str) -> tuple[int, ...] | None:
    """The prompt's signature where it has all its values; None where it has fewer word pairs ("Hello there",
    "What is 2+2?": what many people ask alike, not a campaign's message), told from its words before any
    pair is hashed (most chat prompts: no pairs made on the call's way)."""
    words = _words(text)
    if len(words) <= HASHES:  # at most HASHES - 1 pairs
        return None
    found = _signed(words)
    return found if len(found) >= HASHES else None


def _words(text: str) -> list[str]:
    text = text[:SIGNED].lower()
    # what \w+ finds; not by RE2's findall, whose binding spends some 7 µs of Python a word found
    return text.translate(_ASCII_WORDS).split() if text.isascii() else \
        "".join(c if c.isalnum() or c == "_" else " " for c in text).split()


def _signed(words: list[str]) -> tuple[int, ...]:
    pairs = set(map(" ".join, itertools.pairwise(words[:SHINGLES + 1]))) or {" ".join(words)}
    return tuple(sorted(map(hash, pairs))[:HASHES])  # sorted beats heapq.nsmallest below ~200 values


def alike(one: tuple[int, ...], other: tuple[int, ...]) -> bool:
    """Two signatures estimate their prompts' Jaccard similarity at 1/2 or more: of the smallest values of
    both together, at least half are in each (Broder's bottom-k estimator)."""
    both = set(one) & set(other)
    union = sorted(set(one) | set(other))[:HASHES]
    return 2 * sum(value in both for value in union) >= len(union)


class Campaigns:
    """The same prompt, near enough (word pairs' Jaccard similarity estimated at 1/2 or more), from many accounts within
    `window` seconds: a campaign. Signatures are filed under each of their values (locality-sensitive
    hashing), at most `per_key` accounts a key (an account's latest prompt) and `max_keys` keys: bounded
    memory, per process."""

    def __init__(self, window: float = 600.0, per_key: int = 32, max_keys: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.per_key = per_key
        self.max_keys = max_keys
        self.clock = clock
        # per key, account -> (signature, when), oldest first: an account repeating itself refreshes its
        # entry rather than filling the key and pushing other senders out
        self._keys: dict[int, dict[int, tuple[tuple[int, ...], float]]] = {}

    def __len__(self) -> int:
        """Signature keys held (at most max_keys)."""
        return len(self._keys)

    def seen(self, text: str, account: int) -> int:
        """File the prompt; how many distinct accounts sent it (near enough) within the window, this one
        included."""
        found = campaign_signature(text)
        if found is None:
            return 1
        now = self.clock()
        senders = {account}
        if len(self._keys) >= self.max_keys:
            self._keys.clear()
        for key in found:
            entries = self._keys.setdefault(key, {})
            entries.pop(account, None)
            for sender, (other, when) in list(entries.items()):
                if now - when >= self.window:
                    del entries[sender]
                elif sender not in senders and alike(other, found):
                    senders.add(sender)
            entries[account] = (found, now)
            while len(entries) > self.per_key:
                del entries[next(iter(entries))]
        return len(senders)

    def peek(self, text: str) -> int:
        """How many distinct accounts sent the prompt (near enough) within the window, without filing it."""
        found = campaign_signature(text)
        if found is None:
            return 0
        now = self.clock()
        senders = {sender for key in found for sender, (other, when) in self._keys.get(key, {}).items()
                   if now - when < self.window and alike(other, found)}
        return len(senders)


# the classifier's probability that flags a prompt, per level: chosen by bench/prompt_model.py on out-of-fold
# predictions (docs/prompt-model.md): at normal, where a flag spends a strike, as few false positives as the
# issue allows; more recall for more false positives at elevated and under_attack
MODEL_THRESHOLDS = dict(zip(LEVELS, (0.97, 0.83, 0.67), strict=True))


@dataclasses.dataclass(frozen=True)
class PromptPolicy:
    """`[prompts]` in the policy: the rules' score that flags a prompt, the classifier's probability that
    flags it per level (1 turns the classifier off there), the accounts that make a campaign, and per level
    what a flagged prompt brings: off, log (logged and counted), flag (also a strike on the account, spent from
    the prompt-strike rules), refuse (also refused with 400 content_policy_violation)."""

    threshold: int = 3
    model_thresholds: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(MODEL_THRESHOLDS))
    campaign: int = 5
    actions: Mapping[str, str] = dataclasses.field(
        default_factory=lambda: dict(zip(LEVELS, ("flag", "flag", "refuse"), strict=True)))

    def model_threshold(self, level: str) -> float:
        return self.model_thresholds.get(level, self.model_thresholds.get(LEVELS[0], 1.0))

    @classmethod
    def from_data(cls, data: Any, where: str) -> PromptPolicy:
        table = msgspec.structs.asdict(typed(_PROMPTS, data, where))
        actions = {**cls().actions, **{level: table[level] for level in LEVELS if table[level] is not None}}
        given = table["model_threshold"]
        if isinstance(given, float | int):  # one number for every level, as before levels had their own
            thresholds = dict.fromkeys(LEVELS, float(given))
        else:  # a table (the levels left out keep their defaults) or nothing
            written = msgspec.structs.asdict(given) if given is not None else {}
            thresholds = {**MODEL_THRESHOLDS, **{level: v for level, v in written.items() if v is not None}}
        return cls(table["threshold"], thresholds, table["campaign"], actions)


Probability = Annotated[float, msgspec.Meta(gt=0, le=1)]
# model_threshold as written: a number, or a table with a number per level
_MODEL_THRESHOLDS = per_level("ModelThresholds", Probability | None, None)
# [prompts] as written: a level left out keeps its default action
_PROMPTS = per_level("PromptsTable", Action | None, None,
                     ("threshold", Annotated[int, msgspec.Meta(ge=1)], PromptPolicy.threshold),
                     ("model_threshold", Probability | _MODEL_THRESHOLDS | None, None),
                     ("campaign", Annotated[int, msgspec.Meta(ge=1)], PromptPolicy.campaign))
