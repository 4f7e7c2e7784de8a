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
