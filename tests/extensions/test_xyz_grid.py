"""The X/Y/Z plot: value parsing (a1111.md 9's vectors), the axis table, Prompt S/R, and whole plots
through the application with the tiny built-in model (64x64, 2-3 steps)."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.errors import InvalidRequest, ModelNotFound
from backend.jobs.progress import JobState
from backend.postprocess.images import read_info_from_image
from backend.postprocess.infotext import parse_infotext
from backend.processing import StableDiffusionProcessingTxt2Img
from backend.scripts import xyz_plot
from backend.scripts.xyz_plot import AxisValueError, PlotArgs, axis_options, parse_values
from tests.backend.networks.network_files import kohya_te, kohya_unet, random, save_network

TXT2IMG = axis_options(False)
IMG2IMG = axis_options(True)


def _axis(label: str, options: list[xyz_plot.AxisOption] = TXT2IMG) -> xyz_plot.AxisOption:
    return next(axis for axis in options if axis.label == label)


# ---------------------------------------------------------------------------
# Axis table and value parsing
# ---------------------------------------------------------------------------

TXT2IMG_LABELS = [
    "Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R", "Prompt order",
    "Sampler", "Hires sampler", "Checkpoint name", "Negative Guidance minimum sigma", "Sigma Churn", "Sigma min",
    "Sigma max", "Sigma noise", "Schedule type", "Schedule min sigma", "Schedule max sigma", "Schedule rho",
    "Beta schedule alpha", "Beta schedule beta", "Eta", "Clip skip", "Denoising", "Initial noise multiplier",
    "Extra noise", "Hires upscaler", "VAE", "Styles", "UniPC Order", "Face restore", "Token merging ratio",
    "Token merging ratio high-res", "Always discard next-to-last sigma", "SGM noise multiplier", "Refiner checkpoint",
    "Refiner switch at", "RNG source", "FP8 mode", "Size",
]


def test_axis_lists_keep_a1111_positions() -> None:
    assert [axis.label for axis in TXT2IMG] == TXT2IMG_LABELS
    hires_only = ("Hires steps", "Hires sampler", "Hires upscaler")
    expected_img2img = [label for label in TXT2IMG_LABELS if label not in hires_only]
    expected_img2img.insert(6, "Image CFG Scale")
    expected_img2img.insert(27, "Cond. Image Mask Weight")
    assert [axis.label for axis in IMG2IMG] == expected_img2img
    assert len(TXT2IMG) == 42 and len(IMG2IMG) == 41


@pytest.mark.parametrize("text, values", [
    ("1-5", [1, 2, 3, 4, 5]), ("1-5 (+2)", [1, 3, 5]), ("10-5 (-3)", [10, 7]), ("1-10 [5]", [1, 3, 5, 7, 10]),
    ("1, 3, 7-9", [1, 3, 7, 8, 9]), ("5-1", []), ("-1, 4", [-1, 4]),
])
def test_int_values(text: str, values: list[int]) -> None:
    parsed = parse_values(_axis("Steps"), text)
    assert parsed == values and all(type(v) is int for v in parsed)


@pytest.mark.parametrize("text, values", [
    ("0.25-1 (+0.25)", [0.25, 0.5, 0.75, 1.0]), ("1-2 [3]", [1.0, 1.5, 2.0]),
    ("0-1 (+0.3)", [0.0, 0.3, 0.6, 0.9, 1.2]),  # A1111's overshoot: np.arange up to end + step
    ("7, 2.5-3.5", [7.0, 2.5, 3.5]),
])
def test_float_values(text: str, values: list[float]) -> None:
    assert parse_values(_axis("CFG Scale"), text) == pytest.approx(values)


def test_labels_round_floats_to_8_digits() -> None:
    axis = _axis("CFG Scale")
    assert [axis.format_value(axis, v) for v in parse_values(axis, "0-1 (+0.3)")][3] == "CFG Scale: 0.9"


def test_csv_quoting_and_stripping() -> None:
    assert parse_values(_axis("Prompt S/R"), ' cat , "dog, big",bird') == ["cat", "dog, big", "bird"]
    assert parse_values(_axis("Prompt S/R"), "a\nb") == ["a", "b"]


def test_bad_numbers_fail() -> None:
    with pytest.raises(AxisValueError, match="'x' is not a valid int"):
        parse_values(_axis("Steps"), "1, x")
    with pytest.raises(AxisValueError, match="step cannot be 0"):
        parse_values(_axis("CFG Scale"), "1-2 (+0)")


def test_dropdown_values_unless_csv_mode() -> None:
    sampler = _axis("Sampler")
    assert parse_values(sampler, "Euler", ["DDIM", "Euler a"]) == ["DDIM", "Euler a"]
    assert parse_values(sampler, "Euler, LMS", ["DDIM"], csv_mode=True) == ["Euler", "LMS"]
    # Text only (clients written before the dropdowns existed).
    assert parse_values(sampler, "Euler, LMS", []) == ["Euler", "LMS"]


def test_prompt_order_gives_every_permutation() -> None:
    axis = _axis("Prompt order")
    orders = parse_values(axis, "a, b, c")
    assert len(orders) == 6 and orders[0] == ("a", "b", "c")
    assert axis.format_value(axis, orders[1]) == "a, c, b"
    p = StableDiffusionProcessingTxt2Img(prompt="x a y b z c")
    axis.apply(p, ("c", "a", "b"), orders)
    assert p.prompt == "x c y a z b"


def test_prompt_search_replace_replaces_everywhere() -> None:
    axis = _axis("Prompt S/R")
    values = parse_values(axis, "cat, dog")
    p = StableDiffusionProcessingTxt2Img(prompt="a cat and a cat", negative_prompt="ugly cat")
    axis.apply(p, values[0], values)
    assert (p.prompt, p.negative_prompt) == ("a cat and a cat", "ugly cat")  # the first cell is the original
    axis.apply(p, values[1], values)
    assert (p.prompt, p.negative_prompt) == ("a dog and a dog", "ugly dog")
    only_negative = StableDiffusionProcessingTxt2Img(prompt="a house", negative_prompt="cat")
    axis.apply(only_negative, "dog", values)
    assert only_negative.negative_prompt == "dog"
    with pytest.raises(AxisValueError, match="Prompt S/R did not find cat in prompt or negative prompt."):
        axis.apply(StableDiffusionProcessingTxt2Img(prompt="a house"), "dog", values)


def test_override_axes_set_per_request_settings() -> None:
    p = StableDiffusionProcessingTxt2Img(steps=3)
    _axis("Clip skip").apply(p, 2, [2])
    _axis("UniPC Order").apply(p, 5, [5])
    _axis("SGM noise multiplier").apply(p, "True", ["True"])
    _axis("RNG source").apply(p, "cpu", ["cpu"])
    _axis("Size").apply(p, "96x64", ["96x64"])
    _axis("Face restore").apply(p, "GFPGAN", ["GFPGAN"])
    assert p.override_settings == {"CLIP_stop_at_last_layers": 2, "uni_pc_order": 2, "sgm_noise_multiplier": True,
                                   "randn_source": "CPU", "face_restoration_model": "GFPGAN"}
    assert (p.width, p.height, p.restore_faces) == (96, 64, True)
    with pytest.raises(AxisValueError, match="WIDTHxHEIGHT"):
        _axis("Size").apply(p, "big", ["big"])
    with pytest.raises(AxisValueError, match="one of GPU, CPU, NV"):
        _axis("RNG source").apply(p, "TPU", ["TPU"])


def test_iteration_order_puts_costly_axes_outside() -> None:
    assert xyz_plot.iteration_order({"X": 0, "Y": 0, "Z": 0}) == ("Z", "Y", "X")
    assert xyz_plot.iteration_order({"X": 1.0, "Y": 0, "Z": 0}) == ("X", "Z", "Y")
    assert xyz_plot.iteration_order({"X": 0.5, "Y": 1.0, "Z": 0}) == ("Y", "X", "Z")


@pytest.mark.parametrize("x_type, reason", [
    (33, "'Token merging ratio' is not available"), ("FP8 mode", "'FP8 mode' is not available"),
    (26, "'Initial noise multiplier' is not available: only img2img"), (99, "out of range 0..41"),
    ("Colour", "unknown X type 'Colour'"),
])
def test_axes_we_cannot_serve_fail_by_name(x_type: object, reason: str) -> None:
    p = StableDiffusionProcessingTxt2Img()
    p.context = types.SimpleNamespace()
    with pytest.raises(InvalidRequest, match=reason):
        xyz_plot.run_plot(p, PlotArgs(x_type=x_type, x_values="1"))


# ---------------------------------------------------------------------------
# Whole plots through the application
# ---------------------------------------------------------------------------

FF_IN = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"
TE_FC1 = "encoder.layers.0.mlp.fc1"
OTHER = "variant-tiny.safetensors"  # sorts after the built-in model, the default


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory, builtin_checkpoint: Path):
    """One application for the module: the built-in model, a second checkpoint and a LoRA."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("xyz")
    checkpoints = root / "models" / "Stable-diffusion"
    checkpoints.mkdir(parents=True)
    (checkpoints / builtin_checkpoint.name).symlink_to(builtin_checkpoint)
    # The same architecture with other weights: the UNet's output layer negated.
    state = load_file(str(builtin_checkpoint))
    state["model.diffusion_model.out.2.weight"] = -state["model.diffusion_model.out.2.weight"]
    save_file(state, str(checkpoints / OTHER))
    unet, te = kohya_unet(FF_IN), kohya_te(TE_FC1)
    save_network(root / "models" / "Lora" / "detail.safetensors", {
        f"{unet}.lora_up.weight": random(256, 4, seed=1, scale=2.0),
        f"{unet}.lora_down.weight": random(4, 32, seed=2, scale=2.0),
        f"{unet}.alpha": torch.tensor(4.0),
        f"{te}.lora_up.weight": random(128, 4, seed=3, scale=2.0),
        f"{te}.lora_down.weight": random(4, 32, seed=4, scale=2.0),
        f"{te}.alpha": torch.tensor(4.0)})
    (root / "data").mkdir()
    styles = "name,prompt,negative_prompt\nwarm,warm colors,\nnight,{prompt} at night,sun\n"
    (root / "data" / "styles.csv").write_text(styles, encoding="utf-8")
    settings = Settings.from_args(["--data-dir", str(root / "data"), "--models-dir", str(root / "models")], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    yield ctx
    ctx.stop()


def _p(**kwargs: object) -> StableDiffusionProcessingTxt2Img:
    fields = {"prompt": "a house", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
              "do_not_save_samples": True, **kwargs}
    return StableDiffusionProcessingTxt2Img(**fields)  # type: ignore[arg-type]


def _plot(app: AppContext, p: StableDiffusionProcessingTxt2Img, script_args: list[object]):
    runner = app.scripts.txt2img
    runner.bind(p, runner.script_args("x/y/z plot", script_args))
    return app.generate(p)


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_script_info_defaults_match_a1111(app: AppContext) -> None:
    info = next(s for s in app.scripts.txt2img.script_info() if s["name"] == "x/y/z plot")
    args = info["args"]
    assert len(args) == 18
    assert [a["label"] for a in args[:3]] == ["X type", "X values", "X values"]
    assert args[0]["value"] == "Seed" and args[3]["value"] == "Nothing" and len(args[0]["choices"]) == 42
    assert [args[i]["value"] for i in (1, 2, 4, 5, 7, 8)] == ["", [], "", [], "", []]
    assert [a["value"] for a in args[9:]] == [True, False, False, False, False, False, False, 0, False]
    assert args[16]["label"] == "Grid margins (px)"


def test_grid_by_index_cells_equal_single_generations(app: AppContext) -> None:
    # X = Steps (index 4), Y = CFG Scale (index 6), the cells included after the grid.
    result = _plot(app, _p(), [4, "2, 3", None, 6, "5, 7", None, 0, "", None, True, True])
    grid, cells = result.images[0], result.images[1:]
    assert len(cells) == 4 and result.index_of_first_image == 1
    # The grid is the cells plus the legend: labels on top and on the left.
    pad_left = 64 * 3 // 4
    assert grid.width == 2 * 64 + pad_left and grid.height > 2 * 64
    pad_top = grid.height - 2 * 64
    legend = _pixels(grid)[:pad_top, pad_left:]
    assert (legend != 255).any() and (_pixels(grid)[pad_top:, :pad_left] != 255).any()
    assert np.array_equal(_pixels(grid)[pad_top:pad_top + 64, pad_left:pad_left + 64], _pixels(cells[0]))
    # Cell k is the generation with the same parameters, pixel for pixel (x-major: (2,5), (3,5), (2,7), (3,7)).
    for k, (steps, cfg) in ((0, (2, 5.0)), (3, (3, 7.0))):
        single = app.generate(_p(steps=steps, cfg_scale=cfg))
        assert np.array_equal(_pixels(cells[k]), _pixels(single.images[0]))
        assert result.infotexts[1 + k] == single.infotexts[0]
    assert not np.array_equal(_pixels(cells[0]), _pixels(cells[3]))
    # The grid infotext: the first cell's plus the plot, saved as xyz_grid-NNNN.png in the grids folder.
    params = parse_infotext(result.infotexts[0])
    assert (params["Script"], params["X Type"], params["X Values"], params["Y Type"], params["Y Values"]) == (
        "X/Y/Z plot", "Steps", "2, 3", "CFG Scale", "5, 7")
    assert params["Steps"] == "2" and "Z Type" not in params and "Fixed X Values" not in params
    saved = [path for path in result.saved_paths if path.name.startswith("xyz_grid")]
    assert len(saved) == 1 and saved[0].name == "xyz_grid-0000.png"
    assert saved[0].parent.parent.name == "txt2img-grids"
    with Image.open(saved[0]) as image:
        assert read_info_from_image(image)[0] == result.infotexts[0]
        assert image.size == grid.size


def test_random_seeds_are_fixed_and_written(app: AppContext) -> None:
    result = _plot(app, _p(seed=-1), ["Seed", "-1, -1", None, "Nothing", "", None, "Nothing", "", None, False, True])
    seeds = [int(parse_infotext(text)["Seed"]) for text in result.infotexts[1:]]
    assert seeds[0] != seeds[1] and -1 not in seeds
    assert parse_infotext(result.infotexts[0])["Fixed X Values"] == f"{seeds[0]}, {seeds[1]}"
    # No legend: the grid is just the two cells.
    assert result.images[0].size == (128, 64)


def test_z_axis_sub_grids_margins_and_vary_seeds(app: AppContext) -> None:
    args = [0, "", None, 0, "", None, 4, "2, 3", None, True, False, True, False, False, False, True, 10]
    result = _plot(app, _p(), args)
    main, subs = result.images[0], result.images[1:]
    assert len(subs) == 2 and all(sub.size == (64, 64) for sub in subs)  # X and Y are "Nothing": no labels
    assert main.width == 128 and main.height > 64  # the Z labels on top
    seeds = [int(parse_infotext(text)["Seed"]) for text in result.infotexts[1:]]
    assert seeds == [11, 12]  # "Vary seeds for Z"
    assert parse_infotext(result.infotexts[0])["Z Values"] == "2, 3"
    # The main grid and, with "Include Sub Grids", each Z grid are saved (numbers go on in the shared folder).
    grids = [path for path in result.saved_paths if path.name.startswith("xyz_grid-")]
    assert len(grids) == 3 and len({path.name for path in grids}) == 3
    assert [Image.open(path).size for path in grids] == [main.size, (64, 64), (64, 64)]


def test_bad_values_fail_before_generating(app: AppContext) -> None:
    with pytest.raises(InvalidRequest, match="Prompt S/R did not find castle"):
        _plot(app, _p(), [7, "castle, tower"])
    with pytest.raises(InvalidRequest, match="Unknown checkpoint: nothere"):
        _plot(app, _p(), [11, "", ["nothere"]])
    with pytest.raises(InvalidRequest, match="Unknown sampler: Eulerish"):
        _plot(app, _p(), [9, "", ["Eulerish"]])
    with pytest.raises(InvalidRequest, match="steps: must be between 1 and 1000, got 0"):
        _plot(app, _p(), [4, "0, 2"])
    with pytest.raises(InvalidRequest, match="too large"):
        _plot(app, _p(width=1024, height=1024), [1, "1-200"])


def test_checkpoint_axis_switches_models_and_restores_the_default(app: AppContext) -> None:
    plain = app.generate(_p())
    default = app.models.current
    # The variant runs last, so the built-in model has to become the default again afterwards.
    result = _plot(app, _p(), [11, "", [default.title, OTHER], 0, "", None, 0, "", None, True, True])
    same, other = result.images[1], result.images[2]
    assert np.array_equal(_pixels(same), _pixels(plain.images[0]))
    assert not np.array_equal(_pixels(other), _pixels(plain.images[0]))
    assert parse_infotext(result.infotexts[2])["Model"] == "variant-tiny"
    assert parse_infotext(result.infotexts[0])["X Values"] == f"{default.title},{OTHER}"
    assert app.models.current.title == default.title
    assert app.options["sd_model_checkpoint"] in (None, default.title)


def test_lora_weights_compared_with_prompt_search_replace(app: AppContext) -> None:
    result = _plot(app, _p(prompt="a house <lora:detail:0>"),
                   [7, "<lora:detail:0>, <lora:detail:1>", None, 0, "", None, 0, "", None, True, True])
    without, with_lora = result.images[1], result.images[2]
    assert not np.array_equal(_pixels(without), _pixels(with_lora))
    assert result.infotexts[2].startswith("a house <lora:detail:1>\n")
    assert "Lora hashes" in result.infotexts[2]
    single = app.generate(_p(prompt="a house <lora:detail:1>"))
    assert np.array_equal(_pixels(with_lora), _pixels(single.images[0]))


class _StopAfterFirstBatch(JobState):
    def next_job(self) -> None:
        super().next_job()
        self.interrupt()


def test_progress_counts_every_cell_and_interrupt_stops_the_plot(app: AppContext) -> None:
    state = _StopAfterFirstBatch()
    p = _p()
    app.scripts.txt2img.bind(p)
    p.context = app.processing_context(state)
    result = xyz_plot.run_plot(p, PlotArgs(x_type=4, x_values="2, 3, 4", include_lone_images=True))
    assert state.job_count == 3 and state.job_no == 1
    assert result.interrupted
    blank = result.images[2:]
    assert len(blank) == 2 and all(not _pixels(im).any() for im in blank)
    assert _pixels(result.images[1]).any()


def test_api_payload_selects_axes_by_index(app: AppContext) -> None:
    from fastapi.testclient import TestClient

    from backend.api.app import create_app

    client = TestClient(create_app(app))  # no lifespan: the module's application is already running
    payload = {"prompt": "a house", "steps": 2, "width": 64, "height": 64, "seed": 11, "sampler_name": "Euler",
               "script_name": "x/y/z plot",
               "script_args": [4, "2, 3", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False,
                               0, False]}
    response = client.post("/sdapi/v1/txt2img", json=payload)
    assert response.status_code == 200, response.text
    body = response.json()
    assert len(body["images"]) == 1
    info = json.loads(body["info"])
    assert "Script: X/Y/Z plot, X Type: Steps, X Values: \"2, 3\"" in info["infotexts"][0]
    bad = client.post("/sdapi/v1/txt2img", json={**payload, "script_args": [33, "0.1, 0.2"]})
    assert bad.status_code == 422 and "Token merging ratio" in bad.text


def test_a_failed_cell_is_blank_and_explained(app: AppContext) -> None:
    # CodeFormer's weights are not in the models folder: that cell fails while generating.
    result = _plot(app, _p(), ["Face restore", "false, CodeFormer", None, 0, "", None, 0, "", None, True, True])
    ok, failed = result.images[1], result.images[2]
    assert _pixels(ok).any() and not _pixels(failed).any() and failed.size == ok.size
    assert "cell X='CodeFormer' failed: ModelNotFound" in result.comments
    with pytest.raises(ModelNotFound, match="CodeFormer"):
        _plot(app, _p(), ["Face restore", "CodeFormer"])


def test_img2img_plot_uses_its_own_axis_list(app: AppContext) -> None:
    from backend.processing import StableDiffusionProcessingImg2Img

    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[:, None, None], (1, 64, 3)))
    p = StableDiffusionProcessingImg2Img(prompt="a house", init_images=[init], steps=3, width=64, height=64, seed=5,
                                         sampler_name="Euler", denoising_strength=0.6, do_not_save_samples=True)
    runner = app.scripts.img2img
    # Index 25 is "Initial noise multiplier" on img2img (26 on txt2img, where it is refused).
    runner.bind(p, runner.script_args("X/Y/Z plot", [25, "1, 0.5", None, 0, "", None, 0, "", None, True, True]))
    result = app.generate(p)
    assert "Noise multiplier" not in result.infotexts[1]
    assert parse_infotext(result.infotexts[2])["Noise multiplier"] == "0.5"
    assert not np.array_equal(_pixels(result.images[1]), _pixels(result.images[2]))
    assert parse_infotext(result.infotexts[0])["X Type"] == "Initial noise multiplier"


def test_styles_axis_adds_styles(app: AppContext) -> None:
    result = _plot(app, _p(), [30, "", ["warm", "warm,night"], 0, "", None, 0, "", None, True, True])
    params = [parse_infotext(text) for text in result.infotexts[1:]]
    assert [p["Prompt"] for p in params] == ["a house, warm colors", "a house, warm colors at night"]
    assert params[1]["Negative prompt"] == "sun"
    with pytest.raises(InvalidRequest, match="unknown style cold"):
        _plot(app, _p(), [30, "", ["cold"]])
