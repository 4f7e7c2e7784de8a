"""The model and list routes: checkpoints, samplers, schedulers, upscalers and A1111's other lists."""
from __future__ import annotations

import shutil

import httpx
import pytest

from backend.sampling.registry import SAMPLERS, SCHEDULERS
from tests.api.conftest import OTHER_MODEL, TINY, TINY_REALESRGAN, TINY_UPSCALER, LiveServer


def test_sd_models(server: LiveServer, client: httpx.Client) -> None:
    items = client.get("/sd-models").json()
    by_name = {item["model_name"]: item for item in items}
    assert set(by_name) >= {"sd-tiny-builtin", "other-model"}
    builtin = by_name["sd-tiny-builtin"]
    assert set(builtin) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert builtin["hash"] == builtin["sha256"][:10]
    assert builtin["title"] == f"sd-tiny-builtin.safetensors [{builtin['hash']}]"
    assert builtin["filename"].endswith("sd-tiny-builtin.safetensors") and builtin["config"] is None


def test_refresh_checkpoints_finds_new_files(server: LiveServer, client: httpx.Client) -> None:
    folder = server.ctx.settings.ckpt_dirs[0]
    added = folder / "sub" / "late-arrival.safetensors"
    added.parent.mkdir()
    shutil.copy(folder / OTHER_MODEL, added)
    try:
        assert "sub_late-arrival" not in [m["model_name"] for m in client.get("/sd-models").json()]
        assert client.post("/refresh-checkpoints").status_code == 200
        assert "sub_late-arrival" in [m["model_name"] for m in client.get("/sd-models").json()]
    finally:
        shutil.rmtree(added.parent)
        client.post("/refresh-checkpoints")


def test_unload_and_reload_checkpoint(server: LiveServer, client: httpx.Client) -> None:
    assert client.post("/unload-checkpoint").json() == {}
    assert server.ctx.models.loaded() == []
    assert client.post("/reload-checkpoint").json() == {}
    assert [info.title for info in server.ctx.models.loaded()] == [client.get("/options").json()["sd_model_checkpoint"]]
    assert client.post("/txt2img", json=TINY).status_code == 200


def test_samplers(client: httpx.Client) -> None:
    items = client.get("/samplers").json()
    assert [s["name"] for s in items] == [s.name for s in SAMPLERS]
    sde = next(s for s in items if s["name"] == "DPM++ SDE")
    assert sde["aliases"] == ["k_dpmpp_sde"]
    assert sde["options"] == {"scheduler": "karras", "second_order": "True", "brownian_noise": "True"}


def test_schedulers(client: httpx.Client) -> None:
    items = client.get("/schedulers").json()
    assert [s["name"] for s in items] == [s.name for s in SCHEDULERS]
    karras = next(s for s in items if s["name"] == "karras")
    assert karras == {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
                      "need_inner_model": False}


def test_upscalers_and_latent_modes(server: LiveServer, client: httpx.Client) -> None:
    upscalers = client.get("/upscalers").json()
    # The built-in ones first, then the model files by lower-case name (A1111's order).
    assert [u["name"] for u in upscalers] == ["None", "Lanczos", "Nearest", TINY_REALESRGAN[0], TINY_UPSCALER[0]]
    assert upscalers[1] == {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4}
    models_dir = server.ctx.settings.models_dir
    assert upscalers[4] == {"name": TINY_UPSCALER[0], "model_name": "ESRGAN",
                            "model_path": str(models_dir / TINY_UPSCALER[1]), "model_url": None, "scale": 2}
    modes = [m["name"] for m in client.get("/latent-upscale-modes").json()]
    assert modes == ["Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                     "Latent (nearest)", "Latent (nearest-exact)"]


def test_realesrgan_models_and_face_restorers(server: LiveServer, client: httpx.Client) -> None:
    models_dir = server.ctx.settings.models_dir
    assert client.get("/realesrgan-models").json() == [
        {"name": TINY_REALESRGAN[0], "path": str(models_dir / TINY_REALESRGAN[1]), "scale": 4}]
    # Both are listed (A1111 lists them before any download); cmd_dir is where their weights go.
    assert client.get("/face-restorers").json() == [
        {"name": "CodeFormer", "cmd_dir": str(models_dir / "Codeformer")},
        {"name": "GFPGAN", "cmd_dir": str(models_dir / "GFPGAN")},
    ]


def test_scripts_and_extensions_lists_match_what_is_loaded(client: httpx.Client, server) -> None:
    scripts = client.get("/scripts").json()
    assert scripts == {"txt2img": [s.name for s in server.ctx.scripts.txt2img.scripts],
                       "img2img": [s.name for s in server.ctx.scripts.img2img.scripts]}
    info = client.get("/script-info").json()
    assert len(info) == len(scripts["txt2img"]) + len(scripts["img2img"])
    assert all({"name", "is_alwayson", "is_img2img", "args"} <= item.keys() for item in info)
    assert [e["name"] for e in client.get("/extensions").json()] == [e.name for e in server.ctx.scripts.extensions]


@pytest.mark.parametrize(("path", "expected"), [
    ("/sd-vae", []),
    ("/hypernetworks", []),
    ("/prompt-styles", []),
    ("/loras", []),
    ("/embeddings", {"loaded": {}, "skipped": {}}),
])
def test_lists_of_what_we_do_not_have_yet(client: httpx.Client, path: str, expected: object) -> None:
    assert client.get(path).json() == expected


@pytest.mark.parametrize("path", ["/refresh-vae", "/refresh-loras", "/refresh-embeddings"])
def test_refresh_routes_answer_null(client: httpx.Client, path: str) -> None:
    r = client.post(path)
    assert r.status_code == 200 and r.json() is None


@pytest.mark.parametrize("path", ["/interrogate", "/create/embedding", "/train/hypernetwork"])
def test_routes_for_features_we_lack_say_so(client: httpx.Client, path: str) -> None:
    r = client.post(path, json={})
    assert r.status_code == 404
    assert r.json()["detail"].startswith(f"POST /sdapi/v1{path}: ") and "not available yet" in r.json()["detail"]


def test_memory(client: httpx.Client) -> None:
    body = client.get("/memory").json()
    assert set(body["ram"]) == {"free", "used", "total"} and body["ram"]["used"] > 0
    assert body["cuda"] == {"error": "unavailable"}  # the test server runs on the CPU
