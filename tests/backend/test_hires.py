"""Hires fix end to end with the built-in model (a1111.md 4.6)."""
from __future__ import annotations

import numpy as np
import pytest

from backend.errors import InvalidRequest
from backend.processing import StableDiffusionProcessingTxt2Img


def _p(**kw: object) -> StableDiffusionProcessingTxt2Img:
    base: dict[str, object] = dict(prompt="a castle", steps=3, width=64, height=64, seed=9, sampler_name="Euler a",
                                   enable_hr=True, denoising_strength=0.7, hr_scale=2.0,
                                   do_not_save_samples=True, do_not_save_grid=True)
    base.update(kw)
    return StableDiffusionProcessingTxt2Img(**base)  # type: ignore[arg-type]


def test_latent_hires_doubles_the_size_and_writes_a1111_keys(app_ctx) -> None:
    processed = app_ctx.generate(_p(hr_upscaler="Latent (nearest)", hr_second_pass_steps=2))
    assert processed.images[0].size == (128, 128)
    last = processed.infotexts[0].splitlines()[-1]
    assert "Size: 64x64," in last  # the first-pass size
    assert "Denoising strength: 0.7, Hires upscale: 2.0, Hires steps: 2, Hires upscaler: Latent (nearest)," in last


def test_default_upscaler_is_latent_and_not_written(app_ctx) -> None:
    processed = app_ctx.generate(_p())
    assert processed.images[0].size == (128, 128)
    assert "Hires upscaler" not in processed.infotexts[0] and "Hires upscale: 2.0" in processed.infotexts[0]


@pytest.mark.parametrize("mode", ["Latent", "Latent (antialiased)", "Latent (bicubic)",
                                  "Latent (bicubic antialiased)", "Latent (nearest)", "Latent (nearest-exact)"])
def test_every_latent_mode(app_ctx, mode: str) -> None:
    assert app_ctx.generate(_p(hr_upscaler=mode, hr_second_pass_steps=1)).images[0].size == (128, 128)


def test_denoising_zero_runs_no_second_pass_step(app_ctx) -> None:
    processed = app_ctx.generate(_p(denoising_strength=0.0))
    assert processed.images[0].size == (128, 128)
    assert "Denoising strength: 0.0" in processed.infotexts[0]


def test_resize_to_both_sizes_covers_then_crops(app_ctx) -> None:
    processed = app_ctx.generate(_p(hr_resize_x=128, hr_resize_y=96))
    assert processed.images[0].size == (128, 96)
    assert "Hires resize: 128x96" in processed.infotexts[0]


def test_resize_one_side_keeps_the_aspect(app_ctx) -> None:
    assert app_ctx.generate(_p(width=64, height=96, hr_resize_x=128)).images[0].size == (128, 192)


def test_hires_prompt_sampler_and_schedule_are_written(app_ctx) -> None:
    processed = app_ctx.generate(_p(hr_prompt="a castle at night", hr_sampler_name="DPM++ 2M",
                                    hr_scheduler="Karras", hr_second_pass_steps=2))
    last = processed.infotexts[0].splitlines()[-1]
    assert 'Hires sampler: DPM++ 2M, Hires prompt: a castle at night, Hires schedule type: Karras' in last


def test_prompt_editing_spans_both_passes(app_ctx) -> None:
    processed = app_ctx.generate(_p(prompt="a [castle:tower:1.5]", hr_second_pass_steps=2))
    assert processed.images[0].size == (128, 128)


def test_hires_is_deterministic(app_ctx) -> None:
    a = app_ctx.generate(_p()).images[0]
    b = app_ctx.generate(_p()).images[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_unknown_upscaler_is_rejected(app_ctx) -> None:
    with pytest.raises(InvalidRequest) as e:
        app_ctx.generate(_p(hr_upscaler="Nope 9x"))
    assert e.value.field == "hr_upscaler"


@pytest.fixture
def ctx_with_upscaler(tmp_path, builtin_checkpoint):
    """A context whose models folder has the built-in checkpoint and a tiny 2x ESRGAN-family model."""
    from backend.config import Settings
    from backend.context import AppContext
    from backend.devices import DevicePolicy
    from tests.backend.postprocess.tiny_weights import compact_state_dict, save_weights

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / builtin_checkpoint.name).symlink_to(builtin_checkpoint)
    save_weights(compact_state_dict(scale=2), models / "ESRGAN" / "tiny-compact-x2.pth")
    settings = Settings.from_args(["--data-dir", str(tmp_path / "data"), "--models-dir", str(models)], env={})
    app = AppContext.build(settings, devices=DevicePolicy.cpu())
    app.start()
    yield app
    app.stop()


@pytest.mark.parametrize("strength", [0.0, 0.5])
def test_model_upscaler_hires(ctx_with_upscaler, strength: float) -> None:
    processed = ctx_with_upscaler.generate(_p(hr_upscaler="tiny-compact-x2", denoising_strength=strength,
                                              hr_second_pass_steps=2))
    assert processed.images[0].size == (128, 128)
    assert "Hires upscaler: tiny-compact-x2" in processed.infotexts[0]


def test_upscale_of_an_existing_image_runs_only_the_hires_pass(app_ctx) -> None:
    first = app_ctx.generate(StableDiffusionProcessingTxt2Img(prompt="a castle", steps=3, width=64, height=64, seed=9,
                                                              sampler_name="Euler a", do_not_save_samples=True))
    again = app_ctx.generate(_p(firstpass_image=first.images[0], hr_upscaler="Latent", hr_second_pass_steps=2))
    assert again.images[0].size == (128, 128)
    assert app_ctx.state.job_no == 1  # one job: the hires pass only (a full run counts 2)
    plain = app_ctx.generate(_p(firstpass_image=first.images[0], hr_upscaler="Lanczos", denoising_strength=0.0))
    assert plain.images[0].size == (128, 128)


def test_firstpass_image_needs_enable_hr(app_ctx) -> None:
    from PIL import Image

    with pytest.raises(InvalidRequest) as e:
        app_ctx.generate(_p(enable_hr=False, firstpass_image=Image.new("RGB", (64, 64))))
    assert e.value.field == "firstpass_image"


def test_hires_checkpoint_switches_model_for_the_second_pass(tmp_path, builtin_checkpoint) -> None:
    import shutil

    from backend.config import Settings
    from backend.context import AppContext
    from backend.devices import DevicePolicy

    models = tmp_path / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(builtin_checkpoint, models / "first.safetensors")
    shutil.copy(builtin_checkpoint, models / "second.safetensors")
    settings = Settings.from_args(["--data-dir", str(tmp_path / "d"), "--models-dir", str(tmp_path / "models")], env={})
    app = AppContext.build(settings, devices=DevicePolicy.cpu())
    app.start()
    try:
        processed = app.generate(_p(hr_checkpoint_name="second", override_settings={"sd_model_checkpoint": "first"}))
        with pytest.raises(InvalidRequest) as e:
            app.generate(_p(hr_checkpoint_name="missing"))
    finally:
        app.stop()
    text = processed.infotexts[0]
    assert "Model: first," in text and "Denoising strength: 0.7, Hires checkpoint: second [" in text
    assert e.value.field == "hr_checkpoint_name"
