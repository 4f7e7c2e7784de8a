"""The Train tab: prepare a data set, train a LoRA as a queued job, compare its epochs and weights.

Layout and wiring only: the checks, crops and caption edits are `backend.training.dataset`, the run is
`backend.training.lora.submit_training` (the job queue), the comparison is the X/Y/Z plot script run on a
txt2img request built by `lora.comparison_request`, shown here as one grid.
"""
from __future__ import annotations

import html
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from backend.context import AppContext
from backend.jobs.queue import Job
from backend.training import dataset
from backend.training.lora import (
    MIXED_PRECISION,
    NETWORK_TYPES,
    SCHEDULERS,
    LoraTrainingParams,
    TrainingRun,
    available_optimizers,
    comparison_request,
    submit_training,
)
from ui import common
from ui.progress import format_eta, job_html, outcome, watch

POLL_S = 0.5


@dataclass
class TrainTab:
    params: dict[str, Any]  # LoraTrainingParams field -> component
    start: gr.Button
    stop: gr.Button
    resume: gr.Button
    progress: gr.HTML
    loss: gr.LinePlot
    samples: gr.Gallery
    files: gr.HTML


def build(ctx: AppContext) -> TrainTab:
    """Call inside gr.Tab("Train")."""
    with gr.Tabs(elem_id="train_tabs"):
        with gr.Tab("Dataset", id="train_dataset", elem_id="train_dataset_tab"):
            _build_dataset()
        with gr.Tab("LoRA", id="train_lora", elem_id="train_lora_tab"):
            tab = _build_lora(ctx)
    return tab


# ---- Dataset ------------------------------------------------------------------------------------------------

def _frequency_rows(counts: Any) -> list[list[Any]]:
    return [[tag, count] for tag, count in counts.most_common()]


def _build_dataset() -> None:
    with gr.Row():
        folder = gr.Textbox(label="Input folder (images + optional .txt captions)", elem_id="train_dataset_folder",
                            scale=3)
        resolution = gr.Number(512, label="Training resolution", precision=0, elem_id="train_dataset_resolution",
                               scale=1)
        scan = gr.Button("Check", variant="primary", elem_id="train_dataset_scan", scale=0, min_width=100)
    warnings = gr.Markdown(elem_id="train_dataset_warnings")
    table = gr.Dataframe(headers=["file", "size", "caption", "note"], interactive=False, wrap=True,
                         label="Images", elem_id="train_dataset_table")
    with gr.Row(equal_height=False):
        with gr.Column():
            gr.Markdown("**Captions** — edit the tags of every caption file in the input folder")
            remove = gr.Textbox(label="Remove tags (comma-separated; leave empty to keep all, for style training)",
                                elem_id="train_dataset_remove_tags")
            trigger = gr.Textbox(label="Trigger word (put first)", elem_id="train_dataset_trigger")
            apply = gr.Button("Apply to captions", elem_id="train_dataset_apply_captions")
            tags = gr.Dataframe(headers=["tag", "count"], interactive=False, label="Tag frequencies",
                                elem_id="train_dataset_tags")
        with gr.Column():
            gr.Markdown("**Prepare** — write resized and cropped copies (with the caption edits) to a new folder")
            output = gr.Textbox(label="Output folder", elem_id="train_dataset_output")
            crop = gr.Radio(list(dataset.CROP_MODES), value="centre", label="Crop (focal: most salient region; no "
                            "face detector is bundled)", elem_id="train_dataset_crop")
            with gr.Row():
                buckets = gr.Checkbox(label="Aspect-ratio buckets", elem_id="train_dataset_buckets")
                split = gr.Checkbox(label="Split oversized images", elem_id="train_dataset_split")
                flip = gr.Checkbox(label="Add flipped copies", elem_id="train_dataset_flip")
                skip = gr.Checkbox(True, label="Skip near-duplicates", elem_id="train_dataset_skip_duplicates")
            prepare = gr.Button("Prepare", variant="primary", elem_id="train_dataset_prepare")
            result = gr.Markdown(elem_id="train_dataset_result")

    def check(path: str, res: float) -> list[Any]:
        with common.shown_as_gr_error():
            report = dataset.scan(path, int(res))
        text = "\n".join(f"- ⚠ {w}" for w in report.warnings) or f"{len(report.images)} images, no warnings."
        return [text, report.rows(), _frequency_rows(report.tag_frequency())]

    def edit(path: str, removed: str, word: str) -> list[Any]:
        with common.shown_as_gr_error():
            counts = dataset.rewrite_captions(path, remove=dataset.split_tags(removed), trigger=word)
        return [_frequency_rows(counts)]

    def run_prepare(path: str, out: str, res: float, mode: str, use_buckets: bool, use_split: bool,
                    use_flip: bool, skip_duplicates: bool, removed: str, word: str) -> str:
        options = dataset.PrepareOptions(resolution=int(res), crop=mode, buckets=use_buckets, split=use_split,
                                         flip=use_flip, remove_tags=tuple(dataset.split_tags(removed)), trigger=word,
                                         skip_duplicates=skip_duplicates)
        with common.shown_as_gr_error():
            done = dataset.prepare(path, out, options)
        lines = [f"Wrote {len(done.written)} images to `{done.output}`."]
        lines += [f"- buckets: {', '.join(f'{k}: {v}' for k, v in done.bucket_counts.items())}"]
        lines += [f"- skipped {item}" for item in done.skipped]
        return "\n".join(lines)

    scan.click(check, [folder, resolution], [warnings, table, tags])
    apply.click(edit, [folder, remove, trigger], [tags])
    prepare.click(run_prepare, [folder, output, resolution, crop, buckets, split, flip, skip, remove, trigger], result)


def _image(path: str) -> Image.Image:
    with Image.open(path) as image:
        return image.copy()


# ---- LoRA ---------------------------------------------------------------------------------------------------

def _build_lora(ctx: AppContext) -> TrainTab:
    defaults = LoraTrainingParams(name="", dataset="")
    c: dict[str, Any] = {}

    def number(name: str, label: str, *, precision: int | None = None, **kw: Any) -> None:
        c[name] = gr.Number(getattr(defaults, name), label=label, precision=precision, elem_id=f"train_lora_{name}",
                            **kw)

    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            with gr.Row():
                c["name"] = gr.Textbox(label="Output name", elem_id="train_lora_name")
                c["dataset"] = gr.Textbox(label="Dataset folder", elem_id="train_lora_dataset")
                c["model"] = gr.Dropdown([""] + ctx.registry.titles(), value="", label="Base checkpoint (empty: "
                                         "the selected one)", elem_id="train_lora_model")
            with gr.Row():
                c["network_type"] = gr.Radio(list(NETWORK_TYPES), value=defaults.network_type, label="Network",
                                             elem_id="train_lora_network_type")
                number("dim", "Rank (dim)", precision=0)
                number("alpha", "Alpha")
                number("conv_dim", "Conv dim (LoCon)", precision=0)
                number("conv_alpha", "Conv alpha (LoCon)")
            with gr.Row():
                number("unet_lr", "UNet learning rate")
                number("text_encoder_lr", "Text encoder learning rate (0: not trained)")
                c["optimizer"] = gr.Dropdown(list(available_optimizers()), value=defaults.optimizer, label="Optimizer",
                                             elem_id="train_lora_optimizer")
                c["scheduler"] = gr.Dropdown(list(SCHEDULERS), value=defaults.scheduler, label="Scheduler",
                                             elem_id="train_lora_scheduler")
                number("warmup_steps", "Warm-up steps", precision=0)
            with gr.Row():
                number("max_train_steps", "Steps (0: by epochs)", precision=0)
                number("epochs", "Epochs", precision=0)
                number("repeats", "Repeats", precision=0)
                number("batch_size", "Batch size", precision=0)
                number("resolution", "Resolution", precision=0)
                c["buckets"] = gr.Checkbox(defaults.buckets, label="Buckets", elem_id="train_lora_buckets")
            with gr.Row():
                number("noise_offset", "Noise offset")
                number("min_snr_gamma", "Min-SNR gamma (0: off)")
                c["mixed_precision"] = gr.Dropdown(list(MIXED_PRECISION), value=defaults.mixed_precision,
                                                   label="Mixed precision (CUDA)", elem_id="train_lora_mixed_precision")
                c["gradient_checkpointing"] = gr.Checkbox(label="Gradient checkpointing",
                                                          elem_id="train_lora_gradient_checkpointing")
                number("clip_skip", "Clip skip", precision=0)
                number("seed", "Seed", precision=0)
            with gr.Row():
                number("save_every_n_epochs", "Save every N epochs", precision=0)
                number("sample_every_n_steps", "Sample every N steps (0: at saves only)", precision=0)
                c["sample_prompt"] = gr.Textbox(label="Sample prompt (empty: no samples)",
                                                elem_id="train_lora_sample_prompt")
                number("sample_steps", "Sample steps", precision=0)
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train_lora_start")
                stop = gr.Button("Stop", variant="stop", elem_id="train_lora_stop")
                resume = gr.Button("Resume", elem_id="train_lora_resume")
        with gr.Column(scale=2):
            progress = gr.HTML(elem_id="train_lora_progress", js_on_load=None)
            loss = gr.LinePlot(pd.DataFrame({"step": [], "loss": []}), x="step", y="loss", title="Loss",
                               elem_id="train_lora_loss", height=220)
            samples = gr.Gallery(label="Samples", columns=4, height=200, elem_id="train_lora_samples")
            files = gr.HTML(elem_id="train_lora_files", js_on_load=None)
            with gr.Accordion("Compare epochs and weights (X/Y/Z plot)", open=False):
                with gr.Row():
                    weights = gr.Textbox("0.1, 0.4, 0.7, 1.0", label="Weights", elem_id="train_compare_weights")
                    compare = gr.Button("Compare", elem_id="train_compare")
                grid = gr.Image(label="Epochs (X) x weights (Y)", type="pil", interactive=False,
                                elem_id="train_compare_grid")
    job_id = gr.State("")
    names = [f.name for f in fields(LoraTrainingParams) if f.name in c]
    outputs = [progress, loss, samples, files, job_id]

    def view(job: Job, run: TrainingRun, shown_samples: int) -> list[Any]:
        """Progress, loss chart, samples (re-read only when there are new ones: gr.skip() otherwise), files."""
        data = run.to_dict()
        if job.done:
            bar = html.escape(f"{data['status']}: step {data['step']}/{data['total_steps']}"
                              + (f" — {data['error']}" if data["error"] else ""))
        elif data["status"] in ("training", "sampling"):
            bar = (f"<div class='progress-bar'><div class='progress-fill' style='width:{100 * data['progress']:.1f}%'>"
                   f"</div><div class='progress-text'>{data['status']} · step {data['step']}/{data['total_steps']} · "
                   f"epoch {data['epoch']}/{data['total_epochs']} · ETA {format_eta(data['eta_s'])}</div></div>")
        else:
            bar = job_html(job) or html.escape(data["status"])
        frame = pd.DataFrame(data["losses"] or [], columns=["step", "loss"])
        listed = "".join(f"<li>{html.escape(path)}</li>" for path in data["saved"])
        samples = [_image(path) for path in data["samples"]] if len(data["samples"]) != shown_samples \
            else gr.skip()  # as images: the files may lie outside the folders Gradio serves
        return [bar, frame, samples, f"<ul class='train-files'>{listed}</ul>" if listed else "", job.id]

    def train(resume_run: bool, *values: Any) -> Iterator[list[Any]]:
        raw = dict(zip(names, values, strict=True))
        for key in ("dim", "conv_dim", "warmup_steps", "max_train_steps", "epochs", "repeats", "batch_size",
                    "resolution", "clip_skip", "seed", "save_every_n_epochs", "sample_every_n_steps", "sample_steps"):
            raw[key] = int(raw[key] or 0)
        with common.shown_as_gr_error():
            job, run = submit_training(ctx, LoraTrainingParams.from_dict({**raw, "resume": resume_run}))
        shown = 0
        while not job.done:
            yield view(job, run, shown)
            shown = len(run.samples)
            time.sleep(POLL_S)
        yield view(job, run, -1)

    def stop_run(current: str) -> None:
        if current:
            job = ctx.queue.get(current)
            if not job.done:
                job.state.interrupt()

    def run_compare(name: str, prompt: str, weight_text: str, seed: float, steps: float, size: float) -> Iterator[Any]:
        with common.shown_as_gr_error():
            p = comparison_request(ctx, name, prompt, weight_text, seed=int(seed), steps=int(steps), size=int(size))
            job = ctx.submit(p)
        for _ in watch(job):
            yield gr.skip()
        yield outcome(job).images[0]

    inputs = [c[name] for name in names]
    start.click(partial(train, False), inputs, outputs, concurrency_limit=None)
    resume.click(partial(train, True), inputs, outputs, concurrency_limit=None)
    stop.click(stop_run, job_id, None, show_progress="hidden")
    compare.click(run_compare, [c["name"], c["sample_prompt"], weights, c["seed"], c["sample_steps"],
                                c["resolution"]], grid)
    return TrainTab(c, start, stop, resume, progress, loss, samples, files)
