"""Control images: channel handling, the preprocessors' resolution step, and fitting a control map to
the generation size with A1111-ControlNet's resize modes (its `detectmap_proc`).

All images here are numpy uint8 arrays, H x W x C, RGB.
"""
from __future__ import annotations

from collections.abc import Callable
from enum import Enum

import cv2
import numpy as np
from PIL import Image


class ResizeMode(Enum):
    """How a control map is fitted to the generation size (A1111-ControlNet's names)."""

    RESIZE = "Just Resize"
    INNER_FIT = "Crop and Resize"
    OUTER_FIT = "Resize and Fill"


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """A PIL image or array as uint8 H x W x 3 RGB (alpha composited on white, as A1111's HWC3)."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGBA") if image.mode in ("RGBA", "LA", "P") else image.convert("RGB"))
    return hwc3(np.asarray(image))


def hwc3(x: np.ndarray) -> np.ndarray:
    """Gray -> RGB, RGBA -> RGB over white, RGB unchanged (A1111-ControlNet's HWC3)."""
    if x.dtype != np.uint8:
        x = np.clip(x, 0, 255).astype(np.uint8)
    if x.ndim == 2:
        x = x[:, :, None]
    channels = x.shape[2]
    if channels == 3:
        return x
    if channels == 1:
        return np.concatenate([x, x, x], axis=2)
    if channels == 4:
        color = x[:, :, :3].astype(np.float32)
        alpha = x[:, :, 3:4].astype(np.float32) / 255.0
        return (color * alpha + 255.0 * (1.0 - alpha)).clip(0, 255).astype(np.uint8)
    raise ValueError(f"image with {channels} channels")


def resize_with_pad(image: np.ndarray, resolution: float) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Scale so the short side is `resolution`, then pad right/bottom to multiples of 64 by repeating the
    edge; returns the padded image and a function that cuts a result back to the unpadded size.

    This is the resolution step every A1111-ControlNet annotator runs first (`resize_image_with_pad`).
    """
    img = hwc3(image)
    height, width = img.shape[:2]
    k = float(resolution) / float(min(height, width))
    target_h, target_w = int(np.round(height * k)), int(np.round(width * k))
    img = cv2.resize(img, (target_w, target_h), interpolation=cv2.INTER_CUBIC if k > 1 else cv2.INTER_AREA)
    pad_h, pad_w = -target_h % 64, -target_w % 64
    padded = np.pad(img, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")

    def remove_pad(result: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(result[:target_h, :target_w])

    return np.ascontiguousarray(padded), remove_pad


def high_quality_resize(x: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a control map without smearing what it encodes (A1111-ControlNet's high_quality_resize):
    maps with a few flat colours (segmentation) use nearest neighbour, shrinking uses area averaging,
    growing uses bicubic; black-and-white maps (edges, scribbles) are thresholded again (Otsu) so they
    stay binary. A1111 additionally thins one-pixel edges after upscaling; that step is not reproduced.
    """
    if x.shape[0] == height and x.shape[1] == width:
        return x
    unique_colors = len(np.unique(x.reshape(-1, x.shape[2]), axis=0))
    is_binary = unique_colors == 2 and int(x.min()) < 16 and int(x.max()) > 240
    if 2 < unique_colors < 200:
        interpolation = cv2.INTER_NEAREST
    elif width * height < x.shape[0] * x.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_CUBIC
    y = cv2.resize(x, (width, height), interpolation=interpolation)
    if y.ndim == 2:
        y = y[:, :, None]
    if is_binary:
        gray = np.mean(y.astype(np.float32), axis=2).clip(0, 255).astype(np.uint8)
        _, gray = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        y = np.stack([gray] * 3, axis=2)
    return y


def fit(detected_map: np.ndarray, mode: ResizeMode, width: int, height: int) -> np.ndarray:
    """The control map at exactly width x height.

    - Just Resize: stretch.
    - Crop and Resize: scale to cover, centre crop.
    - Resize and Fill: scale to fit, centre on a background of the map's median border colour.
    """
    detected_map = hwc3(detected_map)
    if mode is ResizeMode.RESIZE:
        return high_quality_resize(detected_map, width, height)
    old_h, old_w = detected_map.shape[:2]
    k_h, k_w = height / old_h, width / old_w
    if mode is ResizeMode.OUTER_FIT:
        k = min(k_h, k_w)
        borders = np.concatenate([detected_map[0], detected_map[-1], detected_map[:, 0], detected_map[:, -1]], axis=0)
        background = np.tile(np.median(borders, axis=0).astype(np.uint8)[None, None], [height, width, 1])
        resized = high_quality_resize(detected_map, int(np.round(old_w * k)), int(np.round(old_h * k)))
        new_h, new_w = resized.shape[:2]
        top, left = max(0, (height - new_h) // 2), max(0, (width - new_w) // 2)
        background[top:top + new_h, left:left + new_w] = resized[:height, :width]
        return background
    k = max(k_h, k_w)
    resized = high_quality_resize(detected_map, int(np.round(old_w * k)), int(np.round(old_h * k)))
    new_h, new_w = resized.shape[:2]
    top, left = max(0, (new_h - height) // 2), max(0, (new_w - width) // 2)
    return np.ascontiguousarray(resized[top:top + height, left:left + width])


def pixel_perfect_resolution(image: np.ndarray, width: int, height: int, mode: ResizeMode) -> int:
    """The annotator resolution that makes the control map land 1:1 on the generation size
    (A1111-ControlNet's pixel_perfect_resolution)."""
    raw_h, raw_w = image.shape[:2]
    k_h, k_w = height / raw_h, width / raw_w
    k = min(k_h, k_w) if mode is ResizeMode.OUTER_FIT else max(k_h, k_w)
    return int(np.round(k * min(raw_h, raw_w)))
