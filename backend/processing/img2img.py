"""img2img and inpainting: prepare init images and masks once, then sample each batch.

A1111's StableDiffusionProcessingImg2Img.init / sample and the overlay step of
process_images (a1111.md 4.4, 4.7).
"""
from __future__ import annotations

from collections.abc import Callable
import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from backend.postprocess import masking
from backend.processing.core import (
    Pass,
    ProcessingContext,
    Run,
    batch_conds,
    encode_images,
    image_rng,
    inpaint_conditioning,
    sample_pass,
    upscale_image,
)
from backend.processing.objects import StableDiffusionProcessingImg2Img
from backend.sampling import registry as samplers
from backend.sampling.schedules import DiscreteSchedule


@dataclass
class Prepared:
    """Everything init computes once for all batches."""

    init_latent: Tensor
    image_cond: Tensor | None
    mask: Tensor | None = None  # 1 = keep the init latent
    nmask: Tensor | None = None  # 1 = regenerate
    overlay_images: list[Image.Image] = field(default_factory=list)
    paste_to: tuple[int, int, int, int] | None = None
    color_corrections: list = field(default_factory=list)


class Img2ImgMode:
    """The img2img recipe for process_images."""

    kind = "img2img"
    jobs_per_batch = 1

    def __init__(self, p: StableDiffusionProcessingImg2Img, ctx: ProcessingContext, run: Run) -> None:
        self.p, self.ctx, self.run = p, ctx, run
        self.prepared: Prepared | None = None
        self.decode_run = run

    def init(self) -> None:
        """Resize init images, build the masks, encode the init latent (A1111's img2img init)."""
        p, run, ctx = self.p, self.run, self.ctx
        opts, extra, device = run.opts, p.extra_generation_params, ctx.devices.device
        extra["Denoising strength"] = p.denoising_strength
        prepared_mask = None
        image_mask = None
        if p.mask is not None:
            prepared_mask = masking.prepare_mask(
                p.mask, width=p.width, height=p.height, resize_mode=p.resize_mode, mask_blur_x=p.mask_blur_x,
                mask_blur_y=p.mask_blur_y, mask_round=p.mask_round,
                inpainting_mask_invert=bool(p.inpainting_mask_invert), inpaint_full_res=p.inpaint_full_res,
                inpaint_full_res_padding=p.inpaint_full_res_padding)
            image_mask = prepared_mask.image_mask
            if p.inpainting_mask_invert:
                extra["Mask mode"] = "Inpaint not masked"
            if (p.mask_blur_x > 0 or p.mask_blur_y > 0) and p.mask_blur_x == p.mask_blur_y:
                extra["Mask blur"] = p.mask_blur_x  # A1111 writes it only when both directions agree
            if prepared_mask.paste_to is not None:
                extra["Inpaint area"] = "Only masked"
                extra["Masked area padding"] = p.inpaint_full_res_padding
            if prepared_mask.only_masked_fallback:
                p.comments["blank mask"] = ('Unable to perform "Inpaint Only mask" because mask is blank, '
                                            'switch to img2img mode.')
        latent_mask = p.latent_mask if p.latent_mask is not None else image_mask

        overlays: list[Image.Image] = []
        corrections: list = []
        arrays = []
        for img in p.init_images:
            image = _flatten(img)
            if prepared_mask is not None and image_mask is not None:
                ready = masking.prepare_init_image(
                    image, prepared_mask, width=p.width, height=p.height, resize_mode=p.resize_mode,
                    inpainting_fill=p.inpainting_fill, latent_mask=latent_mask, upscale=self._upscale_fn())
                # A1111 keeps the overlay mask resized to this image for the next ones.
                prepared_mask = dataclasses.replace(prepared_mask, mask_for_overlay=ready.mask_for_overlay)
                image = ready.image
                if ready.overlay is not None:
                    overlays.append(ready.overlay)
                if p.inpainting_fill == 0:
                    extra["Masked content"] = "fill"
            elif p.resize_mode != 3:
                image = masking.resize_image(p.resize_mode, image, p.width, p.height, upscale=self._upscale_fn())
            if opts["img2img_color_correction"]:
                corrections.append(masking.color_correction_target(image))
            arrays.append(np.moveaxis(np.asarray(image, dtype=np.float32) / 255.0, 2, 0))

        if len(arrays) == 1:
            batch = np.repeat(arrays[0][None], p.batch_size, axis=0)
            overlays, corrections = overlays * p.batch_size, corrections * p.batch_size
        else:
            p.batch_size = len(arrays)  # N <= batch_size images: one each (validated earlier)
            batch = np.stack(arrays)
        pixels = torch.from_numpy(batch).to(device)
        init_latent = encode_images(run.model, pixels * 2 - 1, ctx.devices)
        if p.resize_mode == 3:
            # "Just resize (latent upscale)": encode at the original size, interpolate the latent.
            init_latent = torch.nn.functional.interpolate(init_latent, size=(p.height // 8, p.width // 8), mode="bilinear")

        paste_to = None if prepared_mask is None else prepared_mask.paste_to
        prepared = Prepared(init_latent, None, overlay_images=overlays, paste_to=paste_to, color_corrections=corrections)
        if image_mask is not None:
            latmask = masking.mask_for_latent(latent_mask, init_latent.shape[3], init_latent.shape[2], round=p.mask_round)
            latmask_t = torch.from_numpy(np.tile(latmask[None], (init_latent.shape[1], 1, 1))).to(device)
            prepared.mask, prepared.nmask = 1.0 - latmask_t, latmask_t
            if p.inpainting_fill == 2:
                noise = image_rng(p, run, ctx, init_latent.shape[3] * 8, init_latent.shape[2] * 8,
                                  seeds=p.all_seeds[:init_latent.shape[0]]).first().to(device)
                prepared.init_latent = init_latent * prepared.mask + noise * prepared.nmask
                extra["Masked content"] = "latent noise"
            elif p.inpainting_fill == 3:
                prepared.init_latent = init_latent * prepared.mask
                extra["Masked content"] = "latent nothing"
        if run.model.is_inpaint:
            cond_mask = None
            if image_mask is not None:
                m = torch.from_numpy(np.asarray(image_mask.convert("L"), dtype=np.float32) / 255.0)
                cond_mask = (torch.round(m) if p.mask_round else m)[None, None].expand(pixels.shape[0], -1, -1, -1)
            weight = float(opts["inpainting_mask_weight"])
            prepared.image_cond = inpaint_conditioning(run.model, pixels * 2 - 1, cond_mask, ctx.devices,
                                                       tuple(init_latent.shape[-2:]), weight)
        self.prepared = prepared

    def sample(self, prompts: list[str], negative_prompts: list[str]) -> Tensor:
        p, run, ctx, prep = self.p, self.run, self.ctx, self.prepared
        assert prep is not None
        device = ctx.devices.device
        multiplier = 2 if run.sampler.options.second_order else 1
        conds = batch_conds(run, prompts, negative_prompts, steps=p.steps * multiplier)
        rng = image_rng(p, run, ctx, prep.init_latent.shape[3] * 8, prep.init_latent.shape[2] * 8)
        noise = rng.first().to(device)
        multiplier_noise = p.initial_noise_multiplier
        if multiplier_noise is None:
            multiplier_noise = float(run.opts["initial_noise_multiplier"])
        if multiplier_noise != 1.0:
            p.extra_generation_params["Noise multiplier"] = multiplier_noise
            noise = noise * multiplier_noise
        init_latent = prep.init_latent[:noise.shape[0]]
        if p.denoising_strength == 0:
            return init_latent
        plan = samplers.img2img_sigmas(run.sampler, run.scheduler, p.steps, float(p.denoising_strength),
                                       DiscreteSchedule(run.model.alphas_cumprod),
                                       fix_steps=bool(run.opts["img2img_fix_steps"]), is_sdxl=run.model.is_sdxl,
                                       opts=run.opts)
        x = samplers.img2img_start_latent(plan, init_latent, noise)
        # The pass runs t_enc + 1 steps: what callbacks see as total_sampling_steps (A1111).
        ps = Pass(run.sampler, run.scheduler, plan.t_enc + 1, conds, p.width, p.height,
                  image_cond=None if prep.image_cond is None else prep.image_cond[:noise.shape[0]],
                  init_latent=init_latent if prep.mask is not None else None, mask=prep.mask, nmask=prep.nmask)
        samples = sample_pass(p, ctx, run, ps, x, plan.sigmas.to(device), rng, brownian_sigmas=plan.full,
                              txt2img_steps=None)
        if prep.mask is not None:
            samples = samples * prep.nmask + init_latent * prep.mask
        return samples

    def postprocess_image(self, index: int, image: Image.Image) -> Image.Image:
        """Colour correction, then paste back / composite the untouched pixels (A1111's apply_overlay)."""
        prep = self.prepared
        assert prep is not None
        if index < len(prep.color_corrections):
            image = masking.apply_color_correction(prep.color_corrections[index], image)
        overlay = prep.overlay_images[index] if index < len(prep.overlay_images) else None
        if overlay is None:
            return image
        return masking.apply_overlay(image, prep.paste_to, overlay)

    def _upscale_fn(self) -> Callable[[Image.Image, int, int], Image.Image] | None:
        """opts.upscaler_for_img2img when set, else None (Lanczos), as A1111."""
        name = self.run.opts.get("upscaler_for_img2img")
        if not name or name == "None":
            return None
        ctx, run = self.ctx, self.run
        return lambda im, w, h: upscale_image(ctx, run, im, w, h, name)


def _flatten(img: Image.Image) -> Image.Image:
    """RGBA init images are flattened on a white background, as A1111 (img2img_background_color)."""
    if img.mode == "RGBA":
        background = Image.new("RGBA", img.size, "#ffffff")
        return Image.alpha_composite(background, img).convert("RGB")
    return img.convert("RGB")
