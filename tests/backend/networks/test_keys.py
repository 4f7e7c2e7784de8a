"""Key names of network files -> layers of SD1 (built-in), SD2 and SDXL models."""
from __future__ import annotations

import pytest

from backend.networks.keys import TEXT_ENCODER, TEXT_ENCODER_2, UNET, ModuleIndex, split_key
from tests.backend.models.tiny_checkpoints import build_tiny_model


def index_of(model) -> ModuleIndex:
    return ModuleIndex(model.unet, {TEXT_ENCODER: model.text_encoder, TEXT_ENCODER_2: model.text_encoder_2},
                       is_sdxl=model.family.is_sdxl)


@pytest.mark.parametrize(("key", "expected"), [
    ("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
     ("lora_unet_down_blocks_0_resnets_0_conv1", "lora_up.weight")),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1.alpha", ("lora_te_text_model_encoder_layers_0_mlp_fc1", "alpha")),
    ("lora_unet_conv_in.lora_A.weight", ("lora_unet_conv_in", "lora_down.weight")),
    ("unet.mid_block.attentions.0.proj_in.lora_B.weight", ("unet.mid_block.attentions.0.proj_in", "lora_up.weight")),
    ("text_encoder_2.text_model.encoder.layers.1.mlp.fc2.lora.down.weight",
     ("text_encoder_2.text_model.encoder.layers.1.mlp.fc2", "lora_down.weight")),
    ("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor.to_k_lora.up.weight",
     ("unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k", "lora_up.weight")),
    ("unet.conv_in.lora_magnitude_vector", ("unet.conv_in", "dora_scale")),
])
def test_split_key(key: str, expected: tuple[str, str]) -> None:
    assert split_key(key) == expected


def test_sd1_names_from_diffusers_and_ldm_paths(builtin_model) -> None:
    index = index_of(builtin_model)
    layer = builtin_model.unet.get_submodule("up_blocks.0.resnets.1.conv1")
    # builtin: one resnet per level, so up_blocks.0 resnet 1 is output block 1 (not A1111's fixed 3-per-level).
    for name in ("lora_unet_up_blocks_0_resnets_1_conv1", "lora_unet_output_blocks_1_0_in_layers_2",
                 "diffusion_model_output_blocks_1_0_in_layers_2", "unet.up_blocks.0.resnets.1.conv1"):
        target = index.resolve(name)
        assert target is not None and target.module is layer and target.component == UNET, name
    text = index.resolve("lora_te_text_model_encoder_layers_1_self_attn_out_proj")
    assert text.module is builtin_model.text_encoder.get_submodule("encoder.layers.1.self_attn.out_proj")
    assert text.is_text_encoder
    assert index.resolve("transformer_text_model_encoder_layers_1_self_attn_out_proj") is text
    assert index.resolve("lora_te2_text_model_encoder_layers_0_mlp_fc1") is None
    assert index.resolve("lora_unet_no_such_layer") is None


def test_sdxl_kohya_names() -> None:
    model = build_tiny_model("sdxl")
    index = index_of(model)
    # kohya writes SDXL UNet names in the ldm layout; level 1 of the tiny model is input block 3.
    target = index.resolve("lora_unet_input_blocks_3_1_transformer_blocks_1_attn2_to_k")
    assert target.module is model.unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_k")
    te1 = index.resolve("lora_te1_text_model_encoder_layers_0_self_attn_q_proj")
    assert te1.component == TEXT_ENCODER
    assert te1.module is model.text_encoder.get_submodule("encoder.layers.0.self_attn.q_proj")
    te2 = index.resolve("lora_te2_text_model_encoder_layers_1_mlp_fc2")
    assert te2.component == TEXT_ENCODER_2
    assert te2.module is model.text_encoder_2.get_submodule("text_model.encoder.layers.1.mlp.fc2")
    assert index.resolve("text_encoder_2.text_model.encoder.layers.1.mlp.fc2") is te2
    assert index.resolve("lora_te_text_model_encoder_layers_0_self_attn_q_proj") is None  # SD1 naming


def test_sd2_text_encoder_uses_transformers_names() -> None:
    model = build_tiny_model("sd2")
    index = index_of(model)
    target = index.resolve("lora_te_text_model_encoder_layers_1_mlp_fc1")
    assert target.module is model.text_encoder.get_submodule("encoder.layers.1.mlp.fc1")
    assert index.resolve("lora_unet_down_blocks_0_attentions_0_proj_in").module is \
        model.unet.get_submodule("down_blocks.0.attentions.0.proj_in")
