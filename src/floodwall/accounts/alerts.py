"""Account alerts: what an owner is told, by e-mail and on the activity page, so that they can act on it
(the seed event's operator asked its users to watch their accounts): a sign-in from a device and a network
the account has not used, a burst of wrong passwords against it, a new API key.

An alert is an activity event with `"alert": true` in its detail (the page and the API show those first)
and a message to the account's address. Deciding is done in the caller's database transaction; the
message goes out in the background.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession as DbSession

from floodwall.accounts.activity import Client, record_activity
from floodwall.accounts.mail import Mailer
from floodwall.accounts.models import ActivityEvent
from floodwall.db.base import utcnow
from floodwall.identity import Networks

FAILED_BURST = 5  # wrong passwords within FAILED_WINDOW that make an alert (one per window)
FAILED_WINDOW = dt.timedelta(minutes=15)
HISTORY = 50  # earlier sign-ins whose networks count as the account's own
RECENT = dt.timedelta(days=7)


SUMMARY = 60  # characters of a client's user agent an alert quotes: enough to recognise a browser


def summary(user_agent: str) -> str:
    """A short, printable summary of a user agent for a security e-mail: a real message from us must not carry
    paragraphs of an attacker's text (a phishing line, a fake link)."""
    text = "".join(c if c.isprintable() else " " for c in user_agent[:SUMMARY]).strip()
    return (text + ("..." if len(user_agent) > SUMMARY else "")) or "not given"


class Alerts:
    def __init__(self, mailer: Mailer, networks: Networks | None = None) -> None:
        self.mailer = mailer
        self.networks = networks or Networks()
        self.sent = 0

    def _mail(self, email: str, subject: str, what: str, client: Client) -> None:
        self.sent += 1
        self.mailer.send_later(email, subject, (
            f"{what}\n\nWhen: {utcnow():%Y-%m-%d %H:%M} UTC\nFrom address: {client.ip}\n"
            f"Browser or client: {summary(client.user_agent)}\n\n"
            "If this was you, there is nothing to do. If not, change your password now, then open Account "
            "activity to sign out the sessions and revoke the API keys you do not recognise.\n"))

    async def sign_in(self, db: DbSession, user_id: int, email: str, client: Client, new_device: bool) -> bool:
        """Whether this sign-in is from a device and a network the account has not signed in from: then it
        is an alert (a known device moving between networks, or a new browser at home, is not)."""
        if not new_device:
            return False
        seen = (await db.execute(
            select(ActivityEvent.ip).where(ActivityEvent.user_id == user_id,
                                           ActivityEvent.kind.in_(("login", "account_created")))
            .order_by(ActivityEvent.at.desc()).limit(HISTORY))).scalars().all()
        if self.networks.text_keys(client.ip)[1] in {self.networks.text_keys(ip)[1] for ip in seen}:
            return False
        self._mail(email, "New sign-in to your account", "Your account was signed in to from a device and a "
                   "network it has not used before.", client)
        return True

    async def failed_sign_in(self, db: DbSession, user_id: int, email: str, client: Client) -> None:
        """Count this wrong password; the FAILED_BURST-th within the window is an alert."""
        since = utcnow() - FAILED_WINDOW
        recent = await db.scalar(select(func.count()).select_from(ActivityEvent).where(
            ActivityEvent.user_id == user_id, ActivityEvent.at >= since, ActivityEvent.kind == "login_failed",
            ActivityEvent.detail.contains("wrong_password")))  # not a right password before confirmation
        already = await db.scalar(select(func.count()).select_from(ActivityEvent).where(
            ActivityEvent.user_id == user_id, ActivityEvent.at >= since, ActivityEvent.kind == "failed_logins"))
        if already or (recent or 0) < FAILED_BURST:
            return
        record_activity(db, user_id, "failed_logins", client, {"count": FAILED_BURST, "alert": True})
        self._mail(email, "Failed sign-ins to your account", f"Someone tried to sign in to your account with a "
                   f"wrong password {FAILED_BURST} times in {FAILED_WINDOW.seconds // 60} minutes. Your account "
                   "is safe while they keep failing; the latest attempt came from here.", client)

    def security_change(self, email: str, subject: str, what: str, client: Client) -> None:
        self._mail(email, subject, what, client)

    def key_created(self, email: str, name: str, prefix: str, client: Client) -> None:
        self._mail(email, "New API key on your account", f"An API key was created on your account: "
                   f"{name or 'unnamed'} ({prefix}...).", client)
