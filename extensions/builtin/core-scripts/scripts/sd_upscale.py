"""SD upscale (img2img; A1111's scripts/sd_upscale.py): upscale the image, redraw it tile by tile with
img2img at the width x height of the request, and blend the tiles back together."""
from __future__ import annotations

import math
from typing import Any

import gradio as gr
from PIL import Image

from backend.errors import InvalidRequest
from backend.postprocess import images as image_io
from backend.postprocess.grids import combine_grid, split_grid
from backend.postprocess.upscalers import BUILTIN_UPSCALERS
from backend.processing import Processed
from backend.processing.core import outdir
from backend.scripts import Script
from backend.scripts.generations import Generations, copy_processing, fix_seed

TITLE = "SD upscale"
INFO = ("<p style=\"margin-bottom:0.75em\">Will upscale the image by the selected scale factor; use width and "
        "height sliders to set tile size</p>")


class SDUpscale(Script):
    def title(self) -> str:
        return TITLE

    def show(self, is_img2img: bool) -> bool:
        return is_img2img

    def _upscaler_names(self) -> list[str]:
        if self.app_context is None:
            return [info.name for info in BUILTIN_UPSCALERS]
        return [info.name for info in self.app_context.upscalers.list()]

    def ui(self, is_img2img: bool) -> list[Any]:
        info = gr.HTML(INFO)
        overlap = gr.Slider(minimum=0, maximum=256, step=16, label="Tile overlap", value=64,
                            elem_id=self.elem_id("overlap"))
        scale_factor = gr.Slider(minimum=1.0, maximum=4.0, step=0.05, label="Scale Factor", value=2.0,
                                 elem_id=self.elem_id("scale_factor"))
        names = self._upscaler_names()
        upscaler = gr.Dropdown(label="Upscaler", choices=names, value=names[0], elem_id=self.elem_id("upscaler_index"))
        upscaler.focus(lambda: gr.update(choices=self._upscaler_names()), None, upscaler, show_progress="hidden")
        return [info, overlap, upscaler, scale_factor]

    def run(self, p: Any, _info: Any = None, overlap: float = 64, upscaler: Any = "None",
            scale_factor: float = 2.0) -> Any:
        ctx = p.context
        if not p.init_images:
            raise InvalidRequest("init_images", f"{TITLE} needs an image to upscale")
        name = self._resolve_upscaler(ctx, upscaler)
        overlap = int(overlap)
        fix_seed(p)
        p.extra_generation_params["SD upscale overlap"] = overlap
        p.extra_generation_params["SD upscale upscaler"] = name
        opts = ctx.options.with_overrides(p.override_settings)

        # 1. Upscale ("None" keeps the size, as A1111), then cut into tiles of the request's size.
        image = _flatten(p.init_images[0], str(opts["img2img_background_color"]))
        if name != "None":
            image = ctx.upscalers.upscale(image, float(scale_factor), name, opts=opts, device=ctx.devices.device)
        ctx.devices.free_memory()
        grid = split_grid(image, tile_w=p.width, tile_h=p.height, overlap=overlap)
        tiles = [tile.image for tile in grid.tiles()]

        # 2. img2img every tile, batch_size tiles at a time; n_iter upscales of the whole image.
        batch_size, upscale_count, seed = p.batch_size, p.n_iter, p.seed
        p.n_iter = 1
        p.do_not_save_grid = p.do_not_save_samples = True
        batch_count = math.ceil(len(tiles) / batch_size)
        generations = Generations(p, batch_count * upscale_count)
        results, infotexts, initial_info = [], [], None
        for n in range(upscale_count):
            start_seed = batch_seed = seed + n
            done: list[Image.Image] = []
            for i in range(batch_count):
                if generations.interrupted:
                    break
                batch = tiles[i * batch_size:(i + 1) * batch_size]
                tile_p = copy_processing(p)
                tile_p.init_images, tile_p.batch_size, tile_p.seed = batch, len(batch), batch_seed
                processed = generations.process(tile_p)
                initial_info = initial_info or processed.info
                # Each batch starts one seed after the previous batch's first (A1111).
                batch_seed = processed.seed + 1
                done += processed.images
            if generations.interrupted and not done:
                break

            # 3. Blend the redrawn tiles back (a black tile where an interrupt left none).
            for index, tile in enumerate(grid.tiles()):
                tile.image = done[index] if index < len(done) else Image.new("RGB", (p.width, p.height))
            combined = combine_grid(grid)
            results.append(combined)
            infotexts.append(initial_info or "")
            if opts["samples_save"]:
                image_io.save_image(combined, outdir(p, ctx, opts, grid=False), "", seed=start_seed, prompt=p.prompt,
                                    extension=opts["samples_format"], info=initial_info, p=p, opts=opts,
                                    callbacks=ctx.callbacks)
        if opts["enable_pnginfo"]:
            for result, text in zip(results, infotexts):
                result.info["parameters"] = text
        seeds = [seed + n for n in range(len(results))]
        return Processed(images=results, infotexts=infotexts, p=p, seed=seed, subseed=int(p.subseed),
                         all_seeds=seeds, all_subseeds=[int(p.subseed)] * len(results),
                         all_prompts=[p.prompt] * len(results), all_negative_prompts=[p.negative_prompt] * len(results),
                         info=initial_info or "", interrupted=generations.interrupted)

    @staticmethod
    def _resolve_upscaler(ctx: Any, upscaler: Any) -> str:
        """The upscaler named (case-insensitively) or indexed, as A1111 takes either."""
        names = [info.name for info in ctx.upscalers.list()]
        if isinstance(upscaler, str) and not upscaler.isdigit():
            match = next((n for n in names if n.lower() == upscaler.lower()), None)
            if match is None:
                raise InvalidRequest("script_args",
                                     f"{TITLE}: unknown upscaler {upscaler!r}; known: {', '.join(names)}")
            return match
        try:
            return names[int(upscaler)]
        except (TypeError, ValueError, IndexError):
            raise InvalidRequest("script_args", f"{TITLE}: upscaler must be a name or an index 0..{len(names) - 1}, "
                                 f"got {upscaler!r}") from None


def _flatten(image: Image.Image, background: str) -> Image.Image:
    """A transparent image on the img2img background colour (A1111's images.flatten)."""
    if image.mode == "RGBA":
        canvas = Image.new("RGBA", image.size, background)
        return Image.alpha_composite(canvas, image).convert("RGB")
    return image.convert("RGB")
