"""LoRA through the whole generation path: prompt tag -> patched weights -> image, infotext, restore."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.networks.registry import NetworkRegistry
from backend.processing import StableDiffusionProcessingTxt2Img
from tests.backend.networks.network_files import kohya_te, kohya_unet, random, save_network

FF_IN = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"
TE_FC1 = "encoder.layers.0.mlp.fc1"


@pytest.fixture
def ctx(tmp_path: Path, builtin_checkpoint: Path):
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / builtin_checkpoint.name).symlink_to(builtin_checkpoint)
    unet, te = kohya_unet(FF_IN), kohya_te(TE_FC1)
    save_network(models / "Lora" / "detail.safetensors", {
        f"{unet}.lora_up.weight": random(256, 4, seed=1, scale=2.0), f"{unet}.lora_down.weight": random(4, 32, seed=2, scale=2.0),
        f"{unet}.alpha": torch.tensor(4.0),
        f"{te}.lora_up.weight": random(128, 4, seed=3, scale=2.0), f"{te}.lora_down.weight": random(4, 32, seed=4, scale=2.0),
        f"{te}.alpha": torch.tensor(4.0)})
    settings = Settings.from_args(["--data-dir", str(tmp_path / "d"), "--models-dir", str(models)], env={})
    app = AppContext.build(settings, devices=DevicePolicy.cpu())
    app.start()
    yield app
    app.stop()


def _image(ctx: AppContext, prompt: str):
    return ctx.generate(StableDiffusionProcessingTxt2Img(prompt=prompt, steps=3, width=64, height=64, seed=8,
                                                         sampler_name="Euler", do_not_save_samples=True))


def test_lora_changes_the_image_writes_hashes_and_is_removed_after(ctx: AppContext, tmp_path: Path) -> None:
    plain = _image(ctx, "a house")
    with_lora = _image(ctx, "a house <lora:detail:1>")
    zero = _image(ctx, "a house <lora:detail:0>")
    after = _image(ctx, "a house")
    a, b = np.asarray(plain.images[0]), np.asarray(with_lora.images[0])
    assert not np.array_equal(a, b)
    assert np.array_equal(a, np.asarray(zero.images[0]))  # weight 0 == no LoRA
    assert np.array_equal(a, np.asarray(after.images[0]))  # weights restored bit for bit
    registry = NetworkRegistry([tmp_path / "models" / "Lora"])
    registry.refresh()
    info = registry.find("detail")
    assert info is not None
    registry.ensure_hash(info)
    assert f'Lora hashes: "detail: {info.shorthash}"' in with_lora.infotexts[0]
    assert with_lora.infotexts[0].startswith("a house <lora:detail:1>\n")


def test_missing_lora_is_noted_not_fatal(ctx: AppContext) -> None:
    processed = _image(ctx, "a house <lora:nothere:0.5>")
    assert "Lora not found: nothere" in processed.comments
    assert len(processed.images) == 1


def _hires(ctx: AppContext, prompt: str, hr_prompt: str):
    return ctx.generate(StableDiffusionProcessingTxt2Img(
        prompt=prompt, hr_prompt=hr_prompt, enable_hr=True, hr_scale=2, hr_second_pass_steps=2,
        denoising_strength=0.6, steps=3, width=64, height=64, seed=8, sampler_name="Euler", do_not_save_samples=True))


def test_hires_prompt_activates_its_own_networks(ctx: AppContext) -> None:
    def pixels(processed):
        return np.asarray(processed.images[0])

    plain = pixels(_hires(ctx, "a house", ""))
    hires_only = _hires(ctx, "a house", "a house <lora:detail:1>")
    assert not np.array_equal(plain, pixels(hires_only))
    assert 'Lora hashes: "detail: ' in hires_only.infotexts[0]
    assert np.array_equal(plain, pixels(_hires(ctx, "a house", "a house <lora:detail:0>")))
    # An empty hires prompt is the first prompt, networks included; a hires prompt without the tag drops it.
    both = pixels(_hires(ctx, "a house <lora:detail:1>", ""))
    first_only = pixels(_hires(ctx, "a house <lora:detail:1>", "a house"))
    assert not np.array_equal(both, first_only) and not np.array_equal(plain, first_only)
    missing = _hires(ctx, "a house", "a house <lora:nothere:1>")
    assert "Lora not found: nothere" in missing.comments
    assert np.array_equal(plain, pixels(_hires(ctx, "a house", "")))  # weights restored after all that
