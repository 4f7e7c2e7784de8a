"""Reading a pasted infotext: styles (option infotext_styles) and the settings it names."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import Options
from backend.processing.infotext_paste import (
    STYLES_ARRAY,
    infotext_settings,
    override_settings_from_texts,
    parse_pasted_infotext,
)
from backend.prompts.styles import StyleDatabase

PARAMS = "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"


@pytest.fixture
def styles(tmp_path: Path) -> StyleDatabase:
    (tmp_path / "styles.csv").write_text("name,prompt,negative_prompt\nPhoto,photo of {prompt},blurry\n"
                                         "HQ,best quality,\n", encoding="utf-8")
    return StyleDatabase([tmp_path / "styles.csv"])


def _opts(**values: object) -> Options:
    opts = Options()
    for key, value in values.items():
        opts.set(key, value)
    return opts


@pytest.mark.parametrize(("mode", "prompt", "negative", "array"), [
    # "Photo" (with {prompt}) matches first from the outside, so the list reads HQ, Photo, which
    # gives the same prompts again (A1111's greedy search does the same).
    ("Apply if any", "a dog", "ugly", ["HQ", "Photo"]),
    ("Apply", "a dog", "ugly", ["HQ", "Photo"]),
    ("Discard", "a dog", "ugly", None),
    ("Ignore", "photo of a dog, best quality", "ugly, blurry", None),
])
def test_styles_found_in_the_prompt(styles: StyleDatabase, mode: str, prompt: str, negative: str,
                                    array: list[str] | None) -> None:
    text = f"photo of a dog, best quality\nNegative prompt: ugly, blurry\n{PARAMS}"
    params = parse_pasted_infotext(text, _opts(infotext_styles=mode), styles)
    assert (params["Prompt"], params["Negative prompt"], params.get(STYLES_ARRAY)) == (prompt, negative, array)


def test_apply_clears_the_selection_when_no_style_is_found(styles: StyleDatabase) -> None:
    assert parse_pasted_infotext(f"a dog\n{PARAMS}", _opts(infotext_styles="Apply"), styles)[STYLES_ARRAY] == []
    assert STYLES_ARRAY not in parse_pasted_infotext(f"a dog\n{PARAMS}", _opts(), styles)


def test_hires_prompts_lose_the_same_styles(styles: StyleDatabase) -> None:
    text = f'photo of a dog\nNegative prompt: x, blurry\n{PARAMS}, Hires prompt: "photo of a cat"'
    params = parse_pasted_infotext(text, _opts(), styles)
    assert (params["Prompt"], params["Hires prompt"], params[STYLES_ARRAY]) == ("a dog", "a cat", ["Photo"])
    # Different styles in the hires prompt: nothing is stripped (A1111).
    text = f'photo of a dog\nNegative prompt: x, blurry\n{PARAMS}, Hires prompt: "a cat"'
    params = parse_pasted_infotext(text, _opts(), styles)
    assert params["Prompt"] == "photo of a dog" and STYLES_ARRAY not in params


def test_skip_pasting_applies_after_styles(styles: StyleDatabase) -> None:
    params = parse_pasted_infotext(f"a dog, best quality\n{PARAMS}", _opts(infotext_skip_pasting=["Seed"]), styles)
    assert "Seed" not in params and params[STYLES_ARRAY] == ["HQ"]


def test_settings_named_in_the_infotext() -> None:
    params = {"Clip skip": "2", "ENSD": "31337", "RNG": "CPU", "Schedule rho": "5.0", "Eta": "1.0",
              "Model hash": "abc", "Model": "other"}
    found = infotext_settings(params, _opts(), lambda name: None)
    assert [(s.option, s.value) for s in found] == [("CLIP_stop_at_last_layers", 2), ("randn_source", "CPU"),
                                                   ("eta_noise_seed_delta", 31337), ("rho", 5.0)]
    assert [s.text for s in found] == ["Clip skip: 2", "RNG: CPU", "ENSD: 31337", "Schedule rho: 5.0"]
    # Keys a tab pastes into its own fields, and values equal to the current options, are left out.
    assert infotext_settings(params, _opts(CLIP_stop_at_last_layers=2), lambda n: None, skip=["ENSD"])[0].key == "RNG"
    # A value the option cannot take is left out; a switch named with a value was on (A1111's cast).
    assert infotext_settings({"Clip skip": "two"}, _opts(), lambda n: None) == []
    assert [s.text for s in infotext_settings({"Face restoration": "CodeFormer"}, _opts(), lambda n: None)] == [
        "Face restoration: True"]


def test_model_only_when_auto_swap_is_on_and_found() -> None:
    titles = {"abc": "model.safetensors [abc]", "other": "other.safetensors [def]"}
    params = {"Model hash": "zzz", "Model": "other"}
    assert infotext_settings(params, _opts(), titles.get) == []  # disable_weights_auto_swap is on by default
    found = infotext_settings(params, _opts(disable_weights_auto_swap=False), titles.get)
    assert [(s.text, s.value) for s in found] == [("Model: other", "other.safetensors [def]")]
    found = infotext_settings({"Model hash": "abc"}, _opts(disable_weights_auto_swap=False), titles.get)
    assert [(s.text, s.value) for s in found] == [("Model hash: abc", "model.safetensors [abc]")]


def test_dropdown_texts_back_to_override_settings() -> None:
    assert override_settings_from_texts(["Clip skip: 2", "ENSD: 31337", "Model hash: abc", "junk", "Nope: 1"]) == {
        "CLIP_stop_at_last_layers": 2, "eta_noise_seed_delta": 31337, "sd_model_checkpoint": "abc"}
