"""Family table: detection from keys/shapes, shipped configs, derived-config rules."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.errors import ModelLoadError
from backend.models import families
from backend.models.families import (
    FAMILIES,
    TextEncoderDims,
    UNetDims,
    detect_family,
    detect_family_from_diffusers,
    family_by_name,
    safetensors_shapes,
)
from tests.backend.models.tiny_checkpoints import build_tiny_model, write_checkpoint

DETECTABLE = [f.name for f in FAMILIES if f.fingerprint is not None]


@pytest.fixture(scope="module")
def tiny_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """`{family: {key: shape}}` of a tiny checkpoint of every key-detectable family."""
    return {name: {k: tuple(v.shape) for k, v in build_tiny_model(name).state_dict().items()} for name in DETECTABLE}


def test_table_has_the_required_families() -> None:
    assert [f.name for f in FAMILIES] == ["sd1", "sd1-inpaint", "sd2", "sd2-v", "sd2-inpaint", "sdxl", "sdxl-inpaint"]
    assert family_by_name("sd2").v_prediction_variant == "sd2-v"
    assert family_by_name("sd2-v").prediction_type == "v_prediction"
    assert all(f.is_inpaint == (f.unet_in_channels == 9) for f in FAMILIES)
    assert [spec.pad_token for spec in family_by_name("sdxl").text_encoders] == ["<|endoftext|>", "!"]


@pytest.mark.parametrize("name", DETECTABLE)
def test_detects_every_family_from_tiny_state_dict(name: str, tiny_shapes: dict) -> None:
    assert detect_family(tiny_shapes[name]).name == name


def test_detection_from_a_safetensors_header(tmp_path: Path) -> None:
    state = build_tiny_model("sd1-inpaint").state_dict()
    path = write_checkpoint(tmp_path / "x.safetensors", state)
    shapes = safetensors_shapes(path)
    assert shapes == {k: tuple(v.shape) for k, v in state.items()}
    assert detect_family(shapes).name == "sd1-inpaint"


def test_unreadable_safetensors_header_is_a_load_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not")
    with pytest.raises(ModelLoadError, match="bad.safetensors"):
        safetensors_shapes(path)


def test_unrecognised_state_dict_names_what_was_found() -> None:
    with pytest.raises(ModelLoadError) as info:
        detect_family({"encoder.layer.0.weight": (4, 4), "lora_unet_down.alpha": ()})
    message = str(info.value)
    assert "unrecognised checkpoint" in message
    assert "2 tensors" in message and "encoder.layer (1)" in message and "no UNet input conv" in message


def test_instruct_pix2pix_input_width_is_not_taken_for_sd1(tiny_shapes: dict) -> None:
    shapes = dict(tiny_shapes["sd1"])
    shapes[families.UNET_INPUT_KEY] = (32, 8, 3, 3)
    with pytest.raises(ModelLoadError, match="UNet input channels: 8"):
        detect_family(shapes)


def test_sdxl_refiner_layout_is_not_recognised(tiny_shapes: dict) -> None:
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v
               for k, v in tiny_shapes["sdxl"].items() if not k.startswith("conditioner.embedders.0.")}
    with pytest.raises(ModelLoadError, match="conditioner.embedders"):
        detect_family(refiner)


def test_unknown_family_name() -> None:
    with pytest.raises(ModelLoadError, match="sd3"):
        family_by_name("sd3")


# Parameter counts of the published full-size models; they pin the shipped configs.
FULL_SIZE_UNET_PARAMS = {"sd1": 859_520_964, "sd1-inpaint": 859_535_364, "sd2": 865_910_724, "sd2-v": 865_910_724,
                         "sd2-inpaint": 865_925_124, "sdxl": 2_567_463_684, "sdxl-inpaint": 2_567_478_084}
FULL_SIZE_TEXT_PARAMS = {"sd1": [123_060_480], "sd2": [340_387_840], "sdxl": [123_060_480, 694_659_840]}


@pytest.mark.parametrize("name", [f.name for f in FAMILIES])
def test_shipped_configs_are_the_full_size_models(name: str) -> None:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = family_by_name(name)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(families.read_config(family, "unet"))
        vae = AutoencoderKL.from_config(families.read_config(family, "vae"))
        encoders = [(CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel)(
            CLIPTextConfig(**families.read_config(family, spec.subfolder))) for spec in family.text_encoders]
    assert sum(p.numel() for p in unet.parameters()) == FULL_SIZE_UNET_PARAMS[name]
    assert sum(p.numel() for p in vae.parameters()) == 83_653_863
    assert [sum(p.numel() for p in e.parameters()) for e in encoders] == FULL_SIZE_TEXT_PARAMS[family.architecture]
    assert unet.config.in_channels == family.unet_in_channels
    index = json.loads((family.config_dir / "model_index.json").read_text())
    assert ("text_encoder_2" in index) == family.is_sdxl
    assert families.read_config(family, "scheduler")["prediction_type"] == family.prediction_type


def test_config_folders_hold_no_weights_or_tokenizers() -> None:
    files = [p for p in families.CONFIGS_DIR.rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".json" for p in files)
    assert not any("tokenizer" in part for p in files for part in p.parts)


def test_attention_head_rules() -> None:
    assert families.unet_attention_heads(family_by_name("sd1"), (320, 640, 1280, 1280)) == 8
    assert families.unet_attention_heads(family_by_name("sd2"), (320, 640, 1280, 1280)) == [5, 10, 20, 20]
    assert families.unet_attention_heads(family_by_name("sdxl"), (32, 64)) == [1, 1]
    assert [families.text_encoder_heads(w) for w in (768, 1024, 1280, 32)] == [12, 16, 20, 1]


def test_derived_configs_override_widths_and_keep_the_rest() -> None:
    family = family_by_name("sdxl")
    config = families.unet_config(family, UNetDims((32, 64), 1, 80, (False, True), (1, 2), 4, 4, 64, 8))
    assert config["block_out_channels"] == [32, 64] and config["layers_per_block"] == 1
    assert config["down_block_types"] == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert config["up_block_types"] == ["CrossAttnUpBlock2D", "UpBlock2D"]
    assert config["transformer_layers_per_block"] == [1, 2] and config["attention_head_dim"] == [1, 1]
    assert config["addition_embed_type"] == "text_time" and config["use_linear_projection"] is True
    text = families.text_encoder_config(family, 1, TextEncoderDims(48, 96, 2, 49408, 77, 16))
    assert (text["hidden_size"], text["num_attention_heads"], text["projection_dim"]) == (48, 1, 16)
    assert text["hidden_act"] == "gelu"
    with pytest.raises(ModelLoadError, match="one attention flag"):
        families.unet_config(family, UNetDims((32, 64), 1, 80, (True,), (1, 2), 4, 4))


@pytest.mark.parametrize(("index", "unet", "text", "scheduler", "expected"), [
    ({}, {"in_channels": 4}, {"hidden_act": "quick_gelu"}, {"prediction_type": "epsilon"}, "sd1"),
    ({}, {"in_channels": 9}, {"hidden_act": "quick_gelu"}, {}, "sd1-inpaint"),
    ({}, {"in_channels": 4}, {"hidden_act": "gelu"}, {"prediction_type": "v_prediction"}, "sd2-v"),
    ({}, {"in_channels": 9}, {"hidden_act": "gelu"}, {"prediction_type": "epsilon"}, "sd2-inpaint"),
    ({"text_encoder_2": []}, {"in_channels": 4, "addition_embed_type": "text_time"}, {}, {}, "sdxl"),
])
def test_detects_diffusers_folders_from_configs(index: dict, unet: dict, text: dict, scheduler: dict,
                                                expected: str) -> None:
    assert detect_family_from_diffusers(index, unet, text, scheduler).name == expected


def test_unsupported_diffusers_configs_are_refused() -> None:
    with pytest.raises(ModelLoadError, match="input channels 8"):
        detect_family_from_diffusers({}, {"in_channels": 8}, {}, {})
    with pytest.raises(ModelLoadError, match="v_prediction"):
        detect_family_from_diffusers({"text_encoder_2": []}, {"in_channels": 4}, {},
                                     {"prediction_type": "v_prediction"})
