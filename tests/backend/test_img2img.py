"""End-to-end img2img and inpainting with the built-in model (a1111.md 4.4, 4.7)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.errors import InvalidRequest
from backend.processing import StableDiffusionProcessingImg2Img


def _init_image(w: int = 96, h: int = 64) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 90, np.float32)], axis=2)
    return Image.fromarray(arr.astype(np.uint8))


def _mask(w: int = 64, h: int = 64, box=(20, 20, 44, 44)) -> Image.Image:
    m = Image.new("L", (w, h), 0)
    ImageDraw.Draw(m).rectangle(box, fill=255)
    return m


def _p(**kw: object) -> StableDiffusionProcessingImg2Img:
    base: dict[str, object] = dict(prompt="a house", init_images=[_init_image()], width=64, height=64, steps=20,
                                   seed=5, sampler_name="Euler a", denoising_strength=0.75,
                                   do_not_save_samples=True, do_not_save_grid=True)
    base.update(kw)
    return StableDiffusionProcessingImg2Img(**base)  # type: ignore[arg-type]


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im.convert("RGB"), dtype=np.int16)


def test_img2img_runs_a1111_step_count_and_writes_infotext(app_ctx) -> None:
    processed = app_ctx.generate(_p())
    assert processed.images[0].size == (64, 64)
    assert app_ctx.state.sampling_steps == 16  # 20 steps at 0.75 run int(0.75*20)+1
    assert "Steps: 20, Sampler: Euler a," in processed.infotexts[0]
    assert "Denoising strength: 0.75" in processed.infotexts[0]


@pytest.mark.parametrize("resize_mode", [0, 1, 2, 3])
def test_every_resize_mode(app_ctx, resize_mode: int) -> None:
    processed = app_ctx.generate(_p(resize_mode=resize_mode, steps=4))
    assert processed.images[0].size == (64, 64)


def test_img2img_is_deterministic_and_depends_on_the_init_image(app_ctx) -> None:
    a = app_ctx.generate(_p(steps=6)).images[0]
    b = app_ctx.generate(_p(steps=6)).images[0]
    c = app_ctx.generate(_p(steps=6, init_images=[_init_image().transpose(Image.FLIP_LEFT_RIGHT)])).images[0]
    assert np.array_equal(_px(a), _px(b)) and not np.array_equal(_px(a), _px(c))


def test_one_init_image_is_repeated_and_too_many_is_an_error(app_ctx) -> None:
    assert len(app_ctx.generate(_p(steps=3, batch_size=2)).images) == 2
    with pytest.raises(InvalidRequest) as e:
        app_ctx.generate(_p(steps=3, batch_size=2, init_images=[_init_image()] * 3))
    assert e.value.field == "init_images"


def test_denoising_zero_runs_no_step(app_ctx) -> None:
    processed = app_ctx.generate(_p(denoising_strength=0.0))
    assert processed.images[0].size == (64, 64)


@pytest.mark.parametrize("fill,label", [(0, "fill"), (1, None), (2, "latent noise"), (3, "latent nothing")])
def test_inpaint_whole_picture_keeps_unmasked_pixels(app_ctx, fill: int, label: str | None) -> None:
    init = _init_image(64, 64)
    processed = app_ctx.generate(_p(init_images=[init], mask=_mask(), mask_blur=0, inpainting_fill=fill,
                                    inpaint_full_res=False, steps=6))
    out = _px(processed.images[0])
    outside = np.ones((64, 64), bool)
    outside[16:49, 16:49] = False  # a margin around the masked box
    assert np.array_equal(out[outside], _px(init)[outside])
    assert not np.array_equal(out[24:40, 24:40], _px(init)[24:40, 24:40])
    text = processed.infotexts[0]
    assert ("Masked content: " + label in text) if label else ("Masked content" not in text)


def test_inpaint_only_masked_pastes_back_into_the_crop_region(app_ctx) -> None:
    init = _init_image(128, 128)
    mask = _mask(128, 128, box=(80, 80, 100, 100))
    processed = app_ctx.generate(_p(init_images=[init], mask=mask, mask_blur=4, inpaint_full_res=True,
                                    inpaint_full_res_padding=8, steps=6))
    out = _px(processed.images[0])
    assert out.shape == (128, 128, 3)
    assert np.array_equal(out[:60, :60], _px(init)[:60, :60])  # far from the crop: untouched
    text = processed.infotexts[0]
    assert "Mask blur: 4, Inpaint area: Only masked, Masked area padding: 8" in text


def test_blank_mask_with_only_masked_falls_back_to_img2img(app_ctx) -> None:
    processed = app_ctx.generate(_p(mask=Image.new("L", (96, 64), 0), inpaint_full_res=True, steps=3))
    assert "Inpaint area" not in processed.infotexts[0]
    assert "blank" in processed.comments


def test_inverted_rgba_mask(app_ctx) -> None:
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).rectangle((0, 0, 31, 63), fill=(255, 255, 255, 255))
    processed = app_ctx.generate(_p(init_images=[_init_image(64, 64)], mask=rgba, inpainting_mask_invert=1,
                                    mask_blur=0, inpaint_full_res=False, steps=4))
    assert "Mask mode: Inpaint not masked" in processed.infotexts[0]
    # inverted: the left half (opaque in the mask) is kept
    assert np.array_equal(_px(processed.images[0])[:, :24], _px(_init_image(64, 64))[:, :24])


def test_mask_of_another_size_is_resized(app_ctx) -> None:
    processed = app_ctx.generate(_p(init_images=[_init_image(64, 64)], mask=_mask(32, 32, (8, 8, 20, 20)),
                                    inpaint_full_res=False, steps=3))
    assert processed.images[0].size == (64, 64)


def test_noise_multiplier_is_written(app_ctx) -> None:
    processed = app_ctx.generate(_p(initial_noise_multiplier=0.9, steps=3))
    assert "Noise multiplier: 0.9" in processed.infotexts[0]
