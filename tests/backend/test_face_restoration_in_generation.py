"""restore_faces during txt2img: the restorer runs on every image and the infotext says so."""
from __future__ import annotations

from pathlib import Path

import pytest

from backend.config import Settings
from backend.context import AppContext
from backend.devices import DevicePolicy
from backend.errors import ModelNotFound
from backend.processing import StableDiffusionProcessingTxt2Img


def _p(**kw: object) -> StableDiffusionProcessingTxt2Img:
    return StableDiffusionProcessingTxt2Img(prompt="a portrait", steps=2, width=64, height=64, seed=1,
                                            restore_faces=True, do_not_save_samples=True, **kw)  # type: ignore[arg-type]


def _ctx(tmp_path: Path, builtin_checkpoint: Path, with_weights: bool) -> AppContext:
    models = tmp_path / "models"
    (models / "Stable-diffusion").mkdir(parents=True)
    (models / "Stable-diffusion" / builtin_checkpoint.name).symlink_to(builtin_checkpoint)
    if with_weights:
        from tests.backend.postprocess.tiny_weights import gfpgan_state_dict, save_weights

        save_weights(gfpgan_state_dict(), models / "GFPGAN" / "GFPGANv1.4.pth")
    settings = Settings.from_args(["--data-dir", str(tmp_path / "data"), "--models-dir", str(models)], env={})
    app = AppContext.build(settings, devices=DevicePolicy.cpu())
    app.start()
    return app


def test_restore_faces_runs_and_is_written(tmp_path: Path, builtin_checkpoint: Path) -> None:
    app = _ctx(tmp_path, builtin_checkpoint, with_weights=True)
    try:
        processed = app.generate(_p(override_settings={"face_restoration_model": "GFPGAN"}))
    finally:
        app.stop()
    assert "Face restoration: GFPGAN," in processed.infotexts[0]
    assert processed.images[0].size == (64, 64)
    assert '"face_restoration_model": "GFPGAN"' in processed.js()


def test_missing_weights_give_a_clear_error(tmp_path: Path, builtin_checkpoint: Path) -> None:
    app = _ctx(tmp_path, builtin_checkpoint, with_weights=False)
    try:
        with pytest.raises(ModelNotFound) as e:
            app.generate(_p())
    finally:
        app.stop()
    assert "Codeformer" in str(e.value)
