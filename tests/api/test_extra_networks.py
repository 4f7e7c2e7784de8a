"""/sd_extra_networks: thumbnails (only images inside the folders), metadata, single cards, and who may call them."""
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.conftest import LiveServer, serve
from tests.backend.networks.network_files import kohya_metadata, random, save_network

THUMB = "/sd_extra_networks/thumb"
METADATA = "/sd_extra_networks/metadata"
CARD = "/sd_extra_networks/get-single-card"
CARDS = "/sd_extra_networks/cards"
UI_LOGIN = ("ui-user", "ui-pass")
API_LOGIN = ("api-user", "api:pass")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A --lora-dir with a network, its preview and user metadata; a --ckpt-dir with a picture; files outside."""
    root = tmp_path_factory.mktemp("extra-networks")
    lora, ckpt, outside = root / "lora", root / "ckpt", root / "outside"
    save_network(lora / "sub" / "detail.safetensors", {"lora_unet_conv_in.lora_down.weight": random(2, 32, seed=1)},
                 kohya_metadata(ss_output_name="detail_tweaker", ss_clip_skip="2", ss_tag_frequency={"d": {"a": 3}},
                                ssmd_cover_images='["big base64"]'))
    Image.new("RGB", (16, 16), "orange").save(lora / "sub" / "detail.png")
    (lora / "sub" / "detail.json").write_text(json.dumps({"activation text": "detailed", "description": "More detail"}))
    ckpt.mkdir()
    Image.new("RGB", (8, 8), "blue").save(ckpt / "model.jpg")
    outside.mkdir()
    Image.new("RGB", (8, 8), "red").save(outside / "secret.png")
    (lora / "escape.png").symlink_to(outside / "secret.png")
    return {"lora": lora, "ckpt": ckpt, "outside": outside}


def _serve(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, folders: dict[str, Path],
           *flags: str) -> Iterator[LiveServer]:
    args = ["--lora-dir", str(folders["lora"]), "--ckpt-dir", str(folders["ckpt"]), "--skip-load-model-at-start",
            *flags]
    with serve(args, tmp_path_factory.mktemp("data"), models_dir) as live:
        yield live


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
              folders: dict[str, Path]) -> Iterator[LiveServer]:
    """The UI without any login (no --api either: these routes come with the UI)."""
    yield from _serve(tmp_path_factory, models_dir, folders)


def test_thumb_serves_previews_inside_the_folders(ui_server: LiveServer, folders: dict[str, Path]) -> None:
    lora = folders["lora"]
    with httpx.Client(base_url=ui_server.url) as c:
        r = c.get(THUMB, params={"filename": str(lora / "sub" / "detail.png"), "mtime": "1"})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == (lora / "sub" / "detail.png").read_bytes()
        assert c.get(THUMB, params={"filename": str(folders["ckpt"] / "model.jpg")}).status_code == 200


@pytest.mark.parametrize(("where", "status", "error"), [
    ("lora/../outside/secret.png", 403, "AccessDenied"),  # path traversal
    ("outside/secret.png", 403, "AccessDenied"),  # outside every folder
    ("lora/escape.png", 403, "AccessDenied"),  # a link inside that leads out
    ("lora/sub/detail.json", 403, "AccessDenied"),  # not an image
    ("lora/sub/detail.safetensors", 403, "AccessDenied"),
    ("lora/sub/missing.png", 404, "ModelNotFound"),
    ("", 422, "InvalidRequest"),
])
def test_thumb_refuses_everything_else(ui_server: LiveServer, folders: dict[str, Path], where: str, status: int,
                                       error: str) -> None:
    filename = str(folders["lora"].parent / where) if where else ""
    r = httpx.get(ui_server.url + THUMB, params={"filename": filename})
    assert r.status_code == status and r.json()["error"] == error, r.text


def test_metadata_and_single_card(ui_server: LiveServer) -> None:
    with httpx.Client(base_url=ui_server.url) as c:
        for item in ("detail", "detail_tweaker"):  # file stem or alias
            body = c.get(METADATA, params={"page": "lora", "item": item}).json()
            metadata = json.loads(body["metadata"])
            assert metadata["ss_clip_skip"] == "2" and metadata["ss_tag_frequency"] == {"d": {"a": 3}}
            assert "ssmd_cover_images" not in metadata
        card = c.get(CARD, params={"page": "lora", "tabname": "txt2img", "name": "detail"}).json()["html"]
        assert card.startswith('<div class="lora-card" data-name="detail"')
        assert 'data-prompt="&lt;lora:detail_tweaker:1&gt; detailed"' in card and "More detail" in card
        assert 'loading="lazy"' in card

        page = c.get(CARDS, params={"page": "lora", "tabname": "txt2img"})
        assert page.headers["content-type"].startswith("text/html")
        assert page.text.startswith('<div class="lora-page" data-tabname="txt2img">')
        assert card in page.text and 'data-folder="lora/sub"' in page.text

        r = c.get(METADATA, params={"page": "lora", "item": "nothere"})
        assert r.status_code == 404 and "nothere" in r.json()["errors"]
        r = c.get(METADATA, params={"page": "hypernetworks", "item": "detail"})
        assert r.status_code == 404 and "lora" in r.json()["errors"]
        r = c.get(METADATA, params={"page": "lora"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "item"]
        for route, params in ((CARD, {"name": "detail"}), (CARDS, {})):
            r = c.get(route, params={"page": "lora", "tabname": "<script>", **params})
            assert r.status_code == 422 and "tabname" in r.json()["errors"]
        assert c.get(CARDS, params={"page": "checkpoints", "tabname": "txt2img"}).status_code == 404


def test_with_api_auth_alone_they_are_as_open_as_the_ui(tmp_path_factory: pytest.TempPathFactory, models_dir: Path,
                                                        folders: dict[str, Path]) -> None:
    for live in _serve(tmp_path_factory, models_dir, folders, "--api", "--api-auth", ":".join(API_LOGIN)):
        with httpx.Client(base_url=live.url) as c:
            assert c.get(METADATA, params={"page": "lora", "item": "detail"}).status_code == 200
            assert c.get("/").status_code == 200  # the UI itself is open too
            assert c.get("/sdapi/v1/loras").status_code == 401  # the API is not
            assert c.get("/sdapi/v1/loras", auth=API_LOGIN).status_code == 200


def test_with_a_ui_login_they_need_the_session_or_api_credentials(tmp_path_factory: pytest.TempPathFactory,
                                                                  models_dir: Path, folders: dict[str, Path]) -> None:
    preview = {"filename": str(folders["lora"] / "sub" / "detail.png")}
    for live in _serve(tmp_path_factory, models_dir, folders, "--gradio-auth", ":".join(UI_LOGIN), "--api",
                       "--api-auth", ":".join(API_LOGIN)):
        with httpx.Client(base_url=live.url) as c:
            for auth in (None, ("api-user", "wrong"), UI_LOGIN):
                r = c.get(THUMB, params=preview, auth=auth)
                assert r.status_code == 401 and r.json()["error"] == "HTTPException"
            assert c.get(THUMB, params=preview, auth=API_LOGIN).status_code == 200
            assert c.get(CARD, params={"page": "lora", "tabname": "img2img", "name": "detail"},
                         auth=API_LOGIN).status_code == 200
            # A browser logged in to the UI: Gradio's login sets the session cookie.
            r = c.post("/login", data={"username": UI_LOGIN[0], "password": UI_LOGIN[1]})
            assert r.status_code == 200 and r.json() == {"success": True}
            assert c.get(THUMB, params=preview).status_code == 200
            assert c.get(METADATA, params={"page": "lora", "item": "detail"}).status_code == 200
        assert httpx.get(live.url + THUMB, params=preview).status_code == 401  # a new client has no session


def test_not_served_without_the_ui(server: LiveServer) -> None:
    assert httpx.get(server.url + METADATA, params={"page": "lora", "item": "x"}).status_code == 404
