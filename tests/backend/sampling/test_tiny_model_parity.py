"""Every k-diffusion-backed sampler on the built-in model's real UNet: our denoiser + sampler against
k-diffusion's own CompVisDenoiser + sampler with a plain CFG reference, for the first steps."""
from __future__ import annotations

import types

import pytest
import torch

from backend.prompts.conditioning import EncodeSettings, EncoderSpec, TextConditioner
from backend.sampling import registry
from backend.sampling.denoiser import CFGDenoiser, DiscreteDenoiser
from backend.sampling.schedules import DiscreteSchedule
from tests.backend.sampling.conftest import load_k_diffusion_module
from tests.backend.sampling.test_samplers import KD_FUNCTIONS

STEPS = 3
CFG = 6.0


class _UNetAsCompVis(torch.nn.Module):
    """What k-diffusion's CompVisDenoiser expects of an ldm model: alphas_cumprod and apply_model."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample


@pytest.fixture(scope="module")
def conds(builtin_model):
    conditioner = TextConditioner([EncoderSpec(builtin_model.text_encoder, builtin_model.tokenizer)], torch.device("cpu"))
    with torch.no_grad():
        c = conditioner.encode(["a red house by a lake"], EncodeSettings()).crossattn
        uc = conditioner.encode(["blurry"], EncodeSettings()).crossattn
    return c, uc


def _ours(builtin_model, c, uc):
    def model_fn(x, t, crossattn, pooled, image_cond):
        return builtin_model.unet(x, t, encoder_hidden_states=crossattn).sample

    inner = DiscreteDenoiser(model_fn, DiscreteSchedule(builtin_model.alphas_cumprod))
    return CFGDenoiser(inner, lambda step: ([[(0, 1.0)]], c, None), lambda step: (uc, None), CFG, total_steps=STEPS * 2)


def _reference(builtin_model, c, uc, kd_external: types.ModuleType):
    wrapped = kd_external.CompVisDenoiser(_UNetAsCompVis(builtin_model.unet, builtin_model.alphas_cumprod))

    def denoise(x, sigma):
        out = wrapped(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([c, uc]))
        cond, uncond = out.chunk(2)
        return uncond + (cond - uncond) * CFG

    return denoise


@pytest.mark.filterwarnings("ignore:Should have t:UserWarning")
@pytest.mark.parametrize("name", sorted(set(KD_FUNCTIONS) - {"DPM adaptive"}))
@torch.no_grad()
def test_first_steps_match_k_diffusion_on_the_tiny_model(name: str, builtin_model, conds) -> None:
    kd_sampling = load_k_diffusion_module("sampling")
    kd_external = load_k_diffusion_module("external")
    spec = registry.find_sampler(name)
    schedule = DiscreteSchedule(builtin_model.alphas_cumprod)
    sigmas = registry.build_sigmas(spec, registry.AUTOMATIC, STEPS, schedule)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    c, uc = conds
    params = registry.SamplerParams()
    kwargs = registry.sampler_kwargs(spec, params)
    if spec.options.solver_type:
        kwargs["solver_type"] = spec.options.solver_type
    if name == "DPM fast":
        kwargs.update(sigma_min=float(sigmas[-2]), sigma_max=float(sigmas[0]), n=STEPS)

    def brownian():
        low, high = registry.brownian_sigma_range(sigmas)
        return kd_sampling.BrownianTreeNoiseSampler(x, low, high, seed=[7])

    torch.manual_seed(11)
    extra = {"noise_sampler": brownian()} if spec.options.brownian_noise else {}
    positional = () if name == "DPM fast" else (sigmas,)
    theirs = getattr(kd_sampling, KD_FUNCTIONS[name])(_reference(builtin_model, c, uc, kd_external), x.clone(),
                                                       *positional, disable=True, **kwargs, **extra)
    torch.manual_seed(11)
    noise = brownian() if spec.options.brownian_noise else (lambda s, sn: torch.randn_like(x))
    ours = registry.run_sampler(spec, _ours(builtin_model, c, uc), x.clone(), sigmas, noise=noise, params=params,
                                schedule=schedule)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
