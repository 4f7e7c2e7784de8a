"""Live progress: a job's bar, ETA and preview while it waits and runs, and the server's status line.

The UI never runs work itself: it submits to the shared job queue and polls the job's
JobState (the same object the API's /progress reads) every POLL_INTERVAL seconds.
"""
from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import gradio as gr

from backend.context import AppContext
from backend.jobs.progress import JobState
from backend.jobs.queue import Job, JobStatus
from ui.common import error_text

POLL_INTERVAL = 0.5
# Job kinds shown under another name (the rest are shown as they are: txt2img, img2img, extras).
JOB_LABELS = {"load-model": "loading checkpoint"}


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds}s"


def _bar(fraction: float, text: str) -> str:
    percent = max(0.0, min(1.0, fraction)) * 100
    return (f"<div class='progress-bar'><div class='progress-fill' style='width:{percent:.1f}%'></div>"
            f"<div class='progress-text'>{html.escape(text)}</div></div>")


def state_text(state: JobState) -> str:
    """The text on a progress bar, e.g. "txt2img · 45% · step 9/20 · batch 1/2 · ETA 3s"."""
    parts = [JOB_LABELS.get(state.job, state.job or "working"), f"{int(state.progress * 100)}%"]
    if state.sampling_steps:
        parts.append(f"step {state.sampling_step}/{state.sampling_steps}")
    if state.job_count > 1:
        parts.append(f"batch {min(state.job_no + 1, state.job_count)}/{state.job_count}")
    eta = state.eta_relative()
    if state.progress > 0.01 and eta > 0:
        parts.append(f"ETA {format_eta(eta)}")
    if state.textinfo:
        parts.append(str(state.textinfo))
    return " · ".join(parts)


def job_html(job: Job) -> str:
    """A job's progress bar: its place in the queue while waiting, its progress while running."""
    if job.status is JobStatus.queued:
        ahead = max(job.position - 1, 0)
        return _bar(0, f"Waiting in queue ({ahead} job{'s' if ahead != 1 else ''} ahead)")
    if job.status is JobStatus.running:
        state = job.state
        return _bar(state.progress, state_text(state))
    return ""


def watch(job: Job, interval: float = POLL_INTERVAL) -> Iterator[tuple[str, Any]]:
    """Until `job` finishes, every `interval` s: (progress markup, preview update or gr.skip()).

    A new preview is sent only when the job's live preview changed since the last one.
    """
    shown = -1
    while not job.done:
        state = job.state
        preview: Any = gr.skip()
        if state.id_live_preview != shown and state.current_image is not None:
            shown = state.id_live_preview
            preview = gr.update(value=state.current_image, visible=True)
        yield job_html(job), preview
        _pause(job, interval)


def _pause(job: Job, interval: float) -> None:
    """Sleep up to `interval` s, waking as soon as the job ends (its outcome is read later)."""
    try:
        job.wait(interval)
    except Exception:  # TimeoutError while it runs; its own error once it ended, read by outcome()
        pass


def outcome(job: Job) -> Any:
    """The job's result; its error as a gr.Error (a job cancelled before it ran reads "Interrupted")."""
    try:
        return job.wait(0)
    except Exception as e:  # shown on the page; the server and the page go on working
        raise gr.Error(error_text(e)) from e
    finally:
        job.release_result()


def status_html(ctx: AppContext) -> str:
    """The top bar's line: what the server is doing now, whoever started it (UI, API or CLI)."""
    jobs = ctx.queue.list()
    running = next((j for j in jobs if j.status is JobStatus.running), None)
    queued = sum(1 for j in jobs if j.status is JobStatus.queued)
    if running is None and not queued:
        return "<span class='server-status idle'>Idle</span>"
    text = state_text(running.state) if running is not None else "waiting"
    if queued:
        text += f" · {queued} queued"
    return f"<span class='server-status busy'>{html.escape(text)}</span>"
