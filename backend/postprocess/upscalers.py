"""Image upscalers as A1111 lists and runs them (reference section 11).

- `UpscalerRegistry` lists None, Lanczos and Nearest, then every model file found under
  models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT and ScuNET, sorted by lower-case name.
  Files A1111 knows by a display name get that name ("RealESRGAN_x4plus.pth" is
  "R-ESRGAN 4x+"); any other file is named by its stem.
- Model files are read as plain tensors (`weights_only=True` or safetensors) and turned
  into a network by spandrel, which recognises the architecture from the state dict.
  Nothing is ever downloaded: a well-known model whose file is missing gives an error
  naming the file to put where.
- `upscale` follows A1111's `Upscaler.upscale`: the model runs (up to three times while the
  image is still smaller than the target), then Lanczos gives the final size. Large images
  run in overlapping tiles blended with feathered weights, so no seams show.
- `LATENT_UPSCALE_MODES` are the six "Latent ..." hires-fix modes; they resize latents, not
  images, so they are data here and the hires pass applies them.
"""

from __future__ import annotations

import logging
import math
import pickle
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from backend.config import OPTION_DEFAULTS
from backend.errors import InvalidRequest, ModelLoadError, ModelNotFound, WebUIError

logger = logging.getLogger(__name__)

UpscalerKind = Literal["none", "lanczos", "nearest", "model"]
MODEL_EXTENSIONS: tuple[str, ...] = (".pth", ".pt", ".safetensors")
# A1111 stops after this many model passes even if the image is still too small.
_MAX_PASSES = 3
# A1111's Upscaler.upscale rounds the target of "scale by" down to a multiple of 8.
_SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class LatentUpscaleMode:
    """A hires-fix latent upscaler: a torch `interpolate` mode, with or without antialiasing."""

    name: str
    mode: str
    antialias: bool


LATENT_UPSCALE_MODES: tuple[LatentUpscaleMode, ...] = (
    LatentUpscaleMode("Latent", "bilinear", False),
    LatentUpscaleMode("Latent (antialiased)", "bilinear", True),
    LatentUpscaleMode("Latent (bicubic)", "bicubic", False),
    LatentUpscaleMode("Latent (bicubic antialiased)", "bicubic", True),
    LatentUpscaleMode("Latent (nearest)", "nearest", False),
    LatentUpscaleMode("Latent (nearest-exact)", "nearest-exact", False),
)


def find_latent_mode(name: str | None) -> LatentUpscaleMode | None:
    """The latent mode called `name`, or None when it names an image upscaler."""
    return next((mode for mode in LATENT_UPSCALE_MODES if mode.name == name), None)


@dataclass(frozen=True)
class UpscalerFolder:
    """One models/<folder> that holds upscaler files, and the options that tile its models."""

    folder: str
    tile_option: str
    overlap_option: str


# A1111 tiles ESRGAN, Real-ESRGAN and HAT with the ESRGAN options, the others with their own.
UPSCALER_FOLDERS: tuple[UpscalerFolder, ...] = (
    UpscalerFolder("ESRGAN", "ESRGAN_tile", "ESRGAN_tile_overlap"),
    UpscalerFolder("RealESRGAN", "ESRGAN_tile", "ESRGAN_tile_overlap"),
    UpscalerFolder("SwinIR", "SWIN_tile", "SWIN_tile_overlap"),
    UpscalerFolder("DAT", "DAT_tile", "DAT_tile_overlap"),
    UpscalerFolder("HAT", "ESRGAN_tile", "ESRGAN_tile_overlap"),
    UpscalerFolder("ScuNET", "SCUNET_tile", "SCUNET_tile_overlap"),
)


@dataclass(frozen=True)
class KnownUpscaler:
    """A model A1111 offers by name (and downloads); `filenames[0]` is the file it saves."""

    name: str
    folder: str
    filenames: tuple[str, ...]
    scale: int


KNOWN_UPSCALERS: tuple[KnownUpscaler, ...] = (
    KnownUpscaler("R-ESRGAN General 4xV3", "RealESRGAN", ("realesr-general-x4v3.pth",), 4),
    KnownUpscaler("R-ESRGAN General WDN 4xV3", "RealESRGAN", ("realesr-general-wdn-x4v3.pth",), 4),
    KnownUpscaler("R-ESRGAN AnimeVideo", "RealESRGAN", ("realesr-animevideov3.pth",), 4),
    KnownUpscaler("R-ESRGAN 4x+", "RealESRGAN", ("RealESRGAN_x4plus.pth",), 4),
    KnownUpscaler("R-ESRGAN 4x+ Anime6B", "RealESRGAN", ("RealESRGAN_x4plus_anime_6B.pth",), 4),
    KnownUpscaler("R-ESRGAN 2x+", "RealESRGAN", ("RealESRGAN_x2plus.pth",), 2),
    KnownUpscaler("DAT x2", "DAT", ("DAT_x2.pth",), 2),
    KnownUpscaler("DAT x3", "DAT", ("DAT_x3.pth",), 3),
    KnownUpscaler("DAT x4", "DAT", ("DAT_x4.pth",), 4),
    KnownUpscaler("SwinIR 4x", "SwinIR", ("SwinIR_4x.pth", "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth"), 4),
    KnownUpscaler("ScuNET GAN", "ScuNET", ("scunet_color_real_gan.pth",), 1),
    KnownUpscaler("ScuNET PSNR", "ScuNET", ("scunet_color_real_psnr.pth",), 1),
)

# A1111 guesses an unknown file's scale from "4x"/"x2" in its name, else assumes 4.
_SCALE_IN_NAME = re.compile(r"(\d)[xX]|[xX](\d)")
_DEFAULT_SCALE = 4


@dataclass(frozen=True)
class UpscalerInfo:
    """One entry of the upscaler list.

    `scale` is the model's native factor: spandrel's value once the model has been
    loaded, until then A1111's guess (known table, "4x" in the name, else 4).
    `folder` is the models/ sub-folder ("" for None, Lanczos and Nearest).
    """

    name: str
    kind: UpscalerKind
    path: Path | None
    scale: int
    folder: str


BUILTIN_UPSCALERS: tuple[UpscalerInfo, ...] = (
    UpscalerInfo("None", "none", None, 4, ""),
    UpscalerInfo("Lanczos", "lanczos", None, 4, ""),
    UpscalerInfo("Nearest", "nearest", None, 4, ""),
)


class WeightsMissing(ModelNotFound):
    """A model A1111 would download is not on disk; the message names the file to put where."""

    def __init__(self, kind: str, name: str, expected: Path) -> None:
        WebUIError.__init__(
            self, f"{kind} {name!r} needs {expected} (weights are never downloaded: put the file there)"
        )
        self.kind = kind
        self.name = name
        self.expected = expected


# ---------------------------------------------------------------------------
# Loading model files with spandrel
# ---------------------------------------------------------------------------


def read_state_dict(path: Path) -> dict[str, Any]:
    """Tensors of a .pth/.pt/.ckpt/.safetensors file, unwrapped from params_ema/params/state_dict."""
    import spandrel
    from safetensors.torch import load_file

    if path.suffix.lower() == ".safetensors":
        state_dict = load_file(str(path), device="cpu")
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
            raise ModelLoadError(
                f"{path}: cannot be read as plain tensors (weights_only=True); "
                f"pickles that need code to load and TorchScript files are refused: {error}"
            ) from error
    if not isinstance(state_dict, dict):
        raise ModelLoadError(f"{path}: not a state dict")
    return spandrel.canonicalize_state_dict(state_dict)


def spandrel_registry() -> Any:
    """spandrel's architectures, plus spandrel_extra_arches' (CodeFormer...) when installed.

    A registry of our own, so the package-wide MAIN_REGISTRY is never modified.
    """
    import spandrel

    registry = spandrel.ArchRegistry()
    registry.add(*spandrel.MAIN_REGISTRY)
    try:
        import spandrel_extra_arches
    except ImportError:
        return registry
    registry.add(*spandrel_extra_arches.EXTRA_REGISTRY, ignore_duplicates=True)
    return registry


def load_image_model(path: Path, *, device: torch.device, dtype: torch.dtype) -> Any:
    """A spandrel `ImageModelDescriptor` for the file, in eval mode on `device`.

    fp16/bf16 are used only where the architecture supports them; otherwise fp32.
    """
    import spandrel

    state_dict = read_state_dict(path)
    try:
        descriptor = spandrel.ModelLoader(registry=spandrel_registry()).load_from_state_dict(state_dict)
    except spandrel.UnsupportedModelError as error:
        raise ModelLoadError(f"{path}: not a model architecture spandrel knows") from error
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ModelLoadError(f"{path}: a {descriptor.architecture.name} model, not an image-to-image model")
    supported = (
        dtype == torch.float32
        or (dtype == torch.float16 and descriptor.supports_half)
        or (dtype == torch.bfloat16 and descriptor.supports_bfloat16)
    )
    descriptor.to(device=device, dtype=dtype if supported else torch.float32)
    descriptor.eval()
    return descriptor


# ---------------------------------------------------------------------------
# Tiled inference
# ---------------------------------------------------------------------------


def _tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile origins along one axis, spread evenly as A1111's split_grid does (overlaps >= overlap)."""
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


def _edge_weights(start: int, size: int, length: int, overlap: int, scale: int) -> torch.Tensor:
    """Blend weights of one tile along one axis, in output pixels.

    At an edge shared with a neighbour, the outer quarter of the overlap gets weight 0
    (the network saw zero padding there), the middle half ramps linearly to 1; facing
    ramps of two neighbours sum to 1. Image borders keep weight 1.
    """
    count = size * scale
    weights = torch.ones(count)
    if overlap == 0:
        return weights
    centres = torch.arange(count, dtype=torch.float32) + 0.5
    margin = overlap * scale / 4
    band = overlap * scale / 2
    if start > 0:
        weights = torch.minimum(weights, ((centres - margin) / band).clamp(0, 1))
    if start + size < length:
        weights = torch.minimum(weights, ((count - centres - margin) / band).clamp(0, 1))
    return weights


def tiled_inference(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, tile: int, overlap: int
) -> torch.Tensor:
    """Run `model` on (1, C, H, W) `image` in tiles of `tile` pixels overlapping by `overlap`.

    tile <= 0, or an image no larger than one tile, runs in one piece. The output is
    the weighted blend of the tile outputs (see `_edge_weights`), so it matches the
    untiled result wherever the network's receptive field fits in a quarter overlap.
    """
    _, _, height, width = image.shape
    if tile <= 0 or (height <= tile and width <= tile):
        return model(image)
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, {tile}), got {overlap}")
    output: torch.Tensor | None = None
    total: torch.Tensor | None = None
    scale = 0
    for top in _tile_starts(height, tile, overlap):
        for left in _tile_starts(width, tile, overlap):
            tile_h, tile_w = min(tile, height), min(tile, width)
            result = model(image[:, :, top : top + tile_h, left : left + tile_w].contiguous())
            if output is None:
                scale = result.shape[-1] // tile_w
                output = torch.zeros(
                    (1, result.shape[1], height * scale, width * scale), device=result.device, dtype=torch.float32
                )
                total = torch.zeros((1, 1, height * scale, width * scale), device=result.device, dtype=torch.float32)
            weight_y = _edge_weights(top, tile_h, height, overlap, scale).to(result.device)
            weight_x = _edge_weights(left, tile_w, width, overlap, scale).to(result.device)
            weight = (weight_y[:, None] * weight_x[None, :])[None, None]
            window = (slice(None), slice(None), slice(top * scale, (top + tile_h) * scale),
                      slice(left * scale, (left + tile_w) * scale))
            output[window] += result.float() * weight
            total[window] += weight
    assert output is not None and total is not None
    return (output / total.clamp_min(1e-8)).to(image.dtype)


def pil_to_tensor(image: Image.Image, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """RGB image -> (1, 3, H, W) tensor in [0, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None].to(device=device, dtype=dtype) / 255.0


def tensor_to_pil(tensor: torch.Tensor) -> Image.Image:
    """(1, 3, H, W) tensor in [0, 1] -> RGB image (rounded, as A1111 does)."""
    array = (tensor[0].float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


@dataclass
class _LoadedModel:
    key: tuple[Path, float, torch.device, torch.dtype]
    descriptor: Any


class UpscalerRegistry:
    """The upscalers of one models folder; holds at most one loaded model at a time.

    `extra_dirs` maps a folder name ("ESRGAN", "RealESRGAN"...) to one more place to scan
    (--esrgan-models-path, --realesrgan-models-path). The folders are scanned on the first
    `list`/`get` and again on `refresh`.
    """

    def __init__(self, models_dir: Path, extra_dirs: Mapping[str, Path] | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.extra_dirs = dict(extra_dirs or {})
        self._lock = threading.RLock()
        self._entries: dict[str, UpscalerInfo] | None = None
        self._native_scales: dict[Path, int] = {}
        self._loaded: _LoadedModel | None = None

    def refresh(self) -> None:
        """Rescan the folders."""
        found: list[UpscalerInfo] = []
        seen: set[str] = set()
        for spec in UPSCALER_FOLDERS:
            for path in self._model_files(spec.folder):
                name, scale = _display_name_and_scale(spec.folder, path)
                if name in seen:
                    logger.warning("upscaler %r found twice; using the first, ignoring %s", name, path)
                    continue
                seen.add(name)
                scale = self._native_scales.get(path, scale)
                found.append(UpscalerInfo(name, "model", path, scale, spec.folder))
        found.sort(key=lambda info: info.name.lower())
        with self._lock:
            self._entries = {info.name: info for info in (*BUILTIN_UPSCALERS, *found)}

    def list(self) -> list[UpscalerInfo]:
        """None, Lanczos, Nearest, then the model upscalers by lower-case name (A1111's order)."""
        return list(self._scan().values())

    def get(self, name: str) -> UpscalerInfo:
        """The upscaler called `name`; WeightsMissing for a known model whose file is absent."""
        entries = self._scan()
        info = entries.get(name)
        if info is not None:
            return info
        known = next((k for k in KNOWN_UPSCALERS if k.name == name), None)
        if known is not None:
            raise WeightsMissing("upscaler", name, self.models_dir / known.folder / known.filenames[0])
        raise ModelNotFound("upscaler", name, list(entries))

    def upscale(
        self,
        image: Image.Image,
        scale: float,
        name: str,
        *,
        opts: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> Image.Image:
        """Upscale by `scale` as A1111's Upscaler.upscale does.

        The target is (w*scale, h*scale) rounded down to a multiple of 8; the upscaler
        runs until the image covers it (at most three passes; once even for scale 1, so
        a 1x restoration model still runs), then Lanczos resizes to the target.
        """
        target = (int(image.width * scale // _SIZE_MULTIPLE * _SIZE_MULTIPLE),
                  int(image.height * scale // _SIZE_MULTIPLE * _SIZE_MULTIPLE))
        if min(target) < 1:
            raise InvalidRequest(
                "upscaling_resize", f"{image.width}x{image.height} scaled by {scale} is under 8 pixels"
            )
        return self.upscale_to(image, scale, target, name, opts=opts, device=device, dtype=dtype)

    def upscale_to(
        self,
        image: Image.Image,
        scale: float,
        target: tuple[int, int],
        name: str,
        *,
        opts: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> Image.Image:
        """Run the upscaler for `scale` until the image covers `target`, then Lanczos to exactly `target`."""
        info = self.get(name)
        for attempt in range(_MAX_PASSES):
            covers = image.width >= target[0] and image.height >= target[1]
            if covers and (attempt > 0 or scale != 1):
                break
            before = image.size
            image = self._one_pass(image, info, scale, opts, device, dtype)
            if image.size == before:
                break
        if image.size != target:
            image = image.resize(target, resample=Image.Resampling.LANCZOS)
        return image

    def unload(self) -> None:
        """Drop the loaded model (for face restoration or a checkpoint that needs the memory)."""
        with self._lock:
            self._loaded = None

    def _one_pass(
        self,
        image: Image.Image,
        info: UpscalerInfo,
        scale: float,
        opts: Mapping[str, Any],
        device: torch.device,
        dtype: torch.dtype,
    ) -> Image.Image:
        if info.kind == "none":
            return image
        if info.kind in ("lanczos", "nearest"):
            resample = Image.Resampling.LANCZOS if info.kind == "lanczos" else Image.Resampling.NEAREST
            return image.resize((int(image.width * scale), int(image.height * scale)), resample=resample)
        spec = next(spec for spec in UPSCALER_FOLDERS if spec.folder == info.folder)
        tile = int(option_value(opts, spec.tile_option))
        overlap = int(option_value(opts, spec.overlap_option))
        if tile > 0 and not 0 <= overlap < tile:
            raise InvalidRequest(
                spec.overlap_option, f"must be between 0 and {spec.tile_option} - 1 ({tile - 1}), got {overlap}"
            )
        with self._lock:
            descriptor = self._model(info, device, dtype)
            model_dtype = next(descriptor.model.parameters()).dtype
            with torch.inference_mode():
                result = tiled_inference(descriptor, pil_to_tensor(image, device, model_dtype), tile, overlap)
        return tensor_to_pil(result)

    def _model(self, info: UpscalerInfo, device: torch.device, dtype: torch.dtype) -> Any:
        assert info.path is not None
        if not info.path.is_file():
            raise WeightsMissing("upscaler", info.name, info.path)
        key = (info.path, info.path.stat().st_mtime, device, dtype)
        if self._loaded is not None and self._loaded.key == key:
            return self._loaded.descriptor
        # Drop the previous model first, so two never sit in memory together.
        self._loaded = None
        descriptor = load_image_model(info.path, device=device, dtype=dtype)
        self._loaded = _LoadedModel(key, descriptor)
        self._native_scales[info.path] = int(descriptor.scale)
        if self._entries is not None and info.name in self._entries:
            self._entries[info.name] = replace(info, scale=int(descriptor.scale))
        return descriptor

    def _scan(self) -> dict[str, UpscalerInfo]:
        with self._lock:
            if self._entries is None:
                self.refresh()
            assert self._entries is not None
            return dict(self._entries)

    def _model_files(self, folder: str) -> list[Path]:
        roots = [self.models_dir / folder]
        if folder in self.extra_dirs:
            roots.append(Path(self.extra_dirs[folder]))
        files: list[Path] = []
        for root in roots:
            if not root.is_dir():
                continue
            files.extend(
                sorted(
                    path for path in root.rglob("*")
                    if path.suffix.lower() in MODEL_EXTENSIONS and path.is_file() and not path.name.startswith(".")
                )
            )
        return files


def _display_name_and_scale(folder: str, path: Path) -> tuple[str, int]:
    for known in KNOWN_UPSCALERS:
        if known.folder == folder and path.name in known.filenames:
            return known.name, known.scale
    match = _SCALE_IN_NAME.search(path.stem)
    scale = int(match.group(1) or match.group(2)) if match else _DEFAULT_SCALE
    return path.stem, scale


def option_value(opts: Mapping[str, Any], key: str) -> Any:
    """opts[key], or the A1111 default of that option when `opts` does not have it."""
    return opts[key] if key in opts else OPTION_DEFAULTS[key].default


def resize_to(
    image: Image.Image,
    width: int,
    height: int,
    upscaler_name: str | None,
    registry: UpscalerRegistry,
    opts: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> Image.Image:
    """Resize to exactly width x height, enlarging with the named upscaler (A1111's resize_image).

    The upscaler runs only when the image grows (scale = max(width/w, height/h) > 1) and
    is not "None"/None or a greyscale image; everything else is a plain Lanczos resize.
    An unknown name raises ModelNotFound (A1111 silently fell back to the first upscaler).
    """
    scale = max(width / image.width, height / image.height)
    if upscaler_name in (None, "None") or image.mode == "L" or scale <= 1.0:
        return image.resize((width, height), resample=Image.Resampling.LANCZOS)
    return registry.upscale_to(image, scale, (width, height), upscaler_name, opts=opts, device=device, dtype=dtype)
