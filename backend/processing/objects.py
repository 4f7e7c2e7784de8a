"""Processing objects: what to generate, with A1111's field names and defaults.

UI, API, scripts and pasted infotexts all fill these same objects; `validate()`
rejects bad input before any model or tensor work, naming the field.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend import version
from backend.errors import InvalidRequest
from backend.prompts import parser
from backend.sampling import registry as samplers

MAX_SIDE = 16384
MAX_BATCH_IMAGES = 10000
RESIZE_MODES = ("Just resize", "Crop and resize", "Resize and fill", "Just resize (latent upscale)")
INPAINTING_FILL = ("fill", "original", "latent noise", "latent nothing")


@dataclass(repr=False)
class StableDiffusionProcessing:
    """A1111's StableDiffusionProcessing: what to generate, with A1111 defaults."""

    prompt: str | list[str] = ""
    negative_prompt: str | list[str] = ""
    styles: list[str] = field(default_factory=list)
    seed: int | str | list[int] = -1
    subseed: int | str | list[int] = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    seed_enable_extras: bool = True
    sampler_name: str | None = None
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    # None: the checkpoint's native size (metadata or family), filled in when the model is resolved.
    width: int | None = None
    height: int | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    extra_generation_params: dict[str, Any] = field(default_factory=dict)
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] = field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    sampler_index: int | None = None
    outpath_samples: str | None = None
    outpath_grids: str | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] = field(default_factory=dict)
    user: str | None = None

    # Filled in by process_images (A1111's init=False fields).
    all_prompts: list[str] = field(default_factory=list, init=False)
    all_negative_prompts: list[str] = field(default_factory=list, init=False)
    all_seeds: list[int] = field(default_factory=list, init=False)
    all_subseeds: list[int] = field(default_factory=list, init=False)
    main_prompt: str = field(default="", init=False)
    main_negative_prompt: str = field(default="", init=False)
    iteration: int = field(default=0, init=False)
    batch_index: int = field(default=0, init=False)
    prompts: list[str] = field(default_factory=list, init=False)
    negative_prompts: list[str] = field(default_factory=list, init=False)
    seeds: list[int] = field(default_factory=list, init=False)
    subseeds: list[int] = field(default_factory=list, init=False)
    sd_model_name: str | None = field(default=None, init=False)
    sd_model_hash: str | None = field(default=None, init=False)
    sd_vae_name: str | None = field(default=None, init=False)
    sd_vae_hash: str | None = field(default=None, init=False)
    job_timestamp: str = field(default="", init=False)
    clip_skip: int = field(default=1, init=False)
    is_using_inpainting_conditioning: bool = field(default=False, init=False)
    extra_network_data: dict[str, list[parser.ExtraNetworkParams]] = field(default_factory=dict, init=False)
    # The script system: the tab's runner and this request's script_args (A1111's p.scripts / p.script_args).
    scripts: Any = field(default=None, init=False)
    script_args: tuple[Any, ...] = field(default=(), init=False)
    # The job's ProcessingContext, so scripts can call process_images(p) on copies of p.
    context: Any = field(default=None, init=False)
    # The loaded model of this job (A1111's p.sd_model), set once the model is resolved.
    sd_model: Any = field(default=None, init=False)
    # Called inside every UNet call with a UnetCall (ControlNet adds its residuals here).
    unet_hooks: list[Any] = field(default_factory=list, init=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prompt={self.prompt!r}, seed={self.seed!r}, steps={self.steps})"

    @property
    def outpath_kind(self) -> str:
        return "txt2img"

    def validate(self) -> None:
        """Reject bad input before any model or tensor work; errors name the field."""
        _check_int("steps", self.steps, 1, 1000)
        _check_int("batch_size", self.batch_size, 1, 64)
        _check_int("n_iter", self.n_iter, 1, MAX_BATCH_IMAGES)
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                _check_int(name, value, 64, MAX_SIDE)
                if value % 8:
                    raise InvalidRequest(name, f"must be a multiple of 8, got {value}")
        if not isinstance(self.cfg_scale, (int, float)) or not np.isfinite(self.cfg_scale):
            raise InvalidRequest("cfg_scale", f"must be a number, got {self.cfg_scale!r}")
        if not 0 <= float(self.subseed_strength) <= 1:
            raise InvalidRequest("subseed_strength", f"must be between 0 and 1, got {self.subseed_strength}")
        if self.sampler_index is not None and self.sampler_name is None:
            if not 0 <= int(self.sampler_index) < len(samplers.SAMPLERS):
                raise InvalidRequest("sampler_index", f"must be 0..{len(samplers.SAMPLERS) - 1}, got {self.sampler_index}")
        if self.sampler_name is not None and samplers.find_sampler(_strip_scheduler_suffix(self.sampler_name)) is None:
            raise InvalidRequest("sampler_name", f"unknown sampler {self.sampler_name!r}; known: "
                                 + ", ".join(s.name for s in samplers.SAMPLERS))
        if self.scheduler not in (None, "") and samplers.find_scheduler(self.scheduler) is None:
            raise InvalidRequest("scheduler", f"unknown scheduler {self.scheduler!r}; known: "
                                 + ", ".join(s.label for s in samplers.SCHEDULERS))
        for name in ("prompt", "negative_prompt"):
            value = getattr(self, name)
            if isinstance(value, list):
                if len(value) != self.batch_size * self.n_iter:
                    raise InvalidRequest(name, f"a list must have batch_size*n_iter = {self.batch_size * self.n_iter} entries")
            elif not isinstance(value, str):
                raise InvalidRequest(name, f"must be a string, got {type(value).__name__}")


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    """txt2img: A1111 fields, including the hires-fix ones (the hires pass itself lands with img2img)."""

    enable_hr: bool = False
    denoising_strength: float | None = 0.75
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    # "Upscale" of an existing image: skip the first pass and run only the hires pass on it.
    firstpass_image: Image.Image | None = None

    def validate(self) -> None:
        super().validate()
        if self.firstpass_image is not None and not isinstance(self.firstpass_image, Image.Image):
            raise InvalidRequest("firstpass_image", "must be an image")
        if self.firstpass_image is not None and not self.enable_hr:
            raise InvalidRequest("firstpass_image", "needs enable_hr: only the hires pass runs on it")
        if not self.enable_hr:
            return
        strength = self.denoising_strength
        if strength is None or not 0 <= float(strength) <= 1:
            raise InvalidRequest("denoising_strength", f"must be between 0 and 1, got {strength}")
        _check_int("hr_second_pass_steps", self.hr_second_pass_steps, 0, 1000)
        _check_int("hr_resize_x", self.hr_resize_x, 0, MAX_SIDE)
        _check_int("hr_resize_y", self.hr_resize_y, 0, MAX_SIDE)
        if not isinstance(self.hr_scale, (int, float)) or not 0 < float(self.hr_scale) <= 16:
            raise InvalidRequest("hr_scale", f"must be between 0 and 16, got {self.hr_scale!r}")
        for name in ("hr_sampler_name", "hr_scheduler"):
            value = getattr(self, name)
            finder = samplers.find_sampler if name == "hr_sampler_name" else samplers.find_scheduler
            if value not in (None, "", "Use same sampler", "Use same scheduler") and finder(value) is None:
                raise InvalidRequest(name, f"unknown {name.split('_')[1]} {value!r}")


@dataclass(repr=False)
class StableDiffusionProcessingImg2Img(StableDiffusionProcessing):
    """img2img and inpainting: A1111's fields and defaults (a1111.md 4.1, 4.7)."""

    init_images: list[Image.Image] = field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float | None = 0.75
    image_cfg_scale: float | None = None
    mask: Image.Image | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: Image.Image | None = None
    force_task_id: str | None = None

    def __post_init__(self) -> None:
        # A1111's `mask_blur` property sets both directions.
        if self.mask_blur is not None:
            self.mask_blur_x = self.mask_blur_y = int(self.mask_blur)

    @property
    def outpath_kind(self) -> str:
        return "img2img"

    def validate(self) -> None:
        super().validate()
        if not self.init_images:
            raise InvalidRequest("init_images", "at least one init image is required")
        if not all(isinstance(im, Image.Image) for im in self.init_images):
            raise InvalidRequest("init_images", "every entry must be an image")
        if len(self.init_images) > self.batch_size and len(self.init_images) != 1:
            raise InvalidRequest("init_images", f"bad number of images passed: {len(self.init_images)}; "
                                 f"expecting {self.batch_size} or less")
        _check_int("resize_mode", self.resize_mode, 0, len(RESIZE_MODES) - 1)
        _check_int("inpainting_fill", self.inpainting_fill, 0, len(INPAINTING_FILL) - 1)
        _check_int("inpainting_mask_invert", int(self.inpainting_mask_invert), 0, 1)
        _check_int("mask_blur_x", self.mask_blur_x, 0, 256)
        _check_int("mask_blur_y", self.mask_blur_y, 0, 256)
        _check_int("inpaint_full_res_padding", self.inpaint_full_res_padding, 0, 4096)
        strength = self.denoising_strength
        if strength is None or not 0 <= float(strength) <= 1:
            raise InvalidRequest("denoising_strength", f"must be between 0 and 1, got {strength}")
        if self.mask is not None and not isinstance(self.mask, Image.Image):
            raise InvalidRequest("mask", "must be an image")



@dataclass
class Processed:
    """A1111's Processed: images plus everything needed to describe them."""

    images: list[Image.Image]
    infotexts: list[str]
    p: StableDiffusionProcessing
    seed: int
    subseed: int
    all_seeds: list[int]
    all_subseeds: list[int]
    all_prompts: list[str]
    all_negative_prompts: list[str]
    index_of_first_image: int = 0
    info: str = ""
    comments: str = ""
    saved_paths: list[Path] = field(default_factory=list)
    interrupted: bool = False
    face_restoration_model: str | None = None

    def js(self) -> str:
        """The `info` JSON string of the API response, with A1111's keys in A1111's order."""
        p = self.p
        data = {
            "prompt": self.all_prompts[0] if self.all_prompts else p.prompt,
            "all_prompts": self.all_prompts,
            "negative_prompt": self.all_negative_prompts[0] if self.all_negative_prompts else p.negative_prompt,
            "all_negative_prompts": self.all_negative_prompts,
            "seed": self.seed,
            "all_seeds": self.all_seeds,
            "subseed": self.subseed,
            "all_subseeds": self.all_subseeds,
            "subseed_strength": p.subseed_strength,
            "width": p.width,
            "height": p.height,
            "sampler_name": p.sampler_name,
            "cfg_scale": p.cfg_scale,
            "steps": p.steps,
            "batch_size": p.batch_size,
            "restore_faces": bool(p.restore_faces),
            "face_restoration_model": self.face_restoration_model,
            "sd_model_name": p.sd_model_name,
            "sd_model_hash": p.sd_model_hash,
            "sd_vae_name": p.sd_vae_name,
            "sd_vae_hash": p.sd_vae_hash,
            "seed_resize_from_w": p.seed_resize_from_w,
            "seed_resize_from_h": p.seed_resize_from_h,
            "denoising_strength": p.denoising_strength,
            "extra_generation_params": p.extra_generation_params,
            "index_of_first_image": self.index_of_first_image,
            "infotexts": self.infotexts,
            "styles": p.styles,
            "job_timestamp": p.job_timestamp,
            "clip_skip": p.clip_skip,
            "is_using_inpainting_conditioning": p.is_using_inpainting_conditioning,
            "version": version.VERSION,
        }
        return json.dumps(data, default=lambda o: None)



def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidRequest(name, f"must be between {lo} and {hi}, got {value}")


def _strip_scheduler_suffix(name: str) -> str:
    sampler, _ = samplers.resolve_sampler_and_scheduler(name, None)
    return sampler.name if name.startswith(sampler.name) else name
