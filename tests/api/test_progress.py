"""GET /progress during a long run, the live preview, /interrupt and /skip."""
from __future__ import annotations

import base64
import io
import json
import threading
from typing import Any

import httpx
from PIL import Image

from tests.api.conftest import TINY, LiveServer, wait_until

LONG = {**TINY, "steps": 1000}  # 64x64 but many steps: long enough to watch, ended by /interrupt


def _run_in_background(server: LiveServer, payload: dict) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        with server.client() as c:
            out["response"] = c.post("/txt2img", json=payload)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_idle_progress_is_zero(client: httpx.Client) -> None:
    body = client.get("/progress").json()
    assert body["progress"] == 0 and body["eta_relative"] == 0
    assert body["state"]["job_count"] == 0 and body["current_image"] is None
    assert list(body["state"]) == ["skipped", "interrupted", "stopping_generation", "job", "job_count",
                                   "job_timestamp", "job_no", "sampling_step", "sampling_steps"]


def test_progress_and_preview_during_a_run_then_interrupt(server: LiveServer, client: httpx.Client) -> None:
    thread, out = _run_in_background(server, LONG)

    def previewing() -> dict | None:
        body = client.get("/progress").json()
        return body if body["current_image"] and body["state"]["sampling_step"] >= 10 else None

    body = wait_until(previewing)
    assert 0 < body["progress"] < 1 and body["eta_relative"] > 0
    state = body["state"]
    assert state["job_count"] == 1 and state["sampling_steps"] == 1000 and state["job"] == "txt2img"
    preview = Image.open(io.BytesIO(base64.b64decode(body["current_image"])))
    assert preview.format == "PNG" and preview.size[0] > 0
    assert client.get("/progress", params={"skip_current_image": True}).json()["current_image"] is None

    assert client.post("/interrupt").json() == {}
    thread.join(60)
    response = out["response"]
    assert response.status_code == 200
    # Interrupt returns what was done: the partly denoised image.
    assert len(response.json()["images"]) == 1
    idle = wait_until(lambda: (b := client.get("/progress").json())["state"]["job_count"] == 0 and b)
    assert idle["progress"] == 0 and idle["state"]["interrupted"] is True


def test_skip_moves_on_to_the_next_batch(server: LiveServer, client: httpx.Client) -> None:
    thread, out = _run_in_background(server, {**LONG, "n_iter": 2})
    wait_until(lambda: client.get("/progress").json()["state"]["sampling_step"] > 2)
    assert client.post("/skip").json() is None
    second = wait_until(lambda: (b := client.get("/progress").json())["state"]["job_no"] == 1 and b)
    assert second["state"]["job_count"] == 2
    client.post("/interrupt")
    thread.join(60)
    info = json.loads(out["response"].json()["info"])
    assert info["all_seeds"] == [42, 43] and len(info["infotexts"]) == 2


def test_interrupt_and_skip_when_idle_are_harmless(client: httpx.Client) -> None:
    assert client.post("/interrupt").status_code == 200
    assert client.post("/skip").status_code == 200
    r = client.post("/txt2img", json=TINY)
    assert r.status_code == 200 and len(r.json()["images"]) == 1
