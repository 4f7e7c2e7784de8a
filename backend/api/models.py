"""Request and response models with A1111's names, and the request -> processing object step.

As in A1111, the txt2img and img2img request models are generated from the processing
dataclasses, so every processing field is accepted under its own name with its own default,
and a new field shows up in the API (and in /docs) without being listed twice. Image fields
travel as base64 strings (A1111 turns `Image` fields into `str`) and are decoded here, each
error naming its field. Unknown request fields are ignored (clients such as SillyTavern send
their own keys along).
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import html
import io
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, Optional

from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, create_model

from backend.callbacks import CallbackRegistry
from backend.config import OPTION_DEFAULTS
from backend.context import AppContext
from backend.errors import InvalidRequest
from backend.models.registry import CheckpointRegistry
from backend.postprocess.extras import ExtrasRequest
from backend.postprocess.images import image_to_bytes
from backend.processing.infotext_paste import (
    STYLES_ARRAY,
    checkpoint_finder,
    infotext_settings,
    parse_pasted_infotext,
)
from backend.processing import (
    Processed,
    StableDiffusionProcessing,
    StableDiffusionProcessingImg2Img,
    StableDiffusionProcessingTxt2Img,
)
from backend.processing.objects import INPAINTING_FILL, RESIZE_MODES
from backend.prompts.styles import StyleDatabase
from backend.sampling import registry as samplers

# Processing fields the API does not take (A1111's API_NOT_ALLOWED, plus `user`, which
# only the server may set).
API_NOT_ALLOWED = frozenset({
    "outpath_samples", "outpath_grids", "sampler_index", "extra_generation_params",
    "seed_enable_extras", "user",
})

# Narrower types than the dataclass for the API, as A1111's model has them: a seed is an integer.
_API_TYPES: Mapping[str, Any] = {"seed": int, "subseed": int}


def _is_image_type(hint: Any) -> bool:
    return hint is Image.Image or Image.Image in typing.get_args(hint)


def _api_type(hint: Any) -> Any:
    """The API type of a processing field: images are base64 strings, lists of images lists of them."""
    if typing.get_origin(hint) is list and any(_is_image_type(arg) for arg in typing.get_args(hint)):
        return list[str]
    return str if _is_image_type(hint) else hint


def _processing_fields(cls: type) -> dict[str, Any]:
    """Optional pydantic fields for every init field of the processing dataclass."""
    hints = typing.get_type_hints(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.name in API_NOT_ALLOWED:
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        fields[f.name] = (Optional[_API_TYPES.get(f.name, _api_type(hints[f.name]))], Field(default=default))
    return fields


def _image_fields(cls: type) -> tuple[str, ...]:
    """The init fields of `cls` that hold images (or lists of images)."""
    hints = typing.get_type_hints(cls)
    return tuple(f.name for f in dataclasses.fields(cls) if f.init and _api_type(hints[f.name]) != hints[f.name])


_API_ONLY_FIELDS: dict[str, Any] = {
    "sampler_index": (str | int, Field(default="Euler", description="Used when sampler_name is not given")),
    "script_name": (Optional[str], Field(default=None)),
    "script_args": (Optional[list[Any]], Field(default_factory=list)),
    "send_images": (bool, Field(default=True, description="Return the images in the response")),
    "save_images": (bool, Field(default=False, description="Also save the images to the outputs folder")),
    "alwayson_scripts": (Optional[dict[str, Any]], Field(default_factory=dict)),
    "infotext": (Optional[str], Field(default=None, description="Fill fields not given from this infotext")),
}

# A1111 fields for features processing does not have (yet): accepted by the model, refused when set,
# never silently ignored. A field that processing gains leaves this table by itself.
_UNAVAILABLE: Mapping[str, tuple[Any, str]] = {
    "refiner_checkpoint": (Optional[str], "the refiner"),
    "refiner_switch_at": (Optional[float], "the refiner"),
}


def _unavailable_fields(processing_fields: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    return {name: (_UNAVAILABLE[name][0], Field(default=None)) for name in names if name not in processing_fields}


_TXT2IMG_FIELDS = _processing_fields(StableDiffusionProcessingTxt2Img)
_IMG2IMG_FIELDS = _processing_fields(StableDiffusionProcessingImg2Img)

Txt2ImgRequest: type[BaseModel] = create_model(
    "StableDiffusionTxt2ImgProcessingAPI",
    __config__=ConfigDict(extra="ignore"),
    **_TXT2IMG_FIELDS,
    **_API_ONLY_FIELDS,
    **_unavailable_fields(_TXT2IMG_FIELDS, ("refiner_checkpoint", "refiner_switch_at")),
)

# A1111's img2img request: the same base fields without the hires ones, plus init_images, mask and
# the inpainting fields, and include_init_images (echo the images back in `parameters`).
Img2ImgRequest: type[BaseModel] = create_model(
    "StableDiffusionImg2ImgProcessingAPI",
    __config__=ConfigDict(extra="ignore"),
    **_IMG2IMG_FIELDS,
    **_API_ONLY_FIELDS,
    **_unavailable_fields(_IMG2IMG_FIELDS, ("refiner_checkpoint", "refiner_switch_at")),
    include_init_images=(bool, Field(default=False, description="Echo init_images and mask in `parameters`")),
)


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(default=None, description="The generated images, base64 PNG with the infotext")
    parameters: dict[str, Any]
    info: str = Field(description="Processed.js(): a JSON string with the generation details")


class ImageToImageResponse(TextToImageResponse):
    """The img2img response: the same shape as txt2img's."""


class ExtrasBaseRequest(BaseModel):
    """A1111's Extras settings (ExtrasBaseRequest): upscale, then GFPGAN, then CodeFormer."""

    model_config = ConfigDict(extra="ignore")

    resize_mode: Literal[0, 1] = Field(default=0, description="0: scale by upscaling_resize; "
                                                              "1: scale to upscaling_resize_w x upscaling_resize_h")
    show_extras_results: bool = Field(default=True, description="Return the images (always, for these routes)")
    gfpgan_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    codeformer_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    codeformer_weight: float = Field(default=0, ge=0, le=1, allow_inf_nan=False,
                                     description="0 = strongest restoration, 1 = closest to the input")
    upscaling_resize: float = Field(default=2, ge=1, le=8, description="Scale factor for resize_mode 0")
    upscaling_resize_w: int = Field(default=512, ge=1)
    upscaling_resize_h: int = Field(default=512, ge=1)
    upscaling_crop: bool = Field(default=True, description="Crop to exactly the requested size (resize_mode 1)")
    upscaler_1: str = Field(default="None", description="A name from /sdapi/v1/upscalers")
    upscaler_2: str = Field(default="None", description="A name from /sdapi/v1/upscalers, blended over upscaler_1")
    extras_upscaler_2_visibility: float = Field(default=0, ge=0, le=1, allow_inf_nan=False)
    upscale_first: bool = Field(default=False, description="Accepted and ignored, as in A1111 1.10")

    def extras_request(self) -> ExtrasRequest:
        """The postprocess settings; the API never saves Extras results (A1111: save_output=False)."""
        fields = {f.name for f in dataclasses.fields(ExtrasRequest)} - {"save", "max_side_length"}
        return ExtrasRequest(**{name: getattr(self, name) for name in fields}, save=False)


class ExtrasSingleImageRequest(ExtrasBaseRequest):
    image: str = Field(default="", description="Base64 image, raw or as a data: URI")


class FileData(BaseModel):
    data: str = Field(description="Base64 image, raw or as a data: URI")
    name: str = Field(description="File name (accepted; results are not saved by the API)")


class ExtrasBatchImagesRequest(ExtrasBaseRequest):
    imageList: list[FileData] = Field(description="The images to process")  # noqa: N815 - A1111's name


class ExtrasSingleImageResponse(BaseModel):
    html_info: str = Field(description="The Extras infotext as HTML")
    image: str | None = Field(default=None, description="The result, base64 PNG with its metadata")


class ExtrasBatchImagesResponse(BaseModel):
    html_info: str = Field(description="The last image's Extras infotext as HTML")
    images: list[str] = Field(description="The results, base64 PNG with their metadata")


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


class EmbeddingItem(BaseModel):
    """One textual-inversion embedding, as A1111's /embeddings lists it."""

    step: int | None = Field(None, description="Training steps, if the file records them")
    sd_checkpoint: str | None = Field(None, description="Hash of the checkpoint it was trained on, if recorded")
    sd_checkpoint_name: str | None = Field(None, description="Name of the checkpoint it was trained on, if recorded")
    shape: int = Field(description="Width of each vector (SDXL files: clip_l + clip_g widths)")
    vectors: int = Field(description="Number of vectors (tokens it takes in a prompt)")


class EmbeddingsResponse(BaseModel):
    loaded: dict[str, EmbeddingItem] = Field(default_factory=dict, description="Embeddings the current model uses")
    skipped: dict[str, EmbeddingItem] = Field(default_factory=dict,
                                              description="Embeddings for another architecture (vector widths differ)")


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
    kind: str = Field(description="txt2img, img2img, extras, or the queue's own work such as load-model")
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
# txt2img / img2img request -> processing object -> response
# ---------------------------------------------------------------------------

def _int(text: object) -> int:
    return int(float(str(text)))


def _float(text: object) -> float:
    return float(str(text))


def _str(text: object) -> str:
    return str(text)


def _index_in(choices: tuple[str, ...]) -> Callable[[object], int]:
    """A radio button's value as its index (A1111's `type="index"` radios); ValueError if unknown."""
    return lambda text: choices.index(str(text))


InfotextField = tuple[str, str, Callable[[object], Any]]

# Infotext key -> request field, as A1111's paste fields (modules/ui.py, the sampler and seed
# scripts). The sampler, schedule type and enable_hr are derived separately.
_COMMON_INFOTEXT_FIELDS: tuple[InfotextField, ...] = (
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
)

TXT2IMG_INFOTEXT_FIELDS: tuple[InfotextField, ...] = (
    *_COMMON_INFOTEXT_FIELDS,
    ("Hires upscale", "hr_scale", _float),
    ("Hires upscaler", "hr_upscaler", _str),
    ("Hires steps", "hr_second_pass_steps", _int),
    ("Hires resize-1", "hr_resize_x", _int),
    ("Hires resize-2", "hr_resize_y", _int),
    ("Hires checkpoint", "hr_checkpoint_name", _str),
    ("Hires prompt", "hr_prompt", _str),
    ("Hires negative prompt", "hr_negative_prompt", _str),
)

IMG2IMG_INFOTEXT_FIELDS: tuple[InfotextField, ...] = (
    *_COMMON_INFOTEXT_FIELDS,
    ("Image CFG scale", "image_cfg_scale", _float),
    ("Mask blur", "mask_blur", _int),
    ("Mask mode", "inpainting_mask_invert", _index_in(("Inpaint masked", "Inpaint not masked"))),
    ("Masked content", "inpainting_fill", _index_in(INPAINTING_FILL)),
    ("Resize mode", "resize_mode", _index_in(RESIZE_MODES)),
    ("Inpaint area", "inpaint_full_res", lambda text: bool(_index_in(("Whole picture", "Only masked"))(text))),
    ("Masked area padding", "inpaint_full_res_padding", _int),
)


@dataclasses.dataclass(frozen=True)
class GenerationKind:
    """What differs between the txt2img and img2img routes."""

    name: str
    """txt2img or img2img; also names the output folder options (outdir_<name>_samples)."""
    processing: type[StableDiffusionProcessing]
    fields: Mapping[str, Any]
    """The processing fields the request model carries."""
    image_fields: tuple[str, ...]
    """Fields sent as base64 and decoded here."""
    infotext_fields: tuple[InfotextField, ...]


TXT2IMG = GenerationKind("txt2img", StableDiffusionProcessingTxt2Img, _TXT2IMG_FIELDS,
                         _image_fields(StableDiffusionProcessingTxt2Img), TXT2IMG_INFOTEXT_FIELDS)
IMG2IMG = GenerationKind("img2img", StableDiffusionProcessingImg2Img, _IMG2IMG_FIELDS,
                         _image_fields(StableDiffusionProcessingImg2Img), IMG2IMG_INFOTEXT_FIELDS)


def apply_infotext(req: BaseModel, opts: Mapping[str, Any], registry: CheckpointRegistry,
                   fields: tuple[InfotextField, ...] = TXT2IMG_INFOTEXT_FIELDS,
                   styles: StyleDatabase | None = None, callbacks: CallbackRegistry | None = None) -> BaseModel:
    """Fill the fields the request did not set from its `infotext` (A1111's apply_infotext).

    `fields` is the route's table of infotext keys. Styles found in the prompts become `styles`
    (option infotext_styles, as the UI's paste). Settings named in the infotext (Clip skip,
    ENSD, ...) that differ from the current options go into override_settings, unless the
    request already overrides them.
    """
    if not req.infotext:
        return req
    params = parse_pasted_infotext(req.infotext, opts, styles or StyleDatabase(), callbacks)
    given = req.model_fields_set
    update: dict[str, Any] = {}
    for key, name, convert in fields:
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
    if ("enable_hr" in type(req).model_fields and "enable_hr" not in given and "Denoising strength" in params
            and any(k in params for k in hires_keys)):
        update["enable_hr"] = True
    if isinstance(params.get(STYLES_ARRAY), list) and "styles" not in given:
        update["styles"] = params[STYLES_ARRAY]
    overrides = dict(req.override_settings or {})
    for setting in infotext_settings(params, opts, checkpoint_finder(registry)):
        overrides.setdefault(setting.option, setting.value)
    update["override_settings"] = overrides
    return req.model_copy(update=update)


def reject_unavailable(req: BaseModel, kind: GenerationKind) -> None:
    """Fields for features we lack are refused by name (scripts are checked by their runner)."""
    for name, (_, feature) in _UNAVAILABLE.items():
        if name not in kind.fields and getattr(req, name, None) is not None:
            raise InvalidRequest(name, f"{feature} is not available yet in this version")


def _decode_images(req: BaseModel, names: tuple[str, ...]) -> dict[str, Any]:
    """The image fields that were sent, decoded; an empty string counts as not sent (A1111: `if mask:`)."""
    decoded: dict[str, Any] = {}
    for name in names:
        value = getattr(req, name)
        if isinstance(value, list):
            decoded[name] = [decode_image(item, name) for item in value]
        elif value:
            decoded[name] = decode_image(value, name)
    return decoded


def generation_processing(req: BaseModel, kind: GenerationKind, ctx: AppContext
                          ) -> tuple[BaseModel, StableDiffusionProcessing]:
    """The processing object for a txt2img or img2img request (after infotext pre-fill), validated,
    with its scripts bound: script_name / script_args / alwayson_scripts laid out as A1111's
    init_script_args (422 for unknown titles).

    Returns the effective request too: its dump is the response's `parameters`.
    """
    opts = ctx.options
    reject_unavailable(req, kind)
    req = apply_infotext(req, opts, ctx.registry, kind.infotext_fields, ctx.styles, ctx.scripts.callbacks)
    kwargs = {name: getattr(req, name) for name in kind.fields
              if name not in kind.image_fields and getattr(req, name) is not None}
    kwargs.update(_decode_images(req, kind.image_fields))
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
    # route's own folders even when outdir_samples is set.
    kwargs["do_not_save_samples"] = kwargs["do_not_save_grid"] = not req.save_images
    kwargs["outpath_samples"] = opts[f"outdir_{kind.name}_samples"]
    kwargs["outpath_grids"] = opts[f"outdir_{kind.name}_grids"]
    p = kind.processing(**kwargs)
    p.validate()
    runner = ctx.scripts.runner_for(p)
    runner.bind(p, runner.script_args(req.script_name, req.script_args or [], req.alwayson_scripts))
    return req, p


def txt2img_processing(req: BaseModel, ctx: AppContext) -> tuple[BaseModel, StableDiffusionProcessing]:
    """generation_processing for a txt2img request."""
    return generation_processing(req, TXT2IMG, ctx)


def img2img_processing(req: BaseModel, ctx: AppContext) -> tuple[BaseModel, StableDiffusionProcessing]:
    """generation_processing for an img2img request."""
    return generation_processing(req, IMG2IMG, ctx)


def generation_response(req: BaseModel, processed: Processed, opts: Mapping[str, Any]) -> TextToImageResponse:
    """A1111's TextToImageResponse / ImageToImageResponse: images (if send_images), the request, Processed.js().

    As A1111, an img2img response echoes init_images and mask only when include_init_images is set.
    """
    images = [encode_image(image, opts) for image in processed.images] if req.send_images else []
    parameters = req.model_dump()
    if "include_init_images" not in parameters:
        return TextToImageResponse(images=images, parameters=parameters, info=processed.js())
    if not req.include_init_images:
        parameters["init_images"] = parameters["mask"] = None
    return ImageToImageResponse(images=images, parameters=parameters, info=processed.js())


# ---------------------------------------------------------------------------
# Extras
# ---------------------------------------------------------------------------

def extras_inputs(req: ExtrasSingleImageRequest | ExtrasBatchImagesRequest) -> list[tuple[Image.Image, str | None]]:
    """(image, name) pairs for run_extras; a bad image is a 422 naming `image` or `imageList`."""
    if isinstance(req, ExtrasSingleImageRequest):
        if not req.image.strip():
            raise InvalidRequest("image", "an image is required")
        return [(decode_image(req.image, "image"), None)]
    inputs: list[tuple[Image.Image, str | None]] = []
    for index, item in enumerate(req.imageList):
        try:
            inputs.append((decode_image(item.data, "imageList"), item.name))
        except InvalidRequest as e:
            raise InvalidRequest("imageList", f"item {index} ({item.name!r}): {e.reason}") from None
    return inputs


def plaintext_to_html(text: str) -> str:
    """A1111's plaintext_to_html: escaped lines joined by <br>, in one paragraph (the Extras html_info)."""
    return "<p>" + "<br>\n".join(html.escape(line) for line in text.split("\n")) + "</p>"
