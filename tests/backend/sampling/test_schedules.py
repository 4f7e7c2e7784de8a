"""Tests for backend/sampling/schedules.py against k-diffusion and A1111's formulas."""
from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from scipy import stats

from backend.sampling import schedules
from backend.sampling.schedules import DiscreteSchedule, LCMSchedule, scaled_linear_alphas_cumprod


@pytest.fixture(scope="module")
def schedule32() -> DiscreteSchedule:
    return DiscreteSchedule(scaled_linear_alphas_cumprod())


def test_scaled_linear_alphas_cumprod_matches_ldm_float64_then_float32() -> None:
    betas = np.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=np.float64) ** 2
    expected = torch.tensor(np.cumprod(1.0 - betas), dtype=torch.float32)
    assert torch.equal(scaled_linear_alphas_cumprod(), expected)
    assert scaled_linear_alphas_cumprod(dtype=torch.float64).dtype == torch.float64


def test_sd_sigma_range_is_a1111s(schedule32: DiscreteSchedule) -> None:
    assert schedule32.sigma_min.item() == pytest.approx(0.0292, abs=5e-5)
    assert schedule32.sigma_max.item() == pytest.approx(14.6146, abs=5e-5)
    assert torch.all(schedule32.sigmas[1:] > schedule32.sigmas[:-1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_discrete_schedule_matches_k_diffusion(kd_external: types.ModuleType, dtype: torch.dtype) -> None:
    ours = DiscreteSchedule(scaled_linear_alphas_cumprod(dtype=dtype))
    theirs = kd_external.DiscreteSchedule(((1 - ours.alphas_cumprod) / ours.alphas_cumprod) ** 0.5, quantize=False)
    assert torch.equal(ours.sigmas, theirs.sigmas)
    probe = torch.tensor([0.01, 0.0292, 0.5, 1.0, 3.3, 14.0, 14.6146, 20.0], dtype=dtype)
    torch.testing.assert_close(ours.sigma_to_t(probe), theirs.sigma_to_t(probe), rtol=0, atol=1e-9)
    t = torch.tensor([0.0, 0.25, 10.5, 500.0, 998.75, 999.0])
    torch.testing.assert_close(ours.t_to_sigma(t), theirs.t_to_sigma(t), rtol=1e-12, atol=0)
    for n in (1, 2, 7, 20, 33):
        torch.testing.assert_close(ours.get_sigmas(n), theirs.get_sigmas(n), rtol=1e-12, atol=0)


def test_sigma_to_t_round_trips(schedule64: DiscreteSchedule) -> None:
    t = torch.tensor([0.0, 1.0, 17.3, 500.0, 949.05, 999.0], dtype=torch.float64)
    torch.testing.assert_close(schedule64.sigma_to_t(schedule64.t_to_sigma(t)), t, rtol=0, atol=1e-9)
    batch = schedule64.sigmas[[3, 400]]
    assert schedule64.sigma_to_t(batch).shape == (2,)
    assert schedule64.sigma_to_t(batch[0]).shape == ()


def test_t_to_sigma_clamps_to_the_table(schedule64: DiscreteSchedule) -> None:
    outside = torch.tensor([-0.5, 999.5], dtype=torch.float64)
    expected = torch.stack([schedule64.sigma_min, schedule64.sigma_max])
    torch.testing.assert_close(schedule64.t_to_sigma(outside), expected, rtol=1e-14, atol=0)


@pytest.mark.parametrize("n", [0, 1, 5, 20, 37])
def test_karras_exponential_polyexponential_equal_k_diffusion(kd_sampling: types.ModuleType, n: int) -> None:
    lo, hi = 0.0291675, 14.614642
    assert torch.equal(schedules.karras(n, lo, hi), kd_sampling.get_sigmas_karras(n, lo, hi))
    assert torch.equal(schedules.karras(n, lo, hi, rho=3.5), kd_sampling.get_sigmas_karras(n, lo, hi, rho=3.5))
    assert torch.equal(schedules.exponential(n, lo, hi), kd_sampling.get_sigmas_exponential(n, lo, hi))
    assert torch.equal(schedules.polyexponential(n, lo, hi), kd_sampling.get_sigmas_polyexponential(n, lo, hi))
    assert torch.equal(schedules.polyexponential(n, lo, hi, rho=2.0),
                       kd_sampling.get_sigmas_polyexponential(n, lo, hi, rho=2.0))


def test_uniform_is_the_model_discretisation(schedule32: DiscreteSchedule) -> None:
    sigmas = schedules.uniform(20, schedule32)
    assert torch.equal(sigmas, schedule32.get_sigmas(20))
    assert sigmas[0].item() == pytest.approx(schedule32.sigma_max.item(), rel=1e-6)
    assert sigmas[-2].item() == pytest.approx(schedule32.sigma_min.item(), rel=1e-6)
    assert sigmas[-1] == 0


def _a1111_timestep_spaced(inner: object, n: int, sigma_min: float, sigma_max: float, sgm: bool) -> torch.Tensor:
    """A1111's normal_scheduler / sgm_uniform written against k-diffusion's DiscreteSchedule."""
    start = inner.sigma_to_t(torch.tensor(sigma_max))
    end = inner.sigma_to_t(torch.tensor(sigma_min))
    timesteps = torch.linspace(start, end, n + 1)[:-1] if sgm else torch.linspace(start, end, n)
    return torch.FloatTensor([inner.t_to_sigma(ts) for ts in timesteps] + [0.0])


@pytest.mark.parametrize("n", [1, 8, 20])
def test_normal_and_sgm_uniform_equal_a1111_formulas(kd_external: types.ModuleType, schedule32: DiscreteSchedule,
                                                     n: int) -> None:
    inner = kd_external.DiscreteSchedule(schedule32.sigmas, quantize=False)
    lo, hi = schedule32.sigma_min.item(), schedule32.sigma_max.item()
    ours_normal = schedules.normal(n, lo, hi, schedule32)
    ours_sgm = schedules.sgm_uniform(n, lo, hi, schedule32)
    assert ours_normal.dtype == ours_sgm.dtype == torch.float32
    torch.testing.assert_close(ours_normal, _a1111_timestep_spaced(inner, n, lo, hi, sgm=False), rtol=1e-6, atol=0)
    torch.testing.assert_close(ours_sgm, _a1111_timestep_spaced(inner, n, lo, hi, sgm=True), rtol=1e-6, atol=0)
    assert len(ours_sgm) == len(ours_normal) == n + 1
    assert ours_normal[0].item() == ours_sgm[0].item() == pytest.approx(hi, rel=1e-6)
    if n > 1:
        assert ours_normal[-2].item() == pytest.approx(lo, rel=1e-5)
        assert ours_sgm[-2].item() > lo * 1.01


def test_kl_optimal_is_uniform_in_arctan_and_ends_at_sigma_min() -> None:
    sigmas = schedules.kl_optimal(10, 0.03, 14.6)
    assert len(sigmas) == 11 and sigmas.dtype == torch.float32
    assert sigmas[0].item() == pytest.approx(14.6, rel=1e-6)
    assert sigmas[-1].item() == pytest.approx(0.03, rel=1e-6)
    steps = torch.diff(torch.arctan(sigmas.double()))
    torch.testing.assert_close(steps, torch.full_like(steps, steps[0].item()), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("is_sdxl", [False, True])
def test_align_your_steps_tables(is_sdxl: bool) -> None:
    table = schedules.AYS_SDXL_SIGMAS if is_sdxl else schedules.AYS_SD15_SIGMAS
    assert torch.equal(schedules.align_your_steps(11, is_sdxl), torch.tensor([*table, 0.0]))
    doubled = schedules.align_your_steps(21, is_sdxl)
    assert len(doubled) == 22 and doubled[-1] == 0
    # Log-linear resampling to 21 points keeps the table at even positions and puts geometric means between.
    torch.testing.assert_close(doubled[:-1:2].double(), torch.tensor(table, dtype=torch.float64), rtol=1e-6, atol=0)
    geometric = (torch.tensor(table[:-1], dtype=torch.float64) * torch.tensor(table[1:], dtype=torch.float64)) ** 0.5
    torch.testing.assert_close(doubled[1:-1:2].double(), geometric, rtol=1e-6, atol=0)


def test_ays_differs_between_sd15_and_sdxl() -> None:
    assert not torch.equal(schedules.align_your_steps(20, False), schedules.align_your_steps(20, True))


def test_simple_takes_every_kth_table_sigma_from_the_top(schedule32: DiscreteSchedule) -> None:
    sigmas = schedules.simple(10, schedule32)
    expected = [schedule32.sigmas[999 - 100 * i].item() for i in range(10)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-7)
    assert torch.equal(schedules.simple(0, schedule32), torch.zeros(1))


def test_ddim_scheduler_picks_timesteps_1_plus_k(schedule32: DiscreteSchedule) -> None:
    sigmas = schedules.ddim(20, schedule32)
    expected = [schedule32.sigmas[t].item() for t in range(951, 0, -50)] + [0.0]
    assert sigmas.tolist() == pytest.approx(expected, rel=1e-7)
    # 1000 // 30 = 33 gives 31 timesteps: A1111's count, not steps + 1.
    assert len(schedules.ddim(30, schedule32)) == 32


def test_beta_uses_scipy_quantiles_between_sigma_min_and_max() -> None:
    lo, hi = 0.0292, 14.6146
    sigmas = schedules.beta(12, lo, hi)
    quantiles = [stats.beta.ppf(q, 0.6, 0.6) for q in 1 - np.linspace(0, 1, 12)]
    expected = torch.tensor([lo + q * (hi - lo) for q in quantiles] + [0.0], dtype=torch.float32)
    assert torch.equal(sigmas, expected)
    assert sigmas[0].item() == pytest.approx(hi, rel=1e-6) and sigmas[-2].item() == pytest.approx(lo, rel=1e-5)
    assert not torch.equal(schedules.beta(12, lo, hi, alpha=0.5, beta_param=0.7), sigmas)


def test_lcm_schedule_matches_a1111(a1111_lcm: type) -> None:
    alphas = scaled_linear_alphas_cumprod()
    ours, theirs = LCMSchedule(alphas), a1111_lcm(alphas)
    assert torch.equal(ours.sigmas, theirs.sigmas) and len(ours.sigmas) == 50
    probe = torch.tensor([0.05, 0.5, 2.0, 9.0, 14.6])
    assert torch.equal(ours.sigma_to_t(probe), theirs.sigma_to_t(probe))
    assert torch.equal(ours.t_to_sigma(torch.tensor([19.0, 40.0, 999.0])), theirs.t_to_sigma(torch.tensor([19.0, 40.0, 999.0])))
    for n in (1, 4, 8):
        torch.testing.assert_close(ours.get_sigmas(n), theirs.get_sigmas(n), rtol=1e-6, atol=0)


def test_lcm_boundary_scalings() -> None:
    lcm = LCMSchedule(scaled_linear_alphas_cumprod())
    sigma = lcm.sigmas[[0, 49]]
    c_skip, c_out = lcm.boundary_scalings(sigma)
    scaled = torch.tensor([19.0, 999.0]) * 10
    torch.testing.assert_close(c_skip, 0.25 / (scaled**2 + 0.25))
    torch.testing.assert_close(c_out, scaled / (scaled**2 + 0.25) ** 0.5)


@pytest.mark.parametrize("build", [
    lambda s: schedules.karras(9, 0.03, 14.6),
    lambda s: schedules.exponential(9, 0.03, 14.6),
    lambda s: schedules.polyexponential(9, 0.03, 14.6),
    lambda s: schedules.kl_optimal(9, 0.03, 14.6),
    lambda s: schedules.align_your_steps(9),
    lambda s: schedules.simple(9, s),
    lambda s: schedules.normal(9, 0.03, 14.6, s),
    lambda s: schedules.sgm_uniform(9, 0.03, 14.6, s),
    lambda s: schedules.ddim(9, s),
    lambda s: schedules.beta(9, 0.03, 14.6),
])
def test_a1111_built_schedules_are_float32_and_descending(build, schedule64: DiscreteSchedule) -> None:
    sigmas = build(schedule64)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    assert torch.all(sigmas[1:] < sigmas[:-1])
    assert math.isfinite(float(sigmas.sum()))
