"""The Extras tab backend: A1111's order, sizes, infotext and PNG keys, batches and directories."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from backend.errors import InvalidRequest, ModelNotFound
from backend.jobs.progress import JobState
from backend.postprocess import extras as ex
from backend.postprocess.face_restore import FaceRestorerRegistry
from backend.postprocess.upscalers import UpscalerRegistry, WeightsMissing
from tests.backend.postprocess import tiny_weights as tw

CPU = torch.device("cpu")
PARAMETERS = "a cat\nSteps: 20, Sampler: Euler a, Seed: 1, Size: 40x30"


class RecordingRestorer:
    """Stands in for FaceRestorerRegistry: records calls and darkens the image."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, int], float, float]] = []

    def restore_faces(self, image, model_name, *, codeformer_weight=0.5, visibility=1.0, device, dtype=torch.float32,
                      unload_after=False):
        self.calls.append((model_name, image.size, visibility, codeformer_weight))
        return image.point(lambda v: v // 2)


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory: pytest.TempPathFactory) -> UpscalerRegistry:
    root = tmp_path_factory.mktemp("models")
    tw.save_weights(tw.compact_state_dict(scale=4), root / "RealESRGAN" / "realesr-general-x4v3.pth", params_ema=True)
    return UpscalerRegistry(root)


def _image(width: int = 40, height: int = 30, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray((rng.random((height, width, 3)) * 255).astype(np.uint8))
    image.info["parameters"] = PARAMETERS
    return image


def _run(images, req, upscalers, tmp_path, restorer=None, opts=None, **kwargs):
    return ex.run_extras(images, req, upscalers=upscalers, face_restorers=restorer or RecordingRestorer(),
                         opts=opts or {}, output_dir=tmp_path / "extras-images", device=CPU, **kwargs)


def test_scale_by_size_infotext_and_png_keys(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    req = ex.ExtrasRequest(upscaler_1="R-ESRGAN General 4xV3", upscaling_resize=2)
    [result] = _run([(_image(), None)], req, upscalers, tmp_path)
    assert result.image.size == (80, 56)  # 30*2 rounded down to a multiple of 8, as A1111
    assert result.infotext == "Postprocess upscale by: 2, Postprocess upscaler: R-ESRGAN General 4xV3"
    assert result.saved_path == tmp_path / "extras-images" / "00000.png"  # no date folder
    assert result.image.info["parameters"] == PARAMETERS
    assert result.image.info["postprocessing"] == result.infotext
    with Image.open(result.saved_path) as saved:
        assert saved.text == {"parameters": PARAMETERS, "postprocessing": result.infotext, "extras": result.infotext}
        assert saved.size == (80, 56)


def test_scale_to_with_crop(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    req = ex.ExtrasRequest(resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64, upscaler_1="Lanczos",
                           save=False)
    [result] = _run([(_image(), None)], req, upscalers, tmp_path)
    assert result.image.size == (64, 64)
    assert result.infotext == "Postprocess upscale to: 64x64, Postprocess crop to: 64x64, Postprocess upscaler: Lanczos"
    assert result.saved_path is None
    uncropped = ex.ExtrasRequest(resize_mode=1, upscaling_resize_w=64, upscaling_resize_h=64, upscaling_crop=False,
                                 upscaler_1="Lanczos", save=False)
    [result] = _run([(_image(), None)], uncropped, upscalers, tmp_path)
    assert result.image.size == (80, 64)  # covers the target: scale = max(64/40, 64/30)


def test_max_side_length_limits_scale_by(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    req = ex.ExtrasRequest(upscaler_1="Lanczos", upscaling_resize=4, max_side_length=100, save=False)
    [result] = _run([(_image(), None)], req, upscalers, tmp_path)
    assert result.image.size == (96, 72)  # limited to 100x75, then A1111's multiple of 8
    assert result.infotext == "Postprocess upscale by: 4, Max side length: 100, Postprocess upscaler: Lanczos"


def test_upscaler_2_is_blended_by_visibility(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    image = _image()
    req = ex.ExtrasRequest(upscaler_1="Lanczos", upscaler_2="Nearest", extras_upscaler_2_visibility=0.25, save=False)
    [result] = _run([(image, None)], req, upscalers, tmp_path)
    # Each upscaler resizes by 2 (80x60), then Lanczos gives A1111's multiple-of-8 target.
    lanczos = image.resize((80, 60), Image.Resampling.LANCZOS).resize((80, 56), Image.Resampling.LANCZOS)
    nearest = image.resize((80, 60), Image.Resampling.NEAREST).resize((80, 56), Image.Resampling.LANCZOS)
    expected = Image.blend(lanczos, nearest, 0.25)
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(expected))
    assert result.infotext.endswith("Postprocess upscaler: Lanczos, Postprocess upscaler 2: Nearest")


def test_upscale_then_gfpgan_then_codeformer(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    restorer = RecordingRestorer()
    req = ex.ExtrasRequest(upscaler_1="Lanczos", gfpgan_visibility=0.5, codeformer_visibility=0.25,
                           codeformer_weight=0.1234, save=False)
    [result] = _run([(_image(), None)], req, upscalers, tmp_path, restorer=restorer)
    assert restorer.calls == [("GFPGAN", (80, 56), 0.5, 0.5), ("CodeFormer", (80, 56), 0.25, 0.1234)]
    assert result.infotext == ("Postprocess upscale by: 2, Postprocess upscaler: Lanczos, GFPGAN visibility: 0.5, "
                               "CodeFormer visibility: 0.25, CodeFormer weight: 0.123")


def test_nothing_to_do_returns_the_image_unchanged(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    image = _image()
    restorer = RecordingRestorer()
    [result] = _run([(image, None)], ex.ExtrasRequest(save=False), upscalers, tmp_path, restorer=restorer)
    np.testing.assert_array_equal(np.asarray(result.image), np.asarray(image))
    assert result.infotext == "" and restorer.calls == []


def test_batch_keeps_original_names(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    req = ex.ExtrasRequest(upscaler_1="Lanczos")
    results = _run([(_image(seed=1), "a.png"), (_image(seed=2), "dir/b.jpg")], req, upscalers, tmp_path)
    assert [r.saved_path.name for r in results] == ["a.png", "b.png"]
    opts = {"use_upscaler_name_as_suffix": True, "use_original_name_batch": False}
    results = _run([(_image(seed=1), "a.png")], req, upscalers, tmp_path, opts=opts)
    # A1111 joins the number and the "-Lanczos" suffix with one more dash.
    assert results[0].saved_path.name == "00000--Lanczos.png"


def test_png_info_off_writes_no_text(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    [result] = _run([(_image(), None)], ex.ExtrasRequest(upscaler_1="Lanczos"), upscalers, tmp_path,
                    opts={"enable_pnginfo": False})
    with Image.open(result.saved_path) as saved:
        assert saved.text == {}
    assert "postprocessing" not in result.image.info


def test_batch_from_directory(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    source = tmp_path / "in"
    source.mkdir()
    info = PngInfo()
    info.add_text("parameters", PARAMETERS)
    _image(seed=3).save(source / "first.png", pnginfo=info)
    _image(seed=4).save(source / "second.png")
    (source / "notes.txt").write_text("not an image")
    req = ex.ExtrasRequest(upscaler_1="Lanczos", show_extras_results=False)
    results = ex.extras_from_directory(source, tmp_path / "out", req, upscalers=upscalers,
                                       face_restorers=RecordingRestorer(), opts={}, default_dir=tmp_path / "default",
                                       device=CPU)
    assert [r.saved_path for r in results] == [tmp_path / "out" / "first.png", tmp_path / "out" / "second.png"]
    assert all(r.image is None for r in results)
    with Image.open(tmp_path / "out" / "first.png") as saved:
        assert saved.text["parameters"] == PARAMETERS
    req.show_extras_results = True
    results = ex.extras_from_directory(source, None, req, upscalers=upscalers, face_restorers=RecordingRestorer(),
                                       opts={}, default_dir=tmp_path / "default", device=CPU)
    assert results[0].saved_path.parent == tmp_path / "default" and results[0].image.size == (80, 56)
    with pytest.raises(InvalidRequest):
        ex.extras_from_directory(tmp_path / "missing", None, req, upscalers=upscalers,
                                 face_restorers=RecordingRestorer(), opts={}, default_dir=tmp_path, device=CPU)


def test_bad_requests_fail_before_any_work(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound):
        _run([(_image(), None)], ex.ExtrasRequest(upscaler_1="Lanczos", upscaler_2="Nope"), upscalers, tmp_path)
    with pytest.raises(WeightsMissing, match="RealESRGAN_x4plus.pth"):
        _run([(_image(), None)], ex.ExtrasRequest(upscaler_1="R-ESRGAN 4x+"), upscalers, tmp_path)
    for field, value in [("resize_mode", 2), ("upscaling_resize", 0), ("gfpgan_visibility", 1.5),
                         ("codeformer_weight", -0.1), ("upscaling_resize_w", 0), ("max_side_length", -1)]:
        req = ex.ExtrasRequest(**{field: value})
        if field == "upscaling_resize_w":
            req.resize_mode = 1
        with pytest.raises(InvalidRequest) as error:
            _run([(_image(), None)], req, upscalers, tmp_path)
        assert error.value.field == field
    assert not (tmp_path / "extras-images").exists()


def test_missing_face_weights_give_a_clear_error(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    restorers = FaceRestorerRegistry(tmp_path / "models")
    with pytest.raises(WeightsMissing, match="GFPGANv1.4.pth"):
        _run([(_image(), None)], ex.ExtrasRequest(gfpgan_visibility=1), upscalers, tmp_path, restorer=restorers)


def test_job_state_counts_interrupts_and_skips(upscalers: UpscalerRegistry, tmp_path: Path) -> None:
    state = JobState()
    req = ex.ExtrasRequest(upscaler_1="Lanczos", save=False)
    results = _run([(_image(seed=i), f"{i}.png") for i in range(3)], req, upscalers, tmp_path, state=state)
    assert len(results) == 3 and (state.job, state.job_count, state.job_no) == ("extras", 3, 3)

    class SkipSecond(RecordingRestorer):
        def restore_faces(self, image, model_name, **kwargs):
            if len(self.calls) == 1:
                state.skip()
            return super().restore_faces(image, model_name, **kwargs)

    req = ex.ExtrasRequest(gfpgan_visibility=1, save=False)
    results = _run([(_image(seed=i), f"{i}.png") for i in range(3)], req, upscalers, tmp_path,
                   restorer=SkipSecond(), state=state)
    assert len(results) == 2
    state.interrupt()
    assert _run([(_image(), None)], req, upscalers, tmp_path, state=state) == []


def test_default_output_dir(tmp_path: Path) -> None:
    assert ex.default_output_dir({}, tmp_path) == tmp_path / "outputs/extras-images"
    assert ex.default_output_dir({"outdir_samples": "mine"}, tmp_path) == tmp_path / "mine"
