"""Real servers for the API tests: webui.py's own prepare/build_app/make_server, run by uvicorn
in a thread on a free port, with the built-in model on the CPU and a data dir in tmp.

The servers share one models folder of their own: the built-in checkpoint plus two tiny
random-weight upscalers (an ESRGAN-folder model and a RealESRGAN-folder model)."""
from __future__ import annotations

import base64
import io
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from backend.context import AppContext
from backend.models import builtin
from tests.backend.postprocess.tiny_weights import compact_state_dict, save_weights
from tests.live_server import running_server

OTHER_MODEL = "other-model.safetensors"
# The tiny model upscalers in the servers' models folder: (name, file under models/, scale).
TINY_UPSCALER = ("tiny-2x", "ESRGAN/tiny-2x.pth", 2)
TINY_REALESRGAN = ("R-ESRGAN General 4xV3", "RealESRGAN/realesr-general-x4v3.pth", 4)

# Small and quick: every generation in this suite is 64x64 with a few steps.
TINY: dict[str, Any] = {"prompt": "a cozy cabin", "negative_prompt": "blurry", "steps": 3, "width": 64, "height": 64,
                        "seed": 42, "sampler_name": "Euler a", "cfg_scale": 7}


@dataclass
class LiveServer:
    """A running server: its base URL, context and app."""

    url: str
    ctx: AppContext
    app: Any

    def api(self, path: str) -> str:
        return f"{self.url}/sdapi/v1{path}"

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/sdapi/v1", timeout=120, **kw)


@contextmanager
def serve(args: list[str], data_dir: Path, models_dir: Path) -> Iterator[LiveServer]:
    """Start webui's app with these flags in a thread; stop it (and its job queue) on exit."""
    with running_server(args, data_dir, models_dir) as (url, ctx, app):
        yield LiveServer(url, ctx, app)


@pytest.fixture(scope="session")
def api_models_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """The test servers' --models-dir: the built-in checkpoint and the tiny upscalers."""
    root = tmp_path_factory.mktemp("api-models")
    checkpoint = Path(builtin.CHECKPOINT_SUBDIR) / builtin.DEFAULT_MODEL_FILENAME
    (root / checkpoint).parent.mkdir(parents=True)
    shutil.copy(models_dir / checkpoint, root / checkpoint)
    for seed, (_, relative, scale) in enumerate((TINY_UPSCALER, TINY_REALESRGAN)):
        save_weights(compact_state_dict(scale=scale, seed=seed), root / relative)
    return root


@pytest.fixture(scope="session")
def extra_ckpt_dir(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A --ckpt-dir holding a second checkpoint (a copy of the built-in one under another name)."""
    root = tmp_path_factory.mktemp("extra-ckpts")
    shutil.copy(models_dir / builtin.CHECKPOINT_SUBDIR / builtin.DEFAULT_MODEL_FILENAME, root / OTHER_MODEL)
    return root


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, api_models_dir: Path,
           extra_ckpt_dir: Path) -> Iterator[LiveServer]:
    """The API-only server most tests share (no auth). Tests that change options put them back."""
    with serve(["--nowebui", "--ckpt-dir", str(extra_ckpt_dir)], tmp_path_factory.mktemp("data"),
               api_models_dir) as live:
        yield live


@pytest.fixture
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def start_server(tmp_path_factory: pytest.TempPathFactory,
                 api_models_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start extra servers with other flags inside one test; all are stopped at its end."""
    with ExitStack() as stack:
        def start(*args: str) -> LiveServer:
            return stack.enter_context(serve(list(args), tmp_path_factory.mktemp("data"), api_models_dir))

        yield start


def wait_until(predicate: Callable[[], Any], timeout: float = 60, interval: float = 0.02) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


def b64_png(image: Image.Image, **text: str) -> str:
    """`image` as a base64 PNG, with `text` as PNG text chunks (e.g. parameters=...)."""
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def open_b64(data: str) -> Image.Image:
    """A base64 image from a response, loaded (its text chunks in .info)."""
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    image.load()
    return image


def gradient(width: int = 64, height: int = 64) -> Image.Image:
    """A smooth RGB test picture: red grows left to right, green top to bottom."""
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    rgb = np.stack([np.broadcast_to(x, (height, width)), np.broadcast_to(y, (height, width)),
                    np.full((height, width), 90, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))
