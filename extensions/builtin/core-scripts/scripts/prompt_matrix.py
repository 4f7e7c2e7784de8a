"""Prompt matrix (A1111's scripts/prompt_matrix.py): "base|a|b" makes one image per combination of the
optional parts (base, base a, base b, base a b) and an annotated grid of them."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr

from backend.errors import InvalidRequest
from backend.postprocess import images as image_io
from backend.postprocess.grids import draw_prompt_matrix
from backend.processing.core import outdir
from backend.scripts import Script, process_images
from backend.scripts.generations import fix_seed

TITLE = "Prompt matrix"
PROMPT_TYPES = ("positive", "negative")
DELIMITERS = {"comma": ", ", "space": " "}


def matrix_prompts(prompt: str, *, put_at_start: bool = False, delimiter: str = ", ") -> tuple[list[str], list[str]]:
    """(the prompt parts split at "|", the prompt of every combination): combination n uses part k+1
    when bit k of n is set, so the first image is the base alone and the last has every part."""
    parts = prompt.split("|")
    prompts = []
    for combination in range(1 << (len(parts) - 1)):
        chosen = [text.strip().strip(",") for k, text in enumerate(parts[1:]) if combination & (1 << k)]
        prompts.append(delimiter.join([*chosen, parts[0]] if put_at_start else [parts[0], *chosen]))
    return parts, prompts


class PromptMatrix(Script):
    def title(self) -> str:
        return TITLE

    def ui(self, is_img2img: bool) -> list[Any]:
        gr.HTML("<br />")
        with gr.Row():
            with gr.Column():
                put_at_start = gr.Checkbox(label="Put variable parts at start of prompt", value=False,
                                           elem_id=self.elem_id("put_at_start"))
                different_seeds = gr.Checkbox(label="Use different seed for each picture", value=False,
                                              elem_id=self.elem_id("different_seeds"))
            with gr.Column():
                prompt_type = gr.Radio(list(PROMPT_TYPES), label="Select prompt", value="positive",
                                       elem_id=self.elem_id("prompt_type"))
                variations_delimiter = gr.Radio(list(DELIMITERS), label="Select joining char", value="comma",
                                                elem_id=self.elem_id("variations_delimiter"))
            with gr.Column():
                margin_size = gr.Slider(label="Grid margins (px)", minimum=0, maximum=500, value=0, step=2,
                                        elem_id=self.elem_id("margin_size"))
        return [put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]

    def run(self, p: Any, put_at_start: bool = False, different_seeds: bool = False, prompt_type: str = "positive",
            variations_delimiter: str = "comma", margin_size: float = 0) -> Any:
        if prompt_type not in PROMPT_TYPES:
            raise InvalidRequest("script_args",
                                 f"{TITLE}: unknown prompt type {prompt_type!r}; use positive or negative")
        if variations_delimiter not in DELIMITERS:
            raise InvalidRequest("script_args", f"{TITLE}: unknown joining char {variations_delimiter!r}; "
                                 "use comma or space")
        fix_seed(p)
        source = p.prompt if prompt_type == "positive" else p.negative_prompt
        original = source[0] if isinstance(source, list) else source
        parts, prompts = matrix_prompts(original, put_at_start=bool(put_at_start),
                                        delimiter=DELIMITERS[variations_delimiter])

        # A1111 lets the last batch run short; here every batch is full, so the batch size becomes the
        # largest one that divides the image count.
        p.batch_size = math.gcd(p.batch_size, len(prompts))
        p.n_iter = len(prompts) // p.batch_size
        p.do_not_save_grid = True
        if prompt_type == "positive":
            p.prompt = prompts
        else:
            p.negative_prompt = prompts
        p.seed = [p.seed + (i if different_seeds else 0) for i in range(len(prompts))]
        processed = process_images(p)
        if len(processed.images) != len(prompts):
            return processed  # interrupted: no matrix to label

        opts = p.context.options.with_overrides(p.override_settings)
        first = processed.images[0]
        grid = image_io.image_grid(processed.images, p.batch_size, rows=1 << ((len(parts) - 1) // 2),
                                   background=str(opts["grid_background_color"]))
        grid = draw_prompt_matrix(grid, first.width, first.height, parts, int(float(margin_size or 0)), opts=opts)
        if opts["enable_pnginfo"]:
            grid.info["parameters"] = processed.infotexts[0]
        processed.images.insert(0, grid)
        processed.infotexts.insert(0, processed.infotexts[0])
        processed.index_of_first_image = 1
        if opts["grid_save"]:
            path, _ = image_io.save_image(grid, outdir(p, p.context, opts, grid=True), "prompt_matrix",
                                          seed=processed.seed, prompt=original, extension=opts["grid_format"],
                                          info=processed.infotexts[0],
                                          short_filename=not opts["grid_extended_filename"],
                                          p=p, grid=True, opts=opts, callbacks=p.context.callbacks)
            processed.saved_paths.insert(0, path)
        return processed
