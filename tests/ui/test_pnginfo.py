"""PNG Info in a real browser: the parameters of a generated PNG, and "Send to txt2img" filling the fields."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.processing import StableDiffusionProcessingTxt2Img
from tests.ui.browser import (
    number_value,
    open_tab,
    text_value,
    upload,
    wait_for_text,
)
from tests.ui.conftest import UIServer


def _generated_png(server: UIServer, folder: Path) -> Path:
    p = StableDiffusionProcessingTxt2Img(prompt="a tiny (robot:1.1)", negative_prompt="blurry", steps=7, width=64,
                                         height=72, seed=4242, sampler_name="Euler a", scheduler="Karras",
                                         cfg_scale=5.5, do_not_save_samples=True, do_not_save_grid=True)
    processed = server.ctx.generate(p)
    path = folder / "generated.png"
    processed.images[0].save(path, pnginfo=_pnginfo(processed.infotexts[0]))
    return path


def _pnginfo(text: str) -> Any:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", text)
    return info


def test_png_info_shows_parameters_and_sends_them_to_txt2img(ui_server: UIServer, open_page: Any, tmp_path: Path,
                                                             screenshot_dir: Path) -> None:
    png = _generated_png(ui_server, tmp_path)
    page = open_page(ui_server)
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", png)
    shown = wait_for_text(page, "pnginfo_html", "Seed: 4242")
    assert "parameters" in shown and "a tiny (robot:1.1)" in shown and "Steps: 7" in shown
    page.screenshot(path=str(screenshot_dir / "pnginfo.png"), full_page=True)

    page.click("#pnginfo_send_to_txt2img")
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.includes('robot')")
    assert text_value(page, "txt2img_prompt") == "a tiny (robot:1.1)"
    assert text_value(page, "txt2img_neg_prompt") == "blurry"
    assert number_value(page, "txt2img_steps") == 7
    assert number_value(page, "txt2img_seed") == 4242
    assert number_value(page, "txt2img_width") == 64 and number_value(page, "txt2img_height") == 72
    assert number_value(page, "txt2img_cfg_scale") == 5.5
    assert text_value(page, "txt2img_sampling") == "Euler a"
    assert text_value(page, "txt2img_scheduler") == "Karras"


def test_image_without_parameters(ui_server: UIServer, open_page: Any, tmp_path: Path) -> None:
    from tests.ui.browser import write_png

    page = open_page(ui_server)
    open_tab(page, "PNG Info")
    upload(page, "pnginfo_image", write_png(tmp_path / "plain.png"))
    wait_for_text(page, "pnginfo_html", "Nothing found")
    page.click("#pnginfo_send_to_txt2img")
    page.get_by_text("No generation parameters in this image").first.wait_for(timeout=30_000)
