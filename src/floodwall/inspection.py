"""What the gate asks of request inspection: a request described for scoring, the score, and the two
services defense/ provides behind small protocols (scoring, the probe watch). A leaf: the gate holds them
as the wiring hands them over, without importing defense."""

from __future__ import annotations

import dataclasses
from typing import Protocol


@dataclasses.dataclass(frozen=True, slots=True)
class Described:
    """The parts of a request that are scored: what the gate reads before routing (never the body)."""

    method: str
    path: str
    query: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Score:
    score: int
    rules: tuple[str, ...]
    categories: tuple[str, ...]
    # what each rule matched ("target: value", cut short), in the rules' order: the same odd cookie sent
    # with every page is one piece of evidence, a scanner's payloads are many
    evidence: tuple[str, ...] = ()
    # False when the time budget ran out before every value was read: what was read is scored
    complete: bool = True
    # a digest of every value any rule matched (not only each rule's first): what the probe watch counts as
    # one step, so that a fixed decoy sent first cannot make different payloads one piece of evidence
    fingerprint: str = ""


class RequestScoring(Protocol):
    """Scoring as the policy's [scoring] table sets it (defense/scoring.py's Scoring)."""

    threshold: int

    def action(self, level: str) -> str:
        """What a request scoring the threshold brings at this level: off, log, flag or refuse."""
        ...

    def score(self, request: Described) -> Score: ...

    def __len__(self) -> int:
        """Answers held in memory, for /metrics."""
        ...


class ProbeWatch(Protocol):
    """The behavioural probe watch (defense/probing.py's Probes): distinct missing paths per source."""

    @property
    def ban(self) -> float:
        """Seconds a source that overflows is banned for (the first time: bans escalate)."""
        ...

    def counts(self, status: int, path: str) -> bool:
        """Whether an answer is the kind a scan collects."""
        ...

    def answered(self, source: str, key: str) -> bool:
        """One counted answer to `source` for `key`: True when the source overflows (ban it)."""
        ...
