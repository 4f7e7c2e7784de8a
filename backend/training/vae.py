"""Training the 8x autoencoder (AutoencoderKL) and fitting its latent scale.

Objective: L1 + L2 reconstruction of a latent sampled from the posterior, an L1 loss on the image
gradients (keeps edges crisp without a perceptual network we would have to download), and a small KL
term towards N(0, 1), as the ldm "KL-f8" autoencoders are trained (without their GAN and LPIPS parts).
`decoder_loss` then fine-tunes the decoder alone on posterior means (sharper, same latent space).

SD1 samplers multiply latents by the family's `scaling_factor` (0.18215) and expect unit variance.
Rather than store another factor, `normalise_latents` folds a per-channel shift and scale into the VAE's
1x1 `quant_conv` / `post_quant_conv`, exactly (both are linear), so that `encode(x).mean * 0.18215` has
zero mean and unit std on the training images, and `decode` undoes the change. Every SD1 tool then reads
the file correctly with its usual factor.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def image_gradients(images: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical finite differences of [n, c, h, w] images."""
    return images[..., :, 1:] - images[..., :, :-1], images[..., 1:, :] - images[..., :-1, :]


def reconstruction_loss(recon: Tensor, images: Tensor, edge_weight: float = 0.5) -> Tensor:
    """L1 + L2 between images, plus `edge_weight` times the L1 between their gradients."""
    loss = F.l1_loss(recon, images) + F.mse_loss(recon, images)
    for rec, ref in zip(image_gradients(recon), image_gradients(images), strict=True):
        loss = loss + edge_weight * F.l1_loss(rec, ref)
    return loss


def vae_loss(vae: torch.nn.Module, images: Tensor, generator: torch.Generator, *, kl_weight: float = 1e-4,
             edge_weight: float = 0.5) -> Tensor:
    """Reconstruction loss of images in [-1, 1] through a posterior sample (noise from `generator`)."""
    posterior = vae.encode(images).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=generator).to(images.device)
    recon = vae.decode(posterior.mean + posterior.std * eps).sample
    kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1 - posterior.logvar).mean()
    return reconstruction_loss(recon, images, edge_weight) + kl_weight * kl


def decoder_loss(vae: torch.nn.Module, images: Tensor, edge_weight: float = 0.5) -> Tensor:
    """Reconstruction loss through the posterior mean with the encoder frozen: fine-tunes the decoder only,
    as SD's ft-MSE VAE was made, so the latent space (and a UNet trained on it) stays valid."""
    with torch.no_grad():
        latent = vae.encode(images).latent_dist.mean
    return reconstruction_loss(vae.decode(latent).sample, images, edge_weight)


@torch.no_grad()
def encode_means(vae: torch.nn.Module, images: Tensor, batch_size: int = 256) -> Tensor:
    """Posterior means (unscaled latents) of images in [-1, 1], in batches, on the VAE's device."""
    device = next(vae.parameters()).device
    return torch.cat([vae.encode(images[i:i + batch_size].to(device)).latent_dist.mean.cpu()
                      for i in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def normalise_latents(vae: torch.nn.Module, latents: Tensor, scaling_factor: float) -> None:
    """Fold a per-channel affine map into `vae` so that `scaling_factor * mean` of `latents`' images
    becomes zero-mean, unit-std per channel (see the module docstring). `latents`: unscaled means."""
    mean = latents.mean(dim=(0, 2, 3))
    scale = 1.0 / (latents.std(dim=(0, 2, 3)) * scaling_factor)  # new = scale * (old - mean)
    channels = mean.shape[0]
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[:channels] *= scale.view(-1, 1, 1, 1)
    quant.bias[:channels] = scale * (quant.bias[:channels] - mean)
    quant.bias[channels:] += 2 * torch.log(scale)  # log-variance of the scaled posterior
    # post_quant_conv(old) = W old + b with old = new / scale + mean.
    post.bias += (post.weight[:, :, 0, 0] @ mean)
    post.weight /= scale.view(1, -1, 1, 1)
