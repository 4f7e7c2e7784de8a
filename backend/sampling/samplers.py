"""Sampler algorithms as small pure functions, equivalent to k-diffusion and A1111's own samplers.

Every sampler has the shape

    sample_x(denoise, x, sigmas, *, noise, callback=None, **params) -> Tensor

- `denoise(x, sigma_batch) -> denoised x0`, called with `sigma * ones([batch])` as k-diffusion does.
- `x` is the latent in k-diffusion scaling (x0 + sigma * noise) at noise level `sigmas[0]`.
- `noise(sigma, sigma_next)` returns a fresh noise tensor shaped like `x`. It is called exactly where
  k-diffusion draws noise (its `randn_like` or noise-sampler calls), in the same order and the same
  number of times, so that A1111's per-image RNG, which stands in for those draws, gives the same noise.
- `callback` receives a dict {x, i, sigma, sigma_hat, denoised} once per step, as in k-diffusion.

The timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) mirror A1111's timestep implementations but go
through the same sigma-space denoiser: for a model timestep t with table sigma s, the network input
x_vp = x_k / sqrt(1 + s^2) equals A1111's latent, and eps = (x_k - denoise(x_k, s)) / s equals its
noise prediction. They take the model's `schedule` and return the latent in A1111's VP scaling at
their last timestep (the tensor A1111 decodes). Nothing here draws random numbers itself.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.errors import InvalidRequest
from backend.sampling.schedules import DiscreteSchedule, karras

Denoiser = Callable[[Tensor, Tensor], Tensor]
NoiseSampler = Callable[[Tensor, Tensor], Tensor]
StepCallback = Callable[[dict[str, Any]], None]


def _to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    """Karras ODE derivative dx/dsigma."""
    return (x - denoised) / sigma


def _ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float) -> tuple[Tensor, Tensor | float]:
    """(sigma_down, sigma_up): the deterministic target and the noise to add for an ancestral step."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5)
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def _report(callback: StepCallback | None, x: Tensor, i: int, sigma: Any, sigma_hat: Any, denoised: Tensor) -> None:
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat, "denoised": denoised})


def _churn(x: Tensor, sigmas: Tensor, i: int, noise: NoiseSampler, s_churn: float, s_tmin: float,
           s_tmax: float, s_noise: float) -> tuple[Tensor, Tensor]:
    """Karras et al. (2022) Algorithm 2 "churn": raise sigma by gamma and add matching noise.

    The noise is drawn on every step, used or not, as k-diffusion does (keeps the draw count).
    """
    gamma = min(s_churn / (len(sigmas) - 1), 2**0.5 - 1) if s_tmin <= sigmas[i] <= s_tmax else 0.0
    eps = noise(sigmas[i], sigmas[i + 1]) * s_noise
    sigma_hat = sigmas[i] * (gamma + 1)
    if gamma > 0:
        x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
    return x, sigma_hat


@torch.no_grad()
def sample_euler(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                 callback: StepCallback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Euler: Karras et al. (2022) Algorithm 2 with Euler steps (k-diffusion `sample_euler`, A1111 "Euler")."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        x = x + d * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_euler_ancestral(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                           callback: StepCallback | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """Euler ancestral (k-diffusion `sample_euler_ancestral`, A1111 "Euler a")."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = _to_d(x, sigmas[i], denoised)
        x = x + d * (sigma_down - sigmas[i])
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_heun(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                callback: StepCallback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """Heun: Karras et al. (2022) Algorithm 2 (k-diffusion `sample_heun`, A1111 "Heun"); Euler on the last step."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, sigmas[i + 1], denoise(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpm_2(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                 callback: StepCallback | None = None, s_churn: float = 0.0, s_tmin: float = 0.0,
                 s_tmax: float = float("inf"), s_noise: float = 1.0) -> Tensor:
    """DPM2: DPM-Solver-2 style midpoint steps in log sigma (k-diffusion `sample_dpm_2`, A1111 "DPM2")."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        x, sigma_hat = _churn(x, sigmas, i, noise, s_churn, s_tmin, s_tmax, s_noise)
        denoised = denoise(x, sigma_hat * s_in)
        d = _to_d(x, sigma_hat, denoised)
        _report(callback, x, i, sigmas[i], sigma_hat, denoised)
        if sigmas[i + 1] == 0:
            x = x + d * (sigmas[i + 1] - sigma_hat)
        else:
            sigma_mid = sigma_hat.log().lerp(sigmas[i + 1].log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigma_hat)
            d_2 = _to_d(x_2, sigma_mid, denoise(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigmas[i + 1] - sigma_hat)
    return x


@torch.no_grad()
def sample_dpm_2_ancestral(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                           callback: StepCallback | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM2 ancestral (k-diffusion `sample_dpm_2_ancestral`, A1111 "DPM2 a")."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        d = _to_d(x, sigmas[i], denoised)
        if sigma_down == 0:
            x = x + d * (sigma_down - sigmas[i])
        else:
            sigma_mid = sigmas[i].log().lerp(sigma_down.log(), 0.5).exp()
            x_2 = x + d * (sigma_mid - sigmas[i])
            d_2 = _to_d(x_2, sigma_mid, denoise(x_2, sigma_mid * s_in))
            x = x + d_2 * (sigma_down - sigmas[i])
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


def _lms_coefficient(order: int, t: np.ndarray, i: int, j: int) -> float:
    """Integral over [t[i], t[i+1]] of the Lagrange basis polynomial j through t[i], ..., t[i-order+1].

    k-diffusion integrates numerically with scipy's quad; the polynomial has degree < order, so
    Gauss-Legendre with `order` nodes gives the same integral exactly, without scipy.
    """
    nodes, weights = np.polynomial.legendre.leggauss(order)
    a, b = t[i], t[i + 1]
    tau = (b - a) / 2 * nodes + (a + b) / 2
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis = basis * (tau - t[i - k]) / (t[i - j] - t[i - k])
    return float((b - a) / 2 * np.sum(weights * basis))


@torch.no_grad()
def sample_lms(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
               callback: StepCallback | None = None, order: int = 4) -> Tensor:
    """Linear multistep (k-diffusion `sample_lms`, A1111 "LMS"). Deterministic; `noise` is never called."""
    s_in = x.new_ones([x.shape[0]])
    sigmas_np = sigmas.detach().cpu().numpy().astype(np.float64)
    ds: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        ds.append(_to_d(x, sigmas[i], denoised))
        if len(ds) > order:
            ds.pop(0)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        cur_order = min(i + 1, order)
        coeffs = [_lms_coefficient(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds)))
    return x


def _t_of(sigma: Tensor) -> Tensor:
    return sigma.log().neg()


def _sigma_of(t: Tensor) -> Tensor:
    return t.neg().exp()


@torch.no_grad()
def sample_dpmpp_2s_ancestral(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                              callback: StepCallback | None = None, eta: float = 1.0,
                              s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(2S) ancestral (k-diffusion `sample_dpmpp_2s_ancestral`, A1111 "DPM++ 2S a")."""
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        sigma_down, sigma_up = _ancestral_step(sigmas[i], sigmas[i + 1], eta)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigma_down == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigma_down - sigmas[i])
        else:
            t, t_next = _t_of(sigmas[i]), _t_of(sigma_down)
            h = t_next - t
            s = t + h / 2
            x_2 = (_sigma_of(s) / _sigma_of(t)) * x - (-h / 2).expm1() * denoised
            denoised_2 = denoise(x_2, _sigma_of(s) * s_in)
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_2
        if sigmas[i + 1] > 0:
            x = x + noise(sigmas[i], sigmas[i + 1]) * s_noise * sigma_up
    return x


@torch.no_grad()
def sample_dpmpp_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                     callback: StepCallback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                     r: float = 0.5) -> Tensor:
    """DPM-Solver++ (stochastic, 2 evaluations per step) (k-diffusion `sample_dpmpp_sde`, A1111 "DPM++ SDE").

    A1111 gives it a Brownian-tree `noise` seeded per image.
    """
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = x + _to_d(x, sigmas[i], denoised) * (sigmas[i + 1] - sigmas[i])
            continue
        t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
        h = t_next - t
        s = t + h * r
        fac = 1 / (2 * r)
        # Step 1: to the intermediate time s.
        sd, su = _ancestral_step(_sigma_of(t), _sigma_of(s), eta)
        s_ = _t_of(sd)
        x_2 = (_sigma_of(s_) / _sigma_of(t)) * x - (t - s_).expm1() * denoised
        x_2 = x_2 + noise(_sigma_of(t), _sigma_of(s)) * s_noise * su
        denoised_2 = denoise(x_2, _sigma_of(s) * s_in)
        # Step 2: to t_next with the blended prediction.
        sd, su = _ancestral_step(_sigma_of(t), _sigma_of(t_next), eta)
        t_next_ = _t_of(sd)
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = (_sigma_of(t_next_) / _sigma_of(t)) * x - (t - t_next_).expm1() * denoised_d
        x = x + noise(_sigma_of(t), _sigma_of(t_next)) * s_noise * su
    return x


@torch.no_grad()
def sample_dpmpp_2m(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                    callback: StepCallback | None = None) -> Tensor:
    """DPM-Solver++(2M) (k-diffusion `sample_dpmpp_2m`, A1111 "DPM++ 2M"). Deterministic; `noise` is never called."""
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        t, t_next = _t_of(sigmas[i]), _t_of(sigmas[i + 1])
        h = t_next - t
        if old_denoised is None or sigmas[i + 1] == 0:
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised
        else:
            r = (t - _t_of(sigmas[i - 1])) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (_sigma_of(t_next) / _sigma_of(t)) * x - (-h).expm1() * denoised_d
        old_denoised = denoised
    return x


@torch.no_grad()
def sample_dpmpp_2m_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                        callback: StepCallback | None = None, eta: float = 1.0, s_noise: float = 1.0,
                        solver_type: str = "midpoint") -> Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion `sample_dpmpp_2m_sde`; A1111 "DPM++ 2M SDE" = midpoint,
    "DPM++ 2M SDE Heun" = heun). A1111 gives it a Brownian-tree `noise`."""
    if solver_type not in {"heun", "midpoint"}:
        raise InvalidRequest("solver_type", f"must be 'heun' or 'midpoint', got {solver_type!r}")
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    h_last = None
    h = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            eta_h = eta * h
            x = sigmas[i + 1] / sigmas[i] * (-eta_h).exp() * x + (-h - eta_h).expm1().neg() * denoised
            if old_denoised is not None:
                r = h_last / h
                if solver_type == "heun":
                    x = x + ((-h - eta_h).expm1().neg() / (-h - eta_h) + 1) * (1 / r) * (denoised - old_denoised)
                else:
                    x = x + 0.5 * (-h - eta_h).expm1().neg() * (1 / r) * (denoised - old_denoised)
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        old_denoised = denoised
        h_last = h
    return x


@torch.no_grad()
def sample_dpmpp_3m_sde(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                        callback: StepCallback | None = None, eta: float = 1.0, s_noise: float = 1.0) -> Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion `sample_dpmpp_3m_sde`, A1111 "DPM++ 3M SDE"). A1111 gives it a Brownian-tree `noise`."""
    s_in = x.new_ones([x.shape[0]])
    denoised_1 = denoised_2 = None
    h_1 = h_2 = None
    h = None
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        if sigmas[i + 1] == 0:
            x = denoised
        else:
            t, s = -sigmas[i].log(), -sigmas[i + 1].log()
            h = s - t
            h_eta = h * (eta + 1)
            x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
            if h_2 is not None:
                r0 = h_1 / h
                r1 = h_2 / h
                d1_0 = (denoised - denoised_1) / r0
                d1_1 = (denoised_1 - denoised_2) / r1
                d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                phi_3 = phi_2 / h_eta - 0.5
                x = x + phi_2 * d1 - phi_3 * d2
            elif h_1 is not None:
                d = (denoised - denoised_1) / (h_1 / h)
                phi_2 = h_eta.neg().expm1() / h_eta + 1
                x = x + phi_2 * d
            if eta:
                x = x + noise(sigmas[i], sigmas[i + 1]) * sigmas[i + 1] * (-2 * h * eta).expm1().neg().sqrt() * s_noise
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x


class _DPMSolver:
    """DPM-Solver single steps in t = -log(sigma) with a per-step eps cache (k-diffusion `DPMSolver`)."""

    def __init__(self, denoise: Denoiser) -> None:
        self.denoise = denoise

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = _sigma_of(t)
            cache[key] = (x - self.denoise(x, sigma * x.new_ones([x.shape[0]]))) / sigma
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - _sigma_of(t_next) * h.expm1() * eps

    def step_2(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 1 / 2) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - _sigma_of(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return x - _sigma_of(t_next) * h.expm1() * eps - _sigma_of(t_next) / (2 * r1) * h.expm1() * (eps_r1 - eps)

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor],
               r1: float = 1 / 3, r2: float = 2 / 3) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - _sigma_of(s1) * (r1 * h).expm1() * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (x - _sigma_of(s2) * (r2 * h).expm1() * eps
              - _sigma_of(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1) * (eps_r1 - eps))
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return x - _sigma_of(t_next) * h.expm1() * eps - _sigma_of(t_next) / r2 * (h.expm1() / h - 1) * (eps_r2 - eps)


def _dpm_range(sigmas: Tensor, sigma_min: float | Tensor | None,
               sigma_max: float | Tensor | None) -> tuple[Tensor, Tensor]:
    # A1111's img2img rule: the last sigma is 0, which DPM-Solver cannot take, so use the one before.
    low = torch.as_tensor(sigmas[-2] if sigma_min is None else sigma_min)
    high = torch.as_tensor(sigmas[0] if sigma_max is None else sigma_max)
    if low <= 0 or high <= 0:
        raise InvalidRequest("sigma_min", "DPM fast/adaptive need sigma_min and sigma_max above 0")
    return low, high


@torch.no_grad()
def sample_dpm_fast(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                    callback: StepCallback | None = None, eta: float = 0.0, s_noise: float = 1.0,
                    sigma_min: float | Tensor | None = None, sigma_max: float | Tensor | None = None,
                    n: int | None = None) -> Tensor:
    """DPM-Solver-Fast, fixed step size (k-diffusion `sample_dpm_fast`, A1111 "DPM fast").

    It integrates from sigma_max to sigma_min with n model evaluations. Left as None they come from
    `sigmas` as A1111's img2img does (sigmas[0], sigmas[-2], len(sigmas) - 1); A1111's txt2img passes
    the model's full range and the step count instead. Noise is drawn after every step, even at eta 0.
    """
    low, high = _dpm_range(sigmas, sigma_min, sigma_max)
    nfe = len(sigmas) - 1 if n is None else n
    solver = _DPMSolver(denoise)
    t_start, t_end = _t_of(high), _t_of(low)
    if not t_end > t_start and eta:
        raise InvalidRequest("eta", "must be 0 for reverse sampling")
    m = math.floor(nfe / 3) + 1
    # Default-dtype (float32) grid, as k-diffusion's linspace gives.
    ts = torch.linspace(float(t_start), float(t_end), m + 1, device=x.device)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, _ = _ancestral_step(_sigma_of(t), _sigma_of(t_next), eta)
            t_next_ = torch.minimum(t_end, _t_of(sd))
            su: Tensor | float = (_sigma_of(t_next) ** 2 - _sigma_of(t_next_) ** 2) ** 0.5
        else:
            t_next_, su = t_next, 0.0
        eps = solver.eps(cache, "eps", x, t)
        _report(callback, x, i, _sigma_of(t), _sigma_of(t), x - _sigma_of(t) * eps)
        step = (solver.step_1, solver.step_2, solver.step_3)[order - 1]
        x = step(x, t, t_next_, cache)
        x = x + su * s_noise * noise(_sigma_of(t), _sigma_of(t_next))
    return x


class _PIDStepSizeController:
    """PID controller for the adaptive step size (k-diffusion `PIDStepSizeController`)."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float,
                 accept_safety: float, eps: float = 1e-8) -> None:
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = eps
        self.errs: list[float] = []

    def propose_step(self, error: Tensor) -> bool:
        inv_error = 1 / (float(error) + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


@torch.no_grad()
def sample_dpm_adaptive(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                        callback: StepCallback | None = None, eta: float = 0.0, s_noise: float = 1.0,
                        sigma_min: float | Tensor | None = None, sigma_max: float | Tensor | None = None,
                        order: int = 3, rtol: float = 0.05, atol: float = 0.0078, h_init: float = 0.05,
                        pcoeff: float = 0.0, icoeff: float = 1.0, dcoeff: float = 0.0,
                        accept_safety: float = 0.81) -> Tensor:
    """DPM-Solver-12/23 with adaptive step size (k-diffusion `sample_dpm_adaptive`, A1111 "DPM adaptive").

    The range defaults come from `sigmas` as in `sample_dpm_fast`; noise is drawn after each accepted step.
    """
    if order not in {2, 3}:
        raise InvalidRequest("order", "must be 2 or 3")
    low, high = _dpm_range(sigmas, sigma_min, sigma_max)
    solver = _DPMSolver(denoise)
    t_start, t_end = _t_of(high), _t_of(low)
    forward = bool(t_end > t_start)
    if not forward and eta:
        raise InvalidRequest("eta", "must be 0 for reverse sampling")
    h_init = abs(h_init) * (1 if forward else -1)
    atol_t, rtol_t = torch.tensor(atol), torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PIDStepSizeController(h_init, pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    steps = 0
    while s < t_end - 1e-5 if forward else s > t_end + 1e-5:
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h) if forward else torch.maximum(t_end, s + pid.h)
        if eta:
            sd, _ = _ancestral_step(_sigma_of(s), _sigma_of(t), eta)
            t_ = torch.minimum(t_end, _t_of(sd))
            su: Tensor | float = (_sigma_of(t) ** 2 - _sigma_of(t_) ** 2) ** 0.5
        else:
            t_, su = t, 0.0
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - _sigma_of(s) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(error):
            x_prev = x_low
            x = x_high + su * s_noise * noise(_sigma_of(s), _sigma_of(t))
            s = t
        steps += 1
        _report(callback, x, steps - 1, _sigma_of(s), _sigma_of(s), denoised)
    return x


@torch.no_grad()
def sample_restart(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                   callback: StepCallback | None = None, s_noise: float = 1.0) -> Tensor:
    """Restart sampling (Xu et al., 2023) as A1111's `sd_samplers_extra.restart_sampler` ("Restart").

    With 20+ steps the schedule is rebuilt as Karras sigmas over the same range, leaving room for one
    (or, from 36 steps, two) restart segments of Heun steps that jump back from about sigma 0.1 to 2.
    """
    s_in = x.new_ones([x.shape[0]])
    steps = sigmas.shape[0] - 1
    restarts: dict[float, tuple[int, int, float]] = {}
    if steps >= 20:
        restart_steps, restart_times = (steps // 4, 2) if steps >= 36 else (9, 1)
        sigmas = karras(steps - restart_steps * restart_times, sigmas[-2].item(), sigmas[0].item()).to(sigmas.device)
        restarts = {0.1: (restart_steps + 1, restart_times, 2.0)}
    restart_at = {int(torch.argmin(abs(sigmas - key), dim=0)): value for key, value in restarts.items()}

    step_list: list[tuple[Tensor, Tensor]] = []
    for i in range(len(sigmas) - 1):
        step_list.append((sigmas[i], sigmas[i + 1]))
        if i + 1 in restart_at:
            restart_steps, restart_times, restart_max = restart_at[i + 1]
            min_idx = i + 1
            max_idx = int(torch.argmin(abs(sigmas - restart_max), dim=0))
            if max_idx < min_idx:
                sigma_restart = karras(restart_steps, sigmas[min_idx].item(), sigmas[max_idx].item())
                sigma_restart = sigma_restart.to(sigmas.device)[:-1]
                for _ in range(restart_times):
                    step_list.extend(zip(sigma_restart[:-1], sigma_restart[1:]))

    last_sigma = None
    for step_id, (old_sigma, new_sigma) in enumerate(step_list):
        if last_sigma is None:
            last_sigma = old_sigma
        elif last_sigma < old_sigma:
            x = x + noise(last_sigma, old_sigma) * s_noise * (old_sigma**2 - last_sigma**2) ** 0.5
        denoised = denoise(x, old_sigma * s_in)
        d = _to_d(x, old_sigma, denoised)
        _report(callback, x, step_id, new_sigma, old_sigma, denoised)
        dt = new_sigma - old_sigma
        if new_sigma == 0:
            x = x + d * dt
        else:
            x_2 = x + d * dt
            d_2 = _to_d(x_2, new_sigma, denoise(x_2, new_sigma * s_in))
            x = x + (d + d_2) / 2 * dt
        last_sigma = new_sigma
    return x


@torch.no_grad()
def sample_lcm(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
               callback: StepCallback | None = None) -> Tensor:
    """Latent Consistency Model sampling as A1111's `sd_samplers_lcm.sample_lcm` ("LCM").

    Each step jumps to the denoised prediction and re-noises it to the next sigma. The denoiser must be
    the LCM one (see `schedules.LCMSchedule`).
    """
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = denoise(x, sigmas[i] * s_in)
        _report(callback, x, i, sigmas[i], sigmas[i], denoised)
        x = denoised
        if sigmas[i + 1] > 0:
            x = x + sigmas[i + 1] * noise(sigmas[i], sigmas[i + 1])
    return x


def timesteps_of(sigmas: Tensor, schedule: DiscreteSchedule) -> list[int]:
    """The integer model timesteps of table sigmas (the inverse of `schedule.sigmas[t]`)."""
    return [int(round(float(t))) for t in schedule.sigma_to_t(sigmas.to(schedule.sigmas))]


def to_vp(x: Tensor, sigma: Tensor) -> Tensor:
    """k-diffusion scaling -> VP scaling at noise level sigma: x / sqrt(1 + sigma^2)."""
    return x / (1 + sigma**2) ** 0.5


def predict_eps(denoise: Denoiser, x_vp: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """(eps, x_k): the network's noise prediction for the VP latent `x_vp` at noise level `sigma`.

    The denoiser scales its input by 1/sqrt(1 + sigma^2), so it sees exactly `x_vp`.
    """
    x_k = x_vp * (1 + sigma**2) ** 0.5
    denoised = denoise(x_k, sigma * x_vp.new_ones([x_vp.shape[0]]))
    return (x_k - denoised) / sigma, x_k


def _ddim_loop(denoise: Denoiser, x: Tensor, sigmas: Tensor, schedule: DiscreteSchedule, noise: NoiseSampler,
               callback: StepCallback | None, eta: float, cfgpp: bool) -> Tensor:
    timesteps = timesteps_of(sigmas, schedule)
    alphas = schedule.alphas_cumprod
    x = to_vp(x, sigmas[0])
    for i in range(len(timesteps) - 1):
        a_t, a_prev = float(alphas[timesteps[i]]), float(alphas[timesteps[i + 1]])
        sigma = schedule.sigmas[timesteps[i]]
        sigma_t = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        e_t, x_k = predict_eps(denoise, x, sigma)
        direction = e_t
        if cfgpp:
            uncond = getattr(denoise, "last_uncond_denoised", None)
            if uncond is None:
                raise InvalidRequest("sampler_name", "DDIM CFG++ needs a denoiser that reports its unconditional prediction")
            direction = (x_k - uncond) / sigma
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        _report(callback, x_k, i, sigma, sigma, pred_x0)
        # A1111 draws noise on every step, even when eta (so sigma_t) is 0.
        step_noise = sigma_t * noise(sigma, schedule.sigmas[timesteps[i + 1]])
        x = math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev - sigma_t**2) * direction + step_noise
    return x


@torch.no_grad()
def sample_ddim(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, schedule: DiscreteSchedule, noise: NoiseSampler,
                callback: StepCallback | None = None, eta: float = 0.0) -> Tensor:
    """DDIM (Song et al., 2020) as A1111's `sd_samplers_timesteps_impl.ddim` ("DDIM").

    `sigmas` are table sigmas of the timesteps, descending; it runs len(sigmas) - 1 steps and returns
    the VP latent at the last timestep, as A1111 does.
    """
    return _ddim_loop(denoise, x, sigmas, schedule, noise, callback, eta, cfgpp=False)


@torch.no_grad()
def sample_ddim_cfgpp(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, schedule: DiscreteSchedule,
                      noise: NoiseSampler, callback: StepCallback | None = None, eta: float = 0.0) -> Tensor:
    """DDIM with CFG++ (Chung et al., 2024) as A1111's `sd_samplers_timesteps_impl.ddim_cfgpp` ("DDIM CFG++").

    The step direction uses the unconditional noise prediction, read from the denoiser's
    `last_uncond_denoised`. A1111 also scales the CFG scale by 1/12.5 for this sampler; that is the
    denoiser's job (registry option `cond_scale_multiplier`).
    """
    return _ddim_loop(denoise, x, sigmas, schedule, noise, callback, eta, cfgpp=True)


@torch.no_grad()
def sample_plms(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, schedule: DiscreteSchedule, noise: NoiseSampler,
                callback: StepCallback | None = None) -> Tensor:
    """PLMS / pseudo linear multistep (Liu et al., 2022) as A1111's `sd_samplers_timesteps_impl.plms` ("PLMS").

    Deterministic; `noise` is never called. Returns the VP latent at the last timestep.
    """
    timesteps = timesteps_of(sigmas, schedule)
    alphas = schedule.alphas_cumprod
    x = to_vp(x, sigmas[0])
    old_eps: list[Tensor] = []

    def step_from(x: Tensor, e_t: Tensor, a_t: float, a_prev: float) -> tuple[Tensor, Tensor]:
        pred_x0 = (x - math.sqrt(1 - a_t) * e_t) / math.sqrt(a_t)
        return math.sqrt(a_prev) * pred_x0 + math.sqrt(1 - a_prev) * e_t, pred_x0

    for i in range(len(timesteps) - 1):
        a_t, a_prev = float(alphas[timesteps[i]]), float(alphas[timesteps[i + 1]])
        sigma, sigma_next = schedule.sigmas[timesteps[i]], schedule.sigmas[timesteps[i + 1]]
        e_t, x_k = predict_eps(denoise, x, sigma)
        if not old_eps:
            # Pseudo improved Euler: one extra evaluation at the next timestep.
            x_prev, _ = step_from(x, e_t, a_t, a_prev)
            e_t_next, _ = predict_eps(denoise, x_prev, sigma_next)
            e_t_prime = (e_t + e_t_next) / 2
        elif len(old_eps) == 1:
            e_t_prime = (3 * e_t - old_eps[-1]) / 2
        elif len(old_eps) == 2:
            e_t_prime = (23 * e_t - 16 * old_eps[-1] + 5 * old_eps[-2]) / 12
        else:
            e_t_prime = (55 * e_t - 59 * old_eps[-1] + 37 * old_eps[-2] - 9 * old_eps[-3]) / 24
        x_prev, pred_x0 = step_from(x, e_t_prime, a_t, a_prev)
        old_eps.append(e_t)
        if len(old_eps) >= 4:
            old_eps.pop(0)
        _report(callback, x_k, i, sigma, sigma, pred_x0)
        x = x_prev
    return x


__all__ = [
    "Denoiser",
    "NoiseSampler",
    "StepCallback",
    "predict_eps",
    "sample_ddim",
    "sample_ddim_cfgpp",
    "sample_dpm_2",
    "sample_dpm_2_ancestral",
    "sample_dpm_adaptive",
    "sample_dpm_fast",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_3m_sde",
    "sample_dpmpp_sde",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_lcm",
    "sample_lms",
    "sample_plms",
    "sample_restart",
    "timesteps_of",
    "to_vp",
]
