"""The operator commands (`floodwall level`, `detector`, `registration`, `ban`, `lists`, `incident`, `users`,
`audit`) as admin API calls."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from floodwall.config import Settings
from floodwall.text import shown


class AdminError(Exception):
    pass


def base_url(settings: Settings, url: str | None) -> str:
    if url:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise AdminError(f"--url must be floodwall's http:// or https:// address, not {url!r}")
        return url.rstrip("/")
    host = settings.server.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{settings.server.port}"


def call(settings: Settings, args: argparse.Namespace, method: str, path: str,
         body: dict[str, Any] | None = None) -> Any:
    token = args.token or settings.admin.token
    if not token:
        raise AdminError("no admin token: set FLOODWALL_ADMIN_TOKEN (or pass --token)")
    request = urllib.request.Request(
        base_url(settings, args.url) + path, method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except ValueError:
        raise AdminError(f"{base_url(settings, args.url)} did not answer as floodwall's admin API does") from None
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = exc.reason
        raise AdminError(f"HTTP {exc.code}: {message}") from None
    except OSError as exc:
        raise AdminError(f"cannot reach floodwall at {base_url(settings, args.url)}: {exc}") from None


def say(text: str) -> None:
    """Print what the server answered: an account's e-mail or a reason is text from outside, shown inert."""
    print(shown(text))


def level(settings: Settings, args: argparse.Namespace) -> int:
    if args.level:
        call(settings, args, "PUT", "/admin/api/level", {"level": args.level, "reason": args.reason})
    state = call(settings, args, "GET", "/admin/api/level")
    say(f"level: {state['level']} (mode {state['mode']}, set by {state.get('by')}: {state.get('reason')})")
    for entry in state.get("history", [])[:10]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry["at"])))
        say(f"  {at}  {entry['level']:<13} mode {entry['mode']:<13} {entry.get('by')}: {entry.get('reason')}")
    return 0


def detector(settings: Settings, args: argparse.Namespace) -> int:
    state = call(settings, args, "GET", "/admin/api/detector")
    say(f"level: {state['level']} (mode {state['mode']}); rules on: {', '.join(state['active_rules']) or 'none'}; "
          f"learnt from {state['samples_learnt']} calm seconds")
    say(f"  {'signal':<20} {'last second':>12} {'baseline':>10}")
    for name, value in state["figures"].items():
        say(f"  {name:<20} {value:>12g} {state['baselines'].get(name, 0):>10g}")
    for rule in state["rules"]:
        say(f"  rule {rule['name']} -> {rule['level']}: {' and '.join(rule['when'])} (held {rule['streak']}s)")
    traffic = call(settings, args, "GET", "/admin/api/traffic")
    say(f"last minute in this process: {traffic['arrivals']} requests, {traffic['new_addresses']} new addresses, "
          f"{traffic['new_networks']} new networks; heaviest talkers:")
    for talker in traffic["top_talkers"][:10]:
        say(f"  {talker['key']:<40} {talker['hits']:>8} (±{talker['error']})")
    return 0


def registration(settings: Settings, args: argparse.Namespace) -> int:
    if args.mode:
        call(settings, args, "PUT", "/admin/api/registration", {"mode": args.mode, "reason": args.reason})
    state = call(settings, args, "GET", "/admin/api/registration")
    say(f"registration: {state['mode']} (pinned: {state['pinned']}; level {state['level']}; by level: "
          + ", ".join(f"{level} {mode}" for level, mode in state["by_level"].items()) + ")")
    say(f"proof of work on sign-up: {state['challenge'] or 'none'} (by level: "
          + ", ".join(f"{level} {value or 'none'}" for level, value in state["challenge_by_level"].items()) + ")")
    return 0


def ban(settings: Settings, args: argparse.Namespace) -> int:
    if args.ban_command == "add":
        made = call(settings, args, "POST", "/admin/api/bans",
                    {"target": args.target, "duration": args.duration, "reason": args.reason})
        say(f"banned {made['target']} for {made['expires_in']}s ({made['reason']})")
    elif args.ban_command == "remove":
        call(settings, args, "DELETE", f"/admin/api/bans/{args.target}")
        say(f"unbanned {args.target}")
    else:
        for b in call(settings, args, "GET", "/admin/api/bans")["bans"]:
            say(f"{b['target']:<43} {b['expires_in']:>7}s  strikes {b['strikes']}  {b['reason']}")
    return 0


def lists(settings: Settings, args: argparse.Namespace) -> int:
    if args.lists_command == "add":
        call(settings, args, "POST", f"/admin/api/lists/{args.list}", {"cidr": args.cidr, "reason": args.reason})
        say(f"added {args.cidr} to the {args.list} list")
    elif args.lists_command == "remove":
        call(settings, args, "DELETE", f"/admin/api/lists/{args.list}/{args.cidr}")
        say(f"removed {args.cidr} from the {args.list} list")
    else:
        for e in call(settings, args, "GET", "/admin/api/lists")["entries"]:
            say(f"{e['list']:<6} {e['cidr']:<43} {e.get('reason', '')}")
    return 0


def incident(settings: Settings, args: argparse.Namespace) -> int:
    action = args.incident_command
    if action == "open":
        components = dict(pair.split("=", 1) for pair in args.component)
        made = call(settings, args, "POST", "/admin/api/incidents", {
            "name": args.name, "body": args.body, "status": args.status, "impact": args.impact,
            "components": components})
        say(f"opened incident {made['id']}: {made['name']} ({made['status']}, {made['impact']} impact)")
    elif action in ("update", "resolve"):
        status = "resolved" if action == "resolve" else args.status
        made = call(settings, args, "POST", f"/admin/api/incidents/{args.id}/updates",
                    {"status": status, "body": args.body})
        say(f"incident {made['id']} is now {made['status']}")
    else:
        for found in call(settings, args, "GET", "/admin/api/incidents")["incidents"]:
            say(f"{found['id']:>5}  {found['status']:<13} {found['impact']:<8} {found['created_at'][:16]}  "
                  f"{found['name']}{'  (automatic)' if found['automatic'] else ''}")
    return 0


def users(settings: Settings, args: argparse.Namespace) -> int:
    action = args.users_command
    if action in ("disable", "enable"):
        found = call(settings, args, "POST", f"/admin/api/users/{args.id}/{action}")
        say(f"account {found['id']} ({found['email']}) is {'disabled' if found['disabled'] else 'enabled'}")
    elif action == "sign-out":
        ended = call(settings, args, "POST", f"/admin/api/users/{args.id}/sign-out")
        say(f"account {args.id}: {ended['sessions_ended']} sessions ended")
    else:
        query = urllib.parse.urlencode({"q": args.query or "", "limit": args.limit})
        for user in call(settings, args, "GET", f"/admin/api/users?{query}")["users"]:
            flags = [flag for flag, on in (("disabled", user["disabled"]), ("2fa", user["two_factor"]),
                                           ("unconfirmed", not user["email_verified"])) if on]
            say(f"{user['id']:>7}  {user['email']:<40} {user['created_at'][:10]}  sessions {user['sessions']:>3}  "
                  f"keys {user['keys']:>3}  {' '.join(flags)}")
    return 0


def audit(settings: Settings, args: argparse.Namespace) -> int:
    query = urllib.parse.urlencode({"limit": args.limit, "action": args.action or ""})
    for event in call(settings, args, "GET", f"/admin/api/audit?{query}")["events"]:
        detail = " ".join(f"{key}={value}" for key, value in event["detail"].items())
        say(f"{event['at'][:19]}  {event['actor']:<22} {event['action']:<18} {event['target']:<24} {detail}")
    return 0
