"""The policy file: limits parsed exactly, bad rules named, requests classified before routing."""

from __future__ import annotations

from pathlib import Path

import pytest

from floodwall.config import ConfigError
from floodwall.edge.policy import classify
from floodwall.limits import Caller, parse_limit
from floodwall.policy import PolicyFile


@pytest.mark.parametrize(
    ("method", "path", "klass"),
    [
        ("POST", "/v1/chat/completions", "api-inference"),
        ("POST", "/app/chat", "api-inference"),
        ("GET", "/v1/models", "api-other"),
        ("POST", "/auth/register", "auth-register"),
        ("POST", "/auth/login", "auth-login"),
        ("POST", "/auth/logout", "api-other"),
        ("GET", "/static/app.css", "static"),
        ("GET", "/chat", "page"),
        ("GET", "/wp-login.php", "page"),
        ("GET", "/healthz", "status"),
        ("GET", "/api/v2/summary.json", "status"),
        ("PUT", "/admin/api/level", "admin"),
        ("DELETE", "/account/keys/3", "api-other"),
    ],
)
def test_classify(method: str, path: str, klass: str) -> None:
    assert classify(method, path) == klass


def test_limits() -> None:
    limit = parse_limit("5/30m", "t")
    assert limit is not None and (limit.count, limit.period, limit.burst) == (5, 1800, 5)
    assert limit.interval == 360 and limit.tolerance == 1800
    burst = parse_limit("120/m burst 10", "t")
    assert burst is not None and (burst.count, burst.period, burst.burst) == (120, 60, 10)
    assert parse_limit("off", "t") is None
    for bad in ("fast", "0/1m", "5/never", "5/1m burst 0"):
        with pytest.raises(ConfigError):
            parse_limit(bad, "t")


def test_default_policy_loads_and_keeps_established_users_whole() -> None:
    policy = PolicyFile.load().edge
    established = Caller(ip=1, network=1, tier="established", account=7, key=3)
    for level in ("normal", "elevated", "under_attack"):
        names = {b.rule for b in policy.buckets("api-inference", level, established)}
        assert names == {"inference/account"}
    normal, attack = (policy.buckets("api-inference", lvl, established)[0] for lvl in ("normal", "under_attack"))
    assert normal.interval == attack.interval and normal.tolerance == attack.tolerance


def test_rules_apply_to_their_tiers_only() -> None:
    policy = PolicyFile.load().edge
    anonymous = Caller(ip=5, network=4, tier="anonymous", account=None, key=None)
    assert {b.rule for b in policy.buckets("page", "normal", anonymous)} == {"anonymous/ip", "anonymous/network"}
    assert {b.ident for b in policy.buckets("page", "normal", anonymous)} == {5, 4}
    assert {b.rule for b in policy.buckets("auth-register", "normal", anonymous)} == {"register/ip",
                                                                                     "register/network"}
    assert "register/global" in {b.rule for b in policy.buckets("auth-register", "under_attack", anonymous)}


def test_an_accounts_buckets_are_kept_and_a_floods_are_not() -> None:
    """An account's calls come again and again from one address: its bucket list is worked out once (the gate's
    decision, 85-117 µs, spent about 20 of them there) and kept, within a bound; anonymous callers' are not."""
    from floodwall.edge import policy as module

    policy = PolicyFile.load().edge
    established = Caller(ip=1, network=1, tier="established", account=7, key=3)
    first = policy.buckets("api-inference", "normal", established)
    assert policy.buckets("api-inference", "normal", established) is first
    assert policy.buckets("api-inference", "normal", established._replace(ip=2)) is not first  # its own key
    anonymous = Caller(ip=5, network=4, tier="anonymous", account=None, key=None)
    assert policy.buckets("page", "normal", anonymous) is not policy.buckets("page", "normal", anonymous)
    for account in range(module.KEPT_ACCOUNTS + 1):  # bounded: forgotten all at once, then kept again
        policy.buckets("api-inference", "normal", established._replace(account=account))
    assert len(policy._accounts) <= module.KEPT_ACCOUNTS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[rule]]\nname = "x"\nclasses = ["page"]\nkey = "ip"\nnormal = "fast"\n', "not a limit"),
        ('[[rule]]\nname = "x"\nclasses = ["nope"]\nkey = "ip"\n', "classes 1: .*'nope': one of admin"),
        ('[[rule]]\nname = "x"\nclasses = ["page"]\nkey = "cookie"\n', "key must be"),
        ('[[rule]]\nclasses = ["page"]\nkey = "ip"\n', "missing required field name"),
        ('[[rule]]\nname = "x"\nclasses = ["page"]\nkey = "ip"\ntiers = ["vip"]\n', "tiers 1: .*'vip'"),
        ('[[rule]]\nname = "x"\nclasses = ["page"]\nkey = "ip"\nlimit = 3\n', "unknown field limit"),
        ('[sign_in]\nnew_device = { normal = "maybe" }\n', r"\[sign_in\] new_device: .* allow, confirm"),
        ('[sign_in]\nconfirm = true\n', r"\[sign_in\]: .*unknown field confirm"),
        ('[scoring]\nbudget = "soon"\n', "budget: not a duration"),
        # screening knows the account and its key: an address key would count every account's strikes as one
        ('[[rule]]\nname = "x"\nclasses = ["prompt-strike"]\nkey = "ip"\n', "prompt-strike rules are keyed by"),
        ('[[rule]]\nname = "x"\nclasses = ["prompt-strike"]\nkey = "account+network"\n', "keyed by account"),
    ],
)
def test_bad_rules_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        PolicyFile.load(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[registration]\nnormal = "shut"\n', r"\[registration\] normal: .*'shut': one of closed, limited"),
        ('[registration]\nchallenge = { normal = -1 }\n', r"\[registration\] challenge: Expected int >= 0"),
        ('[admission]\nnormal = { share = { new = 2 } }\n', r"\[admission\] normal share: Expected float <= 1"),
        ('[detector]\nrule = [{ name = "x", level = "elevated", when = ["requests > 1", 3] }]\n',
         r"\[detector\] rule 1 when 2: Expected str, got int"),
        ('[probing]\nleak = "0s"\n', r"\[probing\] leak: must be above zero"),
        ('[prompts]\nunder_attack = "ban"\n', r"\[prompts\] under_attack: .*one of flag, log, off, refuse"),
        ('[scoring]\nparanoia = 5\n', r"\[scoring\] paranoia: Expected int <= 4"),
        ('[sign_in]\nnew_device = { weekend = "allow" }\n', r"new_device: .*'weekend' \(a key\): one of elevated"),
        ('[[rule]]\nname = ""\nclasses = ["page"]\nkey = "ip"\n', r"rule 1 name: Expected str of length >= 1"),
        ('[[rule]]\nname = "a"\nclasses = ["page"]\nkey = "ip"\n' * 2, r"rule: each rule needs its own name; twice: a"),
        ('[[rule]]\nname = "a"\nclasses = ["page"]\nkey = "ip"\nnormal = "99999999999999999999/1s"\n',
         r"rule 1 \(a\) normal: .* needs a count and a burst from 1 to 1,000,000,000"),
        ('[registration]\nnormal = 3\n', r"\[registration\] normal: Expected str \| null, got int: one of closed"),
        ('[scoring]\nrules = "/nonexistent/rules.toml"\n', r"\[scoring\] rules: cannot read the request rules"),
    ],
)
def test_every_table_names_the_path_of_a_bad_field(tmp_path: Path, text: str, message: str) -> None:
    """Each area's table is read by msgspec into a typed struct: the error names the table, the field's path
    and, for a choice, the choices."""
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        PolicyFile.load(path)


def test_a_policy_that_is_not_text_is_named(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_bytes(b"\xff\xfe[rule]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        PolicyFile.load(path)
