"""The script and extension system: discovery, isolation of broken extensions, script_args layout,
hook order, callbacks from the sampler and the saver, UNet hooks, and the README's example extension."""
from __future__ import annotations

import json
import logging
import shutil
import textwrap
from pathlib import Path

import gradio as gr
import numpy as np
import pytest

from backend.callbacks import CallbackRegistry
from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.errors import InvalidRequest
from backend.processing import StableDiffusionProcessingTxt2Img
from backend.scripts import AlwaysVisible, Script, ScriptRunner, ScriptSystem
from backend.scripts.extensions import discover

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "docs" / "example-extension" / "prompt-suffix"


def _write(folder: Path, name: str, files: dict[str, str]) -> Path:
    ext = folder / name
    for rel, text in files.items():
        path = ext / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return ext


GOOD = """
    import gradio as gr
    from backend import callbacks
    from backend.scripts import AlwaysVisible, Script

    SEEN = []

    class Recorder(Script):
        def title(self): return "Recorder"
        def show(self, is_img2img): return AlwaysVisible
        def ui(self, is_img2img):
            return [gr.Checkbox(True, label="Record"), gr.Slider(0, 10, value=3, step=1, label="Level")]
        def process(self, p, record, level): SEEN.append(("process", record, level))

    class Picker(Script):
        def title(self): return "Picker"
        def ui(self, is_img2img): return [gr.Textbox("x", label="Text")]
        def run(self, p, text): return text

    class Img2ImgOnly(Script):
        def title(self): return "Only img2img"
        def show(self, is_img2img): return is_img2img

    callbacks.on_cfg_denoiser(lambda params: SEEN.append(("cfg", params.sampling_step, params.total_sampling_steps)))
"""


def test_discovery_order_flags_and_a_broken_extension_is_isolated(tmp_path: Path, caplog) -> None:
    builtin, user = tmp_path / "builtin", tmp_path / "user"
    _write(builtin, "core", {"scripts/a.py": GOOD})
    _write(user, "zeta", {"scripts/z.py": "from backend.scripts import Script\n"})
    _write(user, "broken", {"scripts/bad.py": "import not_a_module_anywhere\n", "scripts/ok.py": GOOD})
    names = [(e.name, e.is_builtin, e.enabled) for e in discover(user, builtin_dir=builtin)]
    assert names == [("core", True, True), ("broken", False, True), ("zeta", False, True)]
    assert [e.enabled for e in discover(user, builtin_dir=builtin, disable_all="extra")] == [True, False, False]
    assert [e.enabled for e in discover(user, builtin_dir=builtin, disable_all="all")] == [False, False, False]
    assert [e.enabled for e in discover(user, builtin_dir=builtin, disabled=["Broken"])] == [True, False, True]

    with caplog.at_level(logging.ERROR):
        system = ScriptSystem.load(user, builtin_dir=builtin)
    broken = system.find_extension("broken")
    assert broken is not None and "bad.py: ModuleNotFoundError" in broken.errors[0]
    assert "extension broken" in caplog.text
    # The good file of the broken extension and the other extensions still load.
    assert [s.title() for s in system.txt2img.alwayson_scripts] == ["Recorder", "Recorder"]
    assert system.txt2img.titles() == ["None", "Picker", "Picker"]
    assert system.img2img.titles() == ["None", "Picker", "Only img2img", "Picker", "Only img2img"]


def test_script_args_layout_and_api_assembly(tmp_path: Path) -> None:
    builtin = tmp_path / "builtin"
    _write(builtin, "core", {"scripts/a.py": GOOD})
    runner = ScriptSystem.load(None, builtin_dir=builtin).txt2img
    recorder, picker = runner.find("recorder"), runner.find("PICKER")
    assert (recorder.args_from, recorder.args_to, picker.args_from, picker.args_to) == (1, 3, 3, 4)
    assert runner.defaults == [0, True, 3, "x"]
    assert runner.script_args() == [0, True, 3, "x"]
    assert runner.script_args("picker", ["hello"]) == [1, True, 3, "hello"]
    assert runner.script_args(alwayson_scripts={"RECORDER": {"args": [False]}}) == [0, False, 3, "x"]
    assert runner.script_args(alwayson_scripts={"Recorder": {}}) == [0, True, 3, "x"]
    with pytest.raises(InvalidRequest, match="Script 'nope' not found") as e:
        runner.script_args("nope")
    assert e.value.field == "script_name"
    with pytest.raises(InvalidRequest, match="always on script Picker not found"):
        runner.script_args(alwayson_scripts={"Picker": {"args": []}})
    info = {i["name"]: i for i in runner.script_info()}
    assert info["recorder"]["is_alwayson"] and info["recorder"]["args"][1] == {
        "label": "Level", "value": 3, "minimum": 0, "maximum": 10, "step": 1, "choices": None}


class _Hooks(Script):
    def __init__(self, fail_in: str = "") -> None:
        self.calls: list[str] = []
        self.fail_in = fail_in

    def title(self) -> str:
        return "Hooks"

    def show(self, is_img2img):
        return AlwaysVisible

    def _note(self, name: str) -> None:
        self.calls.append(name)
        if name == self.fail_in:
            raise ValueError(f"boom in {name}")

    def setup(self, p, *args): self._note("setup")
    def before_process(self, p, *args): self._note("before_process")
    def process(self, p, *args): self._note("process")
    def before_process_batch(self, p, *args, **kw): self._note("before_process_batch")
    def after_extra_networks_activate(self, p, *args, **kw): self._note("after_extra_networks_activate")
    def process_batch(self, p, *args, **kw): self._note("process_batch")
    def postprocess_batch(self, p, *args, **kw): self._note("postprocess_batch")
    def postprocess_batch_list(self, p, pp, *args, **kw): self._note("postprocess_batch_list")
    def postprocess_image(self, p, pp, *args):
        self._note("postprocess_image")
        pp.image = pp.image.transpose(0)  # mirrored: the returned image must be this one
    def before_hr(self, p, *args): self._note("before_hr")
    def postprocess(self, p, processed, *args): self._note("postprocess")


def _p(**kw) -> StableDiffusionProcessingTxt2Img:
    base = dict(prompt="a house", steps=2, width=64, height=64, seed=1, sampler_name="Euler", do_not_save_samples=True,
                do_not_save_grid=True)
    return StableDiffusionProcessingTxt2Img(**{**base, **kw})


def _bound(p, *scripts: Script):
    ScriptRunner(scripts, is_img2img=False, capture=lambda s, tab: []).bind(p)
    return p


def test_hooks_run_in_a1111_order_and_a_failing_hook_does_not_break_the_job(app_ctx, caplog) -> None:
    plain = app_ctx.generate(_p()).images[0]
    ok, failing = _Hooks(), _Hooks(fail_in="process")
    failing.extension = "faulty-ext"
    with caplog.at_level(logging.ERROR):
        processed = app_ctx.generate(_bound(_p(enable_hr=True, hr_scale=1.5, hr_upscaler="Latent"), failing, ok))
    assert ok.calls == ["setup", "before_process", "process", "before_process_batch", "after_extra_networks_activate",
                        "process_batch", "before_hr", "postprocess_batch", "postprocess_batch_list",
                        "postprocess_image", "postprocess"]
    assert failing.calls == ok.calls  # it failed in process() and still got every later hook
    assert "faulty-ext" in caplog.text and "boom in process" in caplog.text
    assert processed.images[0].size == (96, 96)
    assert plain.size == (64, 64)
    hooked = app_ctx.generate(_bound(_p(), _Hooks())).images[0]
    assert np.array_equal(np.asarray(hooked), np.asarray(plain)[:, ::-1])


def test_a_readable_error_from_a_hook_fails_the_request(app_ctx) -> None:
    class Refuses(_Hooks):
        def process(self, p, *args):
            raise InvalidRequest("alwayson_scripts", "unit 0 has no image")

    with pytest.raises(InvalidRequest, match="unit 0 has no image"):
        app_ctx.generate(_bound(_p(), Refuses()))


def test_selectable_script_runs_the_job_and_calls_process_images_on_copies(app_ctx) -> None:
    import copy

    from backend.scripts import process_images

    class TwoSeeds(Script):
        def title(self): return "Two seeds"
        def run(self, p, *args):
            first = process_images(copy.copy(p))
            p2 = copy.copy(p)
            p2.seed = 2
            second = process_images(p2)
            first.images += second.images
            return first

    p = _p()
    runner = ScriptRunner([TwoSeeds()], is_img2img=False, capture=lambda s, tab: [])
    runner.bind(p, runner.script_args("two seeds"))
    processed = app_ctx.generate(p)
    assert len(processed.images) == 2
    single = app_ctx.generate(_p(seed=2)).images[0]
    assert np.array_equal(np.asarray(processed.images[1]), np.asarray(single))


def test_cfg_callbacks_and_unet_hooks_see_steps_and_rows(app_ctx) -> None:
    seen: list[tuple] = []
    rows: list[tuple] = []
    registry = app_ctx.scripts.callbacks
    with registry.loading("test"):
        from backend import callbacks
        callbacks.on_cfg_denoiser(lambda prm: seen.append((prm.sampling_step, prm.total_sampling_steps)))
        callbacks.on_cfg_after_cfg(lambda prm: setattr(prm, "x", prm.x))
    try:
        p = _p(batch_size=2, prompt="a AND b")
        p.unet_hooks.append(lambda call: rows.append((call.step, call.rows.image_index, call.rows.uncond)))
        app_ctx.generate(p)
    finally:
        registry.remove_source("test")
    assert seen == [(0, 2), (1, 2)]
    # Two images with two AND sub-prompts each, then the two uncond rows, in one batched call per step.
    assert rows == [(0, [0, 0, 1, 1, 0, 1], [False] * 4 + [True] * 2),
                    (1, [0, 0, 1, 1, 0, 1], [False] * 4 + [True] * 2)]


def test_unet_hook_kwargs_reach_the_unet(app_ctx) -> None:
    """What ControlNet does: residuals added to the UNet's skip connections through call.kwargs."""
    plain = np.asarray(app_ctx.generate(_p()).images[0])
    _, model = app_ctx.models.get(None)
    unet = model.unet
    # The residual shapes are conv_in's output and every down block's skip outputs; learn them once.
    shapes: list = []
    handles = [unet.conv_in.register_forward_hook(lambda m, a, out: shapes.append(out.shape[1:]))]
    handles += [b.register_forward_hook(lambda m, a, out: shapes.extend(t.shape[1:] for t in out[1]))
                for b in unet.down_blocks]
    handles.append(unet.mid_block.register_forward_hook(lambda m, a, out: shapes.append(out.shape[1:])))
    try:
        app_ctx.generate(_p(steps=1))
    finally:
        for h in handles:
            h.remove()
    per_call = 2 + sum(len(b.resnets) + (b.downsamplers is not None) for b in unet.down_blocks)
    down, mid = shapes[:per_call - 1], shapes[per_call - 1]  # the first forward's

    def add_residuals(call) -> None:
        n = call.x.shape[0]
        call.kwargs["down_block_additional_residuals"] = tuple(call.x.new_zeros(n, *s) for s in down)
        call.kwargs["mid_block_additional_residual"] = call.x.new_full((n, *mid), 0.5)

    p = _p()
    p.unet_hooks.append(add_residuals)
    changed = np.asarray(app_ctx.generate(p).images[0])
    assert not np.array_equal(plain, changed)


def test_image_saved_and_model_loaded_callbacks(app_ctx) -> None:
    events: list[str] = []
    registry = app_ctx.scripts.callbacks
    with registry.loading("test"):
        from backend import callbacks

        def rename(params) -> None:
            params.filename = str(Path(params.filename).with_name("renamed.png"))
            params.pnginfo["extra"] = "yes"

        callbacks.on_before_image_saved(rename)
        callbacks.on_image_saved(lambda params: events.append(params.filename))
        callbacks.on_model_loaded(lambda model: events.append(f"loaded {type(model).__name__}"))
    try:
        app_ctx.models.unload_all()
        processed = app_ctx.generate(_p(do_not_save_samples=False))
    finally:
        registry.remove_source("test")
    assert events[0] == "loaded LoadedModel"
    assert Path(events[1]).name == "renamed.png" and processed.saved_paths == [Path(events[1])]
    from PIL import Image
    with Image.open(events[1]) as im:
        assert im.info["extra"] == "yes"


def test_example_extension_through_the_api(tmp_path: Path, models_dir: Path) -> None:
    """The README's example: copied into <data dir>/extensions, its option, hook, infotext and route work."""
    import httpx

    from tests.live_server import running_server

    shutil.copytree(EXAMPLE, tmp_path / "extensions" / "prompt-suffix")
    with running_server(["--api", "--api-auth", "me:secret", "--use-cpu", "all"], tmp_path, models_dir) as (url, ctx, _):
        auth = ("me", "secret")
        assert httpx.get(f"{url}/prompt-suffix/version").status_code == 401  # extension routes need --api-auth too
        assert httpx.get(f"{url}/prompt-suffix/version", auth=auth).json() == {"version": 1}
        payload = {"prompt": "a house", "steps": 2, "width": 64, "height": 64,
                   "alwayson_scripts": {"prompt suffix": {"args": [True, "at night"]}}}
        info = httpx.post(f"{url}/sdapi/v1/txt2img", json=payload, auth=auth, timeout=120).json()["info"]
        text = json.loads(info)["infotexts"][0]
        assert text.startswith("a house, at night\n") and "Prompt suffix: at night" in text
        assert "prompt suffix" in httpx.get(f"{url}/sdapi/v1/scripts", auth=auth).json()["txt2img"]
        extensions = httpx.get(f"{url}/sdapi/v1/extensions", auth=auth).json()
        assert {"name": "prompt-suffix", "enabled": True}.items() <= next(
            e for e in extensions if e["name"] == "prompt-suffix").items()
        assert ctx.options["prompt_suffix_separator"] == ", "
        bad = httpx.post(f"{url}/sdapi/v1/txt2img", auth=auth, timeout=60,
                         json={**payload, "alwayson_scripts": {"No such": {"args": []}}})
        assert bad.status_code == 422 and "always on script No such not found" in bad.text


def test_disabled_by_option_and_by_flag(tmp_path: Path, models_dir: Path) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "extensions" / "prompt-suffix")
    (tmp_path / "config.json").write_text('{"disabled_extensions": ["prompt-suffix"]}')
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(models_dir)], env={})
    ctx = AppContext.build(settings, DevicePolicy.cpu())
    assert ctx.scripts.txt2img.find("prompt suffix") is None
    (tmp_path / "config.json").write_text("{}")
    flagged = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(models_dir),
                                  "--disable-extra-extensions"], env={})
    assert AppContext.build(flagged, DevicePolicy.cpu()).scripts.txt2img.find("prompt suffix") is None
    assert AppContext.build(settings, DevicePolicy.cpu()).scripts.txt2img.find("prompt suffix") is not None


def test_preload_adds_flags(tmp_path: Path) -> None:
    from backend.scripts import preload_extensions

    _write(tmp_path / "extensions", "flagged", {"preload.py": """
        def preload(parser):
            parser.add_argument("--my-extension-flag", default="off")
    """})
    settings = Settings.from_args(["--data-dir", str(tmp_path), "--my-extension-flag", "on"], env={},
                                  preload=preload_extensions(lambda args: Path(args.data_dir) / "extensions"))
    assert settings.extra["my_extension_flag"] == "on"


def test_callbacks_outside_loading_are_refused_and_errors_are_logged(caplog) -> None:
    from backend import callbacks

    with pytest.raises(RuntimeError, match="while extensions load"):
        callbacks.on_model_loaded(lambda model: None)
    registry = CallbackRegistry()
    with registry.loading("ext-x"):
        callbacks.on_model_loaded(lambda model: 1 / 0)
        callbacks.on_model_loaded(lambda model: "fine")
    with caplog.at_level(logging.ERROR):
        assert registry.fire("model_loaded", None) == [None, "fine"]
    assert "ext-x/" in caplog.text


def test_ui_controls_defaults_are_read_from_gradio_components() -> None:
    class Choices(Script):
        def title(self): return "Choices"
        def show(self, is_img2img): return AlwaysVisible
        def ui(self, is_img2img):
            return [gr.Dropdown(["a", "b"], value="b", label="Pick"), gr.State({"unit": 1})]

    runner = ScriptRunner([Choices()], is_img2img=True)
    assert runner.defaults == [0, "b", {"unit": 1}]
    assert runner.script_info()[0]["args"][0]["choices"] == ["a", "b"]


@pytest.mark.parametrize("sampler", ["Euler a", "DDIM", "PLMS", "UniPC", "Heun"])
def test_total_sampling_steps_count_the_steps_that_run(app_ctx, sampler: str) -> None:
    """A1111's total_sampling_steps: the steps of the pass (t_enc + 1 in img2img), counted in denoiser calls."""
    from PIL import Image

    from backend.processing import StableDiffusionProcessingImg2Img

    seen: list[tuple[int, int]] = []
    registry = app_ctx.scripts.callbacks
    with registry.loading("test"):
        from backend import callbacks
        callbacks.on_cfg_denoiser(lambda prm: seen.append((prm.sampling_step, prm.total_sampling_steps)))
    try:
        app_ctx.generate(_p(steps=4, sampler_name=sampler))
        calls = 2 if sampler == "Heun" else 1  # second-order samplers evaluate twice per step
        assert {total for _, total in seen} == {4 * calls}
        seen.clear()
        app_ctx.generate(StableDiffusionProcessingImg2Img(
            init_images=[Image.new("RGB", (64, 64), "gray")], denoising_strength=0.5, prompt="a house", steps=4,
            width=64, height=64, seed=1, sampler_name=sampler, do_not_save_samples=True, do_not_save_grid=True))
        assert {total for _, total in seen} == {3 * calls}  # t_enc = int(0.5 * 4) = 2, so 3 steps run
    finally:
        registry.remove_source("test")


def test_a_selectable_script_without_run_fails_with_its_name(app_ctx) -> None:
    from backend.errors import ExtensionError

    class NoRun(Script):
        pass

    script = NoRun()
    script.extension = "half-done"
    p = _p()
    runner = ScriptRunner([script], is_img2img=False, capture=lambda s, tab: [])
    runner.bind(p, runner.script_args("norun"))  # the class name stands in for a missing title()
    with pytest.raises(ExtensionError, match="'NoRun' is selectable but has no run"):
        app_ctx.generate(p)
