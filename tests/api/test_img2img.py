"""POST /sdapi/v1/img2img (and /jobs/img2img) against a real server: A1111's fields, defaults and response."""
from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.api.conftest import TINY, b64_png, gradient, open_b64, wait_until
from tests.api.test_generation import INFO_KEYS

INIT = b64_png(gradient())
BOX = (20, 20, 43, 43)  # the masked square (inclusive corners)


def _mask() -> str:
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle(BOX, fill=255)
    return b64_png(mask)


def _img2img(client: httpx.Client, **kw: object) -> dict:
    r = client.post("/img2img", json={**TINY, "init_images": [INIT], **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _px(b64: str) -> np.ndarray:
    return np.asarray(open_b64(b64).convert("RGB"), dtype=np.int16)


def _outside_box(margin: int = 4) -> np.ndarray:
    keep = np.ones((64, 64), bool)
    keep[BOX[1] - margin:BOX[3] + 1 + margin, BOX[0] - margin:BOX[2] + 1 + margin] = False
    return keep


def test_response_has_a1111_shape_and_init_images_are_not_echoed(client: httpx.Client) -> None:
    body = _img2img(client, init_images=["data:image/png;base64," + INIT])
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert list(info) == INFO_KEYS
    assert info["denoising_strength"] == 0.75 and info["sampler_name"] == "Euler a"
    image = open_b64(body["images"][0])
    assert image.size == (64, 64) and image.info["parameters"] == info["infotexts"][0]
    assert "Denoising strength: 0.75" in info["infotexts"][0]
    params = body["parameters"]
    # A1111's img2img defaults, and init_images/mask are not echoed unless include_init_images.
    assert params["init_images"] is None and params["mask"] is None and params["include_init_images"] is False
    assert params["resize_mode"] == 0 and params["mask_blur_x"] == 4 and params["inpainting_fill"] == 0
    assert params["inpaint_full_res"] is True and params["inpaint_full_res_padding"] == 0
    assert params["initial_noise_multiplier"] is None and params["image_cfg_scale"] is None
    echoed = _img2img(client, include_init_images=True, steps=1)["parameters"]
    assert echoed["init_images"] == [INIT]


def test_same_request_same_image_and_the_init_image_matters(client: httpx.Client) -> None:
    a = _img2img(client)["images"][0]
    assert _img2img(client)["images"][0] == a
    flipped = b64_png(gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    assert _img2img(client, init_images=[flipped])["images"][0] != a


def test_every_resize_mode_gives_the_requested_size_its_own_way(client: httpx.Client) -> None:
    wide = b64_png(gradient(96, 64))
    outputs = []
    for mode in range(4):
        body = _img2img(client, init_images=[wide], resize_mode=mode, denoising_strength=0)
        assert open_b64(body["images"][0]).size == (64, 64)
        outputs.append(body["images"][0])
    assert len(set(outputs)) == 4


def test_batch_repeats_one_init_image_and_takes_one_each_of_several(client: httpx.Client) -> None:
    assert len(_img2img(client, batch_size=2, steps=2)["images"]) == 2
    flipped = b64_png(gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    body = _img2img(client, batch_size=2, steps=2, init_images=[INIT, flipped])
    assert len(body["images"]) == 2 and body["images"][0] != body["images"][1]


@pytest.mark.parametrize(("fill", "label"), [(0, "fill"), (1, None), (2, "latent noise"), (3, "latent nothing")])
def test_inpaint_keeps_pixels_where_the_mask_is_zero(client: httpx.Client, fill: int, label: str | None) -> None:
    body = _img2img(client, mask=_mask(), mask_blur=0, inpainting_fill=fill, inpaint_full_res=False)
    out, init = _px(body["images"][0]), _px(INIT)
    keep = _outside_box()
    assert np.array_equal(out[keep], init[keep])
    assert not np.array_equal(out[24:40, 24:40], init[24:40, 24:40])
    infotext = json.loads(body["info"])["infotexts"][0]
    if label is None:
        assert "Masked content" not in infotext
    else:
        assert f"Masked content: {label}" in infotext
    assert "Inpaint area" not in infotext and "Mask blur" not in infotext


def test_only_masked_and_invert_write_a1111_keys(client: httpx.Client) -> None:
    body = _img2img(client, mask=_mask(), mask_blur=0, inpaint_full_res_padding=8)
    out, init = _px(body["images"][0]), _px(INIT)
    infotext = json.loads(body["info"])["infotexts"][0]
    assert "Inpaint area: Only masked, Masked area padding: 8" in infotext
    assert np.array_equal(out[_outside_box()], _px(INIT)[_outside_box()])
    inverted = _img2img(client, mask=_mask(), mask_blur=1, inpainting_mask_invert=1, inpaint_full_res=False)
    infotext = json.loads(inverted["info"])["infotexts"][0]
    assert "Mask blur: 1" in infotext and "Mask mode: Inpaint not masked" in infotext
    inside = _px(inverted["images"][0])[28:36, 28:36]  # inside the box, beyond the blur: untouched once inverted
    assert np.array_equal(inside, init[28:36, 28:36])


def test_denoising_zero_and_noise_multiplier(client: httpx.Client) -> None:
    body = _img2img(client, denoising_strength=0)
    assert "Denoising strength: 0.0" in json.loads(body["info"])["infotexts"][0]
    assert open_b64(body["images"][0]).size == (64, 64)
    infotext = json.loads(_img2img(client, initial_noise_multiplier=0.9)["info"])["infotexts"][0]
    assert "Noise multiplier: 0.9" in infotext


def test_infotext_fills_img2img_fields_not_given(client: httpx.Client) -> None:
    # Keys the infotext lacks get A1111's paste defaults (e.g. Masked area padding 32), as in A1111.
    infotext = ("a red door\nNegative prompt: rust\nSteps: 2, Sampler: Euler, CFG scale: 5, Seed: 11, Size: 64x64, "
                "Denoising strength: 0.4, Mask blur: 0, Masked content: latent nothing, Inpaint area: Whole picture")
    body = client.post("/img2img", json={"init_images": [INIT], "mask": _mask(), "infotext": infotext,
                                         "seed": 12}).json()
    params = body["parameters"]
    assert params["prompt"] == "a red door" and params["steps"] == 2 and params["seed"] == 12
    assert params["denoising_strength"] == 0.4 and params["mask_blur"] == 0 and params["inpainting_fill"] == 3
    assert params["inpaint_full_res"] is False and params["inpaint_full_res_padding"] == 32
    assert "Masked content: latent nothing" in json.loads(body["info"])["infotexts"][0]


@pytest.mark.parametrize(("payload", "field"), [
    ({"init_images": ["not base64!!"]}, "init_images"),
    ({"init_images": [base64.b64encode(b"not an image").decode()]}, "init_images"),
    ({"init_images": []}, "init_images"),
    ({"init_images": None}, "init_images"),
    ({"init_images": [INIT] * 3, "batch_size": 2}, "init_images"),
    ({"mask": "%%%"}, "mask"),
    ({"resize_mode": 7}, "resize_mode"),
    ({"inpainting_fill": 4}, "inpainting_fill"),
    ({"denoising_strength": 1.5}, "denoising_strength"),
    ({"script_name": "no such script"}, "script_name"),
    ({"infotext": "x\nSteps: 2, Sampler: Euler, Masked content: everything"}, "infotext"),
])
def test_bad_input_is_422_naming_the_field(client: httpx.Client, payload: dict, field: str) -> None:
    r = client.post("/img2img", json={**TINY, "init_images": [INIT], **payload})
    assert r.status_code == 422, r.text
    assert any(field in item["loc"] for item in r.json()["detail"])


def test_async_job_api(client: httpx.Client) -> None:
    r = client.post("/jobs/img2img", json={**TINY, "init_images": [INIT], "mask": _mask()})
    assert r.status_code == 202 and r.json()["kind"] == "img2img"
    job_id = r.json()["id"]
    wait_until(lambda: client.get(f"/jobs/{job_id}").json()["status"] == "done")
    body = client.get(f"/jobs/{job_id}/result").json()
    assert set(body) == {"images", "parameters", "info"} and len(body["images"]) == 1
    assert body["parameters"]["init_images"] is None and body["parameters"]["mask"] is None
    bad = client.post("/jobs/img2img", json={**TINY, "init_images": ["%%%"]})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "init_images"]
