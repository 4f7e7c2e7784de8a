"""The generation recipe: a processing object in, a `Processed` result out.

Field names and defaults are A1111's (modules/processing.py), so UI, API, scripts
and pasted infotexts all fill the same object. `process_images` follows A1111's
order (a1111.md 4.2); per-request settings are resolved into local values and
never written into the shared options.
"""
from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from backend import version
from backend.config import Options
from backend.devices import DevicePolicy
from backend.errors import Interrupted, InvalidRequest
from backend.jobs.progress import JobState
from backend.models.loader import LoadedModel
from backend.models.manager import ModelManager
from backend.models.registry import CheckpointInfo
from backend.postprocess import images as image_io
from backend.postprocess.infotext import format_infotext
from backend.prompts import parser
from backend.prompts.conditioning import (
    ConditioningCache,
    EncodeSettings,
    EncoderSpec,
    ScheduleSettings,
    TextConditioner,
    cond_batch_at,
    learned_conditioning,
    multicond_batch_at,
    multicond_learned_conditioning,
)
from backend.sampling import noise as rng_mod
from backend.sampling import registry as samplers
from backend.sampling.denoiser import CFGDenoiser, DiscreteDenoiser
from backend.sampling.schedules import DiscreteSchedule

log = logging.getLogger(__name__)

MAX_SIDE = 16384
MAX_BATCH_IMAGES = 10000


# ---------------------------------------------------------------------------
# Processing objects
# ---------------------------------------------------------------------------

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
    width: int = 512
    height: int = 512
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
        _check_int("width", self.width, 64, MAX_SIDE)
        _check_int("height", self.height, 64, MAX_SIDE)
        if self.width % 8:
            raise InvalidRequest("width", f"must be a multiple of 8, got {self.width}")
        if self.height % 8:
            raise InvalidRequest("height", f"must be a multiple of 8, got {self.height}")
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

    def validate(self) -> None:
        super().validate()
        if self.enable_hr:
            raise InvalidRequest("enable_hr", "hires fix is not available yet in this version")


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
            "face_restoration_model": None,
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


# ---------------------------------------------------------------------------
# The context process_images needs
# ---------------------------------------------------------------------------

class ScriptRunner(Protocol):
    """Hook points process_images calls (the script system implements this)."""

    def before_process(self, p: StableDiffusionProcessing) -> None: ...
    def process(self, p: StableDiffusionProcessing) -> None: ...
    def before_process_batch(self, p: StableDiffusionProcessing, batch_number: int) -> None: ...
    def process_batch(self, p: StableDiffusionProcessing, batch_number: int) -> None: ...
    def postprocess_batch(self, p: StableDiffusionProcessing, images: Tensor, batch_number: int) -> None: ...
    def postprocess_image(self, p: StableDiffusionProcessing, image: Image.Image) -> Image.Image | None: ...
    def postprocess(self, p: StableDiffusionProcessing, processed: Processed) -> None: ...


@dataclass
class ProcessingContext:
    """What a job needs from the application: models, options, device, output folder, progress."""

    models: ModelManager
    options: Options
    devices: DevicePolicy
    data_dir: Path
    state: JobState = field(default_factory=JobState)
    scripts: ScriptRunner | None = None
    write_params_txt: bool = True


# ---------------------------------------------------------------------------
# process_images
# ---------------------------------------------------------------------------

@dataclass
class _Run:
    """Per-request values resolved once at the start (never written to shared options)."""

    opts: Mapping[str, Any]
    sampler: samplers.SamplerSpec
    scheduler: samplers.SchedulerSpec
    checkpoint: CheckpointInfo
    model: LoadedModel
    conditioner: TextConditioner
    encode: EncodeSettings
    cache: ConditioningCache


def process_images(p: StableDiffusionProcessing, ctx: ProcessingContext) -> Processed:
    """Generate what `p` asks for (A1111's process_images, a1111.md 4.2)."""
    # 1. Check inputs before any work.
    p.validate()
    scripts = ctx.scripts
    if scripts is not None:
        scripts.before_process(p)
    # 2. Per-request settings: overrides seen only by this request.
    opts = ctx.options.with_overrides(p.override_settings)
    try:
        return _process_images_inner(p, ctx, opts)
    finally:
        if not p.override_settings_restore_afterwards and p.override_settings:
            for key, value in p.override_settings.items():
                ctx.options.set(key, value)
            ctx.options.save()


def _process_images_inner(p: StableDiffusionProcessing, ctx: ProcessingContext, opts: Mapping[str, Any]) -> Processed:
    run = _resolve_run(p, ctx, opts)
    _setup_prompts_and_seeds(p, opts)
    if ctx.scripts is not None:
        ctx.scripts.process(p)

    state = ctx.state
    state.begin("txt2img", p.n_iter)
    output_images: list[Image.Image] = []
    infotexts: list[str] = []
    saved: list[Path] = []
    interrupted = False

    for n in range(p.n_iter):
        if state.interrupted:
            interrupted = True
            break
        p.iteration = n
        lo, hi = n * p.batch_size, (n + 1) * p.batch_size
        p.prompts, p.negative_prompts = p.all_prompts[lo:hi], p.all_negative_prompts[lo:hi]
        p.seeds, p.subseeds = p.all_seeds[lo:hi], p.all_subseeds[lo:hi]

        if ctx.scripts is not None:
            ctx.scripts.before_process_batch(p, n)
        # Extra-network tags are stripped from what CLIP sees; the first prompt decides
        # which networks are active (A1111). The networks layer comes with LoRA support.
        stripped, p.extra_network_data = parser.parse_extra_networks_for_prompts(p.prompts)
        neg_stripped = [parser.parse_extra_networks(t)[0] for t in p.negative_prompts]
        for name in p.extra_network_data:
            log.warning("extra network %r is not available; ignored", name)
        if ctx.scripts is not None:
            ctx.scripts.process_batch(p, n)

        if n == 0 and ctx.write_params_txt:
            params = create_infotext(p, run, p.all_prompts, p.all_seeds, p.all_subseeds, 0, 0, resolved_scheduler=False)
            _write_text(ctx.data_dir / "params.txt", params)

        try:
            latents = _sample_batch(p, ctx, run, stripped, neg_stripped)
        except Interrupted as stop:
            # Interrupt and skip both keep the partly denoised batch, as A1111 does; skip then
            # goes on with the next batch.
            interrupted = state.interrupted
            latents = stop.args[0] if stop.args else None
            if latents is None:
                state.next_job()
                if interrupted:
                    break
                continue

        decoded = decode_latents(run.model, latents, ctx.devices)
        if ctx.scripts is not None:
            ctx.scripts.postprocess_batch(p, decoded, n)

        for i in range(decoded.shape[0]):
            p.batch_index = i
            image = tensor_to_image(decoded[i])
            if ctx.scripts is not None:
                image = ctx.scripts.postprocess_image(p, image) or image
            text = create_infotext(p, run, p.all_prompts, p.all_seeds, p.all_subseeds, n, i)
            if run.opts["samples_save"] and not p.do_not_save_samples:
                path, _ = image_io.save_image(
                    image, _outdir(p, ctx, run.opts, grid=False), "", seed=p.seeds[i], prompt=p.prompts[i],
                    extension=run.opts["samples_format"], info=text, p=p, opts=run.opts)
                saved.append(path)
            if run.opts["enable_pnginfo"]:
                image.info["parameters"] = text
            output_images.append(image)
            infotexts.append(text)
        state.next_job()
        if interrupted:
            break

    index_of_first_image = 0
    if output_images:
        index_of_first_image = _make_grid(p, ctx, run, output_images, infotexts, saved)

    processed = Processed(
        images=output_images, infotexts=infotexts, p=p,
        seed=p.all_seeds[0], subseed=p.all_subseeds[0], all_seeds=p.all_seeds, all_subseeds=p.all_subseeds,
        all_prompts=p.all_prompts, all_negative_prompts=p.all_negative_prompts,
        index_of_first_image=index_of_first_image, saved_paths=saved, interrupted=interrupted,
        comments="\n".join(str(c) for c in p.comments),
    )
    processed.info = infotexts[0] if infotexts else ""
    if ctx.scripts is not None:
        ctx.scripts.postprocess(p, processed)
    return processed


def _resolve_run(p: StableDiffusionProcessing, ctx: ProcessingContext, opts: Mapping[str, Any]) -> _Run:
    sampler_name = p.sampler_name
    if sampler_name is None and p.sampler_index is not None:
        sampler_name = samplers.SAMPLERS[int(p.sampler_index)].name
    sampler, scheduler = samplers.resolve_sampler_and_scheduler(sampler_name, p.scheduler)
    p.sampler_name = sampler.name
    p.scheduler = scheduler.label

    checkpoint, model = ctx.models.get(opts.get("sd_model_checkpoint"))
    p.sd_model_name = checkpoint.model_name
    p.sd_model_hash = checkpoint.shorthash
    p.clip_skip = int(opts["CLIP_stop_at_last_layers"])
    p.is_using_inpainting_conditioning = model.is_inpaint
    encode = EncodeSettings(clip_skip=p.clip_skip, emphasis=opts["emphasis"],
                            comma_padding_backtrack=int(opts["comma_padding_backtrack"]))
    conditioner = TextConditioner(encoder_specs(model, opts), ctx.devices.device, zero_empty_negative=model.is_sdxl)
    if p.restore_faces is None:
        p.restore_faces = bool(opts["face_restoration"])
    if p.restore_faces:
        raise InvalidRequest("restore_faces", "face restoration is not available yet in this version")
    if p.tiling is None:
        p.tiling = bool(opts["tiling"])
    if p.tiling:
        raise InvalidRequest("tiling", "tiling is not available yet in this version")
    return _Run(opts, sampler, scheduler, checkpoint, model, conditioner, encode, ConditioningCache())


def encoder_specs(model: LoadedModel, opts: Mapping[str, Any]) -> list[EncoderSpec]:
    """How each family's text encoders are read, as A1111/ldm/sgm do."""
    if model.is_sdxl:
        # CLIP-L: penultimate hidden state, no final norm; Clip skip only with sdxl_clip_l_skip.
        # OpenCLIP bigG: penultimate, no final norm, plus the projected pooled output.
        return [
            EncoderSpec(model.text_encoder, model.tokenizer, hidden_layer=-2, final_norm=False,
                        clip_skip=bool(opts["sdxl_clip_l_skip"])),
            EncoderSpec(model.text_encoder_2, model.tokenizer_2, hidden_layer=-2, final_norm=False,
                        clip_skip=False, pad_id=0, pooled=True),
        ]
    if model.family.architecture == "sd2":
        # SD2: OpenCLIP's penultimate layer with the final norm. The loader drops the last
        # block (as diffusers does), so that is last_hidden_state. A1111 ignores Clip skip here.
        return [EncoderSpec(model.text_encoder, model.tokenizer, clip_skip=False, pad_id=0)]
    return [EncoderSpec(model.text_encoder, model.tokenizer)]


def _setup_prompts_and_seeds(p: StableDiffusionProcessing, opts: Mapping[str, Any]) -> None:
    total = p.batch_size * p.n_iter
    prompts = p.prompt if isinstance(p.prompt, list) else [p.prompt] * total
    negatives = p.negative_prompt if isinstance(p.negative_prompt, list) else [p.negative_prompt] * total
    if opts["enable_prompt_comments"]:
        prompts = [parser.strip_comments(x) for x in prompts]
        negatives = [parser.strip_comments(x) for x in negatives]
    p.all_prompts, p.all_negative_prompts = list(prompts), list(negatives)
    p.main_prompt, p.main_negative_prompt = p.all_prompts[0], p.all_negative_prompts[0]

    if not p.seed_enable_extras:
        p.subseed, p.subseed_strength, p.seed_resize_from_h, p.seed_resize_from_w = -1, 0.0, 0, 0
    p.all_seeds = _seed_list(p.seed, total, vary=p.subseed_strength == 0)
    p.all_subseeds = _seed_list(p.subseed, total, vary=True)
    p.seed, p.subseed = p.all_seeds[0], p.all_subseeds[0]
    p.job_timestamp = time.strftime("%Y%m%d%H%M%S")


def _seed_list(seed: int | str | list[int], total: int, *, vary: bool) -> list[int]:
    """seed+i per image; with a variation strength every image keeps the same seed (A1111)."""
    if isinstance(seed, list):
        if len(seed) < total:
            raise InvalidRequest("seed", f"a seed list needs {total} entries, got {len(seed)}")
        return [int(s) for s in seed[:total]]
    base = rng_mod.get_fixed_seed(seed)
    return [int(base) + (i if vary else 0) for i in range(total)]


def _sample_batch(p: StableDiffusionProcessing, ctx: ProcessingContext, run: _Run,
                  prompts: list[str], negative_prompts: list[str]) -> Tensor:
    """Conditioning, noise and the sampler for one batch; returns the final latents."""
    model, opts, device = run.model, run.opts, ctx.devices.device
    step_multiplier = 2 if run.sampler.options.second_order else 1
    sched = ScheduleSettings(steps=p.steps * step_multiplier, use_old_scheduling=bool(opts["use_old_scheduling"]))
    with torch.inference_mode():
        uc = learned_conditioning(run.conditioner, negative_prompts, run.encode, sched, is_negative=True, cache=run.cache)
        c = multicond_learned_conditioning(run.conditioner, prompts, run.encode, sched, cache=run.cache)

        shape = (model.latent_channels, p.height // 8, p.width // 8)
        rng = rng_mod.ImageRNG(shape, p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength,
                               seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w,
                               source=opts["randn_source"], device=device,
                               eta_noise_seed_delta=int(opts["eta_noise_seed_delta"] or 0))
        # Sigmas are built on the CPU (schedule maths on small tables); sampling runs on the device.
        sigmas = samplers.build_sigmas(run.sampler, run.scheduler, p.steps, DiscreteSchedule(model.alphas_cumprod),
                                       is_sdxl=model.is_sdxl, opts=opts).to(device)
        schedule = DiscreteSchedule(model.alphas_cumprod.to(device))
        x = samplers.txt2img_start_latent(run.sampler, rng.first(), sigmas,
                                          sgm_noise_multiplier=bool(opts["sgm_noise_multiplier"]))
        if opts["sgm_noise_multiplier"]:
            p.extra_generation_params["SGM noise multiplier"] = True
        p.extra_generation_params.update(samplers.schedule_extra_infotext(run.sampler, run.scheduler, schedule, opts=opts))
        noise = _noise_sampler(run, rng, x, sigmas, p.seeds)

        model_fn = unet_function(model, p.width, p.height, opts, ctx.devices)
        inner = DiscreteDenoiser(model_fn, samplers.model_schedule(run.sampler, schedule), model.prediction_type)

        def cond_fn(step: int) -> tuple[list[list[tuple[int, float]]], Tensor, Tensor | None]:
            conds_list, cond = multicond_batch_at(c, step)
            return conds_list, cond.crossattn, cond.pooled

        def uncond_fn(step: int) -> tuple[Tensor, Tensor | None]:
            cond = cond_batch_at(uc, step)
            return cond.crossattn, cond.pooled

        s_min_uncond = p.s_min_uncond if p.s_min_uncond is not None else float(opts["s_min_uncond"])
        # DDIM CFG++ works on a rescaled guidance scale (A1111 multiplies it by 1/12.5).
        cfg_scale = float(p.cfg_scale) * run.sampler.options.cond_scale_multiplier
        denoiser = CFGDenoiser(inner, cond_fn, uncond_fn, cfg_scale, total_steps=p.steps * step_multiplier,
                               batch_cond_uncond=bool(opts["batch_cond_uncond"]), s_min_uncond=s_min_uncond,
                               skip_early_cond=float(opts["skip_early_cond"]))
        eta = p.eta
        if eta is None:
            eta = float(opts["eta_ddim"] if run.sampler.options.needs_schedule else opts["eta_ancestral"])
        params = samplers.SamplerParams(
            eta=eta,
            s_churn=_opt(p.s_churn, opts["s_churn"]), s_tmin=_opt(p.s_tmin, opts["s_tmin"]),
            s_tmax=_opt(p.s_tmax, opts["s_tmax"]), s_noise=_opt(p.s_noise, opts["s_noise"]),
            uni_pc_variant=opts["uni_pc_variant"], uni_pc_skip_type=opts["uni_pc_skip_type"],
            uni_pc_order=int(opts["uni_pc_order"]), uni_pc_lower_order_final=bool(opts["uni_pc_lower_order_final"]),
        )
        p.extra_generation_params.update(samplers.sampler_extra_infotext(run.sampler, params))
        if s_min_uncond > 0:
            p.extra_generation_params["NGMS"] = s_min_uncond

        state = ctx.state
        total = len(sigmas) - 1
        last = {"denoised": None}

        def callback(d: dict[str, Any]) -> None:
            last["denoised"] = d.get("denoised")
            state.set_step(int(d["i"]) + 1, total, d.get("denoised"))
            if state.interrupted or state.skipped:
                raise Interrupted(last["denoised"])

        return samplers.run_sampler(run.sampler, denoiser, x, sigmas, noise=noise, callback=callback,
                                    schedule=schedule, params=params, txt2img_steps=p.steps)


def _opt(value: float | None, default: Any) -> float:
    return float(default) if value is None else float(value)


def _noise_sampler(run: _Run, rng: rng_mod.ImageRNG, x: Tensor, sigmas: Tensor, seeds: list[int]) -> rng_mod.NoiseSampler:
    """Brownian-tree noise for the SDE samplers (per-image seeds), the image RNG otherwise."""
    if run.sampler.options.brownian_noise and not run.opts["no_dpmpp_sde_batch_determinism"]:
        positive = sigmas[sigmas > 0]
        return rng_mod.BrownianTreeNoiseSampler(x, float(positive.min()), float(sigmas.max()), seeds)
    return rng_mod.rng_noise_sampler(rng)


def unet_function(model: LoadedModel, width: int, height: int, opts: Mapping[str, Any],
                  devices: DevicePolicy) -> Callable[[Tensor, Tensor, Tensor, Tensor | None], Tensor]:
    """The network call the denoiser makes: extra inputs (SDXL sizes, inpaint channels) added here."""
    unet, dtype = model.unet, devices.dtype
    time_ids = None
    if model.is_sdxl:
        # sgm's size conditioning: original size, crop top-left, target size (height first).
        time_ids = torch.tensor([height, width, int(opts["sdxl_crop_top"]), int(opts["sdxl_crop_left"]), height, width],
                                dtype=dtype, device=devices.device)
    image_cond = None
    if model.is_inpaint:
        image_cond = txt2img_inpaint_conditioning(model, width, height, devices)

    def call(x: Tensor, t: Tensor, crossattn: Tensor, pooled: Tensor | None) -> Tensor:
        inp = x
        if image_cond is not None:
            inp = torch.cat([x, image_cond.expand(x.shape[0], -1, -1, -1).to(x.dtype)], dim=1)
        added = None
        if time_ids is not None:
            added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.expand(x.shape[0], -1)}
        out = unet(inp.to(dtype), t.to(torch.float32), encoder_hidden_states=crossattn.to(dtype),
                   added_cond_kwargs=added, return_dict=False)[0]
        return out.float()

    return call


def txt2img_inpaint_conditioning(model: LoadedModel, width: int, height: int, devices: DevicePolicy) -> Tensor:
    """Inpainting models in txt2img see a fully masked grey image (A1111's txt2img_image_conditioning).

    A1111 samples the VAE posterior here; we take its mean so results are deterministic.
    """
    grey = torch.zeros(1, 3, height, width, device=devices.device, dtype=devices.vae_dtype)  # 0.5 in [0,1] is 0 in [-1,1]
    latent = model.vae.encode(grey).latent_dist.mean.float() * model.vae_scaling_factor
    mask = torch.ones(1, 1, latent.shape[2], latent.shape[3], device=latent.device)
    return torch.cat([mask, latent], dim=1)


def decode_latents(model: LoadedModel, latents: Tensor, devices: DevicePolicy) -> Tensor:
    """VAE-decode each image separately (A1111 does, to bound memory), into [0, 1]."""
    out = []
    with torch.inference_mode():
        for i in range(latents.shape[0]):
            z = latents[i:i + 1] / model.vae_scaling_factor
            vae = model.vae
            image = vae.decode(z.to(next(vae.parameters()).dtype), return_dict=False)[0].float()
            if torch.isnan(image).any() and next(vae.parameters()).dtype != torch.float32:
                # fp16 VAEs (notably SDXL's) can overflow; A1111 retries in fp32 and keeps it.
                log.warning("VAE produced NaNs in half precision; switching the VAE to float32")
                vae.to(torch.float32)
                image = vae.decode(z.float(), return_dict=False)[0].float()
            out.append(torch.clamp((image + 1.0) / 2.0, 0.0, 1.0))
    return torch.cat(out)


def tensor_to_image(x: Tensor) -> Image.Image:
    """[3,H,W] in [0,1] -> PIL, truncating like A1111 (255*x then astype uint8)."""
    arr = (255.0 * np.moveaxis(x.cpu().numpy(), 0, 2)).astype(np.uint8)
    return Image.fromarray(arr)


# ---------------------------------------------------------------------------
# Infotext, saving, grids
# ---------------------------------------------------------------------------

def create_infotext(p: StableDiffusionProcessing, run: _Run, all_prompts: list[str], all_seeds: list[int],
                    all_subseeds: list[int], iteration: int = 0, position_in_batch: int = 0,
                    use_main_prompt: bool = False, resolved_scheduler: bool = True) -> str:
    """A1111's create_infotext (a1111.md 5.1-5.2)."""
    opts = run.opts
    index = position_in_batch + iteration * p.batch_size
    uses_ensd = int(opts["eta_noise_seed_delta"] or 0) != 0 and run.sampler.options.uses_ensd
    schedule_type = samplers.scheduler_label_for_infotext(run.sampler, run.scheduler) if resolved_scheduler else run.scheduler.label
    fixed = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": schedule_type,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts["add_model_hash_to_info"] else None,
        "Model": p.sd_model_name if opts["add_model_name_to_info"] else None,
        "VAE hash": p.sd_vae_hash if opts["add_vae_hash_to_info"] else None,
        "VAE": p.sd_vae_name if opts["add_vae_name_to_info"] else None,
        "Variation seed": None if p.subseed_strength == 0 else (p.all_subseeds[0] if use_main_prompt else all_subseeds[index]),
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Seed resize from": None if p.seed_resize_from_w <= 0 or p.seed_resize_from_h <= 0
        else f"{p.seed_resize_from_w}x{p.seed_resize_from_h}",
        "Clip skip": None if p.clip_skip <= 1 else p.clip_skip,
        "ENSD": opts["eta_noise_seed_delta"] if uses_ensd else None,
        "RNG": opts["randn_source"] if opts["randn_source"] != "GPU" else None,
        "Tiling": "True" if p.tiling else None,
        "Version": version.VERSION if opts["add_version_to_infotext"] else None,
        "User": p.user if opts["add_user_name_to_info"] else None,
    }
    extra = dict(p.extra_generation_params)
    if opts["emphasis"] != "Original" and any(ch in all_prompts[index] for ch in "(["):
        extra.setdefault("Emphasis", opts["emphasis"])
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else p.all_negative_prompts[index]
    return format_infotext(prompt, negative, fixed, extra)


def _outdir(p: StableDiffusionProcessing, ctx: ProcessingContext, opts: Mapping[str, Any], *, grid: bool) -> Path:
    if grid:
        chosen = p.outpath_grids or opts["outdir_grids"] or opts[f"outdir_{p.outpath_kind}_grids"]
    else:
        chosen = p.outpath_samples or opts["outdir_samples"] or opts[f"outdir_{p.outpath_kind}_samples"]
    path = Path(chosen)
    return path if path.is_absolute() else ctx.data_dir / path


def _make_grid(p: StableDiffusionProcessing, ctx: ProcessingContext, run: _Run, output_images: list[Image.Image],
               infotexts: list[str], saved: list[Path]) -> int:
    """Grid as A1111: returned first in the list when return_grid, saved when grid_save."""
    opts = run.opts
    wants = (opts["return_grid"] or opts["grid_save"]) and not p.do_not_save_grid
    if not wants or (len(output_images) < 2 and opts["grid_only_if_multiple"]):
        return 0
    grid = image_io.image_grid(output_images, p.batch_size, n_rows=int(opts["n_rows"]))
    text = create_infotext(p, run, p.all_prompts, p.all_seeds, p.all_subseeds, use_main_prompt=True)
    index_of_first_image = 0
    if opts["return_grid"]:
        if opts["enable_pnginfo"]:
            grid.info["parameters"] = text
        output_images.insert(0, grid)
        infotexts.insert(0, text)
        index_of_first_image = 1
    if opts["grid_save"]:
        path, _ = image_io.save_image(grid, _outdir(p, ctx, opts, grid=True), "grid", seed=p.all_seeds[0],
                                      prompt=p.all_prompts[0], extension=opts["grid_format"], info=text,
                                      short_filename=not opts["grid_extended_filename"], p=p, grid=True, opts=opts)
        saved.append(path)
    return index_of_first_image


def _write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")
    except OSError as e:  # params.txt is a convenience; never fail a job for it
        log.warning("could not write %s: %s", path, e)


def _check_int(name: str, value: Any, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InvalidRequest(name, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InvalidRequest(name, f"must be between {lo} and {hi}, got {value}")


def _strip_scheduler_suffix(name: str) -> str:
    sampler, _ = samplers.resolve_sampler_and_scheduler(name, None)
    return sampler.name if name.startswith(sampler.name) else name


def fixed_seed(seed: int | str | None) -> int:
    """Public alias of the A1111 seed rule for callers outside processing."""
    return rng_mod.get_fixed_seed(seed)


def random_seed() -> int:
    return random.randrange(4294967294)
