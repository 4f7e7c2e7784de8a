"""Diffusers components -> the original single-file (ldm / A1111) state-dict layout.

This is the inverse of diffusers' single-file conversion (`convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint`, the CLIP/OpenCLIP text-encoder conversions): exporting and loading back
gives bit-identical tensors. It is used to write the built-in model as a normal checkpoint and to build
test checkpoints of every family.

Layout facts it encodes (from the CompVis/Stability ldm code):
- UNet (`model.diffusion_model.`): `input_blocks.0` is the input conv; each level then has
  `layers_per_block` entries `input_blocks.N` (`.0` resnet, `.1` transformer) and, except the last level,
  a downsampler `input_blocks.N.0.op`; `middle_block.{0,1,2}` = resnet, transformer, resnet;
  `output_blocks` mirror the levels with `layers_per_block + 1` entries, the upsampler at `.1.conv`
  (or `.2.conv` after a transformer). Resnets name their layers in_layers/emb_layers/out_layers.
- VAE (`first_stage_model.`): `encoder.down.I.block.J`, `decoder.up.I` numbered from the lowest
  resolution upwards (reverse of diffusers), `mid.block_1/attn_1/block_2`, and the mid attention's
  q/k/v/proj_out stored as 1x1 convolutions ([c, c, 1, 1]).
- Text encoders: OpenAI CLIP in transformers' naming under `...transformer.text_model.`; OpenCLIP
  (SD2, SDXL's second encoder) as `transformer.resblocks.N` with fused `attn.in_proj_*` (q, k, v
  concatenated) and `text_projection` stored transposed.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from backend.errors import ModelLoadError
from backend.models.families import UNET_PREFIX, VAE_PREFIX, Family, TextEncoderSpec

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

_UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _rename_resnet(rest: str) -> str:
    layer, _, param = rest.rpartition(".")
    return f"{_UNET_RESNET.get(layer, layer)}.{param}"


def unet_key_to_ldm(key: str, layers_per_block: int, up_block_has_attention: list[bool]) -> str:
    """The ldm name (without `model.diffusion_model.`) of a diffusers UNet2DConditionModel parameter."""
    stride = layers_per_block + 1
    head, _, param = key.rpartition(".")
    if head in _UNET_TOP_LEVEL:
        return f"{_UNET_TOP_LEVEL[head]}.{param}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        entry = 1 + block * stride + index
        if kind == "resnets":
            return f"input_blocks.{entry}.0.{_rename_resnet(rest)}"
        return f"input_blocks.{entry}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key):
        return f"input_blocks.{1 + int(match[1]) * stride + layers_per_block}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        kind, index, rest = match[1], int(match[2]), match[3]
        return f"middle_block.{2 * index}.{_rename_resnet(rest)}" if kind == "resnets" else f"middle_block.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, index, rest = int(match[1]), match[2], int(match[3]), match[4]
        entry = block * stride + index
        if kind == "resnets":
            return f"output_blocks.{entry}.0.{_rename_resnet(rest)}"
        return f"output_blocks.{entry}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key):
        block = int(match[1])
        slot = 2 if up_block_has_attention[block] else 1
        return f"output_blocks.{block * stride + layers_per_block}.{slot}.conv.{match[2]}"
    raise ModelLoadError(f"cannot export UNet parameter {key!r} to the ldm layout")


def export_unet(unet: UNet2DConditionModel) -> dict[str, Tensor]:
    """The UNet's tensors under `model.diffusion_model.` in the ldm layout."""
    config = unet.config
    up_attention = ["CrossAttn" in name for name in config.up_block_types]
    return {UNET_PREFIX + unet_key_to_ldm(key, config.layers_per_block, up_attention): value.detach()
            for key, value in unet.state_dict().items()}


def vae_key_to_ldm(key: str, num_blocks: int) -> str:
    """The ldm name (without `first_stage_model.`) of a diffusers AutoencoderKL parameter."""
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(.+)", key):
        return f"encoder.down.{match[1]}.block.{match[2]}"
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", key):
        return f"encoder.down.{match[1]}.downsample.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(match[1])}.block.{match[2]}"
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(match[1])}.upsample.{match[2]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3]}"
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
        return f"{match[1]}.mid.attn_1.{_VAE_ATTENTION[match[2]]}.{match[3]}"
    return key


def export_vae(vae: AutoencoderKL) -> dict[str, Tensor]:
    """The VAE's tensors under `first_stage_model.`; attention projections become 1x1 conv weights."""
    num_blocks = len(vae.config.block_out_channels)
    exported = {}
    for key, value in vae.state_dict().items():
        name = vae_key_to_ldm(key, num_blocks)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]
        exported[VAE_PREFIX + name] = value.detach()
    return exported


def _text_model_state(text_encoder: torch.nn.Module) -> dict[str, Tensor]:
    """CLIP text tensors without the `text_model.` level (present only on the WithProjection class)."""
    return {key.removeprefix("text_model."): value.detach() for key, value in text_encoder.state_dict().items()}


def export_hf_clip(text_encoder: torch.nn.Module, spec: TextEncoderSpec) -> dict[str, Tensor]:
    """An OpenAI-CLIP text encoder under `spec.prefix` (`...transformer.text_model.`)."""
    return {spec.prefix + key: value for key, value in _text_model_state(text_encoder).items()
            if key != "text_projection.weight"}


def export_open_clip(text_encoder: torch.nn.Module, spec: TextEncoderSpec) -> dict[str, Tensor]:
    """A CLIP text encoder in OpenCLIP's layout under `spec.prefix` (fused q/k/v, transposed projection).

    For SD2 (`spec.drops_last_layer`) the loader keeps all but the last exported block, so pass the
    full tower here.
    """
    state = _text_model_state(text_encoder)
    out: dict[str, Tensor] = {}
    fused: dict[tuple[int, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif key.startswith("final_layer_norm."):
            out["ln_final." + key.rpartition(".")[2]] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()
        elif match := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            fused.setdefault((int(match[1]), match[3]), {})[match[2]] = value
        elif match := re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key):
            out[f"transformer.resblocks.{match[1]}.{_OPEN_CLIP_LAYER[match[2]]}.{match[3]}"] = value
        else:
            raise ModelLoadError(f"cannot export text-encoder parameter {key!r} to the OpenCLIP layout")
    for (layer, param), parts in fused.items():
        out[f"transformer.resblocks.{layer}.attn.in_proj_{param}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return {spec.prefix + key: value for key, value in out.items()}


def export_ldm_state_dict(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: torch.nn.Module,
                          family: Family, text_encoder_2: torch.nn.Module | None = None) -> dict[str, Tensor]:
    """A full single-file state dict (UNet, VAE, text encoders) in the original layout of `family`.

    The returned tensors share memory with the modules where no reshaping is needed; save or clone them.
    """
    encoders = [text_encoder] if text_encoder_2 is None else [text_encoder, text_encoder_2]
    if len(encoders) != len(family.text_encoders):
        raise ModelLoadError(f"{family.name} needs {len(family.text_encoders)} text encoder(s), got {len(encoders)}")
    state = {**export_unet(unet), **export_vae(vae)}
    for encoder, spec in zip(encoders, family.text_encoders, strict=True):
        state.update(export_hf_clip(encoder, spec) if spec.layout == "hf_clip" else export_open_clip(encoder, spec))
    return state
