"""Tests for backend/sampling/registry.py: A1111's tables, name resolution and schedule rules."""
from __future__ import annotations

import math
import types

import pytest
import torch

from backend.errors import InvalidRequest
from backend.sampling import registry, schedules
from backend.sampling.registry import (
    AUTOMATIC,
    SAMPLERS,
    SCHEDULERS,
    SamplerParams,
    build_sigmas,
    find_sampler,
    find_scheduler,
    img2img_sigmas,
    img2img_steps,
    resolve_sampler_and_scheduler,
    run_sampler,
    sampler_extra_infotext,
    scheduler_label_for_infotext,
)
from backend.sampling.schedules import DiscreteSchedule, scaled_linear_alphas_cumprod

A1111_SAMPLERS = [
    ("DPM++ 2M", ["k_dpmpp_2m"]), ("DPM++ SDE", ["k_dpmpp_sde"]), ("DPM++ 2M SDE", ["k_dpmpp_2m_sde"]),
    ("DPM++ 2M SDE Heun", ["k_dpmpp_2m_sde_heun"]), ("DPM++ 2S a", ["k_dpmpp_2s_a"]), ("DPM++ 3M SDE", ["k_dpmpp_3m_sde"]),
    ("Euler a", ["k_euler_a", "k_euler_ancestral"]), ("Euler", ["k_euler"]), ("LMS", ["k_lms"]), ("Heun", ["k_heun"]),
    ("DPM2", ["k_dpm_2"]), ("DPM2 a", ["k_dpm_2_a"]), ("DPM fast", ["k_dpm_fast"]), ("DPM adaptive", ["k_dpm_ad"]),
    ("Restart", ["restart"]), ("DDIM", ["ddim"]), ("DDIM CFG++", ["ddim_cfgpp"]), ("PLMS", ["plms"]),
    ("UniPC", ["unipc"]), ("LCM", ["k_lcm"]),
]
A1111_SCHEDULERS = [
    ("automatic", "Automatic"), ("uniform", "Uniform"), ("karras", "Karras"), ("exponential", "Exponential"),
    ("polyexponential", "Polyexponential"), ("sgm_uniform", "SGM Uniform"), ("kl_optimal", "KL Optimal"),
    ("align_your_steps", "Align Your Steps"), ("simple", "Simple"), ("normal", "Normal"), ("ddim", "DDIM"),
    ("beta", "Beta"),
]


@pytest.fixture(scope="module")
def schedule() -> DiscreteSchedule:
    return DiscreteSchedule(scaled_linear_alphas_cumprod())


def test_tables_are_in_a1111_order() -> None:
    assert [(s.name, list(s.aliases)) for s in SAMPLERS] == A1111_SAMPLERS
    assert [(s.name, s.label) for s in SCHEDULERS] == A1111_SCHEDULERS


@pytest.mark.parametrize(("name", "aliases"), A1111_SAMPLERS)
def test_every_sampler_name_and_alias_resolves(name: str, aliases: list[str]) -> None:
    for written in (name, name.lower(), name.upper(), *aliases, *(a.upper() for a in aliases)):
        assert find_sampler(written).name == name


@pytest.mark.parametrize(("name", "label"), A1111_SCHEDULERS)
def test_every_scheduler_name_and_label_resolves(name: str, label: str) -> None:
    for written in (name, label, label.lower()):
        assert find_scheduler(written).name == name


def test_unknown_names_are_not_found() -> None:
    assert find_sampler("Euler b") is None
    assert find_scheduler("cosine") is None
    assert find_scheduler("SGMUniform").name == "sgm_uniform"


def test_options_match_a1111() -> None:
    assert find_sampler("DPM++ SDE").api_options() == {"scheduler": "karras", "second_order": True, "brownian_noise": True}
    assert find_sampler("DPM++ 2M SDE Heun").api_options() == {
        "scheduler": "exponential", "brownian_noise": True, "solver_type": "heun"}
    assert find_sampler("DPM2 a").api_options() == {
        "scheduler": "karras", "discard_next_to_last_sigma": True, "uses_ensd": True, "second_order": True}
    assert find_sampler("Euler").api_options() == {}
    assert find_scheduler("karras").api_dict() == {
        "name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}
    assert find_scheduler("sgm_uniform").api_dict()["aliases"] == ["SGMUniform"]


def test_second_order_samplers_count_two_denoiser_calls_per_step() -> None:
    second = {s.name for s in SAMPLERS if s.total_steps(10) == 20}
    assert second == {"DPM++ SDE", "DPM++ 2S a", "Heun", "DPM2", "DPM2 a", "Restart"}


@pytest.mark.parametrize(("sampler", "scheduler", "expected"), [
    ("DPM++ 2M Karras", None, ("DPM++ 2M", "Automatic")),
    ("DPM++ SDE Karras", None, ("DPM++ SDE", "Automatic")),
    ("DPM++ 2M SDE Exponential", None, ("DPM++ 2M SDE", "Automatic")),
    ("DPM++ 2M SDE Karras", None, ("DPM++ 2M SDE", "Karras")),
    ("DPM++ 2M SDE Heun Karras", None, ("DPM++ 2M SDE Heun", "Karras")),
    ("DPM2 a Karras", None, ("DPM2 a", "Automatic")),
    ("LMS Karras", None, ("LMS", "Karras")),
    ("Euler a", None, ("Euler a", "Automatic")),
    ("Euler SGMUniform", None, ("Euler", "SGM Uniform")),
    ("Euler", "Align Your Steps", ("Euler", "Align Your Steps")),
    ("Euler", "karras", ("Euler", "Karras")),
    ("DPM++ 2M", "Karras", ("DPM++ 2M", "Automatic")),
    ("DPM++ 2M", "Exponential", ("DPM++ 2M", "Exponential")),
    ("DDIM", None, ("DDIM", "Automatic")),
    ("Nonexistent", None, ("DPM++ 2M", "Automatic")),
    ("k_euler", None, ("DPM++ 2M", "Automatic")),
    ("Euler", "Cosine", ("Euler", "Automatic")),
    ("Euler", "SGMUniform", ("Euler", "Automatic")),
    (None, None, ("DPM++ 2M", "Automatic")),
    ("", "", ("DPM++ 2M", "Automatic")),
])
def test_resolution_follows_get_sampler_and_scheduler(sampler, scheduler, expected) -> None:
    found_sampler, found_scheduler = resolve_sampler_and_scheduler(sampler, scheduler)
    assert (found_sampler.name, found_scheduler.label) == expected


def test_resolution_without_automatic_conversion_keeps_the_default() -> None:
    sampler, scheduler = resolve_sampler_and_scheduler("DPM++ 2M Karras", None, convert_automatic=False)
    assert (sampler.name, scheduler.label) == ("DPM++ 2M", "Karras")


@pytest.mark.parametrize(("sampler", "scheduler", "label"), [
    ("DPM++ 2M", "automatic", "Karras"), ("DPM++ 2M SDE", "automatic", "Exponential"), ("Euler a", "automatic", "Automatic"),
    ("DDIM", "automatic", "Automatic"), ("Euler", "normal", "Normal"), ("DPM++ 2M", "exponential", "Exponential"),
])
def test_scheduler_label_for_infotext(sampler: str, scheduler: str, label: str) -> None:
    assert scheduler_label_for_infotext(find_sampler(sampler), find_scheduler(scheduler)) == label


def _model_range(schedule: DiscreteSchedule) -> tuple[float, float]:
    return schedule.sigma_min.item(), schedule.sigma_max.item()


def test_automatic_uses_the_samplers_default_or_the_model_sigmas(schedule: DiscreteSchedule) -> None:
    lo, hi = _model_range(schedule)
    assert torch.equal(build_sigmas(find_sampler("DPM++ 2M"), AUTOMATIC, 20, schedule), schedules.karras(20, lo, hi))
    assert torch.equal(build_sigmas(find_sampler("DPM++ 2M SDE"), AUTOMATIC, 20, schedule),
                       schedules.exponential(20, lo, hi))
    assert torch.equal(build_sigmas(find_sampler("Euler"), AUTOMATIC, 20, schedule), schedule.get_sigmas(20))
    assert torch.equal(build_sigmas(find_sampler("Euler"), find_scheduler("uniform"), 20, schedule), schedule.get_sigmas(20))
    assert torch.equal(build_sigmas(find_sampler("DPM++ 2M"), find_scheduler("polyexponential"), 7, schedule),
                       schedules.polyexponential(7, lo, hi))


def test_discard_next_to_last_sigma(schedule: DiscreteSchedule) -> None:
    lo, hi = _model_range(schedule)
    full = schedules.karras(21, lo, hi)
    dpm2 = build_sigmas(find_sampler("DPM2"), AUTOMATIC, 20, schedule)
    assert len(dpm2) == 21 and torch.equal(dpm2, torch.cat([full[:-2], full[-1:]]))
    euler = build_sigmas(find_sampler("Euler"), AUTOMATIC, 20, schedule, opts={"always_discard_next_to_last_sigma": True})
    uniform = schedule.get_sigmas(21)
    assert torch.equal(euler, torch.cat([uniform[:-2], uniform[-1:]]))
    extras = registry.schedule_extra_infotext(find_sampler("Euler"), AUTOMATIC, schedule,
                                              opts={"always_discard_next_to_last_sigma": True})
    assert extras == {"Discard penultimate sigma": True}
    assert registry.schedule_extra_infotext(find_sampler("DPM2"), AUTOMATIC, schedule,
                                            opts={"always_discard_next_to_last_sigma": True}) == {}


def test_opts_override_sigma_range_and_rho(schedule: DiscreteSchedule) -> None:
    lo, hi = _model_range(schedule)
    karras, dpmpp = find_scheduler("karras"), find_sampler("DPM++ 2M")
    opts = {"sigma_min": 0.05, "sigma_max": 10.0, "rho": 5.0}
    assert torch.equal(build_sigmas(dpmpp, karras, 10, schedule, opts=opts), schedules.karras(10, 0.05, 10.0, rho=5.0))
    assert registry.schedule_extra_infotext(dpmpp, karras, schedule, opts=opts) == {
        "Schedule min sigma": 0.05, "Schedule max sigma": 10.0, "Schedule rho": 5.0}
    # rho equal to the scheduler's default, or on a scheduler without rho, is not an override.
    assert registry.schedule_extra_infotext(dpmpp, karras, schedule, opts={"rho": 7.0}) == {}
    exponential = find_scheduler("exponential")
    assert torch.equal(build_sigmas(dpmpp, exponential, 10, schedule, opts={"rho": 3.0}), schedules.exponential(10, lo, hi))
    old = build_sigmas(dpmpp, karras, 10, schedule, opts={"use_old_karras_scheduler_sigmas": True})
    assert torch.equal(old, schedules.karras(10, 0.1, 10.0))


def test_beta_and_ays_inputs(schedule: DiscreteSchedule) -> None:
    lo, hi = _model_range(schedule)
    euler = find_sampler("Euler")
    opts = {"beta_dist_alpha": 0.5, "beta_dist_beta": 0.7}
    assert torch.equal(build_sigmas(euler, find_scheduler("beta"), 8, schedule, opts=opts),
                       schedules.beta(8, lo, hi, 0.5, 0.7))
    assert registry.schedule_extra_infotext(euler, find_scheduler("beta"), schedule) == {
        "Beta schedule alpha": 0.6, "Beta schedule beta": 0.6}
    assert torch.equal(build_sigmas(euler, find_scheduler("align_your_steps"), 8, schedule, is_sdxl=True),
                       schedules.align_your_steps(8, is_sdxl=True))


@pytest.mark.parametrize("scheduler", [s.name for s in SCHEDULERS])
def test_every_scheduler_builds_a_schedule(scheduler: str, schedule: DiscreteSchedule,
                                           kd_sampling: types.ModuleType) -> None:
    spec = find_scheduler(scheduler)
    sigmas = build_sigmas(find_sampler("Euler"), spec, 12, schedule)
    lo, hi = _model_range(schedule)
    expected_len = {"ddim": len(range(1, 1000, 1000 // 12)) + 1}.get(scheduler, 13)
    assert len(sigmas) == expected_len and sigmas.device.type == "cpu"
    assert torch.all(sigmas[1:] < sigmas[:-1])
    kd_equivalent = {"karras": kd_sampling.get_sigmas_karras, "exponential": kd_sampling.get_sigmas_exponential,
                     "polyexponential": kd_sampling.get_sigmas_polyexponential}
    if scheduler in kd_equivalent:
        assert torch.equal(sigmas, kd_equivalent[scheduler](12, lo, hi))
    last = sigmas[-1].item()
    assert last == pytest.approx(lo, rel=1e-5) if scheduler == "kl_optimal" else last == 0.0


def test_lcm_builds_on_its_own_table(schedule: DiscreteSchedule) -> None:
    sigmas = build_sigmas(find_sampler("LCM"), AUTOMATIC, 4, schedule)
    assert torch.equal(sigmas, schedules.LCMSchedule(schedule.alphas_cumprod).get_sigmas(4))


@pytest.mark.parametrize(("steps", "count", "first", "last"), [(20, 20, 951, 1), (30, 31, 991, 1), (1, 1, 1, 1)])
def test_timestep_samplers_get_a1111_timesteps(steps: int, count: int, first: int, last: int,
                                               schedule: DiscreteSchedule) -> None:
    sigmas = build_sigmas(find_sampler("DDIM"), find_scheduler("karras"), steps, schedule)
    assert len(sigmas) == count
    assert sigmas[0] == schedule.sigmas[first] and sigmas[-1] == schedule.sigmas[last]
    discarded = build_sigmas(find_sampler("PLMS"), AUTOMATIC, 20, schedule, opts={"always_discard_next_to_last_sigma": True})
    assert len(discarded) == len(range(0, 1000, 1000 // 21))


def test_timestep_samplers_reject_zero_steps(schedule: DiscreteSchedule) -> None:
    with pytest.raises(InvalidRequest) as raised:
        build_sigmas(find_sampler("DDIM"), AUTOMATIC, 0, schedule)
    assert raised.value.field == "steps"


@pytest.mark.parametrize(("args", "kwargs", "expected"), [
    ((20, 0.75), {}, (20, 15)),
    ((20, 1.0), {}, (20, 19)),
    ((20, 0.02), {}, (20, 0)),
    ((20, 0.5), {"hires_steps": 10}, (20, 9)),
    ((20, 0.7), {"hires_steps": 0}, (28, 19)),
    ((20, 0.0), {"hires_steps": 10}, (0, 9)),
    ((20, 0.5), {"fix_steps": True}, (40, 19)),
])
def test_img2img_steps(args, kwargs, expected) -> None:
    assert img2img_steps(*args, **kwargs) == expected


def test_img2img_sigmas_for_k_diffusion(schedule: DiscreteSchedule) -> None:
    spec = find_sampler("Euler")
    plan = img2img_sigmas(spec, AUTOMATIC, 20, 0.75, schedule)
    assert len(plan.sigmas) - 1 == 16  # 20 steps at 0.75: 16 executed
    assert torch.equal(plan.sigmas, plan.full[20 - 15 - 1:]) and plan.noise_sigma == plan.sigmas[0]
    init, noise = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    torch.testing.assert_close(registry.img2img_start_latent(plan, init, noise), noise * plan.sigmas[0])
    hires = img2img_sigmas(spec, AUTOMATIC, 20, 0.5, schedule, hires_steps=10)
    assert len(hires.sigmas) - 1 == 10
    zero = img2img_sigmas(spec, AUTOMATIC, 20, 0.0, schedule, hires_steps=10)
    assert zero.sigmas.tolist() == [0.0]


def test_img2img_sigmas_for_timestep_samplers(schedule: DiscreteSchedule) -> None:
    plan = img2img_sigmas(find_sampler("DDIM"), AUTOMATIC, 20, 0.6, schedule)
    # Noised to timesteps[12] = 601, then run from timesteps[11] = 551 down to 1.
    assert plan.noise_sigma == schedule.sigmas[601]
    assert plan.sigmas[0] == schedule.sigmas[551] and len(plan.sigmas) == 12
    torch.testing.assert_close(plan.input_scale, ((1 + plan.sigmas[0] ** 2) / (1 + plan.noise_sigma**2)) ** 0.5)
    tiny = img2img_sigmas(find_sampler("DDIM"), AUTOMATIC, 20, 0.01, schedule)
    assert len(tiny.sigmas) == 1 and tiny.noise_sigma == tiny.sigmas[0] == schedule.sigmas[1]


def test_txt2img_start_latent() -> None:
    noise, sigmas = torch.ones(1, 4, 2, 2), torch.tensor([3.0, 1.0, 0.0])
    assert torch.equal(registry.txt2img_start_latent(find_sampler("Euler"), noise, sigmas), noise * 3.0)
    assert torch.equal(registry.txt2img_start_latent(find_sampler("Euler"), noise, sigmas, sgm_noise_multiplier=True),
                       noise * math.sqrt(10.0))
    assert torch.equal(registry.txt2img_start_latent(find_sampler("DDIM"), noise, sigmas), noise * math.sqrt(10.0))


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("Euler a", SamplerParams(), {"eta": 1.0}),
    ("Euler a", SamplerParams(eta=0.5, s_noise=0.3, s_churn=1.0), {"eta": 0.5}),
    ("Euler", SamplerParams(s_churn=1.0), {"s_churn": 1.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}),
    ("DPM2 a", SamplerParams(s_noise=0.8), {"eta": 1.0, "s_noise": 0.8}),
    ("DPM adaptive", SamplerParams(s_noise=0.8), {"eta": 1.0}),
    ("DDIM", SamplerParams(), {"eta": 0.0}),
    ("PLMS", SamplerParams(eta=0.4), {}),
    ("Restart", SamplerParams(s_noise=0.5), {}),
    ("DPM++ 2M", SamplerParams(eta=0.5), {}),
    ("UniPC", SamplerParams(uni_pc_order=2), {"order": 2, "variant": "bh1", "skip_type": "time_uniform",
                                             "lower_order_final": True}),
])
def test_only_accepted_params_are_passed(name: str, params: SamplerParams, expected: dict) -> None:
    assert registry.sampler_kwargs(find_sampler(name), params) == expected


@pytest.mark.parametrize(("name", "params", "expected"), [
    ("Euler a", SamplerParams(), {}),
    ("Euler a", SamplerParams(eta=0.5, s_churn=2.0), {"Eta": 0.5}),
    ("DDIM", SamplerParams(eta=0.3), {"Eta DDIM": 0.3}),
    ("DDIM", SamplerParams(eta=0.0), {}),
    ("DDIM CFG++", SamplerParams(eta=1.0), {"Eta DDIM": 1.0}),
    ("Euler", SamplerParams(s_churn=1.5, s_tmax=5.0, s_noise=0.9),
     {"Sigma churn": 1.5, "Sigma tmax": 5.0, "Sigma noise": 0.9}),
    ("DPM++ SDE", SamplerParams(eta=1.0, s_noise=0.9), {"Sigma noise": 0.9}),
    ("LMS", SamplerParams(eta=0.2, s_churn=3.0), {}),
])
def test_sampler_extra_infotext(name: str, params: SamplerParams, expected: dict) -> None:
    assert sampler_extra_infotext(find_sampler(name), params) == expected


def test_run_sampler_passes_only_accepted_params(schedule: DiscreteSchedule) -> None:
    sigmas = schedules.karras(4, 0.1, 10.0)
    x = torch.ones(1, 2, 2, 2)
    seen: list[float] = []

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        seen.append(float(sigma[0]))
        return x * 0.5

    noise = lambda s, sn: torch.zeros_like(x)  # noqa: E731
    euler_a = find_sampler("Euler a")
    quiet = run_sampler(euler_a, denoise, x, sigmas, noise=noise, params=SamplerParams(s_noise=0.0))
    loud = run_sampler(euler_a, denoise, x, sigmas, noise=noise, params=SamplerParams(s_noise=1.0))
    assert torch.equal(quiet, loud)
    assert seen[:4] == pytest.approx(sigmas[:4].tolist())


def test_run_sampler_needs_the_schedule_for_timestep_samplers() -> None:
    sigmas = torch.tensor([5.0, 1.0])
    with pytest.raises(InvalidRequest):
        run_sampler(find_sampler("DDIM"), lambda x, s: x, torch.ones(1, 1, 1, 1), sigmas,
                    noise=lambda s, sn: torch.zeros(1, 1, 1, 1))
    with pytest.raises(InvalidRequest):
        run_sampler(find_sampler("DPM fast"), lambda x, s: x, torch.ones(1, 1, 1, 1), sigmas,
                    noise=lambda s, sn: torch.zeros(1, 1, 1, 1), txt2img_steps=1)


def test_brownian_sigma_range_skips_zero() -> None:
    low, high = registry.brownian_sigma_range(torch.tensor([9.0, 2.0, 0.5, 0.0]))
    assert (low.item(), high.item()) == (0.5, 9.0)


def test_ddim_cfgpp_asks_for_a_scaled_cfg_and_the_uncond_prediction() -> None:
    options = find_sampler("DDIM CFG++").options
    assert options.cond_scale_multiplier == pytest.approx(1 / 12.5) and options.needs_uncond_prediction
    assert all(s.options.cond_scale_multiplier == 1.0 for s in SAMPLERS if s.name != "DDIM CFG++")
