"""The script and extension system (A1111's modules/scripts.py and extensions.py, a1111.md 8).

What an extension's `scripts/*.py` uses:

    from backend.scripts import Script, AlwaysVisible, process_images
    from backend import callbacks   # callbacks.on_cfg_denoiser(fn), on_app_started(fn), ...

`ScriptSystem` is what the application holds: the extensions found, the callbacks they
registered, and one `ScriptRunner` per tab.
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend import processing
from backend.callbacks import CallbackRegistry
from backend.scripts.base import AlwaysVisible, PostprocessBatchListArgs, PostprocessImageArgs, Script
from backend.scripts.extensions import Extension, ScriptClass, discover, load_scripts, run_preloads
from backend.scripts.runner import ControlCapture, ScriptArg, ScriptRunner, capture_controls

__all__ = [
    "AlwaysVisible", "Extension", "PostprocessBatchListArgs", "PostprocessImageArgs", "Script", "ScriptArg",
    "ScriptRunner", "ScriptSystem", "process_images", "preload_extensions",
]


def process_images(p: processing.StableDiffusionProcessing) -> processing.Processed:
    """Generate `p` (or a copy of it) inside the running job: what a selectable script's run() calls."""
    if p.context is None:
        raise RuntimeError("this processing object is not part of a job; submit it through the application")
    return processing.process_images(p, p.context)


@dataclass
class ScriptSystem:
    """Loaded extensions, their callbacks, and the txt2img/img2img script runners."""

    extensions: list[Extension]
    callbacks: CallbackRegistry
    txt2img: ScriptRunner
    img2img: ScriptRunner

    @classmethod
    def load(cls, user_dir: Path | None, *, disabled: list[str] | tuple[str, ...] = (), disable_all: str = "none",
             callbacks: CallbackRegistry | None = None, capture: ControlCapture = capture_controls,
             builtin_dir: Path | None = None, options: Any = None, app_context: Any = None) -> ScriptSystem:
        """Find extensions, import their scripts (errors logged per extension), build both runners.

        With `options`, the on_ui_settings callbacks run before any ui() is called, so a script may
        size its UI (and so its script_args slots) from its own options, as A1111 extensions read
        shared.opts in ui() (ControlNet's control_net_unit_count). `app_context` becomes every
        script's `app_context` before its ui() is called."""
        kwargs: dict[str, Any] = {} if builtin_dir is None else {"builtin_dir": builtin_dir}
        extensions = discover(user_dir, disabled=disabled, disable_all=disable_all, **kwargs)
        callbacks = callbacks or CallbackRegistry()
        classes = load_scripts(extensions, callbacks)
        # Each tab gets its own instances, as in A1111 (a script may keep per-tab state).
        instances = [_instances(classes, callbacks) for _ in (False, True)]
        for script in instances[0] + instances[1]:
            script.app_context = app_context
        if options is not None:
            callbacks.fire("ui_settings", options)
        runners = [ScriptRunner(scripts, is_img2img=tab, capture=capture)
                   for scripts, tab in zip(instances, (False, True), strict=True)]
        return cls(extensions, callbacks, *runners)

    @classmethod
    def empty(cls) -> ScriptSystem:
        """No extensions: what an application holds until its extensions are loaded."""
        no_capture: ControlCapture = lambda script, is_img2img: []  # noqa: E731
        return cls([], CallbackRegistry(), ScriptRunner([], is_img2img=False, capture=no_capture),
                   ScriptRunner([], is_img2img=True, capture=no_capture))

    def runner_for(self, p: processing.StableDiffusionProcessing) -> ScriptRunner:
        return self.img2img if isinstance(p, processing.StableDiffusionProcessingImg2Img) else self.txt2img

    def find_extension(self, name: str) -> Extension | None:
        return next((e for e in self.extensions if e.name == name.lower()), None)


def _instances(classes: list[ScriptClass], callbacks: CallbackRegistry) -> list[Script]:
    scripts = []
    for found in classes:
        try:
            scripts.append(found.create(callbacks))
        except Exception as e:  # a constructor that fails drops that script only
            logging.getLogger(__name__).exception("error creating script %s of extension %s",
                                                  found.cls.__name__, found.extension.name)
            found.extension.errors.append(f"{found.cls.__name__}: {type(e).__name__}: {e}")
    return scripts


def preload_extensions(user_dir_of: Any) -> Any:
    """A `preload(parser, args)` for Settings.from_args: runs the enabled extensions' preload.py.

    `user_dir_of(args)` gives the user extensions folder for the raw arguments (it depends on
    --data-dir, which is not parsed yet).
    """
    def preload(parser: argparse.ArgumentParser, args: list[str]) -> None:
        known, _ = parser.parse_known_args(args)
        disable_all = "all" if known.disable_all_extensions else ("extra" if known.disable_extra_extensions else "none")
        run_preloads(discover(user_dir_of(known), disable_all=disable_all), parser)

    return preload
