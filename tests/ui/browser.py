"""Helpers that drive Gradio components by their elem_id (the inner input/textarea, as stack.md advises)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

TIMEOUT_MS = 60_000


def type_text(page: Any, elem_id: str, text: str) -> None:
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(text)
    box.blur()


def type_text_settled(page: Any, elem_id: str, text: str, timeout_s: float = 10.0) -> None:
    """Type into a box whose value an earlier event (e.g. a dropdown change) may still overwrite:
    type again until the text stays for half a second."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    for _ in range(int(timeout_s * 2)):
        type_text(page, elem_id, text)
        page.wait_for_timeout(500)
        if box.input_value() == text:
            return
    raise AssertionError(f"#{elem_id} did not keep {text!r}")


def set_number(page: Any, elem_id: str, value: float) -> None:
    """A slider's or number box's value, committed with Enter like a user would."""
    box = page.locator(f"#{elem_id} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")
    box.blur()


def number_value(page: Any, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").first.input_value())


def text_value(page: Any, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def choose(page: Any, elem_id: str, option: str) -> None:
    """Pick an option of a dropdown."""
    page.locator(f"#{elem_id} input").first.click()
    page.locator(f'#{elem_id} li[role=option][aria-label="{option}"]').first.click()


def check(page: Any, elem_id: str, on: bool = True) -> None:
    box = page.locator(f"#{elem_id} input[type=checkbox]").first
    if box.is_checked() != on:
        box.click()


def open_tab(page: Any, label: str) -> None:
    page.get_by_role("tab", name=label, exact=True).first.click()


def upload(page: Any, elem_id: str, path: Path) -> None:
    page.locator(f"#{elem_id} input[type=file]").first.set_input_files(str(path))


def wait_for_text(page: Any, elem_id: str, text: str, timeout: int = TIMEOUT_MS) -> str:
    page.wait_for_function(
        "([id, text]) => { const el = document.getElementById(id); return el && el.innerText.includes(text); }",
        arg=[elem_id, text], timeout=timeout)
    return page.inner_text(f"#{elem_id}")


def gallery_image_count(page: Any, elem_id: str) -> int:
    return page.locator(f"#{elem_id} img").count()


def tiny_generation(page: Any, tab: str, prompt: str, *, steps: int = 3, size: int = 64) -> None:
    """Fill in a small, fast generation on a generation tab."""
    type_text(page, f"{tab}_prompt", prompt)
    set_number(page, f"{tab}_steps", steps)
    set_number(page, f"{tab}_width", size)
    set_number(page, f"{tab}_height", size)


def write_png(path: Path, size: tuple[int, int] = (64, 64), color: tuple[int, int, int] = (200, 120, 40),
              info: str | None = None) -> Path:
    from PIL.PngImagePlugin import PngInfo

    meta = PngInfo()
    if info is not None:
        meta.add_text("parameters", info)
    Image.new("RGB", size, color).save(path, pnginfo=meta)
    return path


def generate(page: Any, tab: str, timeout: int = TIMEOUT_MS) -> str:
    """Click Generate and wait for the new result; returns its infotext.

    A new result is told by the saved file's name under the gallery (its number goes up with every
    image), since a pasted seed can make two results' infotexts alike.
    """
    script = f"document.querySelector('#html_log_{tab} .saved')?.innerText ?? ''"
    before = page.evaluate(script)
    page.click(f"#{tab}_generate")
    page.wait_for_function(f"(before) => {{ const t = {script}; return t !== '' && t !== before; }}", arg=before,
                           timeout=timeout)
    return page.inner_text(f"#html_info_{tab} .infotext-body")
