"""Cheap live previews: latent -> RGB with a fixed linear map, no VAE.

This is A1111's "Approx cheap" method (sd_vae_approx.cheap_approximation): each RGB
channel is a weighted sum of the 4 latent channels, with one set of weights fitted for
the SD1/SD2 VAE and another for the SDXL VAE. It costs almost nothing, so it can run on
the worker thread every few sampling steps.
"""
from __future__ import annotations

import torch
from PIL import Image
from torch import Tensor

# Rows: latent channels 0..3; columns: R, G, B (the published fits A1111 uses).
SD_LATENT_RGB = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
SDXL_LATENT_RGB = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)


def approximate_rgb(latent: Tensor, is_sdxl: bool = False) -> Image.Image:
    """Preview of the first latent of a batch ([B,4,h,w] or [4,h,w]) as an RGB image of size w x h.

    The output keeps the latent's size (1/8 of the image side), as A1111's cheap preview
    does: clients scale it up themselves, and a small image is cheap to send every few steps.
    """
    sample = latent[0] if latent.dim() == 4 else latent
    if sample.dim() != 3 or sample.shape[0] != 4:
        raise ValueError(f"expected a 4-channel latent, got shape {tuple(latent.shape)}")
    coefs = torch.tensor(SDXL_LATENT_RGB if is_sdxl else SD_LATENT_RGB, dtype=torch.float32, device=sample.device)
    rgb = torch.einsum("chw,cr->hwr", sample.detach().float(), coefs)
    # The map gives values in [-1, 1] like a VAE decode; to [0, 255] as A1111's sample_to_image.
    pixels = ((rgb * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
    return Image.fromarray(pixels.cpu().numpy())
