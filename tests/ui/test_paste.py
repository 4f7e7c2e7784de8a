"""Infotext paste: which value each kind of component gets from a parsed infotext."""
from __future__ import annotations

import gradio as gr

from backend.config import Options
from backend.prompts.styles import StyleDatabase
from ui import paste

INFOTEXT = ("a (red:1.2) fox\nNegative prompt: blurry\nSteps: 12, Sampler: DPM++ 2M Karras, CFG scale: 6.5, "
            "Seed: 99, Size: 64x72, Denoising strength: 0.4, Hires upscale: 1.5, Hires upscaler: Latent, "
            "Variation seed: 5, Variation seed strength: 0.3")


def test_values_follow_the_component_types() -> None:
    with gr.Blocks():
        prompt, steps = gr.Textbox(), gr.Slider(1, 150, step=1)
        cfg, seed = gr.Slider(1, 30, step=0.5), gr.Number(precision=0)
        sampler = gr.Dropdown(["DPM++ 2M", "Euler a"])
        scheduler = gr.Dropdown(["Automatic", "Karras"])
        hires = gr.Checkbox()
        upscaler = gr.Dropdown(["Latent", "Lanczos"])
        missing = gr.Textbox()
    fields = [paste.PasteField(prompt, "Prompt"), paste.PasteField(steps, "Steps"), paste.PasteField(cfg, "CFG scale"),
              paste.PasteField(seed, "Seed"), paste.PasteField(sampler, paste.sampler_name),
              paste.PasteField(scheduler, paste.scheduler_label), paste.PasteField(hires, paste.hires_enabled),
              paste.PasteField(upscaler, "Hires upscaler"), paste.PasteField(missing, "Not a key")]
    values = paste.values_for(paste.parse(INFOTEXT, Options(), StyleDatabase()), fields)
    # Karras is DPM++ 2M's own schedule, so A1111's resolution reports it as Automatic.
    assert values[:8] == ["a (red:1.2) fox", 12, 6.5, 99, "DPM++ 2M", "Automatic", True, "Latent"]
    assert values[8] == gr.skip()


def test_unknown_choices_and_bad_numbers_leave_the_field_alone() -> None:
    with gr.Blocks():
        sampler = gr.Dropdown(["Euler"])
        steps = gr.Slider(1, 150, step=1)
    params = {"Sampler": "Euler", "Steps": "many", "Schedule type": "Automatic"}
    assert paste.values_for(params, [paste.PasteField(sampler, "Hires upscaler"),
                                     paste.PasteField(steps, "Steps")]) == [gr.skip(), gr.skip()]
    with gr.Blocks():
        only_euler = gr.Dropdown(["Euler"])
    assert paste.values_for({"X": "DPM++ 2M"}, [paste.PasteField(only_euler, "X")]) == [gr.skip()]


def test_legacy_sampler_names_give_sampler_and_schedule() -> None:
    params = {"Sampler": "Euler Karras"}
    assert (paste.sampler_name(params), paste.scheduler_label(params)) == ("Euler", "Karras")
    assert paste.sampler_name({}) is None and paste.scheduler_label({}) is None


def test_hires_is_on_only_with_a_denoising_strength_and_a_hires_key() -> None:
    assert paste.hires_enabled({"Denoising strength": "0.5", "Hires upscale": "2"}) is True
    assert paste.hires_enabled({"Denoising strength": "0.5"}) is False
    assert paste.hires_enabled({"Hires upscale": "2"}) is None


def test_skip_fields_are_dropped() -> None:
    opts = Options()
    opts.set("infotext_skip_pasting", ["Seed"])
    params = paste.parse(INFOTEXT, opts, StyleDatabase())
    assert "Seed" not in params and params["Steps"] == "12"


def test_styles_and_override_settings_fields() -> None:
    with gr.Blocks():
        styles = gr.Dropdown(["Photo", "HQ"], multiselect=True)
        overrides = gr.Dropdown([], multiselect=True)
    params = {"Styles array": ["HQ"], "Clip skip": "2", "ENSD": "31337", "Steps": "12"}
    fields = [paste.PasteField(styles, paste.styles_array),
              paste.PasteField(overrides, lambda p: paste.override_settings_update(p, Options(), lambda n: None,
                                                                                   ["ENSD"]))]
    assert paste.values_for(params, fields) == [
        ["HQ"], gr.update(choices=["Clip skip: 2"], value=["Clip skip: 2"], visible=True)]
    # No settings to override: the dropdown empties and hides; no styles found: the selection stays.
    assert paste.values_for({"Clip skip": "1"}, fields) == [gr.skip(), gr.update(choices=[], value=[], visible=False)]
