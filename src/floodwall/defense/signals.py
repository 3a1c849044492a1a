"""The figures the detector reads, derived from one second of traffic counts (every replica's, summed).

Each signal is a per-second figure or a share. Sign-ups and static files are left out of the error share:
a waiting room answers most sign-ups with "please wait", which is the defense working, not an attack.
"""

from __future__ import annotations

from collections.abc import Mapping

ERRORS = frozenset({"4xx", "5xx", "refused"})
NOT_IN_ERROR_SHARE = frozenset({"auth-register", "static"})
# below this many answers in a second, a share says nothing
MIN_FOR_SHARE = 10

SIGNALS = ("requests", "refused", "errors", "error_share", "new_addresses", "new_networks", "sources", "signups",
           "accounts_created", "logins", "login_failures", "login_failed_share", "model_shed")


def figures(counts: Mapping[str, int]) -> dict[str, float]:
    refused = answered = errors = signups = 0
    for key, count in counts.items():
        if not key.startswith("req:"):
            continue
        _, klass, outcome = key.split(":", 2)
        if outcome == "refused":
            refused += count
        if klass == "auth-register":
            signups += count
        if klass not in NOT_IN_ERROR_SHARE:
            answered += count
            if outcome in ERRORS:
                errors += count
    failed = counts.get("event:login.failed", 0)
    logins = failed + counts.get("event:login.succeeded", 0)
    return {
        "requests": float(counts.get("arrivals", 0)),
        "refused": float(refused),
        "errors": float(errors),
        "error_share": errors / answered if answered >= MIN_FOR_SHARE else 0.0,
        "new_addresses": float(counts.get("new_addresses", 0)),
        "new_networks": float(counts.get("new_networks", 0)),
        "sources": float(counts.get("sources", 0)),
        "signups": float(signups),
        "accounts_created": float(counts.get("event:signup.created", 0)),
        "logins": float(logins),
        "login_failures": float(failed),
        "login_failed_share": failed / logins if logins >= MIN_FOR_SHARE else 0.0,
        "model_shed": float(sum(count for key, count in counts.items() if key.startswith("event:model.shed"))),
    }
