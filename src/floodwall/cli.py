"""The floodwall command: serve, model, db upgrade, the operator commands, and attack (its extra loaded
only when it runs)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from floodwall import __version__, logs, server
from floodwall.config import ConfigError, Settings, load
from floodwall.edge.policy import REGISTRATION_MODES
from floodwall.levels import LEVELS

log = logging.getLogger("floodwall")


class CommandError(Exception):
    """What stops a command, said in one line (exit 2): a port in use, a database that cannot be opened."""


def _overrides(args: argparse.Namespace, mapping: dict[str, tuple[str, str]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for attribute, (section, key) in mapping.items():
        value = getattr(args, attribute, None)
        if value is not None:
            found.setdefault(section, {})[key] = value
    return found


SERVE_FLAGS = {
    "host": ("server", "host"),
    "port": ("server", "port"),
    "workers": ("server", "workers"),
    "upstream": ("upstream", "url"),
    "database": ("database", "url"),
    "state": ("state", "url"),
}
MODEL_FLAGS = {
    "host": ("model", "host"),
    "port": ("model", "port"),
    "slots": ("model", "slots"),
    "tokens_per_second": ("model", "tokens_per_second"),
    "queue_size": ("model", "queue_size"),
}


def _settings(args: argparse.Namespace, flags: dict[str, tuple[str, str]]) -> Settings:
    settings = load(args.config, _overrides(args, flags))
    logs.setup(settings.log.level, settings.log.format, settings.log.audit_file)
    return settings


def cmd_serve(args: argparse.Namespace) -> int:
    from floodwall.policy import PolicyFile

    settings = _settings(args, SERVE_FLAGS)
    PolicyFile.load(settings.edge.policy or None)  # a bad policy stops start-up here, with its message
    _check_port(settings.server.host, settings.server.port)
    _upgrade(settings.database.url)
    logs.event(log, "database_ready", url=_redact(settings.database.url))
    if settings.upstream.url:
        logs.event(log, "upstream", url=settings.upstream.url)
        _serve(settings)
        return 0
    with server.simulated_model(settings) as url:
        settings.upstream.url = url
        log.warning(
            "NO UPSTREAM MODEL CONFIGURED: serving floodwall's SIMULATED model (filler text, not a language model) "
            "at %s. Point floodwall at a real server with --upstream http://HOST:PORT/v1.", url,
        )
        _serve(settings)
    return 0


def _check_port(host: str, port: int) -> None:
    try:
        server.check_port_free(host, port)
    except OSError as exc:
        raise CommandError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (is another server running "
                           "there? choose another port with --port)") from None


def _upgrade(url: str) -> None:
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    from floodwall.db.engine import upgrade

    try:
        upgrade(url)
    except (SQLAlchemyError, OSError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        raise CommandError(f"cannot open the database {_redact(url)}: {reason}".splitlines()[0]) from None


def _serve(settings: Settings) -> None:
    s = settings.server
    logs.event(log, "serving", url=f"http://{s.host}:{s.port}/", workers=s.workers)
    server.run(server.APP_FACTORY, settings, s.host, s.port, s.workers)


def cmd_model(args: argparse.Namespace) -> int:
    settings = _settings(args, MODEL_FLAGS)
    m = settings.model
    _check_port(m.host, m.port)
    log.warning("SIMULATED MODEL SERVER (not a language model): %d slots at %g tokens/s each, queue of %d, on "
                "http://%s:%d/v1", m.slots, m.tokens_per_second, m.queue_size, m.host, m.port)
    server.run(server.MODEL_FACTORY, settings, m.host, m.port, 1)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    settings = _settings(args, {"database": ("database", "url")})
    _upgrade(settings.database.url)
    print(f"database at {_redact(settings.database.url)} is up to date")
    return 0


def _admin(action: str) -> Any:
    def run(args: argparse.Namespace) -> int:
        from floodwall.console import client

        settings = load(args.config)
        try:
            result: int = getattr(client, action)(settings, args)
            return result
        except client.AdminError as exc:
            print(f"floodwall: {exc}", file=sys.stderr)
            return 1

    return run


def _admin_flags(command: argparse.ArgumentParser) -> None:
    command.add_argument("--config")
    command.add_argument("--url", help="floodwall's address (default: from server.host and server.port)")
    command.add_argument("--token", help="admin token (default: FLOODWALL_ADMIN_TOKEN)")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="floodwall", description="The front door of an AI model service.")
    root.add_argument("--version", action="version", version=f"floodwall {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the service")
    serve.add_argument("--config", help="TOML configuration file")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--upstream", help="the model server's OpenAI base URL, e.g. http://127.0.0.1:8000/v1")
    serve.add_argument("--database", help="sqlite:///path or postgresql://user@host/db")
    serve.add_argument("--state", help="memory:// or redis://host:port/db")
    serve.add_argument("--workers", type=int)
    serve.set_defaults(func=cmd_serve)

    model = commands.add_parser("model", help="run the simulated OpenAI-compatible model server")
    model.add_argument("--config")
    model.add_argument("--host")
    model.add_argument("--port", type=int)
    model.add_argument("--slots", type=int, help="concurrent generations")
    model.add_argument("--tokens-per-second", type=float, help="generation speed of each slot")
    model.add_argument("--queue-size", type=int, help="requests that may wait for a slot before 503")
    model.set_defaults(func=cmd_model)

    level = commands.add_parser("level", help="show the defense level, or set it")
    level.add_argument("level", nargs="?", choices=[*LEVELS, "auto"])
    level.add_argument("--reason", default="set from the command line")
    _admin_flags(level)
    level.set_defaults(func=_admin("level"))

    detector = commands.add_parser("detector", help="what the detector reads now, against its baselines, and "
                                   "this process's heaviest talkers")
    _admin_flags(detector)
    detector.set_defaults(func=_admin("detector"))

    registration = commands.add_parser("registration", help="show the sign-up mode, or pin it")
    registration.add_argument("mode", nargs="?", choices=[*REGISTRATION_MODES, "auto"])
    registration.add_argument("--reason", default="set from the command line")
    _admin_flags(registration)
    registration.set_defaults(func=_admin("registration"))

    ban = commands.add_parser("ban", help="list, add or remove bans")
    ban_commands = ban.add_subparsers(dest="ban_command", metavar="ACTION")
    ban_add = ban_commands.add_parser("add", help="ban an address or CIDR")
    ban_add.add_argument("target")
    ban_add.add_argument("--duration", default="1h")
    ban_add.add_argument("--reason", default="operator")
    ban_remove = ban_commands.add_parser("remove", help="lift a ban")
    ban_remove.add_argument("target")
    ban_list = ban_commands.add_parser("list", help="the bans in force")
    for command in (ban, ban_add, ban_remove, ban_list):
        _admin_flags(command)
    ban.set_defaults(func=_admin("ban"), ban_command="list")

    lists = commands.add_parser("lists", help="list, add or remove allow and deny entries")
    lists_commands = lists.add_subparsers(dest="lists_command", metavar="ACTION")
    for action in ("add", "remove"):
        entry = lists_commands.add_parser(action, help=f"{action} an address or CIDR")
        entry.add_argument("list", choices=["allow", "deny"])
        entry.add_argument("cidr")
        entry.add_argument("--reason", default="")
        _admin_flags(entry)
    _admin_flags(lists_commands.add_parser("list", help="every entry"))
    _admin_flags(lists)
    lists.set_defaults(func=_admin("lists"), lists_command="list")

    _operations(commands)

    from floodwall.sim.attack import command as attack

    attack.add_parser(commands)

    db = commands.add_parser("db", help="database tasks")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="TASK")
    db_upgrade = db_commands.add_parser("upgrade", help="apply the migrations")
    db_upgrade.add_argument("--config")
    db_upgrade.add_argument("--database")
    db_upgrade.set_defaults(func=cmd_db_upgrade)
    return root


def _operations(commands: Any) -> None:
    from floodwall.status.incidents import COMPONENTS, IMPACTS, STATUSES

    incident = commands.add_parser("incident", help="list, open, update or resolve status-page incidents")
    actions = incident.add_subparsers(dest="incident_command", metavar="ACTION")
    opened = actions.add_parser("open", help="open an incident")
    opened.add_argument("name")
    opened.add_argument("--body", required=True, help="the first update's text")
    opened.add_argument("--status", choices=STATUSES, default="investigating")
    opened.add_argument("--impact", choices=IMPACTS, default="minor")
    opened.add_argument("--component", action="append", default=[], metavar="KEY=STATUS",
                        help=f"an affected component ({', '.join(COMPONENTS)}) and its status; repeatable")
    updated = actions.add_parser("update", help="post an update")
    updated.add_argument("id")
    updated.add_argument("--status", choices=STATUSES, required=True)
    updated.add_argument("--body", required=True)
    resolved = actions.add_parser("resolve", help="resolve an incident")
    resolved.add_argument("id")
    resolved.add_argument("--body", default="This incident has been resolved.")
    listed = actions.add_parser("list", help="open incidents and those of the last 90 days")
    for command in (incident, opened, updated, resolved, listed):
        _admin_flags(command)
    incident.set_defaults(func=_admin("incident"), incident_command="list")

    users = commands.add_parser("users", help="find accounts; disable, enable or sign one out everywhere")
    actions = users.add_subparsers(dest="users_command", metavar="ACTION")
    found = actions.add_parser("list", help="accounts, newest first")
    found.add_argument("query", nargs="?", help="part of the e-mail address")
    found.add_argument("--limit", type=int, default=50)
    commands_with_id = [actions.add_parser(name, help=text) for name, text in (
        ("disable", "disable an account and end its sessions"), ("enable", "enable an account again"),
        ("sign-out", "end every session of an account"))]
    for command in commands_with_id:
        command.add_argument("id")
    for command in (users, found, *commands_with_id):
        _admin_flags(command)
    users.set_defaults(func=_admin("users"), users_command="list", query=None, limit=50)

    audit = commands.add_parser("audit", help="the audit log: level changes, bans, incidents, operator actions")
    audit.add_argument("--action", help='only actions starting with this, like "ban." or "level."')
    audit.add_argument("--limit", type=int, default=50)
    _admin_flags(audit)
    audit.set_defaults(func=_admin("audit"))


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"floodwall: configuration error: {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"floodwall {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader went away (`floodwall audit | head`): stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
