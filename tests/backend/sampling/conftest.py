"""Shared fixtures for the sampling tests: a tiny deterministic model and the real k-diffusion."""
from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from backend.sampling.schedules import DiscreteSchedule, scaled_linear_alphas_cumprod

EpsModel = Callable[[Tensor, Tensor], Tensor]


def load_k_diffusion_module(name: str) -> types.ModuleType:
    """Import `k_diffusion.<name>` without running k_diffusion/__init__.py, whose training
    dependencies are not installed: a bare package module stands in for it."""
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        assert spec is not None and spec.submodule_search_locations is not None
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module(f"k_diffusion.{name}")


@pytest.fixture(scope="session")
def kd_sampling() -> types.ModuleType:
    """The installed k-diffusion's `sampling` module (0.1.1.post1)."""
    return load_k_diffusion_module("sampling")


@pytest.fixture(scope="session")
def kd_external() -> types.ModuleType:
    """The installed k-diffusion's `external` module (DiscreteSchedule, CompVisDenoiser)."""
    return load_k_diffusion_module("external")


class FakeEpsModel:
    """A stand-in UNet: eps(x_vp, t) from a fixed channel-mixing map with tanh, smooth in t.

    Nonlinear and timestep-dependent so that multistep and predictor-corrector terms matter.
    """

    def __init__(self, channels: int = 4, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=g, dtype=torch.float64) / channels**0.5
        self.bias = torch.randn(channels, generator=g, dtype=torch.float64) * 0.1

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        mixed = torch.einsum("oc,bchw->bohw", self.weight.to(x.dtype), x) + self.bias.to(x.dtype)[:, None, None]
        return torch.tanh(mixed) * (0.5 + t / 2000) + 0.3 * x * (1 - t / 2000)


def compvis_denoiser(eps_model: EpsModel, schedule: DiscreteSchedule) -> Callable[[Tensor, Tensor], Tensor]:
    """k-diffusion's CompVisDenoiser around `eps_model`: x0 = x - sigma * eps(x / sqrt(1 + sigma^2), t(sigma))."""

    def denoise(x: Tensor, sigma: Tensor) -> Tensor:
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return x - s * eps_model(x / (1 + s**2) ** 0.5, schedule.sigma_to_t(sigma))

    return denoise


class A1111LCMDenoiser:
    """A1111's LCMCompVisDenoiser sigma mapping, written on k-diffusion's DiscreteSchedule."""

    def __init__(self, alphas_cumprod: torch.Tensor) -> None:
        self.skip_steps = 1000 // 50
        valid = torch.zeros(50, dtype=torch.float32)
        for x in range(50):
            valid[49 - x] = alphas_cumprod[999 - x * self.skip_steps]
        self.inner = load_k_diffusion_module("external").DiscreteSchedule(((1 - valid) / valid) ** 0.5, quantize=False)
        self.sigmas = self.inner.sigmas

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        dists = sigma.log() - self.inner.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape) * self.skip_steps + (self.skip_steps - 1)

    def t_to_sigma(self, timestep: torch.Tensor) -> torch.Tensor:
        t = torch.clamp(((timestep - (self.skip_steps - 1)) / self.skip_steps).float(), min=0, max=len(self.sigmas) - 1)
        return self.inner.t_to_sigma(t)

    def get_sigmas(self, n: int) -> torch.Tensor:
        start = self.sigma_to_t(self.sigmas[-1])
        end = self.sigma_to_t(self.sigmas[0])
        t = torch.linspace(start, end, n)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1)])

    def denoise(self, eps_model: EpsModel) -> Callable[[Tensor, Tensor], Tensor]:
        """LCMCompVisDenoiser.forward: eps at the snapped timestep, then LCM's consistency scalings."""

        def forward(x: Tensor, sigma: Tensor) -> Tensor:
            s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
            t = self.sigma_to_t(sigma)
            denoised = x - s * eps_model(x / (s**2 + 1) ** 0.5, t)
            scaled = t.reshape(s.shape) * 10.0  # long * 10.0: float32, as in A1111
            c_skip = 0.25 / (scaled**2 + 0.25)
            c_out = scaled / (scaled**2 + 0.25) ** 0.5
            return c_out * denoised + c_skip * x

        return forward



@pytest.fixture(scope="session")
def a1111_lcm() -> type:
    """A1111's LCM denoiser (sigma table, timestep snapping, output scalings) as a reference class."""
    return A1111LCMDenoiser


@pytest.fixture(scope="session")
def schedule64() -> DiscreteSchedule:
    """The SD schedule in float64, for tight comparisons."""
    return DiscreteSchedule(scaled_linear_alphas_cumprod(dtype=torch.float64))


@pytest.fixture(scope="session")
def eps_model() -> FakeEpsModel:
    return FakeEpsModel()


@pytest.fixture(scope="session")
def denoiser64(eps_model: FakeEpsModel, schedule64: DiscreteSchedule) -> Callable[[Tensor, Tensor], Tensor]:
    return compvis_denoiser(eps_model, schedule64)


@pytest.fixture
def unit_noise() -> Tensor:
    """A small float64 batch of unit noise (batch 2, 4 channels, 6x6)."""
    return torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1234), dtype=torch.float64)
