"""The built-in default model: deterministic build, ldm layout, loads through the normal loader."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch

from backend.models import builtin
from backend.models.builtin import DEFAULT_MODEL_FILENAME, build_default_model, ensure_random_model
from backend.models.families import detect_family, safetensors_shapes
from backend.models.ldm_export import export_ldm_state_dict
from backend.models.loader import load_checkpoint


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_default_model(tmp_path_factory.mktemp("builtin") / DEFAULT_MODEL_FILENAME)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_builds_are_byte_identical(built: Path, tmp_path: Path) -> None:
    torch.manual_seed(123)  # the global RNG must not matter
    again = build_default_model(tmp_path / "again.safetensors")
    assert sha256(again) == sha256(built)
    other_seed = build_default_model(tmp_path / "seed1.safetensors", seed=1)
    assert sha256(other_seed) != sha256(built)


def test_build_leaves_the_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    builtin.build_default_state_dict()
    assert torch.equal(torch.rand(3), expected)


def test_file_is_a_small_sd1_checkpoint_in_ldm_layout(built: Path) -> None:
    shapes = safetensors_shapes(built)
    assert detect_family(shapes).name == "sd1"
    assert shapes["model.diffusion_model.input_blocks.0.0.weight"] == (32, 4, 3, 3)
    assert shapes["cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"] == (49408, 32)
    assert shapes["first_stage_model.encoder.mid.attn_1.q.weight"] == (64, 64, 1, 1)
    assert built.stat().st_size < 12_000_000
    (length,) = struct.unpack("<Q", built.read_bytes()[:8])
    header = json.loads(built.read_bytes()[8:8 + length])
    assert json.loads(header["__metadata__"][builtin.METADATA_KEY])["name"] == "sd-tiny"
    assert {entry["dtype"] for key, entry in header.items() if key != "__metadata__"} == {"F16"}
    assert not list(built.parent.glob(".*.tmp"))


def test_loads_through_the_normal_loader_and_round_trips(built: Path, tmp_path: Path) -> None:
    model = load_checkpoint(built, device=torch.device("cpu"), dtype=torch.float32, cache_dir=tmp_path)
    assert model.family.name == "sd1" and model.prediction_type == "epsilon"
    assert model.unet.config.block_out_channels == [32, 64] and model.unet.config.attention_head_dim == 8
    # file -> load -> export gives back every tensor of the file exactly
    built_state = builtin.build_default_state_dict()
    again = export_ldm_state_dict(model.unet, model.vae, model.text_encoder, model.family)
    assert again.keys() == built_state.keys()
    for key, value in again.items():
        assert torch.equal(value, built_state[key].float()), key


def test_latent_is_eight_times_smaller_and_text_encoder_runs(built: Path, tmp_path: Path) -> None:
    model = load_checkpoint(built, device=torch.device("cpu"), dtype=torch.float32, cache_dir=tmp_path)
    ids = model.tokenizer("a photograph of an astronaut riding a horse", padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    with torch.no_grad():
        context = model.text_encoder(ids).last_hidden_state
        latent = model.vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mean
        eps = model.unet(latent, torch.tensor([999]), encoder_hidden_states=context).sample
        image = model.vae.decode(eps).sample
    assert context.shape == (1, 77, 32)
    assert latent.shape == (1, 4, 8, 8) and eps.shape == (1, 4, 8, 8)
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()


def test_ensure_random_model_builds_only_when_missing(tmp_path: Path) -> None:
    path = ensure_random_model(tmp_path)
    assert path == tmp_path / "Stable-diffusion" / DEFAULT_MODEL_FILENAME and path.is_file()
    stamp = path.stat().st_mtime_ns
    assert ensure_random_model(tmp_path) == path
    assert path.stat().st_mtime_ns == stamp
