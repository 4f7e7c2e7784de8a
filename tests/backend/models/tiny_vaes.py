"""VAE files made from the tiny test model's own VAE, for the separate-VAE tests (backend and API)."""
from __future__ import annotations

import torch

from backend.models.families import VAE_PREFIX
from backend.models.ldm_export import export_vae


def perturbed_vae(model, shift: float, *, prefixed: bool) -> dict[str, torch.Tensor]:
    """The model's VAE in ldm keys with the decoder's output bias shifted, plus a training leftover
    (`loss.*`) that loading must ignore."""
    state = {(key if prefixed else key.removeprefix(VAE_PREFIX)): value.clone()
             for key, value in export_vae(model.vae).items()}
    state[(VAE_PREFIX if prefixed else "") + "decoder.conv_out.bias"] += shift
    state["loss.logvar"] = torch.zeros(())
    return state


def small_other_vae() -> dict[str, torch.Tensor]:
    """A VAE of another architecture (other widths), as a VAE made for another model family is."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8)
    return {key.removeprefix(VAE_PREFIX): value for key, value in export_vae(vae).items()}
