"""The evaluator against ground truth: rendered scenes of every kind are read back exactly."""
from __future__ import annotations

import random

import numpy as np
from PIL import Image, ImageFilter

from backend.training import evaluator, shapes


def test_reads_rendered_scenes_back_exactly() -> None:
    rng = random.Random(5)
    for _ in range(150):
        spec = shapes.ShapeSpec.sample(rng, shapes.ALL_SHAPES)
        for side in (64, 128):
            result = evaluator.score(shapes.render(spec, side), spec)
            assert (result.colour, result.shape, result.background, result.position) == (True,) * 4, (spec, result)


def test_held_out_prompts_and_the_star_are_recognised() -> None:
    for colour, shape, background in shapes.HELD_OUT_COMBINATIONS:
        seen = evaluator.assess(shapes.render(shapes.ShapeSpec(colour, shape, background)))
        assert (seen.colour, seen.shape, seen.background, seen.position, seen.count) == (
            colour, shape, background, "centre", 1)
    assert evaluator.assess(shapes.render(shapes.ShapeSpec("red", "star", "white"))).shape == "star"


def test_blank_image_has_no_shape() -> None:
    seen = evaluator.assess(Image.new("RGB", (64, 64), shapes.PALETTE["green"]))
    assert seen == evaluator.Assessment("green", None, None, None, 0)


def test_red_score_and_edge_sharpness_order_images() -> None:
    red, blue = (shapes.render(shapes.ShapeSpec(c, "square", "white", size="large")) for c in ("red", "blue"))
    assert evaluator.red_score(red) > 0.1 > evaluator.red_score(blue) == 0.0
    sharp = shapes.render(shapes.ShapeSpec("black", "square", "white"), 128)
    blurred = sharp.filter(ImageFilter.GaussianBlur(2))
    assert evaluator.edge_sharpness(sharp) > 1.5 * evaluator.edge_sharpness(blurred)
    assert evaluator.edge_sharpness(np.zeros((16, 16, 3), np.uint8)) == 0.0
