"""txt2img in a real browser: generate, see the image and its infotext, the file on disk; hires fix."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from tests.ui.browser import check, gallery_image_count, set_number, tiny_generation, wait_for_text
from tests.ui.conftest import UIServer


def test_generate_shows_image_infotext_and_saves_the_file(ui_server: UIServer, open_page: Any,
                                                          screenshot_dir: Path) -> None:
    page = open_page(ui_server)
    tiny_generation(page, "txt2img", "a cozy (cabin:1.2) in the woods")
    set_number(page, "txt2img_seed", 1234)
    wait_for_text(page, "txt2img_token_counter", "6/75")
    page.click("#txt2img_generate")

    info = wait_for_text(page, "html_info_txt2img", "Seed: 1234")
    assert "a cozy (cabin:1.2) in the woods" in info
    assert "Steps: 3" in info and "Size: 64x64" in info
    assert gallery_image_count(page, "txt2img_gallery") >= 1
    saved = wait_for_text(page, "html_log_txt2img", "Saved:")
    relative = saved.split("Saved:")[1].strip()
    image_path = ui_server.data_dir / relative
    with Image.open(image_path) as image:
        assert image.size == (64, 64) and "Seed: 1234" in image.info["parameters"]
    # The Generate button is back once the job is done.
    page.wait_for_selector("#txt2img_generate", state="visible")
    # Save copies the picture, with its parameters, to log/images and offers it for download.
    page.click("#save_txt2img")
    wait_for_text(page, "html_log_txt2img", "log/images/")
    (copy,) = (ui_server.data_dir / "log" / "images").glob("*.png")
    with Image.open(copy) as image:
        assert "Seed: 1234" in image.info["parameters"]
    page.wait_for_selector("#download_files_txt2img", state="visible")
    page.screenshot(path=str(screenshot_dir / "txt2img.png"), full_page=True)


def test_hires_fix_doubles_the_size(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    tiny_generation(page, "txt2img", "a lighthouse")
    page.get_by_text("Hires. fix", exact=True).first.click()
    check(page, "txt2img_enable_hr")
    set_number(page, "txt2img_hires_steps", 2)
    set_number(page, "txt2img_hr_scale", 2)
    page.click("#txt2img_generate")

    info = wait_for_text(page, "html_info_txt2img", "Hires upscale: 2")
    assert "Size: 64x64" in info and "Hires steps: 2" in info and "Denoising strength: 0.7" in info
    saved = wait_for_text(page, "html_log_txt2img", "Saved:").split("Saved:")[1].strip()
    with Image.open(ui_server.data_dir / saved) as image:
        assert image.size == (128, 128)


def test_bad_input_shows_the_message_and_the_page_keeps_working(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    tiny_generation(page, "txt2img", "an error")
    # The slider lets a user type a width the backend refuses.
    set_number(page, "txt2img_width", 68)
    page.click("#txt2img_generate")
    page.get_by_text("must be a multiple of 8, got 68").first.wait_for(timeout=30_000)
    set_number(page, "txt2img_width", 64)
    page.click("#txt2img_generate")
    wait_for_text(page, "html_info_txt2img", "Size: 64x64")


def test_upscale_runs_the_hires_pass_on_the_shown_image(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    tiny_generation(page, "txt2img", "a harbour")
    set_number(page, "txt2img_seed", 77)
    page.click("#txt2img_generate")
    wait_for_text(page, "html_info_txt2img", "Seed: 77")
    set_number(page, "txt2img_seed", -1)  # Upscale keeps the picture's own seed, not the box's
    page.get_by_text("Hires. fix", exact=True).first.click()
    set_number(page, "txt2img_hires_steps", 2)
    page.click("#txt2img_upscale")

    info = wait_for_text(page, "html_info_txt2img", "Hires upscale: 2")
    assert "Seed: 77" in info and "Size: 64x64" in info
    saved = wait_for_text(page, "html_log_txt2img", "Saved:").split("Saved:")[1].strip()
    with Image.open(ui_server.data_dir / saved) as image:
        assert image.size == (128, 128)
