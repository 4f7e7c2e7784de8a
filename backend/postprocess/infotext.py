"""Infotext: the "generation parameters" text that A1111 writes into images, built and parsed.

The format (A1111 reference, section 5) is the prompt, an optional "Negative prompt: ..." line
and one line of comma-separated "Key: value" pairs. Values that contain a comma, a colon or a
newline are written as JSON strings. Parsing follows A1111's `parse_generation_parameters`,
including the defaults it adds for missing keys and its version-based compatibility flags,
so a pasted infotext gives the same dictionary here as in A1111.

Pure Python: no torch, no PIL.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping

from backend.errors import InvalidRequest

# The fixed keys of A1111's `create_infotext`, in order. The extra generation parameters
# (hires, LoRA hashes, script keys...) go between "Tiling" and "Version".
INFOTEXT_KEYS: tuple[str, ...] = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "FP8 weight",
    "Cache FP16 weight for LoRA",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Conditional mask weight",
    "Clip skip",
    "ENSD",
    "Token merging ratio",
    "Token merging ratio hr",
    "Init image hash",
    "RNG",
    "Tiling",
    "Version",
    "User",
)
_EXTRAS_AT = INFOTEXT_KEYS.index("Version")
_KEYS_BEFORE_EXTRAS = INFOTEXT_KEYS[:_EXTRAS_AT]
_KEYS_AFTER_EXTRAS = INFOTEXT_KEYS[_EXTRAS_AT:]

NEGATIVE_PROMPT_PREFIX = "Negative prompt:"

# The pair syntax of A1111 (infotext_utils.re_param). It must stay identical: which last
# lines count as a parameter line, and which keys exist, is decided by it.
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_IMAGE_SIZE = re.compile(r"^(\d+)x(\d+)$")
# A1111 needs at least this many pairs before it treats the last line as parameters.
_MIN_PARAMS_ON_LAST_LINE = 3

# Defaults A1111 fills in for keys missing from an infotext, in its order. Strings and
# numbers are typed exactly as A1111 types them, since callers cast from these.
_DEFAULTS_BEFORE_HIRES_FIX: tuple[tuple[str, object], ...] = (
    ("Hires sampler", "Use same sampler"),
    ("Hires schedule type", "Use same scheduler"),
    ("Hires checkpoint", "Use same checkpoint"),
    ("Hires prompt", ""),
    ("Hires negative prompt", ""),
    ("Mask mode", "Inpaint masked"),
    ("Masked content", "original"),
    ("Inpaint area", "Whole picture"),
    ("Masked area padding", 32),
)
_DEFAULTS_AFTER_HIRES_FIX: tuple[tuple[str, object], ...] = (
    ("RNG", "GPU"),
    ("Schedule type", "Automatic"),
    ("Schedule max sigma", 0),
    ("Schedule min sigma", 0),
    ("Schedule rho", 0),
    ("VAE Encoder", "Full"),
    ("VAE Decoder", "Full"),
    ("FP8 weight", "Disable"),
)

# NovelAI writes k-diffusion function names. A1111 looks them up among its sampler aliases
# and falls back to "Euler a"; these are the NovelAI names that have an A1111 alias.
NOVELAI_SAMPLERS: Mapping[str, str] = {
    "k_euler_ancestral": "Euler a",
    "k_euler": "Euler",
    "k_lms": "LMS",
    "k_heun": "Heun",
    "k_dpm_2": "DPM2",
    "k_dpm_fast": "DPM fast",
    "k_dpmpp_2m": "DPM++ 2M",
    "k_dpmpp_sde": "DPM++ SDE",
    "ddim": "DDIM",
    "plms": "PLMS",
}
_NOVELAI_DEFAULT_SAMPLER = "Euler a"


def quote(value: object) -> str:
    """Format one infotext value: raw, or as a JSON string if it holds ',', ':' or a newline."""
    text = str(value)
    if "," not in text and ":" not in text and "\n" not in text:
        return text
    # default=str: a value that is not JSON-serialisable is quoted as its text, which is
    # what parsing gives back anyway.
    return json.dumps(value, ensure_ascii=False, default=str)


def unquote(text: str) -> str:
    """Undo `quote`: a text in double quotes is decoded as JSON; anything else is returned as is."""
    if len(text) < 2 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        decoded = json.loads(text)
    except ValueError:
        return text
    return decoded if isinstance(decoded, str) else text


def format_infotext(
    prompt: str,
    negative_prompt: str,
    fixed: Mapping[str, object],
    extra: Mapping[str, object],
) -> str:
    """Build an infotext as A1111's `create_infotext` lays it out.

    `fixed` holds values for keys of INFOTEXT_KEYS; the caller has already decided which
    apply (Clip skip only above 1, RNG only when not GPU...). `extra` is the request's
    extra_generation_params in insertion order. None values are left out. As in A1111's
    dict literal, an extra key that is also a fixed key keeps the fixed position and takes
    the extra value (except Version and User, which A1111 writes after the extras).
    """
    unknown = [key for key in fixed if key not in INFOTEXT_KEYS]
    if unknown:
        raise InvalidRequest("fixed", f"not infotext keys: {', '.join(unknown)}")

    params: dict[str, object] = {key: fixed.get(key) for key in _KEYS_BEFORE_EXTRAS}
    params.update(extra)
    for key in _KEYS_AFTER_EXTRAS:
        params[key] = fixed.get(key)

    pairs = ", ".join(
        key if key == value else f"{key}: {quote(value)}" for key, value in params.items() if value is not None
    )
    negative_line = f"\n{NEGATIVE_PROMPT_PREFIX} {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative_line}\n{pairs}".strip()


def add_extra_params(infotext: str, extra: Mapping[str, object]) -> str:
    """`infotext` with more extra generation parameters, where `format_infotext` puts extras: after
    the ones already there, before Version and User. None values are left out.

    Scripts use this to describe a result built from generated images (A1111's X/Y/Z plot grid
    infotext is the first cell's plus "Script", "X Type", "X Values"...).
    """
    pairs = ", ".join(f"{key}: {quote(value)}" for key, value in extra.items() if value is not None)
    if not pairs:
        return infotext
    head, newline, last = infotext.rpartition("\n")
    # Version and User close the line; the extras go before the first of them that is present.
    cut = next((at for key in _KEYS_AFTER_EXTRAS if (at := last.rfind(f", {key}: ")) >= 0), -1)
    if cut >= 0:
        last = f"{last[:cut]}, {pairs}{last[cut:]}"
    else:
        last = f"{last}, {pairs}" if last else pairs
    return f"{head}{newline}{last}"


def parse_infotext(
    text: str,
    *,
    skip_fields: Iterable[str] = (),
    backcompat: bool = True,
    use_old_hires_fix_width_height: bool = False,
) -> dict[str, object]:
    """Parse an infotext into a dict as A1111's `parse_generation_parameters` does.

    Parsed values are strings ("Steps": "20"); a "WxH" value becomes "Key-1" and "Key-2".
    "Prompt" and "Negative prompt" are added, then A1111's defaults for missing keys,
    then its compatibility flags for infotexts from older versions (`backcompat`, the
    option auto_backcompat). Keys in `skip_fields` (option infotext_skip_pasting) are dropped.
    Styles are not extracted from the prompt (A1111's infotext_styles "Ignore").
    """
    *lines, last_line = text.strip().split("\n")
    if len(_PARAM.findall(last_line)) < _MIN_PARAMS_ON_LAST_LINE:
        lines.append(last_line)
        last_line = ""

    result = _parse_pairs(last_line)
    prompt, negative_prompt = _split_prompts(lines)
    result["Prompt"] = prompt
    result["Negative prompt"] = negative_prompt
    _add_defaults(result, use_old_hires_fix_width_height)
    if "Emphasis" not in result and (_uses_emphasis(prompt) or _uses_emphasis(negative_prompt)):
        result["Emphasis"] = "Original"
    result.setdefault("Refiner switch by sampling steps", False)
    if backcompat:
        _add_backcompat_flags(result)
    for key in skip_fields:
        result.pop(key, None)
    return result


def novelai_infotext(description: str, comment: str, width: int, height: int) -> str | None:
    """Convert NovelAI PNG text items (Description, Comment JSON) to an infotext as A1111 does.

    Returns None when the comment is not NovelAI's JSON.
    """
    try:
        info = json.loads(comment)
        sampler = NOVELAI_SAMPLERS.get(info["sampler"], _NOVELAI_DEFAULT_SAMPLER)
        params = f"Steps: {info['steps']}, Sampler: {sampler}, CFG scale: {info['scale']}, Seed: {info['seed']}"
        negative = info["uc"]
    except (ValueError, KeyError, TypeError):
        return None
    # NovelAI models were trained with clip skip 2 and its sampler used eta noise seed delta 31337.
    novelai_defaults = "Clip skip: 2, ENSD: 31337"
    return f"{description}\n{NEGATIVE_PROMPT_PREFIX} {negative}\n{params}, Size: {width}x{height}, {novelai_defaults}"


def _parse_pairs(line: str) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in _PARAM.findall(line):
        # A1111 skips an empty value (its parser raises on it and logs the pair).
        if not value:
            continue
        if value[0] == '"' and value[-1] == '"':
            value = unquote(value)
        size = _IMAGE_SIZE.match(value)
        if size is not None:
            result[f"{key}-1"] = size.group(1)
            result[f"{key}-2"] = size.group(2)
        else:
            result[key] = value
    return result


def _split_prompts(lines: list[str]) -> tuple[str, str]:
    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for raw_line in lines:
        line = raw_line.strip()
        if line.startswith(NEGATIVE_PROMPT_PREFIX):
            in_negative = True
            line = line[len(NEGATIVE_PROMPT_PREFIX) :].strip()
        (negative if in_negative else prompt).append(line)
    return "\n".join(prompt), "\n".join(negative)


def _add_defaults(result: dict[str, object], use_old_hires_fix_width_height: bool) -> None:
    # A missing Clip skip means the default, 1.
    result.setdefault("Clip skip", "1")
    hypernet = result.get("Hypernet")
    if hypernet is not None:
        result["Prompt"] = f"{result['Prompt']}<hypernet:{hypernet}:{result.get('Hypernet strength', '1.0')}>"
    if "Hires resize-1" not in result:
        result["Hires resize-1"] = 0
        result["Hires resize-2"] = 0
    for key, value in _DEFAULTS_BEFORE_HIRES_FIX:
        result.setdefault(key, value)
    _restore_old_hires_fix_params(result, use_old_hires_fix_width_height)
    for key, value in _DEFAULTS_AFTER_HIRES_FIX:
        result.setdefault(key, value)
    if "Cache FP16 weight for LoRA" not in result and result["FP8 weight"] != "Disable":
        result["Cache FP16 weight for LoRA"] = False


def _restore_old_hires_fix_params(result: dict[str, object], use_old_hires_fix_width_height: bool) -> None:
    """Infotexts from before A1111 1.0 give the hires first pass size; convert it to size + resize."""
    if use_old_hires_fix_width_height:
        hires_width = int(result.get("Hires resize-1", 0))  # type: ignore[call-overload]
        hires_height = int(result.get("Hires resize-2", 0))  # type: ignore[call-overload]
        if hires_width and hires_height:
            result["Size-1"] = hires_width
            result["Size-2"] = hires_height
            return

    first_width = result.get("First pass size-1")
    first_height = result.get("First pass size-2")
    if first_width is None or first_height is None:
        return
    first_width, first_height = int(first_width), int(first_height)  # type: ignore[call-overload]
    width = int(result.get("Size-1", 512))  # type: ignore[call-overload]
    height = int(result.get("Size-2", 512))  # type: ignore[call-overload]
    if first_width == 0 or first_height == 0:
        first_width, first_height = _old_first_pass_size(width, height)
    result["Size-1"] = first_width
    result["Size-2"] = first_height
    result["Hires resize-1"] = width
    result["Hires resize-2"] = height


def _old_first_pass_size(width: int, height: int) -> tuple[int, int]:
    """The old hires fix sampled first at about 512x512 pixels, rounded up to multiples of 64."""
    scale = math.sqrt(512 * 512 / (width * height))
    return math.ceil(scale * width / 64) * 64, math.ceil(scale * height / 64) * 64


# Tokens of A1111's attention syntax (prompt_parser.re_attention), used only to tell
# whether a prompt changes any weight, which decides the "Emphasis" default.
_ATTENTION_TOKEN = re.compile(r"\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")
_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1


def _uses_emphasis(prompt: str) -> bool:
    """True when some text chunk of the prompt gets a weight other than 1.0, as A1111 checks it."""
    # One [is_break, weight] entry per chunk A1111's parser would produce.
    chunks: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for chunk in chunks[start:]:
            chunk[1] *= factor

    for match in _ATTENTION_TOKEN.finditer(prompt):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            chunks.append([False, 1.0])
        elif token == "(":
            round_open.append(len(chunks))
        elif token == "[":
            square_open.append(len(chunks))
        elif weight is not None and round_open and _is_float(weight):
            scale(round_open.pop(), float(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_open:
            scale(square_open.pop(), _SQUARE_MULTIPLIER)
        else:
            for index, _ in enumerate(_BREAK.split(token)):
                if index:
                    chunks.append([True, -1.0])
                chunks.append([False, 1.0])
    for start in round_open:
        scale(start, _ROUND_MULTIPLIER)
    for start in square_open:
        scale(start, _SQUARE_MULTIPLIER)
    return any(not is_break and weight != 1.0 for is_break, weight in chunks)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- Version compatibility (A1111 infotext_versions.backcompat) ---

_VERSION = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre>alpha|a|beta|b|preview|pre|c|rc)[-_.]?(?P<pre_n>\d+)?)?"
    r"(?P<post>-(?P<post_implicit>\d+)|[-_.]?(?:post|rev|r)[-_.]?(?P<post_n>\d+)?)?"
    r"(?P<dev>[-_.]?dev[-_.]?(?P<dev_n>\d+)?)?"
    r"(?:\+[a-z0-9]+(?:[-_.][a-z0-9]+)*)?",
    re.IGNORECASE,
)
_PRE_RELEASE_NAMES = {
    "alpha": "a",
    "a": "a",
    "beta": "b",
    "b": "b",
    "c": "rc",
    "pre": "rc",
    "preview": "rc",
    "rc": "rc",
}

VersionKey = tuple[tuple[int, ...], tuple[int, str, int], tuple[int, int], tuple[int, int]]


def _version_key(text: str | None) -> VersionKey | None:
    """A sortable key for a PEP 440 version such as "v1.10.1" or "1.7.0-225", or None.

    A1111 keeps only the first two dash-separated parts ("v1.6.0-2-gabcdef" -> "v1.6.0-2")
    and compares with packaging.version; this covers the forms packaging accepts, without
    epochs. Anything else (e.g. Forge's "f2.0.1v1.10.1-previous-...") gives None.
    """
    if text is None:
        return None
    trimmed = re.match(r"([^-]+-[^-]+)-.*", text)
    if trimmed:
        text = trimmed.group(1)
    match = _VERSION.fullmatch(text.strip())
    if match is None:
        return None
    release = tuple(int(part) for part in match["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    has_post = match["post"] is not None
    has_dev = match["dev"] is not None
    if match["pre"]:
        pre = (0, _PRE_RELEASE_NAMES[match["pre"].lower()], int(match["pre_n"] or 0))
    elif has_dev and not has_post:
        pre = (-1, "", 0)  # "1.0.dev1" sorts before "1.0a1", as in PEP 440
    else:
        pre = (1, "", 0)
    post = (0, int(match["post_implicit"] or match["post_n"] or 0)) if has_post else (-1, 0)
    dev = (0, int(match["dev_n"] or 0)) if has_dev else (1, 0)
    return release, pre, post, dev


_V160 = _version_key("1.6.0")
_V170_TSNR = _version_key("v1.7.0-225")
_V180 = _version_key("1.8.0")


def _add_backcompat_flags(result: dict[str, object]) -> None:
    """Turn on the compatibility flags A1111 sets for infotexts written by its older versions."""
    version = _version_key(result.get("Version"))  # type: ignore[arg-type]
    if version is None:
        return
    if version < _V160 and "[" in str(result.get("Prompt", "")):
        result["Old prompt editing timelines"] = True
    if version < _V160 and result.get("Sampler", "") in ("DDIM", "PLMS"):
        result["Pad conds v0"] = True
    if version < _V170_TSNR:
        result["Downcast alphas_cumprod"] = True
    if version < _V180 and result.get("Refiner"):
        result["Refiner switch by sampling steps"] = True
