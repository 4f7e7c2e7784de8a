"""Benchmark: our txt2img against a plain diffusers pipeline on the same weights.

    python -m backend.bench                                  # CPU, the built-in model
    python -m backend.bench --arch sd15 --random-weights     # GPU, full-size SD1.5 architecture
    python -m backend.bench --arch sdxl --random-weights     # GPU, full-size SDXL architecture

Both sides run the same size, steps, CFG and sampler (Euler a by default), one image
at a time, after warm-up runs; each prints the median seconds per image. The last
line is `ratio=<ours / diffusers>` for scripts. Speed does not depend on weight
values, so random full-size weights measure the real cost on a GPU.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from backend.config import Options
from backend.devices import DevicePolicy
from backend.models import builtin
from backend.models.families import family_by_name, read_config
from backend.models.hashes import HashCache
from backend.models.ldm_export import export_ldm_state_dict
from backend.models.loader import LoadedModel
from backend.models.manager import ModelManager
from backend.models.registry import CheckpointRegistry
from backend.processing import ProcessingContext, StableDiffusionProcessingTxt2Img, process_images

ARCH_FAMILY = {"sd15": "sd1", "sdxl": "sdxl"}
DEFAULT_SIZE = {"tiny": 256, "sd15": 512, "sdxl": 1024}

# Matching diffusers scheduler for each sampler we time (same update rule, same NFE count).
DIFFUSERS_SCHEDULERS = {
    "Euler a": "EulerAncestralDiscreteScheduler",
    "Euler": "EulerDiscreteScheduler",
    "DPM++ 2M": "DPMSolverMultistepScheduler",
    "DDIM": "DDIMScheduler",
}


def build_random_checkpoint(arch: str, path: Path, device: torch.device) -> Path:
    """A full-size checkpoint of `arch` with random weights, in the original single-file layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    family = family_by_name(ARCH_FAMILY[arch])
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(read_config(family, "unet")).half()
        vae = AutoencoderKL.from_config(read_config(family, "vae")).half()
        text_encoder = CLIPTextModel(CLIPTextConfig(**read_config(family, "text_encoder"))).half()
        text_encoder_2 = None
        if family.is_sdxl:
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**read_config(family, "text_encoder_2"))).half()
    state = export_ldm_state_dict(unet, vae, text_encoder, family, text_encoder_2)
    save_file({k: v.contiguous().cpu() for k, v in state.items()}, str(path))
    return path


def diffusers_pipeline(model: LoadedModel, sampler: str) -> Callable[..., object]:
    """A plain diffusers pipeline over the very same module objects our model uses."""
    import diffusers

    family = model.family
    scheduler_cls = getattr(diffusers, DIFFUSERS_SCHEDULERS[sampler])
    scheduler = scheduler_cls.from_config(read_config(family, "scheduler"))
    if model.is_sdxl:
        return diffusers.StableDiffusionXLPipeline(
            vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
            tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet, scheduler=scheduler)
    return diffusers.StableDiffusionPipeline(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _time(fn: Callable[[], object], runs: int, warmup: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ap = argparse.ArgumentParser(prog="python -m backend.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", choices=("tiny", "sd15", "sdxl"), default="tiny")
    ap.add_argument("--random-weights", action="store_true", help="build the full-size architecture with random weights")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=None, help="image width and height")
    ap.add_argument("--cfg-scale", type=float, default=7.0)
    ap.add_argument("--sampler", choices=sorted(DIFFUSERS_SCHEDULERS), default="Euler a")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--use-cpu", action="store_true", help="run on the CPU even when a GPU is present")
    args = ap.parse_args(argv)
    if args.arch != "tiny" and not args.random_weights:
        ap.error("--arch sd15/sdxl needs --random-weights (no full-size weights ship with the project)")

    policy = DevicePolicy.cpu() if args.use_cpu or not torch.cuda.is_available() else \
        DevicePolicy(torch.device(torch.cuda.current_device()), torch.float16, torch.float16)
    size = args.size or DEFAULT_SIZE[args.arch]
    work = Path(tempfile.mkdtemp(prefix="sdbench-"))
    models_dir = work / "models" / "Stable-diffusion"
    models_dir.mkdir(parents=True)
    if args.arch == "tiny":
        builtin.build_default_model(models_dir / builtin.DEFAULT_MODEL_FILENAME)
    else:
        print(f"building random-weight {args.arch} checkpoint ...", flush=True)
        build_random_checkpoint(args.arch, models_dir / f"random-{args.arch}.safetensors", policy.device)

    registry = CheckpointRegistry([models_dir], hash_cache=HashCache(work / "hashes.json"))
    registry.refresh()
    manager = ModelManager(registry, policy, work / "cache")
    info, model = manager.get(None)
    options = Options(None)
    ctx = ProcessingContext(models=manager, options=options, devices=policy, data_dir=work, write_params_txt=False)
    prompt = "a photograph of an astronaut riding a horse"

    def ours() -> object:
        p = StableDiffusionProcessingTxt2Img(prompt=prompt, steps=args.steps, sampler_name=args.sampler,
                                             cfg_scale=args.cfg_scale, seed=1234, width=size, height=size,
                                             do_not_save_samples=True, do_not_save_grid=True)
        return process_images(p, ctx).images[0]

    pipe = diffusers_pipeline(model, args.sampler)
    pipe.set_progress_bar_config(disable=True)

    def theirs() -> object:
        generator = torch.Generator(policy.device).manual_seed(1234)
        return pipe(prompt, num_inference_steps=args.steps, guidance_scale=args.cfg_scale, height=size,
                    width=size, generator=generator).images[0]

    sync = (lambda: torch.cuda.synchronize(policy.device)) if policy.is_cuda else (lambda: None)
    # Interleave the two so machine noise hits both alike.
    ours_t, theirs_t = [], []
    ours_t += _time(ours, 0, args.warmup, sync)
    theirs_t += _time(theirs, 0, args.warmup, sync)
    for _ in range(args.runs):
        ours_t += _time(ours, 1, 0, sync)
        theirs_t += _time(theirs, 1, 0, sync)
    ours_s, theirs_s = statistics.median(ours_t), statistics.median(theirs_t)
    device_name = torch.cuda.get_device_name(policy.device) if policy.is_cuda else "CPU"
    vae_dtype = next(model.vae.parameters()).dtype
    print(f"model: {info.title} ({model.family.name}), device: {device_name}, dtype: {policy.dtype}, "
          f"VAE dtype after the runs: {vae_dtype}")
    print(f"{size}x{size}, {args.steps} steps, {args.sampler}, CFG {args.cfg_scale}, batch 1, {args.runs} runs")
    for label, median, runs in (("ours:     ", ours_s, ours_t), ("diffusers:", theirs_s, theirs_t)):
        print(f"{label} median {median:.4f} s/image ({args.steps / median:.2f} it/s), best {min(runs):.4f}; "
              f"runs: {', '.join(f'{t:.3f}' for t in runs)}")
    print(f"best-run ratio: {min(ours_t) / min(theirs_t):.4f}")
    print(f"ratio={ours_s / theirs_s:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
