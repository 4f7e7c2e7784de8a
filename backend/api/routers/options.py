"""Settings: GET/POST /sdapi/v1/options and the command-line flags."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.models import OptionsModel
from backend.config import build_arg_parser, coerce_option

router = APIRouter(tags=["options"])

# Flags whose values are credentials: listed, but never shown.
SECRET_FLAGS = ("api_auth", "gradio_auth")

# Settings fields whose flag has another name.
_FLAG_NAMES = {"settings_file": "ui_settings_file", "ckpt_dirs": "ckpt_dir"}


@router.get("/options", response_model=OptionsModel)
def get_options(ctx: Ctx) -> dict[str, Any]:
    """Every option: A1111's defaults, overridden by config.json (unknown keys included)."""
    return dict(ctx.options.items())


@router.post("/options")
def set_options(body: dict[str, Any], ctx: Ctx) -> None:
    """Change options and save config.json. Accepts back exactly what GET returned.

    Every value is checked first (422 naming the key), so a bad request changes nothing.
    Setting `sd_model_checkpoint` loads that model (through the job queue, after the
    running job) and stores its title; an unknown model is a 404.
    """
    values = {key: coerce_option(key, value) for key, value in body.items()}
    checkpoint = values.pop("sd_model_checkpoint", None)
    if checkpoint is not None:
        # The UI's checkpoint dropdown takes the same path; the option is stored once the model loaded.
        job = ctx.switch_checkpoint(str(checkpoint))
        if job is not None:
            job.wait()
    for key, value in values.items():
        ctx.options.set(key, value)
    ctx.options.save()


@router.get("/cmd-flags")
def cmd_flags(ctx: Ctx) -> dict[str, Any]:
    """Every flag with its value (A1111's vars(cmd_opts)); credentials are never shown."""
    flags: dict[str, Any] = vars(build_arg_parser().parse_args([]))
    settings = ctx.settings
    for name in settings.__dataclass_fields__:
        if name == "extra":
            continue
        value = getattr(settings, name)
        if name == "ckpt_dirs":
            value = value[0] if value else None
        flags[_FLAG_NAMES.get(name, name)] = value
    flags.update(settings.extra)
    for name in SECRET_FLAGS:
        flags[name] = None
    return {key: _jsonable(value) for key, value in flags.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value
