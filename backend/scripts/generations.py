"""Helpers for selectable scripts that run several generations in one job (X/Y/Z plot, SD upscale...).

- `copy_processing(p)`: the copy each generation works on.
- `fix_seed(p)`: A1111's processing.fix_seed, so every generation of the script starts from the same
  concrete seed instead of drawing a new random one each time.
- `Generations`: counts the script's generations as the job's batches, so /progress and the UI show
  "batch 7/12" over the whole script, as A1111's scripts do by setting `state.job_count`.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any

from backend.processing import Processed, StableDiffusionProcessing, process_images
from backend.sampling.noise import get_fixed_seed


def copy_processing(p: StableDiffusionProcessing) -> StableDiffusionProcessing:
    """copy(p), as A1111's scripts take one per generation, with its own copies of the containers a
    generation writes into (so one generation's infotext keys or hooks never leak into the next)."""
    pc = copy.copy(p)
    pc.styles = list(p.styles)
    pc.override_settings = dict(p.override_settings)
    pc.extra_generation_params = dict(p.extra_generation_params)
    pc.comments = dict(p.comments)
    pc.unet_hooks = list(p.unet_hooks)
    return pc


def fix_seed(p: StableDiffusionProcessing) -> None:
    """Replace a random seed (-1, "", None) and subseed by concrete values (A1111's fix_seed)."""
    p.seed = get_fixed_seed(p.seed)  # type: ignore[arg-type]
    p.subseed = get_fixed_seed(p.subseed)  # type: ignore[arg-type]


class _CountedState:
    """The job's state as one generation of a script sees it: the batches it finishes and its
    steps count toward the script's total, but it does not restart the count (process_images
    calls begin() for its own batches)."""

    def __init__(self, parent: Any) -> None:
        object.__setattr__(self, "_parent", parent)

    def begin(self, job: str, job_count: int) -> None:
        """Ignored: the script set the job's total before its first generation."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parent, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._parent, name, value)


class Generations:
    """The generations a selectable script runs inside its job (p.context is the job's context)."""

    def __init__(self, p: StableDiffusionProcessing, job_count: int) -> None:
        if p.context is None:
            raise RuntimeError("this processing object is not part of a job; submit it through the application")
        self.context = p.context
        self.state = p.context.state
        self.state.begin(p.outpath_kind, job_count)

    @property
    def interrupted(self) -> bool:
        return bool(self.state.interrupted)

    def process(self, p: StableDiffusionProcessing) -> Processed:
        """process_images(p) in this job, its batches counted toward the script's total."""
        ctx = dataclasses.replace(self.context, state=_CountedState(self.state))
        return process_images(p, ctx)
