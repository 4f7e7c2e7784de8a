"""The composition root: every long-lived service, built once from Settings."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from backend.config import Options, Settings
from backend.devices import DevicePolicy
from backend.jobs.progress import JobState
from backend.models import builtin
from backend.models.hashes import HashCache
from backend.models.manager import ModelManager
from backend.models.registry import CheckpointRegistry
from backend.processing import Processed, ProcessingContext, StableDiffusionProcessing, process_images

log = logging.getLogger(__name__)


@dataclass
class AppContext:
    """Settings, options, devices, the model registry/manager and the current job state."""

    settings: Settings
    options: Options
    devices: DevicePolicy
    registry: CheckpointRegistry
    models: ModelManager
    state: JobState = field(default_factory=JobState)
    # One generation at a time on the device (the job queue builds on this).
    run_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def build(cls, settings: Settings, devices: DevicePolicy | None = None) -> "AppContext":
        """Create folders, the built-in model if missing, and every service. Loads no model."""
        settings.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        builtin.ensure_default_model(settings.models_dir)
        options = Options(settings.config_file)
        devices = devices or DevicePolicy.from_settings(settings)
        # With --no-hashing nothing new is hashed, but hashes already cached still show (A1111).
        cache = HashCache(settings.cache_dir / "hashes.json")
        registry = CheckpointRegistry(
            model_dirs=[*settings.ckpt_dirs, settings.checkpoint_dir],
            extra_files=[settings.ckpt] if settings.ckpt else [],
            hash_cache=cache, hashing_enabled=not settings.no_hashing,
        )
        registry.refresh()
        models = ModelManager(registry, devices, settings.cache_dir, limit=int(options["sd_checkpoints_limit"]))
        return cls(settings, options, devices, registry, models)

    def startup_checkpoint(self) -> str | None:
        """--ckpt, else the saved sd_model_checkpoint if it still exists, else the built-in model."""
        if self.settings.ckpt is not None:
            return self.registry.add_file(self.settings.ckpt).title
        saved = self.options["sd_model_checkpoint"]
        if saved and self.registry.find(saved) is not None:
            return saved
        default = self.registry.find(builtin.DEFAULT_MODEL_FILENAME)
        return default.title if default is not None else None

    def processing_context(self) -> ProcessingContext:
        return ProcessingContext(models=self.models, options=self.options, devices=self.devices,
                                 data_dir=self.settings.data_dir, state=self.state)

    def generate(self, p: StableDiffusionProcessing) -> Processed:
        """Run one request on the device, one at a time."""
        with self.run_lock:
            return process_images(p, self.processing_context())
