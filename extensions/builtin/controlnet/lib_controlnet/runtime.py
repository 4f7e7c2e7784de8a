"""What the extension keeps between requests, and the step that turns parsed units into `ActiveUnit`s.

One `Runtime` exists per load of the script module (both tabs' script instances and the HTTP routes
share it): the folders and options it learned, the LRU cache of loaded ControlNets and the loaded
annotator networks.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from backend.config import OptionInfo
from backend.errors import InvalidRequest
from backend.postprocess import masking
from lib_controlnet import models, preprocessors
from lib_controlnet.hook import ActiveUnit
from lib_controlnet.images import ResizeMode, hwc3, pixel_perfect_resolution
from lib_controlnet.units import ARGS_FIELD, ControlNetUnit, InputImage

SECTION = "control_net"
OPTIONS: dict[str, OptionInfo] = {
    "control_net_unit_count": OptionInfo(3, "Multi-ControlNet: ControlNet unit number (requires restart)", SECTION),
    "control_net_model_cache_size": OptionInfo(2, "Model cache size (requires restart)", SECTION),
    "control_net_no_detectmap": OptionInfo(False, "Do not append detectmap to output", SECTION),
    "control_net_models_path": OptionInfo("", "Extra path to scan for ControlNet models", SECTION),
    "control_net_modules_path": OptionInfo(
        "", "Path to directory containing annotator model directories (requires restart)", SECTION),
}
# img2img's resize_mode values (the init image is the control image when a unit has none).
IMG2IMG_RESIZE = {0: ResizeMode.RESIZE, 1: ResizeMode.INNER_FIT, 2: ResizeMode.OUTER_FIT, 3: ResizeMode.RESIZE}


class Runtime:
    """Folders, options and caches of the ControlNet extension."""

    def __init__(self) -> None:
        self.options: Mapping[str, Any] | None = None
        self.models_dir: Path | None = None
        self.models = models.ModelCache()
        self._annotators: dict[tuple[Path | None, str], preprocessors.Annotators] = {}
        self._lock = threading.Lock()

    def option(self, key: str) -> Any:
        if self.options is not None and key in self.options:
            return self.options[key]
        return OPTIONS[key].default

    def unit_count(self) -> int:
        return max(1, int(self.option("control_net_unit_count")))

    def model_files(self) -> list[models.ControlNetFile]:
        return models.list_models(models.model_dirs(self.models_dir, self.option("control_net_models_path") or None))

    def model_titles(self) -> list[str]:
        return [m.title for m in self.model_files()]

    def annotators(self, device: torch.device | None = None) -> preprocessors.Annotators:
        extra = self.option("control_net_modules_path")
        root = Path(extra).expanduser() if extra else (
            self.models_dir / preprocessors.ANNOTATOR_SUBDIR if self.models_dir is not None else None)
        device = device or torch.device("cpu")
        with self._lock:
            return self._annotators.setdefault((root, str(device)), preprocessors.Annotators(root, device))

    def learn(self, models_dir: Path | None, options: Mapping[str, Any] | None) -> None:
        """Remember the application's folders and options (from a job's context or the app)."""
        if models_dir is not None:
            self.models_dir = models_dir
        if options is not None:
            self.options = options

    # -- preparing units for a generation --------------------------------------------------------

    def prepare(self, p: Any, numbered: list[tuple[int, ControlNetUnit]]) -> list[ActiveUnit]:
        """Each enabled unit's control maps and ControlNet, ready for the hook. `numbered` pairs each
        unit with its argument index (for error field names)."""
        devices = p.context.devices
        annotators = self.annotators(devices.device)
        files = self.model_files()
        limit = int(self.option("control_net_model_cache_size"))
        time_dim = getattr(p.sd_model.unet.config, "addition_time_embed_dim", None)
        width, height = p.width // 8 * 8, p.height // 8 * 8
        active = []
        for index, unit in numbered:
            where = f"{ARGS_FIELD}[{index}]"
            model = models.resolve(files, unit.model, f"{where}.model")
            net = self.models.get(model, device=devices.device, dtype=devices.dtype, limit=limit,
                                  time_embed_dim=time_dim if p.sd_model.is_sdxl else None)
            net.to(devices.device)  # a "Low VRAM" unit may have left the cached net on the CPU
            models.check_compatible(net, model, p.sd_model.unet, p.sd_model.is_sdxl, f"{where}.model")
            pre = preprocessors.get(unit.module, f"{where}.module")
            images, mode = control_inputs(p, unit, where)
            maps = []
            for image in images:
                resolution = (pixel_perfect_resolution(image, width, height, mode) if unit.pixel_perfect
                              else unit.processor_res)
                maps.append(preprocessors.run(pre, image, resolution, unit.threshold_a, unit.threshold_b,
                                              annotators, f"{where}.module"))
            ready = ActiveUnit(unit, net, maps, mode, pre.soft_in_hires, devices.device, devices.dtype)
            ready.maps_at(width, height)  # the detected map is output even if the unit never runs
            active.append(ready)
        return active


def control_inputs(p: Any, unit: ControlNetUnit, where: str) -> tuple[list[np.ndarray], ResizeMode]:
    """The images to preprocess and the resize mode: the unit's images, else (img2img) the first init
    image with img2img's resize mode, cropped to the inpaint area in "Only masked" mode."""
    if unit.image:
        images, mode = [_as_input(item) for item in unit.image], unit.resize_mode
    elif getattr(p, "init_images", None):
        images, mode = [hwc3(np.asarray(p.init_images[0].convert("RGB")))], IMG2IMG_RESIZE[int(p.resize_mode)]
    else:
        raise InvalidRequest(f"{where}.image", "ControlNet is enabled but no input image is given")
    if getattr(p, "mask", None) is not None and getattr(p, "inpaint_full_res", False) and unit.inpaint_crop_input_image:
        images = [_crop_to_inpaint_area(p, image, mode) for image in images]
    return images, mode


def _as_input(item: InputImage) -> np.ndarray:
    """A1111-ControlNet's canvas rule: a mask that marks part of the image is a scribble and becomes
    the input; an empty or full mask is ignored."""
    if item.mask is None or (item.mask <= 5).all() or (item.mask >= 250).all():
        return item.image
    return hwc3(item.mask)


def _crop_to_inpaint_area(p: Any, image: np.ndarray, mode: ResizeMode) -> np.ndarray:
    """Cut the control image to the region img2img inpaints in "Only masked" mode, at the generation
    size, so the control lines up with what is sampled (A1111-ControlNet does the same)."""
    from PIL import Image

    prepared = masking.prepare_mask(
        p.mask, width=p.width, height=p.height, resize_mode=p.resize_mode, mask_blur_x=p.mask_blur_x,
        mask_blur_y=p.mask_blur_y, mask_round=p.mask_round, inpainting_mask_invert=bool(p.inpainting_mask_invert),
        inpaint_full_res=True, inpaint_full_res_padding=p.inpaint_full_res_padding)
    full = prepared.mask_for_overlay  # in "Only masked" mode: the whole blurred mask
    if prepared.crop_region is None or full is None:
        return image
    modes = list(IMG2IMG_RESIZE.values())
    scaled = masking.resize_image(modes.index(mode), Image.fromarray(image), full.width, full.height)
    cropped = scaled.crop(prepared.crop_region)
    return np.asarray(masking.resize_image(2, cropped, p.width, p.height).convert("RGB"))
