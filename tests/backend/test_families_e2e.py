"""txt2img through process_images for every family, with tiny checkpoints of the real layouts.

Exercises what only these families have: SD2's OpenCLIP encoder, SDXL's two encoders, pooled
output, size conditioning and zeroed empty negative, and the 9-channel inpainting input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.processing import StableDiffusionProcessingTxt2Img
from tests.backend.models.tiny_checkpoints import VAE_DIMS_8X, build_tiny_model, write_checkpoint


@pytest.fixture(scope="module")
def family_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("family-models")
    sd_dir = root / "Stable-diffusion"
    sd_dir.mkdir()
    for name in ("sd2", "sdxl", "sd1-inpaint", "sdxl-inpaint"):
        write_checkpoint(sd_dir / f"tiny-{name}.safetensors", build_tiny_model(name, seed=1, vae_dims=VAE_DIMS_8X).state_dict())
    return root


@pytest.fixture
def ctx(tmp_path: Path, family_models: Path):
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(family_models)], env={})
    app = AppContext.build(settings, devices=DevicePolicy.cpu())
    app.start()
    yield app
    app.stop()


@pytest.mark.parametrize("name", ["sd2", "sdxl", "sd1-inpaint", "sdxl-inpaint"])
def test_family_generates_with_a1111_infotext(ctx, name: str) -> None:
    p = StableDiffusionProcessingTxt2Img(prompt="a (red:1.2) boat BREAK sea", negative_prompt="", steps=3,
                                         width=64, height=64, seed=4, sampler_name="Euler a", batch_size=2,
                                         do_not_save_samples=True, do_not_save_grid=True,
                                         override_settings={"sd_model_checkpoint": f"tiny-{name}"})
    processed = ctx.generate(p)
    assert len(processed.images) == 2
    assert processed.images[0].size == (64, 64)
    assert f"Model: tiny-{name}," in processed.infotexts[0]
    again = ctx.generate(StableDiffusionProcessingTxt2Img(
        prompt="a (red:1.2) boat BREAK sea", steps=3, width=64, height=64, seed=5, sampler_name="Euler a",
        do_not_save_samples=True, override_settings={"sd_model_checkpoint": f"tiny-{name}"}))
    diff = np.abs(np.asarray(processed.images[1], dtype=int) - np.asarray(again.images[0], dtype=int)).max()
    assert diff <= 1  # image 1 of the batch == a single run with seed+1


@pytest.mark.parametrize("name", ["sd1-inpaint", "sdxl-inpaint"])
@pytest.mark.parametrize("full_res", [False, True])
def test_inpainting_checkpoint_gets_mask_and_masked_image(ctx, name: str, full_res: bool) -> None:
    from PIL import Image, ImageDraw

    from backend.processing import StableDiffusionProcessingImg2Img

    init = Image.new("RGB", (64, 64), (40, 120, 200))
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 40, 40), fill=255)
    p = StableDiffusionProcessingImg2Img(prompt="a cat", init_images=[init], mask=mask, mask_blur=0, steps=4,
                                         width=64, height=64, seed=2, inpaint_full_res=full_res,
                                         do_not_save_samples=True,
                                         override_settings={"sd_model_checkpoint": f"tiny-{name}",
                                                            "inpainting_mask_weight": 0.5})
    processed = ctx.generate(p)
    out = np.asarray(processed.images[0], dtype=int)
    assert (out[:8, :8] == np.array([40, 120, 200])).all()  # untouched corner kept exactly
    assert "Conditional mask weight: 0.5" in processed.infotexts[0]
