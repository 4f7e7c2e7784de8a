"""Command-line settings and the options store.

`Settings` is what the flags say, fixed for the life of the process. `Options` is
A1111's settings store (`config.json` in the data dir): same keys, same defaults.
Both are plain objects handed to whoever needs them; nothing here is global.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import InvalidRequest

PROJECT_ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------
# Flags
# ---------------------------------------------------------------------------

# A1111 flags we accept so that existing launch scripts keep working, but that
# have no effect here (attention backends are chosen automatically, memory
# modes do not apply to the diffusers backend yet). Listed in README.
NO_EFFECT_FLAGS: tuple[str, ...] = (
    "--xformers", "--force-enable-xformers", "--xformers-flash-attention", "--opt-sdp-attention",
    "--opt-sdp-no-mem-attention", "--opt-split-attention", "--opt-split-attention-v1",
    "--opt-split-attention-invokeai", "--opt-sub-quad-attention", "--disable-opt-split-attention",
    "--medvram", "--medvram-sdxl", "--lowvram", "--lowram", "--opt-channelslast", "--upcast-sampling",
    "--disable-nan-check", "--skip-torch-cuda-test", "--skip-python-version-check",
    "--skip-prepare-environment", "--skip-install", "--skip-version-check", "--no-download-sd-model",
    "--do-not-download-clip", "--disable-model-loading-ram-optimization", "--autolaunch",
    "--no-gradio-queue", "--gradio-queue", "--always-batch-cond-uncond", "--unload-gfpgan",
    "--enable-console-prompts", "--add-stop-route", "--update-check", "--update-all-extensions",
    "--reinstall-torch", "--reinstall-xformers", "--log-startup", "--disable-console-progressbars",
    "--no-prompt-history", "--enable-insecure-extension-access", "--hide-ui-dir-config",
    "--gradio-debug", "--use-textbox-seed", "--disable-tls-verify", "--administrator",
)


def build_arg_parser() -> argparse.ArgumentParser:
    """The A1111-compatible flags (a1111.md section 3) that this project understands."""
    p = argparse.ArgumentParser(prog="webui", description="Stable Diffusion web UI (A1111-compatible)")
    net = p.add_argument_group("server")
    net.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (reachable on the LAN)")
    net.add_argument("--port", type=int, default=None, help="port (7860, or 7861 with --nowebui)")
    net.add_argument("--server-name", default=None, help="bind address (overrides --listen)")
    net.add_argument("--subpath", default=None, help="root path when served behind a reverse proxy")
    net.add_argument("--cors-allow-origins", default=None)
    net.add_argument("--cors-allow-origins-regex", default=None)
    net.add_argument("--timeout-keep-alive", type=int, default=30)
    net.add_argument("--tls-keyfile", default=None)
    net.add_argument("--tls-certfile", default=None)
    net.add_argument("--theme", choices=("light", "dark"), default=None)
    api = p.add_argument_group("api")
    api.add_argument("--api", action="store_true", help="mount /sdapi/v1 on the UI app")
    api.add_argument("--nowebui", action="store_true", help="serve the API only")
    api.add_argument("--api-auth", default=None, help="user:pass[,user2:pass2] for HTTP Basic on the API")
    api.add_argument("--api-log", action="store_true")
    api.add_argument("--api-server-stop", action="store_true")
    api.add_argument("--skip-load-model-at-start", action="store_true")
    ui = p.add_argument_group("ui")
    ui.add_argument("--gradio-auth", default=None)
    ui.add_argument("--gradio-auth-path", default=None)
    ui.add_argument("--ui-settings-file", default=None, help="settings file (config.json in the data dir)")
    ui.add_argument("--ui-config-file", default=None)
    ui.add_argument("--styles-file", action="append", default=None)
    ui.add_argument("--freeze-settings", action="store_true")
    ui.add_argument("--ui-debug-mode", action="store_true", help="start without loading a model")
    ui.add_argument("--loglevel", default=None)
    paths = p.add_argument_group("paths")
    paths.add_argument("--data-dir", default=None, help="root for user data (default: the repository)")
    paths.add_argument("--models-dir", default=None, help="model folders root (default: <data-dir>/models)")
    paths.add_argument("--ckpt", default=None, help="checkpoint to load at start (added to the list)")
    paths.add_argument("--ckpt-dir", default=None, help="extra checkpoint folder")
    paths.add_argument("--vae-dir", default=None, help="separate VAE files folder (default: <models-dir>/VAE)")
    paths.add_argument("--vae-path", default=None, help="VAE file used for every job (the SD VAE setting is ignored)")
    paths.add_argument("--lora-dir", default=None)
    paths.add_argument("--lyco-dir-backcompat", default=None)
    paths.add_argument("--embeddings-dir", default=None)
    paths.add_argument("--esrgan-models-path", default=None)
    paths.add_argument("--realesrgan-models-path", default=None)
    paths.add_argument("--config", default=None, help="accepted for compatibility; families are detected")
    dev = p.add_argument_group("devices")
    dev.add_argument("--use-cpu", nargs="+", default=[], help="all|sd|... : run these on the CPU")
    dev.add_argument("--device-id", default=None, help="CUDA device index")
    dev.add_argument("--no-half", action="store_true", help="fp32 model weights")
    dev.add_argument("--no-half-vae", action="store_true", help="fp32 VAE")
    dev.add_argument("--precision", choices=("full", "half", "autocast"), default="autocast")
    dev.add_argument("--no-hashing", action="store_true", help="do not compute checkpoint sha256")
    dev.add_argument("--disable-safe-unpickle", action="store_true",
                     help="refused: .ckpt files always load with weights_only=True")
    ext = p.add_argument_group("extensions")
    ext.add_argument("--disable-all-extensions", action="store_true")
    ext.add_argument("--disable-extra-extensions", action="store_true")
    legacy = p.add_argument_group("accepted for compatibility, no effect")
    for flag in NO_EFFECT_FLAGS:
        legacy.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    for flag in ("--sub-quad-q-chunk-size", "--sub-quad-kv-chunk-size", "--sub-quad-chunk-threshold",
                 "--max-batch-count", "--deepdanbooru", "--show-negative-prompt", "--gradio-img2img-tool",
                 "--gradio-inpaint-tool", "--ngrok", "--ngrok-region", "--ngrok-options",
                 "--localizations-dir", "--gradio-allowed-path", "--filenames-max-length"):
        legacy.add_argument(flag, default=None, help=argparse.SUPPRESS)
    legacy.add_argument("--share", action="store_true", help="not supported: we never open tunnels")
    return p


@dataclass(frozen=True)
class Settings:
    """Everything the command line decides, resolved to absolute paths."""

    data_dir: Path
    models_dir: Path
    ckpt: Path | None = None
    ckpt_dirs: tuple[Path, ...] = ()
    listen: bool = False
    port: int | None = None
    server_name: str | None = None
    subpath: str | None = None
    api: bool = False
    nowebui: bool = False
    api_auth: str | None = None
    api_log: bool = False
    api_server_stop: bool = False
    cors_allow_origins: str | None = None
    cors_allow_origins_regex: str | None = None
    timeout_keep_alive: int = 30
    gradio_auth: str | None = None
    gradio_auth_path: str | None = None
    use_cpu: tuple[str, ...] = ()
    device_id: str | None = None
    no_half: bool = False
    no_half_vae: bool = False
    precision: str = "autocast"
    no_hashing: bool = False
    skip_load_model_at_start: bool = False
    ui_debug_mode: bool = False
    settings_file: Path | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def config_file(self) -> Path:
        return self.settings_file or self.data_dir / "config.json"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def outputs_dir(self) -> Path:
        return self.data_dir / "outputs"

    @property
    def extensions_dir(self) -> Path:
        """User extensions (A1111: <data dir>/extensions); built-in ones ship in extensions/builtin."""
        return self.data_dir / "extensions"

    def disable_extensions(self, option: str) -> str:
        """"none", "extra" or "all": the --disable-*-extensions flags win over the saved option."""
        if self.extra.get("disable_all_extensions"):
            return "all"
        if self.extra.get("disable_extra_extensions"):
            return "extra"
        return option

    @property
    def checkpoint_dir(self) -> Path:
        return self.models_dir / "Stable-diffusion"

    @property
    def vae_dir(self) -> Path:
        """Separate VAE files: --vae-dir, else <models dir>/VAE (A1111)."""
        folder = self.extra.get("vae_dir")
        return Path(folder).expanduser().resolve() if folder else self.models_dir / "VAE"

    @property
    def vae_path(self) -> Path | None:
        """--vae-path: the one VAE every job uses, whatever the sd_vae setting says (A1111)."""
        path = self.extra.get("vae_path")
        return Path(path).expanduser().resolve() if path else None

    @property
    def embeddings_dir(self) -> Path:
        """Textual-inversion embeddings: --embeddings-dir, else <data dir>/embeddings (A1111)."""
        folder = self.extra.get("embeddings_dir")
        return Path(folder).expanduser().resolve() if folder else self.data_dir / "embeddings"

    @property
    def bind_host(self) -> str:
        if self.server_name:
            return self.server_name
        return "0.0.0.0" if self.listen else "127.0.0.1"

    @property
    def bind_port(self) -> int:
        if self.port is not None:
            return self.port
        return 7861 if self.nowebui else 7860

    @classmethod
    def from_args(cls, argv: list[str] | None = None, env: Mapping[str, str] | None = None, *,
                  preload: Callable[[argparse.ArgumentParser, list[str]], None] | None = None) -> "Settings":
        """Parse flags; `COMMANDLINE_ARGS` (shlex-split) is appended, as A1111 does.

        `preload(parser, args)` may add flags first (extensions' preload.py files).
        """
        env = os.environ if env is None else env
        args_list = list(argv or []) + shlex.split(env.get("COMMANDLINE_ARGS", ""))
        parser = build_arg_parser()
        if preload is not None:
            preload(parser, args_list)
        ns = parser.parse_args(args_list)
        if ns.disable_safe_unpickle:
            raise InvalidRequest("--disable-safe-unpickle", "not supported: .ckpt files always load with weights_only=True")
        if ns.share:
            raise InvalidRequest("--share", "not supported: this app never opens public tunnels (use --listen)")
        data_dir = Path(ns.data_dir).expanduser().resolve() if ns.data_dir else PROJECT_ROOT
        models_dir = Path(ns.models_dir).expanduser().resolve() if ns.models_dir else data_dir / "models"
        known = {f.name for f in cls.__dataclass_fields__.values()}  # type: ignore[attr-defined]
        extra = {k: v for k, v in vars(ns).items() if k not in known and v not in (None, False, [])}
        return cls(
            data_dir=data_dir,
            models_dir=models_dir,
            ckpt=Path(ns.ckpt).expanduser().resolve() if ns.ckpt else None,
            ckpt_dirs=(Path(ns.ckpt_dir).expanduser().resolve(),) if ns.ckpt_dir else (),
            listen=ns.listen, port=ns.port, server_name=ns.server_name, subpath=ns.subpath,
            api=ns.api, nowebui=ns.nowebui, api_auth=ns.api_auth, api_log=ns.api_log,
            api_server_stop=ns.api_server_stop, cors_allow_origins=ns.cors_allow_origins,
            cors_allow_origins_regex=ns.cors_allow_origins_regex, timeout_keep_alive=ns.timeout_keep_alive,
            gradio_auth=ns.gradio_auth, gradio_auth_path=ns.gradio_auth_path,
            use_cpu=tuple(ns.use_cpu), device_id=ns.device_id, no_half=ns.no_half, no_half_vae=ns.no_half_vae,
            precision=ns.precision, no_hashing=ns.no_hashing,
            skip_load_model_at_start=ns.skip_load_model_at_start, ui_debug_mode=ns.ui_debug_mode,
            settings_file=Path(ns.ui_settings_file).expanduser().resolve() if ns.ui_settings_file else None,
            extra=extra,
        )


# ---------------------------------------------------------------------------
# Options (A1111 settings)
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class OptionInfo:
    """One A1111 setting: its default, a label, and the infotext key that pastes into it."""

    default: Any
    label: str
    section: str
    infotext: str | None = None


def _o(default: Any, label: str, section: str, infotext: str | None = None) -> OptionInfo:
    return OptionInfo(default, label, section, infotext)


# A1111 option keys and defaults (modules/shared_options.py) that the backend reads.
OPTION_DEFAULTS: Mapping[str, OptionInfo] = {
    # saving
    "samples_save": _o(True, "Always save all generated images", "saving-images"),
    "samples_format": _o("png", "File format for images", "saving-images"),
    "samples_filename_pattern": _o("", "Images filename pattern", "saving-images"),
    "save_images_add_number": _o(True, "Add number to filename when saving", "saving-images"),
    "save_images_replace_action": _o("Replace", "Saving the image to an existing file", "saving-images"),
    "grid_save": _o(True, "Always save all generated image grids", "saving-images"),
    "grid_format": _o("png", "File format for grids", "saving-images"),
    "grid_extended_filename": _o(False, "Add extended info to grid filenames", "saving-images"),
    "grid_only_if_multiple": _o(True, "Do not save grids consisting of one picture", "saving-images"),
    "grid_prevent_empty_spots": _o(False, "Prevent empty spots in grid", "saving-images"),
    "n_rows": _o(-1, "Grid row count; -1 for autodetect and 0 for it to be same as batch size", "saving-images"),
    "enable_pnginfo": _o(True, "Save text information about generation parameters as chunks to png files", "saving-images"),
    "save_txt": _o(False, "Create a text file with infotext next to every image", "saving-images"),
    "jpeg_quality": _o(80, "Quality for saved jpeg and avif images", "saving-images"),
    "webp_lossless": _o(False, "Use lossless compression for webp images", "saving-images"),
    "return_grid": _o(True, "Show grid in gallery", "saving-images"),
    "img_max_size_mp": _o(200, "Maximum grid size (in megapixels)", "saving-images"),
    "font": _o("", "Font for image grids that have text", "saving-images"),
    "grid_text_active_color": _o("#000000", "Text color for image grids", "saving-images"),
    "grid_text_inactive_color": _o("#999999", "Inactive text color for image grids", "saving-images"),
    "grid_background_color": _o("#ffffff", "Background color for image grids", "saving-images"),
    "outdir_samples": _o("", "Output directory for images; if empty, defaults to three directories below", "saving-paths"),
    "outdir_txt2img_samples": _o("outputs/txt2img-images", "Output directory for txt2img images", "saving-paths"),
    "outdir_img2img_samples": _o("outputs/img2img-images", "Output directory for img2img images", "saving-paths"),
    "outdir_extras_samples": _o("outputs/extras-images", "Output directory for images from extras tab", "saving-paths"),
    "outdir_grids": _o("", "Output directory for grids; if empty, defaults to two directories below", "saving-paths"),
    "outdir_txt2img_grids": _o("outputs/txt2img-grids", "Output directory for txt2img grids", "saving-paths"),
    "outdir_img2img_grids": _o("outputs/img2img-grids", "Output directory for img2img grids", "saving-paths"),
    "save_to_dirs": _o(True, "Save images to a subdirectory", "saving-to-dirs"),
    "grid_save_to_dirs": _o(True, "Save grids to a subdirectory", "saving-to-dirs"),
    "directories_filename_pattern": _o("[date]", "Directory name pattern", "saving-to-dirs"),
    "directories_max_prompt_words": _o(8, "Max prompt words for [prompt_words] pattern", "saving-to-dirs"),
    # models
    "sd_model_checkpoint": _o(None, "Stable Diffusion checkpoint", "sd", "Model hash"),
    "sd_checkpoints_limit": _o(1, "Maximum number of checkpoints loaded at the same time", "sd"),
    "sd_vae": _o("Automatic", "SD VAE", "sd_vae", "VAE"),
    "CLIP_stop_at_last_layers": _o(1, "Clip skip", "sd", "Clip skip"),
    "sdxl_clip_l_skip": _o(False, "Clip skip SDXL", "sd"),
    "emphasis": _o("Original", "Emphasis mode", "sd", "Emphasis"),
    "comma_padding_backtrack": _o(20, "Prompt word wrap length limit", "sd"),
    "enable_prompt_comments": _o(True, "Enable comments", "sd"),
    "disable_weights_auto_swap": _o(True, "Ignore the model hash when pasting infotext", "infotext"),
    # sampling
    "randn_source": _o("GPU", "Random number generator source", "sampler-params", "RNG"),
    "eta_noise_seed_delta": _o(0, "Eta noise seed delta", "sampler-params", "ENSD"),
    "eta_ancestral": _o(1.0, "Eta for k-diffusion samplers", "sampler-params", "Eta"),
    "eta_ddim": _o(0.0, "Eta for DDIM", "sampler-params", "Eta DDIM"),
    "ddim_discretize": _o("uniform", "img2img DDIM discretize", "sampler-params"),
    "s_churn": _o(0.0, "sigma churn", "sampler-params", "Sigma churn"),
    "s_tmin": _o(0.0, "sigma tmin", "sampler-params", "Sigma tmin"),
    "s_tmax": _o(0.0, "sigma tmax", "sampler-params", "Sigma tmax"),
    "s_noise": _o(1.0, "sigma noise", "sampler-params", "Sigma noise"),
    "sigma_min": _o(0.0, "sigma min", "sampler-params", "Schedule min sigma"),
    "sigma_max": _o(0.0, "sigma max", "sampler-params", "Schedule max sigma"),
    "rho": _o(0.0, "rho", "sampler-params", "Schedule rho"),
    "always_discard_next_to_last_sigma": _o(False, "Always discard next-to-last sigma", "sampler-params", "Discard penultimate sigma"),
    "use_old_karras_scheduler_sigmas": _o(False, "Use old karras scheduler sigmas (0.1 to 10)", "sampler-params"),
    "sgm_noise_multiplier": _o(False, "SGM noise multiplier", "sampler-params", "SGM noise multiplier"),
    "uni_pc_variant": _o("bh1", "UniPC variant", "sampler-params", "UniPC variant"),
    "uni_pc_skip_type": _o("time_uniform", "UniPC skip type", "sampler-params", "UniPC skip type"),
    "uni_pc_order": _o(3, "UniPC order", "sampler-params", "UniPC order"),
    "uni_pc_lower_order_final": _o(True, "UniPC lower order final", "sampler-params", "UniPC lower order final"),
    "beta_dist_alpha": _o(0.6, "Beta scheduler - alpha", "sampler-params", "Beta schedule alpha"),
    "beta_dist_beta": _o(0.6, "Beta scheduler - beta", "sampler-params", "Beta schedule beta"),
    "no_dpmpp_sde_batch_determinism": _o(False, "Do not make DPM++ SDE deterministic across different batch sizes", "compatibility"),
    "use_old_scheduling": _o(False, "Use old prompt editing timelines", "compatibility", "Old prompt editing timelines"),
    "batch_cond_uncond": _o(True, "Batch cond/uncond", "optimizations"),
    "pad_cond_uncond": _o(False, "Pad prompt/negative prompt", "optimizations", "Pad conds"),
    "s_min_uncond": _o(0.0, "Negative Guidance minimum sigma", "optimizations", "NGMS"),
    "skip_early_cond": _o(0.0, "Ignore negative prompt during early sampling", "optimizations", "Skip Early CFG"),
    "persistent_cond_cache": _o(True, "Persistent cond cache", "optimizations"),
    "img2img_fix_steps": _o(False, "With img2img, do exactly the amount of steps the slider specifies", "img2img"),
    "initial_noise_multiplier": _o(1.0, "Noise multiplier for img2img", "img2img", "Noise multiplier"),
    "img2img_color_correction": _o(False, "Apply color correction to img2img results to match original colors", "img2img"),
    "img2img_background_color": _o("#ffffff", "With img2img, fill transparent parts of the input image with this color", "img2img"),
    "inpainting_mask_weight": _o(1.0, "Inpainting conditioning mask strength", "img2img", "Conditional mask weight"),
    "img2img_batch_show_results_limit": _o(32, "Show the first N batch img2img results in UI", "img2img"),
    "img2img_batch_use_original_name": _o(False, "Save using original filename for img2img batch", "img2img"),
    "upscaler_for_img2img": _o(None, "Upscaler for img2img", "upscaling"),
    "sdxl_crop_top": _o(0, "crop top coordinate", "sdxl"),
    "sdxl_crop_left": _o(0, "crop left coordinate", "sdxl"),
    # infotext
    "add_model_hash_to_info": _o(True, "Add model hash to infotext", "infotext"),
    "add_model_name_to_info": _o(True, "Add model name to infotext", "infotext"),
    "add_vae_hash_to_info": _o(True, "Add VAE hash to infotext", "infotext"),
    "add_vae_name_to_info": _o(True, "Add VAE name to infotext", "infotext"),
    "add_user_name_to_info": _o(False, "Add user name to infotext when authenticated", "infotext"),
    "add_version_to_infotext": _o(True, "Add program version to infotext", "infotext"),
    "infotext_skip_pasting": _o([], "Disregard fields from pasted infotext", "infotext"),
    "infotext_styles": _o("Apply if any", "Infer styles from prompts of pasted infotext", "infotext"),
    # face restoration / tiling (infotext keys; the features come with later issues)
    "face_restoration": _o(False, "Restore faces", "face-restoration", "Face restoration"),
    "face_restoration_model": _o("CodeFormer", "Face restoration model", "face-restoration"),
    "code_former_weight": _o(0.5, "CodeFormer weight", "face-restoration"),
    "tiling": _o(False, "Tiling", "sd", "Tiling"),
    "face_restoration_unload": _o(False, "Move face restoration model from VRAM into RAM after processing", "face-restoration"),
    # upscaling and the Extras tab
    "ESRGAN_tile": _o(192, "Tile size for ESRGAN upscalers (0 = no tiling)", "upscaling"),
    "ESRGAN_tile_overlap": _o(8, "Tile overlap for ESRGAN upscalers", "upscaling"),
    "DAT_tile": _o(192, "Tile size for DAT upscalers (0 = no tiling)", "upscaling"),
    "DAT_tile_overlap": _o(8, "Tile overlap for DAT upscalers", "upscaling"),
    "SWIN_tile": _o(192, "Tile size for all SwinIR (0 = no tiling)", "upscaling"),
    "SWIN_tile_overlap": _o(8, "Tile overlap for SwinIR", "upscaling"),
    "SCUNET_tile": _o(256, "Tile size for SCUNET upscalers (0 = no tiling)", "upscaling"),
    "SCUNET_tile_overlap": _o(8, "Tile overlap for SCUNET upscalers", "upscaling"),
    "use_original_name_batch": _o(True, "Use original name for output filename during batch process in extras tab", "saving-images"),
    "use_upscaler_name_as_suffix": _o(False, "Use upscaler name as filename suffix in the extras tab", "saving-images"),
    # live previews
    "show_progress_every_n_steps": _o(10, "Live preview display period", "ui"),
    "live_previews_enable": _o(True, "Show live previews of the created image", "ui"),
    "show_progress_type": _o("Approx NN", "Live preview method", "ui"),
    # Lora (extensions-builtin/Lora/scripts/lora_script.py)
    "sd_lora": _o("None", "Add network to prompt", "extra_networks"),
    "lora_preferred_name": _o("Alias from file", "When adding to prompt, refer to Lora by", "extra_networks"),
    "lora_add_hashes_to_infotext": _o(True, "Add Lora hashes to infotext", "extra_networks"),
    "lora_show_all": _o(False, "Always show all networks on the Lora page", "extra_networks"),
    "lora_hide_unknown_for_versions": _o([], "Hide networks of unknown versions for model versions", "extra_networks"),
    "lora_in_memory_limit": _o(0, "Number of Lora networks to keep cached in memory", "extra_networks"),
    "lora_not_found_warning_console": _o(False, "Lora not found warning in console", "extra_networks"),
    "lora_not_found_gradio_warning": _o(False, "Lora not found warning popup in webui", "extra_networks"),
    "extra_networks_default_multiplier": _o(1.0, "Default multiplier for extra networks", "extra_networks"),
    "textual_inversion_add_hashes_to_infotext": _o(True, "Add Textual Inversion hashes to infotext", "extra_networks"),
    # extensions (modules/shared_options.py); changes apply after a restart
    "disabled_extensions": _o([], "Disable these extensions", "extensions"),
    "disable_all_extensions": _o("none", "Disable all extensions (preserves the list of disabled extensions)",
                                 "extensions"),
}


class Options(Mapping[str, Any]):
    """A1111's settings store: defaults from OPTION_DEFAULTS, overrides persisted as JSON.

    Unknown keys found in config.json (written by extensions or a newer version) are
    kept and saved back untouched, as A1111 does.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._path = path
        self._infos: dict[str, OptionInfo] = dict(OPTION_DEFAULTS)
        self._values: dict[str, Any] = {}
        self._lock = threading.Lock()
        if path is not None and path.exists():
            with open(path, encoding="utf-8") as f:
                loaded = json.load(f)
            if isinstance(loaded, dict):
                self._values.update(loaded)

    def __getitem__(self, key: str) -> Any:
        if key in self._values:
            return self._values[key]
        if key in self._infos:
            return self._infos[key].default
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        yield from self._infos
        yield from (k for k in self._values if k not in self._infos)

    def __len__(self) -> int:
        return len(set(self._infos) | set(self._values))

    def add_option(self, key: str, info: OptionInfo) -> None:
        """Register a setting at run time (extensions, from on_ui_settings); a saved value is kept."""
        self._infos[key] = info

    def info(self, key: str) -> OptionInfo | None:
        """The setting's description, built-in or added by an extension."""
        return self._infos.get(key)

    def infos(self) -> Mapping[str, OptionInfo]:
        return dict(self._infos)

    def set(self, key: str, value: Any) -> None:
        """Change one setting (validated against the default's type) without saving."""
        value = coerce_option(key, value, self._infos.get(key))
        with self._lock:
            self._values[key] = value

    def save(self) -> None:
        """Write config.json atomically."""
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            data = dict(self._values)
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=".config-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=4, ensure_ascii=False)
        os.replace(tmp, self._path)

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Mapping[str, Any]:
        """A read-only view of these options with per-request overrides on top.

        A request's override_settings never touch the shared store (A1111 writes them
        into the global opts, which lets one request change another's output).
        """
        if not overrides:
            return dict(self.items())
        merged = dict(self.items())
        for key, value in overrides.items():
            merged[key] = coerce_option(key, value, self._infos.get(key))
        return merged


def coerce_option(key: str, value: Any, info: OptionInfo | None = None) -> Any:
    """Check a value against the type of the option's default; InvalidRequest names the key."""
    info = info or OPTION_DEFAULTS.get(key)
    if info is None or info.default is None or value is None:
        return value
    default = info.default
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if isinstance(default, float):
            return float(value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(value)
            return value
        if isinstance(default, list):
            if not isinstance(value, list):
                raise ValueError(value)
            return value
    except (TypeError, ValueError):
        raise InvalidRequest(key, f"expected {type(default).__name__}, got {value!r}") from None
    return value
