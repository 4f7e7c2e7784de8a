"""The one place where exceptions become HTTP responses (style rule 3).

Every error body has A1111's shape `{error, detail, body, errors}`: `error` is the
exception class name, `errors` the message. For 422s `detail` is FastAPI's list of
`{loc, msg, type}` items, so a bad field reads the same whether pydantic or a
processing object's `validate()` rejected it. Routes contain no try/except.
"""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import (
    AccessDenied,
    ExtensionError,
    Interrupted,
    InvalidRequest,
    ModelLoadError,
    ModelNotFound,
    WebUIError,
)

log = logging.getLogger(__name__)


class NotAvailable(WebUIError):
    """An A1111 route or feature this version does not have yet."""

    def __init__(self, route: str, feature: str) -> None:
        super().__init__(f"{route}: {feature} is not available yet in this version")
        self.route = route


class JobConflict(WebUIError):
    """The job exists but is in the wrong state for the request (e.g. no result yet)."""


# Checked in order of the exception's class hierarchy by Starlette, so WebUIError
# is the fallback for typed errors that have no row of their own.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (InvalidRequest, 422),
    (ModelNotFound, 404),
    (AccessDenied, 403),
    (NotAvailable, 404),
    (JobConflict, 409),
    # A queued request whose job was cancelled (DELETE /sdapi/v1/jobs/{id}) before it ran.
    (Interrupted, 409),
    # The checkpoint exists but cannot be loaded: the request chose a model we cannot use.
    (ModelLoadError, 400),
    (ExtensionError, 500),
    (WebUIError, 400),
)


def error_body(exc: BaseException, detail: Any = "") -> dict[str, Any]:
    """A1111's error body for `exc`."""
    return {"error": type(exc).__name__, "detail": detail, "body": "", "errors": str(exc)}


def install_error_handlers(app: FastAPI) -> None:
    """Register one handler per exception type, and the catch-all for everything else.

    Call it before adding other middleware: the catch-all must be the innermost one.
    """
    for exc_type, status in STATUS_BY_ERROR:
        app.add_exception_handler(exc_type, _typed_handler(status))
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_middleware(CatchUnexpected)


def _typed_handler(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    async def handle(request: Request, exc: Exception) -> Response:
        if isinstance(exc, InvalidRequest):
            detail: Any = [{"loc": ["body", exc.field], "msg": exc.reason, "type": "value_error"}]
        else:
            detail = str(exc)
        log.info("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return JSONResponse(error_body(exc, detail), status_code=status)

    return handle


async def _validation_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    items = jsonable_encoder(exc.errors(), exclude={"input", "url"})
    message = "; ".join(f"{_field_name(item.get('loc', ()))}: {item.get('msg', '')}" for item in items)
    body = {"error": "RequestValidationError", "detail": items, "body": "", "errors": message}
    return JSONResponse(body, status_code=422)


def _field_name(loc: Any) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _http_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    # Unlike A1111 we keep the headers, so a 401 still carries WWW-Authenticate.
    return JSONResponse(error_body(exc, exc.detail), status_code=exc.status_code, headers=exc.headers)


class CatchUnexpected:
    """ASGI middleware: anything not mapped above (a bug, or a failure inside generation) becomes a
    500 with its message in A1111's body. The traceback goes to the log; the server keeps running.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_and_note(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as exc:
            if started:  # too late for an error response; let the server close the connection
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            await JSONResponse(error_body(exc), status_code=500)(scope, receive, send)
