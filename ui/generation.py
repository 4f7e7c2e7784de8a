"""What txt2img and img2img share: their common controls, paste fields and the Generate flow.

Generate builds the backend's processing object, submits it to the shared job queue (the
same FIFO the API uses) and streams the job's progress and live preview until it ends.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from backend.context import AppContext
from backend.errors import InvalidRequest
from backend.jobs.queue import Job
from backend.processing import StableDiffusionProcessing
from backend.processing.infotext_paste import checkpoint_finder, override_settings_from_texts
from ui import common, paste
from ui.scripts import ScriptControls
from ui.progress import job_html, outcome, watch

PARAMS_FILE = "params.txt"


@dataclass
class GenerationTab:
    """The controls txt2img and img2img both have, and the wiring they share."""

    name: str
    toprow: common.Toprow
    sampler: common.SamplerControls
    size: common.SizeControls
    batch: common.BatchControls
    cfg_scale: gr.Slider
    seed: common.SeedControls
    script: ScriptControls
    results: common.ResultsPanel
    extra_paste_fields: list[paste.PasteField] = field(default_factory=list)
    override_settings: gr.Dropdown | None = None

    def common_inputs(self) -> set[Any]:
        s = self.seed
        inputs = {self.toprow.prompt, self.toprow.negative_prompt, self.toprow.styles, self.sampler.sampler,
                  self.sampler.scheduler, self.sampler.steps, self.size.width, self.size.height,
                  self.batch.batch_count, self.batch.batch_size, self.cfg_scale, s.seed, s.extra, s.subseed,
                  s.subseed_strength, s.seed_resize_from_w, s.seed_resize_from_h, *self.script.inputs()}
        return inputs | ({self.override_settings} if self.override_settings is not None else set())

    def common_fields(self, data: dict) -> dict[str, Any]:
        """Processing-object fields from the shared controls, with A1111's field names."""
        s = self.seed
        extras = bool(data[s.extra])
        overrides = data[self.override_settings] if self.override_settings is not None else None
        return {
            "prompt": data[self.toprow.prompt] or "",
            "negative_prompt": data[self.toprow.negative_prompt] or "",
            "styles": list(data[self.toprow.styles] or []),
            "override_settings": _override_settings(overrides or []),
            "sampler_name": data[self.sampler.sampler],
            "scheduler": data[self.sampler.scheduler],
            "steps": int(data[self.sampler.steps]),
            "width": int(data[self.size.width]),
            "height": int(data[self.size.height]),
            "n_iter": int(data[self.batch.batch_count]),
            "batch_size": int(data[self.batch.batch_size]),
            "cfg_scale": float(data[self.cfg_scale]),
            "seed": _int_or(data[s.seed], -1),
            # Variation seed and seed resize count only while "Extra" is ticked (A1111's seed_enable_extras).
            "seed_enable_extras": extras,
            "subseed": _int_or(data[s.subseed], -1),
            "subseed_strength": float(data[s.subseed_strength] or 0),
            "seed_resize_from_w": int(data[s.seed_resize_from_w] or 0),
            "seed_resize_from_h": int(data[s.seed_resize_from_h] or 0),
        }

    def paste_fields(self, ctx: AppContext) -> list[paste.PasteField]:
        """Infotext key -> component, as A1111's paste fields for this tab.

        The settings the infotext names beyond these fields go into the Override settings dropdown.
        """
        s = self.seed
        fields = [
            paste.PasteField(self.toprow.prompt, "Prompt"),
            paste.PasteField(self.toprow.negative_prompt, "Negative prompt"),
            paste.PasteField(self.toprow.styles, paste.styles_array),
            paste.PasteField(self.sampler.steps, "Steps"),
            paste.PasteField(self.sampler.sampler, paste.sampler_name),
            paste.PasteField(self.sampler.scheduler, paste.scheduler_label),
            paste.PasteField(self.cfg_scale, "CFG scale"),
            paste.PasteField(s.seed, "Seed"),
            paste.PasteField(self.size.width, "Size-1"),
            paste.PasteField(self.size.height, "Size-2"),
            paste.PasteField(self.batch.batch_size, "Batch size"),
            paste.PasteField(s.extra, lambda params: True if "Variation seed" in params else None),
            paste.PasteField(s.subseed, "Variation seed"),
            paste.PasteField(s.subseed_strength, "Variation seed strength"),
            paste.PasteField(s.seed_resize_from_w, "Seed resize from-1"),
            paste.PasteField(s.seed_resize_from_h, "Seed resize from-2"),
            *self.extra_paste_fields,
        ]
        if self.override_settings is not None:
            own_keys = [f.source for f in fields if isinstance(f.source, str)]
            find_checkpoint = checkpoint_finder(ctx.registry)
            fields.append(paste.PasteField(self.override_settings, lambda params: paste.override_settings_update(
                params, ctx.options, find_checkpoint, own_keys)))
        return fields

    def generation_outputs(self) -> set[Any]:
        r = self.results
        return {r.progress, r.preview, r.gallery, r.info, r.log, r.generation_info, r.selected, r.download,
                *self.toprow.buttons}

    def wire_generate(self, fn: Callable[[dict], Iterator[dict]], inputs: set[Any], button: Any = None) -> None:
        """`button` (Generate by default) runs `fn`; whatever happens, the buttons and progress box are reset."""
        r = self.results

        def reset() -> dict[Any, Any]:
            return {**self.toprow.idle(), **common.results_idle(r)}

        # No Gradio concurrency limit: every request goes to the job queue, which runs them one at a time.
        (button or self.toprow.generate).click(fn, inputs, self.generation_outputs(), show_progress="hidden",
                                               concurrency_limit=None).then(
            reset, None, {r.progress, r.preview, r.gallery, *self.toprow.buttons}, show_progress="hidden",
            queue=False)


def run_generation(ctx: AppContext, tab: GenerationTab, p: StableDiffusionProcessing) -> Iterator[dict[Any, Any]]:
    """Validate, queue and follow one generation; the last update shows its images and infotext."""
    with common.shown_as_gr_error():
        p.validate()
    yield from follow_job(ctx, tab, ctx.submit(p))


def follow_job(ctx: AppContext, tab: GenerationTab, job: Job, note: Callable[[], str] | None = None
               ) -> Iterator[dict[Any, Any]]:
    """Progress and live preview of a job that returns a Processed, then its images and infotext.

    `note` gives markup shown above the progress bar (the Batch sub-tab's "Image 2 of 5").
    """
    r = tab.results
    yield {**tab.toprow.running(), **common.results_running(r), r.progress: job_html(job)}
    for bar, preview in watch(job):
        yield {r.progress: (note() if note is not None else "") + bar, r.preview: preview}
    processed = outcome(job)
    info = json.loads(processed.js())
    first = processed.index_of_first_image if processed.images else 0
    notes = common.saved_html(processed.saved_paths, ctx.settings.data_dir)
    if processed.comments:
        notes += "<div class='comments'>" + common.infotext_html(processed.comments) + "</div>"
    if processed.interrupted:
        notes = "<div class='interrupted'>Interrupted: showing what was done.</div>" + notes
    yield {
        **common.results_idle(r),
        r.gallery: gr.update(value=processed.images, selected_index=None, visible=True),
        r.generation_info: info,
        r.selected: first,
        r.info: common.infotext_html(common.selected_infotext(info, first)),
        r.log: notes,
    }


def wire_paste(ctx: AppContext, tab: GenerationTab) -> None:
    """↙: fill the fields from the infotext in the prompt box, or from the last generation (params.txt)."""
    fields = tab.paste_fields(ctx)

    def paste_last(prompt: str) -> list[Any]:
        text = (prompt or "").strip()
        if not text:
            params_file = ctx.settings.data_dir / PARAMS_FILE
            if not params_file.is_file():
                raise gr.Error("No previous generation to read parameters from")
            text = params_file.read_text(encoding="utf8")
        params = paste.parse(text, ctx.options, ctx.styles, ctx.scripts.callbacks)
        return paste.values_for(params, fields)

    tab.toprow.paste.click(paste_last, tab.toprow.prompt, [f.component for f in fields], show_progress="hidden")


def _override_settings(texts: list[str]) -> dict[str, Any]:
    try:
        return override_settings_from_texts(texts)
    except InvalidRequest as e:
        raise InvalidRequest("override_settings", str(e)) from None


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
