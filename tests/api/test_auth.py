"""--api-auth: HTTP Basic on every API route, including routes added after start-up."""
from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from backend.api.auth import parse_credentials
from backend.errors import InvalidRequest
from tests.api.conftest import TINY, LiveServer, serve

USERS = "alice:s3cret:with:colons,bob:pw2"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[LiveServer]:
    # --api-server-stop too, so the server-* routes are among those checked (never called with credentials).
    with serve(["--nowebui", "--api-auth", USERS, "--api-server-stop"], tmp_path_factory.mktemp("data"),
               models_dir) as live:
        yield live


def _api_routes(server: LiveServer) -> list[tuple[str, str]]:
    """Every route the app documents, with path parameters filled in."""
    routes = []
    for path, operations in server.app.openapi()["paths"].items():
        routes += [(method.upper(), re.sub(r"\{[^}]+\}", "some-id", path)) for method in operations]
    return routes


def test_every_api_route_requires_auth(auth_server: LiveServer) -> None:
    routes = _api_routes(auth_server)
    assert len(routes) > 40 and ("POST", "/sdapi/v1/server-kill") in routes
    with httpx.Client(base_url=auth_server.url, timeout=30) as c:
        for method, path in routes:
            for auth in (None, ("alice", "wrong"), ("mallory", "s3cret:with:colons")):
                r = c.request(method, path, auth=auth)
                assert r.status_code == 401, (method, path, auth, r.status_code)
                assert r.headers["www-authenticate"] == "Basic"
                assert r.json()["error"] == "HTTPException"


def test_right_credentials_get_in(auth_server: LiveServer) -> None:
    with auth_server.client(auth=("alice", "s3cret:with:colons")) as c:
        assert c.get("/options").status_code == 200
        r = c.post("/txt2img", json=TINY)
        assert r.status_code == 200 and len(r.json()["images"]) == 1
    with auth_server.client(auth=("bob", "pw2")) as c:
        assert c.get("/sd-models").status_code == 200
        flags = c.get("/cmd-flags").json()
        assert flags["api_auth"] is None  # never revealed, even to a logged-in user
        assert "s3cret" not in c.get("/cmd-flags").text


def test_routes_added_later_are_protected_too(auth_server: LiveServer) -> None:
    # As an extension would add them, after the app was built: directly on the app.
    auth_server.app.get("/sdapi/v1/added-by-extension")(lambda: {"ok": True})
    auth_server.app.get("/my-extension/version")(lambda: {"version": 1})
    with httpx.Client(base_url=auth_server.url) as c:
        for path in ("/sdapi/v1/added-by-extension", "/my-extension/version"):
            assert c.get(path).status_code == 401
            assert c.get(path, auth=("bob", "pw2")).status_code == 200


def test_docs_stay_open(auth_server: LiveServer) -> None:
    assert httpx.get(auth_server.url + "/docs").status_code == 200
    schema = httpx.get(auth_server.url + "/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBasic"]["scheme"] == "basic"


def test_empty_authorization_header_is_fine_without_auth(server: LiveServer) -> None:
    # Open WebUI always sends `authorization: ''` when no credentials are configured.
    r = httpx.get(server.api("/options"), headers={"Authorization": ""})
    assert r.status_code == 200


def test_parse_credentials() -> None:
    assert parse_credentials("a:b, c:d:e,") == {"a": "b", "c": "d:e"}
    assert parse_credentials(None) == {}
    with pytest.raises(InvalidRequest, match="--api-auth"):
        parse_credentials("justaname")
