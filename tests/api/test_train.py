"""The training API on a real server: start a LoRA run, poll it, stop and resume it, find the file in /loras."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.backend.training.test_lora_training import star_folder
from tests.live_server import running_server


@pytest.fixture
def server(tmp_path: Path, models_dir: Path) -> Iterator[tuple[str, Path]]:
    with running_server(["--api", "--nowebui", "--lora-dir", str(tmp_path / "Lora")], tmp_path / "data",
                        models_dir) as (url, _ctx, _app):
        yield url, tmp_path


def body(folder: Path, **changes: Any) -> dict[str, Any]:
    values = {"name": "apistar", "dataset": str(folder), "resolution": 64, "dim": 2, "alpha": 1,
              "unet_lr": 1e-3, "max_train_steps": 2, "seed": 1}
    values.update(changes)
    return values


def poll(client: httpx.Client, job_id: str, until: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = client.get(f"/sdapi/v1/train/lora/{job_id}").json()
        if until(status):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.1)


def test_start_poll_result_in_lora_list(server: tuple[str, Path]) -> None:
    url, tmp = server
    folder = star_folder(tmp / "stars")
    with httpx.Client(base_url=url, timeout=60) as client:
        assert "AdamW" in client.get("/sdapi/v1/train/options").json()["optimizer"]
        started = client.post("/sdapi/v1/train/lora", json=body(folder))
        assert started.status_code == 202
        job_id = started.json()["id"]
        done = poll(client, job_id, lambda s: s["job_status"] in ("done", "failed", "cancelled"))
        assert done["status"] == "done" and done["step"] == done["total_steps"] == 2, done
        assert [step for step, _ in done["losses"]] == [1, 2]
        assert [Path(p).name for p in done["saved"]] == ["apistar.safetensors"]
        assert client.post("/sdapi/v1/refresh-loras").status_code == 200
        loras = {item["name"]: item for item in client.get("/sdapi/v1/loras").json()}
        metadata = loras["apistar"]["metadata"]
        assert metadata["ss_output_name"] == "apistar" and "ss_network_args" not in metadata  # plain LoRA
        assert metadata["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
        assert len(metadata["ss_new_sd_model_hash"]) == 64 and metadata["ss_sd_model_name"].endswith(".safetensors")
        assert client.get("/sdapi/v1/train/lora/unknown").status_code == 404


def test_bad_input_names_the_field(server: tuple[str, Path]) -> None:
    url, tmp = server
    folder = star_folder(tmp / "stars", count=1)
    with httpx.Client(base_url=url, timeout=60) as client:
        for changes, field in (({"dim": 0}, "dim"), ({"dataset": str(tmp / "none")}, "dataset"),
                               ({"network_type": "LoHa"}, "network_type"), ({"dim": "many"}, "dim")):
            response = client.post("/sdapi/v1/train/lora", json=body(folder, **changes))
            assert response.status_code == 422, response.text
            assert field in response.json()["errors"]
        response = client.post("/sdapi/v1/train/dataset/prepare", json={"source": str(tmp / "none"), "output": "x"})
        assert response.status_code == 422 and "source" in response.json()["errors"]


def test_stop_then_resume(server: tuple[str, Path]) -> None:
    url, tmp = server
    folder = star_folder(tmp / "stars")
    with httpx.Client(base_url=url, timeout=60) as client:
        job_id = client.post("/sdapi/v1/train/lora", json=body(folder, max_train_steps=400)).json()["id"]
        poll(client, job_id, lambda s: s["step"] >= 1)
        assert client.post(f"/sdapi/v1/train/lora/{job_id}/stop").status_code == 200
        stopped = poll(client, job_id, lambda s: s["job_status"] != "running")
        assert stopped["status"] == "stopped" and 1 <= stopped["step"] < 400 and stopped["saved"] == []
        reached = stopped["step"]
        resumed = client.post("/sdapi/v1/train/lora", json=body(folder, max_train_steps=reached + 2, resume=True))
        assert resumed.status_code == 202
        done = poll(client, resumed.json()["id"], lambda s: s["job_status"] != "running" and s["status"] != "queued")
        assert done["status"] == "done" and done["step"] == reached + 2
        assert [s for s, _ in done["losses"]][-3:] == [reached, reached + 1, reached + 2]


def test_dataset_routes(server: tuple[str, Path]) -> None:
    url, tmp = server
    folder = star_folder(tmp / "stars", count=3, side=160)
    with httpx.Client(base_url=url, timeout=60) as client:
        scan = client.post("/sdapi/v1/train/dataset/scan", json={"folder": str(folder), "resolution": 64}).json()
        assert scan["images"] == 3 and any("only 3 images" in w for w in scan["warnings"])
        assert scan["tag_frequency"]["zkstar"] == 3
        prepared = client.post("/sdapi/v1/train/dataset/prepare", json={
            "source": str(folder), "output": str(tmp / "out"), "resolution": 64, "flip": True,
            "trigger": "zk"}).json()
        assert len(prepared["written"]) == 6 and prepared["tag_frequency"]["zk"] == 6
        captions = client.post("/sdapi/v1/train/dataset/captions", json={
            "folder": str(tmp / "out"), "remove_tags": ["zkstar"]}).json()
        assert "zkstar" not in captions["tag_frequency"] and captions["tag_frequency"]["zk"] == 6
