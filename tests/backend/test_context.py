"""AppContext with the job queue: every generation goes through the one FIFO, with progress and previews."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.jobs.queue import JobStatus
from backend.processing import Processed, StableDiffusionProcessingTxt2Img, process_images

TIMEOUT = 120.0


def _p(**kw) -> StableDiffusionProcessingTxt2Img:
    base = dict(prompt="a cozy cabin", seed=42, steps=4, width=64, height=64, sampler_name="Euler",
                do_not_save_samples=True, do_not_save_grid=True)
    base.update(kw)
    return StableDiffusionProcessingTxt2Img(**base)


def _wait_for(predicate, timeout: float = TIMEOUT) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, "timed out"
        time.sleep(0.002)


def test_build_starts_no_thread_and_generate_needs_start(tmp_path: Path, models_dir: Path) -> None:
    before = threading.active_count()
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(models_dir)], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    assert threading.active_count() == before and not ctx.queue.running
    with pytest.raises(RuntimeError, match="start"):
        ctx.generate(_p())
    ctx.start()
    try:
        assert ctx.queue.running
        assert len(ctx.generate(_p(steps=2)).images) == 1
    finally:
        ctx.stop()
    assert not ctx.queue.running


def test_generate_goes_through_the_queue(app_ctx) -> None:
    processed = app_ctx.generate(_p())
    assert isinstance(processed, Processed) and len(processed.images) == 1
    [job] = app_ctx.queue.list()
    assert job.kind == "txt2img" and job.status is JobStatus.done
    assert job.result is None  # handed to the caller, not kept in the history


def test_submitted_jobs_run_in_order_and_match_generate(app_ctx) -> None:
    jobs = [app_ctx.submit(_p(seed=seed), request={"seed": seed}) for seed in (1, 2, 3)]
    results = [job.wait(TIMEOUT) for job in jobs]
    assert [r.seed for r in results] == [1, 2, 3]
    assert [j.finished for j in jobs] == sorted(j.finished for j in jobs)
    assert [j.request for j in app_ctx.queue.list()] == [{"seed": 3}, {"seed": 2}, {"seed": 1}]
    again = app_ctx.generate(_p(seed=2))
    assert again.images[0].tobytes() == results[1].images[0].tobytes()


def test_interrupt_a_running_generation_from_another_thread(app_ctx) -> None:
    steps = 500
    job = app_ctx.submit(_p(steps=steps, n_iter=3))
    _wait_for(lambda: job.status is JobStatus.running and job.state.sampling_step >= 3)
    assert app_ctx.state is job.state
    interrupter = threading.Thread(target=app_ctx.queue.interrupt)
    interrupter.start()
    interrupter.join()
    processed = job.wait(TIMEOUT)
    # A1111: interrupt keeps the partly denoised first batch and runs no more.
    assert processed.interrupted and len(processed.images) == 1
    assert job.state.sampling_step < steps and job.state.job_no == 1
    assert job.status is JobStatus.done and app_ctx.queue.list()[0] is job
    assert len(app_ctx.generate(_p(steps=2)).images) == 1  # the next job runs normally


def test_progress_fields_during_a_run(app_ctx) -> None:
    app_ctx.options.set("show_progress_every_n_steps", 5)
    steps = 150
    snapshots: list[dict] = []
    job = app_ctx.submit(_p(steps=steps))

    def poll() -> None:
        while not job.done:
            state = app_ctx.state
            image = state.current_image
            snapshots.append({**state.to_dict(), "progress": state.progress, "eta": state.eta_relative(),
                              "image": image.size if isinstance(image, Image.Image) else None})
            time.sleep(0.002)

    poller = threading.Thread(target=poll)
    poller.start()
    job.wait(TIMEOUT)
    poller.join(TIMEOUT)

    sampling = [s for s in snapshots if s["job"] == "txt2img" and s["sampling_step"] > 0]
    assert len(sampling) > 5
    assert all(s["job_count"] == 1 and s["sampling_steps"] == steps and len(s["job_timestamp"]) == 14
               for s in sampling)
    assert all(0.01 < s["progress"] <= 1 for s in sampling)
    # A1111's +0.01 reaches 1 a little before the last step; before that the ETA is positive.
    early = [s for s in sampling if s["sampling_step"] < 0.98 * steps]
    assert early and all(s["progress"] < 1 and s["eta"] > 0 for s in early)
    progress = [s["progress"] for s in sampling]
    assert progress == sorted(progress)
    assert (8, 8) in {s["image"] for s in sampling}  # the cheap preview is latent-sized (64 / 8)
    # Idle again afterwards, as A1111 reports between jobs.
    assert app_ctx.state is job.state and app_ctx.state.job_count == 0 and app_ctx.state.progress == 0.0


@pytest.mark.parametrize("options, expected", [
    ({}, (8, 8)),                                                    # default: every 10 steps, cheap
    ({"show_progress_every_n_steps": -1}, (8, 8)),                   # only when the batch ends
    ({"show_progress_type": "Full"}, (64, 64)),                      # VAE decode
    ({"live_previews_enable": False}, None),
])
def test_live_preview_options(app_ctx, options: dict, expected) -> None:
    for key, value in options.items():
        app_ctx.options.set(key, value)
    ctx = app_ctx.processing_context()
    process_images(_p(steps=10), ctx)
    image = ctx.state.current_image
    assert (image.size if image is not None else None) == expected
    if image is not None:
        assert image.mode == "RGB" and ctx.state.id_live_preview == 1


def test_preview_waits_for_the_period(app_ctx) -> None:
    ctx = app_ctx.processing_context()
    process_images(_p(steps=9), ctx)  # fewer steps than the default period of 10
    assert ctx.state.current_image is None


def test_stop_interrupts_the_running_job_and_cancels_the_queued(tmp_path: Path, models_dir: Path) -> None:
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(models_dir)], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    running = ctx.submit(_p(steps=500))
    queued = ctx.submit(_p())
    _wait_for(lambda: running.state.sampling_step >= 1)
    ctx.stop(TIMEOUT)
    assert running.wait(TIMEOUT).interrupted
    assert queued.status is JobStatus.cancelled
