"""The Settings tab: every option, grouped in A1111's sections, applied and saved to config.json."""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import gradio as gr

from backend.config import OPTION_DEFAULTS, coerce_option
from backend.context import AppContext
from backend.postprocess.infotext import INFOTEXT_KEYS
from backend.prompts.conditioning import EMPHASIS_MODES
from ui import common

# The checkpoint has its own dropdown in the quicksettings bar at the top (A1111's quicksettings_list).
QUICKSETTINGS = ("sd_model_checkpoint",)

SECTION_LABELS: dict[str, str] = {
    "saving-images": "Saving images/grids",
    "saving-paths": "Paths for saving",
    "saving-to-dirs": "Saving to a directory",
    "sd": "Stable Diffusion",
    "sd_vae": "VAE",
    "sdxl": "Stable Diffusion XL",
    "img2img": "img2img",
    "sampler-params": "Sampler parameters",
    "optimizations": "Optimizations",
    "compatibility": "Compatibility",
    "upscaling": "Upscaling",
    "face-restoration": "Face restoration",
    "infotext": "Infotext",
    "ui": "Live previews",
    "extra_networks": "Extra Networks",
}

# Options whose values come from a fixed list (A1111 shows them as dropdowns or radios).
FIXED_CHOICES: dict[str, tuple[str, ...]] = {
    "samples_format": ("png", "jpg", "jpeg", "webp", "avif"),
    "grid_format": ("png", "jpg", "jpeg", "webp", "avif"),
    "save_images_replace_action": ("Replace", "Add number suffix"),
    "sd_vae": ("Automatic", "None"),
    "emphasis": EMPHASIS_MODES,
    "randn_source": ("GPU", "CPU", "NV"),
    "ddim_discretize": ("uniform", "quad"),
    "uni_pc_variant": ("bh1", "bh2", "vary_coeff"),
    "uni_pc_skip_type": ("time_uniform", "time_quadratic", "logSNR"),
    "show_progress_type": ("Full", "Approx NN", "Approx cheap", "TAESD"),
    "infotext_skip_pasting": tuple(k for k in INFOTEXT_KEYS if k not in ("Version", "User")),
    "lora_preferred_name": ("Alias from file", "Filename"),
    "lora_hide_unknown_for_versions": ("SD1", "SD2", "SDXL"),
}
NONE_CHOICE = "None"


@dataclass
class SettingsTab:
    keys: list[str]
    components: list[Any]
    apply: gr.Button
    result: gr.HTML


def section_label(section: str) -> str:
    """A section's title: A1111's, or the key made readable for sections added later."""
    return SECTION_LABELS.get(section) or section.replace("_", " ").replace("-", " ").capitalize()


def _choices(ctx: AppContext, key: str) -> tuple[str, ...] | None:
    if key == "upscaler_for_img2img":
        return tuple(common.upscaler_names(ctx))
    if key == "face_restoration_model":
        return tuple(r.name for r in ctx.face_restorers.list())
    if key == "sd_lora":
        return (NONE_CHOICE, *(n.name for n in ctx.networks.registry.list()))
    return FIXED_CHOICES.get(key)


def _component(ctx: AppContext, key: str) -> Any:
    info = OPTION_DEFAULTS[key]
    kwargs: dict[str, Any] = {"label": info.label, "elem_id": f"setting_{key}",
                              "value": shown_value(key, ctx.options[key])}
    choices = _choices(ctx, key)
    if isinstance(info.default, list):
        return gr.Dropdown(list(choices or ()), multiselect=True, allow_custom_value=True, **kwargs)
    if choices is not None:
        return gr.Dropdown(list(choices), allow_custom_value=True, **kwargs)
    if isinstance(info.default, bool):
        return gr.Checkbox(**kwargs)
    if isinstance(info.default, int):
        return gr.Number(precision=0, **kwargs)
    if isinstance(info.default, float):
        return gr.Number(**kwargs)
    return gr.Textbox(**kwargs)


def shown_value(key: str, value: Any) -> Any:
    """An option's value as its component shows it (None options read "None" or "")."""
    if value is None:
        return NONE_CHOICE if key in ("upscaler_for_img2img",) else ""
    return value


def stored_value(key: str, value: Any) -> Any:
    """A component's value as the option stores it: the inverse of shown_value, then type-checked."""
    if OPTION_DEFAULTS[key].default is None and value in ("", NONE_CHOICE):
        return None
    return coerce_option(key, value)


def build(ctx: AppContext) -> SettingsTab:
    """The tab's layout and wiring; call inside gr.Tab("Settings")."""
    sections: dict[str, list[str]] = {}
    for key, info in OPTION_DEFAULTS.items():
        if key not in QUICKSETTINGS:
            sections.setdefault(info.section, []).append(key)
    keys: list[str] = []
    components: list[Any] = []
    labels = [section_label(section) for section in sections]
    with gr.Row(elem_id="settings_top"):
        apply = gr.Button("Apply settings", variant="primary", elem_id="settings_submit", scale=0, min_width=200)
        result = gr.HTML("", elem_id="settings_result", js_on_load=None)
    with gr.Row(equal_height=False, elem_id="settings"):
        # A1111 lists the sections down the left and shows one at a time.
        nav = gr.Radio(labels, value=labels[0], show_label=False, elem_id="settings_sections",
                       elem_classes="settings-nav", scale=0, min_width=220)
        with gr.Column(scale=1):
            groups = []
            for index, (section, section_keys) in enumerate(sections.items()):
                with gr.Column(visible=index == 0, elem_id=f"settings_{section}",
                               elem_classes="settings-section") as group:
                    gr.Markdown(f"### {labels[index]}")
                    for key in section_keys:
                        keys.append(key)
                        components.append(_component(ctx, key))
                groups.append(group)
    nav.change(lambda chosen: [gr.update(visible=label == chosen) for label in labels], nav, groups,
               show_progress="hidden", queue=False)
    tab = SettingsTab(keys, components, apply, result)
    _wire(ctx, tab)
    return tab


def current_values(ctx: AppContext, tab: SettingsTab) -> list[Any]:
    """What each component shows: the options as they are now (read on every page load)."""
    return [shown_value(key, ctx.options[key]) for key in tab.keys]


def _wire(ctx: AppContext, tab: SettingsTab) -> None:
    def apply(*values: Any) -> str:
        with common.shown_as_gr_error():
            changed = {}
            for key, value in zip(tab.keys, values):
                value = stored_value(key, value)
                if value != ctx.options[key]:
                    changed[key] = value
            # Every value is checked above before any is set, so a bad one changes nothing.
            for key, value in changed.items():
                ctx.options.set(key, value)
            ctx.options.save()
        names = ", ".join(html.escape(k) for k in changed)
        return f"<span class='settings-result'>{len(changed)} settings changed{': ' if changed else ''}{names}.</span>"

    tab.apply.click(apply, tab.components, tab.result, show_progress="hidden")
