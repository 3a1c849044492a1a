"""Settings: defaults < TOML < FLOODWALL_* environment < flags, with clear errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from floodwall.config import ConfigError, Settings, load, parse_duration, parse_size

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret"  # admin.token: 32 characters at least


def test_defaults_are_the_embedded_ones() -> None:
    settings = load(environ={})
    assert settings.database.url == "sqlite:///./floodwall.db"
    assert settings.state.url == "memory://"
    assert settings.upstream.url == ""
    assert settings.defense.level == "auto"
    assert settings.defense.new_account_age == 86400


@pytest.mark.parametrize(("text", "seconds"), [("30s", 30), ("5m", 300), ("24h", 86400), ("7d", 604800),
                                               ("500ms", 0.5), (12, 12), ("1.5", 1.5)])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["soon", "-1", "5 weeks", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(text)


def test_sizes() -> None:
    assert parse_size("4MiB") == 4 * 2**20 and parse_size("64kb") == 64000 and parse_size(10) == 10
    with pytest.raises(ConfigError):
        parse_size("lots")


def test_precedence(tmp_path: Path) -> None:
    path = tmp_path / "floodwall.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\ntrusted_proxies = ["10.0.0.0/8"]\n'
                    '[defense]\nnew_account_age = "48h"\n[upstream]\nurl = "http://a:1/v1"\n')
    environ = {"FLOODWALL_SERVER_PORT": "9100", "FLOODWALL_UPSTREAM_URL": "http://b:2/v1",
               "FLOODWALL_ADMIN_TOKEN": SECRET, "FLOODWALL_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.1/32"}
    settings = load(path, overrides={"upstream": {"url": "http://c:3/v1"}}, environ=environ)
    assert settings.server.host == "0.0.0.0"  # file
    assert settings.server.port == 9100  # environment beats file
    assert settings.upstream.url == "http://c:3/v1"  # flag beats environment
    assert settings.defense.new_account_age == 48 * 3600
    assert settings.admin.token == SECRET
    assert settings.server.trusted_proxies == ["10.0.0.0/8", "192.0.2.1/32"]


def test_config_path_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nworkers = 3\n")
    assert load(environ={"FLOODWALL_CONFIG": str(path)}).server.workers == 3


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[nope]\nx = 1\n", "unknown section [nope]"),
        ("[server]\nprot = 1\n", "unknown key server.prot"),
        ("[server]\nport = 'eighty'\n", "server.port"),
        ("[server]\nworkers = 0\n", "server.workers"),
        ("[defense]\nlevel = 'panic'\n", "defense.level"),
        ("[upstream]\nurl = 'localhost:8000'\n", "upstream.url"),
        ("[upstream]\nurl = 'http://a..b/v1'\n", "upstream.url"),  # an empty label: no Host header
        ("[upstream]\nurl = 'http://" + "x" * 64 + ".example/v1'\n", "upstream.url"),
        ("[upstream]\nurl = 'http://localhost:99999/v1'\n", "upstream.url"),
        ("[database]\nurl = 'mysql://x/y'\n", "database.url"),
        ("[state]\nurl = 'memcached://x'\n", "state.url"),
        ("server = 3\n", "must be a table"),
        ("[server\n", "c.toml"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(path, environ={})


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load("/nonexistent/floodwall.toml", environ={})


def test_round_trip_through_json_for_workers() -> None:
    settings = load(environ={"FLOODWALL_SERVER_PORT": "1234", "FLOODWALL_UPSTREAM_READ_TIMEOUT": "2m"})
    again = Settings.from_json(settings.to_json())
    assert again == settings and again.upstream.read_timeout == 120


def test_a_short_admin_token_stops_start_up() -> None:
    with pytest.raises(ConfigError, match=r"admin\.token must be at least 32 characters"):
        load(environ={"FLOODWALL_ADMIN_TOKEN": "short-but-not-empty"})
