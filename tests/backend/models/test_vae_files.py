"""Separate VAE files (A1111's SD VAE setting): listing, loading, per-job selection and restoring.

The VAE files are the tiny test model's own VAE exported to the ldm layout with perturbed decoder
weights, so a generation with a file differs from one without.
"""
from __future__ import annotations

import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.errors import InvalidRequest
from backend.models import builtin
from backend.models.loader import write_safetensors
from backend.processing import Processed, StableDiffusionProcessingTxt2Img
from tests.backend.models.tiny_vaes import perturbed_vae, small_other_vae

CHECKPOINT = Path(builtin.CHECKPOINT_SUBDIR) / builtin.DEFAULT_MODEL_FILENAME


@pytest.fixture(scope="module")
def vae_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, builtin_model) -> Path:
    """A models folder with the tiny checkpoint and models/VAE holding three VAE files."""
    root = tmp_path_factory.mktemp("vae-models")
    (root / CHECKPOINT).parent.mkdir(parents=True)
    shutil.copy(models_dir / CHECKPOINT, root / CHECKPOINT)
    write_safetensors(perturbed_vae(builtin_model, 0.4, prefixed=False), root / "VAE" / "perturbed.safetensors")
    (root / "VAE" / "sub").mkdir()
    torch.save({"state_dict": perturbed_vae(builtin_model, -0.4, prefixed=True)}, root / "VAE" / "sub" / "prefixed.pt")
    write_safetensors(small_other_vae(), root / "VAE" / "other-family.safetensors")
    return root


@pytest.fixture
def ctx(tmp_path: Path, vae_models_dir: Path) -> Iterator[AppContext]:
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(vae_models_dir)], env={})
    context = AppContext.build(settings, devices=DevicePolicy.cpu())
    context.start()
    yield context
    context.stop()


def generate(ctx: AppContext, sd_vae: str | None = None) -> Processed:
    p = StableDiffusionProcessingTxt2Img(prompt="a red circle", steps=3, width=64, height=64, seed=11,
                                         sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True,
                                         override_settings={} if sd_vae is None else {"sd_vae": sd_vae})
    return ctx.generate(p)


def pixels(processed: Processed) -> np.ndarray:
    return np.asarray(processed.images[0])


def test_the_vae_folder_is_listed_by_file_name(ctx: AppContext, vae_models_dir: Path) -> None:
    listed = {vae.name: vae.filename for vae in ctx.models.vaes.list()}
    assert listed == {"other-family.safetensors": vae_models_dir / "VAE" / "other-family.safetensors",
                      "perturbed.safetensors": vae_models_dir / "VAE" / "perturbed.safetensors",
                      "prefixed.pt": vae_models_dir / "VAE" / "sub" / "prefixed.pt"}


def test_a_vae_file_changes_the_image_and_none_restores_the_model_exactly(ctx: AppContext,
                                                                          vae_models_dir: Path) -> None:
    own = generate(ctx)
    with_file = generate(ctx, "perturbed.safetensors")
    with_pickle = generate(ctx, "prefixed.pt")
    back = generate(ctx, "None")

    assert not np.array_equal(pixels(with_file), pixels(own))
    assert not np.array_equal(pixels(with_pickle), pixels(own))
    assert not np.array_equal(pixels(with_pickle), pixels(with_file))
    digest = hashlib.sha256((vae_models_dir / "VAE" / "perturbed.safetensors").read_bytes()).hexdigest()[:10]
    assert f"VAE hash: {digest}, VAE: perturbed.safetensors" in with_file.infotexts[0]
    assert "VAE: prefixed.pt" in with_pickle.infotexts[0]
    # The checkpoint's own VAE is never named (A1111), and its weights come back bit for bit.
    for text in (own.infotexts[0], back.infotexts[0]):
        assert "VAE hash:" not in text and ", VAE:" not in text
    assert np.array_equal(pixels(back), pixels(own))
    # The override applied to those requests only.
    assert ctx.options["sd_vae"] == "Automatic"


def test_the_setting_is_used_when_a_request_names_no_vae(ctx: AppContext) -> None:
    own = generate(ctx)
    ctx.options.set("sd_vae", "perturbed.safetensors")
    assert "VAE: perturbed.safetensors" in generate(ctx).infotexts[0]
    ctx.options.set("sd_vae", "Automatic")
    assert np.array_equal(pixels(generate(ctx)), pixels(own))


def test_automatic_takes_the_vae_beside_the_checkpoint(ctx: AppContext, vae_models_dir: Path,
                                                       builtin_model) -> None:
    own = generate(ctx, "None")
    sidecar = (vae_models_dir / CHECKPOINT).with_name(Path(builtin.DEFAULT_MODEL_FILENAME).stem + ".vae.safetensors")
    write_safetensors(perturbed_vae(builtin_model, 0.2, prefixed=False), sidecar)
    try:
        automatic = generate(ctx, "Automatic")
        assert f"VAE: {sidecar.name}" in automatic.infotexts[0]
        assert not np.array_equal(pixels(automatic), pixels(own))
        assert np.array_equal(pixels(generate(ctx, "None")), pixels(own))
    finally:
        sidecar.unlink()


@pytest.mark.parametrize("name", ["no-such-vae.safetensors", "other-family.safetensors"])
def test_unknown_or_misfitting_vae_is_an_invalid_sd_vae(ctx: AppContext, name: str) -> None:
    own = generate(ctx)
    with pytest.raises(InvalidRequest) as caught:
        generate(ctx, name)
    assert caught.value.field == "sd_vae" and name in caught.value.reason
    # A refused file leaves the model as it was.
    assert np.array_equal(pixels(generate(ctx)), pixels(own))


def test_vae_path_wins_over_the_setting(tmp_path: Path, vae_models_dir: Path) -> None:
    forced = vae_models_dir / "VAE" / "perturbed.safetensors"
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(vae_models_dir),
                                   "--vae-path", str(forced)], env={})
    context = AppContext.build(settings, devices=DevicePolicy.cpu())
    context.start()
    try:
        assert "VAE: perturbed.safetensors" in generate(context, "None").infotexts[0]
    finally:
        context.stop()


def test_xyz_plot_vae_axis_takes_the_files(ctx: AppContext) -> None:
    from backend.scripts.xyz_plot import axis_options

    axis = next(option for option in axis_options(False) if option.label == "VAE")
    assert axis.choices(ctx) == ["Automatic", "None", "other-family.safetensors", "perturbed.safetensors",
                                 "prefixed.pt"]
    own = generate(ctx)
    p = StableDiffusionProcessingTxt2Img(prompt="a red circle", steps=3, width=64, height=64, seed=11,
                                         sampler_name="Euler", do_not_save_samples=True, do_not_save_grid=True)
    runner = ctx.scripts.txt2img
    index = axis_options(False).index(axis)
    runner.bind(p, runner.script_args("x/y/z plot", [index, "", ["None", "perturbed.safetensors"],
                                                     0, "", None, 0, "", None, True, True]))
    result = ctx.generate(p)
    assert np.array_equal(np.asarray(result.images[1]), pixels(own))
    assert not np.array_equal(np.asarray(result.images[2]), pixels(own))
    assert "VAE: perturbed.safetensors" in result.infotexts[2] and ", VAE:" not in result.infotexts[1]
    # The plot's overrides end with it: the next job has the checkpoint's own VAE back.
    assert np.array_equal(pixels(generate(ctx)), pixels(own))
