"""Checkpoint file or diffusers folder -> `LoadedModel` (diffusers UNet and VAE, transformers text encoders).

Single-file checkpoints (`.safetensors`, `.ckpt`, `.pt`, original ldm/A1111 layout) are loaded fully
offline:
1. read the state dict (`.ckpt`/`.pt` only through `torch.load(weights_only=True)`),
2. detect the family from key names and shapes (`families.detect_family`),
3. derive the component configs from the family's shipped full-size configs, with the widths read
   from the tensors (so smaller checkpoints of the same architecture load too),
4. convert the tensors with diffusers' own single-file conversion functions and load them strictly,
   so a missing or misshapen tensor is an error rather than a silently random weight,
5. for SD2, probe the UNet to tell 768-v from 512-epsilon files, as A1111 does.

Diffusers-format folders (with `model_index.json`) are loaded with `from_pretrained(local_files_only=True)`.
All families use the CLIP tokenizer built from open-clip-torch's vocabulary (`tokenizers.py`).

Every load also writes (once) a complete diffusers-format config folder for the loaded architecture under
`cache_dir`, so that plain diffusers can load the same file offline with
`StableDiffusionPipeline.from_single_file(path, config=loaded.config_dir)` (used by the benchmark).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.errors import ModelLoadError
from backend.models.families import (
    UNET_PREFIX,
    VAE_PREFIX,
    Family,
    TextEncoderDims,
    TextEncoderSpec,
    UNetDims,
    VaeDims,
    describe_keys,
    detect_family,
    detect_family_from_diffusers,
    family_by_name,
    normalise_key,
    read_config,
    text_encoder_config,
    unet_config,
    vae_config,
)
from backend.models.tokenizers import build_clip_tokenizer

logger = logging.getLogger(__name__)

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt")


@dataclass
class LoadedModel:
    """A checkpoint's components, ready for sampling.

    `alphas_cumprod` is float32, computed in float64 and then rounded, exactly like the buffer the ldm
    model (and so A1111/k-diffusion) derives its sigmas from.
    """

    family: Family
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    text_encoder_2: Any | None  # transformers CLIPTextModelWithProjection (SDXL)
    tokenizer: Any  # transformers CLIPTokenizer
    tokenizer_2: Any | None
    prediction_type: str  # "epsilon" | "v_prediction"
    alphas_cumprod: Tensor
    vae_scaling_factor: float
    latent_channels: int
    is_sdxl: bool
    is_inpaint: bool
    checkpoint_path: Path
    config_dir: Path


# ---- 1. reading -------------------------------------------------------------------------------------

def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a single-file checkpoint on the CPU, unwrapped from a `state_dict` key if present.

    `.ckpt`/`.pt` (and `.pth`/`.bin`, as ControlNet and annotator weights are named) files are unpickled
    with `weights_only=True`; a pickle that needs other objects is
    refused (A1111's --disable-safe-unpickle has no equivalent here).
    """
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError and OSError types
            raise ModelLoadError(f"{path.name}: cannot read safetensors file ({exc})") from exc
    elif suffix in (".ckpt", ".pt", ".pth", ".bin"):  # the same torch pickle format under other names
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(
                f"{path.name}: refused to unpickle: the file needs Python objects beyond tensors "
                f"({first_line}). Only weights-only pickles are loaded (A1111's --disable-safe-unpickle is "
                f"not supported); convert the file to .safetensors with a trusted tool."
            ) from exc
        except (OSError, RuntimeError, EOFError) as exc:
            raise ModelLoadError(f"{path.name}: cannot read checkpoint ({exc})") from exc
    else:
        raise ModelLoadError(f"{path.name}: unsupported checkpoint type {suffix!r}; "
                             f"use {', '.join(CHECKPOINT_SUFFIXES)}")
    if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path.name}: checkpoint holds a {type(raw).__name__}, not a state dict")
    return {normalise_key(key): value for key, value in raw.items()
            if isinstance(key, str) and isinstance(value, Tensor)}


def write_safetensors(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write a .safetensors file atomically (a temporary file beside it, then a rename), so a reader
    never sees half a model and an interrupted write leaves the old file."""
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(save(state, metadata))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def shapes_of(state_dict: dict[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """`{key: shape}`, the input of family detection."""
    return {key: tuple(value.shape) for key, value in state_dict.items()}


# ---- 2. dims from tensors ----------------------------------------------------------------------------

def _indices(shapes: dict[str, tuple[int, ...]], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match[1]) for key in shapes if (match := regex.match(key))})


def _shape(shapes: dict[str, tuple[int, ...]], key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelLoadError(f"checkpoint is missing tensor {key!r} ({describe_keys(shapes)})")
    return shapes[key]


def read_unet_dims(shapes: dict[str, tuple[int, ...]], family: Family,
                   pooled_projection_dim: int | None = None) -> UNetDims:
    """UNet widths from the ldm tensors (see `ldm_export` for the block numbering)."""
    p = re.escape(UNET_PREFIX)
    entries = _indices(shapes, p + r"input_blocks\.(\d+)\.")
    downsamplers = [i for i in entries if f"{UNET_PREFIX}input_blocks.{i}.0.op.weight" in shapes]
    levels = len(downsamplers) + 1
    per_level, remainder = divmod(len(entries) - 1 - len(downsamplers), levels)
    if remainder or per_level < 1:
        raise ModelLoadError(f"UNet input blocks do not form {levels} equal levels ({len(entries)} blocks)")
    channels, attention, depth = [], [], []
    for level in range(levels):
        first = f"{UNET_PREFIX}input_blocks.{1 + level * (per_level + 1)}."
        channels.append(_shape(shapes, first + "0.out_layers.3.weight")[0])
        blocks = _indices(shapes, re.escape(first) + r"1\.transformer_blocks\.(\d+)\.")
        attention.append(bool(blocks))
        depth.append(len(blocks) or 1)
    cross = _shape(shapes, UNET_PREFIX + "middle_block.1.transformer_blocks.0.attn2.to_k.weight")[1]
    input_conv = _shape(shapes, UNET_PREFIX + "input_blocks.0.0.weight")
    adm_dim = time_dim = None
    if family.is_sdxl:
        adm_dim = _shape(shapes, UNET_PREFIX + "label_emb.0.0.weight")[1]
        # SDXL's added conditioning: the pooled text embedding plus six sinusoidal size/crop embeddings.
        time_dim, rest = divmod(adm_dim - (pooled_projection_dim or 0), 6)
        if rest or time_dim <= 0:
            raise ModelLoadError(f"SDXL label embedding width {adm_dim} does not fit "
                                 f"pooled dim {pooled_projection_dim}")
    return UNetDims(tuple(channels), per_level, cross, tuple(attention), tuple(depth), input_conv[1],
                    _shape(shapes, UNET_PREFIX + "out.2.weight")[0], adm_dim, time_dim)


def read_vae_dims(shapes: dict[str, tuple[int, ...]]) -> VaeDims:
    """VAE widths from the ldm tensors."""
    encoder = VAE_PREFIX + "encoder.down."
    levels = _indices(shapes, re.escape(encoder) + r"(\d+)\.")
    if not levels:
        raise ModelLoadError(f"checkpoint has no VAE ({describe_keys(shapes)})")
    channels = tuple(_shape(shapes, f"{encoder}{i}.block.0.conv1.weight")[0] for i in levels)
    per_level = len(_indices(shapes, re.escape(encoder) + r"0\.block\.(\d+)\."))
    latent = _shape(shapes, VAE_PREFIX + "decoder.conv_in.weight")[1]
    return VaeDims(channels, per_level, latent)


def read_text_encoder_dims(shapes: dict[str, tuple[int, ...]], spec: TextEncoderSpec) -> TextEncoderDims:
    """Text-encoder widths from the ldm tensors of one encoder."""
    p = spec.prefix
    if spec.layout == "hf_clip":
        vocab, hidden = _shape(shapes, p + "embeddings.token_embedding.weight")
        positions = _shape(shapes, p + "embeddings.position_embedding.weight")[0]
        layers = len(_indices(shapes, re.escape(p) + r"encoder\.layers\.(\d+)\."))
        intermediate = _shape(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0]
        projection = None
    else:
        vocab, hidden = _shape(shapes, p + "token_embedding.weight")
        positions = _shape(shapes, p + "positional_embedding")[0]
        layers = len(_indices(shapes, re.escape(p) + r"transformer\.resblocks\.(\d+)\."))
        intermediate = _shape(shapes, p + "transformer.resblocks.0.mlp.c_fc.weight")[0]
        projection = _shape(shapes, p + "text_projection")[1] if spec.with_projection else None
    if spec.drops_last_layer:
        layers -= 1
    if layers < 1:
        raise ModelLoadError(f"text encoder under {p!r} has too few layers")
    return TextEncoderDims(hidden, intermediate, layers, vocab, positions, projection)


# ---- 3./4. building components ----------------------------------------------------------------------

def _load_strict(module: torch.nn.Module, state: dict[str, Tensor], what: str) -> None:
    result = module.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{what}: checkpoint does not match the derived architecture "
                             f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    mismatched = [name for name, param in module.named_parameters() if param.is_meta]
    if mismatched:
        raise ModelLoadError(f"{what}: tensors not loaded: {mismatched[:5]}")


def _build_unet(state_dict: dict[str, Tensor], config: dict[str, Any]) -> Any:
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(config)
    _load_strict(unet, convert_ldm_unet_checkpoint(state_dict, config), "UNet")
    return unet.eval()


def convert_vae_state_dict(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """The `first_stage_model.*` tensors of an ldm state dict renamed for a diffusers AutoencoderKL
    built from `config` (also used for separate VAE files, `vae_files.py`)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    return convert_ldm_vae_checkpoint(state_dict, config)


def _build_vae(state_dict: dict[str, Tensor], config: dict[str, Any]) -> Any:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    with init_empty_weights():
        vae = AutoencoderKL.from_config(config)
    _load_strict(vae, convert_vae_state_dict(state_dict, config), "VAE")
    return vae.eval()


def _build_text_encoder(state_dict: dict[str, Tensor], spec: TextEncoderSpec, config: dict[str, Any]) -> Any:
    from accelerate import init_empty_weights
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel
    with init_empty_weights():
        model = cls(CLIPTextConfig(**config))
    if spec.layout == "hf_clip":
        converted = {"text_model." + key[len(spec.prefix):]: value for key, value in state_dict.items()
                     if key.startswith(spec.prefix) and not key.endswith("position_ids")}
    else:
        converted = convert_open_clip_checkpoint(model, state_dict, prefix=spec.prefix)
    kept_layers = config["num_hidden_layers"]
    state = {}
    for key, value in converted.items():
        layer = re.match(r"text_model\.encoder\.layers\.(\d+)\.", key)
        if layer and int(layer[1]) >= kept_layers:
            continue  # SD2: the original's last block is not part of the conditioning
        if key == "text_projection.weight" and not spec.with_projection:
            continue
        # transformers >= 5.6 flattened CLIPTextModel; only the WithProjection class keeps `text_model.`.
        state[key if spec.with_projection else key.removeprefix("text_model.")] = value
    _load_strict(model, state, f"text encoder {spec.subfolder}")
    return model.eval()


def _predicts_v(unet: Any) -> bool:
    """A1111's SD2 test (sd_models_config.is_using_v_parameterization_for_sd2), on our UNet.

    At the last timestep with a constant input, an epsilon model's output stays near its input, while a
    v model's output is strongly negative relative to it; A1111 calls the model v when the mean of
    (output - input) is below -1. Runs in float32 on the CPU like A1111.
    """
    torch.nn.Module.to(unet, device="cpu", dtype=torch.float32)
    x = torch.full((1, unet.config.in_channels, 8, 8), 0.5)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5)
    with torch.no_grad():
        out = unet(x, torch.tensor([999]), encoder_hidden_states=context).sample
    return (out - x).mean().item() < -1


def alphas_cumprod_from(scheduler_config: dict[str, Any], stored: Tensor | None = None) -> Tensor:
    """Cumulative alpha products of the training noise schedule (float64 math, float32 result as in ldm).

    An ldm checkpoint may carry its own `alphas_cumprod` buffer; A1111 uses that buffer (it is loaded
    into the model), so a stored one of the right length wins over the computed schedule.
    """
    steps = int(scheduler_config.get("num_train_timesteps", 1000))
    if stored is not None and stored.shape == (steps,):
        return stored.detach().to(device="cpu", dtype=torch.float32).clone()
    start, end = float(scheduler_config["beta_start"]), float(scheduler_config["beta_end"])
    schedule = scheduler_config.get("beta_schedule", "scaled_linear")
    if schedule == "scaled_linear":
        betas = torch.linspace(start ** 0.5, end ** 0.5, steps, dtype=torch.float64) ** 2
    elif schedule == "linear":
        betas = torch.linspace(start, end, steps, dtype=torch.float64)
    else:
        raise ModelLoadError(f"unsupported beta_schedule {schedule!r}")
    return torch.cumprod(1.0 - betas, dim=0).to(torch.float32)


# ---- derived config folder -----------------------------------------------------------------------------

def _write_config_dir(cache_dir: Path, family: Family, components: dict[str, Any], scheduler: dict[str, Any],
                      tokenizers: dict[str, Any]) -> Path:
    """A complete diffusers-format folder (configs and tokenizers, no weights), written once, atomically."""
    documents = {"model_index.json": read_config(family, "model_index"),
                 "scheduler/scheduler_config.json": scheduler}
    serialised = {path: json.dumps(doc, indent=2, sort_keys=True) for path, doc in documents.items()}
    for name, module in components.items():
        # diffusers models and transformers configs each serialise themselves with their class names.
        source = module if hasattr(module, "to_json_string") else module.config
        serialised[f"{name}/config.json"] = source.to_json_string()
    digest = hashlib.sha256(json.dumps(serialised, sort_keys=True).encode()).hexdigest()[:16]
    target = cache_dir / "diffusers-configs" / f"{family.name}-{digest}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        for relative, text in serialised.items():
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            (staging / relative).write_text(text + "\n", encoding="utf-8")
        for name, tokenizer in tokenizers.items():
            tokenizer.save_pretrained(staging / name)
        os.replace(staging, target)
    except OSError:
        if not target.is_dir():  # another process may have won the race; otherwise it is a real failure
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ---- 5. the two entry points ---------------------------------------------------------------------------

def _assemble(path: Path, family: Family, unet: Any, vae: Any, encoders: list[Any], scheduler: dict[str, Any],
              alphas_cumprod: Tensor, *, device: torch.device, dtype: torch.dtype, vae_dtype: torch.dtype | None,
              cache_dir: Path) -> LoadedModel:
    tokenizers = [build_clip_tokenizer(spec.pad_token) for spec in family.text_encoders]
    # torch's own Module.to: diffusers' override only adds a warning about fp32-pinned modules, which
    # these models do not have.
    torch.nn.Module.to(unet, device=device, dtype=dtype)
    torch.nn.Module.to(vae, device=device, dtype=vae_dtype or dtype)
    for encoder in encoders:
        encoder.to(device=device, dtype=dtype)
    components = {"unet": unet, "vae": vae, "text_encoder": encoders[0]}
    names = {"tokenizer": tokenizers[0]}
    if family.is_sdxl:
        components["text_encoder_2"] = encoders[1]
        names["tokenizer_2"] = tokenizers[1]
    config_dir = _write_config_dir(cache_dir, family, components, scheduler, names)
    return LoadedModel(
        family=family, unet=unet, vae=vae, text_encoder=encoders[0],
        text_encoder_2=encoders[1] if family.is_sdxl else None,
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1] if family.is_sdxl else None,
        prediction_type=family.prediction_type, alphas_cumprod=alphas_cumprod,
        vae_scaling_factor=float(vae.config.scaling_factor), latent_channels=int(vae.config.latent_channels),
        is_sdxl=family.is_sdxl, is_inpaint=family.is_inpaint, checkpoint_path=path, config_dir=config_dir,
    )


def load_single_file(path: Path, *, device: torch.device, dtype: torch.dtype, cache_dir: Path,
                     vae_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load an original-layout checkpoint file (see the module docstring for the steps)."""
    # 1. read
    state_dict = read_state_dict(path)
    shapes = shapes_of(state_dict)
    # 2. detect
    family = detect_family(shapes)
    # 3. derive configs
    encoder_dims = [read_text_encoder_dims(shapes, spec) for spec in family.text_encoders]
    pooled = encoder_dims[-1].projection_dim if family.is_sdxl else None
    unet_dims = read_unet_dims(shapes, family, pooled)
    # 4. build and load strictly
    unet = _build_unet(state_dict, unet_config(family, unet_dims))
    vae = _build_vae(state_dict, vae_config(family, read_vae_dims(shapes)))
    encoders = [_build_text_encoder(state_dict, spec, text_encoder_config(family, index, dims))
                for index, (spec, dims) in enumerate(zip(family.text_encoders, encoder_dims, strict=True))]
    # 5. SD2 768-v vs 512: same layout, told apart by the UNet's behaviour; the v config differs in
    # sample size and attention upcasting, so the UNet is rebuilt from it (no tensor is copied).
    if family.v_prediction_variant is not None and _predicts_v(unet):
        family = family_by_name(family.v_prediction_variant)
        unet = _build_unet(state_dict, unet_config(family, unet_dims))
    scheduler = read_config(family, "scheduler")
    alphas_cumprod = alphas_cumprod_from(scheduler, state_dict.get("alphas_cumprod"))
    del state_dict
    logger.info("loaded %s as %s", path.name, family.name)
    return _assemble(path, family, unet, vae, encoders, scheduler, alphas_cumprod,
                     device=device, dtype=dtype, vae_dtype=vae_dtype, cache_dir=cache_dir)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from exc


def load_diffusers_folder(folder: Path, *, device: torch.device, dtype: torch.dtype, cache_dir: Path,
                          vae_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a diffusers-format folder (model_index.json, unet/, vae/, text_encoder/[, text_encoder_2/])."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    scheduler = _read_json(folder / "scheduler" / "scheduler_config.json")
    family = detect_family_from_diffusers(_read_json(folder / "model_index.json"),
                                          _read_json(folder / "unet" / "config.json"),
                                          _read_json(folder / "text_encoder" / "config.json"), scheduler)
    try:
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
        encoders = [
            (CLIPTextModelWithProjection if spec.with_projection else CLIPTextModel).from_pretrained(
                folder, subfolder=spec.subfolder, local_files_only=True)
            for spec in family.text_encoders
        ]
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{folder.name}: cannot load diffusers model ({exc})") from exc
    for module in (unet, vae, *encoders):
        module.eval()
    return _assemble(folder, family, unet, vae, encoders, scheduler, alphas_cumprod_from(scheduler),
                     device=device, dtype=dtype, vae_dtype=vae_dtype, cache_dir=cache_dir)


def load_checkpoint(path: Path, *, device: torch.device, dtype: torch.dtype, cache_dir: Path,
                    vae_dtype: torch.dtype | None = None) -> LoadedModel:
    """Load a checkpoint file or a diffusers folder offline.

    The VAE uses `dtype` unless `vae_dtype` is given (A1111 keeps the VAE in fp16 too unless
    --no-half-vae; pass torch.float32 for that). `cache_dir` receives the derived config folder.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelLoadError(f"{path.name}: folder has no model_index.json, so it is not a diffusers model")
        return load_diffusers_folder(path, device=device, dtype=dtype, cache_dir=cache_dir, vae_dtype=vae_dtype)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint not found: {path}")
    return load_single_file(path, device=device, dtype=dtype, cache_dir=cache_dir, vae_dtype=vae_dtype)
