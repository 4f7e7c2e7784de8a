"""Serving: middleware, OpenAPI, --api with the UI, --nowebui, CORS, --subpath, server stop/kill."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

import webui
from backend.config import Settings
from tests.api.conftest import TINY, LiveServer, wait_until
from tests.live_server import free_port

REPO = Path(__file__).resolve().parents[2]


def test_every_response_has_x_process_time(server: LiveServer, client: httpx.Client) -> None:
    for r in (client.get("/options"), client.get("/no-such-route"), client.post("/txt2img", json={"width": "x"}),
              httpx.get(server.url + "/")):
        assert float(r.headers["x-process-time"]) >= 0, r.request.url


def test_large_responses_are_gzipped_small_ones_not(client: httpx.Client) -> None:
    big = client.get("/options", headers={"Accept-Encoding": "gzip"})
    assert big.headers["content-encoding"] == "gzip" and big.json()["samples_format"] == "png"
    small = client.get("/scripts", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in small.headers


def test_unknown_route_has_a1111_error_body(client: httpx.Client) -> None:
    r = client.get("/no-such-route")
    assert r.status_code == 404
    assert r.json() == {"error": "HTTPException", "detail": "Not Found", "body": "", "errors": "404: Not Found"}


def test_openapi_documents_the_api_and_the_job_api(server: LiveServer) -> None:
    assert httpx.get(server.url + "/docs").status_code == 200
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    for path in ("/sdapi/v1/txt2img", "/sdapi/v1/progress", "/sdapi/v1/options", "/sdapi/v1/jobs/txt2img",
                 "/sdapi/v1/jobs", "/sdapi/v1/jobs/{job_id}", "/sdapi/v1/jobs/{job_id}/result"):
        assert path in paths
    assert set(paths["/sdapi/v1/jobs/{job_id}"]) == {"get", "delete"}
    assert "/sdapi/v1/server-stop" not in paths  # only with --api-server-stop
    fields = httpx.get(server.url + "/openapi.json").json()["components"]["schemas"][
        "StableDiffusionTxt2ImgProcessingAPI"]["properties"]
    assert {"prompt", "steps", "sampler_index", "send_images", "save_images", "alwayson_scripts",
            "override_settings", "infotext", "hr_scale"} <= set(fields)


def test_nowebui_index_page(server: LiveServer) -> None:
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and "/docs" in r.text


def test_api_mounted_with_the_ui(start_server: Callable[..., LiveServer]) -> None:
    live = start_server("--api", "--gradio-auth", "ui:pw")
    page = httpx.get(live.url + "/")
    assert page.status_code == 200 and "<html" in page.text.lower()
    assert httpx.get(live.url + "/config").status_code == 401  # the UI wants its login
    # --gradio-auth protects only the UI; the API is open without --api-auth (as in A1111).
    with live.client() as c:
        assert c.get("/options").status_code == 200
        r = c.post("/txt2img", json=TINY)
        assert r.status_code == 200 and r.headers["x-process-time"]


def test_cors_subpath_and_server_stop(start_server: Callable[..., LiveServer]) -> None:
    live = start_server("--nowebui", "--cors-allow-origins", "http://a.example,http://b.example",
                        "--subpath", "sd", "--api-server-stop")
    preflight = httpx.options(live.api("/txt2img"), headers={"Origin": "http://b.example",
                                                             "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "http://b.example"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    other = httpx.get(live.api("/options"), headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # Behind a proxy that strips /sd, routes stay where they are and the docs point under /sd.
    assert "/sd/openapi.json" in httpx.get(live.url + "/docs").text
    r = httpx.post(live.api("/server-stop"))
    assert r.status_code == 200 and r.text == "Stopping."
    wait_until(lambda: _refused(live.api("/options")), timeout=30)
    wait_until(lambda: not live.ctx.queue.running, timeout=30)  # the lifespan stops the job worker


def _refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.TransportError:
        return True
    return False


def test_root_path_normalisation() -> None:
    settings = Settings.from_args(["--subpath", "/sd/"], env={})
    assert webui.root_path(settings) == "/sd"
    assert webui.root_path(Settings.from_args([], env={})) == ""


def test_webui_process_listens_warns_restarts_and_dies_on_server_kill(tmp_path: Path, models_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COMMANDLINE_ARGS": ""}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "webui.py"), "--nowebui", "--listen", "--port", str(port), "--use-cpu", "all",
         "--data-dir", str(tmp_path), "--models-dir", str(models_dir), "--api-server-stop", "--api-log",
         "--skip-load-model-at-start"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        url = f"http://127.0.0.1:{port}/sdapi/v1"
        wait_until(lambda: not _refused(url + "/progress") or proc.poll() is not None, timeout=120, interval=0.2)
        assert proc.poll() is None, "".join(lines)
        assert httpx.post(url + "/server-restart").status_code == 204
        # The same process stops, builds everything again and serves on the same port.
        wait_until(lambda: proc.poll() is not None or any("Restarting..." in x for x in lines), timeout=60)
        wait_until(lambda: proc.poll() is not None or _serving_again(url), timeout=120, interval=0.2)
        assert proc.poll() is None, "".join(lines)
        with pytest.raises(httpx.TransportError):
            httpx.post(url + "/server-kill", timeout=30)
        assert proc.wait(30) == 0
        reader.join(10)
        output = "".join(lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "--listen without --gradio-auth or --api-auth" in output
    assert output.count(f"Running on http://0.0.0.0:{port}/ (API)") == 2
    assert "POST /sdapi/v1/server-restart" in output and " 204 " in output  # the --api-log line


def _serving_again(url: str) -> bool:
    try:
        return httpx.get(url + "/progress", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_bad_api_auth_flag_stops_start_up(tmp_path: Path, models_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = webui.main(["--nowebui", "--api-auth", "nopassword", "--data-dir", str(tmp_path), "--models-dir",
                       str(models_dir), "--use-cpu", "all", "--skip-load-model-at-start"])
    assert code == 2 and "--api-auth" in capsys.readouterr().err
