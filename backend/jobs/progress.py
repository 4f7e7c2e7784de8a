"""Progress, live preview and interrupt/skip state of one job.

The worker that runs a job owns its JobState; the API and UI read it and call
interrupt()/skip(). It knows nothing about Stable Diffusion: the preview is made
by a function the caller passes in.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class JobState:
    """A1111's `shared.state` fields, but one object per job instead of a global.

    Because each job has its own state, nothing here clears `interrupted` or `skipped`:
    a stop requested while the job is still loading its model is kept until sampling
    starts (A1111 resets both in `begin`, which it calls before loading).
    """

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    job_timestamp: str = "0"
    sampling_step: int = 0
    sampling_steps: int = 0
    textinfo: str | None = None
    time_start: float | None = None
    current_latent: Any = None
    current_image: Any = None
    current_image_sampling_step: int = 0
    id_live_preview: int = 0
    interrupted: bool = False
    skipped: bool = False
    stopping_generation: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _preview_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _preview_failed: bool = field(default=False, repr=False)

    def begin(self, job: str, job_count: int) -> None:
        """Start (or restart) counting: `job_count` batches, -1 while the count is not known yet."""
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step = self.sampling_steps = 0
            self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
            self.time_start = time.time()
            self.current_latent = self.current_image = None
            self.current_image_sampling_step = self.id_live_preview = 0
            self.textinfo = None

    def next_job(self) -> None:
        """One batch is done; the next one starts at step 0."""
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0
            self.current_image_sampling_step = 0
            self.skipped = False

    def end(self) -> None:
        """The job is over: report idle (A1111's `end`) and let go of the latent and preview."""
        with self._lock:
            self.job, self.job_count = "", 0
            self.current_latent = self.current_image = None

    def set_step(self, step: int, steps: int, latent: Any = None) -> None:
        with self._lock:
            self.sampling_step, self.sampling_steps = step, steps
            if latent is not None:
                self.current_latent = latent

    def interrupt(self) -> None:
        self.interrupted = True

    def skip(self) -> None:
        self.skipped = True

    @property
    def progress(self) -> float:
        """Fraction done over all batches, exactly as A1111's /sdapi/v1/progress reports it.

        0 when no job is counted (idle); otherwise 0.01 more than the work done, which
        A1111 adds so the ETA never divides by zero, clamped to 1.
        """
        return min(self._unclamped_progress(), 1.0)

    def eta_relative(self, now: float | None = None) -> float:
        """Seconds left, A1111's way: elapsed / progress - elapsed (0 when idle)."""
        progress = self._unclamped_progress()
        if progress <= 0 or self.time_start is None:
            return 0.0
        elapsed = (time.time() if now is None else now) - self.time_start
        return elapsed / progress - elapsed

    def _unclamped_progress(self) -> float:
        with self._lock:
            job_count, job_no = self.job_count, self.job_no
            step, steps = self.sampling_step, self.sampling_steps
        if job_count == 0:
            return 0.0
        done = 0.01
        if job_count > 0:
            done += job_no / job_count
            if steps > 0:
                done += step / steps / job_count
        return done

    def to_dict(self) -> dict[str, Any]:
        """The `state` object of A1111's /sdapi/v1/progress response, same keys and order."""
        with self._lock:
            return {
                "skipped": self.skipped,
                "interrupted": self.interrupted,
                "stopping_generation": self.stopping_generation,
                "job": self.job,
                "job_count": self.job_count,
                "job_timestamp": self.job_timestamp,
                "job_no": self.job_no,
                "sampling_step": self.sampling_step,
                "sampling_steps": self.sampling_steps,
            }

    def maybe_update_preview(self, every_n_steps: int, make_preview: Callable[[Any], Any]) -> bool:
        """Refresh `current_image` from `current_latent` when `every_n_steps` steps passed since the last one.

        A1111's rule (shared_state.set_current_image): at least N steps since the last
        preview; 0 means every time; -1 means never during sampling, only at the end of
        each batch (see preview_at_job_end). Returns whether a new preview was made.
        """
        if every_n_steps == -1:
            return False
        with self._lock:
            due = self.sampling_step - self.current_image_sampling_step >= every_n_steps
        return due and self._update_preview(make_preview)

    def preview_at_job_end(self, every_n_steps: int, make_preview: Callable[[Any], Any]) -> bool:
        """With `every_n_steps == -1`, show the batch's last latent when it finishes (A1111's nextjob)."""
        return every_n_steps == -1 and self._update_preview(make_preview)

    def _update_preview(self, make_preview: Callable[[Any], Any]) -> bool:
        # Non-blocking: if another thread is already making a preview, this one is not needed.
        if self._preview_failed or not self._preview_lock.acquire(blocking=False):
            return False
        try:
            with self._lock:
                latent, step = self.current_latent, self.sampling_step
            if latent is None:
                return False
            try:
                image = make_preview(latent)
            except Exception as e:  # a preview must never fail the job; A1111 ignores these too
                log.warning("live preview turned off for this job: %s", e)
                self._preview_failed = True
                return False
            with self._lock:
                self.current_image = image
                self.current_image_sampling_step = step
                self.id_live_preview += 1
            return True
        finally:
            self._preview_lock.release()
