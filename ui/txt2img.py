"""The txt2img tab: prompts, Generation panel with Hires. fix, results with live progress."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from backend.context import AppContext
from backend.postprocess.upscalers import LATENT_UPSCALE_MODES
from backend.processing import StableDiffusionProcessingTxt2Img
from backend.sampling.registry import SAMPLERS, SCHEDULERS
from ui import common, extra_networks, paste, scripts
from ui.generation import GenerationTab, run_generation

USE_SAME_CHECKPOINT = "Use same checkpoint"
USE_SAME_SAMPLER = "Use same sampler"
USE_SAME_SCHEDULER = "Use same scheduler"


@dataclass
class HiresControls:
    """A1111's Hires. fix accordion."""

    enable: gr.Checkbox
    upscaler: gr.Dropdown
    steps: gr.Slider
    denoising_strength: gr.Slider
    scale: gr.Slider
    resize_x: gr.Slider
    resize_y: gr.Slider
    checkpoint: gr.Dropdown
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    prompt: gr.Textbox
    negative_prompt: gr.Textbox


def _build_hires(ctx: AppContext) -> HiresControls:
    upscalers = [m.name for m in LATENT_UPSCALE_MODES] + common.upscaler_names(ctx)
    with gr.Accordion("Hires. fix", open=False, elem_id="txt2img_hr"):
        enable = gr.Checkbox(label="Enable hires. fix", value=False, elem_id="txt2img_enable_hr")
        with gr.Row():
            upscaler = gr.Dropdown(upscalers, value=LATENT_UPSCALE_MODES[0].name, label="Upscaler",
                                   elem_id="txt2img_hr_upscaler")
            steps = gr.Slider(0, 150, value=0, step=1, label="Hires steps", elem_id="txt2img_hires_steps")
            denoising = gr.Slider(0, 1, value=0.7, step=0.01, label="Denoising strength",
                                  elem_id="txt2img_denoising_strength")
        with gr.Row():
            scale = gr.Slider(1, 4, value=2.0, step=0.05, label="Upscale by", elem_id="txt2img_hr_scale")
            resize_x = gr.Slider(0, 2048, value=0, step=8, label="Resize width to", elem_id="txt2img_hr_resize_x")
            resize_y = gr.Slider(0, 2048, value=0, step=8, label="Resize height to", elem_id="txt2img_hr_resize_y")
        with gr.Row():
            checkpoint = gr.Dropdown([USE_SAME_CHECKPOINT, *ctx.registry.titles()], value=USE_SAME_CHECKPOINT,
                                     label="Hires checkpoint", elem_id="txt2img_hr_checkpoint")
            sampler = gr.Dropdown([USE_SAME_SAMPLER, *(s.name for s in SAMPLERS)], value=USE_SAME_SAMPLER,
                                  label="Hires sampling method", elem_id="txt2img_hr_sampler")
            scheduler = gr.Dropdown([USE_SAME_SCHEDULER, *(s.label for s in SCHEDULERS)], value=USE_SAME_SCHEDULER,
                                    label="Hires schedule type", elem_id="txt2img_hr_scheduler")
        with gr.Row():
            prompt = gr.Textbox(label="Hires prompt", lines=2, placeholder="Leave empty to use the same prompt",
                                elem_id="txt2img_hr_prompt")
            negative = gr.Textbox(label="Hires negative prompt", lines=2,
                                  placeholder="Leave empty to use the same negative prompt",
                                  elem_id="txt2img_hr_neg_prompt")
    return HiresControls(enable, upscaler, steps, denoising, scale, resize_x, resize_y, checkpoint, sampler,
                         scheduler, prompt, negative)


@dataclass
class Txt2ImgTab(GenerationTab):
    hires: HiresControls | None = None

    def hires_fields(self) -> list[paste.PasteField]:
        h = self.hires
        assert h is not None
        return [
            paste.PasteField(h.enable, paste.hires_enabled),
            paste.PasteField(h.upscaler, "Hires upscaler"),
            paste.PasteField(h.steps, "Hires steps"),
            paste.PasteField(h.denoising_strength, "Denoising strength"),
            paste.PasteField(h.scale, "Hires upscale"),
            paste.PasteField(h.resize_x, "Hires resize-1"),
            paste.PasteField(h.resize_y, "Hires resize-2"),
            paste.PasteField(h.checkpoint, "Hires checkpoint"),
            paste.PasteField(h.sampler, "Hires sampler"),
            paste.PasteField(h.scheduler, "Hires schedule type"),
            paste.PasteField(h.prompt, "Hires prompt"),
            paste.PasteField(h.negative_prompt, "Hires negative prompt"),
        ]


def build(ctx: AppContext, counter: common.TokenCounter) -> Txt2ImgTab:
    """The tab's layout; call inside gr.Tab("txt2img")."""
    toprow = common.build_toprow("txt2img", ctx)
    with gr.Row(equal_height=False, elem_classes="main-row"):
        with gr.Column(scale=1, min_width=400, elem_id="txt2img_settings", elem_classes="settings-column"):
            with gr.Tabs(elem_id="txt2img_extra_tabs"):
                with gr.Tab("Generation", elem_id="txt2img_generation_tab"):
                    sampler = common.build_sampler_controls("txt2img")
                    hires = _build_hires(ctx)
                    size = common.build_size_controls("txt2img", ctx.native_size(ctx.startup_checkpoint()))
                    batch = common.build_batch_controls("txt2img")
                    cfg = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale", elem_id="txt2img_cfg_scale")
                    seed = common.build_seed_controls("txt2img")
                    override_settings = common.build_override_settings("txt2img")
                    script = scripts.build(ctx.scripts.txt2img)
                with gr.Tab("Lora", elem_id="txt2img_lora_tab"):
                    lora = extra_networks.build(ctx, "txt2img")
        with gr.Column(scale=1, min_width=400):
            results = common.build_results("txt2img", upscale=True)
    tab = Txt2ImgTab("txt2img", toprow, sampler, size, batch, cfg, seed, script, results, hires=hires,
                     override_settings=override_settings)
    tab.extra_paste_fields = tab.hires_fields()
    common.wire_toprow(ctx, toprow, counter, sampler.steps)
    common.wire_results(ctx, results)
    extra_networks.wire(ctx, lora, results)
    common.wire_reuse_seed(seed, results)
    _wire_generate(ctx, tab)
    return tab


def _processing(tab: Txt2ImgTab, data: dict) -> StableDiffusionProcessingTxt2Img:
    h = tab.hires
    assert h is not None
    p = StableDiffusionProcessingTxt2Img(
        **tab.common_fields(data),
        enable_hr=bool(data[h.enable]),
        hr_upscaler=data[h.upscaler],
        hr_second_pass_steps=int(data[h.steps]),
        denoising_strength=float(data[h.denoising_strength]),
        hr_scale=float(data[h.scale]),
        hr_resize_x=int(data[h.resize_x]),
        hr_resize_y=int(data[h.resize_y]),
        hr_checkpoint_name=data[h.checkpoint],
        hr_sampler_name=data[h.sampler],
        hr_scheduler=data[h.scheduler],
        hr_prompt=data[h.prompt] or "",
        hr_negative_prompt=data[h.negative_prompt] or "",
    )
    tab.script.bind(p, data)
    return p


def _wire_generate(ctx: AppContext, tab: Txt2ImgTab) -> None:
    h = tab.hires
    assert h is not None
    inputs = {*tab.common_inputs(), h.enable, h.upscaler, h.steps, h.denoising_strength, h.scale, h.resize_x,
              h.resize_y, h.checkpoint, h.sampler, h.scheduler, h.prompt, h.negative_prompt}

    def generate(data: dict) -> Iterator[dict[Any, Any]]:
        with common.shown_as_gr_error():
            p = _processing(tab, data)
        yield from run_generation(ctx, tab, p)

    tab.wire_generate(generate, inputs)

    r = tab.results

    def upscale(data: dict) -> Iterator[dict[Any, Any]]:
        """A1111's Upscale: only the hires pass, on the picture shown, with that picture's seeds."""
        index, info = data[r.selected], data[r.generation_info]
        image = common.gallery_image(data[r.gallery], index)
        if image is None:
            raise gr.Error("Nothing to upscale: generate an image first")
        with common.shown_as_gr_error():
            p = _processing(tab, data)
            p.enable_hr, p.firstpass_image, p.batch_size, p.n_iter = True, image.convert("RGB"), 1, 1
            p.seed = common.reuse_seed(info, index, subseed=False) if info else p.seed
            p.subseed = common.reuse_seed(info, index, subseed=True) if info else p.subseed
        yield from run_generation(ctx, tab, p)

    assert r.upscale is not None
    tab.wire_generate(upscale, {*inputs, r.gallery, r.selected, r.generation_info}, button=r.upscale)
