"""File hashes as A1111 computes them, and a small on-disk cache for the expensive ones.

Three hashes matter for compatibility (see the A1111 reference, section 5.3):
- the full-file sha256, whose first 10 hex digits are the "Model hash" in infotexts;
- the legacy 8-hex hash of one 64 KiB block, still accepted as a checkpoint alias;
- the kohya "addnet" hash of a safetensors payload, used for LoRA hashes.

Hashing a multi-gigabyte checkpoint takes seconds to minutes, so full hashes are kept in a
JSON file keyed by kind and path and trusted while the file's mtime and size are unchanged.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
# A1111's legacy hash (sd_models.model_hash) reads this block; files shorter than the
# offset hash an empty read, which A1111 also does.
_LEGACY_OFFSET = 0x100000
_LEGACY_LENGTH = 0x10000
LEGACY_HASH_MISSING = "NOFILE"


def _sha256_stream(file: BinaryIO, start: int = 0) -> str:
    digest = hashlib.sha256()
    file.seek(start)
    for chunk in iter(lambda: file.read(_CHUNK), b""):
        digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Full sha256 (64 hex digits) of the file at `path`, read in 1 MiB chunks."""
    with open(path, "rb") as file:
        return _sha256_stream(file)


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-hex checkpoint hash: sha256 of the 64 KiB at offset 1 MiB.

    Returns 'NOFILE' when the file cannot be read, the value A1111 shows in that case.
    """
    try:
        with open(path, "rb") as file:
            file.seek(_LEGACY_OFFSET)
            block = file.read(_LEGACY_LENGTH)
    except OSError:
        return LEGACY_HASH_MISSING
    return hashlib.sha256(block).hexdigest()[:8]


def addnet_hash_safetensors(path: Path) -> str:
    """kohya/A1111 "addnet" sha256 of a safetensors file: the tensor bytes after the header.

    The header (8-byte little-endian length, then that many bytes of JSON) is skipped so that
    editing the metadata does not change the hash.
    """
    with open(path, "rb") as file:
        header_len = int.from_bytes(file.read(8), "little")
        return _sha256_stream(file, start=8 + header_len)


class HashCache:
    """Full-file hashes stored in a JSON file, valid while a file's mtime and size are unchanged.

    Entries are keyed "<kind>/<absolute path>" (kind is e.g. "checkpoint" or "lora-addnet") and
    hold {"sha256", "mtime", "size"}. The file is written atomically after each new hash, so a
    crash never leaves a truncated cache. Safe to share between threads; two threads asking for
    the same file wait for one computation.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, dict] | None = None

    @staticmethod
    def key(kind: str, path: Path) -> str:
        """The cache key for a file of a given kind."""
        return f"{kind}/{os.path.abspath(path)}"

    def get(self, kind: str, path: Path) -> str | None:
        """The cached hash of `path` if it is still valid, without reading the file; else None."""
        try:
            stat = os.stat(path)
        except OSError:
            return None
        with self._lock:
            entry = self._load().get(self.key(kind, path))
        return _valid_hash(entry, stat)

    def get_or_compute(self, kind: str, path: Path, hasher: Callable[[Path], str] | None = None) -> str:
        """The hash of `path`, from the cache when its mtime and size match, else computed and stored.

        `hasher` defaults to `sha256_file`; pass `addnet_hash_safetensors` (with its own `kind`)
        for LoRA hashes. Raises OSError when the file cannot be read.
        """
        key = self.key(kind, path)
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            before = os.stat(path)
            with self._lock:
                cached = _valid_hash(self._load().get(key), before)
            if cached is not None:
                return cached
            value = (hasher or sha256_file)(path)
            after = os.stat(path)
            if _revision(after) != _revision(before):
                # The file changed while it was read; the hash belongs to neither version, so
                # it is returned for this call but never cached.
                logger.warning("%s changed while it was hashed; not caching its hash", path)
                return value
            with self._lock:
                self._load()[key] = {"sha256": value, "mtime": after.st_mtime, "size": after.st_size}
                self._save()
            return value

    def _load(self) -> dict[str, dict]:
        # Called with self._lock held. Read once, on first use, so that building the cache object
        # touches no file.
        if self._entries is None:
            self._entries = _read_entries(self.path)
        return self._entries

    def _save(self) -> None:
        # Called with self._lock held.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as tmp:
                json.dump(self._entries, tmp, indent=1, sort_keys=True)
            os.replace(tmp_name, self.path)
        except BaseException:
            os.unlink(tmp_name)
            raise


def _revision(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_mtime_ns, stat.st_size


def _valid_hash(entry: dict | None, stat: os.stat_result) -> str | None:
    # mtime is compared for equality, not "newer than", as A1111's dev branch does, so that a
    # file replaced by an older copy is hashed again.
    if not entry or entry.get("mtime") != stat.st_mtime or entry.get("size") != stat.st_size:
        return None
    value = entry.get("sha256")
    return value if isinstance(value, str) else None


def _read_entries(path: Path) -> dict[str, dict]:
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        # A damaged cache only costs re-hashing; it must not stop the server from starting.
        logger.warning("ignoring unreadable hash cache %s: %s", path, exc)
        return {}
    if not isinstance(data, dict):
        logger.warning("ignoring hash cache %s: not a JSON object", path)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}
