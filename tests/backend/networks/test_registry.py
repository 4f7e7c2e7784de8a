"""Network discovery and browsing data: names, aliases, metadata, families, side files, previews, speed."""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from backend.errors import InvalidRequest
from backend.models.hashes import HashCache
from backend.networks import NetworkRegistry
from tests.backend.networks.network_files import kohya_metadata, random, save_network


def small(path: Path, metadata: dict[str, str] | None = None, width: int = 32) -> Path:
    return save_network(path, {"lora_unet_conv_in.lora_down.weight": random(2, width, seed=1)}, metadata)


def test_discovery_is_recursive_and_names_are_stems(tmp_path: Path) -> None:
    lora, lyco = tmp_path / "Lora", tmp_path / "LyCORIS"
    small(lora / "a.safetensors")
    small(lora / "sub" / "deeper" / "b.safetensors")
    save_network(lora / "c.pt", {"x.lora_up.weight": random(2, 2, seed=1)})
    (lora / "d.ckpt").write_bytes(b"not really")
    (lora / "notes.md").write_text("ignored")
    small(lyco / "e.safetensors")
    registry = NetworkRegistry([lora, lyco, tmp_path / "missing"])
    infos = registry.list()
    assert [info.name for info in infos] == ["a", "c", "d", "b", "e"]
    assert infos[3].relative_path == "sub/deeper/b.safetensors" and infos[3].root == lora
    assert infos[0].api_json() == {"name": "a", "alias": "a", "path": str(lora / "a.safetensors"), "metadata": {}}


def test_aliases_metadata_order_and_forbidden_duplicates(tmp_path: Path) -> None:
    small(tmp_path / "first.safetensors", kohya_metadata(ss_output_name="style", ss_tag_frequency={"x": {"a": 2}},
                                                        ss_clip_skip="2", ss_sd_model_name="base.ckpt"))
    small(tmp_path / "second.safetensors", kohya_metadata(ss_output_name="shared"))
    small(tmp_path / "third.safetensors", kohya_metadata(ss_output_name="shared"))
    small(tmp_path / "none.safetensors")
    registry = NetworkRegistry([tmp_path])
    first = registry.find("style")
    assert first is registry.find("first") and first.alias == "style"
    assert list(first.metadata)[:3] == ["ss_sd_model_name", "ss_clip_skip", "ss_tag_frequency"]
    assert first.metadata["ss_tag_frequency"] == {"x": {"a": 2}}  # JSON-object strings are decoded
    assert registry.find("shared") is None  # an alias used by two files only matches stems
    assert registry.find("third").alias == "shared"
    assert registry.prompt_name(registry.find("third")) == "third"
    assert registry.prompt_name(first) == "style"
    assert registry.prompt_name(first, "Filename") == "first"
    assert registry.find("none").name == "none"


def test_family_guess_from_metadata_shapes_and_user_metadata(tmp_path: Path) -> None:
    small(tmp_path / "xl.safetensors", kohya_metadata(ss_base_model_version="sdxl_base_v1-0"))
    small(tmp_path / "v2.safetensors", kohya_metadata(ss_v2="True"))
    small(tmp_path / "v1.safetensors", kohya_metadata(ss_v2="False"))
    to_k = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    save_network(tmp_path / "wide.safetensors", {f"{to_k}.lora_down.weight": random(2, 1024, seed=1)})
    small(tmp_path / "bare.safetensors")
    small(tmp_path / "mine.safetensors")
    (tmp_path / "mine.json").write_text(json.dumps({"sd version": "SDXL"}))
    registry = NetworkRegistry([tmp_path])
    families = {info.name: info.family for info in registry.list()}
    assert families == {"bare": None, "mine": "sdxl", "v1": "sd1", "v2": "sd2", "wide": "sd2", "xl": "sdxl"}
    assert registry.find("mine").declared_family is None  # only the file's own metadata is trusted to refuse


def test_side_files_description_user_metadata_and_previews(tmp_path: Path) -> None:
    small(tmp_path / "card.safetensors")
    (tmp_path / "card.txt").write_text("from txt")
    (tmp_path / "card.preview.webp").write_bytes(b"webp")
    (tmp_path / "card.jpg").write_bytes(b"jpg")  # png, preview.png, jpg ... : plain jpg comes before webp
    small(tmp_path / "plain.safetensors")
    registry = NetworkRegistry([tmp_path])
    card = registry.find("card")
    assert card.description == "from txt" and card.preview == tmp_path / "card.jpg"
    assert registry.find("plain").preview is None and registry.find("plain").description == ""

    data = {"description": "mine", "sd version": "SD1", "activation text": "trigger", "preferred weight": 0.7,
            "negative text": "", "notes": "n"}
    registry.save_user_metadata(card, data)
    assert json.loads((tmp_path / "card.json").read_text()) == data
    assert card.description == "mine" and card.family == "sd1"
    registry.refresh()
    assert registry.find("card").user_metadata == data
    with pytest.raises(InvalidRequest):
        registry.save_user_metadata(card, {"bad": object()})


def test_replace_preview(tmp_path: Path) -> None:
    from PIL import Image

    small(tmp_path / "card.safetensors")
    registry = NetworkRegistry([tmp_path])
    card = registry.find("card")
    saved = registry.replace_preview(card, Image.new("RGB", (8, 8), "red"), "webp")
    assert saved == tmp_path / "card.webp" and card.preview == saved
    assert Image.open(saved).size == (8, 8)


def test_hashes_are_addnet_or_metadata_and_cached(tmp_path: Path) -> None:
    path = small(tmp_path / "net.safetensors")
    small(tmp_path / "tagged.safetensors", kohya_metadata(sshs_model_hash="f" * 64))
    data = path.read_bytes()
    expected = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()
    cache = HashCache(tmp_path / "cache" / "hashes.json")
    registry = NetworkRegistry([tmp_path], cache)
    info = registry.find("net")
    assert info.sha256 is None and info.shorthash is None  # listing never hashes
    assert registry.ensure_hash(info) == expected and info.shorthash == expected[:12]
    assert registry.find("tagged").shorthash == "f" * 12
    again = NetworkRegistry([tmp_path], cache)
    assert again.find("net").sha256 == expected  # known from the cache without hashing
    assert again.find_by_shorthash(expected[:12]).name == "net"
    prompt = again.remap_prompt_by_hashes("<lora:old-name:0.6> <lora:other:1>", f"old-name: {expected[:12]}, x: 123")
    assert prompt == "<lora:net:0.6> <lora:other:1>"
    assert NetworkRegistry([tmp_path], no_hashing=True).ensure_hash(NetworkRegistry([tmp_path]).find("net")) is None


def test_pt_files_hash_the_whole_file(tmp_path: Path) -> None:
    path = save_network(tmp_path / "old.pt", {"x.lora_up.weight": random(2, 2, seed=1)})
    registry = NetworkRegistry([tmp_path])
    assert registry.ensure_hash(registry.find("old")) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_refresh_finds_new_files_and_find_rescans(tmp_path: Path) -> None:
    registry = NetworkRegistry([tmp_path])
    assert registry.list() == []
    small(tmp_path / "late.safetensors")
    assert registry.find("late") is not None  # a miss triggers one re-scan
    (tmp_path / "late.safetensors").unlink()
    registry.refresh()
    assert registry.list() == []


def test_listing_two_thousand_networks_is_fast(tmp_path: Path) -> None:
    template = small(tmp_path / "template.safetensors", kohya_metadata(ss_output_name="x", ss_v2="False")).read_bytes()
    (tmp_path / "template.safetensors").unlink()
    for folder in range(20):
        sub = tmp_path / f"folder{folder}"
        sub.mkdir()
        for index in range(100):
            (sub / f"net{folder}_{index}.safetensors").write_bytes(template)
            if index % 10 == 0:
                (sub / f"net{folder}_{index}.png").write_bytes(b"png")
    registry = NetworkRegistry([tmp_path], HashCache(tmp_path / "hashes.json"))
    start = time.perf_counter()
    infos = registry.list()
    first = time.perf_counter() - start
    start = time.perf_counter()
    registry.refresh()
    second = time.perf_counter() - start
    assert len(infos) == 2000 and sum(info.preview is not None for info in infos) == 200
    assert all(info.sha256 is None for info in infos)  # nothing was hashed
    assert not os.path.exists(tmp_path / "hashes.json")
    assert first < 1.5 and second < 1.0, (first, second)
