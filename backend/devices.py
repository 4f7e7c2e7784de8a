"""Where each model part runs and in which dtype: the one owner of that decision."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from backend.config import Settings


@dataclass(frozen=True)
class DevicePolicy:
    """Device and dtypes for the UNet/text encoders and for the VAE.

    fp16 on CUDA by default (A1111's default), fp32 on CPU: half precision on CPU
    is slow and loses accuracy there.
    """

    device: torch.device
    dtype: torch.dtype
    vae_dtype: torch.dtype

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @classmethod
    def from_settings(cls, settings: Settings, cuda_available: bool | None = None) -> "DevicePolicy":
        if cuda_available is None:
            cuda_available = torch.cuda.is_available()
        on_cpu = bool({"all", "sd"} & set(settings.use_cpu)) or not cuda_available
        if on_cpu:
            return cls(torch.device("cpu"), torch.float32, torch.float32)
        device = torch.device("cuda", int(settings.device_id)) if settings.device_id is not None else torch.device("cuda")
        full = settings.no_half or settings.precision == "full"
        dtype = torch.float32 if full else torch.float16
        vae_dtype = torch.float32 if (full or settings.no_half_vae) else torch.float16
        return cls(device, dtype, vae_dtype)

    @classmethod
    def cpu(cls) -> "DevicePolicy":
        return cls(torch.device("cpu"), torch.float32, torch.float32)

    def free_memory(self) -> None:
        """Return cached allocator blocks to the driver after a model is dropped."""
        if self.is_cuda:
            torch.cuda.empty_cache()

    def memory_stats(self) -> dict[str, int]:
        """Allocated/reserved bytes on the device (zeros on CPU)."""
        if not self.is_cuda:
            return {"allocated": 0, "reserved": 0}
        return {
            "allocated": int(torch.cuda.memory_allocated(self.device)),
            "reserved": int(torch.cuda.memory_reserved(self.device)),
        }
