"""The CFG denoiser: k-diffusion's scalings and A1111's guidance arithmetic, with fake networks."""
from __future__ import annotations

import torch

from backend.sampling.denoiser import CFGDenoiser, DiscreteDenoiser
from backend.sampling.schedules import DiscreteSchedule, scaled_linear_alphas_cumprod

SCHEDULE = DiscreteSchedule(scaled_linear_alphas_cumprod())


def test_eps_scalings_and_timestep() -> None:
    seen = {}

    def model_fn(x, t, c, pooled, image_cond):
        seen["x"], seen["t"] = x, t
        return torch.full_like(x, 0.5)

    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([3.0, 1.0])
    out = DiscreteDenoiser(model_fn, SCHEDULE)(x, sigma, torch.zeros(2, 77, 8), None)
    s = sigma[:, None, None, None]
    torch.testing.assert_close(seen["x"], x / (s**2 + 1) ** 0.5)
    torch.testing.assert_close(seen["t"], SCHEDULE.sigma_to_t(sigma))
    torch.testing.assert_close(out, x - 0.5 * s)


def test_v_prediction_scalings() -> None:
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    sigma = torch.tensor([2.0])
    out = DiscreteDenoiser(lambda x, t, c, p, ic: torch.ones_like(x), SCHEDULE, "v_prediction")(x, sigma, torch.zeros(1, 77, 8), None)
    torch.testing.assert_close(out, x / 5 - 2 / 5**0.5)


class _Fake:
    """An inner denoiser whose output is the mean of the cond rows: easy to predict."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x, sigma, crossattn, pooled, image_cond=None):
        self.calls += 1
        return x * 0 + crossattn.mean(dim=(1, 2)).reshape(-1, 1, 1, 1)


def _cfg(cond_rows, conds_list, uncond_rows, **kw):
    inner = _Fake()
    den = CFGDenoiser(inner, lambda step: (conds_list, cond_rows, None), lambda step: (uncond_rows, None),
                      cfg_scale=7.0, total_steps=10, **kw)
    return den, inner


def test_guidance_sums_weighted_sub_prompts() -> None:
    cond = torch.stack([torch.full((77, 8), v) for v in (1.0, 2.0, 3.0)])
    uncond = torch.stack([torch.full((77, 8), v) for v in (0.5, -1.0)])
    den, inner = _cfg(cond, [[(0, 1.0), (1, 0.5)], [(2, 1.0)]], uncond)
    out = den(torch.zeros(2, 4, 2, 2), torch.tensor([1.0, 1.0]))
    assert inner.calls == 1  # one batch for cond and uncond
    assert torch.allclose(out[0], torch.tensor(0.5 + 7 * (1.0 - 0.5) + 7 * 0.5 * (2.0 - 0.5)))
    assert torch.allclose(out[1], torch.tensor(-1.0 + 7 * (3.0 + 1.0)))
    assert den.step == 1


def test_different_lengths_run_in_separate_passes_with_the_same_result() -> None:
    cond = torch.full((1, 154, 8), 2.0)
    uncond = torch.full((1, 77, 8), 1.0)
    den, inner = _cfg(cond, [[(0, 1.0)]], uncond)
    out = den(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))
    assert inner.calls == 2
    assert torch.allclose(out, torch.tensor(1.0 + 7 * (2.0 - 1.0)))


def test_ngms_skips_uncond_on_odd_steps_below_the_sigma() -> None:
    cond, uncond = torch.full((1, 77, 8), 2.0), torch.full((1, 77, 8), 1.0)
    den, _ = _cfg(cond, [[(0, 1.0)]], uncond, s_min_uncond=5.0)
    x, small = torch.zeros(1, 4, 2, 2), torch.tensor([1.0])
    assert torch.allclose(den(x, small), torch.tensor(8.0))  # step 0: full CFG
    assert torch.allclose(den(x, small), torch.tensor(2.0))  # step 1: cond only
    assert den.skipped_uncond_at == [1]
