"""POST /sdapi/v1/txt2img and /sdapi/v1/img2img: wait in the shared queue, answer A1111's response."""
from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from backend.api.deps import Ctx, outcome
from backend.api.models import (
    ImageToImageResponse,
    Img2ImgRequest,
    TextToImageResponse,
    Txt2ImgRequest,
    generation_response,
    img2img_processing,
    txt2img_processing,
)
from backend.context import AppContext
from backend.processing import StableDiffusionProcessing

router = APIRouter(tags=["generation"])

Prepare = Callable[[BaseModel, AppContext], tuple[BaseModel, StableDiffusionProcessing]]


@router.post("/txt2img", response_model=TextToImageResponse)
async def txt2img(req: Txt2ImgRequest, ctx: Ctx) -> TextToImageResponse:  # type: ignore[valid-type]
    """Generate images from a prompt (with the hires fix when enable_hr); A1111's response."""
    return await _generate(ctx, req, txt2img_processing)


@router.post("/img2img", response_model=ImageToImageResponse)
async def img2img(req: Img2ImgRequest, ctx: Ctx) -> TextToImageResponse:  # type: ignore[valid-type]
    """Generate from init images (inpainting with `mask`); A1111's response.

    init_images and mask are base64 (raw or data: URIs); they are echoed in `parameters` only
    with include_init_images.
    """
    return await _generate(ctx, req, img2img_processing)


async def _generate(ctx: AppContext, req: BaseModel, prepare: Prepare) -> TextToImageResponse:
    # Decoding images and validating run off the event loop: large init images take a while.
    req, p = await run_in_threadpool(prepare, req, ctx)
    job = ctx.submit(p)
    try:
        processed = await outcome(job)
    finally:
        job.release_result()  # the response holds the images now; the job history keeps only the record
    return await run_in_threadpool(generation_response, req, processed, ctx.options)
