"""Prompt screening before a call is admitted: score the prompt, spot campaigns, and act as the level's
policy says (log, flag with a strike on the account, or refuse). Bounded work on the event loop: see
defense/prompts."""

from __future__ import annotations

import logging

from floodwall import logs
from floodwall.accounts.service import Principal
from floodwall.defense.prompts import prompt_text
from floodwall.edge.policy import Caller
from floodwall.errors import ApiError
from floodwall.services import Services

log = logging.getLogger("floodwall.defense")
CAMPAIGN = "campaign/near-duplicate"


async def screen(config: Services, principal: Principal, body: dict[str, object], tier: str, level: str) -> None:
    """Raise the refusal when the policy refuses this prompt (or its account is out of strikes)."""
    policy = config.policy.prompts
    action = policy.actions.get(level, "off")
    if action == "off":
        return
    text = prompt_text(body)
    if not text:
        return
    strikes = config.policy.buckets("prompt-strike", level, Caller(0, 0, tier, principal.user_id, principal.key_id))
    if strikes and action != "log":
        verdicts = await config.store.peek(strikes)
        waits = [v.retry_after for v in verdicts if not v.allowed]
        if waits:
            raise ApiError(429, "Too many of this account's prompts were flagged by the service's prompt screening. "
                           "Please wait and try again.", "prompt_strikes", type="requests", retry_after=max(waits),
                           reason=strikes[0].rule)
    verdict = config.prompt_screen.score(text)
    senders = config.campaigns.seen(text, principal.user_id)
    rules = verdict.rules + ((CAMPAIGN,) if senders >= policy.campaign else ())
    if verdict.score < policy.threshold and senders < policy.campaign:
        return
    reason = f"prompt/{rules[0]}" if verdict.score >= policy.threshold else f"prompt/{CAMPAIGN}"
    config.traffic.event(f"prompt.{action}")
    logs.event(log, "prompt_flagged", logging.WARNING, account=principal.user_id, key=principal.key_id,
               score=verdict.score, rules=list(rules), campaign_accounts=senders, action=action, reason=reason,
               defense_level=level)
    if action in ("flag", "refuse") and strikes:
        await config.store.charge(strikes)
    if action == "refuse":
        raise ApiError(400, "This request was refused by the service's prompt screening (it looks like an attempt "
                       "to override the model's instructions or safeguards).", "content_policy_violation",
                       param="messages", reason=reason)
