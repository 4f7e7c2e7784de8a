"""The Lora page's cards: what each network's card shows, the card editor's data, and the card markup.

Everything comes from `NetworkRegistry.list()`, which reads only safetensors headers and keeps an
entry while its file's mtime and size are unchanged; nothing here loads tensors or computes a hash
(a hash shows once generation or the hash cache knows it), so 2,000 cards cost a folder walk plus
string work.

- `list_cards`: one `Card` per network (name, alias, folder, preview, description, family, the text
  a click inserts, search terms), as A1111's `ExtraNetworksPageLora.create_item` builds them;
- `training_summary`: kohya's `ss_*` training metadata as labelled rows and the most frequent tags;
- `update_user_metadata`: the editor's fields into `<stem>.json`, under A1111's keys;
- `thumbnail_file`: the only files `/sd_extra_networks/thumb` may serve;
- `card_html` / `page_html`: the markup the UI shows and `/sd_extra_networks/get-single-card` returns.
  The UI's script reads the cards' `data-*` attributes: `name`, `tag` (the prompt name), `prompt`,
  `activation`, `negative`, `folder`, `path`, `sort-name`, `sort-date`, `search`.
"""
from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from backend.errors import AccessDenied, InvalidRequest, ModelNotFound
from backend.models.registry import natural_sort_key
from backend.networks.registry import (
    FAMILY_TITLES,
    PREFERRED_ALIAS,
    PREVIEW_EXTENSIONS,
    NetworkInfo,
    NetworkRegistry,
)

# A1111's "sd version" choices in the Lora card editor (network.SdVersion names).
SD_VERSIONS = ("Unknown", "SD1", "SD2", "SDXL")
# The user-metadata keys the Lora editor writes into <stem>.json (ui_extra_networks_lora / user_metadata).
USER_METADATA_KEYS = ("description", "sd version", "activation text", "preferred weight", "negative text", "notes")
FAMILY_UNKNOWN = "unknown"
THUMB_ROUTE = "./sd_extra_networks/thumb"
TOP_TAGS = 20


@dataclass(frozen=True)
class Card:
    """One network as its card shows it.

    `prompt` is what a click adds to the prompt (`<lora:NAME:WEIGHT>` plus the activation text) and
    `negative_prompt` what it adds to the negative prompt (`(text:1)`), as A1111 builds them.
    """

    name: str
    alias: str
    prompt_name: str
    path: Path
    relative_path: str  # under its network folder
    folder: str  # "<network folder name>/<sub/folders>", for the folder tree
    preview: Path | None
    preview_mtime: float
    description: str
    family: str  # "sd1" | "sd2" | "sdxl" | "unknown"
    mtime: float
    shorthash: str | None
    preferred_weight: float | None
    activation_text: str
    negative_text: str
    prompt: str
    negative_prompt: str
    search_terms: str  # lower case: name, alias, path and hash, one per line

    @property
    def family_title(self) -> str:
        return FAMILY_TITLES.get(self.family, "Unknown")

    @property
    def thumb_url(self) -> str | None:
        """The preview through the thumbnail route (A1111's URL shape; the mtime busts the browser cache)."""
        if self.preview is None:
            return None
        return f"{THUMB_ROUTE}?filename={quote(str(self.preview))}&mtime={int(self.preview_mtime)}"


def format_weight(value: float) -> str:
    """A weight as A1111's card text has it (JavaScript's number printing): 1.0 -> "1", 0.75 -> "0.75"."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def preferred_weight(user_metadata: dict[str, Any]) -> float | None:
    """The editor's "preferred weight", or None when unset (A1111 treats 0 as unset too)."""
    try:
        value = float(user_metadata.get("preferred weight") or 0)
    except (TypeError, ValueError):
        return None
    return value if value and math.isfinite(value) else None


def make_card(registry: NetworkRegistry, info: NetworkInfo, *, default_multiplier: float = 1.0,
              preferred_name: str = PREFERRED_ALIAS) -> Card:
    """The card of one network; `default_multiplier` is the option `extra_networks_default_multiplier`."""
    user = info.user_metadata
    weight = preferred_weight(user)
    activation = _text(user.get("activation text"))
    negative = _text(user.get("negative text"))
    prompt_name = registry.prompt_name(info, preferred_name)
    prompt = f"<lora:{prompt_name}:{format_weight(weight if weight is not None else default_multiplier)}>"
    if activation:
        prompt += " " + activation
    preview_mtime = 0.0
    if info.preview is not None:
        try:
            preview_mtime = info.preview.stat().st_mtime
        except OSError:
            preview_mtime = 0.0
    relative = info.relative_path
    parent = relative.rpartition("/")[0]
    folder = f"{info.root.name}/{parent}" if parent else info.root.name
    terms = (info.name, info.alias, relative, info.sha256 or "")
    return Card(
        name=info.name, alias=info.alias, prompt_name=prompt_name, path=info.path,
        relative_path=relative, folder=folder, preview=info.preview, preview_mtime=preview_mtime,
        description=info.description.strip(), family=info.family or FAMILY_UNKNOWN, mtime=info.mtime,
        shorthash=info.shorthash, preferred_weight=weight, activation_text=activation, negative_text=negative,
        prompt=prompt, negative_prompt=f"({negative}:1)" if negative else "",
        search_terms="\n".join(dict.fromkeys(term.lower() for term in terms if term)),
    )


def card_settings(options: Mapping[str, Any]) -> dict[str, Any]:
    """`make_card`'s keyword arguments from the options extra_networks_default_multiplier and
    lora_preferred_name."""
    return {"default_multiplier": float(options["extra_networks_default_multiplier"]),
            "preferred_name": str(options["lora_preferred_name"])}


def list_cards(registry: NetworkRegistry, *, default_multiplier: float = 1.0,
               preferred_name: str = PREFERRED_ALIAS) -> list[Card]:
    """Every network's card, in the registry's discovery order."""
    return [make_card(registry, info, default_multiplier=default_multiplier, preferred_name=preferred_name)
            for info in registry.list()]


def find_network(registry: NetworkRegistry, name: str) -> NetworkInfo:
    """The network a card names (file stem or alias); ModelNotFound naming `name` otherwise."""
    info = registry.find(name)
    if info is None:
        raise ModelNotFound("Lora network", name)
    return info


# ---- the editor ----------------------------------------------------------------------------------------

def user_metadata_fields(info: NetworkInfo) -> dict[str, Any]:
    """The editor's fields for `info`, with A1111's defaults for what `<stem>.json` lacks."""
    user = info.user_metadata
    version = _text(user.get("sd version")) or "Unknown"
    return {
        "description": info.description,
        "sd version": version if version in SD_VERSIONS else "Unknown",
        "activation text": _text(user.get("activation text")),
        "preferred weight": preferred_weight(user) or 0.0,
        "negative text": _text(user.get("negative text")),
        "notes": _text(user.get("notes")),
    }


def update_user_metadata(registry: NetworkRegistry, info: NetworkInfo, *, description: str, sd_version: str,
                         activation_text: str, preferred_weight: float, negative_text: str, notes: str) -> None:
    """Write the editor's fields into `<stem>.json`, keeping any other keys the file has.

    Raises InvalidRequest naming the field for an unknown "sd version" or a weight that is not a finite
    number.
    """
    if sd_version not in SD_VERSIONS:
        raise InvalidRequest("sd version", f"must be one of {', '.join(SD_VERSIONS)}, got {sd_version!r}")
    try:
        weight = float(preferred_weight or 0)
    except (TypeError, ValueError):
        raise InvalidRequest("preferred weight", f"must be a number, got {preferred_weight!r}") from None
    if not math.isfinite(weight):
        raise InvalidRequest("preferred weight", f"must be a finite number, got {preferred_weight!r}")
    data = dict(info.user_metadata)
    data.update({"description": description or "", "sd version": sd_version, "activation text": activation_text or "",
                 "preferred weight": weight, "negative text": negative_text or "", "notes": notes or ""})
    registry.save_user_metadata(info, data)


@dataclass(frozen=True)
class TrainingSummary:
    """kohya's training metadata in readable form: `(label, value)` rows and `(tag, count)` top tags."""

    rows: list[tuple[str, str]]
    top_tags: list[tuple[str, int]]
    tag_count: int  # distinct tags in ss_tag_frequency


def training_summary(metadata: dict[str, Any], top: int = TOP_TAGS) -> TrainingSummary:
    """Base model, resolution, clip skip, images, network dim/alpha, dates and the most frequent tags."""
    rows: list[tuple[str, str]] = []

    def add(label: str, *keys: str, fmt: Any = str) -> None:
        for key in keys:
            value = metadata.get(key)
            if value not in (None, "", "None"):
                rows.append((label, fmt(value)))
                return

    add("Output name", "ss_output_name", "modelspec.title")
    add("Base model", "ss_sd_model_name")
    add("Base model version", "ss_base_model_version", "modelspec.architecture")
    add("Network module", "ss_network_module")
    dim, alpha = metadata.get("ss_network_dim"), metadata.get("ss_network_alpha")
    if dim not in (None, "", "None"):
        rows.append(("Network dim / alpha", f"{dim} / {alpha}" if alpha not in (None, "", "None") else str(dim)))
    add("Resolution", "ss_resolution", "modelspec.resolution", fmt=_resolution)
    add("Clip skip", "ss_clip_skip")
    add("Training images", "ss_num_train_images")
    add("Epochs", "ss_num_epochs")
    add("Steps", "ss_max_train_steps", "ss_steps")
    add("Learning rate", "ss_learning_rate")
    add("Optimizer", "ss_optimizer")
    add("Training started", "ss_training_started_at", fmt=_timestamp)
    add("Training finished", "ss_training_finished_at", fmt=_timestamp)
    add("Trigger words", "modelspec.trigger_phrase")
    dataset = metadata.get("ss_dataset_dirs")
    if isinstance(dataset, dict) and dataset:
        rows.append(("Dataset folders", ", ".join(_dataset_dir(name, entry) for name, entry in dataset.items())))
    counts: dict[str, int] = {}
    frequency = metadata.get("ss_tag_frequency")
    if isinstance(frequency, dict):
        for tags in frequency.values():
            if isinstance(tags, dict):
                for tag, count in tags.items():
                    tag = str(tag).strip()
                    if tag:
                        counts[tag] = counts.get(tag, 0) + _int(count)
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return TrainingSummary(rows, ranked[:top], len(counts))


def _resolution(value: Any) -> str:
    # kohya writes "(512, 512)"; ModelSpec "512x512".
    parts = [p for p in str(value).strip("()[] ").replace("x", ",").split(",") if p.strip()]
    return "x".join(p.strip() for p in parts) if len(parts) == 2 else str(value)


def _timestamp(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value), tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (TypeError, ValueError, OverflowError, OSError):
        return str(value)


def _dataset_dir(name: str, entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(name)
    return f"{name} ({_int(entry.get('img_count'))} images x {_int(entry.get('n_repeats'))})"


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


# ---- thumbnails ------------------------------------------------------------------------------------------

def thumbnail_file(filename: str, roots: Sequence[Path], registry: NetworkRegistry | None = None) -> Path:
    """The image `/sd_extra_networks/thumb?filename=` may serve: an existing png/jpg/jpeg/webp/gif inside
    one of `roots` (the network and model folders).

    The path must lie inside a folder as written ('..' collapsed) and, after resolving symlinks, too,
    unless it is the preview of a listed network (a card in a symlinked sub-folder). Raises
    InvalidRequest for an empty name, AccessDenied for another file type or a path outside the folders,
    ModelNotFound for a missing file.
    """
    if not filename:
        raise InvalidRequest("filename", "is required")
    candidate = Path(os.path.abspath(filename))
    if candidate.suffix.lower().lstrip(".") not in PREVIEW_EXTENSIONS:
        raise AccessDenied(f"filename: only {', '.join(PREVIEW_EXTENSIONS)} images can be fetched")
    folders = [Path(os.path.abspath(root)) for root in roots]
    if not any(candidate.is_relative_to(folder) for folder in folders):
        raise AccessDenied("filename: must be inside one of the network or model folders")
    if not candidate.is_file():
        raise ModelNotFound("thumbnail", filename)
    real = Path(os.path.realpath(candidate))
    if any(real.is_relative_to(os.path.realpath(folder)) for folder in folders):
        return real
    if registry is not None and real in _listed_previews(registry.list()):
        return real
    raise AccessDenied("filename: links out of the network or model folders are not served")


def _listed_previews(infos: Iterable[NetworkInfo]) -> set[Path]:
    return {Path(os.path.realpath(info.preview)) for info in infos if info.preview is not None}


# ---- markup ----------------------------------------------------------------------------------------------

def card_html(card: Card) -> str:
    """One card: preview (lazy-loaded), family badge, edit button, name and description."""
    e = _attr
    url = card.thumb_url
    if url is not None:
        picture = f'<img src="{e(url)}" loading="lazy" decoding="async" alt="" draggable="false">'
    else:
        picture = f'<div class="lora-noimage" aria-hidden="true">{html.escape(card.name[:1].upper())}</div>'
    description = f'<div class="lora-desc">{html.escape(card.description)}</div>' if card.description else ""
    hashed = f" [{card.shorthash}]" if card.shorthash else ""
    return (
        f'<div class="lora-card" data-name="{e(card.name)}" data-tag="{e(card.prompt_name)}" '
        f'data-prompt="{e(card.prompt)}" data-activation="{e(card.activation_text)}" '
        f'data-negative="{e(card.negative_prompt)}" data-folder="{e(card.folder)}" '
        f'data-path="{e(card.folder + "/" + card.relative_path.rpartition("/")[2])}" '
        f'data-sort-name="{e(card.name.lower())}" data-sort-date="{card.mtime:.3f}" '
        f'data-search="{e(card.search_terms)}" title="{e(card.relative_path + hashed)}">'
        f'<div class="lora-thumb">{picture}</div>'
        f'<span class="lora-family lora-family-{e(card.family)}">{html.escape(card.family_title)}</span>'
        f'<button type="button" class="lora-edit" title="Metadata and user metadata" '
        f'aria-label="Edit {e(card.name)}">&#9998;</button>'
        f'<div class="lora-text"><div class="lora-name">{html.escape(card.name)}</div>{description}</div>'
        "</div>"
    )


def page_html(cards: Sequence[Card], tabname: str, folders: Sequence[Path] = ()) -> str:
    """The whole page: the folder tree (when there are sub-folders) beside the grid of cards.

    With no cards it says where network files go (`folders`).
    """
    if not cards:
        where = ", ".join(f"<code>{html.escape(str(folder))}</code>" for folder in folders) or "models/Lora"
        return (f'<div class="lora-page lora-page-empty" data-tabname="{_attr(tabname)}"><p class="lora-empty">'
                f"No Lora networks found. Put .safetensors, .pt or .ckpt files in {where} and press "
                "&#8635;.</p></div>")
    tree = _tree_html(cards)
    grid = "".join(card_html(card) for card in cards)
    return (
        f'<div class="lora-page" data-tabname="{_attr(tabname)}">{tree}'
        f'<div class="lora-main"><div class="lora-status" aria-live="polite">{len(cards)} networks</div>'
        f'<div class="lora-cards">{grid}</div>'
        '<p class="lora-empty lora-nomatch" hidden>No network matches the search.</p></div></div>'
    )


def _tree_html(cards: Sequence[Card]) -> str:
    counts: dict[str, int] = {}
    for card in cards:
        parts = card.folder.split("/")
        for depth in range(1, len(parts) + 1):
            key = "/".join(parts[:depth])
            counts[key] = counts.get(key, 0) + 1
    if len(counts) <= 1:
        return ""  # one folder: nothing to choose
    items = [f'<button type="button" class="lora-dir selected" data-folder="" style="--depth:0">'
             f'<span>All</span><span class="lora-count">{len(cards)}</span></button>']
    for folder in sorted(counts, key=natural_sort_key):
        name = folder.rsplit("/", 1)[-1]
        items.append(f'<button type="button" class="lora-dir" data-folder="{_attr(folder)}" '
                     f'style="--depth:{folder.count("/")}" title="{_attr(folder)}"><span>{html.escape(name)}</span>'
                     f'<span class="lora-count">{counts[folder]}</span></button>')
    return f'<nav class="lora-tree" aria-label="Folders">{"".join(items)}</nav>'


def _attr(text: str) -> str:
    return html.escape(text, quote=True)
