"""Shared fixtures: the built-in model, built once per session, and app contexts on temp folders."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models/ folder holding the built-in checkpoint (built once for the whole run)."""
    from backend.models import builtin

    root = tmp_path_factory.mktemp("models")
    builtin.ensure_random_model(root)
    return root


@pytest.fixture(scope="session")
def builtin_checkpoint(models_dir: Path) -> Path:
    from backend.models import builtin

    return models_dir / "Stable-diffusion" / builtin.DEFAULT_MODEL_FILENAME


@pytest.fixture(scope="session")
def builtin_model(builtin_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory):
    """The built-in model loaded on the CPU in fp32."""
    import torch

    from backend.models.loader import load_checkpoint

    return load_checkpoint(builtin_checkpoint, device=torch.device("cpu"), dtype=torch.float32,
                           cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture
def app_ctx(tmp_path: Path, models_dir: Path):
    """A started AppContext with its own data dir (outputs, config, cache) on the shared models folder."""
    from backend.config import Settings
    from backend.context import AppContext
    from backend.devices import DevicePolicy

    settings = Settings.from_args(["--data-dir", str(tmp_path), "--models-dir", str(models_dir)], env={})
    ctx = AppContext.build(settings, devices=DevicePolicy.cpu())
    ctx.start()
    yield ctx
    ctx.stop()
