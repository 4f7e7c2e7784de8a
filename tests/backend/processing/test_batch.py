"""img2img over a folder (the img2img tab's Batch): files, masks, seeds, output folder, size, limits."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from backend.errors import InvalidRequest
from backend.processing import StableDiffusionProcessingImg2Img
from backend.processing.batch import batch_images, mask_for, process_img2img_folder, scaled_size


def _p(**kw: object) -> StableDiffusionProcessingImg2Img:
    base: dict[str, object] = dict(prompt="a house", width=64, height=64, steps=2, seed=-1, sampler_name="Euler",
                                   denoising_strength=0.5, do_not_save_grid=True)
    base.update(kw)
    return StableDiffusionProcessingImg2Img(**base)  # type: ignore[arg-type]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.new("RGB", (64, 64), (200, 30, 30)).save(src / "a.png")
    Image.new("RGB", (96, 64), (30, 200, 30)).save(src / "sub" / "b.jpg")
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"not a png")
    return src


def test_files_masks_and_sizes(folder: Path, tmp_path: Path) -> None:
    assert [p.name for p in batch_images(folder)] == ["a.png", "broken.png", "b.jpg"]
    with pytest.raises(InvalidRequest, match="img2img_batch_input_dir"):
        batch_images(tmp_path / "missing")
    with pytest.raises(InvalidRequest, match="img2img_batch_input_dir"):
        batch_images("  ")
    masks = [tmp_path / "a.png", tmp_path / "c.png"]
    assert mask_for(Path("x/a.jpg"), masks) == masks[0] and mask_for(Path("b.png"), masks) is None
    assert mask_for(Path("anything.png"), masks[:1]) == masks[0]  # a single mask serves every image
    assert scaled_size(100, 70, 1.5) == (144, 104) and scaled_size(40, 40, 1.0) == (64, 64)


def test_every_image_with_one_seed_into_the_output_folder(app_ctx, folder: Path, tmp_path: Path) -> None:
    seen: list[tuple[int, int, str]] = []
    out = tmp_path / "out"
    processed = process_img2img_folder(_p(), app_ctx.processing_context(), folder, out, scale_by=1.0,
                                       on_image=lambda i, n, path: seen.append((i, n, path.name)))
    assert seen == [(1, 3, "a.png"), (3, 3, "b.jpg")]  # the broken file is skipped
    assert [im.size for im in processed.images] == [(64, 64), (96, 64)]  # "Resize by" uses each image's size
    assert len(set(processed.all_seeds)) == 1 and processed.all_seeds[0] != -1
    assert len(processed.infotexts) == 2 and "Denoising strength: 0.5" in processed.infotexts[1]
    # Straight into the output folder (no date sub-folder), as A1111 does.
    assert sorted(p.parent for p in processed.saved_paths) == [out, out]


def test_masks_by_name_original_names_and_the_results_limit(app_ctx, folder: Path, tmp_path: Path) -> None:
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (64, 64), 255).save(masks / "a.webp")
    Image.new("L", (64, 64), 255).save(masks / "zzz.png")
    app_ctx.options.set("img2img_batch_use_original_name", True)
    app_ctx.options.set("img2img_batch_show_results_limit", 0)
    processed = process_img2img_folder(_p(), app_ctx.processing_context(), folder, tmp_path / "out", masks)
    assert processed.images == []  # the limit hides results; the files are still written
    (saved,) = processed.saved_paths  # b has no mask of its name: skipped
    assert saved.name == "00000-a.png"  # the input's name (A1111 keeps the number prefix too)
    with Image.open(saved) as image:
        assert "Mask blur: 4" in image.info["parameters"]  # inpainted with a.webp


def test_nothing_to_do_is_reported(app_ctx, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    processed = process_img2img_folder(_p(), app_ctx.processing_context(), tmp_path / "empty")
    assert processed.images == [] and processed.comments == "No images were processed."
