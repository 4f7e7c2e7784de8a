"""Small random-weight models in the file layouts users have, built with spandrel's own classes.

- `compact_state_dict`: an SRVGGNetCompact (realesr-general-x4v3 / animevideov3 layout).
- `rrdb_state_dict`: an RRDBNet in the old ESRGAN layout ("model.0...") or in Real-ESRGAN's
  layout ("conv_first", "body.N.rdbK...") as in RealESRGAN_x4plus.pth.
- `gfpgan_state_dict` / `codeformer_state_dict`: the full face-restoration architectures
  (their sizes are fixed by spandrel), random weights.
- `save_weights` writes .pth (plain or wrapped in "params_ema") or .safetensors.

Weights are seeded, so every build gives the same tensors.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed the initialisation without disturbing the global RNG of other tests."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


def compact_state_dict(
    *, scale: int = 4, num_feat: int = 8, num_conv: int = 2, seed: int = 0
) -> dict[str, torch.Tensor]:
    """An SRVGGNetCompact with random weights (spandrel's Compact class)."""
    from spandrel.architectures.Compact import Compact

    with _seeded(seed):
        model = Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=scale,
                        act_type="prelu")
    return {key: value.clone() for key, value in model.state_dict().items()}


def rrdb_state_dict(
    *, scale: int = 4, num_filters: int = 8, num_blocks: int = 1, real_esrgan_layout: bool = False, seed: int = 0
) -> dict[str, torch.Tensor]:
    """An RRDBNet (ESRGAN) with random weights, optionally renamed to Real-ESRGAN's key layout."""
    from spandrel.architectures.ESRGAN import ESRGAN

    with _seeded(seed):
        model = ESRGAN(in_nc=3, out_nc=3, num_filters=num_filters, num_blocks=num_blocks, scale=scale)
    # Keep the outputs in a useful range: random RRDB stacks otherwise saturate to 0 or 1.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(0.5)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    if real_esrgan_layout:
        return _to_real_esrgan_layout(state, num_blocks)
    return state


def _to_real_esrgan_layout(state: dict[str, torch.Tensor], num_blocks: int) -> dict[str, torch.Tensor]:
    """Rename old-ESRGAN keys to the names basicsr's RRDBNet uses (what Real-ESRGAN ships)."""
    upsample_layers = sorted({int(m.group(1)) for key in state if (m := re.match(r"model\.(\d+)\.", key))} - {0, 1})
    # The last two conv layers are conv_hr and conv_last; the ones before are conv_up1, conv_up2...
    *up_layers, hr_layer, last_layer = upsample_layers
    names = {0: "conv_first", hr_layer: "conv_hr", last_layer: "conv_last"}
    names.update({layer: f"conv_up{i + 1}" for i, layer in enumerate(up_layers)})
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if m := re.match(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)$", key):
            block, rdb, conv, kind = m.groups()
            renamed[f"body.{block}.rdb{rdb}.conv{conv}.{kind}"] = value
        elif m := re.match(rf"model\.1\.sub\.{num_blocks}\.(weight|bias)$", key):
            renamed[f"conv_body.{m.group(1)}"] = value
        elif m := re.match(r"model\.(\d+)\.(weight|bias)$", key):
            renamed[f"{names[int(m.group(1))]}.{m.group(2)}"] = value
        else:
            raise AssertionError(f"unexpected ESRGAN key {key}")
    return renamed


def gfpgan_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """GFPGANv1Clean as spandrel builds it (512 px, channel multiplier 2), random weights."""
    from spandrel.architectures.GFPGAN import GFPGAN

    with _seeded(seed):
        model = GFPGAN(
            out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None, fix_decoder=False,
            num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True,
        )
    return {key: value.clone() for key, value in model.state_dict().items()}


def codeformer_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A CodeFormer with a small transformer (the VQ autoencoder's size is fixed), random weights."""
    from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

    with _seeded(seed):
        model = CodeFormer(dim_embd=64, n_head=8, n_layers=1, codebook_size=64, latent_size=256,
                           connect_list=["32", "64"], fix_modules=["quantize", "generator"])
    return {key: value.clone() for key, value in model.state_dict().items()}


def save_weights(state: dict[str, torch.Tensor], path: Path, *, params_ema: bool = False) -> Path:
    """Write `state` as .safetensors, or as .pth (optionally wrapped as {"params_ema": state})."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in state.items()}, str(path))
    else:
        torch.save({"params_ema": state} if params_ema else state, path)
    return path
