"""The asynchronous job API: submit, poll, result, list, cancel, FIFO order."""
from __future__ import annotations

import base64
import io
import json
import threading

import httpx
from PIL import Image

from tests.api.conftest import TINY, LiveServer, wait_until

LONG = {**TINY, "steps": 1000}


def _submit(client: httpx.Client, **kw: object) -> dict:
    r = client.post("/jobs/txt2img", json={**TINY, **kw})
    assert r.status_code == 202, r.text
    return r.json()


def _finished(client: httpx.Client, job_id: str) -> dict:
    return wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"] in ("done", "failed", "cancelled")
                      and j)


def test_submit_poll_and_fetch_the_result(client: httpx.Client) -> None:
    job = _submit(client, seed=5)
    assert set(job) == {"id", "kind", "status", "created", "started", "finished", "position", "progress", "error"}
    assert job["kind"] == "txt2img" and job["status"] in ("queued", "running")
    done = _finished(client, job["id"])
    assert done["status"] == "done" and done["progress"] == 1.0 and done["position"] == -1
    result = client.get(f"/jobs/{job['id']}/result")
    assert result.status_code == 200
    body = result.json()
    assert set(body) == {"images", "parameters", "info"}
    info = json.loads(body["info"])
    assert info["seed"] == 5 and body["parameters"]["seed"] == 5
    image = Image.open(io.BytesIO(base64.b64decode(body["images"][0])))
    assert image.info["parameters"] == info["infotexts"][0]
    # Fetchable again until released with DELETE.
    assert client.get(f"/jobs/{job['id']}/result").json() == body
    assert client.delete(f"/jobs/{job['id']}").json()["status"] == "done"
    assert client.get(f"/jobs/{job['id']}/result").status_code == 409


def test_result_is_409_while_running_and_cancel_interrupts(client: httpx.Client) -> None:
    job = _submit(client, **LONG)
    wait_until(lambda: client.get(f"/jobs/{job['id']}").json()["status"] == "running")
    r = client.get(f"/jobs/{job['id']}/result")
    assert r.status_code == 409 and r.json()["error"] == "JobConflict" and "running" in r.json()["detail"]
    progress = wait_until(lambda: (j := client.get(f"/jobs/{job['id']}").json())["progress"] > 0.01 and j)
    assert progress["position"] == 0
    assert client.delete(f"/jobs/{job['id']}").status_code == 200
    assert _finished(client, job["id"])["status"] == "cancelled"


def test_cancel_a_queued_job(client: httpx.Client) -> None:
    running = _submit(client, **LONG)
    queued = _submit(client)
    listing = client.get("/jobs").json()
    ids = [j["id"] for j in listing]
    assert ids.index(running["id"]) < ids.index(queued["id"])
    assert client.get(f"/jobs/{queued['id']}").json()["position"] >= 1
    cancelled = client.delete(f"/jobs/{queued['id']}").json()
    assert cancelled["status"] == "cancelled" and cancelled["started"] is None
    r = client.get(f"/jobs/{queued['id']}/result")
    assert r.status_code == 409
    client.post("/interrupt")
    assert _finished(client, running["id"])["status"] == "done"  # /interrupt returns what was done
    assert client.get(f"/jobs/{queued['id']}").json()["started"] is None  # it never ran


def test_a_waiting_txt2img_request_whose_job_is_cancelled_gets_409(server: LiveServer,
                                                                    client: httpx.Client) -> None:
    running = _submit(client, **LONG)
    out: dict[str, httpx.Response] = {}

    def post() -> None:
        with server.client() as c:
            out["response"] = c.post("/txt2img", json=TINY)

    thread = threading.Thread(target=post)
    thread.start()
    queued = wait_until(lambda: [j for j in client.get("/jobs").json() if j["status"] == "queued"])
    assert client.delete(f"/jobs/{queued[0]['id']}").json()["status"] == "cancelled"
    thread.join(60)
    assert out["response"].status_code == 409 and out["response"].json()["error"] == "Interrupted"
    client.delete(f"/jobs/{running['id']}")
    _finished(client, running["id"])


def test_jobs_run_in_submission_order(client: httpx.Client) -> None:
    ids = [_submit(client, steps=1, seed=i)["id"] for i in range(20)]
    jobs = [_finished(client, job_id) for job_id in ids]
    assert all(j["status"] == "done" for j in jobs)
    starts = [j["started"] for j in jobs]
    assert starts == sorted(starts)
    for i, job_id in enumerate(ids):
        assert json.loads(client.get(f"/jobs/{job_id}/result").json()["info"])["seed"] == i


def test_bad_input_is_refused_before_queueing(server: LiveServer, client: httpx.Client) -> None:
    before = len(server.ctx.queue.list())
    r = client.post("/jobs/txt2img", json={**TINY, "width": 65})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "width"]
    assert len(server.ctx.queue.list()) == before


def test_failed_job_result_gives_the_error(client: httpx.Client) -> None:
    job = _submit(client, override_settings={"sd_model_checkpoint": "no-such-model"})
    failed = _finished(client, job["id"])
    assert failed["status"] == "failed" and "no-such-model" in failed["error"]
    r = client.get(f"/jobs/{job['id']}/result")
    assert r.status_code == 404 and r.json()["error"] == "ModelNotFound"


def test_unknown_job_is_404(client: httpx.Client) -> None:
    for r in (client.get("/jobs/nope"), client.get("/jobs/nope/result"), client.delete("/jobs/nope")):
        assert r.status_code == 404 and "nope" in r.json()["errors"]


def test_sync_requests_show_in_the_listing_without_a_result(client: httpx.Client) -> None:
    client.post("/txt2img", json=TINY)
    latest = client.get("/jobs").json()[0]
    assert latest["kind"] == "txt2img" and latest["status"] == "done"
    assert client.get(f"/jobs/{latest['id']}/result").status_code == 409
