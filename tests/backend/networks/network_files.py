"""Writing small network files for the tests, with tensor names exactly as kohya and LyCORIS write them."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor


def kohya_unet(path: str) -> str:
    """kohya's module name of a diffusers UNet layer: `lora_unet_` + the path with '_' for '.'."""
    return "lora_unet_" + path.replace(".", "_")


def kohya_te(path: str, prefix: str = "lora_te") -> str:
    """kohya's module name of a CLIP text-encoder layer (path without `text_model.`)."""
    return f"{prefix}_text_model_" + path.replace(".", "_")


def save_network(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` as .safetensors (with string metadata) or as a weights-only .pt pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous() for key, value in tensors.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata=metadata)
    else:
        torch.save(tensors, path)
    return path


def random(*shape: int, seed: int, scale: float = 0.1) -> Tensor:
    """A deterministic float32 tensor."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def kohya_metadata(**values: object) -> dict[str, str]:
    """kohya-style metadata: every value a string, dicts JSON-encoded."""
    return {key: json.dumps(value) if isinstance(value, dict) else str(value) for key, value in values.items()}
