"""A procedural, captioned image set: flat coloured shapes on plain backgrounds, with A1111-style captions.

It is the training data of the built-in model and the ground truth of its evaluator (`evaluator.py`).
Everything follows from integer seeds: `ShapeSpec.sample(rng)` draws one scene, `render(spec)` paints it
(4x supersampled, then box-filtered down, so edges are anti-aliased but deterministic), `caption(spec, rng)`
words it. Nothing is downloaded.

Vocabulary:
- shapes: circle, square, triangle (the training set); `HELD_OUT_SHAPE` (star) renders and is named by
  the evaluator but never appears in `training_specs`, so the LoRA-training issue can teach it;
- colours (shape and background): the six of `PALETTE`, the shape always different from its background;
- sizes: small / (unstated) medium / large; positions: centre, left, right, top, bottom (centre may go
  unstated); counts: one or two (two shapes sit side by side or one above the other, so they are small
  and take no position word); texture: plain or striped (darker stripes every few pixels).
- `HELD_OUT_COMBINATIONS`: (colour, shape, background) triples never produced for training, used to test
  that the model composes words it has only seen apart.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
COLOURS = tuple(PALETTE)
SHAPES = ("circle", "square", "triangle")
HELD_OUT_SHAPE = "star"
ALL_SHAPES = (*SHAPES, HELD_OUT_SHAPE)
POSITIONS = ("centre", "left", "right", "top", "bottom")
SIZES = ("small", "medium", "large")
TEXTURES = ("plain", "striped")

# (colour, shape, background): never in training, see the module docstring.
HELD_OUT_COMBINATIONS: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "green"),
    ("blue", "square", "yellow"),
    ("green", "triangle", "white"),
    ("yellow", "circle", "black"),
    ("white", "square", "red"),
    ("black", "triangle", "blue"),
)

SUPERSAMPLE = 4
# Radius (half the side of the bounding square) as a fraction of the image side.
SIZE_RADIUS = {"small": 0.13, "medium": 0.19, "large": 0.26}
# Centre offset of each position, as a fraction of the image side from the middle.
POSITION_OFFSET = {"centre": (0.0, 0.0), "left": (-0.25, 0.0), "right": (0.25, 0.0),
                   "top": (0.0, -0.25), "bottom": (0.0, 0.25)}
POSITION_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top",
                    "bottom": "at the bottom", "centre": "in the centre"}
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars"}


@dataclass(frozen=True)
class ShapeSpec:
    """One scene: what `render` draws and what `caption` says."""

    colour: str
    shape: str
    background: str
    size: str = "medium"
    position: str = "centre"
    count: int = 1
    texture: str = "plain"
    jitter: tuple[float, float] = (0.0, 0.0)  # extra centre offset, fraction of the side

    TWO_LAYOUTS: ClassVar[tuple[str, ...]] = ("row", "column")

    @property
    def combination(self) -> tuple[str, str, str]:
        """(colour, shape, background), the triple `HELD_OUT_COMBINATIONS` is made of."""
        return (self.colour, self.shape, self.background)

    @classmethod
    def sample(cls, rng: random.Random, shapes: tuple[str, ...] = SHAPES) -> ShapeSpec:
        """A random scene (any combination; `training_specs` filters out the held-out ones)."""
        colour = rng.choice(COLOURS)
        background = rng.choice([c for c in COLOURS if c != colour])
        shape = rng.choice(shapes)
        count = 2 if rng.random() < 0.15 else 1
        texture = "striped" if rng.random() < 0.1 else "plain"
        jitter = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
        if count == 2:
            return cls(colour, shape, background, "small", rng.choice(cls.TWO_LAYOUTS), 2, texture, jitter)
        return cls(colour, shape, background, rng.choice(SIZES), rng.choice(POSITIONS), 1, texture, jitter)


def training_specs(seed: int, count: int) -> list[ShapeSpec]:
    """`count` scenes drawn from `seed`, none of them a held-out combination or the held-out shape."""
    rng = random.Random(seed)
    held_out = set(HELD_OUT_COMBINATIONS)
    specs: list[ShapeSpec] = []
    while len(specs) < count:
        spec = ShapeSpec.sample(rng)
        if spec.combination not in held_out:
            specs.append(spec)
    return specs


def shape_centres(spec: ShapeSpec, side: int) -> list[tuple[float, float, float]]:
    """(x, y, radius) in pixels of each shape of `spec` in an image `side` pixels wide."""
    radius = SIZE_RADIUS[spec.size] * side
    jx, jy = spec.jitter[0] * side, spec.jitter[1] * side
    if spec.count == 2:
        gap = 0.22 * side
        offsets = [(-gap, 0.0), (gap, 0.0)] if spec.position == "row" else [(0.0, -gap), (0.0, gap)]
    else:
        dx, dy = POSITION_OFFSET[spec.position]
        offsets = [(dx * side, dy * side)]
    margin = radius + 0.04 * side  # keep a band of background along the border (the evaluator reads it)
    centres = []
    for ox, oy in offsets:
        x = min(max(side / 2 + ox + jx, margin), side - margin)
        y = min(max(side / 2 + oy + jy, margin), side - margin)
        centres.append((x, y, radius))
    return centres


def _outline(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of `shape` (None for the circle, which is drawn as an ellipse)."""
    if shape == "circle":
        return None
    if shape == "square":
        s = r * 0.9  # same visual weight as the circle
        return [(x - s, y - s), (x + s, y - s), (x + s, y + s), (x - s, y + s)]
    if shape == "triangle":
        return [(x, y - r), (x + r, y + r * 0.8), (x - r, y + r * 0.8)]
    if shape == "star":
        points = []
        for i in range(10):
            angle = -np.pi / 2 + i * np.pi / 5
            radius = r if i % 2 == 0 else r * 0.42
            points.append((x + radius * float(np.cos(angle)), y + radius * float(np.sin(angle)) + r * 0.08))
        return points
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: ShapeSpec, side: int = 64) -> Image.Image:
    """The scene as an RGB image `side` pixels square."""
    big = side * SUPERSAMPLE
    image = Image.new("RGB", (big, big), PALETTE[spec.background])
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    for x, y, r in shape_centres(spec, side):
        x, y, r = x * SUPERSAMPLE, y * SUPERSAMPLE, r * SUPERSAMPLE
        outline = _outline(spec.shape, x, y, r)
        if outline is None:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        else:
            draw.polygon(outline, fill=255)
    fill = Image.new("RGB", (big, big), PALETTE[spec.colour])
    if spec.texture == "striped":
        stripes = ImageDraw.Draw(fill)
        dark = tuple(int(c * 0.55) for c in PALETTE[spec.colour])
        period = 6 * SUPERSAMPLE
        for start in range(0, big, period):
            stripes.rectangle((0, start, big, start + period // 3 - 1), fill=dark)
    image.paste(fill, (0, 0), mask)
    return image.resize((side, side), Image.Resampling.BOX)


def caption(spec: ShapeSpec, rng: random.Random | None = None) -> str:
    """An A1111-style prompt for `spec`; with `rng`, one of several wordings (for training variety)."""
    rng = rng or random.Random(0)
    words = []
    if spec.size != "medium":
        words.append(spec.size)
    if spec.texture == "striped":
        words.append("striped")
    words.append(spec.colour)
    if spec.count == 2:
        subject = " ".join(["two", *words, PLURALS[spec.shape]])
        where = ""
    else:
        subject = " ".join(["a", *words, spec.shape])
        where = "" if spec.position == "centre" and rng.random() < 0.5 else " " + POSITION_PHRASES[spec.position]
    background = f"{spec.background} background"
    if rng.random() < 0.5:
        return f"{subject}{where} on a {background}"
    return f"{subject}{where}, {background}"


def prompt_for(colour: str, shape: str, background: str) -> str:
    """The canonical prompt for a single medium centred shape (what the evaluation asks for)."""
    return f"a {colour} {shape} on a {background} background"


def render_batch(specs: list[ShapeSpec], side: int = 64) -> np.ndarray:
    """uint8 array [n, side, side, 3] of the rendered scenes."""
    return np.stack([np.asarray(render(spec, side)) for spec in specs])
