"""Tests for backend/postprocess/images.py: names, folders, metadata and grids (A1111 reference, section 11)."""

from __future__ import annotations

import datetime
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from backend.errors import InvalidRequest
from backend.postprocess.images import (
    DEFAULT_SAVE_OPTIONS,
    FilenameGenerator,
    image_grid,
    image_to_bytes,
    next_sequence_number,
    read_info_from_image,
    sanitize_filename_part,
    save_image,
)
from backend.postprocess.infotext import parse_infotext

INFOTEXT = (
    "a cat, (fluffy:1.2)\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 42, Size: 64x48"
)
UNICODE_INFOTEXT = "猫, 可愛い ✨\nNegative prompt: ぼやけ\nSteps: 20, Sampler: Euler a, Seed: 42"
FIXED_NOW = datetime.datetime(2024, 7, 27, 13, 45, 30, tzinfo=datetime.UTC)


@dataclass
class FakeProcessing:
    prompt: str = "a cat, (fluffy:1.2)"
    negative_prompt: str = "blurry"
    all_seeds: list[int] = field(default_factory=lambda: [42])
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 64
    height: int = 48
    styles: list[str] = field(default_factory=list)
    sampler_name: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    sd_model_hash: str | None = "6ce0161689"
    sd_model_name: str | None = "v1-5-pruned-emaonly"
    sd_vae_name: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    iteration: int = 0
    batch_index: int = 0
    job_timestamp: str = "20240727134530"
    clip_skip: int = 1
    denoising_strength: float | None = None
    user: str | None = None
    override_settings: dict = field(default_factory=dict)


def _image(
    width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 60), mode: str = "RGB"
) -> Image.Image:
    return Image.new(mode, (width, height), color if mode == "RGB" else (*color, 128))


def _opts(**overrides: object) -> dict[str, object]:
    # Exports are turned off unless a test wants them: they depend on file size.
    return {"export_for_4chan": False, **overrides}


def _fixed_clock() -> datetime.datetime:
    return FIXED_NOW


# --- sanitising and patterns ---


def test_sanitize_replaces_invalid_characters_and_trims():
    assert sanitize_filename_part('a#b<c>d:e"f/g\\h|i?j*k\nl\rm\tn') == "a_b_c_d_e_f_g_h_i_j_k_l_m_n"
    assert sanitize_filename_part("  lead and trail. .", replace_spaces=False) == "lead and trail"
    assert sanitize_filename_part("two words") == "two_words"
    assert sanitize_filename_part("two words", replace_spaces=False) == "two words"
    assert sanitize_filename_part("x" * 300) == "x" * 128
    assert sanitize_filename_part("x" * 300, max_length=10) == "x" * 10
    assert sanitize_filename_part(None) is None


def test_pattern_with_several_tags():
    p = FakeProcessing(sd_vae_name="vae-ft-mse-840000-ema-pruned.safetensors", clip_skip=2, user="bob")
    namegen = FilenameGenerator(p, 42, p.prompt, _image(), clock=_fixed_clock)
    pattern = (
        "[seed]-[steps]-[cfg]-[width]x[height]-[sampler]-[model_hash]-[model_name]"
        "-[clip_skip]-[user]-[vae_filename]-[job_timestamp]-[none]"
    )
    assert (
        namegen.apply(pattern)
        == "42-20-7.0-64x48-DPM++ 2M-6ce0161689-v1-5-pruned-emaonly-2-bob-vae-ft-mse-840000-ema-pruned-20240727134530-"
    )


def test_prompt_tags_are_sanitised():
    prompt = 'a "cat": on/a mat? <yes>, photo, of, many, many, words, here, really'
    namegen = FilenameGenerator(FakeProcessing(prompt=prompt), 1, prompt, _image())
    assert namegen.apply("[prompt]") == "a__cat___on_a_mat___yes_,_photo,_of,_many,_many,_words,_here,_really"
    assert namegen.apply("[prompt_spaces]") == "a _cat__ on_a mat_ _yes_, photo, of, many, many, words, here, really"
    assert namegen.apply("[prompt_words]") == "a cat on a mat yes photo of"
    assert FilenameGenerator(None, 1, "", None).apply("[prompt_words]") == "empty"


def test_date_and_datetime_tags():
    namegen = FilenameGenerator(FakeProcessing(), 1, "p", clock=_fixed_clock)
    assert namegen.apply("[date]") == "2024-07-27"
    assert namegen.apply("[datetime]") == FIXED_NOW.astimezone(None).strftime("%Y%m%d%H%M%S")
    assert namegen.apply("[datetime<%Y/%m/%d %H:%M><UTC>]") == "2024_07_27 13_45"
    assert namegen.apply("[DATETIME<%H><Asia/Tokyo>]") == "22"
    assert namegen.apply("[datetime<%H><No/Such_Zone>]") == FIXED_NOW.astimezone(None).strftime("%H")


def test_hash_tags():
    p = FakeProcessing()
    image = _image()
    namegen = FilenameGenerator(p, 1, p.prompt, image)
    sha = lambda text: hashlib.sha256(text.encode()).hexdigest()  # noqa: E731
    assert namegen.apply("[prompt_hash]") == sha(p.prompt)[:8]
    assert namegen.apply("[prompt_hash<4>]") == sha(p.prompt)[:4]
    assert namegen.apply("[negative_prompt_hash]") == sha("blurry")[:8]
    assert namegen.apply("[full_prompt_hash<12>]") == sha(f"{p.prompt} blurry")[:12]
    assert namegen.apply("[image_hash<6>]") == hashlib.sha256(image.tobytes()).hexdigest()[:6]
    assert len(namegen.apply("[image_hash]")) == 64


def test_tags_that_vanish_with_their_leading_text():
    single = FakeProcessing()
    namegen = FilenameGenerator(single, 7, single.prompt)
    assert namegen.apply("x[seed]-[seed_last]-[batch_number]-[generation_number]-[denoising]") == "x7"

    batch = FakeProcessing(
        all_seeds=[10, 11, 12, 13], batch_size=2, n_iter=2, iteration=1, batch_index=1, denoising_strength=0.5
    )
    namegen = FilenameGenerator(batch, 13, batch.prompt)
    assert (
        namegen.apply("[seed_first]-[seed_last]-[batch_number]-[batch_size]-[generation_number]-[denoising]")
        == "10-13-2-2-4-0.5"
    )
    assert (
        FilenameGenerator(batch, 13, batch.prompt, for_zip=True).apply("[seed]-[batch_number]-[generation_number]")
        == "13"
    )


def test_hasprompt_styles_and_prompt_no_styles():
    p = FakeProcessing(prompt="a red cat, masterpiece, best quality", styles=["Quality", "None"])
    namegen = FilenameGenerator(p, 1, p.prompt, style_prompts=["{prompt}, masterpiece, best quality"])
    assert namegen.apply("[hasprompt<cat|nocat><dog|nodog><bird>]") == "catnodog"
    assert namegen.apply("[styles]") == "Quality"
    assert FilenameGenerator(FakeProcessing(), 1, "p").apply("[styles]") == "None"
    assert namegen.apply("[prompt_no_styles]") == "a red cat"


def test_scheduler_tags():
    p = FakeProcessing(sampler_name="DPM++ 2M", scheduler="Automatic")
    lookup = {"DPM++ 2M": "karras"}.get
    assert (
        FilenameGenerator(p, 1, "p", default_scheduler=lookup).apply("[sampler_scheduler]_[scheduler]")
        == "DPM++ 2M Karras_Karras"
    )
    assert FilenameGenerator(p, 1, "p").apply("[scheduler]") == "Automatic"
    p.scheduler = "SGM Uniform"
    assert FilenameGenerator(p, 1, "p").apply("[scheduler]") == "Sgm uniform"


def test_unknown_and_failing_tags_stay_as_written():
    namegen = FilenameGenerator(None, None, None)
    assert namegen.apply("[nope]-[steps]-[seed]") == "[nope]-[steps]-"
    assert FilenameGenerator(FakeProcessing(), 1, "p").apply("[steps<3>]") == "[steps]"
    assert namegen.apply("plain") == "plain"


def test_vae_filename_variants():
    def vae(name: str | None) -> str:
        return FilenameGenerator(FakeProcessing(sd_vae_name=name), 1, "p").apply("[vae_filename]")

    assert vae(None) == "NoneType"
    assert vae("kl-f8.vae.pt") == "kl-f8"
    assert vae(".hidden.safetensors") == "hidden"


# --- sequence numbers and saving ---


def test_next_sequence_number(tmp_path: Path):
    assert next_sequence_number(tmp_path) == 0
    for name in ("00003-1.png", "00010-5-x.jpg", "notes.txt", "grid-0004.png"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "00012-folder").mkdir()
    assert next_sequence_number(tmp_path) == 13
    assert next_sequence_number(tmp_path, "grid") == 5


def test_sequence_numbering_across_calls(tmp_path: Path):
    opts = _opts(save_to_dirs=False, samples_filename_pattern="[seed]")
    first, _ = save_image(_image(), tmp_path, "", seed=1234567890, prompt="p", info=INFOTEXT, opts=opts)
    second, _ = save_image(_image(), tmp_path, "", seed=1234567891, prompt="p", info=INFOTEXT, opts=opts)
    assert (first.name, second.name) == ("00000-1234567890.png", "00001-1234567891.png")
    (tmp_path / "00041-other.png").write_bytes(b"")
    third, _ = save_image(_image(), tmp_path, "", seed=5, prompt="p", opts=opts)
    assert third.name == "00042-5.png"
    assert not list(tmp_path.glob("*.tmp"))


def test_default_names_use_a_date_subfolder(tmp_path: Path):
    before = datetime.date.today().isoformat()
    path, text_path = save_image(_image(), tmp_path, "", seed=42, prompt="a cat", info=INFOTEXT, opts=_opts())
    after = datetime.date.today().isoformat()
    assert path.parent.parent == tmp_path
    assert path.parent.name in {before, after}
    assert path.name == "00000-42.png"
    assert text_path is None


def test_without_subfolders_the_prompt_is_in_the_name(tmp_path: Path):
    path, _ = save_image(_image(), tmp_path, "", seed=42, prompt="a cat: fluffy", opts=_opts(save_to_dirs=False))
    assert path == tmp_path / "00000-42-a cat_ fluffy.png"


def test_subfolder_pattern_and_prompt_words_fallback(tmp_path: Path):
    p = FakeProcessing()
    path, _ = save_image(
        _image(),
        tmp_path,
        "",
        seed=1,
        prompt=p.prompt,
        p=p,
        opts=_opts(directories_filename_pattern="[model_name]/[steps]"),
    )
    assert path.parent == tmp_path / "v1-5-pruned-emaonly" / "20"
    path, _ = save_image(
        _image(), tmp_path, "", seed=1, prompt="one two three", opts=_opts(directories_filename_pattern="")
    )
    assert path.parent == tmp_path / "one two three"


def test_grid_names(tmp_path: Path):
    grid = image_grid([_image()] * 4)
    first, _ = save_image(grid, tmp_path, "grid", seed=1, prompt="p", grid=True, opts=_opts(grid_save_to_dirs=False))
    second, _ = save_image(grid, tmp_path, "grid", seed=2, prompt="p", grid=True, opts=_opts(grid_save_to_dirs=False))
    assert (first.name, second.name) == ("grid-0000.png", "grid-0001.png")
    extended, _ = save_image(
        grid,
        tmp_path,
        "grid",
        seed=3,
        prompt="p",
        grid=True,
        opts=_opts(grid_save_to_dirs=False, grid_extended_filename=True),
    )
    assert extended.name == "grid-0002-3.png"


def test_filename_pattern_option_override_and_suffix(tmp_path: Path):
    p = FakeProcessing(override_settings={"samples_filename_pattern": "[steps]-[sampler]"})
    path, _ = save_image(
        _image(), tmp_path, "", seed=1, prompt="p", p=p, suffix="-before-highres-fix", opts=_opts(save_to_dirs=False)
    )
    assert path.name == "00000-20-DPM++ 2M-before-highres-fix.png"


def test_add_number_suffix_when_numbering_is_off(tmp_path: Path):
    opts = _opts(
        save_to_dirs=False,
        save_images_add_number=False,
        samples_filename_pattern="[seed]",
        save_images_replace_action="Add number suffix",
    )
    first, _ = save_image(_image(), tmp_path, "", seed=9, prompt="p", opts=opts)
    second, _ = save_image(_image(), tmp_path, "", seed=9, prompt="p", opts=opts)
    assert (first.name, second.name) == ("9.png", "9-1.png")
    replaced, _ = save_image(
        _image(color=(0, 0, 255)),
        tmp_path,
        "",
        seed=9,
        prompt="p",
        opts={**opts, "save_images_replace_action": "Replace"},
    )
    assert replaced == first
    assert Image.open(first).getpixel((0, 0)) == (0, 0, 255)


def test_forced_filename(tmp_path: Path):
    path, _ = save_image(
        _image(), tmp_path, "", seed=1, prompt="p", forced_filename="exact", opts=_opts(save_to_dirs=False)
    )
    assert path == tmp_path / "exact.png"


def test_png_parameters_chunk(tmp_path: Path):
    path, _ = save_image(_image(), tmp_path, "", seed=42, prompt="a cat", info=INFOTEXT, opts=_opts())
    with Image.open(path) as image:
        assert image.info["parameters"] == INFOTEXT
        geninfo, items = read_info_from_image(image)
    assert geninfo == INFOTEXT
    assert "parameters" not in items
    assert b"tEXtparameters" in path.read_bytes()
    assert parse_infotext(geninfo)["Seed"] == "42"


def test_png_non_latin_text_uses_itxt(tmp_path: Path):
    path, _ = save_image(_image(), tmp_path, "", seed=1, prompt="p", info=UNICODE_INFOTEXT, opts=_opts())
    assert b"iTXtparameters" in path.read_bytes()
    with Image.open(path) as image:
        assert read_info_from_image(image)[0] == UNICODE_INFOTEXT


@pytest.mark.parametrize("extension", ["jpg", "jpeg", "webp"])
def test_exif_user_comment_round_trip(tmp_path: Path, extension: str):
    path, _ = save_image(
        _image(mode="RGBA"), tmp_path, "", seed=1, prompt="p", extension=extension, info=UNICODE_INFOTEXT, opts=_opts()
    )
    assert path.suffix == f".{extension}"
    with Image.open(path) as image:
        assert image.format == ("WEBP" if extension == "webp" else "JPEG")
        assert image.mode == "RGB"
        geninfo, items = read_info_from_image(image)
    assert geninfo == UNICODE_INFOTEXT
    assert "exif" not in items
    # The UserComment is piexif's "unicode" encoding: an 8-byte UNICODE header and UTF-16.
    assert b"UNICODE\x00" in path.read_bytes()


def test_webp_lossless_option(tmp_path: Path):
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    path, _ = save_image(
        noise, tmp_path, "", seed=1, prompt="p", extension="webp", info="x", opts=_opts(webp_lossless=True)
    )
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(noise))


def test_sixteen_bit_image_as_jpeg(tmp_path: Path):
    image = Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16))
    path, _ = save_image(image, tmp_path, "", seed=1, prompt="p", extension="jpg", info="x", opts=_opts())
    with Image.open(path) as saved:
        assert saved.mode == "L"
        assert saved.getpixel((0, 0)) >= 254


def test_too_wide_webp_falls_back_to_png(tmp_path: Path):
    path, _ = save_image(Image.new("RGB", (16384, 1)), tmp_path, "", seed=1, prompt="p", extension="webp", opts=_opts())
    assert path.suffix == ".png"


def test_save_txt(tmp_path: Path):
    path, text_path = save_image(_image(), tmp_path, "", seed=42, prompt="p", info=INFOTEXT, opts=_opts(save_txt=True))
    assert text_path == path.with_suffix(".txt")
    assert text_path.read_text(encoding="utf8") == INFOTEXT + "\n"
    _, no_info = save_image(_image(), tmp_path, "", seed=43, prompt="p", opts=_opts(save_txt=True))
    assert no_info is None


def test_enable_pnginfo_off_writes_no_metadata(tmp_path: Path):
    opts = _opts(enable_pnginfo=False)
    png, _ = save_image(_image(), tmp_path, "", seed=1, prompt="p", info=INFOTEXT, opts=opts)
    jpg, _ = save_image(_image(), tmp_path, "", seed=2, prompt="p", extension="jpg", info=INFOTEXT, opts=opts)
    for path in (png, jpg):
        with Image.open(path) as image:
            assert read_info_from_image(image)[0] is None


def test_extras_section_keeps_the_original_parameters(tmp_path: Path):
    path, _ = save_image(
        _image(),
        tmp_path,
        "",
        seed=1,
        prompt="p",
        info="Postprocess upscale by: 2, Postprocess upscaler: Lanczos",
        pnginfo_section_name="extras",
        existing_info={"parameters": INFOTEXT},
        opts=_opts(save_to_dirs=False),
    )
    with Image.open(path) as image:
        geninfo, items = read_info_from_image(image)
    assert geninfo == INFOTEXT
    assert items["extras"] == "Postprocess upscale by: 2, Postprocess upscaler: Lanczos"


def test_export_for_4chan_adds_a_jpeg_copy(tmp_path: Path):
    opts = {"save_to_dirs": False, "export_for_4chan": True, "img_downscale_threshold": 0}
    path, _ = save_image(_image(), tmp_path, "", seed=1, prompt="p", info=INFOTEXT, opts=opts)
    copy = path.with_suffix(".jpg")
    with Image.open(copy) as image:
        assert read_info_from_image(image)[0] == INFOTEXT
    save_image(_image(), tmp_path, "", seed=2, prompt="p", info=INFOTEXT, opts={**opts, "img_downscale_threshold": 4.0})
    assert sorted(item.name for item in tmp_path.iterdir()) == ["00000-1-p.jpg", "00000-1-p.png", "00001-2-p.png"]


def test_export_for_4chan_downscales_oversized_images(tmp_path: Path):
    opts = {"save_to_dirs": False, "export_for_4chan": True, "target_side_length": 32}
    path, _ = save_image(_image(64, 48), tmp_path, "", seed=1, prompt="p", opts=opts)
    with Image.open(path.with_suffix(".jpg")) as image:
        assert image.size == (32, 24)


def test_unsupported_extension_is_rejected(tmp_path: Path):
    with pytest.raises(InvalidRequest):
        save_image(_image(), tmp_path, "", seed=1, prompt="p", extension="nope", opts=_opts())


def test_default_options_are_a1111s():
    assert DEFAULT_SAVE_OPTIONS["samples_format"] == "png"
    assert DEFAULT_SAVE_OPTIONS["directories_filename_pattern"] == "[date]"
    assert DEFAULT_SAVE_OPTIONS["jpeg_quality"] == 80
    assert DEFAULT_SAVE_OPTIONS["n_rows"] == -1
    with pytest.raises(TypeError):
        DEFAULT_SAVE_OPTIONS["jpeg_quality"] = 1  # type: ignore[index]


# --- bytes for the API, reading info ---


def test_image_to_bytes_png_keeps_text_items():
    image = _image()
    image.info["extras"] = "Postprocess upscale by: 2"
    image.info["parameters"] = "old"
    data = image_to_bytes(image, "png", INFOTEXT, {})
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == "PNG"
        assert decoded.info["parameters"] == INFOTEXT
        assert decoded.info["extras"] == "Postprocess upscale by: 2"


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpg", "JPEG"), ("JPEG", "JPEG"), ("webp", "WEBP")])
def test_image_to_bytes_exif(fmt: str, pil_format: str):
    data = image_to_bytes(_image(mode="RGBA"), fmt, UNICODE_INFOTEXT, {"jpeg_quality": 95})
    with Image.open(io.BytesIO(data)) as decoded:
        assert decoded.format == pil_format
        assert read_info_from_image(decoded)[0] == UNICODE_INFOTEXT


def test_image_to_bytes_without_infotext_and_bad_format():
    with Image.open(io.BytesIO(image_to_bytes(_image(), "png", None, {}))) as decoded:
        assert read_info_from_image(decoded)[0] is None
    with pytest.raises(InvalidRequest) as error:
        image_to_bytes(_image(), "tiff", INFOTEXT, {})
    assert error.value.field == "samples_format"


def test_read_info_novelai_png():
    comment = json.dumps({"steps": 28, "sampler": "k_euler", "scale": 11, "seed": 7, "uc": "lowres"})
    pnginfo = PngInfo()
    for key, value in {"Software": "NovelAI", "Description": "1girl", "Comment": comment}.items():
        pnginfo.add_text(key, value)
    buffer = io.BytesIO()
    _image(512, 768).save(buffer, format="PNG", pnginfo=pnginfo)
    with Image.open(buffer) as image:
        geninfo, items = read_info_from_image(image)
    assert geninfo == (
        "1girl\nNegative prompt: lowres\n"
        "Steps: 28, Sampler: Euler, CFG scale: 11, Seed: 7, Size: 512x768, Clip skip: 2, ENSD: 31337"
    )
    assert items["Software"] == "NovelAI"


def test_read_info_gif_comment_and_plain_image():
    buffer = io.BytesIO()
    _image().save(buffer, format="GIF", comment=INFOTEXT)
    with Image.open(buffer) as image:
        assert read_info_from_image(image)[0] == INFOTEXT
    assert read_info_from_image(_image()) == (None, {})


def test_read_info_ignores_broken_exif():
    image = _image()
    image.info["exif"] = b"\x00garbage"
    image.info["parameters"] = INFOTEXT
    assert read_info_from_image(image) == (INFOTEXT, {})


# --- grids ---


@pytest.mark.parametrize(
    ("count", "kwargs", "rows", "cols"),
    [
        (1, {}, 1, 1),
        (2, {}, 1, 2),
        (3, {}, 2, 2),
        (4, {}, 2, 2),
        (5, {}, 2, 3),
        (6, {}, 2, 3),
        (7, {}, 3, 3),
        (5, {"prevent_empty_spots": True}, 1, 5),
        (6, {"prevent_empty_spots": True}, 2, 3),
        (8, {"prevent_empty_spots": True}, 2, 4),
        (6, {"n_rows": 0, "batch_size": 3}, 3, 2),
        (6, {"n_rows": 3}, 3, 2),
        (2, {"n_rows": 4}, 2, 1),
        (6, {"rows": 1, "n_rows": 3}, 1, 6),
    ],
)
def test_grid_layout(count: int, kwargs: dict, rows: int, cols: int):
    grid = image_grid([_image(10, 20)] * count, **kwargs)
    assert grid.size == (cols * 10, rows * 20)


def test_grid_places_images_row_by_row_and_centres_smaller_ones():
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    images = [_image(10, 10, colors[0]), _image(10, 10, colors[1]), _image(4, 6, colors[2])]
    grid = image_grid(images)
    assert grid.size == (20, 20)
    assert grid.getpixel((5, 5)) == colors[0]
    assert grid.getpixel((15, 5)) == colors[1]
    assert grid.getpixel((5, 15)) == colors[2]  # centred in the third cell
    assert grid.getpixel((0, 10)) == (255, 255, 255)  # background around it
    assert grid.getpixel((15, 15)) == (255, 255, 255)  # the empty spot


def test_grid_needs_images():
    with pytest.raises(InvalidRequest):
        image_grid([])
