"""The latent-diffusion objective (Rombach et al. 2022) as SD1 was trained, and caption encoding.

- Noise schedule: the family's own (`loader.alphas_cumprod_from` on its shipped scheduler config: SD1's
  scaled-linear betas 0.00085..0.012 over 1000 steps), the same alphas the sampler uses at inference.
- Objective: for a clean latent x0, a uniform timestep t and Gaussian noise e, the UNet sees
  x_t = sqrt(a_t) x0 + sqrt(1 - a_t) e and is trained to predict e (epsilon) or
  v = sqrt(a_t) e - sqrt(1 - a_t) x0 (v-prediction) with a mean squared error. Optional min-SNR-gamma
  weighting (Hang et al. 2023) and noise offset, the two knobs LoRA trainers commonly expose.
- Captions are tokenized like A1111 encodes a short prompt: BOS, tokens, EOS, padded with the family's
  pad token to 77, and conditioned on the text encoder's last hidden state (Clip skip 1).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from backend.models.families import Family, read_config
from backend.models.loader import alphas_cumprod_from


def training_alphas_cumprod(family: Family) -> Tensor:
    """The family's cumulative alpha products (float32, 1000 entries for SD)."""
    return alphas_cumprod_from(read_config(family, "scheduler"))


class CaptionTokens:
    """Token ids [n, 77] for captions, memoised (training draws the same few thousand captions again)."""

    def __init__(self, tokenizer: object):
        self.tokenizer = tokenizer
        self._cache: dict[str, Tensor] = {}

    def __call__(self, captions: Sequence[str]) -> Tensor:
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            ids = self.tokenizer(missing, padding="max_length", max_length=self.tokenizer.model_max_length,
                                 truncation=True, return_tensors="pt").input_ids
            self._cache.update(zip(missing, ids, strict=True))
        return torch.stack([self._cache[c] for c in captions])


def encode_tokens(text_encoder: torch.nn.Module, ids: Tensor) -> Tensor:
    """The conditioning [n, 77, width]: the text encoder's last hidden state (final layer norm included)."""
    return text_encoder(ids.to(next(text_encoder.parameters()).device)).last_hidden_state


def diffusion_loss(unet: torch.nn.Module, latents: Tensor, context: Tensor, alphas_cumprod: Tensor,
                   generator: torch.Generator, *, prediction_type: str = "epsilon",
                   min_snr_gamma: float | None = None, noise_offset: float = 0.0) -> Tensor:
    """The denoising loss on scaled latents [n, c, h, w] with conditioning `context` [n, tokens, width].

    Timesteps and noise come from `generator` (a CPU generator, so runs on CPU and CUDA draw the same).
    """
    n = latents.shape[0]
    device = latents.device
    timesteps = torch.randint(0, alphas_cumprod.shape[0], (n,), generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((n, latents.shape[1], 1, 1), generator=generator)
    alpha = alphas_cumprod[timesteps].view(n, 1, 1, 1)
    noise, alpha = noise.to(device), alpha.to(device)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    prediction = unet(noisy, timesteps.to(device), encoder_hidden_states=context).sample
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = alpha.sqrt() * noise - (1 - alpha).sqrt() * latents
    else:
        raise ValueError(f"unknown prediction_type {prediction_type!r}")
    per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if min_snr_gamma is not None:
        snr = (alpha / (1 - alpha)).view(n)
        weight = torch.clamp(snr, max=min_snr_gamma) / (snr if prediction_type == "epsilon" else snr + 1)
        per_sample = per_sample * weight
    return per_sample.mean()
