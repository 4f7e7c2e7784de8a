"""Tests for backend/sampling/noise.py: A1111's seeds, per-image RNG and noise samplers."""
from __future__ import annotations

import importlib
import importlib.util
import random
import sys
import types

import numpy as np
import pytest
import torch

from backend.errors import InvalidRequest
from backend.sampling.noise import (
    BrownianTreeNoiseSampler,
    ImageRNG,
    PhiloxGenerator,
    get_fixed_seed,
    philox_randn,
    rng_noise_sampler,
    slerp,
)

CPU = torch.device("cpu")
SHAPE = (4, 8, 12)

# a1111.md §4.3: the documented output of rng_philox.Generator(seed=0).randn((3, 4)).
A1111_DOC_VECTOR = [
    [-0.92466259, -0.42534415, -2.6438457, 0.14518388],
    [-0.12086647, -0.57972564, -0.62285122, -0.32838709],
    [-1.07454231, -0.36314407, -1.67105067, 2.26550497],
]
# What A1111's rng_philox code actually returns for that call (float32 constants, float64
# arithmetic, then a cast to float32); within 3e-7 of the documented vector.
A1111_NV_SEED0_FLOAT32 = [
    -0.9246624112129211, -0.42534396052360535, -2.643845796585083, 0.14518387615680695,
    -0.12086650729179382, -0.5797256827354431, -0.6228513121604919, -0.32838714122772217,
    -1.0745420455932617, -0.3631440997123718, -1.6710504293441772, 2.265505075454712,
]


def _k_diffusion_sampling() -> types.ModuleType:
    """Import k_diffusion.sampling without running k_diffusion/__init__.py, whose training
    dependencies (skimage, wandb, ...) are not installed."""
    if "k_diffusion" not in sys.modules:
        spec = importlib.util.find_spec("k_diffusion")
        assert spec is not None and spec.submodule_search_locations is not None
        package = types.ModuleType("k_diffusion")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling")


def _cpu_draws(seed: int, shape: tuple[int, ...], count: int) -> list[torch.Tensor]:
    """The first `count` draws of a fresh CPU generator, as diffusers users reproduce A1111-CPU noise."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return [torch.randn(shape, generator=generator) for _ in range(count)]


# --- Philox (NV source) ---------------------------------------------------------------


def test_philox_matches_documented_vector() -> None:
    values = PhiloxGenerator(0).randn((3, 4))
    assert values.dtype == np.float32
    assert values.shape == (3, 4)
    np.testing.assert_allclose(values, np.array(A1111_DOC_VECTOR), rtol=0, atol=1e-6)


def test_philox_is_bit_exact_with_a1111_arithmetic() -> None:
    expected = np.array(A1111_NV_SEED0_FLOAT32, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(philox_randn(0, (3, 4)), expected)


def test_philox_generator_advances_offset_by_one_per_call() -> None:
    generator = PhiloxGenerator(42)
    first = generator.randn((2, 3))
    second = generator.randn((2, 3))
    assert generator.offset == 2
    np.testing.assert_array_equal(first, philox_randn(42, (2, 3), 0))
    np.testing.assert_array_equal(second, philox_randn(42, (2, 3), 1))
    expected = np.array([0.13913749, -0.10821616, -0.7174222, 0.75664866, 0.37148824, -1.0049413], dtype=np.float32)
    np.testing.assert_array_equal(second.ravel(), expected)


def test_philox_uses_the_high_word_of_a_64_bit_seed() -> None:
    values = philox_randn(2**40 + 7, (6,))
    expected = np.array([-0.4790498, -1.2782506, -0.24156637, -0.38499948, 0.2795231, -0.60232973], dtype=np.float32)
    np.testing.assert_array_equal(values, expected)
    assert not np.array_equal(values, philox_randn(7, (6,)))


def test_nv_source_first_is_philox_noise() -> None:
    rng = ImageRNG((1, 3, 4), [0], source="NV", device=CPU)
    noise = rng.first()
    assert noise.dtype == torch.float32
    np.testing.assert_array_equal(noise[0, 0].numpy(), philox_randn(0, (3, 4)))
    np.testing.assert_array_equal(rng.next()[0, 0].numpy(), philox_randn(0, (3, 4), 1))


# --- ImageRNG: sources and batches ----------------------------------------------------


@pytest.mark.parametrize("source", ["GPU", "CPU", "NV"])
def test_batch_equals_single_images_with_consecutive_seeds(source: str) -> None:
    seed = 1234
    batch = ImageRNG(SHAPE, [seed, seed + 1, seed + 2], source=source, device=CPU)
    batch_first, batch_next = batch.first(), batch.next()
    assert batch_first.shape == (3, *SHAPE)
    assert batch_first.dtype == torch.float32
    for i in range(3):
        single = ImageRNG(SHAPE, [seed + i], source=source, device=CPU)
        torch.testing.assert_close(batch_first[i], single.first()[0], rtol=0, atol=0)
        torch.testing.assert_close(batch_next[i], single.next()[0], rtol=0, atol=0)
    assert not torch.equal(batch_first[0], batch_first[1])


def test_cpu_source_equals_torch_cpu_generator() -> None:
    rng = ImageRNG(SHAPE, [7, 99], source="CPU", device=CPU)
    first, second, third = rng.first(), rng.next(), rng.next()
    for i, seed in enumerate([7, 99]):
        draws = _cpu_draws(seed, SHAPE, 3)
        assert torch.equal(first[i], draws[0])
        assert torch.equal(second[i], draws[1])
        assert torch.equal(third[i], draws[2])


def test_gpu_source_on_a_cpu_device_uses_a_cpu_generator() -> None:
    gpu = ImageRNG(SHAPE, [5, 6], source="GPU", device=CPU)
    cpu = ImageRNG(SHAPE, [5, 6], source="CPU", device=CPU)
    assert torch.equal(gpu.first(), cpu.first())
    assert torch.equal(gpu.next(), cpu.next())


def test_next_before_first_returns_first() -> None:
    fresh = ImageRNG(SHAPE, [3], device=CPU)
    reference = ImageRNG(SHAPE, [3], device=CPU)
    assert torch.equal(fresh.next(), reference.first())
    assert torch.equal(fresh.next(), reference.next())


def test_first_restarts_the_streams() -> None:
    rng = ImageRNG(SHAPE, [11], device=CPU)
    start = rng.first()
    following = rng.next()
    rng.next()
    assert torch.equal(rng.first(), start)
    assert torch.equal(rng.next(), following)


def test_noise_sampler_ignores_sigmas_and_returns_next_draws() -> None:
    rng = ImageRNG(SHAPE, [21, 22], device=CPU)
    reference = ImageRNG(SHAPE, [21, 22], device=CPU)
    noise = rng_noise_sampler(rng)
    rng.first()
    reference.first()
    sigma, sigma_next = torch.tensor(10.0), torch.tensor(5.0)
    assert torch.equal(noise(sigma, sigma_next), reference.next())
    assert torch.equal(noise(sigma_next, sigma), reference.next())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"seeds": []}, "seeds"),
        ({"source": "TPU"}, "randn_source"),
        ({"shape": (4, 0, 8)}, "shape"),
        ({"shape": (8, 8)}, "shape"),
    ],
)
def test_invalid_arguments_raise_invalid_request(kwargs: dict, field: str) -> None:
    arguments = {"shape": SHAPE, "seeds": [1], "source": "GPU"} | kwargs
    with pytest.raises(InvalidRequest) as error:
        ImageRNG(arguments["shape"], arguments["seeds"], source=arguments["source"], device=CPU)
    assert error.value.field == field


# --- Variation seeds and slerp --------------------------------------------------------


def test_variation_strength_zero_ignores_the_subseed() -> None:
    plain = ImageRNG(SHAPE, [10, 11], device=CPU).first()
    varied = ImageRNG(SHAPE, [10, 11], [500, 501], subseed_strength=0.0, device=CPU).first()
    assert torch.equal(plain, varied)


def test_variation_strength_one_gives_the_subseed_noise() -> None:
    varied = ImageRNG(SHAPE, [10, 10], [500, 501], subseed_strength=1.0, device=CPU).first()
    torch.testing.assert_close(varied[0], _cpu_draws(500, SHAPE, 1)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(varied[1], _cpu_draws(501, SHAPE, 1)[0], rtol=0, atol=1e-5)


def test_variation_half_strength_is_slerp_of_seed_and_subseed() -> None:
    rng = ImageRNG(SHAPE, [10], [500], subseed_strength=0.5, device=CPU)
    varied = rng.first()[0]
    noise, subnoise = _cpu_draws(10, SHAPE, 1)[0], _cpu_draws(500, SHAPE, 1)[0]
    assert torch.equal(varied, slerp(0.5, noise, subnoise))
    assert not torch.allclose(varied, noise, atol=1e-3)
    assert not torch.allclose(varied, subnoise, atol=1e-3)
    # Variation changes only the first noise; later draws still come from the main seed.
    assert torch.equal(rng.next()[0], _cpu_draws(10, SHAPE, 2)[1])


def test_variation_uses_subseed_zero_past_the_end_of_the_list() -> None:
    varied = ImageRNG(SHAPE, [10, 10], [500], subseed_strength=1.0, device=CPU).first()
    torch.testing.assert_close(varied[1], _cpu_draws(0, SHAPE, 1)[0], rtol=0, atol=1e-5)


def test_slerp_endpoints() -> None:
    low, high = _cpu_draws(1, SHAPE, 1)[0], _cpu_draws(2, SHAPE, 1)[0]
    torch.testing.assert_close(slerp(0.0, low, high), low, rtol=0, atol=1e-5)
    torch.testing.assert_close(slerp(1.0, low, high), high, rtol=0, atol=1e-5)


def test_slerp_parallel_fallback_keeps_a1111_reversed_weights() -> None:
    low = _cpu_draws(3, SHAPE, 1)[0]
    high = 2 * low
    result = slerp(0.25, low, high)
    # A1111 weights low by val and high by 1-val here: 0.25*low + 0.75*2*low = 1.75*low.
    torch.testing.assert_close(result, 1.75 * low)
    assert not torch.allclose(result, 0.75 * low + 0.25 * high)


def test_slerp_of_identical_noise_is_that_noise() -> None:
    low = _cpu_draws(4, SHAPE, 1)[0]
    torch.testing.assert_close(slerp(0.3, low, low.clone()), low)


# --- Seed resize ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("from_h", "from_w", "centre"),
    [
        # Smaller source size: its noise is pasted in the middle of the full-size noise.
        (64, 96, ((6, 14), (6, 18))),
        # Taller source: its centre crop fills every row; narrower: pasted in the middle columns.
        (320, 160, ((0, 20), (2, 22))),
        # Odd size difference: A1111 floors the negative offset, so the last row keeps the full noise.
        (328, 96, ((0, 19), (6, 18))),
    ],
)
def test_seed_resize_pastes_the_centre(from_h: int, from_w: int, centre: tuple[tuple[int, int], tuple[int, int]]) -> None:
    shape = (4, 20, 24)
    small_shape = (4, from_h // 8, from_w // 8)
    rng = ImageRNG(shape, [77], seed_resize_from_h=from_h, seed_resize_from_w=from_w, source="CPU", device=CPU)
    noise = rng.first()[0]
    full_draws = _cpu_draws(77, shape, 2)
    small = _cpu_draws(77, small_shape, 1)[0]
    (y0, y1), (x0, x1) = centre
    sy = (small_shape[1] - (y1 - y0)) // 2
    sx = (small_shape[2] - (x1 - x0)) // 2
    assert torch.equal(noise[:, y0:y1, x0:x1], small[:, sy:sy + y1 - y0, sx:sx + x1 - x0])
    outside = torch.ones(shape, dtype=torch.bool)
    outside[:, y0:y1, x0:x1] = False
    assert torch.equal(noise[outside], full_draws[0][outside])
    # The image's generator drew the full-size noise, so the next draw is its second one.
    assert torch.equal(rng.next()[0], full_draws[1])


def test_seed_resize_with_variation_slerps_the_small_noise() -> None:
    shape = (4, 20, 24)
    rng = ImageRNG(shape, [77], [88], 0.5, 64, 96, source="CPU", device=CPU)
    noise = rng.first()[0]
    small = slerp(0.5, _cpu_draws(77, (4, 8, 12), 1)[0], _cpu_draws(88, (4, 8, 12), 1)[0])
    assert torch.equal(noise[:, 6:14, 6:18], small)


def test_seed_resize_to_the_same_size_is_plain_noise() -> None:
    rng = ImageRNG((4, 8, 12), [5], seed_resize_from_h=64, seed_resize_from_w=96, source="CPU", device=CPU)
    draws = _cpu_draws(5, (4, 8, 12), 2)
    assert torch.equal(rng.first()[0], draws[0])
    assert torch.equal(rng.next()[0], draws[1])


# --- Eta noise seed delta -------------------------------------------------------------


@pytest.mark.parametrize("source", ["CPU", "NV"])
def test_ensd_changes_next_but_not_first(source: str) -> None:
    plain = ImageRNG(SHAPE, [40, 41], source=source, device=CPU)
    delta = ImageRNG(SHAPE, [40, 41], source=source, device=CPU, eta_noise_seed_delta=31337)
    assert torch.equal(plain.first(), delta.first())
    shifted_next = delta.next()
    assert not torch.equal(plain.next(), shifted_next)
    # After the first draw the generators restart from seed + ENSD.
    reference = ImageRNG(SHAPE, [40 + 31337, 41 + 31337], source=source, device=CPU)
    assert torch.equal(shifted_next, reference.first())
    assert torch.equal(delta.next(), reference.next())


# --- Brownian tree noise --------------------------------------------------------------


# torchsde warns when a float32 sigma rounds just outside the tree's float64 interval; k-diffusion
# (and so A1111) triggers the same warning with the same inputs, and the noise is unaffected.
@pytest.mark.filterwarnings("ignore:Should have t:UserWarning")
@pytest.mark.parametrize("transform", [None, lambda sigma: -sigma.log()], ids=["identity", "neg_log"])
def test_brownian_tree_matches_k_diffusion(transform) -> None:
    k_sampling = _k_diffusion_sampling()
    x = torch.zeros(3, 4, 6, 5)
    seeds = [101, 102, 103]
    sigmas = k_sampling.get_sigmas_karras(6, 0.0292, 14.6146)
    # A1111 takes the tree's interval from the schedule it samples.
    sigma_min, sigma_max = sigmas[sigmas > 0].min(), sigmas.max()
    extra = {} if transform is None else {"transform": transform}
    ours = BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seeds, **extra)
    theirs = k_sampling.BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed=seeds, **extra)
    steps = [(sigmas[i], sigmas[i + 1]) for i in range(len(sigmas) - 2)]
    steps.append((sigmas[2], sigmas[1]))
    for sigma, sigma_next in steps:
        noise = ours(sigma, sigma_next)
        assert noise.shape == x.shape
        torch.testing.assert_close(noise, theirs(sigma, sigma_next), rtol=0, atol=0)
    assert not torch.equal(noise[0], noise[1])


def test_brownian_tree_image_depends_only_on_its_seed() -> None:
    batch = BrownianTreeNoiseSampler(torch.zeros(2, 4, 6, 5), 0.1, 10.0, [7, 8])
    single = BrownianTreeNoiseSampler(torch.zeros(1, 4, 6, 5), 0.1, 10.0, [8])
    torch.testing.assert_close(batch(5.0, 2.0)[1], single(5.0, 2.0)[0], rtol=0, atol=0)


def test_brownian_tree_needs_one_seed_per_image() -> None:
    with pytest.raises(InvalidRequest) as error:
        BrownianTreeNoiseSampler(torch.zeros(2, 4, 6, 5), 0.1, 10.0, [7])
    assert error.value.field == "seeds"


# --- get_fixed_seed -------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "abc", "1.5", -1, "-1"])
def test_get_fixed_seed_randomises_unset_seeds(value: int | str | None) -> None:
    random.seed(2024)
    expected = random.randrange(4294967294)
    random.seed(2024)
    assert get_fixed_seed(value) == expected


@pytest.mark.parametrize(("value", "expected"), [(0, 0), (12345, 12345), ("42", 42), (" 7 ", 7), (-5, -5), (2**40, 2**40)])
def test_get_fixed_seed_keeps_given_seeds(value: int | str, expected: int) -> None:
    assert get_fixed_seed(value) == expected
