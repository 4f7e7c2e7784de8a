"""In-place weight patches with exact backups (style rule 6: patch weights, never classes).

`WeightPatcher` changes the *values* of existing parameters (`param.data.copy_`), never replaces a module,
its class or its forward. Before a parameter is first written, its original value is copied to the backup
device (the CPU by default, as A1111 keeps `network_weights_backup`; pinned when the weight is on a GPU, so
restoring is a fast copy), so `restore()` puts back the original bits exactly, whatever patches were stacked
on it in between. A missing bias that a patch must create is recorded too, and removed again on restore.

Backups outlive `restore()`: switching from one set of networks to another restores and re-patches without
copying the originals off the device again. `release()` restores and drops them (before the model is
unloaded or its weights are replaced by other means).

Two ways to use it:
- persistent, across jobs: `set_value(...)` as often as needed, `restore()` when the patch set changes;
- scoped: `with patcher.applied(values): ...` restores in `finally`, even when the body raises.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class _Backup:
    module: torch.nn.Module
    name: str  # parameter name on `module` ("weight" or "bias")
    original: Tensor | None  # None: the parameter did not exist and was created by a patch


class WeightPatcher:
    """Records which parameters were patched and restores their original values bit for bit."""

    def __init__(self, backup_device: torch.device | str = "cpu") -> None:
        self.backup_device = torch.device(backup_device)
        self._backups: dict[tuple[int, str], _Backup] = {}
        self._dirty: set[tuple[int, str]] = set()
        self._lock = threading.RLock()

    @property
    def patched_count(self) -> int:
        """How many parameters currently differ from (or were added to) the original model."""
        return len(self._dirty)

    def is_patched(self, module: torch.nn.Module, name: str = "weight") -> bool:
        """Whether `module.<name>` was written since the last restore."""
        return (id(module), name) in self._dirty

    def original(self, module: torch.nn.Module, name: str = "weight") -> Tensor | None:
        """The backed-up original value of a parameter (on the backup device), or None without a backup."""
        backup = self._backups.get((id(module), name))
        return None if backup is None else backup.original

    def set_value(self, module: torch.nn.Module, name: str, value: Tensor) -> None:
        """Write `value` into `module.<name>` in place, backing up the original first.

        The value is cast to the parameter's dtype and device. A missing bias (`module.bias is None`) is
        created as a new parameter, and removed again by `restore()`.
        """
        with self._lock, torch.no_grad():
            key = (id(module), name)
            current = getattr(module, name, None)
            if key not in self._backups:
                self._backups[key] = _Backup(module, name, None if current is None else self._copy_out(current))
            self._dirty.add(key)
            if current is None:
                reference = module.weight
                module.register_parameter(name, torch.nn.Parameter(
                    value.detach().to(device=reference.device, dtype=reference.dtype).clone(),
                    requires_grad=False))
                return
            current.data.copy_(value.detach().to(device=current.device, dtype=current.dtype))

    def restore(self) -> None:
        """Put every patched parameter back to its original value (and drop created biases)."""
        with self._lock, torch.no_grad():
            for key in self._dirty:
                backup = self._backups[key]
                if backup.original is None:
                    backup.module.register_parameter(backup.name, None)
                    continue
                target = getattr(backup.module, backup.name)
                target.data.copy_(backup.original.to(device=target.device))
            self._dirty.clear()

    def release(self) -> None:
        """Restore, then forget all backups (and the modules they reference)."""
        with self._lock:
            self.restore()
            self._backups.clear()

    def _copy_out(self, tensor: Tensor) -> Tensor:
        copy = tensor.detach().to(self.backup_device, copy=True)
        if tensor.is_cuda and copy.device.type == "cpu":
            copy = copy.pin_memory()  # page-locked, so restoring is a fast device copy
        return copy

    @contextmanager
    def applied(self, values: Mapping[tuple[torch.nn.Module, str], Tensor]) -> Iterator[WeightPatcher]:
        """Apply `{(module, param_name): new_value}` for the duration of the block; originals are restored
        in `finally`, even if applying or the body fails."""
        try:
            for (module, name), value in values.items():
                self.set_value(module, name, value)
            yield self
        finally:
            self.restore()
