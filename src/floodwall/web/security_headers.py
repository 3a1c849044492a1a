"""Browser security headers on every answer: what a page may load and who may frame it (CSP), no MIME
sniffing, no referrer leaving the site (a reset page's URL carries its token), HSTS behind HTTPS. Plain
ASGI around the app, after the gate (its refusals carry the same nosniff through the error shape)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# 'self' only: the templates hold no inline script or style attribute. The vendored ALTCHA widget runs its
# proof of work in workers made from blobs and styles its shadow root with a <style> element.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "worker-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin")]
PAGES = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]
HSTS = (b"strict-transport-security", b"max-age=31536000")


class SecurityHeaders:
    def __init__(self, app: ASGIApp, https: bool = False) -> None:
        self.app = app
        self.https = https  # server.public_url is https: browsers are told to come back over HTTPS only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                page = False
                for name, value in headers:  # (a loop, not a generator: a frame on every answer)
                    if name == b"content-type":
                        page = value.startswith(b"text/html")
                        break
                headers += ALWAYS
                if page:
                    headers += PAGES
                if self.https:
                    headers.append(HSTS)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
