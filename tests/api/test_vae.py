"""Separate VAE files through the API: /sd-vae, /refresh-vae, `sd_vae` per request and in /options."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from backend.models.loader import write_safetensors
from tests.api.conftest import TINY, LiveServer, open_b64
from tests.backend.models.tiny_vaes import perturbed_vae, small_other_vae


@pytest.fixture
def vae_dir(tmp_path: Path, builtin_model) -> Path:
    folder = tmp_path / "vae"
    write_safetensors(perturbed_vae(builtin_model, 0.4, prefixed=False), folder / "perturbed.safetensors")
    write_safetensors(small_other_vae(), folder / "other-family.safetensors")
    return folder


@pytest.fixture
def live(start_server: Callable[..., LiveServer], vae_dir: Path) -> LiveServer:
    return start_server("--nowebui", "--vae-dir", str(vae_dir))


def txt2img(client: httpx.Client, **settings: str) -> tuple[np.ndarray, dict]:
    r = client.post("/txt2img", json={**TINY, "override_settings": settings})
    assert r.status_code == 200, r.text
    body = r.json()
    return np.asarray(open_b64(body["images"][0])), json.loads(body["info"])


def test_sd_vae_lists_the_folder_and_refresh_finds_new_files(live: LiveServer, vae_dir: Path,
                                                             builtin_model) -> None:
    with live.client() as client:
        assert client.get("/sd-vae").json() == [
            {"model_name": "other-family.safetensors", "filename": str(vae_dir / "other-family.safetensors")},
            {"model_name": "perturbed.safetensors", "filename": str(vae_dir / "perturbed.safetensors")},
        ]
        write_safetensors(perturbed_vae(builtin_model, 0.1, prefixed=True), vae_dir / "new.safetensors")
        assert "new.safetensors" not in [item["model_name"] for item in client.get("/sd-vae").json()]
        r = client.post("/refresh-vae")
        assert r.status_code == 200 and r.json() is None
        assert "new.safetensors" in [item["model_name"] for item in client.get("/sd-vae").json()]


def test_override_uses_the_file_for_one_request_and_none_restores(live: LiveServer) -> None:
    with live.client() as client:
        own, own_info = txt2img(client)
        changed, info = txt2img(client, sd_vae="perturbed.safetensors")
        back, _ = txt2img(client, sd_vae="None")
        assert info["sd_vae_name"] == "perturbed.safetensors" and len(info["sd_vae_hash"]) == 10
        assert f"VAE hash: {info['sd_vae_hash']}, VAE: perturbed.safetensors" in info["infotexts"][0]
        assert own_info["sd_vae_name"] is None and own_info["sd_vae_hash"] is None
        assert not np.array_equal(changed, own)
        assert np.array_equal(back, own)
        assert client.get("/options").json()["sd_vae"] == "Automatic"


@pytest.mark.parametrize("name", ["missing.safetensors", "other-family.safetensors"])
def test_unknown_or_misfitting_vae_is_422_naming_sd_vae(live: LiveServer, name: str) -> None:
    with live.client() as client:
        r = client.post("/txt2img", json={**TINY, "override_settings": {"sd_vae": name}})
        assert r.status_code == 422, r.text
        assert "sd_vae" in r.json()["errors"] and name in r.json()["errors"]


def test_setting_sd_vae_in_options_persists_and_applies(live: LiveServer) -> None:
    with live.client() as client:
        assert client.post("/options", json={"sd_vae": "perturbed.safetensors"}).status_code == 200
        assert client.get("/options").json()["sd_vae"] == "perturbed.safetensors"
        assert json.loads(live.ctx.settings.config_file.read_text())["sd_vae"] == "perturbed.safetensors"
        _, info = txt2img(client)
        assert info["sd_vae_name"] == "perturbed.safetensors"
