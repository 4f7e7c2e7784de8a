"""The Gradio UI, mounted on the FastAPI app that webui.py builds (which also serves the API with --api).

Layout and event wiring only: every generation goes through AppContext.generate.
This is the minimal txt2img page of the foundation; the full UI is its own issue.
"""
from __future__ import annotations

from typing import Any

import gradio as gr
from fastapi import FastAPI

from backend.context import AppContext
from backend.errors import WebUIError
from backend.processing import StableDiffusionProcessingTxt2Img
from backend.sampling.registry import SAMPLERS, SCHEDULERS


def mount_ui(app: FastAPI, ctx: AppContext) -> FastAPI:
    """Mount the Gradio UI at the root of `app` (the app that serves the API with --api).

    Mount it last: the UI takes every path that no route added before it matches.
    """
    blocks = build_txt2img_ui(ctx)
    auth = _gradio_auth(ctx)
    return gr.mount_gradio_app(app, blocks, path="", auth=auth)


def _gradio_auth(ctx: AppContext) -> list[tuple[str, str]] | None:
    entries: list[str] = []
    if ctx.settings.gradio_auth:
        entries += ctx.settings.gradio_auth.split(",")
    if ctx.settings.gradio_auth_path:
        with open(ctx.settings.gradio_auth_path, encoding="utf8") as f:
            for line in f:
                entries += [x for x in line.strip().split(",") if x]
    pairs = [tuple(e.split(":", 1)) for e in entries if ":" in e]
    return pairs or None  # type: ignore[return-value]


def build_txt2img_ui(ctx: AppContext) -> gr.Blocks:
    with gr.Blocks(title="Stable Diffusion") as blocks:
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
                negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
        with gr.Row():
            with gr.Column():
                sampler = gr.Dropdown([s.name for s in SAMPLERS], value=SAMPLERS[0].name, label="Sampling method",
                                      elem_id="txt2img_sampling")
                scheduler = gr.Dropdown([s.label for s in SCHEDULERS], value=SCHEDULERS[0].label, label="Schedule type",
                                        elem_id="txt2img_scheduler")
                steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id="txt2img_steps")
                width = gr.Slider(64, 2048, value=512, step=8, label="Width", elem_id="txt2img_width")
                height = gr.Slider(64, 2048, value=512, step=8, label="Height", elem_id="txt2img_height")
                batch_count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                batch_size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
                cfg = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                seed = gr.Number(value=-1, label="Seed", precision=0, elem_id="txt2img_seed")
            with gr.Column():
                gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=4)
                info = gr.Textbox(label="Generation info", lines=4, interactive=False, elem_id="txt2img_info")

        def run(*values: Any) -> tuple[list, str]:
            p_, n_, sampler_, scheduler_, steps_, w_, h_, count_, size_, cfg_, seed_ = values
            p = StableDiffusionProcessingTxt2Img(
                prompt=p_, negative_prompt=n_, sampler_name=sampler_, scheduler=scheduler_, steps=int(steps_),
                width=int(w_), height=int(h_), n_iter=int(count_), batch_size=int(size_), cfg_scale=float(cfg_),
                seed=int(seed_))
            try:
                processed = ctx.generate(p)
            except WebUIError as e:
                raise gr.Error(str(e)) from e
            return processed.images, processed.infotexts[processed.index_of_first_image] if processed.infotexts else ""

        generate.click(run, inputs=[prompt, negative, sampler, scheduler, steps, width, height, batch_count,
                                    batch_size, cfg, seed], outputs=[gallery, info])
    return blocks
