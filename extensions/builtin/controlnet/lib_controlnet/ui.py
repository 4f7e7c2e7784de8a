"""The ControlNet accordion: one tab per unit. As in A1111-ControlNet, each unit's visible controls feed
one `gr.State` holding the unit as a dict with A1111-ControlNet's field names; those states are what
`ui()` returns, so the UI and the API (`alwayson_scripts.controlnet.args`) pass units the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from backend.errors import WebUIError
from lib_controlnet import preprocessors
from lib_controlnet.images import ResizeMode, pixel_perfect_resolution, to_array
from lib_controlnet.runtime import Runtime
from lib_controlnet.units import ControlMode, HiResFixOption

# Symbols every system's fonts have (the emoji A1111-ControlNet uses are missing from many).
REFRESH_SYMBOL = "\u21bb"  # ↻
PREVIEW_SYMBOL = "\u25b6"  # ▶ run the preprocessor


def default_unit() -> dict[str, Any]:
    """A disabled unit with A1111-ControlNet's defaults (the API's default for every slot)."""
    return {"enabled": False, "module": "none", "model": "None", "weight": 1.0, "image": None,
            "resize_mode": ResizeMode.INNER_FIT.value, "low_vram": False, "processor_res": -1, "threshold_a": -1,
            "threshold_b": -1, "guidance_start": 0.0, "guidance_end": 1.0, "pixel_perfect": False,
            "control_mode": ControlMode.BALANCED.value, "hr_option": HiResFixOption.BOTH.value}


@dataclass
class UnitControls:
    """One unit's visible controls, in the order `as_unit` takes them."""

    enabled: gr.Checkbox
    image: gr.Image
    low_vram: gr.Checkbox
    pixel_perfect: gr.Checkbox
    module: gr.Dropdown
    model: gr.Dropdown
    weight: gr.Slider
    guidance_start: gr.Slider
    guidance_end: gr.Slider
    processor_res: gr.Slider
    threshold_a: gr.Slider
    threshold_b: gr.Slider
    control_mode: gr.Radio
    resize_mode: gr.Radio
    hr_option: gr.Radio

    def inputs(self) -> list[Any]:
        return list(vars(self).values())


def as_unit(enabled: bool, image: Image.Image | None, low_vram: bool, pixel_perfect: bool, module: str, model: str,
            weight: float, guidance_start: float, guidance_end: float, processor_res: float, threshold_a: float,
            threshold_b: float, control_mode: str, resize_mode: str, hr_option: str) -> dict[str, Any]:
    """The state value of a unit from its controls."""
    return {"enabled": bool(enabled), "module": module, "model": model or "None", "weight": weight, "image": image,
            "resize_mode": resize_mode, "low_vram": bool(low_vram), "processor_res": processor_res,
            "threshold_a": threshold_a, "threshold_b": threshold_b, "guidance_start": guidance_start,
            "guidance_end": guidance_end, "pixel_perfect": bool(pixel_perfect), "control_mode": control_mode,
            "hr_option": hr_option}


def _slider_update(slider: preprocessors.Slider) -> Any:
    if not slider.visible:
        return gr.update(visible=False)
    return gr.update(visible=True, label=slider.label, minimum=slider.minimum, maximum=slider.maximum,
                     step=slider.step, value=slider.value)


def build(runtime: Runtime, is_img2img: bool) -> list[gr.State]:
    """The accordion (inside the tab's layout) and one State per unit."""
    tab = "img2img" if is_img2img else "txt2img"
    states, lists = [], []
    with gr.Group(elem_id=f"{tab}_controlnet"):
        with gr.Accordion("ControlNet", open=False, elem_id=f"{tab}_controlnet_accordion"):
            with gr.Tabs(elem_id=f"{tab}_controlnet_tabs"):
                for i in range(runtime.unit_count()):
                    with gr.Tab(f"ControlNet Unit {i}"):
                        state, module, model = _unit(runtime, tab, i, is_img2img)
                    states.append(state)
                    lists += [module, model]

    def refreshed_lists() -> list[Any]:
        modules = [p.label for p in preprocessors.available(runtime.annotators())]
        models = ["None", *runtime.model_titles()]
        return [gr.update(choices=modules), gr.update(choices=models)] * (len(lists) // 2)

    # On page load: the models folder (ControlNets, annotator weights) is known once the app has started.
    gr.on(triggers=None, fn=refreshed_lists, inputs=None, outputs=lists, show_progress="hidden", queue=False)
    return states


def _unit(runtime: Runtime, tab: str, index: int, is_img2img: bool) -> tuple[gr.State, gr.Dropdown, gr.Dropdown]:
    prefix = f"{tab}_controlnet_ControlNet-{index}_controlnet"
    choices = [p.label for p in preprocessors.available(runtime.annotators())]
    with gr.Row():
        image = gr.Image(label="Image", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                         elem_id=f"{prefix}_input_image")
        preview = gr.Image(label="Preprocessor Preview", type="pil", format="png", interactive=False,
                           elem_id=f"{prefix}_preprocessor_preview")
    with gr.Row():
        enabled = gr.Checkbox(label="Enable", value=False, elem_id=f"{prefix}_enable_checkbox")
        low_vram = gr.Checkbox(label="Low VRAM", value=False, elem_id=f"{prefix}_low_vram_checkbox")
        pixel_perfect = gr.Checkbox(label="Pixel Perfect", value=False, elem_id=f"{prefix}_pixel_perfect_checkbox")
    with gr.Row():
        module = gr.Dropdown(choices, value="none", label="Preprocessor", elem_id=f"{prefix}_preprocessor_dropdown")
        run_preview = gr.Button(PREVIEW_SYMBOL, elem_id=f"{prefix}_trigger_preprocessor", scale=0, min_width=40)
        model = gr.Dropdown(["None", *runtime.model_titles()], value="None", label="Model",
                            elem_id=f"{prefix}_model_dropdown")
        refresh = gr.Button(REFRESH_SYMBOL, elem_id=f"{prefix}_refresh_models", scale=0, min_width=40)
    weight = gr.Slider(0.0, 2.0, value=1.0, step=0.05, label="Control Weight", elem_id=f"{prefix}_control_weight_slider")
    with gr.Row():
        guidance_start = gr.Slider(0.0, 1.0, value=0.0, step=0.01, label="Starting Control Step",
                                   elem_id=f"{prefix}_start_control_step_slider")
        guidance_end = gr.Slider(0.0, 1.0, value=1.0, step=0.01, label="Ending Control Step",
                                 elem_id=f"{prefix}_ending_control_step_slider")
    none = preprocessors.PREPROCESSORS[0]
    processor_res = gr.Slider(none.resolution.minimum, none.resolution.maximum, value=none.resolution.value,
                              step=none.resolution.step, label=none.resolution.label,
                              elem_id=f"{prefix}_preprocessor_resolution_slider")
    threshold_a = gr.Slider(0, 1, value=0.5, step=0.01, label="Threshold A", visible=False,
                            elem_id=f"{prefix}_threshold_A_slider")
    threshold_b = gr.Slider(0, 1, value=0.5, step=0.01, label="Threshold B", visible=False,
                            elem_id=f"{prefix}_threshold_B_slider")
    control_mode = gr.Radio([m.value for m in ControlMode], value=ControlMode.BALANCED.value, label="Control Mode",
                            elem_id=f"{prefix}_control_mode_radio")
    resize_mode = gr.Radio([m.value for m in ResizeMode], value=ResizeMode.INNER_FIT.value, label="Resize Mode",
                           elem_id=f"{prefix}_resize_mode_radio")
    hr_option = gr.Radio([o.value for o in HiResFixOption], value=HiResFixOption.BOTH.value, label="Hires-Fix Option",
                         visible=not is_img2img, elem_id=f"{prefix}_hr_option_radio")
    controls = UnitControls(enabled, image, low_vram, pixel_perfect, module, model, weight, guidance_start,
                            guidance_end, processor_res, threshold_a, threshold_b, control_mode, resize_mode, hr_option)
    state = gr.State(default_unit())

    # One event for all controls (one registration instead of fifteen keeps start-up quick).
    gr.on([component.change for component in controls.inputs()], as_unit, controls.inputs(), state,
          show_progress="hidden", queue=False)

    def module_changed(name: str) -> list[Any]:
        found = preprocessors.find(name) or none
        return [_slider_update(found.resolution), _slider_update(found.slider_1), _slider_update(found.slider_2)]

    module.change(module_changed, module, [processor_res, threshold_a, threshold_b], show_progress="hidden",
                  queue=False)
    refresh.click(lambda: gr.update(choices=["None", *runtime.model_titles()]), None, model, show_progress="hidden")

    def preview_map(picture: Image.Image | None, name: str, resolution: float, a: float, b: float, perfect: bool,
                    mode: str) -> Image.Image:
        if picture is None:
            raise gr.Error("Upload an image first")
        pixels = to_array(picture)
        if perfect:
            # Pixel perfect needs the generation size; the preview uses the image's own size.
            resolution = pixel_perfect_resolution(pixels, pixels.shape[1], pixels.shape[0], ResizeMode(mode))
        try:
            found = preprocessors.get(name, "module")
            detected = preprocessors.run(found, pixels, resolution, a, b, runtime.annotators())
        except WebUIError as e:
            raise gr.Error(str(e)) from None
        return Image.fromarray(np.ascontiguousarray(detected))

    run_preview.click(preview_map, [image, module, processor_res, threshold_a, threshold_b, pixel_perfect, resize_mode],
                      preview, show_progress="minimal")
    return state, module, model
