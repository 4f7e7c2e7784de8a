"""A1111's "Tiling" (seamless images): circular padding in every 2D convolution of the UNet and the VAE.

With wrap-around padding the left edge of every feature map sees the right edge (and top sees bottom),
so the generated image tiles without a seam. A convolution's padding mode is a plain attribute that
`forward` reads on each call, so switching it needs no copy of the weights and costs nothing.

The SD UNet and VAE (and ControlNet) of diffusers pad with zeros everywhere, so "off" means zeros. The
VAE encoder's stride-2 downsampling pads explicitly with zeros (as ldm does); A1111's tiling leaves
that alone too, so img2img input encoding is unchanged.
"""
from __future__ import annotations

from torch import nn

from backend.models.loader import LoadedModel

ON, OFF = "circular", "zeros"


def set_seamless(model: LoadedModel, enabled: bool) -> None:
    """Turn circular padding on or off for `model`'s UNet and VAE (every job sets the mode it needs)."""
    mode = ON if enabled else OFF
    for component in (model.unet, model.vae):
        for module in component.modules():
            if isinstance(module, nn.Conv2d):
                module.padding_mode = mode
