"""The img2img tab: img2img, Sketch (draw on the image), Inpaint (draw the mask), Inpaint upload (image + mask)
and Batch (a folder on the server) sub-tabs."""
from __future__ import annotations

import html
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image, ImageChops

from backend.context import AppContext
from backend.errors import InvalidRequest
from backend.jobs.progress import JobState
from backend.processing import Processed, StableDiffusionProcessingImg2Img
from backend.processing.batch import process_img2img_folder, scaled_size
from backend.processing.objects import INPAINTING_FILL, RESIZE_MODES
from ui import common, extra_networks, paste, scripts
from ui.generation import GenerationTab, follow_job, run_generation

MODES = ("img2img", "sketch", "inpaint", "inpaint_upload", "batch")
# Sub-tabs without a mask: the inpaint controls hide there.
UNMASKED_MODES = ("img2img", "sketch")
# The Sketch brush: A1111's default colour (white) first, then a small palette; any colour can be picked.
SKETCH_COLORS = ["#ffffff", "#000000", "#e03131", "#f08c00", "#ffd43b", "#2f9e44", "#1971c2", "#9c36b5"]
MASK_MODES = ("Inpaint masked", "Inpaint not masked")
INPAINT_AREAS = ("Whole picture", "Only masked")
SCALE_TABS = ("to", "by")


@dataclass
class Img2ImgInputs:
    """The sub-tabs' inputs and which sub-tab is showing."""

    tabs: gr.Tabs
    mode: gr.State
    image: gr.Image
    sketch: gr.ImageEditor
    inpaint_editor: gr.ImageEditor
    inpaint_image: gr.Image
    inpaint_mask: gr.Image
    batch_input_dir: gr.Textbox
    batch_output_dir: gr.Textbox
    batch_mask_dir: gr.Textbox
    sub_tabs: tuple[gr.Tab, ...]


@dataclass
class InpaintControls:
    group: gr.Group
    mask_blur: gr.Slider
    mask_mode: gr.Radio
    inpainting_fill: gr.Radio
    inpaint_area: gr.Radio
    padding: gr.Slider


@dataclass
class Img2ImgTab(GenerationTab):
    inputs: Img2ImgInputs | None = None
    inpaint: InpaintControls | None = None
    resize_mode: gr.Radio | None = None
    scale_tab: gr.State | None = None
    scale_by: gr.Slider | None = None
    denoising_strength: gr.Slider | None = None


def _build_inputs() -> Img2ImgInputs:
    mode = gr.State(MODES[0])
    with gr.Tabs(elem_id="mode_img2img") as tabs:
        with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t_img:
            image = gr.Image(label="Image for img2img", type="pil", image_mode="RGBA", format="png",
                             sources=["upload", "clipboard"], elem_id="img2img_image", height=420)
        with gr.Tab("Sketch", id="sketch", elem_id="img2img_img2img_sketch_tab") as t_sketch:
            # What is drawn becomes part of the init image (A1111's Sketch).
            sketch = gr.ImageEditor(label="Image for img2img", type="pil", image_mode="RGBA", format="png",
                                    sources=["upload", "clipboard"], elem_id="img2img_sketch", height=420,
                                    brush=gr.Brush(colors=SKETCH_COLORS, default_color=SKETCH_COLORS[0],
                                                   color_mode="defaults"),
                                    transforms=(), layers=False)
        with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t_inpaint:
            inpaint_editor = gr.ImageEditor(label="Image for inpainting with mask", type="pil", image_mode="RGBA",
                                            format="png", sources=["upload", "clipboard"], elem_id="img2maskimg",
                                            height=420, brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                            transforms=(), layers=False)
        with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t_upload:
            with gr.Row():
                inpaint_image = gr.Image(label="Image", type="pil", image_mode="RGBA", format="png",
                                         sources=["upload", "clipboard"], elem_id="img_inpaint_base", height=320)
                inpaint_mask = gr.Image(label="Mask (white: inpaint)", type="pil", image_mode="RGBA", format="png",
                                        sources=["upload", "clipboard"], elem_id="img_inpaint_mask", height=320)
        with gr.Tab("Batch", id="batch", elem_id="img2img_batch_tab") as t_batch:
            gr.Markdown("Process every image of a folder on the server (sub-folders included), all with the same "
                        "seed. Leave the output directory empty to save to the usual img2img output folder. With an "
                        "inpaint mask directory, each image is inpainted with the mask of the same name (or with "
                        "the only mask there).", elem_classes="hint")
            input_dir = gr.Textbox(label="Input directory", elem_id="img2img_batch_input_dir")
            output_dir = gr.Textbox(label="Output directory", elem_id="img2img_batch_output_dir")
            mask_dir = gr.Textbox(label="Inpaint batch mask directory (optional)",
                                  elem_id="img2img_batch_inpaint_mask_dir")
    return Img2ImgInputs(tabs, mode, image, sketch, inpaint_editor, inpaint_image, inpaint_mask, input_dir,
                         output_dir, mask_dir, (t_img, t_sketch, t_inpaint, t_upload, t_batch))


def _build_inpaint_controls() -> InpaintControls:
    with gr.Group(visible=False, elem_id="img2img_inpaint_controls") as group:
        with gr.Row():
            blur = gr.Slider(0, 64, value=4, step=1, label="Mask blur", elem_id="img2img_mask_blur")
            mask_mode = gr.Radio(list(MASK_MODES), value=MASK_MODES[0], label="Mask mode", elem_id="img2img_mask_mode")
        with gr.Row():
            fill = gr.Radio(list(INPAINTING_FILL), value="original", label="Masked content",
                            elem_id="img2img_inpainting_fill")
        with gr.Row():
            area = gr.Radio(list(INPAINT_AREAS), value=INPAINT_AREAS[0], label="Inpaint area",
                            elem_id="img2img_inpaint_full_res")
            padding = gr.Slider(0, 256, value=32, step=4, label="Only masked padding, pixels",
                                elem_id="img2img_inpaint_full_res_padding")
    return InpaintControls(group, blur, mask_mode, fill, area, padding)


def build(ctx: AppContext, counter: common.TokenCounter) -> Img2ImgTab:
    """The tab's layout; call inside gr.Tab("img2img")."""
    toprow = common.build_toprow("img2img", ctx)
    with gr.Row(equal_height=False, elem_classes="main-row"):
        with gr.Column(scale=1, min_width=400, elem_id="img2img_settings", elem_classes="settings-column"):
            inputs = _build_inputs()
            with gr.Tabs(elem_id="img2img_extra_tabs"):
                with gr.Tab("Generation", elem_id="img2img_generation_tab"):
                    resize_mode = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode",
                                           elem_id="img2img_resize_mode")
                    inpaint = _build_inpaint_controls()
                    sampler = common.build_sampler_controls("img2img")
                    scale_tab = gr.State(SCALE_TABS[0])
                    with gr.Tabs(elem_id="img2img_tabs_resize"):
                        with gr.Tab("Resize to", elem_id="img2img_tab_resize_to") as t_to:
                            size = common.build_size_controls("img2img", ctx.native_size(ctx.startup_checkpoint()))
                        with gr.Tab("Resize by", elem_id="img2img_tab_resize_by") as t_by:
                            scale_by = gr.Slider(0.05, 4, value=1.0, step=0.05, label="Scale",
                                                 elem_id="img2img_scale")
                    t_to.select(lambda: SCALE_TABS[0], None, scale_tab, show_progress="hidden", queue=False)
                    t_by.select(lambda: SCALE_TABS[1], None, scale_tab, show_progress="hidden", queue=False)
                    batch = common.build_batch_controls("img2img")
                    cfg = gr.Slider(1, 30, value=7.0, step=0.5, label="CFG Scale", elem_id="img2img_cfg_scale")
                    denoising = gr.Slider(0, 1, value=0.75, step=0.01, label="Denoising strength",
                                          elem_id="img2img_denoising_strength")
                    seed = common.build_seed_controls("img2img")
                    override_settings = common.build_override_settings("img2img")
                    script = scripts.build(ctx.scripts.img2img)
                with gr.Tab("Lora", elem_id="img2img_lora_tab"):
                    lora = extra_networks.build(ctx, "img2img")
        with gr.Column(scale=1, min_width=400):
            results = common.build_results("img2img")
    tab = Img2ImgTab("img2img", toprow, sampler, size, batch, cfg, seed, script, results, inputs=inputs,
                     override_settings=override_settings,
                     inpaint=inpaint, resize_mode=resize_mode, scale_tab=scale_tab, scale_by=scale_by,
                     denoising_strength=denoising)
    tab.extra_paste_fields = [
        paste.PasteField(denoising, "Denoising strength"),
        paste.PasteField(inpaint.mask_blur, "Mask blur"),
        paste.PasteField(inpaint.mask_mode, "Mask mode"),
        paste.PasteField(inpaint.inpainting_fill, "Masked content"),
        paste.PasteField(inpaint.inpaint_area, "Inpaint area"),
        paste.PasteField(inpaint.padding, "Masked area padding"),
    ]
    for sub_tab, name in zip(inputs.sub_tabs, MODES):
        sub_tab.select(lambda n=name: select_mode(n), None, [inputs.mode, inpaint.group], show_progress="hidden",
                       queue=False)
    common.wire_toprow(ctx, toprow, counter, sampler.steps)
    common.wire_results(ctx, results)
    extra_networks.wire(ctx, lora, results)
    common.wire_reuse_seed(seed, results)
    _wire_generate(ctx, tab)
    return tab


def select_mode(mode: str) -> tuple[str, Any]:
    """The sub-tab now showing, and whether the inpaint controls show with it."""
    return mode, gr.update(visible=mode not in UNMASKED_MODES)


def sketch_mask(value: dict | None) -> tuple[Image.Image | None, Image.Image | None]:
    """(image, mask) from the Inpaint editor: the mask is white wherever the user painted."""
    if not value or value.get("background") is None:
        return None, None
    background: Image.Image = value["background"]
    mask = Image.new("L", background.size, 0)
    for layer in value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A")
        if alpha.size != background.size:
            alpha = alpha.resize(background.size)
        mask = ImageChops.lighter(mask, alpha)
    return background, mask.point(lambda v: 255 if v > 0 else 0)


def _processing(tab: Img2ImgTab, data: dict, image: Image.Image | None, mask: Image.Image | None
                ) -> StableDiffusionProcessingImg2Img:
    """The request for the sub-tab's image; without an image, the template a batch fills in per image."""
    assert tab.inpaint is not None and tab.resize_mode is not None and tab.scale_tab is not None
    assert tab.scale_by is not None and tab.denoising_strength is not None
    fields = tab.common_fields(data)
    if image is not None and data[tab.scale_tab] == "by":
        fields["width"], fields["height"] = scaled_size(image.width, image.height, float(data[tab.scale_by]))
    i = tab.inpaint
    p = StableDiffusionProcessingImg2Img(
        **fields,
        init_images=[image] if image is not None else [],
        mask=mask,
        resize_mode=RESIZE_MODES.index(data[tab.resize_mode]),
        denoising_strength=float(data[tab.denoising_strength]),
        mask_blur=int(data[i.mask_blur]),
        inpainting_fill=INPAINTING_FILL.index(data[i.inpainting_fill]),
        inpaint_full_res=data[i.inpaint_area] == INPAINT_AREAS[1],
        inpaint_full_res_padding=int(data[i.padding]),
        inpainting_mask_invert=MASK_MODES.index(data[i.mask_mode]),
    )
    tab.script.bind(p, data)
    return p


def _source(tab: Img2ImgTab, data: dict) -> tuple[Image.Image, Image.Image | None]:
    """The init image and mask of the sub-tab showing."""
    inputs = tab.inputs
    assert inputs is not None
    mode = data[inputs.mode]
    if mode == "sketch":
        drawn = data[inputs.sketch]
        image, mask = (drawn or {}).get("composite"), None
    elif mode == "inpaint":
        image, mask = sketch_mask(data[inputs.inpaint_editor])
    elif mode == "inpaint_upload":
        image, mask = data[inputs.inpaint_image], data[inputs.inpaint_mask]
        if image is not None and mask is None:
            raise InvalidRequest("mask", "upload a mask for Inpaint upload (white where to inpaint)")
    else:
        image, mask = data[inputs.image], None
    if image is None:
        raise InvalidRequest("init_images", "upload an image first")
    return image, mask


def _wire_generate(ctx: AppContext, tab: Img2ImgTab) -> None:
    inputs, i = tab.inputs, tab.inpaint
    assert inputs is not None and i is not None
    assert tab.resize_mode is not None and tab.scale_tab is not None
    assert tab.scale_by is not None and tab.denoising_strength is not None
    all_inputs = {*tab.common_inputs(), inputs.mode, inputs.image, inputs.sketch, inputs.inpaint_editor,
                  inputs.inpaint_image,
                  inputs.inpaint_mask, inputs.batch_input_dir, inputs.batch_output_dir, inputs.batch_mask_dir,
                  tab.resize_mode, tab.scale_tab, tab.scale_by, tab.denoising_strength, i.mask_blur, i.mask_mode,
                  i.inpainting_fill, i.inpaint_area, i.padding}

    def generate(data: dict) -> Iterator[dict[Any, Any]]:
        if data[inputs.mode] == "batch":
            yield from _run_batch(ctx, tab, data)
            return
        with common.shown_as_gr_error():
            image, mask = _source(tab, data)
            p = _processing(tab, data, image, mask)
        yield from run_generation(ctx, tab, p)

    tab.wire_generate(generate, all_inputs)


def _run_batch(ctx: AppContext, tab: Img2ImgTab, data: dict) -> Iterator[dict[Any, Any]]:
    """The Batch sub-tab: the backend's folder processing as one job, followed like any generation."""
    inputs = tab.inputs
    assert inputs is not None and tab.scale_tab is not None and tab.scale_by is not None
    with common.shown_as_gr_error():
        p = _processing(tab, data, None, None)
    scale_by = float(data[tab.scale_by]) if data[tab.scale_tab] == "by" else None
    at: dict[str, str] = {}

    def on_image(number: int, total: int, path: Path) -> None:
        at["note"] = f"<div class='batch-count'>Image {number} of {total}: {html.escape(path.name)}</div>"

    def run(state: JobState) -> Processed:
        return process_img2img_folder(p, ctx.processing_context(state), data[inputs.batch_input_dir] or "",
                                      data[inputs.batch_output_dir] or "", data[inputs.batch_mask_dir] or "",
                                      scale_by=scale_by, on_image=on_image)

    yield from follow_job(ctx, tab, ctx.queue.submit(p.outpath_kind, run), note=lambda: at.get("note", ""))
