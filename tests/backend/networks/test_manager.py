"""Activating networks on the built-in model: every type's math against a hand-written merge, multipliers,
composition, exact restore, refusals, caching, hashes and prompt parsing."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from backend.errors import InvalidRequest
from backend.networks import (
    NetworkManager,
    NetworkRegistry,
    NetworkRequest,
    lora_hashes_infotext,
    requests_from_prompt_params,
)
from backend.networks import manager as manager_module
from backend.prompts.parser import parse_extra_networks
from tests.backend.networks.network_files import kohya_metadata, kohya_te, kohya_unet, random, save_network

FF_IN = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"  # Linear 32 -> 256, with bias
FF_OUT = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2"  # Linear 128 -> 32
CONV = "down_blocks.1.resnets.0.conv1"  # Conv2d 32 -> 64, 3x3
NORM = "down_blocks.0.attentions.0.transformer_blocks.0.norm1"  # LayerNorm(32)
TO_K = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"  # Linear 32 -> 32, no bias
TE_FC1 = "encoder.layers.0.mlp.fc1"  # CLIP Linear 32 -> 128


def unet_layer(model, path: str) -> torch.nn.Module:
    return model.unet.get_submodule(path)


def te_layer(model, path: str) -> torch.nn.Module:
    return model.text_encoder.get_submodule(path)


def snapshot(model) -> dict[str, torch.Tensor]:
    state = {f"unet.{k}": v.detach().clone() for k, v in model.unet.state_dict().items()}
    state.update({f"te.{k}": v.detach().clone() for k, v in model.text_encoder.state_dict().items()})
    return state


def assert_unchanged(model, original: dict[str, torch.Tensor]) -> None:
    current = snapshot(model)
    assert current.keys() == original.keys()
    changed = [key for key in original if not torch.equal(current[key], original[key])]
    assert not changed, changed[:5]


@pytest.fixture(scope="module")
def originals(builtin_model) -> dict[str, torch.Tensor]:
    return snapshot(builtin_model)


@pytest.fixture
def lora_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "Lora"
    folder.mkdir()
    return folder


@pytest.fixture
def manager(lora_dir: Path, builtin_model, originals):
    mgr = NetworkManager(NetworkRegistry([lora_dir]))
    yield mgr
    mgr.activate(builtin_model, [])
    assert_unchanged(builtin_model, originals)  # every test leaves the shared model bit-exact


def activate_one(manager: NetworkManager, model, name: str, te: float = 1.0, unet: float | None = None):
    result = manager.activate(model, [NetworkRequest(name, te, te if unet is None else unet)])
    assert not result.errors and not result.missing, (result.errors, result.missing)
    return result


# ---- each type: applied weight == base + multiplier * delta, the delta written out by hand -------------------

def test_lora_linear_uses_alpha_over_rank(manager, lora_dir, builtin_model, originals) -> None:
    up, down = random(256, 4, seed=1), random(4, 32, seed=2)
    name = kohya_unet(FF_IN)
    save_network(lora_dir / "plain.safetensors", {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                                                  f"{name}.alpha": torch.tensor(2.0)})
    activate_one(manager, builtin_model, "plain", 0.7)
    base = originals[f"unet.{FF_IN}.weight"]
    expected = base + 0.7 * (2.0 / 4) * (up @ down)
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, expected, rtol=0, atol=1e-6)
    # Only the targeted weight changed.
    assert torch.equal(unet_layer(builtin_model, FF_IN).bias, originals[f"unet.{FF_IN}.bias"])
    assert torch.equal(unet_layer(builtin_model, CONV).weight, originals[f"unet.{CONV}.weight"])


def test_locon_conv_and_tucker_mid(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(CONV)
    up, down = random(64, 4, 1, 1, seed=3), random(4, 32, 3, 3, seed=4)
    save_network(lora_dir / "locon.safetensors", {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                                                  f"{name}.alpha": torch.tensor(1.0)})
    activate_one(manager, builtin_model, "locon")
    base = originals[f"unet.{CONV}.weight"]
    expected = base + 0.25 * (up.flatten(1) @ down.flatten(1)).reshape(64, 32, 3, 3)
    torch.testing.assert_close(unet_layer(builtin_model, CONV).weight, expected, rtol=0, atol=1e-6)

    mid, down_1x1 = random(4, 4, 3, 3, seed=5), random(4, 32, 1, 1, seed=6)
    save_network(lora_dir / "tucker.safetensors", {f"{name}.lora_up.weight": up, f"{name}.lora_mid.weight": mid,
                                                   f"{name}.lora_down.weight": down_1x1,
                                                   f"{name}.alpha": torch.tensor(4.0)})
    activate_one(manager, builtin_model, "tucker", 0.5)
    # delta[o, i, k, l] = sum_n,m up[o, n] mid[n, m, k, l] down[m, i], written as matrix products per (k, l).
    per_position = up.flatten(1) @ mid.permute(2, 3, 0, 1) @ down_1x1.flatten(1)  # [3, 3, 64, 32]
    expected = base + 0.5 * 1.0 * per_position.permute(2, 3, 0, 1)
    torch.testing.assert_close(unet_layer(builtin_model, CONV).weight, expected, rtol=0, atol=1e-6)


def test_loha(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(FF_IN)
    w1a, w1b, w2a, w2b = random(256, 3, seed=7), random(3, 32, seed=8), random(256, 3, seed=9), random(3, 32, seed=10)
    save_network(lora_dir / "loha.safetensors", {f"{name}.hada_w1_a": w1a, f"{name}.hada_w1_b": w1b,
                                                 f"{name}.hada_w2_a": w2a, f"{name}.hada_w2_b": w2b,
                                                 f"{name}.alpha": torch.tensor(1.5)})
    activate_one(manager, builtin_model, "loha", 0.8)
    expected = originals[f"unet.{FF_IN}.weight"] + 0.8 * (1.5 / 3) * ((w1a @ w1b) * (w2a @ w2b))
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, expected, rtol=0, atol=1e-6)


def test_lokr_kronecker_product(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(FF_IN)
    w1, w2a, w2b = random(4, 2, seed=11, scale=1.0), random(64, 2, seed=12), random(2, 16, seed=13)
    save_network(lora_dir / "lokr.safetensors", {f"{name}.lokr_w1": w1, f"{name}.lokr_w2_a": w2a,
                                                 f"{name}.lokr_w2_b": w2b, f"{name}.alpha": torch.tensor(1.0)})
    activate_one(manager, builtin_model, "lokr", -1.0)
    w2 = w2a @ w2b
    kron = torch.zeros(256, 32)
    for i in range(4):
        for j in range(2):
            kron[i * 64:(i + 1) * 64, j * 16:(j + 1) * 16] = w1[i, j] * w2
    expected = originals[f"unet.{FF_IN}.weight"] - (1.0 / 2) * kron
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("on_input", [False, True])
def test_ia3_scales_rows_or_columns(manager, lora_dir, builtin_model, originals, on_input: bool) -> None:
    name = kohya_unet(FF_IN)
    scales = random(32 if on_input else 256, seed=14)
    save_network(lora_dir / "ia3.safetensors", {f"{name}.weight": scales, f"{name}.on_input": torch.tensor(on_input)})
    activate_one(manager, builtin_model, "ia3", 0.5)
    base = originals[f"unet.{FF_IN}.weight"]
    delta = base * scales[None, :] if on_input else base * scales[:, None]
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, base + 0.5 * delta, rtol=0, atol=1e-6)


def test_full_diff_with_bias_and_creates_missing_bias(manager, lora_dir, builtin_model, originals) -> None:
    diff, diff_b = random(256, 32, seed=15), random(256, seed=16)
    k_diff, k_bias = random(32, 32, seed=17), random(32, seed=18)
    save_network(lora_dir / "full.safetensors", {
        f"{kohya_unet(FF_IN)}.diff": diff, f"{kohya_unet(FF_IN)}.diff_b": diff_b,
        f"{kohya_unet(TO_K)}.diff": k_diff, f"{kohya_unet(TO_K)}.diff_b": k_bias})
    assert unet_layer(builtin_model, TO_K).bias is None
    activate_one(manager, builtin_model, "full", 0.3)
    layer = unet_layer(builtin_model, FF_IN)
    torch.testing.assert_close(layer.weight, originals[f"unet.{FF_IN}.weight"] + 0.3 * diff, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.bias, originals[f"unet.{FF_IN}.bias"] + 0.3 * diff_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(unet_layer(builtin_model, TO_K).bias, 0.3 * k_bias, rtol=0, atol=1e-6)
    manager.activate(builtin_model, [])
    assert unet_layer(builtin_model, TO_K).bias is None  # the created bias is gone again


def test_norm_weight_and_bias(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(NORM)
    w_norm, b_norm = random(32, seed=19), random(32, seed=20)
    save_network(lora_dir / "norm.safetensors", {f"{name}.w_norm": w_norm, f"{name}.b_norm": b_norm})
    activate_one(manager, builtin_model, "norm", 2.0)
    layer = unet_layer(builtin_model, NORM)
    torch.testing.assert_close(layer.weight, originals[f"unet.{NORM}.weight"] + 2.0 * w_norm, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer.bias, originals[f"unet.{NORM}.bias"] + 2.0 * b_norm, rtol=0, atol=1e-6)


@pytest.mark.parametrize("naming", ["a1111", "lycoris"])
def test_glora(manager, lora_dir, builtin_model, originals, naming: str) -> None:
    name, rank = kohya_unet(FF_IN), 3
    base = originals[f"unet.{FF_IN}.weight"]  # [256, 32]
    if naming == "a1111":  # early LyCORIS names, as A1111 reads them: W + b2 b1 + W a2 a1
        a1, a2, b1, b2 = random(rank, 32, seed=21), random(32, rank, seed=22), random(rank, 32, seed=23), \
            random(256, rank, seed=24)
        delta = b2 @ b1 + base @ a2 @ a1
    else:  # current LyCORIS: W + b1 b2 + W a1 a2
        a1, a2, b1, b2 = random(32, rank, seed=21), random(rank, 32, seed=22), random(256, rank, seed=23), \
            random(rank, 32, seed=24)
        delta = b1 @ b2 + base @ a1 @ a2
    save_network(lora_dir / "glora.safetensors", {f"{name}.a1.weight": a1, f"{name}.a2.weight": a2,
                                                  f"{name}.b1.weight": b1, f"{name}.b2.weight": b2,
                                                  f"{name}.alpha": torch.tensor(float(rank))})
    activate_one(manager, builtin_model, "glora", 0.6)
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, base + 0.6 * delta, rtol=0, atol=1e-5)


def test_oft_kohya_blocks_and_lycoris_diag(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(FF_IN)
    base = originals[f"unet.{FF_IN}.weight"]  # 256 rows = 8 blocks of 32
    blocks, alpha = random(8, 32, 32, seed=25), 1e-3
    save_network(lora_dir / "oft.safetensors", {f"oft_unet_{FF_IN.replace('.', '_')}.oft_blocks": blocks,
                                                f"oft_unet_{FF_IN.replace('.', '_')}.alpha": torch.tensor(alpha)})
    activate_one(manager, builtin_model, "oft", 0.5)
    q = blocks - blocks.transpose(1, 2)
    norm = q.norm()
    q = q * (min(norm.item(), alpha * 256) + 1e-8) / (norm + 1e-8)  # the norm is clamped to alpha * out_dim
    eye = torch.eye(32)
    rotated = torch.cat([(eye + q[k]) @ torch.linalg.inv(eye - q[k]) for k in range(8)])  # [8 * 32, 32]
    merged = torch.cat([rotated[k * 32:(k + 1) * 32].T @ base[k * 32:(k + 1) * 32] for k in range(8)])
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, base + 0.5 * (merged - base),
                               rtol=0, atol=1e-5)

    rotation = random(8, 32, 32, seed=26) + torch.eye(32)
    save_network(lora_dir / "oftdiag.safetensors", {f"{name}.oft_diag": rotation})
    activate_one(manager, builtin_model, "oftdiag")
    merged = torch.cat([rotation[k].T @ base[k * 32:(k + 1) * 32] for k in range(8)])
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, merged, rtol=0, atol=1e-5)


@pytest.mark.parametrize("convention", ["per-input", "per-output"])
def test_dora_renormalises_the_merged_weight(manager, lora_dir, builtin_model, originals, convention: str) -> None:
    name = kohya_unet(FF_IN)
    up, down = random(256, 4, seed=27), random(4, 32, seed=28)
    base = originals[f"unet.{FF_IN}.weight"]
    merged = base + (4.0 / 4) * (up @ down)
    if convention == "per-input":  # kohya / A1111: magnitude [1, in], norm of each input column
        magnitude = random(1, 32, seed=29).abs() + 1
        dora = merged * (magnitude / merged.norm(dim=0, keepdim=True))
    else:  # LyCORIS wd_on_out / PEFT: magnitude [out, 1], norm of each output row
        magnitude = random(256, 1, seed=29).abs() + 1
        dora = merged * (magnitude / merged.norm(dim=1, keepdim=True))
    save_network(lora_dir / "dora.safetensors", {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                                                 f"{name}.alpha": torch.tensor(4.0), f"{name}.dora_scale": magnitude})
    activate_one(manager, builtin_model, "dora", 0.5)
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, base + 0.5 * (dora - base), rtol=0, atol=1e-5)


def test_dyn_dim_keeps_the_first_ranks(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(FF_IN)
    up, down = random(256, 4, seed=30), random(4, 32, seed=31)
    save_network(lora_dir / "dyn.safetensors", {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down,
                                                f"{name}.alpha": torch.tensor(4.0)})
    result = manager.activate(builtin_model, [NetworkRequest("dyn", 1.0, 1.0, dyn_dim=2)])
    assert not result.errors
    expected = originals[f"unet.{FF_IN}.weight"] + up[:, :2] @ down[:2]  # alpha / full rank = 1
    torch.testing.assert_close(unet_layer(builtin_model, FF_IN).weight, expected, rtol=0, atol=1e-6)


# ---- key formats --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", ["kohya", "ldm", "compvis", "peft", "diffusers-lora", "old-processor"])
def test_key_formats_reach_the_same_layer(manager, lora_dir, builtin_model, originals, layout: str) -> None:
    path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0"
    ldm = "input_blocks_1_1_transformer_blocks_0_attn1_to_out_0"
    up, down = random(32, 2, seed=32), random(2, 32, seed=33)
    keys = {
        "kohya": (f"{kohya_unet(path)}.lora_up.weight", f"{kohya_unet(path)}.lora_down.weight"),
        "ldm": (f"lora_unet_{ldm}.lora_up.weight", f"lora_unet_{ldm}.lora_down.weight"),
        "compvis": (f"diffusion_model_{ldm}.lora_up.weight", f"diffusion_model_{ldm}.lora_down.weight"),
        "peft": (f"unet.{path}.lora_B.weight", f"unet.{path}.lora_A.weight"),
        "diffusers-lora": (f"unet.{path}.lora.up.weight", f"unet.{path}.lora.down.weight"),
        "old-processor": (f"unet.{path[:-len('.to_out.0')]}.processor.to_out_lora.up.weight",
                          f"unet.{path[:-len('.to_out.0')]}.processor.to_out_lora.down.weight"),
    }[layout]
    save_network(lora_dir / "fmt.safetensors", {keys[0]: up, keys[1]: down})
    activate_one(manager, builtin_model, "fmt")
    expected = originals[f"unet.{path}.weight"] + up @ down  # no alpha: scale 1
    torch.testing.assert_close(unet_layer(builtin_model, path).weight, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", [kohya_te(TE_FC1), kohya_te(TE_FC1, "lora_te1"),
                                 f"text_encoder.text_model.{TE_FC1}", f"text_encoder.{TE_FC1}"])
def test_text_encoder_key_formats(manager, lora_dir, builtin_model, originals, key: str) -> None:
    up, down = random(128, 2, seed=34), random(2, 32, seed=35)
    dotted = key.startswith("text_encoder")
    parts = ("lora_B.weight", "lora_A.weight") if dotted else ("lora_up.weight", "lora_down.weight")
    save_network(lora_dir / "te.safetensors", {f"{key}.{parts[0]}": up, f"{key}.{parts[1]}": down})
    activate_one(manager, builtin_model, "te", 0.5, unet=0.0)
    torch.testing.assert_close(te_layer(builtin_model, TE_FC1).weight,
                               originals[f"te.{TE_FC1}.weight"] + 0.5 * up @ down, rtol=0, atol=1e-6)


# ---- multipliers, composition, restore --------------------------------------------------------------------

def two_part_network(lora_dir: Path, name: str, seed: int) -> dict[str, torch.Tensor]:
    tensors = {
        f"{kohya_unet(FF_OUT)}.lora_up.weight": random(32, 2, seed=seed),
        f"{kohya_unet(FF_OUT)}.lora_down.weight": random(2, 128, seed=seed + 1),
        f"{kohya_te(TE_FC1)}.lora_up.weight": random(128, 2, seed=seed + 2),
        f"{kohya_te(TE_FC1)}.lora_down.weight": random(2, 32, seed=seed + 3),
    }
    save_network(lora_dir / f"{name}.safetensors", tensors)
    return tensors


def unet_and_te_deltas(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    unet = tensors[f"{kohya_unet(FF_OUT)}.lora_up.weight"] @ tensors[f"{kohya_unet(FF_OUT)}.lora_down.weight"]
    te = tensors[f"{kohya_te(TE_FC1)}.lora_up.weight"] @ tensors[f"{kohya_te(TE_FC1)}.lora_down.weight"]
    return unet, te


def test_te_and_unet_multipliers_act_separately(manager, lora_dir, builtin_model, originals) -> None:
    unet_delta, te_delta = unet_and_te_deltas(two_part_network(lora_dir, "both", 40))
    tags = parse_extra_networks("<lora:both:0.25:-1.5>")[1]["lora"]
    result = manager.activate(builtin_model, requests_from_prompt_params(tags))
    assert [(info.name, te, unet) for info, te, unet in result.applied] == [("both", 0.25, -1.5)]
    torch.testing.assert_close(unet_layer(builtin_model, FF_OUT).weight,
                               originals[f"unet.{FF_OUT}.weight"] - 1.5 * unet_delta, rtol=0, atol=1e-6)
    torch.testing.assert_close(te_layer(builtin_model, TE_FC1).weight,
                               originals[f"te.{TE_FC1}.weight"] + 0.25 * te_delta, rtol=0, atol=1e-6)


def test_two_networks_compose_and_switching_restores_first(manager, lora_dir, builtin_model, originals) -> None:
    unet_a, te_a = unet_and_te_deltas(two_part_network(lora_dir, "a", 50))
    unet_b, te_b = unet_and_te_deltas(two_part_network(lora_dir, "b", 60))
    result = manager.activate(builtin_model, [NetworkRequest("a", 1.0, 0.5), NetworkRequest("b", -0.5, 2.0)])
    assert [info.name for info, _, _ in result.applied] == ["a", "b"]
    torch.testing.assert_close(unet_layer(builtin_model, FF_OUT).weight,
                               originals[f"unet.{FF_OUT}.weight"] + 0.5 * unet_a + 2.0 * unet_b, rtol=0, atol=1e-6)
    torch.testing.assert_close(te_layer(builtin_model, TE_FC1).weight,
                               originals[f"te.{TE_FC1}.weight"] + te_a - 0.5 * te_b, rtol=0, atol=1e-6)
    manager.activate(builtin_model, [NetworkRequest("b", 1.0, 1.0)])
    torch.testing.assert_close(unet_layer(builtin_model, FF_OUT).weight,
                               originals[f"unet.{FF_OUT}.weight"] + unet_b, rtol=0, atol=1e-6)


def test_weight_zero_equals_no_network_and_restore_is_bit_exact(manager, lora_dir, builtin_model, originals) -> None:
    two_part_network(lora_dir, "zero", 70)
    activate_one(manager, builtin_model, "zero", 0.0)
    assert_unchanged(builtin_model, originals)
    activate_one(manager, builtin_model, "zero", 0.9)
    assert not torch.equal(unet_layer(builtin_model, FF_OUT).weight, originals[f"unet.{FF_OUT}.weight"])
    manager.activate(builtin_model, [])
    assert_unchanged(builtin_model, originals)


def test_same_set_again_does_nothing(manager, lora_dir, builtin_model, monkeypatch) -> None:
    two_part_network(lora_dir, "same", 80)
    first = activate_one(manager, builtin_model, "same", 0.5)
    weight = unet_layer(builtin_model, FF_OUT).weight.detach().clone()

    def must_not_merge(*args, **kwargs):
        raise AssertionError("the same set was merged again")

    monkeypatch.setattr(manager, "_merge", must_not_merge)
    again = manager.activate(builtin_model, [NetworkRequest("same", 0.5, 0.5)])
    assert [info.name for info, _, _ in again.applied] == [info.name for info, _, _ in first.applied]
    assert torch.equal(unet_layer(builtin_model, FF_OUT).weight, weight)
    monkeypatch.undo()


def test_memory_limit_keeps_inactive_networks_cached(lora_dir, builtin_model, monkeypatch) -> None:
    two_part_network(lora_dir, "one", 90)
    two_part_network(lora_dir, "two", 95)
    reads = []
    real_read = manager_module.read_network_file
    monkeypatch.setattr(manager_module, "read_network_file", lambda path: reads.append(path.name) or real_read(path))
    for limit, expected_reads in ((0, ["one", "two", "one"]), (1, ["one", "two"])):
        reads.clear()
        mgr = NetworkManager(NetworkRegistry([lora_dir]), memory_limit=limit)
        for name in ("one", "two", "one"):
            activate_one(mgr, builtin_model, name)
        mgr.activate(builtin_model, [])
        assert [Path(r).stem for r in reads] == expected_reads


# ---- refusals and reports ----------------------------------------------------------------------------------------

def test_missing_names_are_reported_not_raised(manager, lora_dir, builtin_model) -> None:
    two_part_network(lora_dir, "here", 100)
    result = manager.activate(builtin_model, [NetworkRequest("nope"), NetworkRequest("here")])
    assert result.missing == ["nope"]
    assert result.not_found_comment == "Lora not found: nope"
    assert [info.name for info, _, _ in result.applied] == ["here"]


def test_network_for_another_family_is_refused_by_metadata(manager, lora_dir, builtin_model, originals) -> None:
    tensors = two_part_network(lora_dir, "xl", 110)
    save_network(lora_dir / "xl.safetensors", tensors, kohya_metadata(ss_base_model_version="sdxl_base_v1-0"))
    result = manager.activate(builtin_model, [NetworkRequest("xl")])
    assert not result.applied
    assert result.errors == ["xl: this network is for SDXL but the loaded model is SD 1.x; not applied"]
    assert_unchanged(builtin_model, originals)


def test_network_for_another_family_is_refused_by_shapes(manager, lora_dir, builtin_model, originals) -> None:
    # An SD1.5-sized LoRA (768-wide cross-attention) on the small model: the names match, the shapes do not.
    two_part_network(lora_dir, "fits", 120)
    name = kohya_unet(TO_K)
    save_network(lora_dir / "big.safetensors", {f"{name}.lora_up.weight": random(320, 4, seed=1),
                                                f"{name}.lora_down.weight": random(4, 768, seed=2),
                                                f"{kohya_unet(FF_OUT)}.lora_up.weight": random(32, 2, seed=3),
                                                f"{kohya_unet(FF_OUT)}.lora_down.weight": random(2, 128, seed=4)})
    result = manager.activate(builtin_model, [NetworkRequest("big"), NetworkRequest("fits")])
    assert [info.name for info, _, _ in result.applied] == ["fits"]
    assert len(result.errors) == 1
    message = result.errors[0]
    assert message.startswith("big: does not fit this SD 1.x model (1 of 2 layers have other shapes")
    assert "probably made for SD 1.x" in message and message.endswith("not applied")
    assert torch.equal(unet_layer(builtin_model, TO_K).weight, originals[f"unet.{TO_K}.weight"])


def test_network_with_no_matching_layer_is_refused(manager, lora_dir, builtin_model) -> None:
    save_network(lora_dir / "te2.safetensors", {
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": random(128, 2, seed=1),
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": random(2, 32, seed=2)})
    result = manager.activate(builtin_model, [NetworkRequest("te2")])
    assert not result.applied
    assert result.errors[0].startswith("te2: none of its 1 layers exist in this SD 1.x model")


def test_unknown_tensor_names_and_unsafe_pickles_are_errors(manager, lora_dir, builtin_model) -> None:
    save_network(lora_dir / "odd.safetensors", {f"{kohya_unet(FF_IN)}.mystery": random(3, seed=1)})
    with open(lora_dir / "evil.pt", "wb") as file:
        pickle.dump({"x": Path("/")}, file, protocol=2)  # needs a Python class: refused by weights-only unpickling
    result = manager.activate(builtin_model, [NetworkRequest("odd"), NetworkRequest("evil")])
    assert not result.applied
    assert "fit no known network type" in result.errors[0]
    assert "refused to unpickle" in result.errors[1]


def test_weights_only_pt_file_applies(manager, lora_dir, builtin_model, originals) -> None:
    name = kohya_unet(FF_OUT)
    up, down = random(32, 2, seed=5), random(2, 128, seed=6)
    save_network(lora_dir / "legacy.pt", {f"{name}.lora_up.weight": up, f"{name}.lora_down.weight": down})
    activate_one(manager, builtin_model, "legacy")
    torch.testing.assert_close(unet_layer(builtin_model, FF_OUT).weight,
                               originals[f"unet.{FF_OUT}.weight"] + up @ down, rtol=0, atol=1e-6)


# ---- hashes and infotext -------------------------------------------------------------------------------------------

def test_lora_hashes_use_addnet_hash_and_prompt_names(manager, lora_dir, builtin_model) -> None:
    tensors = two_part_network(lora_dir, "hashed", 130)
    path = save_network(lora_dir / "hashed.safetensors", tensors, kohya_metadata(ss_output_name="Nice, Style: v2"))
    save_network(lora_dir / "given.safetensors", two_part_network(lora_dir, "tmp", 140),
                 kohya_metadata(sshs_model_hash="ABCDEF0123456789" + "0" * 48))
    (lora_dir / "tmp.safetensors").unlink()
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    addnet = hashlib.sha256(data[8 + header:]).hexdigest()
    result = manager.activate(builtin_model, [NetworkRequest("Nice, Style: v2", 0.5), NetworkRequest("given")])
    assert result.applied[0][0].sha256 == addnet
    assert result.lora_hashes() == f"Nice Style v2: {addnet[:12]}, given: ABCDEF012345"
    assert lora_hashes_infotext(result.applied) == f"Nice Style v2: {addnet[:12]}, given: ABCDEF012345"


# ---- prompt parsing ----------------------------------------------------------------------------------------------

def test_requests_from_prompt_tags() -> None:
    _, tags = parse_extra_networks("a <lora:a:0.5> b <lora:b:1:0.25:8> <lora:c:te=0.3:unet=-1:dyn=4> <lora:d>")
    assert requests_from_prompt_params(tags["lora"]) == [
        NetworkRequest("a", 0.5, 0.5), NetworkRequest("b", 1.0, 0.25, 8), NetworkRequest("c", 0.3, -1.0, 4),
        NetworkRequest("d", 1.0, 1.0)]
    _, tags = parse_extra_networks("<lyco:x:0.7>")
    assert requests_from_prompt_params(tags["lyco"]) == [NetworkRequest("x", 0.7, 0.7)]


@pytest.mark.parametrize("tag", ["<lora:x:strong>", "<lora:x:1:inf>", "<lora:te=1>", "<lora:x:1:1:big>"])
def test_bad_prompt_tags_are_invalid_requests(tag: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        requests_from_prompt_params(parse_extra_networks(tag)[1]["lora"])
    assert error.value.field == "prompt"


# ---- end to end -----------------------------------------------------------------------------------------------------

def test_lora_changes_unet_output_like_a_hand_merged_model_and_restores_it(manager, lora_dir, builtin_model) -> None:
    import copy

    tensors = two_part_network(lora_dir, "e2e", 150)
    unet = builtin_model.unet
    x = random(1, 4, 8, 8, seed=1, scale=1.0)
    context = random(1, 5, 32, seed=2, scale=1.0)
    t = torch.tensor([500])

    def run(model) -> torch.Tensor:
        with torch.no_grad():
            return model(x, t, encoder_hidden_states=context).sample

    before = run(unet)
    merged = copy.deepcopy(unet)
    unet_delta, _ = unet_and_te_deltas(tensors)
    with torch.no_grad():
        merged.get_submodule(FF_OUT).weight += 0.8 * unet_delta
    activate_one(manager, builtin_model, "e2e", 0.8)
    with_lora = run(unet)
    assert not torch.allclose(with_lora, before)
    torch.testing.assert_close(with_lora, run(merged), rtol=0, atol=1e-5)
    manager.activate(builtin_model, [])
    assert torch.equal(run(unet), before)


def test_sdxl_kohya_network_on_an_sdxl_model(lora_dir) -> None:
    from tests.backend.models.tiny_checkpoints import build_tiny_model

    model = build_tiny_model("sdxl")
    unet_path = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"  # ldm: input_blocks.3.1...
    te2_path = "text_model.encoder.layers.1.mlp.fc1"
    unet_layer_, te2_layer = model.unet.get_submodule(unet_path), model.text_encoder_2.get_submodule(te2_path)
    before_unet, before_te2 = unet_layer_.weight.detach().clone(), te2_layer.weight.detach().clone()
    unet_name = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"
    te2_name = "lora_te2_text_model_encoder_layers_1_mlp_fc1"
    tensors = {f"{unet_name}.lora_up.weight": random(64, 2, seed=1),
               f"{unet_name}.lora_down.weight": random(2, 80, seed=2),
               f"{te2_name}.lora_up.weight": random(96, 2, seed=3),
               f"{te2_name}.lora_down.weight": random(2, 48, seed=4)}
    save_network(lora_dir / "xl.safetensors", tensors, kohya_metadata(ss_base_model_version="sdxl_base_v1-0"))
    mgr = NetworkManager(NetworkRegistry([lora_dir]))
    result = mgr.activate(model, [NetworkRequest("xl", 0.5, 2.0)])
    assert not result.errors and len(result.applied) == 1
    torch.testing.assert_close(unet_layer_.weight, before_unet + 2.0 * tensors[f"{unet_name}.lora_up.weight"]
                               @ tensors[f"{unet_name}.lora_down.weight"], rtol=0, atol=1e-6)
    torch.testing.assert_close(te2_layer.weight, before_te2 + 0.5 * tensors[f"{te2_name}.lora_up.weight"]
                               @ tensors[f"{te2_name}.lora_down.weight"], rtol=0, atol=1e-6)
    mgr.activate(model, [])
    assert torch.equal(unet_layer_.weight, before_unet) and torch.equal(te2_layer.weight, before_te2)
