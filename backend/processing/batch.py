"""img2img over a folder of images: the img2img tab's "Batch" (A1111's modules/img2img.process_batch).

One request is the template; every image of the input folder (sub-folders included) is
processed with it, with the same fixed seed, as one job. With an inpaint mask folder, each
image takes the mask whose name has the same stem (or the only mask, if there is just one);
images without a mask are skipped. With an output folder, images are saved straight into it.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import InvalidRequest
from backend.processing.core import ProcessingContext
from backend.processing.objects import Processed, StableDiffusionProcessingImg2Img
from backend.processing.pipeline import process_images
from backend.sampling.noise import get_fixed_seed

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".avif")
MIN_SIDE = 64

OnImage = Callable[[int, int, Path], None]
"""Called before each image: (its number from 1, how many, its path)."""


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """img2img's "Resize by": the image's size times `scale`, rounded down to a multiple of 8 (A1111)."""
    return (max(MIN_SIDE, int(width * scale) // 8 * 8), max(MIN_SIDE, int(height * scale) // 8 * 8))


def batch_images(input_dir: str | Path) -> list[Path]:
    """The images under `input_dir`, sub-folders included, by A1111's extensions, sorted."""
    if not str(input_dir).strip():
        raise InvalidRequest("img2img_batch_input_dir", "enter an input directory")
    folder = Path(input_dir).expanduser()
    if not folder.is_dir():
        raise InvalidRequest("img2img_batch_input_dir", f"not a directory: {folder}")
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def mask_for(image: Path, masks: list[Path]) -> Path | None:
    """The only mask, else the mask with the image's stem (A1111's simple file name matching)."""
    if len(masks) == 1:
        return masks[0]
    return next((m for m in masks if m.stem == image.stem), None)


def process_img2img_folder(p: StableDiffusionProcessingImg2Img, ctx: ProcessingContext, input_dir: str | Path,
                           output_dir: str | Path = "", mask_dir: str | Path = "", *, scale_by: float | None = None,
                           on_image: OnImage | None = None) -> Processed:
    """Run `p` on every image of `input_dir` (see the module doc); `scale_by` sizes each image by its own size.

    Returns one Processed with the images and infotexts of all runs, up to the option
    img2img_batch_show_results_limit (every image is saved whatever the limit).
    """
    files = batch_images(input_dir)
    masks = _masks(mask_dir)
    # 1. One seed for the whole folder, as A1111's fix_seed before the loop.
    template = dataclasses.replace(p, seed=_fixed(p.seed), subseed=_fixed(p.subseed))
    template.scripts, template.script_args = p.scripts, p.script_args
    limit = int(ctx.options["img2img_batch_show_results_limit"])
    result: Processed | None = None
    for number, path in enumerate(files, start=1):
        if ctx.state.interrupted:
            break
        ctx.state.skipped = False  # a skip ends one image, not the folder
        image = _read(path)
        mask_path = mask_for(path, masks) if masks else None
        if image is None or (masks and mask_path is None):
            log.warning("img2img batch: skipping %s (%s)", path, "not an image" if image is None else "no mask")
            continue
        if on_image is not None:
            on_image(number, len(files), path)
        # 2. This image's request: the template with its image, mask, size and output folder.
        q = _request_for(template, image, _read(mask_path) if mask_path else None, path, output_dir, scale_by,
                         use_original_name=bool(ctx.options["img2img_batch_use_original_name"]))
        processed = _run(q, ctx)
        # 3. Collect the results shown, up to the limit.
        if result is None:
            result = processed
        else:
            for name in ("images", "infotexts", "saved_paths", "all_prompts", "all_negative_prompts", "all_seeds",
                         "all_subseeds"):
                getattr(result, name).extend(getattr(processed, name))
            result.interrupted = processed.interrupted
        if 0 <= limit < len(result.images):
            result.images, result.infotexts = result.images[:limit], result.infotexts[:limit]
        if processed.interrupted:
            break
    if result is None:
        return Processed(images=[], infotexts=[], p=template, seed=-1, subseed=-1, all_seeds=[], all_subseeds=[],
                         all_prompts=[], all_negative_prompts=[], comments="No images were processed.")
    return result


def _fixed(seed: int | str | list[int]) -> int | list[int]:
    return seed if isinstance(seed, list) else get_fixed_seed(seed)


def _masks(mask_dir: str | Path) -> list[Path]:
    if not str(mask_dir).strip():
        return []
    folder = Path(mask_dir).expanduser()
    if not folder.is_dir():
        raise InvalidRequest("img2img_batch_inpaint_mask_dir", f"not a directory: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _read(path: Path) -> Image.Image | None:
    try:
        with Image.open(path) as opened:
            # Photos from phones are stored sideways with an EXIF orientation; A1111 turns them upright.
            return ImageOps.exif_transpose(opened)
    except (UnidentifiedImageError, OSError):
        return None


def _request_for(template: StableDiffusionProcessingImg2Img, image: Image.Image, mask: Image.Image | None,
                 path: Path, output_dir: str | Path, scale_by: float | None, *,
                 use_original_name: bool) -> StableDiffusionProcessingImg2Img:
    overrides = dict(template.override_settings)
    changes: dict = {"init_images": [image], "mask": mask if mask is not None else template.mask}
    if scale_by is not None:
        changes["width"], changes["height"] = scaled_size(image.width, image.height, scale_by)
    if str(output_dir).strip():
        changes["outpath_samples"] = str(Path(output_dir).expanduser())
        overrides["save_to_dirs"] = False
    if use_original_name:
        several = template.n_iter > 1 or template.batch_size > 1
        overrides["samples_filename_pattern"] = f"{path.stem}-[generation_number]" if several else path.stem
    # Each image gets fresh dicts: processing writes into them (infotext keys, comments).
    q = dataclasses.replace(template, **changes, override_settings=overrides,
                            extra_generation_params=dict(template.extra_generation_params),
                            comments=dict(template.comments))
    q.scripts, q.script_args = template.scripts, template.script_args
    return q


def _run(q: StableDiffusionProcessingImg2Img, ctx: ProcessingContext) -> Processed:
    """A selected script does the job when there is one (as for a single request), else process_images."""
    q.context = ctx
    processed = q.scripts.run(q) if q.scripts is not None else None
    return processed if processed is not None else process_images(q, ctx)
