"""Tests for backend/postprocess/infotext.py against the A1111 reference, section 5."""

from __future__ import annotations

import json

import pytest

from backend.errors import InvalidRequest
from backend.postprocess.infotext import (
    INFOTEXT_KEYS,
    add_extra_params,
    format_infotext,
    novelai_infotext,
    parse_infotext,
    quote,
    unquote,
)

# The defaults parse_infotext adds when a key is missing, typed as A1111 types them.
DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": 0,
    "Hires resize-2": 0,
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": 32,
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": 0,
    "Schedule min sigma": 0,
    "Schedule rho": 0,
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": False,
}

EXAMPLE_A = (
    "a cozy cabin in the woods, (snow:1.2), night\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x512, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Version: v1.10.1"
)
EXAMPLE_B = (
    "masterpiece, best quality, 1girl, <lora:add_detail:0.8>\n"
    "Negative prompt: (worst quality:1.4), lowres\n"
    "Steps: 28, Sampler: Euler a, Schedule type: Automatic, CFG scale: 6.5, Seed: 42, Size: 512x768, "
    "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 2.0, Hires steps: 15, Hires upscaler: R-ESRGAN 4x+, "
    'Lora hashes: "add_detail: 7c6d2a1ad1d0", Version: v1.10.1'
)


def test_keys_are_in_a1111_order_with_version_and_user_last():
    assert INFOTEXT_KEYS[:6] == ("Steps", "Sampler", "Schedule type", "CFG scale", "Image CFG scale", "Seed")
    assert INFOTEXT_KEYS[-4:] == ("RNG", "Tiling", "Version", "User")
    assert len(INFOTEXT_KEYS) == len(set(INFOTEXT_KEYS)) == 28
    assert (
        INFOTEXT_KEYS.index("VAE") < INFOTEXT_KEYS.index("Variation seed") < INFOTEXT_KEYS.index("Denoising strength")
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Euler a", "Euler a"),
        ("a, b", '"a, b"'),
        ("x: y", '"x: y"'),
        ('He said "hi", ok', '"He said \\"hi\\", ok"'),
        ("line\nbreak", '"line\\nbreak"'),
        ("ünïcode, ok", '"ünïcode, ok"'),
        (7.0, "7.0"),
        (20, "20"),
    ],
)
def test_quote_matches_a1111(value, expected):
    assert quote(value) == expected


@pytest.mark.parametrize("text", ["a, b", 'He said "hi", ok', "x: y", "line\nbreak"])
def test_unquote_inverts_quote(text):
    assert unquote(quote(text)) == text


@pytest.mark.parametrize("text", ["plain", '"unterminated', '"bad \\q json"', '"', ""])
def test_unquote_leaves_other_text_alone(text):
    assert unquote(text) == text


def _example_a_fixed() -> dict[str, object]:
    return {
        "Steps": 20,
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": 7,
        "Seed": 1234567890,
        "Size": "512x512",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Version": "v1.10.1",
    }


def test_format_example_a():
    text = format_infotext("a cozy cabin in the woods, (snow:1.2), night", "blurry, lowres", _example_a_fixed(), {})
    assert text == EXAMPLE_A


def test_format_example_b_places_extras_before_version():
    fixed = {
        "Version": "v1.10.1",  # given first on purpose: the order comes from INFOTEXT_KEYS
        "Steps": 28,
        "Sampler": "Euler a",
        "Schedule type": "Automatic",
        "CFG scale": 6.5,
        "Seed": 42,
        "Size": "512x768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "VAE hash": "735e4c3a44",
        "VAE": "vae-ft-mse-840000-ema-pruned.safetensors",
        "Denoising strength": 0.45,
        "Clip skip": 2,
        "RNG": None,
    }
    extra = {
        "Hires upscale": 2.0,
        "Hires steps": 15,
        "Hires upscaler": "R-ESRGAN 4x+",
        "Lora hashes": "add_detail: 7c6d2a1ad1d0",
    }
    text = format_infotext(
        "masterpiece, best quality, 1girl, <lora:add_detail:0.8>", "(worst quality:1.4), lowres", fixed, extra
    )
    assert text == EXAMPLE_B


def test_format_variation_seed_sits_between_vae_and_denoising():
    fixed = {
        "Steps": 20,
        "Seed": 100,
        "VAE": "x.safetensors",
        "Variation seed": 555,
        "Variation seed strength": 0.3,
        "Seed resize from": "768x512",
        "Denoising strength": 0.75,
    }
    params = format_infotext("p", "", fixed, {}).splitlines()[-1]
    assert params == (
        "Steps: 20, Seed: 100, VAE: x.safetensors, Variation seed: 555, Variation seed strength: 0.3, "
        "Seed resize from: 768x512, Denoising strength: 0.75"
    )


def test_format_extra_that_is_a_fixed_key_keeps_the_fixed_position():
    fixed = {"Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Automatic", "Version": "v1"}
    extra = {"Mask blur": 4, "Schedule type": "Karras", "Denoising strength": 0.5}
    params = format_infotext("p", "", fixed, extra).splitlines()[-1]
    assert (
        params
        == "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, Denoising strength: 0.5, Mask blur: 4, Version: v1"
    )


def test_format_drops_none_and_negative_line_and_strips():
    text = format_infotext(
        "  a cat  ", "", {"Steps": 20, "Seed": None, "Sampler": "Euler", "CFG scale": 7.0}, {"Eta": None}
    )
    assert text == "a cat  \nSteps: 20, Sampler: Euler, CFG scale: 7.0"


def test_format_writes_only_the_key_when_value_equals_key():
    params = format_infotext("p", "", {"Steps": 1}, {"Pad conds": "Pad conds"}).splitlines()[-1]
    assert params == "Steps: 1, Pad conds"


def test_format_rejects_unknown_fixed_keys():
    with pytest.raises(InvalidRequest) as error:
        format_infotext("p", "", {"Steps": 1, "Hires steps": 5}, {})
    assert error.value.field == "fixed"
    assert "Hires steps" in error.value.reason


def test_parse_verified_example():
    text = (
        "a photo of a cat, (masterpiece:1.2)\n"
        "Negative prompt: blurry, lowres\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, Size: 512x768, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
        'Lora hashes: "detail: 7c6d2a1ad1d0, add_more: 0123456789ab", Version: v1.10.1'
    )
    expected = {
        **DEFAULTS,
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "1234567890",
        "Size-1": "512",
        "Size-2": "768",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Lora hashes": "detail: 7c6d2a1ad1d0, add_more: 0123456789ab",
        "Version": "v1.10.1",
        "Prompt": "a photo of a cat, (masterpiece:1.2)",
        "Negative prompt": "blurry, lowres",
        "Emphasis": "Original",
    }
    result = parse_infotext(text)
    assert result == expected
    assert list(result)[:3] == ["Steps", "Sampler", "Schedule type"]


def test_parse_example_a_and_b():
    a = parse_infotext(EXAMPLE_A)
    assert (a["Prompt"], a["Negative prompt"]) == ("a cozy cabin in the woods, (snow:1.2), night", "blurry, lowres")
    assert (a["Size-1"], a["Size-2"], a["Schedule type"], a["Clip skip"]) == ("512", "512", "Karras", "1")

    b = parse_infotext(EXAMPLE_B)
    assert b["Prompt"] == "masterpiece, best quality, 1girl, <lora:add_detail:0.8>"
    assert b["Negative prompt"] == "(worst quality:1.4), lowres"
    assert (b["CFG scale"], b["Clip skip"], b["Hires upscale"], b["Hires steps"]) == ("6.5", "2", "2.0", "15")
    assert b["VAE"] == "vae-ft-mse-840000-ema-pruned.safetensors"
    assert b["Lora hashes"] == "add_detail: 7c6d2a1ad1d0"
    assert b["Emphasis"] == "Original"  # from the negative prompt's (worst quality:1.4)


def test_parse_inpaint_example_c_overrides_defaults():
    text = (
        "a house\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3027417361, Size: 512x512, "
        "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.75, Mask blur: 4, "
        "Inpaint area: Only masked, Masked area padding: 32, Version: v1.10.1"
    )
    result = parse_infotext(text)
    assert result["Inpaint area"] == "Only masked"
    assert result["Masked area padding"] == "32"  # parsed values stay strings
    assert result["Mask mode"] == "Inpaint masked"
    assert result["Negative prompt"] == ""
    assert "Emphasis" not in result


def test_parse_variation_and_hires_sizes_split():
    result = parse_infotext("p\nSteps: 1, Seed resize from: 768x512, Hires resize: 1024x1536, Seed: 3")
    assert (result["Seed resize from-1"], result["Seed resize from-2"]) == ("768", "512")
    assert (result["Hires resize-1"], result["Hires resize-2"]) == ("1024", "1536")


def test_last_line_with_fewer_than_three_pairs_is_prompt():
    result = parse_infotext("first line\nStyle: anime, Mood: calm")
    assert result["Prompt"] == "first line\nStyle: anime, Mood: calm"
    assert "Style" not in result


def test_parse_multiline_prompts():
    text = "line one\n  line two  \nNegative prompt: bad\nworse\nSteps: 5, Sampler: Euler, Seed: 1"
    result = parse_infotext(text)
    assert result["Prompt"] == "line one\nline two"
    assert result["Negative prompt"] == "bad\nworse"


def test_parse_prompt_only():
    result = parse_infotext("just a prompt")
    assert (result["Prompt"], result["Negative prompt"], result["Clip skip"]) == ("just a prompt", "", "1")


def test_parse_skips_empty_values_and_unquotes_escapes():
    result = parse_infotext('p\nSteps: 20, Empty: , Note: "say \\"hi\\", then: go", Seed: 1')
    assert "Empty" not in result
    assert result["Note"] == 'say "hi", then: go'


def test_parse_hypernet_fp8_and_skip_fields():
    text = "p\nSteps: 1, Seed: 2, Hypernet: anime, Hypernet strength: 0.5, FP8 weight: Enable for SDXL"
    result = parse_infotext(text, skip_fields=["Seed", "Not there"])
    assert result["Prompt"] == "p<hypernet:anime:0.5>"
    assert result["Cache FP16 weight for LoRA"] is False
    assert "Seed" not in result


def test_parse_old_first_pass_size():
    result = parse_infotext("p\nSteps: 1, Size: 1024x1024, First pass size: 0x0, Seed: 2")
    assert (result["Size-1"], result["Size-2"]) == (512, 512)
    assert (result["Hires resize-1"], result["Hires resize-2"]) == (1024, 1024)

    old_option = parse_infotext(
        "p\nSteps: 1, Size: 512x512, Hires resize: 1024x768, Seed: 2", use_old_hires_fix_width_height=True
    )
    assert (old_option["Size-1"], old_option["Size-2"]) == (1024, 768)


@pytest.mark.parametrize(
    ("version", "flags"),
    [
        (
            "v1.5.2",
            {
                "Old prompt editing timelines",
                "Pad conds v0",
                "Downcast alphas_cumprod",
                "Refiner switch by sampling steps",
            },
        ),
        (
            "v1.6.0-RC-12-gabcdef",
            {
                "Old prompt editing timelines",
                "Pad conds v0",
                "Downcast alphas_cumprod",
                "Refiner switch by sampling steps",
            },
        ),
        ("v1.6.0", {"Downcast alphas_cumprod", "Refiner switch by sampling steps"}),
        ("v1.7.0-224-g0123456", {"Downcast alphas_cumprod", "Refiner switch by sampling steps"}),
        ("v1.7.0-225-g0123456", {"Refiner switch by sampling steps"}),
        ("v1.10.1", set()),
        ("f2.0.1v1.10.1-previous-660-g12345", set()),
    ],
)
def test_backcompat_flags_follow_the_version(version, flags):
    text = f"a [b:c:5] prompt\nSteps: 20, Sampler: DDIM, Refiner: sdxl_refiner, Seed: 1, Version: {version}"
    result = parse_infotext(text)
    all_flags = (
        "Old prompt editing timelines",
        "Pad conds v0",
        "Downcast alphas_cumprod",
        "Refiner switch by sampling steps",
    )
    assert {flag for flag in all_flags if result.get(flag) is True} == flags


def test_backcompat_can_be_turned_off():
    result = parse_infotext("a [b:c:5]\nSteps: 20, Sampler: DDIM, Seed: 1, Version: v1.5.0", backcompat=False)
    assert "Old prompt editing timelines" not in result
    assert "Downcast alphas_cumprod" not in result


@pytest.mark.parametrize(
    ("prompt", "uses_emphasis"),
    [
        ("plain words", False),
        ("(word)", True),
        ("[word]", True),
        ("(word:1.3)", True),
        ("(word:1.0)", False),
        ("[(word)]", False),  # 1.1 * (1 / 1.1) is exactly 1.0 in floating point
        ("\\(escaped\\)", False),
        ("a BREAK b", False),
        ("(BREAK)", True),  # the empty text around BREAK is weighted
        ("(unclosed", True),
        ("word:1.2)", False),
        ("", False),
    ],
)
def test_emphasis_default_only_when_a_weight_changes(prompt, uses_emphasis):
    result = parse_infotext(f"{prompt}\nSteps: 20, Sampler: Euler, Seed: 1")
    assert ("Emphasis" in result) is uses_emphasis
    if uses_emphasis:
        assert result["Emphasis"] == "Original"


def test_emphasis_from_infotext_is_kept():
    assert parse_infotext("(a)\nSteps: 1, Seed: 1, Emphasis: No norm")["Emphasis"] == "No norm"


def test_round_trip_gives_back_every_value():
    fixed = {
        "Steps": 30,
        "Sampler": "DPM++ SDE",
        "Schedule type": "Exponential",
        "CFG scale": 4.5,
        "Seed": 987654321,
        "Size": "640x448",
        "Model hash": "0123456789",
        "Model": "my, model: v2",
        "Clip skip": 3,
        "RNG": "CPU",
        "Tiling": "True",
        "Version": "sdwebui-0.1.0",
        "User": "alice",
    }
    extra = {
        "Hires prompt": 'line one\nline "two"',
        "Lora hashes": "a: 1, b: 2",
        "Script: X/Y/Z plot": None,
        "ControlNet 0": "Module: canny, Model: control_sd15",
    }
    prompt, negative = "multi\nline (prompt:1.1)", "bad, ugly"
    result = parse_infotext(format_infotext(prompt, negative, fixed, extra))

    assert result["Prompt"] == prompt
    assert result["Negative prompt"] == negative
    assert (result["Size-1"], result["Size-2"]) == ("640", "448")
    for key, value in {**fixed, **extra}.items():
        if value is not None and key != "Size":
            assert result[key] == str(value), key
    assert "Script: X/Y/Z plot" not in result


def test_novelai_conversion():
    comment = json.dumps({"steps": 28, "sampler": "k_euler_ancestral", "scale": 11, "seed": 42, "uc": "lowres, bad"})
    text = novelai_infotext("1girl, solo", comment, 512, 768)
    assert text == (
        "1girl, solo\nNegative prompt: lowres, bad\n"
        "Steps: 28, Sampler: Euler a, CFG scale: 11, Seed: 42, Size: 512x768, Clip skip: 2, ENSD: 31337"
    )
    parsed = parse_infotext(text)
    assert (parsed["Sampler"], parsed["Clip skip"], parsed["ENSD"]) == ("Euler a", "2", "31337")


def test_novelai_sampler_names_and_bad_comments():
    def sampler(name: str) -> str:
        comment = json.dumps({"steps": 1, "sampler": name, "scale": 1, "seed": 1, "uc": ""})
        return parse_infotext(novelai_infotext("p", comment, 64, 64))["Sampler"]

    assert sampler("k_dpmpp_2m") == "DPM++ 2M"
    assert sampler("ddim") == "DDIM"
    assert sampler("k_dpmpp_2s_ancestral") == "Euler a"  # no such A1111 alias: A1111 falls back too
    assert novelai_infotext("p", "not json", 64, 64) is None
    assert novelai_infotext("p", json.dumps({"steps": 1}), 64, 64) is None
    assert novelai_infotext("p", "[1, 2]", 64, 64) is None


def test_infotext_module_does_not_import_torch_or_pil():
    import ast
    from pathlib import Path

    import backend.postprocess.infotext as module

    tree = ast.parse(Path(module.__file__).read_text(encoding="utf8"))
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"torch", "PIL", "numpy"}


def test_added_extra_params_go_before_version_and_user() -> None:
    text = 'a cat\nNegative prompt: dog\nSteps: 2, Seed: 1, Lora hashes: "x: 1", Version: v1, User: me'
    assert add_extra_params(text, {"Script": "X/Y/Z plot", "X Values": "1, 2", "Y Type": None}) == (
        'a cat\nNegative prompt: dog\nSteps: 2, Seed: 1, Lora hashes: "x: 1", Script: X/Y/Z plot, '
        'X Values: "1, 2", Version: v1, User: me')
    assert add_extra_params("p\nSteps: 2, User: me", {"Script": "s"}) == "p\nSteps: 2, Script: s, User: me"
    assert add_extra_params("p\nSteps: 2", {"Script": "s"}) == "p\nSteps: 2, Script: s"
    assert add_extra_params("p\nSteps: 2", {}) == "p\nSteps: 2"
