"""The Settings tab: every option, grouped in A1111's sections, applied and saved to config.json;
and "Defaults", which keeps the generation tabs' control values as their new defaults (ui-config.json).
"""
from __future__ import annotations

import html
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from backend.config import OPTION_DEFAULTS, Settings, coerce_option
from backend.context import AppContext
from backend.postprocess.infotext import INFOTEXT_KEYS
from backend.processing.infotext_paste import INFOTEXT_STYLES_MODES
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
    "emphasis": EMPHASIS_MODES,
    "randn_source": ("GPU", "CPU", "NV"),
    "ddim_discretize": ("uniform", "quad"),
    "uni_pc_variant": ("bh1", "bh2", "vary_coeff"),
    "uni_pc_skip_type": ("time_uniform", "time_quadratic", "logSNR"),
    "show_progress_type": ("Full", "Approx NN", "Approx cheap", "TAESD"),
    "infotext_skip_pasting": tuple(k for k in INFOTEXT_KEYS if k not in ("Version", "User")),
    "infotext_styles": INFOTEXT_STYLES_MODES,
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
    if key == "sd_vae":
        return ("Automatic", "None", *ctx.models.vaes.names())
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


def build(ctx: AppContext, defaults: UiDefaults | None = None) -> SettingsTab:
    """The tab's layout and wiring; call inside gr.Tab("Settings"), after the tabs `defaults` walks."""
    sections: dict[str, list[str]] = {}
    for key, info in OPTION_DEFAULTS.items():
        if key not in QUICKSETTINGS:
            sections.setdefault(info.section, []).append(key)
    keys: list[str] = []
    components: list[Any] = []
    labels = [section_label(section) for section in sections]
    if defaults is not None:
        labels.append(DEFAULTS_LABEL)
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
            if defaults is not None:
                groups.append(_build_defaults(defaults))
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


# ---------------------------------------------------------------------------
# Defaults: the generation tabs' control values as their defaults (A1111's ui-config.json)
# ---------------------------------------------------------------------------

UI_CONFIG_FILE = "ui-config.json"
DEFAULTS_LABEL = "Defaults"
# The components whose values are kept, as A1111's ui_loadsave; sliders keep their range too.
SAVED_TYPES = (gr.Slider, gr.Radio, gr.Checkbox, gr.Textbox, gr.Number, gr.Dropdown)
SLIDER_FIELDS = ("value", "minimum", "maximum", "step")

log = logging.getLogger(__name__)


def ui_config_path(settings: Settings) -> Path:
    """--ui-config-file, else ui-config.json in the data dir."""
    chosen = settings.extra.get("ui_config_file")
    return Path(os.path.abspath(Path(chosen).expanduser())) if chosen else settings.data_dir / UI_CONFIG_FILE


def labelled_components(block: Any) -> Iterator[Any]:
    """The components under `block` whose values are kept, in layout order: those of SAVED_TYPES with a
    label, except the ones marked with common.not_a_default (A1111's do_not_save_to_config)."""
    for child in getattr(block, "children", None) or ():
        if isinstance(child, SAVED_TYPES):
            if child.label and not getattr(child, "do_not_save_to_config", False):
                yield child
        else:
            yield from labelled_components(child)


class UiDefaults:
    """ui-config.json: "<tab>/<label>/<field>" -> value, A1111's keys ("txt2img/Sampling steps/value").

    add_tab() gives each control of a tab the value the file has for it, and records the
    control's own default for keys the file lacks; save() writes the file back with them.
    changes() and apply() compare and store the values the controls show in the browser;
    the new defaults apply from the next start, as in A1111.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved: dict[str, Any] = {}
        self.components: dict[str, Any] = {}
        self._unreadable = False
        if path.exists():
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(loaded, dict):
                    raise ValueError("not a JSON object")
                self.saved.update(loaded)
            except (OSError, ValueError) as e:
                # Left as it is, so a hand-edited file with a typo is not overwritten with defaults.
                log.warning("could not read %s (%s); using the built-in defaults", path, e)
                self._unreadable = True

    def add_tab(self, tab: str, root: Any) -> None:
        """Apply the saved values to the controls under `root`; the first control wins a duplicate label."""
        for component in labelled_components(root):
            path = f"{tab}/{component.label}"
            if path in self.components:
                continue
            self.components[path] = component
            for name in SLIDER_FIELDS if isinstance(component, gr.Slider) else ("value",):
                self._apply(component, f"{path}/{name}", name)

    def _apply(self, component: Any, key: str, name: str) -> None:
        saved = self.saved.get(key)
        if saved is None:
            default = getattr(component, name)
            # An empty textbox reads "" in the browser; record it so, or it would always count as changed.
            self.saved[key] = "" if default is None and isinstance(component, gr.Textbox) else default
        elif name != "value":
            setattr(component, name, saved)
        elif _acceptable(component, saved):
            component.value = component.postprocess(saved)

    def save(self) -> None:
        """Write the file with every key (the controls' defaults included), unless it could not be read."""
        if not self._unreadable:
            _write_json(self.path, self.saved)

    def changes(self, values: Sequence[Any]) -> list[tuple[str, Any, Any]]:
        """(key, saved value, value now) for each control whose value differs from its saved default."""
        found = []
        for (path, component), value in zip(self.components.items(), values):
            key = f"{path}/value"
            value = _as_saved(component, value)
            # None: a control the page has not drawn yet (e.g. in a tab never opened) sends no value.
            if value is not None and value != self.saved.get(key):
                found.append((key, self.saved.get(key), value))
        return found

    def apply(self, values: Sequence[Any]) -> int:
        """Store the values shown as the new defaults; how many changed."""
        changed = self.changes(values)
        for key, _, value in changed:
            self.saved[key] = value
        _write_json(self.path, self.saved)
        self._unreadable = False
        return len(changed)


def _as_saved(component: Any, value: Any) -> Any:
    """The value as the file keeps it: a type="index" choice (X/Y/Z's axis types) arrives as its
    position but is kept, like every other choice, as its label."""
    if getattr(component, "type", None) == "index" and isinstance(value, int) and not isinstance(value, bool):
        choices = [c[0] if isinstance(c, (tuple, list)) else c for c in component.choices or []]
        return choices[value] if 0 <= value < len(choices) else value
    return value


def _acceptable(component: Any, value: Any) -> bool:
    """A saved choice must still be one of the control's choices (A1111 ignores it otherwise)."""
    if not isinstance(component, (gr.Dropdown, gr.Radio)) or getattr(component, "allow_custom_value", False):
        return True
    choices = [c[1] if isinstance(c, (tuple, list)) else c for c in component.choices or []]
    if isinstance(component, gr.Dropdown) and component.multiselect:
        return isinstance(value, list) and all(v in choices for v in value)
    return value in choices


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ui-config-", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=4, ensure_ascii=False)
    os.replace(tmp, path)


def _build_defaults(defaults: UiDefaults) -> Any:
    """The Defaults section: View changes lists what differs from the saved defaults, Apply writes it."""
    with gr.Column(visible=False, elem_id="settings_defaults", elem_classes="settings-section") as group:
        gr.Markdown(f"### {DEFAULTS_LABEL}")
        gr.Markdown("Change values in the txt2img, img2img and Extras tabs, press \"View changes\" to review "
                    f"them, then \"Apply\" to keep them as defaults in `{html.escape(str(defaults.path))}`. "
                    "New defaults show after a restart.", elem_classes="hint")
        with gr.Row():
            view = gr.Button("View changes", elem_id="ui_defaults_view", scale=0, min_width=160)
            apply = gr.Button("Apply", variant="primary", elem_id="ui_defaults_apply", scale=0, min_width=160)
        review = gr.HTML("", elem_id="ui_defaults_review", js_on_load=None)
    inputs = list(defaults.components.values())

    def view_changes(*values: Any) -> str:
        return changes_html(defaults.changes(values))

    def apply_changes(*values: Any) -> str:
        with common.shown_as_gr_error():
            count = defaults.apply(values)
        return f"<span class='settings-result'>Wrote {count} change{'' if count == 1 else 's'}.</span>"

    view.click(view_changes, inputs, review, show_progress="hidden")
    apply.click(apply_changes, inputs, review, show_progress="hidden")
    return group


def changes_html(changes: list[tuple[str, Any, Any]]) -> str:
    """A1111's review table: Path, Old value, New value."""
    if not changes:
        return "<span class='settings-result'>No changes.</span>"
    rows = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(json.dumps(old))}</td>"
                   f"<td>{html.escape(json.dumps(new))}</td></tr>" for key, old, new in changes)
    return ("<table class='defaults-changes'><thead><tr><th>Path</th><th>Old value</th><th>New value</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")
