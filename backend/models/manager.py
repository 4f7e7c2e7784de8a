"""The one owner of which checkpoints are loaded.

Keeps up to `limit` loaded models (A1111's sd_checkpoints_limit, default 1),
most recently used last; a request for a loaded checkpoint reuses it. Also swaps a separate VAE
file's weights into a loaded model and back (`use_vae`).
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from torch import Tensor

from backend.devices import DevicePolicy
from backend.errors import ModelNotFound
from backend.models.loader import LoadedModel, load_checkpoint
from backend.models.registry import CheckpointInfo, CheckpointRegistry
from backend.models.vae_files import VaeFile, VaeRegistry, vae_weights_for

log = logging.getLogger(__name__)


class ModelManager:
    """Loads, switches and unloads checkpoints; thread-safe."""

    def __init__(self, registry: CheckpointRegistry, devices: DevicePolicy, cache_dir: Path, limit: int = 1,
                 on_unload: Callable[[LoadedModel], None] | None = None,
                 on_load: Callable[[LoadedModel], None] | None = None, vaes: VaeRegistry | None = None) -> None:
        self.registry = registry
        self.vaes = vaes if vaes is not None else VaeRegistry()
        # Called before a model is dropped (the networks layer forgets its weight backups).
        self.on_unload = on_unload
        # Called after a model was loaded (extensions' on_model_loaded).
        self.on_load = on_load
        self.devices = devices
        self.cache_dir = cache_dir
        self.limit = max(1, limit)
        self._loaded: OrderedDict[Path, tuple[CheckpointInfo, LoadedModel]] = OrderedDict()
        self._current: CheckpointInfo | None = None
        # Per loaded checkpoint: the VAE file whose weights are in its VAE now (absent: its own), and
        # its own VAE weights on the CPU while a file's are in, so switching back restores them exactly
        # without reading the checkpoint again.
        self._vae_in_use: dict[Path, Path] = {}
        self._own_vae: dict[Path, dict[str, Tensor]] = {}
        self._lock = threading.RLock()

    @property
    def current(self) -> CheckpointInfo | None:
        """The checkpoint used when a request names none."""
        return self._current

    def select(self, name: str | None) -> CheckpointInfo:
        """Resolve a title/alias (or the current/first checkpoint when None) to its record."""
        if name:
            return self.registry.get(name)
        if self._current is not None:
            return self._current
        found = self.registry.list()
        if not found:
            raise ModelNotFound("checkpoint", "(any)", known=[])
        return found[0]

    def get(self, name: str | None = None) -> tuple[CheckpointInfo, LoadedModel]:
        """The loaded model for `name`, loading it (and evicting the oldest) if needed."""
        with self._lock:
            info = self.select(name)
            self.registry.ensure_hash(info)
            key = Path(info.filename)
            if key in self._loaded:
                self._loaded.move_to_end(key)
            else:
                while len(self._loaded) >= self.limit:
                    self._evict_oldest()
                log.info("loading checkpoint %s", info.title)
                model = load_checkpoint(key, device=self.devices.device, dtype=self.devices.dtype,
                                        vae_dtype=self.devices.vae_dtype, cache_dir=self.cache_dir)
                self._loaded[key] = (info, model)
                if self.on_load is not None:
                    self.on_load(model)
            self._current = info
            return self._loaded[key]

    def use_vae(self, info: CheckpointInfo, model: LoadedModel, choice: str) -> VaeFile | None:
        """Put the VAE that `sd_vae` = `choice` means for this checkpoint into `model`; returns the
        file used (its hash computed), or None for the checkpoint's own VAE.

        Weights change only when the choice differs from what the model holds. A file that does not
        fit raises InvalidRequest naming `sd_vae` and leaves the model as it was.
        """
        with self._lock:
            vae = self.vaes.resolve(choice, Path(info.filename))
            key = Path(info.filename)
            wanted = vae.filename if vae is not None else None
            if self._vae_in_use.get(key) != wanted:
                if vae is None:
                    log.info("restoring the VAE of %s", info.title)
                    model.vae.load_state_dict(self._own_vae.pop(key), strict=True)
                    del self._vae_in_use[key]
                else:
                    log.info("loading VAE %s into %s", vae.name, info.title)
                    weights = vae_weights_for(vae, model.vae, model.family)
                    if key not in self._own_vae:
                        self._own_vae[key] = {name: tensor.detach().to("cpu", copy=True)
                                              for name, tensor in model.vae.state_dict().items()}
                    model.vae.load_state_dict(weights, strict=True)
                    self._vae_in_use[key] = vae.filename
            if vae is not None:
                self.vaes.ensure_hash(vae)
            return vae

    def loaded(self) -> list[CheckpointInfo]:
        with self._lock:
            return [info for info, _ in self._loaded.values()]

    def unload_all(self) -> None:
        """Free every loaded model (A1111's unload-checkpoint); the selection is kept."""
        with self._lock:
            while self._loaded:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        key, (info, model) = self._loaded.popitem(last=False)
        self._vae_in_use.pop(key, None)
        self._own_vae.pop(key, None)
        log.info("unloading checkpoint %s", info.title)
        if self.on_unload is not None:
            self.on_unload(model)
        gc.collect()
        self.devices.free_memory()
