"""Request and response models with A1111's names, and the request -> processing object step.

As in A1111, the txt2img request model is generated from the processing dataclass, so
every processing field is accepted under its own name with its own default, and a new
field shows up in the API (and in /docs) without being listed twice. Unknown request
fields are ignored (clients such as SillyTavern send their own keys along).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Optional

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, create_model

from backend.config import OPTION_DEFAULTS, coerce_option
from backend.errors import InvalidRequest
from backend.models.registry import CheckpointRegistry
from backend.postprocess.images import image_to_bytes
from backend.postprocess.infotext import parse_infotext
from backend.processing import Processed, StableDiffusionProcessingTxt2Img
from backend.sampling import registry as samplers

# Processing fields the API does not take (A1111's API_NOT_ALLOWED, plus `user`, which
# only the server may set).
API_NOT_ALLOWED = frozenset({
    "outpath_samples", "outpath_grids", "sampler_index", "extra_generation_params",
    "seed_enable_extras", "user",
})

# Narrower types than the dataclass for the API, as A1111's model has them: a seed is an integer.
_API_TYPES: Mapping[str, Any] = {"seed": int, "subseed": int}


def _processing_fields(cls: type) -> dict[str, Any]:
    """Optional pydantic fields for every init field of the processing dataclass."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in API_NOT_ALLOWED:
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (Optional[_API_TYPES.get(f.name, hints[f.name])], Field(default=default))
    return fields


_API_ONLY_FIELDS: dict[str, Any] = {
    "sampler_index": (str | int, Field(default="Euler", description="Used when sampler_name is not given")),
    "script_name": (Optional[str], Field(default=None)),
    "script_args": (Optional[list[Any]], Field(default_factory=list)),
    "send_images": (bool, Field(default=True, description="Return the images in the response")),
    "save_images": (bool, Field(default=False, description="Also save the images to the outputs folder")),
    "alwayson_scripts": (Optional[dict[str, Any]], Field(default_factory=dict)),
    "infotext": (Optional[str], Field(default=None, description="Fill fields not given from this infotext")),
    # A1111 fields for features we do not have yet: refused when set, never silently ignored.
    "refiner_checkpoint": (Optional[str], Field(default=None)),
    "refiner_switch_at": (Optional[float], Field(default=None)),
    "firstpass_image": (Optional[str], Field(default=None)),
}

_UNAVAILABLE_FIELDS: Mapping[str, str] = {
    "refiner_checkpoint": "the refiner",
    "refiner_switch_at": "the refiner",
    "firstpass_image": "a hires first-pass image",
}

_TXT2IMG_FIELDS = _processing_fields(StableDiffusionProcessingTxt2Img)

Txt2ImgRequest: type[BaseModel] = create_model(
    "StableDiffusionTxt2ImgProcessingAPI",
    __config__=ConfigDict(extra="ignore"),
    **_TXT2IMG_FIELDS,
    **_API_ONLY_FIELDS,
)


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="The generated images, base64 PNG with the infotext")
    parameters: dict[str, Any]
    info: str = Field(description="Processed.js(): a JSON string with the generation details")


class PNGInfoRequest(BaseModel):
    image: str = Field(description="Base64 image, raw or as a data: URI")


class PNGInfoResponse(BaseModel):
    info: str = Field(description="The infotext found in the image, or ''")
    items: dict[str, Any] = Field(default_factory=dict, description="Other metadata items")
    parameters: dict[str, Any] = Field(default_factory=dict, description="The infotext parsed as A1111 does")


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = "0"
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float = Field(description="Fraction done, 0..1")
    eta_relative: float = Field(description="Estimated seconds left")
    state: ProgressState
    current_image: str | None = Field(default=None, description="Live preview, base64 PNG")
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class LatentUpscalerModeItem(BaseModel):
    name: str


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None


class SDVaeItem(BaseModel):
    model_name: str
    filename: str


class HypernetworkItem(BaseModel):
    name: str
    path: str | None


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None


class RealesrganItem(BaseModel):
    name: str
    path: str | None
    scale: int | None


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, Any] = Field(default_factory=dict)
    skipped: dict[str, Any] = Field(default_factory=dict)


class MemoryResponse(BaseModel):
    ram: dict[str, Any]
    cuda: dict[str, Any]


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class ScriptInfo(BaseModel):
    name: str
    is_alwayson: bool
    is_img2img: bool
    args: list[dict[str, Any]]


class ExtensionItem(BaseModel):
    name: str
    remote: str
    branch: str
    commit_hash: str
    version: str
    commit_date: int | str
    enabled: bool


class LoraItem(BaseModel):
    name: str
    alias: str
    path: str
    metadata: dict[str, Any]


class JobInfo(BaseModel):
    id: str = Field(description="Poll /sdapi/v1/jobs/{id}; fetch /sdapi/v1/jobs/{id}/result when done")
    kind: str = Field(description="txt2img, or the queue's own work such as load-model")
    status: str = Field(description="queued, running, done, failed or cancelled")
    created: float = Field(description="Unix time of submission")
    started: float | None = None
    finished: float | None = None
    position: int = Field(description="0 while running, 1.. while queued, -1 once finished")
    progress: float = Field(description="Fraction done, 0..1")
    error: str | None = Field(default=None, description="Why the job failed or was cancelled")


# GET /options returns every option; POST takes any subset back (unknown keys are kept, as A1111
# keeps keys of config.json it does not know). Values are typed loosely so an odd value in a
# hand-edited config.json never breaks the route clients use as a ping.
OptionsModel: type[BaseModel] = create_model(
    "Options",
    __config__=ConfigDict(extra="allow"),
    **{key: (Any, Field(default=info.default, title=info.label)) for key, info in OPTION_DEFAULTS.items()},
)


# ---------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------

_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)


def decode_image(data: str, field: str) -> Image.Image:
    """A1111's decode_base64_to_image: raw base64 or a data: URI. URLs are refused (we stay offline)."""
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise InvalidRequest(field, "image URLs are not supported; send the image as base64")
    text = _DATA_URI.sub("", text, count=1)
    try:
        raw = base64.b64decode(text, validate=True)
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as e:
        raise InvalidRequest(field, f"invalid encoded image ({e})") from None
    return image


def encode_image(image: Image.Image, opts: Mapping[str, Any]) -> str:
    """Base64 in opts.samples_format; PNGs keep the `parameters` text chunk (A1111's encode_pil_to_base64)."""
    return base64.b64encode(image_to_bytes(image, str(opts["samples_format"]), None, opts)).decode("ascii")


# ---------------------------------------------------------------------------
# txt2img request -> processing object -> response
# ---------------------------------------------------------------------------

def _int(text: object) -> int:
    return int(float(str(text)))


def _float(text: object) -> float:
    return float(str(text))


def _str(text: object) -> str:
    return str(text)


# Infotext key -> request field, as A1111's txt2img paste fields (modules/ui.py, the sampler and
# seed scripts). The sampler, schedule type and enable_hr are derived separately.
INFOTEXT_FIELDS: tuple[tuple[str, str, Callable[[object], Any]], ...] = (
    ("Prompt", "prompt", _str),
    ("Negative prompt", "negative_prompt", _str),
    ("Steps", "steps", _int),
    ("CFG scale", "cfg_scale", _float),
    ("Seed", "seed", _int),
    ("Size-1", "width", _int),
    ("Size-2", "height", _int),
    ("Batch size", "batch_size", _int),
    ("Variation seed", "subseed", _int),
    ("Variation seed strength", "subseed_strength", _float),
    ("Seed resize from-1", "seed_resize_from_w", _int),
    ("Seed resize from-2", "seed_resize_from_h", _int),
    ("Denoising strength", "denoising_strength", _float),
    ("Hires upscale", "hr_scale", _float),
    ("Hires upscaler", "hr_upscaler", _str),
    ("Hires steps", "hr_second_pass_steps", _int),
    ("Hires resize-1", "hr_resize_x", _int),
    ("Hires resize-2", "hr_resize_y", _int),
    ("Hires checkpoint", "hr_checkpoint_name", _str),
    ("Hires prompt", "hr_prompt", _str),
    ("Hires negative prompt", "hr_negative_prompt", _str),
)


def apply_infotext(req: BaseModel, opts: Mapping[str, Any], registry: CheckpointRegistry) -> BaseModel:
    """Fill the fields the request did not set from its `infotext` (A1111's apply_infotext).

    Settings named in the infotext (Clip skip, ENSD, ...) that differ from the current
    options go into override_settings, unless the request already overrides them.
    """
    if not req.infotext:
        return req
    params = parse_infotext(req.infotext, skip_fields=opts["infotext_skip_pasting"] or ())
    given = req.model_fields_set
    update: dict[str, Any] = {}
    for key, name, convert in INFOTEXT_FIELDS:
        if name in given or params.get(key) in (None, ""):
            continue
        try:
            update[name] = convert(params[key])
        except ValueError:
            raise InvalidRequest("infotext", f"{key}: cannot read {params[key]!r}") from None
    if "Sampler" in params and "sampler_name" not in given:
        sampler, scheduler = samplers.resolve_sampler_and_scheduler(str(params["Sampler"]),
                                                                    str(params.get("Schedule type", "")))
        update["sampler_name"] = sampler.name
        if "scheduler" not in given:
            update["scheduler"] = scheduler.label
    hires_keys = ("Hires upscale", "Hires upscaler", "Hires resize-1")
    if "enable_hr" not in given and "Denoising strength" in params and any(k in params for k in hires_keys):
        update["enable_hr"] = True
    update["override_settings"] = _infotext_overrides(params, dict(req.override_settings or {}), opts, registry)
    return req.model_copy(update=update)


def _infotext_overrides(params: Mapping[str, Any], overrides: dict[str, Any], opts: Mapping[str, Any],
                        registry: CheckpointRegistry) -> dict[str, Any]:
    for key, info in OPTION_DEFAULTS.items():
        if info.infotext is None or info.infotext not in params or key in overrides:
            continue
        value = params[info.infotext]
        if key == "sd_model_checkpoint":
            if opts["disable_weights_auto_swap"]:
                continue
            found = registry.find(str(value))
            if found is None:
                continue
            value = found.title
        value = coerce_option(key, value)
        if value != opts[key]:
            overrides[key] = value
    return overrides


def reject_unavailable(req: BaseModel) -> None:
    """Scripts we do not have get A1111's 422; fields for features we lack are refused by name."""
    if req.script_name:
        raise InvalidRequest("script_name", f"Script '{req.script_name}' not found")
    if req.alwayson_scripts:
        name = next(iter(req.alwayson_scripts))
        raise InvalidRequest("alwayson_scripts", f"always on script {name} not found")
    for name, feature in _UNAVAILABLE_FIELDS.items():
        if getattr(req, name) is not None:
            raise InvalidRequest(name, f"{feature} is not available yet in this version")


def txt2img_processing(req: BaseModel, opts: Mapping[str, Any],
                       registry: CheckpointRegistry) -> tuple[BaseModel, StableDiffusionProcessingTxt2Img]:
    """The processing object for a txt2img request (after infotext pre-fill), validated.

    Returns the effective request too: its dump is the response's `parameters`.
    """
    reject_unavailable(req)
    req = apply_infotext(req, opts, registry)
    kwargs = {name: getattr(req, name) for name in _TXT2IMG_FIELDS if getattr(req, name) is not None}
    sampler = req.sampler_name or req.sampler_index
    if isinstance(sampler, int):
        if not 0 <= sampler < len(samplers.SAMPLERS):
            raise InvalidRequest("sampler_index", f"must be 0..{len(samplers.SAMPLERS) - 1}, got {sampler}")
        sampler = samplers.SAMPLERS[sampler].name
    # An alias or another casing ("k_euler_a", "euler a") names its sampler; legacy names with a
    # schedule suffix ("DPM++ 2M Karras") are split by processing.
    spec = samplers.find_sampler(sampler) if sampler else None
    kwargs["sampler_name"] = spec.name if spec is not None else sampler
    # The API saves nothing unless asked (A1111: do_not_save_* = not save_images), and writes to the
    # txt2img folders even when outdir_samples is set.
    kwargs["do_not_save_samples"] = kwargs["do_not_save_grid"] = not req.save_images
    kwargs["outpath_samples"] = opts["outdir_txt2img_samples"]
    kwargs["outpath_grids"] = opts["outdir_txt2img_grids"]
    p = StableDiffusionProcessingTxt2Img(**kwargs)
    p.validate()
    return req, p


def txt2img_response(req: BaseModel, processed: Processed, opts: Mapping[str, Any]) -> TextToImageResponse:
    """A1111's TextToImageResponse: images (if send_images), the request, and Processed.js()."""
    images = [encode_image(image, opts) for image in processed.images] if req.send_images else []
    return TextToImageResponse(images=images, parameters=req.model_dump(), info=processed.js())
