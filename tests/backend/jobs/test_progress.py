"""JobState: A1111's /progress numbers, the live-preview rule, interrupt/skip flags."""
from __future__ import annotations

import re

import pytest

from backend.jobs.progress import JobState


def test_idle_state_reports_nothing() -> None:
    state = JobState()
    assert state.progress == 0.0 and state.eta_relative() == 0.0
    assert state.to_dict() == {
        "skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
        "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0,
    }
    assert list(state.to_dict()) == ["skipped", "interrupted", "stopping_generation", "job", "job_count",
                                     "job_timestamp", "job_no", "sampling_step", "sampling_steps"]


def test_progress_is_a1111s_formula() -> None:
    state = JobState()
    state.begin("txt2img", 4)
    assert re.fullmatch(r"\d{14}", state.job_timestamp)
    assert state.progress == pytest.approx(0.01)  # A1111 adds 0.01 so the ETA never divides by zero
    state.next_job()
    state.set_step(5, 10)
    assert state.progress == pytest.approx(0.01 + 1 / 4 + 0.5 / 4)
    for _ in range(3):
        state.next_job()
    state.set_step(10, 10)
    assert state.progress == 1.0  # clamped
    unknown = JobState()
    unknown.begin("extras", -1)  # the count is not known yet: busy, A1111 shows 0.01
    assert unknown.progress == pytest.approx(0.01)


def test_eta_relative_is_elapsed_over_progress_minus_elapsed() -> None:
    state = JobState()
    state.begin("txt2img", 2)
    state.set_step(5, 10)  # progress 0.01 + 0.25 = 0.26
    assert state.time_start is not None
    now = state.time_start + 13.0
    assert state.eta_relative(now) == pytest.approx(13.0 / 0.26 - 13.0)
    state.end()
    assert state.eta_relative(now) == 0.0


def test_next_job_and_end() -> None:
    state = JobState()
    state.begin("txt2img", 2)
    state.set_step(3, 10, latent="latent")
    state.skip()
    state.current_image_sampling_step = 3
    state.next_job()
    assert (state.job_no, state.sampling_step, state.current_image_sampling_step, state.skipped) == (1, 0, 0, False)
    state.end()
    assert state.job == "" and state.job_count == 0 and state.progress == 0.0
    assert state.current_latent is None and state.current_image is None
    assert state.job_no == 1  # kept, as A1111 keeps it after end()


def test_begin_keeps_a_stop_requested_before_it() -> None:
    state = JobState()
    state.interrupt()
    state.skip()
    state.begin("txt2img", 1)
    assert state.interrupted and state.skipped
    assert state.to_dict()["interrupted"] is True


def _stepper(every_n: int) -> tuple[JobState, list[int]]:
    state = JobState()
    state.begin("txt2img", 1)
    made: list[int] = []

    def make(latent: object) -> str:
        made.append(state.sampling_step)
        return f"image@{latent}"

    for step in range(1, 11):
        state.set_step(step, 10, latent=step)
        state.maybe_update_preview(every_n, make)
    return state, made


def test_preview_every_n_steps() -> None:
    state, made = _stepper(3)
    assert made == [3, 6, 9]
    assert state.current_image == "image@9" and state.current_image_sampling_step == 9
    assert state.id_live_preview == 3


def test_preview_period_zero_means_every_step() -> None:
    _, made = _stepper(0)
    assert made == list(range(1, 11))


def test_preview_period_minus_one_means_only_at_the_end_of_each_batch() -> None:
    state, made = _stepper(-1)
    assert made == [] and state.current_image is None
    assert not state.preview_at_job_end(10, lambda latent: "no")
    assert state.preview_at_job_end(-1, lambda latent: f"final@{latent}")
    assert state.current_image == "final@10"


def test_no_preview_without_a_latent() -> None:
    state = JobState()
    state.begin("txt2img", 1)
    state.set_step(5, 10)
    assert not state.maybe_update_preview(1, lambda latent: "x")
    assert state.current_image is None


def test_a_failing_preview_is_turned_off_for_the_job(caplog: pytest.LogCaptureFixture) -> None:
    state = JobState()
    state.begin("txt2img", 1)
    calls: list[int] = []

    def broken(latent: object) -> None:
        calls.append(1)
        raise RuntimeError("VAE on the wrong device")

    for step in range(1, 6):
        state.set_step(step, 5, latent=step)
        assert not state.maybe_update_preview(1, broken)
    assert calls == [1]
    assert "live preview" in caplog.text
