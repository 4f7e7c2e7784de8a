"""Network file key names -> the modules of our diffusers/transformers model.

A network file names each targeted layer in one of several schemes; every key is `<module key>.<part>`:
- kohya / LyCORIS: `lora_unet_<path>`, `lora_te_<path>` (SD1/SD2), `lora_te1_`/`lora_te2_` (SDXL), with the
  module path's dots written as underscores. The UNet path is either the diffusers one
  (`lora_unet_down_blocks_0_attentions_0_proj_in`, what kohya writes for SD1/SD2) or the original ldm one
  (`lora_unet_input_blocks_1_1_proj_in`, what kohya writes for SDXL). The part follows the first '.'.
- A1111/compvis module names: `diffusion_model_<ldm path>`, `transformer_text_model_<path>` and the
  kohya-OFT prefix `oft_unet_`, as A1111's `networks.load_network` accepts them.
- diffusers / PEFT: dotted paths under `unet.`, `text_encoder.`, `text_encoder_2.` (optionally behind
  `base_model.model.`), with parts `lora_A.weight`/`lora_B.weight`, `lora.down.weight`/`lora.up.weight`,
  `lora_linear_layer.*`, or the old attention-processor form `attn1.processor.to_q_lora.down.weight`.

Instead of A1111's one-way renaming (`convert_diffusers_name_to_compvis`, which assumes two resnets per
level), `ModuleIndex` lists every weight-bearing module of the model under all the names a file may use
for it, computing the ldm names from the model's own config (`ldm_export.unet_key_to_ldm`). So a key
resolves by a dictionary lookup, for any layer count.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from backend.errors import ModelLoadError
from backend.models.ldm_export import unet_key_to_ldm

UNET = "unet"
TEXT_ENCODER = "text_encoder"
TEXT_ENCODER_2 = "text_encoder_2"

# Layer classes whose weights A1111 patches (lora_patches.py); our diffusers/transformers models use the same.
PATCHABLE = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)

# Part names in dotted (diffusers/PEFT) files, longest first so "lora_A.weight" wins over "weight".
# Each maps to the kohya/LyCORIS part name the module types understand (A1111 reads lora_A as down, lora_B as up).
_DOTTED_PARTS: tuple[tuple[str, str], ...] = tuple(sorted({
    "lora_linear_layer.down.weight": "lora_down.weight",
    "lora_linear_layer.up.weight": "lora_up.weight",
    "lora.down.weight": "lora_down.weight",
    "lora.up.weight": "lora_up.weight",
    "lora_down.weight": "lora_down.weight",
    "lora_up.weight": "lora_up.weight",
    "lora_mid.weight": "lora_mid.weight",
    "lora_A.weight": "lora_down.weight",
    "lora_B.weight": "lora_up.weight",
    # PEFT's DoRA magnitude is one value per output row; the DoRA code tells conventions apart by shape.
    "lora_magnitude_vector": "dora_scale",
    "dora_scale": "dora_scale",
    "alpha": "alpha",
}.items(), key=lambda item: -len(item[0])))
_OLD_PROCESSOR = re.compile(r"(.+)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(up|down)\.weight")
_KOHYA_PARTS = {"lora_A.weight": "lora_down.weight", "lora_B.weight": "lora_up.weight"}


@dataclass(frozen=True)
class Target:
    """One patchable layer of the model: which component, its module path there, and the module."""

    component: str  # UNET | TEXT_ENCODER | TEXT_ENCODER_2
    path: str
    module: Any  # torch.nn.Module

    @property
    def is_text_encoder(self) -> bool:
        """Text-encoder layers take the te multiplier; all others the unet multiplier."""
        return self.component != UNET


def split_key(key: str) -> tuple[str, str]:
    """`(module key, part)` of one tensor name of a network file.

    Underscore-style names (kohya, LyCORIS, A1111) split at the first '.', as A1111 does; dotted
    diffusers/PEFT names lose their known part suffix. Dotted keys with an unknown part keep the text
    after the last '.' as the part, so the module type check reports them.
    """
    head, _, tail = key.partition(".")
    if "_" in head and not head.startswith(("unet", "text_encoder", "base_model")):
        return head, _KOHYA_PARTS.get(tail, tail)
    if match := _OLD_PROCESSOR.fullmatch(key):
        layer = match[2] + (".0" if match[2] == "to_out" else "")
        return f"{match[1]}.{layer}", f"lora_{match[3]}.weight"
    for suffix, part in _DOTTED_PARTS:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], part
    module, _, part = key.rpartition(".")
    return module, part


def _underscored(path: str) -> str:
    return path.replace(".", "_")


def _text_path(path: str) -> str:
    # transformers' CLIPTextModel keeps its layers at the top (>= 5.6), CLIPTextModelWithProjection under
    # `text_model.`; files always name them under `text_model`.
    return path.removeprefix("text_model.")


def _patchable(module: Any) -> Iterator[tuple[str, torch.nn.Module]]:
    for path, layer in module.named_modules():
        if path and isinstance(layer, PATCHABLE):
            yield path, layer


class ModuleIndex:
    """All names under which a network file may refer to each patchable layer of one model."""

    def __init__(self, unet: Any, text_encoders: dict[str, Any], *, is_sdxl: bool) -> None:
        self._names: dict[str, Target] = {}
        config = unet.config
        up_attention = ["CrossAttn" in name for name in config.up_block_types]
        for path, layer in _patchable(unet):
            target = Target(UNET, path, layer)
            flat = _underscored(path)
            self._add(target, f"unet.{path}", f"lora_unet_{flat}", f"oft_unet_{flat}")
            try:
                ldm = unet_key_to_ldm(f"{path}.weight", config.layers_per_block, up_attention)
            except ModelLoadError:
                continue  # a layer with no ldm name (none in SD1/SD2/SDXL) is reachable by its diffusers names
            ldm_flat = _underscored(ldm.removesuffix(".weight"))
            self._add(target, f"lora_unet_{ldm_flat}", f"diffusion_model_{ldm_flat}", f"oft_unet_{ldm_flat}")
        for component, encoder in text_encoders.items():
            if encoder is None:
                continue
            for path, layer in _patchable(encoder):
                target = Target(component, path, layer)
                text = _text_path(path)
                flat = "text_model_" + _underscored(text)
                self._add(target, f"{component}.text_model.{text}", f"{component}.{text}")
                if component == TEXT_ENCODER_2:
                    self._add(target, f"lora_te2_{flat}")
                elif is_sdxl:
                    self._add(target, f"lora_te1_{flat}")
                else:
                    # A1111 also accepts lora_te1_ and its own compvis name on SD1/SD2 ("some SD1 Loras also
                    # have correct compvis keys").
                    self._add(target, f"lora_te_{flat}", f"lora_te1_{flat}", f"transformer_{flat}")

    def _add(self, target: Target, *names: str) -> None:
        for name in names:
            self._names.setdefault(name, target)

    def resolve(self, module_key: str) -> Target | None:
        """The layer a network module key refers to, or None when this model has no such layer."""
        return self._names.get(module_key.removeprefix("base_model.model."))

    def __len__(self) -> int:
        return len(self._names)
