"""A pasted infotext read back into a request: styles and settings (A1111's infotext_utils).

Shared by the API's `infotext` request field and the UI's ↙ and "Send to" buttons, so both
read an infotext the same way:
- `parse_pasted_infotext`: parse_infotext, then the styles found in the prompts are stripped
  and listed under "Styles array" as the `infotext_styles` option says, then the keys of
  `infotext_skip_pasting` are dropped;
- `infotext_settings`: the settings an infotext names (Clip skip, ENSD, RNG, the model, ...)
  that differ from the current options, i.e. what A1111 puts into override_settings
  (the API) or into the "Override settings" dropdown (the UI);
- `override_settings_from_texts`: that dropdown's "Clip skip: 2" entries back to options.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from backend.callbacks import CallbackRegistry
from backend.config import OPTION_DEFAULTS, coerce_option
from backend.errors import InvalidRequest
from backend.models.registry import CheckpointRegistry
from backend.postprocess.infotext import parse_infotext
from backend.prompts.styles import StyleDatabase

log = logging.getLogger(__name__)

STYLES_ARRAY = "Styles array"
INFOTEXT_STYLES_MODES = ("Ignore", "Apply", "Discard", "Apply if any")
CHECKPOINT_OPTION = "sd_model_checkpoint"
# "Model" (the checkpoint's name) finds the model when its hash does not (e.g. with --no-hashing).
MODEL_NAME_KEY = "Model"

_BOOL_WORDS = ("true", "false", "1", "0", "yes", "no")

FindCheckpoint = Callable[[str], str | None]
"""A checkpoint name, hash or alias -> its title, or None when no model matches."""


def checkpoint_finder(registry: CheckpointRegistry) -> FindCheckpoint:
    """The FindCheckpoint of a model registry (any A1111 alias finds a model)."""
    def find(name: str) -> str | None:
        found = registry.find(name)
        return found.title if found is not None else None

    return find


def parse_pasted_infotext(text: str, opts: Mapping[str, Any], styles: StyleDatabase,
                          callbacks: CallbackRegistry | None = None) -> dict[str, object]:
    """parse_infotext with the user's infotext_styles and infotext_skip_pasting options applied;
    extensions' on_infotext_pasted callbacks may then edit the parameters (A1111's order)."""
    params = parse_infotext(text)
    extract_styles(params, styles, str(opts["infotext_styles"]))
    if callbacks is not None:
        callbacks.fire("infotext_pasted", text, params)
    for key in opts["infotext_skip_pasting"] or ():
        params.pop(key, None)
    return params


def extract_styles(params: dict[str, object], styles: StyleDatabase, mode: str) -> None:
    """Strip the styles found in the prompts; list them under "Styles array" (A1111's rules).

    "Ignore" leaves the prompts as they are; "Discard" strips the styles without selecting them;
    "Apply" selects exactly the styles found (none clears the selection); "Apply if any" selects
    them only when some were found. When the hires prompts carry other styles than the main
    prompts, nothing is stripped.
    """
    if mode == "Ignore":
        return
    prompt, negative = str(params.get("Prompt", "")), str(params.get("Negative prompt", ""))
    found, prompt_no_styles, negative_no_styles = styles.extract_styles_from_prompt(prompt, negative)
    # parse_infotext fills missing hires prompts with "" (A1111 adds that default after this step).
    if params.get("Hires prompt") or params.get("Hires negative prompt"):
        hr_found, hr_prompt, hr_negative = styles.extract_styles_from_prompt(
            str(params.get("Hires prompt") or prompt), str(params.get("Hires negative prompt") or negative))
        if hr_found != found:
            return
        params["Hires prompt"] = "" if hr_prompt == prompt_no_styles else hr_prompt
        params["Hires negative prompt"] = "" if hr_negative == negative_no_styles else hr_negative
    params["Prompt"], params["Negative prompt"] = prompt_no_styles, negative_no_styles
    if mode == "Apply" or (mode == "Apply if any" and found):
        params[STYLES_ARRAY] = found


@dataclass(frozen=True)
class SettingOverride:
    """One setting an infotext names: its infotext key, the option, the option's value, and the text shown."""

    key: str
    option: str
    value: Any
    shown: str

    @property
    def text(self) -> str:
        """As A1111's "Override settings" dropdown lists it: "Clip skip: 2"."""
        return f"{self.key}: {self.shown}"


def _infotext_keys() -> dict[str, str]:
    keys = {info.infotext: key for key, info in OPTION_DEFAULTS.items() if info.infotext}
    keys[MODEL_NAME_KEY] = CHECKPOINT_OPTION
    return keys


def infotext_settings(params: Mapping[str, Any], opts: Mapping[str, Any], find_checkpoint: FindCheckpoint,
                      skip: Iterable[str] = ()) -> list[SettingOverride]:
    """The settings named in `params` whose values differ from `opts` (A1111's get_override_settings).

    Keys in `skip` (those a tab already pastes into its own fields) are left out. The model
    ("Model hash", else "Model") counts only when it is found here and `disable_weights_auto_swap`
    is off. A value the option cannot take is left out (logged), as a malformed field is on paste.
    """
    skipped = set(skip)
    found: list[SettingOverride] = []
    for key, option in _infotext_keys().items():
        if key in skipped or key not in params or any(o.option == option for o in found):
            continue
        raw = params[key]
        if option == CHECKPOINT_OPTION:
            if opts["disable_weights_auto_swap"]:
                continue
            title = find_checkpoint(str(raw))
            if title is None or title == opts[CHECKPOINT_OPTION]:
                continue
            found.append(SettingOverride(key, option, title, str(raw)))
            continue
        if isinstance(OPTION_DEFAULTS[option].default, bool) and str(raw).lower() not in _BOOL_WORDS:
            raw = True  # "Face restoration: CodeFormer" means it was on (A1111 casts any other text to True)
        try:
            value = coerce_option(option, raw)
        except InvalidRequest as e:
            log.warning("infotext setting %s ignored: %s", key, e.reason)
            continue
        if value != opts[option]:
            found.append(SettingOverride(key, option, value, str(value)))
    return found


def override_settings_from_texts(texts: Iterable[str]) -> dict[str, Any]:
    """"Clip skip: 2" entries of the Override settings dropdown as override_settings (A1111's
    create_override_settings_dict). A checkpoint stays as written (a hash or name); processing
    resolves it like any sd_model_checkpoint override."""
    keys = _infotext_keys()
    overrides: dict[str, Any] = {}
    for text in texts:
        key, sep, value = str(text).partition(":")
        option = keys.get(key.strip())
        if not sep or option is None:
            continue
        overrides[option] = coerce_option(option, value.strip())
    return overrides
