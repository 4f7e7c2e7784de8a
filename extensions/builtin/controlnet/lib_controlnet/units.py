"""ControlNet units: A1111-ControlNet's unit fields, parsed from API dicts (or the UI's state) and checked.

A unit arrives as one element of `alwayson_scripts.controlnet.args`: a dict with A1111-ControlNet's
field names (unknown keys are ignored, as its pydantic model does), None, or a `ControlNetUnit`.
Every bad value is an InvalidRequest naming `alwayson_scripts.controlnet.args[i].<field>`.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
from PIL import Image

from backend.api.models import decode_image
from backend.errors import InvalidRequest
from lib_controlnet import preprocessors
from lib_controlnet.images import ResizeMode, to_array
from lib_controlnet.models import is_none

ARGS_FIELD = "alwayson_scripts.controlnet.args"


class ControlMode(enum.Enum):
    BALANCED = "Balanced"
    PROMPT = "My prompt is more important"
    CONTROL = "ControlNet is more important"


class HiResFixOption(enum.Enum):
    BOTH = "Both"
    LOW_RES_ONLY = "Low res only"
    HIGH_RES_ONLY = "High res only"


RESIZE_MODE_ALIASES = {
    "Inner Fit (Scale to Fit)": "Crop and Resize",
    "Outer Fit (Shrink to Fit)": "Resize and Fill",
    "Scale to Fit (Inner Fit)": "Crop and Resize",
    "Envelope (Outer Fit)": "Resize and Fill",
}
# Old field names A1111-ControlNet still accepts.
FIELD_ALIASES = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "mask_image": "mask"}


@dataclass(frozen=True)
class InputImage:
    """One control input: RGB pixels and an optional mask (white = marked)."""

    image: np.ndarray
    mask: np.ndarray | None = None


@dataclass
class ControlNetUnit:
    """One ControlNet unit, with A1111-ControlNet's defaults."""

    enabled: bool = False
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    image: list[InputImage] | None = None
    resize_mode: ResizeMode = ResizeMode.INNER_FIT
    low_vram: bool = False
    processor_res: float = -1
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    pixel_perfect: bool = False
    control_mode: ControlMode = ControlMode.BALANCED
    hr_option: HiResFixOption = HiResFixOption.BOTH
    save_detected_map: bool = True
    inpaint_crop_input_image: bool = True

    def infotext(self) -> str:
        """`Module: canny, Model: ..., Weight: 1.0, ...` as A1111-ControlNet serialises a unit."""
        values = {
            "Module": self.module, "Model": self.model, "Weight": self.weight,
            "Resize Mode": self.resize_mode.value, "Processor Res": self.processor_res,
            "Threshold A": self.threshold_a, "Threshold B": self.threshold_b,
            "Guidance Start": self.guidance_start, "Guidance End": self.guidance_end,
            "Pixel Perfect": self.pixel_perfect, "Control Mode": self.control_mode.value,
        }
        return ", ".join(f"{key}: {value}" for key, value in values.items())


FIELD_NAMES = frozenset(f.name for f in fields(ControlNetUnit)) | {"mask"}


def parse_units(values: tuple[Any, ...] | list[Any]) -> list[ControlNetUnit]:
    """Every unit of the script's arguments, in order (None slots become disabled units)."""
    return [parse_unit(value, f"{ARGS_FIELD}[{i}]") for i, value in enumerate(values)]


def parse_unit(value: Any, where: str) -> ControlNetUnit:
    """One unit from a dict, a ControlNetUnit or None; `where` prefixes the field names in errors."""
    if value is None:
        return ControlNetUnit()
    if isinstance(value, ControlNetUnit):
        return bound_checked(replace(value), where)
    if not isinstance(value, Mapping):
        raise InvalidRequest(where, f"a ControlNet unit must be an object with A1111-ControlNet's fields, "
                                    f"got {type(value).__name__}")
    data = dict(value)
    for alias, name in FIELD_ALIASES.items():
        if alias not in data:
            continue
        aliased = data.pop(alias)
        if data.get(name) is None:
            data[name] = aliased
        elif aliased is not None:
            raise InvalidRequest(f"{where}.{alias}", f"conflicts with '{name}'; send only one of them")
    if "enabled" not in data:
        # A1111-ControlNet enabled API units by default until its 2024 rewrite, and clients written
        # for it omit the field: a unit that gives an image or names a model is meant to run.
        image, model = data.get("image"), data.get("model")
        data["enabled"] = (image is not None and not (isinstance(image, str) and not image)) or (
            isinstance(model, str) and not is_none(model))
    unit = ControlNetUnit()
    for name, raw in data.items():
        if name not in FIELD_NAMES or name in ("image", "mask"):
            continue  # unknown keys are ignored, as A1111-ControlNet does
        setattr(unit, name, _PARSERS[name](raw, f"{where}.{name}"))
    preprocessors.get(unit.module, f"{where}.module")
    if unit.guidance_start > unit.guidance_end:
        raise InvalidRequest(f"{where}.guidance_start",
                             f"guidance_start({unit.guidance_start}) > guidance_end({unit.guidance_end})")
    if unit.enabled:
        # Images are decoded only for units that run (A1111-ControlNet reads them lazily too).
        unit.image = parse_images(data.get("image"), data.get("mask"), where)
    return bound_checked(unit, where)


def bound_checked(unit: ControlNetUnit, where: str) -> ControlNetUnit:
    """Out-of-range processor_res / threshold_a / threshold_b take the preprocessor's defaults
    (-1 means "default"), as A1111-ControlNet's bound_check_params; only enabled units are checked."""
    if not unit.enabled:
        return unit
    pre = preprocessors.get(unit.module, f"{where}.module")
    for name, slider in (("processor_res", pre.resolution), ("threshold_a", pre.slider_1),
                         ("threshold_b", pre.slider_2)):
        value = getattr(unit, name)
        if not slider.minimum <= value <= slider.maximum:
            setattr(unit, name, slider.value if name == "processor_res" else float(slider.value))
    return unit


# ---- field parsers ----------------------------------------------------------------------------------

def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidRequest(where, f"must be true or false, got {value!r}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InvalidRequest(where, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequest(where, f"must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise InvalidRequest(where, f"must be a finite number, got {value!r}")
    return number


def _ranged(low: float, high: float) -> Any:
    def parse(value: Any, where: str) -> float:
        number = _number(value, where)
        if not low <= number <= high:
            raise InvalidRequest(where, f"must be between {low} and {high}, got {value!r}")
        return number

    return parse


def _resolution(value: Any, where: str) -> float:
    number = _number(value, where)
    return int(number) if number == int(number) else number


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(where, f"must be a string, got {value!r}")
    return value


def _model(value: Any, where: str) -> str:
    return "None" if value is None else _text(value, where)


def _enum_value(kind: type[enum.Enum], aliases: Mapping[str, str] | None = None) -> Any:
    members = list(kind)

    def parse(value: Any, where: str) -> enum.Enum:
        if isinstance(value, kind):
            return value
        if isinstance(value, bool):
            pass
        elif isinstance(value, int):
            # A1111-ControlNet also accepts the index; 3 is img2img's "Just resize (latent upscale)".
            if kind is ResizeMode and value == 3:
                return ResizeMode.RESIZE
            if 0 <= value < len(members):
                return members[value]
        elif isinstance(value, str):
            text = (aliases or {}).get(value, value)
            for member in members:
                if text == member.value or text.lower() in (member.value.lower(), member.name.lower()):
                    return member
        choices = ", ".join(f"{i} / {m.value!r}" for i, m in enumerate(members))
        raise InvalidRequest(where, f"unknown value {value!r}; choose one of {choices}")

    return parse


_PARSERS: dict[str, Any] = {
    "enabled": _bool,
    "module": lambda v, w: "none" if v is None else _text(v, w),
    "model": _model,
    "weight": _ranged(0.0, 2.0),
    "resize_mode": _enum_value(ResizeMode, RESIZE_MODE_ALIASES),
    "low_vram": _bool,
    "processor_res": _resolution,
    "threshold_a": _number,
    "threshold_b": _number,
    "guidance_start": _ranged(0.0, 1.0),
    "guidance_end": _ranged(0.0, 1.0),
    "pixel_perfect": _bool,
    "control_mode": _enum_value(ControlMode),
    "hr_option": _enum_value(HiResFixOption),
    "save_detected_map": _bool,
    "inpaint_crop_input_image": _bool,
}


# ---- images -----------------------------------------------------------------------------------------

def parse_images(image: Any, mask: Any, where: str) -> list[InputImage] | None:
    """A1111-ControlNet's image shapes: a base64 string (raw or data: URI), {"image": .., "mask": ..},
    [image, mask], a list of {"image", "mask"} dicts (one per batch image), or PIL/numpy images
    (the UI). The separate `mask` field pairs with a single image. None: no image."""
    if image is None or (isinstance(image, str) and not image):
        if mask is not None:
            raise InvalidRequest(f"{where}.mask", "a mask needs an image")
        return None
    if isinstance(image, (list, tuple)):
        if not image:
            raise InvalidRequest(f"{where}.image", "must not be an empty list")
        if all(isinstance(item, Mapping) for item in image):
            return [_pair(item, f"{where}.image[{i}]") for i, item in enumerate(image)]
        if len(image) != 2:
            raise InvalidRequest(f"{where}.image", "a list must be [image, mask] or a list of {\"image\", \"mask\"}")
        return [_input(image[0], image[1], f"{where}.image")]
    if isinstance(image, Mapping):
        return [_pair(image, f"{where}.image")]
    return [_input(image, mask, f"{where}.image", f"{where}.mask")]


def _pair(item: Mapping[str, Any], where: str) -> InputImage:
    if item.get("image") is None:
        raise InvalidRequest(f"{where}.image", "is required")
    return _input(item["image"], item.get("mask"), f"{where}.image", f"{where}.mask")


def _input(image: Any, mask: Any, where: str, mask_where: str | None = None) -> InputImage:
    pixels = _decode(image, where)
    if mask is None or (isinstance(mask, str) and not mask):
        return InputImage(pixels)
    mask_pixels = _decode(mask, mask_where or where)[:, :, 0]
    if mask_pixels.shape != pixels.shape[:2]:
        raise InvalidRequest(mask_where or where, f"mask size {mask_pixels.shape[1]}x{mask_pixels.shape[0]} differs "
                                                  f"from the image's {pixels.shape[1]}x{pixels.shape[0]}")
    return InputImage(pixels, mask_pixels)


def _decode(value: Any, where: str) -> np.ndarray:
    if isinstance(value, str):
        return to_array(decode_image(value, where))
    if isinstance(value, (Image.Image, np.ndarray)):
        return to_array(value)
    raise InvalidRequest(where, f"must be a base64-encoded image, got {type(value).__name__}")
