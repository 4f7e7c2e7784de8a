"""/sdapi/v1/embeddings and /refresh-embeddings on a real app: A1111's shape, skipped files, rescans."""
from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from backend.api.app import create_app
from backend.processing import StableDiffusionProcessingTxt2Img
from tests.backend.prompts.embedding_files import random_vectors, save_a1111_pt, save_emb_params, save_sdxl


@pytest.fixture
def client(app_ctx) -> TestClient:
    return TestClient(create_app(app_ctx))  # no lifespan: app_ctx's job queue is already running


def test_lists_loaded_and_skipped_for_the_model_in_use(app_ctx, client: TestClient) -> None:
    folder = app_ctx.settings.embeddings_dir
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    save_a1111_pt(folder / "styles" / "mystyle.pt", random_vectors(3, 32, 1), step=700)
    save_sdxl(folder / "xl-only.safetensors", torch.zeros(2, 768), torch.zeros(2, 1280))

    # Before a model has been loaded every readable file counts as loaded (no expected width yet).
    body = client.get("/sdapi/v1/embeddings").json()
    assert set(body["loaded"]) == {"mystyle", "xl-only"} and body["skipped"] == {}

    app_ctx.generate(StableDiffusionProcessingTxt2Img(prompt="a mystyle house", steps=1, width=64, height=64,
                                                      do_not_save_samples=True, do_not_save_grid=True))
    body = client.get("/sdapi/v1/embeddings").json()
    assert body == {
        "loaded": {"mystyle": {"step": 700, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "base-model",
                               "shape": 32, "vectors": 3}},
        "skipped": {"xl-only": {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                "shape": 768 + 1280, "vectors": 2}},
    }


def test_refresh_embeddings_rescans(app_ctx, client: TestClient) -> None:
    assert client.get("/sdapi/v1/embeddings").json()["loaded"] == {}
    save_emb_params(app_ctx.settings.embeddings_dir / "late.safetensors", random_vectors(2, 32, 2))
    response = client.post("/sdapi/v1/refresh-embeddings")
    assert response.status_code == 200 and response.json() is None
    assert app_ctx.embeddings.current().embeddings.keys() == {"late"}
    assert client.get("/sdapi/v1/embeddings").json()["loaded"]["late"]["vectors"] == 2
