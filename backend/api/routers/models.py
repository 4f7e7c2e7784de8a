"""What can be chosen: checkpoints, VAEs, samplers, schedulers, upscalers and the other model lists.

Lists of things this version does not have yet (VAE files, hypernetworks, LoRA, embeddings,
face restorers, model upscalers) are empty, in A1111's shapes, so clients can read them.
"""
from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.models import (
    EmbeddingsResponse,
    FaceRestorerItem,
    HypernetworkItem,
    LatentUpscalerModeItem,
    LoraItem,
    PromptStyleItem,
    RealesrganItem,
    SamplerItem,
    SchedulerItem,
    SDModelItem,
    SDVaeItem,
    UpscalerItem,
)
from backend.api.routers.options import switch_model
from backend.sampling.registry import SAMPLERS, SCHEDULERS

router = APIRouter(tags=["models"])

# A1111's non-model upscalers, listed first; A1111's default scale for an upscaler entry is 4.
BUILTIN_UPSCALERS = ("None", "Lanczos", "Nearest")

# A1111's latent upscale modes for the hires fix (shared.latent_upscale_modes), in its order.
LATENT_UPSCALE_MODES = ("Latent", "Latent (antialiased)", "Latent (bicubic)", "Latent (bicubic antialiased)",
                        "Latent (nearest)", "Latent (nearest-exact)")


@router.get("/sd-models", response_model=list[SDModelItem])
def sd_models(ctx: Ctx) -> list[SDModelItem]:
    """The checkpoints found in the model folders (titles as `sd_model_checkpoint` takes them)."""
    return [SDModelItem(title=info.title, model_name=info.model_name, hash=info.shorthash, sha256=info.sha256,
                        filename=str(info.filename), config=str(info.config) if info.config else None)
            for info in ctx.registry.list()]


@router.post("/refresh-checkpoints")
def refresh_checkpoints(ctx: Ctx) -> None:
    """Scan the model folders again."""
    ctx.registry.refresh()


@router.post("/unload-checkpoint")
def unload_checkpoint(ctx: Ctx) -> dict:
    """Free the loaded model(s) after the running job; the selection is kept."""
    ctx.queue.submit("unload-model", lambda state: ctx.models.unload_all()).wait()
    return {}


@router.post("/reload-checkpoint")
def reload_checkpoint(ctx: Ctx) -> dict:
    """Load the selected model (`sd_model_checkpoint`) again, e.g. after unload-checkpoint."""
    selected = ctx.options["sd_model_checkpoint"] or ctx.startup_checkpoint()
    if selected:
        ctx.options.set("sd_model_checkpoint", switch_model(ctx, selected))
    return {}


@router.get("/sd-vae", response_model=list[SDVaeItem])
def sd_vae() -> list[SDVaeItem]:
    """Separate VAE files: none yet (each checkpoint's own VAE is used)."""
    return []


@router.post("/refresh-vae")
def refresh_vae() -> None:
    """Nothing to rescan yet."""


@router.get("/samplers", response_model=list[SamplerItem])
def get_samplers() -> list[SamplerItem]:
    """Every sampler, in A1111's order, with its aliases and options."""
    return [SamplerItem(name=s.name, aliases=list(s.aliases),
                        options={k: str(v) for k, v in s.api_options().items()}) for s in SAMPLERS]


@router.get("/schedulers", response_model=list[SchedulerItem])
def get_schedulers() -> list[SchedulerItem]:
    """Every schedule type (name, label, aliases)."""
    return [SchedulerItem(**s.api_dict()) for s in SCHEDULERS]


@router.get("/upscalers", response_model=list[UpscalerItem])
def get_upscalers() -> list[UpscalerItem]:
    """A1111's built-in upscalers; model upscalers (ESRGAN, ...) come with the Extras feature."""
    return [UpscalerItem(name=name, model_name=None, model_path=None, model_url=None, scale=4)
            for name in BUILTIN_UPSCALERS]


@router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
def latent_upscale_modes() -> list[LatentUpscalerModeItem]:
    """The latent upscale modes of A1111's hires fix."""
    return [LatentUpscalerModeItem(name=name) for name in LATENT_UPSCALE_MODES]


@router.get("/hypernetworks", response_model=list[HypernetworkItem])
def hypernetworks() -> list[HypernetworkItem]:
    """Hypernetworks: none yet."""
    return []


@router.get("/face-restorers", response_model=list[FaceRestorerItem])
def face_restorers() -> list[FaceRestorerItem]:
    """Face restorers (CodeFormer, GFPGAN): none yet."""
    return []


@router.get("/realesrgan-models", response_model=list[RealesrganItem])
def realesrgan_models() -> list[RealesrganItem]:
    """RealESRGAN models: none yet."""
    return []


@router.get("/prompt-styles", response_model=list[PromptStyleItem])
def prompt_styles() -> list[PromptStyleItem]:
    """Saved prompt styles: none yet."""
    return []


@router.get("/embeddings", response_model=EmbeddingsResponse)
def embeddings() -> EmbeddingsResponse:
    """Textual-inversion embeddings: none yet."""
    return EmbeddingsResponse()


@router.post("/refresh-embeddings")
def refresh_embeddings() -> None:
    """Nothing to rescan yet."""


@router.get("/loras", response_model=list[LoraItem])
def loras() -> list[LoraItem]:
    """LoRA networks: none yet."""
    return []


@router.post("/refresh-loras")
def refresh_loras() -> None:
    """Nothing to rescan yet."""
