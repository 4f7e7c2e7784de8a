"""The built-in models: two small SD1-architecture checkpoints made by our own code, no download.

- The shipped, trained model (`SHAPES_MODEL_FILENAME`, in `weights/`): a 64x64 model trained by
  `python -m backend.training.builtin` on the procedural shapes of `backend.training.shapes`, so it
  draws what it is asked ("a red circle on a blue background"). `ensure_default_model` copies it into
  `models/Stable-diffusion/` when that folder holds no checkpoint (as A1111 fetches SD1.5 only when no
  model is found), and it is the default of `./webui.sh`.
- The random-weight model (`DEFAULT_MODEL_FILENAME`, built by `build_default_model`): tiny, built in
  a second and byte-identical on every build; the test fixtures use it for structural tests.

Both are normal single-file checkpoints in the original (ldm) layout and go through the same loader as
any user file. Building is separate from loading: nothing here is used at load time.

The rest of this docstring describes the random-weight model.

Architecture (SD1 family rules, see `families`): UNet with block widths (32, 64), one resnet per level,
attention at the first level and in the middle block (SD1 has none at its deepest level either), 8
heads; an 8x VAE (4 levels, widths 32-64, 4 latent channels) so the latent is 8x smaller than the image
like real SD; a 6-layer CLIP text model of width 32 with CLIP's full 49408-token vocabulary and 77
positions, used with the real CLIP tokenizer. Random weights for now.

The weights come from a local `torch.Generator` seeded with `seed`, filled tensor by tensor in name
order (normal with std 1/sqrt(fan_in) for weights, 0.02 for embeddings, ones for norm scales, 0.02 for
biases), so the file is byte-identical on every build and does not depend on library init code or the
global RNG. Tensors are stored in float16, as most published checkpoints are.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from backend.models.families import (
    TextEncoderDims,
    UNetDims,
    VaeDims,
    family_by_name,
    text_encoder_config,
    unet_config,
    vae_config,
)
from backend.models.ldm_export import export_ldm_state_dict
from backend.models.loader import write_safetensors

DEFAULT_MODEL_FILENAME = "sd-tiny-builtin.safetensors"  # the random-weight test model
SHAPES_MODEL_FILENAME = "sd-shapes-64.safetensors"  # the trained, shipped default model
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights" / SHAPES_MODEL_FILENAME
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")
CHECKPOINT_SUBDIR = "Stable-diffusion"
BUILDER_VERSION = "1"
METADATA_KEY = "sdwebui.builtin"

BUILTIN_UNET = UNetDims(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=32,
                        down_block_has_attention=(True, False), transformer_layers_per_block=(1, 1),
                        in_channels=4, out_channels=4)
BUILTIN_VAE = VaeDims(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4)
BUILTIN_TEXT = TextEncoderDims(hidden_size=32, intermediate_size=128, num_hidden_layers=6,
                               vocab_size=49408, max_position_embeddings=77)


def deterministic_value(name: str, shape: torch.Size, generator: torch.Generator) -> Tensor:
    """One freshly drawn float32 tensor for parameter `name` (see the module docstring for the scheme)."""
    if name.endswith("bias"):
        # Small non-zero biases: with all-zero ones the text encoder's output has mean exactly 0
        # and A1111's "Original" emphasis (which divides by the mean) would blow up.
        return torch.randn(shape, generator=generator) * 0.02
    if len(shape) == 1:
        return torch.ones(shape)  # GroupNorm / LayerNorm scales
    if "embedding" in name:
        return torch.randn(shape, generator=generator) * 0.02
    fan_in = math.prod(shape[1:])
    return torch.randn(shape, generator=generator) / math.sqrt(fan_in)


def fill_deterministically(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Give every parameter of `module` (which may be on the meta device) a value drawn from `generator`,
    in sorted name order."""
    values = {name: deterministic_value(name, param.shape, generator)
              for name, param in sorted(module.named_parameters())}
    module.load_state_dict(values, strict=True, assign=True)


def build_default_state_dict(seed: int = 0) -> dict[str, Tensor]:
    """The built-in model's tensors in the ldm layout (float16), without writing anything."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    family = family_by_name("sd1")
    # Built without initialising weights (which would draw from the global RNG); all values come below.
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(unet_config(family, BUILTIN_UNET))
        vae = AutoencoderKL.from_config(vae_config(family, BUILTIN_VAE))
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(family, 0, BUILTIN_TEXT)))
    generator = torch.Generator().manual_seed(seed)
    for module in (unet, vae, text_encoder):
        fill_deterministically(module, generator)
    state = export_ldm_state_dict(unet, vae, text_encoder, family)
    return {key: value.to(torch.float16).contiguous() for key, value in state.items()}


def build_default_model(path: Path, *, seed: int = 0) -> Path:
    """Build the built-in checkpoint into `path` (atomically: a temporary file, then a rename)."""
    state = build_default_state_dict(seed)
    # One metadata entry only: safetensors writes its metadata map in a random order, which would make
    # the file bytes (and so the A1111 hash) differ between builds.
    metadata = {METADATA_KEY: json.dumps({"name": "sd-tiny", "family": "sd1", "builder_version": BUILDER_VERSION,
                                          "seed": seed, "weights": "random"}, sort_keys=True)}
    return write_safetensors(state, path, metadata)


def has_checkpoint(folder: Path) -> bool:
    """Whether `folder` (searched recursively) holds a checkpoint file or a diffusers model folder."""
    return folder.is_dir() and any(
        (path.is_file() and path.suffix.lower() in CHECKPOINT_SUFFIXES) or path.name == "model_index.json"
        for path in folder.rglob("*"))


def ensure_default_model(models_dir: Path) -> Path | None:
    """Copy the shipped trained model to `models_dir/Stable-diffusion/` when that folder holds no
    checkpoint; returns its path there, or None when the folder already had models. Without the shipped
    file (a checkout without it) the random model is built instead, so the app still starts."""
    folder = models_dir / CHECKPOINT_SUBDIR
    path = folder / SHAPES_MODEL_FILENAME
    if path.is_file():
        return path
    if has_checkpoint(folder):
        return None
    if not SHIPPED_WEIGHTS.is_file():
        return ensure_random_model(models_dir)
    folder.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(SHIPPED_WEIGHTS, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def ensure_random_model(models_dir: Path) -> Path:
    """`models_dir/Stable-diffusion/sd-tiny-builtin.safetensors` (the random test model), built if missing."""
    path = models_dir / CHECKPOINT_SUBDIR / DEFAULT_MODEL_FILENAME
    if not path.is_file():
        build_default_model(path)
    return path
