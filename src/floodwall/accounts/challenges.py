"""Proof-of-work challenges on sign-up, in ALTCHA's protocol (version 2) so its widget solves them in the
browser: a bot farm pays CPU for every account, a person waits a moment once.

A challenge is SHA-256 over a counter the server picked at random below the level's difficulty: finding it
takes `difficulty / 2` hashes on average, checking it one HMAC. The server keeps nothing per challenge
until it is used: the parameters are signed (and carry the client binding and an expiry), and a used
challenge's nonce is remembered in the Store until it would have expired anyway, so it serves once.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import altcha

from floodwall.accounts.activity import Client
from floodwall.accounts.waiting_room import client_binding
from floodwall.db.signing import Signer
from floodwall.identity import Networks
from floodwall.state.store import Store, use_once

ALGORITHM = "SHA-256"
FIELD = "altcha"  # the widget's hidden input, and the JSON field an API client sends


class Challenges:
    def __init__(self, store: Store, signer: Signer, ttl: float = 600.0, networks: Networks | None = None) -> None:
        self.networks = networks or Networks()
        self.store = store
        self.signer = signer
        self.ttl = ttl

    @property
    def _secret(self) -> str:  # derived when asked: the signer's key is loaded from the database at start-up
        return self.signer.mac("altcha", "challenge")

    @property
    def _key_secret(self) -> str:
        return self.signer.mac("altcha", "derived-key")

    def issue(self, client: Client, difficulty: int) -> dict[str, Any]:
        """A new challenge for this client, as the widget fetches it."""
        challenge = altcha.create_challenge(
            ALGORITHM, 1, counter=secrets.randbelow(max(1, difficulty)), expires_at=int(time.time() + self.ttl),
            data={"b": client_binding(self.signer, client, self.networks)}, hmac_secret=self._secret,
            hmac_key_secret=self._key_secret)
        found: dict[str, Any] = challenge.to_dict()
        return found

    def check(self, payload: object, client: Client) -> tuple[str, str]:
        """Whether `payload` solves a challenge issued to this client: ("", its nonce), or (why not, ""):
        missing, invalid, expired or other-client. Nothing is spent: a sign-up that then waits in the queue
        keeps its solution for its turn."""
        if not payload:
            return "missing", ""
        if not isinstance(payload, str) or len(payload) > 8192:
            return "invalid", ""
        try:
            result = altcha.verify_solution(payload, self._secret, hmac_key_secret=self._key_secret)
            parsed = altcha.Payload.from_base64(payload) if result.verified else None
        except Exception:  # whatever a hostile payload breaks in the parser, it is not a solution
            return "invalid", ""
        if result.expired:
            return "expired", ""
        if parsed is None:
            return "invalid", ""
        parameters = parsed.challenge.parameters
        data = parameters.data if isinstance(parameters.data, dict) else {}
        if data.get("b") != client_binding(self.signer, client, self.networks):
            return "other-client", ""
        return "", parameters.nonce

    async def spend(self, nonce: str) -> bool:
        """Use a checked solution; False when it was used before (it serves one account)."""
        return await use_once(self.store, "registration/challenge", nonce, self.ttl)
