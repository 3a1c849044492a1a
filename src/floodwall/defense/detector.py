"""The detector: each second it compares the service's traffic with baselines learnt from its own calm
traffic and says where the defense level should be. Its rules are policy data (`[[detector.rule]]`):
a rule names a level and the conditions, all of which must hold, like "requests > 10x baseline".

A new detector spends its first `warmup` seconds at the normal level learning, and moves nothing (a
process started in the middle of an attack would learn the attack: pin the level then). Hysteresis: the
level rises when a rule has held for `hold` seconds in a row, straight to the highest such
rule's level; it falls one step after `cooldown` seconds in which no rule of that level (or above) held
even at `release` times its thresholds. Baselines learn only while the level is normal and no rule is on,
so an attack never teaches the detector that it is normal.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec

from floodwall.config import ConfigError, Seconds, typed
from floodwall.defense.signals import SIGNALS
from floodwall.levels import LEVELS, Level, rank

_CONDITION = re.compile(r"^\s*([a-z_]+)\s*([<>])\s*([0-9]*\.?[0-9]+)\s*(x\s*baseline)?\s*$")


@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    signal: str
    above: bool
    value: float
    relative: bool  # value times the signal's baseline

    @classmethod
    def parse(cls, text: str, where: str) -> Condition:
        match = _CONDITION.match(text)
        if not match:
            raise ConfigError(f"{where}: {text!r} is not a condition like 'requests > 200' or "
                              "'signups > 5x baseline'")
        signal, sign, value, relative = match.groups()
        if signal not in SIGNALS:
            raise ConfigError(f"{where}: unknown signal {signal!r}; signals are {', '.join(SIGNALS)}")
        return cls(signal, sign == ">", float(value), relative is not None)

    def threshold(self, baselines: Mapping[str, float], scale: float = 1.0) -> float:
        base = self.value * baselines.get(self.signal, 0.0) if self.relative else self.value
        # hysteresis: a rule that is on stays on until its figures are well below where it started
        return base * scale if self.above else base / scale

    def holds(self, figures: Mapping[str, float], baselines: Mapping[str, float], scale: float = 1.0) -> bool:
        figure = figures.get(self.signal, 0.0)
        limit = self.threshold(baselines, scale)
        return figure > limit if self.above else figure < limit

    def explain(self, figures: Mapping[str, float], baselines: Mapping[str, float]) -> str:
        figure = figures.get(self.signal, 0.0)
        sign = ">" if self.above else "<"
        if self.relative:
            return (f"{self.signal} {_number(figure)} {sign} {self.value:g}x baseline "
                    f"({_number(self.threshold(baselines))})")
        return f"{self.signal} {_number(figure)} {sign} {self.value:g}"

    def __str__(self) -> str:
        return f"{self.signal} {'>' if self.above else '<'} {self.value:g}{'x baseline' if self.relative else ''}"


@dataclasses.dataclass(frozen=True, slots=True)
class DetectorRule:
    name: str
    level: str
    conditions: tuple[Condition, ...]

    def holds(self, figures: Mapping[str, float], baselines: Mapping[str, float], scale: float = 1.0) -> bool:
        return all(condition.holds(figures, baselines, scale) for condition in self.conditions)

    def explain(self, figures: Mapping[str, float], baselines: Mapping[str, float]) -> str:
        return f"{self.name}: " + ", ".join(c.explain(figures, baselines) for c in self.conditions)


@dataclasses.dataclass(frozen=True)
class DetectorPolicy:
    rules: tuple[DetectorRule, ...] = ()
    hold: int = 2
    cooldown: int = 20
    release: float = 0.5
    half_life: float = 600.0
    warmup: int = 30

    @classmethod
    def from_data(cls, data: Any, where: str) -> DetectorPolicy:
        table = typed(_DetectorTable, data, where)
        if any(rule.level == LEVELS[0] for rule in table.rule):
            raise ConfigError(f"{where} rule: a rule's level must be one of {', '.join(LEVELS[1:])}")
        rules = tuple(DetectorRule(rule.name, rule.level, tuple(Condition.parse(text, f"{where} rule {i + 1} "
                                                                              f"({rule.name})") for text in rule.when))
                      for i, rule in enumerate(table.rule))
        return cls(rules, max(1, round(table.hold)), max(1, round(table.cooldown)), table.release,
                   max(1.0, table.half_life), max(1, round(table.warmup)))


class _RuleTable(msgspec.Struct, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    level: Level  # one above the mildest: a rule raises the level
    when: Annotated[list[str], msgspec.Meta(min_length=1)]  # conditions like 'requests > 200'


class _DetectorTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """[detector] as written."""

    rule: list[_RuleTable] = []
    hold: Seconds = Seconds(DetectorPolicy.hold)
    cooldown: Seconds = Seconds(DetectorPolicy.cooldown)
    release: Annotated[float, msgspec.Meta(gt=0, le=1)] = DetectorPolicy.release
    half_life: Seconds = Seconds(DetectorPolicy.half_life)
    warmup: Seconds = Seconds(DetectorPolicy.warmup)


class Baselines(dict[str, float]):
    """An exponentially weighted mean of each signal, corrected for its start (the first minutes are not
    pulled toward zero): what calm traffic looks like on this service."""

    def __init__(self, half_life: float) -> None:
        super().__init__()
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self._sums: dict[str, float] = {}
        self._weight = 0.0
        self.samples = 0

    def learn(self, figures: Mapping[str, float]) -> None:
        keep = 1.0 - self.alpha
        self._weight = self._weight * keep + self.alpha
        for name, figure in figures.items():
            self._sums[name] = self._sums.get(name, 0.0) * keep + figure * self.alpha
            self[name] = self._sums[name] / self._weight
        self.samples += 1


@dataclasses.dataclass(frozen=True, slots=True)
class Move:
    level: str
    reason: str


class Detector:
    def __init__(self, policy: DetectorPolicy) -> None:
        self.policy = policy
        self.baselines = Baselines(policy.half_life)
        self.streaks: dict[str, int] = {rule.name: 0 for rule in policy.rules}
        self.active: list[str] = []  # rules on (at their release thresholds) in the last second
        self.quiet = 0  # seconds in a row with no rule holding the level in force

    def observe(self, figures: Mapping[str, float], level: str) -> Move | None:
        """One second's figures, and the level in force: where the level should move, if anywhere."""
        baselines = self.baselines
        if baselines.samples < self.policy.warmup:
            # a new detector first learns what this service's traffic looks like, and moves nothing
            if level == "normal":
                baselines.learn(figures)
            return None
        firing = {rule.name for rule in self.policy.rules if rule.holds(figures, baselines)}
        active = [rule for rule in self.policy.rules if rule.holds(figures, baselines, self.policy.release)]
        self.active = [rule.name for rule in active]
        for name in self.streaks:
            self.streaks[name] = self.streaks[name] + 1 if name in firing else 0
        held = [rule for rule in self.policy.rules if self.streaks[rule.name] >= self.policy.hold]
        if not active and level == "normal":
            baselines.learn(figures)
        top = max(held, key=lambda rule: rank(rule.level), default=None)
        if top is not None and rank(top.level) > rank(level):
            self.quiet = 0
            reasons = [rule.explain(figures, baselines) for rule in held if rule.level == top.level]
            return Move(top.level, "; ".join(reasons))
        if level == "normal":
            self.quiet = 0
            return None
        if any(rank(rule.level) >= rank(level) for rule in active):
            self.quiet = 0
            return None
        self.quiet += 1
        if self.quiet < self.policy.cooldown:
            return None
        self.quiet = 0
        lower = max([rank(level) - 1, *(rank(rule.level) for rule in active)])
        still = ", ".join(rule.name for rule in active if rank(rule.level) == lower)
        why = f"quiet for {self.policy.cooldown}s" + (f"; still on: {still}" if still else "")
        return Move(LEVELS[lower], why)

    def state(self) -> dict[str, Any]:
        return {"baselines": {name: round(value, 3) for name, value in self.baselines.items()},
                "samples_learnt": self.baselines.samples, "active_rules": self.active,
                "quiet_seconds": self.quiet, "rules": [
                    {"name": rule.name, "level": rule.level, "when": [str(c) for c in rule.conditions],
                     "streak": self.streaks[rule.name]} for rule in self.policy.rules]}


def _number(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"
