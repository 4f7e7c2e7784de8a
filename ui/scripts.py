"""The script controls of a generation tab: always-on script sections, the "Script" dropdown and the
selected script's controls. Their values become `script_args` exactly as the API lays them out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import gradio as gr

from backend.scripts import Script, ScriptRunner

log = logging.getLogger(__name__)


@dataclass
class ScriptControls:
    runner: ScriptRunner
    dropdown: gr.Dropdown
    controls: list[Any]
    """Every script's components in script_args order (index 1 onwards)."""

    def inputs(self) -> set[Any]:
        return {self.dropdown, *self.controls}

    def args(self, data: dict) -> list[Any]:
        titles = self.runner.titles()
        chosen = data[self.dropdown]
        return [titles.index(chosen) if chosen in titles else 0, *(data[c] for c in self.controls)]

    def bind(self, p: Any, data: dict) -> None:
        """Attach the runner and these controls' values to the processing object."""
        self.runner.bind(p, self.args(data))


def build(runner: ScriptRunner) -> ScriptControls:
    """Always-on sections first, then the Script dropdown and one hidden group per selectable script."""
    controls: list[Any] = []
    for script in runner.alwayson_scripts:
        with gr.Group(elem_id=script.elem_id("group"), elem_classes="alwayson-script"):
            controls += _script_ui(script, runner)
    tab = runner.tabname
    dropdown = gr.Dropdown(runner.titles(), value="None", label="Script",
                           elem_id="script_list" if tab == "txt2img" else f"{tab}_script_list", interactive=True)
    groups = []
    for script in runner.selectable_scripts:
        with gr.Group(visible=False, elem_id=script.elem_id("group"), elem_classes="selectable-script") as group:
            controls += _script_ui(script, runner)
        groups.append(group)

    def show(title: str) -> list[Any]:
        return [gr.update(visible=s.title() == title) for s in runner.selectable_scripts]

    if groups:
        dropdown.change(show, dropdown, groups, show_progress="hidden", queue=False)
    return ScriptControls(runner, dropdown, controls)


def _script_ui(script: Script, runner: ScriptRunner) -> list[Any]:
    """The script's components; a count that differs from what the runner recorded is padded with
    states holding the defaults, so the other scripts' arguments stay in their slots."""
    expected = script.args_to - script.args_from
    try:
        made = list(script.ui(runner.is_img2img) or [])
    except Exception:  # a broken extension UI must not break the page
        log.exception("error building the UI of script %s (%s)", script.title(), script.extension)
        made = []
    if len(made) != expected:
        log.warning("script %s made %d controls in the UI but %d at start-up; using defaults for the rest",
                    script.title(), len(made), expected)
        made = made[:expected] + [gr.State(v) for v in runner.defaults[script.args_from + len(made):script.args_to]]
    return made
