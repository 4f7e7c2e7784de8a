"""The Lora page's data: cards, user metadata, training summary, thumbnails, previews, 2,000 files."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from PIL import Image

from backend.errors import AccessDenied, InvalidRequest, ModelNotFound
from backend.models.hashes import HashCache
from backend.networks import cards
from backend.networks.registry import NetworkRegistry
from tests.backend.networks.network_files import kohya_metadata, random, save_network


def small(path: Path, metadata: dict[str, str] | None = None) -> Path:
    return save_network(path, {"lora_unet_conv_in.lora_down.weight": random(2, 32, seed=1)}, metadata)


def by_name(registry: NetworkRegistry, **options: object) -> dict[str, cards.Card]:
    return {card.name: card for card in cards.list_cards(registry, **options)}  # type: ignore[arg-type]


def test_cards_show_name_folder_preview_description_family_and_prompt_text(tmp_path: Path) -> None:
    lora = tmp_path / "Lora"
    small(lora / "detail.safetensors", kohya_metadata(ss_output_name="detail_tweaker", ss_base_model_version="sd_v1"))
    (lora / "detail.png").write_bytes(b"png")
    small(lora / "styles" / "ink.safetensors")
    (lora / "styles" / "ink.txt").write_text("Black ink\n")
    (lora / "styles" / "ink.preview.webp").write_bytes(b"webp")
    small(lora / "styles" / "old" / "hero.safetensors", kohya_metadata(ss_sd_model_name="sd_xl_base_1.0.safetensors"))
    (lora / "styles" / "old" / "hero.json").write_text(json.dumps({
        "description": "from json", "activation text": "hero, red cape", "preferred weight": 0.7,
        "negative text": "blurry", "notes": "n"}))
    registry = NetworkRegistry([lora])
    listed = by_name(registry)
    detail, ink, hero = listed["detail"], listed["ink"], listed["hero"]

    assert (detail.alias, detail.prompt_name, detail.folder, detail.relative_path) == (
        "detail_tweaker", "detail_tweaker", "Lora", "detail.safetensors")
    assert detail.preview == lora / "detail.png" and detail.preview_mtime > 0
    assert detail.thumb_url.startswith("./sd_extra_networks/thumb?filename=") and "&mtime=" in detail.thumb_url
    assert detail.family == "sd1" and detail.family_title == "SD 1.x"
    assert detail.prompt == "<lora:detail_tweaker:1>" and detail.negative_prompt == ""
    assert detail.mtime == (lora / "detail.safetensors").stat().st_mtime
    assert detail.shorthash is None  # listing never hashes

    assert ink.folder == "Lora/styles" and ink.relative_path == "styles/ink.safetensors"
    assert ink.preview == lora / "styles" / "ink.preview.webp" and ink.description == "Black ink"
    assert ink.family == "unknown" and ink.family_title == "Unknown"  # no metadata, no telling shapes

    assert hero.folder == "Lora/styles/old" and hero.family == "sdxl"  # from the base checkpoint's name
    assert hero.description == "from json" and hero.preview is None and hero.thumb_url is None
    assert hero.prompt == "<lora:hero:0.7> hero, red cape" and hero.negative_prompt == "(blurry:1)"
    assert (hero.preferred_weight, hero.activation_text, hero.negative_text) == (0.7, "hero, red cape", "blurry")
    assert hero.search_terms.split("\n") == ["hero", "styles/old/hero.safetensors"]

    # The option extra_networks_default_multiplier and lora_preferred_name.
    other = by_name(registry, default_multiplier=0.5, preferred_name="Filename")
    assert other["detail"].prompt == "<lora:detail:0.5>" and other["hero"].prompt.startswith("<lora:hero:0.7>")


def test_known_hashes_are_shown_and_searchable(tmp_path: Path) -> None:
    small(tmp_path / "net.safetensors")
    cache = HashCache(tmp_path / "hashes.json")
    registry = NetworkRegistry([tmp_path], cache)
    digest = registry.ensure_hash(registry.find("net"))
    card = by_name(NetworkRegistry([tmp_path], cache))["net"]  # a new listing: the hash comes from the cache
    assert card.shorthash == digest[:12] and digest in card.search_terms


def test_family_from_the_base_checkpoint_name(tmp_path: Path) -> None:
    names = {"xl": "sd_xl_base_1.0.safetensors", "pony": "ponyDiffusionV6XL_v6.safetensors",
             "v2": "v2-1_768-ema-pruned.ckpt", "v15": "runwayml/stable-diffusion-v1-5", "other": "mymodel.ckpt"}
    for stem, model in names.items():
        small(tmp_path / f"{stem}.safetensors", kohya_metadata(ss_sd_model_name=model))
    small(tmp_path / "declared.safetensors", kohya_metadata(ss_sd_model_name="sd_xl_base_1.0", ss_v2="True"))
    families = {card.name: card.family for card in cards.list_cards(NetworkRegistry([tmp_path]))}
    # kohya metadata with nothing else to go on is SD1 (A1111's rule); the declared version wins over the name.
    assert families == {"xl": "sdxl", "pony": "sdxl", "v2": "sd2", "v15": "sd1", "other": "sd1", "declared": "sd2"}
    assert NetworkRegistry([tmp_path]).find("xl").declared_family is None  # a name never refuses a network


def test_user_metadata_round_trip(tmp_path: Path) -> None:
    small(tmp_path / "card.safetensors")
    (tmp_path / "card.txt").write_text("from txt")
    (tmp_path / "card.json").write_text(json.dumps({"my key": "kept"}))
    registry = NetworkRegistry([tmp_path])
    info = registry.find("card")
    assert cards.user_metadata_fields(info) == {
        "description": "from txt", "sd version": "Unknown", "activation text": "", "preferred weight": 0.0,
        "negative text": "", "notes": ""}

    cards.update_user_metadata(registry, info, description="mine", sd_version="SDXL", activation_text="trigger word",
                               preferred_weight=0.8, negative_text="lowres", notes="trained on 40 images")
    written = json.loads((tmp_path / "card.json").read_text())
    assert written == {"my key": "kept", "description": "mine", "sd version": "SDXL", "activation text": "trigger word",
                       "preferred weight": 0.8, "negative text": "lowres", "notes": "trained on 40 images"}
    card = by_name(registry)["card"]
    assert (card.description, card.family, card.prompt, card.negative_prompt) == (
        "mine", "sdxl", "<lora:card:0.8> trigger word", "(lowres:1)")
    fresh = NetworkRegistry([tmp_path])  # read back from disk
    assert cards.user_metadata_fields(fresh.find("card"))["notes"] == "trained on 40 images"

    with pytest.raises(InvalidRequest, match="sd version"):
        cards.update_user_metadata(registry, info, description="", sd_version="SD3", activation_text="",
                                   preferred_weight=0, negative_text="", notes="")
    with pytest.raises(InvalidRequest, match="preferred weight"):
        cards.update_user_metadata(registry, info, description="", sd_version="SD1", activation_text="",
                                   preferred_weight=math.nan, negative_text="", notes="")
    assert json.loads((tmp_path / "card.json").read_text()) == written  # refused edits write nothing


def test_training_summary(tmp_path: Path) -> None:
    metadata = {
        "ss_output_name": "detail", "ss_sd_model_name": "v1-5-pruned.ckpt", "ss_base_model_version": "sd_v1",
        "ss_network_module": "networks.lora", "ss_network_dim": "16", "ss_network_alpha": "8.0",
        "ss_resolution": "(512, 768)", "ss_clip_skip": "2", "ss_num_train_images": "120", "ss_num_epochs": "10",
        "ss_learning_rate": "0.0001", "ss_training_started_at": "1700000000.5", "ss_training_finished_at": "None",
        "ss_dataset_dirs": {"10_hero": {"n_repeats": 10, "img_count": 12}},
        "ss_tag_frequency": {"a": {"1girl": 5, " smile": 2, "red cape": 1}, "b": {"1girl": 3, "outdoors": 2}},
    }
    summary = cards.training_summary(metadata, top=3)
    rows = dict(summary.rows)
    assert rows["Base model"] == "v1-5-pruned.ckpt" and rows["Base model version"] == "sd_v1"
    assert rows["Network dim / alpha"] == "16 / 8.0" and rows["Resolution"] == "512x768"
    assert rows["Clip skip"] == "2" and rows["Training images"] == "120" and rows["Epochs"] == "10"
    assert rows["Training started"] == "2023-11-14 22:13 UTC" and "Training finished" not in rows
    assert rows["Dataset folders"] == "10_hero (12 images x 10)"
    assert summary.top_tags == [("1girl", 8), ("outdoors", 2), ("smile", 2)] and summary.tag_count == 4
    assert cards.training_summary({}) == cards.TrainingSummary([], [], 0)


def test_thumbnails_only_for_images_inside_the_folders(tmp_path: Path) -> None:
    lora, models, elsewhere = tmp_path / "Lora", tmp_path / "Stable-diffusion", tmp_path / "elsewhere"
    small(lora / "sub" / "card.safetensors")
    preview = lora / "sub" / "card.png"
    preview.write_bytes(b"png")
    (lora / "secret.json").write_text("{}")
    models.mkdir()
    (models / "model.jpg").write_bytes(b"jpg")
    elsewhere.mkdir()
    outside = elsewhere / "outside.png"
    outside.write_bytes(b"png")
    (lora / "link.png").symlink_to(outside)
    # A linked folder of networks: its cards' previews are served, nothing else in it.
    small(elsewhere / "linked.safetensors")
    (elsewhere / "linked.png").write_bytes(b"png")
    (lora / "shared").symlink_to(elsewhere, target_is_directory=True)
    registry = NetworkRegistry([lora])
    roots = [lora, models]

    def thumb(name: str | Path) -> Path:
        return cards.thumbnail_file(str(name), roots, registry)

    assert thumb(preview) == preview
    assert thumb(lora / "sub" / ".." / "sub" / "card.png") == preview
    assert thumb(models / "model.jpg") == models / "model.jpg"
    assert thumb(lora / "shared" / "linked.png") == elsewhere / "linked.png"
    for refused in (outside, lora / ".." / "elsewhere" / "outside.png", lora / "link.png", lora / "secret.json",
                    lora / "sub" / "card.safetensors", lora / "shared" / "outside.png", "/etc/passwd"):
        with pytest.raises(AccessDenied):
            thumb(refused)
    with pytest.raises(ModelNotFound):
        thumb(lora / "nothing.png")
    with pytest.raises(InvalidRequest, match="filename"):
        thumb("")


def test_replace_preview_writes_the_file_the_card_shows(tmp_path: Path) -> None:
    small(tmp_path / "plain.safetensors")
    small(tmp_path / "old.safetensors")
    (tmp_path / "old.preview.png").write_bytes(b"not an image yet")
    small(tmp_path / "moving.safetensors")
    Image.new("RGB", (4, 4)).save(tmp_path / "moving.gif")
    small(tmp_path / "photo.safetensors")
    (tmp_path / "photo.jpg").write_bytes(b"jpg")
    registry = NetworkRegistry([tmp_path])
    picture = Image.new("RGBA", (8, 8), (255, 0, 0, 128))

    assert registry.replace_preview(registry.find("plain"), picture) == tmp_path / "plain.png"
    assert registry.replace_preview(registry.find("old"), picture) == tmp_path / "old.preview.png"  # in place
    assert registry.replace_preview(registry.find("moving"), picture) == tmp_path / "moving.png"  # beats the gif
    assert registry.replace_preview(registry.find("photo"), picture) == tmp_path / "photo.jpg"  # RGBA -> JPEG
    registry.refresh()
    listed = by_name(registry)
    assert {name: card.preview.name for name, card in listed.items()} == {
        "plain": "plain.png", "old": "old.preview.png", "moving": "moving.png", "photo": "photo.jpg"}
    with Image.open(tmp_path / "photo.jpg") as saved:
        assert saved.format == "JPEG" and saved.size == (8, 8)
    with Image.open(tmp_path / "old.preview.png") as saved:
        assert saved.format == "PNG"


def test_card_markup_is_escaped_and_lazy(tmp_path: Path) -> None:
    small(tmp_path / 'a "quoted" & <odd> name.safetensors')
    (tmp_path / 'a "quoted" & <odd> name.png').write_bytes(b"png")
    (tmp_path / 'a "quoted" & <odd> name.json').write_text(json.dumps({"activation text": "<b>x</b>"}))
    card = cards.list_cards(NetworkRegistry([tmp_path]))[0]
    markup = cards.card_html(card)
    assert "<odd>" not in markup and "<b>" not in markup
    assert 'data-name="a &quot;quoted&quot; &amp; &lt;odd&gt; name"' in markup
    assert 'data-prompt="&lt;lora:a &quot;quoted&quot; &amp; &lt;odd&gt; name:1&gt; &lt;b&gt;x&lt;/b&gt;"' in markup
    assert 'loading="lazy"' in markup and "filename=" in markup
    empty = cards.page_html([], "txt2img", [tmp_path / "Lora"])
    assert "No Lora networks found" in empty and str(tmp_path / "Lora") in empty


def test_two_thousand_networks(tmp_path: Path) -> None:
    template = small(tmp_path / "template.safetensors", kohya_metadata(ss_output_name="x", ss_v2="False")).read_bytes()
    (tmp_path / "template.safetensors").unlink()
    lora = tmp_path / "Lora"
    for folder in range(20):
        sub = lora / f"folder{folder}"
        sub.mkdir(parents=True)
        for index in range(100):
            (sub / f"net{folder}_{index}.safetensors").write_bytes(template)
            if index % 10 == 0:
                (sub / f"net{folder}_{index}.png").write_bytes(b"png")
            if index % 25 == 0:
                (sub / f"net{folder}_{index}.json").write_text(json.dumps({"preferred weight": 0.6}))
    registry = NetworkRegistry([lora], HashCache(tmp_path / "hashes.json"))
    listed = cards.list_cards(registry)
    assert len(listed) == 2000 and len({card.name for card in listed}) == 2000
    assert sum(card.preview is not None for card in listed) == 200
    assert sum(card.prompt.endswith(":0.6>") for card in listed) == 80
    assert {card.folder for card in listed} == {f"Lora/folder{i}" for i in range(20)}
    assert all(card.family == "sd1" and card.shorthash is None for card in listed)
    assert not os.path.exists(tmp_path / "hashes.json")  # nothing was hashed
    page = cards.page_html(listed, "txt2img")
    assert page.count('class="lora-card"') == 2000 and page.count('loading="lazy"') == 200
    assert page.count('class="lora-dir') == 22  # All, Lora, 20 folders
