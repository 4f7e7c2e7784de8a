"""The `webuiapi` client package (written for A1111), unchanged, against our server."""
from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlparse

import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageDraw

from tests.api.conftest import OTHER_MODEL, TINY_UPSCALER, LiveServer, gradient


def _client(server: LiveServer, **kw: object) -> webuiapi.WebUIApi:
    url = urlparse(server.url)
    return webuiapi.WebUIApi(host=url.hostname, port=url.port, sampler="Euler a", steps=3, **kw)


def test_txt2img_png_info_and_lists(server: LiveServer) -> None:
    api = _client(server)
    api.util_wait_for_ready(check_interval=0.1)
    result = api.txt2img(prompt="a cozy cabin", negative_prompt="blurry", seed=42, width=64, height=64, steps=3,
                         cfg_scale=7)
    assert len(result.images) == 1 and result.image.size == (64, 64)
    assert result.info["seed"] == 42 and result.info["sampler_name"] == "Euler a"
    assert result.parameters["prompt"] == "a cozy cabin"
    infotext = result.info["infotexts"][0]

    info = api.png_info(result.image)
    assert info.info == infotext

    assert "Euler a" in api.util_get_sampler_names()
    assert "karras" in api.util_get_scheduler_names()
    assert [u["name"] for u in api.get_upscalers()][:3] == ["None", "Lanczos", "Nearest"]
    assert api.get_progress()["state"]["job_count"] == 0
    assert set(api.get_scripts()) == {"txt2img", "img2img"}
    assert api.get_cmd_flags()["nowebui"] is True
    assert api.get_embeddings() == {"loaded": {}, "skipped": {}}
    assert api.get_loras() == []
    api.interrupt()
    api.skip()


def test_set_model_through_options(server: LiveServer) -> None:
    api = _client(server)
    original = api.util_get_current_model()
    try:
        api.util_set_model("other-model")  # closest title, as the client resolves it
        assert api.util_get_current_model().startswith(OTHER_MODEL)
        result = api.txt2img(prompt="x", width=64, height=64, steps=2, seed=1)
        assert result.info["sd_model_name"] == "other-model"
    finally:
        api.util_set_model(original, find_closest=False)
    assert api.util_get_current_model() == original


def test_img2img_inpainting_and_extras(server: LiveServer) -> None:
    api = _client(server)
    image = gradient()
    result = api.img2img(images=[image], prompt="y", width=64, height=64, steps=3, seed=4, denoising_strength=0.6)
    assert result.image.size == (64, 64) and result.info["seed"] == 4
    assert "Denoising strength: 0.6" in result.info["infotexts"][0]
    assert result.parameters["init_images"] is None  # include_init_images is false

    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    inpainted = api.img2img(images=[image], mask_image=mask, mask_blur=0, inpainting_fill=1, inpaint_full_res=False,
                            prompt="y", width=64, height=64, steps=3, seed=4)
    out, init = np.asarray(inpainted.image.convert("RGB")), np.asarray(image)
    assert np.array_equal(out[:8], init[:8]) and not np.array_equal(out[24:40, 24:40], init[24:40, 24:40])

    extras = api.extra_single_image(image=result.image, upscaler_1=TINY_UPSCALER[0], upscaling_resize=2)
    assert extras.image.size == (128, 128)
    assert extras.info == f"<p>Postprocess upscale by: 2.0, Postprocess upscaler: {TINY_UPSCALER[0]}</p>"
    batch = api.extra_batch_images(images=[image, result.image], upscaler_1="Lanczos", upscaling_resize=1.5)
    assert [im.size for im in batch.images] == [(96, 96), (96, 96)]
    assert [u["name"] for u in api.get_upscalers()][-1] == TINY_UPSCALER[0]
    assert [f["name"] for f in api.get_face_restorers()] == ["CodeFormer", "GFPGAN"]


def test_with_api_auth(start_server: Callable[..., LiveServer]) -> None:
    live = start_server("--nowebui", "--api-auth", "user:pw")
    anonymous = _client(live)
    assert anonymous.get_options()["detail"] == "Not authenticated"
    with pytest.raises(RuntimeError, match="401"):
        anonymous.txt2img(prompt="x", width=64, height=64, steps=2)
    api = _client(live, username="user", password="pw")
    api.util_wait_for_ready(check_interval=0.1)
    assert api.txt2img(prompt="x", width=64, height=64, steps=2, seed=3).info["seed"] == 3
