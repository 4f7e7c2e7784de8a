"""Behaviour of the shipped, trained built-in model through the normal generation path (a few seeds each)."""
from __future__ import annotations

from pathlib import Path
from statistics import mean

import pytest

from backend.models import builtin
from backend.models.families import RESOLUTION_METADATA_KEY, family_by_name, native_resolution
from backend.models.registry import read_safetensors_metadata
from backend.processing import StableDiffusionProcessingTxt2Img, process_images
from backend.training import evaluator, shapes
from backend.training.evaluate import EMPHASIS_PROMPT, ModelUnderTest, hires_sharpness

SEEDS = range(4)


@pytest.fixture
def shapes_model(app_ctx) -> ModelUnderTest:
    return ModelUnderTest(app_ctx, app_ctx.registry.add_file(builtin.SHIPPED_WEIGHTS).title)


def test_shipped_file_is_a_small_native_64_checkpoint() -> None:
    assert builtin.SHIPPED_WEIGHTS.stat().st_size < 30_000_000
    metadata = read_safetensors_metadata(builtin.SHIPPED_WEIGHTS)
    assert metadata[RESOLUTION_METADATA_KEY] == "64x64" and "recipe" in str(metadata["sdwebui.training"])


def test_native_resolution_from_metadata_else_family() -> None:
    sd1, sd2v, sdxl = (family_by_name(name) for name in ("sd1", "sd2-v", "sdxl"))
    assert native_resolution(sd1, {RESOLUTION_METADATA_KEY: "64x64"}) == (64, 64)
    assert native_resolution(sd1, {RESOLUTION_METADATA_KEY: "1024x768"}) == (1024, 768)
    assert native_resolution(sd1, {RESOLUTION_METADATA_KEY: "65x64"}) == (512, 512)  # not a valid size
    assert native_resolution(sd1, {}) == (512, 512)
    assert native_resolution(sd2v) == (768, 768) and native_resolution(sdxl) == (1024, 1024)


def test_context_reads_native_size_from_the_file_header(shapes_model: ModelUnderTest) -> None:
    ctx = shapes_model.ctx
    assert ctx.native_size(shapes_model.checkpoint) == (64, 64)  # what the UI's size sliders start at
    assert ctx.native_size(builtin.DEFAULT_MODEL_FILENAME) == (512, 512)  # SD1 without metadata
    assert ctx.native_size(None) == (512, 512)


def test_unset_size_means_native_and_explicit_size_is_kept(shapes_model: ModelUnderTest) -> None:
    p = StableDiffusionProcessingTxt2Img(prompt="a red circle on a blue background", steps=2, do_not_save_samples=True,
                                         override_settings={"sd_model_checkpoint": shapes_model.checkpoint})
    processed = shapes_model.ctx.generate(p)
    assert processed.images[0].size == (64, 64) and "Size: 64x64" in processed.infotexts[0]
    assert p.width == 64 and p.height == 64
    wide = shapes_model.txt2img("a red circle on a blue background", range(1), width=128)
    assert wide[0].size == (128, 64)


def test_process_images_called_directly_resolves_the_native_size_too(shapes_model: ModelUnderTest) -> None:
    p = StableDiffusionProcessingTxt2Img(prompt="a blue square", steps=1, height=128, do_not_save_samples=True,
                                         override_settings={"sd_model_checkpoint": shapes_model.checkpoint})
    processed = process_images(p, shapes_model.ctx.processing_context())
    assert processed.images[0].size == (64, 128)


def test_held_out_prompts_get_colour_shape_and_background(shapes_model: ModelUnderTest) -> None:
    scores = []
    for colour, shape, background in (shapes.HELD_OUT_COMBINATIONS[1], shapes.HELD_OUT_COMBINATIONS[5]):
        spec = shapes.ShapeSpec(colour, shape, background)
        images = shapes_model.txt2img(shapes.prompt_for(colour, shape, background), SEEDS)
        scores += [evaluator.score(image, spec) for image in images]
    # Chance is 1/6 for either colour and 1/3 for the shape; these combinations were never trained.
    assert mean(s.background for s in scores) >= 0.75
    assert mean(s.colour for s in scores) >= 0.75
    assert mean(s.shape for s in scores) >= 0.75


def _red(shapes_model: ModelUnderTest, word: str) -> float:
    return mean(evaluator.red_score(image) for image in shapes_model.txt2img(EMPHASIS_PROMPT.format(word), SEEDS))


def test_prompt_editing_switches_the_colour(shapes_model: ModelUnderTest) -> None:
    assert _red(shapes_model, "[red:blue:0.5]") < _red(shapes_model, "red")


def test_img2img_at_low_denoising_keeps_the_layout(shapes_model: ModelUnderTest) -> None:
    kept = []
    for seed, spec in enumerate((shapes.ShapeSpec("green", "square", "black", position="left"),
                                 shapes.ShapeSpec("white", "triangle", "blue", position="right"),
                                 shapes.ShapeSpec("red", "circle", "yellow", position="top"),
                                 shapes.ShapeSpec("yellow", "square", "red", position="bottom"))):
        result = evaluator.assess(shapes_model.img2img(shapes.render(spec), shapes.caption(spec), seed, 0.3))
        kept.append(result.position == spec.position and result.shape == spec.shape
                    and result.background == spec.background)
    assert mean(kept) >= 0.75


def test_hires_fix_is_sharper_than_resizing_the_first_pass(shapes_model: ModelUnderTest) -> None:
    figures = hires_sharpness(shapes_model, 2)
    assert figures["hires"] > figures["resize"] and figures["hires_sharper_share"] == 1


def test_default_model_is_copied_into_an_empty_models_folder(tmp_path: Path) -> None:
    path = builtin.ensure_default_model(tmp_path)
    assert path == tmp_path / "Stable-diffusion" / builtin.SHAPES_MODEL_FILENAME
    assert path.read_bytes() == builtin.SHIPPED_WEIGHTS.read_bytes()
    assert builtin.ensure_default_model(tmp_path) == path
    other = tmp_path / "other"
    builtin.ensure_random_model(other)
    assert builtin.ensure_default_model(other) is None  # a folder with models of its own gets nothing
