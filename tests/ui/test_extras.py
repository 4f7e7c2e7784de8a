"""Extras in a real browser: upscale an uploaded image with Lanczos."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from tests.ui.browser import choose, open_tab, set_number, upload, wait_for_text, write_png
from tests.ui.conftest import UIServer


def test_upscale_single_image(ui_server: UIServer, open_page: Any, tmp_path: Path, screenshot_dir: Path) -> None:
    page = open_page(ui_server)
    open_tab(page, "Extras")
    upload(page, "extras_image", write_png(tmp_path / "small.png", (40, 32), info="a cat\nSteps: 5, Seed: 7, Size: 40x32"))
    set_number(page, "extras_upscaling_resize", 2)
    choose(page, "extras_upscaler_1", "Lanczos")
    page.click("#extras_generate")

    info = wait_for_text(page, "html_info_extras", "Postprocess upscaler: Lanczos")
    assert "Postprocess upscale by: 2" in info
    saved = wait_for_text(page, "html_log_extras", "Saved:").split("Saved:")[1].strip()
    assert saved.startswith("outputs/extras-images/")
    with Image.open(ui_server.data_dir / saved) as image:
        assert image.size == (80, 64)
        assert image.info["parameters"].startswith("a cat")  # the original parameters are kept
    page.screenshot(path=str(screenshot_dir / "extras.png"), full_page=True)


def test_unknown_batch_directory_is_reported(ui_server: UIServer, open_page: Any, tmp_path: Path) -> None:
    page = open_page(ui_server)
    open_tab(page, "Extras")
    open_tab(page, "Batch from Directory")
    from tests.ui.browser import type_text

    type_text(page, "extras_batch_input_dir", str(tmp_path / "missing"))
    choose(page, "extras_upscaler_1", "Nearest")
    page.click("#extras_generate")
    page.get_by_text("not a directory").first.wait_for(timeout=30_000)
