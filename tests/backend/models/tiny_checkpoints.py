"""Tiny random checkpoints of every family, in the original (ldm) single-file layout, for the model tests.

The components are built with the same config rules the loader uses (`backend.models.families`), filled
deterministically, and exported with `backend.models.ldm_export`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.models.builtin import fill_deterministically
from backend.models.families import (
    Family,
    TextEncoderDims,
    UNetDims,
    VaeDims,
    family_by_name,
    text_encoder_config,
    unet_config,
    vae_config,
)
from backend.models.ldm_export import export_ldm_state_dict

TEXT_WIDTH = 32
# SDXL's second encoder is wider than the first, as in the real model (1280 vs 768); diffusers' own
# single-file loader tells the two apart by that width.
TEXT_WIDTH_2 = 48
POOLED_DIM = 16  # SDXL second encoder projection width
SDXL_TIME_DIM = 8  # SDXL size/crop embedding width; label_emb input = POOLED_DIM + 6 * SDXL_TIME_DIM
VAE_DIMS = VaeDims(block_out_channels=(32, 32), layers_per_block=1, latent_channels=4)
VAE_DIMS_8X = VaeDims(block_out_channels=(32, 32, 32, 32), layers_per_block=1, latent_channels=4)


@dataclass
class TinyModel:
    """Diffusers components of a tiny model and its family."""

    family: Family
    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any | None

    def state_dict(self) -> dict[str, Tensor]:
        """The ldm single-file state dict (cloned, so it can be modified or saved freely)."""
        state = export_ldm_state_dict(self.unet, self.vae, self.text_encoder, self.family, self.text_encoder_2)
        return {key: value.clone().contiguous() for key, value in state.items()}


def unet_dims(family: Family) -> UNetDims:
    """Small UNet widths with the family's block pattern."""
    in_channels = 9 if family.is_inpaint else 4
    if family.is_sdxl:
        return UNetDims((32, 64), 1, TEXT_WIDTH + TEXT_WIDTH_2, (False, True), (1, 2), in_channels, 4,
                        POOLED_DIM + 6 * SDXL_TIME_DIM, SDXL_TIME_DIM)
    return UNetDims((32, 64), 1, TEXT_WIDTH, (True, False), (1, 1), in_channels, 4)


def text_dims(family: Family, index: int) -> TextEncoderDims:
    """Small text-encoder widths; SD2's encoder gets one extra block, which the loader drops."""
    spec = family.text_encoders[index]
    layers = 3 if spec.drops_last_layer else 2
    width = TEXT_WIDTH_2 if index == 1 else TEXT_WIDTH
    return TextEncoderDims(width, 2 * width, layers, 49408, 77, POOLED_DIM if spec.with_projection else None)


def build_tiny_model(family_name: str, seed: int = 0, vae_dims: VaeDims = VAE_DIMS) -> TinyModel:
    """A tiny random model of `family_name` ("sd1", "sd2-inpaint", "sdxl", ...).

    The default VAE has two blocks (latent 2x smaller) for speed; pass VAE_DIMS_8X for a VAE whose
    latent is 8x smaller like the real models, when a test runs the whole generation pipeline.
    """
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = family_by_name(family_name)
    generator = torch.Generator().manual_seed(seed)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config(family, unet_dims(family)))
        vae = AutoencoderKL.from_config(vae_config(family, vae_dims))
        encoders = []
        for index, spec in enumerate(family.text_encoders):
            cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**text_encoder_config(family, index, text_dims(family, index)))))
    for module in (unet, vae, *encoders):
        fill_deterministically(module, generator)
        module.eval()
    return TinyModel(family, unet, vae, encoders[0], encoders[1] if len(encoders) > 1 else None)


def write_checkpoint(path: Path, state: dict[str, Tensor]) -> Path:
    """Save `state` as .safetensors, or as a weights-only pickle wrapped in `state_dict` for .ckpt/.pt."""
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path
