"""The asynchronous job API (beyond A1111): submit, poll, fetch the result, cancel.

POST /sdapi/v1/jobs/txt2img and /sdapi/v1/jobs/img2img take the /txt2img and /img2img bodies
and answer 202 with the job id at once; the job waits in the same FIFO queue as /txt2img,
/img2img, the Extras and the UI.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.errors import JobConflict
from backend.api.models import (
    Img2ImgRequest,
    JobInfo,
    TextToImageResponse,
    Txt2ImgRequest,
    generation_response,
    img2img_processing,
    txt2img_processing,
)
from backend.jobs.queue import JobStatus
from backend.processing import Processed

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/txt2img", status_code=202, response_model=JobInfo)
def submit_txt2img(req: Txt2ImgRequest, ctx: Ctx) -> dict[str, Any]:  # type: ignore[valid-type]
    """Queue a txt2img request (same body as /txt2img); bad input is refused here, before queueing."""
    req, p = txt2img_processing(req, ctx)
    return ctx.submit(p, request=req).to_dict()


@router.post("/img2img", status_code=202, response_model=JobInfo)
def submit_img2img(req: Img2ImgRequest, ctx: Ctx) -> dict[str, Any]:  # type: ignore[valid-type]
    """Queue an img2img request (same body as /img2img); bad input, bad images included, is refused here."""
    req, p = img2img_processing(req, ctx)
    return ctx.submit(p, request=req).to_dict()


@router.get("", response_model=list[JobInfo])
def list_jobs(ctx: Ctx) -> list[dict[str, Any]]:
    """The running job, the queued ones in run order, then finished ones (newest first, the last 100)."""
    return [job.to_dict() for job in ctx.queue.list()]


@router.get("/{job_id}", response_model=JobInfo)
def get_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
    """Status, queue position and progress of one job (404 if unknown or long finished)."""
    return ctx.queue.get(job_id).to_dict()


@router.get("/{job_id}/result", response_model=TextToImageResponse,
            responses={409: {"description": "The job has no result (yet)"}})
def job_result(job_id: str, ctx: Ctx) -> TextToImageResponse:
    """A finished job's result, as /txt2img or /img2img answers it (again on every call, until DELETE releases it).

    409 while queued or running, or when there is no result (cancelled before it ran, released,
    or not a job of this API); a failed job answers the error /txt2img would have given.
    """
    job = ctx.queue.get(job_id)
    if job.status is JobStatus.failed:
        job.wait(0)  # raises the job's error, mapped to its HTTP status like any other
    if job.status in (JobStatus.queued, JobStatus.running):
        raise JobConflict(f"job {job_id} is {job.status.value}; poll GET /sdapi/v1/jobs/{job_id} until it is done")
    if job.request is None or not isinstance(job.result, Processed):
        raise JobConflict(f"job {job_id} ({job.kind}, {job.status.value}) has no result to fetch")
    return generation_response(job.request, job.result, ctx.options)


@router.delete("/{job_id}", response_model=JobInfo)
def cancel_job(job_id: str, ctx: Ctx) -> dict[str, Any]:
    """Cancel a queued job (it never runs) or interrupt a running one; a finished job's result is released."""
    job = ctx.queue.get(job_id)
    if job.done:
        job.release_result()
    else:
        job = ctx.queue.cancel(job_id)
    return job.to_dict()
