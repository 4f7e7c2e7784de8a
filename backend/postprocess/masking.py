"""Image maths for img2img and inpainting, with A1111's exact behaviour (reference section 4.7).

Everything here is PIL + numpy; no torch, no OpenCV, no scikit-image. Where A1111 calls a
library we do not ship, the library's arithmetic is reproduced:

- `gaussian_blur_mask` is OpenCV's bit-exact 8-bit `GaussianBlur` (Q8 kernel built by error
  diffusion, integer convolution, reflect-101 borders), applied on X then on Y as A1111 does.
- `apply_color_correction` is scikit-image's `match_histograms` on 8-bit LAB followed by the
  `blendmodes` (2022) luminosity blend; with OpenCV's LAB values those two steps give A1111's
  pixels exactly. The sRGB<->LAB conversion itself is OpenCV's documented float formulas,
  while OpenCV's 8-bit path interpolates lookup tables: our LAB differs from it by up to 3
  levels on a quarter of colours, so corrected images differ from A1111's by about 0.3 levels
  on average, with rare pixels further off where the histogram mapping is steep.

The composed helpers `prepare_mask` and `prepare_init_image` follow the order of
`StableDiffusionProcessingImg2Img.init` so the img2img recipe can call them step by step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from backend.errors import InvalidRequest

Upscale = Callable[[Image.Image, int, int], Image.Image]
"""Grows an image towards (width, height); the result is Lanczos-resized to the exact size."""

CropRegion = tuple[int, int, int, int]
"""(x1, y1, x2, y2), right and bottom exclusive, as PIL's crop boxes."""

PasteLocation = tuple[int, int, int, int]
"""(x, y, width, height) of an "Only masked" crop box inside the full image (A1111's `paste_to`)."""

RESIZE_MODES: tuple[str, ...] = (
    "Just resize",
    "Crop and resize",
    "Resize and fill",
    "Just resize (latent upscale)",
)
"""A1111's resize mode labels; the index is the API's `resize_mode`."""

LATENT_UPSCALE_MODE = 3

# masking.fill's blur passes: (PIL Gaussian radius, how many times the result is composited).
_FILL_PASSES: tuple[tuple[int, int], ...] = ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1))

# OpenCV's fixed-point GaussianBlur works in Q8 (ufixedpoint16 for 8-bit images).
_Q8_ONE = 256

# OpenCV's sRGB (D65) matrices and white point, used by its RGB<->Lab conversions.
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_XYZ_TO_RGB = ((3.240479, -1.53715, -0.498535), (-0.969256, 1.875991, 0.041556), (0.055648, -0.204043, 1.057311))
_WHITE_D65 = (0.950456, 1.0, 1.088754)
_LAB_EPSILON = 0.008856
_LAB_KAPPA = 903.3

# blendmodes' luminance weights (Rec. 601), which A1111's colour correction inherits.
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)


# --- masks -----------------------------------------------------------------------------------


def create_binary_mask(image: Image.Image, round: bool = True) -> Image.Image:
    """Turn an uploaded mask into an "L" mask as A1111 does.

    An RGBA image whose alpha is not fully opaque is a painted mask: its alpha channel is the
    mask, thresholded (> 128 -> 255, else 0) when `round`. Anything else is converted to "L".
    """
    if image.mode == "RGBA" and image.getextrema()[-1] != (255, 255):
        alpha = image.getchannel("A")
        return alpha.point(lambda v: 255 if v > 128 else 0) if round else alpha
    return image.convert("L")


def blur_kernel_size(blur: int) -> int:
    """A1111's Gaussian kernel size for a mask blur of `blur` pixels: 2*int(2.5*blur + 0.5) + 1."""
    return 2 * int(2.5 * blur + 0.5) + 1


def gaussian_kernel_q8(ksize: int, sigma: float) -> np.ndarray:
    """OpenCV's fixed-point Gaussian kernel for 8-bit images: `ksize` int64 taps summing to 256.

    The float kernel is exp(-d^2 / (2 sigma^2)) normalised to sum 1 (the centre tap is exactly
    1/sum), as `getGaussianKernelBitExact` computes it. The outer taps are scaled by 256 and
    rounded half-to-even with the rounding error carried inwards, and the centre tap takes
    whatever makes the sum exactly 256 (`getGaussianKernelFixedPoint_ED`).
    """
    if ksize < 1 or ksize % 2 == 0:
        raise InvalidRequest("mask_blur", f"kernel size must be odd and >= 1, got {ksize}")
    if sigma <= 0:
        raise InvalidRequest("mask_blur", f"sigma must be > 0, got {sigma}")
    exponent_scale = -0.125 / (sigma * sigma)
    # OpenCV evaluates at doubled offsets x = 2d, hence -x^2/8 sigma^2 = -d^2/2 sigma^2.
    tails = [math.exp(float(x * x) * exponent_scale) for x in range(1 - ksize, 0, 2)]
    total = 0.0
    for value in tails:
        total += value
    normaliser = 1.0 / (total * 2.0 + 1.0)
    taps: list[int] = []
    error = 0.0
    for value in tails:
        adjusted = value * normaliser * _Q8_ONE + error
        rounded = round(adjusted)  # Python rounds half to even, like cvRound on a softdouble.
        error = adjusted - rounded
        taps.append(rounded)
    centre = _Q8_ONE - 2 * sum(taps)
    return np.array([*taps, centre, *reversed(taps)], dtype=np.int64)


def _reflect101(positions: np.ndarray, length: int) -> np.ndarray:
    """OpenCV's BORDER_REFLECT_101 index mapping (gfedcb|abcdefgh|gfedcba), for any offset."""
    if length == 1:
        return np.zeros_like(positions)
    period = 2 * (length - 1)
    folded = np.mod(positions, period)
    return np.where(folded >= length, period - folded, folded)


def _blur_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """One separable pass of OpenCV's 8-bit fixed-point blur; returns uint8."""
    length = values.shape[axis]
    radius = len(kernel) // 2
    source = np.take(values.astype(np.int64), _reflect101(np.arange(-radius, length + radius), length), axis=axis)
    accumulated = np.zeros(values.shape, dtype=np.int64)
    for offset, weight in enumerate(kernel):
        if weight:
            window = [slice(None)] * values.ndim
            window[axis] = slice(offset, offset + length)
            accumulated += int(weight) * source[tuple(window)]
    # Q8 sum back to 8 bits, rounding half up as OpenCV's fixed-point cast does.
    return ((accumulated + _Q8_ONE // 2) >> 8).astype(np.uint8)


def gaussian_blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """Blur a mask as A1111's img2img does: cv2.GaussianBlur on X, then separately on Y.

    Each axis with blur > 0 uses kernel size `blur_kernel_size(blur)` and sigma = blur, with
    OpenCV's reflect-101 border, and is rounded back to uint8 before the next pass. The
    arithmetic is OpenCV's bit-exact 8-bit path (Q8 kernel, integer sums, round half up), so
    results match cv2 exactly; the only possible difference is an exp() that rounds differently
    in its last bit and lands a kernel tap exactly on .5, which no A1111 blur value does.
    The mask is converted to "L" first; the result is "L".
    """
    for name, blur in (("mask_blur_x", blur_x), ("mask_blur_y", blur_y)):
        if blur < 0:
            raise InvalidRequest(name, f"must be >= 0, got {blur}")
    values = np.asarray(mask.convert("L"), dtype=np.uint8)
    if blur_x > 0:
        values = _blur_axis(values, gaussian_kernel_q8(blur_kernel_size(blur_x), float(blur_x)), axis=1)
    if blur_y > 0:
        values = _blur_axis(values, gaussian_kernel_q8(blur_kernel_size(blur_y), float(blur_y)), axis=0)
    return Image.fromarray(values)


def expand_mask_for_overlay(mask: Image.Image) -> Image.Image:
    """The "Whole picture" overlay mask: every value doubled and clipped to 255, as A1111 does.

    Doubling makes the half-blurred rim count as fully regenerated, so the overlay of original
    pixels only covers the outer half of the blur.
    """
    doubled = np.clip(np.asarray(mask).astype(np.float32) * 2, 0, 255).astype(np.uint8)
    return Image.fromarray(doubled)


def mask_for_latent(mask: Image.Image, latent_w: int, latent_h: int, round: bool) -> np.ndarray:
    """A1111's `latmask`: the mask at latent size as float32 (latent_h, latent_w) in [0, 1].

    The mask goes through RGB and is resized with PIL's default filter (bicubic), the red
    channel is kept and divided by 255, then rounded to 0/1 when `round` (A1111's mask_round).
    1 means "regenerate" (A1111's `nmask`); 1 - it is the `mask` that keeps the init latent.
    """
    resized = mask.convert("RGB").resize((latent_w, latent_h), resample=Image.Resampling.BICUBIC)
    latmask = np.asarray(resized, dtype=np.float32)[:, :, 0] / 255
    return np.around(latmask) if round else latmask


# --- "Only masked" crop region ---------------------------------------------------------------


def get_crop_region(mask: np.ndarray | Image.Image, pad: int = 0) -> CropRegion | None:
    """Bounding box of the mask's non-zero pixels, grown by `pad` and clamped to the mask.

    A1111's `get_crop_region_v2`: PIL's `getbbox` of the mask (arrays go through
    `Image.fromarray`), None when the mask is entirely zero.
    """
    image = mask if isinstance(mask, Image.Image) else Image.fromarray(np.asarray(mask))
    box = image.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return max(x1 - pad, 0), max(y1 - pad, 0), min(x2 + pad, image.width), min(y2 + pad, image.height)


def _widen(low: int, high: int, wanted: float, limit: int) -> tuple[int, int]:
    """Grow [low, high) towards `wanted` length, centred, then shift and clamp into [0, limit]."""
    diff = int(wanted - (high - low))
    low -= diff // 2
    high += diff - diff // 2
    if high >= limit:
        overshoot = high - limit
        high -= overshoot
        low -= overshoot
    if low < 0:
        high -= low
        low = 0
    if high >= limit:
        high = limit
    return low, high


def expand_crop_region(
    crop_region: CropRegion, processing_width: int, processing_height: int, image_width: int, image_height: int
) -> CropRegion:
    """Widen a crop region to the processing W:H aspect ratio, as A1111's `expand_crop_region`.

    Only the short side grows (by int(desired - current), split with the odd pixel after);
    a region that runs past the image is shifted back inside, and clamped when it cannot fit,
    in which case the aspect ratio is not reached.
    """
    x1, y1, x2, y2 = crop_region
    ratio_crop = (x2 - x1) / (y2 - y1)
    ratio_processing = processing_width / processing_height
    if ratio_crop > ratio_processing:
        y1, y2 = _widen(y1, y2, (x2 - x1) / ratio_processing, image_height)
    else:
        x1, x2 = _widen(x1, x2, (y2 - y1) * ratio_processing, image_width)
    return x1, y1, x2, y2


# --- fill, resize, paste back ----------------------------------------------------------------


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill" masked content: the masked area gets blurred colours from around it.

    The unmasked pixels (premultiplied, so the masked area is transparent) are blurred with
    PIL Gaussian radii 256, 64, 16 (x2), 4 (x4), 2 (x2) and 0, each result alpha-composited
    over the previous ones, the sharpest last, so unmasked pixels come back unchanged.
    """
    keep = ImageOps.invert(mask.convert("L"))
    premultiplied = Image.new("RGBa", image.size)
    premultiplied.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    result = Image.new("RGBA", image.size)
    for radius, repeats in _FILL_PASSES:
        blurred = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def _resize_one(im: Image.Image, width: int, height: int, upscale: Upscale | None) -> Image.Image:
    """A1111's inner resize: the upscaler only for growing non-"L" images, Lanczos otherwise."""
    if upscale is None or im.mode == "L":
        return im.resize((width, height), resample=Image.Resampling.LANCZOS)
    if max(width / im.width, height / im.height) > 1.0:
        im = upscale(im, width, height)
    if im.size != (width, height):
        im = im.resize((width, height), resample=Image.Resampling.LANCZOS)
    return im


def resize_image(
    resize_mode: int, im: Image.Image, width: int, height: int, upscale: Upscale | None = None
) -> Image.Image:
    """Resize an image to width x height the way A1111's `images.resize_image` does.

    - 0 "Just resize": stretch; the image keeps its mode.
    - 1 "Crop and resize": scale to cover (the other side is `side * target // source`),
      centre, crop. The result is RGB.
    - 2 "Resize and fill": scale to fit, centre, and fill each bar by stretching the image's
      edge row or column across it (PIL's default resampling of a zero-height/width box).
      The result is RGB.
    - 3 "Just resize (latent upscale)": A1111's function treats it as 2 (its `else` branch);
      img2img never resizes the init image in this mode (the latent is interpolated instead),
      but masks in "Whole picture" mode are resized with it, so this matches that.

    `upscale`, when given, is called to grow images whose scale exceeds 1 (never "L" images),
    as A1111 does with `upscaler_for_img2img`; Lanczos finishes to the exact size.
    """
    if resize_mode not in range(len(RESIZE_MODES)):
        raise InvalidRequest("resize_mode", f"must be 0-{len(RESIZE_MODES) - 1}, got {resize_mode}")
    if width < 1 or height < 1:
        raise InvalidRequest("width" if width < 1 else "height", f"must be >= 1, got {width}x{height}")
    if resize_mode == 0:
        return _resize_one(im, width, height, upscale)

    ratio = width / height
    src_ratio = im.width / im.height
    if resize_mode == 1:
        src_w = width if ratio > src_ratio else im.width * height // im.height
        src_h = height if ratio <= src_ratio else im.height * width // im.width
    else:
        src_w = width if ratio < src_ratio else im.width * height // im.height
        src_h = height if ratio >= src_ratio else im.height * width // im.width
    resized = _resize_one(im, src_w, src_h, upscale)
    result = Image.new("RGB", (width, height))
    result.paste(resized, box=(width // 2 - src_w // 2, height // 2 - src_h // 2))
    if resize_mode == 1:
        return result

    if ratio < src_ratio:
        bar = height // 2 - src_h // 2
        top = resized.resize((width, bar), box=(0, 0, width, 0))
        bottom = resized.resize((width, bar), box=(0, resized.height, width, resized.height))
        result.paste(top, box=(0, 0))
        result.paste(bottom, box=(0, bar + src_h))
    elif ratio > src_ratio:
        bar = width // 2 - src_w // 2
        left = resized.resize((bar, height), box=(0, 0, 0, height))
        right = resized.resize((bar, height), box=(resized.width, 0, resized.width, height))
        result.paste(left, box=(0, 0))
        result.paste(right, box=(bar + src_w, 0))
    return result


def uncrop(image: Image.Image, dest_size: tuple[int, int], paste_loc: PasteLocation) -> Image.Image:
    """Put an "Only masked" result back at its place on a transparent RGBA canvas of `dest_size`.

    The result is resized into the crop box with "Crop and resize", as A1111 does.
    """
    x, y, w, h = paste_loc
    canvas = Image.new("RGBA", dest_size)
    canvas.paste(resize_image(1, image, w, h), (x, y))
    return canvas


def apply_overlay(image: Image.Image, paste_loc: PasteLocation | None, overlay: Image.Image | None) -> Image.Image:
    """Composite the untouched original pixels (`overlay`, RGBA) over a generated image.

    With `paste_loc` ("Only masked"), the image is first put back into the full-size canvas
    with `uncrop`. The result is RGB. Without an overlay the image is returned unchanged.
    (A1111 also returns the image before compositing; that is `uncrop(...)`, or the input.)
    """
    if overlay is None:
        return image
    if paste_loc is not None:
        image = uncrop(image, overlay.size, paste_loc)
    composited = image.convert("RGBA")
    composited.alpha_composite(overlay)
    return composited.convert("RGB")


def make_overlay(image: Image.Image, mask_for_overlay: Image.Image) -> Image.Image:
    """The RGBA overlay of pixels to keep: the image where the mask is 0, fading out as it rises.

    Built premultiplied ("RGBa") and converted to RGBA, as A1111 does, so fully masked pixels
    are transparent black.
    """
    keep = ImageOps.invert(mask_for_overlay.convert("L"))
    premultiplied = Image.new("RGBa", image.size)
    premultiplied.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    return premultiplied.convert("RGBA")


# --- img2img init, step by step --------------------------------------------------------------


@dataclass(frozen=True)
class PreparedMask:
    """The masks A1111's img2img init derives from the user's mask.

    `image_mask` is the processing-size mask (used for fill, the latent mask and inpainting
    conditioning); None when "Only masked" found an empty mask and fell back to img2img.
    `mask_for_overlay` decides which original pixels are composited back. `crop_region` and
    `paste_to` are set in "Only masked" mode only.
    """

    image_mask: Image.Image | None
    mask_for_overlay: Image.Image | None
    crop_region: CropRegion | None
    paste_to: PasteLocation | None
    only_masked_fallback: bool


def prepare_mask(
    mask: Image.Image,
    *,
    width: int,
    height: int,
    resize_mode: int,
    mask_blur_x: int,
    mask_blur_y: int,
    mask_round: bool,
    inpainting_mask_invert: bool,
    inpaint_full_res: bool,
    inpaint_full_res_padding: int,
) -> PreparedMask:
    """Binary mask -> invert -> blur -> "Only masked" crop or "Whole picture" resize, as A1111.

    "Only masked": the crop region is the blurred mask's bounding box plus padding, widened to
    W:H; the mask is cropped and resized to W x H with "Resize and fill". An empty mask gives
    `only_masked_fallback` (A1111 then runs plain img2img and adds a comment).
    "Whole picture": the mask is resized with `resize_mode` and the overlay mask is doubled.
    """
    image_mask = create_binary_mask(mask, round=mask_round)
    if inpainting_mask_invert:
        image_mask = ImageOps.invert(image_mask)
    image_mask = gaussian_blur_mask(image_mask, mask_blur_x, mask_blur_y)

    if not inpaint_full_res:
        resized = resize_image(resize_mode, image_mask, width, height)
        return PreparedMask(resized, expand_mask_for_overlay(resized), None, None, False)

    crop_region = get_crop_region(image_mask, inpaint_full_res_padding)
    if crop_region is None:
        return PreparedMask(None, None, None, None, True)
    crop_region = expand_crop_region(crop_region, width, height, image_mask.width, image_mask.height)
    x1, y1, x2, y2 = crop_region
    cropped = resize_image(2, image_mask.crop(crop_region), width, height)
    return PreparedMask(cropped, image_mask, crop_region, (x1, y1, x2 - x1, y2 - y1), False)


@dataclass(frozen=True)
class PreparedImage:
    """One init image ready for the VAE, with its overlay and the overlay mask it used.

    A1111 keeps the overlay mask resized to the init image's size for the next images of the
    batch; pass `mask_for_overlay` on to the next `prepare_init_image` call to do the same.
    """

    image: Image.Image
    overlay: Image.Image | None
    mask_for_overlay: Image.Image | None


def prepare_init_image(
    image: Image.Image,
    prepared: PreparedMask,
    *,
    width: int,
    height: int,
    resize_mode: int,
    inpainting_fill: int,
    latent_mask: Image.Image | None = None,
    upscale: Upscale | None = None,
) -> PreparedImage:
    """Resize, overlay, crop and fill one (already flattened RGB) init image, as A1111's loop does.

    The image is resized with `resize_mode` unless "Only masked" crops it or the mode is latent
    upscale; its overlay is built from the overlay mask (resized to the image when sizes
    differ); "Only masked" then crops the crop region and resizes it with "Resize and fill";
    `inpainting_fill` 0, 2 and 3 prefill the masked area with `fill` (A1111 fills for every
    mode but "original"). `latent_mask` overrides the mask used for fill, as A1111's field does.
    """
    mask_for_overlay = prepared.mask_for_overlay
    if prepared.crop_region is None and resize_mode != LATENT_UPSCALE_MODE:
        image = resize_image(resize_mode, image, width, height, upscale)

    overlay = None
    if prepared.image_mask is not None and mask_for_overlay is not None:
        if mask_for_overlay.size != image.size:
            # A1111 resizes it like an image, so a non-"L" overlay mask may go through the upscaler.
            mask_for_overlay = resize_image(resize_mode, mask_for_overlay, image.width, image.height, upscale)
        overlay = make_overlay(image, mask_for_overlay)

    if prepared.crop_region is not None:
        image = resize_image(2, image.crop(prepared.crop_region), width, height, upscale)

    if prepared.image_mask is not None and inpainting_fill != 1:
        image = fill(image, latent_mask if latent_mask is not None else prepared.image_mask)
    return PreparedImage(image, overlay, mask_for_overlay)


# --- colour correction -----------------------------------------------------------------------


def _srgb_to_lab8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> OpenCV's 8-bit LAB (L*255/100, a+128, b+128), from float formulas."""
    c = rgb.astype(np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array(_RGB_TO_XYZ).T / np.array(_WHITE_D65)
    f = np.where(xyz > _LAB_EPSILON, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    y = xyz[..., 1]
    lightness = np.where(y > _LAB_EPSILON, 116.0 * f[..., 1] - 16.0, _LAB_KAPPA * y)
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    lab = np.stack([lightness * 255.0 / 100.0, a + 128.0, b + 128.0], axis=-1)
    return np.clip(np.rint(lab), 0, 255).astype(np.uint8)


def _lab8_to_srgb(lab: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit LAB -> uint8 RGB, from float formulas (inverse of `_srgb_to_lab8`)."""
    values = lab.astype(np.float64)
    lightness = values[..., 0] * 100.0 / 255.0
    a = values[..., 1] - 128.0
    b = values[..., 2] - 128.0
    dark = lightness <= _LAB_EPSILON * _LAB_KAPPA
    y = np.where(dark, lightness / _LAB_KAPPA, ((lightness + 16.0) / 116.0) ** 3)
    fy = np.where(dark, 7.787 * y + 16.0 / 116.0, (lightness + 16.0) / 116.0)
    fxz = np.stack([fy + a / 500.0, fy - b / 200.0], axis=-1)
    f_threshold = 7.787 * _LAB_EPSILON + 16.0 / 116.0
    xz = np.where(fxz <= f_threshold, (fxz - 16.0 / 116.0) / 7.787, fxz**3)
    xyz = np.stack([xz[..., 0], y, xz[..., 1]], axis=-1) * np.array(_WHITE_D65)
    linear = np.clip(xyz @ np.array(_XYZ_TO_RGB).T, 0.0, 1.0)
    c = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1.0 / 2.4) - 0.055)
    return np.clip(np.rint(c * 255.0), 0, 255).astype(np.uint8)


def _match_channel(source: np.ndarray, template: np.ndarray) -> np.ndarray:
    """scikit-image's cumulative-histogram matching of one uint8 channel (float result)."""
    source_counts = np.bincount(source.ravel(), minlength=256)
    template_counts = np.bincount(template.ravel(), minlength=256)
    template_values = np.nonzero(template_counts)[0]
    source_quantiles = np.cumsum(source_counts) / source.size
    template_quantiles = np.cumsum(template_counts[template_values]) / template.size
    mapped = np.interp(source_quantiles, template_quantiles, template_values)
    return mapped[source]


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Rec. 601 luma, summed in blendmodes' order so float results agree to the last bit."""
    return rgb[..., 0] * _LUMA_WEIGHTS[0] + rgb[..., 1] * _LUMA_WEIGHTS[1] + rgb[..., 2] * _LUMA_WEIGHTS[2]


def _luminosity_blend(colour: np.ndarray, luminance_from: np.ndarray) -> np.ndarray:
    """blendmodes 2022's LUMINOSITY for opaque images: colour's hue/saturation, the other's luma.

    Floats in [0, 1]. The out-of-gamut fix-ups are applied one after the other, with the
    min/max taken before either, exactly as that library does; the result is truncated to
    uint8 after clipping, as its float-to-int conversion does.
    """
    target = _luma(luminance_from)
    shifted = colour + (target - _luma(colour))[..., None]
    luma = _luma(shifted)[..., None]
    lowest = shifted.min(axis=-1, keepdims=True)
    highest = shifted.max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        raised = np.where(lowest < 0, luma + (shifted - luma) * luma / (luma - lowest), shifted)
        result = np.where(highest > 1, luma + (raised - luma) * (1 - luma) / (highest - luma), raised)
    return (np.clip(result, 0.0, 1.0) * 255).astype(np.uint8)


def color_correction_target(image: Image.Image) -> np.ndarray:
    """The colour reference A1111 records per init image: its 8-bit LAB pixels (H, W, 3)."""
    return _srgb_to_lab8(np.asarray(image.convert("RGB")))


def apply_color_correction(correction: np.ndarray, original_image: Image.Image) -> Image.Image:
    """Match a generated image's LAB histograms to the init image's, keeping its own luminance.

    As A1111: each LAB channel of the generated image is histogram-matched to `correction`
    (scikit-image's method; values truncated back to uint8 as its uint8 output does), converted
    back to RGB, and then the luminosity blend puts the generated image's luma on the matched
    colours. The LAB conversion is float-based (see the module docstring for how far that
    lands from OpenCV's).
    """
    original = np.asarray(original_image.convert("RGB"))
    lab = _srgb_to_lab8(original)
    if lab.shape[-1] != correction.shape[-1]:
        raise InvalidRequest("color_correction", "reference must have 3 LAB channels")
    matched = np.empty_like(lab)
    for channel in range(3):
        matched[..., channel] = _match_channel(lab[..., channel], correction[..., channel])
    corrected = _lab8_to_srgb(matched).astype(np.float64) / 255
    blended = _luminosity_blend(corrected, original.astype(np.float64) / 255)
    return Image.fromarray(blended)
