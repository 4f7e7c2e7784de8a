"""A1111's Extras tab: upscale, then GFPGAN, then CodeFormer, on one or many images (section 11).

The steps run in A1111's postprocessing order (Upscale 1000, GFPGAN 2000, CodeFormer 3000),
each adding its "Key: value" pairs to the image's extras infotext:

    Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN 4x+, Postprocess upscaler 2: Lanczos

The infotext is saved in the PNG chunk `extras` (and `postprocessing`, as A1111 does), next
to the image's original `parameters`. Files go to the output folder without a date
sub-folder; in batches they keep the input's file name (option use_original_name_batch).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image, UnidentifiedImageError

from backend.errors import InvalidRequest
from backend.jobs.progress import JobState
from backend.postprocess.images import read_info_from_image, save_image
from backend.postprocess.infotext import quote
from backend.postprocess.upscalers import UpscalerRegistry, option_value

logger = logging.getLogger(__name__)

RESIZE_SCALE_BY = 0
RESIZE_SCALE_TO = 1
EXTRAS_INFOTEXT_SECTION = "extras"
# A1111 also keeps the text under this key in the image's info (so API responses carry it).
POSTPROCESSING_INFO_KEY = "postprocessing"


class FaceRestorer(Protocol):
    """What the Extras need from face restoration (FaceRestorerRegistry implements it)."""

    def restore_faces(
        self,
        image: Image.Image,
        model_name: str,
        *,
        codeformer_weight: float = 0.5,
        visibility: float = 1.0,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        unload_after: bool = False,
    ) -> Image.Image: ...


@dataclass
class ExtrasRequest:
    """The Extras settings, with A1111's API field names and defaults (ExtrasBaseRequest).

    resize_mode 0 scales by `upscaling_resize` (limited by `max_side_length` when not 0),
    1 scales to upscaling_resize_w x upscaling_resize_h (cropped to that size when
    `upscaling_crop`). `upscale_first` is accepted and ignored, as in A1111 1.10.
    `save` writes the results to disk (A1111's UI does, its API does not).
    """

    resize_mode: int = RESIZE_SCALE_BY
    show_extras_results: bool = True
    gfpgan_visibility: float = 0
    codeformer_visibility: float = 0
    codeformer_weight: float = 0
    upscaling_resize: float = 2
    upscaling_resize_w: int = 512
    upscaling_resize_h: int = 512
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = 0
    upscale_first: bool = False
    max_side_length: int = 0
    save: bool = True

    def validate(self) -> None:
        """InvalidRequest naming the first bad field."""
        if self.resize_mode not in (RESIZE_SCALE_BY, RESIZE_SCALE_TO):
            raise InvalidRequest("resize_mode", f"must be 0 (scale by) or 1 (scale to), got {self.resize_mode}")
        if self.resize_mode == RESIZE_SCALE_BY and not self.upscaling_resize > 0:
            raise InvalidRequest("upscaling_resize", f"must be > 0, got {self.upscaling_resize}")
        if self.resize_mode == RESIZE_SCALE_TO:
            for field in ("upscaling_resize_w", "upscaling_resize_h"):
                if getattr(self, field) < 1:
                    raise InvalidRequest(field, f"must be >= 1, got {getattr(self, field)}")
        if self.max_side_length < 0:
            raise InvalidRequest("max_side_length", f"must be >= 0, got {self.max_side_length}")
        fractions = ("gfpgan_visibility", "codeformer_visibility", "codeformer_weight", "extras_upscaler_2_visibility")
        for field in fractions:
            value = getattr(self, field)
            if not 0 <= value <= 1:
                raise InvalidRequest(field, f"must be between 0 and 1, got {value}")


@dataclass
class ExtrasResult:
    """One processed image (None when a directory batch hides results), its infotext, and where it went."""

    image: Image.Image | None
    infotext: str
    saved_path: Path | None


def default_output_dir(opts: Mapping[str, Any], data_dir: Path) -> Path:
    """outdir_samples, else outdir_extras_samples, relative to the data dir (A1111's outpath)."""
    folder = option_value(opts, "outdir_samples") or option_value(opts, "outdir_extras_samples")
    return data_dir / folder


def run_extras(
    images: Sequence[tuple[Image.Image | Path, str | None]],
    req: ExtrasRequest,
    *,
    upscalers: UpscalerRegistry,
    face_restorers: FaceRestorer,
    opts: Mapping[str, Any],
    output_dir: Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    state: JobState | None = None,
    show_results: bool = True,
) -> list[ExtrasResult]:
    """Process (image, name) pairs; an image may be a file path, opened only when its turn comes.

    `name` (a file name, or None for a single image) names the saved file in batches.
    `state`, when given, counts the images and is checked between images for interrupt
    (stop here) and skip (drop this image's result). With `show_results` False the
    results carry no image, as A1111's "Batch from Directory" without "Show result images".
    Files that cannot be read as images are skipped, as A1111 does.
    """
    req.validate()
    _check_upscaler_names(req, upscalers)
    if state is not None:
        state.begin("extras", len(images))
    results: list[ExtrasResult] = []
    for source, name in images:
        if state is not None:
            if state.interrupted or state.stopping_generation:
                break
            state.textinfo = name
        image = _open(source)
        if image is None:
            continue
        result = _process_one(image, name, req, upscalers, face_restorers, opts, output_dir, device, dtype)
        skipped = state is not None and state.skipped
        if state is not None:
            state.next_job()
        if skipped:
            continue
        if not show_results:
            result.image = None
        results.append(result)
    return results


def extras_from_directory(
    input_dir: Path,
    output_dir: Path | str | None,
    req: ExtrasRequest,
    *,
    upscalers: UpscalerRegistry,
    face_restorers: FaceRestorer,
    opts: Mapping[str, Any],
    default_dir: Path,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    state: JobState | None = None,
) -> list[ExtrasResult]:
    """A1111's "Batch from Directory": every file in `input_dir` (not recursive) that is an image.

    Results go to `output_dir`, or to `default_dir` when it is "" or None, under their
    input names; `req.show_extras_results` decides whether results keep their images.
    """
    if not input_dir.is_dir():
        raise InvalidRequest("extras_batch_input_dir", f"not a directory: {input_dir}")
    files = sorted(path for path in input_dir.iterdir() if path.is_file())
    return run_extras(
        [(path, str(path)) for path in files], req, upscalers=upscalers, face_restorers=face_restorers,
        opts=opts, output_dir=Path(output_dir) if output_dir else default_dir, device=device, dtype=dtype, state=state,
        show_results=req.show_extras_results,
    )


def _open(source: Image.Image | Path) -> Image.Image | None:
    if isinstance(source, Image.Image):
        return source
    try:
        with Image.open(source) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError):
        logger.info("extras: skipping %s (not an image)", source)
        return None


# ---------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------


def _process_one(
    image: Image.Image,
    name: str | None,
    req: ExtrasRequest,
    upscalers: UpscalerRegistry,
    face_restorers: FaceRestorer,
    opts: Mapping[str, Any],
    output_dir: Path,
    device: torch.device,
    dtype: torch.dtype,
) -> ExtrasResult:
    # 1. Keep the original metadata, including the generation parameters.
    parameters, existing_info = read_info_from_image(image)
    if parameters:
        existing_info["parameters"] = parameters
    info: dict[str, Any] = {}
    nametags: list[str] = []

    # 2. The operations, in A1111's order.
    result = image.convert("RGB")
    result = _upscale_step(result, req, info, nametags, upscalers, opts, device, dtype)
    if req.gfpgan_visibility != 0:
        result = face_restorers.restore_faces(
            result, "GFPGAN", visibility=req.gfpgan_visibility, device=device, dtype=dtype,
            unload_after=bool(option_value(opts, "face_restoration_unload")),
        )
        info["GFPGAN visibility"] = round(req.gfpgan_visibility, 3)
    if req.codeformer_visibility != 0:
        result = face_restorers.restore_faces(
            result, "CodeFormer", codeformer_weight=req.codeformer_weight, visibility=req.codeformer_visibility,
            device=device, dtype=dtype, unload_after=bool(option_value(opts, "face_restoration_unload")),
        )
        info["CodeFormer visibility"] = round(req.codeformer_visibility, 3)
        info["CodeFormer weight"] = round(req.codeformer_weight, 3)

    # 3. The extras infotext, in the image's info and in the saved file.
    infotext = ", ".join(k if k == v else f"{k}: {quote(v)}" for k, v in info.items() if v is not None)
    if option_value(opts, "enable_pnginfo"):
        existing_info[POSTPROCESSING_INFO_KEY] = infotext
        result.info = dict(existing_info)

    # 4. Save.
    saved: Path | None = None
    if req.save:
        suffix = f"-{'-'.join(nametags)}" if nametags else ""
        basename, forced = "", None
        if option_value(opts, "use_original_name_batch") and name:
            basename = Path(name).stem
            forced = basename + suffix
        saved, _ = save_image(
            result, output_dir, basename, extension=option_value(opts, "samples_format"), info=infotext,
            short_filename=True, no_prompt=True, grid=False, suffix=suffix, opts=opts,
            pnginfo_section_name=EXTRAS_INFOTEXT_SECTION, existing_info=existing_info, forced_filename=forced,
        )
    return ExtrasResult(result, infotext, saved)


def _upscale_step(
    image: Image.Image,
    req: ExtrasRequest,
    info: dict[str, Any],
    nametags: list[str],
    upscalers: UpscalerRegistry,
    opts: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> Image.Image:
    """Upscaler 1, and Upscaler 2 blended over it by its visibility (A1111's Upscale script)."""
    if req.upscaler_1 == "None":
        return image
    upscaled = _scale(image, req.upscaler_1, req, info, upscalers, opts, device, dtype)
    info["Postprocess upscaler"] = req.upscaler_1
    if option_value(opts, "use_upscaler_name_as_suffix"):
        nametags.append(req.upscaler_1)
    if req.upscaler_2 != "None" and req.extras_upscaler_2_visibility > 0:
        second = _scale(image, req.upscaler_2, req, info, upscalers, opts, device, dtype)
        if second.mode != upscaled.mode:
            second = second.convert(upscaled.mode)
        upscaled = Image.blend(upscaled, second, req.extras_upscaler_2_visibility)
        info["Postprocess upscaler 2"] = req.upscaler_2
        if option_value(opts, "use_upscaler_name_as_suffix"):
            nametags.append(f"{req.upscaler_2} {req.extras_upscaler_2_visibility}")
    return upscaled


def _scale(
    image: Image.Image,
    upscaler: str,
    req: ExtrasRequest,
    info: dict[str, Any],
    upscalers: UpscalerRegistry,
    opts: Mapping[str, Any],
    device: torch.device,
    dtype: torch.dtype,
) -> Image.Image:
    """One upscaler run with A1111's "Scale by"/"Scale to" arithmetic and its infotext keys."""
    mode, crop = req.resize_mode, req.upscaling_crop
    to_width, to_height = req.upscaling_resize_w, req.upscaling_resize_h
    if mode == RESIZE_SCALE_TO:
        scale = max(to_width / image.width, to_height / image.height)
        info["Postprocess upscale to"] = f"{to_width}x{to_height}"
    else:
        scale = req.upscaling_resize
        info["Postprocess upscale by"] = scale
        if req.max_side_length != 0 and max(image.size) * scale > req.max_side_length:
            # A1111 turns this into "scale to" the limited size, without cropping.
            mode, crop = RESIZE_SCALE_TO, False
            to_width, to_height = _limit_size(image.width * scale, image.height * scale, req.max_side_length)
            scale = max(to_width / image.width, to_height / image.height)
            info["Max side length"] = req.max_side_length
    result = upscalers.upscale(image, scale, upscaler, opts=opts, device=device, dtype=dtype)
    if mode == RESIZE_SCALE_TO and crop:
        # Centred on a black canvas of the requested size: crops what is larger, pads what is smaller.
        canvas = Image.new("RGB", (to_width, to_height))
        canvas.paste(result, box=(to_width // 2 - result.width // 2, to_height // 2 - result.height // 2))
        result = canvas
        info["Postprocess crop to"] = f"{result.width}x{result.height}"
    return result


def _limit_size(width: float, height: float, limit: int) -> tuple[int, int]:
    """Shrink (width, height) so the longer side is `limit` (A1111's limit_size_by_one_dimention)."""
    if height > width and height > limit:
        width, height = limit * width // height, limit
    elif width > limit:
        width, height = limit, limit * height // width
    return int(width), int(height)


def _check_upscaler_names(req: ExtrasRequest, upscalers: UpscalerRegistry) -> None:
    """Fail before any work when an upscaler does not exist (A1111 asserts both, even at visibility 0)."""
    if req.upscaler_1 != "None":
        upscalers.get(req.upscaler_1)
    if req.upscaler_2 != "None":
        upscalers.get(req.upscaler_2)
