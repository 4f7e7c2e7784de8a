"""Dataset preparation: checks, crops, splits, buckets, duplicates and caption edits on small generated folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from backend.errors import InvalidRequest
from backend.training import dataset


def picture(width: int, height: int, seed: int, spot: tuple[int, int] | None = None) -> Image.Image:
    """Random blocks (distinct per seed), optionally with a bright square at `spot` on a flat grey field."""
    if spot is not None:
        image = Image.new("RGB", (width, height), (128, 128, 128))
        x, y = spot
        ImageDraw.Draw(image).rectangle((x - 10, y - 10, x + 10, y + 10), fill=(255, 0, 0))
        return image
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return Image.fromarray(blocks).resize((width, height), Image.Resampling.NEAREST)


def make_folder(folder: Path, count: int, size: tuple[int, int] = (256, 256)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        picture(*size, seed=i).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"zk, blue eyes, tag{i % 3}")
    return folder


def test_scan_warns_about_few_small_duplicate_and_unreadable_files(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "in", 5, (100, 100))
    picture(100, 100, seed=0).resize((90, 90)).save(folder / "copy.jpg", quality=90)  # near-duplicate of img00
    (folder / "broken.png").write_bytes(b"not an image")
    report = dataset.scan(folder, 64)
    assert len(report.images) == 6 and [p.name for p in report.unreadable] == ["broken.png"]
    assert len(report.small) == 6  # 100 < 2 x 64
    assert [(a.name, b.name) for a, b, _ in report.duplicates] == [("copy.jpg", "img00.png")]  # name order
    text = " ".join(report.warnings)
    assert "only 6 images" in text and "smaller than twice" in text and "near-duplicate" in text
    assert "cannot be read" in text
    rows = {row[0]: row for row in report.rows()}
    assert "near-duplicate of copy.jpg" in rows["img00.png"][3] and rows["broken.png"][3] == "unreadable"
    assert rows["img01.png"][2] == "zk, blue eyes, tag1"


def test_enough_large_distinct_images_raise_no_warning(tmp_path: Path) -> None:
    report = dataset.scan(make_folder(tmp_path / "in", 15, (160, 160)), 64)
    assert report.warnings == []


def test_scan_names_bad_fields(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest) as bad:
        dataset.scan(tmp_path / "nope", 64)
    assert bad.value.field == "folder"
    with pytest.raises(InvalidRequest) as bad:
        dataset.scan(tmp_path, 30)
    assert bad.value.field == "resolution"


def test_centre_and_focal_crops(tmp_path: Path) -> None:
    wide = picture(300, 100, 0, spot=(260, 50))
    centre = dataset.fit(wide, 64, 64)
    focal = dataset.fit(wide, 64, 64, mode="focal")
    assert centre.size == focal.size == (64, 64)
    red = lambda image: int((np.asarray(image)[..., 0] > 200).sum())  # noqa: E731
    assert red(centre) == 0 and red(focal) > 50  # the focal crop keeps the salient square at the edge


def test_split_oversized_into_overlapping_squares() -> None:
    tiles = dataset.split_oversized(picture(400, 100, 0), threshold=1.5, overlap=0.2)
    assert len(tiles) == 5 and all(t.size == (100, 100) for t in tiles)
    assert dataset.split_oversized(picture(120, 100, 0)) and len(dataset.split_oversized(picture(120, 100, 0))) == 1


def test_buckets_follow_kohya_rules() -> None:
    buckets = dataset.make_buckets(512, 256, 1024)
    assert (512, 512) in buckets and (256, 1024) in buckets and (1024, 256) in buckets and (576, 448) in buckets
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in buckets)
    assert dataset.nearest_bucket(1600, 900, buckets) == (640, 384)  # 16:9 -> 1.67, the closest ratio
    assert dataset.make_buckets(64) == [(64, 64)]


def test_prepare_writes_crops_flips_buckets_and_edited_captions(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "in", 3, (300, 200))
    picture(400, 100, seed=9).save(source / "panorama.png")
    options = dataset.PrepareOptions(resolution=128, buckets=True, split=True, flip=True,
                                     remove_tags=("blue eyes",), trigger="zkchar", default_caption="panorama")
    result = dataset.prepare(source, tmp_path / "out", options)
    names = sorted(p.name for p in result.written)
    assert "img00.png" in names and "img00-flip.png" in names and "panorama-1.png" in names
    assert len(names) == 2 * (3 + 5)  # 3 images (3:2 is under the threshold) + 5 panorama tiles, each flipped
    with Image.open(tmp_path / "out" / "img00.png") as img:
        assert img.size == (128, 128)  # at 128px the buckets are 1:4, 1:3, 1:1, 3:1, 4:1; 3:2 is nearest 1:1
    assert set(result.bucket_counts) <= {f"{w}x{h}" for w, h in dataset.make_buckets(128)}
    assert (tmp_path / "out" / "img00.txt").read_text() == "zkchar, zk, tag0"
    assert (tmp_path / "out" / "panorama-1.txt").read_text() == "zkchar, panorama"
    assert result.tag_frequency["zkchar"] == 16 and "blue eyes" not in result.tag_frequency
    assert sum(result.bucket_counts.values()) == 16
    with pytest.raises(InvalidRequest) as bad:
        dataset.prepare(source, source, options)
    assert bad.value.field == "output"


def test_prepare_square_centre_crop_and_skip_duplicates(tmp_path: Path) -> None:
    source = make_folder(tmp_path / "in", 2, (300, 200))
    picture(300, 200, seed=0).save(source / "dupe.png")
    result = dataset.prepare(source, tmp_path / "out", dataset.PrepareOptions(resolution=64))
    assert sorted(p.name for p in result.written) == ["dupe.png", "img01.png"]  # the first in name order stays
    assert result.skipped == ["img00.png: near-duplicate"]
    with Image.open(result.written[0]) as img:
        assert img.size == (64, 64)


def test_tag_edits_and_frequencies(tmp_path: Path) -> None:
    assert dataset.edit_tags("a, b, c", remove=["B"], trigger="zk") == "zk, a, c"
    assert dataset.edit_tags("zk, a", trigger="zk") == "zk, a"
    assert dataset.edit_tags(" a ,, b ") == "a, b"
    assert dataset.tag_frequency(["a, b", "a, a, c"]) == {"a": 2, "b": 1, "c": 1}
    folder = make_folder(tmp_path / "in", 3)
    (folder / "img02.txt").unlink()
    counts = dataset.rewrite_captions(folder, remove=["tag0"], trigger="zk")
    assert counts["zk"] == 3 and counts["blue eyes"] == 2 and "tag0" not in counts
    assert (folder / "img02.txt").read_text() == "zk"
