"""GET/POST /options (round trip, model switch, unknown keys) and /cmd-flags."""
from __future__ import annotations

import json

import httpx

from backend.config import OPTION_DEFAULTS
from tests.api.conftest import OTHER_MODEL, TINY, LiveServer


def test_get_returns_every_option(client: httpx.Client) -> None:
    options = client.get("/options").json()
    assert set(OPTION_DEFAULTS) <= set(options)
    assert options["sd_model_checkpoint"].startswith("sd-tiny-builtin.safetensors [")
    assert options["samples_format"] == "png" and options["CLIP_stop_at_last_layers"] == 1


def test_full_round_trip_is_accepted_and_changes_nothing(server: LiveServer, client: httpx.Client) -> None:
    before = client.get("/options").json()
    r = client.post("/options", json=before)
    assert r.status_code == 200 and r.json() is None
    assert client.get("/options").json() == before
    assert server.ctx.models.current is not None and server.ctx.models.current.title == before["sd_model_checkpoint"]


def test_change_is_saved_and_unknown_keys_are_kept(server: LiveServer, client: httpx.Client) -> None:
    try:
        r = client.post("/options", json={"jpeg_quality": "90", "my_extension_option": {"a": [1, 2]}})
        assert r.status_code == 200
        options = client.get("/options").json()
        assert options["jpeg_quality"] == 90  # coerced to the option's type
        assert options["my_extension_option"] == {"a": [1, 2]}
        saved = json.loads(server.ctx.settings.config_file.read_text())
        assert saved["jpeg_quality"] == 90 and saved["my_extension_option"] == {"a": [1, 2]}
    finally:
        client.post("/options", json={"jpeg_quality": 80})


def test_bad_value_is_422_naming_the_key_and_changes_nothing(client: httpx.Client) -> None:
    r = client.post("/options", json={"jpeg_quality": 70, "CLIP_stop_at_last_layers": "two"})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "CLIP_stop_at_last_layers"]
    assert client.get("/options").json()["jpeg_quality"] == 80


def test_setting_sd_model_checkpoint_switches_the_model(server: LiveServer, client: httpx.Client) -> None:
    original = client.get("/options").json()["sd_model_checkpoint"]
    try:
        assert client.post("/options", json={"sd_model_checkpoint": "other-model"}).status_code == 200
        title = client.get("/options").json()["sd_model_checkpoint"]
        assert title.startswith(OTHER_MODEL + " [")  # stored as the full title
        assert server.ctx.models.current is not None and server.ctx.models.current.name == OTHER_MODEL
        info = json.loads(client.post("/txt2img", json=TINY).json()["info"])
        assert info["sd_model_name"] == "other-model"
    finally:
        assert client.post("/options", json={"sd_model_checkpoint": original}).status_code == 200
    assert server.ctx.models.current is not None and server.ctx.models.current.title == original


def test_unknown_model_is_404_and_changes_nothing(client: httpx.Client) -> None:
    before = client.get("/options").json()
    r = client.post("/options", json={"sd_model_checkpoint": "no-such-model.safetensors", "jpeg_quality": 50})
    assert r.status_code == 404 and "no-such-model" in r.json()["errors"]
    assert client.get("/options").json() == before


def test_cmd_flags_lists_flags(server: LiveServer, client: httpx.Client) -> None:
    flags = client.get("/cmd-flags").json()
    assert flags["nowebui"] is True and flags["api"] is False and flags["listen"] is False
    assert flags["data_dir"] == str(server.ctx.settings.data_dir)
    assert "xformers" in flags and "lora_dir" in flags  # every flag, set or not
    assert flags["api_auth"] is None and flags["gradio_auth"] is None
