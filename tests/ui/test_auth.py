"""--gradio-auth: the login page in a real browser; --share: refused at once with a clear message."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.ui.conftest import serve_ui


def test_login_page_lets_the_right_user_in(tmp_path: Path, models_dir: Path, browser: Any) -> None:
    with serve_ui(tmp_path, models_dir, "--gradio-auth", "alice:s3cret,bob:pw") as server:
        page = browser.new_page()
        try:
            page.goto(server.url + "/")
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill("wrong")
            page.get_by_role("button", name="Login").click()
            page.get_by_text("Incorrect Credentials").wait_for(timeout=30_000)
            page.get_by_label("username").fill("alice")
            page.get_by_label("password").fill("s3cret")
            page.get_by_role("button", name="Login").click()
            page.wait_for_selector("body[data-ui-loaded=true]", timeout=30_000)
            assert page.locator("#txt2img_generate").is_visible()
        finally:
            page.close()


def test_share_is_refused_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    import webui

    started = time.monotonic()
    assert webui.main(["--share"]) == 2
    assert time.monotonic() - started < 10  # no tunnel attempt, no waiting on a network that is not there
    assert "--share: not supported" in capsys.readouterr().err
