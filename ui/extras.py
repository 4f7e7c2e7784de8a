"""The Extras tab: upscale and restore faces on one image, several uploads, or a folder."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from backend.context import AppContext
from backend.errors import InvalidRequest
from backend.jobs.progress import JobState
from backend.postprocess.extras import (
    RESIZE_SCALE_BY,
    RESIZE_SCALE_TO,
    ExtrasRequest,
    ExtrasResult,
    default_output_dir,
    extras_from_directory,
    run_extras,
)
from ui import common
from ui.progress import job_html, outcome, watch

MODES = ("single", "batch", "directory")


@dataclass
class ExtrasTab:
    tabs: gr.Tabs
    mode: gr.State
    image: gr.Image
    batch: gr.File
    input_dir: gr.Textbox
    output_dir: gr.Textbox
    show_results: gr.Checkbox
    generate: gr.Button
    resize_mode: gr.State
    upscaling_resize: gr.Slider
    max_side_length: gr.Number
    upscaling_resize_w: gr.Slider
    upscaling_resize_h: gr.Slider
    upscaling_crop: gr.Checkbox
    upscaler_1: gr.Dropdown
    upscaler_2: gr.Dropdown
    upscaler_2_visibility: gr.Slider
    gfpgan_visibility: gr.Slider
    codeformer_visibility: gr.Slider
    codeformer_weight: gr.Slider
    progress: gr.HTML
    gallery: gr.Gallery
    info: gr.HTML
    log: gr.HTML


def build(ctx: AppContext) -> ExtrasTab:
    """The tab's layout and wiring; call inside gr.Tab("Extras")."""
    upscalers = common.upscaler_names(ctx)
    mode = gr.State(MODES[0])
    resize_mode = gr.State(RESIZE_SCALE_BY)
    with gr.Row(equal_height=False, elem_classes="main-row"):
        with gr.Column(scale=1, min_width=400, elem_classes="settings-column"):
            with gr.Tabs(elem_id="mode_extras") as tabs:
                with gr.Tab("Single Image", id="single_image", elem_id="extras_single_tab") as t_single:
                    image = gr.Image(label="Source", type="pil", image_mode="RGBA", format="png",
                                     sources=["upload", "clipboard"], elem_id="extras_image", height=360)
                with gr.Tab("Batch Process", id="batch_process", elem_id="extras_batch_process_tab") as t_batch:
                    batch = gr.File(label="Batch Process", file_count="multiple", file_types=["image"],
                                    elem_id="extras_image_batch")
                with gr.Tab("Batch from Directory", id="batch_from_directory",
                            elem_id="extras_batch_directory_tab") as t_dir:
                    input_dir = gr.Textbox(label="Input directory", placeholder="A directory on the server",
                                           elem_id="extras_batch_input_dir")
                    output_dir = gr.Textbox(label="Output directory",
                                            placeholder="Leave blank to save to the default output folder",
                                            elem_id="extras_batch_output_dir")
                    show_results = gr.Checkbox(label="Show result images", value=True,
                                               elem_id="extras_show_extras_results")
            for tab, name in zip((t_single, t_batch, t_dir), MODES):
                tab.select(lambda n=name: n, None, mode, show_progress="hidden", queue=False)
            generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
            with gr.Group(elem_classes="extras-scripts"):
                with gr.Accordion("Upscale", open=True, elem_id="extras_upscale"):
                    with gr.Tabs(elem_id="extras_resize_mode"):
                        with gr.Tab("Scale by", elem_id="extras_scale_by_tab") as t_by:
                            with gr.Row():
                                upscaling_resize = gr.Slider(1, 8, value=4, step=0.05, label="Resize",
                                                             elem_id="extras_upscaling_resize")
                                max_side = gr.Number(value=0, precision=0, minimum=0,
                                                     label="Max side length (0 = no limit)",
                                                     elem_id="extras_upscale_max_side_length")
                        with gr.Tab("Scale to", elem_id="extras_scale_to_tab") as t_to:
                            with gr.Row():
                                resize_w = gr.Slider(64, 8192, value=512, step=8, label="Width",
                                                     elem_id="extras_upscaling_resize_w")
                                resize_h = gr.Slider(64, 8192, value=512, step=8, label="Height",
                                                     elem_id="extras_upscaling_resize_h")
                            crop = gr.Checkbox(label="Crop to fit", value=True, elem_id="extras_upscaling_crop")
                    t_by.select(lambda: RESIZE_SCALE_BY, None, resize_mode, show_progress="hidden", queue=False)
                    t_to.select(lambda: RESIZE_SCALE_TO, None, resize_mode, show_progress="hidden", queue=False)
                    with gr.Row():
                        upscaler_1 = gr.Dropdown(upscalers, value="None", label="Upscaler 1",
                                                 elem_id="extras_upscaler_1")
                        upscaler_2 = gr.Dropdown(upscalers, value="None", label="Upscaler 2",
                                                 elem_id="extras_upscaler_2")
                    with gr.Row():
                        visibility_2 = gr.Slider(0, 1, value=0, step=0.001, label="Upscaler 2 visibility",
                                                 elem_id="extras_upscaler_2_visibility")
                with gr.Accordion("Face restoration", open=False, elem_id="extras_face_restoration"):
                    gfpgan = gr.Slider(0, 1, value=0, step=0.001, label="GFPGAN visibility",
                                       elem_id="extras_gfpgan_visibility")
                    with gr.Row():
                        codeformer = gr.Slider(0, 1, value=0, step=0.001, label="CodeFormer visibility",
                                               elem_id="extras_codeformer_visibility")
                        codeformer_weight = gr.Slider(0, 1, value=0, step=0.001,
                                                      label="CodeFormer weight (0 = maximum effect, 1 = minimum)",
                                                      elem_id="extras_codeformer_weight")
        with gr.Column(scale=1, min_width=400, elem_classes="results"):
            progress = gr.HTML("", elem_id="extras_progress", elem_classes="progress-box", js_on_load=None)
            gallery = gr.Gallery(label="Result", show_label=False, elem_id="extras_gallery", columns=3, height=480,
                                 object_fit="contain", format="png", interactive=False, preview=True,
                                 buttons=["download", "fullscreen"])
            info = gr.HTML("", elem_id="html_info_extras", elem_classes="infotext", js_on_load=None)
            log = gr.HTML("", elem_id="html_log_extras", elem_classes="html-log", js_on_load=None)
    tab = ExtrasTab(tabs, mode, image, batch, input_dir, output_dir, show_results, generate, resize_mode,
                    upscaling_resize, max_side, resize_w, resize_h, crop, upscaler_1, upscaler_2, visibility_2,
                    gfpgan, codeformer, codeformer_weight, progress, gallery, info, log)
    _wire(ctx, tab)
    return tab


def request_from(tab: ExtrasTab, data: dict) -> ExtrasRequest:
    """The Extras settings as the backend's request (A1111's API field names)."""
    return ExtrasRequest(
        resize_mode=int(data[tab.resize_mode]),
        upscaling_resize=float(data[tab.upscaling_resize]),
        max_side_length=int(data[tab.max_side_length] or 0),
        upscaling_resize_w=int(data[tab.upscaling_resize_w]),
        upscaling_resize_h=int(data[tab.upscaling_resize_h]),
        upscaling_crop=bool(data[tab.upscaling_crop]),
        upscaler_1=data[tab.upscaler_1] or "None",
        upscaler_2=data[tab.upscaler_2] or "None",
        extras_upscaler_2_visibility=float(data[tab.upscaler_2_visibility]),
        gfpgan_visibility=float(data[tab.gfpgan_visibility]),
        codeformer_visibility=float(data[tab.codeformer_visibility]),
        codeformer_weight=float(data[tab.codeformer_weight]),
        show_extras_results=bool(data[tab.show_results]),
    )


def _wire(ctx: AppContext, tab: ExtrasTab) -> None:
    inputs = {tab.mode, tab.image, tab.batch, tab.input_dir, tab.output_dir, tab.show_results, tab.resize_mode,
              tab.upscaling_resize, tab.max_side_length, tab.upscaling_resize_w, tab.upscaling_resize_h,
              tab.upscaling_crop, tab.upscaler_1, tab.upscaler_2, tab.upscaler_2_visibility, tab.gfpgan_visibility,
              tab.codeformer_visibility, tab.codeformer_weight}

    def run(data: dict) -> Iterator[dict[Any, Any]]:
        with common.shown_as_gr_error():
            req = request_from(tab, data)
            req.validate()
            work = _work(ctx, tab, data, req)
        job = ctx.queue.submit("extras", work)
        yield {tab.progress: job_html(job), tab.generate: gr.update(interactive=False)}
        for bar, _ in watch(job):
            yield {tab.progress: bar}
        results: list[ExtrasResult] = outcome(job)
        shown = [r.image for r in results if r.image is not None]
        saved = [r.saved_path for r in results if r.saved_path is not None]
        yield {tab.gallery: shown, tab.info: common.infotext_html(results[0].infotext if results else ""),
               tab.log: common.saved_html(saved, ctx.settings.data_dir)}

    tab.generate.click(run, inputs, {tab.progress, tab.generate, tab.gallery, tab.info, tab.log},
                       show_progress="hidden", concurrency_limit=None).then(
        lambda: ("", gr.update(interactive=True)), None, [tab.progress, tab.generate], show_progress="hidden",
        queue=False)


def _work(ctx: AppContext, tab: ExtrasTab, data: dict, req: ExtrasRequest) -> Any:
    """The job for the chosen sub-tab, run by the queue's worker with the job's state."""
    output_dir = default_output_dir(ctx.options, ctx.settings.data_dir)
    common_args: dict[str, Any] = {"upscalers": ctx.upscalers, "face_restorers": ctx.face_restorers,
                                   "opts": ctx.options, "device": ctx.devices.device, "dtype": ctx.devices.dtype}
    mode = data[tab.mode]
    if mode == "directory":
        if not data[tab.input_dir]:
            raise InvalidRequest("extras_batch_input_dir", "enter an input directory")
        input_dir = Path(data[tab.input_dir]).expanduser()
        chosen = data[tab.output_dir].strip() or None

        def from_directory(state: JobState) -> list[ExtrasResult]:
            return extras_from_directory(input_dir, chosen, req, default_dir=output_dir, state=state, **common_args)

        return from_directory
    if mode == "batch":
        files = [Path(f) for f in data[tab.batch] or []]
        if not files:
            raise InvalidRequest("image", "upload images to process")
        images: list[tuple[Any, str | None]] = [(path, path.name) for path in files]
    else:
        if data[tab.image] is None:
            raise InvalidRequest("image", "upload an image first")
        images = [(data[tab.image], None)]

    def process(state: JobState) -> list[ExtrasResult]:
        return run_extras(images, req, output_dir=output_dir, state=state, **common_args)

    return process
