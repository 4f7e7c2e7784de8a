"""End-to-end txt2img through process_images with the built-in model."""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.postprocess.images import read_info_from_image
from backend.postprocess.infotext import parse_infotext
from backend.processing import StableDiffusionProcessingTxt2Img, process_images
from backend.sampling.registry import SAMPLERS
from backend.scripts import AlwaysVisible, Script, ScriptRunner
from backend.version import VERSION


def _p(**kw: object) -> StableDiffusionProcessingTxt2Img:
    base: dict[str, object] = dict(prompt="a cozy cabin, (snow:1.2)", negative_prompt="blurry", steps=4,
                                   width=64, height=64, seed=42, sampler_name="Euler a", cfg_scale=7.0)
    base.update(kw)
    return StableDiffusionProcessingTxt2Img(**base)  # type: ignore[arg-type]


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def test_images_are_saved_with_a1111_infotext(app_ctx) -> None:
    processed = app_ctx.generate(_p(batch_size=2))
    assert len(processed.images) == 3 and processed.index_of_first_image == 1  # grid first
    assert processed.all_seeds == [42, 43]
    info = app_ctx.registry.get("sd-tiny-builtin")
    first = processed.infotexts[1]
    assert first == (
        "a cozy cabin, (snow:1.2)\nNegative prompt: blurry\n"
        f"Steps: 4, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 42, Size: 64x64, "
        f"Model hash: {info.shorthash}, Model: sd-tiny-builtin, Version: {VERSION}"
    )
    day = datetime.date.today().isoformat()
    samples = app_ctx.settings.data_dir / "outputs" / "txt2img-images" / day
    assert sorted(p.name for p in samples.iterdir()) == ["00000-42.png", "00001-43.png"]
    grids = app_ctx.settings.data_dir / "outputs" / "txt2img-grids" / day
    assert [p.name for p in grids.iterdir()] == ["grid-0000.png"]
    with Image.open(samples / "00001-43.png") as im:
        text, _ = read_info_from_image(im)
        assert im.size == (64, 64)
    assert text == processed.infotexts[2]
    parsed = parse_infotext(text)
    assert parsed["Seed"] == "43" and parsed["Sampler"] == "Euler a" and parsed["Size-1"] == "64"
    assert (app_ctx.settings.data_dir / "params.txt").read_text().startswith("a cozy cabin")


def test_resolved_schedule_type_in_infotext(app_ctx) -> None:
    processed = app_ctx.generate(_p(sampler_name="DPM++ 2M Karras", do_not_save_samples=True))
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in processed.infotexts[0]


def test_same_seed_same_image_other_seed_other_image(app_ctx) -> None:
    a = app_ctx.generate(_p(do_not_save_samples=True)).images[0]
    b = app_ctx.generate(_p(do_not_save_samples=True)).images[0]
    c = app_ctx.generate(_p(seed=43, do_not_save_samples=True)).images[0]
    assert np.array_equal(_pixels(a), _pixels(b))
    assert not np.array_equal(_pixels(a), _pixels(c))


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ SDE", "DPM++ 2M"])
def test_batch_image_k_equals_single_run_with_seed_plus_k(app_ctx, sampler: str) -> None:
    batch = app_ctx.generate(_p(sampler_name=sampler, batch_size=3, seed=100, do_not_save_samples=True,
                                do_not_save_grid=True))
    for k in range(3):
        single = app_ctx.generate(_p(sampler_name=sampler, seed=100 + k, do_not_save_samples=True)).images[0]
        diff = np.abs(_pixels(batch.images[k]) - _pixels(single)).max()
        assert diff <= 1, f"image {k} differs by {diff}"


def test_random_seed_is_recorded(app_ctx) -> None:
    processed = app_ctx.generate(_p(seed=-1, do_not_save_samples=True))
    seed = processed.seed
    assert 0 <= seed < 4294967294 and f"Seed: {seed}," in processed.infotexts[0]
    again = app_ctx.generate(_p(seed=seed, do_not_save_samples=True))
    assert np.array_equal(_pixels(processed.images[0]), _pixels(again.images[0]))


def test_variation_seed_keeps_the_seed_and_is_written(app_ctx) -> None:
    processed = app_ctx.generate(_p(batch_size=2, subseed=555, subseed_strength=0.3, do_not_save_samples=True,
                                    do_not_save_grid=True))
    assert processed.all_seeds == [42, 42] and processed.all_subseeds == [555, 556]
    assert "Seed: 42, Size: 64x64," in processed.infotexts[0]
    assert "Variation seed: 555, Variation seed strength: 0.3," in processed.infotexts[0]
    assert "Variation seed: 556," in processed.infotexts[1]


def test_override_settings_apply_to_the_request_only(app_ctx) -> None:
    processed = app_ctx.generate(_p(override_settings={"CLIP_stop_at_last_layers": 2, "randn_source": "CPU"},
                                    do_not_save_samples=True))
    assert "Clip skip: 2" in processed.infotexts[0] and "RNG: CPU" in processed.infotexts[0]
    assert app_ctx.options["CLIP_stop_at_last_layers"] == 1 and app_ctx.options["randn_source"] == "GPU"


def test_override_settings_kept_when_asked(app_ctx) -> None:
    app_ctx.generate(_p(override_settings={"eta_noise_seed_delta": 31337}, override_settings_restore_afterwards=False,
                        do_not_save_samples=True))
    assert app_ctx.options["eta_noise_seed_delta"] == 31337


def test_ensd_is_written_only_for_samplers_that_use_it(app_ctx) -> None:
    o = {"eta_noise_seed_delta": 31337}
    assert "ENSD: 31337" in app_ctx.generate(_p(override_settings=o, do_not_save_samples=True)).infotexts[0]
    euler = app_ctx.generate(_p(sampler_name="Euler", override_settings=o, do_not_save_samples=True))
    assert "ENSD" not in euler.infotexts[0]


@pytest.mark.parametrize("field,kwargs", [
    ("width", {"width": 65}), ("height", {"height": 0}), ("steps", {"steps": 0}),
    ("batch_size", {"batch_size": "2"}), ("sampler_name", {"sampler_name": "Nope"}),
    ("scheduler", {"scheduler": "Nope"}), ("subseed_strength", {"subseed_strength": 2}),
    ("hr_scale", {"enable_hr": True, "hr_scale": 0}),
    ("hr_sampler_name", {"enable_hr": True, "hr_sampler_name": "Nope"}),
])
def test_bad_requests_name_the_field(app_ctx, field: str, kwargs: dict) -> None:
    with pytest.raises(InvalidRequest) as e:
        app_ctx.generate(_p(**kwargs))
    assert e.value.field == field


class _InterruptAfterFirstBatch(Script):
    """An always-on script that interrupts during the first batch (exercises the hook points too)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def title(self) -> str: return "interrupter"
    def show(self, is_img2img): return AlwaysVisible
    def before_process(self, p, *args) -> None: self.calls.append("before_process")
    def process(self, p, *args) -> None: self.calls.append("process")
    def before_process_batch(self, p, *args, **kwargs) -> None: self.calls.append("before_process_batch")
    def process_batch(self, p, *args, batch_number, **kwargs) -> None:
        self.calls.append("process_batch")
        p.context.state.interrupt()
    def postprocess_batch(self, p, *args, **kwargs) -> None: self.calls.append("postprocess_batch")
    def postprocess_image(self, p, pp, *args): self.calls.append("postprocess_image")
    def postprocess(self, p, processed, *args) -> None: self.calls.append("postprocess")


def _with_script(p, script: Script):
    ScriptRunner([script], is_img2img=False, capture=lambda s, tab: []).bind(p)
    return p


def test_interrupt_returns_what_is_done(app_ctx) -> None:
    ctx = app_ctx.processing_context()
    script = _InterruptAfterFirstBatch()
    p = _with_script(_p(n_iter=3, do_not_save_samples=True, do_not_save_grid=True), script)
    processed = process_images(p, ctx)
    assert processed.interrupted and len(processed.images) == 1
    assert script.calls == ["before_process", "process", "before_process_batch", "process_batch",
                            "postprocess_batch", "postprocess_image", "postprocess"]


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_generates(app_ctx, sampler: str) -> None:
    processed = app_ctx.generate(_p(sampler_name=sampler, steps=3, do_not_save_samples=True))
    arr = _pixels(processed.images[0])
    assert arr.shape == (64, 64, 3)
    assert f"Sampler: {sampler}," in processed.infotexts[0]


def test_prompt_editing_and_and_run(app_ctx) -> None:
    processed = app_ctx.generate(_p(prompt="a [cat:dog:2] AND a house:0.5 BREAK night", steps=4,
                                    do_not_save_samples=True))
    assert processed.infotexts[0].startswith("a [cat:dog:2] AND a house:0.5 BREAK night\n")


def test_extra_network_tags_stay_in_the_infotext(app_ctx) -> None:
    processed = app_ctx.generate(_p(prompt="a cat <lora:missing:0.8>", do_not_save_samples=True))
    assert processed.infotexts[0].startswith("a cat <lora:missing:0.8>\n")


def test_custom_output_dir_and_jpeg(app_ctx, tmp_path: Path) -> None:
    out = tmp_path / "elsewhere"
    processed = app_ctx.generate(_p(outpath_samples=str(out), override_settings={"samples_format": "jpg"}))
    assert len(processed.saved_paths) == 1 and processed.saved_paths[0].suffix == ".jpg"
    assert processed.saved_paths[0].is_relative_to(out)
    with Image.open(processed.saved_paths[0]) as im:
        text, _ = read_info_from_image(im)
    assert text == processed.infotexts[0]


class _SkipFirstBatch(_InterruptAfterFirstBatch):
    def process_batch(self, p, *args, batch_number, **kwargs) -> None:
        if batch_number == 0:
            p.context.state.skip()


def test_skip_moves_on_to_the_next_batch(app_ctx) -> None:
    ctx = app_ctx.processing_context()
    p = _with_script(_p(n_iter=2, do_not_save_samples=True, do_not_save_grid=True), _SkipFirstBatch())
    processed = process_images(p, ctx)
    assert not processed.interrupted and len(processed.images) == 2
    full = app_ctx.generate(_p(seed=43, do_not_save_samples=True)).images[0]
    assert np.array_equal(_pixels(processed.images[1]), _pixels(full))  # the second batch ran in full


def test_sampler_aliases_mean_their_sampler(app_ctx) -> None:
    processed = app_ctx.generate(_p(sampler_name="k_euler_a", do_not_save_samples=True))
    assert "Sampler: Euler a," in processed.infotexts[0]
