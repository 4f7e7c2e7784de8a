"""Textual-inversion embeddings: A1111's embeddings folder, read for inference.

Every `.pt`, `.bin` and `.safetensors` file under the folder (sub-folders included) is one embedding,
named by its file stem. The formats A1111 reads:

- A1111's own `.pt`: `{'string_to_param': {'*': Tensor[n, dim]}, 'name', 'step', 'sd_checkpoint',
  'sd_checkpoint_name', ...}`;
- diffusers' `.bin` (`learned_embeds.bin`): `{'<token>': Tensor[dim]}` (a single key);
- `.safetensors` with a single tensor, usually `emb_params` [n, dim];
- SDXL files with `clip_l` [n, 768] and `clip_g` [n, 1280].

Pickles are read with `torch.load(weights_only=True)`; a file that needs more is refused (logged),
as checkpoints are. An embedding is used with a model when its vector widths equal the widths of
the model's text encoders (SD1 768, SD2 1024, SDXL 768 and 1280); the others are "skipped", as
A1111 lists them. The folder is scanned again whenever a file was added, removed or changed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.prompts.chunking import FindEmbedding

__all__ = ["EMBEDDING_SUFFIXES", "Embedding", "EmbeddingDatabase", "EmbeddingSet", "encoder_widths",
           "read_embedding"]

log = logging.getLogger(__name__)

EMBEDDING_SUFFIXES: tuple[str, ...] = (".pt", ".bin", ".safetensors")
# An embedding has to fit in one 75-token chunk (A1111 would build an over-long chunk and fail).
MAX_VECTORS = 75
# The key order of SDXL embedding files, which is also the order of SDXL's text encoders.
SDXL_PARTS: tuple[str, ...] = ("clip_l", "clip_g")
_HASH_BLOCK = 1 << 20


@dataclass(frozen=True, eq=False)
class Embedding:
    """One embedding file: its vectors for each text encoder it targets, and A1111's listing fields.

    parts: one [vectors, width] float32 tensor per text encoder: one for SD1/SD2 files, (clip_l,
        clip_g) for SDXL files.
    file_key: (mtime_ns, size) of the file when read, which identifies this version of it.
    """

    name: str
    filename: Path
    parts: tuple[Tensor, ...] = field(repr=False)
    file_key: tuple[int, int]
    step: int | None = None
    sd_checkpoint: str | None = None
    sd_checkpoint_name: str | None = None
    sha256: str | None = None

    @property
    def vectors(self) -> int:
        """How many token positions the embedding fills in a prompt."""
        return int(self.parts[0].shape[0])

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(int(part.shape[1]) for part in self.parts)

    @property
    def shape(self) -> int:
        """A1111's `shape`: the vector width, summed over the parts of an SDXL file (768 + 1280 = 2048)."""
        return sum(self.widths)

    @property
    def shorthash(self) -> str | None:
        """The first 12 hex digits of the file's sha256, as in A1111's "TI hashes"; None without hashing."""
        return self.sha256[:12] if self.sha256 else None

    @property
    def version(self) -> str:
        """What changes when the file changes: its hash, or its mtime and size when hashing is off."""
        return self.sha256 or f"{self.file_key[0]}:{self.file_key[1]}"

    def fits(self, widths: tuple[int, ...]) -> bool:
        """Whether a model whose text encoders have these widths can use this embedding."""
        return self.widths == widths and 1 <= self.vectors <= MAX_VECTORS

    def api_json(self) -> dict[str, Any]:
        """A1111's /sdapi/v1/embeddings entry."""
        return {"step": self.step, "sd_checkpoint": self.sd_checkpoint,
                "sd_checkpoint_name": self.sd_checkpoint_name, "shape": self.shape, "vectors": self.vectors}


def encoder_widths(text_models: Iterable[torch.nn.Module | None]) -> tuple[int, ...]:
    """The token-embedding width of each text encoder (the encoders' order is the parts' order)."""
    return tuple(int(model.get_input_embeddings().embedding_dim) for model in text_models if model is not None)


# ---------------------------------------------------------------------------
# Reading one file
# ---------------------------------------------------------------------------

def read_embedding(path: Path, *, hashing: bool = True) -> Embedding:
    """Read an embedding file; ValueError says why a file is not one."""
    stat = path.stat()
    data = _load(path)
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a dictionary of tensors, found {type(data).__name__}")
    parts = _parts(data)
    return Embedding(
        name=path.stem, filename=path, parts=parts, file_key=(stat.st_mtime_ns, stat.st_size),
        step=_int_or_none(data.get("step")), sd_checkpoint=_str_or_none(data.get("sd_checkpoint")),
        sd_checkpoint_name=_str_or_none(data.get("sd_checkpoint_name")),
        sha256=_sha256(path) if hashing else None,
    )


def _load(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refused: the pickle needs more than weights_only=True allows ({e})") from e


def _parts(data: Mapping[str, Any]) -> tuple[Tensor, ...]:
    """The vectors of A1111's three layouts (create_embedding_from_data), checked first to last."""
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, Mapping) or len(params) != 1:
            raise ValueError("'string_to_param' must hold exactly one tensor")
        return (_matrix(next(iter(params.values())), "string_to_param"),)
    if all(key in data for key in SDXL_PARTS):
        parts = tuple(_matrix(data[key], key) for key in SDXL_PARTS)
        if len({part.shape[0] for part in parts}) != 1:
            raise ValueError("'clip_l' and 'clip_g' have different numbers of vectors")
        return parts
    if len(data) == 1:
        key, value = next(iter(data.items()))
        return (_matrix(value, str(key)),)
    raise ValueError("not a textual-inversion embedding: expected 'string_to_param', 'clip_l' + 'clip_g', "
                     f"or a single tensor; found keys {', '.join(map(str, list(data)[:8]))}")


def _matrix(value: Any, key: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise ValueError(f"{key!r} is not a tensor")
    if value.ndim == 1:  # diffusers stores a single vector as [dim]
        value = value.unsqueeze(0)
    if value.ndim != 2 or value.shape[0] == 0:
        raise ValueError(f"{key!r} must be [vectors, width], got {list(value.shape)}")
    return value.detach().to(torch.float32).contiguous()


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------
# What one model uses
# ---------------------------------------------------------------------------

class EmbeddingSet:
    """The embeddings one model can use, found in prompts by their names' token ids."""

    def __init__(self, embeddings: Mapping[str, Embedding] | None = None) -> None:
        self.embeddings: dict[str, Embedding] = dict(embeddings or {})
        # Part of conditioning cache keys: a changed file changes it.
        self.key: tuple[tuple[str, str], ...] = tuple(sorted((n, e.version) for n, e in self.embeddings.items()))

    def matcher(self, tokenize: Callable[[list[str]], list[list[int]]]) -> FindEmbedding | None:
        """A `find_embedding` for chunking with this tokenizer, or None when there is nothing to find.

        As A1111's find_embedding_at_position: an embedding is found where the ids of its name appear
        in the ids of a prompt segment, the longest name first.
        """
        if not self.embeddings:
            return None
        names = list(self.embeddings)
        lookup: dict[int, list[tuple[tuple[int, ...], Embedding]]] = {}
        for name, ids in zip(names, tokenize(names)):
            if ids:
                lookup.setdefault(ids[0], []).append((tuple(ids), self.embeddings[name]))
        for candidates in lookup.values():
            candidates.sort(key=lambda entry: len(entry[0]), reverse=True)

        def find(tokens: Sequence[int], position: int) -> tuple[Embedding, int] | None:
            for ids, embedding in lookup.get(tokens[position], ()):
                if tuple(tokens[position:position + len(ids)]) == ids:
                    return embedding, len(ids)
            return None

        return find


# ---------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------

class EmbeddingDatabase:
    """The embedding files of some folders, read again when they change; thread-safe.

    It remembers the text-encoder widths of the last model it served (`for_encoders`) or was told
    about (`use_model`), so that listing it says which embeddings that model uses, as A1111's does.
    """

    def __init__(self, folders: Sequence[Path] = (), *, hashing: bool = True) -> None:
        self.folders = [Path(folder) for folder in folders]
        self.hashing = hashing
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        # Per file, the (mtime_ns, size) it was read at and what it held (None: not an embedding).
        self._files: dict[Path, tuple[tuple[int, int], Embedding | None]] = {}
        self._embeddings: dict[str, Embedding] = {}
        self._widths: tuple[int, ...] | None = None

    # -- scanning ----------------------------------------------------------

    def refresh(self) -> None:
        """Scan the folders now (A1111's refresh-embeddings); unchanged files are not read again."""
        with self._lock:
            self._scan(self._list_files())

    def refresh_if_changed(self) -> bool:
        """Scan again if a file was added, removed or changed since the last scan; says whether it did."""
        with self._lock:
            files = self._list_files()
            if _signature(files) == self._signature:
                return False
            self._scan(files)
            return True

    def _list_files(self) -> dict[Path, tuple[int, int]]:
        found: dict[Path, tuple[int, int]] = {}
        for folder in self.folders:
            if not folder.is_dir():
                continue
            for root, _, names in os.walk(folder, followlinks=True):
                for name in names:
                    path = Path(root) / name
                    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
                        continue
                    try:
                        stat = path.stat()
                    except OSError:
                        continue  # a broken link, or removed while listing
                    if stat.st_size > 0:  # A1111 skips empty files
                        found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def _scan(self, files: dict[Path, tuple[int, int]]) -> None:
        entries: dict[Path, tuple[tuple[int, int], Embedding | None]] = {}
        embeddings: dict[str, Embedding] = {}
        # Sorted, so that of two files with one name the same one wins on every scan (the later path, as
        # A1111's later-registered file replaces the earlier).
        for path in sorted(files, key=lambda p: str(p).lower()):
            key = files[path]
            cached = self._files.get(path)
            entry = cached if cached is not None and cached[0] == key else (key, self._read(path))
            entries[path] = entry
            embedding = entry[1]
            if embedding is None:
                continue
            if embedding.name in embeddings:
                log.warning("embedding %s: %s replaces %s", embedding.name, path, embeddings[embedding.name].filename)
            embeddings[embedding.name] = embedding
        self._files, self._embeddings, self._signature = entries, embeddings, _signature(files)

    def _read(self, path: Path) -> Embedding | None:
        try:
            return read_embedding(path, hashing=self.hashing)
        except Exception as e:  # any unreadable user file is skipped with a message, never fails a job (A1111)
            log.warning("could not load embedding %s: %s", path, e)
            return None

    # -- using -------------------------------------------------------------

    def use_model(self, widths: tuple[int, ...]) -> None:
        """Note the text-encoder widths of the model now in use (for `listing`)."""
        with self._lock:
            self._widths = widths

    def for_encoders(self, text_models: Sequence[torch.nn.Module]) -> EmbeddingSet:
        """The embeddings these text encoders can use, after a rescan if the folder changed (A1111 checks
        before every generation)."""
        widths = encoder_widths(text_models)
        self.refresh_if_changed()
        with self._lock:
            self._widths = widths
            return EmbeddingSet({n: e for n, e in self._embeddings.items() if e.fits(widths)})

    def current(self) -> EmbeddingSet:
        """The embeddings of the last scan that the model in use can use (all of them before any model)."""
        with self._lock:
            return EmbeddingSet({n: e for n, e in self._embeddings.items()
                                 if self._widths is None or e.fits(self._widths)})

    def listing(self) -> tuple[dict[str, Embedding], dict[str, Embedding]]:
        """(loaded, skipped) for the model in use, as A1111's /embeddings; before any model is known
        every embedding counts as loaded (A1111 with no expected shape)."""
        self.refresh_if_changed()
        with self._lock:
            loaded = {n: e for n, e in self._embeddings.items() if self._widths is None or e.fits(self._widths)}
            skipped = {n: e for n, e in self._embeddings.items() if n not in loaded}
        return loaded, skipped


def _signature(files: Mapping[Path, tuple[int, int]]) -> tuple[tuple[str, int, int], ...]:
    return tuple(sorted((str(path), *key) for path, key in files.items()))
