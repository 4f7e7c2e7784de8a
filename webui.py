"""Entry point: flags -> AppContext -> app (API and/or UI) -> serve.

    ./webui.sh [A1111 flags]     e.g. ./webui.sh --listen --port 7861
    ./webui.sh --api             UI on / and the API on /sdapi/v1, same port (7860)
    ./webui.sh --nowebui         the API alone (port 7861)
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import uvicorn
    from fastapi import FastAPI

    from backend.config import Settings
    from backend.context import AppContext
    from backend.devices import DevicePolicy


def prepare(settings: Settings, devices: DevicePolicy | None = None) -> AppContext:
    """Build every service and load the start-up model (unless --ui-debug-mode / --skip-load-model-at-start)."""
    from backend.context import AppContext

    ctx = AppContext.build(settings, devices)
    if not settings.ui_debug_mode and not settings.skip_load_model_at_start:
        info, _ = ctx.models.get(ctx.startup_checkpoint())
        ctx.options.set("sd_model_checkpoint", info.title)
    return ctx


def build_app(ctx: AppContext) -> FastAPI:
    """The API app (routes under /sdapi/v1 with --api or --nowebui) with the UI mounted unless --nowebui."""
    from backend.api.app import create_app

    settings = ctx.settings
    app = create_app(ctx, serve_api=settings.api or settings.nowebui)
    if settings.nowebui:
        ctx.scripts.callbacks.fire("app_started", None, app)
        return app
    # Imported here so an API-only server never builds the UI.
    from ui.app import build_ui, mount_ui

    blocks = build_ui(ctx)
    # Extensions add their routes now, before the UI takes every path no earlier route matches.
    ctx.scripts.callbacks.fire("app_started", blocks, app)
    mount_ui(app, ctx, blocks)
    return app


def root_path(settings: Settings) -> str:
    """--subpath as uvicorn's root_path: "sd" and "/sd/" both give "/sd" (A1111 adds the slash too).

    As in A1111, the proxy strips the prefix: routes stay at /sdapi/v1, and /docs links under it.
    """
    return "/" + settings.subpath.strip("/") if settings.subpath and settings.subpath.strip("/") else ""


def make_server(app: FastAPI, settings: Settings) -> uvicorn.Server:
    """The uvicorn server for `app` with the serving flags; /server-stop is wired to it."""
    import uvicorn

    config = uvicorn.Config(
        app, host=settings.bind_host, port=settings.bind_port, root_path=root_path(settings),
        timeout_keep_alive=settings.timeout_keep_alive, log_level="warning",
        ssl_keyfile=settings.extra.get("tls_keyfile"), ssl_certfile=settings.extra.get("tls_certfile"),
    )
    server = uvicorn.Server(config)
    control = app.state.server_control
    control.server = server
    app.state.ctx.request_restart = control.restart
    return server


def _user_extensions_dir(args: Any) -> Path:
    """<data dir>/extensions from the partly parsed flags (extensions' preload.py runs before parsing ends)."""
    from backend.config import PROJECT_ROOT

    return (Path(args.data_dir).expanduser().resolve() if args.data_dir else PROJECT_ROOT) / "extensions"


def main(argv: list[str] | None = None) -> int:
    # Never reach the internet: no hub look-ups, no analytics (set before gradio/diffusers import).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from backend.config import Settings
    from backend.errors import WebUIError
    from backend.scripts import preload_extensions

    try:
        settings = Settings.from_args(sys.argv[1:] if argv is None else argv,
                                      preload=preload_extensions(_user_extensions_dir))
    except WebUIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings.listen and not settings.gradio_auth and not settings.gradio_auth_path and not settings.api_auth:
        logging.warning("--listen without --gradio-auth or --api-auth: anyone who can reach this machine "
                        "can use the server%s", " and its API" if settings.api or settings.nowebui else "")
    # A restart (Extensions tab "Apply and restart", /server-restart) rebuilds everything in this
    # process: extensions, options, models, UI; the flags stay.
    while True:
        try:
            ctx = prepare(settings)
            app = build_app(ctx)
        except WebUIError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        server = make_server(app, settings)
        scheme = "https" if settings.extra.get("tls_keyfile") else "http"
        what = "API" if settings.nowebui else ("UI and API" if settings.api else "UI")
        print(f"Running on {scheme}://{settings.bind_host}:{settings.bind_port}/ ({what})", flush=True)
        server.run()
        if not app.state.server_control.restart_requested:
            return 0
        print("Restarting...", flush=True)


if __name__ == "__main__":
    sys.exit(main())
