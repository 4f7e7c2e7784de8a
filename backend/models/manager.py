"""The one owner of which checkpoints are loaded.

Keeps up to `limit` loaded models (A1111's sd_checkpoints_limit, default 1),
most recently used last; a request for a loaded checkpoint reuses it.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from backend.devices import DevicePolicy
from backend.errors import ModelNotFound
from backend.models.loader import LoadedModel, load_checkpoint
from backend.models.registry import CheckpointInfo, CheckpointRegistry

log = logging.getLogger(__name__)


class ModelManager:
    """Loads, switches and unloads checkpoints; thread-safe."""

    def __init__(self, registry: CheckpointRegistry, devices: DevicePolicy, cache_dir: Path, limit: int = 1,
                 on_unload: Callable[[LoadedModel], None] | None = None,
                 on_load: Callable[[LoadedModel], None] | None = None) -> None:
        self.registry = registry
        # Called before a model is dropped (the networks layer forgets its weight backups).
        self.on_unload = on_unload
        # Called after a model was loaded (extensions' on_model_loaded).
        self.on_load = on_load
        self.devices = devices
        self.cache_dir = cache_dir
        self.limit = max(1, limit)
        self._loaded: OrderedDict[Path, tuple[CheckpointInfo, LoadedModel]] = OrderedDict()
        self._current: CheckpointInfo | None = None
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

    def loaded(self) -> list[CheckpointInfo]:
        with self._lock:
            return [info for info, _ in self._loaded.values()]

    def unload_all(self) -> None:
        """Free every loaded model (A1111's unload-checkpoint); the selection is kept."""
        with self._lock:
            while self._loaded:
                self._evict_oldest()

    def _evict_oldest(self) -> None:
        _, (info, model) = self._loaded.popitem(last=False)
        log.info("unloading checkpoint %s", info.title)
        if self.on_unload is not None:
            self.on_unload(model)
        gc.collect()
        self.devices.free_memory()
