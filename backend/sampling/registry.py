"""A1111's sampler and scheduler tables, name resolution and sigma-schedule rules, as data.

The tables follow A1111 v1.10.1 (`sd_samplers.all_samplers`, `sd_schedulers.schedulers`); the
rules follow `KDiffusionSampler.get_sigmas`, `CompVisSampler.get_timesteps`,
`sd_samplers_common.setup_img2img_steps` and `Sampler.initialize`. Options A1111 reads from
`opts` arrive here as a plain mapping with A1111's option keys.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from backend.errors import InvalidRequest
from backend.sampling import samplers, schedules
from backend.sampling.samplers import Denoiser, NoiseSampler, StepCallback
from backend.sampling.schedules import DiscreteSchedule, LCMSchedule
from backend.sampling.uni_pc import sample_unipc

_NO_OPTS: Mapping[str, Any] = MappingProxyType({})

# Timestep samplers pick from 1000 training steps, as A1111 hard-codes.
_TRAINING_STEPS = 1000


@dataclass(frozen=True)
class SamplerOptions:
    """What A1111 knows about a sampler, plus what our registry needs to call it.

    `params` names the `SamplerParams` fields the sampler accepts (A1111 passes only those).
    `needs_schedule` marks the timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC).
    `cond_scale_multiplier` and `needs_uncond_prediction` tell the CFG denoiser what DDIM CFG++ needs.
    `lcm` means the model must be wrapped with `LCMSchedule` and LCM's output scalings.
    """

    scheduler: str | None = None
    second_order: bool = False
    uses_ensd: bool = False
    brownian_noise: bool = False
    discard_next_to_last_sigma: bool = False
    solver_type: str | None = None
    needs_schedule: bool = False
    params: tuple[str, ...] = ()
    cond_scale_multiplier: float = 1.0
    needs_uncond_prediction: bool = False
    lcm: bool = False


def _model_range(schedule: DiscreteSchedule, steps: int) -> dict[str, Any]:
    return {"sigma_min": schedule.sigma_min.item(), "sigma_max": schedule.sigma_max.item()}


def _model_range_and_steps(schedule: DiscreteSchedule, steps: int) -> dict[str, Any]:
    return {**_model_range(schedule, steps), "n": steps}


def _unipc_full_range(schedule: DiscreteSchedule, steps: int) -> dict[str, Any]:
    return {"full_range": True}


@dataclass(frozen=True)
class SamplerSpec:
    """One row of A1111's sampler list.

    `txt2img_args(schedule, steps)` gives the extra arguments A1111's txt2img pass (`Sampler.sample`)
    uses instead of the schedule's own range: DPM fast/adaptive integrate over the model's full sigma
    range and UniPC starts at the last timestep.
    """

    name: str
    func: Callable[..., Tensor]
    aliases: tuple[str, ...]
    options: SamplerOptions = field(default_factory=SamplerOptions)
    txt2img_args: Callable[[DiscreteSchedule, int], dict[str, Any]] | None = None

    @property
    def eta_default(self) -> float:
        """A1111's default eta: opts.eta_ddim (0) for timestep samplers, opts.eta_ancestral (1) otherwise."""
        return 0.0 if self.options.needs_schedule else 1.0

    @property
    def eta_infotext_key(self) -> str:
        """The infotext key A1111 writes a non-default eta under."""
        return "Eta DDIM" if self.options.needs_schedule else "Eta"

    def total_steps(self, steps: int) -> int:
        """Denoiser calls per generation for prompt scheduling: twice the steps for second-order samplers."""
        return steps * 2 if self.options.second_order else steps

    def api_options(self) -> dict[str, Any]:
        """The `options` dict A1111 shows for this sampler in /sdapi/v1/samplers."""
        o = self.options
        candidates = {
            "scheduler": o.scheduler,
            "discard_next_to_last_sigma": o.discard_next_to_last_sigma or None,
            "uses_ensd": o.uses_ensd or None,
            "second_order": o.second_order or None,
            "brownian_noise": o.brownian_noise or None,
            "solver_type": o.solver_type,
        }
        return {key: value for key, value in candidates.items() if value is not None}


@dataclass(frozen=True)
class ScheduleInputs:
    """Everything a schedule function may need, resolved from the model and opts."""

    n: int
    sigma_min: float
    sigma_max: float
    schedule: DiscreteSchedule
    rho: float | None = None
    is_sdxl: bool = False
    beta_alpha: float = 0.6
    beta_beta: float = 0.6


@dataclass(frozen=True)
class SchedulerSpec:
    """One row of A1111's "Schedule type" list. `func` is None only for Automatic."""

    name: str
    label: str
    func: Callable[[ScheduleInputs], Tensor] | None
    aliases: tuple[str, ...] = ()
    need_inner_model: bool = False
    default_rho: float = -1.0

    def api_dict(self) -> dict[str, Any]:
        """The item A1111 shows for this scheduler in /sdapi/v1/schedulers."""
        return {"name": self.name, "label": self.label, "aliases": list(self.aliases) or None,
                "default_rho": self.default_rho, "need_inner_model": self.need_inner_model}


@dataclass
class SamplerParams:
    """Per-request sampler parameters, already resolved from the request and opts.

    eta None means A1111's default (`SamplerSpec.eta_default`); s_tmax 0 means infinity, as A1111.
    The uni_pc_* fields are A1111's UniPC options.
    """

    eta: float | None = None
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 0.0
    s_noise: float = 1.0
    uni_pc_variant: str = "bh1"
    uni_pc_skip_type: str = "time_uniform"
    uni_pc_order: int = 3
    uni_pc_lower_order_final: bool = True


_CHURN = ("s_churn", "s_tmin", "s_tmax", "s_noise")
_UNIPC = ("uni_pc_order", "uni_pc_variant", "uni_pc_skip_type", "uni_pc_lower_order_final")
_KWARG_NAMES = {"uni_pc_order": "order", "uni_pc_variant": "variant", "uni_pc_skip_type": "skip_type",
                "uni_pc_lower_order_final": "lower_order_final"}

SAMPLERS: tuple[SamplerSpec, ...] = (
    SamplerSpec("DPM++ 2M", samplers.sample_dpmpp_2m, ("k_dpmpp_2m",), SamplerOptions(scheduler="karras")),
    SamplerSpec("DPM++ SDE", samplers.sample_dpmpp_sde, ("k_dpmpp_sde",),
                SamplerOptions(scheduler="karras", second_order=True, brownian_noise=True, params=("eta", "s_noise"))),
    SamplerSpec("DPM++ 2M SDE", samplers.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde",),
                SamplerOptions(scheduler="exponential", brownian_noise=True, params=("eta", "s_noise"))),
    SamplerSpec("DPM++ 2M SDE Heun", samplers.sample_dpmpp_2m_sde, ("k_dpmpp_2m_sde_heun",),
                SamplerOptions(scheduler="exponential", brownian_noise=True, solver_type="heun",
                               params=("eta", "s_noise"))),
    SamplerSpec("DPM++ 2S a", samplers.sample_dpmpp_2s_ancestral, ("k_dpmpp_2s_a",),
                SamplerOptions(scheduler="karras", uses_ensd=True, second_order=True, params=("eta", "s_noise"))),
    SamplerSpec("DPM++ 3M SDE", samplers.sample_dpmpp_3m_sde, ("k_dpmpp_3m_sde",),
                SamplerOptions(scheduler="exponential", discard_next_to_last_sigma=True, brownian_noise=True,
                               params=("eta", "s_noise"))),
    # A1111 passes Euler a only eta: it is missing from sampler_extra_params, so s_noise stays 1.
    SamplerSpec("Euler a", samplers.sample_euler_ancestral, ("k_euler_a", "k_euler_ancestral"),
                SamplerOptions(uses_ensd=True, params=("eta",))),
    SamplerSpec("Euler", samplers.sample_euler, ("k_euler",), SamplerOptions(params=_CHURN)),
    SamplerSpec("LMS", samplers.sample_lms, ("k_lms",)),
    SamplerSpec("Heun", samplers.sample_heun, ("k_heun",), SamplerOptions(second_order=True, params=_CHURN)),
    SamplerSpec("DPM2", samplers.sample_dpm_2, ("k_dpm_2",),
                SamplerOptions(scheduler="karras", discard_next_to_last_sigma=True, second_order=True, params=_CHURN)),
    SamplerSpec("DPM2 a", samplers.sample_dpm_2_ancestral, ("k_dpm_2_a",),
                SamplerOptions(scheduler="karras", discard_next_to_last_sigma=True, uses_ensd=True, second_order=True,
                               params=("eta", "s_noise"))),
    SamplerSpec("DPM fast", samplers.sample_dpm_fast, ("k_dpm_fast",),
                SamplerOptions(uses_ensd=True, params=("eta", "s_noise")), txt2img_args=_model_range_and_steps),
    SamplerSpec("DPM adaptive", samplers.sample_dpm_adaptive, ("k_dpm_ad",),
                SamplerOptions(uses_ensd=True, params=("eta",)), txt2img_args=_model_range),
    SamplerSpec("Restart", samplers.sample_restart, ("restart",), SamplerOptions(scheduler="karras", second_order=True)),
    SamplerSpec("DDIM", samplers.sample_ddim, ("ddim",), SamplerOptions(needs_schedule=True, params=("eta",))),
    SamplerSpec("DDIM CFG++", samplers.sample_ddim_cfgpp, ("ddim_cfgpp",),
                SamplerOptions(needs_schedule=True, params=("eta",), cond_scale_multiplier=1 / 12.5,
                               needs_uncond_prediction=True)),
    SamplerSpec("PLMS", samplers.sample_plms, ("plms",), SamplerOptions(needs_schedule=True)),
    SamplerSpec("UniPC", sample_unipc, ("unipc",), SamplerOptions(needs_schedule=True, params=_UNIPC),
                txt2img_args=_unipc_full_range),
    SamplerSpec("LCM", samplers.sample_lcm, ("k_lcm",), SamplerOptions(lcm=True)),
)


def _uniform(a: ScheduleInputs) -> Tensor:
    return schedules.uniform(a.n, a.schedule)


def _karras(a: ScheduleInputs) -> Tensor:
    return schedules.karras(a.n, a.sigma_min, a.sigma_max, 7.0 if a.rho is None else a.rho)


def _exponential(a: ScheduleInputs) -> Tensor:
    return schedules.exponential(a.n, a.sigma_min, a.sigma_max)


def _polyexponential(a: ScheduleInputs) -> Tensor:
    return schedules.polyexponential(a.n, a.sigma_min, a.sigma_max, 1.0 if a.rho is None else a.rho)


def _sgm_uniform(a: ScheduleInputs) -> Tensor:
    return schedules.sgm_uniform(a.n, a.sigma_min, a.sigma_max, a.schedule)


def _kl_optimal(a: ScheduleInputs) -> Tensor:
    return schedules.kl_optimal(a.n, a.sigma_min, a.sigma_max)


def _align_your_steps(a: ScheduleInputs) -> Tensor:
    return schedules.align_your_steps(a.n, a.is_sdxl)


def _simple(a: ScheduleInputs) -> Tensor:
    return schedules.simple(a.n, a.schedule)


def _normal(a: ScheduleInputs) -> Tensor:
    return schedules.normal(a.n, a.sigma_min, a.sigma_max, a.schedule)


def _ddim(a: ScheduleInputs) -> Tensor:
    return schedules.ddim(a.n, a.schedule)


def _beta(a: ScheduleInputs) -> Tensor:
    return schedules.beta(a.n, a.sigma_min, a.sigma_max, a.beta_alpha, a.beta_beta)


SCHEDULERS: tuple[SchedulerSpec, ...] = (
    SchedulerSpec("automatic", "Automatic", None),
    SchedulerSpec("uniform", "Uniform", _uniform, need_inner_model=True),
    SchedulerSpec("karras", "Karras", _karras, default_rho=7.0),
    SchedulerSpec("exponential", "Exponential", _exponential),
    SchedulerSpec("polyexponential", "Polyexponential", _polyexponential, default_rho=1.0),
    SchedulerSpec("sgm_uniform", "SGM Uniform", _sgm_uniform, aliases=("SGMUniform",), need_inner_model=True),
    SchedulerSpec("kl_optimal", "KL Optimal", _kl_optimal),
    SchedulerSpec("align_your_steps", "Align Your Steps", _align_your_steps),
    SchedulerSpec("simple", "Simple", _simple, need_inner_model=True),
    SchedulerSpec("normal", "Normal", _normal, need_inner_model=True),
    SchedulerSpec("ddim", "DDIM", _ddim, need_inner_model=True),
    SchedulerSpec("beta", "Beta", _beta, need_inner_model=True),
)

AUTOMATIC = SCHEDULERS[0]


def find_sampler(name: str) -> SamplerSpec | None:
    """The sampler with this name or alias, case-insensitively (A1111's `samplers_map`), or None."""
    wanted = name.lower()
    for spec in SAMPLERS:
        if wanted == spec.name.lower() or wanted in (alias.lower() for alias in spec.aliases):
            return spec
    return None


def find_scheduler(name: str) -> SchedulerSpec | None:
    """The scheduler with this name, label or alias, case-insensitively, or None."""
    wanted = name.lower()
    for spec in SCHEDULERS:
        if wanted in (option.lower() for option in (spec.name, spec.label, *spec.aliases)):
            return spec
    return None


def resolve_sampler_and_scheduler(sampler_name: str | None, scheduler_name: str | None, *,
                                  convert_automatic: bool = True) -> tuple[SamplerSpec, SchedulerSpec]:
    """A1111's `get_sampler_and_scheduler`, used by the API and infotext paste.

    A trailing " <scheduler label, name or alias>" on the sampler name is split off as the scheduler
    (legacy "DPM++ 2M Karras"). The remaining name must equal a sampler name exactly, else the first
    sampler (DPM++ 2M) is used; the scheduler must be an exact name or label, else Automatic. With
    `convert_automatic`, a scheduler equal to the sampler's default is reported as Automatic.
    """
    scheduler = next((s for s in SCHEDULERS if scheduler_name in (s.name, s.label)), AUTOMATIC)
    name = sampler_name or SAMPLERS[0].name
    for candidate in SCHEDULERS:
        for option in (candidate.label, candidate.name, *candidate.aliases):
            if name.endswith(" " + option):
                scheduler = candidate
                name = name[: -(len(option) + 1)]
                break
    sampler = next((s for s in SAMPLERS if s.name == name), SAMPLERS[0])
    if convert_automatic and sampler.options.scheduler == scheduler.name:
        scheduler = AUTOMATIC
    return sampler, scheduler


def _effective_scheduler(sampler: SamplerSpec, scheduler: SchedulerSpec) -> SchedulerSpec | None:
    """The scheduler that actually builds the sigmas; None means the model's uniform discretisation."""
    if scheduler.func is not None:
        return scheduler
    return find_scheduler(sampler.options.scheduler) if sampler.options.scheduler else None


def scheduler_label_for_infotext(sampler: SamplerSpec, scheduler: SchedulerSpec) -> str:
    """The "Schedule type" A1111 writes once sampling started: the resolved label, e.g. "Karras" for
    DPM++ 2M with Automatic, and "Automatic" for samplers without a default."""
    resolved = _effective_scheduler(sampler, scheduler)
    return scheduler.label if resolved is None else resolved.label


def model_schedule(sampler: SamplerSpec, schedule: DiscreteSchedule) -> DiscreteSchedule:
    """The sigma table the sampler's denoiser works on: LCM uses its own 50-entry table."""
    return LCMSchedule(schedule.alphas_cumprod) if sampler.options.lcm else schedule


def _discards(sampler: SamplerSpec, opts: Mapping[str, Any]) -> bool:
    return sampler.options.discard_next_to_last_sigma or bool(opts.get("always_discard_next_to_last_sigma", False))


def timestep_sigmas(steps: int, schedule: DiscreteSchedule) -> Tensor:
    """A1111's `CompVisSampler.get_timesteps` as descending table sigmas.

    Timesteps are range(0, 1000, 1000 // steps) + 1, clipped to 999; there are
    len(range(0, 1000, 1000 // steps)) of them, which can exceed `steps`.
    """
    if not 0 < steps <= _TRAINING_STEPS:
        raise InvalidRequest("steps", f"timestep samplers need 1 to {_TRAINING_STEPS} steps, got {steps}")
    timesteps = torch.clip(torch.arange(0, _TRAINING_STEPS, _TRAINING_STEPS // steps) + 1, 0, _TRAINING_STEPS - 1)
    return schedule.sigmas[timesteps.flip(0)]


def _schedule_inputs(scheduler: SchedulerSpec, n: int, schedule: DiscreteSchedule, is_sdxl: bool,
                     opts: Mapping[str, Any]) -> ScheduleInputs:
    m_sigma_min, m_sigma_max = schedule.sigma_min.item(), schedule.sigma_max.item()
    sigma_min, sigma_max = (0.1, 10.0) if opts.get("use_old_karras_scheduler_sigmas", False) else (m_sigma_min, m_sigma_max)
    opt_min, opt_max, opt_rho = opts.get("sigma_min", 0.0), opts.get("sigma_max", 0.0), opts.get("rho", 0.0)
    if opt_min != 0 and opt_min != m_sigma_min:
        sigma_min = opt_min
    if opt_max != 0 and opt_max != m_sigma_max:
        sigma_max = opt_max
    rho = None
    if scheduler.default_rho != -1 and opt_rho != 0 and opt_rho != scheduler.default_rho:
        rho = opt_rho
    return ScheduleInputs(n=n, sigma_min=sigma_min, sigma_max=sigma_max, schedule=schedule, rho=rho, is_sdxl=is_sdxl,
                          beta_alpha=opts.get("beta_dist_alpha", 0.6), beta_beta=opts.get("beta_dist_beta", 0.6))


def build_sigmas(sampler: SamplerSpec, scheduler: SchedulerSpec, steps: int, schedule: DiscreteSchedule, *,
                 is_sdxl: bool = False, opts: Mapping[str, Any] = _NO_OPTS) -> Tensor:
    """The sigmas A1111 samples with (`KDiffusionSampler.get_sigmas`), on the CPU.

    - discard_next_to_last_sigma (the sampler's or opts.always_discard_next_to_last_sigma): build
      steps + 1 sigmas and drop the penultimate one.
    - Automatic uses the sampler's default scheduler, or the model's uniform sigmas if it has none.
    - opts sigma_min / sigma_max / rho override the model's values when non-zero and different;
      use_old_karras_scheduler_sigmas starts from 0.1..10 instead (for every scheduler, as A1111).
    - LCM builds on its own 50-entry table (`model_schedule`).
    - Timestep samplers (DDIM, DDIM CFG++, PLMS, UniPC) ignore the scheduler and get the table sigmas
      of A1111's timesteps, descending and without a final 0 (`timestep_sigmas`).
    """
    discard = _discards(sampler, opts)
    n = steps + 1 if discard else steps
    resolved = _effective_scheduler(sampler, scheduler)
    if sampler.options.needs_schedule:
        return timestep_sigmas(n, schedule).cpu()
    schedule = model_schedule(sampler, schedule)
    if resolved is None or resolved.func is None:
        sigmas = schedule.get_sigmas(n)
    else:
        sigmas = resolved.func(_schedule_inputs(resolved, n, schedule, is_sdxl, opts))
    if discard:
        sigmas = torch.cat([sigmas[:-2], sigmas[-1:]])
    return sigmas.cpu()


def schedule_extra_infotext(sampler: SamplerSpec, scheduler: SchedulerSpec, schedule: DiscreteSchedule, *,
                            opts: Mapping[str, Any] = _NO_OPTS) -> dict[str, Any]:
    """The infotext extras A1111 adds while building sigmas (besides "Schedule type"), in its order."""
    extras: dict[str, Any] = {}
    if opts.get("always_discard_next_to_last_sigma", False) and not sampler.options.discard_next_to_last_sigma:
        extras["Discard penultimate sigma"] = True
    resolved = _effective_scheduler(sampler, scheduler)
    if sampler.options.needs_schedule or resolved is None or resolved.func is None:
        return extras
    schedule = model_schedule(sampler, schedule)
    m_sigma_min, m_sigma_max = schedule.sigma_min.item(), schedule.sigma_max.item()
    opt_min, opt_max, opt_rho = opts.get("sigma_min", 0.0), opts.get("sigma_max", 0.0), opts.get("rho", 0.0)
    if opt_min != 0 and opt_min != m_sigma_min:
        extras["Schedule min sigma"] = opt_min
    if opt_max != 0 and opt_max != m_sigma_max:
        extras["Schedule max sigma"] = opt_max
    if resolved.default_rho != -1 and opt_rho != 0 and opt_rho != resolved.default_rho:
        extras["Schedule rho"] = opt_rho
    if resolved.name == "beta":
        extras["Beta schedule alpha"] = opts.get("beta_dist_alpha", 0.6)
        extras["Beta schedule beta"] = opts.get("beta_dist_beta", 0.6)
    return extras


def img2img_steps(steps: int, denoising_strength: float, *, hires_steps: int | None = None,
                  fix_steps: bool = False) -> tuple[int, int]:
    """A1111's `setup_img2img_steps`: (schedule length, t_enc); t_enc + 1 steps then run.

    Plain img2img: t_enc = int(min(denoising, 0.999) * steps). The hires pass (`hires_steps` given,
    which is hr_second_pass_steps or steps) and opts.img2img_fix_steps instead stretch the schedule to
    int(requested / min(denoising, 0.999)) steps (0 when denoising is 0) and run the requested count.
    """
    if fix_steps or hires_steps is not None:
        requested = hires_steps or steps
        total = int(requested / min(denoising_strength, 0.999)) if denoising_strength > 0 else 0
        return total, requested - 1
    return steps, int(min(denoising_strength, 0.999) * steps)


@dataclass(frozen=True)
class Img2ImgSigmas:
    """The sigmas for an img2img or hires pass and how to build its start latent.

    `sigmas` go to `run_sampler`; `full` is the whole schedule (A1111 takes the Brownian-tree range
    from it). The start latent is `(init_latent + noise * noise_sigma) * input_scale`
    (`img2img_start_latent`). `input_scale` is 1 except for timestep samplers, where A1111 noises the
    latent to timesteps[t_enc] but starts its loop one timestep lower.
    """

    steps: int
    t_enc: int
    full: Tensor
    sigmas: Tensor
    noise_sigma: Tensor
    input_scale: Tensor


def img2img_sigmas(sampler: SamplerSpec, scheduler: SchedulerSpec, steps: int, denoising_strength: float,
                   schedule: DiscreteSchedule, *, hires_steps: int | None = None, fix_steps: bool = False,
                   is_sdxl: bool = False, opts: Mapping[str, Any] = _NO_OPTS) -> Img2ImgSigmas:
    """Section 4.4: the schedule for `img2img_steps`, cut as A1111's `sample_img2img` cuts it.

    k-diffusion samplers run `full[total - t_enc - 1:]`. Timestep samplers run the t_enc timesteps
    below timesteps[t_enc] (at least the lowest one) from a latent noised to timesteps[t_enc].
    """
    total, t_enc = img2img_steps(steps, denoising_strength, hires_steps=hires_steps, fix_steps=fix_steps)
    full = build_sigmas(sampler, scheduler, total, schedule, is_sdxl=is_sdxl, opts=opts)
    if sampler.options.needs_schedule:
        count = len(full)
        run = full[count - t_enc:] if t_enc > 0 else full[count - 1:]
        noise_sigma = full[count - 1 - t_enc]
        scale = ((1 + run[0] ** 2) / (1 + noise_sigma**2)) ** 0.5
        return Img2ImgSigmas(total, t_enc, full, run, noise_sigma, scale)
    run = full[total - t_enc - 1:]
    return Img2ImgSigmas(total, t_enc, full, run, run[0], torch.ones((), dtype=full.dtype))


def img2img_start_latent(plan: Img2ImgSigmas, init_latent: Tensor, noise: Tensor,
                         extra_noise: Tensor | None = None) -> Tensor:
    """The latent an img2img pass starts from: init + noise * sigma (+ opts.img2img_extra_noise * its noise)."""
    x = init_latent + noise * plan.noise_sigma.to(noise)
    if extra_noise is not None:
        x = x + extra_noise
    return x * plan.input_scale.to(x)


def txt2img_start_latent(sampler: SamplerSpec, noise: Tensor, sigmas: Tensor, *,
                         sgm_noise_multiplier: bool = False) -> Tensor:
    """The latent a txt2img pass starts from, given unit noise.

    k-diffusion samplers: noise * sigmas[0], or noise * sqrt(1 + sigmas[0]^2) with
    opts.sgm_noise_multiplier. Timestep samplers start from the unit noise itself in VP scaling,
    which is noise * sqrt(1 + sigmas[0]^2) in ours.
    """
    sigma = sigmas[0].to(noise)
    if sampler.options.needs_schedule or sgm_noise_multiplier:
        return noise * torch.sqrt(1.0 + sigma**2)
    return noise * sigma


def brownian_sigma_range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(smallest positive sigma, largest sigma): the Brownian-tree range A1111 uses for SDE samplers."""
    return sigmas[sigmas > 0].min(), sigmas.max()


def _param_value(spec: SamplerSpec, params: SamplerParams, name: str) -> Any:
    if name == "eta":
        return spec.eta_default if params.eta is None else params.eta
    if name == "s_tmax":
        return params.s_tmax or math.inf
    return getattr(params, name)


def sampler_kwargs(spec: SamplerSpec, params: SamplerParams) -> dict[str, Any]:
    """The parameters the sampler accepts, as keyword arguments (A1111 passes only those)."""
    return {_KWARG_NAMES.get(name, name): _param_value(spec, params, name) for name in spec.options.params}


_SIGMA_INFOTEXT = (("s_churn", "Sigma churn", 0.0), ("s_tmin", "Sigma tmin", 0.0),
                   ("s_tmax", "Sigma tmax", math.inf), ("s_noise", "Sigma noise", 1.0))


def sampler_extra_infotext(spec: SamplerSpec, params: SamplerParams) -> dict[str, Any]:
    """Infotext extras A1111's `Sampler.initialize` writes: "Eta"/"Eta DDIM" when eta is not the
    default, and "Sigma churn/tmin/tmax/noise" when an accepted value is not the default.

    A1111 writes the sigma keys only when the value came from opts rather than the request; callers
    that need that distinction pass the opts-derived values here.
    """
    extras: dict[str, Any] = {}
    if "eta" in spec.options.params:
        eta = _param_value(spec, params, "eta")
        if eta != spec.eta_default:
            extras[spec.eta_infotext_key] = eta
    for name, key, default in _SIGMA_INFOTEXT:
        if name in spec.options.params:
            value = _param_value(spec, params, name)
            if value != default:
                extras[key] = value
    return extras


def run_sampler(spec: SamplerSpec, denoise: Denoiser, x: Tensor, sigmas: Tensor, *, noise: NoiseSampler,
                callback: StepCallback | None = None, schedule: DiscreteSchedule | None = None,
                params: SamplerParams | None = None, txt2img_steps: int | None = None) -> Tensor:
    """Run one sampler the way A1111 calls it.

    `txt2img_steps` is the requested step count of a txt2img first pass (A1111's `Sampler.sample`);
    leave it None for img2img and the hires pass (`sample_img2img`). It matters for DPM fast/adaptive
    (model's full sigma range) and UniPC (starts at the last timestep). `schedule` (the model's
    table) is required by the timestep samplers and by those txt2img cases.
    """
    kwargs = sampler_kwargs(spec, params or SamplerParams())
    if spec.options.solver_type is not None:
        kwargs["solver_type"] = spec.options.solver_type
    needs_table = spec.options.needs_schedule or (txt2img_steps is not None and spec.txt2img_args is not None)
    if needs_table and schedule is None:
        raise InvalidRequest("sampler_name", f"{spec.name} needs the model's noise schedule")
    if spec.options.needs_schedule:
        kwargs["schedule"] = schedule
    if txt2img_steps is not None and spec.txt2img_args is not None:
        kwargs.update(spec.txt2img_args(model_schedule(spec, schedule), txt2img_steps))
    return spec.func(denoise, x, sigmas, noise=noise, callback=callback, **kwargs)


__all__ = [
    "AUTOMATIC",
    "SAMPLERS",
    "SCHEDULERS",
    "Img2ImgSigmas",
    "SamplerOptions",
    "SamplerParams",
    "SamplerSpec",
    "ScheduleInputs",
    "SchedulerSpec",
    "brownian_sigma_range",
    "build_sigmas",
    "find_sampler",
    "find_scheduler",
    "img2img_sigmas",
    "img2img_start_latent",
    "img2img_steps",
    "model_schedule",
    "resolve_sampler_and_scheduler",
    "run_sampler",
    "sampler_extra_infotext",
    "sampler_kwargs",
    "schedule_extra_infotext",
    "scheduler_label_for_infotext",
    "timestep_sigmas",
    "txt2img_start_latent",
]
