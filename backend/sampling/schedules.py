"""Sigma schedules: the model's discrete noise table and A1111's "Schedule type" functions.

Everything here is a pure function of its arguments. The values follow A1111 v1.10.1
(modules/sd_schedulers.py) and k-diffusion (`get_sigmas_*`, `external.DiscreteSchedule`):
most schedules come back in float32 because A1111 builds them with default-dtype
`torch.linspace` or `torch.FloatTensor`; `uniform` keeps the model table's dtype, as
k-diffusion's `get_sigmas` does. Every schedule is built on the CPU.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

# Align Your Steps 11-sigma tables (research.nvidia.com/labs/toronto-ai/AlignYourSteps/howto.html),
# exactly the values A1111 ships.
AYS_SD15_SIGMAS = (14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029)
AYS_SDXL_SIGMAS = (14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029)


def append_zero(sigmas: Tensor) -> Tensor:
    """Return `sigmas` with a final 0, the end point every sampler runs to."""
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def scaled_linear_alphas_cumprod(beta_start: float = 0.00085, beta_end: float = 0.012, steps: int = 1000,
                                 *, dtype: torch.dtype = torch.float32) -> Tensor:
    """The SD1/SD2/SDXL training schedule ("scaled linear" betas) as cumulative alpha products.

    Computed in float64 and rounded once to `dtype`, as ldm's `register_schedule` does, which is
    where A1111's `model.alphas_cumprod` comes from.
    """
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


class DiscreteSchedule:
    """A discrete-time model's noise levels, as k-diffusion's `DiscreteSchedule` / `CompVisDenoiser`.

    `sigmas[t] = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t])`, ascending in t. Continuous
    timesteps map to sigmas by linear interpolation of log sigma between neighbouring entries.
    """

    def __init__(self, alphas_cumprod: Tensor) -> None:
        self.alphas_cumprod = alphas_cumprod
        self.sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> Tensor:
        """The smallest sigma of the table (timestep 0)."""
        return self.sigmas[0]

    @property
    def sigma_max(self) -> Tensor:
        """The largest sigma of the table (the last timestep)."""
        return self.sigmas[-1]

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Continuous timestep of each sigma: log-sigma interpolation between table entries.

        Sigmas beyond the table's ends clamp to timestep 0 or the last one, as in k-diffusion.
        """
        device = sigma.device
        log_sigma = sigma.to(self.log_sigmas.device).log()
        count = self.log_sigmas.shape[0]
        # Index of the last table entry at or below log_sigma, kept inside [0, count - 2].
        below = (log_sigma.reshape(1, -1) >= self.log_sigmas[:, None]).sum(dim=0)
        low_idx = (below - 1).clamp(min=0, max=count - 2)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma.reshape(-1)) / (low - high)).clamp(0, 1)
        t = (1 - w) * low_idx + w * high_idx
        return t.view(sigma.shape).to(device)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Sigma at continuous timestep `t` (clamped to the table), the inverse of `sigma_to_t`."""
        t = t.to(self.log_sigmas.device, self.log_sigmas.dtype).clamp(0, self.log_sigmas.shape[0] - 1)
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp()

    def get_sigmas(self, n: int) -> Tensor:
        """`n` sigmas uniform in timestep from the last timestep to 0, then a 0 (k-diffusion's `get_sigmas`)."""
        t_max = self.sigmas.shape[0] - 1
        # Default-dtype (float32) timesteps, as k-diffusion builds them.
        t = torch.linspace(t_max, 0, n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))


class LCMSchedule(DiscreteSchedule):
    """The 50-entry table A1111's LCM sampler uses (sd_samplers_lcm.LCMCompVisDenoiser).

    It keeps every `len(alphas_cumprod) // original_steps`-th entry, ending at the last timestep.
    `sigma_to_t` snaps to the nearest kept entry and returns its integer timestep, and the
    denoiser for LCM must apply `boundary_scalings` to its output (LCM's consistency scalings).
    """

    def __init__(self, alphas_cumprod: Tensor, original_steps: int = 50) -> None:
        total = alphas_cumprod.shape[0]
        self.skip_steps = total // original_steps
        # A1111 copies the kept entries into a float32 buffer whatever the model's dtype.
        kept = alphas_cumprod[self.skip_steps - 1::self.skip_steps][-original_steps:].to(torch.float32)
        super().__init__(kept)

    def sigma_to_t(self, sigma: Tensor) -> Tensor:
        """Integer timestep of the nearest kept entry (in log sigma)."""
        dists = sigma.to(self.log_sigmas.device).log().reshape(1, -1) - self.log_sigmas[:, None]
        index = dists.abs().argmin(dim=0).view(sigma.shape)
        return (index * self.skip_steps + (self.skip_steps - 1)).to(sigma.device)

    def t_to_sigma(self, t: Tensor) -> Tensor:
        """Sigma at model timestep `t`, interpolating between kept entries."""
        index = ((t - (self.skip_steps - 1)) / self.skip_steps).float()
        return super().t_to_sigma(index.clamp(min=0, max=self.sigmas.shape[0] - 1))

    def get_sigmas(self, n: int) -> Tensor:
        """`n` sigmas uniform in model timestep between the table's ends, then a 0."""
        start = self.sigma_to_t(self.sigma_max)
        end = self.sigma_to_t(self.sigma_min)
        t = torch.linspace(float(start), float(end), n, device=self.sigmas.device)
        return append_zero(self.t_to_sigma(t))

    def boundary_scalings(self, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """LCM's (c_skip, c_out) for `sigma`: the denoiser returns c_out * denoised + c_skip * x."""
        sigma_data = 0.5
        scaled_t = self.sigma_to_t(sigma) * 10.0
        c_skip = sigma_data**2 / (scaled_t**2 + sigma_data**2)
        c_out = scaled_t / (scaled_t**2 + sigma_data**2) ** 0.5
        return c_skip, c_out


def _from_floats(values: list[float]) -> Tensor:
    return torch.tensor(values, dtype=torch.float32)


def uniform(n: int, schedule: DiscreteSchedule) -> Tensor:
    """"Uniform": the model's own discretisation, uniform in timestep (also Automatic's fallback)."""
    return schedule.get_sigmas(n)


def karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """"Karras": Karras et al. (2022) eq. 5, k-diffusion's `get_sigmas_karras`."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """"Exponential": uniform in log sigma, k-diffusion's `get_sigmas_exponential`."""
    return append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def polyexponential(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """"Polyexponential": polynomial in log sigma, k-diffusion's `get_sigmas_polyexponential`."""
    ramp = torch.linspace(1, 0, n) ** rho
    log_min, log_max = math.log(sigma_min), math.log(sigma_max)
    return append_zero(torch.exp(ramp * (log_max - log_min) + log_min))


def _timestep_spaced(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule, sgm: bool) -> Tensor:
    dtype = schedule.sigmas.dtype
    start = schedule.sigma_to_t(torch.tensor(sigma_max, dtype=dtype))
    end = schedule.sigma_to_t(torch.tensor(sigma_min, dtype=dtype))
    # SGM drops the end point so the last sampled sigma stays above sigma_min.
    timesteps = torch.linspace(float(start), float(end), n + 1)[:-1] if sgm else torch.linspace(float(start), float(end), n)
    sigmas = schedule.t_to_sigma(timesteps.to(dtype))
    return append_zero(sigmas.to(torch.float32))


def sgm_uniform(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule) -> Tensor:
    """"SGM Uniform": n timesteps uniform between sigma_max and sigma_min, the end point excluded."""
    return _timestep_spaced(n, sigma_min, sigma_max, schedule, sgm=True)


def normal(n: int, sigma_min: float, sigma_max: float, schedule: DiscreteSchedule) -> Tensor:
    """"Normal": n timesteps uniform between sigma_max and sigma_min, both included."""
    return _timestep_spaced(n, sigma_min, sigma_max, schedule, sgm=False)


def kl_optimal(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """"KL Optimal" (Sabour et al., 2024): uniform in arctan(sigma).

    As in A1111, it has n + 1 entries and ends at sigma_min, not at 0.
    """
    alpha_min = torch.arctan(torch.tensor(sigma_min))
    alpha_max = torch.arctan(torch.tensor(sigma_max))
    frac = torch.arange(n + 1) / n
    return torch.tan(frac * alpha_min + (1.0 - frac) * alpha_max)


def align_your_steps(n: int, is_sdxl: bool = False) -> Tensor:
    """"Align Your Steps": NVIDIA's 11-sigma table, log-linearly resampled to n sigmas, then a 0.

    The table is fixed (SD1.5 or SDXL); A1111 ignores the model's sigma_min/sigma_max here.
    """
    table = AYS_SDXL_SIGMAS if is_sdxl else AYS_SD15_SIGMAS
    if n == len(table):
        return _from_floats([*table, 0.0])
    xs = np.linspace(0, 1, len(table))
    ys = np.log(np.asarray(table[::-1]))
    resampled = np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1]
    return _from_floats([*resampled.tolist(), 0.0])


def simple(n: int, schedule: DiscreteSchedule) -> Tensor:
    """"Simple": every len(table)/n-th table sigma from the top, then a 0.

    A1111 divides by zero for n == 0; the degenerate schedule [0] is returned instead.
    """
    if n == 0:
        return _from_floats([0.0])
    stride = len(schedule.sigmas) / n
    return _from_floats([float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(n)] + [0.0])


def ddim(n: int, schedule: DiscreteSchedule) -> Tensor:
    """"DDIM": table sigmas at timesteps 1, 1 + k, 1 + 2k, ... (k = len(table) // n), descending, then a 0.

    The count is len(range(1, len(table), k)) + 1, which can exceed n + 1, as in A1111.
    A1111 divides by zero for n == 0; the degenerate schedule [0] is returned instead.
    """
    if n == 0:
        return _from_floats([0.0])
    stride = max(len(schedule.sigmas) // n, 1)
    picked = [float(schedule.sigmas[t]) for t in range(1, len(schedule.sigmas), stride)]
    return _from_floats(picked[::-1] + [0.0])


def beta(n: int, sigma_min: float, sigma_max: float, alpha: float = 0.6, beta_param: float = 0.6) -> Tensor:
    """"Beta" (Lee et al., 2024, arXiv:2407.12173) as in A1111 v1.10.1.

    Sigmas are the Beta(alpha, beta) quantiles of 1 - linspace(0, 1, n), mapped linearly onto
    [sigma_min, sigma_max] (not through timesteps), then a 0. Needs scipy at run time.
    """
    from scipy import stats  # heavy optional dependency, imported only for this schedule

    quantiles = [float(stats.beta.ppf(q, alpha, beta_param)) for q in 1 - np.linspace(0, 1, n)]
    return _from_floats([sigma_min + q * (sigma_max - sigma_min) for q in quantiles] + [0.0])


__all__ = [
    "AYS_SD15_SIGMAS",
    "AYS_SDXL_SIGMAS",
    "DiscreteSchedule",
    "LCMSchedule",
    "align_your_steps",
    "append_zero",
    "beta",
    "ddim",
    "exponential",
    "karras",
    "kl_optimal",
    "normal",
    "polyexponential",
    "scaled_linear_alphas_cumprod",
    "sgm_uniform",
    "simple",
    "uniform",
]
