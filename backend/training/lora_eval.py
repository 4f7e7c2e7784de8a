"""Measure LoRA training on the shapes model: `python -m backend.training.lora_eval --model PATH`.

The held-out shape (`shapes.HELD_OUT_SHAPE`, the star) never appears in the built-in model's training set.
This command renders `--images` captioned star scenes, trains a LoRA on them through the same job as the
Train tab (`lora.submit_training`, CPU unless `--device` says otherwise), then generates
"a <colour> star on a <background> background" for `--seeds` seeds with `<lora:NAME:1>` and without it,
and reports the share of images the evaluator classes as a star in each case, and the training time.
Target (issue 10): >= 70% with the LoRA, < 10% without.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean
from typing import Any

from backend.training import evaluator, shapes
from backend.training.evaluate import open_model
from backend.training.lora import LoraTrainingParams, submit_training

NAME = "shapes-star"
# (colour, background) of the evaluation prompts; the seeds are spread over them.
EVAL_PAIRS = (("red", "blue"), ("yellow", "black"), ("white", "green"), ("blue", "yellow"), ("green", "white"))


def write_star_set(folder: Path, count: int, seed: int = 0, side: int = 64) -> Path:
    """`count` rendered single-star scenes with their A1111-style captions."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = 0
    while written < count:
        spec = shapes.ShapeSpec.sample(rng, (shapes.HELD_OUT_SHAPE,))
        if spec.count != 1:
            continue
        shapes.render(spec, side).save(folder / f"star{written:03d}.png")
        (folder / f"star{written:03d}.txt").write_text(shapes.caption(spec, rng), encoding="utf-8")
        written += 1
    return folder


def star_share(model: Any, seeds: int, tag: str) -> float:
    """Share of generations the evaluator classes as a star, over EVAL_PAIRS and `seeds` seeds in all."""
    per_pair = max(1, seeds // len(EVAL_PAIRS))
    found = []
    for colour, background in EVAL_PAIRS:
        prompt = shapes.prompt_for(colour, shapes.HELD_OUT_SHAPE, background) + tag
        found += [evaluator.assess(image).shape == shapes.HELD_OUT_SHAPE
                  for image in model.txt2img(prompt, range(per_pair))]
    return mean(found)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m backend.training.lora_eval", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the shapes checkpoint")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--network", default="LoCon", choices=("LoRA", "LoCon"))
    parser.add_argument("--steps", type=int, default=1000, help="training steps")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dim", type=int, default=16, help="rank (and conv rank for LoCon)")
    parser.add_argument("--unet-lr", type=float, default=2e-3)
    parser.add_argument("--te-lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="lora-eval-") as folder:
        root = Path(folder)
        model = open_model(args.model, root)
        try:
            without = star_share(model, args.seeds, "")
            print(f"star share without the LoRA: {without:.2f}", flush=True)
            params = LoraTrainingParams(
                name=NAME, dataset=str(write_star_set(root / "stars", args.images)), model=model.checkpoint,
                resolution=64, network_type=args.network, dim=args.dim, alpha=args.dim / 2, conv_dim=args.dim,
                conv_alpha=args.dim / 2, unet_lr=args.unet_lr, text_encoder_lr=args.te_lr,
                max_train_steps=args.steps, batch_size=args.batch, warmup_steps=args.steps // 20, seed=1)
            started, cpu = time.monotonic(), time.process_time()
            job, run = submit_training(model.ctx, params)
            job.wait()
            seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu
            print(f"trained {run.step} steps in {seconds:.0f}s ({cpu_seconds:.0f}s CPU); "
                  f"last losses {[round(v, 4) for _, v in run.losses[-5:]]}", flush=True)
            with_lora = star_share(model, args.seeds, f" <lora:{NAME}:1>")
            print(f"star share with <lora:{NAME}:1>: {with_lora:.2f}", flush=True)
        finally:
            model.ctx.stop()
    results = {"without_lora": without, "with_lora": with_lora, "train_seconds": round(seconds),
               "train_cpu_seconds": round(cpu_seconds), "network": args.network, "steps": args.steps, "batch": args.batch,
               "images": args.images, "seeds": args.seeds, "target_met": with_lora >= 0.7 and without < 0.1}
    print(json.dumps(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
