"""UniPC (Zhao et al., 2023) multistep predictor-corrector, as A1111 runs it for "UniPC".

A1111 (modules/sd_samplers_timesteps_impl.unipc with models/diffusion/uni_pc) solves in continuous
time t in [1/N, 1] over a VP schedule whose log alpha is interpolated linearly between the model's
discrete timesteps, with data prediction (predict_x0) and no thresholding. The network sees the
timestep (t - 1/N) * 1000, a float; here it is reached through the sigma-space denoiser at
`schedule.t_to_sigma` of that timestep, which gives the same network call.
"""
from __future__ import annotations

import torch
from torch import Tensor

from backend.errors import InvalidRequest
from backend.sampling.samplers import Denoiser, NoiseSampler, StepCallback, predict_eps, timesteps_of, to_vp
from backend.sampling.schedules import DiscreteSchedule

VARIANTS = ("bh1", "bh2")
SKIP_TYPES = ("time_uniform", "time_quadratic", "logSNR")


def _interpolate(x: Tensor, xp: Tensor, fp: Tensor) -> Tensor:
    """Piecewise-linear f(x) through (xp, fp), xp ascending, extended linearly beyond both ends."""
    idx = (torch.searchsorted(xp, x.reshape(-1)) - 1).clamp(0, xp.shape[0] - 2)
    x0, x1, y0, y1 = xp[idx], xp[idx + 1], fp[idx], fp[idx + 1]
    return (y0 + (x.reshape(-1) - x0) * (y1 - y0) / (x1 - x0)).reshape(x.shape)


class VPSchedule:
    """The continuous VP schedule UniPC uses (uni_pc.NoiseScheduleVP('discrete')), in float64.

    It lives on the CPU whatever the model's device: its values are scalars that combine with
    latents on any device, and keeping them together avoids device mismatches.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.total_n = alphas_cumprod.shape[0]
        self.t_array = torch.linspace(0.0, 1.0, self.total_n + 1, dtype=torch.float64)[1:]
        self.log_alpha_array = 0.5 * torch.log(alphas_cumprod.detach().cpu().to(torch.float64))

    def log_alpha(self, t: Tensor) -> Tensor:
        return _interpolate(t, self.t_array, self.log_alpha_array)

    def alpha(self, t: Tensor) -> Tensor:
        return self.log_alpha(t).exp()

    def std(self, t: Tensor) -> Tensor:
        return torch.sqrt(1.0 - torch.exp(2.0 * self.log_alpha(t)))

    def lambda_(self, t: Tensor) -> Tensor:
        log_alpha = self.log_alpha(t)
        return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))

    def inverse_lambda(self, lamb: Tensor) -> Tensor:
        log_alpha = -0.5 * torch.logaddexp(torch.zeros_like(lamb), -2.0 * lamb)
        return _interpolate(log_alpha, self.log_alpha_array.flip(0), self.t_array.flip(0))

    def model_time(self, t: Tensor) -> Tensor:
        """The network's timestep for continuous time t."""
        return (t - 1.0 / self.total_n) * 1000.0


def _time_grid(vp: VPSchedule, skip_type: str, t_start: float, t_end: float, steps: int) -> Tensor:
    if skip_type == "logSNR":
        lambdas = torch.linspace(float(vp.lambda_(torch.tensor(t_start, dtype=torch.float64))),
                                 float(vp.lambda_(torch.tensor(t_end, dtype=torch.float64))), steps + 1,
                                 dtype=torch.float64)
        return vp.inverse_lambda(lambdas)
    if skip_type == "time_quadratic":
        return torch.linspace(t_start**0.5, t_end**0.5, steps + 1, dtype=torch.float64) ** 2
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64)


class _UniPC:
    def __init__(self, denoise: Denoiser, schedule: DiscreteSchedule, vp: VPSchedule, variant: str) -> None:
        self.denoise = denoise
        self.schedule = schedule
        self.vp = vp
        self.variant = variant

    def data_prediction(self, x: Tensor, t: Tensor) -> Tensor:
        sigma = self.schedule.t_to_sigma(self.vp.model_time(t).to(self.schedule.sigmas.device))
        eps, _ = predict_eps(self.denoise, x, sigma.to(x.dtype))
        return ((x - self.vp.std(t) * eps) / self.vp.alpha(t)).to(x.dtype)

    def update(self, x: Tensor, model_prev: list[Tensor], t_prev: list[Tensor], t: Tensor, order: int,
               use_corrector: bool) -> tuple[Tensor, Tensor | None]:
        """One B(h) UniPC step from t_prev[-1] to t (predictor, then corrector if asked)."""
        vp = self.vp
        lambda_prev_0, lambda_t = vp.lambda_(t_prev[-1]), vp.lambda_(t)
        model_prev_0 = model_prev[-1]
        sigma_prev_0, sigma_t = vp.std(t_prev[-1]), vp.std(t)
        alpha_t = vp.alpha(t)
        h = lambda_t - lambda_prev_0

        rks: list[Tensor] = []
        d1s: list[Tensor] = []
        for i in range(1, order):
            rk = (vp.lambda_(t_prev[-(i + 1)]) - lambda_prev_0) / h
            rks.append(rk)
            d1s.append((model_prev[-(i + 1)] - model_prev_0) / rk)
        rks_t = torch.stack([*rks, torch.ones_like(h)])

        hh = -h  # data prediction
        h_phi_1 = torch.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.variant == "bh1" else torch.expm1(hh)
        rows, b = [], []
        factorial_i = 1
        for i in range(1, order + 1):
            rows.append(rks_t ** (i - 1))
            b.append(h_phi_k * factorial_i / b_h)
            factorial_i *= i + 1
            h_phi_k = h_phi_k / hh - 1 / factorial_i
        r_mat = torch.stack(rows)
        b_vec = torch.stack(b)

        x_t_ = (sigma_t / sigma_prev_0) * x - alpha_t * h_phi_1 * model_prev_0
        if d1s:
            rhos_p = torch.tensor([0.5], dtype=torch.float64) if order == 2 else torch.linalg.solve(r_mat[:-1, :-1], b_vec[:-1])
            pred_res = sum(rho * d for rho, d in zip(rhos_p, d1s))
            x_t = x_t_ - alpha_t * b_h * pred_res
        else:
            x_t = x_t_
        if not use_corrector:
            return x_t.to(x.dtype), None
        rhos_c = torch.tensor([0.5], dtype=torch.float64) if order == 1 else torch.linalg.solve(r_mat, b_vec)
        model_t = self.data_prediction(x_t.to(x.dtype), t)
        corr_res = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s))
        x_t = x_t_ - alpha_t * b_h * (corr_res + rhos_c[-1] * (model_t - model_prev_0))
        return x_t.to(x.dtype), model_t


@torch.no_grad()
def sample_unipc(denoise: Denoiser, x: Tensor, sigmas: Tensor, *, schedule: DiscreteSchedule, noise: NoiseSampler,
                 callback: StepCallback | None = None, order: int = 3, variant: str = "bh1",
                 skip_type: str = "time_uniform", lower_order_final: bool = True, full_range: bool = False) -> Tensor:
    """UniPC-B(h) multistep with data prediction, as A1111's `sd_samplers_timesteps_impl.unipc` ("UniPC").

    `sigmas` are table sigmas of the timesteps, descending; UniPC takes len(sigmas) steps on its own
    time grid down to t = 1/N. With `full_range` (A1111's txt2img) it starts at t = 1, the last
    timestep; otherwise (img2img) at sigmas[0]'s timestep. `order` is capped at the step count, where
    A1111 would fail an assertion. Deterministic: `noise` is never called. Returns the VP latent at t = 1/N.
    """
    if variant not in VARIANTS:
        raise InvalidRequest("uni_pc_variant", f"must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if skip_type not in SKIP_TYPES:
        raise InvalidRequest("uni_pc_skip_type", f"must be one of {', '.join(SKIP_TYPES)}, got {skip_type!r}")
    vp = VPSchedule(schedule.alphas_cumprod)
    steps = len(sigmas)
    order = max(1, min(order, steps))
    t_end = 1.0 / vp.total_n
    t_start = 1.0 if full_range else float(timesteps_of(sigmas[:1], schedule)[0]) / 1000 + 1 / 1000
    grid = _time_grid(vp, skip_type, t_start, t_end, steps)
    solver = _UniPC(denoise, schedule, vp, variant)
    x = to_vp(x, sigmas[0])

    def report(index: int, x: Tensor, t: Tensor, model_x: Tensor | None) -> None:
        if callback is not None:
            sigma = schedule.t_to_sigma(vp.model_time(t).to(schedule.sigmas.device))
            # The last step has no model evaluation; the final latent stands in for the prediction.
            denoised = x if model_x is None else model_x
            callback({"x": x * (1 + sigma**2) ** 0.5, "i": index, "sigma": sigma, "sigma_hat": sigma,
                      "denoised": denoised})

    model_prev = [solver.data_prediction(x, grid[0])]
    t_prev = [grid[0]]
    for init_order in range(1, order):
        x, model_x = solver.update(x, model_prev, t_prev, grid[init_order], init_order, use_corrector=True)
        report(init_order - 1, x, grid[init_order], model_x)
        model_prev.append(model_x)
        t_prev.append(grid[init_order])
    for step in range(order, steps + 1):
        step_order = min(order, steps + 1 - step) if lower_order_final else order
        x, model_x = solver.update(x, model_prev, t_prev, grid[step], step_order, use_corrector=step != steps)
        report(step - 1, x, grid[step], model_x)
        model_prev = model_prev[1:] + model_prev[-1:]
        t_prev = t_prev[1:] + [grid[step]]
        if step < steps:
            model_prev[-1] = model_x
    return x


__all__ = ["SKIP_TYPES", "VARIANTS", "VPSchedule", "sample_unipc"]
