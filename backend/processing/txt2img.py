"""txt2img: the first pass from pure noise, and the optional hires-fix second pass.

A1111's StableDiffusionProcessingTxt2Img.init / calculate_target_resolution / sample /
sample_hr_pass (a1111.md 4.6).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from backend.errors import InvalidRequest, ModelNotFound
from backend.postprocess import masking
from backend.postprocess.upscalers import find_latent_mode
from backend.processing.core import (
    Pass,
    ProcessingContext,
    Run,
    activate_networks,
    batch_conds,
    cpu_sigmas,
    decode_latents,
    encode_images,
    image_rng,
    inpaint_conditioning,
    load_run,
    sample_pass,
    tensor_to_image,
    upscale_image,
)
from backend.processing.objects import StableDiffusionProcessingTxt2Img
from backend.prompts import parser
from backend.sampling import registry as samplers
from backend.sampling.schedules import DiscreteSchedule

USE_SAME = ("", "Use same sampler", "Use same scheduler", "Use same checkpoint")


@dataclass
class HiresPlan:
    """The hires pass, resolved once in init."""

    sampler: samplers.SamplerSpec
    scheduler: samplers.SchedulerSpec
    steps: int
    width: int
    height: int
    truncate_x: int
    truncate_y: int
    latent_mode: tuple[str, bool] | None  # (torch interpolate mode, antialias) or None for an image upscaler
    upscaler: str | None
    prompts: list[str]
    negative_prompts: list[str]
    checkpoint: str | None  # another checkpoint for this pass (hr_checkpoint_name), or None


class Txt2ImgMode:
    """The txt2img recipe for process_images: init once, then sample each batch."""

    kind = "txt2img"

    def __init__(self, p: StableDiffusionProcessingTxt2Img, ctx: ProcessingContext, run: Run) -> None:
        self.p, self.ctx, self.run = p, ctx, run
        self.hires: HiresPlan | None = None
        # The model that made the last latents (the hires checkpoint after a switch): the one to decode with.
        self.decode_run = run

    @property
    def jobs_per_batch(self) -> int:
        return 2 if self.hires is not None and self.p.firstpass_image is None else 1

    def init(self) -> None:
        """Resolve the hires pass and write its infotext keys in A1111's order."""
        p = self.p
        if not p.enable_hr:
            return
        extra = p.extra_generation_params
        extra["Denoising strength"] = p.denoising_strength
        hr_checkpoint = None
        if p.hr_checkpoint_name not in (None, *USE_SAME):
            found = self.ctx.models.registry.find(p.hr_checkpoint_name)
            if found is None:
                raise InvalidRequest("hr_checkpoint_name", f"unknown checkpoint {p.hr_checkpoint_name!r}")
            self.ctx.models.registry.ensure_hash(found)
            hr_checkpoint = found.title
            extra["Hires checkpoint"] = found.short_title
        hr_sampler_name = p.hr_sampler_name if p.hr_sampler_name not in (None, *USE_SAME) else p.sampler_name
        hr_scheduler_name = p.hr_scheduler if p.hr_scheduler not in (None, *USE_SAME) else p.scheduler
        sampler, scheduler = samplers.resolve_sampler_and_scheduler(hr_sampler_name, hr_scheduler_name)
        if sampler.name != p.sampler_name:
            extra["Hires sampler"] = sampler.name
        # The hires prompts get the styles too (A1111 1.8+); an empty one means the styled first-pass prompt.
        styles = self.ctx.styles
        hr_prompt = styles.apply_styles_to_prompt(p.hr_prompt, p.styles) if p.hr_prompt else ""
        hr_negative = (styles.apply_negative_styles_to_prompt(p.hr_negative_prompt, p.styles)
                       if p.hr_negative_prompt else "")
        hr_prompts = _hr_prompts(hr_prompt, p.all_prompts)
        hr_negatives = _hr_prompts(hr_negative, p.all_negative_prompts)
        if hr_prompt and hr_prompt != p.all_prompts[0]:
            extra["Hires prompt"] = hr_prompt
        if hr_negative and hr_negative != p.all_negative_prompts[0]:
            extra["Hires negative prompt"] = hr_negative
        # A1111 writes the hires schedule when it resolves to a real schedule other than the first pass's.
        hires_label = samplers.scheduler_label_for_infotext(sampler, scheduler)
        first_label = samplers.scheduler_label_for_infotext(self.run.sampler, self.run.scheduler)
        if hires_label != "Automatic" and hires_label != first_label:
            extra["Hires schedule type"] = hires_label

        latent_mode = None
        upscaler = p.hr_upscaler
        if upscaler in (None, ""):
            upscaler = None
            latent_mode = find_latent_mode("Latent")
        else:
            latent_mode = find_latent_mode(upscaler)
            if latent_mode is None:
                self._check_upscaler(upscaler)

        width, height, tx, ty = target_resolution(p)
        if p.hr_second_pass_steps:
            extra["Hires steps"] = p.hr_second_pass_steps
        if upscaler is not None:
            extra["Hires upscaler"] = upscaler
        mode = None if latent_mode is None else (latent_mode.mode, latent_mode.antialias)
        self.hires = HiresPlan(sampler, scheduler, p.hr_second_pass_steps or p.steps, width, height, tx, ty,
                               mode, upscaler, hr_prompts, hr_negatives, hr_checkpoint)

    def _check_upscaler(self, name: str) -> None:
        known = [] if self.ctx.upscalers is None else [u.name for u in self.ctx.upscalers.list()]
        if name not in known:
            # A1111: "could not find upscaler named X"; a known A1111 name whose file is missing says where to put it.
            reason = f"could not find upscaler named {name}"
            if self.ctx.upscalers is not None:
                try:
                    self.ctx.upscalers.get(name)
                except ModelNotFound as e:
                    reason = str(e)
            raise InvalidRequest("hr_upscaler", reason)

    def sample(self, prompts: list[str], negative_prompts: list[str]) -> Tensor:
        """First pass, then the hires pass when enabled (only the hires pass for firstpass_image)."""
        p, run, ctx = self.p, self.run, self.ctx
        multiplier = 2 if run.sampler.options.second_order else 1
        self.decode_run = run
        if p.firstpass_image is not None:
            first = p.firstpass_image.convert("RGB")
            return self._hires_pass(None, [first] * len(prompts), multiplier * p.steps)
        conds = batch_conds(run, prompts, negative_prompts, steps=p.steps * multiplier)
        sigmas = cpu_sigmas(run, run.sampler, run.scheduler, p.steps)
        rng = image_rng(p, run, ctx, p.width, p.height)
        opts = run.opts
        x = samplers.txt2img_start_latent(run.sampler, rng.first().to(ctx.devices.device), sigmas.to(ctx.devices.device),
                                          sgm_noise_multiplier=bool(opts["sgm_noise_multiplier"]))
        if opts["sgm_noise_multiplier"]:
            p.extra_generation_params["SGM noise multiplier"] = True
        p.extra_generation_params.update(samplers.schedule_extra_infotext(
            run.sampler, run.scheduler, DiscreteSchedule(run.model.alphas_cumprod), opts=opts))
        image_cond = None
        if run.model.is_inpaint:
            grey = torch.zeros(x.shape[0], 3, p.height, p.width, device=ctx.devices.device)
            image_cond = inpaint_conditioning(run.model, grey, None, ctx.devices, tuple(x.shape[-2:]))
        first = Pass(run.sampler, run.scheduler, p.steps, conds, p.width, p.height, image_cond=image_cond)
        samples = sample_pass(p, ctx, run, first, x, sigmas.to(ctx.devices.device), rng,
                              brownian_sigmas=sigmas, txt2img_steps=p.steps)
        if self.hires is None or ctx.state.interrupted:
            return samples
        ctx.state.next_job()
        return self._hires_pass(samples, None, multiplier * p.steps)

    def _hires_pass(self, samples: Tensor | None, first_images: list[Image.Image] | None,
                    firstpass_steps: int) -> Tensor:
        """A1111's sample_hr_pass, from first-pass latents or from given first-pass images."""
        p, ctx, hr = self.p, self.ctx, self.hires
        assert hr is not None
        device = ctx.devices.device
        if p.scripts is not None:
            p.scripts.before_hr(p)
        lo = p.iteration * p.batch_size
        if samples is not None and hr.latent_mode is None:
            # Image upscalers work on pixels: decode with the model that made the latents.
            first_images = [tensor_to_image(im) for im in decode_latents(self.run.model, samples, ctx.devices)]
        run = self.run
        if hr.checkpoint is not None:
            run = load_run(ctx, self.run.opts, hr.checkpoint, hr.sampler, hr.scheduler, seamless=bool(p.tiling))
        self.decode_run = run
        image_cond = None
        if hr.latent_mode is not None:
            mode, antialias = hr.latent_mode
            if samples is None:
                assert first_images is not None
                samples = encode_images(run.model, _to_tensor(first_images, device) * 2 - 1, ctx.devices)
            samples = torch.nn.functional.interpolate(samples, size=(hr.height // 8, hr.width // 8), mode=mode,
                                                      antialias=antialias)
            if run.model.is_inpaint:
                grey = torch.zeros(samples.shape[0], 3, hr.height, hr.width, device=device)
                image_cond = inpaint_conditioning(run.model, grey, None, ctx.devices, tuple(samples.shape[-2:]))
        else:
            assert first_images is not None
            name = hr.upscaler
            assert name is not None
            resized = [masking.resize_image(0, first, hr.width, hr.height,
                                            upscale=lambda im, w, h: upscale_image(ctx, run, im, w, h, name))
                       for first in first_images]
            pixels = _to_tensor(resized, device)
            samples = encode_images(run.model, pixels * 2 - 1, ctx.devices)
            if run.model.is_inpaint:
                image_cond = inpaint_conditioning(run.model, pixels * 2 - 1, None, ctx.devices, tuple(samples.shape[-2:]))
        # Centre crop of the latent when both hires sizes were given (cover, then crop).
        h, w = samples.shape[2], samples.shape[3]
        samples = samples[:, :, hr.truncate_y // 2:h - (hr.truncate_y + 1) // 2, hr.truncate_x // 2:w - (hr.truncate_x + 1) // 2]
        if image_cond is not None:
            image_cond = image_cond[:, :, hr.truncate_y // 2:h - (hr.truncate_y + 1) // 2,
                                    hr.truncate_x // 2:w - (hr.truncate_x + 1) // 2]
        if not p.denoising_strength:
            return samples  # denoising 0: A1111's loop runs no step
        # The hires prompt's own networks, on this pass's model, before its conds are encoded (A1111
        # activates hr_extra_network_data here); the first pass's set on the same model changes nothing.
        hr_prompts, hr_tags = parser.parse_extra_networks_for_prompts(hr.prompts[lo:lo + p.batch_size])
        activate_networks(p, ctx, run, hr_tags, hires=True)
        # A fresh draw at the hires size from the same seeds (A1111 makes a new ImageRNG).
        rng = image_rng(p, run, ctx, samples.shape[3] * 8, samples.shape[2] * 8)
        noise = rng.first().to(device)
        multiplier = 2 if hr.sampler.options.second_order else 1
        conds = batch_conds(run, hr_prompts,
                            _strip(hr.negative_prompts[lo:lo + p.batch_size]),
                            steps=firstpass_steps, hires_steps=hr.steps * multiplier)
        plan = samplers.img2img_sigmas(hr.sampler, hr.scheduler, p.steps, float(p.denoising_strength),
                                       DiscreteSchedule(run.model.alphas_cumprod), hires_steps=hr.steps,
                                       is_sdxl=run.model.is_sdxl, opts=run.opts)
        x = samplers.img2img_start_latent(plan, samples, noise)
        second = Pass(hr.sampler, hr.scheduler, hr.steps, conds, hr.width, hr.height, image_cond=image_cond)
        return sample_pass(p, ctx, run, second, x, plan.sigmas.to(device), rng, brownian_sigmas=plan.full,
                           txt2img_steps=None)


def target_resolution(p: StableDiffusionProcessingTxt2Img) -> tuple[int, int, int, int]:
    """(width, height, truncate_x, truncate_y) of the hires pass; writes Hires upscale/resize.

    Both hr_resize_x and hr_resize_y set: scale to cover the target keeping the aspect,
    then crop the latent centre by truncate_* latent pixels (A1111's calculate_target_resolution).
    """
    extra = p.extra_generation_params
    if p.hr_resize_x == 0 and p.hr_resize_y == 0:
        extra["Hires upscale"] = p.hr_scale
        return int(p.width * p.hr_scale), int(p.height * p.hr_scale), 0, 0
    extra["Hires resize"] = f"{p.hr_resize_x}x{p.hr_resize_y}"
    if p.hr_resize_y == 0:
        return p.hr_resize_x, p.hr_resize_x * p.height // p.width, 0, 0
    if p.hr_resize_x == 0:
        return p.hr_resize_y * p.width // p.height, p.hr_resize_y, 0, 0
    if p.width / p.height < p.hr_resize_x / p.hr_resize_y:
        w, h = p.hr_resize_x, p.hr_resize_x * p.height // p.width
    else:
        w, h = p.hr_resize_y * p.width // p.height, p.hr_resize_y
    return w, h, (w - p.hr_resize_x) // 8, (h - p.hr_resize_y) // 8


def _to_tensor(images: list[Image.Image], device: torch.device) -> Tensor:
    """PIL images -> [B, 3, H, W] float in [0, 1]."""
    arrays = [np.moveaxis(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0, 2, 0) for im in images]
    return torch.from_numpy(np.stack(arrays)).to(device)


def _hr_prompts(hr_prompt: str, prompts: list[str]) -> list[str]:
    return [hr_prompt or prompt for prompt in prompts]


def _strip(prompts: list[str]) -> list[str]:
    return [parser.parse_extra_networks(text)[0] for text in prompts]
