"""Loading single-file checkpoints and diffusers folders offline into `LoadedModel`."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
import torch

from backend.errors import ModelLoadError
from backend.models import loader
from backend.models.families import UNET_PREFIX
from backend.models.loader import LoadedModel, load_checkpoint
from tests.backend.models.tiny_checkpoints import POOLED_DIM, TinyModel, build_tiny_model, write_checkpoint

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load here must work with the hub disabled and without opening a network connection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def tiny() -> dict[str, TinyModel]:
    return {name: build_tiny_model(name) for name in ("sd1", "sd1-inpaint", "sd2", "sdxl")}


def load(path: Path, cache: Path, **kwargs: object) -> LoadedModel:
    return load_checkpoint(path, device=CPU, dtype=torch.float32, cache_dir=cache, **kwargs)


def assert_same_tensors(source: torch.nn.Module, loaded: torch.nn.Module) -> None:
    expected, actual = source.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key, value in actual.items():
        assert torch.equal(value, expected[key]), key


def unet_output(model: LoadedModel, batch: int = 2) -> torch.Tensor:
    config = model.unet.config
    sample = torch.randn(batch, config.in_channels, 8, 8, generator=torch.Generator().manual_seed(1))
    context = torch.zeros(batch, 77, config.cross_attention_dim)
    extra = None
    if model.is_sdxl:
        extra = {"text_embeds": torch.zeros(batch, POOLED_DIM),
                 "time_ids": torch.tensor([[64, 64, 0, 0, 64, 64]] * batch)}
    with torch.no_grad():
        return model.unet(sample, torch.tensor([500]), encoder_hidden_states=context, added_cond_kwargs=extra).sample


@pytest.mark.parametrize("name", ["sd1", "sd1-inpaint", "sdxl"])
def test_tiny_checkpoint_loads_end_to_end(name: str, tiny: dict, tmp_path: Path) -> None:
    source = tiny[name]
    path = write_checkpoint(tmp_path / f"{name}.safetensors", source.state_dict())
    model = load(path, tmp_path / "cache")
    assert model.family.name == name and model.checkpoint_path == path
    assert (model.is_sdxl, model.is_inpaint) == (name == "sdxl", name == "sd1-inpaint")
    assert model.prediction_type == "epsilon" and model.latent_channels == 4
    assert model.vae_scaling_factor == (0.13025 if name == "sdxl" else 0.18215)
    assert unet_output(model).shape == (2, 4, 8, 8)
    # bit-identical round trip: export -> file -> load
    assert_same_tensors(source.unet, model.unet)
    assert_same_tensors(source.vae, model.vae)
    assert_same_tensors(source.text_encoder, model.text_encoder)
    if name == "sdxl":
        assert_same_tensors(source.text_encoder_2, model.text_encoder_2)
        assert model.tokenizer_2.pad_token_id == 0 and model.tokenizer.pad_token_id == 49407
    else:
        assert model.text_encoder_2 is None and model.tokenizer_2 is None
    ids = model.tokenizer("a photograph of an astronaut riding a horse", padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        assert model.text_encoder(ids).last_hidden_state.shape == (1, 77, 32)


def test_sd2_drops_the_last_text_block_and_matches_the_rest(tiny: dict, tmp_path: Path) -> None:
    source = tiny["sd2"]
    model = load(write_checkpoint(tmp_path / "sd2.safetensors", source.state_dict()), tmp_path / "cache")
    assert model.family.name in ("sd2", "sd2-v")
    assert model.tokenizer.pad_token_id == 0
    assert model.text_encoder.config.num_hidden_layers == source.text_encoder.config.num_hidden_layers - 1
    expected = source.text_encoder.state_dict()
    for key, value in model.text_encoder.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert_same_tensors(source.unet, model.unet)


@pytest.mark.parametrize(("output_bias", "family", "prediction"), [
    (-2.0, "sd2-v", "v_prediction"),
    (0.0, "sd2", "epsilon"),
])
def test_sd2_v_prediction_is_probed_like_a1111(tiny: dict, tmp_path: Path, output_bias: float, family: str,
                                               prediction: str) -> None:
    # A UNet whose output is the constant `output_bias`: mean(out - x) at x = 0.5 is bias - 0.5, and A1111
    # calls the model v-prediction when that is below -1.
    state = tiny["sd2"].state_dict()
    state[UNET_PREFIX + "out.2.weight"].zero_()
    state[UNET_PREFIX + "out.2.bias"].fill_(output_bias)
    model = load(write_checkpoint(tmp_path / "probe.safetensors", state), tmp_path / "cache")
    assert (model.family.name, model.prediction_type) == (family, prediction)
    assert model.unet.config.upcast_attention == (family == "sd2-v")


def test_ckpt_with_state_dict_wrapper_loads_weights_only(tiny: dict, tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "model.ckpt", tiny["sd1"].state_dict())
    model = load(path, tmp_path / "cache")
    assert model.family.name == "sd1"
    assert_same_tensors(tiny["sd1"].unet, model.unet)


class _Callback:
    """Stands for the training objects (Lightning callbacks, ...) some old .ckpt files pickle."""


def test_unsafe_pickle_is_refused_with_a_clear_message(tiny: dict, tmp_path: Path) -> None:
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "callbacks": _Callback()}, path)
    with pytest.raises(ModelLoadError) as info:
        load(path, tmp_path / "cache")
    message = str(info.value)
    assert "unsafe.ckpt" in message and "refused to unpickle" in message
    assert "--disable-safe-unpickle is not supported" in message


def test_unrecognised_file_says_what_was_found(tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "lora.safetensors", {"lora_unet_down.lora_up.weight": torch.zeros(4, 2)})
    with pytest.raises(ModelLoadError, match=r"unrecognised checkpoint.*lora_unet_down\.lora_up"):
        load(path, tmp_path / "cache")


def test_missing_component_is_an_error_not_random_weights(tiny: dict, tmp_path: Path) -> None:
    state = {k: v for k, v in tiny["sd1"].state_dict().items() if not k.startswith("first_stage_model.")}
    with pytest.raises(ModelLoadError, match="no VAE"):
        load(write_checkpoint(tmp_path / "novae.safetensors", state), tmp_path / "cache")
    state = tiny["sd1"].state_dict()
    del state[UNET_PREFIX + "middle_block.0.in_layers.2.weight"]
    with pytest.raises(ModelLoadError, match="UNet.*missing"):
        load(write_checkpoint(tmp_path / "partial.safetensors", state), tmp_path / "cache")


@pytest.mark.parametrize(("name", "content", "pattern"), [
    ("corrupt.safetensors", b"garbage", "cannot read safetensors"),
    ("model.onnx", b"", "unsupported checkpoint type"),
    ("list.pt", None, "not a state dict"),
])
def test_bad_files(tmp_path: Path, name: str, content: bytes | None, pattern: str) -> None:
    path = tmp_path / name
    if content is None:
        torch.save([torch.zeros(1)], path)
    else:
        path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=pattern):
        load(path, tmp_path / "cache")
    with pytest.raises(ModelLoadError, match="not found"):
        load(tmp_path / "missing.safetensors", tmp_path / "cache")


def test_dtypes_and_vae_dtype(tiny: dict, tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", tiny["sd1"].state_dict())
    model = load_checkpoint(path, device=CPU, dtype=torch.bfloat16, cache_dir=tmp_path / "c", vae_dtype=torch.float32)
    assert model.unet.dtype == torch.bfloat16 and model.text_encoder.dtype == torch.bfloat16
    assert model.vae.dtype == torch.float32
    model = load_checkpoint(path, device=CPU, dtype=torch.bfloat16, cache_dir=tmp_path / "c")
    assert model.vae.dtype == torch.bfloat16


def test_alphas_cumprod_match_the_sd_schedule(tiny: dict, tmp_path: Path) -> None:
    from diffusers import EulerDiscreteScheduler

    model = load(write_checkpoint(tmp_path / "m.safetensors", tiny["sd1"].state_dict()), tmp_path / "cache")
    alphas = model.alphas_cumprod
    assert alphas.dtype == torch.float32 and alphas.shape == (1000,)
    sigmas = ((1 - alphas) / alphas) ** 0.5
    # A1111/k-diffusion's sigma range for SD models.
    assert sigmas[0].item() == pytest.approx(0.029168, abs=1e-5)
    assert sigmas[-1].item() == pytest.approx(14.614642, abs=1e-4)
    reference = EulerDiscreteScheduler.from_pretrained(model.config_dir, subfolder="scheduler").alphas_cumprod
    torch.testing.assert_close(alphas, reference, rtol=0, atol=1e-6)


def test_diffusers_single_file_loader_agrees_with_ours(tiny: dict, tmp_path: Path) -> None:
    """diffusers' own from_single_file, given our derived config folder, reads the same tensors."""
    from diffusers import StableDiffusionXLPipeline

    path = write_checkpoint(tmp_path / "xl.safetensors", tiny["sdxl"].state_dict())
    model = load(path, tmp_path / "cache")
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), config=str(model.config_dir), local_files_only=True)
    for ours, theirs in [(model.unet, pipe.unet), (model.vae, pipe.vae), (model.text_encoder, pipe.text_encoder),
                         (model.text_encoder_2, pipe.text_encoder_2)]:
        assert_same_tensors(ours, theirs)
    assert pipe.tokenizer_2("a photo", padding="max_length", max_length=77).input_ids[-1] == 0


def test_config_dir_is_written_once_per_architecture(tiny: dict, tmp_path: Path) -> None:
    path = write_checkpoint(tmp_path / "m.safetensors", tiny["sd1"].state_dict())
    first = load(path, tmp_path / "cache").config_dir
    second = load(path, tmp_path / "cache").config_dir
    assert first == second and first.parent == tmp_path / "cache" / "diffusers-configs"
    assert json.loads((first / "unet" / "config.json").read_text())["block_out_channels"] == [32, 64]
    assert (first / "tokenizer" / "tokenizer_config.json").is_file()
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_diffusers_folder_loads(tiny: dict, tmp_path: Path) -> None:
    source = tiny["sd1"]
    folder = tmp_path / "my-model"
    reference = load(write_checkpoint(tmp_path / "m.safetensors", source.state_dict()), tmp_path / "cache").config_dir
    folder.mkdir()
    shutil.copy(reference / "model_index.json", folder / "model_index.json")
    shutil.copytree(reference / "scheduler", folder / "scheduler")
    source.unet.save_pretrained(folder / "unet")
    source.vae.save_pretrained(folder / "vae")
    source.text_encoder.save_pretrained(folder / "text_encoder")
    model = load(folder, tmp_path / "cache")
    assert model.family.name == "sd1" and model.checkpoint_path == folder
    assert_same_tensors(source.unet, model.unet)
    assert_same_tensors(source.text_encoder, model.text_encoder)
    assert model.tokenizer("a photograph of an astronaut riding a horse").input_ids[-1] == 49407


def test_folder_without_model_index_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load(tmp_path, tmp_path / "cache")


def test_read_state_dict_unwraps_and_drops_non_tensors(tmp_path: Path) -> None:
    path = tmp_path / "w.pt"
    torch.save({"state_dict": {"a": torch.ones(2), "step": 3}, "epoch": 1}, path)
    assert list(loader.read_state_dict(path)) == ["a"]


def test_stored_alphas_cumprod_buffer_wins(tiny: dict, tmp_path: Path) -> None:
    state = tiny["sd1"].state_dict()
    state["alphas_cumprod"] = torch.linspace(0.999, 0.001, 1000)
    model = load(write_checkpoint(tmp_path / "m.safetensors", state), tmp_path / "cache")
    assert torch.equal(model.alphas_cumprod, state["alphas_cumprod"])


def test_legacy_clip_key_names_are_renamed(tiny: dict, tmp_path: Path) -> None:
    prefix = "cond_stage_model.transformer.text_model."
    state = {k.replace(prefix, "cond_stage_model.transformer."): v for k, v in tiny["sd1"].state_dict().items()}
    model = load(write_checkpoint(tmp_path / "old.ckpt", state), tmp_path / "cache")
    assert model.family.name == "sd1"
    assert_same_tensors(tiny["sd1"].text_encoder, model.text_encoder)
