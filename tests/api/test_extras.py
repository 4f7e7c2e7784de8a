"""POST /png-info: the infotext of a returned image comes back, raw and parsed."""
from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from PIL import Image

from tests.api.conftest import TINY


def test_png_info_of_a_returned_image_gives_back_its_infotext(client: httpx.Client) -> None:
    body = client.post("/txt2img", json=TINY).json()
    infotext = json.loads(body["info"])["infotexts"][0]
    for image in (body["images"][0], "data:image/png;base64," + body["images"][0]):
        r = client.post("/png-info", json={"image": image})
        assert r.status_code == 200
        result = r.json()
        assert result["info"] == infotext
        params = result["parameters"]
        assert params["Prompt"] == "a cozy cabin" and params["Negative prompt"] == "blurry"
        assert params["Steps"] == "3" and params["Seed"] == "42" and params["Size-1"] == "64"


def test_png_info_of_a_jpeg_reads_the_exif_comment(client: httpx.Client) -> None:
    try:
        assert client.post("/options", json={"samples_format": "jpg"}).status_code == 200
        body = client.post("/txt2img", json=TINY).json()
    finally:
        client.post("/options", json={"samples_format": "png"})
    raw = base64.b64decode(body["images"][0])
    assert Image.open(io.BytesIO(raw)).format == "JPEG"
    result = client.post("/png-info", json={"image": body["images"][0]}).json()
    assert result["info"] == json.loads(body["info"])["infotexts"][0]


def test_image_without_infotext(client: httpx.Client) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    result = client.post("/png-info", json={"image": base64.b64encode(buffer.getvalue()).decode()}).json()
    assert result["info"] == ""
    assert client.post("/png-info", json={"image": " "}).json()["info"] == ""


@pytest.mark.parametrize("image", ["not base64!!", base64.b64encode(b"not an image").decode(),
                                   "data:image/png;base64,%%%", "https://example.com/cat.png"])
def test_bad_image_is_422_naming_the_field(client: httpx.Client, image: str) -> None:
    r = client.post("/png-info", json={"image": image})
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "image"]


def test_missing_image_is_422(client: httpx.Client) -> None:
    r = client.post("/png-info", json={})
    assert r.status_code == 422 and "image" in r.json()["errors"]
