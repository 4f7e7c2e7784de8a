"""Scores an image against the scene its prompt asked for, with classical computer vision (OpenCV).

No learned part, so it cannot share the generator model's blind spots and needs no training:

1. background: the median colour of a 2-pixel frame along the border (`shapes.render` keeps a band of
   background there), named by the nearest `shapes.PALETTE` colour in CIELAB (perceptual distances);
2. foreground: pixels farther than `FOREGROUND_DELTA_E` from that background colour, split into
   connected components; components smaller than a fraction of the largest are noise;
3. the largest component is narrowed to the pixels nearer to its core colour than to the background
   (its outline at half contrast, where a blurred edge lies); shape colour: median CIELAB colour of
   its interior (eroded, so edge pixels do not pull it towards the background), named like the background;
4. shape class from two scale-free measures of that region: solidity (area / convex hull
   area: the star's concave outline gives ~0.55, the others ~1) and extent (area / bounding box:
   square ~1, circle ~0.79, triangle ~0.5, the shapes being drawn axis-aligned);
5. position: the components' centroid relative to the image centre (centre when within 10% of it).

`red_score` (how red an image is) and `edge_sharpness` (how steep its strongest edges are) are the
continuous measures the emphasis and hires-fix checks use.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

from backend.training.shapes import PALETTE, ShapeSpec

FOREGROUND_DELTA_E = 18.0
CENTRE_TOLERANCE = 0.1
MIN_COMPONENT_FRACTION = 0.004  # of the image area
STAR_MAX_SOLIDITY = 0.78
SQUARE_MIN_EXTENT = 0.87
CIRCLE_MIN_EXTENT = 0.65

_NAMES = list(PALETTE)
_PALETTE_LAB = cv2.cvtColor(np.array([[PALETTE[n] for n in _NAMES]], dtype=np.float32) / 255,
                            cv2.COLOR_RGB2LAB)[0]


@dataclass(frozen=True)
class Assessment:
    """What the evaluator sees in one image (None where no shape was found)."""

    background: str
    colour: str | None
    shape: str | None
    position: str | None
    count: int
    solidity: float = 0.0
    extent: float = 0.0


def _as_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {array.shape}")
    return array.astype(np.uint8)


def nearest_colour(lab: np.ndarray) -> str:
    """The palette name nearest to one CIELAB colour."""
    return _NAMES[int(np.argmin(np.linalg.norm(_PALETTE_LAB - lab, axis=1)))]


def classify_outline(solidity: float, extent: float) -> str:
    """Shape class from solidity and extent (see the module docstring)."""
    if solidity < STAR_MAX_SOLIDITY:
        return "star"
    if extent >= SQUARE_MIN_EXTENT:
        return "square"
    if extent >= CIRCLE_MIN_EXTENT:
        return "circle"
    return "triangle"


def position_name(dx: float, dy: float) -> str:
    """centre/left/right/top/bottom from the offset of the centroid (fractions of the image side)."""
    if max(abs(dx), abs(dy)) < CENTRE_TOLERANCE:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _core_colour(lab: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Median CIELAB colour of `region` without its rim (anti-aliased or blurred edge pixels)."""
    interior = cv2.erode(region, np.ones((3, 3), np.uint8))
    return np.median(lab[(interior if interior.sum() >= 5 else region).astype(bool)], axis=0)


def _half_contrast_region(lab: np.ndarray, component: np.ndarray, background_lab: np.ndarray) -> np.ndarray:
    """The pixels around `component` nearer to its core colour than to the background: the outline at half
    contrast, where a blurred edge really lies (the first mask, any visible change, includes the blur)."""
    core = _core_colour(lab, component)
    nearer = np.linalg.norm(lab - core, axis=2) < np.linalg.norm(lab - background_lab, axis=2)
    region = (nearer & cv2.dilate(component, np.ones((3, 3), np.uint8)).astype(bool)).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
    if count < 2:
        return component
    return (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)


def assess(image: Image.Image | np.ndarray) -> Assessment:
    """Background colour, shape colour/class/position and shape count of an RGB image."""
    rgb = _as_rgb(image)
    height, width = rgb.shape[:2]
    lab = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    frame = np.concatenate([lab[:2].reshape(-1, 3), lab[-2:].reshape(-1, 3),
                            lab[:, :2].reshape(-1, 3), lab[:, -2:].reshape(-1, 3)])
    background_lab = np.median(frame, axis=0)
    background = nearest_colour(background_lab)
    mask = (np.linalg.norm(lab - background_lab, axis=2) > FOREGROUND_DELTA_E).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.size == 0 or areas.max() < MIN_COMPONENT_FRACTION * height * width:
        return Assessment(background, None, None, None, 0)
    largest = int(np.argmax(areas)) + 1
    kept = [i + 1 for i, area in enumerate(areas)
            if area >= max(MIN_COMPONENT_FRACTION * height * width, 0.25 * areas.max())]
    component = _half_contrast_region(lab, (labels == largest).astype(np.uint8), background_lab)
    colour = nearest_colour(_core_colour(lab, component))
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    outline = max(contours, key=cv2.contourArea)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, [outline], -1, 1, thickness=cv2.FILLED)
    area = float(filled.sum())
    hull = cv2.convexHull(outline)
    hull_mask = np.zeros_like(component)
    cv2.drawContours(hull_mask, [hull], -1, 1, thickness=cv2.FILLED)
    solidity = area / max(float(hull_mask.sum()), 1.0)
    _, _, box_w, box_h = cv2.boundingRect(outline)
    extent = area / max(box_w * box_h, 1)
    weights = areas[[i - 1 for i in kept]].astype(np.float64)
    cx, cy = (centroids[kept] * weights[:, None]).sum(axis=0) / weights.sum()
    position = position_name(cx / width - 0.5, cy / height - 0.5)
    return Assessment(background, colour, classify_outline(solidity, extent), position, len(kept),
                      solidity, extent)


@dataclass(frozen=True)
class Score:
    """Which parts of a scene an image got right."""

    colour: bool
    shape: bool
    background: bool
    position: bool
    assessment: Assessment


def score(image: Image.Image | np.ndarray, spec: ShapeSpec) -> Score:
    """Compare an image with the single-shape scene `spec` (position is only checked for count 1)."""
    seen = assess(image)
    position = seen.position == spec.position if spec.count == 1 else seen.count == spec.count
    return Score(seen.colour == spec.colour, seen.shape == spec.shape, seen.background == spec.background,
                 position, seen)


def red_score(image: Image.Image | np.ndarray) -> float:
    """Mean redness over the image: max(0, R - max(G, B)) / 255 per pixel, in [0, 1]."""
    rgb = _as_rgb(image).astype(np.float32)
    return float(np.clip(rgb[..., 0] - rgb[..., 1:].max(axis=-1), 0, None).mean() / 255)


def edge_sharpness(image: Image.Image | np.ndarray, top_fraction: float = 0.02) -> float:
    """Mean Sobel gradient magnitude (grey levels per pixel) over the strongest `top_fraction` of pixels.

    A blurred edge spreads the same contrast over more pixels, so its strongest gradients are lower:
    this rises with edge steepness and, taking only the top pixels, is not diluted by flat areas.
    """
    grey = cv2.cvtColor(_as_rgb(image), cv2.COLOR_RGB2GRAY).astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3))
    values = np.sort(magnitude.ravel())[::-1]
    return float(values[:max(1, int(values.size * top_fraction))].mean() / 8)  # Sobel's 3x3 gain is 8
