"""img2img in a real browser: from an uploaded image, and Inpaint upload with a mask."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from tests.ui.browser import (
    generate,
    open_tab,
    set_number,
    tiny_generation,
    type_text,
    upload,
    wait_for_text,
    write_png,
)
from tests.ui.conftest import UIServer


def test_img2img_from_an_uploaded_image(ui_server: UIServer, open_page: Any, tmp_path: Path,
                                        screenshot_dir: Path) -> None:
    page = open_page(ui_server)
    open_tab(page, "img2img")
    upload(page, "img2img_image", write_png(tmp_path / "init.png", (96, 64)))
    tiny_generation(page, "img2img", "a red barn")
    set_number(page, "img2img_denoising_strength", 0.5)
    page.click("#img2img_generate")

    info = wait_for_text(page, "html_info_img2img", "Denoising strength: 0.5")
    assert "a red barn" in info and "Size: 64x64" in info
    saved = wait_for_text(page, "html_log_img2img", "Saved:").split("Saved:")[1].strip()
    assert saved.startswith("outputs/img2img-images/")
    with Image.open(ui_server.data_dir / saved) as image:
        assert image.size == (64, 64)
    page.screenshot(path=str(screenshot_dir / "img2img.png"), full_page=True)


def test_inpaint_upload_with_a_mask(ui_server: UIServer, open_page: Any, tmp_path: Path) -> None:
    page = open_page(ui_server)
    open_tab(page, "img2img")
    open_tab(page, "Inpaint upload")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(tmp_path / "mask.png")
    upload(page, "img_inpaint_base", write_png(tmp_path / "base.png"))
    upload(page, "img_inpaint_mask", tmp_path / "mask.png")
    page.wait_for_selector("#img2img_mask_blur", state="visible")
    set_number(page, "img2img_mask_blur", 2)
    tiny_generation(page, "img2img", "a window")
    page.click("#img2img_generate")

    info = wait_for_text(page, "html_info_img2img", "Mask blur: 2")
    assert "a window" in info and "Denoising strength: 0.75" in info
    page.screenshot(path=str(tmp_path / "inpaint.png"), full_page=True)


def test_sketch_mask_is_white_where_painted() -> None:
    from ui.img2img import sketch_mask

    background = Image.new("RGBA", (32, 32), (10, 20, 30, 255))
    strokes = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    strokes.paste((255, 255, 255, 128), (4, 4, 12, 12))
    image, mask = sketch_mask({"background": background, "layers": [strokes], "composite": background})
    assert image is background and mask is not None and mask.mode == "L"
    assert mask.getpixel((8, 8)) == 255 and mask.getpixel((20, 20)) == 0
    assert sketch_mask(None) == (None, None)


def test_send_to_inpaint_and_paint_the_mask(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    tiny_generation(page, "txt2img", "a house")
    page.click("#txt2img_generate")
    wait_for_text(page, "html_info_txt2img", "Steps: 3")
    page.click("#txt2img_send_to_inpaint")
    page.wait_for_selector("#img2maskimg canvas", state="visible")
    assert page.locator("#img2img_prompt textarea").input_value() == "a house"  # the parameters came along
    page.get_by_text("Only masked", exact=True).first.click()

    # Unpainted, "Only masked" has nothing to work on and says so.
    generate(page, "img2img")
    assert "mask is blank" in page.inner_text("#html_log_img2img")

    canvas = page.locator("#img2maskimg canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 30, y)
    page.mouse.down()
    page.mouse.move(x + 30, y, steps=8)
    page.mouse.up()
    info = generate(page, "img2img")
    assert "Inpaint area: Only masked" in info
    assert "mask is blank" not in page.inner_text("#html_log_img2img")


def test_sketch_draws_on_the_init_image(ui_server: UIServer, open_page: Any, tmp_path: Path,
                                        screenshot_dir: Path) -> None:
    page = open_page(ui_server)
    open_tab(page, "img2img")
    for label, name in (("Inpaint", "inpaint"), ("Inpaint upload", "inpaint-upload"), ("Batch", "batch")):
        open_tab(page, label)
        page.screenshot(path=str(screenshot_dir / f"img2img-{name}.png"))  # the part that differs per sub-tab
    open_tab(page, "Sketch")
    page.wait_for_selector("#img2img_mask_blur", state="hidden")  # no mask here: no inpaint controls
    upload(page, "img2img_sketch", write_png(tmp_path / "base.png", (64, 64), (40, 40, 160)))
    canvas = page.locator("#img2img_sketch canvas").first
    canvas.wait_for(state="visible")
    box = canvas.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 40, y)
    page.mouse.down()
    page.mouse.move(x + 40, y, steps=3)
    page.mouse.up()
    tiny_generation(page, "img2img", "a sketch of a boat")
    info = generate(page, "img2img")
    assert "a sketch of a boat" in info and "Denoising strength: 0.75" in info and "Mask blur" not in info
    page.screenshot(path=str(screenshot_dir / "img2img-sketch.png"), full_page=True)


def test_sketch_source_is_the_drawn_composite() -> None:
    from types import SimpleNamespace

    from ui.img2img import _source

    drawn = Image.new("RGBA", (16, 16), (255, 255, 255, 255))
    inputs = SimpleNamespace(mode="mode", sketch="sketch")
    tab = SimpleNamespace(inputs=inputs)
    data = {"mode": "sketch", "sketch": {"background": Image.new("RGBA", (16, 16)), "layers": [], "composite": drawn}}
    assert _source(tab, data) == (drawn, None)  # type: ignore[arg-type]


def test_batch_from_a_folder(ui_server: UIServer, open_page: Any, tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    for name, color in (("one.png", (200, 40, 40)), ("two.png", (40, 200, 40))):
        write_png(source / name, (64, 64), color)
    page = open_page(ui_server)
    open_tab(page, "img2img")
    open_tab(page, "Batch")
    type_text(page, "img2img_batch_input_dir", str(source))
    type_text(page, "img2img_batch_output_dir", str(out))
    tiny_generation(page, "img2img", "a batch")
    info = generate(page, "img2img")
    assert "a batch" in info
    page.wait_for_function("document.querySelectorAll('#img2img_gallery img').length >= 2")
    assert len(list(out.glob("*.png"))) == 2  # straight into the output folder, one per input image
