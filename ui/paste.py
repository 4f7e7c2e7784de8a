"""Infotext paste: "Send to txt2img/img2img" and the ↙ button fill a tab's fields from an infotext.

The text is read by the backend's parse_pasted_infotext (the API's reader: styles found in the
prompt, infotext_skip_pasting); each tab declares which infotext key fills which component, as
A1111's paste fields do. Keys missing from the infotext leave their component as it is; the
settings the infotext names go into the tab's "Override settings" dropdown.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from backend.callbacks import CallbackRegistry
from backend.processing.infotext_paste import STYLES_ARRAY, FindCheckpoint, infotext_settings, parse_pasted_infotext
from backend.prompts.styles import StyleDatabase
from backend.sampling.registry import resolve_sampler_and_scheduler

Params = Mapping[str, object]


@dataclass(frozen=True)
class PasteField:
    """One component and where its value comes from: an infotext key, or a function of all params.

    A function returns the value, a gr.update (passed on as it is), or None to leave the component unchanged.
    """

    component: Any
    source: str | Callable[[Params], Any]


def parse(text: str, opts: Mapping[str, Any], styles: StyleDatabase,
          callbacks: CallbackRegistry | None = None) -> dict[str, object]:
    """The infotext's parameters as the API reads them (options infotext_styles and infotext_skip_pasting,
    extensions' on_infotext_pasted)."""
    return parse_pasted_infotext(text, opts, styles, callbacks)


def styles_array(params: Params) -> list[str] | None:
    """The styles found in the prompt, when the infotext_styles option selects them."""
    found = params.get(STYLES_ARRAY)
    return list(found) if isinstance(found, list) else None


def override_settings_update(params: Params, opts: Mapping[str, Any], find_checkpoint: FindCheckpoint,
                             skip: Sequence[str]) -> Any:
    """The Override settings dropdown for an infotext: its settings that differ from the current options.

    `skip` are the keys the tab pastes into its own fields. The dropdown hides when there are none.
    """
    texts = [s.text for s in infotext_settings(params, opts, find_checkpoint, skip)]
    return gr.update(choices=texts, value=texts, visible=bool(texts))


def sampler_name(params: Params) -> str | None:
    """The sampler named by "Sampler" (legacy "DPM++ 2M Karras" included), as A1111 resolves it."""
    if "Sampler" not in params:
        return None
    sampler, _ = resolve_sampler_and_scheduler(str(params["Sampler"]), str(params.get("Schedule type", "")))
    return sampler.name


def scheduler_label(params: Params) -> str | None:
    """The schedule type: the "Schedule type" key, or the suffix of a legacy sampler name."""
    if "Sampler" not in params:
        return None
    _, scheduler = resolve_sampler_and_scheduler(str(params["Sampler"]), str(params.get("Schedule type", "")))
    return scheduler.label


def hires_enabled(params: Params) -> bool | None:
    """A1111 turns hires fix on when the infotext has a denoising strength and a hires key."""
    if "Denoising strength" not in params:
        return None
    return any(key in params for key in ("Hires upscale", "Hires upscaler", "Hires resize-1"))


def values_for(params: Params, fields: Sequence[PasteField]) -> list[Any]:
    """One update per field: the converted value, or gr.skip() when the infotext has none."""
    return [_update(field, params) for field in fields]


def _update(field: PasteField, params: Params) -> Any:
    if callable(field.source):
        raw = field.source(params)
    else:
        raw = params.get(field.source)
    if raw is None:
        return gr.skip()
    if isinstance(raw, dict) and raw.get("__type__") == "update":
        return raw
    try:
        return _convert(field.component, raw)
    except (TypeError, ValueError):  # a malformed value leaves the field alone, as A1111's paste does
        return gr.skip()


def _convert(component: Any, raw: Any) -> Any:
    if isinstance(component, gr.Checkbox):
        return raw if isinstance(raw, bool) else str(raw).lower() == "true"
    if isinstance(component, gr.Number):
        number = float(str(raw))
        return int(number) if component.precision == 0 else number
    if isinstance(component, gr.Slider):
        number = float(str(raw))
        return int(number) if float(component.step or 1).is_integer() else number
    if isinstance(component, gr.Dropdown) and component.multiselect:
        return [str(item) for item in raw]
    if isinstance(component, (gr.Dropdown, gr.Radio)):
        text = str(raw)
        choices = [c[1] if isinstance(c, tuple) else c for c in (component.choices or [])]
        return text if not choices or text in choices else gr.skip()
    return str(raw)
