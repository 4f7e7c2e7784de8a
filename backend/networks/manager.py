"""Activating a set of networks on a loaded model: prompt requests in, patched weights out.

`NetworkManager.activate(model, requests)` makes the model's weights equal to the original weights with
the requested networks merged in, in request order (A1111's `network_apply_weights`, done once per set
instead of on every forward):
1. the same set as last time (same files, mtimes and multipliers, same model) does nothing;
2. otherwise every patched weight is restored bit for bit from its backup (`WeightPatcher`);
3. each requested network is found, loaded (or taken from the in-memory cache), checked against the
   model (declared family, then every layer's shape, on the meta device) and, if it fits, merged layer
   by layer: `weight = (weight.float() + delta).to(weight.dtype)`.
Names that match no file go to `missing` ("Lora not found"), networks that cannot be read or do not fit
go to `errors`; neither raises, so a job runs on without them, as in A1111.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from backend.errors import InvalidRequest, ModelLoadError
from backend.networks.keys import TEXT_ENCODER, TEXT_ENCODER_2, ModuleIndex, Target
from backend.networks.lora import NetworkModule, ParsedNetwork, compute_delta, parse_network, read_network_file
from backend.networks.patcher import WeightPatcher
from backend.networks.registry import FAMILY_TITLES, NetworkInfo, NetworkRegistry

logger = logging.getLogger(__name__)

# Extra-network tag names handled here; `<lyco:...>` is A1111's alias of `<lora:...>`.
TAG_NAMES = ("lora", "lyco")


@dataclass(frozen=True)
class NetworkRequest:
    """One `<lora:NAME:TE:UNET:DYN>` tag: the network and its multipliers."""

    name: str
    te_multiplier: float = 1.0
    unet_multiplier: float = 1.0
    dyn_dim: int | None = None


def requests_from_prompt_params(params: Sequence[Any]) -> list[NetworkRequest]:
    """`NetworkRequest`s from the parsed `<lora:...>` tags (`ExtraNetworkParams`), as A1111 reads them.

    Positional: name, te multiplier (default 1.0), unet multiplier (default: the te one), dyn dim; the
    named forms `te=`, `unet=`, `dyn=` override them. Raises InvalidRequest for a tag without a name or
    with a value that is not a (finite) number, where A1111 fails the job with a ValueError.
    """
    requests = []
    for tag in params:
        text = "<lora:" + ":".join(tag.items) + ">"
        if not tag.positional or not tag.positional[0].strip():
            raise InvalidRequest("prompt", f"{text}: the network name is missing")
        positional, named = tag.positional, tag.named
        te = _number(positional[1] if len(positional) > 1 else "1.0", text)
        te = _number(named["te"], text) if "te" in named else te
        unet = _number(positional[2], text) if len(positional) > 2 else te
        unet = _number(named["unet"], text) if "unet" in named else unet
        dyn = _integer(positional[3], text) if len(positional) > 3 else None
        dyn = _integer(named["dyn"], text) if "dyn" in named else dyn
        requests.append(NetworkRequest(positional[0], te, unet, dyn))
    return requests


def _number(value: str, tag: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise InvalidRequest("prompt", f"{tag}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise InvalidRequest("prompt", f"{tag}: {value!r} is not a finite number")
    return number


def _integer(value: str, tag: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidRequest("prompt", f"{tag}: dyn dim {value!r} is not an integer") from None


@dataclass
class ActivationResult:
    """What `activate` did: networks merged (info, te, unet), names not found, and refusals/failures.

    `mentioned_names[i]` is the name the prompt used for `applied[i]` (file stem or alias); A1111 writes
    that name into the "Lora hashes" infotext so that pasting it maps back to the same file.
    """

    applied: list[tuple[NetworkInfo, float, float]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    mentioned_names: list[str] = field(default_factory=list)

    @property
    def not_found_comment(self) -> str | None:
        """A1111's comment for missing networks: "Lora not found: a, b"."""
        return f"Lora not found: {', '.join(self.missing)}" if self.missing else None

    def lora_hashes(self) -> str | None:
        """The "Lora hashes" infotext value for the applied networks."""
        return lora_hashes_infotext(self.applied, self.mentioned_names)


def lora_hashes_infotext(applied: Sequence[tuple[NetworkInfo, float, float]],
                         mentioned_names: Sequence[str] | None = None) -> str | None:
    """`"alias: hash, alias2: hash2"` for the "Lora hashes" infotext key, or None when no hash is known.

    The alias is the name used in the prompt (`mentioned_names`, else the network's alias), with ':' and
    ',' removed; networks whose hash is unknown are left out, as in A1111.
    """
    items = []
    for index, (info, _te, _unet) in enumerate(applied):
        if not info.shorthash:
            continue
        alias = mentioned_names[index] if mentioned_names and index < len(mentioned_names) else info.alias
        alias = alias.replace(":", "").replace(",", "")
        if alias:
            items.append(f"{alias}: {info.shorthash}")
    return ", ".join(items) if items else None


class PatchableModel(Protocol):
    """What `activate` needs of a model (`LoadedModel` has it)."""

    family: Any  # backend.models.families.Family
    unet: Any
    text_encoder: Any
    text_encoder_2: Any | None


@dataclass
class _Loaded:
    mtime: float
    network: ParsedNetwork


class NetworkFitError(Exception):
    """A network that does not fit the model (another family); nothing of it was applied."""


class NetworkManager:
    """Applies networks to one model at a time, keeping exact backups; see the module docstring.

    `memory_limit` (option `lora_in_memory_limit`) is how many parsed networks stay cached besides the
    active ones; 0 keeps only the active set, as in A1111. Thread-safe; meant to be driven by the one
    worker that runs jobs.
    """

    def __init__(self, registry: NetworkRegistry, *, memory_limit: int = 0) -> None:
        self.registry = registry
        self.memory_limit = memory_limit
        self._patcher = WeightPatcher()
        self._lock = threading.RLock()
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._active: dict[str, _Loaded] = {}
        self._model: Any = None
        self._index: ModuleIndex | None = None
        self._state: tuple = ()
        self._last = ActivationResult()

    @property
    def active_model(self) -> Any:
        """The model whose weights are currently patched (None when nothing is applied)."""
        return self._model if self._patcher.patched_count else None

    def activate(self, model: PatchableModel, requests: Sequence[NetworkRequest]) -> ActivationResult:
        """Make `model`'s weights the originals plus exactly `requests`; see the module docstring.

        `activate(model, [])` restores the original weights. Switching to another model restores the
        previous model's weights first.
        """
        with self._lock:
            found: list[tuple[NetworkRequest, NetworkInfo]] = []
            missing: list[str] = []
            for request in requests:
                info = self.registry.find(request.name)
                if info is None:
                    missing.append(request.name)
                else:
                    found.append((request, info))
            state = (id(model), tuple((str(info.path), info.mtime, info.size, r.te_multiplier, r.unet_multiplier,
                                       r.dyn_dim) for r, info in found))
            if state == self._state and model is self._model:
                return ActivationResult(list(self._last.applied), missing, list(self._last.errors),
                                        list(self._last.mentioned_names))
            self.deactivate()
            self._bind(model)
            result = ActivationResult(missing=missing)
            active: dict[str, _Loaded] = {}
            try:
                for request, info in found:
                    loaded = self._load(info, result)
                    if loaded is None:
                        continue
                    active[str(info.path)] = loaded
                    if self._merge(model, request, info, loaded.network, result):
                        self.registry.ensure_hash(info)
                        result.applied.append((info, request.te_multiplier, request.unet_multiplier))
                        result.mentioned_names.append(request.name)
            except BaseException:
                # Never leave a half-patched model behind (an interrupt, out of memory...).
                self.deactivate()
                raise
            self._active = active
            self._purge_cache()
            self._state = state
            self._last = result
            if missing:
                logger.info("Lora not found: %s", ", ".join(missing))
            return result

    def deactivate(self) -> None:
        """Restore every patched weight of the current model to its original value."""
        with self._lock:
            self._patcher.restore()
            self._state = ()
            self._last = ActivationResult()
            self._active = {}

    def forget_model(self, model: Any) -> None:
        """Drop references to `model` (call before unloading it); its weights are restored first."""
        with self._lock:
            if model is self._model:
                self.deactivate()
                self._patcher.release()
                self._model = None
                self._index = None

    # ---- steps -------------------------------------------------------------------------------------------------

    def _bind(self, model: PatchableModel) -> None:
        if model is not self._model or self._index is None:
            self._patcher.release()  # the previous model's backups
            encoders = {TEXT_ENCODER: model.text_encoder, TEXT_ENCODER_2: model.text_encoder_2}
            self._index = ModuleIndex(model.unet, encoders, is_sdxl=bool(model.family.is_sdxl))
            self._model = model

    def _load(self, info: NetworkInfo, result: ActivationResult) -> _Loaded | None:
        key = str(info.path)
        cached = self._cache.get(key)  # active networks always stay in the cache
        try:
            mtime = os.path.getmtime(info.path)
        except OSError as exc:
            result.errors.append(f"{info.name}: cannot read network file ({exc})")
            return None
        if cached is not None and cached.mtime >= mtime:
            self._cache.pop(key, None)
            self._cache[key] = cached  # most recently used last
            return cached
        try:
            parsed = parse_network(read_network_file(info.path), info.name)
        except ModelLoadError as exc:
            result.errors.append(f"{info.name}: {exc}")
            return None
        loaded = _Loaded(mtime, parsed)
        self._cache.pop(key, None)
        self._cache[key] = loaded
        return loaded

    def _purge_cache(self) -> None:
        # A1111 keeps lora_in_memory_limit networks besides the ones in use.
        limit = max(0, int(self.memory_limit))
        inactive = [key for key in self._cache if key not in self._active]
        for key in inactive[: max(0, len(inactive) - limit)]:
            del self._cache[key]

    def _merge(self, model: PatchableModel, request: NetworkRequest, info: NetworkInfo, network: ParsedNetwork,
               result: ActivationResult) -> bool:
        """Merge one network into the weights; False (with a message in `result.errors`) if it was refused."""
        architecture = model.family.architecture
        declared = info.declared_family
        if declared is not None and declared != architecture:
            result.errors.append(f"{info.name}: this network is for {FAMILY_TITLES.get(declared, declared)} but the "
                                 f"loaded model is {FAMILY_TITLES.get(architecture, architecture)}; not applied")
            return False
        assert self._index is not None
        targets = []
        unmatched = []
        for key, module in network.modules.items():
            target = self._index.resolve(key)
            if target is None:
                unmatched.append(key)
            else:
                targets.append((target, module))
        if not targets:
            result.errors.append(f"{info.name}: none of its {len(network.modules)} layers exist in this "
                                 f"{FAMILY_TITLES.get(architecture, architecture)} model (e.g. {unmatched[:2]}); it "
                                 f"was probably made for {_family_hint(info)}; not applied")
            return False
        if unmatched:
            logger.debug("network %s: %d layers not in this model: %s", info.name, len(unmatched), unmatched[:10])
        try:
            _check_fit(targets, request)
        except NetworkFitError as exc:
            result.errors.append(f"{info.name}: does not fit this {FAMILY_TITLES.get(architecture, architecture)} "
                                 f"model ({exc}); it was probably made for {_family_hint(info)}; not applied")
            return False
        for target, module in targets:
            self._merge_layer(target, module, request)
        logger.debug("network %s: merged into %d layers", info.name, len(targets))
        return True

    def _merge_layer(self, target: Target, module: NetworkModule, request: NetworkRequest) -> None:
        layer = target.module
        multiplier = request.te_multiplier if target.is_text_encoder else request.unet_multiplier
        with torch.no_grad():
            weight = layer.weight.detach().float()
            updown, ex_bias = compute_delta(module, weight, multiplier, request.dyn_dim)
            self._patcher.set_value(layer, "weight", weight + updown)
            if ex_bias is not None:
                bias = getattr(layer, "bias", None)
                base = torch.zeros_like(ex_bias) if bias is None else bias.detach().float()
                self._patcher.set_value(layer, "bias", base + ex_bias.reshape(base.shape))


def _family_hint(info: NetworkInfo) -> str:
    family = info.family
    return FAMILY_TITLES.get(family, "another model family") if family else "another model family"


def _check_fit(targets: list[tuple[Target, NetworkModule]], request: NetworkRequest) -> None:
    """Run every layer's delta on the meta device (shapes only, no memory, no compute)."""
    bad = []
    for target, module in targets:
        layer = target.module
        weight = torch.empty(layer.weight.shape, device="meta")
        try:
            _, ex_bias = compute_delta(_on_meta(module), weight, 1.0, request.dyn_dim)
            bias = getattr(layer, "bias", None)
            expected = layer.weight.shape[0] if bias is None else bias.numel()
            if ex_bias is not None and ex_bias.numel() != expected:
                raise RuntimeError(f"bias delta of {ex_bias.numel()} values for {expected} outputs")
        except (RuntimeError, ValueError, IndexError) as exc:
            bad.append((target, exc))
    if bad:
        target, exc = bad[0]
        raise NetworkFitError(f"{len(bad)} of {len(targets)} layers have other shapes; e.g. {target.component} "
                              f"{target.path} {tuple(target.module.weight.shape)}: {exc}")


def _on_meta(module: NetworkModule) -> NetworkModule:
    return NetworkModule(module.key, module.kind, {k: v.to("meta") for k, v in module.tensors.items()},
                         module.alpha, module.scale, module.on_input)
