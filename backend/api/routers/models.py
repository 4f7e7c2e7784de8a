"""What can be chosen: checkpoints, VAEs, samplers, schedulers, upscalers, face restorers and the other lists.

Lists of things this version does not have yet (hypernetworks) are empty, in A1111's shapes, so
clients can read them.
"""
from __future__ import annotations

from fastapi import APIRouter

from backend.api.deps import Ctx
from backend.api.models import (
    EmbeddingItem,
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
from backend.postprocess.upscalers import LATENT_UPSCALE_MODES
from backend.sampling.registry import SAMPLERS, SCHEDULERS

router = APIRouter(tags=["models"])

# The folder whose upscalers /realesrgan-models lists (A1111: the RealESRGAN family).
REALESRGAN_FOLDER = "RealESRGAN"


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
        job = ctx.switch_checkpoint(selected)
        if job is not None:
            job.wait()
    return {}


@router.get("/sd-vae", response_model=list[SDVaeItem])
def sd_vae(ctx: Ctx) -> list[SDVaeItem]:
    """The separate VAE files (`model_name` is what `sd_vae` takes, `filename` the full path)."""
    return [SDVaeItem(model_name=vae.name, filename=str(vae.filename)) for vae in ctx.models.vaes.list()]


@router.post("/refresh-vae")
def refresh_vae(ctx: Ctx) -> None:
    """Scan the VAE folders again."""
    ctx.models.vaes.refresh()


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
def get_upscalers(ctx: Ctx) -> list[UpscalerItem]:
    """None, Lanczos, Nearest, then the model files found in models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ScuNET.

    model_name is the family (the models/ folder), model_path the file, model_url always null (we
    never download) and scale the model's factor (A1111's default 4 for the built-in ones).
    """
    return [UpscalerItem(name=info.name, model_name=info.folder or None,
                         model_path=str(info.path) if info.path else None, model_url=None, scale=info.scale)
            for info in ctx.upscalers.list()]


@router.get("/latent-upscale-modes", response_model=list[LatentUpscalerModeItem])
def latent_upscale_modes() -> list[LatentUpscalerModeItem]:
    """The latent upscale modes of the hires fix (hr_upscaler), in A1111's order."""
    return [LatentUpscalerModeItem(name=mode.name) for mode in LATENT_UPSCALE_MODES]


@router.get("/hypernetworks", response_model=list[HypernetworkItem])
def hypernetworks() -> list[HypernetworkItem]:
    """Hypernetworks: none yet."""
    return []


@router.get("/face-restorers", response_model=list[FaceRestorerItem])
def face_restorers(ctx: Ctx) -> list[FaceRestorerItem]:
    """CodeFormer and GFPGAN (A1111 lists both whether or not their weights are on disk); cmd_dir is their folder."""
    return [FaceRestorerItem(name=info.name, cmd_dir=str(info.folder)) for info in ctx.face_restorers.list()]


@router.get("/realesrgan-models", response_model=list[RealesrganItem])
def realesrgan_models(ctx: Ctx) -> list[RealesrganItem]:
    """The upscalers of models/RealESRGAN (A1111 lists its download URLs; we list the files on disk)."""
    return [RealesrganItem(name=info.name, path=str(info.path), scale=info.scale)
            for info in ctx.upscalers.list() if info.folder == REALESRGAN_FOLDER]


@router.get("/prompt-styles", response_model=list[PromptStyleItem])
def prompt_styles(ctx: Ctx) -> list[PromptStyleItem]:
    """The styles of styles.csv (and any --styles-file), as the UI's Styles dropdown lists them."""
    return [PromptStyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt)
            for s in ctx.styles.styles.values()]


@router.get("/embeddings", response_model=EmbeddingsResponse)
def embeddings(ctx: Ctx) -> EmbeddingsResponse:
    """Textual-inversion embeddings of the embeddings folder: `loaded` are those the model in use takes,
    `skipped` those made for another architecture (all are `loaded` until a model has been loaded)."""
    loaded, skipped = ctx.embeddings.listing()
    return EmbeddingsResponse(loaded={name: EmbeddingItem(**e.api_json()) for name, e in loaded.items()},
                              skipped={name: EmbeddingItem(**e.api_json()) for name, e in skipped.items()})


@router.post("/refresh-embeddings")
def refresh_embeddings(ctx: Ctx) -> None:
    """Scan the embeddings folder again."""
    ctx.embeddings.refresh()


@router.get("/loras", response_model=list[LoraItem])
def loras(ctx: Ctx) -> list[LoraItem]:
    """LoRA/LyCORIS networks found in models/Lora, models/LyCORIS and --lora-dir."""
    return [LoraItem(**info.api_json()) for info in ctx.networks.registry.list()]


@router.post("/refresh-loras")
def refresh_loras(ctx: Ctx) -> None:
    """Rescan the network folders."""
    ctx.networks.registry.refresh()
