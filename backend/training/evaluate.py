"""Measure a shapes model through the app's own generation path: `python -m backend.training.evaluate --model PATH`.

Every image is made by `AppContext.generate` (the job queue, prompt parsing with emphasis and editing,
the samplers), at the checkpoint's native size, and scored by `evaluator`:

- adherence: each held-out (colour, shape, background) combination, `--seeds` seeds, 20 steps, Euler a,
  CFG 7: share of images whose shape colour, shape class and background colour are right;
- emphasis: mean `red_score` of "a (red:1.5) square ..." against "a (red:0.5) square ..."; prompt editing:
  "a [red:blue:0.5] square ..." against the plain red and blue prompts;
- img2img at denoising 0.3 on rendered scenes: share of outputs where the evaluator finds the input's
  shape and position;
- hires fix at 2x against a Lanczos resize of the same first pass: `edge_sharpness` of both.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

from PIL import Image

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img
from backend.training import evaluator, shapes

SAMPLER = "Euler a"
STEPS = 20
CFG = 7.0
EMPHASIS_PROMPT = "a {} square on a white background"


@dataclass
class ModelUnderTest:
    """An AppContext serving one checkpoint, and txt2img/img2img calls with the evaluation's settings."""

    ctx: AppContext
    checkpoint: str
    steps: int = STEPS

    def txt2img(self, prompt: str, seeds: range, **kwargs: Any) -> list[Image.Image]:
        """One image per seed (a single batch: seeds within a batch count up, as in A1111)."""
        p = StableDiffusionProcessingTxt2Img(
            prompt=prompt, seed=seeds.start, batch_size=len(seeds), steps=self.steps, sampler_name=SAMPLER,
            cfg_scale=CFG, do_not_save_samples=True, do_not_save_grid=True,
            override_settings={"sd_model_checkpoint": self.checkpoint}, **kwargs)
        return self.ctx.generate(p).images[:len(seeds)]

    def img2img(self, image: Image.Image, prompt: str, seed: int, denoising_strength: float) -> Image.Image:
        p = StableDiffusionProcessingImg2Img(
            prompt=prompt, init_images=[image], denoising_strength=denoising_strength, seed=seed, steps=self.steps,
            sampler_name=SAMPLER, cfg_scale=CFG, width=image.width, height=image.height, do_not_save_samples=True,
            do_not_save_grid=True, override_settings={"sd_model_checkpoint": self.checkpoint})
        return self.ctx.generate(p).images[0]


def adherence(model: ModelUnderTest, combinations: tuple[tuple[str, str, str], ...], seeds: int) -> dict[str, Any]:
    """Accuracy of shape colour, shape class and background colour over `combinations` x `seeds`."""
    rows = []
    for colour, shape, background in combinations:
        spec = shapes.ShapeSpec(colour, shape, background)
        scores = [evaluator.score(image, spec)
                  for image in model.txt2img(shapes.prompt_for(colour, shape, background), range(seeds))]
        rows.append({"combination": f"{colour} {shape} on {background}",
                     "colour": mean(s.colour for s in scores), "shape": mean(s.shape for s in scores),
                     "background": mean(s.background for s in scores)})
    return {"per_combination": rows, **{key: mean(row[key] for row in rows)
                                        for key in ("colour", "shape", "background")}}


def emphasis(model: ModelUnderTest, seeds: int) -> dict[str, float]:
    """Mean red score for emphasised, de-emphasised, edited and plain prompts (same seeds)."""
    words = {"red_1.5": "(red:1.5)", "red_0.5": "(red:0.5)", "red_to_blue_0.5": "[red:blue:0.5]",
             "red": "red", "blue": "blue"}
    return {key: mean(evaluator.red_score(image) for image in model.txt2img(EMPHASIS_PROMPT.format(word), range(seeds)))
            for key, word in words.items()}


def img2img_layout(model: ModelUnderTest, seeds: int, strength: float = 0.3) -> dict[str, float]:
    """Share of img2img outputs (rendered training-style scenes as input) keeping shape and position."""
    rng = random.Random(1234)
    kept_shape, kept_position = [], []
    for seed in range(seeds):
        spec = shapes.ShapeSpec.sample(rng)
        while spec.count != 1:
            spec = shapes.ShapeSpec.sample(rng)
        source = shapes.render(spec)
        before = evaluator.assess(source)
        after = evaluator.assess(model.img2img(source, shapes.caption(spec, rng), seed, strength))
        kept_shape.append(after.shape == before.shape)
        kept_position.append(after.position == before.position)
    return {"shape": mean(kept_shape), "position": mean(kept_position),
            "both": mean(s and p for s, p in zip(kept_shape, kept_position, strict=True))}


def hires_sharpness(model: ModelUnderTest, seeds: int, upscaler: str = "Latent",
                    denoising_strength: float = 0.6) -> dict[str, float | str]:
    """Edge sharpness of hires-fix 2x outputs against a Lanczos 2x resize of the same first pass."""
    prompt = shapes.prompt_for("red", "triangle", "yellow")
    first = model.txt2img(prompt, range(seeds))
    hires = model.txt2img(prompt, range(seeds), enable_hr=True, hr_scale=2.0, hr_upscaler=upscaler,
                          denoising_strength=denoising_strength)
    resized = [image.resize((image.width * 2, image.height * 2), Image.Resampling.LANCZOS) for image in first]
    hires_values = [evaluator.edge_sharpness(image) for image in hires]
    resize_values = [evaluator.edge_sharpness(image) for image in resized]
    return {"upscaler": upscaler, "denoising_strength": denoising_strength,
            "hires": mean(hires_values), "resize": mean(resize_values),
            "hires_sharper_share": mean(h > r for h, r in zip(hires_values, resize_values, strict=True))}


def open_model(model_path: Path, data_dir: Path) -> ModelUnderTest:
    """A started AppContext (CPU, temporary data and models folders) serving `model_path`."""
    settings = Settings.from_args(["--data-dir", str(data_dir), "--models-dir", str(data_dir / "models"),
                                   "--ckpt", str(model_path.resolve())], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    return ModelUnderTest(ctx, ctx.registry.add_file(model_path.resolve()).title)


def run_all(model: ModelUnderTest, seeds: int, report: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    results["adherence"] = adherence(model, shapes.HELD_OUT_COMBINATIONS, seeds)
    report(f"held-out adherence: {json.dumps(results['adherence'])}")
    small = max(4, seeds // 2)
    results["emphasis"] = emphasis(model, small)
    report(f"emphasis/editing red scores: {json.dumps(results['emphasis'])}")
    results["img2img"] = img2img_layout(model, seeds)
    report(f"img2img 0.3 layout kept: {json.dumps(results['img2img'])}")
    results["hires"] = hires_sharpness(model, small)
    report(f"hires 2x sharpness: {json.dumps(results['hires'])}")
    return results


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(prog="python -m backend.training.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="checkpoint file to evaluate")
    parser.add_argument("--seeds", type=int, default=50, help="seeds per prompt (halved for emphasis and hires)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="shapes-eval-") as folder:
        model = open_model(args.model, Path(folder))
        try:
            results = run_all(model, args.seeds)
        finally:
            model.ctx.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
