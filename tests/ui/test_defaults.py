"""UI defaults in a real browser: Settings > Defaults writes ui-config.json, and a restart shows the new default."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.ui.browser import number_value, open_tab, set_number, wait_for_text
from tests.ui.conftest import serve_ui


def test_changed_default_survives_a_restart(tmp_path: Path, models_dir: Path, open_page: Any,
                                            screenshot_dir: Path) -> None:
    data_dir = tmp_path / "data"
    with serve_ui(data_dir, models_dir) as server:
        # Every control's default is written at start, under A1111's keys.
        saved = json.loads((data_dir / "ui-config.json").read_text())
        assert saved["txt2img/Sampling steps/value"] == 20 and saved["txt2img/Sampling steps/maximum"] == 150
        assert saved["img2img/Denoising strength/value"] == 0.75
        page = open_page(server)
        set_number(page, "txt2img_steps", 37)
        open_tab(page, "Settings")
        page.get_by_text("Defaults", exact=True).first.click()
        page.click("#ui_defaults_view")
        review = wait_for_text(page, "ui_defaults_review", "txt2img/Sampling steps/value")
        assert "20" in review and "37" in review and "txt2img/Width/value" not in review
        page.screenshot(path=str(screenshot_dir / "settings-defaults.png"), full_page=True)
        page.click("#ui_defaults_apply")
        wait_for_text(page, "ui_defaults_review", "Wrote 1 change.")
        page.close()

    saved = json.loads((data_dir / "ui-config.json").read_text())
    assert saved["txt2img/Sampling steps/value"] == 37
    # A range edited by hand applies too (A1111 keeps minimum/maximum/step for sliders).
    saved["img2img/Sampling steps/maximum"] = 300
    (data_dir / "ui-config.json").write_text(json.dumps(saved))

    with serve_ui(data_dir, models_dir) as server:
        page = open_page(server)
        assert number_value(page, "txt2img_steps") == 37
        open_tab(page, "img2img")
        assert page.locator("#img2img_steps input[type=range]").first.get_attribute("max") == "300"
        page.close()
