"""A1111's extra-networks routes, outside /sdapi/v1: card thumbnails, network metadata and single cards.

    GET /sd_extra_networks/thumb?filename=<path>                        the preview image file
    GET /sd_extra_networks/metadata?page=lora&item=<name>               {"metadata": "<JSON text>"}
    GET /sd_extra_networks/get-single-card?page=lora&tabname=&name=     {"html": "<card markup>"}
    GET /sd_extra_networks/cards?page=lora&tabname=                     every card and the folder tree, as HTML

The last one is ours: the Lora page fetches its cards with it when it opens and after a refresh,
straight into the page, so thousands of cards never travel through Gradio's component updates.

They belong to the UI: A1111 adds them with the UI (never with --nowebui), and so do we, with or
without --api. Who may call them is whoever the UI lets in:
- with --gradio-auth / --gradio-auth-path, a browser logged in to the UI (its session cookie) or a
  client sending --api-auth credentials;
- without a UI login, anyone, because the open UI shows the same cards, pictures and metadata to anyone
  who can load it; --api-auth alone does not close them, or every thumbnail of the open UI would ask
  the browser for the API password.
That is why they live on a small application of their own, mounted at /sd_extra_networks: the main
app's --api-auth dependency covers every route added to it. A1111 leaves these routes open even with
--gradio-auth.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.security import HTTPBasicCredentials

from backend.api.auth import CHALLENGE, SCHEME, BasicAuth
from backend.api.deps import Ctx
from backend.api.errors import install_error_handlers
from backend.context import AppContext
from backend.errors import InvalidRequest, ModelNotFound
from backend.networks import cards
from backend.networks.registry import NetworkInfo

PREFIX = "/sd_extra_networks"
PAGES = ("lora",)  # A1111's page names this version has
# The card markup carries the tab name into element ids; only plain names are taken.
_TABNAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The URL carries the preview's mtime, so a replaced preview gets a new URL.
_THUMB_HEADERS = {"Accept-Ranges": "bytes", "Cache-Control": "private, max-age=3600"}

router = APIRouter(tags=["extra networks"])


class UiAccess:
    """The routes' guard: lets in whoever the UI lets in (see the module docstring).

    `ui_login` comes from the flags; `session_user(request)` (the user name of a logged-in UI
    session, or None) is installed by the UI when it mounts. Until then a UI with a login lets no
    session in (fail closed).
    """

    def __init__(self, api_credentials: dict[str, str], ui_login: bool) -> None:
        self.basic = BasicAuth(api_credentials)
        self.ui_login = ui_login
        self.session_user: Callable[[Request], str | None] | None = None

    def __call__(self, request: Request, given: Annotated[HTTPBasicCredentials | None, Depends(SCHEME)]) -> None:
        """Return when the request may go on; 401 otherwise."""
        if not self.ui_login:
            return
        if self.session_user is not None and self.session_user(request):
            return
        if self.basic.accepts(given):
            return
        raise HTTPException(401, "Not authenticated: log in to the UI or send the --api-auth credentials",
                            headers=CHALLENGE if self.basic.credentials else None)


def create_app(ctx: AppContext, api_credentials: dict[str, str]) -> FastAPI:
    """The application to mount at PREFIX; its guard is `app.state.ui_access`."""
    settings = ctx.settings
    access = UiAccess(api_credentials, ui_login=bool(settings.gradio_auth or settings.gradio_auth_path))
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None, dependencies=[Depends(access)])
    app.state.ctx = ctx
    app.state.ui_access = access
    install_error_handlers(app)
    app.include_router(router)
    return app


@router.get("/thumb", response_class=FileResponse)
def thumb(ctx: Ctx, filename: str = "") -> FileResponse:
    """A preview image inside the network or model folders: 403 for anything else, 404 if missing."""
    roots = [*ctx.networks.registry.dirs, *ctx.registry.model_dirs]
    return FileResponse(cards.thumbnail_file(filename, roots, ctx.networks.registry), headers=_THUMB_HEADERS)


@router.get("/metadata")
def metadata(ctx: Ctx, page: str = "", item: str = "") -> dict[str, str]:
    """The network's safetensors metadata as indented JSON text (embedded cover images left out, as A1111)."""
    info = _network(ctx, page, item, "item")
    shown = {key: value for key, value in info.metadata.items() if key != "ssmd_cover_images"}
    return {"metadata": json.dumps(shown, indent=4, ensure_ascii=False)}


@router.get("/get-single-card")
def get_single_card(ctx: Ctx, page: str = "", tabname: str = "", name: str = "") -> dict[str, str]:
    """One card's markup as it is now (the UI swaps it in after an edit)."""
    _check_tabname(tabname)
    info = _network(ctx, page, name, "name")
    return {"html": cards.card_html(cards.make_card(ctx.networks.registry, info, **cards.card_settings(ctx.options)))}


@router.get("/cards", response_class=HTMLResponse)
def all_cards(ctx: Ctx, page: str = "", tabname: str = "") -> HTMLResponse:
    """Every card of the page with its folder tree, from the current listing (the refresh button rescans)."""
    _check_page(page)
    _check_tabname(tabname)
    registry = ctx.networks.registry
    listed = cards.list_cards(registry, **cards.card_settings(ctx.options))
    return HTMLResponse(cards.page_html(listed, tabname, registry.dirs))


def _check_page(page: str) -> None:
    if page not in PAGES:
        raise ModelNotFound("extra networks page", page, list(PAGES))


def _check_tabname(tabname: str) -> None:
    if not _TABNAME.fullmatch(tabname):
        raise InvalidRequest("tabname", f"must be a tab name such as txt2img, got {tabname!r}")


def _network(ctx: AppContext, page: str, name: str, field: str) -> NetworkInfo:
    _check_page(page)
    if not name:
        raise InvalidRequest(field, "is required")
    return cards.find_network(ctx.networks.registry, name)
