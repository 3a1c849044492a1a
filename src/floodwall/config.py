"""One Settings object: defaults, then a TOML file, then FLOODWALL_<SECTION>_<KEY> variables, then flags.

Every key docs/configuration.md documents lives here, with its type; nothing else in floodwall reads the
environment or a config file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import msgspec

from floodwall.levels import LEVELS, MODES
from floodwall.text import folded

T = TypeVar("T")

ENV_PREFIX = "FLOODWALL_"
# serve hands the resolved settings to its worker processes through this variable
SETTINGS_ENV = "FLOODWALL_SETTINGS_JSON"


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


class Duration(float):
    """Seconds; configured as a number or as `500ms`, `30s`, `5m`, `24h`, `7d`."""


class Seconds(Duration):
    """A duration above zero (a policy's periods: a leak, a ban, a hold)."""


class Size(int):
    """Bytes; configured as a number or as `64KiB`, `4MiB`, `1MB`."""


def typed(kind: type[T], data: object, where: str) -> T:
    """A policy table read into `kind` (a msgspec Struct): unknown fields, wrong types, values out of range
    and bad durations are refused with the path of the field, as `[scoring] paranoia: Expected int <= 4`,
    and a value not among a field's choices with the choices."""
    try:
        return msgspec.convert(data, kind, strict=True, dec_hook=_decoded)
    except msgspec.ValidationError as exc:
        message, _, path = str(exc).partition(" - at `")
        key, _, path = path.rstrip("`").rpartition("` in `") if "` in `" in path else ("", "", path.rstrip("`"))
        steps = path.removeprefix("$").replace("[...]", "[*]").replace("[", ".[").strip(".").split(".") if path else []
        message = message.replace("`", "") + (" (a key)" if key else "")
        choices = _choices(msgspec.inspect.type_info(kind), [s for s in steps if s], bool(key))
        if choices:  # a choice's choices, whatever was wrong with the value sent
            message += f": one of {', '.join(map(str, choices))}"
        # "rule[0].when" is named "rule 1 when", as the policy's other messages count tables
        named = " ".join(str(int(s[1:-1]) + 1) if s[1:-1].isdigit() else s for s in steps if s and s != "[*]")
        raise ConfigError(f"{where} {named}: {message}" if named else f"{where}: {message}") from None


def _choices(info: Any, steps: list[str], key: bool) -> tuple[Any, ...]:
    """The literal values allowed where a path leads (a dict's keys when `key`)."""
    for step in [*steps, ""]:
        while isinstance(info, msgspec.inspect.UnionType):
            info = next((t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)), info.types[0])
        if isinstance(info, msgspec.inspect.StructType) and step and not step.startswith("["):
            info = next((f.type for f in info.fields if f.name == step), None)
        elif isinstance(info, msgspec.inspect.ListType) and step.startswith("["):
            info = info.item_type
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.key_type if key and not step else info.value_type if step else info.key_type
        if info is None:
            return ()
    return tuple(info.values) if isinstance(info, msgspec.inspect.LiteralType) else ()


def per_level(name: str, kind: Any, default: Any, *fields: tuple[Any, ...]) -> type[msgspec.Struct]:
    """A table with one field per defense level (each `kind`, `default` when left out) beside `fields`."""
    columns = [(level, kind, default) for level in LEVELS]
    return msgspec.defstruct(name, [*fields, *columns], forbid_unknown_fields=True, kw_only=True)


def _decoded(kind: type, value: Any) -> Any:
    if kind in (Duration, Seconds):
        seconds = parse_duration(value)  # its ConfigError is a ValueError: msgspec names the field
        if kind is Seconds and not 0 < seconds < float("inf"):
            raise ValueError(f"must be above zero, not {value!r}")
        return kind(seconds)
    raise NotImplementedError(kind)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file of rules or policy, or a ConfigError that names it."""
    try:
        return tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the {what} {path}: {exc}") from None


def parse_duration(value: object) -> Duration:
    if isinstance(value, bool):
        raise ConfigError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(f"not a duration: {value!r} (use seconds or 30s, 5m, 24h)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 0:
        raise ConfigError(f"a duration cannot be negative: {value!r}")
    return Duration(seconds)


def parse_size(value: object) -> Size:
    if isinstance(value, bool):
        raise ConfigError(f"not a size: {value!r}")
    if isinstance(value, int):
        return Size(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ConfigError(f"not a size: {value!r} (use bytes or 64KiB, 4MiB)")
    unit = (match.group(2) or "b").lower()
    return Size(int(match.group(1)) * _SIZE_UNITS[unit])


@dataclasses.dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # CIDRs whose X-Forwarded-For / Forwarded headers are believed (a TLS terminator, a load balancer)
    trusted_proxies: list[str] = dataclasses.field(default_factory=list)
    # the one header those proxies write the client's address in: x-forwarded-for (nginx, HAProxy, most load
    # balancers) or forwarded (RFC 7239); the other is a client's own claim and is never read
    forwarded_header: str = "x-forwarded-for"
    max_body_size: Size = Size(4 * 2**20)
    # a client has this long to send its request's headers (slowloris), and then its body: cut off, 408
    header_timeout: Duration = Duration(10.0)
    body_timeout: Duration = Duration(30.0)
    # headers larger than this are refused with 431 before they are parsed
    max_header_size: Size = Size(64 * 2**10)
    # open connections a worker serves at once (granian's backpressure: a connection holds its place from
    # accept to close, and one that never sends a byte is never timed out), and the file limit raised to fit
    max_connections: int = 16384
    access_log: bool = False
    # signs device cookies and waiting-room tickets; empty = one made at first start and kept in the
    # database, which every worker and replica sharing it then uses
    secret_key: str = ""
    # the address people reach the service at, for links in e-mails (https://chat.example.org); empty =
    # the address each request came in on, which a client can forge: set it in production
    public_url: str = ""


# what becomes of a /v1 request field that is neither OpenAI's nor an enabled extension
UnknownFields = typing.Literal["refuse", "drop"]
# the model servers whose own figures (requests running and waiting) admission reads
ModelServerKind = typing.Literal["vllm", "llamacpp", "tgi", "sglang"]


@dataclasses.dataclass
class UpstreamSettings:
    # the model server's OpenAI base URL, ending in /v1; empty = start the simulated model
    url: str = ""
    api_key: str = ""
    connect_timeout: Duration = Duration(5.0)
    # no byte from the model server for this long ends the request with 504
    read_timeout: Duration = Duration(600.0)
    # how long to ask clients to wait when the model server is overloaded and gives no Retry-After
    retry_after: Duration = Duration(5.0)
    max_connections: int = 1024
    # request fields forwarded beyond OpenAI's own (the model server's extensions: vLLM's min_tokens, ...)
    extra_fields: list[str] = dataclasses.field(default_factory=list)
    # what becomes of any other field: refuse (400 naming it, as OpenAI does) or drop
    unknown_fields: UnknownFields = "refuse"
    # media parts that name a URL for the model server to fetch (not data: URLs): off, they are refused
    remote_media: bool = False
    # the model server's own figures, read a few times a second for admission: auto (detect), a kind (vllm,
    # llamacpp, tgi, sglang) or none; and where they are, when not at /metrics beside the API
    metrics: str = "auto"
    metrics_url: str = ""
    # replicas (and workers) on one state store before this same model server share its concurrency limit
    # (admission's board); false where each replica has a model server of its own at the same URL (a
    # floodwall beside each vLLM, both on 127.0.0.1)
    shared: bool = True


@dataclasses.dataclass
class DatabaseSettings:
    url: str = "sqlite:///./floodwall.db"
    pool_size: int = 10


@dataclasses.dataclass
class StateSettings:
    url: str = "memory://"


@dataclasses.dataclass
class DefenseSettings:
    level: str = "auto"
    new_account_age: Duration = Duration(24 * 3600.0)


@dataclasses.dataclass
class EdgeSettings:
    # a TOML file of [[rule]] tables; empty = the built-in default_policy.toml (docs/edge.md shows it)
    policy: str = ""
    ipv4_prefix: int = 24
    ipv6_prefix: int = 48  # a site: some 256 customers of a provider that hands out /56s, as an IPv4 /24
    # an IPv6 client is its /64 (one subscriber's): per-address limits, probe counts and bans key on it
    ipv6_subscriber_prefix: int = 64
    # how often each process re-reads the level, bans and lists from the state store
    refresh_interval: Duration = Duration(1.0)


@dataclasses.dataclass
class AccountSettings:
    session_lifetime: Duration = Duration(30 * 86400.0)
    # a session not used for this long has ended too (a forgotten browser on a shared computer)
    session_idle_timeout: Duration = Duration(7 * 86400.0)
    min_password_length: int = 8
    # how long a worker trusts its memory of an API key; a key revoked on another worker (or replica)
    # stops working within this time, on the worker that revoked it at once
    key_cache_ttl: Duration = Duration(5.0)
    # "" or "owasp" = argon2id at OWASP's minimum (19 MiB, t=2, p=1); "rfc9106-low-memory" = 64 MiB, t=3,
    # p=4 (several times the CPU a sign-in); tests may set "fast" to save CPU. Old hashes are upgraded at login.
    password_hash_profile: str = ""
    # sign-ups from disposable e-mail domains, and passwords among the 10,000 most common, are refused
    # (the shipped lists are in accounts/data/; a file of your own, one entry a line, replaces one)
    refuse_disposable_emails: bool = True
    refuse_common_passwords: bool = True
    disposable_domains_file: str = ""
    common_passwords_file: str = ""
    # a new account confirms its e-mail address (a link sent to it) before it may chat or make API keys
    verify_email: bool = False
    # password-reset messages one address may receive a day (and one a minute): a script cannot fill an inbox
    reset_mails_per_day: int = 5


@dataclasses.dataclass
class MailSettings:
    # smtp://[user:password@]host[:port] (STARTTLS when the server offers it) or smtps://... (TLS from the
    # first byte); empty = development mode: each message is written to the log instead, links and all
    url: str = ""
    from_address: str = "floodwall <noreply@localhost>"
    timeout: Duration = Duration(10.0)


@dataclasses.dataclass
class ModelSettings:
    """The simulated model server (floodwall model, and serve without an upstream)."""

    host: str = "127.0.0.1"
    port: int = 8000
    slots: int = 8
    tokens_per_second: float = 50.0
    queue_size: int = 64
    # the longest answer it writes; a request's max_tokens can make it shorter
    max_tokens: int = 256
    # how many tokens an answer has when max_tokens does not cut it short
    reply_tokens: int = 64
    first_token_delay: Duration = Duration(0.05)
    # publish vLLM's scheduler gauges at /metrics (requests running and waiting), as vLLM does
    metrics: bool = False
    # headers added to every answer ("Name: value", comma-separated in the environment), as a model server
    # behind a proxy of its own may send: floodwall relays none but the ones that describe the answer
    response_headers: list[str] = dataclasses.field(default_factory=list)


# canaries: enough to mark each system prompt, short enough that watching answers for them stays cheap
MAX_CANARIES = 64
CANARY_LENGTHS = (8, 256)


@dataclasses.dataclass
class ScreeningSettings:
    # strings no answer may carry (a marker in your system prompt, a secret it holds): an answer that does is
    # withheld, or its stream ended, and the account spends a prompt strike (inference/canaries.py)
    canaries: list[str] = dataclasses.field(default_factory=list)
    # score the prompts left aside (where the level logs or flags) in a process of their own, beside each
    # worker: their CPU (0.1-1 ms a prompt) is then not the event loop's. Off: in the worker, as before
    process: bool = True


@dataclasses.dataclass
class AdminSettings:
    token: str = ""


@dataclasses.dataclass
class StatusSettings:
    # the status page's title
    name: str = "Service status"
    # how often each process re-reads incidents from the database (views are served from memory)
    refresh_interval: Duration = Duration(5.0)
    # the incident floodwall opens by itself when the defense level reaches under_attack, and its wording
    automatic_incidents: bool = True
    attack_title: str = "Large-scale malicious attacks"
    attack_message: str = ("Due to large-scale malicious attacks on our services, registration may be busy. "
                           "Please wait and try again. Registered users can log in normally.")
    monitoring_message: str = ("The attack is subsiding and registration is reopening gradually. Registered users "
                               "can log in and use the service normally. We are monitoring.")
    resolved_message: str = "The attack is over and every service is back to normal."
    # how long the level must stay normal before the automatic incident is resolved
    resolve_after: Duration = Duration(600.0)


@dataclasses.dataclass
class LogSettings:
    level: str = "info"
    # "auto": JSON lines when stderr is not a terminal, readable text when it is
    format: str = "auto"
    # a file that also gets the audit log (level changes, bans, incidents, operator actions), JSON lines
    audit_file: str = ""


@dataclasses.dataclass
class Settings:
    server: ServerSettings = dataclasses.field(default_factory=ServerSettings)
    upstream: UpstreamSettings = dataclasses.field(default_factory=UpstreamSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    state: StateSettings = dataclasses.field(default_factory=StateSettings)
    defense: DefenseSettings = dataclasses.field(default_factory=DefenseSettings)
    edge: EdgeSettings = dataclasses.field(default_factory=EdgeSettings)
    accounts: AccountSettings = dataclasses.field(default_factory=AccountSettings)
    mail: MailSettings = dataclasses.field(default_factory=MailSettings)
    model: ModelSettings = dataclasses.field(default_factory=ModelSettings)
    screening: ScreeningSettings = dataclasses.field(default_factory=ScreeningSettings)
    admin: AdminSettings = dataclasses.field(default_factory=AdminSettings)
    status: StatusSettings = dataclasses.field(default_factory=StatusSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Settings:
        return load(overrides=json.loads(text), environ={})


_CHOICES = {
    ("defense", "level"): set(MODES),
    ("log", "format"): {"auto", "json", "text"},
    ("log", "level"): {"debug", "info", "warning", "error"},
    ("accounts", "password_hash_profile"): {"", "owasp", "rfc9106-low-memory", "fast"},
    ("upstream", "unknown_fields"): set(typing.get_args(UnknownFields)),
    ("upstream", "metrics"): {"auto", "none", *typing.get_args(ModelServerKind)},
}


def _coerce(section: str, key: str, kind: Any, value: object) -> object:
    name = f"{section}.{key}"
    try:
        if kind is Duration:
            return parse_duration(value)
        if kind is Size:
            return parse_size(value)
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in {"1", "true", "yes", "on"}:
                return True
            if text in {"0", "false", "no", "off", ""}:
                return False
            raise ConfigError(f"not a boolean: {value!r}")
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ConfigError(f"not an integer: {value!r}")
            return int(str(value).strip()) if isinstance(value, str) else int(value)  # type: ignore[call-overload]
        if kind is float:
            if isinstance(value, bool):
                raise ConfigError(f"not a number: {value!r}")
            return float(value)  # type: ignore[arg-type]
        if typing.get_origin(kind) is list:
            if isinstance(value, str):
                return [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list):
                return [str(part) for part in value]
            raise ConfigError(f"not a list: {value!r}")
        text = str(value)
        allowed = _CHOICES.get((section, key))
        if allowed is not None and text not in allowed:
            raise ConfigError(f"must be one of {', '.join(sorted(allowed))}, not {text!r}")
        return text
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}") from None


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Settings)
    return {field.name: hints[field.name] for field in dataclasses.fields(Settings)}


def _apply(settings: Settings, values: Mapping[str, Any], origin: str) -> None:
    sections = _sections()
    for section, body in values.items():
        if section not in sections:
            raise ConfigError(f"{origin}: unknown section [{section}]")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        target = getattr(settings, section)
        hints = typing.get_type_hints(type(target))
        for key, value in body.items():
            if key not in hints:
                raise ConfigError(f"{origin}: unknown key {section}.{key}")
            setattr(target, key, _coerce(section, key, hints[key], value))


def _from_environ(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for section, kind in _sections().items():
        for key in typing.get_type_hints(kind):
            name = f"{ENV_PREFIX}{section.upper()}_{key.upper()}"
            if name in environ:
                found.setdefault(section, {})[key] = environ[name]
    return found


def load(
    path: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build the Settings: defaults < TOML file < environment < overrides (command-line flags)."""
    environ = os.environ if environ is None else environ
    settings = Settings()
    path = path or environ.get(f"{ENV_PREFIX}CONFIG") or None
    if path:
        try:
            with Path(path).open("rb") as handle:
                _apply(settings, tomllib.load(handle), str(path))
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    _apply(settings, _from_environ(environ), "environment")
    if overrides:
        _apply(settings, overrides, "command line")
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if settings.server.workers < 1:
        raise ConfigError("server.workers must be at least 1")
    if not 0.001 <= settings.server.header_timeout <= 60 or settings.server.body_timeout <= 0:
        raise ConfigError("server.header_timeout must be 1ms-60s (granian's bounds) and server.body_timeout above 0")
    if settings.server.max_header_size < 8192:
        raise ConfigError("server.max_header_size must be at least 8KiB")
    if settings.server.max_connections < 16:
        raise ConfigError("server.max_connections must be at least 16")
    if settings.admin.token and len(settings.admin.token) < 32:
        raise ConfigError("admin.token must be at least 32 characters (it opens every operator action): make one "
                          "with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    if settings.accounts.reset_mails_per_day < 1:
        raise ConfigError("accounts.reset_mails_per_day must be at least 1")
    if settings.model.slots < 1 or settings.model.tokens_per_second <= 0:
        raise ConfigError("model.slots must be >= 1 and model.tokens_per_second > 0")
    if not 8 <= settings.edge.ipv4_prefix <= 32 or not 16 <= settings.edge.ipv6_prefix <= 128:
        raise ConfigError("edge.ipv4_prefix must be 8-32 and edge.ipv6_prefix 16-128")
    if not settings.edge.ipv6_prefix <= settings.edge.ipv6_subscriber_prefix <= 128:
        raise ConfigError("edge.ipv6_subscriber_prefix must be between edge.ipv6_prefix and 128")
    if settings.server.forwarded_header not in ("x-forwarded-for", "forwarded"):
        raise ConfigError("server.forwarded_header must be x-forwarded-for or forwarded, not "
                          f"{settings.server.forwarded_header!r}")
    url = settings.upstream.url
    if url and not url.startswith(("http://", "https://")):
        raise ConfigError(f"upstream.url must be an http(s) URL ending in /v1, not {url!r}")
    if url and not _host_name(url):
        raise ConfigError(f"upstream.url: {url!r} does not name a valid host and port")
    if not settings.state.url.startswith(("memory://", "redis://", "rediss://", "valkey://")):
        raise ConfigError(f"state.url must be memory:// or redis://host:port/db, not {settings.state.url!r}")
    if settings.mail.url and not settings.mail.url.startswith(("smtp://", "smtps://")):
        raise ConfigError(f"mail.url must be smtp://host:port or smtps://host:port, not {settings.mail.url!r}")
    if settings.server.public_url and not settings.server.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"server.public_url must be an http(s) URL, not {settings.server.public_url!r}")
    if settings.mail.url and not settings.server.public_url:
        raise ConfigError("server.public_url must be set when mail.url is: the links in e-mails (password resets, "
                          "confirmations) are built from it, never from the Host header a client sends")
    if not settings.database.url.startswith(("sqlite:", "postgresql:", "postgresql+", "postgres:")):
        raise ConfigError("database.url must be sqlite:///path or postgresql://...")
    _check_canaries(settings.screening.canaries)


def _host_name(url: str) -> bool:
    """Whether an http(s) URL names a host (and port) a request can be sent to: the Host header is encoded by
    the idna codec, which refuses an empty label or one over 63 characters."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (out of range: ValueError)
        return bool(parts.hostname and parts.hostname.encode("idna"))
    except (ValueError, UnicodeError):
        return False


def _check_canaries(canaries: list[str]) -> None:
    shortest, longest = CANARY_LENGTHS
    if len(canaries) > MAX_CANARIES:
        raise ConfigError(f"screening.canaries: at most {MAX_CANARIES} canaries, not {len(canaries)}")
    for number, canary in enumerate(canaries, 1):
        # a short canary would end honest answers that happen to contain it; it is looked for as read
        # (text.folded: case, spaces and punctuation aside), so it must be long enough so read
        if not shortest <= len(folded(canary)) <= len(canary) <= longest:
            raise ConfigError(f"screening.canaries: canary {number} must be {shortest} to {longest} characters "
                              f"long, letters and digits at least {shortest} of them, not {len(canary)}")
