"""LoRA and LyCORIS networks: discovery (`registry`), the Lora page's cards (`cards`), key mapping
(`keys`), the weight math (`lora`), exact in-place patching (`patcher`) and activation from prompt tags
(`manager`).

Importing this package has no side effects: nothing is scanned or loaded until a registry or manager
is used.
"""
from backend.networks.manager import (
    TAG_NAMES,
    ActivationResult,
    NetworkManager,
    NetworkRequest,
    lora_hashes_infotext,
    requests_from_prompt_params,
)
from backend.networks.patcher import WeightPatcher
from backend.networks.registry import NetworkInfo, NetworkRegistry

__all__ = [
    "TAG_NAMES",
    "ActivationResult",
    "NetworkInfo",
    "NetworkManager",
    "NetworkRegistry",
    "NetworkRequest",
    "WeightPatcher",
    "lora_hashes_infotext",
    "requests_from_prompt_params",
]
