"""Admission's policy: the [admission] table read into per-level terms (a tier's share of the model, its caps
and budgets), and what a call may cost before it is made."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any, Literal, get_args

import msgspec

from floodwall.config import ConfigError, Seconds, per_level, typed
from floodwall.inference.fields import choices, completion_length, prompt_tokens
from floodwall.levels import LEVELS

Tier = Literal["established", "new", "anonymous"]  # the callers admission tells apart, first served first
Spare = Literal["none", "idle", "all"]
TIER_ORDER: tuple[str, ...] = get_args(Tier)
LOWER_TIERS = TIER_ORDER[1:]


@dataclasses.dataclass(frozen=True)
class LevelTerms:
    share: Mapping[str, float]
    max_tokens: Mapping[str, int]
    tokens_per_minute: Mapping[str, int]
    in_flight: Mapping[str, int]
    max_choices: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # the slots beyond the shares that no call waits for: "none" (a share is a cap, and they idle while lower
    # tiers wait), "idle" (lent one more a second while they idle beyond reserve_idle, at most _lendable, halved
    # while an established call waits with some lent: capacity.IdleBudget), "all" (work-conserving)
    spare: Spare = "none"


@dataclasses.dataclass(frozen=True)
class AdmissionPolicy:
    initial_limit: int = 8
    min_limit: int = 1
    max_limit: int = 512
    queue_size: int = 512
    default_max_tokens: int = 512
    # latency above the baseline by less than this is jitter, whatever the ratio: a fast model server's
    # calls of a millisecond or two double in latency when the machine is busy, with nothing queued inside
    latency_slack: float = 0.005
    # the established tier's recent peak of calls, kept free of lower tiers, halves over this many seconds
    reserve_half_life: float = 30.0
    # ...but it may leave at most this share of the limit idle while lower tiers' calls wait
    reserve_idle: float = 0.05
    max_wait: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"established": 60.0, "new": 20.0, "anonymous": 10.0})
    levels: Mapping[str, LevelTerms] = dataclasses.field(default_factory=dict)

    def terms(self, level: str) -> LevelTerms:
        return self.levels.get(level) or LevelTerms({}, {}, {}, {})

    @classmethod
    def from_data(cls, data: Mapping[str, Any], where: str) -> AdmissionPolicy:
        table = msgspec.structs.asdict(typed(_ADMISSION, data, where))
        levels = {level: LevelTerms(terms.share, terms.max_tokens, terms.tokens_per_minute, terms.in_flight,
                                    terms.max_choices, _spare(terms.spare))
                  for level in LEVELS if (terms := table.pop(level)) is not None}
        waits = {tier: float(seconds) for tier, seconds in table.pop("max_wait").items()}
        policy = cls(**table, max_wait={**cls().max_wait, **waits}, levels=levels)
        if not policy.min_limit <= policy.initial_limit <= policy.max_limit:
            raise ConfigError(f"{where}: needs min_limit <= initial_limit <= max_limit")
        return policy


Positive = Annotated[int, msgspec.Meta(ge=1)]


class _TermsTable(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One level's column of [admission]: per tier, a share of the model, caps and budgets."""

    share: dict[Tier, Annotated[float, msgspec.Meta(ge=0, le=1)]] = {}
    max_tokens: dict[Tier, Positive] = {}
    tokens_per_minute: dict[Tier, Positive] = {}
    in_flight: dict[Tier, Positive] = {}
    max_choices: dict[Tier, Positive] = {}
    spare: Spare | bool = "none"  # (true and false: "all" and "none")


def _spare(value: Spare | bool) -> Spare:
    return ("all" if value else "none") if isinstance(value, bool) else value


_ADMISSION = per_level("AdmissionTable", _TermsTable | None, None,
                       *((name, Positive, getattr(AdmissionPolicy, name)) for name in
                         ("initial_limit", "min_limit", "max_limit", "queue_size", "default_max_tokens")),
                       ("latency_slack", Seconds, Seconds(AdmissionPolicy.latency_slack)),
                       ("reserve_half_life", Seconds, Seconds(AdmissionPolicy.reserve_half_life)),
                       ("reserve_idle", Annotated[float, msgspec.Meta(ge=0, le=1)], AdmissionPolicy.reserve_idle),
                       ("max_wait", dict[Tier, Seconds], {}))


def estimate_cost(body: Mapping[str, Any], default_max_tokens: int) -> tuple[int, int]:
    """(prompt tokens, completion tokens) a call may use, before it is made: the prompt as fields.py reads it,
    and the completions' length (default_max_tokens if no field sets one) times how many it generates."""
    length = completion_length(body)
    return cost(body, default_max_tokens if length is None else length, choices(body)[0])


def cost(body: Mapping[str, Any], length: int, count: int) -> tuple[int, int]:
    # every completion the call generates, each as long as the longest length field lets it be; embeddings
    # generate nothing
    return prompt_tokens(body) + 4, 0 if "input" in body else length * count
