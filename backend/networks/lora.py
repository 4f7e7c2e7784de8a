"""LoRA and LyCORIS network files: reading, module types, and the weight delta of each layer.

The math follows A1111's built-in Lora extension (extensions-builtin/Lora/network*.py, v1.10) so that a
network changes a model's weights exactly as A1111 merges it:

    new_weight = weight + multiplier * finalize(type_delta(...) * scale)

- `scale` = the file's `scale` if present, else `alpha / dim` when both are known, else 1.0, where `dim` is
  the type's rank (LoRA: `lora_down.weight.shape[0]`, LoHa: `hada_w1_b.shape[0]`, LoKr: the rank of
  `lokr_w2_b` or `lokr_w1_b`; IA3, full, norm and GLoRA have none, so their scale is 1 unless `scale` is
  stored; OFT always uses 1).
- DoRA (`dora_scale`) re-normalises `weight + scaled delta` column-wise (A1111/kohya, a `(1, in, ...)`
  magnitude) or row-wise (LyCORIS `wd_on_out` and PEFT, an `(out, ...)` magnitude), before the multiplier.
- Multiplier: the te multiplier on text-encoder layers, the unet multiplier elsewhere.

Types are recognised by their tensor names, first match wins, in A1111's order: LoRA/LoCon
(`lora_up`/`lora_down`, optional Tucker `lora_mid`), LoHa, (IA)^3, LoKr, full (`diff`), norm, GLoRA, OFT.
Deltas are computed in float32 on the weight's device; the caller adds them and casts back to the
weight's dtype, as A1111 does (`(weight + updown).to(weight.dtype)`).

Scalars (`alpha`, `scale`, `on_input`) are read once when the file is parsed, so the same functions also
run on the meta device: `check_shapes` finds a network that does not fit the model without computing.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from backend.errors import ModelLoadError
from backend.networks.keys import split_key

logger = logging.getLogger(__name__)

_SCALARS = ("alpha", "scale", "on_input")
# Tensors of textual-inversion embeddings bundled in a network file (`bundle_emb.<name>.*`); they belong
# to the embeddings feature, not to weight patching.
BUNDLED_EMBEDDING_KEY = "bundle_emb"


@dataclass
class NetworkModule:
    """The tensors a network holds for one layer, with its type and scalars."""

    key: str  # module key as written in the file
    kind: str  # "lora" | "loha" | "ia3" | "lokr" | "full" | "norm" | "glora" | "oft"
    tensors: dict[str, Tensor]
    alpha: float | None = None
    scale: float | None = None
    on_input: bool = False


@dataclass
class ParsedNetwork:
    """A network file's layers by module key (tensors on the CPU, in the file's dtype)."""

    modules: dict[str, NetworkModule]
    bundled_embeddings: list[str] = field(default_factory=list)


# ---- reading ----------------------------------------------------------------------------------------------

def read_network_file(path: Path) -> dict[str, Tensor]:
    """All tensors of a network file on the CPU.

    `.pt`/`.ckpt` go through the checkpoint loader's safe unpickling (`torch.load(weights_only=True)`), which
    refuses files that need other Python objects with a message saying so.
    """
    from backend.models.loader import read_state_dict

    return read_state_dict(Path(path))


def _module_kind(parts: Mapping[str, Tensor]) -> str | None:
    def has(*names: str) -> bool:
        return all(name in parts for name in names)

    if has("lora_up.weight", "lora_down.weight"):
        return "lora"
    if has("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"):
        return "loha"
    if has("weight"):
        return "ia3"
    if (has("lokr_w1") or has("lokr_w1_a", "lokr_w1_b")) and (has("lokr_w2") or has("lokr_w2_a", "lokr_w2_b")):
        return "lokr"
    if has("diff"):
        return "full"
    if has("w_norm", "b_norm"):
        return "norm"
    if has("a1.weight", "a2.weight", "alpha", "b1.weight", "b2.weight"):
        return "glora"
    if has("oft_blocks") or has("oft_diag"):
        return "oft"
    return None


def parse_network(tensors: Mapping[str, Tensor], name: str) -> ParsedNetwork:
    """Group a network's tensors by layer and recognise each layer's type.

    Raises ModelLoadError naming the layer when its tensor names fit no known type (A1111: "Could not
    find a module type ... that would accept those keys").
    """
    groups: dict[str, dict[str, Tensor]] = {}
    bundled: set[str] = set()
    for key, value in tensors.items():
        module_key, part = split_key(key)
        if module_key == BUNDLED_EMBEDDING_KEY:
            bundled.add(part.split(".", 1)[0])
            continue
        groups.setdefault(module_key, {})[part] = value
    modules = {}
    for module_key, parts in groups.items():
        kind = _module_kind(parts)
        if kind is None:
            raise ModelLoadError(f"network {name!r}: layer {module_key!r} has tensors {sorted(parts)}, which fit no "
                                 f"known network type (LoRA, LoCon, LoHa, (IA)^3, LoKr, full, norm, GLoRA, OFT)")
        scalars = {part: parts[part].float().item() for part in _SCALARS
                   if part in parts and parts[part].numel() == 1}
        modules[module_key] = NetworkModule(
            module_key, kind, {part: value for part, value in parts.items() if part not in _SCALARS},
            alpha=scalars.get("alpha"), scale=scalars.get("scale"), on_input=bool(scalars.get("on_input", 0.0)))
    if bundled:
        logger.info("network %s bundles embeddings %s; they are not loaded as textual inversions", name,
                    sorted(bundled))
    return ParsedNetwork(modules, sorted(bundled))


# ---- helpers shared by the types (LyCORIS conventions, as A1111's lyco_helpers) ----------------------------

def _rebuild(up: Tensor, down: Tensor, shape: list[int], dyn_dim: int | None = None) -> Tensor:
    up = up.reshape(up.size(0), -1)
    down = down.reshape(down.size(0), -1)
    if dyn_dim is not None:
        up, down = up[:, :dyn_dim], down[:dyn_dim, :]
    return (up @ down).reshape(shape)


def _tucker_cp(core: Tensor, wa: Tensor, wb: Tensor) -> Tensor:
    # LyCORIS CP/Tucker weight: core [r, r, k, k], wb [r, in], wa [r, out] -> [out, in, k, k].
    temp = torch.einsum("i j k l, j r -> i r k l", core, wb)
    return torch.einsum("i j k l, i r -> r j k l", temp, wa)


@dataclass
class _Delta:
    updown: Tensor
    output_shape: list[int]
    dim: int | None = None
    ex_bias: Tensor | None = None
    fixed_scale: float | None = None  # OFT ignores alpha/scale


TensorGetter = Callable[[str], Tensor]


def _lora(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    up, down = t("lora_up.weight"), t("lora_down.weight")
    shape = [up.size(0), down.size(1)]
    if "lora_mid.weight" in m.tensors:
        mid = t("lora_mid.weight")
        updown = torch.einsum("n m k l, i n, m j -> i j k l", mid, up.reshape(up.size(0), -1),
                              down.reshape(down.size(0), -1))
        shape += list(mid.shape[2:])
    else:
        if down.dim() == 4:
            shape += list(down.shape[2:])
        updown = _rebuild(up, down, shape, dyn_dim)
    return _Delta(updown, shape, dim=down.size(0))


def _loha(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    w1a, w1b, w2a, w2b = t("hada_w1_a"), t("hada_w1_b"), t("hada_w2_a"), t("hada_w2_b")
    shape = [w1a.size(0), w1b.size(1)]
    if "hada_t1" in m.tensors:
        t1 = t("hada_t1")
        shape = [w1a.size(1), w1b.size(1), *t1.shape[2:]]
        first = _tucker_cp(t1, w1a, w1b)
    else:
        if w1b.dim() == 4:
            shape += list(w1b.shape[2:])
        first = _rebuild(w1a, w1b, shape)
    second = _tucker_cp(t("hada_t2"), w2a, w2b) if "hada_t2" in m.tensors else _rebuild(w2a, w2b, shape)
    return _Delta(first * second, shape, dim=w1b.size(0))


def _ia3(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    scales = t("weight")
    if not m.on_input:
        scales = scales.reshape(-1, *[1] * (weight.dim() - 1))
    return _Delta(weight * scales, list(weight.shape))


def _lokr(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    parts = m.tensors
    w1 = t("lokr_w1") if "lokr_w1" in parts else t("lokr_w1_a") @ t("lokr_w1_b")
    if "lokr_w2" in parts:
        w2 = t("lokr_w2")
    elif "lokr_t2" in parts:
        w2 = _tucker_cp(t("lokr_t2"), t("lokr_w2_a"), t("lokr_w2_b"))
    else:
        w2 = t("lokr_w2_a") @ t("lokr_w2_b")
    shape = list(weight.shape) if weight.dim() == 4 else [w1.size(0) * w2.size(0), w1.size(1) * w2.size(1)]
    if w2.dim() == 4:
        w1 = w1[:, :, None, None]
    dim = None
    for rank_key in ("lokr_w2_b", "lokr_w1_b"):
        if rank_key in parts:
            dim = parts[rank_key].size(0)
            break
    return _Delta(torch.kron(w1, w2.contiguous()).reshape(shape), shape, dim=dim)


def _full(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    diff = t("diff")
    return _Delta(diff, list(diff.shape), ex_bias=t("diff_b") if "diff_b" in m.tensors else None)


def _norm(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    w_norm = t("w_norm")
    return _Delta(w_norm, list(w_norm.shape), ex_bias=t("b_norm"))


def _glora(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    a1, a2, b1, b2 = t("a1.weight"), t("a2.weight"), t("b1.weight"), t("b2.weight")
    flat = weight.reshape(weight.size(0), -1)
    if a2.size(0) == flat.size(1) and b2.size(0) == flat.size(0):
        # The naming A1111 reads (early LyCORIS): a1 [r, in], a2 [in, r], b1 [r, in], b2 [out, r].
        updown = b2 @ b1 + (flat @ a2) @ a1
    else:
        # Current LyCORIS: a1 [in, r], a2 [r, in], b1 [out, r], b2 [r, in]; W + W a1 a2 + b1 b2.
        updown = b1 @ b2 + (flat @ a1) @ a2
    return _Delta(updown, list(updown.shape))


def _oft(m: NetworkModule, t: TensorGetter, weight: Tensor, dyn_dim: int | None) -> _Delta:
    if "oft_blocks" in m.tensors:
        # kohya COFT (and current LyCORIS): skew-symmetric Q, its norm clamped to alpha * out_dim when
        # alpha > 0, then the Cayley transform R = (I + Q)(I - Q)^-1 per block.
        blocks = t("oft_blocks")
        eye = torch.eye(blocks.size(1), device=blocks.device, dtype=blocks.dtype)
        q = blocks - blocks.transpose(1, 2)
        if m.alpha is not None and m.alpha > 0:
            norm = torch.norm(q.flatten())
            clamped = torch.clamp(norm, max=m.alpha * weight.size(0))
            q = q * ((clamped + 1e-8) / (norm + 1e-8))
        rotation = torch.matmul(eye + q, torch.linalg.inv(eye - q))
    else:
        # LyCORIS diag-OFT stores the rotation blocks themselves.
        rotation = t("oft_diag")
        if rotation.dim() != 3:
            raise ModelLoadError(f"layer {m.key!r}: butterfly OFT (BOFT) is not supported")
    num_blocks, block_size = rotation.size(0), rotation.size(1)
    grouped = weight.reshape(num_blocks, block_size, *weight.shape[1:])
    merged = torch.einsum("k n m, k n ... -> k m ...", rotation, grouped).reshape(weight.shape)
    if "rescale" in m.tensors:
        merged = t("rescale").reshape(-1, *[1] * (weight.dim() - 1)) * merged
    return _Delta(merged - weight, list(weight.shape), fixed_scale=1.0)


_TYPES: dict[str, Callable[[NetworkModule, TensorGetter, Tensor, int | None], _Delta]] = {
    "lora": _lora, "loha": _loha, "ia3": _ia3, "lokr": _lokr, "full": _full, "norm": _norm,
    "glora": _glora, "oft": _oft,
}


def _decompose(updown: Tensor, weight: Tensor, magnitude: Tensor) -> Tensor:
    """DoRA: rescale `weight + updown` to the stored magnitude, return the change from `weight`."""
    merged = weight + updown
    spatial = [1] * (merged.dim() - 2)
    per_output = magnitude.size(0) == merged.size(0) and magnitude.numel() == merged.size(0) and merged.size(0) != 1
    if per_output:
        norm = merged.reshape(merged.size(0), -1).norm(dim=1).reshape(-1, 1, *spatial)
        scale = magnitude.reshape(-1, 1, *spatial)
    else:
        # A1111/kohya: one magnitude per input column, the norm taken over outputs (and kernel positions).
        norm = merged.transpose(0, 1).reshape(merged.size(1), -1).norm(dim=1).reshape(1, -1, *spatial)
        scale = magnitude.reshape(1, -1, *spatial)
    return merged * (scale / norm) - weight


def compute_delta(module: NetworkModule, weight: Tensor, multiplier: float,
                  dyn_dim: int | None = None) -> tuple[Tensor, Tensor | None]:
    """`(weight delta, bias delta or None)` of one layer, in float32 on `weight`'s device.

    `weight` is the layer's current weight (float32); types that read it (IA3, GLoRA, OFT, DoRA) see the
    weights as already changed by networks applied before, as in A1111. Raises RuntimeError when the
    network's tensors do not fit the layer's shape.
    """
    def get(part: str) -> Tensor:
        return module.tensors[part].to(device=weight.device, dtype=torch.float32)

    delta = _TYPES[module.kind](module, get, weight, dyn_dim)
    updown, shape = delta.updown, delta.output_shape
    if "bias" in module.tensors:
        bias = get("bias")
        updown = (updown.reshape(bias.shape) + bias).reshape(shape)
    if len(shape) == 4:
        updown = updown.reshape(shape)
    if updown.numel() == weight.numel():
        updown = updown.reshape(weight.shape)
    ex_bias = None if delta.ex_bias is None else delta.ex_bias * multiplier
    if delta.fixed_scale is not None:
        scale = delta.fixed_scale
    elif module.scale is not None:
        scale = module.scale
    elif delta.dim is not None and module.alpha is not None:
        scale = module.alpha / delta.dim
    else:
        scale = 1.0
    updown = updown * scale
    if "dora_scale" in module.tensors:
        updown = _decompose(updown, weight, get("dora_scale"))
    if updown.shape != weight.shape and weight.dim() == 4 and weight.size(1) == 9 and updown.dim() == 4 \
            and updown.size(1) == 4:
        # A LoRA for a 4-channel UNet input on an inpainting model: A1111 pads the delta with zeros.
        updown = torch.nn.functional.pad(updown, (0, 0, 0, 0, 0, 5))
    if updown.shape != weight.shape:
        raise RuntimeError(f"delta of shape {tuple(updown.shape)} does not fit weight {tuple(weight.shape)}")
    return updown * multiplier, ex_bias
