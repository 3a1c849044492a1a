"""The house's services, built once by build_app and reached from any route through the request."""

from __future__ import annotations

import dataclasses

from prometheus_client.registry import CollectorRegistry
from starlette.requests import Request
from starlette.templating import Jinja2Templates

from floodwall import cookies
from floodwall.accounts.activity import Client
from floodwall.accounts.challenges import Challenges
from floodwall.accounts.directory import Directory
from floodwall.accounts.guard import LoginGuard
from floodwall.accounts.mail import Mailer
from floodwall.accounts.reset import PasswordReset
from floodwall.accounts.service import AccountService
from floodwall.accounts.sign_in_codes import SignInCodes
from floodwall.accounts.two_factor import TwoFactor
from floodwall.accounts.verification import EmailVerification
from floodwall.accounts.waiting_room import WaitingRoom
from floodwall.config import Settings
from floodwall.db.signing import Signer
from floodwall.defense.screening import PromptGuard
from floodwall.defense.watch import Watch
from floodwall.edge.control import Control
from floodwall.identity import Networks, TrustedProxies, client_address, is_https
from floodwall.inference.admission import Admission
from floodwall.inference.upstream import Upstream
from floodwall.inference.usage import UsageRecorder
from floodwall.policy import PolicyFile
from floodwall.state.store import Store
from floodwall.status.board import StatusBoard
from floodwall.status.incidents import Incidents
from floodwall.telemetry.traffic import Traffic


@dataclasses.dataclass
class Services:
    settings: Settings
    accounts: AccountService
    upstream: Upstream
    usage: UsageRecorder
    templates: Jinja2Templates
    trusted_proxies: TrustedProxies
    networks: Networks
    store: Store
    control: Control
    policy: PolicyFile
    admission: Admission
    signer: Signer
    guard: LoginGuard
    sign_in_codes: SignInCodes
    waiting_room: WaitingRoom
    challenges: Challenges
    mailer: Mailer
    verification: EmailVerification
    password_reset: PasswordReset
    two_factor: TwoFactor
    traffic: Traffic
    watch: Watch
    prompt_guard: PromptGuard
    incidents: Incidents
    directory: Directory
    status: StatusBoard
    metrics: CollectorRegistry | None = None  # made at the first scrape
    # pages as every visitor who is not signed in sees them, by (template, service state): web/pages
    anonymous_pages: dict[tuple[str, bool, bool], bytes] = dataclasses.field(default_factory=dict)

    @property
    def session_cookie(self) -> str:
        return cookies.session(self.settings.server.public_url.startswith("https://"))

    def client(self, request: Request) -> Client:
        return Client(client_address(request.scope, self.trusted_proxies), request.headers.get("user-agent", ""))

    def public_url(self) -> str:
        """Where people reach the service, for links sent by e-mail: from configuration only, never from the
        Host header a client sends. Without server.public_url, mail goes to the log (development: the
        configuration check requires one with mail.url), and links name the listening address."""
        server = self.settings.server
        if server.public_url:
            return server.public_url.rstrip("/") + "/"
        host = "localhost" if server.host in ("0.0.0.0", "::", "") else server.host
        return f"http://[{host}]:{server.port}/" if ":" in host else f"http://{host}:{server.port}/"

    def registration_mode(self) -> str:
        """The sign-up mode in force: the operator's pin, else the level's."""
        return self.policy.edge.registration_mode(self.control.level, self.control.registration)

    def challenge_difficulty(self) -> int:
        """How hard the proof-of-work on sign-up is at the current level (0: none asked)."""
        return self.policy.edge.challenge[self.control.level]

    def is_https(self, request: Request) -> bool:
        """Whether browsers reach us over HTTPS: the public URL says so, or the (trusted) hop did."""
        return self.settings.server.public_url.startswith("https://") or is_https(request.scope, self.trusted_proxies)


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found
