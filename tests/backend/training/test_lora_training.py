"""LoRA training on the built-in tiny model: kohya file format, loading in our loader and diffusers, resume."""
from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from backend.errors import InvalidRequest
from backend.jobs.progress import JobState
from backend.networks import NetworkManager, NetworkRegistry, NetworkRequest
from backend.training import shapes
from backend.training.lora import (
    LoraNetwork,
    LoraTrainer,
    LoraTrainingParams,
    TrainingRun,
    comparison_request,
    epoch_stems,
    lora_dir,
    submit_training,
)

REQUIRED_METADATA = (
    "ss_output_name", "ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_base_model_version",
    "ss_sd_model_name", "ss_resolution", "ss_tag_frequency", "ss_dataset_dirs", "ss_num_train_images",
    "ss_learning_rate", "ss_unet_lr", "ss_text_encoder_lr", "ss_max_train_steps", "ss_epoch", "ss_steps",
    "ss_training_started_at", "ss_training_finished_at", "ss_seed", "ss_noise_offset", "ss_min_snr_gamma",
    "ss_clip_skip", "sshs_model_hash", "sshs_legacy_hash",
)


@pytest.fixture
def app_ctx(tmp_path: Path, models_dir: Path):
    """A started AppContext whose LoRA folder (--lora-dir) belongs to this test alone."""
    from backend.config import Settings
    from backend.context import AppContext
    from backend.devices import DevicePolicy

    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(models_dir),
                                   "--lora-dir", str(tmp_path / "Lora")], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    yield ctx
    ctx.stop()


def star_folder(folder: Path, count: int = 4, side: int = 64) -> Path:
    """`count` rendered star scenes with captions, as a LoRA data set."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for i in range(count):
        spec = shapes.ShapeSpec.sample(rng, (shapes.HELD_OUT_SHAPE,))
        shapes.render(spec, side).save(folder / f"star{i}.png")
        (folder / f"star{i}.txt").write_text(f"zkstar, {spec.colour}, {spec.background} background")
    return folder


def params(tmp_path: Path, **changes: object) -> LoraTrainingParams:
    values: dict[str, object] = dict(name="stars", dataset=str(star_folder(tmp_path / "data")), resolution=64,
                                     dim=4, alpha=2.0, unet_lr=1e-3, text_encoder_lr=1e-3, epochs=2, seed=3)
    values.update(changes)
    return LoraTrainingParams(**values)  # type: ignore[arg-type]


def run_directly(ctx, p: LoraTrainingParams, stop_at: int | None = None) -> tuple[LoraTrainer, TrainingRun]:
    """Train in this thread (not through the queue), optionally interrupting after step `stop_at`."""
    state = JobState()
    run = TrainingRun(p)
    trainer = LoraTrainer(ctx, p, run, state)
    if stop_at is not None:
        original = trainer._on_progress

        def on_progress(network, data, progress):
            original(network, data, progress)
            if progress.step == stop_at:
                state.interrupt()

        trainer._on_progress = on_progress  # type: ignore[method-assign]
    trainer.train()
    return trainer, run


def test_short_run_writes_kohya_files_with_metadata(app_ctx, tmp_path: Path) -> None:
    trainer, run = run_directly(app_ctx, params(tmp_path, network_type="LoCon", conv_dim=2, sample_prompt="zkstar",
                                                   sample_steps=2))
    lora = lora_dir(app_ctx)
    assert run.status == "done" and run.step == run.total_steps == 8  # 4 images x 2 epochs
    assert [Path(s).name for s in run.saved] == ["stars-000001.safetensors", "stars.safetensors"]
    assert (lora / "stars-000001.png").is_file() and (lora / "stars.png").is_file()
    assert [s for s, _ in run.losses] == list(range(1, 9))
    with safe_open(str(lora / "stars.safetensors"), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert all(key in meta for key in REQUIRED_METADATA), [k for k in REQUIRED_METADATA if k not in meta]
    assert meta["ss_network_module"] == "networks.lora" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0" and meta["ss_epoch"] == "2"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "conv_alpha": "1.0"}
    assert json.loads(meta["ss_tag_frequency"])["data"]["zkstar"] == 4
    assert json.loads(meta["ss_dataset_dirs"]) == {"data": {"n_repeats": 1, "img_count": 4}}
    assert meta["ss_resolution"] == "(64, 64)"
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight" in keys
    assert "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight" in keys  # LoCon: a 3x3 conv layer
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.alpha" in keys
    # The saved epoch appears in the LoRA list, with its preview.
    app_ctx.networks.registry.refresh()
    info = app_ctx.networks.registry.find("stars-000001")
    assert info is not None and info.preview is not None
    # Compare: the X/Y/Z plot over the saved epochs (X) and weights (Y), one grid.
    assert epoch_stems(lora_dir(app_ctx), "stars") == ["stars-000001", "stars"]
    grid = app_ctx.generate(comparison_request(app_ctx, "stars", "zkstar", "0.5, 1", steps=2, size=64))
    assert grid.images[0].width >= 2 * 64 and grid.images[0].height >= 2 * 64
    assert "X Values: \"stars-000001, stars\"" in grid.infotexts[0] and "Y Type: Prompt S/R" in grid.infotexts[0]
    with pytest.raises(InvalidRequest) as bad:
        comparison_request(app_ctx, "stars", "zkstar", "half")
    assert bad.value.field == "weights"


def _unet_output(model, context: torch.Tensor) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    latent = torch.randn((1, 4, 8, 8), generator=generator)
    with torch.no_grad():
        return model.unet(latent, torch.tensor([500]), encoder_hidden_states=context).sample


def _text_output(text_encoder, tokenizer) -> torch.Tensor:
    ids = tokenizer(["a star"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids).last_hidden_state


def test_file_loads_in_our_loader_and_diffusers_with_the_same_effect(app_ctx, builtin_model, tmp_path: Path) -> None:
    run_directly(app_ctx, params(tmp_path, epochs=1))
    lora = lora_dir(app_ctx)
    path = lora / "stars.safetensors"
    model = copy.deepcopy(builtin_model)
    context = torch.randn((1, 77, model.unet.config.cross_attention_dim), generator=torch.Generator().manual_seed(1))
    base = _unet_output(model, context)
    base_text = _text_output(model.text_encoder, model.tokenizer)

    manager = NetworkManager(NetworkRegistry([lora]))
    result = manager.activate(model, [NetworkRequest("stars", 1.0, 1.0)])
    assert not result.errors and len(result.applied) == 1
    ours = _unet_output(model, context)
    ours_text = _text_output(model.text_encoder, model.tokenizer)
    manager.deactivate()
    assert not torch.allclose(ours, base, atol=1e-4)  # the network changes the output ...

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(path))
    theirs = _unet_output(model, context)
    theirs_text = _text_output(model.text_encoder, model.tokenizer)
    # ... and diffusers' kohya loader applies the same change (file stored in float16).
    torch.testing.assert_close(theirs, ours, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(theirs_text, ours_text, atol=2e-3, rtol=1e-3)
    assert not torch.allclose(ours_text, base_text, atol=1e-4)


def test_live_network_matches_saved_file(app_ctx, builtin_model, tmp_path: Path) -> None:
    """The hooks used while training give the outputs the merged file gives."""
    p = params(tmp_path, epochs=1, text_encoder_lr=0.0)
    trainer, _ = run_directly(app_ctx, p)
    model = copy.deepcopy(builtin_model)
    network = LoraNetwork(model, p)
    from safetensors.torch import load_file

    state = load_file(str(lora_dir(app_ctx) / "stars.safetensors"))
    for name, adapter in network.adapters.items():
        adapter.lora_down.weight.data.copy_(state[f"{name}.lora_down.weight"].float())
        adapter.lora_up.weight.data.copy_(state[f"{name}.lora_up.weight"].float())
    context = torch.randn((1, 77, model.unet.config.cross_attention_dim))
    network.attach()
    live = _unet_output(model, context)
    network.detach()
    manager = NetworkManager(NetworkRegistry([lora_dir(app_ctx)]))
    manager.activate(model, [NetworkRequest("stars")])
    merged = _unet_output(model, context)
    manager.deactivate()
    torch.testing.assert_close(live, merged, atol=1e-4, rtol=1e-4)


def test_resume_reaches_the_same_weights(app_ctx, tmp_path: Path) -> None:
    p = params(tmp_path, epochs=1, save_every_n_epochs=5)
    _, run = run_directly(app_ctx, p)
    from safetensors.torch import load_file

    lora = lora_dir(app_ctx)
    reference = load_file(str(lora / "stars.safetensors"))
    (lora / "stars.safetensors").unlink()
    _, stopped = run_directly(app_ctx, p, stop_at=2)
    assert stopped.status == "stopped" and stopped.step == 2 and not (lora / "stars.safetensors").exists()
    p.resume = True
    _, resumed = run_directly(app_ctx, p)
    assert resumed.status == "done" and [s for s, _ in resumed.losses] == [1, 2, 3, 4]
    assert [s for s, _ in resumed.losses] == [s for s, _ in run.losses]
    assert resumed.losses == run.losses
    again = load_file(str(lora / "stars.safetensors"))
    for key, value in reference.items():
        torch.testing.assert_close(again[key], value, atol=0, rtol=0)


def test_bad_parameters_name_the_field(app_ctx, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as bad:
        submit_training(app_ctx, params(tmp_path, dim=0))
    assert bad.value.field == "dim"
    with pytest.raises(InvalidRequest) as bad:
        submit_training(app_ctx, params(tmp_path, optimizer="Nope"))
    assert bad.value.field == "optimizer"
    with pytest.raises(InvalidRequest) as bad:
        submit_training(app_ctx, params(tmp_path, dataset=str(tmp_path / "missing")))
    assert bad.value.field == "dataset"
    with pytest.raises(InvalidRequest) as bad:
        submit_training(app_ctx, params(tmp_path, name="never-ran", resume=True))
    assert bad.value.field == "resume"


def test_job_in_the_queue_reports_progress(app_ctx, tmp_path: Path) -> None:
    job, run = submit_training(app_ctx, params(tmp_path, max_train_steps=3, text_encoder_lr=0.0))
    saved = job.wait(120)
    assert run.status == "done" and run.step == 3 and len(run.losses) == 3
    assert saved == run.saved and Path(saved[-1]).name == "stars.safetensors"
    assert job.status.value == "done"


def test_training_lowers_the_loss_on_its_data(app_ctx, builtin_model, tmp_path: Path) -> None:
    """Same latents, timesteps and noise before and after: the trained network fits its images better."""
    from backend.training.ldm import CaptionTokens, diffusion_loss, encode_tokens
    from backend.training.lora import encode_dataset

    p = params(tmp_path, max_train_steps=20, unet_lr=1e-2, text_encoder_lr=0.0, scheduler="constant", dim=8)
    run_directly(app_ctx, p)
    model = copy.deepcopy(builtin_model)
    data = encode_dataset(model, Path(p.dataset), p)
    latents, captions = data.latents[(64, 64)], data.captions[(64, 64)]
    with torch.no_grad():
        context = encode_tokens(model.text_encoder, CaptionTokens(model.tokenizer)(captions))

    def loss() -> float:
        with torch.no_grad():
            return float(sum(diffusion_loss(model.unet, latents, context, model.alphas_cumprod,
                                            torch.Generator().manual_seed(seed)) for seed in range(8)))

    before = loss()
    manager = NetworkManager(NetworkRegistry([lora_dir(app_ctx)]))
    manager.activate(model, [NetworkRequest("stars")])
    after = loss()
    manager.deactivate()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize("family_name", ["sd1", "sdxl"])
def test_kohya_names_resolve_to_the_hooked_layers(family_name: str) -> None:
    """Every adapter's kohya name is found by our loader's index, on the very layer the adapter hooks."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from backend.models.families import TextEncoderDims, UNetDims, family_by_name, text_encoder_config, unet_config
    from backend.networks.keys import ModuleIndex

    family = family_by_name(family_name)
    sdxl = family.is_sdxl
    text = TextEncoderDims(hidden_size=32, intermediate_size=64, num_hidden_layers=2, vocab_size=1000,
                           max_position_embeddings=77, projection_dim=32 if sdxl else None)
    unet = UNet2DConditionModel.from_config(unet_config(family, UNetDims(
        block_out_channels=(32, 64), layers_per_block=2, cross_attention_dim=64 if sdxl else 32,
        down_block_has_attention=(False, True) if sdxl else (True, False), transformer_layers_per_block=(1, 1),
        in_channels=4, out_channels=4, projection_class_embeddings_input_dim=32 + 6 * 8 if sdxl else None,
        addition_time_embed_dim=8 if sdxl else None)))
    first = CLIPTextModel(CLIPTextConfig(**text_encoder_config(family, 0, text)))
    second = CLIPTextModelWithProjection(CLIPTextConfig(**text_encoder_config(family, 1, text))) if sdxl else None
    model = SimpleNamespace(unet=unet, text_encoder=first, text_encoder_2=second, is_sdxl=sdxl)
    network = LoraNetwork(model, LoraTrainingParams(name="n", dataset=".", network_type="LoCon", text_encoder_lr=1e-4))
    index = ModuleIndex(unet, {"text_encoder": first, "text_encoder_2": second}, is_sdxl=sdxl)
    for name, adapter in network.adapters.items():
        target = index.resolve(name)
        assert target is not None and target.module is adapter.layer[0], name
    names = list(network.adapters)
    if sdxl:
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k" in names  # kohya's SDXL (ldm) names
        assert any(n.startswith("lora_te1_text_model_encoder_layers_1_") for n in names)
        assert "lora_te2_text_model_encoder_layers_0_mlp_fc2" in names
    else:
        assert "lora_unet_up_blocks_1_attentions_2_proj_out" in names
        assert "lora_unet_down_blocks_1_downsamplers_0_conv" not in names  # the last level has none
        assert "lora_unet_down_blocks_0_downsamplers_0_conv" in names
        assert "lora_te_text_model_encoder_layers_1_self_attn_out_proj" in names


@pytest.mark.parametrize(("family", "version", "text_prefixes"), [
    ("sd2", "sd_v2", ("lora_te_",)),
    ("sdxl", "sdxl_base_v1-0", ("lora_te1_", "lora_te2_")),
])
def test_sd2_and_sdxl_bases_train_files_that_act(tmp_path: Path, family: str, version: str,
                                                  text_prefixes: tuple[str, ...]) -> None:
    from backend.config import Settings
    from backend.context import AppContext
    from backend.devices import DevicePolicy
    from backend.processing import StableDiffusionProcessingTxt2Img
    from tests.backend.models.tiny_checkpoints import VAE_DIMS_8X, build_tiny_model, write_checkpoint

    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    write_checkpoint(models / "Stable-diffusion" / f"tiny-{family}.safetensors",
                     build_tiny_model(family, seed=1, vae_dims=VAE_DIMS_8X).state_dict())
    settings = Settings.from_args(["--data-dir", str(tmp_path / "data"), "--models-dir", str(models)], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    try:
        _, run = run_directly(ctx, params(tmp_path, model=f"tiny-{family}", name=f"{family}-stars", epochs=1,
                                          unet_lr=1e-2, text_encoder_lr=1e-2))
        assert run.status == "done", run.error
        with safe_open(run.saved[-1], "pt") as f:
            meta, keys = f.metadata(), set(f.keys())
        assert meta["ss_base_model_version"] == version and meta["ss_sd_model_name"] == f"tiny-{family}.safetensors"
        assert all(any(k.startswith(prefix) for k in keys) for prefix in text_prefixes)
        assert any(k.startswith("lora_unet_") for k in keys)
        ctx.networks.registry.refresh()

        def image(prompt: str):
            return ctx.generate(StableDiffusionProcessingTxt2Img(
                prompt=prompt, steps=3, width=64, height=64, seed=2, sampler_name="Euler a",
                do_not_save_samples=True, override_settings={"sd_model_checkpoint": f"tiny-{family}"})).images[0]

        plain, with_lora = image("zkstar"), image(f"zkstar <lora:{family}-stars:1>")
        difference = np.abs(np.asarray(plain, dtype=int) - np.asarray(with_lora, dtype=int)).max()
        assert difference > 2  # the trained file loads and changes the image
    finally:
        ctx.stop()
