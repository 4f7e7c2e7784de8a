"""Training (beyond A1111, which has no LoRA trainer): LoRA runs as jobs, and data-set preparation.

POST /sdapi/v1/train/lora queues a run (202 + job id) in the same FIFO as generation; GET .../{id} reports its
progress, loss history and saved files; POST .../{id}/stop ends it after a checkpoint (resume with
`"resume": true` and the same name). /train/dataset/scan and /train/dataset/prepare work on server folders.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from backend.api.deps import Ctx
from backend.api.errors import JobConflict
from backend.jobs.queue import JobStatus
from backend.training import dataset
from backend.training.lora import (
    MIXED_PRECISION,
    NETWORK_TYPES,
    SCHEDULERS,
    LoraTrainingParams,
    TrainingRun,
    available_optimizers,
    submit_training,
)

router = APIRouter(prefix="/train", tags=["train"])


class ScanRequest(BaseModel):
    folder: str
    resolution: int = 512


class PrepareRequest(BaseModel):
    source: str
    output: str
    resolution: int = 512
    crop: str = Field("centre", description="centre | focal")
    buckets: bool = False
    split: bool = False
    split_threshold: float = 1.5
    flip: bool = False
    remove_tags: list[str] = []
    trigger: str = ""
    default_caption: str = ""
    skip_duplicates: bool = True


class CaptionsRequest(BaseModel):
    folder: str
    remove_tags: list[str] = []
    trigger: str = ""


def _run_of(job_id: str, ctx: Any) -> tuple[Any, TrainingRun]:
    job = ctx.queue.get(job_id)
    if not isinstance(job.request, TrainingRun):
        raise JobConflict(f"job {job_id} ({job.kind}) is not a training run")
    return job, job.request


def _describe(job: Any, run: TrainingRun) -> dict[str, Any]:
    return {**job.to_dict(), **run.to_dict(), "job_status": job.status.value}


@router.get("/options")
def training_options() -> dict[str, Any]:
    """The choices of the enumerated fields (optimizers: those installed)."""
    return {"network_type": list(NETWORK_TYPES), "optimizer": list(available_optimizers()),
            "scheduler": list(SCHEDULERS), "mixed_precision": list(MIXED_PRECISION)}


@router.post("/lora", status_code=202)
def start_lora(params: LoraTrainingParams, ctx: Ctx) -> dict[str, Any]:  # type: ignore[valid-type]
    """Queue a LoRA training run; bad parameters answer 422 naming the field, before anything is queued."""
    job, run = submit_training(ctx, params)
    return _describe(job, run)


@router.get("/lora/{job_id}")
def lora_status(job_id: str, ctx: Ctx) -> dict[str, Any]:  # type: ignore[valid-type]
    """Status, step/total, ETA, loss history [[step, loss], ...], saved files and samples of a run."""
    return _describe(*_run_of(job_id, ctx))


@router.post("/lora/{job_id}/stop")
def stop_lora(job_id: str, ctx: Ctx) -> dict[str, Any]:  # type: ignore[valid-type]
    """A queued run never starts; a running one saves its resumable state at the next step and ends."""
    job, run = _run_of(job_id, ctx)
    if job.status is JobStatus.queued:
        ctx.queue.cancel(job_id)
    elif job.status is JobStatus.running:
        job.state.interrupt()
    return _describe(job, run)


@router.post("/dataset/scan")
def scan_dataset(req: ScanRequest) -> dict[str, Any]:
    """The images of a folder with their captions and the warnings (few, small, near-duplicate, unreadable)."""
    report = dataset.scan(req.folder, req.resolution)
    return {"folder": str(report.folder), "images": len(report.images), "warnings": report.warnings,
            "rows": report.rows(), "tag_frequency": dict(report.tag_frequency().most_common())}


@router.post("/dataset/prepare")
def prepare_dataset(req: PrepareRequest) -> dict[str, Any]:
    """Write the cropped / bucketed / flipped images and edited captions of `source` into `output`."""
    options = dataset.PrepareOptions(
        resolution=req.resolution, crop=req.crop, buckets=req.buckets, split=req.split,
        split_threshold=req.split_threshold, flip=req.flip, remove_tags=tuple(req.remove_tags), trigger=req.trigger,
        default_caption=req.default_caption, skip_duplicates=req.skip_duplicates)
    result = dataset.prepare(req.source, req.output, options)
    return {"output": str(result.output), "written": [str(p) for p in result.written], "skipped": result.skipped,
            "tag_frequency": dict(result.tag_frequency.most_common()), "buckets": result.bucket_counts}


@router.post("/dataset/captions")
def edit_captions(req: CaptionsRequest) -> dict[str, Any]:
    """Edit every caption of a folder in place (remove tags, put a trigger word first); the new frequencies."""
    counts = dataset.rewrite_captions(req.folder, remove=req.remove_tags, trigger=req.trigger)
    return {"tag_frequency": dict(counts.most_common())}
