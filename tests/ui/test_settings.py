"""Settings in a real browser: Apply persists to config.json and survives a restart; the checkpoint dropdown."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from backend.models import builtin
from tests.ui.browser import check, choose, number_value, open_tab, set_number, text_value, wait_for_text
from tests.ui.conftest import serve_ui

OTHER_MODEL = "other-model.safetensors"


@pytest.fixture
def extra_ckpt_dir(tmp_path: Path, models_dir: Path) -> Path:
    """A --ckpt-dir with a second checkpoint (the built-in one under another name)."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(models_dir / builtin.CHECKPOINT_SUBDIR / builtin.DEFAULT_MODEL_FILENAME, folder / OTHER_MODEL)
    return folder


def test_settings_persist_after_restart(tmp_path: Path, models_dir: Path, extra_ckpt_dir: Path, open_page: Any,
                                        screenshot_dir: Path) -> None:
    data_dir = tmp_path / "data"
    args = ("--ckpt-dir", str(extra_ckpt_dir))
    with serve_ui(data_dir, models_dir, *args) as server:
        page = open_page(server)
        open_tab(page, "Settings")
        set_number(page, "setting_jpeg_quality", 91)
        check(page, "setting_save_txt")
        page.click("#settings_submit")
        result = wait_for_text(page, "settings_result", "settings changed")
        assert "2 settings changed: save_txt, jpeg_quality." in result
        page.screenshot(path=str(screenshot_dir / "settings.png"), full_page=True)

        choose(page, "setting_sd_model_checkpoint", server.ctx.registry.find(OTHER_MODEL).title)
        page.wait_for_function("() => !document.querySelector('#setting_sd_model_checkpoint input').disabled")
        wait_until(lambda: str(server.ctx.options["sd_model_checkpoint"]).startswith(OTHER_MODEL))
        assert server.ctx.models.current.title.startswith(OTHER_MODEL)
        page.wait_for_function("document.querySelector('#setting_sd_model_checkpoint input').value"
                               f".startsWith('{OTHER_MODEL} [')")
        page.close()  # a page left open keeps the server's shutdown waiting for its connections

    saved = json.loads((data_dir / "config.json").read_text())
    assert saved["jpeg_quality"] == 91 and saved["save_txt"] is True
    assert saved["sd_model_checkpoint"].startswith(OTHER_MODEL)

    with serve_ui(data_dir, models_dir, *args) as server:
        page = open_page(server)
        assert text_value(page, "setting_sd_model_checkpoint").startswith(OTHER_MODEL)
        open_tab(page, "Settings")
        assert number_value(page, "setting_jpeg_quality") == 91
        assert page.locator("#setting_save_txt input[type=checkbox]").is_checked()
        page.close()


def wait_until(predicate: Any, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(0.05)


def test_shown_and_stored_values() -> None:
    from ui.settings import shown_value, stored_value

    assert shown_value("upscaler_for_img2img", None) == "None"
    assert stored_value("upscaler_for_img2img", "None") is None
    assert stored_value("upscaler_for_img2img", "Lanczos") == "Lanczos"
    assert stored_value("jpeg_quality", 91.0) == 91
    assert stored_value("save_txt", True) is True
    from backend.errors import InvalidRequest

    with pytest.raises(InvalidRequest, match="n_rows"):
        stored_value("n_rows", 2.5)
