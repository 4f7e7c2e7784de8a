"""Train the built-in "shapes" model: `python -m backend.training.builtin --out PATH [--device cuda] [--resume]`.

The result is an ordinary SD1-architecture single-file checkpoint (ldm layout, float16) at 64x64 native
resolution that draws the scenes of `shapes.py` from their captions. Four stages, each resumable:

1. `vae`: the 8x AutoencoderKL on freshly rendered scenes (every shape, the held-out star and the
   held-out combinations included: the autoencoder sees no text, and a LoRA must be able to draw a star
   through it);
2. latents: the training set (`shapes.training_specs`: no star, no held-out combination) rendered
   once and encoded with the frozen VAE's posterior mean; the latent normalisation is folded into the
   VAE (`vae.normalise_latents`), so the file works with SD1's usual 0.18215 factor;
3. `decoder`: the decoder fine-tuned alone on posterior means (sharper images, same latent space);
4. `unet`: UNet and CLIP text encoder trained jointly with the epsilon objective (`ldm.diffusion_loss`),
   on captions worded at random per step and dropped (empty prompt) 10% of the time for CFG, with an
   EMA of the weights, which is what gets exported.

Stages 3 and 4 only read the cached latents, so they can also run as two processes at once
(`--stages decoder`, `--stages unet`, then `--export-now`) with the same result as one sequential run.
Everything random follows from `--seed` and the step number, so `--resume` after an interruption gives
the same weights as an uninterrupted run. The recipe is written into the file's metadata.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from backend.models.families import (
    RESOLUTION_METADATA_KEY,
    TextEncoderDims,
    UNetDims,
    VaeDims,
    family_by_name,
    read_config,
    text_encoder_config,
    unet_config,
    vae_config,
)
from backend.models.ldm_export import export_ldm_state_dict
from backend.models.loader import write_safetensors
from backend.models.tokenizers import build_clip_tokenizer
from backend.training import shapes
from backend.training.ldm import CaptionTokens, diffusion_loss, encode_tokens, training_alphas_cumprod
from backend.training.loop import Trainer, TrainProgress, step_generator
from backend.training.vae import decoder_loss, encode_means, normalise_latents, vae_loss

FAMILY = "sd1"
STAGES = ("vae", "decoder", "unet")
METADATA_KEY = "sdwebui.training"


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the trained weights (stored in the checkpoint's metadata)."""

    seed: int = 0
    resolution: int = 64
    unet: UNetDims = UNetDims(block_out_channels=(64, 128), layers_per_block=1, cross_attention_dim=64,
                              down_block_has_attention=(True, True), transformer_layers_per_block=(1, 1),
                              in_channels=4, out_channels=4)
    vae: VaeDims = VaeDims(block_out_channels=(32, 32, 64, 64), layers_per_block=1, latent_channels=4)
    text: TextEncoderDims = TextEncoderDims(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                            vocab_size=49408, max_position_embeddings=77)
    vae_steps: int = 8000
    vae_batch: int = 8
    vae_crop: int = 64
    vae_lr: float = 1e-3
    decoder_steps: int = 6000
    decoder_batch: int = 8
    decoder_lr: float = 5e-4
    images: int = 20000
    unet_steps: int = 14000
    unet_batch: int = 32
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    caption_dropout: float = 0.1
    ema_decay: float = 0.998

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def build_components(recipe: Recipe) -> tuple[torch.nn.Module, torch.nn.Module, torch.nn.Module]:
    """Fresh (randomly initialised from the recipe's seed) UNet, VAE and text encoder of the family."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    family = family_by_name(FAMILY)
    # One seed per component, so changing one component's dims leaves the others' initial weights alone.
    torch.manual_seed(recipe.seed)
    vae = AutoencoderKL.from_config(vae_config(family, recipe.vae))
    torch.manual_seed(recipe.seed + 1)
    unet = UNet2DConditionModel.from_config(unet_config(family, recipe.unet))
    torch.manual_seed(recipe.seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(family, 0, recipe.text)))
    return unet, vae, text_encoder


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [n, h, w, 3] -> float [n, 3, h, w] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


@dataclass
class BuiltinTraining:
    """The stages of the built-in model's training, sharing one work folder for checkpoints."""

    recipe: Recipe
    work_dir: Path
    device: torch.device
    on_progress: Callable[[str], None] | None = print
    deadline: float | None = None  # time.monotonic() value after which stages checkpoint and stop

    def __post_init__(self) -> None:
        self.unet, self.vae, self.text_encoder = build_components(self.recipe)
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(self.device)
        self.work_dir.mkdir(parents=True, exist_ok=True)

    def _report(self, progress: TrainProgress) -> None:
        if self.on_progress is not None:
            self.on_progress(progress.line())

    def _stop(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    # ---- stage 1 ---------------------------------------------------------------------------------------

    def vae_trainer(self) -> Trainer:
        r = self.recipe

        def loss(step: int) -> torch.Tensor:
            generator = step_generator(r.seed, step)
            rng = random.Random(r.seed * 7919 + step)
            specs = [shapes.ShapeSpec.sample(rng, shapes.ALL_SHAPES) for _ in range(r.vae_batch)]
            images = images_to_tensor(shapes.render_batch(specs, r.resolution))
            x, y = torch.randint(0, r.resolution - r.vae_crop + 1, (2,), generator=generator).tolist()
            crops = images[:, :, y:y + r.vae_crop, x:x + r.vae_crop].to(self.device)
            return vae_loss(self.vae, crops, generator)

        optimizer = torch.optim.AdamW(self.vae.parameters(), lr=r.vae_lr, weight_decay=0.0)
        return Trainer("vae", {"vae": self.vae}, optimizer, loss, r.vae_steps,
                       checkpoint_path=self.work_dir / "vae-stage.pt", checkpoint_every=100,
                       warmup_steps=50, on_progress=self._report, progress_every=25, should_stop=self._stop)

    # ---- stage 2 ---------------------------------------------------------------------------------------

    def prepare_latents(self) -> tuple[list[shapes.ShapeSpec], torch.Tensor]:
        """Render and encode the training set once; fold the latent normalisation into the VAE."""
        path = self.work_dir / "latents.pt"
        specs = shapes.training_specs(self.recipe.seed, self.recipe.images)
        if path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            self.vae.load_state_dict(saved["vae"])
            return specs, saved["latents"]
        started = time.monotonic()
        self.vae.eval()
        means = torch.cat([encode_means(self.vae, images_to_tensor(shapes.render_batch(specs[i:i + 500],
                                                                                         self.recipe.resolution)))
                           for i in range(0, len(specs), 500)])
        factor = float(read_config(family_by_name(FAMILY), "vae")["scaling_factor"])
        normalise_latents(self.vae, means, factor)
        mean, scale = means.mean(dim=(0, 2, 3)), 1 / (means.std(dim=(0, 2, 3)) * factor)
        latents = factor * scale.view(1, -1, 1, 1) * (means - mean.view(1, -1, 1, 1))
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save({"vae": self.vae.state_dict(), "latents": latents}, temporary)
        os.replace(temporary, path)
        if self.on_progress is not None:
            self.on_progress(f"[latents] encoded {len(specs)} images in {time.monotonic() - started:.0f}s; "
                             f"scaled latent std {latents.std():.3f}")
        return specs, latents

    # ---- stage 3 ---------------------------------------------------------------------------------------

    def decoder_trainer(self) -> Trainer:
        """Fine-tune the decoder on fresh scenes (all shapes) with the encoder, hence the latents, frozen."""
        r = self.recipe

        def loss(step: int) -> torch.Tensor:
            rng = random.Random((r.seed + 1) * 7919 + step)
            specs = [shapes.ShapeSpec.sample(rng, shapes.ALL_SHAPES) for _ in range(r.decoder_batch)]
            return decoder_loss(self.vae, images_to_tensor(shapes.render_batch(specs, r.resolution)).to(self.device))

        parameters = [*self.vae.decoder.parameters(), *self.vae.post_quant_conv.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=r.decoder_lr, weight_decay=0.0)
        return Trainer("decoder", {"vae": self.vae}, optimizer, loss, r.decoder_steps,
                       checkpoint_path=self.work_dir / "decoder-stage.pt", checkpoint_every=100,
                       warmup_steps=50, on_progress=self._report, progress_every=25, should_stop=self._stop)

    # ---- stage 4 ---------------------------------------------------------------------------------------

    def unet_trainer(self, specs: list[shapes.ShapeSpec], latents: torch.Tensor) -> Trainer:
        r = self.recipe
        tokens = CaptionTokens(build_clip_tokenizer())
        alphas = training_alphas_cumprod(family_by_name(FAMILY))
        self.vae.requires_grad_(False)

        def loss(step: int) -> torch.Tensor:
            generator = step_generator(r.seed, step)
            rng = random.Random(r.seed * 7919 + step)
            index = torch.randint(0, latents.shape[0], (r.unet_batch,), generator=generator)
            captions = ["" if rng.random() < r.caption_dropout else shapes.caption(specs[i], rng)
                        for i in index.tolist()]
            context = encode_tokens(self.text_encoder, tokens(captions))
            return diffusion_loss(self.unet, latents[index].to(self.device), context, alphas, generator)

        parameters = [*self.unet.parameters(), *self.text_encoder.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=r.unet_lr, weight_decay=0.0)
        return Trainer("unet", {"unet": self.unet, "text_encoder": self.text_encoder}, optimizer, loss,
                       r.unet_steps, checkpoint_path=self.work_dir / "unet-stage.pt", checkpoint_every=100,
                       warmup_steps=r.warmup_steps, ema_decay=r.ema_decay, on_progress=self._report,
                       progress_every=20, should_stop=self._stop)

    # ---- all of it -------------------------------------------------------------------------------------

    def run(self, *, resume: bool, stages: tuple[str, ...] = STAGES) -> dict[str, int]:
        """Run (or resume) `stages` in order; returns the step each stage reached (0: not run).

        The decoder and UNet stages only read the cached latents, so they may also run in two processes
        at once (`--stage decoder` and `--stage unet`) with the same result."""
        reached = dict.fromkeys(STAGES, 0)
        vae = self.vae_trainer()
        if resume:
            vae.resume()
        if not (self.work_dir / "latents.pt").is_file():
            reached["vae"] = vae.run()
            if vae.step < self.recipe.vae_steps:
                return reached
        reached["vae"] = self.recipe.vae_steps
        specs, latents = self.prepare_latents()
        later = {"decoder": self.decoder_trainer, "unet": lambda: self.unet_trainer(specs, latents)}
        for stage in ("decoder", "unet"):
            trainer = later[stage]()
            if resume or stage not in stages:
                trainer.resume()  # a stage run elsewhere contributes its latest checkpoint
            if stage in stages:
                trainer.run()
            reached[stage] = trainer.step
            trainer.finished_modules()
            if stage in stages and trainer.step < trainer.total_steps:
                break
        return reached

def export_checkpoint(unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module, path: Path,
                      metadata: dict[str, str]) -> Path:
    """Write the components as an SD1 single-file checkpoint (ldm layout, float16), atomically."""
    state = export_ldm_state_dict(unet.float().cpu(), vae.float().cpu(), text_encoder.float().cpu(),
                                  family_by_name(FAMILY))
    state = {key: value.detach().to(torch.float16).contiguous() for key, value in state.items()}
    return write_safetensors(state, path, metadata)


def checkpoint_metadata(recipe: Recipe, steps: dict[str, int], seconds: float, device: str) -> dict[str, str]:
    """The safetensors metadata of a trained checkpoint: recipe, steps reached and native resolution."""
    record = {"recipe": json.loads(recipe.to_json()), "steps_done": steps, "train_seconds_last_run": round(seconds),
              "device": device, "data": "backend.training.shapes",
              "command": "python -m backend.training.builtin --out <path>"}
    return {METADATA_KEY: json.dumps(record, sort_keys=True),
            RESOLUTION_METADATA_KEY: f"{recipe.resolution}x{recipe.resolution}"}


def main(argv: list[str] | None = None) -> int:
    defaults = Recipe()
    parser = argparse.ArgumentParser(prog="python -m backend.training.builtin", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write the .safetensors checkpoint")
    parser.add_argument("--work-dir", type=Path, help="checkpoints of the stages (default: next to --out)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    parser.add_argument("--resume", action="store_true", help="continue from the work folder's checkpoints")
    parser.add_argument("--stages", default=",".join(STAGES),
                        help="stages to train (the VAE stage always runs first when its latents are missing); "
                             "e.g. 'decoder' and 'unet' in two processes")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--vae-steps", type=int, default=defaults.vae_steps)
    parser.add_argument("--decoder-steps", type=int, default=defaults.decoder_steps)
    parser.add_argument("--unet-steps", type=int, default=defaults.unet_steps)
    parser.add_argument("--images", type=int, default=defaults.images, help="training-set size")
    parser.add_argument("--batch", type=int, default=defaults.unet_batch, help="UNet batch size")
    parser.add_argument("--max-minutes", type=float, help="checkpoint and stop after this long (resume later)")
    parser.add_argument("--export-now", action="store_true",
                        help="export the stages' latest checkpoints (EMA weights) without training")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    stages = () if args.export_now else tuple(s.strip() for s in args.stages.split(",") if s.strip())
    if unknown := set(stages) - set(STAGES):
        parser.error(f"--stages: unknown {sorted(unknown)}; known: {', '.join(STAGES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    recipe = Recipe(seed=args.seed, vae_steps=args.vae_steps, decoder_steps=args.decoder_steps,
                    unet_steps=args.unet_steps, images=args.images, unet_batch=args.batch)
    work_dir = args.work_dir or args.out.with_name(f".{args.out.stem}-work")
    started = time.monotonic()
    deadline = started + args.max_minutes * 60 if args.max_minutes else None
    training = BuiltinTraining(recipe, work_dir, torch.device(args.device),
                               on_progress=lambda line: print(line, flush=True), deadline=deadline)
    steps = training.run(resume=args.resume or args.export_now, stages=stages)
    print(f"steps reached: {steps}", flush=True)
    if steps["unet"] == 0 or not (args.export_now or "unet" in stages):
        return 0
    if steps["unet"] < recipe.unet_steps:
        print("the UNet stage is not finished: exporting its current EMA weights; --resume continues", flush=True)
    export_checkpoint(training.unet, training.vae, training.text_encoder, args.out,
                      checkpoint_metadata(recipe, steps, time.monotonic() - started, args.device))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
