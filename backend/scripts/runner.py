"""ScriptRunner: one tab's scripts, their slice of `script_args`, and the hooks process_images calls.

Layout as A1111 (a1111.md 8.3): index 0 of script_args is the selected script (1-based into the
selectable scripts, 0 = none); always-on scripts own the next slices, then each selectable script.
Defaults are the values of the components each script's `ui()` creates, so an API request that
names a script without all its arguments gets what the UI would show.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backend.errors import InvalidRequest, WebUIError
from backend.scripts.base import AlwaysVisible, PostprocessBatchListArgs, PostprocessImageArgs, Script

log = logging.getLogger(__name__)

# Component attributes the API's /script-info reports (A1111's ScriptArg fields).
_ARG_FIELDS = ("label", "value", "minimum", "maximum", "step", "choices")


@dataclass
class ScriptArg:
    """One control of a script, as /sdapi/v1/script-info describes it."""

    label: str | None
    value: Any
    minimum: Any = None
    maximum: Any = None
    step: Any = None
    choices: list[Any] | None = None


ControlCapture = Callable[[Script, bool], list[Any]]


def capture_controls(script: Script, is_img2img: bool) -> list[Any]:
    """Call `script.ui()` in a throw-away Gradio Blocks to learn its controls and their defaults.

    Gradio is imported only here: A1111 extensions describe their arguments by the components
    they create, so even an API-only server has to build them once (A1111 does the same).
    """
    import gradio as gr

    with gr.Blocks(analytics_enabled=False):
        return list(script.ui(is_img2img) or [])


def describe_control(component: Any) -> ScriptArg:
    values = {name: getattr(component, name, None) for name in _ARG_FIELDS}
    choices = values["choices"]
    if choices is not None:
        # Gradio keeps (label, value) pairs; clients want the values.
        values["choices"] = [c[1] if isinstance(c, (tuple, list)) and len(c) == 2 else c for c in choices]
    return ScriptArg(**values)


class ScriptRunner:
    """The scripts of one tab (txt2img or img2img), laid out for script_args."""

    def __init__(self, scripts: Iterable[Script], *, is_img2img: bool,
                 capture: ControlCapture = capture_controls) -> None:
        self.is_img2img = is_img2img
        self.tabname = "img2img" if is_img2img else "txt2img"
        self.alwayson_scripts: list[Script] = []
        self.selectable_scripts: list[Script] = []
        for script in scripts:
            try:
                visibility = script.show(is_img2img)
            except Exception:  # a broken show() hides that script only
                log.exception("error in show() of script %s (%s)", _describe(script), script.extension)
                continue
            script.is_img2img, script.is_txt2img, script.tabname = is_img2img, not is_img2img, self.tabname
            if visibility is AlwaysVisible:
                script.alwayson = True
                self.alwayson_scripts.append(script)
            elif visibility:
                script.alwayson = False
                self.selectable_scripts.append(script)
        self.defaults: list[Any] = [0]
        self.args_info: dict[int, list[ScriptArg]] = {}
        for script in [*self.alwayson_scripts, *self.selectable_scripts]:
            try:
                controls = capture(script, is_img2img)
            except Exception:  # a script whose ui() fails gets no arguments, but still runs
                log.exception("error in ui() of script %s (%s)", _describe(script), script.extension)
                controls = []
            script.args_from = len(self.defaults)
            script.args_to = script.args_from + len(controls)
            self.args_info[id(script)] = [describe_control(c) for c in controls]
            self.defaults.extend(arg.value for arg in self.args_info[id(script)])

    @property
    def scripts(self) -> list[Script]:
        return [*self.alwayson_scripts, *self.selectable_scripts]

    def titles(self) -> list[str]:
        """The Script dropdown: "None", then every selectable script."""
        return ["None", *(s.title() for s in self.selectable_scripts)]

    def find(self, name: str, *, selectable: bool | None = None) -> Script | None:
        wanted = name.lower()
        pool = {True: self.selectable_scripts, False: self.alwayson_scripts, None: self.scripts}[selectable]
        return next((s for s in pool if s.title().lower() == wanted), None)

    def script_args(self, script_name: str | None = None, script_args: Sequence[Any] = (),
                    alwayson_scripts: Mapping[str, Any] | None = None) -> list[Any]:
        """A1111's init_script_args for an API request: defaults, then the named script's args,
        then each always-on script's args. Unknown titles are InvalidRequest (HTTP 422)."""
        args = list(self.defaults)
        if script_name:
            script = self.find(script_name, selectable=True)
            if script is None:
                raise InvalidRequest("script_name", f"Script '{script_name}' not found")
            given = list(script_args or [])
            args[script.args_from:script.args_from + len(given)] = given[:max(0, script.args_to - script.args_from)]
            args[0] = self.selectable_scripts.index(script) + 1
        for title, payload in (alwayson_scripts or {}).items():
            script = self.find(title, selectable=None)
            if script is None or not script.alwayson:
                raise InvalidRequest("alwayson_scripts", f"always on script {title} not found")
            given = payload.get("args", []) if isinstance(payload, Mapping) else []
            if not isinstance(given, list):
                raise InvalidRequest("alwayson_scripts", f"{title}: 'args' must be a list")
            count = min(len(given), script.args_to - script.args_from)
            args[script.args_from:script.args_from + count] = given[:count]
        return args

    def script_info(self) -> list[dict[str, Any]]:
        """/sdapi/v1/script-info entries for this tab."""
        return [{"name": s.name, "is_alwayson": s.alwayson, "is_img2img": self.is_img2img,
                 "args": [vars(a) for a in self.args_info[id(s)]]} for s in self.scripts]

    def bind(self, p: Any, args: Sequence[Any] | None = None) -> None:
        """Attach this runner and the request's script_args to p, then call every script's setup()."""
        args = list(self.defaults if args is None else args)
        if len(args) < len(self.defaults):
            args += self.defaults[len(args):]
        p.scripts, p.script_args = self, tuple(args)
        for script in self.alwayson_scripts:
            self._call(script, "setup", p, *self._args(p, script))

    def selected(self, p: Any) -> Script | None:
        index = int(p.script_args[0] or 0) if p.script_args else 0
        if index == 0:
            return None
        if not 0 < index <= len(self.selectable_scripts):
            raise InvalidRequest("script_args", f"script index {index} is out of range 0..{len(self.selectable_scripts)}")
        return self.selectable_scripts[index - 1]

    def run(self, p: Any) -> Any:
        """Run the selected script; None when none is selected (then the caller runs process_images).

        Unlike hooks, a selectable script's error fails the job: it *is* the job.
        """
        script = self.selected(p)
        if script is None:
            return None
        script.setup(p, *self._args(p, script))
        return script.run(p, *self._args(p, script))

    # -- hooks process_images calls (backend.processing.core.ScriptHooks) ---------------------

    def before_process(self, p: Any) -> None:
        self._each(p, "before_process")

    def process(self, p: Any) -> None:
        self._each(p, "process")

    def before_process_batch(self, p: Any, batch_number: int) -> None:
        self._each(p, "before_process_batch", batch_number=batch_number, prompts=p.prompts, seeds=p.seeds,
                   subseeds=p.subseeds)

    def after_extra_networks_activate(self, p: Any, batch_number: int) -> None:
        self._each(p, "after_extra_networks_activate", batch_number=batch_number, prompts=p.prompts,
                   seeds=p.seeds, subseeds=p.subseeds, extra_network_data=p.extra_network_data)

    def process_batch(self, p: Any, batch_number: int) -> None:
        self._each(p, "process_batch", batch_number=batch_number, prompts=p.prompts, seeds=p.seeds,
                   subseeds=p.subseeds)

    def postprocess_batch(self, p: Any, images: Any, batch_number: int) -> None:
        self._each(p, "postprocess_batch", images=images, batch_number=batch_number)

    def postprocess_batch_list(self, p: Any, images: list[Any], batch_number: int) -> list[Any]:
        pp = PostprocessBatchListArgs(list(images))
        for script in self.alwayson_scripts:
            self._call(script, "postprocess_batch_list", p, pp, *self._args(p, script), batch_number=batch_number)
        return pp.images

    def postprocess_image(self, p: Any, image: Any) -> Any:
        pp = PostprocessImageArgs(image)
        for script in self.alwayson_scripts:
            self._call(script, "postprocess_image", p, pp, *self._args(p, script))
        return pp.image

    def before_hr(self, p: Any) -> None:
        self._each(p, "before_hr")

    def postprocess(self, p: Any, processed: Any) -> None:
        for script in self.alwayson_scripts:
            self._call(script, "postprocess", p, processed, *self._args(p, script))

    # -- internals -----------------------------------------------------------------------------

    def _args(self, p: Any, script: Script) -> tuple[Any, ...]:
        return tuple(p.script_args[script.args_from:script.args_to])

    def _each(self, p: Any, hook: str, **kwargs: Any) -> None:
        for script in self.alwayson_scripts:
            self._call(script, hook, p, *self._args(p, script), **kwargs)

    @staticmethod
    def _call(script: Script, hook: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(script, hook)(*args, **kwargs)
        except WebUIError:
            raise  # a deliberate, readable error (bad argument, missing model) fails the request
        except Exception:  # a bug in an always-on hook is logged with its extension; the job goes on
            log.exception("error running %s of script %s (extension %s)", hook, _describe(script),
                          script.extension or "?")


def _describe(script: Script) -> str:
    try:
        return script.title()
    except Exception:
        return type(script).__name__
