"""Pasting an infotext in a real browser: settings it names show under "Override settings" and apply."""
from __future__ import annotations

from typing import Any

from tests.ui.browser import generate, text_value, type_text
from tests.ui.conftest import UIServer

INFOTEXT = ("a quiet harbour\nNegative prompt: fog\n"
            "Steps: 2, Sampler: Euler a, CFG scale: 6, Seed: 321, Size: 64x64, Clip skip: 2, ENSD: 31337")


def test_pasted_settings_become_override_settings(ui_server: UIServer, open_page: Any) -> None:
    page = open_page(ui_server)
    type_text(page, "txt2img_prompt", INFOTEXT)
    page.click("#txt2img_paste")  # ↙ reads the infotext typed in the prompt box
    page.wait_for_function("document.querySelector('#txt2img_prompt textarea').value === 'a quiet harbour'")
    overrides = page.locator("#txt2img_override_settings")
    overrides.wait_for(state="visible")
    assert "Clip skip: 2" in overrides.inner_text() and "ENSD: 31337" in overrides.inner_text()
    assert text_value(page, "txt2img_neg_prompt") == "fog"

    info = generate(page, "txt2img")
    assert "Seed: 321" in info and "Clip skip: 2" in info and "ENSD: 31337" in info
    # The overrides were for that generation only: the options are as they were.
    assert ui_server.ctx.options["CLIP_stop_at_last_layers"] == 1
    assert ui_server.ctx.options["eta_noise_seed_delta"] == 0
