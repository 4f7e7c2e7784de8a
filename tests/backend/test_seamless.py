"""A1111's Tiling (seamless images): circular padding in the UNet and VAE, per job."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.models.seamless import set_seamless
from backend.processing import StableDiffusionProcessingTxt2Img


@pytest.fixture
def seamless_model(builtin_model):
    set_seamless(builtin_model, True)
    yield builtin_model
    set_seamless(builtin_model, False)


def _roll(x: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.roll(x, shifts=(shift, shift), dims=(-2, -1))


def test_decoder_output_wraps_around_with_the_latent(seamless_model) -> None:
    # With wrap-around padding the decoder commutes with a circular shift (one latent pixel = 8 pixels):
    # the image has no edges, which is what makes it tile.
    vae = seamless_model.vae
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        shifted_then_decoded = vae.decode(_roll(latent, 3)).sample
        decoded_then_shifted = _roll(vae.decode(latent).sample, 24)
        torch.testing.assert_close(shifted_then_decoded, decoded_then_shifted, atol=1e-4, rtol=1e-4)
        set_seamless(seamless_model, False)
        plain = vae.decode(_roll(latent, 3)).sample
    assert (plain - decoded_then_shifted).abs().max() > 1e-2


def test_unet_prediction_wraps_around_with_the_latent(seamless_model) -> None:
    unet = seamless_model.unet
    generator = torch.Generator().manual_seed(1)
    latent = torch.randn(1, 4, 16, 16, generator=generator)
    context = torch.randn(1, 77, unet.config.cross_attention_dim, generator=generator)
    timestep = torch.tensor([500])
    with torch.no_grad():
        # One 2x downsampling: shifts by even latent pixels commute with the UNet.
        shifted_then_run = unet(_roll(latent, 6), timestep, encoder_hidden_states=context).sample
        run_then_shifted = _roll(unet(latent, timestep, encoder_hidden_states=context).sample, 6)
    torch.testing.assert_close(shifted_then_run, run_then_shifted, atol=1e-4, rtol=1e-4)


def _generate(app_ctx, **kw: object):
    p = StableDiffusionProcessingTxt2Img(prompt="a pattern", steps=4, width=64, height=64, seed=7,
                                         sampler_name="Euler a", do_not_save_samples=True, **kw)  # type: ignore[arg-type]
    return app_ctx.generate(p)


def test_tiling_is_per_job_and_written_to_the_infotext(app_ctx) -> None:
    plain = _generate(app_ctx)
    tiled = _generate(app_ctx, tiling=True)
    again = _generate(app_ctx, tiling=False)
    assert "Tiling: True" in tiled.infotexts[0] and "Tiling" not in plain.infotexts[0]
    assert not np.array_equal(np.asarray(tiled.images[0]), np.asarray(plain.images[0]))
    # The next job without tiling gets the model's usual padding back.
    assert np.array_equal(np.asarray(again.images[0]), np.asarray(plain.images[0]))


def test_the_tiling_option_is_the_default(app_ctx) -> None:
    app_ctx.options.set("tiling", True)
    assert "Tiling: True" in _generate(app_ctx).infotexts[0]
