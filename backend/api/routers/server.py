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


@router.post("/server-restart")
def server_restart() -> Response:
    """A1111 restarts only under its restarting launcher; we have none, so 501 as A1111 answers then."""
    return Response(status_code=501)


@router.post("/server-kill")
def server_kill(request: Request) -> None:
    """End the process at once, without answering (A1111's server-kill)."""
    request.app.state.server_control.kill()
