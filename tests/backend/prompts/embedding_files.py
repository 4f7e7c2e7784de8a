"""Textual-inversion embedding files in the formats A1111 reads, for the tests."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_a1111_pt(path: Path, vectors: torch.Tensor, step: int = 500) -> Path:
    """A1111's own training output."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.clone()}, "name": "ignored-name",
                "step": step, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "base-model"}, path)
    return path


def save_diffusers_bin(path: Path, vector: torch.Tensor) -> Path:
    """diffusers' learned_embeds.bin: one token, one [dim] vector."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"<my-token>": vector.clone()}, path)
    return path


def save_emb_params(path: Path, vectors: torch.Tensor) -> Path:
    """The common .safetensors layout (EasyNegative and most shared embeddings)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def save_sdxl(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    """An SDXL embedding: vectors for CLIP-L (768 wide in real files) and OpenCLIP bigG (1280)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path


def random_vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def bump_mtime(path: Path) -> None:
    """Make a rewrite visible even on file systems with coarse timestamps."""
    stamp = time.time() + 5
    os.utime(path, (stamp, stamp))
