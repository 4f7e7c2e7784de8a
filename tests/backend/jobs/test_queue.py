"""The job queue: FIFO order, many waiters, cancel/interrupt/skip, failures, bounded history."""
from __future__ import annotations

import gc
import json
import threading
import time
import weakref
from collections.abc import Iterator

import pytest

from backend.errors import Interrupted, ModelNotFound
from backend.jobs.progress import JobState
from backend.jobs.queue import Job, JobQueue, JobStatus

TIMEOUT = 10.0


@pytest.fixture
def queue() -> Iterator[JobQueue]:
    q = JobQueue(history=50)
    q.start()
    yield q
    q.stop()


def _blocker(q: JobQueue) -> tuple[Job, threading.Event, threading.Event]:
    """A running job that holds the worker until released."""
    started, release = threading.Event(), threading.Event()

    def fn(state: JobState) -> str:
        started.set()
        release.wait(TIMEOUT)
        return "blocker"

    job = q.submit("block", fn)
    assert started.wait(TIMEOUT)
    return job, started, release


def _until_interrupted(flag: str, started: threading.Event):
    def fn(state: JobState) -> str:
        started.set()
        deadline = time.time() + TIMEOUT
        while not getattr(state, flag) and time.time() < deadline:
            time.sleep(0.001)
        return f"stopped by {flag}"

    return fn


def test_nothing_runs_before_start_and_jobs_run_in_fifo_order() -> None:
    q = JobQueue()
    assert not q.running
    ran: list[int] = []
    jobs = [q.submit("t", lambda state, i=i: ran.append(i) or i) for i in range(5)]
    time.sleep(0.05)
    assert ran == [] and [j.status for j in jobs] == [JobStatus.queued] * 5
    assert [j.position for j in jobs] == [1, 2, 3, 4, 5]
    assert q.list() == jobs
    q.start()
    try:
        assert [j.wait(TIMEOUT) for j in jobs] == [0, 1, 2, 3, 4]
        assert ran == [0, 1, 2, 3, 4]
        assert [j.position for j in jobs] == [-1] * 5
        assert q.list() == list(reversed(jobs))  # finished: newest first
    finally:
        q.stop()
    assert not q.running


def test_twenty_concurrent_clients_are_all_answered_in_order(queue: JobQueue) -> None:
    n = 20
    barrier = threading.Barrier(n)
    submit_lock = threading.Lock()
    submitted: list[str] = []
    ran: list[int] = []
    answers: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(i: int, state: JobState) -> dict[str, int]:
        ran.append(i)
        time.sleep(0.002)
        return {"client": i, "square": i * i}

    def client(i: int) -> None:
        try:
            barrier.wait(TIMEOUT)
            with submit_lock:
                job = queue.submit("txt2img", lambda state: work(i, state), request={"client": i})
                submitted.append(job.id)
            answers[i] = job.wait(TIMEOUT)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert errors == []
    assert answers == {i: {"client": i, "square": i * i} for i in range(n)}
    jobs = [queue.get(job_id) for job_id in submitted]
    assert ran == [job.request["client"] for job in jobs]  # run in submission order
    finished = [job.finished for job in jobs]
    assert finished == sorted(finished)
    assert all(job.status is JobStatus.done for job in jobs)


def test_many_threads_can_wait_on_one_job(queue: JobQueue) -> None:
    blocker, _, release = _blocker(queue)
    job = queue.submit("t", lambda state: "shared answer")
    got: list[str] = []
    waiters = [threading.Thread(target=lambda: got.append(job.wait(TIMEOUT))) for _ in range(10)]
    for t in waiters:
        t.start()
    release.set()
    for t in waiters:
        t.join(TIMEOUT)
    assert got == ["shared answer"] * 10


def test_cancel_a_queued_job_it_never_runs(queue: JobQueue) -> None:
    blocker, _, release = _blocker(queue)
    ran: list[str] = []
    victim = queue.submit("t", lambda state: ran.append("victim"))
    after = queue.submit("t", lambda state: ran.append("after") or "after")
    assert (victim.position, after.position) == (1, 2)
    assert queue.cancel(victim.id) is victim
    assert victim.status is JobStatus.cancelled and victim.done
    assert after.position == 1
    with pytest.raises(Interrupted):
        victim.wait(TIMEOUT)
    release.set()
    assert after.wait(TIMEOUT) == "after"
    assert ran == ["after"]
    assert victim.to_dict()["status"] == "cancelled" and victim.to_dict()["error"]


def test_cancel_a_running_job_interrupts_it_and_keeps_what_it_returned(queue: JobQueue) -> None:
    started = threading.Event()
    job = queue.submit("t", _until_interrupted("interrupted", started))
    assert started.wait(TIMEOUT)
    assert job.status is JobStatus.running and job.position == 0 and queue.current() is job
    queue.cancel(job.id)
    assert job.wait(TIMEOUT) == "stopped by interrupted"
    assert job.status is JobStatus.cancelled
    assert queue.submit("t", lambda state: "next").wait(TIMEOUT) == "next"


def test_interrupt_and_skip_act_on_the_running_job(queue: JobQueue) -> None:
    assert queue.interrupt() is None and queue.skip() is None  # idle: no-op
    for flag, action in (("interrupted", queue.interrupt), ("skipped", queue.skip)):
        started = threading.Event()
        job = queue.submit("t", _until_interrupted(flag, started))
        assert started.wait(TIMEOUT)
        assert action() is job
        assert job.wait(TIMEOUT) == f"stopped by {flag}"
        assert job.status is JobStatus.done  # interrupt returns what is done, as A1111


def test_an_interrupt_before_the_job_begins_counting_is_kept(queue: JobQueue) -> None:
    """processing calls state.begin() after loading its model; a stop sent earlier must survive."""
    inside, gate = threading.Event(), threading.Event()
    seen: list[bool] = []

    def fn(state: JobState) -> None:
        inside.set()
        gate.wait(TIMEOUT)  # "loading the model"
        state.begin("txt2img", 1)
        seen.append(state.interrupted)

    job = queue.submit("t", fn)
    assert inside.wait(TIMEOUT)
    queue.interrupt()
    gate.set()
    job.wait(TIMEOUT)
    assert seen == [True]


def test_a_failing_job_does_not_stop_the_next(queue: JobQueue) -> None:
    def boom(state: JobState) -> None:
        raise ValueError("bad thing")

    failed = queue.submit("t", boom)
    ok = queue.submit("t", lambda state: 42)
    with pytest.raises(ValueError, match="bad thing"):
        failed.wait(TIMEOUT)
    assert ok.wait(TIMEOUT) == 42
    assert failed.status is JobStatus.failed and isinstance(failed.error, ValueError)
    assert failed.to_dict()["error"] == "bad thing"
    assert queue.running


def test_a_job_raising_interrupted_is_cancelled(queue: JobQueue) -> None:
    def stop(state: JobState) -> None:
        raise Interrupted("stopped")

    job = queue.submit("t", stop)
    with pytest.raises(Interrupted):
        job.wait(TIMEOUT)
    assert job.status is JobStatus.cancelled


def test_unknown_job_ids(queue: JobQueue) -> None:
    with pytest.raises(ModelNotFound):
        queue.get("nope")
    with pytest.raises(ModelNotFound):
        queue.cancel("nope")


def test_wait_times_out(queue: JobQueue) -> None:
    _, _, release = _blocker(queue)
    job = queue.submit("t", lambda state: None)
    with pytest.raises(TimeoutError):
        job.wait(0.01)
    release.set()
    job.wait(TIMEOUT)


class _Result:
    """A result object we can hold a weak reference to."""


def test_history_is_bounded_and_old_results_are_freed() -> None:
    q = JobQueue(history=10)
    q.start()
    try:
        refs: list[weakref.ref] = []
        jobs = []
        for _ in range(500):
            def fn(state: JobState) -> _Result:
                result = _Result()
                refs.append(weakref.ref(result))
                return result

            jobs.append(q.submit("t", fn).id)
        last = q.get(jobs[-1])
        last.wait(TIMEOUT)
        del last
        assert len(q.list()) <= 10
        with pytest.raises(ModelNotFound):
            q.get(jobs[0])
        gc.collect()
        assert len(refs) == 500
        assert sum(r() is not None for r in refs) <= 10
    finally:
        q.stop()


def test_last_state_follows_the_running_then_the_last_job(queue: JobQueue) -> None:
    idle = queue.last_state
    assert idle.job_count == 0 and idle.progress == 0.0
    job, _, release = _blocker(queue)
    assert queue.last_state is job.state
    assert job.state.job == "block" and job.state.progress == pytest.approx(0.01)  # begun, count unknown
    release.set()
    job.wait(TIMEOUT)
    assert queue.last_state is job.state
    assert job.state.job_count == 0 and job.state.progress == 0.0  # idle again, as A1111 after end()


def test_to_dict_is_json_and_tracks_progress(queue: JobQueue) -> None:
    step_reached, release = threading.Event(), threading.Event()

    def fn(state: JobState) -> str:
        state.begin("txt2img", 2)
        state.set_step(5, 10)
        step_reached.set()
        release.wait(TIMEOUT)
        return "ok"

    job = queue.submit("txt2img", fn, request={"prompt": "a cat"})
    assert step_reached.wait(TIMEOUT)
    data = job.to_dict()
    assert set(data) == {"id", "kind", "status", "created", "started", "finished", "position", "progress", "error"}
    assert data["status"] == "running" and data["position"] == 0
    assert data["progress"] == pytest.approx(0.01 + 0.25)
    release.set()
    job.wait(TIMEOUT)
    data = json.loads(json.dumps(job.to_dict()))
    assert data["status"] == "done" and data["progress"] == 1.0 and data["finished"] >= data["started"]
    assert len(job.id) == 32 and job.kind == "txt2img"


def test_stop_cancels_queued_jobs_and_interrupts_the_running_one() -> None:
    q = JobQueue()
    q.start()
    started = threading.Event()
    running = q.submit("t", _until_interrupted("interrupted", started))
    assert started.wait(TIMEOUT)
    queued = q.submit("t", lambda state: "never")
    q.stop(TIMEOUT)
    assert not q.running
    assert running.wait(TIMEOUT) == "stopped by interrupted"
    with pytest.raises(Interrupted):
        queued.wait(TIMEOUT)
