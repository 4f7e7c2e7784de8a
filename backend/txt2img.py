"""Command-line txt2img, in the spirit of CompVis scripts/txt2img.py and A1111's txt2img.

    python -m backend.txt2img --prompt "a cabin in the woods" --steps 20 --seed 42

Prints the path of every image written. Images carry the A1111 infotext. Any
webui flag (--data-dir, --models-dir, --use-cpu all, --no-half, ...) is accepted too.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from backend.config import Settings
from backend.context import AppContext
from backend.errors import WebUIError
from backend.processing import StableDiffusionProcessingTxt2Img


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m backend.txt2img", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompt", default="", help="the prompt (A1111 syntax)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--from-file", default=None, help="one prompt per line; each line is a job")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--sampler", default="DPM++ 2M", help='A1111 sampler name, e.g. "Euler a", "DPM++ 2M Karras"')
    p.add_argument("--scheduler", default="Automatic", help="schedule type, e.g. Karras, Exponential")
    p.add_argument("--cfg-scale", type=float, default=7.0)
    p.add_argument("--seed", type=int, default=-1)
    p.add_argument("--subseed", type=int, default=-1)
    p.add_argument("--subseed-strength", type=float, default=0.0)
    p.add_argument("--width", type=int, default=None, help="default: the checkpoint's native size")
    p.add_argument("--height", type=int, default=None, help="default: the checkpoint's native size")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--n-iter", type=int, default=1)
    p.add_argument("--clip-skip", type=int, default=None)
    p.add_argument("--outdir", default=None, help="write images and grids here (default: outputs/txt2img-*)")
    p.add_argument("--skip-grid", action="store_true")
    p.add_argument("--ckpt", default=None, help="checkpoint path or title (default: the built-in model)")
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args, rest = build_parser().parse_known_args(argv)
    try:
        settings = Settings.from_args(rest, env={})
        ctx = AppContext.build(settings)
    except WebUIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Generations go through the job queue, as in the server; its worker runs them.
    ctx.start()
    try:
        return _run(args, ctx)
    finally:
        ctx.stop()


def _run(args: argparse.Namespace, ctx: AppContext) -> int:
    try:
        checkpoint = None
        if args.ckpt:
            path = Path(args.ckpt).expanduser()
            checkpoint = ctx.registry.add_file(path.resolve()).title if path.exists() else args.ckpt
        else:
            checkpoint = ctx.startup_checkpoint()
        prompts = [args.prompt]
        if args.from_file:
            lines = Path(args.from_file).read_text(encoding="utf8").splitlines()
            prompts = [line.strip() for line in lines if line.strip()]
        overrides: dict[str, object] = {}
        if checkpoint:
            overrides["sd_model_checkpoint"] = checkpoint
        if args.clip_skip is not None:
            overrides["CLIP_stop_at_last_layers"] = args.clip_skip
        for prompt in prompts:
            p = StableDiffusionProcessingTxt2Img(
                prompt=prompt, negative_prompt=args.negative_prompt, steps=args.steps,
                sampler_name=args.sampler, scheduler=args.scheduler, cfg_scale=args.cfg_scale, seed=args.seed,
                subseed=args.subseed, subseed_strength=args.subseed_strength, width=args.width, height=args.height,
                batch_size=args.batch_size, n_iter=args.n_iter, do_not_save_grid=args.skip_grid,
                outpath_samples=args.outdir, outpath_grids=args.outdir, override_settings=overrides,
            )
            processed = ctx.generate(p)
            for path in processed.saved_paths:
                print(path)
    except WebUIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
