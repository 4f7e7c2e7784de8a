"""Progress of the running job, interrupt and skip (A1111's /progress, /interrupt, /skip)."""
from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.models import ProgressResponse, ProgressState, encode_image

router = APIRouter(tags=["progress"])


@router.get("/progress", response_model=ProgressResponse)
def progress(ctx: Ctx, skip_current_image: bool = False) -> ProgressResponse:
    """Progress and ETA of the running job, its A1111 `state`, and the live preview (base64 PNG).

    Idle (no job counted) reads progress 0 and job_count 0, which webuiapi's util_wait_for_ready expects.
    """
    state = ctx.state
    fields = ProgressState(**state.to_dict())
    if fields.job_count == 0:
        return ProgressResponse(progress=0, eta_relative=0, state=fields, textinfo=state.textinfo)
    preview = state.current_image
    image = encode_image(preview, ctx.options) if preview is not None and not skip_current_image else None
    return ProgressResponse(progress=state.progress, eta_relative=state.eta_relative(), state=fields,
                            current_image=image, textinfo=state.textinfo)


@router.post("/interrupt")
def interrupt(ctx: Ctx) -> dict:
    """Stop the running job; its request answers with the images finished so far."""
    ctx.queue.interrupt()
    return {}


@router.post("/skip")
def skip(ctx: Ctx) -> None:
    """Skip the current batch of the running job and go on with the next one."""
    ctx.queue.skip()
