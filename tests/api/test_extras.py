"""POST /extra-single-image, /extra-batch-images and /png-info against a real server."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from backend.postprocess.extras import ExtrasRequest, run_extras
from tests.api.conftest import TINY, TINY_UPSCALER, LiveServer, b64_png, gradient, open_b64

PARAMETERS = "a cat\nSteps: 3, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 40x24"
PICTURE = b64_png(gradient(40, 24), parameters=PARAMETERS)


def _outputs(server: LiveServer) -> list[Path]:
    root = server.ctx.settings.data_dir / "outputs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_single_image_with_lanczos(server: LiveServer, client: httpx.Client) -> None:
    before = _outputs(server)
    r = client.post("/extra-single-image", json={"image": "data:image/png;base64," + PICTURE, "upscaler_1": "Lanczos"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"html_info", "image"}
    text = "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"  # the default 2, unvalidated as in A1111
    assert body["html_info"] == f"<p>{text}</p>"
    image = open_b64(body["image"])
    # 2x rounded down to a multiple of 8; the original parameters are kept next to the Extras text.
    assert image.size == (80, 48)
    assert image.info["postprocessing"] == text and image.info["parameters"] == PARAMETERS
    info = client.post("/png-info", json={"image": body["image"]}).json()
    assert info["info"] == PARAMETERS and info["items"]["postprocessing"] == text
    # Through the shared queue, and nothing saved (A1111's API passes save_output=False).
    assert any(job.kind == "extras" for job in server.ctx.queue.list())
    assert _outputs(server) == before


def test_single_image_with_a_model_upscaler_scaled_to_a_size(client: httpx.Client) -> None:
    body = client.post("/extra-single-image", json={
        "image": PICTURE, "resize_mode": 1, "upscaling_resize_w": 100, "upscaling_resize_h": 60,
        "upscaler_1": TINY_UPSCALER[0], "upscaler_2": "Lanczos", "extras_upscaler_2_visibility": 0.5}).json()
    assert open_b64(body["image"]).size == (100, 60)
    for key in ("Postprocess upscale to: 100x60", f"Postprocess upscaler: {TINY_UPSCALER[0]}",
                "Postprocess crop to: 100x60", "Postprocess upscaler 2: Lanczos"):
        assert key in body["html_info"]


def test_upscaler_none_returns_the_image_unchanged(client: httpx.Client) -> None:
    body = client.post("/extra-single-image", json={"image": PICTURE}).json()
    assert body["html_info"] == "<p></p>"
    assert np.array_equal(np.asarray(open_b64(body["image"]).convert("RGB")), np.asarray(gradient(40, 24)))


def test_batch_images(client: httpx.Client) -> None:
    tall = b64_png(gradient(24, 40))
    r = client.post("/extra-batch-images", json={
        "imageList": [{"data": PICTURE, "name": "wide.png"}, {"data": tall, "name": "tall.png"}],
        "upscaler_1": TINY_UPSCALER[0], "upscaling_resize": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"html_info", "images"}
    assert [open_b64(image).size for image in body["images"]] == [(80, 48), (48, 80)]
    assert body["html_info"] == f"<p>Postprocess upscale by: 2.0, Postprocess upscaler: {TINY_UPSCALER[0]}</p>"


@pytest.mark.parametrize(("payload", "status", "field", "message"), [
    ({"image": "%%%"}, 422, "image", "invalid encoded image"),
    ({"image": ""}, 422, "image", "an image is required"),
    ({"resize_mode": 2}, 422, "resize_mode", ""),
    ({"gfpgan_visibility": 2}, 422, "gfpgan_visibility", ""),
    ({"upscaling_resize": 9}, 422, "upscaling_resize", ""),
    ({"upscaler_1": "Magic 9x"}, 404, None, "upscaler not found: 'Magic 9x'"),
    ({"upscaler_2": "Magic 9x"}, 404, None, "upscaler not found: 'Magic 9x'"),
    # Models A1111 would download: the message names the folder and the file to put there.
    ({"upscaler_1": "R-ESRGAN 4x+"}, 404, None, str(Path("RealESRGAN") / "RealESRGAN_x4plus.pth")),
    ({"gfpgan_visibility": 1}, 404, None, str(Path("GFPGAN") / "GFPGANv1.4.pth")),
    ({"codeformer_visibility": 0.5}, 404, None, str(Path("Codeformer") / "codeformer-v0.1.0.pth")),
])
def test_single_image_errors(client: httpx.Client, payload: dict, status: int, field: str | None,
                             message: str) -> None:
    r = client.post("/extra-single-image", json={"image": PICTURE, **payload})
    assert r.status_code == status, r.text
    assert message in r.json()["errors"]
    if field is not None:
        assert r.json()["detail"][0]["loc"] == ["body", field]


def test_batch_errors_name_imagelist(client: httpx.Client) -> None:
    r = client.post("/extra-batch-images", json={"imageList": [{"data": PICTURE, "name": "a.png"},
                                                               {"data": "%%%", "name": "b.png"}]})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "imageList"]
    assert "item 1 ('b.png')" in r.json()["errors"]
    assert client.post("/extra-batch-images", json={}).status_code == 422


def test_png_info_of_a_saved_extras_file_has_the_extras_item(server: LiveServer, client: httpx.Client,
                                                             tmp_path: Path) -> None:
    ctx = server.ctx
    [result] = run_extras([(open_b64(PICTURE), None)], ExtrasRequest(upscaler_1="Lanczos"), upscalers=ctx.upscalers,
                          face_restorers=ctx.face_restorers, opts=ctx.options, output_dir=tmp_path,
                          device=ctx.devices.device)
    assert result.saved_path is not None
    saved = base64.b64encode(result.saved_path.read_bytes()).decode()
    info = client.post("/png-info", json={"image": saved}).json()
    assert info["info"] == PARAMETERS
    assert info["items"]["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


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
