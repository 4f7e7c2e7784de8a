"""The X/Y/Z plot (A1111's scripts/xyz_grid.py, a1111.md 9): the axis table, value parsing and the run.

Every cell of the plot is one `process_images(copy(p))` with up to three axis values applied; the
first image of each cell goes into a grid per Z value, labelled with the X and Y values, and the grids
are joined side by side under the Z labels. The built-in "core-scripts" extension gives it its UI;
everything here is gradio-free so the parsing and the plot can be tested directly.

Axes keep A1111 v1.10.1's lists and positions (42 for txt2img, 41 for img2img), so API payloads that
pick an axis by index mean the same axis. Axes for features this backend does not have stay in their
slot and fail with InvalidRequest naming them. Every cell is built and validated before the first
image is generated, so a bad value fails the request at once instead of leaving blank cells.
"""
from __future__ import annotations

import csv
import itertools
import logging
import os
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from io import StringIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from backend.errors import InvalidRequest, WebUIError
from backend.postprocess import images as image_io
from backend.postprocess.grids import GridAnnotation, draw_grid_annotations
from backend.postprocess.infotext import add_extra_params
from backend.postprocess.upscalers import LATENT_UPSCALE_MODES, find_latent_mode
from backend.processing import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
)
from backend.processing.core import outdir
from backend.sampling import registry as samplers
from backend.scripts.generations import Generations, copy_processing, fix_seed

log = logging.getLogger(__name__)

TITLE = "X/Y/Z plot"
GRID_BASENAME = "xyz_grid"
AXES = "XYZ"
SEED_AXES = ("Seed", "Var. seed")
RNG_SOURCES = ("GPU", "CPU", "NV")
FACE_RESTORE_VALUES = ("codeformer", "gfpgan", "true", "yes", "y", "1", "false", "no", "n", "0")


class AxisValueError(ValueError):
    """A value an axis cannot take; the plot reports it as InvalidRequest naming the axis."""


# ---------------------------------------------------------------------------
# Applying values to a processing object
# ---------------------------------------------------------------------------

Apply = Callable[[StableDiffusionProcessing, Any, Sequence[Any]], None]


def apply_field(name: str) -> Apply:
    def apply(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
        setattr(p, name, x)
    return apply


def apply_override(key: str, *, boolean: bool = False) -> Apply:
    """A per-request setting (override_settings); booleans come as the strings "True"/"False"."""
    def apply(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
        p.override_settings[key] = str(x).lower() == "true" if boolean else x
    return apply


def _single_prompts(p: StableDiffusionProcessing) -> tuple[str, str]:
    if not isinstance(p.prompt, str) or not isinstance(p.negative_prompt, str):
        raise AxisValueError("needs a single prompt and negative prompt, not a list")
    return p.prompt, p.negative_prompt


def apply_prompt(p: StableDiffusionProcessing, x: str, xs: Sequence[str]) -> None:
    """Prompt S/R: every occurrence of the first value is replaced by this one, in both prompts."""
    prompt, negative = _single_prompts(p)
    search = xs[0]
    if search not in prompt and search not in negative:
        raise AxisValueError(f"Prompt S/R did not find {search} in prompt or negative prompt.")
    p.prompt = prompt.replace(search, x)
    p.negative_prompt = negative.replace(search, x)


def apply_order(p: StableDiffusionProcessing, x: Sequence[str], xs: Sequence[Any]) -> None:
    """Prompt order: the listed tokens swap places so they appear in the order of `x`."""
    prompt, _ = _single_prompts(p)
    missing = [token for token in x if token not in prompt]
    if missing:
        raise AxisValueError(f"Prompt order did not find {', '.join(missing)} in the prompt")
    # Cut the prompt at each token, earliest first, then put the tokens back in the wanted order.
    parts = []
    rest = prompt
    for token in sorted(x, key=prompt.find):
        at = rest.find(token)
        parts.append(rest[:at])
        rest = rest[at + len(token):]
    p.prompt = "".join(part + token for part, token in zip(parts, x)) + rest


def apply_sampler(name: str) -> Apply:
    def apply(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
        spec = samplers.find_sampler(x)
        if spec is None:
            raise AxisValueError(f"Unknown sampler: {x}")
        setattr(p, name, spec.name)
    return apply


def apply_scheduler(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    spec = samplers.find_scheduler(x)
    if spec is None:
        raise AxisValueError(f"Unknown schedule type: {x}")
    p.scheduler = spec.label


def apply_checkpoint(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    """The closest checkpoint match becomes this cell's sd_model_checkpoint (the shared setting is untouched)."""
    info = _registry(p).find(x)
    if info is None:
        raise AxisValueError(f"Unknown checkpoint: {x}")
    p.override_settings["sd_model_checkpoint"] = info.title


def apply_vae(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    """Automatic, None or a VAE file's name (A1111 matches them case-insensitively) becomes this cell's sd_vae."""
    choice = x.strip().lower()
    if choice in ("auto", "automatic"):
        p.override_settings["sd_vae"] = "Automatic"
    elif choice == "none":
        p.override_settings["sd_vae"] = "None"
    else:
        names = [] if p.context is None else p.context.models.vaes.names()
        found = next((name for name in names if name.lower() == choice), None)
        if found is None:
            raise AxisValueError(f"Unknown VAE: {x}")
        p.override_settings["sd_vae"] = found


def apply_styles(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    names = [name.strip() for name in x.split(",") if name.strip()]
    styles = getattr(p.context, "styles", None)
    unknown = [name for name in names if styles is None or styles.get(name) is None]
    if unknown:
        raise AxisValueError(f"unknown style {', '.join(unknown)}")
    p.styles.extend(names)


def apply_uni_pc_order(p: StableDiffusionProcessing, x: int, xs: Sequence[Any]) -> None:
    p.override_settings["uni_pc_order"] = min(x, p.steps - 1)


def apply_face_restore(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    choice = x.strip().lower()
    if choice not in FACE_RESTORE_VALUES:
        raise AxisValueError(f"Face restore takes CodeFormer, GFPGAN, true or false, got {x!r}")
    if choice in ("codeformer", "gfpgan"):
        p.restore_faces = True
        p.override_settings["face_restoration_model"] = "CodeFormer" if choice == "codeformer" else "GFPGAN"
    else:
        p.restore_faces = choice in ("true", "yes", "y", "1")


def apply_size(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    width, _, height = x.partition("x")
    try:
        p.width, p.height = int(width.strip()), int(height.strip())
    except ValueError:
        raise AxisValueError(f"Size must be WIDTHxHEIGHT, got {x!r}") from None


def apply_hires_upscaler(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
    if find_latent_mode(x) is None:
        upscalers = getattr(p.context, "upscalers", None)
        if upscalers is None:
            raise AxisValueError(f"unknown upscaler {x!r}")
        try:
            upscalers.get(x)
        except WebUIError as e:
            raise AxisValueError(str(e)) from None
    p.hr_upscaler = x  # type: ignore[attr-defined]


def apply_choice(key: str, choices: Sequence[str]) -> Apply:
    """An override that must be one of `choices` (case-insensitive)."""
    def apply(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
        match = next((c for c in choices if c.lower() == str(x).strip().lower()), None)
        if match is None:
            raise AxisValueError(f"must be one of {', '.join(choices)}, got {x!r}")
        p.override_settings[key] = match
    return apply


def apply_boolean(key: str) -> Apply:
    checked = apply_choice(key, ("True", "False"))
    setting = apply_override(key, boolean=True)

    def apply(p: StableDiffusionProcessing, x: str, xs: Sequence[Any]) -> None:
        checked(p, x, xs)
        setting(p, x, xs)
    return apply


def do_nothing(p: StableDiffusionProcessing, x: Any, xs: Sequence[Any]) -> None:
    """The "Nothing" axis."""


def _registry(p: StableDiffusionProcessing) -> Any:
    if p.context is None:
        raise AxisValueError("checkpoints can only be looked up inside a job")
    return p.context.models.registry


# ---------------------------------------------------------------------------
# Labels and choices
# ---------------------------------------------------------------------------

def _rounded(x: Any) -> Any:
    return round(x, 8) if type(x) is float else x


def format_with_label(axis: AxisOption, x: Any) -> str:
    return f"{axis.label}: {_rounded(x)}"


def format_raw(axis: AxisOption, x: Any) -> str:
    return str(_rounded(x))


def format_joined(axis: AxisOption, x: Sequence[str]) -> str:
    return ", ".join(x)


def format_nothing(axis: AxisOption, x: Any) -> str:
    return ""


def format_basename(axis: AxisOption, x: str) -> str:
    return os.path.basename(x)


# `source` is what the UI or a job has: .models (ModelManager), .upscalers, .styles; None before start-up.
Choices = Callable[[Any], list[str]]


def sampler_choices(source: Any) -> list[str]:
    return [spec.name for spec in samplers.SAMPLERS]


def scheduler_choices(source: Any) -> list[str]:
    return [spec.label for spec in samplers.SCHEDULERS]


def checkpoint_choices(source: Any) -> list[str]:
    if source is None:
        return []
    return sorted(source.models.registry.titles(), key=str.casefold)


def hires_upscaler_choices(source: Any) -> list[str]:
    names = [mode.name for mode in LATENT_UPSCALE_MODES]
    if source is not None and source.upscalers is not None:
        names += [info.name for info in source.upscalers.list()]
    return names


def vae_choices(source: Any) -> list[str]:
    return ["Automatic", "None", *([] if source is None else source.models.vaes.names())]


def style_choices(source: Any) -> list[str]:
    styles = getattr(source, "styles", None)
    return [] if styles is None else list(styles.names())


def boolean_choices(source: Any) -> list[str]:
    return ["False", "True"]


def rng_choices(source: Any) -> list[str]:
    return list(RNG_SOURCES)


# ---------------------------------------------------------------------------
# The axis table
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AxisOption:
    """One axis type. `kind` is "int", "float", "str" or "permutations" (Prompt order).

    `tab` limits it to "txt2img" or "img2img"; `unavailable`, when set, says why this backend
    cannot vary it (the axis keeps its slot so the indices stay A1111's).
    """

    label: str
    kind: str
    apply: Apply
    format_value: Callable[[AxisOption, Any], str] = format_with_label
    cost: float = 0.0
    choices: Choices | None = None
    tab: str | None = None
    unavailable: str | None = None


def _unavailable(label: str, kind: str, reason: str, *, tab: str | None = None) -> AxisOption:
    return AxisOption(label, kind, do_nothing, tab=tab, unavailable=reason)


_TOME = "token merging is not implemented in this backend"
_REFINER = "the SDXL refiner pass is not implemented in this backend"

# A1111 v1.10.1's list in order; each tab sees the rows without a `tab` or with its own.
AXIS_OPTIONS: tuple[AxisOption, ...] = (
    AxisOption("Nothing", "str", do_nothing, format_value=format_nothing),
    AxisOption("Seed", "int", apply_field("seed")),
    AxisOption("Var. seed", "int", apply_field("subseed")),
    AxisOption("Var. strength", "float", apply_field("subseed_strength")),
    AxisOption("Steps", "int", apply_field("steps")),
    AxisOption("Hires steps", "int", apply_field("hr_second_pass_steps"), tab="txt2img"),
    AxisOption("CFG Scale", "float", apply_field("cfg_scale")),
    _unavailable("Image CFG Scale", "float", "only instruct-pix2pix models use an image CFG scale, and they "
                 "are not supported", tab="img2img"),
    AxisOption("Prompt S/R", "str", apply_prompt, format_value=format_raw),
    AxisOption("Prompt order", "permutations", apply_order, format_value=format_joined),
    AxisOption("Sampler", "str", apply_sampler("sampler_name"), format_value=format_raw, choices=sampler_choices,
               tab="txt2img"),
    AxisOption("Hires sampler", "str", apply_sampler("hr_sampler_name"), choices=sampler_choices, tab="txt2img"),
    AxisOption("Sampler", "str", apply_sampler("sampler_name"), format_value=format_raw, choices=sampler_choices,
               tab="img2img"),
    AxisOption("Checkpoint name", "str", apply_checkpoint, format_value=format_basename, cost=1.0,
               choices=checkpoint_choices),
    AxisOption("Negative Guidance minimum sigma", "float", apply_field("s_min_uncond")),
    AxisOption("Sigma Churn", "float", apply_field("s_churn")),
    AxisOption("Sigma min", "float", apply_field("s_tmin")),
    AxisOption("Sigma max", "float", apply_field("s_tmax")),
    AxisOption("Sigma noise", "float", apply_field("s_noise")),
    AxisOption("Schedule type", "str", apply_scheduler, choices=scheduler_choices),
    AxisOption("Schedule min sigma", "float", apply_override("sigma_min")),
    AxisOption("Schedule max sigma", "float", apply_override("sigma_max")),
    AxisOption("Schedule rho", "float", apply_override("rho")),
    AxisOption("Beta schedule alpha", "float", apply_override("beta_dist_alpha")),
    AxisOption("Beta schedule beta", "float", apply_override("beta_dist_beta")),
    AxisOption("Eta", "float", apply_field("eta")),
    AxisOption("Clip skip", "int", apply_override("CLIP_stop_at_last_layers")),
    AxisOption("Denoising", "float", apply_field("denoising_strength")),
    # A1111 offers it on txt2img too, where nothing reads it; here that is an error instead of identical cells.
    _unavailable("Initial noise multiplier", "float", "only img2img uses an initial noise multiplier", tab="txt2img"),
    AxisOption("Initial noise multiplier", "float", apply_field("initial_noise_multiplier"), tab="img2img"),
    _unavailable("Extra noise", "float", "img2img extra noise (img2img_extra_noise) is not implemented"),
    AxisOption("Hires upscaler", "str", apply_hires_upscaler, choices=hires_upscaler_choices, tab="txt2img"),
    AxisOption("Cond. Image Mask Weight", "float", apply_override("inpainting_mask_weight"), tab="img2img"),
    AxisOption("VAE", "str", apply_vae, cost=0.7, choices=vae_choices),
    AxisOption("Styles", "str", apply_styles, choices=style_choices),
    AxisOption("UniPC Order", "int", apply_uni_pc_order, cost=0.5),
    AxisOption("Face restore", "str", apply_face_restore, format_value=format_raw),
    _unavailable("Token merging ratio", "float", _TOME),
    _unavailable("Token merging ratio high-res", "float", _TOME),
    AxisOption("Always discard next-to-last sigma", "str", apply_boolean("always_discard_next_to_last_sigma"),
               choices=boolean_choices),
    AxisOption("SGM noise multiplier", "str", apply_boolean("sgm_noise_multiplier"), choices=boolean_choices),
    _unavailable("Refiner checkpoint", "str", _REFINER),
    _unavailable("Refiner switch at", "float", _REFINER),
    AxisOption("RNG source", "str", apply_choice("randn_source", RNG_SOURCES), choices=rng_choices),
    _unavailable("FP8 mode", "str", "FP8 weight storage is not implemented in this backend"),
    AxisOption("Size", "str", apply_size),
)


def axis_options(is_img2img: bool) -> list[AxisOption]:
    """The axes of one tab, in A1111's order: their positions are the API's x_type/y_type/z_type."""
    tab = "img2img" if is_img2img else "txt2img"
    return [axis for axis in AXIS_OPTIONS if axis.tab in (None, tab)]


def find_axis(options: Sequence[AxisOption], value: Any, letter: str = "X") -> AxisOption:
    """The axis an `x_type` names: its index (as the UI sends it), or its label (as the UI's default is)."""
    if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
        match = next((axis for axis in options if axis.label.lower() == value.strip().lower()), None)
        if match is None:
            raise InvalidRequest("script_args", f"{TITLE}: unknown {letter} type {value!r}")
        return match
    try:
        index = int(value)
    except (TypeError, ValueError):
        raise InvalidRequest("script_args", f"{TITLE}: {letter} type must be an axis index or label, got {value!r}") \
            from None
    if not 0 <= index < len(options):
        raise InvalidRequest("script_args", f"{TITLE}: {letter} type {index} is out of range 0..{len(options) - 1}")
    return options[index]


# ---------------------------------------------------------------------------
# Value parsing
# ---------------------------------------------------------------------------

def csv_string_to_list_strip(text: str) -> list[str]:
    """A1111's value list: CSV (quotes allow commas; new lines separate too), each value stripped."""
    rows = csv.reader(StringIO(text), skipinitialspace=True)
    return [value.strip() for value in itertools.chain.from_iterable(rows)]


def list_to_csv_string(values: Iterable[str]) -> str:
    with StringIO() as out:
        csv.writer(out).writerow(list(values))
        return out.getvalue().strip()


_INT = r"([+-]?\s*\d+)"
_FLOAT = r"([+-]?\s*\d+(?:\.\d*)?)"
# "a-b", "a-b (+s)" / "a-b (-s)" (the sign is required) and "a-b [n]" (n values, evenly spaced).
_INT_STEP = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\(([+-]\d+)\s*\))?\s*")
_INT_COUNT = re.compile(rf"\s*{_INT}\s*-\s*{_INT}(?:\s*\[(\d+)\s*\])?\s*")
_FLOAT_STEP = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\(([+-]\d+(?:\.\d*)?)\s*\))?\s*")
_FLOAT_COUNT = re.compile(rf"\s*{_FLOAT}\s*-\s*{_FLOAT}(?:\s*\[(\d+)\s*\])?\s*")


def _number(text: str) -> str:
    return text.replace(" ", "")


def _expand_int(value: str) -> list[Any]:
    if (m := _INT_STEP.fullmatch(value)) is not None:
        start, end = int(_number(m[1])), int(_number(m[2]))
        step = int(m[3]) if m[3] is not None else 1
        if step == 0:
            raise AxisValueError(f"a range step cannot be 0: {value!r}")
        return list(range(start, end + 1, step))
    if (m := _INT_COUNT.fullmatch(value)) is not None:
        count = int(m[3]) if m[3] is not None else 1
        return [int(x) for x in np.linspace(int(_number(m[1])), int(_number(m[2])), count).tolist()]
    return [value]


def _expand_float(value: str) -> list[Any]:
    if (m := _FLOAT_STEP.fullmatch(value)) is not None:
        start, end = float(_number(m[1])), float(_number(m[2]))
        step = float(m[3]) if m[3] is not None else 1.0
        if step == 0:
            raise AxisValueError(f"a range step cannot be 0: {value!r}")
        # np.arange up to end + step, as A1111: "0-1 (+0.3)" gives 0, 0.3, 0.6, 0.9 and 1.2.
        return np.arange(start, end + step, step).tolist()
    if (m := _FLOAT_COUNT.fullmatch(value)) is not None:
        count = int(m[3]) if m[3] is not None else 1
        return np.linspace(float(_number(m[1])), float(_number(m[2])), count).tolist()
    return [value]


def parse_values(axis: AxisOption, text: str | None, dropdown: Sequence[str] | None = None,
                 csv_mode: bool = False) -> list[Any]:
    """The values of one axis, as A1111's process_axis reads them.

    Axes with choices take the dropdown's list unless `csv_mode`; when the dropdown is empty the text
    is read instead (API clients written for A1111 before 1.6 send text only). Ranges expand for int
    and float axes; Prompt order gives every permutation of its tokens.
    """
    if axis.label == "Nothing":
        return [0]
    if axis.choices is not None and not csv_mode and dropdown:
        values: list[Any] = [str(v) for v in dropdown]
    else:
        values = csv_string_to_list_strip(text or "")
    if axis.kind == "int":
        values = [_convert(int, v) for raw in values for v in _expand_int(raw)]
    elif axis.kind == "float":
        values = [_convert(float, v) for raw in values for v in _expand_float(raw)]
    elif axis.kind == "permutations":
        values = [tuple(order) for order in itertools.permutations(values)]
    return values


def _convert(kind: Callable[[Any], Any], value: Any) -> Any:
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise AxisValueError(f"{value!r} is not a valid {kind.__name__}") from None


# ---------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------

@dataclass
class PlotArgs:
    """The script's 18 arguments, in A1111's order (a1111.md 9)."""

    x_type: Any = 1
    x_values: str = ""
    x_values_dropdown: Sequence[str] | None = None
    y_type: Any = 0
    y_values: str = ""
    y_values_dropdown: Sequence[str] | None = None
    z_type: Any = 0
    z_values: str = ""
    z_values_dropdown: Sequence[str] | None = None
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    vary_seeds_x: bool = False
    vary_seeds_y: bool = False
    vary_seeds_z: bool = False
    margin_size: int = 0
    csv_mode: bool = False

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> PlotArgs:
        """From script_args (the runner pads missing ones with the UI defaults); flags given as
        "true"/"false" strings by API clients mean what they say."""
        plot = cls(*args[:18])
        for name in ("draw_legend", "include_lone_images", "include_sub_grids", "no_fixed_seeds",
                     "vary_seeds_x", "vary_seeds_y", "vary_seeds_z", "csv_mode"):
            setattr(plot, name, _flag(getattr(plot, name)))
        try:
            plot.margin_size = int(float(plot.margin_size or 0))
        except (TypeError, ValueError):
            raise InvalidRequest("script_args", f"{TITLE}: margin size must be a number, got {plot.margin_size!r}") \
                from None
        return plot


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)


@dataclass
class Axis:
    """One axis of a running plot: its type, its values and the text that described them."""

    letter: str
    option: AxisOption
    values: list[Any]
    text: str
    vary_seeds: bool

    @property
    def labels(self) -> list[str]:
        return [str(self.option.format_value(self.option, x)) for x in self.values]

    def error(self, reason: str) -> InvalidRequest:
        return InvalidRequest("script_args", f"{TITLE}: {self.letter} axis {self.option.label!r}: {reason}")


@dataclass
class Cell:
    ix: int
    iy: int
    iz: int
    p: StableDiffusionProcessing
    processed: Processed | None = None
    error: Exception | None = None


def _axis(letter: str, options: Sequence[AxisOption], type_value: Any, text: Any, dropdown: Any, csv_mode: bool,
          vary: bool) -> Axis:
    option = find_axis(options, type_value, letter)
    if option.unavailable:
        raise InvalidRequest("script_args", f"{TITLE}: the {letter} axis {option.label!r} is not available: "
                             f"{option.unavailable}")
    text = "" if text is None else str(text)
    dropdown = list(dropdown) if isinstance(dropdown, (list, tuple)) else None
    if option.choices is not None and not csv_mode and dropdown:
        text = list_to_csv_string(dropdown)  # what the infotext shows as "X Values"
    axis = Axis(letter, option, [], text, vary)
    try:
        axis.values = parse_values(option, text, dropdown, csv_mode)
    except AxisValueError as e:
        raise axis.error(str(e)) from None
    if not axis.values:
        raise axis.error(f"no values in {text!r}")
    return axis


def _fix_axis_seeds(axis: Axis) -> None:
    """Seed axes: -1 (or an empty value) becomes a random seed, so the grid can be reproduced."""
    if axis.option.label in SEED_AXES:
        axis.values = [random.randrange(4294967294) if v in (None, "", -1) else v for v in axis.values]


def iteration_order(costs: Mapping[str, float]) -> tuple[str, str, str]:
    """Outermost axis first: the costliest (checkpoint switches), by A1111's rules; z, y, x by default."""
    x, y, z = costs["X"], costs["Y"], costs["Z"]
    if x > y and x > z:
        first, second = "X", ("Y" if y > z else "Z")
    elif y > x and y > z:
        first, second = "Y", ("X" if x > z else "Z")
    elif z > x and z > y:
        first, second = "Z", ("X" if x > y else "Y")
    else:
        first, second = "Z", "Y"
    third = next(letter for letter in AXES if letter not in (first, second))
    return first, second, third


def _describe(axes: Sequence[Axis], index: tuple[int, int, int]) -> str:
    parts = [f"{axis.letter}={axis.values[i]!r}" for axis, i in zip(axes, index) if axis.option.label != "Nothing"]
    return ", ".join(parts) or "the only cell"


def _build_cell(p: StableDiffusionProcessing, axes: Sequence[Axis], index: tuple[int, int, int]) -> Cell:
    """The processing object of one cell: axis values applied, seeds varied, then validated."""
    pc = copy_processing(p)
    for axis, i in zip(axes, index):
        try:
            axis.option.apply(pc, axis.values[i], axis.values)
        except AxisValueError as e:
            raise axis.error(str(e)) from None
    if isinstance(pc.seed, int) and pc.seed != -1:
        # "Vary seeds": each ticked axis adds its position, counted over the ticked axes before it.
        x_axis, y_axis, z_axis = axes
        x_dim = len(x_axis.values) if x_axis.vary_seeds else 1
        y_dim = len(y_axis.values) if y_axis.vary_seeds else 1
        pc.seed += (index[0] if x_axis.vary_seeds else 0) + (index[1] * x_dim if y_axis.vary_seeds else 0) \
            + (index[2] * x_dim * y_dim if z_axis.vary_seeds else 0)
    try:
        pc.validate()
        if pc.context is not None:
            pc.context.options.with_overrides(pc.override_settings)
    except InvalidRequest as e:
        raise InvalidRequest(e.field, f"{e.reason} ({TITLE} cell {_describe(axes, index)})") from None
    return Cell(*index, pc)


def run_plot(p: StableDiffusionProcessing, args: PlotArgs) -> Processed:
    """Run the plot inside the job that `p` belongs to and return the grid(s) and cells."""
    ctx = p.context
    if ctx is None:
        raise RuntimeError("the X/Y/Z plot runs inside a job; submit the request through the application")
    options = axis_options(isinstance(p, StableDiffusionProcessingImg2Img))
    axes = [
        _axis("X", options, args.x_type, args.x_values, args.x_values_dropdown, args.csv_mode, args.vary_seeds_x),
        _axis("Y", options, args.y_type, args.y_values, args.y_values_dropdown, args.csv_mode, args.vary_seeds_y),
        _axis("Z", options, args.z_type, args.z_values, args.z_values_dropdown, args.csv_mode, args.vary_seeds_z),
    ]
    # 1. Seeds and settings as A1111: one concrete seed for the whole plot unless "Keep -1 for seeds".
    if not args.no_fixed_seeds:
        fix_seed(p)
        for axis in axes:
            _fix_axis_seeds(axis)
    opts = ctx.options.with_overrides(p.override_settings)
    if not opts["return_grid"]:
        p.batch_size = 1
    nx, ny, nz = (len(axis.values) for axis in axes)
    grid_mp = round(nx * ny * nz * p.width * p.height / 1_000_000)
    if grid_mp >= float(opts["img_max_size_mp"]):
        raise InvalidRequest("script_args", f"{TITLE}: the grid would be too large ({grid_mp} MPixels; the maximum "
                             f"is {opts['img_max_size_mp']} MPixels, setting img_max_size_mp)")

    # 2. Every cell built and validated before the first image.
    cells = {index: _build_cell(p, axes, index)
             for index in itertools.product(range(nx), range(ny), range(nz))}

    # 3. Generate, the costliest axis outermost so checkpoints switch as rarely as possible.
    order = iteration_order({axis.letter: axis.option.cost for axis in axes})
    sizes = {axis.letter: len(axis.values) for axis in axes}
    hires = isinstance(p, StableDiffusionProcessingTxt2Img) and p.enable_hr and p.firstpass_image is None
    generations = Generations(p, len(cells) * p.n_iter * (2 if hires else 1))
    models_before = ctx.models.current
    try:
        for outer, middle, inner in itertools.product(*(range(sizes[letter]) for letter in order)):
            position = dict(zip(order, (outer, middle, inner)))
            cell = cells[(position["X"], position["Y"], position["Z"])]
            if generations.interrupted:
                break
            try:
                cell.processed = generations.process(cell.p)
            except Exception as e:  # a failed cell stays blank, as A1111; the result says why
                log.exception("%s: cell %s failed", TITLE, _describe(axes, (cell.ix, cell.iy, cell.iz)))
                cell.error = e
    finally:
        if any(axis.option.label == "Checkpoint name" for axis in axes) and models_before is not None \
                and ctx.models.current is not None and ctx.models.current.filename != models_before.filename:
            # The checkpoint the plot started with is the default again (A1111 reloads it too).
            ctx.models.get(models_before.title)

    # 4. Grids, infotexts, saving.
    return _assemble(p, axes, [cells[(ix, iy, iz)] for iz in range(nz) for iy in range(ny) for ix in range(nx)],
                     args, opts, interrupted=generations.interrupted)


def _assemble(p: StableDiffusionProcessing, axes: Sequence[Axis], cells: list[Cell], args: PlotArgs,
              opts: Mapping[str, Any], *, interrupted: bool) -> Processed:
    done = [cell for cell in cells if cell.processed is not None and cell.processed.images]
    if not done:
        failed = next((cell.error for cell in cells if cell.error is not None), None)
        if failed is not None and not interrupted:
            raise failed  # no image at all: the request fails with the first cell's error
        return Processed(images=[], infotexts=[], p=p, seed=int(p.seed) if isinstance(p.seed, int) else -1,
                         subseed=-1, all_seeds=[], all_subseeds=[], all_prompts=[], all_negative_prompts=[],
                         interrupted=interrupted)
    first = done[0].processed
    assert first is not None
    x_axis, y_axis, z_axis = axes
    nx, ny, nz = len(x_axis.values), len(y_axis.values), len(z_axis.values)
    blank_size = first.images[0].size
    images = [cell.processed.images[0] if cell.processed is not None and cell.processed.images
              else Image.new("RGB", blank_size) for cell in cells]
    background = str(opts.get("grid_background_color", "#ffffff"))

    hor = [[GridAnnotation(label)] for label in x_axis.labels]
    ver = [[GridAnnotation(label)] for label in y_axis.labels]
    sub_grids = []
    for iz in range(nz):
        chunk = images[iz * nx * ny:(iz + 1) * nx * ny]
        grid = image_io.image_grid(chunk, rows=ny, background=background)
        if args.draw_legend:
            cell_w, cell_h = max(im.width for im in chunk), max(im.height for im in chunk)
            grid = draw_grid_annotations(grid, cell_w, cell_h, hor, ver, args.margin_size, opts=opts)
        sub_grids.append(grid)
    main = image_io.image_grid(sub_grids, rows=1, background=background)
    if args.draw_legend:
        sub_w, sub_h = max(g.width for g in sub_grids), max(g.height for g in sub_grids)
        main = draw_grid_annotations(main, sub_w, sub_h, [[GridAnnotation(label)] for label in z_axis.labels],
                                     [[GridAnnotation()]], opts=opts)

    # Grid infotexts: the first cell's (of each Z), plus what the plot was (A1111's keys and order).
    infos = [cell.processed.infotexts[0] if cell.processed is not None and cell.processed.infotexts else ""
             for cell in cells]
    fallback = next(text for text in infos if text)
    described: dict[str, object] = {"Script": TITLE}
    for axis in (x_axis, y_axis):
        described.update(_axis_params(axis, args.no_fixed_seeds))
    sub_texts = [add_extra_params(infos[iz * nx * ny] or fallback, described) for iz in range(nz)]
    main_text = add_extra_params(infos[0] or fallback, {**described, **_axis_params(z_axis, args.no_fixed_seeds)})

    ctx = p.context
    saved: list[Path] = []
    if opts["grid_save"]:
        to_save = [(main, main_text)]
        if args.include_sub_grids and nz > 1:
            to_save += list(zip(sub_grids, sub_texts))
        for grid, text in to_save:
            path, _ = image_io.save_image(
                grid, outdir(p, ctx, opts, grid=True), GRID_BASENAME, seed=first.seed,
                prompt=first.all_prompts[0] if first.all_prompts else "",
                extension=opts["grid_format"], info=text, short_filename=not opts["grid_extended_filename"],
                p=p, grid=True, opts=opts, callbacks=ctx.callbacks)
            saved.append(path)
    if opts["enable_pnginfo"]:
        main.info["parameters"] = main_text
        for grid, text in zip(sub_grids, sub_texts):
            grid.info["parameters"] = text

    out_images, out_texts = [main], [main_text]
    if args.include_sub_grids:
        out_images += sub_grids
        out_texts += sub_texts
    if args.include_lone_images:
        out_images += images
        out_texts += infos
    failures = [f"{TITLE}: cell {_describe(axes, (c.ix, c.iy, c.iz))} failed: {type(c.error).__name__}: {c.error}"
                for c in cells if c.error is not None]
    return Processed(
        images=out_images, infotexts=out_texts, p=first.p, seed=first.seed, subseed=first.subseed,
        all_seeds=[c.processed.seed if c.processed else -1 for c in cells],
        all_subseeds=[c.processed.subseed if c.processed else -1 for c in cells],
        all_prompts=[c.processed.all_prompts[0] if c.processed and c.processed.all_prompts else "" for c in cells],
        all_negative_prompts=[c.processed.all_negative_prompts[0] if c.processed and c.processed.all_negative_prompts
                              else "" for c in cells],
        index_of_first_image=1, info=main_text,
        comments="\n".join(filter(None, [first.comments, *failures])),
        saved_paths=[*saved, *(path for c in cells if c.processed for path in c.processed.saved_paths)],
        interrupted=interrupted, face_restoration_model=first.face_restoration_model,
    )


def _axis_params(axis: Axis, no_fixed_seeds: bool) -> dict[str, object]:
    if axis.option.label == "Nothing":
        return {}
    params: dict[str, object] = {f"{axis.letter} Type": axis.option.label, f"{axis.letter} Values": axis.text}
    if axis.option.label in SEED_AXES and not no_fixed_seeds:
        params[f"Fixed {axis.letter} Values"] = ", ".join(str(v) for v in axis.values)
    return params
