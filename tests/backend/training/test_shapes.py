"""The procedural shapes data set: deterministic, captioned, with held-out combinations kept out."""
from __future__ import annotations

import random

import numpy as np

from backend.training import shapes


def test_specs_and_images_are_deterministic_by_seed() -> None:
    first, again, other = (shapes.training_specs(seed, 40) for seed in (3, 3, 4))
    assert first == again and first != other
    assert np.array_equal(shapes.render_batch(first), shapes.render_batch(again))


def test_training_set_excludes_held_out_combinations_and_the_star() -> None:
    specs = shapes.training_specs(0, 3000)
    held_out = set(shapes.HELD_OUT_COMBINATIONS)
    assert not any(spec.combination in held_out for spec in specs)
    assert {spec.shape for spec in specs} == set(shapes.SHAPES)
    assert shapes.HELD_OUT_SHAPE not in shapes.SHAPES
    # Every word of a held-out triple is still seen in training, only not together.
    for colour, shape, background in held_out:
        assert any(s.colour == colour for s in specs) and any(s.background == background for s in specs)
        assert any(s.shape == shape for s in specs)
    assert {s.count for s in specs} == {1, 2} and {s.texture for s in specs} == {"plain", "striped"}
    assert all(s.colour != s.background for s in specs)


def test_render_draws_the_requested_colours() -> None:
    spec = shapes.ShapeSpec("red", "square", "blue", size="large")
    image = np.asarray(shapes.render(spec, 64))
    assert image.shape == (64, 64, 3)
    assert tuple(image[0, 0]) == shapes.PALETTE["blue"] and tuple(image[32, 32]) == shapes.PALETTE["red"]
    star = np.asarray(shapes.render(shapes.ShapeSpec("yellow", "star", "black"), 128))
    assert (star == shapes.PALETTE["yellow"]).all(axis=2).sum() > 500


def test_captions_are_a1111_style_prompts() -> None:
    rng = random.Random(0)
    spec = shapes.ShapeSpec("green", "triangle", "white", size="small", position="left", texture="striped")
    wordings = {shapes.caption(spec, rng) for _ in range(20)}
    assert wordings == {"a small striped green triangle on the left on a white background",
                        "a small striped green triangle on the left, white background"}
    two = shapes.ShapeSpec("red", "circle", "black", size="small", position="row", count=2)
    assert shapes.caption(two, rng).startswith("two small red circles")
    assert shapes.prompt_for("red", "circle", "green") == "a red circle on a green background"
