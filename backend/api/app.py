"""create_app(ctx): the FastAPI application that serves the API (and carries the UI when mounted).

Middleware as A1111 sets it up: GZip for responses of 1000 bytes or more, CORS from
--cors-allow-origins / --cors-allow-origins-regex, an X-Process-Time header on every
response, and one log line per /sdapi request with --api-log.

With --api-auth every route of the app needs HTTP Basic: the dependency sits on the app
itself, so routes added later (extensions, LoRA) are covered too. Only /docs, /redoc,
/openapi.json, the --nowebui index page and the mounted UI (which has --gradio-auth) are
outside it; so are the UI's own /sd_extra_networks routes, which let in whoever the UI lets in.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.api.auth import BasicAuth, parse_credentials
from backend.api.errors import install_error_handlers
from backend.api.routers import extra_networks, extras, generation, jobs, misc, models, options, progress, server, train
from backend.context import AppContext
from backend.version import VERSION

log = logging.getLogger(__name__)

API_PREFIX = "/sdapi/v1"

_INDEX = ("<html><head><title>Stable Diffusion web UI</title></head><body><h1>Stable Diffusion web UI</h1>"
          "<p>API only (--nowebui): <a href='docs'>/docs</a> lists the routes under /sdapi/v1.</p></body></html>")


@dataclass
class ServerControl:
    """How /server-stop and /server-kill reach the serving process; webui.py attaches the server."""

    server: Any = None
    """The uvicorn.Server running this app (its `should_exit` ends it gracefully)."""
    restart_requested: bool = False
    """Set by restart(): webui.main builds everything again once the server has stopped."""

    def stop(self) -> None:
        """Let the requests in flight finish, then shut down (the lifespan stops the job queue)."""
        if self.server is None:
            raise RuntimeError("no server attached to stop")
        self.server.should_exit = True

    def restart(self) -> None:
        """Stop like stop(), then start again in the same process with the same flags."""
        self.restart_requested = True
        self.stop()

    def kill(self) -> None:
        """End the process now, as A1111's server-kill does."""
        os._exit(0)


def create_app(ctx: AppContext, *, serve_api: bool = True) -> FastAPI:
    """The application for `ctx`: middleware and error mapping always, /sdapi/v1 when `serve_api`.

    The job queue worker starts and stops with the app's lifespan. Raises InvalidRequest for a
    malformed --api-auth.
    """
    settings = ctx.settings
    credentials = parse_credentials(settings.api_auth)
    app = FastAPI(
        title="Stable Diffusion web UI",
        description="A1111-compatible API (/sdapi/v1) plus an asynchronous job API (/sdapi/v1/jobs).",
        version=VERSION,
        docs_url="/docs",
        redoc_url="/redoc",
        lifespan=_lifespan,
        dependencies=[Depends(BasicAuth(credentials))] if credentials else [],
    )
    app.state.ctx = ctx
    app.state.server_control = ServerControl()
    install_error_handlers(app)
    app.add_middleware(GZipMiddleware, minimum_size=1000)
    if settings.cors_allow_origins or settings.cors_allow_origins_regex:
        origins = [o.strip() for o in (settings.cors_allow_origins or "").split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_origin_regex=settings.cors_allow_origins_regex,
                           allow_methods=["*"], allow_headers=["*"], allow_credentials=True)
    app.add_middleware(ProcessTime, api_log=settings.api_log)
    if serve_api:
        for area in (generation, extras, progress, options, models, misc, jobs, train):
            app.include_router(area.router, prefix=API_PREFIX)
        if settings.api_server_stop:
            app.include_router(server.router, prefix=API_PREFIX)
    if settings.nowebui:
        app.add_route("/", _index, methods=["GET"], include_in_schema=False)
    else:
        # The UI's own routes, guarded like the UI (routers/extra_networks.py says why).
        ui_routes = extra_networks.create_app(ctx, credentials)
        app.state.ui_access = ui_routes.state.ui_access
        app.mount(extra_networks.PREFIX, ui_routes)
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    ctx: AppContext = app.state.ctx
    ctx.start()
    try:
        yield
    finally:
        ctx.stop()


async def _index(request: Request) -> Response:
    return HTMLResponse(_INDEX)


class ProcessTime:
    """ASGI middleware: the X-Process-Time header (seconds to the response start) on every response,
    and with --api-log one line per /sdapi request, in A1111's format."""

    def __init__(self, app: ASGIApp, *, api_log: bool = False) -> None:
        self.app = app
        self.api_log = api_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_with_time(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Process-Time", f"{time.perf_counter() - started:.4f}")
            await send(message)

        await self.app(scope, receive, send_with_time)
        path = scope.get("path", "")
        if self.api_log and path.startswith(API_PREFIX):
            client = scope.get("client") or ("-", 0)
            print(f"API {time.strftime('%Y-%m-%d %H:%M:%S')} {status} {scope.get('scheme', 'http')}/"
                  f"{scope.get('http_version', '1.1')} {scope.get('method')} {path} {client[0]} "
                  f"{time.perf_counter() - started:.4f}", flush=True)
