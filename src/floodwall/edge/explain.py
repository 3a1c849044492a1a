"""What the gate, and prompt screening, would decide right now for a request or a prompt an operator
describes, and why, without spending anything: limits are peeked, not hit; no campaign is filed, no
strike spent. Behind POST /admin/api/explain.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from floodwall.defense.prompts import Screen
from floodwall.edge.gate import Gate, credential, described, first_refusal
from floodwall.edge.identity import normalised
from floodwall.edge.policy import classify
from floodwall.errors import ApiError


def _decision(decision: str, reason: str, **more: Any) -> dict[str, Any]:
    return {"decision": decision, "reason": reason, "rules": more.pop("rules", [reason] if reason else []),
            "score": more.pop("score", 0), **more}


def _refusal(error: ApiError, **more: Any) -> dict[str, Any]:
    return _decision("refuse", error.reason or error.code, status=error.status, code=error.code,
                     message=error.message, retry_after=error.retry_after, **more)


async def explain_request(gate: Gate, method: str, path: str, headers: Mapping[str, str],
                          address: str, query: str = "") -> dict[str, Any]:
    """The gate's steps for this request, in its order: allow list, deny list, bans, caller, limits,
    scoring."""
    klass = classify(method.upper(), path)
    level = gate.control.level
    parsed = normalised(ipaddress.ip_address(address))
    facts: dict[str, Any] = {"class": klass, "level": level, "address": str(parsed)}
    if gate.control.allow.match(parsed) is not None:
        return _decision("pass", "allow-list", tier="allow-listed", **facts)
    blocked = gate.blocked(parsed)
    if blocked is not None:
        return _refusal(blocked, tier="anonymous", **facts)
    scope = {"headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
             "method": method.upper(), "path": path, "raw_path": path.encode("utf-8"),
             "query_string": query.encode("utf-8")}
    secret, is_key = credential(scope)
    principal = None
    if secret is not None and klass != "admin":
        principal = await gate.lookup(secret, is_key)
    tier, device = gate.tier(principal), None
    if klass == "auth-login":
        tier, device = gate.sign_in_tier(scope)
    facts["tier"] = tier
    buckets = gate.buckets(klass, level, parsed, tier, principal, device)
    if klass == "auth-register":
        refused = gate.registration(level, buckets)
        if refused is not None:
            return _refusal(refused, **facts)
    verdicts = await gate.store.peek(buckets) if buckets else []
    refused = first_refusal(klass, buckets, verdicts)
    if refused is not None:
        return _refusal(refused, **facts)
    scoring = gate.policy.scoring
    if gate.scorer is not None and scoring is not None and tier != "established":
        found = gate.scorer.score(described(scope))
        action = scoring.actions[level]
        facts["scoring"] = {"score": found.score, "threshold": scoring.threshold, "rules": list(found.rules),
                            "categories": list(found.categories), "evidence": list(found.evidence), "action": action}
        if found.score >= scoring.threshold and action == "refuse":
            return _decision("refuse", f"probe/{found.rules[0]}", status=403, code="request_blocked",
                             rules=list(found.rules), score=found.score, **facts)
    rules = [bucket.rule for bucket in buckets]
    mode = gate.policy.registration_mode(level, gate.control.registration)
    if klass == "auth-register" and mode == "queued":
        return _decision("queue", "registration/queued", rules=rules, **facts)
    return _decision("pass", "within every limit" if buckets else "no limit applies", rules=rules,
                     remaining={bucket.rule: verdict.remaining for bucket, verdict in zip(buckets, verdicts,
                                                                                           strict=True)}, **facts)


def explain_prompt(screen: Screen, threshold: int, action: str, text: str, level: str) -> dict[str, Any]:
    """Prompt screening's verdict for this prompt at this level (campaigns aside: they need many senders)."""
    verdict = screen.score(text)
    flagged = verdict.score >= threshold
    decision = "pass" if not flagged or action in ("off", "log") else ("refuse" if action == "refuse" else "flag")
    return _decision(decision, verdict.reason if flagged else "below the threshold", rules=list(verdict.rules),
                     score=verdict.score, threshold=threshold, action=action, level=level)
