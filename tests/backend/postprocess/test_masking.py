"""Tests for backend/postprocess/masking.py: A1111's img2img/inpainting image maths (reference section 4.7).

Expected values are worked out by hand in the comments. The blur kernels were also checked
against cv2.GaussianBlur (OpenCV 4.10 and 5.0) on random masks, with zero differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.postprocess import masking
from backend.postprocess.masking import (
    PreparedMask,
    apply_color_correction,
    apply_overlay,
    blur_kernel_size,
    color_correction_target,
    create_binary_mask,
    expand_crop_region,
    expand_mask_for_overlay,
    fill,
    gaussian_blur_mask,
    gaussian_kernel_q8,
    get_crop_region,
    make_overlay,
    mask_for_latent,
    prepare_init_image,
    prepare_mask,
    resize_image,
    uncrop,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)
GREEN = (0, 255, 0)


def l_image(values: list[list[int]] | np.ndarray) -> Image.Image:
    return Image.fromarray(np.asarray(values, dtype=np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(int)


def random_rgb(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))


# --- binary mask -----------------------------------------------------------------------------


def test_binary_mask_from_painted_rgba_thresholds_alpha_above_128() -> None:
    rgba = np.zeros((1, 4, 4), dtype=np.uint8)
    rgba[0, :, 3] = [0, 128, 129, 255]
    image = Image.fromarray(rgba)
    assert pixels(create_binary_mask(image)).tolist() == [[0, 0, 255, 255]]
    assert pixels(create_binary_mask(image, round=False)).tolist() == [[0, 128, 129, 255]]


def test_binary_mask_from_opaque_rgba_and_rgb_is_the_luma() -> None:
    # Fully opaque alpha is not a painted mask: the colours are converted to L (ITU-R 601-2).
    opaque = Image.new("RGBA", (2, 1), (255, 0, 0, 255))
    assert pixels(create_binary_mask(opaque)).tolist() == [[76, 76]]
    white = Image.new("RGB", (2, 1), (255, 255, 255))
    assert create_binary_mask(white).mode == "L"
    assert pixels(create_binary_mask(white)).tolist() == [[255, 255]]


def test_binary_mask_keeps_l_masks_unchanged() -> None:
    mask = l_image([[0, 100, 200]])
    assert pixels(create_binary_mask(mask)).tolist() == [[0, 100, 200]]


# --- blur ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("blur", "size"), [(0, 1), (1, 7), (2, 11), (4, 21), (8, 41)])
def test_blur_kernel_size_is_2_int_2_5_blur_plus_half_plus_1(blur: int, size: int) -> None:
    assert blur_kernel_size(blur) == size


def test_q8_kernel_for_sigma_1_matches_hand_computation() -> None:
    # Tails exp(-4.5), exp(-2), exp(-0.5) = 0.011109, 0.135335, 0.606531; sum 2*0.752975+1 = 2.50595.
    # x256/sum: 1.1349, 13.8254, 61.9613. Error diffusion: 1 (err .1349), 14 (13.9603 -> err -.0397),
    # 62 (61.9216); centre 256 - 2*(1+14+62) = 102.
    assert gaussian_kernel_q8(7, 1.0).tolist() == [1, 14, 62, 102, 62, 14, 1]


def test_q8_kernel_for_sigma_2() -> None:
    assert gaussian_kernel_q8(11, 2.0).tolist() == [2, 7, 17, 31, 45, 52, 45, 31, 17, 7, 2]


@pytest.mark.parametrize("blur", [1, 3, 4, 7, 16, 33, 64])
def test_q8_kernels_are_symmetric_and_sum_to_256(blur: int) -> None:
    kernel = gaussian_kernel_q8(blur_kernel_size(blur), float(blur))
    assert kernel.sum() == 256
    assert kernel.tolist() == kernel[::-1].tolist()
    # Error diffusion keeps every running total of the outer taps within half a step of the
    # exact Gaussian's, even where single taps are dithered up or down.
    offsets = np.arange(len(kernel)) - len(kernel) // 2
    exact = np.exp(-(offsets**2) / (2.0 * blur * blur))
    exact = 256 * exact / exact.sum()
    outer = len(kernel) // 2
    assert np.all(np.abs(np.cumsum(kernel[:outer]) - np.cumsum(exact[:outer])) <= 0.5 + 1e-9)


def test_q8_kernel_rejects_even_sizes_and_non_positive_sigma() -> None:
    with pytest.raises(InvalidRequest):
        gaussian_kernel_q8(6, 1.0)
    with pytest.raises(InvalidRequest):
        gaussian_kernel_q8(7, 0.0)


def test_blur_of_an_impulse_is_the_kernel_rounded_half_up() -> None:
    # 255*k/256 rounded half up: k=1 -> (255+128)>>8 = 1, 14 -> 3698>>8 = 14, 62 -> 62, 102 -> 102.
    row = np.zeros((1, 13), dtype=np.uint8)
    row[0, 6] = 255
    blurred = gaussian_blur_mask(l_image(row), 1, 0)
    assert pixels(blurred).tolist() == [[0, 0, 0, 1, 14, 62, 102, 62, 14, 1, 0, 0, 0]]


def test_blur_uses_reflect_101_borders() -> None:
    # Impulse at x=0 of a 5-wide row: reflect-101 maps -1 -> 1, -2 -> 2, -3 -> 3, so the impulse is
    # seen once per output: 102, 62, 14, 1 then 0 (x=4 reaches 1..7, 5 -> 3, 6 -> 2, 7 -> 1).
    row = l_image([[255, 0, 0, 0, 0]])
    assert pixels(gaussian_blur_mask(row, 1, 0)).tolist() == [[102, 62, 14, 1, 0]]


def test_blur_y_runs_down_the_columns_and_x_only_along_rows() -> None:
    column = np.zeros((13, 1), dtype=np.uint8)
    column[6, 0] = 255
    blurred_y = pixels(gaussian_blur_mask(l_image(column), 0, 1))
    assert blurred_y[:, 0].tolist() == [0, 0, 0, 1, 14, 62, 102, 62, 14, 1, 0, 0, 0]
    # A 1-pixel-wide image has nothing to blur along X (OpenCV collapses the kernel).
    assert pixels(gaussian_blur_mask(l_image(column), 1, 0)).tolist() == column.tolist()


def test_blur_x_then_y_is_separable_product() -> None:
    square = np.zeros((13, 13), dtype=np.uint8)
    square[6, 6] = 255
    blurred = pixels(gaussian_blur_mask(l_image(square), 1, 1))
    # After X only row 6 is non-zero: [.., 1, 14, 62, 102, 62, 14, 1, ..]. Y then gives row 6
    # (102*v + 128) >> 8 and row 5 (62*v + 128) >> 8; the centre is 10532 >> 8 = 41.
    assert blurred[6, 6] == 41
    assert blurred[6, 5] == (62 * 102 + 128) >> 8  # 6452 >> 8 = 25
    assert blurred[5, 6] == (102 * 62 + 128) >> 8
    assert blurred.sum() > 0 and blurred[0, 0] == 0


def test_blur_keeps_constant_masks_and_zero_blur_is_identity() -> None:
    flat = l_image(np.full((9, 11), 128))
    assert pixels(gaussian_blur_mask(flat, 5, 3)).tolist() == pixels(flat).tolist()
    noisy = l_image((np.random.default_rng(3).random((6, 7)) * 255).astype(np.uint8))
    assert pixels(gaussian_blur_mask(noisy, 0, 0)).tolist() == pixels(noisy).tolist()


def test_blur_rejects_negative_values() -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        gaussian_blur_mask(l_image([[0]]), -1, 0)
    assert excinfo.value.field == "mask_blur_x"


# --- crop region -----------------------------------------------------------------------------


def test_crop_region_is_the_bbox_of_non_zero_pixels() -> None:
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[3:6, 2:5] = 255
    assert get_crop_region(mask) == (2, 3, 5, 6)
    assert get_crop_region(l_image(mask), pad=2) == (0, 1, 7, 8)
    assert get_crop_region(mask, pad=10) == (0, 0, 10, 8)


def test_crop_region_of_empty_mask_is_none() -> None:
    assert get_crop_region(np.zeros((4, 4), dtype=np.uint8)) is None
    assert get_crop_region(Image.new("L", (4, 4)), pad=3) is None


@pytest.mark.parametrize(
    ("region", "processing", "image", "expected"),
    [
        # 20x10 box, square output: height grows by int(20-10)=10, 5 above and 5 below.
        ((10, 10, 30, 20), (512, 512), (100, 100), (10, 5, 30, 25)),
        # Runs 5 past the bottom: shifted up by 5.
        ((10, 90, 30, 100), (512, 512), (100, 100), (10, 80, 30, 100)),
        # Runs 5 above the top: shifted down.
        ((10, 0, 30, 10), (512, 512), (100, 100), (10, 0, 30, 20)),
        # 10x20 box, 3:2 output: width 20*1.5 = 30, grows by 20, 10 each side.
        ((40, 40, 50, 60), (768, 512), (100, 100), (30, 40, 60, 60)),
        # Odd growth int(20-11)=9: 4 before, 5 after.
        ((40, 40, 51, 60), (512, 512), (100, 100), (36, 40, 56, 60)),
        # Fractional: 10*4/3 = 13.33 -> grows by 3 (1 and 2), -1 start shifted to 0.
        ((0, 0, 10, 10), (512, 384), (100, 100), (0, 0, 13, 10)),
        # Cannot fit: wanted height 100 in a 40-high image -> clamped to the whole height.
        ((0, 0, 100, 10), (512, 512), (100, 40), (0, 0, 100, 40)),
    ],
)
def test_expand_crop_region(
    region: tuple[int, int, int, int],
    processing: tuple[int, int],
    image: tuple[int, int],
    expected: tuple[int, int, int, int],
) -> None:
    assert expand_crop_region(region, *processing, *image) == expected


# --- fill ------------------------------------------------------------------------------------


def test_fill_leaves_unmasked_pixels_untouched_and_fills_from_surroundings() -> None:
    image = Image.new("RGB", (64, 32), RED)
    image.paste(BLUE, (32, 0, 64, 32))
    noisy = np.asarray(image).copy()
    noisy[::3, ::5] = (10, 200, 30)  # unmasked detail must survive exactly
    image = Image.fromarray(noisy)
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[8:24, 4:20] = 255  # inside the red half
    filled = pixels(fill(image, l_image(mask)))
    keep = mask == 0
    assert (filled[keep] == noisy.astype(int)[keep]).all()
    inside = filled[mask == 255]
    assert inside[:, 0].mean() > inside[:, 2].mean()  # reddish, taken from around the hole
    assert (inside != 0).any()


# --- resize ----------------------------------------------------------------------------------


def two_colour(width: int, height: int, *, split: str) -> Image.Image:
    image = Image.new("RGB", (width, height), RED)
    box = (width // 2, 0, width, height) if split == "vertical" else (0, height // 2, width, height)
    image.paste(BLUE, box)
    return image


def test_just_resize_stretches_and_keeps_mode() -> None:
    result = resize_image(0, two_colour(20, 10, split="vertical"), 40, 40)
    assert result.size == (40, 40)
    assert result.getpixel((5, 20)) == RED and result.getpixel((35, 20)) == BLUE
    assert resize_image(0, Image.new("L", (4, 4), 9), 8, 2).mode == "L"


def test_crop_and_resize_crops_the_centre() -> None:
    # 40x20 into 20x20: scaled to 40x20 (20 = height) and pasted at x = 10 - 20 = -10, so the
    # visible 20 columns are original columns 10..29: red on the left, blue on the right.
    result = resize_image(1, two_colour(40, 20, split="vertical"), 20, 20)
    assert result.size == (20, 20) and result.mode == "RGB"
    row = pixels(result)[10]
    assert [tuple(p) for p in row[:10]] == [RED] * 10
    assert [tuple(p) for p in row[10:]] == [BLUE] * 10
    # 20x40 into 20x20: rows 10..29 are kept.
    tall = pixels(resize_image(1, two_colour(20, 40, split="horizontal"), 20, 20))
    assert tuple(tall[5, 5]) == RED and tuple(tall[15, 5]) == BLUE


def test_resize_and_fill_stretches_edge_rows_into_the_bars() -> None:
    # 20x10 (top red, bottom blue) into 20x20: pasted at y=5, 5-row bars from the top/bottom rows.
    result = pixels(resize_image(2, two_colour(20, 10, split="horizontal"), 20, 20))
    column = [tuple(p) for p in result[:, 7]]
    assert column == [RED] * 10 + [BLUE] * 10


def test_resize_and_fill_stretches_edge_columns_into_the_bars() -> None:
    result = pixels(resize_image(2, two_colour(10, 20, split="vertical"), 20, 20))
    row = [tuple(p) for p in result[3]]
    assert row == [RED] * 10 + [BLUE] * 10


def test_latent_upscale_mode_resizes_like_resize_and_fill() -> None:
    image = random_rgb(30, 12, seed=4)
    assert pixels(resize_image(3, image, 24, 24)).tolist() == pixels(resize_image(2, image, 24, 24)).tolist()


def test_crop_and_fill_modes_return_rgb_even_for_masks() -> None:
    mask = Image.new("L", (10, 20), 200)
    result = resize_image(2, mask, 20, 20)
    assert result.mode == "RGB" and result.getpixel((10, 10)) == (200, 200, 200)


def test_resize_rejects_unknown_modes() -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        resize_image(4, Image.new("RGB", (2, 2)), 4, 4)
    assert excinfo.value.field == "resize_mode"


def test_upscaler_is_used_only_to_grow_colour_images() -> None:
    calls: list[tuple[tuple[int, int], int, int]] = []

    def upscale(im: Image.Image, width: int, height: int) -> Image.Image:
        calls.append((im.size, width, height))
        return im.resize((width + 3, height + 5), Image.Resampling.NEAREST)

    grown = resize_image(0, Image.new("RGB", (10, 10), GREEN), 30, 20, upscale=upscale)
    assert grown.size == (30, 20) and calls == [((10, 10), 30, 20)]
    resize_image(0, Image.new("RGB", (40, 40)), 30, 20, upscale=upscale)
    resize_image(0, Image.new("L", (10, 10)), 30, 20, upscale=upscale)
    assert len(calls) == 1
    # Crop and resize grows to the cover size (10x10 -> 30x30) before cropping to 30x20.
    resize_image(1, Image.new("RGB", (10, 10)), 30, 20, upscale=upscale)
    assert calls[-1] == ((10, 10), 30, 30)


# --- paste back ------------------------------------------------------------------------------


def test_uncrop_places_the_result_in_the_box_on_a_transparent_canvas() -> None:
    canvas = uncrop(Image.new("RGB", (32, 32), GREEN), (64, 48), (10, 5, 20, 20))
    assert canvas.mode == "RGBA" and canvas.size == (64, 48)
    assert canvas.getpixel((10, 5)) == (*GREEN, 255)
    assert canvas.getpixel((29, 24)) == (*GREEN, 255)
    assert canvas.getpixel((9, 5)) == (0, 0, 0, 0)
    assert canvas.getpixel((30, 25)) == (0, 0, 0, 0)


def test_only_masked_round_trip_restores_unmasked_pixels() -> None:
    original = random_rgb(64, 48, seed=1)
    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[20:30, 30:40] = 255
    crop = expand_crop_region(get_crop_region(mask, pad=4), 32, 32, 64, 48)
    x1, y1, x2, y2 = crop
    generated = Image.new("RGB", (32, 32), GREEN)
    result = pixels(apply_overlay(generated, (x1, y1, x2 - x1, y2 - y1), make_overlay(original, l_image(mask))))
    keep = mask == 0
    assert (result[keep] == pixels(original)[keep]).all()
    assert (result[mask == 255] == GREEN).all()


def test_whole_picture_overlay_and_missing_overlay() -> None:
    original = random_rgb(16, 16, seed=2)
    mask = np.zeros((16, 16), dtype=np.uint8)
    mask[:, 8:] = 255
    generated = Image.new("RGB", (16, 16), BLUE)
    result = pixels(apply_overlay(generated, None, make_overlay(original, l_image(mask))))
    assert (result[:, :8] == pixels(original)[:, :8]).all()
    assert (result[:, 8:] == BLUE).all()
    assert apply_overlay(generated, None, None) is generated


def test_overlay_alpha_is_the_inverted_mask() -> None:
    overlay = make_overlay(Image.new("RGB", (3, 1), RED), l_image([[0, 55, 255]]))
    assert [overlay.getpixel((x, 0))[3] for x in range(3)] == [255, 200, 0]
    assert overlay.getpixel((0, 0)) == (*RED, 255)


# --- mask helpers for the img2img recipe -------------------------------------------------------


def test_whole_picture_overlay_mask_doubles_and_clips() -> None:
    doubled = expand_mask_for_overlay(l_image([[0, 64, 127, 128, 200]]))
    assert pixels(doubled).tolist() == [[0, 128, 254, 255, 255]]


def test_latent_mask_rounds_to_zero_or_one() -> None:
    half = np.zeros((16, 16), dtype=np.uint8)
    half[:, :8] = 255
    rounded = mask_for_latent(l_image(half), 2, 2, round=True)
    assert rounded.dtype == np.float32 and rounded.shape == (2, 2)
    assert rounded.tolist() == [[1.0, 0.0], [1.0, 0.0]]
    soft = mask_for_latent(l_image(half), 2, 2, round=False)
    assert 0.5 < soft[0, 0] < 1.0 and 0.0 < soft[0, 1] < 0.5
    # Uniform 100 -> 100/255 = 0.392 -> 0; uniform 200 -> 0.784 -> 1.
    assert mask_for_latent(Image.new("L", (16, 8), 100), 2, 1, round=True).tolist() == [[0.0, 0.0]]
    assert mask_for_latent(Image.new("L", (16, 8), 200), 2, 1, round=True).tolist() == [[1.0, 1.0]]
    assert mask_for_latent(Image.new("L", (8, 8), 100), 1, 1, round=False)[0, 0] == pytest.approx(100 / 255)


def test_latent_mask_reads_the_red_channel_of_colour_masks() -> None:
    # A1111 converts to RGB and keeps channel 0: pure red is fully masked (L would give 76).
    red = Image.new("RGB", (8, 8), RED)
    assert mask_for_latent(red, 1, 1, round=True).tolist() == [[1.0]]


def test_prepare_mask_only_masked_crops_to_the_output_aspect() -> None:
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 30:50] = 255  # 20x10 box -> widened to 20x20 at the processing size 32x32
    prepared = prepare_mask(
        l_image(mask), width=32, height=32, resize_mode=0, mask_blur_x=0, mask_blur_y=0, mask_round=True,
        inpainting_mask_invert=False, inpaint_full_res=True, inpaint_full_res_padding=0,
    )
    assert prepared.crop_region == (30, 5, 50, 25)
    assert prepared.paste_to == (30, 5, 20, 20)
    assert prepared.image_mask is not None and prepared.image_mask.size == (32, 32)
    assert prepared.mask_for_overlay is not None and prepared.mask_for_overlay.size == (64, 64)
    assert not prepared.only_masked_fallback


def test_prepare_mask_falls_back_on_an_empty_only_masked_mask() -> None:
    prepared = prepare_mask(
        Image.new("L", (16, 16)), width=16, height=16, resize_mode=0, mask_blur_x=4, mask_blur_y=4,
        mask_round=True, inpainting_mask_invert=False, inpaint_full_res=True, inpaint_full_res_padding=8,
    )
    assert prepared == PreparedMask(None, None, None, None, True)


def test_prepare_mask_whole_picture_inverts_resizes_and_doubles() -> None:
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    prepared = prepare_mask(
        l_image(mask), width=16, height=16, resize_mode=0, mask_blur_x=0, mask_blur_y=0, mask_round=True,
        inpainting_mask_invert=True, inpaint_full_res=False, inpaint_full_res_padding=0,
    )
    assert prepared.crop_region is None and prepared.paste_to is None
    assert prepared.image_mask is not None and prepared.image_mask.size == (16, 16)
    values = pixels(prepared.image_mask)
    assert values[0, 0] == 0 and values[0, 15] == 255  # inverted: the right half is regenerated
    overlay_mask = pixels(prepared.mask_for_overlay)
    assert (overlay_mask == np.clip(values * 2, 0, 255)).all()


def test_prepare_init_image_only_masked_crops_and_builds_the_overlay() -> None:
    image = random_rgb(64, 64, seed=5)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 30:50] = 255
    prepared = prepare_mask(
        l_image(mask), width=32, height=32, resize_mode=0, mask_blur_x=0, mask_blur_y=0, mask_round=True,
        inpainting_mask_invert=False, inpaint_full_res=True, inpaint_full_res_padding=0,
    )
    original = prepare_init_image(image, prepared, width=32, height=32, resize_mode=0, inpainting_fill=1)
    assert original.image.size == (32, 32)
    expected = resize_image(2, image.crop((30, 5, 50, 25)), 32, 32)
    assert pixels(original.image).tolist() == pixels(expected).tolist()
    assert original.overlay is not None and original.overlay.size == (64, 64)
    filled = prepare_init_image(image, prepared, width=32, height=32, resize_mode=0, inpainting_fill=0)
    assert pixels(filled.image).tolist() != pixels(original.image).tolist()


def test_prepare_init_image_resizes_overlay_mask_to_an_unresized_latent_upscale_image() -> None:
    image = random_rgb(24, 24, seed=6)
    prepared = prepare_mask(
        Image.new("L", (24, 24), 255), width=32, height=32, resize_mode=3, mask_blur_x=0, mask_blur_y=0,
        mask_round=True, inpainting_mask_invert=False, inpaint_full_res=False, inpaint_full_res_padding=0,
    )
    result = prepare_init_image(image, prepared, width=32, height=32, resize_mode=3, inpainting_fill=1)
    assert result.image.size == (24, 24)  # latent upscale keeps the pixels at their size
    assert result.mask_for_overlay is not None and result.mask_for_overlay.size == (24, 24)


# --- colour correction -----------------------------------------------------------------------


def test_histogram_matching_maps_quantiles_onto_the_template() -> None:
    # Source quantiles 0.5 (value 0) and 1.0 (value 1); template values 10 and 20 at the same quantiles.
    source = np.array([0, 0, 1, 1], dtype=np.uint8)
    template = np.array([10, 20, 10, 20], dtype=np.uint8)
    assert masking._match_channel(source, template).tolist() == [10.0, 10.0, 20.0, 20.0]


def test_luminosity_blend_moves_colour_to_the_target_luma() -> None:
    # Luma of (0.2, 0.4, 0.6) = 0.0598 + 0.2348 + 0.0684 = 0.363; target 0.5 adds 0.137 to each:
    # (0.337, 0.537, 0.737) * 255 = (85.9, 136.9, 187.9), truncated.
    colour = np.array([[[0.2, 0.4, 0.6]]])
    grey = np.array([[[0.5, 0.5, 0.5]]])
    assert masking._luminosity_blend(colour, grey).tolist() == [[[85, 136, 187]]]
    # Out of gamut: red + 0.201 = (1.201, .201, .201); scaled about luma 0.5 by 0.5/0.701:
    # G, B = 0.5 - 0.299*0.5/0.701 = 0.2867 -> 73.
    clipped = masking._luminosity_blend(np.array([[[1.0, 0.0, 0.0]]]), grey)
    assert clipped[0, 0, 1:].tolist() == [73, 73] and clipped[0, 0, 0] >= 254


def test_color_correction_target_is_8bit_lab() -> None:
    lab = color_correction_target(Image.new("RGB", (2, 2), (255, 255, 255)))
    assert lab.dtype == np.uint8 and lab.shape == (2, 2, 3)
    assert lab[0, 0].tolist() == [255, 128, 128]  # L=100 -> 255, a=b=0 -> 128
    assert color_correction_target(Image.new("RGB", (1, 1))).tolist() == [[[0, 128, 128]]]


def test_color_correction_pulls_colours_towards_the_reference() -> None:
    rng = np.random.default_rng(7)
    base = rng.random((32, 32, 3))
    reference = Image.fromarray((base * [1.0, 0.6, 0.4] * 255).astype(np.uint8))
    generated = Image.fromarray((base * [0.4, 0.6, 1.0] * 255).astype(np.uint8))
    corrected = pixels(apply_color_correction(color_correction_target(reference), generated))
    before = np.abs(pixels(generated).mean((0, 1)) - pixels(reference).mean((0, 1))).sum()
    after = np.abs(corrected.mean((0, 1)) - pixels(reference).mean((0, 1))).sum()
    assert after < before / 3


def test_color_correction_against_itself_changes_little() -> None:
    image = random_rgb(40, 30, seed=8)
    corrected = apply_color_correction(color_correction_target(image), image)
    assert corrected.mode == "RGB" and corrected.size == image.size
    assert np.abs(pixels(corrected) - pixels(image)).mean() < 1.5
