"""process_images: A1111's order of work for every request (a1111.md 4.2).

1. validate, 2. per-request options, 3. resolve model/sampler, 4. prompts and seeds,
5. mode init (hires plan, or img2img images and masks), then per batch: extra
networks, conditioning, sampling, VAE decode, per-image postprocess, infotext, save;
finally the grid and the Processed result.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image

from backend.errors import Interrupted, InvalidRequest
from backend.postprocess import images as image_io
from backend.networks import TAG_NAMES as NETWORK_TAGS
from backend.processing.core import (
    ProcessingContext,
    ScriptHooks,
    activate_networks,
    create_infotext,
    decode_latents,
    make_grid,
    outdir,
    resolve_run,
    restore_faces,
    setup_prompts_and_seeds,
    tensor_to_image,
    write_text,
)
from backend.processing.img2img import Img2ImgMode
from backend.processing.objects import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
)
from backend.processing.txt2img import Txt2ImgMode
from backend.prompts import parser

log = logging.getLogger(__name__)


def process_images(p: StableDiffusionProcessing, ctx: ProcessingContext) -> Processed:
    """Generate what `p` asks for."""
    # 1. Check inputs before any work.
    p.validate()
    p.context = ctx
    if p.scripts is not None:
        p.scripts.before_process(p)
    # 2. Per-request settings: overrides seen only by this request.
    opts = ctx.options.with_overrides(p.override_settings)
    try:
        return _process(p, ctx, opts)
    finally:
        if not p.override_settings_restore_afterwards and p.override_settings:
            for key, value in p.override_settings.items():
                ctx.options.set(key, value)
            ctx.options.save()


def _process(p: StableDiffusionProcessing, ctx: ProcessingContext, opts: Mapping[str, Any]) -> Processed:
    # 3-4. Model, sampler, prompts, seeds.
    run = resolve_run(p, ctx, opts)
    setup_prompts_and_seeds(p, opts, ctx.styles)
    # 5. Mode init.
    mode: Txt2ImgMode | Img2ImgMode
    if isinstance(p, StableDiffusionProcessingImg2Img):
        mode = Img2ImgMode(p, ctx, run)
    elif isinstance(p, StableDiffusionProcessingTxt2Img):
        mode = Txt2ImgMode(p, ctx, run)
    else:
        raise InvalidRequest("p", "use StableDiffusionProcessingTxt2Img or StableDiffusionProcessingImg2Img")
    mode.init()
    scripts: ScriptHooks | None = p.scripts
    if scripts is not None:
        scripts.process(p)

    state = ctx.state
    state.begin(mode.kind, p.n_iter * mode.jobs_per_batch)
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

        if scripts is not None:
            scripts.before_process_batch(p, n)
        # Extra-network tags are stripped from what CLIP sees; the first prompt decides
        # which networks are active (A1111). The networks layer comes with LoRA support.
        stripped, p.extra_network_data = parser.parse_extra_networks_for_prompts(p.prompts)
        neg_stripped = [parser.parse_extra_networks(t)[0] for t in p.negative_prompts]
        for name in p.extra_network_data:
            if name not in NETWORK_TAGS:
                log.warning("extra network %r is not available; ignored", name)
        activate_networks(p, ctx, run)
        if scripts is not None:
            scripts.after_extra_networks_activate(p, n)
            scripts.process_batch(p, n)

        if n == 0 and ctx.write_params_txt:
            write_text(ctx.data_dir / "params.txt",
                       create_infotext(p, run, p.all_prompts, p.all_seeds, p.all_subseeds, resolved_scheduler=False))

        try:
            latents = mode.sample(stripped, neg_stripped)
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

        decoded = decode_latents(mode.decode_run.model, latents, ctx.devices)
        batch_images = [tensor_to_image(decoded[i]) for i in range(decoded.shape[0])]
        if scripts is not None:
            scripts.postprocess_batch(p, decoded, n)
            batch_images = scripts.postprocess_batch_list(p, batch_images, n)

        for i, image in enumerate(batch_images):
            p.batch_index = i
            if p.restore_faces:
                image = restore_faces(ctx, run, image)
            if scripts is not None:
                image = scripts.postprocess_image(p, image)
            if isinstance(mode, Img2ImgMode):
                image = mode.postprocess_image(i, image)
            text = create_infotext(p, run, p.all_prompts, p.all_seeds, p.all_subseeds, n, i)
            if run.opts["samples_save"] and not p.do_not_save_samples:
                path, _ = image_io.save_image(
                    image, outdir(p, ctx, run.opts, grid=False), "", seed=p.seeds[i], prompt=p.prompts[i],
                    extension=run.opts["samples_format"], info=text, p=p, opts=run.opts, callbacks=ctx.callbacks)
                saved.append(path)
            if run.opts["enable_pnginfo"]:
                image.info["parameters"] = text
            output_images.append(image)
            infotexts.append(text)
        state.next_job()
        if interrupted:
            break

    index_of_first_image = make_grid(p, ctx, run, output_images, infotexts, saved) if output_images else 0
    processed = Processed(
        images=output_images, infotexts=infotexts, p=p,
        seed=p.all_seeds[0], subseed=p.all_subseeds[0], all_seeds=p.all_seeds, all_subseeds=p.all_subseeds,
        all_prompts=p.all_prompts, all_negative_prompts=p.all_negative_prompts,
        index_of_first_image=index_of_first_image, saved_paths=saved, interrupted=interrupted,
        comments="\n".join(str(c) for c in p.comments.values()),
        face_restoration_model=run.opts["face_restoration_model"] if p.restore_faces else None,
    )
    processed.info = infotexts[0] if infotexts else ""
    if scripts is not None:
        scripts.postprocess(p, processed)
    return processed
