"""Canaries in what the model says back (issue 24): an attack that works shows in the answer. The operator
names strings no answer may carry (`screening.canaries`: a marker in the system prompt, a secret it holds);
an answer that carries one is withheld, or its stream ended before the event that carries it, and the
account spends a prompt strike, as a flagged prompt does.

Canaries are looked for as a person reads them (`text.folded`: compatibility forms, case, spaces,
punctuation and invisible characters aside, so "S-K l i v e" is "sklive"), in the answer's text as the
model wrote it (content, reasoning, refusals, tool-call arguments; completions' text), not in its JSON. A
stream is watched per choice and field with a tail of the longest canary's length less one, so that a
canary split over events is found: the tail and the new text are searched with `in` for each of a few
canaries, or with one RE2 set for more; linear in the text, whatever it holds (bench/canaries.py measures
the cost a token). While a tail ends in the first letters of a canary (PREFIX or more of them), events are
held back (`Watch.pending`): the client gets none of a canary, not its first part. What they do not catch:
a canary the model writes otherwise (translated, encoded, one letter a line in two answers): canaries mark
that a system prompt was given away; they do not keep what it holds secret.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import re2

from floodwall import logs
from floodwall.errors import ApiError
from floodwall.principal import Principal
from floodwall.telemetry.traffic import Traffic
from floodwall.text import folded

log = logging.getLogger("floodwall.inference")
REASON = "answer/canary"
# the fields of a message (or a streamed delta) that carry text the model wrote, besides its content
_OTHER_TEXT_FIELDS = ("reasoning_content", "reasoning", "refusal")


def leak_error() -> ApiError:
    # 400, as a refused prompt is, and not a 5xx: the call did what it was built to do (the prompt got the model
    # to give away what it was told to keep), and OpenAI's SDKs retry a 5xx by themselves, running the attack
    # again at the account's cost. The message does not say what was found: the attacker learns only that it
    # was withheld
    return ApiError(400, "The model's answer was withheld by the service's answer screening.", "canary_leak",
                    reason=REASON)


class Canaries:
    """The operator's canaries, and what a leak brings: a log line, a count, and a prompt strike on the
    account (`strike`: PromptGuard.strike, which says whether one was spent)."""

    def __init__(self, canaries: Sequence[str], strike: Callable[[Principal, str, str], bool] | None = None,
                 traffic: Traffic | None = None) -> None:
        self.canaries = tuple(dict.fromkeys(canaries))
        self.folded = tuple(folded(canary) for canary in self.canaries)
        self.find = _finder(self.folded)
        self.keep = max(map(len, self.folded), default=1) - 1
        self.begun = _beginnings(self.folded)
        self.strike = strike
        self.traffic = traffic or Traffic()

    def __bool__(self) -> bool:
        return bool(self.canaries)

    def watch(self) -> Watch:
        """A watch over one streamed answer."""
        return Watch(self.find, self.keep, self.begun)

    def in_answer(self, answer: Any, raw: bytes = b"") -> int | None:
        """The number of the first canary a whole answer (parsed JSON, or None with its `raw` bytes when they
        do not parse) carries, or None."""
        if answer is None:
            return self.find(folded(raw.decode("utf-8", "replace")))
        for _, text in _texts(answer):
            found = self.find(folded(text))
            if found is not None:
                return found
        return None

    def leaked(self, number: int, principal: Principal, tier: str, level: str, endpoint: str, stream: bool) -> None:
        struck = self.strike(principal, tier, level) if self.strike is not None else False
        self.traffic.event("answer.canary")
        # the canary's number, not the canary: the log is not where a secret should go
        logs.event(log, "answer_withheld", logging.WARNING, account=principal.user_id, key=principal.key_id,
                   reason=REASON, canary=number + 1, endpoint=endpoint, stream=stream, strike=struck,
                   defense_level=level)


class Watch:
    """One streamed answer's tails (folded), per choice and field, and those that end in a canary's first
    letters."""

    __slots__ = ("begun", "find", "held", "keep", "tails")

    def __init__(self, find: Callable[[str], int | None], keep: int,
                 begun: Callable[[str], bool] = lambda tail: False) -> None:
        self.find = find
        self.keep = keep
        self.begun = begun  # whether a tail ends in PREFIX or more of a canary's first letters
        self.tails: dict[tuple[int, str], str] = {}
        self.held: set[tuple[int, str]] = set()

    def event(self, data: bytes) -> int | None:
        """The number of the canary this event's text completes, or None. An event that does not parse as
        JSON (a model server's NaN, say) is read whole, its bytes as text."""
        try:
            chunk = orjson.loads(data)
        except ValueError:
            return self.feed((-1, "raw"), data.decode("utf-8", "replace"))
        for key, text in _texts(chunk):
            found = self.feed(key, text)
            if found is not None:
                return found
        return None

    def feed(self, key: tuple[int, str], text: str) -> int | None:
        # the whole window is searched, tail and all: a canary found in the tail before would have ended the
        # stream, so what is found now ends in the new text
        window = self.tails.get(key, "") + folded(text)
        found = self.find(window)
        if found is None and (key in self.tails or len(self.tails) < MAX_TAILS):
            tail = self.tails[key] = window[-self.keep:] if self.keep else ""
            if self.begun(tail):
                self.held.add(key)
            else:
                self.held.discard(key)
        return found

    def pending(self) -> bool:
        """Whether a tail ends in the first PREFIX or more letters of a canary: the events since are held
        back until the next ones say whether the canary follows."""
        return bool(self.held)


def _beginnings(canaries: tuple[str, ...]) -> Callable[[str], bool]:
    """Whether a text ends in the first PREFIX or more letters of one of the canaries (not all of it: that is
    `find`'s): a search each for a few canaries, else one RE2 pattern (abc(?:d(?:e)?)?\\z per canary)."""
    if len(canaries) <= FEW:
        def each(tail: str) -> bool:
            for canary in canaries:
                head = canary[:PREFIX]
                at = tail.find(head, max(0, len(tail) - len(canary) + 1))
                while at != -1:
                    if canary.startswith(tail[at:]):
                        return True
                    at = tail.find(head, at + 1)
            return False

        return each

    def nested(canary: str) -> str:
        rest = "".join(f"(?:{re2.escape(c)}" for c in canary[PREFIX:-1]) + ")?" * len(canary[PREFIX:-1])
        return str(re2.escape(canary[:PREFIX])) + rest

    options = re2.Options()
    options.max_mem = 64 << 20
    pattern = re2.compile("(?:" + "|".join(nested(c) for c in canaries) + r")\z", options)
    return lambda tail: pattern.search(tail) is not None


# letters of a canary that, ending a tail, hold the stream's events back (fewer give away nothing of use)
PREFIX = 3
# tails kept a stream (choices x fields): a model server that numbers its choices without end is read event
# by event past this, not remembered without bound
MAX_TAILS = 256
# up to this many canaries, a search each (`in`, in C) costs less than one RE2 set's call from Python
# (bench/canaries.py: about 0.1 µs a canary against 1 µs for the set, whatever its size)
FEW = 4


def _finder(canaries: tuple[str, ...]) -> Callable[[str], int | None]:
    """The search for the first of the canaries in a text: linear, whatever the text holds."""
    if len(canaries) <= FEW:
        def each(text: str) -> int | None:
            for number, canary in enumerate(canaries):
                if canary in text:
                    return number
            return None

        return each
    options = re2.Options()
    options.max_mem = 64 << 20
    found = re2.Set.SearchSet(options)
    for canary in canaries:
        found.Add(re2.escape(canary))
    found.Compile()

    def one_set(text: str) -> int | None:
        # texts come from orjson, which refuses lone surrogates: they encode to UTF-8 for RE2
        hits = found.Match(text)
        return min(hits) if hits else None

    return one_set


def _texts(answer: Any) -> list[tuple[tuple[int, str], str]]:
    """The text the model wrote in an answer or a streamed chunk, keyed by choice and field."""
    texts: list[tuple[tuple[int, str], str]] = []
    choices = answer.get("choices") if type(answer) is dict else None
    if type(choices) is not list:
        return texts
    for choice in choices:
        if type(choice) is not dict:
            continue
        index = choice.get("index", 0)
        if type(index) is not int:
            index = 0
        text = choice.get("text")
        if type(text) is str:
            texts.append(((index, "text"), text))
        for part in (choice.get("delta"), choice.get("message")):
            if type(part) is not dict:
                continue
            content = part.get("content")
            if type(content) is str:
                texts.append(((index, "content"), content))
            if len(part) > 1 or content is None:  # more than the one token of content most chunks carry
                _more_texts(index, part, texts)
    return texts


def _more_texts(index: int, part: dict[str, Any], texts: list[tuple[tuple[int, str], str]]) -> None:
    for field in _OTHER_TEXT_FIELDS:
        value = part.get(field)
        if type(value) is str:
            texts.append(((index, field), value))
    calls = part.get("tool_calls")
    for position, call in enumerate(calls if type(calls) is list else ()):
        if type(call) is dict:
            arguments = _arguments(call.get("function"))
            if arguments is not None:
                number = call.get("index", position)
                texts.append(((index, f"tool{number if type(number) is int else position}"), arguments))
    arguments = _arguments(part.get("function_call"))
    if arguments is not None:
        texts.append(((index, "function_call"), arguments))


def _arguments(function: Any) -> str | None:
    arguments = function.get("arguments") if type(function) is dict else None
    return arguments if type(arguments) is str else None
