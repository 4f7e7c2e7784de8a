"""Preparing a LoRA training set: checks, crops, buckets and caption tags (no UI code, no torch).

A data set is a folder of images, each with an optional caption file of the same stem (`img.png` +
`img.txt`, comma-separated tags, as kohya's sd-scripts read them).

- `scan(folder, resolution)` lists the images and warns about what makes training go wrong: fewer than
  `MIN_IMAGES` images, images smaller than twice the training resolution (they get upscaled), near
  duplicates (a 64-bit difference hash, `dhash`, within `DUPLICATE_DISTANCE` bits) and unreadable files.
- `prepare(...)` writes a new folder: every image resized and cropped to the training resolution (centre
  crop, or a focal-point crop that keeps the most salient window by `saliency`: edge strength plus colour
  distance from the image's median colour; no face detector is bundled, so faces are not detected),
  oversized (very long) images split into overlapping square tiles first, optional mirrored copies, or
  aspect-ratio buckets instead of square crops; captions are copied and edited on the way.
- Buckets follow kohya's `BucketManager.make_buckets`: sides are multiples of 64 between a minimum and a
  maximum side, with area at most resolution^2; each image takes the bucket nearest its aspect ratio and is
  scaled to cover it, then centre-cropped.
- Caption edits (`edit_tags`): keep every tag (style training), drop listed tags (character training: the
  trait then binds to the trigger word), put a trigger word first; `tag_frequency` counts tags as
  kohya's `ss_tag_frequency` does.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backend.errors import InvalidRequest

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_IMAGES = 15
DUPLICATE_DISTANCE = 4  # bits of the 64-bit dHash
BUCKET_STEP = 64
CROP_MODES = ("centre", "focal")


@dataclass(frozen=True)
class ImageEntry:
    """One image of a data set and its caption (empty when it has no caption file)."""

    path: Path
    width: int
    height: int
    caption: str

    @property
    def caption_path(self) -> Path:
        return self.path.with_suffix(".txt")


@dataclass
class ScanReport:
    """What `scan` found: readable images, warnings for the user, and per-image notes for the checks table."""

    folder: Path
    resolution: int
    images: list[ImageEntry] = field(default_factory=list)
    unreadable: list[Path] = field(default_factory=list)
    small: list[Path] = field(default_factory=list)
    duplicates: list[tuple[Path, Path, int]] = field(default_factory=list)  # (first, second, distance)
    warnings: list[str] = field(default_factory=list)

    def rows(self) -> list[list[str]]:
        """One row per file: name, size, caption, note (what the Dataset tab's table shows)."""
        notes: dict[Path, list[str]] = {}
        for path in self.small:
            notes.setdefault(path, []).append(f"smaller than {2 * self.resolution}px")
        for first, second, distance in self.duplicates:
            notes.setdefault(second, []).append(f"near-duplicate of {first.name} ({distance} bits)")
        rows = [[e.path.name, f"{e.width}x{e.height}", e.caption, "; ".join(notes.get(e.path, []))]
                for e in self.images]
        rows += [[p.name, "", "", "unreadable"] for p in self.unreadable]
        return rows

    def tag_frequency(self) -> Counter[str]:
        return tag_frequency(e.caption for e in self.images)


# ---- captions -------------------------------------------------------------------------------------------

def split_tags(caption: str) -> list[str]:
    """Comma-separated tags, stripped, empty ones dropped."""
    return [tag.strip() for tag in caption.split(",") if tag.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def edit_tags(caption: str, *, remove: Sequence[str] = (), trigger: str = "") -> str:
    """`caption` without the tags in `remove` (case-insensitive), with `trigger` first (once)."""
    dropped = {tag.strip().lower() for tag in remove if tag.strip()}
    tags = [tag for tag in split_tags(caption) if tag.lower() not in dropped]
    if trigger.strip():
        tags = [trigger.strip(), *(tag for tag in tags if tag.lower() != trigger.strip().lower())]
    return join_tags(tags)


def tag_frequency(captions: Iterable[str]) -> Counter[str]:
    """How many captions carry each tag (kohya counts a tag once per caption)."""
    counts: Counter[str] = Counter()
    for caption in captions:
        counts.update(dict.fromkeys(split_tags(caption), 1))
    return counts


def read_caption(image: Path) -> str:
    path = image.with_suffix(".txt")
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


# ---- checks ---------------------------------------------------------------------------------------------

def dhash(image: Image.Image, size: int = 8) -> int:
    """Difference hash: brightness gradients of a (size+1) x size greyscale thumbnail, one bit each."""
    grey = np.asarray(image.convert("L").resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def image_files(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def check_folder(folder: str | Path, field_name: str = "folder") -> Path:
    """The folder as a Path; InvalidRequest naming `field_name` when it is not an existing folder."""
    if not str(folder).strip():
        raise InvalidRequest(field_name, "no folder given")
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise InvalidRequest(field_name, f"{str(folder)!r} is not a folder")
    return path


def scan(folder: str | Path, resolution: int, *, duplicate_distance: int = DUPLICATE_DISTANCE) -> ScanReport:
    """Read every image of `folder` and collect the warnings described in the module docstring."""
    root = check_folder(folder)
    if resolution < BUCKET_STEP or resolution % 8:
        raise InvalidRequest("resolution", f"must be a multiple of 8 and >= {BUCKET_STEP}, got {resolution}")
    report = ScanReport(root, resolution)
    hashes: list[tuple[Path, int]] = []
    for path in image_files(root):
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError):
            report.unreadable.append(path)
            continue
        report.images.append(ImageEntry(path, image.width, image.height, read_caption(path)))
        if min(image.size) < 2 * resolution:
            report.small.append(path)
        code = dhash(image)
        for other, other_code in hashes:
            distance = hamming(code, other_code)
            if distance <= duplicate_distance:
                report.duplicates.append((other, path, distance))
                break
        hashes.append((path, code))
    count = len(report.images)
    if count < MIN_IMAGES:
        report.warnings.append(f"only {count} images: {MIN_IMAGES} or more train a LoRA that generalises")
    if report.small:
        report.warnings.append(f"{len(report.small)} images are smaller than twice the training resolution "
                               f"({2 * resolution}px): they will look soft")
    if report.duplicates:
        report.warnings.append(f"{len(report.duplicates)} near-duplicate images (perceptual hash): "
                               f"they weigh twice in training")
    if report.unreadable:
        report.warnings.append(f"{len(report.unreadable)} files cannot be read as images: "
                               + ", ".join(p.name for p in report.unreadable[:5]))
    return report


# ---- crops and buckets ----------------------------------------------------------------------------------

def saliency(image: Image.Image) -> np.ndarray:
    """Per-pixel interest: gradient magnitude plus colour distance from the median colour, both in [0, 1]."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    grey = rgb.mean(axis=2)
    gy, gx = np.gradient(grey)
    edges = np.hypot(gx, gy)
    contrast = np.linalg.norm(rgb - np.median(rgb.reshape(-1, 3), axis=0), axis=2)
    return edges / max(float(edges.max()), 1e-6) + contrast / max(float(contrast.max()), 1e-6)


def focal_box(image: Image.Image, crop_w: int, crop_h: int) -> tuple[int, int, int, int]:
    """The crop_w x crop_h window of `image` with the most saliency (ties: nearest the centre)."""
    weights = saliency(image).astype(np.float64)
    integral = np.pad(weights.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = weights.shape
    sums = (integral[crop_h:, crop_w:] - integral[:h - crop_h + 1, crop_w:]
            - integral[crop_h:, :w - crop_w + 1] + integral[:h - crop_h + 1, :w - crop_w + 1])
    ys, xs = np.nonzero(sums >= sums.max() - 1e-9)
    best = int(np.argmin((ys - (h - crop_h) / 2) ** 2 + (xs - (w - crop_w) / 2) ** 2))
    x, y = int(xs[best]), int(ys[best])
    return x, y, x + crop_w, y + crop_h


def fit(image: Image.Image, width: int, height: int, mode: str = "centre") -> Image.Image:
    """Scale `image` to cover width x height, then crop to it (centred, or at the focal point)."""
    if mode not in CROP_MODES:
        raise InvalidRequest("crop", f"unknown crop mode {mode!r}; known: {', '.join(CROP_MODES)}")
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                          Image.Resampling.LANCZOS)
    if mode == "focal":
        return scaled.crop(focal_box(scaled, width, height))
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


def split_oversized(image: Image.Image, threshold: float = 1.5, overlap: float = 0.2) -> list[Image.Image]:
    """Square tiles along the long side of an image whose aspect ratio exceeds `threshold` (else the image).

    Tiles overlap by at least `overlap` of their side, spread evenly from one end to the other.
    """
    long, short = max(image.size), min(image.size)
    if long / short <= threshold:
        return [image]
    count = math.ceil((long - short * overlap) / (short * (1 - overlap)))
    step = (long - short) / max(count - 1, 1)
    tiles = []
    for i in range(count):
        start = round(i * step)
        box = (start, 0, start + short, short) if image.width >= image.height else (0, start, short, start + short)
        tiles.append(image.crop(box))
    return tiles


def make_buckets(resolution: int, min_side: int | None = None, max_side: int | None = None,
                 step: int = BUCKET_STEP) -> list[tuple[int, int]]:
    """kohya's bucket sizes: (w, h) multiples of `step`, min_side..max_side, w * h <= resolution^2, sorted."""
    min_side = min_side or max(step, resolution // 2 // step * step)
    max_side = max_side or resolution * 2
    max_area = resolution * resolution
    side = int(math.sqrt(max_area) // step) * step
    sizes = {(side, side)}
    width = min_side
    while width <= max_side:
        height = min(max_side, int((max_area // width) // step) * step)
        if height >= min_side:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


def nearest_bucket(width: int, height: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (kohya's `select_bucket`)."""
    ratio = width / height
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ratio))


# ---- the prepare operation ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PrepareOptions:
    """What `prepare` does; see the module docstring."""

    resolution: int = 512
    crop: str = "centre"  # "centre" | "focal"
    buckets: bool = False
    split: bool = False
    split_threshold: float = 1.5
    flip: bool = False
    remove_tags: tuple[str, ...] = ()
    trigger: str = ""
    default_caption: str = ""  # for images without a caption file
    skip_duplicates: bool = True


@dataclass
class PrepareResult:
    output: Path
    written: list[Path]
    skipped: list[str]
    tag_frequency: Counter[str]
    bucket_counts: dict[str, int]


def prepare(source: str | Path, output: str | Path, options: PrepareOptions) -> PrepareResult:
    """Write the prepared data set of `source` into `output` (created; existing files replaced)."""
    report = scan(check_folder(source, "source"), options.resolution)
    out = Path(output).expanduser()
    if not str(output).strip():
        raise InvalidRequest("output", "no output folder given")
    if out.resolve() == report.folder.resolve():
        raise InvalidRequest("output", "must differ from the input folder (the originals are kept)")
    out.mkdir(parents=True, exist_ok=True)
    skip = {second for _, second, _ in report.duplicates} if options.skip_duplicates else set()
    buckets = make_buckets(options.resolution) if options.buckets else [(options.resolution, options.resolution)]
    written: list[Path] = []
    skipped = [f"{p.name}: near-duplicate" for p in sorted(skip)] + [f"{p.name}: unreadable" for p in report.unreadable]
    counts: Counter[str] = Counter()
    captions: list[str] = []
    for entry in report.images:
        if entry.path in skip:
            continue
        with Image.open(entry.path) as opened:
            image = ImageOps.exif_transpose(opened).convert("RGB")
        caption = edit_tags(entry.caption or options.default_caption, remove=options.remove_tags,
                            trigger=options.trigger)
        tiles = split_oversized(image, options.split_threshold) if options.split else [image]
        for index, tile in enumerate(tiles):
            size = nearest_bucket(tile.width, tile.height, buckets)
            fitted = fit(tile, *size, mode=options.crop)
            variants = [("", fitted)] + ([("-flip", ImageOps.mirror(fitted))] if options.flip else [])
            for suffix, picture in variants:
                stem = entry.path.stem + (f"-{index + 1}" if len(tiles) > 1 else "") + suffix
                target = out / f"{stem}.png"
                picture.save(target)
                target.with_suffix(".txt").write_text(caption, encoding="utf-8")
                written.append(target)
                captions.append(caption)
                counts[f"{size[0]}x{size[1]}"] += 1
    return PrepareResult(out, written, skipped, tag_frequency(captions), dict(sorted(counts.items())))


def rewrite_captions(folder: str | Path, *, remove: Sequence[str] = (), trigger: str = "") -> Counter[str]:
    """Edit the caption file of every image of `folder` in place (one is created if missing); new frequencies."""
    root = check_folder(folder)
    captions = []
    for image in image_files(root):
        caption = edit_tags(read_caption(image), remove=remove, trigger=trigger)
        image.with_suffix(".txt").write_text(caption, encoding="utf-8")
        captions.append(caption)
    return tag_frequency(captions)

