"""Entry point: flags -> AppContext -> app -> serve.

    ./webui.sh [A1111 flags]     e.g. ./webui.sh --listen --port 7861
"""
from __future__ import annotations

import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    # Never reach the internet: no hub look-ups, no analytics (set before gradio/diffusers import).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from backend.config import Settings
    from backend.context import AppContext
    from backend.errors import WebUIError
    from ui.app import create_app

    try:
        settings = Settings.from_args(sys.argv[1:] if argv is None else argv)
        ctx = AppContext.build(settings)
        if not settings.ui_debug_mode and not settings.skip_load_model_at_start:
            info, _ = ctx.models.get(ctx.startup_checkpoint())
            ctx.options.set("sd_model_checkpoint", info.title)
    except WebUIError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if settings.listen and not settings.gradio_auth and not settings.api_auth:
        logging.warning("--listen without --gradio-auth/--api-auth: anyone on your network can use this server")
    app = create_app(ctx)
    print(f"Running on http://{settings.bind_host}:{settings.bind_port}{settings.subpath or ''}/", flush=True)
    uvicorn.run(app, host=settings.bind_host, port=settings.bind_port, root_path=settings.subpath or "",
                timeout_keep_alive=settings.timeout_keep_alive, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
