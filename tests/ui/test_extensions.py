"""Scripts and extensions in a real browser: an always-on script's section acts on Generate, a selectable
script (X/Y/Z plot) makes a grid, and the Extensions tab disables an extension and restarts."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from tests.ui.browser import check, choose, open_tab, type_text, type_text_settled, wait_for_text
from tests.ui.conftest import serve_ui

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "example-extension" / "prompt-suffix"


def _generate(page: Any, prompt: str) -> str:
    type_text(page, "txt2img_prompt", prompt)
    page.click("#txt2img_generate")
    return wait_for_text(page, "html_info_txt2img", "Steps:")


def test_always_on_script_section_and_extensions_tab(tmp_path: Path, models_dir: Path, open_page: Any,
                                                     screenshot_dir: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(EXAMPLE, data_dir / "extensions" / "prompt-suffix")
    (data_dir / "config.json").write_text(json.dumps({"samples_save": False}))
    with serve_ui(data_dir, models_dir) as server:
        page = open_page(server)
        for elem, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
            page.locator(f"#{elem} input[type=number]").first.fill(str(value))
            page.locator(f"#{elem} input[type=number]").first.press("Enter")
        page.get_by_text("Prompt suffix", exact=True).first.click()  # open the script's accordion
        check(page, "script_txt2img_prompt_suffix_enabled")
        type_text(page, "script_txt2img_prompt_suffix_suffix", "at night")
        info = _generate(page, "a house")
        assert "a house, at night" in info and "Prompt suffix: at night" in info

        open_tab(page, "Extensions")
        table = wait_for_text(page, "extensions_table", "prompt-suffix")
        assert "user" in table and "built-in" in table
        page.screenshot(path=str(screenshot_dir / "extensions.png"), full_page=True)
        page.locator("#extensions_enabled label", has_text="prompt-suffix").locator("input").uncheck()
        page.click("#extensions_apply")
        deadline = time.monotonic() + 30
        while "prompt-suffix" not in json.loads((data_dir / "config.json").read_text()).get("disabled_extensions", []):
            assert time.monotonic() < deadline, "the choice was not saved"
            time.sleep(0.2)
        page.close()


def test_xyz_plot_from_the_script_dropdown(ui_server: Any, open_page: Any, screenshot_dir: Path) -> None:
    page = open_page(ui_server)
    for elem, value in (("txt2img_steps", 2), ("txt2img_width", 64), ("txt2img_height", 64)):
        page.locator(f"#{elem} input[type=number]").first.fill(str(value))
        page.locator(f"#{elem} input[type=number]").first.press("Enter")
    choose(page, "script_list", "X/Y/Z plot")
    choose(page, "script_txt2img_xyz_plot_x_type", "Steps")
    type_text_settled(page, "script_txt2img_xyz_plot_x_values", "1,2")  # after the axis change's update
    info = _generate(page, "a lighthouse")
    assert "Script: X/Y/Z plot" in info and "X Type: Steps" in info and 'X Values: "1,2"' in info
    page.screenshot(path=str(screenshot_dir / "txt2img-xyz.png"), full_page=True)
    # The grid comes first in the gallery, then nothing else (no lone images by default).
    assert page.locator("#txt2img_gallery img").count() >= 1
