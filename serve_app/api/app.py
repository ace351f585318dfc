"""The FastAPI app of the ingress: every surface's routes, the error handlers, OpenAPI at /docs."""

from __future__ import annotations

from typing import Callable

from fastapi import FastAPI

from serve_app.api.auth import ApiKeyMiddleware
from serve_app.api.body_limit import BodyLimitMiddleware
from serve_app.api.duix.routes import router as duix_router
from serve_app.api.errors import install_error_handlers
from serve_app.api.routes.avatars import router as avatars_router
from serve_app.api.routes.backends import router as backends_router
from serve_app.api.routes.health import router as health_router
from serve_app.api.routes.hls import QUERY_TOKEN_PATHS, router as hls_router
from serve_app.api.routes.jobs import router as jobs_router
from serve_app.api.services import ApiServices
from serve_app.api.studio import mount_studio


class RequestGuards:
    """Pure ASGI, outermost: the API key check (401 before anything else runs), then the body limit
    of the route (413 while reading, chunked or not). Built on the first request, because the
    replica's services (keys, limits) exist only after the app is."""

    def __init__(self, app, get_services: Callable[[], ApiServices]):
        self.app = app
        self.get_services = get_services
        self._chain = None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if self._chain is None:
            svc = self.get_services()
            limited = BodyLimitMiddleware(self.app, svc.body_limits)
            self._chain = ApiKeyMiddleware(limited, svc.keyring, protected_prefixes=svc.protected_prefixes,
                                           query_token_paths=QUERY_TOKEN_PATHS)  # the HLS routes only
        await self._chain(scope, receive, send)


def build_api(get_services: Callable[[], ApiServices]) -> FastAPI:
    """``get_services`` returns the serving replica's ``ApiServices`` at request time (the app is built
    before the replica's constructor runs)."""
    api = FastAPI(
        title="lipserve",
        version="0.2.0",
        description="Lip-synced talking-head videos from an audio track and a template video, as durable jobs.",
    )
    api.state.get_services = get_services
    install_error_handlers(api)
    api.include_router(jobs_router)
    api.include_router(hls_router)
    api.include_router(avatars_router)
    api.include_router(backends_router)
    api.include_router(health_router)
    api.include_router(duix_router)
    mount_studio(api)  # the web studio at / (static files, no build step)
    api.add_middleware(RequestGuards, get_services=get_services)
    return api
