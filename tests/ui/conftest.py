"""Real UI servers (webui.py's own prepare/build_app/make_server in a thread, the built-in model on the
CPU, a data dir in tmp) and Debian's Chromium driven by Playwright."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.live_server import running_server

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update"]
VIEWPORT = {"width": 1400, "height": 1000}


@dataclass
class UIServer:
    """A running server with the UI on /: its URL, context and data dir."""

    url: str
    ctx: Any
    data_dir: Path


@contextmanager
def serve_ui(data_dir: Path, models_dir: Path, *args: str) -> Iterator[UIServer]:
    """Start webui's app (UI mounted) on a free port in a thread; stop it and its job queue on exit."""
    with running_server(list(args), data_dir, models_dir) as (url, ctx, _):
        yield UIServer(url, ctx, data_dir)


@pytest.fixture(scope="session")
def ui_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[UIServer]:
    """The server most UI tests share. Tests leave it idle and put back options they change."""
    with serve_ui(tmp_path_factory.mktemp("ui-data"), models_dir) as live:
        yield live


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tab screenshots go: $UI_SCREENSHOT_DIR if set, else a session temp folder."""
    chosen = os.environ.get("UI_SCREENSHOT_DIR")
    path = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    """open_page(server) -> a loaded page; afterwards, asserts the page requested nothing off this machine."""
    pages: list[tuple[Any, list[str]]] = []

    def open_(server: UIServer) -> Any:
        page = browser.new_page(viewport=VIEWPORT)
        outside: list[str] = []
        page.on("request", lambda r: outside.append(r.url) if not _is_local(r.url) else None)
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ui-loaded=true]", timeout=30_000)
        pages.append((page, outside))
        return page

    yield open_
    for page, outside in pages:
        page.close()
        assert outside == [], f"the page requested outside resources: {outside}"


def _is_local(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:"))


def pytest_configure(config: pytest.Config) -> None:
    # Gradio's local queue statistics (not analytics: nothing is sent) use pandas options pandas 3 deprecates.
    config.addinivalue_line("filterwarnings", "ignore:.*(no_silent_downcasting|The copy keyword is deprecated)")
