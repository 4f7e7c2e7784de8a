"""A small, generic training loop: modules, an optimizer, a loss function of the step number.

The loop owns no data and no objective. The caller passes `loss_fn(step) -> Tensor`, which builds its
own batch and noise from the step number (see `step_generator`), so a run resumed from a checkpoint
draws exactly what the uninterrupted run would have drawn and reaches the same weights. A checkpoint
holds the modules, the optimizer, the EMA copies and the step; it is written atomically.

Progress is reported through a plain callback (`on_progress(TrainProgress)`), and `should_stop()` lets a
caller (a job queue, a time budget) end the run early, after a checkpoint. No UI code lives here.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class TrainProgress:
    """One report of the loop: the step just done (1-based), of `total`, its loss and the running mean."""

    stage: str
    step: int
    total: int
    loss: float
    mean_loss: float
    learning_rate: float
    elapsed_s: float  # since this run (or resumed run) started
    steps_per_s: float

    @property
    def eta_s(self) -> float:
        """Seconds left at this run's average speed."""
        return (self.total - self.step) / max(self.steps_per_s, 1e-9)

    def line(self) -> str:
        """A one-line human summary (what the CLI prints)."""
        return (f"[{self.stage}] step {self.step}/{self.total} loss {self.loss:.4f} (mean {self.mean_loss:.4f}) "
                f"lr {self.learning_rate:.2e} {self.elapsed_s:.0f}s elapsed, eta {self.eta_s:.0f}s")


def step_generator(seed: int, step: int) -> torch.Generator:
    """The CPU random generator for one step: a pure function of (seed, step), so resuming is exact."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2 ** 63))


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.1) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` steps, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


class ExponentialMovingAverage:
    """EMA copies of some modules' parameters (what diffusion models usually ship)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float):
        self.decay = decay
        self.shadow = {f"{name}.{key}": param.detach().clone()
                       for name, module in modules.items() for key, param in module.named_parameters()}
        self._params = {f"{name}.{key}": param
                        for name, module in modules.items() for key, param in module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for key, param in self._params.items():
            self.shadow[key].lerp_(param.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, modules: dict[str, nn.Module]) -> None:
        """Write the averaged values into `modules` (same names as given to the constructor)."""
        for name, module in modules.items():
            for key, param in module.named_parameters():
                param.copy_(self.shadow[f"{name}.{key}"])


@dataclass
class Trainer:
    """Runs `loss_fn` for `total_steps` optimizer steps with checkpoints every `checkpoint_every` steps.

    `modules` are saved and restored by name; `parameters` are what the optimizer updates and what
    gradient clipping sees (for a LoRA run: only the adapter weights, the modules stay frozen).
    """

    stage: str
    modules: dict[str, nn.Module]
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[int], Tensor]
    total_steps: int
    checkpoint_path: Path | None = None
    checkpoint_every: int = 500
    warmup_steps: int = 0
    lr_floor: float = 0.1
    grad_clip: float | None = 1.0
    ema_decay: float | None = None
    on_progress: Callable[[TrainProgress], None] | None = None
    progress_every: int = 50
    should_stop: Callable[[], bool] | None = None
    step: int = 0

    def __post_init__(self) -> None:
        self.parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.ema = ExponentialMovingAverage(self.modules, self.ema_decay) if self.ema_decay else None
        self._losses: list[float] = []

    # ---- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, object]:
        return {"stage": self.stage, "step": self.step,
                "modules": {name: module.state_dict() for name, module in self.modules.items()},
                "optimizer": self.optimizer.state_dict(),
                "ema": None if self.ema is None else self.ema.shadow}

    def save_checkpoint(self) -> None:
        """Write the resumable state to `checkpoint_path` (temporary file, then rename)."""
        if self.checkpoint_path is None:
            return
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.checkpoint_path.with_name(f".{self.checkpoint_path.name}.{os.getpid()}.tmp")
        torch.save(self.state_dict(), temporary)
        os.replace(temporary, self.checkpoint_path)

    def resume(self) -> bool:
        """Restore from `checkpoint_path` if it exists and belongs to this stage; True when restored."""
        if self.checkpoint_path is None or not self.checkpoint_path.is_file():
            return False
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if state["stage"] != self.stage:
            return False
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None and state["ema"] is not None:
            for key, value in state["ema"].items():
                self.ema.shadow[key].copy_(value)
        self.step = int(state["step"])
        return True

    # ---- the loop -----------------------------------------------------------------------------------

    def _set_learning_rate(self) -> float:
        factor = warmup_cosine(self.step, self.total_steps, self.warmup_steps, self.lr_floor)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def run(self) -> int:
        """Train from the current step to `total_steps` (or until `should_stop`); returns the step reached."""
        for module in self.modules.values():
            module.train()
        started = time.monotonic()
        first = self.step
        while self.step < self.total_steps:
            lr = self._set_learning_rate()
            loss = self.loss_fn(self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update()
            self.step += 1
            self._losses = [*self._losses[-(self.progress_every - 1):], float(loss.detach())]
            if self.on_progress is not None and (self.step % self.progress_every == 0
                                                 or self.step == self.total_steps):
                elapsed = time.monotonic() - started
                self.on_progress(TrainProgress(self.stage, self.step, self.total_steps, self._losses[-1],
                                               sum(self._losses) / len(self._losses), lr, elapsed,
                                               (self.step - first) / max(elapsed, 1e-9)))
            if self.step % self.checkpoint_every == 0 or self.step == self.total_steps:
                self.save_checkpoint()
            if self.should_stop is not None and self.should_stop():
                self.save_checkpoint()
                break
        for module in self.modules.values():
            module.eval()
        return self.step

    def finished_modules(self) -> dict[str, nn.Module]:
        """The modules with the EMA weights written in (when EMA is on): what to export."""
        if self.ema is not None:
            self.ema.copy_to(self.modules)
        return self.modules


def trainable(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """All parameters of `modules` that require gradients."""
    return [p for module in modules for p in module.parameters() if p.requires_grad]
