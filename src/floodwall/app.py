"""build_app wires the house: settings → services → routes → the ASGI app a server runs."""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import logging
import os
from collections.abc import AsyncIterator

from redis.exceptions import RedisError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeoutError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from floodwall import config as config_module
from floodwall import errors, logs, server
from floodwall.accounts.alerts import Alerts
from floodwall.accounts.blocklists import Blocklists
from floodwall.accounts.challenges import Challenges
from floodwall.accounts.directory import Directory
from floodwall.accounts.guard import LoginGuard
from floodwall.accounts.mail import Mailer
from floodwall.accounts.passwords import Passwords
from floodwall.accounts.reset import PasswordReset
from floodwall.accounts.service import AccountService
from floodwall.accounts.sign_in_codes import SignInCodes
from floodwall.accounts.two_factor import TwoFactor
from floodwall.accounts.verification import EmailVerification
from floodwall.accounts.waiting_room import WaitingRoom
from floodwall.config import Settings
from floodwall.console import admin, metrics, operations
from floodwall.console import pages as console_pages
from floodwall.db.audit import Audit
from floodwall.db.engine import create_engine, on_database_error, sessionmaker
from floodwall.db.signing import Signer
from floodwall.defense.detector import Detector
from floodwall.defense.probing import Probes
from floodwall.defense.prompts import Campaigns, Screen, load_rules
from floodwall.defense.scorer import Scorer
from floodwall.defense.scoring import Scoring
from floodwall.defense.screening import PromptGuard
from floodwall.defense.watch import Watch
from floodwall.edge.control import Control
from floodwall.edge.gate import Gate
from floodwall.identity import Networks, TrustedProxies
from floodwall.inference.admission import Admission
from floodwall.inference.canaries import Canaries
from floodwall.inference.upstream import Upstream
from floodwall.inference.usage import UsageRecorder
from floodwall.policy import PolicyFile
from floodwall.state import open_store
from floodwall.status.automation import AutoIncidents
from floodwall.status.board import StatusBoard
from floodwall.status.incidents import Incidents
from floodwall.telemetry.sources import NewSources
from floodwall.telemetry.traffic import Traffic
from floodwall.web import accounts as account_routes
from floodwall.web import api as inference_routes
from floodwall.web import pages
from floodwall.web import routes as web_routes
from floodwall.web import status as status_routes
from floodwall.web import two_factor as two_factor_routes
from floodwall.web.direct import Direct, fixed_routes
from floodwall.web.openapi import openapi
from floodwall.web.security_headers import SecurityHeaders
from floodwall.web.services import Services

_log = logging.getLogger("floodwall")


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def board_name(settings: Settings) -> str:
    """The admission board of the replicas before this model server: named by its URL (hashed: a URL may carry
    credentials, and the name is a key in Redis)."""
    return "admission:" + hashlib.sha256(settings.upstream.url.encode()).hexdigest()[:16]


def build_app(settings: Settings) -> Gate:
    engine = create_engine(settings.database.url, settings.database.pool_size)
    mailer = Mailer(settings.mail)
    store = open_store(settings.state.url)
    signer = Signer()
    networks = Networks(settings.edge.ipv4_prefix, settings.edge.ipv6_prefix, settings.edge.ipv6_subscriber_prefix)
    db = sessionmaker(engine)
    two_factor = TwoFactor(db, signer, store)
    accounts = AccountService(
        db,
        Passwords(settings.accounts.password_hash_profile),
        session_lifetime=settings.accounts.session_lifetime,
        session_idle_timeout=settings.accounts.session_idle_timeout,
        min_password_length=settings.accounts.min_password_length,
        key_cache_ttl=settings.accounts.key_cache_ttl,
        blocklists=Blocklists.load(
            disposable=settings.accounts.refuse_disposable_emails, passwords=settings.accounts.refuse_common_passwords,
            disposable_file=settings.accounts.disposable_domains_file,
            passwords_file=settings.accounts.common_passwords_file),
        alerts=Alerts(mailer, networks),
        two_factor=two_factor,
    )
    trusted = TrustedProxies(settings.server.trusted_proxies, settings.server.forwarded_header)
    audit = Audit(db)
    control = Control(store, settings.defense.level, settings.edge.refresh_interval, audit)
    policies = PolicyFile.load(settings.edge.policy or None)
    policy = policies.edge
    incidents = Incidents(db)
    templates = pages.templates()
    traffic = Traffic(NewSources(networks=networks))
    scorer = Scorer() if settings.screening.process else None
    prompt_guard = PromptGuard(policies.prompts, Screen(load_rules()), Campaigns(), store,
                               functools.partial(policy.buckets, "prompt-strike"), traffic, scorer=scorer)
    upstream = Upstream(settings.upstream, Canaries(settings.screening.canaries, prompt_guard.strike, traffic))
    admission = Admission(policies.admission, store, lambda: control.level, traffic, figures=upstream.figures,
                          board=board_name(settings) if settings.upstream.shared else None)
    if upstream.metrics is not None:
        upstream.metrics.on_reading = admission.observe
    services = Services(
        settings=settings,
        accounts=accounts,
        upstream=upstream,
        usage=UsageRecorder(accounts.record_usage),
        templates=templates,
        trusted_proxies=trusted,
        networks=networks,
        store=store,
        control=control,
        policy=policies,
        admission=admission,
        signer=signer,
        guard=LoginGuard(policy, store, lambda: control.level, signer, networks, traffic),
        sign_in_codes=SignInCodes(signer, mailer, store),
        waiting_room=WaitingRoom(store, signer, policy.queue, networks=networks),
        challenges=Challenges(store, signer, networks=networks),
        mailer=mailer,
        verification=EmailVerification(accounts.db, signer, mailer, settings.accounts.verify_email),
        password_reset=PasswordReset(accounts.db, signer, mailer, accounts),
        two_factor=two_factor,
        traffic=traffic,
        watch=Watch(traffic, store, control, Detector(policies.detector), gauges=admission.gauges),
        prompt_guard=prompt_guard,
        incidents=incidents,
        directory=Directory(accounts),
        status=StatusBoard(
            settings.status, incidents, control, store, recent=lambda: traffic.recent(60),
            registration=lambda: policy.registration_mode(control.level, control.registration), env=templates.env,
            automation=AutoIncidents(settings.status, incidents, audit) if settings.status.automatic_incidents
            else None),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await signer.load(accounts.db, settings.server.secret_key)
        if settings.accounts.verify_email and mailer.development:
            logs.event(_log, "e-mail confirmation is on, but mail.url is empty: confirmation links go to this log",
                  logging.WARNING)
        await audit.start()
        await control.start()
        await services.watch.start()
        await services.status.start()
        services.admission.start()
        await services.upstream.start()
        await services.upstream.probe()
        await services.usage.start()
        if scorer is not None:
            await scorer.start()
        # what start-up made lives as long as the process: out of the collector's sight, full collections
        # stop walking it, and their pauses (measured: the p99 of a proxied call) shrink
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            services.prompt_guard.settle()  # the prompts still aside are logged and spend their strikes
            if scorer is not None:
                await scorer.stop()
            await mailer.drain()
            await services.usage.stop()
            await services.upstream.close()
            await services.status.stop()
            await services.watch.stop()
            await control.stop()
            await audit.stop()
            await services.admission.stop()
            await store.close()
            await engine.dispose()

    routes = [
        # Starlette tries routes in order (a regular expression each): the admitted calls, the service's work,
        # then the pages a flood hits (whatever of a flood the gate lets through)
        *inference_routes.routes,
        Route("/healthz", healthz),
        web_routes.HOME,
        *status_routes.routes,
        *admin.routes,
        *operations.routes,
        *console_pages.routes,
        *metrics.routes,
        *account_routes.routes,
        *two_factor_routes.routes,
        *web_routes.routes,
        Route("/openapi.json", openapi),
        Mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            errors.ApiError: errors.on_api_error,
            HTTPException: errors.on_http_exception,
            RedisError: errors.on_state_unavailable,
            # the database away (refused, reset, timed out): 503 where it is needed, not a 500
            OSError: on_database_error,
            DBAPIError: on_database_error,
            SQLAlchemyTimeoutError: on_database_error,
            Exception: errors.on_unexpected,
        },
    )
    app.state.services = services
    # the security headers on every answer, the app's 500s included; the model calls before Starlette's router
    inner = SecurityHeaders(Direct(app, fixed_routes(inference_routes.routes)),
                            https=settings.server.public_url.startswith("https://"))
    gate = Gate(inner, policy=policy, store=store, control=control, principals=accounts, trusted_proxies=trusted,
                new_account_age=settings.defense.new_account_age, networks=services.networks, traffic=traffic,
                known_device=services.guard.known_device,
                scoring=Scoring(policies.scoring) if policies.scoring is not None else None,
                probes=Probes(policies.probing) if policies.probing is not None else None,
                session_cookie=services.session_cookie)
    # the gate is the outermost app (it passes lifespan through); tools reach the services through it, and
    # the admin API's explain reaches the gate through the app
    gate.state = app.state
    app.state.gate = gate
    return gate


def app_from_env() -> Gate:
    """The ASGI factory each server worker calls: serve hands it the resolved settings in the environment."""
    text = os.environ.get(config_module.SETTINGS_ENV)
    settings = Settings.from_json(text) if text else config_module.load()
    logs.setup(settings.log.level, settings.log.format, settings.log.audit_file)
    server.exit_with_parent()
    return build_app(settings)
