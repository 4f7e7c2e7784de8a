"""Prompt styles over the API: GET /prompt-styles, `styles` in a request, styles read back from `infotext`."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from tests.api.conftest import TINY, LiveServer


def test_styles_file_listed_applied_and_read_back(start_server: Callable[..., LiveServer], tmp_path: Path) -> None:
    (tmp_path / "mine.csv").write_text('name,prompt,negative_prompt\n"Photo","photo of {prompt}, 35mm","blurry"\n'
                                       "HQ,best quality,\n", encoding="utf-8-sig")
    live = start_server("--nowebui", "--styles-file", str(tmp_path / "*.csv"))
    with live.client() as c:
        assert c.get("/prompt-styles").json() == [
            {"name": "Photo", "prompt": "photo of {prompt}, 35mm", "negative_prompt": "blurry"},
            {"name": "HQ", "prompt": "best quality", "negative_prompt": ""},
        ]
        body = c.post("/txt2img", json={**TINY, "prompt": "a fox", "negative_prompt": "ugly",
                                        "styles": ["Photo", "HQ", "No such style"]}).json()
        info = json.loads(body["info"])
        # The styled prompt is what was generated and what the infotext says (A1111); unknown names are ignored.
        assert info["prompt"] == "photo of a fox, 35mm, best quality" and info["styles"] == ["Photo", "HQ",
                                                                                            "No such style"]
        assert info["infotexts"][0].startswith("photo of a fox, 35mm, best quality\nNegative prompt: ugly, blurry\n")
        assert body["parameters"]["prompt"] == "a fox"

        # An infotext with styles in it gives the styles back and the prompts without them ("Apply if any").
        again = c.post("/txt2img", json={"infotext": info["infotexts"][0]}).json()
        assert again["parameters"]["styles"] == ["Photo", "HQ"] and again["parameters"]["prompt"] == "a fox"
        assert json.loads(again["info"])["prompt"] == "photo of a fox, 35mm, best quality"
