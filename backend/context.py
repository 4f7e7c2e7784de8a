"""The composition root: every long-lived service, built once from Settings."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from backend.config import Options, Settings
from backend.devices import DevicePolicy
from backend.errors import ModelLoadError, ModelNotFound
from backend.jobs.progress import JobState
from backend.jobs.queue import Job, JobQueue
from backend.models import builtin
from backend.models.families import detect_family, native_resolution, safetensors_shapes
from backend.models.hashes import HashCache
from backend.models.loader import LoadedModel
from backend.models.manager import ModelManager
from backend.models.registry import CheckpointInfo, CheckpointRegistry
from backend.models.vae_files import VaeRegistry
from backend.networks import NetworkManager, NetworkRegistry
from backend.postprocess.face_restore import FaceRestorerRegistry
from backend.postprocess.preview import approximate_rgb
from backend.postprocess.upscalers import UpscalerRegistry
from backend.prompts.embeddings import EmbeddingDatabase, encoder_widths
from backend.prompts.styles import StyleDatabase, style_files
from backend.processing import (
    Processed,
    ProcessingContext,
    StableDiffusionProcessing,
    decode_latents,
    process_images,
    tensor_to_image,
)
from backend.scripts import ScriptSystem

log = logging.getLogger(__name__)

JOB_HISTORY = 100


@dataclass
class LivePreview:
    """Turns the sampler's current latent into a preview image, by the `show_progress_type` option.

    "Full" decodes with the model's VAE; every other method (A1111's default "Approx NN",
    and TAESD, whose weights we do not ship) uses the cheap linear approximation.
    """

    options: Options
    models: ModelManager
    devices: DevicePolicy

    def __call__(self, latent: Any) -> Image.Image:
        # The job that produced the latent has its model loaded and selected, so this never loads one.
        _, model = self.models.get(None)
        if self.options["show_progress_type"] == "Full":
            return tensor_to_image(decode_latents(model, latent[:1], self.devices)[0])
        return approximate_rgb(latent, is_sdxl=model.is_sdxl)


@dataclass
class LivePreviewState(JobState):
    """A job's state that also refreshes `current_image` while sampling (A1111's live previews).

    processing calls set_step() every step and next_job() after each batch; the options
    `live_previews_enable` and `show_progress_every_n_steps` decide when a preview is made.
    """

    options: Options | None = field(default=None, repr=False)
    make_preview: Callable[[Any], Any] | None = field(default=None, repr=False)

    def set_step(self, step: int, steps: int, latent: Any = None) -> None:
        super().set_step(step, steps, latent)
        period = self._preview_period()
        if period is not None and self.make_preview is not None:
            self.maybe_update_preview(period, self.make_preview)

    def next_job(self) -> None:
        period = self._preview_period()
        if period is not None and self.make_preview is not None:
            self.preview_at_job_end(period, self.make_preview)
        super().next_job()

    def _preview_period(self) -> int | None:
        if self.options is None or not self.options["live_previews_enable"]:
            return None
        return int(self.options["show_progress_every_n_steps"])


@dataclass
class AppContext:
    """Settings, options, devices, the model registry/manager and the job queue."""

    settings: Settings
    options: Options
    devices: DevicePolicy
    registry: CheckpointRegistry
    models: ModelManager
    queue: JobQueue
    preview: LivePreview
    upscalers: UpscalerRegistry
    face_restorers: FaceRestorerRegistry
    networks: NetworkManager
    scripts: ScriptSystem
    # Set by the server (webui.make_server): stop and rebuild everything in this process.
    request_restart: Callable[[], None] | None = field(default=None, repr=False)
    styles: StyleDatabase = field(default_factory=StyleDatabase)
    embeddings: EmbeddingDatabase = field(default_factory=EmbeddingDatabase)

    @classmethod
    def build(cls, settings: Settings, devices: DevicePolicy | None = None) -> "AppContext":
        """Create folders, the built-in model if missing, and every service; load the extensions.
        Loads no model, starts no thread."""
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
        lora_dirs = [settings.models_dir / "Lora", settings.models_dir / "LyCORIS"]
        for flag in ("lora_dir", "lyco_dir_backcompat"):
            if settings.extra.get(flag):
                lora_dirs.append(Path(settings.extra[flag]).expanduser().resolve())
        networks = NetworkManager(NetworkRegistry(lora_dirs, cache, no_hashing=settings.no_hashing),
                                  memory_limit=int(options["lora_in_memory_limit"]))
        settings.embeddings_dir.mkdir(parents=True, exist_ok=True)
        embeddings = EmbeddingDatabase([settings.embeddings_dir], hashing=not settings.no_hashing)

        def model_loaded(model: LoadedModel) -> None:
            # /embeddings lists what the newest model can use, as A1111 reloads embeddings on model load.
            embeddings.use_model(encoder_widths([model.text_encoder, model.text_encoder_2]))
            ctx.scripts.callbacks.fire("model_loaded", model)

        vaes = VaeRegistry([settings.vae_dir], [*settings.ckpt_dirs, settings.checkpoint_dir], forced=settings.vae_path,
                           hash_cache=cache, hashing_enabled=not settings.no_hashing)
        vaes.refresh()
        models = ModelManager(registry, devices, settings.cache_dir, limit=int(options["sd_checkpoints_limit"]),
                              on_unload=networks.forget_model, on_load=model_loaded, vaes=vaes)
        preview = LivePreview(options, models, devices)
        queue = JobQueue(history=JOB_HISTORY, state_factory=partial(LivePreviewState, options=options, make_preview=preview))
        extra_dirs = {folder: Path(path) for folder, path in (("ESRGAN", settings.extra.get("esrgan_models_path")),
                                                               ("RealESRGAN", settings.extra.get("realesrgan_models_path")))
                      if path}
        upscalers = UpscalerRegistry(settings.models_dir, extra_dirs)
        face_restorers = FaceRestorerRegistry(settings.models_dir)
        styles = StyleDatabase(style_files(settings.extra.get("styles_file"), settings.data_dir))
        ctx = cls(settings, options, devices, registry, models, queue, preview, upscalers, face_restorers, networks,
                  ScriptSystem.empty(), styles=styles, embeddings=embeddings)
        # Last, so scripts' ui() can list what the application has (checkpoints, upscalers, styles).
        ctx.scripts = ScriptSystem.load(settings.extensions_dir, disabled=list(options["disabled_extensions"]),
                                        disable_all=settings.disable_extensions(options["disable_all_extensions"]),
                                        options=options, app_context=ctx)
        return ctx

    def start(self) -> None:
        """Start the job worker (webui.py, the CLI and tests call this once everything is built)."""
        self.queue.start()

    def stop(self, timeout: float | None = 10.0) -> None:
        """Cancel queued jobs, interrupt the running one and stop the worker."""
        self.queue.stop(timeout)
        self.scripts.callbacks.fire("script_unloaded")

    @property
    def state(self) -> JobState:
        """The running job's progress, else the last finished job's (what /progress reports)."""
        return self.queue.last_state

    def startup_checkpoint(self) -> str | None:
        """--ckpt, else the saved sd_model_checkpoint if it still exists, else the built-in model (the
        trained one, else the random test model)."""
        if self.settings.ckpt is not None:
            return self.registry.add_file(self.settings.ckpt).title
        saved = self.options["sd_model_checkpoint"]
        if saved and self.registry.find(saved) is not None:
            return saved
        for filename in (builtin.SHAPES_MODEL_FILENAME, builtin.DEFAULT_MODEL_FILENAME):
            default = self.registry.find(filename)
            if default is not None:
                return default.title
        return None

    def native_size(self, name: str | None) -> tuple[int, int]:
        """(width, height) the checkpoint `name` was trained at (see `families.native_resolution`), read from
        its file header without loading it; 512x512 when it is unknown or not a .safetensors file."""
        return _native_size_of(self.registry.find(name) if name else None)

    def _fill_native_size(self, p: StableDiffusionProcessing) -> None:
        """Unset width/height become the request's checkpoint's native size before any script sees them
        (process_images does the same from the loaded model when called directly)."""
        if p.width is not None and p.height is not None:
            return
        name = p.override_settings.get("sd_model_checkpoint") or self.options["sd_model_checkpoint"]
        try:
            info = self.models.select(name or None)
        except ModelNotFound:
            return  # process_images reports it
        width, height = _native_size_of(info)
        p.width = width if p.width is None else p.width
        p.height = height if p.height is None else p.height

    def processing_context(self, state: JobState | None = None) -> ProcessingContext:
        """What process_images needs, reporting to `state` (a fresh one if not given)."""
        return ProcessingContext(models=self.models, options=self.options, devices=self.devices,
                                 data_dir=self.settings.data_dir,
                                 state=self.queue.new_state() if state is None else state,
                                 upscalers=self.upscalers, face_restorers=self.face_restorers,
                                 networks=self.networks, styles=self.styles, embeddings=self.embeddings,
                                 callbacks=self.scripts.callbacks,
                                 models_dir=self.settings.models_dir)

    def switch_checkpoint(self, name: str) -> Job | None:
        """Make `name` (any A1111 alias) the selected checkpoint, for the UI's dropdown and the options API.

        The name is resolved now (ModelNotFound names it); the model loads in the job queue, after
        the running job, and only then becomes `sd_model_checkpoint` (saved). Returns that job, or
        None when the model is already selected and loaded.
        """
        info = self.registry.get(name)
        if info.title == self.options["sd_model_checkpoint"] and info in self.models.loaded():
            return None

        def load(state: JobState) -> str:
            loaded, _ = self.models.get(info.title)  # its title gains the hash once loaded
            self.options.set("sd_model_checkpoint", loaded.title)
            self.options.save()
            return loaded.title

        return self.queue.submit("load-model", load)

    def submit(self, p: StableDiffusionProcessing, *, request: Any = None) -> Job:
        """Queue a generation and return its job at once (the asynchronous API).

        A request that did not go through a script runner gets the always-on scripts with their
        defaults (A1111: they run on every generation); a selected script's run() does the job.
        """
        if p.scripts is None:
            self.scripts.runner_for(p).bind(p)

        def run(state: JobState) -> Processed:
            p.context = self.processing_context(state)
            self._fill_native_size(p)
            processed = p.scripts.run(p)
            return processed if processed is not None else process_images(p, p.context)

        return self.queue.submit(p.outpath_kind, run, request=request)

    def generate(self, p: StableDiffusionProcessing) -> Processed:
        """Run one request through the shared FIFO and wait for it (UI, API and CLI alike)."""
        if not self.queue.running:
            raise RuntimeError("the job queue is not running: call AppContext.start() first")
        job = self.submit(p)
        try:
            return job.wait()
        finally:
            job.release_result()  # the caller holds the images now; the history keeps only the record


def _native_size_of(info: CheckpointInfo | None) -> tuple[int, int]:
    """Native (width, height) of a checkpoint from its safetensors header; 512x512 when unknown."""
    if info is None or not info.is_safetensors:
        return 512, 512
    try:
        family = detect_family(safetensors_shapes(info.filename))
    except ModelLoadError:
        return 512, 512
    return native_resolution(family, info.metadata)
