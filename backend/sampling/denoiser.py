"""A UNet seen as a k-diffusion denoiser, with A1111's classifier-free guidance.

`CFGDenoiser(x, sigma) -> denoised` is what every sampler calls. It knows nothing
about prompts or model files: the caller hands it the network as a function and
the per-step conditioning as functions of the step counter.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from backend.callbacks import AfterCFGCallbackParams, CallbackRegistry, CFGDenoisedParams, CFGDenoiserParams
from backend.sampling.schedules import DiscreteSchedule, LCMSchedule

# model_fn(x_scaled, t, crossattn, pooled, image_cond) -> raw network output (eps or v)
ModelFn = Callable[[Tensor, Tensor, Tensor, "Tensor | None", "Tensor | None"], Tensor]
# step -> (per-image [(row, weight)], crossattn rows, pooled rows or None)
CondFn = Callable[[int], tuple[list[list[tuple[int, float]]], Tensor, "Tensor | None"]]
# step -> (crossattn, pooled or None)
UncondFn = Callable[[int], tuple[Tensor, "Tensor | None"]]


@dataclass
class StepInfo:
    """What a per-step hook sees: the denoiser's inputs and output for this call."""

    step: int
    total_steps: int
    x: Tensor
    sigma: Tensor
    denoised: Tensor


@dataclass
class RowLayout:
    """Which image and which half of guidance each row of the current network call belongs to.

    Extensions that add inputs per image (ControlNet's control images) read it from
    `CFGDenoiser.rows` inside the network call.
    """

    image_index: list[int]
    uncond: list[bool]


class DiscreteDenoiser:
    """k-diffusion's CompVisDenoiser / CompVisVDenoiser over a discrete-time network.

    Input is scaled by c_in = 1/sqrt(sigma^2 + 1); the network gets the continuous
    timestep interpolated from the model's sigma table, as in A1111. With an
    LCMSchedule it is A1111's LCM denoiser instead: snapped timesteps, the output
    read as eps whatever the model's prediction type, then LCM's boundary scalings.
    """

    def __init__(self, model_fn: ModelFn, schedule: DiscreteSchedule, prediction_type: str = "epsilon") -> None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ValueError(f"unknown prediction type {prediction_type!r}")
        self.model_fn = model_fn
        self.schedule = schedule
        self.prediction_type = prediction_type

    def __call__(self, x: Tensor, sigma: Tensor, crossattn: Tensor, pooled: Tensor | None,
                 image_cond: Tensor | None = None) -> Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        t = self.schedule.sigma_to_t(sigma)
        if isinstance(self.schedule, LCMSchedule):
            c_in = 1 / (s**2 + 1) ** 0.5
            eps = self.model_fn(x * c_in, t, crossattn, pooled, image_cond).to(x.dtype)
            c_skip, c_out = self.schedule.boundary_scalings(sigma)
            shape = (-1, *([1] * (x.ndim - 1)))
            return c_out.reshape(shape).to(x) * (x - eps * s) + c_skip.reshape(shape).to(x) * x
        if self.prediction_type == "epsilon":
            c_in = 1 / (s**2 + 1) ** 0.5
            eps = self.model_fn(x * c_in, t, crossattn, pooled, image_cond).to(x.dtype)
            return x - eps * s
        # v-prediction with sigma_data = 1 (k-diffusion's CompVisVDenoiser)
        c_skip = 1 / (s**2 + 1)
        c_out = -s / (s**2 + 1) ** 0.5
        c_in = 1 / (s**2 + 1) ** 0.5
        v = self.model_fn(x * c_in, t, crossattn, pooled, image_cond).to(x.dtype)
        return v * c_out + x * c_skip


class CFGDenoiser:
    """Classifier-free guidance over a DiscreteDenoiser, as A1111's CFGDenoiser.

    Each call is one denoiser evaluation; `step` counts calls (A1111 counts the
    same way, so second-order samplers advance prompt schedules twice per step).
    """

    def __init__(self, inner: DiscreteDenoiser, cond_fn: CondFn, uncond_fn: UncondFn, cfg_scale: float, *,
                 total_steps: int, batch_cond_uncond: bool = True, s_min_uncond: float = 0.0,
                 skip_early_cond: float = 0.0, image_cond: Tensor | None = None,
                 after_cfg: Callable[[StepInfo], Tensor | None] | None = None,
                 callbacks: CallbackRegistry | None = None) -> None:
        self.inner = inner
        self.cond_fn = cond_fn
        self.uncond_fn = uncond_fn
        self.cfg_scale = cfg_scale
        self.total_steps = total_steps
        self.batch_cond_uncond = batch_cond_uncond
        self.s_min_uncond = s_min_uncond
        self.skip_early_cond = skip_early_cond
        self.image_cond = image_cond  # per image [B, C, h, w] (inpainting models), follows x's rows
        self.after_cfg = after_cfg
        self.callbacks = callbacks
        self.rows = RowLayout([], [])
        self.step = 0
        self.last_uncond_denoised: Tensor | None = None
        self.skipped_uncond_at: list[int] = []

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        conds_list, cond, cond_pooled = self.cond_fn(self.step)
        uncond, uncond_pooled = self.uncond_fn(self.step)
        ic = self.image_cond
        if self.callbacks is not None and self.callbacks.has("cfg_denoiser"):
            params = CFGDenoiserParams(x, ic, sigma, self.step, self.total_steps, cond, uncond, self)
            self.callbacks.fire("cfg_denoiser", params)
            x, ic, sigma, cond, uncond = params.x, params.image_cond, params.sigma, params.text_cond, params.text_uncond
        batch = x.shape[0]
        repeats = [len(c) for c in conds_list]

        skip_uncond = False
        if self.skip_early_cond and self.step / self.total_steps <= self.skip_early_cond:
            skip_uncond = True
        elif self.step % 2 and self.s_min_uncond > 0 and float(sigma[0]) < self.s_min_uncond:
            skip_uncond = True
        if skip_uncond:
            self.skipped_uncond_at.append(self.step)

        # Each image's x is repeated once per AND sub-prompt, then the uncond batch follows.
        x_cond = _repeat_rows(x, repeats)
        s_cond = _repeat_rows(sigma, repeats)
        ic_cond = None if ic is None else _repeat_rows(ic, repeats)
        cond_images = [i for i, n in enumerate(repeats) for _ in range(n)]

        if skip_uncond:
            self.rows = RowLayout(cond_images, [False] * len(cond_images))
            out_cond = self.inner(x_cond, s_cond, cond, cond_pooled, ic_cond)
            out_uncond = None
        elif self.batch_cond_uncond and cond.shape[1] == uncond.shape[1]:
            pooled = None if cond_pooled is None else torch.cat([cond_pooled, uncond_pooled])
            ic_all = None if ic is None else torch.cat([ic_cond, ic])
            self.rows = RowLayout(cond_images + list(range(batch)), [False] * len(cond_images) + [True] * batch)
            out = self.inner(torch.cat([x_cond, x]), torch.cat([s_cond, sigma]), torch.cat([cond, uncond]), pooled, ic_all)
            out_cond, out_uncond = out[:-batch], out[-batch:]
        else:
            self.rows = RowLayout(cond_images, [False] * len(cond_images))
            out_cond = self.inner(x_cond, s_cond, cond, cond_pooled, ic_cond)
            self.rows = RowLayout(list(range(batch)), [True] * batch)
            out_uncond = self.inner(x, sigma, uncond, uncond_pooled, ic)

        if self.callbacks is not None and self.callbacks.has("cfg_denoised"):
            both = out_cond if out_uncond is None else torch.cat([out_cond, out_uncond])
            denoised_params = CFGDenoisedParams(both, self.step, self.total_steps, self.inner)
            self.callbacks.fire("cfg_denoised", denoised_params)
            out_cond = denoised_params.x[:out_cond.shape[0]]
            if out_uncond is not None:
                out_uncond = denoised_params.x[out_cond.shape[0]:]

        if out_uncond is None:
            # A1111 uses the first sub-prompt's output as a stand-in for uncond.
            out_uncond = torch.stack([out_cond[c[0][0]] for c in conds_list])
        self.last_uncond_denoised = out_uncond

        denoised = out_uncond.clone()
        for i, conds in enumerate(conds_list):
            for row, weight in conds:
                denoised[i] += (out_cond[row] - out_uncond[i]) * (weight * self.cfg_scale)

        if self.after_cfg is not None:
            replaced = self.after_cfg(StepInfo(self.step, self.total_steps, x, sigma, denoised))
            if replaced is not None:
                denoised = replaced
        if self.callbacks is not None and self.callbacks.has("cfg_after_cfg"):
            after = AfterCFGCallbackParams(denoised, self.step, self.total_steps)
            self.callbacks.fire("cfg_after_cfg", after)
            denoised = after.x
        self.step += 1
        return denoised


def _repeat_rows(t: Tensor, repeats: list[int]) -> Tensor:
    return torch.cat([t[i:i + 1].expand(n, *t.shape[1:]) for i, n in enumerate(repeats)])
