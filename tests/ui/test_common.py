"""Shared UI pieces: the token counter, seed reuse, gallery entries, readable errors."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import pytest
from PIL import Image

from backend.config import Options
from backend.errors import InvalidRequest
from backend.prompts.embeddings import EmbeddingDatabase
from ui import common


@pytest.fixture(scope="module")
def counter() -> common.TokenCounter:
    return common.TokenCounter(SimpleNamespace(options=Options(), embeddings=EmbeddingDatabase()))  # type: ignore[arg-type]


def test_token_counter_counts_like_a1111(counter: common.TokenCounter) -> None:
    assert counter.count("", 20) == 0
    assert counter.count("a photograph of an astronaut riding a horse", 20) == 8
    # Weights and extra-network tags are not tokens; comments are stripped.
    assert counter.count("(a photograph:1.2) <lora:x:1> of an astronaut riding a horse # note", 20) == 8
    # Prompt editing counts the longest variant.
    assert counter.count("a [dog:cat riding a horse:5]", 20) == 5
    long = ", ".join(["word"] * 60)  # 119 tokens: two chunks
    assert counter.count(long, 20) > 75
    assert "/150" in counter.html(long, 20) and "token-counter-over" in counter.html(long, 20)
    assert counter.html("a cat", 20) == "<span class='token-counter'>2/75</span>"


def test_reuse_seed_picks_the_shown_image_and_skips_the_grid() -> None:
    info = {"all_seeds": [10, 11, 12], "all_subseeds": [5, 6, 7], "index_of_first_image": 1}
    assert common.reuse_seed(info, 0, subseed=False) == 10  # the grid: first image's seed
    assert common.reuse_seed(info, 2, subseed=False) == 11
    assert common.reuse_seed(info, 3, subseed=True) == 7
    assert common.reuse_seed({}, 0, subseed=False) == gr.skip()


def test_gallery_image_and_infotext(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(path)
    assert common.gallery_image([(str(path), None)], 5).size == (8, 8)
    assert common.gallery_image([], 0) is None
    assert common.selected_infotext({"infotexts": ["one", "two"]}, 1) == "two"
    assert common.selected_infotext({}, 0) == ""
    assert common.infotext_html("a <b>\nSteps: 1") == "<div class='infotext-body'>a &lt;b&gt;<br>Steps: 1</div>"


def test_backend_errors_become_readable_gr_errors() -> None:
    with pytest.raises(gr.Error, match="width: must be a multiple of 8"), common.shown_as_gr_error():
        raise InvalidRequest("width", "must be a multiple of 8")
    with pytest.raises(gr.Error, match="RuntimeError: boom"), common.shown_as_gr_error():
        raise RuntimeError("boom")
