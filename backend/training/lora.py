"""LoRA / LoCon training on a loaded checkpoint, saved as kohya-format `.safetensors` files.

The recipe (what kohya's sd-scripts `train_network.py` does, reduced to its core):
1. the data set: images of a folder with `.txt` captions (`dataset.py`), fitted to `resolution` (or to
   aspect-ratio buckets), encoded once by the frozen VAE (posterior mean x the family's scaling factor);
2. the network: a low-rank pair per targeted layer, `up(down(x)) * alpha / dim * multiplier` added to the
   layer's output by a removable forward hook (the model's own weights and classes are untouched and
   frozen). Targets as kohya's `networks.lora`: Linear and 1x1 convolutions inside the UNet's
   `Transformer2DModel`s and the text encoder's attention and MLP; LoCon adds the layers of `ResnetBlock2D`,
   `Downsample2D` and `Upsample2D` (3x3 convolutions at `conv_dim`/`conv_alpha`). `up` starts at zero, so
   step 0 is the base model;
3. the objective: `ldm.diffusion_loss` (epsilon or v, noise offset, min-SNR gamma) with the loaded model's
   own noise schedule, through `loop.Trainer` (AdamW or another optimizer, warm-up then cosine or constant
   learning rate, gradient clipping at 1, checkpoints, resume, stop). Each step's batch and noise follow
   from (seed, step), so a stopped and resumed run ends with the same weights as an uninterrupted one;
4. output: every `save_every_n_epochs` epochs `<models>/Lora/<name>-<epoch:06d>.safetensors`, at the end
   `<name>.safetensors`, with kohya's key names (`lora_unet_...`, `lora_te_...`/`lora_te1_`/`lora_te2_`,
   `.lora_down.weight`, `.lora_up.weight`, `.alpha`) and its `ss_*` metadata; a sample image made through
   `process_images` with the network live is saved beside each file as its card preview (`<stem>.png`).

The job runs in the shared queue (`submit_training`); `TrainingRun` is what the API and UI poll.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from backend.errors import InvalidRequest
from backend.models.ldm_export import unet_key_to_ldm
from backend.models.loader import write_safetensors
from backend.models.seamless import set_seamless
from backend.training import dataset
from backend.training.ldm import CaptionTokens, diffusion_loss
from backend.training.loop import Trainer, TrainProgress, step_generator

if TYPE_CHECKING:
    from backend.context import AppContext
    from backend.jobs.progress import JobState
    from backend.jobs.queue import Job
    from backend.models.loader import LoadedModel
    from backend.processing import StableDiffusionProcessingTxt2Img

NETWORK_TYPES = ("LoRA", "LoCon")
SCHEDULERS = ("cosine", "constant")  # both after a linear warm-up (loop.warmup_cosine)
MIXED_PRECISION = ("no", "fp16", "bf16")  # autocast on CUDA only
UNET_TARGETS = ("Transformer2DModel",)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")
JOB_KIND = "train-lora"
STATE_FILE = "state.pt"


# ---- parameters ---------------------------------------------------------------------------------------------

@dataclass
class LoraTrainingParams:
    """Everything a run needs (the API's JSON body; field names are what errors name)."""

    name: str
    dataset: str
    model: str = ""  # checkpoint title; empty: the selected one
    network_type: str = "LoRA"
    dim: int = 8
    alpha: float = 4.0
    conv_dim: int = 4
    conv_alpha: float = 1.0
    unet_lr: float = 1e-4
    text_encoder_lr: float = 0.0  # 0: the text encoder is not trained
    optimizer: str = "AdamW"
    scheduler: str = "cosine"
    warmup_steps: int = 0
    max_train_steps: int = 0  # 0: `epochs` decides
    epochs: int = 1
    repeats: int = 1
    batch_size: int = 1
    resolution: int = 512
    buckets: bool = False
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0  # 0: off
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    clip_skip: int = 1
    seed: int = 42
    save_every_n_epochs: int = 1
    sample_every_n_steps: int = 0
    sample_prompt: str = ""
    sample_steps: int = 20
    sample_cfg_scale: float = 7.0
    sample_sampler: str = "Euler a"
    resume: bool = False

    def validate(self) -> None:
        """InvalidRequest naming the first bad field."""
        if not self.name.strip() or any(c in self.name for c in '/\\:*?"<>|'):
            raise InvalidRequest("name", f"must be a plain file name, got {self.name!r}")
        dataset.check_folder(self.dataset, "dataset")
        choices = {"network_type": NETWORK_TYPES, "scheduler": SCHEDULERS, "mixed_precision": MIXED_PRECISION,
                   "optimizer": tuple(available_optimizers())}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise InvalidRequest(name, f"{getattr(self, name)!r} is not one of {', '.join(allowed)}")
        positive = ("dim", "epochs", "repeats", "batch_size", "save_every_n_epochs", "clip_skip", "sample_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidRequest(name, f"must be >= 1, got {getattr(self, name)}")
        if self.network_type == "LoCon" and self.conv_dim < 1:
            raise InvalidRequest("conv_dim", f"must be >= 1 for LoCon, got {self.conv_dim}")
        for name in ("alpha", "conv_alpha", "text_encoder_lr", "noise_offset", "min_snr_gamma", "warmup_steps",
                     "max_train_steps", "sample_every_n_steps"):
            if getattr(self, name) < 0:
                raise InvalidRequest(name, f"must be >= 0, got {getattr(self, name)}")
        if self.unet_lr <= 0:
            raise InvalidRequest("unet_lr", f"must be > 0, got {self.unet_lr}")
        if self.resolution < dataset.BUCKET_STEP or self.resolution % 8:
            raise InvalidRequest("resolution", f"must be a multiple of 8 and >= {dataset.BUCKET_STEP}, "
                                               f"got {self.resolution}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoraTrainingParams:
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def available_optimizers() -> dict[str, Callable[..., torch.optim.Optimizer]]:
    """Optimizer name (kohya's) -> factory(params, lr): torch's, plus 8-bit AdamW / Lion / Prodigy when installed."""
    found: dict[str, Callable[..., torch.optim.Optimizer]] = {
        "AdamW": partial(torch.optim.AdamW, weight_decay=0.01),
        "RAdam": torch.optim.RAdam,
        "SGDNesterov": partial(torch.optim.SGD, momentum=0.9, nesterov=True),
    }
    if hasattr(torch.optim, "Adafactor"):
        found["Adafactor"] = torch.optim.Adafactor
    for name, module, attribute in (("AdamW8bit", "bitsandbytes.optim", "AdamW8bit"),
                                    ("Lion", "lion_pytorch", "Lion"), ("Prodigy", "prodigyopt", "Prodigy")):
        try:
            found[name] = getattr(__import__(module, fromlist=[attribute]), attribute)
        except ImportError:
            continue
    return found


# ---- the network --------------------------------------------------------------------------------------------

class LoraModule(nn.Module):
    """A low-rank adapter for one Linear or Conv2d layer, added to its output by a forward hook."""

    def __init__(self, layer: nn.Module, dim: int, alpha: float):
        super().__init__()
        if isinstance(layer, nn.Conv2d):
            self.lora_down: nn.Module = nn.Conv2d(layer.in_channels, dim, layer.kernel_size, layer.stride,
                                                  layer.padding, bias=False)
            self.lora_up: nn.Module = nn.Conv2d(dim, layer.out_channels, 1, 1, bias=False)
        else:
            self.lora_down = nn.Linear(layer.in_features, dim, bias=False)
            self.lora_up = nn.Linear(dim, layer.out_features, bias=False)
        # kohya's initialisation: down as torch's default Linear init, up zero (the network starts as a no-op).
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self.register_buffer("alpha", torch.tensor(float(alpha or dim)))
        self.dim = dim
        self.layer = [layer]  # in a list: not a submodule (its weights are not the network's)
        self.multiplier = 1.0
        self._handle: Any = None

    def attach(self) -> None:
        if self._handle is None:
            self._handle = self.layer[0].register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, layer: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = args[0].to(self.lora_down.weight.dtype)
        delta = self.lora_up(self.lora_down(x)) * (self.multiplier * float(self.alpha) / self.dim)
        return output + delta.to(output.dtype)


def _flat(path: str) -> str:
    return path.replace(".", "_")


def _unet_name(model: LoadedModel, path: str) -> str:
    """kohya's name of a UNet layer: the diffusers path for SD1/SD2, the original ldm path for SDXL."""
    if not model.is_sdxl:
        return f"lora_unet_{_flat(path)}"
    config = model.unet.config
    up_attention = ["CrossAttn" in name for name in config.up_block_types]
    return "lora_unet_" + _flat(unet_key_to_ldm(f"{path}.weight", config.layers_per_block, up_attention)
                                .removesuffix(".weight"))


def _text_name(prefix: str, path: str) -> str:
    # transformers' CLIPTextModel keeps its layers at the top level, CLIPTextModelWithProjection under
    # `text_model.`; kohya names both under `text_model`.
    return f"{prefix}_text_model_{_flat(path.removeprefix('text_model.'))}"


def _targets(root: nn.Module, classes: tuple[str, ...]) -> Iterator[tuple[str, nn.Module]]:
    for path, module in root.named_modules():
        if type(module).__name__ in classes:
            for child_path, child in module.named_modules():
                if isinstance(child, (nn.Linear, nn.Conv2d)):
                    yield f"{path}.{child_path}" if child_path else path, child


class LoraNetwork(nn.Module):
    """The adapters of one model, keyed by kohya module name; `attach` hooks them into the model."""

    def __init__(self, model: LoadedModel, params: LoraTrainingParams):
        super().__init__()
        self.adapters = nn.ModuleDict()
        self.text_names: set[str] = set()
        conv = params.network_type == "LoCon"
        for path, layer in _targets(model.unet, UNET_TARGETS + (UNET_CONV_TARGETS if conv else ())):
            is_3x3 = isinstance(layer, nn.Conv2d) and layer.kernel_size != (1, 1)
            if is_3x3 and not conv:
                continue
            dim, alpha = (params.conv_dim, params.conv_alpha) if is_3x3 else (params.dim, params.alpha)
            self.adapters[_unet_name(model, path)] = LoraModule(layer, dim, alpha)
        if params.text_encoder_lr > 0:
            encoders = [("lora_te1" if model.is_sdxl else "lora_te", model.text_encoder)]
            if model.text_encoder_2 is not None:
                encoders.append(("lora_te2", model.text_encoder_2))
            for prefix, encoder in encoders:
                for path, layer in _targets(encoder, TEXT_TARGETS):
                    name = _text_name(prefix, path)
                    self.adapters[name] = LoraModule(layer, params.dim, params.alpha)
                    self.text_names.add(name)

    def attach(self) -> None:
        for adapter in self.adapters.values():
            adapter.attach()

    def detach(self) -> None:
        for adapter in self.adapters.values():
            adapter.detach()

    def parameter_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict[str, Any]]:
        unet = [p for n, a in self.adapters.items() if n not in self.text_names for p in a.parameters()]
        text = [p for n, a in self.adapters.items() if n in self.text_names for p in a.parameters()]
        groups = [{"params": unet, "lr": unet_lr}]
        if text:
            groups.append({"params": text, "lr": text_encoder_lr})
        return groups

    def kohya_state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` for every adapter (on the CPU)."""
        state = {}
        for name, adapter in self.adapters.items():
            state[f"{name}.lora_down.weight"] = adapter.lora_down.weight.detach().to("cpu", dtype).contiguous()
            state[f"{name}.lora_up.weight"] = adapter.lora_up.weight.detach().to("cpu", dtype).contiguous()
            state[f"{name}.alpha"] = adapter.alpha.detach().to("cpu", dtype)
        return state


# ---- the data -----------------------------------------------------------------------------------------------

@dataclass
class TrainingSet:
    """Latents by bucket size and their captions; batches are drawn per epoch from (seed, epoch)."""

    latents: dict[tuple[int, int], Tensor]  # bucket (w, h) -> [n, c, h/8, w/8]
    captions: dict[tuple[int, int], list[str]]
    repeats: int
    batch_size: int
    seed: int
    _epoch_cache: tuple[int, list[tuple[tuple[int, int], list[int]]]] | None = None

    @property
    def image_count(self) -> int:
        return sum(len(c) for c in self.captions.values())

    @property
    def steps_per_epoch(self) -> int:
        return sum(math.ceil(len(c) * self.repeats / self.batch_size) for c in self.captions.values())

    def batches(self, epoch: int) -> list[tuple[tuple[int, int], list[int]]]:
        """The epoch's batches: every image `repeats` times, shuffled within its bucket, batches shuffled."""
        if self._epoch_cache is not None and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        rng = random.Random(self.seed * 7919 + epoch)
        batches = []
        for bucket in sorted(self.captions):
            items = list(range(len(self.captions[bucket]))) * self.repeats
            rng.shuffle(items)
            batches += [(bucket, items[i:i + self.batch_size]) for i in range(0, len(items), self.batch_size)]
        rng.shuffle(batches)
        self._epoch_cache = (epoch, batches)
        return batches


@torch.no_grad()
def encode_dataset(model: LoadedModel, folder: Path, params: LoraTrainingParams) -> TrainingSet:
    """Fit every image to its bucket and encode it with the model's VAE (posterior mean, scaled)."""
    files = dataset.image_files(folder)
    if not files:
        raise InvalidRequest("dataset", f"{str(folder)!r} holds no images ({', '.join(dataset.IMAGE_SUFFIXES)})")
    sizes = dataset.make_buckets(params.resolution) if params.buckets else [(params.resolution,) * 2]
    vae = model.vae
    parameter = next(vae.parameters())
    pixels: dict[tuple[int, int], list[Tensor]] = {}
    captions: dict[tuple[int, int], list[str]] = {}
    for path in files:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
        bucket = dataset.nearest_bucket(image.width, image.height, sizes)
        fitted = dataset.fit(image, *bucket)
        array = torch.from_numpy(np.array(fitted)).permute(2, 0, 1).float() / 127.5 - 1
        pixels.setdefault(bucket, []).append(array)
        captions.setdefault(bucket, []).append(dataset.read_caption(path))
    latents = {}
    for bucket, images in pixels.items():
        chunks = [vae.encode(torch.stack(images[i:i + 8]).to(parameter.device, parameter.dtype)).latent_dist.mean
                  for i in range(0, len(images), 8)]
        latents[bucket] = (torch.cat(chunks) * model.vae_scaling_factor).float()
    return TrainingSet(latents, captions, params.repeats, params.batch_size, params.seed)


class Conditioner:
    """Captions -> (context, added_cond_kwargs) as the family's UNet expects them, with clip skip.

    Without text-encoder training the result of each caption is computed once and reused."""

    def __init__(self, model: LoadedModel, clip_skip: int, cached: bool):
        self.model = model
        self.clip_skip = clip_skip
        self.cached = cached
        self.tokens = [CaptionTokens(model.tokenizer)]
        if model.is_sdxl:
            self.tokens.append(CaptionTokens(model.tokenizer_2))
        self._cache: dict[str, tuple[Tensor, Tensor | None]] = {}

    def _hidden(self, encoder: nn.Module, ids: Tensor, layer: int, final_norm: bool) -> tuple[Tensor, Any]:
        """The hidden state `layer` from the end (1: the last) and the encoder's output; with `final_norm`,
        the final layer norm applied to it, as A1111's clip skip does on SD1/SD2."""
        output = encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=True)
        if final_norm and layer == 1:
            return output.last_hidden_state, output
        hidden = output.hidden_states[-layer]
        if final_norm:
            hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
        return hidden, output

    def _encode(self, captions: list[str]) -> tuple[Tensor, Tensor | None]:
        model = self.model
        if not model.is_sdxl:
            hidden, _ = self._hidden(model.text_encoder, self.tokens[0](captions), self.clip_skip, True)
            return hidden, None
        # SDXL: the penultimate layers of both encoders (no final norm), the second one's pooled projection.
        first, _ = self._hidden(model.text_encoder, self.tokens[0](captions), self.clip_skip + 1, False)
        second, output = self._hidden(model.text_encoder_2, self.tokens[1](captions), self.clip_skip + 1, False)
        return torch.cat([first, second], dim=-1), output.text_embeds

    def __call__(self, captions: list[str], size: tuple[int, int]) -> tuple[Tensor, dict[str, Tensor] | None]:
        if self.cached:
            missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
            if missing:
                with torch.no_grad():
                    context, pooled = self._encode(missing)
                for i, caption in enumerate(missing):
                    self._cache[caption] = (context[i], None if pooled is None else pooled[i])
            context = torch.stack([self._cache[c][0] for c in captions])
            pooled = None if not self.model.is_sdxl else torch.stack([self._cache[c][1] for c in captions])
        else:
            context, pooled = self._encode(captions)
        if pooled is None:
            return context, None
        width, height = size
        time_ids = torch.tensor([[height, width, 0, 0, height, width]] * len(captions), dtype=context.dtype,
                                device=context.device)
        return context, {"text_embeds": pooled, "time_ids": time_ids}


# ---- kohya files --------------------------------------------------------------------------------------------

def base_model_version(model: LoadedModel) -> str:
    """kohya's `ss_base_model_version`."""
    if model.is_sdxl:
        return "sdxl_base_v1-0"
    return "sd_v2" if model.family.architecture == "sd2" else "sd_v1"


def addnet_hashes(data: bytes) -> tuple[str, str]:
    """(`sshs_model_hash`, `sshs_legacy_hash`) of serialised safetensors bytes, as kohya precalculates them:
    SHA-256 of the tensor bytes after the header, and the first 8 hex of SHA-256 of 64 KiB at 1 MiB."""
    header = int.from_bytes(data[:8], "little")
    return (hashlib.sha256(data[8 + header:]).hexdigest(),
            hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8])


def save_kohya_file(state: dict[str, Tensor], metadata: dict[str, str], path: Path) -> Path:
    """Write a network file with its metadata and kohya's two hashes, atomically."""
    from safetensors.torch import save

    metadata = dict(metadata)
    metadata["sshs_model_hash"], metadata["sshs_legacy_hash"] = addnet_hashes(
        save(state, {k: v for k, v in metadata.items() if k.startswith("ss_")}))
    return write_safetensors(state, path, metadata)


# ---- the run ------------------------------------------------------------------------------------------------

@dataclass
class TrainingRun:
    """What a training job reports while it runs and after (the API's and the UI's view of it)."""

    params: LoraTrainingParams
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"  # queued | preparing | training | sampling | done | stopped | failed
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    total_epochs: int = 0
    started: float | None = None
    eta_s: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(self, message: str) -> None:
        with self._lock:
            self.status, self.error = "failed", message

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {"status": self.status, "step": self.step, "total_steps": self.total_steps, "epoch": self.epoch,
                    "total_epochs": self.total_epochs, "eta_s": round(self.eta_s, 1),
                    "progress": self.step / self.total_steps if self.total_steps else 0.0,
                    "losses": [list(item) for item in self.losses], "saved": list(self.saved),
                    "samples": list(self.samples), "error": self.error, "params": asdict(self.params)}


def work_dir(ctx: AppContext, name: str) -> Path:
    """Where a run keeps its resumable state (`state.pt`) and its loss history."""
    return ctx.settings.data_dir / "training" / "lora" / name


def lora_dir(ctx: AppContext) -> Path:
    """Where saved networks go: --lora-dir, else models/Lora (the LoRA browser lists both)."""
    folder = ctx.settings.extra.get("lora_dir")
    return Path(folder).expanduser().resolve() if folder else ctx.settings.models_dir / "Lora"


class LoraTrainer:
    """One run: builds the data, the network and the `Trainer`, and writes the files; see the module docstring."""

    def __init__(self, ctx: AppContext, params: LoraTrainingParams, run: TrainingRun, state: JobState):
        self.ctx, self.params, self.run, self.state = ctx, params, run, state
        self.work = work_dir(ctx, params.name)
        self.started_at = time.time()
        self.checkpoint_title = ""
        self.checkpoint_path = Path()
        self.checkpoint_hashes = ("", "")
        self.model: LoadedModel | None = None

    # -- 1. model and data
    def _prepare(self) -> tuple[LoadedModel, TrainingSet, LoraNetwork]:
        p = self.params
        info, model = self.ctx.models.get(p.model or None)  # loading hashes it (sha256) unless --no-hashing
        self.checkpoint_title = info.title
        self.checkpoint_path = Path(info.filename)
        self.checkpoint_hashes = (info.legacy_hash or "", info.sha256 or "")
        self.ctx.networks.deactivate()  # the original weights: no <lora> of an earlier generation merged in
        set_seamless(model, False)  # nor the circular padding a Tiling generation left on
        data = encode_dataset(model, Path(p.dataset).expanduser(), p)
        torch.manual_seed(p.seed)  # the adapters' initial weights
        network = LoraNetwork(model, p).to(next(model.unet.parameters()).device)
        return model, data, network

    def total_steps(self, data: TrainingSet) -> int:
        return self.params.max_train_steps or self.params.epochs * data.steps_per_epoch

    # -- 2. the loop
    def train(self) -> list[str]:
        p, run = self.params, self.run
        with run._lock:
            run.status, run.started = "preparing", time.time()
        model, data, network = self._prepare()
        self.model = model
        device = next(model.unet.parameters()).device
        unet_dtype = next(model.unet.parameters()).dtype
        conditioner = Conditioner(model, p.clip_skip, cached=p.text_encoder_lr <= 0)
        total = self.total_steps(data)
        per_epoch = data.steps_per_epoch
        frozen = [m for m in (model.unet, model.text_encoder, model.text_encoder_2, model.vae) if m is not None]
        requires = [[q.requires_grad for q in m.parameters()] for m in frozen]
        for module in frozen:
            module.requires_grad_(False)
        if p.gradient_checkpointing:
            model.unet.enable_gradient_checkpointing()
        autocast: Callable[[], Any] = contextlib.nullcontext
        if self.ctx.devices.is_cuda and p.mixed_precision != "no":  # on the CPU training stays in float32
            dtype = torch.float16 if p.mixed_precision == "fp16" else torch.bfloat16
            autocast = partial(torch.autocast, device_type=device.type, dtype=dtype)

        def loss(step: int) -> Tensor:
            epoch, index = divmod(step, per_epoch)
            bucket, items = data.batches(epoch)[index]
            latents = data.latents[bucket][items].to(device)
            context, added = conditioner([data.captions[bucket][i] for i in items], bucket)

            def unet(x: Tensor, t: Tensor, encoder_hidden_states: Tensor) -> Any:
                # The frozen model may be float16 (CUDA); the loss and the adapters stay float32.
                extra = None if added is None else {k: v.to(unet_dtype) for k, v in added.items()}
                return model.unet(x.to(unet_dtype), t, encoder_hidden_states=encoder_hidden_states.to(unet_dtype),
                                  added_cond_kwargs=extra)

            with autocast():
                return diffusion_loss(unet, latents, context, model.alphas_cumprod, step_generator(p.seed, step),
                                      prediction_type=model.prediction_type,
                                      min_snr_gamma=p.min_snr_gamma or None, noise_offset=p.noise_offset)

        optimizer = available_optimizers()[p.optimizer](network.parameter_groups(p.unet_lr, p.text_encoder_lr),
                                                        lr=p.unet_lr)
        trainer = Trainer("lora", {"network": network}, optimizer, loss, total,
                          checkpoint_path=self.work / STATE_FILE, checkpoint_every=per_epoch,
                          warmup_steps=p.warmup_steps, lr_floor=0.0 if p.scheduler == "cosine" else 1.0,
                          on_progress=partial(self._on_progress, network, data), progress_every=1,
                          should_stop=lambda: self.state.interrupted)
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "params.json").write_text(json.dumps(asdict(p), indent=1), encoding="utf-8")
        if p.resume and trainer.resume():
            self._load_history(trainer.step)
        elif not p.resume:
            (self.work / STATE_FILE).unlink(missing_ok=True)
        with run._lock:
            run.status, run.step, run.total_steps = "training", trainer.step, total
            run.total_epochs, run.epoch = math.ceil(total / per_epoch), trainer.step // per_epoch
        self.state.begin(JOB_KIND, 1)
        network.attach()
        try:
            trainer.run()
            self._save_history()
            if trainer.step >= total:
                self._save(network, data, p.name, math.ceil(total / per_epoch), trainer.step)
        finally:
            network.detach()
            if p.gradient_checkpointing:
                model.unet.disable_gradient_checkpointing()
            for module, flags in zip(frozen, requires, strict=True):
                for parameter, flag in zip(module.parameters(), flags, strict=True):
                    parameter.requires_grad_(flag)
        with run._lock:
            run.status = "done" if trainer.step >= total else "stopped"
        return list(run.saved)

    def _on_progress(self, network: LoraNetwork, data: TrainingSet, progress: TrainProgress) -> None:
        p, run = self.params, self.run
        per_epoch = data.steps_per_epoch
        with run._lock:
            run.step, run.eta_s = progress.step, progress.eta_s
            run.epoch = math.ceil(progress.step / per_epoch)
            run.losses.append((progress.step, round(progress.loss, 6)))
        self.state.set_step(progress.step, progress.total)
        self.state.textinfo = progress.line()
        epoch, rest = divmod(progress.step, per_epoch)
        if rest == 0 and progress.step < progress.total:
            self._save_history()
            if epoch % p.save_every_n_epochs == 0:
                self._save(network, data, f"{p.name}-{epoch:06d}", epoch, progress.step)
        if p.sample_every_n_steps and progress.step % p.sample_every_n_steps == 0 and p.sample_prompt:
            self._sample(self.work / "samples" / f"{p.name}-step{progress.step:06d}.png")

    # -- 3. files
    def metadata(self, data: TrainingSet, epoch: int, step: int) -> dict[str, str]:
        """kohya's `ss_*` metadata (train_network.py), values as the strings it writes."""
        p, model = self.params, self.model
        assert model is not None
        folder = Path(p.dataset).expanduser()
        captions = [c for bucket in data.captions.values() for c in bucket]
        resolution = (p.resolution, p.resolution)
        buckets = {str(i): {"resolution": list(size), "count": len(data.captions[size]) * p.repeats}
                   for i, size in enumerate(sorted(data.captions))}
        optimizer = available_optimizers()[p.optimizer]
        optimizer_class = getattr(optimizer, "func", optimizer)
        optimizer_args = ",".join(f"{k}={v}" for k, v in getattr(optimizer, "keywords", {}).items())
        metadata = {
            "ss_session_id": self.run.id,
            "ss_training_started_at": str(self.started_at),
            "ss_training_finished_at": str(time.time()),
            "ss_output_name": p.name,
            "ss_learning_rate": str(p.unet_lr),
            "ss_unet_lr": str(p.unet_lr),
            "ss_text_encoder_lr": str(p.text_encoder_lr),
            "ss_num_train_images": str(data.image_count * p.repeats),
            "ss_num_reg_images": "0",
            "ss_num_batches_per_epoch": str(data.steps_per_epoch),
            "ss_num_epochs": str(math.ceil(self.total_steps(data) / data.steps_per_epoch)),
            "ss_epoch": str(epoch),
            "ss_steps": str(step),
            "ss_max_train_steps": str(self.total_steps(data)),
            "ss_gradient_checkpointing": str(p.gradient_checkpointing),
            "ss_gradient_accumulation_steps": "1",
            "ss_lr_warmup_steps": str(p.warmup_steps),
            "ss_lr_scheduler": p.scheduler if p.scheduler == "cosine" else "constant_with_warmup",
            "ss_network_module": "networks.lora",
            "ss_network_dim": str(p.dim),
            "ss_network_alpha": str(p.alpha),
            "ss_network_dropout": "None",
            "ss_mixed_precision": p.mixed_precision,
            "ss_full_fp16": "False",
            "ss_v2": str(model.family.architecture == "sd2"),
            "ss_base_model_version": base_model_version(model),
            "ss_clip_skip": str(p.clip_skip),
            "ss_max_token_length": "None",
            "ss_cache_latents": "True",
            "ss_seed": str(p.seed),
            "ss_noise_offset": str(p.noise_offset) if p.noise_offset else "None",
            "ss_min_snr_gamma": str(p.min_snr_gamma) if p.min_snr_gamma else "None",
            "ss_optimizer": f"{optimizer_class.__module__}.{optimizer_class.__name__}"
                            + (f"({optimizer_args})" if optimizer_args else ""),
            "ss_max_grad_norm": "1.0",
            "ss_prior_loss_weight": "1.0",
            "ss_caption_dropout_rate": "0.0",
            "ss_sd_model_name": self.checkpoint_path.name,
            "ss_sd_model_hash": self.checkpoint_hashes[0],
            "ss_new_sd_model_hash": self.checkpoint_hashes[1],
            "ss_vae_name": "None",
            "ss_resolution": str(resolution),
            "ss_batch_size_per_device": str(p.batch_size),
            "ss_total_batch_size": str(p.batch_size),
            "ss_enable_bucket": str(p.buckets),
            "ss_min_bucket_reso": str(min(min(s) for s in data.captions)),
            "ss_max_bucket_reso": str(max(max(s) for s in data.captions)),
            "ss_bucket_no_upscale": "False",
            "ss_bucket_info": json.dumps({"buckets": buckets, "mean_img_ar_error": 0.0}),
            "ss_tag_frequency": json.dumps({folder.name: dict(dataset.tag_frequency(captions))}),
            "ss_dataset_dirs": json.dumps({folder.name: {"n_repeats": p.repeats, "img_count": data.image_count}}),
            "ss_reg_dataset_dirs": "{}",
            "ss_keep_tokens": "0",
            "ss_shuffle_caption": "False",
            "ss_flip_aug": "False",
            "ss_color_aug": "False",
            "ss_random_crop": "False",
            "ss_training_comment": "None",
            "ss_sd_scripts_commit_hash": "",
        }
        if p.network_type == "LoCon":  # kohya writes the network args only when there are some
            metadata["ss_network_args"] = json.dumps({"conv_dim": str(p.conv_dim), "conv_alpha": str(p.conv_alpha)})
        return metadata

    def _save(self, network: LoraNetwork, data: TrainingSet, stem: str, epoch: int, step: int) -> None:
        path = save_kohya_file(network.kohya_state_dict(), self.metadata(data, epoch, step),
                               lora_dir(self.ctx) / f"{stem}.safetensors")
        with self.run._lock:
            self.run.saved.append(str(path))
        if self.params.sample_prompt:
            self._sample(path.with_suffix(".png"))
        self.ctx.networks.registry.refresh()

    def _sample(self, target: Path) -> None:
        """One image of the sample prompt with the network live, through the normal generation path."""
        from backend.processing import StableDiffusionProcessingTxt2Img, process_images

        p = self.params
        with self.run._lock:
            status, self.run.status = self.run.status, "sampling"
        request = StableDiffusionProcessingTxt2Img(
            prompt=p.sample_prompt, steps=p.sample_steps, cfg_scale=p.sample_cfg_scale, sampler_name=p.sample_sampler,
            seed=p.seed, width=p.resolution, height=p.resolution, do_not_save_samples=True, do_not_save_grid=True,
            override_settings={"sd_model_checkpoint": self.checkpoint_title})
        with torch.no_grad():
            image = process_images(request, self.ctx.processing_context(self.ctx.queue.new_state())).images[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
        with self.run._lock:
            self.run.samples.append(str(target))
            self.run.status = status

    def _save_history(self) -> None:
        with self.run._lock:
            losses = list(self.run.losses)
        (self.work / "losses.json").write_text(json.dumps(losses), encoding="utf-8")

    def _load_history(self, step: int) -> None:
        path = self.work / "losses.json"
        if path.is_file():
            with self.run._lock:
                self.run.losses = [(int(s), float(v)) for s, v in json.loads(path.read_text(encoding="utf-8"))
                                   if s <= step]


def submit_training(ctx: AppContext, params: LoraTrainingParams) -> tuple[Job, TrainingRun]:
    """Validate `params` (InvalidRequest names the field) and queue the run; returns its job at once."""
    params.validate()
    if params.resume and not (work_dir(ctx, params.name) / STATE_FILE).is_file():
        raise InvalidRequest("resume", f"no saved state of a run named {params.name!r} to resume")
    run = TrainingRun(params)

    def job(state: JobState) -> list[str]:
        try:
            return LoraTrainer(ctx, params, run, state).train()
        except BaseException as exc:
            run.fail(str(exc))
            raise

    return ctx.queue.submit(JOB_KIND, job, request=run), run


# ---- comparing epochs and weights ---------------------------------------------------------------------------

def epoch_stems(folder: Path, name: str) -> list[str]:
    """The saved networks of run `name` in `folder`, oldest epoch first, the final file last."""
    pattern = re.compile(rf"{re.escape(name)}-\d{{6}}")
    stems = sorted(p.stem for p in folder.glob("*.safetensors") if pattern.fullmatch(p.stem))
    return stems + ([name] if (folder / f"{name}.safetensors").is_file() else [])


def comparison_request(ctx: AppContext, name: str, prompt: str, weights: str, *, seed: int = 1, steps: int = 20,
                       size: int = 512, sampler: str = "Euler a") -> StableDiffusionProcessingTxt2Img:
    """A txt2img request running the X/Y/Z plot: X = Prompt S/R over the saved epochs' `<lora:...>` names,
    Y = Prompt S/R over the multipliers in `weights` (comma-separated), one seed for every cell."""
    from backend.processing import StableDiffusionProcessingTxt2Img

    stems = epoch_stems(lora_dir(ctx), name)
    if not stems:
        raise InvalidRequest("name", f"no saved networks named {name!r} or {name!r}-NNNNNN in {lora_dir(ctx)}")
    values = [w.strip() for w in weights.split(",") if w.strip()]
    try:
        [float(w) for w in values]
    except ValueError:
        raise InvalidRequest("weights", f"expected comma-separated numbers, got {weights!r}") from None
    if not values:
        raise InvalidRequest("weights", "give at least one multiplier, e.g. 0.1, 0.4, 0.7, 1.0")
    p = StableDiffusionProcessingTxt2Img(prompt=f"{prompt} <lora:{stems[0]}:{values[0]}>", seed=seed, steps=steps,
                                         width=size, height=size, sampler_name=sampler, do_not_save_samples=True)
    runner = ctx.scripts.txt2img
    runner.bind(p, runner.script_args("X/Y/Z plot", ["Prompt S/R", ", ".join(stems), None,
                                                     "Prompt S/R", ", ".join(values), None,
                                                     "Nothing", "", None, True, False, False]))
    return p
