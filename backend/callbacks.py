"""Global callbacks with A1111's names and arguments (a1111.md 8.4), held in one explicit registry.

Extensions register with `on_<event>(fn)` while their scripts load; the application owns the
`CallbackRegistry` and fires events. A callback that raises is logged with the extension that
registered it and skipped: one broken extension never breaks a job or the server.

The module-level `on_*` functions exist because extension code (as in A1111) calls them at import
time; they register into the registry that `CallbackRegistry.loading()` made current, so there is
still one owner and no hidden global list.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

EVENTS = (
    "app_started", "model_loaded", "ui_tabs", "ui_settings", "infotext_pasted", "before_image_saved",
    "image_saved", "cfg_denoiser", "cfg_denoised", "cfg_after_cfg", "before_ui", "script_unloaded",
)


@dataclass
class CFGDenoiserParams:
    """on_cfg_denoiser: before the UNet calls of one denoiser evaluation; callbacks may replace
    x, image_cond, sigma, text_cond and text_uncond."""

    x: Any
    image_cond: Any
    sigma: Any
    sampling_step: int
    total_sampling_steps: int
    text_cond: Any
    text_uncond: Any
    denoiser: Any = None


@dataclass
class CFGDenoisedParams:
    """on_cfg_denoised: the model's outputs (cond rows then uncond rows) before guidance is combined."""

    x: Any
    sampling_step: int
    total_sampling_steps: int
    inner_model: Any = None


@dataclass
class AfterCFGCallbackParams:
    """on_cfg_after_cfg: the guided result; callbacks may replace x."""

    x: Any
    sampling_step: int
    total_sampling_steps: int


@dataclass
class ImageSaveParams:
    """on_before_image_saved / on_image_saved: callbacks may change image, filename and pnginfo."""

    image: Any
    p: Any
    filename: str
    pnginfo: dict[str, Any]


@dataclass
class Callback:
    fn: Callable[..., Any]
    name: str


@dataclass
class CallbackRegistry:
    """Every registered callback, by event, in registration order."""

    callbacks: dict[str, list[Callback]] = field(default_factory=lambda: {event: [] for event in EVENTS})
    current_source: str = "core"

    def add(self, event: str, fn: Callable[..., Any], name: str | None = None) -> None:
        if event not in self.callbacks:
            raise ValueError(f"unknown callback event {event!r}; known: {', '.join(EVENTS)}")
        self.callbacks[event].append(Callback(fn, name or f"{self.current_source}/{getattr(fn, '__name__', fn)}"))

    def fire(self, event: str, *args: Any) -> list[Any]:
        """Call every callback of `event`; returns their results (None for failed ones)."""
        results = []
        for cb in self.callbacks[event]:
            try:
                results.append(cb.fn(*args))
            except Exception:  # an extension's bug must not break the caller; the log names it
                log.exception("error in %s callback %s", event, cb.name)
                results.append(None)
        return results

    def has(self, event: str) -> bool:
        return bool(self.callbacks[event])

    def remove_source(self, source_prefix: str) -> None:
        """Drop the callbacks an extension registered (its name prefixes theirs)."""
        for event, items in self.callbacks.items():
            self.callbacks[event] = [cb for cb in items if not cb.name.startswith(source_prefix + "/")]

    @contextmanager
    def loading(self, source: str) -> Iterator[CallbackRegistry]:
        """Make this the registry the module-level on_* functions use while `source` loads."""
        token = _loading.set(self)
        previous, self.current_source = self.current_source, source
        try:
            yield self
        finally:
            self.current_source = previous
            _loading.reset(token)


_loading: ContextVar[CallbackRegistry | None] = ContextVar("callbacks_loading", default=None)


def _register(event: str, fn: Callable[..., Any], name: str | None) -> None:
    registry = _loading.get()
    if registry is None:
        raise RuntimeError(f"on_{event} can only be called while extensions load "
                           "(from a script module's top level or a Script method)")
    registry.add(event, fn, name)


def on_app_started(fn: Callable[[Any, Any], None], *, name: str | None = None) -> None:
    """fn(demo, app): the FastAPI app is built; add routes here (they sit behind --api-auth)."""
    _register("app_started", fn, name)


def on_model_loaded(fn: Callable[[Any], None], *, name: str | None = None) -> None:
    """fn(sd_model): a checkpoint was loaded (a LoadedModel)."""
    _register("model_loaded", fn, name)


def on_ui_tabs(fn: Callable[[], list[tuple[Any, str, str]]], *, name: str | None = None) -> None:
    """fn() -> [(gr.Blocks, title, elem_id)]: extra top-level tabs."""
    _register("ui_tabs", fn, name)


def on_ui_settings(fn: Callable[[Any], None], *, name: str | None = None) -> None:
    """fn(opts): add options with `opts.add_option(key, OptionInfo(...))` (A1111 passes no argument
    and uses its global opts; here the store is handed in)."""
    _register("ui_settings", fn, name)


def on_before_ui(fn: Callable[[], None], *, name: str | None = None) -> None:
    """fn(): the UI is about to be built."""
    _register("before_ui", fn, name)


def on_infotext_pasted(fn: Callable[[str, dict[str, Any]], None], *, name: str | None = None) -> None:
    """fn(infotext, params): params parsed from a pasted infotext; callbacks may edit params."""
    _register("infotext_pasted", fn, name)


def on_before_image_saved(fn: Callable[[ImageSaveParams], None], *, name: str | None = None) -> None:
    """fn(ImageSaveParams): before a generated image is written."""
    _register("before_image_saved", fn, name)


def on_image_saved(fn: Callable[[ImageSaveParams], None], *, name: str | None = None) -> None:
    """fn(ImageSaveParams): after a generated image was written (filename is the final path)."""
    _register("image_saved", fn, name)


def on_cfg_denoiser(fn: Callable[[CFGDenoiserParams], None], *, name: str | None = None) -> None:
    """fn(CFGDenoiserParams): before each denoiser evaluation."""
    _register("cfg_denoiser", fn, name)


def on_cfg_denoised(fn: Callable[[CFGDenoisedParams], None], *, name: str | None = None) -> None:
    """fn(CFGDenoisedParams): after the UNet calls, before guidance."""
    _register("cfg_denoised", fn, name)


def on_cfg_after_cfg(fn: Callable[[AfterCFGCallbackParams], None], *, name: str | None = None) -> None:
    """fn(AfterCFGCallbackParams): after guidance."""
    _register("cfg_after_cfg", fn, name)


def on_script_unloaded(fn: Callable[[], None], *, name: str | None = None) -> None:
    """fn(): the application is shutting down."""
    _register("script_unloaded", fn, name)
