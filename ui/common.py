"""Pieces every tab shares: error display, the prompt row, seed controls, the results panel.

Layout and wiring only; values go to the backend's own objects and functions.
"""
from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from backend.context import AppContext
from backend.errors import WebUIError
from backend.postprocess.images import read_info_from_image, save_image
from backend.prompts import chunking, parser
from backend.sampling.registry import SAMPLERS, SCHEDULERS

# A1111's UI defaults and slider ranges (a1111.md 7.4).
DEFAULT_SAMPLER = SAMPLERS[0].name
DEFAULT_SCHEDULER = SCHEDULERS[0].label
CHUNK_LENGTH = 75
SAVE_DIR = "log/images"
GALLERY_HEIGHT = 480

RANDOM_SEED_ICON = "\u2684"  # ⚄ (a die, in fonts every system has)
REUSE_SEED_ICON = "\u267b\ufe0f"  # ♻️
PASTE_ICON = "\u2199\ufe0f"  # ↙️
CLEAR_ICON = "\u2715"  # ✕
SWAP_ICON = "\u21c5"  # ⇅
REFRESH_ICON = "\u21bb"  # ↻
# A1111 uses emoji here (📋 🖌️ 📝); these symbols show in the fonts every system has.
APPLY_STYLES_ICON = "\u21e9"  # ⇩ (the selected styles into the prompts)
EDIT_STYLES_ICON = "\u270e"  # ✎
COPY_PROMPT_ICON = "\u2750"  # ❐ (the prompts into the style)

# Hover hints for the tool buttons (A1111's javascript/hints.js), by elem_id; {tab} is txt2img or img2img.
TOOLTIPS = {
    "{tab}_paste": "Fill the fields from the infotext in the prompt box, or from the last generation",
    "{tab}_clear_prompt": "Clear both prompts",
    "{tab}_style_apply": "Write the selected styles into the prompts",
    "{tab}_styles_edit_button": "Edit styles",
    "{tab}_style_apply_dialog": "Write the selected styles into the prompts",
    "{tab}_style_copy": "Copy the prompts from the prompt boxes into this style",
    "refresh_{tab}_styles": "Read the styles files again",
    "{tab}_random_seed": "Random seed (-1): a new seed for every generation",
    "{tab}_reuse_seed": "Use the seed of the picture shown",
    "{tab}_res_switch_btn": "Swap width and height",
    "refresh_sd_model_checkpoint": "Look for new checkpoints",
}


def tooltips_js() -> str:
    """A page script that gives the tool buttons their hover hints, also those drawn later (tabs open lazily)."""
    titles = {key.format(tab=tab): text for key, text in TOOLTIPS.items() for tab in ("txt2img", "img2img")}
    return ("() => { const titles = " + json.dumps(titles) + "; const apply = () => { for (const [id, text] of "
            "Object.entries(titles)) { const el = document.getElementById(id); if (el && !el.title) el.title = text; "
            "} }; apply(); new MutationObserver(apply).observe(document.body, {childList: true, subtree: true}); }")


def error_text(error: BaseException) -> str:
    """The message a user sees for a failed action: ours as written, anything else with its type."""
    if isinstance(error, WebUIError):
        return str(error)
    return f"{type(error).__name__}: {error}"


@contextmanager
def shown_as_gr_error() -> Iterator[None]:
    """Turn backend errors raised inside the block into gr.Error, which the page shows as a toast."""
    try:
        yield
    except gr.Error:
        raise
    except Exception as e:  # the page must keep working whatever went wrong; the user gets the message
        raise gr.Error(error_text(e)) from e


# ---------------------------------------------------------------------------
# Token counter
# ---------------------------------------------------------------------------

class TokenCounter:
    """Counts prompt tokens as A1111's counter does ("12/75"), with CLIP's BPE tokenizer.

    Every supported family tokenizes its first text encoder with the same CLIP vocabulary,
    so the count does not depend on the loaded checkpoint. The tokenizer is built on first use.
    """

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self._tokenizer: Any = None
        self._lock = threading.Lock()

    def count(self, text: str, steps: float | None) -> int:
        """Tokens of the longest text the prompt's schedule produces, extra-network tags left out."""
        if not text:
            return 0
        tokenizer = self._get_tokenizer()
        text = parser.strip_comments(text) if self.ctx.options["enable_prompt_comments"] else text
        stripped, _ = parser.parse_extra_networks(text)
        schedules = parser.get_learned_conditioning_prompt_schedules([stripped], max(1, int(steps or 1)))
        texts = {variant for schedule in schedules for _, variant in schedule}
        emphasis = self.ctx.options["emphasis"]

        def tokenize(texts: list[str]) -> list[list[int]]:
            return tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

        # Embedding names count as many tokens as the embedding has vectors (A1111).
        find_embedding = self.ctx.embeddings.current().matcher(tokenize)
        best = 0
        for variant in texts:
            parsed = [[variant, 1.0]] if emphasis == "None" else parser.parse_prompt_attention(variant)
            _, tokens = chunking.build_chunks(
                parsed, tokenize, id_start=tokenizer.bos_token_id, id_end=tokenizer.eos_token_id,
                comma_token=tokenizer.get_vocab()[",</w>"], chunk_length=CHUNK_LENGTH,
                comma_padding_backtrack=int(self.ctx.options["comma_padding_backtrack"]),
                find_embedding=find_embedding)
            best = max(best, tokens)
        return best

    def html(self, text: str, steps: float | None) -> Any:
        """The counter's markup: tokens over the chunk capacity, red once past one chunk."""
        try:
            tokens = self.count(text, steps)
        except Exception:  # a half-typed prompt can fail to parse; the counter then just waits
            return gr.skip()
        capacity = max(CHUNK_LENGTH, -(-tokens // CHUNK_LENGTH) * CHUNK_LENGTH)
        over = " token-counter-over" if tokens > CHUNK_LENGTH else ""
        return f"<span class='token-counter{over}'>{tokens}/{capacity}</span>"

    def _get_tokenizer(self) -> Any:
        with self._lock:
            if self._tokenizer is None:
                from backend.models.tokenizers import build_clip_tokenizer

                self._tokenizer = build_clip_tokenizer()
            return self._tokenizer


# ---------------------------------------------------------------------------
# The prompt row
# ---------------------------------------------------------------------------

@dataclass
class StyleEditor:
    """A1111's style editor (🖌️): pick or name a style, edit its prompts, Save / Delete / Close."""

    group: gr.Column
    selection: gr.Dropdown
    refresh: gr.Button
    apply: gr.Button
    copy: gr.Button
    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    save: gr.Button
    delete: gr.Button
    close: gr.Button


@dataclass
class Toprow:
    """Prompt and negative prompt with token counters, Generate / Interrupt / Skip, paste, clear and styles."""

    prompt: gr.Textbox
    negative_prompt: gr.Textbox
    token_counter: gr.HTML
    negative_token_counter: gr.HTML
    generate: gr.Button
    interrupt: gr.Button
    skip: gr.Button
    paste: gr.Button
    clear: gr.Button
    apply_styles: gr.Button
    styles: gr.Dropdown
    edit_styles: gr.Button
    style_editor: StyleEditor

    def running(self) -> dict[Any, Any]:
        """Updates that swap Generate for Interrupt/Skip while a job runs."""
        return {self.generate: gr.update(visible=False), self.interrupt: gr.update(visible=True),
                self.skip: gr.update(visible=True)}

    def idle(self) -> dict[Any, Any]:
        return {self.generate: gr.update(visible=True), self.interrupt: gr.update(visible=False),
                self.skip: gr.update(visible=False)}

    @property
    def buttons(self) -> list[gr.Button]:
        return [self.generate, self.interrupt, self.skip]


def not_a_default(component: Any) -> Any:
    """Keep `component` out of the UI defaults (ui-config.json), as A1111's do_not_save_to_config."""
    component.do_not_save_to_config = True
    return component


def build_toprow(tab: str, ctx: AppContext) -> Toprow:
    """A1111's top row of a generation tab (elem_ids as A1111's: txt2img_prompt, txt2img_generate, ...)."""
    with gr.Row(elem_id=f"{tab}_toprow", elem_classes="toprow", equal_height=False):
        with gr.Column(scale=6, elem_classes="prompts"):
            with gr.Column(elem_classes="prompt-box"):
                prompt = gr.Textbox(label="Prompt", show_label=False, lines=3, max_lines=12,
                                    placeholder="Prompt (press Ctrl+Enter to generate)", elem_id=f"{tab}_prompt")
                counter = gr.HTML("<span class='token-counter'>0/75</span>", elem_id=f"{tab}_token_counter",
                                  elem_classes="token-counter-box", js_on_load=None)
            with gr.Column(elem_classes="prompt-box"):
                negative = gr.Textbox(label="Negative prompt", show_label=False, lines=3, max_lines=12,
                                      placeholder="Negative prompt", elem_id=f"{tab}_neg_prompt")
                negative_counter = gr.HTML("<span class='token-counter'>0/75</span>",
                                           elem_id=f"{tab}_negative_token_counter",
                                           elem_classes="token-counter-box", js_on_load=None)
        with gr.Column(scale=1, min_width=200, elem_classes="actions"):
            generate = gr.Button("Generate", variant="primary", elem_id=f"{tab}_generate", elem_classes="generate")
            with gr.Row(elem_classes="interrupt-row"):
                interrupt = gr.Button("Interrupt", variant="stop", visible=False, elem_id=f"{tab}_interrupt",
                                      min_width=60)
                skip = gr.Button("Skip", visible=False, elem_id=f"{tab}_skip", min_width=60)
            with gr.Row(elem_classes="tool-row"):
                paste = gr.Button(PASTE_ICON, size="sm", elem_id=f"{tab}_paste", elem_classes="tool", min_width=40)
                clear = gr.Button(CLEAR_ICON, size="sm", elem_id=f"{tab}_clear_prompt", elem_classes="tool",
                                  min_width=40)
                apply_styles = gr.Button(APPLY_STYLES_ICON, size="sm", elem_id=f"{tab}_style_apply",
                                         elem_classes="tool", min_width=40)
            with gr.Row(elem_id=f"{tab}_styles_row", elem_classes="styles-row"):
                styles = gr.Dropdown(ctx.styles.names(), value=[], multiselect=True, label="Styles",
                                     elem_id=f"{tab}_styles", scale=1, min_width=120)
                edit_styles = gr.Button(EDIT_STYLES_ICON, size="sm", elem_id=f"{tab}_styles_edit_button",
                                        elem_classes="tool", min_width=40, scale=0)
    editor = _build_style_editor(tab, ctx)
    return Toprow(prompt, negative, counter, negative_counter, generate, interrupt, skip, paste, clear, apply_styles,
                  styles, edit_styles, editor)


def _build_style_editor(tab: str, ctx: AppContext) -> StyleEditor:
    with gr.Column(visible=False, elem_id=f"{tab}_styles_dialog", elem_classes="styles-dialog") as group:
        with gr.Row(equal_height=False, elem_classes="styles-dialog-top"):
            selection = not_a_default(gr.Dropdown(
                ctx.styles.names(), value=None, allow_custom_value=True, label="Style",
                elem_id=f"{tab}_styles_edit_select",
                info="Choose a style to edit, or type a new name. Use {prompt} in the style's text to place the "
                     "prompt there; without it the style's text is added to the end of the prompt.", scale=1))
            refresh = gr.Button(REFRESH_ICON, size="sm", elem_id=f"refresh_{tab}_styles", elem_classes="tool",
                                min_width=40, scale=0)
            apply = gr.Button(APPLY_STYLES_ICON, size="sm", elem_id=f"{tab}_style_apply_dialog", elem_classes="tool",
                              min_width=40, scale=0)
            copy = gr.Button(COPY_PROMPT_ICON, size="sm", elem_id=f"{tab}_style_copy", elem_classes="tool",
                             min_width=40, scale=0)
        prompt = not_a_default(gr.Textbox(label="Prompt", lines=2, elem_id=f"{tab}_edit_style_prompt"))
        negative = not_a_default(gr.Textbox(label="Negative prompt", lines=2, elem_id=f"{tab}_edit_style_neg_prompt"))
        with gr.Row(elem_classes="styles-dialog-buttons"):
            save = gr.Button("Save", variant="primary", visible=False, elem_id=f"{tab}_edit_style_save", min_width=100,
                             scale=0)
            delete = gr.Button("Delete", variant="stop", visible=False, elem_id=f"{tab}_edit_style_delete",
                               min_width=100, scale=0)
            close = gr.Button("Close", variant="secondary", elem_id=f"{tab}_edit_style_close", min_width=100,
                              scale=0)
    return StyleEditor(group, selection, refresh, apply, copy, prompt, negative, save, delete, close)


def wire_toprow(ctx: AppContext, toprow: Toprow, counter: TokenCounter, steps: gr.Slider) -> None:
    """Counters follow the prompts; Interrupt/Skip act on the running job; ✕ clears both prompts; styles."""
    for box, out in ((toprow.prompt, toprow.token_counter), (toprow.negative_prompt, toprow.negative_token_counter)):
        box.change(counter.html, [box, steps], out, show_progress="hidden", trigger_mode="always_last",
                   queue=False)
    steps.change(counter.html, [toprow.prompt, steps], toprow.token_counter, show_progress="hidden",
                 trigger_mode="always_last", queue=False)
    def interrupt() -> None:
        ctx.queue.interrupt()

    def skip() -> None:
        ctx.queue.skip()

    # Like A1111's buttons these act on the running job, whoever started it.
    toprow.interrupt.click(interrupt, None, None, show_progress="hidden", concurrency_limit=None)
    toprow.skip.click(skip, None, None, show_progress="hidden", concurrency_limit=None)
    toprow.clear.click(lambda: ("", ""), None, [toprow.prompt, toprow.negative_prompt], show_progress="hidden",
                       queue=False)
    _wire_style_editor(ctx, toprow)


def _wire_style_editor(ctx: AppContext, toprow: Toprow) -> None:
    editor = toprow.style_editor
    main = [toprow.prompt, toprow.negative_prompt, toprow.styles]

    def materialize(prompt: str, negative: str, names: list[str] | None) -> tuple[str, str, list[str]]:
        """📋: write the selected styles into the prompts and clear the selection (A1111)."""
        names = names or []
        return (ctx.styles.apply_styles_to_prompt(prompt or "", names),
                ctx.styles.apply_negative_styles_to_prompt(negative or "", names), [])

    for button in (toprow.apply_styles, editor.apply):
        button.click(materialize, main, main, show_progress="hidden")

    def open_editor(names: list[str] | None) -> list[Any]:
        # Opens on the first selected style, ready to edit.
        first = (names or [None])[0]
        return [gr.update(visible=True), gr.update(value=first, choices=ctx.styles.names()) if first else gr.skip()]

    toprow.edit_styles.click(open_editor, toprow.styles, [editor.group, editor.selection], show_progress="hidden")
    editor.close.click(lambda: gr.update(visible=False), None, editor.group, show_progress="hidden", queue=False)

    def select(name: str | None) -> list[Any]:
        style = ctx.styles.get(name) if name else None
        texts = [style.prompt, style.negative_prompt] if style is not None else [gr.skip(), gr.skip()]
        return [*texts, gr.update(visible=style is not None), gr.update(visible=bool(name))]

    editor.selection.change(select, editor.selection, [editor.prompt, editor.negative_prompt, editor.delete,
                                                       editor.save], show_progress="hidden")
    editor.copy.click(lambda prompt, negative: (prompt, negative), [toprow.prompt, toprow.negative_prompt],
                      [editor.prompt, editor.negative_prompt], show_progress="hidden", queue=False)


def style_choices(ctx: AppContext, toprows: list[Toprow]) -> list[Any]:
    """Updates that give every styles dropdown (main and editor, of each tab) the styles as they are now."""
    names = ctx.styles.names()
    return [gr.update(choices=names) for _ in toprows for _ in range(2)]


def style_dropdowns(toprows: list[Toprow]) -> list[gr.Dropdown]:
    """The dropdowns style_choices updates, in the same order."""
    return [d for t in toprows for d in (t.styles, t.style_editor.selection)]


def wire_style_saving(ctx: AppContext, toprows: list[Toprow]) -> None:
    """Save / Delete / ↻ in any tab's editor refresh the styles dropdowns of every tab."""
    dropdowns = style_dropdowns(toprows)

    def save(name: str | None, prompt: str, negative: str) -> list[Any]:
        with shown_as_gr_error():
            ctx.styles.save_style(name or "", prompt or "", negative or "")
        return [gr.update(visible=True), *style_choices(ctx, toprows)]

    def delete(name: str | None) -> list[Any]:
        with shown_as_gr_error():
            ctx.styles.delete_style(name or "")
        return [None, "", "", *style_choices(ctx, toprows)]

    def reload() -> list[Any]:
        with shown_as_gr_error():
            ctx.styles.reload()
        return style_choices(ctx, toprows)

    for toprow in toprows:
        editor = toprow.style_editor
        editor.save.click(save, [editor.selection, editor.prompt, editor.negative_prompt], [editor.delete, *dropdowns],
                          show_progress="hidden")
        editor.delete.click(delete, editor.selection, [editor.selection, editor.prompt, editor.negative_prompt,
                                                       *dropdowns], show_progress="hidden")
        editor.refresh.click(reload, None, dropdowns, show_progress="hidden")


def build_override_settings(tab: str) -> gr.Dropdown:
    """A1111's "Override settings": the settings a pasted infotext names, used by the next generation.

    Hidden while empty; removing every entry hides it again.
    """
    dropdown = not_a_default(gr.Dropdown([], value=[], multiselect=True, label="Override settings", visible=False,
                                         elem_id=f"{tab}_override_settings", interactive=True))
    dropdown.change(lambda values: gr.update(visible=bool(values)), dropdown, dropdown, show_progress="hidden",
                    queue=False)
    return dropdown


# ---------------------------------------------------------------------------
# Sampler, size, batch and seed
# ---------------------------------------------------------------------------

@dataclass
class SamplerControls:
    sampler: gr.Dropdown
    scheduler: gr.Dropdown
    steps: gr.Slider


def build_sampler_controls(tab: str) -> SamplerControls:
    with gr.Row(elem_id=f"{tab}_sampler_row"):
        sampler = gr.Dropdown([s.name for s in SAMPLERS], value=DEFAULT_SAMPLER, label="Sampling method",
                              elem_id=f"{tab}_sampling")
        scheduler = gr.Dropdown([s.label for s in SCHEDULERS], value=DEFAULT_SCHEDULER, label="Schedule type",
                                elem_id=f"{tab}_scheduler")
    steps = gr.Slider(1, 150, value=20, step=1, label="Sampling steps", elem_id=f"{tab}_steps")
    return SamplerControls(sampler, scheduler, steps)


@dataclass
class SizeControls:
    width: gr.Slider
    height: gr.Slider
    swap: gr.Button


def build_size_controls(tab: str, size: tuple[int, int] = (512, 512)) -> SizeControls:
    """Width/height sliders starting at `size` (the startup checkpoint's native size)."""
    with gr.Row(elem_classes="size-row"):
        with gr.Column(scale=8, min_width=200):
            width = gr.Slider(64, 2048, value=size[0], step=8, label="Width", elem_id=f"{tab}_width")
            height = gr.Slider(64, 2048, value=size[1], step=8, label="Height", elem_id=f"{tab}_height")
        swap = gr.Button(SWAP_ICON, elem_id=f"{tab}_res_switch_btn", elem_classes="tool", size="sm", min_width=40,
                         scale=0)
    swap.click(lambda w, h: (h, w), [width, height], [width, height], show_progress="hidden", queue=False)
    return SizeControls(width, height, swap)


@dataclass
class BatchControls:
    batch_count: gr.Slider
    batch_size: gr.Slider


def build_batch_controls(tab: str) -> BatchControls:
    with gr.Row():
        count = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{tab}_batch_count")
        size = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{tab}_batch_size")
    return BatchControls(count, size)


@dataclass
class SeedControls:
    """Seed with 🎲 (random) and ♻️ (reuse the shown image's), plus the "Extra" variation-seed row."""

    seed: gr.Number
    random_seed: gr.Button
    reuse_seed: gr.Button
    extra: gr.Checkbox
    subseed: gr.Number
    random_subseed: gr.Button
    reuse_subseed: gr.Button
    subseed_strength: gr.Slider
    seed_resize_from_w: gr.Slider
    seed_resize_from_h: gr.Slider


def build_seed_controls(tab: str) -> SeedControls:
    with gr.Row(elem_id=f"{tab}_seed_row", elem_classes="seed-row"):
        seed = gr.Number(value=-1, label="Seed", precision=0, elem_id=f"{tab}_seed", scale=8, min_width=120)
        random_seed = gr.Button(RANDOM_SEED_ICON, elem_id=f"{tab}_random_seed", elem_classes="tool", size="sm",
                                min_width=40, scale=0)
        reuse_seed = gr.Button(REUSE_SEED_ICON, elem_id=f"{tab}_reuse_seed", elem_classes="tool", size="sm",
                               min_width=40, scale=0)
        extra = gr.Checkbox(label="Extra", value=False, elem_id=f"{tab}_subseed_show", scale=0, min_width=80)
    with gr.Group(visible=False, elem_id=f"{tab}_seed_extras") as extras:
        with gr.Row(elem_classes="seed-row"):
            subseed = gr.Number(value=-1, label="Variation seed", precision=0, elem_id=f"{tab}_subseed", scale=8,
                                min_width=120)
            random_subseed = gr.Button(RANDOM_SEED_ICON, elem_id=f"{tab}_random_subseed", elem_classes="tool",
                                       size="sm", min_width=40, scale=0)
            reuse_subseed = gr.Button(REUSE_SEED_ICON, elem_id=f"{tab}_reuse_subseed", elem_classes="tool",
                                      size="sm", min_width=40, scale=0)
            strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                 elem_id=f"{tab}_subseed_strength", scale=8)
        with gr.Row():
            resize_w = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from width",
                                 elem_id=f"{tab}_seed_resize_from_w")
            resize_h = gr.Slider(0, 2048, value=0, step=8, label="Resize seed from height",
                                 elem_id=f"{tab}_seed_resize_from_h")
    extra.change(lambda on: gr.update(visible=on), extra, extras, show_progress="hidden", queue=False)
    random_seed.click(lambda: -1, None, seed, show_progress="hidden", queue=False)
    random_subseed.click(lambda: -1, None, subseed, show_progress="hidden", queue=False)
    return SeedControls(seed, random_seed, reuse_seed, extra, subseed, random_subseed, reuse_subseed, strength,
                        resize_w, resize_h)


# ---------------------------------------------------------------------------
# Results: progress, live preview, gallery, buttons, infotext
# ---------------------------------------------------------------------------

@dataclass
class ResultsPanel:
    """What a generation shows: progress and preview while running, then images, buttons and infotext.

    `generation_info` holds the last Processed.js() as a dict (seeds and infotexts per image);
    `selected` the gallery index the user clicked (A1111 reads both for ♻️, Save and Send to).
    """

    progress: gr.HTML
    preview: gr.Image
    gallery: gr.Gallery
    save: gr.Button
    send_to_img2img: gr.Button | None
    send_to_inpaint: gr.Button | None
    send_to_extras: gr.Button
    upscale: gr.Button | None
    download: gr.File
    info: gr.HTML
    log: gr.HTML
    generation_info: gr.State
    selected: gr.State


def results_running(results: ResultsPanel) -> dict[Any, Any]:
    """The preview box in the gallery's place, empty until the first preview arrives."""
    return {results.gallery: gr.update(visible=False), results.preview: gr.update(visible=True, value=None),
            results.download: gr.update(visible=False, value=None), results.log: ""}


def results_idle(results: ResultsPanel) -> dict[Any, Any]:
    """The gallery back in its place, the progress bar gone."""
    return {results.gallery: gr.update(visible=True), results.preview: gr.update(visible=False, value=None),
            results.progress: ""}


def build_results(tab: str, *, send_to_generation: bool = True, upscale: bool = False) -> ResultsPanel:
    """The results column; `upscale` adds A1111's Upscale button (hires pass on the picture shown)."""
    with gr.Column(elem_id=f"{tab}_results", elem_classes="results"):
        progress = gr.HTML("", elem_id=f"{tab}_progress", elem_classes="progress-box", js_on_load=None)
        # While a job runs the live preview takes the gallery's place (A1111 overlays it there).
        preview = gr.Image(label="Preview", show_label=False, visible=False, interactive=False, format="jpeg",
                           elem_id=f"{tab}_preview", elem_classes="live-preview", buttons=[], height=GALLERY_HEIGHT)
        gallery = gr.Gallery(label="Output", show_label=False, elem_id=f"{tab}_gallery", columns=4,
                             height=GALLERY_HEIGHT,
                             object_fit="contain", format="png", interactive=False, preview=True,
                             buttons=["download", "fullscreen"])
        with gr.Row(elem_id=f"image_buttons_{tab}", elem_classes="image-buttons"):
            save = gr.Button("Save", size="sm", elem_id=f"save_{tab}", min_width=60)
            send_img2img = send_inpaint = None
            if send_to_generation:
                send_img2img = gr.Button("Send to img2img", size="sm",
                                         elem_id=f"{tab}_send_to_img2img", min_width=60)
                send_inpaint = gr.Button("Send to inpaint", size="sm",
                                         elem_id=f"{tab}_send_to_inpaint", min_width=60)
            send_extras = gr.Button("Send to extras", size="sm", elem_id=f"{tab}_send_to_extras",
                                    min_width=60)
            upscale_button = (gr.Button("Upscale", size="sm", elem_id=f"{tab}_upscale", min_width=60)
                              if upscale else None)
        download = gr.File(label="Saved file", visible=False, interactive=False, elem_id=f"download_files_{tab}")
        info = gr.HTML("", elem_id=f"html_info_{tab}", elem_classes="infotext", js_on_load=None)
        log = gr.HTML("", elem_id=f"html_log_{tab}", elem_classes="html-log", js_on_load=None)
    generation_info = gr.State({})
    selected = gr.State(0)
    return ResultsPanel(progress, preview, gallery, save, send_img2img, send_inpaint, send_extras, upscale_button,
                        download, info, log, generation_info, selected)


def infotext_html(text: str) -> str:
    """An infotext for the box under the gallery: prompt lines, then the parameters line."""
    if not text:
        return ""
    return "<div class='infotext-body'>" + "<br>".join(html.escape(line) for line in text.split("\n")) + "</div>"


def saved_html(paths: list[Path], data_dir: Path) -> str:
    if not paths:
        return ""
    shown = [str(p.relative_to(data_dir)) if p.is_relative_to(data_dir) else str(p) for p in paths]
    return ("<div class='saved'>Saved: " + ", ".join(f"<code>{html.escape(s)}</code>" for s in shown)
            + "</div>")


def gallery_image(gallery: list | None, index: int) -> Image.Image | None:
    """The gallery entry at `index` (Gradio hands the gallery over as (file path, caption) pairs)."""
    if not gallery:
        return None
    entry = gallery[min(max(int(index or 0), 0), len(gallery) - 1)]
    source = entry[0] if isinstance(entry, (tuple, list)) else entry
    if isinstance(source, Image.Image):
        return source
    with Image.open(source) as opened:
        opened.load()
        return opened.copy()


def selected_infotext(info: dict, index: int) -> str:
    texts = info.get("infotexts") or []
    if not texts:
        return ""
    return texts[min(max(int(index or 0), 0), len(texts) - 1)]


def wire_results(ctx: AppContext, results: ResultsPanel) -> None:
    """Clicking a picture shows its infotext; Save writes it to log/images and offers it for download."""
    def select(info: dict, evt: gr.SelectData) -> tuple[int, str]:
        return evt.index, infotext_html(selected_infotext(info, evt.index))

    results.gallery.select(select, results.generation_info, [results.selected, results.info],
                           show_progress="hidden")

    def save(gallery: list | None, index: int, info: dict) -> Any:
        image = gallery_image(gallery, index)
        if image is None:
            raise gr.Error("Nothing to save: generate an image first")
        text = selected_infotext(info, index) or read_info_from_image(image)[0]
        with shown_as_gr_error():
            path, _ = save_image(image, ctx.settings.data_dir / SAVE_DIR, "", extension=ctx.options["samples_format"],
                                 info=text, opts=ctx.options, save_to_dirs=False, no_prompt=True,
                                 short_filename=True)
        return gr.update(value=str(path), visible=True), saved_html([path], ctx.settings.data_dir)

    results.save.click(save, [results.gallery, results.selected, results.generation_info],
                       [results.download, results.log], show_progress="hidden")


def reuse_seed(info: dict, index: int, *, subseed: bool) -> Any:
    """♻️: the seed of the picture shown (A1111 skips the grid, which is not an image of its own)."""
    seeds = info.get("all_subseeds" if subseed else "all_seeds") or []
    if not seeds:
        return gr.skip()
    position = int(index or 0) - int(info.get("index_of_first_image", 0))
    return seeds[min(max(position, 0), len(seeds) - 1)]


def wire_reuse_seed(seed: SeedControls, results: ResultsPanel) -> None:
    seed.reuse_seed.click(lambda info, i: reuse_seed(info, i, subseed=False), [results.generation_info,
                          results.selected], seed.seed, show_progress="hidden")
    seed.reuse_subseed.click(lambda info, i: reuse_seed(info, i, subseed=True), [results.generation_info,
                             results.selected], seed.subseed, show_progress="hidden")


def upscaler_names(ctx: AppContext) -> list[str]:
    """None, Lanczos, Nearest, then the upscaler models found in the models folders."""
    return [u.name for u in ctx.upscalers.list()]

