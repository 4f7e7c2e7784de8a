"""Route dependencies: how a route reaches the application's services, and waits for its jobs."""
from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import Depends, Request

from backend.context import AppContext
from backend.jobs.queue import Job

_POLL_S = 0.02


def get_context(request: Request) -> AppContext:
    """The AppContext the app was built with (style rule 8: no globals)."""
    return request.app.state.ctx


Ctx = Annotated[AppContext, Depends(get_context)]


async def outcome(job: Job) -> Any:
    """Wait for `job` and return its result or raise its error.

    Waiting polls instead of blocking a worker thread, so any number of queued requests never
    starve /progress and /interrupt of threads.
    """
    while not job.done:
        await asyncio.sleep(_POLL_S)
    return job.wait(0)
