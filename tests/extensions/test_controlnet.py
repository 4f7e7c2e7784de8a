"""The built-in ControlNet extension (extensions/builtin/controlnet).

A small ControlNet matching the built-in tiny model is made with diffusers' `ControlNetModel.from_unet`
and random weights, and saved three ways: a diffusers-layout single file, an lllyasviel (ldm) layout
`.pth`, and a diffusers folder. Generations are 64x64 with 2-4 steps on the CPU.
"""
from __future__ import annotations

import base64
import io
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from backend.config import Options, Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.errors import InvalidRequest, ModelNotFound
from backend.models import builtin
from backend.models.ldm_export import unet_key_to_ldm
from backend.processing import StableDiffusionProcessingImg2Img, StableDiffusionProcessingTxt2Img, UnetCall
from backend.sampling.denoiser import RowLayout
from backend.scripts import ScriptSystem
from tests.backend.models.tiny_checkpoints import VAE_DIMS_8X, build_tiny_model, write_checkpoint
from tests.live_server import running_server

MODEL = "tiny-control"  # diffusers-layout single file
LDM_MODEL = "tiny-control-ldm"  # lllyasviel's layout, .pth
FOLDER_MODEL = "tiny-control-diffusers"  # diffusers folder
SDXL_MODEL = "tiny-control-xl"  # for the tiny SDXL checkpoint, lllyasviel's layout
SDXL_CHECKPOINT = "tiny-sdxl"
AUTH = ("cn", "secret")


# ---- the tiny ControlNet and its files -----------------------------------------------------------------

def controlnet_to_ldm(state: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """A diffusers ControlNetModel state dict in lllyasviel's original layout (`control_model.` keys)."""
    hint_blocks = len({k.split(".")[2] for k in state if k.startswith("controlnet_cond_embedding.blocks.")})
    out = {}
    for key, value in state.items():
        if match := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(\w+)", key):
            name = f"zero_convs.{match[1]}.0.{match[2]}"
        elif key.startswith("controlnet_mid_block."):
            name = "middle_block_out.0." + key.rpartition(".")[2]
        elif key.startswith("controlnet_cond_embedding.conv_in."):
            name = "input_hint_block.0." + key.rpartition(".")[2]
        elif match := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(\w+)", key):
            name = f"input_hint_block.{2 * (int(match[1]) + 1)}.{match[2]}"
        elif key.startswith("controlnet_cond_embedding.conv_out."):
            name = f"input_hint_block.{2 * (hint_blocks + 1)}." + key.rpartition(".")[2]
        else:
            name = unet_key_to_ldm(key, layers_per_block, [])
        out["control_model." + name] = value
    return out


@pytest.fixture(scope="module")
def tiny_controlnet(builtin_model: Any) -> Any:
    from diffusers import ControlNetModel

    net = ControlNetModel.from_unet(builtin_model.unet)
    # from_unet copies the UNet's encoder and zeroes the output convolutions, which would make the
    # ControlNet a no-op: give every weight a random value instead. The hint encoder gets He-scaled
    # weights (the generic fill gives "embedding" tensors 0.02, which would drown the control image).
    generator = torch.Generator().manual_seed(7)
    builtin.fill_deterministically(net, generator)
    with torch.no_grad():
        for param in net.controlnet_cond_embedding.parameters():
            if param.ndim == 4:
                param.copy_(torch.randn(param.shape, generator=generator) * (2.0 / param[0].numel()) ** 0.5)
    return net.eval()


@pytest.fixture(scope="module")
def cn_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, tiny_controlnet: Any) -> Path:
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("cn-models")
    checkpoint = Path(builtin.CHECKPOINT_SUBDIR) / builtin.DEFAULT_MODEL_FILENAME
    (root / checkpoint).parent.mkdir(parents=True)
    shutil.copy(models_dir / checkpoint, root / checkpoint)
    folder = root / "ControlNet"
    folder.mkdir()
    state = {k: v.detach().contiguous() for k, v in tiny_controlnet.state_dict().items()}
    save_file(state, str(folder / f"{MODEL}.safetensors"))
    torch.save(controlnet_to_ldm(state, tiny_controlnet.config.layers_per_block), folder / f"{LDM_MODEL}.pth")
    tiny_controlnet.save_pretrained(folder / FOLDER_MODEL)
    (folder / "not-a-controlnet.safetensors").write_bytes((root / checkpoint).read_bytes())
    # SDXL: a tiny checkpoint of the real layout and a ControlNet made from its UNet, in lllyasviel's layout.
    sdxl = build_tiny_model("sdxl", seed=2, vae_dims=VAE_DIMS_8X)
    write_checkpoint(root / builtin.CHECKPOINT_SUBDIR / f"{SDXL_CHECKPOINT}.safetensors", sdxl.state_dict())
    from diffusers import ControlNetModel

    xl = ControlNetModel.from_unet(sdxl.unet)
    builtin.fill_deterministically(xl, torch.Generator().manual_seed(8))
    xl_state = {k: v.detach().contiguous() for k, v in xl.state_dict().items()}
    save_file(controlnet_to_ldm(xl_state, xl.config.layers_per_block), str(folder / f"{SDXL_MODEL}.safetensors"))
    return root


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, cn_models_dir: Path) -> Iterator[AppContext]:
    settings = Settings.from_args(["--data-dir", str(tmp_path_factory.mktemp("cn-data")),
                                   "--models-dir", str(cn_models_dir)], env={})
    context = AppContext.build(settings, devices=DevicePolicy.cpu())
    # The built-in SD1 model unless a request overrides it (the SDXL test does).
    context.options.set("sd_model_checkpoint", context.startup_checkpoint())
    context.start()
    yield context
    context.stop()


@pytest.fixture(scope="module")
def lib(ctx: AppContext) -> Any:
    """The extension's modules, as its script loaded them."""
    import importlib

    return {name: importlib.import_module(f"lib_controlnet.{name}") for name in
            ("hook", "images", "models", "preprocessors", "units", "runtime")}


def square(size: int = 64, box: tuple[int, int, int, int] = (16, 16, 48, 48)) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle(box, fill="white")
    return image


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(**fields: Any) -> dict[str, Any]:
    return {"enabled": True, "module": "none", "model": MODEL, "image": square(), **fields}


def generate(ctx: AppContext, units: list[Any], *, img2img: dict[str, Any] | None = None, **fields: Any) -> Any:
    params = {"prompt": "a cabin", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64, "seed": 3,
              "sampler_name": "Euler a", **fields}
    if img2img is not None:
        p = StableDiffusionProcessingImg2Img(**params, **img2img)
    else:
        p = StableDiffusionProcessingTxt2Img(**params)
    runner = ctx.scripts.runner_for(p)
    runner.bind(p, runner.script_args(alwayson_scripts={"controlnet": {"args": units}}))
    return ctx.generate(p)


def pixels(processed: Any, index: int = 0) -> np.ndarray:
    return np.asarray(processed.images[index], dtype=np.int16)


# ---- models: listing and the three layouts ---------------------------------------------------------------

def test_models_are_listed_with_a1111_names_and_all_layouts_load_exactly(ctx: AppContext, lib: Any,
                                                                         tiny_controlnet: Any) -> None:
    models = lib["models"]
    files = models.list_models([ctx.settings.models_dir / "ControlNet"])
    titles = [f.title for f in files]
    assert [t.split(" [")[0] for t in titles] == ["not-a-controlnet", MODEL, FOLDER_MODEL, LDM_MODEL, SDXL_MODEL]
    assert all(re.fullmatch(r".+ \[[0-9a-f]{8}\]", t) for t in titles)
    reference = tiny_controlnet.state_dict()
    for name in (MODEL, LDM_MODEL, FOLDER_MODEL):
        found = models.find_model(files, name)  # the name without its hash works too
        assert found is not None and models.find_model(files, found.title) is found
        net = models.load(found, device=torch.device("cpu"), dtype=torch.float32)
        assert net.config.block_out_channels == tiny_controlnet.config.block_out_channels
        assert net.config.attention_head_dim == tiny_controlnet.config.attention_head_dim
        loaded = net.state_dict()
        assert loaded.keys() == reference.keys()
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), name
    with pytest.raises(Exception, match="not a ControlNet"):
        models.load(models.find_model(files, "not-a-controlnet"), device=torch.device("cpu"), dtype=torch.float32)


def test_each_layout_gives_the_same_image(ctx: AppContext) -> None:
    results = [pixels(generate(ctx, [unit(model=name)], steps=2)) for name in (MODEL, LDM_MODEL, FOLDER_MODEL)]
    assert np.array_equal(results[0], results[1]) and np.array_equal(results[0], results[2])


def test_sdxl_controlnet(ctx: AppContext) -> None:
    xl = {"override_settings": {"sd_model_checkpoint": SDXL_CHECKPOINT}, "steps": 2}
    plain = pixels(generate(ctx, [], **xl))
    controlled = generate(ctx, [unit(model=SDXL_MODEL)], **xl)
    assert np.abs(pixels(controlled) - plain).mean() > 1 and len(controlled.images) == 2
    with pytest.raises(InvalidRequest, match=r"args\[0\]\.model: ControlNet model tiny-control \[.*is for SD1/SD2"):
        generate(ctx, [unit()], **xl)


# ---- generation ------------------------------------------------------------------------------------------

def test_control_image_changes_the_result_and_weight_zero_is_no_controlnet(ctx: AppContext) -> None:
    plain = pixels(generate(ctx, []))
    controlled = generate(ctx, [unit()])
    other = pixels(generate(ctx, [unit(image=square(box=(0, 0, 20, 63)))]))
    zero = generate(ctx, [unit(weight=0)])
    assert np.abs(pixels(controlled) - plain).mean() > 1
    assert np.abs(pixels(controlled) - other).mean() > 1
    assert np.array_equal(pixels(zero), plain)  # bit for bit
    # The detected map follows the image (A1111-ControlNet appends it), and the infotext names the unit.
    assert len(controlled.images) == 2 and controlled.images[1].size == (64, 64)
    assert 'ControlNet 0: "Module: none, Model: tiny-control, Weight: 1.0, Resize Mode: Crop and Resize, ' \
           'Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, Guidance End: 1.0, ' \
           'Pixel Perfect: False, Control Mode: Balanced"' in controlled.infotexts[0]


def record_hook_calls(lib: Any, monkeypatch: pytest.MonkeyPatch, what: Any) -> list[tuple]:
    """Every ControlNet hook call's `what(call) + (whether residuals were added,)`, in order."""
    seen: list[tuple] = []
    hook_class = lib["hook"].ControlNetHook
    original = hook_class.__call__

    def recording(self: Any, call: UnetCall) -> None:
        original(self, call)
        seen.append((*what(call), "down_block_additional_residuals" in call.kwargs))

    monkeypatch.setattr(hook_class, "__call__", recording)
    return seen


def test_guidance_start_and_end_select_the_steps(ctx: AppContext, lib: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = record_hook_calls(lib, monkeypatch, lambda call: (call.step, call.total_steps))
    windowed = pixels(generate(ctx, [unit(guidance_start=0.3, guidance_end=0.6)], steps=4))
    # step / total steps = 0, .25, .5, .75: only 0.5 lies in [0.3, 0.6] (A1111-ControlNet's rule).
    assert seen == [(0, 4, False), (1, 4, False), (2, 4, True), (3, 4, False)]
    seen.clear()
    full = pixels(generate(ctx, [unit()], steps=4))
    assert [s[2] for s in seen] == [True] * 4
    assert not np.array_equal(windowed, full)


def test_two_units_compose_and_control_modes_differ(ctx: AppContext) -> None:
    first = unit()
    second = unit(image=square(box=(0, 30, 63, 40)), module="invert (from white bg & black line)")
    both = pixels(generate(ctx, [first, second]))
    assert not np.array_equal(both, pixels(generate(ctx, [first])))
    assert not np.array_equal(both, pixels(generate(ctx, [second])))
    modes = [pixels(generate(ctx, [unit(control_mode=mode)]))
             for mode in ("Balanced", "My prompt is more important", 2)]
    assert not np.array_equal(modes[0], modes[1])
    assert not np.array_equal(modes[1], modes[2])


def test_hires_pass_uses_a_resized_control_image(ctx: AppContext, lib: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = record_hook_calls(lib, monkeypatch, lambda call: (call.width, call.height))
    hires = {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 2,
             "denoising_strength": 0.5}
    out = generate(ctx, [unit()], steps=2, **hires)
    assert {s[:2] for s in sizes} == {(64, 64), (128, 128)} and all(s[2] for s in sizes)
    assert [im.size for im in out.images] == [(128, 128), (128, 128), (64, 64)]  # image, hires map, map
    sizes.clear()
    generate(ctx, [unit(hr_option="Low res only")], steps=2, **hires)
    assert {s[:2] for s in sizes if s[2]} == {(64, 64)}


def test_img2img_uses_the_init_image_when_the_unit_has_none(ctx: AppContext) -> None:
    init = {"init_images": [square()], "denoising_strength": 0.8}
    plain = pixels(generate(ctx, [], img2img=init))
    controlled = generate(ctx, [unit(image=None)], img2img=init)
    assert np.abs(pixels(controlled) - plain).mean() > 1
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 40, 40), fill=255)
    inpaint = {**init, "mask": mask, "inpaint_full_res": True, "inpaint_full_res_padding": 4}
    masked = generate(ctx, [unit(image=None)], img2img=inpaint)
    assert masked.images[0].size == (64, 64) and len(masked.images) == 2


def test_missing_model_and_missing_image_fail_clearly_and_leave_no_hook(ctx: AppContext) -> None:
    with pytest.raises(ModelNotFound, match=r"ControlNet model not found: 'no-such-model \[12345678\]'; known: .*tiny-control \["):
        generate(ctx, [unit(model="no-such-model [12345678]")])
    with pytest.raises(InvalidRequest, match=r"args\[0\]\.model: no ControlNet model selected"):
        generate(ctx, [unit(model="None")])
    with pytest.raises(InvalidRequest, match=r"args\[0\]\.image: ControlNet is enabled but no input image"):
        generate(ctx, [unit(image=None)])
    p = StableDiffusionProcessingTxt2Img(prompt="x", steps=2, width=64, height=64)
    runner = ctx.scripts.txt2img
    runner.bind(p, runner.script_args(alwayson_scripts={"controlnet": {"args": [unit(model="missing")]}}))
    with pytest.raises(ModelNotFound):
        ctx.generate(p)
    assert p.unet_hooks == []


@pytest.mark.parametrize(("fields", "field"), [
    ({"weight": 3}, "weight"), ({"guidance_start": 0.8, "guidance_end": 0.2}, "guidance_start"),
    ({"resize_mode": "Squash"}, "resize_mode"), ({"control_mode": 7}, "control_mode"),
    ({"module": "depth_midas"}, "module"), ({"module": "nonsense"}, "module"), ({"enabled": "maybe"}, "enabled"),
    ({"image": "not base64!"}, "image"), ({"hr_option": "Sometimes"}, "hr_option"),
])
def test_bad_unit_fields_name_the_field(ctx: AppContext, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        generate(ctx, [unit(), unit(**fields)])
    assert caught.value.field == f"alwayson_scripts.controlnet.args[1].{field}"


def test_units_accept_a1111_field_forms(lib: Any) -> None:
    units = lib["units"]
    parsed = units.parse_unit({"enabled": True, "input_image": b64(square()), "module": "canny", "model": "x",
                               "resize_mode": 0, "control_mode": "ControlNet is more important", "lowvram": True,
                               "guidance": 0.5, "processor_res": 5000, "threshold_a": 50, "threshold_b": -1,
                               "some_future_field": 1}, "u")
    assert parsed.resize_mode is units.ResizeMode.RESIZE and parsed.control_mode is units.ControlMode.CONTROL
    assert parsed.low_vram and parsed.guidance_end == 0.5
    assert (parsed.processor_res, parsed.threshold_a, parsed.threshold_b) == (512, 50.0, 200.0)  # bound check
    assert parsed.image is not None and parsed.image[0].image.shape == (64, 64, 3)
    pair = units.parse_unit({"enabled": True, "image": {"image": b64(square()), "mask": b64(square())}}, "u")
    assert pair.image is not None and pair.image[0].mask is not None
    assert units.parse_unit({"enabled": True, "resize_mode": "Inner Fit (Scale to Fit)"}, "u").resize_mode \
        is units.ResizeMode.INNER_FIT
    assert units.parse_unit(None, "u").enabled is False
    # Without "enabled", a unit that gives an image or a model runs (A1111-ControlNet's old API default).
    assert units.parse_unit({"input_image": b64(square()), "module": "canny"}, "u").enabled
    assert not units.parse_unit({}, "u").enabled and not units.parse_unit({"model": "None"}, "u").enabled


# ---- the hook itself: scales, rows, composition --------------------------------------------------------

def test_hook_control_modes_and_unit_sums(lib: Any, tiny_controlnet: Any) -> None:
    hook, units = lib["hook"], lib["units"]
    torch.manual_seed(0)
    x, crossattn = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    maps = [np.asarray(square())]

    def residuals(*configs: dict[str, Any], step: int = 0, total: int = 4, size: int = 64,
                  soft_in_hires: bool = False) -> list[torch.Tensor]:
        active = [hook.ActiveUnit(units.ControlNetUnit(enabled=True, **c), tiny_controlnet, maps,
                                  units.ResizeMode.RESIZE, soft_in_hires, torch.device("cpu"), torch.float32)
                  for c in configs]
        latent = x if size == 64 else torch.nn.functional.interpolate(x, size=(size // 8, size // 8))
        call = UnetCall(latent, torch.tensor([500.0, 500.0]), crossattn, None, RowLayout([0, 0], [False, True]),
                        step, total, size, size)
        hook.ControlNetHook(active, (64, 64), has_hires=True)(call)
        if not call.kwargs:
            return []
        return [*call.kwargs["down_block_additional_residuals"], call.kwargs["mid_block_additional_residual"]]

    balanced = residuals({})
    assert len(balanced) == 5 and all(r.abs().sum() > 0 for r in balanced)
    prompt = residuals({"control_mode": units.ControlMode.PROMPT})
    for i, (soft, full) in enumerate(zip(prompt, balanced, strict=True)):
        torch.testing.assert_close(soft, full * 0.825 ** (12 - i))
    control = residuals({"control_mode": units.ControlMode.CONTROL})
    for i, (cond_only, full) in enumerate(zip(control, balanced, strict=True)):
        torch.testing.assert_close(cond_only[0], full[0] * 0.825 ** (12 - i))
        assert cond_only[1].abs().sum() == 0  # the unconditional row gets no control
    doubled = residuals({}, {"weight": 0.5})
    for a, b in zip(doubled, balanced, strict=True):
        torch.testing.assert_close(a, b * 1.5)
    assert residuals({"guidance_start": 0.5}, step=1) == []
    assert residuals({"hr_option": units.HiResFixOption.LOW_RES_ONLY}, size=128) == []
    assert residuals({"weight": 0}) == []
    # In the hires pass a canny-like map (soft_in_hires) gets the soft weights even when "Balanced".
    hires_full, hires_soft = residuals({}, size=128), residuals({}, size=128, soft_in_hires=True)
    for i, (soft, full) in enumerate(zip(hires_soft, hires_full, strict=True)):
        torch.testing.assert_close(soft, full * 0.825 ** (12 - i))


# ---- preprocessors -----------------------------------------------------------------------------------------

def test_model_free_preprocessors(lib: Any) -> None:
    pre, images = lib["preprocessors"], lib["images"]
    annotators = pre.Annotators(None)
    picture = np.asarray(square())
    canny = pre.run(pre.get("canny", "m"), picture, 64, 100, 200, annotators)
    edges = canny[:, :, 0] > 0
    assert canny.shape == (64, 64, 3) and edges[15, 20:44].all() and edges[48, 20:44].all() and not edges[30:34, 30:34].any()
    assert not edges[:8].any()
    inverted = pre.run(pre.get("invert (from white bg & black line)", "m"), picture, 512, 0, 0, annotators)
    assert np.array_equal(inverted, 255 - picture)
    gray = np.tile(np.arange(0, 256, 4, dtype=np.uint8)[None, :, None], (64, 1, 3))
    binary = pre.run(pre.get("threshold", "m"), gray, 64, 127, 0, annotators)
    assert set(np.unique(binary)) == {0, 255} and (binary[:, :, 0] > 0).sum() == 64 * 32
    xdog = pre.run(pre.get("scribble_xdog", "m"), picture, 64, 32, 0, annotators)
    assert set(np.unique(xdog)) == {0, 255} and xdog[30:34, 30:34].max() == 0 and xdog.max() == 255
    assert pre.run(pre.get("canny", "m"), picture, 128, 100, 200, annotators).shape == (128, 128, 3)
    # pixel perfect: the annotator resolution that lands 1:1 on the generation size
    assert images.pixel_perfect_resolution(np.zeros((100, 200, 3)), 512, 512, images.ResizeMode.INNER_FIT) == 512
    assert images.pixel_perfect_resolution(np.zeros((100, 200, 3)), 512, 512, images.ResizeMode.OUTER_FIT) == 256


def test_resize_modes(lib: Any) -> None:
    images = lib["images"]
    wide = np.zeros((32, 64, 3), np.uint8)
    wide[:, :32] = 255  # left half white
    assert images.fit(wide, images.ResizeMode.RESIZE, 64, 64).shape == (64, 64, 3)
    cropped = images.fit(wide, images.ResizeMode.INNER_FIT, 32, 32)
    assert cropped.shape == (32, 32, 3) and cropped[:, :8].min() == 255 and cropped[:, -8:].max() == 0
    filled = images.fit(wide, images.ResizeMode.OUTER_FIT, 64, 64)
    assert filled.shape == (64, 64, 3) and filled[24:40, :16].min() == 255


def test_model_based_preprocessors_need_their_weights(tmp_path: Path, lib: Any) -> None:
    pre = lib["preprocessors"]
    empty = pre.Annotators(tmp_path)
    assert "softedge_hed" not in [p.label for p in pre.available(empty)]
    with pytest.raises(InvalidRequest, match=r"hed/ControlNetHED\.pth"):
        pre.run(pre.get("softedge_hed", "m"), np.asarray(square()), 64, 0, 0, empty)
    hed = pre._Hed()
    builtin.fill_deterministically(hed, torch.Generator().manual_seed(1))
    (tmp_path / "hed").mkdir()
    torch.save(hed.state_dict(), tmp_path / "hed" / "ControlNetHED.pth")
    present = pre.Annotators(tmp_path)
    assert "softedge_hed" in [p.label for p in pre.available(present)]
    edge = pre.run(pre.get("softedge_hed", "m"), np.asarray(square()), 64, 0, 0, present)
    assert edge.shape == (64, 64, 3) and edge.std() > 0


def test_unit_count_option_sets_the_slots(tmp_path: Path) -> None:
    options = Options(tmp_path / "config.json")
    options._values["control_net_unit_count"] = 2  # as saved in config.json by an earlier run
    system = ScriptSystem.load(None, options=options)
    script = system.txt2img.find("controlnet")
    assert script is not None and script.args_to - script.args_from == 2


# ---- the HTTP API through a live server (webui mode with --api and --api-auth) ----------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cn_models_dir: Path) -> Iterator[str]:
    args = ["--api", "--api-auth", ":".join(AUTH)]
    with running_server(args, tmp_path_factory.mktemp("cn-server"), cn_models_dir) as (url, _, _):
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, auth=AUTH, timeout=120) as c:
        yield c


def test_routes_sit_behind_api_auth(server: str, client: httpx.Client) -> None:
    assert httpx.get(f"{server}/controlnet/version").status_code == 401
    assert client.get("/controlnet/version").json() == {"version": 2}
    assert client.get("/controlnet/settings").json() == {"control_net_unit_count": 3}


def test_model_and_module_lists(client: httpx.Client) -> None:
    models = client.get("/controlnet/model_list", params={"update": "true"}).json()["model_list"]
    assert any(m.startswith(f"{MODEL} [") for m in models) and "None" not in models
    internal = client.get("/controlnet/module_list", params={"alias_names": "false"}).json()
    # A1111-ControlNet's order: "none", then by priority and label, descending.
    assert internal["module_list"] == ["none", "tile_resample", "lineart_standard", "canny", "invert", "threshold",
                                       "scribble_xdog", "blur_gaussian"]
    assert "hed" not in internal["module_list"]  # its weights are not installed
    assert internal["module_detail"]["canny"] == {"model_free": False, "sliders": [
        {"name": "Resolution", "value": 512, "min": 64, "max": 2048, "step": 8},
        {"name": "Low Threshold", "value": 100, "min": 0, "max": 256, "step": 1},
        {"name": "High Threshold", "value": 200, "min": 0, "max": 256, "step": 1}]}
    aliased = client.get("/controlnet/module_list", params={"alias_names": "true"}).json()["module_list"]
    assert "invert (from white bg & black line)" in aliased
    types = client.get("/controlnet/control_types").json()["control_types"]
    assert types["Canny"]["module_list"] == ["none", "canny", "invert (from white bg & black line)"]
    assert types["Canny"]["default_option"] == "canny" and types["All"]["model_list"][0] == "None"


def test_detect(client: httpx.Client) -> None:
    body = {"controlnet_module": "canny", "controlnet_input_images": [b64(square())],
            "controlnet_processor_res": 64, "controlnet_threshold_a": 100, "controlnet_threshold_b": 200}
    reply = client.post("/controlnet/detect", json=body)
    assert reply.status_code == 200 and reply.json()["info"] == "Success"
    detected = np.asarray(Image.open(io.BytesIO(base64.b64decode(reply.json()["images"][0]))))
    assert detected.shape[:2] == (64, 64) and detected[15, 20:44].min() == 255 and detected[32, 32].max() == 0
    assert client.post("/controlnet/detect", json={**body, "controlnet_input_images": []}).status_code == 422
    bad = client.post("/controlnet/detect", json={**body, "controlnet_module": "softedge_hed"})
    assert bad.status_code == 422 and "ControlNetHED.pth" in bad.text


def test_txt2img_with_an_a1111_client_payload(client: httpx.Client) -> None:
    payload = {"prompt": "a cabin", "steps": 2, "width": 64, "height": 64, "seed": 5, "sampler_name": "Euler a",
               "alwayson_scripts": {"controlnet": {"args": [
                   {"enabled": True, "input_image": b64(square()), "module": "canny", "model": MODEL,
                    "weight": 1.0, "resize_mode": "Crop and Resize", "control_mode": 0, "processor_res": 64,
                    "threshold_a": 100, "threshold_b": 200, "pixel_perfect": False, "lowvram": False},
                   {"enabled": False}]}}}
    reply = client.post("/sdapi/v1/txt2img", json=payload)
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["images"]) == 2  # the image and the canny map
    infotext = reply.json()["info"]
    assert 'ControlNet 0: \\"Module: canny, Model: tiny-control, Weight: 1.0, Resize Mode: Crop and Resize, ' \
           'Processor Res: 64, Threshold A: 100.0, Threshold B: 200.0' in infotext
    # webuiapi sends an empty ControlNet entry on every request once it sees the script
    plain = client.post("/sdapi/v1/txt2img", json={**payload, "alwayson_scripts": {"ControlNet": {"args": []}}})
    assert plain.status_code == 200 and len(plain.json()["images"]) == 1


def test_api_errors(client: httpx.Client) -> None:
    base = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    bad = client.post("/sdapi/v1/txt2img", json={**base, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "input_image": b64(square()), "model": MODEL, "weight": 5}]}}})
    assert bad.status_code == 422
    assert bad.json()["detail"][0]["loc"] == ["body", "alwayson_scripts.controlnet.args[0].weight"]
    missing = client.post("/sdapi/v1/txt2img", json={**base, "alwayson_scripts": {"controlnet": {"args": [
        {"enabled": True, "input_image": b64(square()), "model": "control_v11p_sd15_canny [d14c016b]"}]}}})
    assert missing.status_code == 404 and "ControlNet model not found: 'control_v11p_sd15_canny" in missing.text


def test_ui_states_follow_the_controls(lib: Any) -> None:
    import gradio as gr

    ui = sys.modules["lib_controlnet.ui"]
    runtime = lib["runtime"].Runtime()
    with gr.Blocks():
        states = ui.build(runtime, False)
    assert len(states) == 3 and all(isinstance(s, gr.State) for s in states)
    state = ui.as_unit(True, square(), False, True, "canny", MODEL, 0.8, 0.1, 0.9, 512, 100, 200,
                       "Balanced", "Just Resize", "Both")
    parsed = lib["units"].parse_unit(state, "ui")
    assert parsed.enabled and parsed.pixel_perfect and parsed.weight == 0.8
    assert parsed.resize_mode is lib["units"].ResizeMode.RESIZE and parsed.image is not None


# ---- the UI in a real browser ---------------------------------------------------------------------------------

def test_ui_unit_preview_and_generation(server: str, cn_models_dir: Path, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    from backend.models.hashes import legacy_model_hash
    from tests.ui.browser import check, choose, generate, tiny_generation, upload
    from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, VIEWPORT

    prefix = "txt2img_controlnet_ControlNet-0_controlnet"
    title = f"{MODEL} [{legacy_model_hash(cn_models_dir / 'ControlNet' / f'{MODEL}.safetensors')}]"
    square().save(tmp_path / "square.png")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(server + "/")
        page.wait_for_selector("body[data-ui-loaded=true]", timeout=30_000)
        tiny_generation(page, "txt2img", "a cabin")
        page.locator("#txt2img_controlnet_accordion").get_by_text("ControlNet", exact=True).first.click()
        upload(page, f"{prefix}_input_image", tmp_path / "square.png")
        choose(page, f"{prefix}_preprocessor_dropdown", "canny")
        page.click(f"#{prefix}_trigger_preprocessor")
        page.wait_for_selector(f"#{prefix}_preprocessor_preview img", timeout=30_000)
        check(page, f"{prefix}_enable_checkbox")
        choose(page, f"{prefix}_model_dropdown", title)  # filled on page load from the models folder
        page.locator(f"#{prefix}_control_mode_radio").get_by_text("My prompt is more important").click()
        infotext = generate(page, "txt2img")
        # The unit's state followed the visible controls: canny's own thresholds, the chosen mode.
        assert f'ControlNet 0: "Module: canny, Model: {title}, Weight: 1.0' in infotext
        assert "Threshold A: 100" in infotext and "Threshold B: 200" in infotext
        assert "Control Mode: My prompt is more important" in infotext
        assert page.locator("#txt2img_gallery img").count() >= 2  # the image and the canny map
        browser.close()


def test_hook_gives_each_image_its_control_image(lib: Any, tiny_controlnet: Any) -> None:
    hook, units = lib["hook"], lib["units"]
    x, crossattn = torch.randn(1, 4, 8, 8).repeat(2, 1, 1, 1), torch.randn(1, 77, 32).repeat(2, 1, 1)

    def first_residual(maps: list[np.ndarray]) -> torch.Tensor:
        active = hook.ActiveUnit(units.ControlNetUnit(enabled=True), tiny_controlnet, maps, units.ResizeMode.RESIZE,
                                 False, torch.device("cpu"), torch.float32)
        call = UnetCall(x, torch.tensor([500.0, 500.0]), crossattn, None, RowLayout([0, 1], [False, False]), 0, 4,
                        64, 64)
        hook.ControlNetHook([active], (64, 64), has_hires=False)(call)
        return call.kwargs["down_block_additional_residuals"][0]

    one = first_residual([np.asarray(square())])
    torch.testing.assert_close(one[0], one[1])
    two = first_residual([np.asarray(square()), np.asarray(square(box=(0, 0, 10, 63)))])
    torch.testing.assert_close(two[0], one[0])
    assert not torch.allclose(two[1], two[0])


def test_pasted_infotext_is_split_into_unit_fields(ctx: AppContext) -> None:
    script = ctx.scripts.txt2img.find("controlnet")
    module = sys.modules[type(script).__module__]
    params = {"ControlNet 0": "Module: canny, Model: tiny-control [c0e8ab0a], Weight: 0.5, Resize Mode: Just Resize, "
                              "Processor Res: 512, Threshold A: 100.0, Threshold B: 200.0, Guidance Start: 0.0, "
                              "Guidance End: 1.0, Pixel Perfect: False, Control Mode: Balanced", "Steps": "20"}
    module.expand_pasted_infotext("", params)
    assert params["ControlNet 0 module"] == "canny" and params["ControlNet 0 weight"] == "0.5"
    assert params["ControlNet 0 resize_mode"] == "Just Resize" and params["ControlNet 0 model"] == "tiny-control [c0e8ab0a]"
