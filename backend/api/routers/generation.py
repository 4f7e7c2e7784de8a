"""POST /sdapi/v1/txt2img, and the A1111 generation routes we do not have yet."""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from backend.api.deps import Ctx
from backend.api.errors import NotAvailable
from backend.api.models import TextToImageResponse, Txt2ImgRequest, txt2img_processing, txt2img_response
from backend.jobs.queue import Job

router = APIRouter(tags=["generation"])

_POLL_S = 0.02

_NOT_YET = {404: {"description": "Not available yet in this version"}}


@router.post("/txt2img", response_model=TextToImageResponse)
async def txt2img(req: Txt2ImgRequest, ctx: Ctx) -> TextToImageResponse:  # type: ignore[valid-type]
    """Generate images from a prompt; waits in the shared FIFO queue, then answers A1111's response."""
    req, p = txt2img_processing(req, ctx.options, ctx.registry)
    job = ctx.submit(p)
    try:
        processed = await outcome(job)
    finally:
        job.release_result()  # the response holds the images now; the job history keeps only the record
    return await run_in_threadpool(txt2img_response, req, processed, ctx.options)


async def outcome(job: Job) -> Any:
    """Wait for `job` and return its result or raise its error.

    Waiting polls instead of blocking a worker thread, so any number of queued requests never
    starve /progress and /interrupt of threads.
    """
    while not job.done:
        await asyncio.sleep(_POLL_S)
    return job.wait(0)


@router.post("/img2img", responses=_NOT_YET)
def img2img() -> None:
    """A1111's img2img: not available yet (404 with a message, never a fake result)."""
    raise NotAvailable("POST /sdapi/v1/img2img", "img2img")
