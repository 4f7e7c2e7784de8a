"""A FIFO of jobs run one at a time by a single worker thread (the one that owns the device).

UI, API and CLI all submit here, so generations never overlap. A job is any callable
taking its JobState; the queue knows nothing about Stable Diffusion. Finished jobs are
kept for listing and polling up to `history`, then dropped with their results, so
memory stays flat however many jobs pass through.
"""
from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from backend.errors import Interrupted, ModelNotFound, WebUIError
from backend.jobs.progress import JobState

log = logging.getLogger(__name__)


class JobStatus(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


FINISHED = (JobStatus.done, JobStatus.failed, JobStatus.cancelled)


@dataclass(eq=False)
class Job:
    """One submitted callable, its status, progress and outcome.

    `position` is the place in the queue: 0 while running, 1.. while queued, -1 once finished.
    The queue sets every field; callers only read them (and wait).
    """

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    kind: str = ""
    status: JobStatus = JobStatus.queued
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    state: JobState = field(default_factory=JobState)
    result: Any = None
    error: BaseException | None = None
    request: Any = None
    position: int = 0
    _fn: Callable[[JobState], Any] | None = field(default=None, repr=False)
    _cancel_requested: bool = field(default=False, repr=False)
    _final_progress: float = field(default=0.0, repr=False)
    _finished_event: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def done(self) -> bool:
        """Finished one way or another (done, failed or cancelled)."""
        return self._finished_event.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job finishes; return its result or raise its error.

        A job cancelled before it ran raises `Interrupted`. Raises TimeoutError if
        `timeout` seconds pass first. Any number of threads may wait on one job.
        """
        if not self._finished_event.wait(timeout):
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result

    def release_result(self) -> None:
        """Drop the result once its one consumer has it (the job stays listed)."""
        self.result = None

    def to_dict(self) -> dict[str, Any]:
        """What the API lists for a job (JSON-able)."""
        if self.status is JobStatus.running:
            progress = self.state.progress
        elif self.status is JobStatus.done:
            progress = 1.0
        else:
            progress = self._final_progress
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.status.value,
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "position": self.position,
            "progress": progress,
            "error": None if self.error is None else str(self.error),
        }


class JobQueue:
    """FIFO of jobs with ids and one worker thread, started and stopped explicitly."""

    def __init__(self, history: int = 100, state_factory: Callable[[], JobState] = JobState) -> None:
        """`history`: finished jobs kept for get()/list(); `state_factory` makes each job's JobState."""
        self.history = max(0, int(history))
        self._state_factory = state_factory
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._finished: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._current: Job | None = None
        self._last_state: JobState = state_factory()
        self._thread: threading.Thread | None = None
        self._stopping = False

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread (no-op if it is running)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="job-queue-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel queued jobs, interrupt the running one and wait up to `timeout` s for the worker to end."""
        with self._cond:
            self._stopping = True
            for job in list(self._pending):
                self._cancel_queued(job)
            if self._current is not None:
                self._current.state.interrupt()
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("job queue worker still busy after %s s", timeout)

    @property
    def running(self) -> bool:
        """Whether the worker thread is alive and accepting work."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    # ---- submitting and looking up ----------------------------------------------------------

    def new_state(self) -> JobState:
        """A fresh JobState of the kind this queue gives its jobs (for work run outside the queue)."""
        return self._state_factory()

    def submit(self, kind: str, fn: Callable[[JobState], Any], *, request: Any = None) -> Job:
        """Queue `fn` to run as `fn(job.state)` after every job submitted before it; returns at once."""
        job = Job(kind=kind, state=self.new_state(), request=request, _fn=fn)
        with self._cond:
            self._pending.append(job)
            self._jobs[job.id] = job
            job.position = len(self._pending)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id, queued, running or still in the history."""
        with self._cond:
            job = self._jobs.get(job_id)
        if job is None:
            raise ModelNotFound("job", job_id)
        return job

    def list(self) -> list[Job]:
        """Running and queued jobs in run order, then finished ones, newest first."""
        with self._cond:
            active = ([self._current] if self._current is not None else []) + list(self._pending)
            return active + list(reversed(self._finished))

    def current(self) -> Job | None:
        """The running job, if any."""
        return self._current

    @property
    def last_state(self) -> JobState:
        """The running job's state, else the last finished job's, else an idle one (what /progress shows)."""
        current = self._current
        return current.state if current is not None else self._last_state

    # ---- stopping jobs ----------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job:
        """A queued job is dropped and never runs; a running one is interrupted. Finished: no-op."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                raise ModelNotFound("job", job_id)
            if job.status is JobStatus.queued:
                self._cancel_queued(job)
            elif job.status is JobStatus.running:
                job._cancel_requested = True
                job.state.interrupt()
        return job

    def interrupt(self) -> Job | None:
        """Interrupt the running job (A1111's /interrupt: it returns what is done). No-op when idle."""
        job = self._current
        if job is not None:
            job.state.interrupt()
        return job

    def skip(self) -> Job | None:
        """Skip the running job's current batch (A1111's /skip). No-op when idle."""
        job = self._current
        if job is not None:
            job.state.skip()
        return job

    # ---- the worker -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                job = self._pending.popleft()
                job.status, job.started, job.position = JobStatus.running, time.time(), 0
                self._current = job
                self._renumber()
            self._run(job)

    def _run(self, job: Job) -> None:
        fn, job._fn = job._fn, None  # the callable may hold the whole request; free it with the job
        state = job.state
        state.begin(job.kind, -1)
        result: Any = None
        error: BaseException | None = None
        try:
            assert fn is not None
            result = fn(state)
        except BaseException as e:  # whatever a job raises is its own failure, never the worker's
            error = e
            if isinstance(e, WebUIError):
                log.info("job %s (%s) stopped: %s", job.id, job.kind, e)
            else:
                log.exception("job %s (%s) failed", job.id, job.kind)
            # Keep the error (and its line numbers) but not the tensors its frames' locals hold.
            traceback.clear_frames(e.__traceback__)
        finally:
            job._final_progress = state.progress
            state.end()
        with self._cond:
            job.result, job.error, job.finished = result, error, time.time()
            if isinstance(error, Interrupted) or job._cancel_requested:
                job.status = JobStatus.cancelled
            else:
                job.status = JobStatus.failed if error is not None else JobStatus.done
            self._current = None
            self._last_state = state
            self._retire(job)
            job._finished_event.set()  # under the lock, so `done` and `status` never disagree

    # ---- bookkeeping (called with the lock held) --------------------------------------------

    def _cancel_queued(self, job: Job) -> None:
        self._pending.remove(job)
        job._fn = None
        job.status, job.finished = JobStatus.cancelled, time.time()
        job._cancel_requested = True
        job.error = Interrupted(f"job {job.id} was cancelled before it ran")
        self._retire(job)
        self._renumber()
        job._finished_event.set()

    def _retire(self, job: Job) -> None:
        job.position = -1
        self._finished.append(job)
        while len(self._finished) > self.history:
            old = self._finished.popleft()
            self._jobs.pop(old.id, None)

    def _renumber(self) -> None:
        for i, job in enumerate(self._pending, start=1):
            job.position = i
