"""Prompt screening before a call is admitted: score the prompt, spot campaigns, and act as the level's
policy says (log, flag with a strike on the account, or refuse). Bounded work on the event loop: see
defense/prompts. Also what /admin/api/explain says about a prompt."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from floodwall import logs
from floodwall.defense.prompts import Campaigns, PromptPolicy, Screen, prompt_text
from floodwall.errors import ApiError
from floodwall.limits import Bucket, Caller, Verdict
from floodwall.principal import Principal
from floodwall.state.store import Store
from floodwall.telemetry.traffic import Traffic

log = logging.getLogger("floodwall.defense")
CAMPAIGN = "campaign/near-duplicate"


class PromptGuard:
    """The policy's [prompts] table applied to one call: `strike_buckets` gives an account's prompt-strike
    limits (the edge policy's rules for the prompt-strike class)."""

    def __init__(self, policy: PromptPolicy, screen: Screen, campaigns: Campaigns, store: Store,
                 strike_buckets: Callable[[str, Caller], list[Bucket]], traffic: Traffic | None = None) -> None:
        self.policy = policy
        self.screen = screen
        self.campaigns = campaigns
        self.store = store
        self.strike_buckets = strike_buckets
        self.traffic = traffic or Traffic()

    def action(self, level: str) -> str:
        return self.policy.actions.get(level, "off")

    async def check(self, principal: Principal, body: dict[str, object], tier: str, level: str,
                    strikes: Sequence[tuple[Bucket, Verdict]] | None = None) -> None:
        """Raise the refusal when the policy refuses this prompt (or its account is out of strikes). The gate
        looked at the account's strikes in its own round trip (`strikes`); without it they are looked at here."""
        policy = self.policy
        action = self.action(level)
        if action == "off":
            return
        text = prompt_text(body)
        if not text:
            return
        if strikes is None:
            buckets = self.strike_buckets(level, Caller(0, 0, tier, principal.user_id, principal.key_id))
            strikes = list(zip(buckets, await self.store.peek(buckets), strict=True)) if buckets else []
        if strikes and action != "log":
            waits = [verdict.retry_after for _, verdict in strikes if not verdict.allowed]
            if waits:
                raise ApiError(429, "Too many of this account's prompts were flagged by the service's prompt "
                               "screening. Please wait and try again.", "prompt_strikes", type="requests",
                               retry_after=max(waits), reason=strikes[0][0].rule)
        verdict = self.screen.score(text)
        senders = self.campaigns.seen(text, principal.user_id)
        rules = verdict.rules + ((CAMPAIGN,) if senders >= policy.campaign else ())
        if verdict.score < policy.threshold and senders < policy.campaign:
            return
        reason = f"prompt/{rules[0]}" if verdict.score >= policy.threshold else f"prompt/{CAMPAIGN}"
        self.traffic.event(f"prompt.{action}")
        logs.event(log, "prompt_flagged", logging.WARNING, account=principal.user_id, key=principal.key_id,
                   score=verdict.score, rules=list(rules), campaign_accounts=senders, action=action, reason=reason,
                   defense_level=level)
        if action in ("flag", "refuse") and strikes:
            # a strike is spent without asking, with the call's other reconciliations: no round trip of its own
            self.store.charge_later([bucket for bucket, _ in strikes])
        if action == "refuse":
            raise ApiError(400, "This request was refused by the service's prompt screening (it looks like an "
                           "attempt to override the model's instructions or safeguards).", "content_policy_violation",
                           param="messages", reason=reason)

    def explain(self, text: str, level: str) -> dict[str, Any]:
        """Screening's verdict for this prompt at this level (campaigns aside: they need many senders)."""
        verdict = self.screen.score(text)
        threshold, action = self.policy.threshold, self.action(level)
        flagged = verdict.score >= threshold
        decision = "pass" if not flagged or action in ("off", "log") else ("refuse" if action == "refuse" else "flag")
        return {"decision": decision, "reason": verdict.reason if flagged else "below the threshold",
                "rules": list(verdict.rules), "score": verdict.score, "threshold": threshold, "action": action,
                "level": level}
