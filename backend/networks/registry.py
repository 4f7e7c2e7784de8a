"""The LoRA/LyCORIS files in the network folders: discovery, metadata, hashes, user metadata, previews.

Discovery follows A1111 (extensions-builtin/Lora/networks.py, network.py, modules/ui_extra_networks.py):
- every `.safetensors`, `.pt` and `.ckpt` under the folders, recursively, folders in natural order; the
  network's name is the file stem, and a later file with the same stem replaces an earlier one;
- `alias` = the `ss_output_name` metadata or the name; an alias shared by two files, "none" and "Addams"
  are forbidden, and such names only match file stems;
- metadata = the safetensors `__metadata__` (JSON-object strings decoded), with A1111's key order;
- hash = `sshs_model_hash` from the metadata, else the kohya "addnet" sha256 of the safetensors payload
  (full-file sha256 for `.pt`/`.ckpt`); the first 12 hex digits go to the "Lora hashes" infotext;
- next to `<stem>.<ext>`: user metadata `<stem>.json`, description `<stem>.txt` or `<stem>.description.txt`,
  preview `<stem>.<png|jpg|jpeg|webp|gif>` or `<stem>.preview.<ext>` (checked in that order, per extension);
- family: the file's metadata (kohya `ss_base_model_version`/`ss_v2`, ModelSpec architecture), else its tensor
  shapes, else the name of the checkpoint it was trained on, else SD1 for any kohya metadata (A1111's rule).

Listing is fast for thousands of files: one directory walk, the side files found in the walk's own file
lists, only the JSON header of safetensors files read (never tensors, never a hash), and entries reused
across refreshes while a file's mtime and size are unchanged.
"""
from __future__ import annotations

import builtins
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import InvalidRequest
from backend.models.hashes import HashCache, addnet_hash_safetensors, sha256_file
from backend.models.registry import natural_sort_key

logger = logging.getLogger(__name__)

NETWORK_SUFFIXES = (".safetensors", ".pt", ".ckpt")
PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "gif")
SHORTHASH_LENGTH = 12
HASH_KIND_ADDNET = "lora-addnet"
HASH_KIND_FILE = "lora-sha256"
PREFERRED_ALIAS = "Alias from file"
PREFERRED_FILENAME = "Filename"
# A1111's forbidden_network_aliases seeds, compared in lower case.
_ALWAYS_FORBIDDEN = ("none", "addams")
# A1111's metadata display order (network.metadata_tags_order); other keys keep their order after these.
_METADATA_ORDER = {"ss_sd_model_name": 1, "ss_resolution": 2, "ss_clip_skip": 3, "ss_num_train_images": 10,
                   "ss_tag_frequency": 20}
_MAX_HEADER = 100_000_000
_USER_SD_VERSIONS = {"SD1": "sd1", "SD2": "sd2", "SDXL": "sdxl"}
FAMILY_TITLES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
# Base-checkpoint names kohya records in ss_sd_model_name ("sd_xl_base_1.0.safetensors", "ponyDiffusionV6XL",
# "v2-1_768-ema-pruned.ckpt", "runwayml/stable-diffusion-v1-5"), in the order they are tried.
_MODEL_NAME_FAMILIES = (
    (re.compile(r"sd_?xl|(^|[^a-z])xl|xl([^a-z]|$)", re.IGNORECASE), "sdxl"),
    (re.compile(r"v2[-_.]?[01]|stable-diffusion-2|sd_?2[01]|768-v", re.IGNORECASE), "sd2"),
    (re.compile(r"v1[-_.]?[45]|stable-diffusion-v1|sd_?1[45]", re.IGNORECASE), "sd1"),
)
# Width of the text fed to cross-attention (to_k/to_v inputs) and of the first text encoder, per family.
_CONTEXT_WIDTHS = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TEXT_WIDTHS = {768: "sd1", 1024: "sd2"}
_LORA_IN_PROMPT = re.compile(r"<lora:([^:>]+):")


def _read_header(path: Path) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """`(metadata, {key: shape})` from a safetensors header, reading no tensor data."""
    with open(path, "rb") as file:
        raw = file.read(8)
        size = os.fstat(file.fileno()).st_size
        length = int.from_bytes(raw, "little")
        if len(raw) != 8 or not 2 <= length <= min(size - 8, _MAX_HEADER):
            raise ValueError("not a safetensors file (bad header length)")
        header = json.loads(file.read(length))
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file (header is not a JSON object)")
    raw_metadata = header.pop("__metadata__", None)
    metadata: dict[str, Any] = {}
    if isinstance(raw_metadata, dict):
        for key, value in sorted(raw_metadata.items(), key=lambda item: _METADATA_ORDER.get(item[0], 999)):
            metadata[key] = value
            if isinstance(value, str) and value.startswith("{"):
                try:
                    metadata[key] = json.loads(value)
                except ValueError:
                    pass
    shapes = {key: tuple(entry.get("shape", ())) for key, entry in header.items() if isinstance(entry, dict)}
    return metadata, shapes


def family_from_metadata(metadata: dict[str, Any]) -> str | None:
    """The family a network declares for itself ("sd1", "sd2", "sdxl"), from kohya or ModelSpec metadata."""
    base = str(metadata.get("ss_base_model_version", ""))
    if base.startswith("sdxl"):
        return "sdxl"
    if base.startswith("sd_v2") or str(metadata.get("ss_v2", "")) == "True":
        return "sd2"
    if base.startswith("sd_v1"):
        return "sd1"
    architecture = str(metadata.get("modelspec.architecture", ""))
    for prefix, family in (("stable-diffusion-xl", "sdxl"), ("stable-diffusion-v2", "sd2"),
                           ("stable-diffusion-v1", "sd1")):
        if architecture.startswith(prefix):
            return family
    return None


def family_from_model_name(metadata: dict[str, Any]) -> str | None:
    """A family guess from the name of the checkpoint the network was trained on (`ss_sd_model_name`)."""
    name = str(metadata.get("ss_sd_model_name", ""))
    return next((family for pattern, family in _MODEL_NAME_FAMILIES if name and pattern.search(name)), None)


def family_from_shapes(shapes: dict[str, tuple[int, ...]]) -> str | None:
    """A family guess from tensor names and widths (real model sizes only), or None."""
    if any(key.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for key in shapes):
        return "sdxl"
    for key, shape in shapes.items():
        if len(shape) >= 2 and re.search(r"attn2[._]to_[kv]", key) and re.search(r"(down|lora_A)\.weight$", key):
            return _CONTEXT_WIDTHS.get(shape[1])
    for key, shape in shapes.items():
        if len(shape) >= 2 and key.startswith("lora_te_") and "q_proj" in key and "down.weight" in key:
            return _TEXT_WIDTHS.get(shape[1])
    return None


@dataclass(eq=False)
class NetworkInfo:
    """One network file and what is known about it without loading its tensors.

    `alias` is A1111's `NetworkOnDisk.alias` (`ss_output_name` or the name): what `/sdapi/v1/loras`
    returns and what prompts may use. `NetworkRegistry.prompt_name` applies the `lora_preferred_name`
    option for the text a card inserts. `sha256` stays None until `NetworkRegistry.ensure_hash`.
    """

    name: str
    path: Path
    root: Path  # the network folder it was found under
    alias: str
    metadata: dict[str, Any]
    mtime: float
    size: int
    file_family: str | None  # "sd1" | "sd2" | "sdxl" | None: from the file's metadata, else its tensor shapes
    declared_family: str | None  # from the file's own metadata only (what activation trusts)
    user_metadata: dict[str, Any] = field(default_factory=dict)
    file_description: str = ""
    preview: Path | None = None
    sha256: str | None = None

    @property
    def shorthash(self) -> str | None:
        """First 12 hex digits of the hash, as in the "Lora hashes" infotext; None until hashed."""
        return self.sha256[:SHORTHASH_LENGTH] if self.sha256 else None

    @property
    def family(self) -> str | None:
        """The family shown on the card: the user's "sd version" if set, else the file's own guess."""
        return _user_family(self.user_metadata) or self.file_family

    @property
    def description(self) -> str:
        """The user metadata's description, else the `<stem>.txt` text (A1111's order)."""
        value = self.user_metadata.get("description")
        return value if isinstance(value, str) else self.file_description

    @property
    def user_metadata_path(self) -> Path:
        """`<stem>.json` next to the file."""
        return self.path.with_name(self.name + ".json")

    @property
    def relative_path(self) -> str:
        """The file's path under its network folder (for the folder tree and search)."""
        return self.path.relative_to(self.root).as_posix()

    def api_json(self) -> dict[str, Any]:
        """The `/sdapi/v1/loras` item: name, alias, path, metadata."""
        return {"name": self.name, "alias": self.alias, "path": str(self.path), "metadata": self.metadata}


class NetworkRegistry:
    """The networks found under `dirs`, refreshed on demand; thread-safe.

    `hash_cache` keeps computed hashes across restarts (kinds "lora-addnet" and "lora-sha256");
    `no_hashing` (A1111's --no-hashing) leaves hashes unknown unless the metadata carries one.
    """

    def __init__(self, dirs: Iterable[Path], hash_cache: HashCache | None = None, *, no_hashing: bool = False) -> None:
        self.dirs = list(dict.fromkeys(Path(os.path.abspath(d)) for d in dirs))
        self.hash_cache = hash_cache
        self.no_hashing = no_hashing
        self._lock = threading.RLock()
        self._by_name: dict[str, NetworkInfo] = {}
        self._by_alias: dict[str, NetworkInfo] = {}
        self._forbidden: set[str] = set(_ALWAYS_FORBIDDEN)
        self._refreshed = False

    # ---- listing -----------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Re-scan the folders. Unchanged files keep their entry (and hash); nothing is hashed here."""
        with self._lock:
            previous = {info.path: info for info in self._by_name.values()}
            by_name: dict[str, NetworkInfo] = {}
            for root, path, siblings in self._walk():
                try:
                    stat = path.stat()
                except OSError as exc:
                    logger.warning("skipping network %s: %s", path, exc)
                    continue
                old = previous.get(path)
                if old is not None and old.mtime == stat.st_mtime and old.size == stat.st_size:
                    info = old
                else:
                    info = self._describe(root, path, stat)
                self._attach_side_files(info, siblings)
                by_name[info.name] = info
            self._by_name = by_name
            self._rebuild_aliases()
            self._refreshed = True

    def list(self) -> builtins.list[NetworkInfo]:
        """All networks, in discovery order (refreshing first if never refreshed)."""
        with self._lock:
            self._ensure_listed()
            return builtins.list(self._by_name.values())

    def find(self, name_or_alias: str) -> NetworkInfo | None:
        """The network a prompt names: by file stem or alias, as A1111 resolves `<lora:NAME:...>`.

        A forbidden alias (shared by several files, or "none") matches only a file stem. A name not found
        triggers one re-scan, so a file added since the last refresh is found.
        """
        with self._lock:
            self._ensure_listed()
            found = self._lookup(name_or_alias)
            if found is None:
                self.refresh()
                found = self._lookup(name_or_alias)
            return found

    def prompt_name(self, info: NetworkInfo, lora_preferred_name: str = PREFERRED_ALIAS) -> str:
        """The name a card inserts into the prompt (A1111's `get_alias`, option `lora_preferred_name`)."""
        with self._lock:
            if lora_preferred_name == PREFERRED_FILENAME or info.alias.lower() in self._forbidden:
                return info.name
            return info.alias

    # ---- hashes ------------------------------------------------------------------------------------------

    def ensure_hash(self, info: NetworkInfo) -> str | None:
        """The network's hash (computing and caching it if needed); None with no_hashing or on a read error."""
        if info.sha256:
            return info.sha256
        if self.no_hashing:
            return None
        is_safetensors = info.path.suffix.lower() == ".safetensors"
        kind, hasher = (HASH_KIND_ADDNET, addnet_hash_safetensors) if is_safetensors else (HASH_KIND_FILE, sha256_file)
        try:
            if self.hash_cache is not None:
                value = self.hash_cache.get_or_compute(kind, info.path, hasher)
            else:
                value = hasher(info.path)
        except OSError as exc:
            logger.warning("cannot hash network %s: %s", info.path, exc)
            return None
        info.sha256 = value
        return value

    def find_by_shorthash(self, shorthash: str) -> NetworkInfo | None:
        """The network whose known hash starts with `shorthash` (hashes are not computed for this)."""
        wanted = shorthash.strip().lower()
        if not wanted:
            return None
        with self._lock:
            self._ensure_listed()
            for info in self._by_name.values():
                if info.sha256 and info.sha256.lower().startswith(wanted):
                    return info
        return None

    def remap_prompt_by_hashes(self, prompt: str, lora_hashes: str,
                               lora_preferred_name: str = PREFERRED_ALIAS) -> str:
        """A pasted prompt with each `<lora:NAME:` whose "Lora hashes" entry matches a local file renamed to
        that file's prompt name (A1111's lora_script.infotext_pasted)."""
        hashes = {}
        for item in lora_hashes.split(","):
            alias, sep, value = item.strip().partition(":")
            if sep:
                hashes[alias.strip()] = value.strip()

        def replace(match: re.Match) -> str:
            shorthash = hashes.get(match[1])
            info = self.find_by_shorthash(shorthash) if shorthash else None
            return match[0] if info is None else f"<lora:{self.prompt_name(info, lora_preferred_name)}:"

        return _LORA_IN_PROMPT.sub(replace, prompt)

    # ---- browsing: user metadata and previews ------------------------------------------------------------------

    def save_user_metadata(self, info: NetworkInfo, data: dict[str, Any]) -> None:
        """Write `<stem>.json` (atomically) with the card editor's fields and keep them on `info`.

        A1111's Lora keys are "description", "sd version", "activation text", "preferred weight",
        "negative text" and "notes"; other keys are kept as given. Raises InvalidRequest when `data` is not
        a JSON object.
        """
        if not isinstance(data, dict):
            raise InvalidRequest("user_metadata", f"must be a JSON object, got {type(data).__name__}")
        try:
            text = json.dumps(data, indent=4, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest("user_metadata", f"cannot be written as JSON: {exc}") from exc
        target = info.user_metadata_path
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                tmp.write(text)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        with self._lock:
            info.user_metadata = dict(data)

    def replace_preview(self, info: NetworkInfo, image: Any, samples_format: str = "png") -> Path:
        """Save a PIL image as the card's preview ("Replace preview") and return the file written.

        A1111 writes `<stem>.<samples_format>`. An existing still preview (`<stem>.png`, `<stem>.preview.jpg`,
        ...) is overwritten in its own format instead, so the new picture is the one the card shows and no
        stale preview is left to win the lookup; a GIF preview comes last in the lookup and stays.
        """
        fmt = samples_format.lower().lstrip(".")
        if fmt not in PREVIEW_EXTENSIONS:
            raise InvalidRequest("samples_format", f"preview format must be one of {PREVIEW_EXTENSIONS}, got {fmt!r}")
        current = info.preview
        if current is not None and current.is_file() and current.suffix.lower() != ".gif":
            target = current
        else:
            target = info.path.with_name(f"{info.name}.{fmt}")
        if target.suffix.lower() in (".jpg", ".jpeg") and image.mode not in ("RGB", "L"):
            image = image.convert("RGB")  # JPEG has no alpha
        image.save(target)
        with self._lock:
            info.preview = target
        return target

    # ---- internals ---------------------------------------------------------------------------------------------

    def _ensure_listed(self) -> None:
        if not self._refreshed:
            self.refresh()

    def _lookup(self, name: str) -> NetworkInfo | None:
        if name.lower() in self._forbidden:
            return self._by_name.get(name)
        return self._by_alias.get(name)

    def _rebuild_aliases(self) -> None:
        aliases: dict[str, NetworkInfo] = {}
        forbidden = set(_ALWAYS_FORBIDDEN)
        for info in self._by_name.values():
            if info.alias in aliases:
                forbidden.add(info.alias.lower())
            aliases[info.name] = info
            aliases[info.alias] = info
        self._by_alias = aliases
        self._forbidden = forbidden

    def _walk(self) -> Iterator[tuple[Path, Path, frozenset[str]]]:
        """`(root, file, names in its folder)` for every network file, in A1111's order."""
        for root in self.dirs:
            if not root.is_dir():
                continue
            folders = []
            visited: set[str] = set()
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in visited:
                    dirnames.clear()  # a symlink loop
                    continue
                visited.add(real)
                folders.append((dirpath, filenames))
            folders.sort(key=lambda item: natural_sort_key(item[0]))
            for dirpath, filenames in folders:
                siblings = frozenset(filenames)
                for filename in sorted(filenames, key=natural_sort_key):
                    if filename.lower().endswith(NETWORK_SUFFIXES):
                        yield root, Path(dirpath, filename), siblings

    def _describe(self, root: Path, path: Path, stat: os.stat_result) -> NetworkInfo:
        name = path.stem
        metadata: dict[str, Any] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        if path.suffix.lower() == ".safetensors":
            try:
                metadata, shapes = _read_header(path)
            except (OSError, ValueError) as exc:
                # Still listed, as in A1111; loading it reports the real problem.
                logger.warning("cannot read safetensors header of network %s: %s", path, exc)
        alias = metadata.get("ss_output_name")
        declared = family_from_metadata(metadata)
        # A1111 calls any network with (kohya) metadata SD1 when nothing says otherwise.
        kohya_default = "sd1" if any(key.startswith("ss_") for key in metadata) else None
        family = declared or family_from_shapes(shapes) or family_from_model_name(metadata) or kohya_default
        sshs = metadata.get("sshs_model_hash")
        info = NetworkInfo(name=name, path=path, root=root, alias=alias if isinstance(alias, str) and alias else name,
                           metadata=metadata, mtime=stat.st_mtime, size=stat.st_size, file_family=family,
                           declared_family=declared, sha256=sshs if isinstance(sshs, str) and sshs else None)
        if info.sha256 is None and self.hash_cache is not None:
            kind = HASH_KIND_ADDNET if path.suffix.lower() == ".safetensors" else HASH_KIND_FILE
            info.sha256 = self.hash_cache.get(kind, path)
        return info

    def _attach_side_files(self, info: NetworkInfo, siblings: frozenset[str]) -> None:
        stem = info.name
        info.user_metadata = {}
        if f"{stem}.json" in siblings:
            info.user_metadata = _read_user_metadata(info.user_metadata_path)
        info.file_description = ""
        for candidate in (f"{stem}.txt", f"{stem}.description.txt"):
            if candidate in siblings:
                try:
                    info.file_description = info.path.with_name(candidate).read_text(encoding="utf-8", errors="replace")
                except OSError as exc:
                    logger.warning("cannot read %s: %s", candidate, exc)
                break
        info.preview = None
        for ext in PREVIEW_EXTENSIONS:
            hit = next((c for c in (f"{stem}.{ext}", f"{stem}.preview.{ext}") if c in siblings), None)
            if hit is not None:
                info.preview = info.path.with_name(hit)
                break


def _read_user_metadata(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable user metadata %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {}


def _user_family(user_metadata: dict[str, Any]) -> str | None:
    return _USER_SD_VERSIONS.get(str(user_metadata.get("sd version", "")))
