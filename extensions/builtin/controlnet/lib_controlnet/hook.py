"""The UNet hook: inside every UNet call, run each active ControlNet and add its residuals.

Semantics follow A1111-ControlNet's hooked UNet forward:
- guidance start/end: a unit is skipped when step / total_steps of the current pass is below its start
  or above its end (its on_cfg_denoiser handler);
- weight: every residual is multiplied by it ("Balanced");
- "My prompt is more important" and "ControlNet is more important" use the soft weights
  weight * 0.825 ** (12 - i) for residual i (SD1: 12 down residuals + the middle one; SDXL keeps the
  first ten factors), and "ControlNet is more important" also gives the unconditional rows no control;
- in the hires pass, canny-like maps use the soft weights too; hr_option limits a unit to one pass;
- residuals of several units are summed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from backend.processing import UnetCall
from lib_controlnet.images import ResizeMode, fit
from lib_controlnet.units import ControlMode, ControlNetUnit, HiResFixOption

SOFT_INJECTION_BASE = 0.825


@dataclass
class ActiveUnit:
    """An enabled unit ready to sample with: its ControlNet and its control maps (one per input image,
    before fitting to a size); `maps_at(w, h)` gives the fitted maps, cached per size."""

    unit: ControlNetUnit
    net: Any
    maps: list[np.ndarray]
    resize_mode: ResizeMode
    soft_in_hires: bool
    device: torch.device
    dtype: torch.dtype
    fitted: dict[tuple[int, int], list[np.ndarray]] = field(default_factory=dict)
    _hints: dict[tuple[int, int], Tensor] = field(default_factory=dict)

    def maps_at(self, width: int, height: int) -> list[np.ndarray]:
        if (width, height) not in self.fitted:
            self.fitted[(width, height)] = [fit(m, self.resize_mode, width, height) for m in self.maps]
        return self.fitted[(width, height)]

    def hint(self, width: int, height: int) -> Tensor:
        """The control images at width x height as [N, 3, H, W] in [0, 1] on the ControlNet's device."""
        if (width, height) not in self._hints:
            stacked = np.stack(self.maps_at(width, height)).astype(np.float32) / 255.0
            self._hints[(width, height)] = torch.from_numpy(stacked).permute(0, 3, 1, 2).to(self.device, self.dtype)
        return self._hints[(width, height)]


def control_scales(count: int, weight: float, soft: bool) -> list[float]:
    """The multiplier of each residual (down residuals first, the middle one last)."""
    if not soft:
        return [weight] * count
    return [weight * SOFT_INJECTION_BASE ** float(12 - i) for i in range(count)]


def is_active(unit: ControlNetUnit, step: int, total_steps: int, in_hires: bool) -> bool:
    """Whether the unit applies to this denoiser call (guidance range, hires option, weight)."""
    if unit.weight == 0:
        return False  # zero residuals change nothing: skip the ControlNet entirely
    if unit.hr_option is HiResFixOption.LOW_RES_ONLY and in_hires:
        return False
    if unit.hr_option is HiResFixOption.HIGH_RES_ONLY and not in_hires:
        return False
    percent = step / total_steps if total_steps else 0.0
    return unit.guidance_start <= percent <= unit.guidance_end


@dataclass
class ControlNetHook:
    """A `p.unet_hooks` entry. `first_pass` is the generation size; another size is the hires pass.
    `on_call`, when set, sees every call with the indices of the units that ran (tests count with it)."""

    units: list[ActiveUnit]
    first_pass: tuple[int, int]
    has_hires: bool
    on_call: Callable[[UnetCall, list[int]], None] | None = None

    def __call__(self, call: UnetCall) -> None:
        in_hires = self.has_hires and (call.width, call.height) != self.first_pass
        batch = call.x.shape[0]
        image_index = list(call.rows.image_index) if len(call.rows.image_index) == batch else list(range(batch))
        uncond = list(call.rows.uncond) if len(call.rows.uncond) == batch else [False] * batch
        ran = []
        down: list[Tensor] | None = None
        mid: Tensor | None = None
        for number, active in enumerate(self.units):
            unit = active.unit
            if not is_active(unit, call.step, call.total_steps, in_hires):
                continue
            rows = [r for r in range(batch) if not (unit.control_mode is ControlMode.CONTROL and uncond[r])]
            if not rows:
                continue
            residuals = _run(active, call, rows, image_index)
            soft = unit.control_mode is not ControlMode.BALANCED or (in_hires and active.soft_in_hires)
            scales = control_scales(len(residuals), unit.weight, soft)
            residuals = [r * s for r, s in zip(residuals, scales, strict=True)]
            if len(rows) < batch:
                residuals = [_scatter(r, rows, batch) for r in residuals]
            if down is None:
                down, mid = residuals[:-1], residuals[-1]
            else:
                down, mid = [a + b for a, b in zip(down, residuals[:-1], strict=True)], mid + residuals[-1]
            ran.append(number)
        if self.on_call is not None:
            self.on_call(call, ran)
        if down is None:
            return
        previous = call.kwargs.get("down_block_additional_residuals")
        if previous is not None:  # another extension's residuals: add ours to them
            down = [a + b for a, b in zip(previous, down, strict=True)]
            mid = call.kwargs["mid_block_additional_residual"] + mid
        call.kwargs["down_block_additional_residuals"] = tuple(down)
        call.kwargs["mid_block_additional_residual"] = mid


def _run(active: ActiveUnit, call: UnetCall, rows: list[int], image_index: list[int]) -> list[Tensor]:
    """The ControlNet's residuals (down ones, then the middle one) for the selected rows."""
    dtype, device = active.dtype, active.device
    hints = active.hint(call.width, call.height)
    select = torch.tensor(rows, device=call.x.device)
    t = call.t if call.t.ndim == 0 else call.t[select]
    added = None
    if call.added_cond_kwargs is not None:
        added = {key: value[select].to(device) for key, value in call.added_cond_kwargs.items()}
    low_vram = active.unit.low_vram and device.type != "cpu"
    net = active.net.to(device) if low_vram else active.net
    try:
        with torch.no_grad():
            down, mid = net(
                call.x[select].to(device, dtype), t.to(device, torch.float32),
                encoder_hidden_states=call.crossattn[select].to(device, dtype),
                controlnet_cond=hints[[image_index[r] % hints.shape[0] for r in rows]],
                added_cond_kwargs=added, return_dict=False)
    finally:
        if low_vram:  # A1111's "Low VRAM": the ControlNet leaves the GPU between calls
            active.net.to("cpu")
    return [*down, mid]


def _scatter(residual: Tensor, rows: list[int], batch: int) -> Tensor:
    full = residual.new_zeros((batch, *residual.shape[1:]))
    full[rows] = residual
    return full
