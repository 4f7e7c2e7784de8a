"""Preprocessors (A1111-ControlNet's "modules"): turn an input image into a control map.

The table keeps A1111-ControlNet's internal names (API `module_list?alias_names=false`), UI labels
(`alias_names=true`), slider ranges, tags and sort order. Model-free ones always work; model-based
ones need annotator weights the user placed (nothing is downloaded) under
`<models_dir>/ControlNetPreprocessor/` in A1111-ControlNet's `annotator/downloads` layout
(e.g. `hed/ControlNetHED.pth`), and are listed only when their files are there.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from backend.errors import InvalidRequest, ModelLoadError
from backend.models.loader import read_state_dict
from lib_controlnet.images import hwc3, resize_with_pad

ANNOTATOR_SUBDIR = "ControlNetPreprocessor"


@dataclass(frozen=True)
class Slider:
    """One preprocessor parameter (resolution, threshold A/B). A hidden slider keeps A1111-ControlNet's
    placeholder range 0..1 with value 0.5, which is what out-of-range unit values are reset to."""

    label: str = "EMPTY_LABEL"
    minimum: float = 0.0
    maximum: float = 1.0
    value: float = 0.5
    step: float = 0.01
    visible: bool = True

    def api_json(self) -> dict[str, Any]:
        return {"name": self.label, "value": self.value, "min": self.minimum, "max": self.maximum, "step": self.step}


HIDDEN = Slider(visible=False)
RESOLUTION = Slider("Resolution", 64, 2048, 512, 8)


class Annotators:
    """Loaded annotator networks (HED, lineart...), built once per weight file on `device`."""

    def __init__(self, root: Path | None, device: torch.device | None = None) -> None:
        self.root = root
        self.device = device or torch.device("cpu")
        self._loaded: dict[tuple[Path, str], nn.Module] = {}
        self._lock = threading.Lock()

    def find(self, relative: str) -> Path | None:
        """The weight file `relative` ("hed/ControlNetHED.pth"), in its sub-folder or directly in the root."""
        if self.root is None:
            return None
        for candidate in (self.root / relative, self.root / Path(relative).name):
            if candidate.is_file():
                return candidate
        return None

    def has(self, relative: str) -> bool:
        return self.find(relative) is not None

    def load(self, relative: str, build: Callable[[], nn.Module]) -> nn.Module:
        """The network `build()` makes, with the weights of `relative` loaded strictly (cached)."""
        path = self.find(relative)
        if path is None:
            raise ModelLoadError(f"preprocessor weights missing: place {relative} in {self.root or ANNOTATOR_SUBDIR}")
        key = (path, str(self.device))
        with self._lock:
            if key not in self._loaded:
                module = build()
                try:
                    module.load_state_dict(read_state_dict(path), strict=True)
                except RuntimeError as exc:
                    raise ModelLoadError(f"{path.name}: not the expected annotator weights ({exc})") from exc
                self._loaded[key] = module.to(self.device, torch.float32).eval()
            return self._loaded[key]


# run(image, resolution, threshold_a, threshold_b, annotators) -> control map (H x W x 3 uint8)
RunFn = Callable[[np.ndarray, float, float, float, Annotators], np.ndarray]


@dataclass(frozen=True)
class Preprocessor:
    name: str
    label: str
    run: RunFn
    resolution: Slider = RESOLUTION
    slider_1: Slider = HIDDEN
    slider_2: Slider = HIDDEN
    tags: tuple[str, ...] = ()
    priority: int = 0
    weights: tuple[str, ...] = ()
    # A1111-ControlNet weakens these maps in the hires pass (soft injection), as they tend to
    # leave artifacts when applied at full strength on the upscaled image.
    soft_in_hires: bool = False

    def sliders(self) -> list[Slider]:
        return [s for s in (self.resolution, self.slider_1, self.slider_2) if s.visible]

    def missing_weights(self, annotators: Annotators) -> list[str]:
        return [w for w in self.weights if not annotators.has(w)]


# ---- model-free annotators -------------------------------------------------------------------------

def _none(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    return hwc3(image)


def _invert(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    return 255 - hwc3(image)


def _canny(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    padded, unpad = resize_with_pad(image, res)
    return unpad(cv2.cvtColor(cv2.Canny(padded, int(a), int(b)), cv2.COLOR_GRAY2RGB))


def _threshold(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    padded, unpad = resize_with_pad(image, res)
    result = np.zeros_like(padded)
    result[np.min(padded, axis=2) > a] = 255
    return unpad(result)


def _scribble_xdog(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    # Difference of Gaussians: strokes are where the fine blur is darker than the coarse one.
    padded, unpad = resize_with_pad(image, res)
    fine = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(padded.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    result = np.zeros_like(padded)
    result[2 * (255 - dog.astype(np.int32)) > a] = 255
    return unpad(result)


def _lineart_standard(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    padded, unpad = resize_with_pad(image, res)
    x = padded.astype(np.float32)
    intensity = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = intensity[intensity > 8]
    intensity /= max(16.0, float(np.median(strong)) if strong.size else 16.0)
    return unpad(hwc3((intensity * 127).clip(0, 255).astype(np.uint8)))


def _blur_gaussian(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    padded, unpad = resize_with_pad(image, res)
    return cv2.GaussianBlur(unpad(padded), (0, 0), float(a))


def _tile_resample(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    img = hwc3(image)
    if a < 1.1:
        return img
    height, width = int(img.shape[0] / a), int(img.shape[1] / a)
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA)


# ---- HED soft edges (lllyasviel's Apache-2 re-implementation, weights "ControlNetHED.pth") ---------

class _HedBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, layers: int) -> None:
        super().__init__()
        self.convs = nn.Sequential(*[nn.Conv2d(channels_in if i == 0 else channels_out, channels_out, 3, padding=1)
                                     for i in range(layers)])
        self.projection = nn.Conv2d(channels_out, 1, 1)

    def forward(self, x: torch.Tensor, downsample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if downsample:
            x = torch.nn.functional.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = torch.relu(conv(x))
        return x, self.projection(x)


class _Hed(nn.Module):
    """Five VGG-like stages; each one's 1x1 projection is an edge map at its scale."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        specs = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))
        for i, spec in enumerate(specs, start=1):
            self.add_module(f"block{i}", _HedBlock(*spec))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, projections = x - self.norm, []
        for i in range(1, 6):
            h, projection = getattr(self, f"block{i}")(h, downsample=i > 1)
            projections.append(projection)
        return projections


HED_WEIGHTS = "hed/ControlNetHED.pth"


def _hed_edges(image: np.ndarray, ann: Annotators, *, safe: bool) -> np.ndarray:
    net = ann.load(HED_WEIGHTS, _Hed)
    height, width = image.shape[:2]
    with torch.no_grad():
        x = torch.from_numpy(image.copy()).float().to(ann.device).permute(2, 0, 1)[None]
        maps = [m[0, 0].float().cpu().numpy() for m in net(x)]
    stacked = np.stack([cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR) for m in maps], axis=2)
    edge = 1.0 / (1.0 + np.exp(-np.mean(stacked, axis=2)))
    if safe:
        # Quantise to a few levels so the map carries no hidden detail ("hedsafe").
        edge = (edge * 3.0).astype(np.int32).astype(np.float32) / 2.0
    return (edge * 255.0).clip(0, 255).astype(np.uint8)


def _hed(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    padded, unpad = resize_with_pad(image, res)
    return unpad(hwc3(_hed_edges(padded, ann, safe=False)))


def _hed_safe(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    padded, unpad = resize_with_pad(image, res)
    return unpad(hwc3(_hed_edges(padded, ann, safe=True)))


def _thin_lines(x: np.ndarray, threshold: int, sigma: float) -> np.ndarray:
    """Non-maximum suppression along four directions, then binarise (A1111-ControlNet's `nms`)."""
    blurred = cv2.GaussianBlur(x.astype(np.float32), (0, 0), sigma)
    kernels = [np.array(k, dtype=np.uint8) for k in (
        [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [[0, 1, 0], [0, 1, 0], [0, 1, 0]],
        [[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[0, 0, 1], [0, 1, 0], [1, 0, 0]])]
    peaks = np.zeros_like(blurred)
    for kernel in kernels:
        np.putmask(peaks, cv2.dilate(blurred, kernel=kernel) == blurred, blurred)
    result = np.zeros_like(peaks, dtype=np.uint8)
    result[peaks > threshold] = 255
    return result


def _scribble_hed(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
    edges = _hed(image, res, a, b, ann)[:, :, 0]
    lines = cv2.GaussianBlur(_thin_lines(edges, 127, 3.0), (0, 0), 3.0)
    lines[lines > 4] = 255
    lines[lines < 255] = 0
    return hwc3(lines)


# ---- lineart (lllyasviel's sketch generator, weights "sk_model.pth" / "sk_model2.pth") -----------------

class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class _LineartGenerator(nn.Module):
    """Encoder (7x7 conv, two stride-2 convs), three residual blocks, decoder back to one channel."""

    def __init__(self) -> None:
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU(inplace=True))
        self.model1 = nn.Sequential(
            nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.InstanceNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 256, 3, stride=2, padding=1), nn.InstanceNorm2d(256), nn.ReLU(inplace=True))
        self.model2 = nn.Sequential(*[_Residual(256) for _ in range(3)])
        self.model3 = nn.Sequential(
            nn.ConvTranspose2d(256, 128, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(128),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1), nn.InstanceNorm2d(64),
            nn.ReLU(inplace=True))
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


LINEART_WEIGHTS = "lineart/sk_model.pth"
LINEART_COARSE_WEIGHTS = "lineart/sk_model2.pth"


def _lineart_with(weights: str) -> RunFn:
    def run(image: np.ndarray, res: float, a: float, b: float, ann: Annotators) -> np.ndarray:
        padded, unpad = resize_with_pad(image, res)
        net = ann.load(weights, _LineartGenerator)
        with torch.no_grad():
            x = torch.from_numpy(padded.copy()).float().to(ann.device).permute(2, 0, 1)[None] / 255.0
            line = net(x)[0, 0].float().cpu().numpy()
        # The network draws dark lines on white; ControlNet's lineart models want white on black.
        return unpad(hwc3(255 - (line * 255.0).clip(0, 255).astype(np.uint8)))

    return run


PREPROCESSORS: tuple[Preprocessor, ...] = (
    Preprocessor("none", "none", _none, priority=10),
    Preprocessor("canny", "canny", _canny, RESOLUTION, Slider("Low Threshold", 0, 256, 100, 1),
                 Slider("High Threshold", 0, 256, 200, 1), tags=("Canny",), priority=100, soft_in_hires=True),
    Preprocessor("invert", "invert (from white bg & black line)", _invert, HIDDEN,
                 tags=("Canny", "Lineart", "Scribble", "Sketch", "MLSD"), priority=20),
    Preprocessor("threshold", "threshold", _threshold, RESOLUTION, Slider("Binarization Threshold", 0, 255, 127, 1)),
    Preprocessor("scribble_xdog", "scribble_xdog", _scribble_xdog, RESOLUTION, Slider("XDoG Threshold", 1, 64, 32, 1),
                 tags=("Scribble", "Sketch")),
    Preprocessor("lineart_standard", "lineart_standard (from white bg & black line)", _lineart_standard,
                 tags=("Lineart",), priority=100),
    Preprocessor("blur_gaussian", "blur_gaussian", _blur_gaussian, RESOLUTION, Slider("Sigma", 0.01, 64.0, 9.0, 0.01),
                 tags=("Tile", "Blur")),
    Preprocessor("tile_resample", "tile_resample", _tile_resample, RESOLUTION,
                 Slider("Down Sampling Rate", 1.0, 8.0, 1.0, 0.01), tags=("Tile", "Blur"), priority=100),
    Preprocessor("hed", "softedge_hed", _hed, tags=("SoftEdge",), weights=(HED_WEIGHTS,)),
    Preprocessor("hed_safe", "softedge_hedsafe", _hed_safe, tags=("SoftEdge",), weights=(HED_WEIGHTS,)),
    Preprocessor("scribble_hed", "scribble_hed", _scribble_hed, tags=("Scribble", "Sketch"), weights=(HED_WEIGHTS,)),
    Preprocessor("lineart", "lineart_realistic", _lineart_with(LINEART_WEIGHTS), tags=("Lineart",),
                 weights=(LINEART_WEIGHTS,)),
    Preprocessor("lineart_coarse", "lineart_coarse", _lineart_with(LINEART_COARSE_WEIGHTS), tags=("Lineart",),
                 weights=(LINEART_COARSE_WEIGHTS,)),
)

# Model-based annotators of A1111-ControlNet that this build has no network for: named so that a
# request for one gets a clear answer instead of "unknown module".
UNSUPPORTED = frozenset({
    "depth", "depth_midas", "depth_leres", "depth_leres++", "depth_zoe", "depth_anything", "depth_hand_refiner",
    "normal_map", "normal_midas", "normal_bae", "openpose", "openpose_face", "openpose_faceonly", "openpose_full",
    "openpose_hand", "dw_openpose_full", "animal_openpose", "mlsd", "pidinet", "softedge_pidinet", "pidinet_safe",
    "softedge_pidisafe", "pidinet_scribble", "scribble_pidinet", "pidinet_sketch", "t2ia_sketch_pidi",
    "segmentation", "seg_ufade20k", "oneformer_coco", "seg_ofcoco", "oneformer_ade20k", "seg_ofade20k",
    "anime_face_segment", "seg_anime_face", "lineart_anime", "lineart_anime_denoise", "mediapipe_face", "shuffle",
    "inpaint", "inpaint_global_harmonious", "inpaint_only", "inpaint_only+lama", "reference_only", "reference_adain",
    "reference_adain+attn", "recolor_luminance", "recolor_intensity", "te_hed", "softedge_teed", "clip_vision",
    "t2ia_style_clipvision", "color", "t2ia_color_grid", "ip-adapter_clip_sd15", "ip-adapter_clip_sdxl",
    "revision_clipvision", "revision_ignore_prompt", "tile_colorfix", "tile_colorfix+sharp",
})


def find(name: str) -> Preprocessor | None:
    """The preprocessor called `name` (internal name or UI label; case-insensitive as a fallback)."""
    for p in PREPROCESSORS:
        if name in (p.name, p.label):
            return p
    lowered = name.lower()
    return next((p for p in PREPROCESSORS if lowered in (p.name.lower(), p.label.lower())), None)


def get(name: str, field: str) -> Preprocessor:
    """`find`, or InvalidRequest naming `field` with what is wrong."""
    found = find(name)
    if found is not None:
        return found
    if name.lower() in UNSUPPORTED:
        raise InvalidRequest(field, f"preprocessor {name!r} is not supported by this ControlNet extension; "
                                    f"supported: {', '.join(p.name for p in PREPROCESSORS)}")
    raise InvalidRequest(field, f"module({name}) not found in supported modules: "
                                f"{', '.join(p.name for p in PREPROCESSORS)}")


def available(annotators: Annotators) -> list[Preprocessor]:
    """The usable preprocessors in A1111-ControlNet's order: "none" first, then by priority and label,
    descending; model-based ones only when their weights are present."""
    usable = [p for p in PREPROCESSORS if p.name != "none" and not p.missing_weights(annotators)]
    ordered = sorted(usable, key=lambda p: str(p.priority).zfill(8) + p.label, reverse=True)
    return [PREPROCESSORS[0], *ordered]


def tag_filters(tag: str) -> set[str]:
    """Substrings of model file names that belong to a control type (A1111-ControlNet's tag_to_filters)."""
    aliases = {"instructp2p": ["ip2p"], "segmentation": ["seg"], "normalmap": ["normal"],
               "t2i-adapter": ["t2i_adapter", "t2iadapter", "t2ia"], "ip-adapter": ["ip_adapter", "ipadapter"],
               "openpose": ["openpose", "densepose"], "instant-id": ["instant_id", "instantid"],
               "scribble": ["sketch"], "tile": ["blur"]}
    lowered = tag.lower()
    return {lowered, *aliases.get(lowered, [])}


def run(preprocessor: Preprocessor, image: np.ndarray, resolution: float, threshold_a: float, threshold_b: float,
        annotators: Annotators, field: str = "module") -> np.ndarray:
    """The control map of `image`; a model-based preprocessor without its weights is an InvalidRequest
    naming the missing file."""
    missing = preprocessor.missing_weights(annotators)
    if missing:
        where = annotators.root or ANNOTATOR_SUBDIR
        raise InvalidRequest(field, f"preprocessor {preprocessor.label!r} needs its annotator weights: place "
                                    f"{', '.join(missing)} in {where} (nothing is downloaded)")
    return hwc3(preprocessor.run(image, resolution, threshold_a, threshold_b, annotators))
