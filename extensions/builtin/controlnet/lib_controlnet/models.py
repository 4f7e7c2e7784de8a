"""ControlNet model files: listing them as A1111-ControlNet names them, and loading them offline as
diffusers `ControlNetModel`s.

Accepted, in `<models_dir>/ControlNet` (and the `control_net_models_path` option's folder):
- single files (.safetensors; .pth/.ckpt/.pt/.bin only as weights-only pickles) in lllyasviel's original
  layout (`control_model.input_blocks...`, `zero_convs`, `input_hint_block`, `middle_block_out`, with or
  without the `control_model.` prefix) or in diffusers' layout (`controlnet_cond_embedding...`);
- diffusers folders (config.json + diffusion_pytorch_model.safetensors/.bin).

Single files carry no config: it is derived from the tensors with the same family rules the checkpoint
loader uses (backend.models.families): SD1 (8 heads), SD2 (linear projections, 64-channel heads) or SDXL
(added text/time embedding). Nothing is fetched from the hub.
"""
from __future__ import annotations

import inspect
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from backend.errors import InvalidRequest, ModelLoadError, ModelNotFound
from backend.models.families import UNetDims, family_by_name, read_config, unet_config
from backend.models.hashes import legacy_model_hash
from backend.models.loader import read_state_dict
from backend.models.registry import natural_sort_key

MODEL_SUBDIR = "ControlNet"
SUFFIXES = (".safetensors", ".pth", ".ckpt", ".pt", ".bin")
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                  "diffusion_pytorch_model.fp16.safetensors")
LDM_PREFIX = "control_model."
_HASH_SUFFIX = re.compile(r"\s*\[[0-9a-fA-F]{8,10}\]$")


@dataclass(frozen=True)
class ControlNetFile:
    """One ControlNet on disk; `title` is A1111-ControlNet's "name [hash8]" (legacy 8-hex hash)."""

    name: str
    path: Path
    weights: Path
    hash: str

    @property
    def title(self) -> str:
        return f"{self.name} [{self.hash}]"


def model_dirs(models_dir: Path | None, extra: str | None = None) -> list[Path]:
    dirs = [models_dir / MODEL_SUBDIR] if models_dir is not None else []
    if extra:
        dirs.append(Path(extra).expanduser())
    return dirs


def list_models(dirs: Iterable[Path]) -> list[ControlNetFile]:
    """Every ControlNet file and diffusers folder under `dirs`, by name (natural order); the first
    folder wins when two hold the same name."""
    found: dict[str, ControlNetFile] = {}
    for root in dirs:
        if not root.is_dir():
            continue
        for item in _walk(root):
            found.setdefault(item.name.lower(), item)
    return sorted(found.values(), key=lambda m: natural_sort_key(m.name))


def _walk(folder: Path) -> Iterable[ControlNetFile]:
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            weights = next((path / w for w in FOLDER_WEIGHTS if (path / w).is_file()), None)
            if weights is not None and (path / "config.json").is_file():
                yield ControlNetFile(path.name, path, weights, legacy_model_hash(weights))
            else:
                yield from _walk(path)
        elif path.suffix.lower() in SUFFIXES:
            yield ControlNetFile(path.stem, path, path, legacy_model_hash(path))


def find_model(models: list[ControlNetFile], name: str) -> ControlNetFile | None:
    """The model a unit names: "name [hash]" exactly, else the name alone (hash stripped or stale,
    file extension optional, case-insensitive)."""
    for model in models:
        if model.title == name:
            return model
    wanted = _HASH_SUFFIX.sub("", name).strip().lower()
    for model in models:
        if wanted in (model.name.lower(), model.path.name.lower()):
            return model
    return None


def is_none(name: str | None) -> bool:
    return name is None or name.strip().lower() in ("", "none")


def resolve(models: list[ControlNetFile], name: str, field: str) -> ControlNetFile:
    """`find_model`, or a clear error: InvalidRequest when no model was chosen, ModelNotFound otherwise."""
    if is_none(name):
        raise InvalidRequest(field, "no ControlNet model selected: choose one from /controlnet/model_list")
    found = find_model(models, name)
    if found is None:
        raise ModelNotFound("ControlNet model", name, [m.title for m in models] or ["(none installed: put models "
                                                                                    f"in models/{MODEL_SUBDIR})"])
    return found


# ---- loading --------------------------------------------------------------------------------------------

def load(model: ControlNetFile, *, device: torch.device, dtype: torch.dtype,
         time_embed_dim: int | None = None) -> Any:
    """A diffusers ControlNetModel on `device`/`dtype`, in eval mode. `time_embed_dim` is the base
    model's SDXL size-embedding width (single files do not record it)."""
    from diffusers import ControlNetModel

    if model.path.is_dir():
        try:
            net = ControlNetModel.from_pretrained(model.path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{model.name}: cannot load the diffusers ControlNet folder ({exc})") from exc
    else:
        net = _build(diffusers_state_dict(read_state_dict(model.path), model.name), model.name, time_embed_dim)
    torch.nn.Module.to(net, device=device, dtype=dtype)
    return net.eval().requires_grad_(False)


def diffusers_state_dict(state: dict[str, Tensor], name: str) -> dict[str, Tensor]:
    """The tensors in diffusers' ControlNetModel naming, whatever layout the file uses."""
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if "controlnet_cond_embedding.conv_in.weight" in state:
        return state
    if any(key.startswith(LDM_PREFIX) for key in state):
        state = {key[len(LDM_PREFIX):]: value for key, value in state.items() if key.startswith(LDM_PREFIX)}
    if "input_hint_block.0.weight" not in state or "time_embed.0.weight" not in state:
        raise ModelLoadError(f"{name}: not a ControlNet model ({_guess_kind(state)}); only ControlNet models in "
                             "lllyasviel's or diffusers' layout are supported")
    converted = convert_controlnet_checkpoint(state, {"layers_per_block": _ldm_layers_per_block(state)})
    # SDXL's added text/time embedding; diffusers' converter leaves it out.
    for ldm, diffusers_name in (("label_emb.0.0", "add_embedding.linear_1"), ("label_emb.0.2", "add_embedding.linear_2")):
        for param in ("weight", "bias"):
            if f"{ldm}.{param}" in state:
                converted[f"{diffusers_name}.{param}"] = state[f"{ldm}.{param}"]
    return {key: value for key, value in converted.items() if value is not None}


def _guess_kind(state: dict[str, Tensor]) -> str:
    keys = list(state)
    if any("lora" in key for key in keys):
        return "it looks like a Control-LoRA"
    if any(key.startswith(("adapter.", "body.", "conv_in.")) and "time" not in key for key in keys):
        return "it looks like a T2I-Adapter"
    if any(key.startswith(("image_proj.", "ip_adapter.")) for key in keys):
        return "it looks like an IP-Adapter"
    return f"{len(keys)} tensors, none of ControlNet's hint block"


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return sorted({int(match[1]) for key in keys if (match := regex.match(key))})


def _ldm_layers_per_block(state: dict[str, Tensor]) -> int:
    entries = _indices(state, r"input_blocks\.(\d+)\.")
    downsamplers = [i for i in entries if f"input_blocks.{i}.0.op.weight" in state]
    per_level, rest = divmod(len(entries) - 1 - len(downsamplers), len(downsamplers) + 1)
    if rest or per_level < 1:
        raise ModelLoadError(f"ControlNet input blocks do not form equal levels ({len(entries)} blocks)")
    return per_level


def _shape(state: dict[str, Tensor], key: str, name: str) -> tuple[int, ...]:
    if key not in state:
        raise ModelLoadError(f"{name}: ControlNet tensor {key!r} is missing")
    return tuple(state[key].shape)


def controlnet_config(state: dict[str, Tensor], name: str, time_embed_dim: int | None = None) -> dict[str, Any]:
    """A ControlNetModel config derived from diffusers-named tensors and the family rules."""
    from diffusers import ControlNetModel

    levels = _indices(state, r"down_blocks\.(\d+)\.")
    if not levels:
        raise ModelLoadError(f"{name}: no down blocks in the ControlNet")
    channels = tuple(_shape(state, f"down_blocks.{i}.resnets.0.conv2.weight", name)[0] for i in levels)
    layers = len(_indices(state, r"down_blocks\.0\.resnets\.(\d+)\."))
    attention = tuple(any(key.startswith(f"down_blocks.{i}.attentions.") for key in state) for i in levels)
    depth = tuple(len(_indices(state, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.")) or 1
                  for i in levels)
    attn_keys = [key for key in state if key.endswith("transformer_blocks.0.attn2.to_k.weight")]
    if not attn_keys:
        raise ModelLoadError(f"{name}: the ControlNet has no cross-attention")
    cross = state[attn_keys[0]].shape[1]
    proj_in = next(key for key in state if key.endswith("attentions.0.proj_in.weight"))
    is_sdxl = "add_embedding.linear_1.weight" in state
    family = family_by_name("sdxl" if is_sdxl else "sd2" if state[proj_in].ndim == 2 else "sd1")
    in_channels = _shape(state, "conv_in.weight", name)[1]
    adm = state["add_embedding.linear_1.weight"].shape[1] if is_sdxl else None
    if is_sdxl and time_embed_dim is None:
        time_embed_dim = int(read_config(family, "unet")["addition_time_embed_dim"])
    config = unet_config(family, UNetDims(channels, layers, cross, attention, depth, in_channels, in_channels,
                                          adm, time_embed_dim if is_sdxl else None))
    hint_blocks = _indices(state, r"controlnet_cond_embedding\.blocks\.(\d+)\.")
    config.update(
        conditioning_channels=_shape(state, "controlnet_cond_embedding.conv_in.weight", name)[1],
        conditioning_embedding_out_channels=[
            _shape(state, "controlnet_cond_embedding.conv_in.weight", name)[0],
            *(_shape(state, f"controlnet_cond_embedding.blocks.{i}.weight", name)[0] for i in hint_blocks if i % 2)],
        mid_block_type="UNetMidBlock2DCrossAttn" if any(k.startswith("mid_block.attentions.") for k in state)
        else "UNetMidBlock2D",
    )
    accepted = inspect.signature(ControlNetModel.__init__).parameters
    return {key: value for key, value in config.items() if key in accepted}


def _build(state: dict[str, Tensor], name: str, time_embed_dim: int | None) -> Any:
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel

    with init_empty_weights():
        net = ControlNetModel.from_config(controlnet_config(state, name, time_embed_dim))
    result = net.load_state_dict(state, strict=False, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ModelLoadError(f"{name}: the ControlNet's tensors do not match its derived architecture "
                             f"(missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
    return net


def check_compatible(net: Any, model: ControlNetFile, base_unet: Any, is_sdxl: bool, field: str) -> None:
    """A ControlNet must match the checkpoint's architecture (SD1/SD2 width, SDXL or not)."""
    net_sdxl = net.config.addition_embed_type == "text_time"
    net_cross, base_cross = net.config.cross_attention_dim, base_unet.config.cross_attention_dim
    if net_sdxl != is_sdxl or net_cross != base_cross:
        kind = "SDXL" if net_sdxl else f"SD1/SD2 (cross-attention width {net_cross})"
        base = "SDXL" if is_sdxl else f"SD1/SD2 (cross-attention width {base_cross})"
        raise InvalidRequest(field, f"ControlNet model {model.title} is for {kind} but the checkpoint is {base}")


class ModelCache:
    """Loaded ControlNets, least recently used dropped first; keyed by file state, device and dtype."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, model: ControlNetFile, *, device: torch.device, dtype: torch.dtype, limit: int,
            time_embed_dim: int | None = None) -> Any:
        stat = model.weights.stat()
        key = (str(model.path), stat.st_mtime_ns, stat.st_size, str(device), dtype, time_embed_dim)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            net = load(model, device=device, dtype=dtype, time_embed_dim=time_embed_dim)
            if limit > 0:
                self._items[key] = net
                while len(self._items) > limit:
                    self._items.popitem(last=False)
            return net

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
