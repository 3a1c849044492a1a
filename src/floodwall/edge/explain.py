"""What the gate would decide right now for a request an operator describes, and why, without spending
anything: the gate's own decision function, peeking instead of spending (limits peeked, not hit; no ban,
no count, no log). Behind POST /admin/api/explain; prompts are explained by defense/screening.py."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from floodwall.edge.gate import Decision, Gate
from floodwall.edge.policy import classify
from floodwall.errors import ApiError
from floodwall.identity import normalised


def decision_json(decision: str, reason: str, **more: Any) -> dict[str, Any]:
    """The contract's shape: {"decision", "reason", "rules", "score", ...the facts}."""
    return {"decision": decision, "reason": reason, "rules": more.pop("rules", [reason] if reason else []),
            "score": more.pop("score", 0), **more}


def described_scope(method: str, path: str, headers: Mapping[str, str], query: str = "") -> dict[str, Any]:
    """An ASGI scope for a request as an operator describes it (the parts the gate reads)."""
    # as an ASGI server hands it over: the path percent-decoded (what classifies it), the raw one as sent
    return {"type": "http", "method": method.upper(), "path": unquote(path), "raw_path": path.encode("utf-8"),
            "query_string": query.encode("utf-8"),
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]}


async def explain_request(gate: Gate, method: str, path: str, headers: Mapping[str, str],
                          address: str, query: str = "") -> dict[str, Any]:
    """The gate's decision for this request from this address, as JSON."""
    text = str(normalised(ipaddress.ip_address(address)))
    scope = described_scope(method, path, headers, query)
    return explained(gate, await gate.decide(scope, classify(scope["method"], scope["path"]), text, spend=False))


def explained(gate: Gate, found: Decision) -> dict[str, Any]:
    facts: dict[str, Any] = {"class": found.klass, "level": found.level, "address": found.address,
                             "tier": "allow-listed" if found.allow_listed else found.tier}
    if found.remembered:
        facts["remembered"] = True
    if found.score is not None:
        score = found.score
        facts["scoring"] = {"score": score.score, "rules": list(score.rules), "categories": list(score.categories),
                            "evidence": list(score.evidence), "complete": score.complete}
        if gate.scoring is not None:
            facts["scoring"] |= {"threshold": gate.scoring.threshold, "action": gate.scoring.action(found.level)}
    if found.strikes:
        facts["prompt_strikes"] = {b.rule: v.remaining for b, v in found.strikes}
    rules = [bucket.rule for bucket in found.buckets]
    refusal = found.refusal
    if refusal is not None:
        more = _refusal_facts(refusal)
        if found.score is not None and refusal.code == "request_blocked":
            more |= {"rules": list(found.score.rules), "score": found.score.score}
        return decision_json("refuse", found.reason, **more, **facts)
    reason = found.reason or ("within every limit" if found.buckets else "no limit applies")
    points = found.score.score if found.score is not None else 0
    if found.decision == "flag" and found.score is not None:
        rules = [*found.score.rules, *rules]
    return decision_json(found.decision, reason, rules=rules, score=points,
                         remaining={b.rule: v.remaining for b, v in zip(found.buckets, found.verdicts, strict=True)},
                         **facts)


def _refusal_facts(error: ApiError) -> dict[str, Any]:
    return {"status": error.status, "code": error.code, "message": error.message, "retry_after": error.retry_after}
