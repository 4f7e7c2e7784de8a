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


def test_ui_defaults_walk_apply_and_keep(tmp_path: Path) -> None:
    import gradio as gr

    from ui.common import not_a_default
    from ui.settings import UiDefaults

    path = tmp_path / "ui-config.json"
    path.write_text(json.dumps({"t/Steps/value": 30, "t/Steps/maximum": 200, "t/Mode/value": "gone",
                                "t/Names/value": ["b"]}))
    defaults = UiDefaults(path)
    with gr.Blocks(), gr.Tab("t") as tab:
        steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
        with gr.Accordion("more"):
            mode = gr.Radio(["a", "b"], value="a", label="Mode")
            names = gr.Dropdown(["a", "b"], value=[], multiselect=True, label="Names")
            gr.Textbox(label="Prompt")
            gr.Slider(0, 1, label="Steps")  # a duplicate label: the first control keeps the key
            not_a_default(gr.Textbox(label="Hidden"))
    defaults.add_tab("t", tab)
    assert (steps.value, steps.maximum, mode.value, names.value) == (30, 200, "a", ["b"])  # "gone" is no choice
    assert list(defaults.components) == ["t/Steps", "t/Mode", "t/Names", "t/Prompt"]
    defaults.save()
    saved = json.loads(path.read_text())
    assert saved["t/Prompt/value"] == "" and saved["t/Steps/step"] == 1 and "t/Hidden/value" not in saved
    # The browser's values: None for a control not drawn yet counts as unchanged.
    assert defaults.changes([31, "gone", ["b"], None]) == [("t/Steps/value", 30, 31)]
    assert defaults.apply([31, "b", ["b"], None]) == 2
    assert json.loads(path.read_text())["t/Mode/value"] == "b"


def test_ui_defaults_leave_an_unreadable_file_alone(tmp_path: Path) -> None:
    from ui.settings import UiDefaults

    path = tmp_path / "ui-config.json"
    path.write_text("{ not json")
    UiDefaults(path).save()
    assert path.read_text() == "{ not json"
