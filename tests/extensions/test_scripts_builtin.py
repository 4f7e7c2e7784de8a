"""The built-in selectable scripts besides the X/Y/Z plot: Prompt matrix, Prompts from file or textbox,
SD upscale; run through the application with the tiny built-in model."""
from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.errors import InvalidRequest
from backend.postprocess.grids import split_grid
from backend.postprocess.infotext import parse_infotext
from backend.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img
from backend.scripts import ScriptRunner

CELL = 64


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, models_dir: Path):
    root = tmp_path_factory.mktemp("scripts")
    settings = Settings.from_args(["--data-dir", str(root), "--models-dir", str(models_dir)], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    yield ctx
    ctx.stop()


def _txt2img(**kwargs: object) -> StableDiffusionProcessingTxt2Img:
    fields = {"prompt": "a house", "steps": 2, "width": CELL, "height": CELL, "seed": 3, "sampler_name": "Euler",
              "do_not_save_samples": True, **kwargs}
    return StableDiffusionProcessingTxt2Img(**fields)  # type: ignore[arg-type]


def _run(app: AppContext, runner: ScriptRunner, p: object, title: str, args: list[object]):
    runner.bind(p, runner.script_args(title, args))
    return app.generate(p)  # type: ignore[arg-type]


def _module(runner: ScriptRunner, title: str) -> ModuleType:
    script = runner.find(title)
    assert script is not None, f"{title} is not loaded"
    return sys.modules[type(script).__module__]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_scripts_show_on_their_tabs(app: AppContext) -> None:
    assert app.scripts.txt2img.titles() == ["None", "Prompt matrix", "Prompts from file or textbox", "X/Y/Z plot"]
    assert app.scripts.img2img.titles() == ["None", "Prompt matrix", "Prompts from file or textbox", "SD upscale",
                                           "X/Y/Z plot"]
    info = {s["name"]: s["args"] for s in app.scripts.img2img.script_info()}
    assert [a["value"] for a in info["prompt matrix"]] == [False, False, "positive", "comma", 0]
    assert [a["label"] for a in info["prompts from file or textbox"]] == [
        "Iterate seed every line", "Use same random seed for all lines", "Insert prompts at the",
        "List of prompt inputs", "Make a combined image containing all outputs (if more than one)"]
    assert [a["value"] for a in info["prompts from file or textbox"]] == [False, False, "start", "", False]
    assert [a["value"] for a in info["sd upscale"]][1:] == [64, "None", 2.0]
    assert [a["label"] for a in info["sd upscale"]][1:] == ["Tile overlap", "Upscaler", "Scale Factor"]


# ---------------------------------------------------------------------------
# Prompt matrix
# ---------------------------------------------------------------------------

def test_matrix_prompts(app: AppContext) -> None:
    matrix = _module(app.scripts.txt2img, "Prompt matrix").matrix_prompts
    parts, prompts = matrix("a house|red, |big")
    assert parts == ["a house", "red, ", "big"]
    assert prompts == ["a house", "a house, red", "a house, big", "a house, red, big"]
    assert matrix("cat|a|b", put_at_start=True, delimiter=" ")[1] == ["cat", "a cat", "b cat", "a b cat"]


def test_prompt_matrix_grid(app: AppContext) -> None:
    runner = app.scripts.txt2img
    result = _run(app, runner, _txt2img(prompt="a house|red|big", batch_size=3), "Prompt matrix", [])
    grid, images = result.images[0], result.images[1:]
    assert result.all_prompts == ["a house", "a house, red", "a house, big", "a house, red, big"]
    assert result.all_seeds == [3, 3, 3, 3] and len(images) == 4 and result.index_of_first_image == 1
    # 2 x 2 cells ("red" across, "big" down) and the legend.
    assert grid.width == 2 * CELL + CELL * 3 // 4 and grid.height > 2 * CELL
    single = app.generate(_txt2img(prompt="a house, red, big"))
    assert np.array_equal(_pixels(images[3]), _pixels(single.images[0]))
    assert result.saved_paths[0].name.startswith("prompt_matrix-")


def test_prompt_matrix_negative_prompt_and_different_seeds(app: AppContext) -> None:
    runner = app.scripts.txt2img
    result = _run(app, runner, _txt2img(negative_prompt="blurry|dark"), "Prompt matrix",
                  [False, True, "negative", "space", 4])
    assert result.all_negative_prompts == ["blurry", "blurry dark"]
    assert result.all_seeds == [3, 4]
    assert result.images[0].size == (2 * CELL + 4, CELL + result.images[0].height - CELL)
    with pytest.raises(InvalidRequest, match="unknown prompt type 'both'"):
        _run(app, runner, _txt2img(prompt="a|b"), "Prompt matrix", [False, False, "both"])


# ---------------------------------------------------------------------------
# Prompts from file or textbox
# ---------------------------------------------------------------------------

def test_line_options_parse_as_a1111(app: AppContext) -> None:
    cmdargs = _module(app.scripts.txt2img, "Prompts from file or textbox").cmdargs
    assert cmdargs('--prompt a blue house --negative_prompt "very dark" --steps 3 --cfg_scale 4.5 '
                   '--sampler_name "euler a" --restore_faces true --styles "a, b"') == {
        "prompt": "a blue house", "negative_prompt": "very dark", "steps": 3, "cfg_scale": 4.5,
        "sampler_name": "Euler a", "restore_faces": True, "styles": ["a", "b"]}
    for bad in ("--steps", "--colour red", "steps 3"):
        with pytest.raises(ValueError):
            cmdargs(bad)


def test_prompts_from_textbox(app: AppContext) -> None:
    runner = app.scripts.txt2img
    text = 'a red house\n\n--prompt "a blue house" --steps 3 --seed 50 --cfg_scale 4\na green -- house\n'
    result = _run(app, runner, _txt2img(prompt="photo", seed=7), "Prompts from file or textbox",
                  [True, False, "end", text, True])
    combined, images = result.images[0], result.images[1:]
    assert len(images) == 3 and combined.size == (2 * CELL, 2 * CELL)
    params = [parse_infotext(t) for t in result.infotexts[1:]]
    assert [p["Prompt"] for p in params] == ["photo a red house", "photo a blue house", "photo a green -- house"]
    # "Iterate seed every line": 7, then the line's own seed, then 7 + 2 lines.
    assert [p["Seed"] for p in params] == ["7", "50", "9"]
    assert (params[1]["Steps"], params[1]["CFG scale"]) == ("3", "4.0")
    single = app.generate(_txt2img(prompt="photo a blue house", steps=3, seed=50, cfg_scale=4))
    assert np.array_equal(_pixels(images[1]), _pixels(single.images[0]))
    assert result.infotexts[0] == "\n".join(result.infotexts[1:])


def test_same_random_seed_for_all_lines(app: AppContext) -> None:
    runner = app.scripts.txt2img
    result = _run(app, runner, _txt2img(seed=-1), "Prompts from file or textbox", [False, True, "start", "a\nb"])
    seeds = [parse_infotext(t)["Seed"] for t in result.infotexts]
    assert len(seeds) == 2 and seeds[0] == seeds[1] != "-1"


def test_bad_option_lines_fail_by_line(app: AppContext) -> None:
    runner = app.scripts.txt2img
    with pytest.raises(InvalidRequest, match="line 2: unknown commandline option: --colour"):
        _run(app, runner, _txt2img(), "Prompts from file or textbox", [False, False, "start", "a\n--colour red"])
    with pytest.raises(InvalidRequest, match="unknown checkpoint 'nothere'"):
        _run(app, runner, _txt2img(), "Prompts from file or textbox", [False, False, "start", "--sd_model nothere"])


# ---------------------------------------------------------------------------
# SD upscale
# ---------------------------------------------------------------------------

def _init_image() -> Image.Image:
    x = np.linspace(0, 255, CELL, dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (CELL, 1)), np.tile(x[:, None], (1, CELL)),
                                     np.full((CELL, CELL), 120, np.uint8)], axis=2))


def _img2img(**kwargs: object) -> StableDiffusionProcessingImg2Img:
    fields = {"prompt": "a house", "init_images": [_init_image()], "steps": 3, "width": CELL, "height": CELL,
              "seed": 21, "sampler_name": "Euler", "denoising_strength": 0.5, "do_not_save_samples": True, **kwargs}
    return StableDiffusionProcessingImg2Img(**fields)  # type: ignore[arg-type]


def test_sd_upscale_redraws_overlapping_tiles(app: AppContext) -> None:
    runner = app.scripts.img2img
    result = _run(app, runner, _img2img(), "SD upscale", ["", 16, "Lanczos", 2.0])
    assert len(result.images) == 1 and result.images[0].size == (2 * CELL, 2 * CELL)
    params = parse_infotext(result.infotexts[0])
    assert (params["SD upscale overlap"], params["SD upscale upscaler"]) == ("16", "Lanczos")
    # 128 px in 64 px tiles overlapping by at least 16: three tiles a side, at 0, 32 and 64.
    upscaled = app.upscalers.upscale(_init_image(), 2.0, "Lanczos", opts=app.options, device=app.devices.device)
    grid = split_grid(upscaled, CELL, CELL, 16)
    assert grid.tile_count == 9 and [t.x for t in grid.rows[0].tiles] == [0, 32, 64]
    # The first tile, alone in the top-left corner, is img2img of that tile with the first seed; the
    # next tile (batch 2) got the next seed.
    first = app.generate(_img2img(init_images=[grid.rows[0].tiles[0].image]))
    corner = _pixels(result.images[0])[:32, :32]
    assert np.array_equal(corner, _pixels(first.images[0])[:32, :32])
    second = app.generate(_img2img(init_images=[grid.rows[0].tiles[1].image], seed=22))
    assert np.array_equal(_pixels(result.images[0])[:32, 48:64], _pixels(second.images[0])[:32, 16:32])
    assert result.saved_paths == [] and result.seed == 21


def test_sd_upscale_takes_an_index_and_none_keeps_the_size(app: AppContext) -> None:
    runner = app.scripts.img2img
    result = _run(app, runner, _img2img(), "SD upscale", ["", 0, 0, 2.0])
    assert result.images[0].size == (CELL, CELL)
    assert parse_infotext(result.infotexts[0])["SD upscale upscaler"] == "None"
    with pytest.raises(InvalidRequest, match="unknown upscaler 'Bicubic'"):
        _run(app, runner, _img2img(), "SD upscale", ["", 0, "Bicubic", 2.0])
