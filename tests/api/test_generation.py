"""POST /sdapi/v1/txt2img against a real server: A1111's request handling and response shape, hires fix included."""
from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.api.conftest import OTHER_MODEL, TINY, TINY_UPSCALER, LiveServer, b64_png, gradient

INFO_KEYS = [
    "prompt", "all_prompts", "negative_prompt", "all_negative_prompts", "seed", "all_seeds", "subseed", "all_subseeds",
    "subseed_strength", "width", "height", "sampler_name", "cfg_scale", "steps", "batch_size", "restore_faces",
    "face_restoration_model", "sd_model_name", "sd_model_hash", "sd_vae_name", "sd_vae_hash", "seed_resize_from_w",
    "seed_resize_from_h", "denoising_strength", "extra_generation_params", "index_of_first_image", "infotexts",
    "styles", "job_timestamp", "clip_skip", "is_using_inpainting_conditioning", "version",
]


def _png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def _txt2img(client: httpx.Client, **kw: object) -> dict:
    r = client.post("/txt2img", json={**TINY, **kw})
    assert r.status_code == 200, r.text
    return r.json()


def _outputs(server: LiveServer) -> list[Path]:
    root = server.ctx.settings.data_dir / "outputs"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_response_has_a1111_shape_and_png_carries_infotext(client: httpx.Client) -> None:
    body = _txt2img(client, batch_size=2)
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert list(info) == INFO_KEYS
    assert info["all_seeds"] == [42, 43] and info["sampler_name"] == "Euler a" and info["steps"] == 3
    assert info["sd_model_name"] == "sd-tiny-builtin"
    # No grid: the API returns one image per generated image unless save_images asks for a grid.
    assert len(body["images"]) == 2 and info["index_of_first_image"] == 0
    for b64, infotext in zip(body["images"], info["infotexts"]):
        image = _png(b64)
        assert image.format == "PNG" and image.size == (64, 64)
        assert image.info["parameters"] == infotext
    # Pydantic makes cfg_scale 7 a float, so the infotext reads 7.0 as A1111's API does.
    assert "Steps: 3, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7.0, Seed: 42, Size: 64x64" \
        in info["infotexts"][0]
    params = body["parameters"]
    assert params["prompt"] == "a cozy cabin" and params["send_images"] is True and params["save_images"] is False
    assert params["sampler_index"] == "Euler"  # A1111's API default, echoed back


def test_same_request_same_image(client: httpx.Client) -> None:
    a = _txt2img(client)["images"][0]
    b = _txt2img(client)["images"][0]
    assert _png(a).tobytes() == _png(b).tobytes()


def test_defaults_are_a1111_api_defaults(client: httpx.Client) -> None:
    info = json.loads(_txt2img(client, prompt="x", steps=2, sampler_name=None, seed=-1, cfg_scale=None)["info"])
    assert info["sampler_name"] == "Euler" and info["cfg_scale"] == 7.0  # sampler_index "Euler" is the default
    assert info["seed"] >= 0


@pytest.mark.parametrize(("fields", "sampler", "schedule"), [
    ({"sampler_name": "DPM++ 2M Karras"}, "DPM++ 2M", "Karras"),  # legacy name with the schedule in it
    ({"sampler_name": "k_euler_a"}, "Euler a", "Automatic"),  # alias
    ({"sampler_name": None, "sampler_index": "Heun"}, "Heun", "Automatic"),
    ({"sampler_name": "Euler", "scheduler": "simple"}, "Euler", "Simple"),
])
def test_sampler_names(client: httpx.Client, fields: dict, sampler: str, schedule: str) -> None:
    info = json.loads(_txt2img(client, **fields)["info"])
    assert info["sampler_name"] == sampler
    assert f"Sampler: {sampler}, Schedule type: {schedule}," in info["infotexts"][0]


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    body = _txt2img(client, url="http://example", auth="x", distilled_cfg_scale=3.5)
    assert len(body["images"]) == 1 and "url" not in body["parameters"]


def test_send_images_false_returns_no_images(client: httpx.Client) -> None:
    body = _txt2img(client, send_images=False)
    assert body["images"] == [] and json.loads(body["info"])["all_seeds"] == [42]


def test_nothing_is_saved_unless_save_images(server: LiveServer, client: httpx.Client) -> None:
    before = _outputs(server)
    _txt2img(client, batch_size=2, do_not_save_samples=False)  # save_images (default false) decides, as in A1111
    assert _outputs(server) == before
    body = _txt2img(client, batch_size=2, save_images=True)
    new = [p for p in _outputs(server) if p not in before]
    assert sorted(p.parent.parent.name for p in new) == ["txt2img-grids", "txt2img-images", "txt2img-images"]
    # With save_images the grid is returned first, as A1111 does.
    assert len(body["images"]) == 3 and json.loads(body["info"])["index_of_first_image"] == 1


def test_override_settings_apply_to_that_request_only(server: LiveServer, client: httpx.Client) -> None:
    info = json.loads(_txt2img(client, override_settings={"CLIP_stop_at_last_layers": 2})["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    assert client.get("/options").json()["CLIP_stop_at_last_layers"] == 1


def test_override_settings_not_restored_are_saved(server: LiveServer, client: httpx.Client) -> None:
    try:
        _txt2img(client, override_settings={"eta_noise_seed_delta": 31337}, override_settings_restore_afterwards=False)
        assert client.get("/options").json()["eta_noise_seed_delta"] == 31337
        saved = json.loads(server.ctx.settings.config_file.read_text())
        assert saved["eta_noise_seed_delta"] == 31337
    finally:
        assert client.post("/options", json={"eta_noise_seed_delta": 0}).status_code == 200


def test_model_switch_via_override_settings(client: httpx.Client) -> None:
    info = json.loads(_txt2img(client, override_settings={"sd_model_checkpoint": OTHER_MODEL})["info"])
    assert info["sd_model_name"] == "other-model"
    # The next request without an override uses the selected model again.
    assert json.loads(_txt2img(client)["info"])["sd_model_name"] == "sd-tiny-builtin"


def test_infotext_fills_fields_not_given(client: httpx.Client) -> None:
    infotext = ("a lighthouse at dusk\nNegative prompt: fog\n"
                "Steps: 2, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 5, Seed: 7, Size: 64x64, Clip skip: 2")
    body = client.post("/txt2img", json={"infotext": infotext, "seed": 9, "width": 64, "height": 64}).json()
    info = json.loads(body["info"])
    assert info["prompt"] == "a lighthouse at dusk" and info["negative_prompt"] == "fog"
    assert info["steps"] == 2 and info["cfg_scale"] == 5.0 and info["sampler_name"] == "DPM++ 2M"
    assert info["seed"] == 9  # given in the request: the infotext does not override it
    assert info["clip_skip"] == 2  # a setting from the infotext goes into override_settings
    assert body["parameters"]["override_settings"] == {"CLIP_stop_at_last_layers": 2}


@pytest.mark.parametrize(("payload", "status", "message"), [
    ({"script_name": "no such script"}, 422, "Script 'no such script' not found"),
    ({"alwayson_scripts": {"No such": {"args": []}}}, 422, "always on script No such not found"),
    ({"refiner_checkpoint": "sdxl-refiner"}, 422, "refiner_checkpoint: the refiner is not available yet"),
])
def test_unavailable_features_are_refused_by_name(client: httpx.Client, payload: dict, status: int,
                                                  message: str) -> None:
    r = client.post("/txt2img", json={**TINY, **payload})
    assert r.status_code == status
    assert message in r.json()["errors"]


@pytest.mark.parametrize(("payload", "field"), [
    ({"width": "wide"}, "width"),
    ({"steps": 2.5}, "steps"),
    ({"seed": "abc"}, "seed"),
    ({"prompt": {"a": 1}}, "prompt"),
    ({"width": -64}, "width"),
    ({"height": 0}, "height"),
    ({"width": 1_000_000}, "width"),
    ({"width": 100}, "width"),  # not a multiple of 8
    ({"steps": 0}, "steps"),
    ({"batch_size": -1}, "batch_size"),
    ({"cfg_scale": "high"}, "cfg_scale"),
    ({"sampler_name": "Imaginary sampler"}, "sampler_name"),
    ({"scheduler": "nope"}, "scheduler"),
    ({"subseed_strength": 3}, "subseed_strength"),
    ({"override_settings": {"CLIP_stop_at_last_layers": "two"}}, "CLIP_stop_at_last_layers"),
])
def test_bad_input_is_422_naming_the_field(client: httpx.Client, payload: dict, field: str) -> None:
    r = client.post("/txt2img", json={**TINY, **payload})
    assert r.status_code == 422, r.text
    body = r.json()
    assert set(body) >= {"error", "detail", "body", "errors"}
    assert any(field in item["loc"] for item in body["detail"])
    assert field in body["errors"]


def test_malformed_json_is_422(client: httpx.Client) -> None:
    r = client.post("/txt2img", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "RequestValidationError"


def test_unknown_model_is_404(client: httpx.Client) -> None:
    r = client.post("/txt2img", json={**TINY, "override_settings": {"sd_model_checkpoint": "no-such-model"}})
    assert r.status_code == 404
    assert r.json()["error"] == "ModelNotFound" and "no-such-model" in r.json()["errors"]


def test_failure_inside_generation_is_500_and_server_keeps_working(server: LiveServer,
                                                                   client: httpx.Client) -> None:
    blocker = server.ctx.settings.data_dir / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    try:
        assert client.post("/options", json={"outdir_txt2img_samples": str(blocker / "images")}).status_code == 200
        r = client.post("/txt2img", json={**TINY, "save_images": True})
        assert r.status_code == 500
        body = r.json()
        assert body["error"] in ("FileExistsError", "NotADirectoryError") and "not-a-folder" in body["errors"]
    finally:
        client.post("/options", json={"outdir_txt2img_samples": "outputs/txt2img-images"})
    assert len(_txt2img(client)["images"]) == 1


def test_hires_fix_with_a_latent_upscaler(client: httpx.Client) -> None:
    body = _txt2img(client, enable_hr=True, hr_scale=2, hr_upscaler="Latent (nearest)", hr_second_pass_steps=1,
                    denoising_strength=0.5)
    assert _png(body["images"][0]).size == (128, 128)
    info = json.loads(body["info"])
    assert info["width"] == 64 and info["denoising_strength"] == 0.5  # the first-pass size, as A1111
    assert ("Size: 64x64," in info["infotexts"][0] and "Denoising strength: 0.5, Hires upscale: 2.0, Hires steps: 1, "
            "Hires upscaler: Latent (nearest)," in info["infotexts"][0])


def test_hires_fix_with_a_model_upscaler_to_a_target_size(client: httpx.Client) -> None:
    body = _txt2img(client, enable_hr=True, hr_upscaler=TINY_UPSCALER[0], hr_resize_x=128, hr_resize_y=96,
                    hr_second_pass_steps=1, hr_sampler_name="DPM++ 2M", hr_prompt="a cozy cabin at night")
    assert _png(body["images"][0]).size == (128, 96)
    infotext = json.loads(body["info"])["infotexts"][0]
    for key in ("Hires resize: 128x96", f"Hires upscaler: {TINY_UPSCALER[0]}", "Hires sampler: DPM++ 2M",
                "Hires prompt: a cozy cabin at night"):
        assert key in infotext


def test_hires_denoising_zero_and_infotext_prefill(client: httpx.Client) -> None:
    assert _png(_txt2img(client, enable_hr=True, denoising_strength=0)["images"][0]).size == (128, 128)
    infotext = ("a cabin\nSteps: 2, Sampler: Euler a, CFG scale: 7, Seed: 5, Size: 64x64, Denoising strength: 0.5, "
                "Hires upscale: 1.5, Hires steps: 1, Hires upscaler: Latent")
    body = client.post("/txt2img", json={"infotext": infotext}).json()
    assert body["parameters"]["enable_hr"] is True and body["parameters"]["hr_scale"] == 1.5
    assert _png(body["images"][0]).size == (96, 96)


@pytest.mark.parametrize(("payload", "field", "message"), [
    ({"hr_upscaler": "Magic 9x"}, "hr_upscaler", "Magic 9x"),
    # A model A1111 would download: the message says which file to put where.
    ({"hr_upscaler": "R-ESRGAN 4x+"}, "hr_upscaler", str(Path("RealESRGAN") / "RealESRGAN_x4plus.pth")),
    ({"hr_checkpoint_name": "no-such-model"}, "hr_checkpoint_name", "hr_checkpoint_name"),
    ({"hr_sampler_name": "Imaginary"}, "hr_sampler_name", "Imaginary"),
    ({"hr_scale": 0}, "hr_scale", "hr_scale"),
    ({"denoising_strength": 2}, "denoising_strength", "denoising_strength"),
])
def test_bad_hires_input_is_422_naming_the_field(client: httpx.Client, payload: dict, field: str,
                                                 message: str) -> None:
    r = client.post("/txt2img", json={**TINY, "enable_hr": True, **payload})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", field] and message in r.json()["errors"]


def test_firstpass_image_runs_only_the_hires_pass_on_it(client: httpx.Client) -> None:
    hires = {**TINY, "enable_hr": True, "hr_second_pass_steps": 1}
    r = client.post("/txt2img", json={**hires, "firstpass_image": b64_png(gradient())})
    assert r.status_code == 200, r.text
    assert _png(r.json()["images"][0]).size == (128, 128)
    bad = client.post("/txt2img", json={**hires, "firstpass_image": "%%%"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "firstpass_image"]
    without_hires = client.post("/txt2img", json={**TINY, "firstpass_image": b64_png(gradient())})
    assert without_hires.status_code == 422 and without_hires.json()["detail"][0]["loc"] == ["body", "firstpass_image"]


def test_hires_pass_with_another_checkpoint(client: httpx.Client) -> None:
    body = _txt2img(client, enable_hr=True, hr_second_pass_steps=1, hr_checkpoint_name=OTHER_MODEL)
    assert _png(body["images"][0]).size == (128, 128)
    assert "Hires checkpoint: other-model" in json.loads(body["info"])["infotexts"][0]


def test_twenty_concurrent_clients_are_all_answered(server: LiveServer) -> None:
    results: dict[int, dict] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with server.client() as c:
                r = c.post("/txt2img", json={**TINY, "steps": 2, "seed": 1000 + i})
                assert r.status_code == 200, r.text
                results[i] = json.loads(r.json()["info"])
        except BaseException as e:  # noqa: BLE001 - collected and re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert sorted(results) == list(range(20))
    assert all(results[i]["seed"] == 1000 + i for i in range(20))
    # They ran one at a time through the queue: every job finished, none is left behind, and no
    # finished request keeps its images in memory.
    jobs = server.ctx.queue.list()
    assert not [j for j in jobs if j.status.value in ("queued", "running")]
    assert all(j.result is None for j in jobs if j.request is None)
