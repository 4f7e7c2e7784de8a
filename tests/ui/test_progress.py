"""Live progress in a real browser: the bar and preview during a long run, Interrupt, the server status line."""
from __future__ import annotations

from typing import Any

from backend.processing import StableDiffusionProcessingTxt2Img
from tests.ui.browser import set_number, tiny_generation, wait_for_text
from tests.ui.conftest import UIServer


def test_interrupt_during_a_long_run(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    tiny_generation(page, "txt2img", "a long night", steps=150)
    set_number(page, "txt2img_batch_count", 40)
    page.click("#txt2img_generate")

    bar = wait_for_text(page, "txt2img_progress", "step")
    assert "txt2img" in bar and "batch" in bar
    page.wait_for_selector("#txt2img_preview img", state="visible")
    page.click("#txt2img_interrupt")

    wait_for_text(page, "html_log_txt2img", "Interrupted")
    page.wait_for_selector("#txt2img_generate", state="visible")
    assert page.inner_text("#txt2img_progress").strip() == ""
    assert page.locator("#txt2img_gallery img").count() >= 1
    assert not ui_server.ctx.queue.list()[0].state.job  # the job is over, not still running


def test_a_job_from_elsewhere_shows_in_the_status_line(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    wait_for_text(page, "server_status", "Idle")
    # A job submitted by another client (the API and the CLI submit the same way).
    job = ui_server.ctx.submit(StableDiffusionProcessingTxt2Img(prompt="elsewhere", steps=150, width=64, height=64,
                                                                n_iter=40, do_not_save_samples=True))
    try:
        wait_for_text(page, "server_status", "txt2img")
    finally:
        ui_server.ctx.queue.cancel(job.id)
    job.wait(60)
    wait_for_text(page, "server_status", "Idle")


def test_progress_text_and_eta() -> None:
    from backend.jobs.progress import JobState
    from ui.progress import format_eta, state_text

    assert [format_eta(s) for s in (0, 9.6, 75, 3725)] == ["0s", "10s", "1m 15s", "1h 02m"]
    state = JobState()
    state.begin("txt2img", 2)
    state.set_step(5, 20)
    text = state_text(state)
    assert text.startswith("txt2img · 13%") and "step 5/20" in text and "batch 1/2" in text and "ETA" in text


def test_job_html_while_queued_and_running() -> None:
    from backend.jobs.queue import Job, JobStatus
    from ui.progress import job_html

    queued = Job(kind="txt2img", position=3)
    assert "2 jobs ahead" in job_html(queued)
    queued.status = JobStatus.running
    queued.state.begin("txt2img", 1)
    assert "progress-fill" in job_html(queued)
    queued.status = JobStatus.done
    assert job_html(queued) == ""
