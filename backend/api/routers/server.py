"""server-stop / server-restart / server-kill: only mounted with --api-server-stop."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

router = APIRouter(tags=["server"])


@router.post("/server-stop", response_class=PlainTextResponse)
def server_stop(request: Request) -> str:
    """Finish the requests in flight, stop the job queue and exit."""
    request.app.state.server_control.stop()
    return "Stopping."


@router.post("/server-restart", status_code=204)
def server_restart(request: Request) -> Response:
    """Finish the requests in flight, then rebuild the application in this process (extensions,
    options and models reload; the flags stay)."""
    request.app.state.server_control.restart()
    return Response(status_code=204)


@router.post("/server-kill")
def server_kill(request: Request) -> None:
    """End the process at once, without answering (A1111's server-kill)."""
    request.app.state.server_control.kill()
