"""Model families: what each supported checkpoint architecture looks like and where its configs live.

Fixed knowledge is data: `FAMILIES` is a tuple of frozen records, and `detect_family` is the one lookup
from a state dict's key names and shapes to a record. Detection works on shapes only (`{key: shape}`),
so the model registry can classify a `.safetensors` file from its header without torch.

Each family ships a local diffusers-format config folder (`configs/<name>/`) holding the full-size
configs (SD1.5, SD2.1-base, SD2.1-768-v, SDXL base and the inpainting variants). Smaller checkpoints of
the same architecture (the built-in model, test models) get configs derived from those, with the widths
read from the tensors; the attention head counts, which no tensor records, follow two fixed rules:

- UNet: SD1 uses 8 heads in every block (ldm `num_heads: 8`); SD2 and SDXL use 64-channel heads
  (ldm `num_head_channels: 64`), i.e. `max(1, channels // 64)` heads per block.
- Text encoders: `max(1, hidden_size // 64)` heads (CLIP ViT-L 768 -> 12, OpenCLIP ViT-H 1024 -> 16,
  OpenCLIP ViT-bigG 1280 -> 20).

The builder of the built-in model uses the same functions, so its checkpoint round-trips.
"""
from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.errors import ModelLoadError

Shapes = Mapping[str, Sequence[int]]

CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
UNET_INPUT_KEY = UNET_PREFIX + "input_blocks.0.0.weight"
SD1_TEXT_PREFIX = "cond_stage_model.transformer.text_model."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_TEXT1_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_TEXT2_PREFIX = "conditioner.embedders.1.model."

# Checkpoints saved with transformers < 4.x lack the `text_model.` level in CLIP names; A1111 renames
# them on load, and so do we (`normalise_keys`).
LEGACY_PREFIXES = tuple(
    (f"{root}{part}", f"{root}text_model.{part}")
    for root in ("cond_stage_model.transformer.", "conditioner.embedders.0.transformer.")
    for part in ("embeddings.", "encoder.", "final_layer_norm.")
)

PAD_EOS = "<|endoftext|>"
# OpenCLIP's tokenizer pads with id 0, which is the token "!".
PAD_EXCLAMATION = "!"


@dataclass(frozen=True)
class TextEncoderSpec:
    """One text encoder of a family, as stored in the original (ldm) single-file layout.

    `layout` is "hf_clip" (OpenAI CLIP stored in transformers' naming under `prefix`) or "open_clip"
    (`transformer.resblocks.N...`, fused `in_proj` attention, under `prefix`).
    `drops_last_layer`: SD2 conditions on the penultimate layer followed by the final layer norm, so,
    as diffusers does, the loaded model omits the original's last block and its `last_hidden_state`
    is exactly SD2's conditioning.
    """

    prefix: str
    layout: str
    subfolder: str
    with_projection: bool
    pad_token: str
    drops_last_layer: bool = False


@dataclass(frozen=True)
class Family:
    """A supported checkpoint family.

    `fingerprint` decides from `{key: shape}` whether a single-file state dict belongs to the family;
    None means the family is never matched from keys alone: it is reached through another family's
    `v_prediction_variant` once the loader has probed the UNet (SD2 768-v shares SD2's layout).
    """

    name: str
    title: str
    architecture: str  # "sd1" | "sd2" | "sdxl"
    config_folder: str
    prediction_type: str  # "epsilon" | "v_prediction"
    is_sdxl: bool
    is_inpaint: bool
    latent_channels: int
    unet_in_channels: int
    text_encoders: tuple[TextEncoderSpec, ...]
    fingerprint: Callable[[Shapes], bool] | None
    v_prediction_variant: str | None = None

    @property
    def config_dir(self) -> Path:
        """The shipped diffusers-format config folder of the full-size model."""
        return CONFIGS_DIR / self.config_folder


def _unet_in_channels(shapes: Shapes) -> int | None:
    shape = shapes.get(UNET_INPUT_KEY)
    return int(shape[1]) if shape is not None and len(shape) == 4 else None


def _has_prefix(shapes: Shapes, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in shapes)


def _is_sd1(shapes: Shapes) -> bool:
    return _has_prefix(shapes, SD1_TEXT_PREFIX) and not _has_prefix(shapes, SD2_TEXT_PREFIX)


def _is_sd2(shapes: Shapes) -> bool:
    return SD2_TEXT_PREFIX + "transformer.resblocks.0.attn.in_proj_weight" in shapes


def _is_sdxl(shapes: Shapes) -> bool:
    # A1111 tells SDXL base from the refiner by the second embedder (OpenCLIP bigG); the refiner has only
    # `conditioner.embedders.0.model.` and is not supported.
    return _has_prefix(shapes, SDXL_TEXT2_PREFIX) and _has_prefix(shapes, SDXL_TEXT1_PREFIX)


def _fingerprint(text_check: Callable[[Shapes], bool], in_channels: int) -> Callable[[Shapes], bool]:
    def matches(shapes: Shapes) -> bool:
        return _unet_in_channels(shapes) == in_channels and text_check(shapes)

    return matches


_CLIP_L_SD1 = TextEncoderSpec(SD1_TEXT_PREFIX, "hf_clip", "text_encoder", False, PAD_EOS)
_OPENCLIP_H_SD2 = TextEncoderSpec(SD2_TEXT_PREFIX, "open_clip", "text_encoder", False, PAD_EXCLAMATION,
                                  drops_last_layer=True)
_CLIP_L_SDXL = TextEncoderSpec(SDXL_TEXT1_PREFIX, "hf_clip", "text_encoder", False, PAD_EOS)
_OPENCLIP_G_SDXL = TextEncoderSpec(SDXL_TEXT2_PREFIX, "open_clip", "text_encoder_2", True, PAD_EXCLAMATION)

FAMILIES: tuple[Family, ...] = (
    Family("sd1", "Stable Diffusion 1.x", "sd1", "sd1", "epsilon", False, False, 4, 4,
           (_CLIP_L_SD1,), _fingerprint(_is_sd1, 4)),
    Family("sd1-inpaint", "Stable Diffusion 1.x inpainting", "sd1", "sd1-inpaint", "epsilon", False, True, 4, 9,
           (_CLIP_L_SD1,), _fingerprint(_is_sd1, 9)),
    Family("sd2", "Stable Diffusion 2.x (512, epsilon)", "sd2", "sd2", "epsilon", False, False, 4, 4,
           (_OPENCLIP_H_SD2,), _fingerprint(_is_sd2, 4), v_prediction_variant="sd2-v"),
    Family("sd2-v", "Stable Diffusion 2.x (768, v-prediction)", "sd2", "sd2-v", "v_prediction", False, False, 4, 4,
           (_OPENCLIP_H_SD2,), None),
    Family("sd2-inpaint", "Stable Diffusion 2.x inpainting", "sd2", "sd2-inpaint", "epsilon", False, True, 4, 9,
           (_OPENCLIP_H_SD2,), _fingerprint(_is_sd2, 9)),
    Family("sdxl", "Stable Diffusion XL base", "sdxl", "sdxl", "epsilon", True, False, 4, 4,
           (_CLIP_L_SDXL, _OPENCLIP_G_SDXL), _fingerprint(_is_sdxl, 4)),
    Family("sdxl-inpaint", "Stable Diffusion XL inpainting", "sdxl", "sdxl-inpaint", "epsilon", True, True, 4, 9,
           (_CLIP_L_SDXL, _OPENCLIP_G_SDXL), _fingerprint(_is_sdxl, 9)),
)


def normalise_key(key: str) -> str:
    """`key` with legacy CLIP prefixes renamed to the current original layout."""
    for old, new in LEGACY_PREFIXES:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def family_by_name(name: str) -> Family:
    """The family record called `name` (e.g. "sd1", "sdxl-inpaint")."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ModelLoadError(f"unknown model family {name!r}; known: {', '.join(f.name for f in FAMILIES)}")


# ModelSpec's metadata key (Stability's model card format, also written by kohya's sd-scripts): "WxH".
RESOLUTION_METADATA_KEY = "modelspec.resolution"


def native_resolution(family: Family, metadata: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(width, height) a checkpoint was trained at: its `modelspec.resolution` metadata when that is a
    valid size, else the family's (1024 SDXL, 768 SD2 v-prediction, 512 SD1/SD2)."""
    value = str((metadata or {}).get(RESOLUTION_METADATA_KEY, ""))
    width, _, height = value.lower().partition("x")
    if width.strip().isdigit() and height.strip().isdigit():
        size = int(width), int(height)
        if all(64 <= side <= 16384 and side % 8 == 0 for side in size):
            return size
    side = 1024 if family.is_sdxl else 768 if family.prediction_type == "v_prediction" else 512
    return side, side


def describe_keys(shapes: Shapes) -> str:
    """A short human summary of a state dict: key count, top-level prefixes, UNet input channels."""
    prefixes = Counter(".".join(key.split(".")[:2]) if key.count(".") >= 2 else key.split(".")[0]
                       for key in shapes)
    top = ", ".join(f"{prefix} ({count})" for prefix, count in prefixes.most_common(8))
    in_channels = _unet_in_channels(shapes)
    unet = f"; UNet input channels: {in_channels}" if in_channels is not None else "; no UNet input conv"
    return f"{len(shapes)} tensors; key prefixes: {top or 'none'}{unet}"


def detect_family(shapes: Shapes) -> Family:
    """The family of an original-layout (ldm/A1111) state dict, from `{key: shape}`.

    SD2 768-v files have the same layout as SD2 512 files: this returns "sd2" for both, and the loader
    decides with `Family.v_prediction_variant` after probing the UNet, as A1111 does.
    Raises ModelLoadError naming what was found when no family matches.
    """
    shapes = {normalise_key(key): shape for key, shape in shapes.items()}
    for family in FAMILIES:
        if family.fingerprint is not None and family.fingerprint(shapes):
            return family
    raise ModelLoadError(f"unrecognised checkpoint: not SD1.x, SD2.x or SDXL base ({describe_keys(shapes)})")


def detect_family_from_diffusers(model_index: Mapping[str, Any], unet_config: Mapping[str, Any],
                                 text_encoder_config: Mapping[str, Any],
                                 scheduler_config: Mapping[str, Any]) -> Family:
    """The family of a diffusers-format folder, from its model_index.json and component configs."""
    in_channels = int(unet_config.get("in_channels", 4))
    if in_channels not in (4, 9):
        raise ModelLoadError(f"unrecognised diffusers model: UNet input channels {in_channels}")
    if "text_encoder_2" in model_index or unet_config.get("addition_embed_type") == "text_time":
        architecture = "sdxl"
    elif text_encoder_config.get("hidden_act") == "gelu":
        # OpenCLIP (SD2) uses exact GELU; OpenAI CLIP (SD1) uses quick_gelu.
        architecture = "sd2"
    else:
        architecture = "sd1"
    is_inpaint = in_channels == 9
    v_prediction = scheduler_config.get("prediction_type", "epsilon") == "v_prediction"
    for family in FAMILIES:
        if (family.architecture == architecture and family.is_inpaint == is_inpaint
                and (family.prediction_type == "v_prediction") == v_prediction):
            return family
    raise ModelLoadError(f"unsupported diffusers model: {architecture}, inpaint={is_inpaint}, "
                         f"prediction_type={scheduler_config.get('prediction_type')!r}")


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """`{key: shape}` from a .safetensors file's JSON header, without reading tensors or importing torch."""
    try:
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise ModelLoadError(f"{path.name}: not a readable .safetensors file ({exc})") from exc
    return {key: tuple(entry["shape"]) for key, entry in header.items() if key != "__metadata__"}


# ---- configs: shipped full-size ones and the rules that derive smaller ones ---------------------------

def read_config(family: Family, component: str) -> dict[str, Any]:
    """A shipped config: component "unet", "vae", "text_encoder", "text_encoder_2", "scheduler" or "model_index"."""
    if component == "model_index":
        path = family.config_dir / "model_index.json"
    elif component == "scheduler":
        path = family.config_dir / "scheduler" / "scheduler_config.json"
    else:
        path = family.config_dir / component / "config.json"
    return json.loads(path.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class UNetDims:
    """The UNet widths that vary between checkpoints of one family (read from tensors or chosen)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    cross_attention_dim: int
    down_block_has_attention: tuple[bool, ...]
    transformer_layers_per_block: tuple[int, ...]
    in_channels: int
    out_channels: int
    projection_class_embeddings_input_dim: int | None = None  # SDXL only
    addition_time_embed_dim: int | None = None  # SDXL only


@dataclass(frozen=True)
class VaeDims:
    """The VAE widths that vary between checkpoints."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    latent_channels: int


@dataclass(frozen=True)
class TextEncoderDims:
    """The text-encoder widths that vary between checkpoints."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    vocab_size: int
    max_position_embeddings: int
    projection_dim: int | None = None  # only encoders with a projection record it in a tensor


def unet_attention_heads(family: Family, block_out_channels: Sequence[int]) -> int | list[int]:
    """Heads per UNet block (diffusers' `attention_head_dim` config field holds the head count)."""
    if family.architecture == "sd1":
        return 8
    return [max(1, channels // 64) for channels in block_out_channels]


def text_encoder_heads(hidden_size: int) -> int:
    """Attention heads of a CLIP text encoder: 64-channel heads, at least one."""
    return max(1, hidden_size // 64)


def unet_config(family: Family, dims: UNetDims) -> dict[str, Any]:
    """The family's UNet config with the given widths."""
    levels = len(dims.block_out_channels)
    if len(dims.transformer_layers_per_block) != levels or len(dims.down_block_has_attention) != levels:
        raise ModelLoadError("UNet dims: one attention flag and one transformer depth per block are required")
    config = read_config(family, "unet")
    down = ["CrossAttnDownBlock2D" if attn else "DownBlock2D" for attn in dims.down_block_has_attention]
    config.update(
        block_out_channels=list(dims.block_out_channels),
        layers_per_block=dims.layers_per_block,
        cross_attention_dim=dims.cross_attention_dim,
        down_block_types=down,
        up_block_types=[name.replace("Down", "Up") for name in reversed(down)],
        transformer_layers_per_block=(list(dims.transformer_layers_per_block)
                                      if len(set(dims.transformer_layers_per_block)) > 1
                                      else dims.transformer_layers_per_block[0]),
        attention_head_dim=unet_attention_heads(family, dims.block_out_channels),
        in_channels=dims.in_channels,
        out_channels=dims.out_channels,
    )
    if family.is_sdxl:
        config.update(projection_class_embeddings_input_dim=dims.projection_class_embeddings_input_dim,
                      addition_time_embed_dim=dims.addition_time_embed_dim)
    return config


def vae_config(family: Family, dims: VaeDims) -> dict[str, Any]:
    """The family's VAE config with the given widths (scaling factor kept from the family)."""
    config = read_config(family, "vae")
    levels = len(dims.block_out_channels)
    config.update(block_out_channels=list(dims.block_out_channels), layers_per_block=dims.layers_per_block,
                  latent_channels=dims.latent_channels,
                  down_block_types=["DownEncoderBlock2D"] * levels, up_block_types=["UpDecoderBlock2D"] * levels)
    return config


def text_encoder_config(family: Family, index: int, dims: TextEncoderDims) -> dict[str, Any]:
    """The family's config for text encoder `index` (0 or 1) with the given widths."""
    config = read_config(family, family.text_encoders[index].subfolder)
    config.update(hidden_size=dims.hidden_size, intermediate_size=dims.intermediate_size,
                  num_hidden_layers=dims.num_hidden_layers, vocab_size=dims.vocab_size,
                  max_position_embeddings=dims.max_position_embeddings,
                  num_attention_heads=text_encoder_heads(dims.hidden_size))
    if dims.projection_dim is not None:
        config["projection_dim"] = dims.projection_dim
    return config
