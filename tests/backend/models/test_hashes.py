from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from backend.models import hashes
from backend.models.hashes import (
    HashCache,
    addnet_hash_safetensors,
    legacy_model_hash,
    sha256_file,
)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _forbid_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(path: Path) -> str:
        raise AssertionError(f"the file was read again: {path}")

    monkeypatch.setattr(hashes, "sha256_file", fail)


def test_sha256_file_matches_hashlib_across_chunks(tmp_path: Path) -> None:
    data = os.urandom(2 * 1024 * 1024 + 123)
    path = _write(tmp_path / "big.bin", data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_legacy_hash_reads_the_block_at_one_mebibyte(tmp_path: Path) -> None:
    data = os.urandom(0x100000 + 0x10000 + 5000)
    path = _write(tmp_path / "model.ckpt", data)
    expected = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert legacy_model_hash(path) == expected
    assert expected != hashlib.sha256(data).hexdigest()[:8]


def test_legacy_hash_of_small_file_hashes_an_empty_block(tmp_path: Path) -> None:
    path = _write(tmp_path / "small.ckpt", b"x" * 1000)
    assert legacy_model_hash(path) == hashlib.sha256(b"").hexdigest()[:8]


def test_legacy_hash_of_missing_file_is_nofile(tmp_path: Path) -> None:
    assert legacy_model_hash(tmp_path / "missing.ckpt") == "NOFILE"


def test_addnet_hash_skips_the_header(tmp_path: Path) -> None:
    tensors = {"w": np.arange(16, dtype=np.float32)}
    first = tmp_path / "a.safetensors"
    second = tmp_path / "b.safetensors"
    save_file(tensors, str(first), metadata={"ss_output_name": "a"})
    save_file(tensors, str(second), metadata={"ss_output_name": "a much longer name"})

    raw = first.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    assert addnet_hash_safetensors(first) == hashlib.sha256(raw[8 + header_len:]).hexdigest()
    # Metadata edits change the file hash but not the addnet hash.
    assert addnet_hash_safetensors(first) == addnet_hash_safetensors(second)
    assert sha256_file(first) != sha256_file(second)


def test_cache_computes_once_and_persists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(5000)
    model = _write(tmp_path / "model.safetensors", data)
    cache_file = tmp_path / "cache" / "hashes.json"

    assert HashCache(cache_file).get_or_compute("checkpoint", model) == hashlib.sha256(data).hexdigest()

    stored = json.loads(cache_file.read_text())
    entry = stored[HashCache.key("checkpoint", model)]
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert entry["size"] == len(data)
    assert entry["mtime"] == os.stat(model).st_mtime
    assert sorted(p.name for p in cache_file.parent.iterdir()) == ["hashes.json"]

    _forbid_hashing(monkeypatch)
    reloaded = HashCache(cache_file)
    assert reloaded.get("checkpoint", model) == hashlib.sha256(data).hexdigest()
    assert reloaded.get_or_compute("checkpoint", model) == hashlib.sha256(data).hexdigest()


def test_cache_is_invalidated_by_new_content(tmp_path: Path) -> None:
    model = _write(tmp_path / "model.safetensors", b"old contents")
    cache = HashCache(tmp_path / "hashes.json")
    cache.get_or_compute("checkpoint", model)

    model.write_bytes(b"new and longer contents")
    assert cache.get("checkpoint", model) is None
    assert cache.get_or_compute("checkpoint", model) == hashlib.sha256(b"new and longer contents").hexdigest()


def test_cache_is_invalidated_by_mtime_alone(tmp_path: Path) -> None:
    model = _write(tmp_path / "model.safetensors", b"aaaa")
    cache = HashCache(tmp_path / "hashes.json")
    cache.get_or_compute("checkpoint", model)

    # Same size, different bytes, and an mtime set back in time: "newer than" would miss it.
    model.write_bytes(b"bbbb")
    stat = os.stat(model)
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10_000_000_000))
    assert cache.get("checkpoint", model) is None
    assert cache.get_or_compute("checkpoint", model) == hashlib.sha256(b"bbbb").hexdigest()


def test_kinds_are_cached_separately(tmp_path: Path) -> None:
    model = tmp_path / "lora.safetensors"
    save_file({"w": np.ones(4, dtype=np.float32)}, str(model))
    cache = HashCache(tmp_path / "hashes.json")

    full = cache.get_or_compute("lora", model)
    addnet = cache.get_or_compute("lora-addnet", model, hasher=addnet_hash_safetensors)
    assert full == sha256_file(model)
    assert addnet == addnet_hash_safetensors(model)
    assert full != addnet


def test_unreadable_cache_file_is_replaced(tmp_path: Path) -> None:
    cache_file = _write(tmp_path / "hashes.json", b"{not json")
    model = _write(tmp_path / "model.ckpt", b"data")

    assert HashCache(cache_file).get_or_compute("checkpoint", model) == hashlib.sha256(b"data").hexdigest()
    assert HashCache(cache_file).get("checkpoint", model) == hashlib.sha256(b"data").hexdigest()


def test_missing_file_raises_and_get_returns_none(tmp_path: Path) -> None:
    cache = HashCache(tmp_path / "hashes.json")
    assert cache.get("checkpoint", tmp_path / "missing.ckpt") is None
    with pytest.raises(FileNotFoundError):
        cache.get_or_compute("checkpoint", tmp_path / "missing.ckpt")


def test_file_changed_while_hashing_is_not_cached(tmp_path: Path) -> None:
    model = _write(tmp_path / "model.ckpt", b"first")
    cache = HashCache(tmp_path / "hashes.json")

    def hasher_that_races_a_writer(path: Path) -> str:
        value = sha256_file(path)
        path.write_bytes(b"second, longer")
        return value

    cache.get_or_compute("checkpoint", model, hasher=hasher_that_races_a_writer)
    assert cache.get("checkpoint", model) is None
    assert not (tmp_path / "hashes.json").exists()


def test_concurrent_requests_hash_once(tmp_path: Path) -> None:
    model = _write(tmp_path / "model.ckpt", os.urandom(4096))
    cache = HashCache(tmp_path / "hashes.json")
    calls: list[Path] = []

    def slow_hasher(path: Path) -> str:
        calls.append(path)
        time.sleep(0.05)
        return sha256_file(path)

    results: list[str] = []

    def worker() -> None:
        results.append(cache.get_or_compute("checkpoint", model, hasher=slow_hasher))

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(calls) == 1
    assert results == [sha256_file(model)] * 6
