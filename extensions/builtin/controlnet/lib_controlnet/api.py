"""A1111-ControlNet's HTTP routes (`/controlnet/*`), added to the app from on_app_started, so they sit
behind --api-auth like every route of the app."""
from __future__ import annotations

from typing import Any

from fastapi import Body, FastAPI
from PIL import Image

from backend.api.models import decode_image, encode_image
from backend.errors import InvalidRequest
from lib_controlnet import preprocessors
from lib_controlnet.images import to_array
from lib_controlnet.runtime import Runtime

API_VERSION = 2


def module_list(runtime: Runtime, alias_names: bool) -> dict[str, Any]:
    available = preprocessors.available(runtime.annotators())
    names = [p.label if alias_names else p.name for p in available]
    # "model_free" means "needs no ControlNet model" (A1111-ControlNet's reference modes); none of ours.
    detail = {name: {"model_free": False, "sliders": [s.api_json() for s in p.sliders()]}
              for name, p in zip(names, available, strict=True)}
    return {"module_list": names, "module_detail": detail}


def control_types(runtime: Runtime) -> dict[str, Any]:
    """Per control type (preprocessor tag): its preprocessors, matching models and defaults."""
    available = preprocessors.available(runtime.annotators())
    titles = ["None", *runtime.model_titles()]
    tags = sorted({tag for p in available for tag in p.tags})
    result = {"All": {"module_list": [p.label for p in available], "model_list": titles,
                      "default_option": "none", "default_model": "None"}}
    for tag in tags:
        modules = [p for p in available if tag in p.tags or p.name == "none"]
        filters = preprocessors.tag_filters(tag)
        matching = [t for t in titles if t == "None" or any(f in t.lower() for f in filters)]
        default_model = "None"
        if len(matching) > 1:
            # A1111-ControlNet prefers a v1.1 model ("11" in the name) when there is one.
            default_model = next((t for t in matching if "11" in t.split("[")[0]), matching[1])
        result[tag] = {"module_list": [p.label for p in modules], "model_list": matching,
                       "default_option": (modules[1] if len(modules) > 1 else modules[0]).label,
                       "default_model": default_model}
    return {"control_types": result}


def detect(runtime: Runtime, opts: Any, module: str, images: list[str], resolution: float, threshold_a: float,
           threshold_b: float) -> dict[str, Any]:
    pre = preprocessors.get(module, "controlnet_module")
    if not images:
        raise InvalidRequest("controlnet_input_images", "No image selected")
    # Out-of-range (the default -1) values take the preprocessor's defaults, as for units.
    values = [value if slider.minimum <= value <= slider.maximum else slider.value
              for value, slider in ((resolution, pre.resolution), (threshold_a, pre.slider_1),
                                    (threshold_b, pre.slider_2))]
    results = []
    for i, encoded in enumerate(images):
        pixels = to_array(decode_image(encoded, f"controlnet_input_images[{i}]"))
        detected = preprocessors.run(pre, pixels, *values, runtime.annotators(), "controlnet_module")
        results.append(encode_image(Image.fromarray(detected), opts))
    return {"images": results, "info": "Success"}


def add_routes(app: FastAPI, runtime: Runtime) -> None:
    ctx = app.state.ctx
    runtime.learn(ctx.settings.models_dir, ctx.options)

    @app.get("/controlnet/version")
    def version() -> dict[str, int]:
        return {"version": API_VERSION}

    @app.get("/controlnet/model_list")
    def model_list(update: bool = True) -> dict[str, list[str]]:
        # The list is read from disk on every call, so `update` changes nothing here.
        return {"model_list": runtime.model_titles()}

    @app.get("/controlnet/module_list")
    def modules(alias_names: bool = False) -> dict[str, Any]:
        return module_list(runtime, alias_names)

    @app.get("/controlnet/control_types")
    def types() -> dict[str, Any]:
        return control_types(runtime)

    @app.get("/controlnet/settings")
    def settings() -> dict[str, int]:
        return {"control_net_unit_count": runtime.unit_count()}

    @app.post("/controlnet/detect")
    def detect_route(controlnet_module: str = Body("none"), controlnet_input_images: list[str] = Body([]),
                     controlnet_processor_res: float = Body(-1), controlnet_threshold_a: float = Body(-1),
                     controlnet_threshold_b: float = Body(-1), controlnet_masks: list[str] = Body([]),
                     low_vram: bool = Body(False)) -> dict[str, Any]:
        return detect(runtime, ctx.options, controlnet_module, controlnet_input_images, controlnet_processor_res,
                      controlnet_threshold_a, controlnet_threshold_b)
