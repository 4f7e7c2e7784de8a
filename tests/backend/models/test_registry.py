from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from backend.errors import ModelNotFound
from backend.models import hashes
from backend.models.hashes import HashCache
from backend.models.registry import (
    CheckpointInfo,
    CheckpointRegistry,
    natural_sort_key,
    read_safetensors_metadata,
)

BIG_SIZE = 0x100000 + 0x10000 + 777


def _safetensors(path: Path, value: float = 1.0, metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"weight": np.full((2, 3), value, dtype=np.float32)}, str(path), metadata=metadata)
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: Path) -> str:
        raise AssertionError(f"the file was hashed: {path}")

    monkeypatch.setattr(hashes, "sha256_file", fail)
    monkeypatch.setattr("backend.models.registry.sha256_file", fail)


@dataclass
class Layout:
    sd_dir: Path
    ckpt_dir: Path
    extra: Path
    big_ckpt: Path
    cache_file: Path

    def registry(self, hashing_enabled: bool = True, cache: bool = True) -> CheckpointRegistry:
        registry = CheckpointRegistry(
            [self.sd_dir, self.ckpt_dir],
            [self.extra],
            hash_cache=HashCache(self.cache_file) if cache else None,
            hashing_enabled=hashing_enabled,
        )
        registry.refresh()
        return registry


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    sd_dir = tmp_path / "models" / "Stable-diffusion"
    _safetensors(sd_dir / "model10.safetensors", 10.0, {"format": "pt", "ss_tag_frequency": '{"cat": 3}'})
    _safetensors(sd_dir / "model2.safetensors", 2.0)
    big_ckpt = sd_dir / "Model1.ckpt"
    big_ckpt.write_bytes(os.urandom(BIG_SIZE))
    (sd_dir / "Model1.yaml").write_text("model: {}\n")
    _safetensors(sd_dir / "sub" / "nested" / "deep.safetensors", 3.0)
    _safetensors(sd_dir / "sub" / "model.vae.safetensors", 4.0)
    (sd_dir / "sub" / "notes.txt").write_text("not a model")
    diffusers_dir = sd_dir / "diffusers-model"
    _safetensors(diffusers_dir / "unet" / "diffusion_pytorch_model.safetensors", 5.0)
    (diffusers_dir / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')

    ckpt_dir = tmp_path / "ckpt-dir"
    _safetensors(ckpt_dir / "other.safetensors", 6.0)
    extra = _safetensors(tmp_path / "elsewhere" / "extra.safetensors", 7.0)
    return Layout(sd_dir, ckpt_dir, extra, big_ckpt, tmp_path / "cache" / "hashes.json")


EXPECTED_NAMES = [
    "extra.safetensors",
    "Model1.ckpt",
    "model2.safetensors",
    "model10.safetensors",
    "diffusers-model",
    "sub/nested/deep.safetensors",
    "other.safetensors",
]


def test_refresh_lists_checkpoints_in_a1111_order(layout: Layout) -> None:
    registry = layout.registry()
    assert [info.name for info in registry.list()] == EXPECTED_NAMES
    # Without cached hashes, titles are plain names until a hash is computed.
    assert registry.titles() == EXPECTED_NAMES


def test_registry_is_empty_until_refreshed(layout: Layout) -> None:
    registry = CheckpointRegistry([layout.sd_dir])
    assert registry.list() == []
    with pytest.raises(ModelNotFound):
        registry.get("model2.safetensors")


def test_missing_model_dirs_and_extra_files_are_skipped(tmp_path: Path) -> None:
    registry = CheckpointRegistry([tmp_path / "nope"], [tmp_path / "missing.ckpt"])
    registry.refresh()
    assert registry.list() == []


def test_record_fields(layout: Layout) -> None:
    registry = layout.registry()
    deep = registry.get("sub/nested/deep.safetensors")
    assert deep.filename == layout.sd_dir / "sub" / "nested" / "deep.safetensors"
    assert deep.filename.is_absolute()
    assert deep.name_for_extra == "deep"
    assert deep.model_name == "sub_nested_deep"
    assert deep.is_safetensors and not deep.is_diffusers_dir
    assert deep.sha256 is None and deep.shorthash is None
    assert deep.config is None

    big = registry.get("Model1.ckpt")
    assert not big.is_safetensors
    assert big.metadata == {}
    assert big.config == layout.sd_dir / "Model1.yaml"


def test_titles_get_the_ten_hex_sha256_prefix(layout: Layout) -> None:
    registry = layout.registry()
    info = registry.get("model2.safetensors")
    expected = _sha(info.filename)

    assert registry.ensure_hash(info) == expected[:10]
    assert info.sha256 == expected
    assert info.title == f"model2.safetensors [{expected[:10]}]"
    assert info.short_title == f"model2 [{expected[:10]}]"
    assert registry.titles()[2] == info.title
    assert registry.get(info.title) is info


def test_every_alias_resolves(layout: Layout) -> None:
    registry = layout.registry()
    info = registry.get("Model1.ckpt")
    registry.ensure_hash(info)
    sha = _sha(layout.big_ckpt)
    legacy = hashlib.sha256(layout.big_ckpt.read_bytes()[0x100000:0x110000]).hexdigest()[:8]

    assert set(info.aliases) == {
        f"Model1.ckpt [{sha[:10]}]",
        "Model1.ckpt",
        "Model1",
        str(layout.big_ckpt),
        sha[:10],
        sha,
        legacy,
        f"Model1.ckpt [{legacy}]",
        f"Model1 [{sha[:10]}]",
    }
    for alias in info.aliases:
        assert registry.get(alias) is info, alias


def test_nested_model_name_resolves(layout: Layout) -> None:
    registry = layout.registry()
    assert registry.get("sub_nested_deep").name == "sub/nested/deep.safetensors"
    assert registry.get("deep").name == "sub/nested/deep.safetensors"


def test_stale_hash_in_title_still_finds_the_file(layout: Layout) -> None:
    registry = layout.registry()
    registry.ensure_hash(registry.get("model2.safetensors"))
    assert registry.get("model2.safetensors [0123456789]").name == "model2.safetensors"
    assert registry.get("model10.safetensors [abcdef]").name == "model10.safetensors"


def test_substring_match_prefers_the_shortest_title(layout: Layout) -> None:
    registry = layout.registry()
    assert registry.get("nested/deep").name == "sub/nested/deep.safetensors"
    # "extra.safetensors" and "other.safetensors" (17 characters) beat "model2.safetensors" (18);
    # between equal lengths the earlier one in list order wins.
    assert registry.get(".safetensors").name == "extra.safetensors"
    assert registry.get("r.safetensors").name == "other.safetensors"


def test_unknown_name_raises_model_not_found_with_known_titles(layout: Layout) -> None:
    registry = layout.registry()
    with pytest.raises(ModelNotFound) as excinfo:
        registry.get("does-not-exist.safetensors")
    assert excinfo.value.kind == "checkpoint"
    assert excinfo.value.name == "does-not-exist.safetensors"
    for title in EXPECTED_NAMES:
        assert title in str(excinfo.value)
    with pytest.raises(ModelNotFound):
        registry.get("")
    assert registry.find("does-not-exist") is None


def test_vae_files_other_extensions_and_diffusers_internals_are_skipped(layout: Layout) -> None:
    names = {info.name for info in layout.registry().list()}
    assert "sub/model.vae.safetensors" not in names
    assert "sub/notes.txt" not in names
    assert not any("diffusion_pytorch_model" in name for name in names)


def test_diffusers_folder_is_one_unhashed_checkpoint(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = layout.registry()
    info = registry.get("diffusers-model")
    assert info.is_diffusers_dir and not info.is_safetensors
    assert info.filename == layout.sd_dir / "diffusers-model"
    assert info.name_for_extra == "diffusers-model"
    assert info.legacy_hash is None
    _forbid_hashing(monkeypatch)
    assert registry.ensure_hash(info) is None
    assert info.title == "diffusers-model"


def test_model_dir_that_is_a_diffusers_folder(tmp_path: Path) -> None:
    model_dir = tmp_path / "sd-turbo"
    model_dir.mkdir()
    (model_dir / "model_index.json").write_text("{}")
    registry = CheckpointRegistry([model_dir])
    registry.refresh()
    assert [info.name for info in registry.list()] == ["sd-turbo"]


def test_ckpt_inside_a_model_dir_is_listed_once_first(layout: Layout) -> None:
    registry = CheckpointRegistry([layout.sd_dir], [layout.sd_dir / "sub" / "nested" / "deep.safetensors"])
    registry.refresh()
    names = [info.name for info in registry.list()]
    assert names[0] == "sub/nested/deep.safetensors"
    assert names.count("sub/nested/deep.safetensors") == 1


def test_metadata_is_read_from_the_header(layout: Layout) -> None:
    registry = layout.registry()
    assert registry.get("model10.safetensors").metadata == {"format": "pt", "ss_tag_frequency": {"cat": 3}}
    assert registry.get("model2.safetensors").metadata == {}


def test_read_safetensors_metadata_rejects_other_files(layout: Layout) -> None:
    with pytest.raises(ValueError):
        read_safetensors_metadata(layout.big_ckpt)


def test_damaged_safetensors_is_listed_without_metadata(tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{nope")
    registry = CheckpointRegistry([tmp_path])
    registry.refresh()
    assert [(info.name, info.metadata) for info in registry.list()] == [("broken.safetensors", {})]


def test_legacy_hash_of_big_checkpoint(layout: Layout) -> None:
    info = layout.registry().get("Model1.ckpt")
    expected = hashlib.sha256(layout.big_ckpt.read_bytes()[0x100000:0x110000]).hexdigest()[:8]
    assert info.legacy_hash == expected
    assert info.legacy_hash != _sha(layout.big_ckpt)[:8]


def test_cached_hash_is_reused_without_reading_the_file(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    first = layout.registry()
    shorthash = first.ensure_hash(first.get("model2.safetensors"))

    _forbid_hashing(monkeypatch)
    second = layout.registry()
    info = second.get(f"model2.safetensors [{shorthash}]")
    assert info.shorthash == shorthash
    assert second.ensure_hash(info) == shorthash


def test_cache_is_invalidated_when_the_file_changes(layout: Layout) -> None:
    first = layout.registry()
    old = first.ensure_hash(first.get("model2.safetensors"))

    path = layout.sd_dir / "model2.safetensors"
    _safetensors(path, 42.0)
    stat = os.stat(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))

    second = layout.registry()
    info = second.get("model2.safetensors")
    assert info.shorthash is None
    new = second.ensure_hash(info)
    assert new == _sha(path)[:10]
    assert new != old


def test_hashing_disabled_leaves_titles_without_hash(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_hashing(monkeypatch)
    registry = layout.registry(hashing_enabled=False)
    info = registry.get("model2.safetensors")
    assert registry.ensure_hash(info) is None
    assert info.title == "model2.safetensors"
    assert registry.titles() == EXPECTED_NAMES


def test_hashing_disabled_still_uses_cached_hashes(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    # A1111's --no-hashing only stops computing; hashes already in the cache are still shown.
    first = layout.registry()
    shorthash = first.ensure_hash(first.get("model2.safetensors"))

    _forbid_hashing(monkeypatch)
    info = layout.registry(hashing_enabled=False).get("model2.safetensors")
    assert info.shorthash == shorthash


def test_hashing_without_a_cache(layout: Layout) -> None:
    registry = layout.registry(cache=False)
    info = registry.get("other.safetensors")
    assert registry.ensure_hash(info) == _sha(info.filename)[:10]
    assert not layout.cache_file.exists()


def test_add_file_outside_the_model_dirs(layout: Layout, tmp_path: Path) -> None:
    registry = layout.registry()
    path = _safetensors(tmp_path / "uploads" / "new.safetensors", 8.0)

    info = registry.add_file(path)
    assert info.name == "new.safetensors"
    assert registry.get("new") is info
    assert registry.add_file(path) is info
    assert registry.list()[-1] is info

    registry.refresh()
    assert "new.safetensors" in registry.titles()


def test_add_file_inside_a_model_dir_uses_the_relative_name(layout: Layout) -> None:
    registry = layout.registry()
    path = _safetensors(layout.sd_dir / "sub" / "fresh.safetensors", 9.0)
    assert registry.add_file(path).name == "sub/fresh.safetensors"


def test_add_missing_file_raises(layout: Layout, tmp_path: Path) -> None:
    registry = layout.registry()
    with pytest.raises(ModelNotFound):
        registry.add_file(tmp_path / "absent.safetensors")


def test_calculate_shorthash_on_a_record(layout: Layout) -> None:
    path = layout.ckpt_dir / "other.safetensors"
    info = CheckpointInfo.from_path(path, "other.safetensors")
    cache = HashCache(layout.cache_file)
    assert info.calculate_shorthash(cache) == _sha(path)[:10]
    assert cache.get("checkpoint", path) == _sha(path)


def test_natural_sort_key() -> None:
    names = ["b10", "B2", "a", "b1"]
    assert sorted(names, key=natural_sort_key) == ["a", "b1", "B2", "b10"]


def test_pt_checkpoints_are_listed_but_not_pt_vaes(tmp_path: Path) -> None:
    sd_dir = tmp_path / "models" / "Stable-diffusion"
    sd_dir.mkdir(parents=True)
    (sd_dir / "old-model.pt").write_bytes(b"x" * 100)
    (sd_dir / "old-model.vae.pt").write_bytes(b"y" * 100)
    registry = CheckpointRegistry([sd_dir])
    registry.refresh()
    assert [info.name for info in registry.list()] == ["old-model.pt"]
