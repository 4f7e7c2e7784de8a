"""The generation recipe: a processing object in, a `Processed` result out.

Field names and defaults are A1111's (modules/processing.py), so UI, API, scripts
and pasted infotexts all fill the same object. `process_images` follows A1111's
order (a1111.md 4.2); per-request settings are resolved into local values and
never written into the shared options.
"""
from __future__ import annotations

import logging
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
from backend.callbacks import CallbackRegistry
from backend.config import Options
from backend.devices import DevicePolicy
from backend.errors import Interrupted, InvalidRequest, ModelNotFound
from backend.jobs.progress import JobState
from backend.models.families import native_resolution
from backend.models.loader import LoadedModel
from backend.models.manager import ModelManager
from backend.models.registry import CheckpointInfo
from backend.models.seamless import set_seamless
from backend.models.vae_files import VaeFile
from backend.networks import NetworkManager, requests_from_prompt_params
from backend.postprocess import images as image_io
from backend.postprocess.infotext import format_infotext
from backend.postprocess.face_restore import FaceRestorerRegistry
from backend.postprocess.upscalers import UpscalerRegistry, resize_to
from backend.processing.objects import Processed, StableDiffusionProcessing
from backend.prompts import parser
from backend.prompts.embeddings import EmbeddingDatabase
from backend.prompts.styles import StyleDatabase
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
from backend.sampling.denoiser import CFGDenoiser, DiscreteDenoiser, RowLayout, StepInfo
from backend.sampling.schedules import DiscreteSchedule

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# The context process_images needs
# ---------------------------------------------------------------------------

class ScriptHooks(Protocol):
    """Hook points process_images calls on `p.scripts` (backend.scripts.ScriptRunner implements this)."""

    def before_process(self, p: StableDiffusionProcessing) -> None: ...
    def process(self, p: StableDiffusionProcessing) -> None: ...
    def before_process_batch(self, p: StableDiffusionProcessing, batch_number: int) -> None: ...
    def after_extra_networks_activate(self, p: StableDiffusionProcessing, batch_number: int) -> None: ...
    def process_batch(self, p: StableDiffusionProcessing, batch_number: int) -> None: ...
    def postprocess_batch(self, p: StableDiffusionProcessing, images: Tensor, batch_number: int) -> None: ...
    def postprocess_batch_list(self, p: StableDiffusionProcessing, images: list[Image.Image],
                               batch_number: int) -> list[Image.Image]: ...
    def postprocess_image(self, p: StableDiffusionProcessing, image: Image.Image) -> Image.Image: ...
    def before_hr(self, p: StableDiffusionProcessing) -> None: ...
    def postprocess(self, p: StableDiffusionProcessing, processed: Processed) -> None: ...


@dataclass
class UnetCall:
    """One UNet call as `p.unet_hooks` see it; a hook adds keyword arguments for the diffusers UNet
    to `kwargs` (ControlNet: down_block_additional_residuals, mid_block_additional_residual).

    `x` is the scaled latent input (without inpainting channels), `rows` says which image and
    which half of guidance each row is, `step`/`total_steps` count denoiser calls.
    """

    x: Tensor
    t: Tensor
    crossattn: Tensor
    added_cond_kwargs: dict[str, Tensor] | None
    rows: RowLayout
    step: int
    total_steps: int
    width: int
    height: int
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProcessingContext:
    """What a job needs from the application: models, options, device, output folder, progress."""

    models: ModelManager
    options: Options
    devices: DevicePolicy
    data_dir: Path
    state: JobState = field(default_factory=JobState)
    callbacks: CallbackRegistry | None = None
    models_dir: Path | None = None  # the user's model folders (extensions find their own models there)
    write_params_txt: bool = True
    upscalers: UpscalerRegistry | None = None
    face_restorers: FaceRestorerRegistry | None = None
    networks: NetworkManager | None = None
    # The prompt styles `p.styles` names (styles.csv); none by default.
    styles: StyleDatabase = field(default_factory=StyleDatabase)
    # Textual-inversion embeddings (the embeddings folder); none by default.
    embeddings: EmbeddingDatabase = field(default_factory=EmbeddingDatabase)


# ---------------------------------------------------------------------------
# process_images
# ---------------------------------------------------------------------------

@dataclass
class Run:
    """Per-request values resolved once at the start (never written to shared options)."""

    opts: Mapping[str, Any]
    sampler: samplers.SamplerSpec
    scheduler: samplers.SchedulerSpec
    checkpoint: CheckpointInfo
    model: LoadedModel
    conditioner: TextConditioner
    encode: EncodeSettings
    cache: ConditioningCache
    vae: VaeFile | None = None  # the separate VAE file in use; None: the checkpoint's own


def resolve_run(p: StableDiffusionProcessing, ctx: ProcessingContext, opts: Mapping[str, Any]) -> Run:
    sampler_name = p.sampler_name
    if sampler_name is None and p.sampler_index is not None:
        sampler_name = samplers.SAMPLERS[int(p.sampler_index)].name
    # Aliases ("k_euler_a") are accepted and mean their sampler; A1111's name resolution alone
    # would silently fall back to DPM++ 2M for them.
    alias = samplers.find_sampler(sampler_name) if sampler_name else None
    if alias is not None:
        sampler_name = alias.name
    sampler, scheduler = samplers.resolve_sampler_and_scheduler(sampler_name, p.scheduler)
    p.sampler_name = sampler.name
    p.scheduler = scheduler.label

    if p.tiling is None:
        p.tiling = bool(opts["tiling"])
    run = load_run(ctx, opts, opts.get("sd_model_checkpoint"), sampler, scheduler, seamless=p.tiling)
    if p.width is None or p.height is None:
        native_width, native_height = native_resolution(run.model.family, run.checkpoint.metadata)
        p.width = native_width if p.width is None else p.width
        p.height = native_height if p.height is None else p.height
    p.sd_model = run.model
    p.sd_model_name = run.checkpoint.model_name
    p.sd_model_hash = run.checkpoint.shorthash
    # Only a separate VAE file is named in the infotext, as in A1111.
    p.sd_vae_name = run.vae.name if run.vae is not None else None
    p.sd_vae_hash = run.vae.shorthash if run.vae is not None else None
    p.clip_skip = run.encode.clip_skip
    p.is_using_inpainting_conditioning = run.model.is_inpaint
    if p.restore_faces is None:
        p.restore_faces = bool(opts["face_restoration"])
    if p.restore_faces:
        _check_face_restorer(ctx, opts["face_restoration_model"])
    return run


def load_run(ctx: ProcessingContext, opts: Mapping[str, Any], checkpoint_name: str | None,
             sampler: samplers.SamplerSpec, scheduler: samplers.SchedulerSpec, *, seamless: bool) -> Run:
    """The model (loaded if needed) and its text conditioner for one pass; touches no request field.

    `seamless` (A1111's Tiling) is set on the model here, so every job leaves the models it uses in the
    padding mode it asked for; so is the VAE `sd_vae` asks for (a file's weights, or the model's own)."""
    checkpoint, model = ctx.models.get(checkpoint_name)
    vae = ctx.models.use_vae(checkpoint, model, str(opts["sd_vae"]))
    set_seamless(model, seamless)
    encode = EncodeSettings(clip_skip=int(opts["CLIP_stop_at_last_layers"]), emphasis=opts["emphasis"],
                            comma_padding_backtrack=int(opts["comma_padding_backtrack"]))
    conditioner = TextConditioner(encoder_specs(model, opts), ctx.devices.device, zero_empty_negative=model.is_sdxl,
                                  embeddings=ctx.embeddings)
    return Run(opts, sampler, scheduler, checkpoint, model, conditioner, encode, ConditioningCache(), vae)


def _check_face_restorer(ctx: ProcessingContext, name: str) -> None:
    """Fail before generating when the chosen restorer's weights are missing."""
    restorers = [] if ctx.face_restorers is None else ctx.face_restorers.list()
    found = next((r for r in restorers if r.name == name), None)
    if found is None:
        raise InvalidRequest("face_restoration_model", f"unknown face restorer {name!r}; known: "
                             + ", ".join(r.name for r in restorers))
    if found.path is None:
        raise ModelNotFound("face restorer weights", f"{name} (put its .pth file in {found.folder})")


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


def setup_prompts_and_seeds(p: StableDiffusionProcessing, opts: Mapping[str, Any],
                            styles: StyleDatabase | None = None) -> None:
    total = p.batch_size * p.n_iter
    prompts = p.prompt if isinstance(p.prompt, list) else [p.prompt] * total
    negatives = p.negative_prompt if isinstance(p.negative_prompt, list) else [p.negative_prompt] * total
    if styles is not None and p.styles:
        # A1111's setup_prompts: every prompt gets the styles, so infotexts hold the styled prompt.
        # Unknown names are skipped, as in A1111 (only logged here).
        unknown = [name for name in p.styles if styles.get(name) is None]
        if unknown:
            log.warning("unknown prompt styles ignored: %s", ", ".join(unknown))
        prompts = [styles.apply_styles_to_prompt(x, p.styles) for x in prompts]
        negatives = [styles.apply_negative_styles_to_prompt(x, p.styles) for x in negatives]
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


@dataclass
class BatchConds:
    """Positive (AND-composable) and negative conditioning schedules of one batch."""

    c: list
    uc: list


def batch_conds(run: Run, prompts: list[str], negative_prompts: list[str], *, steps: int,
                hires_steps: int | None = None) -> BatchConds:
    """Conditioning for one pass. `steps` (and `hires_steps`) count denoiser calls: callers pass
    twice the steps for second-order samplers (A1111's step_multiplier)."""
    sched = ScheduleSettings(steps=steps, hires_steps=hires_steps, use_old_scheduling=bool(run.opts["use_old_scheduling"]))
    with torch.inference_mode():
        uc = learned_conditioning(run.conditioner, negative_prompts, run.encode, sched, is_negative=True, cache=run.cache)
        c = multicond_learned_conditioning(run.conditioner, prompts, run.encode, sched, cache=run.cache)
    return BatchConds(c, uc)


@dataclass
class Pass:
    """One sampling pass (txt2img, the hires pass, or img2img)."""

    sampler: samplers.SamplerSpec
    scheduler: samplers.SchedulerSpec
    steps: int
    conds: BatchConds
    width: int
    height: int
    image_cond: Tensor | None = None
    # Inpainting: keep init_latent where mask is 1, regenerate where nmask is 1 (A1111's blend).
    init_latent: Tensor | None = None
    mask: Tensor | None = None
    nmask: Tensor | None = None


def sample_pass(p: StableDiffusionProcessing, ctx: ProcessingContext, run: Run, ps: Pass, x: Tensor,
                sigmas: Tensor, rng: rng_mod.ImageRNG, *, brownian_sigmas: Tensor,
                txt2img_steps: int | None) -> Tensor:
    """Run one sampler over `sigmas` from latent `x` with CFG; returns the final latents."""
    model, opts, device = run.model, run.opts, ctx.devices.device
    schedule = DiscreteSchedule(model.alphas_cumprod.to(device))
    noise = _noise_sampler(ps.sampler, opts, rng, x, brownian_sigmas, p.seeds)
    hooks = list(p.unet_hooks)
    model_fn = unet_function(model, ps.width, ps.height, opts, ctx.devices,
                             hooks=hooks, denoiser=lambda: denoiser)
    inner = DiscreteDenoiser(model_fn, samplers.model_schedule(ps.sampler, schedule), model.prediction_type)
    c, uc = ps.conds.c, ps.conds.uc

    def cond_fn(step: int) -> tuple[list[list[tuple[int, float]]], Tensor, Tensor | None]:
        conds_list, cond = multicond_batch_at(c, step)
        return conds_list, cond.crossattn, cond.pooled

    def uncond_fn(step: int) -> tuple[Tensor, Tensor | None]:
        cond = cond_batch_at(uc, step)
        return cond.crossattn, cond.pooled

    after_cfg = None if ps.mask is None else _mask_blend(ps.init_latent, ps.mask, ps.nmask)

    step_multiplier = 2 if ps.sampler.options.second_order else 1
    s_min_uncond = p.s_min_uncond if p.s_min_uncond is not None else float(opts["s_min_uncond"])
    # DDIM CFG++ works on a rescaled guidance scale (A1111 multiplies it by 1/12.5).
    cfg_scale = float(p.cfg_scale) * ps.sampler.options.cond_scale_multiplier
    denoiser = CFGDenoiser(inner, cond_fn, uncond_fn, cfg_scale, total_steps=ps.steps * step_multiplier,
                           batch_cond_uncond=bool(opts["batch_cond_uncond"]), s_min_uncond=s_min_uncond,
                           skip_early_cond=float(opts["skip_early_cond"]), image_cond=ps.image_cond,
                           after_cfg=after_cfg, callbacks=ctx.callbacks)
    eta = p.eta
    if eta is None:
        eta = float(opts["eta_ddim"] if ps.sampler.options.needs_schedule else opts["eta_ancestral"])
    params = samplers.SamplerParams(
        eta=eta,
        s_churn=_opt(p.s_churn, opts["s_churn"]), s_tmin=_opt(p.s_tmin, opts["s_tmin"]),
        s_tmax=_opt(p.s_tmax, opts["s_tmax"]), s_noise=_opt(p.s_noise, opts["s_noise"]),
        uni_pc_variant=opts["uni_pc_variant"], uni_pc_skip_type=opts["uni_pc_skip_type"],
        uni_pc_order=int(opts["uni_pc_order"]), uni_pc_lower_order_final=bool(opts["uni_pc_lower_order_final"]),
    )
    p.extra_generation_params.update(samplers.sampler_extra_infotext(ps.sampler, params))
    if s_min_uncond > 0:
        p.extra_generation_params["NGMS"] = s_min_uncond

    state = ctx.state
    total = len(sigmas) - 1
    last: dict[str, Tensor | None] = {"denoised": None}

    def callback(d: dict[str, Any]) -> None:
        last["denoised"] = d.get("denoised")
        state.set_step(int(d["i"]) + 1, total, d.get("denoised"))
        if state.interrupted or state.skipped:
            raise Interrupted(last["denoised"])

    with torch.inference_mode():
        return samplers.run_sampler(ps.sampler, denoiser, x, sigmas, noise=noise, callback=callback,
                                    schedule=schedule, params=params, txt2img_steps=txt2img_steps)


def activate_networks(p: StableDiffusionProcessing, ctx: ProcessingContext, run: Run,
                      tags: Mapping[str, list[parser.ExtraNetworkParams]] | None = None, *,
                      hires: bool = False) -> None:
    """Patch the batch's LoRA/LyCORIS networks into the model (restoring the previous set first).

    Called for every batch, also without tags, so weights patched by an earlier job are put back.
    `tags` default to the batch's (`p.extra_network_data`); the hires pass gives its own prompt's with
    `hires=True`, and its "Lora hashes" join the first pass's, as in A1111.
    A missing or unfitting network is noted in the result, never fatal (A1111).
    """
    if ctx.networks is None:
        return
    tags = {} if p.disable_extra_networks else (p.extra_network_data if tags is None else tags)
    requests = requests_from_prompt_params(list(tags.get("lora", [])) + list(tags.get("lyco", [])))
    ctx.networks.memory_limit = int(run.opts["lora_in_memory_limit"])
    result = ctx.networks.activate(run.model, requests)
    if result.not_found_comment:
        p.comments["lora not found (hires)" if hires else "lora not found"] = result.not_found_comment
    for error in result.errors:
        p.comments[f"lora error {error}"] = error
    hashes = result.lora_hashes()
    if hashes and run.opts["lora_add_hashes_to_infotext"]:
        if hires:
            hashes = _joined_lora_hashes(p.extra_generation_params.get("Lora hashes"), hashes)
        p.extra_generation_params["Lora hashes"] = hashes


def _joined_lora_hashes(first: str | None, second: str) -> str:
    """Two "Lora hashes" values as one, each name once (names carry no ',' or ':')."""
    entries: dict[str, str] = {}
    for text in (first or "", second):
        for item in text.split(","):
            name, sep, value = item.partition(":")
            if sep:
                entries[name.strip()] = value.strip()
    return ", ".join(f"{name}: {value}" for name, value in entries.items())


def restore_faces(ctx: ProcessingContext, run: Run, image: Image.Image) -> Image.Image:
    """Face restoration of one generated image (A1111: before the postprocess_image hook)."""
    assert ctx.face_restorers is not None
    opts = run.opts
    return ctx.face_restorers.restore_faces(
        image, opts["face_restoration_model"], codeformer_weight=float(opts["code_former_weight"]),
        device=ctx.devices.device, unload_after=bool(opts["face_restoration_unload"]))


def upscale_image(ctx: ProcessingContext, run: Run, image: Image.Image, width: int, height: int,
                  name: str) -> Image.Image:
    """Resize to exactly width x height, growing with the named upscaler (A1111's resize_image)."""
    if ctx.upscalers is None:
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return resize_to(image, width, height, name, ctx.upscalers, run.opts, ctx.devices.device)


def _mask_blend(init_latent: Tensor | None, mask: Tensor, nmask: Tensor | None) -> Callable[[StepInfo], Tensor]:
    """Latent-mask blending at every step, after denoising (A1111's default for k-diffusion)."""
    def blend(info: StepInfo) -> Tensor:
        return init_latent * mask + nmask * info.denoised
    return blend


def image_rng(p: StableDiffusionProcessing, run: Run, ctx: ProcessingContext, width: int, height: int,
              seeds: list[int] | None = None) -> rng_mod.ImageRNG:
    """A1111's ImageRNG for this batch at a latent size (per-image seeds, variation, resize, ENSD)."""
    shape = (run.model.latent_channels, height // 8, width // 8)
    return rng_mod.ImageRNG(shape, seeds or p.seeds, subseeds=p.subseeds, subseed_strength=p.subseed_strength,
                            seed_resize_from_h=p.seed_resize_from_h, seed_resize_from_w=p.seed_resize_from_w,
                            source=run.opts["randn_source"], device=ctx.devices.device,
                            eta_noise_seed_delta=int(run.opts["eta_noise_seed_delta"] or 0))


def cpu_sigmas(run: Run, sampler: samplers.SamplerSpec, scheduler: samplers.SchedulerSpec, steps: int) -> Tensor:
    """Sigmas built on the CPU (schedule maths on small tables); sampling moves them to the device."""
    return samplers.build_sigmas(sampler, scheduler, steps, DiscreteSchedule(run.model.alphas_cumprod),
                                 is_sdxl=run.model.is_sdxl, opts=run.opts)


def _opt(value: float | None, default: Any) -> float:
    return float(default) if value is None else float(value)


def _noise_sampler(sampler: samplers.SamplerSpec, opts: Mapping[str, Any], rng: rng_mod.ImageRNG, x: Tensor,
                   sigmas: Tensor, seeds: list[int]) -> rng_mod.NoiseSampler:
    """Brownian-tree noise for the SDE samplers (per-image seeds, over the full schedule's range),
    the image RNG otherwise."""
    if sampler.options.brownian_noise and not opts["no_dpmpp_sde_batch_determinism"]:
        low, high = samplers.brownian_sigma_range(sigmas)
        return rng_mod.BrownianTreeNoiseSampler(x, float(low), float(high), seeds)
    return rng_mod.rng_noise_sampler(rng)


def unet_function(model: LoadedModel, width: int, height: int, opts: Mapping[str, Any], devices: DevicePolicy, *,
                  hooks: list[Callable[[UnetCall], None]] | None = None, denoiser: Callable[[], CFGDenoiser] | None = None,
                  ) -> Callable[[Tensor, Tensor, Tensor, Tensor | None, Tensor | None], Tensor]:
    """The network call the denoiser makes: extra inputs (SDXL sizes, inpaint channels) added here,
    and whatever `hooks` (from extensions) add; `denoiser` gives the running CFGDenoiser's row layout."""
    unet, dtype = model.unet, devices.dtype
    time_ids = None
    if model.is_sdxl:
        # sgm's size conditioning: original size, crop top-left, target size (height first).
        time_ids = torch.tensor([height, width, int(opts["sdxl_crop_top"]), int(opts["sdxl_crop_left"]), height, width],
                                dtype=dtype, device=devices.device)

    def call(x: Tensor, t: Tensor, crossattn: Tensor, pooled: Tensor | None, image_cond: Tensor | None) -> Tensor:
        inp = x if image_cond is None else torch.cat([x, image_cond.to(x.dtype)], dim=1)
        added = None
        if time_ids is not None:
            added = {"text_embeds": pooled.to(dtype), "time_ids": time_ids.expand(x.shape[0], -1)}
        extra: dict[str, Any] = {}
        if hooks:
            cfg = denoiser() if denoiser is not None else None
            call = UnetCall(x, t, crossattn, added, cfg.rows if cfg else RowLayout([], []),
                            cfg.step if cfg else 0, cfg.total_steps if cfg else 0, width, height)
            for hook in hooks:
                hook(call)
            extra = call.kwargs
        out = unet(inp.to(dtype), t.to(torch.float32), encoder_hidden_states=crossattn.to(dtype),
                   added_cond_kwargs=added, return_dict=False, **extra)[0]
        return out.float()

    return call


def encode_images(model: LoadedModel, images: Tensor, devices: DevicePolicy) -> Tensor:
    """Images in [-1, 1] -> latents. A1111 samples the VAE posterior; we take its mean so
    results do not depend on the global torch RNG (a documented difference)."""
    vae = model.vae
    with torch.inference_mode():
        dist = vae.encode(images.to(devices.device, next(vae.parameters()).dtype)).latent_dist
        return dist.mean.float() * model.vae_scaling_factor


def inpaint_conditioning(model: LoadedModel, source: Tensor, mask: Tensor | None, devices: DevicePolicy,
                         latent_size: tuple[int, int], mask_weight: float = 1.0) -> Tensor:
    """What a 9-channel inpainting UNet gets besides the latent: [mask, VAE(masked image)].

    source: images in [-1, 1], [B,3,H,W]; mask: [B,1,H,W] in {0,1} (1 = regenerate), or None
    for "everything" (txt2img and plain img2img). A1111's inpainting_image_conditioning.
    """
    if mask is None:
        mask = source.new_ones(source.shape[0], 1, *source.shape[-2:])
    masked = torch.lerp(source, source * (1.0 - mask), mask_weight)
    latent = encode_images(model, masked, devices)
    small = torch.nn.functional.interpolate(mask.float().to(latent.device), size=latent_size)
    return torch.cat([small, latent], dim=1)


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

def create_infotext(p: StableDiffusionProcessing, run: Run, all_prompts: list[str], all_seeds: list[int],
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
        "Face restoration": opts["face_restoration_model"] if p.restore_faces else None,
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if opts["add_model_hash_to_info"] else None,
        "Model": p.sd_model_name if opts["add_model_name_to_info"] else None,
        "VAE hash": p.sd_vae_hash if opts["add_vae_hash_to_info"] else None,
        "VAE": p.sd_vae_name if opts["add_vae_name_to_info"] else None,
        "Variation seed": None if p.subseed_strength == 0 else (p.all_subseeds[0] if use_main_prompt else all_subseeds[index]),
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Conditional mask weight": opts["inpainting_mask_weight"] if p.is_using_inpainting_conditioning else None,
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
    # A1111 adds "TI hashes" once the conds are made: the embeddings the job's prompts used so far.
    ti_hashes = run.conditioner.embedding_hashes() if opts["textual_inversion_add_hashes_to_infotext"] else None
    if ti_hashes:
        extra.setdefault("TI hashes", ti_hashes)
    if opts["emphasis"] != "Original" and any(ch in all_prompts[index] for ch in "(["):
        extra.setdefault("Emphasis", opts["emphasis"])
    prompt = p.main_prompt if use_main_prompt else all_prompts[index]
    negative = p.main_negative_prompt if use_main_prompt else p.all_negative_prompts[index]
    return format_infotext(prompt, negative, fixed, extra)


def outdir(p: StableDiffusionProcessing, ctx: ProcessingContext, opts: Mapping[str, Any], *, grid: bool) -> Path:
    if grid:
        chosen = p.outpath_grids or opts["outdir_grids"] or opts[f"outdir_{p.outpath_kind}_grids"]
    else:
        chosen = p.outpath_samples or opts["outdir_samples"] or opts[f"outdir_{p.outpath_kind}_samples"]
    path = Path(chosen)
    return path if path.is_absolute() else ctx.data_dir / path


def make_grid(p: StableDiffusionProcessing, ctx: ProcessingContext, run: Run, output_images: list[Image.Image],
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
        path, _ = image_io.save_image(grid, outdir(p, ctx, opts, grid=True), "grid", seed=p.all_seeds[0],
                                      prompt=p.all_prompts[0], extension=opts["grid_format"], info=text,
                                      short_filename=not opts["grid_extended_filename"], p=p, grid=True, opts=opts)
        saved.append(path)
    return index_of_first_image


def write_text(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf8")
    except OSError as e:  # params.txt is a convenience; never fail a job for it
        log.warning("could not write %s: %s", path, e)
