"""Contract tests for backend/sampling/samplers.py (and uni_pc.py).

Every k-diffusion-backed sampler must equal the installed k-diffusion for the same denoiser, sigmas
and noise draws. The samplers A1111 implements itself are compared with independent references of
A1111's formulas, written here in timestep space as A1111 runs them.
"""
from __future__ import annotations

import math
import types
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

from backend.errors import InvalidRequest
from backend.sampling import registry, samplers
from backend.sampling.registry import AUTOMATIC, SamplerParams, SamplerSpec, build_sigmas, find_sampler, run_sampler
from backend.sampling.schedules import DiscreteSchedule, LCMSchedule, scaled_linear_alphas_cumprod
from backend.sampling.uni_pc import sample_unipc

from .conftest import FakeEpsModel, compvis_denoiser

KD_FUNCTIONS = {
    "DPM++ 2M": "sample_dpmpp_2m",
    "DPM++ SDE": "sample_dpmpp_sde",
    "DPM++ 2M SDE": "sample_dpmpp_2m_sde",
    "DPM++ 2M SDE Heun": "sample_dpmpp_2m_sde",
    "DPM++ 2S a": "sample_dpmpp_2s_ancestral",
    "DPM++ 3M SDE": "sample_dpmpp_3m_sde",
    "Euler a": "sample_euler_ancestral",
    "Euler": "sample_euler",
    "LMS": "sample_lms",
    "Heun": "sample_heun",
    "DPM2": "sample_dpm_2",
    "DPM2 a": "sample_dpm_2_ancestral",
    "DPM fast": "sample_dpm_fast",
    "DPM adaptive": "sample_dpm_adaptive",
}
A1111_OWN = {"Restart", "DDIM", "DDIM CFG++", "PLMS", "UniPC", "LCM"}
# Non-default values for every parameter a sampler may take; churn is limited to mid sigmas so that
# some steps draw noise without using it, which k-diffusion does too.
PARAMS = SamplerParams(eta=0.7, s_churn=2.0, s_tmin=0.5, s_tmax=5.0, s_noise=0.9)
STEPS = 9


def test_every_sampler_is_covered() -> None:
    assert {spec.name for spec in registry.SAMPLERS} == set(KD_FUNCTIONS) | A1111_OWN


def _randn_noise(x: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    # Test-only: draw from torch's global generator exactly as k-diffusion's randn_like does.
    return lambda sigma, sigma_next: torch.randn_like(x)


def _kd_noise_kwargs(kd_sampling: types.ModuleType, spec: SamplerSpec, x: Tensor, sigmas: Tensor) -> dict:
    if not spec.options.brownian_noise:
        return {}
    low, high = registry.brownian_sigma_range(sigmas)
    return {"noise_sampler": kd_sampling.BrownianTreeNoiseSampler(x, low, high, seed=[11, 12])}


def _run_both(kd_sampling: types.ModuleType, spec: SamplerSpec, denoise, x: Tensor, sigmas: Tensor,
              params: SamplerParams, *, ours_extra: dict, kd_positional: tuple, kd_extra: dict):
    kd_kwargs = {**registry.sampler_kwargs(spec, params), **kd_extra}
    if spec.options.solver_type:
        kd_kwargs["solver_type"] = spec.options.solver_type
    kd_steps: list[tuple[int, Tensor]] = []
    torch.manual_seed(5)
    theirs = getattr(kd_sampling, KD_FUNCTIONS[spec.name])(
        denoise, x.clone(), *kd_positional, disable=True, callback=lambda d: kd_steps.append((d["i"], d["denoised"])),
        **kd_kwargs, **_kd_noise_kwargs(kd_sampling, spec, x, sigmas))
    noise_kwargs = _kd_noise_kwargs(kd_sampling, spec, x, sigmas)
    noise = noise_kwargs.get("noise_sampler", _randn_noise(x))
    our_steps: list[tuple[int, Tensor]] = []
    torch.manual_seed(5)
    ours = run_sampler(spec, denoise, x.clone(), sigmas, noise=noise, params=params,
                       callback=lambda d: our_steps.append((d["i"], d["denoised"])), **ours_extra)
    return ours, theirs, our_steps, kd_steps


# torchsde warns when k-diffusion queries its float32-bounded tree at float64 sigmas a rounding step outside.
@pytest.mark.filterwarnings("ignore:Should have t:UserWarning")
@pytest.mark.parametrize("name", sorted(set(KD_FUNCTIONS) - {"DPM fast", "DPM adaptive"}))
@pytest.mark.parametrize("params", [SamplerParams(), PARAMS], ids=["defaults", "custom"])
def test_k_diffusion_parity(name: str, params: SamplerParams, kd_sampling: types.ModuleType, denoiser64,
                            schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    spec = find_sampler(name)
    sigmas = build_sigmas(spec, AUTOMATIC, STEPS, schedule64)
    x = unit_noise * sigmas[0]
    ours, theirs, our_steps, kd_steps = _run_both(kd_sampling, spec, denoiser64, x, sigmas, params,
                                                  ours_extra={}, kd_positional=(sigmas,), kd_extra={})
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert [i for i, _ in our_steps] == [i for i, _ in kd_steps]
    for (_, a), (_, b) in zip(our_steps, kd_steps):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# k-diffusion copy-constructs the img2img sigma range with torch.tensor(tensor), which warns.
@pytest.mark.filterwarnings("ignore:To copy construct from a tensor:UserWarning")
@pytest.mark.parametrize("name", ["DPM fast", "DPM adaptive"])
@pytest.mark.parametrize("mode", ["txt2img", "img2img"])
def test_dpm_solver_parity(name: str, mode: str, kd_sampling: types.ModuleType, denoiser64,
                           schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    spec = find_sampler(name)
    sigmas = build_sigmas(spec, AUTOMATIC, STEPS, schedule64)
    if mode == "txt2img":
        x = unit_noise * sigmas[0]
        low, high = schedule64.sigma_min.item(), schedule64.sigma_max.item()
        ours_extra, n = {"txt2img_steps": STEPS, "schedule": schedule64}, STEPS
    else:
        sigmas = sigmas[3:]
        x = unit_noise * sigmas[0]
        low, high, n = sigmas[-2], sigmas[0], len(sigmas) - 1
        ours_extra = {}
    kd_extra = {"n": n} if name == "DPM fast" else {}
    for params in (SamplerParams(), SamplerParams(eta=0.0, s_noise=0.5)):
        ours, theirs, our_steps, kd_steps = _run_both(kd_sampling, spec, denoiser64, x, sigmas, params,
                                                      ours_extra=ours_extra, kd_positional=(low, high), kd_extra=kd_extra)
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
        assert len(our_steps) == len(kd_steps) > 0


def test_euler_draws_noise_on_every_step_like_k_diffusion(denoiser64, schedule64: DiscreteSchedule,
                                                         unit_noise: Tensor) -> None:
    calls = []
    sigmas = build_sigmas(find_sampler("Euler"), AUTOMATIC, STEPS, schedule64)

    def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        calls.append(float(sigma))
        return torch.zeros_like(unit_noise)

    samplers.sample_euler(denoiser64, unit_noise * sigmas[0], sigmas, noise=noise)
    assert len(calls) == STEPS


def _all_specs() -> list[str]:
    return [spec.name for spec in registry.SAMPLERS]


def _denoiser_for(spec: SamplerSpec, eps_model: FakeEpsModel, schedule: DiscreteSchedule):
    if spec.options.lcm:
        lcm = registry.model_schedule(spec, schedule)

        def lcm_denoise(x: Tensor, sigma: Tensor) -> Tensor:
            s = sigma.reshape(-1, 1, 1, 1).to(x.dtype)
            c_skip, c_out = (c.reshape(-1, 1, 1, 1).to(x.dtype) for c in lcm.boundary_scalings(sigma))
            return c_out * (x - s * eps_model(x / (1 + s**2) ** 0.5, lcm.sigma_to_t(sigma))) + c_skip * x

        return lcm_denoise
    return _CFGDenoiser(eps_model, FakeEpsModel(seed=3), schedule, cfg_scale=5.0, multiplier=spec.options.cond_scale_multiplier)


@pytest.mark.parametrize("name", _all_specs())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_determinism(name: str, dtype: torch.dtype, eps_model: FakeEpsModel) -> None:
    spec = find_sampler(name)
    schedule = DiscreteSchedule(scaled_linear_alphas_cumprod(dtype=dtype))
    denoise = _denoiser_for(spec, eps_model, schedule)
    sigmas = build_sigmas(spec, AUTOMATIC, 6, schedule)
    noise_in = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(3), dtype=dtype)
    x = registry.txt2img_start_latent(spec, noise_in, sigmas)

    def run() -> Tensor:
        generator = torch.Generator().manual_seed(9)
        noise = lambda s, sn: torch.randn(x.shape, generator=generator, dtype=x.dtype)  # noqa: E731
        return run_sampler(spec, denoise, x.clone(), sigmas, noise=noise, schedule=schedule, txt2img_steps=6,
                           params=SamplerParams(eta=0.5))

    first, second = run(), run()
    assert first.shape == x.shape and first.dtype == dtype
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


class _CFGDenoiser:
    """Classifier-free guidance over two fake eps models, reporting its uncond prediction like ours."""

    def __init__(self, cond: FakeEpsModel, uncond: FakeEpsModel, schedule: DiscreteSchedule, cfg_scale: float,
                 multiplier: float = 1.0) -> None:
        self.cond = compvis_denoiser(cond, schedule)
        self.uncond = compvis_denoiser(uncond, schedule)
        self.scale = cfg_scale * multiplier
        self.last_uncond_denoised: Tensor | None = None

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        d_c, d_u = self.cond(x, sigma), self.uncond(x, sigma)
        self.last_uncond_denoised = d_u
        return d_u + self.scale * (d_c - d_u)


def _a1111_timesteps(steps: int) -> Tensor:
    return torch.clip(torch.asarray(list(range(0, 1000, 1000 // steps))) + 1, 0, 999)


def _a1111_ddim(model, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, eta: float,
                randn: Callable[[Tensor], Tensor], cfgpp: bool = False) -> Tensor:
    """sd_samplers_timesteps_impl.ddim / ddim_cfgpp; model(x, t) -> (eps, eps_uncond)."""
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    sigmas = eta * np.sqrt((1 - alphas_prev.numpy()) / (1 - alphas.numpy()) * (1 - alphas.numpy() / alphas_prev.numpy()))
    s_x = x.new_ones((x.shape[0], 1, 1, 1))
    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t, e_uncond = model(x, timesteps[index].item() * x.new_ones(x.shape[0]))
        a_t = alphas[index].item() * s_x
        a_prev = alphas_prev[index].item() * s_x
        sigma_t = sigmas[index].item() * s_x
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        dir_xt = (1.0 - a_prev - sigma_t**2).sqrt() * (e_uncond if cfgpp else e_t)
        x = a_prev.sqrt() * pred_x0 + dir_xt + sigma_t * randn(x)
    return x


def _eps_pair(cond: FakeEpsModel, uncond: FakeEpsModel, scale: float):
    def model(x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        e_c, e_u = cond(x, t), uncond(x, t)
        return e_u + scale * (e_c - e_u), e_u

    return model


@pytest.mark.parametrize("name", ["DDIM", "DDIM CFG++"])
@pytest.mark.parametrize("eta", [None, 0.6])
@pytest.mark.parametrize("steps", [10, 30])
def test_ddim_family_matches_a1111_txt2img(name: str, eta: float | None, steps: int, eps_model: FakeEpsModel,
                                           schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    spec = find_sampler(name)
    uncond = FakeEpsModel(seed=3)
    denoise = _CFGDenoiser(eps_model, uncond, schedule64, 5.0, spec.options.cond_scale_multiplier)
    sigmas = build_sigmas(spec, AUTOMATIC, steps, schedule64)
    x = registry.txt2img_start_latent(spec, unit_noise, sigmas)
    generator = torch.Generator().manual_seed(4)
    ours = run_sampler(spec, denoise, x, sigmas, schedule=schedule64, params=SamplerParams(eta=eta),
                       noise=lambda s, sn: torch.randn(x.shape, generator=generator, dtype=x.dtype))
    generator = torch.Generator().manual_seed(4)
    theirs = _a1111_ddim(_eps_pair(eps_model, uncond, 5.0 * spec.options.cond_scale_multiplier), unit_noise,
                         _a1111_timesteps(steps), schedule64.alphas_cumprod, eta or 0.0,
                         lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype), cfgpp=name == "DDIM CFG++")
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def test_ddim_img2img_matches_a1111(eps_model: FakeEpsModel, schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    spec = find_sampler("DDIM")
    init = torch.tanh(unit_noise.flip(0))
    steps, denoising = 20, 0.6
    plan = registry.img2img_sigmas(spec, AUTOMATIC, steps, denoising, schedule64)
    x = registry.img2img_start_latent(plan, init, unit_noise)
    generator = torch.Generator().manual_seed(8)
    ours = run_sampler(spec, compvis_denoiser(eps_model, schedule64), x, plan.sigmas, schedule=schedule64,
                       params=SamplerParams(eta=0.3),
                       noise=lambda s, sn: torch.randn(x.shape, generator=generator, dtype=x.dtype))
    # A1111's CompVisSampler.sample_img2img
    t_enc = int(denoising * steps)
    timesteps = _a1111_timesteps(steps)
    a = schedule64.alphas_cumprod[timesteps[t_enc]]
    xi = init * a.sqrt() + unit_noise * (1 - a).sqrt()
    generator = torch.Generator().manual_seed(8)
    theirs = _a1111_ddim(lambda x, t: (eps_model(x, t), None), xi, timesteps[:t_enc], schedule64.alphas_cumprod, 0.3,
                         lambda x: torch.randn(x.shape, generator=generator, dtype=x.dtype))
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def test_ddim_cfgpp_requires_the_uncond_prediction(denoiser64, schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    sigmas = build_sigmas(find_sampler("DDIM CFG++"), AUTOMATIC, 5, schedule64)
    with pytest.raises(InvalidRequest):
        samplers.sample_ddim_cfgpp(denoiser64, unit_noise, sigmas, schedule=schedule64, noise=_randn_noise(unit_noise))


def _a1111_plms(eps_model, x: Tensor, timesteps: Tensor, alphas_cumprod: Tensor) -> Tensor:
    alphas = alphas_cumprod[timesteps]
    alphas_prev = alphas_cumprod[torch.nn.functional.pad(timesteps[:-1], pad=(1, 0))].to(torch.float64)
    s_in, s_x = x.new_ones(x.shape[0]), x.new_ones((x.shape[0], 1, 1, 1))
    old_eps: list[Tensor] = []

    def get_x_prev_and_pred_x0(e_t: Tensor, index: int) -> tuple[Tensor, Tensor]:
        a_t, a_prev = alphas[index].item() * s_x, alphas_prev[index].item() * s_x
        pred_x0 = (x - (1 - a_t).sqrt() * e_t) / a_t.sqrt()
        return a_prev.sqrt() * pred_x0 + (1.0 - a_prev).sqrt() * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        index = len(timesteps) - 1 - i
        e_t = eps_model(x, timesteps[index].item() * s_in)
        if len(old_eps) == 0:
            x_prev, _ = get_x_prev_and_pred_x0(e_t, index)
            e_t_next = eps_model(x_prev, timesteps[max(index - 1, 0)].item() * s_in)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, _ = get_x_prev_and_pred_x0(e_t_prime, index)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        x = x_prev
    return x


@pytest.mark.parametrize("steps", [3, 12])
def test_plms_matches_a1111(steps: int, eps_model: FakeEpsModel, schedule64: DiscreteSchedule,
                            unit_noise: Tensor) -> None:
    spec = find_sampler("PLMS")
    sigmas = build_sigmas(spec, AUTOMATIC, steps, schedule64)
    x = registry.txt2img_start_latent(spec, unit_noise, sigmas)
    ours = run_sampler(spec, compvis_denoiser(eps_model, schedule64), x, sigmas, schedule=schedule64,
                       noise=_randn_noise(x))
    theirs = _a1111_plms(eps_model, unit_noise, _a1111_timesteps(steps), schedule64.alphas_cumprod)
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)


def _a1111_unipc(eps_model, x: Tensor, alphas_cumprod: Tensor, steps: int, t_start: float | None, order: int,
                 variant: str, lower_order_final: bool) -> Tensor:
    """uni_pc.UniPC.sample (multistep, B(h), predict_x0) with NoiseScheduleVP('discrete'), via numpy."""
    total = len(alphas_cumprod)
    t_array = np.linspace(0.0, 1.0, total + 1)[1:]
    log_alpha_array = 0.5 * np.log(alphas_cumprod.numpy())

    def log_alpha(t: float) -> float:
        return float(np.interp(t, t_array, log_alpha_array))

    def std(t: float) -> float:
        return math.sqrt(1.0 - math.exp(2 * log_alpha(t)))

    def lam(t: float) -> float:
        return log_alpha(t) - 0.5 * math.log(1.0 - math.exp(2 * log_alpha(t)))

    def model_fn(x: Tensor, t: float) -> Tensor:
        eps = eps_model(x, torch.full((x.shape[0],), (t - 1.0 / total) * 1000.0, dtype=x.dtype))
        return (x - std(t) * eps) / math.exp(log_alpha(t))

    def update(x, model_prev_list, t_prev_list, t, order, use_corrector):
        t_prev_0, model_prev_0 = t_prev_list[-1], model_prev_list[-1]
        h = lam(t) - lam(t_prev_0)
        rks, d1s = [], []
        for i in range(1, order):
            rk = (lam(t_prev_list[-(i + 1)]) - lam(t_prev_0)) / h
            rks.append(rk)
            d1s.append((model_prev_list[-(i + 1)] - model_prev_0) / rk)
        rks.append(1.0)
        hh = -h
        h_phi_1 = math.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        factorial_i = 1
        b_h = hh if variant == "bh1" else math.expm1(hh)
        rows, b = [], []
        for i in range(1, order + 1):
            rows.append(np.power(rks, i - 1))
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat, b = np.stack(rows), np.array(b)
        alpha_t = math.exp(log_alpha(t))
        x_t_ = std(t) / std(t_prev_0) * x - alpha_t * h_phi_1 * model_prev_0
        x_t = x_t_
        if d1s:
            rhos_p = np.array([0.5]) if order == 2 else np.linalg.solve(r_mat[:-1, :-1], b[:-1])
            x_t = x_t_ - alpha_t * b_h * sum(float(r) * d for r, d in zip(rhos_p, d1s))
        if not use_corrector:
            return x_t, None
        rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(r_mat, b)
        model_t = model_fn(x_t, t)
        corr_res = sum(float(r) * d for r, d in zip(rhos_c[:-1], d1s)) if d1s else 0
        return x_t_ - alpha_t * b_h * (corr_res + float(rhos_c[-1]) * (model_t - model_prev_0)), model_t

    t_0, t_T = 1.0 / total, 1.0 if t_start is None else t_start
    timesteps = np.linspace(t_T, t_0, steps + 1)
    model_prev_list, t_prev_list = [model_fn(x, timesteps[0])], [timesteps[0]]
    for init_order in range(1, order):
        x, model_x = update(x, model_prev_list, t_prev_list, timesteps[init_order], init_order, True)
        model_prev_list.append(model_x)
        t_prev_list.append(timesteps[init_order])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = update(x, model_prev_list, t_prev_list, timesteps[step], step_order, step != steps)
        for i in range(order - 1):
            t_prev_list[i] = t_prev_list[i + 1]
            model_prev_list[i] = model_prev_list[i + 1]
        t_prev_list[-1] = timesteps[step]
        if step < steps:
            model_prev_list[-1] = model_x
    return x


@pytest.mark.parametrize(("steps", "order", "variant", "lower_order_final"),
                         [(10, 3, "bh1", True), (6, 2, "bh2", False), (4, 1, "bh1", True), (20, 3, "bh1", True)])
def test_unipc_txt2img_matches_a1111(steps: int, order: int, variant: str, lower_order_final: bool,
                                     eps_model: FakeEpsModel, schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    spec = find_sampler("UniPC")
    sigmas = build_sigmas(spec, AUTOMATIC, steps, schedule64)
    x = registry.txt2img_start_latent(spec, unit_noise, sigmas)
    params = SamplerParams(uni_pc_order=order, uni_pc_variant=variant, uni_pc_lower_order_final=lower_order_final)
    ours = run_sampler(spec, compvis_denoiser(eps_model, schedule64), x, sigmas, schedule=schedule64, params=params,
                       noise=_randn_noise(x), txt2img_steps=steps)
    theirs = _a1111_unipc(eps_model, unit_noise, schedule64.alphas_cumprod, len(_a1111_timesteps(steps)), None,
                          order, variant, lower_order_final)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-7)


def test_unipc_img2img_matches_a1111(eps_model: FakeEpsModel, schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    spec = find_sampler("UniPC")
    init = torch.tanh(unit_noise.flip(0))
    steps, denoising = 20, 0.5
    plan = registry.img2img_sigmas(spec, AUTOMATIC, steps, denoising, schedule64)
    x = registry.img2img_start_latent(plan, init, unit_noise)
    ours = run_sampler(spec, compvis_denoiser(eps_model, schedule64), x, plan.sigmas, schedule=schedule64,
                       noise=_randn_noise(x))
    t_enc = int(denoising * steps)
    timesteps = _a1111_timesteps(steps)
    a = schedule64.alphas_cumprod[timesteps[t_enc]]
    xi = init * a.sqrt() + unit_noise * (1 - a).sqrt()
    t_start = timesteps[:t_enc][-1].item() / 1000 + 1 / 1000
    theirs = _a1111_unipc(eps_model, xi, schedule64.alphas_cumprod, t_enc, t_start, 3, "bh1", True)
    torch.testing.assert_close(ours, theirs, rtol=1e-7, atol=1e-7)


def test_unipc_rejects_unknown_variant(denoiser64, schedule64: DiscreteSchedule, unit_noise: Tensor) -> None:
    sigmas = build_sigmas(find_sampler("UniPC"), AUTOMATIC, 5, schedule64)
    with pytest.raises(InvalidRequest):
        sample_unipc(denoiser64, unit_noise, sigmas, schedule=schedule64, noise=_randn_noise(unit_noise),
                     variant="vary_coeff")


def _a1111_restart(kd_sampling: types.ModuleType, model, x: Tensor, sigmas: Tensor, s_noise: float = 1.0) -> Tensor:
    """sd_samplers_extra.restart_sampler with restart_list=None."""
    s_in = x.new_ones([x.shape[0]])

    def heun_step(x, old_sigma, new_sigma):
        denoised = model(x, old_sigma * s_in)
        d = kd_sampling.to_d(x, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            return x + d * dt
        x_2 = x + d * dt
        d_2 = kd_sampling.to_d(x_2, new_sigma, model(x_2, new_sigma * s_in))
        return x + (d + d_2) / 2 * dt

    steps = sigmas.shape[0] - 1
    restart_list = {}
    if steps >= 20:
        restart_steps, restart_times = 9, 1
        if steps >= 36:
            restart_steps, restart_times = steps // 4, 2
        sigmas = kd_sampling.get_sigmas_karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item())
        restart_list = {0.1: [restart_steps + 1, restart_times, 2]}
    restart_list = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restart_list.items()}
    step_list = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_list:
            restart_steps, restart_times, restart_max = restart_list[i + 1]
            min_idx, max_idx = i + 1, int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = kd_sampling.get_sigmas_karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())[:-1]
                for _ in range(restart_times):
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:]))
    last_sigma = None
    for old_sigma, new_sigma in step_list:
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + torch.randn_like(x) * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        x = heun_step(x, old_sigma, new_sigma)
        last_sigma = new_sigma
    return x


@pytest.mark.parametrize("steps", [8, 24, 40])
def test_restart_matches_a1111(steps: int, kd_sampling: types.ModuleType, denoiser64, schedule64: DiscreteSchedule,
                               unit_noise: Tensor) -> None:
    spec = find_sampler("Restart")
    sigmas = build_sigmas(spec, AUTOMATIC, steps, schedule64)
    x = unit_noise[:1, :, :3, :3] * sigmas[0]
    calls: list[tuple[int, float]] = []
    torch.manual_seed(2)
    ours = run_sampler(spec, denoiser64, x, sigmas, noise=_randn_noise(x),
                       callback=lambda d: calls.append((d["i"], float(d["sigma_hat"]))))
    torch.manual_seed(2)
    theirs = _a1111_restart(kd_sampling, denoiser64, x, sigmas)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert [i for i, _ in calls] == list(range(len(calls)))
    jumps_back = any(b > a for (_, a), (_, b) in zip(calls, calls[1:]))
    assert jumps_back == (steps >= 20)


def test_lcm_matches_a1111(a1111_lcm: type, eps_model: FakeEpsModel, unit_noise: Tensor) -> None:
    spec = find_sampler("LCM")
    alphas = scaled_linear_alphas_cumprod()
    schedule = DiscreteSchedule(alphas)
    sigmas = build_sigmas(spec, AUTOMATIC, 4, schedule)
    reference = a1111_lcm(alphas)
    assert torch.equal(sigmas, reference.get_sigmas(4))
    x = unit_noise * sigmas[0]
    torch.manual_seed(6)
    ours = run_sampler(spec, _denoiser_for(spec, eps_model, schedule), x, sigmas, noise=_randn_noise(x))
    # sd_samplers_lcm.sample_lcm with the LCMCompVisDenoiser
    torch.manual_seed(6)
    model, theirs = reference.denoise(eps_model), x
    for i in range(len(sigmas) - 1):
        theirs = model(theirs, sigmas[i] * x.new_ones([x.shape[0]]))
        if sigmas[i + 1] > 0:
            theirs = theirs + sigmas[i + 1] * torch.randn_like(x)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)
    assert isinstance(registry.model_schedule(spec, schedule), LCMSchedule)


def test_timestep_sampler_conversion_is_exact_at_table_sigmas(eps_model: FakeEpsModel, schedule64: DiscreteSchedule,
                                                             unit_noise: Tensor) -> None:
    sigma = schedule64.sigmas[501]
    eps, x_k = samplers.predict_eps(compvis_denoiser(eps_model, schedule64), unit_noise, sigma)
    torch.testing.assert_close(eps, eps_model(unit_noise, torch.full((2,), 501.0, dtype=torch.float64)),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(samplers.to_vp(x_k, sigma), unit_noise, rtol=1e-14, atol=1e-14)
    assert samplers.timesteps_of(schedule64.sigmas[[951, 1]], schedule64) == [951, 1]
