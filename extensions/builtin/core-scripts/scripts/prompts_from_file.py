"""Prompts from file or textbox (A1111's scripts/prompts_from_file.py): one generation per line.

A line is a prompt, or options in A1111's command-line style:
    --prompt "a cat" --negative_prompt "blurry" --steps 20 --cfg_scale 5 --seed 7 --sampler_name "Euler a"
"""
from __future__ import annotations

import random
import shlex
from collections.abc import Callable
from typing import Any

import gradio as gr

from backend.errors import InvalidRequest
from backend.postprocess import images as image_io
from backend.processing import Processed
from backend.processing.core import outdir
from backend.sampling import registry as samplers
from backend.scripts import Script
from backend.scripts.generations import Generations, copy_processing

TITLE = "Prompts from file or textbox"


def _boolean(value: str) -> bool:
    return value == "true"  # A1111: anything else is False


def _sampler(value: str) -> str:
    spec = samplers.find_sampler(value)
    if spec is None:
        raise ValueError(f"unknown sampler {value!r}")
    return spec.name


def _styles(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


# The options a line may set (A1111's prompt_tags); "sd_model" picks the checkpoint of that line.
PROMPT_TAGS: dict[str, Callable[[str], Any]] = {
    "sd_model": str,
    "outpath_samples": str,
    "outpath_grids": str,
    "prompt_for_display": str,
    "prompt": str,
    "negative_prompt": str,
    "styles": _styles,
    "seed": int,
    "subseed_strength": float,
    "subseed": int,
    "seed_resize_from_h": int,
    "seed_resize_from_w": int,
    "sampler_index": int,
    "sampler_name": _sampler,
    "batch_size": int,
    "n_iter": int,
    "steps": int,
    "cfg_scale": float,
    "width": int,
    "height": int,
    "restore_faces": _boolean,
    "tiling": _boolean,
    "do_not_save_samples": _boolean,
    "do_not_save_grid": _boolean,
}


def cmdargs(line: str) -> dict[str, Any]:
    """A line's options (A1111's parser): `--tag value` pairs; the values of --prompt and
    --negative_prompt run up to the next `--tag`, so they need no quotes. ValueError when malformed."""
    args = shlex.split(line)
    result: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise ValueError(f'must start with "--": {arg}')
        if pos + 1 >= len(args):
            raise ValueError(f"missing argument for command line option {arg}")
        tag = arg[2:]
        if tag in ("prompt", "negative_prompt"):
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            result[tag] = " ".join(words)
            continue
        convert = PROMPT_TAGS.get(tag)
        if convert is None:
            raise ValueError(f"unknown commandline option: {arg}")
        result[tag] = convert(args[pos + 1])
        pos += 2
    return result


def parse_line(line: str, number: int) -> dict[str, Any]:
    """What one line asks for. Lines starting with "--" must parse; other lines that merely contain
    "--" are prompts (A1111 falls back the same way)."""
    if "--" not in line:
        return {"prompt": line}
    try:
        return cmdargs(line)
    except ValueError as e:
        if line.startswith("--"):
            raise InvalidRequest("script_args", f"{TITLE}: line {number}: {e}") from None
        return {"prompt": line}


class PromptsFromFile(Script):
    def title(self) -> str:
        return TITLE

    def ui(self, is_img2img: bool) -> list[Any]:
        checkbox_iterate = gr.Checkbox(label="Iterate seed every line", value=False,
                                       elem_id=self.elem_id("checkbox_iterate"))
        checkbox_iterate_batch = gr.Checkbox(label="Use same random seed for all lines", value=False,
                                             elem_id=self.elem_id("checkbox_iterate_batch"))
        prompt_position = gr.Radio(["start", "end"], label="Insert prompts at the", value="start",
                                   elem_id=self.elem_id("prompt_position"))
        make_combined = gr.Checkbox(label="Make a combined image containing all outputs (if more than one)",
                                    value=False)
        prompt_txt = gr.Textbox(value="", label="List of prompt inputs", lines=2, elem_id=self.elem_id("prompt_txt"))
        file = gr.File(label="Upload prompt inputs", type="binary", elem_id=self.elem_id("file"))

        def load(data: bytes | None) -> tuple[Any, Any]:
            if data is None:
                return None, gr.update()
            lines = [line.strip() for line in data.decode("utf8", errors="ignore").split("\n")]
            return None, gr.update(value="\n".join(lines), lines=7)

        file.upload(load, [file], [file, prompt_txt], show_progress="hidden")
        return [checkbox_iterate, checkbox_iterate_batch, prompt_position, prompt_txt, make_combined]

    def run(self, p: Any, checkbox_iterate: bool = False, checkbox_iterate_batch: bool = False,
            prompt_position: str = "start", prompt_txt: str = "", make_combined: bool = False) -> Any:
        lines = [line for line in (raw.strip() for raw in (prompt_txt or "").splitlines()) if line]
        if not lines:
            raise InvalidRequest("script_args", f"{TITLE}: the list of prompt inputs is empty")
        jobs = [parse_line(line, number) for number, line in enumerate(lines, start=1)]
        registry = p.context.models.registry
        for job in jobs:
            if "sd_model" in job:
                info = registry.find(job["sd_model"])
                if info is None:
                    raise InvalidRequest("script_args", f"{TITLE}: unknown checkpoint {job['sd_model']!r}")
                job["sd_model"] = info.title

        p.do_not_save_grid = True
        if (checkbox_iterate or checkbox_iterate_batch) and p.seed in (-1, "-1", "", None):
            p.seed = random.randrange(4294967294)  # one seed to start every line from (A1111)
        generations = Generations(p, sum(int(job.get("n_iter", p.n_iter)) for job in jobs))

        images, prompts, negatives, infotexts, seeds, subseeds, saved = [], [], [], [], [], [], []
        for job in jobs:
            if generations.interrupted:
                break
            line_p = copy_processing(p)
            for key, value in job.items():
                if key == "sd_model":
                    line_p.override_settings["sd_model_checkpoint"] = value
                else:
                    setattr(line_p, key, value)
            # The main prompts stay, the line's text goes before or after them.
            for key in ("prompt", "negative_prompt"):
                if job.get(key) and getattr(p, key):
                    joined = (job[key], getattr(p, key)) if prompt_position == "start" else (getattr(p, key), job[key])
                    setattr(line_p, key, " ".join(joined))
            processed = generations.process(line_p)
            images += processed.images
            prompts += processed.all_prompts
            negatives += processed.all_negative_prompts
            infotexts += processed.infotexts
            seeds += processed.all_seeds
            subseeds += processed.all_subseeds
            saved += processed.saved_paths
            if checkbox_iterate:
                p.seed = int(p.seed) + p.batch_size * p.n_iter

        if make_combined and len(images) > 1:
            combined, text = self._combine(p, images, infotexts, prompt_txt, saved)
            images.insert(0, combined)
            prompts.insert(0, prompt_txt)
            infotexts.insert(0, text)
        seed = seeds[0] if seeds else -1
        return Processed(images=images, infotexts=infotexts, p=p, seed=seed, subseed=subseeds[0] if subseeds else -1,
                         all_seeds=seeds, all_subseeds=subseeds, all_prompts=prompts, all_negative_prompts=negatives,
                         info=infotexts[0] if infotexts else "", saved_paths=saved,
                         interrupted=generations.interrupted)

    @staticmethod
    def _combine(p: Any, images: list[Any], infotexts: list[str], prompt_txt: str, saved: list[Any]) -> tuple[Any, str]:
        """One grid of every output, saved with the grids (or the images when grids are not saved)."""
        opts = p.context.options.with_overrides(p.override_settings)
        combined = image_io.image_grid(images, 1, n_rows=int(opts["n_rows"]),
                                       prevent_empty_spots=bool(opts["grid_prevent_empty_spots"]),
                                       background=str(opts["grid_background_color"])).convert("RGB")
        text = "\n".join(infotexts)
        grid = bool(opts["grid_save"])
        path, _ = image_io.save_image(combined, outdir(p, p.context, opts, grid=grid), "", seed=-1, prompt=prompt_txt,
                                      extension=opts["grid_format" if grid else "samples_format"], info=text,
                                      grid=grid, opts=opts, callbacks=p.context.callbacks)
        saved.insert(0, path)
        return combined, text
