"""The training module on tiny dims: a loadable checkpoint comes out, and resuming changes nothing."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from backend.models.families import TextEncoderDims, UNetDims, VaeDims, native_resolution
from backend.models.loader import load_checkpoint
from backend.models.registry import read_safetensors_metadata
from backend.training import builtin, shapes
from backend.training.builtin import BuiltinTraining, Recipe, checkpoint_metadata, export_checkpoint, images_to_tensor
from backend.training.loop import Trainer, warmup_cosine

TINY = Recipe(seed=3, unet=UNetDims((32, 32), 1, 32, (True, False), (1, 1), 4, 4),
              vae=VaeDims((32, 32, 32, 32), 1, 4), text=TextEncoderDims(32, 64, 1, 49408, 77),
              vae_steps=2, vae_batch=2, decoder_steps=2, decoder_batch=2, images=12, unet_steps=4, unet_batch=4,
              warmup_steps=1)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltinTraining, Path]:
    work = tmp_path_factory.mktemp("train")
    training = BuiltinTraining(TINY, work / "work", CPU, on_progress=None)
    steps = training.run(resume=False)
    assert steps == {"vae": 2, "decoder": 2, "unet": 4}
    out = export_checkpoint(training.unet, training.vae, training.text_encoder, work / "tiny.safetensors",
                            checkpoint_metadata(TINY, steps, 1.0, "cpu"))
    return training, out


def test_export_loads_through_the_normal_loader_with_its_recipe(trained, tmp_path: Path) -> None:
    _, path = trained
    metadata = read_safetensors_metadata(path)
    record = metadata[builtin.METADATA_KEY]
    record = record if isinstance(record, dict) else json.loads(record)
    assert record["recipe"]["seed"] == 3 and record["steps_done"] == {"vae": 2, "decoder": 2, "unet": 4}
    model = load_checkpoint(path, device=CPU, dtype=torch.float32, cache_dir=tmp_path)
    assert model.family.name == "sd1" and native_resolution(model.family, metadata) == (64, 64)
    assert model.unet.config.block_out_channels == [32, 32] and model.text_encoder.config.hidden_size == 32


def test_latent_normalisation_is_folded_into_the_vae(trained, tmp_path: Path) -> None:
    training, path = trained
    saved = torch.load(training.work_dir / "latents.pt", weights_only=True)
    cached = saved["latents"]
    # The decoder stage changed the decoder only: the encoder behind the cached latents is untouched.
    final = training.vae.state_dict()
    assert all(torch.equal(value, final[key]) for key, value in saved["vae"].items()
               if key.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(value, final[key]) for key, value in saved["vae"].items() if key.startswith("decoder."))
    assert cached.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert torch.allclose(cached.std(dim=(0, 2, 3)), torch.ones(4), atol=1e-3)
    model = load_checkpoint(path, device=CPU, dtype=torch.float32, cache_dir=tmp_path)
    images = images_to_tensor(shapes.render_batch(shapes.training_specs(TINY.seed, TINY.images)))
    with torch.no_grad():
        latents = model.vae.encode(images).latent_dist.mean * model.vae_scaling_factor
    assert torch.allclose(latents, cached, atol=0.05)  # the file stores float16


def test_resume_equals_an_uninterrupted_run(trained, tmp_path: Path) -> None:
    uninterrupted, _ = trained
    # A fresh run in another folder, stopped after 2 of the 4 UNet steps, then resumed by a new process-like
    # object; it shares the cached latents so both runs train on the same data.
    (tmp_path / "work").mkdir()
    shutil.copy(uninterrupted.work_dir / "latents.pt", tmp_path / "work" / "latents.pt")
    first = BuiltinTraining(TINY, tmp_path / "work", CPU, on_progress=None)
    trainer = first.unet_trainer(*first.prepare_latents())
    trainer.should_stop = lambda: trainer.step >= 2
    assert trainer.run() == 2
    second = BuiltinTraining(TINY, tmp_path / "work", CPU, on_progress=None)
    assert second.run(resume=True) == {"vae": 2, "decoder": 2, "unet": 4}
    for name, value in uninterrupted.unet.state_dict().items():
        assert torch.equal(value, second.unet.state_dict()[name]), name
    for name, value in uninterrupted.text_encoder.state_dict().items():
        assert torch.equal(value, second.text_encoder.state_dict()[name]), name
    for name, value in uninterrupted.vae.state_dict().items():
        assert torch.equal(value, second.vae.state_dict()[name]), name


def test_trainer_reports_progress_and_schedules_the_learning_rate() -> None:
    layer = torch.nn.Linear(2, 1)
    seen = []
    trainer = Trainer("toy", {"layer": layer}, torch.optim.SGD(layer.parameters(), lr=0.1),
                      lambda step: layer(torch.ones(1, 2)).pow(2).sum(), total_steps=6, warmup_steps=2,
                      on_progress=seen.append, progress_every=3)
    assert trainer.run() == 6
    assert [p.step for p in seen] == [3, 6] and seen[-1].total == 6 and seen[-1].loss < seen[0].loss
    assert "step 6/6" in seen[-1].line()
    assert warmup_cosine(0, 10, 2) == 0.5 and warmup_cosine(2, 10, 2) == 1.0
    assert warmup_cosine(10, 10, 2) == pytest.approx(0.1)
