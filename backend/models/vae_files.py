"""Separate VAE files, A1111's "SD VAE" setting: the list of files and their weights for a model.

Files are found in `<models-dir>/VAE` (or `--vae-dir`), recursively, plus the `*.vae.*` files kept
beside checkpoints, as A1111 lists them. Each is named by its basename with the extension
("vae-ft-mse-840000-ema-pruned.safetensors"), the value `sd_vae` takes; its hash is the first 10 hex
of the file's sha256 ("VAE hash" in infotexts).

A file holds the ldm VAE tensors (`encoder.*`, `decoder.*`, `quant_conv.*`, `post_quant_conv.*`),
sometimes under `first_stage_model.`, sometimes with training leftovers (`loss.*`, `model_ema.*`)
that are ignored. They are renamed by the loader's own ldm->diffusers conversion.
"""
from __future__ import annotations

import builtins
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from backend.errors import InvalidRequest, ModelLoadError
from backend.models.families import VAE_PREFIX, Family, vae_config
from backend.models.hashes import HashCache
from backend.models.loader import convert_vae_state_dict, read_state_dict, read_vae_dims, shapes_of
from backend.models.registry import natural_sort_key

logger = logging.getLogger(__name__)

AUTOMATIC = "Automatic"
NONE = "None"
FIELD = "sd_vae"
VAE_EXTENSIONS = (".safetensors", ".pt", ".ckpt")
# The files A1111 takes as a checkpoint's own VAE when kept beside it ("<stem>.vae.safetensors"),
# in the order "Automatic" tries them.
SIDECAR_SUFFIXES = (".vae.safetensors", ".vae.pt", ".vae.ckpt")
HASH_KIND = "vae"
SHORTHASH_LENGTH = 10
# The ldm VAE's top-level modules; anything else in a VAE file (loss.*, model_ema.*) is not the VAE.
_VAE_PARTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


@dataclass
class VaeFile:
    """One VAE file: `name` is what `sd_vae` and the infotext's "VAE" show."""

    name: str
    filename: Path
    shorthash: str | None = None


class VaeRegistry:
    """The VAE files of the VAE folders and the `*.vae.*` files of the checkpoint folders.

    `forced` (--vae-path) is used for every job, whatever `sd_vae` says (A1111). Nothing is scanned
    until `refresh()`; hashes are computed on first use, through the shared hash cache.
    """

    def __init__(self, vae_dirs: Iterable[Path] = (), checkpoint_dirs: Iterable[Path] = (),
                 forced: Path | None = None, hash_cache: HashCache | None = None,
                 hashing_enabled: bool = True) -> None:
        self.vae_dirs = [Path(os.path.abspath(d)) for d in vae_dirs]
        self.checkpoint_dirs = [Path(os.path.abspath(d)) for d in checkpoint_dirs]
        self.forced = VaeFile(forced.name, Path(os.path.abspath(forced))) if forced is not None else None
        self.hash_cache = hash_cache
        self.hashing_enabled = hashing_enabled
        self._lock = threading.Lock()
        self._entries: dict[str, VaeFile] = {}

    def refresh(self) -> None:
        """Rescan the folders (A1111's refresh_vae_list)."""
        found: dict[str, VaeFile] = {}
        for root in self.checkpoint_dirs:
            for path in _walk(root, SIDECAR_SUFFIXES):
                found.setdefault(path.name, VaeFile(path.name, path))
        for root in self.vae_dirs:
            for path in _walk(root, VAE_EXTENSIONS):
                found.setdefault(path.name, VaeFile(path.name, path))
        if self.forced is not None:
            found.setdefault(self.forced.name, self.forced)
        with self._lock:
            self._entries = dict(sorted(found.items(), key=lambda item: natural_sort_key(item[0])))

    def list(self) -> builtins.list[VaeFile]:
        """The files in name order."""
        with self._lock:
            return builtins.list(self._entries.values())

    def names(self) -> builtins.list[str]:
        """The values `sd_vae` takes besides Automatic and None."""
        return [vae.name for vae in self.list()]

    def find(self, name: str) -> VaeFile | None:
        with self._lock:
            return self._entries.get(name)

    def resolve(self, choice: str, checkpoint: Path) -> VaeFile | None:
        """The VAE file a job uses for `checkpoint` under `sd_vae` = `choice`; None means the
        checkpoint's own VAE.

        --vae-path wins; "Automatic" takes `<checkpoint stem>.vae.*` beside the checkpoint if there
        is one; "None" is always the checkpoint's own. An unknown name is refused, naming `sd_vae`.
        """
        if self.forced is not None:
            return self.forced
        if choice == NONE:
            return None
        if choice in (AUTOMATIC, ""):
            return self._beside(checkpoint)
        found = self.find(choice)
        if found is None:
            known = ", ".join([AUTOMATIC, NONE, *self.names()])
            raise InvalidRequest(FIELD, f"unknown VAE {choice!r}; known: {known}")
        return found

    def ensure_hash(self, vae: VaeFile) -> str | None:
        """The 10-hex hash of `vae` (None with --no-hashing unless it is already cached)."""
        if vae.shorthash is None:
            if self.hash_cache is not None and self.hashing_enabled:
                value: str | None = self.hash_cache.get_or_compute(HASH_KIND, vae.filename)
            elif self.hash_cache is not None:
                value = self.hash_cache.get(HASH_KIND, vae.filename)
            else:
                value = None
            vae.shorthash = value[:SHORTHASH_LENGTH] if value else None
        return vae.shorthash

    def _beside(self, checkpoint: Path) -> VaeFile | None:
        stem = checkpoint.name if checkpoint.is_dir() else checkpoint.stem
        for suffix in SIDECAR_SUFFIXES:
            candidate = checkpoint.parent / (stem + suffix)
            if candidate.is_file():
                return self.find(candidate.name) or VaeFile(candidate.name, Path(os.path.abspath(candidate)))
        return None


def _walk(root: Path, suffixes: tuple[str, ...]) -> builtins.list[Path]:
    if not root.is_dir():
        return []
    paths = [Path(dirpath, filename) for dirpath, _, filenames in os.walk(root, followlinks=True)
             for filename in filenames if filename.lower().endswith(suffixes)]
    return sorted(paths, key=lambda path: natural_sort_key(str(path)))


# ---- weights ---------------------------------------------------------------------------------------

def read_vae_file(vae: VaeFile) -> dict[str, Tensor]:
    """The file's VAE tensors under `first_stage_model.` (the layout the loader converts), others dropped."""
    state: dict[str, Tensor] = {}
    for key, value in read_state_dict(vae.filename).items():
        bare = key.removeprefix(VAE_PREFIX)
        if bare.startswith(_VAE_PARTS):
            state[VAE_PREFIX + bare] = value
    if not state:
        raise InvalidRequest(FIELD, f"{vae.name} holds no VAE tensors (expected encoder.*, decoder.*)")
    return state


def vae_weights_for(vae: VaeFile, module: torch.nn.Module, family: Family) -> dict[str, Tensor]:
    """The file's tensors renamed for `module` (the model's AutoencoderKL), checked to fit it exactly.

    A VAE of another size or architecture (e.g. built for another model family) is refused, naming
    `sd_vae`, before anything is loaded into the model.
    """
    state = read_vae_file(vae)
    try:
        config = vae_config(family, read_vae_dims(shapes_of(state)))
        converted = convert_vae_state_dict(state, config)
    except (ModelLoadError, KeyError, IndexError) as exc:
        raise InvalidRequest(FIELD, f"{vae.name} is not a VAE in the ldm layout ({exc})") from exc
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    got = {key: tuple(value.shape) for key, value in converted.items()}
    if got != expected:
        wrong = [key for key in expected if got.get(key) != expected[key]] + [key for key in got if key not in expected]
        raise InvalidRequest(FIELD, f"{vae.name} does not fit this checkpoint's VAE ({family.name}): "
                                    f"{len(wrong)} tensors differ, e.g. {wrong[:3]}")
    return converted
