"""WeightPatcher: in-place writes, exact restore, created biases, scoped use."""
from __future__ import annotations

import pytest
import torch

from backend.networks.patcher import WeightPatcher


def make_layer() -> torch.nn.Linear:
    layer = torch.nn.Linear(4, 3, bias=False).to(torch.float16)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(3, 4, generator=torch.Generator().manual_seed(0)))
    return layer


def test_set_value_writes_in_place_and_restore_is_bit_exact() -> None:
    layer = make_layer()
    param, original = layer.weight, layer.weight.detach().clone()
    patcher = WeightPatcher()
    patcher.set_value(layer, "weight", original.float() + 0.123)
    patcher.set_value(layer, "weight", original.float() - 7.0)  # stacked writes keep the first backup
    assert layer.weight is param and layer.weight.dtype == torch.float16
    assert not torch.equal(layer.weight, original)
    assert patcher.is_patched(layer) and patcher.patched_count == 1
    assert torch.equal(patcher.original(layer), original)
    patcher.restore()
    assert torch.equal(layer.weight, original) and patcher.patched_count == 0


def test_created_bias_is_removed_on_restore() -> None:
    layer = make_layer()
    patcher = WeightPatcher()
    patcher.set_value(layer, "bias", torch.ones(3))
    assert layer(torch.zeros(1, 4, dtype=torch.float16)).tolist() == [[1.0, 1.0, 1.0]]
    patcher.restore()
    assert layer.bias is None


def test_applied_restores_even_when_the_body_fails() -> None:
    layer = make_layer()
    original = layer.weight.detach().clone()
    patcher = WeightPatcher()
    with pytest.raises(RuntimeError, match="boom"):
        with patcher.applied({(layer, "weight"): torch.zeros(3, 4)}):
            assert torch.count_nonzero(layer.weight) == 0
            raise RuntimeError("boom")
    assert torch.equal(layer.weight, original)


def test_backups_survive_restore_until_released() -> None:
    layer = make_layer()
    original = layer.weight.detach().clone()
    patcher = WeightPatcher()
    for offset in (1.0, 2.0):  # the second cycle reuses the first backup
        patcher.set_value(layer, "weight", original.float() + offset)
        patcher.restore()
        assert torch.equal(layer.weight, original)
    assert torch.equal(patcher.original(layer), original) and patcher.patched_count == 0
    patcher.set_value(layer, "weight", original.float() + 3.0)
    patcher.release()
    assert torch.equal(layer.weight, original) and patcher.original(layer) is None
