"""Extras (upscaling and face restoration of existing images), PNG info, and interrogate (not yet).

The Extras run as jobs of the shared FIFO queue, so they never run beside a generation. As
A1111's API, they return the results and save nothing (run_extras with save_output=False).
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from backend.api.deps import Ctx, outcome
from backend.api.errors import NotAvailable
from backend.api.models import (
    ExtrasBatchImagesRequest,
    ExtrasBatchImagesResponse,
    ExtrasSingleImageRequest,
    ExtrasSingleImageResponse,
    PNGInfoRequest,
    PNGInfoResponse,
    decode_image,
    encode_image,
    extras_inputs,
    plaintext_to_html,
)
from backend.context import AppContext
from backend.errors import Interrupted
from backend.jobs.progress import JobState
from backend.postprocess.extras import ExtrasRequest, ExtrasResult, default_output_dir, run_extras
from backend.postprocess.face_restore import FACE_RESTORERS
from backend.postprocess.images import read_info_from_image
from backend.postprocess.infotext import parse_infotext
from backend.postprocess.upscalers import WeightsMissing

router = APIRouter(tags=["extras"])

_NOT_YET = {404: {"description": "Not available yet in this version"}}
_MISSING = {404: {"description": "An unknown upscaler, or model weights that are not on disk"}}


@router.post("/extra-single-image", response_model=ExtrasSingleImageResponse, responses=_MISSING)
async def extra_single_image(req: ExtrasSingleImageRequest, ctx: Ctx) -> ExtrasSingleImageResponse:
    """Upscale and/or restore faces of one image (A1111's Extras, Single Image)."""
    inputs = await run_in_threadpool(extras_inputs, req)
    results = await _run(ctx, req.extras_request(), inputs)
    if not results or results[0].image is None:
        raise Interrupted("extras: interrupted before the image was processed")
    image = await run_in_threadpool(encode_image, results[0].image, ctx.options)
    return ExtrasSingleImageResponse(html_info=plaintext_to_html(results[0].infotext), image=image)


@router.post("/extra-batch-images", response_model=ExtrasBatchImagesResponse, responses=_MISSING)
async def extra_batch_images(req: ExtrasBatchImagesRequest, ctx: Ctx) -> ExtrasBatchImagesResponse:
    """The same for a list of images; html_info is the last image's infotext, as in A1111."""
    inputs = await run_in_threadpool(extras_inputs, req)
    results = await _run(ctx, req.extras_request(), inputs)
    images = await run_in_threadpool(
        lambda: [encode_image(r.image, ctx.options) for r in results if r.image is not None])
    return ExtrasBatchImagesResponse(html_info=plaintext_to_html(results[-1].infotext if results else ""),
                                     images=images)


async def _run(ctx: AppContext, req: ExtrasRequest, inputs: list[tuple[Any, str | None]]) -> list[ExtrasResult]:
    """Check names and weights before queueing, then run the Extras as one job of the shared queue."""
    req.validate()
    for name in (req.upscaler_1, req.upscaler_2):
        if name != "None":
            ctx.upscalers.get(name)  # ModelNotFound / WeightsMissing name it, before any wait
    _check_face_weights(ctx, req)

    def run(state: JobState) -> list[ExtrasResult]:
        return run_extras(inputs, req, upscalers=ctx.upscalers, face_restorers=ctx.face_restorers, opts=ctx.options,
                          output_dir=default_output_dir(ctx.options, ctx.settings.data_dir),
                          device=ctx.devices.device, state=state)

    job = ctx.queue.submit("extras", run)
    try:
        return await outcome(job)
    finally:
        job.release_result()


def _check_face_weights(ctx: AppContext, req: ExtrasRequest) -> None:
    """A face restorer asked for (visibility > 0) whose weights are missing fails before queueing."""
    wanted = {"GFPGAN": req.gfpgan_visibility, "CodeFormer": req.codeformer_visibility}
    for info in ctx.face_restorers.list():
        if wanted.get(info.name, 0) > 0 and info.path is None:
            spec = next(spec for spec in FACE_RESTORERS if spec.name == info.name)
            raise WeightsMissing("face restorer", info.name, info.folder / spec.expected_file)


@router.post("/png-info", response_model=PNGInfoResponse)
def png_info(req: PNGInfoRequest, ctx: Ctx) -> PNGInfoResponse:
    """The infotext of an image (PNG `parameters` chunk, or EXIF UserComment), raw and parsed.

    Other text items come back in `items`: for Extras results `postprocessing` (and `extras` in
    saved files), as A1111 returns them.
    """
    if not req.image.strip():
        return PNGInfoResponse(info="")
    image = decode_image(req.image, "image")
    geninfo, items = read_info_from_image(image)
    geninfo = geninfo or ""
    params = parse_infotext(geninfo, skip_fields=ctx.options["infotext_skip_pasting"] or ())
    return PNGInfoResponse(info=geninfo, items=_json_items(items), parameters=params)


def _json_items(items: dict[str, Any]) -> dict[str, Any]:
    # Binary items (ICC profiles, raw EXIF) have no JSON form; A1111 clients only read text ones.
    out: dict[str, Any] = {}
    for key, value in items.items():
        if isinstance(value, (str, int, float, bool)) or value is None:
            out[str(key)] = value
        elif isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value):
            out[str(key)] = list(value)
    return out


@router.post("/interrogate", responses=_NOT_YET)
def interrogate() -> None:
    """A1111's CLIP/DeepBooru captioning: not available yet."""
    raise NotAvailable("POST /sdapi/v1/interrogate", "interrogate (CLIP/DeepBooru captions)")
