"""Upscaler registry, A1111 names and sizes, spandrel loading of the real file layouts, tiling."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from backend.errors import InvalidRequest, ModelLoadError, ModelNotFound
from backend.postprocess import upscalers as up
from tests.backend.postprocess import tiny_weights as tw

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    tw.save_weights(tw.rrdb_state_dict(real_esrgan_layout=True), root / "RealESRGAN" / "RealESRGAN_x4plus.pth",
                    params_ema=True)
    tw.save_weights(tw.compact_state_dict(scale=4), root / "RealESRGAN" / "realesr-general-x4v3.pth")
    tw.save_weights(tw.compact_state_dict(scale=2, seed=1), root / "ESRGAN" / "2x_compact.safetensors")
    tw.save_weights(tw.compact_state_dict(scale=2, seed=2), root / "ESRGAN" / "sub" / "plain.pth")
    (root / "ESRGAN" / "readme.txt").write_text("not a model")
    (root / "ESRGAN" / ".hidden.pth").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def registry(models: Path) -> up.UpscalerRegistry:
    return up.UpscalerRegistry(models)


def _noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = (rng.random((height // 4 + 1, width // 4 + 1, 3)) * 255).astype(np.uint8)
    # Smooth content, like a picture, rather than pixel noise.
    return Image.fromarray(small).resize((width * 2, height * 2), Image.Resampling.BICUBIC).crop((0, 0, width, height))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def test_latent_modes_are_a1111s_six() -> None:
    assert [m.name for m in up.LATENT_UPSCALE_MODES] == [
        "Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
        "Latent (nearest)", "Latent (nearest-exact)",
    ]
    mode = up.find_latent_mode("Latent (bicubic antialiased)")
    assert mode is not None and (mode.mode, mode.antialias) == ("bicubic", True)
    assert up.find_latent_mode("Latent").mode == "bilinear"
    assert up.find_latent_mode("Lanczos") is None
    assert up.find_latent_mode(None) is None


def test_list_uses_a1111_names_and_order(registry: up.UpscalerRegistry, models: Path) -> None:
    infos = registry.list()
    assert [i.name for i in infos] == [
        "None", "Lanczos", "Nearest", "2x_compact", "plain", "R-ESRGAN 4x+", "R-ESRGAN General 4xV3",
    ]
    by_name = {i.name: i for i in infos}
    assert by_name["R-ESRGAN 4x+"].path == models / "RealESRGAN" / "RealESRGAN_x4plus.pth"
    assert (by_name["R-ESRGAN 4x+"].kind, by_name["R-ESRGAN 4x+"].folder) == ("model", "RealESRGAN")
    assert by_name["2x_compact"].scale == 2  # guessed from the name before loading, as A1111 does
    assert by_name["Lanczos"] == up.UpscalerInfo("Lanczos", "lanczos", None, 4, "")


def test_extra_dirs_are_scanned(models: Path, tmp_path: Path) -> None:
    tw.save_weights(tw.compact_state_dict(scale=2), tmp_path / "elsewhere" / "Extra_x2.pth")
    registry = up.UpscalerRegistry(models, extra_dirs={"ESRGAN": tmp_path / "elsewhere"})
    assert registry.get("Extra_x2").path == tmp_path / "elsewhere" / "Extra_x2.pth"


def test_missing_well_known_model_names_the_file(registry: up.UpscalerRegistry, models: Path) -> None:
    with pytest.raises(up.WeightsMissing) as error:
        registry.get("R-ESRGAN 4x+ Anime6B")
    assert isinstance(error.value, ModelNotFound)
    assert str(models / "RealESRGAN" / "RealESRGAN_x4plus_anime_6B.pth") in str(error.value)
    with pytest.raises(up.WeightsMissing, match=r"DAT/DAT_x4\.pth"):
        registry.get("DAT x4")
    with pytest.raises(ModelNotFound, match="R-ESRGAN 4x\\+") as unknown:
        registry.get("no such upscaler")
    assert not isinstance(unknown.value, up.WeightsMissing)


def test_refresh_sees_new_files(models: Path, tmp_path: Path) -> None:
    registry = up.UpscalerRegistry(tmp_path)
    assert [i.name for i in registry.list()] == ["None", "Lanczos", "Nearest"]
    tw.save_weights(tw.compact_state_dict(), tmp_path / "SwinIR" / "SwinIR_4x.pth")
    registry.refresh()
    assert registry.get("SwinIR 4x").folder == "SwinIR"


def test_layouts_load_the_same_network(tmp_path: Path) -> None:
    """Old ESRGAN keys, Real-ESRGAN keys wrapped in params_ema, and safetensors: same outputs."""
    old = tw.save_weights(tw.rrdb_state_dict(), tmp_path / "old.pth")
    new = tw.save_weights(tw.rrdb_state_dict(real_esrgan_layout=True), tmp_path / "new.pth", params_ema=True)
    safe = tw.save_weights(tw.rrdb_state_dict(), tmp_path / "safe.safetensors")
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = []
    for path in (old, new, safe):
        descriptor = up.load_image_model(path, device=CPU, dtype=torch.float32)
        assert descriptor.scale == 4
        with torch.inference_mode():
            outputs.append(descriptor(x))
    assert outputs[0].shape == (1, 3, 32, 32)
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    torch.testing.assert_close(outputs[0], outputs[2], rtol=0, atol=0)


def test_unsafe_or_foreign_files_are_refused(tmp_path: Path) -> None:
    torch.save({"weights": _NotATensor()}, tmp_path / "pickled.pth")
    with pytest.raises(ModelLoadError, match="weights_only"):
        up.load_image_model(tmp_path / "pickled.pth", device=CPU, dtype=torch.float32)
    tw.save_weights({"some.weight": torch.zeros(3)}, tmp_path / "foreign.pth")
    with pytest.raises(ModelLoadError, match="spandrel"):
        up.load_image_model(tmp_path / "foreign.pth", device=CPU, dtype=torch.float32)


class _NotATensor:
    pass


def test_model_upscale_sizes_follow_a1111(registry: up.UpscalerRegistry) -> None:
    image = _noise_image(20, 13)
    # Target = (w*scale, h*scale) rounded down to a multiple of 8.
    assert registry.upscale(image, 2, "R-ESRGAN 4x+", opts={}, device=CPU).size == (40, 24)
    assert registry.upscale(image, 3.3, "R-ESRGAN General 4xV3", opts={}, device=CPU).size == (64, 40)
    with pytest.raises(InvalidRequest, match="upscaling_resize"):
        registry.upscale(image, 0.2, "Lanczos", opts={}, device=CPU)


def test_model_runs_again_until_the_target_is_covered(registry: up.UpscalerRegistry) -> None:
    image = _noise_image(16, 16)
    result = registry.upscale(image, 4, "2x_compact", opts={"ESRGAN_tile": 0}, device=CPU)
    descriptor = up.load_image_model(registry.get("2x_compact").path, device=CPU, dtype=torch.float32)
    once = up.tensor_to_pil(descriptor(up.pil_to_tensor(image, CPU, torch.float32)))
    twice = up.tensor_to_pil(descriptor(up.pil_to_tensor(once, CPU, torch.float32)))
    assert result.size == (64, 64)
    np.testing.assert_array_equal(_pixels(result), _pixels(twice))


def test_scale_one_runs_the_model_and_smaller_scales_do_not(registry: up.UpscalerRegistry) -> None:
    image = _noise_image(32, 24)
    same_size = registry.upscale(image, 1, "2x_compact", opts={}, device=CPU)
    assert same_size.size == image.size
    assert np.abs(_pixels(same_size) - _pixels(image)).max() > 10
    smaller = registry.upscale(image, 0.5, "2x_compact", opts={}, device=CPU)
    expected = image.resize((16, 8), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(_pixels(smaller), _pixels(expected))


def test_native_scale_comes_from_spandrel_once_loaded(registry: up.UpscalerRegistry) -> None:
    assert registry.get("plain").scale == 4  # no hint in the name: A1111's default guess
    registry.upscale(_noise_image(8, 8), 2, "plain", opts={}, device=CPU)
    assert registry.get("plain").scale == 2


def test_builtin_upscalers(registry: up.UpscalerRegistry) -> None:
    image = _noise_image(24, 16)
    lanczos = registry.upscale(image, 2, "Lanczos", opts={}, device=CPU)
    np.testing.assert_array_equal(_pixels(lanczos), _pixels(image.resize((48, 32), Image.Resampling.LANCZOS)))
    nearest = registry.upscale(image, 2, "Nearest", opts={}, device=CPU)
    np.testing.assert_array_equal(_pixels(nearest), _pixels(image.resize((48, 32), Image.Resampling.NEAREST)))
    # "None" leaves the work to the final Lanczos resize, as A1111's UpscalerNone does.
    none = registry.upscale(image, 2, "None", opts={}, device=CPU)
    np.testing.assert_array_equal(_pixels(none), _pixels(lanczos))


def test_loaded_model_is_reused(registry: up.UpscalerRegistry) -> None:
    registry.upscale(_noise_image(8, 8), 2, "2x_compact", opts={}, device=CPU)
    first = registry._loaded.descriptor
    registry.upscale(_noise_image(8, 8), 2, "2x_compact", opts={}, device=CPU)
    assert registry._loaded.descriptor is first
    registry.unload()
    assert registry._loaded is None


def test_tile_positions_cover_evenly() -> None:
    assert up._tile_starts(20, 32, 8) == [0]
    starts = up._tile_starts(100, 32, 8)
    assert starts[0] == 0 and starts[-1] == 100 - 32
    assert all(b - a <= 32 - 8 for a, b in zip(starts, starts[1:]))


def test_tiled_inference_is_exact_for_a_local_operation() -> None:
    x = torch.rand(1, 3, 45, 70, generator=torch.Generator().manual_seed(1))

    def upsample(t: torch.Tensor) -> torch.Tensor:
        return F.interpolate(t, scale_factor=2, mode="nearest")

    tiled = up.tiled_inference(upsample, x, tile=16, overlap=8)
    torch.testing.assert_close(tiled, upsample(x), rtol=0, atol=1e-6)
    torch.testing.assert_close(up.tiled_inference(upsample, x, tile=16, overlap=0), upsample(x), rtol=0, atol=0)


def test_tiling_on_and_off_agree_with_a_real_network(registry: up.UpscalerRegistry) -> None:
    image = _noise_image(100, 70, seed=3)
    whole = registry.upscale(image, 2, "2x_compact", opts={"ESRGAN_tile": 0}, device=CPU)
    tiled = registry.upscale(image, 2, "2x_compact", opts={"ESRGAN_tile": 32, "ESRGAN_tile_overlap": 16}, device=CPU)
    difference = np.abs(_pixels(whole) - _pixels(tiled))
    assert difference.max() <= 2 and difference.mean() < 0.05
    with pytest.raises(InvalidRequest, match="ESRGAN_tile_overlap"):
        registry.upscale(image, 2, "2x_compact", opts={"ESRGAN_tile": 16, "ESRGAN_tile_overlap": 16}, device=CPU)


def test_resize_to_gives_the_exact_size(registry: up.UpscalerRegistry) -> None:
    image = _noise_image(30, 20)
    result = up.resize_to(image, 75, 50, "R-ESRGAN General 4xV3", registry, {}, CPU)
    assert result.size == (75, 50)
    plain = up.resize_to(image, 75, 50, "None", registry, {}, CPU)
    np.testing.assert_array_equal(_pixels(plain), _pixels(image.resize((75, 50), Image.Resampling.LANCZOS)))
    assert np.abs(_pixels(result) - _pixels(plain)).max() > 10
    # Shrinking never runs an upscaler, so even an unknown name is fine there.
    assert up.resize_to(image, 15, 10, "no such upscaler", registry, {}, CPU).size == (15, 10)
    with pytest.raises(ModelNotFound):
        up.resize_to(image, 60, 40, "no such upscaler", registry, {}, CPU)
