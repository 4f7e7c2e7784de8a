"""The page loads over plain HTTP, and neither building nor serving the UI reaches for the internet."""
from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ui.conftest import serve_ui


def _is_loopback(address: Any) -> bool:
    host = address[0] if isinstance(address, tuple) else address
    if isinstance(host, str) and host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return not isinstance(host, str) or host.startswith("/")  # a unix socket path


def test_page_loads_without_outbound_connections(tmp_path: Path, models_dir: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert os.environ["GRADIO_ANALYTICS_ENABLED"] == "False" and os.environ["HF_HUB_OFFLINE"] == "1"
    outbound: list[Any] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def guarded_connect(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            outbound.append(address)
            raise OSError("outbound connection refused by the test")
        return real_connect(sock, address)

    def guarded_getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_loopback(host if isinstance(host, str) else host.decode()):
            outbound.append(host)
            raise socket.gaierror("name lookup refused by the test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)

    with serve_ui(tmp_path, models_dir) as server:
        page = httpx.get(server.url + "/")
        assert page.status_code == 200 and "gradio" in page.text.lower()
        config = httpx.get(server.url + "/config").json()
        elem_ids = {c.get("props", {}).get("elem_id") for c in config["components"]}
        assert {"txt2img_prompt", "txt2img_generate", "txt2img_gallery", "img2img_image", "extras_image",
                "pnginfo_image", "settings_submit", "setting_sd_model_checkpoint"} <= elem_ids
        assert config["analytics_enabled"] is False
        assert httpx.get(server.url + "/gradio_api/info").status_code == 200

    assert outbound == []

