"""The checkpoint list: scans the user's model folders into `CheckpointInfo` records.

Behaves like A1111's `sd_models.list_models` / `CheckpointInfo` / `get_closet_checkpoint_match`
(reference section 5.3 and the --ckpt/--ckpt-dir flags), so titles, aliases and hashes match what
A1111 users, infotexts and API clients already use. It also accepts diffusers-format folders, which
A1111 does not have. Nothing here imports torch: listing models must stay cheap.
"""
from __future__ import annotations

import builtins
import json
import logging
import os
import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import ModelNotFound
from backend.models.hashes import HashCache, legacy_model_hash, sha256_file

logger = logging.getLogger(__name__)

# A1111 lists these extensions (case-insensitive) and skips VAE files kept next to checkpoints.
# A1111 lists .ckpt and .safetensors; we also take .pt (loaded the same safe way as .ckpt).
CHECKPOINT_EXTENSIONS = (".ckpt", ".safetensors", ".pt")
EXCLUDED_SUFFIXES = (".vae.ckpt", ".vae.safetensors", ".vae.pt")
DIFFUSERS_MARKER = "model_index.json"
HASH_KIND = "checkpoint"
SHORTHASH_LENGTH = 10
# The safetensors format caps its JSON header at 100 MB; a larger length means a foreign file.
_MAX_SAFETENSORS_HEADER = 100_000_000
_TRAILING_CHECKSUM = re.compile(r"\s*\[[^]]+]\s*$")
_DIGITS = re.compile(r"([0-9]+)")


def natural_sort_key(text: str) -> list[int | str]:
    """Sort key that orders "model2" before "model10" and ignores case, as A1111's list does."""
    return [int(part) if part.isdigit() else part.lower() for part in _DIGITS.split(text)]


def read_safetensors_metadata(path: Path) -> dict[str, Any]:
    """The `__metadata__` dict from a safetensors header, read without loading any tensor.

    String values that hold a JSON object (kohya's `ss_tag_frequency`, for example) are decoded,
    as A1111 does. Raises ValueError when the file is not a safetensors file and OSError when it
    cannot be read.
    """
    with open(path, "rb") as file:
        raw_len = file.read(8)
        file_size = os.fstat(file.fileno()).st_size
        header_len = int.from_bytes(raw_len, "little")
        if len(raw_len) != 8 or not 2 <= header_len <= min(file_size - 8, _MAX_SAFETENSORS_HEADER):
            raise ValueError(f"{path} is not a safetensors file (bad header length)")
        header = json.loads(file.read(header_len))
    if not isinstance(header, dict):
        raise ValueError(f"{path} is not a safetensors file (header is not a JSON object)")
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        return {}
    return {key: _decode_json_object(value) for key, value in metadata.items()}


def _decode_json_object(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


@dataclass(eq=False)
class CheckpointInfo:
    """One checkpoint file (or diffusers folder) and the names it can be selected by.

    Compared by identity, so a record can key a cache of loaded models as A1111's does.
    """

    filename: Path
    """Absolute path of the file or diffusers folder."""
    name: str
    """Path relative to the model folder it was found in, '/'-separated: "sub/model.safetensors"."""
    name_for_extra: str
    """File name without extension (the folder name for diffusers folders)."""
    model_name: str
    """`name` without extension and with path separators replaced by '_' (A1111's `model_name`)."""
    is_safetensors: bool
    is_diffusers_dir: bool
    legacy_hash: str | None
    """A1111's old 8-hex hash ('NOFILE' when unreadable); None for diffusers folders."""
    sha256: str | None = None
    shorthash: str | None = None
    """First 10 hex digits of `sha256`: the "Model hash" of infotexts."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The safetensors `__metadata__`, empty for other formats."""
    config: Path | None = None
    """A `<stem>.yaml` next to the file, which A1111 uses instead of the guessed config."""

    @classmethod
    def from_path(cls, path: Path, name: str, hash_cache: HashCache | None = None) -> CheckpointInfo:
        """Build the record for `path`, listed as `name`; reads the header and legacy hash block.

        A full sha256 already in `hash_cache` is used, but none is computed here.
        """
        filename = Path(os.path.abspath(path))
        is_dir = filename.is_dir()
        is_safetensors = not is_dir and filename.suffix.lower() == ".safetensors"
        if is_dir:
            name_for_extra, model_name = filename.name, name.replace("/", "_").replace("\\", "_")
        else:
            name_for_extra = filename.stem
            model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        info = cls(
            filename=filename,
            name=name,
            name_for_extra=name_for_extra,
            model_name=model_name,
            is_safetensors=is_safetensors,
            is_diffusers_dir=is_dir,
            legacy_hash=None if is_dir else legacy_model_hash(filename),
            metadata=_metadata_or_empty(filename) if is_safetensors else {},
            config=None if is_dir else _sibling_config(filename),
        )
        if hash_cache is not None and not is_dir:
            info._set_sha256(hash_cache.get(HASH_KIND, filename))
        return info

    @property
    def title(self) -> str:
        """What the UI dropdown and `sd_model_checkpoint` show: "name [shorthash]", or the name alone."""
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def short_title(self) -> str:
        """A1111's short title: "name_for_extra [shorthash]", or `name_for_extra` alone."""
        return f"{self.name_for_extra} [{self.shorthash}]" if self.shorthash else self.name_for_extra

    @property
    def aliases(self) -> list[str]:
        """Every string that selects this checkpoint exactly (A1111's `ids`, plus the absolute path)."""
        ids = [self.model_name, self.title, self.name, self.name_for_extra, str(self.filename)]
        if self.legacy_hash is not None:
            ids += [self.legacy_hash, f"{self.name} [{self.legacy_hash}]"]
        if self.shorthash and self.sha256:
            ids += [self.shorthash, self.sha256, f"{self.name} [{self.shorthash}]", self.short_title]
        return list(dict.fromkeys(ids))

    def calculate_shorthash(self, cache: HashCache | None) -> str | None:
        """Compute (or take from `cache`) the full sha256 and return the 10-hex short hash.

        This reads the whole file unless the cache holds a valid entry. Diffusers folders have no
        single file to hash and return None. Raises OSError when the file cannot be read.
        """
        if self.is_diffusers_dir:
            return None
        value = cache.get_or_compute(HASH_KIND, self.filename) if cache else sha256_file(self.filename)
        self._set_sha256(value)
        return self.shorthash

    def _set_sha256(self, value: str | None) -> None:
        self.sha256 = value
        self.shorthash = value[:SHORTHASH_LENGTH] if value else None


class CheckpointRegistry:
    """The list of known checkpoints, with A1111's lookup rules.

    Nothing is scanned until `refresh()` is called. Order is A1111's: the extra files (--ckpt)
    first, then each model folder in the order given, each walked with folders and files in
    natural order. A1111 walks --ckpt-dir before models/Stable-diffusion. Safe to use from
    several threads.
    """

    def __init__(
        self,
        model_dirs: Iterable[Path],
        extra_files: Iterable[Path] = (),
        hash_cache: HashCache | None = None,
        hashing_enabled: bool = True,
    ) -> None:
        self.model_dirs = _unique_abspaths(model_dirs)
        self.hash_cache = hash_cache
        self.hashing_enabled = hashing_enabled
        self._extra_files = _unique_abspaths(extra_files)
        self._lock = threading.Lock()
        self._entries: builtins.list[CheckpointInfo] = []
        self._aliases: dict[str, CheckpointInfo] = {}

    def refresh(self) -> None:
        """Rescan the folders and extra files; hashes come back from the cache, none are computed."""
        with self._lock:
            extra_files = builtins.list(self._extra_files)
        entries: builtins.list[CheckpointInfo] = []
        seen: set[Path] = set()
        for path in extra_files:
            if not _is_listable(path):
                logger.warning("checkpoint given with --ckpt not found: %s", path)
                continue
            self._append_new(entries, seen, path, self._name_for(path))
        for root in self.model_dirs:
            for path in _walk_checkpoints(root):
                self._append_new(entries, seen, path, _relative_name(path, root))
        with self._lock:
            self._entries = entries
            self._rebuild_aliases()

    def list(self) -> builtins.list[CheckpointInfo]:
        """The checkpoints in display order."""
        with self._lock:
            return builtins.list(self._entries)

    def titles(self) -> builtins.list[str]:
        """The titles in display order, as the UI dropdown and /sdapi/v1/sd-models show them."""
        return [info.title for info in self.list()]

    def find(self, name: str) -> CheckpointInfo | None:
        """The checkpoint `name` selects under A1111's rules, or None.

        First an exact alias (title, name, hash, ...); then the shortest title containing `name`;
        then the shortest title containing `name` without a trailing "[hash]", so that an infotext
        or setting with a stale or legacy hash still finds the file.
        """
        if not name:
            return None
        with self._lock:
            exact = self._aliases.get(name)
            entries = builtins.list(self._entries)
        if exact is not None:
            return exact
        for needle in (name, _TRAILING_CHECKSUM.sub("", name)):
            matches = [info for info in entries if needle and needle in info.title]
            if matches:
                return min(matches, key=lambda info: len(info.title))
        return None

    def get(self, name: str) -> CheckpointInfo:
        """Like `find`, but raises ModelNotFound (listing the known titles) when nothing matches."""
        info = self.find(name)
        if info is None:
            raise ModelNotFound("checkpoint", name, known=self.titles())
        return info

    def add_file(self, path: Path) -> CheckpointInfo:
        """Register one checkpoint file or diffusers folder (as --ckpt does) and return its record.

        A path already listed returns the existing record. A path outside the model folders is
        remembered, so it stays listed after `refresh()`. Raises ModelNotFound if it is neither a
        file nor a folder holding model_index.json.
        """
        filename = Path(os.path.abspath(path))
        if not _is_listable(filename):
            raise ModelNotFound("checkpoint", str(path), known=self.titles())
        with self._lock:
            for info in self._entries:
                if info.filename == filename:
                    return info
        info = CheckpointInfo.from_path(filename, self._name_for(filename), self.hash_cache)
        with self._lock:
            if _containing_dir(filename, self.model_dirs) is None and filename not in self._extra_files:
                self._extra_files.append(filename)
            self._entries.append(info)
            self._rebuild_aliases()
        return info

    def ensure_hash(self, info: CheckpointInfo) -> str | None:
        """The short hash of `info`, computing it (through the cache) if it is not known yet.

        Returns None with hashing disabled (--no-hashing) and for diffusers folders. The title
        changes to "name [shorthash]" once the hash is known. Raises OSError when the file has
        become unreadable since the scan.
        """
        if info.shorthash:
            return info.shorthash
        if not self.hashing_enabled or info.is_diffusers_dir:
            return None
        info.calculate_shorthash(self.hash_cache)
        with self._lock:
            self._rebuild_aliases()
        return info.shorthash

    def _append_new(
        self, entries: builtins.list[CheckpointInfo], seen: set[Path], path: Path, name: str
    ) -> None:
        filename = Path(os.path.abspath(path))
        if filename in seen:
            return
        seen.add(filename)
        entries.append(CheckpointInfo.from_path(filename, name, self.hash_cache))

    def _name_for(self, path: Path) -> str:
        root = _containing_dir(path, self.model_dirs)
        return _relative_name(path, root) if root is not None else path.name

    def _rebuild_aliases(self) -> None:
        # Called with self._lock held. Later records override earlier ones on a shared alias, as
        # in A1111; titles are applied last so that a title always selects its own checkpoint.
        aliases: dict[str, CheckpointInfo] = {}
        for info in self._entries:
            for alias in info.aliases:
                aliases[alias] = info
        for info in self._entries:
            aliases[info.title] = info
        self._aliases = aliases


def _metadata_or_empty(path: Path) -> dict[str, Any]:
    try:
        return read_safetensors_metadata(path)
    except (OSError, ValueError) as exc:
        # A damaged file still gets listed; loading it will report the real error.
        logger.warning("cannot read safetensors metadata of %s: %s", path, exc)
        return {}


def _is_listable(path: Path) -> bool:
    # --ckpt takes any file, whatever its extension, as A1111 does.
    return path.is_file() or (path / DIFFUSERS_MARKER).is_file()


def _sibling_config(path: Path) -> Path | None:
    config = path.with_suffix(".yaml")
    return config if config.is_file() else None


def _unique_abspaths(paths: Iterable[Path]) -> builtins.list[Path]:
    return builtins.list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))


def _containing_dir(path: Path, dirs: Iterable[Path]) -> Path | None:
    for root in dirs:
        if path != root and path.is_relative_to(root):
            return root
    return None


def _relative_name(path: Path, root: Path) -> str:
    # A model folder that is itself a diffusers folder is listed under its own name.
    return path.name if path == root else path.relative_to(root).as_posix()


def _is_checkpoint_file(filename: str) -> bool:
    lower = filename.lower()
    return lower.endswith(CHECKPOINT_EXTENSIONS) and not lower.endswith(EXCLUDED_SUFFIXES)


def _walk_checkpoints(root: Path) -> Iterator[Path]:
    """Checkpoint files and diffusers folders under `root`, in A1111's order.

    A1111 sorts the walked folders by natural order of their full path, then each folder's
    files. A folder holding model_index.json stands for one checkpoint and is not descended into.
    Symlinked folders are followed once each, so a link cycle cannot loop forever.
    """
    if not root.is_dir():
        return
    if (root / DIFFUSERS_MARKER).is_file():
        yield root
        return
    folders: builtins.list[tuple[str, builtins.list[str] | None]] = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames.clear()
            continue
        visited.add(real)
        if dirpath != str(root) and DIFFUSERS_MARKER in filenames:
            dirnames.clear()
            folders.append((dirpath, None))
            continue
        folders.append((dirpath, filenames))
    folders.sort(key=lambda item: natural_sort_key(item[0]))
    for dirpath, filenames in folders:
        if filenames is None:
            yield Path(dirpath)
            continue
        for filename in sorted(filenames, key=natural_sort_key):
            if not _is_checkpoint_file(filename):
                continue
            path = Path(dirpath, filename)
            if not path.exists():
                logger.warning("skipping broken symlink %s", path)
                continue
            yield path
