"""Memory, scripts and extensions, and A1111's training routes we do not have."""
from __future__ import annotations

import os
from typing import Any

import torch
from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.errors import NotAvailable
from backend.api.models import ExtensionItem, MemoryResponse, ScriptInfo, ScriptsList
from backend.devices import DevicePolicy

router = APIRouter(tags=["misc"])

_NOT_YET = {404: {"description": "Not available yet in this version"}}


@router.get("/memory", response_model=MemoryResponse)
def memory(ctx: Ctx) -> MemoryResponse:
    """RAM of this process and of the machine; device memory when generating on CUDA (A1111's shape)."""
    return MemoryResponse(ram=_ram(), cuda=_device_memory(ctx.devices))


def _ram() -> dict[str, Any]:
    try:
        import psutil  # installed with accelerate; optional here

        used = psutil.Process(os.getpid()).memory_info().rss
        machine = psutil.virtual_memory()
        return {"free": machine.available, "used": used, "total": machine.total}
    except Exception as e:  # noqa: BLE001 - A1111 reports the failure in the body instead of failing
        return {"error": str(e)}


def _device_memory(devices: DevicePolicy) -> dict[str, Any]:
    if not devices.is_cuda:
        return {"error": "unavailable"}
    free, total = torch.cuda.mem_get_info(devices.device)
    stats = torch.cuda.memory_stats(devices.device)

    def pair(name: str) -> dict[str, int]:
        return {"current": int(stats.get(f"{name}.all.current", 0)), "peak": int(stats.get(f"{name}.all.peak", 0))}

    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": pair("active_bytes"),
        "allocated": pair("allocated_bytes"),
        "reserved": pair("reserved_bytes"),
        "inactive": pair("inactive_split_bytes"),
        "events": {"retries": int(stats.get("num_alloc_retries", 0)), "oom": int(stats.get("num_ooms", 0))},
    }


@router.get("/scripts", response_model=ScriptsList)
def scripts(ctx: Ctx) -> ScriptsList:
    """Every script by tab, lower-case titles (A1111 lists always-on and selectable ones alike)."""
    return ScriptsList(txt2img=[s.name for s in ctx.scripts.txt2img.scripts],
                       img2img=[s.name for s in ctx.scripts.img2img.scripts])


@router.get("/script-info", response_model=list[ScriptInfo])
def script_info(ctx: Ctx) -> list[ScriptInfo]:
    """Each script's arguments (label, default value, range, choices), txt2img then img2img."""
    return [ScriptInfo(**info) for runner in (ctx.scripts.txt2img, ctx.scripts.img2img)
            for info in runner.script_info()]


@router.get("/extensions", response_model=list[ExtensionItem])
def extensions(ctx: Ctx) -> list[ExtensionItem]:
    """Installed extensions (built-in and user); no git details, since nothing is installed from remotes."""
    return [ExtensionItem(name=e.name, remote="", branch="", commit_hash="", version=e.version, commit_date=0,
                          enabled=e.enabled) for e in ctx.scripts.extensions]


@router.post("/create/embedding", responses=_NOT_YET)
def create_embedding() -> None:
    """Not available yet."""
    raise NotAvailable("POST /sdapi/v1/create/embedding", "embedding training")


@router.post("/create/hypernetwork", responses=_NOT_YET)
def create_hypernetwork() -> None:
    """Not available yet."""
    raise NotAvailable("POST /sdapi/v1/create/hypernetwork", "hypernetwork training")


@router.post("/train/embedding", responses=_NOT_YET)
def train_embedding() -> None:
    """Not available yet."""
    raise NotAvailable("POST /sdapi/v1/train/embedding", "embedding training")


@router.post("/train/hypernetwork", responses=_NOT_YET)
def train_hypernetwork() -> None:
    """Not available yet."""
    raise NotAvailable("POST /sdapi/v1/train/hypernetwork", "hypernetwork training")
