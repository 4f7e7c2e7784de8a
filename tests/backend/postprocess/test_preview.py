"""The cheap latent -> RGB preview (A1111's "Approx cheap")."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.postprocess.preview import SD_LATENT_RGB, SDXL_LATENT_RGB, approximate_rgb


def _one_hot(channel: int, h: int = 2, w: int = 3) -> torch.Tensor:
    latent = torch.zeros(1, 4, h, w)
    latent[0, channel] = 1.0
    return latent


def test_size_is_the_latent_size_and_the_first_image_is_used() -> None:
    latent = torch.zeros(2, 4, 8, 12)
    latent[1] = 5.0  # the second image must not show
    image = approximate_rgb(latent)
    assert image.mode == "RGB" and image.size == (12, 8)
    assert np.all(np.asarray(image) == 127)  # a zero latent is mid-grey: (0 * 0.5 + 0.5) * 255


@pytest.mark.parametrize("is_sdxl, table", [(False, SD_LATENT_RGB), (True, SDXL_LATENT_RGB)])
def test_each_latent_channel_maps_through_its_row(is_sdxl: bool, table) -> None:
    for channel in range(4):
        pixels = np.asarray(approximate_rgb(_one_hot(channel), is_sdxl=is_sdxl))
        expected = [int((c * 0.5 + 0.5) * 255) for c in table[channel]]
        assert pixels.shape == (2, 3, 3)
        assert np.all(np.abs(pixels.reshape(-1, 3) - expected) <= 1), (channel, pixels[0, 0], expected)


def test_sd_and_sdxl_differ_and_values_are_clamped() -> None:
    assert approximate_rgb(_one_hot(1)).tobytes() != approximate_rgb(_one_hot(1), is_sdxl=True).tobytes()
    latent = torch.zeros(4, 4, 4)
    latent[0, :, :2] = 100.0  # far above white
    latent[3, :, 2:] = 100.0  # far below black
    big = np.asarray(approximate_rgb(latent))
    assert big.dtype == np.uint8
    assert np.all(big[:, :2] == 255) and np.all(big[:, 2:] == 0)


def test_single_latent_without_batch_and_bad_shapes() -> None:
    assert approximate_rgb(torch.zeros(4, 5, 6)).size == (6, 5)
    with pytest.raises(ValueError, match="4-channel"):
        approximate_rgb(torch.zeros(1, 3, 5, 6))
