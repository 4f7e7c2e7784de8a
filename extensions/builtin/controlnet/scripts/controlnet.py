"""ControlNet as a built-in extension: A1111-ControlNet's script ("ControlNet", API name "controlnet"),
its unit fields, infotext and /controlnet/* routes, on diffusers ControlNet models.

The work happens in `lib_controlnet` (importable here because the extension folder is on sys.path
while this file loads); this file wires it to the script system:
- setup(): validates the units, so a bad field is a 422 before the job is queued;
- process(): preprocesses each enabled unit, loads its ControlNet and adds a hook to `p.unet_hooks`;
- postprocess(): removes the hook and appends the detected maps to the images (as A1111-ControlNet).
"""
from __future__ import annotations

from typing import Any

from PIL import Image

from backend import callbacks
from backend.scripts import AlwaysVisible, Script
from lib_controlnet import api, ui
from lib_controlnet.hook import ControlNetHook
from lib_controlnet.runtime import OPTIONS, Runtime
from lib_controlnet.units import parse_units

# Shared by both tabs' script instances and the routes; one per load of this module.
RUNTIME = Runtime()
INFOTEXT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
                   "guidance_start", "guidance_end", "pixel_perfect", "control_mode")


class ControlNetScript(Script):
    def title(self) -> str:
        return "ControlNet"

    def show(self, is_img2img: bool) -> Any:
        return AlwaysVisible

    def ui(self, is_img2img: bool) -> list[Any]:
        return ui.build(RUNTIME, is_img2img)

    def setup(self, p: Any, *units: Any) -> None:
        parse_units(units)

    def process(self, p: Any, *units: Any) -> None:
        RUNTIME.learn(p.context.models_dir, p.context.options)
        _remove_hooks(p)  # a copy of p may carry the list of an earlier, failed run
        numbered = [(i, unit) for i, unit in enumerate(parse_units(units)) if unit.enabled]
        if not numbered:
            return
        for number, (_, unit) in enumerate(numbered):
            p.extra_generation_params[f"ControlNet {number}"] = unit.infotext()
        active = RUNTIME.prepare(p, numbered)
        has_hires = bool(getattr(p, "enable_hr", False))
        p.unet_hooks.append(ControlNetHook(active, (p.width // 8 * 8, p.height // 8 * 8), has_hires))

    def postprocess(self, p: Any, processed: Any, *units: Any) -> None:
        hooks = _remove_hooks(p)
        if RUNTIME.option("control_net_no_detectmap"):
            return
        for hook in hooks:
            for active in hook.units:
                if active.unit.save_detected_map:
                    # The hires map first, as A1111-ControlNet lists them.
                    for maps in reversed(list(active.fitted.values())):
                        processed.images.extend(Image.fromarray(m) for m in maps)


def _remove_hooks(p: Any) -> list[ControlNetHook]:
    ours = [hook for hook in p.unet_hooks if isinstance(hook, ControlNetHook)]
    p.unet_hooks[:] = [hook for hook in p.unet_hooks if not isinstance(hook, ControlNetHook)]
    return ours


def add_options(opts: Any) -> None:
    for key, info in OPTIONS.items():
        opts.add_option(key, info)
    RUNTIME.learn(None, opts)


def expand_pasted_infotext(infotext: str, params: dict[str, Any]) -> None:
    """"ControlNet 0: "Module: canny, ..."" -> "ControlNet 0 module": "canny", ... (A1111-ControlNet's keys
    for pasting into the unit controls)."""
    for key, value in list(params.items()):
        if not key.startswith("ControlNet ") or not isinstance(value, str):
            continue
        for item in value.split(","):
            name, sep, text = item.strip().partition(": ")
            field = "_".join(word.lower() for word in name.split(" "))
            if sep and field in INFOTEXT_FIELDS:
                params[f"{key} {field}"] = text


callbacks.on_ui_settings(add_options)
callbacks.on_app_started(lambda demo, app: api.add_routes(app, RUNTIME))
callbacks.on_infotext_pasted(expand_pasted_infotext)
