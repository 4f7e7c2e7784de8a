"""Saving images the way A1111 does: file names, folders, metadata, grids (reference section 11).

- File names come from `FilenameGenerator`, which expands A1111's pattern tags ([seed],
  [prompt_words], [datetime<%Y><UTC>]...), and from a 5-digit sequence number.
- The infotext goes into a PNG text chunk named `parameters`, or into the EXIF UserComment
  for JPEG/WebP/AVIF, so A1111's PNG Info tab (and ours) can read it back.
- Files are written to a temporary name first and renamed, so a folder watcher never
  sees a half-written image.

Options come as a mapping keyed by A1111 option names; missing keys take A1111's defaults
(DEFAULT_SAVE_OPTIONS). No torch here.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import logging
import math
import os
import re
import string
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import piexif
import piexif.helper
from PIL import Image, ImageColor
from PIL.PngImagePlugin import PngInfo

from backend.callbacks import CallbackRegistry, ImageSaveParams
from backend.errors import InvalidRequest
from backend.postprocess.infotext import novelai_infotext

logger = logging.getLogger(__name__)

# A1111's defaults (modules/shared_options.py) for the options this module reads.
DEFAULT_SAVE_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {
        "samples_format": "png",
        "samples_filename_pattern": "",
        "save_images_add_number": True,
        "save_images_replace_action": "Replace",
        "save_to_dirs": True,
        "grid_save_to_dirs": True,
        "directories_filename_pattern": "[date]",
        "directories_max_prompt_words": 8,
        "jpeg_quality": 80,
        "webp_lossless": False,
        "enable_pnginfo": True,
        "save_txt": False,
        "grid_format": "png",
        "grid_extended_filename": False,
        "n_rows": -1,
        "grid_prevent_empty_spots": False,
        "grid_background_color": "#ffffff",
        "export_for_4chan": True,
        "img_downscale_threshold": 4.0,
        "target_side_length": 4000,
    }
)

# A1111's --filenames-max-length default: the longest text one pattern tag may produce.
DEFAULT_FILENAME_PART_LENGTH = 128
INFOTEXT_SECTION = "parameters"

_INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
_INVALID_FILENAME_PREFIX = " "
_INVALID_FILENAME_POSTFIX = " ."
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + "]+")
# A pattern is literal text and [tag] or [tag<arg><arg>...] parts, as in A1111.
_PATTERN_PART = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")
_PATTERN_ARG = re.compile(r"(.*)<([^>]*)>$")
_DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"
_DEFAULT_PROMPT_HASH_LENGTH = 8
# A tag that returns this removes itself and the literal text before it (A1111's
# NOTHING_AND_SKIP_PREVIOUS_TEXT), e.g. "-[batch_number]" vanishes for batch size 1.
_SKIP_WITH_PREVIOUS_TEXT = object()

# Largest sides the encoders accept; above them A1111 saves a PNG instead.
_MAX_JPEG_SIDE = 65535
_MAX_WEBP_SIDE = 16383
_SEQUENCE_SEARCH_LIMIT = 500
_DEFAULT_NAME_MAX = 255
_TEMP_SUFFIX = ".tmp"

# image.info keys that describe the encoding, not the generation (A1111 IGNORED_INFO_KEYS).
_IGNORED_INFO_KEYS = frozenset(
    {
        "jfif",
        "jfif_version",
        "jfif_unit",
        "jfif_density",
        "dpi",
        "exif",
        "loop",
        "background",
        "timestamp",
        "duration",
        "progressive",
        "progression",
        "icc_profile",
        "chromaticity",
        "photoshop",
    }
)


class ProcessingLike(Protocol):
    """The attributes of a processing object that file name patterns read.

    Any object with these attributes works (our processing dataclasses, a test stub).
    A tag whose attribute is missing is left in the name unexpanded, as in A1111.
    """

    prompt: str
    negative_prompt: str
    all_seeds: Sequence[int]
    steps: int
    cfg_scale: float
    width: int
    height: int
    styles: Sequence[str]
    sampler_name: str
    scheduler: str
    sd_model_hash: str | None
    sd_model_name: str | None
    sd_vae_name: str | None
    batch_size: int
    n_iter: int
    iteration: int
    batch_index: int
    job_timestamp: str
    clip_skip: int
    denoising_strength: float | None
    user: str | None
    override_settings: Mapping[str, Any]


def sanitize_filename_part(
    text: str | None, replace_spaces: bool = True, max_length: int = DEFAULT_FILENAME_PART_LENGTH
) -> str | None:
    """Make text safe inside a file name: invalid characters become '_', length is capped."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate({ord(char): "_" for char in _INVALID_FILENAME_CHARS})
    text = text.lstrip(_INVALID_FILENAME_PREFIX)[:max_length]
    return text.rstrip(_INVALID_FILENAME_POSTFIX)


class FilenameGenerator:
    """Expands A1111 file name patterns such as "[seed]-[prompt_spaces]" for one image.

    `style_prompts` are the prompt texts of `p.styles` (for [prompt_no_styles]);
    `default_scheduler` maps a sampler name to its default scheduler name (for
    [scheduler] when the request says "Automatic"); `clock` gives the current time.
    With `for_zip`, [batch_number] and [generation_number] vanish, as for names in a zip.
    """

    def __init__(
        self,
        p: ProcessingLike | None,
        seed: int | None,
        prompt: str | None,
        image: Image.Image | None = None,
        basename: str = "",
        *,
        for_zip: bool = False,
        max_prompt_words: int = DEFAULT_SAVE_OPTIONS["directories_max_prompt_words"],
        max_length: int = DEFAULT_FILENAME_PART_LENGTH,
        style_prompts: Sequence[str] = (),
        default_scheduler: Callable[[str], str | None] | None = None,
        clock: Callable[[], datetime.datetime] = datetime.datetime.now,
    ) -> None:
        self.p = p
        self.seed = seed
        self.prompt = prompt
        self.image = image
        self.basename = basename
        self.for_zip = for_zip
        self.max_prompt_words = max_prompt_words
        self.max_length = max_length
        self.style_prompts = tuple(style_prompts)
        self.default_scheduler = default_scheduler
        self.clock = clock

    def apply(self, pattern: str) -> str:
        """Replace every known [tag] in `pattern`; unknown or failing tags stay as written."""
        result = ""
        for match in _PATTERN_PART.finditer(pattern):
            text, tag = match.groups()
            if tag is None:
                result += text
                continue
            args: list[str] = []
            while (arg_match := _PATTERN_ARG.match(tag)) is not None:
                tag, arg = arg_match.groups()
                args.insert(0, arg)
            replacement = self._expand(tag, args)
            if replacement is _SKIP_WITH_PREVIOUS_TEXT:
                continue
            result += text + (f"[{tag}]" if replacement is None else str(replacement))
        return result

    def _expand(self, tag: str, args: list[str]) -> object:
        method = getattr(self, f"_tag_{tag.lower()}", None)
        if method is None:
            return None
        try:
            return method(*args)
        except (AttributeError, TypeError, ValueError, IndexError) as error:
            # A1111 reports the error and keeps the tag text, so one bad tag never blocks a save.
            logger.warning("cannot expand [%s] in a file name: %s", tag, error)
            return None

    def _sanitize(self, text: str | None, replace_spaces: bool = True) -> str | None:
        return sanitize_filename_part(text, replace_spaces=replace_spaces, max_length=self.max_length)

    # Each _tag_<name> expands [<name>]. None leaves the tag as written.

    def _tag_basename(self) -> str:
        return self.basename or "img"

    def _tag_seed(self) -> object:
        return self.seed if self.seed is not None else ""

    def _tag_seed_first(self) -> object:
        return self.seed if self.p.batch_size == 1 else self.p.all_seeds[0]

    def _tag_seed_last(self) -> object:
        return _SKIP_WITH_PREVIOUS_TEXT if self.p.batch_size == 1 else self.p.all_seeds[-1]

    def _tag_steps(self) -> object:
        return self.p and self.p.steps

    def _tag_cfg(self) -> object:
        return self.p and self.p.cfg_scale

    def _tag_width(self) -> object:
        return self.image.width if self.image is not None else self.p.width

    def _tag_height(self) -> object:
        return self.image.height if self.image is not None else self.p.height

    def _tag_styles(self) -> str | None:
        if self.p is None:
            return None
        names = ", ".join(style for style in self.p.styles if style != "None")
        return self._sanitize(names or "None", replace_spaces=False)

    def _tag_sampler(self) -> str | None:
        return self.p and self._sanitize(self.p.sampler_name, replace_spaces=False)

    def _tag_sampler_scheduler(self) -> object:
        return self.p and self._sampler_scheduler(with_sampler=True)

    def _tag_scheduler(self) -> object:
        return self.p and self._sampler_scheduler(with_sampler=False)

    def _sampler_scheduler(self, with_sampler: bool) -> object:
        if not hasattr(self.p, "scheduler") or not hasattr(self.p, "sampler_name"):
            return _SKIP_WITH_PREVIOUS_TEXT
        scheduler = self.p.scheduler
        if scheduler == "Automatic" and self.default_scheduler is not None:
            scheduler = self.default_scheduler(self.p.sampler_name) or "Automatic"
        # A1111 capitalises the name: "karras" -> "Karras", "SGM Uniform" -> "Sgm uniform".
        text = f"{self.p.sampler_name} {scheduler.capitalize()}" if with_sampler else scheduler.capitalize()
        return self._sanitize(text, replace_spaces=False)

    def _tag_model_hash(self) -> object:
        return self.p.sd_model_hash

    def _tag_model_name(self) -> str | None:
        return self._sanitize(self.p.sd_model_name, replace_spaces=False)

    def _tag_date(self) -> str:
        return self.clock().strftime("%Y-%m-%d")

    def _tag_datetime(self, *args: str) -> str | None:
        time_format = args[0] if args and args[0] else _DEFAULT_TIME_FORMAT
        zone: ZoneInfo | None = None
        if len(args) > 1:
            try:
                zone = ZoneInfo(args[1])
            except (ZoneInfoNotFoundError, ValueError):
                zone = None  # an unknown zone means local time, as in A1111
        now = self.clock().astimezone(zone)
        try:
            formatted = now.strftime(time_format)
        except (ValueError, TypeError):
            formatted = now.strftime(_DEFAULT_TIME_FORMAT)
        return self._sanitize(formatted, replace_spaces=False)

    def _tag_job_timestamp(self) -> object:
        return self.p.job_timestamp

    def _tag_prompt_hash(self, *args: str) -> str:
        return _string_hash(self.prompt, *args)

    def _tag_negative_prompt_hash(self, *args: str) -> str:
        return _string_hash(self.p.negative_prompt, *args)

    def _tag_full_prompt_hash(self, *args: str) -> str:
        # The space keeps ("a", "bc") and ("ab", "c") apart.
        return _string_hash(f"{self.p.prompt} {self.p.negative_prompt}", *args)

    def _tag_prompt(self) -> str | None:
        return self._sanitize(self.prompt)

    def _tag_prompt_no_styles(self) -> str | None:
        if self.p is None or self.prompt is None:
            return None
        prompt = self.prompt
        for style in self.style_prompts:
            if not style:
                continue
            for part in style.split("{prompt}"):
                prompt = prompt.replace(part, "").replace(", ,", ",").strip().strip(",")
            prompt = prompt.replace(style, "").strip().strip(",").strip()
        return self._sanitize(prompt, replace_spaces=False)

    def _tag_prompt_spaces(self) -> str | None:
        return self._sanitize(self.prompt, replace_spaces=False)

    def _tag_prompt_words(self) -> str | None:
        words = [word for word in _NON_LETTERS.split(self.prompt or "") if word] or ["empty"]
        return self._sanitize(" ".join(words[: self.max_prompt_words]), replace_spaces=False)

    def _tag_batch_number(self) -> object:
        if self.p.batch_size == 1 or self.for_zip:
            return _SKIP_WITH_PREVIOUS_TEXT
        return self.p.batch_index + 1

    def _tag_batch_size(self) -> object:
        return self.p.batch_size

    def _tag_generation_number(self) -> object:
        if (self.p.n_iter == 1 and self.p.batch_size == 1) or self.for_zip:
            return _SKIP_WITH_PREVIOUS_TEXT
        return self.p.iteration * self.p.batch_size + self.p.batch_index + 1

    def _tag_hasprompt(self, *args: str) -> str | None:
        """[hasprompt<word|fallback><word2>...]: each word if the prompt contains it, else its fallback."""
        if self.p is None or self.prompt is None:
            return None
        lower = self.prompt.lower()
        result = ""
        for arg in args:
            if not arg:
                continue
            expected, _, fallback = arg.partition("|")
            expected = expected.lower()
            result += expected if expected in lower else fallback
        return self._sanitize(result)

    def _tag_clip_skip(self) -> object:
        return self.p.clip_skip

    def _tag_denoising(self) -> object:
        if self.p and self.p.denoising_strength:
            return self.p.denoising_strength
        return _SKIP_WITH_PREVIOUS_TEXT

    def _tag_user(self) -> object:
        return self.p.user

    def _tag_vae_filename(self) -> str:
        name = self.p.sd_vae_name
        if name is None:
            return "NoneType"  # what A1111 writes when no external VAE is loaded
        parts = os.path.basename(name).split(".")
        # A dotfile ".vae.pt" is named by its second part.
        return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]

    def _tag_none(self) -> str:
        return ""

    def _tag_image_hash(self, *args: str) -> str:
        length = int(args[0]) if args and args[0] else None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[:length]


def _string_hash(text: str | None, *args: str) -> str:
    length = int(args[0]) if args and args[0] else _DEFAULT_PROMPT_HASH_LENGTH
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def next_sequence_number(directory: str | Path, basename: str = "") -> int:
    """1 + the largest leading number among the names in `directory` (after "basename-"), or 0."""
    prefix = f"{basename}-" if basename else ""
    largest = -1
    for name in os.listdir(directory):
        if not name.startswith(prefix):
            continue
        first = os.path.splitext(name[len(prefix) :])[0].split("-")[0]
        # Every entry counts, folders included, as in A1111.
        if first.isdecimal():
            largest = max(largest, int(first))
    return largest + 1


def save_image(
    image: Image.Image,
    path: str | Path,
    basename: str,
    *,
    seed: int | None = None,
    prompt: str | None = None,
    extension: str = "png",
    info: str | None = None,
    short_filename: bool = False,
    no_prompt: bool = False,
    grid: bool = False,
    p: ProcessingLike | None = None,
    suffix: str = "",
    opts: Mapping[str, Any],
    pnginfo_section_name: str = INFOTEXT_SECTION,
    existing_info: Mapping[str, str] | None = None,
    forced_filename: str | None = None,
    save_to_dirs: bool | None = None,
    filename_generator: FilenameGenerator | None = None,
    callbacks: CallbackRegistry | None = None,
) -> tuple[Path, Path | None]:
    """Save `image` under `path` with A1111's naming and metadata; return (image path, txt path or None).

    The name is "NNNNN-<decoration>.<ext>" (or "<basename>-NNNN..." for grids, where
    basename is "grid"), inside a subfolder from directories_filename_pattern when
    save_to_dirs applies. `info` is written under `pnginfo_section_name`, next to the
    `existing_info` items (the Extras tab writes "extras" and keeps "parameters").
    Pass `filename_generator` to supply styles, the clock or the scheduler lookup;
    by default one is built from p, seed, prompt and the image. `callbacks` get
    on_before_image_saved (may change image, file name and metadata) and on_image_saved.
    """
    options = {**DEFAULT_SAVE_OPTIONS, **opts}
    namegen = filename_generator or FilenameGenerator(
        p, seed, prompt, image, basename=basename, max_prompt_words=options["directories_max_prompt_words"]
    )
    extension = _extension_that_fits(image, extension)

    # 1. Folder: a subfolder per date (by default) unless turned off.
    if save_to_dirs is None:
        save_to_dirs = (grid and options["grid_save_to_dirs"]) or (
            not grid and options["save_to_dirs"] and not no_prompt
        )
    directory = Path(path)
    if save_to_dirs:
        subfolder = (
            namegen.apply(options["directories_filename_pattern"] or "[prompt_words]").lstrip(" ").rstrip("\\ /")
        )
        directory = directory / subfolder
    directory.mkdir(parents=True, exist_ok=True)

    # 2. File name.
    if grid and not options["grid_extended_filename"]:
        short_filename = True  # A1111's callers pass short_filename=not grid_extended_filename for grids
    if forced_filename is not None:
        stem = forced_filename
    else:
        stem = _numbered_stem(directory, basename, seed, short_filename, p, suffix, extension, namegen, options)
    stem = stem[: _max_name_length(directory) - max(len(_TEMP_SUFFIX), len(extension) + 1)]

    # 3. Encode with metadata, then write atomically.
    items = dict(existing_info or {})
    if info is not None:
        items[pnginfo_section_name] = info
    params = ImageSaveParams(image, p, str(directory / f"{stem}.{extension}"), items)
    if callbacks is not None:
        callbacks.fire("before_image_saved", params)
        image, items = params.image, params.pnginfo
        target = Path(params.filename)
        directory, stem, extension = target.parent, target.stem, target.suffix.lstrip(".") or extension
        directory.mkdir(parents=True, exist_ok=True)
    data = _encode(image, extension, items, pnginfo_section_name, options)
    replace = options["save_images_replace_action"] == "Replace"
    final_stem = _write_atomically(data, directory / stem, f".{extension}", replace)
    image_path = final_stem.with_name(f"{final_stem.name}.{extension}")
    if callbacks is not None:
        params.filename = str(image_path)
        callbacks.fire("image_saved", params)

    # 4. A JPEG copy of very large images, for sites with upload limits.
    _export_small_copy(image, image_path, final_stem, items, pnginfo_section_name, replace, options)

    # 5. The infotext as a .txt beside the image.
    text_path: Path | None = None
    geninfo = items.get(pnginfo_section_name)
    if options["save_txt"] and geninfo is not None:
        text_path = final_stem.with_name(f"{final_stem.name}.txt")
        text_path.write_text(f"{geninfo}\n", encoding="utf8")
    return image_path, text_path


def image_to_bytes(image: Image.Image, fmt: str, infotext: str | None, opts: Mapping[str, Any]) -> bytes:
    """Encode `image` as `fmt` (png, jpg, jpeg, webp) with the infotext, for API responses.

    As A1111's API encoder, PNG keeps every text item of `image.info`; `infotext`, when
    given, replaces the `parameters` item. JPEG/WebP carry it in the EXIF UserComment.
    """
    options = {**DEFAULT_SAVE_OPTIONS, **opts}
    extension = fmt.lower()
    if extension not in ("png", "jpg", "jpeg", "webp"):
        raise InvalidRequest("samples_format", f"invalid image format {fmt!r}; use png, jpg, jpeg or webp")
    items = {key: value for key, value in image.info.items() if isinstance(key, str) and isinstance(value, str)}
    if infotext is not None:
        items[INFOTEXT_SECTION] = infotext
    return _encode(image, extension, items, INFOTEXT_SECTION, options)


def read_info_from_image(image: Image.Image) -> tuple[str | None, dict[str, Any]]:
    """Return (infotext or None, other info items) of an opened image, as A1111 reads them.

    The infotext is the PNG `parameters` text, else the EXIF UserComment (JPEG, WebP,
    AVIF), else a GIF comment. NovelAI PNGs are converted to an A1111 infotext.
    """
    items: dict[str, Any] = dict(image.info or {})
    geninfo: str | None = items.pop(INFOTEXT_SECTION, None)
    if "exif" in items:
        comment = _exif_user_comment(items["exif"])
        if comment:
            geninfo = comment
    elif "comment" in items:
        comment = items["comment"]
        geninfo = comment.decode("utf8", errors="ignore") if isinstance(comment, bytes) else comment
    for key in _IGNORED_INFO_KEYS:
        items.pop(key, None)
    if items.get("Software") == "NovelAI" and "Description" in items and "Comment" in items:
        converted = novelai_infotext(str(items["Description"]), str(items["Comment"]), image.width, image.height)
        if converted is not None:
            geninfo = converted
    # PIL gives iTXt values as a str subclass; callers expect plain text.
    return (str(geninfo) if geninfo is not None else None), items


def image_grid(
    images: Sequence[Image.Image],
    batch_size: int = 1,
    rows: int | None = None,
    n_rows: int = -1,
    *,
    prevent_empty_spots: bool = False,
    background: str = "#ffffff",
) -> Image.Image:
    """Paste images into one grid as A1111's `image_grid` does.

    Rows: `rows` if given; else n_rows > 0 (option n_rows); n_rows == 0 -> batch_size;
    n_rows < 0 -> round(sqrt(n)), or with `prevent_empty_spots` the largest divisor of n
    not above floor(sqrt(n)). Cells are as large as the largest image; smaller images
    are centred on `background` (option grid_background_color).
    """
    if not images:
        raise InvalidRequest("images", "a grid needs at least one image")
    count = len(images)
    if rows is None:
        if n_rows > 0:
            rows = n_rows
        elif n_rows == 0:
            rows = batch_size
        elif prevent_empty_spots:
            rows = math.floor(math.sqrt(count))
            while count % rows != 0:
                rows -= 1
        else:
            rows = round(math.sqrt(count))
    rows = min(rows, count)
    cols = math.ceil(count / rows)

    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)
    grid = Image.new("RGB", (cols * cell_w, rows * cell_h), color=ImageColor.getcolor(background, "RGB"))
    for index, image in enumerate(images):
        x = index % cols * cell_w + (cell_w - image.width) // 2
        y = index // cols * cell_h + (cell_h - image.height) // 2
        grid.paste(image, box=(x, y))
    return grid


def _extension_that_fits(image: Image.Image, extension: str) -> str:
    lower = extension.lower()
    too_big_for_jpeg = lower in ("jpg", "jpeg") and max(image.size) > _MAX_JPEG_SIDE
    too_big_for_webp = lower == "webp" and max(image.size) > _MAX_WEBP_SIDE
    if too_big_for_jpeg or too_big_for_webp:
        logger.info("image is %dx%d, too large for %s; saving as PNG", image.width, image.height, extension)
        return "png"
    return extension


def _numbered_stem(
    directory: Path,
    basename: str,
    seed: int | None,
    short_filename: bool,
    p: ProcessingLike | None,
    suffix: str,
    extension: str,
    namegen: FilenameGenerator,
    options: Mapping[str, Any],
) -> str:
    decoration: str | None = None
    if short_filename or seed is None:
        decoration = ""
    elif hasattr(p, "override_settings"):
        decoration = p.override_settings.get("samples_filename_pattern")
    if decoration is None:
        decoration = options["samples_filename_pattern"] or (
            "[seed]" if options["save_to_dirs"] else "[seed]-[prompt_spaces]"
        )
    decoration = namegen.apply(decoration) + suffix

    add_number = options["save_images_add_number"] or decoration == ""
    if not add_number:
        return decoration
    if decoration:
        decoration = f"-{decoration}"
    first = next_sequence_number(directory, basename)
    stem = ""
    # Another process may have taken the number since the listing; try the next ones.
    for number in range(first, first + _SEQUENCE_SEARCH_LIMIT):
        counter = f"{number:05}" if basename == "" else f"{basename}-{number:04}"
        stem = f"{counter}{decoration}"
        if not (directory / f"{stem}.{extension}").exists():
            break
    return stem


def _max_name_length(directory: Path) -> int:
    if hasattr(os, "statvfs"):
        return os.statvfs(directory).f_namemax
    return _DEFAULT_NAME_MAX


def _write_atomically(data: bytes, stem: Path, extension: str, replace: bool) -> Path:
    """Write to "<stem>.tmp", then rename; returns the stem used (with "-N" when not replacing)."""
    temporary = stem.with_name(stem.name + _TEMP_SUFFIX)
    temporary.write_bytes(data)
    final_stem = stem
    counter = 0
    while not replace and final_stem.with_name(final_stem.name + extension).exists():
        counter += 1
        final_stem = stem.with_name(f"{stem.name}-{counter}")
    os.replace(temporary, final_stem.with_name(final_stem.name + extension))
    return final_stem


def _export_small_copy(
    image: Image.Image,
    image_path: Path,
    stem: Path,
    items: Mapping[str, str],
    section: str,
    replace: bool,
    options: Mapping[str, Any],
) -> None:
    """A1111's export_for_4chan: also save a JPEG when the file or the image is too large."""
    if not options["export_for_4chan"]:
        return
    target = options["target_side_length"]
    oversize = image.width > target or image.height > target
    too_heavy = image_path.stat().st_size > options["img_downscale_threshold"] * 1024 * 1024
    if not (oversize or too_heavy):
        return
    if oversize:
        if image.width > image.height:
            size = (round(target), round(image.height * target / image.width))
        else:
            size = (round(image.width * target / image.height), round(target))
        image = image.resize(size, Image.Resampling.LANCZOS)
    data = _encode(image, "jpg", items, section, options)
    _write_atomically(data, stem, ".jpg", replace)


def _encode(
    image: Image.Image, extension: str, items: Mapping[str, str], section: str, options: Mapping[str, Any]
) -> bytes:
    """Encode with the metadata rules of A1111's save_image_with_geninfo."""
    lower = extension.lower()
    image_format = Image.registered_extensions().get(f".{lower}")
    if image_format is None:
        raise InvalidRequest("samples_format", f"unsupported image format {extension!r}")
    with_info = bool(options["enable_pnginfo"])
    geninfo = items.get(section)
    quality = options["jpeg_quality"]
    buffer = io.BytesIO()

    if lower == "png":
        pnginfo = None
        if with_info and items:
            pnginfo = PngInfo()
            for key, value in items.items():
                # add_text writes tEXt for latin-1 text and iTXt (UTF-8) otherwise.
                pnginfo.add_text(key, str(value))
        image.save(buffer, format=image_format, pnginfo=pnginfo)
        return buffer.getvalue()

    if lower in ("jpg", "jpeg", "webp"):
        image = _to_8bit(image, keep_grayscale=lower != "webp")
        extra = {"lossless": bool(options["webp_lossless"])} if lower == "webp" else {}
        image.save(buffer, format=image_format, quality=quality, **extra)
        data = buffer.getvalue()
        if with_info and geninfo is not None:
            # Inserted after encoding, as A1111 does with piexif.insert, so the EXIF block
            # is laid out exactly as A1111 readers expect.
            with_exif = io.BytesIO()
            piexif.insert(_user_comment_exif(geninfo), data, with_exif)
            data = with_exif.getvalue()
        return data

    if lower in ("avif", "jxl"):
        exif = _user_comment_exif(geninfo) if with_info and geninfo is not None else None
        image.save(buffer, format=image_format, quality=quality, exif=exif)
    elif lower == "gif":
        extra = {"comment": geninfo} if with_info and geninfo is not None else {}
        image.save(buffer, format=image_format, **extra)
    else:
        image.save(buffer, format=image_format, quality=quality)
    return buffer.getvalue()


def _to_8bit(image: Image.Image, keep_grayscale: bool) -> Image.Image:
    """JPEG and WebP take 8-bit RGB (JPEG also grayscale); 16-bit images are scaled down."""
    if image.mode == "I;16":
        scaled = (np.asarray(image, dtype=np.float32) * (255 / 65535)).astype(np.uint8)
        image = Image.fromarray(scaled)
        return image if keep_grayscale else image.convert("RGB")
    if image.mode == "RGB" or (keep_grayscale and image.mode == "L"):
        return image
    return image.convert("RGB")


def _user_comment_exif(text: str) -> bytes:
    comment = piexif.helper.UserComment.dump(text, encoding="unicode")
    return piexif.dump({"Exif": {piexif.ExifIFD.UserComment: comment}})


def _exif_user_comment(exif: bytes) -> str | None:
    """The UserComment text of raw EXIF bytes, or None when there is none or it is unreadable."""
    try:
        data = piexif.load(exif)
    except (OSError, ValueError):
        # piexif treats bytes it does not recognise as a file name and fails to open it.
        return None
    comment = data.get("Exif", {}).get(piexif.ExifIFD.UserComment, b"")
    try:
        return piexif.helper.UserComment.load(comment)
    except ValueError:
        return comment.decode("utf8", errors="ignore")
