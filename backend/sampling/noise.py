"""A1111's seed and noise rules: fixed seeds, per-image RNG streams, variation seeds,
seed resize, ENSD, the NV (Philox) CPU emulation of CUDA's randn, and noise samplers.

This is the only module under `backend/sampling` that draws random numbers, so that
every sampler gets its noise from one place and stays reproducible per seed.
"""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from backend.errors import InvalidRequest

RandnSource = Literal["GPU", "CPU", "NV"]
RANDN_SOURCES: tuple[str, ...] = ("GPU", "CPU", "NV")

NoiseSampler = Callable[[Tensor, Tensor], Tensor]
"""`noise(sigma, sigma_next) -> Tensor`, shaped like the latent batch."""

# A1111 sizes the seed-resize noise with the SD VAE's fixed downscale factor.
_LATENT_FACTOR = 8

# A1111 falls back from slerp to a (reversed) lerp above this mean cosine.
_SLERP_PARALLEL_THRESHOLD = 0.9995

# Philox4x32-10 constants (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3").
_PHILOX_ROUNDS = 10
_PHILOX_MUL_A = 0xD2511F53
_PHILOX_MUL_B = 0xCD9E8D57
_PHILOX_KEY_BUMP_A = 0x9E3779B9
_PHILOX_KEY_BUMP_B = 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_MASK64 = 0xFFFFFFFFFFFFFFFF

# CUDA's Box-Muller uses these float32 constants; A1111's emulation rounds them to
# float32 and then does the arithmetic in float64, which we reproduce exactly.
_TWO_POW32_INV = float(np.float32(2.3283064e-10))
_TWO_POW32_INV_2PI = float(np.float32(2.3283064e-10 * 6.2831855))


def get_fixed_seed(seed: int | str | None) -> int:
    """Resolve a request seed as A1111 does: '', None, a non-integer string and -1 mean random."""
    if seed is None or seed == "":
        value = -1
    elif isinstance(seed, str):
        try:
            value = int(seed)
        except ValueError:
            value = -1
    else:
        value = int(seed)
    if value == -1:
        return random.randrange(4294967294)
    return value


def _philox4x32_10(offset: int, index: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the first two output words of Philox4x32-10 for counters (offset, 0, index, 0).

    Words are held in uint64 arrays so that the 32x32-bit products are exact.
    """
    key_lo = seed & _MASK32
    key_hi = (seed >> 32) & _MASK32
    c0 = np.full(index.shape, offset & _MASK32, dtype=np.uint64)
    c1 = np.zeros(index.shape, dtype=np.uint64)
    c2 = index.astype(np.uint64)
    c3 = np.zeros(index.shape, dtype=np.uint64)
    for round_no in range(_PHILOX_ROUNDS):
        if round_no:
            key_lo = (key_lo + _PHILOX_KEY_BUMP_A) & _MASK32
            key_hi = (key_hi + _PHILOX_KEY_BUMP_B) & _MASK32
        prod_a = c0 * np.uint64(_PHILOX_MUL_A)
        prod_b = c2 * np.uint64(_PHILOX_MUL_B)
        c0, c1, c2, c3 = (
            (prod_b >> np.uint64(32)) ^ c1 ^ np.uint64(key_lo),
            prod_b & np.uint64(_MASK32),
            (prod_a >> np.uint64(32)) ^ c3 ^ np.uint64(key_hi),
            prod_a & np.uint64(_MASK32),
        )
    return c0, c1


def philox_randn(seed: int, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """Standard normal float32 values of A1111's "NV" source: CUDA's `torch.randn(shape)` for `seed`, on CPU.

    The values equal A1111's emulation bit for bit; CUDA's own float32 Box-Muller differs from
    them by float rounding only (at most about 2e-6 on an H100 with torch 2.11).

    Element i uses the Philox counter (offset, 0, i, 0) with the 64-bit seed as key, and the
    first Box-Muller output of the first two words, as A1111's `rng_philox` does. A generator's
    n-th call uses offset n, which matches CUDA's second draw too for latent-sized tensors.
    """
    count = int(np.prod(shape, dtype=np.int64))
    words_u, words_v = _philox4x32_10(offset, np.arange(count, dtype=np.uint64), seed & _MASK64)
    u = words_u.astype(np.float64) * _TWO_POW32_INV + _TWO_POW32_INV / 2
    v = words_v.astype(np.float64) * _TWO_POW32_INV_2PI + _TWO_POW32_INV_2PI / 2
    return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


class PhiloxGenerator:
    """A seeded Philox stream: each `randn` call uses the next offset, as A1111's NV generator does."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.offset = 0

    def randn(self, shape: tuple[int, ...]) -> np.ndarray:
        """Draw float32 normals of `shape` and advance the offset by one."""
        values = philox_randn(self.seed, shape, self.offset)
        self.offset += 1
        return values


class _SeedStream:
    """One seed's noise stream for a source, yielding float32 tensors on `device`."""

    def __init__(self, seed: int, source: str, device: torch.device) -> None:
        self._device = device
        self._philox: PhiloxGenerator | None = None
        self._torch_gen: torch.Generator | None = None
        if source == "NV":
            self._philox = PhiloxGenerator(seed)
        else:
            # A1111 draws on the CPU for the "CPU" source and on MPS, whose randn differs.
            on_cpu = source == "CPU" or device.type == "mps"
            gen_device = torch.device("cpu") if on_cpu else device
            self._torch_gen = torch.Generator(gen_device).manual_seed(seed & _MASK64)

    def randn(self, shape: tuple[int, ...]) -> Tensor:
        """Draw the stream's next tensor of `shape`."""
        if self._philox is not None:
            return torch.from_numpy(self._philox.randn(shape)).to(self._device)
        assert self._torch_gen is not None
        values = torch.randn(shape, generator=self._torch_gen, device=self._torch_gen.device, dtype=torch.float32)
        return values.to(self._device)


def slerp(val: float, low: Tensor, high: Tensor) -> Tensor:
    """Spherical interpolation from `low` (val=0) to `high` (val=1), as A1111's variation seeds use it.

    Angles come from the dot product of the rows normalised along dim 1. When the mean cosine exceeds
    0.9995, A1111 returns `low*val + high*(1-val)`: the weights are reversed, and we keep that quirk
    so that near-identical variation noise gives the same pictures.
    """
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    cosine = (low_unit * high_unit).sum(dim=1)
    if cosine.mean() > _SLERP_PARALLEL_THRESHOLD:
        return low * val + high * (1 - val)
    omega = torch.acos(cosine)
    sin_omega = torch.sin(omega)
    weight_low = (torch.sin((1.0 - val) * omega) / sin_omega).unsqueeze(1)
    weight_high = (torch.sin(val * omega) / sin_omega).unsqueeze(1)
    return weight_low * low + weight_high * high


def _centre_window(full: int, small: int) -> tuple[int, int, int]:
    """(destination start, source start, length) that centres `small` in `full`, cropping if larger.

    Uses floor division of the size difference, as A1111 does, so odd differences match it.
    """
    shift = (full - small) // 2
    length = small if shift >= 0 else small + 2 * shift
    return max(shift, 0), max(-shift, 0), length


class ImageRNG:
    """Per-image noise for one batch, following A1111's `ImageRNG`.

    Every image draws from its own seed's generator, so a batch equals single-image runs with
    seed, seed+1, ... `first()` gives the starting noise (variation and seed resize applied);
    `next()` gives each generator's following draw (the ancestral/SDE noise).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        seeds: list[int],
        subseeds: list[int] | None = None,
        subseed_strength: float = 0.0,
        seed_resize_from_h: int = 0,
        seed_resize_from_w: int = 0,
        *,
        source: str = "GPU",
        device: torch.device,
        eta_noise_seed_delta: int = 0,
    ) -> None:
        if len(shape) != 3 or any(int(size) <= 0 for size in shape):
            raise InvalidRequest("shape", f"must be (channels, height, width) with positive sizes, got {shape!r}")
        if not seeds:
            raise InvalidRequest("seeds", "must hold at least one seed")
        if source not in RANDN_SOURCES:
            raise InvalidRequest("randn_source", f"must be one of {', '.join(RANDN_SOURCES)}, got {source!r}")
        self.shape = tuple(int(size) for size in shape)
        self.seeds = [int(seed) for seed in seeds]
        self.subseeds = None if subseeds is None else [int(seed) for seed in subseeds]
        self.subseed_strength = subseed_strength
        self.seed_resize_from_h = seed_resize_from_h
        self.seed_resize_from_w = seed_resize_from_w
        self.source = source
        self.device = device
        self.eta_noise_seed_delta = eta_noise_seed_delta
        self._streams: list[_SeedStream] | None = None

    def _stream(self, seed: int) -> _SeedStream:
        return _SeedStream(seed, self.source, self.device)

    def _noise_shape(self) -> tuple[int, ...]:
        if self.seed_resize_from_h <= 0 or self.seed_resize_from_w <= 0:
            return self.shape
        return (
            self.shape[0],
            self.seed_resize_from_h // _LATENT_FACTOR,
            self.seed_resize_from_w // _LATENT_FACTOR,
        )

    def _subseed(self, index: int) -> int:
        # A1111 uses subseed 0 for images past the end of the subseed list.
        assert self.subseeds is not None
        return self.subseeds[index] if index < len(self.subseeds) else 0

    def _image_noise(self, index: int, seed: int, stream: _SeedStream) -> Tensor:
        noise_shape = self._noise_shape()
        resized = noise_shape != self.shape
        # With seed resize, the small noise comes from a fresh generator of the same seed and the
        # image's own generator supplies the full-size noise around it.
        noise = self._stream(seed).randn(noise_shape) if resized else stream.randn(self.shape)
        if self.subseeds is not None and self.subseed_strength != 0:
            subnoise = self._stream(self._subseed(index)).randn(noise_shape)
            noise = slerp(self.subseed_strength, noise, subnoise)
        if not resized:
            return noise
        full = stream.randn(self.shape)
        dst_y, src_y, height = _centre_window(self.shape[1], noise_shape[1])
        dst_x, src_x, width = _centre_window(self.shape[2], noise_shape[2])
        full[:, dst_y:dst_y + height, dst_x:dst_x + width] = noise[:, src_y:src_y + height, src_x:src_x + width]
        return full

    def first(self) -> Tensor:
        """Starting noise [B, C, H, W]; (re)starts every image's stream, so later `next()` calls follow it."""
        streams = [self._stream(seed) for seed in self.seeds]
        batch = torch.stack([self._image_noise(i, seed, stream) for i, (seed, stream) in enumerate(zip(self.seeds, streams))])
        if self.eta_noise_seed_delta:
            # ENSD re-seeds only the noise drawn after the first, as A1111 does.
            streams = [self._stream(seed + self.eta_noise_seed_delta) for seed in self.seeds]
        self._streams = streams
        return batch

    def next(self) -> Tensor:
        """The next noise draw [B, C, H, W] of every image's stream; the first call returns `first()`."""
        if self._streams is None:
            return self.first()
        return torch.stack([stream.randn(self.shape) for stream in self._streams])


def rng_noise_sampler(rng: ImageRNG) -> NoiseSampler:
    """A noise sampler that ignores the sigmas and returns `rng.next()`, as A1111's ancestral samplers get."""

    def noise(sigma: Tensor, sigma_next: Tensor) -> Tensor:
        return rng.next()

    return noise


def _identity(sigma: Tensor) -> Tensor:
    return sigma


class BrownianTreeNoiseSampler:
    """Brownian-tree noise with one tree per image seed, equal to k-diffusion's `BrownianTreeNoiseSampler`
    with a seed list (what A1111 passes to the DPM++ SDE samplers for batch determinism).

    `transform` maps sigma to the tree's time axis; k-diffusion's default is the identity.
    Calling it with (sigma, sigma_next) returns the Brownian increment between the two times,
    divided by the square root of their distance, so it is unit-variance noise.
    """

    def __init__(
        self,
        x: Tensor,
        sigma_min: float | Tensor,
        sigma_max: float | Tensor,
        seeds: list[int],
        transform: Callable[[Tensor], Tensor] = _identity,
    ) -> None:
        import torchsde

        if len(seeds) != x.shape[0]:
            raise InvalidRequest("seeds", f"need one seed per image: {len(seeds)} seeds for a batch of {x.shape[0]}")
        self._transform = transform
        t_a = transform(torch.as_tensor(sigma_min))
        t_b = transform(torch.as_tensor(sigma_max))
        t_start, t_end, self._sign = _ordered(t_a, t_b)
        w0 = torch.zeros_like(x[0])
        self._trees = [torchsde.BrownianTree(t_start, w0, t_end, entropy=int(seed)) for seed in seeds]

    def __call__(self, sigma: Tensor | float, sigma_next: Tensor | float) -> Tensor:
        """Unit-variance noise for the step from `sigma` to `sigma_next`, shaped like `x`."""
        t_a = self._transform(torch.as_tensor(sigma))
        t_b = self._transform(torch.as_tensor(sigma_next))
        t_start, t_end, sign = _ordered(t_a, t_b)
        increments = torch.stack([tree(t_start, t_end) for tree in self._trees])
        return increments * (self._sign * sign) / (t_b - t_a).abs().sqrt()


def _ordered(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, int]:
    """The two times in increasing order, and -1 if they were swapped."""
    return (a, b, 1) if a < b else (b, a, -1)


__all__ = (
    "RANDN_SOURCES",
    "BrownianTreeNoiseSampler",
    "ImageRNG",
    "NoiseSampler",
    "PhiloxGenerator",
    "RandnSource",
    "get_fixed_seed",
    "philox_randn",
    "rng_noise_sampler",
    "slerp",
)
