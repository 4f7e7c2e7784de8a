"""Prompt styles in a real browser: the style editor saves to styles.csv, a chosen style reaches the infotext."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from backend.prompts.styles import read_styles_csv
from tests.ui.browser import choose, generate, open_tab, text_value, tiny_generation, type_text
from tests.ui.conftest import UIServer

STYLE = "Test cinematic"


def test_save_a_style_choose_it_and_generate(ui_server: UIServer, open_page: Any, screenshot_dir: Path) -> None:
    page = open_page(ui_server)
    try:
        tiny_generation(page, "txt2img", "a lighthouse")
        type_text(page, "txt2img_neg_prompt", "blurry")
        # 🖌️ opens the editor; a new name, the prompts copied from the main ones (📝), then edited.
        page.click("#txt2img_styles_edit_button")
        name_box = page.locator("#txt2img_styles_edit_select input").first
        name_box.fill(STYLE)
        name_box.press("Enter")
        page.click("#txt2img_style_copy")
        page.wait_for_function("document.querySelector('#txt2img_edit_style_prompt textarea').value === 'a lighthouse'")
        type_text(page, "txt2img_edit_style_prompt", "cinematic still of {prompt}, film grain")
        type_text(page, "txt2img_edit_style_neg_prompt", "cartoon")
        page.click("#txt2img_edit_style_save")
        page.wait_for_selector("#txt2img_edit_style_delete", state="visible")
        saved = {s.name: s for s in read_styles_csv(ui_server.data_dir / "styles.csv")}
        assert (saved[STYLE].prompt, saved[STYLE].negative_prompt) == ("cinematic still of {prompt}, film grain",
                                                                      "cartoon")
        page.screenshot(path=str(screenshot_dir / "txt2img-style-editor.png"), full_page=True)
        page.click("#txt2img_edit_style_close")

        # The new style is offered in both tabs; chosen in txt2img, it styles what is generated.
        choose(page, "txt2img_styles", STYLE)
        info = generate(page, "txt2img")
        assert info.startswith("cinematic still of a lighthouse, film grain\nNegative prompt: blurry, cartoon")

        # 📋 writes the selected styles into the prompts and clears the selection.
        page.click("#txt2img_style_apply")
        page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value.startsWith('cinematic')")
        assert text_value(page, "txt2img_prompt") == "cinematic still of a lighthouse, film grain"
        assert text_value(page, "txt2img_neg_prompt") == "blurry, cartoon"

        open_tab(page, "img2img")  # saving in one tab refreshed the other tab's list too
        choose(page, "img2img_styles", STYLE)
    finally:
        ui_server.ctx.styles.delete_style(STYLE)
