"""The web app over real HTTP: pages render, forms work, the chat streams with the session cookie."""

from __future__ import annotations

import secrets

import httpx

from tests.conftest import PASSWORD, Account


def test_public_pages_render(http: httpx.Client) -> None:
    for path, marker in (("/", "Sign up"), ("/register", "Create an account"), ("/login", "<h1>Log in</h1>")):
        response = http.get(path)
        assert response.status_code == 200 and marker in response.text
        assert "simulated model" in response.text
    assert http.get("/static/app.css").status_code == 200
    assert http.get("/static/chat.js").status_code == 200


def test_signed_out_pages_redirect_to_login(http: httpx.Client) -> None:
    for path in ("/chat", "/keys", "/activity", "/password"):
        response = http.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login"


def test_register_form_signs_in_and_shows_the_chat(http: httpx.Client) -> None:
    email = f"form-{secrets.token_hex(5)}@example.com"
    response = http.post("/auth/register", data={"email": email, "password": PASSWORD})
    assert response.status_code == 303 and response.headers["location"] == "/chat"
    chat = http.get("/chat")
    assert chat.status_code == 200
    assert email in chat.text and "floodwall-simulated-chat" in chat.text


def test_form_errors_come_back_on_the_page(http: httpx.Client, account: Account) -> None:
    response = http.post("/auth/login", data={"email": account.email, "password": "wrong"})
    assert response.status_code == 401
    assert response.headers["content-type"].startswith("text/html")
    assert "Wrong e-mail or password." in response.text
    assert f'value="{account.email}"' in response.text
    assert response.headers["x-floodwall-reason"] == "invalid_credentials"
    short = http.post("/auth/register", data={"email": "someone@example.com", "password": "x"})
    assert short.status_code == 400 and "at least 8 characters" in short.text


def test_escaping_of_user_input(http: httpx.Client) -> None:
    response = http.post("/auth/login", data={"email": "<script>alert(1)</script>", "password": "x"})
    assert "<script>alert(1)</script>" not in response.text
    assert "&lt;script&gt;" in response.text


def test_keys_page_shows_a_new_key_once(account: Account) -> None:
    created = account.web.post("/account/keys", data={"name": "browser key"})
    assert created.status_code == 201 and "Copy it now" in created.text
    key = created.text.split('<code id="new-key">')[1].split("</code>")[0]
    assert key.startswith("fw_")
    page = account.web.get("/keys")
    assert key not in page.text and key[:11] in page.text and "browser key" in page.text
    key_id = account.web.get("/account/keys").json()["data"][0]["id"]
    # what a browser sends for a form without fields
    revoked = account.web.post(f"/account/keys/{key_id}/revoke", content=b"",
                               headers={"content-type": "application/x-www-form-urlencoded"})
    assert revoked.status_code == 303
    assert account.web.get("/account/keys").json()["data"] == []


def test_activity_page_lists_events(account: Account) -> None:
    page = account.web.get("/activity")
    assert page.status_code == 200
    assert "account created" in page.text and "floodwall-tests/1.0" in page.text


def test_chat_streams_with_the_session(account: Account) -> None:
    body = {"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "hello"}]}
    with account.web.stream("POST", "/app/chat", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    assert '"content":"simulated "' in text and text.rstrip().endswith("data: [DONE]")


def test_chat_needs_a_session_and_same_origin(base_url: str, account: Account) -> None:
    body = {"model": "floodwall-simulated-chat", "messages": [{"role": "user", "content": "hello"}]}
    with httpx.Client(base_url=base_url) as anonymous:
        assert anonymous.post("/app/chat", json=body).status_code == 401
    cross = account.web.post("/app/chat", json=body, headers={"origin": "https://attacker.example"})
    assert cross.status_code == 403


def test_logout_form(account: Account) -> None:
    response = account.web.post("/auth/logout", content=b"",
                                headers={"content-type": "application/x-www-form-urlencoded"})
    assert response.status_code == 303
    assert account.web.get("/chat").status_code == 303


def test_the_home_page_is_one_page_for_every_visitor_not_signed_in(http: httpx.Client, account: Account) -> None:
    """Rendered once per service state (a flood of it costs a lookup), with every header a page has."""
    first, second = http.get("/"), http.get("/", headers={"user-agent": "another browser"})
    assert first.status_code == second.status_code == 200 and first.content == second.content
    for response in (first, second):
        assert response.headers["content-type"].startswith("text/html")
        assert response.headers["cache-control"] == "no-store"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert account.web.get("/").status_code == 303  # a signed-in visitor still goes to the chat
