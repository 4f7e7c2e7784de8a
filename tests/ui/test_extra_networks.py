"""The Lora page in a real browser: cards, click to add and remove, search/sort/folders, metadata, editor."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.backend.networks.network_files import kohya_metadata, random, save_network
from tests.ui.browser import choose, open_tab, text_value, tiny_generation, type_text, wait_for_text
from tests.ui.conftest import UIServer, serve_ui

CARDS = "#txt2img_lora_cards_html"


def _network(path: Path, metadata: dict[str, str] | None = None) -> None:
    save_network(path, {"lora_unet_conv_in.lora_down.weight": random(2, 32, seed=1)}, metadata)


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lora = tmp_path_factory.mktemp("ui-lora")
    _network(lora / "detail.safetensors", kohya_metadata(
        ss_output_name="detail_tweaker", ss_base_model_version="sd_v1", ss_sd_model_name="v1-5-pruned.ckpt",
        ss_resolution="(512, 512)", ss_clip_skip="2", ss_num_train_images="120", ss_network_dim="16",
        ss_network_alpha="8", ss_training_started_at="1700000000", ss_tag_frequency={"d": {"1girl": 40, "smile": 12}}))
    Image.new("RGB", (96, 128), (214, 120, 40)).save(lora / "detail.png")
    _network(lora / "characters" / "hero.safetensors", kohya_metadata(ss_base_model_version="sdxl_base_v1-0"))
    (lora / "characters" / "hero.json").write_text(json.dumps(
        {"activation text": "hero, red cape", "preferred weight": 0.7, "negative text": "blurry"}))
    Image.new("RGB", (96, 128), (40, 110, 200)).save(lora / "characters" / "hero.preview.jpg")
    _network(lora / "styles" / "ink.safetensors")
    (lora / "styles" / "ink.txt").write_text("Black ink drawing style, bold lines and splashes")
    _network(lora / "styles" / "plain.safetensors")
    return lora


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, lora_dir: Path) -> Iterator[UIServer]:
    with serve_ui(tmp_path_factory.mktemp("ui-lora-data"), models_dir, "--lora-dir", str(lora_dir)) as live:
        yield live


def _open_lora(page: Any, tab: str = "txt2img") -> None:
    page.locator(f"#{tab}_lora_tab-button, #{tab}_extra_tabs button[role=tab]:has-text('Lora')").first.click()
    page.wait_for_selector(f"#{tab}_lora_cards_html .lora-card", timeout=30_000)


def _card(page: Any, name: str, tab: str = "txt2img") -> Any:
    return page.locator(f"#{tab}_lora_cards_html .lora-card[data-name='{name}']")


def _visible_names(page: Any) -> list[str]:
    return page.eval_on_selector_all(f"{CARDS} .lora-card:not([hidden])", "cards => cards.map(c => c.dataset.name)")


def test_cards_click_to_add_and_remove(lora_server: UIServer, open_page: Any, screenshot_dir: Path) -> None:
    page = open_page(lora_server)
    _open_lora(page)
    assert sorted(_visible_names(page)) == ["detail", "hero", "ink", "plain"]
    badges = {name: _card(page, name).locator(".lora-family").text_content() for name in ("detail", "hero", "ink")}
    assert badges == {"detail": "SD 1.x", "hero": "SDXL", "ink": "Unknown"}
    assert "bold lines" in _card(page, "ink").text_content()
    # Previews come through the thumbnail route, lazily, and load.
    image = _card(page, "detail").locator("img")
    assert image.get_attribute("loading") == "lazy" and "sd_extra_networks/thumb?filename=" in image.get_attribute("src")
    page.wait_for_function("img => img.complete && img.naturalWidth === 96", arg=image.element_handle())
    page.screenshot(path=str(screenshot_dir / "lora.png"), full_page=True)

    _card(page, "detail").click()
    assert text_value(page, "txt2img_prompt") == "<lora:detail_tweaker:1>"
    _card(page, "detail").click()
    assert text_value(page, "txt2img_prompt") == ""

    type_text(page, "txt2img_prompt", "a castle")
    type_text(page, "txt2img_neg_prompt", "lowres")
    _card(page, "hero").click()
    assert text_value(page, "txt2img_prompt") == "a castle <lora:hero:0.7> hero, red cape"
    assert text_value(page, "txt2img_neg_prompt") == "lowres (blurry:1)"
    # Gradio took the new value: the counter counts the activation text (tags are not tokens).
    wait_for_text(page, "txt2img_token_counter", "6/75")
    _card(page, "hero").click()
    assert text_value(page, "txt2img_prompt") == "a castle"
    assert text_value(page, "txt2img_neg_prompt") == "lowres"
    wait_for_text(page, "txt2img_token_counter", "2/75")


def test_search_sort_and_folders(lora_server: UIServer, open_page: Any) -> None:
    page = open_page(lora_server)
    _open_lora(page)
    assert _visible_names(page) == ["hero", "detail", "ink", "plain"]  # by path: characters/, detail, styles/
    type_text(page, "txt2img_lora_extra_search", "STYLES/")
    page.wait_for_function(f"document.querySelectorAll('{CARDS} .lora-card:not([hidden])').length === 2")
    assert _visible_names(page) == ["ink", "plain"]
    assert "2 of 4 networks" in page.inner_text(f"{CARDS} .lora-status")
    type_text(page, "txt2img_lora_extra_search", "tweaker")  # the alias
    page.wait_for_function(f"document.querySelectorAll('{CARDS} .lora-card:not([hidden])').length === 1")
    assert _visible_names(page) == ["detail"]
    type_text(page, "txt2img_lora_extra_search", "")
    choose(page, "txt2img_lora_extra_sort", "Name")
    choose(page, "txt2img_lora_extra_sortorder", "Descending")
    page.wait_for_function(f"document.querySelector('{CARDS} .lora-card').dataset.name === 'plain'")
    assert _visible_names(page) == ["plain", "ink", "hero", "detail"]
    page.locator(f"{CARDS} .lora-dir[data-folder$='/characters']").click()
    assert _visible_names(page) == ["hero"]
    page.locator(f"{CARDS} .lora-dir[data-folder='']").click()
    assert len(_visible_names(page)) == 4


def test_metadata_view_and_user_metadata_save(lora_server: UIServer, open_page: Any, lora_dir: Path,
                                              screenshot_dir: Path) -> None:
    page = open_page(lora_server)
    _open_lora(page)
    _card(page, "detail").locator(".lora-edit").click()
    training = wait_for_text(page, "txt2img_lora_training", "Clip skip")
    for text in ("v1-5-pruned.ckpt", "512x512", "120", "16 / 8", "2023-11-14", "1girl 40", "smile 12"):
        assert text in training, text
    assert "detail.safetensors" in page.inner_text("#txt2img_lora_editor_heading")
    page.screenshot(path=str(screenshot_dir / "lora-editor.png"), full_page=True)

    type_text(page, "txt2img_lora_description", "Adds fine detail")
    type_text(page, "txt2img_lora_activation_text", "intricate")
    type_text(page, "txt2img_lora_notes", "works best at 0.6")
    choose(page, "txt2img_lora_sd_version", "SD1")
    page.click("#txt2img_lora_save")
    wait_for_text(page, "txt2img_lora_message", "detail.json")
    saved = json.loads((lora_dir / "detail.json").read_text())
    assert saved == {"description": "Adds fine detail", "sd version": "SD1", "activation text": "intricate",
                     "preferred weight": 0.0, "negative text": "", "notes": "works best at 0.6"}
    # The card is fetched again and shows the new data; a click inserts the new activation text.
    # (textContent: cards off screen are not rendered, content-visibility: auto)
    page.wait_for_function(f"document.querySelector(\"{CARDS} .lora-card[data-name='detail'] .lora-desc\")"
                           "?.textContent === 'Adds fine detail'")
    type_text(page, "txt2img_prompt", "")
    _card(page, "detail").click()
    assert text_value(page, "txt2img_prompt") == "<lora:detail_tweaker:1> intricate"
    page.click("#txt2img_lora_editor_close")
    page.wait_for_selector("#txt2img_lora_editor", state="hidden")


def test_replace_preview_uses_the_selected_picture(lora_server: UIServer, open_page: Any, lora_dir: Path) -> None:
    page = open_page(lora_server)
    tiny_generation(page, "txt2img", "a red square")
    page.click("#txt2img_generate")
    wait_for_text(page, "html_info_txt2img", "Steps: 3")
    _open_lora(page)
    assert _card(page, "plain").locator("img").count() == 0
    _card(page, "plain").locator(".lora-edit").click()
    page.wait_for_selector("#txt2img_lora_editor", state="visible")
    page.click("#txt2img_lora_replace_preview")
    wait_for_text(page, "txt2img_lora_message", "plain.png")
    with Image.open(lora_dir / "styles" / "plain.png") as preview:
        assert preview.size == (64, 64)
    page.wait_for_function("img => img && img.complete && img.naturalWidth === 64",
                           arg=_card(page, "plain").locator("img").element_handle(timeout=30_000))


def test_img2img_has_its_own_lora_page(lora_server: UIServer, open_page: Any) -> None:
    page = open_page(lora_server)
    open_tab(page, "img2img")
    _open_lora(page, "img2img")
    _card(page, "hero", "img2img").click()
    assert text_value(page, "img2img_prompt") == "<lora:hero:0.7> hero, red cape"
    assert text_value(page, "img2img_neg_prompt") == "(blurry:1)"
    assert text_value(page, "txt2img_prompt") == ""


def test_refresh_finds_new_and_removed_files(lora_server: UIServer, open_page: Any, lora_dir: Path) -> None:
    page = open_page(lora_server)
    _open_lora(page)
    _network(lora_dir / "styles" / "late.safetensors")
    try:
        page.click("#txt2img_lora_extra_refresh")
        _card(page, "late").wait_for(timeout=30_000)
        assert "5 networks" in page.inner_text(f"{CARDS} .lora-status")
    finally:
        (lora_dir / "styles" / "late.safetensors").unlink()
    page.click("#txt2img_lora_extra_refresh")
    _card(page, "late").wait_for(state="detached", timeout=30_000)
