"""Browser security headers and cookie flags (issue 21, finding 8), over real HTTP; the browser tests
(test_browser.py) show the pages still work under the CSP."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import PASSWORD, floodwall_process


def test_pages_carry_a_csp_and_every_answer_nosniff(base_url: str) -> None:
    page = httpx.get(f"{base_url}/login", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "object-src 'none'" in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "same-origin"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in page.headers  # plain HTTP here
    api = httpx.get(f"{base_url}/v1/models", timeout=30)
    assert api.headers["x-content-type-options"] == "nosniff" and "content-security-policy" not in api.headers


def test_an_https_public_url_makes_cookies_secure_and_asks_for_hsts(model_url: str, tmp_path: Path) -> None:
    env = {"FLOODWALL_SERVER_PUBLIC_URL": "https://chat.example.org"}
    with floodwall_process(tmp_path, f"sqlite:///{tmp_path / 'floodwall.db'}", model_url, env=env) as url, \
            httpx.Client(base_url=url, timeout=30) as web:
        assert web.post("/auth/register", json={"email": "s@example.org", "password": PASSWORD}).status_code == 201
        signed = web.post("/auth/login", json={"email": "s@example.org", "password": PASSWORD})
        assert signed.status_code == 200
        cookies = signed.headers.get_list("set-cookie")
        assert cookies and all("; Secure" in c or "; secure" in c for c in cookies), cookies
        assert web.get("/login").headers["strict-transport-security"].startswith("max-age=")
        # the session cookie is __Host- prefixed (Secure, path /, no Domain): a sibling subdomain cannot plant it
        [session] = [c for c in cookies if c.startswith("__Host-fw_session=")]
        parts = [part.strip().lower() for part in session.split(";")]
        assert "path=/" in parts and "secure" in parts and not [p for p in parts if p.startswith("domain=")], session
        secret = session.split(";", 1)[0].split("=", 1)[1]
        web.cookies.clear()  # (an HTTP test client keeps no Secure cookie: sent by hand)
        assert web.get("/account/keys", headers={"cookie": f"__Host-fw_session={secret}"}).status_code == 200
        assert web.get("/account/keys", headers={"cookie": f"fw_session={secret}"}).status_code == 401
