"""The status page, the operator console and the chat app in a real browser: Playwright driving Debian's
Chromium (.ci/run installs it; nothing is downloaded). Screenshots go to $FLOODWALL_SCREENSHOTS if set
(the README's come from `FLOODWALL_SCREENSHOTS=docs/screenshots pytest tests/web/test_browser.py`)."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import PASSWORD, default_policy_process

TOKEN = "admin-" + secrets.token_hex(16)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if CHROMIUM is None:
    if os.environ.get("CI"):
        pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package", pytrace=False)
    pytest.skip("no Chromium here (apt-get install chromium; .ci/run does)", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def served(model_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {"FLOODWALL_ADMIN_TOKEN": TOKEN, "FLOODWALL_STATUS_REFRESH_INTERVAL": "0.3s",
           "FLOODWALL_STATUS_NAME": "Example AI status"}
    with default_policy_process(tmp_path_factory.mktemp("browser"), model_url, "memory", env) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture()
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    yield opened
    context.close()


def shot(page: Page, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("FLOODWALL_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def admin_put(base: str, path: str, body: dict[str, str]) -> None:
    answer = httpx.put(f"{base}{path}", json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 200, answer.text


def test_the_status_page_tells_the_truth_during_an_attack(served: str, page: Page, tmp_path: Path) -> None:
    page.goto(f"{served}/status")
    expect(page.locator("#banner")).to_contain_text("All Systems Operational")
    expect(page.locator(".component")).to_have_count(5)
    admin_put(served, "/admin/api/level", {"level": "under_attack", "reason": "browser test"})
    try:
        page.wait_for_timeout(1500)  # the board re-reads incidents every 0.3 s here
        page.goto(f"{served}/status?fresh=1")  # a browser may keep the page 5 s (max-age): another address
        banner = page.locator("#banner")
        expect(banner).to_contain_text("Large-scale malicious attacks")
        expect(banner).to_contain_text("Registered users can log in normally.")
        expect(page.locator('[data-component="registration"]')).to_have_attribute("data-status", "partial_outage")
        expect(page.locator('[data-component="login"]')).to_have_attribute("data-status", "operational")
        expect(page.locator(".timeline li").first).to_contain_text("Identified")
        shot(page, "status", tmp_path)
    finally:
        admin_put(served, "/admin/api/level", {"level": "normal", "reason": "browser test over"})


def test_the_console_signs_in_and_drives_the_defense(served: str, page: Page, tmp_path: Path) -> None:
    page.goto(f"{served}/admin")
    page.fill("#token", "not the token")
    page.click("button[type=submit]")
    expect(page.locator(".error")).to_contain_text("not the admin token")
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    expect(page.locator("body[data-ready='1']")).to_have_count(1)
    expect(page.locator("#level")).to_have_text("normal")
    page.select_option("#level-choice", "elevated")
    page.fill("#level-reason", "console drill")
    page.click("#level-form button")
    expect(page.locator("#level")).to_have_text("elevated")
    expect(page.locator("#registration")).to_have_text("queued")
    page.fill("#ban-target", "203.0.113.9")
    page.click("#ban-form button")
    expect(page.locator("#bans")).to_contain_text("203.0.113.9")
    page.click("text=Open an incident")
    page.fill("#incident-name", "Slow answers from the model")
    page.fill("#incident-body", "We are looking into slow answers.")
    page.select_option("select[name=model]", "degraded_performance")
    page.click("#incident-form button")
    expect(page.locator("#incidents")).to_contain_text("Slow answers from the model")
    expect(page.locator("#audit")).to_contain_text("incident.open")
    page.fill("#users-query", "")
    page.click("#users-form button")
    shot(page, "console", tmp_path)
    incidents = httpx.get(f"{served}/api/v2/incidents/unresolved.json").json()["incidents"]
    assert any(i["name"] == "Slow answers from the model" for i in incidents)
    # the session cookie alone does not make changes: a cross-site form cannot send the console header
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.put(f"{served}/admin/api/level", json={"level": "normal", "reason": "csrf"}, cookies=cookies)
    assert forged.status_code == 401
    admin_put(served, "/admin/api/level", {"level": "normal", "reason": "browser test over"})


def test_a_new_user_signs_up_and_chats(served: str, page: Page, tmp_path: Path) -> None:
    page.goto(f"{served}/register")
    page.fill("#email", f"b-{secrets.token_hex(4)}@example.com")
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/chat")
    page.fill("#prompt", "Write a haiku about a lighthouse.")
    page.click("#send")
    reply = page.locator(".message.assistant").first
    expect(reply).not_to_be_empty(timeout=20_000)
    expect(page.locator("#send")).to_be_enabled(timeout=20_000)
    shot(page, "chat", tmp_path)


def test_another_sites_form_cannot_sign_a_visitor_in(served: str, page: Page) -> None:
    """Issue 21, finding 2, in Chromium: a page on another origin posts a sign-in form (to the attacker's own
    account) to floodwall as its visitor's browser; floodwall refuses it and sets no session."""
    import html
    import http.server
    import threading

    email = f"attacker-{secrets.token_hex(4)}@example.com"
    assert httpx.post(f"{served}/auth/register", json={"email": email, "password": PASSWORD}).status_code == 201
    # from a no-referrer page the browser sends Origin: null (finding 2's way past the Origin check)
    form = (f'<meta name="referrer" content="no-referrer"><form id="f" method="post" action="{served}/auth/login">'
            f'<input name="email" value="{html.escape(email)}"><input name="password" value="{PASSWORD}"></form>'
            '<script>document.getElementById("f").submit()</script>')


    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = form.encode()
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    hostile = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    try:
        # "localhost" and "127.0.0.1" are different sites to the browser: a truly cross-site post
        with page.expect_response(f"{served}/auth/login") as posted:
            page.goto(f"http://localhost:{hostile.server_address[1]}/")
        answer = posted.value
        assert answer.status == 403 and answer.request.headers.get("origin") == "null", answer.request.headers
        assert answer.headers["x-floodwall-reason"] in ("fetch-metadata/cross-site", "cross_site_request")
        assert not [c for c in page.context.cookies(served) if c["name"] == "fw_session"]
    finally:
        hostile.shutdown()
