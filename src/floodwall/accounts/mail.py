"""Sending e-mail (address confirmation, password reset, account notices) over SMTP with aiosmtplib, or, in
development mode (no `mail.url`), writing each message to the log so the link in it can be followed.

Messages go out in the background: a slow or unreachable mail server never holds up the request that
caused the message, and its failures are logged, not raised.
"""

from __future__ import annotations

import asyncio
import logging
from email.message import EmailMessage
from urllib.parse import unquote, urlsplit

import aiosmtplib

from floodwall.config import MailSettings
from floodwall.logs import event

log = logging.getLogger("floodwall.mail")


class Mailer:
    def __init__(self, settings: MailSettings) -> None:
        self.settings = settings
        self.development = not settings.url
        self.sent = 0
        self.failed = 0
        self._pending: set[asyncio.Task[bool]] = set()

    def message(self, to: str, subject: str, text: str) -> EmailMessage:
        message = EmailMessage()
        message["From"] = self.settings.from_address
        message["To"] = to
        message["Subject"] = subject
        message.set_content(text)
        return message

    async def send(self, to: str, subject: str, text: str) -> bool:
        """Send one message now; False (and a log line) when the mail server refused it or could not be reached."""
        if self.development:
            event(log, "mail (development mode: not sent, set mail.url to send)", logging.WARNING,
                  to=to, subject=subject, text=text)
            self.sent += 1
            return True
        parts = urlsplit(self.settings.url)
        implicit_tls = parts.scheme == "smtps"
        try:
            await aiosmtplib.send(
                self.message(to, subject, text), hostname=parts.hostname or "localhost",
                port=parts.port or (465 if implicit_tls else 25),
                username=unquote(parts.username) if parts.username else None,
                password=unquote(parts.password) if parts.password else None,
                use_tls=implicit_tls, start_tls=None if not implicit_tls else False,
                timeout=self.settings.timeout)
        except (aiosmtplib.SMTPException, OSError) as exc:
            self.failed += 1
            event(log, "mail not sent", logging.ERROR, to=to, subject=subject, error=str(exc))
            return False
        self.sent += 1
        return True

    def send_later(self, to: str, subject: str, text: str) -> None:
        """Send in the background (kept referenced until done, so it is not collected mid-flight)."""
        task = asyncio.get_running_loop().create_task(self.send(to, subject, text))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def drain(self) -> None:
        """Wait for messages still going out (at shutdown)."""
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=self.settings.timeout)
