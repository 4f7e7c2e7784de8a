"""Progress and interrupt/skip state of one running job.

The worker that runs a job owns its JobState; the API and UI read it and call
interrupt()/skip(). It knows nothing about Stable Diffusion.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobState:
    """A1111's `shared.state` fields, but one object per job instead of a global."""

    job: str = ""
    job_count: int = 0
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0
    textinfo: str | None = None
    time_start: float | None = None
    current_latent: Any = None
    current_image: Any = None
    current_image_sampling_step: int = 0
    interrupted: bool = False
    skipped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def begin(self, job: str, job_count: int) -> None:
        with self._lock:
            self.job, self.job_count, self.job_no = job, job_count, 0
            self.sampling_step = self.sampling_steps = 0
            self.interrupted = self.skipped = False
            self.time_start = time.time()

    def next_job(self) -> None:
        with self._lock:
            self.job_no += 1
            self.sampling_step = 0
            self.skipped = False

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
        """Fraction done over all jobs, as A1111's /progress computes it."""
        if self.job_count <= 0:
            return 0.0
        per_job = 1 / self.job_count
        done = self.job_no * per_job
        if self.sampling_steps > 0:
            done += per_job * self.sampling_step / self.sampling_steps
        return min(done, 1.0)
