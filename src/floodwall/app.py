"""build_app wires the house: settings → services → routes → the ASGI app a server runs."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from floodwall import config as config_module
from floodwall import errors, logs
from floodwall.accounts import routes as account_routes
from floodwall.accounts.database import create_engine, sessionmaker
from floodwall.accounts.passwords import Passwords
from floodwall.accounts.service import AccountService
from floodwall.config import Settings
from floodwall.edge.identity import TrustedProxies
from floodwall.inference import routes as inference_routes
from floodwall.inference.upstream import Upstream
from floodwall.inference.usage import UsageRecorder
from floodwall.services import Services
from floodwall.web import pages
from floodwall.web import routes as web_routes


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(settings: Settings) -> Starlette:
    engine = create_engine(settings.database.url, settings.database.pool_size)
    accounts = AccountService(
        sessionmaker(engine),
        Passwords(settings.accounts.password_hash_profile),
        session_lifetime=settings.accounts.session_lifetime,
        min_password_length=settings.accounts.min_password_length,
        key_cache_ttl=settings.accounts.key_cache_ttl,
    )
    services = Services(
        settings=settings,
        accounts=accounts,
        upstream=Upstream(settings.upstream),
        usage=UsageRecorder(accounts),
        templates=pages.templates(),
        trusted_proxies=TrustedProxies(settings.server.trusted_proxies),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await services.upstream.start()
        await services.upstream.probe()
        await services.usage.start()
        try:
            yield
        finally:
            await services.usage.stop()
            await services.upstream.close()
            await engine.dispose()

    routes = [
        Route("/healthz", healthz),
        *inference_routes.routes,
        *account_routes.routes,
        *web_routes.routes,
        Mount("/static", StaticFiles(directory=str(pages.STATIC)), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            errors.ApiError: errors.on_api_error,
            HTTPException: errors.on_http_exception,
            Exception: errors.on_unexpected,
        },
    )
    app.state.services = services
    return app


def app_from_env() -> Starlette:
    """The ASGI factory each server worker calls: serve hands it the resolved settings in the environment."""
    text = os.environ.get(config_module.SETTINGS_ENV)
    settings = Settings.from_json(text) if text else config_module.load()
    logs.setup(settings.log.level, settings.log.format)
    return build_app(settings)
