"""A real webui server for the HTTP and browser tests: webui.py's own app on a free port, in a thread."""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(args: list[str], data_dir: Path, models_dir: Path) -> Iterator[tuple[str, Any, Any]]:
    """Start webui's app with these flags; yield (base url, AppContext, app); stop it and its queue on exit."""
    import webui
    from backend.config import Settings
    from backend.devices import DevicePolicy

    port = free_port()
    settings = Settings.from_args(["--data-dir", str(data_dir), "--models-dir", str(models_dir),
                                   "--port", str(port), *args], env={})
    ctx = webui.prepare(settings, DevicePolicy.cpu())
    app = webui.build_app(ctx)
    server = webui.make_server(app, settings)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", ctx, app
    finally:
        server.should_exit = True
        thread.join(30)
